//! Rebuilding a [`Tree`] from an image.

use std::collections::HashMap;

use super::composefs::{Node, NodeKind, RegularData};
use super::error::ReadError;
use super::image::{Image, Nid};
use super::walk::walk;
use crate::tree::{
    Directory, FileData, Inode, InodeId, InodeKind, Metadata, RegularFile, Tree, TreeError, Xattrs,
};

/// Counts the bytes copied out of the image so that a hostile image cannot make
/// [`read_tree`] allocate without bound (e.g. one large shared xattr or data block referenced
/// by many inodes).
struct Budget {
    left: u64,
    limit: u64,
}

impl Budget {
    fn new(image_len: usize) -> Self {
        let limit = (image_len as u64)
            .saturating_mul(64)
            .saturating_add(16 << 20);
        Budget { left: limit, limit }
    }

    fn take(&mut self, bytes: usize, what: &'static str) -> Result<(), ReadError> {
        self.left = self
            .left
            .checked_sub(bytes as u64)
            .ok_or(ReadError::ResourceLimit {
                what,
                limit: self.limit,
            })?;
        Ok(())
    }
}

/// Rebuild the logical [`Tree`] of a composefs image (docs/formats.md §2.12).
///
/// Entries sharing a NID become one inode; the first occurrence in depth-first sorted order is
/// canonical and later ones are hardlinks. Leaf `nlink` is the image's `i_nlink`. Root stubs
/// are skipped, escaped whiteouts become chardev 0:0, overlay xattrs are interpreted (file
/// kinds) and hidden or unescaped.
pub fn read_tree(data: &[u8]) -> Result<Tree, ReadError> {
    Image::open(data)?.to_tree()
}

impl Image<'_> {
    /// Rebuild the logical [`Tree`] of this image; see [`read_tree`].
    pub fn to_tree(&self) -> Result<Tree, ReadError> {
        let mut budget = Budget::new(self.data().len());
        let mut tree: Option<Tree> = None;
        let mut ids: HashMap<Nid, InodeId> = HashMap::new();
        walk(*self, &[], |ev| -> Result<(), ReadError> {
            if ev.is_root() {
                let root = build_inode(&ev.inode.node()?, &mut budget)?;
                let mut t = Tree::new(root.meta);
                if let Some(r) = t.inodes.get_mut(InodeId::ROOT.index()) {
                    r.xattrs = root.xattrs;
                }
                tree = Some(t);
                ids.insert(ev.inode.nid(), InodeId::ROOT);
                return Ok(());
            }
            let Some(tree) = tree.as_mut() else {
                return Ok(());
            };
            let parent = ids
                .get(&ev.parent)
                .copied()
                .ok_or(ReadError::NotADirectory { nid: ev.parent })?;
            budget.take(ev.name.len(), "names")?;
            let dir_error = |e: TreeError| match e {
                TreeError::Exists { .. } => ReadError::DuplicateName {
                    nid: ev.parent,
                    name: String::from_utf8_lossy(ev.name).into_owned(),
                },
                _ => ReadError::BadDirent {
                    nid: ev.parent,
                    offset: ev.inode.offset(),
                    reason: "entry rejected by the tree",
                },
            };
            if ev.hardlink {
                let target = ids
                    .get(&ev.inode.nid())
                    .copied()
                    .ok_or(ReadError::InodeLoop {
                        nid: ev.inode.nid(),
                    })?;
                tree.link(parent, ev.name, target).map_err(dir_error)?;
            } else {
                let inode = build_inode(&ev.inode.node()?, &mut budget)?;
                let id = tree.add(parent, ev.name, inode).map_err(dir_error)?;
                ids.insert(ev.inode.nid(), id);
            }
            Ok(())
        })?;
        tree.ok_or(ReadError::RootNotADirectory {
            nid: self.root_nid(),
        })
    }
}

/// One tree inode from an image node (no directory entries yet).
fn build_inode(node: &Node<'_>, budget: &mut Budget) -> Result<Inode, ReadError> {
    let inode = node.inode();
    let meta = Metadata {
        permissions: inode.permissions(),
        uid: inode.uid(),
        gid: inode.gid(),
        mtime: inode.mtime(),
        nlink: inode.nlink(),
    };
    let kind = match node.kind()? {
        NodeKind::Directory => InodeKind::Directory(Directory::default()),
        NodeKind::Regular(RegularData::Inline(data)) => {
            budget.take(data.len() as usize, "file content")?;
            InodeKind::Regular(RegularFile::inline(data.to_cow().into_owned()))
        }
        NodeKind::Regular(RegularData::External { digest, payload }) => {
            budget.take(payload.map_or(0, <[u8]>::len), "backing paths")?;
            InodeKind::Regular(RegularFile {
                size: node.size(),
                data: FileData::External {
                    digest,
                    payload: payload.map(Box::from),
                },
            })
        }
        NodeKind::Regular(RegularData::Sparse) => InodeKind::Regular(if node.size() == 0 {
            RegularFile::empty()
        } else {
            RegularFile {
                size: node.size(),
                data: FileData::External {
                    digest: None,
                    payload: None,
                },
            }
        }),
        NodeKind::Symlink(target) => {
            budget.take(target.len(), "symlink targets")?;
            InodeKind::Symlink(target.into_owned().into())
        }
        NodeKind::CharDevice(rdev) => InodeKind::CharDevice(u64::from(rdev)),
        NodeKind::BlockDevice(rdev) => InodeKind::BlockDevice(u64::from(rdev)),
        NodeKind::Fifo => InodeKind::Fifo,
        NodeKind::Socket => InodeKind::Socket,
    };
    let mut xattrs = Xattrs::new();
    for x in node.xattrs()? {
        let x = x?;
        budget.take(
            x.prefix().len() + x.suffix().len() + x.value().len(),
            "xattrs",
        )?;
        xattrs.insert(x.full_name().into(), x.value().into());
    }
    Ok(Inode { meta, kind, xattrs })
}
