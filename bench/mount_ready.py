#!/usr/bin/env python3
# Mount-ready time: from starting a mounting command until the mount point's st_dev changes
# (the new filesystem answers), warm caches, one untimed run first. For each configuration
# prints "name ms ms ..." on stdout. Shared by bench/fuse-verify.sh.
# Usage: mount_ready.py CFSCTL REPO IMAGE_NAME MOUNTPOINT RUNS [SQUASHFS_IMAGE]
import os, signal, subprocess, sys, time

cfsctl, repo, name, mnt, runs = sys.argv[1:6]
runs = int(runs)
sqfs = sys.argv[6] if len(sys.argv) > 6 else None
image = os.path.realpath(f"{repo}/images/refs/{name}")


def background_servers():
    """Pids of cfsctl processes still serving `mnt` after the mounting command returned."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"cfsctl") and mnt.encode() in cmd:
            pids.append(int(p))
    return pids


def wait_gone(pid):
    for _ in range(1000):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


def sample(cmd, foreground):
    before = os.stat(mnt).st_dev
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    while os.stat(mnt).st_dev == before:
        if p.poll() is not None and os.stat(mnt).st_dev == before:
            sys.exit(f"mount_ready.py: {' '.join(cmd)} did not mount")
        time.sleep(0.0001)
    t1 = time.perf_counter()
    if foreground:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
    else:
        p.wait(timeout=30)
        servers = background_servers()
        subprocess.run(["umount", mnt], check=True)
        for pid in servers:
            wait_gone(pid)
    return (t1 - t0) * 1e3


cases = [
    ("kernel mount (EROFS + overlayfs)", [cfsctl, "--repo", repo, "mount", name, mnt], False),
    ("cfs `mount --fuse` (default: verify=on, background server)",
     [cfsctl, "--repo", repo, "mount", "--fuse", name, mnt], False),
    ("cfs `mount --fuse=verify=off`",
     [cfsctl, "--repo", repo, "mount", "--fuse=verify=off", name, mnt], False),
    ("cfs `mount --fuse=passthrough,verify=off`",
     [cfsctl, "--repo", repo, "mount", "--fuse=passthrough,verify=off", name, mnt], False),
    ("cfs `fuse-serve` (foreground)",
     [cfsctl, "fuse-serve", "--objects", f"{repo}/objects", image, mnt], True),
]
if sqfs:
    cases.append(("squashfuse_ll (foreground)", ["squashfuse_ll", "-f", sqfs, mnt], True))
for label, cmd, foreground in cases:
    sample(cmd, foreground)
    ms = [sample(cmd, foreground) for _ in range(runs)]
    print(label, *(f"{x:.3f}" for x in ms), sep="\t")
