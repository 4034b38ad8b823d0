//! The fs-verity Merkle tree of one file, kept so that reads can be checked block by block.
//!
//! Checking a whole file before serving any of it costs a full read and hash, which for a
//! 512 MiB object is most of a second. Kernel fs-verity avoids that by keeping the tree: a data
//! block is checked against its hash in the lowest tree level, that tree block against its
//! parent, and so on up to the root, whose hash (with the file size) gives the digest. Every
//! tree block checked once is trusted from then on, so a read costs the hash of the blocks it
//! returns plus, the first time, one tree block per level.
//!
//! [`TreeLayout`] says where each level lives in a serialised tree (the kernel's order: the top
//! level first, each level padded to whole blocks with zeros), [`build_tree`] makes a whole tree
//! from a file's data, and [`TreeVerifier`] checks data against a tree read lazily through
//! [`TreeBlocks`], trusting nothing it reads until it has been checked against the digest.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::{Algorithm, Digest, BLOCK_SIZE};

/// Below this many data bytes, hashing stays on the calling thread.
const PARALLEL_BYTES: usize = 256 << 10;

/// Objects of this size or more have their tree saved on disk where one is kept (a
/// repository's `cache/verity`), by whoever hashed every block anyway: the importer, or the
/// first reader that had to build it. Smaller trees are rebuilt in a few milliseconds at most,
/// and a file per small object would cost more than that.
pub const SAVED_TREE_MIN: u64 = 1 << 20;

/// Where the levels of a file's Merkle tree are in its serialised form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeLayout {
    algorithm: Algorithm,
    size: u64,
    /// `(first block, block count)` of each level in the serialised tree; `levels[0]` holds the
    /// hashes of the data blocks, the last level is the single root block.
    levels: Vec<(u64, u64)>,
}

impl TreeLayout {
    /// The tree of a `size`-byte file hashed with `algorithm`. Files of at most one block have
    /// no tree: the root hash is the hash of their only (zero-padded) block.
    pub fn new(algorithm: Algorithm, size: u64) -> Self {
        let per_block = (BLOCK_SIZE / algorithm.digest_len()) as u64;
        let mut counts = Vec::new();
        let mut below = size.div_ceil(BLOCK_SIZE as u64);
        while below > 1 {
            let blocks = below.div_ceil(per_block);
            counts.push(blocks);
            below = blocks;
        }
        // The top level comes first in the serialised tree.
        let mut levels = vec![(0, 0); counts.len()];
        let mut first = 0;
        for (level, &blocks) in counts.iter().enumerate().rev() {
            levels[level] = (first, blocks);
            first += blocks;
        }
        TreeLayout {
            algorithm,
            size,
            levels,
        }
    }

    /// The hash algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The file size the tree describes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Data blocks in the file (the last one may be short).
    pub fn data_blocks(&self) -> u64 {
        self.size.div_ceil(BLOCK_SIZE as u64)
    }

    /// Number of tree levels (0 for files of at most one block).
    pub fn levels(&self) -> usize {
        self.levels.len()
    }

    /// Blocks in the whole serialised tree.
    pub fn tree_blocks(&self) -> u64 {
        self.levels.iter().map(|&(_, n)| n).sum()
    }

    /// Bytes in the whole serialised tree.
    pub fn tree_len(&self) -> u64 {
        self.tree_blocks() * BLOCK_SIZE as u64
    }

    /// Hashes that fit in one tree block.
    pub fn hashes_per_block(&self) -> u64 {
        (BLOCK_SIZE / self.algorithm.digest_len()) as u64
    }

    /// Position (in blocks) of block `index` of `level` in the serialised tree.
    fn position(&self, level: usize, index: u64) -> Option<u64> {
        let &(first, count) = self.levels.get(level)?;
        (index < count).then_some(first + index)
    }
}

/// The digest of a file of `size` bytes whose Merkle root hash is `root`: the hash of the
/// fs-verity descriptor (version 1, 4096-byte blocks, no salt).
pub fn digest_from_root(algorithm: Algorithm, size: u64, root: &[u8]) -> Digest {
    let mut descriptor = [0u8; 256];
    descriptor[0] = 1;
    descriptor[1] = algorithm.kernel_id();
    descriptor[2] = 12;
    descriptor[8..16].copy_from_slice(&size.to_le_bytes());
    let dlen = algorithm.digest_len();
    descriptor[16..16 + dlen].copy_from_slice(&root[..dlen]);
    let mut out = [0u8; 64];
    algorithm.hash_block(&descriptor, &mut out[..dlen]);
    // Both lengths are digest lengths, so this cannot fail; a zero digest would never match.
    Digest::from_bytes(&out[..dlen]).unwrap_or(Digest::Sha256([0; 32]))
}

/// Hash `data`, a run of data blocks (the last one may be short: it is hashed zero-padded, as
/// fs-verity does at the end of a file), into one `digest_len` hash per block in `out`. Large
/// runs are hashed on several threads.
pub fn hash_data_blocks(algorithm: Algorithm, data: &[u8], out: &mut [u8]) {
    let dlen = algorithm.digest_len();
    let whole = data.len() / BLOCK_SIZE;
    let (blocks, tail) = data.split_at(whole * BLOCK_SIZE);
    let (whole_out, tail_out) = out.split_at_mut(whole * dlen);
    if blocks.len() >= PARALLEL_BYTES {
        // Chunks of 32 blocks: big enough to amortise the scheduling, and a multiple of the
        // eight-lane groups.
        whole_out
            .par_chunks_mut(dlen * 32)
            .zip(blocks.par_chunks(BLOCK_SIZE * 32))
            .for_each(|(o, b)| algorithm.hash_blocks(b, o));
    } else {
        algorithm.hash_blocks(blocks, whole_out);
    }
    if !tail.is_empty() {
        let mut padded = [0u8; BLOCK_SIZE];
        padded[..tail.len()].copy_from_slice(tail);
        algorithm.hash_block(&padded, &mut tail_out[..dlen]);
    }
}

/// The whole serialised tree of a file whose data blocks hash to `leaves` (one hash per data
/// block, as [`hash_data_blocks`] gives), and the file's digest.
pub fn build_tree(algorithm: Algorithm, size: u64, leaves: &[u8]) -> (Vec<u8>, Digest) {
    let layout = TreeLayout::new(algorithm, size);
    let dlen = algorithm.digest_len();
    if size == 0 {
        return (Vec::new(), digest_from_root(algorithm, 0, &[0u8; 64]));
    }
    if layout.levels() == 0 {
        return (
            Vec::new(),
            digest_from_root(algorithm, size, &leaves[..dlen]),
        );
    }
    let mut tree = vec![0u8; usize::try_from(layout.tree_len()).unwrap_or(usize::MAX)];
    let mut below: Vec<u8> = leaves.to_vec();
    for level in 0..layout.levels() {
        let (first, count) = layout.levels[level];
        let start = first as usize * BLOCK_SIZE;
        let end = start + count as usize * BLOCK_SIZE;
        let dst = &mut tree[start..end];
        dst[..below.len()].copy_from_slice(&below);
        // The hashes of this level's blocks (zero padding included) feed the level above.
        let mut hashes = vec![0u8; count as usize * dlen];
        algorithm.hash_blocks(dst, &mut hashes);
        below = hashes;
    }
    let digest = digest_from_root(algorithm, size, &below[..dlen]);
    (tree, digest)
}

/// The whole serialised tree of the in-memory `data`, and its digest.
pub fn tree_of(algorithm: Algorithm, data: &[u8]) -> (Vec<u8>, Digest) {
    let mut leaves = vec![0u8; data.len().div_ceil(BLOCK_SIZE) * algorithm.digest_len()];
    hash_data_blocks(algorithm, data, &mut leaves);
    build_tree(algorithm, data.len() as u64, &leaves)
}

/// Where a [`TreeVerifier`] gets tree blocks it has not checked yet (a file, memory). What it
/// returns is not trusted: every block is checked before use.
pub trait TreeBlocks {
    /// Fill `block` with block `position` of the serialised tree.
    fn read_tree_block(&self, position: u64, block: &mut [u8; BLOCK_SIZE]) -> std::io::Result<()>;
}

/// A tree held in memory (for example one [`build_tree`] made).
impl TreeBlocks for [u8] {
    fn read_tree_block(&self, position: u64, block: &mut [u8; BLOCK_SIZE]) -> std::io::Result<()> {
        let start = usize::try_from(position)
            .ok()
            .and_then(|p| p.checked_mul(BLOCK_SIZE));
        match start.and_then(|s| self.get(s..s + BLOCK_SIZE)) {
            Some(src) => {
                block.copy_from_slice(src);
                Ok(())
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the tree has no block {position}"),
            )),
        }
    }
}

/// Why data could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A data block does not hash to what the tree says: the file's content is not the one
    /// the digest names.
    #[error("data block {block} does not match the fs-verity digest")]
    Data {
        /// Index of the block in the file.
        block: u64,
    },
    /// A tree block does not hash to what its parent (or the digest) says: the tree does not
    /// belong to this digest.
    #[error("tree block {index} of level {level} does not match the fs-verity digest")]
    Tree {
        /// Tree level (0 = hashes of data blocks).
        level: usize,
        /// Index of the block within its level.
        index: u64,
    },
    /// The data passed in does not line up with the file's blocks.
    #[error("a read of {len} bytes at block {block} is not whole blocks of the file")]
    Misaligned {
        /// First block.
        block: u64,
        /// Bytes passed in.
        len: usize,
    },
    /// Reading a tree block failed.
    #[error("reading the Merkle tree: {0}")]
    Io(#[from] std::io::Error),
}

/// Checks a file's data, block by block, against the digest it must have, using a tree read on
/// demand. Tree blocks, once checked, are kept (and trusted) for the verifier's lifetime; data
/// blocks are checked on every call.
#[derive(Debug)]
pub struct TreeVerifier {
    layout: TreeLayout,
    expected: Digest,
    /// Checked tree blocks, by position in the serialised tree.
    checked: Vec<OnceLock<Box<[u8; BLOCK_SIZE]>>>,
}

impl TreeVerifier {
    /// A verifier for data of a file of `size` bytes that must have digest `expected`.
    pub fn new(expected: Digest, size: u64) -> Self {
        let layout = TreeLayout::new(expected.algorithm(), size);
        let blocks = usize::try_from(layout.tree_blocks()).unwrap_or(0);
        TreeVerifier {
            checked: (0..blocks).map(|_| OnceLock::new()).collect(),
            layout,
            expected,
        }
    }

    /// A verifier whose tree blocks are all taken from `tree` without checking them, for a
    /// tree the caller has just built (with [`build_tree`]) from data whose digest came out as
    /// `expected`. Blocks missing from a short `tree` are read and checked as usual.
    pub fn trusting(expected: Digest, size: u64, tree: &[u8]) -> Self {
        let verifier = TreeVerifier::new(expected, size);
        for (slot, block) in verifier.checked.iter().zip(tree.chunks_exact(BLOCK_SIZE)) {
            let mut owned = Box::new([0u8; BLOCK_SIZE]);
            owned.copy_from_slice(block);
            let _ = slot.set(owned);
        }
        verifier
    }

    /// The tree's layout.
    pub fn layout(&self) -> &TreeLayout {
        &self.layout
    }

    /// Bytes of tree kept in memory at most (the whole tree).
    pub fn memory_bound(&self) -> u64 {
        self.layout.tree_len()
    }

    /// Check the top of the tree against the digest now, so that a tree that does not belong
    /// to it is found before any data is served.
    pub fn check_root(&self, tree: &(impl TreeBlocks + ?Sized)) -> Result<(), VerifyError> {
        match self.layout.levels() {
            0 => Ok(()),
            n => self.tree_block(tree, n - 1, 0).map(|_| ()),
        }
    }

    /// Check `data`, the file's content from block `first_block` on: whole blocks, except that
    /// the last may be short where the file ends. Every block is hashed (several threads share a
    /// large run) and compared with its checked hash in the tree.
    pub fn verify(
        &self,
        tree: &(impl TreeBlocks + ?Sized),
        first_block: u64,
        data: &[u8],
    ) -> Result<(), VerifyError> {
        let misaligned = || VerifyError::Misaligned {
            block: first_block,
            len: data.len(),
        };
        let start = first_block
            .checked_mul(BLOCK_SIZE as u64)
            .ok_or_else(misaligned)?;
        let end = start + data.len() as u64;
        if end > self.layout.size
            || (end != self.layout.size && !data.len().is_multiple_of(BLOCK_SIZE))
        {
            return Err(misaligned());
        }
        if data.is_empty() {
            return Ok(());
        }
        let dlen = self.layout.algorithm.digest_len();
        let blocks = data.len().div_ceil(BLOCK_SIZE);
        let mut hashes = vec![0u8; blocks * dlen];
        hash_data_blocks(self.layout.algorithm, data, &mut hashes);
        if self.layout.levels() == 0 {
            // One block: its hash is the root.
            let digest = digest_from_root(self.layout.algorithm, self.layout.size, &hashes);
            return if digest == self.expected {
                Ok(())
            } else {
                Err(VerifyError::Data { block: 0 })
            };
        }
        let per_block = self.layout.hashes_per_block();
        for (k, hash) in hashes.chunks_exact(dlen).enumerate() {
            let block = first_block + k as u64;
            let parent = self.tree_block(tree, 0, block / per_block)?;
            let at = (block % per_block) as usize * dlen;
            if parent[at..at + dlen] != *hash {
                return Err(VerifyError::Data { block });
            }
        }
        Ok(())
    }

    /// Tree block `index` of `level`, checked (against its parent, or for the top level against
    /// the digest) the first time it is asked for.
    fn tree_block(
        &self,
        tree: &(impl TreeBlocks + ?Sized),
        level: usize,
        index: u64,
    ) -> Result<&[u8; BLOCK_SIZE], VerifyError> {
        let bad = VerifyError::Tree { level, index };
        let position = self
            .layout
            .position(level, index)
            .ok_or(VerifyError::Tree { level, index })?;
        let slot = self
            .checked
            .get(usize::try_from(position).unwrap_or(usize::MAX))
            .ok_or(VerifyError::Tree { level, index })?;
        if let Some(block) = slot.get() {
            return Ok(block);
        }
        let mut block = Box::new([0u8; BLOCK_SIZE]);
        tree.read_tree_block(position, &mut block)?;
        let dlen = self.layout.algorithm.digest_len();
        let mut hash = [0u8; 64];
        self.layout
            .algorithm
            .hash_block(&block[..], &mut hash[..dlen]);
        let good = if level + 1 == self.layout.levels() {
            digest_from_root(self.layout.algorithm, self.layout.size, &hash) == self.expected
        } else {
            let per_block = self.layout.hashes_per_block();
            let parent = self.tree_block(tree, level + 1, index / per_block)?;
            let at = (index % per_block) as usize * dlen;
            parent[at..at + dlen] == hash[..dlen]
        };
        if !good {
            return Err(bad);
        }
        // Another thread may have checked the same block meanwhile: both are the same bytes.
        Ok(slot.get_or_init(|| block))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::fsverity::digest;

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    fn tree_of(algorithm: Algorithm, data: &[u8]) -> (Vec<u8>, Digest) {
        let mut leaves = vec![0u8; data.len().div_ceil(BLOCK_SIZE).max(1) * algorithm.digest_len()];
        hash_data_blocks(algorithm, data, &mut leaves);
        build_tree(algorithm, data.len() as u64, &leaves)
    }

    #[test]
    fn layouts_put_the_top_level_first() {
        let l = TreeLayout::new(Algorithm::Sha256, 0);
        assert_eq!((l.levels(), l.tree_blocks()), (0, 0));
        let l = TreeLayout::new(Algorithm::Sha256, 4096);
        assert_eq!((l.levels(), l.tree_blocks()), (0, 0));
        let l = TreeLayout::new(Algorithm::Sha256, 4097);
        assert_eq!((l.levels(), l.tree_blocks()), (1, 1));
        // 128 sha256 hashes per block: 129 data blocks need 2 level-0 blocks and a root.
        let l = TreeLayout::new(Algorithm::Sha256, 129 * 4096);
        assert_eq!(l.levels, vec![(1, 2), (0, 1)]);
        // 64 sha512 hashes per block.
        let l = TreeLayout::new(Algorithm::Sha512, 512 << 20);
        assert_eq!(l.levels, vec![(33, 2048), (1, 32), (0, 1)]);
        assert_eq!(l.tree_len(), 2081 * 4096);
    }

    #[test]
    fn built_trees_give_the_streaming_digest() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            for len in [
                0,
                1,
                4095,
                4096,
                4097,
                8192,
                129 * 4096 + 5,
                300_001,
                1 << 20,
            ] {
                let data = content(len, 3);
                let (tree, d) = tree_of(algorithm, &data);
                assert_eq!(d, digest(algorithm, &data), "{algorithm} {len}");
                let layout = TreeLayout::new(algorithm, len as u64);
                assert_eq!(tree.len() as u64, layout.tree_len(), "{algorithm} {len}");
            }
        }
    }

    #[test]
    fn verifier_accepts_good_data_and_finds_the_bad_block() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let len = 600 * 4096 + 1234;
            let data = content(len, 9);
            let (tree, d) = tree_of(algorithm, &data);
            let v = TreeVerifier::new(d, len as u64);
            v.check_root(&tree[..]).unwrap();
            // Whole file, a middle range, the short last block alone.
            v.verify(&tree[..], 0, &data).unwrap();
            v.verify(&tree[..], 100, &data[100 * 4096..164 * 4096])
                .unwrap();
            v.verify(&tree[..], 600, &data[600 * 4096..]).unwrap();
            // A changed byte far in: that block fails, earlier ones still pass.
            let mut bad = data.clone();
            bad[523 * 4096 + 17] ^= 1;
            v.verify(&tree[..], 0, &bad[..523 * 4096]).unwrap();
            let err = v.verify(&tree[..], 520, &bad[520 * 4096..530 * 4096]);
            assert!(
                matches!(err, Err(VerifyError::Data { block: 523 })),
                "{err:?}"
            );
            // Ranges that are not whole blocks of the file.
            assert!(matches!(
                v.verify(&tree[..], 1, &data[4096..4096 + 100]),
                Err(VerifyError::Misaligned { .. })
            ));
            assert!(v
                .verify(&tree[..], 600, &data[600 * 4096..][..100])
                .is_err());
        }
    }

    #[test]
    fn a_tree_of_other_data_is_refused_at_the_root() {
        let data = content(50 * 4096, 1);
        let (_, d) = tree_of(Algorithm::Sha256, &data);
        let (other_tree, _) = tree_of(Algorithm::Sha256, &content(50 * 4096, 2));
        let v = TreeVerifier::new(d, data.len() as u64);
        assert!(matches!(
            v.check_root(&other_tree[..]),
            Err(VerifyError::Tree { level: 0, .. })
        ));
        assert!(v.verify(&other_tree[..], 0, &data[..4096]).is_err());
        // A damaged lower block of a two-level tree is caught against its parent.
        let data = content(200 * 4096, 4);
        let (mut tree, d) = tree_of(Algorithm::Sha256, &data);
        tree[4096 + 4096 + 5] ^= 1; // level 0, block 1
        let v = TreeVerifier::new(d, data.len() as u64);
        v.check_root(&tree[..]).unwrap();
        v.verify(&tree[..], 0, &data[..4096]).unwrap();
        assert!(matches!(
            v.verify(&tree[..], 130, &data[130 * 4096..131 * 4096]),
            Err(VerifyError::Tree { level: 0, index: 1 })
        ));
        // A truncated tree is an I/O error, not a panic (a new verifier: `v` has the blocks).
        let v = TreeVerifier::new(d, data.len() as u64);
        assert!(matches!(
            v.verify(&tree[..4096], 0, &data[..4096]),
            Err(VerifyError::Io(_))
        ));
    }

    #[test]
    fn single_block_files_check_against_the_digest() {
        let data = content(3000, 5);
        let d = digest(Algorithm::Sha512, &data);
        let v = TreeVerifier::new(d, data.len() as u64);
        v.verify(&[][..], 0, &data).unwrap();
        let mut bad = data.clone();
        bad[0] ^= 1;
        assert!(matches!(
            v.verify(&[][..], 0, &bad),
            Err(VerifyError::Data { block: 0 })
        ));
    }
}
