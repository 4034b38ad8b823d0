//! Feed arbitrary bytes to every entry point of the EROFS reader. The only property checked is
//! that nothing panics, hangs or allocates without bound: any input may be rejected.
//!
//! Run with `cargo +nightly fuzz run read_image -- -max_len=65536` from `crates/cfs-format`
//! (images are at least one 4096-byte block, so the default `-max_len=4096` is too small).
//! Seed the corpus with `CFS_FUZZ_CORPUS=fuzz/corpus/read_image cargo test -p cfs-format
//! write_fuzz_corpus -- --ignored`.
#![no_main]

use std::io;

use cfs_format::erofs::reader::{self, Image};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = reader::read_tree(data);
    let _ = reader::dump(data, &mut io::sink(), &[]);
    let _ = reader::dump(data, &mut io::sink(), &[b"a", b"etc"]);
    let _ = reader::ls(data, &mut io::sink(), &[]);
    let _ = reader::objects(data);
    let _ = reader::object_digests(data);

    let Ok(image) = Image::open(data) else {
        return;
    };
    let Ok(root) = image.root() else {
        return;
    };
    let _ = root.lookup(b"a");
    let Ok(children) = image.children(&root) else {
        return;
    };
    for entry in children.take(64).flatten() {
        let _ = root.lookup(entry.name);
        let _ = image.lookup_child(&root, entry.name);
        let Ok(inode) = image.inode(entry.nid) else {
            continue;
        };
        let _ = inode.data().map(|d| d.to_cow().len());
        let _ = inode.chunks().map(|c| c.is_all_holes());
        let _ = inode.xattrs().map(|it| it.count());
        if let Ok(node) = inode.node() {
            let _ = node.kind();
            let _ = node.xattr(b"user.a");
            let _ = node.xattrs().map(|it| it.count());
        }
        if let Ok(entries) = inode.dir_entries() {
            for e in entries.take(64).flatten() {
                let _ = inode.lookup(e.name);
            }
        }
    }
});
