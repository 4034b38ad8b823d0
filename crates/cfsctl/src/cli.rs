//! The `cfsctl` command set: repository commands over `cfs-repo`, mounts over `cfs-mount`.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use cfs_format::erofs::writer::{write_image, WriteOptions};
use cfs_format::erofs::FormatVersion;
use cfs_format::transform::{transform_for_oci, XattrPolicy};
use cfs_format::{dumpfile, fsverity, Algorithm, Tree};
use cfs_repo::repo::{GcOptions, InitOptions, OpenOptions, Repository};
use cfs_repo::scan::{self, ContentSink, HashOnly, ScanOptions};

use crate::progress::{CountingSink, PhaseBar};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// composefs: read-only images over a content-addressed object store.
#[derive(Parser, Debug)]
#[command(name = "cfsctl", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Which repository, and how to treat it.
#[derive(Args, Debug)]
struct Global {
    /// Repository path (default: --system for root, --user otherwise).
    #[arg(long, global = true, value_name = "PATH")]
    repo: Option<PathBuf>,
    /// Use the user repository ($HOME/.var/lib/composefs).
    #[arg(long, global = true, conflicts_with_all = ["repo", "system"])]
    user: bool,
    /// Use the system repository (/sysroot/composefs).
    #[arg(long, global = true, conflicts_with_all = ["repo", "user"])]
    system: bool,
    /// Hash algorithm; must agree with the repository's meta.json when one is used.
    #[arg(long, global = true, value_enum)]
    hash: Option<HashArg>,
    /// Refuse repositories without fs-verity.
    #[arg(long, global = true)]
    require_verity: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum HashArg {
    Sha256,
    Sha512,
}

impl From<HashArg> for Algorithm {
    fn from(h: HashArg) -> Algorithm {
        match h {
            HashArg::Sha256 => Algorithm::Sha256,
            HashArg::Sha512 => Algorithm::Sha512,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum AlgorithmArg {
    #[value(name = "fsverity-sha256-12")]
    Sha256,
    #[value(name = "fsverity-sha512-12")]
    Sha512,
}

/// How a directory is read into an image.
#[derive(Args, Debug, Clone)]
struct ReadOptions {
    /// Keep the tree exactly as on disk (with every xattr) instead of the OCI-style transform
    /// (root takes /usr's metadata, /run emptied, xattrs filtered).
    #[arg(long)]
    no_propagate_usr_to_root: bool,
    /// Which xattrs the OCI-style transform keeps.
    #[arg(long, value_name = "POLICY", default_value = "allowlist-only")]
    xattrs: XattrPolicy,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository (a no-op if it exists with the same settings).
    Init {
        /// Where (default: the selected repository path).
        path: Option<PathBuf>,
        /// fs-verity algorithm naming the objects.
        #[arg(long, value_enum, default_value = "fsverity-sha512-12")]
        algorithm: AlgorithmArg,
        /// Do not require fs-verity (filesystems or kernels without it).
        #[arg(long)]
        insecure: bool,
        /// Default EROFS format version of images.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1))]
        erofs_version: u32,
    },
    /// Hold the repository open (shared lock) until killed.
    Transaction,
    /// Build an image from a directory, store its files and the image; print the image id.
    CreateImage {
        /// The directory.
        path: PathBuf,
        /// Also name the image (images/refs/NAME).
        name: Option<String>,
        #[command(flatten)]
        read: ReadOptions,
    },
    /// Print the image id a directory would get, storing nothing.
    ComputeId {
        /// The directory.
        path: PathBuf,
        #[command(flatten)]
        read: ReadOptions,
    },
    /// Print the dumpfile of the image a directory would get.
    CreateDumpfile {
        /// The directory.
        path: PathBuf,
        #[command(flatten)]
        read: ReadOptions,
    },
    /// Store an EROFS image read from stdin under images/refs/REF; print its id.
    ImportImage {
        /// The name.
        reference: String,
    },
    /// List the objects an image refers to.
    ImageObjects {
        /// Image id or name.
        name: String,
    },
    /// List images.
    #[command(alias = "list-images")]
    Images {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a stream's reassembled content to stdout.
    Cat {
        /// Stream id or refs/NAME.
        name: String,
    },
    /// Remove objects, images and streams no longer reachable from a ref or a --root.
    Gc {
        /// Keep this image or stream too (repeatable).
        #[arg(short = 'r', long = "root", value_name = "NAME")]
        roots: Vec<String>,
        /// Report what would be removed, remove nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
    },
    /// Check every object, image, stream and link.
    Fsck {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Mount an image through the kernel (EROFS + overlayfs).
    Mount {
        /// Image id or name.
        name: String,
        /// Where.
        mountpoint: PathBuf,
        /// Writable upper directory.
        #[arg(long, requires = "workdir")]
        upperdir: Option<PathBuf>,
        /// overlayfs work directory (same filesystem as --upperdir).
        #[arg(long, requires = "upperdir")]
        workdir: Option<PathBuf>,
        /// Serve the image over FUSE instead; OPTS: passthrough, uring, threads=N, verify=on|off,
        /// allow_other (comma-separated).
        #[arg(long, value_name = "OPTS", num_args = 0..=1, default_missing_value = "",
              require_equals = true, value_parser = crate::fuse::parse_options,
              conflicts_with = "upperdir")]
        fuse: Option<cfs_fuse::FuseOptions>,
        /// With --fuse: keep serving in the foreground (else a background server is started).
        #[arg(long, requires = "fuse")]
        foreground: bool,
    },
    /// OCI images: pull, list, inspect, tag, dump, check, mount.
    #[command(subcommand)]
    Oci(crate::oci::OciCommand),
    /// Serve an EROFS image file over FUSE in the foreground, with objects from the repository.
    FuseServe(crate::fuse::FuseServeArgs),
    /// The background server of `mount --fuse`.
    #[command(hide = true)]
    InternalFuseDaemon(crate::fuse::DaemonArgs),
}

pub fn main(args: Vec<OsString>) -> Result<ExitCode> {
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(e.exit_code() as u8));
        }
    };
    let g = &cli.global;
    match &cli.command {
        Command::Init {
            path,
            algorithm,
            insecure,
            erofs_version,
        } => {
            let path = match path {
                Some(p) => p.clone(),
                None => repo_path(g)?,
            };
            let algorithm = match algorithm {
                AlgorithmArg::Sha256 => Algorithm::Sha256,
                AlgorithmArg::Sha512 => Algorithm::Sha512,
            };
            if let Some(h) = g.hash {
                if Algorithm::from(h) != algorithm {
                    bail!(
                        "--hash {} disagrees with --algorithm {}",
                        Algorithm::from(h),
                        algorithm.repo_name()
                    );
                }
            }
            let opts = InitOptions {
                algorithm,
                insecure: *insecure,
                erofs_version: FormatVersion::from_number(*erofs_version)
                    .unwrap_or(FormatVersion::V1),
            };
            Repository::init(&path, &opts)
                .with_context(|| format!("initialising repository {}", path.display()))?;
        }
        Command::Transaction => {
            let _repo = open_repo(g)?;
            loop {
                std::thread::park();
            }
        }
        Command::CreateImage { path, name, read } => {
            let repo = open_repo(g)?;
            // The repository is the content sink: each file is copied and hashed in one pass.
            let sink = CountingSink::new(&repo, "storing files");
            let tree = read_tree(path, read, repo.algorithm(), &sink);
            sink.finish();
            let tree = tree?;
            let image = write_image(&tree, &WriteOptions::exactly(repo.default_format()?))
                .with_context(|| format!("building the image of {}", path.display()))?;
            let id = repo
                .write_image(&image, name.as_deref())
                .context("storing the image")?;
            println!("{}", id.to_id());
        }
        Command::ComputeId { path, read } => {
            let (algorithm, format) = image_settings(g)?;
            let tree = read_tree(path, read, algorithm, &HashOnly)?;
            let image = write_image(&tree, &WriteOptions::exactly(format))
                .with_context(|| format!("building the image of {}", path.display()))?;
            println!("{}", fsverity::digest(algorithm, &image).to_hex());
        }
        Command::CreateDumpfile { path, read } => {
            let (algorithm, _) = image_settings(g)?;
            let tree = read_tree(path, read, algorithm, &HashOnly)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            dumpfile::write_tree(&tree, &mut out).context("writing the dumpfile")?;
            out.flush().context("writing the dumpfile")?;
        }
        Command::ImportImage { reference } => {
            let repo = open_repo(g)?;
            let mut image = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut image)
                .context("reading the image from stdin")?;
            cfs_format::erofs::reader::Image::open(&image)
                .context("the input is not a valid composefs image")?;
            let id = repo
                .write_image(&image, Some(reference))
                .context("storing the image")?;
            println!("{}", id.to_id());
        }
        Command::ImageObjects { name } => {
            let repo = open_repo(g)?;
            let (bytes, _) = read_repo_image(&repo, name)?;
            let digests = cfs_format::erofs::reader::object_digests(&bytes)
                .with_context(|| format!("reading image {name}"))?;
            let mut out = std::io::stdout().lock();
            for d in digests {
                writeln!(out, "{}", d.to_id())?;
            }
        }
        Command::Images { json } => {
            let repo = open_repo(g)?;
            let images = repo.list_images().context("listing images")?;
            let mut out = std::io::stdout().lock();
            if *json {
                let list: Vec<serde_json::Value> = images
                    .iter()
                    .map(|i| serde_json::json!({ "name": i.name, "id": i.id.to_hex(), "algorithm": i.id.algorithm().name() }))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                writeln!(out, "{:<40} DIGEST", "NAME")?;
                for i in &images {
                    writeln!(out, "{:<40} {}", i.name, i.id.to_id())?;
                }
            }
        }
        Command::Cat { name } => {
            let repo = open_repo(g)?;
            let mut out = std::io::stdout().lock();
            repo.cat_stream(name, &mut out)
                .with_context(|| format!("reading stream {name}"))?;
            out.flush()?;
        }
        Command::Gc { roots, dry_run } => {
            let repo = open_repo(g)?;
            let bar = PhaseBar::new("gc");
            let report = repo.gc_with_progress(
                &GcOptions {
                    dry_run: *dry_run,
                    roots: roots.clone(),
                },
                &bar,
            );
            bar.finish();
            let report = report.context("garbage collection")?;
            let mut out = std::io::stdout().lock();
            let verb = if *dry_run { "would remove" } else { "removed" };
            for r in &report.removed {
                writeln!(out, "{verb} {r}")?;
            }
            writeln!(
                out,
                "Objects: {} {verb} ({} bytes); images pruned: {}; streams pruned: {}",
                report.objects_removed,
                report.bytes_removed,
                report.images_pruned,
                report.streams_pruned
            )?;
        }
        Command::Fsck { json } => {
            let repo = open_repo(g)?;
            let report = repo.fsck().context("checking the repository")?;
            let mut out = std::io::stdout().lock();
            if *json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                for e in &report.errors {
                    writeln!(out, "fsck: {e}")?;
                }
                writeln!(out, "{}", report.summary())?;
            }
            if !report.errors.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Mount {
            name,
            mountpoint,
            upperdir,
            workdir,
            fuse,
            foreground,
        } => {
            let repo = open_repo(g)?;
            crate::mount::refuse_stacked(mountpoint)?;
            if let Some(opts) = fuse {
                crate::fuse::mount_fuse(&repo, name, mountpoint, opts, *foreground)?;
                return Ok(ExitCode::SUCCESS);
            }
            crate::mount::mount_image(
                &repo,
                name,
                mountpoint,
                upperdir.as_deref(),
                workdir.as_deref(),
            )?;
        }
        Command::Oci(cmd) => return crate::oci::run(cmd, &|| open_repo(g)),
        Command::FuseServe(args) => return crate::fuse::fuse_serve(args, || open_repo(g)),
        Command::InternalFuseDaemon(args) => return crate::fuse::daemon(args, || open_repo(g)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The repository the global options select.
fn repo_path(g: &Global) -> Result<PathBuf> {
    if let Some(p) = &g.repo {
        return Ok(p.clone());
    }
    if g.system {
        return Ok(cfs_repo::repo::default_system_path());
    }
    if g.user {
        return cfs_repo::repo::default_user_path().context("--user needs $HOME");
    }
    cfs_repo::repo::default_path().context("no repository path: set --repo, or $HOME for --user")
}

fn open_repo(g: &Global) -> Result<Repository> {
    let path = repo_path(g)?;
    let opts = OpenOptions {
        require_verity: g.require_verity,
        read_only: false,
    };
    let repo = Repository::open(&path, &opts)
        .with_context(|| format!("opening repository {}", path.display()))?;
    if let Some(h) = g.hash {
        if Algorithm::from(h) != repo.algorithm() {
            bail!(
                "--hash {} does not match repository {} ({})",
                Algorithm::from(h),
                path.display(),
                repo.algorithm().repo_name()
            );
        }
    }
    Ok(repo)
}

/// Algorithm and format for commands that store nothing: the repository's when one exists,
/// else `--hash` (default sha512) and V1, as a new repository would have.
fn image_settings(g: &Global) -> Result<(Algorithm, FormatVersion)> {
    let path = repo_path(g).ok();
    if let Some(path) = path.filter(|p| p.join("meta.json").exists()) {
        let repo = open_repo(g)?;
        let _ = path;
        return Ok((repo.algorithm(), repo.default_format()?));
    }
    Ok((
        g.hash.map_or(Algorithm::Sha512, Algorithm::from),
        FormatVersion::V1,
    ))
}

/// Read a directory the way composefs-rs's create-image does: host hardlinks kept, files over
/// 64 bytes external, every xattr read; then the OCI-style transform unless disabled.
fn read_tree(
    path: &Path,
    read: &ReadOptions,
    algorithm: Algorithm,
    sink: &dyn ContentSink,
) -> Result<Tree> {
    let opts = ScanOptions {
        hardlinks: true,
        algorithm,
        threads: 0,
        ..ScanOptions::mkcomposefs()
    };
    // The transform needs /usr: say so before the scan stores a single object.
    let has_usr = std::fs::symlink_metadata(path.join("usr")).is_ok_and(|m| m.is_dir());
    if !read.no_propagate_usr_to_root && !has_usr {
        return Err(cfs_format::transform::TransformError::NoUsr)
            .with_context(|| format!("transforming {}", path.display()));
    }
    let mut tree = scan::scan_directory_into(path, &opts, sink)?;
    if !read.no_propagate_usr_to_root {
        transform_for_oci(&mut tree, read.xattrs)
            .with_context(|| format!("transforming {}", path.display()))?;
    }
    Ok(tree)
}

/// An image's bytes and id, by id or name.
pub fn read_repo_image(repo: &Repository, name: &str) -> Result<(Vec<u8>, cfs_format::Digest)> {
    let (mut file, id) = repo
        .open_image(name)
        .with_context(|| format!("opening image {name}"))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)
        .with_context(|| format!("reading image {name}"))?;
    Ok((bytes, id))
}
