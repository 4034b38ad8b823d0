//! Reader errors: every variant says what was wrong and where (NID, byte offset).

use std::io;

use super::image::Nid;

/// Why an image (or a part of it) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// A structure lies (partly) outside the image.
    #[error("{what} out of bounds: offset {offset}, length {len}")]
    OutOfBounds {
        /// The structure that was being read.
        what: &'static str,
        /// Its byte offset in the image (saturated at `u64::MAX` when it overflowed).
        offset: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The composefs header or the EROFS superblock has the wrong magic number.
    #[error("bad {what} magic {found:#010x} (expected {expected:#010x})")]
    BadMagic {
        /// `"composefs header"` or `"EROFS superblock"`.
        what: &'static str,
        /// The value found.
        found: u32,
        /// The value expected.
        expected: u32,
    },
    /// The composefs header `version` field is not 1.
    #[error("unsupported composefs header version {found}")]
    UnsupportedHeaderVersion {
        /// The value found.
        found: u32,
    },
    /// The composefs header `composefs_version` is not 0, 1 or 2.
    #[error("unsupported composefs format version {found}")]
    UnsupportedFormatVersion {
        /// The value found.
        found: u32,
    },
    /// The superblock's `blkszbits` is not 12.
    #[error("unsupported EROFS block size 2^{blkszbits} (only 4096-byte blocks)")]
    UnsupportedBlockSize {
        /// The value found.
        blkszbits: u8,
    },
    /// The superblock announces features this reader does not know.
    #[error("unsupported EROFS features: compat {compat:#x}, incompat {incompat:#x}")]
    UnsupportedFeatures {
        /// Unknown `feature_compat` bits.
        compat: u32,
        /// Unknown `feature_incompat` bits.
        incompat: u32,
    },
    /// A superblock field is inconsistent with the image.
    #[error("bad EROFS superblock: {reason}")]
    BadSuperblock {
        /// What is wrong.
        reason: &'static str,
    },
    /// An inode header is invalid.
    #[error("bad inode {nid}: {reason}")]
    BadInode {
        /// The inode.
        nid: Nid,
        /// What is wrong.
        reason: &'static str,
    },
    /// An inode uses a data layout this reader does not handle (compression).
    #[error("inode {nid} uses unsupported data layout {layout}")]
    UnsupportedLayout {
        /// The inode.
        nid: Nid,
        /// The raw `datalayout` value.
        layout: u16,
    },
    /// An extended attribute entry is invalid.
    #[error("bad xattr of inode {nid} at offset {offset}: {reason}")]
    BadXattr {
        /// The inode.
        nid: Nid,
        /// Byte offset of the entry (or shared id slot) in the image.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A directory entry or name is invalid.
    #[error("bad directory entry in inode {nid} at offset {offset}: {reason}")]
    BadDirent {
        /// The directory inode.
        nid: Nid,
        /// Byte offset of the entry or name in the image.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A directory operation was asked of an inode that is not a directory.
    #[error("inode {nid} is not a directory")]
    NotADirectory {
        /// The inode.
        nid: Nid,
    },
    /// The root inode is not a directory.
    #[error("root inode {nid} is not a directory")]
    RootNotADirectory {
        /// The root NID from the superblock.
        nid: Nid,
    },
    /// A directory is reachable through more than one entry (a cycle or a directory hardlink).
    #[error("directory inode {nid} is reachable more than once (loop or directory hardlink)")]
    InodeLoop {
        /// The directory inode.
        nid: Nid,
    },
    /// Two entries of one directory have the same name.
    #[error("directory inode {nid} has the name {name:?} twice")]
    DuplicateName {
        /// The directory inode.
        nid: Nid,
        /// The name, lossily decoded.
        name: String,
    },
    /// Directories nest deeper than [`MAX_DEPTH`](super::MAX_DEPTH) or a path grows longer
    /// than [`MAX_PATH_LEN`](super::MAX_PATH_LEN).
    #[error("directory tree too deep at inode {nid} (depth {depth})")]
    TooDeep {
        /// The directory that would exceed the limit.
        nid: Nid,
        /// Its depth.
        depth: usize,
    },
    /// Materialising the image would allocate far more than the image's own size (e.g. one
    /// shared xattr or data block referenced by a huge number of inodes).
    #[error("image expands beyond the allocation limit of {limit} bytes ({what})")]
    ResourceLimit {
        /// What was being copied.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
}

/// Why [`dump`](super::dump) or [`ls`](super::ls) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The image is invalid.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing the output failed.
    #[error("writing output: {0}")]
    Io(#[from] io::Error),
}
