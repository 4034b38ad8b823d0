//! Consistency check of a whole repository (`cfsctl fsck`).
//!
//! Checked: every object's content against its name (hashed in userspace on all CPUs, and
//! against the kernel's fs-verity measurement where there is one), every link below `images/`
//! and `streams/` (it must lead to an existing object; `images/<hex>` to the object of that
//! digest), every image (it must parse, and the objects it refers to must exist) and every
//! stream (it must parse and decompress, its references must exist, and it must reassemble to
//! its recorded size). Problems are collected as typed [`FsckError`]s, never returned early.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;

use cfs_format::erofs::reader;
use cfs_format::Digest;
use rayon::prelude::*;
use rustix::fs::{FileType, Mode, OFlags};
use serde::Serialize;

use super::fsutil::{self, TMP_LINK_PREFIX};
use super::objects::{digest_fd, ListedObject};
use super::{RepoError, Repository, Resolved};
use crate::splitstream::{Chunk, SplitStream};
use crate::verity::{self, MeasureError};

/// One problem found by [`Repository::fsck`]. Paths are relative to the repository; digests
/// are lowercase hex. Serialises with a `"kind"` tag (e.g. `"object-digest-mismatch"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum FsckError {
    /// An object's content does not have the digest it is named by (corrupt or truncated).
    #[error("{path}: content has digest {actual}, not the one in its name")]
    ObjectDigestMismatch {
        /// The object.
        path: String,
        /// The digest of its content.
        actual: String,
    },
    /// The kernel's fs-verity digest of an object differs from its name.
    #[error("{path}: fs-verity digest {measured} differs from its name")]
    ObjectVerityMismatch {
        /// The object.
        path: String,
        /// The kernel's measurement.
        measured: String,
    },
    /// An object of a secure repository has no fs-verity.
    #[error("{path}: fs-verity is not enabled, but the repository is secure")]
    ObjectVerityMissing {
        /// The object.
        path: String,
    },
    /// An object could not be read.
    #[error("{path}: cannot be read: {error}")]
    ObjectUnreadable {
        /// The object.
        path: String,
        /// The system error.
        error: String,
    },
    /// Something below `objects/`, `images/` or `streams/` that does not belong there.
    #[error("{path}: unexpected file (not an object or link of this repository)")]
    StrayFile {
        /// The file.
        path: String,
    },
    /// A link leads to something that does not exist.
    #[error("{path} -> {target}: dangling link")]
    DanglingLink {
        /// The link.
        path: String,
        /// Its target as written.
        target: String,
    },
    /// A link leads outside the repository's objects (absolute, elsewhere, a loop).
    #[error("{path} -> {target}: does not lead to an object of this repository")]
    BadLink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
    /// `images/<name>` leads to an object whose digest is not `<name>`.
    #[error("{path} -> {target}: the image's name does not match the object it links to")]
    LinkNameMismatch {
        /// The link.
        path: String,
        /// Its target as written.
        target: String,
    },
    /// An image does not parse.
    #[error("image {image}: corrupt: {error}")]
    ImageCorrupt {
        /// The image link.
        image: String,
        /// The reader's error.
        error: String,
    },
    /// An image refers to an object that does not exist.
    #[error("image {image}: referenced object {object} is missing")]
    ImageMissingObject {
        /// The image link.
        image: String,
        /// The missing object's digest.
        object: String,
    },
    /// A stream does not parse, decompress or reassemble to its recorded size.
    #[error("stream {stream}: corrupt: {error}")]
    StreamCorrupt {
        /// The stream link.
        stream: String,
        /// What is wrong.
        error: String,
    },
    /// A stream refers to an object that does not exist.
    #[error("stream {stream}: referenced object {object} is missing")]
    StreamMissingObject {
        /// The stream link.
        stream: String,
        /// The missing object's digest.
        object: String,
    },
    /// A stream refers to another stream (or image) whose object does not exist.
    #[error("stream {stream}: referenced stream {object} is missing")]
    StreamMissingStream {
        /// The stream link.
        stream: String,
        /// The missing stream's digest.
        object: String,
    },
}

impl FsckError {
    /// The kebab-case kind, as in the serialised `"kind"` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            FsckError::ObjectDigestMismatch { .. } => "object-digest-mismatch",
            FsckError::ObjectVerityMismatch { .. } => "object-verity-mismatch",
            FsckError::ObjectVerityMissing { .. } => "object-verity-missing",
            FsckError::ObjectUnreadable { .. } => "object-unreadable",
            FsckError::StrayFile { .. } => "stray-file",
            FsckError::DanglingLink { .. } => "dangling-link",
            FsckError::BadLink { .. } => "bad-link",
            FsckError::LinkNameMismatch { .. } => "link-name-mismatch",
            FsckError::ImageCorrupt { .. } => "image-corrupt",
            FsckError::ImageMissingObject { .. } => "image-missing-object",
            FsckError::StreamCorrupt { .. } => "stream-corrupt",
            FsckError::StreamMissingObject { .. } => "stream-missing-object",
            FsckError::StreamMissingStream { .. } => "stream-missing-stream",
        }
    }
}

/// The result of [`Repository::fsck`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    /// Every problem found.
    pub errors: Vec<FsckError>,
    /// Objects hashed.
    pub objects_checked: u64,
    /// Images parsed.
    pub images_checked: u64,
    /// Streams parsed.
    pub streams_checked: u64,
    /// Links resolved.
    pub links_checked: u64,
}

impl FsckReport {
    /// `true` when no problem was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// One line: what was checked and how many problems were found.
    pub fn summary(&self) -> String {
        format!(
            "{} objects, {} images, {} streams, {} links checked: {} {}",
            self.objects_checked,
            self.images_checked,
            self.streams_checked,
            self.links_checked,
            self.errors.len(),
            if self.errors.len() == 1 {
                "problem"
            } else {
                "problems"
            }
        )
    }
}

/// Which first-level directory a link lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Area {
    Images,
    Streams,
}

impl Repository {
    /// Check the whole repository: every object's content against its name (hashed on all
    /// CPUs; also against the kernel's fs-verity measurement where there is one), every link
    /// below `images/` and `streams/` (it must lead to an existing object, `images/<hex>` to
    /// the object of that digest), every image (it must parse and the objects it refers to
    /// must exist) and every stream (it must parse and decompress, its references must exist,
    /// and it must reassemble to its recorded size).
    ///
    /// Only I/O failures on the repository's own directories are errors; everything wrong with
    /// its content is collected in [`FsckReport::errors`].
    pub fn fsck(&self) -> Result<FsckReport, RepoError> {
        let mut report = FsckReport::default();
        let listing = self.list_objects()?;
        report.errors.extend(
            listing
                .strays
                .iter()
                .map(|path| FsckError::StrayFile { path: path.clone() }),
        );

        let checked: Vec<(Option<u64>, Vec<FsckError>)> = listing
            .objects
            .par_iter()
            .with_max_len(1)
            .map(|o| self.check_object(o))
            .collect();
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for (object, (size, errors)) in listing.objects.iter().zip(checked) {
            report.objects_checked += 1;
            if let Some(size) = size {
                sizes.insert(object.digest, size);
            }
            report.errors.extend(errors);
        }

        // Links, and which images and streams they lead to (first link name for messages).
        let mut images: BTreeMap<Digest, String> = BTreeMap::new();
        let mut streams: BTreeMap<Digest, String> = BTreeMap::new();
        for (area, dir) in [(Area::Images, "images"), (Area::Streams, "streams")] {
            for e in fsutil::list_dir(self.dir(), dir).map_err(|e| self.io_err(dir, e))? {
                let rel = format!("{dir}/{}", e.name);
                if e.name == "refs" && e.kind == FileType::Directory {
                    continue;
                }
                if e.kind != FileType::Symlink || !e.utf8 {
                    report.errors.push(FsckError::StrayFile { path: rel });
                    continue;
                }
                if e.name.starts_with(TMP_LINK_PREFIX) {
                    continue;
                }
                report.links_checked += 1;
                let Some(d) = self.check_link(&rel, &sizes, &mut report.errors)? else {
                    continue;
                };
                if area == Area::Images
                    && Digest::from_hex_alg(self.algorithm(), &e.name).ok() != Some(d)
                {
                    report.errors.push(FsckError::LinkNameMismatch {
                        target: self.link_text(&rel),
                        path: rel.clone(),
                    });
                }
                let found = if area == Area::Images {
                    &mut images
                } else {
                    &mut streams
                };
                found.entry(d).or_insert(rel);
            }
            let refs = format!("{dir}/refs");
            for link in
                fsutil::walk_symlinks(self.dir(), &refs).map_err(|e| self.io_err(&refs, e))?
            {
                report.links_checked += 1;
                self.check_link(&link, &sizes, &mut report.errors)?;
            }
        }

        let images: Vec<(Digest, String)> = images.into_iter().collect();
        let image_errors: Vec<Vec<FsckError>> = images
            .par_iter()
            .with_max_len(1)
            .map(|(d, rel)| self.check_image(d, rel, &sizes))
            .collect();
        report.images_checked = images.len() as u64;
        report.errors.extend(image_errors.into_iter().flatten());

        let streams: Vec<(Digest, String)> = streams.into_iter().collect();
        let stream_errors: Vec<Vec<FsckError>> = streams
            .par_iter()
            .with_max_len(1)
            .map(|(d, rel)| self.check_stream(d, rel, &sizes))
            .collect();
        report.streams_checked = streams.len() as u64;
        report.errors.extend(stream_errors.into_iter().flatten());
        Ok(report)
    }

    /// Hash one object and compare with its name (and the kernel's measurement). Returns its
    /// size when it could be read.
    fn check_object(&self, object: &ListedObject) -> (Option<u64>, Vec<FsckError>) {
        let path = object.rel.clone();
        let unreadable = |error: String| FsckError::ObjectUnreadable {
            path: path.clone(),
            error,
        };
        let fd = match rustix::fs::openat(
            self.dir(),
            object.rel.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(e) => return (None, vec![unreadable(e.to_string())]),
        };
        let (actual, size) = match digest_fd(fd.as_fd(), self.algorithm()) {
            Ok(r) => r,
            Err(e) => return (None, vec![unreadable(e.to_string())]),
        };
        let mut errors = Vec::new();
        if actual != object.digest {
            errors.push(FsckError::ObjectDigestMismatch {
                path: path.clone(),
                actual: actual.to_hex(),
            });
        }
        match verity::measure(&fd) {
            Ok(measured) if measured != object.digest => {
                errors.push(FsckError::ObjectVerityMismatch {
                    path: path.clone(),
                    measured: measured.to_hex(),
                })
            }
            Ok(_) => {}
            Err(MeasureError::NotEnabled | MeasureError::NotSupported) => {
                if !self.is_insecure() {
                    errors.push(FsckError::ObjectVerityMissing { path: path.clone() });
                }
            }
            Err(e) => errors.push(unreadable(e.to_string())),
        }
        (Some(size), errors)
    }

    /// Resolve one link: `Some(digest)` when it leads to an existing object, else an error.
    fn check_link(
        &self,
        rel: &str,
        sizes: &HashMap<Digest, u64>,
        errors: &mut Vec<FsckError>,
    ) -> Result<Option<Digest>, RepoError> {
        match self.resolve(rel)? {
            Resolved::Object(d) if sizes.contains_key(&d) => Ok(Some(d)),
            Resolved::Object(_) | Resolved::Missing { .. } => {
                errors.push(FsckError::DanglingLink {
                    path: rel.to_owned(),
                    target: self.link_text(rel),
                });
                Ok(None)
            }
            Resolved::Elsewhere { target } => {
                errors.push(FsckError::BadLink {
                    path: rel.to_owned(),
                    target,
                });
                Ok(None)
            }
        }
    }

    fn check_image(&self, id: &Digest, rel: &str, sizes: &HashMap<Digest, u64>) -> Vec<FsckError> {
        let corrupt = |error: String| {
            vec![FsckError::ImageCorrupt {
                image: rel.to_owned(),
                error,
            }]
        };
        let data = match self.read_object(id) {
            Ok(d) => d,
            Err(e) => return corrupt(e.to_string()),
        };
        match reader::object_digests(&data) {
            Ok(objects) => objects
                .into_iter()
                .filter(|d| !sizes.contains_key(d))
                .map(|d| FsckError::ImageMissingObject {
                    image: rel.to_owned(),
                    object: d.to_hex(),
                })
                .collect(),
            Err(e) => corrupt(e.to_string()),
        }
    }

    fn check_stream(&self, id: &Digest, rel: &str, sizes: &HashMap<Digest, u64>) -> Vec<FsckError> {
        let corrupt = |error: String| FsckError::StreamCorrupt {
            stream: rel.to_owned(),
            error,
        };
        let data = match self.read_object(id) {
            Ok(d) => d,
            Err(e) => return vec![corrupt(e.to_string())],
        };
        let stream = match SplitStream::parse(data, Some(self.algorithm())) {
            Ok(s) => s,
            Err(e) => return vec![corrupt(e.to_string())],
        };
        let mut errors = Vec::new();
        for d in stream.object_refs() {
            if !sizes.contains_key(d) {
                errors.push(FsckError::StreamMissingObject {
                    stream: rel.to_owned(),
                    object: d.to_hex(),
                });
            }
        }
        for d in stream.stream_refs() {
            if !sizes.contains_key(d) {
                errors.push(FsckError::StreamMissingStream {
                    stream: rel.to_owned(),
                    object: d.to_hex(),
                });
            }
        }
        let chunks = match stream.chunks() {
            Ok(c) => c,
            Err(e) => {
                errors.push(corrupt(e.to_string()));
                return errors;
            }
        };
        let mut total = 0u64;
        let mut complete = true;
        for chunk in chunks {
            match chunk {
                Ok(Chunk::Inline(bytes)) => total += bytes.len() as u64,
                Ok(Chunk::External(d)) => match sizes.get(&d) {
                    Some(size) => total += size,
                    None => complete = false,
                },
                Err(e) => {
                    errors.push(corrupt(e.to_string()));
                    return errors;
                }
            }
        }
        if complete && total != stream.stream_size() {
            errors.push(corrupt(format!(
                "reassembles to {total} bytes, but records {}",
                stream.stream_size()
            )));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::super::images::tests::image_referencing;
    use super::super::testutil::repo;
    use super::*;
    use crate::splitstream::content_type;

    /// A repository with an image (referring to one object) and a stream (two objects).
    fn populated() -> (tempfile::TempDir, Repository, [Digest; 4]) {
        let (dir, repo) = repo();
        let (obj, _) = repo.ensure_object(&[4u8; 9000]).expect("object");
        let image = repo
            .write_image(&image_referencing(&[(obj, 9000)]), Some("img"))
            .expect("image");
        let mut w = repo.create_stream(content_type::OCI_LAYER).expect("w");
        w.write_inline(b"header");
        let ext = repo.write_external(&mut w, &[8u8; 6000]).expect("ext");
        let stream = repo.write_stream("layer", w, Some("tag")).expect("stream");
        (dir, repo, [obj, image, ext, stream])
    }

    fn kinds(report: &FsckReport) -> Vec<&'static str> {
        report.errors.iter().map(FsckError::kind).collect()
    }

    #[test]
    fn kinds_match_the_serialised_tags() {
        let s = String::new;
        for e in [
            FsckError::ObjectDigestMismatch {
                path: s(),
                actual: s(),
            },
            FsckError::ObjectVerityMismatch {
                path: s(),
                measured: s(),
            },
            FsckError::ObjectVerityMissing { path: s() },
            FsckError::ObjectUnreadable {
                path: s(),
                error: s(),
            },
            FsckError::StrayFile { path: s() },
            FsckError::DanglingLink {
                path: s(),
                target: s(),
            },
            FsckError::BadLink {
                path: s(),
                target: s(),
            },
            FsckError::LinkNameMismatch {
                path: s(),
                target: s(),
            },
            FsckError::ImageCorrupt {
                image: s(),
                error: s(),
            },
            FsckError::ImageMissingObject {
                image: s(),
                object: s(),
            },
            FsckError::StreamCorrupt {
                stream: s(),
                error: s(),
            },
            FsckError::StreamMissingObject {
                stream: s(),
                object: s(),
            },
            FsckError::StreamMissingStream {
                stream: s(),
                object: s(),
            },
        ] {
            let json = serde_json::to_value(&e).expect("json");
            assert_eq!(json["kind"], e.kind(), "{e:?}");
        }
    }

    #[test]
    fn a_healthy_repository_passes() {
        let (_dir, repo, _) = populated();
        let report = repo.fsck().expect("fsck");
        assert!(report.is_ok(), "{:?}", report.errors);
        assert_eq!(report.objects_checked, 4);
        assert_eq!(report.images_checked, 1);
        assert_eq!(report.streams_checked, 1);
        assert_eq!(report.links_checked, 4);
        assert_eq!(
            report.summary(),
            "4 objects, 1 images, 1 streams, 4 links checked: 0 problems"
        );
    }

    #[test]
    fn a_flipped_byte_is_found() {
        let (_dir, repo, [obj, ..]) = populated();
        let path = repo.object_path(&obj);
        let mut data = std::fs::read(&path).expect("read");
        data[4000] ^= 0x40;
        std::fs::write(&path, &data).expect("write");
        let report = repo.fsck().expect("fsck");
        assert_eq!(kinds(&report), ["object-digest-mismatch"]);
        let msg = report.errors[0].to_string();
        assert!(msg.contains(&obj.object_path()), "{msg}");
        let json = serde_json::to_string(&report.errors[0]).expect("json");
        assert!(
            json.starts_with(r#"{"kind":"object-digest-mismatch","path":"objects/"#),
            "{json}"
        );
    }

    #[test]
    fn a_deleted_object_is_found_through_the_image_and_the_stream() {
        let (_dir, repo, [obj, _, ext, _]) = populated();
        std::fs::remove_file(repo.object_path(&obj)).expect("rm");
        std::fs::remove_file(repo.object_path(&ext)).expect("rm");
        let report = repo.fsck().expect("fsck");
        assert_eq!(
            kinds(&report),
            ["image-missing-object", "stream-missing-object"]
        );
        assert!(report.errors[0].to_string().contains(&obj.to_hex()));
        assert!(report.errors[1].to_string().contains("streams/layer"));
    }

    #[test]
    fn dangling_and_mismatched_links_are_found() {
        let (_dir, repo, [obj, image, _, stream]) = populated();
        std::fs::remove_file(repo.object_path(&stream)).expect("rm");
        std::os::unix::fs::symlink(
            format!("../objects/{}", obj.object_path()),
            repo.path().join(format!("images/{}", stream.to_hex())),
        )
        .expect("link");
        std::os::unix::fs::symlink("/etc/passwd", repo.path().join("streams/abs")).expect("link");
        std::fs::write(repo.path().join("images/file"), b"").expect("write");
        let report = repo.fsck().expect("fsck");
        let mut k = kinds(&report);
        k.sort();
        assert_eq!(
            k,
            [
                "bad-link",
                "dangling-link",
                "dangling-link",
                "image-corrupt",
                "link-name-mismatch",
                "stray-file"
            ],
            "{:?}",
            report.errors
        );
        assert!(
            report.errors.iter().any(|e| e
                .to_string()
                .starts_with("streams/refs/tag -> ../layer: dangling link")),
            "{:?}",
            report.errors
        );
        let _ = image;
    }

    #[test]
    fn a_truncated_image_is_found() {
        let (_dir, repo, [_, image, ..]) = populated();
        let path = repo.object_path(&image);
        let data = std::fs::read(&path).expect("read");
        std::fs::write(&path, &data[..data.len() / 2]).expect("truncate");
        let report = repo.fsck().expect("fsck");
        let k = kinds(&report);
        assert!(k.contains(&"object-digest-mismatch"), "{k:?}");
        assert!(k.contains(&"image-corrupt"), "{k:?}");
    }

    #[test]
    fn a_corrupt_stream_is_found() {
        let (_dir, repo, [.., stream]) = populated();
        let path = repo.object_path(&stream);
        let mut data = std::fs::read(&path).expect("read");
        let last = data.len() - 2;
        data[last] ^= 0xff;
        std::fs::write(&path, &data).expect("write");
        let report = repo.fsck().expect("fsck");
        let k = kinds(&report);
        assert!(k.contains(&"object-digest-mismatch"), "{k:?}");
        assert!(k.contains(&"stream-corrupt"), "{k:?}");
    }
}
