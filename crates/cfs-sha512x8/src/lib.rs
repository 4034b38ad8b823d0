//! `cfs-sha512x8` owns one idea: hashing many 4096-byte blocks with SHA-512 eight at a time.
//! The leaves of an fs-verity Merkle tree are exactly that, and SHA-512 has no instructions of
//! its own on the CPUs we run on, so a single stream runs at ~0.6 GB/s per core. With AVX-512,
//! each 64-bit lane of a vector register carries the state of one of eight independent blocks,
//! and one pass of the rounds hashes all eight: ~2.3 GB/s on the same core. The rotations are
//! native (`vprorq`) and every choice, majority and three-way XOR is one `vpternlogq`.
//!
//! [`hash_blocks`] hashes as many whole groups of eight blocks as it can and says how many; the
//! caller hashes the rest (and everything, on a CPU without AVX-512) the ordinary way.
//! The crate's only `unsafe` is in the `avx512` module.

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Bytes in one block (the fs-verity block size these digests are for).
pub const BLOCK_SIZE: usize = 4096;
/// Bytes in one SHA-512 digest.
pub const DIGEST_LEN: usize = 64;
/// Blocks hashed together.
pub const LANES: usize = 8;

/// Environment variable that, in debug builds only (which is what `cargo test` runs), makes
/// [`available`] answer false, so that tests can run the portable path that users whose CPUs lack
/// AVX-512 get. Release builds never read it.
pub const FORCE_PORTABLE_ENV: &str = "CFS_HASH_PORTABLE";

/// Whether the portable path is forced (debug builds with [`FORCE_PORTABLE_ENV`] set), read once.
fn portable_forced() -> bool {
    if !cfg!(debug_assertions) {
        return false;
    }
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os(FORCE_PORTABLE_ENV).is_some_and(|v| v != "0"))
}

/// Whether this CPU can hash eight blocks at once (AVX-512F and AVX-512BW), checked once.
pub fn available() -> bool {
    if portable_forced() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        avx512::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// SHA-512 each whole `BLOCK_SIZE` block of `blocks` into the matching `DIGEST_LEN` bytes of
/// `digests`, in groups of [`LANES`], for as many groups as both slices hold. Returns the number
/// of blocks hashed (a multiple of [`LANES`]; 0 when [`available`] is false): digests past that
/// are left untouched.
pub fn hash_blocks(blocks: &[u8], digests: &mut [u8]) -> usize {
    let mut hashed = 0;
    #[cfg(target_arch = "x86_64")]
    for (group, out) in blocks
        .chunks_exact(BLOCK_SIZE * LANES)
        .zip(digests.chunks_exact_mut(DIGEST_LEN * LANES))
        .take_while(|_| !portable_forced())
    {
        if !avx512::hash_group(group, out) {
            break;
        }
        hashed += LANES;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (blocks, digests);
    hashed
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest, Sha512};
    use std::io::Write;

    fn one_by_one(blocks: &[u8]) -> Vec<u8> {
        blocks
            .chunks_exact(BLOCK_SIZE)
            .flat_map(|b| Sha512::digest(b).to_vec())
            .collect()
    }

    /// Whether the eight-lane path can run here; otherwise skip loudly. Unlike a missing
    /// kernel feature, this one is not turned into a failure by `CFS_TEST_REQUIRE_ALL`: on a
    /// CPU without AVX-512 the eight-lane code never runs (fs-verity hashes one block at a
    /// time, which the cfs-format vectors test), so there is nothing left unchecked there.
    fn lanes_available(test: &str) -> bool {
        if available() {
            return true;
        }
        // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: {test}\n!!! missing: AVX-512F/BW on this CPU\n"
        );
        false
    }

    /// `count` blocks, each filled with its own byte so that a mixed-up lane shows.
    fn distinct_blocks(fill: u8, count: usize) -> Vec<u8> {
        (0..count)
            .flat_map(|i| vec![fill ^ (i as u8).wrapping_mul(0x1d); BLOCK_SIZE])
            .collect()
    }

    #[test]
    fn says_how_many_blocks_it_hashed() {
        let blocks = distinct_blocks(7, 19);
        let mut digests = vec![0u8; DIGEST_LEN * 19];
        let n = hash_blocks(&blocks, &mut digests);
        if !lanes_available("says_how_many_blocks_it_hashed") {
            assert_eq!(n, 0, "nothing is hashed without AVX-512");
            return;
        }
        assert_eq!(n, 16);
        assert_eq!(
            digests[..16 * DIGEST_LEN],
            one_by_one(&blocks)[..16 * DIGEST_LEN]
        );
        assert!(
            digests[16 * DIGEST_LEN..].iter().all(|&b| b == 0),
            "the tail is left alone"
        );
        // Too little room for the digests limits the groups as well.
        assert_eq!(hash_blocks(&blocks, &mut digests[..DIGEST_LEN * 9]), 8);
        assert_eq!(hash_blocks(&blocks[..BLOCK_SIZE * 7], &mut digests), 0);
    }

    #[test]
    fn edge_patterns_match_sha2() {
        if !lanes_available("edge_patterns_match_sha2") {
            return;
        }
        // Mostly zeros, mostly ones, and bytes with the top bit set (carries, sign), each lane
        // with a different block.
        for fill in [0x00u8, 0xff, 0x80, 0x7f] {
            let blocks = distinct_blocks(fill, LANES);
            let mut digests = vec![0u8; DIGEST_LEN * LANES];
            assert_eq!(hash_blocks(&blocks, &mut digests), LANES);
            assert_eq!(digests, one_by_one(&blocks), "fill {fill:#x}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn random_blocks_match_sha2(seed in any::<u64>(), groups in 1usize..4) {
            let mut x = seed | 1;
            let blocks: Vec<u8> = (0..BLOCK_SIZE * LANES * groups)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let mut digests = vec![0u8; DIGEST_LEN * LANES * groups];
            if lanes_available("random_blocks_match_sha2") {
                prop_assert_eq!(hash_blocks(&blocks, &mut digests), LANES * groups);
                prop_assert_eq!(digests, one_by_one(&blocks));
            }
        }
    }
}
