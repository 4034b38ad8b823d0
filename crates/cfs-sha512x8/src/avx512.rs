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

use crate::{BLOCK_SIZE, DIGEST_LEN, LANES};

/// The SHA-512 round constants (FIPS 180-4 §4.2.3).
const K: [u64; 80] = [
    0x428a_2f98_d728_ae22,
    0x7137_4491_23ef_65cd,
    0xb5c0_fbcf_ec4d_3b2f,
    0xe9b5_dba5_8189_dbbc,
    0x3956_c25b_f348_b538,
    0x59f1_11f1_b605_d019,
    0x923f_82a4_af19_4f9b,
    0xab1c_5ed5_da6d_8118,
    0xd807_aa98_a303_0242,
    0x1283_5b01_4570_6fbe,
    0x2431_85be_4ee4_b28c,
    0x550c_7dc3_d5ff_b4e2,
    0x72be_5d74_f27b_896f,
    0x80de_b1fe_3b16_96b1,
    0x9bdc_06a7_25c7_1235,
    0xc19b_f174_cf69_2694,
    0xe49b_69c1_9ef1_4ad2,
    0xefbe_4786_384f_25e3,
    0x0fc1_9dc6_8b8c_d5b5,
    0x240c_a1cc_77ac_9c65,
    0x2de9_2c6f_592b_0275,
    0x4a74_84aa_6ea6_e483,
    0x5cb0_a9dc_bd41_fbd4,
    0x76f9_88da_8311_53b5,
    0x983e_5152_ee66_dfab,
    0xa831_c66d_2db4_3210,
    0xb003_27c8_98fb_213f,
    0xbf59_7fc7_beef_0ee4,
    0xc6e0_0bf3_3da8_8fc2,
    0xd5a7_9147_930a_a725,
    0x06ca_6351_e003_826f,
    0x1429_2967_0a0e_6e70,
    0x27b7_0a85_46d2_2ffc,
    0x2e1b_2138_5c26_c926,
    0x4d2c_6dfc_5ac4_2aed,
    0x5338_0d13_9d95_b3df,
    0x650a_7354_8baf_63de,
    0x766a_0abb_3c77_b2a8,
    0x81c2_c92e_47ed_aee6,
    0x9272_2c85_1482_353b,
    0xa2bf_e8a1_4cf1_0364,
    0xa81a_664b_bc42_3001,
    0xc24b_8b70_d0f8_9791,
    0xc76c_51a3_0654_be30,
    0xd192_e819_d6ef_5218,
    0xd699_0624_5565_a910,
    0xf40e_3585_5771_202a,
    0x106a_a070_32bb_d1b8,
    0x19a4_c116_b8d2_d0c8,
    0x1e37_6c08_5141_ab53,
    0x2748_774c_df8e_eb99,
    0x34b0_bcb5_e19b_48a8,
    0x391c_0cb3_c5c9_5a63,
    0x4ed8_aa4a_e341_8acb,
    0x5b9c_ca4f_7763_e373,
    0x682e_6ff3_d6b2_b8a3,
    0x748f_82ee_5def_b2fc,
    0x78a5_636f_4317_2f60,
    0x84c8_7814_a1f0_ab72,
    0x8cc7_0208_1a64_39ec,
    0x90be_fffa_2363_1e28,
    0xa450_6ceb_de82_bde9,
    0xbef9_a3f7_b2c6_7915,
    0xc671_78f2_e372_532b,
    0xca27_3ece_ea26_619c,
    0xd186_b8c7_21c0_c207,
    0xeada_7dd6_cde0_eb1e,
    0xf57d_4f7f_ee6e_d178,
    0x06f0_67aa_7217_6fba,
    0x0a63_7dc5_a2c8_98a6,
    0x113f_9804_bef9_0dae,
    0x1b71_0b35_131c_471b,
    0x28db_77f5_2304_7d84,
    0x32ca_ab7b_40c7_2493,
    0x3c9e_be0a_15c9_bebc,
    0x431d_67c4_9c10_0d4c,
    0x4cc5_d4be_cb3e_42b6,
    0x597f_299c_fc65_7e2a,
    0x5fcb_6fab_3ad6_faec,
    0x6c44_198c_4a47_5817,
];

/// The SHA-512 initial state (FIPS 180-4 §5.3.5).
const H0: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

/// 128-byte SHA-512 message blocks in one 4096-byte block.
const MESSAGE_BLOCKS: usize = BLOCK_SIZE / 128;

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
