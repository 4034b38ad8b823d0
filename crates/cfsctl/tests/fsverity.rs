//! Our fs-verity digests against fsverity-utils (`fsverity digest`), the reference
//! implementation, for sizes around every Merkle-tree level boundary and a random 64 MiB file:
//! SHA-256 through `composefs-info measure-file`, SHA-256 and SHA-512 through the library.

mod common;

use std::path::Path;
use std::process::Command;

use cfs_format::fsverity::digest_reader;
use cfs_format::Algorithm;

const SIZES: &[u64] = &[
    0,
    1,
    4095,
    4096,
    4097,
    128 * 4096 - 1,
    128 * 4096,
    128 * 4096 + 1,
    128 * 128 * 4096 - 1,
    128 * 128 * 4096 + 1,
];

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
fn fill(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len as usize + 8);
    while (out.len() as u64) < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len as usize);
    out
}

/// `fsverity digest` output is `sha256:<hex> <path>`.
fn reference(path: &Path, alg: Algorithm) -> Option<String> {
    let out = Command::new("fsverity")
        .arg("digest")
        .arg(format!("--hash-alg={}", alg.name()))
        .arg(path)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "fsverity digest {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (id, _) = text.split_once(' ').expect("fsverity output format");
    Some(id.split_once(':').expect("alg:hex").1.to_owned())
}

fn ours(path: &Path, alg: Algorithm) -> String {
    let f = std::fs::File::open(path).expect("open");
    digest_reader(alg, f).expect("digest").to_hex()
}

#[test]
fn digests_match_fsverity_utils() {
    if Command::new("fsverity").arg("--version").output().is_err() {
        common::skip(
            "fs-verity digests against fsverity-utils",
            "the fsverity program (Debian package fsverity) is not installed",
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut cases: Vec<(String, Vec<u8>)> = SIZES
        .iter()
        .map(|&n| (format!("fill-{n}"), vec![0x5a; n as usize]))
        .collect();
    cases.push(("random-64MiB".into(), fill(64 << 20, 0x00c0ffee)));
    cases.push(("random-1M+3".into(), fill((1 << 20) + 3, 7)));
    let mut paths = Vec::new();
    for (name, data) in &cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, data).expect("write");
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let want = reference(&path, alg).expect("fsverity digest");
            assert_eq!(ours(&path, alg), want, "{name} {alg}");
        }
        paths.push(path);
    }
    // The CLI: measure-file prints one digest per file (the kernel has no fs-verity here, so it
    // takes the userspace path).
    let out = Command::new(env!("CARGO_BIN_EXE_composefs-info"))
        .arg("measure-file")
        .args(&paths)
        .output()
        .expect("composefs-info");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let got: Vec<&str> = text.lines().collect();
    assert_eq!(got.len(), paths.len(), "one line per file: {text}");
    for (line, path) in got.iter().zip(&paths) {
        let want = reference(path, Algorithm::Sha256).expect("fsverity digest");
        assert_eq!(*line, want, "measure-file {}", path.display());
    }
}
