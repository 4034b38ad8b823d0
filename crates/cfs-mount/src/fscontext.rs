//! [`FsContext`]: a filesystem context of the new mount API (`fsopen` → `fsconfig`… →
//! `fsmount`), whose errors carry the step and the messages the kernel queued on the context.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;
use rustix::mount::{
    fsconfig_create, fsconfig_set_fd, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen,
    FsMountFlags, FsOpenFlags, MountAttrFlags,
};

use crate::error::{KernelLog, MountError};

/// Longest message we accept from the context log. The kernel refuses (EMSGSIZE) a read
/// shorter than the pending message and drops it, so this must be generous.
const LOG_BUF: usize = 4096;
/// Stop draining after this many messages (the kernel keeps at most 8).
const LOG_MAX: usize = 32;

/// An open filesystem context.
#[derive(Debug)]
pub(crate) struct FsContext {
    fd: OwnedFd,
    fstype: &'static str,
}

impl FsContext {
    /// `fsopen(fstype, FSOPEN_CLOEXEC)`—Creates a filesystem context.
    pub(crate) fn open(fstype: &'static str) -> Result<Self, MountError> {
        let fd = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
            .map_err(|errno| MountError::Fsopen { fstype, errno })?;
        Ok(FsContext { fd, fstype })
    }

    /// `fsconfig(fd, FSCONFIG_SET_FLAG, key, NULL, 0)`—Sets a flag parameter.
    pub(crate) fn set_flag(&self, key: &str) -> Result<(), MountError> {
        fsconfig_set_flag(&self.fd, key).map_err(|errno| self.config_error(key, None, errno))
    }

    /// `fsconfig(fd, FSCONFIG_SET_STRING, key, value, 0)`—Sets a string parameter.
    pub(crate) fn set_string(&self, key: &str, value: &OsStr) -> Result<(), MountError> {
        self.try_set_string(key, value)
            .map_err(|errno| self.config_error(key, Some(value), errno))
    }

    /// Like [`FsContext::set_string`] but returns the bare errno, for callers that retry or
    /// ignore specific failures. The kernel's messages stay queued until [`FsContext::log`].
    pub(crate) fn try_set_string(&self, key: &str, value: &OsStr) -> Result<(), Errno> {
        fsconfig_set_string(&self.fd, key, value)
    }

    /// `fsconfig(fd, FSCONFIG_SET_FD, key, NULL, aux)`—Passes a file descriptor as a parameter
    /// (overlay layers on Linux ≥ 6.13). Returns the bare errno, like
    /// [`FsContext::try_set_string`].
    pub(crate) fn try_set_fd(&self, key: &str, fd: BorrowedFd<'_>) -> Result<(), Errno> {
        fsconfig_set_fd(&self.fd, key, fd)
    }

    /// `fsconfig(fd, FSCONFIG_CMD_CREATE, NULL, NULL, 0)`—Creates the superblock.
    pub(crate) fn create(&self) -> Result<(), MountError> {
        fsconfig_create(&self.fd).map_err(|errno| MountError::Create {
            fstype: self.fstype,
            errno,
            log: self.log(),
        })
    }

    /// `fsmount(fd, FSMOUNT_CLOEXEC, attrs)`—Makes a detached mount of the created superblock.
    pub(crate) fn mount(&self, attrs: MountAttrFlags) -> Result<OwnedFd, MountError> {
        fsmount(&self.fd, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|errno| {
            MountError::Fsmount {
                fstype: self.fstype,
                errno,
                log: self.log(),
            }
        })
    }

    /// `read(fd)` until ENODATA—Takes the queued kernel messages off the context.
    pub(crate) fn log(&self) -> KernelLog {
        let mut messages = Vec::new();
        let mut buf = vec![0u8; LOG_BUF];
        while messages.len() < LOG_MAX {
            match rustix::io::read(self.fd.as_fd(), &mut buf[..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                    messages.push(text.trim_end().to_owned());
                }
            }
        }
        KernelLog(messages)
    }

    /// An [`MountError::Fsconfig`] for `key`, collecting the kernel's messages.
    pub(crate) fn config_error(
        &self,
        key: &str,
        value: Option<&OsStr>,
        errno: Errno,
    ) -> MountError {
        MountError::Fsconfig {
            fstype: self.fstype,
            key: key.to_owned(),
            value: value.map(|v| v.to_string_lossy().into_owned()),
            errno,
            log: self.log(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::can_mount;

    #[test]
    fn parameter_errors_carry_the_kernel_message() {
        if !can_mount("cfs-mount: fs context log") {
            return;
        }
        let ctx = FsContext::open("overlay").expect("fsopen overlay");
        let err = ctx
            .set_string("no-such-option", OsStr::new("x"))
            .expect_err("unknown parameter");
        assert_eq!(err.errno(), Some(Errno::INVAL));
        assert_eq!(
            err.to_string(),
            "fsconfig no-such-option=x (overlay): Invalid argument (os error 22) \
             [kernel: e overlay: Unknown parameter 'no-such-option']"
        );
        // The log was drained: the next error carries only its own messages.
        let err = ctx.set_flag("bogus-flag").expect_err("unknown flag");
        assert_eq!(
            err.kernel_log().map(KernelLog::messages),
            Some(&["e overlay: Unknown parameter 'bogus-flag'".to_owned()][..])
        );
    }

    #[test]
    fn fsopen_of_an_unknown_filesystem_says_so() {
        if !can_mount("cfs-mount: fsopen error") {
            return;
        }
        let err = FsContext::open("no-such-fs").expect_err("no such filesystem");
        assert_eq!(
            err.to_string(),
            "fsopen no-such-fs: No such device (os error 19): the kernel has no no-such-fs \
             filesystem"
        );
    }
}
