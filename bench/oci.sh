#!/usr/bin/env bash
# OCI pull benchmark (issue: OCI): wall time and peak RSS of `cfsctl oci pull docker://…` of a
# real root filesystem served by a local docker-registry, against `skopeo copy docker://… oci:DIR`
# of the same image, in one run. The rootfs is a Debian bookworm minbase made with debootstrap
# (cached in /var/tmp/cfs-bench-minbase), packed as one gzip layer by umoci.
# Usage: bench/oci.sh [RUNS]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
scripts/install-deps.sh
command -v debootstrap >/dev/null || { apt-get install -y -qq debootstrap >/dev/null; }
# CFS_BIN=DIR uses already-built binaries (e.g. while another benchmark holds the target dir).
if [[ -n ${CFS_BIN:-} ]]; then
    bin=$CFS_BIN
else
    cargo build --release --quiet -p cfsctl
    bin=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
# shellcheck source=scripts/lib/registry.sh
source scripts/lib/registry.sh
work=$(mktemp -d /var/tmp/cfs-oci-bench.XXXXXX)
fs_mounted=
cleanup() {
    registry_stop
    [[ -n $fs_mounted ]] && umount "$work/fs"
    rm -rf "$work"
}
trap cleanup EXIT

rootfs=/var/tmp/cfs-bench-minbase
if [[ ! -x $rootfs/bin/sh ]]; then
    # The machine's own Debian mirror (the only archive reachable here).
    mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}' || true)
    [[ -n $mirror ]] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
    rm -rf "$rootfs.tmp"
    debootstrap --variant=minbase bookworm "$rootfs.tmp" "$mirror" >/dev/null
    mv "$rootfs.tmp" "$rootfs"
fi

# Pack the rootfs as an OCI image (one gzip layer) and push it to a loopback registry.
umoci init --layout "$work/layout" >/dev/null
umoci new --image "$work/layout:deb" >/dev/null
umoci unpack --image "$work/layout:deb" "$work/bundle" >/dev/null
cp -a "$rootfs/." "$work/bundle/rootfs/"
umoci repack --image "$work/layout:deb" "$work/bundle" >/dev/null
registry_start "$work"
ref="docker://127.0.0.1:$registry_port/deb:1"
skopeo copy --dest-tls-verify=false "oci:$work/layout:deb" "$ref" >/dev/null
layer_bytes=$(du -sb "$work/layout/blobs" | cut -f1)
# The floor row's input: the layer's tar, uncompressed, outside the filesystem under test.
mkdir -p "$work/floor"
layer_blob=$(python3 - "$work/layout" <<'PY'
import json, sys
layout = sys.argv[1]
blob = lambda digest: f"{layout}/blobs/{digest.replace(':', '/')}"
manifest = json.load(open(blob(json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"])))
print(blob(manifest["layers"][0]["digest"]))
PY
)
gzip -dc "$layer_blob" >"$work/floor/layer.tar"

measure() { # label, command...
    local label=$1; shift
    sync
    # Every run starts with a small page cache: on these VMs, writing while the cache holds
    # gigabytes of earlier runs' files costs two to three times the system time (0.25 -> 0.8 s
    # per pull), so run-to-run noise would swamp the comparison.
    echo 3 >/proc/sys/vm/drop_caches || { echo "bench/oci.sh: cannot drop the page cache (run as root)" >&2; exit 1; }
    # Then the sources (the registry's blobs, the layout's for the layout row) are read back in,
    # so no tool waits for the disk to read its source (CFS_COLD=1 leaves them on disk).
    [[ -n ${CFS_COLD:-} ]] || find "$work/registry-data" "$work/layout/blobs" "$work/floor" -type f -exec cat {} + >/dev/null
    /usr/bin/time -f "$label %e %M %U %S" -a -o "$work/times" "$@" >/dev/null 2>&1
}
# The pulls write to a fresh journaled ext4 of their own (a loop-mounted sparse file), for two
# reasons: results do not depend on what else the machine's disk holds, and these machines' root
# filesystem is an ext4 without a journal, whose inode allocator skips inodes freed in the last
# 60-360 s (`recently_deleted`) - there, creating thousands of files after any mass deletion
# (a test run, a build, the previous run's `rm -rf`) costs seconds of system time per run.
# Every run also writes into directories of its own, and nothing is deleted until the end.
fs=$work/fs
mkdir -p "$fs"
truncate -s 16G "$work/fs.img"
# Inode tables and journal written now, not by the kernel's lazy-init thread during the runs.
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$work/fs.img"
mount -o loop "$work/fs.img" "$fs"
fs_mounted=1
for i in $(seq "$runs"); do
    run=$fs/run$i
    mkdir -p "$run"
    for repo in sha512:sha512 sha256:sha256 skopeo:sha512 layout:sha256; do
        "$bin/cfsctl" --repo "$run/repo-${repo%:*}" init --insecure --algorithm "fsverity-${repo#*:}-12" >/dev/null
    done
    measure cfs "$bin/cfsctl" --repo "$run/repo-sha512" oci pull --tls-verify=false "$ref" deb
    measure skopeo skopeo copy --src-tls-verify=false "$ref" "oci:$run/oci-out:deb"
    measure cfs-sha256 "$bin/cfsctl" --repo "$run/repo-sha256" oci pull --tls-verify=false "$ref" deb
    # Not a target: the same pull through skopeo's image proxy instead of the direct client.
    measure cfs-skopeo "$bin/cfsctl" --repo "$run/repo-skopeo" oci pull --fetcher=skopeo --tls-verify=false "$ref" deb
    # Not a target: the same image read from the OCI layout it was packed in (no skopeo, no
    # network), to show what fetching through skopeo costs.
    measure cfs-layout "$bin/cfsctl" --repo "$run/repo-layout" oci pull "oci:$work/layout:deb" deb
    # Not a target: a floor for any tool that must create the layer's files. GNU tar extracts
    # the already-uncompressed layer from the page cache, then `syncfs` makes it durable (as the
    # pull does before naming a layer): no fetch, no decompression, no hashing.
    mkdir -p "$run/untar"
    measure untar bash -c 'tar -x -f "$1" -C "$2" && sync -f "$2"' untar "$work/floor/layer.tar" "$run/untar"
done
entries=$(find "$rootfs" -xdev | wc -l)
python3 - "$work/times" "$runs" "$entries" "$layer_bytes" "$(du -sb "$rootfs" | cut -f1)" <<'PY'
import os, statistics, sys
cache = ("page cache dropped before every run, sources not read back (CFS_COLD)"
         if os.environ.get("CFS_COLD")
         else "page cache dropped before every run, then the source blobs read back in")
rows = {}
for line in open(sys.argv[1]):
    label, secs, kib, user, sys_ = line.split()
    rows.setdefault(label, []).append((float(secs), int(kib), float(user), float(sys_)))
runs, entries, blobs, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print("## OCI pull")
print()
print(f"Reproduce with `bench/oci.sh {runs}`. Image: Debian bookworm minbase ({entries} entries, "
      f"{size / 1e6:.0f} MB unpacked, {blobs / 1e6:.0f} MB of blobs, one gzip layer), served by "
      f"docker-registry on 127.0.0.1; pulls and copies write to a fresh ext4 (journaled, loop "
      f"device); {cache}.")
print()
print("| tool | median s | min s | max s | CPU s (user+sys, median) | peak RSS (median) |")
print("|---|---|---|---|---|---|")
med = {}
for label, name in (("skopeo", "`skopeo copy docker://… oci:DIR`"),
                    ("cfs", "`cfsctl oci pull docker://…` (default sha512 repository)"),
                    ("cfs-sha256", "`cfsctl oci pull docker://…` (sha256 repository)"),
                    ("cfs-skopeo", "`cfsctl oci pull --fetcher=skopeo docker://…` (sha512 repository; through skopeo's proxy, no target)"),
                    ("cfs-layout", "`cfsctl oci pull oci:DIR` of the packed layout (sha256 repository; no target)"),
                    ("untar", "floor: `tar -x` of the uncompressed layer from memory, then `syncfs` (no fetch, inflate or hashing; no target)")):
    v = rows[label]
    secs = [r[0] for r in v]
    med[label] = statistics.median(secs)
    cpu = statistics.median(r[2] + r[3] for r in v)
    print(f"| {name} | {med[label]:.2f} | {min(secs):.2f} | {max(secs):.2f} | {cpu:.2f} | "
          f"{statistics.median(r[1] for r in v) / 1024:.0f} MiB |")
print()
for label in ("cfs", "cfs-sha256"):
    print(f"- {label}: **{med[label] / med['skopeo']:.2f}×** skopeo's time (target ≤ 1.5×)")
print(f"- floor (`tar -x` + `syncfs` alone): {med['untar'] / med['skopeo']:.2f}× skopeo's time")
print()
PY
