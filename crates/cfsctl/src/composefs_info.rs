//! `composefs-info`: inspect composefs images and measure files, compatible with the C tool.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cfs_format::erofs::reader;
use cfs_format::{fsverity, Algorithm};
use clap::{Parser, ValueEnum};

/// Show information about composefs images.
#[derive(Parser, Debug)]
#[command(name = "composefs-info", version)]
struct Args {
    /// Only show these top-level names (repeatable; `ls` and `dump`).
    #[arg(long, value_name = "NAME")]
    filter: Vec<OsString>,
    /// Object directory for `missing-objects`.
    #[arg(long, value_name = "DIR")]
    basedir: Option<PathBuf>,
    /// What to show.
    command: Action,
    /// Images (or, for `measure-file`, any files).
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Action {
    /// List paths, with `/` after directories, `-> target` for symlinks, `@ object` for external files.
    Ls,
    /// Print the image as a composefs dumpfile.
    Dump,
    /// List the objects the images refer to.
    Objects,
    /// List referenced objects absent from --basedir.
    MissingObjects,
    /// Print the fs-verity (sha256) digest of files.
    MeasureFile,
}

pub fn main(args: Vec<OsString>) -> Result<ExitCode> {
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(e.exit_code() as u8));
        }
    };
    let filter: Vec<&[u8]> = args.filter.iter().map(|f| f.as_bytes()).collect();
    if let Some(bad) = filter.iter().find(|f| f.contains(&b'/')) {
        bail!(
            "--filter takes top-level names, not paths: {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.command {
        Action::Ls | Action::Dump => {
            for path in &args.files {
                let image = read_image(path)?;
                let result = match args.command {
                    Action::Ls => reader::ls(&image, &mut out, &filter),
                    _ => reader::dump(&image, &mut out, &filter),
                };
                result.with_context(|| format!("reading image {}", path.display()))?;
            }
        }
        Action::Objects | Action::MissingObjects => {
            let basedir = match args.command {
                Action::MissingObjects => Some(
                    args.basedir
                        .as_deref()
                        .context("missing-objects needs --basedir DIR")?,
                ),
                _ => None,
            };
            let mut all = BTreeSet::new();
            for path in &args.files {
                let image = read_image(path)?;
                all.extend(
                    reader::objects(&image)
                        .with_context(|| format!("reading image {}", path.display()))?,
                );
            }
            for object in all {
                if let Some(base) = basedir {
                    let rel = Path::new(std::ffi::OsStr::from_bytes(&object));
                    if base.join(rel).exists() {
                        continue;
                    }
                }
                out.write_all(&object)?;
                out.write_all(b"\n")?;
            }
        }
        Action::MeasureFile => {
            for path in &args.files {
                let digest = measure_file(path)?;
                writeln!(out, "{}", digest.to_hex())?;
            }
        }
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn read_image(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading image {}", path.display()))
}

/// The kernel's digest when the file has fs-verity, else the same digest computed here.
fn measure_file(path: &Path) -> Result<cfs_format::Digest> {
    use cfs_repo::verity::{measure, MeasureError};
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    match measure(&file) {
        Ok(d) => Ok(d),
        Err(MeasureError::NotSupported | MeasureError::NotEnabled) => {
            fsverity::digest_reader(Algorithm::Sha256, &file)
                .with_context(|| format!("reading {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("measuring {}", path.display())),
    }
}
