#!/usr/bin/env bash
# Repository benchmark (issue: repository): `cfsctl create-image` of a large real tree into an
# empty insecure repository, cold cache: files/s, MB/s, peak RSS and CPU use across the cores.
# Then a second run into the same repository (every object already present).
# Usage: bench/repo.sh [TREE]    (default /usr)
set -euo pipefail
cd "$(dirname "$0")/.."
tree=${1:-/usr}
scripts/install-deps.sh
# CFS_BIN=DIR uses already-built binaries (e.g. while another benchmark holds the target dir).
if [[ -n ${CFS_BIN:-} ]]; then
    bin=$CFS_BIN
else
    cargo build --release --quiet -p cfsctl
    bin=${CARGO_TARGET_DIR:-$PWD/target}/release
fi
work=$(mktemp -d /var/tmp/cfs-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
files=$(find "$tree" -xdev -type f | wc -l)
bytes=$(du -sb --apparent-size "$tree" 2>/dev/null | cut -f1)
"$bin/cfsctl" --repo "$work/repo" init --insecure
run() {
    sync
    [[ -n ${CFS_WARM:-} ]] || echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    /usr/bin/time -f '%e %M %P %U %S' -o "$work/time" \
        "$bin/cfsctl" --repo "$work/repo" create-image --no-propagate-usr-to-root "$tree" >/dev/null
    cat "$work/time"
}
first=$(run)
objects=$(find "$work/repo/objects" -type f | wc -l)
second=$(run)
python3 - "$tree" "$files" "$bytes" "$objects" "$first" "$second" "$(nproc)" <<'PY'
import os, sys
cache = "page cache kept warm (CFS_WARM)" if os.environ.get("CFS_WARM") else "cold cache"
tree, files, size, objects = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ncpu = int(sys.argv[7])
print(f"## Repository: `cfsctl create-image` ({ncpu} CPUs)")
print()
print(f"Reproduce with `bench/repo.sh {tree}`. Tree: {files} files, {size / 2**30:.2f} GiB; {objects} objects stored.")
print()
print("| run | wall s | files/s | MB/s | peak RSS | CPU (of %d00%%) | user s | sys s |" % ncpu)
print("|---|---|---|---|---|---|---|---|")
for label, row in ((f"empty repository, {cache}", sys.argv[5]), (f"all objects present, {cache}", sys.argv[6])):
    secs, kib, cpu, user, sys_ = row.split()
    s = float(secs)
    print(f"| {label} | {s:.1f} | {files / s:,.0f} | {size / s / 1e6:.0f} | {int(kib) / 1024:.0f} MiB | {cpu} | {user} | {sys_} |")
print()
PY
