//! Reading the entries of a stored layer stream back, without touching file contents.
//!
//! The `tar` crate parses a synthetic stream: inline chunks as they are, and for each object
//! reference as many zero bytes as the tar header before it declared (the body of a regular
//! file over 64 bytes is the only thing the importer ever stores as an object). Seeking skips
//! those zeros without producing them, so walking a layer costs only its headers. The object's
//! digest is picked up when the reader reaches the reference.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

use cfs_format::Digest;
use cfs_repo::splitstream::{Chunk, Chunks, SplitStream};

use crate::entry::{display_path, parse_entry, EntryKind, LayerEntry};
use crate::error::{EntryProblem, OciError};
use crate::layer_import::INLINE_MAX;

/// Where a regular file's content is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Not a regular file.
    None,
    /// Stored in the stream (≤ 64 bytes).
    Inline(Box<[u8]>),
    /// Stored as this object.
    External(Digest),
}

#[derive(Default)]
struct Expect {
    /// The size of the object reference the reader should meet next.
    size: Option<u64>,
    /// The reference met.
    found: Option<Digest>,
}

struct ChunkReader<'a> {
    chunks: Chunks<'a>,
    buf: Vec<u8>,
    at: usize,
    /// Zero bytes standing for the current object reference.
    zeros: u64,
    pos: u64,
    expect: Rc<RefCell<Expect>>,
}

impl ChunkReader<'_> {
    /// Make sure there is something to consume; `false` at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        loop {
            if self.zeros > 0 || self.at < self.buf.len() {
                return Ok(true);
            }
            match self.chunks.next() {
                None => return Ok(false),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                Some(Ok(Chunk::Inline(data))) => {
                    self.buf = data;
                    self.at = 0;
                }
                Some(Ok(Chunk::External(digest))) => {
                    let mut e = self.expect.borrow_mut();
                    let Some(size) = e.size.take() else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "an object reference where the tar has no file body over 64 bytes",
                        ));
                    };
                    e.found = Some(digest);
                    self.zeros = size;
                }
            }
        }
    }

    /// Consume up to `max` bytes, copying them into `out` if given.
    fn consume(&mut self, max: usize, out: Option<&mut [u8]>) -> io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
        }
        let n = if self.zeros > 0 {
            let n = usize::try_from(self.zeros).map_or(max, |z| z.min(max));
            if let Some(out) = out {
                out[..n].fill(0);
            }
            self.zeros -= n as u64;
            n
        } else {
            let avail = &self.buf[self.at..];
            let n = avail.len().min(max);
            if let Some(out) = out {
                out[..n].copy_from_slice(&avail[..n]);
            }
            self.at += n;
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let len = out.len();
        self.consume(len, Some(out))
    }
}

impl Seek for ChunkReader<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let mut skip = match pos {
            SeekFrom::Current(n) => u64::try_from(n).ok(),
            SeekFrom::Start(n) => n.checked_sub(self.pos),
            SeekFrom::End(_) => None,
        }
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "layer streams only seek forward",
            )
        })?;
        while skip > 0 {
            let step = usize::try_from(skip).unwrap_or(usize::MAX);
            let n = self.consume(step, None)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "seek past the end of the layer stream",
                ));
            }
            skip -= n as u64;
        }
        Ok(self.pos)
    }
}

/// Call `f(entry, content)` for every file entry of the stored layer `stream` (labelled `layer`
/// in errors), in tar order.
pub fn for_each_entry(
    stream: &SplitStream,
    layer: &str,
    mut f: impl FnMut(LayerEntry, Content) -> Result<(), OciError>,
) -> Result<(), OciError> {
    let expect = Rc::new(RefCell::new(Expect::default()));
    let chunks = stream.chunks().map_err(|source| OciError::Corrupt {
        what: format!("layer stream {layer}"),
        reason: source.to_string(),
    })?;
    let reader = ChunkReader {
        chunks,
        buf: Vec::new(),
        at: 0,
        zeros: 0,
        pos: 0,
        expect: Rc::clone(&expect),
    };
    let mut archive = tar::Archive::new(reader);
    let mut last: Option<String> = None;
    let layer_err = |last: &Option<String>, source: io::Error| OciError::Layer {
        layer: layer.to_owned(),
        context: match last {
            Some(name) => format!("reading the stored tar after entry {name:?}"),
            None => "reading the stored tar".to_owned(),
        },
        source,
    };
    let entries = archive
        .entries_with_seek()
        .map_err(|e| layer_err(&last, e))?;
    for item in entries {
        let mut entry = item.map_err(|e| layer_err(&last, e))?;
        let name = display_path(&entry);
        let entry_err = |problem| OciError::Entry {
            layer: layer.to_owned(),
            entry: name.clone(),
            problem,
        };
        let Some(parsed) = parse_entry(&mut entry).map_err(entry_err)? else {
            last = Some(name);
            continue;
        };
        let content = match parsed.kind {
            EntryKind::Regular { size } if size > INLINE_MAX => {
                expect.borrow_mut().size = Some(size);
                let mut one = [0u8; 1];
                entry
                    .read_exact(&mut one)
                    .map_err(|e| layer_err(&last, e))?;
                let mut e = expect.borrow_mut();
                e.size = None;
                match e.found.take() {
                    Some(digest) => Content::External(digest),
                    None => {
                        return Err(entry_err(EntryProblem::StreamLayout(
                            "a file body over 64 bytes is stored inline",
                        )))
                    }
                }
            }
            EntryKind::Regular { size } => {
                let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| layer_err(&last, e))?;
                if data.len() as u64 != size {
                    return Err(entry_err(EntryProblem::Truncated {
                        expected: size,
                        actual: data.len() as u64,
                    }));
                }
                Content::Inline(data.into())
            }
            _ => Content::None,
        };
        f(parsed, content)?;
        last = Some(name);
    }
    Ok(())
}
