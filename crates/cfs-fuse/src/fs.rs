//! The FUSE filesystem: every request is answered from the mapped image through the validating
//! reader; nothing is built or cached per inode except open objects.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cfs_format::erofs::reader::{
    DirEntryRef, FileType, Image, InodeRef, Nid, ReadError, RegularData,
};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use rustix::fs::OFlags;

use crate::attr::{self, InoMap, BLOCK_SIZE, ROOT_INO};
use crate::counters::{Counters, Op};
use crate::mmap::ImageMap;
use crate::objects::{
    Backing, ObjectError, ObjectRef, ObjectStore, OpenObject, OpenTable, RecentObjects,
};

/// Entry and attribute timeout: the image never changes, so "forever" (about 31 years; the
/// kernel clamps it to what jiffies can express).
pub(crate) const TTL: Duration = Duration::from_secs(1_000_000_000);

/// File handle of files served from the image (inline data, sparse files).
const FH_IMAGE: u64 = 1;
/// File handle of files served from an object (see [`OpenTable`]).
const FH_OBJECT: u64 = 2;

/// The answer to an OPEN or OPENDIR.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opened {
    pub(crate) fh: u64,
    pub(crate) flags: FopenFlags,
    /// The passthrough backing id (the reply then carries FOPEN_PASSTHROUGH).
    pub(crate) backing: Option<u32>,
}

/// The answer to a STATFS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Statfs {
    pub(crate) blocks: u64,
    pub(crate) files: u64,
    pub(crate) bsize: u32,
    pub(crate) namelen: u32,
}

/// The answer to a GETXATTR or LISTXATTR that succeeds.
#[derive(Debug)]
pub(crate) enum XattrAnswer<'a> {
    /// The size of the value, for a size-0 probe.
    Size(u32),
    /// The value.
    Data(&'a [u8]),
}

/// Largest READ we answer in one piece (the kernel never asks for more than max_pages pages,
/// at most 256 pages = 1 MiB by default; fuser's buffer holds 16 MiB).
const MAX_READ: usize = 16 << 20;

/// The most a READ of `size` bytes answers with.
pub(crate) fn read_size(size: u32) -> usize {
    (size as usize).min(MAX_READ)
}

/// readdir cookies: 1 = after `.`, 2 = after `..`, then ((block + 1) << 16) | index for "the
/// next entry is entry `index` of directory block `block`" (a block holds at most 341 entries).
const COOKIE_DOT: u64 = 1;
const COOKIE_DOTDOT: u64 = 2;

fn cookie_of((block, index): (u64, usize)) -> u64 {
    ((block + 1) << 16) | (index as u64 & 0xFFFF)
}

fn position_of(cookie: u64) -> (u64, usize) {
    ((cookie >> 16).saturating_sub(1), (cookie & 0xFFFF) as usize)
}

/// `ENODATA`, which fuser does not name.
fn enodata() -> Errno {
    Errno::from_i32(rustix::io::Errno::NODATA.raw_os_error())
}

thread_local! {
    /// Per-worker buffer the fuser adapter reads into (the io_uring workers read straight into
    /// their entries' payload buffers).
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with a buffer of exactly `len` bytes (contents unspecified) owned by this worker.
fn with_read_buf<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUF.with_borrow_mut(|buf| {
        if buf.len() < len {
            buf.resize(len, 0);
        }
        f(buf.get_mut(..len).unwrap_or_default())
    })
}

/// Where the data a READ answers with is.
#[derive(Debug)]
pub(crate) enum ReadData<'a> {
    /// The first `n` bytes of the caller's buffer.
    Filled(usize),
    /// A slice of the mapped image (data stored inline in one piece): no copy needed.
    Mapped(&'a [u8]),
}

/// The composefs filesystem served over FUSE.
#[derive(Debug)]
pub(crate) struct ComposefsFs {
    map: ImageMap,
    inos: InoMap,
    objects: ObjectStore,
    open: OpenTable,
    counters: Arc<Counters>,
    /// Whether passthrough was requested.
    want_passthrough: bool,
    /// Whether reads of external files are handed to the kernel (negotiated and working).
    passthrough: AtomicBool,
    /// `max_stack_depth` for passthrough: 2 when the objects live on a stacked filesystem.
    stack_depth: u32,
    /// The kernel handles directories without OPENDIR/RELEASEDIR once told so (ENOSYS).
    no_opendir: AtomicBool,
    /// The kernel opens files without OPEN/RELEASE once told so (ENOSYS); see `init`.
    no_open: AtomicBool,
    /// Objects opened for READs that come without an OPEN (zero-message open).
    recent: RecentObjects,
    /// Whether FUSE over io_uring was requested.
    want_uring: bool,
    /// Whether the kernel agreed to FUSE over io_uring at INIT.
    uring: AtomicBool,
    /// The payload buffer each io_uring entry needs (see [`uring_payload`]).
    uring_payload: AtomicUsize,
    /// The connection's `/dev/fuse`, for registering passthrough backing files; set once the
    /// handshake is done, before any OPEN can arrive.
    dev_fuse: OnceLock<Arc<OwnedFd>>,
}

impl ComposefsFs {
    /// A filesystem over `map`, which [`validate`](crate::session) has checked.
    pub(crate) fn new(
        map: ImageMap,
        root: Nid,
        objects: ObjectStore,
        counters: Arc<Counters>,
        want_passthrough: bool,
        want_uring: bool,
        stack_depth: u32,
    ) -> Self {
        ComposefsFs {
            map,
            inos: InoMap::new(root),
            objects,
            open: OpenTable::default(),
            counters,
            want_passthrough,
            passthrough: AtomicBool::new(false),
            stack_depth,
            no_opendir: AtomicBool::new(false),
            no_open: AtomicBool::new(false),
            recent: RecentObjects::default(),
            want_uring,
            uring: AtomicBool::new(false),
            uring_payload: AtomicUsize::new(0),
            dev_fuse: OnceLock::new(),
        }
    }

    /// Hand over the connection's `/dev/fuse` once the handshake is done.
    pub(crate) fn set_dev_fuse(&self, dev: Arc<OwnedFd>) {
        let _ = self.dev_fuse.set(dev);
    }

    /// The size of each io_uring entry's payload buffer when the kernel agreed to FUSE over
    /// io_uring.
    pub(crate) fn uring_payload(&self) -> Option<usize> {
        self.uring
            .load(Ordering::Relaxed)
            .then(|| self.uring_payload.load(Ordering::Relaxed))
    }

    pub(crate) fn hit(&self, op: Op) {
        self.counters.hit(op);
    }

    /// The image; it was validated at startup, so this only re-reads the header fields.
    fn image(&self) -> Result<Image<'_>, Errno> {
        Image::open(self.map.bytes()).map_err(|e| damaged("image", e))
    }

    /// The inode behind FUSE inode number `ino`.
    fn inode<'a>(&self, image: &Image<'a>, ino: INodeNo) -> Result<InodeRef<'a>, Errno> {
        let nid = self.inos.nid(ino.0).ok_or(Errno::ENOENT)?;
        image
            .inode(nid)
            .map_err(|e| damaged(&format!("inode {}", ino.0), e))
    }

    /// The FUSE inode number of a directory entry.
    fn entry_ino(&self, entry: &DirEntryRef<'_>) -> Result<u64, Errno> {
        self.inos.ino(entry.nid).ok_or_else(|| {
            log::warn!(
                "damaged image: directory entry {:?} points to invalid inode {}",
                String::from_utf8_lossy(entry.name),
                entry.nid
            );
            Errno::EIO
        })
    }

    fn attr(&self, ino: u64, inode: &InodeRef<'_>) -> Result<FileAttr, Errno> {
        attr::attr_of(ino, inode).map_err(|e| damaged(&format!("inode {ino}"), e))
    }

    fn do_lookup(&self, parent: INodeNo, name: &OsStr) -> Result<FileAttr, Errno> {
        let image = self.image()?;
        let dir = self.inode(&image, parent)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let found = image
            .lookup_child(&dir, name.as_bytes())
            .map_err(|e| damaged(&format!("directory {}", parent.0), e))?;
        let Some(entry) = found else {
            return Ok(attr::negative_entry());
        };
        let ino = self.entry_ino(&entry)?;
        let child = image
            .inode(entry.nid)
            .map_err(|e| damaged(&format!("inode {ino}"), e))?;
        self.attr(ino, &child)
    }

    /// The inode number of the parent of directory `dir` (its stored `..`; the root's parent
    /// is the root).
    fn parent_ino(&self, dir: &InodeRef<'_>, ino: u64) -> Result<u64, Errno> {
        if ino == ROOT_INO {
            return Ok(ROOT_INO);
        }
        match dir.lookup(b"..") {
            Ok(Some(entry)) => self.entry_ino(&entry),
            Ok(None) => Ok(ROOT_INO),
            Err(e) => Err(damaged(&format!("directory {ino}"), e)),
        }
    }

    /// Shared readdir/readdirplus walk: calls `add(ino, cookie, name, inode)` for each entry
    /// from `offset` until it returns true (buffer full).
    fn walk_dir(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, u64, &[u8], &InodeRef<'_>) -> Result<bool, Errno>,
    ) -> Result<(), Errno> {
        let image = self.image()?;
        let dir = self.inode(&image, ino)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if offset < COOKIE_DOT && add(ino.0, COOKIE_DOT, b".", &dir)? {
            return Ok(());
        }
        if offset < COOKIE_DOTDOT {
            let parent_ino = self.parent_ino(&dir, ino.0)?;
            let parent = self.inode(&image, INodeNo(parent_ino))?;
            if add(parent_ino, COOKIE_DOTDOT, b"..", &parent)? {
                return Ok(());
            }
        }
        let bad = |e: ReadError| damaged(&format!("directory {}", ino.0), e);
        let mut children = image.children(&dir).map_err(bad)?;
        if offset > COOKIE_DOTDOT {
            let (block, index) = position_of(offset);
            children.seek(block, index).map_err(bad)?;
        }
        while let Some(entry) = children.next() {
            let entry = entry.map_err(bad)?;
            let cookie = cookie_of(children.position());
            let child_ino = self.entry_ino(&entry)?;
            let child = image
                .inode(entry.nid)
                .map_err(|e| damaged(&format!("inode {child_ino}"), e))?;
            if add(child_ino, cookie, entry.name, &child)? {
                break;
            }
        }
        Ok(())
    }

    fn open_file(&self, ino: INodeNo, flags: i32) -> Result<Opened, Errno> {
        if flags & libc_accmode() != rustix::fs::OFlags::RDONLY.bits() as i32 {
            return Err(Errno::EROFS);
        }
        // Fast path: the inode's object is already open (and verified), or kept.
        if let Some(obj) = self.open.reopen(ino.0) {
            return Ok(opened_object(&obj));
        }
        let Some(object) = self.object_of(ino)? else {
            return Ok(Opened {
                fh: FH_IMAGE,
                flags: FopenFlags::FOPEN_KEEP_CACHE,
                backing: None,
            });
        };
        // Passthrough READs never reach us: such objects are checked whole, once, at open.
        let opened = if self.passthrough.load(Ordering::Relaxed) {
            self.objects.open_checked_whole(&object)
        } else {
            self.objects.open(&object)
        };
        let file = opened.map_err(|e| {
            log_object_error(ino.0, &e);
            Errno::EIO
        })?;
        let check = self.objects.read_check(&object, &file);
        let obj = self.open.insert_with(ino.0, || {
            if self.passthrough.load(Ordering::Relaxed) {
                let registered = match self.dev_fuse.get() {
                    Some(dev) => Backing::open(dev, file.as_fd()),
                    None => Err(io::Error::other("no /dev/fuse to register it with")),
                };
                match registered {
                    // The kernel holds its own reference to the file now.
                    Ok(backing) => {
                        return OpenObject {
                            check: None,
                            file: None,
                            backing: Some(backing),
                        }
                    }
                    Err(e) => {
                        if self.passthrough.swap(false, Ordering::Relaxed) {
                            log::warn!(
                                "passthrough disabled: registering a backing file failed ({e}); \
                                 serving reads in userspace"
                            );
                        }
                    }
                }
            }
            OpenObject {
                check,
                file: Some(file),
                backing: None,
            }
        });
        Ok(opened_object(&obj))
    }

    /// The object behind an external regular file, `None` for files served from the image.
    fn object_of(&self, ino: INodeNo) -> Result<Option<ObjectRef>, Errno> {
        let image = self.image()?;
        let inode = self.inode(&image, ino)?;
        let node = inode
            .node()
            .map_err(|e| damaged(&format!("inode {}", ino.0), e))?;
        match node
            .regular_data()
            .map_err(|e| damaged(&format!("inode {}", ino.0), e))?
        {
            None => Err(if inode.is_dir() {
                Errno::EISDIR
            } else {
                Errno::EINVAL
            }),
            Some(RegularData::Inline(_) | RegularData::Sparse) => Ok(None),
            Some(RegularData::External { digest, payload }) => {
                ObjectRef::new(digest, payload, node.size())
                    .map(Some)
                    .map_err(|e| {
                        log_object_error(ino.0, &e);
                        Errno::EIO
                    })
            }
        }
    }

    /// READ of data stored in the image (inline or sparse). `buf` holds at least `size` bytes.
    fn read_image<'a>(
        &'a self,
        ino: INodeNo,
        offset: u64,
        size: usize,
        buf: &mut [u8],
    ) -> Result<ReadData<'a>, Errno> {
        let image = self.image()?;
        let inode = self.inode(&image, ino)?;
        let node = inode
            .node()
            .map_err(|e| damaged(&format!("inode {}", ino.0), e))?;
        let data = node
            .regular_data()
            .map_err(|e| damaged(&format!("inode {}", ino.0), e))?;
        match data {
            Some(RegularData::Inline(data)) => {
                let len = data.len();
                if offset >= len {
                    return Ok(ReadData::Mapped(&[]));
                }
                let want = size.min(usize::try_from(len - offset).unwrap_or(usize::MAX));
                self.counters.add_read_bytes(want as u64);
                // In one piece: answer straight from the mapping.
                let (head, tail) = (data.head(), data.tail());
                let head_len = head.len() as u64;
                let slice = if offset + want as u64 <= head_len {
                    usize::try_from(offset)
                        .ok()
                        .and_then(|o| head.get(o..o + want))
                } else if offset >= head_len {
                    usize::try_from(offset - head_len)
                        .ok()
                        .and_then(|o| tail.get(o..o + want))
                } else {
                    None
                };
                match slice {
                    Some(s) => Ok(ReadData::Mapped(s)),
                    None => {
                        let dst = buf.get_mut(..want).ok_or(Errno::EIO)?;
                        Ok(ReadData::Filled(data.read_at(offset, dst)))
                    }
                }
            }
            Some(RegularData::Sparse) => {
                let len = node.size();
                let want = size.min(usize::try_from(len.saturating_sub(offset)).unwrap_or(0));
                self.counters.add_read_bytes(want as u64);
                buf.get_mut(..want).ok_or(Errno::EIO)?.fill(0);
                Ok(ReadData::Filled(want))
            }
            _ => Err(Errno::EIO),
        }
    }

    /// A READ of a file the kernel opened without asking (zero-message open): find where the
    /// data lives now.
    fn read_unopened<'a>(
        &'a self,
        ino: INodeNo,
        offset: u64,
        size: usize,
        buf: &mut [u8],
    ) -> Result<ReadData<'a>, Errno> {
        // The usual case, a file read in many requests: its object is open already, and the
        // inode need not be parsed again.
        if let Some(obj) = self.recent.find(ino.0) {
            return self.read_object(ino, &obj, offset, size, buf);
        }
        let Some(object) = self.object_of(ino)? else {
            return self.read_image(ino, offset, size, buf);
        };
        let obj = self.recent.get_or_open(ino.0, || {
            let file = self.objects.open(&object).map_err(|e| {
                log_object_error(ino.0, &e);
                Errno::EIO
            })?;
            let check = self.objects.read_check(&object, &file);
            Ok::<_, Errno>((file, check))
        })?;
        self.read_object(ino, &obj, offset, size, buf)
    }

    fn read_object(
        &self,
        ino: INodeNo,
        obj: &OpenObject,
        offset: u64,
        size: usize,
        buf: &mut [u8],
    ) -> Result<ReadData<'static>, Errno> {
        let Some(file) = &obj.file else {
            log::warn!("READ of inode {} without an open object", ino.0);
            return Err(Errno::EIO);
        };
        let buf = buf.get_mut(..size).ok_or(Errno::EIO)?;
        let Some(check) = &obj.check else {
            let done = pread_full(ino, file, buf, offset)?;
            self.counters.add_read_bytes(done as u64);
            return Ok(ReadData::Filled(done));
        };
        // Checked READs read whole blocks (the kernel asks for whole pages anyway; anything
        // else goes through a scratch buffer) and check them before answering.
        if offset >= check.size {
            return Ok(ReadData::Filled(0));
        }
        let end = check.size.min(offset + size as u64);
        let want = (end - offset) as usize;
        let block = cfs_format::fsverity::BLOCK_SIZE as u64;
        let start_aligned = offset / block * block;
        let end_aligned = check.size.min(end.div_ceil(block) * block);
        let checked = |data: &[u8], at: u64| {
            self.objects.check_read(check, file, at, data).map_err(|e| {
                log_object_error(ino.0, &e);
                Errno::EIO
            })
        };
        let short = || {
            log::warn!(
                "object {} of inode {} ends before the {} bytes the image says",
                String::from_utf8_lossy(&check.path),
                ino.0,
                check.size
            );
            Errno::EIO
        };
        if start_aligned == offset && end_aligned == end {
            let data = buf.get_mut(..want).ok_or(Errno::EIO)?;
            let done = pread_full(ino, file, data, offset)?;
            if done < want {
                return Err(short());
            }
            checked(data, offset)?;
        } else {
            let len = (end_aligned - start_aligned) as usize;
            let mut scratch = vec![0u8; len];
            let done = pread_full(ino, file, &mut scratch, start_aligned)?;
            if done < len {
                return Err(short());
            }
            checked(&scratch, start_aligned)?;
            let from = (offset - start_aligned) as usize;
            buf.get_mut(..want)
                .ok_or(Errno::EIO)?
                .copy_from_slice(&scratch[from..from + want]);
        }
        self.counters.add_read_bytes(want as u64);
        Ok(ReadData::Filled(want))
    }

    fn xattr<R>(
        &self,
        ino: INodeNo,
        size: u32,
        value: impl FnOnce(&InodeRef<'_>) -> Result<Option<Vec<u8>>, ReadError>,
        answer: impl FnOnce(Result<XattrAnswer<'_>, Errno>) -> R,
    ) -> R {
        let result = (|| {
            let image = self.image()?;
            let inode = self.inode(&image, ino)?;
            value(&inode).map_err(|e| damaged(&format!("xattrs of inode {}", ino.0), e))
        })();
        match result {
            Ok(Some(v)) => {
                let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
                if size == 0 {
                    answer(Ok(XattrAnswer::Size(len)))
                } else if len > size {
                    answer(Err(Errno::ERANGE))
                } else {
                    answer(Ok(XattrAnswer::Data(&v)))
                }
            }
            Ok(None) => answer(Err(enodata())),
            Err(e) => answer(Err(e)),
        }
    }
}

/// Read into `buf` from `offset` until it is full or the file ends; the bytes read.
fn pread_full(
    ino: INodeNo,
    file: &std::fs::File,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize, Errno> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        match rustix::io::pread(file, rest, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                log::warn!("reading the object of inode {}: {e}", ino.0);
                return Err(Errno::EIO);
            }
        }
    }
    Ok(done)
}

/// Log damage found while serving and turn it into EIO.
fn damaged(what: &str, e: ReadError) -> Errno {
    log::warn!("damaged image: {what}: {e}");
    Errno::EIO
}

fn log_object_error(ino: u64, e: &ObjectError) {
    log::error!("inode {ino}: {e}; failing the open with EIO");
}

/// `max_write` when serving over io_uring.
const URING_MAX_WRITE: u32 = 1 << 20;

/// The payload buffer an io_uring entry needs: the kernel refuses entries smaller than
/// max(8 KiB, max_write, max_pages pages), where fuser asks for enough pages to cover
/// max_write and the readahead, and the kernel caps that at `fs.fuse.max_pages_limit`.
fn uring_payload(max_write: u32, readahead: u32) -> usize {
    const PAGE: usize = 4096;
    let limit = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(256);
    let wanted = (max_write.max(readahead) as usize)
        .div_ceil(PAGE)
        .min(usize::from(u16::MAX));
    (8192usize)
        .max(max_write as usize)
        .max(wanted.min(limit) * PAGE)
}

/// The access mode bits of open flags.
fn libc_accmode() -> i32 {
    rustix::fs::OFlags::ACCMODE.bits() as i32
}

fn opened_object(obj: &OpenObject) -> Opened {
    match &obj.backing {
        Some(backing) => Opened {
            fh: FH_OBJECT,
            flags: FopenFlags::empty(),
            backing: Some(backing.id()),
        },
        None => Opened {
            fh: FH_OBJECT,
            flags: FopenFlags::FOPEN_KEEP_CACHE,
            backing: None,
        },
    }
}

/// The visible xattr names of `inode`, each followed by a NUL (listxattr format).
pub(crate) fn xattr_names(inode: &InodeRef<'_>) -> Result<Vec<u8>, ReadError> {
    let node = inode.node()?;
    let mut out = Vec::new();
    for x in node.xattrs()? {
        x?.append_name(&mut out);
        out.push(0);
    }
    Ok(out)
}

/// The value of the visible xattr `name` of `inode`.
pub(crate) fn xattr_value(inode: &InodeRef<'_>, name: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
    Ok(inode.node()?.xattr(name)?.map(<[u8]>::to_vec))
}

/// The requests, independent of how they arrive (`/dev/fuse` through fuser, or the io_uring
/// queues of [`crate::uring`]). Each counts itself.
impl ComposefsFs {
    /// Negotiate at INIT; see the comments inside for what and why.
    pub(crate) fn init(&self, config: &mut KernelConfig) {
        // Zero-message opendir: answering the first OPENDIR with ENOSYS makes the kernel skip
        // OPENDIR and RELEASEDIR from then on, caching directories as with FOPEN_CACHE_DIR.
        self.no_opendir.store(
            config
                .capabilities()
                .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT),
            Ordering::Relaxed,
        );
        // READDIRPLUS always, deliberately without READDIRPLUS_AUTO: with AUTO the kernel asks
        // for attributes only in a directory's first batch (or after lookups), so `find` over a
        // large directory costs one LOOKUP per entry (measured: 3036 requests for 6102 entries
        // with AUTO, 223 without).
        for flags in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if let Err(missing) = config.add_capabilities(flags) {
                log::info!("the kernel does not offer {missing:?}");
            }
        }
        // As much readahead as the kernel allows.
        let readahead = match config.set_max_readahead(u32::MAX) {
            Ok(_) => u32::MAX,
            Err(max) => {
                let _ = config.set_max_readahead(max);
                max
            }
        };
        let _ = config.set_max_background(64);
        if self.want_passthrough {
            if !config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
                log::warn!(
                    "passthrough unavailable: the kernel does not offer FUSE_PASSTHROUGH \
                     (Linux 6.9+ with CONFIG_FUSE_PASSTHROUGH); serving reads in userspace"
                );
            } else if let Err(e) = config.set_max_stack_depth(self.stack_depth) {
                log::warn!(
                    "passthrough unavailable: stack depth {} refused (max {e}); serving reads \
                     in userspace",
                    self.stack_depth
                );
            } else if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                log::warn!(
                    "passthrough unavailable: {missing:?} refused; serving reads in userspace"
                );
            } else {
                self.passthrough.store(true, Ordering::Relaxed);
            }
        }
        if self.want_uring {
            if !config
                .capabilities()
                .contains(InitFlags::FUSE_OVER_IO_URING)
            {
                log::warn!(
                    "io_uring unavailable: the kernel does not offer FUSE_OVER_IO_URING (Linux \
                     6.14+ with CONFIG_FUSE_IO_URING, and /sys/module/fuse/parameters/\
                     enable_uring set to Y); serving through /dev/fuse"
                );
            } else if let Err(e) = crate::sys::Ring::new(4) {
                // Once agreed, requests wait for every queue to register: make sure rings can
                // be made at all before agreeing (io_uring may be disabled by sysctl).
                log::warn!(
                    "io_uring unavailable: cannot set up a ring ({e}); serving through /dev/fuse"
                );
            } else if config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
            {
                // Nothing is ever written: a small max_write keeps each queue entry's buffer
                // (which must hold the largest request) at the size of the largest READ.
                let _ = config.set_max_write(URING_MAX_WRITE);
                self.uring_payload
                    .store(uring_payload(URING_MAX_WRITE, readahead), Ordering::Relaxed);
                self.uring.store(true, Ordering::Relaxed);
            }
        }
        // Zero-message open, when there is nothing to do at open: no backing file to register
        // (passthrough). Digests are checked on READ, not at open. The kernel then opens files
        // by itself, keeping their page cache, and a warm read costs no request at all. A
        // missing or damaged object is reported by the first READ instead of the open.
        self.no_open.store(
            !self.passthrough.load(Ordering::Relaxed)
                && config
                    .capabilities()
                    .contains(InitFlags::FUSE_NO_OPEN_SUPPORT),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn lookup(&self, parent: u64, name: &[u8]) -> Result<FileAttr, Errno> {
        self.hit(Op::Lookup);
        self.do_lookup(INodeNo(parent), OsStr::from_bytes(name))
    }

    pub(crate) fn forget(&self, count: u64) {
        // Inodes live as long as the image: nothing to forget.
        for _ in 0..count {
            self.hit(Op::Forget);
        }
    }

    pub(crate) fn getattr(&self, ino: u64) -> Result<FileAttr, Errno> {
        self.hit(Op::Getattr);
        let image = self.image()?;
        attr::attr_for_ino(&image, &self.inos, ino)
            .map_err(|e| damaged(&format!("inode {ino}"), e))?
            .ok_or(Errno::ENOENT)
    }

    pub(crate) fn readlink<R>(
        &self,
        ino: u64,
        answer: impl FnOnce(Result<&[u8], Errno>) -> R,
    ) -> R {
        self.hit(Op::Readlink);
        let result = self.image().and_then(|image| {
            let inode = self.inode(&image, INodeNo(ino))?;
            if inode.file_type() != FileType::Symlink {
                return Err(Errno::EINVAL);
            }
            inode
                .symlink_target()
                .map_err(|e| damaged(&format!("symlink {ino}"), e))
                .map(|t| t.into_owned())
        });
        match result {
            Ok(target) => answer(Ok(&target)),
            Err(e) => answer(Err(e)),
        }
    }

    pub(crate) fn open(&self, ino: u64, flags: i32) -> Result<Opened, Errno> {
        self.hit(Op::Open);
        let read_only = flags & libc_accmode() == OFlags::RDONLY.bits() as i32;
        if self.no_open.load(Ordering::Relaxed) && read_only {
            // The kernel takes this as success, keeps the page cache, and sends no more OPEN
            // or RELEASE for files (the mount is read-only, so no open for writing gets here).
            return Err(Errno::ENOSYS);
        }
        self.open_file(INodeNo(ino), flags)
    }

    /// READ: `buf` must hold at least `min(size, MAX_READ)` bytes (see [`read_size`]).
    pub(crate) fn read<'a>(
        &'a self,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut [u8],
    ) -> Result<ReadData<'a>, Errno> {
        self.hit(Op::Read);
        let ino = INodeNo(ino);
        let size = read_size(size).min(buf.len());
        match fh {
            FH_OBJECT => match self.open.get(ino.0) {
                Some(obj) if obj.file.is_some() => self.read_object(ino, &obj, offset, size, buf),
                // A passthrough file whose READ still reached us: the kernel holds the object,
                // not us, so open it for this read.
                Some(_) => self.read_unopened(ino, offset, size, buf),
                None => {
                    log::warn!("READ of inode {} without an open object", ino.0);
                    Err(Errno::EIO)
                }
            },
            FH_IMAGE => self.read_image(ino, offset, size, buf),
            _ => self.read_unopened(ino, offset, size, buf),
        }
    }

    pub(crate) fn release(&self, ino: u64, fh: u64) {
        self.hit(Op::Release);
        if fh == FH_OBJECT {
            self.open.release(ino);
        }
    }

    pub(crate) fn opendir(&self, ino: u64) -> Result<Opened, Errno> {
        self.hit(Op::Opendir);
        if self.no_opendir.load(Ordering::Relaxed) {
            return Err(Errno::ENOSYS);
        }
        let image = self.image()?;
        if !self.inode(&image, INodeNo(ino))?.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(Opened {
            fh: 0,
            flags: FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            backing: None,
        })
    }

    /// READDIR: `add(ino, cookie, kind, name)` for each entry from `offset` until it returns
    /// true (buffer full).
    pub(crate) fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, fuser::FileType, &[u8]) -> bool,
    ) -> Result<(), Errno> {
        self.hit(Op::Readdir);
        self.walk_dir(INodeNo(ino), offset, |child_ino, cookie, name, inode| {
            let kind = attr::presented_type(inode)
                .map_err(|e| damaged(&format!("inode {child_ino}"), e))?;
            Ok(add(child_ino, cookie, attr::fuse_kind(kind), name))
        })
    }

    /// READDIRPLUS: `add(cookie, name, attr)` for each entry from `offset` until it returns
    /// true (buffer full).
    pub(crate) fn readdirplus(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &FileAttr) -> bool,
    ) -> Result<(), Errno> {
        self.hit(Op::Readdirplus);
        self.walk_dir(INodeNo(ino), offset, |child_ino, cookie, name, inode| {
            let attr = self.attr(child_ino, inode)?;
            Ok(add(cookie, name, &attr))
        })
    }

    pub(crate) fn releasedir(&self) {
        self.hit(Op::Releasedir);
    }

    pub(crate) fn statfs(&self) -> Result<Statfs, Errno> {
        self.hit(Op::Statfs);
        let image = self.image()?;
        Ok(Statfs {
            blocks: u64::from(image.blocks()),
            files: image.inos(),
            bsize: BLOCK_SIZE,
            namelen: 255,
        })
    }

    pub(crate) fn getxattr<R>(
        &self,
        ino: u64,
        name: &[u8],
        size: u32,
        answer: impl FnOnce(Result<XattrAnswer<'_>, Errno>) -> R,
    ) -> R {
        self.hit(Op::Getxattr);
        self.xattr(INodeNo(ino), size, |inode| xattr_value(inode, name), answer)
    }

    pub(crate) fn listxattr<R>(
        &self,
        ino: u64,
        size: u32,
        answer: impl FnOnce(Result<XattrAnswer<'_>, Errno>) -> R,
    ) -> R {
        self.hit(Op::Listxattr);
        self.xattr(
            INodeNo(ino),
            size,
            |inode| xattr_names(inode).map(Some),
            answer,
        )
    }

    /// ACCESS (only asked without default_permissions; the mount is read-only).
    pub(crate) fn access(&self, mask: i32) -> Result<(), Errno> {
        self.hit(Op::Other);
        if mask & rustix::fs::Access::WRITE_OK.bits() as i32 != 0 {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    /// Requests answered with a fixed error: FLUSH, POLL and LSEEK get ENOSYS, which the kernel
    /// remembers (no FLUSH round trip per close(), files always ready, the generic lseek), IOCTL
    /// gets ENOTTY, anything that would write EROFS, anything unknown ENOSYS.
    pub(crate) fn refuse(&self, errno: Errno) -> Errno {
        self.hit(Op::Other);
        errno
    }
}

/// The fuser side: requests read from `/dev/fuse` by fuser's workers.
#[derive(Debug)]
pub(crate) struct FuserFs(pub(crate) Arc<ComposefsFs>);

impl fuser::Filesystem for FuserFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.0.init(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.lookup(parent.0, name.as_bytes()) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        self.0.forget(1);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.0.readlink(ino.0, |r| match r {
            Ok(target) => reply.data(target),
            Err(e) => reply.error(e),
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.0.open(ino.0, flags.0) {
            Ok(Opened {
                fh,
                flags,
                backing: Some(id),
            }) => crate::sys::reply_passthrough(reply, FileHandle(fh), flags, id),
            Ok(Opened { fh, flags, .. }) => reply.opened(FileHandle(fh), flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        with_read_buf(read_size(size), |buf| {
            match self.0.read(ino.0, fh.0, offset, size, buf) {
                Ok(ReadData::Filled(n)) => reply.data(buf.get(..n).unwrap_or_default()),
                Ok(ReadData::Mapped(data)) => reply.data(data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(self.0.refuse(Errno::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.release(ino.0, fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.opendir(ino.0) {
            Ok(o) => reply.opened(FileHandle(o.fh), o.flags),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = self.0.readdir(ino.0, offset, |child, cookie, kind, name| {
            reply.add(INodeNo(child), cookie, kind, OsStr::from_bytes(name))
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let result = self.0.readdirplus(ino.0, offset, |cookie, name, attr| {
            reply.add(
                attr.ino,
                cookie,
                OsStr::from_bytes(name),
                &TTL,
                attr,
                Generation(0),
            )
        });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.releasedir();
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.0.statfs() {
            Ok(st) => reply.statfs(st.blocks, 0, 0, st.files, 0, st.bsize, st.namelen, st.bsize),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.0
            .getxattr(ino.0, name.as_bytes(), size, |r| reply_xattr(reply, r));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.0.listxattr(ino.0, size, |r| reply_xattr(reply, r));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.0.access(mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(self.0.refuse(Errno::ENOTTY));
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(self.0.refuse(Errno::ENOSYS));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        reply.error(self.0.refuse(Errno::ENOSYS));
    }
}

fn reply_xattr(reply: ReplyXattr, answer: Result<XattrAnswer<'_>, Errno>) {
    match answer {
        Ok(XattrAnswer::Size(n)) => reply.size(n),
        Ok(XattrAnswer::Data(v)) => reply.data(v),
        Err(e) => reply.error(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::testutil::image_from_dump;

    #[test]
    fn cookies_round_trip() {
        for pos in [(0, 0), (0, 1), (0, 341), (7, 0), (1 << 40, 200)] {
            let c = cookie_of(pos);
            assert!(c > COOKIE_DOTDOT);
            assert_eq!(position_of(c), pos);
        }
    }

    #[test]
    fn xattrs_are_filtered_and_unescaped() {
        let dump = "/ 0 40755 2 0 0 0 0.0 - - - user.root=r\n\
                    /f 3 100644 1 0 0 0 0.0 - abc - user.a=1 trusted.overlay.foo=bar \
                    security.selinux=x trusted.plain=p user.overlay.keep=k\n\
                    /g 0 100644 1 0 0 0 0.0 - - -\n\
                    /wh 0 20000 1 0 0 0 0.0 - - - user.w=1\n\
                    /big 5000 100644 1 0 0 0 0.0 ab/cd - -\n";
        let image = image_from_dump(dump);
        let img = Image::open(&image).unwrap();
        let root = img.root().unwrap();
        let node = |name: &[u8]| {
            let e = img.lookup_child(&root, name).unwrap().unwrap();
            img.inode(e.nid).unwrap()
        };
        let names = |inode: &InodeRef<'_>| -> Vec<String> {
            let raw = xattr_names(inode).unwrap();
            let mut v: Vec<String> = raw
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty())
                .map(|n| String::from_utf8(n.to_vec()).unwrap())
                .collect();
            v.sort();
            v
        };

        // The root's opaque marker is hidden.
        assert_eq!(names(&root), ["user.root"]);
        assert_eq!(xattr_value(&root, b"trusted.overlay.opaque").unwrap(), None);

        let f = node(b"f");
        assert_eq!(
            names(&f),
            [
                "security.selinux",
                "trusted.overlay.foo",
                "trusted.plain",
                "user.a",
                "user.overlay.keep"
            ]
        );
        assert_eq!(
            xattr_value(&f, b"trusted.overlay.foo").unwrap().as_deref(),
            Some(&b"bar"[..])
        );
        assert_eq!(
            xattr_value(&f, b"trusted.overlay.overlay.foo").unwrap(),
            None
        );
        assert_eq!(xattr_value(&f, b"user.nope").unwrap(), None);
        assert!(names(&node(b"g")).is_empty());

        // The escaped whiteout keeps only its own xattrs, not the markers.
        assert_eq!(names(&node(b"wh")), ["user.w"]);
        // An external file hides metacopy and redirect.
        let big = node(b"big");
        assert!(big
            .raw_xattr(b"trusted.overlay.redirect")
            .unwrap()
            .is_some());
        assert!(names(&big).is_empty());
        assert_eq!(
            xattr_value(&big, b"trusted.overlay.redirect").unwrap(),
            None
        );
        assert_eq!(
            xattr_value(&big, b"trusted.overlay.metacopy").unwrap(),
            None
        );
    }
}
