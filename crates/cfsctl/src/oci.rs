//! `cfsctl oci …`: OCI images in the repository (pull, list, inspect, tag, dump, check, mount),
//! a thin layer over `cfs-oci`. Results go to stdout; progress bars go to stderr, and only when
//! it is a terminal.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use cfs_format::dumpfile::{write_entry_line, EntryLine};
use cfs_format::tree::{mode, Mtime};
use cfs_oci::entry::EntryKind;
use cfs_oci::layer_read::{for_each_entry, Content};
use cfs_oci::{store, FetchOptions, ImageName, ImageReference, OciDigest, PullOptions};
use cfs_repo::repo::Repository;
use clap::{ArgAction, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The `oci` subcommands.
#[derive(Subcommand, Debug)]
pub enum OciCommand {
    /// Fetch an image (docker://, oci:DIR[:TAG], oci-archive:, docker-archive:, dir:) into the
    /// repository, build its EROFS image and tag it.
    Pull {
        /// The image, with its transport.
        image: String,
        /// The tag to give it (default: IMAGE as written).
        name: Option<String>,
        /// Verify TLS certificates and require HTTPS (`--tls-verify=false` for a plain-HTTP
        /// registry).
        #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
        tls_verify: bool,
        /// Container auth file for the registry.
        #[arg(long, value_name = "PATH")]
        authfile: Option<PathBuf>,
        /// Credentials for the registry, USER:PASSWORD (instead of any auth file).
        #[arg(long, value_name = "USER:PASSWORD", conflicts_with = "authfile")]
        creds: Option<String>,
        /// Layers fetched at once.
        #[arg(long, short = 'j', default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=16))]
        jobs: u32,
        /// How to fetch: `auto` reads oci: layouts and docker:// registries directly where
        /// that gives what skopeo would and uses skopeo otherwise; `direct` fails instead of
        /// using skopeo; `skopeo` fetches everything through skopeo.
        #[arg(long, value_name = "HOW", default_value = "auto")]
        fetcher: cfs_oci::Fetcher,
    },
    /// List tagged images.
    Images {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show an image: a JSON summary, or the raw manifest or config.
    Inspect {
        /// Tag or @sha256:<manifest digest>.
        image: String,
        /// Print the raw manifest.
        #[arg(long, conflicts_with = "config")]
        manifest: bool,
        /// Print the raw config.
        #[arg(long)]
        config: bool,
    },
    /// Tag a stored manifest.
    Tag {
        /// sha256:<manifest digest> (a leading @ is accepted).
        manifest_digest: String,
        /// The new tag.
        name: String,
    },
    /// Remove a tag (the image's data stays until gc).
    Untag {
        /// The tag.
        name: String,
    },
    /// Write a stored layer: the original tar (default), its entries as a dumpfile, or JSON.
    Layer {
        /// The layer's diff_id (sha256:<hex>).
        diff_id: String,
        /// Print the entries as dumpfile lines.
        #[arg(long, conflicts_with = "json")]
        dumpfile: bool,
        /// Print the layer's metadata and entries as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the dumpfile of an image's merged root filesystem.
    Dump {
        /// Tag or @sha256:<manifest digest>.
        image: String,
    },
    /// Print the image id an image's layers give (recomputed).
    ComputeId {
        /// Tag or @sha256:<manifest digest>.
        image: String,
    },
    /// Check an image (or every tagged image): streams, layer digests, the EROFS image.
    Fsck {
        /// Tag or @sha256:<manifest digest> (default: every tag).
        image: Option<String>,
    },
    /// Mount an image: the kernel composefs mount, or FUSE with --fuse.
    Mount {
        /// Tag or @sha256:<manifest digest>.
        image: String,
        /// Where.
        mountpoint: PathBuf,
        /// Serve the image over FUSE instead (works without fs-verity); OPTS as for
        /// `cfsctl mount --fuse`.
        #[arg(long, value_name = "OPTS", num_args = 0..=1, default_missing_value = "",
              require_equals = true, value_parser = crate::fuse::parse_options)]
        fuse: Option<cfs_fuse::FuseOptions>,
        /// With --fuse: keep serving in the foreground.
        #[arg(long, requires = "fuse")]
        foreground: bool,
    },
}

fn image_name(text: &str) -> Result<ImageName> {
    text.parse().with_context(|| format!("image {text:?}"))
}

fn open_image(repo: &Repository, text: &str) -> Result<cfs_oci::StoredImage> {
    let name = image_name(text)?;
    store::open_image(repo, &name).with_context(|| format!("opening image {text}"))
}

/// Run one `oci` subcommand against the repository `open` opens.
pub fn run(cmd: &OciCommand, open: &dyn Fn() -> Result<Repository>) -> Result<ExitCode> {
    match cmd {
        OciCommand::Pull {
            image,
            name,
            tls_verify,
            authfile,
            creds,
            jobs,
            fetcher,
        } => {
            let repo = open()?;
            if let Some(file) = authfile {
                // skopeo would silently go without; a misspelt path deserves an error.
                std::fs::metadata(file)
                    .with_context(|| format!("the auth file {}", file.display()))?;
            }
            // Parsed here, not by clap, whose error would repeat the value (the password).
            let credentials = match creds {
                Some(text) => {
                    if !image.starts_with("docker://") {
                        bail!("--creds is for docker:// images");
                    }
                    Some(text.parse().map_err(|_| {
                        anyhow!("--creds takes USER:PASSWORD (a password cannot be asked for)")
                    })?)
                }
                None => None,
            };
            let fetch = FetchOptions {
                insecure: !tls_verify,
                authfile: authfile.clone(),
                credentials,
                fetcher: *fetcher,
            };
            pull(&repo, image, name.as_deref(), &fetch, *jobs)
        }
        OciCommand::Images { json } => images(&open()?, *json),
        OciCommand::Inspect {
            image,
            manifest,
            config,
        } => {
            let repo = open()?;
            let img = open_image(&repo, image)?;
            let mut out = std::io::stdout().lock();
            if *manifest {
                out.write_all(&img.manifest_bytes)?;
            } else if *config {
                out.write_all(&img.config_bytes)?;
            } else {
                let parse = |b: &[u8]| {
                    serde_json::from_slice::<serde_json::Value>(b)
                        .unwrap_or(serde_json::Value::Null)
                };
                let v = serde_json::json!({
                    "manifest_digest": img.manifest_digest.to_string(),
                    "manifest": parse(&img.manifest_bytes),
                    "config_digest": img.config_digest.to_string(),
                    "config": parse(&img.config_bytes),
                    "referrers": [],
                    "composefs_erofs": img.image_id.map(|d| d.to_hex()),
                    "composefs_boot_erofs": null,
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Tag {
            manifest_digest,
            name,
        } => {
            let repo = open()?;
            let digest: OciDigest = manifest_digest
                .trim_start_matches('@')
                .parse()
                .context("manifest digest")?;
            store::tag(&repo, &digest, name)
                .with_context(|| format!("tagging {digest} as {name}"))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Untag { name } => {
            let repo = open()?;
            store::untag(&repo, name).with_context(|| format!("removing tag {name}"))?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Layer {
            diff_id,
            dumpfile,
            json,
        } => layer(&open()?, diff_id, *dumpfile, *json),
        OciCommand::Dump { image } => {
            let repo = open()?;
            let img = open_image(&repo, image)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            store::dump(&repo, &img, &mut out).with_context(|| format!("dumping {image}"))?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::ComputeId { image } => {
            let repo = open()?;
            let img = open_image(&repo, image)?;
            let id = store::compute_id(&repo, &img)
                .with_context(|| format!("computing the image id of {image}"))?;
            println!("{}", id.to_hex());
            Ok(ExitCode::SUCCESS)
        }
        OciCommand::Fsck { image } => fsck(&open()?, image.as_deref()),
        OciCommand::Mount {
            image,
            mountpoint,
            fuse,
            foreground,
        } => {
            let repo = open()?;
            let img = open_image(&repo, image)?;
            let Some(id) = img.image_id else {
                bail!(
                    "image {image} has no EROFS image for this repository's format (pull it again)"
                );
            };
            let id = id.to_hex();
            crate::mount::refuse_stacked(mountpoint)?;
            match fuse {
                Some(opts) => crate::fuse::mount_fuse(&repo, &id, mountpoint, opts, *foreground)?,
                None => crate::mount::mount_image(&repo, &id, mountpoint, None, None)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Progress bars on stderr, one per layer being fetched.
struct Bars {
    multi: MultiProgress,
    bars: OnceLock<Vec<Option<ProgressBar>>>,
}

impl Bars {
    fn bar(&self, index: usize) -> Option<&ProgressBar> {
        self.bars.get()?.get(index)?.as_ref()
    }
}

fn short(d: &OciDigest) -> String {
    format!(
        "{}:{}",
        d.algorithm().name(),
        &d.hex()[..12.min(d.hex().len())]
    )
}

impl cfs_oci::PullProgress for Bars {
    fn plan(&self, layers: &[cfs_oci::LayerPlan]) {
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:20}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let bars = layers
            .iter()
            .map(|l| {
                if l.present {
                    let _ = self
                        .multi
                        .println(format!("layer {} already present", short(&l.diff_id)));
                    return None;
                }
                let pb = self.multi.add(ProgressBar::new(l.blob.size));
                pb.set_style(style.clone());
                pb.set_prefix(short(&l.diff_id));
                Some(pb)
            })
            .collect();
        let _ = self.bars.set(bars);
    }

    fn layer_bytes(&self, index: usize, bytes: u64) {
        if let Some(pb) = self.bar(index) {
            pb.inc(bytes);
        }
    }

    fn layer_done(&self, index: usize, _stats: &cfs_oci::ImportStats) {
        if let Some(pb) = self.bar(index) {
            pb.finish_with_message("done");
        }
    }

    fn layer_failed(&self, index: usize) {
        if let Some(pb) = self.bar(index) {
            pb.abandon_with_message("failed");
        }
    }

    fn stage(&self, what: &str) {
        let _ = self.multi.println(what);
    }
}

fn pull(
    repo: &Repository,
    image: &str,
    name: Option<&str>,
    fetch: &FetchOptions,
    jobs: u32,
) -> Result<ExitCode> {
    let reference = ImageReference::parse(image)?;
    let tag = name.unwrap_or(image).to_owned();
    let source =
        cfs_oci::open_source(&reference, fetch).with_context(|| format!("opening {image}"))?;
    let via = source.via();
    let opts = PullOptions {
        tag: Some(tag),
        jobs: jobs as usize,
        ..PullOptions::default()
    };
    let report = if std::io::stderr().is_terminal() {
        let bars = Bars {
            multi: MultiProgress::new(),
            bars: OnceLock::new(),
        };
        let r = cfs_oci::pull(repo, source.as_ref(), &opts, &bars);
        let _ = bars.multi.clear();
        r
    } else {
        cfs_oci::pull(repo, source.as_ref(), &opts, &cfs_oci::NoProgress)
    }
    .with_context(|| format!("pulling {image}"))?;
    drop(source);
    let mut out = std::io::stdout().lock();
    writeln!(out, "manifest {}", report.manifest_digest)?;
    writeln!(out, "config {}", report.config_digest)?;
    writeln!(out, "verity {}", report.image_id.to_hex())?;
    if let Some(t) = &report.tag {
        writeln!(out, "tagged {t}")?;
    }
    writeln!(
        out,
        "layers {} ({} fetched, {} already present)",
        report.layers,
        report.layers_fetched,
        report.layers - report.layers_fetched
    )?;
    let s = &report.stats;
    writeln!(
        out,
        "objects {} new ({} bytes), {} reused ({} bytes)",
        s.objects_new, s.bytes_new, s.objects_reused, s.bytes_reused
    )?;
    writeln!(
        out,
        "bytes {} fetched, {} uncompressed",
        report.bytes_fetched, s.tar_bytes
    )?;
    writeln!(out, "via {via}")?;
    Ok(ExitCode::SUCCESS)
}

fn images(repo: &Repository, json: bool) -> Result<ExitCode> {
    let list = store::list_images(repo).context("listing images")?;
    let mut out = std::io::stdout().lock();
    if json {
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|t| match &t.image {
                Ok(i) => serde_json::json!({
                    "name": t.tag,
                    "manifest": i.manifest_digest.to_string(),
                    "config": i.config_digest.to_string(),
                    "architecture": i.config.architecture,
                    "os": i.config.os,
                    "layers": i.manifest.layers.len(),
                    "image_id": i.image_id.map(|d| d.to_hex()),
                }),
                Err(e) => serde_json::json!({ "name": t.tag, "error": e.to_string() }),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&items)?)?;
    } else {
        // The name column fits the longest name (a pull without NAME is tagged with its whole
        // reference), so the other columns stay aligned.
        let width = list
            .iter()
            .map(|t| t.tag.chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        writeln!(
            out,
            "{:<width$} {:<19} {:<8} {:>6}  IMAGE",
            "NAME", "MANIFEST", "ARCH", "LAYERS"
        )?;
        for t in &list {
            let tag = &t.tag;
            match &t.image {
                Ok(i) => writeln!(
                    out,
                    "{tag:<width$} {:<19} {:<8} {:>6}  {}",
                    short(&i.manifest_digest),
                    i.config.architecture.as_deref().unwrap_or("-"),
                    i.manifest.layers.len(),
                    i.image_id
                        .map(|d| d.to_hex()[..12].to_owned())
                        .unwrap_or_else(|| "-".into())
                )?,
                Err(e) => writeln!(out, "{tag:<width$} error: {e}")?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn layer(repo: &Repository, diff_id: &str, dumpfile: bool, json: bool) -> Result<ExitCode> {
    let diff_id: OciDigest = diff_id.parse().context("diff_id")?;
    let label = diff_id.to_string();
    let (stream, object) = store::open_layer(repo, &diff_id)?;
    if !dumpfile && !json {
        let stdout = std::io::stdout();
        if stdout.is_terminal() {
            bail!(
                "refusing to write a tar to a terminal (redirect stdout, or use --dumpfile/--json)"
            );
        }
        let mut out = stdout.lock();
        repo.cat_stream(&cfs_oci::names::layer_stream_id(&diff_id), &mut out)
            .with_context(|| format!("writing layer {label}"))?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut entries = Vec::new();
    for_each_entry(&stream, &label, |e, content| {
        if dumpfile {
            write_dump_line(&mut out, &e, &content).map_err(|err| cfs_oci::OciError::Io {
                what: "writing the dumpfile".into(),
                source: err,
            })?;
        } else {
            entries.push(entry_json(&e, &content));
        }
        Ok(())
    })
    .with_context(|| format!("reading layer {label}"))?;
    if json {
        let v = serde_json::json!({
            "diff_id": label,
            "stream": object.to_hex(),
            "size": stream.stream_size(),
            "objects": stream.object_refs().len(),
            "entries": entries,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn type_bits(kind: &EntryKind) -> u32 {
    match kind {
        EntryKind::Directory => mode::S_IFDIR,
        EntryKind::Regular { .. } => mode::S_IFREG,
        EntryKind::Symlink(_) => mode::S_IFLNK,
        EntryKind::Hardlink(_) => mode::S_IFREG,
        EntryKind::CharDevice(_) => mode::S_IFCHR,
        EntryKind::BlockDevice(_) => mode::S_IFBLK,
        EntryKind::Fifo => mode::S_IFIFO,
    }
}

fn write_dump_line(
    out: &mut impl Write,
    e: &cfs_oci::entry::LayerEntry,
    content: &Content,
) -> std::io::Result<()> {
    let mut path = Vec::with_capacity(e.path.len() + 1);
    path.push(b'/');
    path.extend_from_slice(&e.path);
    let mut target = Vec::new();
    let (size, rdev, payload, inline, digest) = match (&e.kind, content) {
        (EntryKind::Regular { size }, Content::External(d)) => {
            target = d.object_path().into_bytes();
            (*size, 0, Some(&target[..]), None, Some(*d))
        }
        (EntryKind::Regular { size }, Content::Inline(data)) => {
            (*size, 0, None, Some(&data[..]), None)
        }
        (EntryKind::Symlink(t), _) => (t.len() as u64, 0, Some(&t[..]), None, None),
        (EntryKind::Hardlink(t), _) => {
            target.push(b'/');
            target.extend_from_slice(t);
            (0, 0, Some(&target[..]), None, None)
        }
        (EntryKind::CharDevice(r) | EntryKind::BlockDevice(r), _) => (0, *r, None, None, None),
        _ => (0, 0, None, None, None),
    };
    let xattrs = e.xattrs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    write_entry_line(
        out,
        &EntryLine {
            path: &path,
            size,
            mode: type_bits(&e.kind) | e.meta.permissions,
            hardlink: matches!(e.kind, EntryKind::Hardlink(_)),
            nlink: 1,
            uid: e.meta.uid,
            gid: e.meta.gid,
            rdev,
            mtime: Mtime {
                sec: e.meta.mtime.sec,
                nsec: e.meta.mtime.nsec,
            },
            payload,
            content: inline,
            digest,
            xattrs,
        },
    )
}

fn entry_json(e: &cfs_oci::entry::LayerEntry, content: &Content) -> serde_json::Value {
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let (kind, extra) = match &e.kind {
        EntryKind::Directory => ("directory", serde_json::Value::Null),
        EntryKind::Regular { size } => (
            "file",
            serde_json::json!({
                "size": size,
                "object": match content {
                    Content::External(d) => Some(d.to_hex()),
                    _ => None,
                },
            }),
        ),
        EntryKind::Symlink(t) => ("symlink", serde_json::json!({ "target": lossy(t) })),
        EntryKind::Hardlink(t) => (
            "hardlink",
            serde_json::json!({ "target": format!("/{}", lossy(t)) }),
        ),
        EntryKind::CharDevice(r) => ("char-device", serde_json::json!({ "rdev": r })),
        EntryKind::BlockDevice(r) => ("block-device", serde_json::json!({ "rdev": r })),
        EntryKind::Fifo => ("fifo", serde_json::Value::Null),
    };
    let xattrs: serde_json::Map<String, serde_json::Value> = e
        .xattrs
        .iter()
        .map(|(k, v)| (lossy(k), serde_json::Value::String(lossy(v))))
        .collect();
    serde_json::json!({
        "path": format!("/{}", lossy(&e.path)),
        "type": kind,
        "mode": format!("{:o}", e.meta.permissions),
        "uid": e.meta.uid,
        "gid": e.meta.gid,
        "mtime": format!("{}.{:09}", e.meta.mtime.sec, e.meta.mtime.nsec),
        "xattrs": xattrs,
        "details": extra,
    })
}

fn fsck(repo: &Repository, image: Option<&str>) -> Result<ExitCode> {
    let names: Vec<ImageName> = match image {
        Some(text) => vec![image_name(text)?],
        None => store::list_images(repo)?
            .into_iter()
            .map(|t| ImageName::Tag(t.tag))
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    let mut bad = 0usize;
    for name in &names {
        let problems =
            store::check_image(repo, name).with_context(|| format!("checking {name}"))?;
        if problems.is_empty() {
            writeln!(out, "ok {name}")?;
        } else {
            bad += 1;
            for p in problems {
                writeln!(out, "oci fsck: {name}: {p}")?;
            }
        }
    }
    writeln!(out, "{} images checked, {bad} with problems", names.len())?;
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
