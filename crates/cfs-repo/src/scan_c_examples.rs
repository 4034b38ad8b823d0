//! The worked examples A, B and C of docs/formats.md §10.3a, built with the exact shell recipe,
//! scanned with `mkcomposefs` defaults, and checked against the dumps and image digests that
//! C `mkcomposefs` v1.0.8 produced for them.

use std::path::Path;
use std::process::Command;

use cfs_format::erofs::writer::{write_image, WriteOptions};
use cfs_format::erofs::FormatVersion;
use cfs_format::fsverity::to_hex;
use cfs_format::tree::{InodeId, Tree};
use sha2::{Digest as _, Sha256};

use crate::scan::{scan_directory, ScanOptions};
use crate::store::fill_digest_store;
use crate::testutil::{at, listing};

const RECIPE_A: &str = r#"
mkdir A && cd A && printf '' > empty; printf 'x' > one; printf '%064d' 0 > s64; printf '%065d' 0 > s65
ln -s target link; mkfifo fifo; mkdir sub; printf 'hello\n' > sub/f
chown -R 0:0 . && chown 1000:1000 one && chown -h 1000:100 link
chmod 644 empty s64 s65 sub/f && chmod 4755 one && chmod 600 fifo && chmod 755 sub .
touch -d @1700000000.5 empty one s64 s65 fifo sub/f; touch -h -d @1700000001.25 link
touch -d @1700000002 sub; touch -d @1700000003.000000001 .; cd ..
"#;

const RECIPE_B: &str = r#"
mkdir B && cd B && mknod chr c 1 3 && mknod blk b 8 300 && mknod wh c 0 0
python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("sock")'
printf 'a' > 'odd name'; printf 'b' > "$(printf 'nl\nx')"
chown -R 0:0 . && chmod 640 chr blk 'odd name' "$(printf 'nl\nx')" && chmod 600 wh && chmod 755 sock .
touch -d @1600000000.000000001 chr; touch -d @1600000000.999999999 blk wh sock 'odd name' "$(printf 'nl\nx')"
touch -d @1600000001 .; cd ..
"#;

const RECIPE_C: &str = r#"
mkdir C && cd C && printf 'shared\n' > h1 && ln h1 h2; head -c 100 /dev/zero > big; mkdir d
chown -R 0:0 . && chown 70000:70000 big && chmod 644 h1 big && chmod 755 d .
setfattr -n user.test -v v1 h1; setfattr -n user.a -v 1 big; setfattr -n user.a -v 1 d
setfattr -n trusted.overlay.opaque -v y d; setfattr -n trusted.foo -v bar big
setfattr -n security.capability -v 0x0100000200040000000000000000000000000000 big
setfattr -n user.root -v r .; touch -d @1500000000 h1 big d .; cd ..
"#;

/// Run `recipe` with `sh -e`-less `sh -c` (as the document does) in `dir`; `false` (with a loud
/// note) when the environment cannot run it (not root, or a tool missing).
fn build(dir: &Path, recipe: &str, name: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("!!! SKIPPING example {name}: needs root (mknod, chown, trusted.* xattrs)");
        return false;
    }
    for tool in ["setfattr", "python3", "mknod", "mkfifo"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            eprintln!("!!! SKIPPING example {name}: {tool} is not installed");
            return false;
        }
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(recipe)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "recipe {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

fn image_sha256(tree: &Tree, min: FormatVersion, max: FormatVersion) -> String {
    let opts = WriteOptions {
        min_version: min,
        max_version: max,
    };
    let image = write_image(tree, &opts).expect("write image");
    to_hex(&Sha256::digest(&image))
}

fn default_image(tree: &Tree) -> String {
    let d = WriteOptions::default();
    image_sha256(tree, d.min_version, d.max_version)
}

fn scan(path: &Path, f: impl FnOnce(&mut ScanOptions)) -> Tree {
    let mut opts = ScanOptions::mkcomposefs();
    f(&mut opts);
    scan_directory(path, &opts).expect("scan")
}

fn assert_listing(tree: &Tree, want: &[&str]) {
    let got = listing(tree);
    assert_eq!(got, want, "got:\n{}", got.join("\n"));
}

#[test]
fn example_a_scans_like_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    if !build(tmp.path(), RECIPE_A, "A") {
        return;
    }
    let src = tmp.path().join("A");
    let tree = scan(&src, |_| {});
    // §10.3a dump A; directory sizes are the writer's business (`-` here).
    assert_listing(
        &tree,
        &[
            "/ - 40755 3 0 0 0 1700000003.1 - - -",
            "/empty 0 100644 1 0 0 0 1700000000.500000000 - - -",
            "/fifo 0 10600 1 0 0 0 1700000000.500000000 - - -",
            "/link 6 120777 1 1000 100 0 1700000001.250000000 target - -",
            "/one 1 104755 1 1000 1000 0 1700000000.500000000 - x -",
            "/s64 64 100644 1 0 0 0 1700000000.500000000 - 0000000000000000000000000000000000000000000000000000000000000000 -",
            "/s65 65 100644 1 0 0 0 1700000000.500000000 47/ddf8476049577910de2a85a85bc861e6c6994fd9cf5aaf45d5611b4c3799c1 - 47ddf8476049577910de2a85a85bc861e6c6994fd9cf5aaf45d5611b4c3799c1",
            "/sub - 40755 2 0 0 0 1700000002.0 - - -",
            "/sub/f 6 100644 1 0 0 0 1700000000.500000000 - hello\\n -",
        ],
    );
    // The thread count never matters.
    assert_eq!(scan(&src, |o| o.threads = 1), tree);
    assert_eq!(scan(&src, |o| o.threads = 5), tree);

    // With --digest-store only s65 is stored.
    let store = tmp.path().join("S");
    let stats = fill_digest_store(&tree, &src, &store, 2).expect("fill store");
    assert_eq!((stats.objects, stats.copied), (1, 1));
    assert!(store
        .join("47/ddf8476049577910de2a85a85bc861e6c6994fd9cf5aaf45d5611b4c3799c1")
        .is_file());

    let epoch = scan(&src, |o| o.use_epoch = true);
    assert!(epoch
        .inodes
        .iter()
        .all(|i| i.meta.mtime.sec == 0 && i.meta.mtime.nsec == 0));

    assert_eq!(
        default_image(&tree),
        "a1ed4495f29be078efdead8c7980151d42f24f93e4f2edd7b2cbdb2d97cbe97b"
    );
    assert_eq!(
        default_image(&epoch),
        "277c5c517ad8b408b8c55f2df5cc663be9d918c598de097a8d475bc19803b135"
    );
    // --min-version=1 alone: max defaults to 0, then max := min.
    assert_eq!(
        image_sha256(&tree, FormatVersion::V1, FormatVersion::V0),
        "0a068193885dd0512bac2ea8addb7b9a6c7c7394240a5ccc3f901335c0ef15b9"
    );
}

#[test]
fn example_b_scans_like_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    if !build(tmp.path(), RECIPE_B, "B") {
        return;
    }
    let src = tmp.path().join("B");
    let tree = scan(&src, |_| {});
    // §10.3a dump B, minus what the writer adds: the root's escaped-whiteout markers
    // (`trusted.overlay.opaque=x user.overlay.opaque=x`); `wh` is a chardev 0:0 here.
    assert_listing(
        &tree,
        &[
            "/ - 40755 2 0 0 0 1600000001.0 - - -",
            "/blk 0 60640 1 0 0 1050668 1600000000.999999999 - - -",
            "/chr 0 20640 1 0 0 259 1600000000.1 - - -",
            "/nl\\nx 1 100640 1 0 0 0 1600000000.999999999 - b -",
            "/odd\\x20name 1 100640 1 0 0 0 1600000000.999999999 - a -",
            "/sock 0 140755 1 0 0 0 1600000000.999999999 - - -",
            "/wh 0 20600 1 0 0 0 1600000000.999999999 - - -",
        ],
    );
    let skipped = scan(&src, |o| o.skip_devices = true);
    assert_listing(
        &skipped,
        &[
            "/ - 40755 2 0 0 0 1600000001.0 - - -",
            "/nl\\nx 1 100640 1 0 0 0 1600000000.999999999 - b -",
            "/odd\\x20name 1 100640 1 0 0 0 1600000000.999999999 - a -",
            "/sock 0 140755 1 0 0 0 1600000000.999999999 - - -",
        ],
    );
    // No external files: the store stays empty.
    let store = tmp.path().join("S");
    let stats = fill_digest_store(&tree, &src, &store, 2).expect("fill store");
    assert_eq!(stats.objects, 0);

    assert_eq!(
        default_image(&tree),
        "b2d31aff5f5898b00ce4f10ff9e920ddec8ef71f188c1df4527911cc193d99b3"
    );
    assert_eq!(
        default_image(&skipped),
        "52ade0b5102d4c7e23ba8eeaae0d3b25d2b6cb698c1ff8d12fef06ebd96a5479"
    );
    assert_eq!(
        image_sha256(&tree, FormatVersion::V0, FormatVersion::V0),
        "1eee85f694bbea5e856973c2d137b77a68bdf942db7285acbe6000ffa84a74d9"
    );
}

#[test]
fn example_c_scans_like_c() {
    let tmp = tempfile::tempdir().expect("tempdir");
    if !build(tmp.path(), RECIPE_C, "C") {
        return;
    }
    let src = tmp.path().join("C");
    let tree = scan(&src, |_| {});
    // §10.3a dump C with xattrs sorted by name (the dump lists local before shared ones) and
    // `trusted.overlay.opaque` unescaped, as composefs-info prints it.
    assert_listing(
        &tree,
        &[
            "/ - 40755 3 0 0 0 1500000000.0 - - - user.root=r",
            "/big 100 100644 1 70000 70000 0 1500000000.0 b0/fb44a8078cc2d7d91ede6d16dfe63943613e6286bd7c49efd0223940d51229 - b0fb44a8078cc2d7d91ede6d16dfe63943613e6286bd7c49efd0223940d51229 security.capability=\\x01\\x00\\x00\\x02\\x00\\x04\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00 trusted.foo=bar user.a=1",
            "/d - 40755 2 0 0 0 1500000000.0 - - - trusted.overlay.opaque=y user.a=1",
            "/h1 7 100644 1 0 0 0 1500000000.0 - shared\\n - user.test=v1",
            "/h2 7 100644 1 0 0 0 1500000000.0 - shared\\n - user.test=v1",
        ],
    );
    // Hardlinks are broken by default; rs `--hardlinks` keeps them.
    assert_ne!(at(&tree, "/h1"), at(&tree, "/h2"));
    let linked = scan(&src, |o| o.hardlinks = true);
    let h1 = at(&linked, "/h1");
    assert_eq!(at(&linked, "/h2"), h1);
    assert_eq!(linked.inode(h1).meta.nlink, 2);
    assert!(linked.lookup(InodeId::ROOT, b"h2").expect("h2").hardlink);

    let store = tmp.path().join("S");
    fill_digest_store(&tree, &src, &store, 2).expect("fill store");
    assert!(store
        .join("b0/fb44a8078cc2d7d91ede6d16dfe63943613e6286bd7c49efd0223940d51229")
        .is_file());

    let skip = scan(&src, |o| o.skip_xattrs = true);
    assert!(skip.inodes.iter().all(|i| i.xattrs.is_empty()));
    let user = scan(&src, |o| o.user_xattrs = true);
    assert_eq!(user.inode(at(&user, "/big")).xattrs.len(), 1);
    assert_eq!(user.inode(at(&user, "/d")).xattrs.len(), 1);

    assert_eq!(
        default_image(&tree),
        "8901b99bc5e62d09ff5714780da9718948853c74a8c0811eef2d986a1610030b"
    );
    assert_eq!(
        default_image(&skip),
        "ad95f930c6487180a2407043bf92d9dab5bce99197365d7ecc91aefb23794d43"
    );
    assert_eq!(
        default_image(&user),
        "0471547f7f574a51b667b5c3c9c96f050a68072107d2c69efe271720137ef9ba"
    );
}
