#!/usr/bin/env bash
# FUSE over io_uring against /dev/fuse and the kernel mount, on the workload where the transport
# matters most: `tar cf - . | cat` with passthrough, which costs an OPEN and a RELEASE per file.
# Also a warm walk and the 512 MiB read, to show the queues cost nothing elsewhere. Prints a
# Markdown report on stdout, progress on stderr.
#
# Usage: bench/fuse-uring.sh            (root; hyperfine: scripts/install-deps.sh)
# Env:   RUNS (warm runs, at least; default 10), COLD_RUNS (default 5), FILES (default 50000),
#        TREE (an existing tree made by bench/gen_tree.py, to skip generating one).
# The fuse module's enable_uring switch is turned on for the run and put back afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) -eq 0 ]] || {
    echo "fuse-uring.sh: must run as root (mounts, drop_caches, enable_uring)" >&2
    exit 1
}
switch=/sys/module/fuse/parameters/enable_uring
[[ -w $switch ]] || {
    echo "fuse-uring.sh: this kernel has no FUSE over io_uring ($switch)" >&2
    exit 1
}
runs=${RUNS:-10}
cold_runs=${COLD_RUNS:-5}
nfiles=${FILES:-50000}
scripts/install-deps.sh
cargo build --release --quiet -p cfsctl
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d /var/tmp/cfs-bench-uring.XXXXXX)
switch_before=$(cat "$switch")
mnt=$work/mnt
pid=

progress() { echo "[fuse-uring.sh $(date +%T)] $*" >&2; }
stop() {
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
    if mountpoint -q "$mnt"; then umount "$mnt" 2>/dev/null || umount -l "$mnt"; fi
}
cleanup() {
    stop
    echo "$switch_before" >"$switch"
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo Y >"$switch"
mkdir -p "$mnt" "$work/res"

tree=${TREE:-}
if [[ -z $tree ]]; then
    progress "generating the $nfiles-file tree"
    tree=$work/syn
    python3 bench/gen_tree.py "$tree" "$nfiles"
fi
"$bin/cfsctl" --repo "$work/repo" init --insecure >/dev/null
id=$("$bin/cfsctl" --repo "$work/repo" create-image --no-propagate-usr-to-root "$tree" syn)
id=${id#*:}
entries=$(find "$tree" | wc -l)
sync

# Configurations: name and fuse-serve options ("" = the kernel composefs mount).
declare -A opts=(
    [kernel]=""
    [fuse-N-pt]="passthrough,verify=off"
    [fuse-uring-pt]="uring,passthrough,verify=off"
    [fuse-uring]="uring,verify=off"
)
order=(kernel fuse-N-pt fuse-uring-pt fuse-uring)

start() {
    local cfg=$1 dev i
    dev=$(stat -c %d "$mnt")
    if [[ $cfg == kernel ]]; then
        "$bin/cfsctl" --repo "$work/repo" mount syn "$mnt"
    else
        "$bin/cfsctl" fuse-serve --objects "$work/repo/objects" -o "${opts[$cfg]}" \
            "$work/repo/images/$id" "$mnt" </dev/null >/dev/null 2>>"$work/$cfg.log" &
        pid=$!
    fi
    for ((i = 0; i < 3000; i++)); do
        [[ $(stat -c %d "$mnt") != "$dev" ]] && return 0
        sleep 0.01
    done
    echo "fuse-uring.sh: $cfg did not mount" >&2
    return 1
}

cmd_of() {
    case $1 in
    tar) echo "bash -c 'cd $mnt && tar cf - . | cat'" ;;
    find) echo "find $mnt -printf '%p %s %m %T@\n'" ;;
    seq) echo "dd if=$mnt/big/seq.bin of=/dev/null bs=1M status=none" ;;
    esac
}

for cfg in "${order[@]}"; do
    start "$cfg"
    # The server logs whether it got its queues just after the mount appears.
    for ((i = 0; i < 500; i++)); do
        [[ $cfg == kernel ]] || grep -q "serving at" "$work/$cfg.log" && break
        sleep 0.01
    done
    if [[ $cfg == fuse-uring* ]] && ! grep -q "io_uring queue worker" "$work/$cfg.log"; then
        echo "fuse-uring.sh: $cfg did not get io_uring queues:" >&2
        cat "$work/$cfg.log" >&2
        exit 1
    fi
    for w in tar find seq; do
        hyperfine -N --warmup 1 --min-runs "$runs" --export-json "$work/res/$w.warm.$cfg.json" \
            "$(cmd_of "$w")" >/dev/null 2>&1
        progress "$w warm $cfg done"
    done
    # Cold: a fresh mount with every cache dropped before each run.
    for ((r = 0; r < cold_runs; r++)); do
        stop
        sync
        echo 3 >/proc/sys/vm/drop_caches
        cat /usr/bin/tar /usr/bin/cat /bin/bash >/dev/null
        start "$cfg"
        /usr/bin/time -f %e -a -o "$work/res/tar.cold.$cfg.txt" bash -c "cd $mnt && tar cf - . | cat" >/dev/null
    done
    progress "tar cold $cfg done"
    stop
done

python3 - "$work/res" "$entries" "$runs" "$cold_runs" "${order[@]}" <<'PY'
import json, statistics, sys
res, entries, runs, cold_runs, order = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def warm(w, cfg):
    r = json.load(open(f"{res}/{w}.warm.{cfg}.json"))["results"][0]
    return r["median"], r["min"], r["max"]
def cold(cfg):
    v = [float(x) for x in open(f"{res}/tar.cold.{cfg}.txt").read().split()]
    return statistics.median(v), min(v), max(v)
print("## FUSE over io_uring")
print()
print(f"Reproduce with `bench/fuse-uring.sh` (root; RUNS={runs}, COLD_RUNS={cold_runs}). "
      f"Generated tree of {entries} entries (`bench/gen_tree.py`), one composefs image in an "
      "insecure repository; FUSE configurations run with verify=off, like the kernel mount of "
      "an insecure repository. fuse-N-pt = `/dev/fuse` with one worker per CPU; fuse-uring = "
      "`-o uring` (one queue and pinned worker per CPU).")
print()
for w, title in (("tar", "`tar cf - . | cat`"), ("find", "`find -printf`"),
                 ("seq", "`dd bs=1M` of the 512 MiB file")):
    print(f"### {title}, warm (median of at least {runs} runs, min–max, × kernel)")
    print()
    print("| configuration | s | min–max | × kernel |")
    print("|---|---|---|---|")
    base = warm(w, "kernel")[0]
    for cfg in order:
        m, lo, hi = warm(w, cfg)
        print(f"| {cfg} | {m:.3f} | {lo:.3f}–{hi:.3f} | {m / base:.2f} |")
    print()
print(f"### `tar cf - . | cat`, cold (median of {cold_runs} fresh mounts, caches dropped)")
print()
print("| configuration | s | min–max | × kernel |")
print("|---|---|---|---|")
base = cold("kernel")[0]
for cfg in order:
    m, lo, hi = cold(cfg)
    print(f"| {cfg} | {m:.3f} | {lo:.3f}–{hi:.3f} | {m / base:.2f} |")
print()
PY
