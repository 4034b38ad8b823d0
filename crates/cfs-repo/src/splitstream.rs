//! The splitstream file format (docs/formats.md §5.1): a byte stream (a tar layer, a JSON document)
//! stored as zstd-compressed inline chunks plus references to repository objects, so that large
//! embedded contents are deduplicated in the object store and the original bytes can be
//! reassembled exactly.
//!
//! This module is pure: [`SplitStreamWriter`] builds the file in memory from inline data and
//! digests the caller has already stored, and [`SplitStream`] parses one (both the current and the
//! legacy bootc ≤ 1.15 header) and iterates its chunks. Storing and reassembling against a
//! repository lives in [`crate::repo`] (`write_stream`, `write_external`, `cat_stream`).
//!
//! Layout written (all integers little-endian): a 32-byte header, the 80-byte info section, the
//! `stream_refs` and `object_refs` digest arrays, the zstd-compressed named references and the
//! zstd-compressed chunk stream. Chunks start with an `i64`: `-n` is followed by `n` inline
//! bytes, `k ≥ 0` stands for the content of `object_refs[k]`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};

use cfs_format::{Algorithm, Digest};

/// The magic bytes of a splitstream header.
pub const MAGIC: &[u8; 11] = b"SplitStream";
/// Size of the fixed header at offset 0.
pub const HEADER_SIZE: usize = 32;
/// Size of the info section this implementation writes (larger ones are accepted).
pub const INFO_SIZE: usize = 80;
/// `lg_blocksize` of the fs-verity digests (4096-byte blocks).
const LG_BLOCKSIZE: u8 = 12;
/// Where the magic sits in the legacy (bootc ≤ 1.15) header.
const LEGACY_MAGIC_OFFSET: usize = 18;

/// Well-known `content_type` values: 8 ASCII bytes read as a little-endian `u64`.
pub mod content_type {
    /// An OCI tar layer.
    pub const OCI_LAYER: u64 = u64::from_le_bytes(*b"ocilayer");
    /// An OCI image config.
    pub const OCI_CONFIG: u64 = u64::from_le_bytes(*b"ociconfg");
    /// An OCI image manifest.
    pub const OCI_MANIFEST: u64 = u64::from_le_bytes(*b"ocimanif");
    /// Any other OCI blob.
    pub const OCI_BLOB: u64 = u64::from_le_bytes(*b"oci_blob");
}

/// Why a splitstream could not be written or parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SplitStreamError {
    /// The file is shorter than its fixed header.
    #[error("splitstream too short: {len} bytes, the header needs {HEADER_SIZE}")]
    TooShort {
        /// File size.
        len: usize,
    },
    /// Neither header form carries the magic.
    #[error("not a splitstream (no \"SplitStream\" magic)")]
    BadMagic,
    /// A header version other than 0.
    #[error("unsupported splitstream version {0}")]
    UnsupportedVersion(u8),
    /// The algorithm byte is neither 1 (sha256) nor 2 (sha512).
    #[error("unknown splitstream fs-verity algorithm {0}")]
    UnknownAlgorithm(u8),
    /// The stream's algorithm is not the expected (repository) one.
    #[error("splitstream uses {found} digests, expected {expected}")]
    AlgorithmMismatch {
        /// What the header says.
        found: Algorithm,
        /// What the caller expected.
        expected: Algorithm,
    },
    /// `lg_blocksize` other than 12.
    #[error("unsupported splitstream fs-verity block size 2^{0}")]
    UnsupportedBlockSize(u8),
    /// A section range is reversed or lies outside the file.
    #[error("splitstream {what} section {start}..{end} is outside the file of {len} bytes")]
    BadRange {
        /// Which section.
        what: &'static str,
        /// Its start offset.
        start: u64,
        /// Its end offset.
        end: u64,
        /// The file size.
        len: usize,
    },
    /// The info section is smaller than the 80 bytes we need.
    #[error("splitstream info section has {len} bytes, expected at least {INFO_SIZE}")]
    InfoTooSmall {
        /// Its size.
        len: u64,
    },
    /// A digest array's length is not a multiple of the digest size.
    #[error("splitstream {what} section has {len} bytes, not a multiple of {digest_len}")]
    RaggedRefs {
        /// Which array.
        what: &'static str,
        /// Its size in bytes.
        len: usize,
        /// The digest size.
        digest_len: usize,
    },
    /// The named references section is malformed.
    #[error("splitstream named references: {0}")]
    NamedRefs(String),
    /// zstd compression or decompression failed (corrupt or truncated data).
    #[error("splitstream {what}: {source}")]
    Zstd {
        /// Which section.
        what: &'static str,
        /// The decoder's error.
        source: io::Error,
    },
    /// The chunk stream ended in the middle of a chunk.
    #[error("splitstream chunk stream ends in the middle of a chunk at byte {offset}")]
    Truncated {
        /// Uncompressed offset of the incomplete chunk.
        offset: u64,
    },
    /// An inline chunk is larger than the whole stream claims to be.
    #[error("splitstream inline chunk of {len} bytes exceeds the stream size {stream_size}")]
    ChunkTooLarge {
        /// The chunk's length.
        len: u64,
        /// The info section's `stream_size`.
        stream_size: u64,
    },
    /// An external chunk's index is outside `object_refs`.
    #[error("splitstream refers to object #{index}, but only {count} are listed")]
    RefOutOfRange {
        /// The index in the chunk.
        index: u64,
        /// Number of `object_refs`.
        count: usize,
    },
    /// A digest given to the writer is of the wrong algorithm.
    #[error("digest {digest:?} does not use the stream's algorithm {expected}")]
    WrongDigest {
        /// The digest.
        digest: Digest,
        /// The stream's algorithm.
        expected: Algorithm,
    },
    /// A named reference name contains a NUL byte.
    #[error("invalid named reference {0:?}: names cannot contain NUL")]
    InvalidRefName(String),
}

/// Which header form a parsed splitstream used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderForm {
    /// Magic at offset 0 (what we write).
    Current,
    /// Info range first, magic at offset 18 (bootc ≤ 1.15).
    Legacy,
}

/// A list of digests, each kept once, in order of first use.
#[derive(Debug, Default)]
struct UniqueDigests {
    items: Vec<Digest>,
    index: HashMap<Digest, usize>,
}

impl UniqueDigests {
    fn ensure(&mut self, d: Digest) -> usize {
        *self.index.entry(d).or_insert_with(|| {
            self.items.push(d);
            self.items.len() - 1
        })
    }

    fn bytes(&self) -> Vec<u8> {
        self.items
            .iter()
            .flat_map(|d| d.as_bytes())
            .copied()
            .collect()
    }
}

/// Builds a splitstream in memory.
///
/// Feed it inline bytes ([`write_inline`](Self::write_inline)) and references to objects already
/// stored in the repository ([`write_reference`](Self::write_reference)), in stream order; add
/// references to other streams with [`add_named_stream_ref`](Self::add_named_stream_ref) or
/// [`add_stream_ref`](Self::add_stream_ref); then [`finish`](Self::finish) gives the file's
/// bytes. Adjacent inline data becomes one chunk. The output is deterministic for a given zstd
/// library version (default level, streaming frames, as composefs-rs writes them).
pub struct SplitStreamWriter {
    algorithm: Algorithm,
    content_type: u64,
    stream_refs: UniqueDigests,
    object_refs: UniqueDigests,
    named_refs: BTreeMap<String, usize>,
    inline: Vec<u8>,
    stream_size: u64,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
}

impl fmt::Debug for SplitStreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitStreamWriter")
            .field("algorithm", &self.algorithm)
            .field("content_type", &self.content_type)
            .field("object_refs", &self.object_refs.items.len())
            .field("stream_refs", &self.stream_refs.items.len())
            .field("stream_size", &self.stream_size)
            .finish_non_exhaustive()
    }
}

fn zstd_error(what: &'static str) -> impl FnOnce(io::Error) -> SplitStreamError {
    move |source| SplitStreamError::Zstd { what, source }
}

impl SplitStreamWriter {
    /// A new, empty stream whose references use `algorithm` (the repository's) and whose
    /// `content_type` is an arbitrary tag (see [`content_type`]).
    pub fn new(algorithm: Algorithm, content_type: u64) -> Result<Self, SplitStreamError> {
        let encoder = zstd::stream::write::Encoder::new(Vec::new(), 0)
            .map_err(zstd_error("stream compression"))?;
        Ok(SplitStreamWriter {
            algorithm,
            content_type,
            stream_refs: UniqueDigests::default(),
            object_refs: UniqueDigests::default(),
            named_refs: BTreeMap::new(),
            inline: Vec::new(),
            stream_size: 0,
            encoder,
        })
    }

    /// The digest algorithm of this stream's references.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Total bytes the stream reassembles to so far.
    pub fn stream_size(&self) -> u64 {
        self.stream_size + self.inline.len() as u64
    }

    fn check(&self, digest: &Digest) -> Result<(), SplitStreamError> {
        if digest.algorithm() == self.algorithm {
            Ok(())
        } else {
            Err(SplitStreamError::WrongDigest {
                digest: *digest,
                expected: self.algorithm,
            })
        }
    }

    /// Append inline bytes (buffered until the next reference or the end).
    pub fn write_inline(&mut self, data: &[u8]) {
        self.inline.extend_from_slice(data);
    }

    fn flush_inline(&mut self) -> Result<(), SplitStreamError> {
        if self.inline.is_empty() {
            return Ok(());
        }
        let len = self.inline.len() as u64;
        // A Vec never holds more than isize::MAX bytes, so the negation cannot overflow.
        let instruction = -(len as i64);
        self.encoder
            .write_all(&instruction.to_le_bytes())
            .and_then(|()| self.encoder.write_all(&self.inline))
            .map_err(zstd_error("stream compression"))?;
        self.stream_size += len;
        self.inline.clear();
        Ok(())
    }

    /// Append the content of an object (already stored, `size` bytes long) by reference.
    pub fn write_reference(&mut self, digest: &Digest, size: u64) -> Result<(), SplitStreamError> {
        self.check(digest)?;
        self.flush_inline()?;
        let index = self.object_refs.ensure(*digest) as i64;
        self.encoder
            .write_all(&index.to_le_bytes())
            .map_err(zstd_error("stream compression"))?;
        self.stream_size += size;
        Ok(())
    }

    /// List an object in `object_refs` without placing it in the stream (it is kept alive by GC
    /// as long as this stream is). Returns its index.
    pub fn add_object_ref(&mut self, digest: &Digest) -> Result<usize, SplitStreamError> {
        self.check(digest)?;
        Ok(self.object_refs.ensure(*digest))
    }

    /// List another stream (by its object digest) in `stream_refs`. Returns its index.
    pub fn add_stream_ref(&mut self, digest: &Digest) -> Result<usize, SplitStreamError> {
        self.check(digest)?;
        Ok(self.stream_refs.ensure(*digest))
    }

    /// Refer to another stream (or image) by digest under `name` (a later call with the same
    /// name replaces the earlier one).
    pub fn add_named_stream_ref(
        &mut self,
        name: &str,
        digest: &Digest,
    ) -> Result<(), SplitStreamError> {
        if name.contains('\0') {
            return Err(SplitStreamError::InvalidRefName(name.to_owned()));
        }
        let index = self.add_stream_ref(digest)?;
        self.named_refs.insert(name.to_owned(), index);
        Ok(())
    }

    /// The object digests listed so far, in index order.
    pub fn object_refs(&self) -> &[Digest] {
        &self.object_refs.items
    }

    /// Finish the stream and return the file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, SplitStreamError> {
        self.flush_inline()?;
        let stream = self
            .encoder
            .finish()
            .map_err(zstd_error("stream compression"))?;
        let mut named = zstd::stream::write::Encoder::new(Vec::new(), 0)
            .map_err(zstd_error("named references"))?;
        for (name, index) in &self.named_refs {
            write!(named, "{index}:{name}\0").map_err(zstd_error("named references"))?;
        }
        let named = named.finish().map_err(zstd_error("named references"))?;
        let stream_refs = self.stream_refs.bytes();
        let object_refs = self.object_refs.bytes();

        let info_start = HEADER_SIZE as u64;
        let stream_refs_start = info_start + INFO_SIZE as u64;
        let object_refs_start = stream_refs_start + stream_refs.len() as u64;
        let named_start = object_refs_start + object_refs.len() as u64;
        let stream_start = named_start + named.len() as u64;
        let stream_end = stream_start + stream.len() as u64;

        let mut out = Vec::with_capacity(stream_end as usize);
        out.extend_from_slice(MAGIC);
        out.push(0); // version
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.push(self.algorithm.kernel_id());
        out.push(LG_BLOCKSIZE);
        put_range(&mut out, info_start, stream_refs_start);
        put_range(&mut out, stream_refs_start, object_refs_start);
        put_range(&mut out, object_refs_start, named_start);
        put_range(&mut out, stream_start, stream_end);
        put_range(&mut out, named_start, stream_start);
        out.extend_from_slice(&self.content_type.to_le_bytes());
        out.extend_from_slice(&self.stream_size.to_le_bytes());
        out.extend_from_slice(&stream_refs);
        out.extend_from_slice(&object_refs);
        out.extend_from_slice(&named);
        out.extend_from_slice(&stream);
        debug_assert_eq!(out.len() as u64, stream_end);
        Ok(out)
    }
}

fn put_range(out: &mut Vec<u8>, start: u64, end: u64) {
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&end.to_le_bytes());
}

/// A section of the file: `start..end` byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileRange {
    start: usize,
    end: usize,
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn range_at(
    data: &[u8],
    field: &[u8],
    off: usize,
    what: &'static str,
) -> Result<FileRange, SplitStreamError> {
    let start = u64_at(field, off);
    let end = u64_at(field, off + 8);
    let bad = || SplitStreamError::BadRange {
        what,
        start,
        end,
        len: data.len(),
    };
    let s = usize::try_from(start).map_err(|_| bad())?;
    let e = usize::try_from(end).map_err(|_| bad())?;
    if s > e || e > data.len() {
        return Err(bad());
    }
    Ok(FileRange { start: s, end: e })
}

/// A parsed splitstream file (it owns the file's bytes).
///
/// Parsing validates the header, the info section, both reference arrays and the named
/// references; the chunk stream is decompressed lazily by [`chunks`](Self::chunks).
pub struct SplitStream {
    data: Vec<u8>,
    form: HeaderForm,
    algorithm: Algorithm,
    content_type: u64,
    stream_size: u64,
    stream_refs: Vec<Digest>,
    object_refs: Vec<Digest>,
    named_refs: BTreeMap<String, Digest>,
    stream: FileRange,
}

impl fmt::Debug for SplitStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitStream")
            .field("form", &self.form)
            .field("algorithm", &self.algorithm)
            .field("content_type", &self.content_type)
            .field("stream_size", &self.stream_size)
            .field("stream_refs", &self.stream_refs)
            .field("object_refs", &self.object_refs)
            .field("named_refs", &self.named_refs)
            .finish_non_exhaustive()
    }
}

/// Does `data` start like a splitstream (either header form)?
pub fn is_splitstream(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
        || data
            .get(LEGACY_MAGIC_OFFSET..LEGACY_MAGIC_OFFSET + MAGIC.len())
            .is_some_and(|m| m == MAGIC)
}

impl SplitStream {
    /// Parse `data`. With `expected` set, a stream of another digest algorithm is refused.
    pub fn parse(data: Vec<u8>, expected: Option<Algorithm>) -> Result<Self, SplitStreamError> {
        let header = data
            .get(..HEADER_SIZE)
            .ok_or(SplitStreamError::TooShort { len: data.len() })?;
        // (version, algorithm, lg_blocksize, offset of the info range) per header form.
        let (form, version, alg, lg, info_off) = if header.starts_with(MAGIC) {
            (HeaderForm::Current, header[11], header[14], header[15], 16)
        } else if &header[LEGACY_MAGIC_OFFSET..LEGACY_MAGIC_OFFSET + MAGIC.len()] == MAGIC {
            (HeaderForm::Legacy, header[29], header[30], header[31], 0)
        } else {
            return Err(SplitStreamError::BadMagic);
        };
        if version != 0 {
            return Err(SplitStreamError::UnsupportedVersion(version));
        }
        let algorithm = match alg {
            1 => Algorithm::Sha256,
            2 => Algorithm::Sha512,
            other => return Err(SplitStreamError::UnknownAlgorithm(other)),
        };
        if let Some(expected) = expected {
            if expected != algorithm {
                return Err(SplitStreamError::AlgorithmMismatch {
                    found: algorithm,
                    expected,
                });
            }
        }
        if lg != LG_BLOCKSIZE {
            return Err(SplitStreamError::UnsupportedBlockSize(lg));
        }
        let info_range = range_at(&data, header, info_off, "info")?;
        let info = &data[info_range.start..info_range.end];
        if info.len() < INFO_SIZE {
            return Err(SplitStreamError::InfoTooSmall {
                len: info.len() as u64,
            });
        }
        let stream_refs_range = range_at(&data, info, 0, "stream_refs")?;
        let object_refs_range = range_at(&data, info, 16, "object_refs")?;
        let stream = range_at(&data, info, 32, "stream")?;
        let named_range = range_at(&data, info, 48, "named_refs")?;
        let content_type = u64_at(info, 64);
        let stream_size = u64_at(info, 72);

        let stream_refs = digests(&data, stream_refs_range, algorithm, "stream_refs")?;
        let object_refs = digests(&data, object_refs_range, algorithm, "object_refs")?;
        let named_refs = parse_named_refs(&data[named_range.start..named_range.end], &stream_refs)?;
        Ok(SplitStream {
            data,
            form,
            algorithm,
            content_type,
            stream_size,
            stream_refs,
            object_refs,
            named_refs,
            stream,
        })
    }

    /// Which header form the file used.
    pub fn header_form(&self) -> HeaderForm {
        self.form
    }

    /// The digest algorithm of the references.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The `content_type` tag.
    pub fn content_type(&self) -> u64 {
        self.content_type
    }

    /// Total size of the reassembled stream, as recorded.
    pub fn stream_size(&self) -> u64 {
        self.stream_size
    }

    /// Referenced streams (and images), in index order.
    pub fn stream_refs(&self) -> &[Digest] {
        &self.stream_refs
    }

    /// Referenced objects, in index order.
    pub fn object_refs(&self) -> &[Digest] {
        &self.object_refs
    }

    /// Named references, sorted by name.
    pub fn named_refs(&self) -> &BTreeMap<String, Digest> {
        &self.named_refs
    }

    /// The digest of the named reference `name`.
    pub fn named_ref(&self, name: &str) -> Option<&Digest> {
        self.named_refs.get(name)
    }

    /// Iterate over the chunks of the stream, decompressing as it goes.
    pub fn chunks(&self) -> Result<Chunks<'_>, SplitStreamError> {
        let section = &self.data[self.stream.start..self.stream.end];
        let decoder =
            zstd::stream::read::Decoder::with_buffer(section).map_err(zstd_error("stream"))?;
        Ok(Chunks {
            stream: self,
            decoder,
            offset: 0,
            done: false,
        })
    }

    /// Reassemble the whole stream into `out`, reading external chunks through `open_object`.
    /// Fails (after writing what it had) when the result's size differs from
    /// [`stream_size`](Self::stream_size).
    pub fn reassemble<W: Write + ?Sized, R: Read>(
        &self,
        out: &mut W,
        mut open_object: impl FnMut(&Digest) -> io::Result<R>,
    ) -> Result<u64, ReassembleError> {
        let mut written = 0u64;
        for chunk in self.chunks()? {
            match chunk? {
                Chunk::Inline(bytes) => {
                    out.write_all(&bytes).map_err(ReassembleError::Write)?;
                    written += bytes.len() as u64;
                }
                Chunk::External(digest) => {
                    let mut src = open_object(&digest)
                        .map_err(|source| ReassembleError::Object { digest, source })?;
                    written += copy(&mut src, out, &digest)?;
                }
            }
        }
        if written != self.stream_size {
            return Err(ReassembleError::SizeMismatch {
                expected: self.stream_size,
                actual: written,
            });
        }
        Ok(written)
    }
}

fn copy<W: Write + ?Sized>(
    src: &mut impl Read,
    out: &mut W,
    digest: &Digest,
) -> Result<u64, ReassembleError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ReassembleError::Object {
                    digest: *digest,
                    source,
                })
            }
        };
        out.write_all(&buf[..n]).map_err(ReassembleError::Write)?;
        total += n as u64;
    }
}

/// Why reassembling a splitstream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReassembleError {
    /// The stream itself is corrupt.
    #[error(transparent)]
    Format(#[from] SplitStreamError),
    /// A referenced object could not be opened or read.
    #[error("object {digest}: {source}")]
    Object {
        /// The object.
        digest: Digest,
        /// The system error.
        source: io::Error,
    },
    /// Writing the output failed.
    #[error("writing the stream: {0}")]
    Write(io::Error),
    /// The reassembled size differs from the recorded `stream_size`.
    #[error("reassembled {actual} bytes, but the stream records {expected}")]
    SizeMismatch {
        /// `stream_size` from the info section.
        expected: u64,
        /// Bytes produced.
        actual: u64,
    },
}

fn digests(
    data: &[u8],
    range: FileRange,
    algorithm: Algorithm,
    what: &'static str,
) -> Result<Vec<Digest>, SplitStreamError> {
    let bytes = &data[range.start..range.end];
    let dlen = algorithm.digest_len();
    if !bytes.len().is_multiple_of(dlen) {
        return Err(SplitStreamError::RaggedRefs {
            what,
            len: bytes.len(),
            digest_len: dlen,
        });
    }
    Ok(bytes
        .chunks_exact(dlen)
        .filter_map(Digest::from_bytes)
        .collect())
}

/// Decode `"<index>:<name>\0"` records (zstd-compressed). An empty section means none.
fn parse_named_refs(
    section: &[u8],
    stream_refs: &[Digest],
) -> Result<BTreeMap<String, Digest>, SplitStreamError> {
    let mut out = BTreeMap::new();
    if section.is_empty() {
        return Ok(out);
    }
    let mut text = Vec::new();
    zstd::stream::read::Decoder::with_buffer(section)
        .and_then(|mut d| d.read_to_end(&mut text))
        .map_err(zstd_error("named references"))?;
    let Some(body) = text.strip_suffix(b"\0") else {
        if text.is_empty() {
            return Ok(out);
        }
        return Err(SplitStreamError::NamedRefs(
            "last record is not NUL-terminated".into(),
        ));
    };
    for record in body.split(|&b| b == 0) {
        let record = std::str::from_utf8(record)
            .map_err(|_| SplitStreamError::NamedRefs("a record is not UTF-8".into()))?;
        let (index, name) = record
            .split_once(':')
            .ok_or_else(|| SplitStreamError::NamedRefs(format!("record {record:?} has no ':'")))?;
        let index: usize = index.parse().map_err(|_| {
            SplitStreamError::NamedRefs(format!("record {record:?} has a bad index"))
        })?;
        let digest = stream_refs.get(index).ok_or_else(|| {
            SplitStreamError::NamedRefs(format!(
                "record {record:?} refers to stream #{index} of {}",
                stream_refs.len()
            ))
        })?;
        out.insert(name.to_owned(), *digest);
    }
    Ok(out)
}

/// One piece of a splitstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes stored in the stream itself.
    Inline(Vec<u8>),
    /// The whole content of this object.
    External(Digest),
}

/// Iterator over the chunks of a [`SplitStream`]; stops after the first error.
pub struct Chunks<'a> {
    stream: &'a SplitStream,
    decoder: zstd::stream::read::Decoder<'a, &'a [u8]>,
    /// Uncompressed bytes consumed so far (for error messages).
    offset: u64,
    done: bool,
}

impl fmt::Debug for Chunks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunks")
            .field("offset", &self.offset)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Chunks<'_> {
    /// Read exactly `buf.len()` bytes; `Ok(false)` on a clean EOF before the first byte.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<bool, SplitStreamError> {
        let filled =
            crate::read_full(&mut self.decoder, buf).map_err(|source| SplitStreamError::Zstd {
                what: "stream",
                source,
            })?;
        if filled == 0 {
            return Ok(false);
        }
        if filled < buf.len() {
            return Err(SplitStreamError::Truncated {
                offset: self.offset,
            });
        }
        Ok(true)
    }

    fn next_chunk(&mut self) -> Result<Option<Chunk>, SplitStreamError> {
        let mut word = [0u8; 8];
        if !self.read_full(&mut word)? {
            return Ok(None);
        }
        let value = i64::from_le_bytes(word);
        if value >= 0 {
            self.offset += 8;
            let index = value as u64;
            let digest = usize::try_from(index)
                .ok()
                .and_then(|i| self.stream.object_refs.get(i))
                .ok_or(SplitStreamError::RefOutOfRange {
                    index,
                    count: self.stream.object_refs.len(),
                })?;
            return Ok(Some(Chunk::External(*digest)));
        }
        let len = value.unsigned_abs();
        if len > self.stream.stream_size {
            return Err(SplitStreamError::ChunkTooLarge {
                len,
                stream_size: self.stream.stream_size,
            });
        }
        // Bounded by stream_size above; the reads below stop at the data actually there.
        let mut bytes = Vec::new();
        (&mut self.decoder)
            .take(len)
            .read_to_end(&mut bytes)
            .map_err(zstd_error("stream"))?;
        if (bytes.len() as u64) < len {
            return Err(SplitStreamError::Truncated {
                offset: self.offset,
            });
        }
        self.offset += 8 + len;
        Ok(Some(Chunk::Inline(bytes)))
    }
}

impl Iterator for Chunks<'_> {
    type Item = Result<Chunk, SplitStreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.next_chunk().transpose();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use cfs_format::fsverity;

    use super::*;

    fn d(alg: Algorithm, data: &[u8]) -> Digest {
        fsverity::digest(alg, data)
    }

    fn collect(s: &SplitStream) -> Vec<Chunk> {
        s.chunks()
            .expect("chunks")
            .collect::<Result<_, _>>()
            .expect("chunk")
    }

    #[test]
    fn write_then_parse_round_trips_layout_and_chunks() {
        let alg = Algorithm::Sha256;
        let a = d(alg, b"object a");
        let b = d(alg, b"object b");
        let s1 = d(alg, b"stream one");
        let mut w = SplitStreamWriter::new(alg, content_type::OCI_LAYER).expect("writer");
        w.write_inline(b"head");
        w.write_inline(b"er");
        w.write_reference(&a, 8).expect("ref");
        w.write_inline(b"pad");
        w.write_reference(&b, 8).expect("ref");
        w.write_reference(&a, 8).expect("ref");
        w.add_named_stream_ref("zeta", &s1).expect("named");
        w.add_named_stream_ref("alpha", &s1).expect("named");
        assert_eq!(w.stream_size(), 6 + 8 + 3 + 8 + 8);
        let bytes = w.finish().expect("finish");

        // Fixed layout: header, info at 32..112, stream_refs at 112, object_refs after it.
        assert_eq!(&bytes[..11], MAGIC);
        assert_eq!(bytes[14], 1);
        assert_eq!(bytes[15], 12);
        assert_eq!(u64_at(&bytes, 16), 32);
        assert_eq!(u64_at(&bytes, 24), 112);
        assert_eq!(u64_at(&bytes, 32), 112);
        assert_eq!(u64_at(&bytes, 40), 144);
        assert_eq!(u64_at(&bytes, 48), 144);
        assert_eq!(u64_at(&bytes, 56), 208);
        assert_eq!(&bytes[112..144], s1.as_bytes());
        assert_eq!(&bytes[144..176], a.as_bytes());
        assert_eq!(&bytes[176..208], b.as_bytes());

        let s = SplitStream::parse(bytes, Some(alg)).expect("parse");
        assert_eq!(s.header_form(), HeaderForm::Current);
        assert_eq!(s.content_type(), content_type::OCI_LAYER);
        assert_eq!(s.stream_size(), 33);
        assert_eq!(s.object_refs(), &[a, b]);
        assert_eq!(s.stream_refs(), &[s1]);
        let names: Vec<_> = s.named_refs().keys().cloned().collect();
        assert_eq!(names, ["alpha", "zeta"]);
        assert_eq!(s.named_ref("zeta"), Some(&s1));
        assert_eq!(
            collect(&s),
            vec![
                Chunk::Inline(b"header".to_vec()),
                Chunk::External(a),
                Chunk::Inline(b"pad".to_vec()),
                Chunk::External(b),
                Chunk::External(a),
            ]
        );
    }

    #[test]
    fn reassemble_uses_objects_and_checks_the_size() {
        let alg = Algorithm::Sha512;
        let obj = vec![7u8; 10_000];
        let od = d(alg, &obj);
        let mut w = SplitStreamWriter::new(alg, 0).expect("writer");
        w.write_inline(b"<");
        w.write_reference(&od, obj.len() as u64).expect("ref");
        w.write_inline(b">");
        let s = SplitStream::parse(w.finish().expect("finish"), None).expect("parse");
        let mut out = Vec::new();
        let n = s
            .reassemble(&mut out, |digest| {
                assert_eq!(*digest, od);
                Ok(&obj[..])
            })
            .expect("reassemble");
        assert_eq!(n, 10_002);
        assert_eq!(out.len(), 10_002);
        assert_eq!(out[0], b'<');
        assert_eq!(out[10_001], b'>');

        let err = s
            .reassemble(&mut Vec::new(), |_| Ok(&obj[..5]))
            .expect_err("short object");
        assert!(matches!(
            err,
            ReassembleError::SizeMismatch {
                expected: 10_002,
                actual: 7
            }
        ));
    }

    #[test]
    fn empty_stream_is_valid() {
        let w = SplitStreamWriter::new(Algorithm::Sha256, 0).expect("writer");
        let s = SplitStream::parse(w.finish().expect("finish"), None).expect("parse");
        assert!(collect(&s).is_empty());
        assert!(s.named_refs().is_empty());
        assert_eq!(s.stream_size(), 0);
    }

    /// Rewrite a current header into the legacy bootc form.
    fn to_legacy(mut bytes: Vec<u8>) -> Vec<u8> {
        let mut h = [0u8; 32];
        h[0..16].copy_from_slice(&bytes[16..32]); // info range
        h[16..18].copy_from_slice(&bytes[12..14]); // flags
        h[18..29].copy_from_slice(MAGIC);
        h[29] = bytes[11];
        h[30] = bytes[14];
        h[31] = bytes[15];
        bytes[..32].copy_from_slice(&h);
        bytes
    }

    #[test]
    fn legacy_header_is_read() {
        let alg = Algorithm::Sha256;
        let a = d(alg, b"x");
        let mut w = SplitStreamWriter::new(alg, 42).expect("writer");
        w.write_inline(b"abc");
        w.write_reference(&a, 1).expect("ref");
        w.add_named_stream_ref("n", &a).expect("named");
        let bytes = to_legacy(w.finish().expect("finish"));
        assert!(is_splitstream(&bytes));
        let s = SplitStream::parse(bytes, Some(alg)).expect("parse legacy");
        assert_eq!(s.header_form(), HeaderForm::Legacy);
        assert_eq!(s.content_type(), 42);
        assert_eq!(s.named_ref("n"), Some(&a));
        assert_eq!(
            collect(&s),
            vec![Chunk::Inline(b"abc".to_vec()), Chunk::External(a)]
        );
    }

    #[test]
    fn corrupt_inputs_are_rejected_without_panicking() {
        let alg = Algorithm::Sha256;
        let a = d(alg, b"x");
        let mut w = SplitStreamWriter::new(alg, 0).expect("writer");
        w.write_inline(&[9u8; 5000]);
        w.write_reference(&a, 1).expect("ref");
        let good = w.finish().expect("finish");

        assert!(matches!(
            SplitStream::parse(good[..20].to_vec(), None),
            Err(SplitStreamError::TooShort { len: 20 })
        ));
        assert!(matches!(
            SplitStream::parse(vec![0; 200], None),
            Err(SplitStreamError::BadMagic)
        ));
        assert!(matches!(
            SplitStream::parse(good.clone(), Some(Algorithm::Sha512)),
            Err(SplitStreamError::AlgorithmMismatch { .. })
        ));
        let mut v = good.clone();
        v[11] = 1;
        assert!(matches!(
            SplitStream::parse(v, None),
            Err(SplitStreamError::UnsupportedVersion(1))
        ));
        let mut v = good.clone();
        v[15] = 16;
        assert!(matches!(
            SplitStream::parse(v, None),
            Err(SplitStreamError::UnsupportedBlockSize(16))
        ));
        // Truncated file: the stream range now lies outside it.
        assert!(matches!(
            SplitStream::parse(good[..good.len() - 3].to_vec(), None),
            Err(SplitStreamError::BadRange { what: "stream", .. })
        ));
        // Every single-byte truncation or corruption is an error or a clean parse, never a panic.
        for cut in 0..good.len() {
            let _ = SplitStream::parse(good[..cut].to_vec(), None)
                .map(|s| s.chunks().map(|c| c.count()));
        }
        for i in 0..good.len() {
            let mut v = good.clone();
            v[i] ^= 0xff;
            if let Ok(s) = SplitStream::parse(v, None) {
                if let Ok(chunks) = s.chunks() {
                    for c in chunks {
                        let _ = c;
                    }
                }
            }
        }
    }

    #[test]
    fn writer_refuses_foreign_digests_and_bad_names() {
        let mut w = SplitStreamWriter::new(Algorithm::Sha256, 0).expect("writer");
        let foreign = d(Algorithm::Sha512, b"x");
        assert!(matches!(
            w.write_reference(&foreign, 1),
            Err(SplitStreamError::WrongDigest { .. })
        ));
        let ok = d(Algorithm::Sha256, b"x");
        assert!(matches!(
            w.add_named_stream_ref("a\0b", &ok),
            Err(SplitStreamError::InvalidRefName(_))
        ));
    }

    #[test]
    fn content_types_are_ascii_tags() {
        assert_eq!(&content_type::OCI_LAYER.to_le_bytes(), b"ocilayer");
        assert_eq!(&content_type::OCI_CONFIG.to_le_bytes(), b"ociconfg");
    }
}
