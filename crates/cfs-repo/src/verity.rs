//! Kernel fs-verity: enabling it on a file and measuring a file's digest.
//!
//! This is the only module of the crate with `unsafe`: two `ioctl`s whose argument layouts come
//! from `<linux/fsverity.h>`. Errno values are mapped to meaning here, once, so callers match on
//! variants. Kernels without fs-verity answer `EOPNOTSUPP`/`ENOTTY`, which callers treat as "use
//! the userspace digest".
#![allow(unsafe_code)]

use std::os::fd::AsFd;

use cfs_format::{Algorithm, Digest};
use rustix::io::Errno;
use rustix::ioctl::{self, opcode, Opcode, Setter, Updater};

/// Why measuring failed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The filesystem or kernel has no fs-verity.
    #[error("fs-verity is not supported by this filesystem or kernel")]
    NotSupported,
    /// The file has no fs-verity enabled.
    #[error("the file does not have fs-verity enabled")]
    NotEnabled,
    /// The digest is longer than any algorithm we know (EOVERFLOW).
    #[error("the file's fs-verity digest is larger than expected")]
    DigestTooLarge,
    /// The kernel returned an algorithm or size we do not know.
    #[error("unknown fs-verity hash algorithm {0}")]
    UnknownAlgorithm(u16),
    /// Any other error.
    #[error("measuring fs-verity failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why enabling failed.
#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    /// The filesystem or kernel has no fs-verity.
    #[error("fs-verity is not supported by this filesystem or kernel")]
    NotSupported,
    /// fs-verity is already enabled on the file.
    #[error("fs-verity is already enabled")]
    AlreadyEnabled,
    /// The file is still open for writing somewhere.
    #[error("the file is still open for writing")]
    FileOpenForWrite,
    /// Any other error.
    #[error("enabling fs-verity failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Map `FS_IOC_MEASURE_VERITY` errnos.
pub fn measure_errno(e: Errno) -> MeasureError {
    match e {
        Errno::NOTTY | Errno::OPNOTSUPP => MeasureError::NotSupported,
        Errno::NODATA => MeasureError::NotEnabled,
        Errno::OVERFLOW => MeasureError::DigestTooLarge,
        other => MeasureError::Io(other.into()),
    }
}

/// Map `FS_IOC_ENABLE_VERITY` errnos.
pub fn enable_errno(e: Errno) -> EnableError {
    match e {
        Errno::NOTTY | Errno::OPNOTSUPP => EnableError::NotSupported,
        Errno::EXIST => EnableError::AlreadyEnabled,
        Errno::TXTBSY => EnableError::FileOpenForWrite,
        other => EnableError::Io(other.into()),
    }
}

/// `struct fsverity_digest` followed by room for the largest digest.
#[repr(C)]
struct MeasureArg {
    digest_algorithm: u16,
    digest_size: u16,
    digest: [u8; 64],
}

/// `struct fsverity_enable_arg`.
#[repr(C)]
struct EnableArg {
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

/// The ioctl number is computed from the header size only (the digest is a flexible array).
const FS_IOC_MEASURE_VERITY: Opcode = opcode::read_write::<[u16; 2]>(b'f', 134);
const FS_IOC_ENABLE_VERITY: Opcode = opcode::write::<EnableArg>(b'f', 133);

/// Read the kernel's fs-verity digest of an open file.
pub fn measure(fd: impl AsFd) -> Result<Digest, MeasureError> {
    let mut arg = MeasureArg {
        digest_algorithm: 0,
        digest_size: 64,
        digest: [0; 64],
    };
    // SAFETY: the opcode is FS_IOC_MEASURE_VERITY and `MeasureArg` has the layout of
    // `struct fsverity_digest` with `digest_size` (64) bytes of digest room after it, which is
    // all the kernel writes.
    let call = unsafe { Updater::<FS_IOC_MEASURE_VERITY, MeasureArg>::new(&mut arg) };
    // SAFETY: `call` is an ioctl description built for this opcode above.
    unsafe { ioctl::ioctl(fd.as_fd(), call) }.map_err(measure_errno)?;
    let alg = match arg.digest_algorithm {
        1 => Algorithm::Sha256,
        2 => Algorithm::Sha512,
        other => return Err(MeasureError::UnknownAlgorithm(other)),
    };
    let len = usize::from(arg.digest_size);
    if len != alg.digest_len() {
        return Err(MeasureError::UnknownAlgorithm(arg.digest_algorithm));
    }
    Digest::from_bytes(&arg.digest[..len])
        .ok_or(MeasureError::UnknownAlgorithm(arg.digest_algorithm))
}

/// Enable fs-verity (4096-byte blocks, no salt) on a file opened read-only.
pub fn enable(fd: impl AsFd, algorithm: Algorithm) -> Result<(), EnableError> {
    let arg = EnableArg {
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
    // SAFETY: the opcode is FS_IOC_ENABLE_VERITY and `EnableArg` has the layout of
    // `struct fsverity_enable_arg`; no salt or signature pointers are passed.
    let call = unsafe { Setter::<FS_IOC_ENABLE_VERITY, EnableArg>::new(arg) };
    // SAFETY: `call` is an ioctl description built for this opcode above.
    unsafe { ioctl::ioctl(fd.as_fd(), call) }.map_err(enable_errno)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping() {
        assert!(matches!(
            measure_errno(Errno::OPNOTSUPP),
            MeasureError::NotSupported
        ));
        assert!(matches!(
            measure_errno(Errno::NOTTY),
            MeasureError::NotSupported
        ));
        assert!(matches!(
            measure_errno(Errno::NODATA),
            MeasureError::NotEnabled
        ));
        assert!(matches!(
            measure_errno(Errno::OVERFLOW),
            MeasureError::DigestTooLarge
        ));
        assert!(matches!(measure_errno(Errno::IO), MeasureError::Io(_)));
        assert!(matches!(
            enable_errno(Errno::OPNOTSUPP),
            EnableError::NotSupported
        ));
        assert!(matches!(
            enable_errno(Errno::EXIST),
            EnableError::AlreadyEnabled
        ));
        assert!(matches!(
            enable_errno(Errno::TXTBSY),
            EnableError::FileOpenForWrite
        ));
    }

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<EnableArg>(), 128);
        assert_eq!(std::mem::size_of::<MeasureArg>(), 4 + 64);
    }

    #[test]
    fn measure_on_a_plain_file_reports_unsupported_or_missing() {
        let f = tempfile::tempfile().expect("tempfile");
        match measure(&f) {
            Err(MeasureError::NotSupported) | Err(MeasureError::NotEnabled) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
