#!/usr/bin/env bash
# The main job on a built-in example, with no network beyond the package registries:
#   1. install the Debian packages it needs and build cfsctl (release);
#   2. build a small two-layer OCI image from a built-in tree with umoci (layer 2 adds a file
#      and deletes one, i.e. holds a whiteout);
#   3. start a local registry (docker-registry on 127.0.0.1, a free port, storage in a temporary
#      directory) and push the image to it with skopeo;
#   4. pull it into a new composefs repository with `cfsctl oci pull docker://…`;
#   5. mount it with `cfsctl oci mount --fuse`, show a listing and a file;
#   6. clean up: unmount, stop the registry, remove the temporary files, also on failure or ^C.
# Run it as root (the FUSE mount needs it). Without root it stops after the pull and prints the
# image's dumpfile instead of mounting it.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "install the packages (scripts/install-deps.sh) and build cfsctl (unless CFS_BIN names one)"
scripts/install-deps.sh
# CFS_BIN=DIR uses a cfsctl already built there (the test suite runs the demo with its own
# debug build rather than building a release one).
if [[ -n ${CFS_BIN:-} ]]; then
    cfsctl=$CFS_BIN/cfsctl
else
    cargo build --release --quiet -p cfsctl
    cfsctl=${CARGO_TARGET_DIR:-$PWD/target}/release/cfsctl
fi

# shellcheck source=scripts/lib/registry.sh
source scripts/lib/registry.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/cfs-demo.XXXXXX")
mnt=$work/mnt
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt" 2>/dev/null || umount -l "$mnt" || true
    fi
    registry_stop
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

root=false
[[ $(id -u) -eq 0 ]] && root=true
umoci_mode=()
$root || umoci_mode=(--rootless)

# ---- 2. the sample image ------------------------------------------------------------------------
step "build the sample image from the built-in tree (umoci)"
layout=$work/layout
bundle=$work/bundle
umoci init --layout "$layout"
umoci new --image "$layout:demo"
umoci unpack "${umoci_mode[@]}" --image "$layout:demo" "$bundle" >/dev/null
tree=$bundle/rootfs
mkdir -p "$tree/usr/bin" "$tree/usr/share/doc" "$tree/etc" "$tree/run"
cat >"$tree/usr/bin/hello" <<'EOF'
#!/bin/sh
# Larger than 64 bytes, so composefs stores it as an object rather than inline.
echo "hello from a composefs image"
EOF
chmod 0755 "$tree/usr/bin/hello"
ln "$tree/usr/bin/hello" "$tree/usr/bin/hello-again"      # a hardlink
ln -s hello "$tree/usr/bin/hi"                            # a symlink
printf 'short\n' >"$tree/usr/share/doc/inline"            # 6 bytes: kept inline in the image
cat >"$tree/etc/os-release" <<'EOF'
ID=cfs-demo
PRETTY_NAME="cfs demo image"
EOF
printf 'removed again by layer 2\n' >"$tree/etc/obsolete"
umoci repack --refresh-bundle --history.created_by "demo: base tree" \
    --image "$layout:demo" "$bundle"
# Layer 2: one new file, one file deleted (stored as a whiteout, etc/.wh.obsolete).
printf 'Pulled from a local registry, served by cfsctl over FUSE.\n' >"$tree/etc/motd"
rm "$tree/etc/obsolete"
umoci repack --history.created_by "demo: motd" --image "$layout:demo" "$bundle"
umoci config --image "$layout:demo" --config.cmd /usr/bin/hello
umoci gc --layout "$layout"
echo "OCI layout $layout, tag demo"

# ---- 3. the registry ------------------------------------------------------------------------------
step "start a local registry (docker-registry on 127.0.0.1)"
registry_start "$work"
image=docker://127.0.0.1:$registry_port/cfs/demo:latest
echo "registry pid $registry_pid on 127.0.0.1:$registry_port"

step "push the image with skopeo"
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:demo" "$image"
echo "pushed $image"

# ---- 4. the pull ----------------------------------------------------------------------------------
repo=$work/repo
step "cfsctl oci pull $image"
"$cfsctl" --repo "$repo" init --insecure
"$cfsctl" --repo "$repo" oci pull --tls-verify=false "$image" demo
step "cfsctl oci images"
"$cfsctl" --repo "$repo" oci images

# ---- 5. the mount ---------------------------------------------------------------------------------
if ! $root; then
    step "not root: no FUSE mount; the image's dumpfile instead (cfsctl oci dump demo)"
    "$cfsctl" --repo "$repo" oci dump demo
    exit 0
fi
step "cfsctl oci mount --fuse demo $mnt"
mkdir "$mnt"
"$cfsctl" --repo "$repo" oci mount --fuse demo "$mnt"
step "ls -la (inode numbers first: hello and hello-again are one file)"
ls -lai "$mnt" "$mnt/etc" "$mnt/usr/bin"
step "cat etc/os-release etc/motd"
cat "$mnt/etc/os-release" "$mnt/etc/motd"
step "usr/bin/hello, read through the mount"
cat "$mnt/usr/bin/hello"
step "clean up"
umount "$mnt"
echo "unmounted; the registry and $work go on exit"
