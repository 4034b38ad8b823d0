//! The repository's error type: one enum, each variant naming the file, object or name involved.

use std::io;
use std::path::PathBuf;

use cfs_format::erofs::reader::ReadError;
use cfs_format::{Algorithm, Digest};

use super::meta::MetaError;
use crate::splitstream::{ReassembleError, SplitStreamError};
use crate::verity::{EnableError, MeasureError};

/// Why a repository operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// Nothing exists at the repository path.
    #[error("no composefs repository at {} (create one with `cfsctl init`)", path.display())]
    NotFound {
        /// The repository path.
        path: PathBuf,
    },
    /// The directory exists but has no `meta.json` (and no `objects/`).
    #[error("{} is not a composefs repository: it has no meta.json", path.display())]
    NotARepository {
        /// The repository path.
        path: PathBuf,
    },
    /// An old-format repository (`objects/` but no `meta.json`).
    #[error(
        "{} is an old-format composefs repository without meta.json; upgrading it is not supported",
        path.display()
    )]
    LegacyRepository {
        /// The repository path.
        path: PathBuf,
    },
    /// A system call failed on `path`.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// `meta.json` is invalid or of an unsupported version or algorithm.
    #[error("{}: {source}", path.display())]
    Meta {
        /// Path of `meta.json`.
        path: PathBuf,
        /// What is wrong with it.
        source: MetaError,
    },
    /// `meta.json` lists incompatible features we do not know.
    #[error("{}: unknown incompatible features {features:?}; refusing to open", path.display())]
    IncompatibleFeatures {
        /// Path of `meta.json`.
        path: PathBuf,
        /// The unknown features.
        features: Vec<String>,
    },
    /// `init` found a repository with other settings.
    #[error(
        "repository {} already exists with different settings: {}",
        path.display(),
        differences.join("; ")
    )]
    ConfigMismatch {
        /// The repository path.
        path: PathBuf,
        /// One sentence per differing setting (algorithm, EROFS format, insecure).
        differences: Vec<String>,
    },
    /// A secure repository was requested on a filesystem without fs-verity.
    #[error(
        "fs-verity is not supported on the filesystem of {} (or by this kernel); \
         use --insecure to create a repository without it",
        path.display()
    )]
    VerityUnsupported {
        /// The file verity was to be enabled on.
        path: PathBuf,
    },
    /// The repository is insecure but verity was required.
    #[error(
        "repository {} is insecure (its meta.json has no fs-verity) but verity is required",
        path.display()
    )]
    VerityRequired {
        /// The repository path.
        path: PathBuf,
    },
    /// A file of a secure repository lacks fs-verity.
    #[error("{}: fs-verity is not enabled, but the repository is secure", path.display())]
    VerityMissing {
        /// The file.
        path: PathBuf,
    },
    /// Enabling fs-verity failed.
    #[error("{}: {source}", path.display())]
    EnableVerity {
        /// The file.
        path: PathBuf,
        /// Why.
        source: EnableError,
    },
    /// Measuring fs-verity failed.
    #[error("{}: {source}", path.display())]
    MeasureVerity {
        /// The file.
        path: PathBuf,
        /// Why.
        source: MeasureError,
    },
    /// Content does not have the digest it is named by.
    #[error("{}: content has fs-verity digest {actual}, expected {expected}", path.display())]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The digest it should have (boxed to keep the error small).
        expected: Box<Digest>,
        /// The digest it has.
        actual: Box<Digest>,
    },
    /// A digest of the other algorithm was given.
    #[error("{what}: {} digest given to a {expected} repository", found)]
    AlgorithmMismatch {
        /// What was being looked up.
        what: String,
        /// The repository's algorithm.
        expected: Algorithm,
        /// The digest's algorithm.
        found: Algorithm,
    },
    /// A write was attempted on a read-only repository.
    #[error("repository {} is read-only: {reason}", path.display())]
    ReadOnly {
        /// The repository path.
        path: PathBuf,
        /// Why it is read-only.
        reason: String,
    },
    /// The repository's default EROFS format is one we cannot write.
    #[error(
        "repository {} defaults to EROFS format V{version}, which this tool cannot write \
         (it writes V0 and V1)",
        path.display()
    )]
    UnsupportedErofsFormat {
        /// The repository path.
        path: PathBuf,
        /// The format version from `meta.json`.
        version: u32,
    },
    /// No image by that name.
    #[error("image {name:?} not found")]
    ImageNotFound {
        /// The name asked for.
        name: String,
    },
    /// No stream by that name.
    #[error("stream {name:?} not found")]
    StreamNotFound {
        /// The name asked for.
        name: String,
    },
    /// No object with that digest.
    #[error("object {digest} not found")]
    ObjectNotFound {
        /// The digest.
        digest: Digest,
    },
    /// Reading the file being imported failed.
    #[error("reading the file to import: {source}")]
    Import {
        /// The system error.
        source: io::Error,
    },
    /// A name (image, stream, ref) exists but its target object is missing.
    #[error("{} -> {target}: dangling link (the object is missing; run fsck)", path.display())]
    DanglingLink {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: String,
    },
    /// A link does not lead to an object of this repository.
    #[error("{} -> {target}: does not lead to an object of this repository", path.display())]
    BadLink {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: String,
    },
    /// A name given for an image, stream or ref is not acceptable.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Bytes that should be a composefs image are not.
    #[error("{what} is not a valid composefs image: {source}")]
    InvalidImage {
        /// The image (id, name or "new image").
        what: String,
        /// The reader's error.
        source: ReadError,
    },
    /// A splitstream could not be written or parsed.
    #[error("stream {what}: {source}")]
    SplitStream {
        /// The stream (content id or digest).
        what: String,
        /// The format error.
        source: SplitStreamError,
    },
    /// Reassembling a stream failed.
    #[error("stream {what}: {source}")]
    Reassemble {
        /// The stream.
        what: String,
        /// Why.
        source: ReassembleError,
    },
    /// The background object writer stopped (its own error is reported instead where known).
    #[error("the object writer thread stopped")]
    WriterStopped,
    /// A GC root named with `--root` exists in neither `images/` nor `streams/`.
    #[error("GC root {name:?} is neither an image nor a stream")]
    RootNotFound {
        /// The name.
        name: String,
    },
}

impl RepoError {
    /// `Io` for `path`, from anything convertible to an `io::Error`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: impl Into<io::Error>) -> Self {
        RepoError::Io {
            path: path.into(),
            source: source.into(),
        }
    }
}
