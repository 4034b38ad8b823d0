//! Importing one layer blob as the splitstream `oci-layer-<diff_id>` (docs/formats.md §5.2).
//!
//! The blob is decompressed (gzip, possibly multi-member; zstd, possibly multi-frame; or a
//! plain tar, told apart by their magic bytes) on a thread of its own, which hands the tar over
//! in pieces both to the parser and to another thread hashing it (the `diff_id`). The `tar`
//! crate walks the headers; every byte it reads goes through a [`Tee`] that appends it to the
//! stream as inline data. For a regular file whose body is larger than 64 bytes, the tee is
//! switched off and the body becomes an object: small bodies are hashed here, in batches (the
//! stream content after a body waits with it for its digest), and written by the repository's
//! background writer ([`ObjectWriter`]); large ones are streamed into the repository (never
//! held in memory whole); the stream records a reference to it. Padding, extension headers,
//! end-of-archive blocks and trailing bytes all go inline, so reassembling the stream gives
//! back the tar byte for byte.
//!
//! Why the `tar` crate and not our own parser: it already handles the header formats (GNU long
//! names, PAX overrides, base-256 numbers, checksums), reads exactly the bytes it needs without
//! buffering ahead, and tells us where each body starts; the tee gives us the raw bytes around
//! the bodies. The stream name is created only after the diff_id is verified.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

use cfs_format::Digest;
use cfs_repo::repo::{ObjectWriter, RepoError, Repository};
use cfs_repo::splitstream::{content_type, SplitStreamWriter};

use crate::digest::{BlobHasher, OciDigest};
use crate::entry::{display_path, parse_entry, EntryKind, LayerEntry};
use crate::error::{EntryProblem, OciError};
use crate::names::layer_stream_id;

/// Regular-file bodies up to this size stay inline in the stream (`INLINE_CONTENT_MAX_V0`).
pub const INLINE_MAX: u64 = 64;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Tell the compression from the first bytes of a blob.
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// What importing one layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportStats {
    /// Tar entries (files, directories, links, …).
    pub entries: u64,
    /// Size of the uncompressed tar.
    pub tar_bytes: u64,
    /// Objects written because they were new.
    pub objects_new: u64,
    /// Objects that were already in the repository.
    pub objects_reused: u64,
    /// Bytes of the new objects.
    pub bytes_new: u64,
    /// Bytes of the reused objects.
    pub bytes_reused: u64,
}

impl ImportStats {
    /// Add `other`'s counters to these.
    pub fn add(&mut self, other: &ImportStats) {
        self.entries += other.entries;
        self.tar_bytes += other.tar_bytes;
        self.objects_new += other.objects_new;
        self.objects_reused += other.objects_reused;
        self.bytes_new += other.bytes_new;
        self.bytes_reused += other.bytes_reused;
    }
}

/// Small bodies are hashed in batches of this many files at most ([`fsverity::digest_many`]
/// hashes their leftover blocks together)…
const BATCH_FILES: usize = 32;
/// …or of this many bytes.
const BATCH_BYTES: usize = 1 << 20;

/// Stream content read but not yet written because a body before it waits for its digest.
enum Pending {
    /// Inline bytes.
    Inline(Vec<u8>),
    /// A small file's body, to be stored as an object.
    Body(Vec<u8>),
}

/// State shared between the tee (inside the tar reader) and the import loop.
struct Shared {
    writer: SplitStreamWriter,
    /// Append what is read to the stream as inline data.
    capture: bool,
    /// Bytes of uncompressed tar read so far.
    consumed: u64,
    /// What waits for the next batch of digests, in stream order (empty: nothing waits, and
    /// inline bytes go straight to the writer).
    pending: Vec<Pending>,
    /// Bodies in `pending`.
    pending_bodies: usize,
    /// Bytes in `pending`, bodies and inline bytes.
    pending_bytes: usize,
    /// The stream's name, for errors.
    stream: String,
}

impl Shared {
    fn inline(&mut self, data: &[u8]) {
        match self.pending.last_mut() {
            None => return self.writer.write_inline(data),
            Some(Pending::Inline(buf)) => buf.extend_from_slice(data),
            Some(Pending::Body(_)) => self.pending.push(Pending::Inline(data.to_vec())),
        }
        // Waiting inline bytes count towards the batch too: a body followed by many small
        // entries must not hold them all.
        self.pending_bytes += data.len();
    }

    /// Hash the waiting bodies together, queue them as objects, and write the waiting stream
    /// content in order.
    fn flush(&mut self, objects: &mut ObjectWriter<'_>) -> Result<(), OciError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_bodies = 0;
        self.pending_bytes = 0;
        let mut bodies = Vec::new();
        let mut sizes = Vec::new();
        let mut order = Vec::with_capacity(pending.len());
        for item in pending {
            match item {
                Pending::Body(body) => {
                    sizes.push(body.len() as u64);
                    bodies.push(body);
                    order.push(None);
                }
                Pending::Inline(bytes) => order.push(Some(bytes)),
            }
        }
        let digests = objects.store_many(bodies)?;
        let mut next = digests.iter().zip(sizes);
        for item in order {
            let Some(bytes) = item else {
                let Some((digest, size)) = next.next() else {
                    return Err(OciError::Corrupt {
                        what: self.stream.clone(),
                        reason: "internal error: a batch got fewer digests than bodies".into(),
                    });
                };
                self.writer
                    .write_reference(digest, size)
                    .map_err(|source| RepoError::SplitStream {
                        what: self.stream.clone(),
                        source,
                    })?;
                continue;
            };
            self.writer.write_inline(&bytes);
        }
        Ok(())
    }
}

/// While capturing, appends everything the tar reader reads to the stream.
struct Tee<R> {
    inner: R,
    shared: Rc<RefCell<Shared>>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = buf.get(..n).unwrap_or_default();
        let mut s = self.shared.borrow_mut();
        s.consumed += n as u64;
        if s.capture {
            s.inline(data);
        }
        Ok(n)
    }
}

/// Size of the pieces of uncompressed tar passed from the decompressing thread to the parser.
const TAR_CHUNK: usize = 256 << 10;
/// Pieces queued for the parser, and for the hasher, at most.
const TAR_CHUNKS_IN_FLIGHT: usize = 8;

/// A piece of uncompressed tar, read by both the parser and the diff_id hasher.
type Piece = Arc<Vec<u8>>;

/// What the decompressing thread sends the parser.
enum Inflated {
    /// The next piece of the tar.
    Data(Piece),
    /// The end of the tar, with its digest (the diff_id to check). Nothing followed the
    /// compressed stream.
    End(OciDigest),
    /// Reading or decompressing failed.
    Failed(io::Error),
}

/// The decompressor's supply of piece buffers: `give_back` is cloned to whoever reads pieces,
/// `spare` is where the buffers come back.
struct PieceBuffers<'a> {
    give_back: &'a Sender<Vec<u8>>,
    spare: &'a Receiver<Vec<u8>>,
}

/// Whichever of the parser and the hasher lets go of a piece last hands its buffer back to the
/// decompressor.
fn recycle(piece: Piece, spare: &Sender<Vec<u8>>) {
    if let Some(buf) = Arc::into_inner(piece) {
        let _ = spare.send(buf);
    }
}

/// Decompress `blob` (gzip, zstd or plain, told by its magic bytes) into `out`, while a thread
/// of its own hashes the uncompressed tar with `algorithm`. Decompressing is the longest single
/// task of an import, so hashing the tar (about a third of it again) goes elsewhere: the parser
/// is busy with fs-verity, and a thread of its own lets the scheduler run it wherever a CPU is
/// idle.
/// Stops early when the parser hangs up.
fn inflate(
    blob: &mut (dyn Read + Send),
    algorithm: crate::digest::DigestAlgorithm,
    out: &SyncSender<Inflated>,
    buffers: PieceBuffers<'_>,
) {
    let PieceBuffers { give_back, spare } = buffers;
    let (to_hasher, hasher_input) = mpsc::sync_channel::<Piece>(TAR_CHUNKS_IN_FLIGHT);
    let result = std::thread::scope(|scope| {
        let give_back_hashed = give_back.clone();
        let hasher = std::thread::Builder::new()
            .name("cfs-diff-id".into())
            .spawn_scoped(scope, move || {
                let mut hasher = BlobHasher::new(algorithm);
                for piece in hasher_input {
                    hasher.update(&piece);
                    recycle(piece, &give_back_hashed);
                }
                hasher.finish()
            })
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting the diff_id hashing thread: {e}"),
                )
            })?;
        let fed = decompress_into(blob, out, &to_hasher, spare);
        // The hasher ends when its input does.
        drop(to_hasher);
        let digest = hasher
            .join()
            .map_err(|_| io::Error::other("internal error: the diff_id hashing thread panicked"))?;
        Ok(fed?.then_some(digest))
    });
    let last = match result {
        Ok(Some(digest)) => Inflated::End(digest),
        Ok(None) => return,
        Err(e) => Inflated::Failed(e),
    };
    let _ = out.send(last);
}

/// The decompressing loop of [`inflate`]: every piece goes to the parser (`out`) and to the
/// hasher. Returns whether the whole blob was decompressed (false: the parser hung up).
fn decompress_into(
    blob: &mut (dyn Read + Send),
    out: &SyncSender<Inflated>,
    to_hasher: &SyncSender<Piece>,
    spare: &Receiver<Vec<u8>>,
) -> io::Result<bool> {
    let mut magic = [0u8; 4];
    let n = cfs_repo::read_full(blob, &mut magic)?;
    let head = &magic[..n];
    {
        let src = head.chain(&mut *blob);
        let mut decompressed: Box<dyn Read + '_> = match Compression::sniff(head) {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(src)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(src)?),
            Compression::None => Box::new(src),
        };
        loop {
            // A recycled buffer was cut to its data; growing it back only zeroes the tail.
            let mut buf = spare.try_recv().unwrap_or_default();
            buf.resize(TAR_CHUNK, 0);
            let n = cfs_repo::read_full(&mut *decompressed, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            let piece = Arc::new(buf);
            if to_hasher.send(Arc::clone(&piece)).is_err()
                || out.send(Inflated::Data(piece)).is_err()
            {
                // The parser stopped (it failed); nothing more is wanted.
                return Ok(false);
            }
        }
    }
    let mut trailing = [0u8; 1];
    if cfs_repo::read_full(blob, &mut trailing)? != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "trailing data after the compressed stream",
        ));
    }
    Ok(true)
}

/// The parser's side of [`inflate`]: reads the pieces in order and hands emptied buffers back.
struct TarPieces {
    pieces: Receiver<Inflated>,
    give_back: Sender<Vec<u8>>,
    current: Option<Piece>,
    at: usize,
    /// Set at the end of the tar: its digest.
    digest: Option<OciDigest>,
}

impl Read for TarPieces {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self
                .current
                .as_deref()
                .and_then(|piece| piece.get(self.at..))
                .unwrap_or_default();
            if !left.is_empty() {
                let n = left.len().min(out.len());
                out[..n].copy_from_slice(&left[..n]);
                self.at += n;
                return Ok(n);
            }
            if self.digest.is_some() {
                return Ok(0);
            }
            match self.pieces.recv() {
                Ok(Inflated::Data(piece)) => {
                    if let Some(used) = self.current.replace(piece) {
                        recycle(used, &self.give_back);
                    }
                    self.at = 0;
                }
                Ok(Inflated::End(digest)) => self.digest = Some(digest),
                Ok(Inflated::Failed(e)) => return Err(e),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "decompression stopped before the end of the blob",
                    ))
                }
            }
        }
    }
}

/// Import the layer blob `blob` (compressed digest `blob_digest`, expected uncompressed digest
/// `diff_id`) as the stream `oci-layer-<diff_id>`. Returns the stream's object digest and the
/// counters. On any failure no stream name is created (objects already stored stay as garbage
/// for GC).
///
/// Four threads share the work: one decompresses, one hashes the tar, this one parses it and
/// hashes file bodies, and the repository's object writer creates the objects (the writer's
/// flush thread only starts their writeback early).
pub fn import_layer(
    repo: &Repository,
    blob: &mut (dyn Read + Send),
    blob_digest: &OciDigest,
    diff_id: &OciDigest,
) -> Result<(Digest, ImportStats), OciError> {
    let layer = diff_id.to_string();
    let (piece_tx, pieces) = mpsc::sync_channel(TAR_CHUNKS_IN_FLIGHT);
    let (give_back, spare) = mpsc::channel();
    let give_back_inflated = give_back.clone();
    let algorithm = diff_id.algorithm();
    let (actual, writer, stats) = std::thread::scope(|scope| {
        let inflater = std::thread::Builder::new()
            .name("cfs-inflate".into())
            .spawn_scoped(scope, move || {
                inflate(
                    blob,
                    algorithm,
                    &piece_tx,
                    PieceBuffers {
                        give_back: &give_back_inflated,
                        spare: &spare,
                    },
                )
            })
            .map_err(|e| OciError::io("starting the decompression thread", e))?;
        let mut tar = TarPieces {
            pieces,
            give_back,
            current: None,
            at: 0,
            digest: None,
        };
        let split = split_tar(repo, &mut tar, diff_id);
        // Hanging up stops the decompressor if the parser gave up early.
        drop(tar);
        inflater.join().map_err(|_| OciError::Corrupt {
            what: layer.clone(),
            reason: "internal error: the decompression thread panicked".into(),
        })?;
        split
    })?;
    if actual != *diff_id {
        return Err(OciError::DiffIdMismatch {
            blob: blob_digest.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    let id = repo.write_stream(&layer_stream_id(diff_id), writer, None)?;
    Ok((id, stats))
}

/// Walk the uncompressed tar `tar` to its end, storing large bodies as objects and everything
/// else inline. Returns the digest of the tar (for the diff_id check), the stream (not yet
/// stored) and the counters.
fn split_tar(
    repo: &Repository,
    tar: &mut TarPieces,
    diff_id: &OciDigest,
) -> Result<(OciDigest, SplitStreamWriter, ImportStats), OciError> {
    let layer = diff_id.to_string();
    let layer_err = |context: String, source: io::Error| OciError::Layer {
        layer: layer.clone(),
        context,
        source,
    };
    let shared = Rc::new(RefCell::new(Shared {
        writer: repo.create_stream(content_type::OCI_LAYER)?,
        capture: true,
        consumed: 0,
        pending: Vec::new(),
        pending_bodies: 0,
        pending_bytes: 0,
        stream: layer_stream_id(diff_id),
    }));
    let mut stats = ImportStats::default();
    let ((), written) = repo.with_object_writer(|objects| {
        let tee = Tee {
            inner: &mut *tar,
            shared: Rc::clone(&shared),
        };
        let mut archive = tar::Archive::new(tee);
        let mut last: Option<String> = None;
        let where_ = |last: &Option<String>| match last {
            Some(name) => format!("reading the tar after entry {name:?}"),
            None => "reading the tar".to_owned(),
        };
        let entries = archive.entries().map_err(|e| layer_err(where_(&last), e))?;
        for item in entries {
            let mut entry = item.map_err(|e| layer_err(where_(&last), e))?;
            let name = display_path(&entry);
            let parsed = parse_entry(&mut entry).map_err(|problem| OciError::Entry {
                layer: layer.clone(),
                entry: name.clone(),
                problem,
            })?;
            stats.entries += 1;
            if let Some(LayerEntry {
                kind: EntryKind::Regular { size },
                ..
            }) = parsed
            {
                if size > INLINE_MAX {
                    if size > ObjectWriter::MAX_OBJECT as u64 {
                        // Streamed bodies are written at once: the batch before goes first.
                        shared.borrow_mut().flush(objects)?;
                    }
                    shared.borrow_mut().capture = false;
                    let stored = store_body(objects, &shared, &mut entry, size, &mut stats);
                    shared.borrow_mut().capture = true;
                    let got = stored.map_err(|e| match e {
                        RepoError::Import { source } => {
                            layer_err(format!("reading the content of {name:?}"), source)
                        }
                        other => OciError::Repo(other),
                    })?;
                    if got != size {
                        return Err(OciError::Entry {
                            layer: layer.clone(),
                            entry: name,
                            problem: EntryProblem::Truncated {
                                expected: size,
                                actual: got,
                            },
                        });
                    }
                }
            }
            let full = {
                let s = shared.borrow();
                s.pending_bodies >= BATCH_FILES || s.pending_bytes >= BATCH_BYTES
            };
            if full {
                shared.borrow_mut().flush(objects)?;
            }
            last = Some(name);
        }
        // The end-of-archive blocks and anything after them belong to the tar too.
        let mut tee = archive.into_inner();
        io::copy(&mut tee, &mut io::sink())
            .map_err(|e| layer_err("reading the end of the tar".into(), e))?;
        shared.borrow_mut().flush(objects)?;
        Ok::<_, OciError>(())
    })?;
    stats.objects_new += written.new;
    stats.objects_reused += written.reused;
    stats.bytes_new += written.bytes_new;
    stats.bytes_reused += written.bytes_reused;
    let actual = tar.digest.take().ok_or_else(|| OciError::Corrupt {
        what: layer.clone(),
        reason: "internal error: the tar ended without its digest".into(),
    })?;
    let Shared {
        writer, consumed, ..
    } = Rc::try_unwrap(shared)
        .map_err(|_| OciError::Corrupt {
            what: layer.clone(),
            reason: "internal error: the tar reader outlived the import".into(),
        })?
        .into_inner();
    stats.tar_bytes = consumed;
    Ok((actual, writer, stats))
}

/// Store the body of a regular file (`size` bytes from `body`) as an object and refer to it
/// from the stream: small bodies wait in `shared` to be hashed in a batch and written by the
/// background writer; large ones are streamed into the repository here (the caller has flushed
/// the batch before them). Returns the bytes read (less than `size` when the tar is truncated; nothing is stored
/// then). Counts streamed objects in `stats`; the writer counts its own.
fn store_body(
    objects: &mut ObjectWriter<'_>,
    shared: &RefCell<Shared>,
    body: &mut dyn Read,
    size: u64,
    stats: &mut ImportStats,
) -> Result<u64, RepoError> {
    if size <= ObjectWriter::MAX_OBJECT as u64 {
        let mut buf = objects.buffer();
        buf.reserve(size as usize);
        let got = body
            .take(size)
            .read_to_end(&mut buf)
            .map_err(|source| RepoError::Import { source })?;
        if got as u64 != size {
            return Ok(got as u64);
        }
        let mut s = shared.borrow_mut();
        s.pending.push(Pending::Body(buf));
        s.pending_bodies += 1;
        s.pending_bytes += got;
        return Ok(got as u64);
    }
    let (digest, fresh, got) = objects.import_reader(body, Some(size))?;
    if fresh {
        stats.objects_new += 1;
        stats.bytes_new += got;
    } else {
        stats.objects_reused += 1;
        stats.bytes_reused += got;
    }
    if got == size {
        let mut s = shared.borrow_mut();
        if let Err(source) = s.writer.write_reference(&digest, size) {
            return Err(RepoError::SplitStream {
                what: s.stream.clone(),
                source,
            });
        }
    }
    Ok(got)
}
