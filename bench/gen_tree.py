#!/usr/bin/env python3
# Deterministic tree: dirs of Pareto-distributed sizes up to 7 levels deep, files of mixed
# sizes (10% inline-sized, most under 16 KiB, a tail up to 512 KiB) with random contents,
# 4% symlinks (a tenth dangling), 1% hardlinks, nanosecond mtimes, and big/seq.bin (512 MiB).
# Usage: gen_tree.py ROOT NFILES (shared by bench/fuse.sh and bench/fuse-uring.sh)
import os, random, sys

root, nfiles = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261124)

def data(n):
    return rng.getrandbits(n * 8).to_bytes(n, "little") if n else b""

def stamp(path):
    t = (1_600_000_000 + rng.randrange(100_000_000)) * 10**9 + rng.randrange(10**9)
    os.utime(path, ns=(t, t), follow_symlinks=False)

os.makedirs(root)
dirs, depth = [""], [0]
while len(dirs) < max(nfiles // 25, 1):
    p = int(len(dirs) * rng.random() ** 2)
    if depth[p] >= 7:
        continue
    name = f"{dirs[p]}/{rng.choice(['lib', 'share', 'doc', 'src', 'x', 'locale', 'py'])}{len(dirs)}"
    os.mkdir(root + name)
    dirs.append(name)
    depth.append(depth[p] + 1)
weights = [rng.paretovariate(1.1) for _ in dirs]
exts = ["", ".so", ".h", ".py", ".txt", ".gz", ".html", ".png", ".conf", ".mo"]
files = []
for i, d in enumerate(rng.choices(dirs, weights, k=nfiles)):
    r = rng.random()
    if r < 0.10:
        size = rng.randrange(0, 65)
    elif r < 0.50:
        size = rng.randrange(65, 4097)
    elif r < 0.90:
        size = rng.randrange(4097, 16385)
    elif r < 0.99:
        size = rng.randrange(16385, 131073)
    else:
        size = rng.randrange(131073, 524289)
    path = f"{root}{d}/f{i:05d}-{'n' * rng.randrange(12)}{rng.choice(exts)}"
    with open(path, "wb") as f:
        f.write(data(size))
    os.chmod(path, rng.choice([0o644] * 8 + [0o755, 0o600]))
    stamp(path)
    files.append(path)
for i in range(nfiles // 25):
    d = root + rng.choice(dirs)
    target = os.path.relpath(rng.choice(files), d) if rng.random() < 0.9 else f"missing{i}"
    path = f"{d}/l{i:05d}"
    os.symlink(target, path)
    stamp(path)
for i in range(nfiles // 100):
    os.link(rng.choice(files), f"{root}{rng.choice(dirs)}/h{i:05d}")
os.mkdir(root + "/big")
with open(root + "/big/seq.bin", "wb") as f:
    for _ in range(512):
        f.write(data(1 << 20))
for path in [root + "/big/seq.bin", root + "/big"] + [root + d for d in dirs]:
    stamp(path)
