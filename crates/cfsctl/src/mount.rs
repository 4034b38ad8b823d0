//! `cfsctl mount`: kernel composefs mounts of repository images.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{Context, Result};
use cfs_mount::{mount_composefs, LayerDir, MountRequest, VerityMode};
use cfs_repo::repo::Repository;

/// Refuse to mount over a composefs mount at `mountpoint`: the new mount would hide it
/// silently. Other mounts there (a tmpfs, a bind mount) are the user's business.
pub fn refuse_stacked(mountpoint: &Path) -> Result<()> {
    let Ok(canonical) = mountpoint.canonicalize() else {
        // A missing mount point is reported by the mount itself.
        return Ok(());
    };
    let there = cfs_mount::mounted_at(&canonical).context("reading /proc/self/mountinfo")?;
    if let Some(entry) = there.filter(cfs_mount::MountEntry::is_composefs) {
        anyhow::bail!(
            "{} is already a composefs mount ({entry}); unmount it first",
            mountpoint.display()
        );
    }
    Ok(())
}

/// Mount image `name` of `repo` at `mountpoint` and return once the mount is in place: EROFS
/// (file-backed, detached) under a read-only overlayfs whose data layer is `objects/`. The
/// overlay checks fs-verity digests when the repository has fs-verity; an insecure repository
/// (no fs-verity, e.g. this kernel) is mounted with `verity=off`.
pub fn mount_image(
    repo: &Repository,
    name: &str,
    mountpoint: &Path,
    upperdir: Option<&Path>,
    workdir: Option<&Path>,
) -> Result<()> {
    let (image, id) = repo
        .open_image(name)
        .with_context(|| format!("opening image {name}"))?;
    let mut req = MountRequest::new(image.as_fd(), id.to_hex())
        .with_context(|| format!("reading image {name}"))?;
    req.basedirs = vec![LayerDir::Path(repo.path().join("objects"))];
    req.verity = if repo.is_insecure() {
        VerityMode::Off
    } else {
        VerityMode::Require
    };
    req.upperdir = upperdir.map(Path::to_path_buf);
    req.workdir = workdir.map(Path::to_path_buf);
    req.read_write = upperdir.is_some();
    mount_composefs(&req)
        .and_then(|m| m.attach(mountpoint))
        .with_context(|| format!("mounting image {name} at {}", mountpoint.display()))?;
    Ok(())
}
