#!/usr/bin/env bash
# Install the system packages the build, the tests and the demo use (Debian bookworm).
# Safe to re-run: it installs only what is missing.
set -euo pipefail
packages=(erofs-utils fsverity attr fuse3 squashfs-tools squashfuse hyperfine time skopeo docker-registry umoci openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
