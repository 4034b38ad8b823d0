//! The composefs dumpfile text format (composefs-dump(5)): one line per filesystem entry.
//!
//! [`parse`] turns a dumpfile into a [`Tree`](crate::tree::Tree) with C `mkcomposefs` semantics
//! and limits; [`write_entry_line`] prints one line with canonical escaping, and is shared by the
//! tree printer [`write_tree`] and by the image dumper in [`crate::erofs::reader`].

use std::io::{self, Write};

use crate::fsverity::Digest;
use crate::tree::Mtime;

pub mod escape;
mod parse;
mod print;
#[cfg(test)]
mod tests;

pub use parse::{
    parse, DumpfileError, ErrorKind, Field, ParseOptions, PathProblem, INLINE_CONTENT_MAX,
    MAX_EXTERNAL_SIZE, PATH_MAX, XATTR_INODE_BUDGET, XATTR_NAME_MAX, XATTR_SECTION_MAX,
    XATTR_VALUE_MAX,
};
pub use print::write_tree;

/// One dumpfile line, borrowed from wherever the entry lives.
#[derive(Debug, Clone)]
pub struct EntryLine<'a> {
    /// Absolute path, raw bytes (escaped on output).
    pub path: &'a [u8],
    /// SIZE field.
    pub size: u64,
    /// Full `st_mode` (type bits included).
    pub mode: u32,
    /// Print MODE with the `@` hardlink prefix.
    pub hardlink: bool,
    /// NLINK field.
    pub nlink: u32,
    /// UID field.
    pub uid: u32,
    /// GID field.
    pub gid: u32,
    /// RDEV field.
    pub rdev: u64,
    /// MTIME field.
    pub mtime: Mtime,
    /// PAYLOAD: symlink target, backing path or hardlink target (`None` or empty → `-`).
    pub payload: Option<&'a [u8]>,
    /// CONTENT: inline data (`None` or empty → `-`).
    pub content: Option<&'a [u8]>,
    /// DIGEST: fs-verity digest (`None` → `-`).
    pub digest: Option<Digest>,
    /// Xattrs in the order they should be printed.
    pub xattrs: Vec<(&'a [u8], &'a [u8])>,
}

/// Write one line (with its trailing newline).
///
/// MODE is printed in octal (prefixed by `@` when [`EntryLine::hardlink`] is set), MTIME as
/// `<sec>.<nsec>` with unpadded nanoseconds, DIGEST as lowercase hex, and the xattrs as
/// ` KEY=VALUE` in the order given.
pub fn write_entry_line(w: &mut impl Write, e: &EntryLine<'_>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(128 + e.path.len());
    print::format_entry_line(&mut buf, e);
    w.write_all(&buf)
}
