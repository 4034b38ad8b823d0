//! `mount.composefs` end to end: `mkcomposefs --digest-store=OBJ SRC IMG`, then mount IMG with
//! our tool — called as `mount.composefs` (argv[0]), as `cfsctl mount.composefs`, and by
//! util-linux `mount -t composefs` through `/sbin/mount.composefs` — and compare the mounted
//! tree with SRC field by field. Also the failures a user meets: a wrong `digest=`, unknown
//! options, a mount point that is not a directory.
//!
//! util-linux looks for helpers only in `/sbin`, `/sbin/fs.d` and `/sbin/fs` (never `PATH`),
//! so the `mount -t composefs` test installs the symlink `/sbin/mount.composefs` → our binary
//! for its duration and removes it afterwards.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cfs_format::fsverity::{digest, Algorithm};
use common::{
    assert_nothing_mounted_under, assert_trees_equal, describe_output, kernel_mount_unavailable,
    mount_at, pattern, run_ok, run_with_timeout, set_mode, set_mtime, set_owner, set_xattr, skip,
    CompareOptions, MountGuard, SbinHelper,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const CFSCTL: &str = env!("CARGO_BIN_EXE_cfsctl");

/// Everything one test needs: a source tree, its image and object store, a mount point.
struct Setup {
    tmp: tempfile::TempDir,
    src: PathBuf,
    objects: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    /// `None` (after a loud skip) when this machine cannot do kernel mounts.
    fn new(test: &str) -> Option<Setup> {
        if let Some(missing) = kernel_mount_unavailable() {
            skip(test, &missing);
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("cfs-mount-composefs-")
            .tempdir()
            .expect("create a temporary directory");
        let src = tmp.path().join("src");
        let objects = tmp.path().join("objects");
        let image = tmp.path().join("image.cfs");
        let mnt = tmp.path().join("mnt");
        build_tree(&src);
        fs::create_dir(&mnt).expect("mkdir mount point");
        let mut digest_store = OsStr::new("--digest-store=").to_owned();
        digest_store.push(&objects);
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_mkcomposefs"))
                .arg(digest_store)
                .arg(&src)
                .arg(&image),
            TIMEOUT,
        );
        Some(Setup {
            tmp,
            src,
            objects,
            image,
            mnt,
        })
    }

    /// `-o basedir=<objects>` followed by `extra` options.
    fn basedir_option(&self, extra: &str) -> String {
        let mut opt = format!("basedir={}", self.objects.display());
        if !extra.is_empty() {
            opt.push(',');
            opt.push_str(extra);
        }
        opt
    }

    /// A symlink named `mount.composefs` to the cfsctl binary, for argv[0] dispatch.
    fn tool_symlink(&self) -> PathBuf {
        let dir = self.tmp.path().join("bin");
        fs::create_dir_all(&dir).expect("mkdir bin");
        let link = dir.join("mount.composefs");
        if !link.exists() {
            std::os::unix::fs::symlink(CFSCTL, &link).expect("symlink mount.composefs");
        }
        link
    }
}

/// A small tree: inline and external files, an empty file, a nested directory, a symlink,
/// owners, modes, a `user.` xattr and nanosecond mtimes. No hardlinks (mkcomposefs breaks them
/// by default, as C does).
fn build_tree(src: &Path) {
    let mut entries = Vec::new();
    let mut add = |p: PathBuf| {
        entries.push(p.clone());
        p
    };
    fs::create_dir(add(src.to_owned())).expect("mkdir src");
    let small = add(src.join("small"));
    fs::write(&small, b"small inline file\n").expect("write small");
    set_mode(&small, 0o600);
    let big = add(src.join("big"));
    fs::write(&big, pattern(1, 200_000)).expect("write big");
    set_xattr(&big, "user.origin", b"test");
    fs::write(add(src.join("empty")), b"").expect("write empty");
    let dir = add(src.join("dir"));
    fs::create_dir(&dir).expect("mkdir dir");
    let nested = add(dir.join("nested"));
    fs::write(&nested, pattern(2, 5000)).expect("write nested");
    set_owner(&nested, 1000, 1001);
    set_mode(&nested, 0o4755);
    let link = add(src.join("link"));
    std::os::unix::fs::symlink("small", &link).expect("symlink");
    for (i, p) in entries.iter().enumerate().rev() {
        set_mtime(p, 1_600_000_000 + i as i64, 123_456_789);
    }
}

/// Run our tool (any form) and return its output, failing the test only on a spawn error or
/// a timeout.
fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    run_with_timeout(cmd, TIMEOUT).unwrap_or_else(|e| panic!("running {shown}: {e}"))
}

/// Run `cmd`, expect failure, and return its stderr.
fn run_fails(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "{shown} should have failed\n{}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The mount at `mnt` is our overlay with `source`, read-only or not.
fn check_mountinfo(mnt: &Path, source: &str, read_only: bool) {
    let info = mount_at(mnt).unwrap_or_else(|| panic!("nothing mounted at {}", mnt.display()));
    assert_eq!(info.fstype, "overlay", "{info:?}");
    assert_eq!(info.source, source, "{info:?}");
    let ro = info.super_options.split(',').any(|o| o == "ro");
    assert_eq!(ro, read_only, "super options of {info:?}");
}

#[test]
fn mount_composefs_shows_the_source_tree() {
    let Some(s) = Setup::new("mount.composefs: mount and compare") else {
        return;
    };
    let opts = CompareOptions::default();

    // argv[0] = mount.composefs
    run_ok(
        Command::new(s.tool_symlink())
            .arg("-o")
            .arg(s.basedir_option(""))
            .arg(&s.image)
            .arg(&s.mnt),
        TIMEOUT,
    );
    let guard = MountGuard::adopt(&s.mnt);
    check_mountinfo(&s.mnt, "composefs:image.cfs", true);
    assert_trees_equal(&s.src, &s.mnt, &opts);
    let err = fs::write(s.mnt.join("new"), b"x").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected: {err}");
    guard.umount();

    // cfsctl mount.composefs …, with util-linux's argument order.
    run_ok(
        Command::new(CFSCTL)
            .arg("mount.composefs")
            .arg(&s.image)
            .arg(&s.mnt)
            .args(["-n", "-o"])
            .arg(s.basedir_option("ro")),
        TIMEOUT,
    );
    let guard = MountGuard::adopt(&s.mnt);
    check_mountinfo(&s.mnt, "composefs:image.cfs", true);
    assert_trees_equal(&s.src, &s.mnt, &opts);
    guard.umount();
    assert_nothing_mounted_under(s.tmp.path());
}

#[test]
fn writable_mount_with_upperdir() {
    let Some(s) = Setup::new("mount.composefs: upperdir/workdir") else {
        return;
    };
    let (upper, work) = (s.tmp.path().join("upper"), s.tmp.path().join("work"));
    fs::create_dir(&upper).expect("mkdir upper");
    fs::create_dir(&work).expect("mkdir work");
    run_ok(
        Command::new(s.tool_symlink())
            .arg("-o")
            .arg(s.basedir_option(&format!(
                "upperdir={},workdir={},rw",
                upper.display(),
                work.display()
            )))
            .arg(&s.image)
            .arg(&s.mnt),
        TIMEOUT,
    );
    let guard = MountGuard::adopt(&s.mnt);
    check_mountinfo(&s.mnt, "composefs:image.cfs", false);
    fs::write(s.mnt.join("new"), b"written").expect("write through the overlay");
    assert_eq!(fs::read(upper.join("new")).expect("upper/new"), b"written");
    assert_eq!(
        fs::read(s.mnt.join("big")).expect("read big"),
        pattern(1, 200_000)
    );
    guard.umount();
}

#[test]
fn digest_option_checks_the_image() {
    let Some(s) = Setup::new("mount.composefs: digest=") else {
        return;
    };
    let image_bytes = fs::read(&s.image).expect("read image");
    let good = digest(Algorithm::Sha256, &image_bytes).to_hex();
    let wrong = digest(Algorithm::Sha256, b"something else").to_hex();

    let err = run_fails(
        Command::new(s.tool_symlink())
            .arg("-o")
            .arg(s.basedir_option(&format!("digest={wrong}")))
            .arg(&s.image)
            .arg(&s.mnt),
    );
    assert!(
        err.contains(&format!("has fs-verity digest {good}"))
            && err.contains(&format!("but digest={wrong} was required")),
        "{err}"
    );
    assert!(mount_at(&s.mnt).is_none(), "nothing may be mounted");

    // The right digest mounts, named by the digest. It implies verity=require, which this
    // kernel (no fs-verity, docs/formats.md §7.3) enforces by failing reads of external files
    // with EIO; inline data still reads.
    run_ok(
        Command::new(s.tool_symlink())
            .arg("-o")
            .arg(s.basedir_option(&format!("digest={good}")))
            .arg(&s.image)
            .arg(&s.mnt),
        TIMEOUT,
    );
    let guard = MountGuard::adopt(&s.mnt);
    check_mountinfo(&s.mnt, &format!("composefs:{good}"), true);
    assert_eq!(
        fs::read(s.mnt.join("small")).expect("inline file"),
        b"small inline file\n"
    );
    let err = fs::read(s.mnt.join("big")).expect_err("verity=require without fs-verity");
    assert_eq!(err.raw_os_error(), Some(5), "EIO expected: {err}");
    guard.umount();
}

#[test]
fn bad_invocations_fail_clearly() {
    let Some(s) = Setup::new("mount.composefs: error messages") else {
        return;
    };
    let tool = s.tool_symlink();

    let err = run_fails(
        Command::new(&tool)
            .arg("-o")
            .arg(s.basedir_option("frobnicate"))
            .arg(&s.image)
            .arg(&s.mnt),
    );
    assert!(err.contains("unknown option 'frobnicate'"), "{err}");
    for valid in [
        "basedir=",
        "digest=",
        "verity",
        "tryverity",
        "upperdir=",
        "workdir=",
    ] {
        assert!(err.contains(valid), "the message lists {valid}: {err}");
    }

    let file = s.tmp.path().join("not-a-dir");
    fs::write(&file, b"").expect("create file");
    let err = run_fails(
        Command::new(&tool)
            .arg("-o")
            .arg(s.basedir_option(""))
            .arg(&s.image)
            .arg(&file),
    );
    assert!(
        err.contains(&format!(
            "move_mount to {}: the mount point is not a directory",
            file.display()
        )),
        "{err}"
    );

    let err = run_fails(Command::new(&tool).arg(&s.image).arg(&s.mnt));
    assert!(err.contains("basedir=PATH option is required"), "{err}");

    let err = run_fails(
        Command::new(&tool)
            .arg("-o")
            .arg(s.basedir_option("idmap=/proc/self/ns/user"))
            .arg(&s.image)
            .arg(&s.mnt),
    );
    assert!(err.contains("idmap= is not supported"), "{err}");

    let missing = s.tmp.path().join("no-image");
    let err = run_fails(
        Command::new(&tool)
            .arg("-o")
            .arg(s.basedir_option(""))
            .arg(&missing)
            .arg(&s.mnt),
    );
    assert!(
        err.contains(&format!("cannot open image {}", missing.display())),
        "{err}"
    );

    let err = run_fails(
        Command::new(&tool)
            .arg("-o")
            .arg(s.basedir_option(""))
            .arg(s.src.join("small"))
            .arg(&s.mnt),
    );
    assert!(err.contains("not a composefs image"), "{err}");
    assert_nothing_mounted_under(s.tmp.path());
}

#[test]
fn mount_t_composefs_runs_our_helper() {
    let Some(s) = Setup::new("mount -t composefs") else {
        return;
    };
    let helper = match SbinHelper::install(Path::new(CFSCTL)) {
        Ok(h) => h,
        Err(reason) => {
            skip("mount -t composefs through /sbin/mount.composefs", &reason);
            return;
        }
    };

    // mount(8) passes `rw` unless told otherwise; without an upper layer the mount stays
    // read-only.
    run_ok(
        Command::new("mount")
            .args(["-t", "composefs"])
            .arg(&s.image)
            .arg(&s.mnt)
            .arg("-o")
            .arg(s.basedir_option("")),
        TIMEOUT,
    );
    let guard = MountGuard::adopt(&s.mnt);
    check_mountinfo(&s.mnt, "composefs:image.cfs", true);
    assert_trees_equal(&s.src, &s.mnt, &CompareOptions::default());
    guard.umount();

    // The helper's message reaches the user through mount(8).
    let out = run(Command::new("mount")
        .args(["-t", "composefs", "-o"])
        .arg(s.basedir_option("frobnicate"))
        .arg(&s.image)
        .arg(&s.mnt));
    assert!(!out.status.success(), "{}", describe_output(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown option 'frobnicate'"), "{err}");
    drop(helper);
    assert_nothing_mounted_under(s.tmp.path());
}
