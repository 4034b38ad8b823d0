//! Field escaping of the dumpfile format (composefs-dump(5) "Escaping").
//!
//! The writer side produces exactly the bytes C `composefs-info dump` and composefs-rs produce:
//! `\\`, `\n`, `\r`, `\t`, `\xhh` (lowercase) for every other byte outside `0x21..=0x7E`, and
//! additionally `\x3d` for `=` inside xattr keys and values. The reader accepts the same escapes
//! with either case of hex digit and rejects everything else.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::borrow::Cow;

/// Which escaping rules apply to a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// PATH, PAYLOAD and CONTENT: an empty value is written `-` (the "not set" sentinel) and a
    /// value that is exactly `-` is written `\x2d`.
    Optional,
    /// Xattr keys and values: `=` is escaped as `\x3d`; no `-` sentinel.
    Xattr,
}

/// Why an escaped field could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EscapeError {
    /// The field ends with a lone `\`.
    #[error("trailing backslash")]
    TrailingBackslash,
    /// `\x` followed by fewer than two characters.
    #[error("truncated \\x escape")]
    TruncatedHex,
    /// `\x` followed by something that is not two hex digits.
    #[error("invalid hex digit {0:?} in \\x escape")]
    InvalidHex(char),
    /// A `\` followed by a character other than `\`, `n`, `r`, `t` or `x`.
    #[error("unsupported escape \\{0}")]
    Unsupported(char),
}

fn lower_hex_digit(n: u8) -> u8 {
    if n < 10 {
        b'0' + n
    } else {
        b'a' + (n - 10)
    }
}

/// Append `bytes` to `out`, escaped for a field of `kind`.
pub fn escape_into(out: &mut Vec<u8>, bytes: &[u8], kind: FieldKind) {
    if kind == FieldKind::Optional {
        if bytes.is_empty() {
            out.push(b'-');
            return;
        }
        if bytes == b"-" {
            out.extend_from_slice(b"\\x2d");
            return;
        }
    }
    out.reserve(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'=' if kind == FieldKind::Xattr => out.extend_from_slice(b"\\x3d"),
            0x21..=0x7e => out.push(b),
            _ => out.extend_from_slice(&[
                b'\\',
                b'x',
                lower_hex_digit(b >> 4),
                lower_hex_digit(b & 15),
            ]),
        }
    }
}

/// `bytes` escaped for a field of `kind`, as a new vector.
pub fn escape(bytes: &[u8], kind: FieldKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    escape_into(&mut out, bytes, kind);
    out
}

fn hex_value(c: u8) -> Result<u8, EscapeError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(EscapeError::InvalidHex(char::from(c))),
    }
}

/// Decode an escaped field. Borrows `bytes` when it contains no `\`.
///
/// The `-` sentinel is not interpreted here; see [`unescape_optional`].
pub fn unescape(bytes: &[u8]) -> Result<Cow<'_, [u8]>, EscapeError> {
    let Some(first) = bytes.iter().position(|&b| b == b'\\') else {
        return Ok(Cow::Borrowed(bytes));
    };
    let (plain, escaped) = bytes.split_at_checked(first).unwrap_or((bytes, &[]));
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(plain);
    let mut it = escaped.iter().copied();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            None => return Err(EscapeError::TrailingBackslash),
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'x') => {
                let hi = it.next().ok_or(EscapeError::TruncatedHex)?;
                let lo = it.next().ok_or(EscapeError::TruncatedHex)?;
                out.push((hex_value(hi)? << 4) | hex_value(lo)?);
            }
            Some(c) => return Err(EscapeError::Unsupported(char::from(c))),
        }
    }
    Ok(Cow::Owned(out))
}

/// Decode a field that may be the `-` sentinel: `Ok(None)` for exactly `-`, otherwise the
/// unescaped bytes (possibly empty, e.g. for a field missing at the end of a line).
pub fn unescape_optional(bytes: &[u8]) -> Result<Option<Cow<'_, [u8]>>, EscapeError> {
    if bytes == b"-" {
        Ok(None)
    } else {
        unescape(bytes).map(Some)
    }
}
