//! One tar entry, interpreted the way composefs-rs reads layers (docs/formats.md §5.2), plus the
//! safety rules we add: no absolute paths, no `..`, no sparse files.
//!
//! The `tar` crate does the header parsing (GNU long names, PAX `path`/`linkpath`/`size`/
//! `uid`/`gid`); this module turns its [`tar::Entry`] into a [`LayerEntry`]: a normalised
//! relative path, the kind, the metadata (PAX `mtime` with nanoseconds) and the xattrs from
//! `SCHILY.xattr.*` records. Both the importer and the tree builder use it, so what is checked
//! on import is exactly what is later merged.

use std::io::Read;

use cfs_format::tree::{Metadata, Mtime, Xattrs};
use tar::EntryType;

use crate::error::EntryProblem;

/// What a tar entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file of this size (its content is delivered separately).
    Regular {
        /// The body's size.
        size: u64,
    },
    /// A symlink and its target (verbatim).
    Symlink(Box<[u8]>),
    /// A hardlink to this normalised path.
    Hardlink(Vec<u8>),
    /// A character device (`rdev`).
    CharDevice(u64),
    /// A block device (`rdev`).
    BlockDevice(u64),
    /// A FIFO.
    Fifo,
}

/// A tar entry as it applies to a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Normalised path: relative, `/`-separated, no `.`/`..`/empty components; empty for the
    /// root directory.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: EntryKind,
    /// Permissions, owner, mtime (`nlink` is left 0; the tree computes it).
    pub meta: Metadata,
    /// From `SCHILY.xattr.*` PAX records.
    pub xattrs: Xattrs,
}

/// The entry's path for messages (lossy UTF-8, as written in the tar).
pub fn display_path<R: Read>(entry: &tar::Entry<'_, R>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

/// Normalise a path from a tar header: refuse absolute paths, `..` and NUL; drop `.` and empty
/// components. `Ok(empty)` is the root: `./`, and also `/` alone (the root entry
/// `umoci insert … /` writes; composefs-rs takes it as the root too), which names nothing
/// outside the layer.
pub fn normalize_path(raw: &[u8]) -> Result<Vec<u8>, EntryProblem> {
    if raw.split(|&b| b == b'/').all(|c| c.is_empty() || c == b".") {
        return Ok(Vec::new());
    }
    if raw.first() == Some(&b'/') {
        return Err(EntryProblem::AbsolutePath);
    }
    if raw.contains(&0) {
        return Err(EntryProblem::Nul);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(EntryProblem::DotDot),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

fn normalize_link_target(raw: &[u8]) -> Result<Vec<u8>, EntryProblem> {
    let bad = |reason| EntryProblem::BadLinkTarget {
        target: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    match normalize_path(raw) {
        Ok(p) if p.is_empty() => Err(bad("it names the root directory")),
        Ok(p) => Ok(p),
        Err(EntryProblem::AbsolutePath) => Err(bad("absolute targets are not allowed")),
        Err(EntryProblem::DotDot) => Err(bad("it has a '..' component")),
        Err(_) => Err(bad("it contains a NUL byte")),
    }
}

/// Parse a PAX `mtime` (`[-]SEC[.FRACTION]`): the fraction becomes nanoseconds, right-padded
/// to 9 digits or truncated after 9.
pub fn parse_pax_mtime(text: &[u8]) -> Option<Mtime> {
    let text = std::str::from_utf8(text).ok()?;
    let (sec, frac) = match text.split_once('.') {
        Some((s, f)) => (s, f),
        None => (text, ""),
    };
    let digits = sec.strip_prefix('-').unwrap_or(sec);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sec: i64 = sec.parse().ok()?;
    let mut nsec = 0u32;
    for i in 0..9 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nsec = nsec * 10 + d;
    }
    Some(Mtime { sec, nsec })
}

fn header_err(e: std::io::Error) -> EntryProblem {
    EntryProblem::BadHeader(e.to_string())
}

fn to_u32(field: &'static str, value: u64) -> Result<u32, EntryProblem> {
    u32::try_from(value).map_err(|_| EntryProblem::OutOfRange { field, value })
}

/// Interpret `entry`. `Ok(None)` for entries that do not describe a file (PAX global headers).
pub fn parse_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
) -> Result<Option<LayerEntry>, EntryProblem> {
    let header = entry.header();
    let entry_type = header.entry_type();
    let kind = match entry_type {
        EntryType::XGlobalHeader => return Ok(None),
        EntryType::GNUSparse => return Err(EntryProblem::Sparse),
        EntryType::Regular | EntryType::Continuous => EntryKind::Regular { size: entry.size() },
        EntryType::Directory => EntryKind::Directory,
        EntryType::Fifo => EntryKind::Fifo,
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| EntryProblem::BadHeader("symlink without a target".into()))?;
            if target.is_empty() {
                return Err(EntryProblem::BadHeader("symlink without a target".into()));
            }
            EntryKind::Symlink(target.as_ref().into())
        }
        EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| EntryProblem::BadHeader("hardlink without a target".into()))?;
            EntryKind::Hardlink(normalize_link_target(&target)?)
        }
        EntryType::Char | EntryType::Block => {
            let major = header.device_major().map_err(header_err)?;
            let minor = header.device_minor().map_err(header_err)?;
            let (Some(major), Some(minor)) = (major, minor) else {
                return Err(EntryProblem::NoDeviceNumbers);
            };
            let rdev = rustix::fs::makedev(major, minor);
            if entry_type == EntryType::Char {
                EntryKind::CharDevice(rdev)
            } else {
                EntryKind::BlockDevice(rdev)
            }
        }
        other => return Err(EntryProblem::UnsupportedType(char::from(other.as_byte()))),
    };
    let path = normalize_path(&entry.path_bytes())?;
    let header = entry.header();
    let mut meta = Metadata {
        permissions: header.mode().map_err(header_err)? & 0o7777,
        uid: to_u32("uid", header.uid().map_err(header_err)?)?,
        gid: to_u32("gid", header.gid().map_err(header_err)?)?,
        mtime: Mtime {
            sec: i64::try_from(header.mtime().map_err(header_err)?)
                .map_err(|_| EntryProblem::BadHeader("mtime out of range".into()))?,
            nsec: 0,
        },
        nlink: 0,
    };
    let mut xattrs = Xattrs::new();
    if let Some(pax) = entry.pax_extensions().map_err(header_err)? {
        for record in pax {
            let record = record.map_err(|_| EntryProblem::BadPax {
                key: "?".into(),
                reason: "malformed record",
            })?;
            let key = record.key_bytes();
            let bad = |reason| EntryProblem::BadPax {
                key: String::from_utf8_lossy(key).into_owned(),
                reason,
            };
            if key == b"mtime" {
                meta.mtime = parse_pax_mtime(record.value_bytes())
                    .ok_or_else(|| bad("not a decimal time"))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.is_empty() {
                    return Err(bad("empty xattr name"));
                }
                xattrs.insert(name.into(), record.value_bytes().into());
            } else if key.starts_with(b"GNU.sparse.") {
                return Err(EntryProblem::Sparse);
            }
        }
    }
    Ok(Some(LayerEntry {
        path,
        kind,
        meta,
        xattrs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_and_checked() {
        assert_eq!(normalize_path(b"./usr//bin/").expect("ok"), b"usr/bin");
        assert_eq!(normalize_path(b"./").expect("root"), b"");
        assert_eq!(normalize_path(b"").expect("root"), b"");
        assert_eq!(normalize_path(b"a/./b").expect("ok"), b"a/b");
        assert_eq!(normalize_path(b"/").expect("root"), b"");
        assert_eq!(normalize_path(b"/./").expect("root"), b"");
        assert_eq!(
            normalize_path(b"/etc/passwd"),
            Err(EntryProblem::AbsolutePath)
        );
        assert_eq!(normalize_path(b"/./etc"), Err(EntryProblem::AbsolutePath));
        assert_eq!(normalize_path(b"a/../../x"), Err(EntryProblem::DotDot));
        assert_eq!(normalize_path(b".."), Err(EntryProblem::DotDot));
        assert!(normalize_link_target(b"/usr/x").is_err());
        assert!(normalize_link_target(b"./").is_err());
        assert!(normalize_link_target(b"/").is_err());
        assert_eq!(normalize_link_target(b"./a/b").expect("ok"), b"a/b");
    }

    #[test]
    fn pax_mtimes() {
        let t = |s: &str| parse_pax_mtime(s.as_bytes());
        assert_eq!(
            t("1700000002.5"),
            Some(Mtime {
                sec: 1_700_000_002,
                nsec: 500_000_000
            })
        );
        assert_eq!(t("12"), Some(Mtime { sec: 12, nsec: 0 }));
        assert_eq!(
            t("1.1234567891"),
            Some(Mtime {
                sec: 1,
                nsec: 123_456_789
            })
        );
        assert_eq!(t("-3.25").map(|m| (m.sec, m.nsec)), Some((-3, 250_000_000)));
        for bad in ["", ".5", "x", "1.x", "1e5", "--1"] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
    }
}
