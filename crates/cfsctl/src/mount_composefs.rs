//! `mount.composefs`: mount a composefs image file (docs/formats.md §10.5), as the C tool does, and
//! as the helper `mount -t composefs IMAGE MOUNTPOINT -o …` runs.
//!
//! util-linux calls helpers as `/sbin/mount.composefs SOURCE TARGET [-s] [-f] [-n] [-v]
//! [-o OPTIONS] [-t TYPE] [-N NS]` (`-r`/`-w` of mount(8) arrive as `ro`/`rw` inside `-o`), so
//! flags may follow the operands. It searches only `/sbin`, `/sbin/fs.d` and `/sbin/fs` for
//! the helper; `PATH` plays no part.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cfs_format::{fsverity, Digest};
use cfs_mount::{mount_composefs, LayerDir, MountRequest, VerityMode};

const USAGE: &str = "\
usage: mount.composefs [-t composefs] [-o OPTIONS] IMAGE MOUNTPOINT

Mount the composefs image IMAGE at MOUNTPOINT: the image as a read-only EROFS lower layer of an
overlayfs whose data layers are the object directories. Also run by
`mount -t composefs IMAGE MOUNTPOINT -o OPTIONS`.

Flags: -o OPTIONS (repeatable), -t composefs, -r (= -o ro), -w (= -o rw), -s (ignore unknown
options), -v (say what was mounted), -f (check everything, mount nothing), -n (accepted; there
is no mtab), -h/--help.
";

/// The options `-o` understands, for messages.
const VALID_OPTIONS: &str = "basedir=PATH[:PATH...], digest=HEX, verity, tryverity, \
     upperdir=PATH, workdir=PATH, ro, rw; ignored: defaults, auto, noauto, nofail, _netdev, x-*";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Help,
    Mount(Invocation),
}

/// A parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Invocation {
    image: PathBuf,
    mountpoint: PathBuf,
    options: Options,
    verbose: bool,
    /// `-f`: do everything up to the mount itself.
    fake: bool,
}

/// The parsed `-o` options.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    basedirs: Vec<PathBuf>,
    digest: Option<Digest>,
    verity: VerityMode,
    /// `rw` was given (it overrides `ro` wherever it appears).
    rw: bool,
    upperdir: Option<PathBuf>,
    workdir: Option<PathBuf>,
}

/// Run `mount.composefs` (`args[0]` is the program name).
pub(crate) fn main(args: Vec<OsString>) -> Result<ExitCode> {
    let inv = match parse_args(args.get(1..).unwrap_or_default())? {
        Command::Help => {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Command::Mount(inv) => inv,
    };
    mount(&inv)?;
    Ok(ExitCode::SUCCESS)
}

fn mount(inv: &Invocation) -> Result<()> {
    let opts = &inv.options;
    if opts.basedirs.is_empty() {
        bail!("the basedir=PATH option is required (valid options: {VALID_OPTIONS})");
    }
    let image = File::open(&inv.image)
        .with_context(|| format!("cannot open image {}", inv.image.display()))?;
    let source_name = match &opts.digest {
        Some(expected) => {
            check_digest(&image, &inv.image, expected)?;
            expected.to_hex()
        }
        None => source_name(&inv.image),
    };
    let mut req = MountRequest::new(image.as_fd(), source_name)
        .with_context(|| format!("{} is not a usable composefs image", inv.image.display()))?;
    req.basedirs = opts.basedirs.iter().cloned().map(LayerDir::Path).collect();
    req.verity = opts.verity;
    req.upperdir.clone_from(&opts.upperdir);
    req.workdir.clone_from(&opts.workdir);
    // Without an upper layer overlayfs is read-only whatever the mount flags say, so `rw`
    // only changes anything together with upperdir=.
    req.read_write = opts.rw && opts.upperdir.is_some();
    if inv.fake {
        return Ok(());
    }
    let mount =
        mount_composefs(&req).with_context(|| format!("cannot mount {}", inv.image.display()))?;
    mount
        .attach(&inv.mountpoint)
        .with_context(|| format!("cannot mount {}", inv.image.display()))?;
    if inv.verbose {
        eprintln!(
            "mount.composefs: mounted {} at {} (source composefs:{})",
            inv.image.display(),
            inv.mountpoint.display(),
            req.source_name
        );
    }
    Ok(())
}

/// What the mount shows as its source (`composefs:<name>`) without `digest=`: the image's file
/// name, or the whole digest when the path is a repository object `…/XX/<rest>`. mount(8)
/// resolves symlinks in the source path, so `mount -t composefs REPO/images/<id>` reaches us as
/// `REPO/objects/<id[..2]>/<id[2..]>`, whose file name alone would be a truncated id.
fn source_name(image: &Path) -> String {
    let file = image
        .file_name()
        .unwrap_or(image.as_os_str())
        .to_string_lossy()
        .into_owned();
    let fan_out = image
        .parent()
        .and_then(Path::file_name)
        .and_then(OsStr::to_str)
        .filter(|d| d.len() == 2);
    if let Some(fan_out) = fan_out {
        let joined = format!("{fan_out}{file}");
        if Digest::from_hex(&joined).is_ok_and(|d| d.to_hex() == joined) {
            return joined;
        }
    }
    file
}

/// Fail unless `image` has the fs-verity digest `expected`: the kernel's measurement when the
/// file has fs-verity, else the digest computed here over the same open file (our kernels have
/// no fs-verity).
fn check_digest(image: &File, path: &Path, expected: &Digest) -> Result<()> {
    use cfs_repo::verity::{measure, MeasureError};
    let (actual, how) = match measure(image) {
        Ok(d) => (d, "measured by the kernel"),
        Err(MeasureError::NotSupported | MeasureError::NotEnabled) => (
            fsverity::digest_reader(expected.algorithm(), image)
                .with_context(|| format!("reading image {}", path.display()))?,
            "computed in userspace: the image has no kernel fs-verity",
        ),
        Err(e) => return Err(e).with_context(|| format!("measuring {}", path.display())),
    };
    if actual != *expected {
        bail!(
            "image {} has fs-verity digest {} ({how}), but digest={} was required",
            path.display(),
            actual.to_hex(),
            expected.to_hex()
        );
    }
    Ok(())
}

/// Parse the arguments after the program name.
fn parse_args(args: &[OsString]) -> Result<Command> {
    let mut operands: Vec<&OsStr> = Vec::new();
    let mut option_strings: Vec<&[u8]> = Vec::new();
    let (mut verbose, mut fake, mut sloppy) = (false, false, false);
    let mut iter = args.iter();
    let mut only_operands = false;
    while let Some(arg) = iter.next() {
        let bytes = arg.as_bytes();
        if only_operands || bytes.len() < 2 || bytes[0] != b'-' {
            operands.push(arg);
            continue;
        }
        match bytes {
            b"--" => {
                only_operands = true;
                continue;
            }
            b"--help" => return Ok(Command::Help),
            _ if bytes.starts_with(b"--") => {
                bail!("unknown option {}\n{USAGE}", arg.to_string_lossy())
            }
            _ => {}
        }
        // A cluster of short flags; `o`, `t` and `N` take the rest or the next argument.
        let mut rest = &bytes[1..];
        while let Some((&flag, tail)) = rest.split_first() {
            rest = tail;
            match flag {
                b'o' | b't' | b'N' => {
                    let value: &[u8] = if rest.is_empty() {
                        iter.next()
                            .with_context(|| format!("-{} needs a value", flag as char))?
                            .as_bytes()
                    } else {
                        std::mem::take(&mut rest)
                    };
                    match flag {
                        b'o' => option_strings.push(value),
                        b't' => {
                            if value != b"composefs" {
                                bail!(
                                    "unsupported filesystem type '{}' (only composefs)",
                                    value.escape_ascii()
                                );
                            }
                        }
                        _ => bail!("-N (mount in another namespace) is not supported"),
                    }
                }
                b'r' => option_strings.push(b"ro"),
                b'w' => option_strings.push(b"rw"),
                b'v' => verbose = true,
                b'f' => fake = true,
                b's' => sloppy = true,
                b'n' => {}
                b'h' => return Ok(Command::Help),
                other => bail!("unknown flag -{}\n{USAGE}", other.escape_ascii()),
            }
        }
    }
    let [image, mountpoint] = operands[..] else {
        bail!(
            "expected IMAGE and MOUNTPOINT, got {} operand(s)\n{USAGE}",
            operands.len()
        );
    };
    let mut options = Options::default();
    for s in option_strings {
        parse_options(s, sloppy, &mut options)?;
    }
    Ok(Command::Mount(Invocation {
        image: image.into(),
        mountpoint: mountpoint.into(),
        options,
        verbose,
        fake,
    }))
}

/// Add the comma-separated `-o` options in `text` to `opts`. `\` escapes the next byte (a
/// comma, a colon or a backslash) in names and values.
fn parse_options(text: &[u8], sloppy: bool, opts: &mut Options) -> Result<()> {
    for item in split_escaped(text, b',') {
        if item.is_empty() {
            continue;
        }
        let (key, value) = match item.iter().position(|&b| b == b'=') {
            Some(i) => (unescape(&item[..i]), Some(&item[i + 1..])),
            None => (unescape(item), None),
        };
        let path = |v: &[u8]| PathBuf::from(OsString::from_vec(unescape(v)));
        match (&key[..], value) {
            (b"basedir", Some(v)) => {
                opts.basedirs.extend(
                    split_escaped(v, b':')
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .map(path),
                );
            }
            (b"digest", Some(v)) => {
                let hex = String::from_utf8_lossy(&unescape(v)).into_owned();
                let digest = Digest::from_hex(&hex).with_context(|| {
                    format!("invalid digest={hex}: expected 64 (sha256) or 128 hex digits")
                })?;
                opts.digest = Some(digest);
                opts.verity = VerityMode::Require;
            }
            (b"verity", None) => opts.verity = VerityMode::Require,
            (b"tryverity", None) => {
                if opts.verity == VerityMode::Off {
                    opts.verity = VerityMode::Try;
                }
            }
            (b"upperdir", Some(v)) => opts.upperdir = Some(path(v)),
            (b"workdir", Some(v)) => opts.workdir = Some(path(v)),
            (b"ro", None) => {}
            (b"rw", None) => opts.rw = true,
            (b"idmap", Some(_)) => {
                bail!("idmap= is not supported: idmapped composefs mounts are not implemented")
            }
            (b"defaults" | b"auto" | b"noauto" | b"nofail" | b"_netdev", None) => {}
            (k, _) if k.starts_with(b"x-") => {}
            _ if sloppy => {}
            (k, v) => {
                let shown = String::from_utf8_lossy(k);
                let known = matches!(
                    k,
                    b"basedir"
                        | b"digest"
                        | b"verity"
                        | b"tryverity"
                        | b"upperdir"
                        | b"workdir"
                        | b"ro"
                        | b"rw"
                        | b"idmap"
                );
                if known {
                    let how = if v.is_some() {
                        "takes no value"
                    } else {
                        "needs a value"
                    };
                    bail!("option '{shown}' {how} (valid options: {VALID_OPTIONS})");
                }
                bail!("unknown option '{shown}' (valid options: {VALID_OPTIONS})");
            }
        }
    }
    Ok(())
}

/// Split `text` at each `sep` not preceded by an escaping `\`; escapes are kept.
fn split_escaped(text: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < text.len() {
        if text[i] == b'\\' {
            i += 2;
            continue;
        }
        if text[i] == sep {
            parts.push(&text[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// Drop each escaping `\`, keeping the byte after it.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter();
    while let Some(&b) = bytes.next() {
        if b == b'\\' {
            if let Some(&next) = bytes.next() {
                out.push(next);
            }
        } else {
            out.push(b);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn invocation(list: &[&str]) -> Invocation {
        match parse_args(&args(list)).expect("valid command line") {
            Command::Mount(inv) => inv,
            Command::Help => panic!("unexpected help"),
        }
    }

    fn error(list: &[&str]) -> String {
        format!(
            "{:#}",
            parse_args(&args(list)).expect_err("invalid command line")
        )
    }

    #[test]
    fn util_linux_calling_convention() {
        // mount(8): `/sbin/mount.composefs SRC DIR -n -v -o opts`.
        let inv = invocation(&["img", "/mnt", "-n", "-v", "-o", "ro,basedir=/objs"]);
        assert_eq!(inv.image, Path::new("img"));
        assert_eq!(inv.mountpoint, Path::new("/mnt"));
        assert!(inv.verbose && !inv.fake);
        assert_eq!(inv.options.basedirs, [PathBuf::from("/objs")]);
        assert!(!inv.options.rw);
        // The documented order, glued values, flag clusters and a sub-type check.
        let inv = invocation(&["-t", "composefs", "-obasedir=/a", "-svf", "i", "m"]);
        assert_eq!(inv.options.basedirs, [PathBuf::from("/a")]);
        assert!(inv.verbose && inv.fake);
        assert!(error(&["-t", "ext4", "i", "m"]).contains("unsupported filesystem type 'ext4'"));
        assert!(error(&["i"]).contains("expected IMAGE and MOUNTPOINT, got 1"));
        assert!(error(&["i", "m", "x"]).contains("got 3"));
        assert!(error(&["-q", "i", "m"]).contains("unknown flag -q"));
        assert!(error(&["i", "m", "-o"]).contains("-o needs a value"));
        assert_eq!(parse_args(&args(&["--help"])).expect("help"), Command::Help);
        // After `--` everything is an operand.
        let inv = invocation(&["-o", "basedir=b", "--", "-img", "m"]);
        assert_eq!(inv.image, Path::new("-img"));
    }

    #[test]
    fn options_and_escapes() {
        let inv = invocation(&[
            "i",
            "m",
            "-o",
            r"basedir=/a:/b\:c:/d\,e,upperdir=/u\\p,workdir=/w",
            "-o",
            "tryverity",
        ]);
        assert_eq!(
            inv.options.basedirs,
            [
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d,e")
            ]
        );
        assert_eq!(inv.options.upperdir, Some(PathBuf::from(r"/u\p")));
        assert_eq!(inv.options.workdir, Some(PathBuf::from("/w")));
        assert_eq!(inv.options.verity, VerityMode::Try);
        // verity wins over tryverity in either order; digest= implies verity.
        let inv = invocation(&["i", "m", "-o", "verity,tryverity"]);
        assert_eq!(inv.options.verity, VerityMode::Require);
        let hex = "ab".repeat(32);
        let inv = invocation(&["i", "m", "-o", &format!("digest={hex}")]);
        assert_eq!(inv.options.verity, VerityMode::Require);
        assert_eq!(inv.options.digest.map(|d| d.to_hex()), Some(hex));
        assert!(error(&["i", "m", "-o", "digest=xyz"]).contains("invalid digest=xyz"));
        // rw overrides ro wherever it is; -r/-w are ro/rw.
        assert!(invocation(&["i", "m", "-o", "rw,ro"]).options.rw);
        assert!(invocation(&["-w", "i", "m", "-o", "ro"]).options.rw);
        assert!(!invocation(&["-r", "i", "m"]).options.rw);
        // fstab-only options pass.
        let inv = invocation(&["i", "m", "-o", "defaults,nofail,x-systemd.after=foo"]);
        assert_eq!(inv.options, Options::default());
    }

    #[test]
    fn bad_options_are_explained() {
        let err = error(&["i", "m", "-o", "basedir=/o,frobnicate"]);
        assert!(err.contains("unknown option 'frobnicate'"), "{err}");
        assert!(err.contains(VALID_OPTIONS), "{err}");
        assert!(error(&["i", "m", "-o", "verity=1"]).contains("'verity' takes no value"));
        assert!(error(&["i", "m", "-o", "basedir"]).contains("'basedir' needs a value"));
        let err = error(&["i", "m", "-o", "idmap=/proc/1/ns/user"]);
        assert!(err.contains("idmap= is not supported"), "{err}");
        // -s: unknown options are ignored.
        let inv = invocation(&["-s", "i", "m", "-o", "frobnicate,basedir=/o"]);
        assert_eq!(inv.options.basedirs, [PathBuf::from("/o")]);
    }

    #[test]
    fn source_names_restore_object_ids() {
        let hex = "ab".repeat(32);
        let object = format!("/repo/objects/{}/{}", &hex[..2], &hex[2..]);
        assert_eq!(source_name(Path::new(&object)), hex);
        let long = "0f".repeat(64);
        let object = format!("objects/{}/{}", &long[..2], &long[2..]);
        assert_eq!(source_name(Path::new(&object)), long);
        assert_eq!(source_name(Path::new("/x/image.cfs")), "image.cfs");
        assert_eq!(source_name(Path::new(&format!("/images/{hex}"))), hex);
        // Not a digest: too short, upper case, or a non-hex fan-out directory.
        assert_eq!(source_name(Path::new("/ab/cdef")), "cdef");
        let upper = hex.to_uppercase();
        let path = format!("/{}/{}", &upper[..2], &upper[2..]);
        assert_eq!(source_name(Path::new(&path)), &upper[2..]);
        let path = format!("/zz/{}", &hex[2..]);
        assert_eq!(source_name(Path::new(&path)), &hex[2..]);
    }

    #[test]
    fn splitting_respects_escapes() {
        assert_eq!(
            split_escaped(br"a,b\,c,,d\\,e", b','),
            [&b"a"[..], br"b\,c", b"", br"d\\", b"e"]
        );
        assert_eq!(unescape(br"a\,b\\c\"), b"a,b\\c");
    }
}
