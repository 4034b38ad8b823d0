//! `cfs-repo` owns everything that touches the filesystem below the CLI: reading a directory
//! tree into a [`cfs_format::Tree`] (with content digests and an optional digest store), the
//! composefs repository ([`Repository`]: `meta.json`, objects, images, streams, refs, locking,
//! GC, fsck) and the splitstream format its streams are stored in. Image and digest formats
//! stay in `cfs-format`; mounting and FUSE live above.

pub mod progress;
pub mod repo;
pub mod scan;
pub mod splitstream;
pub mod store;
pub mod verity;

#[cfg(test)]
mod scan_c_examples;
#[cfg(test)]
mod testutil;

pub use cfs_format::fill::read_full;
pub use progress::{NoProgress, Progress};
pub use repo::{
    default_path, default_system_path, default_user_path, ExclusiveLock, FsckError, FsckReport,
    GcOptions, GcReport, ImageInfo, InitOptions, OpenOptions, RemovedItem, RemovedKind, RepoError,
    RepoMeta, Repository, StreamInfo,
};
pub use scan::{scan_directory, ScanError, ScanOptions};
pub use splitstream::{SplitStream, SplitStreamError, SplitStreamWriter};
pub use store::{fill_digest_store, StoreStats};
