//! [`Image`]: the composefs header and EROFS superblock.

use super::error::ReadError;
use super::inode::InodeRef;
use super::{field_u16, field_u32, field_u64};
use crate::erofs::format::{
    self, sb, BLOCK_BITS, BLOCK_SIZE, COMPOSEFS_HEADER_SIZE, COMPOSEFS_HEADER_VERSION,
    COMPOSEFS_MAGIC, EROFS_MAGIC, FEATURE_COMPAT_MTIME, FEATURE_COMPAT_SB_CHKSUM,
    FEATURE_COMPAT_XATTR_FILTER, INODE_SLOT_SIZE, SUPERBLOCK_OFFSET, SUPERBLOCK_SIZE,
};
use crate::tree::Mtime;

/// An EROFS node id: the inode's byte offset (from `meta_blkaddr`) divided by 32.
///
/// composefs images put the root at NID 36 or a little after; NIDs of other inodes follow their
/// byte positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nid(pub u64);

impl std::fmt::Display for Nid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Nid {
    fn from(nid: u64) -> Self {
        Nid(nid)
    }
}

impl From<Nid> for u64 {
    fn from(nid: Nid) -> Self {
        nid.0
    }
}

/// `feature_compat` bits this reader understands.
const KNOWN_COMPAT: u32 =
    FEATURE_COMPAT_SB_CHKSUM | FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER;
/// `feature_incompat`: chunk-based files (composefs images never set it, other writers do).
const INCOMPAT_CHUNKED_FILE: u32 = 0x4;
/// `feature_incompat` bits this reader understands.
const KNOWN_INCOMPAT: u32 = INCOMPAT_CHUNKED_FILE;

/// A validated composefs image borrowed from a byte slice.
///
/// `Image` is a small `Copy` handle; every [`InodeRef`] carries one. Nothing is parsed ahead of
/// time: [`Image::open`] checks the header and superblock, and each inode, xattr and directory
/// block is validated when it is accessed.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// The image, cut to `blocks * 4096` bytes.
    data: &'a [u8],
    flags: u32,
    composefs_version: u32,
    feature_compat: u32,
    root_nid: Nid,
    inos: u64,
    build_time: Mtime,
    blocks: u32,
    meta_base: u64,
    xattr_base: u64,
}

impl<'a> Image<'a> {
    /// Validate the composefs header and the EROFS superblock of `data`.
    ///
    /// Checks: composefs magic `0xd078629a` and header version 1; `composefs_version` 0, 1 or 2
    /// (2 = the legacy composefs-rs format, read-only); EROFS magic; `blkszbits == 12`; only
    /// known feature bits; `blocks * 4096` not beyond the image; a root inode that is a
    /// directory. Bytes past `blocks * 4096` are ignored.
    pub fn open(data: &'a [u8]) -> Result<Self, ReadError> {
        let header = data
            .get(..COMPOSEFS_HEADER_SIZE)
            .ok_or(ReadError::OutOfBounds {
                what: "composefs header",
                offset: 0,
                len: COMPOSEFS_HEADER_SIZE as u64,
            })?;
        let magic = field_u32(header, 0);
        if magic != COMPOSEFS_MAGIC {
            return Err(ReadError::BadMagic {
                what: "composefs header",
                found: magic,
                expected: COMPOSEFS_MAGIC,
            });
        }
        let version = field_u32(header, 4);
        if version != COMPOSEFS_HEADER_VERSION {
            return Err(ReadError::UnsupportedHeaderVersion { found: version });
        }
        let flags = field_u32(header, 8);
        let composefs_version = field_u32(header, 12);
        if composefs_version > 2 {
            return Err(ReadError::UnsupportedFormatVersion {
                found: composefs_version,
            });
        }

        let superblock = data
            .get(SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + SUPERBLOCK_SIZE)
            .ok_or(ReadError::OutOfBounds {
                what: "EROFS superblock",
                offset: SUPERBLOCK_OFFSET as u64,
                len: SUPERBLOCK_SIZE as u64,
            })?;
        let magic = field_u32(superblock, sb::MAGIC);
        if magic != EROFS_MAGIC {
            return Err(ReadError::BadMagic {
                what: "EROFS superblock",
                found: magic,
                expected: EROFS_MAGIC,
            });
        }
        let blkszbits = superblock.get(sb::BLKSZBITS).copied().unwrap_or(0);
        if blkszbits != BLOCK_BITS {
            return Err(ReadError::UnsupportedBlockSize { blkszbits });
        }
        let feature_compat = field_u32(superblock, sb::FEATURE_COMPAT);
        let feature_incompat = field_u32(superblock, sb::FEATURE_INCOMPAT);
        if feature_compat & !KNOWN_COMPAT != 0 || feature_incompat & !KNOWN_INCOMPAT != 0 {
            return Err(ReadError::UnsupportedFeatures {
                compat: feature_compat & !KNOWN_COMPAT,
                incompat: feature_incompat & !KNOWN_INCOMPAT,
            });
        }
        let blocks = field_u32(superblock, sb::BLOCKS);
        let image_len = u64::from(blocks) * BLOCK_SIZE;
        let data = usize::try_from(image_len)
            .ok()
            .and_then(|len| data.get(..len))
            .ok_or(ReadError::BadSuperblock {
                reason: "superblock block count exceeds the image size",
            })?;
        let build_time = Mtime {
            sec: field_u64(superblock, sb::BUILD_TIME) as i64,
            nsec: field_u32(superblock, sb::BUILD_TIME_NSEC),
        };
        let image = Image {
            data,
            flags,
            composefs_version,
            feature_compat,
            root_nid: Nid(u64::from(field_u16(superblock, sb::ROOT_NID))),
            inos: field_u64(superblock, sb::INOS),
            build_time,
            blocks,
            meta_base: u64::from(field_u32(superblock, sb::META_BLKADDR)) * BLOCK_SIZE,
            xattr_base: u64::from(field_u32(superblock, sb::XATTR_BLKADDR)) * BLOCK_SIZE,
        };
        let root = image.inode(image.root_nid)?;
        if !root.is_dir() {
            return Err(ReadError::RootNotADirectory {
                nid: image.root_nid,
            });
        }
        Ok(image)
    }

    /// The image bytes (cut to `blocks * 4096`).
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The composefs header `flags` (bit 0: `HAS_ACL`).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Whether the header says some inode carries a POSIX ACL.
    pub fn has_acl(&self) -> bool {
        self.flags & format::COMPOSEFS_FLAGS_HAS_ACL != 0
    }

    /// The header's `composefs_version`: 0, 1 or 2 (2 = legacy composefs-rs format).
    pub fn composefs_version(&self) -> u32 {
        self.composefs_version
    }

    /// Whether this image format carries the 256 root whiteout stubs (versions 0 and 1).
    pub fn has_root_stubs(&self) -> bool {
        self.composefs_version < 2
    }

    /// The superblock's `feature_compat`.
    pub fn feature_compat(&self) -> u32 {
        self.feature_compat
    }

    /// NID of the root directory.
    pub fn root_nid(&self) -> Nid {
        self.root_nid
    }

    /// The superblock's inode count.
    pub fn inos(&self) -> u64 {
        self.inos
    }

    /// The superblock's `blocks` (image size / 4096).
    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// The superblock build time: the mtime of every compact inode.
    pub fn build_time(&self) -> Mtime {
        self.build_time
    }

    /// Byte offset of the block the shared xattr ids are relative to (`xattr_blkaddr * 4096`).
    pub fn xattr_base(&self) -> u64 {
        self.xattr_base
    }

    /// The root directory inode.
    pub fn root(&self) -> Result<InodeRef<'a>, ReadError> {
        self.inode(self.root_nid)
    }

    /// Byte offset of inode `nid`, or `None` on overflow.
    pub(crate) fn inode_offset(&self, nid: Nid) -> Option<u64> {
        nid.0
            .checked_mul(INODE_SLOT_SIZE)?
            .checked_add(self.meta_base)
    }

    /// `len` bytes at `offset`, or [`ReadError::OutOfBounds`] naming `what`.
    pub(crate) fn bytes(
        &self,
        offset: u64,
        len: u64,
        what: &'static str,
    ) -> Result<&'a [u8], ReadError> {
        let oob = ReadError::OutOfBounds { what, offset, len };
        let start = usize::try_from(offset).map_err(|_| oob.clone())?;
        let len_usize = usize::try_from(len).map_err(|_| oob.clone())?;
        let end = start.checked_add(len_usize).ok_or_else(|| oob.clone())?;
        self.data.get(start..end).ok_or(oob)
    }

    /// Inode `nid`, with its header validated (data and xattrs are checked on access).
    pub fn inode(&self, nid: Nid) -> Result<InodeRef<'a>, ReadError> {
        InodeRef::parse(*self, nid)
    }

    /// Resolve an absolute or relative `/`-separated path from the root, without following
    /// symlinks. `Ok(None)` when a component does not exist or is not a directory.
    pub fn resolve(&self, path: &[u8]) -> Result<Option<InodeRef<'a>>, ReadError> {
        let mut cur = self.root()?;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            if !cur.is_dir() {
                return Ok(None);
            }
            match cur.lookup(comp)? {
                Some(entry) => cur = self.inode(entry.nid)?,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }
}
