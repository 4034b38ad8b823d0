//! On-disk constants and field offsets of composefs EROFS images (docs/formats.md §2).
//!
//! Structures are described by byte offsets rather than `repr(C)` structs so that the writer can
//! emit them with `to_le_bytes` and the reader can pull fields out of untrusted bytes with bounds
//! checks, both without `unsafe`.

/// Block size (`blkszbits = 12`).
pub const BLOCK_SIZE: u64 = 4096;
/// log2 of [`BLOCK_SIZE`].
pub const BLOCK_BITS: u8 = 12;

/// composefs header magic at offset 0.
pub const COMPOSEFS_MAGIC: u32 = 0xd078_629a;
/// composefs header `version` field (always 1).
pub const COMPOSEFS_HEADER_VERSION: u32 = 1;
/// Header flag: some inode carries a POSIX ACL xattr.
pub const COMPOSEFS_FLAGS_HAS_ACL: u32 = 1;
/// Size of the composefs header.
pub const COMPOSEFS_HEADER_SIZE: usize = 32;

/// Offset of the EROFS superblock.
pub const SUPERBLOCK_OFFSET: usize = 1024;
/// Size of the EROFS superblock.
pub const SUPERBLOCK_SIZE: usize = 128;
/// EROFS superblock magic.
pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// `feature_compat`: per-inode mtimes.
pub const FEATURE_COMPAT_MTIME: u32 = 2;
/// `feature_compat`: xattr bloom filter.
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 4;
/// `feature_compat`: superblock checksum (never set by composefs, accepted by readers).
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 1;

/// First byte after the superblock: the inode table starts here (NID 36).
pub const INODE_TABLE_START: u64 = 1152;
/// Inodes are aligned to 32-byte slots; NID = byte offset / 32.
pub const INODE_SLOT_SIZE: u64 = 32;
/// Size of a compact inode header.
pub const COMPACT_INODE_SIZE: usize = 32;
/// Size of an extended inode header.
pub const EXTENDED_INODE_SIZE: usize = 64;

/// `i_format` bit 0: extended inode.
pub const INODE_LAYOUT_EXTENDED: u16 = 1;
/// Data layout: plain blocks.
pub const DATALAYOUT_FLAT_PLAIN: u16 = 0;
/// Data layout: blocks plus an inline tail after the inode.
pub const DATALAYOUT_FLAT_INLINE: u16 = 2;
/// Data layout: chunk-based.
pub const DATALAYOUT_CHUNK_BASED: u16 = 4;

/// Chunk index value for a hole.
pub const NULL_ADDR: u32 = 0xFFFF_FFFF;
/// Chunk format bit: 8-byte chunk indexes instead of a block address array (never written).
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;
/// Mask of the chunk-bits part of the chunk format.
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1f;
/// Most chunk indexes a composefs external file may use.
pub const MAX_CHUNK_INDEXES: u64 = 1024;

/// Size of a directory entry header.
pub const DIRENT_SIZE: usize = 12;

/// Directory entry file types.
pub mod file_type {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHRDEV: u8 = 3;
    /// Block device.
    pub const BLKDEV: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// Size of the inline xattr body header (`name_filter`, `shared_count`, reserved).
pub const XATTR_HEADER_SIZE: usize = 12;
/// Size of an xattr entry header (`name_len`, `name_index`, `value_size`).
pub const XATTR_ENTRY_HEADER_SIZE: usize = 4;
/// Seed of the xattr name bloom filter (`EROFS_XATTR_FILTER_SEED`).
pub const XATTR_FILTER_SEED: u32 = 0x25BB_E08F;
/// Most shared xattrs C references from one inode.
pub const MAX_SHARED_XATTRS_PER_INODE: usize = 128;

/// Xattr name prefixes by index, in the order C matches them (first hit wins).
/// Index 5 (`lustre.`) is never used by V0/V1 writers.
pub const XATTR_PREFIXES: [(u8, &[u8]); 5] = [
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
];

/// The prefix for a given name index, for readers (includes `lustre.`).
pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    match index {
        0 => Some(b""),
        1 => Some(b"user."),
        2 => Some(b"system.posix_acl_access"),
        3 => Some(b"system.posix_acl_default"),
        4 => Some(b"trusted."),
        5 => Some(b"lustre."),
        6 => Some(b"security."),
        _ => None,
    }
}

/// Split a full xattr name into (prefix index, suffix) as the V0/V1 writer does.
pub fn split_xattr_name(name: &[u8]) -> (u8, &[u8]) {
    for (index, prefix) in XATTR_PREFIXES {
        if let Some(suffix) = name.strip_prefix(prefix) {
            return (index, suffix);
        }
    }
    (0, name)
}

/// composefs image format versions (the header's `composefs_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FormatVersion {
    /// C's default when the tree has no whiteout.
    V0,
    /// Adds `opaque=x` markers for escaped whiteouts.
    V1,
}

impl FormatVersion {
    /// The header value.
    pub fn number(self) -> u32 {
        match self {
            FormatVersion::V0 => 0,
            FormatVersion::V1 => 1,
        }
    }

    /// From the header value.
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            0 => Some(FormatVersion::V0),
            1 => Some(FormatVersion::V1),
            _ => None,
        }
    }
}

/// Overlay xattr names the writer adds and the reader hides.
pub mod overlay {
    /// Marks a file whose data lives elsewhere (value: empty or a digest header + digest).
    pub const METACOPY: &[u8] = b"trusted.overlay.metacopy";
    /// Object path relative to the data-only layer.
    pub const REDIRECT: &[u8] = b"trusted.overlay.redirect";
    /// Root opaque marker (`y`), and the V1 parent marker when escaped.
    pub const OPAQUE: &[u8] = b"trusted.overlay.opaque";
    /// Prefix of every overlay xattr.
    pub const PREFIX: &[u8] = b"trusted.overlay.";
    /// Prefix of escaped user overlay xattrs.
    pub const ESCAPED_PREFIX: &[u8] = b"trusted.overlay.overlay.";
    /// Escaped whiteout marker.
    pub const ESCAPED_WHITEOUT: &[u8] = b"trusted.overlay.overlay.whiteout";
    /// Escaped "directory contains whiteouts" marker.
    pub const ESCAPED_WHITEOUTS: &[u8] = b"trusted.overlay.overlay.whiteouts";
    /// Escaped opaque marker (V1 parents of whiteouts).
    pub const ESCAPED_OPAQUE: &[u8] = b"trusted.overlay.overlay.opaque";
    /// User-namespace whiteout marker.
    pub const USER_WHITEOUT: &[u8] = b"user.overlay.whiteout";
    /// User-namespace "contains whiteouts" marker.
    pub const USER_WHITEOUTS: &[u8] = b"user.overlay.whiteouts";
    /// User-namespace opaque marker.
    pub const USER_OPAQUE: &[u8] = b"user.overlay.opaque";
}

/// Superblock field offsets, relative to [`SUPERBLOCK_OFFSET`].
pub mod sb {
    /// u32 magic.
    pub const MAGIC: usize = 0;
    /// u32 checksum.
    pub const CHECKSUM: usize = 4;
    /// u32 feature_compat.
    pub const FEATURE_COMPAT: usize = 8;
    /// u8 blkszbits.
    pub const BLKSZBITS: usize = 12;
    /// u8 sb_extslots.
    pub const EXTSLOTS: usize = 13;
    /// u16 root_nid.
    pub const ROOT_NID: usize = 14;
    /// u64 inos.
    pub const INOS: usize = 16;
    /// u64 build_time.
    pub const BUILD_TIME: usize = 24;
    /// u32 build_time_nsec.
    pub const BUILD_TIME_NSEC: usize = 32;
    /// u32 blocks.
    pub const BLOCKS: usize = 36;
    /// u32 meta_blkaddr.
    pub const META_BLKADDR: usize = 40;
    /// u32 xattr_blkaddr.
    pub const XATTR_BLKADDR: usize = 44;
    /// u32 feature_incompat.
    pub const FEATURE_INCOMPAT: usize = 80;
}

/// Compact inode field offsets.
pub mod compact {
    /// u16 i_format.
    pub const FORMAT: usize = 0;
    /// u16 i_xattr_icount.
    pub const XATTR_ICOUNT: usize = 2;
    /// u16 i_mode.
    pub const MODE: usize = 4;
    /// u16 i_nlink.
    pub const NLINK: usize = 6;
    /// u32 i_size.
    pub const SIZE: usize = 8;
    /// u32 i_u.
    pub const U: usize = 16;
    /// u32 i_ino.
    pub const INO: usize = 20;
    /// u16 i_uid.
    pub const UID: usize = 24;
    /// u16 i_gid.
    pub const GID: usize = 26;
}

/// Extended inode field offsets.
pub mod extended {
    /// u16 i_format.
    pub const FORMAT: usize = 0;
    /// u16 i_xattr_icount.
    pub const XATTR_ICOUNT: usize = 2;
    /// u16 i_mode.
    pub const MODE: usize = 4;
    /// u64 i_size.
    pub const SIZE: usize = 8;
    /// u32 i_u.
    pub const U: usize = 16;
    /// u32 i_ino.
    pub const INO: usize = 20;
    /// u32 i_uid.
    pub const UID: usize = 24;
    /// u32 i_gid.
    pub const GID: usize = 28;
    /// u64 i_mtime.
    pub const MTIME: usize = 32;
    /// u32 i_mtime_nsec.
    pub const MTIME_NSEC: usize = 40;
    /// u32 i_nlink.
    pub const NLINK: usize = 44;
}

/// `i_xattr_icount` for an inline xattr body of `xattr_size` bytes (0 = none).
pub fn xattr_icount(xattr_size: usize) -> u16 {
    if xattr_size == 0 {
        0
    } else {
        ((xattr_size - XATTR_HEADER_SIZE) / 4 + 1) as u16
    }
}

/// Inline xattr body size for an `i_xattr_icount`.
pub fn xattr_body_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_HEADER_SIZE + (icount as usize - 1) * 4
    }
}

/// Size of an xattr entry with the given suffix and value lengths, padded to 4.
pub fn xattr_entry_size(suffix_len: usize, value_len: usize) -> usize {
    (XATTR_ENTRY_HEADER_SIZE + suffix_len + value_len + 3) & !3
}

/// The bloom-filter bit for an xattr (`xxh32(suffix, seed + index) & 31`).
pub fn xattr_filter_bit(name_index: u8, suffix: &[u8]) -> u32 {
    xxhash_rust::xxh32::xxh32(suffix, XATTR_FILTER_SEED.wrapping_add(name_index as u32)) & 31
}

/// Directory entry file type for an `st_mode`.
pub fn file_type_of_mode(mode: u32) -> u8 {
    use crate::tree::mode::*;
    match mode & S_IFMT {
        S_IFREG => file_type::REG,
        S_IFDIR => file_type::DIR,
        S_IFCHR => file_type::CHRDEV,
        S_IFBLK => file_type::BLKDEV,
        S_IFIFO => file_type::FIFO,
        S_IFSOCK => file_type::SOCK,
        S_IFLNK => file_type::SYMLINK,
        _ => file_type::UNKNOWN,
    }
}

/// Round `x` up to a multiple of `n` (a power of two).
pub const fn round_up(x: u64, n: u64) -> u64 {
    (x + n - 1) & !(n - 1)
}
