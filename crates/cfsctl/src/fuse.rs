//! `cfsctl fuse-serve` and `cfsctl mount --fuse`: the FUSE server of `cfs-fuse` from the command
//! line. Serving runs in the foreground until SIGINT/SIGTERM (clean unmount) or an unmount from
//! outside; the request counters go to stderr at exit and on SIGUSR1. `mount --fuse` without
//! `--foreground` forks a detached background server (or, if the process already runs other
//! threads, re-executes `cfsctl` as one through a hidden subcommand) and returns once the mount
//! answers.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cfs_fuse::{FuseOptions, FuseSession, ObjectsDir};
use cfs_repo::repo::Repository;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

use crate::sys::Forked;

/// How long `mount --fuse` waits for the background server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `cfsctl fuse-serve`.
#[derive(Args, Debug)]
pub struct FuseServeArgs {
    /// The composefs EROFS image file.
    image: PathBuf,
    /// Where to mount it.
    mountpoint: PathBuf,
    /// Directory of objects (`XX/<rest-of-digest>`), e.g. a digest store [default: the selected
    /// repository's objects/].
    #[arg(long, value_name = "DIR")]
    objects: Option<PathBuf>,
    /// Comma-separated options: passthrough, uring, threads=N, verify=on|off, allow_other.
    #[arg(
        short = 'o',
        long = "options",
        visible_alias = "fuse-opts",
        value_name = "OPTS",
        default_value = "",
        value_parser = parse_options
    )]
    options: FuseOptions,
}

/// The hidden subcommand `mount --fuse` runs in the background.
#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// Image id or name.
    name: String,
    /// Where.
    mountpoint: PathBuf,
    /// The FUSE options.
    #[arg(long, default_value = "", value_parser = parse_options)]
    options: FuseOptions,
}

/// clap value parser for FUSE option strings; the error lists the valid options.
pub fn parse_options(s: &str) -> Result<FuseOptions, String> {
    s.parse::<FuseOptions>().map_err(|e| e.to_string())
}

/// `cfsctl fuse-serve IMAGE MOUNTPOINT`.
pub fn fuse_serve(
    args: &FuseServeArgs,
    open_repo: impl FnOnce() -> Result<Repository>,
) -> Result<ExitCode> {
    init_logger();
    let signals = Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("installing signal handlers")?;
    // Hold the repository (shared lock) while serving from it.
    let mut options = args.options.clone();
    let (_repo, objects) = match &args.objects {
        Some(dir) => (None, dir.clone()),
        None => {
            let repo = open_repo()?;
            let objects = repo.path().join("objects");
            options.trees.get_or_insert_with(|| repo.verity_tree_dir());
            (Some(repo), objects)
        }
    };
    let image = File::open(&args.image)
        .with_context(|| format!("opening image {}", args.image.display()))?;
    let session = cfs_fuse::serve(image, ObjectsDir::Path(objects), &args.mountpoint, &options)
        .with_context(|| {
            format!(
                "serving {} at {}",
                args.image.display(),
                args.mountpoint.display()
            )
        })?;
    run_foreground(session, signals)?;
    Ok(ExitCode::SUCCESS)
}

/// `cfsctl mount --fuse[=OPTS] NAME MOUNTPOINT [--foreground]`.
pub fn mount_fuse(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
    foreground: bool,
) -> Result<()> {
    if foreground {
        init_logger();
        let signals =
            Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("installing signal handlers")?;
        let session = serve_repo_image(repo, name, mountpoint, opts)?;
        return run_foreground(session, signals);
    }
    spawn_background(repo, name, mountpoint, opts)
}

/// The hidden background server of `mount --fuse`: serve, then (once the mount answers) drop
/// stderr so that the waiting parent sees EOF, and serve on.
pub fn daemon(
    args: &DaemonArgs,
    open_repo: impl FnOnce() -> Result<Repository>,
) -> Result<ExitCode> {
    init_logger();
    let repo = open_repo()?;
    serve_detached(&repo, &args.name, &args.mountpoint, &args.options)?;
    Ok(ExitCode::SUCCESS)
}

/// The re-executed daemon's work: its stderr goes to the waiting parent until the mount
/// answers, then to /dev/null.
fn serve_detached(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<()> {
    let signals = Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("installing signal handlers")?;
    let session = serve_repo_image(repo, name, mountpoint, opts)?;
    detach_stderr()?;
    run_foreground(session, signals)
}

/// Point stderr at /dev/null: a waiting parent reading our stderr sees EOF.
fn detach_stderr() -> Result<()> {
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    rustix::stdio::dup2_stderr(&null).context("detaching stderr")?;
    Ok(())
}

/// Mount the repository's image `name` (not served yet).
fn mount_repo_image(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<cfs_fuse::MountedFs> {
    let (image, _id) = repo
        .open_image(name)
        .with_context(|| format!("opening image {name}"))?;
    let mut opts = opts.clone();
    opts.trees.get_or_insert_with(|| repo.verity_tree_dir());
    cfs_fuse::mount(
        image,
        ObjectsDir::Path(repo.path().join("objects")),
        mountpoint,
        &opts,
    )
    .with_context(|| format!("mounting image {name} at {}", mountpoint.display()))
}

fn serve_repo_image(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<FuseSession> {
    mount_repo_image(repo, name, mountpoint, opts)?
        .serve()
        .with_context(|| format!("serving image {name} at {}", mountpoint.display()))
}

/// Serve until SIGINT/SIGTERM (then unmount) or until unmounted from outside; print the
/// counters on SIGUSR1 and at the end.
fn run_foreground(session: FuseSession, mut signals: Signals) -> Result<()> {
    let counters = session.counters();
    let print_counters = |why: &str| {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "cfsctl: FUSE request counters ({why}):\n{counters}");
    };
    loop {
        for signal in signals.pending() {
            if signal == SIGUSR1 {
                print_counters("SIGUSR1");
                continue;
            }
            log::info!(
                "signal {signal}: unmounting {}",
                session.mountpoint().display()
            );
            let result = session.unmount();
            print_counters("exit");
            return match result {
                // The mount is gone; our exit closes /dev/fuse, which ends the connection.
                Err(e @ cfs_fuse::FuseError::Busy { .. }) => {
                    log::warn!("{e}; exiting ends it");
                    Ok(())
                }
                other => other.context("unmounting"),
            };
        }
        if session.is_finished() {
            log::info!("{} was unmounted", session.mountpoint().display());
            let result = session.wait();
            print_counters("exit");
            return result.context("FUSE session");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start the background server detached (own session, stdin and stdout on /dev/null, stderr
/// a pipe to us) and wait until the mount answers: the server closes its stderr once serving,
/// or exits with an error we pass on. While this process runs a single thread, it mounts
/// itself and forks the server, so the mount is in place before any second process starts;
/// otherwise the server is `cfsctl --repo PATH internal-fuse-daemon …`.
fn spawn_background(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<()> {
    let mountpoint = mountpoint
        .canonicalize()
        .with_context(|| format!("mount point {}", mountpoint.display()))?;
    let mountpoint = mountpoint.as_path();
    let before = rustix::fs::stat(mountpoint)
        .with_context(|| format!("mount point {}", mountpoint.display()))?
        .st_dev;
    if !crate::sys::single_threaded() {
        return spawn_reexec(repo, name, mountpoint, before, opts);
    }
    let mounted = mount_repo_image(repo, name, mountpoint, opts)?;
    let (from_server, to_parent) =
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("creating a pipe")?;
    let mut server = match crate::sys::fork_if_single_threaded() {
        Ok(Some(Forked::Child)) => {
            drop(from_server);
            std::process::exit(forked_server(mounted, to_parent))
        }
        Ok(Some(Forked::Parent(pid))) => {
            drop(to_parent);
            mounted.release();
            Server::Forked(pid)
        }
        // Dropping `mounted` unmounts it.
        Ok(None) => bail!("cannot start the background FUSE server: another thread started"),
        Err(e) => return Err(e).context("starting the background FUSE server"),
    };
    let text = read_until_ready(File::from(from_server), &mut server)?;
    finish_waiting(server, mountpoint, before, &text)
}

/// The forked server: detach from the caller's session and terminal, answer the mount, tell
/// the parent (by closing its end of the pipe) and serve on. Returns the exit code.
fn forked_server(mounted: cfs_fuse::MountedFs, to_parent: std::os::fd::OwnedFd) -> i32 {
    let _ = rustix::process::setsid();
    // Everything is open and resolved; do not keep the caller's directory busy.
    let _ = rustix::process::chdir("/");
    let detached = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .and_then(|null| {
            rustix::stdio::dup2_stdin(&null)?;
            rustix::stdio::dup2_stdout(&null)?;
            rustix::stdio::dup2_stderr(&to_parent)?;
            Ok(())
        });
    drop(to_parent);
    if detached.is_err() {
        return 1;
    }
    init_logger();
    let served = Signals::new([SIGINT, SIGTERM, SIGUSR1])
        .context("installing signal handlers")
        .and_then(|signals| {
            let session = mounted.serve().context("serving")?;
            detach_stderr()?;
            run_foreground(session, signals)
        });
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cfsctl: {}", crate::error_chain(&e));
            1
        }
    }
}

/// The background server being waited for.
enum Server {
    Forked(rustix::process::Pid),
    Spawned(std::process::Child),
}

impl Server {
    fn kill(&mut self) {
        match self {
            Server::Forked(pid) => {
                let _ = rustix::process::kill_process(*pid, rustix::process::Signal::KILL);
                let _ = rustix::process::waitpid(Some(*pid), rustix::process::WaitOptions::empty());
            }
            Server::Spawned(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// The exit status if the server has exited (without waiting when `block` is false).
    fn exit_status(&mut self, block: bool) -> Result<Option<String>> {
        match self {
            Server::Forked(pid) => {
                let options = if block {
                    rustix::process::WaitOptions::empty()
                } else {
                    rustix::process::WaitOptions::NOHANG
                };
                let status = rustix::process::waitpid(Some(*pid), options)
                    .context("waiting for the background FUSE server")?;
                Ok(status.map(|(_, status)| match status.exit_status() {
                    Some(code) => format!("exit status: {code}"),
                    None => format!("{status:?}"),
                }))
            }
            Server::Spawned(child) => {
                let status = if block {
                    Some(
                        child
                            .wait()
                            .context("waiting for the background FUSE server")?,
                    )
                } else {
                    child
                        .try_wait()
                        .context("waiting for the background FUSE server")?
                };
                Ok(status.map(|s| s.to_string()))
            }
        }
    }
}

/// `cfsctl --repo PATH internal-fuse-daemon …`, for when this process cannot fork soundly.
fn spawn_reexec(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    before: u64,
    opts: &FuseOptions,
) -> Result<()> {
    let repo_path = repo
        .path()
        .canonicalize()
        .with_context(|| format!("repository {}", repo.path().display()))?;
    let exe = std::env::current_exe().context("locating the cfsctl executable")?;
    let mut args: Vec<OsString> = vec!["--repo".into(), repo_path.into_os_string()];
    args.push("internal-fuse-daemon".into());
    args.push(format!("--options={opts}").into());
    args.push("--".into());
    args.push(name.into());
    args.push(mountpoint.as_os_str().to_owned());
    let mut child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .context("starting the background FUSE server")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut server = Server::Spawned(child);
    let text = read_until_ready(File::from(std::os::fd::OwnedFd::from(stderr)), &mut server)?;
    finish_waiting(server, mountpoint, before, &text)
}

/// Everything the server writes to `from_server` until it closes it (it is serving, or it
/// exited), within [`READY_TIMEOUT`]. Read on this thread with `poll`: starting a reader
/// thread would compete with the server for the CPU just when it is mounting.
fn read_until_ready(mut from_server: File, server: &mut Server) -> Result<Vec<u8>> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            server.kill();
            bail!(
                "the background FUSE server did not get ready within {} s",
                READY_TIMEOUT.as_secs()
            );
        }
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&from_server, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(e).context("waiting for the background FUSE server"),
        }
        match from_server.read(&mut chunk) {
            Ok(0) => return Ok(text),
            Ok(n) => text.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("reading from the background FUSE server"),
        }
    }
}

/// After the server closed its end: Ok if the mount is there and the server runs, else the
/// server's own message.
fn finish_waiting(mut server: Server, mountpoint: &Path, before: u64, text: &[u8]) -> Result<()> {
    let mounted = rustix::fs::stat(mountpoint).is_ok_and(|st| st.st_dev != before);
    if mounted {
        if let Some(status) = server.exit_status(false)? {
            bail!(
                "the background FUSE server exited ({status}): {}",
                String::from_utf8_lossy(text).trim()
            );
        }
        return Ok(());
    }
    let status = match server.exit_status(true)? {
        Some(status) => status,
        None => {
            server.kill();
            "killed".to_owned()
        }
    };
    let msg = String::from_utf8_lossy(text);
    let msg = msg.trim();
    if msg.is_empty() {
        bail!("the background FUSE server exited ({status}) without mounting");
    }
    // The server already says "cfsctl: …"; pass its message on without repeating the prefix.
    bail!("{}", msg.strip_prefix("cfsctl: ").unwrap_or(msg));
}

/// A minimal stderr logger: `cfsctl: message` (warnings and errors tagged), level from
/// `CFS_LOG` (`error`, `warn`, `info` (default), `debug`, `trace`). fuser's own chatter is
/// limited to warnings.
struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let level = if metadata.target().starts_with("fuser") {
            self.level.min(log::LevelFilter::Warn)
        } else {
            self.level
        };
        metadata.level() <= level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let tag = match record.level() {
            log::Level::Error => "error: ",
            log::Level::Warn => "warning: ",
            _ => "",
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "cfsctl: {tag}{}", record.args());
    }

    fn flush(&self) {}
}

fn init_logger() {
    let level = std::env::var("CFS_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(log::LevelFilter::Info);
    let logger = Box::new(StderrLogger { level });
    if log::set_boxed_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
