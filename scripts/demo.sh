#!/usr/bin/env bash
# The main job on a built-in example: build cfsctl, make a small tree with every file type, turn
# it into a composefs image plus an object store, list and dump it, and mount it through the
# kernel (EROFS + overlayfs) when run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
bin=$PWD/target/release
work=$(mktemp -d)
mnt_erofs=$work/erofs mnt=$work/mnt
cleanup() {
    umount "$mnt" 2>/dev/null || true
    umount "$mnt_erofs" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

src=$work/src
mkdir -p "$src/etc" "$src/usr/bin"
echo "hello from composefs" > "$src/etc/motd"
head -c 100000 /dev/urandom > "$src/usr/bin/tool"
ln -s ../usr/bin/tool "$src/etc/tool-link"
ln "$src/etc/motd" "$src/etc/motd.hardlink"
mkfifo "$src/fifo"
setfattr -n user.example -v demo "$src/etc/motd" 2>/dev/null || true

echo "== mkcomposefs --hardlinks --digest-store"
"$bin/mkcomposefs" --hardlinks --digest-store="$work/objects" --print-digest "$src" "$work/demo.img"
echo "== composefs-info ls"
"$bin/composefs-info" ls "$work/demo.img"
echo "== composefs-info dump"
"$bin/composefs-info" dump "$work/demo.img"
echo "== composefs-info objects"
"$bin/composefs-info" objects "$work/demo.img"

if [[ $(id -u) -eq 0 ]]; then
    echo "== kernel mount (EROFS + overlayfs)"
    mkdir -p "$mnt_erofs" "$mnt"
    mount -t erofs -o ro "$work/demo.img" "$mnt_erofs"
    mount -t overlay overlay -o "ro,lowerdir+=$mnt_erofs,datadir+=$work/objects,metacopy=on,redirect_dir=on,verity=off" "$mnt"
    ls -la "$mnt" "$mnt/etc"
    cat "$mnt/etc/motd"
    cmp "$mnt/usr/bin/tool" "$src/usr/bin/tool" && echo "usr/bin/tool: content matches the source"
else
    echo "(not root: skipping the kernel mount)"
fi
