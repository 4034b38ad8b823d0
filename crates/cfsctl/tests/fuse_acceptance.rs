//! Acceptance tests of the FUSE server (issue 4, items 1–4), as root on real FUSE mounts:
//!
//! 1. dumpfile round trip: `cfsctl create-dumpfile` over a `fuse-serve` mount of a
//!    `mkcomposefs --digest-store` image, and over `cfsctl mount --fuse` / `--fuse=passthrough`
//!    mounts of a repository image, equals `composefs-info dump` of the image, and every external
//!    file reads back byte for byte;
//! 2. with passthrough, reading a 256 MiB file sends no READ to the server (its counters say so);
//!    without, READs are counted;
//! 3. a tampered object in an insecure repository fails its open with EIO and a log line naming
//!    it, while untampered files still read;
//! 4. truncated and corrupt images are refused at startup with a clear error; damage written into
//!    the served image afterwards gives EIO for the operations that meet it while the server keeps
//!    serving (and then stops cleanly); a missing object gives EIO on open.
//!
//! Also: with verify=off and no passthrough, files open without any request (zero-message
//! open), so warm reads cost nothing and a missing object fails its first READ instead.
//!
//! The stress test (item 5) is in `fuse_stress.rs`. Every wait has a time limit; guards kill the
//! servers and detach their mounts on failure, and every test checks at the end that nothing is
//! left mounted under its temporary directory.

mod common;
mod fuse_support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cfs_format::dumpfile::escape::unescape;
use cfs_format::erofs::reader::Image;
use common::source_tree::{build_source_tree, check_source_tree, SourceImage, MIB};
use common::{assert_nothing_mounted_under, content_difference, mount_at, pattern, run_ok, skip};
use fuse_support::{
    cfsctl, composefs_info, content_diff, count_entries, dev_of, digest_store_image, eio, errno_of,
    fuse_available, make_dir, mkcomposefs, read_file, repo_image, test_dir, with_timeout,
    BackgroundMount, Server, UringSwitch, TOOL_TIMEOUT, WALK_TIMEOUT,
};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------------------------
// Dumpfiles
// ---------------------------------------------------------------------------------------------

/// Dumpfile field indexes (composefs-dump(5)).
const F_PATH: usize = 0;
const F_SIZE: usize = 1;
const F_MODE: usize = 2;
const F_PAYLOAD: usize = 8;
const F_DIGEST: usize = 10;

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;

/// The (escaped) fields of one dumpfile line; escaped fields never contain a space.
fn fields(line: &[u8]) -> Vec<&[u8]> {
    line.split(|&b| b == b' ').collect()
}

/// The MODE field as a number, `@` (hardlink) prefix removed.
fn mode_of(mode_field: &[u8]) -> u32 {
    let digits = mode_field.strip_prefix(b"@").unwrap_or(mode_field);
    u32::from_str_radix(&String::from_utf8_lossy(digits), 8)
        .unwrap_or_else(|e| panic!("bad MODE field {:?}: {e}", digits.escape_ascii()))
}

/// Lines of `dump` (trailing newlines trimmed), normalised where `composefs-info dump` (the
/// image's dumpfile) and `cfsctl create-dumpfile` (a dumpfile of a directory tree, here the
/// mount) legitimately differ, and only there:
///
/// - **Directory SIZE.** `composefs-info` prints the directory's `i_size` (the bytes of its
///   EROFS directory blocks), `create-dumpfile` prints 0 (the dumpfile writer ignores directory
///   sizes, and the size of a directory on the host says nothing about the image). Directory
///   lines get SIZE `-` on both sides.
/// - **Hardlink line form.** Both print a hardlink as `PATH … @MODE … TARGET …` with the path of
///   the first name as PAYLOAD, but `composefs-info` repeats the target's metadata (C style:
///   `/b 2 @100644 2 0 0 0 <mtime> /a <content> <digest> <xattrs>`) while `create-dumpfile`
///   writes the rs placeholder form (`/b 0 @120000 - - - - 0.0 /a - -`). Hardlink lines become
///   `PATH @ TARGET`; the shared metadata is still compared on the target's own line.
/// - **The escaped `opaque` marker**, removed from the image's side only, by [`image_side`]
///   before this normalisation.
///
/// Everything else — every other field of every entry, the set and order of entries, xattr
/// names, values and order, digests, inline contents, nanosecond mtimes — must match byte for
/// byte.
fn normalise_dump(dump: &[u8]) -> Vec<Vec<u8>> {
    let text = dump.strip_suffix(b"\n").unwrap_or(dump);
    text.split(|&b| b == b'\n')
        .map(|line| {
            let f = fields(line);
            assert!(
                f.len() >= 11,
                "short dumpfile line {:?}",
                line.escape_ascii()
            );
            if f[F_MODE].starts_with(b"@") {
                let mut out = f[F_PATH].to_vec();
                out.extend_from_slice(b" @ ");
                out.extend_from_slice(f[F_PAYLOAD]);
                return out;
            }
            if mode_of(f[F_MODE]) & S_IFMT == S_IFDIR {
                let mut f = f.clone();
                f[F_SIZE] = b"-";
                return f.join(&b' ');
            }
            line.to_vec()
        })
        .collect()
}

/// `composefs-info dump IMAGE`.
fn image_dump(image: &Path) -> Vec<u8> {
    run_ok(composefs_info().arg("dump").arg(image), TOOL_TIMEOUT).stdout
}

/// The image's dumpfile as the composefs view presents it, for [`assert_dumps_equal`]: without
/// `trusted.overlay.opaque` xattrs. The image stores this name escaped, as
/// `trusted.overlay.overlay.opaque`, which is also the V1 parent marker of escaped whiteouts
/// (docs/formats.md §2.7; the two cannot be told apart). `composefs-info dump` follows C's image
/// loader and shows it unescaped (so that its dumpfile round-trips through `mkcomposefs`), while
/// the composefs view that the FUSE server presents (§2.12, §8.1) hides the six marker names —
/// so a source tree's own `trusted.overlay.opaque` (the `xattrs` directory of
/// `build_source_tree` has one) is in the former and not in the latter. No other xattr is
/// touched. Returns the new dumpfile and the (escaped) paths of the lines that changed.
fn image_side(dump: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::with_capacity(dump.len());
    let mut changed = Vec::new();
    for line in dump.split_inclusive(|&b| b == b'\n') {
        let (body, newline) = match line.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (line, &b""[..]),
        };
        let all = fields(body);
        let kept: Vec<&[u8]> = all
            .iter()
            .enumerate()
            .filter(|(i, f)| *i <= F_DIGEST || !f.starts_with(b"trusted.overlay.opaque="))
            .map(|(_, f)| *f)
            .collect();
        if kept.len() != all.len() {
            changed.push(String::from_utf8_lossy(all[F_PATH]).into_owned());
        }
        out.extend_from_slice(&kept.join(&b' '));
        out.extend_from_slice(newline);
    }
    (out, changed)
}

/// The entries of `build_source_tree` that have their own `trusted.overlay.opaque`.
const OWN_OPAQUE_XATTR: &[&str] = &["/xattrs"];

/// `cfsctl create-dumpfile --no-propagate-usr-to-root MNT` (the tree as found, no OCI
/// transform). `create-dumpfile` computes the digests of external files with the selected
/// repository's algorithm when a repository exists at `--repo`, else with `--hash` (see
/// `image_settings` in src/cli.rs); a `--repo` path that does not exist and `--hash sha256`
/// make it use sha256, as `mkcomposefs` and our sha256 repositories do.
fn mount_dump(mnt: &Path, scratch: &Path) -> Vec<u8> {
    let no_repo = scratch.join("no-such-repository");
    assert!(!no_repo.exists());
    run_ok(
        cfsctl()
            .arg("--repo")
            .arg(&no_repo)
            .args([
                "--hash",
                "sha256",
                "create-dumpfile",
                "--no-propagate-usr-to-root",
            ])
            .arg(mnt),
        TOOL_TIMEOUT,
    )
    .stdout
}

/// Panic, showing the differing lines, unless the normalised dumpfiles are equal.
fn assert_dumps_equal(image_dump: &[u8], mount_dump: &[u8], what: &str) {
    let (image_dump, changed) = image_side(image_dump);
    assert_eq!(
        changed, OWN_OPAQUE_XATTR,
        "{what}: trusted.overlay.opaque where the source has none"
    );
    let want = normalise_dump(&image_dump);
    let got = normalise_dump(mount_dump);
    if want == got {
        return;
    }
    let want_set: BTreeSet<&Vec<u8>> = want.iter().collect();
    let got_set: BTreeSet<&Vec<u8>> = got.iter().collect();
    let show = |l: &Vec<u8>| {
        let s = l.escape_ascii().to_string();
        if s.len() > 300 {
            format!("{}… ({} bytes)", &s[..300], s.len())
        } else {
            s
        }
    };
    let mut msg = format!(
        "{what}: the mount's dumpfile ({} lines) differs from the image's ({} lines)\n",
        got.len(),
        want.len()
    );
    for l in want.iter().filter(|l| !got_set.contains(l)).take(40) {
        msg.push_str(&format!("  - image: {}\n", show(l)));
    }
    for l in got.iter().filter(|l| !want_set.contains(l)).take(40) {
        msg.push_str(&format!("  + mount: {}\n", show(l)));
    }
    if want_set == got_set {
        msg.push_str("  (same lines, different order)\n");
    }
    panic!("{msg}");
}

/// The paths (relative, raw bytes) of the external regular files in the image's dumpfile:
/// regular files with a PAYLOAD (object path), and hardlinks to them.
fn external_files(image_dump: &[u8]) -> Vec<PathBuf> {
    let mut external = BTreeSet::new();
    let mut links = Vec::new();
    let text = image_dump.strip_suffix(b"\n").unwrap_or(image_dump);
    for line in text.split(|&b| b == b'\n') {
        let f = fields(line);
        let path = unescape(f[F_PATH]).expect("unescape PATH").into_owned();
        if f[F_MODE].starts_with(b"@") {
            let target = unescape(f[F_PAYLOAD])
                .expect("unescape PAYLOAD")
                .into_owned();
            links.push((path, target));
        } else if mode_of(f[F_MODE]) & S_IFMT == S_IFREG && f[F_PAYLOAD] != b"-" {
            external.insert(path);
        }
    }
    for (path, target) in links {
        if external.contains(&target) {
            external.insert(path);
        }
    }
    external
        .into_iter()
        .map(|p| {
            let p = p.strip_prefix(b"/").expect("absolute dumpfile path");
            PathBuf::from(OsStr::from_bytes(p))
        })
        .collect()
}

/// The dumpfile round trip over the mount at `mnt`: `create-dumpfile MNT` equals `image_dump`
/// (normalised), and every external file reads back exactly as its source under `src`.
fn check_round_trip(image_dump: &[u8], src: &Path, mnt: &Path, scratch: &Path, what: &str) {
    let dump = mount_dump(mnt, scratch);
    assert_dumps_equal(image_dump, &dump, what);
    let external = external_files(image_dump);
    assert!(
        external.len() >= 10,
        "{what}: only {} external files in the image: the test would prove little",
        external.len()
    );
    let (src, mnt, files) = (src.to_owned(), mnt.to_owned(), external.clone());
    let diffs = with_timeout("reading the external files", WALK_TIMEOUT, move || {
        files
            .iter()
            .filter_map(|rel| {
                content_difference(&src.join(rel), &mnt.join(rel))
                    .map(|d| format!("{}: {d}", rel.display()))
            })
            .collect::<Vec<_>>()
    });
    assert!(
        diffs.is_empty(),
        "{what}: external files differ from their sources:\n  {}",
        diffs.join("\n  ")
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Dumpfile round trip
// ---------------------------------------------------------------------------------------------

/// Start `fuse-serve -o OPTS` of `img` on `mnt` and check the round trip through it; the
/// server is left running for the caller's own checks.
fn serve_and_round_trip(
    img: &SourceImage,
    want: &[u8],
    opts: &str,
    mnt: &Path,
    tmp: &Path,
) -> Server {
    let log = tmp.join(format!("serve-{opts}.log"));
    let server = Server::fuse_serve(&img.image, &img.objects, opts, mnt, &log);
    assert_eq!(mount_at(mnt).map(|m| m.fstype), Some("fuse".to_owned()));
    check_round_trip(want, &img.src, mnt, tmp, &format!("fuse-serve -o '{opts}'"));
    server
}

#[test]
fn dumpfile_round_trip_over_fuse_serve() {
    if !fuse_available("FUSE dumpfile round trip (fuse-serve)") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-dump-");
    {
        let img = SourceImage::build(tmp.path(), mkcomposefs());
        let want = image_dump(&img.image);
        let mnt = make_dir(tmp.path(), "mnt");
        for opts in ["", "passthrough"] {
            let mut server = serve_and_round_trip(&img, &want, opts, &mnt, tmp.path());
            server.stop();
        }
    }
    assert_nothing_mounted_under(tmp.path());
}

#[test]
fn dumpfile_round_trip_over_mount_fuse() {
    if !fuse_available("FUSE dumpfile round trip (mount --fuse)") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-mount-");
    {
        let src = tmp.path().join("src");
        build_source_tree(&src);
        check_source_tree(&src);
        let repo = tmp.path().join("repo");
        let image = repo_image(&repo, "sha256", &src, "img");
        let want = image_dump(&image);
        let mnt = make_dir(tmp.path(), "mnt");
        for fuse_arg in ["--fuse", "--fuse=passthrough"] {
            let mount = BackgroundMount::mount(&repo, "img", fuse_arg, &mnt);
            check_round_trip(
                &want,
                &src,
                mount.path(),
                tmp.path(),
                &format!("mount {fuse_arg}"),
            );
            // An unmount from outside ends the background server.
            mount.unmount();
        }
    }
    assert_nothing_mounted_under(tmp.path());
}

/// FUSE over io_uring (`-o uring`): the same view as through `/dev/fuse`, with and without
/// passthrough, and every external file reads back right from a reader pinned to each CPU (each
/// CPU has its own queue and worker).
#[test]
fn dumpfile_round_trip_over_io_uring_queues() {
    let Some(_switch) = UringSwitch::on("FUSE over io_uring") else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp = test_dir("cfs-fuse-acc-uring-");
    {
        let img = SourceImage::build(tmp.path(), mkcomposefs());
        let want = image_dump(&img.image);
        let external = external_files(&want);
        let mnt = make_dir(tmp.path(), "mnt");
        for opts in ["uring", "uring,passthrough"] {
            let mut server = serve_and_round_trip(&img, &want, opts, &mnt, tmp.path());
            let text = server.serving_log();
            if text.contains("io_uring unavailable") {
                server.stop();
                skip(
                    "FUSE over io_uring",
                    &format!("the server fell back:\n{text}"),
                );
                continue;
            }
            assert!(
                text.contains("io_uring queue worker(s)"),
                "-o {opts}: the server does not say it serves io_uring queues:\n{text}"
            );
            for cpu in 0..cpus {
                for rel in external.iter().take(8) {
                    let out = run_ok(
                        std::process::Command::new("taskset")
                            .arg("-c")
                            .arg(cpu.to_string())
                            .arg("cmp")
                            .arg(img.src.join(rel))
                            .arg(mnt.join(rel)),
                        WALK_TIMEOUT,
                    );
                    assert!(
                        out.status.success(),
                        "-o {opts}: {} on CPU {cpu}",
                        rel.display()
                    );
                }
            }
            let counters = server.stop();
            // Files open without a request (digests are checked on READ), so every external
            // file's content must have come through READs counted here.
            assert!(
                counters.get("READ") >= external.len() as u64,
                "-o {opts}: reads were not answered through the counted operations: {counters:?}"
            );
        }
    }
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 2. Passthrough reads stay in the kernel
// ---------------------------------------------------------------------------------------------

/// Read `path` to the end in 1 MiB pieces: (length, sha256).
fn hash_file(path: &Path) -> std::io::Result<(u64, [u8; 32])> {
    let path = path.to_owned();
    with_timeout(
        &format!("reading {}", path.display()),
        WALK_TIMEOUT,
        move || {
            let mut f = fs::File::open(&path)?;
            let mut buf = vec![0u8; MIB];
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                len += n as u64;
            }
            Ok((len, hasher.finalize().into()))
        },
    )
}

#[test]
fn passthrough_reads_stay_in_the_kernel() {
    if !fuse_available("FUSE passthrough READ counts") {
        return;
    }
    const BIG: usize = 256 * MIB;
    let tmp = test_dir("cfs-fuse-acc-pt-");
    {
        let src = make_dir(tmp.path(), "src");
        // 256 MiB: one pseudo-random MiB, each copy stamped with its index so that no two
        // blocks of the file are alike.
        let want = {
            let f = fs::File::create(src.join("big")).expect("create big");
            let mut chunk = pattern(42, MIB);
            let mut hasher = Sha256::new();
            for i in 0..(BIG / MIB) as u64 {
                chunk[..8].copy_from_slice(&i.to_le_bytes());
                f.write_all_at(&chunk, i * MIB as u64).expect("write big");
                hasher.update(&chunk);
            }
            (BIG as u64, <[u8; 32]>::from(hasher.finalize()))
        };
        fs::write(src.join("small"), b"inline").expect("write small");
        let image = tmp.path().join("image.cfs");
        let objects = tmp.path().join("objects");
        digest_store_image(&src, &image, &objects, Duration::from_secs(300));
        let mnt = make_dir(tmp.path(), "mnt");

        // With passthrough the kernel reads the object itself: OPEN reaches the server, READ
        // never does.
        let log = tmp.path().join("passthrough.log");
        let mut server = Server::fuse_serve(&image, &objects, "passthrough", &mnt, &log);
        let got = hash_file(&mnt.join("big")).expect("read big with passthrough");
        assert!(got == want, "big read back wrong with passthrough");
        let during = server.counters_now();
        let at_exit = server.stop();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("passthrough unavailable") || text.contains("passthrough disabled") {
            skip(
                "the passthrough READ count",
                &format!("the kernel does not do FUSE passthrough here:\n{text}"),
            );
        } else {
            for table in [&during, &at_exit] {
                assert!(table.get("OPEN") >= 1, "big was never opened: {table:?}");
                assert_eq!(
                    (table.get("READ"), table.get("READ_BYTES")),
                    (0, 0),
                    "passthrough reads reached the server ({}): {table:?}\n{text}",
                    table.why
                );
            }
        }

        // Without passthrough every byte comes through READ requests.
        let log = tmp.path().join("userspace.log");
        let mut server = Server::fuse_serve(&image, &objects, "", &mnt, &log);
        let got = hash_file(&mnt.join("big")).expect("read big without passthrough");
        assert!(got == want, "big read back wrong without passthrough");
        let during = server.counters_now();
        let at_exit = server.stop();
        for table in [&during, &at_exit] {
            assert!(table.get("READ") > 0, "no READ counted: {table:?}");
            assert!(
                table.get("READ_BYTES") >= BIG as u64,
                "fewer READ bytes than the file has: {table:?}"
            );
        }
    }
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 3. Tampered objects (and 4. missing objects) in an insecure repository
// ---------------------------------------------------------------------------------------------

/// The object path (`XX/<rest>`, from the PAYLOAD field) of `/name` in the image's dumpfile.
fn object_of(image_dump: &[u8], name: &str) -> String {
    let path = format!("/{name}");
    let text = String::from_utf8_lossy(image_dump);
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(path.as_str()))
        .unwrap_or_else(|| panic!("{path} not in the image:\n{text}"));
    let payload = line.split(' ').nth(F_PAYLOAD).expect("PAYLOAD field");
    assert_ne!(payload, "-", "{path} is not external: {line}");
    payload.to_owned()
}

/// Change one byte of `object` keeping its size: in place when the file can be written, else
/// (fs-verity objects are immutable) by replacing it with a changed copy.
fn tamper(object: &Path) {
    let mut bytes = fs::read(object).unwrap_or_else(|e| panic!("read {object:?}: {e}"));
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    let in_place = fs::OpenOptions::new()
        .write(true)
        .open(object)
        .and_then(|f| f.write_all_at(&bytes[i..=i], i as u64));
    if let Err(e) = in_place {
        eprintln!("cannot write {object:?} in place ({e}): replacing it with a changed copy");
        let copy = object.with_extension("tampered");
        fs::write(&copy, &bytes).expect("write the changed copy");
        fs::rename(&copy, object).expect("replace the object");
    }
    assert_eq!(fs::read(object).expect("reread").len(), bytes.len());
}

/// A source directory with `files` (name, content) and its image in a new SHA-256 repository
/// below `tmp`: returns the source, the repository and the image file.
fn repo_with_files(tmp: &Path, files: &[(&str, Vec<u8>)]) -> (PathBuf, PathBuf, PathBuf) {
    let src = make_dir(tmp, "src");
    for (name, content) in files {
        fs::write(src.join(name), content).expect("write a source file");
    }
    let repo = tmp.join("repo");
    let image = repo_image(&repo, "sha256", &src, "img");
    (src, repo, image)
}

/// `cfsctl --repo REPO fuse-serve [-o OPTS] IMAGE MNT`: objects from the repository.
fn serve_from_repo(repo: &Path, image: &Path, opts: &str, mnt: &Path, log: &Path) -> Server {
    let mut args = vec![
        OsStr::new("--repo"),
        repo.as_os_str(),
        OsStr::new("fuse-serve"),
    ];
    if !opts.is_empty() {
        args.extend([OsStr::new("-o"), OsStr::new(opts)]);
    }
    args.extend([image.as_os_str(), mnt.as_os_str()]);
    Server::start(&args, mnt, log)
}

#[test]
fn tampered_and_missing_objects_give_eio() {
    if !fuse_available("FUSE verification of objects") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-tamper-");
    {
        let mut files: Vec<(&str, Vec<u8>)> = ["tampered", "good", "missing", "other"]
            .iter()
            .enumerate()
            .map(|(i, name)| (*name, pattern(i as u64 + 7, 20_000 + i * 1000)))
            .collect();
        files.push(("inline", b"small".to_vec()));
        let (src, repo, image) = repo_with_files(tmp.path(), &files);
        let dump = image_dump(&image);
        let tampered = object_of(&dump, "tampered");
        let missing = object_of(&dump, "missing");
        tamper(&repo.join("objects").join(&tampered));
        fs::remove_file(repo.join("objects").join(&missing)).expect("remove an object");

        // Objects from the repository (no --objects).
        let mnt = make_dir(tmp.path(), "mnt");
        let log = tmp.path().join("serve.log");
        let mut server = serve_from_repo(&repo, &image, "", &mnt, &log);
        let naming = |server: &Server, object: &str| {
            let text = server.log_text();
            let line = text.lines().find(|l| l.contains(object)).map(str::to_owned);
            line.unwrap_or_else(|| panic!("no log line names object {object}:\n{text}"))
        };

        // The tampered file: EIO on open, every time; the log names the object.
        for attempt in 0..2 {
            let r = read_file(&mnt.join("tampered"));
            assert_eq!(errno_of(r, "open tampered"), eio(), "attempt {attempt}");
        }
        let line = naming(&server, &tampered);
        assert!(line.contains("verification"), "{line}");

        // The missing object: EIO on open, named in the log.
        let r = read_file(&mnt.join("missing"));
        assert_eq!(errno_of(r, "open missing"), eio());
        let line = naming(&server, &missing);
        assert!(line.contains("missing"), "{line}");

        // Untampered files still read, afterwards.
        for name in ["good", "other", "inline"] {
            assert_eq!(
                content_diff(&src.join(name), &mnt.join(name)),
                None,
                "{name}"
            );
        }
        assert!(server.is_running(), "{}", server.log_text());
        let counters = server.stop();
        // Files open without a request (digests are checked on READ): the READs reached us.
        assert!(counters.get("READ") >= 5, "{counters:?}");
    }
    assert_nothing_mounted_under(tmp.path());
}

/// With nothing to do at open (verify=off, no passthrough) the server answers the first OPEN
/// with ENOSYS and the kernel opens files by itself from then on: no OPEN or RELEASE per file,
/// the page cache is kept, so a second read of everything costs no request at all. A missing
/// object is then reported by the first READ (EIO, logged) instead of the open.
#[test]
fn verify_off_opens_files_without_requests() {
    if !fuse_available("FUSE zero-message open") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-noopen-");
    {
        let names: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
        let mut files: Vec<(&str, Vec<u8>)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_str(), pattern(i as u64 + 100, 5_000 + i * 3_000)))
            .collect();
        files.push(("inline", b"tiny".to_vec()));
        files.push(("gone", pattern(99, 70_000)));
        let (src, repo, image) = repo_with_files(tmp.path(), &files);
        let gone = object_of(&image_dump(&image), "gone");
        fs::remove_file(repo.join("objects").join(&gone)).expect("remove an object");

        let mnt = make_dir(tmp.path(), "mnt");
        let log = tmp.path().join("serve.log");
        let mut server = serve_from_repo(&repo, &image, "verify=off", &mnt, &log);
        let read_all = || {
            for name in names.iter().map(String::as_str).chain(["inline"]) {
                assert_eq!(
                    content_diff(&src.join(name), &mnt.join(name)),
                    None,
                    "{name}"
                );
            }
        };
        read_all();
        let cold = server.counters_now();
        read_all();
        read_all();
        let warm = server.counters_now();
        // One OPEN in all (answered with ENOSYS), whatever the number of opens.
        assert_eq!(cold.get("OPEN"), 1, "{cold:?}");
        assert_eq!(warm.get("OPEN"), 1, "{warm:?}");
        assert!(warm.get("RELEASE") <= 1, "{warm:?}");
        assert!(cold.get("READ") > 0, "{cold:?}");
        assert_eq!(
            warm.get("READ"),
            cold.get("READ"),
            "warm reads reached the server: cold {cold:?}, warm {warm:?}"
        );

        // The missing object: the open succeeds, the read fails with EIO, the log names it.
        let r = read_file(&mnt.join("gone"));
        assert_eq!(errno_of(r, "read gone"), eio());
        let text = server.log_text();
        assert!(
            text.lines()
                .any(|l| l.contains(&gone) && l.contains("missing")),
            "no log line names the missing object {gone}:\n{text}"
        );
        assert!(server.is_running(), "{}", server.log_text());
        server.stop();

        // With passthrough every open still reaches the server (it registers the backing file).
        let log = tmp.path().join("passthrough.log");
        let mut server = Server::fuse_serve(
            &image,
            &repo.join("objects"),
            "passthrough,verify=off",
            &mnt,
            &log,
        );
        read_all();
        read_all();
        let counters = server.stop();
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.contains("passthrough unavailable") || text.contains("passthrough disabled") {
            skip(
                "OPEN counts with passthrough",
                &format!("the kernel does not do FUSE passthrough here:\n{text}"),
            );
        } else {
            assert!(counters.get("OPEN") >= 2 * 20, "{counters:?}");
        }
    }
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// 4. Bad images
// ---------------------------------------------------------------------------------------------

fn put_u16(bytes: &mut [u8], at: u64, v: u16) {
    let at = at as usize;
    bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: u64, v: u32) {
    let at = at as usize;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Byte offset of the first stored byte of the data of `path` in `image` (its first block, or
/// its inline tail when it has no block).
fn data_offset(image: &[u8], path: &[u8]) -> u64 {
    let img = Image::open(image).expect("valid image");
    let inode = img
        .resolve(path)
        .expect("resolve")
        .unwrap_or_else(|| panic!("{} not in the image", path.escape_ascii()));
    let data = inode.data().expect("flat data");
    if data.head().is_empty() {
        data.tail_offset()
    } else {
        data.head_offset()
    }
}

/// Byte offset of the inode of `path` in `image`.
fn inode_offset(image: &[u8], path: &[u8]) -> u64 {
    let img = Image::open(image).expect("valid image");
    img.resolve(path)
        .expect("resolve")
        .unwrap_or_else(|| panic!("{} not in the image", path.escape_ascii()))
        .offset()
}

#[test]
fn truncated_and_corrupt_images_are_refused() {
    if !fuse_available("FUSE startup checks") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-badimg-");
    {
        let src = make_dir(tmp.path(), "src");
        for i in 0..40 {
            fs::write(
                src.join(format!("file-{i:02}")),
                pattern(i, 100 * i as usize),
            )
            .expect("write");
        }
        fs::create_dir(src.join("dir")).expect("mkdir");
        let image = tmp.path().join("good.cfs");
        let objects = tmp.path().join("objects");
        digest_store_image(&src, &image, &objects, TOOL_TIMEOUT);
        let good = fs::read(&image).expect("read the image");
        assert!(good.len() >= 3 * 4096, "{} bytes", good.len());
        let root_inode = Image::open(&good)
            .expect("valid")
            .root()
            .expect("root")
            .offset();
        let root_data = data_offset(&good, b"/");

        let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("truncated in the header", good[..512].to_vec()),
            ("truncated in the superblock", good[..1100].to_vec()),
            ("truncated to half", good[..good.len() / 2].to_vec()),
            ("last block missing", good[..good.len() - 4096].to_vec()),
            ("bad composefs magic", damaged(&|b| b[0] ^= 0xff)),
            ("bad EROFS magic", damaged(&|b| b[1024] ^= 0xff)),
            // Superblock: root NID far past the end; block count beyond the file.
            (
                "superblock root_nid",
                damaged(&|b| put_u16(b, 1038, 0xffff)),
            ),
            (
                "superblock blocks",
                damaged(&|b| put_u32(b, 1060, u32::MAX)),
            ),
            // Root inode: unknown format bits; a regular file instead of a directory.
            (
                "root inode format",
                damaged(&|b| put_u16(b, root_inode, 0xffff)),
            ),
            (
                "root inode mode",
                damaged(&|b| put_u16(b, root_inode + 4, 0o100_644)),
            ),
            // Root directory: the first entry's name offset points past the block.
            (
                "root directory entry",
                damaged(&|b| put_u16(b, root_data + 8, 0xffff)),
            ),
        ];
        let mnt = make_dir(tmp.path(), "mnt");
        let before = dev_of(&mnt);
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let bad = tmp.path().join(format!("bad-{i:02}.cfs"));
            fs::write(&bad, bytes).expect("write the bad image");
            let log = tmp.path().join(format!("bad-{i:02}.log"));
            let (status, stderr) = Server::expect_refusal(
                &[
                    OsStr::new("fuse-serve"),
                    bad.as_os_str(),
                    mnt.as_os_str(),
                    OsStr::new("--objects"),
                    objects.as_os_str(),
                ],
                &mnt,
                &log,
            );
            assert!(!status.success(), "{what}: served a bad image:\n{stderr}");
            assert_eq!(status.code(), Some(1), "{what}: {status}\n{stderr}");
            // A clear error: one line naming the image and what is wrong with it.
            let stderr = stderr.trim();
            eprintln!("{what}: {stderr}");
            assert!(
                stderr.starts_with("cfsctl: serving ") && stderr.contains(&*bad.to_string_lossy()),
                "{what}: the error does not name the image:\n{stderr}"
            );
            assert!(
                stderr.contains("invalid composefs image")
                    || stderr.contains("the image file is empty"),
                "{what}: unclear error:\n{stderr}"
            );
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            assert!(mount_at(&mnt).is_none(), "{what}: left a mount behind");
            assert_eq!(dev_of(&mnt), before, "{what}");
        }
    }
    assert_nothing_mounted_under(tmp.path());
}

/// Overwrite `bytes` at `offset` of the file at `path` (pwrite, in place: a server that has the
/// image mapped sees the change).
fn pwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path:?} for writing: {e}"));
    f.write_all_at(bytes, offset)
        .unwrap_or_else(|e| panic!("pwrite {path:?} at {offset}: {e}"));
}

#[test]
fn damage_found_while_serving_gives_eio() {
    if !fuse_available("FUSE serving of an image damaged after startup") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-damage-");
    {
        let img = SourceImage::build(tmp.path(), mkcomposefs());
        let bytes = fs::read(&img.image).expect("read the image");
        // Where to damage, found before serving: the inode of a deep directory, the second
        // block of a multi-block directory, and the data of another directory.
        let deepest = inode_offset(&bytes, b"/sub/deeper/deepest");
        let many_block = {
            let image = Image::open(&bytes).expect("valid image");
            let many = image.resolve(b"/many").expect("resolve").expect("/many");
            let data = many.data().expect("/many data");
            assert!(data.head().len() >= 2 * 4096, "/many spans several blocks");
            data.head_offset() + 4096
        };
        let hardlinks = data_offset(&bytes, b"/hardlinks");

        let mnt = make_dir(tmp.path(), "mnt");
        let log = tmp.path().join("serve.log");
        let mut server = Server::fuse_serve(&img.image, &img.objects, "", &mnt, &log);

        // Damage the served image in place; nothing below the root has been looked at yet, so
        // the kernel has nothing cached that could hide it.
        pwrite(&img.image, deepest, &[0xff, 0xff]);
        pwrite(&img.image, many_block + 8, &[0xff, 0xff]);
        pwrite(&img.image, hardlinks + 8, &[0xff, 0xff]);

        let m = mnt.clone();
        let (stat_deepest, list_many, lookup_hardlink) =
            with_timeout("reading the damaged parts", WALK_TIMEOUT, move || {
                (
                    fs::symlink_metadata(m.join("sub/deeper/deepest")),
                    count_entries(&m.join("many")),
                    fs::symlink_metadata(m.join("hardlinks/ext-a")),
                )
            });
        assert_eq!(errno_of(stat_deepest, "stat sub/deeper/deepest"), eio());
        assert_eq!(errno_of(list_many, "readdir many"), eio());
        assert_eq!(errno_of(lookup_hardlink, "lookup hardlinks/ext-a"), eio());
        // The operations failed, the server did not.
        assert!(server.is_running(), "{}", server.log_text());
        assert!(
            server.log_text().contains("damaged image"),
            "{}",
            server.log_text()
        );
        // The undamaged parts are still served.
        for name in ["s1m", "sub/deeper/file", "xattrs/file", "sub/ext-c"] {
            assert_eq!(
                content_diff(&img.src.join(name), &mnt.join(name)),
                None,
                "{name}"
            );
        }
        // A directory next to the damaged ones lists completely.
        let sub = mnt.join("sub");
        let listed = with_timeout("listing sub", WALK_TIMEOUT, move || {
            fs::read_dir(sub).and_then(|d| d.map(|e| e.map(|e| e.file_name())).collect())
        });
        let listed: BTreeSet<std::ffi::OsString> = listed.expect("list sub");
        let want: BTreeSet<std::ffi::OsString> = ["deeper", "ext-c"].map(Into::into).into();
        assert_eq!(listed, want);
        // And it still stops cleanly.
        server.stop();
    }
    assert_nothing_mounted_under(tmp.path());
}

#[test]
fn unreadable_objects_directory_is_refused() {
    if !fuse_available("FUSE startup with a missing objects directory") {
        return;
    }
    let tmp = test_dir("cfs-fuse-acc-noobj-");
    {
        let src = make_dir(tmp.path(), "src");
        fs::write(src.join("f"), b"x").expect("write");
        let image = tmp.path().join("image.cfs");
        run_ok(mkcomposefs().arg(&src).arg(&image), TOOL_TIMEOUT);
        let mnt = make_dir(tmp.path(), "mnt");
        let objects = tmp.path().join("no-objects");
        let log = tmp.path().join("serve.log");
        let (status, stderr) = Server::expect_refusal(
            &[
                OsStr::new("fuse-serve"),
                image.as_os_str(),
                mnt.as_os_str(),
                OsStr::new("--objects"),
                objects.as_os_str(),
            ],
            &mnt,
            &log,
        );
        assert!(!status.success(), "{stderr}");
        assert!(stderr.contains("objects directory"), "{stderr}");
        assert!(mount_at(&mnt).is_none(), "left a mount behind");
    }
    assert_nothing_mounted_under(tmp.path());
}

// ---------------------------------------------------------------------------------------------
// Block-level verification: every READ that reaches the server is checked
// ---------------------------------------------------------------------------------------------

/// Drop the page cache of the file at `path` (through the mount), so that its next read goes
/// to the server again.
fn drop_cached_pages(path: &Path) {
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
        .unwrap_or_else(|e| panic!("fadvise {path:?}: {e}"));
}

/// Read `len` bytes at `offset` of the file at `path`, with a timeout.
fn read_range(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let path = path.to_owned();
    with_timeout(
        &format!("reading {}", path.display()),
        WALK_TIMEOUT,
        move || {
            let f = fs::File::open(&path)?;
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        },
    )
}

/// A large object tampered far in: reads of earlier blocks succeed, a read of the tampered
/// block gives EIO (nothing hashes the whole object first). An object changed after a good
/// read is caught once its pages are dropped from the cache. Run for both digest algorithms
/// (the SHA-512 one takes the eight-lane path where the CPU has it; `CFS_HASH_PORTABLE=1`
/// forces the portable one) and with the Merkle tree saved by the importer, built and saved
/// by the server, or built in memory only.
#[test]
fn every_read_is_checked_block_by_block() {
    if !fuse_available("FUSE block-level verification") {
        return;
    }
    #[derive(Debug, PartialEq)]
    enum Tree {
        SavedAtImport,
        SavedByServer,
        InMemory,
    }
    for (algorithm, tree) in [
        ("sha256", Tree::SavedAtImport),
        ("sha512", Tree::SavedAtImport),
        ("sha512", Tree::SavedByServer),
        ("sha512", Tree::InMemory),
    ] {
        let trees = tree != Tree::InMemory;
        let tmp = test_dir("cfs-fuse-acc-blocks-");
        {
            let big = pattern(31, 24 << 20);
            let files: Vec<(&str, Vec<u8>)> =
                vec![("big", big.clone()), ("small", pattern(5, 3000))];
            let src = make_dir(tmp.path(), "src");
            for (name, content) in &files {
                fs::write(src.join(name), content).expect("write a source file");
            }
            let repo = tmp.path().join("repo");
            let image = repo_image(&repo, algorithm, &src, "img");
            let dump = image_dump(&image);
            let big_object = repo.join("objects").join(object_of(&dump, "big"));
            let small_object = repo.join("objects").join(object_of(&dump, "small"));
            let saved_tree = repo.join("cache/verity").join(object_of(&dump, "big"));
            assert!(
                saved_tree.exists(),
                "the importer saved the big object's tree"
            );
            if tree == Tree::SavedByServer {
                fs::remove_dir_all(repo.join("cache/verity")).expect("remove the saved trees");
            }
            let mnt = make_dir(tmp.path(), "mnt");
            let log = tmp.path().join("serve.log");
            // Without a usable tree directory (a file is in the way), trees live in memory.
            let not_a_dir = tmp.path().join("not-a-dir");
            fs::write(&not_a_dir, b"").expect("write a file");
            let opts = if trees {
                String::new()
            } else {
                format!("trees={}", not_a_dir.display())
            };
            let mut server = serve_from_repo(&repo, &image, &opts, &mnt, &log);
            let what = format!("{algorithm}, {tree:?}");

            // The first read loads or builds the object's tree; then one byte 20 MiB in is
            // changed in place.
            let head = read_range(&mnt.join("big"), 0, 1 << 20).expect("the first MiB reads");
            assert_eq!(head, big[..1 << 20], "{what}");
            let far = 20u64 << 20;
            pwrite(&big_object, far + 100, &[big[(far + 100) as usize] ^ 0x10]);
            let near = read_range(&mnt.join("big"), far - 8192, 8192).expect("just before");
            assert_eq!(near, big[(far - 8192) as usize..far as usize], "{what}");
            let r = read_range(&mnt.join("big"), far, 4096);
            assert_eq!(errno_of(r, "read the tampered block"), eio(), "{what}");

            // Restore it: the block reads again (the failed read cached nothing).
            pwrite(&big_object, far + 100, &[big[(far + 100) as usize]]);
            let block = read_range(&mnt.join("big"), far, 4096).expect("restored block");
            assert_eq!(block, big[far as usize..far as usize + 4096], "{what}");

            // Changed after a verified read: served from the page cache until it is dropped,
            // then the next read reaches the server and fails.
            pwrite(&big_object, far + 200, &[big[(far + 200) as usize] ^ 0x01]);
            drop_cached_pages(&mnt.join("big"));
            let r = read_range(&mnt.join("big"), far, 4096);
            assert_eq!(errno_of(r, "read the block changed later"), eio(), "{what}");
            // The same for a small object, checked whole.
            assert_eq!(read_file(&mnt.join("small")).expect("small"), files[1].1);
            let small = fs::read(&small_object).expect("read the small object");
            pwrite(&small_object, 10, &[small[10] ^ 0x01]);
            drop_cached_pages(&mnt.join("small"));
            let r = read_file(&mnt.join("small"));
            assert_eq!(
                errno_of(r, "read the small file changed later"),
                eio(),
                "{what}"
            );

            let text = server.log_text();
            assert!(
                text.lines().any(|l| l.contains("fails verification")),
                "{what}: no log line names the failure:\n{text}"
            );
            assert!(server.is_running(), "{what}: {text}");
            server.stop();
            // A server that had to build the tree saved it.
            assert!(saved_tree.exists(), "{what}: no saved tree");
            if trees {
                // A new server checks against the saved tree: the object, still changed at
                // far + 200, serves its first blocks and fails the changed one.
                let log = tmp.path().join("serve-again.log");
                let mut server = serve_from_repo(&repo, &image, "", &mnt, &log);
                let head = read_range(&mnt.join("big"), 0, 4096).expect("the first block");
                assert_eq!(head, big[..4096], "{what}");
                let r = read_range(&mnt.join("big"), far, 4096);
                assert_eq!(errno_of(r, "read the changed block again"), eio(), "{what}");
                server.stop();
            }
        }
        assert_nothing_mounted_under(tmp.path());
    }
}
