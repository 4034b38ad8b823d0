//! The depth-first walk shared by [`read_tree`](super::read_tree), [`dump`](super::dump),
//! [`ls`](super::ls) and [`objects`](super::objects).
//!
//! Entries are visited in pre-order, each directory's children in on-disk (sorted) order, with
//! `.`/`..` and the root whiteout stubs skipped; names must be strictly increasing within a
//! directory. The first visit of a NID is its canonical occurrence; later visits of a
//! non-directory are hardlinks; a directory reached twice is an error (cycle or directory
//! hardlink). The walk is iterative; its depth, path length and
//! number of visited entries are capped, so time and memory stay linear in the image size.

use std::collections::HashMap;

use super::composefs::Children;
use super::error::ReadError;
use super::image::{Image, Nid};
use super::inode::InodeRef;
use super::{MAX_DEPTH, MAX_PATH_LEN};

/// Where a NID was first seen.
#[derive(Debug, Clone, Copy)]
struct Origin<'a> {
    parent: Nid,
    name: &'a [u8],
}

/// One visited entry.
#[derive(Debug)]
pub(crate) struct Event<'a, 'w> {
    /// Absolute path, `/` for the root.
    pub path: &'w [u8],
    /// NID of the containing directory (the root's own NID for the root).
    pub parent: Nid,
    /// The entry name (empty for the root).
    pub name: &'a [u8],
    /// The inode the entry refers to.
    pub inode: InodeRef<'a>,
    /// Whether this NID was visited before (a hardlink; never a directory).
    pub hardlink: bool,
    origins: &'w HashMap<Nid, Origin<'a>>,
    root: Nid,
}

impl Event<'_, '_> {
    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.name.is_empty()
    }

    /// The path of this NID's canonical (first) occurrence.
    pub fn canonical_path(&self) -> Result<Vec<u8>, ReadError> {
        let mut parts = Vec::new();
        let mut cur = self.inode.nid();
        while cur != self.root {
            let origin = self
                .origins
                .get(&cur)
                .filter(|_| parts.len() <= MAX_DEPTH)
                .ok_or(ReadError::TooDeep {
                    nid: cur,
                    depth: parts.len(),
                })?;
            parts.push(origin.name);
            cur = origin.parent;
        }
        let mut path = Vec::new();
        for part in parts.iter().rev() {
            path.push(b'/');
            path.extend_from_slice(part);
        }
        if path.is_empty() {
            path.push(b'/');
        }
        Ok(path)
    }
}

struct Frame<'a> {
    nid: Nid,
    children: Children<'a>,
    path_len: usize,
    last_name: Option<&'a [u8]>,
}

/// Walk the image depth-first, calling `visit` for the root and then every visible entry.
/// `filter`, when not empty, keeps only the root children with those names.
pub(crate) fn walk<'a, E: From<ReadError>>(
    image: Image<'a>,
    filter: &[&[u8]],
    mut visit: impl FnMut(&Event<'a, '_>) -> Result<(), E>,
) -> Result<(), E> {
    let root = image.root()?;
    let root_nid = root.nid();
    let mut origins: HashMap<Nid, Origin<'a>> = HashMap::new();
    origins.insert(
        root_nid,
        Origin {
            parent: root_nid,
            name: b"",
        },
    );
    let mut path = vec![b'/'];
    visit(&Event {
        path: &path,
        parent: root_nid,
        name: b"",
        inode: root,
        hardlink: false,
        origins: &origins,
        root: root_nid,
    })?;
    // Every entry of a well-formed image occupies at least 13 bytes of its own (dirent and a
    // one-byte name), so more visits than that mean directories share their blocks: stop
    // before the walk turns quadratic.
    let max_entries = image.data().len() as u64 / 13 + 16;
    let mut visited = 0u64;
    let mut stack = vec![Frame {
        nid: root_nid,
        children: image.children(&root)?,
        path_len: 1,
        last_name: None,
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(entry) = frame.children.next() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        visited += 1;
        if visited > max_entries {
            return Err(ReadError::ResourceLimit {
                what: "directory entries (directories sharing blocks?)",
                limit: max_entries,
            }
            .into());
        }
        let parent = frame.nid;
        let parent_len = frame.path_len;
        // Names must be strictly increasing: lookups binary-search them, and a repeated name
        // would make two entries for one path.
        if let Some(prev) = frame.last_name.replace(entry.name) {
            if prev >= entry.name {
                return Err(if prev == entry.name {
                    ReadError::DuplicateName {
                        nid: parent,
                        name: String::from_utf8_lossy(entry.name).into_owned(),
                    }
                } else {
                    ReadError::BadDirent {
                        nid: parent,
                        offset: image.inode_offset(parent).unwrap_or(u64::MAX),
                        reason: "directory entries not sorted by name",
                    }
                }
                .into());
            }
        }
        if parent == root_nid && !filter.is_empty() && !filter.contains(&entry.name) {
            continue;
        }
        let inode = image.inode(entry.nid)?;
        path.truncate(parent_len);
        if parent_len > 1 {
            path.push(b'/');
        }
        path.extend_from_slice(entry.name);
        if path.len() > MAX_PATH_LEN {
            return Err(ReadError::TooDeep {
                nid: entry.nid,
                depth: stack.len(),
            }
            .into());
        }
        let hardlink = origins.contains_key(&entry.nid);
        if hardlink && inode.is_dir() {
            return Err(ReadError::InodeLoop { nid: entry.nid }.into());
        }
        if !hardlink {
            origins.insert(
                entry.nid,
                Origin {
                    parent,
                    name: entry.name,
                },
            );
        }
        visit(&Event {
            path: &path,
            parent,
            name: entry.name,
            inode,
            hardlink,
            origins: &origins,
            root: root_nid,
        })?;
        if inode.is_dir() {
            if stack.len() >= MAX_DEPTH {
                return Err(ReadError::TooDeep {
                    nid: entry.nid,
                    depth: stack.len(),
                }
                .into());
            }
            stack.push(Frame {
                nid: entry.nid,
                children: image.children(&inode)?,
                path_len: path.len(),
                last_name: None,
            });
        }
    }
    Ok(())
}
