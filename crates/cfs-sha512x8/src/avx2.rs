//! The AVX2 kernel, for CPUs without AVX-512: four SHA-512 states side by side, one per 64-bit
//! lane of a 256-bit register, so a group of eight blocks is two passes. AVX2 has no 64-bit
//! rotate and no three-input logic, so each rotation is two shifts and an OR (the rotation by 8,
//! a byte shuffle), and choice and majority take three or four operations; the four lanes still
//! come out ahead of one scalar stream. This module's `unsafe` is calling the `target_feature`
//! functions, the unaligned loads of the message words and the store of the final state.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256i, _mm256_add_epi64, _mm256_and_si256, _mm256_loadu_si256, _mm256_or_si256,
    _mm256_permute2x128_si256, _mm256_set1_epi64x, _mm256_setr_epi64x, _mm256_shuffle_epi8,
    _mm256_slli_epi64, _mm256_srli_epi64, _mm256_storeu_si256, _mm256_unpackhi_epi64,
    _mm256_unpacklo_epi64, _mm256_xor_si256,
};

use crate::sha512::{H0, K, MESSAGE_BLOCKS};
use crate::{BLOCK_SIZE, DIGEST_LEN, LANES};

/// Blocks one pass hashes: one per 64-bit lane.
const WIDTH: usize = 4;

pub(crate) fn available() -> bool {
    // The standard library caches the CPUID answer; this is an atomic load after the first call.
    std::arch::is_x86_feature_detected!("avx2")
}

/// Hash the eight blocks of `group` (`LANES * BLOCK_SIZE` bytes) into `digests` (`LANES *
/// DIGEST_LEN` bytes), four at a time. Returns false, having written nothing, if either has
/// another length or the CPU lacks AVX2.
pub(crate) fn hash_group(group: &[u8], digests: &mut [u8]) -> bool {
    if group.len() != LANES * BLOCK_SIZE || digests.len() != LANES * DIGEST_LEN || !available() {
        return false;
    }
    for (blocks, out) in group
        .chunks_exact(WIDTH * BLOCK_SIZE)
        .zip(digests.chunks_exact_mut(WIDTH * DIGEST_LEN))
    {
        hash_up_to_four(blocks, out);
    }
    true
}

/// Hash the one to four whole blocks of `blocks` into the matching digests of `digests` in one
/// pass (unused lanes repeat the last block, and their results are dropped). Returns false,
/// having written nothing, if the lengths disagree, there are no blocks or more than four, or
/// the CPU lacks AVX2.
pub(crate) fn hash_up_to_four(blocks: &[u8], digests: &mut [u8]) -> bool {
    let count = blocks.len() / BLOCK_SIZE;
    if !(1..=WIDTH).contains(&count)
        || blocks.len() != count * BLOCK_SIZE
        || digests.len() != count * DIGEST_LEN
        || !available()
    {
        return false;
    }
    let lane_block = |lane: usize| -> &[u8; BLOCK_SIZE] {
        let start = lane.min(count - 1) * BLOCK_SIZE;
        // In range: `lane.min(count - 1)` is a block of `blocks`.
        blocks[start..start + BLOCK_SIZE]
            .try_into()
            .unwrap_or(&[0; BLOCK_SIZE])
    };
    let lanes: [&[u8; BLOCK_SIZE]; WIDTH] = std::array::from_fn(lane_block);
    let mut out = [0u8; WIDTH * DIGEST_LEN];
    // SAFETY: the CPU has AVX2 (checked above), the only requirement `hash_four` has beyond its
    // typed arguments.
    unsafe { hash_four(lanes, &mut out) };
    digests.copy_from_slice(&out[..count * DIGEST_LEN]);
    true
}

/// Rotate every lane right by `N` (0 < N < 64); `L` must be `64 - N` (const generics cannot
/// compute it).
#[inline]
#[target_feature(enable = "avx2")]
fn ror<const N: i32, const L: i32>(x: __m256i) -> __m256i {
    _mm256_or_si256(_mm256_srli_epi64::<N>(x), _mm256_slli_epi64::<L>(x))
}

#[target_feature(enable = "avx2")]
fn hash_four(blocks: [&[u8; BLOCK_SIZE]; WIDTH], digests: &mut [u8; WIDTH * DIGEST_LEN]) {
    let mut state = H0.map(|h| _mm256_set1_epi64x(h as i64));
    // SHA-512 words are big-endian: reverse the bytes of every 64-bit lane (the shuffle works
    // within each 128-bit half, which is all a 64-bit lane needs).
    let big_endian = _mm256_setr_epi64x(
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
    );
    let mut words = [_mm256_set1_epi64x(0); 16];
    for message_block in 0..MESSAGE_BLOCKS {
        // Four words of each block at a time, then a 4×4 transpose so that vector j holds word j
        // of every block.
        for quad in 0..4 {
            let offset = message_block * 128 + quad * 32;
            let rows: [__m256i; WIDTH] = std::array::from_fn(|lane| {
                let bytes = &blocks[lane][offset..offset + 32];
                // SAFETY: `bytes` is exactly the 32 bytes one unaligned load reads.
                unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
            });
            let lo01 = _mm256_unpacklo_epi64(rows[0], rows[1]);
            let hi01 = _mm256_unpackhi_epi64(rows[0], rows[1]);
            let lo23 = _mm256_unpacklo_epi64(rows[2], rows[3]);
            let hi23 = _mm256_unpackhi_epi64(rows[2], rows[3]);
            let transposed = [
                _mm256_permute2x128_si256::<0x20>(lo01, lo23),
                _mm256_permute2x128_si256::<0x20>(hi01, hi23),
                _mm256_permute2x128_si256::<0x31>(lo01, lo23),
                _mm256_permute2x128_si256::<0x31>(hi01, hi23),
            ];
            for (j, word) in transposed.into_iter().enumerate() {
                words[quad * 4 + j] = _mm256_shuffle_epi8(word, big_endian);
            }
        }
        compress(&mut state, &words);
    }
    // A 4096-byte message always ends with a whole padding block: the 1 bit, zeros, and the
    // length in bits.
    let mut padding = [_mm256_set1_epi64x(0); 16];
    padding[0] = _mm256_set1_epi64x(i64::MIN);
    padding[15] = _mm256_set1_epi64x((BLOCK_SIZE * 8) as i64);
    compress(&mut state, &padding);

    // stored[i][lane]: state word i of each lane.
    let mut stored = [[0u64; WIDTH]; 8];
    for (word, vector) in stored.iter_mut().zip(state) {
        // SAFETY: `word` is 4 u64s, exactly the 32 bytes one vector stores; unaligned stores are
        // allowed.
        unsafe { _mm256_storeu_si256(word.as_mut_ptr().cast(), vector) };
    }
    for (lane, digest) in digests.chunks_exact_mut(DIGEST_LEN).enumerate() {
        for (word, out) in stored.iter().zip(digest.chunks_exact_mut(8)) {
            out.copy_from_slice(&word[lane].to_be_bytes());
        }
    }
}

/// One SHA-512 compression of a 128-byte message block per lane (FIPS 180-4 §6.4.2), the
/// message schedule kept as a rolling window of 16 words.
#[target_feature(enable = "avx2")]
fn compress(state: &mut [__m256i; 8], message: &[__m256i; 16]) {
    // Rotating a 64-bit lane by 8 bits is a byte shuffle: one operation instead of three.
    let rotate_8 = _mm256_setr_epi64x(
        0x0007_0605_0403_0201,
        0x080f_0e0d_0c0b_0a09,
        0x0007_0605_0403_0201,
        0x080f_0e0d_0c0b_0a09,
    );
    let mut w = *message;
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (t, k) in K.iter().enumerate() {
        let wt = if t < 16 {
            w[t]
        } else {
            let w15 = w[(t + 1) & 15];
            let w2 = w[(t + 14) & 15];
            let sigma0 = _mm256_xor_si256(
                _mm256_xor_si256(ror::<1, 63>(w15), _mm256_shuffle_epi8(w15, rotate_8)),
                _mm256_srli_epi64::<7>(w15),
            );
            let sigma1 = _mm256_xor_si256(
                _mm256_xor_si256(ror::<19, 45>(w2), ror::<61, 3>(w2)),
                _mm256_srli_epi64::<6>(w2),
            );
            let next = _mm256_add_epi64(
                _mm256_add_epi64(w[t & 15], sigma0),
                _mm256_add_epi64(w[(t + 9) & 15], sigma1),
            );
            w[t & 15] = next;
            next
        };
        let big_sigma1 = _mm256_xor_si256(
            _mm256_xor_si256(ror::<14, 50>(e), ror::<18, 46>(e)),
            ror::<41, 23>(e),
        );
        // e ? f : g
        let choice = _mm256_xor_si256(g, _mm256_and_si256(e, _mm256_xor_si256(f, g)));
        let t1 = _mm256_add_epi64(
            _mm256_add_epi64(h, big_sigma1),
            _mm256_add_epi64(choice, _mm256_add_epi64(_mm256_set1_epi64x(*k as i64), wt)),
        );
        let big_sigma0 = _mm256_xor_si256(
            _mm256_xor_si256(ror::<28, 36>(a), ror::<34, 30>(a)),
            ror::<39, 25>(a),
        );
        // The bit most of a, b and c agree on.
        let majority = _mm256_or_si256(
            _mm256_and_si256(a, b),
            _mm256_and_si256(c, _mm256_or_si256(a, b)),
        );
        let t2 = _mm256_add_epi64(big_sigma0, majority);
        h = g;
        g = f;
        f = e;
        e = _mm256_add_epi64(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm256_add_epi64(t1, t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = _mm256_add_epi64(*s, v);
    }
}
