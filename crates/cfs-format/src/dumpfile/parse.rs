//! The dumpfile parser: text → [`Tree`], with C `mkcomposefs` v1.0.8 semantics and limits.
//!
//! Any input may be rejected; none may panic. Every error carries the 1-based line number.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use super::escape::{escape_into, unescape, unescape_optional, EscapeError, FieldKind};
use crate::fsverity::{Digest, ParseDigestError};
use crate::tree::{
    mode, DirEntry, Directory, FileData, Inode, InodeId, InodeKind, Metadata, Mtime, RegularFile,
    Tree, TreeError, Xattrs, NAME_MAX,
};

/// Largest inline CONTENT C accepts (`LCFS_INLINE_CONTENT_MAX`).
pub const INLINE_CONTENT_MAX: usize = 5000;
/// Symlink targets and PAYLOAD paths must be shorter than this (`PATH_MAX`).
pub const PATH_MAX: usize = 4096;
/// Longest xattr name (`XATTR_NAME_MAX`).
pub const XATTR_NAME_MAX: usize = 255;
/// Longest xattr value.
pub const XATTR_VALUE_MAX: usize = 65535;
/// Longest xattr section (everything after the eleven fixed fields) of one line.
pub const XATTR_SECTION_MAX: usize = 65535;
/// Per-inode xattr budget for dumpfile input (`LCFS_INODE_EXTERNAL_XATTR_MAX`): the xattrs of
/// one inode must satisfy `12 + Σ(7 + key_len + value_len) ≤ 32767`.
pub const XATTR_INODE_BUDGET: usize = 32767;
/// Fixed cost of an inode's xattr header in the budget.
const XATTR_HEADER_COST: usize = 12;
/// Per-entry overhead in the budget (twice the entry header, minus one, for alignment).
const XATTR_ENTRY_COST: usize = 7;

/// Number of fixed fields on a line.
const FIXED_FIELDS: usize = 11;

/// Parser options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// C's `CFS_PARSE_STRICT`: require a final newline, RDEV 0 on non-devices, symlink SIZE equal
    /// to the target length and no CONTENT on symlinks.
    pub strict: bool,
}

/// A dumpfile field, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// Field 1.
    Path,
    /// Field 2.
    Size,
    /// Field 3.
    Mode,
    /// Field 4.
    Nlink,
    /// Field 5.
    Uid,
    /// Field 6.
    Gid,
    /// Field 7.
    Rdev,
    /// Field 8.
    Mtime,
    /// Field 9.
    Payload,
    /// Field 10.
    Content,
    /// Field 11.
    Digest,
    /// The part of an xattr field before `=`.
    XattrKey,
    /// The part of an xattr field after `=`.
    XattrValue,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Path => "PATH",
            Field::Size => "SIZE",
            Field::Mode => "MODE",
            Field::Nlink => "NLINK",
            Field::Uid => "UID",
            Field::Gid => "GID",
            Field::Rdev => "RDEV",
            Field::Mtime => "MTIME",
            Field::Payload => "PAYLOAD",
            Field::Content => "CONTENT",
            Field::Digest => "DIGEST",
            Field::XattrKey => "xattr key",
            Field::XattrValue => "xattr value",
        })
    }
}

/// What is wrong with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathProblem {
    /// The path is empty (e.g. an empty line).
    Empty,
    /// The path does not start with `/`.
    NotAbsolute,
    /// A component is empty (`//`, or a trailing `/`).
    EmptyComponent,
    /// A component is `.` or `..`.
    DotComponent,
    /// A component is longer than 255 bytes.
    NameTooLong,
    /// The path contains a NUL byte (written `\x00`).
    Nul,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Empty => "empty path",
            PathProblem::NotAbsolute => "not absolute",
            PathProblem::EmptyComponent => "empty component",
            PathProblem::DotComponent => "invalid . or .. component",
            PathProblem::NameTooLong => "component longer than 255 bytes",
            PathProblem::Nul => "contains a NUL byte",
        })
    }
}

fn mode_problem(mode: u32) -> &'static str {
    if mode & mode::S_IFMT == 0 {
        "no file type"
    } else {
        "unknown file type"
    }
}

/// Largest external file an image can describe: 1024 chunk indexes of 2^43 bytes each.
pub const MAX_EXTERNAL_SIZE: u64 = 1 << 53;

/// Why a dumpfile line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An external or sparse file larger than 1024 chunks of 2^43 bytes can describe.
    #[error("file size {size} is too large for a composefs image (at most {max} bytes)", max = MAX_EXTERNAL_SIZE)]
    FileTooLarge {
        /// The SIZE given.
        size: u64,
    },
    /// The input holds no line at all.
    #[error("empty dumpfile: no root directory")]
    Empty,
    /// A raw NUL byte in a line (C rejects these).
    #[error("embedded NUL byte at column {column}")]
    EmbeddedNul {
        /// 1-based byte column.
        column: usize,
    },
    /// A field has a malformed escape sequence.
    #[error("bad escape in {field}: {error}")]
    Escape {
        /// The field.
        field: Field,
        /// What is wrong.
        error: EscapeError,
    },
    /// A numeric field is empty or not a decimal (MODE: octal) number.
    #[error("invalid {field} {text:?}")]
    InvalidNumber {
        /// The field.
        field: Field,
        /// The offending text.
        text: String,
    },
    /// A numeric field does not fit its type.
    #[error("{field} {text} out of range")]
    OutOfRange {
        /// The field.
        field: Field,
        /// The offending text.
        text: String,
    },
    /// MODE does not carry one of the seven file types.
    #[error("invalid mode {mode:o}: {}", mode_problem(*.mode))]
    InvalidMode {
        /// The mode as parsed (low 32 bits).
        mode: u32,
    },
    /// MTIME is not `<sec>.<nsec>`.
    #[error("invalid MTIME {text:?} (expected <sec>.<nsec>)")]
    InvalidMtime {
        /// The offending text.
        text: String,
    },
    /// PATH is not a canonical absolute path.
    #[error("invalid path {path}: {problem}")]
    InvalidPath {
        /// The path, escaped.
        path: String,
        /// What is wrong.
        problem: PathProblem,
    },
    /// The first line is not the root directory.
    #[error("root directory \"/\" must be the first entry, found {path}")]
    RootNotFirst {
        /// The path found instead, escaped.
        path: String,
    },
    /// The root is not a directory.
    #[error("root must be a directory")]
    RootNotDirectory,
    /// A second `/` line.
    #[error("multiple root entries")]
    MultipleRoots,
    /// The parent directory of a path has not been listed (yet).
    #[error("parent directory missing for {path}")]
    ParentMissing {
        /// The path, escaped.
        path: String,
    },
    /// The parent of a path is not a directory.
    #[error("parent of {path} is not a directory")]
    ParentNotDirectory {
        /// The path, escaped.
        path: String,
    },
    /// The path was already listed.
    #[error("path {path} already exists")]
    Exists {
        /// The path, escaped.
        path: String,
    },
    /// A hardlink line with a directory MODE, or a hardlink whose target is a directory.
    #[error("directories can't be hardlinked")]
    HardlinkToDirectory,
    /// A hardlink line without a target (PAYLOAD `-`).
    #[error("no target path for the hardlink")]
    HardlinkNoTarget,
    /// A hardlink whose target path does not exist.
    #[error("no target at {target} for hardlink")]
    HardlinkTargetMissing {
        /// The target path, escaped.
        target: String,
    },
    /// A hardlink whose target is itself.
    #[error("self-referential hardlink {target}")]
    HardlinkToSelf {
        /// The target path, escaped.
        target: String,
    },
    /// Hardlinks pointing at each other in a loop.
    #[error("hardlink loop through {target}")]
    HardlinkLoop {
        /// A target path on the loop, escaped.
        target: String,
    },
    /// CONTENT is present but its length differs from SIZE.
    #[error("invalid content size {content_len}, must match size {size}")]
    ContentSizeMismatch {
        /// Length of the unescaped CONTENT.
        content_len: usize,
        /// The SIZE field.
        size: u64,
    },
    /// CONTENT longer than [`INLINE_CONTENT_MAX`].
    #[error("inline content size {len} exceeds maximum {INLINE_CONTENT_MAX}")]
    ContentTooLarge {
        /// Length of the unescaped CONTENT.
        len: usize,
    },
    /// PAYLOAD of [`PATH_MAX`] bytes or more.
    #[error("invalid payload: {len} bytes (must be shorter than {PATH_MAX})")]
    PayloadTooLong {
        /// Length of the unescaped PAYLOAD.
        len: usize,
    },
    /// A NUL byte (written `\x00`) where C uses NUL-terminated strings.
    #[error("{field} contains a NUL byte")]
    Nul {
        /// The field.
        field: Field,
    },
    /// A symlink with no or an empty target.
    #[error("invalid symlink: missing or empty target")]
    SymlinkTargetEmpty,
    /// A symlink target of [`PATH_MAX`] bytes or more.
    #[error("invalid symlink: target is {len} bytes (must be shorter than {PATH_MAX})")]
    SymlinkTargetTooLong {
        /// Length of the target.
        len: usize,
    },
    /// DIGEST is neither `-` nor 64/128 hex digits.
    #[error("invalid DIGEST: {0}")]
    InvalidDigest(ParseDigestError),
    /// An xattr field without `=`.
    #[error("missing = in xattr {text}")]
    XattrMissingEquals {
        /// The field as written (truncated).
        text: String,
    },
    /// An xattr key that is empty or longer than [`XATTR_NAME_MAX`].
    #[error("can't set xattr: key length {len} not in 1..={XATTR_NAME_MAX}")]
    XattrKeyLength {
        /// Length of the unescaped key.
        len: usize,
    },
    /// An xattr value longer than [`XATTR_VALUE_MAX`].
    #[error("can't set xattr {key}: value is {len} bytes (max {XATTR_VALUE_MAX})")]
    XattrValueTooLong {
        /// The key, escaped.
        key: String,
        /// Length of the unescaped value.
        len: usize,
    },
    /// The xattr section of the line is longer than [`XATTR_SECTION_MAX`].
    #[error("too many xattrs: {len} bytes of xattr fields (max {XATTR_SECTION_MAX})")]
    XattrSectionTooLong {
        /// Length of the section as written.
        len: usize,
    },
    /// Adding this xattr exceeds [`XATTR_INODE_BUDGET`].
    #[error("can't set xattr {key}: inode xattr size {total} exceeds {XATTR_INODE_BUDGET}")]
    XattrBudget {
        /// The key, escaped.
        key: String,
        /// The budget total that would result.
        total: usize,
    },
    /// Strict mode: the last line has no newline.
    #[error("missing trailing newline")]
    MissingFinalNewline,
    /// Strict mode: RDEV set on something other than a device.
    #[error("non-zero RDEV {rdev} on non-device")]
    RdevOnNonDevice {
        /// The RDEV field.
        rdev: u64,
    },
    /// Strict mode: symlink SIZE differs from the target length.
    #[error("invalid symlink size {size}, must match target length {len}")]
    SymlinkSizeMismatch {
        /// The SIZE field.
        size: u64,
        /// Length of the target.
        len: usize,
    },
    /// Strict mode: a symlink with CONTENT.
    #[error("symlink cannot have content")]
    SymlinkWithContent,
    /// More entries than inode ids.
    #[error("too many entries")]
    TooManyEntries,
}

/// A dumpfile parse error: the 1-based line number and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct DumpfileError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// Longest text quoted in an error message.
const SHOW_MAX: usize = 128;

/// Bytes as they would appear in a dumpfile (escaped), truncated for error messages.
fn show(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let cut = bytes.get(..SHOW_MAX).unwrap_or(bytes);
    escape_into(&mut out, cut, FieldKind::Optional);
    let mut s = String::from_utf8_lossy(&out).into_owned();
    if cut.len() < bytes.len() {
        s.push_str("...");
    }
    s
}

fn show_raw(bytes: &[u8]) -> String {
    let cut = bytes.get(..SHOW_MAX).unwrap_or(bytes);
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if cut.len() < bytes.len() {
        s.push_str("...");
    }
    s
}

/// Split at the first `sep`: `(before, after)`; without `sep`, `(all, empty)` — C's `split_at`.
fn split_first(s: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == sep) {
        Some(i) => {
            let (a, b) = s.split_at_checked(i).unwrap_or((s, &[]));
            (a, b.get(1..).unwrap_or(&[]))
        }
        None => (s, &[]),
    }
}

/// `Some((before, after))` at the first `sep`, `None` without one.
fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    let (a, b) = s.split_at_checked(i)?;
    Some((a, b.get(1..).unwrap_or(&[])))
}

fn parse_u64(field: Field, text: &[u8], radix: u64) -> Result<u64, ErrorKind> {
    let invalid = || ErrorKind::InvalidNumber {
        field,
        text: show_raw(text),
    };
    if text.is_empty() {
        return Err(invalid());
    }
    let mut v: u64 = 0;
    for &b in text {
        let d = match b {
            b'0'..=b'9' => u64::from(b - b'0'),
            _ => return Err(invalid()),
        };
        if d >= radix {
            return Err(invalid());
        }
        v = v
            .checked_mul(radix)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| ErrorKind::OutOfRange {
                field,
                text: show_raw(text),
            })?;
    }
    Ok(v)
}

fn parse_u32(field: Field, text: &[u8]) -> Result<u32, ErrorKind> {
    let v = parse_u64(field, text, 10)?;
    u32::try_from(v).map_err(|_| ErrorKind::OutOfRange {
        field,
        text: show_raw(text),
    })
}

/// MODE (octal, without the `@`): validated file type, truncated to 32 bits as C does.
fn parse_mode(text: &[u8]) -> Result<u32, ErrorKind> {
    let v = parse_u64(Field::Mode, text, 8)?;
    // C passes the value through a uint32_t before validating it.
    let mode = v as u32;
    match mode & mode::S_IFMT {
        mode::S_IFREG
        | mode::S_IFDIR
        | mode::S_IFLNK
        | mode::S_IFBLK
        | mode::S_IFCHR
        | mode::S_IFSOCK
        | mode::S_IFIFO => Ok(mode),
        _ => Err(ErrorKind::InvalidMode { mode }),
    }
}

fn parse_mtime(text: &[u8]) -> Result<Mtime, ErrorKind> {
    let invalid = || ErrorKind::InvalidMtime {
        text: show_raw(text),
    };
    let (sec_text, nsec_text) = split_once(text, b'.').ok_or_else(invalid)?;
    // A negative second count is what C's strtoull round-trips for pre-epoch times.
    let (negative, digits) = match sec_text.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, sec_text),
    };
    let magnitude = parse_u64(Field::Mtime, digits, 10).map_err(|_| invalid())?;
    let sec = if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
    .ok_or_else(|| ErrorKind::OutOfRange {
        field: Field::Mtime,
        text: show_raw(text),
    })?;
    let nsec = parse_u64(Field::Mtime, nsec_text, 10).map_err(|_| invalid())?;
    let nsec = u32::try_from(nsec).map_err(|_| ErrorKind::OutOfRange {
        field: Field::Mtime,
        text: show_raw(text),
    })?;
    Ok(Mtime { sec, nsec })
}

fn unescape_field(field: Field, text: &[u8]) -> Result<Cow<'_, [u8]>, ErrorKind> {
    unescape(text).map_err(|error| ErrorKind::Escape { field, error })
}

fn unescape_optional_field(field: Field, text: &[u8]) -> Result<Option<Cow<'_, [u8]>>, ErrorKind> {
    unescape_optional(text).map_err(|error| ErrorKind::Escape { field, error })
}

fn check_component(name: &[u8]) -> Result<(), PathProblem> {
    if name.is_empty() {
        Err(PathProblem::EmptyComponent)
    } else if name == b"." || name == b".." {
        Err(PathProblem::DotComponent)
    } else if name.len() > NAME_MAX {
        Err(PathProblem::NameTooLong)
    } else if name.contains(&0) {
        Err(PathProblem::Nul)
    } else {
        Ok(())
    }
}

/// Split a non-root absolute path into its parent path (`/` for top-level entries) and its last
/// component, validating the last component.
fn split_parent(path: &[u8]) -> Result<(&[u8], &[u8]), ErrorKind> {
    let bad = |problem| ErrorKind::InvalidPath {
        path: show(path),
        problem,
    };
    if path.first() != Some(&b'/') {
        return Err(bad(PathProblem::NotAbsolute));
    }
    let pos = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let (parent, name) = path.split_at_checked(pos).unwrap_or((&[], path));
    let name = name.get(1..).unwrap_or(&[]);
    check_component(name).map_err(bad)?;
    // Only the root's path ends with `/`: `//a` and `/d//a` have an empty component.
    if parent.last() == Some(&b'/') {
        return Err(bad(PathProblem::EmptyComponent));
    }
    let parent: &[u8] = if parent.is_empty() { b"/" } else { parent };
    Ok((parent, name))
}

/// Diagnose why `parent` (of `path`) is not a known directory.
fn parent_error(
    tree: &Tree,
    dirs: &HashMap<Box<[u8]>, InodeId>,
    parent: &[u8],
    path: &[u8],
) -> ErrorKind {
    // A malformed intermediate component explains it best.
    for comp in parent.get(1..).unwrap_or(&[]).split(|&b| b == b'/') {
        if let Err(problem) = check_component(comp) {
            return ErrorKind::InvalidPath {
                path: show(path),
                problem,
            };
        }
    }
    // Does the parent exist as a non-directory?
    if let Ok((grandparent, name)) = split_parent(parent) {
        if let Some(&gp) = dirs.get(grandparent) {
            if tree
                .inodes
                .get(gp.index())
                .and_then(Inode::as_dir)
                .is_some_and(|d| d.entries.contains_key(name))
            {
                return ErrorKind::ParentNotDirectory { path: show(path) };
            }
        }
    }
    ErrorKind::ParentMissing { path: show(path) }
}

/// Parse the xattr section of a line (everything after the eleven fixed fields).
fn parse_xattrs(section: &[u8]) -> Result<Xattrs, ErrorKind> {
    if section.len() > XATTR_SECTION_MAX {
        return Err(ErrorKind::XattrSectionTooLong { len: section.len() });
    }
    let mut xattrs = Xattrs::new();
    // Σ(7 + key_len + value_len) over the xattrs currently set.
    let mut used = 0usize;
    let mut rest = section;
    while !rest.is_empty() {
        let (field, next) = split_first(rest, b' ');
        rest = next;
        let (raw_key, raw_value) =
            split_once(field, b'=').ok_or_else(|| ErrorKind::XattrMissingEquals {
                text: show_raw(field),
            })?;
        let key = unescape_field(Field::XattrKey, raw_key)?;
        let value = unescape_field(Field::XattrValue, raw_value)?;
        if key.is_empty() || key.len() > XATTR_NAME_MAX {
            return Err(ErrorKind::XattrKeyLength { len: key.len() });
        }
        if key.contains(&0) {
            return Err(ErrorKind::Nul {
                field: Field::XattrKey,
            });
        }
        if value.len() > XATTR_VALUE_MAX {
            return Err(ErrorKind::XattrValueTooLong {
                key: show(&key),
                len: value.len(),
            });
        }
        // Setting a key again replaces it: its old cost leaves the budget first (C).
        if let Some(old) = xattrs.remove(&*key) {
            used = used.saturating_sub(XATTR_ENTRY_COST + key.len() + old.len());
        }
        let entry = XATTR_ENTRY_COST + key.len() + value.len();
        let total = XATTR_HEADER_COST + used + entry;
        if total > XATTR_INODE_BUDGET {
            return Err(ErrorKind::XattrBudget {
                key: show(&key),
                total,
            });
        }
        used += entry;
        xattrs.insert(
            key.into_owned().into_boxed_slice(),
            value.into_owned().into_boxed_slice(),
        );
    }
    Ok(xattrs)
}

/// The eleven fixed fields of a line, as written.
struct Fields<'a> {
    size: &'a [u8],
    nlink: &'a [u8],
    uid: &'a [u8],
    gid: &'a [u8],
    rdev: &'a [u8],
    mtime: &'a [u8],
    payload: &'a [u8],
    content: &'a [u8],
    digest: &'a [u8],
    /// Everything after the fixed fields.
    xattrs: &'a [u8],
}

/// Build the inode of a non-hardlink line whose MODE has already been validated.
fn parse_inode(f: &Fields<'_>, mode: u32, strict: bool) -> Result<Inode, ErrorKind> {
    let ftype = mode & mode::S_IFMT;
    let size = parse_u64(Field::Size, f.size, 10)?;
    let nlink = parse_u32(Field::Nlink, f.nlink)?;
    let uid = parse_u32(Field::Uid, f.uid)?;
    let gid = parse_u32(Field::Gid, f.gid)?;
    let rdev = parse_u64(Field::Rdev, f.rdev, 10)?;
    let mtime = parse_mtime(f.mtime)?;
    let payload = unescape_optional_field(Field::Payload, f.payload)?;
    let content = unescape_optional_field(Field::Content, f.content)?;
    if let Some(c) = &content {
        if c.len() as u64 != size {
            return Err(ErrorKind::ContentSizeMismatch {
                content_len: c.len(),
                size,
            });
        }
    }
    // An empty DIGEST can only come from a missing trailing field: not set. C validates the
    // digest whatever the file type; only regular files use it.
    let digest = match unescape_optional_field(Field::Digest, f.digest)? {
        Some(t) if !t.is_empty() => Some(parse_digest(&t)?),
        _ => None,
    };
    let is_device = ftype == mode::S_IFCHR || ftype == mode::S_IFBLK;
    if strict && rdev != 0 && !is_device {
        return Err(ErrorKind::RdevOnNonDevice { rdev });
    }
    if let Some(p) = &payload {
        if p.contains(&0) {
            return Err(ErrorKind::Nul {
                field: Field::Payload,
            });
        }
    }

    let kind = if ftype == mode::S_IFLNK {
        let target = match payload {
            Some(t) if !t.is_empty() => t,
            _ => return Err(ErrorKind::SymlinkTargetEmpty),
        };
        if target.len() >= PATH_MAX {
            return Err(ErrorKind::SymlinkTargetTooLong { len: target.len() });
        }
        if strict {
            if size != target.len() as u64 {
                return Err(ErrorKind::SymlinkSizeMismatch {
                    size,
                    len: target.len(),
                });
            }
            if content.as_ref().is_some_and(|c| !c.is_empty()) {
                return Err(ErrorKind::SymlinkWithContent);
            }
        }
        InodeKind::Symlink(target.into_owned().into_boxed_slice())
    } else {
        if let Some(p) = &payload {
            if p.len() >= PATH_MAX {
                return Err(ErrorKind::PayloadTooLong { len: p.len() });
            }
        }
        if let Some(c) = &content {
            if c.len() > INLINE_CONTENT_MAX {
                return Err(ErrorKind::ContentTooLarge { len: c.len() });
            }
        }
        match ftype {
            mode::S_IFDIR => InodeKind::Directory(Directory::default()),
            mode::S_IFCHR => InodeKind::CharDevice(rdev),
            mode::S_IFBLK => InodeKind::BlockDevice(rdev),
            mode::S_IFIFO => InodeKind::Fifo,
            mode::S_IFSOCK => InodeKind::Socket,
            mode::S_IFREG => {
                let data = match content {
                    _ if size == 0 => FileData::Inline(Box::default()),
                    Some(c) => FileData::Inline(c.into_owned().into_boxed_slice()),
                    // C finds this only when writing (EFBIG); here the line can be named.
                    None if size > MAX_EXTERNAL_SIZE => {
                        return Err(ErrorKind::FileTooLarge { size });
                    }
                    None => FileData::External {
                        digest,
                        payload: payload
                            .filter(|p| !p.is_empty())
                            .map(|p| p.into_owned().into_boxed_slice()),
                    },
                };
                InodeKind::Regular(RegularFile { size, data })
            }
            _ => return Err(ErrorKind::InvalidMode { mode }),
        }
    };
    let xattrs = parse_xattrs(f.xattrs)?;
    Ok(Inode {
        meta: Metadata {
            permissions: mode & 0o7777,
            uid,
            gid,
            mtime,
            nlink,
        },
        kind,
        xattrs,
    })
}

fn parse_digest(text: &[u8]) -> Result<Digest, ErrorKind> {
    let s = std::str::from_utf8(text)
        .map_err(|_| ErrorKind::InvalidDigest(ParseDigestError::BadHex(show_raw(text))))?;
    Digest::from_hex(s).map_err(ErrorKind::InvalidDigest)
}

/// A hardlink line waiting for the whole file to be read.
#[derive(Debug)]
struct PendingLink {
    parent: InodeId,
    name: Box<[u8]>,
    target: Box<[u8]>,
    line: usize,
}

#[derive(Debug, Clone, Copy)]
enum LinkState {
    Unresolved,
    InProgress,
    Resolved(InodeId),
}

/// Parser state across lines.
#[derive(Debug)]
struct Parser {
    strict: bool,
    tree: Option<Tree>,
    /// Every directory by its full path (root = `/`).
    dirs: HashMap<Box<[u8]>, InodeId>,
    /// Hardlink lines, in file order. Until resolution their directory entries hold a
    /// placeholder id `u32::MAX - index`, above every real inode id.
    pending: Vec<PendingLink>,
}

fn placeholder(index: usize) -> InodeId {
    InodeId(u32::MAX - index as u32)
}

impl Parser {
    fn line(&mut self, line: &[u8], lineno: usize) -> Result<(), ErrorKind> {
        if let Some(col) = line.iter().position(|&b| b == 0) {
            return Err(ErrorKind::EmbeddedNul { column: col + 1 });
        }
        let mut fixed: [&[u8]; FIXED_FIELDS] = [&[]; FIXED_FIELDS];
        let mut rest = line;
        for field in fixed.iter_mut() {
            let (a, b) = split_first(rest, b' ');
            *field = a;
            rest = b;
        }
        let [path_f, size, mode_f, nlink, uid, gid, rdev, mtime, payload, content, digest] = fixed;
        let fields = Fields {
            size,
            nlink,
            uid,
            gid,
            rdev,
            mtime,
            payload,
            content,
            digest,
            xattrs: rest,
        };

        let path = unescape_field(Field::Path, path_f)?;
        if path.is_empty() {
            return Err(ErrorKind::InvalidPath {
                path: String::new(),
                problem: PathProblem::Empty,
            });
        }
        let (hardlink, mode_text) = match mode_f.strip_prefix(b"@") {
            Some(m) => (true, m),
            None => (false, mode_f),
        };
        let mode = parse_mode(mode_text)?;
        let is_dir = mode & mode::S_IFMT == mode::S_IFDIR;

        if *path == *b"/" {
            if self.tree.is_some() {
                return Err(ErrorKind::MultipleRoots);
            }
            if !is_dir {
                return Err(ErrorKind::RootNotDirectory);
            }
            if hardlink {
                return Err(ErrorKind::HardlinkToDirectory);
            }
            let root = parse_inode(&fields, mode, self.strict)?;
            self.tree = Some(Tree { inodes: vec![root] });
            self.dirs.insert(Box::from(&b"/"[..]), InodeId::ROOT);
            return Ok(());
        }

        let Some(tree) = self.tree.as_mut() else {
            return Err(ErrorKind::RootNotFirst { path: show(&path) });
        };
        let (parent_path, name) = split_parent(&path)?;
        let Some(&parent) = self.dirs.get(parent_path) else {
            return Err(parent_error(tree, &self.dirs, parent_path, &path));
        };
        if tree.inodes.len() + self.pending.len() >= u32::MAX as usize - 1 {
            return Err(ErrorKind::TooManyEntries);
        }

        if hardlink {
            if is_dir {
                return Err(ErrorKind::HardlinkToDirectory);
            }
            let target = match unescape_optional_field(Field::Payload, fields.payload)? {
                Some(t) if !t.is_empty() => t,
                _ => return Err(ErrorKind::HardlinkNoTarget),
            };
            let Some(dir) = tree
                .inodes
                .get_mut(parent.index())
                .and_then(|i| match &mut i.kind {
                    InodeKind::Directory(d) => Some(d),
                    _ => None,
                })
            else {
                return Err(ErrorKind::ParentNotDirectory { path: show(&path) });
            };
            if dir.entries.contains_key(name) {
                return Err(ErrorKind::Exists { path: show(&path) });
            }
            dir.entries.insert(
                Box::from(name),
                DirEntry {
                    inode: placeholder(self.pending.len()),
                    hardlink: true,
                },
            );
            self.pending.push(PendingLink {
                parent,
                name: Box::from(name),
                target: target.into_owned().into_boxed_slice(),
                line: lineno,
            });
            return Ok(());
        }

        let inode = parse_inode(&fields, mode, self.strict)?;
        let id = tree.add(parent, name, inode).map_err(|e| match e {
            TreeError::Exists { .. } => ErrorKind::Exists { path: show(&path) },
            TreeError::NotADirectory { .. } => ErrorKind::ParentNotDirectory { path: show(&path) },
            TreeError::DirectoryHardlink => ErrorKind::HardlinkToDirectory,
            TreeError::InvalidName { .. } => ErrorKind::InvalidPath {
                path: show(&path),
                problem: PathProblem::EmptyComponent,
            },
        })?;
        if is_dir {
            self.dirs.insert(path.into_owned().into_boxed_slice(), id);
        }
        Ok(())
    }

    /// Resolve all hardlinks and return the tree.
    fn finish(self) -> Result<Tree, DumpfileError> {
        let Some(mut tree) = self.tree else {
            return Err(DumpfileError {
                line: 1,
                kind: ErrorKind::Empty,
            });
        };
        let pending = self.pending;
        let mut state = vec![LinkState::Unresolved; pending.len()];
        for start in 0..pending.len() {
            resolve_chain(&tree, &pending, &mut state, start)?;
        }
        for (link, st) in pending.iter().zip(&state) {
            let LinkState::Resolved(target) = *st else {
                continue;
            };
            if let Some(InodeKind::Directory(dir)) = tree
                .inodes
                .get_mut(link.parent.index())
                .map(|i| &mut i.kind)
            {
                if let Some(entry) = dir.entries.get_mut(&link.name) {
                    entry.inode = target;
                }
            }
        }
        Ok(tree)
    }
}

/// Look up a hardlink target the way C does: leading and repeated `/` are ignored, nothing is
/// followed. The result may be a placeholder id.
fn lookup_target(tree: &Tree, target: &[u8]) -> Option<InodeId> {
    let mut cur = InodeId::ROOT;
    for comp in target.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
        let dir = tree.inodes.get(cur.index())?.as_dir()?;
        cur = dir.entries.get(comp)?.inode;
    }
    Some(cur)
}

/// Follow the chain of hardlinks starting at `start` to a real inode.
fn resolve_chain(
    tree: &Tree,
    pending: &[PendingLink],
    state: &mut [LinkState],
    start: usize,
) -> Result<InodeId, DumpfileError> {
    let mut chain = Vec::new();
    let mut cur = start;
    let target = loop {
        let (Some(link), Some(st)) = (pending.get(cur), state.get_mut(cur)) else {
            // Placeholder ids only ever come from `pending`, so this cannot happen.
            return Err(DumpfileError {
                line: 1,
                kind: ErrorKind::TooManyEntries,
            });
        };
        let err = |kind| DumpfileError {
            line: link.line,
            kind,
        };
        match *st {
            LinkState::Resolved(id) => break id,
            LinkState::InProgress => {
                return Err(err(ErrorKind::HardlinkLoop {
                    target: show(&link.target),
                }))
            }
            LinkState::Unresolved => {}
        }
        *st = LinkState::InProgress;
        chain.push(cur);
        let Some(id) = lookup_target(tree, &link.target) else {
            return Err(err(ErrorKind::HardlinkTargetMissing {
                target: show(&link.target),
            }));
        };
        match tree.inodes.get(id.index()) {
            Some(inode) if inode.kind.is_dir() => return Err(err(ErrorKind::HardlinkToDirectory)),
            Some(_) => break id,
            None => {
                let next = (u32::MAX - id.0) as usize;
                if next == cur {
                    return Err(err(ErrorKind::HardlinkToSelf {
                        target: show(&link.target),
                    }));
                }
                cur = next;
            }
        }
    };
    for i in chain {
        if let Some(st) = state.get_mut(i) {
            *st = LinkState::Resolved(target);
        }
    }
    Ok(target)
}

/// Parse a dumpfile into a [`Tree`] with C `mkcomposefs` v1.0.8 semantics.
///
/// The first line must be the root directory `/`; every other path's parent must already be
/// listed. Hardlink lines (MODE `@…`) may refer to paths listed later; they become
/// [`DirEntry`]s with `hardlink: true` naming the target's inode. NLINK is kept verbatim in
/// [`Metadata::nlink`]. Regular files: CONTENT → [`FileData::Inline`]; SIZE 0 → empty inline;
/// otherwise [`FileData::External`] with the PAYLOAD and DIGEST given (neither → sparse).
pub fn parse(input: &[u8], opts: &ParseOptions) -> Result<Tree, DumpfileError> {
    let mut parser = Parser {
        strict: opts.strict,
        tree: None,
        dirs: HashMap::new(),
        pending: Vec::new(),
    };
    let mut rest = input;
    let mut lineno = 0usize;
    while !rest.is_empty() {
        lineno += 1;
        let (line, next) = match split_once(rest, b'\n') {
            Some(split) => split,
            None => {
                if opts.strict {
                    return Err(DumpfileError {
                        line: lineno,
                        kind: ErrorKind::MissingFinalNewline,
                    });
                }
                (rest, &[][..])
            }
        };
        parser
            .line(line, lineno)
            .map_err(|kind| DumpfileError { line: lineno, kind })?;
        rest = next;
    }
    parser.finish()
}
