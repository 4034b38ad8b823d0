//! The error type of this crate. Every variant says which image, blob, layer or tar entry it
//! is about, so a failed pull can be diagnosed from its message alone.

use std::io;

use cfs_repo::repo::RepoError;

use crate::digest::OciDigest;

/// Why an OCI operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    /// The repository refused or failed an operation.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A system error while doing `what`.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// An image reference (`docker://…`, `oci:DIR:TAG`, …) that cannot be used.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tag or image name that cannot be used.
    #[error("invalid image name {name:?}: {reason}")]
    InvalidTag {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A JSON document that does not parse.
    #[error("{what} is not valid: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON document that parses but is not what an image needs.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which document.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A blob the manifest (or index) names is not in the source.
    #[error("{what} {digest} is missing from {location}")]
    MissingBlob {
        /// What the blob was supposed to be (`layer`, `config`, `manifest`).
        what: String,
        /// Its digest.
        digest: OciDigest,
        /// Where it was looked for.
        location: String,
    },
    /// A blob whose content does not match its descriptor.
    #[error("{what} {digest}: {reason}")]
    BlobMismatch {
        /// What the blob was supposed to be.
        what: String,
        /// The digest it was fetched by.
        digest: OciDigest,
        /// Size or digest difference.
        reason: String,
    },
    /// A tar entry that cannot (or must not) be imported.
    #[error("layer {layer}: entry {entry:?}: {problem}")]
    Entry {
        /// The layer (diff_id).
        layer: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// What is wrong with it.
        problem: EntryProblem,
    },
    /// Reading, decompressing or parsing a layer failed.
    #[error("layer {layer}: {context}: {source}")]
    Layer {
        /// The layer (diff_id).
        layer: String,
        /// Where in the layer (e.g. `reading the body of "usr/bin/x"`).
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The uncompressed layer does not hash to the config's diff_id.
    #[error(
        "layer {blob}: diff_id mismatch: the config says {expected}, the uncompressed layer is {actual}"
    )]
    DiffIdMismatch {
        /// The layer blob (compressed digest).
        blob: OciDigest,
        /// The config's `rootfs.diff_ids` entry.
        expected: OciDigest,
        /// What the content hashes to.
        actual: OciDigest,
    },
    /// No tag or manifest of that name.
    #[error("image {name} not found (see `cfsctl oci images`)")]
    ImageNotFound {
        /// The name as given.
        name: String,
    },
    /// A stored OCI stream is not what it should be.
    #[error("{what}: {reason}")]
    Corrupt {
        /// Which stream.
        what: String,
        /// What is wrong (run fsck).
        reason: String,
    },
    /// The merged tree cannot be written as an EROFS image.
    #[error("building the EROFS image: {0}")]
    Erofs(#[from] cfs_format::erofs::writer::WriteError),
    /// The merged tree cannot be finalised (e.g. no `/usr`).
    #[error("finalising the root filesystem: {0}")]
    Transform(#[from] cfs_format::transform::TransformError),
    /// skopeo's image proxy failed.
    #[error("skopeo image proxy: {what}: {message}")]
    Proxy {
        /// What was asked of it.
        what: String,
        /// Its error.
        message: String,
    },
    /// A registry could not be reached, or refused or botched a request.
    #[error("registry {registry}: {what}: {reason}")]
    Registry {
        /// The registry as the reference names it.
        registry: String,
        /// What was asked of it.
        what: String,
        /// What went wrong.
        reason: String,
    },
    /// The image cannot be fetched the way that was asked for (`--fetcher=direct`).
    #[error("{reference}: {reason}")]
    FetcherUnavailable {
        /// The image reference.
        reference: String,
        /// Why not.
        reason: String,
    },
    /// Another layer failed first; this one was stopped.
    #[error("cancelled because another layer failed")]
    Cancelled,
}

/// What is wrong with a tar entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryProblem {
    /// The path starts with `/`.
    #[error("absolute paths are not allowed in a layer")]
    AbsolutePath,
    /// The path has a `..` component.
    #[error("the path has a '..' component")]
    DotDot,
    /// The path contains a NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
    /// A hardlink target that is absolute, has `..` or a NUL.
    #[error("invalid hardlink target {target:?}: {reason}")]
    BadLinkTarget {
        /// The target as written.
        target: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// GNU or PAX sparse files.
    #[error("sparse entries are not supported")]
    Sparse,
    /// Sockets, volume labels and other types a rootfs cannot hold.
    #[error("unsupported entry type {0:?}")]
    UnsupportedType(char),
    /// A device without major/minor numbers.
    #[error("device entry without device numbers")]
    NoDeviceNumbers,
    /// A numeric field that does not fit.
    #[error("{field} {value} is out of range")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A malformed PAX record.
    #[error("invalid PAX record {key}: {reason}")]
    BadPax {
        /// The record's key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The header itself cannot be read.
    #[error("invalid header: {0}")]
    BadHeader(String),
    /// The body ended before its declared size.
    #[error("truncated: the header declares {expected} bytes, the layer holds {actual}")]
    Truncated {
        /// Declared size.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// A parent directory does not exist in the tree.
    #[error("parent directory /{parent} does not exist")]
    ParentMissing {
        /// The missing directory.
        parent: String,
    },
    /// A path component is a symlink: writing through it could leave the tree.
    #[error("/{component} is a symlink; writing through symlinks is not allowed")]
    ThroughSymlink {
        /// The symlink.
        component: String,
    },
    /// A path component is a file, not a directory.
    #[error("/{component} is not a directory")]
    NotADirectory {
        /// The non-directory.
        component: String,
    },
    /// The root entry is not a directory.
    #[error("the root entry must be a directory")]
    RootNotDirectory,
    /// A hardlink whose target does not exist (yet).
    #[error("hardlink target /{target} does not exist")]
    HardlinkTargetMissing {
        /// The target.
        target: String,
    },
    /// A hardlink to a directory.
    #[error("hardlink target /{target} is a directory")]
    HardlinkToDirectory {
        /// The target.
        target: String,
    },
    /// A name the tree refuses (longer than 255 bytes).
    #[error("invalid file name: {0}")]
    InvalidName(String),
    /// The layer stream does not have the expected shape (an object where inline data should
    /// be, or the other way round).
    #[error("layer stream layout: {0}")]
    StreamLayout(&'static str),
}

impl OciError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> OciError {
        OciError::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn proxy(what: impl Into<String>, err: impl std::fmt::Display) -> OciError {
        OciError::Proxy {
            what: what.into(),
            message: err.to_string(),
        }
    }
}
