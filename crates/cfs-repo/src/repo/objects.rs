//! Objects: `objects/XX/<rest>`, named by the fs-verity digest of their content.
//!
//! A new object is written to an `O_TMPFILE` in `objects/` (or, where the filesystem lacks it,
//! a named `.tmp-object-*` file), sealed with fs-verity when the repository is secure (the
//! kernel's measurement must equal the digest computed while writing), then linked into place.
//! An existing object of the right size is never rewritten (deduplication); one of the wrong
//! size (truncated by a crash of some other tool) is replaced. There is no per-object fsync:
//! callers make objects durable with [`Repository::sync`] before naming them.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cfs_format::fsverity::{self, FsVerityHasher};
use cfs_format::{Algorithm, Digest};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fsutil::{self, TmpFile, TMP_OBJECT_PREFIX};
use super::{RepoError, Repository};
use crate::scan::ContentSink;
use crate::verity::{self, EnableError, MeasureError};

/// Largest read (and hashing batch) while importing.
const IMPORT_CHUNK: usize = 4 << 20;

thread_local! {
    /// A reusable import buffer per thread (taken out while in use).
    static IMPORT_BUFFER: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
}

/// Is an object already in place?
enum Presence {
    Absent,
    Present,
    /// Something of another size (or type) has the name: replace it.
    Wrong,
}

/// An entry found below `objects/`.
#[derive(Debug, Clone)]
pub(crate) struct ListedObject {
    /// Its digest (from the name).
    pub digest: Digest,
    /// `objects/XX/<rest>`.
    pub rel: String,
}

/// Everything below `objects/`.
#[derive(Debug, Default)]
pub(crate) struct ObjectListing {
    /// Well-named regular files.
    pub objects: Vec<ListedObject>,
    /// Leftover temporaries (`.tmp-object-*`, `.tmp-link-*`), repository-relative.
    pub temps: Vec<String>,
    /// Anything else (bad names, other file types), repository-relative.
    pub strays: Vec<String>,
}

/// `objects/XX/<rest>` of `digest`.
pub(crate) fn object_rel(digest: &Digest) -> String {
    format!("objects/{}", digest.object_path())
}

/// fs-verity digest of the whole content of `fd` (read with `pread`, offset untouched).
pub(crate) fn digest_fd(fd: BorrowedFd<'_>, algorithm: Algorithm) -> io::Result<(Digest, u64)> {
    let size = rustix::fs::fstat(fd)?.st_size as u64;
    let mut buf = vec![0u8; (size as usize).clamp(1, IMPORT_CHUNK)];
    let mut hasher = FsVerityHasher::new(algorithm);
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match rustix::io::pread(fd, &mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update(&buf[..filled]);
        offset += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok((hasher.finish(), offset))
}

impl Repository {
    /// `objects/`, created if needed (only when writable).
    pub(crate) fn objects_dir(&self) -> Result<BorrowedFd<'_>, RepoError> {
        if let Some(fd) = self.objects.get() {
            return Ok(fd.as_fd());
        }
        if self.read_only.is_none() {
            fsutil::ensure_dir(self.dir(), "objects").map_err(|e| self.io_err("objects", e))?;
        }
        let fd = fsutil::open_dir(self.dir(), "objects").map_err(|e| self.io_err("objects", e))?;
        // Another thread may have won; either descriptor is fine.
        let _ = self.objects.set(fd);
        let fd = self
            .objects
            .get()
            .expect("the OnceLock was set just above (by us or another thread)");
        Ok(fd.as_fd())
    }

    /// Where the object `digest` lives (whether or not it exists).
    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.full(&object_rel(digest))
    }

    /// Does the object `digest` exist?
    pub fn has_object(&self, digest: &Digest) -> Result<bool, RepoError> {
        self.check_digest(digest, "has_object")?;
        let rel = object_rel(digest);
        match rustix::fs::statat(self.dir(), rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(FileType::from_raw_mode(st.st_mode) == FileType::RegularFile),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io_err(&rel, e)),
        }
    }

    /// Open the object `digest` for reading ([`RepoError::ObjectNotFound`] if it is missing).
    /// Its content is not verified here.
    pub fn open_object(&self, digest: &Digest) -> Result<File, RepoError> {
        self.check_digest(digest, "open_object")?;
        let rel = object_rel(digest);
        match rustix::fs::openat(
            self.dir(),
            rel.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Errno::NOENT) => Err(RepoError::ObjectNotFound { digest: *digest }),
            Err(e) => Err(self.io_err(&rel, e)),
        }
    }

    /// The whole content of the object `digest` (not verified).
    pub fn read_object(&self, digest: &Digest) -> Result<Vec<u8>, RepoError> {
        let file = self.open_object(digest)?;
        fsutil::read_fd(file.as_fd(), u64::MAX).map_err(|e| self.io_err(&object_rel(digest), e))
    }

    /// Store `data` as an object. Returns its digest and whether it was newly written (`false`:
    /// an object of that digest and size was already there and was left alone).
    pub fn ensure_object(&self, data: &[u8]) -> Result<(Digest, bool), RepoError> {
        self.ensure_writable()?;
        let digest = fsverity::digest(self.algorithm(), data);
        let fresh = self.store_bytes(data, digest)?;
        Ok((digest, fresh))
    }

    pub(super) fn store_bytes(&self, data: &[u8], digest: Digest) -> Result<bool, RepoError> {
        let objects = self.objects_dir()?;
        let presence = self.presence(&digest, data.len() as u64)?;
        if let Presence::Present = presence {
            return Ok(false);
        }
        let tmp = fsutil::create_tmpfile(objects, &self.no_tmpfile)
            .map_err(|e| self.io_err("objects", e))?;
        if let Err(e) = fsutil::write_all_fd(tmp.fd(), data) {
            tmp.discard(objects);
            return Err(self.io_err("objects", e));
        }
        self.commit(tmp, &digest, presence)
    }

    /// Copy `src` (from its current offset to EOF) into the repository as an object, hashing
    /// while copying so it is read once. `size_hint` (the expected size, if known) only sizes
    /// the buffer. Returns the digest and whether the object was newly written.
    pub fn import_file(
        &self,
        src: &File,
        size_hint: Option<u64>,
    ) -> Result<(Digest, bool), RepoError> {
        let mut src = src;
        let (digest, fresh, _) = self.import(&mut src, size_hint)?;
        Ok((digest, fresh))
    }

    /// [`import_file`](Self::import_file) for any reader (a tar entry, a pipe). Returns the
    /// digest, whether the object was newly written and its size.
    pub fn import_reader(
        &self,
        src: &mut dyn Read,
        size_hint: Option<u64>,
    ) -> Result<(Digest, bool, u64), RepoError> {
        self.import(src, size_hint)
    }

    fn import(
        &self,
        src: &mut dyn Read,
        size_hint: Option<u64>,
    ) -> Result<(Digest, bool, u64), RepoError> {
        self.ensure_writable()?;
        // Reuse this thread's buffer: imports of many small files should not allocate (and
        // zero) a fresh one each time.
        let mut buf = IMPORT_BUFFER.with(Cell::take).unwrap_or_default();
        let result = self.import_with(src, size_hint, &mut buf);
        IMPORT_BUFFER.with(|b| b.set(Some(buf)));
        result
    }

    fn import_with(
        &self,
        mut src: &mut dyn Read,
        size_hint: Option<u64>,
        buf: &mut Vec<u8>,
    ) -> Result<(Digest, bool, u64), RepoError> {
        let first = size_hint.map_or(1 << 20, |s| {
            usize::try_from(s.saturating_add(1))
                .map_or(IMPORT_CHUNK, |s| s.clamp(4096, IMPORT_CHUNK))
        });
        buf.resize(first, 0);
        let mut n =
            crate::read_full(&mut src, buf).map_err(|source| RepoError::Import { source })?;
        if n < buf.len() {
            // All of it fits in memory: hash first, so a duplicate is never written at all.
            let data = &buf[..n];
            let (digest, tree) = self.digest_keeping_tree(data);
            let fresh = self.store_keeping_tree(data, digest, tree.as_deref())?;
            return Ok((digest, fresh, n as u64));
        }
        let objects = self.objects_dir()?;
        let tmp = fsutil::create_tmpfile(objects, &self.no_tmpfile)
            .map_err(|e| self.io_err("objects", e))?;
        let mut hasher = FsVerityHasher::new(self.algorithm());
        if size_hint.is_none_or(Self::wants_tree) {
            hasher.keep_leaves();
        }
        // `buf[..n]` holds the first `first` bytes; continue with full-size chunks.
        buf.resize(IMPORT_CHUNK.max(first), 0);
        let copied = loop {
            hasher.update(&buf[..n]);
            if let Err(e) = fsutil::write_all_fd(tmp.fd(), &buf[..n]) {
                break Err(self.io_err("objects", e));
            }
            match crate::read_full(&mut src, buf) {
                Ok(0) => break Ok(()),
                Ok(got) => n = got,
                Err(source) => break Err(RepoError::Import { source }),
            }
        };
        if let Err(e) = copied {
            tmp.discard(objects);
            return Err(e);
        }
        let size = hasher.size();
        let (digest, tree) = hasher.finish_with_tree();
        let presence = match self.presence(&digest, size) {
            Ok(Presence::Present) => {
                tmp.discard(objects);
                return Ok((digest, false, size));
            }
            Ok(p) => p,
            Err(e) => {
                tmp.discard(objects);
                return Err(e);
            }
        };
        let fresh = self.commit(tmp, &digest, presence)?;
        if let (true, Some(tree)) = (fresh && Self::wants_tree(size), tree) {
            self.save_verity_tree(&digest, &tree);
        }
        Ok((digest, fresh, size))
    }

    /// Is `digest` present with `size` bytes?
    fn presence(&self, digest: &Digest, size: u64) -> Result<Presence, RepoError> {
        let rel = object_rel(digest);
        match rustix::fs::statat(self.dir(), rel.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && st.st_size as u64 == size =>
            {
                Ok(Presence::Present)
            }
            Ok(_) => Ok(Presence::Wrong),
            Err(Errno::NOENT) => Ok(Presence::Absent),
            Err(e) => Err(self.io_err(&rel, e)),
        }
    }

    /// Seal the complete temporary `tmp` (content `digest`, found `presence` at its name) and
    /// link it to its name. Returns whether it was newly named.
    fn commit(
        &self,
        mut tmp: TmpFile,
        digest: &Digest,
        presence: Presence,
    ) -> Result<bool, RepoError> {
        let objects = self.objects_dir()?;
        let hex = digest.to_hex();
        let (fan_out, _) = hex.split_at(2);
        let name = digest.object_path();
        let rel = object_rel(digest);
        let failed = |tmp: TmpFile, e: RepoError| {
            tmp.discard(objects);
            Err(e)
        };
        if let Err(e) = self.seal(&mut tmp, digest) {
            return failed(tmp, e);
        }
        if let Presence::Wrong = presence {
            // Replace the broken object: name ours temporarily, then rename over it.
            let temp_name = format!("{fan_out}/{TMP_OBJECT_PREFIX}{}", fsutil::random_suffix());
            let placed = match &tmp {
                TmpFile::Anonymous(fd) => fsutil::link_anonymous(fd.as_fd(), objects, &temp_name),
                TmpFile::Named { name: t, .. } => {
                    rustix::fs::renameat(objects, t.as_str(), objects, temp_name.as_str())
                }
            }
            .and_then(|()| {
                rustix::fs::renameat(objects, temp_name.as_str(), objects, name.as_str())
            });
            if let Err(e) = placed {
                let _ = rustix::fs::unlinkat(objects, temp_name.as_str(), AtFlags::empty());
                return failed(tmp, self.io_err(&rel, e));
            }
            return Ok(true);
        }
        let link = |tmp: &TmpFile| match tmp {
            TmpFile::Anonymous(fd) => fsutil::link_anonymous(fd.as_fd(), objects, &name),
            TmpFile::Named { name: t, .. } => fsutil::rename_noreplace(objects, t, objects, &name),
        };
        let mut linked = link(&tmp);
        if linked == Err(Errno::NOENT) {
            // The fan-out directory does not exist yet (checked only now: it usually does).
            if let Err(e) = fsutil::ensure_dir(objects, fan_out) {
                return failed(tmp, self.io_err(&format!("objects/{fan_out}"), e));
            }
            linked = link(&tmp);
        }
        match linked {
            Ok(()) => Ok(true),
            // Someone else stored the same object meanwhile.
            Err(Errno::EXIST) => {
                tmp.discard(objects);
                Ok(false)
            }
            Err(e) => failed(tmp, self.io_err(&rel, e)),
        }
    }

    /// Enable fs-verity on the complete temporary and check the kernel's digest. Secure
    /// repositories require it; insecure ones try once and stop trying when the filesystem
    /// says it has no fs-verity.
    fn seal(&self, tmp: &mut TmpFile, digest: &Digest) -> Result<(), RepoError> {
        let secure = !self.insecure;
        if !secure && self.verity_unsupported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let path = self.object_path(digest);
        let ro: OwnedFd = match fsutil::reopen_readonly(tmp.fd()) {
            Ok(fd) => fd,
            Err(_) if !secure => return Ok(()),
            Err(e) => return Err(RepoError::io(path, e)),
        };
        // Dropping the writable descriptor: fs-verity refuses files open for writing.
        tmp.set_fd(ro);
        let mut busy_retries = 0;
        loop {
            match verity::enable(tmp.fd(), self.algorithm()) {
                Ok(()) | Err(EnableError::AlreadyEnabled) => break,
                Err(EnableError::NotSupported) if !secure => {
                    self.verity_unsupported.store(true, Ordering::Relaxed);
                    return Ok(());
                }
                Err(EnableError::NotSupported) => {
                    return Err(RepoError::VerityUnsupported { path })
                }
                Err(EnableError::FileOpenForWrite) if busy_retries < 3 => {
                    busy_retries += 1;
                    std::thread::sleep(Duration::from_millis(10 << busy_retries));
                }
                Err(_) if !secure => return Ok(()),
                Err(source) => return Err(RepoError::EnableVerity { path, source }),
            }
        }
        match verity::measure(tmp.fd()) {
            Ok(measured) if measured == *digest => Ok(()),
            Ok(measured) => Err(RepoError::DigestMismatch {
                path,
                expected: Box::new(*digest),
                actual: Box::new(measured),
            }),
            Err(_) if !secure => Ok(()),
            Err(source) => Err(RepoError::MeasureVerity { path, source }),
        }
    }

    /// Check that the open file `file` (shown as `path`) has the digest `expected`: by the
    /// kernel's measurement when it has fs-verity, else (insecure repositories only) by hashing
    /// its content in userspace.
    pub(crate) fn verify_file(
        &self,
        file: &File,
        path: PathBuf,
        expected: &Digest,
    ) -> Result<(), RepoError> {
        let actual = match verity::measure(file) {
            Ok(measured) => measured,
            Err(MeasureError::NotEnabled | MeasureError::NotSupported) if self.insecure => {
                digest_fd(file.as_fd(), self.algorithm())
                    .map_err(|e| RepoError::io(&path, e))?
                    .0
            }
            Err(MeasureError::NotEnabled | MeasureError::NotSupported) => {
                return Err(RepoError::VerityMissing { path })
            }
            Err(source) => return Err(RepoError::MeasureVerity { path, source }),
        };
        if actual == *expected {
            Ok(())
        } else {
            Err(RepoError::DigestMismatch {
                path,
                expected: Box::new(*expected),
                actual: Box::new(actual),
            })
        }
    }

    /// Everything below `objects/`, sorted by path.
    pub(crate) fn list_objects(&self) -> Result<ObjectListing, RepoError> {
        let mut out = ObjectListing::default();
        let top = fsutil::list_dir(self.dir(), "objects").map_err(|e| self.io_err("objects", e))?;
        for dir in top {
            let rel = format!("objects/{}", dir.name);
            if is_temp(&dir.name) {
                out.temps.push(rel);
                continue;
            }
            let fan_out = dir.name.len() == 2
                && dir
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !fan_out || dir.kind != FileType::Directory {
                out.strays.push(rel);
                continue;
            }
            for e in fsutil::list_dir(self.dir(), &rel).map_err(|e| self.io_err(&rel, e))? {
                let path = format!("{rel}/{}", e.name);
                if is_temp(&e.name) {
                    out.temps.push(path);
                    continue;
                }
                let digest =
                    Digest::from_hex_alg(self.algorithm(), &format!("{}{}", dir.name, e.name))
                        .ok()
                        .filter(|d| d.to_hex() == format!("{}{}", dir.name, e.name));
                match digest {
                    Some(digest) if e.kind == FileType::RegularFile => {
                        out.objects.push(ListedObject { digest, rel: path })
                    }
                    _ => out.strays.push(path),
                }
            }
        }
        Ok(out)
    }
}

fn is_temp(name: &str) -> bool {
    name.starts_with(TMP_OBJECT_PREFIX) || name.starts_with(fsutil::TMP_LINK_PREFIX)
}

/// A repository is a [`ContentSink`]: scanning a directory into it imports every external file
/// as an object while computing its digest, reading each file once.
impl ContentSink for Repository {
    fn consume(&self, file: &mut File, algorithm: Algorithm) -> io::Result<(Digest, u64)> {
        if algorithm != self.algorithm() {
            return Err(io::Error::other(format!(
                "scanning with {algorithm} digests into a {} repository",
                self.algorithm()
            )));
        }
        let (digest, _, size) = self.import(file, None).map_err(io::Error::other)?;
        Ok((digest, size))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::super::testutil::{files, repo, repo_with};
    use super::*;

    #[test]
    fn objects_are_deduplicated_and_never_rewritten() {
        let (_dir, repo) = repo();
        let (d, fresh) = repo.ensure_object(b"hello world").expect("store");
        assert!(fresh);
        assert_eq!(
            d.to_hex(),
            "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
        );
        let path = repo.object_path(&d);
        assert_eq!(
            path,
            repo.path()
                .join("objects/1e/2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64")
        );
        let meta = std::fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
        let fan_out = std::fs::metadata(path.parent().expect("parent")).expect("stat");
        assert_eq!(fan_out.permissions().mode() & 0o777, 0o755 & !umask());

        let (d2, fresh2) = repo.ensure_object(b"hello world").expect("again");
        assert_eq!(d2, d);
        assert!(!fresh2);
        assert_eq!(std::fs::metadata(&path).expect("stat").ino(), meta.ino());
        assert!(repo.has_object(&d).expect("has"));
        assert_eq!(repo.read_object(&d).expect("read"), b"hello world");
        assert_eq!(
            files(repo.path()),
            [
                "meta.json".to_string(),
                "objects/1e/2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64".into()
            ],
            "no temporaries left"
        );
    }

    fn umask() -> u32 {
        let old = rustix::process::umask(Mode::from_raw_mode(0o022));
        rustix::process::umask(old);
        old.bits()
    }

    #[test]
    fn a_truncated_object_is_replaced() {
        let (_dir, repo) = repo();
        let (d, _) = repo.ensure_object(b"0123456789").expect("store");
        std::fs::write(repo.object_path(&d), b"01234").expect("truncate");
        let (_, fresh) = repo.ensure_object(b"0123456789").expect("store");
        assert!(fresh);
        assert_eq!(repo.read_object(&d).expect("read"), b"0123456789");
        assert_eq!(files(repo.path()).len(), 2, "{:?}", files(repo.path()));
    }

    #[test]
    fn import_hashes_while_copying_small_and_large_files() {
        let (dir, repo) = repo_with(Algorithm::Sha512);
        for len in [0usize, 1, 4096, 100_000, (9 << 20) + 123] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let src_path = dir.path().join(format!("src{len}"));
            std::fs::write(&src_path, &data).expect("write");
            for hint in [None, Some(len as u64), Some(10)] {
                let src = File::open(&src_path).expect("open");
                let (d, _) = repo.import_file(&src, hint).expect("import");
                assert_eq!(d, fsverity::digest(Algorithm::Sha512, &data), "len {len}");
                assert_eq!(repo.read_object(&d).expect("read"), data);
            }
            let src = File::open(&src_path).expect("open");
            assert!(!repo.import_file(&src, None).expect("again").1, "dedup");
        }
        // Importing starts at the current offset.
        let mut src = File::open(dir.path().join("src100000")).expect("open");
        src.seek(SeekFrom::Start(99_990)).expect("seek");
        let (d, _) = repo.import_file(&src, None).expect("import");
        let tail: Vec<u8> = (99_990..100_000usize).map(|i| (i % 251) as u8).collect();
        assert_eq!(d, fsverity::digest(Algorithm::Sha512, &tail));
        let leftovers: Vec<String> = files(repo.path())
            .into_iter()
            .filter(|f| f.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn named_temporaries_are_used_without_o_tmpfile() {
        let (_dir, repo) = repo();
        repo.no_tmpfile.store(true, Ordering::Relaxed);
        let big = vec![3u8; (5 << 20) + 7];
        let mut tmp = tempfile::tempfile().expect("tmp");
        tmp.write_all(&big).expect("write");
        tmp.seek(SeekFrom::Start(0)).expect("seek");
        let (d1, fresh1) = repo.import_file(&tmp, None).expect("import");
        let (d2, fresh2) = repo.ensure_object(b"small").expect("store");
        assert!(fresh1 && fresh2);
        assert!(!repo.ensure_object(b"small").expect("again").1);
        tmp.seek(SeekFrom::Start(0)).expect("seek");
        assert!(!repo.import_file(&tmp, None).expect("again").1);
        assert_eq!(repo.read_object(&d1).expect("read"), big);
        assert_eq!(repo.read_object(&d2).expect("read"), b"small");
        // meta.json, the two objects and the large one's saved Merkle tree; no temporaries.
        assert_eq!(files(repo.path()).len(), 4, "{:?}", files(repo.path()));
        assert!(repo.verity_tree_dir().join(d1.object_path()).is_file());
    }

    #[test]
    fn concurrent_writers_of_one_object_agree() {
        let (_dir, repo) = repo();
        let data = vec![9u8; 200_000];
        let results: Vec<(Digest, bool)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| repo.ensure_object(&data).expect("store")))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("join"))
                .collect()
        });
        assert!(results.iter().all(|(d, _)| *d == results[0].0));
        assert!(results.iter().filter(|(_, fresh)| *fresh).count() >= 1);
        assert_eq!(files(repo.path()).len(), 2);
    }

    #[test]
    fn foreign_digests_and_missing_objects_are_errors() {
        let (_dir, repo) = repo();
        let foreign = fsverity::digest(Algorithm::Sha512, b"x");
        assert!(matches!(
            repo.open_object(&foreign),
            Err(RepoError::AlgorithmMismatch { .. })
        ));
        let absent = fsverity::digest(Algorithm::Sha256, b"absent");
        let err = repo.open_object(&absent).expect_err("missing");
        assert!(matches!(err, RepoError::ObjectNotFound { .. }));
        assert!(err.to_string().contains(&absent.to_hex()));
        assert!(!repo.has_object(&absent).expect("has"));
    }

    #[test]
    fn verify_file_computes_digests_in_insecure_repositories() {
        let (_dir, repo) = repo();
        let (d, _) = repo.ensure_object(b"content").expect("store");
        let file = repo.open_object(&d).expect("open");
        repo.verify_file(&file, repo.object_path(&d), &d)
            .expect("verify");
        let other = fsverity::digest(Algorithm::Sha256, b"other");
        assert!(matches!(
            repo.verify_file(&file, repo.object_path(&d), &other),
            Err(RepoError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn a_repository_is_a_content_sink_for_scans() {
        let (dir, repo) = repo();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).expect("mkdir");
        std::fs::write(src.join("big"), vec![1u8; 5000]).expect("write");
        std::fs::write(src.join("small"), b"tiny").expect("write");
        let tree =
            crate::scan::scan_directory_into(&src, &crate::ScanOptions::mkcomposefs(), &repo)
                .expect("scan");
        let d = fsverity::digest(Algorithm::Sha256, &[1u8; 5000]);
        assert!(repo.has_object(&d).expect("has"));
        let listing = repo.list_objects().expect("list");
        assert_eq!(listing.objects.len(), 1, "inline files are not stored");
        drop(tree);
    }

    #[test]
    fn listing_sorts_objects_temps_and_strays() {
        let (_dir, repo) = repo();
        let (d, _) = repo.ensure_object(b"x").expect("store");
        let fan = repo.path().join("objects").join(&d.to_hex()[..2]);
        std::fs::write(fan.join(".tmp-object-abc"), b"").expect("write");
        std::fs::write(fan.join("short"), b"").expect("write");
        std::fs::write(repo.path().join("objects/README"), b"").expect("write");
        let listing = repo.list_objects().expect("list");
        assert_eq!(listing.objects.len(), 1);
        assert_eq!(listing.objects[0].digest, d);
        assert_eq!(listing.temps.len(), 1);
        assert_eq!(listing.strays.len(), 2, "{:?}", listing.strays);
    }
}
