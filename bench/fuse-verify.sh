#!/usr/bin/env bash
# The default FUSE path against its peers (issue: default paths): verify=on (the default) next
# to verify=off, passthrough, the kernel mount (EROFS + overlayfs) and squashfuse_ll, on the
# generated tree of bench/gen_tree.py (FILES files, most small, plus one 512 MiB file).
# Workloads: `tar cf - . | cat` cold (remount and drop caches before each run) and warm, `cat` of
# the 512 MiB file cold, the time to the first 4 KiB of that file on a fresh mount, with the
# file's Merkle tree saved by the importer (the usual case) and without (a repository another
# tool filled: the first read builds it), and the mount-ready time of each way to mount
# (bench/mount_ready.py). Prints Markdown on stdout, progress on stderr.
# Usage: bench/fuse-verify.sh       (root; env RUNS (default 5), FILES (default 50000),
#                                    READY_RUNS (default 21))
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || { echo "fuse-verify.sh: must run as root" >&2; exit 1; }
runs=${RUNS:-5}
nfiles=${FILES:-50000}
scripts/install-deps.sh
cargo build --release --quiet -p cfsctl
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d /var/tmp/cfs-bench.XXXXXX)
export CFS_BENCH_WORK=$work CFS_BENCH_BIN=$bin
remount() { bench/fuse.sh --remount "$1" syn; }
cleanup() {
    [[ -s $work/pid.syn ]] && kill -TERM "$(cat "$work/pid.syn")" 2>/dev/null && sleep 1
    umount "$work/mnt/syn" 2>/dev/null || umount -l "$work/mnt/syn" 2>/dev/null || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
progress() { echo "[fuse-verify.sh $(date +%T)] $*" >&2; }
mkdir -p "$work/mnt/syn" "$work/res"

progress "generating the $nfiles-file tree"
python3 bench/gen_tree.py "$work/syn" "$nfiles"
"$bin/cfsctl" --repo "$work/repo" init --insecure >/dev/null
id=$("$bin/cfsctl" --repo "$work/repo" create-image --no-propagate-usr-to-root "$work/syn" syn)
echo "${id#*:}" >"$work/id.syn"
mksquashfs "$work/syn" "$work/syn.sqfs" -noI -noD -noF -noX -noappend -quiet -no-progress >/dev/null
sync

median() { python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["results"][0]["median"])' "$1"; }
mnt=$work/mnt/syn
cfgs=(kernel fuse-N-verify fuse-N fuse-N-pt squashfuse_ll)
for cfg in "${cfgs[@]}"; do
    remount "$cfg"
    hyperfine --warmup 1 --runs "$runs" --export-json "$work/res/tar.warm.$cfg.json" \
        "cd $mnt && tar cf - . | cat" >/dev/null
    hyperfine --runs "$runs" --prepare "bench/fuse.sh --remount $cfg syn" \
        --export-json "$work/res/tar.cold.$cfg.json" "cd $mnt && tar cf - . | cat" >/dev/null
    hyperfine --runs "$runs" --prepare "bench/fuse.sh --remount $cfg syn" \
        --export-json "$work/res/cat.cold.$cfg.json" "cat $mnt/big/seq.bin" >/dev/null
    progress "$cfg: tar cold $(median "$work/res/tar.cold.$cfg.json") warm" \
        "$(median "$work/res/tar.warm.$cfg.json") cat cold $(median "$work/res/cat.cold.$cfg.json")"
done

# Time to the first 4 KiB of the 512 MiB file, on a fresh mount with cold caches.
first_byte() {
    python3 - "$mnt/big/seq.bin" <<'PY'
import os, sys, time
t = time.perf_counter()
fd = os.open(sys.argv[1], os.O_RDONLY)
os.read(fd, 4096)
print("%.2f" % ((time.perf_counter() - t) * 1e3))
PY
}
fb_saved=() fb_off=() fb_first=()
for ((i = 0; i < runs; i++)); do
    remount fuse-N-verify && fb_saved+=("$(first_byte)")
    remount fuse-N && fb_off+=("$(first_byte)")
    rm -rf "$work/repo/cache/verity"
    remount fuse-N-verify && fb_first+=("$(first_byte)")
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

ratio() { python3 -c 'import sys; print("%.2f" % (float(sys.argv[1]) / float(sys.argv[2])))' "$1" "$2"; }
k_tar_cold=$(median "$work/res/tar.cold.kernel.json")
off_tar_cold=$(median "$work/res/tar.cold.fuse-N.json")
off_cat=$(median "$work/res/cat.cold.fuse-N.json")
echo "Tree: $nfiles generated files + a 512 MiB file; medians of $runs runs; $(nproc) CPUs;"
echo "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); AVX-512:" \
    "$(grep -q avx512f /proc/cpuinfo && echo yes || echo no); kernel $(uname -r)."
echo
echo "| configuration | tar cold (s) | × verify=off | × kernel | tar warm (s) | cat 512 MiB cold (s) | × verify=off |"
echo "|---|---|---|---|---|---|---|"
for cfg in "${cfgs[@]}"; do
    tc=$(median "$work/res/tar.cold.$cfg.json")
    tw=$(median "$work/res/tar.warm.$cfg.json")
    cc=$(median "$work/res/cat.cold.$cfg.json")
    name=$cfg
    case $cfg in
    kernel) name="kernel mount (EROFS + overlayfs)" ;;
    fuse-N-verify) name="**cfs default (verify=on)**" ;;
    fuse-N) name="cfs verify=off" ;;
    fuse-N-pt) name="cfs passthrough,verify=off" ;;
    esac
    echo "| $name | $tc | $(ratio "$tc" "$off_tar_cold") | $(ratio "$tc" "$k_tar_cold") | $tw | $cc | $(ratio "$cc" "$off_cat") |"
done
echo
echo "First 4 KiB of the 512 MiB file on a fresh, cold mount (median ms): verify=on with the tree"
echo "the importer saved $(med "${fb_saved[@]}"); verify=off $(med "${fb_off[@]}"); verify=on without"
echo "a saved tree (a repository another tool filled: the first read builds it) $(med "${fb_first[@]}")."

# Mount-ready time, warm caches, on the same image.
progress "mount-ready time"
umount "$mnt" 2>/dev/null || true
[[ -s $work/pid.syn ]] && { kill -TERM "$(cat "$work/pid.syn")" 2>/dev/null || true; sleep 1; }
python3 bench/mount_ready.py "$bin/cfsctl" "$work/repo" syn "$mnt" "${READY_RUNS:-21}" \
    "$work/syn.sqfs" >"$work/res/ready"
echo
echo "Mount ready (ms from starting the command until the mount point's st_dev changes, i.e. the"
echo "new filesystem answers a stat; warm caches; median of ${READY_RUNS:-21} (min–max)):"
echo
echo "| command | median ms | min | max | × kernel |"
echo "|---|---|---|---|---|"
python3 - "$work/res/ready" <<'PY'
import statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
kernel = statistics.median(float(x) for x in rows[0][1:])
for label, *ms in rows:
    ms = [float(x) for x in ms]
    m = statistics.median(ms)
    print(f"| {label} | {m:.2f} | {min(ms):.2f} | {max(ms):.2f} | {m / kernel:.2f} |")
PY
