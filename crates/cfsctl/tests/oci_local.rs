//! `cfsctl oci …` end to end on hand-written OCI layouts (no network): the docs/formats.md §6
//! vector pulled from real PAX tar layers gives composefs-rs's image ids, compressions agree,
//! re-pulls fetch nothing, shared layers are stored once, bad layers fail cleanly, untag + gc
//! collects exactly the unique objects, `oci layer` gives the tar back. With skopeo installed,
//! the same image also goes through skopeo's image proxy (`oci-archive:`, `dir:`,
//! `docker-archive:`, `containers-storage:`, Docker schema 2 from a registry) and through a
//! real registry (`docker-registry` on loopback, `docker://`, HTTP and HTTPS). With root, the
//! image is mounted (kernel and FUSE).

mod common;
#[path = "common/oci_fixture.rs"]
mod oci_fixture;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cfs_oci::testutil::{self, vector_layout, BadImage, Compress, Entry, Layer, Layout};
use common::{describe_output, kernel_mount_unavailable, on_a_terminal, root_unavailable, skip};
use oci_fixture::{
    assert_fsck_clean, cfsctl, fails, field, init, layout_layer_digests, missing_programs, objects,
    ok, ok_env, skopeo, Registry, TestCa, TokenServer,
};

#[test]
fn oci_vector_pull_gives_the_pinned_ids_and_dump() {
    for (alg, want) in [
        ("sha256", testutil::VECTOR_ID_SHA256),
        ("sha512", testutil::VECTOR_ID_SHA512),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (layout, layers) = vector_layout(dir.path(), Compress::None);
        let repo = init(dir.path(), alg);
        let image = layout.reference("t");
        let out = ok(&repo, &["oci", "pull", &image]);
        assert_eq!(field(&out, "verity"), want, "{alg}: {out}");
        assert_eq!(field(&out, "tagged"), image);
        assert!(
            out.contains("layers 2 (2 fetched, 0 already present)"),
            "{out}"
        );
        // The tag defaults to IMAGE as written.
        let computed = ok(&repo, &["oci", "compute-id", &image]);
        assert_eq!(computed.trim(), want);
        if alg == "sha256" {
            assert_eq!(
                ok(&repo, &["oci", "dump", &image]),
                testutil::VECTOR_DUMP_SHA256
            );
        }
        // By manifest digest too.
        let manifest = field(&out, "manifest").to_owned();
        assert_eq!(
            ok(&repo, &["oci", "compute-id", &format!("@{manifest}")]).trim(),
            want
        );
        let images = ok(&repo, &["oci", "images", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&images).expect("json");
        assert_eq!(v[0]["name"], image.as_str());
        assert_eq!(v[0]["image_id"], want);
        assert_eq!(v[0]["layers"], 2);
        let table = ok(&repo, &["oci", "images"]);
        assert!(table.contains(&image), "{table}");
        let inspect: serde_json::Value =
            serde_json::from_str(&ok(&repo, &["oci", "inspect", &image])).expect("json");
        assert_eq!(inspect["composefs_erofs"], want);
        assert_eq!(
            inspect["config"]["rootfs"]["diff_ids"][1],
            layers[1].diff_id().to_string().as_str()
        );
        let config = ok(&repo, &["oci", "inspect", "--config", &image]);
        assert_eq!(field(&out, "config"), {
            let d = cfs_oci::OciDigest::of(cfs_oci::DigestAlgorithm::Sha256, config.as_bytes());
            d.to_string()
        });
        assert!(ok(&repo, &["oci", "fsck"]).contains("1 images checked, 0 with problems"));
        assert_fsck_clean(&repo);
        // The layer comes back byte for byte; dumpfile and JSON views parse.
        let diff = layers[0].diff_id().to_string();
        let tar = cfsctl(&repo, &["oci", "layer", &diff]);
        assert!(tar.status.success(), "{}", describe_output(&tar));
        assert!(tar.stdout == layers[0].tar, "oci layer reproduces the tar");
        let dump = ok(&repo, &["oci", "layer", "--dumpfile", &diff]);
        assert_eq!(dump.lines().count(), 10, "{dump}");
        assert!(dump.contains("/usr/bin/big2 0 @100644"), "{dump}");
        let json: serde_json::Value =
            serde_json::from_str(&ok(&repo, &["oci", "layer", "--json", &diff])).expect("json");
        assert_eq!(json["entries"].as_array().map(Vec::len), Some(10));
        assert_eq!(json["size"], layers[0].tar.len());
    }
}

#[test]
fn oci_gzip_and_zstd_layers_give_the_same_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let (l1, l2) = testutil::vector_layers();
    let mut big_entries = vec![Entry::dir("opt/", 0o755, 3)];
    for i in 0..40u32 {
        let content: Vec<u8> = (0..(i * 10_007)).map(|b| (b ^ i) as u8).collect();
        big_entries.push(Entry::file(&format!("opt/f{i}"), 0o644, 4, &content));
    }
    layout.add_compressions(&[l1, testutil::tar(&big_entries), l2]);
    let mut ids = BTreeSet::new();
    for (tag, _) in testutil::COMPRESSIONS {
        let sub = dir.path().join(tag);
        let repo = init(&sub, "sha256");
        let out = ok(&repo, &["oci", "pull", &layout.reference(tag), tag]);
        assert!(out.contains("(3 fetched"), "{tag}: {out}");
        ids.insert(field(&out, "verity").to_owned());
        assert_fsck_clean(&repo);
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[test]
fn oci_repull_fetches_nothing_and_shared_layers_are_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unique_content = vec![b'U'; 5000];
    let extra = Layer::new(
        testutil::tar(&[Entry::file("etc/unique", 0o644, 5, &unique_content)]),
        Compress::Zstd(1),
    );
    let layout = testutil::shared_layers_layout(dir.path(), extra);
    let repo = init(dir.path(), "sha256");
    let a = ok(&repo, &["oci", "pull", &layout.reference("a"), "a"]);
    assert!(a.contains("layers 2 (2 fetched, 0 already present)"), "{a}");
    let again = ok(&repo, &["oci", "pull", &layout.reference("a"), "a"]);
    assert!(
        again.contains("layers 2 (0 fetched, 2 already present)"),
        "{again}"
    );
    assert!(again.contains("bytes 0 fetched"), "{again}");
    assert_eq!(field(&again, "verity"), field(&a, "verity"));

    let before = objects(&repo);
    let b = ok(&repo, &["oci", "pull", &layout.reference("b"), "b"]);
    assert!(b.contains("layers 3 (1 fetched, 2 already present)"), "{b}");
    assert!(b.contains("objects 1 new (5000 bytes), 0 reused"), "{b}");
    let after = objects(&repo);
    let big = cfs_format::fsverity::digest(cfs_format::Algorithm::Sha256, &[b'A'; 100]).to_hex();
    assert!(before.contains(&big) && after.contains(&big));

    // untag a + gc: a's image goes, the shared content and b stay.
    let a_image = field(&a, "verity").to_owned();
    let b_image = field(&b, "verity").to_owned();
    let unique =
        cfs_format::fsverity::digest(cfs_format::Algorithm::Sha256, &unique_content).to_hex();
    ok(&repo, &["oci", "untag", "a"]);
    assert!(fails(&repo, &["oci", "untag", "a"]).contains("not found"));
    let gc = ok(&repo, &["gc"]);
    assert!(gc.contains("removed"), "{gc}");
    let left = objects(&repo);
    assert!(!left.contains(&a_image), "a's image is collected");
    assert!(left.contains(&b_image) && left.contains(&big) && left.contains(&unique));
    assert!(ok(&repo, &["oci", "fsck", "b"]).contains("ok b"));
    assert_fsck_clean(&repo);
    // Now untag b too: everything b held goes.
    ok(&repo, &["oci", "untag", "b"]);
    ok(&repo, &["gc"]);
    let left = objects(&repo);
    assert!(!left.contains(&big) && !left.contains(&unique) && !left.contains(&b_image));
    assert_fsck_clean(&repo);
}

/// A layer's root entry may be spelled `./` (umoci repack, GNU tar) or `/` (umoci insert): both
/// only set the root's metadata, which the `/usr` rule then replaces, so the image id is the
/// same as with no root entry at all.
/// A pull shows per-layer progress on a terminal and writes nothing to a stderr that is not one.
#[test]
fn oci_pull_shows_progress_on_a_terminal_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = Layer::new(
        testutil::tar(&[Entry::file("etc/extra", 0o644, 5, &[b'E'; 3000])]),
        Compress::Gzip(1),
    );
    let layout = testutil::shared_layers_layout(dir.path(), extra);
    let repo = init(dir.path(), "sha256");
    let p = |s: &str| PathBuf::from(s);
    let shown = on_a_terminal(
        Path::new(env!("CARGO_BIN_EXE_cfsctl")),
        &[
            &p("--repo"),
            &repo,
            &p("oci"),
            &p("pull"),
            &p(&layout.reference("a")),
            &p("a"),
        ],
    );
    assert!(
        shown.contains("building the image"),
        "no progress shown:\n{shown}"
    );
    assert!(
        shown.contains("layers 2 (2 fetched"),
        "no summary:\n{shown}"
    );

    let out = cfsctl(&repo, &["oci", "pull", &layout.reference("b"), "b"]);
    assert!(out.status.success(), "{}", describe_output(&out));
    assert!(
        out.stderr.is_empty(),
        "a piped pull wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn oci_root_entry_spellings_give_the_same_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let body = || {
        vec![
            Entry::dir("usr/", 0o755, 1),
            Entry::file("usr/f", 0o644, 1, b"f"),
        ]
    };
    let mut ids = BTreeSet::new();
    for (tag, root) in [("none", None), ("dot", Some("./")), ("slash", Some("/"))] {
        let mut entries: Vec<Entry> = root.map(|r| Entry::dir(r, 0o700, 9)).into_iter().collect();
        entries.extend(body());
        layout.add_image(tag, &[Layer::gzip(&entries)]);
        let repo = init(&dir.path().join(tag), "sha256");
        let out = ok(&repo, &["oci", "pull", &layout.reference(tag)]);
        ids.insert(field(&out, "verity").to_owned());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[test]
fn oci_tag_and_untag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), Compress::Zstd(1));
    let repo = init(dir.path(), "sha512");
    let out = ok(&repo, &["oci", "pull", &layout.reference("t"), "one"]);
    let manifest = field(&out, "manifest");
    ok(&repo, &["oci", "tag", manifest, "library/two"]);
    assert!(repo.join("streams/refs/oci/library%2Ftwo").is_symlink());
    let listed = ok(&repo, &["oci", "images", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let names: Vec<&str> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["library/two", "one"]);
    assert_eq!(
        ok(&repo, &["oci", "compute-id", "library/two"]).trim(),
        testutil::VECTOR_ID_SHA512
    );
    ok(&repo, &["oci", "untag", "one"]);
    assert!(fails(&repo, &["oci", "dump", "one"]).contains("not found"));
    assert!(fails(
        &repo,
        &[
            "oci",
            "tag",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "x"
        ]
    )
    .contains("not found"));
    assert!(fails(&repo, &["oci", "tag", manifest, "@x"]).contains("reserved"));
}

#[test]
fn oci_bad_layers_fail_naming_layer_and_entry_and_leave_no_tag() {
    for bad in testutil::bad_images() {
        let name = bad.name;
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = bad.write(&dir.path().join("oci"));
        let repo = init(dir.path(), "sha256");
        let source = layout.reference(BadImage::TAG);
        let err = fails(&repo, &["oci", "pull", &source, BadImage::TAG]);
        for w in &bad.want {
            assert!(
                err.contains(w.as_str()),
                "{name}: {err:?} should mention {w:?}"
            );
        }
        assert_eq!(
            ok(&repo, &["oci", "images", "--json"]).trim(),
            "[]",
            "{name}"
        );
        assert_fsck_clean(&repo);
        ok(&repo, &["gc"]);
        assert_fsck_clean(&repo);
    }
}

// ---------------------------------------------------------------------------------------------
// Through skopeo: its image proxy, and a real registry
// ---------------------------------------------------------------------------------------------

#[test]
fn oci_pull_through_skopeo_transports() {
    if let Some(why) = missing_programs(&["skopeo"]) {
        skip("pulls through skopeo's image proxy", &why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), Compress::Gzip(1));
    let src = layout.reference("t");
    let archive = dir.path().join("image.tar");
    let dirdest = dir.path().join("dirimage");
    let docker_archive = dir.path().join("docker.tar");
    skopeo(&["copy", &src, &format!("oci-archive:{}", archive.display())]);
    skopeo(&["copy", &src, &format!("dir:{}", dirdest.display())]);
    // A Docker archive holds a Docker schema 2 image with uncompressed layers; skopeo hands it
    // out as OCI, with a config that exists only in its conversion.
    skopeo(&[
        "copy",
        &src,
        &format!("docker-archive:{}:cfs/vector:t", docker_archive.display()),
    ]);
    for (n, image) in [
        format!("oci-archive:{}", archive.display()),
        format!("dir:{}", dirdest.display()),
        format!("docker-archive:{}", docker_archive.display()),
        src.clone(),
    ]
    .iter()
    .enumerate()
    {
        // A repository each, so every transport serves the layers too.
        let repo = init(&dir.path().join(format!("repo-{n}")), "sha256");
        let out = ok(&repo, &["oci", "pull", image, "x"]);
        assert_eq!(
            field(&out, "verity"),
            testutil::VECTOR_ID_SHA256,
            "{image}: {out}"
        );
        assert!(out.contains("(2 fetched"), "{image}: {out}");
        assert_fsck_clean(&repo);
    }
}

/// `containers-storage:` (podman's and buildah's image store; a private one under the test's
/// directory, with the `vfs` driver, so nothing is mounted and the machine's image store is
/// left alone). An image whose manifest names its uncompressed layers (as one copied from a Docker
/// archive does) pulls with any skopeo. One copied from a gzip layout keeps only the
/// uncompressed layers its manifest does not name: a skopeo with `GetLayerInfo` (image proxy
/// protocol 0.2.5) finds them; an older one (Debian 12's speaks 0.2.3) fails, naming the way
/// out, and leaves no tag.
#[test]
fn oci_pull_from_containers_storage() {
    if let Some(why) = missing_programs(&["skopeo"])
        .or_else(|| root_unavailable("a containers-storage image store"))
    {
        skip("pulls from containers-storage", &why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // Not the vector: its `security.capability` value is one the kernel refuses to set, and
    // containers-storage unpacks layers onto a real filesystem.
    let layout = Layout::create(&dir.path().join("layout"));
    layout.add_image(
        "t",
        &[
            Layer::gzip(&[
                Entry::dir("etc", 0o755, 1),
                Entry::file("etc/os-release", 0o644, 2, &[b'o'; 300]),
                Entry::symlink("etc/alias", "os-release", 3),
            ]),
            Layer::gzip(&[
                Entry::dir("usr", 0o755, 1),
                Entry::file("usr/tool", 0o755, 4, &[b't'; 5000]).owner(12, 34),
                Entry::hardlink("usr/tool-again", "usr/tool"),
            ]),
        ],
    );
    let docker_archive = dir.path().join("docker.tar");
    skopeo(&[
        "copy",
        "--quiet",
        &layout.reference("t"),
        &format!("docker-archive:{}:cfs/vector:t", docker_archive.display()),
    ]);
    let store = |name: &str| {
        let root = dir.path().join(name);
        format!(
            "containers-storage:[vfs@{}+{}]localhost/cfs/vector:t",
            root.join("root").display(),
            root.join("run").display()
        )
    };
    let uncompressed = store("store-uncompressed");
    let gzip = store("store-gzip");
    let quiet = ["copy", "--quiet"];
    let archive = format!("docker-archive:{}", docker_archive.display());
    skopeo(&[&quiet[..], &[archive.as_str(), uncompressed.as_str()]].concat());
    skopeo(&[&quiet[..], &[layout.reference("t").as_str(), gzip.as_str()]].concat());
    let repo = init(dir.path(), "sha256");
    let direct = ok(&repo, &["oci", "pull", &layout.reference("t"), "direct"]);
    let want = field(&direct, "verity");
    let storage_repo = init(&dir.path().join("storage-repo"), "sha256");
    let out = ok(&storage_repo, &["oci", "pull", &uncompressed, "x"]);
    assert_eq!(field(&out, "verity"), want, "{out}");
    assert!(out.contains("(2 fetched"), "{out}");
    let fresh = init(&dir.path().join("gzip-repo"), "sha256");
    let out = cfsctl(&fresh, &["oci", "pull", &gzip, "x"]);
    if out.status.success() {
        let out = String::from_utf8_lossy(&out.stdout);
        assert_eq!(field(&out, "verity"), want, "{out}");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("image proxy protocol 0.2.5") && err.contains("oci:DIR:TAG"),
            "{err}"
        );
        assert_eq!(ok(&fresh, &["oci", "images", "--json"]).trim(), "[]");
    }
    assert_fsck_clean(&fresh);
    assert_fsck_clean(&storage_repo);
}

/// The vector image (layers compressed with `compress`) pushed as `cfs/vector:t` to a registry
/// started for one test. The registry must stop before its directory goes: fields drop in
/// order, and bindings in reverse, so a destructuring binds `dir` first.
struct RegistryVector {
    registry: Registry,
    remote: String,
    layout: Layout,
    dir: tempfile::TempDir,
}

/// [`RegistryVector`] for the test that needs it for `what`; `None`, after saying so, where
/// skopeo or docker-registry is missing.
fn vector_on_a_registry(what: &str, compress: Compress) -> Option<RegistryVector> {
    if let Some(why) = missing_programs(&["skopeo", "docker-registry"]) {
        skip(what, &why);
        return None;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), compress);
    let registry = Registry::start(&dir.path().join("registry"));
    let remote = registry.push(&layout.dir, "t", "cfs/vector");
    Some(RegistryVector {
        registry,
        remote,
        layout,
        dir,
    })
}

#[test]
fn oci_pull_from_a_registry() {
    let Some(RegistryVector {
        dir,
        layout,
        registry,
        remote,
    }) = vector_on_a_registry("pull from a loopback registry", Compress::Zstd(2))
    else {
        return;
    };
    let repo = init(dir.path(), "sha256");
    let out = ok(&repo, &["oci", "pull", "--tls-verify=false", &remote]);
    assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
    assert!(out.contains("(2 fetched"), "{out}");
    let again = ok(&repo, &["oci", "pull", "--tls-verify=false", &remote]);
    assert!(again.contains("(0 fetched, 2 already present)"), "{again}");
    // The same image from the layout directly lands on the same streams and id.
    let local = ok(&repo, &["oci", "pull", &layout.reference("t"), "local"]);
    assert_eq!(field(&local, "verity"), testutil::VECTOR_ID_SHA256);
    // TLS verification is on by default: a plain-HTTP registry is refused.
    fails(&repo, &["oci", "pull", &remote, "strict"]);
    // A Docker schema 2 image (most of Docker Hub) goes through skopeo, which converts it to
    // OCI. Docker images have no zstd, so its layers are gzip: other blobs, the same diff_ids,
    // so nothing is fetched again and the id is the same.
    let gz_dir = dir.path().join("gzip");
    std::fs::create_dir_all(&gz_dir).expect("mkdir");
    let (gzip_layout, _) = vector_layout(&gz_dir, Compress::Gzip(1));
    let docker = registry.reference("cfs/vector-docker", "t");
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--format=v2s2",
        &gzip_layout.reference("t"),
        &docker,
    ]);
    let out = ok(
        &repo,
        &["oci", "pull", "--tls-verify=false", &docker, "docker"],
    );
    assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
    assert!(out.contains("Docker schema 2"), "{out}");
    assert!(out.contains("(0 fetched, 2 already present)"), "{out}");
    let fresh = init(&dir.path().join("docker"), "sha256");
    let out = ok(&fresh, &["oci", "pull", "--tls-verify=false", &docker]);
    assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
    assert_fsck_clean(&fresh);
    assert_fsck_clean(&repo);
    drop(registry);
}

/// A registry serving HTTPS with a certificate from a CA nobody trusts: refused with
/// verification on (the default), pulled once the CA is trusted (`SSL_CERT_FILE` naming it: for
/// rustls it replaces the system's trust store, for Go it adds a file), and pulled over
/// unverified HTTPS, not plain HTTP, with `--tls-verify=false`; directly and through skopeo.
#[test]
fn oci_pull_from_an_https_registry() {
    if let Some(why) = missing_programs(&["skopeo", "docker-registry", "openssl"]) {
        skip("pull from a loopback registry over HTTPS", &why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), Compress::Gzip(1));
    let ca = TestCa::new(&dir.path().join("ca"));
    let registry = Registry::start_configured(&dir.path().join("registry"), &ca.registry_config());
    let remote = registry.push(&layout.dir, "t", "cfs/vector");
    let https = format!("via registry (https://127.0.0.1:{})", registry.port());
    let trusted = [("SSL_CERT_FILE", ca.ca.as_path())];
    for fetcher in ["auto", "skopeo"] {
        let repo = init(&dir.path().join(fetcher), "sha256");
        let fetch = format!("--fetcher={fetcher}");
        let err = fails(&repo, &["oci", "pull", &fetch, &remote, "x"]);
        assert!(
            err.contains("127.0.0.1") && err.to_lowercase().contains("certificate"),
            "{fetcher}: {err}"
        );
        if fetcher == "auto" {
            assert!(err.contains("--tls-verify=false"), "the hint: {err}");
        }
        assert_eq!(ok(&repo, &["oci", "images", "--json"]).trim(), "[]");
        let out = ok_env(&repo, &["oci", "pull", &fetch, &remote, "x"], &trusted);
        assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
        assert_eq!(fetcher == "auto", out.contains(&https), "{fetcher}: {out}");
        assert_fsck_clean(&repo);
        // A fresh repository, so the layers cross unverified HTTPS too.
        let unverified = init(&dir.path().join(format!("{fetcher}-unverified")), "sha256");
        let out = ok(
            &unverified,
            &["oci", "pull", &fetch, "--tls-verify=false", &remote, "y"],
        );
        assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
        assert!(out.contains("(2 fetched"), "{out}");
        assert_eq!(fetcher == "auto", out.contains(&https), "{fetcher}: {out}");
        assert_fsck_clean(&unverified);
    }
    drop(registry);
}

#[test]
fn oci_registry_blobs_that_are_corrupt_or_missing_fail_cleanly() {
    let Some(RegistryVector {
        dir,
        layout,
        registry,
        remote,
    }) = vector_on_a_registry(
        "corrupt and missing blobs on a loopback registry",
        Compress::Gzip(1),
    )
    else {
        return;
    };
    let layer = layout_layer_digests(&layout.dir, "t")
        .pop()
        .expect("a layer");
    let data = registry.blob_data(&layer);
    let original = std::fs::read(&data).unwrap_or_else(|e| panic!("{data:?}: {e}"));
    // `names`: what the error must mention (the blob, or any layer); `why`: one of these reasons.
    let pull_fails = |label: &str, names: &str, why: &[&str]| {
        for fetcher in ["auto", "skopeo"] {
            let repo = init(&dir.path().join(format!("{label}-{fetcher}")), "sha256");
            let err = fails(
                &repo,
                &[
                    "oci",
                    "pull",
                    "--tls-verify=false",
                    &format!("--fetcher={fetcher}"),
                    &remote,
                    "x",
                ],
            );
            assert!(
                err.contains(names) && why.iter().any(|w| err.contains(w)),
                "{label}, {fetcher}: {err}"
            );
            let images = ok(&repo, &["oci", "images"]);
            assert!(!images.lines().any(|l| l.starts_with('x')), "{images}");
            assert_fsck_clean(&repo);
        }
    };
    // One byte of the gzip header's timestamp changed: the tar inside is the same, so only the
    // blob's digest check can refuse it.
    let mut retimed = original.clone();
    retimed[4] ^= 0xff;
    std::fs::write(&data, &retimed).expect("change the blob");
    pull_fails(
        "retimed",
        &layer[7..],
        &["does not match its digest", "corrupted blob"],
    );
    // One byte in the middle changed: the registry serves it, decompression or the digest check
    // refuses it.
    let mut corrupt = original.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0xff;
    std::fs::write(&data, &corrupt).expect("corrupt the blob");
    pull_fails(
        "corrupt",
        "layer sha256:",
        &["checksum", "corrupt", "digest", "Digest"],
    );
    // Gone altogether.
    std::fs::remove_file(&data).expect("remove the blob");
    pull_fails(
        "missing",
        "layer sha256:",
        &["missing", "unknown", "not found", "404", "500"],
    );
    // Back in place, the pull goes through.
    std::fs::write(&data, &original).expect("restore the blob");
    let repo = init(&dir.path().join("restored"), "sha256");
    let out = ok(&repo, &["oci", "pull", "--tls-verify=false", &remote, "x"]);
    assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
    drop(registry);
}

/// A bcrypt hash of `cfs-secret` for `docker-registry`'s htpasswd file (made with glibc's
/// `crypt`, cost 4 to keep the test fast).
const HTPASSWD: &str = "cfs:$2b$04$MZJwzcxeUgAgcRMsHm/WP.mpP4ICOQ7qt4aly9QNo101k8kGr9Urq\n";

fn auth_file(path: &Path, port: u16, user_password: &str) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(user_password);
    std::fs::write(
        path,
        format!(r#"{{"auths":{{"127.0.0.1:{port}":{{"auth":"{auth}"}}}}}}"#),
    )
    .expect("write the auth file");
}

#[test]
fn oci_pull_from_a_registry_with_a_password() {
    if let Some(why) = missing_programs(&["skopeo", "docker-registry"]) {
        skip("pull from a loopback registry with a password", &why);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), Compress::Gzip(1));
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, HTPASSWD).expect("htpasswd");
    let registry = Registry::start_configured(
        &dir.path().join("registry"),
        &format!(
            "auth:\n  htpasswd:\n    realm: cfs-test\n    path: {}\n",
            htpasswd.display()
        ),
    );
    let remote = registry.push_as(&layout.dir, "t", "cfs/vector", Some("cfs:cfs-secret"));
    let repo = init(dir.path(), "sha256");

    // No credentials: a clear refusal, and nothing is tagged.
    let err = fails(&repo, &["oci", "pull", "--tls-verify=false", &remote, "x"]);
    assert!(err.contains("user name and password"), "{err}");
    let err = fails(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--authfile",
            "/nonexistent.json",
            &remote,
        ],
    );
    assert!(err.contains("/nonexistent.json"), "{err}");

    // The password from an auth file, directly and through skopeo: the same image.
    let auth = dir.path().join("auth.json");
    auth_file(&auth, registry.port(), "cfs:cfs-secret");
    let auth_arg = auth.to_str().expect("utf-8");
    let direct = ok(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--authfile",
            auth_arg,
            &remote,
            "x",
        ],
    );
    assert_eq!(
        field(&direct, "verity"),
        testutil::VECTOR_ID_SHA256,
        "{direct}"
    );
    assert!(field(&direct, "via").starts_with("registry"), "{direct}");
    let other = init(&dir.path().join("other"), "sha256");
    let via_skopeo = ok(
        &other,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--fetcher=skopeo",
            "--authfile",
            auth_arg,
            &remote,
            "x",
        ],
    );
    assert_eq!(field(&via_skopeo, "via"), "skopeo", "{via_skopeo}");
    for key in ["verity", "manifest", "config"] {
        assert_eq!(field(&direct, key), field(&via_skopeo, key), "{key}");
    }

    // The same with --creds, directly and through skopeo (an in-memory auth file).
    for fetcher in ["--fetcher=auto", "--fetcher=skopeo"] {
        let repo_creds = init(&dir.path().join(&fetcher[10..]), "sha512");
        let out = ok(
            &repo_creds,
            &[
                "oci",
                "pull",
                "--tls-verify=false",
                fetcher,
                "--creds",
                "cfs:cfs-secret",
                &remote,
                "x",
            ],
        );
        assert_eq!(
            field(&out, "manifest"),
            field(&direct, "manifest"),
            "{fetcher}"
        );
        let expected_via = if fetcher.ends_with("auto") {
            "registry"
        } else {
            "skopeo"
        };
        assert!(
            field(&out, "via").starts_with(expected_via),
            "{fetcher}: {out}"
        );
    }
    let err = fails(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--creds",
            "cfs",
            &remote,
        ],
    );
    assert!(err.contains("a password cannot be asked for"), "{err}");
    // The rejected value is not echoed.
    let err = fails(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--creds",
            "s3cr3t",
            &remote,
        ],
    );
    assert!(!err.contains("s3cr3t"), "{err}");
    let err = fails(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--creds",
            "cfs:nope",
            &remote,
            "z",
        ],
    );
    assert!(err.contains("401"), "{err}");

    // A wrong password: refused, with the registry's own word for it.
    auth_file(&auth, registry.port(), "cfs:wrong");
    let err = fails(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--authfile",
            auth_arg,
            &remote,
            "y",
        ],
    );
    assert!(
        err.contains("401") && err.contains(&registry.port().to_string()),
        "{err}"
    );
    assert!(!ok(&repo, &["oci", "images"]).contains('y'));
    assert_fsck_clean(&repo);
    drop(registry);
}

#[test]
fn oci_pull_from_a_registry_with_bearer_tokens() {
    if let Some(why) = missing_programs(&["skopeo", "docker-registry", "openssl"]) {
        skip(
            "pull from a loopback registry with token authentication",
            &why,
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), Compress::Zstd(1));
    let tokens = TokenServer::start(&dir.path().join("tokens"));
    let registry =
        Registry::start_configured(&dir.path().join("registry"), &tokens.registry_config());
    let remote = registry.push(&layout.dir, "t", "cfs/vector");
    let repo = init(dir.path(), "sha256");
    let before = tokens.issued();
    let out = ok(&repo, &["oci", "pull", "--tls-verify=false", &remote, "x"]);
    assert_eq!(field(&out, "verity"), testutil::VECTOR_ID_SHA256, "{out}");
    assert!(field(&out, "via").starts_with("registry"), "{out}");
    assert!(tokens.issued() > before, "no token was asked for");
    let again = ok(&repo, &["oci", "pull", "--tls-verify=false", &remote, "x"]);
    assert!(again.contains("(0 fetched, 2 already present)"), "{again}");
    // With --fetcher=direct the same works; a transport only skopeo reads is refused.
    ok(
        &repo,
        &[
            "oci",
            "pull",
            "--tls-verify=false",
            "--fetcher=direct",
            &remote,
            "x",
        ],
    );
    let archive = dir.path().join("image.tar");
    skopeo(&[
        "copy",
        &layout.reference("t"),
        &format!("oci-archive:{}", archive.display()),
    ]);
    let err = fails(
        &repo,
        &[
            "oci",
            "pull",
            "--fetcher=direct",
            &format!("oci-archive:{}", archive.display()),
        ],
    );
    assert!(err.contains("read directly"), "{err}");
    assert_fsck_clean(&repo);
    drop(registry);
}

// ---------------------------------------------------------------------------------------------
// Mounts
// ---------------------------------------------------------------------------------------------

fn check_mounted_vector(mnt: &Path) {
    assert_eq!(
        std::fs::read(mnt.join("usr/bin/hello")).expect("hello"),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(
        std::fs::read(mnt.join("usr/bin/big2")).expect("big2"),
        [b'A'; 100]
    );
    assert_eq!(
        std::fs::read_link(mnt.join("usr/bin/sh")).expect("sh"),
        PathBuf::from("hello")
    );
    assert_eq!(
        std::fs::read(mnt.join("etc/hostname")).expect("hostname"),
        b"box\n"
    );
    assert!(!mnt.join("etc/os-release").exists());
    assert!(std::fs::read_dir(mnt.join("run"))
        .expect("run")
        .next()
        .is_none());
}

/// Pull the vector (stored as `compress`) into a new repository of `algorithm`, mount it with
/// `cfsctl oci mount MOUNT_ARGS… vec MNT`, check what the mount shows and unmount it.
fn mount_and_check_vector(compress: Compress, algorithm: &str, mount_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (layout, _) = vector_layout(dir.path(), compress);
    let repo = init(dir.path(), algorithm);
    let source = layout.reference("t");
    ok(&repo, &["oci", "pull", &source, "vec"]);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mut args = vec!["oci", "mount"];
    args.extend(mount_args);
    args.extend(["vec", mnt.to_str().expect("utf-8")]);
    ok(&repo, &args);
    let guard = common::MountGuard::adopt(&mnt);
    check_mounted_vector(&mnt);
    drop(guard);
}

#[test]
fn mount_oci_image_kernel() {
    if let Some(why) = root_unavailable("mounting").or_else(kernel_mount_unavailable) {
        skip("oci mount (kernel)", &why);
        return;
    }
    mount_and_check_vector(Compress::Gzip(1), "sha256", &[]);
}

#[test]
fn fuse_oci_image_mount() {
    if let Some(why) = root_unavailable("mounting FUSE") {
        skip("oci mount --fuse", &why);
        return;
    }
    if !Path::new("/dev/fuse").exists() {
        skip("oci mount --fuse", "/dev/fuse");
        return;
    }
    mount_and_check_vector(Compress::Zstd(1), "sha512", &["--fuse"]);
}

/// SIGKILL during pulls, at several moments: the repository stays consistent every time, no tag
/// appears before the image is complete, and the next pull finishes, fetching only what is
/// missing.
#[test]
fn oci_pull_killed_at_random_moments_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = Layout::create(&dir.path().join("oci"));
    let mut layers = Vec::new();
    for l in 0..4u32 {
        let mut entries = vec![Entry::dir("usr/", 0o755, 1)];
        for i in 0..30u32 {
            let content: Vec<u8> = (0..200_000u32)
                .map(|b| (b.wrapping_mul(31) ^ i ^ (l << 3)) as u8)
                .collect();
            entries.push(Entry::file(&format!("usr/l{l}-{i}"), 0o644, 2, &content));
        }
        layers.push(Layer::gzip(&entries));
    }
    layout.add_image("big", &layers);
    let image = layout.reference("big");
    // The reference result, in a repository of its own.
    let reference = init(&dir.path().join("ref"), "sha256");
    let want = field(&ok(&reference, &["oci", "pull", &image, "big"]), "verity").to_owned();

    let repo = init(dir.path(), "sha256");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(20 + seed % 600);
        let mut child = Command::new(env!("CARGO_BIN_EXE_cfsctl"))
            .arg("--repo")
            .arg(&repo)
            .args(["oci", "pull", &image, "big"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cfsctl");
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait");
        assert_fsck_clean(&repo);
        let images = ok(&repo, &["oci", "images", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&images).expect("json");
        if status.success() {
            assert_eq!(v[0]["image_id"], want.as_str(), "round {round}");
        } else if let Some(first) = v.as_array().and_then(|a| a.first()) {
            // Killed after the tag was written: the image must be complete.
            assert_eq!(first["image_id"], want.as_str(), "round {round}: {images}");
        }
        let out = ok(&repo, &["oci", "pull", &image, "big"]);
        assert_eq!(field(&out, "verity"), want, "round {round}");
        assert!(ok(&repo, &["oci", "fsck", "big"]).contains("ok big"));
        // Start the next round from nothing tagged, with garbage collected at times.
        ok(&repo, &["oci", "untag", "big"]);
        if round % 3 == 2 {
            ok(&repo, &["gc"]);
        }
    }
    // After a completed pull, a re-pull fetches nothing.
    ok(&repo, &["oci", "pull", &image, "big"]);
    let again = ok(&repo, &["oci", "pull", &image, "big"]);
    assert!(again.contains("(0 fetched, 4 already present)"), "{again}");
}
