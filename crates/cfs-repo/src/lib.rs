//! `cfs-repo` owns everything that touches the filesystem below the CLI: reading a directory
//! tree into a [`cfs_format::Tree`] (with content digests and an optional digest store) and,
//! later, the composefs repository itself. Formats stay in `cfs-format`; mounting and FUSE
//! live above.

pub mod scan;
pub mod store;
pub mod verity;

#[cfg(test)]
mod scan_c_examples;
#[cfg(test)]
mod testutil;

pub use scan::{scan_directory, ScanError, ScanOptions};
pub use store::{fill_digest_store, StoreStats};
