//! Garbage collection (docs/formats.md §4 "GC").
//!
//! Roots are every symlink below `images/refs/` and `streams/refs/`, plus names given
//! explicitly (matched against the first-level entries of `images/` and `streams/`). An image
//! root keeps its object and every object the EROFS image refers to; a stream root keeps its
//! object, its `object_refs` and, recursively, every `stream_refs` target (images among them
//! keep their objects too). Everything else below `objects/` is removed, with stale temporary
//! files, and links that would then dangle are pruned.
//!
//! A real collection holds the repository's lock exclusively from planning to the last unlink,
//! so a writer in another process (which holds the shared lock all its life) never races it.
//! Names go first and objects last, so an interrupted collection leaves unreferenced objects,
//! never a dangling name. A dry run plans under the shared lock and removes nothing.

use super::VERITY_TREE_DIR;
use std::collections::HashSet;

use cfs_format::erofs::reader::{self, Image};
use cfs_format::Digest;
use rustix::fs::{AtFlags, FileType};
use rustix::io::Errno;
use serde::Serialize;

use super::{fsutil, RepoError, Repository, Resolved};
use crate::progress::{NoProgress, Progress};
use crate::splitstream::{is_splitstream, SplitStream};

/// What to collect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcOptions {
    /// Only report what would be removed.
    pub dry_run: bool,
    /// Extra roots: first-level names of `images/` or `streams/` (`--root`).
    pub roots: Vec<String>,
}

/// What kind of thing was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemovedKind {
    /// An unreferenced object.
    Object,
    /// A stale temporary file (an interrupted write).
    TempFile,
    /// An `images/<hex>` link whose image was collected (or was already missing).
    ImageLink,
    /// An `images/refs/...` link that dangled.
    ImageRef,
    /// A `streams/<content-id>` link whose stream was collected (or was already missing).
    StreamLink,
    /// A `streams/refs/...` link that dangled.
    StreamRef,
}

/// One removed (or, in a dry run, removable) file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedItem {
    /// What it was.
    pub kind: RemovedKind,
    /// Its repository-relative path.
    pub path: String,
    /// Bytes freed (objects and temporary files; 0 for links).
    pub size: u64,
}

impl std::fmt::Display for RemovedItem {
    /// `object objects/ab/cd… (123 bytes)`, `image-ref images/refs/x`, …
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            RemovedKind::Object => "object",
            RemovedKind::TempFile => "temporary",
            RemovedKind::ImageLink => "image",
            RemovedKind::ImageRef => "image-ref",
            RemovedKind::StreamLink => "stream",
            RemovedKind::StreamRef => "stream-ref",
        };
        write!(f, "{kind} {}", self.path)?;
        if matches!(self.kind, RemovedKind::Object | RemovedKind::TempFile) {
            write!(f, " ({} bytes)", self.size)?;
        }
        Ok(())
    }
}

/// The result of [`Repository::gc`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// `true` when nothing was actually removed.
    pub dry_run: bool,
    /// Objects removed.
    pub objects_removed: u64,
    /// Bytes of objects and temporary files removed.
    pub bytes_removed: u64,
    /// Stale temporary files removed.
    pub temp_files_removed: u64,
    /// Image links and refs pruned.
    pub images_pruned: u64,
    /// Stream links and refs pruned.
    pub streams_pruned: u64,
    /// Everything removed, in removal order (refs, links, objects).
    pub removed: Vec<RemovedItem>,
}

/// Marks reachable objects.
struct Marker<'a> {
    repo: &'a Repository,
    live: HashSet<Digest>,
    /// Splitstreams already walked.
    walked: HashSet<Digest>,
}

impl Marker<'_> {
    /// Keep the image `id` and everything it refers to. A missing image keeps nothing.
    fn image(&mut self, id: Digest, root: &str) -> Result<(), RepoError> {
        self.live.insert(id);
        let data = match self.repo.read_object(&id) {
            Ok(d) => d,
            Err(RepoError::ObjectNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let objects = reader::object_digests(&data).map_err(|source| RepoError::InvalidImage {
            what: format!("GC root {root} (image {id}; run fsck)"),
            source,
        })?;
        self.live.extend(objects);
        Ok(())
    }

    /// Keep the stream `id`, its objects and, recursively, the streams and images it refers to.
    fn stream(&mut self, id: Digest, root: &str) -> Result<(), RepoError> {
        let mut pending = vec![id];
        while let Some(id) = pending.pop() {
            if !self.walked.insert(id) {
                continue;
            }
            self.live.insert(id);
            let data = match self.repo.read_object(&id) {
                Ok(d) => d,
                Err(RepoError::ObjectNotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if !is_splitstream(&data) {
                // A stream reference may name an image (an OCI config's `composefs.image`).
                if Image::open(&data).is_ok() {
                    self.image(id, root)?;
                }
                continue;
            }
            let stream =
                SplitStream::parse(data, Some(self.repo.algorithm())).map_err(|source| {
                    RepoError::SplitStream {
                        what: format!("GC root {root} (object {id}; run fsck)"),
                        source,
                    }
                })?;
            self.live.extend(stream.object_refs().iter().copied());
            for s in stream.stream_refs() {
                self.live.insert(*s);
                pending.push(*s);
            }
        }
        Ok(())
    }
}

impl Repository {
    /// Collect garbage. Roots are every symlink below `images/refs/` and `streams/refs/` plus
    /// `opts.roots` (first-level names of `images/` or `streams/`). Image roots keep their
    /// object and every object the image refers to; stream roots keep their object, their
    /// `object_refs` and, recursively, their `stream_refs`. All other objects and stale
    /// temporaries are removed, and links that would dangle are pruned (refs and names first,
    /// objects last, so an interruption leaves only garbage).
    ///
    /// A real collection needs a writable repository and holds the exclusive lock throughout,
    /// waiting for every other open repository (including another `Repository` of this
    /// process) to be closed. A dry run keeps the shared lock and removes nothing.
    ///
    /// A root that cannot be parsed (a corrupt image or stream) stops the collection with an
    /// error before anything is removed: its references cannot be known.
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport, RepoError> {
        self.gc_with_progress(opts, &NoProgress)
    }

    /// [`gc`](Self::gc), reporting its phases (marking, checking objects, removing) to
    /// `progress`.
    pub fn gc_with_progress(
        &self,
        opts: &GcOptions,
        progress: &dyn Progress,
    ) -> Result<GcReport, RepoError> {
        let _exclusive = if opts.dry_run {
            None
        } else {
            self.ensure_writable()?;
            Some(self.lock_exclusive()?)
        };
        progress.phase("marking what the roots reach", None);
        let mut marker = Marker {
            repo: self,
            live: HashSet::new(),
            walked: HashSet::new(),
        };
        for link in fsutil::walk_symlinks(self.dir(), "images/refs")
            .map_err(|e| self.io_err("images/refs", e))?
        {
            if let Resolved::Object(id) = self.resolve(&link)? {
                marker.image(id, &link)?;
            }
            progress.advance(1);
        }
        for link in fsutil::walk_symlinks(self.dir(), "streams/refs")
            .map_err(|e| self.io_err("streams/refs", e))?
        {
            if let Resolved::Object(id) = self.resolve(&link)? {
                marker.stream(id, &link)?;
            }
            progress.advance(1);
        }
        for name in &opts.roots {
            super::validate_leaf_name(name)?;
            let image = format!("images/{name}");
            let stream = format!("streams/{name}");
            let (is_image, is_stream) = (self.exists(&image)?, self.exists(&stream)?);
            if !is_image && !is_stream {
                return Err(RepoError::RootNotFound { name: name.clone() });
            }
            if let (true, Resolved::Object(id)) = (is_image, self.resolve(&image)?) {
                marker.image(id, &image)?;
            }
            if let (true, Resolved::Object(id)) = (is_stream, self.resolve(&stream)?) {
                marker.stream(id, &stream)?;
            }
        }
        let live = marker.live;

        let mut report = GcReport {
            dry_run: opts.dry_run,
            ..GcReport::default()
        };
        progress.phase("listing objects", None);
        let listing = self.list_objects()?;
        let present: HashSet<Digest> = listing.objects.iter().map(|o| o.digest).collect();
        // Does this link (chain) still lead to an object after the collection?
        let survives = |rel: &str| -> Result<bool, RepoError> {
            Ok(match self.resolve(rel)? {
                Resolved::Object(d) => present.contains(&d) && live.contains(&d),
                Resolved::Missing { .. } => false,
                // Not ours to judge (a link somewhere else): leave it.
                Resolved::Elsewhere { .. } => true,
            })
        };

        for (refs, kind) in [
            ("images/refs", RemovedKind::ImageRef),
            ("streams/refs", RemovedKind::StreamRef),
        ] {
            for link in fsutil::walk_symlinks(self.dir(), refs).map_err(|e| self.io_err(refs, e))? {
                if !survives(&link)? {
                    report.removed.push(RemovedItem {
                        kind,
                        path: link,
                        size: 0,
                    });
                }
            }
            for temp in
                fsutil::walk_temp_links(self.dir(), refs).map_err(|e| self.io_err(refs, e))?
            {
                report.removed.push(RemovedItem {
                    kind: RemovedKind::TempFile,
                    path: temp,
                    size: 0,
                });
            }
        }
        for (dir, kind) in [
            ("images", RemovedKind::ImageLink),
            ("streams", RemovedKind::StreamLink),
        ] {
            for e in fsutil::list_dir(self.dir(), dir).map_err(|e| self.io_err(dir, e))? {
                if e.kind != FileType::Symlink || !e.utf8 {
                    continue;
                }
                let rel = format!("{dir}/{}", e.name);
                if e.name.starts_with(fsutil::TMP_LINK_PREFIX) {
                    report.removed.push(RemovedItem {
                        kind: RemovedKind::TempFile,
                        path: rel,
                        size: 0,
                    });
                } else if !survives(&rel)? {
                    report.removed.push(RemovedItem {
                        kind,
                        path: rel,
                        size: 0,
                    });
                }
            }
        }
        progress.phase("checking objects", Some(listing.objects.len() as u64));
        for object in &listing.objects {
            progress.advance(1);
            if !live.contains(&object.digest) {
                report.removed.push(RemovedItem {
                    kind: RemovedKind::Object,
                    size: self.file_size(&object.rel)?,
                    path: object.rel.clone(),
                });
            }
        }
        for temp in &listing.temps {
            report.removed.push(RemovedItem {
                kind: RemovedKind::TempFile,
                size: self.file_size(temp)?,
                path: temp.clone(),
            });
        }

        for item in &report.removed {
            match item.kind {
                RemovedKind::Object => {
                    report.objects_removed += 1;
                    report.bytes_removed += item.size;
                }
                RemovedKind::TempFile => {
                    report.temp_files_removed += 1;
                    report.bytes_removed += item.size;
                }
                RemovedKind::ImageLink | RemovedKind::ImageRef => report.images_pruned += 1,
                RemovedKind::StreamLink | RemovedKind::StreamRef => report.streams_pruned += 1,
            }
        }
        if !opts.dry_run {
            progress.phase("removing", Some(report.removed.len() as u64));
            for item in &report.removed {
                match rustix::fs::unlinkat(self.dir(), item.path.as_str(), AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(self.io_err(&item.path, e)),
                }
                // A removed object's saved Merkle tree (a cache the FUSE server fills) goes too.
                if item.kind == RemovedKind::Object {
                    if let Some(rel) = item.path.strip_prefix("objects/") {
                        let tree = format!("{VERITY_TREE_DIR}/{rel}");
                        let _ = rustix::fs::unlinkat(self.dir(), tree.as_str(), AtFlags::empty());
                    }
                }
                progress.advance(1);
            }
        }
        Ok(report)
    }

    /// Size of a file (0 when it vanished).
    fn file_size(&self, rel: &str) -> Result<u64, RepoError> {
        match rustix::fs::statat(self.dir(), rel, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(st.st_size as u64),
            Err(Errno::NOENT) => Ok(0),
            Err(e) => Err(self.io_err(rel, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use cfs_format::fsverity;
    use cfs_format::Algorithm;

    use super::super::images::tests::image_referencing;
    use super::super::testutil::{files, repo};
    use super::super::OpenOptions;
    use super::*;
    use crate::splitstream::content_type;

    fn removed(report: &GcReport, kind: RemovedKind) -> Vec<String> {
        report
            .removed
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.path.clone())
            .collect()
    }

    #[test]
    fn gc_keeps_what_refs_reach_and_removes_the_rest() {
        let (_dir, repo) = repo();
        let (kept_obj, _) = repo.ensure_object(&[1u8; 5000]).expect("object");
        let (lost_obj, _) = repo.ensure_object(&[2u8; 3000]).expect("object");
        let (stray, _) = repo.ensure_object(b"stray object").expect("object");
        // Kept: referenced only through the image's metacopy.
        let kept_image = repo
            .write_image(&image_referencing(&[(kept_obj, 5000)]), Some("keep/me"))
            .expect("image");
        // Lost: an image without a ref, and the object only it refers to.
        let lost_image = repo
            .write_image(&image_referencing(&[(lost_obj, 3000)]), None)
            .expect("image");
        // A stream root keeps its objects and the stream it names.
        let mut layer = repo.create_stream(content_type::OCI_LAYER).expect("w");
        let layer_obj = repo.write_external(&mut layer, &[3u8; 7000]).expect("ext");
        let layer_id = repo.write_stream("layer", layer, None).expect("layer");
        let mut config = repo.create_stream(content_type::OCI_CONFIG).expect("w");
        let json = repo.write_external(&mut config, b"{}").expect("json");
        config
            .add_named_stream_ref("diff", &layer_id)
            .expect("named");
        let config_id = repo
            .write_stream("config", config, Some("oci/tag"))
            .expect("config");
        // Stale temporaries: an object and a link (a writer killed mid-way).
        std::fs::write(
            repo.path().join("objects/.tmp-object-AAAAAAAAAAAA"),
            b"junk",
        )
        .expect("tmp");
        std::os::unix::fs::symlink("../x", repo.path().join("images/refs/keep/.tmp-link-B"))
            .expect("tmp link");

        let dry = repo
            .gc(&GcOptions {
                dry_run: true,
                ..GcOptions::default()
            })
            .expect("dry run");
        let before = files(repo.path());
        assert!(dry.dry_run);
        let mut gone = removed(&dry, RemovedKind::Object);
        gone.sort();
        let mut want = vec![
            format!("objects/{}", lost_obj.object_path()),
            format!("objects/{}", stray.object_path()),
            format!("objects/{}", lost_image.object_path()),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert_eq!(
            removed(&dry, RemovedKind::ImageLink),
            [format!("images/{}", lost_image.to_hex())]
        );
        assert_eq!(dry.temp_files_removed, 2);
        let item = dry
            .removed
            .iter()
            .find(|r| r.kind == RemovedKind::Object)
            .expect("an object");
        assert_eq!(
            item.to_string(),
            format!("object {} ({} bytes)", item.path, item.size)
        );
        assert_eq!(dry.objects_removed, 3);
        assert_eq!(dry.images_pruned, 1);
        assert_eq!(dry.streams_pruned, 0);
        assert_eq!(files(repo.path()), before, "a dry run removes nothing");

        let lost_image_size = std::fs::metadata(repo.object_path(&lost_image))
            .expect("stat")
            .len();
        let real = repo.gc(&GcOptions::default()).expect("gc");
        assert!(!real.dry_run);
        assert_eq!(real.removed, dry.removed);
        assert_eq!(real.bytes_removed, 3000 + 12 + lost_image_size + 4);
        for d in [kept_obj, kept_image, layer_obj, layer_id, json, config_id] {
            assert!(repo.has_object(&d).expect("has"), "{d} kept");
        }
        for d in [lost_obj, lost_image, stray] {
            assert!(!repo.has_object(&d).expect("has"), "{d} removed");
        }
        assert!(!repo
            .path()
            .join(format!("images/{}", lost_image.to_hex()))
            .exists());
        repo.open_image("keep/me").expect_err("refs/ prefix needed");
        repo.open_image("refs/keep/me").expect("kept image opens");
        let mut out = Vec::new();
        repo.cat_stream("layer", &mut out).expect("layer kept");
        assert_eq!(out, vec![3u8; 7000]);

        // Nothing left to collect.
        let again = repo.gc(&GcOptions::default()).expect("gc");
        assert!(again.removed.is_empty(), "{:?}", again.removed);
    }

    #[test]
    fn dangling_refs_are_pruned_and_explicit_roots_keep_things() {
        let (_dir, repo) = repo();
        let id = repo
            .write_image(&image_referencing(&[]), Some("a/b"))
            .expect("image");
        let other = repo
            .write_image(
                &image_referencing(&[(fsverity::digest(Algorithm::Sha256, b"?"), 1)]),
                None,
            )
            .expect("image");
        std::fs::remove_file(repo.object_path(&id)).expect("rm");
        let mut w = repo.create_stream(0).expect("w");
        w.write_inline(b"inline only");
        let s = repo.write_stream("loose", w, None).expect("stream");

        let report = repo
            .gc(&GcOptions {
                dry_run: false,
                roots: vec![other.to_hex(), "loose".into()],
            })
            .expect("gc");
        assert_eq!(removed(&report, RemovedKind::ImageRef), ["images/refs/a/b"]);
        assert_eq!(
            removed(&report, RemovedKind::ImageLink),
            [format!("images/{}", id.to_hex())]
        );
        assert!(repo.has_object(&other).expect("has"));
        assert!(repo.has_object(&s).expect("has"));
        assert_eq!(report.images_pruned, 2);

        assert!(matches!(
            repo.gc(&GcOptions {
                dry_run: true,
                roots: vec!["unknown".into()],
            }),
            Err(RepoError::RootNotFound { .. })
        ));
    }

    #[test]
    fn a_corrupt_root_stops_gc_before_removing_anything() {
        let (_dir, repo) = repo();
        let (obj, _) = repo.ensure_object(&[7u8; 100]).expect("object");
        let id = repo
            .write_image(&image_referencing(&[(obj, 100)]), Some("t"))
            .expect("image");
        std::fs::write(repo.object_path(&id), b"garbage").expect("corrupt");
        let before = files(repo.path());
        let err = repo.gc(&GcOptions::default()).expect_err("corrupt root");
        assert!(err.to_string().contains("images/refs/t"), "{err}");
        assert_eq!(files(repo.path()), before);
    }

    #[test]
    fn gc_waits_for_other_openers_and_read_only_repos_refuse() {
        let (_dir, repo) = repo();
        let path = repo.path().to_path_buf();
        let writer = Repository::open(&path, &OpenOptions::default()).expect("open");
        let (obj, _) = writer
            .ensure_object(b"written by a concurrent writer")
            .expect("obj");
        let gc = std::thread::spawn(move || {
            let report = repo.gc(&GcOptions::default()).expect("gc");
            (repo, report)
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            !gc.is_finished(),
            "GC must wait for the writer's shared lock"
        );
        // The writer names its object before it closes: GC, running after, keeps it.
        writer
            .write_image(&image_referencing(&[(obj, 30)]), Some("w"))
            .expect("image");
        drop(writer);
        let (repo, report) = gc.join().expect("join");
        assert_eq!(report.objects_removed, 0, "{:?}", report.removed);
        assert!(repo.has_object(&obj).expect("has"));
        drop(repo);

        let ro = Repository::open(
            &path,
            &OpenOptions {
                read_only: true,
                ..OpenOptions::default()
            },
        )
        .expect("open");
        assert!(matches!(
            ro.gc(&GcOptions::default()),
            Err(RepoError::ReadOnly { .. })
        ));
        ro.gc(&GcOptions {
            dry_run: true,
            ..GcOptions::default()
        })
        .expect("dry run on a read-only repository");
    }
}
