//! `cfs-mount` owns kernel mounts of composefs images: the image becomes a detached,
//! file-backed EROFS mount (no loop device), stacked as the only regular lower layer of an
//! overlayfs whose data-only layers are the object directories (`lowerdir+`/`datadir+`,
//! `metacopy=on`, `redirect_dir=on`, optional `verity=require` and a writable upper layer),
//! all through the new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`). It returns the
//! overlay detached, attaches it on request, unmounts, and reports failures with the step,
//! errno and the kernel's own messages. Reading images is `cfs-format`'s job; finding images
//! and objects in a repository is `cfs-repo`'s; FUSE lives in `cfs-fuse`.

mod composefs;
mod error;
mod fscontext;
mod guard;
pub mod mountinfo;
#[cfg(test)]
mod testutil;

pub use composefs::{
    image_has_acl, mount_composefs, DetachedMount, LayerDir, MountRequest, VerityMode,
};
pub use error::{KernelLog, MountError};
pub use guard::{unmount, unmount_lazy, MountGuard};
pub use mountinfo::{mounted_at, MountEntry};
