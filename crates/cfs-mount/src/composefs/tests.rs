//! Real kernel mounts of images from our own writer. They need root and a kernel with erofs
//! and overlayfs; without those they skip loudly (or fail under `CFS_TEST_REQUIRE_ALL`).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::MetadataExt;

use cfs_format::erofs::writer::{write_image, WriteOptions};
use cfs_format::fsverity::{digest, Algorithm};
use cfs_format::tree::{Inode, InodeId, InodeKind, Metadata, Mtime, RegularFile, Tree};
use tempfile::TempDir;

use super::*;
use crate::testutil::can_mount;

/// Content of `/big`, stored as an object.
fn big_content() -> Vec<u8> {
    (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// A temp dir with `image.cfs` (from our writer) and `objects/` holding the object of `/big`
/// but not the one of `/gone`.
struct Fixture {
    dir: TempDir,
    image: fs::File,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = |permissions| Metadata {
            permissions,
            uid: 0,
            gid: 0,
            mtime: Mtime {
                sec: 1_700_000_000,
                nsec: 0,
            },
            nlink: 1,
        };
        let mut tree = Tree::new(meta(0o755));
        let file = |content: RegularFile| Inode::new(meta(0o644), InodeKind::Regular(content));
        tree.add(
            InodeId::ROOT,
            b"hello",
            file(RegularFile::inline(&b"hello, world\n"[..])),
        )
        .expect("add hello");
        let big = big_content();
        let big_digest = digest(Algorithm::Sha256, &big);
        tree.add(
            InodeId::ROOT,
            b"big",
            file(RegularFile::external(big.len() as u64, big_digest)),
        )
        .expect("add big");
        let gone = b"this object is never stored".to_vec();
        tree.add(
            InodeId::ROOT,
            b"gone",
            file(RegularFile::external(
                gone.len() as u64,
                digest(Algorithm::Sha256, &gone),
            )),
        )
        .expect("add gone");
        let sub = tree
            .add(
                InodeId::ROOT,
                b"sub",
                Inode::new(meta(0o755), InodeKind::Directory(Default::default())),
            )
            .expect("add sub");
        tree.add(sub, b"x", file(RegularFile::inline(&b"x\n"[..])))
            .expect("add sub/x");

        let object = dir.path().join("objects").join(big_digest.object_path());
        fs::create_dir_all(object.parent().expect("object has a parent")).expect("mkdir objects");
        fs::write(&object, &big).expect("write object");

        let bytes = write_image(&tree, &WriteOptions::default()).expect("write image");
        let image_path = dir.path().join("image.cfs");
        fs::File::create(&image_path)
            .and_then(|mut f| f.write_all(&bytes))
            .expect("write image file");
        let image = fs::File::open(&image_path).expect("open image");
        Fixture { dir, image }
    }

    fn objects(&self) -> PathBuf {
        self.dir.path().join("objects")
    }

    /// A fresh empty directory below the fixture.
    fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir(&p).expect("mkdir");
        p
    }

    fn request(&self, name: &str) -> MountRequest<'_> {
        let mut req = MountRequest::new(self.image.as_fd(), name).expect("composefs header");
        req.basedirs.push(LayerDir::Path(self.objects()));
        req
    }
}

/// The `(fstype, source, super options)` of the mount at `path`, from /proc/self/mountinfo.
fn mountinfo_at(path: &Path) -> Option<(String, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    text.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if Path::new(left.split(' ').nth(4)?) != path {
            return None;
        }
        let mut right = right.split(' ');
        Some((
            right.next()?.to_owned(),
            right.next()?.to_owned(),
            right.next().unwrap_or("").to_owned(),
        ))
    })
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    fs::File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn image_header_without_acl() {
    let fx = Fixture::new();
    assert!(!image_has_acl(&fx.image).expect("header"));
    let not_an_image = fs::File::open("/proc/self/exe").expect("open exe");
    let err = image_has_acl(&not_an_image).expect_err("an ELF file is no composefs image");
    assert!(err.to_string().contains("not a composefs image"), "{err}");
}

#[test]
fn mount_read_only_attach_and_unmount() {
    if !can_mount("cfs-mount: read-only composefs mount") {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mkdir("mnt");
    let mount = mount_composefs(&fx.request("test-image-1")).expect("mount");
    let guard = mount.attach_guarded(&mnt).expect("attach");

    assert_eq!(
        read(&mnt.join("hello")).expect("read hello"),
        b"hello, world\n"
    );
    assert_eq!(read(&mnt.join("big")).expect("read big"), big_content());
    assert_eq!(read(&mnt.join("sub/x")).expect("read sub/x"), b"x\n");
    let md = fs::metadata(mnt.join("big")).expect("stat big");
    assert_eq!((md.mode(), md.size()), (0o100644, 20_000));

    let (fstype, source, options) = mountinfo_at(&mnt).expect("mount is in mountinfo");
    assert_eq!(fstype, "overlay");
    assert_eq!(source, "composefs:test-image-1");
    assert!(options.starts_with("ro"), "super options {options}");
    assert_eq!(
        fs::write(mnt.join("new"), b"x").map_err(|e| e.raw_os_error()),
        Err(Some(libc_erofs())),
        "a read-only mount refuses writes"
    );

    guard.unmount().expect("unmount");
    assert!(mountinfo_at(&mnt).is_none(), "unmounted");
    // The detached erofs mount never showed up anywhere.
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !text.contains(&fx.dir.path().display().to_string()),
        "{text}"
    );
}

/// EROFS ("Read-only file system").
fn libc_erofs() -> i32 {
    Errno::ROFS.raw_os_error()
}

#[test]
fn detached_mount_is_usable_through_its_fd() {
    if !can_mount("cfs-mount: detached mount fd") {
        return;
    }
    let fx = Fixture::new();
    let mount = mount_composefs(&fx.request("detached")).expect("mount");
    let fd = rustix::fs::openat(
        mount.fd(),
        "big",
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .expect("openat through the detached mount");
    let mut content = Vec::new();
    fs::File::from(fd)
        .read_to_end(&mut content)
        .expect("read big");
    assert_eq!(content, big_content());
}

#[test]
fn writable_mount_with_upperdir() {
    if !can_mount("cfs-mount: writable composefs mount") {
        return;
    }
    let fx = Fixture::new();
    let (mnt, upper, work) = (fx.mkdir("mnt"), fx.mkdir("upper"), fx.mkdir("work"));
    let mut req = fx.request("rw");
    req.upperdir = Some(upper.clone());
    req.workdir = Some(work);
    req.read_write = true;
    let guard = mount_composefs(&req)
        .expect("mount")
        .attach_guarded(&mnt)
        .expect("attach");

    fs::write(mnt.join("new"), b"fresh").expect("create a file");
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("big"))
        .and_then(|mut f| f.write_all(b"tail"))
        .expect("append to an external file");
    let mut expected = big_content();
    expected.extend_from_slice(b"tail");
    assert_eq!(read(&mnt.join("big")).expect("read big"), expected);
    assert_eq!(read(&upper.join("new")).expect("upper/new"), b"fresh");
    assert_eq!(read(&upper.join("big")).expect("copied up"), expected);
    // The object store is untouched.
    let object = fx
        .objects()
        .join(digest(Algorithm::Sha256, &big_content()).object_path());
    assert_eq!(read(&object).expect("object"), big_content());
    let (_, _, options) = mountinfo_at(&mnt).expect("mounted");
    assert!(options.starts_with("rw"), "super options {options}");
    drop(guard);
    assert!(mountinfo_at(&mnt).is_none(), "the guard unmounted");
}

#[test]
fn verity_require_fails_reads_with_eio_without_kernel_fsverity() {
    if !can_mount("cfs-mount: verity=require") {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mkdir("mnt");
    let mut req = fx.request("verity");
    req.verity = VerityMode::Require;
    let _guard = mount_composefs(&req)
        .expect("verity=require is accepted at mount time")
        .attach_guarded(&mnt)
        .expect("attach");
    // Inline files do not involve the object store.
    assert_eq!(read(&mnt.join("hello")).expect("hello"), b"hello, world\n");
    // docs/formats.md §7.3: this kernel has no fs-verity, so the object cannot be verified.
    let err = read(&mnt.join("big")).expect_err("no fs-verity: the read must fail");
    assert_eq!(err.raw_os_error(), Some(Errno::IO.raw_os_error()), "{err}");

    // This kernel knows `verity=`, so Try behaves like Require.
    let mnt = fx.mkdir("mnt-try");
    req.verity = VerityMode::Try;
    let _guard = mount_composefs(&req)
        .expect("mount")
        .attach_guarded(&mnt)
        .expect("attach");
    let err = read(&mnt.join("big")).expect_err("verity=require was applied");
    assert_eq!(err.raw_os_error(), Some(Errno::IO.raw_os_error()), "{err}");
}

#[test]
fn missing_object_lists_but_fails_to_open() {
    if !can_mount("cfs-mount: missing object") {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mkdir("mnt");
    let _guard = mount_composefs(&fx.request("missing"))
        .expect("mount")
        .attach_guarded(&mnt)
        .expect("attach");
    let md = fs::metadata(mnt.join("gone")).expect("stat works from the image alone");
    assert_eq!(md.size(), 27);
    let err = fs::File::open(mnt.join("gone")).expect_err("no object");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn attach_to_a_non_directory_fails_clearly() {
    if !can_mount("cfs-mount: non-directory mount point") {
        return;
    }
    let fx = Fixture::new();
    let file = fx.dir.path().join("a-file");
    fs::write(&file, b"").expect("create file");
    let mount = mount_composefs(&fx.request("notdir")).expect("mount");
    let err = mount.attach(&file).expect_err("a file is no mount point");
    assert!(
        matches!(&err, MountError::NotADirectory { target } if *target == file),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "move_mount to {}: the mount point is not a directory",
            file.display()
        )
    );
    let missing = fx.dir.path().join("missing");
    let mount = mount_composefs(&fx.request("notdir")).expect("mount");
    let err = mount.attach(&missing).expect_err("no such directory");
    assert!(
        matches!(
            &err,
            MountError::Attach {
                errno: Errno::NOENT,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "move_mount to {}: No such file",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn errors_name_the_step_and_carry_kernel_messages() {
    if !can_mount("cfs-mount: error reporting") {
        return;
    }
    let fx = Fixture::new();

    // Without a data layer overlayfs refuses a single lower layer, and says why.
    let mut req = fx.request("no-basedir");
    req.basedirs.clear();
    let err = mount_composefs(&req).expect_err("one lower layer alone is refused");
    assert!(
        matches!(
            err,
            MountError::Create {
                fstype: "overlay",
                ..
            }
        ),
        "{err:?}"
    );
    // overlayfs prints this reason with printk, not on the fs context.
    assert!(
        err.to_string()
            .starts_with("fsconfig create overlay: Invalid argument"),
        "{err}"
    );

    // A missing object directory is reported with its path.
    let mut req = fx.request("bad-basedir");
    let missing = fx.dir.path().join("no-such-dir");
    req.basedirs = vec![LayerDir::Path(missing.clone())];
    let err = mount_composefs(&req).expect_err("missing basedir");
    assert_eq!(
        err.to_string(),
        format!(
            "open basedir {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    // workdir without upperdir is caught before the kernel sees it.
    let mut req = fx.request("half-upper");
    req.workdir = Some(fx.mkdir("work"));
    assert!(matches!(
        mount_composefs(&req),
        Err(MountError::InvalidRequest { .. })
    ));

    // A file that is not EROFS fails when the erofs superblock is created.
    let junk = fx.dir.path().join("junk");
    fs::write(&junk, vec![0u8; 8192]).expect("write junk");
    let junk = fs::File::open(&junk).expect("open junk");
    let mut req = fx.request("junk");
    req.image = junk.as_fd();
    let err = mount_composefs(&req).expect_err("not an erofs image");
    assert!(
        matches!(
            err,
            MountError::Create {
                fstype: "erofs",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("fsconfig create erofs: "),
        "{err}"
    );
}

#[test]
fn layers_can_be_passed_as_fds() {
    if !can_mount("cfs-mount: basedir as fd") {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mkdir("mnt");
    let objects = fs::File::open(fx.objects()).expect("open objects dir");
    let mut req = fx.request("fd-layers");
    req.basedirs = vec![LayerDir::Fd(objects.as_fd())];
    req.acl = true; // the other tests pass `noacl` (the image has no ACLs)
    let _guard = mount_composefs(&req)
        .expect("mount")
        .attach_guarded(&mnt)
        .expect("attach");
    assert_eq!(read(&mnt.join("big")).expect("big"), big_content());
}

#[test]
fn layers_as_proc_fd_strings_work_too() {
    if !can_mount("cfs-mount: /proc/self/fd layer strings") {
        return;
    }
    let fx = Fixture::new();
    let (mnt, upper, work) = (fx.mkdir("mnt"), fx.mkdir("upper"), fx.mkdir("work"));
    let mut req = fx.request("proc-strings");
    req.upperdir = Some(upper);
    req.workdir = Some(work);
    req.read_write = true;
    let _guard = mount_with(&req, Passing::PathOnly)
        .expect("mount with /proc/self/fd strings")
        .attach_guarded(&mnt)
        .expect("attach");
    assert_eq!(read(&mnt.join("big")).expect("big"), big_content());
    fs::write(mnt.join("new"), b"x").expect("writable");
}

#[test]
fn guard_detaches_even_when_unmount_is_busy_and_disarm_keeps_the_mount() {
    if !can_mount("cfs-mount: MountGuard") {
        return;
    }
    let fx = Fixture::new();
    let mnt = fx.mkdir("mnt");
    let guard = mount_composefs(&fx.request("busy"))
        .expect("mount")
        .attach_guarded(&mnt)
        .expect("attach");
    let open_file = fs::File::open(mnt.join("hello")).expect("open a file on the mount");
    let err = guard.unmount().expect_err("busy");
    assert!(
        matches!(&err, MountError::Unmount { errno: Errno::BUSY, target } if *target == mnt),
        "{err:?}"
    );
    assert!(mountinfo_at(&mnt).is_none(), "the guard detached it lazily");
    drop(open_file);

    let path = mount_composefs(&fx.request("kept"))
        .expect("mount")
        .attach_guarded(&mnt)
        .expect("attach")
        .disarm();
    assert_eq!(path, mnt);
    assert!(mountinfo_at(&mnt).is_some(), "disarm keeps the mount");
    crate::unmount(&mnt).expect("plain unmount");
    assert!(mountinfo_at(&mnt).is_none());
}
