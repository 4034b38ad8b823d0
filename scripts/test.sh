#!/usr/bin/env bash
# Run the whole test suite: formatting, lints, unit tests, and the integration tests that drive
# the real binaries against the conformance vectors, fsverity-utils, fsck.erofs and the kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast 2>&1 | tee target/test-output.log
# The README's first command, the main job, on the build the tests just made.
CFS_BIN=${CARGO_TARGET_DIR:-$PWD/target}/debug timeout 300 scripts/demo.sh
