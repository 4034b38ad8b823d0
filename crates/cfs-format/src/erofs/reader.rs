//! The validating, zero-copy reader of composefs EROFS images (docs/formats.md §2, §2.12).
//!
//! One reader serves every consumer: `composefs-info dump/ls/objects`, the FUSE server, fsck and
//! GC. It works on a borrowed `&[u8]` and never copies the image; every offset and length taken
//! from the image is checked against its size, so arbitrary bytes yield a [`ReadError`], never a
//! panic, an endless loop or an unbounded allocation.
//!
//! Layers, from raw to interpreted:
//! - [`Image`]: the composefs header and EROFS superblock, validated by [`Image::open`];
//!   [`Image::inode`] gives an [`InodeRef`] for a [`Nid`].
//! - [`InodeRef`]: the raw inode — mode, ids, size, times, data layout ([`FlatData`],
//!   [`ChunkInfo`]), xattrs as stored ([`Xattrs`], local entries first, then shared ones) and
//!   directory entries ([`DirIter`], [`InodeRef::lookup`]).
//! - [`Node`]: the composefs interpretation of an inode (§2.12): external/sparse/inline regular
//!   files, escaped whiteouts turned back into chardev 0:0, overlay xattrs hidden or unescaped.
//!   [`Image::children`] and [`Image::lookup_child`] show a directory the way the composefs
//!   view does (`.`/`..` and the root whiteout stubs hidden).
//! - Whole-image operations: [`read_tree`] (rebuild a [`Tree`](crate::tree::Tree)), [`dump`]
//!   (C `composefs-info dump`), [`ls`], [`objects`] and [`object_digests`]. They walk the tree
//!   iteratively with capped depth ([`MAX_DEPTH`]), path length ([`MAX_PATH_LEN`]) and entry
//!   count, and fail on directory cycles, so their cost stays linear in the image size.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

mod composefs;
mod dir;
mod dump;
mod error;
mod image;
mod inode;
#[cfg(test)]
mod tests;
mod tree;
mod walk;
mod xattr;

pub use composefs::{Children, Node, NodeKind, OverlayXattrs, RegularData, VisibleXattrs};
pub use dir::{DirEntryRef, DirIter};
pub use dump::{dump, ls, object_digests, objects};
pub use error::{DumpError, ReadError};
pub use image::{Image, Nid};
pub use inode::{ChunkInfo, DataLayout, FileType, FlatData, InodeRef};
pub use tree::read_tree;
pub use xattr::{Xattr, Xattrs};

/// Deepest directory nesting the whole-image walkers ([`read_tree`], [`dump`], [`ls`],
/// [`objects`]) accept before failing with [`ReadError::TooDeep`].
pub const MAX_DEPTH: usize = 4096;

/// Longest path (in bytes) the whole-image walkers build before failing with
/// [`ReadError::TooDeep`].
pub const MAX_PATH_LEN: usize = 1 << 16;

/// `n` little-endian bytes at `off` of `b`, or `None` when they are not all there.
#[inline]
fn array_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// A little-endian u16 at `off`, or `None` past the end.
#[inline]
fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    array_at(b, off).map(u16::from_le_bytes)
}

/// A little-endian u32 at `off`, or `None` past the end.
#[inline]
fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    array_at(b, off).map(u32::from_le_bytes)
}

/// A little-endian u64 at `off`, or `None` past the end.
#[inline]
fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    array_at(b, off).map(u64::from_le_bytes)
}

/// Field readers for fixed-size structures whose length was checked beforehand: a read past
/// the end (which the caller has ruled out) yields 0 instead of panicking.
#[inline]
fn field_u16(b: &[u8], off: usize) -> u16 {
    le_u16(b, off).unwrap_or(0)
}

#[inline]
fn field_u32(b: &[u8], off: usize) -> u32 {
    le_u32(b, off).unwrap_or(0)
}

#[inline]
fn field_u64(b: &[u8], off: usize) -> u64 {
    le_u64(b, off).unwrap_or(0)
}
