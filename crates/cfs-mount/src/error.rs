//! [`MountError`]: which mount step failed, on what, with which errno and what the kernel said.

use std::fmt;
use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

/// The messages the kernel queued on a filesystem context while configuring it, in order.
///
/// With the new mount API the kernel does not print parameter errors to the kernel log; it
/// queues lines such as `e overlay: failed to resolve '/x': -2` on the `fsopen` fd, and reading
/// that fd returns them. An empty log displays as nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelLog(pub Vec<String>);

impl KernelLog {
    /// Whether the kernel said nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The messages, each with its `e `/`w `/`i ` severity prefix.
    pub fn messages(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for KernelLog {
    /// ` [kernel: msg1; msg2]`, or nothing when there are no messages.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        write!(f, " [kernel: {}]", self.0.join("; "))
    }
}

/// Why a mount operation failed. Each variant names the step (`fsconfig lowerdir+`,
/// `fsmount overlay`, `move_mount to /x`, …), the object involved and the errno.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// `fsopen(fstype)` failed: the kernel lacks the filesystem (ENODEV) or we lack
    /// CAP_SYS_ADMIN (EPERM).
    #[error("fsopen {fstype}: {}", fsopen_reason(*.errno, .fstype))]
    Fsopen {
        /// `erofs` or `overlay`.
        fstype: &'static str,
        /// The error.
        errno: Errno,
    },
    /// Setting one parameter on a filesystem context failed.
    #[error("fsconfig {key}{} ({fstype}): {}{log}", show_value(.value.as_deref()), os(*.errno))]
    Fsconfig {
        /// `erofs` or `overlay`.
        fstype: &'static str,
        /// The parameter, e.g. `lowerdir+`.
        key: String,
        /// Its value, if it is not a flag.
        value: Option<String>,
        /// The error.
        errno: Errno,
        /// What the kernel said.
        log: KernelLog,
    },
    /// The kernel rejected `lowerdir+`/`datadir+` with EINVAL: it predates Linux 6.7, which
    /// introduced them.
    #[error(
        "fsconfig {key} (overlay): {}: kernel too old (needs ≥ 6.7 for lowerdir+/datadir+){log}",
        os(*.errno)
    )]
    KernelTooOld {
        /// `lowerdir+` or `datadir+`.
        key: &'static str,
        /// The error (EINVAL).
        errno: Errno,
        /// What the kernel said.
        log: KernelLog,
    },
    /// `fsconfig(FSCONFIG_CMD_CREATE)` failed: the parameters were accepted one by one but do
    /// not make a filesystem together (bad image, missing layer, …).
    #[error("fsconfig create {fstype}: {}{}", os(*.errno), log_or_dmesg(.log))]
    Create {
        /// `erofs` or `overlay`.
        fstype: &'static str,
        /// The error.
        errno: Errno,
        /// What the kernel said.
        log: KernelLog,
    },
    /// `fsmount` failed.
    #[error("fsmount {fstype}: {}{}", os(*.errno), log_or_dmesg(.log))]
    Fsmount {
        /// `erofs` or `overlay`.
        fstype: &'static str,
        /// The error.
        errno: Errno,
        /// What the kernel said.
        log: KernelLog,
    },
    /// A directory named in the request could not be opened.
    #[error("open {what} {}: {}", .path.display(), os(*.errno))]
    OpenDir {
        /// `basedir`, `upperdir` or `workdir`.
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The error.
        errno: Errno,
    },
    /// The request contradicts itself (e.g. `workdir` without `upperdir`).
    #[error("invalid mount request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: &'static str,
    },
    /// The image's composefs header could not be read or is not a composefs header.
    #[error("composefs image header: {reason}")]
    BadImage {
        /// What is wrong.
        reason: String,
    },
    /// `move_mount` of the detached mount onto `target` failed.
    #[error("move_mount to {}: {}", .target.display(), os(*.errno))]
    Attach {
        /// The mount point.
        target: PathBuf,
        /// The error (ENOTDIR: the mount point is not a directory).
        errno: Errno,
    },
    /// The mount point exists but is not a directory (the kernel says EINVAL).
    #[error("move_mount to {}: the mount point is not a directory", .target.display())]
    NotADirectory {
        /// The mount point.
        target: PathBuf,
    },
    /// `umount2(target)` failed.
    #[error("umount {}: {}", .target.display(), os(*.errno))]
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// The error.
        errno: Errno,
    },
}

impl MountError {
    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            MountError::Fsopen { errno, .. }
            | MountError::Fsconfig { errno, .. }
            | MountError::KernelTooOld { errno, .. }
            | MountError::Create { errno, .. }
            | MountError::Fsmount { errno, .. }
            | MountError::OpenDir { errno, .. }
            | MountError::Attach { errno, .. }
            | MountError::Unmount { errno, .. } => Some(*errno),
            MountError::NotADirectory { .. } => Some(Errno::NOTDIR),
            MountError::InvalidRequest { .. } | MountError::BadImage { .. } => None,
        }
    }

    /// What the kernel logged on the filesystem context, for the steps that have one.
    pub fn kernel_log(&self) -> Option<&KernelLog> {
        match self {
            MountError::Fsconfig { log, .. }
            | MountError::KernelTooOld { log, .. }
            | MountError::Create { log, .. }
            | MountError::Fsmount { log, .. } => Some(log),
            _ => None,
        }
    }
}

/// An errno as the familiar `strerror` text with its number.
fn os(errno: Errno) -> io::Error {
    io::Error::from_raw_os_error(errno.raw_os_error())
}

/// The context log, or a pointer to dmesg: filesystems report many superblock problems (bad
/// image, missing layers) with `printk` rather than on the context.
fn log_or_dmesg(log: &KernelLog) -> String {
    if log.is_empty() {
        " (no message on the fs context; details may be in the kernel log, see dmesg)".to_owned()
    } else {
        log.to_string()
    }
}

fn show_value(value: Option<&str>) -> String {
    value.map(|v| format!("={v}")).unwrap_or_default()
}

fn fsopen_reason(errno: Errno, fstype: &str) -> String {
    match errno {
        Errno::NODEV => format!("{}: the kernel has no {fstype} filesystem", os(errno)),
        Errno::PERM => format!("{}: mounting needs CAP_SYS_ADMIN", os(errno)),
        Errno::NOSYS => format!(
            "{}: the kernel has no new mount API (needs ≥ 5.2)",
            os(errno)
        ),
        other => os(other).to_string(),
    }
}
