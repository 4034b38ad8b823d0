//! The dumpfile printer: one [`EntryLine`] at a time, or a whole [`Tree`] in canonical form.

use std::collections::HashMap;
use std::io::{self, Write};

use super::escape::{escape_into, FieldKind};
use super::EntryLine;
use crate::tree::{FileData, InodeId, InodeKind, Tree};

/// Flush the line buffer of [`write_tree`] once it holds this much.
const FLUSH_AT: usize = 64 * 1024;

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
}

/// Append one line (with its newline) to `out`.
pub(crate) fn format_entry_line(out: &mut Vec<u8>, e: &EntryLine<'_>) {
    escape_into(out, e.path, FieldKind::Optional);
    // Writing into a Vec cannot fail.
    let _ = write!(out, " {} ", e.size);
    if e.hardlink {
        out.push(b'@');
    }
    let _ = write!(
        out,
        "{:o} {} {} {} {} {}.{} ",
        e.mode, e.nlink, e.uid, e.gid, e.rdev, e.mtime.sec, e.mtime.nsec
    );
    escape_into(out, e.payload.unwrap_or_default(), FieldKind::Optional);
    out.push(b' ');
    escape_into(out, e.content.unwrap_or_default(), FieldKind::Optional);
    out.push(b' ');
    match &e.digest {
        Some(d) => push_hex(out, d.as_bytes()),
        None => out.push(b'-'),
    }
    for (key, value) in &e.xattrs {
        out.push(b' ');
        escape_into(out, key, FieldKind::Xattr);
        out.push(b'=');
        escape_into(out, value, FieldKind::Xattr);
    }
    out.push(b'\n');
}

/// The composefs-rs style hardlink line `PATH 0 @120000 - - - - 0.0 TARGET - -`.
fn format_hardlink_line(out: &mut Vec<u8>, path: &[u8], target: &[u8]) {
    escape_into(out, path, FieldKind::Optional);
    out.extend_from_slice(b" 0 @120000 - - - - 0.0 ");
    escape_into(out, target, FieldKind::Optional);
    out.extend_from_slice(b" - -\n");
}

/// Print `tree` as a dumpfile in the composefs-rs `write_dumpfile` conventions.
///
/// Entries are written depth-first in byte order of their names. Directories have SIZE 0 and
/// NLINK 2 + subdirectories; other inodes print their [`Metadata::nlink`](crate::tree::Metadata).
/// The first name of a multiply-linked inode met in that order is printed in full, every later
/// one as `PATH 0 @120000 - - - - 0.0 TARGET - -`, so a hardlink line never precedes its target.
/// Xattrs are printed in byte order of their keys.
pub fn write_tree(tree: &Tree, w: &mut impl Write) -> io::Result<()> {
    let refs = tree.reference_counts();
    // Where each multiply-linked leaf was printed in full.
    let mut printed: HashMap<InodeId, Box<[u8]>> = HashMap::new();
    let mut buf = Vec::with_capacity(FLUSH_AT + 8192);
    let mut result = Ok(());
    tree.walk(|path, entry| {
        if result.is_err() {
            return;
        }
        let inode = tree.inode(entry.inode);
        let multi = refs.get(entry.inode.index()).is_some_and(|&n| n > 1) && !inode.kind.is_dir();
        if multi {
            if let Some(target) = printed.get(&entry.inode) {
                format_hardlink_line(&mut buf, path, target);
                return;
            }
            printed.insert(entry.inode, Box::from(path));
        }
        let meta = &inode.meta;
        let mut line = EntryLine {
            path,
            size: 0,
            mode: inode.mode(),
            hardlink: false,
            nlink: meta.nlink,
            uid: meta.uid,
            gid: meta.gid,
            rdev: 0,
            mtime: meta.mtime,
            payload: None,
            content: None,
            digest: None,
            xattrs: inode.xattrs.iter().map(|(k, v)| (&k[..], &v[..])).collect(),
        };
        match &inode.kind {
            InodeKind::Directory(d) => {
                let subdirs = d
                    .entries
                    .values()
                    .filter(|e| {
                        !e.hardlink
                            && tree
                                .inodes
                                .get(e.inode.index())
                                .is_some_and(|i| i.kind.is_dir())
                    })
                    .count();
                line.nlink = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
            }
            InodeKind::Regular(f) => {
                line.size = f.size;
                match &f.data {
                    FileData::Inline(c) => line.content = Some(c),
                    FileData::External { digest, payload } => {
                        line.payload = payload.as_deref();
                        line.digest = *digest;
                    }
                }
            }
            InodeKind::Symlink(t) => {
                line.size = t.len() as u64;
                line.payload = Some(t);
            }
            InodeKind::CharDevice(rdev) | InodeKind::BlockDevice(rdev) => line.rdev = *rdev,
            InodeKind::Fifo | InodeKind::Socket => {}
        }
        format_entry_line(&mut buf, &line);
        if buf.len() >= FLUSH_AT {
            result = w.write_all(&buf);
            buf.clear();
        }
    });
    result?;
    w.write_all(&buf)
}
