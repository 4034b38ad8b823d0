//! OCI content digests (`sha256:<hex>`, `sha512:<hex>`) and the hasher that checks them.
//!
//! These are the digests of the OCI image spec (plain SHA-2 over a blob's bytes), not
//! fs-verity digests: they name manifests, configs and layer blobs, and a layer's `diff_id` is
//! the digest of its uncompressed tar. They end up in stream names and in `blobs/<alg>/<hex>`
//! paths of OCI layouts, so parsing is strict: a known algorithm and lowercase hex of exactly
//! the right length.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The hash function of an [`OciDigest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256 (what nearly every image uses).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// `sha256` / `sha512`.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

/// A validated OCI digest such as `sha256:e3b0…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OciDigest {
    algorithm: DigestAlgorithm,
    hex: String,
}

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {text:?}: {reason}")]
pub struct ParseOciDigestError {
    /// The rejected text.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl OciDigest {
    /// The hash function.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest of `data`.
    pub fn of(algorithm: DigestAlgorithm, data: &[u8]) -> OciDigest {
        let mut h = BlobHasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// Does `data` hash to this digest?
    pub fn matches(&self, data: &[u8]) -> bool {
        OciDigest::of(self.algorithm, data) == *self
    }
}

impl fmt::Display for OciDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl FromStr for OciDigest {
    type Err = ParseOciDigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason| ParseOciDigestError {
            text: text.to_owned(),
            reason,
        };
        let (alg, hex) = text
            .split_once(':')
            .ok_or_else(|| bad("expected <algorithm>:<hex>"))?;
        let algorithm = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            _ => return Err(bad("unsupported algorithm (expected sha256 or sha512)")),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(bad("wrong number of hex digits for the algorithm"));
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad("the hex part must be lowercase hexadecimal"));
        }
        Ok(OciDigest {
            algorithm,
            hex: hex.to_owned(),
        })
    }
}

impl serde::Serialize for OciDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for OciDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-2 over a blob, giving an [`OciDigest`].
#[derive(Debug, Clone)]
pub enum BlobHasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl BlobHasher {
    /// A fresh hasher.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => BlobHasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => BlobHasher::Sha512(Sha512::new()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            BlobHasher::Sha256(h) => h.update(data),
            BlobHasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> OciDigest {
        let (algorithm, bytes) = match self {
            BlobHasher::Sha256(h) => (DigestAlgorithm::Sha256, h.finalize().to_vec()),
            BlobHasher::Sha512(h) => (DigestAlgorithm::Sha512, h.finalize().to_vec()),
        };
        OciDigest {
            algorithm,
            hex: cfs_format::fsverity::to_hex(&bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_display_round_trip_and_hashing() {
        let d: OciDigest = EMPTY.parse().expect("parse");
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.hex().len(), 64);
        assert_eq!(OciDigest::of(DigestAlgorithm::Sha256, b""), d);
        assert!(d.matches(b""));
        assert!(!d.matches(b"x"));
        let mut h = BlobHasher::new(DigestAlgorithm::Sha512);
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), OciDigest::of(DigestAlgorithm::Sha512, b"abc"));
    }

    #[test]
    fn strict_parsing() {
        for bad in [
            "",
            "sha256",
            "md5:00",
            "sha256:00",
            &EMPTY.to_uppercase(),
            &format!("{EMPTY}0"),
            "sha256:../../../../../../../../../../../../../../../../../../../../../etc",
            &EMPTY.replace('e', "/"),
        ] {
            assert!(bad.parse::<OciDigest>().is_err(), "{bad:?}");
        }
    }
}
