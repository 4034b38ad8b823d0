#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit tests, and the integration tests that drive
# the real binaries against the conformance vectors, fsverity-utils, fsck.erofs and the kernel.
# The hashing and verify tests run again on the other SHA-512 paths users' CPUs take
# (CFS_HASH_PORTABLE, honoured by debug builds only): one block at a time (=1), and on a CPU
# with AVX-512 also the four-lane AVX2 kernel most cloud CPUs run (=avx2; elsewhere that is the
# default run). The README's main job runs at the end whether or not the tests passed, and both
# results are reported.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
mkdir -p target
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log || status=1
hash_paths=(1)
grep -qw avx512f /proc/cpuinfo && hash_paths+=(avx2)
for path in "${hash_paths[@]}"; do
    echo "== the hashing and verify tests again with CFS_HASH_PORTABLE=$path"
    CFS_HASH_PORTABLE=$path cargo test --no-fail-fast -p cfs-sha512x8 -p cfs-format -p cfs-fuse \
        --lib 2>&1 | tee -a target/test-output.log || status=1
    CFS_HASH_PORTABLE=$path cargo test --no-fail-fast -p cfsctl --test fuse_acceptance \
        every_read_is_checked_block_by_block 2>&1 | tee -a target/test-output.log || status=1
done
# The README's first command, the main job, on the build the tests just made.
demo=0
CFS_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug timeout 300 scripts/demo.sh || demo=1
echo "test.sh: tests $([[ $status == 0 ]] && echo passed || echo FAILED), demo $([[ $demo == 0 ]] && echo passed || echo FAILED)"
exit $((status | demo))
