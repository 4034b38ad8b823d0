//! Merging layers into one root filesystem tree (docs/formats.md §6 step 2), then finalising it the
//! composefs-rs way (§6 step 3, [`transform_for_oci`]).
//!
//! Rules, applied per tar entry in layer order:
//! - the root entry (`./`, empty) must be a directory and only replaces the root's metadata;
//! - every parent must already exist as a directory: a missing parent, a parent that is a file
//!   and, above all, a parent that is a **symlink** are errors (writing through a symlink is how
//!   a layer would escape the tree);
//! - `.wh..wh..opq` empties its directory; `.wh.NAME` removes `NAME` (no-op when absent);
//! - a directory over a directory replaces only the metadata; anything else replaces the old
//!   entry (with its subtree);
//! - a hardlink shares the inode of its target, which must exist now and not be a directory;
//! - regular files up to 64 bytes are inline, larger ones refer to their object.

use cfs_format::transform::{transform_for_oci, XattrPolicy};
use cfs_format::tree::{DirEntry, Inode, InodeId, InodeKind, Metadata, RegularFile, Tree};
use cfs_format::Digest;

use crate::entry::{EntryKind, LayerEntry};
use crate::error::{EntryProblem, OciError};
use crate::layer_read::Content;

/// Whiteout prefix.
const WHITEOUT: &[u8] = b".wh.";
/// Opaque-directory marker.
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Builds the merged tree one entry at a time.
#[derive(Debug)]
pub struct RootfsBuilder {
    tree: Tree,
}

impl Default for RootfsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl RootfsBuilder {
    /// An empty root whose metadata is "uninitialised" (mode 0, owner 0, mtime 0).
    pub fn new() -> Self {
        RootfsBuilder {
            tree: Tree::new(Metadata::default()),
        }
    }

    /// Walk `components` from the root: every one must be a directory.
    fn directory(&self, components: &[&[u8]]) -> Result<InodeId, EntryProblem> {
        let mut cur = InodeId::ROOT;
        for (i, comp) in components.iter().enumerate() {
            let so_far = || lossy(&components[..=i].join(&b'/'));
            let Some(e) = self.tree.lookup(cur, comp) else {
                return Err(EntryProblem::ParentMissing { parent: so_far() });
            };
            match &self.tree.inode(e.inode).kind {
                InodeKind::Directory(_) => cur = e.inode,
                InodeKind::Symlink(_) => {
                    return Err(EntryProblem::ThroughSymlink {
                        component: so_far(),
                    })
                }
                _ => {
                    return Err(EntryProblem::NotADirectory {
                        component: so_far(),
                    })
                }
            }
        }
        Ok(cur)
    }

    /// The entries of `dir` (which [`directory`](Self::directory) resolved, so it is one).
    fn entries_mut(
        &mut self,
        dir: InodeId,
    ) -> Result<&mut std::collections::BTreeMap<Box<[u8]>, DirEntry>, EntryProblem> {
        match &mut self.tree.inode_mut(dir).kind {
            InodeKind::Directory(d) => Ok(&mut d.entries),
            _ => Err(EntryProblem::NotADirectory {
                component: String::new(),
            }),
        }
    }

    fn push(&mut self, inode: Inode) -> InodeId {
        let id = InodeId(self.tree.inodes.len() as u32);
        self.tree.inodes.push(inode);
        id
    }

    /// Apply one entry of layer `layer`.
    pub fn apply(
        &mut self,
        layer: &str,
        entry: LayerEntry,
        content: Content,
    ) -> Result<(), OciError> {
        let path = entry.path.clone();
        self.apply_inner(entry, content)
            .map_err(|problem| OciError::Entry {
                layer: layer.to_owned(),
                entry: lossy(&path),
                problem,
            })
    }

    fn apply_inner(&mut self, entry: LayerEntry, content: Content) -> Result<(), EntryProblem> {
        let LayerEntry {
            path,
            kind,
            mut meta,
            xattrs,
        } = entry;
        if path.is_empty() {
            if kind != EntryKind::Directory {
                return Err(EntryProblem::RootNotDirectory);
            }
            let root = self.tree.inode_mut(InodeId::ROOT);
            root.meta = meta;
            root.xattrs = xattrs;
            return Ok(());
        }
        let components: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        let Some((name, parents)) = components.split_last() else {
            return Ok(());
        };
        let parent = self.directory(parents)?;
        if *name == OPAQUE {
            self.entries_mut(parent)?.clear();
            return Ok(());
        }
        if let Some(victim) = name.strip_prefix(WHITEOUT) {
            self.entries_mut(parent)?.remove(victim);
            return Ok(());
        }
        Tree::check_name(name).map_err(|e| EntryProblem::InvalidName(e.to_string()))?;
        let existing = self.tree.lookup(parent, name);
        let new_kind = match kind {
            EntryKind::Hardlink(target) => {
                let target_comps: Vec<&[u8]> = target.split(|&b| b == b'/').collect();
                let inode = self.resolve_leaf(&target_comps, &target)?;
                self.entries_mut(parent)?.insert(
                    (*name).into(),
                    DirEntry {
                        inode,
                        hardlink: true,
                    },
                );
                return Ok(());
            }
            EntryKind::Directory => {
                if let Some(e) = existing {
                    let old = self.tree.inode_mut(e.inode);
                    if old.kind.is_dir() {
                        old.meta = meta;
                        old.xattrs = xattrs;
                        return Ok(());
                    }
                }
                InodeKind::Directory(Default::default())
            }
            EntryKind::Regular { size } => InodeKind::Regular(match content {
                Content::External(digest) => external(size, digest),
                Content::Inline(data) => RegularFile::inline(data),
                Content::None => RegularFile::empty(),
            }),
            EntryKind::Symlink(target) => InodeKind::Symlink(target),
            EntryKind::CharDevice(rdev) => InodeKind::CharDevice(rdev),
            EntryKind::BlockDevice(rdev) => InodeKind::BlockDevice(rdev),
            EntryKind::Fifo => InodeKind::Fifo,
        };
        if !new_kind.is_dir() {
            meta.nlink = 1;
        }
        let id = self.push(Inode {
            meta,
            kind: new_kind,
            xattrs,
        });
        self.entries_mut(parent)?.insert(
            (*name).into(),
            DirEntry {
                inode: id,
                hardlink: false,
            },
        );
        Ok(())
    }

    /// The inode of an existing non-directory at `components` (a hardlink target).
    fn resolve_leaf(&self, components: &[&[u8]], target: &[u8]) -> Result<InodeId, EntryProblem> {
        let missing = || EntryProblem::HardlinkTargetMissing {
            target: lossy(target),
        };
        let Some((name, parents)) = components.split_last() else {
            return Err(missing());
        };
        let dir = match self.directory(parents) {
            Ok(d) => d,
            Err(EntryProblem::ThroughSymlink { component }) => {
                return Err(EntryProblem::ThroughSymlink { component })
            }
            Err(_) => return Err(missing()),
        };
        let e = self.tree.lookup(dir, name).ok_or_else(missing)?;
        if self.tree.inode(e.inode).kind.is_dir() {
            return Err(EntryProblem::HardlinkToDirectory {
                target: lossy(target),
            });
        }
        Ok(e.inode)
    }

    /// The merged tree, not yet finalised.
    pub fn into_tree(self) -> Tree {
        self.tree
    }

    /// Finalise (root takes `/usr`'s metadata, `/run` emptied, xattrs filtered, link counts).
    pub fn finish(self, policy: XattrPolicy) -> Result<Tree, OciError> {
        let mut tree = self.tree;
        transform_for_oci(&mut tree, policy)?;
        Ok(tree)
    }
}

fn external(size: u64, digest: Digest) -> RegularFile {
    RegularFile::external(size, digest)
}

#[cfg(test)]
mod tests {
    use cfs_format::fsverity::{digest, Algorithm};
    use cfs_format::tree::Mtime;

    use super::*;

    fn meta(perm: u32, sec: i64) -> Metadata {
        Metadata {
            permissions: perm,
            mtime: Mtime { sec, nsec: 0 },
            ..Metadata::default()
        }
    }

    fn e(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: path.as_bytes().to_vec(),
            kind,
            meta: meta(0o755, 1),
            xattrs: Default::default(),
        }
    }

    fn apply(b: &mut RootfsBuilder, entry: LayerEntry) -> Result<(), EntryProblem> {
        let content = match entry.kind {
            EntryKind::Regular { .. } => Content::Inline(b"x"[..].into()),
            _ => Content::None,
        };
        b.apply_inner(entry, content)
    }

    fn names(b: &RootfsBuilder) -> Vec<String> {
        let mut out = Vec::new();
        b.tree.walk(|p, _| out.push(lossy(p)));
        out
    }

    #[test]
    fn whiteouts_opaque_and_replacement() {
        let mut b = RootfsBuilder::new();
        let reg = EntryKind::Regular { size: 1 };
        for entry in [
            e("a", EntryKind::Directory),
            e("a/b", reg.clone()),
            e("a/c", EntryKind::Directory),
            e("a/c/d", reg.clone()),
            e("f", reg.clone()),
        ] {
            apply(&mut b, entry).expect("apply");
        }
        apply(&mut b, e("a/.wh.b", reg.clone())).expect("whiteout");
        apply(&mut b, e("a/.wh.nothing", reg.clone())).expect("no-op whiteout");
        assert_eq!(names(&b), ["/", "/a", "/a/c", "/a/c/d", "/f"]);
        // A directory over a directory keeps its children and takes the new metadata.
        let mut again = e("a/c", EntryKind::Directory);
        again.meta.uid = 7;
        apply(&mut b, again).expect("dir over dir");
        assert_eq!(names(&b), ["/", "/a", "/a/c", "/a/c/d", "/f"]);
        let c = b.tree.lookup_path(b"/a/c").expect("c");
        assert_eq!(b.tree.inode(c).meta.uid, 7);
        // A file over a directory replaces the subtree; an opaque marker empties a directory.
        apply(&mut b, e("a/c", reg.clone())).expect("file over dir");
        assert_eq!(names(&b), ["/", "/a", "/a/c", "/f"]);
        apply(&mut b, e("a/.wh..wh..opq", reg.clone())).expect("opaque");
        assert_eq!(names(&b), ["/", "/a", "/f"]);
        // Root entry only sets the root's metadata.
        apply(&mut b, e("", EntryKind::Directory)).expect("root");
        assert_eq!(b.tree.root().meta.permissions, 0o755);
        assert_eq!(
            apply(&mut b, e("", reg.clone())),
            Err(EntryProblem::RootNotDirectory)
        );
    }

    #[test]
    fn parents_must_be_real_directories() {
        let mut b = RootfsBuilder::new();
        let reg = EntryKind::Regular { size: 1 };
        apply(&mut b, e("etc", EntryKind::Directory)).expect("etc");
        apply(&mut b, e("link", EntryKind::Symlink(b"/etc"[..].into()))).expect("link");
        apply(&mut b, e("file", reg.clone())).expect("file");
        assert_eq!(
            apply(&mut b, e("link/passwd", reg.clone())),
            Err(EntryProblem::ThroughSymlink {
                component: "link".into()
            })
        );
        assert_eq!(
            apply(&mut b, e("file/x", reg.clone())),
            Err(EntryProblem::NotADirectory {
                component: "file".into()
            })
        );
        assert_eq!(
            apply(&mut b, e("nope/x", reg.clone())),
            Err(EntryProblem::ParentMissing {
                parent: "nope".into()
            })
        );
        assert!(matches!(apply(&mut b, e("etc/.wh.x", reg.clone())), Ok(())));
        assert!(matches!(
            apply(&mut b, e("link/.wh.passwd", reg)),
            Err(EntryProblem::ThroughSymlink { .. })
        ));
    }

    #[test]
    fn hardlinks_share_inodes_and_need_targets() {
        let mut b = RootfsBuilder::new();
        let size = 100;
        let d = digest(Algorithm::Sha256, &[b'A'; 100]);
        b.apply_inner(e("big", EntryKind::Regular { size }), Content::External(d))
            .expect("big");
        apply(&mut b, e("dir", EntryKind::Directory)).expect("dir");
        apply(&mut b, e("big2", EntryKind::Hardlink(b"big".to_vec()))).expect("link");
        let one = b.tree.lookup_path(b"/big").expect("big");
        assert_eq!(b.tree.lookup_path(b"/big2"), Some(one));
        assert_eq!(
            apply(&mut b, e("x", EntryKind::Hardlink(b"missing".to_vec()))),
            Err(EntryProblem::HardlinkTargetMissing {
                target: "missing".into()
            })
        );
        assert_eq!(
            apply(&mut b, e("y", EntryKind::Hardlink(b"dir".to_vec()))),
            Err(EntryProblem::HardlinkToDirectory {
                target: "dir".into()
            })
        );
        // Removing the first name keeps the inode alive through the second.
        apply(&mut b, e(".wh.big", EntryKind::Regular { size: 0 })).expect("whiteout");
        let tree = b.into_tree();
        assert_eq!(tree.lookup_path(b"/big2"), Some(one));
    }
}
