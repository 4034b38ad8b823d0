//! `cfs-format` owns the pure composefs formats: fs-verity digests, the in-memory [`tree::Tree`]
//! that every source (directory, dumpfile, OCI layers) is turned into, the composefs dumpfile text
//! format, and the EROFS image writer and reader. It works only on byte slices, `Read` and
//! `Write`; it never touches paths on disk, so everything here can be unit-tested and fuzzed.
//! Repositories, mounts and FUSE live in the crates above it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod dumpfile;
pub mod erofs;
pub mod fill;
pub mod fsverity;
pub mod transform;
pub mod tree;

pub use fsverity::{Algorithm, Digest, FsVerityHasher};
pub use tree::{InodeId, Tree};
