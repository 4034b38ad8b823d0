//! The composefs EROFS writer, byte-identical to C `mkcomposefs` v1.0.8 for format versions 0
//! and 1 (docs/formats.md §2.6–2.11).
//!
//! Writing happens in fixed phases, because later ones need numbers earlier ones produce:
//! rewrite the tree into output nodes (escaping, overlay xattrs, whiteouts, stubs), order the
//! nodes breadth-first, decide which xattrs are shared, place every inode (which fixes the NIDs),
//! and only then emit bytes, since directory entries must name NIDs.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};

use super::format::*;
use crate::fsverity::Digest;
use crate::tree::{mode, FileData, InodeId, InodeKind, Mtime, Tree};

/// Choice of format version, with C's `--min-version`/`--max-version` semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// The version written unless a whiteout bumps it.
    pub min_version: FormatVersion,
    /// The highest version a whiteout may bump the image to.
    pub max_version: FormatVersion,
}

impl Default for WriteOptions {
    /// C's default: V0, or V1 when the tree contains a whiteout.
    fn default() -> Self {
        WriteOptions {
            min_version: FormatVersion::V0,
            max_version: FormatVersion::V1,
        }
    }
}

impl WriteOptions {
    /// Always write `version`.
    pub fn exactly(version: FormatVersion) -> Self {
        WriteOptions {
            min_version: version,
            max_version: version,
        }
    }
}

/// Why an image could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// An external or sparse file would need more than 1024 chunk indexes (C: EFBIG).
    #[error("{path}: file size {size} is too big for a composefs image (File too large)")]
    FileTooBig {
        /// Path of the file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The root inode landed beyond what the 16-bit `root_nid` can hold.
    #[error("root inode number {nid} does not fit the superblock")]
    RootNidTooLarge {
        /// The NID that did not fit.
        nid: u64,
    },
    /// The image would exceed what 32-bit block addresses can address.
    #[error("image too large: {blocks} blocks")]
    ImageTooLarge {
        /// Blocks needed.
        blocks: u64,
    },
}

/// Write `tree` as a composefs EROFS image.
pub fn write_image(tree: &Tree, opts: &WriteOptions) -> Result<Vec<u8>, WriteError> {
    let version = choose_version(tree, opts);
    let mut nodes = Rewriter::new(tree, version).run()?;
    add_root_markers_and_stubs(&mut nodes);
    let order = bfs_order(&nodes);
    Layout::compute(&nodes, &order, version)?.emit(&nodes, &order, version)
}

/// §2.6 step 1: start at `min`, bump to V1 when allowed and a whiteout is reachable.
fn choose_version(tree: &Tree, opts: &WriteOptions) -> FormatVersion {
    let max = opts.max_version.max(opts.min_version);
    if opts.min_version < FormatVersion::V1 && max >= FormatVersion::V1 && has_whiteout(tree) {
        FormatVersion::V1
    } else {
        opts.min_version
    }
}

fn has_whiteout(tree: &Tree) -> bool {
    let mut found = false;
    tree.walk(|_, e| {
        if !e.hardlink && matches!(tree.inode(e.inode).kind, InodeKind::CharDevice(0)) {
            found = true;
        }
    });
    found
}

type Xattr = (Vec<u8>, Vec<u8>);

/// What a node stores besides its inode header and xattrs.
#[derive(Debug)]
enum Body<'t> {
    /// Children sorted by name, without `.`/`..`.
    Dir(Vec<Child<'t>>),
    Inline(&'t [u8]),
    Chunked(u64),
    Symlink(&'t [u8]),
    Device(u64),
    /// Fifos, sockets, empty files and escaped whiteouts.
    Empty,
}

#[derive(Debug, Clone, Copy)]
struct Child<'t> {
    name: &'t [u8],
    node: usize,
    /// `false` for hardlink entries, which never add an inode.
    canonical: bool,
}

/// One inode of the output image.
#[derive(Debug)]
struct Node<'t> {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Mtime,
    nlink: u32,
    xattrs: Vec<Xattr>,
    body: Body<'t>,
    /// Node index of the directory holding the canonical entry (the root is its own parent).
    parent: usize,
}

impl Node<'_> {
    fn set_xattr(&mut self, name: &[u8], value: &[u8]) {
        match self.xattrs.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_vec(),
            None => self.xattrs.push((name.to_vec(), value.to_vec())),
        }
    }

    fn file_type(&self) -> u8 {
        file_type_of_mode(self.mode)
    }
}

/// §2.6 step 2: turn tree inodes into output nodes, depth-first, applying the C rewrite rules.
struct Rewriter<'t> {
    tree: &'t Tree,
    version: FormatVersion,
    nodes: Vec<Node<'t>>,
    node_of: Vec<Option<usize>>,
    /// Hardlink entries to patch once all nodes exist: (dir node, child slot, target inode).
    pending_links: Vec<(usize, usize, InodeId)>,
    path: Vec<u8>,
}

impl<'t> Rewriter<'t> {
    fn new(tree: &'t Tree, version: FormatVersion) -> Self {
        Rewriter {
            tree,
            version,
            nodes: Vec::with_capacity(tree.inodes.len() + 257),
            node_of: vec![None; tree.inodes.len()],
            pending_links: Vec::new(),
            path: Vec::with_capacity(256),
        }
    }

    fn run(mut self) -> Result<Vec<Node<'t>>, WriteError> {
        self.path.push(b'/');
        self.visit_all()?;
        // Hardlink entries can only be resolved once every canonical entry has a node.
        for (dir, slot, target) in std::mem::take(&mut self.pending_links) {
            if let Body::Dir(children) = &mut self.nodes[dir].body {
                match self.node_of[target.index()] {
                    Some(node) => children[slot].node = node,
                    None => children[slot].node = usize::MAX,
                }
            }
        }
        for n in &mut self.nodes {
            if let Body::Dir(children) = &mut n.body {
                // A leaf without a canonical name is not part of the tree; drop names of it.
                children.retain(|c| c.node != usize::MAX);
            }
        }
        Ok(self.nodes)
    }

    /// Create the output node of tree inode `id` (its children are added by `visit_all`).
    fn make_node(&mut self, id: InodeId, parent: usize) -> Result<usize, WriteError> {
        let inode = self.tree.inode(id);
        let idx = self.nodes.len();
        self.node_of[id.index()] = Some(idx);
        // Step 2b: escape the user's overlay xattrs so overlayfs shows them unescaped.
        let xattrs = inode
            .xattrs
            .iter()
            .map(|(k, v)| match k.strip_prefix(overlay::PREFIX) {
                Some(rest) => ([overlay::ESCAPED_PREFIX, rest].concat(), v.to_vec()),
                None => (k.to_vec(), v.to_vec()),
            })
            .collect();
        let mut node = Node {
            mode: inode.mode() & 0xFFFF,
            uid: inode.meta.uid,
            gid: inode.meta.gid,
            mtime: inode.meta.mtime,
            nlink: inode.meta.nlink,
            xattrs,
            body: Body::Empty,
            parent,
        };
        let mut whiteout = false;
        node.body = match &inode.kind {
            InodeKind::Directory(_) => Body::Dir(Vec::new()),
            InodeKind::Regular(f) if f.size == 0 => Body::Empty,
            InodeKind::Regular(f) => match &f.data {
                FileData::Inline(data) => Body::Inline(data),
                FileData::External { digest, payload } => {
                    let count = chunk_count(f.size);
                    if count > MAX_CHUNK_INDEXES {
                        return Err(WriteError::FileTooBig {
                            path: String::from_utf8_lossy(&self.path).into_owned(),
                            size: f.size,
                        });
                    }
                    // Step 2c: tell overlayfs the data lives in the data-only layer.
                    node.set_xattr(overlay::METACOPY, &metacopy_value(digest.as_ref()));
                    if let Some(p) = payload.as_deref().filter(|p| !p.is_empty()) {
                        node.set_xattr(overlay::REDIRECT, &[b"/", p].concat());
                    }
                    Body::Chunked(f.size)
                }
            },
            InodeKind::Symlink(target) => Body::Symlink(target),
            InodeKind::CharDevice(0) => {
                // Step 2d: a user whiteout becomes an escaped whiteout (a plain file).
                whiteout = true;
                node.mode = mode::S_IFREG | (node.mode & 0o7777);
                node.set_xattr(overlay::ESCAPED_WHITEOUT, b"");
                node.set_xattr(overlay::USER_WHITEOUT, b"");
                Body::Empty
            }
            InodeKind::CharDevice(rdev) | InodeKind::BlockDevice(rdev) => Body::Device(*rdev),
            InodeKind::Fifo | InodeKind::Socket => Body::Empty,
        };
        self.nodes.push(node);
        if whiteout && idx != 0 {
            let parent = &mut self.nodes[parent];
            parent.set_xattr(overlay::ESCAPED_WHITEOUTS, b"");
            parent.set_xattr(overlay::USER_WHITEOUTS, b"");
            if self.version >= FormatVersion::V1 {
                parent.set_xattr(overlay::ESCAPED_OPAQUE, b"x");
                parent.set_xattr(overlay::USER_OPAQUE, b"x");
            }
        }
        Ok(idx)
    }

    /// Depth-first over the canonical entries with an explicit stack, so that a deep tree
    /// cannot overflow the thread's stack.
    fn visit_all(&mut self) -> Result<(), WriteError> {
        type Entries<'t> = std::collections::btree_map::Iter<'t, Box<[u8]>, crate::tree::DirEntry>;
        let tree = self.tree;
        let root = self.make_node(InodeId::ROOT, 0)?;
        let mut stack: Vec<(usize, Entries<'t>, usize)> = Vec::new();
        if let Some(d) = tree.root().as_dir() {
            stack.push((root, d.entries.iter(), 1));
        }
        while let Some((dir, entries, path_len)) = stack.last_mut() {
            let (dir, path_len) = (*dir, *path_len);
            let Some((name, entry)) = entries.next() else {
                stack.pop();
                continue;
            };
            self.path.truncate(path_len);
            if path_len > 1 {
                self.path.push(b'/');
            }
            self.path.extend_from_slice(name);
            let slot = match &self.nodes[dir].body {
                Body::Dir(children) => children.len(),
                _ => 0,
            };
            let child = if entry.hardlink {
                self.pending_links.push((dir, slot, entry.inode));
                usize::MAX
            } else {
                self.make_node(entry.inode, dir)?
            };
            if let Body::Dir(children) = &mut self.nodes[dir].body {
                children.push(Child {
                    name,
                    node: child,
                    canonical: !entry.hardlink,
                });
            }
            if !entry.hardlink {
                if let Some(d) = tree.inode(entry.inode).as_dir() {
                    stack.push((child, d.entries.iter(), self.path.len()));
                }
            }
        }
        Ok(())
    }
}

/// The `trusted.overlay.metacopy` value: empty, or a 4-byte header and the digest.
fn metacopy_value(digest: Option<&Digest>) -> Vec<u8> {
    match digest {
        None => Vec::new(),
        Some(d) => {
            let bytes = d.as_bytes();
            let mut v = vec![0, (4 + bytes.len()) as u8, 0, d.algorithm().kernel_id()];
            v.extend_from_slice(bytes);
            v
        }
    }
}

/// `chunkbits` for an external file: one chunk covers the whole file unless it exceeds 2^43.
fn chunk_bits(size: u64) -> u32 {
    let bitlen = 64 - (size.saturating_sub(1)).leading_zeros();
    bitlen.clamp(BLOCK_BITS as u32, BLOCK_BITS as u32 + 31)
}

fn chunk_count(size: u64) -> u64 {
    size.div_ceil(1u64 << chunk_bits(size))
}

/// §2.6 steps 3–4: root opaque marker and the 256 whiteout stubs that hide lower layers.
fn add_root_markers_and_stubs(nodes: &mut Vec<Node<'_>>) {
    nodes[0].set_xattr(overlay::OPAQUE, b"y");
    let root = &nodes[0];
    let selinux: Vec<Xattr> = root
        .xattrs
        .iter()
        .filter(|(k, _)| k.as_slice() == b"security.selinux")
        .cloned()
        .collect();
    let (uid, gid, mtime) = (root.uid, root.gid, root.mtime);
    let Body::Dir(children) = &root.body else {
        return;
    };
    let present: Vec<&[u8]> = children.iter().map(|c| c.name).collect();
    let mut stubs = Vec::new();
    for (i, name) in STUB_NAMES.iter().enumerate() {
        if present.binary_search(&name.as_slice()).is_ok() {
            continue;
        }
        stubs.push((i, nodes.len() + stubs.len()));
    }
    let mut new_children: Vec<Child<'_>> = Vec::with_capacity(stubs.len());
    for &(i, node) in &stubs {
        new_children.push(Child {
            name: STUB_NAMES[i].as_slice(),
            node,
            canonical: true,
        });
    }
    for _ in &stubs {
        nodes.push(Node {
            mode: mode::S_IFCHR | 0o644,
            uid,
            gid,
            mtime,
            nlink: 1,
            xattrs: selinux.clone(),
            body: Body::Device(0),
            parent: 0,
        });
    }
    if let Body::Dir(children) = &mut nodes[0].body {
        children.extend(new_children);
        children.sort_by(|a, b| a.name.cmp(b.name));
    }
}

/// `00` … `ff`.
static STUB_NAMES: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut names = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        names[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    names
};

/// §2.8: breadth-first order; only canonical entries add inodes.
fn bfs_order(nodes: &[Node<'_>]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    let mut queue = VecDeque::new();
    order.push(0);
    queue.push_back(0);
    while let Some(dir) = queue.pop_front() {
        if let Body::Dir(children) = &nodes[dir].body {
            for c in children.iter().filter(|c| c.canonical) {
                order.push(c.node);
                if matches!(nodes[c.node].body, Body::Dir(_)) {
                    queue.push_back(c.node);
                }
            }
        }
    }
    order
}

/// Packing of a directory into full blocks and an inline tail (§2.10).
#[derive(Debug, Default, Clone)]
struct DirShape {
    /// Entry index (into the sorted `.`/`..`/children list) where each chunk starts; the last
    /// chunk is the tail when `tail > 0`.
    chunk_starts: Vec<usize>,
    blocks: u64,
    tail: u64,
}

/// Names of a directory's entries in on-disk order, `.` and `..` included.
fn dir_names<'a>(children: &'a [Child<'a>]) -> Vec<(&'a [u8], Option<usize>)> {
    let mut names: Vec<(&[u8], Option<usize>)> = Vec::with_capacity(children.len() + 2);
    names.push((b".", None));
    names.push((b"..", None));
    names.extend(children.iter().map(|c| (c.name, Some(c.node))));
    names.sort_by(|a, b| a.0.cmp(b.0));
    names
}

fn dir_shape(names: &[(&[u8], Option<usize>)]) -> DirShape {
    let mut shape = DirShape::default();
    let mut chunk = 0u64;
    shape.chunk_starts.push(0);
    for (i, (name, _)) in names.iter().enumerate() {
        let add = (DIRENT_SIZE + name.len()) as u64;
        if chunk + add > BLOCK_SIZE {
            shape.blocks += 1;
            shape.chunk_starts.push(i);
            chunk = 0;
        }
        chunk += add;
    }
    if chunk > BLOCK_SIZE / 2 {
        shape.blocks += 1;
    } else {
        shape.tail = chunk;
    }
    shape
}

/// Where and how one node is stored.
#[derive(Debug, Default, Clone)]
struct Placement {
    nid: u64,
    extended: bool,
    layout: u16,
    size: u64,
    /// Bytes of inline data after the xattr body.
    tail: u64,
    /// Data blocks owned by this inode.
    blocks: u64,
    /// First data block (absolute block address), valid when `blocks > 0`.
    first_block: u64,
    /// Shared xattr offsets within the table, in on-disk order.
    shared: Vec<u64>,
    /// Local xattrs, as indexes into the node's sorted xattr list.
    local: Vec<usize>,
    xattr_size: u64,
    dir: Option<DirShape>,
    /// The chunk index array was moved to a data block (§2.9 step 4).
    chunk_promoted: bool,
}

struct Layout {
    /// Indexed by node index.
    places: Vec<Placement>,
    /// Shared xattr table bytes.
    shared_table: Vec<u8>,
    inodes_end: u64,
    total_blocks: u64,
    min_mtime: Mtime,
    has_acl: bool,
}

fn cmp_shared(a: &(&[u8], &[u8]), b: &(&[u8], &[u8])) -> Ordering {
    b.0.cmp(a.0)
        .then(b.1.len().cmp(&a.1.len()))
        .then(b.1.cmp(a.1))
}

fn encode_xattr_entry(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let (index, suffix) = split_xattr_name(name);
    let start = out.len();
    out.push(suffix.len() as u8);
    out.push(index);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(suffix);
    out.extend_from_slice(value);
    out.resize(start + xattr_entry_size(suffix.len(), value.len()), 0);
}

fn xattr_entry_len(name: &[u8], value: &[u8]) -> u64 {
    let (_, suffix) = split_xattr_name(name);
    xattr_entry_size(suffix.len(), value.len()) as u64
}

impl Layout {
    fn compute(
        nodes: &[Node<'_>],
        order: &[usize],
        _version: FormatVersion,
    ) -> Result<Self, WriteError> {
        let mut places = vec![Placement::default(); nodes.len()];

        // Xattrs are sorted per inode; pairs on two or more inodes go to the shared table.
        let sorted: Vec<Vec<&Xattr>> = nodes
            .iter()
            .map(|n| {
                let mut v: Vec<&Xattr> = n.xattrs.iter().collect();
                v.sort_by(|a, b| a.0.cmp(&b.0));
                v
            })
            .collect();
        let mut uses: HashMap<(&[u8], &[u8]), u32> = HashMap::new();
        for &i in order {
            for (k, v) in &sorted[i] {
                *uses.entry((k.as_slice(), v.as_slice())).or_default() += 1;
            }
        }
        let mut shared_pairs: Vec<(&[u8], &[u8])> = uses
            .iter()
            .filter(|(_, &n)| n >= 2)
            .map(|(&p, _)| p)
            .collect();
        shared_pairs.sort_by(cmp_shared);
        let mut shared_table = Vec::new();
        let mut shared_offset: HashMap<(&[u8], &[u8]), u64> =
            HashMap::with_capacity(shared_pairs.len());
        for &(k, v) in &shared_pairs {
            shared_offset.insert((k, v), shared_table.len() as u64);
            encode_xattr_entry(&mut shared_table, k, v);
        }

        let mut min_mtime: Option<Mtime> = None;
        let mut has_acl = false;
        for &i in order {
            let n = &nodes[i];
            min_mtime = Some(match min_mtime {
                Some(m) if m <= n.mtime => m,
                _ => n.mtime,
            });
            has_acl |= n.xattrs.iter().any(|(k, _)| {
                k.as_slice() == b"system.posix_acl_access"
                    || k.as_slice() == b"system.posix_acl_default"
            });
        }
        let min_mtime = min_mtime.unwrap_or_default();

        // Sizes that do not depend on placement.
        for &i in order {
            let n = &nodes[i];
            let p = &mut places[i];
            let mut xattr_size = 0u64;
            if !sorted[i].is_empty() {
                xattr_size = XATTR_HEADER_SIZE as u64;
                for (j, (k, v)) in sorted[i].iter().enumerate() {
                    let key = (k.as_slice(), v.as_slice());
                    match shared_offset.get(&key) {
                        Some(&off) if p.shared.len() < MAX_SHARED_XATTRS_PER_INODE => {
                            p.shared.push(off);
                            xattr_size += 4;
                        }
                        _ => {
                            p.local.push(j);
                            xattr_size += xattr_entry_len(k, v);
                        }
                    }
                }
            }
            p.xattr_size = xattr_size;
            match &n.body {
                Body::Dir(children) => {
                    let shape = dir_shape(&dir_names(children));
                    p.size = shape.blocks * BLOCK_SIZE + shape.tail;
                    p.blocks = shape.blocks;
                    p.tail = shape.tail;
                    p.dir = Some(shape);
                }
                Body::Inline(data) => {
                    let len = data.len() as u64;
                    p.size = len;
                    p.blocks = len / BLOCK_SIZE;
                    p.tail = len % BLOCK_SIZE;
                    if p.tail > BLOCK_SIZE / 2 {
                        p.blocks += 1;
                        p.tail = 0;
                    }
                }
                Body::Chunked(size) => {
                    p.size = *size;
                    p.tail = chunk_count(*size) * 4;
                }
                Body::Symlink(target) => {
                    p.size = target.len() as u64;
                    p.tail = p.size;
                }
                Body::Device(_) | Body::Empty => {}
            }
            let nlink = match &n.body {
                Body::Dir(children) => dir_nlink(nodes, children),
                _ => n.nlink,
            };
            p.extended = n.mtime != min_mtime
                || nlink > 0xFFFF
                || n.uid > 0xFFFF
                || n.gid > 0xFFFF
                || p.size > 0xFFFF_FFFF;
        }

        // Place the inodes (§2.9); this fixes every NID.
        let mut pos = INODE_TABLE_START;
        for &i in order {
            let p = &mut places[i];
            pos = round_up(pos, INODE_SLOT_SIZE);
            let inode_size = if p.extended {
                EXTENDED_INODE_SIZE
            } else {
                COMPACT_INODE_SIZE
            } as u64;
            let meta = inode_size + p.xattr_size;
            if let Body::Symlink(_) = nodes[i].body {
                let total = meta + p.tail;
                if total >= BLOCK_SIZE {
                    p.blocks = 1;
                    p.tail = 0;
                }
                if total > 0 && pos / BLOCK_SIZE != (pos + total - 1) / BLOCK_SIZE {
                    pos = round_up(pos, BLOCK_SIZE);
                }
            } else if p.tail > 0 {
                let room = BLOCK_SIZE - (pos + meta) % BLOCK_SIZE;
                if room < p.tail {
                    let pad = round_up(room, INODE_SLOT_SIZE);
                    if p.tail <= BLOCK_SIZE - (pad - room) {
                        pos += pad;
                    } else {
                        p.tail = 0;
                        p.blocks += 1;
                        p.chunk_promoted = true;
                        pos = round_up(pos, BLOCK_SIZE);
                    }
                }
            }
            p.nid = pos / INODE_SLOT_SIZE;
            p.layout = match (&nodes[i].body, p.tail > 0) {
                (Body::Chunked(_), _) => DATALAYOUT_CHUNK_BASED,
                (_, true) => DATALAYOUT_FLAT_INLINE,
                (_, false) => DATALAYOUT_FLAT_PLAIN,
            };
            pos += meta + p.tail;
        }
        let inodes_end = round_up(pos, INODE_SLOT_SIZE);
        let data_start = round_up(inodes_end + shared_table.len() as u64, BLOCK_SIZE);

        let mut next_block = data_start / BLOCK_SIZE;
        for &i in order {
            let p = &mut places[i];
            if p.blocks > 0 {
                p.first_block = next_block;
                next_block += p.blocks;
            }
        }
        if next_block > u32::MAX as u64 {
            return Err(WriteError::ImageTooLarge { blocks: next_block });
        }
        let root_nid = places[0].nid;
        if root_nid > u16::MAX as u64 {
            return Err(WriteError::RootNidTooLarge { nid: root_nid });
        }
        Ok(Layout {
            places,
            shared_table,
            inodes_end,
            total_blocks: next_block,
            min_mtime,
            has_acl,
        })
    }

    fn emit(
        &self,
        nodes: &[Node<'_>],
        order: &[usize],
        version: FormatVersion,
    ) -> Result<Vec<u8>, WriteError> {
        let size = (self.total_blocks * BLOCK_SIZE) as usize;
        let mut img = vec![0u8; size];

        put32(&mut img, 0, COMPOSEFS_MAGIC);
        put32(&mut img, 4, COMPOSEFS_HEADER_VERSION);
        put32(
            &mut img,
            8,
            if self.has_acl {
                COMPOSEFS_FLAGS_HAS_ACL
            } else {
                0
            },
        );
        put32(&mut img, 12, version.number());

        let sbo = SUPERBLOCK_OFFSET;
        put32(&mut img, sbo + sb::MAGIC, EROFS_MAGIC);
        put32(
            &mut img,
            sbo + sb::FEATURE_COMPAT,
            FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER,
        );
        img[sbo + sb::BLKSZBITS] = BLOCK_BITS;
        put16(&mut img, sbo + sb::ROOT_NID, self.places[0].nid as u16);
        put64(&mut img, sbo + sb::INOS, order.len() as u64);
        put64(&mut img, sbo + sb::BUILD_TIME, self.min_mtime.sec as u64);
        put32(&mut img, sbo + sb::BUILD_TIME_NSEC, self.min_mtime.nsec);
        put32(&mut img, sbo + sb::BLOCKS, self.total_blocks as u32);
        put32(
            &mut img,
            sbo + sb::XATTR_BLKADDR,
            (self.inodes_end / BLOCK_SIZE) as u32,
        );

        let table_start = self.inodes_end as usize;
        img[table_start..table_start + self.shared_table.len()].copy_from_slice(&self.shared_table);
        let shared_id_base = self.inodes_end % BLOCK_SIZE;

        let mut xbuf = Vec::new();
        for (ino, &i) in order.iter().enumerate() {
            let n = &nodes[i];
            let p = &self.places[i];
            let at = (p.nid * INODE_SLOT_SIZE) as usize;
            let format = (p.layout << 1) | if p.extended { INODE_LAYOUT_EXTENDED } else { 0 };
            let icount = xattr_icount(p.xattr_size as usize);
            let nlink = match &n.body {
                Body::Dir(children) => dir_nlink(nodes, children),
                _ => n.nlink,
            };
            let i_u: u32 = match &n.body {
                Body::Device(rdev) => *rdev as u32,
                Body::Chunked(size) => {
                    let fmt = chunk_bits(*size) - BLOCK_BITS as u32;
                    if p.chunk_promoted {
                        (p.first_block as u32 & 0xFFFF_0000) | fmt
                    } else {
                        fmt
                    }
                }
                _ if p.blocks > 0 => p.first_block as u32,
                _ => 0,
            };
            if p.extended {
                put16(&mut img, at + extended::FORMAT, format);
                put16(&mut img, at + extended::XATTR_ICOUNT, icount);
                put16(&mut img, at + extended::MODE, n.mode as u16);
                put64(&mut img, at + extended::SIZE, p.size);
                put32(&mut img, at + extended::U, i_u);
                put32(&mut img, at + extended::INO, ino as u32);
                put32(&mut img, at + extended::UID, n.uid);
                put32(&mut img, at + extended::GID, n.gid);
                put64(&mut img, at + extended::MTIME, n.mtime.sec as u64);
                put32(&mut img, at + extended::MTIME_NSEC, n.mtime.nsec);
                put32(&mut img, at + extended::NLINK, nlink);
            } else {
                put16(&mut img, at + compact::FORMAT, format);
                put16(&mut img, at + compact::XATTR_ICOUNT, icount);
                put16(&mut img, at + compact::MODE, n.mode as u16);
                put16(&mut img, at + compact::NLINK, nlink as u16);
                put32(&mut img, at + compact::SIZE, p.size as u32);
                put32(&mut img, at + compact::U, i_u);
                put32(&mut img, at + compact::INO, ino as u32);
                put16(&mut img, at + compact::UID, n.uid as u16);
                put16(&mut img, at + compact::GID, n.gid as u16);
            }
            let mut cursor = at
                + if p.extended {
                    EXTENDED_INODE_SIZE
                } else {
                    COMPACT_INODE_SIZE
                };

            if p.xattr_size > 0 {
                xbuf.clear();
                let mut filter = 0u32;
                for (k, _) in &n.xattrs {
                    let (index, suffix) = split_xattr_name(k);
                    filter |= 1 << xattr_filter_bit(index, suffix);
                }
                xbuf.extend_from_slice(&(!filter).to_le_bytes());
                xbuf.push(p.shared.len() as u8);
                xbuf.extend_from_slice(&[0; 7]);
                for off in &p.shared {
                    xbuf.extend_from_slice(&(((shared_id_base + off) / 4) as u32).to_le_bytes());
                }
                let mut sorted: Vec<&Xattr> = n.xattrs.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for &j in &p.local {
                    let (k, v) = sorted[j];
                    encode_xattr_entry(&mut xbuf, k, v);
                }
                img[cursor..cursor + xbuf.len()].copy_from_slice(&xbuf);
                cursor += xbuf.len();
            }

            let block_at = (p.first_block * BLOCK_SIZE) as usize;
            match &n.body {
                Body::Dir(children) => {
                    let names = dir_names(children);
                    let Some(shape) = &p.dir else { continue };
                    let parent_nid = self.places[n.parent].nid;
                    let nid_of = |e: &(&[u8], Option<usize>)| match e.1 {
                        Some(node) => (self.places[node].nid, nodes[node].file_type()),
                        None if e.0 == b"." => (p.nid, file_type::DIR),
                        None => (parent_nid, file_type::DIR),
                    };
                    for (c, &start) in shape.chunk_starts.iter().enumerate() {
                        let end = shape
                            .chunk_starts
                            .get(c + 1)
                            .copied()
                            .unwrap_or(names.len());
                        let chunk = &names[start..end];
                        let dest = if (c as u64) < shape.blocks {
                            block_at + c * BLOCK_SIZE as usize
                        } else {
                            cursor
                        };
                        let mut nameoff = DIRENT_SIZE * chunk.len();
                        for (k, e) in chunk.iter().enumerate() {
                            let (nid, ft) = nid_of(e);
                            let d = dest + k * DIRENT_SIZE;
                            put64(&mut img, d, nid);
                            put16(&mut img, d + 8, nameoff as u16);
                            img[d + 10] = ft;
                            img[dest + nameoff..dest + nameoff + e.0.len()].copy_from_slice(e.0);
                            nameoff += e.0.len();
                        }
                    }
                }
                Body::Inline(data) => {
                    let in_blocks = (p.blocks * BLOCK_SIZE).min(data.len() as u64) as usize;
                    img[block_at..block_at + in_blocks].copy_from_slice(&data[..in_blocks]);
                    let tail = &data[in_blocks..];
                    img[cursor..cursor + tail.len()].copy_from_slice(tail);
                }
                Body::Symlink(target) => {
                    let dest = if p.blocks > 0 { block_at } else { cursor };
                    img[dest..dest + target.len()].copy_from_slice(target);
                }
                Body::Chunked(_) => {
                    if p.chunk_promoted {
                        img[block_at..block_at + BLOCK_SIZE as usize].fill(0xFF);
                    } else {
                        img[cursor..cursor + p.tail as usize].fill(0xFF);
                    }
                }
                Body::Device(_) | Body::Empty => {}
            }
        }
        Ok(img)
    }
}

fn dir_nlink(nodes: &[Node<'_>], children: &[Child<'_>]) -> u32 {
    2 + children
        .iter()
        .filter(|c| matches!(nodes[c.node].body, Body::Dir(_)))
        .count() as u32
}

fn put16(img: &mut [u8], at: usize, v: u16) {
    img[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_formats() {
        let fmt = |s| chunk_bits(s) - 12;
        assert_eq!(fmt(1), 0);
        assert_eq!(fmt(4096), 0);
        assert_eq!(fmt(4097), 1);
        assert_eq!(fmt(1 << 20), 8);
        assert_eq!(fmt((1 << 20) + 1), 9);
        assert_eq!(fmt(10000), 2);
        assert_eq!(chunk_count(9_000_000_000_000_000), 1024);
        assert!(chunk_count(9_500_000_000_000_000) > 1024);
    }

    use crate::fsverity::{digest, Algorithm};
    use crate::tree::{Inode, Metadata, RegularFile};

    fn meta() -> Metadata {
        Metadata {
            nlink: 1,
            ..Metadata::default()
        }
    }

    fn image_digest(tree: &Tree, v: FormatVersion) -> String {
        let img = write_image(tree, &WriteOptions::exactly(v)).expect("write");
        digest(Algorithm::Sha256, &img).to_hex()
    }

    /// docs/formats.md §2.14/§2.15 `empty` and `simple`, built directly as trees.
    #[test]
    fn pinned_empty_and_simple() {
        let mut tree = Tree::new(Metadata {
            permissions: 0o755,
            nlink: 2,
            ..Metadata::default()
        });
        assert_eq!(
            image_digest(&tree, FormatVersion::V0),
            "8f589e8f57ecb88823736b0d857ddca1e1068a23e264fad164b28f7038eb3682"
        );
        assert_eq!(
            image_digest(&tree, FormatVersion::V1),
            "14a26c957c84f6eb774b91205476adc13196c7c33b9dd97d08d43725ecb90b63"
        );
        let root = InodeId::ROOT;
        let add = |t: &mut Tree, name: &[u8], kind| {
            t.add(root, name, Inode::new(meta(), kind)).expect("add");
        };
        add(&mut tree, b"blkdev", InodeKind::BlockDevice(123));
        add(&mut tree, b"chrdev", InodeKind::CharDevice(123));
        add(&mut tree, b"fifo", InodeKind::Fifo);
        let d = Digest::Sha256([0x5a; 32]);
        add(
            &mut tree,
            b"regular-external",
            InodeKind::Regular(RegularFile::external(1234, d)),
        );
        add(
            &mut tree,
            b"regular-inline",
            InodeKind::Regular(RegularFile::inline(&b"hihi"[..])),
        );
        add(&mut tree, b"socket", InodeKind::Socket);
        add(
            &mut tree,
            b"symlink",
            InodeKind::Symlink(b"/target"[..].into()),
        );
        assert_eq!(
            image_digest(&tree, FormatVersion::V0),
            "9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01"
        );
        assert_eq!(
            image_digest(&tree, FormatVersion::V1),
            "ad6db6427568a1e4fdc772cbab7b6063f5eb4b33cb62982a740ba9213e5962b5"
        );
    }

    /// A very deep tree must not overflow the stack of an ordinary thread.
    #[test]
    fn deep_tree_is_written_without_recursion() {
        let dir = || {
            Inode::new(
                Metadata {
                    permissions: 0o755,
                    ..Metadata::default()
                },
                InodeKind::Directory(Default::default()),
            )
        };
        let mut tree = Tree::new(meta());
        let mut cur = InodeId::ROOT;
        for _ in 0..20_000 {
            cur = tree.add(cur, b"d", dir()).expect("add");
        }
        let image = write_image(&tree, &WriteOptions::default()).expect("write");
        assert!(image.len() > 20_000 * 32);
    }
}
