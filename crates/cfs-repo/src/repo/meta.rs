//! `meta.json`, the repository's format description (docs/formats.md §4), as composefs-rs 0.9 writes
//! and reads it. Pure: parsing and printing only; the repository does the file I/O.

use cfs_format::erofs::FormatVersion;
use cfs_format::Algorithm;
use serde::{Deserialize, Serialize};

/// The only repository format version we know (`REPO_FORMAT_VERSION`).
pub const REPO_FORMAT_VERSION: u32 = 1;

/// Read-only-compatible feature: the default EROFS format is V1.
pub const FEATURE_V1_EROFS: &str = "v1_erofs";

/// Why `meta.json` could not be understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// Not JSON of the expected shape.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A format version other than 1.
    #[error("unsupported repository format version {0} (this tool knows version 1)")]
    UnsupportedVersion(u32),
    /// An algorithm string other than `fsverity-sha256-12`/`fsverity-sha512-12`.
    #[error(
        "unsupported algorithm {0:?} (expected \"fsverity-sha256-12\" or \"fsverity-sha512-12\")"
    )]
    UnsupportedAlgorithm(String),
}

/// Feature flags, by compatibility class.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Features {
    /// Features an older reader may ignore.
    #[serde(default)]
    pub compatible: Vec<String>,
    /// Features an older reader may only read with.
    #[serde(default)]
    pub read_only_compatible: Vec<String>,
    /// Features an older reader must refuse.
    #[serde(default)]
    pub incompatible: Vec<String>,
}

/// `erofs_formats`: the default EROFS format version of images and any extra ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErofsFormats {
    /// Format version of new images (0, 1 or 2).
    pub default: u32,
    /// Further versions also generated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<u32>,
}

/// The JSON object as written, key order included.
#[derive(Serialize, Deserialize)]
struct RawMeta {
    version: u32,
    algorithm: String,
    #[serde(default)]
    features: Features,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    erofs_formats: Option<ErofsFormats>,
}

/// The content of `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoMeta {
    /// Format version (always [`REPO_FORMAT_VERSION`] once parsed).
    pub version: u32,
    /// The fs-verity algorithm naming every object.
    pub algorithm: Algorithm,
    /// Feature flags.
    pub features: Features,
    /// EROFS formats; `None` in repositories written before the key existed.
    pub erofs_formats: Option<ErofsFormats>,
}

impl RepoMeta {
    /// What `cfsctl init` writes for `algorithm` and default image format `format`.
    pub fn new(algorithm: Algorithm, format: FormatVersion) -> Self {
        let mut features = Features::default();
        if format == FormatVersion::V1 {
            features.read_only_compatible.push(FEATURE_V1_EROFS.into());
        }
        RepoMeta {
            version: REPO_FORMAT_VERSION,
            algorithm,
            features,
            erofs_formats: Some(ErofsFormats {
                default: format.number(),
                extra: Vec::new(),
            }),
        }
    }

    /// Parse and validate the file's bytes (version and algorithm; features are left to the
    /// caller, see [`unknown_incompatible`](Self::unknown_incompatible)).
    pub fn parse(bytes: &[u8]) -> Result<Self, MetaError> {
        let raw: RawMeta = serde_json::from_slice(bytes)?;
        if raw.version != REPO_FORMAT_VERSION {
            return Err(MetaError::UnsupportedVersion(raw.version));
        }
        let algorithm = match raw.algorithm.as_str() {
            "fsverity-sha256-12" => Algorithm::Sha256,
            "fsverity-sha512-12" => Algorithm::Sha512,
            _ => return Err(MetaError::UnsupportedAlgorithm(raw.algorithm)),
        };
        Ok(RepoMeta {
            version: raw.version,
            algorithm,
            features: raw.features,
            erofs_formats: raw.erofs_formats,
        })
    }

    /// The file's bytes: pretty-printed JSON (2-space indentation) and a newline, exactly as
    /// composefs-rs 0.9 writes it.
    pub fn to_json(&self) -> String {
        let raw = RawMeta {
            version: self.version,
            algorithm: self.algorithm.repo_name().to_owned(),
            features: self.features.clone(),
            erofs_formats: self.erofs_formats.clone(),
        };
        let mut s = serde_json::to_string_pretty(&raw)
            .expect("a struct of strings, integers and lists always serialises");
        s.push('\n');
        s
    }

    /// The default EROFS format version number: `erofs_formats.default`, or, for repositories
    /// without that key, 1 when `v1_erofs` is set and 2 otherwise.
    pub fn default_erofs_version(&self) -> u32 {
        match &self.erofs_formats {
            Some(f) => f.default,
            None if self.has_ro_feature(FEATURE_V1_EROFS) => 1,
            None => 2,
        }
    }

    fn has_ro_feature(&self, name: &str) -> bool {
        self.features.read_only_compatible.iter().any(|f| f == name)
    }

    /// Incompatible features we do not know (all of them: we know none).
    pub fn unknown_incompatible(&self) -> Vec<String> {
        self.features.incompatible.clone()
    }

    /// Read-only-compatible features we do not know.
    pub fn unknown_read_only_compatible(&self) -> Vec<String> {
        self.features
            .read_only_compatible
            .iter()
            .filter(|f| f.as_str() != FEATURE_V1_EROFS)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/formats.md §4: what `cfsctl init` (composefs-rs 0.9.0) writes, 219 bytes.
    const RS_DEFAULT: &str = r#"{
  "version": 1,
  "algorithm": "fsverity-sha512-12",
  "features": {
    "compatible": [],
    "read-only-compatible": [
      "v1_erofs"
    ],
    "incompatible": []
  },
  "erofs_formats": {
    "default": 1
  }
}
"#;

    #[test]
    fn default_meta_is_byte_identical_to_composefs_rs() {
        let json = RepoMeta::new(Algorithm::Sha512, FormatVersion::V1).to_json();
        assert_eq!(json, RS_DEFAULT);
        assert_eq!(json.len(), 219);
        let back = RepoMeta::parse(json.as_bytes()).expect("parse");
        assert_eq!(back, RepoMeta::new(Algorithm::Sha512, FormatVersion::V1));
        assert_eq!(back.default_erofs_version(), 1);
    }

    #[test]
    fn v0_has_no_v1_feature() {
        let m = RepoMeta::new(Algorithm::Sha256, FormatVersion::V0);
        let json = m.to_json();
        assert!(!json.contains("v1_erofs"), "{json}");
        assert!(json.contains("\"fsverity-sha256-12\""));
        assert!(json.contains("\"default\": 0"));
        assert_eq!(RepoMeta::parse(json.as_bytes()).expect("parse"), m);
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let m =
            RepoMeta::parse(br#"{"version":1,"algorithm":"fsverity-sha256-12"}"#).expect("parse");
        assert_eq!(m.features, Features::default());
        assert_eq!(m.default_erofs_version(), 2);
        let m = RepoMeta::parse(
            br#"{"version":1,"algorithm":"fsverity-sha256-12",
                 "features":{"read-only-compatible":["v1_erofs","future"]}}"#,
        )
        .expect("parse");
        assert_eq!(m.default_erofs_version(), 1);
        assert_eq!(m.unknown_read_only_compatible(), ["future"]);
        let m = RepoMeta::parse(
            br#"{"version":1,"algorithm":"fsverity-sha512-12",
                 "erofs_formats":{"default":2,"extra":[1]}}"#,
        )
        .expect("parse");
        assert_eq!(
            m.erofs_formats,
            Some(ErofsFormats {
                default: 2,
                extra: vec![1]
            })
        );
        assert!(m.to_json().contains("\"extra\": [\n      1\n    ]"));
    }

    #[test]
    fn bad_meta_is_refused() {
        assert!(matches!(
            RepoMeta::parse(br#"{"version":2,"algorithm":"fsverity-sha256-12"}"#),
            Err(MetaError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            RepoMeta::parse(br#"{"version":1,"algorithm":"sha256"}"#),
            Err(MetaError::UnsupportedAlgorithm(a)) if a == "sha256"
        ));
        assert!(matches!(
            RepoMeta::parse(b"not json"),
            Err(MetaError::Json(_))
        ));
        let m = RepoMeta::parse(
            br#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"incompatible":["x"]}}"#,
        )
        .expect("parse");
        assert_eq!(m.unknown_incompatible(), ["x"]);
    }
}
