//! The FUSE filesystem: every request is answered from the mapped image through the validating
//! reader; nothing is built or cached per inode except open objects.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cfs_format::erofs::reader::{
    DirEntryRef, FileType, Image, InodeRef, Nid, ReadError, RegularData,
};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request,
};

use crate::attr::{self, InoMap, BLOCK_SIZE, ROOT_INO};
use crate::counters::{Counters, Op};
use crate::mmap::ImageMap;
use crate::objects::{ObjectError, ObjectRef, ObjectStore, OpenObject, OpenTable, RecentObjects};

/// Entry and attribute timeout: the image never changes, so "forever" (about 31 years; the
/// kernel clamps it to what jiffies can express).
const TTL: Duration = Duration::from_secs(1_000_000_000);

/// File handle of files served from the image (inline data, sparse files).
const FH_IMAGE: u64 = 1;
/// File handle of files served from an object (see [`OpenTable`]).
const FH_OBJECT: u64 = 2;

/// Largest READ we answer in one piece (the kernel never asks for more than max_pages pages,
/// at most 256 pages = 1 MiB by default; fuser's buffer holds 16 MiB).
const MAX_READ: usize = 16 << 20;

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
    /// Per-worker buffer for READ replies assembled from an object or from split image data.
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
    no_opendir: bool,
    /// The kernel opens files without OPEN/RELEASE once told so (ENOSYS); see `init`.
    no_open: bool,
    /// Objects opened for READs that come without an OPEN (zero-message open).
    recent: RecentObjects,
}

impl ComposefsFs {
    /// A filesystem over `map`, which [`validate`](crate::session) has checked.
    pub(crate) fn new(
        map: ImageMap,
        root: Nid,
        objects: ObjectStore,
        counters: Arc<Counters>,
        want_passthrough: bool,
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
            no_opendir: false,
            no_open: false,
            recent: RecentObjects::default(),
        }
    }

    fn hit(&self, op: Op) {
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

    fn do_open(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        // Fast path: the inode's object is already open (and verified).
        if let Some(obj) = self.open.reopen(ino.0) {
            return self.reply_object(reply, &obj);
        }
        let object = match self.object_of(ino) {
            Ok(Some(object)) => object,
            Ok(None) => return reply.opened(FileHandle(FH_IMAGE), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => return reply.error(e),
        };
        let file = match self.objects.open(&object) {
            Ok(file) => file,
            Err(e) => {
                log_object_error(ino.0, &e);
                return reply.error(Errno::EIO);
            }
        };
        let obj = self.open.insert_with(ino.0, || {
            let backing = if self.passthrough.load(Ordering::Relaxed) {
                match reply.open_backing(file.as_fd()) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        if self.passthrough.swap(false, Ordering::Relaxed) {
                            log::warn!(
                                "passthrough disabled: registering a backing file failed ({e}); \
                                 serving reads in userspace"
                            );
                        }
                        None
                    }
                }
            } else {
                None
            };
            OpenObject { file, backing }
        });
        self.reply_object(reply, &obj);
    }

    fn reply_object(&self, reply: ReplyOpen, obj: &OpenObject) {
        match &obj.backing {
            Some(id) => reply.opened_passthrough(FileHandle(FH_OBJECT), FopenFlags::empty(), id),
            None => reply.opened(FileHandle(FH_OBJECT), FopenFlags::FOPEN_KEEP_CACHE),
        }
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
                ObjectRef::new(digest, payload).map(Some).map_err(|e| {
                    log_object_error(ino.0, &e);
                    Errno::EIO
                })
            }
        }
    }

    fn read_image(&self, ino: INodeNo, offset: u64, size: usize, reply: ReplyData) {
        let data = (|| {
            let image = self.image()?;
            let inode = self.inode(&image, ino)?;
            let node = inode
                .node()
                .map_err(|e| damaged(&format!("inode {}", ino.0), e))?;
            let data = node
                .regular_data()
                .map_err(|e| damaged(&format!("inode {}", ino.0), e))?;
            Ok((data, node.size()))
        })();
        match data {
            Ok((Some(RegularData::Inline(data)), _)) => {
                let len = data.len();
                if offset >= len {
                    return reply.data(&[]);
                }
                let want = size.min(usize::try_from(len - offset).unwrap_or(usize::MAX));
                // One piece: reply straight from the mapping.
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
                self.counters.add_read_bytes(want as u64);
                match slice {
                    Some(s) => reply.data(s),
                    None => with_read_buf(want, |buf| {
                        let n = data.read_at(offset, buf);
                        reply.data(buf.get(..n).unwrap_or_default());
                    }),
                }
            }
            Ok((Some(RegularData::Sparse), len)) => {
                let want = size.min(usize::try_from(len.saturating_sub(offset)).unwrap_or(0));
                self.counters.add_read_bytes(want as u64);
                with_read_buf(want, |buf| {
                    buf.fill(0);
                    reply.data(buf);
                });
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    /// A READ of a file the kernel opened without asking (zero-message open): find where the
    /// data lives now.
    fn read_unopened(&self, ino: INodeNo, offset: u64, size: usize, reply: ReplyData) {
        // The usual case, a file read in many requests: its object is open already, and the
        // inode need not be parsed again.
        if let Some(obj) = self.recent.find(ino.0) {
            return self.read_object(ino, &obj, offset, size, reply);
        }
        let object = match self.object_of(ino) {
            Ok(Some(object)) => object,
            Ok(None) => return self.read_image(ino, offset, size, reply),
            Err(e) => return reply.error(e),
        };
        let obj = self.recent.get_or_open(ino.0, || {
            self.objects.open(&object).map_err(|e| {
                log_object_error(ino.0, &e);
                Errno::EIO
            })
        });
        match obj {
            Ok(obj) => self.read_object(ino, &obj, offset, size, reply),
            Err(e) => reply.error(e),
        }
    }

    fn read_object(
        &self,
        ino: INodeNo,
        obj: &OpenObject,
        offset: u64,
        size: usize,
        reply: ReplyData,
    ) {
        with_read_buf(size, |buf| {
            let mut done = 0;
            while done < buf.len() {
                let Some(rest) = buf.get_mut(done..) else {
                    break;
                };
                match rustix::io::pread(&obj.file, rest, offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => {
                        log::warn!("reading the object of inode {}: {e}", ino.0);
                        return reply.error(Errno::EIO);
                    }
                }
            }
            self.counters.add_read_bytes(done as u64);
            reply.data(buf.get(..done).unwrap_or_default());
        });
    }

    fn do_xattr(
        &self,
        ino: INodeNo,
        size: u32,
        reply: ReplyXattr,
        value: impl FnOnce(&InodeRef<'_>) -> Result<Option<Vec<u8>>, ReadError>,
    ) {
        let result = (|| {
            let image = self.image()?;
            let inode = self.inode(&image, ino)?;
            value(&inode).map_err(|e| damaged(&format!("xattrs of inode {}", ino.0), e))
        })();
        match result {
            Ok(Some(v)) => reply_xattr(reply, size, &v),
            Ok(None) => reply.error(enodata()),
            Err(e) => reply.error(e),
        }
    }
}

/// Log damage found while serving and turn it into EIO.
fn damaged(what: &str, e: ReadError) -> Errno {
    log::warn!("damaged image: {what}: {e}");
    Errno::EIO
}

fn log_object_error(ino: u64, e: &ObjectError) {
    log::error!("inode {ino}: {e}; failing the open with EIO");
}

/// Answer a getxattr/listxattr: the size for a size-0 probe, ERANGE when the buffer is small.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    if size == 0 {
        reply.size(len);
    } else if len > size {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
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

impl fuser::Filesystem for ComposefsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Zero-message opendir: answering the first OPENDIR with ENOSYS makes the kernel skip
        // OPENDIR and RELEASEDIR from then on, caching directories as with FOPEN_CACHE_DIR.
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
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
        if let Err(max) = config.set_max_readahead(u32::MAX) {
            let _ = config.set_max_readahead(max);
        }
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
        // Zero-message open, when there is nothing to do at open: no backing file to register
        // (passthrough) and no digest to check (verify=off). The kernel then opens files by
        // itself, keeping their page cache, and a warm read costs no request at all. A missing
        // object is reported by the first READ instead of the open.
        self.no_open = !self.passthrough.load(Ordering::Relaxed)
            && !self.objects.verifies()
            && config
                .capabilities()
                .contains(InitFlags::FUSE_NO_OPEN_SUPPORT);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.hit(Op::Lookup);
        match self.do_lookup(parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, _ino: INodeNo, _nlookup: u64) {
        // Inodes live as long as the image: nothing to forget.
        self.hit(Op::Forget);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.hit(Op::Getattr);
        let result = self.image().and_then(|image| {
            attr::attr_for_ino(&image, &self.inos, ino.0)
                .map_err(|e| damaged(&format!("inode {}", ino.0), e))?
                .ok_or(Errno::ENOENT)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.hit(Op::Readlink);
        let result = self.image().and_then(|image| {
            let inode = self.inode(&image, ino)?;
            if inode.file_type() != FileType::Symlink {
                return Err(Errno::EINVAL);
            }
            inode
                .symlink_target()
                .map_err(|e| damaged(&format!("symlink {}", ino.0), e))
                .map(|t| t.into_owned())
        });
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.hit(Op::Open);
        if self.no_open && flags.acc_mode() == OpenAccMode::O_RDONLY {
            // The kernel takes this as success, keeps the page cache, and sends no more OPEN
            // or RELEASE for files (the mount is read-only, so no open for writing gets here).
            return reply.error(Errno::ENOSYS);
        }
        self.do_open(ino, flags, reply);
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
        self.hit(Op::Read);
        let size = (size as usize).min(MAX_READ);
        match fh.0 {
            FH_OBJECT => match self.open.get(ino.0) {
                Some(obj) => self.read_object(ino, &obj, offset, size, reply),
                None => {
                    log::warn!("READ of inode {} without an open object", ino.0);
                    reply.error(Errno::EIO)
                }
            },
            FH_IMAGE => self.read_image(ino, offset, size, reply),
            _ => self.read_unopened(ino, offset, size, reply),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush: ENOSYS once makes the kernel
        // stop sending FLUSH, which would otherwise cost a synchronous round trip per close().
        self.hit(Op::Other);
        reply.error(Errno::ENOSYS);
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
        self.hit(Op::Release);
        if fh.0 == FH_OBJECT {
            self.open.release(ino.0);
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.hit(Op::Opendir);
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        let result = self.image().and_then(|image| {
            let inode = self.inode(&image, ino)?;
            if inode.is_dir() {
                Ok(())
            } else {
                Err(Errno::ENOTDIR)
            }
        });
        match result {
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
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
        self.hit(Op::Readdir);
        let result = self.walk_dir(ino, offset, |child_ino, cookie, name, inode| {
            let kind = attr::presented_type(inode)
                .map_err(|e| damaged(&format!("inode {child_ino}"), e))?;
            Ok(reply.add(
                INodeNo(child_ino),
                cookie,
                attr::fuse_kind(kind),
                OsStr::from_bytes(name),
            ))
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
        self.hit(Op::Readdirplus);
        let result = self.walk_dir(ino, offset, |child_ino, cookie, name, inode| {
            let attr = self.attr(child_ino, inode)?;
            Ok(reply.add(
                INodeNo(child_ino),
                cookie,
                OsStr::from_bytes(name),
                &TTL,
                &attr,
                Generation(0),
            ))
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
        self.hit(Op::Releasedir);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.hit(Op::Statfs);
        match self.image() {
            Ok(image) => reply.statfs(
                u64::from(image.blocks()),
                0,
                0,
                image.inos(),
                0,
                BLOCK_SIZE,
                255,
                BLOCK_SIZE,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.hit(Op::Getxattr);
        self.do_xattr(ino, size, reply, |inode| {
            xattr_value(inode, name.as_bytes())
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.hit(Op::Listxattr);
        self.do_xattr(ino, size, reply, |inode| xattr_names(inode).map(Some));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // Only asked without default_permissions; the mount is read-only.
        self.hit(Op::Other);
        if mask.contains(AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
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
        self.hit(Op::Other);
        reply.error(Errno::ENOTTY);
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
        // ENOSYS once makes the kernel treat files as always ready.
        self.hit(Op::Other);
        reply.error(Errno::ENOSYS);
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
        // ENOSYS once makes the kernel use its generic lseek for good.
        self.hit(Op::Other);
        reply.error(Errno::ENOSYS);
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
