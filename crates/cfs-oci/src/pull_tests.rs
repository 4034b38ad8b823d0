//! End-to-end pulls from hand-written OCI layouts into fresh repositories.

use std::collections::BTreeSet;
use std::path::Path;

use cfs_format::Algorithm;
use cfs_repo::repo::{GcOptions, InitOptions};

use super::*;
use crate::digest::DigestAlgorithm;
use crate::names::ImageName;
use crate::source::LayoutSource;
use crate::store;
use crate::testutil::{self, BadImage, Compress, Entry, Kind, Layer, Layout};

fn repo(dir: &Path, algorithm: Algorithm) -> Repository {
    Repository::init(
        dir.join("repo"),
        &InitOptions {
            algorithm,
            insecure: true,
            ..InitOptions::default()
        },
    )
    .expect("init repo")
}

fn pull_tag(repo: &Repository, layout: &Layout, tag: &str) -> Result<PullReport, OciError> {
    pull_jobs(repo, layout, tag, 3)
}

fn pull_jobs(
    repo: &Repository,
    layout: &Layout,
    tag: &str,
    jobs: usize,
) -> Result<PullReport, OciError> {
    let source = LayoutSource::new(&layout.dir, Some(tag.to_owned()));
    pull(
        repo,
        &source,
        &PullOptions {
            tag: Some(tag.to_owned()),
            jobs,
            ..PullOptions::default()
        },
        &NoProgress,
    )
}

fn objects(repo: &Repository) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let base = repo.path().join("objects");
    for d in std::fs::read_dir(&base).expect("objects") {
        let d = d.expect("entry");
        for f in std::fs::read_dir(d.path()).expect("subdir") {
            let f = f.expect("entry");
            out.insert(format!(
                "{}{}",
                d.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    out
}

fn dump_of(repo: &Repository, tag: &str) -> String {
    let image = store::open_image(repo, &ImageName::Tag(tag.into())).expect("open image");
    let mut out = Vec::new();
    store::dump(repo, &image, &mut out).expect("dump");
    String::from_utf8(out).expect("utf8")
}

#[test]
fn vector_gives_the_pinned_ids_and_dump() {
    for (alg, want) in [
        (Algorithm::Sha256, testutil::VECTOR_ID_SHA256),
        (Algorithm::Sha512, testutil::VECTOR_ID_SHA512),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (layout, layers) = testutil::vector_layout(dir.path(), Compress::None);
        let repo = repo(dir.path(), alg);
        let report = pull_tag(&repo, &layout, "t").expect("pull");
        assert_eq!(report.image_id.to_hex(), want, "{alg}");
        assert_eq!(report.layers, 2);
        assert_eq!(report.layers_fetched, 2);
        assert!(!report.already_present);
        if alg == Algorithm::Sha256 {
            assert_eq!(dump_of(&repo, "t"), testutil::VECTOR_DUMP_SHA256);
        }
        // The image is linked from the config and mountable by id; compute-id agrees.
        let image = store::open_image(&repo, &ImageName::Tag("t".into())).expect("open");
        assert_eq!(image.image_id, Some(report.image_id));
        assert_eq!(
            store::compute_id(&repo, &image).expect("id"),
            report.image_id
        );
        repo.open_image(&report.image_id.to_hex())
            .expect("image stored");
        // By digest too.
        let by_digest = ImageName::Digest(report.manifest_digest.clone());
        assert_eq!(
            store::open_image(&repo, &by_digest)
                .expect("by digest")
                .config_digest,
            report.config_digest
        );
        // Layers reassemble byte for byte.
        for l in &layers {
            let mut out = Vec::new();
            repo.cat_stream(&crate::names::layer_stream_id(&l.diff_id()), &mut out)
                .expect("cat");
            assert!(out == l.tar, "layer reassembles exactly");
        }
        assert!(store::check_image(&repo, &by_digest)
            .expect("check")
            .is_empty());
        assert!(repo.fsck().expect("fsck").is_ok());
    }
}

/// A bigger layer: bodies around the 64-byte threshold, files larger than the copy buffers,
/// long names (GNU/PAX), devices, a FIFO and trailing record padding.
fn big_layer() -> Vec<u8> {
    let mut entries = vec![
        Entry::dir("usr/", 0o755, 10),
        Entry::dir("usr/lib/", 0o755, 10),
    ];
    for size in [
        0usize, 1, 63, 64, 65, 511, 512, 513, 4096, 300_000, 1_500_000,
    ] {
        let content: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        entries.push(Entry::file(
            &format!("usr/lib/f{size}"),
            0o644,
            11,
            &content,
        ));
    }
    let long = format!("usr/lib/{}", "n".repeat(200));
    entries.push(Entry::file(&long, 0o600, 12, b"long name").pax("path", long.as_bytes()));
    entries.push(Entry {
        kind: Kind::Char(1, 3),
        ..Entry::dir("usr/null", 0o666, 13)
    });
    entries.push(Entry {
        kind: Kind::Block(259, 70_000),
        ..Entry::dir("usr/blk", 0o660, 13)
    });
    entries.push(Entry {
        kind: Kind::Fifo,
        ..Entry::dir("usr/fifo", 0o644, 13)
    });
    let mut tar = testutil::tar(&entries);
    // GNU tar pads archives to 10 KiB records.
    tar.resize(tar.len().div_ceil(10240) * 10240 + 10240, 0);
    tar
}

#[test]
fn compressed_layers_give_the_same_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let big = big_layer();
    let (l1, l2) = testutil::vector_layers();
    layout.add_compressions(&[l1, big.clone(), l2]);
    let mut ids = BTreeSet::new();
    for (tag, _) in testutil::COMPRESSIONS {
        // A fresh repository each time, so every layer is really imported.
        let sub = dir.path().join(tag);
        std::fs::create_dir(&sub).expect("mkdir");
        let repo = repo(&sub, Algorithm::Sha256);
        let report = pull_tag(&repo, &layout, tag).unwrap_or_else(|e| panic!("{tag}: {e}"));
        assert_eq!(report.layers_fetched, 3, "{tag}");
        ids.insert(report.image_id);
        let mut out = Vec::new();
        repo.cat_stream(
            &crate::names::layer_stream_id(&Layer::new(big.clone(), Compress::None).diff_id()),
            &mut out,
        )
        .expect("cat");
        assert!(out == big, "{tag}: layer reassembles exactly");
        let dump = dump_of(&repo, tag);
        assert!(dump.contains("/usr/null 0 20666 1 0 0 259 13.0"), "{dump}");
        assert!(
            dump.contains(&format!("/usr/lib/{}", "n".repeat(200))),
            "{dump}"
        );
        assert!(repo.fsck().expect("fsck").is_ok(), "{tag}");
    }
    assert_eq!(ids.len(), 1, "all compressions give one image: {ids:?}");
}

#[test]
fn repulls_fetch_nothing_and_shared_layers_are_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = Layer::gzip(&[Entry::file("etc/extra", 0o644, 5, &[b'E'; 4000])]);
    let layout = testutil::shared_layers_layout(dir.path(), extra);
    let repo = repo(dir.path(), Algorithm::Sha256);
    let first = pull_tag(&repo, &layout, "a").expect("pull a");
    assert_eq!(first.layers_fetched, 2);
    assert_eq!(
        first.stats.objects_new, 1,
        "only usr/bin/big is over 64 bytes"
    );
    let again = pull_tag(&repo, &layout, "a").expect("re-pull");
    assert!(again.already_present);
    assert_eq!(again.layers_fetched, 0);
    assert_eq!(again.bytes_fetched, 0);
    assert_eq!(again.image_id, first.image_id);

    let before = objects(&repo);
    let b = pull_tag(&repo, &layout, "b").expect("pull b");
    assert_eq!(
        b.layers_fetched, 1,
        "the shared layers are not fetched again"
    );
    assert_eq!(b.stats.objects_new, 1);
    let after = objects(&repo);
    let added: Vec<_> = after.difference(&before).collect();
    // The extra file, the EROFS image and b's layer/config/manifest streams and JSON.
    assert!(added.len() <= 7, "{added:?}");
    let big = cfs_format::fsverity::digest(Algorithm::Sha256, &[b'A'; 100]).to_hex();
    assert!(after.contains(&big));

    // untag a + gc: a's unique objects go, the shared ones (and b) stay.
    store::untag(&repo, "a").expect("untag");
    assert!(matches!(
        store::untag(&repo, "a"),
        Err(OciError::ImageNotFound { .. })
    ));
    let report = repo.gc(&GcOptions::default()).expect("gc");
    assert!(report.objects_removed > 0, "{report:?}");
    let left = objects(&repo);
    assert!(left.contains(&big), "shared content survives");
    assert!(
        !left.contains(&first.image_id.to_hex()),
        "a's image is gone"
    );
    assert!(left.contains(&b.image_id.to_hex()));
    assert!(store::check_image(&repo, &ImageName::Tag("b".into()))
        .expect("check b")
        .is_empty());
    assert!(repo.fsck().expect("fsck").is_ok());
    // Tagging b's manifest as a again works; gc then keeps it.
    store::tag(&repo, &b.manifest_digest, "a").expect("tag");
    assert_eq!(
        store::tag_target(&repo, "a").expect("target"),
        Some(b.manifest_digest.clone())
    );
}

#[test]
fn bad_inputs_fail_clearly_and_leave_no_tag() {
    for bad in testutil::bad_images() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = bad.write(&dir.path().join("oci"));
        let repo = repo(dir.path(), Algorithm::Sha256);
        let err = pull_tag(&repo, &layout, BadImage::TAG).expect_err(bad.name);
        let msg = err.to_string();
        for w in &bad.want {
            assert!(
                msg.contains(w.as_str()),
                "{}: {msg:?} should mention {w:?}",
                bad.name
            );
        }
        assert_eq!(
            store::tag_target(&repo, BadImage::TAG).expect("tag"),
            None,
            "{}",
            bad.name
        );
        assert!(repo.fsck().expect("fsck").is_ok(), "fsck after {msg}");
        repo.gc(&GcOptions::default()).expect("gc");
        assert!(repo.fsck().expect("fsck").is_ok(), "{}", bad.name);
    }
}

#[test]
fn interrupted_pull_leaves_garbage_only_and_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let (l1, l2) = testutil::vector_layers();
    let good = Layer::new(l1, Compress::Zstd(2));
    let mut bad = Layer::new(l2.clone(), Compress::Zstd(2));
    bad.diff_id = Some(OciDigest::of(DigestAlgorithm::Sha256, b"nope"));
    layout.add_image("t", &[good.clone(), bad]);
    let repo = repo(dir.path(), Algorithm::Sha256);
    // One job: the good layer is imported before the bad one fails.
    pull_jobs(&repo, &layout, "t", 1).expect_err("second layer is bad");
    // The good layer was kept (named, untagged) and is reused by the fixed image.
    layout.add_image("t", &[good, Layer::new(l2, Compress::Zstd(2))]);
    let report = pull_tag(&repo, &layout, "t").expect("pull");
    assert_eq!(report.layers_fetched, 1);
    assert_eq!(report.image_id.to_hex(), testutil::VECTOR_ID_SHA256);
}

#[test]
fn diff_id_mismatch_names_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let mut wrong = Layer::on_base(vec![Entry::file("etc/f", 0o644, 1, &[1u8; 1000])]);
    let claimed = OciDigest::of(DigestAlgorithm::Sha256, b"something else");
    wrong.diff_id = Some(claimed.clone());
    layout.add_image("t", &[wrong]);
    let repo = repo(dir.path(), Algorithm::Sha256);
    let err = pull_tag(&repo, &layout, "t").expect_err("mismatch");
    assert!(matches!(err, OciError::DiffIdMismatch { .. }), "{err}");
    assert_eq!(
        repo.has_stream(&crate::names::layer_stream_id(&claimed))
            .expect("has"),
        None
    );
    assert!(repo.list_streams().expect("list").is_empty());
    assert!(repo.list_images().expect("list").is_empty());
}

#[test]
fn a_bad_entry_early_in_a_big_layer_stops_the_import() {
    // The decompressor and the diff_id hasher each run ahead of the parser with pieces in
    // flight; when the parser gives up on the first entry, both must stop too, not block on a
    // full queue (the pull would hang) or go on through the rest of the blob.
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let mut entries = vec![Entry::file("etc/../../evil", 0o644, 1, b"x")];
    for i in 0..48u8 {
        let body: Vec<u8> = (0..1usize << 20).map(|k| (k as u8) ^ i).collect();
        entries.push(Entry::file(&format!("f{i}"), 0o644, 1, &body));
    }
    layout.add_image(
        "t",
        &[Layer::new(testutil::tar(&entries), Compress::Gzip(1))],
    );
    let repo = repo(dir.path(), Algorithm::Sha256);
    // A thread of its own, not a scoped one: if the pull hangs, the test must fail, not wait.
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let pulled = pull_tag(&repo, &layout, "t").map(|_| ());
        let _ = done.send((pulled, repo));
    });
    let (pulled, repo) = result
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the pull ended within 60 s");
    let err = pulled.expect_err("the first entry is bad");
    assert!(
        matches!(&err, OciError::Entry { entry, .. } if entry == "etc/../../evil"),
        "{err}"
    );
    assert_eq!(store::tag_target(&repo, "t").expect("tag"), None);
    assert!(repo.fsck().expect("fsck").is_ok());
}
