//! The few kernel calls that rustix has no safe wrapper for. This is the only module of
//! `cfs-repo` that may use `unsafe`; each block states the contract it relies on.
#![allow(unsafe_code)]

use std::os::fd::AsFd;

use cfs_format::Algorithm;
use rustix::io::Errno;
use rustix::ioctl::{self, opcode, Opcode, Setter};

/// `struct fsverity_enable_arg` from `<linux/fsverity.h>` (128 bytes).
#[repr(C)]
#[derive(Debug)]
struct FsverityEnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

const _: () = assert!(size_of::<FsverityEnableArg>() == 128);

/// `FS_IOC_ENABLE_VERITY` = `_IOW('f', 133, struct fsverity_enable_arg)`.
const FS_IOC_ENABLE_VERITY: Opcode = opcode::write::<FsverityEnableArg>(b'f', 133);

/// Why fs-verity could not be enabled on a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnableVerityError {
    /// The kernel or the filesystem has no fs-verity (`ENOTTY`/`EOPNOTSUPP`); the normal case on
    /// kernels built without `CONFIG_FS_VERITY`.
    #[error("fs-verity is not supported on this filesystem")]
    Unsupported,
    /// fs-verity is already enabled (`EEXIST`).
    #[error("fs-verity is already enabled")]
    AlreadyEnabled,
    /// Some process still has the file open for writing (`ETXTBSY`).
    #[error("file is still open for writing")]
    OpenForWrite,
    /// Any other failure.
    #[error("cannot enable fs-verity: {0}")]
    Other(Errno),
}

/// `ioctl(fd, FS_IOC_ENABLE_VERITY, {version 1, algorithm, block size 4096, no salt, no
/// signature})`—Seal `fd`'s file with fs-verity. `fd` must be open read-only and no writable
/// descriptor of the file may exist.
///
/// # References
///  - <https://docs.kernel.org/filesystems/fsverity.html#fs-ioc-enable-verity>
#[doc(alias = "FS_IOC_ENABLE_VERITY")]
pub fn enable_verity(fd: impl AsFd, algorithm: Algorithm) -> Result<(), EnableVerityError> {
    let arg = FsverityEnableArg {
        version: 1,
        hash_algorithm: u32::from(algorithm.kernel_id()),
        block_size: 4096,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: FS_IOC_ENABLE_VERITY is an _IOW ioctl whose argument is a pointer to a
    // `struct fsverity_enable_arg`, which `FsverityEnableArg` reproduces field for field (size
    // asserted above); salt and signature pointers are null with zero sizes.
    let setter = unsafe { Setter::<FS_IOC_ENABLE_VERITY, FsverityEnableArg>::new(arg) };
    // SAFETY: the kernel only reads the argument struct, which outlives the call.
    match unsafe { ioctl::ioctl(fd, setter) } {
        Ok(()) => Ok(()),
        Err(Errno::NOTTY | Errno::OPNOTSUPP) => Err(EnableVerityError::Unsupported),
        Err(Errno::EXIST) => Err(EnableVerityError::AlreadyEnabled),
        Err(Errno::TXTBSY) => Err(EnableVerityError::OpenForWrite),
        Err(e) => Err(EnableVerityError::Other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_verity_reports_a_mapped_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"hello world").expect("write");
        let f = std::fs::File::open(&path).expect("open");
        match enable_verity(&f, Algorithm::Sha256) {
            Ok(()) | Err(EnableVerityError::AlreadyEnabled) => {}
            Err(EnableVerityError::Unsupported) => {
                eprintln!("NOTE: fs-verity unsupported here; only the error mapping was checked")
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }
}
