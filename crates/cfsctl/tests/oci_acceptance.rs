//! Issue 5 acceptance through a real registry (`docker-registry` on 127.0.0.1, pushed to with
//! skopeo), with real mounts:
//! 1. **Pull and compare.** A three-layer image (whiteouts, an opaque directory, hardlinks
//!    across layers, `security.capability`, devices, long names, gzip and zstd layers, 64 MiB of
//!    file data) pulled with `oci pull docker://…` and mounted with `oci mount` (kernel) and
//!    `oci mount --fuse` gives exactly the tree `umoci unpack` makes of the same image, but for
//!    the two documented rules (the root takes `/usr`'s metadata, `/run` is emptied).
//! 2. **Same image, same id.** `docker://` (read directly, and through skopeo), `oci:` and
//!    `oci-archive:` give the same image id; a second pull fetches no layer; two images sharing
//!    a base layer store its objects once.

mod common;
#[path = "common/oci_fixture.rs"]
mod oci_fixture;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cfs_oci::testutil::{Kind, Layer};
use common::source_tree::MIB;
use common::{
    assert_nothing_mounted_under, kernel_mount_unavailable, read_node, read_xattrs,
    root_unavailable, skip, snapshot, snapshot_differences, CompareOptions, MountGuard, Node,
};
use oci_fixture::{
    acceptance_layers, assert_fsck_clean, field, init, long_dir, missing_programs, object_files,
    ok, remote_layer_media_types, sibling_top_layer, skopeo, umoci_rootfs, write_image, LayerSpec,
    Registry, CAP_NET_RAW,
};

/// File data in the acceptance image's base layer.
const LARGE: usize = 64 * MIB;

/// The acceptance image's layer descriptions and built layers, made once per test binary (the
/// base layer holds [`LARGE`] bytes).
fn acceptance() -> &'static (Vec<LayerSpec>, Vec<Layer>) {
    static IMAGE: OnceLock<(Vec<LayerSpec>, Vec<Layer>)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let specs = acceptance_layers(LARGE);
        let layers = specs.iter().map(LayerSpec::build).collect();
        (specs, layers)
    })
}

fn node(root: &Path, rel: &str) -> Node {
    read_node(&root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn same_inode(a: &Node, b: &Node) -> bool {
    (a.dev, a.ino) == (b.dev, b.ino)
}

/// What the acceptance image means, checked on umoci's rootfs before it serves as the
/// reference: umoci applies whiteouts, opaque directories and hardlinks across layers the way
/// the OCI spec (and the pull) does.
fn check_reference_semantics(root: &Path) {
    for gone in [
        "opt/app/old",       // under the opaque directory
        "opt/app/sub",       // ditto, with its subtree
        "etc/gone",          // whited out
        "etc/linked",        // whited out, while another name of the inode stays
        "usr/games",         // a whited-out directory tree
        "usr/bin/gone-link", // a whited-out hardlink from layer 2
    ] {
        assert!(
            std::fs::symlink_metadata(root.join(gone)).is_err(),
            "umoci kept /{gone}"
        );
    }
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("opt/app"), ["new", "newdir"]);
    let app = node(root, "opt/app");
    assert_eq!((app.perm, app.uid, app.gid), (0o750, 1000, 100));
    // usr/bin/a: b (same layer) and c (layer 2) were links to it; layer 3 replaced b.
    let (a, b, c) = (
        node(root, "usr/bin/a"),
        node(root, "usr/bin/b"),
        node(root, "usr/bin/c"),
    );
    assert!(same_inode(&a, &c) && a.nlink == 2, "{a:?} {c:?}");
    assert!(!same_inode(&a, &b) && b.nlink == 1 && b.perm == 0o755);
    let (ping, ping6) = (node(root, "usr/bin/ping"), node(root, "usr/bin/ping6"));
    assert!(same_inode(&ping, &ping6) && ping.nlink == 2);
    assert_eq!(
        ping.xattrs
            .get(&b"security.capability"[..])
            .map(Vec::as_slice),
        Some(&CAP_NET_RAW[..])
    );
    assert_eq!(node(root, "usr/bin/linked-etc").nlink, 1);
    let long = long_dir();
    assert!(same_inode(
        &node(root, &format!("{long}/file-in-long-dir")),
        &node(root, &format!("{long}/hardlink-in-long-dir"))
    ));
    assert!(root.join(&long).as_os_str().len() > 255 + root.as_os_str().len());
    let data = node(root, "srv/data");
    assert_eq!(data.symlink_target, Some(PathBuf::from("../var/x")));
    assert_eq!(names("var/x"), ["inside"]);
    let tiny = node(root, "usr/bin/tiny");
    assert_eq!((tiny.perm, tiny.size), (0o700, 17));
    assert_eq!(node(root, "usr/bin/su").perm, 0o4755);
    let null = node(root, "dev/null");
    assert_eq!(
        (
            null.kind,
            rustix::fs::major(null.rdev),
            rustix::fs::minor(null.rdev)
        ),
        (common::Kind::CharDevice, 1, 3)
    );
    assert_eq!(names("run"), ["lock", "pid"]);
    assert_eq!(
        std::fs::read(root.join("etc/os-release")).expect("os-release"),
        b"ID=cfs-test\nVERSION_ID=2\n"
    );
    // umoci restores other xattrs too; the pull keeps only allowlisted ones.
    assert!(read_xattrs(&root.join("usr/lib/libx.so.1"))
        .expect("xattrs")
        .contains_key(&b"user.origin"[..]));
}

/// The tree a pull of the image must mount, from umoci's rootfs at `rootfs`: the same, except
/// for the two rules composefs-rs applies to every OCI image (docs/formats.md §6 step 3, also what
/// `cfsctl create-image` does):
/// - the root directory takes `/usr`'s metadata (mode, owner, mtime, xattrs), whatever the
///   layers said about `./` (here mode 0700, which umoci applies to `rootfs`);
/// - `/run` is emptied (its entries go; it stays a directory, now with link count 2).
fn expected_mount(rootfs: &Path) -> BTreeMap<PathBuf, Node> {
    let mut tree = snapshot(rootfs).expect("snapshot umoci's rootfs");
    let usr = tree[Path::new("usr")].clone();
    let root = tree.get_mut(Path::new("")).expect("root");
    assert_eq!(root.perm, 0o700, "umoci applied the layer's root entry");
    root.perm = usr.perm;
    root.uid = usr.uid;
    root.gid = usr.gid;
    root.mtime = usr.mtime;
    root.mtime_nsec = usr.mtime_nsec;
    root.xattrs = usr.xattrs;
    tree.retain(|p, _| !p.starts_with("run") || p == Path::new("run"));
    tree.get_mut(Path::new("run")).expect("run").nlink = 2;
    tree
}

/// Everything but mtimes (umoci does not keep directory mtimes) and xattrs other than
/// `security.capability` (the pull drops non-allowlisted ones, umoci keeps them all).
fn compare_options() -> CompareOptions {
    CompareOptions {
        mtimes: false,
        only_xattrs: Some(vec![b"security.capability".to_vec()]),
        ..CompareOptions::default()
    }
}

fn assert_mount_matches(what: &str, rootfs: &Path, expected: &BTreeMap<PathBuf, Node>, mnt: &Path) {
    let actual = snapshot(mnt).unwrap_or_else(|e| panic!("snapshot of the {what} mount: {e}"));
    let diffs = snapshot_differences(rootfs, expected, mnt, &actual, &compare_options());
    assert!(
        diffs.is_empty(),
        "the {what} mount differs from umoci's rootfs in {} ways:\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
    assert_eq!(actual.len(), expected.len());
}

#[test]
fn oci_pull_from_registry_mounts_what_umoci_unpacks() {
    if let Some(why) = root_unavailable("umoci unpack (owners, devices) and mounting") {
        skip("registry pull compared with umoci unpack", &why);
        return;
    }
    if let Some(why) = missing_programs(&["skopeo", "docker-registry", "umoci"]) {
        skip("registry pull compared with umoci unpack", &why);
        return;
    }
    let (_, layers) = acceptance();
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = write_image(&dir.path().join("oci"), "rich", layers);
    let registry = Registry::start(&dir.path().join("registry"));
    let remote = registry.push(&layout.dir, "rich", "cfs/rich");
    // The registry serves the blobs as written: zstd stays zstd.
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    assert_eq!(remote_layer_media_types(&remote), [gzip, zstd, gzip]);

    let repo = init(dir.path(), "sha256");
    let out = ok(
        &repo,
        &["oci", "pull", "--tls-verify=false", &remote, "rich"],
    );
    assert!(
        out.contains("layers 3 (3 fetched, 0 already present)"),
        "{out}"
    );
    assert_fsck_clean(&repo);

    let rootfs = umoci_rootfs(&remote, &dir.path().join("umoci"));
    check_reference_semantics(&rootfs);
    let expected = expected_mount(&rootfs);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let mnt_str = mnt.to_str().expect("utf-8 path");

    match kernel_mount_unavailable() {
        Some(why) => skip("the kernel mount of the pulled image", &why),
        None => {
            ok(&repo, &["oci", "mount", "rich", mnt_str]);
            let guard = MountGuard::adopt(&mnt);
            assert_mount_matches("kernel", &rootfs, &expected, &mnt);
            drop(guard);
        }
    }
    assert_nothing_mounted_under(dir.path());

    if !Path::new("/dev/fuse").exists() {
        skip("the FUSE mount of the pulled image", "/dev/fuse");
    } else {
        ok(&repo, &["oci", "mount", "--fuse", "rich", mnt_str]);
        let guard = MountGuard::adopt(&mnt);
        assert_mount_matches("FUSE", &rootfs, &expected, &mnt);
        drop(guard);
    }
    assert_nothing_mounted_under(dir.path());
    drop(registry);
}

/// The fs-verity digests of the regular files over 64 bytes (stored as objects) of `spec`.
fn external_objects(spec: &LayerSpec) -> Vec<String> {
    spec.entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File(c) if c.len() > 64 => {
                Some(cfs_format::fsverity::digest(cfs_format::Algorithm::Sha256, c).to_hex())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn oci_same_image_through_registry_layout_and_archive() {
    if let Some(why) = missing_programs(&["skopeo", "docker-registry"]) {
        skip("pulls through a registry, a layout and an archive", &why);
        return;
    }
    let (specs, layers) = acceptance();
    let dir = tempfile::tempdir().expect("tempdir");
    let oci_dir = dir.path().join("oci");
    let layout = write_image(&oci_dir, "rich", layers);
    let sibling = sibling_top_layer();
    write_image(&oci_dir, "sibling", &[layers[0].clone(), sibling.build()]);
    let registry = Registry::start(&dir.path().join("registry"));
    let remote = registry.push(&layout.dir, "rich", "cfs/rich");
    let remote_sibling = registry.push(&layout.dir, "sibling", "cfs/sibling");
    let archive = dir.path().join("rich.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &format!("oci:{}:rich", layout.dir.display()),
        &format!("oci-archive:{}", archive.display()),
    ]);

    // Each transport into a repository of its own, so each one imports every layer.
    let mut ids = BTreeMap::new();
    let mut docker_repo = PathBuf::new();
    // `docker://` is read directly by default; `docker-skopeo` is the same registry through
    // skopeo's image proxy, which must give the same manifest, config and image.
    let mut manifests = BTreeMap::new();
    for (label, image, fetcher, via) in [
        ("docker", remote.clone(), "auto", "registry"),
        ("docker-skopeo", remote.clone(), "skopeo", "skopeo"),
        (
            "oci",
            format!("oci:{}:rich", layout.dir.display()),
            "auto",
            "oci layout",
        ),
        (
            "oci-archive",
            format!("oci-archive:{}", archive.display()),
            "auto",
            "skopeo",
        ),
    ] {
        let repo = init(&dir.path().join(label), "sha256");
        let out = ok(
            &repo,
            &[
                "oci",
                "pull",
                "--tls-verify=false",
                &format!("--fetcher={fetcher}"),
                &image,
                "rich",
            ],
        );
        assert!(
            out.contains("layers 3 (3 fetched, 0 already present)"),
            "{label}: {out}"
        );
        assert!(field(&out, "via").starts_with(via), "{label}: {out}");
        manifests.insert(label, field(&out, "manifest").to_owned());
        let id = field(&out, "verity").to_owned();
        assert_eq!(ok(&repo, &["oci", "compute-id", "rich"]).trim(), id);
        ids.insert(label, (id, field(&out, "config").to_owned()));
        if label == "docker" {
            docker_repo = repo;
        }
    }
    assert_eq!(
        manifests["docker"], manifests["docker-skopeo"],
        "the direct and skopeo fetches stored different manifests"
    );
    let first = ids["docker"].clone();
    for (label, id) in &ids {
        assert_eq!(
            *id, first,
            "{label} gives another image id or config: {ids:?}"
        );
    }

    // A second pull fetches no layer.
    let again = ok(
        &docker_repo,
        &["oci", "pull", "--tls-verify=false", &remote, "rich"],
    );
    assert!(
        again.contains("layers 3 (0 fetched, 3 already present)"),
        "{again}"
    );
    assert!(again.contains("bytes 0 fetched"), "{again}");
    assert_eq!(field(&again, "verity"), first.0);

    // The sibling shares the base layer: it is not fetched again, its objects are not written
    // again (same files, same inodes), and only the sibling's own content is new.
    let base_objects = external_objects(&specs[0]);
    let before = object_files(&docker_repo);
    let inode = |p: &Path| std::fs::metadata(p).expect("object").ino();
    let base_inodes: Vec<u64> = base_objects
        .iter()
        .map(|d| inode(&before[d.as_str()]))
        .collect();
    let out = ok(
        &docker_repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            &remote_sibling,
            "sibling",
        ],
    );
    assert!(
        out.contains("layers 2 (1 fetched, 1 already present)"),
        "{out}"
    );
    let sibling_objects = external_objects(&sibling);
    assert_eq!(sibling_objects.len(), 1);
    assert!(
        out.contains("objects 1 new (4000 bytes), 0 reused"),
        "{out}"
    );
    let after = object_files(&docker_repo);
    let after_inodes: Vec<u64> = base_objects
        .iter()
        .map(|d| inode(&after[d.as_str()]))
        .collect();
    assert_eq!(base_inodes, after_inodes, "base objects were rewritten");
    assert!(after.contains_key(&sibling_objects[0]));
    let new_bytes: u64 = after
        .iter()
        .filter(|(d, _)| !before.contains_key(*d))
        .map(|(_, p)| std::fs::metadata(p).expect("object").len())
        .sum();
    assert!(
        new_bytes < MIB as u64,
        "pulling the sibling added {new_bytes} bytes of objects; the shared base holds {LARGE}"
    );
    // The sibling alone, in a repository of its own, has the same image id and holds the base
    // objects too: they are shared, not absent.
    let alone = init(&dir.path().join("sibling-alone"), "sha256");
    let alone_out = ok(
        &alone,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            &remote_sibling,
            "sibling",
        ],
    );
    assert_eq!(field(&alone_out, "verity"), field(&out, "verity"));
    let alone_objects = object_files(&alone);
    assert!(base_objects.iter().all(|d| alone_objects.contains_key(d)));
    assert_fsck_clean(&docker_repo);
    assert!(ok(&docker_repo, &["oci", "fsck"]).contains("2 images checked, 0 with problems"));
    drop(registry);
}
