//! composefs EROFS images: on-disk layout ([`format`]), the byte-identical-to-C writer
//! ([`writer`]) and the validating zero-copy reader ([`reader`]).

pub mod format;
pub mod reader;
pub mod writer;

pub use format::FormatVersion;
