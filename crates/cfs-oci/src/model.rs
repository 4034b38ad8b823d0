//! The parts of the OCI image spec we read: descriptors, image manifests, indexes and image
//! configs. Only the fields we need are modelled; the raw JSON bytes are what gets stored, so
//! nothing is ever re-serialised.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::OciDigest;
use crate::error::OciError;

/// Media types we recognise.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker schema 2 manifest (skopeo converts these to OCI for us).
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
}

/// The index annotation naming a manifest's tag in an OCI layout.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// What the blob is.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// The blob's digest.
    pub digest: OciDigest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Annotations (e.g. the tag in an index).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `v8`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The manifest's own media type (optional in OCI).
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    pub layers: Vec<Descriptor>,
}

/// An image index (or the `index.json` of a layout).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// The index's own media type (optional).
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes).
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config we use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: Option<String>,
    /// Operating system.
    #[serde(default)]
    pub os: Option<String>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One per layer, base first: the digest of the uncompressed tar.
    pub diff_ids: Vec<OciDigest>,
}

fn json<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, OciError> {
    serde_json::from_slice(bytes).map_err(|source| OciError::Json {
        what: what.to_owned(),
        source,
    })
}

fn invalid(what: &str, reason: impl Into<String>) -> OciError {
    OciError::Invalid {
        what: what.to_owned(),
        reason: reason.into(),
    }
}

/// Is this a layer media type we can import (a tar, compressed or not)?
pub fn is_tar_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

impl Manifest {
    /// Parse and check an image manifest.
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Manifest, OciError> {
        let m: Manifest = json(what, bytes)?;
        if m.schema_version != 2 {
            return Err(invalid(
                what,
                format!("schemaVersion is {}, expected 2", m.schema_version),
            ));
        }
        match m.media_type.as_deref() {
            None | Some(media_type::OCI_MANIFEST) | Some(media_type::DOCKER_MANIFEST) => {}
            Some(other) => {
                return Err(invalid(
                    what,
                    format!("media type {other} is not an image manifest"),
                ))
            }
        }
        match m.config.media_type.as_str() {
            media_type::OCI_CONFIG | media_type::DOCKER_CONFIG => {}
            other => {
                return Err(invalid(
                    what,
                    format!("config media type {other:?} is not an image config (an artifact?)"),
                ))
            }
        }
        for l in &m.layers {
            if !is_tar_layer(&l.media_type) {
                return Err(invalid(
                    what,
                    format!(
                        "layer {} has media type {:?}, not a tar layer",
                        l.digest, l.media_type
                    ),
                ));
            }
        }
        Ok(m)
    }
}

impl Index {
    /// Parse an image index / `index.json`.
    pub fn parse(what: &str, bytes: &[u8]) -> Result<Index, OciError> {
        let i: Index = json(what, bytes)?;
        if i.schema_version != 2 {
            return Err(invalid(
                what,
                format!("schemaVersion is {}, expected 2", i.schema_version),
            ));
        }
        Ok(i)
    }

    /// The entry for this machine's platform (`linux` and [`host_architecture`]), if any.
    pub fn for_this_platform(&self) -> Option<&Descriptor> {
        let arch = host_architecture();
        self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
    }
}

impl ImageConfig {
    /// Parse an image config and check it against the manifest's layer count.
    pub fn parse(what: &str, bytes: &[u8], layers: usize) -> Result<ImageConfig, OciError> {
        let c: ImageConfig = json(what, bytes)?;
        if c.rootfs.kind != "layers" {
            return Err(invalid(
                what,
                format!("rootfs.type is {:?}, expected \"layers\"", c.rootfs.kind),
            ));
        }
        if c.rootfs.diff_ids.len() != layers {
            return Err(invalid(
                what,
                format!(
                    "rootfs.diff_ids lists {} layers but the manifest has {layers}",
                    c.rootfs.diff_ids.len()
                ),
            ));
        }
        Ok(c)
    }
}

/// The `GOARCH` name of the machine we run on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn manifest_and_config_checks() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{D}","size":2}},
               "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":0}}]}}"#,
            media_type::OCI_MANIFEST,
            media_type::OCI_CONFIG
        );
        let m = Manifest::parse("m", manifest.as_bytes()).expect("manifest");
        assert_eq!(m.layers.len(), 1);
        let artifact = manifest.replace(media_type::OCI_CONFIG, "application/x-thing");
        assert!(Manifest::parse("m", artifact.as_bytes()).is_err());
        let config = format!(
            r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
        );
        ImageConfig::parse("c", config.as_bytes(), 1).expect("config");
        assert!(ImageConfig::parse("c", config.as_bytes(), 2).is_err());
        assert!(ImageConfig::parse("c", b"{", 1).is_err());
        let bad_digest = config.replace("sha256:e3", "sha256:E3");
        assert!(ImageConfig::parse("c", bad_digest.as_bytes(), 1).is_err());
    }
}
