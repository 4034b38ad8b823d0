//! The AVX-512 kernel: eight SHA-512 states side by side, one per 64-bit lane (FIPS 180-4 §6.4,
//! with every variable a vector). This module is the crate's only `unsafe`: calling the
//! `target_feature` function, the gathers that load a word from each of the eight blocks, and
//! the store of the final state.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512i, _mm512_add_epi64, _mm512_i64gather_epi64, _mm512_ror_epi64, _mm512_set1_epi64,
    _mm512_setr_epi64, _mm512_shuffle_epi8, _mm512_srli_epi64, _mm512_storeu_si512,
    _mm512_ternarylogic_epi64,
};

use crate::sha512::{H0, K, MESSAGE_BLOCKS};
use crate::{BLOCK_SIZE, DIGEST_LEN, LANES};

/// `vpternlogq` truth tables: three-way XOR, choice (`e ? f : g`) and majority.
const XOR3: i32 = 0x96;
const CHOICE: i32 = 0xca;
const MAJORITY: i32 = 0xe8;

pub(crate) fn available() -> bool {
    // The standard library caches the CPUID answer; this is an atomic load after the first call.
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// Hash the eight blocks of `group` (`LANES * BLOCK_SIZE` bytes) into `digests` (`LANES *
/// DIGEST_LEN` bytes). Returns false, having written nothing, if either has another length or
/// the CPU lacks AVX-512.
pub(crate) fn hash_group(group: &[u8], digests: &mut [u8]) -> bool {
    let (Ok(group), Ok(digests)) = (
        <&[u8; LANES * BLOCK_SIZE]>::try_from(group),
        <&mut [u8; LANES * DIGEST_LEN]>::try_from(digests),
    ) else {
        return false;
    };
    if !available() {
        return false;
    }
    // SAFETY: the CPU has AVX-512F and AVX-512BW (checked just above), the only requirement
    // `hash_group_avx512` has beyond its typed arguments.
    unsafe { hash_group_avx512(group, digests) };
    true
}

#[target_feature(enable = "avx512f,avx512bw")]
fn hash_group_avx512(group: &[u8; LANES * BLOCK_SIZE], digests: &mut [u8; LANES * DIGEST_LEN]) {
    let mut state = H0.map(|h| _mm512_set1_epi64(h as i64));
    // Lane i reads from block i.
    let lane_offsets = _mm512_setr_epi64(
        0,
        BLOCK_SIZE as i64,
        2 * BLOCK_SIZE as i64,
        3 * BLOCK_SIZE as i64,
        4 * BLOCK_SIZE as i64,
        5 * BLOCK_SIZE as i64,
        6 * BLOCK_SIZE as i64,
        7 * BLOCK_SIZE as i64,
    );
    // SHA-512 words are big-endian: reverse the bytes of every 64-bit lane.
    let big_endian = _mm512_setr_epi64(
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
        0x0001_0203_0405_0607,
        0x0809_0a0b_0c0d_0e0f,
    );
    let mut words = [_mm512_set1_epi64(0); 16];
    for message_block in 0..MESSAGE_BLOCKS {
        for (j, word) in words.iter_mut().enumerate() {
            let offset = message_block * 128 + j * 8;
            // SAFETY: lane i reads the 8 bytes at `offset + i * BLOCK_SIZE`; the largest,
            // 31 * 128 + 15 * 8 + 7 * 4096 + 8 = 32768, is the end of `group`, which is exactly
            // LANES * BLOCK_SIZE bytes long. The gather has no alignment requirement.
            let loaded = unsafe {
                _mm512_i64gather_epi64::<1>(lane_offsets, group.as_ptr().add(offset).cast())
            };
            *word = _mm512_shuffle_epi8(loaded, big_endian);
        }
        compress(&mut state, &words);
    }
    // A 4096-byte message always ends with a whole padding block: the 1 bit, zeros, and the
    // length in bits.
    let mut padding = [_mm512_set1_epi64(0); 16];
    padding[0] = _mm512_set1_epi64(i64::MIN);
    padding[15] = _mm512_set1_epi64((BLOCK_SIZE * 8) as i64);
    compress(&mut state, &padding);

    // stored[i][lane]: state word i of each lane.
    let mut stored = [[0u64; LANES]; 8];
    for (word, vector) in stored.iter_mut().zip(state) {
        // SAFETY: `word` is 8 u64s, exactly the 64 bytes one vector stores; unaligned stores are
        // allowed.
        unsafe { _mm512_storeu_si512(word.as_mut_ptr().cast(), vector) };
    }
    for (lane, digest) in digests.chunks_exact_mut(DIGEST_LEN).enumerate() {
        for (word, out) in stored.iter().zip(digest.chunks_exact_mut(8)) {
            out.copy_from_slice(&word[lane].to_be_bytes());
        }
    }
}

/// One SHA-512 compression of a 128-byte message block per lane (FIPS 180-4 §6.4.2), the
/// message schedule kept as a rolling window of 16 words.
#[target_feature(enable = "avx512f,avx512bw")]
fn compress(state: &mut [__m512i; 8], message: &[__m512i; 16]) {
    let mut w = *message;
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (t, k) in K.iter().enumerate() {
        let wt = if t < 16 {
            w[t]
        } else {
            let w15 = w[(t + 1) & 15];
            let w2 = w[(t + 14) & 15];
            let sigma0 = _mm512_ternarylogic_epi64::<XOR3>(
                _mm512_ror_epi64::<1>(w15),
                _mm512_ror_epi64::<8>(w15),
                _mm512_srli_epi64::<7>(w15),
            );
            let sigma1 = _mm512_ternarylogic_epi64::<XOR3>(
                _mm512_ror_epi64::<19>(w2),
                _mm512_ror_epi64::<61>(w2),
                _mm512_srli_epi64::<6>(w2),
            );
            let next = _mm512_add_epi64(
                _mm512_add_epi64(w[t & 15], sigma0),
                _mm512_add_epi64(w[(t + 9) & 15], sigma1),
            );
            w[t & 15] = next;
            next
        };
        let big_sigma1 = _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<14>(e),
            _mm512_ror_epi64::<18>(e),
            _mm512_ror_epi64::<41>(e),
        );
        let choice = _mm512_ternarylogic_epi64::<CHOICE>(e, f, g);
        let t1 = _mm512_add_epi64(
            _mm512_add_epi64(h, big_sigma1),
            _mm512_add_epi64(choice, _mm512_add_epi64(_mm512_set1_epi64(*k as i64), wt)),
        );
        let big_sigma0 = _mm512_ternarylogic_epi64::<XOR3>(
            _mm512_ror_epi64::<28>(a),
            _mm512_ror_epi64::<34>(a),
            _mm512_ror_epi64::<39>(a),
        );
        let majority = _mm512_ternarylogic_epi64::<MAJORITY>(a, b, c);
        let t2 = _mm512_add_epi64(big_sigma0, majority);
        h = g;
        g = f;
        f = e;
        e = _mm512_add_epi64(d, t1);
        d = c;
        c = b;
        b = a;
        a = _mm512_add_epi64(t1, t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = _mm512_add_epi64(*s, v);
    }
}
