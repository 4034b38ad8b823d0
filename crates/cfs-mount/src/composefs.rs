//! The composefs mount (docs/formats.md §7.1): the image as a detached, file-backed EROFS mount,
//! stacked as the only regular lower layer of an overlayfs whose data-only layers are the
//! object directories.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use cfs_format::erofs::format::{COMPOSEFS_FLAGS_HAS_ACL, COMPOSEFS_HEADER_SIZE, COMPOSEFS_MAGIC};
use rustix::fs::{open, Mode, OFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{move_mount, MountAttrFlags, MoveMountFlags};

use crate::error::MountError;
use crate::fscontext::FsContext;
use crate::guard::MountGuard;

/// What overlayfs checks about the fs-verity digests recorded in the image's metacopy xattrs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerityMode {
    /// No `verity=` option: object data is read unchecked.
    #[default]
    Off,
    /// `verity=require`: every external file must have fs-verity with the recorded digest;
    /// reads fail with EIO otherwise (always, on kernels without fs-verity).
    Require,
    /// `verity=require` when the kernel knows the option (≥ 6.6), else nothing.
    Try,
}

/// A directory handed to overlayfs as a layer: a path, or an open directory.
#[derive(Debug)]
pub enum LayerDir<'a> {
    /// Opened by [`mount_composefs`] (relative paths resolve against the current directory).
    Path(PathBuf),
    /// Already open (`O_RDONLY|O_DIRECTORY` or `O_PATH`).
    Fd(BorrowedFd<'a>),
}

impl From<PathBuf> for LayerDir<'_> {
    fn from(path: PathBuf) -> Self {
        LayerDir::Path(path)
    }
}

impl From<&Path> for LayerDir<'_> {
    fn from(path: &Path) -> Self {
        LayerDir::Path(path.to_owned())
    }
}

impl<'a> From<BorrowedFd<'a>> for LayerDir<'a> {
    fn from(fd: BorrowedFd<'a>) -> Self {
        LayerDir::Fd(fd)
    }
}

/// Everything [`mount_composefs`] needs.
#[derive(Debug)]
pub struct MountRequest<'a> {
    /// The EROFS image, open for reading.
    pub image: BorrowedFd<'a>,
    /// The overlay's source is `composefs:<source_name>` (the image id or file name).
    pub source_name: String,
    /// Object directories: one `datadir+` each, searched in order.
    pub basedirs: Vec<LayerDir<'a>>,
    /// Overlay verity checking.
    pub verity: VerityMode,
    /// A writable upper layer (needs `workdir` on the same filesystem).
    pub upperdir: Option<PathBuf>,
    /// overlayfs' work directory for `upperdir`.
    pub workdir: Option<PathBuf>,
    /// Mount read-write (only meaningful with `upperdir`); read-only otherwise.
    pub read_write: bool,
    /// Keep POSIX ACLs on the EROFS mount; `false` passes `noacl`, as C does for images whose
    /// header lacks `HAS_ACL` (saves an xattr lookup per access).
    pub acl: bool,
}

impl<'a> MountRequest<'a> {
    /// A read-only request without layers or verity for `image`, with [`MountRequest::acl`]
    /// taken from the image's composefs header (see [`image_has_acl`]).
    pub fn new(image: BorrowedFd<'a>, source_name: impl Into<String>) -> Result<Self, MountError> {
        Ok(MountRequest {
            image,
            source_name: source_name.into(),
            basedirs: Vec::new(),
            verity: VerityMode::Off,
            upperdir: None,
            workdir: None,
            read_write: false,
            acl: image_has_acl(image)?,
        })
    }
}

/// Whether the composefs header of `image` sets `HAS_ACL` (some inode carries a POSIX ACL).
/// Reads only the 32-byte header; fails if its magic is wrong.
pub fn image_has_acl(image: impl AsFd) -> Result<bool, MountError> {
    let mut header = [0u8; COMPOSEFS_HEADER_SIZE];
    let n =
        rustix::io::pread(image.as_fd(), &mut header[..], 0).map_err(|e| MountError::BadImage {
            reason: format!("read: {}", std::io::Error::from(e)),
        })?;
    let field = |at: usize| {
        header
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if n < COMPOSEFS_HEADER_SIZE || field(0) != Some(COMPOSEFS_MAGIC) {
        return Err(MountError::BadImage {
            reason: "not a composefs image (bad magic or too short)".to_owned(),
        });
    }
    Ok(field(8).unwrap_or(0) & COMPOSEFS_FLAGS_HAS_ACL != 0)
}

/// An overlayfs mount that is not attached anywhere yet. Dropping it without
/// [`DetachedMount::attach`] discards the mount.
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
}

impl DetachedMount {
    /// The mount's root (an `O_PATH` fd); usable with `openat` even while detached.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Give up the wrapper and keep the fd (e.g. to hand it to a client).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// `move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`—Attaches the mount at
    /// `target`, a directory. The mount then stays after this process exits. Our fd is closed
    /// afterwards (an open fd on the mount would keep a plain `umount` failing with EBUSY); on
    /// failure the mount is discarded.
    pub fn attach(self, target: &Path) -> Result<(), MountError> {
        move_mount(
            &self.fd,
            "",
            CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|errno| {
            // The kernel answers EINVAL when a directory mount meets a non-directory; say so.
            let is_dir = rustix::fs::stat(target).map(|st| {
                rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
            });
            match is_dir {
                Ok(false) => MountError::NotADirectory {
                    target: target.to_owned(),
                },
                _ => MountError::Attach {
                    target: target.to_owned(),
                    errno,
                },
            }
        })
    }

    /// [`DetachedMount::attach`], returning a guard that detaches the mount again on drop.
    pub fn attach_guarded(self, target: &Path) -> Result<MountGuard, MountError> {
        self.attach(target)?;
        Ok(MountGuard::new(target))
    }
}

impl AsFd for DetachedMount {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Mount a composefs image (docs/formats.md §7.1) and return the overlay, detached.
///
/// 1. EROFS: `fsopen("erofs")`, `ro`, `noacl` unless [`MountRequest::acl`],
///    `source=/proc/self/fd/<image>`, create, `fsmount` (never attached; only the overlay ever
///    appears in the mount table).
/// 2. overlayfs: `fsopen("overlay")`, `source=composefs:<name>`, `metacopy=on`,
///    `redirect_dir=on`, `verity=require` if asked, `upperdir`/`workdir`, `lowerdir+` = the
///    EROFS mount, `datadir+` per basedir, create, `fsmount` (`MOUNT_ATTR_RDONLY` unless
///    read-write).
///
/// Layers are passed as file descriptors (`FSCONFIG_SET_FD`, Linux ≥ 6.13) or, where the
/// kernel refuses that, as `/proc/self/fd/<n>` strings. The overlay holds its layers itself,
/// so the EROFS mount and the directory fds are closed before returning.
///
/// There is no legacy `mount(2)` or loop-device path: this needs Linux ≥ 6.12 (file-backed
/// EROFS) and ≥ 6.7 (`lowerdir+`/`datadir+`; older kernels get [`MountError::KernelTooOld`]).
pub fn mount_composefs(req: &MountRequest<'_>) -> Result<DetachedMount, MountError> {
    mount_with(req, Passing::FdThenPath)
}

/// How [`set_layer`] hands a layer to overlayfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Passing {
    /// `FSCONFIG_SET_FD`, falling back to a `/proc/self/fd/<n>` string.
    FdThenPath,
    /// Only the `/proc/self/fd/<n>` string (what kernels 6.7–6.12 need; tests force it).
    #[cfg_attr(not(test), allow(dead_code))]
    PathOnly,
}

fn mount_with(req: &MountRequest<'_>, passing: Passing) -> Result<DetachedMount, MountError> {
    if req.workdir.is_some() != req.upperdir.is_some() {
        return Err(MountError::InvalidRequest {
            reason: "upperdir and workdir must be given together",
        });
    }
    let erofs = mount_erofs(req.image, req.acl)?;

    let overlay = FsContext::open("overlay")?;
    overlay.set_string(
        "source",
        OsStr::new(&format!("composefs:{}", req.source_name)),
    )?;
    overlay.set_string("metacopy", OsStr::new("on"))?;
    overlay.set_string("redirect_dir", OsStr::new("on"))?;
    match req.verity {
        VerityMode::Off => {}
        VerityMode::Require => overlay.set_string("verity", OsStr::new("require"))?,
        VerityMode::Try => match overlay.try_set_string("verity", OsStr::new("require")) {
            Ok(()) => {}
            // Before 6.6 overlayfs does not know the option; Try means "if supported".
            Err(Errno::INVAL) => drop(overlay.log()),
            Err(errno) => {
                return Err(overlay.config_error("verity", Some(OsStr::new("require")), errno))
            }
        },
    }
    if let (Some(upper), Some(work)) = (&req.upperdir, &req.workdir) {
        let upper_fd = open_dir("upperdir", upper)?;
        set_layer(&overlay, "upperdir", upper_fd.as_fd(), passing)?;
        let work_fd = open_dir("workdir", work)?;
        set_layer(&overlay, "workdir", work_fd.as_fd(), passing)?;
    }
    set_layer(&overlay, "lowerdir+", erofs.as_fd(), passing)?;
    for basedir in &req.basedirs {
        match basedir {
            LayerDir::Path(path) => {
                let fd = open_dir("basedir", path)?;
                set_layer(&overlay, "datadir+", fd.as_fd(), passing)?;
            }
            LayerDir::Fd(fd) => set_layer(&overlay, "datadir+", *fd, passing)?,
        }
    }
    overlay.create()?;
    let attrs = if req.read_write {
        MountAttrFlags::empty()
    } else {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    };
    let fd = overlay.mount(attrs)?;
    // The overlay holds its own reference to the EROFS mount; ours can go.
    drop(erofs);
    Ok(DetachedMount { fd })
}

/// The detached, read-only EROFS mount of `image` (file-backed, Linux ≥ 6.12).
fn mount_erofs(image: BorrowedFd<'_>, acl: bool) -> Result<OwnedFd, MountError> {
    let erofs = FsContext::open("erofs")?;
    erofs.set_flag("ro")?;
    if !acl {
        erofs.set_flag("noacl")?;
    }
    erofs.set_string("source", OsStr::new(&proc_fd_path(image)))?;
    erofs.create()?;
    erofs.mount(MountAttrFlags::empty())
}

/// `open(path, O_RDONLY|O_DIRECTORY|O_CLOEXEC)`—Opens a layer directory.
fn open_dir(what: &'static str, path: &Path) -> Result<OwnedFd, MountError> {
    open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| MountError::OpenDir {
        what,
        path: path.to_owned(),
        errno,
    })
}

/// `/proc/self/fd/<n>`: a path the kernel resolves to the open file or mount behind `fd`.
fn proc_fd_path(fd: BorrowedFd<'_>) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Set an overlay layer parameter (`lowerdir+`, `datadir+`, `upperdir`, `workdir`) to `fd`:
/// by fd where the kernel takes it, else as a `/proc/self/fd/<n>` string. EINVAL for the
/// string form of `lowerdir+`/`datadir+` means the kernel predates them.
fn set_layer(
    ctx: &FsContext,
    key: &'static str,
    fd: BorrowedFd<'_>,
    passing: Passing,
) -> Result<(), MountError> {
    if passing == Passing::FdThenPath {
        if ctx.try_set_fd(key, fd).is_ok() {
            return Ok(());
        }
        // Forget whatever the refused attempt logged; the retry's messages are what matter.
        drop(ctx.log());
    }
    let path = proc_fd_path(fd);
    match ctx.try_set_string(key, OsStr::new(&path)) {
        Ok(()) => Ok(()),
        Err(Errno::INVAL) if matches!(key, "lowerdir+" | "datadir+") => {
            Err(MountError::KernelTooOld {
                key,
                errno: Errno::INVAL,
                log: ctx.log(),
            })
        }
        Err(errno) => Err(ctx.config_error(key, Some(OsStr::new(&path)), errno)),
    }
}

#[cfg(test)]
mod tests;
