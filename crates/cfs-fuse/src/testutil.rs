//! Test helpers: images built from dumpfile text.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cfs_format::dumpfile::{parse, ParseOptions};
use cfs_format::erofs::writer::{write_image, WriteOptions};

/// The image (C defaults: V0, V1 with whiteouts) of dumpfile `text`.
pub(crate) fn image_from_dump(text: &str) -> Vec<u8> {
    let tree = parse(text.as_bytes(), &ParseOptions::default())
        .unwrap_or_else(|e| panic!("bad test dumpfile: {e}\n{text}"));
    write_image(&tree, &WriteOptions::default()).expect("write the test image")
}
