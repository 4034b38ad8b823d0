//! `cfs-fuse`: a read-only FUSE server for composefs images.
//!
//! The image is served straight from its mapped bytes through the validating reader of
//! `cfs-format`: no tree and no per-inode table is built at mount, so mounting is O(1) and the
//! memory used does not grow with the image. External file contents come from an objects
//! directory (a repository's `objects/` or a digest store).
//!
//! What the mount shows is the image's dumpfile view (docs/formats.md §8.1): root whiteout stubs and
//! composefs-internal xattrs are hidden, escaped `trusted.overlay.overlay.*` names are shown
//! unescaped, escaped whiteouts appear as chardev 0:0, mtimes keep their nanoseconds. Inode
//! numbers are stable: the root is 1, every other inode its NID (hardlinks share it).
//!
//! Serving: one worker per CPU by default, each on its own cloned `/dev/fuse` fd; lookups
//! binary-search directory blocks; readdir resumes in O(1); READDIRPLUS, PARALLEL_DIROPS,
//! CACHE_SYMLINKS, the largest readahead and infinite entry/attribute timeouts are negotiated;
//! opens keep the page cache. With `verify=on` (the default) every READ of an external file
//! that reaches the server is checked against the file's fs-verity digest, as kernel fs-verity
//! checks every page it reads in: small files whole, larger ones block by block against their
//! Merkle tree. Files can be read through FUSE passthrough instead (checked whole at open).
//! Damage found while serving gives EIO for that request, never a crash.
//!
//! [`serve`] mounts and serves in one call; [`mount`] and [`MountedFs::serve`] split the two,
//! so that a daemon can fork after mounting.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let image = std::fs::File::open("image.cfs")?;
//! let opts: cfs_fuse::FuseOptions = "threads=2,passthrough".parse()?;
//! let objects = std::path::Path::new("/repo/objects").into();
//! let session = cfs_fuse::serve(image, objects, "/mnt".as_ref(), &opts)?;
//! eprintln!("{}", session.counters());
//! session.unmount()?;
//! # Ok(())
//! # }
//! ```

mod abi;
mod attr;
mod counters;
mod fs;
mod mmap;
mod objects;
mod options;
mod session;
mod sys;
#[cfg(test)]
mod testutil;
mod uring;
mod verify;

pub use counters::{Counters, Op};
pub use options::{FuseOptions, ParseOptionsError, VALID_OPTIONS};
pub use session::{mount, serve, FuseError, FuseSession, MountedFs, ObjectsDir};
