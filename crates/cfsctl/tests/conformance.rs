//! The C composefs test vectors (`tests/conformance/composefs-c/` at the repository root): every vector compiles to
//! the image C `mkcomposefs` writes (plain sha256 pinned), survives a dump → mkcomposefs round
//! trip byte for byte, dumps back to its input (after normalisation), and passes `fsck.erofs`.
//! Every should-fail vector is rejected with a line number and leaves no file behind.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{fsck_erofs, run_ok, skip};
use sha2::{Digest as _, Sha256};

fn conformance_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("CFS_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/composefs-c"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    skip(
        "the C conformance vectors",
        &format!("no vectors at {} (set CFS_CONFORMANCE_DIR)", dir.display()),
    );
    None
}

fn mkcomposefs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mkcomposefs"))
}

fn composefs_info() -> Command {
    Command::new(env!("CARGO_BIN_EXE_composefs-info"))
}

fn run(cmd: &mut Command) -> Output {
    run_ok(cmd, Duration::from_secs(300))
}

/// Read a vector, gunzipping `.gz` files.
fn read_vector(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("gunzip {}: {e}", path.display()));
        out
    } else {
        raw
    }
}

struct Vector {
    name: String,
    input: PathBuf,
    sha256: String,
    version: Option<String>,
}

fn vectors(dir: &Path) -> Vec<Vector> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("listing conformance dir") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_owned();
        let Some(input_name) = name.strip_suffix(".sha256") else {
            continue;
        };
        let input = dir.join(input_name);
        if !input.exists() {
            continue; // C ships some digests without their (large) inputs.
        }
        let base = input_name.trim_end_matches(".gz");
        let version = std::fs::read_to_string(dir.join(format!("{base}.version")))
            .ok()
            .map(|v| v.trim().to_owned());
        let sha256 = std::fs::read_to_string(&path)
            .expect("reading sha256")
            .trim()
            .to_owned();
        out.push(Vector {
            name: input_name.to_owned(),
            input,
            sha256,
            version,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn version_args(v: &Vector) -> Vec<String> {
    match &v.version {
        Some(n) => vec![format!("--min-version={n}"), format!("--max-version={n}")],
        None => vec![],
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn vectors_compile_to_c_images_and_round_trip() {
    let Some(dir) = conformance_dir() else { return };
    let vectors = vectors(&dir);
    assert_eq!(
        vectors.len(),
        14,
        "expected the 14 C vectors that have inputs"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for v in &vectors {
        let input = tmp.path().join(format!("{}.dump", v.name));
        std::fs::write(&input, read_vector(&v.input)).expect("writing input");
        let image = tmp.path().join(format!("{}.img", v.name));
        run(mkcomposefs()
            .args(version_args(v))
            .arg("--from-file")
            .arg(&input)
            .arg(&image));
        let bytes = std::fs::read(&image).expect("reading image");
        let got = sha256_hex(&bytes);
        if got != v.sha256 {
            failures.push(format!(
                "{}: image sha256 {got}, C wrote {}",
                v.name, v.sha256
            ));
            continue;
        }
        fsck_erofs(&image);

        // dump → mkcomposefs gives the same bytes.
        let dump = run(composefs_info().arg("dump").arg(&image)).stdout;
        let redump = tmp.path().join(format!("{}.redump", v.name));
        std::fs::write(&redump, &dump).expect("writing dump");
        let image2 = tmp.path().join(format!("{}.2.img", v.name));
        run(mkcomposefs()
            .args(version_args(v))
            .arg("--from-file")
            .arg(&redump)
            .arg(&image2));
        if std::fs::read(&image2).expect("reading image2") != bytes {
            failures.push(format!("{}: dump → mkcomposefs changed the image", v.name));
        }

        // The dump says what the input said.
        let original = normalise(&read_vector(&v.input));
        let dumped = normalise(&dump);
        if original != dumped {
            let first = original
                .iter()
                .zip(&dumped)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("\n  input: {}\n  dump:  {}", clip(a), clip(b)))
                .unwrap_or_else(|| format!(" ({} vs {} lines)", original.len(), dumped.len()));
            failures.push(format!("{}: dump differs from input{first}", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

fn clip(line: &str) -> String {
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

/// Normalise a dumpfile for comparison: canonical escapes, sorted xattrs, and the fields C
/// recomputes (directory size and nlink, hardlink metadata, mode bits above 16) blanked. The V1
/// `opaque=x` markers are what C's dump shows for directories holding whiteouts, so they are
/// dropped too.
fn normalise(text: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let fields: Vec<Vec<u8>> = line.split(|&b| b == b' ').map(unescape).collect();
        let get = |i: usize| fields.get(i).cloned().unwrap_or_default();
        let mode_field = String::from_utf8_lossy(&get(2)).into_owned();
        let hardlink = mode_field.starts_with('@');
        let mode = u32::from_str_radix(mode_field.trim_start_matches('@'), 8).unwrap_or(0) & 0xFFFF;
        let is_dir = mode & 0o170000 == 0o040000;
        let is_symlink = mode & 0o170000 == 0o120000;
        let path = escape(&get(0));
        if hardlink {
            lines.push(format!("{path} @ {}", escape(&get(8))));
            continue;
        }
        let is_regular = mode & 0o170000 == 0o100000;
        // SIZE means nothing for directories (recomputed) and special files (always 0).
        let size = if is_symlink {
            get(8).len().to_string()
        } else if is_regular {
            escape(&get(1))
        } else {
            "-".into()
        };
        let nlink = if is_dir { "-".into() } else { escape(&get(3)) };
        let rdev = if matches!(mode & 0o170000, 0o020000 | 0o060000) {
            escape(&get(6))
        } else {
            "0".into()
        };
        let mut xattrs: Vec<String> = fields
            .iter()
            .skip(11)
            .filter(|x| !x.is_empty())
            .filter(|x| {
                x.as_slice() != b"trusted.overlay.opaque=x"
                    && x.as_slice() != b"user.overlay.opaque=x"
            })
            .map(|x| escape(x))
            .collect();
        xattrs.sort();
        lines.push(format!(
            "{path} {size} {mode:o} {nlink} {} {} {rdev} {} {} {} {} {}",
            escape(&get(4)),
            escape(&get(5)),
            escape(&get(7)),
            escape(&get(8)),
            escape(&get(9)),
            escape(&get(10)).to_lowercase(),
            xattrs.join(" ")
        ));
    }
    lines
}

fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 1 < field.len() {
            match field[i + 1] {
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' if i + 4 <= field.len() => {
                    let hex = std::str::from_utf8(&field[i + 2..i + 4]).unwrap_or("00");
                    out.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 4;
                    continue;
                }
                other => out.push(other),
            }
            i += 2;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Canonical form of a field; a missing trailing field (C reads it as empty) is `-`.
fn escape(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "-".into();
    }
    bytes
        .iter()
        .map(|&b| match b {
            0x21..=0x7e if b != b'\\' => (b as char).to_string(),
            _ => format!("\\x{b:02x}"),
        })
        .collect()
}

#[test]
fn should_fail_vectors_are_rejected_with_a_line_number() {
    let Some(dir) = conformance_dir() else { return };
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("listing conformance dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("should-fail-") && n.ends_with(".dump"))
        })
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 14, "expected 14 should-fail vectors");
    for case in cases {
        let out_dir = tempfile::tempdir().expect("tempdir");
        let image = out_dir.path().join("out.img");
        let out = mkcomposefs()
            .arg("--from-file")
            .arg(&case)
            .arg(&image)
            .stdout(Stdio::null())
            .output()
            .expect("running mkcomposefs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", case.display());
        assert!(
            stderr.contains("line "),
            "{}: error does not name the line: {stderr}",
            case.display()
        );
        let left: Vec<_> = std::fs::read_dir(out_dir.path())
            .expect("listing")
            .collect();
        assert!(
            left.is_empty(),
            "{}: files left behind: {left:?}",
            case.display()
        );
    }
}
