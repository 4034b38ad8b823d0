//! Leaf-hashing throughput on this CPU, one thread: SHA-512 through `sha2` one block at a time,
//! through this crate's kernel, and SHA-256 through `sha2` (SHA-NI where the CPU has it), so the
//! choice between them can be measured where it is made.
//! Run with `cargo run --release -p cfs-sha512x8 --example throughput [MiB]`.
use sha2::{Digest, Sha256, Sha512};
use std::time::Instant;

const BLOCK: usize = cfs_sha512x8::BLOCK_SIZE;

fn best_of_3(bytes: usize, mut run: impl FnMut()) -> f64 {
    let best = (0..3)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    bytes as f64 / best / 1e9
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..mib << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let blocks = data.len() / BLOCK;
    let mut out = vec![0u8; blocks * 64];
    let sha512 = best_of_3(data.len(), || {
        for (b, o) in data.chunks_exact(BLOCK).zip(out.chunks_exact_mut(64)) {
            o.copy_from_slice(&Sha512::digest(b));
        }
    });
    let reference = out.clone();
    let kernel = cfs_sha512x8::kernel();
    let lanes = best_of_3(data.len(), || {
        cfs_sha512x8::hash_blocks(&data, &mut out);
    });
    assert!(
        kernel.is_none() || out == reference,
        "the kernel disagrees with sha2"
    );
    let sha256 = best_of_3(data.len(), || {
        for (b, o) in data.chunks_exact(BLOCK).zip(out.chunks_exact_mut(32)) {
            o.copy_from_slice(&Sha256::digest(b));
        }
    });
    println!("{mib} MiB of 4 KiB blocks, one thread, best of 3 (GB/s):");
    println!("  sha512, sha2 one block at a time: {sha512:.2}");
    println!("  sha512, cfs-sha512x8 ({kernel:?}): {lanes:.2}");
    println!("  sha256, sha2 one block at a time: {sha256:.2}");
}
