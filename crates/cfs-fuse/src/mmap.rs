//! The image bytes, mapped read-only.
//!
//! Serving straight from the mapping means mounting costs O(1) and memory does not grow with
//! the image: pages are faulted in (and can be dropped again by the kernel) as requests touch
//! them.
use std::fs::File;
use std::io;

use memmap2::Mmap;

/// A read-only, private mapping of a whole image file.
#[derive(Debug)]
pub(crate) struct ImageMap {
    map: Mmap,
    /// Keeps the file open (and its inode alive) for as long as the mapping exists.
    _file: File,
}

impl ImageMap {
    /// Map `file` read-only. Fails for empty files and files that change size under us are
    /// the caller's business: the reader validates every offset against the mapped length.
    pub(crate) fn new(file: File) -> io::Result<ImageMap> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the image file is empty",
            ));
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "image too large to map"))?;
        let map = crate::sys::map_readonly(&file, len)?;
        Ok(ImageMap { map, _file: file })
    }

    /// The mapped bytes.
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }
}
