//! Checking every READ of an object against its fs-verity digest, as kernel fs-verity checks
//! every page it reads in.
//!
//! - Objects of at most [`WHOLE_FILE_MAX`] bytes are read whole and hashed whole on every READ
//!   that reaches the server: that costs microseconds and needs no state.
//! - Larger objects are checked block by block against their Merkle tree (see
//!   `cfs_format::fsverity::merkle`): a READ hashes only the blocks it returns, plus, the first
//!   time, the tree blocks above them. The tree comes from the tree cache directory when one is
//!   given (`<repo>/cache/verity`, written by the importer for objects of at least
//!   `merkle::SAVED_TREE_MIN` bytes, or by an earlier mount), checked lazily against the
//!   digest like any untrusted input; otherwise it is built once by hashing the object on all
//!   CPUs, and saved there (if large enough) for next time.
//!
//! Built and loaded trees stay in memory, up to [`TREE_MEMORY`] bytes, oldest dropped first.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, PoisonError};

use cfs_format::fsverity::merkle::{self, TreeBlocks, TreeLayout, TreeVerifier, VerifyError};
use cfs_format::fsverity::BLOCK_SIZE;
use cfs_format::Digest;
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Objects up to this size are checked whole on every READ.
pub(crate) const WHOLE_FILE_MAX: u64 = 64 << 10;
/// Bytes of trees kept in memory at most.
const TREE_MEMORY: u64 = 64 << 20;
/// Bytes read at a time when building a tree.
const BUILD_CHUNK: usize = 4 << 20;

/// Why a READ could not be checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CheckError {
    /// The content does not match the digest.
    #[error("{0}")]
    Mismatch(String),
    /// Reading the object failed.
    #[error("reading it: {0}")]
    Io(#[from] io::Error),
}

/// A tree of one object and where its unchecked blocks come from.
#[derive(Debug)]
struct ObjectTree {
    verifier: TreeVerifier,
    /// The saved tree file, for blocks not checked yet; `None` when every block is in memory.
    file: Option<File>,
}

impl ObjectTree {
    fn verify(&self, first_block: u64, data: &[u8]) -> Result<(), VerifyError> {
        match &self.file {
            Some(file) => self.verifier.verify(&FileTree(file), first_block, data),
            None => self.verifier.verify(&[][..], first_block, data),
        }
    }
}

/// A saved tree read block by block.
struct FileTree<'a>(&'a File);

impl TreeBlocks for FileTree<'_> {
    fn read_tree_block(&self, position: u64, block: &mut [u8; BLOCK_SIZE]) -> io::Result<()> {
        self.0.read_exact_at(block, position * BLOCK_SIZE as u64)
    }
}

#[derive(Debug, Default)]
struct TreeTable {
    trees: HashMap<Digest, (Arc<ObjectTree>, u64)>,
    bytes: u64,
    clock: u64,
}

/// The trees of the objects being served, and where saved trees live.
#[derive(Debug)]
pub(crate) struct Trees {
    /// `<repo>/cache/verity` or another directory of saved trees (named like objects).
    dir: Option<OwnedFd>,
    table: Mutex<TreeTable>,
    /// Serialises building: two READs of one unbuilt object must not both hash it.
    building: Mutex<()>,
}

impl Trees {
    pub(crate) fn new(dir: Option<OwnedFd>) -> Self {
        Trees {
            dir,
            table: Mutex::new(TreeTable::default()),
            building: Mutex::new(()),
        }
    }

    /// Check that `data`, read from `object` (of `size` bytes) at `offset`, is what `expected`
    /// names. `offset` must be block-aligned, and `data` whole blocks or reach the end.
    pub(crate) fn check(
        &self,
        object: &File,
        expected: &Digest,
        size: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CheckError> {
        if size <= WHOLE_FILE_MAX {
            return check_whole(expected, size, offset, data, object);
        }
        let first_block = offset / BLOCK_SIZE as u64;
        let tree = self.tree(object, expected, size)?;
        match tree.verify(first_block, data) {
            Ok(()) => Ok(()),
            Err(VerifyError::Data { block }) => Err(CheckError::Mismatch(format!(
                "block {block} does not match the fs-verity digest"
            ))),
            Err(e @ (VerifyError::Tree { .. } | VerifyError::Io(_))) => {
                // The saved tree is not this object's (or is damaged): forget it and build the
                // tree from the object itself.
                log::warn!(
                    "saved Merkle tree of object {} is unusable ({e}); rebuilding it",
                    expected.object_path()
                );
                self.forget(expected);
                self.remove_saved(expected);
                let tree = self.tree(object, expected, size)?;
                tree.verify(first_block, data)
                    .map_err(|e| CheckError::Mismatch(e.to_string()))
            }
            Err(e @ VerifyError::Misaligned { .. }) => Err(CheckError::Mismatch(e.to_string())),
        }
    }

    fn lookup(&self, digest: &Digest) -> Option<Arc<ObjectTree>> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.clock += 1;
        let now = table.clock;
        let (tree, used) = table.trees.get_mut(digest)?;
        *used = now;
        Some(Arc::clone(tree))
    }

    fn forget(&self, digest: &Digest) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((tree, _)) = table.trees.remove(digest) {
            table.bytes -= tree.verifier.memory_bound();
        }
    }

    fn insert(&self, digest: Digest, tree: ObjectTree) -> Arc<ObjectTree> {
        let tree = Arc::new(tree);
        let cost = tree.verifier.memory_bound();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.clock += 1;
        let now = table.clock;
        if let Some((old, _)) = table.trees.insert(digest, (Arc::clone(&tree), now)) {
            table.bytes -= old.verifier.memory_bound();
        }
        table.bytes += cost;
        while table.bytes > TREE_MEMORY && table.trees.len() > 1 {
            let oldest = table
                .trees
                .iter()
                .filter(|(d, _)| **d != digest)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(d, _)| *d);
            let Some(oldest) = oldest else { break };
            if let Some((t, _)) = table.trees.remove(&oldest) {
                table.bytes -= t.verifier.memory_bound();
            }
        }
        tree
    }

    /// The tree of `object`: in memory, saved, or built now.
    fn tree(
        &self,
        object: &File,
        expected: &Digest,
        size: u64,
    ) -> Result<Arc<ObjectTree>, CheckError> {
        if let Some(tree) = self.lookup(expected) {
            return Ok(tree);
        }
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tree) = self.lookup(expected) {
            return Ok(tree);
        }
        if let Some(tree) = self.load_saved(expected, size) {
            return Ok(self.insert(*expected, tree));
        }
        let (tree_bytes, actual) = build(object, expected, size)?;
        if actual != *expected {
            return Err(digest_mismatch(&actual, expected));
        }
        if size >= merkle::SAVED_TREE_MIN {
            self.save(expected, &tree_bytes);
        }
        // Built from the object just now, and its root gave the expected digest.
        let verifier = TreeVerifier::trusting(*expected, size, &tree_bytes);
        Ok(self.insert(
            *expected,
            ObjectTree {
                verifier,
                file: None,
            },
        ))
    }

    fn saved_path(digest: &Digest) -> String {
        digest.object_path()
    }

    fn load_saved(&self, expected: &Digest, size: u64) -> Option<ObjectTree> {
        let dir = self.dir.as_ref()?;
        let path = Self::saved_path(expected);
        let fd = rustix::fs::openat2(
            dir,
            std::ffi::OsStr::from_bytes(path.as_bytes()),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        )
        .ok()?;
        let file = File::from(fd);
        let layout = TreeLayout::new(expected.algorithm(), size);
        if file.metadata().ok()?.len() != layout.tree_len() {
            return None;
        }
        let verifier = TreeVerifier::new(*expected, size);
        if let Err(e) = verifier.check_root(&FileTree(&file)) {
            log::warn!("saved Merkle tree of object {path} does not match its digest ({e})");
            return None;
        }
        Some(ObjectTree {
            verifier,
            file: Some(file),
        })
    }

    /// Save a tree for later mounts: written to a temporary file, then renamed into place, so
    /// a reader never sees half a tree. Failing to save is not an error (the tree stays in
    /// memory).
    fn save(&self, digest: &Digest, tree: &[u8]) {
        let Some(dir) = &self.dir else { return };
        let path = Self::saved_path(digest);
        let result = (|| -> io::Result<()> {
            let (prefix, _) = path.split_at(2);
            match rustix::fs::mkdirat(dir, prefix, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let tmp = format!("{prefix}/.tmp-{}-{}", std::process::id(), digest.to_hex());
            let fd = rustix::fs::openat(
                dir,
                tmp.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )?;
            let file = File::from(fd);
            let written = file.write_all_at(tree, 0).and_then(|()| {
                rustix::fs::renameat(dir, tmp.as_str(), dir, path.as_str()).map_err(io::Error::from)
            });
            if written.is_err() {
                let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
            }
            written
        })();
        if let Err(e) = result {
            log::debug!("not saving the Merkle tree of object {path}: {e}");
        }
    }

    fn remove_saved(&self, digest: &Digest) {
        if let Some(dir) = &self.dir {
            let _ = rustix::fs::unlinkat(
                dir,
                Self::saved_path(digest).as_str(),
                rustix::fs::AtFlags::empty(),
            );
        }
    }
}

/// A small object: the READ must hold the whole of it, or the whole of it is read again here.
fn check_whole(
    expected: &Digest,
    size: u64,
    offset: u64,
    data: &[u8],
    object: &File,
) -> Result<(), CheckError> {
    let actual = if offset == 0 && data.len() as u64 == size {
        cfs_format::fsverity::digest(expected.algorithm(), data)
    } else {
        let mut whole = vec![0u8; usize::try_from(size).unwrap_or(0)];
        object.read_exact_at(&mut whole, 0)?;
        if whole
            .get(usize::try_from(offset).unwrap_or(usize::MAX)..)
            .and_then(|rest| rest.get(..data.len()))
            != Some(data)
        {
            return Err(CheckError::Mismatch(
                "it changed while it was being read".to_owned(),
            ));
        }
        cfs_format::fsverity::digest(expected.algorithm(), &whole)
    };
    if actual == *expected {
        Ok(())
    } else {
        Err(digest_mismatch(&actual, expected))
    }
}

fn digest_mismatch(actual: &Digest, expected: &Digest) -> CheckError {
    CheckError::Mismatch(format!(
        "its fs-verity digest is {} (computed in userspace), the image expects {}",
        actual.to_id(),
        expected.to_id()
    ))
}

/// Hash the whole object (its blocks on every CPU) into its tree and digest.
fn build(object: &File, expected: &Digest, size: u64) -> Result<(Vec<u8>, Digest), CheckError> {
    let algorithm = expected.algorithm();
    let dlen = algorithm.digest_len();
    let blocks = usize::try_from(size.div_ceil(BLOCK_SIZE as u64))
        .map_err(|_| CheckError::Mismatch("too large".to_owned()))?;
    let mut leaves = vec![0u8; blocks * dlen];
    let mut buf = vec![0u8; BUILD_CHUNK.min(usize::try_from(size).unwrap_or(BUILD_CHUNK))];
    let mut offset = 0u64;
    for out in leaves.chunks_mut(BUILD_CHUNK / BLOCK_SIZE * dlen) {
        let want = usize::try_from((size - offset).min(BUILD_CHUNK as u64)).unwrap_or(0);
        let chunk = &mut buf[..want];
        object.read_exact_at(chunk, offset)?;
        merkle::hash_data_blocks(algorithm, chunk, out);
        offset += want as u64;
    }
    // The object must end where the image says it does.
    let mut probe = [0u8; 1];
    if object.read_at(&mut probe, size)? != 0 {
        return Err(CheckError::Mismatch(format!(
            "it is longer than the {size} bytes the image says"
        )));
    }
    Ok(merkle::build_tree(algorithm, size, &leaves))
}

/// Open (or create) the tree cache directory `dir` for [`Trees`]: `None`, with a log line, if
/// it cannot be had.
pub(crate) fn open_tree_dir(dir: &std::path::Path) -> Option<OwnedFd> {
    let _ = std::fs::create_dir_all(dir);
    match rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Some(fd),
        Err(e) => {
            log::info!(
                "no Merkle tree cache at {} ({e}): trees of large objects are built in memory",
                dir.display()
            );
            None
        }
    }
}
