//! Crash safety of `cfsctl create-image`: killed with SIGKILL at 20 pseudo-random moments
//! (within the measured runtime of an uninterrupted run, on a generated tree of thousands of
//! files), the repository always passes `fsck` — leftovers of the killed writer are garbage for
//! GC, never corruption — no name dangles or leads to anything but the one image this tree
//! gives, GC cleans up after it, and a rerun completes with the expected id.
//!
//! Between kills the repository is left as it is (the next writer finds part of its objects),
//! or reset by dropping the image's name and collecting (the next writer starts from nothing),
//! so the kills land in every phase: storing new objects, deduplicating, writing the image,
//! syncing, naming.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::source_tree::generate_bulk_tree;
use common::{describe_output, run_ok, run_with_timeout, ChildGuard};

const CFSCTL: &str = env!("CARGO_BIN_EXE_cfsctl");
const TIMEOUT: Duration = Duration::from_secs(120);
/// Files in the generated tree (mixed sizes, about 40 MB): a debug-build `create-image` of it
/// takes about a second on two idle cores.
const FILES: usize = 5000;
/// How many runs are killed.
const KILLS: usize = 20;
const SIGKILL: i32 = 9;

/// xorshift64*: the kill moments are pseudo-random but the same on every run of the test.
struct Rng(u64);

impl Rng {
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn cfsctl(repo: &Path) -> Command {
    let mut cmd = Command::new(CFSCTL);
    cmd.arg("--repo").arg(repo);
    cmd
}

fn create_image_cmd(repo: &Path, src: &Path) -> Command {
    let mut cmd = cfsctl(repo);
    cmd.args(["create-image", "--no-propagate-usr-to-root"])
        .arg(src)
        .arg("t");
    cmd
}

/// The hex id in create-image's `sha512:<hex>` line.
fn parse_id(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout);
    let hex = text
        .trim_end()
        .strip_prefix("sha512:")
        .unwrap_or_else(|| panic!("create-image printed {text:?}"));
    assert_eq!(hex.len(), 128, "{text:?}");
    hex.to_owned()
}

/// Every path below `dir` (recursively, directories included), relative to it.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let abs = dir.join(&rel);
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("readdir {abs:?}: {e}"),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("readdir {abs:?}: {e}"));
            let child = rel.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(child.clone());
            }
            out.push(child);
        }
    }
    out
}

fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp-"))
}

/// The state a killed writer may leave: `fsck` clean, every name below `images/` resolving,
/// and nothing named but the image `expected` (the only one this test ever writes).
fn check_consistent(repo: &Path, expected: &str, when: &str) {
    let out = run_with_timeout(cfsctl(repo).arg("fsck"), TIMEOUT)
        .unwrap_or_else(|e| panic!("{when}: running fsck: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with(": 0 problems"),
        "{when}: fsck reports problems (a killed writer must leave only garbage)\n{}",
        describe_output(&out)
    );
    let images = repo.join("images");
    for rel in walk(&images) {
        let abs = images.join(&rel);
        if rel == Path::new("refs") || is_temporary(&rel) {
            continue;
        }
        let md = fs::symlink_metadata(&abs).unwrap_or_else(|e| panic!("{when}: {abs:?}: {e}"));
        if md.is_dir() {
            continue;
        }
        assert!(md.file_type().is_symlink(), "{when}: {abs:?} is not a link");
        fs::metadata(&abs).unwrap_or_else(|e| panic!("{when}: {abs:?} dangles: {e}"));
        let target = fs::read_link(&abs).expect("readlink");
        if rel.starts_with("refs") {
            assert_eq!(rel, Path::new("refs/t"), "{when}: unexpected ref");
            assert_eq!(target, Path::new(&format!("../{expected}")), "{when}");
        } else {
            assert_eq!(rel, Path::new(expected), "{when}: unexpected image");
            let object = format!("../objects/{}/{}", &expected[..2], &expected[2..]);
            assert_eq!(target, Path::new(&object), "{when}");
        }
    }
}

/// Every file below `objects/`, relative to it.
fn object_files(repo: &Path) -> BTreeSet<PathBuf> {
    let objects = repo.join("objects");
    walk(&objects)
        .into_iter()
        .filter(|p| !objects.join(p).is_dir())
        .collect()
}

/// `cfsctl gc`; afterwards no temporary file is left anywhere in the repository.
fn collect(repo: &Path, when: &str) {
    run_ok(cfsctl(repo).arg("gc"), TIMEOUT);
    let temps: Vec<PathBuf> = walk(repo).into_iter().filter(|p| is_temporary(p)).collect();
    assert!(temps.is_empty(), "{when}: gc left temporaries {temps:?}");
}

#[test]
fn create_image_killed_at_random_moments_leaves_a_consistent_repository() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("cfs-repo-crash-")
        .tempdir()
        .expect("create a temporary directory");
    let src = tmp.path().join("src");
    let bytes = generate_bulk_tree(&src, FILES, 3);

    // An uninterrupted run, timed: the id to expect and the window to kill in.
    let scratch = tmp.path().join("scratch");
    run_ok(cfsctl(&scratch).args(["init", "--insecure"]), TIMEOUT);
    let t0 = Instant::now();
    let out = run_ok(&mut create_image_cmd(&scratch, &src), TIMEOUT);
    let runtime = t0.elapsed();
    let expected = parse_id(&out.stdout);
    fs::remove_dir_all(&scratch).expect("remove the scratch repository");

    let repo = tmp.path().join("repo");
    run_ok(cfsctl(&repo).args(["init", "--insecure"]), TIMEOUT);
    let logs = tmp.path().join("logs");
    fs::create_dir(&logs).expect("mkdir logs");
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut kills, mut completed, mut attempts) = (0, 0, 0);
    let mut kill_moments = Vec::new();
    // Kills land uniformly within the first 2–98 % of this window.
    let mut window = runtime;
    while kills < KILLS {
        attempts += 1;
        assert!(
            attempts <= 3 * KILLS,
            "only {kills} of {attempts} runs could be killed before they finished"
        );
        let delay = window.mul_f64(0.02 + 0.96 * rng.next_f64());
        let (out_log, err_log) = (logs.join("create.out"), logs.join("create.err"));
        let mut writer = ChildGuard::spawn(
            create_image_cmd(&repo, &src)
                .stdout(fs::File::create(&out_log).expect("log"))
                .stderr(fs::File::create(&err_log).expect("log")),
        );
        let spawned = Instant::now();
        while spawned.elapsed() < delay && writer.try_wait().is_none() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = spawned.elapsed();
        let status = writer.kill();
        let when = if status.signal() == Some(SIGKILL) {
            kills += 1;
            kill_moments.push(delay);
            format!("after kill #{kills} at {delay:?}")
        } else {
            // It finished before the kill: then it must have succeeded, with the right id.
            assert!(
                status.success(),
                "create-image failed: {status}\n{}",
                fs::read_to_string(&err_log).unwrap_or_default()
            );
            assert_eq!(
                parse_id(&fs::read(&out_log).expect("read log")),
                expected,
                "a complete run gives the expected id"
            );
            completed += 1;
            // Runs that find their objects already stored are quicker than the measured one
            // (and a busy machine slows the measurement): aim the next kills earlier, but
            // keep the window at least half the uninterrupted runtime.
            window = window.min(took).max(runtime / 2);
            format!("after a run that completed in {took:?}")
        };
        check_consistent(&repo, &expected, &when);
        match attempts % 3 {
            // Collect what the killed writer left; the image stays if it was named.
            1 => {
                collect(&repo, &when);
                check_consistent(&repo, &expected, &format!("{when}, then gc"));
            }
            // Start from nothing: drop the name, collect everything.
            2 => {
                let _ = fs::remove_file(repo.join("images/refs/t"));
                collect(&repo, &when);
                assert!(
                    object_files(&repo).is_empty(),
                    "{when}: gc without roots left objects"
                );
            }
            // Leave the leftovers for the next writer.
            _ => {}
        }
    }

    // A rerun completes, with the id of the uninterrupted run, and stores a complete image.
    let out = run_ok(&mut create_image_cmd(&repo, &src), TIMEOUT);
    assert_eq!(parse_id(&out.stdout), expected);
    collect(&repo, "after the final run");
    check_consistent(&repo, &expected, "after the final run");
    let listed = run_ok(cfsctl(&repo).args(["image-objects", "t"]), TIMEOUT);
    let mut live: BTreeSet<PathBuf> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| {
            let hex = l.strip_prefix("sha512:").expect("sha512 id");
            PathBuf::from(format!("{}/{}", &hex[..2], &hex[2..]))
        })
        .collect();
    live.insert(PathBuf::from(format!(
        "{}/{}",
        &expected[..2],
        &expected[2..]
    )));
    assert_eq!(
        object_files(&repo),
        live,
        "the repository holds exactly image t and its objects"
    );

    kill_moments.sort();
    eprintln!(
        "crash test: {FILES} files ({bytes} bytes); uninterrupted create-image {runtime:?}; \
         {kills} kills at {kill_moments:?}; {completed} runs completed before their kill; \
         total {:?}",
        started.elapsed()
    );
}
