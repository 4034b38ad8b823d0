//! Images: EROFS objects made mountable by a link `images/<hex>`, optionally named by refs
//! `images/refs/<name>`. Only what `images/` links to may ever be mounted.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsFd;

use cfs_format::erofs::reader::{self, Image};
use cfs_format::Digest;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::fsutil;
use super::objects::object_rel;
use super::{invalid_name, validate_ref_name, RepoError, Repository, Resolved};

/// One name of an image ([`Repository::list_images`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The name, relative to `images/`: the hex id for `images/<hex>`, `refs/<ref>` for a ref.
    pub name: String,
    /// The image id: the fs-verity digest of the EROFS image.
    pub id: Digest,
    /// Size of the image in bytes.
    pub size: u64,
}

/// Refuse names that could leave `images/` or `streams/`.
fn validate_lookup_name(name: &str) -> Result<(), RepoError> {
    let bad = |reason| Err(invalid_name(name, reason));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.starts_with('/') || name.contains('\0') {
        return bad("it is absolute or contains a NUL byte");
    }
    if name.split('/').any(|c| c == "..") {
        return bad("it has a '..' component");
    }
    Ok(())
}

impl Repository {
    /// Store `erofs` (which must parse as a composefs image) as an image: the object, then a
    /// `syncfs`, then `images/<hex>`, then, with `name`, `images/refs/<name>` (replacing any
    /// previous ref of that name). Returns the image id.
    pub fn write_image(&self, erofs: &[u8], name: Option<&str>) -> Result<Digest, RepoError> {
        self.ensure_writable()?;
        if let Some(name) = name {
            validate_ref_name(name)?;
        }
        Image::open(erofs).map_err(|source| RepoError::InvalidImage {
            what: "the new image".into(),
            source,
        })?;
        let (id, _) = self.ensure_object(erofs)?;
        self.sync()?;
        let link = format!("images/{}", id.to_hex());
        fsutil::symlink_replace(self.dir(), &link, &object_rel(&id))
            .map_err(|e| self.io_err(&link, e))?;
        if let Some(name) = name {
            self.link_image_ref(&id, name)?;
        }
        Ok(id)
    }

    /// Point `images/refs/<name>` at the existing image `id`.
    pub fn add_image_ref(&self, id: &Digest, name: &str) -> Result<(), RepoError> {
        self.ensure_writable()?;
        self.check_digest(id, "add_image_ref")?;
        validate_ref_name(name)?;
        if !self.exists(&format!("images/{}", id.to_hex()))? {
            return Err(RepoError::ImageNotFound { name: id.to_hex() });
        }
        self.link_image_ref(id, name)
    }

    fn link_image_ref(&self, id: &Digest, name: &str) -> Result<(), RepoError> {
        let link = format!("images/refs/{name}");
        fsutil::symlink_replace(self.dir(), &link, &format!("images/{}", id.to_hex()))
            .map_err(|e| self.io_err(&link, e))
    }

    /// Remove the ref `images/refs/<name>` (the image itself stays until GC).
    pub fn remove_image_ref(&self, name: &str) -> Result<(), RepoError> {
        self.ensure_writable()?;
        validate_ref_name(name)?;
        let link = format!("images/refs/{name}");
        match rustix::fs::unlinkat(self.dir(), link.as_str(), AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(Errno::NOENT) => Err(RepoError::ImageNotFound {
                name: format!("refs/{name}"),
            }),
            Err(e) => Err(self.io_err(&link, e)),
        }
    }

    /// Which `images/...` entry `name` designates: `images/<name>`, or, when that does not
    /// exist and `name` has no `/`, `images/refs/<name>`.
    fn image_entry(&self, name: &str) -> Result<String, RepoError> {
        validate_lookup_name(name)?;
        let direct = format!("images/{name}");
        if self.exists(&direct)? {
            return Ok(direct);
        }
        let by_ref = format!("images/refs/{name}");
        if !name.contains('/') && self.exists(&by_ref)? {
            return Ok(by_ref);
        }
        Err(RepoError::ImageNotFound {
            name: name.to_owned(),
        })
    }

    /// The id of the image `name` (see [`open_image`](Self::open_image)), without opening or
    /// verifying it.
    pub fn image_id(&self, name: &str) -> Result<Digest, RepoError> {
        self.entry_object(&self.image_entry(name)?)
    }

    /// The object a repository link (chain) leads to, or why it leads nowhere.
    pub(crate) fn entry_object(&self, entry: &str) -> Result<Digest, RepoError> {
        match self.resolve(entry)? {
            Resolved::Object(id) => Ok(id),
            Resolved::Missing { .. } => Err(RepoError::DanglingLink {
                path: self.full(entry),
                target: self.link_text(entry),
            }),
            Resolved::Elsewhere { target } => Err(RepoError::BadLink {
                path: self.full(entry),
                target,
            }),
        }
    }

    /// Open the image `name` for reading: an image id (hex), a ref name (`images/refs/<name>`
    /// when `images/<name>` does not exist and the name has no `/`), or a path below `images/`
    /// such as `refs/a/b`. Returns the file and the image id.
    ///
    /// A bare id is verified: the kernel's fs-verity measurement must equal it, or, in an
    /// insecure repository without verity on the file, the digest computed in userspace. Refs
    /// are not verified (as in composefs-rs). A missing image is [`RepoError::ImageNotFound`].
    pub fn open_image(&self, name: &str) -> Result<(File, Digest), RepoError> {
        let entry = self.image_entry(name)?;
        let id = self.entry_object(&entry)?;
        let rel = object_rel(&id);
        let file = match rustix::fs::openat(
            self.dir(),
            rel.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT) => {
                return Err(RepoError::DanglingLink {
                    path: self.full(&entry),
                    target: self.link_text(&entry),
                })
            }
            Err(e) => return Err(self.io_err(&rel, e)),
        };
        let by_id = Digest::from_hex_alg(self.algorithm(), name).ok();
        if let Some(named) = by_id.filter(|_| entry == format!("images/{name}")) {
            if named != id {
                return Err(RepoError::DigestMismatch {
                    path: self.full(&entry),
                    expected: Box::new(named),
                    actual: Box::new(id),
                });
            }
            self.verify_file(&file, self.full(&rel), &id)?;
        }
        Ok((file, id))
    }

    /// Read the image `name` (as [`open_image`](Self::open_image), verified the same way).
    pub fn read_image(&self, name: &str) -> Result<(Vec<u8>, Digest), RepoError> {
        let (file, id) = self.open_image(name)?;
        let data = fsutil::read_fd(file.as_fd(), u64::MAX)
            .map_err(|e| RepoError::io(self.object_path(&id), e))?;
        Ok((data, id))
    }

    /// The objects the image `name` refers to (metacopy digests and digest-named redirects).
    pub fn image_objects(&self, name: &str) -> Result<BTreeSet<Digest>, RepoError> {
        let (data, id) = self.read_image(name)?;
        reader::object_digests(&data).map_err(|source| RepoError::InvalidImage {
            what: format!("image {id}"),
            source,
        })
    }

    /// Every image name: each `images/<hex>` (named by its hex id) and each ref (named
    /// `refs/<ref>`, which [`open_image`](Self::open_image) accepts), sorted by name. Names
    /// whose object is missing are left out (GC prunes them; fsck reports them).
    pub fn list_images(&self) -> Result<Vec<ImageInfo>, RepoError> {
        let mut names = Vec::new();
        for e in fsutil::list_dir(self.dir(), "images").map_err(|e| self.io_err("images", e))? {
            if e.kind == FileType::Symlink
                && Digest::from_hex_alg(self.algorithm(), &e.name).is_ok()
            {
                names.push(format!("images/{}", e.name));
            }
        }
        names.extend(
            fsutil::walk_symlinks(self.dir(), "images/refs")
                .map_err(|e| self.io_err("images/refs", e))?,
        );
        let mut out = Vec::new();
        for rel in names {
            if let Some((id, size)) = self.named_object(&rel)? {
                let name = rel.strip_prefix("images/").unwrap_or(&rel).to_owned();
                out.push(ImageInfo { name, id, size });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The object (and its size) a link leads to, if it exists.
    pub(crate) fn named_object(&self, rel: &str) -> Result<Option<(Digest, u64)>, RepoError> {
        let Resolved::Object(id) = self.resolve(rel)? else {
            return Ok(None);
        };
        let object = object_rel(&id);
        match rustix::fs::statat(self.dir(), object.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some((id, st.st_size as u64))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.io_err(&object, e)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use cfs_format::erofs::writer::{write_image, WriteOptions};
    use cfs_format::fsverity;
    use cfs_format::tree::{Inode, InodeId, InodeKind, Metadata, RegularFile, Tree};
    use cfs_format::Algorithm;

    use super::super::testutil::{files, repo};
    use super::*;

    /// An EROFS image whose files `/f<i>` refer to the given objects (plus one inline file).
    pub(crate) fn image_referencing(objects: &[(Digest, u64)]) -> Vec<u8> {
        let meta = |permissions| Metadata {
            permissions,
            nlink: 1,
            ..Metadata::default()
        };
        let mut tree = Tree::new(meta(0o755));
        let root = InodeId(0);
        for (i, (digest, size)) in objects.iter().enumerate() {
            let file = InodeKind::Regular(RegularFile::external(*size, *digest));
            tree.add(
                root,
                format!("f{i}").as_bytes(),
                Inode::new(meta(0o644), file),
            )
            .expect("add");
        }
        let inline = InodeKind::Regular(RegularFile::inline(b"abc".to_vec()));
        tree.add(root, b"inline", Inode::new(meta(0o644), inline))
            .expect("add");
        write_image(&tree, &WriteOptions::default()).expect("write image")
    }

    #[test]
    fn images_are_written_linked_and_opened_by_id_and_ref() {
        let (_dir, repo) = repo();
        let (obj, _) = repo.ensure_object(&[5u8; 1000]).expect("object");
        let erofs = image_referencing(&[(obj, 1000)]);
        let id = repo.write_image(&erofs, Some("a/b/c")).expect("write");
        assert_eq!(id, fsverity::digest(Algorithm::Sha256, &erofs));
        let hex = id.to_hex();
        let images = repo.path().join("images");
        assert_eq!(
            std::fs::read_link(images.join(&hex)).expect("link"),
            std::path::PathBuf::from(format!("../objects/{}", id.object_path()))
        );
        assert_eq!(
            std::fs::read_link(images.join("refs/a/b/c")).expect("ref"),
            std::path::PathBuf::from(format!("../../../{hex}"))
        );

        for name in [hex.as_str(), "refs/a/b/c"] {
            let (file, got) = repo.open_image(name).expect(name);
            assert_eq!(got, id);
            assert_eq!(
                fsutil::read_fd(file.as_fd(), u64::MAX).expect("read"),
                erofs
            );
        }
        // A ref without '/' is found through the images/refs fallback.
        repo.write_image(&erofs, Some("tag")).expect("again");
        assert_eq!(repo.open_image("tag").expect("tag").1, id);
        assert_eq!(
            repo.image_objects("tag").expect("objects"),
            BTreeSet::from([obj])
        );

        let listed = repo.list_images().expect("list");
        let size = erofs.len() as u64;
        assert_eq!(
            listed,
            [hex.as_str(), "refs/a/b/c", "refs/tag"]
                .map(|name| ImageInfo {
                    name: name.into(),
                    id,
                    size
                })
                .to_vec()
        );
        for info in &listed {
            assert_eq!(
                repo.open_image(&info.name).expect("listed names open").1,
                id
            );
        }
        assert!(
            !files(repo.path()).iter().any(|f| f.contains(".tmp")),
            "{:?}",
            files(repo.path())
        );
    }

    #[test]
    fn refs_are_replaced_and_removed() {
        let (_dir, repo) = repo();
        let one = repo
            .write_image(&image_referencing(&[]), Some("x"))
            .expect("one");
        let (obj, _) = repo.ensure_object(b"0123456789").expect("object");
        let two = repo
            .write_image(&image_referencing(&[(obj, 10)]), Some("x"))
            .expect("two");
        assert_ne!(one, two);
        assert_eq!(repo.image_id("x").expect("x"), two);
        repo.add_image_ref(&one, "x").expect("re-point");
        assert_eq!(repo.image_id("x").expect("x"), one);
        repo.remove_image_ref("x").expect("remove");
        assert!(matches!(
            repo.open_image("x"),
            Err(RepoError::ImageNotFound { .. })
        ));
        assert!(matches!(
            repo.add_image_ref(&fsverity::digest(Algorithm::Sha256, b"no"), "y"),
            Err(RepoError::ImageNotFound { .. })
        ));
    }

    #[test]
    fn bad_images_and_names_are_refused() {
        let (_dir, repo) = repo();
        assert!(matches!(
            repo.write_image(b"not an image", None),
            Err(RepoError::InvalidImage { .. })
        ));
        let erofs = image_referencing(&[]);
        for bad in ["", "../x", "/abs", "a//b"] {
            assert!(
                matches!(
                    repo.write_image(&erofs, Some(bad)),
                    Err(RepoError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        for bad in ["../meta.json", "/etc/passwd"] {
            assert!(matches!(
                repo.open_image(bad),
                Err(RepoError::InvalidName { .. })
            ));
        }
        let err = repo.open_image("nothing").expect_err("missing");
        assert!(matches!(err, RepoError::ImageNotFound { ref name } if name == "nothing"));
    }

    #[test]
    fn opening_by_id_verifies_the_content() {
        let (_dir, repo) = repo();
        let erofs = image_referencing(&[]);
        let id = repo.write_image(&erofs, Some("t")).expect("write");
        let mut corrupt = erofs.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        std::fs::write(repo.object_path(&id), &corrupt).expect("corrupt");
        assert!(matches!(
            repo.open_image(&id.to_hex()),
            Err(RepoError::DigestMismatch { .. })
        ));
        // Refs are not verified.
        repo.open_image("t").expect("ref");
        std::fs::remove_file(repo.object_path(&id)).expect("rm");
        assert!(matches!(
            repo.open_image(&id.to_hex()),
            Err(RepoError::DanglingLink { .. })
        ));
    }
}
