//! Support code shared by cfsctl's integration tests: running tools with a time limit, building
//! source trees (owners, modes, xattrs, devices, nanosecond mtimes), kernel mounts that are always
//! undone, and a field-by-field comparison of two directory trees.

// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

pub mod source_tree;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};
use rustix::mount::{
    fsconfig_create, fsconfig_set_flag, fsconfig_set_string, fsmount, fsopen, move_mount, unmount,
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags,
};

/// Set this environment variable (CI does) to turn every "skipped: missing capability" into a
/// test failure.
pub const REQUIRE_ALL_ENV: &str = "CFS_TEST_REQUIRE_ALL";

/// Report loudly that `what` was not tested because of `reason`, or fail when
/// [`REQUIRE_ALL_ENV`] is set.
pub fn skip(what: &str, reason: &str) {
    if std::env::var_os(REQUIRE_ALL_ENV).is_some() {
        panic!("{what} cannot run: {reason} ({REQUIRE_ALL_ENV} is set, so this is an error)");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and a skip
    // must be seen.
    let _ = writeln!(
        io::stderr(),
        "\n{bar}\n!!! SKIPPED: {what}\n!!! missing: {reason}\n!!! (set {REQUIRE_ALL_ENV}=1 to make this a failure)\n{bar}\n",
        bar = "!".repeat(78)
    );
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// Run `cmd` with stdin closed and stdout/stderr captured; kill it if it runs longer than
/// `timeout`. Spawn errors (e.g. `NotFound` for a missing program) are returned as they are; a
/// timeout is an error of kind `TimedOut`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("child stdout is piped");
    let mut stderr = child.stderr.take().expect("child stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The reader threads are left alone: a grandchild may still hold the pipes.
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?} did not finish within {timeout:?} and was killed"),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_reader.join().expect("stdout reader thread panicked");
    let stderr = err_reader.join().expect("stderr reader thread panicked");
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Exit status, stdout and stderr of a finished command, for assertion messages.
pub fn describe_output(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Run `cmd` (time limit `timeout`) and panic with its output unless it exits with status 0.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let out = run_with_timeout(cmd, timeout).unwrap_or_else(|e| panic!("running {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed\n{}",
        describe_output(&out)
    );
    out
}

/// A child process that is killed (SIGKILL) and reaped when the guard is dropped, also during a
/// panic, so a failing test leaves no process behind. Give it files rather than pipes for any
/// output it may produce in quantity: nothing reads a pipe while the test waits.
#[derive(Debug)]
pub struct ChildGuard {
    child: std::process::Child,
    shown: String,
    status: Option<std::process::ExitStatus>,
}

impl ChildGuard {
    /// Spawn `cmd` (stdin closed); panics if it cannot be started.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let shown = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {shown}: {e}"));
        ChildGuard {
            child,
            shown,
            status: None,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has finished, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.shown));
        }
        self.status
    }

    /// Wait at most `timeout` for the child to finish; panics (and so kills it) after that.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {timeout:?}",
                self.shown
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL the child (if it still runs) and reap it. Returns its status: killed by
    /// SIGKILL, or how it ended if it finished first.
    pub fn kill(&mut self) -> std::process::ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        // `Child::kill` sends SIGKILL.
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("killing {}: {e}", self.shown));
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.shown));
        self.status = Some(status);
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Check `image` with Debian's `fsck.erofs` (erofs-utils). Skips loudly if the tool is missing;
/// panics if it rejects the image or prints anything.
pub fn fsck_erofs(image: &Path) {
    let mut cmd = Command::new("fsck.erofs");
    cmd.arg(image);
    match run_with_timeout(&mut cmd, Duration::from_secs(60)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => skip(
            &format!("fsck.erofs check of {}", image.display()),
            "the fsck.erofs program (Debian package erofs-utils) is not installed",
        ),
        Err(e) => panic!("running fsck.erofs {}: {e}", image.display()),
        Ok(out) => {
            assert!(
                out.status.success(),
                "fsck.erofs rejected {}\n{}",
                image.display(),
                describe_output(&out)
            );
            // erofs-utils 1.5 is silent on a valid image; newer versions print a summary on
            // stdout, so only stderr has to stay empty.
            assert!(
                out.stderr.is_empty(),
                "fsck.erofs complained about {}\n{}",
                image.display(),
                describe_output(&out)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building source trees
// ---------------------------------------------------------------------------------------------

/// `len` deterministic pseudo-random bytes (xorshift64*), different for every `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `lchown(path, uid, gid)`; do this before [`set_mode`] (chown clears setuid/setgid).
pub fn set_owner(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {path:?} to {uid}:{gid}: {e}"));
}

/// `chmod(path, mode)` with all 12 permission bits (not for symlinks).
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {path:?} to {mode:o}: {e}"));
}

/// `lsetxattr(path, name, value)` (does not follow a symlink).
pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(path, name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("lsetxattr {path:?} {name}: {e}"));
}

/// Set the mtime (seconds + nanoseconds) of `path` itself, not of a symlink's target. The atime
/// gets the same value. Call this last: creating entries changes a directory's mtime.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let ts = Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)
        .unwrap_or_else(|e| panic!("utimensat {path:?} to {sec}.{nsec:09}: {e}"));
}

/// `mknod(path, S_IFCHR|mode, makedev(major, minor))`.
pub fn make_char_device(path: &Path, mode: u32, major: u32, minor: u32) {
    let dev = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(
        CWD,
        path,
        FileType::CharacterDevice,
        Mode::from_raw_mode(mode),
        dev,
    )
    .unwrap_or_else(|e| panic!("mknod {path:?} c {major} {minor}: {e}"));
}

/// `mknod(path, S_IFBLK|mode, makedev(major, minor))`.
pub fn make_block_device(path: &Path, mode: u32, major: u32, minor: u32) {
    let dev = rustix::fs::makedev(major, minor);
    rustix::fs::mknodat(
        CWD,
        path,
        FileType::BlockDevice,
        Mode::from_raw_mode(mode),
        dev,
    )
    .unwrap_or_else(|e| panic!("mknod {path:?} b {major} {minor}: {e}"));
}

/// `mkfifo(path, mode)` (the umask applies; chmod afterwards for exact bits).
pub fn make_fifo(path: &Path, mode: u32) {
    rustix::fs::mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(mode), 0)
        .unwrap_or_else(|e| panic!("mkfifo {path:?}: {e}"));
}

/// Create a Unix socket node at `path` (the listener is closed again; the node stays).
pub fn make_socket(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path)
        .unwrap_or_else(|e| panic!("bind a unix socket at {path:?}: {e}"));
    drop(listener);
}

// ---------------------------------------------------------------------------------------------
// Kernel mounts
// ---------------------------------------------------------------------------------------------

/// Why this process is not root, or `None` if it is. `what_needs_it` completes "…needs root".
pub fn root_unavailable(what_needs_it: &str) -> Option<String> {
    let euid = rustix::process::geteuid();
    (!euid.is_root()).then(|| {
        format!(
            "root privileges: running as euid {}, but {what_needs_it} needs root",
            euid.as_raw()
        )
    })
}

/// Why this process cannot mount EROFS images and overlayfs, or `None` if it can.
pub fn kernel_mount_unavailable() -> Option<String> {
    if let Some(reason) = root_unavailable("mounting erofs/overlayfs (CAP_SYS_ADMIN)") {
        return Some(reason);
    }
    for fs in ["erofs", "overlay"] {
        match fsopen(fs, FsOpenFlags::FSOPEN_CLOEXEC) {
            Ok(_fd) => {}
            Err(rustix::io::Errno::NODEV) => {
                return Some(format!(
                    "kernel support for the {fs} filesystem (fsopen(\"{fs}\") gives ENODEV)"
                ))
            }
            Err(rustix::io::Errno::PERM) => {
                return Some(format!(
                    "CAP_SYS_ADMIN: fsopen(\"{fs}\") gives EPERM even though euid is 0"
                ))
            }
            Err(e) => panic!("fsopen(\"{fs}\") failed unexpectedly: {e}"),
        }
    }
    None
}

/// A mount that is lazily detached (`umount2(MNT_DETACH)`) when the guard is dropped, also
/// during a panic. Declare guards in mount order: Rust drops locals in reverse order, which
/// unmounts the upper layers first.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
}

impl MountGuard {
    /// Take charge of a mount something else (e.g. a tool under test) made at `target`.
    pub fn adopt(target: &Path) -> Self {
        Self {
            target: target.to_owned(),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Stop guarding: for a mount the test has already unmounted itself.
    pub fn disarm(self) {
        std::mem::forget(self);
    }

    /// Plain `umount MNT` (the way a user undoes a mount) must succeed and leave nothing
    /// mounted there.
    pub fn umount(self) {
        run_ok(
            Command::new("umount").arg(self.path()),
            Duration::from_secs(60),
        );
        assert!(
            mount_at(self.path()).is_none(),
            "umount left {} mounted",
            self.path().display()
        );
        self.disarm();
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = unmount(&self.target, UnmountFlags::DETACH) {
            eprintln!(
                "WARNING: cannot unmount {}: {e} — a mount may be left behind",
                self.target.display()
            );
        }
    }
}

/// The messages the kernel logged on a filesystem context (read from the fsopen fd).
fn fs_context_log(fs_fd: &OwnedFd) -> String {
    let mut messages = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = rustix::io::read(fs_fd, &mut buf[..]) {
        if n == 0 || messages.len() >= 32 {
            break;
        }
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    if messages.is_empty() {
        "(no kernel message)".to_owned()
    } else {
        messages.join("; ")
    }
}

/// One `fsconfig` call: a flag (`value` `None`) or a string parameter.
pub type FsParam<'a> = (&'a str, Option<&'a OsStr>);

/// Mount a new `fstype` filesystem read-only at `target` with the new mount API: `fsopen`,
/// one `fsconfig` per parameter, `FSCONFIG_CMD_CREATE`, `fsmount(MOUNT_ATTR_RDONLY)`,
/// `move_mount`. Errors carry the kernel's own messages.
pub fn mount_fs(fstype: &str, params: &[FsParam<'_>], target: &Path) -> Result<MountGuard, String> {
    let fs_fd = fsopen(fstype, FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| format!("fsopen(\"{fstype}\"): {e}"))?;
    for &(key, value) in params {
        let result = match value {
            None => fsconfig_set_flag(&fs_fd, key),
            Some(value) => fsconfig_set_string(&fs_fd, key, value),
        };
        result.map_err(|e| {
            format!(
                "{fstype}: fsconfig {key}={value:?}: {e}; kernel says: {}",
                fs_context_log(&fs_fd)
            )
        })?;
    }
    fsconfig_create(&fs_fd).map_err(|e| {
        format!(
            "{fstype}: fsconfig CMD_CREATE with {params:?}: {e}; kernel says: {}",
            fs_context_log(&fs_fd)
        )
    })?;
    let mnt_fd = fsmount(
        &fs_fd,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY,
    )
    .map_err(|e| {
        format!(
            "{fstype}: fsmount: {e}; kernel says: {}",
            fs_context_log(&fs_fd)
        )
    })?;
    move_mount(
        &mnt_fd,
        "",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| format!("{fstype}: move_mount to {target:?}: {e}"))?;
    Ok(MountGuard {
        target: target.to_owned(),
    })
}

/// Mount the EROFS image file `image` at `target`, read-only and file-backed (no loop device).
pub fn mount_erofs_file(image: &Path, target: &Path) -> Result<MountGuard, String> {
    mount_fs(
        "erofs",
        &[("source", Some(image.as_os_str())), ("ro", None)],
        target,
    )
}

/// Mount overlayfs read-only at `target` the way composefs does: `lowerdir+=<erofs>`,
/// `datadir+=<objects>`, `metacopy=on`, `redirect_dir=on`, `verity=off`.
pub fn mount_composefs_overlay(
    erofs: &Path,
    objects: &Path,
    target: &Path,
) -> Result<MountGuard, String> {
    mount_fs(
        "overlay",
        &[
            ("source", Some(OsStr::new("composefs"))),
            ("metacopy", Some(OsStr::new("on"))),
            ("redirect_dir", Some(OsStr::new("on"))),
            ("verity", Some(OsStr::new("off"))),
            ("lowerdir+", Some(erofs.as_os_str())),
            ("datadir+", Some(objects.as_os_str())),
            ("ro", None),
        ],
        target,
    )
}

/// `/sbin/mount.composefs` → a program of ours, while the guard lives (util-linux `mount -t
/// composefs` looks for its helper only in `/sbin`, `/sbin/fs.d` and `/sbin/fs`, never `PATH`).
/// Guards of one test binary are serialised: a second `install` waits for the first guard to be
/// dropped, so parallel tests never remove each other's helper.
#[derive(Debug)]
pub struct SbinHelper {
    link: PathBuf,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl SbinHelper {
    /// Where util-linux looks first.
    pub const PATH: &'static str = "/sbin/mount.composefs";

    /// Install the symlink to `target`; `Err(reason)` when something else already sits there.
    pub fn install(target: &Path) -> Result<SbinHelper, String> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let link = PathBuf::from(Self::PATH);
        match std::fs::read_link(&link) {
            Ok(existing) if existing == target => {}
            Ok(existing) => {
                return Err(format!(
                    "{} already exists (→ {}); not replacing it",
                    link.display(),
                    existing.display()
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(target, &link)
                    .map_err(|e| format!("cannot create {}: {e}", link.display()))?;
            }
            Err(e) => {
                return Err(format!(
                    "{} exists and is not our symlink: {e}",
                    link.display()
                ))
            }
        }
        Ok(SbinHelper {
            link,
            _serial: serial,
        })
    }
}

impl Drop for SbinHelper {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.link) {
            eprintln!("WARNING: cannot remove {}: {e}", self.link.display());
        }
    }
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
pub struct MountInfo {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
}

/// The current mount table of this process.
pub fn mountinfo() -> Vec<MountInfo> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            Some(MountInfo {
                mount_point: PathBuf::from(OsStr::from_bytes(&cfs_mount::mountinfo::unescape(
                    mount_point,
                ))),
                fstype: right.next()?.to_owned(),
                source: String::from_utf8_lossy(&cfs_mount::mountinfo::unescape(right.next()?))
                    .into_owned(),
                super_options: right.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// The mount-table entry whose mount point is exactly `path` (the last one if stacked).
pub fn mount_at(path: &Path) -> Option<MountInfo> {
    mountinfo()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

/// Panic if anything is mounted at or below `dir`.
pub fn assert_nothing_mounted_under(dir: &Path) {
    let left: Vec<MountInfo> = mountinfo()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(dir))
        .collect();
    assert!(
        left.is_empty(),
        "mounts were left behind under {}: {left:#?}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Tree snapshots and comparison
// ---------------------------------------------------------------------------------------------

/// The file type of a tree entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// Everything the comparison looks at for one entry (from `lstat`, `llistxattr`/`lgetxattr`
/// and `readlink`).
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: Kind,
    /// `st_mode & 0o7777` (permissions with setuid/setgid/sticky).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub symlink_target: Option<PathBuf>,
}

/// All xattrs of `path` itself (not following a symlink), names and values as raw bytes.
pub fn read_xattrs(path: &Path) -> io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut xattrs = BTreeMap::new();
    let len = rustix::fs::llistxattr_query(path)?;
    if len == 0 {
        return Ok(xattrs);
    }
    let mut names = vec![0u8; len];
    let len = rustix::fs::llistxattr(path, &mut names[..])?;
    for name in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_os = OsStr::from_bytes(name);
        let vlen = rustix::fs::lgetxattr_query(path, name_os)?;
        let mut value = vec![0u8; vlen];
        let vlen = if vlen == 0 {
            0
        } else {
            rustix::fs::lgetxattr(path, name_os, &mut value[..])?
        };
        value.truncate(vlen);
        xattrs.insert(name.to_vec(), value);
    }
    Ok(xattrs)
}

/// `lstat` + xattrs + symlink target of one entry.
pub fn read_node(path: &Path) -> io::Result<Node> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        return Err(io::Error::other(format!(
            "{path:?}: unknown file type (mode {:o})",
            md.mode()
        )));
    };
    let symlink_target = if kind == Kind::Symlink {
        Some(std::fs::read_link(path)?)
    } else {
        None
    };
    Ok(Node {
        kind,
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        size: md.size(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec(),
        nlink: md.nlink(),
        dev: md.dev(),
        ino: md.ino(),
        xattrs: read_xattrs(path)?,
        symlink_target,
    })
}

/// Every entry below `root` (and `root` itself, as the empty path), keyed by relative path.
/// Symlinks are not followed; mount points below `root` are crossed.
pub fn snapshot(root: &Path) -> io::Result<BTreeMap<PathBuf, Node>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let abs = root.join(&rel);
        let node =
            read_node(&abs).map_err(|e| io::Error::new(e.kind(), format!("{abs:?}: {e}")))?;
        if node.kind == Kind::Dir {
            for entry in std::fs::read_dir(&abs)
                .map_err(|e| io::Error::new(e.kind(), format!("readdir {abs:?}: {e}")))?
            {
                pending.push(rel.join(entry?.file_name()));
            }
        }
        out.insert(rel, node);
    }
    Ok(out)
}

/// What [`tree_differences`] compares besides names, types, permissions, owners, rdev, sizes of
/// non-directories, mtimes, xattrs and symlink targets (always compared).
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Compare the link count of directories (non-directories always are).
    pub dir_nlink: bool,
    /// Compare regular file contents byte for byte.
    pub contents: bool,
    /// Hardlinks: names sharing an inode in the expected tree share one in the actual tree,
    /// and names on distinct inodes stay distinct.
    pub inode_identity: bool,
    /// Compare mtimes.
    pub mtimes: bool,
    /// Compare only the xattrs with these names (`None`: all of them).
    pub only_xattrs: Option<Vec<Vec<u8>>>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            dir_nlink: true,
            contents: true,
            inode_identity: true,
            mtimes: true,
            only_xattrs: None,
        }
    }
}

impl CompareOptions {
    /// The xattrs of `node` this comparison looks at.
    fn xattrs_of(&self, node: &Node) -> BTreeMap<Vec<u8>, Vec<u8>> {
        match &self.only_xattrs {
            None => node.xattrs.clone(),
            Some(names) => node
                .xattrs
                .iter()
                .filter(|(n, _)| names.contains(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        }
    }
}

fn show_path(rel: &Path) -> String {
    format!("{:?}", Path::new("/").join(rel))
}

/// A byte string for messages: escaped, long values cut after 64 bytes.
fn show_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    if bytes.len() <= MAX {
        format!("\"{}\"", bytes.escape_ascii())
    } else {
        format!(
            "\"{}\"… ({} bytes)",
            bytes[..MAX].escape_ascii(),
            bytes.len()
        )
    }
}

/// One line per xattr that is missing, unexpected or has another value.
fn xattr_differences(
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
    got: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, value) in want {
        match got.get(name) {
            None => out.push(format!(
                "xattr {} missing (expected value {})",
                name.escape_ascii(),
                show_bytes(value)
            )),
            Some(v) if v != value => out.push(format!(
                "xattr {}: expected {}, found {}",
                name.escape_ascii(),
                show_bytes(value),
                show_bytes(v)
            )),
            Some(_) => {}
        }
    }
    for (name, value) in got.iter().filter(|(n, _)| !want.contains_key(*n)) {
        out.push(format!(
            "unexpected xattr {}={}",
            name.escape_ascii(),
            show_bytes(value)
        ));
    }
    out
}

/// `None` if the files hold the same bytes, else what differs.
pub fn content_difference(expected: &Path, actual: &Path) -> Option<String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("cannot open {p:?}: {e}"));
    let (mut a, mut b) = match (open(expected), open(actual)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Some(e),
    };
    let mut buf_a = vec![0u8; 1 << 16];
    let mut buf_b = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        let na = match cfs_repo::read_full(&mut a, &mut buf_a) {
            Ok(n) => n,
            Err(e) => return Some(format!("read error in {expected:?} at {offset}: {e}")),
        };
        let nb = match cfs_repo::read_full(&mut b, &mut buf_b) {
            Ok(n) => n,
            Err(e) => return Some(format!("read error in {actual:?} at {offset}: {e}")),
        };
        let common = na.min(nb);
        if let Some(i) = (0..common).find(|&i| buf_a[i] != buf_b[i]) {
            return Some(format!(
                "content differs at byte {}: expected {:#04x}, found {:#04x}",
                offset + i as u64,
                buf_a[i],
                buf_b[i]
            ));
        }
        if na != nb {
            return Some(format!(
                "content length differs: one side ends at byte {}",
                offset + common as u64
            ));
        }
        if na == 0 {
            return None;
        }
        offset += na as u64;
    }
}

/// Compare the tree at `actual_root` against the one at `expected_root`; returns one line per
/// difference, naming the path and the field.
pub fn tree_differences(
    expected_root: &Path,
    actual_root: &Path,
    opts: &CompareOptions,
) -> Vec<String> {
    let expected = snapshot(expected_root)
        .unwrap_or_else(|e| panic!("reading expected tree {expected_root:?}: {e}"));
    let actual = snapshot(actual_root)
        .unwrap_or_else(|e| panic!("reading actual tree {actual_root:?}: {e}"));
    snapshot_differences(expected_root, &expected, actual_root, &actual, opts)
}

/// [`tree_differences`] on snapshots already taken (which the caller may have adjusted); the
/// roots are where regular file contents are read from.
pub fn snapshot_differences(
    expected_root: &Path,
    expected: &BTreeMap<PathBuf, Node>,
    actual_root: &Path,
    actual: &BTreeMap<PathBuf, Node>,
    opts: &CompareOptions,
) -> Vec<String> {
    let mut diffs = Vec::new();

    for rel in expected.keys().filter(|k| !actual.contains_key(*k)) {
        diffs.push(format!("{}: missing", show_path(rel)));
    }
    for rel in actual.keys().filter(|k| !expected.contains_key(*k)) {
        let node = &actual[rel];
        diffs.push(format!(
            "{}: unexpected entry ({:?}, mode {:o}, rdev {})",
            show_path(rel),
            node.kind,
            node.perm,
            node.rdev
        ));
    }

    for (rel, want) in expected {
        let Some(got) = actual.get(rel) else { continue };
        let p = show_path(rel);
        if want.kind != got.kind {
            diffs.push(format!(
                "{p}: file type: expected {:?}, found {:?}",
                want.kind, got.kind
            ));
            continue;
        }
        let mut field = |name: &str, w: String, g: String| {
            if w != g {
                diffs.push(format!("{p}: {name}: expected {w}, found {g}"));
            }
        };
        field(
            "permissions",
            format!("{:o}", want.perm),
            format!("{:o}", got.perm),
        );
        field("uid", want.uid.to_string(), got.uid.to_string());
        field("gid", want.gid.to_string(), got.gid.to_string());
        if matches!(want.kind, Kind::CharDevice | Kind::BlockDevice) {
            let show = |d: u64| format!("{d} ({}:{})", rustix::fs::major(d), rustix::fs::minor(d));
            field("rdev", show(want.rdev), show(got.rdev));
        }
        if want.kind != Kind::Dir {
            field("size", want.size.to_string(), got.size.to_string());
        }
        if opts.mtimes {
            field(
                "mtime",
                format!("{}.{:09}", want.mtime, want.mtime_nsec),
                format!("{}.{:09}", got.mtime, got.mtime_nsec),
            );
        }
        if want.kind != Kind::Dir || opts.dir_nlink {
            field("nlink", want.nlink.to_string(), got.nlink.to_string());
        }
        field(
            "symlink target",
            format!("{:?}", want.symlink_target),
            format!("{:?}", got.symlink_target),
        );
        for d in xattr_differences(&opts.xattrs_of(want), &opts.xattrs_of(got)) {
            diffs.push(format!("{p}: {d}"));
        }
        if opts.contents && want.kind == Kind::File {
            if let Some(d) = content_difference(&expected_root.join(rel), &actual_root.join(rel)) {
                diffs.push(format!("{p}: {d}"));
            }
        }
    }

    if opts.inode_identity {
        // Group the expected non-directories by inode; each group must map to exactly one
        // actual inode, and different groups to different actual inodes.
        let mut groups: BTreeMap<(u64, u64), Vec<&PathBuf>> = BTreeMap::new();
        for (rel, node) in expected {
            if node.kind != Kind::Dir && actual.contains_key(rel) {
                groups.entry((node.dev, node.ino)).or_default().push(rel);
            }
        }
        let mut owner: HashMap<(u64, u64), &PathBuf> = HashMap::new();
        for paths in groups.values() {
            let first = paths[0];
            let got_inode = |rel: &PathBuf| (actual[rel].dev, actual[rel].ino);
            let inode = got_inode(first);
            for other in &paths[1..] {
                if got_inode(other) != inode {
                    diffs.push(format!(
                        "{}: hardlink to {} is broken: (st_dev, st_ino) {:?} vs {:?}",
                        show_path(other),
                        show_path(first),
                        got_inode(other),
                        inode
                    ));
                }
            }
            if let Some(prev) = owner.insert(inode, first) {
                diffs.push(format!(
                    "{}: shares (st_dev, st_ino) {inode:?} with {}, but they are distinct inodes \
                     in the source",
                    show_path(first),
                    show_path(prev)
                ));
            }
        }
    }
    diffs
}

/// Panic, listing every difference, unless the tree at `actual_root` equals the one at
/// `expected_root`.
pub fn assert_trees_equal(expected_root: &Path, actual_root: &Path, opts: &CompareOptions) {
    let diffs = tree_differences(expected_root, actual_root, opts);
    if !diffs.is_empty() {
        const SHOWN: usize = 100;
        let mut msg = format!(
            "{} differences between expected tree {} and actual tree {}:\n  ",
            diffs.len(),
            expected_root.display(),
            actual_root.display()
        );
        msg.push_str(&diffs[..diffs.len().min(SHOWN)].join("\n  "));
        if diffs.len() > SHOWN {
            msg.push_str(&format!("\n  … and {} more", diffs.len() - SHOWN));
        }
        panic!("{msg}");
    }
}

/// `'…'` for a POSIX shell.
fn shell_quote(arg: &Path) -> String {
    format!("'{}'", arg.display().to_string().replace('\'', r"'\''"))
}

/// Run `program` with `args` under `script(1)`, which gives it a terminal; returns what the
/// terminal showed (stdout and stderr together). Fails the test if it fails.
pub fn on_a_terminal(program: &Path, args: &[&Path]) -> String {
    let mut line = shell_quote(program);
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    let out = run_ok(
        Command::new("script").args(["-qec", &line, "/dev/null"]),
        Duration::from_secs(120),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
