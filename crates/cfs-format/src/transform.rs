//! Tree rewrites applied before an image is built from a container-style root filesystem.
//!
//! [`transform_for_oci`] is what composefs-rs applies to OCI images and, by default, to
//! `create-image` of a directory: the root takes `/usr`'s metadata, `/run` is emptied, and only
//! an allowlist of xattrs survives. Applying exactly these rules is what makes our image ids equal
//! to composefs-rs's for the same tree (docs/formats.md §6 step 3).

use crate::tree::{InodeId, InodeKind, Tree};

/// Which xattrs survive [`transform_for_oci`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XattrPolicy {
    /// Only `security.capability`.
    #[default]
    AllowlistOnly,
    /// `security.capability` and every `user.*`.
    KeepUserXattrs,
}

impl XattrPolicy {
    /// Does `name` survive?
    pub fn keeps(self, name: &[u8]) -> bool {
        name == b"security.capability"
            || (self == XattrPolicy::KeepUserXattrs && name.starts_with(b"user."))
    }
}

impl std::str::FromStr for XattrPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allowlist-only" => Ok(XattrPolicy::AllowlistOnly),
            "keep-user-xattrs" => Ok(XattrPolicy::KeepUserXattrs),
            other => Err(format!(
                "unknown xattr policy {other:?} (expected allowlist-only or keep-user-xattrs)"
            )),
        }
    }
}

/// Why the transform could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The tree has no `/usr` directory to take the root's metadata from.
    #[error("the tree has no /usr directory (needed to set the root's metadata; use --no-propagate-usr-to-root to keep the tree as it is)")]
    NoUsr,
}

/// Apply the composefs-rs OCI finalisation to `tree` in place.
pub fn transform_for_oci(tree: &mut Tree, policy: XattrPolicy) -> Result<(), TransformError> {
    let usr = match tree.lookup(InodeId::ROOT, b"usr") {
        Some(e) if tree.inode(e.inode).kind.is_dir() => e.inode,
        _ => return Err(TransformError::NoUsr),
    };
    let usr_inode = tree.inode(usr).clone();
    let root = tree.inode_mut(InodeId::ROOT);
    root.meta.permissions = usr_inode.meta.permissions;
    root.meta.uid = usr_inode.meta.uid;
    root.meta.gid = usr_inode.meta.gid;
    root.meta.mtime = usr_inode.meta.mtime;
    root.xattrs = usr_inode.xattrs.clone();

    if let Some(run) = tree.lookup(InodeId::ROOT, b"run") {
        let run = tree.inode_mut(run.inode);
        if let InodeKind::Directory(d) = &mut run.kind {
            d.entries.clear();
            run.meta.mtime = usr_inode.meta.mtime;
        }
    }

    tree.normalize_hardlinks();
    let reachable = tree.reference_counts();
    for (inode, refs) in tree.inodes.iter_mut().zip(&reachable) {
        if *refs > 0 {
            inode.xattrs.retain(|k, _| policy.keeps(k));
        }
    }
    tree.recompute_leaf_nlinks();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{Inode, Metadata, Mtime, RegularFile};

    fn dir(mtime: i64) -> Inode {
        Inode::new(
            Metadata {
                permissions: 0o755,
                mtime: Mtime {
                    sec: mtime,
                    nsec: 0,
                },
                ..Metadata::default()
            },
            InodeKind::Directory(Default::default()),
        )
    }

    #[test]
    fn root_takes_usr_metadata_and_run_is_emptied() {
        let mut tree = Tree::new(Metadata::default());
        let mut usr = dir(100);
        usr.meta.uid = 5;
        usr.xattrs
            .insert(b"security.selinux"[..].into(), b"usr_t"[..].into());
        usr.xattrs.insert(b"user.keep"[..].into(), b"1"[..].into());
        let usr = tree.add(InodeId::ROOT, b"usr", usr).expect("usr");
        let run = tree.add(InodeId::ROOT, b"run", dir(7)).expect("run");
        let mut file = Inode::new(
            Metadata {
                nlink: 1,
                ..Metadata::default()
            },
            InodeKind::Regular(RegularFile::inline(&b"x"[..])),
        );
        file.xattrs
            .insert(b"security.capability"[..].into(), b"cap"[..].into());
        let f = tree.add(run, b"x", file).expect("x");
        // A hardlink elsewhere keeps the file alive once /run is emptied.
        tree.link(usr, b"y", f).expect("link");

        transform_for_oci(&mut tree, XattrPolicy::AllowlistOnly).expect("transform");
        let root = tree.root();
        assert_eq!(root.meta.uid, 5);
        assert_eq!(root.meta.mtime.sec, 100);
        assert!(root.xattrs.is_empty(), "selinux and user.* are filtered");
        let run = tree.inode(tree.lookup_path(b"/run").expect("run"));
        assert!(run.as_dir().expect("dir").entries.is_empty());
        assert_eq!(run.meta.mtime.sec, 100);
        let y = tree.lookup(usr, b"y").expect("y");
        assert!(!y.hardlink, "the surviving name became canonical");
        assert_eq!(tree.inode(y.inode).meta.nlink, 1);
        assert_eq!(tree.inode(y.inode).xattrs.len(), 1);
    }

    #[test]
    fn missing_usr_is_an_error() {
        let mut tree = Tree::new(Metadata::default());
        assert_eq!(
            transform_for_oci(&mut tree, XattrPolicy::AllowlistOnly),
            Err(TransformError::NoUsr)
        );
    }

    #[test]
    fn keep_user_xattrs() {
        assert!(XattrPolicy::KeepUserXattrs.keeps(b"user.a"));
        assert!(!XattrPolicy::AllowlistOnly.keeps(b"user.a"));
        assert!(!XattrPolicy::KeepUserXattrs.keeps(b"trusted.a"));
    }

    /// docs/formats.md §6 "OCI vector": the merged layers, then the transform, must give the image
    /// ids composefs-rs 0.9 computes for sha256 and sha512 repositories.
    #[test]
    fn oci_vector_gives_composefs_rs_ids() {
        use crate::erofs::writer::{write_image, WriteOptions};
        use crate::erofs::FormatVersion;
        use crate::fsverity::{digest, Algorithm};

        for (alg, want) in [
            (Algorithm::Sha256, "a11e593ca6474157235967fb08b74250498424afe0ca2c27f38684cac59fed83"),
            (Algorithm::Sha512, "258fde0da6e65940ff2e220be437f420003879f0ac7889435924681d3d1ffbe5d0ee61fbfaa5bb2c4c05ab63100480baf09f448b4b412cf1c994740259e17163"),
        ] {
            let meta = |perm: u32, sec: i64, nsec: u32| Metadata {
                permissions: perm,
                mtime: Mtime { sec, nsec },
                nlink: 1,
                ..Metadata::default()
            };
            let node = |m: Metadata, kind: InodeKind| Inode::new(m, kind);
            let dir_kind = || InodeKind::Directory(Default::default());
            let mut tree = Tree::new(Metadata::default());
            let mut usr = node(meta(0o755, 1_700_000_000, 0), dir_kind());
            usr.xattrs.insert(
                b"security.selinux"[..].into(),
                b"system_u:object_r:usr_t:s0"[..].into(),
            );
            let usr = tree.add(InodeId::ROOT, b"usr", usr).expect("usr");
            let bin = tree.add(usr, b"bin", node(meta(0o755, 1_700_000_001, 0), dir_kind())).expect("bin");
            let mut hello = node(
                meta(0o755, 1_700_000_002, 500_000_000),
                InodeKind::Regular(RegularFile::inline(&b"#!/bin/sh\necho hello\n"[..])),
            );
            hello.xattrs.insert(
                b"security.capability"[..].into(),
                vec![1, 0, 0, 2, 0, 0x20, 0, 0].into(),
            );
            tree.add(bin, b"hello", hello).expect("hello");
            let content = vec![b'A'; 100];
            let big = tree
                .add(
                    bin,
                    b"big2",
                    node(
                        meta(0o644, 1_700_000_003, 0),
                        InodeKind::Regular(RegularFile::external(100, digest(alg, &content))),
                    ),
                )
                .expect("big2");
            let _ = big;
            tree.add(bin, b"sh", node(meta(0o777, 1_700_000_004, 0), InodeKind::Symlink(b"hello"[..].into())))
                .expect("sh");
            let mut etc_meta = meta(0o750, 1_700_000_100, 0);
            etc_meta.gid = 10;
            let etc = tree.add(InodeId::ROOT, b"etc", node(etc_meta, dir_kind())).expect("etc");
            tree.add(
                etc,
                b"hostname",
                node(meta(0o644, 1_700_000_101, 0), InodeKind::Regular(RegularFile::inline(&b"box\n"[..]))),
            )
            .expect("hostname");
            let run = tree.add(InodeId::ROOT, b"run", node(meta(0o755, 1_700_000_007, 0), dir_kind())).expect("run");
            tree.add(run, b"x", node(meta(0o644, 1_700_000_007, 0), InodeKind::Regular(RegularFile::inline(&b"x"[..]))))
                .expect("x");

            transform_for_oci(&mut tree, XattrPolicy::AllowlistOnly).expect("transform");
            let image = write_image(&tree, &WriteOptions::exactly(FormatVersion::V1)).expect("write");
            assert_eq!(digest(alg, &image).to_hex(), want, "{alg}");
        }
    }
}
