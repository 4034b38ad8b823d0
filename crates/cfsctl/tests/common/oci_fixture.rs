//! OCI images for the integration tests, and the real tools around them:
//! - images built from a description (layers of `cfs_oci::testutil` entries: whiteouts, opaque
//!   directories, hardlinks across layers, `security.capability`, devices, long names, gzip and
//!   zstd blobs, a large layer) and written as an `oci:` layout;
//! - [`Registry`]: Debian's `docker-registry` on 127.0.0.1 (free port, temporary storage and
//!   config), which [`Registry::push`] fills with `skopeo copy`; stopped by PID when dropped;
//! - [`umoci_rootfs`]: what `umoci unpack` makes of a pushed image, the reference a pulled and
//!   mounted image is compared against.
//!
//! Declared by each test file that needs it with
//! `#[path = "common/oci_fixture.rs"] mod oci_fixture;` (not from `common/mod.rs`, which other
//! crates' tests include too, without `cfs-oci`'s test fixtures).

// Every test binary uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cfs_oci::testutil::{self, Compress, Entry, Kind, Layer, Layout};

use crate::common::{describe_output, pattern, run_ok, run_with_timeout, ChildGuard};

/// Time limit for one skopeo or umoci run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the registry may take to answer `GET /v2/`.
const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the named programs cannot be run (the first one not found in `PATH`), or `None`.
pub fn missing_programs(programs: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    programs
        .iter()
        .find(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .map(|p| {
            format!(
                "the {p} program (Debian packages: skopeo docker-registry umoci; \
                 scripts/install-deps.sh installs them)"
            )
        })
}

/// Run skopeo with `args`; panics with its output unless it succeeds.
pub fn skopeo(args: &[&str]) -> Output {
    run_ok(
        Command::new("skopeo")
            .args(args)
            .env_remove("CONTAINERS_STORAGE_CONF"),
        TOOL_TIMEOUT,
    )
}

// ---------------------------------------------------------------------------------------------
// cfsctl
// ---------------------------------------------------------------------------------------------

/// Time limit for one cfsctl run.
pub const CFSCTL_TIMEOUT: Duration = Duration::from_secs(300);

/// `cfsctl --repo REPO ARGS…` (time limit [`CFSCTL_TIMEOUT`]).
pub fn cfsctl(repo: &Path, args: &[&str]) -> Output {
    cfsctl_env(repo, args, &[])
}

/// [`cfsctl`] with the variables `env` set.
pub fn cfsctl_env(repo: &Path, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cfsctl"));
    cmd.arg("--repo").arg(repo).args(args);
    // The tests check which way a pull came, so the caller's own containers configuration
    // (proxies, policy, registries.conf, auth files) must not change it: the registries are on
    // loopback, and HOME is an empty directory, which leaves the machine's /etc/containers.
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "XDG_CONFIG_HOME",
        "XDG_RUNTIME_DIR",
        "REGISTRY_AUTH_FILE",
        "DOCKER_CONFIG",
        "CONTAINERS_REGISTRIES_CONF",
        // Extra trusted CAs, for cfsctl (rustls) and skopeo (Go) alike.
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "CONTAINERS_STORAGE_CONF",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", empty_home());
    cmd.envs(env.iter().copied());
    run_with_timeout(&mut cmd, CFSCTL_TIMEOUT)
        .unwrap_or_else(|e| panic!("running cfsctl {args:?}: {e}"))
}

/// An empty directory (shared, never written) to serve as `HOME` for cfsctl and what it runs.
fn empty_home() -> &'static Path {
    static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let dir = std::env::temp_dir().join("cfs-test-empty-home");
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        dir
    })
}

/// [`cfsctl`], which must succeed; returns its stdout.
pub fn ok(repo: &Path, args: &[&str]) -> String {
    ok_env(repo, args, &[])
}

/// [`cfsctl_env`], which must succeed; returns its stdout.
pub fn ok_env(repo: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = cfsctl_env(repo, args, env);
    assert!(
        out.status.success(),
        "cfsctl {args:?} failed\n{}",
        describe_output(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// [`cfsctl`], which must fail; returns its stderr.
pub fn fails(repo: &Path, args: &[&str]) -> String {
    fails_env(repo, args, &[])
}

/// [`cfsctl_env`], which must fail; returns its stderr.
pub fn fails_env(repo: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = cfsctl_env(repo, args, env);
    assert!(
        !out.status.success(),
        "cfsctl {args:?} should fail\n{}",
        describe_output(&out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of the `key value…` line of `oci pull` output.
pub fn field<'a>(out: &'a str, key: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {key:?} line in {out:?}"))
}

/// A new insecure repository `DIR/repo-ALGORITHM` (`sha256` or `sha512`).
pub fn init(dir: &Path, algorithm: &str) -> PathBuf {
    let repo = dir.join(format!("repo-{algorithm}"));
    ok(
        &repo,
        &[
            "init",
            "--insecure",
            "--algorithm",
            &format!("fsverity-{algorithm}-12"),
        ],
    );
    repo
}

/// The names (digests in hex) of every object in the repository.
pub fn objects(repo: &Path) -> BTreeSet<String> {
    object_files(repo).into_keys().collect()
}

/// Every object in the repository: digest in hex → its file.
pub fn object_files(repo: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for d in std::fs::read_dir(repo.join("objects")).expect("objects") {
        let d = d.expect("entry");
        for f in std::fs::read_dir(d.path()).expect("subdir") {
            let f = f.expect("entry");
            out.insert(
                format!(
                    "{}{}",
                    d.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ),
                f.path(),
            );
        }
    }
    out
}

/// `cfsctl fsck` reports nothing.
pub fn assert_fsck_clean(repo: &Path) {
    let out = ok(repo, &["fsck"]);
    assert!(!out.contains("fsck:"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

/// A `docker-registry` serving plain HTTP on 127.0.0.1 from a temporary directory. Dropping it
/// kills the process (SIGKILL by PID) and reaps it, also when a test panics.
#[derive(Debug)]
pub struct Registry {
    child: ChildGuard,
    port: u16,
    log: PathBuf,
    data: PathBuf,
}

impl Registry {
    /// Start a registry whose config, storage and log live under `dir` (created if needed), on
    /// a free port, and wait until `GET /v2/` answers 200. A port taken between choosing and
    /// binding it (the registry then exits at once) is retried with another one.
    pub fn start(dir: &Path) -> Registry {
        Self::start_configured(dir, "")
    }

    /// Like [`Registry::start`], with `extra` (YAML, e.g. an `auth:` section) appended to the
    /// registry's config.
    pub fn start_configured(dir: &Path, extra: &str) -> Registry {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        let mut last_failure = String::new();
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port on 127.0.0.1")
                .port();
            let config = dir.join(format!("registry-{attempt}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  \
                     addr: 127.0.0.1:{port}\n{extra}",
                    dir.join("data").display()
                ),
            )
            .expect("write the registry config");
            let log = dir.join(format!("registry-{attempt}.log"));
            let log_file = std::fs::File::create(&log).expect("create the registry log");
            let child = ChildGuard::spawn(
                Command::new("docker-registry")
                    .arg("serve")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(log_file),
            );
            let mut registry = Registry {
                child,
                port,
                log,
                data: dir.join("data"),
            };
            match registry.wait_until_ready() {
                Ok(()) => return registry,
                Err(why) => last_failure = why,
            }
        }
        panic!("docker-registry did not start: {last_failure}");
    }

    /// Poll `GET /v2/` until it answers as a registry (or, serving HTTPS, refuses plain HTTP),
    /// the process exits, or the time runs out.
    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
        loop {
            if self.answers() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait() {
                return Err(format!(
                    "it exited ({status}) on port {}; its log:\n{}",
                    self.port,
                    self.log_text()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "GET /v2/ on port {} gave no 200 within {REGISTRY_START_TIMEOUT:?}; its \
                     log:\n{}",
                    self.port,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether plain-HTTP `GET /v2/` answers 200 (or 401, when it wants authentication) with
    /// the registry's API-version header, or gets Go's refusal of plain HTTP on an HTTPS port.
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply).to_ascii_lowercase();
        let status_ok = [
            "http/1.0 200",
            "http/1.1 200",
            "http/1.0 401",
            "http/1.1 401",
        ]
        .iter()
        .any(|s| reply.starts_with(s));
        // A registry serving HTTPS answers plain HTTP with Go's own refusal.
        let https = reply.starts_with("http/1.0 400")
            && reply.contains("client sent an http request to an https server");
        https || (status_ok && reply.contains("docker-distribution-api-version: registry/2.0"))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(unreadable: {e})"))
    }

    /// Where the registry keeps the blob `digest` (`sha256:…`) it serves.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `docker://127.0.0.1:PORT/NAME:TAG`.
    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("docker://127.0.0.1:{}/{name}:{tag}", self.port)
    }

    /// Push `oci:LAYOUT:TAG` as `NAME:TAG` with skopeo; returns the `docker://` reference.
    pub fn push(&self, layout: &Path, tag: &str, name: &str) -> String {
        self.push_as(layout, tag, name, None)
    }

    /// [`Registry::push`] with `USER:PASSWORD` credentials.
    pub fn push_as(&self, layout: &Path, tag: &str, name: &str, creds: Option<&str>) -> String {
        let remote = self.reference(name, tag);
        let source = format!("oci:{}:{tag}", layout.display());
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        if let Some(creds) = creds {
            args.extend(["--dest-creds", creds]);
        }
        args.extend([source.as_str(), remote.as_str()]);
        skopeo(&args);
        remote
    }
}

// ---------------------------------------------------------------------------------------------
// umoci
// ---------------------------------------------------------------------------------------------

/// The media types of the layers of `remote` (`docker://…` on a plain-HTTP registry), as its
/// manifest lists them.
pub fn remote_layer_media_types(remote: &str) -> Vec<String> {
    let out = skopeo(&["inspect", "--tls-verify=false", "--raw", remote]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the manifest is JSON");
    manifest["layers"]
        .as_array()
        .expect("manifest layers")
        .iter()
        .map(|l| l["mediaType"].as_str().expect("mediaType").to_owned())
        .collect()
}

/// The config digest of the image tagged `tag` in the OCI layout at `dir`.
pub fn layout_config_digest(dir: &Path, tag: &str) -> String {
    layout_manifest(dir, tag)["config"]["digest"]
        .as_str()
        .expect("manifest config digest")
        .to_owned()
}

/// The layer blob digests of the manifest tagged `tag` in the OCI layout `dir`, base first.
pub fn layout_layer_digests(dir: &Path, tag: &str) -> Vec<String> {
    layout_manifest(dir, tag)["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["digest"].as_str().expect("layer digest").to_owned())
        .collect()
}

/// The manifest tagged `tag` in the OCI layout `dir`.
fn layout_manifest(dir: &Path, tag: &str) -> serde_json::Value {
    let read_json = |p: PathBuf| -> serde_json::Value {
        let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {p:?}: {e}"))
    };
    let index = read_json(dir.join("index.json"));
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no tag {tag:?} in {dir:?}/index.json: {index}"))
        .to_owned();
    let hex = manifest.strip_prefix("sha256:").expect("a sha256 digest");
    read_json(dir.join("blobs/sha256").join(hex))
}

/// Copy `remote` (`docker://…` on a plain-HTTP registry) into a fresh layout under `work` and
/// `umoci unpack` it there (as root: owners, devices and `security.*` xattrs are restored);
/// returns the bundle's `rootfs`.
///
/// umoci 0.4.7 cannot read zstd layers ("blob is not correct mediatype"), so skopeo turns them
/// into gzip ones on the way (`--dest-compress --dest-compress-format gzip`). That changes
/// blobs, not their tar streams: the config, and with it every layer's diff_id, is copied
/// verbatim, and this checks that it was.
pub fn umoci_rootfs(remote: &str, work: &Path) -> PathBuf {
    std::fs::create_dir_all(work).unwrap_or_else(|e| panic!("mkdir {work:?}: {e}"));
    let layout = work.join("umoci-layout");
    let bundle = work.join("umoci-bundle");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        "--dest-compress",
        "--dest-compress-format",
        "gzip",
        remote,
        &format!("oci:{}:ref", layout.display()),
    ]);
    let inspected = skopeo(&["inspect", "--tls-verify=false", "--raw", "--config", remote]);
    let want = cfs_oci::OciDigest::of(cfs_oci::DigestAlgorithm::Sha256, &inspected.stdout);
    assert_eq!(
        layout_config_digest(&layout, "ref"),
        want.to_string(),
        "the gzip copy for umoci must keep the config (and so every diff_id)"
    );
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:ref", layout.display()))
            .arg(&bundle),
        TOOL_TIMEOUT,
    );
    bundle.join("rootfs")
}

// ---------------------------------------------------------------------------------------------
// Images from a description
// ---------------------------------------------------------------------------------------------

/// One layer of an image description: its entries in tar order, and how its blob is stored.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub entries: Vec<Entry>,
    pub compress: Compress,
}

impl LayerSpec {
    /// The layer: the entries as a tar, compressed as described.
    pub fn build(&self) -> Layer {
        Layer::new(testutil::tar(&self.entries), self.compress)
    }
}

/// Write the image made of `layers` into the OCI layout at `dir` (created or extended), tagged
/// `tag`.
pub fn write_image(dir: &Path, tag: &str, layers: &[Layer]) -> Layout {
    let layout = Layout::create(dir);
    layout.add_image(tag, layers);
    layout
}

/// A valid `security.capability` value (VFS_CAP_REVISION_2, effective, `cap_net_raw`
/// permitted). The kernel refuses to store a malformed one, so umoci could not restore it.
pub const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // magic_etc: revision 2 | effective
    0x00, 0x20, 0x00, 0x00, // permitted[0]: bit 13, CAP_NET_RAW
    0, 0, 0, 0, // inheritable[0]
    0, 0, 0, 0, // permitted[1]
    0, 0, 0, 0, // inheritable[1]
];

/// The mtime of every fixture entry (not compared against umoci: it does not keep directory
/// mtimes that later entries touch).
const MTIME: u64 = 1_700_000_000;

/// A 255-byte name (the longest a component can be).
pub fn long_component(c: char) -> String {
    std::iter::repeat_n(c, 255).collect()
}

/// `long/<255×a>/<255×b>`: a directory path of 517 bytes.
pub fn long_dir() -> String {
    format!("long/{}/{}", long_component('a'), long_component('b'))
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry::dir(path, mode, MTIME)
}

fn file(path: &str, mode: u32, content: &[u8]) -> Entry {
    Entry::file(path, mode, MTIME, content)
}

fn special(path: &str, kind: Kind, mode: u32) -> Entry {
    Entry::new(path, kind, mode, MTIME)
}

/// The three layers of the acceptance image, `large` bytes of file data in the base layer:
///
/// 1. base (gzip, 3 members): a root entry, `/usr` with setuid, capability, inline (≤ 64 bytes),
///    empty and external files, hardlinks, relative and absolute and long symlinks; `/etc`;
///    owners other than root; a sticky `/tmp`; char and block devices and a FIFO; `/run` with
///    content; a 255-byte name and a path over 255 bytes; `/usr/share/big` with the large files;
///    what the later layers delete, replace or make opaque.
/// 2. middle (zstd, 2 frames): an opaque directory with new metadata and content, hardlinks to
///    files of layer 1 (one with a capability, one through a long path), a file replaced by a
///    directory, a file replaced by another.
/// 3. top (gzip): whiteouts of a file, of one name of a hardlink pair, of a directory tree, and
///    of a hardlink added by layer 2; a directory replaced by a symlink; a hardlinked name
///    replaced by a new file; a name whited out and re-created in the same layer.
pub fn acceptance_layers(large: usize) -> Vec<LayerSpec> {
    let long = long_dir();
    let mut base = vec![
        dir("./", 0o700),
        dir("usr/", 0o755),
        dir("usr/bin/", 0o755),
        file("usr/bin/ping", 0o755, &pattern(1, 3000)).xattr("security.capability", &CAP_NET_RAW),
        file("usr/bin/su", 0o4755, &pattern(2, 70)),
        file("usr/bin/wall", 0o2755, &pattern(3, 65)).owner(0, 5),
        file("usr/bin/tiny", 0o755, b"#!/bin/sh\nexit 0\n"),
        file("usr/bin/empty", 0o644, b""),
        file("usr/bin/a", 0o644, &pattern(4, 100)),
        Entry::hardlink("usr/bin/b", "usr/bin/a"),
        file("usr/bin/inline", 0o640, &pattern(5, 64)).owner(1000, 1000),
        Entry::symlink("usr/bin/sh", "tiny", MTIME),
        Entry::symlink("usr/bin/abs", "/usr/bin/tiny", MTIME),
        Entry::symlink("usr/bin/dangling", "../nowhere/at/all", MTIME),
        Entry::symlink(
            "usr/bin/longlink",
            &format!("../../{long}/file-in-long-dir"),
            MTIME,
        ),
        dir("usr/lib/", 0o755),
        file("usr/lib/libx.so.1", 0o755, &pattern(6, 5000)).xattr("user.origin", b"fixture"),
        Entry::symlink("usr/lib/libx.so", "libx.so.1", MTIME),
        dir("usr/games/", 0o755),
        file("usr/games/tetris", 0o755, &pattern(7, 300)),
        dir("usr/games/data/", 0o755),
        file("usr/games/data/levels", 0o644, &pattern(8, 200)),
        dir("usr/share/", 0o755),
        dir("usr/share/big/", 0o755),
        dir("etc/", 0o755),
        file("etc/os-release", 0o644, b"ID=cfs-test\n"),
        file("etc/gone", 0o644, b"whited out by layer 3\n"),
        file("etc/linked", 0o644, &pattern(9, 150)),
        Entry::hardlink("usr/bin/linked-etc", "etc/linked"),
        file("etc/shadow", 0o640, b"root:*:19000:0:99999:7:::\n").owner(0, 42),
        dir("opt/", 0o755),
        dir("opt/app/", 0o755).owner(1000, 1000),
        file("opt/app/old", 0o644, &pattern(10, 90)),
        dir("opt/app/sub/", 0o755),
        file("opt/app/sub/deep", 0o644, b"deep\n"),
        dir("srv/", 0o755),
        dir("srv/data/", 0o755),
        file("srv/data/f", 0o644, &pattern(11, 80)),
        dir("var/", 0o755),
        file("var/x", 0o644, b"a file that becomes a directory\n"),
        file("var/replaced", 0o644, &pattern(12, 120)),
        dir("home/", 0o755),
        dir("home/user/", 0o700).owner(1000, 1000),
        file("home/user/notes", 0o600, &pattern(13, 700)).owner(1000, 1000),
        dir("tmp/", 0o1777),
        dir("dev/", 0o755),
        special("dev/null", Kind::Char(1, 3), 0o666),
        special("dev/zero", Kind::Char(1, 5), 0o666),
        special("dev/loop0", Kind::Block(7, 0), 0o660).owner(0, 6),
        special("dev/sda1", Kind::Block(8, 1), 0o660).owner(0, 6),
        special("dev/initctl", Kind::Fifo, 0o600),
        dir("run/", 0o755),
        dir("run/lock/", 0o1777),
        file("run/pid", 0o644, b"1\n"),
        dir("long/", 0o755),
        dir(&format!("long/{}/", long_component('a')), 0o755),
        dir(&format!("{long}/"), 0o755),
        file(&format!("{long}/file-in-long-dir"), 0o644, &pattern(14, 99)),
        file(
            &format!("long/{}", long_component('f')),
            0o644,
            b"a 255-byte name\n",
        ),
    ];
    // The large files: four equal parts.
    let part = large / 4;
    for i in 0..4u64 {
        base.push(file(
            &format!("usr/share/big/blob{i}"),
            0o644,
            &pattern(100 + i, part),
        ));
    }
    let middle = vec![
        dir("opt/app/", 0o750).owner(1000, 100),
        file("opt/app/.wh..wh..opq", 0o644, b""),
        file("opt/app/new", 0o644, &pattern(20, 500)),
        dir("opt/app/newdir/", 0o755),
        file("opt/app/newdir/x", 0o644, b"x\n"),
        Entry::hardlink("usr/bin/c", "usr/bin/a"),
        Entry::hardlink("usr/bin/ping6", "usr/bin/ping"),
        Entry::hardlink(
            &format!("{long}/hardlink-in-long-dir"),
            &format!("{long}/file-in-long-dir"),
        ),
        Entry::hardlink("usr/bin/gone-link", "usr/bin/tiny"),
        dir("var/x/", 0o755),
        file("var/x/inside", 0o644, &pattern(21, 200)),
        file("var/replaced", 0o600, &pattern(22, 130)).owner(7, 7),
        file("etc/os-release", 0o644, b"ID=cfs-test\nVERSION_ID=2\n"),
    ];
    let top = vec![
        file("etc/.wh.gone", 0o644, b""),
        file("etc/.wh.linked", 0o644, b""),
        file("usr/.wh.games", 0o644, b""),
        file("usr/bin/.wh.gone-link", 0o644, b""),
        file("usr/bin/.wh.nothing-there", 0o644, b""),
        Entry::symlink("srv/data", "../var/x", MTIME),
        file("usr/bin/b", 0o755, &pattern(30, 100)),
        file("usr/bin/.wh.tiny", 0o644, b""),
        file("usr/bin/tiny", 0o700, b"#!/bin/sh\nexit 1\n"),
        dir("tmp/", 0o1777),
        file("etc/motd", 0o644, b"pulled from a registry\n"),
    ];
    vec![
        LayerSpec {
            entries: base,
            compress: Compress::Gzip(3),
        },
        LayerSpec {
            entries: middle,
            compress: Compress::Zstd(2),
        },
        LayerSpec {
            entries: top,
            compress: Compress::Gzip(1),
        },
    ]
}

/// Another top layer for the acceptance image's base layer: a second image sharing that base.
pub fn sibling_top_layer() -> LayerSpec {
    LayerSpec {
        entries: vec![
            dir("srv/", 0o755),
            file("srv/sibling", 0o644, &pattern(40, 4000)),
            file("srv/sibling-small", 0o644, b"small\n"),
            file("usr/share/big/.wh.blob3", 0o644, b""),
        ],
        compress: Compress::Zstd(1),
    }
}

// ---------------------------------------------------------------------------------------------
// A certificate authority, for a registry serving HTTPS
// ---------------------------------------------------------------------------------------------

/// A throwaway certificate authority (made with the `openssl` program) and the server
/// certificate it signed for 127.0.0.1.
#[derive(Debug)]
pub struct TestCa {
    /// The CA's certificate (PEM): what a client must trust.
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    /// Make the CA and the server certificate under `dir`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {dir:?}: {e}"));
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca-key.pem");
        let cert = dir.join("server.pem");
        let key = dir.join("server-key.pem");
        let request = dir.join("server.csr");
        let extensions = dir.join("server.ext");
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "2", "-subj", "/CN=cfs test CA"])
                .args(new_key)
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca),
            TOOL_TIMEOUT,
        );
        run_ok(
            Command::new("openssl")
                .args(["req", "-subj", "/CN=127.0.0.1"])
                .args(new_key)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&request),
            TOOL_TIMEOUT,
        );
        // A leaf for 127.0.0.1: rustls refuses a CA certificate as a server's own.
        std::fs::write(
            &extensions,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the certificate extensions");
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-set_serial", "1", "-in"])
                .arg(&request)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(&cert),
            TOOL_TIMEOUT,
        );
        TestCa { ca, cert, key }
    }

    /// The registry config section (under `http:`) that serves HTTPS with this certificate.
    pub fn registry_config(&self) -> String {
        format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// A token server, for a registry with bearer-token authentication
// ---------------------------------------------------------------------------------------------

/// The service name the registry and its tokens share.
pub const TOKEN_SERVICE: &str = "cfs-registry";
const TOKEN_ISSUER: &str = "cfs-token-issuer";

fn base64(data: &[u8], url: bool) -> String {
    use base64::Engine as _;
    if url {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    } else {
        base64::engine::general_purpose::STANDARD.encode(data)
    }
}

/// The token server of Docker's token authentication (the `realm` of a `Bearer` challenge), on
/// 127.0.0.1: it grants every requested scope to anyone, as JWTs signed (by the `openssl`
/// program) with a self-signed RSA key that the registry trusts. It counts the tokens it
/// issues. Stopped when dropped.
#[derive(Debug)]
pub struct TokenServer {
    port: u16,
    cert: PathBuf,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Make a key and certificate under `dir` and start serving.
    pub fn start(dir: &Path) -> TokenServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;
        std::fs::create_dir_all(dir).expect("token server dir");
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=cfs-token-issuer", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            TOOL_TIMEOUT,
        );
        let der = run_ok(
            Command::new("openssl")
                .args(["x509", "-outform", "DER", "-in"])
                .arg(&cert),
            TOOL_TIMEOUT,
        )
        .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").expect("token server port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let header = base64(
            format!(
                r#"{{"typ":"JWT","alg":"RS256","x5c":["{}"]}}"#,
                base64(&der, false)
            )
            .as_bytes(),
            true,
        );
        let (issued_by_thread, stop_thread, work) = (issued.clone(), stop.clone(), dir.to_owned());
        let thread = std::thread::spawn(move || {
            while !stop_thread.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if serve_token(stream, &header, &key, &work) {
                            issued_by_thread.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenServer {
            port,
            cert,
            issued,
            stop,
            thread: Some(thread),
        }
    }

    /// The registry config section that makes it ask for our tokens.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    \
             issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            self.port,
            self.cert.display()
        )
    }

    /// Tokens issued so far.
    pub fn issued(&self) -> usize {
        self.issued.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `%XX` decoding of a query value.
fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => out.push(b),
                    Err(_) => out.extend_from_slice(&bytes[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answer one token request; whether a token was issued.
fn serve_token(mut stream: TcpStream, header: &str, key: &Path, work: &Path) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request).into_owned();
    let target = text.split_whitespace().nth(1).unwrap_or("");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    // Every `scope=repository:NAME:ACTIONS` is granted.
    let access: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(unescape)
        .filter_map(|scope| {
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<String> = actions.split(',').map(|a| format!("{a:?}")).collect();
            Some(format!(
                r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#,
                actions.join(",")
            ))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    static SERIAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let jti = format!("{now}-{}-{serial}", std::process::id());
    let claims = format!(
        r#"{{"iss":"{TOKEN_ISSUER}","sub":"anyone","aud":"{TOKEN_SERVICE}","exp":{},"nbf":{},"iat":{now},"jti":"{jti}","access":[{}]}}"#,
        now + 600,
        now - 60,
        access.join(",")
    );
    let signing_input = format!("{header}.{}", base64(claims.as_bytes(), true));
    let input_file = work.join(format!("jwt-input-{jti}"));
    if std::fs::write(&input_file, &signing_input).is_err() {
        return false;
    }
    let signed = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-sign"])
        .arg(key)
        .arg(&input_file)
        .output();
    let _ = std::fs::remove_file(&input_file);
    let Some(signed) = signed.ok().filter(|o| o.status.success()) else {
        return false;
    };
    let token = format!("{signing_input}.{}", base64(&signed.stdout, true));
    let body = format!(r#"{{"token":"{token}","access_token":"{token}","expires_in":600}}"#);
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).is_ok()
}
