//! Test fixtures: tar layers built entry by entry (PAX records, raw — even malicious — paths),
//! compression helpers, hand-written OCI image layouts, the docs/formats.md §6 vector, and the images
//! every pull must refuse. Compiled for this crate's tests and for other crates' tests through
//! the `test-util` feature, so that the library's pull tests and cfsctl's `oci pull` tests
//! build the same images.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::digest::{DigestAlgorithm, OciDigest};

/// The kind of a fixture entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with this content.
    File(Vec<u8>),
    /// A symlink to this target.
    Symlink(Vec<u8>),
    /// A hardlink to this (raw) path.
    Hardlink(Vec<u8>),
    /// A character device.
    Char(u32, u32),
    /// A block device.
    Block(u32, u32),
    /// A FIFO.
    Fifo,
    /// A raw type flag with this body (e.g. `b'S'` for sparse).
    Raw(u8, Vec<u8>),
}

/// One entry of a fixture layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path exactly as it goes in the header (not validated: tests write `../x` too).
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Header mtime (seconds).
    pub mtime: u64,
    /// PAX records written before the entry.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// An entry of any kind (owner 0:0, no PAX records).
    pub fn new(path: &str, kind: Kind, mode: u32, mtime: u64) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            pax: Vec::new(),
        }
    }

    /// A directory.
    pub fn dir(path: &str, mode: u32, mtime: u64) -> Entry {
        Entry::new(path, Kind::Dir, mode, mtime)
    }

    /// A regular file.
    pub fn file(path: &str, mode: u32, mtime: u64, content: &[u8]) -> Entry {
        Entry::new(path, Kind::File(content.to_vec()), mode, mtime)
    }

    /// A symlink.
    pub fn symlink(path: &str, target: &str, mtime: u64) -> Entry {
        Entry::new(
            path,
            Kind::Symlink(target.as_bytes().to_vec()),
            0o777,
            mtime,
        )
    }

    /// A hardlink.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, Kind::Hardlink(target.as_bytes().to_vec()), 0o644, 0)
    }

    /// Add a PAX record.
    pub fn pax(mut self, key: &str, value: &[u8]) -> Entry {
        self.pax.push((key.to_owned(), value.to_vec()));
        self
    }

    /// Add an xattr (a `SCHILY.xattr.` PAX record).
    pub fn xattr(self, name: &str, value: &[u8]) -> Entry {
        self.pax(&format!("SCHILY.xattr.{name}"), value)
    }

    /// Set the owner.
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// One PAX record: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

fn set_raw_name(header: &mut tar::Header, name: &[u8]) {
    let field = &mut header.as_old_mut().name;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

/// The longest path or link target a ustar header holds without a PAX record.
const USTAR_NAME_MAX: usize = 100;

/// The entry's PAX records, plus `path` / `linkpath` records for a path or link target too long
/// for the ustar header (unless the entry sets them itself).
fn pax_records(e: &Entry) -> Vec<(String, Vec<u8>)> {
    let mut records = e.pax.clone();
    let has = |records: &[(String, Vec<u8>)], key: &str| records.iter().any(|(k, _)| k == key);
    if e.path.len() > USTAR_NAME_MAX && !has(&records, "path") {
        records.push(("path".to_owned(), e.path.clone()));
    }
    if let Kind::Symlink(t) | Kind::Hardlink(t) = &e.kind {
        if t.len() > USTAR_NAME_MAX && !has(&records, "linkpath") {
            records.push(("linkpath".to_owned(), t.clone()));
        }
    }
    records
}

/// Build an uncompressed tar from `entries` (ustar headers, PAX records as `x` entries; paths
/// and link targets over 100 bytes go in PAX `path` / `linkpath` records).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let pax = pax_records(e);
        if !pax.is_empty() {
            let data: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            set_raw_name(&mut h, b"PaxHeaders/entry");
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, &data[..]).expect("append pax");
        }
        // GNU sparse entries need a GNU header (the sparse map lives there).
        let mut h = if matches!(e.kind, Kind::Raw(b'S', _)) {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        let body: &[u8] = match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                &[]
            }
            Kind::File(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                c
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_link_name_literal(&t[..t.len().min(USTAR_NAME_MAX)])
                    .expect("link name");
                &[]
            }
            Kind::Hardlink(t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_link_name_literal(&t[..t.len().min(USTAR_NAME_MAX)])
                    .expect("link name");
                &[]
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.set_entry_type(if matches!(e.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma).expect("major");
                h.set_device_minor(*mi).expect("minor");
                &[]
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                &[]
            }
            Kind::Raw(t, body) => {
                h.set_entry_type(tar::EntryType::new(*t));
                if let Some(gnu) = h.as_gnu_mut() {
                    gnu.set_real_size(body.len() as u64);
                }
                body
            }
        };
        set_raw_name(&mut h, &e.path);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(body.len() as u64);
        h.set_cksum();
        b.append(&h, body).expect("append");
    }
    b.into_inner().expect("finish tar")
}

/// gzip `data` as one member.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_members(data, 1)
}

/// gzip `data` split into `parts` concatenated members.
pub fn gzip_members(data: &[u8], parts: usize) -> Vec<u8> {
    let step = data.len().div_ceil(parts.max(1)).max(1);
    let mut out = Vec::new();
    for chunk in data.chunks(step) {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(chunk).expect("gzip");
        out.extend(e.finish().expect("gzip"));
    }
    out
}

/// zstd `data` split into `parts` concatenated frames.
pub fn zstd_frames(data: &[u8], parts: usize) -> Vec<u8> {
    let step = data.len().div_ceil(parts.max(1)).max(1);
    let mut out = Vec::new();
    for chunk in data.chunks(step) {
        out.extend(zstd::stream::encode_all(chunk, 3).expect("zstd"));
    }
    out
}

/// How a fixture layer is stored in the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Plain tar.
    None,
    /// gzip with this many members.
    Gzip(usize),
    /// zstd with this many frames.
    Zstd(usize),
}

/// A layer to put in a layout.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// How to store it.
    pub compress: Compress,
    /// Override the config's diff_id (to test mismatches).
    pub diff_id: Option<OciDigest>,
    /// Store only the first `n` bytes of the (compressed) blob, with a descriptor that matches
    /// them: a truncated stream that is otherwise a valid blob.
    pub truncate_to: Option<usize>,
}

impl Layer {
    /// A layer of `tar` stored as `compress`.
    pub fn new(tar: Vec<u8>, compress: Compress) -> Layer {
        Layer {
            tar,
            compress,
            diff_id: None,
            truncate_to: None,
        }
    }

    /// Layers of each of `tars`, all stored as `compress`.
    pub fn all(tars: &[Vec<u8>], compress: Compress) -> Vec<Layer> {
        tars.iter()
            .map(|t| Layer::new(t.clone(), compress))
            .collect()
    }

    /// A layer of `entries`, gzipped as one member.
    pub fn gzip(entries: &[Entry]) -> Layer {
        Layer::new(tar(entries), Compress::Gzip(1))
    }

    /// A gzip layer of `usr/` and `etc/` (mode 0755, mtime 1) and then `more`.
    pub fn on_base(more: Vec<Entry>) -> Layer {
        let mut entries = vec![Entry::dir("usr/", 0o755, 1), Entry::dir("etc/", 0o755, 1)];
        entries.extend(more);
        Layer::gzip(&entries)
    }

    /// The diff_id the config will list.
    pub fn diff_id(&self) -> OciDigest {
        self.diff_id
            .clone()
            .unwrap_or_else(|| OciDigest::of(DigestAlgorithm::Sha256, &self.tar))
    }

    /// The blob as a layout stores it (compressed, then truncated) and its media type.
    pub fn blob(&self) -> (Vec<u8>, &'static str) {
        let (data, media_type) = match self.compress {
            Compress::None => (self.tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
            Compress::Gzip(n) => (
                gzip_members(&self.tar, n),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            Compress::Zstd(n) => (
                zstd_frames(&self.tar, n),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let data = match self.truncate_to {
            Some(n) => data[..n.min(data.len())].to_vec(),
            None => data,
        };
        (data, media_type)
    }

    /// The digest of [`Layer::blob`], the name of the blob in a layout.
    pub fn blob_digest(&self) -> OciDigest {
        OciDigest::of(DigestAlgorithm::Sha256, &self.blob().0)
    }
}

/// The ways of storing a layer that every pull must treat alike, each with a tag to use for it:
/// plain, and gzip and zstd as one member (frame) and as several.
pub const COMPRESSIONS: [(&str, Compress); 5] = [
    ("plain", Compress::None),
    ("gzip", Compress::Gzip(1)),
    ("gzip-multi", Compress::Gzip(3)),
    ("zstd", Compress::Zstd(1)),
    ("zstd-multi", Compress::Zstd(4)),
];

/// A hand-written OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`).
#[derive(Debug, Clone)]
pub struct Layout {
    /// Its directory.
    pub dir: PathBuf,
}

impl Layout {
    /// Create (or reuse) a layout at `dir`.
    pub fn create(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir blobs");
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("oci-layout");
        if !dir.join("index.json").exists() {
            fs::write(
                dir.join("index.json"),
                br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
            )
            .expect("index");
        }
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    /// `oci:DIR:TAG`, the image tagged `tag` here as an image reference.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    /// Store a blob; returns its digest and size.
    pub fn blob(&self, data: &[u8]) -> (OciDigest, u64) {
        let d = OciDigest::of(DigestAlgorithm::Sha256, data);
        fs::write(self.blob_path(&d), data).expect("write blob");
        (d, data.len() as u64)
    }

    /// Where the blob `d` lives.
    pub fn blob_path(&self, d: &OciDigest) -> PathBuf {
        self.dir.join("blobs/sha256").join(d.hex())
    }

    /// Write an image of `layers` tagged `tag`; returns the manifest digest.
    pub fn add_image(&self, tag: &str, layers: &[Layer]) -> OciDigest {
        let mut descriptors = Vec::new();
        for l in layers {
            let (data, media_type) = l.blob();
            let (d, size) = self.blob(&data);
            descriptors
                .push(json!({"mediaType": media_type, "digest": d.to_string(), "size": size}));
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id().to_string()).collect();
        let config = serde_json::to_vec(&json!({
            "architecture": crate::model::host_architecture(),
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .expect("config json");
        let (cd, csize) = self.blob(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": csize},
            "layers": descriptors,
        }))
        .expect("manifest json");
        let (md, msize) = self.blob(&manifest);
        let index_path = self.dir.join("index.json");
        let mut index: serde_json::Value =
            serde_json::from_slice(&fs::read(&index_path).expect("read index")).expect("index");
        let manifests = index["manifests"].as_array_mut().expect("manifests");
        manifests.retain(|m| m["annotations"]["org.opencontainers.image.ref.name"] != tag);
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md.to_string(),
            "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
        fs::write(&index_path, serde_json::to_vec(&index).expect("index json")).expect("index");
        md
    }

    /// One image per entry of [`COMPRESSIONS`], tagged with its name: layers of `tars`, all
    /// stored that way.
    pub fn add_compressions(&self, tars: &[Vec<u8>]) {
        for (tag, compress) in COMPRESSIONS {
            self.add_image(tag, &Layer::all(tars, compress));
        }
    }

    /// Flip every bit of the last byte of the blob `d` (its digest no longer matches).
    pub fn corrupt_blob(&self, d: &OciDigest) {
        let p = self.blob_path(d);
        let mut data = fs::read(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {p:?}: {e}"));
    }

    /// Remove the blob `d`.
    pub fn remove_blob(&self, d: &OciDigest) {
        let p = self.blob_path(d);
        fs::remove_file(&p).unwrap_or_else(|e| panic!("remove {p:?}: {e}"));
    }
}

/// What is done to a [`BadImage`]'s layout after the image is written.
#[derive(Debug, Clone)]
pub enum Damage {
    /// Nothing: the layers themselves are bad.
    None,
    /// This blob is removed.
    RemoveBlob(OciDigest),
    /// This blob's last byte is changed.
    CorruptBlob(OciDigest),
}

/// An image that every pull must refuse, naming what is wrong, without tagging anything.
#[derive(Debug, Clone)]
pub struct BadImage {
    /// What is wrong with it, for messages.
    pub name: &'static str,
    /// Its layers.
    pub layers: Vec<Layer>,
    /// What is done to the layout afterwards.
    pub damage: Damage,
    /// Strings the error must contain.
    pub want: Vec<String>,
}

impl BadImage {
    /// The tag of the image in its layout.
    pub const TAG: &'static str = "bad";

    /// Write the image as [`BadImage::TAG`] into a new layout at `dir`, then damage it.
    pub fn write(&self, dir: &Path) -> Layout {
        let layout = Layout::create(dir);
        layout.add_image(Self::TAG, &self.layers);
        match &self.damage {
            Damage::None => {}
            Damage::RemoveBlob(d) => layout.remove_blob(d),
            Damage::CorruptBlob(d) => layout.corrupt_blob(d),
        }
        layout
    }
}

/// Images with bad layers or blobs: `..` and absolute paths, writes through a symlink (in one
/// layer, and across two with a relative and with an absolute target), a hardlink to nothing, a sparse entry, a truncated blob, a wrong
/// diff_id, a missing blob and corrupt (gzip and plain) blobs.
pub fn bad_images() -> Vec<BadImage> {
    let mut out = Vec::new();
    let mut bad = |name, layers: Vec<Layer>, damage, want: &[&str]| {
        // Every error names the layer that holds the problem (the last one here) unless the
        // damage is to a blob, which the error names instead.
        let mut want: Vec<String> = want.iter().map(|w| (*w).to_owned()).collect();
        if matches!(damage, Damage::None) {
            want.insert(0, layers.last().expect("a layer").diff_id().to_string());
        }
        out.push(BadImage {
            name,
            layers,
            damage,
            want,
        });
    };
    let file = |path: &str, content: &[u8]| Entry::file(path, 0o644, 1, content);

    let dotdot = Layer::on_base(vec![file("etc/../../evil", b"x")]);
    bad(
        "dotdot",
        vec![dotdot],
        Damage::None,
        &["etc/../../evil", "'..'"],
    );
    let absolute = Layer::on_base(vec![file("/etc/passwd", b"x")]);
    bad(
        "absolute",
        vec![absolute],
        Damage::None,
        &["/etc/passwd", "absolute"],
    );
    let escape = Layer::on_base(vec![
        Entry::symlink("etc/link", "/tmp", 1),
        file("etc/link/owned", b"x"),
    ]);
    bad(
        "symlink-escape",
        vec![escape],
        Damage::None,
        &["etc/link/owned", "symlink"],
    );
    // The symlink in one layer, the write through it in the next.
    let up = Layer::on_base(vec![Entry::symlink("etc/up", "../..", 1)]);
    let through = Layer::gzip(&[file("etc/up/x", &[b'x'; 100])]);
    bad(
        "symlink-escape-across-layers",
        vec![up, through],
        Damage::None,
        &["etc/up/x", "symlink"],
    );
    let out_link = Layer::on_base(vec![Entry::symlink("etc/out", "/", 1)]);
    let through = Layer::gzip(&[file("etc/out/etc/passwd", b"root::0:0")]);
    bad(
        "symlink-to-root-across-layers",
        vec![out_link, through],
        Damage::None,
        &["etc/out/etc/passwd", "symlink"],
    );
    let hardlink = Layer::on_base(vec![Entry::hardlink("etc/h", "etc/nothing")]);
    bad(
        "hardlink-to-nothing",
        vec![hardlink],
        Damage::None,
        &["etc/h", "etc/nothing"],
    );
    let sparse = Layer::on_base(vec![Entry {
        kind: Kind::Raw(b'S', vec![]),
        ..file("etc/sparse", b"")
    }]);
    bad(
        "sparse",
        vec![sparse],
        Damage::None,
        &["etc/sparse", "sparse entries are not supported"],
    );
    let mut truncated = Layer::on_base(vec![file("etc/data", &vec![7u8; 200_000])]);
    truncated.truncate_to = Some(300);
    bad("truncated", vec![truncated], Damage::None, &[]);
    let mut wrong = Layer::on_base(vec![file("etc/f", &[1u8; 1000])]);
    wrong.diff_id = Some(OciDigest::of(DigestAlgorithm::Sha256, b"something else"));
    bad("diff-id", vec![wrong], Damage::None, &["diff_id mismatch"]);

    let gone = Layer::on_base(vec![file("etc/g", b"g")]);
    let d = gone.blob_digest();
    bad(
        "missing-blob",
        vec![Layer::on_base(vec![]), gone],
        Damage::RemoveBlob(d.clone()),
        &[&d.to_string(), "missing"],
    );
    // A corrupt gzip blob is refused by the decompressor's checksum (naming the layer), a
    // corrupt plain one by the blob digest.
    let corrupt = Layer::on_base(vec![file("etc/c", b"c")]);
    let (d, diff_id) = (corrupt.blob_digest(), corrupt.diff_id().to_string());
    bad(
        "corrupt-gzip-blob",
        vec![corrupt.clone()],
        Damage::CorruptBlob(d),
        &[&diff_id, "checksum"],
    );
    let plain = Layer::new(corrupt.tar, Compress::None);
    let d = plain.blob_digest();
    bad(
        "corrupt-plain-blob",
        vec![plain],
        Damage::CorruptBlob(d.clone()),
        &[&d.to_string()],
    );
    out
}

/// The two layers of the docs/formats.md §6 OCI vector (uncompressed PAX tars).
pub fn vector_layers() -> (Vec<u8>, Vec<u8>) {
    let layer1 = tar(&[
        Entry::dir("usr/", 0o755, 1_700_000_000)
            .xattr("security.selinux", b"system_u:object_r:usr_t:s0"),
        Entry::dir("usr/bin/", 0o755, 1_700_000_001),
        Entry::file(
            "usr/bin/hello",
            0o755,
            1_700_000_002,
            b"#!/bin/sh\necho hello\n",
        )
        .pax("mtime", b"1700000002.5")
        .xattr("security.capability", &[1, 0, 0, 2, 0, 0x20, 0, 0]),
        Entry::file("usr/bin/big", 0o644, 1_700_000_003, &[b'A'; 100]),
        Entry::hardlink("usr/bin/big2", "usr/bin/big"),
        Entry::symlink("usr/bin/sh", "hello", 1_700_000_004),
        Entry::dir("etc/", 0o755, 1_700_000_005),
        Entry::file("etc/os-release", 0o644, 1_700_000_006, b"ID=test\n").xattr("user.foo", b"bar"),
        Entry::dir("run/", 0o755, 1_700_000_007),
        Entry::file("run/x", 0o644, 1_700_000_007, b"x"),
    ]);
    let layer2 = tar(&[
        Entry::dir("etc/", 0o750, 1_700_000_100).owner(0, 10),
        Entry::file("etc/.wh.os-release", 0o644, 1_700_000_100, b""),
        Entry::file("etc/hostname", 0o644, 1_700_000_101, b"box\n"),
        Entry::file("usr/bin/.wh.big", 0o644, 1_700_000_100, b""),
    ]);
    (layer1, layer2)
}

/// The vector's layers (see [`vector_layers`]), stored as `compress`.
pub fn vector(compress: Compress) -> Vec<Layer> {
    let (l1, l2) = vector_layers();
    vec![Layer::new(l1, compress), Layer::new(l2, compress)]
}

/// A layout at `dir/oci` holding the vector stored as `compress`, tagged `t`; and its layers.
pub fn vector_layout(dir: &Path, compress: Compress) -> (Layout, Vec<Layer>) {
    let layout = Layout::create(&dir.join("oci"));
    let layers = vector(compress);
    layout.add_image("t", &layers);
    (layout, layers)
}

/// A layout at `dir/oci` with two images sharing the vector's layers (gzip): `a`, the vector,
/// and `b`, the vector and then `extra`.
pub fn shared_layers_layout(dir: &Path, extra: Layer) -> Layout {
    let layout = Layout::create(&dir.join("oci"));
    let mut layers = vector(Compress::Gzip(1));
    layout.add_image("a", &layers);
    layers.push(extra);
    layout.add_image("b", &layers);
    layout
}

/// `cfsctl oci dump` of the vector in a sha256 repository (docs/formats.md §6).
pub const VECTOR_DUMP_SHA256: &str = "/ 0 40755 5 0 0 0 1700000000.0 - - -
/etc 0 40750 2 0 10 0 1700000100.0 - - -
/etc/hostname 4 100644 1 0 0 0 1700000101.0 - box\\n -
/run 0 40755 2 0 0 0 1700000000.0 - - -
/usr 0 40755 3 0 0 0 1700000000.0 - - -
/usr/bin 0 40755 2 0 0 0 1700000001.0 - - -
/usr/bin/big2 100 100644 1 0 0 0 1700000003.0 e4/0425eaca55b3aca9994575b03b1585ff756c4684395fa144ee2642aeaf1d49 - e40425eaca55b3aca9994575b03b1585ff756c4684395fa144ee2642aeaf1d49
/usr/bin/hello 21 100755 1 0 0 0 1700000002.500000000 - #!/bin/sh\\necho\\x20hello\\n - security.capability=\\x01\\x00\\x00\\x02\\x00\\x20\\x00\\x00
/usr/bin/sh 5 120777 1 0 0 0 1700000004.0 hello - -
";

/// The vector's image id in a sha256 repository (V1).
pub const VECTOR_ID_SHA256: &str =
    "a11e593ca6474157235967fb08b74250498424afe0ca2c27f38684cac59fed83";
/// The vector's image id in a sha512 repository (V1).
pub const VECTOR_ID_SHA512: &str = "258fde0da6e65940ff2e220be437f420003879f0ac7889435924681d3d1ffbe5d0ee61fbfaa5bb2c4c05ab63100480baf09f448b4b412cf1c994740259e17163";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for (k, v) in [
            ("a", &b"b"[..]),
            ("mtime", b"1700000002.5"),
            ("k", &[b'x'; 95][..]),
        ] {
            let r = pax_record(k, v);
            let text = String::from_utf8_lossy(&r);
            let (len, _) = text.split_once(' ').expect("space");
            assert_eq!(len.parse::<usize>().expect("len"), r.len(), "{text:?}");
        }
    }

    #[test]
    fn long_paths_and_link_targets_go_in_pax_records() {
        let long_dir = format!("{}/{}", "d".repeat(200), "e".repeat(255));
        let file = format!("{long_dir}/file");
        let data = tar(&[
            Entry::file(&file, 0o644, 1, b"x"),
            Entry::hardlink("h", &file),
            Entry::symlink("s", &file, 1),
            Entry::file("short", 0o644, 1, b"y"),
        ]);
        let mut archive = tar::Archive::new(&data[..]);
        let got: Vec<(Vec<u8>, Option<Vec<u8>>)> = archive
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let link = e.link_name_bytes().map(|l| l.into_owned());
                (e.path_bytes().into_owned(), link)
            })
            .collect();
        let f = file.as_bytes().to_vec();
        assert_eq!(
            got,
            [
                (f.clone(), None),
                (b"h".to_vec(), Some(f.clone())),
                (b"s".to_vec(), Some(f)),
                (b"short".to_vec(), None),
            ]
        );
    }
}
