//! Source trees for the integration tests: [`build_source_tree`], one of everything composefs
//! keeps (names, types, modes, owners, devices, xattrs, hardlinks, holes, nanosecond mtimes),
//! and [`generate_bulk_tree`], thousands of generated files for load, GC-race and crash tests.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{
    make_block_device, make_char_device, make_fifo, make_socket, pattern, read_node, run_ok,
    set_mode, set_mtime, set_owner, set_xattr, Kind,
};

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// The oldest mtime in the tree; many entries share it so that the image holds compact inodes
/// (which take their mtime from the superblock) as well as extended ones.
const BASE_MTIME: (i64, i64) = (1_000_000_000, 500_000_000);

/// Builds the source tree and remembers the mtime of every entry, to be applied last.
pub struct TreeBuilder {
    root: PathBuf,
    mtimes: Vec<(PathBuf, i64, i64)>,
    seed: u64,
}

impl TreeBuilder {
    /// Start a tree at `root` (created here; it must not exist yet).
    pub fn new(root: &Path) -> Self {
        fs::create_dir(root).unwrap_or_else(|e| panic!("mkdir {root:?}: {e}"));
        Self {
            root: root.to_owned(),
            mtimes: Vec::new(),
            seed: 0,
        }
    }

    /// `root/rel`.
    pub fn path(&self, rel: impl AsRef<OsStr>) -> PathBuf {
        self.root.join(rel.as_ref())
    }

    /// Remember that `path` must get mtime `sec.nsec` at the end.
    pub fn mtime(&mut self, path: &Path, (sec, nsec): (i64, i64)) {
        self.mtimes.push((path.to_owned(), sec, nsec));
    }

    /// A directory with `mode`, its mtime applied at the end.
    pub fn dir(&mut self, rel: impl AsRef<OsStr>, mode: u32, mtime: (i64, i64)) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
        set_mode(&p, mode);
        self.mtime(&p, mtime);
        p
    }

    /// A regular file holding `content`, with `mode` (mtime left to the caller).
    pub fn file_with(&mut self, rel: impl AsRef<OsStr>, content: &[u8], mode: u32) -> PathBuf {
        let p = self.path(rel);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
        set_mode(&p, mode);
        p
    }

    /// A regular file of `len` pseudo-random bytes (a new pattern each time), mode 0644.
    pub fn file(&mut self, rel: impl AsRef<OsStr>, len: usize, mtime: (i64, i64)) -> PathBuf {
        self.seed += 1;
        let p = self.file_with(rel, &pattern(self.seed, len), 0o644);
        self.mtime(&p, mtime);
        p
    }

    /// A symlink to `target`, its mtime applied at the end.
    pub fn symlink(&mut self, rel: impl AsRef<OsStr>, target: &str, mtime: (i64, i64)) -> PathBuf {
        let p = self.path(rel);
        std::os::unix::fs::symlink(target, &p).unwrap_or_else(|e| panic!("symlink {p:?}: {e}"));
        self.mtime(&p, mtime);
        p
    }

    /// Another name for `existing`.
    pub fn hardlink(&self, existing: &Path, rel: impl AsRef<OsStr>) -> PathBuf {
        let p = self.path(rel);
        fs::hard_link(existing, &p).unwrap_or_else(|e| panic!("link {existing:?} {p:?}: {e}"));
        p
    }

    /// Apply the remembered mtimes: all non-directories first, then directories from the
    /// deepest up, so that no later change touches an mtime already set.
    pub fn finish(mut self) {
        let depth = |p: &Path| p.components().count();
        let is_dir = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
        self.mtimes
            .sort_by_cached_key(|(p, _, _)| (is_dir(p), std::cmp::Reverse(depth(p))));
        for (p, sec, nsec) in &self.mtimes {
            set_mtime(p, *sec, *nsec);
        }
    }
}

/// Create, under `root` (which must not exist yet), a tree holding every file type and
/// attribute composefs keeps: sizes around the inline limit and the block size, holes,
/// setuid/setgid, large ids, odd names, relative/absolute/dangling/1024-byte symlinks, devices,
/// fifos, a socket, every xattr namespace (escaped `trusted.overlay.*` too), hardlinks of each
/// kind, a multi-block directory and nanosecond mtimes.
pub fn build_source_tree(root: &Path) {
    let mut t = TreeBuilder::new(root);
    let m = |sec_offset: i64, nsec: i64| (BASE_MTIME.0 + sec_offset, nsec);

    // Regular files around the inline limit (64 bytes) and the block size.
    t.file("empty", 0, m(1, 0));
    let one = t.file("one", 1, m(1, 1));
    set_owner(&one, 1000, 1000);
    t.file("s64", 64, m(1, 999_999_999));
    t.file("s65", 65, m(2, 123_456_789));
    t.file("s4095", 4095, m(3, 1));
    t.file("s4096", 4096, BASE_MTIME);
    let s4097 = t.file("s4097", 4097, m(4, 4));
    set_xattr(&s4097, "user.color", b"blue");
    set_xattr(&s4097, "trusted.tag", b"t");
    set_xattr(&s4097, "security.test", b"file label");
    t.file("s1m", MIB, m(5, 555_555_555));

    // A sparse file: holes at the start, in the middle and at the end.
    let sparse = t.path("sparse");
    {
        let f = fs::File::create(&sparse).unwrap_or_else(|e| panic!("create {sparse:?}: {e}"));
        f.set_len(4 * MIB as u64 + 17)
            .unwrap_or_else(|e| panic!("truncate {sparse:?}: {e}"));
        f.write_all_at(&pattern(99, 5000), MIB as u64 + 100)
            .unwrap_or_else(|e| panic!("write {sparse:?}: {e}"));
        f.write_all_at(b"middle", 3 * MIB as u64)
            .unwrap_or_else(|e| panic!("write {sparse:?}: {e}"));
    }
    set_mode(&sparse, 0o640);
    t.mtime(&sparse, m(6, 600));

    // setuid (external content) and setgid (inline content); chown before chmod.
    let setuid = t.file("setuid", 100, m(7, 7));
    set_owner(&setuid, 1000, 1000);
    set_mode(&setuid, 0o4755);
    let setgid = t.file("setgid", 10, m(7, 8));
    set_owner(&setgid, 0, 100);
    set_mode(&setgid, 0o2711);

    // Owners: a uid/gid above 65535 (extended inode), nobody, and a far-future mtime.
    let big_ids = t.file("big-ids", 200, (5_000_000_000, 123_456_789));
    set_owner(&big_ids, 70000, 70001);
    let nobody = t.file("nobody", 3, m(8, 0));
    set_owner(&nobody, 65534, 65534);
    set_mode(&nobody, 0o600);

    // Names: one that equals a root whiteout stub name, odd bytes.
    t.file("00", 9, m(9, 9));
    t.file("ff", 70, m(9, 10));
    t.file("with space", 5, m(9, 11));
    t.file("new\nline", 6, m(9, 12));
    t.file(OsStr::from_bytes(b"latin1-\xe9t\xe9"), 7, m(9, 13));

    // Symlinks: relative, absolute, dangling, 1024-byte target, other owner, with xattrs.
    t.symlink("rel-link", "sub/deeper/file", m(10, 1));
    let abs = t.symlink("abs-link", "/etc/hostname", m(10, 2));
    set_owner(&abs, 1000, 100);
    t.symlink("dangling", "does/not/exist", m(10, 3));
    let long_target = {
        let mut s = "x/".repeat(511);
        s.push_str("yz");
        s
    };
    assert_eq!(long_target.len(), 1024);
    let long = t.symlink("long-link", &long_target, m(10, 4));
    set_xattr(&long, "trusted.sym", b"1");
    set_xattr(&long, "security.test", b"symlink label");
    set_xattr(&long, "trusted.overlay.foo", b"on a symlink");

    // Devices, fifo, socket.
    let null = t.path("null");
    make_char_device(&null, 0o666, 1, 3);
    set_mode(&null, 0o666);
    set_xattr(&null, "trusted.dev", b"c");
    set_xattr(&null, "security.test", b"device label");
    t.mtime(&null, m(11, 1));
    let blk = t.path("blk");
    make_block_device(&blk, 0o640, 8, 300);
    set_owner(&blk, 6, 6);
    set_mode(&blk, 0o660);
    t.mtime(&blk, m(11, 2));
    let bigdev = t.path("bigdev");
    make_char_device(&bigdev, 0o600, 4095, 1_048_575);
    t.mtime(&bigdev, m(11, 3));
    let fifo = t.path("fifo");
    make_fifo(&fifo, 0o600);
    set_mode(&fifo, 0o620);
    set_xattr(&fifo, "trusted.fifo", b"f");
    t.mtime(&fifo, m(11, 4));
    let socket = t.path("socket");
    make_socket(&socket);
    set_mode(&socket, 0o755);
    t.mtime(&socket, m(11, 5));

    // Nested directories, an empty one, a sticky one, one owned by another user.
    t.dir("sub", 0o755, m(12, 1));
    let deeper = t.dir("sub/deeper", 0o750, m(12, 2));
    set_owner(&deeper, 1000, 1000);
    set_mode(&deeper, 0o750);
    t.file("sub/deeper/file", 5, m(12, 3));
    t.dir("sub/deeper/deepest", 0o700, m(12, 4));
    t.dir("emptydir", 0o755, m(12, 5));
    t.dir("sticky", 0o1777, m(12, 6));
    t.file("sticky/f", 1, m(12, 7));

    // Xattrs: every namespace, empty/binary/large values, escaped trusted.overlay.* names,
    // user.overlay.* (never escaped), values shared by several inodes.
    let xdir = t.dir("xattrs", 0o755, m(13, 0));
    set_xattr(&xdir, "user.dir", b"d");
    set_xattr(&xdir, "trusted.overlay.foo", b"dir-foo");
    set_xattr(&xdir, "trusted.overlay.opaque", b"y");
    set_xattr(&xdir, "security.test", b"dir label");
    let xfile = t.file("xattrs/file", 300, m(13, 1));
    set_xattr(&xfile, "user.empty", b"");
    set_xattr(&xfile, "user.binary", b"\0\x01\x02\xff\xfe\n");
    set_xattr(&xfile, "user.big", &pattern(7, 2000));
    set_xattr(&xfile, "user.shared", b"same value");
    set_xattr(&xfile, "user.overlay.foo", b"kept verbatim");
    set_xattr(&xfile, "trusted.overlay.foo", b"bar");
    set_xattr(
        &xfile,
        "trusted.overlay.redirect",
        b"/not/the/real/redirect",
    );
    set_xattr(&xfile, "trusted.plain", b"p");
    set_xattr(&xfile, "security.test", b"sec");
    for i in 1..=3 {
        let f = t.file(format!("xattrs/shared{i}"), 10 * i, m(13, 1 + i as i64));
        set_xattr(&f, "user.shared", b"same value");
        set_xattr(&f, "trusted.t", b"1");
    }

    // Hardlinks of every non-directory kind; one group spans directories.
    t.dir("hardlinks", 0o755, m(14, 0));
    let ext = t.file("hardlinks/ext-a", 10_000, m(14, 1));
    set_owner(&ext, 1000, 1000);
    set_xattr(&ext, "user.hl", b"1");
    t.hardlink(&ext, "hardlinks/ext-b");
    t.hardlink(&ext, "sub/ext-c");
    let inline = t.file("hardlinks/inline-a", 20, m(14, 2));
    t.hardlink(&inline, "hardlinks/inline-b");
    let empty = t.file("hardlinks/empty-a", 0, m(14, 3));
    t.hardlink(&empty, "hardlinks/empty-b");
    let sym = t.symlink("hardlinks/sym-a", "ext-a", m(14, 4));
    t.hardlink(&sym, "hardlinks/sym-b");
    let hfifo = t.path("hardlinks/fifo-a");
    make_fifo(&hfifo, 0o644);
    set_mode(&hfifo, 0o644);
    t.mtime(&hfifo, m(14, 5));
    t.hardlink(&hfifo, "hardlinks/fifo-b");
    let hchr = t.path("hardlinks/chr-a");
    make_char_device(&hchr, 0o600, 1, 5);
    t.mtime(&hchr, m(14, 6));
    t.hardlink(&hchr, "hardlinks/chr-b");

    // A directory spanning several blocks, with a 255-byte name; mostly compact inodes.
    t.dir("many", 0o755, BASE_MTIME);
    for i in 0..300 {
        let name = format!("many/entry-{i:04}-{}", "n".repeat(i % 40));
        let len = if i % 10 == 0 { i % 70 } else { 0 };
        t.file(name, len, BASE_MTIME);
    }
    let long_name = format!("many/{}", "L".repeat(255));
    t.file(long_name, 80, BASE_MTIME);

    // The root itself.
    let root = t.root.clone();
    set_owner(&root, 0, 0);
    set_mode(&root, 0o755);
    set_xattr(&root, "user.root", b"r");
    set_xattr(&root, "security.test", b"root label");
    t.mtime(&root, m(20, 1));

    t.finish();
}

/// Make sure the source really holds what the test claims to cover, so that a quirk of the
/// host filesystem cannot make the test vacuous.
pub fn check_source_tree(src: &Path) {
    let node =
        |rel: &str| read_node(&src.join(rel)).unwrap_or_else(|e| panic!("source {rel}: {e}"));
    let sparse = fs::metadata(src.join("sparse")).expect("stat source sparse");
    assert!(
        sparse.blocks() * 512 < sparse.size() / 2,
        "source 'sparse' has no holes ({} blocks for {} bytes)",
        sparse.blocks(),
        sparse.size()
    );
    assert_eq!(node("setuid").perm, 0o4755, "source setuid bit");
    assert_eq!(
        node("long-link")
            .symlink_target
            .map(|t| t.as_os_str().len()),
        Some(1024)
    );
    assert_eq!(node("s1m").size, MIB as u64);
    assert_eq!(node("null").kind, Kind::CharDevice);
    assert_eq!(node("blk").kind, Kind::BlockDevice);
    assert_eq!(node("fifo").kind, Kind::Fifo);
    assert_eq!(node("socket").kind, Kind::Socket);
    assert_eq!(node("hardlinks/ext-a").nlink, 3, "source hardlink count");
    assert_eq!(
        node("s65").mtime_nsec,
        123_456_789,
        "source nanosecond mtime"
    );
    assert_eq!(node("").mtime_nsec, 1, "source root mtime set last");
    let xattrs = node("xattrs/file").xattrs;
    for name in [
        "user.empty",
        "trusted.overlay.foo",
        "security.test",
        "trusted.plain",
    ] {
        assert!(
            xattrs.contains_key(name.as_bytes()),
            "source xattrs/file lacks {name}: the host filesystem dropped it"
        );
    }
}

/// [`build_source_tree`] at `DIR/src` (checked with [`check_source_tree`]) and its image
/// `DIR/image.cfs`, made by `mkcomposefs --hardlinks --digest-store=DIR/objects`.
#[derive(Debug)]
pub struct SourceImage {
    /// The source tree.
    pub src: PathBuf,
    /// The image.
    pub image: PathBuf,
    /// The digest store the image's external files are in.
    pub objects: PathBuf,
}

impl SourceImage {
    /// Build the tree and the image in `dir`. `mkcomposefs` is the command to run: this module
    /// is shared with crates that do not build the binary.
    pub fn build(dir: &Path, mut mkcomposefs: Command) -> SourceImage {
        let src = dir.join("src");
        let image = dir.join("image.cfs");
        let objects = dir.join("objects");
        build_source_tree(&src);
        check_source_tree(&src);
        let mut store = OsStr::new("--digest-store=").to_owned();
        store.push(&objects);
        run_ok(
            mkcomposefs
                .arg("--hardlinks")
                .arg(store)
                .arg(&src)
                .arg(&image),
            Duration::from_secs(120),
        );
        SourceImage {
            src,
            image,
            objects,
        }
    }
}

/// A 64-bit mix of `x` (splitmix64's finaliser): cheap, deterministic, well spread.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Size of file `i` of a bulk tree: 30 % inline (0–64 bytes), 50 % up to 4 KiB, 15 % up to
/// 32 KiB, 5 % up to 128 KiB (about 8 KiB on average).
pub fn bulk_file_size(i: usize) -> usize {
    let h = mix(i as u64);
    let r = (h % 100) as usize;
    let x = (h >> 8) as usize;
    match r {
        0..30 => x % 65,
        30..80 => 65 + x % 4032,
        80..95 => 4097 + x % (28 << 10),
        _ => (32 << 10) + x % (96 << 10),
    }
}

/// Relative path of file `i` of a bulk tree: 32 top directories of 8 subdirectories each.
pub fn bulk_file_path(i: usize) -> PathBuf {
    PathBuf::from(format!("d{:02}/e{}/f{i:05}", i % 32, (i / 32) % 8))
}

/// Content of file `i` of a bulk tree of `variant`: the same in every variant for even `i`.
pub fn bulk_file_content(i: usize, variant: u64) -> Vec<u8> {
    let seed = if i.is_multiple_of(2) {
        mix(i as u64)
    } else {
        mix(i as u64 ^ mix(variant.wrapping_add(1)))
    };
    pattern(seed, bulk_file_size(i))
}

/// Generate `count` regular files under `root` (which must not exist), laid out by
/// [`bulk_file_path`] with [`bulk_file_content`], plus a symlink every 250 files; every entry
/// gets a fixed mtime, so the same arguments always give the same image. Two trees of different
/// `variant`s share the content of every even-numbered file. Returns the total file size.
pub fn generate_bulk_tree(root: &Path, count: usize, variant: u64) -> u64 {
    let mut t = TreeBuilder::new(root);
    let mut dirs = std::collections::BTreeSet::new();
    let mut total = 0u64;
    for i in 0..count {
        let rel = bulk_file_path(i);
        for dir in rel.ancestors().skip(1) {
            if !dir.as_os_str().is_empty() && dirs.insert(dir.to_owned()) {
                let p = t.path(dir);
                fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {p:?}: {e}"));
                t.mtime(&p, (1_400_000_000, dirs.len() as i64));
            }
        }
        let content = bulk_file_content(i, variant);
        total += content.len() as u64;
        let p = t.file_with(
            &rel,
            &content,
            if i.is_multiple_of(7) { 0o755 } else { 0o644 },
        );
        t.mtime(
            &p,
            (1_500_000_000 + i as i64, (i as i64 * 7919) % 1_000_000_000),
        );
        if i.is_multiple_of(250) {
            let link = rel.with_file_name(format!("l{i:05}"));
            t.symlink(&link, &format!("f{i:05}"), (1_450_000_000, i as i64));
        }
    }
    let root = t.root.clone();
    t.mtime(&root, (1_400_000_000, 0));
    t.finish();
    total
}
