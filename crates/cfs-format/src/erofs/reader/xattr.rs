//! Extended attributes as stored: the inline body, local entries and shared-table references.

use super::error::ReadError;
use super::image::{Image, Nid};
use super::inode::InodeRef;
use super::le_u16;
use crate::erofs::format::{self, XATTR_ENTRY_HEADER_SIZE, XATTR_HEADER_SIZE};

/// One stored extended attribute: a name index (prefix), the name suffix and the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Xattr<'a> {
    name_index: u8,
    prefix: &'static [u8],
    suffix: &'a [u8],
    value: &'a [u8],
    shared: bool,
    offset: u64,
}

impl<'a> Xattr<'a> {
    /// The EROFS name index (0 = no prefix, 1 `user.`, 2/3 POSIX ACLs, 4 `trusted.`,
    /// 5 `lustre.`, 6 `security.`).
    pub fn name_index(&self) -> u8 {
        self.name_index
    }

    /// The prefix the name index stands for.
    pub fn prefix(&self) -> &'static [u8] {
        self.prefix
    }

    /// The stored name suffix (the full name is `prefix() + suffix()`).
    pub fn suffix(&self) -> &'a [u8] {
        self.suffix
    }

    /// The value.
    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// Whether the entry lives in the shared xattr table.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Byte offset of the entry in the image.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The full name (prefix + suffix).
    pub fn full_name(&self) -> Vec<u8> {
        let mut name = Vec::with_capacity(self.prefix.len() + self.suffix.len());
        self.append_name(&mut name);
        name
    }

    /// Append the full name to `out`.
    pub fn append_name(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix);
        out.extend_from_slice(self.suffix);
    }

    /// Whether the full name equals `name` (no allocation).
    pub fn name_eq(&self, name: &[u8]) -> bool {
        name.strip_prefix(self.prefix) == Some(self.suffix)
    }

    /// The same attribute with its name re-expressed as (`index`, `suffix`).
    pub(crate) fn with_name(self, name_index: u8, prefix: &'static [u8], suffix: &'a [u8]) -> Self {
        Xattr {
            name_index,
            prefix,
            suffix,
            ..self
        }
    }

    /// Parse the entry at the start of `bytes` (at image offset `offset`); returns the entry
    /// and its size padded to 4 bytes.
    fn parse(
        bytes: &'a [u8],
        offset: u64,
        nid: Nid,
        shared: bool,
    ) -> Result<(Self, usize), ReadError> {
        let bad = |reason| ReadError::BadXattr {
            nid,
            offset,
            reason,
        };
        let header = bytes
            .get(..XATTR_ENTRY_HEADER_SIZE)
            .ok_or(bad("truncated xattr entry header"))?;
        let (name_len, name_index) = match header {
            [len, index, ..] => (usize::from(*len), *index),
            _ => return Err(bad("truncated xattr entry header")),
        };
        let value_len = usize::from(le_u16(header, 2).unwrap_or(0));
        let prefix = format::xattr_prefix(name_index).ok_or(bad("unknown xattr name index"))?;
        if name_len == 0 && prefix.is_empty() {
            return Err(bad("empty xattr name"));
        }
        let name_end = XATTR_ENTRY_HEADER_SIZE + name_len;
        let end = name_end + value_len;
        let suffix = bytes
            .get(XATTR_ENTRY_HEADER_SIZE..name_end)
            .ok_or(bad("xattr name out of bounds"))?;
        let value = bytes
            .get(name_end..end)
            .ok_or(bad("xattr value out of bounds"))?;
        Ok((
            Xattr {
                name_index,
                prefix,
                suffix,
                value,
                shared,
                offset,
            },
            end.next_multiple_of(4),
        ))
    }
}

/// Iterator over an inode's stored xattrs: local (inline) entries first, then shared ones —
/// the order the kernel's `listxattr` and C `composefs-info dump` use.
///
/// Yields an error at most once, then stops.
#[derive(Debug, Clone)]
pub struct Xattrs<'a> {
    image: Image<'a>,
    nid: Nid,
    local: &'a [u8],
    local_offset: u64,
    shared_ids: &'a [u8],
    shared_offset: u64,
    done: bool,
}

impl<'a> Xattrs<'a> {
    /// Number of shared xattr references left.
    pub fn shared_count(&self) -> usize {
        self.shared_ids.len() / 4
    }

    fn next_local(&mut self) -> Result<Xattr<'a>, ReadError> {
        let (xattr, size) = Xattr::parse(self.local, self.local_offset, self.nid, false)?;
        if size > self.local.len() {
            return Err(ReadError::BadXattr {
                nid: self.nid,
                offset: self.local_offset,
                reason: "xattr entry exceeds the inline xattr body",
            });
        }
        self.local = self.local.get(size..).unwrap_or(&[]);
        self.local_offset += size as u64;
        Ok(xattr)
    }

    fn next_shared(&mut self) -> Result<Xattr<'a>, ReadError> {
        let id = super::le_u32(self.shared_ids, 0).unwrap_or(0);
        let slot_offset = self.shared_offset;
        self.shared_ids = self.shared_ids.get(4..).unwrap_or(&[]);
        self.shared_offset += 4;
        let offset = self.image.xattr_base() + u64::from(id) * 4;
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|start| self.image.data().get(start..))
            .ok_or(ReadError::BadXattr {
                nid: self.nid,
                offset: slot_offset,
                reason: "shared xattr id points outside the image",
            })?;
        Ok(Xattr::parse(bytes, offset, self.nid, true)?.0)
    }
}

impl<'a> Iterator for Xattrs<'a> {
    type Item = Result<Xattr<'a>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = if !self.local.is_empty() {
            self.next_local()
        } else if !self.shared_ids.is_empty() {
            self.next_shared()
        } else {
            self.done = true;
            return None;
        };
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }
}

impl<'a> InodeRef<'a> {
    /// The inode's xattrs as stored (names not interpreted): local entries, then shared ones.
    pub fn xattrs(&self) -> Result<Xattrs<'a>, ReadError> {
        let image = self.image();
        let mut it = Xattrs {
            image,
            nid: self.nid(),
            local: &[],
            local_offset: 0,
            shared_ids: &[],
            shared_offset: 0,
            done: false,
        };
        let size = self.xattr_size();
        if size == 0 {
            return Ok(it);
        }
        let offset = self.xattr_offset();
        let body = image.bytes(offset, size as u64, "inode xattr body")?;
        let shared_count = usize::from(body.get(4).copied().unwrap_or(0));
        let ids_end = XATTR_HEADER_SIZE + 4 * shared_count;
        let (Some(shared_ids), Some(local)) =
            (body.get(XATTR_HEADER_SIZE..ids_end), body.get(ids_end..))
        else {
            return Err(ReadError::BadXattr {
                nid: self.nid(),
                offset,
                reason: "shared xattr count exceeds the xattr body",
            });
        };
        it.shared_ids = shared_ids;
        it.shared_offset = offset + XATTR_HEADER_SIZE as u64;
        it.local = local;
        it.local_offset = offset + ids_end as u64;
        Ok(it)
    }

    /// The value of the stored xattr with full name `name`, if present (names as stored: no
    /// overlay unescaping; see [`Node::xattr`](super::Node::xattr) for the composefs view).
    pub fn raw_xattr(&self, name: &[u8]) -> Result<Option<&'a [u8]>, ReadError> {
        for x in self.xattrs()? {
            let x = x?;
            if x.name_eq(name) {
                return Ok(Some(x.value()));
            }
        }
        Ok(None)
    }
}
