//! Small `*at()` helpers the repository is built from: atomic files (O_TMPFILE + `linkat`, or a
//! named temporary + rename), atomic symlink replacement, relative link targets and directory
//! listings. Everything works relative to directory descriptors, never the process's cwd.

use std::collections::hash_map::RandomState;
use std::ffi::CStr;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, CWD};
use rustix::io::Errno;

/// Prefix of named temporary objects (the O_TMPFILE fallback); GC removes stale ones.
pub(crate) const TMP_OBJECT_PREFIX: &str = ".tmp-object-";
/// Prefix of temporary symlinks and other temporaries renamed into place.
pub(crate) const TMP_LINK_PREFIX: &str = ".tmp-link-";

/// 12 random characters from `[a-zA-Z0-9]`.
pub(crate) fn random_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let mut bits = h.finish();
    let mut h2 = RandomState::new().build_hasher();
    h2.write_u64(bits);
    let mut more = h2.finish();
    (0..12)
        .map(|i| {
            let src = if i < 6 { &mut bits } else { &mut more };
            let c = CHARS[(*src % CHARS.len() as u64) as usize];
            *src /= CHARS.len() as u64;
            c as char
        })
        .collect()
}

/// `mkdirat(dir, name, 0755)`, accepting an existing directory.
pub(crate) fn ensure_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
        Ok(()) => Ok(()),
        Err(Errno::EXIST) => {
            let st = rustix::fs::statat(dir, name, AtFlags::empty())?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                Ok(())
            } else {
                Err(Errno::NOTDIR.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Create every directory of the relative path `rel` (all components) below `dir`.
pub(crate) fn ensure_dirs(dir: BorrowedFd<'_>, rel: &str) -> io::Result<()> {
    let mut prefix = String::new();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(comp);
        ensure_dir(dir, &prefix)?;
    }
    Ok(())
}

/// Open a directory below `dir` (no final symlink followed).
pub(crate) fn open_dir(dir: BorrowedFd<'_>, rel: &str) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// The `/proc/self/fd/N` path of a descriptor.
pub(crate) fn proc_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// A file being written that has no name yet (or only a temporary one).
#[derive(Debug)]
pub(crate) enum TmpFile {
    /// An `O_TMPFILE` inode: invisible until linked.
    Anonymous(OwnedFd),
    /// A named temporary in the same directory (`.tmp-object-XXXXXXXXXXXX`).
    Named {
        /// The descriptor.
        fd: OwnedFd,
        /// Its name in the directory it was created in.
        name: String,
    },
}

impl TmpFile {
    /// The descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            TmpFile::Anonymous(fd) | TmpFile::Named { fd, .. } => fd.as_fd(),
        }
    }

    /// Replace the descriptor (after reopening read-only).
    pub(crate) fn set_fd(&mut self, new: OwnedFd) {
        match self {
            TmpFile::Anonymous(fd) | TmpFile::Named { fd, .. } => *fd = new,
        }
    }

    /// Remove a named temporary; an anonymous one vanishes when dropped.
    pub(crate) fn discard(self, dir: BorrowedFd<'_>) {
        if let TmpFile::Named { name, .. } = self {
            // Nothing better to do on failure: the file is garbage GC removes.
            let _ = rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty());
        }
    }
}

/// Create a writable temporary file (mode 0644) in `dir`: `O_TMPFILE` unless `no_tmpfile`
/// is set or the filesystem refuses it (then `no_tmpfile` is set for next time), else a named
/// `.tmp-object-*` file.
pub(crate) fn create_tmpfile(dir: BorrowedFd<'_>, no_tmpfile: &AtomicBool) -> io::Result<TmpFile> {
    let mode = Mode::from_raw_mode(0o644);
    if !no_tmpfile.load(Ordering::Relaxed) {
        match rustix::fs::openat(
            dir,
            ".",
            OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) => {
                rustix::fs::fchmod(&fd, mode)?;
                return Ok(TmpFile::Anonymous(fd));
            }
            // The filesystem (or kernel) has no O_TMPFILE.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL | Errno::NOSYS) => {
                no_tmpfile.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(e.into()),
        }
    }
    loop {
        let name = format!("{TMP_OBJECT_PREFIX}{}", random_suffix());
        match rustix::fs::openat(
            dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) => {
                rustix::fs::fchmod(&fd, mode)?;
                return Ok(TmpFile::Named { fd, name });
            }
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reopen `fd` read-only through `/proc/self/fd` (fs-verity needs a read-only descriptor and no
/// writer left).
pub(crate) fn reopen_readonly(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        proc_path(fd).as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Give the anonymous file behind `fd` the name `dst_dir/name`: `linkat` of its
/// `/proc/self/fd` path, or `AT_EMPTY_PATH` when `/proc` is not mounted. `EEXIST` is returned
/// as is.
pub(crate) fn link_anonymous(
    fd: BorrowedFd<'_>,
    dst_dir: BorrowedFd<'_>,
    name: &str,
) -> rustix::io::Result<()> {
    match rustix::fs::linkat(
        CWD,
        proc_path(fd).as_str(),
        dst_dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Err(Errno::NOENT)
            if rustix::fs::statat(CWD, "/proc/self/fd", AtFlags::empty()).is_err() =>
        {
            rustix::fs::linkat(fd, "", dst_dir, name, AtFlags::EMPTY_PATH)
        }
        r => r,
    }
}

/// Move a named temporary into place without replacing anything: `renameat2(RENAME_NOREPLACE)`,
/// or link + unlink where the filesystem lacks it. `EEXIST` is returned as is (the temporary is
/// left for the caller to discard).
pub(crate) fn rename_noreplace(
    src_dir: BorrowedFd<'_>,
    src: &str,
    dst_dir: BorrowedFd<'_>,
    dst: &str,
) -> rustix::io::Result<()> {
    match rustix::fs::renameat_with(src_dir, src, dst_dir, dst, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            rustix::fs::linkat(src_dir, src, dst_dir, dst, AtFlags::empty())?;
            let _ = rustix::fs::unlinkat(src_dir, src, AtFlags::empty());
            Ok(())
        }
        r => r,
    }
}

/// Write `data` to a new file `dir/name` atomically: it appears complete or not at all. Fails
/// with `EEXIST` if the name exists. `prepare` runs on a read-only descriptor of the complete
/// file before it is named (to enable fs-verity); its error aborts and leaves nothing behind.
pub(crate) fn write_new_file<E: From<io::Error>>(
    dir: BorrowedFd<'_>,
    name: &str,
    data: &[u8],
    prepare: impl FnOnce(BorrowedFd<'_>) -> Result<(), E>,
) -> Result<(), E> {
    let no_tmpfile = AtomicBool::new(false);
    let mut tmp = create_tmpfile(dir, &no_tmpfile)?;
    let written = write_all_fd(tmp.fd(), data)
        .and_then(|()| rustix::fs::fsync(tmp.fd()).map_err(io::Error::from));
    let reopened = written.and_then(|()| reopen_readonly(tmp.fd()));
    let ro = match reopened {
        Ok(ro) => ro,
        Err(e) => {
            tmp.discard(dir);
            return Err(e.into());
        }
    };
    tmp.set_fd(ro);
    if let Err(e) = prepare(tmp.fd()) {
        tmp.discard(dir);
        return Err(e);
    }
    let linked = match &tmp {
        TmpFile::Anonymous(fd) => link_anonymous(fd.as_fd(), dir, name),
        TmpFile::Named { name: tmp_name, .. } => rename_noreplace(dir, tmp_name, dir, name),
    };
    if let Err(e) = linked {
        tmp.discard(dir);
        return Err(io::Error::from(e).into());
    }
    Ok(())
}

/// `write(2)` all of `data` at the current offset of `fd`.
pub(crate) fn write_all_fd(fd: BorrowedFd<'_>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match rustix::io::write(fd, data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Read all of `fd` from offset 0, refusing more than `limit` bytes.
pub(crate) fn read_fd(fd: BorrowedFd<'_>, limit: u64) -> io::Result<Vec<u8>> {
    let size = rustix::fs::fstat(fd)?.st_size as u64;
    if size > limit {
        return Err(io::Error::other(format!(
            "file of {size} bytes is larger than the limit of {limit}"
        )));
    }
    let mut out = vec![0u8; size as usize];
    let mut filled = 0usize;
    while filled < out.len() {
        match rustix::io::pread(fd, &mut out[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.truncate(filled);
    Ok(out)
}

/// The target of a symlink from `link` (a repository-relative path) to `target` (also
/// repository-relative): their common leading directories are stripped and one `..` is added per
/// remaining directory of the link (docs/formats.md §4).
pub(crate) fn relative_target(link: &str, target: &str) -> String {
    let link_dirs: Vec<&str> = {
        let mut v: Vec<&str> = link.split('/').collect();
        v.pop();
        v
    };
    let target_parts: Vec<&str> = target.split('/').collect();
    let target_dirs = &target_parts[..target_parts.len().saturating_sub(1)];
    let common = link_dirs
        .iter()
        .zip(target_dirs)
        .take_while(|(a, b)| a == b)
        .count();
    let mut out = "../".repeat(link_dirs.len() - common);
    out.push_str(&target_parts[common..].join("/"));
    out
}

/// Where a symlink at repository-relative `link` with target `target` points, as a normalized
/// repository-relative path; `None` for absolute targets or ones that leave the repository.
pub(crate) fn resolve_relative(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// `readlinkat` as a UTF-8 string; `Ok(None)` when `rel` is not a symlink.
pub(crate) fn read_link(dir: BorrowedFd<'_>, rel: &str) -> io::Result<Option<String>> {
    match rustix::fs::readlinkat(dir, rel, Vec::new()) {
        Ok(target) => target
            .into_string()
            .map(Some)
            .map_err(|_| io::Error::other("symlink target is not UTF-8")),
        Err(Errno::INVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Make `link` (repository-relative) a symlink to `target` (repository-relative), computed as
/// a relative link. Parent directories are created; an existing link is replaced atomically
/// (new link under a temporary name, then `rename`), and left alone if it already points there.
pub(crate) fn symlink_replace(root: BorrowedFd<'_>, link: &str, target: &str) -> io::Result<()> {
    let rel_target = relative_target(link, target);
    let (parent, _) = link.rsplit_once('/').unwrap_or(("", link));
    if !parent.is_empty() {
        ensure_dirs(root, parent)?;
    }
    match read_link(root, link) {
        Ok(Some(existing)) if existing == rel_target => return Ok(()),
        _ => {}
    }
    let tmp = if parent.is_empty() {
        format!("{TMP_LINK_PREFIX}{}", random_suffix())
    } else {
        format!("{parent}/{TMP_LINK_PREFIX}{}", random_suffix())
    };
    rustix::fs::symlinkat(rel_target.as_str(), root, tmp.as_str())?;
    if let Err(e) = rustix::fs::renameat(root, tmp.as_str(), root, link) {
        let _ = rustix::fs::unlinkat(root, tmp.as_str(), AtFlags::empty());
        return Err(e.into());
    }
    Ok(())
}

/// One directory entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Its name (lossy UTF-8 for the rare non-UTF-8 name; see `utf8`).
    pub name: String,
    /// Whether the name was valid UTF-8 (only those can be acted upon).
    pub utf8: bool,
    /// File type, without following symlinks.
    pub kind: FileType,
}

/// The entries of the directory `rel` below `dir` (without `.` and `..`); `Ok(empty)` when it
/// does not exist.
pub(crate) fn list_dir(dir: BorrowedFd<'_>, rel: &str) -> io::Result<Vec<Entry>> {
    let fd = match open_dir(dir, rel) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(&fd)? {
        let entry = entry?;
        let raw: &CStr = entry.file_name();
        let bytes = raw.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let (name, utf8) = match std::str::from_utf8(bytes) {
            Ok(s) => (s.to_owned(), true),
            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), false),
        };
        let mut kind = entry.file_type();
        if kind == FileType::Unknown {
            kind = FileType::from_raw_mode(
                rustix::fs::statat(&fd, raw, AtFlags::SYMLINK_NOFOLLOW)?.st_mode,
            );
        }
        out.push(Entry { name, utf8, kind });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Every symlink below the directory `rel` (recursively), as repository-relative paths,
/// sorted. Temporaries (`.tmp-link-*`) are skipped.
pub(crate) fn walk_symlinks(dir: BorrowedFd<'_>, rel: &str) -> io::Result<Vec<String>> {
    walk(dir, rel, false)
}

/// Leftover temporary links (`.tmp-link-*`) below the directory `rel`, recursively, sorted.
pub(crate) fn walk_temp_links(dir: BorrowedFd<'_>, rel: &str) -> io::Result<Vec<String>> {
    walk(dir, rel, true)
}

fn walk(dir: BorrowedFd<'_>, rel: &str, temps: bool) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![rel.to_owned()];
    while let Some(d) = stack.pop() {
        for e in list_dir(dir, &d)? {
            if !e.utf8 {
                continue;
            }
            let path = format!("{d}/{}", e.name);
            match e.kind {
                FileType::Symlink if e.name.starts_with(TMP_LINK_PREFIX) == temps => out.push(path),
                FileType::Directory => stack.push(path),
                _ => {}
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_targets_follow_the_spec() {
        assert_eq!(
            relative_target("images/abcd", "objects/ab/cd"),
            "../objects/ab/cd"
        );
        assert_eq!(relative_target("images/refs/x", "images/abcd"), "../abcd");
        assert_eq!(
            relative_target("images/refs/a/b/c", "images/abcd"),
            "../../../abcd"
        );
        assert_eq!(
            relative_target("streams/refs/oci/tag", "streams/oci-manifest-sha256:00"),
            "../../oci-manifest-sha256:00"
        );
        assert_eq!(relative_target("a", "b/c"), "b/c");
    }

    #[test]
    fn resolving_inverts_relative_targets() {
        for (link, target) in [
            ("images/abcd", "objects/ab/cd"),
            ("images/refs/a/b/c", "images/abcd"),
            ("streams/refs/oci/tag", "streams/x"),
        ] {
            let rel = relative_target(link, target);
            assert_eq!(resolve_relative(link, &rel).as_deref(), Some(target));
        }
        assert_eq!(resolve_relative("images/x", "/abs"), None);
        assert_eq!(resolve_relative("images/x", "../../escape"), None);
    }

    #[test]
    fn random_suffixes_differ() {
        let a = random_suffix();
        let b = random_suffix();
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn symlinks_are_replaced_atomically_and_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = open_dir(CWD, dir.path().to_str().expect("utf8")).expect("open");
        symlink_replace(root.as_fd(), "images/refs/a/b", "images/one").expect("link");
        assert_eq!(
            read_link(root.as_fd(), "images/refs/a/b").expect("read"),
            Some("../../one".into())
        );
        symlink_replace(root.as_fd(), "images/refs/a/b", "images/two").expect("relink");
        assert_eq!(
            read_link(root.as_fd(), "images/refs/a/b").expect("read"),
            Some("../../two".into())
        );
        symlink_replace(root.as_fd(), "images/refs/c", "images/two").expect("link");
        assert_eq!(
            walk_symlinks(root.as_fd(), "images/refs").expect("walk"),
            ["images/refs/a/b", "images/refs/c"]
        );
        let names: Vec<String> = list_dir(root.as_fd(), "images/refs/a")
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["b"], "no temporaries left");
        assert!(list_dir(root.as_fd(), "missing").expect("list").is_empty());
    }

    #[test]
    fn new_files_appear_complete_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = open_dir(CWD, dir.path().to_str().expect("utf8")).expect("open");
        write_new_file::<io::Error>(root.as_fd(), "f", b"data", |_| Ok(())).expect("write");
        assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"data");
        let again = write_new_file::<io::Error>(root.as_fd(), "f", b"other", |_| Ok(()));
        assert_eq!(
            again.expect_err("exists").raw_os_error(),
            Some(Errno::EXIST.raw_os_error())
        );
        let failed = write_new_file(root.as_fd(), "g", b"x", |_| Err(io::Error::other("no")));
        assert!(failed.is_err());
        let names: Vec<String> = list_dir(root.as_fd(), ".")
            .expect("list")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["f"]);
    }

    #[test]
    fn named_temporaries_work_when_tmpfile_is_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = open_dir(CWD, dir.path().to_str().expect("utf8")).expect("open");
        let off = AtomicBool::new(true);
        let tmp = create_tmpfile(root.as_fd(), &off).expect("tmp");
        let TmpFile::Named { ref name, .. } = tmp else {
            panic!("expected a named temporary");
        };
        assert!(name.starts_with(TMP_OBJECT_PREFIX));
        write_all_fd(tmp.fd(), b"abc").expect("write");
        let name = name.clone();
        rename_noreplace(root.as_fd(), &name, root.as_fd(), "final").expect("rename");
        assert_eq!(
            std::fs::read(dir.path().join("final")).expect("read"),
            b"abc"
        );
    }
}
