//! `cfs-oci` owns OCI images in a composefs repository: fetching them (an `oci:` layout read
//! directly, every other transport through skopeo's image proxy), importing each tar layer as a
//! splitstream whose file bodies become deduplicated objects, merging the layers into one root
//! filesystem with the OCI whiteout rules and composefs-rs's finalisation (so image ids equal
//! composefs-rs's), and storing manifests, configs, the EROFS image and tags the way
//! composefs-rs 0.9 lays them out (FORMATS.md §5–6). Objects, streams, images, GC and fsck are
//! `cfs-repo`'s; formats and the tree are `cfs-format`'s; mounting is left to the caller.

pub mod digest;
pub mod entry;
pub mod error;
pub mod layer_import;
pub mod layer_read;
pub mod model;
pub mod names;
pub mod proxy;
pub mod pull;
pub mod rootfs;
pub mod source;
pub mod store;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;

pub use digest::{DigestAlgorithm, OciDigest};
pub use error::{EntryProblem, OciError};
pub use layer_import::{import_layer, Compression, ImportStats};
pub use names::ImageName;
pub use proxy::{SkopeoOptions, SkopeoSource};
pub use pull::{pull, LayerPlan, NoProgress, PullOptions, PullProgress, PullReport};
pub use source::{ImageReference, ImageSource, LayoutSource};
pub use store::{open_image, StoredImage};

/// Open the source an image reference names: `oci:` layouts directly, everything else through
/// skopeo.
pub fn open_source(
    reference: &ImageReference,
    skopeo: &SkopeoOptions,
) -> Result<Box<dyn ImageSource>, OciError> {
    Ok(match reference {
        ImageReference::OciLayout { dir, tag } => Box::new(LayoutSource::new(dir, tag.clone())),
        ImageReference::Skopeo(r) => Box::new(SkopeoSource::open(r, skopeo)?),
    })
}
