//! Reading a directory on disk into a [`Tree`] with C `mkcomposefs` v1.0.8 semantics
//! (FORMATS.md §10.3a).
//!
//! The scan has two phases. The *metadata* phase walks the source depth-first in sorted order on
//! the calling thread: `lstat`, symlink targets and xattrs; no regular file is opened. The
//! *content* phase then reads every non-empty regular file on [`ScanOptions::threads`] threads:
//! small files become inline data, larger ones get their fs-verity digest and an object path.
//! Each work item touches only its own inode, so the tree never depends on the thread count.
//!
//! Filling a digest store from the result is [`crate::store::fill_digest_store`].

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cfs_format::fsverity::{Algorithm, FsVerityHasher};
use cfs_format::tree::{
    Directory, FileData, Inode, InodeId, InodeKind, Metadata, Mtime, RegularFile, Tree, TreeError,
    Xattrs,
};
use rayon::prelude::*;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};
use rustix::io::Errno;

pub use crate::store::{fill_digest_store, StoreStats};

/// C's `LCFS_INODE_EXTERNAL_XATTR_MAX`: the most bytes one inode's xattrs may take, counted as
/// 12 + Σ(7 + name length + value length).
pub const XATTR_BUDGET: usize = 32767;

/// C's `LCFS_RECOMMENDED_INLINE_CONTENT_MAX`: regular files up to this size are stored inline.
pub const MKCOMPOSEFS_INLINE_MAX: u64 = 64;

/// Size of the per-thread read buffer used for digests. It is at least the fs-verity hasher's
/// parallel threshold, so a single huge file still hashes on several threads.
const READ_BUFFER: usize = 2 << 20;

/// What to read from the source and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanOptions {
    /// Set every mtime to 0.0 (`--use-epoch`).
    pub use_epoch: bool,
    /// Drop character and block devices, whiteouts included (`--skip-devices`).
    pub skip_devices: bool,
    /// Read no xattrs at all (`--skip-xattrs`).
    pub skip_xattrs: bool,
    /// Read only xattrs whose name starts with `user.` (`--user-xattrs`).
    pub user_xattrs: bool,
    /// Keep host hardlinks: names with the same `(st_dev, st_ino)` and `st_nlink > 1` become one
    /// inode (composefs-rs `--hardlinks`). C `mkcomposefs` breaks them (`false`).
    pub hardlinks: bool,
    /// Threads for the content phase; 0 means one per available CPU.
    pub threads: usize,
    /// Digest algorithm for external files.
    pub algorithm: Algorithm,
    /// Regular files of `1..=inline_max` bytes are stored inline; larger ones by digest.
    pub inline_max: u64,
}

impl ScanOptions {
    /// The defaults of C `mkcomposefs DIR`: nothing skipped, hardlinks broken, sha256 digests,
    /// files up to 64 bytes inline, one thread per CPU.
    pub fn mkcomposefs() -> Self {
        ScanOptions {
            use_epoch: false,
            skip_devices: false,
            skip_xattrs: false,
            user_xattrs: false,
            hardlinks: false,
            threads: 0,
            algorithm: Algorithm::Sha256,
            inline_max: MKCOMPOSEFS_INLINE_MAX,
        }
    }

    /// Reject contradictory options (`skip_xattrs` with `user_xattrs`).
    pub fn validate(&self) -> Result<(), ScanError> {
        if self.skip_xattrs && self.user_xattrs {
            return Err(ScanError::InvalidOptions(
                "skipping xattrs conflicts with reading only user xattrs",
            ));
        }
        Ok(())
    }

    /// The thread count to use: [`threads`](Self::threads), or the CPU count when that is 0.
    pub fn effective_threads(&self) -> usize {
        effective_threads(self.threads)
    }
}

impl Default for ScanOptions {
    /// Same as [`ScanOptions::mkcomposefs`].
    fn default() -> Self {
        ScanOptions::mkcomposefs()
    }
}

pub(crate) fn effective_threads(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Why a directory could not be scanned (or a digest store filled).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// Contradictory [`ScanOptions`].
    #[error("invalid scan options: {0}")]
    InvalidOptions(&'static str),
    /// A metadata call (lstat, open, readdir, readlink, xattrs) failed on `path`.
    #[error("error accessing {}: {source}", path.display())]
    Access {
        /// The entry that failed.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The source root is not a directory (symlinks are not followed).
    #[error("error accessing {}: not a directory", path.display())]
    NotADirectory {
        /// The source root.
        path: PathBuf,
    },
    /// An entry has a file type composefs cannot represent.
    #[error("error accessing {}: unsupported file type (mode {mode:o})", path.display())]
    UnsupportedType {
        /// The entry.
        path: PathBuf,
        /// Its full `st_mode`.
        mode: u32,
    },
    /// One inode's xattrs exceed [`XATTR_BUDGET`].
    #[error(
        "error accessing {}: extended attributes need {size} bytes, more than {XATTR_BUDGET}",
        path.display()
    )]
    XattrsTooLarge {
        /// The entry.
        path: PathBuf,
        /// 12 + Σ(7 + name length + value length).
        size: usize,
    },
    /// The entry could not be added to the tree (a name the kernel should never produce).
    #[error("error accessing {}: {source}", path.display())]
    Tree {
        /// The entry.
        path: PathBuf,
        /// What the tree refused.
        source: TreeError,
    },
    /// A regular file could not be opened or read for its inline content or digest.
    #[error("error computing digest for {}: {source}", path.display())]
    Content {
        /// The file.
        path: PathBuf,
        /// The system error (`UnexpectedEof` when the file is shorter than it was).
        source: io::Error,
    },
    /// The worker thread pool could not be started.
    #[error("cannot start {threads} worker threads: {source}")]
    ThreadPool {
        /// Requested thread count.
        threads: usize,
        /// Why rayon refused.
        source: rayon::ThreadPoolBuildError,
    },
    /// Copying an object into the digest store failed.
    #[error("cannot fill store {}: {source}", path.display())]
    Store {
        /// The object (or store directory) being written, or the source being copied.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
}

/// Read the directory `root` (never following it if it is a symlink) into a [`Tree`] with
/// C `mkcomposefs` semantics; see the module documentation and FORMATS.md §10.3a.
pub fn scan_directory(root: &Path, opts: &ScanOptions) -> Result<Tree, ScanError> {
    opts.validate()?;
    let access = |e: Errno| ScanError::Access {
        path: root.to_path_buf(),
        source: e.into(),
    };
    let st = rustix::fs::lstat(root).map_err(access)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(ScanError::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let root_fd = rustix::fs::openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(access)?;

    let mut scanner = Scanner {
        opts,
        root,
        tree: Tree::new(metadata(&st, opts)),
        work: Vec::new(),
        links: HashMap::new(),
        rel: Vec::new(),
    };
    if !opts.skip_xattrs {
        let proc = proc_fd_path(root_fd.as_fd());
        let xattrs = read_xattrs(&proc, Follow::Yes, opts).map_err(|e| e.at(root))?;
        scanner.tree.inode_mut(InodeId::ROOT).xattrs = xattrs;
    }
    scanner.walk(root_fd.as_fd())?;

    let Scanner {
        mut tree, work, ..
    } = scanner;
    let contents = read_contents(root, root_fd.as_fd(), &work, opts)?;
    for (item, file) in work.iter().zip(contents) {
        if let InodeKind::Regular(r) = &mut tree.inode_mut(item.inode).kind {
            *r = file;
        }
    }
    tree.recompute_leaf_nlinks();
    set_directory_nlinks(&mut tree);
    Ok(tree)
}

/// One regular file whose content phase is still due.
#[derive(Debug)]
struct ContentWork {
    inode: InodeId,
    /// Path relative to the source root (raw bytes, no leading `/`).
    rel: Vec<u8>,
    size: u64,
}

/// An open directory being walked: its stream, its inode, and the names not yet visited
/// (sorted descending, so `pop` yields them in ascending byte order).
struct Frame {
    dir: Dir,
    /// `/proc/self/fd/N` of `dir`, the base for `l*xattr` on its entries.
    proc: Vec<u8>,
    inode: InodeId,
    pending: Vec<CString>,
    /// Length of [`Scanner::rel`] for this directory.
    rel_len: usize,
}

struct Scanner<'a> {
    opts: &'a ScanOptions,
    root: &'a Path,
    tree: Tree,
    work: Vec<ContentWork>,
    /// `(st_dev, st_ino)` → canonical inode, only with [`ScanOptions::hardlinks`].
    links: HashMap<(u64, u64), InodeId>,
    /// Path of the current entry relative to the root.
    rel: Vec<u8>,
}

impl Scanner<'_> {
    fn full_path(&self) -> PathBuf {
        if self.rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(&self.rel))
        }
    }

    fn access_error(&self, source: impl Into<io::Error>) -> ScanError {
        ScanError::Access {
            path: self.full_path(),
            source: source.into(),
        }
    }

    /// Depth-first, pre-order walk below the root. Each open level holds one descriptor, like C.
    fn walk(&mut self, root_fd: BorrowedFd<'_>) -> Result<(), ScanError> {
        let dup = rustix::io::fcntl_dupfd_cloexec(root_fd, 0).map_err(|e| self.access_error(e))?;
        let mut stack = vec![self.open_frame(dup, InodeId::ROOT)?];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.pending.pop() else {
                stack.pop();
                continue;
            };
            self.rel.truncate(frame.rel_len);
            if !self.rel.is_empty() {
                self.rel.push(b'/');
            }
            self.rel.extend_from_slice(name.to_bytes());
            let dirfd = frame.dir.fd().map_err(|e| self.access_error(e))?;
            let Some(child) = self.entry(dirfd, &frame.proc, frame.inode, &name)? else {
                continue;
            };
            let fd = rustix::fs::openat(
                dirfd,
                name.as_c_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.access_error(e))?;
            let child_frame = self.open_frame(fd, child)?;
            stack.push(child_frame);
        }
        Ok(())
    }

    /// Read and sort the names of the directory open as `fd`, whose path is [`Self::rel`].
    fn open_frame(&self, fd: OwnedFd, inode: InodeId) -> Result<Frame, ScanError> {
        let proc = proc_fd_path(fd.as_fd());
        let mut dir = Dir::new(fd).map_err(|e| self.access_error(e))?;
        let mut pending = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| self.access_error(e))?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                pending.push(name.to_owned());
            }
        }
        pending.sort_unstable_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
        Ok(Frame {
            dir,
            proc,
            inode,
            pending,
            rel_len: self.rel.len(),
        })
    }

    /// Add the entry `name` of `dirfd` (path [`Self::rel`]) to `parent`. Returns the new inode
    /// when it is a directory to descend into.
    fn entry(
        &mut self,
        dirfd: BorrowedFd<'_>,
        dir_proc: &[u8],
        parent: InodeId,
        name: &CStr,
    ) -> Result<Option<InodeId>, ScanError> {
        let st = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.access_error(e))?;
        let file_type = FileType::from_raw_mode(st.st_mode);
        if self.opts.skip_devices
            && matches!(file_type, FileType::CharacterDevice | FileType::BlockDevice)
        {
            return Ok(None);
        }
        let name_bytes = name.to_bytes();
        let key = (st.st_dev, st.st_ino);
        if self.opts.hardlinks && file_type != FileType::Directory && st.st_nlink > 1 {
            if let Some(&target) = self.links.get(&key) {
                self.tree
                    .link(parent, name_bytes, target)
                    .map_err(|source| ScanError::Tree {
                        path: self.full_path(),
                        source,
                    })?;
                return Ok(None);
            }
        }

        let size = u64::try_from(st.st_size).unwrap_or(0);
        let kind = match file_type {
            FileType::Directory => InodeKind::Directory(Directory::default()),
            // Content comes in phase 2; until then the file is an empty placeholder.
            FileType::RegularFile => InodeKind::Regular(RegularFile {
                size,
                data: FileData::Inline(Box::default()),
            }),
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dirfd, name, Vec::new())
                    .map_err(|e| self.access_error(e))?;
                InodeKind::Symlink(target.into_bytes().into())
            }
            FileType::CharacterDevice => InodeKind::CharDevice(st.st_rdev),
            FileType::BlockDevice => InodeKind::BlockDevice(st.st_rdev),
            FileType::Fifo => InodeKind::Fifo,
            FileType::Socket => InodeKind::Socket,
            FileType::Unknown => {
                return Err(ScanError::UnsupportedType {
                    path: self.full_path(),
                    mode: st.st_mode,
                })
            }
        };
        let mut inode = Inode::new(metadata(&st, self.opts), kind);
        if !self.opts.skip_xattrs {
            let mut path = Vec::with_capacity(dir_proc.len() + 1 + name_bytes.len());
            path.extend_from_slice(dir_proc);
            path.push(b'/');
            path.extend_from_slice(name_bytes);
            inode.xattrs =
                read_xattrs(&path, Follow::No, self.opts).map_err(|e| e.at(&self.full_path()))?;
        }
        let id = self
            .tree
            .add(parent, name_bytes, inode)
            .map_err(|source| ScanError::Tree {
                path: self.full_path(),
                source,
            })?;
        if self.opts.hardlinks && file_type != FileType::Directory && st.st_nlink > 1 {
            self.links.insert(key, id);
        }
        match file_type {
            FileType::Directory => Ok(Some(id)),
            FileType::RegularFile if size > 0 => {
                self.work.push(ContentWork {
                    inode: id,
                    rel: self.rel.clone(),
                    size,
                });
                Ok(None)
            }
            _ => Ok(None),
        }
    }
}

/// The metadata C takes from `lstat`: permissions, owner, mtime; nlink 1.
fn metadata(st: &Stat, opts: &ScanOptions) -> Metadata {
    let mtime = if opts.use_epoch {
        Mtime::default()
    } else {
        Mtime {
            sec: st.st_mtime,
            nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(u32::MAX),
        }
    };
    Metadata {
        permissions: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime,
        nlink: 1,
    }
}

/// Directories get 2 + their number of subdirectories (the writer recomputes this anyway).
fn set_directory_nlinks(tree: &mut Tree) {
    let counts: Vec<Option<u32>> = tree
        .inodes
        .iter()
        .map(|inode| {
            inode.as_dir().map(|d| {
                let subdirs = d
                    .entries
                    .values()
                    .filter(|e| tree.inode(e.inode).kind.is_dir())
                    .count();
                2u32.saturating_add(u32::try_from(subdirs).unwrap_or(u32::MAX))
            })
        })
        .collect();
    for (inode, n) in tree.inodes.iter_mut().zip(counts) {
        if let Some(n) = n {
            inode.meta.nlink = n;
        }
    }
}

/// `/proc/self/fd/N` for `fd`.
fn proc_fd_path(fd: BorrowedFd<'_>) -> Vec<u8> {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes()
}

/// Whether the last component of an xattr path is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follow {
    /// `listxattr`/`getxattr` (used for the root, reached as `/proc/self/fd/N`).
    Yes,
    /// `llistxattr`/`lgetxattr` (entries, reached as `/proc/self/fd/N/name`).
    No,
}

/// An xattr failure before the entry's path is known.
#[derive(Debug)]
enum XattrError {
    Io(Errno),
    TooLarge(usize),
}

impl XattrError {
    fn at(self, path: &Path) -> ScanError {
        match self {
            XattrError::Io(e) => ScanError::Access {
                path: path.to_path_buf(),
                source: e.into(),
            },
            XattrError::TooLarge(size) => ScanError::XattrsTooLarge {
                path: path.to_path_buf(),
                size,
            },
        }
    }
}

/// All xattrs of `path` the options select, binary-exact, empty values kept.
fn read_xattrs(path: &[u8], follow: Follow, opts: &ScanOptions) -> Result<Xattrs, XattrError> {
    let mut xattrs = Xattrs::new();
    let names = fetch_sized(
        || match follow {
            Follow::Yes => rustix::fs::listxattr_query(path),
            Follow::No => rustix::fs::llistxattr_query(path),
        },
        |buf| match follow {
            Follow::Yes => rustix::fs::listxattr(path, buf),
            Follow::No => rustix::fs::llistxattr(path, buf),
        },
    )
    .map_err(XattrError::Io)?;
    let Some(names) = names else {
        return Ok(xattrs);
    };
    let mut budget = 12usize;
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if opts.user_xattrs && !name.starts_with(b"user.") {
            continue;
        }
        let value = fetch_sized(
            || match follow {
                Follow::Yes => rustix::fs::getxattr_query(path, name),
                Follow::No => rustix::fs::lgetxattr_query(path, name),
            },
            |buf| match follow {
                Follow::Yes => rustix::fs::getxattr(path, name, buf),
                Follow::No => rustix::fs::lgetxattr(path, name, buf),
            },
        )
        .map_err(XattrError::Io)?;
        // `None`: the attribute vanished between list and get; it is not there any more.
        let Some(value) = value else { continue };
        budget = budget.saturating_add(7 + name.len() + value.len());
        xattrs.insert(name.into(), value.into());
    }
    if budget > XATTR_BUDGET {
        return Err(XattrError::TooLarge(budget));
    }
    Ok(xattrs)
}

/// Query a size, then fetch into a buffer of that size, retrying if the data grew in between
/// (`ERANGE`). `ENODATA` → `None`.
fn fetch_sized(
    query: impl Fn() -> rustix::io::Result<usize>,
    fetch: impl Fn(&mut [u8]) -> rustix::io::Result<usize>,
) -> rustix::io::Result<Option<Vec<u8>>> {
    loop {
        let size = match query() {
            Ok(n) => n,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Some(Vec::new()));
        }
        let mut buf = vec![0u8; size];
        match fetch(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) => continue,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Run `f` over `items` on a pool of `threads` threads, keeping the input order.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    threads: usize,
    items: &[T],
    f: impl Fn(&T) -> R + Sync + Send,
) -> Result<Vec<R>, ScanError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("cfs-scan-{i}"))
        .build()
        .map_err(|source| ScanError::ThreadPool { threads, source })?;
    Ok(pool.install(|| items.par_iter().with_max_len(1).map(f).collect()))
}

/// Phase 2: inline data or digest for every non-empty regular file, in work-list order. The
/// first failure in that order is reported, whatever the thread count.
fn read_contents(
    root: &Path,
    root_fd: BorrowedFd<'_>,
    work: &[ContentWork],
    opts: &ScanOptions,
) -> Result<Vec<RegularFile>, ScanError> {
    let results = parallel_map(opts.effective_threads(), work, |item| {
        file_content(root_fd, item, opts).map_err(|source| ScanError::Content {
            path: root.join(OsStr::from_bytes(&item.rel)),
            source,
        })
    })?;
    results.into_iter().collect()
}

/// Open a regular file below `root_fd` for reading without following a final symlink or
/// blocking (should it have been replaced by a FIFO), and check that it still is a regular file.
pub(crate) fn open_regular(root_fd: BorrowedFd<'_>, rel: &[u8]) -> io::Result<File> {
    let fd = rustix::fs::openat(
        root_fd,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("no longer a regular file"));
    }
    Ok(File::from(fd))
}

fn file_content(
    root_fd: BorrowedFd<'_>,
    item: &ContentWork,
    opts: &ScanOptions,
) -> io::Result<RegularFile> {
    let mut file = open_regular(root_fd, &item.rel)?;
    if item.size <= opts.inline_max {
        // Exactly st_size bytes; a shorter file is an error (C: ENODATA).
        let len = usize::try_from(item.size).map_err(io::Error::other)?;
        let mut data = vec![0u8; len];
        file.read_exact(&mut data).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file is shorter than its size of {} bytes", item.size),
                )
            } else {
                e
            }
        })?;
        return Ok(RegularFile {
            size: item.size,
            data: FileData::Inline(data.into()),
        });
    }
    let _ = rustix::fs::fadvise(
        &file,
        0,
        None,
        rustix::fs::Advice::Sequential,
    );
    let digest = digest_file(&mut file, opts.algorithm)?;
    Ok(RegularFile::external(item.size, digest))
}

thread_local! {
    /// A reusable read buffer per worker thread. It is taken out while in use, so a nested
    /// rayon job running on the same thread simply allocates its own.
    static BUFFER: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
}

/// fs-verity digest of everything `file` yields from its current offset to EOF (holes read as
/// zeros, as in C).
pub(crate) fn digest_file(
    file: &mut File,
    algorithm: Algorithm,
) -> io::Result<cfs_format::Digest> {
    let mut buf = BUFFER
        .with(Cell::take)
        .unwrap_or_else(|| vec![0u8; READ_BUFFER]);
    let result = hash_into(file, algorithm, &mut buf);
    BUFFER.with(|b| b.set(Some(buf)));
    result
}

fn hash_into(file: &mut File, algorithm: Algorithm, buf: &mut [u8]) -> io::Result<cfs_format::Digest> {
    let mut hasher = FsVerityHasher::new(algorithm);
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        hasher.update(&buf[..filled]);
        if filled < buf.len() {
            break;
        }
    }
    Ok(hasher.finish())
}
