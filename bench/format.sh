#!/usr/bin/env bash
# Format-layer benchmarks (issue: foundation). Prints a Markdown report on stdout.
#   1. fs-verity digest throughput: ours (composefs-info measure-file) vs `fsverity digest`, 1 GiB.
#   2. mkcomposefs --from-file on the C test asset cs9-x86_64-developer.dump.gz: time, peak RSS.
#   3. mkcomposefs --digest-store on a large real tree (default /usr): time, peak RSS, CPU.
# Usage: bench/format.sh [TREE]      (needs hyperfine, fsverity, GNU time: scripts/install-deps.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
tree=${1:-/usr}
conformance=${CFS_CONFORMANCE_DIR:-tests/conformance/composefs-c}
scripts/install-deps.sh
cargo build --release --quiet -p cfsctl
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d /var/tmp/cfs-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

# peak RSS (KiB) and elapsed seconds of one run, via GNU time
measure() {
    /usr/bin/time -f '%e %M %P' -o "$work/time" "$@" >/dev/null
    cat "$work/time"
}

echo "## Format layer ($(date -u +%Y-%m-%d), $(nproc) CPUs, $(uname -r))"
echo
echo "Reproduce with \`bench/format.sh $tree\`."
echo

head -c $((1 << 30)) /dev/urandom >"$work/1g"
hyperfine --warmup 1 --runs 5 --export-json "$work/digest.json" \
    -n "fsverity digest" "fsverity digest $work/1g" \
    -n "cfs (composefs-info measure-file)" "$bin/composefs-info measure-file $work/1g" >/dev/null
python3 - "$work/digest.json" <<'PY'
import json, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
ref = r["fsverity digest"]; ours = r["cfs (composefs-info measure-file)"]
gib = 1.0
print("### fs-verity digest, 1 GiB file in page cache (sha256, 5 runs, median)")
print()
print("| tool | median s | min s | max s | GiB/s |")
print("|---|---|---|---|---|")
for name, x in (("fsverity digest (fsverity-utils 1.5)", ref), ("cfs", ours)):
    print(f"| {name} | {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | {gib / x['median']:.2f} |")
print()
print(f"cfs is **{ref['median'] / ours['median']:.2f}×** the throughput of `fsverity digest`.")
print()
PY

dump=$work/cs9-developer.dump
gzip -dc "$conformance/cs9-x86_64-developer.dump.gz" >"$dump"
lines=$(wc -l <"$dump")
read -r secs kib cpu < <(measure "$bin/mkcomposefs" --from-file "$dump" "$work/cs9.img")
hyperfine --warmup 1 --runs 10 --export-json "$work/cs9.json" \
    "$bin/mkcomposefs --from-file $dump $work/cs9.img" >/dev/null
python3 - "$work/cs9.json" "$lines" "$kib" "$(stat -c %s "$work/cs9.img")" <<'PY'
import json, sys
x = json.load(open(sys.argv[1]))["results"][0]
lines, kib, size = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
print(f"### mkcomposefs --from-file cs9-x86_64-developer.dump ({lines} entries, image {size // 1024} KiB)")
print()
print("| median s | min s | max s | entries/s | peak RSS |")
print("|---|---|---|---|---|")
print(f"| {x['median']:.3f} | {x['min']:.3f} | {x['max']:.3f} | {lines / x['median']:,.0f} | {kib / 1024:.1f} MiB |")
print()
PY

files=$(find "$tree" -xdev -type f | wc -l)
bytes=$(du -sb --apparent-size "$tree" 2>/dev/null | cut -f1)
for threads in 1 "$(nproc)"; do
    rm -rf "$work/store"
    sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    read -r secs kib cpu < <(measure "$bin/mkcomposefs" --threads="$threads" --digest-store="$work/store" "$tree" "$work/tree.img")
    objects=$(find "$work/store" -type f | wc -l)
    echo "$threads $secs $kib $cpu $objects" >>"$work/store.txt"
done
python3 - "$work/store.txt" "$tree" "$files" "$bytes" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
tree, files, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(f"### mkcomposefs --digest-store {tree} ({files} files, {size / 2**30:.2f} GiB), cold cache, empty store")
print()
print("| threads | wall s | files/s | MB/s | peak RSS | CPU | objects stored |")
print("|---|---|---|---|---|---|---|")
for t, secs, kib, cpu, objects in rows:
    s = float(secs)
    print(f"| {t} | {s:.1f} | {files / s:,.0f} | {size / s / 1e6:.0f} | {int(kib) / 1024:.0f} MiB | {cpu} | {objects} |")
print()
PY
