//! The command-line surface of the multi-call binary: dispatch by argv[0] and by first argument,
//! stdin/stdout handling, digest printing, `composefs-info` listings, and clear errors for bad
//! arguments.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{on_a_terminal, run_ok, run_with_timeout};

const TIMEOUT: Duration = Duration::from_secs(60);

fn bin(name: &str) -> PathBuf {
    match name {
        "cfsctl" => PathBuf::from(env!("CARGO_BIN_EXE_cfsctl")),
        "mkcomposefs" => PathBuf::from(env!("CARGO_BIN_EXE_mkcomposefs")),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_composefs-info")),
    }
}

/// docs/formats.md §2.14 `simple`, with its pinned V0 fs-verity digest.
const SIMPLE: &str = "/ 0 40755 2 0 0 0 0.0 - - -
/blkdev 0 60000 1 0 0 123 0.0 - - -
/chrdev 0 20000 1 0 0 123 0.0 - - -
/fifo 0 10000 1 0 0 0 0.0 - - -
/regular-external 1234 100000 1 0 0 0 0.0 5a/5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a - 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
/regular-inline 4 100000 1 0 0 0 0.0 - hihi -
/socket 0 140000 1 0 0 0 0.0 - - -
/symlink 7 120000 1 0 0 0 0.0 /target - -
";
const SIMPLE_V0: &str = "9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01";

fn with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(cmd: &mut Command, needle: &str) {
    let out = run_with_timeout(cmd, TIMEOUT).expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} succeeded");
    assert!(
        err.contains(needle),
        "{cmd:?}: error {err:?} does not mention {needle:?}"
    );
}

#[test]
fn print_digest_only_reads_stdin() {
    let out = with_stdin(
        Command::new(bin("mkcomposefs")).args(["--from-file", "--print-digest-only", "-"]),
        SIMPLE.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out).trim(), SIMPLE_V0);
}

#[test]
fn multi_call_names_dispatch_to_the_same_tools() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dump = tmp.path().join("simple.dump");
    std::fs::write(&dump, SIMPLE).expect("write");
    // argv[0] dispatch through a link named like the C tool.
    let link = tmp.path().join("mkcomposefs");
    std::os::unix::fs::symlink(bin("cfsctl"), &link).expect("symlink");
    let via_link = run_ok(
        Command::new(&link)
            .arg("--from-file")
            .arg("--print-digest")
            .arg(&dump)
            .arg(tmp.path().join("a.img")),
        TIMEOUT,
    );
    // First-argument dispatch.
    let via_arg = run_ok(
        Command::new(bin("cfsctl"))
            .arg("mkcomposefs")
            .arg("--from-file")
            .arg("--print-digest")
            .arg(&dump)
            .arg(tmp.path().join("b.img")),
        TIMEOUT,
    );
    assert_eq!(stdout(&via_link).trim(), SIMPLE_V0);
    assert_eq!(stdout(&via_arg).trim(), SIMPLE_V0);
    let a = std::fs::read(tmp.path().join("a.img")).expect("a.img");
    assert_eq!(a, std::fs::read(tmp.path().join("b.img")).expect("b.img"));

    let info_link = tmp.path().join("composefs-info");
    std::os::unix::fs::symlink(bin("cfsctl"), &info_link).expect("symlink");
    let dumped = run_ok(
        Command::new(&info_link)
            .arg("dump")
            .arg(tmp.path().join("a.img")),
        TIMEOUT,
    );
    let via_sub = run_ok(
        Command::new(bin("cfsctl"))
            .arg("composefs-info")
            .arg("dump")
            .arg(tmp.path().join("a.img")),
        TIMEOUT,
    );
    assert_eq!(dumped.stdout, via_sub.stdout);
    assert!(stdout(&dumped).contains("/symlink 7 120000 1 0 0 0 0.0 /target - -"));
}

#[test]
fn image_to_stdout_and_listings() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = with_stdin(
        Command::new(bin("mkcomposefs")).args(["--from-file", "-", "-"]),
        SIMPLE.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = tmp.path().join("simple.img");
    std::fs::write(&image, &out.stdout).expect("write");
    let measured = run_ok(
        Command::new(bin("composefs-info"))
            .arg("measure-file")
            .arg(&image),
        TIMEOUT,
    );
    assert_eq!(stdout(&measured).trim(), SIMPLE_V0);

    let ls = stdout(&run_ok(
        Command::new(bin("composefs-info")).arg("ls").arg(&image),
        TIMEOUT,
    ));
    let line = |name: &str| {
        ls.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        line("/symlink").as_deref(),
        Some("/symlink -> /target"),
        "{ls}"
    );
    assert_eq!(
        line("/regular-external"),
        Some(format!("/regular-external @ 5a/{}", "5a".repeat(31))),
        "{ls}"
    );
    let filtered = stdout(&run_ok(
        Command::new(bin("composefs-info"))
            .args(["--filter", "fifo", "ls"])
            .arg(&image),
        TIMEOUT,
    ));
    assert!(
        filtered.contains("/fifo") && !filtered.contains("/socket"),
        "{filtered}"
    );

    let objects = stdout(&run_ok(
        Command::new(bin("composefs-info"))
            .arg("objects")
            .arg(&image),
        TIMEOUT,
    ));
    let object = format!("5a/{}", "5a".repeat(31));
    assert_eq!(objects.trim(), object);
    let base = tmp.path().join("objects");
    let missing = || {
        stdout(&run_ok(
            Command::new(bin("composefs-info"))
                .arg("missing-objects")
                .arg("--basedir")
                .arg(&base)
                .arg(&image),
            TIMEOUT,
        ))
    };
    assert_eq!(missing().trim(), object);
    std::fs::create_dir_all(base.join("5a")).expect("mkdir");
    std::fs::write(base.join(&object), b"x").expect("write object");
    assert_eq!(missing().trim(), "");
}

#[test]
fn directory_source_with_digest_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("small"), b"tiny").expect("write");
    std::fs::write(src.join("big"), vec![7u8; 100_000]).expect("write");
    let store = tmp.path().join("store");
    let image = tmp.path().join("dir.img");
    run_ok(
        Command::new(bin("mkcomposefs"))
            .arg(format!("--digest-store={}", store.display()))
            .arg(&src)
            .arg(&image),
        TIMEOUT,
    );
    let objects = stdout(&run_ok(
        Command::new(bin("composefs-info"))
            .arg("objects")
            .arg(&image),
        TIMEOUT,
    ));
    assert_eq!(
        objects.lines().count(),
        1,
        "only the big file is external: {objects}"
    );
    let object = store.join(objects.trim());
    assert_eq!(
        std::fs::read(&object).expect("stored object"),
        vec![7u8; 100_000]
    );
    let missing = run_ok(
        Command::new(bin("composefs-info"))
            .arg("missing-objects")
            .arg("--basedir")
            .arg(&store)
            .arg(&image),
        TIMEOUT,
    );
    assert!(missing.stdout.is_empty());
    // The object's name is its fs-verity digest.
    let digest = stdout(&run_ok(
        Command::new(bin("composefs-info"))
            .arg("measure-file")
            .arg(&object),
        TIMEOUT,
    ));
    assert_eq!(objects.trim().replace('/', ""), digest.trim());
}

#[test]
fn bad_arguments_give_clear_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dump = tmp.path().join("simple.dump");
    std::fs::write(&dump, SIMPLE).expect("write");
    let img = |n: &str| tmp.path().join(n);
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg("--min-version=2")
            .arg("--from-file")
            .arg(&dump)
            .arg(img("a")),
        "--min-version",
    );
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg("--threads=0")
            .arg("--from-file")
            .arg(&dump)
            .arg(img("a")),
        "threads",
    );
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg("--skip-xattrs")
            .arg("--user-xattrs")
            .arg(tmp.path())
            .arg(img("a")),
        "--user-xattrs",
    );
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg("--from-file")
            .arg(img("nonexistent.dump"))
            .arg(img("a")),
        "nonexistent.dump",
    );
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg(img("no-such-dir"))
            .arg(img("a")),
        "no-such-dir",
    );
    fails_with(
        Command::new(bin("mkcomposefs")).arg(&dump).arg(img("a")),
        "not a directory",
    );
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg("--from-file")
            .arg(&dump)
            .arg(img("missing/dir/a.img")),
        "missing/dir",
    );
    fails_with(
        Command::new(bin("mkcomposefs"))
            .arg("--from-file")
            .arg(&dump),
        "IMAGE",
    );
    fails_with(
        Command::new(bin("composefs-info")).arg("dump").arg(&dump),
        "simple.dump",
    );
    fails_with(
        Command::new(bin("composefs-info"))
            .arg("frobnicate")
            .arg(&dump),
        "frobnicate",
    );
    fails_with(
        Command::new(bin("composefs-info"))
            .arg("missing-objects")
            .arg(&dump),
        "--basedir",
    );
    // Nothing was left behind by any failure.
    let mut left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    left.sort();
    assert_eq!(left, vec![std::ffi::OsString::from("simple.dump")]);
}

#[test]
fn corrupt_images_are_rejected_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = with_stdin(
        Command::new(bin("mkcomposefs")).args(["--from-file", "-", "-"]),
        SIMPLE.as_bytes(),
    );
    assert!(out.status.success());
    let good = out.stdout;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..2000].to_vec()),
        ("bad-magic", {
            let mut b = good.clone();
            b[0] ^= 0xff;
            b
        }),
        ("bad-erofs-magic", {
            let mut b = good.clone();
            b[1024] ^= 0xff;
            b
        }),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path: &Path = &tmp.path().join(name);
        std::fs::write(path, bytes).expect("write");
        for action in ["dump", "ls", "objects"] {
            let out = run_with_timeout(
                Command::new(bin("composefs-info")).arg(action).arg(path),
                TIMEOUT,
            )
            .expect("run");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{action} {name} succeeded");
            assert!(
                err.contains(name) && !err.contains("panicked"),
                "{action} {name}: {err}"
            );
        }
    }
}

/// Long operations (`create-image`, `gc`) show progress on a terminal, and nothing on stderr when
/// it is not one (piped, as here).
#[test]
fn progress_shows_on_a_terminal_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    // Enough files that storing them outlasts the first redraw.
    for i in 0..3000 {
        std::fs::write(src.join(format!("f{i}")), format!("{i:>200}")).expect("write");
    }
    let repo = tmp.path().join("repo");
    let p = |s: &str| PathBuf::from(s);
    run_ok(
        Command::new(bin("cfsctl"))
            .arg("--repo")
            .arg(&repo)
            .args(["init", "--insecure"]),
        TIMEOUT,
    );

    let shown = on_a_terminal(
        &bin("cfsctl"),
        &[
            &p("--repo"),
            &repo,
            &p("create-image"),
            &p("--no-propagate-usr-to-root"),
            &src,
            &p("one"),
        ],
    );
    assert!(
        shown.contains("storing files:"),
        "no progress shown:\n{shown}"
    );
    let shown = on_a_terminal(
        &bin("cfsctl"),
        &[&p("--repo"), &repo, &p("gc"), &p("--dry-run")],
    );
    assert!(shown.contains("gc:"), "no progress shown:\n{shown}");

    for args in [
        vec![
            p("create-image"),
            p("--no-propagate-usr-to-root"),
            src.clone(),
            p("two"),
        ],
        vec![p("gc")],
    ] {
        let out = run_ok(
            Command::new(bin("cfsctl"))
                .arg("--repo")
                .arg(&repo)
                .args(&args),
            TIMEOUT,
        );
        assert!(
            out.stderr.is_empty(),
            "{args:?} wrote to a non-terminal stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
