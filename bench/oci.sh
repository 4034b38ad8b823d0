#!/usr/bin/env bash
# OCI pull benchmark (issue: OCI): wall time and peak RSS of `cfsctl oci pull docker://…` of a
# real root filesystem served by a local docker-registry, against `skopeo copy docker://… oci:DIR`
# of the same image, in one run. The rootfs is a Debian bookworm minbase made with debootstrap
# (cached in /var/tmp/cfs-bench-minbase), packed as one gzip layer by umoci.
#
# IMAGE=large measures a large multi-layer image instead: three gzip layers made from this
# machine's own Debian tree (the minbase rootfs; a copy of /usr/share; /usr/lib/x86_64-linux-gnu
# plus /usr/include), about 1.6 GB unpacked. Its rows: skopeo copy, cfsctl's docker:// and oci:
# layout pulls, composefs-rs's `oci pull` of the same image and a GNU tar + syncfs floor.
# Usage: bench/oci.sh [RUNS]     (default 5)
#        IMAGE=large bench/oci.sh [RUNS]
# COMPOSEFS_RS_CFSCTL=PATH names composefs-rs's cfsctl (default /opt/composefs-rs/bin/cfsctl).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
image=${IMAGE:-minbase}
case $image in
    minbase | large) ;;
    *) echo "bench/oci.sh: IMAGE must be minbase or large, not '$image'" >&2; exit 2 ;;
esac
crs=${COMPOSEFS_RS_CFSCTL:-/opt/composefs-rs/bin/cfsctl}
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
dropin=
building=
cleanup() {
    # The drop-in goes first: it changes how every skopeo on the machine treats the port.
    [[ -z $dropin ]] || rm -f "$dropin"
    # A large image build cut short leaves gigabytes of tars in /var/tmp.
    [[ -z $building ]] || rm -rf "$building"
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

# Writes one layer's tar: GNU tar in PAX format without the atime, ctime and sub-second mtime
# records, which is what Go's archive/tar (umoci, docker, buildah) writes too, so the parsers see
# the usual headers. Sorted and with numeric owners so a rebuild gives the same bytes.
tar_layer() { # output.tar, tar arguments...
    local out=$1; shift
    tar -c --one-file-system --sort=name --numeric-owner --format=posix \
        --pax-option=delete=atime,delete=ctime,delete=mtime -f "$out" "$@"
}

# The large image, built once and kept (building it takes minutes): three gzip layers written
# with tar and gzip, and the OCI layout's JSON written by hand. This is simpler than umoci here,
# whose repack would diff a 1.6 GB bundle for each layer.
large_layout=/var/tmp/cfs-bench-large-layout
build_large_layout() {
    local tmp=$large_layout.tmp top
    building=$tmp
    rm -rf "$tmp"
    mkdir -p "$tmp/tars" "$tmp/blobs/sha256"
    # Layer 1 names the rootfs's top-level entries, so its paths read `usr/...`, not `./usr/...`.
    mapfile -t top < <(find "$rootfs" -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
    tar_layer "$tmp/tars/layer1.tar" -C "$rootfs" "${top[@]}"
    # Layers 2 and 3 come from the machine's own /usr, at the same paths inside the image.
    tar_layer "$tmp/tars/layer2.tar" -C / usr/share
    tar_layer "$tmp/tars/layer3.tar" -C / usr/lib/x86_64-linux-gnu usr/include
    for t in "$tmp"/tars/layer?.tar; do
        gzip -n -c "$t" >"$t.gz"
    done
    python3 - "$tmp" <<'PY'
import hashlib, json, os, sys
tmp = sys.argv[1]
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
def put(data, media_type):
    # A JSON blob into blobs/sha256, and its descriptor.
    digest = hashlib.sha256(data).hexdigest()
    with open(f"{tmp}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}
layers, diff_ids = [], []
for n in (1, 2, 3):
    tar = f"{tmp}/tars/layer{n}.tar"
    diff_ids.append(f"sha256:{sha256(tar)}")
    digest = sha256(f"{tar}.gz")
    size = os.path.getsize(f"{tar}.gz")
    os.rename(f"{tar}.gz", f"{tmp}/blobs/sha256/{digest}")
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "digest": f"sha256:{digest}", "size": size})
config = {"architecture": "amd64", "os": "linux", "config": {},
          "rootfs": {"type": "layers", "diff_ids": diff_ids}}
manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": put(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
            "layers": layers}
desc = put(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
desc["annotations"] = {"org.opencontainers.image.ref.name": "large"}
with open(f"{tmp}/index.json", "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [desc]}, f)
with open(f"{tmp}/oci-layout", "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
PY
    # The uncompressed tars are not kept: the floor row gets them back from the blobs below.
    rm -rf "$tmp/tars"
    # Renamed only when complete, so an interrupted build is never taken for the cache.
    mv "$tmp" "$large_layout"
    building=
}

if [[ $image == minbase ]]; then
    # Pack the rootfs as an OCI image (one gzip layer) and push it to a loopback registry.
    umoci init --layout "$work/layout" >/dev/null
    umoci new --image "$work/layout:deb" >/dev/null
    umoci unpack --image "$work/layout:deb" "$work/bundle" >/dev/null
    cp -a "$rootfs/." "$work/bundle/rootfs/"
    umoci repack --image "$work/layout:deb" "$work/bundle" >/dev/null
    layout=$work/layout tag=deb
else
    if [[ ! -f $large_layout/index.json ]]; then
        echo "bench/oci.sh: building the large image in $large_layout (once; takes minutes)" >&2
        build_large_layout
    fi
    layout=$large_layout tag=large
fi
registry_start "$work"
ref="docker://127.0.0.1:$registry_port/$tag:1"
skopeo copy --dest-tls-verify=false "oci:$layout:$tag" "$ref" >/dev/null
layer_bytes=$(du -sb "$layout/blobs" | cut -f1)
# The floor row's input: the layers' tars, uncompressed, outside the filesystem under test.
mkdir -p "$work/floor"
mapfile -t layer_blobs < <(python3 - "$layout" <<'PY'
import json, sys
layout = sys.argv[1]
blob = lambda digest: f"{layout}/blobs/{digest.replace(':', '/')}"
manifest = json.load(open(blob(json.load(open(f"{layout}/index.json"))["manifests"][0]["digest"])))
for layer in manifest["layers"]:
    print(blob(layer["digest"]))
PY
)
floor_tars=()
if [[ $image == minbase ]]; then
    floor_tars=("$work/floor/layer.tar")
else
    for n in "${!layer_blobs[@]}"; do
        floor_tars+=("$work/floor/layer$((n + 1)).tar")
    done
fi
for n in "${!floor_tars[@]}"; do
    gzip -dc "${layer_blobs[n]}" >"${floor_tars[n]}"
done

if [[ $image == large ]]; then
    if [[ -x $crs ]]; then
        # composefs-rs pulls through skopeo's image proxy, which takes TLS settings only from
        # containers-registries.conf: this drop-in lets it talk plain HTTP to our registry. It
        # is named after this shell's PID so two runs do not remove each other's.
        dropin=/etc/containers/registries.conf.d/99-cfs-bench-$$.conf
        printf '[[registry]]\nlocation = "127.0.0.1:%s"\ninsecure = true\n' "$registry_port" >"$dropin"
        crs_state=ok
    else
        crs_state=absent
        echo "######## bench/oci.sh: composefs-rs's cfsctl is not at $crs (set COMPOSEFS_RS_CFSCTL):" \
            "its row is SKIPPED ########" >&2
    fi
fi

measure() { # label, command...
    local label=$1; shift
    sync
    # Every run starts with a small page cache: on these VMs, writing while the cache holds
    # gigabytes of earlier runs' files costs two to three times the system time (0.25 -> 0.8 s
    # per pull), so run-to-run noise would swamp the comparison.
    echo 3 >/proc/sys/vm/drop_caches || { echo "bench/oci.sh: cannot drop the page cache (run as root)" >&2; exit 1; }
    # Then the sources (the registry's blobs, the layout's for the layout row) are read back in,
    # so no tool waits for the disk to read its source (CFS_COLD=1 leaves them on disk).
    [[ -n ${CFS_COLD:-} ]] || find "$work/registry-data" "$layout/blobs" "$work/floor" -type f -exec cat {} + >/dev/null
    # The command's errors are kept, so a failing row says why before the script stops.
    if ! /usr/bin/time -f "$label %e %M %U %S" -a -o "$work/times" "$@" >/dev/null 2>"$work/err"; then
        echo "bench/oci.sh: the $label row failed:" >&2
        tail -n 20 "$work/err" >&2
        return 1
    fi
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
if [[ $image == large ]]; then
    for i in $(seq "$runs"); do
        # Five runs' outputs (about 8 GB each) would not fit, so the previous run's are deleted,
        # outside the measured time. This filesystem has a journal, so ext4 does not skip the
        # freed inodes (that `recently_deleted` rule is for journal-less ext4 only).
        if ((i > 1)); then
            rm -rf "$fs/run$((i - 1))"
            sync -f "$fs"
        fi
        run=$fs/run$i
        mkdir -p "$run"
        # Both cfsctl pulls use a sha512 repository, so docker:// vs layout compares fetching only.
        for repo in docker layout; do
            "$bin/cfsctl" --repo "$run/repo-$repo" init --insecure --algorithm fsverity-sha512-12 >/dev/null
        done
        measure skopeo skopeo copy --src-tls-verify=false "$ref" "oci:$run/oci-out:large"
        measure cfs "$bin/cfsctl" --repo "$run/repo-docker" oci pull --tls-verify=false "$ref" large
        measure cfs-layout "$bin/cfsctl" --repo "$run/repo-layout" oci pull "oci:$layout:large" large
        # The floor: GNU tar extracts the three already-uncompressed layers from the page cache,
        # in order, into one directory, then `syncfs` makes them durable: no fetch, no
        # decompression, no hashing, no object store.
        mkdir -p "$run/untar"
        measure untar bash -c 'for t in "${@:2}"; do tar -x -f "$t" -C "$1" || exit; done; sync -f "$1"' \
            untar "$run/untar" "${floor_tars[@]}"
        if [[ $crs_state == ok ]]; then
            # composefs-rs's repository is made the same way (its `init` takes the same flags).
            "$crs" --repo "$run/repo-crs" init --insecure --algorithm fsverity-sha512-12 >/dev/null
            # A failure here is reported and the row dropped; the other rows still count.
            if ! measure composefs-rs "$crs" --repo "$run/repo-crs" oci pull "$ref" large; then
                crs_state="failed: $(tail -n 1 "$work/err")"
                echo "######## bench/oci.sh: composefs-rs's pull failed: its row is DROPPED ########" >&2
            fi
        fi
    done
    # The image as it unpacks (all three layers in one tree), from the last floor run.
    tree=$fs/run$runs/untar
    python3 - "$work/times" "$runs" "$(find "$tree" -xdev | wc -l)" "$layer_bytes" \
        "$(du -sb "$tree" | cut -f1)" "$crs_state" <<'PY'
import os, statistics, sys
cache = ("page cache dropped before every run, sources not read back (CFS_COLD)"
         if os.environ.get("CFS_COLD")
         else "page cache dropped before every run, then the source blobs read back in")
rows = {}
for line in open(sys.argv[1]):
    # GNU time adds a "Command exited with non-zero status" line before a failed run's.
    if line.startswith("Command "):
        continue
    label, secs, kib, user, sys_ = line.split()
    rows.setdefault(label, []).append((float(secs), int(kib), float(user), float(sys_)))
runs, entries, blobs, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
crs_state = sys.argv[6]
if crs_state != "ok":
    rows.pop("composefs-rs", None)
print("## OCI pull: large multi-layer image")
print()
print(f"Reproduce with `IMAGE=large bench/oci.sh {runs}`. Image: three gzip layers from the "
      f"bench machine's Debian bookworm tree (a debootstrap minbase; /usr/share; "
      f"/usr/lib/x86_64-linux-gnu and /usr/include), {entries} entries, {size / 1e6:.0f} MB "
      f"unpacked, {blobs / 1e6:.0f} MB of blobs, served by docker-registry on 127.0.0.1; pulls "
      f"and copies write to a fresh ext4 (journaled, loop device); {cache}.")
print()
print("| tool | median s | min s | max s | CPU s (user+sys, median) | peak RSS (median) |")
print("|---|---|---|---|---|---|")
med, rss = {}, {}
for label, name in (("skopeo", "`skopeo copy docker://… oci:DIR`"),
                    ("cfs", "`cfsctl oci pull docker://…` (sha512 repository)"),
                    ("cfs-layout", "`cfsctl oci pull oci:LAYOUT:large` (sha512 repository)"),
                    ("composefs-rs", "composefs-rs `cfsctl oci pull docker://…` (sha512 repository, through skopeo's proxy)"),
                    ("untar", "floor: `tar -x` of the three uncompressed layers from memory, then `syncfs`")):
    if label not in rows:
        print(f"| {name} | not measured | | | | |")
        continue
    v = rows[label]
    secs = [r[0] for r in v]
    med[label] = statistics.median(secs)
    rss[label] = statistics.median(r[1] for r in v) / 1024
    cpu = statistics.median(r[2] + r[3] for r in v)
    print(f"| {name} | {med[label]:.2f} | {min(secs):.2f} | {max(secs):.2f} | {cpu:.2f} | "
          f"{rss[label]:.0f} MiB |")
print()
def line(what, ratio, target):
    verdict = "met" if ratio <= target else "NOT met"
    print(f"- cfs docker:// vs {what}: **{ratio:.2f}×** (target ≤ {target}×: {verdict})")
cfs = med["cfs"]
line("the layout pull", cfs / med["cfs-layout"], 1.3)
line("the floor (`tar -x` + `syncfs`)", cfs / med["untar"], 1.3)
if "composefs-rs" in med:
    line("composefs-rs's pull", cfs / med["composefs-rs"], 0.8)
else:
    reason = ("its cfsctl was not found" if crs_state == "absent"
              else f"its pull {crs_state}")
    print(f"- cfs docker:// vs composefs-rs's pull: **not measured** ({reason}; target ≤ 0.8×)")
line("skopeo copy", cfs / med["skopeo"], 1.5)
verdict = "met" if rss["cfs"] < 128 else "NOT met"
print(f"- cfs docker:// peak RSS: **{rss['cfs']:.0f} MiB** (target < 128 MiB: {verdict})")
print()
print("The skopeo target (≤ 1.5×) is the minbase image's; the issue sets none for this image.")
print()
PY
else
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
fi
