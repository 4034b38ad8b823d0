#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::escape::{escape, unescape, unescape_optional, EscapeError, FieldKind};
use super::*;
use crate::tree::{
    DirEntry, Directory, FileData, Inode, InodeId, InodeKind, Metadata, Mtime, RegularFile, Tree,
    Xattrs,
};

// ---------------------------------------------------------------------------------------------
// Helpers

fn parse_str(s: &str) -> Result<Tree, DumpfileError> {
    parse(s.as_bytes(), &ParseOptions::default())
}

fn parse_strict(s: &str) -> Result<Tree, DumpfileError> {
    parse(s.as_bytes(), &ParseOptions { strict: true })
}

fn err_of(s: &str) -> DumpfileError {
    match parse_str(s) {
        Ok(t) => panic!("expected an error for {s:?}, got {t:?}"),
        Err(e) => e,
    }
}

fn dump(tree: &Tree) -> String {
    let mut out = Vec::new();
    write_tree(tree, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn dump_bytes(tree: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    write_tree(tree, &mut out).unwrap();
    out
}

const ROOT: &str = "/ 4096 40755 2 0 0 0 0.0 - - -\n";

fn with_root(rest: &str) -> String {
    format!("{ROOT}{rest}")
}

fn inode_at<'t>(tree: &'t Tree, path: &str) -> &'t Inode {
    tree.inode(
        tree.lookup_path(path.as_bytes())
            .unwrap_or_else(|| panic!("{path} missing")),
    )
}

fn entry_at(tree: &Tree, path: &str) -> DirEntry {
    let (parent, name) = path.rsplit_once('/').unwrap();
    let parent = if parent.is_empty() { "/" } else { parent };
    tree.lookup(
        tree.lookup_path(parent.as_bytes()).unwrap(),
        name.as_bytes(),
    )
    .unwrap()
}

/// Rebuild `tree` the way a dumpfile round trip sees it: inodes numbered in depth-first order,
/// the first name met in that order canonical, directory nlink = 2 + subdirectories.
fn canonical(tree: &Tree) -> Tree {
    let mut out = Tree::new(Metadata::default());
    let mut map: HashMap<InodeId, InodeId> = HashMap::new();
    let mut dirs: HashMap<Vec<u8>, InodeId> = HashMap::new();
    dirs.insert(b"/".to_vec(), InodeId::ROOT);
    tree.walk(|path, entry| {
        let src = tree.inode(entry.inode);
        let mut copy = src.clone();
        if let InodeKind::Directory(_) = copy.kind {
            copy.kind = InodeKind::Directory(Directory::default());
            let subdirs = src
                .as_dir()
                .unwrap()
                .entries
                .values()
                .filter(|e| tree.inode(e.inode).kind.is_dir())
                .count();
            copy.meta.nlink = 2 + subdirs as u32;
        }
        if path == b"/" {
            out.inodes[0] = copy;
            map.insert(entry.inode, InodeId::ROOT);
            return;
        }
        let cut = path.iter().rposition(|&b| b == b'/').unwrap();
        let parent_path: &[u8] = if cut == 0 { b"/" } else { &path[..cut] };
        let name = &path[cut + 1..];
        let parent = dirs[parent_path];
        if let Some(&existing) = map.get(&entry.inode) {
            out.link(parent, name, existing).unwrap();
        } else {
            let is_dir = copy.kind.is_dir();
            let id = out.add(parent, name, copy).unwrap();
            map.insert(entry.inode, id);
            if is_dir {
                dirs.insert(path.to_vec(), id);
            }
        }
    });
    out
}

fn assert_round_trip(tree: &Tree) {
    let text = dump_bytes(tree);
    let back = parse(&text, &ParseOptions { strict: true })
        .unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&text)));
    assert_eq!(dump_bytes(&back), text, "printing is not a fixpoint");
    assert_eq!(back, canonical(tree));
}

// ---------------------------------------------------------------------------------------------
// Escaping

#[test]
fn escape_examples() {
    let opt = |b: &[u8]| String::from_utf8(escape(b, FieldKind::Optional)).unwrap();
    let xat = |b: &[u8]| String::from_utf8(escape(b, FieldKind::Xattr)).unwrap();
    assert_eq!(opt(b""), "-");
    assert_eq!(opt(b"-"), "\\x2d");
    assert_eq!(opt(b"--"), "--");
    assert_eq!(opt(b"a b"), "a\\x20b");
    assert_eq!(opt(b"\\\n\r\t"), "\\\\\\n\\r\\t");
    assert_eq!(
        opt(&[0, 0x1f, 0x7f, 0x80, 0xff]),
        "\\x00\\x1f\\x7f\\x80\\xff"
    );
    assert_eq!(opt(b"a=b~!"), "a=b~!");
    assert_eq!(xat(b"a=b"), "a\\x3db");
    assert_eq!(xat(b""), "");
    assert_eq!(xat(b"-"), "-");
}

#[test]
fn unescape_examples() {
    assert_eq!(&*unescape(b"plain").unwrap(), b"plain");
    assert!(matches!(
        unescape(b"plain").unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert_eq!(
        &*unescape(b"a\\x3Db\\x3d\\n\\r\\t\\\\").unwrap(),
        b"a=b=\n\r\t\\"
    );
    assert_eq!(&*unescape(b"\\xFF\\xfe").unwrap(), &[0xff, 0xfe]);
    assert_eq!(unescape(b"a\\"), Err(EscapeError::TrailingBackslash));
    assert_eq!(unescape(b"\\x"), Err(EscapeError::TruncatedHex));
    assert_eq!(unescape(b"\\x4"), Err(EscapeError::TruncatedHex));
    assert_eq!(unescape(b"\\xg0"), Err(EscapeError::InvalidHex('g')));
    assert_eq!(unescape(b"\\q"), Err(EscapeError::Unsupported('q')));
    assert_eq!(unescape(b"\\0"), Err(EscapeError::Unsupported('0')));
    assert_eq!(unescape_optional(b"-").unwrap(), None);
    assert_eq!(
        unescape_optional(b"\\x2d").unwrap().as_deref(),
        Some(&b"-"[..])
    );
    assert_eq!(unescape_optional(b"").unwrap().as_deref(), Some(&b""[..]));
}

proptest! {
    #[test]
    fn escape_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let e = escape(&bytes, FieldKind::Optional);
        prop_assert!(e.iter().all(|b| (0x21..=0x7e).contains(b)));
        let back = unescape_optional(&e).unwrap().map(|c| c.into_owned()).unwrap_or_default();
        prop_assert_eq!(&back, &bytes);

        let e = escape(&bytes, FieldKind::Xattr);
        prop_assert!(e.iter().all(|b| (0x21..=0x7e).contains(b) && *b != b'='));
        prop_assert_eq!(&*unescape(&e).unwrap(), &bytes[..]);
    }

    #[test]
    fn unescape_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
        let _ = unescape(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// write_entry_line

#[test]
fn entry_line_format() {
    let digest = crate::Digest::Sha256([0xab; 32]);
    let line = EntryLine {
        path: b"/a dir/f",
        size: 5,
        mode: 0o100644,
        hardlink: true,
        nlink: 3,
        uid: 1000,
        gid: 100,
        rdev: 0,
        mtime: Mtime { sec: 12, nsec: 1 },
        payload: Some(b"ab/cd"),
        content: Some(b"-"),
        digest: Some(digest),
        xattrs: vec![(b"user.b", b"x=y"), (b"user.a", b"")],
    };
    let mut out = Vec::new();
    write_entry_line(&mut out, &line).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            "/a\\x20dir/f 5 @100644 3 1000 100 0 12.1 ab/cd \\x2d {} user.b=x\\x3dy user.a=\n",
            "ab".repeat(32)
        )
    );

    let line = EntryLine {
        path: b"/",
        size: 0,
        mode: 0o40755,
        hardlink: false,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        mtime: Mtime {
            sec: -5,
            nsec: 999_999_999,
        },
        payload: Some(b""),
        content: None,
        digest: None,
        xattrs: vec![],
    };
    let mut out = Vec::new();
    write_entry_line(&mut out, &line).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "/ 0 40755 2 0 0 0 -5.999999999 - - -\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Parsing: successes

#[test]
fn parse_all_kinds() {
    let digest = "ab".repeat(32);
    let text = with_root(&format!(
        "/d 4096 40700 2 1 2 0 5.6 - - - user.x=1\n\
         /d/inline 5 100644 7 0 0 0 1.1 - hello - user.b=2 user.a=1\n\
         /d/ext 100000 100600 1 0 0 0 0.0 ab/cd - {digest}\n\
         /d/nodigest 10 100600 1 0 0 0 0.0 ab/cd - -\n\
         /d/digestonly 10 100600 1 0 0 0 0.0 - - {digest}\n\
         /d/sparse 10 100600 1 0 0 0 0.0 - - -\n\
         /d/empty 0 100600 1 0 0 0 0.0 ignored - {digest}\n\
         /link 3 120777 1 0 0 0 0.0 a\\x20b - -\n\
         /chr 0 20644 1 0 0 1234 0.0 - - -\n\
         /blk 0 60644 1 0 0 77 0.0 - - -\n\
         /fifo 0 10644 1 0 0 0 0.0 - - -\n\
         /sock 0 140644 1 0 0 0 0.0 - - -\n"
    ));
    let tree = parse_strict(&text).unwrap();
    let d = inode_at(&tree, "/d");
    assert_eq!(d.mode(), 0o40700);
    assert_eq!((d.meta.uid, d.meta.gid), (1, 2));
    assert_eq!(d.meta.mtime, Mtime { sec: 5, nsec: 6 });
    assert_eq!(&*d.xattrs[&b"user.x"[..]], b"1");

    let inline = inode_at(&tree, "/d/inline");
    assert_eq!(
        inline.kind,
        InodeKind::Regular(RegularFile::inline(&b"hello"[..]))
    );
    assert_eq!(inline.meta.nlink, 7);
    assert_eq!(inline.meta.mtime, Mtime { sec: 1, nsec: 1 });
    assert_eq!(
        inline.xattrs.keys().map(|k| &k[..]).collect::<Vec<_>>(),
        vec![&b"user.a"[..], &b"user.b"[..]]
    );

    let d256 = crate::Digest::from_hex(&digest).unwrap();
    let ext = |digest, payload: Option<&[u8]>, size| {
        InodeKind::Regular(RegularFile {
            size,
            data: FileData::External {
                digest,
                payload: payload.map(Box::from),
            },
        })
    };
    assert_eq!(
        inode_at(&tree, "/d/ext").kind,
        ext(Some(d256), Some(b"ab/cd"), 100000)
    );
    assert_eq!(
        inode_at(&tree, "/d/nodigest").kind,
        ext(None, Some(b"ab/cd"), 10)
    );
    assert_eq!(
        inode_at(&tree, "/d/digestonly").kind,
        ext(Some(d256), None, 10)
    );
    assert_eq!(inode_at(&tree, "/d/sparse").kind, ext(None, None, 10));
    assert_eq!(
        inode_at(&tree, "/d/empty").kind,
        InodeKind::Regular(RegularFile::empty())
    );
    assert_eq!(
        inode_at(&tree, "/link").kind,
        InodeKind::Symlink(Box::from(&b"a b"[..]))
    );
    assert_eq!(inode_at(&tree, "/chr").kind, InodeKind::CharDevice(1234));
    assert_eq!(inode_at(&tree, "/blk").kind, InodeKind::BlockDevice(77));
    assert_eq!(inode_at(&tree, "/fifo").kind, InodeKind::Fifo);
    assert_eq!(inode_at(&tree, "/sock").kind, InodeKind::Socket);
    assert_eq!(tree.inodes.len(), 13);
}

#[test]
fn sha512_digest_accepted() {
    let digest = "cd".repeat(64);
    let tree = parse_str(&with_root(&format!(
        "/f 9 100644 1 0 0 0 0.0 - - {digest}\n"
    )))
    .unwrap();
    match &inode_at(&tree, "/f").kind {
        InodeKind::Regular(RegularFile {
            data: FileData::External {
                digest: Some(d), ..
            },
            ..
        }) => assert_eq!(d.algorithm(), crate::Algorithm::Sha512),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mode_keeps_only_low_bits() {
    // honggfuzz-longlink-unterminated: a "chardev" whose MODE has extra high bits is a symlink.
    let tree = parse_str(&with_root("/chardev 0 20720777 1 0 0 0 0.0 target - -\n")).unwrap();
    let inode = inode_at(&tree, "/chardev");
    assert_eq!(inode.mode(), 0o120777);
    assert_eq!(inode.kind, InodeKind::Symlink(Box::from(&b"target"[..])));
}

#[test]
fn missing_trailing_fields_read_as_empty() {
    // Ten fields: CONTENT present, DIGEST empty.
    let tree = parse_str(&with_root("/f 0 100644 1 0 0 0 0.0 - \n")).unwrap();
    assert_eq!(
        inode_at(&tree, "/f").kind,
        InodeKind::Regular(RegularFile::empty())
    );
    // Ten fields with inline content.
    let tree = parse_str(&with_root("/f 3 100644 1 0 0 0 0.0 - abc\n")).unwrap();
    assert_eq!(
        inode_at(&tree, "/f").kind,
        InodeKind::Regular(RegularFile::inline(&b"abc"[..]))
    );
    // Nine fields: CONTENT is an empty string, which must match SIZE.
    let tree = parse_str(&with_root("/l 0 120777 1 0 0 0 0.0 target\n")).unwrap();
    assert_eq!(
        inode_at(&tree, "/l").kind,
        InodeKind::Symlink(Box::from(&b"target"[..]))
    );
    let e = err_of(&with_root("/f 3 100644 1 0 0 0 0.0 -\n"));
    assert_eq!(e.line, 2);
    assert_eq!(
        e.kind,
        ErrorKind::ContentSizeMismatch {
            content_len: 0,
            size: 3
        }
    );
    // Eight fields: PAYLOAD is empty, so a symlink has no target.
    let e = err_of(&with_root("/l 0 120777 1 0 0 0 0.0\n"));
    assert_eq!(e.kind, ErrorKind::SymlinkTargetEmpty);
    // A missing numeric field is an error.
    let e = err_of(&with_root("/f 0 100644 1 0 0\n"));
    assert_eq!(
        e.kind,
        ErrorKind::InvalidNumber {
            field: Field::Rdev,
            text: String::new()
        }
    );
}

#[test]
fn trailing_space_and_empty_xattr_fields() {
    let tree = parse_str(&with_root("/f 0 100644 1 0 0 0 0.0 - - - \n")).unwrap();
    assert!(inode_at(&tree, "/f").xattrs.is_empty());
    let tree = parse_str(&with_root("/f 0 100644 1 0 0 0 0.0 - - - a=b \n")).unwrap();
    assert_eq!(inode_at(&tree, "/f").xattrs.len(), 1);
    let e = err_of(&with_root("/f 0 100644 1 0 0 0 0.0 - - - a=b  c=d\n"));
    assert_eq!(
        e.kind,
        ErrorKind::XattrMissingEquals {
            text: String::new()
        }
    );
}

#[test]
fn xattr_parsing() {
    let tree = parse_str(&with_root(
        "/f 0 100644 1 0 0 0 0.0 - - - user.a\\x3db=c=d user.e= user.f=\\x00\\xff user.a\\x3db=new\n",
    ))
    .unwrap();
    let x = &inode_at(&tree, "/f").xattrs;
    assert_eq!(&*x[&b"user.a=b"[..]], b"new");
    assert_eq!(&*x[&b"user.e"[..]], b"");
    assert_eq!(&*x[&b"user.f"[..]], &[0, 0xff]);
    assert_eq!(x.len(), 3);
    // Split at the first raw '=' (escaped ones do not count).
    let tree = parse_str(&with_root("/f 0 100644 1 0 0 0 0.0 - - - k=v=w\n")).unwrap();
    assert_eq!(&*inode_at(&tree, "/f").xattrs[&b"k"[..]], b"v=w");
}

#[test]
fn xattr_limits() {
    let line = |xattrs: &str| with_root(&format!("/f 0 100644 1 0 0 0 0.0 - - - {xattrs}\n"));
    assert_eq!(
        err_of(&line("=v")).kind,
        ErrorKind::XattrKeyLength { len: 0 }
    );
    let k255 = "k".repeat(255);
    parse_str(&line(&format!("{k255}=v"))).unwrap();
    assert_eq!(
        err_of(&line(&format!("{k255}k=v"))).kind,
        ErrorKind::XattrKeyLength { len: 256 }
    );
    assert_eq!(
        err_of(&line("a\\x00b=v")).kind,
        ErrorKind::Nul {
            field: Field::XattrKey
        }
    );
    assert_eq!(
        err_of(&line("novalue")).kind,
        ErrorKind::XattrMissingEquals {
            text: "novalue".into()
        }
    );
    assert!(matches!(
        err_of(&line("a=\\q")).kind,
        ErrorKind::Escape {
            field: Field::XattrValue,
            error: EscapeError::Unsupported('q')
        }
    ));

    // Budget: 12 + (7 + 1 + v) ≤ 32767 → v ≤ 32747.
    let ok = format!("a={}", "v".repeat(32747));
    parse_str(&line(&ok)).unwrap();
    let too_big = format!("a={}", "v".repeat(32748));
    assert_eq!(
        err_of(&line(&too_big)).kind,
        ErrorKind::XattrBudget {
            key: "a".into(),
            total: 32768
        }
    );
    // Replacing a value frees the old one's budget first.
    let replaced = format!("a={} a={}", "v".repeat(32000), "w".repeat(32747));
    let tree = parse_str(&line(&replaced)).unwrap();
    assert_eq!(inode_at(&tree, "/f").xattrs[&b"a"[..]].len(), 32747);
    // Two keys share the budget.
    let two = format!("a={} b={}", "v".repeat(16000), "w".repeat(16740));
    assert_eq!(
        err_of(&line(&two)).kind,
        ErrorKind::XattrBudget {
            key: "b".into(),
            total: 32768
        }
    );

    // Section length, before any xattr is looked at.
    let long = format!("a={}", "\\x00".repeat(16384));
    assert_eq!(
        err_of(&line(&long)).kind,
        ErrorKind::XattrSectionTooLong { len: 65538 }
    );
}

#[test]
fn hardlinks() {
    // Backward reference, rs style.
    let tree = parse_str(&with_root(
        "/a 5 100644 4 0 0 0 0.0 - hello -\n/b 0 @120000 - - - - 0.0 /a - -\n",
    ))
    .unwrap();
    assert_eq!(tree.inodes.len(), 2);
    assert_eq!(
        entry_at(&tree, "/a"),
        DirEntry {
            inode: InodeId(1),
            hardlink: false
        }
    );
    assert_eq!(
        entry_at(&tree, "/b"),
        DirEntry {
            inode: InodeId(1),
            hardlink: true
        }
    );
    assert_eq!(inode_at(&tree, "/b").meta.nlink, 4);

    // Forward reference, C style with full metadata, and a chain through another hardlink.
    let tree = parse_str(&with_root(
        "/c 5 @100644 3 0 0 0 0.0 /b hello -\n\
         /d 4096 40755 2 0 0 0 0.0 - - -\n\
         /b 5 @100644 3 0 0 0 0.0 //d//f hello -\n\
         /d/f 5 100644 3 0 0 0 0.0 - hello - user.x=1\n",
    ))
    .unwrap();
    let f = tree.lookup_path(b"/d/f").unwrap();
    assert_eq!(
        entry_at(&tree, "/b"),
        DirEntry {
            inode: f,
            hardlink: true
        }
    );
    assert_eq!(
        entry_at(&tree, "/c"),
        DirEntry {
            inode: f,
            hardlink: true
        }
    );
    assert_eq!(
        entry_at(&tree, "/d/f"),
        DirEntry {
            inode: f,
            hardlink: false
        }
    );
    assert_eq!(tree.inodes.len(), 3);

    let e = err_of(&with_root("/a 0 @100644 1 0 0 0 0.0 /a - -\n"));
    assert_eq!(
        (e.line, e.kind),
        (
            2,
            ErrorKind::HardlinkToSelf {
                target: "/a".into()
            }
        )
    );
    let e = err_of(&with_root(
        "/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n",
    ));
    assert!(matches!(e.kind, ErrorKind::HardlinkLoop { .. }), "{e}");
    let e = err_of(&with_root(
        "/d 0 40755 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /d - -\n",
    ));
    assert_eq!((e.line, e.kind), (3, ErrorKind::HardlinkToDirectory));
    let e = err_of(&with_root("/a 0 @100644 1 0 0 0 0.0 / - -\n"));
    assert_eq!((e.line, e.kind), (2, ErrorKind::HardlinkToDirectory));
    let e = err_of(&with_root(
        "/a 0 @40755 1 0 0 0 0.0 /x - -\n/x 0 100644 1 0 0 0 0.0 - - -\n",
    ));
    assert_eq!((e.line, e.kind), (2, ErrorKind::HardlinkToDirectory));
    let e = err_of(&with_root(
        "/f 0 100644 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /nope - -\n",
    ));
    assert_eq!(
        (e.line, e.kind),
        (
            3,
            ErrorKind::HardlinkTargetMissing {
                target: "/nope".into()
            }
        )
    );
    let e = err_of(&with_root("/a 0 @100644 1 0 0 0 0.0 - - -\n"));
    assert_eq!((e.line, e.kind), (2, ErrorKind::HardlinkNoTarget));
    // A hardlink is not a directory: no children, and no path through it.
    let e = err_of(&with_root("/f 0 100644 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /f - -\n/a/x 0 100644 1 0 0 0 0.0 - - -\n"));
    assert_eq!(
        (e.line, e.kind),
        (
            4,
            ErrorKind::ParentNotDirectory {
                path: "/a/x".into()
            }
        )
    );
    let e = err_of(&with_root(
        "/f 0 100644 1 0 0 0 0.0 - - -\n/a 0 @100644 1 0 0 0 0.0 /f/x - -\n",
    ));
    assert!(matches!(e.kind, ErrorKind::HardlinkTargetMissing { .. }));
    // Duplicate names, in either order.
    let e = err_of(&with_root(
        "/f 0 100644 1 0 0 0 0.0 - - -\n/f 0 @100644 1 0 0 0 0.0 /f - -\n",
    ));
    assert_eq!(
        (e.line, e.kind),
        (3, ErrorKind::Exists { path: "/f".into() })
    );
    let e = err_of(&with_root("/g 0 100644 1 0 0 0 0.0 - - -\n/f 0 @100644 1 0 0 0 0.0 /g - -\n/f 0 100644 1 0 0 0 0.0 - - -\n"));
    assert_eq!(
        (e.line, e.kind),
        (4, ErrorKind::Exists { path: "/f".into() })
    );
}

#[test]
fn long_hardlink_chain() {
    // Each link points at the next one; the real file comes last. No recursion, no quadratic work.
    let n = 20_000;
    let mut text = String::from(ROOT);
    for i in 0..n {
        text.push_str(&format!("/l{i} 0 @100644 1 0 0 0 0.0 /l{} - -\n", i + 1));
    }
    text.push_str(&format!("/l{n} 0 100644 9 0 0 0 0.0 - - -\n"));
    let tree = parse_str(&text).unwrap();
    assert_eq!(tree.inodes.len(), 2);
    assert_eq!(entry_at(&tree, "/l0").inode, InodeId(1));
}

#[test]
fn strict_mode() {
    let no_nl = "/ 4096 40755 2 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -";
    parse_str(no_nl).unwrap();
    let e = parse_strict(no_nl).unwrap_err();
    assert_eq!((e.line, e.kind), (2, ErrorKind::MissingFinalNewline));

    let rdev = with_root("/a 0 100644 1 0 0 5 0.0 - - -\n");
    parse_str(&rdev).unwrap();
    assert_eq!(
        parse_strict(&rdev).unwrap_err().kind,
        ErrorKind::RdevOnNonDevice { rdev: 5 }
    );
    let rdev_root = "/ 4096 40755 2 0 0 1 0.0 - - -\n";
    parse_str(rdev_root).unwrap();
    assert_eq!(parse_strict(rdev_root).unwrap_err().line, 1);

    let size = with_root("/l 5 120777 1 0 0 0 0.0 abc - -\n");
    parse_str(&size).unwrap();
    assert_eq!(
        parse_strict(&size).unwrap_err().kind,
        ErrorKind::SymlinkSizeMismatch { size: 5, len: 3 }
    );

    let content = with_root("/l 3 120777 1 0 0 0 0.0 abc xyz -\n");
    let tree = parse_str(&content).unwrap();
    assert_eq!(
        inode_at(&tree, "/l").kind,
        InodeKind::Symlink(Box::from(&b"abc"[..]))
    );
    assert_eq!(
        parse_strict(&content).unwrap_err().kind,
        ErrorKind::SymlinkWithContent
    );
}

#[test]
fn error_display() {
    let e = err_of(&with_root(
        "/f 0 100644 1 0 0 0 0.0 - - -\n/x 0 644 1 0 0 0 0.0 - - -\n",
    ));
    assert_eq!(e.to_string(), "line 3: invalid mode 644: no file type");
    let e = err_of(&with_root("/x 0 170644 1 0 0 0 0.0 - - -\n"));
    assert_eq!(
        e.to_string(),
        "line 2: invalid mode 170644: unknown file type"
    );
    let e = err_of(&with_root("/x y 100644 1 0 0 0 0.0 - - -\n"));
    assert_eq!(e.to_string(), "line 2: invalid SIZE \"y\"");
    let e = err_of(&with_root("/a\\x20b/c 0 100644 1 0 0 0 0.0 - - -\n"));
    assert_eq!(
        e.to_string(),
        "line 2: parent directory missing for /a\\x20b/c"
    );
}

#[test]
fn line_errors() {
    let k = |s: &str| err_of(s).kind;
    let r = |rest: &str| err_of(&with_root(rest));

    assert_eq!(err_of("").kind, ErrorKind::Empty);
    assert_eq!(
        k("/a 0 100644 1 0 0 0 0.0 - - -\n"),
        ErrorKind::RootNotFirst { path: "/a".into() }
    );
    assert_eq!(
        k("/ 0 100644 1 0 0 0 0.0 - - -\n"),
        ErrorKind::RootNotDirectory
    );
    assert_eq!(
        k("/ 0 @40755 1 0 0 0 0.0 / - -\n"),
        ErrorKind::HardlinkToDirectory
    );
    let e = r("/ 0 40755 1 0 0 0 0.0 - - -\n");
    assert_eq!((e.line, e.kind), (2, ErrorKind::MultipleRoots));
    assert_eq!(
        r("\n").kind,
        ErrorKind::InvalidPath {
            path: String::new(),
            problem: PathProblem::Empty
        }
    );
    assert_eq!(r("/a 0 100644 1 0 0 0 0.0 - - -\n\n").line, 3);
    assert_eq!(
        r("/a\0 0 100644 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::EmbeddedNul { column: 3 }
    );
    let path = |p: &str, problem| {
        let e = r(&format!("{p} 0 100644 1 0 0 0 0.0 - - -\n"));
        match e.kind {
            ErrorKind::InvalidPath { path, problem: got } => {
                assert_eq!(got, problem, "{p}");
                if p.len() < 100 {
                    assert_eq!(path, p);
                }
            }
            other => panic!("{p}: {other:?}"),
        }
    };
    path("a", PathProblem::NotAbsolute);
    path("//", PathProblem::EmptyComponent);
    path("/a/", PathProblem::EmptyComponent);
    path("//a", PathProblem::EmptyComponent);
    path("/.", PathProblem::DotComponent);
    path("/..", PathProblem::DotComponent);
    path("/./a", PathProblem::DotComponent);
    path("/a\\x00", PathProblem::Nul);
    path(&format!("/{}", "n".repeat(256)), PathProblem::NameTooLong);
    parse_str(&with_root(&format!(
        "/{} 0 100644 1 0 0 0 0.0 - - -\n",
        "n".repeat(255)
    )))
    .unwrap();
    assert!(matches!(
        r("/a\\ 0 100644 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::Escape {
            field: Field::Path,
            error: EscapeError::TrailingBackslash
        }
    ));
    assert_eq!(
        r("/a/b 0 100644 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::ParentMissing {
            path: "/a/b".into()
        }
    );
    assert_eq!(
        r("/a 0 100644 1 0 0 0 0.0 - - -\n/a/b 0 100644 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::ParentNotDirectory {
            path: "/a/b".into()
        }
    );
    assert_eq!(
        r("/a 0 100644 1 0 0 0 0.0 - - -\n/a 0 100644 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::Exists { path: "/a".into() }
    );

    // Numbers.
    assert_eq!(
        r("/a 0 100648 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::InvalidNumber {
            field: Field::Mode,
            text: "100648".into()
        }
    );
    assert_eq!(
        r("/a 0 @ 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::InvalidNumber {
            field: Field::Mode,
            text: String::new()
        }
    );
    assert_eq!(
        r("/a 0 0 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::InvalidMode { mode: 0 }
    );
    assert_eq!(
        r("/a 0 7777777777777777777777777 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::OutOfRange {
            field: Field::Mode,
            text: "7777777777777777777777777".into()
        }
    );
    assert_eq!(
        r("/a -1 100644 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::InvalidNumber {
            field: Field::Size,
            text: "-1".into()
        }
    );
    assert_eq!(
        r("/a 0 100644 1x 0 0 0 0.0 - - -\n").kind,
        ErrorKind::InvalidNumber {
            field: Field::Nlink,
            text: "1x".into()
        }
    );
    assert_eq!(
        r("/a 0 100644 1 4294967296 0 0 0.0 - - -\n").kind,
        ErrorKind::OutOfRange {
            field: Field::Uid,
            text: "4294967296".into()
        }
    );
    assert_eq!(
        r("/a 0 100644 1 0 +1 0 0.0 - - -\n").kind,
        ErrorKind::InvalidNumber {
            field: Field::Gid,
            text: "+1".into()
        }
    );
    assert_eq!(
        r("/a 0 100644 1 0 0 18446744073709551616 0.0 - - -\n").kind,
        ErrorKind::OutOfRange {
            field: Field::Rdev,
            text: "18446744073709551616".into()
        }
    );
    for bad in ["0", "0.", ".0", "1.2.3", "a.0", "0.-1"] {
        assert_eq!(
            r(&format!("/a 0 100644 1 0 0 0 {bad} - - -\n")).kind,
            ErrorKind::InvalidMtime { text: bad.into() },
            "{bad}"
        );
    }
    assert_eq!(
        r("/a 0 100644 1 0 0 0 0.4294967296 - - -\n").kind,
        ErrorKind::OutOfRange {
            field: Field::Mtime,
            text: "0.4294967296".into()
        }
    );
    let tree = parse_str(&with_root(
        "/a 0 100644 1 0 0 0 -9223372036854775808.4294967295 - - -\n",
    ))
    .unwrap();
    assert_eq!(
        inode_at(&tree, "/a").meta.mtime,
        Mtime {
            sec: i64::MIN,
            nsec: u32::MAX
        }
    );
    let tree = parse_str(&with_root("/a 0 100644 1 0 0 0 1.0000000001 - - -\n")).unwrap();
    assert_eq!(inode_at(&tree, "/a").meta.mtime, Mtime { sec: 1, nsec: 1 });

    // Content, payload, symlinks, digest.
    assert_eq!(
        r("/a 3 100644 1 0 0 0 0.0 - ab -\n").kind,
        ErrorKind::ContentSizeMismatch {
            content_len: 2,
            size: 3
        }
    );
    let c5000 = "c".repeat(5000);
    parse_str(&with_root(&format!(
        "/a 5000 100644 1 0 0 0 0.0 - {c5000} -\n"
    )))
    .unwrap();
    assert_eq!(
        r(&format!("/a 5001 100644 1 0 0 0 0.0 - {c5000}c -\n")).kind,
        ErrorKind::ContentTooLarge { len: 5001 }
    );
    let p4095 = "p".repeat(4095);
    parse_str(&with_root(&format!(
        "/a 1 100644 1 0 0 0 0.0 {p4095} - -\n"
    )))
    .unwrap();
    parse_str(&with_root(&format!(
        "/a 1 120777 1 0 0 0 0.0 {p4095} - -\n"
    )))
    .unwrap();
    assert_eq!(
        r(&format!("/a 1 100644 1 0 0 0 0.0 {p4095}p - -\n")).kind,
        ErrorKind::PayloadTooLong { len: 4096 }
    );
    assert_eq!(
        r(&format!("/a 1 120777 1 0 0 0 0.0 {p4095}p - -\n")).kind,
        ErrorKind::SymlinkTargetTooLong { len: 4096 }
    );
    assert_eq!(
        r("/a 1 120777 1 0 0 0 0.0 - - -\n").kind,
        ErrorKind::SymlinkTargetEmpty
    );
    assert_eq!(
        r("/a 1 120777 1 0 0 0 0.0 a\\x00 - -\n").kind,
        ErrorKind::Nul {
            field: Field::Payload
        }
    );
    let tree = parse_str(&with_root("/a 1 120777 1 0 0 0 0.0 \\x2d - -\n")).unwrap();
    assert_eq!(
        inode_at(&tree, "/a").kind,
        InodeKind::Symlink(Box::from(&b"-"[..]))
    );
    assert!(matches!(
        r("/a 1 100644 1 0 0 0 0.0 - - abc\n").kind,
        ErrorKind::InvalidDigest(_)
    ));
    assert!(matches!(
        r(&format!("/a 1 100644 1 0 0 0 0.0 - - {}\n", "a".repeat(66))).kind,
        ErrorKind::InvalidDigest(_)
    ));
    assert!(matches!(
        r("/a 1 100644 1 0 0 0 0.0 - - \\xff\n").kind,
        ErrorKind::InvalidDigest(_)
    ));
    assert!(matches!(
        r("/a 1 100644 1 0 0 0 0.0 - \\xZZ -\n").kind,
        ErrorKind::Escape {
            field: Field::Content,
            error: EscapeError::InvalidHex('Z')
        }
    ));
}

#[test]
fn content_on_other_types_is_ignored() {
    // C accepts (and ignores) content, payload and digest on non-regular files outside strict mode.
    let digest = "ab".repeat(32);
    let tree = parse_strict(&format!(
        "/ 3 40755 2 0 0 0 0.0 - abc {digest}\n/f 3 10644 1 0 0 0 0.0 x abc -\n"
    ))
    .unwrap();
    assert_eq!(inode_at(&tree, "/f").kind, InodeKind::Fifo);
    assert!(tree.root().kind.is_dir());
}

// ---------------------------------------------------------------------------------------------
// write_tree

#[test]
fn write_tree_canonical_form() {
    let text = with_root(
        "/z 0 100644 3 0 0 0 0.0 - - -\n\
         /a 0 @100644 3 0 0 0 0.0 /z - -\n\
         /d 9 40755 7 0 0 0 0.0 - - - user.b=1 user.a=2\n\
         /d/e 4096 40755 2 0 0 0 0.0 - - -\n\
         /d/l 0 @100644 1 0 0 0 0.0 /z - -\n",
    );
    let tree = parse_str(&text).unwrap();
    assert_eq!(
        dump(&tree),
        "/ 0 40755 3 0 0 0 0.0 - - -\n\
         /a 0 100644 3 0 0 0 0.0 - - -\n\
         /d 0 40755 3 0 0 0 0.0 - - - user.a=2 user.b=1\n\
         /d/e 0 40755 2 0 0 0 0.0 - - -\n\
         /d/l 0 @120000 - - - - 0.0 /a - -\n\
         /z 0 @120000 - - - - 0.0 /a - -\n"
    );
    assert_round_trip(&tree);
}

#[test]
fn write_tree_kinds() {
    let digest = crate::Digest::Sha256([0x11; 32]);
    let mut tree = Tree::new(Metadata {
        permissions: 0o755,
        ..Default::default()
    });
    let meta = |nlink| Metadata {
        permissions: 0o644,
        uid: 1,
        gid: 2,
        mtime: Mtime { sec: 3, nsec: 40 },
        nlink,
    };
    let mut x = Xattrs::new();
    x.insert(Box::from(&b"user.k=1"[..]), Box::from(&b" v"[..]));
    let mut f = Inode::new(
        meta(1),
        InodeKind::Regular(RegularFile::external(10, digest)),
    );
    f.xattrs = x;
    tree.add(InodeId::ROOT, b"ext", f).unwrap();
    tree.add(
        InodeId::ROOT,
        b"-",
        Inode::new(meta(1), InodeKind::Regular(RegularFile::inline(&b"-"[..]))),
    )
    .unwrap();
    tree.add(
        InodeId::ROOT,
        b"e",
        Inode::new(meta(1), InodeKind::Regular(RegularFile::empty())),
    )
    .unwrap();
    tree.add(
        InodeId::ROOT,
        b"s",
        Inode::new(meta(1), InodeKind::Symlink(Box::from(&b"t t"[..]))),
    )
    .unwrap();
    tree.add(
        InodeId::ROOT,
        b"c",
        Inode::new(meta(1), InodeKind::CharDevice(0)),
    )
    .unwrap();
    tree.add(
        InodeId::ROOT,
        b"b",
        Inode::new(meta(1), InodeKind::BlockDevice(5)),
    )
    .unwrap();
    let hex = digest.to_hex();
    assert_eq!(
        dump(&tree),
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - -\n\
             /- 1 100644 1 1 2 0 3.40 - \\x2d -\n\
             /b 0 60644 1 1 2 5 3.40 - - -\n\
             /c 0 20644 1 1 2 0 3.40 - - -\n\
             /e 0 100644 1 1 2 0 3.40 - - -\n\
             /ext 10 100644 1 1 2 0 3.40 11/{} - {hex} user.k\\x3d1=\\x20v\n\
             /s 3 120644 1 1 2 0 3.40 t\\x20t - -\n",
            &hex[2..]
        )
    );
    assert_round_trip(&tree);
}

// ---------------------------------------------------------------------------------------------
// Random trees

#[derive(Debug, Clone)]
enum Spec {
    Dir,
    Inline(Vec<u8>),
    External(u64, Option<[u8; 32]>, Option<Vec<u8>>),
    Symlink(Vec<u8>),
    Chr(u64),
    Blk(u64),
    Fifo,
    Socket,
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    let nonnul = || proptest::collection::vec(1u8..=255, 1..40);
    prop_oneof![
        3 => Just(Spec::Dir),
        2 => proptest::collection::vec(any::<u8>(), 0..80).prop_map(Spec::Inline),
        2 => (1u64..=super::parse::MAX_EXTERNAL_SIZE, proptest::option::of(any::<[u8; 32]>()), proptest::option::of(nonnul()))
            .prop_map(|(s, d, p)| Spec::External(s, d, p)),
        1 => nonnul().prop_map(Spec::Symlink),
        1 => any::<u64>().prop_map(Spec::Chr),
        1 => any::<u64>().prop_map(Spec::Blk),
        1 => Just(Spec::Fifo),
        1 => Just(Spec::Socket),
    ]
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(prop_oneof![1u8..=46, 48u8..=255], 1..12)
        .prop_filter("dot names", |n| n != b"." && n != b"..")
}

/// Metadata plus xattrs as generated.
type MetaSpec = (Metadata, Vec<(Vec<u8>, Vec<u8>)>);

fn meta_strategy() -> impl Strategy<Value = MetaSpec> {
    (
        0u32..0o10000,
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(
            (
                proptest::collection::vec(1u8..=255, 1..20),
                proptest::collection::vec(any::<u8>(), 0..20),
            ),
            0..4,
        ),
    )
        .prop_map(|(permissions, uid, gid, sec, nsec, nlink, xattrs)| {
            (
                Metadata {
                    permissions,
                    uid,
                    gid,
                    mtime: Mtime { sec, nsec },
                    nlink,
                },
                xattrs,
            )
        })
}

type EntrySpec = (usize, Vec<u8>, Spec, MetaSpec);

fn build_tree(
    root_meta: MetaSpec,
    entries: Vec<EntrySpec>,
    links: Vec<(usize, Vec<u8>, usize)>,
) -> Tree {
    let xattrs_of = |list: Vec<(Vec<u8>, Vec<u8>)>| -> Xattrs {
        list.into_iter()
            .map(|(k, v)| (k.into_boxed_slice(), v.into_boxed_slice()))
            .collect()
    };
    let mut tree = Tree::new(root_meta.0);
    tree.inodes[0].xattrs = xattrs_of(root_meta.1);
    let mut dirs = vec![InodeId::ROOT];
    let mut leaves = Vec::new();
    for (parent, name, spec, (meta, xattrs)) in entries {
        let parent = dirs[parent % dirs.len()];
        let kind = match spec {
            Spec::Dir => InodeKind::Directory(Directory::default()),
            Spec::Inline(c) => InodeKind::Regular(RegularFile::inline(c)),
            Spec::External(size, digest, payload) => InodeKind::Regular(RegularFile {
                size,
                data: FileData::External {
                    digest: digest.map(crate::Digest::Sha256),
                    payload: payload.map(Vec::into_boxed_slice),
                },
            }),
            Spec::Symlink(t) => InodeKind::Symlink(t.into_boxed_slice()),
            Spec::Chr(r) => InodeKind::CharDevice(r),
            Spec::Blk(r) => InodeKind::BlockDevice(r),
            Spec::Fifo => InodeKind::Fifo,
            Spec::Socket => InodeKind::Socket,
        };
        let is_dir = kind.is_dir();
        let mut inode = Inode::new(meta, kind);
        inode.xattrs = xattrs_of(xattrs);
        if let Ok(id) = tree.add(parent, &name, inode) {
            if is_dir {
                dirs.push(id);
            } else {
                leaves.push(id);
            }
        }
    }
    if !leaves.is_empty() {
        for (parent, name, target) in links {
            let parent = dirs[parent % dirs.len()];
            let _ = tree.link(parent, &name, leaves[target % leaves.len()]);
        }
    }
    tree
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_tree_round_trip(
        root in meta_strategy(),
        entries in proptest::collection::vec((any::<usize>(), name_strategy(), spec_strategy(), meta_strategy()), 0..40),
        links in proptest::collection::vec((any::<usize>(), name_strategy(), any::<usize>()), 0..8),
    ) {
        let tree = build_tree(root, entries, links);
        assert_round_trip(&tree);
    }

    #[test]
    fn parse_never_panics(lines in proptest::collection::vec(
        proptest::collection::vec(prop_oneof![
            Just(b' '), Just(b'/'), Just(b'@'), Just(b'\\'), Just(b'-'), Just(b'.'), Just(b'='),
            Just(b'x'), Just(b'0'), Just(b'1'), Just(b'4'), Just(b'a'), any::<u8>()
        ], 0..60), 0..8))
    {
        let mut text = ROOT.as_bytes().to_vec();
        for l in &lines {
            text.extend_from_slice(l);
            text.push(b'\n');
        }
        let _ = parse(&text, &ParseOptions::default());
        let _ = parse(&text, &ParseOptions { strict: true });
    }

    #[test]
    fn mutated_lines_never_panic(
        field in 0usize..14,
        value in proptest::collection::vec(any::<u8>(), 0..12),
    ) {
        // Replace one field of a valid set of lines with random bytes.
        let base = [
            "/d 0 40755 2 0 0 0 0.0 - - -",
            "/d/f 3 100644 1 0 0 0 1.2 - abc - user.a=b",
            "/d/h 0 @100644 1 0 0 0 0.0 /d/f - -",
            "/l 1 120777 1 0 0 0 0.0 x - -",
        ];
        for (i, line) in base.iter().enumerate() {
            let mut text = ROOT.as_bytes().to_vec();
            for (j, other) in base.iter().enumerate() {
                if i == j {
                    let mut parts: Vec<Vec<u8>> = other.split(' ').map(|s| s.as_bytes().to_vec()).collect();
                    let k = field % parts.len();
                    parts[k] = value.clone();
                    text.extend_from_slice(&parts.join(&b' '));
                } else {
                    text.extend_from_slice(other.as_bytes());
                }
                text.push(b'\n');
            }
            let _ = line;
            let _ = parse(&text, &ParseOptions::default());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conformance files from composefs C v1.0.8

fn conformance_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/conformance/composefs-c");
    if dir.is_dir() {
        Some(dir)
    } else {
        let why = format!("conformance vectors absent at {}", dir.display());
        assert!(
            std::env::var_os("CFS_TEST_REQUIRE_ALL").is_none(),
            "CFS_TEST_REQUIRE_ALL is set: {why}"
        );
        eprintln!("!!!!! SKIPPING conformance dumpfile tests: {why} !!!!!");
        None
    }
}

fn read_asset(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    }
}

fn assets(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, _)| n.ends_with(".dump") || n.ends_with(".dump.gz"))
        .collect();
    v.sort();
    v
}

#[test]
fn conformance_should_fail() {
    let Some(dir) = conformance_dir() else { return };
    type Expectation = (&'static str, usize, fn(&ErrorKind) -> bool);
    let expected: &[Expectation] = &[
        ("should-fail-big-inline.dump", 2, |k| {
            matches!(k, ErrorKind::ContentTooLarge { len: 5004 })
        }),
        ("should-fail-dir-hardlink.dump", 2, |k| {
            matches!(k, ErrorKind::HardlinkToDirectory)
        }),
        ("should-fail-dot-name.dump", 2, |k| {
            matches!(
                k,
                ErrorKind::InvalidPath {
                    problem: PathProblem::DotComponent,
                    ..
                }
            )
        }),
        ("should-fail-dotdot-name.dump", 2, |k| {
            matches!(
                k,
                ErrorKind::InvalidPath {
                    problem: PathProblem::DotComponent,
                    ..
                }
            )
        }),
        ("should-fail-empty-link-name.dump", 2, |k| {
            matches!(k, ErrorKind::SymlinkTargetEmpty)
        }),
        ("should-fail-empty-name.dump", 2, |k| {
            matches!(
                k,
                ErrorKind::InvalidPath {
                    problem: PathProblem::EmptyComponent,
                    ..
                }
            )
        }),
        ("should-fail-empty-xattr-key.dump", 2, |k| {
            matches!(k, ErrorKind::XattrKeyLength { len: 0 })
        }),
        ("should-fail-honggfuzz-long-xattr.dump", 1, |k| {
            matches!(k, ErrorKind::XattrBudget { .. })
        }),
        ("should-fail-long-link.dump", 2, |k| {
            matches!(k, ErrorKind::SymlinkTargetTooLong { .. })
        }),
        ("should-fail-long-xattr-key.dump", 2, |k| {
            matches!(k, ErrorKind::XattrSectionTooLong { .. })
        }),
        ("should-fail-long-xattr-value.dump", 2, |k| {
            matches!(k, ErrorKind::InvalidMode { mode: 0o644 })
        }),
        ("should-fail-no-ftype.dump", 2, |k| {
            matches!(k, ErrorKind::InvalidMode { mode: 0 })
        }),
        ("should-fail-self-hardlink.dump", 2, |k| {
            matches!(k, ErrorKind::HardlinkToSelf { .. })
        }),
        // C reports this only when writing (EFBIG); we name the line.
        ("should-fail-too-big.dump", 2, |k| {
            matches!(k, ErrorKind::FileTooLarge { .. })
        }),
    ];
    let mut seen = 0;
    for (name, path) in assets(&dir) {
        if !name.starts_with("should-fail-") {
            continue;
        }
        seen += 1;
        let data = read_asset(&path);
        let strict_err = parse(&data, &ParseOptions { strict: true }).expect_err(&name);
        eprintln!("{name} (strict): {strict_err}");
        assert!(strict_err.line >= 1);
        {
            let err = parse(&data, &ParseOptions::default()).expect_err(&name);
            eprintln!("{name}: {err}");
            let (_, line, check) = expected
                .iter()
                .find(|(n, _, _)| *n == name)
                .unwrap_or_else(|| panic!("no expectation for {name}"));
            assert_eq!(err.line, *line, "{name}: {err}");
            assert!(check(&err.kind), "{name}: {err}");
        }
    }
    assert_eq!(seen, expected.len(), "should-fail files missing");
}

#[test]
fn conformance_files_parse_and_round_trip() {
    let Some(dir) = conformance_dir() else { return };
    let lenient = [
        "no-newline.dump",
        "longlink.dump",
        "honggfuzz-longlink-unterminated.dump",
    ];
    let mut seen = 0;
    for (name, path) in assets(&dir) {
        if name.starts_with("should-fail-") {
            continue;
        }
        seen += 1;
        let data = read_asset(&path);
        let start = std::time::Instant::now();
        let tree = parse(&data, &ParseOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let elapsed = start.elapsed();
        let strict = parse(&data, &ParseOptions { strict: true });
        if lenient.contains(&name.as_str()) {
            let e = strict.expect_err(&name);
            eprintln!("{name}: strict: {e}");
        } else {
            assert_eq!(
                strict.unwrap_or_else(|e| panic!("{name} (strict): {e}")),
                tree
            );
        }
        eprintln!(
            "{name}: {} lines, {} inodes, parsed in {elapsed:?}",
            data.split(|&b| b == b'\n').count(),
            tree.inodes.len()
        );
        assert_round_trip(&tree);
    }
    assert!(seen >= 10, "only {seen} conformance dumps found");
}

#[test]
fn conformance_special_details() {
    let Some(dir) = conformance_dir() else { return };
    let tree = parse(
        &read_asset(&dir.join("special.dump")),
        &ParseOptions { strict: true },
    )
    .unwrap();
    assert_eq!(
        inode_at(&tree, "/blockdev").kind,
        InodeKind::BlockDevice(107690)
    );
    assert_eq!(
        inode_at(&tree, "/chardev").kind,
        InodeKind::CharDevice(10769)
    );
    assert_eq!(inode_at(&tree, "/whiteout").kind, InodeKind::CharDevice(0));
    assert_eq!(
        &*inode_at(&tree, "/escaped-xattr").xattrs[&b"trusted.overlay.redirect"[..]],
        b"/foo\n"
    );
    assert_eq!(
        inode_at(&tree, "/inline").kind,
        InodeKind::Regular(RegularFile::inline(&b"FOOBAR\nINAFILE\n"[..]))
    );
    for (p, n) in [
        ("/inline-large1", 4095),
        ("/inline-large2", 4096),
        ("/inline-large3", 4097),
    ] {
        match &inode_at(&tree, p).kind {
            InodeKind::Regular(RegularFile {
                size,
                data: FileData::Inline(c),
            }) => {
                assert_eq!((*size, c.len()), (n, n as usize));
            }
            other => panic!("{p}: {other:?}"),
        }
    }
    assert_eq!(
        tree.root().meta.mtime,
        Mtime {
            sec: 1633950376,
            nsec: 0
        }
    );

    let tree = parse(
        &read_asset(&dir.join("honggfuzz-longlink-unterminated.dump")),
        &ParseOptions::default(),
    )
    .unwrap();
    let inode = inode_at(&tree, "/chardev");
    assert_eq!(inode.mode(), 0o120777);
    assert!(matches!(&inode.kind, InodeKind::Symlink(t) if t.len() == 4095));

    let tree = parse(
        &read_asset(&dir.join("config-with-hard-link.dump.gz")),
        &ParseOptions { strict: true },
    )
    .unwrap();
    let ls = entry_at(&tree, "/usr/bin/ls");
    let link = entry_at(&tree, "/usr/bin/ls-hardlink");
    assert_eq!(
        link,
        DirEntry {
            inode: ls.inode,
            hardlink: true
        }
    );
    assert!(!ls.hardlink);
}
