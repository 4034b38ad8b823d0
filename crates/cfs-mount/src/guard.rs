//! Unmounting: [`unmount`] and the RAII [`MountGuard`].

use std::path::{Path, PathBuf};

use rustix::mount::UnmountFlags;

use crate::error::MountError;

/// `umount2(target, 0)`—Unmounts the filesystem mounted at `target` (EBUSY while in use).
pub fn unmount(target: &Path) -> Result<(), MountError> {
    umount2(target, UnmountFlags::empty())
}

/// `umount2(target, MNT_DETACH)`—Detaches the mount at `target` now; the kernel frees it once
/// nothing uses it any more.
pub fn unmount_lazy(target: &Path) -> Result<(), MountError> {
    umount2(target, UnmountFlags::DETACH)
}

fn umount2(target: &Path, flags: UnmountFlags) -> Result<(), MountError> {
    rustix::mount::unmount(target, flags).map_err(|errno| MountError::Unmount {
        target: target.to_owned(),
        errno,
    })
}

/// A mount point that is lazily unmounted (`MNT_DETACH`) when the guard is dropped, also
/// during a panic. A failure to unmount is reported on stderr, never as a panic.
/// [`MountGuard::disarm`] keeps the mount.
#[derive(Debug)]
#[must_use = "dropping the guard unmounts right away"]
pub struct MountGuard {
    /// `None` once disarmed or unmounted.
    target: Option<PathBuf>,
}

impl MountGuard {
    /// Take charge of the mount at `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        MountGuard {
            target: Some(target.into()),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.target.as_deref().unwrap_or(Path::new(""))
    }

    /// Keep the mount: forget it without unmounting. Returns the mount point.
    pub fn disarm(mut self) -> PathBuf {
        self.target.take().unwrap_or_default()
    }

    /// Unmount now (not lazily), reporting failure. On failure (e.g. EBUSY) the guard still
    /// detaches the mount lazily as it goes.
    pub fn unmount(mut self) -> Result<(), MountError> {
        let Some(target) = self.target.as_deref() else {
            return Ok(());
        };
        unmount(target)?;
        self.target = None;
        Ok(())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(target) = self.target.take() {
            if let Err(err) = unmount_lazy(&target) {
                eprintln!("warning: {err} (the mount is left behind)");
            }
        }
    }
}
