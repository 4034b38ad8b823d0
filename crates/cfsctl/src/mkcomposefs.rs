//! `mkcomposefs`: build a composefs image from a directory or a dumpfile, compatible with the C
//! tool's options and version rules.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cfs_format::erofs::writer::{write_image, WriteOptions};
use cfs_format::erofs::FormatVersion;
use cfs_format::{dumpfile, fsverity, Algorithm, Tree};
use clap::Parser;

use crate::output::write_output;

/// Create a composefs image.
#[derive(Parser, Debug)]
#[command(name = "mkcomposefs", version)]
struct Args {
    /// SOURCE is a dumpfile (`-` for stdin) rather than a directory.
    #[arg(long)]
    from_file: bool,
    /// Copy file contents into DIR/XX/<rest-of-digest>.
    #[arg(long, value_name = "DIR")]
    digest_store: Option<PathBuf>,
    /// Print the fs-verity digest of the image after writing it.
    #[arg(long)]
    print_digest: bool,
    /// Print the fs-verity digest of the image and write no image.
    #[arg(long)]
    print_digest_only: bool,
    /// Lowest format version to write.
    #[arg(long, value_name = "N")]
    min_version: Option<u32>,
    /// Highest format version a whiteout may raise the image to.
    #[arg(long, value_name = "N")]
    max_version: Option<u32>,
    /// Set every mtime to 0.
    #[arg(long)]
    use_epoch: bool,
    /// Leave out character and block devices.
    #[arg(long)]
    skip_devices: bool,
    /// Leave out all extended attributes.
    #[arg(long)]
    skip_xattrs: bool,
    /// Keep only `user.` extended attributes.
    #[arg(long)]
    user_xattrs: bool,
    /// Threads for digests and the digest store (default: available CPUs).
    #[arg(long, value_name = "N")]
    threads: Option<String>,
    /// Keep the source's hardlinks instead of copying each link (C breaks them).
    #[arg(long)]
    hardlinks: bool,
    /// Directory, or dumpfile with --from-file.
    source: PathBuf,
    /// Image to write (`-` for stdout).
    image: Option<PathBuf>,
}

/// C's version rules: with neither option the range is 0..=1; with one, the other defaults to 0.
fn write_options(min: Option<u32>, max: Option<u32>) -> Result<WriteOptions> {
    let (min, max) = match (min, max) {
        (None, None) => (0, 1),
        (min, max) => (min.unwrap_or(0), max.unwrap_or(0)),
    };
    let version = |n: u32, what: &str| {
        FormatVersion::from_number(n)
            .with_context(|| format!("invalid {what} {n}: supported versions are 0 and 1"))
    };
    let min_version = version(min, "--min-version")?;
    let max_version = version(max.max(min), "--max-version")?;
    Ok(WriteOptions {
        min_version,
        max_version,
    })
}

fn parse_threads(arg: Option<&str>) -> Result<usize> {
    match arg {
        None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n > 0 => Ok(n as usize),
            _ => bail!("Invalid threads count {s:?}"),
        },
    }
}

pub fn main(args: Vec<OsString>) -> Result<ExitCode> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(e.exit_code() as u8));
        }
    };
    let opts = write_options(args.min_version, args.max_version)?;
    let threads = parse_threads(args.threads.as_deref())?;
    if args.print_digest_only && args.image.is_some() {
        bail!("--print-digest-only takes no IMAGE argument");
    }
    if !args.print_digest_only && args.image.is_none() {
        bail!("no IMAGE given (use --print-digest-only to only print the digest)");
    }
    if args.skip_xattrs && args.user_xattrs {
        bail!("--skip-xattrs and --user-xattrs cannot be used together");
    }

    let tree = if args.from_file {
        load_dumpfile(&args)?
    } else {
        scan_source(&args, threads)?
    };
    let image = write_image(&tree, &opts).context("cannot write image")?;

    if let Some(path) = &args.image {
        write_output(path, &image)?;
    }
    if args.print_digest || args.print_digest_only {
        let digest = fsverity::digest(Algorithm::Sha256, &image);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", digest.to_hex()).context("writing digest to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn load_dumpfile(args: &Args) -> Result<Tree> {
    let name = args.source.display().to_string();
    let mut text = Vec::new();
    if args.source.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .read_to_end(&mut text)
            .context("reading dumpfile from stdin")?;
    } else {
        text = std::fs::read(&args.source).with_context(|| format!("reading dumpfile {name}"))?;
    }
    let parse_opts = dumpfile::ParseOptions {
        strict: std::env::var_os("CFS_PARSE_STRICT").is_some(),
    };
    // Like C, the directory read options (--use-epoch, --skip-*) do not apply to dumpfiles.
    dumpfile::parse(&text, &parse_opts).with_context(|| format!("parsing {name}"))
}

fn scan_source(args: &Args, threads: usize) -> Result<Tree> {
    use cfs_repo::scan;
    let opts = scan::ScanOptions {
        use_epoch: args.use_epoch,
        skip_devices: args.skip_devices,
        skip_xattrs: args.skip_xattrs,
        user_xattrs: args.user_xattrs,
        hardlinks: args.hardlinks,
        threads,
        ..scan::ScanOptions::mkcomposefs()
    };
    // The scanner's errors already name the path and the phase that failed.
    let tree = scan::scan_directory(&args.source, &opts)?;
    if let Some(store) = &args.digest_store {
        scan::fill_digest_store(&tree, &args.source, store, threads)?;
    }
    Ok(tree)
}
