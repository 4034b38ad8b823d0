//! Filling a buffer from a reader: decompressors, pipes and tar entries return short reads at
//! will, while chunked formats and hashing want whole pieces.

use std::io::{self, Read};

/// Read from `src` until `buf` is full or the input ends; returns the count, which is short
/// only at the end of the input. Interrupted reads are retried.
pub fn read_full<R: Read + ?Sized>(src: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        match src.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out at most 3 bytes per read, with an interruption first.
    struct Trickle<'a> {
        data: &'a [u8],
        interrupted: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn fills_across_short_and_interrupted_reads() {
        let mut src = Trickle {
            data: b"0123456789",
            interrupted: false,
        };
        let mut buf = [0u8; 8];
        assert_eq!(read_full(&mut src, &mut buf).expect("read"), 8);
        assert_eq!(&buf, b"01234567");
        assert_eq!(read_full(&mut src, &mut buf).expect("read"), 2);
        assert_eq!(&buf[..2], b"89");
        assert_eq!(read_full(&mut src, &mut buf).expect("read"), 0);
    }
}
