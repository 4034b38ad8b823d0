//! The composefs interpretation of inodes (docs/formats.md §2.12, §8.1): file kinds from the
//! overlay xattrs, escaped whiteouts, user-visible xattrs and hidden root stubs.

use std::borrow::Cow;

use super::dir::{DirEntryRef, DirIter};
use super::error::ReadError;
use super::image::{Image, Nid};
use super::inode::{DataLayout, FileType, FlatData, InodeRef};
use super::xattr::{Xattr, Xattrs};
use crate::erofs::format::{self, file_type};
use crate::fsverity::Digest;

/// What an xattr name means to composefs (names normalised by [`normalize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverlayName<'a> {
    /// `trusted.overlay.metacopy`.
    Metacopy,
    /// `trusted.overlay.redirect`.
    Redirect,
    /// `trusted.overlay.overlay.whiteout`.
    EscapedWhiteout,
    /// `trusted.overlay.overlay.whiteouts`.
    EscapedWhiteouts,
    /// `trusted.overlay.overlay.opaque`.
    EscapedOpaque,
    /// `user.overlay.whiteout`.
    UserWhiteout,
    /// `user.overlay.whiteouts`.
    UserWhiteouts,
    /// `user.overlay.opaque`.
    UserOpaque,
    /// Another `trusted.overlay.overlay.<X>`: the visible suffix after `trusted.` (`overlay.<X>`).
    Escaped(&'a [u8]),
    /// Another, unescaped `trusted.overlay.*` (e.g. the root's `opaque=y`).
    OtherOverlay,
    /// Anything else.
    Plain,
}

/// Re-split a name stored with index 0 (no prefix) the way the V0/V1 writer would, so that
/// name checks only have to look at (index, suffix).
pub(crate) fn normalize(x: Xattr<'_>) -> Xattr<'_> {
    if x.name_index() != 0 {
        return x;
    }
    let (index, suffix) = format::split_xattr_name(x.suffix());
    match format::xattr_prefix(index) {
        Some(prefix) if index != 0 => x.with_name(index, prefix, suffix),
        _ => x,
    }
}

/// Classify a normalised xattr name.
pub(crate) fn classify<'a>(x: &Xattr<'a>) -> OverlayName<'a> {
    let suffix = x.suffix();
    match x.name_index() {
        4 => match suffix {
            b"overlay.metacopy" => OverlayName::Metacopy,
            b"overlay.redirect" => OverlayName::Redirect,
            b"overlay.overlay.whiteout" => OverlayName::EscapedWhiteout,
            b"overlay.overlay.whiteouts" => OverlayName::EscapedWhiteouts,
            b"overlay.overlay.opaque" => OverlayName::EscapedOpaque,
            _ => {
                if suffix.starts_with(b"overlay.overlay.") {
                    OverlayName::Escaped(suffix.get(b"overlay.".len()..).unwrap_or(&[]))
                } else if suffix.starts_with(b"overlay.") {
                    OverlayName::OtherOverlay
                } else {
                    OverlayName::Plain
                }
            }
        },
        1 => match suffix {
            b"overlay.whiteout" => OverlayName::UserWhiteout,
            b"overlay.whiteouts" => OverlayName::UserWhiteouts,
            b"overlay.opaque" => OverlayName::UserOpaque,
            _ => OverlayName::Plain,
        },
        _ => OverlayName::Plain,
    }
}

/// The `trusted.` prefix (name index 4).
const TRUSTED: &[u8] = b"trusted.";

/// The digest in a `trusted.overlay.metacopy` value (36 bytes: sha256, 68 bytes: sha512; the
/// 4-byte header is not checked, like C).
pub(crate) fn metacopy_digest(value: &[u8]) -> Option<Digest> {
    match value.len() {
        36 | 68 => Digest::from_bytes(value.get(4..)?),
        _ => None,
    }
}

/// The backing path in a `trusted.overlay.redirect` value: one leading `/` removed (C).
pub(crate) fn redirect_payload(value: &[u8]) -> &[u8] {
    match value {
        [b'/', rest @ ..] if !rest.is_empty() => rest,
        _ => value,
    }
}

/// The overlay xattrs of one inode that composefs interprets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverlayXattrs<'a> {
    /// Value of `trusted.overlay.metacopy`.
    pub metacopy: Option<&'a [u8]>,
    /// Value of `trusted.overlay.redirect`.
    pub redirect: Option<&'a [u8]>,
    /// Whether `trusted.overlay.overlay.whiteout` is present.
    pub escaped_whiteout: bool,
}

impl<'a> OverlayXattrs<'a> {
    /// The fs-verity digest from the metacopy xattr, if it carries one.
    pub fn digest(&self) -> Option<Digest> {
        self.metacopy.and_then(metacopy_digest)
    }

    /// The backing path (relative to the object store) from the redirect xattr.
    pub fn payload(&self) -> Option<&'a [u8]> {
        self.redirect.map(redirect_payload)
    }
}

/// Where a regular file's bytes are, composefs-wise.
#[derive(Debug, Clone, Copy)]
pub enum RegularData<'a> {
    /// Stored in the image (data blocks and/or inline tail).
    Inline(FlatData<'a>),
    /// Stored in the object store: the metacopy digest and/or the redirect path. With a
    /// digest this is rs `External`; with only a path, `ExternalNoVerity`.
    External {
        /// fs-verity digest from `trusted.overlay.metacopy`.
        digest: Option<Digest>,
        /// Backing path from `trusted.overlay.redirect`, without its leading `/`.
        payload: Option<&'a [u8]>,
    },
    /// Chunk-based with neither digest nor redirect: all holes.
    Sparse,
}

/// What a [`Node`] is, with its type-specific data.
#[derive(Debug, Clone)]
pub enum NodeKind<'a> {
    /// A directory.
    Directory,
    /// A regular file.
    Regular(RegularData<'a>),
    /// A symbolic link and its target.
    Symlink(Cow<'a, [u8]>),
    /// A character device (rdev 0 = whiteout, including escaped whiteouts).
    CharDevice(u32),
    /// A block device.
    BlockDevice(u32),
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

/// An inode as composefs presents it (docs/formats.md §2.12): escaped whiteouts are chardev 0:0,
/// external files are recognised from their overlay xattrs, and [`Node::xattrs`] lists only
/// user-visible xattrs with escaped names unescaped.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    inode: InodeRef<'a>,
    overlay: OverlayXattrs<'a>,
}

impl<'a> Node<'a> {
    /// The raw inode.
    pub fn inode(&self) -> &InodeRef<'a> {
        &self.inode
    }

    /// The overlay xattrs found on the inode.
    pub fn overlay(&self) -> &OverlayXattrs<'a> {
        &self.overlay
    }

    /// Whether this is an escaped whiteout (a regular file marked with
    /// `trusted.overlay.overlay.whiteout`), shown as chardev 0:0.
    pub fn is_escaped_whiteout(&self) -> bool {
        self.overlay.escaped_whiteout && self.inode.file_type() == FileType::Regular
    }

    /// The presented file type.
    pub fn file_type(&self) -> FileType {
        if self.is_escaped_whiteout() {
            FileType::CharDevice
        } else {
            self.inode.file_type()
        }
    }

    /// The presented mode: type bits and the stored permission bits.
    pub fn mode(&self) -> u32 {
        self.file_type().type_bits() | self.inode.permissions()
    }

    /// The presented size (escaped whiteouts: 0; directories: the EROFS `i_size`).
    pub fn size(&self) -> u64 {
        if self.is_escaped_whiteout() {
            0
        } else {
            self.inode.size()
        }
    }

    /// The presented device number (escaped whiteouts: 0).
    pub fn rdev(&self) -> u32 {
        if self.is_escaped_whiteout() {
            0
        } else {
            self.inode.rdev()
        }
    }

    /// Where a regular file's data is; `None` for other types (escaped whiteouts included).
    pub fn regular_data(&self) -> Result<Option<RegularData<'a>>, ReadError> {
        if self.file_type() != FileType::Regular {
            return Ok(None);
        }
        let digest = self.overlay.digest();
        let payload = self.overlay.payload();
        Ok(Some(if digest.is_some() || payload.is_some() {
            RegularData::External { digest, payload }
        } else if self.inode.layout() == DataLayout::ChunkBased {
            RegularData::Sparse
        } else {
            RegularData::Inline(self.inode.data()?)
        }))
    }

    /// The presented kind with its data.
    pub fn kind(&self) -> Result<NodeKind<'a>, ReadError> {
        Ok(match self.file_type() {
            FileType::Directory => NodeKind::Directory,
            FileType::Regular => match self.regular_data()? {
                Some(data) => NodeKind::Regular(data),
                None => NodeKind::Regular(RegularData::Sparse),
            },
            FileType::Symlink => NodeKind::Symlink(self.inode.symlink_target()?),
            FileType::CharDevice => NodeKind::CharDevice(self.rdev()),
            FileType::BlockDevice => NodeKind::BlockDevice(self.rdev()),
            FileType::Fifo => NodeKind::Fifo,
            FileType::Socket => NodeKind::Socket,
        })
    }

    /// The user-visible xattrs (§2.12): `trusted.overlay.metacopy`, `trusted.overlay.redirect`,
    /// the six whiteout/opaque markers and every other unescaped `trusted.overlay.*` are
    /// hidden; `trusted.overlay.overlay.X` is shown as `trusted.overlay.X`. Order: local
    /// entries, then shared ones.
    pub fn xattrs(&self) -> Result<VisibleXattrs<'a>, ReadError> {
        Ok(VisibleXattrs {
            inner: self.inode.xattrs()?,
        })
    }

    /// The value of the visible xattr `name` (e.g. `trusted.overlay.foo` finds the stored
    /// `trusted.overlay.overlay.foo`); `None` for absent or hidden names.
    pub fn xattr(&self, name: &[u8]) -> Result<Option<&'a [u8]>, ReadError> {
        for x in self.xattrs()? {
            let x = x?;
            if x.name_eq(name) {
                return Ok(Some(x.value()));
            }
        }
        Ok(None)
    }
}

/// Iterator over the user-visible xattrs of a [`Node`]; yields an error at most once.
#[derive(Debug, Clone)]
pub struct VisibleXattrs<'a> {
    inner: Xattrs<'a>,
}

impl<'a> Iterator for VisibleXattrs<'a> {
    type Item = Result<Xattr<'a>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let x = match self.inner.next()? {
                Ok(x) => normalize(x),
                Err(e) => return Some(Err(e)),
            };
            match classify(&x) {
                OverlayName::Plain => return Some(Ok(x)),
                OverlayName::Escaped(visible) => return Some(Ok(x.with_name(4, TRUSTED, visible))),
                _ => continue,
            }
        }
    }
}

impl<'a> InodeRef<'a> {
    /// Scan the xattrs once for the overlay xattrs composefs interprets.
    pub fn overlay_xattrs(&self) -> Result<OverlayXattrs<'a>, ReadError> {
        let mut o = OverlayXattrs::default();
        for x in self.xattrs()? {
            let x = normalize(x?);
            match classify(&x) {
                OverlayName::Metacopy => o.metacopy = Some(x.value()),
                OverlayName::Redirect => o.redirect = Some(x.value()),
                OverlayName::EscapedWhiteout => o.escaped_whiteout = true,
                _ => {}
            }
        }
        Ok(o)
    }

    /// This inode as composefs presents it.
    pub fn node(&self) -> Result<Node<'a>, ReadError> {
        Ok(Node {
            inode: *self,
            overlay: self.overlay_xattrs()?,
        })
    }
}

/// Whether `name` is one of the 256 stub names `00`..`ff`.
pub(crate) fn is_stub_name(name: &[u8]) -> bool {
    matches!(name, [a, b] if is_lower_hex(*a) && is_lower_hex(*b))
}

fn is_lower_hex(c: u8) -> bool {
    c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
}

impl<'a> Image<'a> {
    /// Whether `entry` of directory `dir_nid` is one of the root whiteout stubs composefs
    /// hides: in the root of a V0/V1 image, a two-hex-digit name that is a *native* chardev
    /// 0:0. Returns the loaded inode when it is not a stub and had to be loaded.
    pub(crate) fn stub_check(
        &self,
        dir_nid: Nid,
        entry: &DirEntryRef<'a>,
    ) -> Result<(bool, Option<InodeRef<'a>>), ReadError> {
        if dir_nid != self.root_nid()
            || !self.has_root_stubs()
            || entry.file_type != file_type::CHRDEV
            || !is_stub_name(entry.name)
        {
            return Ok((false, None));
        }
        let inode = self.inode(entry.nid)?;
        let stub = inode.file_type() == FileType::CharDevice && inode.rdev() == 0;
        Ok((stub, Some(inode)))
    }

    /// The entries of directory `dir` as composefs shows them: on-disk (sorted) order, `.` and
    /// `..` skipped, root whiteout stubs hidden.
    pub fn children(&self, dir: &InodeRef<'a>) -> Result<Children<'a>, ReadError> {
        Ok(Children {
            image: *self,
            dir_nid: dir.nid(),
            inner: dir.dir_entries()?,
            done: false,
        })
    }

    /// Look `name` up in directory `dir` as composefs shows it (`.`/`..` and hidden stubs are
    /// not found).
    pub fn lookup_child(
        &self,
        dir: &InodeRef<'a>,
        name: &[u8],
    ) -> Result<Option<DirEntryRef<'a>>, ReadError> {
        let Some(entry) = dir.lookup(name)? else {
            return Ok(None);
        };
        if entry.is_dot_or_dotdot() || self.stub_check(dir.nid(), &entry)?.0 {
            return Ok(None);
        }
        Ok(Some(entry))
    }
}

/// Iterator over the visible entries of a directory (see [`Image::children`]).
#[derive(Debug, Clone)]
pub struct Children<'a> {
    image: Image<'a>,
    dir_nid: Nid,
    inner: DirIter<'a>,
    done: bool,
}

impl Children<'_> {
    /// Where the next stored entry will come from (see [`DirIter::position`]).
    pub fn position(&self) -> (u64, usize) {
        self.inner.position()
    }

    /// Resume at a position returned by [`Children::position`] (see [`DirIter::seek`]).
    pub fn seek(&mut self, block: u64, index: usize) -> Result<(), ReadError> {
        self.done = false;
        self.inner.seek(block, index)
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<DirEntryRef<'a>, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let entry = match self.inner.next()? {
                Ok(entry) => entry,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if entry.is_dot_or_dotdot() {
                continue;
            }
            match self.image.stub_check(self.dir_nid, &entry) {
                Ok((true, _)) => continue,
                Ok((false, _)) => return Some(Ok(entry)),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
