//! The in-memory filesystem tree every source is turned into before it becomes EROFS bytes.
//!
//! Inodes live in an arena ([`Tree::inodes`]) and directories refer to them by [`InodeId`], so a
//! hardlinked leaf is one inode named by several directory entries. Exactly one of those entries
//! is *canonical* (`hardlink == false`): it decides where the inode sits in the image's BFS order,
//! and for dumpfiles it is the line that carries the inode's metadata.

use std::collections::BTreeMap;

use crate::fsverity::Digest;

/// `S_IFMT` and the file-type bits of `st_mode`.
pub mod mode {
    /// Mask of the file-type bits.
    pub const S_IFMT: u32 = 0o170000;
    /// Socket.
    pub const S_IFSOCK: u32 = 0o140000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120000;
    /// Regular file.
    pub const S_IFREG: u32 = 0o100000;
    /// Block device.
    pub const S_IFBLK: u32 = 0o060000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020000;
    /// FIFO.
    pub const S_IFIFO: u32 = 0o010000;
}

/// Index of an inode in [`Tree::inodes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InodeId(pub u32);

impl InodeId {
    /// The root directory is always the first inode.
    pub const ROOT: InodeId = InodeId(0);

    /// As an index into [`Tree::inodes`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A modification time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mtime {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds (C does not bound this; we keep what we are given).
    pub nsec: u32,
}

/// Metadata shared by every inode kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata {
    /// Permission and special bits only (`mode & 0o7777`); the type comes from [`InodeKind`].
    pub permissions: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: Mtime,
    /// Link count for non-directories, used verbatim by the writer (directories are recomputed).
    pub nlink: u32,
}

/// Extended attributes: full names to raw values, kept sorted by name bytes.
pub type Xattrs = BTreeMap<Box<[u8]>, Box<[u8]>>;

/// Where a regular file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// Stored in the image; its length equals the file size.
    Inline(Box<[u8]>),
    /// Stored outside the image. `digest` is its fs-verity digest when known, `payload` the
    /// backing path relative to the object directory (`XX/<rest>`) when known. With neither,
    /// the file is sparse (all holes).
    External {
        /// fs-verity digest of the content.
        digest: Option<Digest>,
        /// Backing path relative to the object store, without a leading `/`.
        payload: Option<Box<[u8]>>,
    },
}

/// A regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegularFile {
    /// Logical size in bytes.
    pub size: u64,
    /// Where the bytes are.
    pub data: FileData,
}

impl RegularFile {
    /// An empty file.
    pub fn empty() -> Self {
        RegularFile {
            size: 0,
            data: FileData::Inline(Box::default()),
        }
    }

    /// A file whose content is stored inline.
    pub fn inline(content: impl Into<Box<[u8]>>) -> Self {
        let content = content.into();
        RegularFile {
            size: content.len() as u64,
            data: FileData::Inline(content),
        }
    }

    /// A file stored as an object named by its digest (payload `XX/<rest>`).
    pub fn external(size: u64, digest: Digest) -> Self {
        RegularFile {
            size,
            data: FileData::External {
                digest: Some(digest),
                payload: Some(digest.object_path().into_bytes().into()),
            },
        }
    }
}

/// A directory: entries sorted by raw name bytes (`.` and `..` are implicit).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Directory {
    /// Name → entry.
    pub entries: BTreeMap<Box<[u8]>, DirEntry>,
}

/// One name in a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    /// The inode this name refers to.
    pub inode: InodeId,
    /// `true` for every name of a leaf except its canonical one.
    pub hardlink: bool,
}

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InodeKind {
    /// A directory.
    Directory(Directory),
    /// A regular file.
    Regular(RegularFile),
    /// A symbolic link and its target.
    Symlink(Box<[u8]>),
    /// A character device (`rdev` as a userspace `dev_t`). rdev 0 is an overlay whiteout.
    CharDevice(u64),
    /// A block device.
    BlockDevice(u64),
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
}

impl InodeKind {
    /// The `S_IFMT` bits for this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            InodeKind::Directory(_) => mode::S_IFDIR,
            InodeKind::Regular(_) => mode::S_IFREG,
            InodeKind::Symlink(_) => mode::S_IFLNK,
            InodeKind::CharDevice(_) => mode::S_IFCHR,
            InodeKind::BlockDevice(_) => mode::S_IFBLK,
            InodeKind::Fifo => mode::S_IFIFO,
            InodeKind::Socket => mode::S_IFSOCK,
        }
    }

    /// `true` for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self, InodeKind::Directory(_))
    }
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Ownership, permissions, time, link count.
    pub meta: Metadata,
    /// Type and type-specific data.
    pub kind: InodeKind,
    /// Extended attributes.
    pub xattrs: Xattrs,
}

impl Inode {
    /// A new inode with no xattrs.
    pub fn new(meta: Metadata, kind: InodeKind) -> Self {
        Inode {
            meta,
            kind,
            xattrs: Xattrs::new(),
        }
    }

    /// The full `st_mode`: type bits and permissions.
    pub fn mode(&self) -> u32 {
        self.kind.type_bits() | (self.meta.permissions & 0o7777)
    }

    /// The directory, if this is one.
    pub fn as_dir(&self) -> Option<&Directory> {
        match &self.kind {
            InodeKind::Directory(d) => Some(d),
            _ => None,
        }
    }
}

/// Why a tree edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// The parent is not a directory.
    #[error("parent of {name:?} is not a directory")]
    NotADirectory {
        /// The name that was being added.
        name: String,
    },
    /// The name is already taken in that directory.
    #[error("{name:?} already exists")]
    Exists {
        /// The duplicated name.
        name: String,
    },
    /// Empty, `.`, `..`, containing `/` or NUL, or longer than 255 bytes.
    #[error("invalid file name {name:?}")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// Directories cannot be hardlinked.
    #[error("cannot hardlink to a directory")]
    DirectoryHardlink,
}

/// Longest file name EROFS and the kernel accept.
pub const NAME_MAX: usize = 255;

/// A filesystem tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// All inodes; `inodes[0]` is the root directory.
    pub inodes: Vec<Inode>,
}

impl Tree {
    /// A tree holding only a root directory with `meta`.
    pub fn new(meta: Metadata) -> Self {
        Tree {
            inodes: vec![Inode::new(meta, InodeKind::Directory(Directory::default()))],
        }
    }

    /// The root inode.
    pub fn root(&self) -> &Inode {
        &self.inodes[0]
    }

    /// The inode `id`. Panics only on an id that did not come from this tree.
    pub fn inode(&self, id: InodeId) -> &Inode {
        &self.inodes[id.index()]
    }

    /// Mutable access to inode `id`.
    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        &mut self.inodes[id.index()]
    }

    /// Check a single path component.
    pub fn check_name(name: &[u8]) -> Result<(), TreeError> {
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.len() > NAME_MAX
            || name.iter().any(|&b| b == b'/' || b == 0)
        {
            return Err(TreeError::InvalidName {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        Ok(())
    }

    fn dir_mut(&mut self, parent: InodeId, name: &[u8]) -> Result<&mut Directory, TreeError> {
        match &mut self.inodes[parent.index()].kind {
            InodeKind::Directory(d) => Ok(d),
            _ => Err(TreeError::NotADirectory {
                name: String::from_utf8_lossy(name).into_owned(),
            }),
        }
    }

    /// Put `entry` in `parent` under `name`, which must be a valid name not yet taken.
    fn insert_entry(
        &mut self,
        parent: InodeId,
        name: &[u8],
        entry: DirEntry,
    ) -> Result<(), TreeError> {
        Self::check_name(name)?;
        let dir = self.dir_mut(parent, name)?;
        if dir.entries.contains_key(name) {
            return Err(TreeError::Exists {
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        dir.entries.insert(name.into(), entry);
        Ok(())
    }

    /// Add a new inode under `parent` as its canonical name.
    pub fn add(
        &mut self,
        parent: InodeId,
        name: &[u8],
        inode: Inode,
    ) -> Result<InodeId, TreeError> {
        let id = InodeId(self.inodes.len() as u32);
        self.insert_entry(
            parent,
            name,
            DirEntry {
                inode: id,
                hardlink: false,
            },
        )?;
        self.inodes.push(inode);
        Ok(id)
    }

    /// Add another name for an existing non-directory inode.
    pub fn link(&mut self, parent: InodeId, name: &[u8], target: InodeId) -> Result<(), TreeError> {
        if self.inodes[target.index()].kind.is_dir() {
            return Err(TreeError::DirectoryHardlink);
        }
        self.insert_entry(
            parent,
            name,
            DirEntry {
                inode: target,
                hardlink: true,
            },
        )?;
        Ok(())
    }

    /// Find the entry `name` in directory `dir`.
    pub fn lookup(&self, dir: InodeId, name: &[u8]) -> Option<DirEntry> {
        self.inodes[dir.index()]
            .as_dir()?
            .entries
            .get(name)
            .copied()
    }

    /// Resolve an absolute path such as `/a/b` (no symlinks followed).
    pub fn lookup_path(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = InodeId::ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = self.lookup(cur, comp)?.inode;
        }
        Some(cur)
    }

    /// Number of reachable directory entries (canonical and hardlinks) naming each inode; the
    /// root counts 1. Inodes left in the arena after an entry was removed count 0.
    pub fn reference_counts(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.inodes.len()];
        self.walk(|_, e| counts[e.inode.index()] += 1);
        counts
    }

    /// Make the first name of every inode in depth-first, byte-sorted order its canonical one
    /// and every later name a hardlink. Needed after edits that remove names (whiteouts, the
    /// OCI `/run` rule), which can remove the canonical name of a leaf that has others.
    pub fn normalize_hardlinks(&mut self) {
        let mut names = Vec::new();
        self.collect_names(InodeId::ROOT, &mut names);
        let mut seen = vec![false; self.inodes.len()];
        seen[0] = true;
        for (dir, name) in names {
            if let InodeKind::Directory(d) = &mut self.inodes[dir.index()].kind {
                if let Some(entry) = d.entries.get_mut(&name) {
                    entry.hardlink = seen[entry.inode.index()];
                    seen[entry.inode.index()] = true;
                }
            }
        }
    }

    /// Every (directory, name) pair in depth-first sorted order, descending into directories.
    fn collect_names(&self, _root: InodeId, out: &mut Vec<(InodeId, Box<[u8]>)>) {
        self.walk_with_dirs(|dir, name, _| out.push((dir, name.into())));
    }

    /// Set every non-directory's `nlink` to the number of names it has (what a directory scan
    /// or an OCI import wants; a dumpfile keeps its own NLINK values).
    pub fn recompute_leaf_nlinks(&mut self) {
        let counts = self.reference_counts();
        for (inode, n) in self.inodes.iter_mut().zip(counts) {
            if !inode.kind.is_dir() {
                inode.meta.nlink = n;
            }
        }
    }

    /// Visit every entry depth-first in sorted order: `f(path, entry)` with the path as raw bytes
    /// starting with `/`. The root itself is visited first with path `/`. Hardlink entries are
    /// visited but not descended into (directories cannot be hardlinked anyway).
    pub fn walk(&self, mut f: impl FnMut(&[u8], DirEntry)) {
        let mut path = Vec::with_capacity(256);
        path.push(b'/');
        f(
            &path,
            DirEntry {
                inode: InodeId::ROOT,
                hardlink: false,
            },
        );
        let mut stack = Vec::new();
        if let Some(d) = self.root().as_dir() {
            stack.push((d.entries.iter(), 1usize));
        }
        while let Some((entries, len)) = stack.last_mut() {
            let len = *len;
            let Some((name, entry)) = entries.next() else {
                stack.pop();
                continue;
            };
            path.truncate(len);
            if len > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(name);
            f(&path, *entry);
            if !entry.hardlink {
                if let Some(d) = self.inodes[entry.inode.index()].as_dir() {
                    stack.push((d.entries.iter(), path.len()));
                }
            }
        }
    }

    /// Like [`Tree::walk`] without building paths: `f(directory, name, entry)`.
    fn walk_with_dirs(&self, mut f: impl FnMut(InodeId, &[u8], DirEntry)) {
        let mut stack = Vec::new();
        if let Some(d) = self.root().as_dir() {
            stack.push((InodeId::ROOT, d.entries.iter()));
        }
        while let Some((dir, entries)) = stack.last_mut() {
            let dir = *dir;
            let Some((name, entry)) = entries.next() else {
                stack.pop();
                continue;
            };
            f(dir, name, *entry);
            if !entry.hardlink {
                if let Some(d) = self.inodes[entry.inode.index()].as_dir() {
                    stack.push((entry.inode, d.entries.iter()));
                }
            }
        }
    }
}
