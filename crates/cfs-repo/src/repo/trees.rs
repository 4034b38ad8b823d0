//! Saved Merkle trees of large objects (`cache/verity/XX/<rest>`, the object's own path).
//!
//! Block-level verification (the FUSE server with `verify=on`) needs an object's whole tree
//! before it can check the first block it serves; without a saved tree it would read and hash
//! the whole object first, most of a second for 512 MiB. The importer hashes every block
//! anyway, so it keeps the tree of each new object of at least
//! [`merkle::SAVED_TREE_MIN`] bytes. The trees are a cache: readers check every tree block
//! against the object's digest before trusting it, so a tree is written without `fsync` of its
//! own (a torn one is refused and rebuilt), failing to write one is not an error, and `gc`
//! removes one with its object.

use cfs_format::fsverity::{self, merkle};
use cfs_format::Digest;
use std::os::fd::AsFd;

use rustix::fs::AtFlags;

use super::fsutil;
use super::{RepoError, Repository, VERITY_TREE_DIR};

impl Repository {
    /// Whether a new object of `size` bytes should have its tree saved.
    pub(crate) fn wants_tree(size: u64) -> bool {
        size >= merkle::SAVED_TREE_MIN
    }

    /// The digest of `data` and, for a content large enough to keep one, its Merkle tree (the
    /// same hashing: the tree's root gives the digest).
    pub(crate) fn digest_keeping_tree(&self, data: &[u8]) -> (Digest, Option<Vec<u8>>) {
        let algorithm = self.algorithm();
        if Self::wants_tree(data.len() as u64) {
            let (tree, digest) = merkle::tree_of(algorithm, data);
            (digest, Some(tree))
        } else {
            (fsverity::digest(algorithm, data), None)
        }
    }

    /// Store `data` (content `digest`) as an object and, if it is new, save its `tree`.
    /// Returns whether the object was newly written.
    pub(crate) fn store_keeping_tree(
        &self,
        data: &[u8],
        digest: Digest,
        tree: Option<&[u8]>,
    ) -> Result<bool, RepoError> {
        let fresh = self.store_bytes(data, digest)?;
        if let (true, Some(tree)) = (fresh, tree) {
            self.save_verity_tree(&digest, tree);
        }
        Ok(fresh)
    }

    /// Save `tree`, the serialised Merkle tree of the object `digest`, replacing any saved
    /// before. Best effort: a failure is ignored.
    pub(crate) fn save_verity_tree(&self, digest: &Digest, tree: &[u8]) {
        if tree.is_empty() || self.read_only.is_some() {
            return;
        }
        let name = digest.object_path();
        let result = (|| -> std::io::Result<()> {
            let fan_out = format!("{VERITY_TREE_DIR}/{}", &name[..2]);
            fsutil::ensure_dirs(self.dir(), &fan_out)?;
            let dir = fsutil::open_dir(self.dir(), &fan_out)?;
            let tmp = fsutil::create_tmpfile(dir.as_fd(), &self.no_tmpfile)?;
            let leaf = &name[3..];
            let placed = fsutil::write_all_fd(tmp.fd(), tree).and_then(|()| {
                let temp_name = format!("{}{}", fsutil::TMP_LINK_PREFIX, fsutil::random_suffix());
                let linked = match &tmp {
                    fsutil::TmpFile::Anonymous(fd) => {
                        fsutil::link_anonymous(fd.as_fd(), dir.as_fd(), &temp_name)
                    }
                    fsutil::TmpFile::Named { name: t, .. } => {
                        rustix::fs::renameat(dir.as_fd(), t.as_str(), dir.as_fd(), &temp_name)
                    }
                };
                linked
                    .and_then(|()| rustix::fs::renameat(dir.as_fd(), &temp_name, dir.as_fd(), leaf))
                    .map_err(|e| {
                        let _ = rustix::fs::unlinkat(dir.as_fd(), &temp_name, AtFlags::empty());
                        std::io::Error::from(e)
                    })
            });
            if placed.is_err() {
                tmp.discard(dir.as_fd());
            }
            placed
        })();
        // Nobody needs to hear of it: the reader that wanted this tree builds it instead.
        let _ = result;
    }
}

#[cfg(test)]
mod tests {
    use cfs_format::fsverity::Algorithm;

    use super::super::testutil::repo_with;
    use super::*;

    fn content(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 12) as u8)
            .collect()
    }

    fn saved_tree(repo: &Repository, digest: &Digest) -> Option<Vec<u8>> {
        std::fs::read(repo.verity_tree_dir().join(digest.object_path())).ok()
    }

    #[test]
    fn every_import_path_saves_the_trees_of_large_new_objects() {
        let (_dir, repo) = repo_with(Algorithm::Sha512);
        let min = merkle::SAVED_TREE_MIN as usize;
        // Streamed (larger than one import chunk), in memory, and just too small.
        let streamed = content(9 << 20, 1);
        let in_memory = content(min, 2);
        let small = content(min - 1, 3);
        for data in [&streamed, &in_memory, &small] {
            let (digest, fresh, _) = repo.import_reader(&mut &data[..], None).expect("import");
            assert!(fresh);
            let (tree, expected) = merkle::tree_of(Algorithm::Sha512, data);
            assert_eq!(digest, expected);
            if data.len() >= min {
                assert_eq!(
                    saved_tree(&repo, &digest),
                    Some(tree),
                    "{} bytes",
                    data.len()
                );
            } else {
                assert_eq!(saved_tree(&repo, &digest), None, "{} bytes", data.len());
            }
        }
        // Through the background writer: one at a time and in a batch with small ones.
        let queued = content(min + 5, 4);
        let batched = content(3 * min, 5);
        let (digests, _) = repo
            .with_object_writer(|w| {
                let one = w.store(queued.clone())?;
                let many = w.store_many(vec![content(100, 6), batched.clone(), content(9, 7)])?;
                Ok::<_, RepoError>((one, many))
            })
            .expect("writer");
        assert_eq!(
            saved_tree(&repo, &digests.0),
            Some(merkle::tree_of(Algorithm::Sha512, &queued).0)
        );
        assert_eq!(
            digests.1[0],
            fsverity::digest(Algorithm::Sha512, &content(100, 6))
        );
        assert_eq!(
            saved_tree(&repo, &digests.1[1]),
            Some(merkle::tree_of(Algorithm::Sha512, &batched).0)
        );
        assert_eq!(
            digests.1[2],
            fsverity::digest(Algorithm::Sha512, &content(9, 7))
        );
        // No temporaries are left beside the trees.
        let fan_out = repo
            .verity_tree_dir()
            .join(&digests.1[1].object_path()[..2]);
        for entry in std::fs::read_dir(fan_out).expect("fan-out dir") {
            let name = entry.expect("entry").file_name();
            assert!(
                !name.to_string_lossy().starts_with('.'),
                "{name:?} left behind"
            );
        }
    }
}
