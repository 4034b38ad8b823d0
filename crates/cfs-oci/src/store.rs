//! OCI images as stored in a repository: resolving names, reading manifests and configs back,
//! tags, the merged root filesystem, the image id, and an OCI-level consistency check.

use std::io::Write;

use cfs_format::erofs::writer::{write_image, WriteOptions};
use cfs_format::transform::XattrPolicy;
use cfs_format::{fsverity, Digest, Tree};
use cfs_repo::repo::{RepoError, Repository};
use cfs_repo::splitstream::SplitStream;

use crate::digest::OciDigest;
use crate::error::OciError;
use crate::layer_read::for_each_entry;
use crate::model::{ImageConfig, Manifest};
use crate::names::{
    config_stream_id, layer_stream_id, manifest_stream_id, parse_manifest_stream_id, tag_ref,
    ImageName, CONFIG_REF_PREFIX, IMAGE_REF_V1, IMAGE_REF_V2, TAG_DIR,
};
use crate::rootfs::RootfsBuilder;

/// Largest manifest or config stream content we read back.
const JSON_LIMIT: usize = 64 << 20;

/// A pulled image, read back from its streams.
#[derive(Debug)]
pub struct StoredImage {
    /// The manifest's digest (the stream `oci-manifest-<digest>`).
    pub manifest_digest: OciDigest,
    /// The manifest as stored.
    pub manifest_bytes: Vec<u8>,
    /// Parsed manifest.
    pub manifest: Manifest,
    /// The config's digest.
    pub config_digest: OciDigest,
    /// The config as stored (checked against its digest).
    pub config_bytes: Vec<u8>,
    /// Parsed config.
    pub config: ImageConfig,
    /// The config stream (its named refs: layers and EROFS images).
    pub config_stream: SplitStream,
    /// The EROFS image id linked from the config for V0/V1 repositories, if any.
    pub image_id: Option<Digest>,
}

impl StoredImage {
    /// The V2 EROFS image id linked from the config (composefs-rs writes it for V2
    /// repositories; we never do).
    pub fn erofs_v2(&self) -> Option<Digest> {
        self.config_stream.named_ref(IMAGE_REF_V2).copied()
    }
}

/// Read a (small) stream's reassembled content.
pub fn read_stream_content(repo: &Repository, id: &str) -> Result<Vec<u8>, OciError> {
    let mut out = Vec::new();
    let n = repo.cat_stream(id, &mut out)?;
    if n as usize > JSON_LIMIT {
        return Err(OciError::Corrupt {
            what: format!("stream {id}"),
            reason: "too large for a JSON document".into(),
        });
    }
    Ok(out)
}

/// The manifest digest a tag points at, or `None` when there is no such tag.
pub fn tag_target(repo: &Repository, tag: &str) -> Result<Option<OciDigest>, OciError> {
    let reference = tag_ref(tag)?;
    let Some(id) = repo.stream_ref_target(&reference)? else {
        return Ok(None);
    };
    parse_manifest_stream_id(&id)
        .map(Some)
        .ok_or_else(|| OciError::Corrupt {
            what: format!("tag {tag}"),
            reason: format!("points at {id}, not at a manifest stream"),
        })
}

/// The manifest digest `name` designates, if the image exists.
pub fn resolve(repo: &Repository, name: &ImageName) -> Result<OciDigest, OciError> {
    let not_found = || OciError::ImageNotFound {
        name: name.to_string(),
    };
    let digest = match name {
        ImageName::Tag(tag) => tag_target(repo, tag)?.ok_or_else(not_found)?,
        ImageName::Digest(d) => d.clone(),
    };
    if repo.has_stream(&manifest_stream_id(&digest))?.is_none() {
        return Err(not_found());
    }
    Ok(digest)
}

/// Open the image `name` (a tag or `@sha256:…`).
pub fn open_image(repo: &Repository, name: &ImageName) -> Result<StoredImage, OciError> {
    let manifest_digest = resolve(repo, name)?;
    open_manifest(repo, &manifest_digest)
}

/// Open the image whose manifest stream is `oci-manifest-<manifest_digest>`.
pub fn open_manifest(
    repo: &Repository,
    manifest_digest: &OciDigest,
) -> Result<StoredImage, OciError> {
    let manifest_id = manifest_stream_id(manifest_digest);
    let (manifest_stream, _) = repo.open_stream(&manifest_id)?;
    let manifest_bytes = read_stream_content(repo, &manifest_id)?;
    let manifest = Manifest::parse(&format!("manifest {manifest_digest}"), &manifest_bytes)?;
    let config_digest = manifest.config.digest.clone();
    let config_id = config_stream_id(&config_digest);
    let config_ref = format!("{CONFIG_REF_PREFIX}{config_digest}");
    if manifest_stream.named_ref(&config_ref).is_none() {
        return Err(OciError::Corrupt {
            what: format!("stream {manifest_id}"),
            reason: format!("has no named reference {config_ref}"),
        });
    }
    let (config_stream, _) = repo.open_stream(&config_id)?;
    let config_bytes = read_stream_content(repo, &config_id)?;
    if !config_digest.matches(&config_bytes) {
        return Err(OciError::Corrupt {
            what: format!("stream {config_id}"),
            reason: "its content does not match the config digest".into(),
        });
    }
    let config = ImageConfig::parse(
        &format!("config {config_digest}"),
        &config_bytes,
        manifest.layers.len(),
    )?;
    let image_id = config_stream.named_ref(IMAGE_REF_V1).copied();
    Ok(StoredImage {
        manifest_digest: manifest_digest.clone(),
        manifest_bytes,
        manifest,
        config_digest,
        config_bytes,
        config,
        config_stream,
        image_id,
    })
}

/// A tag and the image it names (or why that image cannot be opened).
#[derive(Debug)]
pub struct TaggedImage {
    /// The tag.
    pub tag: String,
    /// The image.
    pub image: Result<StoredImage, OciError>,
}

/// Every tag with its image, sorted by tag.
pub fn list_images(repo: &Repository) -> Result<Vec<TaggedImage>, OciError> {
    let prefix = format!("refs/{TAG_DIR}/");
    let mut out = Vec::new();
    for info in repo.list_streams()? {
        let Some(encoded) = info.name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(tag) = crate::names::decode_tag(encoded) else {
            continue;
        };
        let image = open_image(repo, &ImageName::Tag(tag.clone()));
        out.push(TaggedImage { tag, image });
    }
    out.sort_by(|a, b| a.tag.cmp(&b.tag));
    Ok(out)
}

/// Point the tag `name` at the stored manifest `manifest_digest`.
pub fn tag(repo: &Repository, manifest_digest: &OciDigest, name: &str) -> Result<(), OciError> {
    let reference = tag_ref(name)?;
    let id = manifest_stream_id(manifest_digest);
    if repo.has_stream(&id)?.is_none() {
        return Err(OciError::ImageNotFound {
            name: format!("@{manifest_digest}"),
        });
    }
    repo.add_stream_ref(&id, &reference)?;
    Ok(())
}

/// Remove the tag `name` (the image stays until GC).
pub fn untag(repo: &Repository, name: &str) -> Result<(), OciError> {
    match repo.remove_stream_ref(&tag_ref(name)?) {
        Ok(()) => Ok(()),
        Err(RepoError::StreamNotFound { .. }) => Err(OciError::ImageNotFound {
            name: name.to_owned(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Open the stored layer `diff_id`.
pub fn open_layer(
    repo: &Repository,
    diff_id: &OciDigest,
) -> Result<(SplitStream, Digest), OciError> {
    let id = layer_stream_id(diff_id);
    match repo.open_stream(&id) {
        Ok(x) => Ok(x),
        Err(RepoError::StreamNotFound { .. }) => Err(OciError::Corrupt {
            what: format!("layer {diff_id}"),
            reason: format!("stream {id} is missing"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Merge the layers `diff_ids` (base first) and finalise the tree.
pub fn build_rootfs(
    repo: &Repository,
    diff_ids: &[OciDigest],
    policy: XattrPolicy,
) -> Result<Tree, OciError> {
    let mut builder = RootfsBuilder::new();
    for diff_id in diff_ids {
        let (stream, _) = open_layer(repo, diff_id)?;
        let label = diff_id.to_string();
        for_each_entry(&stream, &label, |entry, content| {
            builder.apply(&label, entry, content)
        })?;
    }
    builder.finish(policy)
}

/// The EROFS image of a tree in the repository's default format, and its id.
pub fn erofs_image(repo: &Repository, tree: &Tree) -> Result<(Vec<u8>, Digest), OciError> {
    let image = write_image(tree, &WriteOptions::exactly(repo.default_format()?))?;
    let id = fsverity::digest(repo.algorithm(), &image);
    Ok((image, id))
}

/// The merged rootfs of a stored image.
pub fn image_tree(repo: &Repository, image: &StoredImage) -> Result<Tree, OciError> {
    build_rootfs(
        repo,
        &image.config.rootfs.diff_ids,
        XattrPolicy::AllowlistOnly,
    )
}

/// Write the dumpfile of the stored image's merged rootfs.
pub fn dump(repo: &Repository, image: &StoredImage, out: &mut dyn Write) -> Result<(), OciError> {
    let tree = image_tree(repo, image)?;
    let mut out = out;
    cfs_format::dumpfile::write_tree(&tree, &mut out)
        .map_err(|e| OciError::io("writing the dumpfile", e))
}

/// The image id the stored image's layers give (computed, nothing stored).
pub fn compute_id(repo: &Repository, image: &StoredImage) -> Result<Digest, OciError> {
    let tree = image_tree(repo, image)?;
    Ok(erofs_image(repo, &tree)?.1)
}

/// Check one stored image end to end: manifest, config, every layer (present, reassembles to
/// its diff_id), the EROFS image (present, equal to what the layers give). Returns the problems
/// found (empty: consistent).
pub fn check_image(repo: &Repository, name: &ImageName) -> Result<Vec<String>, OciError> {
    let image = match open_image(repo, name) {
        Ok(i) => i,
        Err(e @ OciError::ImageNotFound { .. }) => return Err(e),
        Err(e) => return Ok(vec![e.to_string()]),
    };
    let mut problems = Vec::new();
    for diff_id in &image.config.rootfs.diff_ids {
        let id = layer_stream_id(diff_id);
        if image
            .config_stream
            .named_ref(&diff_id.to_string())
            .is_none()
        {
            problems.push(format!(
                "config {} has no named reference to layer {diff_id}",
                image.config_digest
            ));
        }
        let mut hasher = HashWriter(crate::digest::BlobHasher::new(diff_id.algorithm()));
        match repo.cat_stream(&id, &mut hasher) {
            Ok(_) => {
                let actual = hasher.0.finish();
                if actual != *diff_id {
                    problems.push(format!(
                        "layer {diff_id}: the stored tar reassembles to {actual}"
                    ));
                }
            }
            Err(e) => problems.push(format!("layer {diff_id}: {e}")),
        }
    }
    match image.image_id {
        None => problems.push(format!(
            "config {} has no {IMAGE_REF_V1} reference (no EROFS image)",
            image.config_digest
        )),
        Some(id) => {
            if let Err(e) = repo.open_image(&id.to_hex()) {
                problems.push(format!("EROFS image {id}: {e}"));
            }
            if problems.is_empty() {
                match compute_id(repo, &image) {
                    Ok(computed) if computed == id => {}
                    Ok(computed) => problems.push(format!(
                        "EROFS image {id} differs from the one the layers give ({computed})"
                    )),
                    Err(e) => problems.push(format!("rebuilding the rootfs: {e}")),
                }
            }
        }
    }
    Ok(problems)
}

struct HashWriter(crate::digest::BlobHasher);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
