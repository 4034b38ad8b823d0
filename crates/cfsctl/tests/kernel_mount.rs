//! Acceptance test: `mkcomposefs --hardlinks --digest-store=OBJ DIR IMG` on a tree holding every
//! file type gives an image that `fsck.erofs` accepts and that mounts through the kernel — EROFS
//! file-backed, overlayfs with `lowerdir+=`/`datadir+=`, `metacopy=on`, `redirect_dir=on`,
//! `verity=off` — showing exactly the source tree: names, types, modes, owners, rdevs, sizes,
//! nanosecond mtimes, xattrs, symlink targets, hardlinks and every byte of content.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use common::source_tree::{SourceImage, MIB};
use common::{
    assert_nothing_mounted_under, assert_trees_equal, fsck_erofs, kernel_mount_unavailable,
    mount_at, mount_composefs_overlay, mount_erofs_file, read_node, root_unavailable, skip,
    CompareOptions, Kind,
};

#[test]
fn mkcomposefs_image_mounts_through_kernel_identical_to_source() {
    if let Some(missing) =
        root_unavailable("building the source tree (chown, mknod, trusted.* xattrs) and mounting")
    {
        skip("mkcomposefs kernel-mount acceptance test", &missing);
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("cfs-kernel-mount-")
        .tempdir()
        .expect("create a temporary directory");
    let SourceImage {
        src,
        image,
        objects,
    } = SourceImage::build(tmp.path(), Command::new(env!("CARGO_BIN_EXE_mkcomposefs")));
    fsck_erofs(&image);

    if let Some(missing) = kernel_mount_unavailable() {
        skip(
            "kernel mount of the mkcomposefs image (erofs + overlayfs)",
            &missing,
        );
        return;
    }
    mount_and_compare(tmp.path(), &src, &image, &objects);
    assert_nothing_mounted_under(tmp.path());
}

/// Mount `image` (file-backed EROFS) and overlayfs over it with `objects` as data-only layer,
/// compare with `src`, unmount (also on panic).
fn mount_and_compare(tmp: &Path, src: &Path, image: &Path, objects: &Path) {
    let erofs_mnt = tmp.join("erofs");
    let overlay_mnt = tmp.join("mnt");
    fs::create_dir(&erofs_mnt).expect("mkdir erofs mount point");
    fs::create_dir(&overlay_mnt).expect("mkdir overlay mount point");

    let erofs = mount_erofs_file(image, &erofs_mnt)
        .unwrap_or_else(|e| panic!("mounting {} as erofs: {e}", image.display()));
    let info = mount_at(erofs.path()).expect("the erofs mount is in /proc/self/mountinfo");
    assert_eq!(info.fstype, "erofs", "erofs mount: {info:?}");
    assert!(
        !info.source.starts_with("/dev/"),
        "erofs must be mounted straight from the image file, not a block device: {info:?}"
    );

    // The raw image carries whiteout stubs at its root (chardev 0:0) that overlayfs must hide.
    let stub = read_node(&erofs_mnt.join("01")).expect("root whiteout stub '01' in the image");
    assert_eq!(
        (stub.kind, stub.rdev),
        (Kind::CharDevice, 0),
        "image root '01' should be a whiteout stub"
    );

    check_raw_image(&erofs_mnt, objects);

    let overlay = mount_composefs_overlay(erofs.path(), objects, &overlay_mnt)
        .unwrap_or_else(|e| panic!("mounting the composefs overlay: {e}"));
    let info = mount_at(overlay.path()).expect("the overlay mount is in /proc/self/mountinfo");
    assert_eq!(info.fstype, "overlay", "overlay mount: {info:?}");

    assert_trees_equal(src, overlay.path(), &CompareOptions::default());

    drop(overlay);
    drop(erofs);
}

/// The raw image (mounted without overlayfs) must keep file data out of the image: an external
/// file carries `trusted.overlay.metacopy` and a `trusted.overlay.redirect` naming its object in
/// the digest store; source `trusted.overlay.*` xattrs are stored escaped.
fn check_raw_image(erofs_mnt: &Path, objects: &Path) {
    let raw = read_node(&erofs_mnt.join("s1m")).expect("s1m in the raw image");
    assert!(
        raw.xattrs
            .contains_key(b"trusted.overlay.metacopy".as_slice()),
        "raw image s1m lacks trusted.overlay.metacopy: {:?}",
        raw.xattrs.keys()
    );
    let redirect = raw
        .xattrs
        .get(b"trusted.overlay.redirect".as_slice())
        .expect("raw image s1m has a trusted.overlay.redirect xattr");
    let object = objects.join(OsStr::from_bytes(
        redirect.strip_prefix(b"/").unwrap_or(redirect),
    ));
    let object_len = fs::metadata(&object)
        .unwrap_or_else(|e| panic!("object {object:?} named by s1m's redirect: {e}"))
        .len();
    assert_eq!(
        object_len, MIB as u64,
        "size of the object {object:?} for s1m"
    );

    let raw = read_node(&erofs_mnt.join("xattrs/file")).expect("xattrs/file in the raw image");
    assert_eq!(
        raw.xattrs
            .get(b"trusted.overlay.overlay.foo".as_slice())
            .map(Vec::as_slice),
        Some(b"bar".as_slice()),
        "raw image xattrs/file must store trusted.overlay.foo escaped"
    );
}
