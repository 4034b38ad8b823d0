//! `cfs-sha512x8` owns one idea: hashing many 4096-byte blocks with SHA-512 several at a time.
//! The leaves of an fs-verity Merkle tree are exactly that, and SHA-512 has no instructions of
//! its own on the CPUs we run on, so a single stream runs at ~0.7 GB/s per core. Instead, each
//! 64-bit lane of a vector register carries the state of one independent block, and one pass of
//! the rounds hashes them all:
//! - with AVX-512, eight blocks per pass (~2.3 GB/s on one core); the rotations are native
//!   (`vprorq`) and every choice, majority and three-way XOR is one `vpternlogq`;
//! - with AVX2 only (many cloud CPUs, older and AMD ones), four blocks per pass, a group being
//!   two passes.
//!
//! [`hash_blocks`] hashes as many whole groups of eight blocks as it can and says how many; the
//! caller hashes the rest (and everything, on a CPU with neither) the ordinary way.
//! The crate's only `unsafe` is in the `avx512` and `avx2` modules.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod sha512;

/// Bytes in one block (the fs-verity block size these digests are for).
pub const BLOCK_SIZE: usize = 4096;
/// Bytes in one SHA-512 digest.
pub const DIGEST_LEN: usize = 64;
/// Blocks in one group, the unit [`hash_blocks`] works in.
pub const LANES: usize = 8;

/// Environment variable that, in debug builds only (which is what `cargo test` runs), chooses
/// the kernel: `avx2` skips AVX-512 even where the CPU has it (the path most cloud CPUs take),
/// and any other value but `0` makes [`available`] answer false, so that tests run the portable
/// one-block-at-a-time path too. Release builds never read it.
pub const FORCE_PORTABLE_ENV: &str = "CFS_HASH_PORTABLE";

/// Which kernels a debug build's [`FORCE_PORTABLE_ENV`] leaves allowed, read once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Allowed {
    All,
    Avx2Only,
    None,
}

fn allowed() -> Allowed {
    if !cfg!(debug_assertions) {
        return Allowed::All;
    }
    static ALLOWED: std::sync::OnceLock<Allowed> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| match std::env::var(FORCE_PORTABLE_ENV).as_deref() {
        Err(_) | Ok("0") => Allowed::All,
        Ok("avx2") => Allowed::Avx2Only,
        Ok(_) => Allowed::None,
    })
}

/// The vector kernel this CPU runs (and the environment allows), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Eight lanes of AVX-512.
    Avx512,
    /// Four lanes of AVX2, two passes per group.
    Avx2,
}

/// The kernel [`hash_blocks`] uses here, checked once per call (CPUID answers are cached).
pub fn kernel() -> Option<Kernel> {
    let allowed = allowed();
    #[cfg(target_arch = "x86_64")]
    {
        if allowed == Allowed::All && avx512::available() {
            return Some(Kernel::Avx512);
        }
        if allowed != Allowed::None && avx2::available() {
            return Some(Kernel::Avx2);
        }
    }
    let _ = allowed;
    None
}

/// Whether this CPU can hash a group of blocks at once (AVX-512F and AVX-512BW, or AVX2).
pub fn available() -> bool {
    kernel().is_some()
}

/// SHA-512 each whole `BLOCK_SIZE` block of `blocks` into the matching `DIGEST_LEN` bytes of
/// `digests`: in groups of [`LANES`] for as many groups as both slices hold, then what is left
/// in four-lane passes while at least two blocks remain. Returns the number of blocks hashed
/// (0 when [`available`] is false); digests past that are left untouched, for the caller to
/// hash one at a time.
pub fn hash_blocks(blocks: &[u8], digests: &mut [u8]) -> usize {
    let Some(kernel) = kernel() else {
        return 0;
    };
    let mut hashed = 0;
    #[cfg(target_arch = "x86_64")]
    for (group, out) in blocks
        .chunks_exact(BLOCK_SIZE * LANES)
        .zip(digests.chunks_exact_mut(DIGEST_LEN * LANES))
    {
        let done = match kernel {
            Kernel::Avx512 => avx512::hash_group(group, out),
            Kernel::Avx2 => avx2::hash_group(group, out),
        };
        if !done {
            break;
        }
        hashed += LANES;
    }
    // What is left of a group (a small file's few blocks) still beats one-at-a-time from two
    // blocks on, in four-lane passes whose unused lanes repeat a block.
    #[cfg(target_arch = "x86_64")]
    if hashed % LANES == 0 {
        let rest = blocks.get(hashed * BLOCK_SIZE..).unwrap_or_default();
        let rest_out = digests.get_mut(hashed * DIGEST_LEN..).unwrap_or_default();
        let count = (rest.len() / BLOCK_SIZE).min(rest_out.len() / DIGEST_LEN);
        if count >= 2 {
            for (pass, out) in rest[..count * BLOCK_SIZE]
                .chunks(4 * BLOCK_SIZE)
                .zip(rest_out[..count * DIGEST_LEN].chunks_mut(4 * DIGEST_LEN))
            {
                if pass.len() < 2 * BLOCK_SIZE || !avx2::hash_up_to_four(pass, out) {
                    break;
                }
                hashed += pass.len() / BLOCK_SIZE;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (blocks, digests, kernel);
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

    type GroupFn = fn(&[u8], &mut [u8]) -> bool;

    /// Every kernel this CPU can run, each called directly (whatever [`FORCE_PORTABLE_ENV`]
    /// says), so that a machine with AVX-512 tests the AVX2 kernel too. A kernel the CPU lacks
    /// is skipped loudly, once per test run. Unlike a missing kernel feature, this is not turned
    /// into a failure by `CFS_TEST_REQUIRE_ALL`: a kernel the CPU lacks never runs there.
    fn kernels_here() -> Vec<(&'static str, GroupFn)> {
        let mut kernels: Vec<(&'static str, GroupFn)> = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                kernels.push(("avx512", avx512::hash_group));
            } else {
                static SAID: std::sync::Once = std::sync::Once::new();
                // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
                SAID.call_once(|| {
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n!!! SKIPPED: the AVX-512 kernel's tests\n!!! missing: AVX-512F/BW on this CPU\n"
                    );
                });
            }
            if avx2::available() {
                kernels.push(("avx2", avx2::hash_group));
            }
        }
        kernels
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
        if !available() {
            assert_eq!(n, 0, "nothing is hashed without a vector kernel");
            return;
        }
        // Two groups of eight, then the last three in one four-lane pass.
        assert_eq!(n, 19);
        assert_eq!(digests, one_by_one(&blocks));
        // Too little room for the digests limits the blocks as well, and a lone block is left
        // to the caller.
        let mut short = vec![0u8; DIGEST_LEN * 9];
        assert_eq!(hash_blocks(&blocks, &mut short), 8);
        assert_eq!(
            short[..8 * DIGEST_LEN],
            one_by_one(&blocks)[..8 * DIGEST_LEN]
        );
        assert!(
            short[8 * DIGEST_LEN..].iter().all(|&b| b == 0),
            "the lone block is left alone"
        );
        let mut few = vec![0u8; DIGEST_LEN * 7];
        assert_eq!(hash_blocks(&blocks[..BLOCK_SIZE * 7], &mut few), 7);
        assert_eq!(few, one_by_one(&blocks[..BLOCK_SIZE * 7]));
    }

    #[test]
    fn a_group_of_another_size_is_refused() {
        for (name, hash_group) in kernels_here() {
            let blocks = distinct_blocks(1, LANES + 1);
            let mut digests = vec![0u8; DIGEST_LEN * (LANES + 1)];
            assert!(
                !hash_group(&blocks, &mut digests[..DIGEST_LEN * LANES]),
                "{name}"
            );
            assert!(
                !hash_group(&blocks[..BLOCK_SIZE * LANES], &mut digests),
                "{name}"
            );
            assert!(digests.iter().all(|&b| b == 0), "{name} wrote nothing");
        }
    }

    #[test]
    fn partial_passes_hash_only_their_blocks() {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            let blocks = distinct_blocks(0x5a, 4);
            for count in 1..=4 {
                let mut digests = vec![0u8; DIGEST_LEN * count];
                assert!(avx2::hash_up_to_four(
                    &blocks[..count * BLOCK_SIZE],
                    &mut digests
                ));
                assert_eq!(
                    digests,
                    one_by_one(&blocks[..count * BLOCK_SIZE]),
                    "{count}"
                );
            }
            let mut digests = vec![0u8; DIGEST_LEN * 5];
            assert!(!avx2::hash_up_to_four(&distinct_blocks(1, 5), &mut digests));
            assert!(!avx2::hash_up_to_four(&[], &mut []));
            assert!(!avx2::hash_up_to_four(&blocks[..BLOCK_SIZE], &mut digests));
        }
    }

    #[test]
    fn edge_patterns_match_sha2() {
        // Mostly zeros, mostly ones, and bytes with the top bit set (carries, sign), each lane
        // with a different block.
        for (name, hash_group) in kernels_here() {
            for fill in [0x00u8, 0xff, 0x80, 0x7f] {
                let blocks = distinct_blocks(fill, LANES);
                let mut digests = vec![0u8; DIGEST_LEN * LANES];
                assert!(hash_group(&blocks, &mut digests), "{name}");
                assert_eq!(digests, one_by_one(&blocks), "{name}, fill {fill:#x}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn random_blocks_match_sha2(seed in any::<u64>()) {
            let mut x = seed | 1;
            let blocks: Vec<u8> = (0..BLOCK_SIZE * LANES)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for (name, hash_group) in kernels_here() {
                let mut digests = vec![0u8; DIGEST_LEN * LANES];
                prop_assert!(hash_group(&blocks, &mut digests), "{}", name);
                prop_assert_eq!(&digests, &one_by_one(&blocks), "{}", name);
            }
        }
    }
}
