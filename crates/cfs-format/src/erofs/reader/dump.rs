//! `composefs-info dump`, `ls` and `objects` over an image, with C's exact conventions
//! (docs/formats.md §3.7, §10.4).
//!
//! `dump` follows C's image loader rather than the logical tree of §2.12, because its output
//! must round-trip through `mkcomposefs` byte for byte: the V1 parent markers
//! `trusted.overlay.opaque=x user.overlay.opaque=x` stay visible, xattrs are listed in stored
//! order (local entries, then shared ones), directory SIZE is the EROFS `i_size`, and hardlink
//! lines carry the target's full metadata with the canonical path as PAYLOAD.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Write;

use super::composefs::{classify, metacopy_digest, normalize, redirect_payload, OverlayName};
use super::error::{DumpError, ReadError};
use super::image::Image;
use super::inode::{DataLayout, FileType, InodeRef};
use super::walk::walk;
use crate::dumpfile::{write_entry_line, EntryLine};
use crate::fsverity::Digest;
use crate::tree::{mode, Mtime};

/// An inode as C's `lcfs_load_node_from_image` sees it.
struct CNode<'a> {
    mode: u32,
    size: u64,
    rdev: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    mtime: Mtime,
    /// Symlink target or backing path (from `trusted.overlay.redirect`).
    payload: Option<Cow<'a, [u8]>>,
    content: Option<Cow<'a, [u8]>>,
    digest: Option<Digest>,
    /// Visible xattrs in C's order: full name, value.
    xattrs: Vec<(Vec<u8>, &'a [u8])>,
}

impl<'a> CNode<'a> {
    fn load(inode: &InodeRef<'a>, want_content: bool) -> Result<Self, ReadError> {
        let mut node = CNode {
            mode: inode.mode(),
            size: inode.size(),
            rdev: inode.rdev(),
            nlink: inode.nlink(),
            uid: inode.uid(),
            gid: inode.gid(),
            mtime: inode.mtime(),
            payload: None,
            content: None,
            digest: None,
            xattrs: Vec::new(),
        };
        match inode.file_type() {
            FileType::Symlink => node.payload = Some(inode.symlink_target()?),
            FileType::Regular
                if want_content && node.size != 0 && inode.layout() != DataLayout::ChunkBased =>
            {
                node.content = Some(inode.data()?.to_cow());
            }
            _ => {}
        }
        for x in inode.xattrs()? {
            let x = normalize(x?);
            let is_reg = node.mode & mode::S_IFMT == mode::S_IFREG;
            let visible_suffix = match classify(&x) {
                OverlayName::Redirect => {
                    if is_reg {
                        node.payload = Some(Cow::Borrowed(redirect_payload(x.value())));
                    }
                    continue;
                }
                OverlayName::Metacopy => {
                    if is_reg {
                        if let Some(digest) = metacopy_digest(x.value()) {
                            node.digest = Some(digest);
                        }
                    }
                    continue;
                }
                OverlayName::EscapedWhiteout if is_reg => {
                    node.mode = (node.mode & !mode::S_IFMT) | mode::S_IFCHR;
                    node.rdev = 0;
                    node.size = 0;
                    continue;
                }
                OverlayName::EscapedWhiteouts
                | OverlayName::UserWhiteout
                | OverlayName::UserWhiteouts
                | OverlayName::OtherOverlay => continue,
                OverlayName::EscapedWhiteout | OverlayName::EscapedOpaque => {
                    x.suffix().get(b"overlay.".len()..)
                }
                OverlayName::Escaped(visible) => Some(visible),
                OverlayName::UserOpaque | OverlayName::Plain => None,
            };
            let name = match visible_suffix {
                Some(suffix) => [b"trusted.".as_slice(), suffix].concat(),
                None => x.full_name(),
            };
            // Setting an existing name replaces its value in place (lcfs_node_set_xattr).
            match node.xattrs.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = x.value(),
                None => node.xattrs.push((name, x.value())),
            }
        }
        Ok(node)
    }

    fn file_type(&self) -> u32 {
        self.mode & mode::S_IFMT
    }
}

/// Print the dumpfile of the image in `data` exactly as C `composefs-info dump` does.
///
/// `filter`, when not empty, keeps only the root entries with those names (`--filter`); the
/// root line is always printed. For every image written from a dumpfile, feeding the output
/// back to `mkcomposefs` reproduces the image byte for byte.
pub fn dump(data: &[u8], w: &mut impl Write, filter: &[&[u8]]) -> Result<(), DumpError> {
    Image::open(data)?.dump(w, filter)
}

/// Print the `composefs-info ls` listing of the image in `data`: one line per entry (root
/// excluded) with its path (spaces unescaped), then `/` and a TAB for directories, `TAB-> target`
/// for symlinks and `TAB@ backing` for external files. Hardlinks (later occurrences of an
/// inode) print only their path, like C.
pub fn ls(data: &[u8], w: &mut impl Write, filter: &[&[u8]]) -> Result<(), DumpError> {
    Image::open(data)?.ls(w, filter)
}

/// The backing paths (relative to the object store, as in the redirect xattrs) of every
/// external file in the image in `data`, sorted: `composefs-info objects`.
pub fn objects(data: &[u8]) -> Result<BTreeSet<Vec<u8>>, ReadError> {
    Image::open(data)?.objects(&[])
}

/// The object digests referenced by the image in `data` (for GC and `missing-objects` in a
/// repository): every metacopy digest, and every redirect path that names a digest
/// (`XX/<rest>`).
pub fn object_digests(data: &[u8]) -> Result<BTreeSet<Digest>, ReadError> {
    Image::open(data)?.object_digests()
}

impl Image<'_> {
    /// [`dump`] on an opened image.
    pub fn dump(&self, w: &mut impl Write, filter: &[&[u8]]) -> Result<(), DumpError> {
        walk(*self, filter, |ev| -> Result<(), DumpError> {
            let node = CNode::load(&ev.inode, true)?;
            let canonical = if ev.hardlink {
                Some(ev.canonical_path()?)
            } else {
                None
            };
            let payload = match &canonical {
                Some(path) => Some(path.as_slice()),
                None => node.payload.as_deref(),
            };
            let line = EntryLine {
                path: ev.path,
                size: node.size,
                mode: node.mode,
                hardlink: ev.hardlink,
                nlink: node.nlink,
                uid: node.uid,
                gid: node.gid,
                rdev: u64::from(node.rdev),
                mtime: node.mtime,
                payload,
                content: node.content.as_deref(),
                digest: node.digest,
                xattrs: node
                    .xattrs
                    .iter()
                    .map(|(name, value)| (name.as_slice(), *value))
                    .collect(),
            };
            write_entry_line(w, &line)?;
            Ok(())
        })
    }

    /// [`ls`] on an opened image.
    pub fn ls(&self, w: &mut impl Write, filter: &[&[u8]]) -> Result<(), DumpError> {
        let mut line = Vec::new();
        walk(*self, filter, |ev| -> Result<(), DumpError> {
            if ev.is_root() {
                return Ok(());
            }
            line.clear();
            escape_c(&mut line, ev.path, true);
            if !ev.hardlink {
                let node = CNode::load(&ev.inode, false)?;
                match node.file_type() {
                    mode::S_IFDIR => line.extend_from_slice(b"/\t"),
                    mode::S_IFLNK => {
                        line.extend_from_slice(b"\t-> ");
                        escape_c(
                            &mut line,
                            node.payload.as_deref().unwrap_or_default(),
                            false,
                        );
                    }
                    mode::S_IFREG => {
                        if let Some(payload) = node.payload.as_deref() {
                            line.extend_from_slice(b"\t@ ");
                            escape_c(&mut line, payload, false);
                        }
                    }
                    _ => {}
                }
            }
            line.push(b'\n');
            w.write_all(&line)?;
            Ok(())
        })
    }

    /// [`objects`] on an opened image, restricted to the root entries in `filter` when it is
    /// not empty (C applies `--filter` to every command).
    pub fn objects(&self, filter: &[&[u8]]) -> Result<BTreeSet<Vec<u8>>, ReadError> {
        let mut out = BTreeSet::new();
        walk(*self, filter, |ev| -> Result<(), ReadError> {
            if ev.hardlink || ev.inode.file_type() != FileType::Regular {
                return Ok(());
            }
            let node = CNode::load(&ev.inode, false)?;
            if node.file_type() == mode::S_IFREG {
                if let Some(payload) = node.payload {
                    out.insert(payload.into_owned());
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// [`object_digests`] on an opened image.
    pub fn object_digests(&self) -> Result<BTreeSet<Digest>, ReadError> {
        let mut out = BTreeSet::new();
        walk(*self, &[], |ev| -> Result<(), ReadError> {
            if ev.hardlink || ev.inode.file_type() != FileType::Regular {
                return Ok(());
            }
            let node = ev.inode.node()?;
            if node.file_type() != FileType::Regular {
                return Ok(());
            }
            let overlay = node.overlay();
            if let Some(digest) = overlay.digest() {
                out.insert(digest);
            }
            if let Some(digest) = overlay
                .payload()
                .and_then(|p| std::str::from_utf8(p).ok())
                .and_then(|p| Digest::from_object_path(p).ok())
            {
                out.insert(digest);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// C `composefs-info`'s `print_escaped`: `\\`, `\n`, `\r`, `\t` spelled out; other bytes
/// outside 0x21..=0x7e (0x20..=0x7e with `keep_space`) as `\xhh`.
fn escape_c(out: &mut Vec<u8>, bytes: &[u8], keep_space: bool) {
    fn hex(n: u8) -> u8 {
        if n < 10 {
            b'0' + n
        } else {
            b'a' + n - 10
        }
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b' ' if keep_space => out.push(b' '),
            0x21..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[b'\\', b'x', hex(b >> 4), hex(b & 15)]),
        }
    }
}
