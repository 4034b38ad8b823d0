//! How image inodes appear to the kernel: inode numbers and attributes (docs/formats.md §8.1).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cfs_format::erofs::reader::{FileType, Image, InodeRef, Nid, Node, ReadError};
use cfs_format::tree::Mtime;
use fuser::{FileAttr, INodeNo};

/// The FUSE inode number of the root directory.
pub(crate) const ROOT_INO: u64 = 1;

/// Block size reported by `stat` and `statfs`.
pub(crate) const BLOCK_SIZE: u32 = 4096;

/// Maps between NIDs and FUSE inode numbers: the root is 1, every other inode is its NID (as C
/// does). NIDs of real inodes lie after the composefs header and superblock (≥ 36 in composefs
/// images), so no other inode can claim 1; hardlinks share a NID and so an inode number.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InoMap {
    root: Nid,
}

impl InoMap {
    pub(crate) fn new(root: Nid) -> Self {
        InoMap { root }
    }

    /// The FUSE inode number of `nid`; `None` for NIDs that would collide with the root's or
    /// with 0 (only in damaged images).
    pub(crate) fn ino(&self, nid: Nid) -> Option<u64> {
        if nid == self.root {
            Some(ROOT_INO)
        } else if nid.0 <= ROOT_INO {
            None
        } else {
            Some(nid.0)
        }
    }

    /// The NID behind a FUSE inode number; `None` for 0.
    pub(crate) fn nid(&self, ino: u64) -> Option<Nid> {
        match ino {
            0 => None,
            ROOT_INO => Some(self.root),
            n => Some(Nid(n)),
        }
    }
}

/// `mtime` as a `SystemTime`; nanoseconds beyond a second are carried (C does not bound them),
/// and times outside what `SystemTime` can hold are clamped to the epoch.
pub(crate) fn system_time(t: Mtime) -> SystemTime {
    let extra_sec = i64::from(t.nsec / 1_000_000_000);
    let nsec = t.nsec % 1_000_000_000;
    let Some(sec) = t.sec.checked_add(extra_sec) else {
        return UNIX_EPOCH;
    };
    let result = if sec >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(sec.unsigned_abs(), nsec))
    } else {
        // sec.nsec with sec < 0 is sec seconds plus nsec nanoseconds: go back |sec| seconds,
        // then forward nsec.
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nsec))))
    };
    result.unwrap_or(UNIX_EPOCH)
}

/// The FUSE file type.
pub(crate) fn fuse_kind(t: FileType) -> fuser::FileType {
    match t {
        FileType::Regular => fuser::FileType::RegularFile,
        FileType::Directory => fuser::FileType::Directory,
        FileType::Symlink => fuser::FileType::Symlink,
        FileType::CharDevice => fuser::FileType::CharDevice,
        FileType::BlockDevice => fuser::FileType::BlockDevice,
        FileType::Fifo => fuser::FileType::NamedPipe,
        FileType::Socket => fuser::FileType::Socket,
    }
}

/// Whether the presented view of `inode` may differ from the raw inode: only a regular file
/// with xattrs can be an escaped whiteout. Everything else needs no xattr scan.
fn needs_node(inode: &InodeRef<'_>) -> bool {
    inode.file_type() == FileType::Regular && inode.xattr_icount() != 0
}

/// The presented file type of `inode` (escaped whiteouts are character devices), scanning
/// xattrs only when it can matter.
pub(crate) fn presented_type(inode: &InodeRef<'_>) -> Result<FileType, ReadError> {
    if needs_node(inode) {
        Ok(inode.node()?.file_type())
    } else {
        Ok(inode.file_type())
    }
}

/// The attributes of `inode` under FUSE inode number `ino`.
pub(crate) fn attr_of(ino: u64, inode: &InodeRef<'_>) -> Result<FileAttr, ReadError> {
    if needs_node(inode) {
        Ok(node_attr(ino, &inode.node()?))
    } else {
        Ok(build_attr(
            ino,
            inode,
            inode.file_type(),
            inode.size(),
            inode.rdev(),
        ))
    }
}

/// The attributes of a node as composefs presents it.
pub(crate) fn node_attr(ino: u64, node: &Node<'_>) -> FileAttr {
    build_attr(
        ino,
        node.inode(),
        node.file_type(),
        node.size(),
        node.rdev(),
    )
}

fn build_attr(ino: u64, inode: &InodeRef<'_>, kind: FileType, size: u64, rdev: u32) -> FileAttr {
    let time = system_time(inode.mtime());
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: fuse_kind(kind),
        perm: (inode.permissions() & 0o7777) as u16,
        nlink: inode.nlink(),
        uid: inode.uid(),
        gid: inode.gid(),
        rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// An attribute block for a negative dentry: inode number 0 tells the kernel "no such entry,
/// but remember that for the entry timeout".
pub(crate) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// The attributes of the inode behind FUSE inode number `ino`.
pub(crate) fn attr_for_ino(
    image: &Image<'_>,
    map: &InoMap,
    ino: u64,
) -> Result<Option<FileAttr>, ReadError> {
    let Some(nid) = map.nid(ino) else {
        return Ok(None);
    };
    let inode = image.inode(nid)?;
    attr_of(ino, &inode).map(Some)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use crate::testutil::image_from_dump;

    #[test]
    fn inode_numbers() {
        let m = InoMap::new(Nid(36));
        assert_eq!(m.ino(Nid(36)), Some(1));
        assert_eq!(m.ino(Nid(40)), Some(40));
        assert_eq!(m.ino(Nid(1)), None);
        assert_eq!(m.ino(Nid(0)), None);
        assert_eq!(m.nid(1), Some(Nid(36)));
        assert_eq!(m.nid(40), Some(Nid(40)));
        assert_eq!(m.nid(0), None);
    }

    #[test]
    fn times_keep_nanoseconds() {
        let t = system_time(Mtime {
            sec: 1_000_000_000,
            nsec: 123_456_789,
        });
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            (d.as_secs(), d.subsec_nanos()),
            (1_000_000_000, 123_456_789)
        );
        // Negative seconds: -2 s + 0.8 s = -1.2 s.
        let t = system_time(Mtime {
            sec: -2,
            nsec: 800_000_000,
        });
        let d = UNIX_EPOCH.duration_since(t).unwrap();
        assert_eq!(d, Duration::new(1, 200_000_000));
        // Oversized nsec carries; extremes do not panic.
        let t = system_time(Mtime {
            sec: 5,
            nsec: 2_500_000_000,
        });
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(7, 500_000_000)
        );
        for sec in [i64::MIN, i64::MAX, i64::MIN + 1] {
            let _ = system_time(Mtime {
                sec,
                nsec: u32::MAX,
            });
        }
    }

    #[test]
    fn attributes_follow_the_image() {
        let digest = "5a".repeat(32);
        let dump = format!(
            "/ 0 40755 2 0 0 0 100.5 - - - user.root=r\n\
             /blk 0 60640 1 6 6 2049 11.2 - - -\n\
             /chr 0 20666 1 0 0 259 12.3 - - -\n\
             /ext 70000 100644 2 1000 1001 0 1000000000.999999999 5a/{} - {digest}\n\
             /fifo 0 10620 1 0 0 0 13.4 - - -\n\
             /inline 4 104755 1 70000 70001 0 14.5 - abcd -\n\
             /link 0 @120000 - - - - 0.0 /ext - -\n\
             /sock 0 140755 1 0 0 0 15.6 - - -\n\
             /sparse 10000 100600 1 0 0 0 16.7 - - -\n\
             /sym 11 120777 1 0 0 0 17.8 target/path - -\n\
             /wh 0 20000 1 0 0 0 18.9 - - -\n",
            "5a".repeat(31)
        );
        let image = image_from_dump(&dump);
        let img = Image::open(&image).unwrap();
        let map = InoMap::new(img.root_nid());
        let root = img.root().unwrap();
        let attr = |name: &[u8]| {
            let e = img.lookup_child(&root, name).unwrap().unwrap();
            let ino = map.ino(e.nid).unwrap();
            assert_eq!(ino, e.nid.0);
            attr_of(ino, &img.inode(e.nid).unwrap()).unwrap()
        };

        let r = attr_for_ino(&img, &map, ROOT_INO).unwrap().unwrap();
        assert_eq!(r.ino, INodeNo(1));
        assert_eq!(r.kind, fuser::FileType::Directory);
        assert_eq!(r.perm, 0o755);
        assert_eq!(
            r.mtime.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(100, 5)
        );

        let a = attr(b"blk");
        assert_eq!(
            (a.kind, a.perm, a.rdev, a.uid, a.gid),
            (fuser::FileType::BlockDevice, 0o640, 2049, 6, 6)
        );
        let a = attr(b"chr");
        assert_eq!((a.kind, a.rdev), (fuser::FileType::CharDevice, 259));

        let a = attr(b"ext");
        assert_eq!(a.kind, fuser::FileType::RegularFile);
        assert_eq!((a.size, a.blocks, a.nlink), (70000, 137, 2));
        assert_eq!((a.uid, a.gid), (1000, 1001));
        let d = a.mtime.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            (d.as_secs(), d.subsec_nanos()),
            (1_000_000_000, 999_999_999)
        );
        assert_eq!(a.atime, a.mtime);
        assert_eq!(a.ctime, a.mtime);
        assert_eq!(a.blksize, 4096);
        // The hardlink shares the inode number.
        assert_eq!(attr(b"link").ino, a.ino);

        let a = attr(b"inline");
        assert_eq!((a.size, a.perm), (4, 0o4755));
        assert_eq!((a.uid, a.gid), (70000, 70001));
        let a = attr(b"sparse");
        assert_eq!((a.size, a.perm), (10000, 0o600));
        let a = attr(b"sym");
        assert_eq!((a.kind, a.size), (fuser::FileType::Symlink, 11));
        assert_eq!(attr(b"fifo").kind, fuser::FileType::NamedPipe);
        assert_eq!(attr(b"sock").kind, fuser::FileType::Socket);

        // A user whiteout is stored escaped (a regular file with an xattr) and shown as the
        // character device 0:0 it stands for.
        let e = img.lookup_child(&root, b"wh").unwrap().unwrap();
        let wh = img.inode(e.nid).unwrap();
        assert_eq!(wh.file_type(), FileType::Regular);
        let a = attr(b"wh");
        assert_eq!(
            (a.kind, a.rdev, a.size),
            (fuser::FileType::CharDevice, 0, 0)
        );
        assert_eq!(presented_type(&wh).unwrap(), FileType::CharDevice);
    }
}
