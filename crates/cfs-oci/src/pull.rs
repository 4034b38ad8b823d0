//! Pulling an image into a repository.
//!
//! Order (each step durable before the next makes it reachable):
//! 1. manifest and config are fetched and checked (layer count, media types, diff_ids);
//! 2. the missing layers are fetched and imported concurrently (bounded); each becomes
//!    `oci-layer-<diff_id>` only after its diff_id is verified; layers already stored are not
//!    fetched at all;
//! 3. the layers are merged, finalised and written as an EROFS image (`images/<id>`);
//! 4. the config stream (refs to the layers and to the image), then the manifest stream;
//! 5. last, the tag.
//!
//! A failure or a kill at any point leaves at most unnamed objects and untagged streams, which
//! the next pull reuses and GC removes; never a tag to an incomplete image.

use std::collections::HashSet;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use cfs_format::transform::XattrPolicy;
use cfs_format::Digest;
use cfs_repo::repo::Repository;
use cfs_repo::splitstream::content_type;

use crate::digest::OciDigest;
use crate::error::OciError;
use crate::layer_import::{import_layer, ImportStats};
use crate::model::{Descriptor, ImageConfig, Manifest};
use crate::names::{
    config_stream_id, layer_stream_id, manifest_stream_id, tag_ref, CONFIG_REF_PREFIX, IMAGE_REF_V1,
};
use crate::source::ImageSource;
use crate::store::{self, erofs_image, read_stream_content};

/// Settings of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullOptions {
    /// Tag to point at the image when done (`None`: no tag).
    pub tag: Option<String>,
    /// Layers fetched at once (at least 1).
    pub jobs: usize,
    /// Which xattrs the image keeps.
    pub xattrs: XattrPolicy,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            tag: None,
            jobs: 3,
            xattrs: XattrPolicy::AllowlistOnly,
        }
    }
}

/// One layer of the image being pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// Position in the manifest (0 = base).
    pub index: usize,
    /// The blob to fetch: the manifest's, or the one the source serves in its place
    /// ([`ImageSource::layer_blobs`]).
    pub blob: Descriptor,
    /// The uncompressed digest.
    pub diff_id: OciDigest,
    /// Already in the repository: it will not be fetched.
    pub present: bool,
}

/// Callbacks reporting a pull's progress (all may be called from several threads).
pub trait PullProgress: Sync {
    /// The layers, once the config is known.
    fn plan(&self, _layers: &[LayerPlan]) {}
    /// `bytes` more of layer `index`'s blob were read.
    fn layer_bytes(&self, _index: usize, _bytes: u64) {}
    /// Layer `index` is stored.
    fn layer_done(&self, _index: usize, _stats: &ImportStats) {}
    /// Layer `index` failed.
    fn layer_failed(&self, _index: usize) {}
    /// A later stage began (`"building the image"`, …).
    fn stage(&self, _what: &str) {}
}

/// A [`PullProgress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullReport {
    /// The manifest digest.
    pub manifest_digest: OciDigest,
    /// The config digest.
    pub config_digest: OciDigest,
    /// The EROFS image id.
    pub image_id: Digest,
    /// The tag set, if any.
    pub tag: Option<String>,
    /// Layers in the image.
    pub layers: usize,
    /// Layers fetched and imported by this pull.
    pub layers_fetched: usize,
    /// Bytes of layer blobs fetched (compressed, unless the source serves them uncompressed).
    pub bytes_fetched: u64,
    /// Import counters summed over the fetched layers.
    pub stats: ImportStats,
    /// The image was already complete in the repository: nothing was fetched or rebuilt.
    pub already_present: bool,
}

/// A fetched layer's counters and compressed size, or why it failed.
type LayerResult = Result<(ImportStats, u64), OciError>;

/// Counts a blob's bytes for progress and stops early when another layer failed.
struct Counting<'a, R> {
    inner: R,
    index: usize,
    progress: &'a dyn PullProgress,
    failed: &'a AtomicBool,
    bytes: u64,
    cancelled: bool,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed.load(Ordering::Relaxed) {
            self.cancelled = true;
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.progress.layer_bytes(self.index, n as u64);
        Ok(n)
    }
}

/// The image `manifest_digest` is complete in the repository: its config stream refers to an
/// existing EROFS image and to every layer stream.
fn complete_image(repo: &Repository, manifest_digest: &OciDigest) -> Option<(OciDigest, Digest)> {
    let image = store::open_manifest(repo, manifest_digest).ok()?;
    let id = image.image_id?;
    repo.open_image(&id.to_hex()).ok()?;
    for diff_id in &image.config.rootfs.diff_ids {
        repo.has_stream(&layer_stream_id(diff_id)).ok()??;
    }
    Some((image.config_digest, id))
}

/// Pull the image `source` offers into `repo`. See the [module documentation](self).
pub fn pull(
    repo: &Repository,
    source: &dyn ImageSource,
    opts: &PullOptions,
    progress: &dyn PullProgress,
) -> Result<PullReport, OciError> {
    repo.ensure_writable()?;
    // Fail before downloading anything if we cannot write images for this repository.
    repo.default_format()?;
    let tag = opts.tag.as_deref().map(tag_ref).transpose()?;

    let (manifest_digest, manifest_bytes) = source.manifest()?;
    let manifest = Manifest::parse(
        &format!("manifest {manifest_digest} of {}", source.describe()),
        &manifest_bytes,
    )?;
    let manifest_id = manifest_stream_id(&manifest_digest);

    if let Some((config_digest, image_id)) = complete_image(repo, &manifest_digest) {
        if let Some(t) = &tag {
            repo.add_stream_ref(&manifest_id, t)?;
        }
        return Ok(PullReport {
            manifest_digest,
            config_digest,
            image_id,
            tag: opts.tag.clone(),
            layers: manifest.layers.len(),
            layers_fetched: 0,
            bytes_fetched: 0,
            stats: ImportStats::default(),
            already_present: true,
        });
    }

    // The config: from the repository when a previous (interrupted) pull stored it.
    let config_digest = manifest.config.digest.clone();
    let config_id = config_stream_id(&config_digest);
    let stored_config = match repo.has_stream(&config_id)? {
        Some(_) => read_stream_content(repo, &config_id)
            .ok()
            .filter(|b| config_digest.matches(b)),
        None => None,
    };
    let config_bytes = match stored_config {
        Some(b) => b,
        None => source.read_config(&manifest.config)?,
    };
    let config = ImageConfig::parse(
        &format!("config {config_digest}"),
        &config_bytes,
        manifest.layers.len(),
    )?;
    let diff_ids = &config.rootfs.diff_ids;

    let blobs = source.layer_blobs(&manifest.layers)?;
    if blobs.len() != manifest.layers.len() {
        return Err(OciError::Invalid {
            what: format!("layers of {}", source.describe()),
            reason: format!(
                "{} blobs to fetch for {} layers",
                blobs.len(),
                manifest.layers.len()
            ),
        });
    }
    let mut plan = Vec::with_capacity(manifest.layers.len());
    for (index, (blob, diff_id)) in blobs.iter().zip(diff_ids).enumerate() {
        plan.push(LayerPlan {
            index,
            blob: blob.clone(),
            diff_id: diff_id.clone(),
            present: repo.has_stream(&layer_stream_id(diff_id))?.is_some(),
        });
    }
    progress.plan(&plan);
    // Each missing diff_id once, even if the image lists it twice.
    let mut seen = HashSet::new();
    let todo: Vec<&LayerPlan> = plan
        .iter()
        .filter(|l| !l.present && seen.insert(l.diff_id.clone()))
        .collect();

    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, LayerResult)>> = Mutex::new(Vec::new());
    let jobs = opts.jobs.clamp(1, 16).min(todo.len());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(layer) = todo.get(k) else { break };
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let result = fetch_layer(repo, source, layer, progress, &failed);
                match &result {
                    Ok((stats, _)) => progress.layer_done(layer.index, stats),
                    Err(_) => {
                        failed.store(true, Ordering::Relaxed);
                        progress.layer_failed(layer.index);
                    }
                }
                if let Ok(mut r) = results.lock() {
                    r.push((layer.index, result));
                }
            });
        }
    });
    let mut results = results.into_inner().map_err(|_| OciError::Cancelled)?;
    results.sort_by_key(|(i, _)| *i);
    let mut stats = ImportStats::default();
    let mut bytes_fetched = 0;
    let mut first_error = None;
    for (_, r) in results {
        match r {
            Ok((s, b)) => {
                stats.add(&s);
                bytes_fetched += b;
            }
            Err(OciError::Cancelled) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    // Every layer is stored now.
    let mut layer_streams = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let id = layer_stream_id(diff_id);
        let digest = repo.has_stream(&id)?.ok_or_else(|| OciError::Corrupt {
            what: format!("layer {diff_id}"),
            reason: format!("stream {id} vanished during the pull"),
        })?;
        layer_streams.push(digest);
    }

    // The importers' freed buffers would otherwise stay resident beside the tree built next.
    crate::sys::release_free_memory();
    progress.stage("building the image");
    let tree = store::build_rootfs(repo, diff_ids, opts.xattrs)?;
    let (erofs, _) = erofs_image(repo, &tree)?;
    drop(tree);
    let image_id = repo.write_image(&erofs, None)?;

    progress.stage("storing manifest and config");
    let mut w = repo.create_stream(content_type::OCI_CONFIG)?;
    repo.write_external(&mut w, &config_bytes)?;
    let named = |w: &mut cfs_repo::SplitStreamWriter, name: &str, d: &Digest| {
        w.add_named_stream_ref(name, d)
            .map_err(|source| cfs_repo::RepoError::SplitStream {
                what: name.to_owned(),
                source,
            })
    };
    for (diff_id, d) in diff_ids.iter().zip(&layer_streams) {
        named(&mut w, &diff_id.to_string(), d)?;
    }
    named(&mut w, IMAGE_REF_V1, &image_id)?;
    let config_stream = repo.write_stream(&config_id, w, None)?;

    let mut w = repo.create_stream(content_type::OCI_MANIFEST)?;
    repo.write_external(&mut w, &manifest_bytes)?;
    named(
        &mut w,
        &format!("{CONFIG_REF_PREFIX}{config_digest}"),
        &config_stream,
    )?;
    for (diff_id, d) in diff_ids.iter().zip(&layer_streams) {
        named(&mut w, &diff_id.to_string(), d)?;
    }
    repo.write_stream(&manifest_id, w, None)?;

    if let Some(t) = &tag {
        repo.add_stream_ref(&manifest_id, t)?;
    }
    Ok(PullReport {
        manifest_digest,
        config_digest,
        image_id,
        tag: opts.tag.clone(),
        layers: plan.len(),
        layers_fetched: todo.len(),
        bytes_fetched,
        stats,
        already_present: false,
    })
}

fn fetch_layer(
    repo: &Repository,
    source: &dyn ImageSource,
    layer: &LayerPlan,
    progress: &dyn PullProgress,
    failed: &AtomicBool,
) -> Result<(ImportStats, u64), OciError> {
    let blob = source.open_blob("layer", &layer.blob)?;
    let mut counting = Counting {
        inner: blob,
        index: layer.index,
        progress,
        failed,
        bytes: 0,
        cancelled: false,
    };
    match import_layer(repo, &mut counting, &layer.blob.digest, &layer.diff_id) {
        Ok((_, stats)) => Ok((stats, counting.bytes)),
        Err(_) if counting.cancelled => Err(OciError::Cancelled),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
