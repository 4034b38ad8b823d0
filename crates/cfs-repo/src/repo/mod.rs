//! The composefs repository (docs/formats.md §4), compatible with composefs-rs 0.9:
//!
//! ```text
//! <repo>/meta.json
//! <repo>/objects/XX/<rest>         content-addressed by fs-verity digest
//! <repo>/images/<hex>              -> ../objects/XX/<rest>
//! <repo>/images/refs/<name>        -> ../<hex>
//! <repo>/streams/<content-id>      -> ../objects/XX/<rest>
//! <repo>/streams/refs/<name>       -> ../<content-id>
//! ```
//!
//! [`Repository`] is opened with [`Repository::open`] or created with [`Repository::init`] and
//! holds a shared `flock` on the repository directory for its whole life; garbage collection
//! upgrades it to an exclusive one, so that it never races a writer. Each concern has its own
//! file: [`meta`] (the JSON), `objects` (storing and opening objects), `images`, `streams`,
//! `lock`, `gc`, `fsck`; `fsutil` holds the atomic-file and symlink helpers.
//!
//! Every write follows one order: objects first (a temporary file linked into place), then a
//! `syncfs`, then the names that make them reachable. A crash at any instant leaves garbage for
//! GC, never a name pointing at nothing.
//!
//! Note on locking: `flock` locks belong to open file descriptions, so two `Repository` values
//! for the same directory in one process are two lockers: an exclusive lock (a real GC) taken
//! through one waits for the other to be dropped.

mod background;
mod error;
mod fsck;
mod fsutil;
mod gc;
mod images;
mod lock;
pub mod meta;
mod objects;
mod streams;
mod trees;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::OnceLock;

use cfs_format::erofs::FormatVersion;
use cfs_format::{Algorithm, Digest};
use rustix::fs::{Access, AtFlags, FlockOperation, Mode, OFlags, StatVfsMountFlags, CWD};
use rustix::io::Errno;

pub use background::{ObjectWriter, WriteCounts};
pub use error::RepoError;
pub use fsck::{FsckError, FsckReport};
pub use gc::{GcOptions, GcReport, RemovedItem, RemovedKind};
pub use images::ImageInfo;
pub use lock::ExclusiveLock;
pub use meta::RepoMeta;
pub use streams::StreamInfo;

use crate::verity::{self, MeasureError};

/// Largest `meta.json` we read.
const META_LIMIT: u64 = 1 << 20;

/// The repository-relative directory of saved Merkle trees (see `Repository::verity_tree_dir`).
const VERITY_TREE_DIR: &str = "cache/verity";

/// Settings of a new repository ([`Repository::init`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// The fs-verity algorithm naming objects (default SHA-512, like `cfsctl init`).
    pub algorithm: Algorithm,
    /// Create the repository without fs-verity on `meta.json` (and so without requiring it
    /// anywhere). Needed on filesystems or kernels without fs-verity.
    pub insecure: bool,
    /// Default EROFS format of images (default V1, which sets the `v1_erofs` feature).
    pub erofs_version: FormatVersion,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            algorithm: Algorithm::Sha512,
            insecure: false,
            erofs_version: FormatVersion::V1,
        }
    }
}

/// How to open a repository ([`Repository::open`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenOptions {
    /// Refuse insecure repositories (`--require-verity`).
    pub require_verity: bool,
    /// Open read-only even where writing would be possible.
    pub read_only: bool,
}

/// An open composefs repository. See the [module documentation](self).
#[derive(Debug)]
pub struct Repository {
    path: PathBuf,
    /// The repository directory; carries the shared `flock`.
    dir: OwnedFd,
    meta: RepoMeta,
    insecure: bool,
    /// Why the repository cannot be written, if it cannot.
    read_only: Option<String>,
    /// `objects/`, opened (and created) on first use.
    objects: OnceLock<OwnedFd>,
    /// Insecure repository on a filesystem without fs-verity: stop trying to enable it.
    verity_unsupported: AtomicBool,
    /// The filesystem refused `O_TMPFILE`: use named temporaries.
    no_tmpfile: AtomicBool,
    /// A background writeback flush is running (one at a time, however many imports run).
    flushing: AtomicBool,
}

/// `$HOME/.var/lib/composefs` (`--user`), or `None` without `$HOME`.
pub fn default_user_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".var/lib/composefs"))
}

/// `/sysroot/composefs` (`--system`).
pub fn default_system_path() -> PathBuf {
    PathBuf::from("/sysroot/composefs")
}

/// The system path for root, the user path otherwise (`None` without `$HOME`).
pub fn default_path() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() {
        Some(default_system_path())
    } else {
        default_user_path()
    }
}

/// Is fs-verity enabled on `fd`? `Ok(false)` when not enabled or not supported.
fn has_verity(fd: BorrowedFd<'_>, path: &Path) -> Result<bool, RepoError> {
    match verity::measure(fd) {
        Ok(_) => Ok(true),
        Err(MeasureError::NotSupported | MeasureError::NotEnabled) => Ok(false),
        Err(source) => Err(RepoError::MeasureVerity {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl Repository {
    /// Create a repository at `path` (directory mode 0700, parents as needed) with `meta.json`
    /// written atomically, exactly as composefs-rs 0.9 writes it, then open it.
    ///
    /// Unless `opts.insecure`, fs-verity is enabled on `meta.json` before it gets its name; a
    /// filesystem without fs-verity is then an error ([`RepoError::VerityUnsupported`]) and
    /// nothing is written. Initialising an existing repository with the same settings does
    /// nothing; with other settings it fails with [`RepoError::ConfigMismatch`]. (An insecure
    /// request on a secure repository is accepted: `insecure` only permits the absence of
    /// verity.)
    pub fn init(path: impl AsRef<Path>, opts: &InitOptions) -> Result<Repository, RepoError> {
        let path = path.as_ref();
        // The directories this call creates go again if it fails (a refused init leaves
        // nothing behind); ones that were there are left alone.
        let mut created: Vec<PathBuf> = path
            .ancestors()
            .filter(|p| !p.as_os_str().is_empty())
            .take_while(|p| std::fs::symlink_metadata(p).is_err())
            .map(Path::to_path_buf)
            .collect();
        created.reverse();
        let result = Self::init_created(path, opts);
        if result.is_err() {
            for dir in created.iter().rev() {
                if std::fs::remove_dir(dir).is_err() {
                    break;
                }
            }
        }
        result
    }

    fn init_created(path: &Path, opts: &InitOptions) -> Result<Repository, RepoError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| RepoError::io(parent, e))?;
        }
        match rustix::fs::mkdirat(CWD, path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(RepoError::io(path, e)),
        }
        let dir = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RepoError::io(path, e))?;
        let meta_path = path.join("meta.json");
        let wanted = RepoMeta::new(opts.algorithm, opts.erofs_version);
        match rustix::fs::statat(&dir, "meta.json", AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => {
                Self::check_existing(path, dir.as_fd(), &wanted, opts)?;
                drop(dir);
                return Self::open(path, &OpenOptions::default());
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(RepoError::io(&meta_path, e)),
        }
        let json = wanted.to_json();
        /// `write_new_file` failures: system errors, or ours from enabling verity.
        enum Failure {
            Io(io::Error),
            Repo(RepoError),
        }
        impl From<io::Error> for Failure {
            fn from(e: io::Error) -> Self {
                Failure::Io(e)
            }
        }
        // Another `init` may win the race to link meta.json: then compare with its settings.
        let written = fsutil::write_new_file(dir.as_fd(), "meta.json", json.as_bytes(), |ro| {
            if opts.insecure {
                return Ok(());
            }
            match verity::enable(ro, opts.algorithm) {
                Ok(()) | Err(verity::EnableError::AlreadyEnabled) => Ok(()),
                Err(verity::EnableError::NotSupported) => {
                    Err(Failure::Repo(RepoError::VerityUnsupported {
                        path: meta_path.clone(),
                    }))
                }
                Err(source) => Err(Failure::Repo(RepoError::EnableVerity {
                    path: meta_path.clone(),
                    source,
                })),
            }
        });
        match written {
            Ok(()) => {}
            Err(Failure::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                Self::check_existing(path, dir.as_fd(), &wanted, opts)?;
            }
            Err(Failure::Io(e)) => return Err(RepoError::io(&meta_path, e)),
            Err(Failure::Repo(e)) => return Err(e),
        }
        drop(dir);
        Self::open(path, &OpenOptions::default())
    }

    /// `init` on an existing `meta.json`: the same settings or [`RepoError::ConfigMismatch`].
    fn check_existing(
        path: &Path,
        dir: BorrowedFd<'_>,
        wanted: &RepoMeta,
        opts: &InitOptions,
    ) -> Result<(), RepoError> {
        let meta_path = path.join("meta.json");
        let fd = rustix::fs::openat(
            dir,
            "meta.json",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RepoError::io(&meta_path, e))?;
        let bytes =
            fsutil::read_fd(fd.as_fd(), META_LIMIT).map_err(|e| RepoError::io(&meta_path, e))?;
        let existing = RepoMeta::parse(&bytes).map_err(|source| RepoError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        let mut differences = Vec::new();
        if existing.algorithm != wanted.algorithm {
            differences.push(format!(
                "algorithm is {} (requested {})",
                existing.algorithm.repo_name(),
                wanted.algorithm.repo_name()
            ));
        }
        let (have, want) = (
            existing.default_erofs_version(),
            wanted.default_erofs_version(),
        );
        if have != want {
            differences.push(format!(
                "default EROFS format is V{have} (requested V{want})"
            ));
        }
        if !opts.insecure && !has_verity(fd.as_fd(), &meta_path)? {
            differences.push(
                "the repository is insecure (meta.json has no fs-verity) but a secure one was \
                 requested (pass --insecure)"
                    .into(),
            );
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(RepoError::ConfigMismatch {
                path: path.to_path_buf(),
                differences,
            })
        }
    }

    /// Open the repository at `path` and take a shared lock on it (blocking while a GC holds
    /// the exclusive one).
    ///
    /// Security is decided by `meta.json` itself: with fs-verity it is a secure repository
    /// (objects must have verity), without it an insecure one (digests are computed in
    /// userspace). Unknown incompatible features are refused; unknown read-only-compatible
    /// features, a read-only filesystem or a missing write permission make it read-only.
    pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Repository, RepoError> {
        let path = path.as_ref();
        let dir = match rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                return Err(RepoError::NotFound {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(RepoError::io(path, e)),
        };
        rustix::fs::flock(&dir, FlockOperation::LockShared).map_err(|e| RepoError::io(path, e))?;

        let meta_path = path.join("meta.json");
        let meta_fd = match rustix::fs::openat(
            &dir,
            "meta.json",
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let legacy = rustix::fs::statat(&dir, "objects", AtFlags::empty()).is_ok();
                let path = path.to_path_buf();
                return Err(if legacy {
                    RepoError::LegacyRepository { path }
                } else {
                    RepoError::NotARepository { path }
                });
            }
            Err(e) => return Err(RepoError::io(&meta_path, e)),
        };
        let bytes = fsutil::read_fd(meta_fd.as_fd(), META_LIMIT)
            .map_err(|e| RepoError::io(&meta_path, e))?;
        let meta = RepoMeta::parse(&bytes).map_err(|source| RepoError::Meta {
            path: meta_path.clone(),
            source,
        })?;
        let incompatible = meta.unknown_incompatible();
        if !incompatible.is_empty() {
            return Err(RepoError::IncompatibleFeatures {
                path: meta_path,
                features: incompatible,
            });
        }
        let insecure = !has_verity(meta_fd.as_fd(), &meta_path)?;
        if insecure && opts.require_verity {
            return Err(RepoError::VerityRequired {
                path: path.to_path_buf(),
            });
        }
        let read_only = Self::compute_read_only(dir.as_fd(), &meta, opts);
        Ok(Repository {
            path: path.to_path_buf(),
            dir,
            meta,
            insecure,
            read_only,
            objects: OnceLock::new(),
            verity_unsupported: AtomicBool::new(false),
            no_tmpfile: AtomicBool::new(false),
            flushing: AtomicBool::new(false),
        })
    }

    fn compute_read_only(
        dir: BorrowedFd<'_>,
        meta: &RepoMeta,
        opts: &OpenOptions,
    ) -> Option<String> {
        if opts.read_only {
            return Some("opened read-only".into());
        }
        let unknown = meta.unknown_read_only_compatible();
        if !unknown.is_empty() {
            return Some(format!(
                "meta.json has unknown read-only-compatible features {unknown:?}"
            ));
        }
        if let Ok(st) = rustix::fs::fstatvfs(dir) {
            if st.f_flag.contains(StatVfsMountFlags::RDONLY) {
                return Some("it is on a read-only filesystem".into());
            }
        }
        match rustix::fs::accessat(dir, ".", Access::WRITE_OK, AtFlags::empty()) {
            Err(Errno::ACCESS | Errno::PERM | Errno::ROFS) => {
                Some("no write permission on the repository directory".into())
            }
            _ => None,
        }
    }

    /// The path the repository was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the FUSE server keeps the Merkle trees of large objects between mounts, so that
    /// it can check reads block by block without hashing a whole object first. A cache: its
    /// files are checked against the objects' digests before use, and `gc` removes a tree
    /// with its object. composefs-rs ignores the directory.
    pub fn verity_tree_dir(&self) -> std::path::PathBuf {
        self.path.join(VERITY_TREE_DIR)
    }

    /// The fs-verity algorithm of every object id.
    pub fn algorithm(&self) -> Algorithm {
        self.meta.algorithm
    }

    /// The parsed `meta.json`.
    pub fn meta(&self) -> &RepoMeta {
        &self.meta
    }

    /// `true` when `meta.json` has no fs-verity: objects are accepted without it and digests
    /// are computed in userspace.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Why the repository cannot be written, or `None` if it can.
    pub fn read_only_reason(&self) -> Option<&str> {
        self.read_only.as_deref()
    }

    /// The default EROFS format number from `meta.json` (0, 1 or 2).
    pub fn erofs_version(&self) -> u32 {
        self.meta.default_erofs_version()
    }

    /// The EROFS format new images should be written in, or
    /// [`RepoError::UnsupportedErofsFormat`] for repositories defaulting to V2.
    pub fn default_format(&self) -> Result<FormatVersion, RepoError> {
        let version = self.erofs_version();
        FormatVersion::from_number(version).ok_or_else(|| RepoError::UnsupportedErofsFormat {
            path: self.path.clone(),
            version,
        })
    }

    /// `syncfs` on the repository's filesystem: everything written so far is durable.
    pub fn sync(&self) -> Result<(), RepoError> {
        rustix::fs::syncfs(&self.dir).map_err(|e| RepoError::io(&self.path, e))
    }

    /// Fail with [`RepoError::ReadOnly`] unless the repository can be written.
    pub fn ensure_writable(&self) -> Result<(), RepoError> {
        match &self.read_only {
            None => Ok(()),
            Some(reason) => Err(RepoError::ReadOnly {
                path: self.path.clone(),
                reason: reason.clone(),
            }),
        }
    }

    /// The repository directory descriptor.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// `repo/rel` for messages.
    pub(crate) fn full(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// `Io` error for the repository-relative path `rel`.
    pub(crate) fn io_err(&self, rel: &str, e: impl Into<io::Error>) -> RepoError {
        RepoError::io(self.full(rel), e)
    }

    /// Fail unless `digest` uses the repository's algorithm.
    pub(crate) fn check_digest(&self, digest: &Digest, what: &str) -> Result<(), RepoError> {
        if digest.algorithm() == self.algorithm() {
            Ok(())
        } else {
            Err(RepoError::AlgorithmMismatch {
                what: what.to_owned(),
                expected: self.algorithm(),
                found: digest.algorithm(),
            })
        }
    }
}

/// Where a repository symlink (or chain of them) leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// To `objects/XX/<rest>` of this digest (which may or may not exist).
    Object(Digest),
    /// Through a name that does not exist (a dangling link).
    Missing {
        /// The first target that does not exist (repository-relative).
        target: String,
    },
    /// Somewhere that is not an object of this repository (absolute, outside, not a link, a
    /// badly named object, a loop).
    Elsewhere {
        /// The last target reached (as written in the link when it could not be resolved).
        target: String,
    },
}

/// Most links followed when resolving a name (a ref to an image to an object is 2).
const MAX_LINK_HOPS: usize = 8;

impl Repository {
    /// Follow the symlink `rel` (repository-relative), and any symlinks it leads to, to an
    /// object. `Missing` with `rel` itself as target when `rel` does not exist.
    pub(crate) fn resolve(&self, rel: &str) -> Result<Resolved, RepoError> {
        let mut cur = rel.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            if let Some(object) = cur.strip_prefix("objects/") {
                let digest = Digest::from_object_path(object)
                    .ok()
                    .filter(|d| d.algorithm() == self.algorithm() && d.object_path() == object);
                return Ok(match digest {
                    Some(d) => Resolved::Object(d),
                    None => Resolved::Elsewhere { target: cur },
                });
            }
            match fsutil::read_link(self.dir(), &cur) {
                Ok(Some(target)) => match fsutil::resolve_relative(&cur, &target) {
                    Some(next) => cur = next,
                    None => return Ok(Resolved::Elsewhere { target }),
                },
                Ok(None) => return Ok(Resolved::Elsewhere { target: cur }),
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) =>
                {
                    return Ok(Resolved::Missing { target: cur })
                }
                Err(e) => return Err(self.io_err(&cur, e)),
            }
        }
        Ok(Resolved::Elsewhere { target: cur })
    }

    /// Does the repository-relative `rel` exist (without following a final symlink)?
    pub(crate) fn exists(&self, rel: &str) -> Result<bool, RepoError> {
        match rustix::fs::statat(self.dir(), rel, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(false),
            Err(e) => Err(self.io_err(rel, e)),
        }
    }

    /// The raw target of the symlink `rel`, for messages (empty when unreadable).
    pub(crate) fn link_text(&self, rel: &str) -> String {
        fsutil::read_link(self.dir(), rel)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// The error for a name refused for `reason`.
pub(crate) fn invalid_name(name: &str, reason: &'static str) -> RepoError {
    RepoError::InvalidName {
        name: name.to_owned(),
        reason,
    }
}

/// Check a name used below `images/refs/` or `streams/refs/`: relative, `/`-separated, no empty,
/// `.` or `..` components, no NUL.
pub(crate) fn validate_ref_name(name: &str) -> Result<(), RepoError> {
    let bad = |reason| Err(invalid_name(name, reason));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if name.starts_with('/') {
        return bad("it is absolute");
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("it has an empty, '.' or '..' component");
    }
    if name
        .split('/')
        .any(|c| c.starts_with(fsutil::TMP_LINK_PREFIX))
    {
        return bad("components starting with .tmp-link- are reserved");
    }
    Ok(())
}

/// Check a first-level name (a stream content id): a valid ref name without `/`, not `refs`.
pub(crate) fn validate_leaf_name(name: &str) -> Result<(), RepoError> {
    validate_ref_name(name)?;
    if name.contains('/') {
        return Err(invalid_name(name, "it contains '/'"));
    }
    if name == "refs" {
        return Err(invalid_name(name, "'refs' is reserved"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A fresh insecure SHA-256 repository in a temporary directory.
    pub(crate) fn repo() -> (tempfile::TempDir, Repository) {
        repo_with(Algorithm::Sha256)
    }

    /// A fresh insecure repository of `algorithm`.
    pub(crate) fn repo_with(algorithm: Algorithm) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repository::init(
            dir.path().join("repo"),
            &InitOptions {
                algorithm,
                insecure: true,
                ..InitOptions::default()
            },
        )
        .expect("init");
        (dir, repo)
    }

    pub(crate) use crate::testutil::files_under as files;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::testutil::*;
    use super::*;

    #[test]
    fn init_writes_the_composefs_rs_meta_json_and_a_private_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/repo");
        let repo = Repository::init(
            &path,
            &InitOptions {
                insecure: true,
                ..InitOptions::default()
            },
        )
        .expect("init");
        let json = std::fs::read_to_string(path.join("meta.json")).expect("read");
        assert_eq!(
            json,
            RepoMeta::new(Algorithm::Sha512, FormatVersion::V1).to_json()
        );
        assert_eq!(json.len(), 219);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(repo.algorithm(), Algorithm::Sha512);
        assert!(repo.is_insecure());
        assert_eq!(repo.default_format().expect("format"), FormatVersion::V1);
        assert_eq!(repo.read_only_reason(), None);
        assert_eq!(files(&path), ["meta.json"], "no temporaries left");
    }

    #[test]
    fn init_is_idempotent_and_reports_mismatches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("repo");
        let opts = InitOptions {
            algorithm: Algorithm::Sha256,
            insecure: true,
            erofs_version: FormatVersion::V1,
        };
        drop(Repository::init(&path, &opts).expect("init"));
        let before = std::fs::read(path.join("meta.json")).expect("read");
        drop(Repository::init(&path, &opts).expect("init again"));
        assert_eq!(std::fs::read(path.join("meta.json")).expect("read"), before);

        let err = Repository::init(
            &path,
            &InitOptions {
                algorithm: Algorithm::Sha512,
                erofs_version: FormatVersion::V0,
                ..opts
            },
        )
        .expect_err("mismatch");
        let RepoError::ConfigMismatch { differences, .. } = &err else {
            panic!("unexpected {err}");
        };
        assert_eq!(differences.len(), 2, "{differences:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("algorithm is fsverity-sha256-12 (requested fsverity-sha512-12)"),
            "{msg}"
        );
        assert!(
            msg.contains("default EROFS format is V1 (requested V0)"),
            "{msg}"
        );

        // Asking for a secure repository: there is no verity here, so this mismatches too.
        let err = Repository::init(
            &path,
            &InitOptions {
                insecure: false,
                ..opts
            },
        )
        .expect_err("secure requested");
        assert!(err.to_string().contains("--insecure"), "{err}");
    }

    #[test]
    fn secure_init_without_fs_verity_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("repo");
        match Repository::init(&path, &InitOptions::default()) {
            // A kernel with fs-verity on this filesystem: a secure repository.
            Ok(repo) => assert!(!repo.is_insecure()),
            Err(err) => {
                assert!(
                    matches!(err, RepoError::VerityUnsupported { .. }),
                    "unexpected {err}"
                );
                assert!(err.to_string().contains("--insecure"), "{err}");
                assert!(!path.exists(), "the refused init left {path:?} behind");
                // Nor the parents it made, while a directory that was there stays.
                let deep = dir.path().join("a/b/repo");
                assert!(Repository::init(&deep, &InitOptions::default()).is_err());
                assert!(!dir.path().join("a").exists(), "parents left behind");
                assert!(dir.path().exists());
                let existing = dir.path().join("existing");
                std::fs::create_dir(&existing).expect("mkdir");
                assert!(Repository::init(&existing, &InitOptions::default()).is_err());
                assert!(existing.is_dir(), "a directory that was there is kept");
            }
        }
    }

    #[test]
    fn open_errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = Repository::open(&missing, &OpenOptions::default()).expect_err("missing");
        assert!(matches!(err, RepoError::NotFound { .. }));
        assert!(err.to_string().contains(&missing.display().to_string()));

        std::fs::create_dir(dir.path().join("old")).expect("mkdir");
        std::fs::create_dir(dir.path().join("old/objects")).expect("mkdir");
        assert!(matches!(
            Repository::open(dir.path().join("old"), &OpenOptions::default()),
            Err(RepoError::LegacyRepository { .. })
        ));
    }

    #[test]
    fn open_honours_meta_json() {
        let (dir, repo) = repo();
        let path = repo.path().to_path_buf();
        drop(repo);
        let write_meta = |json: &str| std::fs::write(path.join("meta.json"), json).expect("write");

        let err = Repository::open(
            &path,
            &OpenOptions {
                require_verity: true,
                ..OpenOptions::default()
            },
        )
        .expect_err("insecure");
        assert!(matches!(err, RepoError::VerityRequired { .. }));

        write_meta(
            r#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"incompatible":["zz"]}}"#,
        );
        assert!(matches!(
            Repository::open(&path, &OpenOptions::default()),
            Err(RepoError::IncompatibleFeatures { features, .. }) if features == ["zz"]
        ));

        write_meta(
            r#"{"version":1,"algorithm":"fsverity-sha256-12","features":{"read-only-compatible":["zz"]}}"#,
        );
        let repo = Repository::open(&path, &OpenOptions::default()).expect("open");
        assert!(repo.read_only_reason().expect("ro").contains("zz"));
        assert!(matches!(
            repo.ensure_object(b"x"),
            Err(RepoError::ReadOnly { .. })
        ));
        // No erofs_formats and no v1_erofs: a V2 repository, which we cannot write images for.
        assert!(matches!(
            repo.default_format(),
            Err(RepoError::UnsupportedErofsFormat { version: 2, .. })
        ));
        drop(repo);

        write_meta(r#"{"version":2,"algorithm":"fsverity-sha256-12"}"#);
        let err = Repository::open(&path, &OpenOptions::default()).expect_err("v2");
        assert!(err.to_string().contains("meta.json"), "{err}");

        let repo = {
            write_meta(&RepoMeta::new(Algorithm::Sha256, FormatVersion::V0).to_json());
            Repository::open(
                &path,
                &OpenOptions {
                    read_only: true,
                    ..OpenOptions::default()
                },
            )
            .expect("open")
        };
        assert_eq!(repo.default_format().expect("v0"), FormatVersion::V0);
        assert_eq!(repo.read_only_reason(), Some("opened read-only"));
        drop(dir);
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "a/b/c", "oci/library%2Fnginx", "x:y"] {
            validate_ref_name(good).expect(good);
        }
        for bad in [
            "",
            "/a",
            "a//b",
            "a/./b",
            "../x",
            "a/",
            "a\0b",
            ".tmp-link-x",
        ] {
            assert!(validate_ref_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_leaf_name("a/b").is_err());
        assert!(validate_leaf_name("refs").is_err());
        validate_leaf_name("oci-config-sha256:00").expect("ok");
    }

    #[test]
    fn default_paths() {
        assert_eq!(default_system_path(), PathBuf::from("/sysroot/composefs"));
        if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            assert_eq!(
                default_user_path(),
                Some(PathBuf::from(home).join(".var/lib/composefs"))
            );
        }
    }
}
