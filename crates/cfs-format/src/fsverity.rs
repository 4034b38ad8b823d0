//! fs-verity digests: the Merkle-tree hash that names every object, image and stream.
//!
//! Parameters are fixed as composefs uses them: 4096-byte blocks, no salt, SHA-256 or SHA-512.
//! [`FsVerityHasher`] is streaming; large `update` calls hash their whole blocks on several
//! threads, because every imported byte passes through here.

use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use sha2::{Digest as _, Sha256, Sha512};

pub mod merkle;

/// fs-verity block size (`log_blocksize = 12`).
pub const BLOCK_SIZE: usize = 4096;

/// Below this many bytes in one `update`, hashing stays on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 20;

/// The hash algorithm of an fs-verity digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256 (kernel id 1, 32-byte digests).
    Sha256,
    /// SHA-512 (kernel id 2, 64-byte digests).
    Sha512,
}

impl Algorithm {
    /// The kernel's `FS_VERITY_HASH_ALG_*` number.
    pub fn kernel_id(self) -> u8 {
        match self {
            Algorithm::Sha256 => 1,
            Algorithm::Sha512 => 2,
        }
    }

    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    /// The short name used in ids: `sha256` / `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The repository algorithm string: `fsverity-sha256-12` / `fsverity-sha512-12`.
    pub fn repo_name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "fsverity-sha256-12",
            Algorithm::Sha512 => "fsverity-sha512-12",
        }
    }

    /// The algorithm whose digests have `len` bytes.
    pub fn from_digest_len(len: usize) -> Option<Self> {
        match len {
            32 => Some(Algorithm::Sha256),
            64 => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub(crate) fn hash_block(self, block: &[u8], out: &mut [u8]) {
        match self {
            Algorithm::Sha256 => out.copy_from_slice(&Sha256::digest(block)),
            Algorithm::Sha512 => out.copy_from_slice(&Sha512::digest(block)),
        }
    }

    /// Hash each whole `BLOCK_SIZE` block of `blocks` into the next `digest_len` bytes of `out`.
    pub(crate) fn hash_blocks(self, blocks: &[u8], out: &mut [u8]) {
        let dlen = self.digest_len();
        // SHA-512 has no instructions of its own on x86, but eight blocks at once with AVX-512
        // run at ~2.3 GB/s against ~0.6 GB/s one after another; SHA-256 has SHA-NI, which an
        // eight-lane version barely beats, and stays one at a time.
        let done = match self {
            Algorithm::Sha512 => cfs_sha512x8::hash_blocks(blocks, out),
            Algorithm::Sha256 => 0,
        };
        // Whole blocks only: a short last block is zero-padded by `flush_full_block`, never here.
        debug_assert_eq!(blocks.len() % BLOCK_SIZE, 0);
        let rest = blocks.get(done * BLOCK_SIZE..).unwrap_or_default();
        let rest_out = out.get_mut(done * dlen..).unwrap_or_default();
        for (o, b) in rest_out
            .chunks_exact_mut(dlen)
            .zip(rest.chunks_exact(BLOCK_SIZE))
        {
            self.hash_block(b, o);
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a textual digest or algorithm that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    /// Not lowercase/uppercase hex, or an odd number of digits.
    #[error("invalid hex digit in digest {0:?}")]
    BadHex(String),
    /// Hex of a length that is neither 64 nor 128 digits (or not the expected one).
    #[error("digest {text:?} has {len} hex digits; expected {expected}")]
    BadLength {
        /// The offending text.
        text: String,
        /// Its length in hex digits.
        len: usize,
        /// What was expected.
        expected: &'static str,
    },
    /// An id prefix other than `sha256:`/`sha512:`.
    #[error("unknown digest algorithm in {0:?} (expected sha256: or sha512:)")]
    UnknownAlgorithm(String),
}

/// An fs-verity digest of either algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digest {
    /// A SHA-256 fs-verity digest.
    Sha256([u8; 32]),
    /// A SHA-512 fs-verity digest.
    Sha512([u8; 64]),
}

impl Digest {
    /// Build a digest from raw bytes; the length picks the algorithm.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match bytes.len() {
            32 => {
                let mut d = [0u8; 32];
                d.copy_from_slice(bytes);
                Some(Digest::Sha256(d))
            }
            64 => {
                let mut d = [0u8; 64];
                d.copy_from_slice(bytes);
                Some(Digest::Sha512(d))
            }
            _ => None,
        }
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Digest::Sha256(d) => d,
            Digest::Sha512(d) => d,
        }
    }

    /// Which algorithm produced this digest.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Digest::Sha256(_) => Algorithm::Sha256,
            Digest::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        to_hex(self.as_bytes())
    }

    /// `sha256:<hex>` / `sha512:<hex>`.
    pub fn to_id(&self) -> String {
        format!("{}:{}", self.algorithm().name(), self.to_hex())
    }

    /// The object path `XX/<rest-of-hex>` used by repositories and digest stores.
    pub fn object_path(&self) -> String {
        let hex = self.to_hex();
        format!("{}/{}", &hex[..2], &hex[2..])
    }

    /// Parse hex of either length (64 digits = sha256, 128 = sha512).
    pub fn from_hex(text: &str) -> Result<Self, ParseDigestError> {
        let bytes = from_hex(text).ok_or_else(|| ParseDigestError::BadHex(text.to_owned()))?;
        Digest::from_bytes(&bytes).ok_or_else(|| ParseDigestError::BadLength {
            text: text.to_owned(),
            len: text.len(),
            expected: "64 or 128",
        })
    }

    /// Parse hex that must be of `algorithm`.
    pub fn from_hex_alg(algorithm: Algorithm, text: &str) -> Result<Self, ParseDigestError> {
        let d = Digest::from_hex(text)?;
        if d.algorithm() != algorithm {
            return Err(ParseDigestError::BadLength {
                text: text.to_owned(),
                len: text.len(),
                expected: match algorithm {
                    Algorithm::Sha256 => "64",
                    Algorithm::Sha512 => "128",
                },
            });
        }
        Ok(d)
    }

    /// Parse `sha256:<hex>` / `sha512:<hex>`.
    pub fn from_id(text: &str) -> Result<Self, ParseDigestError> {
        let (alg, hex) = text
            .split_once(':')
            .ok_or_else(|| ParseDigestError::UnknownAlgorithm(text.to_owned()))?;
        let alg = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(ParseDigestError::UnknownAlgorithm(text.to_owned())),
        };
        Digest::from_hex_alg(alg, hex)
    }

    /// Parse an object path `XX/<rest>` back into a digest.
    pub fn from_object_path(path: &str) -> Result<Self, ParseDigestError> {
        let path = path.strip_prefix('/').unwrap_or(path);
        match path.split_once('/') {
            Some((head, rest)) if head.len() == 2 => Digest::from_hex(&format!("{head}{rest}")),
            _ => Err(ParseDigestError::BadHex(path.to_owned())),
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_id())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = ParseDigestError;
    /// Accepts both `sha256:<hex>` ids and bare hex.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Digest::from_id(s)
        } else {
            Digest::from_hex(s)
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Decode hex (either case); `None` on an odd length or a non-hex digit.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    t.chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// One level of the Merkle tree being built: a partly filled block of hashes (or, at level 0,
/// of data) and how many blocks this level has produced so far.
#[derive(Debug, Clone)]
struct Level {
    buf: Vec<u8>,
    blocks_hashed: u64,
}

/// Streaming fs-verity hasher.
#[derive(Debug, Clone)]
pub struct FsVerityHasher {
    algorithm: Algorithm,
    size: u64,
    /// `levels[0]` buffers file data; `levels[i]` for i ≥ 1 buffers hashes of level i−1.
    levels: Vec<Level>,
    /// Every data block's hash so far, when [`FsVerityHasher::keep_leaves`] asked for them.
    leaves: Option<Vec<u8>>,
}

impl FsVerityHasher {
    /// A hasher for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        FsVerityHasher {
            algorithm,
            size: 0,
            levels: vec![Level {
                buf: Vec::with_capacity(BLOCK_SIZE),
                blocks_hashed: 0,
            }],
            leaves: None,
        }
    }

    /// Keep the hash of every data block from now on (call it before the first
    /// [`update`](Self::update)), so that [`finish_with_tree`](Self::finish_with_tree) can
    /// return the whole Merkle tree. It costs one digest per 4 KiB of memory.
    pub fn keep_leaves(&mut self) {
        self.leaves.get_or_insert_with(Vec::new);
    }

    /// A hasher whose data (`size` bytes) has been hashed already: `leaves` holds the hash of
    /// each data block, the last one zero-padded.
    fn from_leaves(algorithm: Algorithm, size: u64, leaves: &[u8]) -> Self {
        let mut hasher = FsVerityHasher::new(algorithm);
        let dlen = algorithm.digest_len();
        hasher.size = size;
        hasher.levels[0].blocks_hashed = (leaves.len() / dlen) as u64;
        for leaf in leaves.chunks_exact(dlen) {
            hasher.push_hash(1, leaf);
        }
        hasher
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Feed more file data.
    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        // Top up a partial data block first so that what follows is block-aligned.
        let level0 = &mut self.levels[0];
        if !level0.buf.is_empty() {
            let take = (BLOCK_SIZE - level0.buf.len()).min(data.len());
            level0.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if level0.buf.len() == BLOCK_SIZE {
                self.flush_full_block(0);
            }
        }
        let whole = data.len() / BLOCK_SIZE * BLOCK_SIZE;
        let (blocks, rest) = data.split_at(whole);
        if !blocks.is_empty() {
            self.hash_data_blocks(blocks);
        }
        if !rest.is_empty() {
            self.levels[0].buf.extend_from_slice(rest);
        }
    }

    fn hash_data_blocks(&mut self, blocks: &[u8]) {
        let dlen = self.algorithm.digest_len();
        let n = blocks.len() / BLOCK_SIZE;
        let mut hashes = vec![0u8; n * dlen];
        let alg = self.algorithm;
        if blocks.len() >= PARALLEL_THRESHOLD {
            hashes
                .par_chunks_mut(dlen * 64)
                .zip(blocks.par_chunks(BLOCK_SIZE * 64))
                .for_each(|(out, inp)| alg.hash_blocks(inp, out));
        } else {
            alg.hash_blocks(blocks, &mut hashes);
        }
        self.levels[0].blocks_hashed += n as u64;
        if let Some(leaves) = &mut self.leaves {
            leaves.extend_from_slice(&hashes);
        }
        for h in hashes.chunks(dlen) {
            self.push_hash(1, h);
        }
    }

    /// Hash the full buffer of `level` and pass the result up.
    fn flush_full_block(&mut self, level: usize) {
        let dlen = self.algorithm.digest_len();
        let mut out = [0u8; 64];
        let lvl = &mut self.levels[level];
        lvl.buf.resize(BLOCK_SIZE, 0);
        self.algorithm.hash_block(&lvl.buf, &mut out[..dlen]);
        lvl.buf.clear();
        lvl.blocks_hashed += 1;
        if level == 0 {
            if let Some(leaves) = &mut self.leaves {
                leaves.extend_from_slice(&out[..dlen]);
            }
        }
        self.push_hash(level + 1, &out[..dlen]);
    }

    fn push_hash(&mut self, level: usize, hash: &[u8]) {
        if self.levels.len() <= level {
            self.levels.push(Level {
                buf: Vec::with_capacity(BLOCK_SIZE),
                blocks_hashed: 0,
            });
        }
        self.levels[level].buf.extend_from_slice(hash);
        if self.levels[level].buf.len() == BLOCK_SIZE {
            self.flush_full_block(level);
        }
    }

    /// The Merkle root hash (zero-filled for an empty input).
    fn root_hash(&mut self) -> Vec<u8> {
        let dlen = self.algorithm.digest_len();
        if self.size == 0 {
            return vec![0; dlen];
        }
        if !self.levels[0].buf.is_empty() {
            self.flush_full_block(0);
        }
        let mut level = 1;
        loop {
            // Hashes that reached `level`: one per block hashed below it.
            let produced = self.levels[level - 1].blocks_hashed;
            if produced == 1 {
                // A lone hash never fills a block, so it is still in this level's buffer.
                return self.levels[level].buf[..dlen].to_vec();
            }
            if !self.levels[level].buf.is_empty() {
                self.flush_full_block(level);
            }
            level += 1;
        }
    }

    /// Finish and return the fs-verity file digest.
    pub fn finish(mut self) -> Digest {
        let root = self.root_hash();
        merkle::digest_from_root(self.algorithm, self.size, &root)
    }

    /// Finish and return the digest and, if [`keep_leaves`](Self::keep_leaves) was called, the
    /// whole serialised Merkle tree (as [`merkle::build_tree`] makes it; empty for files of at
    /// most one block).
    pub fn finish_with_tree(mut self) -> (Digest, Option<Vec<u8>>) {
        let Some(mut leaves) = self.leaves.take() else {
            return (self.finish(), None);
        };
        let dlen = self.algorithm.digest_len();
        let partial = &self.levels[0].buf;
        if !partial.is_empty() {
            // The last, short block, hashed zero-padded.
            let mut out = [0u8; 64];
            merkle::hash_data_blocks(self.algorithm, partial, &mut out[..dlen]);
            leaves.extend_from_slice(&out[..dlen]);
        }
        let (tree, digest) = merkle::build_tree(self.algorithm, self.size, &leaves);
        (digest, Some(tree))
    }
}

/// fs-verity digest of an in-memory buffer.
pub fn digest(algorithm: Algorithm, data: &[u8]) -> Digest {
    let mut h = FsVerityHasher::new(algorithm);
    h.update(data);
    h.finish()
}

/// fs-verity digests of several in-memory contents, each the same as [`digest`] gives.
///
/// Why: with SHA-512 on a CPU with AVX-512, leaf blocks are hashed eight at a time, but a small
/// file has fewer than eight blocks, and a larger one usually leaves a few over. Here those
/// leftovers are gathered across the contents into groups of eight, so a batch of small files
/// (a layer's typical content) is hashed about four times faster than one file at a time.
pub fn digest_many<C: AsRef<[u8]>>(algorithm: Algorithm, contents: &[C]) -> Vec<Digest> {
    if algorithm != Algorithm::Sha512 || !cfs_sha512x8::available() {
        return contents
            .iter()
            .map(|c| digest(algorithm, c.as_ref()))
            .collect();
    }
    let dlen = algorithm.digest_len();
    const LANES: usize = cfs_sha512x8::LANES;
    let mut leaves: Vec<Vec<u8>> = contents
        .iter()
        .map(|c| vec![0u8; c.as_ref().len().div_ceil(BLOCK_SIZE) * dlen])
        .collect();
    // Leftover blocks, copied (zero-padded) into a group until it is full: (content, block).
    let mut group = vec![0u8; LANES * BLOCK_SIZE];
    let mut grouped: Vec<(usize, usize)> = Vec::with_capacity(LANES);
    let mut group_out = [0u8; LANES * cfs_sha512x8::DIGEST_LEN];
    for (index, content) in contents.iter().enumerate() {
        let data = content.as_ref();
        let whole_groups = data.len() / BLOCK_SIZE / LANES * LANES;
        let done = cfs_sha512x8::hash_blocks(
            data.get(..whole_groups * BLOCK_SIZE).unwrap_or_default(),
            leaves[index]
                .get_mut(..whole_groups * dlen)
                .unwrap_or_default(),
        );
        for (block_index, block) in data.chunks(BLOCK_SIZE).enumerate().skip(done) {
            let slot = &mut group[grouped.len() * BLOCK_SIZE..][..BLOCK_SIZE];
            slot[..block.len()].copy_from_slice(block);
            slot[block.len()..].fill(0);
            grouped.push((index, block_index));
            if grouped.len() == LANES {
                if cfs_sha512x8::hash_blocks(&group, &mut group_out) == LANES {
                    for (k, &(c, b)) in grouped.iter().enumerate() {
                        leaves[c][b * dlen..][..dlen]
                            .copy_from_slice(&group_out[k * dlen..][..dlen]);
                    }
                } else {
                    for (k, &(c, b)) in grouped.iter().enumerate() {
                        algorithm.hash_block(
                            &group[k * BLOCK_SIZE..][..BLOCK_SIZE],
                            &mut leaves[c][b * dlen..][..dlen],
                        );
                    }
                }
                grouped.clear();
            }
        }
    }
    for (k, &(c, b)) in grouped.iter().enumerate() {
        algorithm.hash_block(
            &group[k * BLOCK_SIZE..][..BLOCK_SIZE],
            &mut leaves[c][b * dlen..][..dlen],
        );
    }
    contents
        .iter()
        .zip(&leaves)
        .map(|(content, leaves)| {
            FsVerityHasher::from_leaves(algorithm, content.as_ref().len() as u64, leaves).finish()
        })
        .collect()
}

/// fs-verity digest of everything `reader` yields.
pub fn digest_reader(
    algorithm: Algorithm,
    mut reader: impl std::io::Read,
) -> std::io::Result<Digest> {
    let mut h = FsVerityHasher::new(algorithm);
    // Start small, since most files are (a zeroed 8 MiB buffer per small file cost more than
    // hashing it), and grow while the reader keeps filling it, so that large files reach the
    // parallel path in large batches.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let filled = crate::fill::read_full(&mut reader, &mut buf)?;
        if filled == 0 {
            break;
        }
        h.update(&buf[..filled]);
        if filled < buf.len() {
            break;
        }
        if buf.len() < 8 << 20 {
            buf.resize(buf.len() * 4, 0);
        }
    }
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hasher_keeping_leaves_gives_the_whole_tree() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            // Empty, one block, short tails, several levels (sha512: 64 hashes a block).
            for len in [
                0usize,
                1,
                4096,
                4097,
                65 * 4096 + 5,
                300_000,
                4096 * 64 * 64 + 1,
            ] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
                let (tree, digest) = merkle::tree_of(algorithm, &data);
                for piece in [4093usize, 1 << 20] {
                    let mut h = FsVerityHasher::new(algorithm);
                    h.keep_leaves();
                    for chunk in data.chunks(piece) {
                        h.update(chunk);
                    }
                    let (d, t) = h.finish_with_tree();
                    assert_eq!(d, digest, "{algorithm} len {len}");
                    assert_eq!(d, super::digest(algorithm, &data), "{algorithm} len {len}");
                    assert!(
                        t == Some(tree.clone()),
                        "{algorithm} len {len} pieces {piece}"
                    );
                }
            }
            let mut plain = FsVerityHasher::new(algorithm);
            plain.update(b"no leaves kept");
            assert_eq!(plain.finish_with_tree().1, None);
        }
    }

    fn check(data: &[u8], sha256: &str, sha512: &str) {
        assert_eq!(
            digest(Algorithm::Sha256, data).to_hex(),
            sha256,
            "len {}",
            data.len()
        );
        assert_eq!(
            digest(Algorithm::Sha512, data).to_hex(),
            sha512,
            "len {}",
            data.len()
        );
        // The same result when fed in awkward pieces.
        let mut h = FsVerityHasher::new(Algorithm::Sha256);
        for piece in data.chunks(4093) {
            h.update(piece);
        }
        assert_eq!(h.finish().to_hex(), sha256);
    }

    #[test]
    fn vectors() {
        check(
            b"hello world",
            "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64",
            "18430270729d162d4e469daca123ae61893db4b0583d8f7081e3bf4f92b88ba514e7982f10733fb6aa895195c5ae8fd2eb2c47a8be05513ce5a0c51a6f570409",
        );
        check(
            b"",
            "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
            "ccf9e5aea1c2a64efa2f2354a6024b90dffde6bbc017825045dce374474e13d10adb9dadcc6ca8e17a3c075fbd31336e8f266ae6fa93a6c3bed66f9e784e5abf",
        );
        check(
            &[0u8; 4096],
            "babc284ee4ffe7f449377fbf6692715b43aec7bc39c094a95878904d34bac97e",
            "928922686c4caf32175f5236a7f964e9925d10a74dc6d8344a8bd08b23c228ff5792573987d7895f628f39c4f4ebe39a7367d7aeb16aaa0cd324ac1d53664e61",
        );
        check(
            &[0x5a; 4097],
            "d2619d9db529bfcc1b0179d7f22a3275ef40456580ebd246fb1c0faa70cc1f6c",
            "fc1aa4d2aeb1f623ac4c200411eb8529a913f8591af998a357a6462746d9ac163601f975dc0b9b78bf0790f7d3af548e355dccc1b31562b21e1a7f8ee8829ae3",
        );
        check(
            &vec![0u8; 1 << 20],
            "feb19a23e72cb1b8f935d668a09ecaad0bf7c5b9cdfa6dbba7c88a9998ed2b87",
            "b735a7f5b25dba3dafced82cfc87775a449b948c1fe323fa5500a6895d3118b99910d8dd2472ba3fcd676b77d6b555f124f6cbfc8615208b455ac056fd568494",
        );
        check(
            b"foo\n",
            "de2df1b639099a07c888f7cfda6e94a61f41fd86d1c1bba22238a06865f1d181",
            "d7b622982ca278c82cc650cf67639a4f7e61d95f19ab3ce77ebece7cd7edc4a7bfc397e85b6b50d8b1d8fe86f91fd73d9949037ba205c6f6fe12393367267943",
        );
        check(
            &vec![0x5a; 262145],
            "db90d7fe2fb0876a440d8bad9483f26ca3a68203e733b0877a7ee91674d19515",
            "ba55b464501c641d2af19858190dc31fd26a5c80da4fdde083aecf096d01e82275eb8c085c0bfc61bbededa0a2badc91daf716d770a36d4406cd68789f3a9129",
        );
        check(
            &vec![0x5a; 524288],
            "fa6dd50c6117479a8e0691104fd19c93263b8fc12c56a7c581d36a1fe2990845",
            "8f0cc42dcde59bbb14d7b0aa07c9d1c9d80610686f44eec56562f8b075f3ea836c2391b1b1073fee2ee16bbdcc1eea16f7b12139e743325edbfd6efd0aa19c07",
        );
        check(
            &vec![0x5a; 524289],
            "44a3ceba1c1a2896d0002c3b1e15f332291e8ef3c4760f14531061f17d6dc423",
            "14c1f43801057313ebfd3feef70bf60e0a5a03390101bfdcd043c42f8333020dae5482b864c2b82d05e4b4ababd9f52182a62fb0502b550415c00038ac2f6ee6",
        );
    }

    #[test]
    fn ids_round_trip() {
        let d = digest(Algorithm::Sha512, b"x");
        assert_eq!(Digest::from_id(&d.to_id()), Ok(d));
        assert_eq!(Digest::from_object_path(&d.object_path()), Ok(d));
        assert!(Digest::from_hex("zz").is_err());
        assert!(Digest::from_id("md5:00").is_err());
    }

    #[test]
    fn parallel_path_matches_serial() {
        let data: Vec<u8> = (0..(3 << 20) + 123).map(|i| (i * 7 % 251) as u8).collect();
        let mut serial = FsVerityHasher::new(Algorithm::Sha256);
        for piece in data.chunks(1000) {
            serial.update(piece);
        }
        assert_eq!(serial.finish(), digest(Algorithm::Sha256, &data));
    }

    #[test]
    fn batched_digests_match_one_at_a_time() {
        // Sizes around block and group edges, empty and one-byte contents, and a content with
        // whole groups plus leftovers; each content differs so a mix-up between them shows.
        let sizes = [
            0usize,
            1,
            64,
            4095,
            4096,
            4097,
            8191,
            3 * 4096,
            7 * 4096 + 1,
            8 * 4096,
            8 * 4096 + 1,
            9 * 4096,
            17 * 4096 + 100,
            65 * 4096 + 7,
            1,
            5000,
            12_345,
        ];
        let contents: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (j * 31 + i * 7 + j / 4096) as u8).collect())
            .collect();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let one_by_one: Vec<Digest> = contents.iter().map(|c| digest(algorithm, c)).collect();
            assert_eq!(digest_many(algorithm, &contents), one_by_one, "{algorithm}");
            // Every leftover count from 0 to 7 at the end of a batch.
            for take in 0..contents.len() {
                assert_eq!(
                    digest_many(algorithm, &contents[..take]),
                    one_by_one[..take],
                    "{algorithm}, {take} contents"
                );
            }
        }
    }
}
