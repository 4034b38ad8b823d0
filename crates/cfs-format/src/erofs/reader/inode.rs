//! [`InodeRef`]: one inode header, its data layout and its data.

use std::borrow::Cow;

use super::error::ReadError;
use super::image::{Image, Nid};
use super::{field_u16, field_u32, field_u64};
use crate::erofs::format::{
    self, compact, extended, file_type, BLOCK_SIZE, CHUNK_FORMAT_BLKBITS_MASK,
    CHUNK_FORMAT_INDEXES, COMPACT_INODE_SIZE, EXTENDED_INODE_SIZE, NULL_ADDR,
};
use crate::tree::{mode, Mtime};

/// The type of an inode, from the `S_IFMT` bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

impl FileType {
    /// The type encoded in `mode`, or `None` for an invalid `S_IFMT` value.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & mode::S_IFMT {
            mode::S_IFREG => FileType::Regular,
            mode::S_IFDIR => FileType::Directory,
            mode::S_IFLNK => FileType::Symlink,
            mode::S_IFCHR => FileType::CharDevice,
            mode::S_IFBLK => FileType::BlockDevice,
            mode::S_IFIFO => FileType::Fifo,
            mode::S_IFSOCK => FileType::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits.
    pub fn type_bits(self) -> u32 {
        match self {
            FileType::Regular => mode::S_IFREG,
            FileType::Directory => mode::S_IFDIR,
            FileType::Symlink => mode::S_IFLNK,
            FileType::CharDevice => mode::S_IFCHR,
            FileType::BlockDevice => mode::S_IFBLK,
            FileType::Fifo => mode::S_IFIFO,
            FileType::Socket => mode::S_IFSOCK,
        }
    }

    /// The EROFS directory-entry file type (`EROFS_FT_*`).
    pub fn dirent_type(self) -> u8 {
        match self {
            FileType::Regular => file_type::REG,
            FileType::Directory => file_type::DIR,
            FileType::Symlink => file_type::SYMLINK,
            FileType::CharDevice => file_type::CHRDEV,
            FileType::BlockDevice => file_type::BLKDEV,
            FileType::Fifo => file_type::FIFO,
            FileType::Socket => file_type::SOCK,
        }
    }
}

/// How an inode's data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataLayout {
    /// `EROFS_INODE_FLAT_PLAIN`: whole blocks starting at block `i_u`.
    FlatPlain,
    /// `EROFS_INODE_FLAT_INLINE`: blocks, then the last partial block inline after the inode.
    FlatInline,
    /// `EROFS_INODE_CHUNK_BASED`: a chunk index array after the inode (composefs: all holes).
    ChunkBased,
}

/// One inode of an [`Image`]: the header fields, decoded and validated.
///
/// Cheap to copy. Data, xattrs and directory entries are located and bounds-checked only when
/// asked for.
#[derive(Debug, Clone, Copy)]
pub struct InodeRef<'a> {
    image: Image<'a>,
    nid: Nid,
    offset: u64,
    extended: bool,
    layout: DataLayout,
    file_type: FileType,
    mode: u16,
    xattr_icount: u16,
    nlink: u32,
    size: u64,
    raw_u: u32,
    ino: u32,
    uid: u32,
    gid: u32,
    mtime: Mtime,
}

impl<'a> InodeRef<'a> {
    pub(crate) fn parse(image: Image<'a>, nid: Nid) -> Result<Self, ReadError> {
        let offset = image.inode_offset(nid).ok_or(ReadError::OutOfBounds {
            what: "inode",
            offset: u64::MAX,
            len: COMPACT_INODE_SIZE as u64,
        })?;
        let head = image.bytes(offset, COMPACT_INODE_SIZE as u64, "inode")?;
        let format = field_u16(head, compact::FORMAT);
        if format & !0xF != 0 {
            return Err(ReadError::BadInode {
                nid,
                reason: "unknown i_format bits",
            });
        }
        let extended = format & format::INODE_LAYOUT_EXTENDED != 0;
        let raw_layout = (format >> 1) & 0x7;
        let layout = match raw_layout {
            format::DATALAYOUT_FLAT_PLAIN => DataLayout::FlatPlain,
            format::DATALAYOUT_FLAT_INLINE => DataLayout::FlatInline,
            format::DATALAYOUT_CHUNK_BASED => DataLayout::ChunkBased,
            1 | 3 => {
                return Err(ReadError::UnsupportedLayout {
                    nid,
                    layout: raw_layout,
                });
            }
            _ => {
                return Err(ReadError::BadInode {
                    nid,
                    reason: "invalid data layout",
                });
            }
        };
        let xattr_icount = field_u16(head, compact::XATTR_ICOUNT);
        let mode = field_u16(head, compact::MODE);
        let file_type = FileType::from_mode(u32::from(mode)).ok_or(ReadError::BadInode {
            nid,
            reason: "invalid file type in i_mode",
        })?;
        let mut inode = InodeRef {
            image,
            nid,
            offset,
            extended,
            layout,
            file_type,
            mode,
            xattr_icount,
            nlink: 0,
            size: 0,
            raw_u: 0,
            ino: 0,
            uid: 0,
            gid: 0,
            mtime: image.build_time(),
        };
        if extended {
            let h = image.bytes(offset, EXTENDED_INODE_SIZE as u64, "extended inode")?;
            inode.size = field_u64(h, extended::SIZE);
            inode.raw_u = field_u32(h, extended::U);
            inode.ino = field_u32(h, extended::INO);
            inode.uid = field_u32(h, extended::UID);
            inode.gid = field_u32(h, extended::GID);
            inode.mtime = Mtime {
                sec: field_u64(h, extended::MTIME) as i64,
                nsec: field_u32(h, extended::MTIME_NSEC),
            };
            inode.nlink = field_u32(h, extended::NLINK);
        } else {
            inode.nlink = u32::from(field_u16(head, compact::NLINK));
            inode.size = u64::from(field_u32(head, compact::SIZE));
            inode.raw_u = field_u32(head, compact::U);
            inode.ino = field_u32(head, compact::INO);
            inode.uid = u32::from(field_u16(head, compact::UID));
            inode.gid = u32::from(field_u16(head, compact::GID));
        }
        image.bytes(
            inode.xattr_offset(),
            inode.xattr_size() as u64,
            "inode xattr body",
        )?;
        Ok(inode)
    }

    /// The image this inode belongs to.
    pub fn image(&self) -> Image<'a> {
        self.image
    }

    /// The node id.
    pub fn nid(&self) -> Nid {
        self.nid
    }

    /// Byte offset of the inode header in the image.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Whether this is a 64-byte extended inode (else a 32-byte compact one).
    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// Size of the inode header: 32 or 64 bytes.
    pub fn header_size(&self) -> u64 {
        if self.extended {
            EXTENDED_INODE_SIZE as u64
        } else {
            COMPACT_INODE_SIZE as u64
        }
    }

    /// The data layout.
    pub fn layout(&self) -> DataLayout {
        self.layout
    }

    /// The file type (from the mode's `S_IFMT` bits).
    pub fn file_type(&self) -> FileType {
        self.file_type
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == FileType::Directory
    }

    /// The full 16-bit `i_mode` (type bits and permissions).
    pub fn mode(&self) -> u32 {
        u32::from(self.mode)
    }

    /// The permission bits (`mode & 0o7777`).
    pub fn permissions(&self) -> u32 {
        u32::from(self.mode) & 0o7777
    }

    /// The link count.
    pub fn nlink(&self) -> u32 {
        self.nlink
    }

    /// `i_size`: the logical size (directories: their EROFS data size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The owner.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The group.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The modification time; compact inodes take the superblock build time.
    pub fn mtime(&self) -> Mtime {
        self.mtime
    }

    /// `i_ino` as stored (V0/V1: BFS index; V2: NID).
    pub fn ino(&self) -> u32 {
        self.ino
    }

    /// The raw `i_u` union: rdev, first block address or chunk format.
    pub fn raw_u(&self) -> u32 {
        self.raw_u
    }

    /// The device number of a character or block device (`i_u`), else 0.
    pub fn rdev(&self) -> u32 {
        match self.file_type {
            FileType::CharDevice | FileType::BlockDevice => self.raw_u,
            _ => 0,
        }
    }

    /// `i_xattr_icount`.
    pub fn xattr_icount(&self) -> u16 {
        self.xattr_icount
    }

    /// Size in bytes of the inline xattr body (0 when there are no xattrs).
    pub fn xattr_size(&self) -> usize {
        format::xattr_body_size(self.xattr_icount)
    }

    /// Byte offset of the inline xattr body.
    pub(crate) fn xattr_offset(&self) -> u64 {
        self.offset.saturating_add(self.header_size())
    }

    /// Byte offset of what follows the xattr body: the inline tail or the chunk indexes.
    pub(crate) fn inline_offset(&self) -> u64 {
        self.xattr_offset().saturating_add(self.xattr_size() as u64)
    }

    /// The data of a flat inode (regular file content, directory blocks, symlink target).
    ///
    /// Fails for chunk-based inodes, when the blocks or the inline tail lie outside the image,
    /// or when the inline tail crosses a block boundary (as the kernel requires).
    pub fn data(&self) -> Result<FlatData<'a>, ReadError> {
        let empty = FlatData {
            head: &[],
            tail: &[],
            head_offset: 0,
            tail_offset: 0,
        };
        if self.size == 0 && self.layout != DataLayout::ChunkBased {
            return Ok(empty);
        }
        let block_start = u64::from(self.raw_u) * BLOCK_SIZE;
        match self.layout {
            DataLayout::ChunkBased => Err(ReadError::BadInode {
                nid: self.nid,
                reason: "chunk-based inode has no flat data",
            }),
            DataLayout::FlatPlain => Ok(FlatData {
                head: self
                    .image
                    .bytes(block_start, self.size, "inode data blocks")?,
                head_offset: block_start,
                ..empty
            }),
            DataLayout::FlatInline => {
                let blocks = self.size.div_ceil(BLOCK_SIZE);
                let head_len = (blocks - 1) * BLOCK_SIZE;
                let tail_len = self.size - head_len;
                let head = if head_len > 0 {
                    self.image
                        .bytes(block_start, head_len, "inode data blocks")?
                } else {
                    &[]
                };
                let tail_offset = self.inline_offset();
                if tail_offset % BLOCK_SIZE + tail_len > BLOCK_SIZE {
                    return Err(ReadError::BadInode {
                        nid: self.nid,
                        reason: "inline data crosses a block boundary",
                    });
                }
                let tail = self.image.bytes(tail_offset, tail_len, "inline data")?;
                Ok(FlatData {
                    head,
                    tail,
                    head_offset: block_start,
                    tail_offset,
                })
            }
        }
    }

    /// The chunk layout of a chunk-based inode.
    pub fn chunks(&self) -> Result<ChunkInfo<'a>, ReadError> {
        if self.layout != DataLayout::ChunkBased {
            return Err(ReadError::BadInode {
                nid: self.nid,
                reason: "not a chunk-based inode",
            });
        }
        // C stores a block address in the high half when it had to move the indexes into a
        // data block; the format is only the low 16 bits.
        let format = (self.raw_u & 0xFFFF) as u16;
        if format & !(CHUNK_FORMAT_BLKBITS_MASK | CHUNK_FORMAT_INDEXES) != 0 {
            return Err(ReadError::BadInode {
                nid: self.nid,
                reason: "unknown chunk format bits",
            });
        }
        let chunk_bits = 12 + u32::from(format & CHUNK_FORMAT_BLKBITS_MASK);
        let count = if self.size == 0 {
            0
        } else {
            ((self.size - 1) >> chunk_bits) + 1
        };
        let wide = format & CHUNK_FORMAT_INDEXES != 0;
        let unit: u64 = if wide { 8 } else { 4 };
        let start = self
            .inline_offset()
            .checked_next_multiple_of(unit)
            .unwrap_or(u64::MAX);
        let len = count.checked_mul(unit).ok_or(ReadError::OutOfBounds {
            what: "chunk indexes",
            offset: start,
            len: u64::MAX,
        })?;
        let indexes = self.image.bytes(start, len, "chunk indexes")?;
        Ok(ChunkInfo {
            format,
            chunk_bits,
            count,
            wide,
            indexes,
        })
    }

    /// A symlink's target (borrowed unless it is split between a block and a tail).
    pub fn symlink_target(&self) -> Result<Cow<'a, [u8]>, ReadError> {
        if self.file_type != FileType::Symlink {
            return Err(ReadError::BadInode {
                nid: self.nid,
                reason: "not a symlink",
            });
        }
        Ok(self.data()?.to_cow())
    }
}

/// The bytes of a flat inode: up to two borrowed pieces, the data blocks (`head`) and the
/// inline tail.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatData<'a> {
    head: &'a [u8],
    tail: &'a [u8],
    head_offset: u64,
    tail_offset: u64,
}

impl<'a> FlatData<'a> {
    /// Total length (= `i_size`).
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.tail.len() as u64
    }

    /// Whether there is no data.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty()
    }

    /// The part stored in data blocks.
    pub fn head(&self) -> &'a [u8] {
        self.head
    }

    /// The part stored inline after the inode.
    pub fn tail(&self) -> &'a [u8] {
        self.tail
    }

    /// Byte offset of the head in the image.
    pub fn head_offset(&self) -> u64 {
        self.head_offset
    }

    /// Byte offset of the tail in the image.
    pub fn tail_offset(&self) -> u64 {
        self.tail_offset
    }

    /// The data as one slice when it is stored in one piece.
    pub fn contiguous(&self) -> Option<&'a [u8]> {
        if self.tail.is_empty() {
            Some(self.head)
        } else if self.head.is_empty() {
            Some(self.tail)
        } else {
            None
        }
    }

    /// The data, borrowed when possible.
    pub fn to_cow(&self) -> Cow<'a, [u8]> {
        match self.contiguous() {
            Some(bytes) => Cow::Borrowed(bytes),
            None => {
                let mut v = Vec::with_capacity(self.head.len() + self.tail.len());
                v.extend_from_slice(self.head);
                v.extend_from_slice(self.tail);
                Cow::Owned(v)
            }
        }
    }

    /// Copy bytes from `offset` into `buf`; returns how many were copied (0 at or past the end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> usize {
        let mut done = 0;
        let mut pos = offset;
        for piece in [self.head, self.tail] {
            let piece_len = piece.len() as u64;
            if pos >= piece_len {
                pos -= piece_len;
                continue;
            }
            let start = pos as usize;
            let src = piece.get(start..).unwrap_or(&[]);
            let dst = buf.get_mut(done..).unwrap_or(&mut []);
            let n = src.len().min(dst.len());
            if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
                d.copy_from_slice(s);
            }
            done += n;
            pos = 0;
        }
        done
    }
}

/// The chunk index array of a chunk-based inode.
#[derive(Debug, Clone, Copy)]
pub struct ChunkInfo<'a> {
    format: u16,
    chunk_bits: u32,
    count: u64,
    wide: bool,
    indexes: &'a [u8],
}

impl<'a> ChunkInfo<'a> {
    /// The raw chunk format (low 16 bits of `i_u`).
    pub fn format(&self) -> u16 {
        self.format
    }

    /// log2 of the chunk size.
    pub fn chunk_bits(&self) -> u32 {
        self.chunk_bits
    }

    /// The chunk size in bytes.
    pub fn chunk_size(&self) -> u64 {
        1u64 << self.chunk_bits
    }

    /// Number of chunks (`ceil(size / chunk_size)`).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether entries are 8-byte `erofs_inode_chunk_index` (else 4-byte block addresses).
    pub fn is_indexes_format(&self) -> bool {
        self.wide
    }

    /// The raw index array.
    pub fn raw(&self) -> &'a [u8] {
        self.indexes
    }

    /// Block address of every chunk (`NULL_ADDR` = hole).
    pub fn block_addrs(&self) -> impl Iterator<Item = u32> + 'a {
        let (unit, off) = if self.wide { (8, 4) } else { (4, 0) };
        self.indexes
            .chunks_exact(unit)
            .map(move |c| super::le_u32(c, off).unwrap_or(NULL_ADDR))
    }

    /// Whether every chunk is a hole (what composefs writes).
    pub fn is_all_holes(&self) -> bool {
        self.block_addrs().all(|a| a == NULL_ADDR)
    }
}
