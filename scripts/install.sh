#!/usr/bin/env bash
# Install cfsctl and its multi-call names: cargo installs `cfsctl`, `mkcomposefs` and
# `composefs-info` into PREFIX/bin; `mount.composefs` is a symlink to cfsctl in /sbin (the only
# place mount(8) looks for helpers), so `mount -t composefs` works.
# Usage: scripts/install.sh [PREFIX]   (default /usr/local)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:-/usr/local}
cargo install --locked --path crates/cfsctl --root "$prefix"
if [[ $(id -u) -eq 0 ]]; then
    ln -sfn "$prefix/bin/cfsctl" /sbin/mount.composefs
    echo "installed /sbin/mount.composefs -> $prefix/bin/cfsctl"
else
    echo "not root: skipped /sbin/mount.composefs (run again as root for mount -t composefs)"
fi
