//! Directories: iterating entries across data blocks and the inline tail, and binary-search
//! lookup.
//!
//! A directory's data is a sequence of blocks (the last one possibly the inline tail). Each
//! block holds `n` 12-byte dirents (`nid u64, nameoff u16, file_type u8, reserved u8`) followed
//! by the names, unterminated; name `i` runs from its `nameoff` to the next entry's `nameoff`,
//! and the last name of a block runs to the block end or its first NUL. Entries are sorted by
//! name within a block and blocks are in increasing order.

use std::cmp::Ordering;

use super::error::ReadError;
use super::image::Nid;
use super::inode::{FlatData, InodeRef};
use super::{le_u16, le_u64};
use crate::erofs::format::{BLOCK_SIZE, DIRENT_SIZE};
use crate::tree::NAME_MAX;

/// One directory entry as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntryRef<'a> {
    /// The name (1..=255 bytes, no `/` or NUL).
    pub name: &'a [u8],
    /// The inode it refers to.
    pub nid: Nid,
    /// The stored `EROFS_FT_*` file type (not checked against the inode).
    pub file_type: u8,
}

impl DirEntryRef<'_> {
    /// Whether this is the `.` or `..` entry.
    pub fn is_dot_or_dotdot(&self) -> bool {
        self.name == b"." || self.name == b".."
    }
}

/// One validated directory block.
#[derive(Debug, Clone, Copy)]
struct Block<'a> {
    bytes: &'a [u8],
    offset: u64,
    count: usize,
}

impl<'a> Block<'a> {
    fn parse(bytes: &'a [u8], offset: u64, nid: Nid) -> Result<Self, ReadError> {
        let first = le_u16(bytes, 8).ok_or(ReadError::BadDirent {
            nid,
            offset,
            reason: "directory block too small for a dirent",
        })?;
        let first = usize::from(first);
        if first < DIRENT_SIZE || first % DIRENT_SIZE != 0 || first >= bytes.len() {
            return Err(ReadError::BadDirent {
                nid,
                offset,
                reason: "invalid name offset of the first dirent",
            });
        }
        Ok(Block {
            bytes,
            offset,
            count: first / DIRENT_SIZE,
        })
    }

    fn entry(&self, i: usize, nid: Nid) -> Result<DirEntryRef<'a>, ReadError> {
        let base = i * DIRENT_SIZE;
        let at = self.offset + base as u64;
        let bad = |offset, reason| ReadError::BadDirent {
            nid,
            offset,
            reason,
        };
        let entry_nid = le_u64(self.bytes, base).ok_or(bad(at, "dirent out of bounds"))?;
        let nameoff =
            usize::from(le_u16(self.bytes, base + 8).ok_or(bad(at, "dirent out of bounds"))?);
        let file_type = self.bytes.get(base + 10).copied().unwrap_or(0);
        let last = i + 1 >= self.count;
        let end = if last {
            self.bytes.len()
        } else {
            usize::from(
                le_u16(self.bytes, base + DIRENT_SIZE + 8)
                    .ok_or(bad(at, "dirent out of bounds"))?,
            )
        };
        let name_at = self.offset + nameoff as u64;
        if nameoff < self.count * DIRENT_SIZE {
            return Err(bad(name_at, "name overlaps the dirent table"));
        }
        let mut name = self.bytes.get(nameoff..end).ok_or(bad(
            name_at,
            "name out of bounds or name offsets not increasing",
        ))?;
        if last {
            if let Some(nul) = name.iter().position(|&b| b == 0) {
                name = name.get(..nul).unwrap_or(&[]);
            }
        }
        if name.is_empty() {
            return Err(bad(name_at, "empty name"));
        }
        if name.len() > NAME_MAX {
            return Err(bad(name_at, "name longer than 255 bytes"));
        }
        if name.iter().any(|&b| b == b'/' || b == 0) {
            return Err(bad(name_at, "name contains '/' or NUL"));
        }
        Ok(DirEntryRef {
            name,
            nid: Nid(entry_nid),
            file_type,
        })
    }

    /// Binary search for `name` among this block's entries.
    fn find(&self, name: &[u8], nid: Nid) -> Result<Option<DirEntryRef<'a>>, ReadError> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let entry = self.entry(mid, nid)?;
            match entry.name.cmp(name) {
                Ordering::Equal => return Ok(Some(entry)),
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

/// The block structure of a directory's data.
#[derive(Debug, Clone, Copy)]
struct Blocks<'a> {
    nid: Nid,
    data: FlatData<'a>,
    head_blocks: u64,
    count: u64,
}

impl<'a> Blocks<'a> {
    fn new(nid: Nid, data: FlatData<'a>) -> Self {
        let head_blocks = (data.head().len() as u64).div_ceil(BLOCK_SIZE);
        let count = head_blocks + u64::from(!data.tail().is_empty());
        Blocks {
            nid,
            data,
            head_blocks,
            count,
        }
    }

    fn block(&self, k: u64) -> Result<Block<'a>, ReadError> {
        let (bytes, offset) = if k < self.head_blocks {
            let start = k * BLOCK_SIZE;
            let head = self.data.head();
            let end = (start + BLOCK_SIZE).min(head.len() as u64);
            let bytes = head.get(start as usize..end as usize).unwrap_or(&[]);
            (bytes, self.data.head_offset() + start)
        } else {
            (self.data.tail(), self.data.tail_offset())
        };
        Block::parse(bytes, offset, self.nid)
    }
}

/// Iterator over a directory's entries in on-disk order, `.` and `..` included.
///
/// Yields an error at most once, then stops.
#[derive(Debug, Clone)]
pub struct DirIter<'a> {
    blocks: Blocks<'a>,
    next_block: u64,
    cur: Option<Block<'a>>,
    pos: usize,
    done: bool,
}

impl<'a> DirIter<'a> {
    /// Number of directory blocks (the inline tail counts as one).
    pub fn block_count(&self) -> u64 {
        self.blocks.count
    }

    /// Where the next entry will come from: (block number, entry index within the block).
    /// Feed it to [`DirIter::seek`] to resume an enumeration in O(1), e.g. from a readdir
    /// cookie.
    pub fn position(&self) -> (u64, usize) {
        match self.cur {
            Some(_) => (self.next_block.saturating_sub(1), self.pos),
            None => (self.next_block, 0),
        }
    }

    /// Continue from a position returned by [`DirIter::position`]: the next entry is entry
    /// `index` of block `block`. A position past the end gives an empty iterator; the block is
    /// validated here, so a damaged block is reported by this call.
    pub fn seek(&mut self, block: u64, index: usize) -> Result<(), ReadError> {
        self.done = false;
        self.cur = None;
        self.pos = 0;
        self.next_block = block;
        if block >= self.blocks.count {
            self.next_block = self.blocks.count;
            return Ok(());
        }
        let parsed = self.blocks.block(block)?;
        self.cur = Some(parsed);
        self.next_block = block + 1;
        self.pos = index;
        Ok(())
    }

    fn advance(&mut self) -> Result<Option<DirEntryRef<'a>>, ReadError> {
        loop {
            if let Some(block) = self.cur {
                if self.pos < block.count {
                    let entry = block.entry(self.pos, self.blocks.nid)?;
                    self.pos += 1;
                    return Ok(Some(entry));
                }
                self.cur = None;
            }
            if self.next_block >= self.blocks.count {
                return Ok(None);
            }
            self.cur = Some(self.blocks.block(self.next_block)?);
            self.next_block += 1;
            self.pos = 0;
        }
    }
}

impl<'a> Iterator for DirIter<'a> {
    type Item = Result<DirEntryRef<'a>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(entry)) => Some(Ok(entry)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> InodeRef<'a> {
    fn dir_blocks(&self) -> Result<Blocks<'a>, ReadError> {
        if !self.is_dir() {
            return Err(ReadError::NotADirectory { nid: self.nid() });
        }
        Ok(Blocks::new(self.nid(), self.data()?))
    }

    /// The directory's entries as stored, `.` and `..` included.
    pub fn dir_entries(&self) -> Result<DirIter<'a>, ReadError> {
        Ok(DirIter {
            blocks: self.dir_blocks()?,
            next_block: 0,
            cur: None,
            pos: 0,
            done: false,
        })
    }

    /// Find `name` in this directory: binary search over the blocks by their first name, then
    /// within the block. O(log n) block and entry reads.
    pub fn lookup(&self, name: &[u8]) -> Result<Option<DirEntryRef<'a>>, ReadError> {
        let blocks = self.dir_blocks()?;
        if blocks.count == 0 {
            return Ok(None);
        }
        // Find the last block whose first name is <= `name`.
        let (mut lo, mut hi) = (0, blocks.count);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let first = blocks.block(mid)?.entry(0, self.nid())?;
            if first.name <= name {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        blocks.block(lo)?.find(name, self.nid())
    }
}
