//! `cfsctl fuse-serve` and `cfsctl mount --fuse`: the FUSE server of `cfs-fuse` from the command
//! line. Serving runs in the foreground until SIGINT/SIGTERM (clean unmount) or an unmount from
//! outside; the request counters go to stderr at exit and on SIGUSR1. `mount --fuse` without
//! `--foreground` re-executes `cfsctl` as a detached background server (a hidden subcommand)
//! and returns once the mount answers.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cfs_fuse::{FuseOptions, FuseSession, ObjectsDir};
use cfs_repo::repo::Repository;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals;

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
    let signals = Signals::new([SIGINT, SIGTERM, SIGUSR1]).context("installing signal handlers")?;
    let repo = open_repo()?;
    let session = serve_repo_image(&repo, &args.name, &args.mountpoint, &args.options)?;
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .context("opening /dev/null")?;
    rustix::stdio::dup2_stderr(&null).context("detaching stderr")?;
    run_foreground(session, signals)?;
    Ok(ExitCode::SUCCESS)
}

fn serve_repo_image(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    opts: &FuseOptions,
) -> Result<FuseSession> {
    let (image, _id) = repo
        .open_image(name)
        .with_context(|| format!("opening image {name}"))?;
    let mut opts = opts.clone();
    opts.trees.get_or_insert_with(|| repo.verity_tree_dir());
    cfs_fuse::serve(
        image,
        ObjectsDir::Path(repo.path().join("objects")),
        mountpoint,
        &opts,
    )
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

/// Start `cfsctl --repo PATH internal-fuse-daemon …` detached (own process group, stdin and
/// stdout on /dev/null, stderr a pipe to us) and wait until the mount answers: the child
/// closes its stderr once serving, or exits with an error we pass on.
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
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        let _ = tx.send(text);
    });
    let start = Instant::now();
    let text = loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(text) => break text,
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < READY_TIMEOUT => continue,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the background FUSE server did not get ready within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
        }
    };
    // EOF: either the child is serving (and detached its stderr) or it exited.
    let mounted = rustix::fs::stat(mountpoint).is_ok_and(|st| st.st_dev != before);
    if mounted {
        if let Ok(Some(status)) = child.try_wait() {
            bail!(
                "the background FUSE server exited ({status}): {}",
                String::from_utf8_lossy(&text).trim()
            );
        }
        return Ok(());
    }
    let status = child
        .wait()
        .context("waiting for the background FUSE server")?;
    let msg = String::from_utf8_lossy(&text);
    let msg = msg.trim();
    if msg.is_empty() {
        bail!("the background FUSE server exited ({status}) without mounting");
    }
    // The child already says "cfsctl: …"; pass its message on without repeating the prefix.
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
