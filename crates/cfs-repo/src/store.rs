//! Filling a digest store (`mkcomposefs --digest-store=DIR`, docs/formats.md §10.3a phase 3): every
//! external file of a scanned tree is copied to `DIR/XX/<rest of its digest>`.
//!
//! Objects are written to a temporary file in their final directory, synced, then renamed into
//! place without replacing anything, so an interrupted run never leaves a partial object under
//! its real name. An object that already exists is left alone (deduplication; it is not
//! re-verified, as in C).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{DirBuilder, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use cfs_format::tree::{FileData, InodeKind, Tree};
use cfs_format::Digest;
use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::scan::{effective_threads, open_regular, parallel_map, ScanError};
use crate::verity;

/// What [`fill_digest_store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// Distinct objects the tree refers to.
    pub objects: usize,
    /// Objects copied into the store by this call.
    pub copied: usize,
    /// Objects that were already present and left alone.
    pub existing: usize,
    /// Bytes copied (sum of the copied objects' sizes).
    pub bytes_copied: u64,
}

/// One object to store: its digest, size and where its content is below the source root.
#[derive(Debug)]
struct StoreWork {
    digest: Digest,
    size: u64,
    /// Tree path without the leading `/`.
    rel: Vec<u8>,
}

/// Outcome of storing one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    Copied(u64),
    Existing,
}

/// Copy every external regular file of `tree` (one with a digest; inline files never go to the
/// store) from `source_root` — the directory the tree was scanned from — into `store` as
/// `store/XX/<rest>`, on `threads` threads (0 = one per CPU).
///
/// Missing directories are created with mode 0755 (umask applies); objects get mode 0644. Each
/// distinct digest is stored once, from its first file in sorted depth-first order. fs-verity is
/// enabled on new objects where the kernel supports it; failure to do so is ignored.
pub fn fill_digest_store(
    tree: &Tree,
    source_root: &Path,
    store: &Path,
    threads: usize,
) -> Result<StoreStats, ScanError> {
    let work = store_work(tree);
    let mut stats = StoreStats {
        objects: work.len(),
        ..StoreStats::default()
    };
    let store_error = |path: &Path, source: io::Error| ScanError::Store {
        path: path.to_path_buf(),
        source,
    };
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o755);
    builder.create(store).map_err(|e| store_error(store, e))?;
    // Make the fan-out directories up front, in order, so workers never race on them.
    let mut made = HashSet::new();
    for item in &work {
        let hex = item.digest.to_hex();
        let prefix = &hex[..2];
        if made.insert(prefix.to_owned()) {
            let dir = store.join(prefix);
            ensure_dir(&dir).map_err(|e| store_error(&dir, e))?;
        }
    }
    if work.is_empty() {
        return Ok(stats);
    }

    let source_fd = rustix::fs::openat(
        CWD,
        source_root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| store_error(source_root, e.into()))?;
    let results = parallel_map(effective_threads(threads), &work, |item| {
        store_one(source_fd.as_fd(), source_root, store, item)
    })?;
    for result in results {
        match result? {
            Stored::Copied(bytes) => {
                stats.copied += 1;
                stats.bytes_copied += bytes;
            }
            Stored::Existing => stats.existing += 1,
        }
    }
    Ok(stats)
}

/// `mkdir(path, 0755)`, accepting an existing directory (or a symlink to one) and reporting
/// `ENOTDIR` for anything else in the way.
fn ensure_dir(path: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if path.metadata()?.is_dir() {
                Ok(())
            } else {
                Err(Errno::NOTDIR.into())
            }
        }
        Err(e) => Err(e),
    }
}

/// External files with a digest, deduplicated by digest, in sorted DFS order.
fn store_work(tree: &Tree) -> Vec<StoreWork> {
    let mut seen = HashSet::new();
    let mut work = Vec::new();
    tree.walk(|path, entry| {
        if entry.hardlink {
            return;
        }
        let InodeKind::Regular(file) = &tree.inode(entry.inode).kind else {
            return;
        };
        let FileData::External {
            digest: Some(digest),
            ..
        } = &file.data
        else {
            return;
        };
        if seen.insert(*digest) {
            work.push(StoreWork {
                digest: *digest,
                size: file.size,
                rel: path.strip_prefix(b"/").unwrap_or(path).to_vec(),
            });
        }
    });
    work
}

fn store_one(
    source_fd: BorrowedFd<'_>,
    source_root: &Path,
    store: &Path,
    item: &StoreWork,
) -> Result<Stored, ScanError> {
    let object_path = item.digest.object_path();
    let target = store.join(&object_path);
    let at_target = |source: io::Error| ScanError::Store {
        path: target.clone(),
        source,
    };
    match rustix::fs::lstat(&target) {
        Ok(_) => return Ok(Stored::Existing),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(at_target(e.into())),
    }
    let source_path = source_root.join(OsStr::from_bytes(&item.rel));
    let mut source = open_regular(source_fd, &item.rel).map_err(|source| ScanError::Store {
        path: source_path.clone(),
        source,
    })?;
    let dir = target.parent().unwrap_or(store);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(dir)
        .map_err(at_target)?;
    copy_contents(&mut source, tmp.as_file_mut()).map_err(at_target)?;
    let copied = tmp.as_file().metadata().map_err(at_target)?.len();
    if copied != item.size {
        return Err(ScanError::Store {
            path: source_path,
            source: io::Error::other(format!(
                "file changed since the scan: {copied} bytes instead of {}",
                item.size
            )),
        });
    }
    rustix::fs::fchmod(tmp.as_file(), Mode::from_raw_mode(0o644))
        .map_err(|e| at_target(e.into()))?;
    tmp.as_file().sync_all().map_err(at_target)?;
    // fs-verity needs a read-only descriptor and no writer left, so close ours first.
    let (file, tmp_path) = tmp.into_parts();
    drop(file);
    if let Ok(ro) = File::open(&tmp_path) {
        // Failure (normally "unsupported" on kernels without fs-verity) is not an error: the
        // object is usable without it, as in C.
        let _ = verity::enable(&ro, item.digest.algorithm());
    }
    match tmp_path.persist_noclobber(&target) {
        Ok(()) => Ok(Stored::Copied(copied)),
        // Someone else stored the same object meanwhile; theirs is as good as ours.
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Ok(Stored::Existing),
        Err(e) => Err(at_target(e.error)),
    }
}

/// Copy all of `src` into the empty `dst`: reflink (`FICLONE`) where the filesystem can share
/// extents, else `copy_file_range`, else plain reads and writes. The copy need not stay sparse.
fn copy_contents(src: &mut File, dst: &mut File) -> io::Result<()> {
    if rustix::fs::ioctl_ficlone(&*dst, &*src).is_ok() {
        return Ok(());
    }
    let mut copied: u64 = 0;
    loop {
        match rustix::fs::copy_file_range(&*src, None, &*dst, None, 1 << 30) {
            Ok(0) => return Ok(()),
            Ok(n) => copied += n as u64,
            Err(Errno::INTR) => {}
            // Not possible between these files: fall back, unless we are already halfway.
            Err(
                Errno::XDEV
                | Errno::INVAL
                | Errno::NOSYS
                | Errno::OPNOTSUPP
                | Errno::PERM
                | Errno::BADF,
            ) if copied == 0 => break,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
    }
}

/// Where `digest`'s object lives in a digest store at `store`.
pub fn object_path_in(store: &Path, digest: &Digest) -> PathBuf {
    store.join(digest.object_path())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use cfs_format::fsverity::{self, Algorithm};

    use super::*;
    use crate::scan::{scan_directory, ScanOptions};
    use crate::testutil::{files_under, write_file};

    fn source() -> (tempfile::TempDir, Vec<u8>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n);
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let other = vec![b'0'; 65];
        std::fs::create_dir(p("sub")).expect("mkdir");
        write_file(&p("a"), &big, 0o600);
        write_file(&p("sub/copy"), &big, 0o644);
        write_file(&p("s65"), &other, 0o644);
        write_file(&p("inline"), b"small", 0o644);
        write_file(&p("empty"), b"", 0o644);
        (dir, big, other)
    }

    #[test]
    fn objects_are_stored_once_with_mode_0644() {
        let (src, big, other) = source();
        let tree = scan_directory(src.path(), &ScanOptions::mkcomposefs()).expect("scan");
        let store_dir = tempfile::tempdir().expect("tempdir");
        let store = store_dir.path().join("nested/store");
        let stats = fill_digest_store(&tree, src.path(), &store, 3).expect("fill");
        assert_eq!(
            stats,
            StoreStats {
                objects: 2,
                copied: 2,
                existing: 0,
                bytes_copied: big.len() as u64 + 65,
            }
        );
        let d_big = fsverity::digest(Algorithm::Sha256, &big);
        let d_other = fsverity::digest(Algorithm::Sha256, &other);
        let mut want = vec![d_big.object_path(), d_other.object_path()];
        want.sort();
        assert_eq!(files_under(&store), want);
        assert_eq!(
            d_other.object_path(),
            "47/ddf8476049577910de2a85a85bc861e6c6994fd9cf5aaf45d5611b4c3799c1"
        );
        for (d, content) in [(d_big, &big), (d_other, &other)] {
            let path = object_path_in(&store, &d);
            assert_eq!(std::fs::read(&path).expect("read object"), *content);
            let mode = path.metadata().expect("stat").permissions().mode();
            assert_eq!(mode & 0o7777, 0o644, "{}", path.display());
            let fan_out = path.parent().expect("parent").metadata().expect("stat");
            assert!(fan_out.is_dir());
        }

        // A second run finds everything in place and copies nothing.
        let again = fill_digest_store(&tree, src.path(), &store, 1).expect("fill");
        assert_eq!(
            again,
            StoreStats {
                objects: 2,
                copied: 0,
                existing: 2,
                bytes_copied: 0,
            }
        );
        // Existing objects are not rewritten (not even re-verified).
        let path = object_path_in(&store, &d_other);
        std::fs::write(&path, b"tampered").expect("tamper");
        fill_digest_store(&tree, src.path(), &store, 1).expect("fill");
        assert_eq!(std::fs::read(&path).expect("read"), b"tampered");
    }

    #[test]
    fn hardlinked_sources_are_stored_once() {
        let (src, big, _) = source();
        std::fs::hard_link(src.path().join("a"), src.path().join("z")).expect("link");
        let tree = scan_directory(
            src.path(),
            &ScanOptions {
                hardlinks: true,
                ..ScanOptions::mkcomposefs()
            },
        )
        .expect("scan");
        let store = tempfile::tempdir().expect("tempdir");
        let stats = fill_digest_store(&tree, src.path(), store.path(), 2).expect("fill");
        assert_eq!(stats.objects, 2);
        assert_eq!(stats.bytes_copied, big.len() as u64 + 65);
    }

    #[test]
    fn a_tree_without_external_files_only_creates_the_store() {
        let src = tempfile::tempdir().expect("tempdir");
        write_file(&src.path().join("f"), b"tiny", 0o644);
        let tree = scan_directory(src.path(), &ScanOptions::mkcomposefs()).expect("scan");
        let out = tempfile::tempdir().expect("tempdir");
        let store = out.path().join("s");
        let stats = fill_digest_store(&tree, src.path(), &store, 1).expect("fill");
        assert_eq!(stats, StoreStats::default());
        assert!(store.is_dir());
        assert!(files_under(&store).is_empty());
    }

    #[test]
    fn a_file_in_place_of_a_fan_out_directory_fails() {
        let (src, _, _) = source();
        let tree = scan_directory(src.path(), &ScanOptions::mkcomposefs()).expect("scan");
        let store = tempfile::tempdir().expect("tempdir");
        std::fs::write(store.path().join("47"), b"").expect("write");
        let err = fill_digest_store(&tree, src.path(), store.path(), 1).expect_err("blocked");
        let ScanError::Store { path, .. } = &err else {
            panic!("unexpected {err}");
        };
        assert_eq!(path, &store.path().join("47"));
        assert_eq!(
            err.to_string(),
            format!(
                "cannot fill store {}: Not a directory (os error 20)",
                path.display()
            )
        );
    }

    #[test]
    fn a_source_changed_after_the_scan_is_refused_and_leaves_nothing_behind() {
        let (src, _, _) = source();
        let tree = scan_directory(src.path(), &ScanOptions::mkcomposefs()).expect("scan");
        std::fs::write(src.path().join("s65"), b"shorter now").expect("rewrite");
        let store = tempfile::tempdir().expect("tempdir");
        let err = fill_digest_store(&tree, src.path(), store.path(), 1).expect_err("changed");
        assert!(err.to_string().contains("changed since the scan"), "{err}");
        let leftovers: Vec<String> = files_under(store.path())
            .into_iter()
            .filter(|f| f.starts_with("47/"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn a_missing_source_is_reported_with_its_path() {
        let (src, _, _) = source();
        let tree = scan_directory(src.path(), &ScanOptions::mkcomposefs()).expect("scan");
        std::fs::remove_file(src.path().join("s65")).expect("rm");
        let store = tempfile::tempdir().expect("tempdir");
        let err = fill_digest_store(&tree, src.path(), store.path(), 1).expect_err("missing");
        let ScanError::Store { path, source } = &err else {
            panic!("unexpected {err}");
        };
        assert_eq!(path, &src.path().join("s65"));
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn copy_contents_copies_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i: u32| (i % 253) as u8).collect();
        let src_path = dir.path().join("src");
        std::fs::write(&src_path, &data).expect("write");
        let mut src = File::open(&src_path).expect("open");
        let mut dst = tempfile::tempfile_in(dir.path()).expect("tmp");
        copy_contents(&mut src, &mut dst).expect("copy");
        let mut back = Vec::new();
        use std::io::Seek;
        dst.rewind().expect("rewind");
        dst.read_to_end(&mut back).expect("read");
        assert_eq!(back, data);
    }
}
