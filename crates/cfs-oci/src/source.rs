//! Where images come from: the [`ImageSource`] trait, image references, fetch options, and the
//! `oci:` layout reader. (`docker://` registries are read by [`crate::registry`] where it can
//! fetch what skopeo would; everything else goes through skopeo: [`crate::proxy`].)

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::{BlobHasher, OciDigest};
use crate::error::OciError;
use crate::model::{self, media_type, Descriptor, Index};

/// Largest manifest, index or config we read into memory.
pub const JSON_LIMIT: u64 = 64 << 20;

/// A source of one image's manifest and blobs. Blob readers may be used from several threads
/// at once (layers are fetched concurrently).
pub trait ImageSource: Sync {
    /// What this source is, for messages.
    fn describe(&self) -> String;

    /// How the image is fetched (`oci layout`, `registry`, `skopeo (why)`), for the pull's
    /// summary.
    fn via(&self) -> String;

    /// The image manifest's digest and raw bytes (an OCI image manifest; indexes are resolved
    /// to the manifest for this machine's platform).
    fn manifest(&self) -> Result<(OciDigest, Vec<u8>), OciError>;

    /// Open a blob for streaming. The reader fails instead of reaching the end when the content
    /// does not match `desc` (size or digest), so a consumer that reads to the end has verified
    /// the blob.
    fn open_blob<'a>(
        &'a self,
        what: &str,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send + 'a>, OciError>;

    /// The blobs to fetch for the manifest's `layers`: the manifest's own descriptors, unless
    /// the source keeps its layers as other blobs (containers-storage keeps them uncompressed).
    fn layer_blobs(&self, layers: &[Descriptor]) -> Result<Vec<Descriptor>, OciError> {
        Ok(layers.to_vec())
    }

    /// The image config that `desc` (the manifest's config descriptor) names, verified.
    fn read_config(&self, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        self.read_blob("config", desc)
    }

    /// Read a small blob (a config) whole, verified.
    fn read_blob(&self, what: &str, desc: &Descriptor) -> Result<Vec<u8>, OciError> {
        if desc.size > JSON_LIMIT {
            return Err(OciError::BlobMismatch {
                what: what.to_owned(),
                digest: desc.digest.clone(),
                reason: format!("{} bytes is too large for a {what}", desc.size),
            });
        }
        let mut reader = self.open_blob(what, desc)?;
        let mut out = Vec::with_capacity(usize::try_from(desc.size).unwrap_or(0));
        reader
            .read_to_end(&mut out)
            .map_err(|e| OciError::io(format!("reading {what} {}", desc.digest), e))?;
        Ok(out)
    }
}

/// Which way images are fetched ([`crate::open_source`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fetcher {
    /// `oci:` layouts and `docker://` registries directly, when that gives what skopeo would
    /// (see [`crate::registry`]); skopeo for everything else.
    #[default]
    Auto,
    /// Directly or not at all: an error for what only skopeo can fetch.
    Direct,
    /// Everything through skopeo's image proxy, `oci:` layouts too.
    Skopeo,
}

impl std::str::FromStr for Fetcher {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Fetcher::Auto),
            "direct" => Ok(Fetcher::Direct),
            "skopeo" => Ok(Fetcher::Skopeo),
            _ => Err(format!(
                "unknown fetcher {text:?} (expected auto, direct or skopeo)"
            )),
        }
    }
}

/// How to reach an image's source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// Do not verify TLS certificates and allow plain HTTP (`--tls-verify=false`).
    pub insecure: bool,
    /// Path to a container auth file (`--authfile`).
    pub authfile: Option<PathBuf>,
    /// Registry credentials given outright (`--creds`); they win over any auth file.
    pub credentials: Option<crate::registry::config::Credentials>,
    /// Which way to fetch.
    pub fetcher: Fetcher,
}

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageReference {
    /// `oci:DIR[:TAG]`, read directly.
    OciLayout {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick (none: the only manifest).
        tag: Option<String>,
    },
    /// Any other skopeo transport (`docker://`, `oci-archive:`, `docker-archive:`, `dir:`, …),
    /// as written (`docker://` may also be read directly: [`crate::open_source`]).
    Skopeo(String),
}

impl ImageReference {
    /// The reference as skopeo writes it.
    pub fn to_skopeo(&self) -> String {
        match self {
            ImageReference::OciLayout { dir, tag: Some(t) } => {
                format!("oci:{}:{t}", dir.display())
            }
            ImageReference::OciLayout { dir, tag: None } => format!("oci:{}", dir.display()),
            ImageReference::Skopeo(text) => text.clone(),
        }
    }
}

/// Transports skopeo understands that we hand to it.
const SKOPEO_TRANSPORTS: &[&str] = &[
    "docker",
    "oci-archive",
    "docker-archive",
    "dir",
    "containers-storage",
    "docker-daemon",
];

impl ImageReference {
    /// Parse `TRANSPORT:DETAILS` (skopeo's syntax).
    pub fn parse(text: &str) -> Result<ImageReference, OciError> {
        let bad = |reason: &str| OciError::InvalidReference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((transport, rest)) = text.split_once(':') else {
            return Err(bad(
                "missing transport (e.g. docker://HOST/NAME:TAG or oci:DIR:TAG)",
            ));
        };
        if rest.is_empty() {
            return Err(bad("nothing after the transport"));
        }
        match transport {
            "oci" => {
                // skopeo splits at the first ':' after the transport.
                let (dir, tag) = match rest.split_once(':') {
                    Some((d, t)) => (d, Some(t.to_owned()).filter(|t| !t.is_empty())),
                    None => (rest, None),
                };
                if dir.is_empty() {
                    return Err(bad("empty layout directory"));
                }
                Ok(ImageReference::OciLayout {
                    dir: PathBuf::from(dir),
                    tag,
                })
            }
            t if SKOPEO_TRANSPORTS.contains(&t) => {
                if t == "docker" && !rest.starts_with("//") {
                    return Err(bad("docker references are written docker://HOST/NAME[:TAG]"));
                }
                Ok(ImageReference::Skopeo(text.to_owned()))
            }
            _ => Err(bad(
                "unknown transport (expected docker://, oci:, oci-archive:, docker-archive: or dir:)",
            )),
        }
    }
}

/// Verifies a blob while it is read: size and digest are checked when the end is reached.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Option<BlobHasher>,
    expected: OciDigest,
    size: u64,
    seen: u64,
}

impl<R> std::fmt::Debug for VerifyingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingReader")
            .field("expected", &self.expected)
            .field("size", &self.size)
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl<R: Read> VerifyingReader<R> {
    /// Check `inner` against `desc`.
    pub fn new(inner: R, desc: &Descriptor) -> Self {
        VerifyingReader {
            inner,
            hasher: Some(BlobHasher::new(desc.digest.algorithm())),
            expected: desc.digest.clone(),
            size: desc.size,
            seen: 0,
        }
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        if n == 0 {
            if let Some(h) = self.hasher.take() {
                if self.seen != self.size {
                    return bad(format!(
                        "blob {} is {} bytes, its descriptor says {}",
                        self.expected, self.seen, self.size
                    ));
                }
                let actual = h.finish();
                if actual != self.expected {
                    return bad(format!(
                        "blob {} does not match its digest (content is {actual})",
                        self.expected
                    ));
                }
            }
            return Ok(0);
        }
        let data = buf.get(..n).unwrap_or_default();
        self.seen += n as u64;
        if self.seen > self.size {
            return bad(format!(
                "blob {} is larger than the {} bytes its descriptor says",
                self.expected, self.size
            ));
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        Ok(n)
    }
}

/// An OCI image layout directory (`oci:DIR[:TAG]`), read directly.
#[derive(Debug)]
pub struct LayoutSource {
    dir: PathBuf,
    tag: Option<String>,
}

fn read_limited(path: &Path, what: &str) -> Result<Vec<u8>, OciError> {
    let file = File::open(path)
        .map_err(|e| OciError::io(format!("opening {what} {}", path.display()), e))?;
    let mut out = Vec::new();
    file.take(JSON_LIMIT + 1)
        .read_to_end(&mut out)
        .map_err(|e| OciError::io(format!("reading {what} {}", path.display()), e))?;
    if out.len() as u64 > JSON_LIMIT {
        return Err(OciError::Invalid {
            what: format!("{what} {}", path.display()),
            reason: "too large".into(),
        });
    }
    Ok(out)
}

impl LayoutSource {
    /// A layout at `dir`, picking the manifest tagged `tag` (or the only one).
    pub fn new(dir: impl Into<PathBuf>, tag: Option<String>) -> Self {
        LayoutSource {
            dir: dir.into(),
            tag,
        }
    }

    fn blob_path(&self, digest: &OciDigest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// The descriptor of the manifest to use, from `index.json`.
    fn pick(&self) -> Result<Descriptor, OciError> {
        let index_path = self.dir.join("index.json");
        let what = format!("{}", index_path.display());
        let index = Index::parse(&what, &read_limited(&index_path, "index")?)?;
        let candidates: Vec<&Descriptor> = match &self.tag {
            Some(tag) => index
                .manifests
                .iter()
                .filter(|d| d.annotations.get(model::REF_NAME_ANNOTATION) == Some(tag))
                .collect(),
            None => index.manifests.iter().collect(),
        };
        match candidates.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(OciError::Invalid {
                what,
                reason: match &self.tag {
                    Some(t) => format!("no manifest is tagged {t:?}"),
                    None => "the index lists no manifests".into(),
                },
            }),
            _ => Err(OciError::Invalid {
                what,
                reason: match &self.tag {
                    Some(t) => format!("several manifests are tagged {t:?}"),
                    None => "the index lists several manifests; name one (oci:DIR:TAG)".into(),
                },
            }),
        }
    }

    /// Resolve an index descriptor to the manifest for this platform.
    fn resolve_index(&self, desc: &Descriptor) -> Result<Descriptor, OciError> {
        let bytes = self.read_blob("image index", desc)?;
        let index = Index::parse(&format!("image index {}", desc.digest), &bytes)?;
        index
            .for_this_platform()
            .cloned()
            .ok_or_else(|| OciError::Invalid {
                what: format!("image index {}", desc.digest),
                reason: format!("no manifest for linux/{}", model::host_architecture()),
            })
    }
}

impl ImageSource for LayoutSource {
    fn describe(&self) -> String {
        match &self.tag {
            Some(t) => format!("oci:{}:{t}", self.dir.display()),
            None => format!("oci:{}", self.dir.display()),
        }
    }

    fn via(&self) -> String {
        "oci layout".into()
    }

    fn manifest(&self) -> Result<(OciDigest, Vec<u8>), OciError> {
        let mut desc = self.pick()?;
        for _ in 0..4 {
            match desc.media_type.as_str() {
                media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => {
                    desc = self.resolve_index(&desc)?;
                }
                _ => {
                    let bytes = self.read_blob("manifest", &desc)?;
                    return Ok((desc.digest, bytes));
                }
            }
        }
        Err(OciError::Invalid {
            what: self.describe(),
            reason: "image indexes nested too deeply".into(),
        })
    }

    fn open_blob<'a>(
        &'a self,
        what: &str,
        desc: &Descriptor,
    ) -> Result<Box<dyn Read + Send + 'a>, OciError> {
        let path = self.blob_path(&desc.digest);
        match File::open(&path) {
            Ok(f) => Ok(Box::new(VerifyingReader::new(
                io::BufReader::with_capacity(256 << 10, f),
                desc,
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OciError::MissingBlob {
                what: what.to_owned(),
                digest: desc.digest.clone(),
                location: self.describe(),
            }),
            Err(e) => Err(OciError::io(format!("opening {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        assert_eq!(
            ImageReference::parse("oci:/tmp/x:t").expect("oci"),
            ImageReference::OciLayout {
                dir: "/tmp/x".into(),
                tag: Some("t".into())
            }
        );
        assert_eq!(
            ImageReference::parse("oci:rel").expect("oci"),
            ImageReference::OciLayout {
                dir: "rel".into(),
                tag: None
            }
        );
        for ok in [
            "docker://127.0.0.1:5000/a/b:latest",
            "oci-archive:/x.tar",
            "docker-archive:/x.tar:img:tag",
            "dir:/x",
        ] {
            assert_eq!(
                ImageReference::parse(ok).expect(ok),
                ImageReference::Skopeo(ok.into())
            );
        }
        for bad in ["busybox", "oci:", "docker:busybox", "ftp://x", "oci::t"] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verifying_reader_checks_size_and_digest() {
        let data = b"hello";
        let desc = |digest: OciDigest, size| Descriptor {
            media_type: String::new(),
            digest,
            size,
            annotations: Default::default(),
            platform: None,
        };
        let good = OciDigest::of(crate::digest::DigestAlgorithm::Sha256, data);
        let mut out = Vec::new();
        VerifyingReader::new(&data[..], &desc(good.clone(), 5))
            .read_to_end(&mut out)
            .expect("good");
        assert_eq!(out, data);
        for (d, size) in [
            (good.clone(), 4),
            (good, 6),
            (
                OciDigest::of(crate::digest::DigestAlgorithm::Sha256, b"x"),
                5,
            ),
        ] {
            let err = VerifyingReader::new(&data[..], &desc(d, size))
                .read_to_end(&mut Vec::new())
                .expect_err("mismatch");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }
}
