//! Basic end-to-end tests of the FUSE server (as root, real FUSE mounts): `cfsctl fuse-serve`
//! of a `mkcomposefs --digest-store` image shows the source tree (every file type, xattrs,
//! hardlinks, nanosecond mtimes, contents), passthrough keeps READs in the kernel, a tampered
//! object gives EIO naming it, SIGTERM and `umount` end the server cleanly, and `cfsctl mount
//! --fuse` serves a repository image in the background.
//!
//! Every wait has a time limit, and guards kill the server and detach its mount on failure.

mod common;

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::source_tree::{build_source_tree, check_source_tree, MIB};
use common::{
    assert_nothing_mounted_under, content_difference, mount_at, root_unavailable, run_ok,
    run_with_timeout, skip, tree_differences, CompareOptions,
};
use rustix::mount::UnmountFlags;
use rustix::process::{kill_process, Pid, Signal};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const WALK_TIMEOUT: Duration = Duration::from_secs(120);

/// The differences the FUSE (= dumpfile) view has by design: the source's own
/// `trusted.overlay.opaque` is stored as `trusted.overlay.overlay.opaque`, a name the composefs
/// view hides as a whiteout marker (FORMATS.md §2.12).
const EXPECTED_DIFFERENCES: &[&str] = &["\"/xattrs\": xattr trusted.overlay.opaque missing"];

fn cfsctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cfsctl"))
}

/// A `cfsctl` FUSE server process with its stderr in a file; killed and its mount detached on
/// drop.
struct Server {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Start `cfsctl ARGS` and wait until `mnt` shows a new filesystem.
    fn start(args: &[&OsStr], mnt: &Path, log: &Path) -> Server {
        let before = fs::metadata(mnt)
            .unwrap_or_else(|e| panic!("stat {mnt:?}: {e}"))
            .dev();
        let log_file = fs::File::create(log).expect("create the server log");
        let child = cfsctl()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start cfsctl");
        let mut server = Server {
            child: Some(child),
            mnt: mnt.to_owned(),
            log: log.to_owned(),
        };
        server.wait_ready(before);
        server
    }

    fn wait_ready(&mut self, before: u64) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                panic!(
                    "the server exited ({status}) before mounting:\n{}",
                    self.log_text()
                );
            }
            if fs::metadata(&self.mnt).is_ok_and(|m| m.dev() != before) {
                return;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "the server did not mount {:?} within {READY_TIMEOUT:?}:\n{}",
                self.mnt,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("the server is running")
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, sig: Signal) {
        let pid = Pid::from_child(self.child_mut());
        kill_process(pid, sig).expect("signal the server");
    }

    /// Wait for the server to exit by itself (after a signal or an unmount).
    fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < EXIT_TIMEOUT,
                "the server did not exit within {EXIT_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The count of `op` in the last counter table the server printed.
    fn last_count(&self, op: &str) -> Option<u64> {
        self.log_text().lines().rev().find_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some(op)).then(|| words.next()?.parse().ok())?
        })
    }

    /// Ask for the counters (SIGUSR1) and return the count of `op`.
    fn count_now(&mut self, op: &str) -> u64 {
        let before = self.log_text().len();
        self.signal(Signal::USR1);
        let start = Instant::now();
        while self.log_text().len() == before || !self.log_text()[before..].contains("TOTAL") {
            assert!(
                start.elapsed() < EXIT_TIMEOUT,
                "no counters after SIGUSR1:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the whole table arrive.
        std::thread::sleep(Duration::from_millis(50));
        self.last_count(op)
            .unwrap_or_else(|| panic!("no {op} counter in:\n{}", self.log_text()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if mount_at(&self.mnt).is_some_and(|m| m.fstype == "fuse") {
            let _ = rustix::mount::unmount(&self.mnt, UnmountFlags::DETACH);
        }
    }
}

/// Run `f` on another thread and panic if it takes longer than `timeout` (the caller's guards
/// then kill the server, which unblocks the thread).
fn with_timeout<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(timeout) {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {timeout:?} (or panicked)"),
    }
}

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

fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    with_timeout("reading a file", WALK_TIMEOUT, move || {
        let mut v = Vec::new();
        fs::File::open(&path)?.read_to_end(&mut v)?;
        Ok(v)
    })
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

struct Fixture {
    tmp: tempfile::TempDir,
    src: PathBuf,
    image: PathBuf,
    objects: PathBuf,
}

impl Fixture {
    fn new(prefix: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("create a temporary directory");
        let src = tmp.path().join("src");
        let objects = tmp.path().join("objects");
        let image = tmp.path().join("image.cfs");
        build_source_tree(&src);
        check_source_tree(&src);
        let mut store = OsString::from("--digest-store=");
        store.push(&objects);
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_mkcomposefs")).args([
                OsStr::new("--hardlinks"),
                &store,
                src.as_os_str(),
                image.as_os_str(),
            ]),
            Duration::from_secs(60),
        );
        Fixture {
            tmp,
            src,
            image,
            objects,
        }
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::create_dir(&p).expect("mkdir mount point");
        p
    }

    fn serve(&self, mnt: &Path, opts: &str, log: &str) -> Server {
        let log = self.tmp.path().join(log);
        Server::start(
            &[
                OsStr::new("fuse-serve"),
                self.image.as_os_str(),
                mnt.as_os_str(),
                OsStr::new("--objects"),
                self.objects.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(opts),
            ],
            mnt,
            &log,
        )
    }
}

fn needs_root(what: &str) -> bool {
    if let Some(missing) = root_unavailable(what) {
        skip(what, &missing);
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(what, "/dev/fuse is missing");
        return false;
    }
    true
}

#[test]
fn fuse_serve_shows_the_source_tree_and_stops_on_sigterm() {
    if !needs_root("FUSE serving (mount needs CAP_SYS_ADMIN, the tree needs chown/mknod)") {
        return;
    }
    let fx = Fixture::new("cfs-fuse-basic-");
    let mnt = fx.mountpoint("mnt");
    let mut server = fx.serve(&mnt, "threads=2", "serve.log");

    let info = mount_at(&mnt).expect("the FUSE mount is in mountinfo");
    assert_eq!(info.fstype, "fuse", "{info:?}");
    assert_view_matches(&fx.src, &mnt);

    // External files read back byte for byte (also checked by the comparison; explicit here).
    for name in ["s1m", "s65", "sparse", "hardlinks/ext-a", "sub/ext-c"] {
        assert_eq!(
            content_difference(&fx.src.join(name), &mnt.join(name)),
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

    assert!(server.count_now("READ") > 0, "userspace reads are counted");
    assert!(
        server.count_now("READDIRPLUS") > 0,
        "readdirplus is negotiated"
    );

    server.signal(Signal::TERM);
    let status = server.wait_exit();
    assert!(status.success(), "{status}:\n{}", server.log_text());
    assert!(mount_at(&mnt).is_none(), "still mounted after SIGTERM");
    assert!(
        server.log_text().contains("FUSE request counters (exit)"),
        "{}",
        server.log_text()
    );
    assert_nothing_mounted_under(fx.tmp.path());
}

#[test]
fn passthrough_tampering_and_unmount_from_outside() {
    if !needs_root("FUSE passthrough and verification") {
        return;
    }
    let fx = Fixture::new("cfs-fuse-pt-");
    let mnt = fx.mountpoint("mnt");

    // Passthrough: external reads never reach the server.
    let mut server = fx.serve(&mnt, "passthrough", "pt.log");
    let reads_before = server.count_now("READ");
    let data = read_file(&mnt.join("s1m")).expect("read s1m");
    assert_eq!(data, fs::read(fx.src.join("s1m")).expect("read source s1m"));
    let data = read_file(&mnt.join("sparse")).expect("read sparse");
    assert_eq!(
        data,
        fs::read(fx.src.join("sparse")).expect("read source sparse")
    );
    if server.log_text().contains("passthrough unavailable")
        || server.log_text().contains("passthrough disabled")
    {
        skip("passthrough READ count", &server.log_text());
    } else {
        assert_eq!(
            server.count_now("READ"),
            reads_before,
            "passthrough reads reached the server:\n{}",
            server.log_text()
        );
    }
    // An unmount from outside ends the server by itself.
    rustix::mount::unmount(&mnt, UnmountFlags::empty()).expect("umount");
    let status = server.wait_exit();
    assert!(status.success(), "{status}:\n{}", server.log_text());
    drop(server);

    // Tampered object (same size, one byte changed): EIO on open, logged with its name.
    let object = object_of_len(&fx.objects, MIB as u64);
    let mut bytes = fs::read(&object).expect("read the object");
    bytes[MIB / 2] ^= 0x55;
    fs::write(&object, &bytes).expect("tamper with the object");
    let rel = object
        .strip_prefix(&fx.objects)
        .expect("object below objects")
        .to_string_lossy()
        .into_owned();

    let mut server = fx.serve(&mnt, "", "tamper.log");
    let err = read_file(&mnt.join("s1m")).expect_err("a tampered object must not open");
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::IO.raw_os_error()),
        "{err}"
    );
    let log = server.log_text();
    assert!(log.contains(&rel), "the log must name object {rel}:\n{log}");
    // Untampered files still read fine.
    assert_eq!(
        read_file(&mnt.join("hardlinks/ext-a")).expect("read ext-a"),
        fs::read(fx.src.join("hardlinks/ext-a")).expect("read source ext-a")
    );
    // verify=off serves it anyway (here: the tampered bytes).
    server.signal(Signal::TERM);
    assert!(server.wait_exit().success());
    drop(server);
    let server = fx.serve(&mnt, "verify=off,threads=1", "noverify.log");
    assert_eq!(read_file(&mnt.join("s1m")).expect("read s1m"), bytes);
    drop(server);

    // A missing object: EIO on open.
    fs::remove_file(&object).expect("remove the object");
    let mut server = fx.serve(&mnt, "", "missing.log");
    let err = read_file(&mnt.join("s1m")).expect_err("a missing object must not open");
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::IO.raw_os_error()),
        "{err}"
    );
    assert!(server.log_text().contains(&rel), "{}", server.log_text());
    server.signal(Signal::INT);
    assert!(server.wait_exit().success());
    assert_nothing_mounted_under(fx.tmp.path());
}

#[test]
fn bad_images_and_options_are_refused() {
    if !needs_root("FUSE startup checks") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    let objects = tmp.path().join("objects");
    fs::create_dir(&objects).expect("mkdir");
    let src = tmp.path().join("src");
    fs::create_dir(&src).expect("mkdir");
    fs::write(src.join("f"), b"hello").expect("write");
    let image = tmp.path().join("image.cfs");
    run_ok(
        Command::new(env!("CARGO_BIN_EXE_mkcomposefs")).args([&src, &image]),
        Duration::from_secs(30),
    );
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
        stderr.contains("passthrough, threads=N"),
        "the error must list the valid options: {stderr}"
    );
}

#[test]
fn mount_fuse_serves_a_repository_image_in_the_background() {
    if !needs_root("cfsctl mount --fuse") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("cfs-fuse-mount-")
        .tempdir()
        .expect("tempdir");
    let src = tmp.path().join("src");
    build_source_tree(&src);
    let repo = tmp.path().join("repo");
    let with_repo = |args: &[&OsStr]| {
        let mut c = cfsctl();
        c.arg("--repo").arg(&repo).args(args);
        c
    };
    run_ok(
        &mut with_repo(&[OsStr::new("init"), OsStr::new("--insecure")]),
        Duration::from_secs(30),
    );
    run_ok(
        &mut with_repo(&[
            OsStr::new("create-image"),
            OsStr::new("--no-propagate-usr-to-root"),
            src.as_os_str(),
            OsStr::new("img"),
        ]),
        Duration::from_secs(120),
    );
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");

    let out = run_with_timeout(
        &mut with_repo(&[
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
        let out = run_with_timeout(
            &mut with_repo(&[
                OsStr::new("mount"),
                OsStr::new(opts),
                OsStr::new("img"),
                mnt.as_os_str(),
            ]),
            READY_TIMEOUT,
        )
        .expect("run cfsctl mount --fuse");
        // Whatever happens next, do not leave the mount (and its server) behind.
        let _guard = UnmountGuard(mnt.clone());
        assert!(
            out.status.success(),
            "{opts}: {}",
            common::describe_output(&out)
        );
        // `mount` returned only once the mount answers.
        assert_eq!(
            mount_at(&mnt).map(|m| m.fstype),
            Some("fuse".to_string()),
            "{opts}"
        );
        assert_view_matches(&src, &mnt);
        rustix::mount::unmount(&mnt, UnmountFlags::empty()).expect("umount");
        assert!(mount_at(&mnt).is_none());
    }
    assert_nothing_mounted_under(tmp.path());
}

/// Detaches whatever FUSE mount is at the path on drop (the background server then exits).
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        if mount_at(&self.0).is_some_and(|m| m.fstype == "fuse") {
            let _ = rustix::mount::unmount(&self.0, UnmountFlags::DETACH);
        }
    }
}

#[test]
fn damage_found_while_serving_gives_eio() {
    if !needs_root("FUSE serving of a damaged image") {
        return;
    }
    let fx = Fixture::new("cfs-fuse-damage-");
    let mut bytes = fs::read(&fx.image).expect("read the image");
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

    let mnt = fx.mountpoint("mnt");
    let log = fx.tmp.path().join("damaged.log");
    let mut server = Server::start(
        &[
            OsStr::new("fuse-serve"),
            damaged.as_os_str(),
            mnt.as_os_str(),
            OsStr::new("--objects"),
            fx.objects.as_os_str(),
        ],
        &mnt,
        &log,
    );
    let eio = Some(rustix::io::Errno::IO.raw_os_error());
    let m = mnt.clone();
    let (stat_deeper, list_sub, list_many) =
        with_timeout("reading damaged parts", WALK_TIMEOUT, move || {
            let stat_deeper = fs::symlink_metadata(m.join("sub/deeper")).map(|_| ());
            let list = |dir: &str| -> std::io::Result<usize> {
                let mut n = 0;
                for e in fs::read_dir(m.join(dir))? {
                    e?;
                    n += 1;
                }
                Ok(n)
            };
            (stat_deeper, list("sub"), list("many"))
        });
    assert_eq!(stat_deeper.expect_err("damaged inode").raw_os_error(), eio);
    assert_eq!(list_sub.expect_err("damaged child").raw_os_error(), eio);
    assert_eq!(list_many.expect_err("damaged block").raw_os_error(), eio);
    // Everything else is still served.
    assert_eq!(
        read_file(&mnt.join("s1m")).expect("read s1m"),
        fs::read(fx.src.join("s1m")).expect("read source s1m")
    );
    assert!(fs::symlink_metadata(mnt.join("xattrs/file")).is_ok());
    assert!(
        server.log_text().contains("damaged image"),
        "{}",
        server.log_text()
    );
    server.signal(Signal::TERM);
    let status = server.wait_exit();
    assert!(status.success(), "{status}:\n{}", server.log_text());
}
