//! Support for the FUSE acceptance and stress tests: a `cfsctl fuse-serve` subprocess with its
//! stderr in a file (killed and its mount detached on drop), the readiness wait of docs/formats.md
//! §8.2 (poll every 20 ms until the mount point's `st_dev` changes, fail early if the server
//! exits, 30 s budget), the request-counter tables the server prints, a guard for the background
//! server of `cfsctl mount --fuse`, reads with time limits, and the images the tests serve.
//!
//! Used next to `common` (`mod common; mod fuse_support;`): it reaches the shared helpers as
//! `crate::common`.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::mount::UnmountFlags;
use rustix::process::{kill_process, Pid, Signal};

use crate::common::{mount_at, root_unavailable, run_ok, skip};

/// How long a server may take to mount (docs/formats.md §8.2: 30 s budget).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often readiness is polled.
pub const READY_POLL: Duration = Duration::from_millis(20);
/// How long a server may take to exit after a signal or an unmount.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Time limit of a whole-tree walk or of reading one big file through a mount.
pub const WALK_TIMEOUT: Duration = Duration::from_secs(120);
/// Time limit of short tool runs (create-dumpfile, composefs-info, mkcomposefs of small trees).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// `cfsctl`, the binary under test.
pub fn cfsctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cfsctl"))
}

/// Our `mkcomposefs`.
pub fn mkcomposefs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mkcomposefs"))
}

/// Our `composefs-info`.
pub fn composefs_info() -> Command {
    Command::new(env!("CARGO_BIN_EXE_composefs-info"))
}

/// Whether this process can serve FUSE mounts (root for `mount("fuse")` and for building trees
/// with owners and device nodes, and `/dev/fuse`); skips loudly (fails under
/// `CFS_TEST_REQUIRE_ALL`) when not.
pub fn fuse_available(what: &str) -> bool {
    if let Some(missing) = root_unavailable(what) {
        skip(what, &missing);
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        skip(
            what,
            "/dev/fuse is missing (no FUSE support in this kernel or container)",
        );
        return false;
    }
    true
}

/// A temporary directory for one test, named after it.
pub fn test_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary directory")
}

/// Create the directory `parent/name` and return it.
pub fn make_dir(parent: &Path, name: &str) -> PathBuf {
    let p = parent.join(name);
    fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
    p
}

/// `st_dev` of `path`.
pub fn dev_of(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path:?}: {e}"))
        .dev()
}

/// Run `f` on another thread and panic if it takes longer than `timeout`. The thread is left
/// behind then; the caller's guards kill the server, which ends whatever it was blocked on.
pub fn with_timeout<T: Send + 'static>(
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
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish within {timeout:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked"),
    }
}

/// Read a whole file, with [`WALK_TIMEOUT`].
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    with_timeout(
        &format!("reading {}", path.display()),
        WALK_TIMEOUT,
        move || {
            let mut v = Vec::new();
            fs::File::open(&path)?.read_to_end(&mut v)?;
            Ok(v)
        },
    )
}

/// [`content_difference`](crate::common::content_difference) of two files (`None`: the same
/// bytes), with [`WALK_TIMEOUT`].
pub fn content_diff(expected: &Path, actual: &Path) -> Option<String> {
    let (expected, actual) = (expected.to_owned(), actual.to_owned());
    with_timeout(
        &format!("comparing {} with {}", actual.display(), expected.display()),
        WALK_TIMEOUT,
        move || crate::common::content_difference(&expected, &actual),
    )
}

/// The number of entries of the directory `dir`, or the first error met listing it.
pub fn count_entries(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        e?;
        n += 1;
    }
    Ok(n)
}

/// `mkcomposefs --digest-store=OBJECTS SRC IMAGE`, which must succeed within `timeout`.
pub fn digest_store_image(src: &Path, image: &Path, objects: &Path, timeout: Duration) {
    let mut store = OsStr::new("--digest-store=").to_owned();
    store.push(objects);
    run_ok(mkcomposefs().arg(store).arg(src).arg(image), timeout);
}

/// `cfsctl --repo REPO ARGS…`, which must succeed within [`TOOL_TIMEOUT`].
pub fn in_repo(repo: &Path, args: &[&OsStr]) -> Output {
    run_ok(cfsctl().arg("--repo").arg(repo).args(args), TOOL_TIMEOUT)
}

/// An insecure repository at `repo` with digests of `algorithm` (`sha256`, `sha512`) holding
/// `src` as image `name` (no OCI transform); returns the image file (`images/<id>`).
pub fn repo_image(repo: &Path, algorithm: &str, src: &Path, name: &str) -> PathBuf {
    in_repo(
        repo,
        &[
            OsStr::new("init"),
            OsStr::new("--insecure"),
            OsStr::new("--algorithm"),
            OsStr::new(&format!("fsverity-{algorithm}-12")),
        ],
    );
    let out = in_repo(
        repo,
        &[
            OsStr::new("create-image"),
            OsStr::new("--no-propagate-usr-to-root"),
            src.as_os_str(),
            OsStr::new(name),
        ],
    );
    let id = String::from_utf8(out.stdout).expect("image id is text");
    let id = id.trim();
    let hex = id.rsplit(':').next().expect("image id");
    let image = repo.join("images").join(hex);
    assert!(image.exists(), "no image file {image:?} for id {id}");
    image
}

/// The raw OS error of `r`'s error, for comparisons with errno values; panics on success.
pub fn errno_of<T>(r: std::io::Result<T>, what: &str) -> i32 {
    match r {
        Ok(_) => panic!("{what}: succeeded, but an error was expected"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: error without errno: {e}")),
    }
}

/// `EIO`.
pub fn eio() -> i32 {
    rustix::io::Errno::IO.raw_os_error()
}

// ---------------------------------------------------------------------------------------------
// Request counters
// ---------------------------------------------------------------------------------------------

/// One counter table the server printed: `cfsctl: FUSE request counters (WHY):`, a `REQUEST
/// COUNT` header, one `NAME COUNT` line per opcode, `TOTAL` and `READ_BYTES`.
#[derive(Debug, Clone)]
pub struct CounterTable {
    /// `exit` or `SIGUSR1`.
    pub why: String,
    /// Count per name (opcodes, `TOTAL`, `READ_BYTES`).
    pub counts: BTreeMap<String, u64>,
}

impl CounterTable {
    /// The count of `name`; panics (showing the table) if the table has no such line.
    pub fn get(&self, name: &str) -> u64 {
        *self
            .counts
            .get(name)
            .unwrap_or_else(|| panic!("no {name} counter in {self:?}"))
    }
}

/// Every complete counter table in `log`, oldest first. A table is complete once its
/// `READ_BYTES` line (the last one) is there.
pub fn counter_tables(log: &str) -> Vec<CounterTable> {
    const START: &str = "cfsctl: FUSE request counters (";
    let mut tables = Vec::new();
    let mut current: Option<CounterTable> = None;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix(START) {
            current = Some(CounterTable {
                why: rest.trim_end_matches("):").to_owned(),
                counts: BTreeMap::new(),
            });
            continue;
        }
        let Some(table) = current.as_mut() else {
            continue;
        };
        let mut words = line.split_whitespace();
        let (Some(name), Some(count), None) = (words.next(), words.next(), words.next()) else {
            // Not a table line: the table was cut short by something else.
            current = None;
            continue;
        };
        if name == "REQUEST" && count == "COUNT" {
            continue;
        }
        let Ok(count) = count.parse::<u64>() else {
            current = None;
            continue;
        };
        table.counts.insert(name.to_owned(), count);
        if name == "READ_BYTES" {
            tables.extend(current.take());
        }
    }
    tables
}

// ---------------------------------------------------------------------------------------------
// The foreground server
// ---------------------------------------------------------------------------------------------

/// A `cfsctl` FUSE server process (`fuse-serve` or `mount --fuse --foreground`) with stdout on
/// /dev/null and stderr in a log file. Dropping it kills the process (SIGKILL) and detaches its
/// mount, so a failing test leaves neither behind.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Server {
    /// Start `cfsctl ARGS` and wait until `mnt` shows a new filesystem; panics (with the
    /// server's log) if it exits first or takes longer than [`READY_TIMEOUT`].
    pub fn start(args: &[&OsStr], mnt: &Path, log: &Path) -> Server {
        let before = dev_of(mnt);
        let mut server = Server::spawn(args, mnt, log);
        let start = Instant::now();
        loop {
            if let Some(status) = server.try_wait() {
                panic!(
                    "cfsctl {args:?} exited ({status}) before mounting:\n{}",
                    server.log_text()
                );
            }
            if fs::metadata(mnt).is_ok_and(|m| m.dev() != before) {
                return server;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "cfsctl {args:?} did not mount {mnt:?} within {READY_TIMEOUT:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(READY_POLL);
        }
    }

    /// Start `cfsctl ARGS` without waiting for anything.
    pub fn spawn(args: &[&OsStr], mnt: &Path, log: &Path) -> Server {
        let log_file = fs::File::create(log).unwrap_or_else(|e| panic!("create {log:?}: {e}"));
        let child = cfsctl()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start cfsctl");
        Server {
            child: Some(child),
            mnt: mnt.to_owned(),
            log: log.to_owned(),
        }
    }

    /// Run `cfsctl ARGS`, which must refuse to serve: returns its exit status and stderr once it
    /// exits; panics if it mounts something at `mnt` instead (the guard then kills it and
    /// detaches the mount) or runs longer than [`READY_TIMEOUT`].
    pub fn expect_refusal(args: &[&OsStr], mnt: &Path, log: &Path) -> (ExitStatus, String) {
        let before = dev_of(mnt);
        let mut server = Server::spawn(args, mnt, log);
        let start = Instant::now();
        loop {
            if let Some(status) = server.try_wait() {
                return (status, server.log_text());
            }
            assert!(
                dev_of(mnt) == before,
                "cfsctl {args:?} mounted {mnt:?} instead of refusing:\n{}",
                server.log_text()
            );
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "cfsctl {args:?} neither exited nor mounted within {READY_TIMEOUT:?}:\n{}",
                server.log_text()
            );
            std::thread::sleep(READY_POLL);
        }
    }

    /// `cfsctl fuse-serve IMAGE MNT --objects OBJECTS -o OPTS` with its log in `log`.
    pub fn fuse_serve(image: &Path, objects: &Path, opts: &str, mnt: &Path, log: &Path) -> Server {
        Server::start(
            &[
                OsStr::new("fuse-serve"),
                image.as_os_str(),
                mnt.as_os_str(),
                OsStr::new("--objects"),
                objects.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(opts),
            ],
            mnt,
            log,
        )
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// The exit status if the server has exited (then it is reaped and forgotten).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("try_wait on the server")?;
        self.child = None;
        Some(status)
    }

    /// Whether the server process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Everything the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's log once it has said it is serving (the mount shows up a moment before
    /// the server logs it); panics after [`READY_TIMEOUT`].
    pub fn serving_log(&self) -> String {
        let start = Instant::now();
        loop {
            let text = self.log_text();
            if text.contains("serving at ") {
                return text;
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "the server never said it is serving:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `sig` to the server.
    pub fn signal(&mut self, sig: Signal) {
        let pid = Pid::from_child(self.child.as_ref().expect("the server is running"));
        kill_process(pid, sig).unwrap_or_else(|e| panic!("signal {sig:?} to the server: {e}"));
    }

    /// Wait at most `timeout` for the server to exit by itself (after a signal or an unmount);
    /// panics with its log after that.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                self.child.is_some(),
                "wait_exit on a server that already exited"
            );
            assert!(
                start.elapsed() < timeout,
                "the server did not exit within {timeout:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait for a successful exit with the mount gone; returns the final counter
    /// table (printed at exit).
    pub fn stop(&mut self) -> CounterTable {
        self.signal(Signal::TERM);
        let status = self.wait_exit(EXIT_TIMEOUT);
        assert!(
            status.success(),
            "the server failed after SIGTERM ({status}):\n{}",
            self.log_text()
        );
        assert!(
            mount_at(&self.mnt).is_none(),
            "{:?} is still mounted after the server exited",
            self.mnt
        );
        let last = counter_tables(&self.log_text()).pop();
        let last = last.unwrap_or_else(|| panic!("no counters at exit:\n{}", self.log_text()));
        assert_eq!(last.why, "exit", "{}", self.log_text());
        last
    }

    /// Ask for the counters with SIGUSR1 and return the new table.
    pub fn counters_now(&mut self) -> CounterTable {
        let before = counter_tables(&self.log_text()).len();
        self.signal(Signal::USR1);
        let start = Instant::now();
        loop {
            let mut tables = counter_tables(&self.log_text());
            if tables.len() > before {
                let table = tables.remove(before);
                assert_eq!(table.why, "SIGUSR1");
                return table;
            }
            assert!(
                start.elapsed() < EXIT_TIMEOUT,
                "no counters after SIGUSR1:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
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

// ---------------------------------------------------------------------------------------------
// The background server of `cfsctl mount --fuse`
// ---------------------------------------------------------------------------------------------

/// The process ids whose command line holds `internal-fuse-daemon` and exactly `mnt` as an
/// argument: the background server `mount --fuse` started for this (unique, temporary) mount
/// point.
fn daemon_pids(mnt: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        // The server is a fork of `cfsctl … mount --fuse… NAME MNT` (same command line), or,
        // when that cannot fork, `cfsctl … internal-fuse-daemon … MNT`.
        let is_server = args.contains(&&b"internal-fuse-daemon"[..])
            || (args.contains(&&b"mount"[..]) && args.iter().any(|a| a.starts_with(b"--fuse")));
        let state = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        if is_server && !zombie && args.contains(&mnt.as_os_str().as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A mount made by `cfsctl mount --fuse` (which returns once the mount answers, leaving a
/// background server). Dropping it detaches the mount, which ends the server; a server that
/// does not end within a few seconds is killed by its pid.
#[derive(Debug)]
pub struct BackgroundMount {
    mnt: PathBuf,
    pid: Option<u32>,
}

impl BackgroundMount {
    /// `cfsctl --repo REPO mount --fuse[=OPTS] NAME MNT`; panics unless it succeeds and left a
    /// FUSE mount at `mnt` served by one background process.
    pub fn mount(repo: &Path, name: &str, fuse_arg: &str, mnt: &Path) -> BackgroundMount {
        let mnt = mnt.canonicalize().expect("canonical mount point");
        // The guard exists before the command runs: whatever happens next (a timeout
        // included), the mount and its server are cleaned up.
        let mut guard = BackgroundMount {
            mnt: mnt.clone(),
            pid: None,
        };
        let out = crate::common::run_with_timeout(
            cfsctl()
                .arg("--repo")
                .arg(repo)
                .arg("mount")
                .arg(fuse_arg)
                .arg(name)
                .arg(&mnt),
            READY_TIMEOUT * 2,
        )
        .expect("run cfsctl mount --fuse");
        assert!(
            out.status.success(),
            "cfsctl mount {fuse_arg} failed:\n{}",
            crate::common::describe_output(&out)
        );
        let info = mount_at(&mnt);
        assert_eq!(
            info.as_ref().map(|m| m.fstype.as_str()),
            Some("fuse"),
            "cfsctl mount {fuse_arg} returned before the mount was there: {info:?}"
        );
        let pids = daemon_pids(&mnt);
        assert_eq!(
            pids.len(),
            1,
            "expected one background server for {mnt:?}, found {pids:?}"
        );
        guard.pid = pids.first().copied();
        guard
    }

    /// The mount point (canonical).
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Unmount from outside (plain `umount`) and check that the background server notices and
    /// exits by itself.
    pub fn unmount(mut self) {
        rustix::mount::unmount(&self.mnt, UnmountFlags::empty())
            .unwrap_or_else(|e| panic!("umount {:?}: {e}", self.mnt));
        if let Some(pid) = self.pid {
            let start = Instant::now();
            while process_exists(pid) {
                assert!(
                    start.elapsed() < EXIT_TIMEOUT,
                    "the background server {pid} did not exit within {EXIT_TIMEOUT:?} of the \
                     unmount"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            self.pid = None;
        }
        assert!(
            mount_at(&self.mnt).is_none(),
            "{:?} still mounted",
            self.mnt
        );
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if mount_at(&self.mnt).is_some_and(|m| m.fstype == "fuse") {
            let _ = rustix::mount::unmount(&self.mnt, UnmountFlags::DETACH);
        }
        let mut pids = daemon_pids(&self.mnt);
        pids.extend(self.pid.filter(|p| !pids.contains(p)));
        let start = Instant::now();
        while pids.iter().any(|&p| process_exists(p)) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still there: kill them, by id, and only if they still are servers of this mount.
        let left = daemon_pids(&self.mnt);
        for pid in pids.into_iter().filter(|p| left.contains(p)) {
            if let Some(pid) = Pid::from_raw(pid as i32) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// The fuse module's `enable_uring` switch, turned on for as long as this lives (FUSE over
/// io_uring is off by default) and put back afterwards.
pub struct UringSwitch {
    path: PathBuf,
    before: String,
}

impl UringSwitch {
    /// `None`, said loudly (see [`skip`]), when this process cannot serve FUSE mounts (see
    /// [`fuse_available`]) or the kernel has no FUSE over io_uring at all (no switch); `what`
    /// names the test.
    pub fn on(what: &str) -> Option<UringSwitch> {
        if !fuse_available(what) {
            return None;
        }
        let path = PathBuf::from("/sys/module/fuse/parameters/enable_uring");
        let Ok(before) = fs::read_to_string(&path) else {
            skip(
                what,
                "this kernel has no /sys/module/fuse/parameters/enable_uring (Linux 6.14+ with \
                 CONFIG_FUSE_IO_URING)",
            );
            return None;
        };
        fs::write(&path, "Y").unwrap_or_else(|e| panic!("turning on {}: {e}", path.display()));
        Some(UringSwitch { path, before })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.before.trim());
    }
}
