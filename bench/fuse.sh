#!/usr/bin/env bash
# FUSE server benchmark (issue 4, item 6). Prints a Markdown report on stdout, progress on stderr.
#
# One image per tree, served in one run by: the kernel composefs mount (`cfsctl mount`: EROFS +
# overlayfs), our FUSE server (`cfsctl fuse-serve`, 1 and N worker threads on /dev/fuse and
# FUSE over io_uring with one queue per CPU, each with and without passthrough) and
# `squashfuse_ll` on an uncompressed squashfs of the same tree. Trees: a
# generated deterministic tree (50k files of mixed sizes in dirs of mixed sizes, plus a 512 MiB
# file) and a real distro tree (default /usr). Workloads, each cold (unmount, drop caches,
# remount before every run) and warm (the same mount again, after one warm-up run):
#   find -printf '%p %s %m %T@\n' over both trees; `tar cf - . | cat` of the generated tree;
#   `dd bs=1M` of the 512 MiB file.
# Also: time from start until the mount answers (st_dev of the mount point changes), and the
# server's request counters (requests per entry of a cold walk, READ sizes).
#
# Usage: bench/fuse.sh [TREE]        (default /usr; root; needs mksquashfs, squashfuse_ll,
#                                     hyperfine: scripts/install-deps.sh)
# Env:   RUNS (timed runs per case, default 10), COLD_RUNS (default RUNS), FILES (default 50000),
#        READY_RUNS (mount-ready samples, default 20).
set -euo pipefail
cd "$(dirname "$0")/.."

# ---- mounting, shared with the `--remount` mode hyperfine's --prepare calls -------------------
# Configurations: kernel, squashfuse_ll, fuse-{1,N,U}[-pt][-verify] (U: `-o uring`). Every FUSE
# configuration but the -verify one runs with verify=off: the kernel mount of an insecure
# repository checks no digests either, so that is the like-for-like comparison.
fuse_opts() {
    local cfg=$1 threads opts
    threads=${cfg#fuse-}
    threads=${threads%%-*}
    [[ $threads == N ]] && threads=$(nproc)
    opts="threads=$threads"
    [[ $threads == U ]] && opts="uring"
    [[ $cfg == *-pt* ]] && opts+=",passthrough"
    # verify=on keeps its Merkle trees where a repository mount keeps them (the default a
    # user gets from `mount --fuse`).
    if [[ $cfg == *-verify ]]; then
        opts+=",trees=$work/repo/cache/verity"
    else
        opts+=",verify=off"
    fi
    echo "$opts"
}

# Is process $1 alive (and not a zombie)?
alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

# Mount configuration $1 of tree $2 at $work/mnt/$2; server stderr appended to $3. Returns once
# the mount point's st_dev has changed.
start_cfg() {
    local cfg=$1 t=$2 log=${3:-/dev/null} mnt=$work/mnt/$2 dev pid="" i
    dev=$(stat -c %d "$mnt")
    case $cfg in
    kernel)
        "$bin/cfsctl" --repo "$work/repo" mount "$t" "$mnt"
        ;;
    squashfuse_ll)
        squashfuse_ll -f "$work/$t.sqfs" "$mnt" </dev/null >/dev/null 2>>"$log" &
        pid=$!
        ;;
    fuse-U*)
        # The server says whether it got its io_uring queues only in its log.
        if [[ $log == /dev/null ]]; then
            log=$work/log/start.$t.$cfg
            : >"$log"
        fi
        "$bin/cfsctl" fuse-serve --objects "$work/repo/objects" -o "$(fuse_opts "$cfg")" \
            "$work/repo/images/$(cat "$work/id.$t")" "$mnt" </dev/null >/dev/null 2>>"$log" &
        pid=$!
        ;;
    fuse-*)
        "$bin/cfsctl" fuse-serve --objects "$work/repo/objects" -o "$(fuse_opts "$cfg")" \
            "$work/repo/images/$(cat "$work/id.$t")" "$mnt" </dev/null >/dev/null 2>>"$log" &
        pid=$!
        ;;
    *)
        echo "fuse.sh: unknown configuration $cfg" >&2
        return 1
        ;;
    esac
    [[ -n $pid ]] && echo "$pid" >"$work/pid.$t"
    for ((i = 0; i < 3000; i++)); do
        if [[ $(stat -c %d "$mnt") != "$dev" ]]; then
            [[ $cfg == fuse-U* ]] && { uring_check "$log" || return 1; }
            return 0
        fi
        if [[ -n $pid ]] && ! alive "$pid"; then
            echo "fuse.sh: $cfg server for $t exited before mounting" >&2
            return 1
        fi
        sleep 0.01
    done
    echo "fuse.sh: $cfg did not mount $t within 30 s" >&2
    return 1
}

# Did the server whose log is $1 get io_uring queues? (It logs so just after the mount appears.)
uring_check() {
    local i
    for ((i = 0; i < 500; i++)); do
        grep -q "io_uring queue worker" "$1" && return 0
        grep -q "serving at" "$1" && break
        sleep 0.01
    done
    echo "fuse.sh: no io_uring queues:" >&2
    cat "$1" >&2
    return 1
}

# Unmount tree $1: stop its server (SIGTERM: it unmounts and exits) or unmount the kernel mount.
stop_cfg() {
    local t=$1 mnt=$work/mnt/$1 pid i
    if [[ -s $work/pid.$t ]]; then
        pid=$(cat "$work/pid.$t")
        rm -f "$work/pid.$t"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 1000; i++)); do
            alive "$pid" || break
            sleep 0.01
        done
        if alive "$pid"; then
            echo "fuse.sh: server $pid did not exit, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    if mountpoint -q "$mnt"; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    fi
}

# Drop every cache (page cache, dentries, inodes), then re-read the tools the workloads run so
# that only the filesystem under test is cold.
# (Everything this script wrote was synced after setup, so no `sync` is needed here.)
drop_caches() {
    echo 3 >/proc/sys/vm/drop_caches
    cat /usr/bin/find /usr/bin/tar /usr/bin/cat /usr/bin/dd /bin/sh >/dev/null
}

# Cold remount: unmount, drop caches, mount again.
remount() {
    stop_cfg "$2"
    drop_caches
    start_cfg "$1" "$2" "${3:-/dev/null}"
}

if [[ ${1:-} == --remount ]]; then
    work=$CFS_BENCH_WORK bin=$CFS_BENCH_BIN
    remount "$2" "$3"
    exit
fi

# ---- setup ----------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || {
    echo "fuse.sh: must run as root (mounts, drop_caches)" >&2
    exit 1
}
real=${1:-/usr}
runs=${RUNS:-10}
cold_runs=${COLD_RUNS:-$runs}
ready_runs=${READY_RUNS:-20}
nfiles=${FILES:-50000}
ncpu=$(nproc)
self=$PWD/bench/fuse.sh
start_time=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
scripts/install-deps.sh
cargo build --release --quiet -p cfsctl
bin=${CARGO_TARGET_DIR:-$PWD/target}/release
work=$(mktemp -d /var/tmp/cfs-bench.XXXXXX)
export CFS_BENCH_WORK=$work CFS_BENCH_BIN=$bin

cleanup() {
    local t
    for t in tiny syn real; do
        [[ -d $work/mnt/$t ]] && stop_cfg "$t"
    done
    # The background server of `mount --fuse` (ready-time samples) exits once unmounted.
    [[ -s $work/pid.daemon ]] && kill -TERM "$(cat "$work/pid.daemon")" 2>/dev/null
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# FUSE over io_uring is off in the fuse module by default: on for the run, then put back.
uring_switch=/sys/module/fuse/parameters/enable_uring
if [[ -w $uring_switch ]]; then
    uring_before=$(cat "$uring_switch")
    echo Y >"$uring_switch"
    trap 'echo "$uring_before" >"$uring_switch"; cleanup' EXIT
    uring_cfgs=(fuse-U fuse-U-pt)
else
    echo "fuse.sh: WARNING: this kernel has no FUSE over io_uring ($uring_switch);" \
        "the fuse-uring configurations are left out" >&2
    uring_cfgs=()
fi
mkdir -p "$work/mnt/tiny" "$work/mnt/syn" "$work/mnt/real" "$work/res" "$work/log"
progress() { echo "[fuse.sh $(date +%T)] $*" >&2; }

progress "generating the $nfiles-file tree"
python3 bench/gen_tree.py "$work/syn" "$nfiles"
mkdir -p "$work/tiny/etc"
echo "hello" >"$work/tiny/etc/motd"
head -c 100000 /dev/zero >"$work/tiny/data"

progress "building images (composefs, insecure repository) and uncompressed squashfs"
"$bin/cfsctl" --repo "$work/repo" init --insecure >/dev/null
for t in tiny syn real; do
    src=$work/$t
    [[ $t == real ]] && src=$real
    id=$("$bin/cfsctl" --repo "$work/repo" create-image --no-propagate-usr-to-root "$src" "$t")
    echo "${id#*:}" >"$work/id.$t"
    mksquashfs "$src" "$work/$t.sqfs" -noI -noD -noF -noX -noappend -quiet -no-progress >/dev/null
done
entries_syn=$(find "$work/syn" | wc -l)
entries_real=$(find "$real" -xdev | wc -l)
bytes_syn=$(du -sb --apparent-size "$work/syn" | cut -f1)
bytes_real=$(du -sb --apparent-size "$real" 2>/dev/null | cut -f1)
for t in syn real; do
    stat -c "$t %s" "$(readlink -f "$work/repo/images/$(cat "$work/id.$t")")" >>"$work/res/sizes"
    stat -c "$t.sqfs %s" "$work/$t.sqfs" >>"$work/res/sizes"
done

# ---- timed workloads ------------------------------------------------------------------------
cmd_of() {
    local mnt=$work/mnt/$2
    case $1 in
    find) echo "find $mnt -printf '%p %s %m %T@\n'" ;;
    tar) echo "cd $mnt && tar cf - . | cat" ;;
    seq) echo "dd if=$mnt/big/seq.bin of=/dev/null bs=1M status=none" ;;
    esac
}

# bench TREE CFG WORKLOAD...: warm runs on one mount, then cold runs (remount before each).
bench() {
    local t=$1 cfg=$2 w
    shift 2
    remount "$cfg" "$t"
    for w in "$@"; do
        hyperfine --warmup 1 --min-runs "$runs" --export-json "$work/res/$t.$w.warm.$cfg.json" \
            -n "$cfg" "$(cmd_of "$w" "$t")" >/dev/null
        progress "$t $w warm $cfg: $(median "$work/res/$t.$w.warm.$cfg.json")"
    done
    for w in "$@"; do
        hyperfine --runs "$cold_runs" --prepare "$self --remount $cfg $t" \
            --export-json "$work/res/$t.$w.cold.$cfg.json" -n "$cfg" "$(cmd_of "$w" "$t")" >/dev/null
        progress "$t $w cold $cfg: $(median "$work/res/$t.$w.cold.$cfg.json")"
    done
    stop_cfg "$t"
}
median() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print("%.3f s" % r["median"])' "$1"
}

# Request counters of a cold walk, then a warm one (SIGUSR1 in between; the exit report ends
# the log); the walk's output is checked against the kernel mount's.
counted_walk() {
    local t=$1 cfg=$2 log=$work/log/walk.$t.$2 pid
    remount "$cfg" "$t" "$log"
    pid=$(cat "$work/pid.$t")
    find "$work/mnt/$t" -printf '%p %s %m %T@\n' | sort | md5sum >"$work/res/walk.$t.$cfg.md5"
    kill -USR1 "$pid"
    until grep -q "(SIGUSR1)" "$log" && grep -q "^READ_BYTES" "$log"; do sleep 0.02; done
    sleep 0.1
    find "$work/mnt/$t" -printf '%p %s %m %T@\n' >/dev/null
    stop_cfg "$t"
}
# Request counters of one cold run of a workload.
counted_run() {
    local t=$1 cfg=$2 w=$3
    remount "$cfg" "$t" "$work/log/$w.$t.$cfg"
    sh -c "$(cmd_of "$w" "$t")" >/dev/null
    stop_cfg "$t"
}

fuse_cfgs=(fuse-1 fuse-N fuse-1-pt fuse-N-pt "${uring_cfgs[@]}")
sync
progress "timing: $runs warm and $cold_runs cold runs per case"
for cfg in kernel "${fuse_cfgs[@]}" squashfuse_ll; do
    bench syn "$cfg" find tar seq
done
bench syn fuse-N-pt-verify tar seq
# Passthrough changes nothing for a walk (no file is opened), so the real tree is walked
# without the -pt variants.
for cfg in kernel fuse-1 fuse-N "${uring_cfgs[@]:0:1}" squashfuse_ll; do
    bench real "$cfg" find
done

progress "request counters"
for t in syn real; do
    start_cfg kernel "$t"
    find "$work/mnt/$t" -printf '%p %s %m %T@\n' | sort | md5sum >"$work/res/walk.$t.kernel.md5"
    stop_cfg "$t"
    for cfg in fuse-1 fuse-N "${uring_cfgs[@]:0:1}"; do
        counted_walk "$t" "$cfg"
    done
done
for cfg in "${fuse_cfgs[@]}" fuse-N-pt-verify; do
    counted_run syn "$cfg" tar
    counted_run syn "$cfg" seq
done

# ---- mount-ready time -----------------------------------------------------------------------
progress "mount-ready time"
for t in tiny syn real; do
    python3 - "$bin/cfsctl" "$work" "$t" "$ready_runs" >>"$work/res/ready" <<'PY'
# Time from starting the mounting command until the mount point's st_dev changes (the mount
# answers), warm caches; one untimed run first. Prints "tree config ms..." lines, and for
# fuse-serve the server's own "ready in" figures as config "<cfg>/server".
import os, re, signal, subprocess, sys, time

cfsctl, work, tree, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
mnt = f"{work}/mnt/{tree}"
repo = f"{work}/repo"
image = f"{repo}/images/" + open(f"{work}/id.{tree}").read().strip()
objects = f"{repo}/objects"
nproc = os.cpu_count()
log = f"{work}/log/ready.{tree}"

def wait_gone(pid):
    for _ in range(1000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)

def daemon_pid():
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            # The server is a fork of `cfsctl … mount --fuse… TREE MNT` or, when that cannot
            # fork, `cfsctl … internal-fuse-daemon … MNT`.
            server = b"internal-fuse-daemon" in cmd or (
                b"mount" in cmd and any(a.startswith(b"--fuse") for a in cmd))
            if server and mnt.encode() in cmd and int(p) != os.getpid():
                return int(p)
    return None

def sample(kind, arg):
    before = os.stat(mnt).st_dev
    stderr = open(log, "a")
    t0 = time.perf_counter()
    if kind == "serve":
        p = subprocess.Popen([cfsctl, "fuse-serve", "--objects", objects, "-o", arg, image, mnt],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    elif kind == "squashfuse_ll":
        p = subprocess.Popen(["squashfuse_ll", "-f", f"{work}/{tree}.sqfs", mnt],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    else:
        cmd = [cfsctl, "--repo", repo, "mount"] + ([f"--fuse={arg}"] if kind == "fuse" else [])
        p = subprocess.Popen(cmd + [tree, mnt], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=stderr)
    while os.stat(mnt).st_dev == before:
        if p.poll() is not None and os.stat(mnt).st_dev == before:
            sys.exit(f"fuse.sh: {kind} {arg} did not mount {tree}")
        time.sleep(0.0001)
    t1 = time.perf_counter()
    if kind in ("kernel", "fuse"):
        p.wait()
        daemon = daemon_pid() if kind == "fuse" else None
        if daemon:
            open(f"{work}/pid.daemon", "w").write(str(daemon))
        subprocess.run(["umount", mnt], check=True)
        if daemon:
            wait_gone(daemon)
            os.unlink(f"{work}/pid.daemon")
    else:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    stderr.close()
    return (t1 - t0) * 1e3

cases = [
    ("kernel", "kernel", ""),
    (f"fuse-serve threads={nproc}", "serve", f"threads={nproc},verify=off"),
    ("fuse-serve threads=1", "serve", "threads=1,verify=off"),
    ("mount --fuse", "fuse", "verify=off"),
    ("squashfuse_ll", "squashfuse_ll", ""),
]
for name, kind, arg in cases:
    open(log, "w").close()
    sample(kind, arg)
    ms = [sample(kind, arg) for _ in range(runs)]
    print(tree, name.replace(" ", "_"), *(f"{x:.3f}" for x in ms))
    if kind == "serve":
        own = re.findall(r"ready in ([0-9.]+) ms", open(log).read())[1:]
        print(tree, name.replace(" ", "_") + "/server", *own)
PY
done

# ---- report ---------------------------------------------------------------------------------
elapsed=$(($(date +%s) - start_time))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$work" "$real" "$ncpu" "$runs" "$cold_runs" "$entries_syn" "$entries_real" \
    "$bytes_syn" "$bytes_real" "$elapsed" "$load_start" "$load_end" "$ready_runs" <<'PY'
import glob, json, os, re, statistics, sys, time

(work, real, ncpu, runs, cold_runs, entries_syn, entries_real, bytes_syn, bytes_real, elapsed,
 load_start, load_end, ready_runs) = sys.argv[1:]
ncpu, entries = int(ncpu), {"syn": int(entries_syn), "real": int(entries_real)}
sizes = dict(l.split() for l in open(f"{work}/res/sizes"))
N = f"fuse-{ncpu}"

def label(cfg):
    return (cfg.replace("fuse-N", N).replace("fuse-U", "fuse-uring").replace("-pt", " passthrough")
            .replace("-verify", " verify=on"))

res = {}
for path in glob.glob(f"{work}/res/*.json"):
    t, w, mode, cfg = os.path.basename(path)[:-5].split(".", 3)
    res[t, w, mode, cfg] = json.load(open(path))["results"][0]

def counters(path):
    """The counter blocks of a server log, each a dict opcode -> count."""
    blocks = []
    for block in open(path).read().split("FUSE request counters (")[1:]:
        d = {}
        for line in block.splitlines()[2:]:
            m = re.match(r"^([A-Z_]+)\s+(\d+)$", line)
            if not m:
                break
            d[m[1]] = int(m[2])
        blocks.append(d)
    return blocks

def fmt(x):
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"

print(f"## FUSE ({time.strftime('%Y-%m-%d', time.gmtime())}, {ncpu} CPUs, {os.uname().release})")
print()
print(f"Reproduce with `CARGO_TARGET_DIR=/var/tmp/cfs-bench-target bench/fuse.sh {real}` (as root; "
      f"{int(elapsed) // 60} min {int(elapsed) % 60} s; load average {load_start} at the start, "
      f"{load_end} at the end).")
print()
print(f"- Generated tree: {entries['syn']} entries ({int(bytes_syn) / 2**30:.2f} GiB; 50k files of "
      "0 B–512 KiB in 2000 dirs of Pareto-distributed sizes, symlinks, hardlinks, and one 512 MiB "
      f"file). Composefs image {int(sizes['syn']) / 2**20:.1f} MiB, squashfs "
      f"{int(sizes['syn.sqfs']) / 2**20:.0f} MiB.")
print(f"- Real tree: `{real}`, {entries['real']} entries ({int(bytes_real) / 2**30:.2f} GiB). "
      f"Composefs image {int(sizes['real']) / 2**20:.1f} MiB, squashfs "
      f"{int(sizes['real.sqfs']) / 2**20:.0f} MiB. Only walked, and without the passthrough "
      "variants (a walk opens no file).")
print("- Configurations: **kernel** = `cfsctl mount` (EROFS + overlayfs, insecure repository); "
      f"**fuse-1 / {N}** = `cfsctl fuse-serve -o threads=1|{ncpu},verify=off` (the kernel mount of "
      "an insecure repository checks no digests either); **passthrough** adds `passthrough`; "
      f"**{N} passthrough verify=on** is the default verification (each object hashed on its first "
      "open per mount); **fuse-uring** = `-o uring,verify=off`: FUSE over io_uring, one queue per "
      "CPU served by a worker pinned to that CPU; **squashfuse_ll** 0.1.105 on an uncompressed squashfs "
      "(`mksquashfs -noI -noD -noF -noX`).")
print(f"- Cold: unmount, `echo 3 > /proc/sys/vm/drop_caches`, mount again before every run "
      f"({cold_runs} runs). Warm: the same mount after one warm-up run (at least {runs} runs, and at least 3 s of them, so the 40 ms warm reads get ~70). Times are "
      "hyperfine's median with min–max; × kernel is the ratio of medians to the kernel mount "
      "(lower is better; for throughput, higher is better).")
print()

workloads = [
    ("syn", "find", f"`find -printf '%p %s %m %T@\\n'`, generated tree ({entries['syn']} entries)"),
    ("real", "find", f"`find -printf '%p %s %m %T@\\n'`, `{real}` ({entries['real']} entries)"),
    ("syn", "tar", f"`tar cf - . | cat`, generated tree ({int(bytes_syn) / 2**30:.2f} GiB)"),
    ("syn", "seq", "`dd bs=1M` of the 512 MiB file"),
]
order = ["kernel", "fuse-1", "fuse-N", "fuse-1-pt", "fuse-N-pt", "fuse-N-pt-verify", "fuse-U",
         "fuse-U-pt", "squashfuse_ll"]
uring = os.path.exists(f"{work}/log/tar.syn.fuse-U")
for t, w, title in workloads:
    print(f"### {title}")
    print()
    mb = w == "seq"
    if mb:
        print("| configuration | cold s (min–max) | cold MB/s | cold × kernel | warm s (min–max) | warm MB/s | warm × kernel |")
    else:
        print("| configuration | cold s (min–max) | cold × kernel | warm s (min–max) | warm × kernel |")
    print("|---|---|---|---|---|" + ("---|---|" if mb else ""))
    for cfg in order:
        cells = []
        for mode in ("cold", "warm"):
            r, k = res.get((t, w, mode, cfg)), res.get((t, w, mode, "kernel"))
            if r is None:
                cells += ["–"] * (3 if mb else 2)
                continue
            cells.append(f"{fmt(r['median'])} ({fmt(r['min'])}–{fmt(r['max'])})")
            if mb:
                cells.append(f"{2**29 / r['median'] / 1e6:,.0f}")
                cells.append(f"{k['median'] / r['median']:.2f}")
            else:
                cells.append(f"{r['median'] / k['median']:.2f}")
        if any(c != "–" for c in cells):
            print(f"| {label(cfg)} | " + " | ".join(cells) + " |")
    print()

print("### FUSE requests (server counters)")
print()
print("Walks: one cold `find` on a fresh mount, then a warm one (the kernel keeps entries, attributes "
      "and directory pages: infinite timeouts, FOPEN_CACHE_DIR). The output of every cold walk is "
      "compared with the kernel mount's.")
print()
print("| tree | configuration | entries | cold requests | per entry | READDIRPLUS | LOOKUP | GETATTR | other | warm requests | output = kernel's |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
per_entry = {}
for t in ("syn", "real"):
    kmd5 = open(f"{work}/res/walk.{t}.kernel.md5").read()
    for cfg in ("fuse-1", "fuse-N") + (("fuse-U",) if uring else ()):
        blocks = counters(f"{work}/log/walk.{t}.{cfg}")
        cold, total = blocks[0], blocks[-1]
        n = cold["TOTAL"]
        per_entry[t, cfg] = n / entries[t]
        other = n - cold["READDIRPLUS"] - cold["LOOKUP"] - cold["GETATTR"]
        same = "yes" if open(f"{work}/res/walk.{t}.{cfg}.md5").read() == kmd5 else "**no**"
        print(f"| {t} | {label(cfg)} | {entries[t]} | {n} | {n / entries[t]:.3f} | {cold['READDIRPLUS']} "
              f"| {cold['LOOKUP']} | {cold['GETATTR']} | {other} | {total['TOTAL'] - n} | {same} |")
print()
print("Reads: one cold run each.")
print()
print("| workload | configuration | requests | OPEN | READ | MiB read via READ | avg READ KiB | FLUSH etc. (OTHER) |")
print("|---|---|---|---|---|---|---|---|")
for w in ("tar", "seq"):
    for cfg in ("fuse-1", "fuse-N", "fuse-1-pt", "fuse-N-pt", "fuse-N-pt-verify") + (
            ("fuse-U", "fuse-U-pt") if uring else ()):
        c = counters(f"{work}/log/{w}.syn.{cfg}")[-1]
        avg = c["READ_BYTES"] / c["READ"] / 1024 if c["READ"] else 0
        print(f"| {w} | {label(cfg)} | {c['TOTAL']} | {c['OPEN']} | {c['READ']} | "
              f"{c['READ_BYTES'] / 2**20:.0f} | {avg:.0f} | {c['OTHER']} |")
print()

ready = {}
for line in open(f"{work}/res/ready"):
    t, name, *ms = line.split()
    ready[t, name] = [float(x) for x in ms]
print(f"### Mount ready (ms from starting the command until the mount point's st_dev changes; warm caches, median of {ready_runs} (min–max))")
print()
names = ["kernel", f"fuse-serve_threads={ncpu}", f"fuse-serve_threads={ncpu}/server",
         "fuse-serve_threads=1", "mount_--fuse", "squashfuse_ll"]
heads = ["kernel `cfsctl mount`", f"`fuse-serve` threads={ncpu}", "(server's own report)",
         "`fuse-serve` threads=1", "`mount --fuse` (background)", "squashfuse_ll"]
print("| image | " + " | ".join(heads) + " |")
print("|---|" + "---|" * len(heads))
desc = {"tiny": "3 entries", "syn": f"generated, {entries['syn']} entries",
        "real": f"`{real}`, {entries['real']} entries"}
for t in ("tiny", "syn", "real"):
    cells = []
    for name in names:
        v = ready.get((t, name))
        cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}–{max(v):.1f})" if v else "–")
    print(f"| {desc[t]} | " + " | ".join(cells) + " |")
print()

def ratio(t, w, mode, cfg, base="kernel", thr=False):
    a, b = res[t, w, mode, cfg]["median"], res[t, w, mode, base]["median"]
    return b / a if thr else a / b

rows = []
def target(name, checks):
    """checks: list of (text, ok)."""
    ok = all(c for _, c in checks)
    rows.append((name, "; ".join(t for t, _ in checks), "met" if ok else "**missed**"))

tags = [("fuse-1", "1 thread"), ("fuse-N", f"{ncpu} threads")]
if uring:
    tags.append(("fuse-U", "io_uring"))
for cfg, tag in tags:
    target(f"cold walk ≤ 1.5× kernel ({tag})",
           [(f"{t}: {ratio(t, 'find', 'cold', cfg):.2f}×", ratio(t, "find", "cold", cfg) <= 1.5) for t in ("syn", "real")])
    target(f"cold walk ≥ 3× faster than squashfuse_ll ({tag})",
           [(f"{t}: {ratio(t, 'find', 'cold', cfg, 'squashfuse_ll', True):.2f}×",
             ratio(t, "find", "cold", cfg, "squashfuse_ll", True) >= 3) for t in ("syn", "real")])
    target(f"warm walk ≤ 1.3× kernel ({tag})",
           [(f"{t}: {ratio(t, 'find', 'warm', cfg):.2f}×", ratio(t, "find", "warm", cfg) <= 1.3) for t in ("syn", "real")])
    target(f"warm tar ≤ 1.3× kernel with passthrough ({tag})",
           [(f"{ratio('syn', 'tar', 'warm', cfg + '-pt'):.2f}×", ratio("syn", "tar", "warm", cfg + "-pt") <= 1.3)])
    target(f"warm tar ≤ 2× kernel without passthrough ({tag})",
           [(f"{ratio('syn', 'tar', 'warm', cfg):.2f}×", ratio("syn", "tar", "warm", cfg) <= 2)])
    target(f"512 MiB read with passthrough ≥ 0.9× kernel throughput ({tag})",
           [(f"{m}: {ratio('syn', 'seq', m, cfg + '-pt', thr=True):.2f}×",
             ratio("syn", "seq", m, cfg + "-pt", thr=True) >= 0.9) for m in ("cold", "warm")])
    target(f"cold walk ≤ 0.6 requests per entry ({tag})",
           [(f"{t}: {per_entry[t, cfg]:.3f}", per_entry[t, cfg] <= 0.6) for t in ("syn", "real")])
for name in (f"fuse-serve_threads={ncpu}", "fuse-serve_threads=1"):
    checks = []
    for t in ("tiny", "syn", "real"):
        v = statistics.median(ready[t, name])
        checks.append((f"{t}: {v:.1f} ms", v <= 10))
    target(f"mount ready ≤ 10 ms, any image size (`{name.replace('_', ' ')}`, median)", checks)
print("### Targets (ratios to the kernel mount of the same image in the same run)")
print()
print("| target | measured | |")
print("|---|---|---|")
for name, measured, verdict in rows:
    print(f"| {name} | {measured} | {verdict} |")
print()
PY
