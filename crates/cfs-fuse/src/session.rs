//! Mounting and running a session: [`serve`] and [`FuseSession`].

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cfs_format::erofs::reader::{Image, Nid, ReadError};
use fuser::{BackgroundSession, Session, SessionACL};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{MountFlags, UnmountFlags};

use crate::counters::Counters;
use crate::fs::{ComposefsFs, FuserFs};
use crate::mmap::ImageMap;
use crate::objects::ObjectStore;
use crate::options::FuseOptions;
use crate::uring::UringWorkers;

/// Where external file contents come from: a directory of objects (`XX/<rest-of-digest>`),
/// e.g. a repository's `objects/` or a `mkcomposefs --digest-store`.
#[derive(Debug)]
pub enum ObjectsDir {
    /// A path, opened at [`serve`] time.
    Path(PathBuf),
    /// An open directory (an `O_PATH` fd is enough).
    Fd(OwnedFd),
}

impl From<PathBuf> for ObjectsDir {
    fn from(p: PathBuf) -> Self {
        ObjectsDir::Path(p)
    }
}

impl From<&Path> for ObjectsDir {
    fn from(p: &Path) -> Self {
        ObjectsDir::Path(p.to_path_buf())
    }
}

impl From<OwnedFd> for ObjectsDir {
    fn from(fd: OwnedFd) -> Self {
        ObjectsDir::Fd(fd)
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    /// The image file could not be mapped.
    #[error("cannot map the image: {0}")]
    MapImage(#[source] io::Error),
    /// The image is not a valid composefs image (checked at startup: header, superblock, root
    /// inode and root directory).
    #[error("invalid composefs image: {0}")]
    BadImage(#[from] ReadError),
    /// The objects directory could not be opened.
    #[error("cannot open the objects directory {path}: {source}")]
    Objects {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The mount point is unusable.
    #[error("mount point {path}: {source}")]
    Mountpoint {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Mounting failed.
    #[error("mounting FUSE at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The FUSE session failed (handshake, worker threads).
    #[error("FUSE session: {0}")]
    Session(#[source] io::Error),
    /// Unmounting failed.
    #[error("unmounting {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The mount was detached but the kernel kept the connection alive (files still open) and
    /// it could not be aborted; the workers keep serving those files in the background.
    #[error("{path} is unmounted, but open files keep the FUSE connection alive")]
    Busy {
        /// The mount point.
        path: PathBuf,
    },
}

/// How long [`FuseSession::unmount`] waits for the connection to end by itself before it
/// aborts it through fusectl.
const UNMOUNT_GRACE: Duration = Duration::from_secs(2);
/// How long it waits after aborting.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Statfs magic numbers of stacking filesystems: objects on them need passthrough stack
/// depth 2.
const STACKED_FS_MAGICS: [u64; 3] = [
    0x794c_7630, // overlayfs
    0x6573_5546, // FUSE
    0xf15f,      // ecryptfs
];

/// Check what startup promises to check, in O(1): the header and superblock, the root inode,
/// the root directory's first entries and the root's xattrs. Returns the root NID.
pub(crate) fn validate(bytes: &[u8]) -> Result<Nid, ReadError> {
    let image = Image::open(bytes)?;
    let root = image.root()?;
    for entry in root.dir_entries()?.take(512) {
        entry?;
    }
    for x in root.node()?.xattrs()? {
        x?;
    }
    Ok(image.root_nid())
}

/// Serve the composefs image `image` over FUSE at `mountpoint`, with external file contents
/// from `objects`: [`mount`], then [`MountedFs::serve`].
///
/// Returns once the mount is in place and answering (the kernel handshake is done and the
/// mount point shows the new filesystem). The image is mapped, not read: startup does O(1)
/// work whatever the image size, after validating the header, superblock, root inode and root
/// directory. Mounting needs CAP_SYS_ADMIN (the kernel's `mount("fuse")`).
pub fn serve(
    image: File,
    objects: ObjectsDir,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<FuseSession, FuseError> {
    mount(image, objects, mountpoint, opts)?.serve()
}

/// Check everything and mount the image at `mountpoint`, on the calling thread and without
/// starting any thread: the mount point shows the new filesystem when this returns, and the
/// kernel holds every request on it until [`MountedFs::serve`] answers. So a caller that must
/// return once the mount is in place can fork in between and serve from the child (`cfsctl
/// mount --fuse`), which no thread would survive.
pub fn mount(
    image: File,
    objects: ObjectsDir,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<MountedFs, FuseError> {
    let started = Instant::now();
    let map = ImageMap::new(image).map_err(FuseError::MapImage)?;
    let root = validate(map.bytes())?;

    let objects_fd = match objects {
        ObjectsDir::Fd(fd) => fd,
        ObjectsDir::Path(path) => rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FuseError::Objects {
            path,
            source: e.into(),
        })?,
    };
    let stack_depth = match rustix::fs::fstatfs(&objects_fd) {
        Ok(st) if STACKED_FS_MAGICS.contains(&(st.f_type as u64)) => 2,
        _ => 1,
    };

    let mountpoint_err = |source: io::Error| FuseError::Mountpoint {
        path: mountpoint.to_path_buf(),
        source,
    };
    let mountpoint = mountpoint.canonicalize().map_err(mountpoint_err)?;
    let before = rustix::fs::stat(&mountpoint).map_err(|e| mountpoint_err(e.into()))?;
    if !rustix::fs::FileType::from_raw_mode(before.st_mode).is_dir() {
        return Err(mountpoint_err(io::Error::from(
            io::ErrorKind::NotADirectory,
        )));
    }

    let counters = Arc::new(Counters::new());
    let fs = ComposefsFs::new(
        map,
        root,
        ObjectStore::new(
            objects_fd,
            opts.verify,
            opts.trees
                .as_deref()
                .filter(|_| opts.verify)
                .and_then(crate::verify::open_tree_dir),
        ),
        Arc::clone(&counters),
        opts.passthrough,
        opts.uring,
        stack_depth,
    );

    let dev_fuse =
        mount_fuse(&mountpoint, opts.allow_other).map_err(|source| FuseError::Mount {
            path: mountpoint.clone(),
            source,
        })?;
    Ok(MountedFs {
        fs: Some(fs),
        dev_fuse: Some(dev_fuse),
        mountpoint,
        before_dev: before.st_dev,
        counters,
        opts: opts.clone(),
        started,
    })
}

/// An image mounted by [`mount`] and not served yet. Dropping it unmounts it; after a fork,
/// the process that does not serve lets go of it with [`release`](Self::release).
#[derive(Debug)]
pub struct MountedFs {
    fs: Option<ComposefsFs>,
    dev_fuse: Option<OwnedFd>,
    mountpoint: PathBuf,
    before_dev: u64,
    counters: Arc<Counters>,
    opts: FuseOptions,
    started: Instant,
}

impl MountedFs {
    /// Where it is mounted (canonical).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Close this process's handles on the mount without unmounting it: another process (a
    /// fork) serves it.
    pub fn release(mut self) {
        self.fs = None;
        self.dev_fuse = None;
    }

    /// Answer the kernel's handshake and start the workers. Returns once the mount answers.
    pub fn serve(mut self) -> Result<FuseSession, FuseError> {
        let (Some(fs), Some(dev_fuse)) = (self.fs.take(), self.dev_fuse.take()) else {
            return Err(FuseError::Session(io::Error::other("already released")));
        };
        let mountpoint = std::mem::take(&mut self.mountpoint);
        let opts = &self.opts;
        let (bg, uring) = match start(fs, dev_fuse, opts) {
            Ok(started) => started,
            Err(e) => {
                let _ = rustix::mount::unmount(&mountpoint, UnmountFlags::DETACH);
                return Err(FuseError::Session(e));
            }
        };
        let mut session = FuseSession {
            bg: Some(bg),
            uring,
            mountpoint,
            dev: 0,
            counters: Arc::clone(&self.counters),
        };
        // Answering: a stat of the mount point goes through the new filesystem.
        match rustix::fs::stat(&session.mountpoint) {
            Ok(st) if st.st_dev != self.before_dev => session.dev = st.st_dev,
            Ok(_) => {
                return Err(FuseError::Mount {
                    path: session.mountpoint.clone(),
                    source: io::Error::other("the mount did not appear at the mount point"),
                })
            }
            Err(e) => {
                // Our mount is there but does not answer: take it away again.
                let _ = rustix::mount::unmount(&session.mountpoint, UnmountFlags::DETACH);
                return Err(FuseError::Mount {
                    path: session.mountpoint.clone(),
                    source: e.into(),
                });
            }
        }
        let workers = match &session.uring {
            Some(u) => format!("{} io_uring queue worker(s)", u.queues()),
            None => format!("{} worker thread(s)", opts.worker_threads()),
        };
        log::info!(
            "serving at {} ({workers}{}{}; ready in {:.2} ms)",
            session.mountpoint.display(),
            if opts.passthrough {
                ", passthrough requested"
            } else {
                ""
            },
            if opts.verify { "" } else { ", verify=off" },
            self.started.elapsed().as_secs_f64() * 1e3,
        );
        Ok(session)
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        // Mounted but never served (an error on the way, or dropped): nothing else will ever
        // answer this mount, so take it away. Closing /dev/fuse first fails any waiting
        // request instead of leaving it hanging.
        if self.dev_fuse.take().is_some() {
            let _ = rustix::mount::unmount(&self.mountpoint, UnmountFlags::DETACH);
        }
    }
}

/// Mount a FUSE filesystem at `mountpoint` (read-only, kernel permission checks) and return
/// the `/dev/fuse` fd serving it.
fn mount_fuse(mountpoint: &Path, allow_other: bool) -> io::Result<OwnedFd> {
    let dev_fuse = rustix::fs::open("/dev/fuse", OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/fuse: {e}")))?;
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        dev_fuse.as_raw_fd(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let data = CString::new(data).map_err(io::Error::other)?;
    rustix::mount::mount(
        "composefs-fuse",
        mountpoint,
        "fuse",
        MountFlags::RDONLY,
        data.as_c_str(),
    )
    .map_err(|e| {
        let hint = if e == rustix::io::Errno::PERM {
            " (mounting FUSE this way needs CAP_SYS_ADMIN)"
        } else {
            ""
        };
        io::Error::new(e.kind(), format!("{e}{hint}"))
    })?;
    Ok(dev_fuse)
}

/// Handshake on `dev_fuse` and start the workers: fuser's, and the io_uring queues' when
/// the kernel agreed to them. fuser's workers are started either way (whether io_uring is
/// agreed is only known after the handshake); with io_uring they only see FORGET and INTERRUPT.
fn start(
    fs: ComposefsFs,
    dev_fuse: OwnedFd,
    opts: &FuseOptions,
) -> io::Result<(BackgroundSession, Option<UringWorkers>)> {
    let fs = Arc::new(fs);
    let acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let threads = opts.worker_threads();
    let mut config = fuser::Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = threads > 1;
    config.acl = acl;
    let session = Session::from_fd(FuserFs(Arc::clone(&fs)), dev_fuse, acl, config)?;
    let dev = Arc::new(session.as_fd().try_clone_to_owned()?);
    fs.set_dev_fuse(Arc::clone(&dev));
    let uring = match fs.uring_payload() {
        // The kernel holds every request until all queues have registered, so a failure here
        // cannot fall back: the caller unmounts.
        Some(payload) => Some(UringWorkers::start(&fs, &dev, payload)?),
        None => None,
    };
    Ok((session.spawn()?, uring))
}

/// A running FUSE session.
///
/// The workers run on their own threads. [`wait`](Self::wait) blocks until the mount goes away
/// from outside (`umount`), [`unmount`](Self::unmount) ends it, [`detach`](Self::detach) leaves
/// it serving in the background. Dropping the handle unmounts lazily without waiting.
#[derive(Debug)]
pub struct FuseSession {
    bg: Option<BackgroundSession>,
    /// The io_uring queue workers, stopped after fuser's once the connection has ended.
    uring: Option<UringWorkers>,
    mountpoint: PathBuf,
    dev: u64,
    counters: Arc<Counters>,
}

impl FuseSession {
    /// The request counters, live.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The (canonical) mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `st_dev` of the mounted filesystem.
    pub fn device(&self) -> u64 {
        self.dev
    }

    /// Whether the session has ended (the mount is gone and the workers have stopped).
    pub fn is_finished(&self) -> bool {
        self.bg.as_ref().is_none_or(|bg| bg.guard.is_finished())
            && self.uring.as_ref().is_none_or(UringWorkers::is_finished)
    }

    /// Serve until the filesystem is unmounted from outside.
    pub fn wait(mut self) -> Result<(), FuseError> {
        let result = match self.bg.take() {
            Some(bg) => bg.join().map_err(FuseError::Session),
            None => Ok(()),
        };
        self.stop_uring();
        result
    }

    /// Stop the io_uring workers (once the connection has ended they have nothing to do).
    fn stop_uring(&mut self) {
        if let Some(uring) = self.uring.take() {
            uring.stop();
        }
    }

    /// Unmount (lazily: the mount disappears at once) and wait for the workers to stop. When
    /// open files keep the connection alive longer than a grace period (2 s), the connection is
    /// aborted through fusectl (`/sys/fs/fuse/connections`); without fusectl this returns
    /// [`FuseError::Busy`] and the workers keep serving the open files in the background until
    /// they are closed (or the process exits).
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.detach_mount()?;
        let Some(bg) = self.bg.take() else {
            return Ok(());
        };
        if !wait_finished(&bg, UNMOUNT_GRACE) {
            let minor = rustix::fs::minor(self.dev);
            let abort = format!("/sys/fs/fuse/connections/{minor}/abort");
            let aborted = match std::fs::write(&abort, b"1") {
                Ok(()) => {
                    log::warn!(
                        "files still open on {}: aborted the FUSE connection",
                        self.mountpoint.display()
                    );
                    true
                }
                Err(e) => {
                    log::warn!(
                        "files still open on {}; cannot abort the connection ({abort}: {e})",
                        self.mountpoint.display()
                    );
                    false
                }
            };
            if !aborted || !wait_finished(&bg, ABORT_GRACE) {
                let uring = self.uring.take();
                std::thread::spawn(move || {
                    drop(bg.join());
                    if let Some(u) = uring {
                        u.stop();
                    }
                });
                return Err(FuseError::Busy {
                    path: self.mountpoint.clone(),
                });
            }
        }
        let result = bg.join().map_err(FuseError::Session);
        self.stop_uring();
        result
    }

    /// Keep serving in the background until the filesystem is unmounted from outside.
    pub fn detach(mut self) {
        if let Some(bg) = self.bg.take() {
            let uring = self.uring.take();
            std::thread::spawn(move || {
                if let Err(e) = bg.join() {
                    log::warn!("FUSE session ended with an error: {e}");
                }
                if let Some(u) = uring {
                    u.stop();
                }
            });
        }
    }

    /// Lazily unmount our filesystem if it is still at the mount point (and not something
    /// mounted over it since).
    fn detach_mount(&self) -> Result<(), FuseError> {
        if let Ok(st) = rustix::fs::stat(&self.mountpoint) {
            if st.st_dev != self.dev {
                return Ok(());
            }
        }
        match rustix::mount::unmount(&self.mountpoint, UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(FuseError::Unmount {
                path: self.mountpoint.clone(),
                source: e.into(),
            }),
        }
    }
}

impl Drop for FuseSession {
    fn drop(&mut self) {
        if let Some(bg) = self.bg.take() {
            if !bg.guard.is_finished() {
                if let Err(e) = self.detach_mount() {
                    log::warn!("{e}");
                }
            }
            let uring = self.uring.take();
            std::thread::spawn(move || {
                drop(bg.join());
                if let Some(u) = uring {
                    u.stop();
                }
            });
        }
    }
}

/// Poll until the session's thread has finished, at most `timeout`.
fn wait_finished(bg: &BackgroundSession, timeout: Duration) -> bool {
    let start = Instant::now();
    while !bg.guard.is_finished() {
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::testutil::image_from_dump;

    #[test]
    fn handles_can_move_between_threads() {
        fn send<T: Send>() {}
        fn sync<T: Send + Sync>() {}
        send::<FuseSession>();
        send::<FuseError>();
        sync::<Counters>();
        sync::<ComposefsFs>();
    }

    #[test]
    fn validation_rejects_truncated_and_corrupt_images() {
        let image = image_from_dump("/ 0 40755 2 0 0 0 0.0 - - -\n/a 1 100644 1 0 0 0 0.0 - x -\n");
        validate(&image).unwrap();
        for len in [0, 100, 1024, 1100, image.len() / 2, image.len() - 1] {
            assert!(validate(&image[..len]).is_err(), "truncated to {len}");
        }
        let mut bad = image.clone();
        bad[0] ^= 0xff;
        assert!(validate(&bad).is_err());
        // Root inode turned into garbage: root NID points past the end.
        let mut bad = image.clone();
        bad[1024 + 14] = 0xff;
        bad[1024 + 15] = 0xff;
        assert!(validate(&bad).is_err());
    }
}
