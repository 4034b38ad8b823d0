//! Acceptance tests of the repository and the core `cfsctl` commands, run as separate processes
//! against real repositories and, as root, real kernel mounts:
//!
//! - a tree with every file type and attribute goes through `create-image` and `cfsctl mount`
//!   (by ref, by id, read-write) and `mount -t composefs`, and comes back identical;
//! - `compute-id` and `create-image` agree, a second `create-image` writes nothing, trees that
//!   share files share objects (with and without the OCI-style transform);
//! - `gc` removes exactly what is unreachable (images, streams, objects), its dry run reports
//!   the same and removes nothing, and a GC racing a `create-image` loses nothing;
//! - `fsck` fails on and names a flipped byte, a deleted object, a dangling link and a
//!   truncated image; a mounted image whose object is missing gives ENOENT on open;
//! - bad arguments give clear errors, non-zero exits and no mounts.
//!
//! Crash safety (SIGKILL during `create-image`) is in `repo_crash.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cfs_format::fsverity::{digest, Algorithm};
use cfs_repo::repo::{OpenOptions, Repository};
use cfs_repo::splitstream::content_type;
use common::source_tree::{build_source_tree, check_source_tree, generate_bulk_tree, TreeBuilder};
use common::{
    assert_nothing_mounted_under, assert_trees_equal, describe_output, kernel_mount_unavailable,
    mount_at, pattern, run_ok, run_with_timeout, set_xattr, skip, ChildGuard, CompareOptions,
    MountGuard, SbinHelper,
};

const CFSCTL: &str = env!("CARGO_BIN_EXE_cfsctl");
/// Limit for any one command (generous: debug build, 2 cores, tests in parallel).
const TIMEOUT: Duration = Duration::from_secs(120);
const ENOENT: i32 = 2;

fn tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("cfs-repository-{what}-"))
        .tempdir()
        .expect("create a temporary directory")
}

fn mkdir(path: PathBuf) -> PathBuf {
    fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
    path
}

/// How `create-image` / `compute-id` read the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transform {
    /// The default, OCI-style transform (root takes /usr's metadata, xattrs filtered).
    Oci,
    /// `--no-propagate-usr-to-root`: the tree exactly as on disk.
    AsIs,
}

impl Transform {
    fn args(self) -> &'static [&'static str] {
        match self {
            Transform::Oci => &[],
            Transform::AsIs => &["--no-propagate-usr-to-root"],
        }
    }
}

/// `objects/XX/<rest>` of a hex digest.
fn object_rel(hex: &str) -> String {
    format!("objects/{}/{}", &hex[..2], &hex[2..])
}

/// The hex digest in `sha512:<hex>` (one line), checked for shape.
fn parse_id(line: &str) -> String {
    let line = line.trim_end();
    let hex = line
        .strip_prefix("sha512:")
        .unwrap_or_else(|| panic!("expected sha512:<hex>, got {line:?}"));
    assert!(
        hex.len() == 128
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "not a lowercase SHA-512 hex digest: {line:?}"
    );
    hex.to_owned()
}

/// The fs-verity SHA-512 digest of `data`, in hex.
fn sha512_id(data: &[u8]) -> String {
    digest(Algorithm::Sha512, data).to_hex()
}

/// A repository driven through the `cfsctl` binary.
struct Repo {
    path: PathBuf,
}

impl Repo {
    /// `cfsctl --repo PATH init --insecure` (this kernel has no fs-verity).
    fn init(path: PathBuf) -> Repo {
        run_ok(
            Command::new(CFSCTL)
                .arg("--repo")
                .arg(&path)
                .args(["init", "--insecure"]),
            TIMEOUT,
        );
        Repo { path }
    }

    /// `cfsctl --repo PATH ARGS…`, not yet run.
    fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(CFSCTL);
        cmd.arg("--repo").arg(&self.path).args(args);
        cmd
    }

    fn run<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd(args);
        let shown = format!("{cmd:?}");
        run_with_timeout(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("running {shown}: {e}"))
    }

    /// Run, require success, return stdout.
    fn ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = run_ok(&mut self.cmd(args), TIMEOUT);
        String::from_utf8(out.stdout).expect("cfsctl prints UTF-8")
    }

    /// Run, require failure, return stderr.
    fn fails<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd(args);
        let shown = format!("{cmd:?}");
        let out =
            run_with_timeout(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("running {shown}: {e}"));
        assert!(
            !out.status.success(),
            "{shown} should have failed\n{}",
            describe_output(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `create-image [transform] DIR [NAME]`: the image id (hex).
    fn create_image(&self, dir: &Path, name: Option<&str>, transform: Transform) -> String {
        let mut args: Vec<&OsStr> = vec![OsStr::new("create-image")];
        args.extend(transform.args().iter().map(OsStr::new));
        args.push(dir.as_os_str());
        args.extend(name.map(OsStr::new));
        parse_id(&self.ok(args))
    }

    /// `compute-id [transform] DIR`: the image id (hex).
    fn compute_id(&self, dir: &Path, transform: Transform) -> String {
        let mut args: Vec<&OsStr> = vec![OsStr::new("compute-id")];
        args.extend(transform.args().iter().map(OsStr::new));
        args.push(dir.as_os_str());
        let out = self.ok(args);
        let hex = out.trim_end();
        parse_id(&format!("sha512:{hex}"))
    }

    /// `image-objects NAME`, as hex digests.
    fn image_objects(&self, name: &str) -> BTreeSet<String> {
        self.ok(["image-objects", name])
            .lines()
            .map(parse_id)
            .collect()
    }

    /// Every file below `objects/` (objects and anything else), repository-relative, with its
    /// inode number.
    fn objects(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let mut pending = vec![self.path.join("objects")];
        while let Some(dir) = pending.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => panic!("readdir {dir:?}: {e}"),
            };
            for entry in entries {
                let entry = entry.unwrap_or_else(|e| panic!("readdir {dir:?}: {e}"));
                let md = entry
                    .metadata()
                    .unwrap_or_else(|e| panic!("stat {:?}: {e}", entry.path()));
                if md.is_dir() {
                    pending.push(entry.path());
                } else {
                    let rel = entry
                        .path()
                        .strip_prefix(&self.path)
                        .map(|p| p.to_str().expect("repository paths are UTF-8").to_owned());
                    out.insert(rel.expect("below the repository"), md.ino());
                }
            }
        }
        out
    }

    /// `fsck` must pass with no problem reported.
    fn fsck_clean(&self) {
        let out = self.run(["fsck"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.trim_end().ends_with(": 0 problems"),
            "fsck of {} is not clean\n{}",
            self.path.display(),
            describe_output(&out)
        );
    }

    /// `fsck` must fail (exit status 1): its stdout and stderr.
    fn fsck_fails(&self) -> String {
        let out = self.run(["fsck"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "fsck of {} should report corruption\n{}",
            self.path.display(),
            describe_output(&out)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// `fsck --json` (whatever its exit status): the reported errors.
    fn fsck_json_errors(&self) -> Vec<serde_json::Value> {
        let out = self.run(["fsck", "--json"]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "fsck --json output is not JSON: {e}\n{}",
                describe_output(&out)
            )
        });
        report["errors"].as_array().expect("errors array").clone()
    }

    /// `cfsctl mount NAME MNT [EXTRA…]`, guarded.
    fn mount(&self, name: &str, mnt: &Path, extra: &[&OsStr]) -> MountGuard {
        let mut args: Vec<&OsStr> = vec![OsStr::new("mount"), OsStr::new(name), mnt.as_os_str()];
        args.extend_from_slice(extra);
        mount_with(&mut self.cmd(args), mnt)
    }

    /// The `objects/` directory, canonical (as the kernel shows it).
    fn objects_dir(&self) -> PathBuf {
        fs::canonicalize(self.path.join("objects")).expect("canonicalize objects/")
    }
}

/// Run a mount command that must succeed and leave a mount at `mnt`, which is guarded (also
/// when the command fails after mounting).
fn mount_with(cmd: &mut Command, mnt: &Path) -> MountGuard {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, TIMEOUT).unwrap_or_else(|e| panic!("running {shown}: {e}"));
    let guard = mount_at(mnt).map(|_| MountGuard::adopt(mnt));
    assert!(
        out.status.success(),
        "{shown} failed\n{}",
        describe_output(&out)
    );
    guard.unwrap_or_else(|| panic!("{shown} succeeded but nothing is mounted at {mnt:?}"))
}

/// Nothing may be mounted at `mnt` (if something is, it is unmounted before the panic).
fn assert_not_mounted(mnt: &Path) {
    if let Some(info) = mount_at(mnt) {
        let _guard = MountGuard::adopt(mnt);
        panic!("{} was mounted: {info:?}", mnt.display());
    }
}

/// The mount at `mnt` is a composefs overlay named `source` over `objects` as data layer.
fn check_overlay(mnt: &Path, source: &str, objects: &Path, read_only: bool) {
    let info = mount_at(mnt).unwrap_or_else(|| panic!("nothing mounted at {}", mnt.display()));
    assert_eq!(info.fstype, "overlay", "{info:?}");
    assert_eq!(info.source, source, "{info:?}");
    let opts: Vec<&str> = info.super_options.split(',').collect();
    assert_eq!(
        opts.contains(&"ro"),
        read_only,
        "read-only flag of {info:?}"
    );
    for want in ["metacopy=on", "redirect_dir=on"] {
        assert!(opts.contains(&want), "{want} missing: {info:?}");
    }
    let datadir = format!("datadir+={}", objects.display());
    assert!(
        opts.contains(&datadir.as_str()),
        "{datadir} missing: {info:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip through the kernel
// ---------------------------------------------------------------------------------------------

#[test]
fn created_image_mounts_identical_to_the_source() {
    if let Some(missing) = kernel_mount_unavailable() {
        skip("create-image + kernel mount round trip", &missing);
        return;
    }
    let tmp = tempdir("round-trip");
    let src = tmp.path().join("src");
    build_source_tree(&src);
    check_source_tree(&src);
    let repo = Repo::init(tmp.path().join("repo"));
    let id = repo.create_image(&src, Some("full"), Transform::AsIs);
    let objects = repo.objects_dir();
    let source = format!("composefs:{id}");
    let mnt = mkdir(tmp.path().join("mnt"));
    let opts = CompareOptions::default();

    // By ref name, then by id: the same overlay, named by the image id.
    for name in ["full", id.as_str()] {
        let guard = repo.mount(name, &mnt, &[]);
        check_overlay(&mnt, &source, &objects, true);
        assert_trees_equal(&src, &mnt, &opts);
        let err = fs::write(mnt.join("new"), b"x").expect_err("a read-only mount");
        assert_eq!(err.raw_os_error(), Some(30), "EROFS expected: {err}");
        // Mounting again on top (kernel or FUSE) is refused, naming what is there, and leaves
        // the first mount alone.
        for again in [&["mount"][..], &["mount", "--fuse"][..]] {
            let mut args: Vec<&OsStr> = again.iter().map(OsStr::new).collect();
            args.extend([OsStr::new(name), mnt.as_os_str()]);
            let err = repo.fails(args);
            assert!(
                err.contains("already a composefs mount") && err.contains(&source),
                "{again:?}: {err}"
            );
            check_overlay(&mnt, &source, &objects, true);
        }
        guard.umount();
    }

    // util-linux `mount -t composefs` on the image file, through /sbin/mount.composefs.
    match SbinHelper::install(Path::new(CFSCTL)) {
        Err(reason) => skip("mount -t composefs of a repository image", &reason),
        Ok(helper) => {
            let guard = mount_with(
                Command::new("mount")
                    .args(["-t", "composefs"])
                    .arg(repo.path.join("images").join(&id))
                    .arg(&mnt)
                    .arg("-o")
                    .arg(format!("basedir={}", repo.path.join("objects").display())),
                &mnt,
            );
            check_overlay(&mnt, &source, &objects, true);
            assert_trees_equal(&src, &mnt, &opts);
            guard.umount();
            drop(helper);
        }
    }

    // Writable: --upperdir/--workdir; writes land in the upper directory only.
    let upper = mkdir(tmp.path().join("upper"));
    let work = mkdir(tmp.path().join("work"));
    let guard = repo.mount(
        "full",
        &mnt,
        &[
            OsStr::new("--upperdir"),
            upper.as_os_str(),
            OsStr::new("--workdir"),
            work.as_os_str(),
        ],
    );
    check_overlay(&mnt, &source, &objects, false);
    fs::write(mnt.join("written"), b"through the overlay").expect("write to a writable mount");
    assert_eq!(
        fs::read(mnt.join("s1m")).expect("read s1m"),
        fs::read(src.join("s1m")).expect("read source s1m")
    );
    guard.umount();
    assert_eq!(
        fs::read(upper.join("written")).expect("upper/written"),
        b"through the overlay"
    );
    assert!(!src.join("written").exists());
    repo.fsck_clean();
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 2. Ids agree, objects are shared
// ---------------------------------------------------------------------------------------------

/// Content of the files every tree of [`build_small_tree`] shares.
fn shared_content(i: usize) -> Vec<u8> {
    pattern(1000 + i as u64, 1000 * (i + 1) + 100)
}

/// Content of a file only the tree `own` has.
fn own_content(own: &str, i: usize, len: usize) -> Vec<u8> {
    let seed = own
        .bytes()
        .fold(i as u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    pattern(seed, len)
}

/// A small tree with `/usr` (so the default transform applies): four files shared by every
/// tree (`shared/s0`…`s3`), two external files and one inline file of its own, a `user.` xattr
/// (which the default transform drops) and a root whose metadata differs from `/usr`'s. Needs
/// no privileges.
fn build_small_tree(root: &Path, own: &str) {
    let mut t = TreeBuilder::new(root);
    let m = |n: i64| (1_600_000_000 + n, n * 1000 + 7);
    t.dir("usr", 0o755, m(1));
    t.dir("usr/bin", 0o755, m(2));
    let tool = t.file_with("usr/bin/tool", &own_content(own, 0, 5000), 0o755);
    t.mtime(&tool, m(3));
    t.dir("shared", 0o755, m(4));
    for i in 0..4 {
        let p = t.file_with(format!("shared/s{i}"), &shared_content(i), 0o644);
        t.mtime(&p, m(5));
    }
    let data = t.file_with(format!("{own}-data"), &own_content(own, 1, 3000), 0o600);
    set_xattr(&data, "user.note", own.as_bytes());
    t.mtime(&data, m(6));
    let small = t.file_with(format!("{own}-small"), &own_content(own, 2, 20), 0o644);
    t.mtime(&small, m(7));
    let root_path = t.path("");
    common::set_mode(&root_path, 0o750);
    t.mtime(&root_path, m(9));
    t.finish();
}

#[test]
fn ids_agree_and_objects_are_shared() {
    let tmp = tempdir("ids");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build_small_tree(&a, "a");
    build_small_tree(&b, "b");
    let shared: BTreeSet<String> = (0..4).map(|i| sha512_id(&shared_content(i))).collect();

    let mut ids = Vec::new();
    for transform in [Transform::Oci, Transform::AsIs] {
        let what = format!("{transform:?}");
        let repo = Repo::init(tmp.path().join(format!("repo-{what}")));
        let computed = repo.compute_id(&a, transform);
        assert!(
            repo.objects().is_empty(),
            "{what}: compute-id stored objects"
        );

        let id = repo.create_image(&a, Some("a"), transform);
        assert_eq!(id, computed, "{what}: compute-id and create-image disagree");
        let first = repo.objects();
        let a_objects = repo.image_objects("a");
        let expected: BTreeSet<String> = a_objects
            .iter()
            .chain([&id])
            .map(|d| object_rel(d))
            .collect();
        assert_eq!(
            first.keys().cloned().collect::<BTreeSet<_>>(),
            expected,
            "{what}: the objects are the image and the files it refers to"
        );
        assert!(a_objects.is_superset(&shared), "{what}: {a_objects:?}");
        // tool, shared/s0..s3, a-data; a-small is inline.
        assert_eq!(a_objects.len(), 6, "{what}: {a_objects:?}");

        // The same tree again: the same id, and not one object written (same inodes).
        let again = repo.create_image(&a, Some("a-again"), transform);
        assert_eq!(again, id, "{what}: create-image is not deterministic");
        assert_eq!(
            repo.objects(),
            first,
            "{what}: a second create-image of the same tree changed objects/"
        );
        assert_eq!(repo.compute_id(&a, transform), id);

        // A tree sharing four files: exactly its own objects are added.
        let b_id = repo.create_image(&b, Some("b"), transform);
        assert_eq!(b_id, repo.compute_id(&b, transform), "{what}: tree b");
        let b_objects = repo.image_objects("b");
        assert_eq!(
            a_objects
                .intersection(&b_objects)
                .cloned()
                .collect::<BTreeSet<_>>(),
            shared,
            "{what}: the trees share exactly the shared/ files"
        );
        let after = repo.objects();
        for (path, ino) in &first {
            assert_eq!(
                after.get(path),
                Some(ino),
                "{what}: {path} was rewritten or removed"
            );
        }
        let added: BTreeSet<String> = after
            .keys()
            .filter(|p| !first.contains_key(*p))
            .cloned()
            .collect();
        let want_added: BTreeSet<String> = b_objects
            .difference(&a_objects)
            .chain([&b_id])
            .map(|d| object_rel(d))
            .collect();
        assert_eq!(added, want_added, "{what}: objects added by tree b");
        repo.fsck_clean();
        ids.push(id);
    }
    assert_ne!(
        ids[0], ids[1],
        "the OCI transform (root gets /usr's metadata, user.* dropped) must change the id"
    );

    // compute-id needs no repository: without one it uses a new repository's settings.
    let nowhere = Repo {
        path: tmp.path().join("no-repository"),
    };
    assert_eq!(nowhere.compute_id(&a, Transform::Oci), ids[0]);
    assert_eq!(nowhere.compute_id(&a, Transform::AsIs), ids[1]);
    assert!(!nowhere.path.exists(), "compute-id created a repository");

    // The default transform needs /usr.
    let no_usr = mkdir(tmp.path().join("no-usr"));
    fs::write(no_usr.join("f"), b"x").expect("write");
    let err = nowhere.fails([OsStr::new("compute-id"), no_usr.as_os_str()]);
    assert!(err.contains("no /usr directory"), "{err}");
    // create-image says so before storing anything (this file would be an object).
    fs::write(no_usr.join("big"), vec![7u8; 100_000]).expect("write");
    let repo = Repo::init(tmp.path().join("repo-no-usr"));
    let before = fs::read_dir(repo.path.join("objects")).map_or(0, |d| d.count());
    let err = repo.fails([OsStr::new("create-image"), no_usr.as_os_str()]);
    assert!(err.contains("no /usr directory"), "{err}");
    let after = fs::read_dir(repo.path.join("objects")).map_or(0, |d| d.count());
    assert_eq!(before, after, "create-image stored objects before refusing");
}

// ---------------------------------------------------------------------------------------------
// 3. GC
// ---------------------------------------------------------------------------------------------

/// The `(kind, path)` items of `gc` output whose lines start with `verb` (`removed` or
/// `would remove`); every line but the summary must be such an item.
fn gc_items(output: &str, verb: &str) -> BTreeSet<(String, String)> {
    let mut items = BTreeSet::new();
    for line in output.lines() {
        if line.starts_with("Objects: ") {
            continue;
        }
        let item = line
            .strip_prefix(verb)
            .and_then(|l| l.strip_prefix(' '))
            .unwrap_or_else(|| panic!("unexpected gc output line {line:?}"));
        let (kind, rest) = item.split_once(' ').expect("kind and path");
        let path = rest.split(" (").next().expect("path");
        items.insert((kind.to_owned(), path.to_owned()));
    }
    items
}

fn object_items<'a>(digests: impl IntoIterator<Item = &'a String>) -> BTreeSet<(String, String)> {
    digests
        .into_iter()
        .map(|d| ("object".to_owned(), object_rel(d)))
        .collect()
}

#[test]
fn gc_removes_exactly_the_unreachable() {
    let tmp = tempdir("gc");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build_small_tree(&a, "a");
    build_small_tree(&b, "b");
    let repo = Repo::init(tmp.path().join("repo"));
    let a_id = repo.create_image(&a, Some("a"), Transform::AsIs);
    let b_id = repo.create_image(&b, Some("b"), Transform::AsIs);
    let a_objects = repo.image_objects("a");
    let b_objects = repo.image_objects("b");

    // Streams: one named (it keeps an object only image b has), one without a name.
    let kept_content = fs::read(b.join("b-data")).expect("read b-data");
    let loose_content = pattern(77, 9000);
    let [kept_ext, kept_stream, loose_ext, loose_stream] = {
        let lib = Repository::open(&repo.path, &OpenOptions::default()).expect("open");
        let mut w = lib.create_stream(content_type::OCI_BLOB).expect("stream");
        w.write_inline(b"stream header\n");
        let kept_ext = lib.write_external(&mut w, &kept_content).expect("external");
        let kept_stream = lib
            .write_stream("kept-stream", w, Some("keep"))
            .expect("write");
        let mut w = lib.create_stream(content_type::OCI_BLOB).expect("stream");
        let loose_ext = lib
            .write_external(&mut w, &loose_content)
            .expect("external");
        let loose_stream = lib.write_stream("loose-stream", w, None).expect("write");
        // Dropping `lib` releases its shared lock, which a real GC waits for.
        [kept_ext, kept_stream, loose_ext, loose_stream].map(|d| d.to_hex())
    };
    assert!(b_objects.contains(&kept_ext) && !a_objects.contains(&kept_ext));

    // Drop image b's only ref.
    fs::remove_file(repo.path.join("images/refs/b")).expect("remove images/refs/b");
    let before = repo.objects();
    let live: BTreeSet<String> = a_objects
        .iter()
        .chain([&a_id, &kept_ext, &kept_stream])
        .map(|d| object_rel(d))
        .collect();
    let expected_objects: BTreeSet<String> = before
        .keys()
        .filter(|p| !live.contains(*p))
        .cloned()
        .collect();
    // The same set, stated from what was written: b's own files and image, the loose stream.
    let from_writes: BTreeSet<String> = b_objects
        .iter()
        .chain([&b_id])
        .filter(|d| !a_objects.contains(*d) && **d != kept_ext)
        .chain([&loose_ext, &loose_stream])
        .map(|d| object_rel(d))
        .collect();
    assert_eq!(expected_objects, from_writes);
    let mut expected: BTreeSet<(String, String)> = expected_objects
        .iter()
        .map(|p| ("object".to_owned(), p.clone()))
        .collect();
    expected.insert(("image".into(), format!("images/{b_id}")));
    expected.insert(("stream".into(), "streams/loose-stream".into()));

    // An explicit root keeps the unnamed image b.
    let rooted = gc_items(
        &repo.ok(["gc", "--dry-run", "--root", b_id.as_str()]),
        "would remove",
    );
    let mut want_rooted = object_items([&loose_ext, &loose_stream]);
    want_rooted.insert(("stream".into(), "streams/loose-stream".into()));
    assert_eq!(rooted, want_rooted, "gc --dry-run --root <b>");

    // The dry run reports exactly the garbage and removes nothing.
    let dry_out = repo.ok(["gc", "-n"]);
    let dry = gc_items(&dry_out, "would remove");
    assert_eq!(dry, expected, "gc --dry-run\n{dry_out}");
    assert!(
        dry_out.ends_with(&format!(
            "Objects: {} would remove ({} bytes); images pruned: 1; streams pruned: 1\n",
            expected_objects.len(),
            expected_objects
                .iter()
                .map(|p| fs::metadata(repo.path.join(p)).expect("stat").len())
                .sum::<u64>()
        )),
        "{dry_out}"
    );
    assert_eq!(repo.objects(), before, "a dry run removed objects");
    assert!(fs::symlink_metadata(repo.path.join("images").join(&b_id)).is_ok());

    // The real collection removes the same, and only that.
    let real_out = repo.ok(["gc"]);
    assert_eq!(gc_items(&real_out, "removed"), dry, "gc\n{real_out}");
    let after = repo.objects();
    let want_after: BTreeMap<String, u64> = before
        .iter()
        .filter(|(p, _)| !expected_objects.contains(*p))
        .map(|(p, i)| (p.clone(), *i))
        .collect();
    assert_eq!(after, want_after, "objects after gc");
    assert!(fs::symlink_metadata(repo.path.join("images").join(&b_id)).is_err());
    assert!(fs::symlink_metadata(repo.path.join("streams/loose-stream")).is_err());

    // Everything named survives whole.
    repo.fsck_clean();
    let images: serde_json::Value =
        serde_json::from_str(&repo.ok(["images", "--json"])).expect("images --json");
    let names: Vec<&str> = images
        .as_array()
        .expect("array")
        .iter()
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, [a_id.as_str(), "refs/a"]);
    let mut want_cat = b"stream header\n".to_vec();
    want_cat.extend_from_slice(&kept_content);
    let cat = run_ok(&mut repo.cmd(["cat", "refs/keep"]), TIMEOUT).stdout;
    assert!(cat == want_cat, "cat refs/keep gives other bytes");
    assert_eq!(
        repo.ok(["gc"]),
        "Objects: 0 removed (0 bytes); images pruned: 0; streams pruned: 0\n",
        "a second gc finds nothing"
    );

    if let Some(missing) = kernel_mount_unavailable() {
        skip("mounting the image kept by gc", &missing);
        return;
    }
    let mnt = mkdir(tmp.path().join("mnt"));
    let guard = repo.mount("a", &mnt, &[]);
    assert_trees_equal(&a, &mnt, &CompareOptions::default());
    guard.umount();
    assert_nothing_mounted_under(tmp.path());
}

#[test]
fn gc_racing_create_image_loses_nothing() {
    let tmp = tempdir("gc-race");
    let (t_src, g_src) = (tmp.path().join("t"), tmp.path().join("g"));
    generate_bulk_tree(&t_src, 5000, 1);
    // The garbage shares its even-numbered files with the new tree: a GC that ran between the
    // writer's "already present" check and its image would delete objects the image needs.
    generate_bulk_tree(&g_src, 2500, 2);
    let repo = Repo::init(tmp.path().join("repo"));
    repo.create_image(&g_src, Some("g"), Transform::AsIs);
    let g_objects = repo.image_objects("g");
    fs::remove_file(repo.path.join("images/refs/g")).expect("remove images/refs/g");
    let garbage = repo.objects().len();

    let logs = mkdir(tmp.path().join("logs"));
    let log = |name: &str| fs::File::create(logs.join(name)).expect("create log file");
    let mut writer = ChildGuard::spawn(
        repo.cmd(["create-image", "--no-propagate-usr-to-root"])
            .arg(&t_src)
            .arg("t")
            .stdout(log("create.out"))
            .stderr(log("create.err")),
    );
    // Start collecting once the writer is storing objects, so GC meets it mid-way.
    let deadline = Instant::now() + TIMEOUT;
    while repo.objects().len() < garbage + 50 {
        assert!(
            writer.try_wait().is_none(),
            "create-image finished before GC could start: the tree is too small"
        );
        assert!(Instant::now() < deadline, "create-image stores nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut collectors = Vec::new();
    let mut dry_runs = 0;
    while writer.try_wait().is_none() {
        if collectors.len() < 3 {
            let n = collectors.len();
            collectors.push(ChildGuard::spawn(
                repo.cmd(["gc"])
                    .stdout(log(&format!("gc{n}.out")))
                    .stderr(log(&format!("gc{n}.err"))),
            ));
        }
        // A dry run takes only the shared lock, so it runs beside the writer.
        let out = repo.run(["gc", "--dry-run"]);
        assert!(
            out.status.success(),
            "gc --dry-run during create-image\n{}",
            describe_output(&out)
        );
        dry_runs += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let read_log = |name: &str| fs::read_to_string(logs.join(name)).unwrap_or_default();
    let status = writer.wait_timeout(TIMEOUT);
    assert!(
        status.success(),
        "create-image: {status}\n{}",
        read_log("create.err")
    );
    assert!(!collectors.is_empty(), "no GC ran during create-image");
    for (n, gc) in collectors.iter_mut().enumerate() {
        let status = gc.wait_timeout(TIMEOUT);
        assert!(
            status.success(),
            "gc #{n}: {status}\n{}",
            read_log(&format!("gc{n}.err"))
        );
    }
    eprintln!(
        "gc race: {} collections and {dry_runs} dry runs started while create-image ran",
        collectors.len()
    );
    // One more, with nothing else running.
    repo.ok(["gc"]);

    let t_id = parse_id(&read_log("create.out"));
    assert_eq!(t_id, repo.compute_id(&t_src, Transform::AsIs));
    repo.fsck_clean();
    let t_objects = repo.image_objects("t");
    let live: BTreeSet<String> = t_objects
        .iter()
        .chain([&t_id])
        .map(|d| object_rel(d))
        .collect();
    assert_eq!(
        repo.objects().into_keys().collect::<BTreeSet<_>>(),
        live,
        "after GC exactly image t and its objects remain"
    );
    // The garbage really was collected, and what it shared with t was kept.
    assert!(g_objects.iter().any(|d| t_objects.contains(d)));
    assert!(g_objects.iter().any(|d| !t_objects.contains(d)));

    if let Some(missing) = kernel_mount_unavailable() {
        skip("mounting the image written during GC", &missing);
        return;
    }
    let mnt = mkdir(tmp.path().join("mnt"));
    let guard = repo.mount("t", &mnt, &[]);
    assert_trees_equal(&t_src, &mnt, &CompareOptions::default());
    guard.umount();
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 4. Corruption
// ---------------------------------------------------------------------------------------------

/// Files of several sizes: external (`big`, `mid`, `dir/nested`) and inline (`small`).
fn build_corruption_tree(root: &Path) {
    let mut t = TreeBuilder::new(root);
    t.file("big", 200_000, (1_700_000_000, 1));
    t.file("mid", 5000, (1_700_000_000, 2));
    t.file("small", 20, (1_700_000_000, 3));
    t.dir("dir", 0o755, (1_700_000_000, 4));
    t.file("dir/nested", 70_000, (1_700_000_000, 5));
    t.finish();
}

/// The error of `kind` among fsck's JSON errors.
fn json_error<'a>(errors: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    errors
        .iter()
        .find(|e| e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} error in {errors:#?}"))
}

#[test]
fn fsck_fails_on_and_names_each_corruption() {
    let tmp = tempdir("corruption");
    let src = tmp.path().join("src");
    build_corruption_tree(&src);
    let big = sha512_id(&fs::read(src.join("big")).expect("read big"));
    let fresh = |name: &str| {
        let repo = Repo::init(tmp.path().join(name));
        let id = repo.create_image(&src, Some("c"), Transform::AsIs);
        assert!(repo.image_objects("c").contains(&big));
        repo.fsck_clean();
        (repo, id)
    };

    // A flipped byte in a file's object.
    let (repo, _) = fresh("flip");
    let rel = object_rel(&big);
    {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(repo.path.join(&rel))
            .expect("open object");
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, 123_456).expect("read");
        f.write_all_at(&[byte[0] ^ 0x01], 123_456).expect("write");
    }
    let out = repo.fsck_fails();
    assert!(
        out.contains(&format!("fsck: {rel}: content has digest")),
        "{out}"
    );
    let errors = repo.fsck_json_errors();
    assert_eq!(json_error(&errors, "object-digest-mismatch")["path"], rel);

    // A deleted object: the image that needs it is named, and the object's digest.
    let (repo, id) = fresh("delete");
    fs::remove_file(repo.path.join(object_rel(&big))).expect("remove object");
    let out = repo.fsck_fails();
    assert!(
        out.contains(&format!(
            "image images/{id}: referenced object {big} is missing"
        )),
        "{out}"
    );
    let errors = repo.fsck_json_errors();
    assert_eq!(json_error(&errors, "image-missing-object")["object"], big);

    // A ref to an image that does not exist.
    let (repo, _) = fresh("dangling-ref");
    let ghost = sha512_id(b"no such image");
    std::os::unix::fs::symlink(format!("../{ghost}"), repo.path.join("images/refs/ghost"))
        .expect("symlink");
    let out = repo.fsck_fails();
    assert!(
        out.contains(&format!("images/refs/ghost -> ../{ghost}: dangling link")),
        "{out}"
    );
    assert_eq!(
        json_error(&repo.fsck_json_errors(), "dangling-link")["path"],
        "images/refs/ghost"
    );

    // The image link removed: the ref to it dangles.
    let (repo, id) = fresh("dangling-image");
    fs::remove_file(repo.path.join("images").join(&id)).expect("remove images/<id>");
    let out = repo.fsck_fails();
    assert!(
        out.contains(&format!("images/refs/c -> ../{id}: dangling link")),
        "{out}"
    );

    // A truncated image: its object no longer matches its name and it no longer parses.
    let (repo, id) = fresh("truncate");
    let image = repo.path.join(object_rel(&id));
    let len = fs::metadata(&image).expect("stat image").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate image");
    let out = repo.fsck_fails();
    assert!(
        out.contains(&format!("fsck: {}: content has digest", object_rel(&id))),
        "{out}"
    );
    assert!(
        out.contains(&format!("image images/{id}: corrupt")),
        "{out}"
    );
    let errors = repo.fsck_json_errors();
    assert_eq!(
        json_error(&errors, "image-corrupt")["image"],
        format!("images/{id}")
    );
}

#[test]
fn a_missing_object_fails_on_open_never_silently() {
    if let Some(missing) = kernel_mount_unavailable() {
        skip("mounting an image whose object is missing", &missing);
        return;
    }
    let tmp = tempdir("missing-object");
    let src = tmp.path().join("src");
    build_corruption_tree(&src);
    let repo = Repo::init(tmp.path().join("repo"));
    repo.create_image(&src, Some("c"), Transform::AsIs);
    let big = sha512_id(&fs::read(src.join("big")).expect("read big"));
    fs::remove_file(repo.path.join(object_rel(&big))).expect("remove object");

    let mnt = mkdir(tmp.path().join("mnt"));
    let guard = repo.mount("c", &mnt, &[]);
    // The name and its metadata come from the image; the data lookup happens at open.
    let md = fs::metadata(mnt.join("big")).expect("stat a file whose object is missing");
    assert_eq!(md.len(), 200_000);
    let err = fs::File::open(mnt.join("big")).expect_err("opening a file without its object");
    assert_eq!(err.raw_os_error(), Some(ENOENT), "ENOENT expected: {err}");
    let err = fs::read(mnt.join("big")).expect_err("reading a file without its object");
    assert_eq!(err.raw_os_error(), Some(ENOENT), "ENOENT expected: {err}");
    // Everything else is intact.
    for rel in ["mid", "small", "dir/nested"] {
        assert_eq!(
            fs::read(mnt.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}")),
            fs::read(src.join(rel)).expect("read source"),
            "{rel}"
        );
    }
    guard.umount();
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 6. Bad arguments
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_arguments_fail_clearly_and_mount_nothing() {
    let tmp = tempdir("bad-args");
    let src = tmp.path().join("src");
    build_corruption_tree(&src);
    let repo = Repo::init(tmp.path().join("repo"));
    repo.create_image(&src, Some("img"), Transform::AsIs);
    let mnt = mkdir(tmp.path().join("mnt"));
    let not_mounted = || assert_not_mounted(&mnt);
    let mnt_arg = mnt.as_os_str();

    // A missing repository.
    let missing = Repo {
        path: tmp.path().join("no-repo"),
    };
    let no_repo = format!("no composefs repository at {}", missing.path.display());
    for args in [
        vec![OsStr::new("images")],
        vec![OsStr::new("fsck")],
        vec![OsStr::new("gc")],
        vec![
            OsStr::new("create-image"),
            OsStr::new("--no-propagate-usr-to-root"),
            src.as_os_str(),
        ],
        vec![OsStr::new("mount"), OsStr::new("img"), mnt_arg],
    ] {
        let err = missing.fails(&args);
        assert!(err.contains(&no_repo), "{args:?}: {err}");
        not_mounted();
    }
    assert!(!missing.path.exists(), "a missing repository was created");
    // A directory that is not a repository.
    let plain = Repo {
        path: mkdir(tmp.path().join("plain")),
    };
    let err = plain.fails(["images"]);
    assert!(err.contains("is not a composefs repository"), "{err}");

    // A wrong --hash: the repository is SHA-512.
    let objects = repo.objects();
    for args in [
        vec![OsStr::new("images")],
        vec![OsStr::new("compute-id"), src.as_os_str()],
        vec![
            OsStr::new("create-image"),
            OsStr::new("--no-propagate-usr-to-root"),
            src.as_os_str(),
            OsStr::new("other"),
        ],
        vec![OsStr::new("mount"), OsStr::new("img"), mnt_arg],
    ] {
        let mut with_hash = vec![OsStr::new("--hash"), OsStr::new("sha256")];
        with_hash.extend(&args);
        let err = repo.fails(&with_hash);
        assert!(
            err.contains(&format!(
                "--hash sha256 does not match repository {} (fsverity-sha512-12)",
                repo.path.display()
            )),
            "{args:?}: {err}"
        );
        not_mounted();
    }
    assert_eq!(
        repo.objects(),
        objects,
        "a refused create-image wrote objects"
    );
    assert!(!repo.path.join("images/refs/other").exists());
    repo.ok(["--hash", "sha512", "images"]);

    // A non-existent image.
    for args in [
        vec![OsStr::new("mount"), OsStr::new("nope"), mnt_arg],
        vec![OsStr::new("image-objects"), OsStr::new("nope")],
    ] {
        let err = repo.fails(&args);
        assert!(err.contains("image \"nope\" not found"), "{args:?}: {err}");
    }
    not_mounted();

    if let Some(missing) = kernel_mount_unavailable() {
        skip("bad mount points and mount.composefs options", &missing);
        return;
    }
    // A mount point that is a file, and one that does not exist.
    let file = tmp.path().join("a-file");
    fs::write(&file, b"").expect("create file");
    let err = repo.fails([OsStr::new("mount"), OsStr::new("img"), file.as_os_str()]);
    assert!(
        err.contains(&format!(
            "move_mount to {}: the mount point is not a directory",
            file.display()
        )),
        "{err}"
    );
    assert_not_mounted(&file);
    let absent = tmp.path().join("absent");
    let err = repo.fails([OsStr::new("mount"), OsStr::new("img"), absent.as_os_str()]);
    assert!(
        err.contains(&format!("mounting image img at {}", absent.display()))
            && err.contains("No such file or directory"),
        "{err}"
    );

    // An unknown mount.composefs option, directly and through mount(8).
    let id = repo.ok(["images", "--json"]);
    let images: serde_json::Value = serde_json::from_str(&id).expect("json");
    let hex = images[0]["id"].as_str().expect("id").to_owned();
    let image = repo.path.join("images").join(&hex);
    let options = format!("basedir={},frobnicate", repo.path.join("objects").display());
    let out = run_with_timeout(
        Command::new(CFSCTL)
            .arg("mount.composefs")
            .arg("-o")
            .arg(&options)
            .arg(&image)
            .arg(&mnt),
        TIMEOUT,
    )
    .expect("run mount.composefs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", describe_output(&out));
    assert!(err.contains("unknown option 'frobnicate'"), "{err}");
    not_mounted();
    match SbinHelper::install(Path::new(CFSCTL)) {
        Err(reason) => skip("mount -t composefs with a bad option", &reason),
        Ok(helper) => {
            let out = run_with_timeout(
                Command::new("mount")
                    .args(["-t", "composefs", "-o", &options])
                    .arg(&image)
                    .arg(&mnt),
                TIMEOUT,
            )
            .expect("run mount");
            drop(helper);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{}", describe_output(&out));
            assert!(err.contains("unknown option 'frobnicate'"), "{err}");
            not_mounted();
        }
    }
    assert_nothing_mounted_under(tmp.path());
}
