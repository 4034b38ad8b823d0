//! `cfs-oci` owns OCI images in a composefs repository: fetching them (`oci:` layouts and
//! `docker://` registries read directly where that gives what skopeo would, everything else
//! through skopeo's image proxy), importing each tar layer as a
//! splitstream whose file bodies become deduplicated objects, merging the layers into one root
//! filesystem with the OCI whiteout rules and composefs-rs's finalisation (so image ids equal
//! composefs-rs's), and storing manifests, configs, the EROFS image and tags the way
//! composefs-rs 0.9 lays them out (docs/formats.md §5–6). Objects, streams, images, GC and fsck are
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
pub mod registry;
pub mod rootfs;
pub mod source;
pub mod store;
mod sys;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;

pub use digest::{DigestAlgorithm, OciDigest};
pub use error::{EntryProblem, OciError};
pub use layer_import::{import_layer, Compression, ImportStats};
pub use names::ImageName;
pub use proxy::SkopeoSource;
pub use pull::{pull, LayerPlan, NoProgress, PullOptions, PullProgress, PullReport};
pub use registry::RegistrySource;
pub use source::{FetchOptions, Fetcher, ImageReference, ImageSource, LayoutSource};
pub use store::{open_image, StoredImage};

/// Open the source an image reference names, the way `opts.fetcher` asks: `oci:` layouts are
/// read directly, `docker://` registries directly where [`RegistrySource`] can fetch what
/// skopeo would, everything else through skopeo.
pub fn open_source(
    reference: &ImageReference,
    opts: &FetchOptions,
) -> Result<Box<dyn ImageSource>, OciError> {
    let text = reference.to_skopeo();
    let skopeo = |why: Option<String>| -> Result<Box<dyn ImageSource>, OciError> {
        Ok(Box::new(SkopeoSource::open(&text, opts, why)?))
    };
    match (reference, opts.fetcher) {
        (_, Fetcher::Skopeo) => skopeo(None),
        (ImageReference::OciLayout { dir, tag }, _) => {
            Ok(Box::new(LayoutSource::new(dir, tag.clone())))
        }
        (ImageReference::Skopeo(r), fetcher) if r.starts_with("docker://") => {
            match RegistrySource::open(r, opts)? {
                registry::Opened::Direct(source) => Ok(source),
                registry::Opened::NeedsSkopeo(why) if fetcher == Fetcher::Direct => {
                    Err(OciError::FetcherUnavailable {
                        reference: text.clone(),
                        reason: format!("only skopeo can fetch it: {why}"),
                    })
                }
                registry::Opened::NeedsSkopeo(why) => skopeo(Some(why)),
            }
        }
        (_, Fetcher::Direct) => Err(OciError::FetcherUnavailable {
            reference: text.clone(),
            reason: "only oci: layouts and docker:// registries are read directly".into(),
        }),
        (_, Fetcher::Auto) => skopeo(None),
    }
}
