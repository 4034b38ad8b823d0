//! The FUSE wire format, for requests that arrive on io_uring queues rather than through fuser:
//! decoding request headers and arguments, encoding replies. Native byte order, like the kernel.
//!
//! Only what a read-only server answers is here; layouts follow `<linux/fuse.h>` (7.40+).

use std::time::{SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType};

/// Opcodes we answer or refuse by name.
pub(crate) mod opcode {
    pub(crate) const LOOKUP: u32 = 1;
    pub(crate) const GETATTR: u32 = 3;
    pub(crate) const READLINK: u32 = 5;
    pub(crate) const OPEN: u32 = 14;
    pub(crate) const READ: u32 = 15;
    pub(crate) const STATFS: u32 = 17;
    pub(crate) const RELEASE: u32 = 18;
    pub(crate) const GETXATTR: u32 = 22;
    pub(crate) const LISTXATTR: u32 = 23;
    pub(crate) const OPENDIR: u32 = 27;
    pub(crate) const READDIR: u32 = 28;
    pub(crate) const RELEASEDIR: u32 = 29;
    pub(crate) const ACCESS: u32 = 34;
    pub(crate) const IOCTL: u32 = 39;
    pub(crate) const READDIRPLUS: u32 = 44;

    /// Requests that would change the filesystem (SETATTR, SYMLINK, MKNOD, MKDIR, UNLINK,
    /// RMDIR, RENAME, LINK, WRITE, SETXATTR, REMOVEXATTR, CREATE, FALLOCATE, RENAME2,
    /// COPY_FILE_RANGE, TMPFILE).
    pub(crate) const MUTATING: [u32; 16] =
        [4, 6, 8, 9, 10, 11, 12, 13, 16, 21, 24, 35, 43, 45, 47, 51];
}

/// `struct fuse_in_header`: 40 bytes.
pub(crate) const IN_HEADER_LEN: usize = 40;
/// `struct fuse_out_header`: 16 bytes.
pub(crate) const OUT_HEADER_LEN: usize = 16;
/// `struct fuse_entry_out`: 128 bytes.
pub(crate) const ENTRY_OUT_LEN: usize = 128;
/// `struct fuse_attr_out`: 104 bytes.
pub(crate) const ATTR_OUT_LEN: usize = 104;
/// `struct fuse_open_out`: 16 bytes.
pub(crate) const OPEN_OUT_LEN: usize = 16;
/// `struct fuse_statfs_out`: 80 bytes.
pub(crate) const STATFS_OUT_LEN: usize = 80;
/// Where the name starts in `struct fuse_dirent`.
const DIRENT_NAME_OFFSET: usize = 24;
/// `FOPEN_PASSTHROUGH`.
pub(crate) const FOPEN_PASSTHROUGH: u32 = 1 << 7;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s.copy_from_slice(&v.to_ne_bytes());
    }
}

/// The fields of `struct fuse_in_header` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InHeader {
    pub(crate) opcode: u32,
    pub(crate) unique: u64,
    pub(crate) nodeid: u64,
}

impl InHeader {
    pub(crate) fn parse(b: &[u8]) -> Option<InHeader> {
        if b.len() < IN_HEADER_LEN {
            return None;
        }
        Some(InHeader {
            opcode: u32_at(b, 4)?,
            unique: u64_at(b, 8)?,
            nodeid: u64_at(b, 16)?,
        })
    }
}

/// Write `struct fuse_out_header` into `b` (at least 16 bytes).
pub(crate) fn write_out_header(b: &mut [u8], len: u32, error: i32, unique: u64) {
    put_u32(b, 0, len);
    put_u32(b, 4, error as u32);
    put_u64(b, 8, unique);
}

/// `fh` of `struct fuse_read_in` / `fuse_release_in` (its first field).
pub(crate) fn fh_of(op_in: &[u8]) -> Option<u64> {
    u64_at(op_in, 0)
}

/// (fh, offset, size) of `struct fuse_read_in`.
pub(crate) fn read_in(op_in: &[u8]) -> Option<(u64, u64, u32)> {
    Some((u64_at(op_in, 0)?, u64_at(op_in, 8)?, u32_at(op_in, 16)?))
}

/// `flags` of `struct fuse_open_in`.
pub(crate) fn open_flags(op_in: &[u8]) -> Option<i32> {
    u32_at(op_in, 0).map(|f| f as i32)
}

/// `size` of `struct fuse_getxattr_in` (also listxattr's argument).
pub(crate) fn xattr_size(op_in: &[u8]) -> Option<u32> {
    u32_at(op_in, 0)
}

/// `mask` of `struct fuse_access_in`.
pub(crate) fn access_mask(op_in: &[u8]) -> Option<i32> {
    u32_at(op_in, 0).map(|m| m as i32)
}

/// A NUL-terminated name argument, without its NUL.
pub(crate) fn name(payload: &[u8]) -> Option<&[u8]> {
    let end = payload.iter().position(|&b| b == 0)?;
    payload.get(..end)
}

/// Seconds and nanoseconds since the epoch (negative seconds before it), as the kernel wants.
fn timespec(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs as u64, nanos)
        }
    }
}

fn mode_bits(kind: FileType) -> u32 {
    match kind {
        FileType::NamedPipe => 0o010000,
        FileType::CharDevice => 0o020000,
        FileType::Directory => 0o040000,
        FileType::BlockDevice => 0o060000,
        FileType::RegularFile => 0o100000,
        FileType::Symlink => 0o120000,
        FileType::Socket => 0o140000,
    }
}

/// `struct fuse_attr` (88 bytes) at `b[..88]`.
fn write_attr(b: &mut [u8], a: &FileAttr) {
    let (atime, atime_ns) = timespec(a.atime);
    let (mtime, mtime_ns) = timespec(a.mtime);
    let (ctime, ctime_ns) = timespec(a.ctime);
    put_u64(b, 0, a.ino.0);
    put_u64(b, 8, a.size);
    put_u64(b, 16, a.blocks);
    put_u64(b, 24, atime);
    put_u64(b, 32, mtime);
    put_u64(b, 40, ctime);
    put_u32(b, 48, atime_ns);
    put_u32(b, 52, mtime_ns);
    put_u32(b, 56, ctime_ns);
    put_u32(b, 60, mode_bits(a.kind) | u32::from(a.perm));
    put_u32(b, 64, a.nlink);
    put_u32(b, 68, a.uid);
    put_u32(b, 72, a.gid);
    put_u32(b, 76, a.rdev);
    put_u32(b, 80, a.blksize);
    put_u32(b, 84, 0);
}

/// How long the kernel may cache entries and attributes: forever, as far as it can count.
const VALID_SECS: u64 = crate::fs::TTL.as_secs();

/// `struct fuse_entry_out` for `a` (a negative entry when `a.ino` is 0).
pub(crate) fn write_entry_out(b: &mut [u8], a: &FileAttr) {
    put_u64(b, 0, a.ino.0);
    put_u64(b, 8, 0); // generation
    put_u64(b, 16, VALID_SECS);
    put_u64(b, 24, VALID_SECS);
    put_u32(b, 32, 0);
    put_u32(b, 36, 0);
    if let Some(attr) = b.get_mut(40..128) {
        write_attr(attr, a);
    }
}

/// `struct fuse_attr_out` for `a`.
pub(crate) fn write_attr_out(b: &mut [u8], a: &FileAttr) {
    put_u64(b, 0, VALID_SECS);
    put_u32(b, 8, 0);
    put_u32(b, 12, 0);
    if let Some(attr) = b.get_mut(16..104) {
        write_attr(attr, a);
    }
}

/// `struct fuse_open_out`.
pub(crate) fn write_open_out(b: &mut [u8], fh: u64, open_flags: u32, backing_id: u32) {
    put_u64(b, 0, fh);
    put_u32(b, 8, open_flags);
    put_u32(b, 12, backing_id);
}

/// `struct fuse_getxattr_out` (8 bytes).
pub(crate) fn write_xattr_size(b: &mut [u8], size: u32) {
    put_u32(b, 0, size);
    put_u32(b, 4, 0);
}

/// `struct fuse_statfs_out`.
pub(crate) fn write_statfs_out(b: &mut [u8], blocks: u64, files: u64, bsize: u32, namelen: u32) {
    if let Some(s) = b.get_mut(..STATFS_OUT_LEN) {
        s.fill(0);
    }
    put_u64(b, 0, blocks);
    put_u64(b, 24, files);
    put_u32(b, 40, bsize);
    put_u32(b, 44, namelen);
    put_u32(b, 48, bsize);
}

fn padded(len: usize) -> usize {
    len.div_ceil(8) * 8
}

/// Append `struct fuse_dirent` + name at `b[*used..]`; false (nothing written) when it does
/// not fit.
pub(crate) fn push_dirent(
    b: &mut [u8],
    used: &mut usize,
    ino: u64,
    cookie: u64,
    kind: FileType,
    name: &[u8],
) -> bool {
    let len = padded(DIRENT_NAME_OFFSET + name.len());
    let Some(slot) = b.get_mut(*used..*used + len) else {
        return false;
    };
    slot.fill(0);
    put_u64(slot, 0, ino);
    put_u64(slot, 8, cookie);
    put_u32(slot, 16, name.len() as u32);
    put_u32(slot, 20, mode_bits(kind) >> 12);
    if let Some(n) = slot.get_mut(DIRENT_NAME_OFFSET..DIRENT_NAME_OFFSET + name.len()) {
        n.copy_from_slice(name);
    }
    *used += len;
    true
}

/// Append `struct fuse_direntplus` + name at `b[*used..]`; false (nothing written) when it
/// does not fit.
pub(crate) fn push_direntplus(
    b: &mut [u8],
    used: &mut usize,
    cookie: u64,
    name: &[u8],
    attr: &FileAttr,
) -> bool {
    let len = padded(ENTRY_OUT_LEN + DIRENT_NAME_OFFSET + name.len());
    let Some(slot) = b.get_mut(*used..*used + len) else {
        return false;
    };
    slot.fill(0);
    write_entry_out(slot, attr);
    let (_, dirent) = slot.split_at_mut(ENTRY_OUT_LEN);
    put_u64(dirent, 0, attr.ino.0);
    put_u64(dirent, 8, cookie);
    put_u32(dirent, 16, name.len() as u32);
    put_u32(dirent, 20, mode_bits(attr.kind) >> 12);
    if let Some(n) = dirent.get_mut(DIRENT_NAME_OFFSET..DIRENT_NAME_OFFSET + name.len()) {
        n.copy_from_slice(name);
    }
    *used += len;
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use fuser::INodeNo;
    use std::time::Duration;

    fn attr(kind: FileType) -> FileAttr {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        FileAttr {
            ino: INodeNo(42),
            size: 5,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm: 0o644,
            nlink: 2,
            uid: 7,
            gid: 8,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    #[test]
    fn entry_out_layout() {
        let mut b = [0xffu8; ENTRY_OUT_LEN];
        write_entry_out(&mut b, &attr(FileType::RegularFile));
        assert_eq!(u64_at(&b, 0), Some(42));
        assert_eq!(u64_at(&b, 16), Some(VALID_SECS));
        assert_eq!(u64_at(&b, 40), Some(42)); // attr.ino
        assert_eq!(u64_at(&b, 40 + 32), Some(1_700_000_000)); // mtime
        assert_eq!(u32_at(&b, 40 + 52), Some(123_456_789)); // mtimensec
        assert_eq!(u32_at(&b, 40 + 60), Some(0o100644)); // mode
        assert_eq!(u32_at(&b, 40 + 64), Some(2));
        assert_eq!(u32_at(&b, 40 + 84), Some(0));
    }

    #[test]
    fn times_before_the_epoch() {
        assert_eq!(
            timespec(UNIX_EPOCH - Duration::new(1, 250_000_000)),
            ((-2i64) as u64, 750_000_000)
        );
        assert_eq!(
            timespec(UNIX_EPOCH - Duration::new(3, 0)),
            ((-3i64) as u64, 0)
        );
    }

    #[test]
    fn dirents_pad_to_eight_bytes_and_stop_when_full() {
        let mut b = [0u8; 64];
        let mut used = 0;
        assert!(push_dirent(
            &mut b,
            &mut used,
            9,
            3,
            FileType::Directory,
            b"abc"
        ));
        assert_eq!(used, 32);
        assert_eq!(u32_at(&b, 16), Some(3));
        assert_eq!(u32_at(&b, 20), Some(4)); // DT_DIR
        assert_eq!(&b[24..27], b"abc");
        assert!(push_dirent(
            &mut b,
            &mut used,
            10,
            4,
            FileType::RegularFile,
            b"12345678"
        ));
        assert_eq!(used, 64);
        assert!(!push_dirent(
            &mut b,
            &mut used,
            11,
            5,
            FileType::RegularFile,
            b"x"
        ));
        assert_eq!(used, 64);

        let mut b = [0u8; 200];
        let mut used = 0;
        assert!(push_direntplus(
            &mut b,
            &mut used,
            7,
            b"name",
            &attr(FileType::Symlink)
        ));
        assert_eq!(used, 160);
        assert_eq!(u64_at(&b, 128), Some(42));
        assert_eq!(u64_at(&b, 136), Some(7));
        assert_eq!(u32_at(&b, 148), Some(10)); // DT_LNK
        assert!(!push_direntplus(
            &mut b,
            &mut used,
            8,
            b"n",
            &attr(FileType::Symlink)
        ));
    }

    #[test]
    fn request_fields() {
        let mut h = [0u8; IN_HEADER_LEN];
        h[4..8].copy_from_slice(&15u32.to_ne_bytes());
        h[8..16].copy_from_slice(&99u64.to_ne_bytes());
        h[16..24].copy_from_slice(&5u64.to_ne_bytes());
        assert_eq!(
            InHeader::parse(&h),
            Some(InHeader {
                opcode: opcode::READ,
                unique: 99,
                nodeid: 5
            })
        );
        assert_eq!(InHeader::parse(&h[..39]), None);
        assert_eq!(name(b"abc\0junk"), Some(&b"abc"[..]));
        assert_eq!(name(b"abc"), None);
    }
}
