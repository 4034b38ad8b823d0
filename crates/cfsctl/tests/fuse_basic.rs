//! Basic end-to-end tests of the FUSE server (as root, real FUSE mounts): `cfsctl fuse-serve`
//! of a `mkcomposefs --digest-store` image shows the source tree (every file type, xattrs,
//! hardlinks, nanosecond mtimes, contents), passthrough keeps READs in the kernel, a tampered
//! object gives EIO naming it, SIGTERM and `umount` end the server cleanly, and `cfsctl mount
//! --fuse` serves a repository image in the background.
//!
//! Every wait has a time limit, and guards kill the server and detach its mount on failure.

mod common;
mod fuse_support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::source_tree::{build_source_tree, SourceImage, MIB};
use common::{
    assert_nothing_mounted_under, content_difference, mount_at, run_ok, run_with_timeout, skip,
    tree_differences, CompareOptions,
};
use fuse_support::{
    cfsctl, count_entries, eio, errno_of, fuse_available, make_dir, mkcomposefs, read_file,
    repo_image, test_dir, with_timeout, BackgroundMount, Server, EXIT_TIMEOUT, READY_TIMEOUT,
    WALK_TIMEOUT,
};
use rustix::mount::UnmountFlags;
use rustix::process::Signal;

/// The differences the FUSE (= dumpfile) view has by design: the source's own
/// `trusted.overlay.opaque` is stored as `trusted.overlay.overlay.opaque`, a name the composefs
/// view hides as a whiteout marker (docs/formats.md §2.12).
const EXPECTED_DIFFERENCES: &[&str] = &["\"/xattrs\": xattr trusted.overlay.opaque missing"];

/// Compare the mounted tree with the source, allowing only [`EXPECTED_DIFFERENCES`].
fn assert_view_matches(src: &Path, mnt: &Path) {
    let (src, mnt) = (src.to_owned(), mnt.to_owned());
    let diffs = with_timeout("comparing the mounted tree", WALK_TIMEOUT, move || {
        tree_differences(&src, &mnt, &CompareOptions::default())
    });
    let unexpected: Vec<&String> = diffs
        .iter()
        .filter(|d| !EXPECTED_DIFFERENCES.iter().any(|e| d.starts_with(e)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} unexpected differences between the source and the FUSE view:\n  {}",
        unexpected.len(),
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    for d in EXPECTED_DIFFERENCES {
        assert!(
            diffs.iter().any(|x| x.starts_with(d)),
            "expected difference not seen: {d}"
        );
    }
}

/// The object of exactly `len` bytes in `objects` (path relative to it).
fn object_of_len(objects: &Path, len: u64) -> PathBuf {
    let mut found = Vec::new();
    for sub in fs::read_dir(objects).expect("read objects") {
        let sub = sub.expect("objects entry").path();
        if !sub.is_dir() {
            continue;
        }
        for f in fs::read_dir(&sub).expect("read objects subdir") {
            let f = f.expect("object").path();
            if fs::metadata(&f).is_ok_and(|m| m.len() == len) {
                found.push(f);
            }
        }
    }
    assert_eq!(found.len(), 1, "objects of {len} bytes: {found:?}");
    found.remove(0)
}

/// A temporary directory holding the source tree and its image, whose servers log there.
struct Fixture {
    tmp: tempfile::TempDir,
    img: SourceImage,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        let tmp = test_dir(prefix);
        let img = SourceImage::build(tmp.path(), mkcomposefs());
        Fixture { tmp, img }
    }

    /// `cfsctl fuse-serve` of the image at `mnt` with options `opts`, logging to `log`.
    fn serve(&self, mnt: &Path, opts: &str, log: &str) -> Server {
        let log = self.tmp.path().join(log);
        Server::fuse_serve(&self.img.image, &self.img.objects, opts, mnt, &log)
    }
}

#[test]
fn fuse_serve_shows_the_source_tree_and_stops_on_sigterm() {
    if !fuse_available("FUSE serving (mount needs CAP_SYS_ADMIN, the tree needs chown/mknod)") {
        return;
    }
    let fx = Fixture::new("cfs-fuse-basic-");
    let src = &fx.img.src;
    let mnt = make_dir(fx.tmp.path(), "mnt");
    let mut server = fx.serve(&mnt, "threads=2", "serve.log");

    let info = mount_at(&mnt).expect("the FUSE mount is in mountinfo");
    assert_eq!(info.fstype, "fuse", "{info:?}");
    assert_view_matches(src, &mnt);

    // External files read back byte for byte (also checked by the comparison; explicit here).
    for name in ["s1m", "s65", "sparse", "hardlinks/ext-a", "sub/ext-c"] {
        assert_eq!(
            content_difference(&src.join(name), &mnt.join(name)),
            None,
            "{name}"
        );
    }
    // Stable inode numbers: the root is 1.
    assert_eq!(fs::metadata(&mnt).expect("stat root").ino(), 1);
    // statfs reports the image's figures.
    let st = rustix::fs::statfs(&mnt).expect("statfs");
    assert_eq!(st.f_bsize, 4096);
    assert!(st.f_blocks > 0 && st.f_files > 0, "{st:?}");
    // Read-only.
    let err = fs::write(mnt.join("new"), b"x").expect_err("writing must fail");
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error())
    );

    assert!(
        server.counters_now().get("READ") > 0,
        "userspace reads are counted"
    );
    assert!(
        server.counters_now().get("READDIRPLUS") > 0,
        "readdirplus is negotiated"
    );

    // SIGTERM: a successful exit, the mount gone, the counters printed.
    server.stop();
    assert_nothing_mounted_under(fx.tmp.path());
}

#[test]
fn passthrough_tampering_and_unmount_from_outside() {
    if !fuse_available("FUSE passthrough and verification") {
        return;
    }
    let fx = Fixture::new("cfs-fuse-pt-");
    let (src, objects) = (&fx.img.src, &fx.img.objects);
    let mnt = make_dir(fx.tmp.path(), "mnt");

    // Passthrough: external reads never reach the server.
    let mut server = fx.serve(&mnt, "passthrough", "pt.log");
    let reads_before = server.counters_now().get("READ");
    let data = read_file(&mnt.join("s1m")).expect("read s1m");
    assert_eq!(data, fs::read(src.join("s1m")).expect("read source s1m"));
    let data = read_file(&mnt.join("sparse")).expect("read sparse");
    assert_eq!(
        data,
        fs::read(src.join("sparse")).expect("read source sparse")
    );
    if server.log_text().contains("passthrough unavailable")
        || server.log_text().contains("passthrough disabled")
    {
        skip("passthrough READ count", &server.log_text());
    } else {
        assert_eq!(
            server.counters_now().get("READ"),
            reads_before,
            "passthrough reads reached the server:\n{}",
            server.log_text()
        );
    }
    // An unmount from outside ends the server by itself.
    rustix::mount::unmount(&mnt, UnmountFlags::empty()).expect("umount");
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}:\n{}", server.log_text());
    drop(server);

    // Tampered object (same size, one byte changed): EIO on open, logged with its name.
    let object = object_of_len(objects, MIB as u64);
    let mut bytes = fs::read(&object).expect("read the object");
    bytes[MIB / 2] ^= 0x55;
    fs::write(&object, &bytes).expect("tamper with the object");
    let rel = object
        .strip_prefix(objects)
        .expect("object below objects")
        .to_string_lossy()
        .into_owned();

    let mut server = fx.serve(&mnt, "", "tamper.log");
    let r = read_file(&mnt.join("s1m"));
    assert_eq!(errno_of(r, "open the tampered s1m"), eio());
    let log = server.log_text();
    assert!(log.contains(&rel), "the log must name object {rel}:\n{log}");
    // Untampered files still read fine.
    assert_eq!(
        read_file(&mnt.join("hardlinks/ext-a")).expect("read ext-a"),
        fs::read(src.join("hardlinks/ext-a")).expect("read source ext-a")
    );
    // verify=off serves it anyway (here: the tampered bytes).
    server.stop();
    drop(server);
    let server = fx.serve(&mnt, "verify=off,threads=1", "noverify.log");
    assert_eq!(read_file(&mnt.join("s1m")).expect("read s1m"), bytes);
    drop(server);

    // A missing object: EIO on open.
    fs::remove_file(&object).expect("remove the object");
    let mut server = fx.serve(&mnt, "", "missing.log");
    let r = read_file(&mnt.join("s1m"));
    assert_eq!(errno_of(r, "open s1m without its object"), eio());
    assert!(server.log_text().contains(&rel), "{}", server.log_text());
    server.signal(Signal::INT);
    assert!(server.wait_exit(EXIT_TIMEOUT).success());
    assert_nothing_mounted_under(fx.tmp.path());
}

#[test]
fn bad_images_and_options_are_refused() {
    if !fuse_available("FUSE startup checks") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = make_dir(tmp.path(), "mnt");
    let objects = make_dir(tmp.path(), "objects");
    let src = make_dir(tmp.path(), "src");
    fs::write(src.join("f"), b"hello").expect("write");
    let image = tmp.path().join("image.cfs");
    run_ok(mkcomposefs().arg(&src).arg(&image), Duration::from_secs(30));
    let good = fs::read(&image).expect("read image");
    for (name, bytes) in [
        ("empty", Vec::new()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("bad-magic", {
            let mut b = good.clone();
            b[0] ^= 0xff;
            b
        }),
    ] {
        let bad = tmp.path().join(name);
        fs::write(&bad, &bytes).expect("write bad image");
        let out = run_with_timeout(
            cfsctl()
                .arg("fuse-serve")
                .arg(&bad)
                .arg(&mnt)
                .arg("--objects")
                .arg(&objects),
            READY_TIMEOUT,
        )
        .expect("run cfsctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: served a bad image");
        assert!(stderr.contains("image"), "{name}: unclear error: {stderr}");
        assert!(mount_at(&mnt).is_none(), "{name}: left a mount behind");
    }
    let out = run_with_timeout(
        cfsctl()
            .arg("fuse-serve")
            .arg(&image)
            .arg(&mnt)
            .arg("--objects")
            .arg(&objects)
            .arg("-o")
            .arg("threads=0,bogus"),
        READY_TIMEOUT,
    )
    .expect("run cfsctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(cfs_fuse::VALID_OPTIONS),
        "the error must list the valid options: {stderr}"
    );
}

#[test]
fn mount_fuse_serves_a_repository_image_in_the_background() {
    if !fuse_available("cfsctl mount --fuse") {
        return;
    }
    let tmp = test_dir("cfs-fuse-mount-");
    let src = tmp.path().join("src");
    build_source_tree(&src);
    let repo = tmp.path().join("repo");
    // `init`'s default algorithm.
    repo_image(&repo, "sha512", &src, "img");
    let mnt = make_dir(tmp.path(), "mnt");

    let out = run_with_timeout(
        cfsctl().arg("--repo").arg(&repo).args([
            OsStr::new("mount"),
            OsStr::new("--fuse=bogus"),
            OsStr::new("img"),
            mnt.as_os_str(),
        ]),
        READY_TIMEOUT,
    )
    .expect("run cfsctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("verify=on|off"));

    for opts in ["--fuse", "--fuse=passthrough,threads=2"] {
        // `mount` returns only once the mount answers; the guard detaches the mount (and so
        // ends its server) whatever happens next.
        let mount = BackgroundMount::mount(&repo, "img", opts, &mnt);
        assert_view_matches(&src, mount.path());
        mount.unmount();
    }
    assert_nothing_mounted_under(tmp.path());
}

#[test]
fn damage_found_while_serving_gives_eio() {
    if !fuse_available("FUSE serving of a damaged image") {
        return;
    }
    let fx = Fixture::new("cfs-fuse-damage-");
    let mut bytes = fs::read(&fx.img.image).expect("read the image");
    let (deeper, many_block) = {
        use cfs_format::erofs::reader::Image;
        let img = Image::open(&bytes).expect("valid image");
        let deeper = img
            .resolve(b"/sub/deeper")
            .expect("resolve")
            .expect("/sub/deeper");
        let many = img.resolve(b"/many").expect("resolve").expect("/many");
        let data = many.data().expect("/many data");
        assert!(data.head().len() >= 2 * 4096, "/many spans blocks");
        (deeper.offset() as usize, data.head_offset() as usize + 4096)
    };
    // Unknown i_format bits in /sub/deeper's inode; an impossible first name offset in the
    // second block of /many. Startup only checks the root, so both are found while serving.
    bytes[deeper..deeper + 2].copy_from_slice(&[0xff, 0xff]);
    bytes[many_block + 8..many_block + 10].copy_from_slice(&[0xff, 0xff]);
    let damaged = fx.tmp.path().join("damaged.cfs");
    fs::write(&damaged, &bytes).expect("write the damaged image");

    let mnt = make_dir(fx.tmp.path(), "mnt");
    let log = fx.tmp.path().join("damaged.log");
    let mut server = Server::fuse_serve(&damaged, &fx.img.objects, "", &mnt, &log);
    let m = mnt.clone();
    let (stat_deeper, list_sub, list_many) =
        with_timeout("reading damaged parts", WALK_TIMEOUT, move || {
            (
                fs::symlink_metadata(m.join("sub/deeper")),
                count_entries(&m.join("sub")),
                count_entries(&m.join("many")),
            )
        });
    assert_eq!(errno_of(stat_deeper, "damaged inode"), eio());
    assert_eq!(errno_of(list_sub, "damaged child"), eio());
    assert_eq!(errno_of(list_many, "damaged block"), eio());
    // Everything else is still served.
    assert_eq!(
        read_file(&mnt.join("s1m")).expect("read s1m"),
        fs::read(fx.img.src.join("s1m")).expect("read source s1m")
    );
    assert!(fs::symlink_metadata(mnt.join("xattrs/file")).is_ok());
    assert!(
        server.log_text().contains("damaged image"),
        "{}",
        server.log_text()
    );
    server.stop();
}
