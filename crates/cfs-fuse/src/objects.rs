//! External file contents: opening objects below the objects directory, checking what is read
//! from them against their fs-verity digests (see `verify`), and the table of open objects
//! shared by concurrent opens.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use cfs_format::{fsverity, Digest};
use cfs_repo::verity::{self, MeasureError};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::verify::{CheckError, Trees};

/// Why an object could not be served. Each variant is logged (naming the object) and answered
/// with EIO.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObjectError {
    /// The object file does not exist.
    #[error("object {path} is missing")]
    Missing {
        /// Path relative to the objects directory.
        path: String,
    },
    /// The object could not be opened or read.
    #[error("object {path}: {source}")]
    Io {
        /// Path relative to the objects directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The object's content does not match the digest in the image.
    #[error(
        "object {path} fails verification: its fs-verity digest is {actual} ({how}), the image \
         expects {expected}"
    )]
    Mismatch {
        /// Path relative to the objects directory.
        path: String,
        /// The digest from the image (`sha256:<hex>`).
        expected: String,
        /// The digest of the object.
        actual: String,
        /// "kernel fs-verity" or "computed in userspace".
        how: &'static str,
    },
    /// The image names neither a digest nor a backing path.
    #[error("external file without digest or backing path")]
    NoPath,
    /// The object's size is not the file's size in the image.
    #[error("object {path} has {actual} bytes, the image says {expected}")]
    WrongSize {
        /// Path relative to the objects directory.
        path: String,
        /// The size in the image.
        expected: u64,
        /// The object's size.
        actual: u64,
    },
    /// What was read does not match the digest.
    #[error("object {path} fails verification: {why}")]
    Unverified {
        /// Path relative to the objects directory.
        path: String,
        /// What does not match.
        why: String,
    },
}

/// Where an external file's object is: the path below the objects directory and the digest to
/// check it against (if the image has one).
#[derive(Debug, Clone)]
pub(crate) struct ObjectRef {
    pub(crate) path: Vec<u8>,
    pub(crate) digest: Option<Digest>,
    /// The file's size in the image.
    pub(crate) size: u64,
}

impl ObjectRef {
    /// From the image's metacopy digest and/or redirect payload: the digest names the object
    /// (`XX/<rest>`) when present, else the payload path does.
    pub(crate) fn new(
        digest: Option<Digest>,
        payload: Option<&[u8]>,
        size: u64,
    ) -> Result<Self, ObjectError> {
        let path = match (digest, payload) {
            (Some(d), _) => d.object_path().into_bytes(),
            (None, Some(p)) if !p.is_empty() => p.to_vec(),
            _ => return Err(ObjectError::NoPath),
        };
        Ok(ObjectRef { path, digest, size })
    }

    pub(crate) fn display(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// The objects directory and what is known about its objects.
#[derive(Debug)]
pub(crate) struct ObjectStore {
    dir: OwnedFd,
    verify: bool,
    /// Objects whose whole digest was checked at open (passthrough only, whose READs never
    /// reach us), keyed by digest. The inner lock makes concurrent first opens of one object
    /// hash it once: the others wait for the result.
    verified: Mutex<HashMap<Digest, Arc<Mutex<bool>>>>,
    /// Merkle trees for checking READs block by block.
    trees: Trees,
}

impl ObjectStore {
    /// Objects below `dir`; with `verify`, READs are checked against their digests, using (and
    /// filling) the saved Merkle trees in `tree_dir`, if given.
    pub(crate) fn new(dir: OwnedFd, verify: bool, tree_dir: Option<OwnedFd>) -> Self {
        ObjectStore {
            dir,
            verify,
            verified: Mutex::new(HashMap::new()),
            trees: Trees::new(tree_dir),
        }
    }

    /// What READs of `obj` must be checked against: its digest, unless verification is off or
    /// the object has kernel fs-verity of the same digest (then the kernel checks every page
    /// it reads from it).
    pub(crate) fn check_for(&self, obj: &ObjectRef, file: &File) -> Option<Digest> {
        let expected = obj.digest.filter(|_| self.verify)?;
        match verity::measure(file.as_fd()) {
            Ok(d) if d == expected => None,
            _ => Some(expected),
        }
    }

    /// Check `data`, read at `offset` from the object `file`, as `check` says (see `verify`).
    pub(crate) fn check_read(
        &self,
        check: &ReadCheck,
        file: &File,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ObjectError> {
        let path = || String::from_utf8_lossy(&check.path).into_owned();
        self.trees
            .check(file, &check.digest, check.size, offset, data)
            .map_err(|e| match e {
                CheckError::Mismatch(why) => ObjectError::Unverified { path: path(), why },
                CheckError::Io(source) => ObjectError::Io {
                    path: path(),
                    source,
                },
            })
    }

    /// How READs of `obj`, opened as `file`, must be checked (see [`ReadCheck`]).
    pub(crate) fn read_check(&self, obj: &ObjectRef, file: &File) -> Option<ReadCheck> {
        self.check_for(obj, file).map(|digest| ReadCheck {
            path: obj.path.clone(),
            digest,
            size: obj.size,
        })
    }

    /// Open `obj` read-only (never leaving the objects directory: `RESOLVE_BENEATH`) and, unless
    /// verification is off, check that it has the size the image says (its content is checked
    /// as it is read).
    pub(crate) fn open(&self, obj: &ObjectRef) -> Result<File, ObjectError> {
        let path = std::ffi::OsStr::from_bytes(&obj.path);
        let fd = rustix::fs::openat2(
            &self.dir,
            path,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOENT => ObjectError::Missing {
                path: obj.display(),
            },
            e => ObjectError::Io {
                path: obj.display(),
                source: e.into(),
            },
        })?;
        let file = File::from(fd);
        if self.verify && obj.digest.is_some() {
            let actual = file
                .metadata()
                .map_err(|source| ObjectError::Io {
                    path: obj.display(),
                    source,
                })?
                .len();
            if actual != obj.size {
                return Err(ObjectError::WrongSize {
                    path: obj.display(),
                    expected: obj.size,
                    actual,
                });
            }
        }
        Ok(file)
    }

    /// Open `obj` and check its whole content against its digest, once per mount: for
    /// passthrough, where READs go straight to the object and never reach the server.
    pub(crate) fn open_checked_whole(&self, obj: &ObjectRef) -> Result<File, ObjectError> {
        let file = self.open(obj)?;
        if let (true, Some(expected)) = (self.verify, obj.digest) {
            self.verify_once(obj, &expected, &file)?;
        }
        Ok(file)
    }

    fn verify_once(
        &self,
        obj: &ObjectRef,
        expected: &Digest,
        file: &File,
    ) -> Result<(), ObjectError> {
        let slot = {
            let mut map = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(*expected).or_default())
        };
        let mut done = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if *done {
            return Ok(());
        }
        check_digest(obj, expected, file)?;
        *done = true;
        Ok(())
    }

    /// How many objects were verified so far.
    #[cfg(test)]
    pub(crate) fn verified_count(&self) -> usize {
        let map = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .filter(|s| *s.lock().unwrap_or_else(PoisonError::into_inner))
            .count()
    }
}

/// Compare the object's fs-verity digest with `expected`: the kernel's measurement when the
/// object has fs-verity (of the same algorithm), else one computed over its content.
fn check_digest(obj: &ObjectRef, expected: &Digest, file: &File) -> Result<(), ObjectError> {
    let (actual, how) = match verity::measure(file.as_fd()) {
        Ok(d) if d.algorithm() == expected.algorithm() => (d, "kernel fs-verity"),
        Ok(_) | Err(MeasureError::NotSupported | MeasureError::NotEnabled) => (
            userspace_digest(obj, expected, file)?,
            "computed in userspace",
        ),
        Err(e) => {
            log::debug!(
                "object {}: fs-verity measurement failed ({e}); hashing in userspace",
                obj.display()
            );
            (
                userspace_digest(obj, expected, file)?,
                "computed in userspace",
            )
        }
    };
    if actual == *expected {
        Ok(())
    } else {
        Err(ObjectError::Mismatch {
            path: obj.display(),
            expected: expected.to_id(),
            actual: actual.to_id(),
            how,
        })
    }
}

fn userspace_digest(
    obj: &ObjectRef,
    expected: &Digest,
    file: &File,
) -> Result<Digest, ObjectError> {
    // `&File` reads advance the shared offset, which nobody else uses: serving uses pread.
    fsverity::digest_reader(expected.algorithm(), file).map_err(|source| ObjectError::Io {
        path: obj.display(),
        source,
    })
}

/// A passthrough backing file registered with the kernel, dropped with this value.
#[derive(Debug)]
pub(crate) struct Backing {
    dev_fuse: Arc<OwnedFd>,
    id: u32,
}

impl Backing {
    /// Register `file` with the connection behind `dev_fuse`.
    pub(crate) fn open(dev_fuse: &Arc<OwnedFd>, file: BorrowedFd<'_>) -> std::io::Result<Self> {
        let id = crate::sys::backing_open(dev_fuse.as_fd(), file)?;
        Ok(Backing {
            dev_fuse: Arc::clone(dev_fuse),
            id,
        })
    }

    /// The id that OPEN replies carry.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // ENOTCONN once the connection is gone: the kernel has dropped the file already.
        match crate::sys::backing_close(self.dev_fuse.as_fd(), self.id) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOTCONN.raw_os_error()) => {}
            Err(e) => log::warn!("closing passthrough backing file {}: {e}", self.id),
        }
    }
}

/// How READs of an open object are checked.
#[derive(Debug, Clone)]
pub(crate) struct ReadCheck {
    /// The object's path, for messages.
    pub(crate) path: Vec<u8>,
    /// The digest every READ is checked against.
    pub(crate) digest: Digest,
    /// The object's size.
    pub(crate) size: u64,
}

/// One open object, shared by every open of its inode.
#[derive(Debug)]
pub(crate) struct OpenObject {
    /// How its READs are checked; `None` when they need no check (verify=off, no digest, or
    /// kernel fs-verity on the object).
    pub(crate) check: Option<ReadCheck>,
    /// The object, for reads served in userspace. `None` once the kernel holds it as a
    /// passthrough backing file: it needs no descriptor of ours.
    pub(crate) file: Option<File>,
    /// The passthrough backing id, when the kernel reads this object itself. Dropping it
    /// (with the last reference) closes the id.
    pub(crate) backing: Option<Backing>,
}

#[derive(Debug)]
struct Slot {
    object: Arc<OpenObject>,
    /// Opens not yet released; 0 for a kept passthrough object.
    opens: u64,
    /// When the slot was last kept at its last release (see `Slots::kept`).
    kept_at: u64,
}

impl Slot {
    /// Count one more open. Returns whether the slot was kept (its count of kept slots must
    /// drop): a kept slot has no open left but has been released, a new one was never opened.
    fn open(&mut self) -> bool {
        let was_kept = self.opens == 0 && self.kept_at != 0;
        self.opens += 1;
        was_kept
    }
}

#[derive(Debug, Default)]
struct Slots {
    by_ino: HashMap<u64, Slot>,
    /// Passthrough objects kept after their last release, oldest first, as (inode, kept_at):
    /// an entry whose slot was reopened (and perhaps kept again later) is stale and skipped.
    kept: std::collections::VecDeque<(u64, u64)>,
    /// Slots with no open left.
    kept_count: usize,
    clock: u64,
}

/// Open objects by FUSE inode number, with an open count: one file (and one passthrough backing
/// id) per inode however many times it is open. Reads take the read lock only long enough to
/// clone an `Arc`; no lock is held across I/O.
///
/// A passthrough object outlives its last release, up to `KEPT_BACKING` of them: the kernel
/// holds the object file, so keeping its backing id costs no descriptor of ours, and opening the
/// file again then needs neither an `openat` nor a backing-file registration. That halves the
/// server's work per open of a file read before (a warm `tar`).
#[derive(Debug, Default)]
pub(crate) struct OpenTable {
    slots: RwLock<Slots>,
}

impl OpenTable {
    /// Passthrough objects kept open after their last release, at most. Each pins a kernel file
    /// (and its inode and dentry), a few hundred bytes to a few KiB of kernel memory.
    pub(crate) const KEPT_BACKING: usize = 1 << 17;

    /// Another open of `ino` if it is already open (or kept).
    pub(crate) fn reopen(&self, ino: u64) -> Option<Arc<OpenObject>> {
        let mut guard = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let slots = &mut *guard;
        let slot = slots.by_ino.get_mut(&ino)?;
        if slot.open() {
            slots.kept_count -= 1;
        }
        Some(Arc::clone(&slot.object))
    }

    /// Register an open of `ino`: the existing object if another thread got there first, else
    /// the one `make` builds (called under the lock, so it must be quick).
    pub(crate) fn insert_with(
        &self,
        ino: u64,
        make: impl FnOnce() -> OpenObject,
    ) -> Arc<OpenObject> {
        let mut guard = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let slots = &mut *guard;
        let slot = slots.by_ino.entry(ino).or_insert_with(|| Slot {
            object: Arc::new(make()),
            opens: 0,
            kept_at: 0,
        });
        if slot.open() {
            slots.kept_count -= 1;
        }
        Arc::clone(&slot.object)
    }

    /// The open object of `ino`.
    pub(crate) fn get(&self, ino: u64) -> Option<Arc<OpenObject>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.by_ino.get(&ino).map(|s| Arc::clone(&s.object))
    }

    /// One open of `ino` ended. After the last one the object is closed, or kept if it is a
    /// passthrough object (closing the oldest kept one when there are too many).
    pub(crate) fn release(&self, ino: u64) {
        self.release_keeping(ino, Self::KEPT_BACKING);
    }

    fn release_keeping(&self, ino: u64, keep: usize) {
        let mut closed = Vec::new();
        {
            let mut guard = self.slots.write().unwrap_or_else(PoisonError::into_inner);
            let slots = &mut *guard;
            let Some(slot) = slots.by_ino.get_mut(&ino) else {
                return;
            };
            match slot.opens {
                0 => return, // unmatched release
                1 if slot.object.backing.is_some() && keep > 0 => {
                    slots.clock += 1;
                    slot.opens = 0;
                    slot.kept_at = slots.clock;
                    slots.kept.push_back((ino, slots.clock));
                    slots.kept_count += 1;
                }
                1 => closed.extend(slots.by_ino.remove(&ino)),
                _ => slot.opens -= 1,
            }
            while slots.kept_count > keep {
                let Some((old, at)) = slots.kept.pop_front() else {
                    break;
                };
                let still_kept = slots
                    .by_ino
                    .get(&old)
                    .is_some_and(|s| s.opens == 0 && s.kept_at == at);
                if still_kept {
                    slots.kept_count -= 1;
                    closed.extend(slots.by_ino.remove(&old));
                }
            }
            // Stale entries (reopened since) must not pile up while the table stays small.
            if slots.kept.len() > 2 * keep.max(1024) {
                let by_ino = &slots.by_ino;
                slots.kept.retain(|(i, at)| {
                    by_ino
                        .get(i)
                        .is_some_and(|s| s.opens == 0 && s.kept_at == *at)
                });
            }
        }
        // Close outside the lock.
        drop(closed);
    }

    /// Number of inodes with open (or kept) objects.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_ino
            .len()
    }
}

/// Objects opened for READs that arrive without an OPEN (the kernel's zero-message open), so
/// that reading a file in many requests opens its object once. There is no RELEASE to say when
/// a file is done with, so the table is small and the oldest entry makes room: the number of
/// descriptors stays bounded however many files are read.
#[derive(Debug, Default)]
pub(crate) struct RecentObjects {
    slots: Mutex<RecentSlots>,
}

#[derive(Debug, Default)]
struct RecentSlots {
    /// (inode, object), oldest first.
    entries: std::collections::VecDeque<(u64, Arc<OpenObject>)>,
}

impl RecentObjects {
    /// Objects kept open at most.
    const CAPACITY: usize = 64;

    /// The open object of `ino`, opened with `open` (outside the lock) if it is not recent.
    pub(crate) fn get_or_open<E>(
        &self,
        ino: u64,
        open: impl FnOnce() -> Result<(File, Option<ReadCheck>), E>,
    ) -> Result<Arc<OpenObject>, E> {
        if let Some(obj) = self.find(ino) {
            return Ok(obj);
        }
        let (file, check) = open()?;
        let obj = Arc::new(OpenObject {
            check,
            file: Some(file),
            backing: None,
        });
        let evicted = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, existing)) = slots.entries.iter().find(|(i, _)| *i == ino) {
                // Another worker opened it meanwhile: use that one, drop ours.
                return Ok(Arc::clone(existing));
            }
            slots.entries.push_back((ino, Arc::clone(&obj)));
            if slots.entries.len() > Self::CAPACITY {
                slots.entries.pop_front()
            } else {
                None
            }
        };
        // Close outside the lock (readers still holding it keep it open until they finish).
        drop(evicted);
        Ok(obj)
    }

    /// The open object of `ino`, if it is recent.
    pub(crate) fn find(&self, ino: u64) -> Option<Arc<OpenObject>> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots
            .entries
            .iter()
            .rev()
            .find(|(i, _)| *i == ino)
            .map(|(_, o)| Arc::clone(o))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use cfs_format::Algorithm;

    fn store_with(objects: &[(&str, &[u8])], verify: bool) -> (tempfile::TempDir, ObjectStore) {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in objects {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        let fd = rustix::fs::open(
            dir.path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        (dir, ObjectStore::new(fd, verify, None))
    }

    #[test]
    fn verified_objects_open_and_tampered_ones_do_not() {
        let good = b"hello world".repeat(1000);
        let digest = fsverity::digest(Algorithm::Sha256, &good);
        let mut bad = good.clone();
        bad[5] ^= 1;
        let bad_digest = fsverity::digest(Algorithm::Sha512, &good);
        let good_path = digest.object_path();
        let bad_path = bad_digest.object_path();
        let (_dir, store) = store_with(&[(&good_path, &good), (&bad_path, &bad)], true);

        let obj = ObjectRef::new(Some(digest), None, good.len() as u64).unwrap();
        store.open_checked_whole(&obj).unwrap();
        store.open_checked_whole(&obj).unwrap();
        assert_eq!(store.verified_count(), 1);

        let obj = ObjectRef::new(Some(bad_digest), None, good.len() as u64).unwrap();
        let err = store.open_checked_whole(&obj).unwrap_err();
        assert!(matches!(err, ObjectError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains(&bad_path), "{err}");
        assert_eq!(store.verified_count(), 1);

        // Missing objects and paths that leave the objects directory.
        let missing =
            ObjectRef::new(Some(fsverity::digest(Algorithm::Sha256, b"x")), None, 1).unwrap();
        assert!(matches!(
            store.open(&missing),
            Err(ObjectError::Missing { .. })
        ));
        let escape = ObjectRef::new(None, Some(b"../../etc/passwd"), 0).unwrap();
        assert!(matches!(store.open(&escape), Err(ObjectError::Io { .. })));
        assert!(matches!(
            ObjectRef::new(None, None, 0),
            Err(ObjectError::NoPath)
        ));
    }

    #[test]
    fn verify_off_skips_the_check() {
        let content = b"abc";
        let wrong = fsverity::digest(Algorithm::Sha256, b"something else");
        let (_dir, store) = store_with(&[(&wrong.object_path(), content)], false);
        let obj = ObjectRef::new(Some(wrong), None, 3).unwrap();
        store.open_checked_whole(&obj).unwrap();
        assert_eq!(store.verified_count(), 0);
    }

    #[test]
    fn payload_paths_without_digest() {
        let (_dir, store) = store_with(&[("ab/cdef", b"data")], true);
        let obj = ObjectRef::new(None, Some(b"ab/cdef"), 4).unwrap();
        let f = store.open(&obj).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 4);
    }

    #[test]
    fn open_table_counts_opens() {
        let t = OpenTable::default();
        let make = || OpenObject {
            check: None,
            file: Some(tempfile::tempfile().unwrap()),
            backing: None,
        };
        assert!(t.reopen(5).is_none());
        let a = t.insert_with(5, make);
        let b = t.insert_with(5, || panic!("must reuse the existing object"));
        assert!(Arc::ptr_eq(&a, &b));
        let c = t.reopen(5).unwrap();
        assert!(Arc::ptr_eq(&a, &c));
        assert!(t.get(5).is_some());
        t.release(5);
        t.release(5);
        assert_eq!(t.len(), 1);
        t.release(5);
        assert_eq!(t.len(), 0);
        assert!(t.get(5).is_none());
        t.release(5); // unmatched release: ignored
    }

    #[test]
    fn recent_objects_stay_bounded_and_are_reused() {
        let recent = RecentObjects::default();
        let opened = std::cell::Cell::new(0);
        let open = || {
            opened.set(opened.get() + 1);
            Ok::<_, std::io::Error>((tempfile::tempfile().unwrap(), None))
        };
        let first = recent.get_or_open(1, open).unwrap();
        let again = recent.get_or_open(1, open).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(opened.get(), 1);
        for ino in 2..200 {
            recent.get_or_open(ino, open).unwrap();
        }
        assert_eq!(recent.len(), RecentObjects::CAPACITY);
        // Inode 1 was evicted long ago; the reader holding it still has a usable file.
        assert!(first.file.as_ref().unwrap().metadata().is_ok());
        recent.get_or_open(1, open).unwrap();
        assert_eq!(opened.get(), 200);
        let failed = recent.get_or_open(500, || {
            Err::<(File, Option<ReadCheck>), _>("no such object")
        });
        assert_eq!(failed.unwrap_err(), "no such object");
    }

    /// Every READ is checked: a small object whole, a large one block by block, and a change
    /// made after a good read is found by the next read of that block.
    #[test]
    fn reads_are_checked_block_by_block() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let small: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
            let large: Vec<u8> = (0..(300 * 4096 + 77u32)).map(|i| (i / 13) as u8).collect();
            let (ds, dl) = (
                fsverity::digest(algorithm, &small),
                fsverity::digest(algorithm, &large),
            );
            let (dir, store) = store_with(
                &[(&ds.object_path(), &small), (&dl.object_path(), &large)],
                true,
            );
            let check_of = |d: Digest, len: usize| {
                let obj = ObjectRef::new(Some(d), None, len as u64).unwrap();
                let file = store.open(&obj).unwrap();
                let check = store.read_check(&obj, &file).expect("checked");
                (file, check)
            };
            let (file, check) = check_of(ds, small.len());
            store.check_read(&check, &file, 0, &small).unwrap();
            let (file, check) = check_of(dl, large.len());
            // First block, a run far in, the short last block.
            store.check_read(&check, &file, 0, &large[..4096]).unwrap();
            store
                .check_read(&check, &file, 200 * 4096, &large[200 * 4096..232 * 4096])
                .unwrap();
            store
                .check_read(&check, &file, 300 * 4096, &large[300 * 4096..])
                .unwrap();
            // Tamper with block 250 on disk after those good reads: a read of it fails, one
            // of earlier blocks still passes.
            let path = dir.path().join(dl.object_path());
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[250 * 4096 + 9] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            let err = store
                .check_read(&check, &file, 248 * 4096, &bytes[248 * 4096..252 * 4096])
                .unwrap_err();
            assert!(err.to_string().contains("block 250"), "{err}");
            store
                .check_read(&check, &file, 0, &bytes[..8 * 4096])
                .unwrap();
            // A tampered small object fails whole.
            let mut bad = small.clone();
            bad[2999] ^= 1;
            let (file, check) = check_of(ds, small.len());
            assert!(store.check_read(&check, &file, 0, &bad).is_err());
            // The wrong size is refused at open.
            let obj = ObjectRef::new(Some(ds), None, 2999).unwrap();
            assert!(matches!(
                store.open(&obj),
                Err(ObjectError::WrongSize { .. })
            ));
        }
    }

    /// Trees of large objects are saved, reused by the next store, and a saved tree that does
    /// not belong to the object is dropped and rebuilt.
    #[test]
    fn saved_trees_are_reused_and_checked() {
        let large: Vec<u8> = (0..(2 << 20) + 5u32).map(|i| (i % 251) as u8).collect();
        let digest = fsverity::digest(Algorithm::Sha512, &large);
        let objects = tempfile::tempdir().unwrap();
        let p = objects.path().join(digest.object_path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &large).unwrap();
        let trees = tempfile::tempdir().unwrap();
        let open_store = || {
            let fd = rustix::fs::open(
                objects.path(),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .unwrap();
            ObjectStore::new(fd, true, crate::verify::open_tree_dir(trees.path()))
        };
        let read_some = |store: &ObjectStore| {
            let obj = ObjectRef::new(Some(digest), None, large.len() as u64).unwrap();
            let file = store.open(&obj).unwrap();
            let check = store.read_check(&obj, &file).unwrap();
            store.check_read(&check, &file, 4096 * 100, &large[4096 * 100..4096 * 132])
        };
        read_some(&open_store()).unwrap();
        let saved = trees.path().join(digest.object_path());
        let tree = std::fs::read(&saved).expect("the tree was saved");
        // 513 data blocks: 9 level-0 blocks under one root block.
        assert_eq!(tree.len(), 10 * 4096);
        read_some(&open_store()).unwrap();
        // A damaged saved tree: refused at its root, rebuilt, and the read still passes.
        let mut damaged = tree.clone();
        damaged[10] ^= 1;
        std::fs::write(&saved, &damaged).unwrap();
        read_some(&open_store()).unwrap();
        assert_eq!(
            std::fs::read(&saved).unwrap(),
            tree,
            "rebuilt and saved again"
        );
        // Damage below the root is found when that block is first needed.
        let mut damaged = tree.clone();
        damaged[4096 + 1] ^= 1; // level 0, block 0: not under the read above
        std::fs::write(&saved, &damaged).unwrap();
        let store = open_store();
        read_some(&store).unwrap();
        let obj = ObjectRef::new(Some(digest), None, large.len() as u64).unwrap();
        let file = store.open(&obj).unwrap();
        let check = store.read_check(&obj, &file).unwrap();
        store.check_read(&check, &file, 0, &large[..4096]).unwrap();
    }
}
