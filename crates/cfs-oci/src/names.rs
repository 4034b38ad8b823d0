//! How OCI things are named in a repository (docs/formats.md §5.3): stream ids, named references
//! and tags.
//!
//! ```text
//! streams/oci-manifest-<manifest digest>   raw manifest; refs config:<digest> and <diff_id>…
//! streams/oci-config-<config digest>       raw config; refs <diff_id>… and composefs.image.v1
//! streams/oci-layer-<diff_id>              the tar, split
//! streams/refs/oci/<encoded tag>           -> ../../oci-manifest-<digest>
//! ```

use std::fmt;
use std::str::FromStr;

use crate::digest::OciDigest;
use crate::error::OciError;

/// Directory below `streams/refs/` holding the tags.
pub const TAG_DIR: &str = "oci";
/// Named reference of a config stream to its V0/V1 EROFS image.
pub const IMAGE_REF_V1: &str = "composefs.image.v1";
/// Named reference of a config stream to its V2 EROFS image (written by composefs-rs for V2
/// repositories; we read it, never write it).
pub const IMAGE_REF_V2: &str = "composefs.image";
/// Prefix of a manifest stream's named reference to its config stream.
pub const CONFIG_REF_PREFIX: &str = "config:";

/// `oci-layer-<diff_id>`.
pub fn layer_stream_id(diff_id: &OciDigest) -> String {
    format!("oci-layer-{diff_id}")
}

/// `oci-config-<config digest>`.
pub fn config_stream_id(digest: &OciDigest) -> String {
    format!("oci-config-{digest}")
}

/// `oci-manifest-<manifest digest>`.
pub fn manifest_stream_id(digest: &OciDigest) -> String {
    format!("oci-manifest-{digest}")
}

/// The manifest digest in a manifest stream id, if it is one.
pub fn parse_manifest_stream_id(id: &str) -> Option<OciDigest> {
    id.strip_prefix("oci-manifest-")?.parse().ok()
}

/// Encode a tag for one path component: `%` → `%25` first, then `/` → `%2F`.
pub fn encode_tag(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

/// Undo [`encode_tag`]; `None` for text `encode_tag` never produces.
pub fn decode_tag(encoded: &str) -> Option<String> {
    let mut out = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(r) = after.strip_prefix("%25") {
            out.push('%');
            rest = r;
        } else if let Some(r) = after.strip_prefix("%2F") {
            out.push('/');
            rest = r;
        } else {
            return None;
        }
    }
    if rest.contains('/') {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

/// Check a tag name: not empty, no NUL, not starting with `@` (reserved for digests).
pub fn validate_tag(name: &str) -> Result<(), OciError> {
    let bad = |reason: &'static str| {
        Err(OciError::InvalidTag {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.starts_with('@') {
        return bad("a leading '@' is reserved for digest references (@sha256:…)");
    }
    if name.contains('\0') {
        return bad("it contains a NUL byte");
    }
    let encoded = encode_tag(name);
    if encoded == "." || encoded == ".." || encoded.starts_with(".tmp-link-") {
        return bad("the name is reserved");
    }
    Ok(())
}

/// The stream ref name of a tag: `oci/<encoded>` (below `streams/refs/`).
pub fn tag_ref(name: &str) -> Result<String, OciError> {
    validate_tag(name)?;
    Ok(format!("{TAG_DIR}/{}", encode_tag(name)))
}

/// How a command names an image: a tag, or `@sha256:<manifest digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageName {
    /// A tag (`streams/refs/oci/<encoded>`).
    Tag(String),
    /// A manifest digest (`streams/oci-manifest-<digest>`).
    Digest(OciDigest),
}

impl FromStr for ImageName {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(d) = s.strip_prefix('@') {
            let digest = d.parse::<OciDigest>().map_err(|e| OciError::InvalidTag {
                name: s.to_owned(),
                reason: e.reason,
            })?;
            return Ok(ImageName::Digest(digest));
        }
        validate_tag(s)?;
        Ok(ImageName::Tag(s.to_owned()))
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageName::Tag(t) => f.write_str(t),
            ImageName::Digest(d) => write!(f, "@{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_encoding_round_trips() {
        for (name, enc) in [
            ("library/nginx", "library%2Fnginx"),
            ("docker://busybox", "docker:%2F%2Fbusybox"),
            ("50%/x", "50%25%2Fx"),
            ("%2F", "%252F"),
            ("plain:tag", "plain:tag"),
        ] {
            assert_eq!(encode_tag(name), enc);
            assert_eq!(decode_tag(enc).as_deref(), Some(name));
        }
        assert_eq!(decode_tag("a%zz"), None);
        assert_eq!(decode_tag("a/b"), None);
    }

    #[test]
    fn names_parse() {
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            format!("@{d}").parse::<ImageName>().expect("digest"),
            ImageName::Digest(d.parse().expect("d"))
        );
        assert_eq!(
            "oci:/x:t".parse::<ImageName>().expect("tag"),
            ImageName::Tag("oci:/x:t".into())
        );
        for bad in ["", "@sha256:00", "..", ".", "a\0b", ".tmp-link-x"] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad:?}");
        }
        assert_eq!(
            tag_ref("docker://a/b").expect("ref"),
            "oci/docker:%2F%2Fa%2Fb"
        );
        assert_eq!(
            parse_manifest_stream_id(&manifest_stream_id(&d.parse().expect("d"))),
            Some(d.parse().expect("d"))
        );
    }
}
