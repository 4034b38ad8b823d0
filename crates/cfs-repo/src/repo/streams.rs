//! Streams: splitstream objects named `streams/<content-id>`, optionally with refs
//! `streams/refs/<name>` (docs/formats.md §4, §5). Writing is durable in the repository's order:
//! the external objects (stored while the stream was built), the splitstream object, a
//! `syncfs`, then the names.

use std::fs::File;
use std::io::{Read, Write};

use cfs_format::fsverity;
use cfs_format::Digest;
use rustix::fs::FileType;

use super::fsutil;
use super::objects::object_rel;
use super::{invalid_name, validate_leaf_name, validate_ref_name, RepoError, Repository, Resolved};
use crate::splitstream::{SplitStream, SplitStreamError, SplitStreamWriter};

/// One name of a stream ([`Repository::list_streams`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The name, relative to `streams/`: the content id (e.g. `oci-config-sha256:…`) or
    /// `refs/<ref>`.
    pub name: String,
    /// The digest of the splitstream object.
    pub id: Digest,
}

impl Repository {
    fn stream_error(what: impl Into<String>) -> impl FnOnce(SplitStreamError) -> RepoError {
        let what = what.into();
        move |source| RepoError::SplitStream { what, source }
    }

    /// A new splitstream writer using this repository's algorithm.
    pub fn create_stream(&self, content_type: u64) -> Result<SplitStreamWriter, RepoError> {
        SplitStreamWriter::new(self.algorithm(), content_type)
            .map_err(Self::stream_error("(new stream)"))
    }

    /// Store `data` as an object and append a reference to it to `writer`.
    pub fn write_external(
        &self,
        writer: &mut SplitStreamWriter,
        data: &[u8],
    ) -> Result<Digest, RepoError> {
        let (digest, _) = self.ensure_object(data)?;
        writer
            .write_reference(&digest, data.len() as u64)
            .map_err(Self::stream_error("(new stream)"))?;
        Ok(digest)
    }

    /// Import everything `src` yields as an object and append a reference to it to `writer`.
    pub fn write_external_reader(
        &self,
        writer: &mut SplitStreamWriter,
        src: &mut dyn Read,
        size_hint: Option<u64>,
    ) -> Result<Digest, RepoError> {
        let (digest, _, size) = self.import_reader(src, size_hint)?;
        writer
            .write_reference(&digest, size)
            .map_err(Self::stream_error("(new stream)"))?;
        Ok(digest)
    }

    /// Finish `writer` and store it as the stream `content_id` (a name without `/`), replacing
    /// any previous stream of that id, and with `reference` also as `streams/refs/<reference>`.
    /// Order: the splitstream object, `syncfs`, `streams/<content-id>`, the ref. Returns the
    /// splitstream's object digest.
    pub fn write_stream(
        &self,
        content_id: &str,
        writer: SplitStreamWriter,
        reference: Option<&str>,
    ) -> Result<Digest, RepoError> {
        self.ensure_writable()?;
        validate_leaf_name(content_id)?;
        if let Some(r) = reference {
            validate_ref_name(r)?;
        }
        if writer.algorithm() != self.algorithm() {
            return Err(RepoError::AlgorithmMismatch {
                what: format!("stream {content_id}"),
                expected: self.algorithm(),
                found: writer.algorithm(),
            });
        }
        let bytes = writer.finish().map_err(Self::stream_error(content_id))?;
        let (id, _) = self.ensure_object(&bytes)?;
        self.sync()?;
        let link = format!("streams/{content_id}");
        fsutil::symlink_replace(self.dir(), &link, &object_rel(&id))
            .map_err(|e| self.io_err(&link, e))?;
        if let Some(r) = reference {
            self.link_stream_ref(content_id, r)?;
        }
        Ok(id)
    }

    fn link_stream_ref(&self, content_id: &str, name: &str) -> Result<(), RepoError> {
        let link = format!("streams/refs/{name}");
        fsutil::symlink_replace(self.dir(), &link, &format!("streams/{content_id}"))
            .map_err(|e| self.io_err(&link, e))
    }

    /// Point `streams/refs/<name>` at the existing stream `content_id`.
    pub fn add_stream_ref(&self, content_id: &str, name: &str) -> Result<(), RepoError> {
        self.ensure_writable()?;
        validate_leaf_name(content_id)?;
        validate_ref_name(name)?;
        if !self.exists(&format!("streams/{content_id}"))? {
            return Err(RepoError::StreamNotFound {
                name: content_id.to_owned(),
            });
        }
        self.link_stream_ref(content_id, name)
    }

    /// Remove the ref `streams/refs/<name>` (the stream itself stays until GC).
    pub fn remove_stream_ref(&self, name: &str) -> Result<(), RepoError> {
        self.ensure_writable()?;
        validate_ref_name(name)?;
        let link = format!("streams/refs/{name}");
        match rustix::fs::unlinkat(self.dir(), link.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::NOENT) => Err(RepoError::StreamNotFound {
                name: format!("refs/{name}"),
            }),
            Err(e) => Err(self.io_err(&link, e)),
        }
    }

    /// The content id `streams/refs/<name>` points at (e.g. `oci-manifest-sha256:…`), or
    /// `None` when there is no such ref. Only the link is read; the stream may be missing.
    pub fn stream_ref_target(&self, name: &str) -> Result<Option<String>, RepoError> {
        validate_ref_name(name)?;
        let link = format!("streams/refs/{name}");
        let target = match fsutil::read_link(self.dir(), &link) {
            Ok(Some(t)) => t,
            Ok(None) => return Ok(None),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.io_err(&link, e)),
        };
        match fsutil::resolve_relative(&link, &target) {
            Some(rel) => match rel.strip_prefix("streams/") {
                Some(id) if !id.contains('/') => Ok(Some(id.to_owned())),
                _ => Err(RepoError::BadLink {
                    path: self.full(&link),
                    target,
                }),
            },
            None => Err(RepoError::BadLink {
                path: self.full(&link),
                target,
            }),
        }
    }

    /// The object digest of the stream `content_id`, or `None` when there is no such stream
    /// (or its object is missing).
    pub fn has_stream(&self, content_id: &str) -> Result<Option<Digest>, RepoError> {
        validate_leaf_name(content_id)?;
        match self.resolve(&format!("streams/{content_id}"))? {
            Resolved::Object(d) if self.has_object(&d)? => Ok(Some(d)),
            _ => Ok(None),
        }
    }

    /// Which `streams/...` entry `name` designates: `streams/<name>` (a content id or a path
    /// such as `refs/oci/tag`), or, when that does not exist and `name` has no `/`,
    /// `streams/refs/<name>`.
    fn stream_entry(&self, name: &str) -> Result<String, RepoError> {
        validate_ref_name(name).map_err(|_| {
            invalid_name(
                name,
                "not a stream name (relative, no empty, '.' or '..' components)",
            )
        })?;
        let direct = format!("streams/{name}");
        if self.exists(&direct)? {
            return Ok(direct);
        }
        let by_ref = format!("streams/refs/{name}");
        if !name.contains('/') && self.exists(&by_ref)? {
            return Ok(by_ref);
        }
        Err(RepoError::StreamNotFound {
            name: name.to_owned(),
        })
    }

    /// Open and parse the stream `name` (see `stream_entry`): returns the parsed splitstream
    /// and its object digest. The object's content is checked against its digest.
    pub fn open_stream(&self, name: &str) -> Result<(SplitStream, Digest), RepoError> {
        let entry = self.stream_entry(name)?;
        let id = self.entry_object(&entry)?;
        let stream = match self.open_stream_object(&id) {
            Err(RepoError::ObjectNotFound { .. }) => {
                return Err(RepoError::DanglingLink {
                    path: self.full(&entry),
                    target: self.link_text(&entry),
                })
            }
            r => r?,
        };
        Ok((stream, id))
    }

    /// Read and parse the splitstream object `id`, checking its content against `id`.
    pub fn open_stream_object(&self, id: &Digest) -> Result<SplitStream, RepoError> {
        let data = self.read_object(id)?;
        let actual = fsverity::digest(self.algorithm(), &data);
        if actual != *id {
            return Err(RepoError::DigestMismatch {
                path: self.object_path(id),
                expected: Box::new(*id),
                actual: Box::new(actual),
            });
        }
        SplitStream::parse(data, Some(self.algorithm())).map_err(Self::stream_error(id.to_hex()))
    }

    /// Reassemble the stream `name` into `out` (external chunks read from their objects).
    /// Returns the number of bytes written.
    pub fn cat_stream(&self, name: &str, out: &mut dyn Write) -> Result<u64, RepoError> {
        let (stream, _) = self.open_stream(name)?;
        stream
            .reassemble(out, |digest| -> std::io::Result<File> {
                self.open_object(digest).map_err(std::io::Error::other)
            })
            .map_err(|source| RepoError::Reassemble {
                what: name.to_owned(),
                source,
            })
    }

    /// Every stream name: each `streams/<content-id>` and each ref (named `refs/<ref>`, which
    /// [`open_stream`](Self::open_stream) accepts), with the splitstream's object digest,
    /// sorted by name. Names whose object is missing are left out.
    pub fn list_streams(&self) -> Result<Vec<StreamInfo>, RepoError> {
        let mut names = Vec::new();
        for e in fsutil::list_dir(self.dir(), "streams").map_err(|e| self.io_err("streams", e))? {
            if e.kind == FileType::Symlink && e.utf8 && !e.name.starts_with('.') {
                names.push(format!("streams/{}", e.name));
            }
        }
        names.extend(
            fsutil::walk_symlinks(self.dir(), "streams/refs")
                .map_err(|e| self.io_err("streams/refs", e))?,
        );
        let mut out = Vec::new();
        for rel in names {
            if let Some((id, _)) = self.named_object(&rel)? {
                let name = rel.strip_prefix("streams/").unwrap_or(&rel).to_owned();
                out.push(StreamInfo { name, id });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use cfs_format::Algorithm;

    use super::super::testutil::{files, repo};
    use super::*;
    use crate::splitstream::{content_type, HeaderForm};

    fn tar_like(repo: &Repository) -> (SplitStreamWriter, Vec<u8>) {
        let mut w = repo.create_stream(content_type::OCI_LAYER).expect("writer");
        let mut expected = Vec::new();
        let header = [b'h'; 512];
        let body: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
        w.write_inline(&header);
        expected.extend_from_slice(&header);
        repo.write_external(&mut w, &body).expect("external");
        expected.extend_from_slice(&body);
        w.write_inline(&[0u8; 400]);
        expected.extend_from_slice(&[0u8; 400]);
        let mut reader: &[u8] = &body[..1000];
        repo.write_external_reader(&mut w, &mut reader, Some(1000))
            .expect("external reader");
        expected.extend_from_slice(&body[..1000]);
        w.write_inline(&[0u8; 1024]);
        expected.extend_from_slice(&[0u8; 1024]);
        (w, expected)
    }

    #[test]
    fn streams_round_trip_through_cat() {
        let (_dir, repo) = repo();
        let (w, expected) = tar_like(&repo);
        let id = repo
            .write_stream("oci-layer-sha256:00", w, Some("oci/tag"))
            .expect("write");
        assert_eq!(
            std::fs::read_link(repo.path().join("streams/refs/oci/tag")).expect("ref"),
            std::path::PathBuf::from("../../oci-layer-sha256:00")
        );
        for name in ["oci-layer-sha256:00", "refs/oci/tag"] {
            let mut out = Vec::new();
            let n = repo.cat_stream(name, &mut out).expect("cat");
            assert_eq!(n as usize, expected.len());
            assert_eq!(out, expected, "{name}");
        }
        let (stream, got) = repo.open_stream("oci-layer-sha256:00").expect("open");
        assert_eq!(got, id);
        assert_eq!(stream.object_refs().len(), 2);
        assert_eq!(stream.content_type(), content_type::OCI_LAYER);
        assert_eq!(
            repo.has_stream("oci-layer-sha256:00").expect("has"),
            Some(id)
        );
        assert_eq!(repo.has_stream("other").expect("has"), None);
        assert_eq!(
            repo.list_streams().expect("list"),
            ["oci-layer-sha256:00", "refs/oci/tag"]
                .map(|name| StreamInfo {
                    name: name.into(),
                    id
                })
                .to_vec()
        );
        assert!(!files(repo.path()).iter().any(|f| f.contains(".tmp")));
    }

    #[test]
    fn stream_refs_are_read_and_removed() {
        let (_dir, repo) = repo();
        let (w, _) = tar_like(&repo);
        repo.write_stream("oci-manifest-x", w, Some("oci/a%2Fb"))
            .expect("write");
        assert_eq!(
            repo.stream_ref_target("oci/a%2Fb").expect("target"),
            Some("oci-manifest-x".to_owned())
        );
        assert_eq!(repo.stream_ref_target("oci/none").expect("none"), None);
        repo.remove_stream_ref("oci/a%2Fb").expect("remove");
        assert_eq!(repo.stream_ref_target("oci/a%2Fb").expect("gone"), None);
        assert!(matches!(
            repo.remove_stream_ref("oci/a%2Fb"),
            Err(RepoError::StreamNotFound { .. })
        ));
        assert!(repo.has_stream("oci-manifest-x").expect("has").is_some());
    }

    #[test]
    fn named_refs_and_legacy_headers_work_through_the_repository() {
        let (_dir, repo) = repo();
        let (w, _) = tar_like(&repo);
        let layer = repo.write_stream("layer", w, None).expect("layer");
        let mut config = repo
            .create_stream(content_type::OCI_CONFIG)
            .expect("writer");
        repo.write_external(&mut config, br#"{"config":true}"#)
            .expect("json");
        config
            .add_named_stream_ref("sha256:diff", &layer)
            .expect("named");
        repo.write_stream("config", config, Some("cfg"))
            .expect("config");
        let (s, _) = repo.open_stream("cfg").expect("open by ref fallback");
        assert_eq!(s.named_ref("sha256:diff"), Some(&layer));
        let mut out = Vec::new();
        repo.cat_stream("config", &mut out).expect("cat");
        assert_eq!(out, br#"{"config":true}"#);

        // A legacy-header stream stored as an object and linked by hand is readable too.
        let mut w = repo.create_stream(0).expect("writer");
        w.write_inline(b"legacy bytes");
        let bytes = w.finish().expect("finish");
        let mut legacy = bytes.clone();
        legacy[0..16].copy_from_slice(&bytes[16..32]);
        legacy[16..18].copy_from_slice(&bytes[12..14]);
        legacy[18..29].copy_from_slice(b"SplitStream");
        legacy[29] = bytes[11];
        legacy[30] = bytes[14];
        legacy[31] = bytes[15];
        let (id, _) = repo.ensure_object(&legacy).expect("object");
        std::os::unix::fs::symlink(
            format!("../objects/{}", id.object_path()),
            repo.path().join("streams/legacy"),
        )
        .expect("link");
        let (s, _) = repo.open_stream("legacy").expect("open");
        assert_eq!(s.header_form(), HeaderForm::Legacy);
        let mut out = Vec::new();
        repo.cat_stream("legacy", &mut out).expect("cat");
        assert_eq!(out, b"legacy bytes");
    }

    #[test]
    fn stream_errors_name_the_stream() {
        let (_dir, repo) = repo();
        assert!(matches!(
            repo.open_stream("none"),
            Err(RepoError::StreamNotFound { .. })
        ));
        let w = repo.create_stream(0).expect("writer");
        assert!(matches!(
            repo.write_stream("a/b", w, None),
            Err(RepoError::InvalidName { .. })
        ));
        let w = SplitStreamWriter::new(Algorithm::Sha512, 0).expect("writer");
        assert!(matches!(
            repo.write_stream("x", w, None),
            Err(RepoError::AlgorithmMismatch { .. })
        ));
        // A stream whose external object vanished: cat fails naming the object.
        let mut w = repo.create_stream(0).expect("writer");
        let d = repo.write_external(&mut w, b"payload").expect("external");
        repo.write_stream("s", w, None).expect("write");
        std::fs::remove_file(repo.object_path(&d)).expect("rm");
        let err = repo
            .cat_stream("s", &mut Vec::new())
            .expect_err("missing object");
        assert!(err.to_string().contains(&d.to_hex()), "{err}");
    }
}
