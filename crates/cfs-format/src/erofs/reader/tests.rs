//! Reader tests: C conformance vectors round-tripped through `dump`, the worked examples of
//! docs/formats.md §10.3a, API unit tests, `mkfs.erofs` images, and a mutation proptest that feeds
//! damaged images to every entry point.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::io;

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::dumpfile::{parse, ParseOptions};
use crate::erofs::format::{file_type, FormatVersion};
use crate::erofs::writer::{write_image, WriteOptions};
use crate::fsverity::Digest;
use crate::tree::{self, FileData, InodeKind, Metadata, RegularFile, Tree};

// ---------------------------------------------------------------------------------------------
// Helpers

fn parse_dump(text: &str) -> Tree {
    parse(text.as_bytes(), &ParseOptions::default())
        .unwrap_or_else(|e| panic!("parse failed: {e}\n{text}"))
}

fn image_of(text: &str, opts: WriteOptions) -> Vec<u8> {
    write_image(&parse_dump(text), &opts).unwrap()
}

fn dump_string(image: &[u8], filter: &[&[u8]]) -> String {
    let mut out = Vec::new();
    dump(image, &mut out, filter).unwrap();
    String::from_utf8(out).unwrap()
}

fn ls_string(image: &[u8], filter: &[&[u8]]) -> String {
    let mut out = Vec::new();
    ls(image, &mut out, filter).unwrap();
    String::from_utf8(out).unwrap()
}

fn version_of(image: &[u8]) -> FormatVersion {
    FormatVersion::from_number(Image::open(image).unwrap().composefs_version()).unwrap()
}

/// The C test property: `dump` of the image, fed back to the writer at the same version,
/// reproduces the image byte for byte.
fn assert_dump_roundtrip(name: &str, image: &[u8]) {
    let text = dump_string(image, &[]);
    let again = image_of(&text, WriteOptions::exactly(version_of(image)));
    assert!(
        again == image,
        "{name}: dump does not round-trip through the writer\n{text}"
    );
}

/// `read_tree` keeps everything the writer uses: writing the rebuilt tree gives the same image.
fn assert_tree_roundtrip(name: &str, image: &[u8]) {
    let tree = read_tree(image).unwrap();
    let again = write_image(&tree, &WriteOptions::exactly(version_of(image))).unwrap();
    assert!(again == image, "{name}: read_tree does not round-trip");
}

fn rep(s: &str, n: usize) -> String {
    s.repeat(n)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

const ROOT: &str = "/ 0 40755 2 0 0 0 0.0 - - -\n";

// ---------------------------------------------------------------------------------------------
// Conformance vectors (docs/formats.md §2.14 and §2.16), as dumpfiles.

fn vectors() -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    v.push(("empty", ROOT.to_string()));
    v.push((
        "simple",
        format!(
            "{ROOT}/blkdev 0 60000 1 0 0 123 0.0 - - -\n\
             /chrdev 0 20000 1 0 0 123 0.0 - - -\n\
             /fifo 0 10000 1 0 0 0 0.0 - - -\n\
             /regular-external 1234 100000 1 0 0 0 0.0 5a/{} - {}\n\
             /regular-inline 4 100000 1 0 0 0 0.0 - hihi -\n\
             /socket 0 140000 1 0 0 0 0.0 - - -\n\
             /symlink 7 120000 1 0 0 0 0.0 /target - -\n",
            rep("5a", 31),
            rep("5a", 32)
        ),
    ));
    v.push((
        "hardlinks",
        format!(
            "{ROOT}/a 0 40755 3 0 0 0 0.0 - - -\n\
             /a/deep 0 40755 2 0 0 0 0.0 - - -\n\
             /a/deep/f 5 100644 3 0 0 0 0.0 - hello -\n\
             /b 0 40755 2 0 0 0 0.0 - - -\n\
             /b/link 0 @120000 - - - - 0.0 /a/deep/f - -\n\
             /z 0 @120000 - - - - 0.0 /a/deep/f - -\n"
        ),
    ));
    v.push((
        "whiteouts",
        format!(
            "{ROOT}/etc 0 40755 2 0 0 0 0.0 - - -\n\
             /etc/gone 0 20000 1 0 0 0 0.0 - - -\n\
             /etc/keep 0 100644 1 0 0 0 0.0 - - -\n"
        ),
    ));
    v.push((
        "xattrs",
        format!(
            "/ 0 40755 2 0 0 0 0.0 - - - security.selinux=system_u:object_r:root_t:s0\\x00\n\
             /a 0 100644 1 0 0 0 0.0 - - - security.selinux=system_u:object_r:etc_t:s0\\x00 user.x=1\n\
             /b 0 100644 1 0 0 0 0.0 - - - security.selinux=system_u:object_r:etc_t:s0\\x00 user.x=2 trusted.overlay.foo=bar\n\
             /c 0 100755 1 0 0 0 0.0 - - - security.selinux=system_u:object_r:bin_t:s0\\x00 security.capability=\\x01\\x00\\x00\\x02\\x00\\x04{} user.x=1\n\
             /d 0 100644 1 0 0 0 0.0 - - - system.posix_acl_access=\\x02\\x00\\x00\\x00 user.overlay.redirect=/x\n",
            rep("\\x00", 14)
        ),
    ));
    v.push((
        "mtimes",
        "/ 0 40755 2 0 0 0 100.5 - - -\n\
         /early 0 100644 1 0 0 0 50.7 - - -\n\
         /late 0 100644 1 0 0 0 100.5 - - -\n\
         /biguid 0 100644 1 70000 0 0 50.7 - - -\n\
         /same 0 100644 1 0 0 0 50.7 - - -\n"
            .to_string(),
    ));
    let mut inline = ROOT.to_string();
    for n in [1, 64, 2048, 2049, 4095, 4096, 4097, 5000] {
        inline += &format!("/i{n:04} {n} 100644 1 0 0 0 0.0 - {} -\n", rep("x", n));
    }
    v.push(("inline", inline));
    let mut bigdir = "/ 0 40755 3 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n".to_string();
    for i in 0..300 {
        bigdir += &format!("/d/f{i:03} 0 100644 1 0 0 0 0.0 - - -\n");
    }
    v.push(("bigdir", bigdir));
    let mut symlinks = ROOT.to_string();
    for n in [1, 100, 4000, 4095] {
        symlinks += &format!("/s{n:04} {n} 120777 1 0 0 0 0.0 {} - -\n", rep("t", n));
    }
    v.push(("symlinks", symlinks));
    let mut external = ROOT.to_string();
    for (i, size) in [1u64, 4096, 4097, 1048576, 1048577].into_iter().enumerate() {
        let h = rep(&format!("{:02x}", 0x10 + i), 32);
        external += &format!(
            "/ext{i} {size} 100644 1 0 0 0 0.0 {}/{} - {h}\n",
            &h[..2],
            &h[2..]
        );
    }
    external += &format!(
        "/nodigest 4097 100644 1 0 0 0 0.0 ab/{} - -\n/sparse 10000 100644 1 0 0 0 0.0 - - -\n",
        rep("ab", 31)
    );
    v.push(("external", external));
    v.push((
        "collide",
        format!("{ROOT}/7f 3 100644 1 0 0 0 0.0 - abc -\n/ab 0 20000 1 0 0 0 0.0 - - -\n"),
    ));
    // C test assets (§2.16).
    v.push((
        "bigfile",
        "/ 4096 40755 2 0 0 0 0.0 - - -\n/bigfile 9000000000000000 100777 1 0 0 0 0.0 - - -\n"
            .to_string(),
    ));
    v.push((
        "bigfile-xattr",
        "/ 4096 40755 2 0 0 0 0.0 - - -\n\
         /bigfile 9001899274941000 100777 1 0 0 0 0.0 - - - user.foo=\n"
            .to_string(),
    ));
    v.push((
        "no-newline",
        "/ 4096 40555 222 0 0 10 0.0 - - - trusted.foo1=bar-1 user.foo2=bar-2\n\
         /a 0 100644 1 0 0 0 0.0 - - -\n/b 0 100644 1 0 0 0 0.0 - - -"
            .to_string(),
    ));
    v.push((
        "honggfuzz-chardev-nonzero-size",
        "/ 4096 40755 2 0 0 0 0.0 - - -\n/chardev 1 20777 1 0 0 0 0.0 - - -\n".to_string(),
    ));
    v.push((
        "honggfuzz-bigfile-with-acl",
        "/ 4096 40755 2 0 0 0 0.0 - - -\n\
         /something-with-acls-and-overlay 8960932074941261 100777 1 0 0 0 0.0 - - - system.posix_acl_default=x user.foo=xxxxxx\n"
            .to_string(),
    ));
    v.push((
        "longlink",
        format!(
            "/ 4096 40555 2 0 0 0 1633950376.0 - - -\n\
             /big-but-not-max-link 5 120777 1 0 0 0 0.0 {} - -\n\
             /max-link 5 120777 1 0 0 0 0.0 {} - -\n",
            rep("a", 4070),
            rep("a", 4095)
        ),
    ));
    v
}

/// Every vector at V0 and V1.
fn vector_images() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, text) in vectors() {
        for version in [FormatVersion::V0, FormatVersion::V1] {
            out.push((
                format!("{name}/{version:?}"),
                image_of(&text, WriteOptions::exactly(version)),
            ));
        }
    }
    out
}

#[test]
fn vectors_dump_roundtrip() {
    for (name, image) in vector_images() {
        assert_dump_roundtrip(&name, &image);
        assert_tree_roundtrip(&name, &image);
        objects(&image).unwrap();
        ls_string(&image, &[]);
    }
}

// ---------------------------------------------------------------------------------------------
// Worked examples A/B/C of docs/formats.md §10.3a: C `composefs-info dump` output, exactly.

const EXAMPLE_A: &str = "/ 4096 40755 3 0 0 0 1700000003.1 - - -
/empty 0 100644 1 0 0 0 1700000000.500000000 - - -
/fifo 0 10600 1 0 0 0 1700000000.500000000 - - -
/link 6 120777 1 1000 100 0 1700000001.250000000 target - -
/one 1 104755 1 1000 1000 0 1700000000.500000000 - x -
/s64 64 100644 1 0 0 0 1700000000.500000000 - 0000000000000000000000000000000000000000000000000000000000000000 -
/s65 65 100644 1 0 0 0 1700000000.500000000 47/ddf8476049577910de2a85a85bc861e6c6994fd9cf5aaf45d5611b4c3799c1 - 47ddf8476049577910de2a85a85bc861e6c6994fd9cf5aaf45d5611b4c3799c1
/sub 40 40755 2 0 0 0 1700000002.0 - - -
/sub/f 6 100644 1 0 0 0 1700000000.500000000 - hello\\n -
";

const EXAMPLE_B: &str =
    "/ 4096 40755 2 0 0 0 1600000001.0 - - - trusted.overlay.opaque=x user.overlay.opaque=x
/blk 0 60640 1 0 0 1050668 1600000000.999999999 - - -
/chr 0 20640 1 0 0 259 1600000000.1 - - -
/nl\\nx 1 100640 1 0 0 0 1600000000.999999999 - b -
/odd\\x20name 1 100640 1 0 0 0 1600000000.999999999 - a -
/sock 0 140755 1 0 0 0 1600000000.999999999 - - -
/wh 0 20600 1 0 0 0 1600000000.999999999 - - -
";

const EXAMPLE_C: &str = "/ 4096 40755 3 0 0 0 1500000000.0 - - - user.root=r
/big 100 100644 1 70000 70000 0 1500000000.0 b0/fb44a8078cc2d7d91ede6d16dfe63943613e6286bd7c49efd0223940d51229 - b0fb44a8078cc2d7d91ede6d16dfe63943613e6286bd7c49efd0223940d51229 security.capability=\\x01\\x00\\x00\\x02\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00 trusted.foo=bar user.a=1
/d 27 40755 2 0 0 0 1500000000.0 - - - trusted.overlay.opaque=y user.a=1
/h1 7 100644 1 0 0 0 1500000000.0 - shared\\n - user.test=v1
/h2 7 100644 1 0 0 0 1500000000.0 - shared\\n - user.test=v1
";

#[test]
fn worked_examples_dump_exactly_like_c() {
    for (name, text, sha) in [
        (
            "A",
            EXAMPLE_A,
            "a1ed4495f29be078efdead8c7980151d42f24f93e4f2edd7b2cbdb2d97cbe97b",
        ),
        (
            "B",
            EXAMPLE_B,
            "b2d31aff5f5898b00ce4f10ff9e920ddec8ef71f188c1df4527911cc193d99b3",
        ),
        (
            "C",
            EXAMPLE_C,
            "8901b99bc5e62d09ff5714780da9718948853c74a8c0811eef2d986a1610030b",
        ),
    ] {
        let image = image_of(text, WriteOptions::default());
        assert_eq!(
            sha256_hex(&image),
            sha,
            "example {name}: the writer does not produce C's image, so this test cannot check dump"
        );
        assert_eq!(dump_string(&image, &[]), text, "example {name}");
    }
}

#[test]
fn hardlink_lines_carry_target_metadata() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "hardlinks")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let expected = "/ 4096 40755 4 0 0 0 0.0 - - -
/a 4096 40755 3 0 0 0 0.0 - - -
/a/deep 4096 40755 2 0 0 0 0.0 - - -
/a/deep/f 5 100644 3 0 0 0 0.0 - hello -
/b 4096 40755 2 0 0 0 0.0 - - -
/b/link 5 @100644 3 0 0 0 0.0 /a/deep/f hello -
/z 5 @100644 3 0 0 0 0.0 /a/deep/f hello -
";
    // Directory sizes depend on the packing; compare everything else.
    let got = dump_string(&image, &[]);
    let strip = |s: &str| -> Vec<String> {
        s.lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(' ').collect();
                if f[2].starts_with('4') {
                    f[1] = "D";
                }
                f.join(" ")
            })
            .collect()
    };
    assert_eq!(strip(&got), strip(expected));
}

#[test]
fn dump_filter_keeps_named_root_entries() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "hardlinks")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let got = dump_string(&image, &[b"b", b"z"]);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 4, "{got}");
    assert!(lines[0].starts_with("/ "));
    // /a is filtered out, so /b/link becomes the canonical occurrence.
    assert!(lines[2].starts_with("/b/link 5 100644 3 "), "{got}");
    assert!(lines[3].starts_with("/z 5 @100644 3 ") && lines[3].contains(" /b/link "));
}

// ---------------------------------------------------------------------------------------------
// API unit tests.

fn simple_image() -> Vec<u8> {
    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "simple").unwrap();
    image_of(&text, WriteOptions::exactly(FormatVersion::V1))
}

#[test]
fn open_reads_header_and_superblock() {
    let image = simple_image();
    let img = Image::open(&image).unwrap();
    assert_eq!(img.composefs_version(), 1);
    assert!(img.has_root_stubs());
    assert_eq!(img.root_nid(), Nid(36));
    assert_eq!(u64::from(img.blocks()) * 4096, image.len() as u64);
    assert!(!img.has_acl());
    assert_eq!(img.inos(), 1 + 7 + 256);
    let root = img.root().unwrap();
    assert!(root.is_dir());
    assert_eq!(root.ino(), 0);
    // The root and its stubs: `.`, `..`, the 7 entries and 256 stubs.
    assert_eq!(root.dir_entries().unwrap().count(), 2 + 7 + 256);
    let visible: Vec<_> = img
        .children(&root)
        .unwrap()
        .map(|e| e.unwrap().name.to_vec())
        .collect();
    assert_eq!(
        visible,
        [
            &b"blkdev"[..],
            b"chrdev",
            b"fifo",
            b"regular-external",
            b"regular-inline",
            b"socket",
            b"symlink"
        ]
    );
}

#[test]
fn open_rejects_bad_headers() {
    let image = simple_image();
    let patched = |off: usize, bytes: &[u8]| {
        let mut v = image.clone();
        v[off..off + bytes.len()].copy_from_slice(bytes);
        v
    };
    assert!(matches!(
        Image::open(&patched(0, &[0; 4])),
        Err(ReadError::BadMagic {
            what: "composefs header",
            ..
        })
    ));
    assert!(matches!(
        Image::open(&patched(4, &2u32.to_le_bytes())),
        Err(ReadError::UnsupportedHeaderVersion { found: 2 })
    ));
    assert!(matches!(
        Image::open(&patched(12, &3u32.to_le_bytes())),
        Err(ReadError::UnsupportedFormatVersion { found: 3 })
    ));
    assert!(matches!(
        Image::open(&patched(1024, &[0; 4])),
        Err(ReadError::BadMagic {
            what: "EROFS superblock",
            ..
        })
    ));
    assert!(matches!(
        Image::open(&patched(1036, &[13])),
        Err(ReadError::UnsupportedBlockSize { blkszbits: 13 })
    ));
    assert!(matches!(
        Image::open(&patched(1032, &8u32.to_le_bytes())),
        Err(ReadError::UnsupportedFeatures {
            compat: 8,
            incompat: 0
        })
    ));
    assert!(matches!(
        Image::open(&patched(1104, &1u32.to_le_bytes())),
        Err(ReadError::UnsupportedFeatures {
            compat: 0,
            incompat: 1
        })
    ));
    assert!(matches!(
        Image::open(&image[..image.len() - 4096]),
        Err(ReadError::BadSuperblock { .. })
    ));
    assert!(matches!(
        Image::open(&image[..100]),
        Err(ReadError::OutOfBounds { .. })
    ));
    // Root NID pointing at a non-directory (the first stub follows the root's tail).
    let root = Image::open(&image).unwrap().root().unwrap();
    let child = root.lookup(b"fifo").unwrap().unwrap().nid;
    assert!(matches!(
        Image::open(&patched(1038, &(child.0 as u16).to_le_bytes())),
        Err(ReadError::RootNotADirectory { .. })
    ));
    // Trailing bytes past `blocks` are ignored.
    let mut longer = image.clone();
    longer.extend_from_slice(&[0xff; 100]);
    assert_eq!(Image::open(&longer).unwrap().data().len(), image.len());
}

#[test]
fn inode_accessors() {
    let image = simple_image();
    let img = Image::open(&image).unwrap();
    let get = |name: &str| img.resolve(name.as_bytes()).unwrap().unwrap();

    let blk = get("/blkdev");
    assert_eq!(blk.file_type(), FileType::BlockDevice);
    assert_eq!(blk.mode(), 0o60000);
    assert_eq!(blk.rdev(), 123);
    assert_eq!(blk.nlink(), 1);
    assert!(!blk.is_extended());

    let ext = get("regular-external");
    assert_eq!(ext.layout(), DataLayout::ChunkBased);
    assert_eq!(ext.size(), 1234);
    let chunks = ext.chunks().unwrap();
    assert_eq!(chunks.count(), 1);
    assert_eq!(chunks.chunk_bits(), 12);
    assert!(chunks.is_all_holes());
    assert!(ext.data().is_err());
    let node = ext.node().unwrap();
    let digest = Digest::Sha256([0x5a; 32]);
    assert_eq!(node.overlay().digest(), Some(digest));
    let payload = format!("5a/{}", rep("5a", 31));
    assert_eq!(node.overlay().payload(), Some(payload.as_bytes()));
    match node.regular_data().unwrap().unwrap() {
        RegularData::External {
            digest: d,
            payload: p,
        } => {
            assert_eq!(d, Some(digest));
            assert_eq!(p, Some(payload.as_bytes()));
        }
        other => panic!("{other:?}"),
    }
    // The raw xattrs hold metacopy and redirect; the visible ones hide them.
    let raw: Vec<Vec<u8>> = ext
        .xattrs()
        .unwrap()
        .map(|x| x.unwrap().full_name())
        .collect();
    assert_eq!(
        raw,
        [
            &b"trusted.overlay.metacopy"[..],
            b"trusted.overlay.redirect"
        ]
    );
    assert_eq!(node.xattrs().unwrap().count(), 0);
    assert_eq!(
        ext.raw_xattr(b"trusted.overlay.redirect").unwrap(),
        Some(format!("/{payload}").as_bytes())
    );

    let inline = get("/regular-inline");
    assert_eq!(inline.layout(), DataLayout::FlatInline);
    let data = inline.data().unwrap();
    assert_eq!(data.contiguous(), Some(&b"hihi"[..]));
    let mut buf = [0u8; 3];
    assert_eq!(data.read_at(1, &mut buf), 3);
    assert_eq!(&buf, b"ihi");
    assert_eq!(data.read_at(4, &mut buf), 0);

    let link = get("/symlink");
    assert_eq!(&*link.symlink_target().unwrap(), b"/target");
    assert!(get("/fifo").symlink_target().is_err());
    assert!(get("/fifo").dir_entries().is_err());
    assert!(img.resolve(b"/nope").unwrap().is_none());
    assert!(img.resolve(b"/fifo/x").unwrap().is_none());
}

#[test]
fn inline_data_split_between_block_and_tail() {
    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "inline").unwrap();
    let image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    for n in [1usize, 64, 2048, 2049, 4095, 4096, 4097, 5000] {
        let inode = img
            .resolve(format!("/i{n:04}").as_bytes())
            .unwrap()
            .unwrap();
        let data = inode.data().unwrap();
        assert_eq!(data.len(), n as u64);
        assert_eq!(&*data.to_cow(), rep("x", n).as_bytes());
        let mut buf = vec![0u8; n + 10];
        assert_eq!(data.read_at(0, &mut buf), n);
        assert!(buf[..n].iter().all(|&b| b == b'x'));
        if n == 5000 {
            assert_eq!(data.head().len(), 4096);
            assert_eq!(data.tail().len(), 904);
            assert!(data.contiguous().is_none());
            assert_eq!(data.read_at(4090, &mut buf[..10]), 10);
        }
    }
}

#[test]
fn symlink_promoted_to_a_block() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "symlinks")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    for n in [1usize, 100, 4000, 4095] {
        let inode = img
            .resolve(format!("/s{n:04}").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(&*inode.symlink_target().unwrap(), rep("t", n).as_bytes());
    }
    let big = img.resolve(b"/s4095").unwrap().unwrap();
    assert_eq!(big.layout(), DataLayout::FlatPlain);
}

#[test]
fn lookup_in_multi_block_directory() {
    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "bigdir").unwrap();
    let image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    let dir = img.resolve(b"/d").unwrap().unwrap();
    let it = dir.dir_entries().unwrap();
    assert!(it.block_count() >= 2, "bigdir must span blocks");
    let names: Vec<Vec<u8>> = it.map(|e| e.unwrap().name.to_vec()).collect();
    assert_eq!(names.len(), 302);
    assert!(names.windows(2).all(|w| w[0] < w[1]), "entries sorted");
    for name in &names {
        let found = dir.lookup(name).unwrap().unwrap();
        assert_eq!(&found.name, name);
    }
    for missing in [&b"f300"[..], b"a", b"zzz", b"f0", b"f1500", b""] {
        assert!(dir.lookup(missing).unwrap().is_none());
    }
    assert_eq!(dir.lookup(b".").unwrap().unwrap().nid, dir.nid());
    let f = img.lookup_child(&dir, b"f123").unwrap().unwrap();
    assert_eq!(f.file_type, file_type::REG);
    assert!(img.lookup_child(&dir, b"..").unwrap().is_none());
}

#[test]
fn dir_iter_resumes_from_any_position() {
    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "bigdir").unwrap();
    let image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    let dir = img.resolve(b"/d").unwrap().unwrap();
    let all: Vec<Vec<u8>> = dir
        .dir_entries()
        .unwrap()
        .map(|e| e.unwrap().name.to_vec())
        .collect();
    // Record the position before every entry, then resume from each one.
    let mut it = dir.dir_entries().unwrap();
    let mut positions = Vec::new();
    loop {
        let pos = it.position();
        match it.next() {
            Some(e) => positions.push((pos, e.unwrap().name.to_vec())),
            None => break,
        }
    }
    assert_eq!(positions.len(), all.len());
    assert!(positions.iter().any(|((block, _), _)| *block > 0));
    for (i, ((block, index), name)) in positions.iter().enumerate() {
        let mut resumed = dir.dir_entries().unwrap();
        resumed.seek(*block, *index).unwrap();
        let rest: Vec<Vec<u8>> = resumed.map(|e| e.unwrap().name.to_vec()).collect();
        assert_eq!(rest.first(), Some(name));
        assert_eq!(rest, all[i..].to_vec());
    }
    // Past the end: nothing, not an error.
    let mut end = dir.dir_entries().unwrap();
    end.seek(u64::MAX, 0).unwrap();
    assert!(end.next().is_none());
    let mut end = dir.dir_entries().unwrap();
    end.seek(0, 10_000).unwrap();
    let rest: Vec<_> = end.map(|e| e.unwrap().name.to_vec()).collect();
    assert!(rest.len() < all.len());
    // The composefs view resumes the same way, without `.` and `..`.
    let mut children = img.children(&dir).unwrap();
    let (block, index) = positions[150].0;
    children.seek(block, index).unwrap();
    assert_eq!(
        children.next().unwrap().unwrap().name,
        &positions[150].1[..]
    );
}

#[test]
fn stubs_hidden_only_in_the_root_of_v0_v1() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "collide")
        .unwrap();
    let mut image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    assert_eq!(img.composefs_version(), 1);
    let root = img.root().unwrap();
    // Native stub: hidden by lookup_child, visible to raw lookup.
    assert!(root.lookup(b"00").unwrap().is_some());
    assert!(img.lookup_child(&root, b"00").unwrap().is_none());
    // User entries with stub names are shown: `7f` is a file, `ab` an escaped whiteout.
    let ab = img.lookup_child(&root, b"ab").unwrap().unwrap();
    let node = img.inode(ab.nid).unwrap().node().unwrap();
    assert!(node.is_escaped_whiteout());
    assert_eq!(node.file_type(), FileType::CharDevice);
    assert_eq!(node.mode(), 0o20000);
    assert_eq!(node.rdev(), 0);
    assert!(matches!(node.kind().unwrap(), NodeKind::CharDevice(0)));
    assert_eq!(node.xattrs().unwrap().count(), 0);
    let tree = read_tree(&image).unwrap();
    let names: Vec<&[u8]> = tree
        .root()
        .as_dir()
        .unwrap()
        .entries
        .keys()
        .map(|k| &**k)
        .collect();
    assert_eq!(names, [&b"7f"[..], b"ab"]);
    assert_eq!(
        tree.inode(tree.lookup_path(b"/ab").unwrap()).kind,
        InodeKind::CharDevice(0)
    );
    // In a V2 image the same native chardevs are user whiteouts and stay visible.
    image[12..16].copy_from_slice(&2u32.to_le_bytes());
    let tree = read_tree(&image).unwrap();
    assert_eq!(tree.root().as_dir().unwrap().entries.len(), 256);
}

#[test]
fn visible_xattrs_follow_the_composefs_rules() {
    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "xattrs").unwrap();
    let image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    assert!(img.has_acl());
    let b = img.resolve(b"/b").unwrap().unwrap();
    let raw: BTreeSet<Vec<u8>> = b
        .xattrs()
        .unwrap()
        .map(|x| x.unwrap().full_name())
        .collect();
    assert!(raw.contains(&b"trusted.overlay.overlay.foo"[..]));
    let node = b.node().unwrap();
    let visible: BTreeSet<Vec<u8>> = node
        .xattrs()
        .unwrap()
        .map(|x| x.unwrap().full_name())
        .collect();
    let expected: BTreeSet<Vec<u8>> = [&b"security.selinux"[..], b"trusted.overlay.foo", b"user.x"]
        .into_iter()
        .map(Vec::from)
        .collect();
    assert_eq!(visible, expected);
    assert_eq!(
        node.xattr(b"trusted.overlay.foo").unwrap(),
        Some(&b"bar"[..])
    );
    assert_eq!(node.xattr(b"trusted.overlay.overlay.foo").unwrap(), None);
    assert_eq!(node.xattr(b"user.x").unwrap(), Some(&b"2"[..]));
    // Shared xattrs resolve through xattr_blkaddr.
    let a = img.resolve(b"/a").unwrap().unwrap();
    let shared: Vec<_> = a
        .xattrs()
        .unwrap()
        .map(|x| x.unwrap())
        .filter(|x| x.is_shared())
        .collect();
    assert!(!shared.is_empty());
    assert!(shared
        .iter()
        .any(|x| x.name_eq(b"user.x") && x.value() == b"1"));
    // The root's opaque=y is hidden.
    let root = img.root().unwrap().node().unwrap();
    assert_eq!(root.xattr(b"trusted.overlay.opaque").unwrap(), None);
    assert!(root
        .inode()
        .raw_xattr(b"trusted.overlay.opaque")
        .unwrap()
        .is_some());
    // POSIX ACL names (index 2, empty suffix).
    let d = img.resolve(b"/d").unwrap().unwrap().node().unwrap();
    assert_eq!(
        d.xattr(b"system.posix_acl_access").unwrap(),
        Some(&b"\x02\x00\x00\x00"[..])
    );
    assert_eq!(d.xattr(b"user.overlay.redirect").unwrap(), Some(&b"/x"[..]));
}

#[test]
fn whiteout_markers_and_opaque_in_dump_and_tree() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "whiteouts")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let text = dump_string(&image, &[]);
    let etc = text.lines().find(|l| l.starts_with("/etc ")).unwrap();
    assert!(
        etc.ends_with(" - - - trusted.overlay.opaque=x user.overlay.opaque=x"),
        "{etc}"
    );
    let gone = text.lines().find(|l| l.starts_with("/etc/gone ")).unwrap();
    assert_eq!(gone, "/etc/gone 0 20000 1 0 0 0 0.0 - - -");
    let tree = read_tree(&image).unwrap();
    let etc = tree.inode(tree.lookup_path(b"/etc").unwrap());
    assert!(etc.xattrs.is_empty(), "markers are hidden in the tree");
    let gone = tree.inode(tree.lookup_path(b"/etc/gone").unwrap());
    assert_eq!(gone.kind, InodeKind::CharDevice(0));
}

#[test]
fn ls_objects_and_digests() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "external")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let listing = ls_string(&image, &[]);
    let first = listing.lines().next().unwrap();
    assert_eq!(first, format!("/ext0\t@ 10/{}", rep("10", 31)));
    assert!(listing.contains(&format!("/nodigest\t@ ab/{}\n", rep("ab", 31))));
    assert!(listing.contains("/sparse\n"));
    let objs = objects(&image).unwrap();
    assert_eq!(objs.len(), 6);
    assert!(objs.contains(format!("ab/{}", rep("ab", 31)).as_bytes()));
    let digests = object_digests(&image).unwrap();
    let expected: BTreeSet<Digest> = (0..5u8)
        .map(|i| Digest::Sha256([0x10 + i; 32]))
        .chain([Digest::Sha256([0xab; 32])])
        .collect();
    assert_eq!(digests, expected);

    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "simple").unwrap();
    let image = image_of(&text, WriteOptions::default());
    assert_eq!(
        ls_string(&image, &[b"symlink", b"fifo"]),
        "/fifo\n/symlink\t-> /target\n"
    );
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "hardlinks")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    assert_eq!(
        ls_string(&image, &[]),
        "/a/\t\n/a/deep/\t\n/a/deep/f\n/b/\t\n/b/link\n/z\n"
    );
    let (_, text) = EXAMPLE_B_NAMES;
    let image = image_of(text, WriteOptions::default());
    assert_eq!(ls_string(&image, &[]), "/nl\\nx\n/odd name\n");
}

const EXAMPLE_B_NAMES: (&str, &str) = (
    "names",
    "/ 0 40755 2 0 0 0 0.0 - - -\n/nl\\nx 1 100640 1 0 0 0 0.0 - b -\n/odd\\x20name 1 100640 1 0 0 0 0.0 - a -\n",
);

#[test]
fn read_tree_rebuilds_hardlinks_and_kinds() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "hardlinks")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let tree = read_tree(&image).unwrap();
    let f = tree.lookup_path(b"/a/deep/f").unwrap();
    assert_eq!(
        tree.lookup(tree.lookup_path(b"/b").unwrap(), b"link")
            .unwrap()
            .inode,
        f
    );
    assert!(
        tree.lookup(tree.lookup_path(b"/b").unwrap(), b"link")
            .unwrap()
            .hardlink
    );
    assert!(tree.lookup(tree::InodeId::ROOT, b"z").unwrap().hardlink);
    assert!(
        !tree
            .lookup(tree.lookup_path(b"/a/deep").unwrap(), b"f")
            .unwrap()
            .hardlink
    );
    assert_eq!(tree.inode(f).meta.nlink, 3);
    assert_eq!(tree.inodes.len(), 5);

    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "external")
        .unwrap();
    let tree = read_tree(&image_of(&text, WriteOptions::default())).unwrap();
    let kind = |p: &[u8]| tree.inode(tree.lookup_path(p).unwrap()).kind.clone();
    assert_eq!(
        kind(b"/ext1"),
        InodeKind::Regular(RegularFile::external(4096, Digest::Sha256([0x11; 32])))
    );
    assert_eq!(
        kind(b"/sparse"),
        InodeKind::Regular(RegularFile {
            size: 10000,
            data: FileData::External {
                digest: None,
                payload: None
            }
        })
    );
    match kind(b"/nodigest") {
        InodeKind::Regular(RegularFile {
            size: 4097,
            data:
                FileData::External {
                    digest: None,
                    payload: Some(p),
                },
        }) => assert_eq!(&*p, format!("ab/{}", rep("ab", 31)).as_bytes()),
        other => panic!("{other:?}"),
    }

    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "mtimes").unwrap();
    let tree = read_tree(&image_of(&text, WriteOptions::default())).unwrap();
    let meta = |p: &[u8]| tree.inode(tree.lookup_path(p).unwrap()).meta.clone();
    assert_eq!(meta(b"/early").mtime, tree::Mtime { sec: 50, nsec: 7 });
    assert_eq!(meta(b"/late").mtime, tree::Mtime { sec: 100, nsec: 5 });
    assert_eq!(meta(b"/biguid").uid, 70000);
}

// ---------------------------------------------------------------------------------------------
// Hand-made damage: cycles, bad dirents, bad xattrs.

/// Position of the first dirent named `name` in the image.
fn find_dirent(image: &[u8], dir: &[u8], name: &[u8]) -> usize {
    let img = Image::open(image).unwrap();
    let dir = img.resolve(dir).unwrap().unwrap();
    let data = dir.data().unwrap();
    let (bytes, base) = if data.tail().is_empty() {
        (data.head(), data.head_offset())
    } else {
        (data.tail(), data.tail_offset())
    };
    let count = u16::from_le_bytes([bytes[8], bytes[9]]) as usize / 12;
    for i in 0..count {
        let off = u16::from_le_bytes([bytes[i * 12 + 8], bytes[i * 12 + 9]]) as usize;
        if bytes[off..].starts_with(name) {
            return base as usize + i * 12;
        }
    }
    panic!("no dirent {name:?}");
}

#[test]
fn directory_cycles_are_errors() {
    let (_, text) = vectors()
        .into_iter()
        .find(|(n, _)| *n == "hardlinks")
        .unwrap();
    let image = image_of(&text, WriteOptions::default());
    let root_nid = Image::open(&image).unwrap().root_nid();
    // Point /a/deep back at the root.
    let pos = find_dirent(&image, b"/a", b"deep");
    let mut bad = image.clone();
    bad[pos..pos + 8].copy_from_slice(&root_nid.0.to_le_bytes());
    assert!(matches!(read_tree(&bad), Err(ReadError::InodeLoop { nid }) if nid == root_nid));
    assert!(matches!(
        dump(&bad, &mut io::sink(), &[]),
        Err(DumpError::Read(ReadError::InodeLoop { .. }))
    ));
    // Point /b at /a: a directory hardlink.
    let a = Image::open(&image)
        .unwrap()
        .resolve(b"/a")
        .unwrap()
        .unwrap()
        .nid();
    let pos = find_dirent(&image, b"/", b"b");
    let mut bad = image.clone();
    bad[pos..pos + 8].copy_from_slice(&a.0.to_le_bytes());
    assert!(matches!(read_tree(&bad), Err(ReadError::InodeLoop { nid }) if nid == a));
    assert!(matches!(objects(&bad), Err(ReadError::InodeLoop { .. })));
}

#[test]
fn bad_dirents_and_xattrs_are_errors() {
    let (_, text) = vectors().into_iter().find(|(n, _)| *n == "simple").unwrap();
    let image = image_of(&text, WriteOptions::default());
    let img = Image::open(&image).unwrap();
    let root = img.root().unwrap();
    let tail = root.data().unwrap();
    let block = if tail.tail().is_empty() {
        tail.head_offset()
    } else {
        tail.tail_offset()
    } as usize;

    // First nameoff not a multiple of 12.
    let mut bad = image.clone();
    let first = u16::from_le_bytes([bad[block + 8], bad[block + 9]]);
    bad[block + 8..block + 10].copy_from_slice(&(first + 1).to_le_bytes());
    assert!(matches!(read_tree(&bad), Err(ReadError::BadDirent { .. })));

    // Second entry's name offset before the first: decreasing offsets.
    let mut bad = image.clone();
    bad[block + 20..block + 22].copy_from_slice(&(first - 1).to_le_bytes());
    assert!(matches!(read_tree(&bad), Err(ReadError::BadDirent { .. })));

    // A '/' inside a name.
    let name_at = block + first as usize + 2;
    let mut bad = image.clone();
    bad[name_at] = b'/';
    assert!(matches!(read_tree(&bad), Err(ReadError::BadDirent { .. })));

    // Unknown xattr name index in the external file's first (local) entry.
    let ext = img.resolve(b"/regular-external").unwrap().unwrap();
    let x = ext.xattrs().unwrap().next().unwrap().unwrap();
    let mut bad = image.clone();
    bad[x.offset() as usize + 1] = 42;
    assert!(matches!(read_tree(&bad), Err(ReadError::BadXattr { .. })));
    // A value that runs past the xattr body.
    let mut bad = image.clone();
    bad[x.offset() as usize + 2..x.offset() as usize + 4].copy_from_slice(&60000u16.to_le_bytes());
    assert!(matches!(read_tree(&bad), Err(ReadError::BadXattr { .. })));
    // A shared xattr count larger than the body.
    let mut bad = image.clone();
    bad[ext.offset() as usize + ext.header_size() as usize + 4] = 200;
    assert!(matches!(read_tree(&bad), Err(ReadError::BadXattr { .. })));

    // A symlink whose inline tail would cross into the next block.
    let link = img.resolve(b"/symlink").unwrap().unwrap();
    let mut bad = image.clone();
    let size_off = link.offset() as usize + 8;
    bad[size_off..size_off + 4].copy_from_slice(&4000u32.to_le_bytes());
    assert!(matches!(
        read_tree(&bad),
        Err(ReadError::BadInode { .. } | ReadError::OutOfBounds { .. })
    ));

    // An invalid file type.
    let mut bad = image.clone();
    let mode_off = link.offset() as usize + 4;
    bad[mode_off..mode_off + 2].copy_from_slice(&0o170777u16.to_le_bytes());
    assert!(matches!(read_tree(&bad), Err(ReadError::BadInode { .. })));
}

#[test]
fn unsorted_and_duplicate_names_are_errors() {
    let image = simple_image();
    let pos = |name: &[u8]| image.windows(name.len()).position(|w| w == name).unwrap();
    let (blk, chr) = (pos(b"blkdev"), pos(b"chrdev"));
    let mut bad = image.clone();
    bad[blk..blk + 6].copy_from_slice(b"chrdev");
    bad[chr..chr + 6].copy_from_slice(b"blkdev");
    assert!(matches!(
        read_tree(&bad),
        Err(ReadError::BadDirent {
            reason: "directory entries not sorted by name",
            ..
        })
    ));
    let mut bad = image.clone();
    bad[chr..chr + 6].copy_from_slice(b"blkdev");
    assert!(matches!(
        read_tree(&bad),
        Err(ReadError::DuplicateName { .. })
    ));
    assert!(matches!(
        dump(&bad, &mut io::sink(), &[]),
        Err(DumpError::Read(ReadError::DuplicateName { .. }))
    ));
}

#[test]
fn depth_is_capped() {
    let chain = |depth: usize| {
        let mut tree = Tree::new(Metadata::default());
        let mut cur = tree::InodeId::ROOT;
        for _ in 0..depth {
            let dir = tree::Inode::new(
                Metadata::default(),
                InodeKind::Directory(Default::default()),
            );
            cur = tree.add(cur, b"d", dir).unwrap();
        }
        // The writer recurses per level; give it room (the reader itself is iterative).
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn(move || write_image(&tree, &WriteOptions::default()).unwrap())
            .unwrap()
            .join()
            .unwrap()
    };
    let ok = chain(MAX_DEPTH - 1);
    let tree = read_tree(&ok).unwrap();
    assert_eq!(tree.inodes.len(), MAX_DEPTH);
    let too_deep = chain(MAX_DEPTH);
    assert!(matches!(
        read_tree(&too_deep),
        Err(ReadError::TooDeep { depth, .. }) if depth == MAX_DEPTH
    ));
    assert!(objects(&too_deep).is_err());
}

// ---------------------------------------------------------------------------------------------
// mkfs.erofs-made images: an independent EROFS writer, with a composefs header patched in.

#[test]
fn mkfs_erofs_images() {
    use std::os::unix::fs::symlink;
    use std::process::Command;

    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        eprintln!(
            "SKIPPED mkfs_erofs_images: mkfs.erofs is not installed (apt-get install erofs-utils)"
        );
        return;
    }
    let base = std::env::temp_dir().join(format!("cfs-reader-mkfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let src = base.join("src");
    std::fs::create_dir_all(src.join("d/e/f")).unwrap();
    std::fs::create_dir_all(src.join("many")).unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, len) in [
        ("empty", 0usize),
        ("small", 10),
        ("tail", 5000),
        ("big", 9000),
        ("d/e/f/g", 300),
    ] {
        let content: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(src.join(name), &content).unwrap();
        expected.push((format!("/{name}"), content));
    }
    for i in 0..400 {
        std::fs::write(
            src.join(format!("many/file-with-a-longish-name-{i:04}")),
            b"",
        )
        .unwrap();
    }
    symlink("small", src.join("link")).unwrap();
    symlink("x".repeat(3000), src.join("longlink")).unwrap();
    std::fs::hard_link(src.join("small"), src.join("d/hard")).unwrap();
    let image_path = base.join("img");
    let out = Command::new("mkfs.erofs")
        .arg("-T0")
        .arg("--all-root")
        .arg(&image_path)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut image = std::fs::read(&image_path).unwrap();
    let _ = std::fs::remove_dir_all(&base);
    assert!(image[..32].iter().all(|&b| b == 0));
    image[0..4].copy_from_slice(&0xd078629au32.to_le_bytes());
    image[4..8].copy_from_slice(&1u32.to_le_bytes());
    image[12..16].copy_from_slice(&2u32.to_le_bytes()); // no stubs to hide

    let tree = read_tree(&image).unwrap();
    for (path, content) in &expected {
        let inode = tree.inode(tree.lookup_path(path.as_bytes()).unwrap());
        assert_eq!(
            inode.kind,
            InodeKind::Regular(RegularFile::inline(content.clone())),
            "{path}"
        );
    }
    let many = tree
        .inode(tree.lookup_path(b"/many").unwrap())
        .as_dir()
        .unwrap();
    assert_eq!(many.entries.len(), 400);
    let link = tree.inode(tree.lookup_path(b"/link").unwrap());
    assert_eq!(link.kind, InodeKind::Symlink(b"small"[..].into()));
    let long = tree.inode(tree.lookup_path(b"/longlink").unwrap());
    assert_eq!(
        long.kind,
        InodeKind::Symlink("x".repeat(3000).into_bytes().into())
    );
    let hard = tree
        .lookup(tree.lookup_path(b"/d").unwrap(), b"hard")
        .unwrap();
    assert_eq!(Some(hard.inode), tree.lookup_path(b"/small"));
    assert_eq!(tree.inode(hard.inode).meta.nlink, 2);

    let img = Image::open(&image).unwrap();
    let many = img.resolve(b"/many").unwrap().unwrap();
    assert!(many.dir_entries().unwrap().block_count() > 1);
    for i in (0..400).step_by(7) {
        let name = format!("file-with-a-longish-name-{i:04}");
        assert!(many.lookup(name.as_bytes()).unwrap().is_some(), "{name}");
    }
    assert!(many
        .lookup(b"file-with-a-longish-name-0400")
        .unwrap()
        .is_none());
    dump(&image, &mut io::sink(), &[]).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Random trees: dump and read_tree round trips.

/// A generated tree description.
#[derive(Debug, Clone)]
enum GenKind {
    Dir,
    Inline(Vec<u8>),
    External(u64, [u8; 32], bool, bool),
    Sparse(u64),
    Symlink(Vec<u8>),
    Chr(u32),
    Blk(u32),
    Fifo,
    Sock,
    Link(usize),
}

#[derive(Debug, Clone)]
struct GenEntry {
    parent: usize,
    name: Vec<u8>,
    kind: GenKind,
    perms: u32,
    uid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(usize, Vec<u8>)>,
}

const XATTR_NAMES: [&str; 7] = [
    "user.a",
    "user.b",
    "security.selinux",
    "trusted.foo",
    "trusted.overlay.bar",
    "system.posix_acl_access",
    "lustre.x",
];

fn gen_kind() -> impl Strategy<Value = GenKind> {
    prop_oneof![
        3 => Just(GenKind::Dir),
        3 => prop::collection::vec(any::<u8>(), 0..80).prop_map(GenKind::Inline),
        1 => (4000usize..5001).prop_map(|n| GenKind::Inline(vec![b'q'; n])),
        2 => (1u64..1 << 40, any::<[u8; 32]>(), any::<bool>(), any::<bool>())
            .prop_map(|(s, d, hd, hp)| GenKind::External(s, d, hd, hp)),
        1 => (1u64..1 << 30).prop_map(GenKind::Sparse),
        2 => prop::collection::vec(1u8..=255, 1..120).prop_map(GenKind::Symlink),
        1 => (0u32..3).prop_map(GenKind::Chr),
        1 => any::<u32>().prop_map(GenKind::Blk),
        1 => Just(GenKind::Fifo),
        1 => Just(GenKind::Sock),
        2 => any::<usize>().prop_map(GenKind::Link),
    ]
}

fn gen_entry() -> impl Strategy<Value = GenEntry> {
    (
        any::<usize>(),
        prop_oneof![
            4 => "[a-z]{1,8}".prop_map(String::into_bytes),
            1 => "[0-9a-f]{2}".prop_map(String::into_bytes),
            1 => prop::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..20),
        ],
        gen_kind(),
        0u32..0o10000,
        prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
        (prop_oneof![Just(0i64), Just(5), 0i64..1 << 40], prop_oneof![Just(0u32), 0u32..1_000_000_000]),
        prop::collection::vec((0..XATTR_NAMES.len(), prop::collection::vec(any::<u8>(), 0..12)), 0..4),
    )
        .prop_map(|(parent, name, kind, perms, uid, mtime, xattrs)| GenEntry {
            parent,
            name,
            kind,
            perms,
            uid,
            mtime,
            xattrs,
        })
}

/// Build a tree from generated entries; the first occurrence of each hardlinked inode in
/// depth-first sorted order is made canonical (what both C and our reader use).
fn build_tree(entries: &[GenEntry]) -> Tree {
    let mut tree = Tree::new(Metadata {
        permissions: 0o755,
        nlink: 2,
        ..Metadata::default()
    });
    let mut dirs = vec![tree::InodeId::ROOT];
    let mut leaves = Vec::new();
    for e in entries {
        if Tree::check_name(&e.name).is_err() {
            continue;
        }
        let parent = dirs[e.parent % dirs.len()];
        if let GenKind::Link(i) = e.kind {
            if !leaves.is_empty() {
                let _ = tree.link(parent, &e.name, leaves[i % leaves.len()]);
            }
            continue;
        }
        let kind = match &e.kind {
            GenKind::Dir => InodeKind::Directory(Default::default()),
            GenKind::Inline(c) => InodeKind::Regular(RegularFile::inline(c.clone())),
            GenKind::External(size, d, has_digest, has_payload) => {
                let digest = Digest::Sha256(*d);
                InodeKind::Regular(RegularFile {
                    size: *size,
                    data: FileData::External {
                        digest: has_digest.then_some(digest),
                        payload: (*has_payload || !*has_digest)
                            .then(|| digest.object_path().into_bytes().into()),
                    },
                })
            }
            GenKind::Sparse(size) => InodeKind::Regular(RegularFile {
                size: *size,
                data: FileData::External {
                    digest: None,
                    payload: None,
                },
            }),
            GenKind::Symlink(t) => InodeKind::Symlink(t.clone().into()),
            GenKind::Chr(r) => InodeKind::CharDevice(u64::from(*r)),
            GenKind::Blk(r) => InodeKind::BlockDevice(u64::from(*r)),
            GenKind::Fifo => InodeKind::Fifo,
            GenKind::Sock => InodeKind::Socket,
            GenKind::Link(_) => unreachable!(),
        };
        let is_dir = kind.is_dir();
        let mut inode = tree::Inode::new(
            Metadata {
                permissions: e.perms,
                uid: e.uid,
                gid: e.uid / 3,
                mtime: tree::Mtime {
                    sec: e.mtime.0,
                    nsec: e.mtime.1,
                },
                nlink: 1,
            },
            kind,
        );
        for (i, v) in &e.xattrs {
            inode
                .xattrs
                .insert(XATTR_NAMES[*i].as_bytes().into(), v.clone().into());
        }
        if let Ok(id) = tree.add(parent, &e.name, inode) {
            if is_dir {
                dirs.push(id);
            } else {
                leaves.push(id);
            }
        }
    }
    tree.recompute_leaf_nlinks();
    // Canonical occurrence = first in depth-first sorted order.
    let mut order = Vec::new();
    collect_dfs(&tree, tree::InodeId::ROOT, &mut order);
    let mut seen = BTreeSet::new();
    for (dir, name) in order {
        let inode = match &tree.inodes[dir.index()].kind {
            InodeKind::Directory(d) => d.entries[&name].inode,
            _ => unreachable!(),
        };
        let first = seen.insert(inode);
        if let InodeKind::Directory(d) = &mut tree.inodes[dir.index()].kind {
            d.entries.get_mut(&name).unwrap().hardlink = !first;
        }
    }
    tree
}

fn collect_dfs(tree: &Tree, dir: tree::InodeId, out: &mut Vec<(tree::InodeId, Box<[u8]>)>) {
    let Some(d) = tree.inode(dir).as_dir() else {
        return;
    };
    for (name, e) in &d.entries {
        out.push((dir, name.clone()));
        if tree.inode(e.inode).kind.is_dir() {
            collect_dfs(tree, e.inode, out);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_trees_roundtrip(entries in prop::collection::vec(gen_entry(), 0..40), v1 in any::<bool>()) {
        let tree = build_tree(&entries);
        let version = if v1 { FormatVersion::V1 } else { FormatVersion::V0 };
        let Ok(image) = write_image(&tree, &WriteOptions::exactly(version)) else {
            return Ok(());
        };
        assert_dump_roundtrip("random", &image);
        assert_tree_roundtrip("random", &image);
        let rebuilt = read_tree(&image).unwrap();
        prop_assert_eq!(rebuilt.inodes.len(), tree.inodes.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness: damaged images never panic.

fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let mut images: Vec<Vec<u8>> = vector_images()
            .into_iter()
            .map(|(_, image)| image)
            .collect();
        for text in [EXAMPLE_A, EXAMPLE_B, EXAMPLE_C] {
            images.push(image_of(text, WriteOptions::default()));
        }
        images
    })
}

/// Everything a consumer may do with an image; must return, never panic.
fn exercise(data: &[u8]) {
    let _ = read_tree(data);
    let _ = dump(data, &mut io::sink(), &[]);
    let _ = ls(data, &mut io::sink(), &[b"a"]);
    let _ = objects(data);
    let _ = object_digests(data);
    let Ok(img) = Image::open(data) else {
        return;
    };
    let Ok(root) = img.root() else {
        return;
    };
    let _ = root.lookup(b"a");
    let _ = root.lookup(b"zz");
    if let Ok(children) = img.children(&root) {
        for entry in children.take(300).flatten() {
            let Ok(inode) = img.inode(entry.nid) else {
                continue;
            };
            let _ = inode.chunks().map(|c| c.is_all_holes());
            let _ = inode.data().map(|d| d.to_cow().len());
            if let Ok(node) = inode.node() {
                let _ = node.kind();
                let _ = node.xattr(b"user.a");
                let _ = node.regular_data();
            }
            if inode.is_dir() {
                let _ = inode.lookup(b"f123");
                if let Ok(it) = inode.dir_entries() {
                    for e in it.take(1000).flatten() {
                        let _ = inode.lookup(e.name);
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Byte(prop::sample::Index, u8),
    Word(prop::sample::Index, u32),
    MetaByte(u16, u8),
    MetaWord(u16, u32),
    Truncate(prop::sample::Index),
    /// Cut to a whole number of blocks and fix the superblock's block count to match.
    Shrink(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        1 => (any::<prop::sample::Index>(), any::<u32>()).prop_map(|(i, w)| Mutation::Word(i, w)),
        // Most structure lives in the first blocks: header, superblock, inodes, xattrs.
        4 => (0u16..12288, any::<u8>()).prop_map(|(o, b)| Mutation::MetaByte(o, b)),
        3 => (0u16..12288, prop_oneof![any::<u32>(), 0u32..300, Just(u32::MAX), Just(36)])
            .prop_map(|(o, w)| Mutation::MetaWord(o, w)),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Shrink),
    ]
}

fn apply(image: &mut Vec<u8>, m: &Mutation) {
    if image.is_empty() {
        return;
    }
    let len = image.len();
    let (off, bytes): (usize, Vec<u8>) = match m {
        Mutation::Flip(i, bit) => {
            let off = i.index(len);
            (off, vec![image[off] ^ (1 << bit)])
        }
        Mutation::Byte(i, b) => (i.index(len), vec![*b]),
        Mutation::Word(i, w) => (i.index(len), w.to_le_bytes().to_vec()),
        Mutation::MetaByte(o, b) => (usize::from(*o), vec![*b]),
        Mutation::MetaWord(o, w) => (usize::from(*o), w.to_le_bytes().to_vec()),
        Mutation::Truncate(i) => {
            image.truncate(i.index(len));
            return;
        }
        Mutation::Shrink(i) => {
            let blocks = i.index(len / 4096 + 1);
            image.truncate(blocks * 4096);
            (1060, (blocks as u32).to_le_bytes().to_vec())
        }
    };
    for (i, b) in bytes.into_iter().enumerate() {
        if let Some(slot) = image.get_mut(off + i) {
            *slot = b;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn damaged_images_never_panic(
        which in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let corpus = corpus();
        let mut image = corpus[which.index(corpus.len())].clone();
        for m in &mutations {
            apply(&mut image, m);
        }
        exercise(&image);
    }
}

#[test]
fn arbitrary_small_inputs_never_panic() {
    exercise(&[]);
    exercise(&[0; 5000]);
    let mut header_only = vec![0u8; 8192];
    header_only[0..4].copy_from_slice(&0xd078629au32.to_le_bytes());
    header_only[4..8].copy_from_slice(&1u32.to_le_bytes());
    header_only[1024..1028].copy_from_slice(&0xE0F5E1E2u32.to_le_bytes());
    header_only[1036] = 12;
    header_only[1060..1064].copy_from_slice(&2u32.to_le_bytes());
    exercise(&header_only);
    assert!(Image::open(&header_only).is_err());
}

/// Write the conformance images as a seed corpus for the `read_image` fuzz target into the
/// directory named by `CFS_FUZZ_CORPUS`.
#[test]
#[ignore = "writes files; run by hand to seed the fuzz corpus"]
fn write_fuzz_corpus() {
    let Some(dir) = std::env::var_os("CFS_FUZZ_CORPUS") else {
        eprintln!("SKIPPED write_fuzz_corpus: set CFS_FUZZ_CORPUS to a directory");
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    for (i, image) in corpus().iter().enumerate() {
        std::fs::write(
            std::path::Path::new(&dir).join(format!("seed-{i:02}")),
            image,
        )
        .unwrap();
    }
}
