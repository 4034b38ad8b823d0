//! Fetching through skopeo's `experimental-image-proxy` (crate `containers-image-proxy`): every
//! transport skopeo accepts (`docker://`, `oci-archive:`, `docker-archive:`, `dir:`, …).
//!
//! The proxy client is async (tokio). [`SkopeoSource`] keeps a small runtime of its own and
//! offers the blocking [`ImageSource`] interface: each blob is pumped by a task into a bounded
//! channel that a worker thread reads. skopeo verifies blob digests and reports the result when
//! the pipe is finished; the reader returns that result in place of end-of-file, so a layer is
//! never accepted before skopeo has vouched for it. See [`pump`] for when the pipe is finished:
//! skopeo 1.9's proxy (protocol 0.2.3) handles one request at a time.

use std::io::{self, Read};
use std::str::FromStr;
use std::sync::Arc;

use containers_image_proxy::oci_spec::image::Digest as ProxyDigest;
use containers_image_proxy::{ConvertedLayerInfo, ImageProxy, ImageProxyConfig, OpenedImage};
use tokio::io::AsyncReadExt;

use crate::digest::OciDigest;
use crate::error::OciError;
use crate::model::Descriptor;
use crate::source::{FetchOptions, ImageSource};

/// Chunks in flight per blob between the fetching task and the reading thread.
const CHANNEL_DEPTH: usize = 16;
/// Size of each chunk.
const CHUNK: usize = 256 << 10;
/// How long a blob may deliver nothing before we ask skopeo how it is going.
const STALL: std::time::Duration = std::time::Duration::from_secs(3);

struct Opened {
    proxy: ImageProxy,
    image: OpenedImage,
}

/// An image opened through skopeo's image proxy.
pub struct SkopeoSource {
    reference: String,
    /// Why the image is not fetched directly, when it could have been.
    why: Option<String>,
    /// `Some` until dropped.
    opened: Option<Arc<Opened>>,
    /// `Some` until dropped (after `opened`: the runtime waits for skopeo to exit, which it
    /// does once the proxy's socket is closed).
    runtime: Option<tokio::runtime::Runtime>,
    /// Added to blob errors: set when containers-storage could not say which blobs it serves.
    blob_hint: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for SkopeoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkopeoSource")
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

impl SkopeoSource {
    /// Start `skopeo experimental-image-proxy` and open `reference` (with its transport).
    /// `why` says why skopeo fetches it, when it is an image we could also fetch directly.
    pub fn open(
        reference: &str,
        opts: &FetchOptions,
        why: Option<String>,
    ) -> Result<SkopeoSource, OciError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cfs-skopeo")
            .enable_all()
            .build()
            .map_err(|e| OciError::io("starting the async runtime for skopeo", e))?;
        let mut config = ImageProxyConfig::default();
        if opts.insecure {
            config.insecure_skip_tls_verification = Some(true);
        }
        config.authfile.clone_from(&opts.authfile);
        if let Some(credentials) = &opts.credentials {
            config.authfile = None;
            config.auth_data = Some(credentials_file(reference, credentials)?);
        }
        let opened = runtime.block_on(async {
            let proxy = ImageProxy::new_with_config(config)
                .await
                .map_err(|e| OciError::proxy("starting skopeo (is skopeo installed?)", e))?;
            let image = proxy
                .open_image(reference)
                .await
                .map_err(|e| OciError::proxy(format!("opening {reference}"), e))?;
            Ok::<_, OciError>(Opened { proxy, image })
        })?;
        Ok(SkopeoSource {
            reference: reference.to_owned(),
            why,
            opened: Some(Arc::new(opened)),
            runtime: Some(runtime),
            blob_hint: std::sync::OnceLock::new(),
        })
    }

    fn parts(&self) -> Result<(&tokio::runtime::Runtime, &Arc<Opened>), OciError> {
        match (&self.runtime, &self.opened) {
            (Some(r), Some(o)) => Ok((r, o)),
            _ => Err(OciError::proxy(&self.reference, "the proxy was shut down")),
        }
    }
}

impl Drop for SkopeoSource {
    fn drop(&mut self) {
        let (Some(runtime), Some(opened)) = (self.runtime.take(), self.opened.take()) else {
            return;
        };
        // Ask skopeo to exit and wait for it; if a blob task still holds the proxy, dropping
        // our reference is enough (its socket closes when the runtime drops the task, and
        // skopeo dies with us anyway: pdeathsig).
        if let Ok(opened) = Arc::try_unwrap(opened) {
            let _ = runtime.block_on(async move {
                let _ = opened.proxy.close_image(&opened.image).await;
                opened.proxy.finalize().await
            });
        }
        runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    }
}

/// `--creds` for skopeo: an auth file naming the reference's registry, handed to the proxy
/// crate as a memfd (which copies it into an unnamed temporary file for skopeo to read).
fn credentials_file(
    reference: &str,
    credentials: &crate::registry::config::Credentials,
) -> Result<std::fs::File, OciError> {
    use std::io::{Seek, Write};
    let registry = match crate::registry::reference::DockerReference::parse(reference) {
        Ok(r) => r.registry,
        Err(e) => {
            return Err(OciError::InvalidReference {
                reference: reference.to_owned(),
                reason: format!("cannot tell which registry the credentials are for: {e}"),
            })
        }
    };
    let fd = rustix::fs::memfd_create("cfs-auth", rustix::fs::MemfdFlags::CLOEXEC)
        .map_err(|e| OciError::io("creating the in-memory auth file", e.into()))?;
    let mut file = std::fs::File::from(fd);
    file.write_all(credentials.auth_file_for(&registry).as_bytes())
        .and_then(|()| file.rewind())
        .map_err(|e| OciError::io("writing the in-memory auth file", e))?;
    Ok(file)
}

/// The blobs containers-storage serves for an image's layers, from `GetLayerInfo`'s answer:
/// one per layer of the manifest, each with a digest we can use.
fn blobs_from_layer_info(
    reference: &str,
    infos: Vec<ConvertedLayerInfo>,
    layers: usize,
) -> Result<Vec<Descriptor>, OciError> {
    let invalid = |reason: String| OciError::Invalid {
        what: format!("layers of {reference}"),
        reason,
    };
    if infos.len() != layers {
        return Err(invalid(format!(
            "skopeo lists {} layers, the manifest {layers}",
            infos.len()
        )));
    }
    infos
        .into_iter()
        .map(|info| {
            let digest = info.digest.to_string();
            Ok(Descriptor {
                media_type: info.media_type.to_string(),
                digest: digest.parse().map_err(|e| {
                    invalid(format!(
                        "skopeo reported an unusable digest {digest:?}: {e}"
                    ))
                })?,
                size: info.size,
                annotations: Default::default(),
                platform: None,
            })
        })
        .collect()
}

/// Reads what the pumping task sends; `Err` messages end the stream with that error.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    at: usize,
    done: bool,
    /// Added to skopeo's errors.
    hint: Option<String>,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.buf.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) if chunk.is_empty() => self.done = true,
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.at = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(match &self.hint {
                        Some(hint) => io::Error::new(e.kind(), format!("{e}{hint}")),
                        None => e,
                    });
                }
                None => {
                    self.done = true;
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the skopeo fetch stopped without finishing",
                    ));
                }
            }
        }
        let n = (self.buf.len() - self.at).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Feed a blob from skopeo into `tx`: chunks, then an empty chunk (verified end) or an error.
///
/// skopeo (protocol 0.2.3) closes a blob's pipe only when `FinishPipe` is called, and handles
/// requests one at a time, so `FinishPipe` must neither come too late (the reader would wait
/// for an end that never comes) nor too early (it blocks every other request until this blob is
/// through, which would serialise the layers). So: read the declared size first, then finish;
/// if the data stalls before that (skopeo may have failed), finish concurrently with reading.
async fn pump(
    opened: Arc<Opened>,
    digest: ProxyDigest,
    size: u64,
    tx: tokio::sync::mpsc::Sender<io::Result<Vec<u8>>>,
) {
    let proxy_err = |e: containers_image_proxy::Error| io::Error::other(format!("skopeo: {e}"));
    let (mut reader, mut driver) = match opened.proxy.get_blob(&opened.image, &digest, size).await {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(Err(proxy_err(e))).await;
            return;
        }
    };
    let mut received = 0u64;
    // `false` once the reader is gone (it gave up) or a read failed: keep draining, stop sending.
    let mut forward = true;
    let mut read_error = None;
    while received < size && forward {
        let want = usize::try_from(size - received).map_or(CHUNK, |r| r.min(CHUNK));
        // Read into spare capacity: a pipe read returns far less than a chunk, and zeroing
        // the whole chunk first cost more than the read.
        let mut buf = Vec::with_capacity(want);
        match tokio::time::timeout(STALL, reader.read_buf(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                received += n as u64;
                forward = tx.send(Ok(buf)).await.is_ok();
            }
            Ok(Err(e)) => {
                read_error = Some(e);
                forward = false;
            }
        }
    }
    let tx_ref = &tx;
    let rest = async move {
        let mut extra = 0u64;
        loop {
            let mut buf = Vec::with_capacity(CHUNK);
            match reader.read_buf(&mut buf).await {
                Ok(0) => return Ok(extra),
                Ok(n) => {
                    extra += n as u64;
                    if forward {
                        forward = tx_ref.send(Ok(buf)).await.is_ok();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    };
    let (rest, verdict) = tokio::join!(rest, &mut driver);
    let end = match (read_error, rest, verdict) {
        (_, _, Err(e)) => Err(proxy_err(e)),
        (Some(e), _, _) | (None, Err(e), _) => Err(e),
        (None, Ok(extra), Ok(())) if received + extra != size => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "blob {digest} is {} bytes, its descriptor says {size}",
                received + extra
            ),
        )),
        (None, Ok(_), Ok(())) => Ok(Vec::new()),
    };
    let _ = tx.send(end).await;
}

impl ImageSource for SkopeoSource {
    fn describe(&self) -> String {
        self.reference.clone()
    }

    fn via(&self) -> String {
        match &self.why {
            Some(why) => format!("skopeo ({why})"),
            None => "skopeo".into(),
        }
    }

    fn manifest(&self) -> Result<(OciDigest, Vec<u8>), OciError> {
        let (runtime, opened) = self.parts()?;
        let opened = Arc::clone(opened);
        let (digest, bytes) = runtime
            .block_on(async move { opened.proxy.fetch_manifest_raw_oci(&opened.image).await })
            .map_err(|e| {
                OciError::proxy(format!("fetching the manifest of {}", self.reference), e)
            })?;
        let digest = digest.parse().map_err(|e| OciError::Invalid {
            what: format!("manifest of {}", self.reference),
            reason: format!("skopeo reported an unusable digest: {e}"),
        })?;
        Ok((digest, bytes))
    }

    /// containers-storage keeps layers uncompressed, while the manifest it hands out may still
    /// name the compressed blobs they came from, which it cannot serve: the blobs it can serve
    /// come from `GetLayerInfo` (image proxy protocol 0.2.5 and later). Other transports
    /// serve the manifest's own blobs.
    fn layer_blobs(&self, layers: &[Descriptor]) -> Result<Vec<Descriptor>, OciError> {
        if !self.reference.starts_with("containers-storage:") {
            return Ok(layers.to_vec());
        }
        let (runtime, opened) = self.parts()?;
        let version = opened.proxy.protocol_version().to_string();
        let opened = Arc::clone(opened);
        let infos = runtime
            .block_on(async move { opened.proxy.get_layer_info(&opened.image).await })
            .map_err(|e| OciError::proxy(format!("listing the layers of {}", self.reference), e))?;
        let Some(infos) = infos else {
            // An older skopeo: the manifest's blobs are all there is to ask for. An image built
            // locally names its uncompressed layers and pulls; a pulled one may not.
            let _ = self.blob_hint.set(format!(
                " (containers-storage may keep this layer only uncompressed, and asking it which \
                 blobs it serves needs image proxy protocol 0.2.5, where this skopeo speaks \
                 {version}: copy the image out first, skopeo copy {} oci:DIR:TAG, and pull \
                 oci:DIR:TAG)",
                self.reference
            ));
            return Ok(layers.to_vec());
        };
        blobs_from_layer_info(&self.reference, infos, layers.len())
    }

    /// skopeo hands Docker schema 2 images (from registries and `docker-archive:`) out as OCI,
    /// and that conversion serialises the config anew: the manifest then names a config that
    /// exists only inside skopeo, which `GetBlob` cannot find but `GetFullConfig` returns. For
    /// an image that was OCI already, `GetFullConfig` may differ from the stored blob, so the
    /// digest decides, and the blob itself is the fallback.
    fn read_config(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        let (runtime, opened) = self.parts()?;
        let opened = Arc::clone(opened);
        let converted =
            runtime.block_on(async move { opened.proxy.fetch_config_raw(&opened.image).await });
        let full_config = match converted {
            Ok(bytes) if bytes.len() as u64 == desc.size && desc.digest.matches(&bytes) => {
                return Ok(bytes)
            }
            Ok(bytes) => format!(
                "GetFullConfig gave {} bytes that do not match the descriptor",
                bytes.len()
            ),
            Err(e) => format!("GetFullConfig failed: {e}"),
        };
        // When the blob is not there either, both answers explain the failure.
        self.read_blob("config", desc)
            .map_err(|e| OciError::Invalid {
                what: format!("config {} of {}", desc.digest, self.reference),
                reason: format!("{e}; {full_config}"),
            })
    }

    fn open_blob<'a>(
        &'a self,
        what: &str,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send + 'a>, OciError> {
        let digest = ProxyDigest::from_str(&desc.digest.to_string())
            .map_err(|e| OciError::proxy(format!("{what} {}", desc.digest), e))?;
        let (runtime, opened) = self.parts()?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL_DEPTH);
        runtime.spawn(pump(Arc::clone(opened), digest, desc.size, tx));
        Ok(Box::new(ChannelReader {
            rx,
            buf: Vec::new(),
            at: 0,
            done: false,
            hint: self.blob_hint.get().cloned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containers_image_proxy::oci_spec::image::MediaType;

    fn info(digest: &str, size: u64) -> ConvertedLayerInfo {
        ConvertedLayerInfo {
            digest: ProxyDigest::from_str(digest).expect("digest"),
            size,
            media_type: MediaType::ImageLayer,
        }
    }

    #[test]
    fn layer_info_becomes_the_blobs_to_fetch() {
        const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
        let blobs = blobs_from_layer_info("r", vec![info(D1, 10), info(D2, 20)], 2).expect("ok");
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].digest.to_string(), D1);
        assert_eq!(blobs[1].size, 20);
        assert_eq!(
            blobs[1].media_type,
            "application/vnd.oci.image.layer.v1.tar"
        );
        let err = blobs_from_layer_info("r", vec![info(D1, 10)], 2).expect_err("short");
        assert!(
            err.to_string()
                .contains("skopeo lists 1 layers, the manifest 2"),
            "{err}"
        );
    }
}
