//! The crate's `unsafe`, all of it: mapping the image, the passthrough backing-file ioctls, and
//! an io_uring whose rings live in memory shared with the kernel.
//!
//! Everything here is a small safe wrapper; the rest of the crate never sees a raw pointer.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use memmap2::{Mmap, MmapOptions};
use rustix::io_uring::{
    io_uring_enter, io_uring_params, io_uring_setup, IoringEnterFlags, IoringSetupFlags,
    IORING_OFF_CQ_RING, IORING_OFF_SQES, IORING_OFF_SQ_RING,
};
use rustix::ioctl::{opcode, Ioctl, IoctlOutput, Opcode};
use rustix::mm::{MapFlags, ProtFlags};

/// Map `len` bytes of `file` read-only and private.
pub(crate) fn map_readonly(file: &File, len: usize) -> io::Result<Mmap> {
    // SAFETY: the mapping is read-only and private (MAP_PRIVATE, PROT_READ), so this process
    // never writes through it. composefs images are immutable, content-addressed files (a
    // repository never rewrites one in place); should another process modify or truncate the
    // file anyway, the worst outcomes are inconsistent bytes (which the validating reader turns
    // into errors, never panics) or SIGBUS on pages past a truncated end, the documented
    // hazard of mapping files. Callers only hand out `&[u8]` views borrowing the `Mmap`.
    unsafe { MmapOptions::new().len(len).map(file) }
}

/// `struct fuse_backing_map` of `<linux/fuse.h>`.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

/// FUSE_DEV_IOC_BACKING_OPEN: `_IOW(229, 1, struct fuse_backing_map)`, returns the id.
struct BackingOpen(BackingMap);

// SAFETY: the opcode takes a pointer to a `fuse_backing_map`, which `as_ptr` provides and the
// kernel only reads; the result is the ioctl's return value.
unsafe impl Ioctl for BackingOpen {
    type Output = u32;
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        opcode::write::<BackingMap>(229, 1)
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&raw mut self.0).cast()
    }

    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut std::ffi::c_void,
    ) -> rustix::io::Result<u32> {
        u32::try_from(out).map_err(|_| rustix::io::Errno::INVAL)
    }
}

/// FUSE_DEV_IOC_BACKING_CLOSE: `_IOW(229, 2, uint32_t)`.
struct BackingClose(u32);

// SAFETY: the opcode takes a pointer to a `u32`, which `as_ptr` provides and the kernel only
// reads.
unsafe impl Ioctl for BackingClose {
    type Output = ();
    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        opcode::write::<u32>(229, 2)
    }

    fn as_ptr(&mut self) -> *mut std::ffi::c_void {
        (&raw mut self.0).cast()
    }

    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut std::ffi::c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Register `file` as a passthrough backing file of the connection behind `dev_fuse`.
pub(crate) fn backing_open(dev_fuse: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    let map = BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: `BackingOpen` describes the ioctl's argument truthfully (see its impl).
    Ok(unsafe { rustix::ioctl::ioctl(dev_fuse, BackingOpen(map)) }?)
}

/// Drop backing file `id` of the connection behind `dev_fuse`.
pub(crate) fn backing_close(dev_fuse: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: `BackingClose` describes the ioctl's argument truthfully (see its impl).
    Ok(unsafe { rustix::ioctl::ioctl(dev_fuse, BackingClose(id)) }?)
}

/// Answer an OPEN through fuser with backing file `id`, which the caller keeps registered.
pub(crate) fn reply_passthrough(
    reply: fuser::ReplyOpen,
    fh: fuser::FileHandle,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY (the contract of `wrap_backing`): `id` is open and belongs to this connection
    // (the caller's open table holds it), and it stays open while the wrapper lives, because
    // `into_raw` hands it back without closing it.
    let wrapped = unsafe { reply.wrap_backing(id) };
    reply.opened_passthrough(fh, flags, &wrapped);
    let _ = wrapped.into_raw();
}

/// Put the calling thread in SCHED_BATCH: normal share of the CPU, but waking it never
/// preempts the running task. (rustix has no `sched_setscheduler`.)
pub(crate) fn set_batch_scheduling() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for SCHED_BATCH
    // (priority 0), read by the kernel during the call only.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Size of a submission queue entry with IORING_SETUP_SQE128.
pub(crate) const SQE_SIZE: usize = 128;

/// A mapped region of the ring, unmapped on drop.
#[derive(Debug)]
struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

impl Region {
    fn map(ring: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<Region> {
        // SAFETY: a fresh shared mapping of the io_uring fd at one of its documented offsets;
        // no existing memory is affected. The kernel keeps the pages alive while mapped.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::POPULATE,
                ring,
                offset,
            )
        }?;
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Region { ptr, len })
    }

    /// The u32 at byte `offset` (a ring head, tail, mask or array slot), as an atomic.
    fn u32_at(&self, offset: u32) -> io::Result<&AtomicU32> {
        let offset = offset as usize;
        if !offset.is_multiple_of(4) || offset + 4 > self.len {
            return Err(io::Error::other("io_uring offset outside its ring"));
        }
        // SAFETY: in bounds and aligned (checked above; the mapping is page-aligned); the
        // kernel shares these words and accesses them atomically, as we do. The reference
        // borrows `self`, so it cannot outlive the mapping.
        Ok(unsafe { &*self.ptr.as_ptr().add(offset).cast::<AtomicU32>() })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped; no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// SAFETY: the region is plain shared memory; all access goes through atomics or through
// `&mut Ring` (one thread at a time).
unsafe impl Send for Region {}

/// A completion: the submission's `user_data` and its result (negative errno on failure).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Completion {
    pub(crate) user_data: u64,
    pub(crate) res: i32,
}

/// A minimal io_uring for one thread: 128-byte submissions, single issuer, task work deferred
/// to our own waits (so completions run on the waiting thread, in its time slice).
#[derive(Debug)]
pub(crate) struct Ring {
    fd: OwnedFd,
    sq: Region,
    cq: Region,
    sqes: Region,
    params: io_uring_params,
    /// Submissions written but not yet passed to the kernel.
    pending: u32,
}

impl Ring {
    pub(crate) fn new(entries: u32) -> io::Result<Ring> {
        let mut params = io_uring_params::default();
        params.flags = IoringSetupFlags::SQE128
            | IoringSetupFlags::SINGLE_ISSUER
            | IoringSetupFlags::DEFER_TASKRUN
            | IoringSetupFlags::SUBMIT_ALL;
        // SAFETY: `params` is a valid, zero-initialised io_uring_params the kernel fills in.
        let fd = unsafe { io_uring_setup(entries, &mut params) }?;
        let sq_len = params.sq_off.array as usize + params.sq_entries as usize * 4;
        let cq_len = params.cq_off.cqes as usize + params.cq_entries as usize * 16;
        let sq = Region::map(fd.as_fd(), sq_len, IORING_OFF_SQ_RING)?;
        let cq = Region::map(fd.as_fd(), cq_len, IORING_OFF_CQ_RING)?;
        let sqes = Region::map(
            fd.as_fd(),
            params.sq_entries as usize * SQE_SIZE,
            IORING_OFF_SQES,
        )?;
        Ok(Ring {
            fd,
            sq,
            cq,
            sqes,
            params,
            pending: 0,
        })
    }

    /// Queue one 128-byte submission; false when the submission queue is full.
    pub(crate) fn push(&mut self, sqe: &[u8; SQE_SIZE]) -> io::Result<bool> {
        let off = self.params.sq_off;
        let head = self.sq.u32_at(off.head)?.load(Ordering::Acquire);
        let tail_word = self.sq.u32_at(off.tail)?;
        let tail = tail_word.load(Ordering::Relaxed);
        if tail.wrapping_sub(head) >= self.params.sq_entries {
            return Ok(false);
        }
        let mask = self.sq.u32_at(off.ring_mask)?.load(Ordering::Relaxed);
        let index = tail & mask;
        if index >= self.params.sq_entries {
            return Err(io::Error::other("io_uring submission index out of range"));
        }
        let start = index as usize * SQE_SIZE;
        // SAFETY: `start + SQE_SIZE <= sq_entries * SQE_SIZE`, the length of the mapping
        // (index < sq_entries, checked above). The slot is ours until the tail store below
        // publishes it: the kernel reads only slots between head and tail.
        unsafe {
            std::ptr::copy_nonoverlapping(
                sqe.as_ptr(),
                self.sqes.ptr.as_ptr().add(start),
                SQE_SIZE,
            );
        }
        self.sq
            .u32_at(off.array + index * 4)?
            .store(index, Ordering::Relaxed);
        tail_word.store(tail.wrapping_add(1), Ordering::Release);
        self.pending += 1;
        Ok(true)
    }

    /// Pass queued submissions to the kernel and wait until at least `wait` completions are
    /// there (0: do not wait). EINTR is returned as is.
    pub(crate) fn submit_and_wait(&mut self, wait: u32) -> io::Result<()> {
        let flags = if wait > 0 {
            IoringEnterFlags::GETEVENTS
        } else {
            IoringEnterFlags::empty()
        };
        // SAFETY: no extended argument is passed; the submissions were fully written before
        // the tail was published.
        let submitted = unsafe { io_uring_enter(&self.fd, self.pending, wait, flags) }?;
        self.pending = self.pending.saturating_sub(submitted);
        Ok(())
    }

    /// Take every completion that is there.
    pub(crate) fn completions(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let off = self.params.cq_off;
        let head_word = self.cq.u32_at(off.head)?;
        let mut head = head_word.load(Ordering::Relaxed);
        let tail = self.cq.u32_at(off.tail)?.load(Ordering::Acquire);
        let mask = self.cq.u32_at(off.ring_mask)?.load(Ordering::Relaxed);
        while head != tail {
            let index = head & mask;
            if index >= self.params.cq_entries {
                return Err(io::Error::other("io_uring completion index out of range"));
            }
            let at = off.cqes as usize + index as usize * 16;
            if at + 16 > self.cq.len {
                return Err(io::Error::other("io_uring completion outside its ring"));
            }
            // SAFETY: in bounds (checked above) and 8-byte aligned (cqes is; entries are 16
            // bytes); the kernel wrote this entry before publishing the tail we acquired.
            let (user_data, res) = unsafe {
                let p = self.cq.ptr.as_ptr().add(at);
                (p.cast::<u64>().read(), p.add(8).cast::<i32>().read())
            };
            out.push(Completion { user_data, res });
            head = head.wrapping_add(1);
        }
        head_word.store(head, Ordering::Release);
        Ok(())
    }
}
