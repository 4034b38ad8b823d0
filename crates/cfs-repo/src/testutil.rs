//! Helpers for building source trees in tests. Operations that need privileges report `None`
//! (after a loud note on stderr) when the kernel answers `EPERM`, so callers can skip.

use std::path::Path;

use rustix::fs::Timespec;
use rustix::fs::{AtFlags, FileType, Mode, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;

use cfs_format::tree::{FileData, InodeId, InodeKind, Tree};

/// `Some(v)` on success, `None` with a loud note on `EPERM`/`EACCES`; panics otherwise.
pub fn privileged<T>(what: &str, r: rustix::io::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e @ (Errno::PERM | Errno::ACCESS)) => {
            eprintln!("!!! SKIPPING part of this test: {what} needs privileges ({e})");
            None
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Write `data` to `path` and set its permissions.
pub fn write_file(path: &Path, data: &[u8], mode: u32) {
    std::fs::write(path, data).expect("write test file");
    chmod(path, mode);
}

/// `chmod` (follows symlinks; do not use on them).
pub fn chmod(path: &Path, mode: u32) {
    rustix::fs::chmod(path, Mode::from_raw_mode(mode)).expect("chmod");
}

/// Set the mtime (and atime) of `path` without following a symlink.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).expect("utimensat");
}

/// `lchown`; `None` when not permitted.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> Option<()> {
    privileged(
        "lchown",
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO)),
    )
}

/// `mknod` then `chmod` (so the umask does not matter); `None` when not permitted.
pub fn mknod(path: &Path, kind: FileType, mode: u32, major: u32, minor: u32) -> Option<()> {
    let made = privileged(
        "mknod",
        rustix::fs::mknodat(
            CWD,
            path,
            kind,
            Mode::from_raw_mode(mode),
            rustix::fs::makedev(major, minor),
        ),
    );
    made.map(|()| chmod(path, mode))
}

/// `lsetxattr`; `None` when not permitted (e.g. `trusted.*` without `CAP_SYS_ADMIN`).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) -> Option<()> {
    privileged(
        &format!("lsetxattr {name}"),
        rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()),
    )
}

/// The inode at absolute tree path `path`.
pub fn at(tree: &Tree, path: &str) -> InodeId {
    tree.lookup_path(path.as_bytes())
        .unwrap_or_else(|| panic!("{path} not in tree"))
}

/// Dump-like escaping: `\\`, `\n`, `\r`, `\t`, and `\xNN` for every byte outside `!`..=`~`
/// (plus `=` when `eq` is set, for xattr names).
fn esc(bytes: &[u8], eq: bool) -> String {
    let mut s = String::new();
    for &b in bytes {
        match b {
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            b'\r' => s.push_str("\\r"),
            b'\t' => s.push_str("\\t"),
            b'=' if eq => s.push_str("\\x3d"),
            0x21..=0x7e => s.push(char::from(b)),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s
}

/// A dumpfile-like listing of the tree, one line per entry, to compare with docs/formats.md's dumps:
/// `PATH SIZE MODE NLINK UID GID RDEV MTIME PAYLOAD CONTENT DIGEST XATTRS…`. Differences from
/// composefs-dump: directory SIZE is `-` (the writer computes it), xattrs are sorted by name,
/// hardlink entries print `@ CANONICAL-INODE-INDEX`.
pub fn listing(tree: &Tree) -> Vec<String> {
    let mut lines = Vec::new();
    tree.walk(|path, entry| {
        let p = if path == b"/" {
            "/".to_owned()
        } else {
            esc(path, false)
        };
        if entry.hardlink {
            lines.push(format!("{p} @ {}", entry.inode.0));
            return;
        }
        let inode = tree.inode(entry.inode);
        let m = &inode.meta;
        let (size, rdev, payload, content, digest) = match &inode.kind {
            InodeKind::Directory(_) => ("-".into(), 0, "-".into(), "-".into(), "-".into()),
            InodeKind::Regular(f) => match &f.data {
                FileData::Inline(d) if d.is_empty() => {
                    (f.size.to_string(), 0, "-".into(), "-".into(), "-".into())
                }
                FileData::Inline(d) => {
                    (f.size.to_string(), 0, "-".into(), esc(d, false), "-".into())
                }
                FileData::External { digest, payload } => (
                    f.size.to_string(),
                    0,
                    payload.as_deref().map_or("-".into(), |p| esc(p, false)),
                    "-".into(),
                    digest.map_or("-".into(), |d| d.to_hex()),
                ),
            },
            InodeKind::Symlink(t) => (
                t.len().to_string(),
                0,
                esc(t, false),
                "-".into(),
                "-".into(),
            ),
            InodeKind::CharDevice(r) | InodeKind::BlockDevice(r) => {
                ("0".into(), *r, "-".into(), "-".into(), "-".into())
            }
            InodeKind::Fifo | InodeKind::Socket => {
                ("0".into(), 0, "-".into(), "-".into(), "-".into())
            }
        };
        let mut line = format!(
            "{p} {size} {:o} {} {} {} {rdev} {}.{} {payload} {content} {digest}",
            inode.mode(),
            m.nlink,
            m.uid,
            m.gid,
            m.mtime.sec,
            m.mtime.nsec
        );
        for (k, v) in &inode.xattrs {
            line.push_str(&format!(" {}={}", esc(k, true), esc(v, false)));
        }
        lines.push(line);
    });
    lines
}

/// Every file (not directory) below `dir`, relative, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}
