//! FUSE over io_uring (Linux 6.14+): one request queue per CPU, each served by a worker pinned
//! to that CPU.
//!
//! Through `/dev/fuse`, a request wakes whichever worker has waited longest, usually on the
//! other CPU, and its reply wakes the requester back across CPUs: on a small VM that costs
//! ~60 µs per round trip, which dominates anything that opens many files with passthrough
//! (each open is an OPEN and a RELEASE). With io_uring the kernel puts a request on the queue
//! of the CPU that made it, and the worker pinned there answers in the requester's own time
//! slice: two context switches, no cross-CPU wake-ups.
//!
//! The handshake (INIT) and FORGET/INTERRUPT still go through `/dev/fuse` and fuser's worker;
//! everything else arrives here once every queue has registered its entries. Requests are
//! answered by the same transport-neutral operations as fuser's (see [`crate::fs`]); this
//! module only decodes and encodes (with [`crate::abi`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::Errno;

use crate::abi::{self, opcode};
use crate::fs::{ComposefsFs, Opened, ReadData, XattrAnswer};
use crate::sys::{Completion, Ring, SQE_SIZE};

/// Entries (requests in flight) per queue.
const ENTRIES_PER_QUEUE: usize = 4;

/// `struct fuse_uring_req_header`: in_out[128], op_in[128], ring_ent_in_out (32 bytes).
const HEADER_LEN: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;

/// Room kept for a request's name arguments while the reply is written over them.
const NAMES_MAX: usize = 1024;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

const IORING_OP_POLL_ADD: u8 = 6;
const IORING_OP_URING_CMD: u8 = 46;

/// `user_data` of the stop event's poll.
const STOP: u64 = u64::MAX;

/// The workers of the io_uring queues, and how to stop them.
#[derive(Debug)]
pub(crate) struct UringWorkers {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<OwnedFd>,
}

impl UringWorkers {
    /// Start one worker per possible CPU, each registering its queue's entries with the
    /// connection behind `dev_fuse`; returns once all have registered. `payload` is the size
    /// of each entry's payload buffer (the kernel insists on room for its largest request or
    /// reply).
    pub(crate) fn start(
        fs: &Arc<ComposefsFs>,
        dev_fuse: &Arc<OwnedFd>,
        payload: usize,
    ) -> io::Result<UringWorkers> {
        let stop = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let queues = possible_cpus()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut workers = UringWorkers {
            threads: Vec::new(),
            stop: Arc::clone(&stop),
        };
        for qid in 0..queues {
            let fs = Arc::clone(fs);
            let dev = Arc::clone(dev_fuse);
            let stop = Arc::clone(&stop);
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cfs-uring-{qid}"))
                .spawn(move || {
                    let registered = Queue::new(fs, dev, qid, payload)
                        .and_then(|mut q| q.register(&stop).map(|()| q));
                    let mut queue = match registered {
                        Ok(q) => {
                            let _ = ready.send(Ok(()));
                            q
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    if let Err(e) = queue.serve() {
                        log::error!("io_uring queue {qid}: {e}");
                    }
                });
            match spawned {
                Ok(t) => workers.threads.push(t),
                Err(e) => {
                    workers.stop();
                    return Err(e);
                }
            }
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..queues {
            let result = ready_rx
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("a queue worker died")));
            if let Err(e) = result {
                failure.get_or_insert(e);
            }
        }
        match failure {
            None => Ok(workers),
            Some(e) => {
                workers.stop();
                Err(e)
            }
        }
    }

    /// The number of queues (one worker each).
    pub(crate) fn queues(&self) -> usize {
        self.threads.len()
    }

    /// Whether every worker has stopped.
    pub(crate) fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Stop the workers and wait for them.
    pub(crate) fn stop(self) {
        let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The number of possible CPUs (the kernel makes a queue for each, and the ring is used only
/// once every queue has entries).
fn possible_cpus() -> io::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut highest = 0;
    for range in text.trim().split(',') {
        let last = range.rsplit('-').next().unwrap_or(range);
        let n: usize = last
            .parse()
            .map_err(|_| io::Error::other(format!("cannot parse possible CPUs {text:?}")))?;
        highest = highest.max(n);
    }
    Ok(highest + 1)
}

/// One ring entry: the buffers the kernel copies a request into and reads the reply from.
struct Entry {
    header: Box<[u8; HEADER_LEN]>,
    payload: Vec<u8>,
    /// The two iovecs REGISTER points the kernel at (header, payload).
    iov: Box<[rustix::io_uring::iovec; 2]>,
}

/// A queue: its ring, entries and the filesystem they serve.
struct Queue {
    fs: Arc<ComposefsFs>,
    dev: Arc<OwnedFd>,
    qid: u16,
    ring: Ring,
    entries: Vec<Entry>,
    done: Vec<Completion>,
    /// Where a request's names are set aside before its reply overwrites them.
    names: Box<[u8; NAMES_MAX]>,
}

impl Queue {
    fn new(
        fs: Arc<ComposefsFs>,
        dev: Arc<OwnedFd>,
        qid: usize,
        payload: usize,
    ) -> io::Result<Queue> {
        let qid_u16 = u16::try_from(qid).map_err(|_| io::Error::other("too many CPUs"))?;
        // Serve on the CPU whose requests this queue gets; unpinned still works, just slower.
        let mut cpus = rustix::thread::CpuSet::new();
        cpus.set(qid);
        if let Err(e) = rustix::thread::sched_setaffinity(None, &cpus) {
            log::info!("io_uring queue {qid}: cannot pin to CPU {qid}: {e}");
        }
        // A background request (RELEASE at close(), readahead) then does not preempt the task
        // that sent it; it is answered together with that task's next request, when the task
        // waits: one switch to the worker and back per file instead of two.
        if let Err(e) = crate::sys::set_batch_scheduling() {
            log::info!("io_uring queue {qid}: cannot use SCHED_BATCH: {e}");
        }
        let ring = Ring::new((2 * ENTRIES_PER_QUEUE + 2) as u32)?;
        let mut entries = Vec::with_capacity(ENTRIES_PER_QUEUE);
        for _ in 0..ENTRIES_PER_QUEUE {
            let mut header = Box::new([0u8; HEADER_LEN]);
            let mut payload = vec![0u8; payload];
            let iov = Box::new([
                rustix::io_uring::iovec {
                    iov_base: header.as_mut_ptr().cast(),
                    iov_len: HEADER_LEN,
                },
                rustix::io_uring::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: payload.len(),
                },
            ]);
            entries.push(Entry {
                header,
                payload,
                iov,
            });
        }
        Ok(Queue {
            fs,
            dev,
            qid: qid_u16,
            ring,
            entries,
            done: Vec::new(),
            names: Box::new([0; NAMES_MAX]),
        })
    }

    /// A URING_CMD submission for entry `index`.
    fn command(&self, index: usize, cmd_op: u32, commit_id: u64) -> [u8; SQE_SIZE] {
        let mut sqe = [0u8; SQE_SIZE];
        sqe[0] = IORING_OP_URING_CMD;
        sqe[4..8].copy_from_slice(&self.dev.as_raw_fd().to_ne_bytes());
        sqe[8..12].copy_from_slice(&cmd_op.to_ne_bytes());
        if cmd_op == CMD_REGISTER {
            if let Some(entry) = self.entries.get(index) {
                let iov = entry.iov.as_ptr() as u64;
                sqe[16..24].copy_from_slice(&iov.to_ne_bytes());
                sqe[24..28].copy_from_slice(&2u32.to_ne_bytes());
            }
        }
        sqe[32..40].copy_from_slice(&(index as u64).to_ne_bytes());
        // struct fuse_uring_cmd_req at sqe->cmd: flags, commit_id, qid.
        sqe[56..64].copy_from_slice(&commit_id.to_ne_bytes());
        sqe[64..66].copy_from_slice(&self.qid.to_ne_bytes());
        sqe
    }

    fn push(&mut self, sqe: &[u8; SQE_SIZE]) -> io::Result<()> {
        if !self.ring.push(sqe)? {
            // Never more in flight than the ring holds, but submit and retry to be safe.
            self.ring.submit_and_wait(0)?;
            if !self.ring.push(sqe)? {
                return Err(io::Error::other("io_uring submission queue full"));
            }
        }
        Ok(())
    }

    /// Register every entry, and watch the stop event.
    fn register(&mut self, stop: &OwnedFd) -> io::Result<()> {
        let mut poll = [0u8; SQE_SIZE];
        poll[0] = IORING_OP_POLL_ADD;
        poll[4..8].copy_from_slice(&stop.as_raw_fd().to_ne_bytes());
        let pollin = rustix::event::PollFlags::IN.bits() as u32;
        poll[28..32].copy_from_slice(&pollin.to_ne_bytes());
        poll[32..40].copy_from_slice(&STOP.to_ne_bytes());
        self.push(&poll)?;
        for index in 0..self.entries.len() {
            let sqe = self.command(index, CMD_REGISTER, 0);
            self.push(&sqe)?;
        }
        self.ring.submit_and_wait(0)?;
        // A registration the kernel refuses completes at once with an error.
        self.ring.completions(&mut self.done)?;
        if let Some(c) = self.done.iter().find(|c| c.res < 0) {
            return Err(io::Error::from_raw_os_error(-c.res));
        }
        Ok(())
    }

    /// Answer requests until the connection ends or the stop event fires.
    fn serve(&mut self) -> io::Result<()> {
        let mut live = self.entries.len();
        loop {
            let done = std::mem::take(&mut self.done);
            for c in &done {
                if c.user_data == STOP {
                    return Ok(());
                }
                let index = c.user_data as usize;
                if c.res < 0 {
                    // The connection is gone (ENOTCONN) or the entry was cancelled.
                    let e = io::Error::from_raw_os_error(-c.res);
                    if c.res != -(rustix::io::Errno::NOTCONN.raw_os_error())
                        && c.res != -(rustix::io::Errno::CANCELED.raw_os_error())
                    {
                        log::warn!("io_uring queue {}: entry {index}: {e}", self.qid);
                    }
                    live -= 1;
                    continue;
                }
                let commit_id = self.answer(index);
                let sqe = self.command(index, CMD_COMMIT_AND_FETCH, commit_id);
                self.push(&sqe)?;
            }
            self.done = done;
            self.done.clear();
            if live == 0 {
                return Ok(());
            }
            match self.ring.submit_and_wait(1) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            self.ring.completions(&mut self.done)?;
        }
    }

    /// Answer the request in entry `index`; returns its commit id.
    fn answer(&mut self, index: usize) -> u64 {
        let Some(entry) = self.entries.get_mut(index) else {
            return 0;
        };
        let header = &mut *entry.header;
        let commit_id = u64::from_ne_bytes(
            header[ENT_IN_OUT + 8..ENT_IN_OUT + 16]
                .try_into()
                .unwrap_or([0; 8]),
        );
        let payload_in = u32::from_ne_bytes(
            header[ENT_IN_OUT + 16..ENT_IN_OUT + 20]
                .try_into()
                .unwrap_or([0; 4]),
        ) as usize;
        let (unique, result) = match abi::InHeader::parse(&header[..abi::IN_HEADER_LEN]) {
            Some(h) => {
                // The reply goes where the request's names are: copy them out first. Only
                // LOOKUP and GETXATTR have any (at most 255 bytes); every other request skips
                // the copy.
                let names = &mut *self.names;
                let input_len = if matches!(h.opcode, opcode::LOOKUP | opcode::GETXATTR) {
                    payload_in.min(NAMES_MAX)
                } else {
                    0
                };
                if let (Some(dst), Some(src)) =
                    (names.get_mut(..input_len), entry.payload.get(..input_len))
                {
                    dst.copy_from_slice(src);
                }
                let op_in = header.get(OP_IN..ENT_IN_OUT).unwrap_or_default();
                let r = dispatch(
                    &self.fs,
                    h,
                    op_in,
                    names.get(..input_len).unwrap_or_default(),
                    &mut entry.payload,
                );
                (h.unique, r)
            }
            None => (0, Err(Errno::EIO)),
        };
        let (error, len) = match result {
            Ok(len) => (0, len),
            Err(e) => (-e.code(), 0),
        };
        header[..abi::OUT_HEADER_LEN].fill(0);
        abi::write_out_header(
            &mut header[..abi::OUT_HEADER_LEN],
            (abi::OUT_HEADER_LEN + len) as u32,
            error,
            unique,
        );
        header[ENT_IN_OUT + 16..ENT_IN_OUT + 20].copy_from_slice(&(len as u32).to_ne_bytes());
        commit_id
    }
}

/// Answer one request: the reply's arguments go to `out` (the entry's payload buffer); returns
/// their length.
fn dispatch(
    fs: &ComposefsFs,
    h: abi::InHeader,
    op_in: &[u8],
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, Errno> {
    let ino = h.nodeid;
    let bad = || Errno::EIO;
    match h.opcode {
        opcode::LOOKUP => {
            let name = abi::name(input).ok_or_else(bad)?;
            let attr = fs.lookup(ino, name)?;
            abi::write_entry_out(out, &attr);
            Ok(abi::ENTRY_OUT_LEN)
        }
        opcode::GETATTR => {
            let attr = fs.getattr(ino)?;
            abi::write_attr_out(out, &attr);
            Ok(abi::ATTR_OUT_LEN)
        }
        opcode::READLINK => fs.readlink(ino, |r| copy_out(out, r?)),
        opcode::OPEN => {
            let flags = abi::open_flags(op_in).ok_or_else(bad)?;
            let Opened { fh, flags, backing } = fs.open(ino, flags)?;
            let (flags, id) = match backing {
                Some(id) => (flags.bits() | abi::FOPEN_PASSTHROUGH, id),
                None => (flags.bits(), 0),
            };
            abi::write_open_out(out, fh, flags, id);
            Ok(abi::OPEN_OUT_LEN)
        }
        opcode::READ => {
            let (fh, offset, size) = abi::read_in(op_in).ok_or_else(bad)?;
            // The payload buffer holds the largest READ the kernel sends.
            match fs.read(ino, fh, offset, size, out)? {
                ReadData::Filled(n) => Ok(n),
                ReadData::Mapped(data) => copy_out(out, data),
            }
        }
        opcode::RELEASE => {
            fs.release(ino, abi::fh_of(op_in).ok_or_else(bad)?);
            Ok(0)
        }
        opcode::OPENDIR => {
            let o = fs.opendir(ino)?;
            abi::write_open_out(out, o.fh, o.flags.bits(), 0);
            Ok(abi::OPEN_OUT_LEN)
        }
        opcode::READDIR => {
            let (_, offset, size) = abi::read_in(op_in).ok_or_else(bad)?;
            let limit = (size as usize).min(out.len());
            let buf = out.get_mut(..limit).ok_or_else(bad)?;
            let mut used = 0;
            fs.readdir(ino, offset, |child, cookie, kind, name| {
                !abi::push_dirent(buf, &mut used, child, cookie, kind, name)
            })?;
            Ok(used)
        }
        opcode::READDIRPLUS => {
            let (_, offset, size) = abi::read_in(op_in).ok_or_else(bad)?;
            let limit = (size as usize).min(out.len());
            let buf = out.get_mut(..limit).ok_or_else(bad)?;
            let mut used = 0;
            fs.readdirplus(ino, offset, |cookie, name, attr| {
                !abi::push_direntplus(buf, &mut used, cookie, name, attr)
            })?;
            Ok(used)
        }
        opcode::RELEASEDIR => {
            fs.releasedir();
            Ok(0)
        }
        opcode::STATFS => {
            let st = fs.statfs()?;
            abi::write_statfs_out(out, st.blocks, st.files, st.bsize, st.namelen);
            Ok(abi::STATFS_OUT_LEN)
        }
        opcode::GETXATTR => {
            let size = abi::xattr_size(op_in).ok_or_else(bad)?;
            let name = abi::name(input).ok_or_else(bad)?;
            fs.getxattr(ino, name, size, |r| xattr_out(out, r))
        }
        opcode::LISTXATTR => {
            let size = abi::xattr_size(op_in).ok_or_else(bad)?;
            fs.listxattr(ino, size, |r| xattr_out(out, r))
        }
        opcode::ACCESS => {
            fs.access(abi::access_mask(op_in).ok_or_else(bad)?)?;
            Ok(0)
        }
        opcode::IOCTL => Err(fs.refuse(Errno::ENOTTY)),
        op if opcode::MUTATING.contains(&op) => Err(fs.refuse(Errno::EROFS)),
        // FLUSH, FSYNC, POLL, LSEEK, STATX and anything newer: ENOSYS, which the kernel
        // remembers (FLUSH and FSYNC then succeed without asking).
        _ => Err(fs.refuse(Errno::ENOSYS)),
    }
}

fn copy_out(out: &mut [u8], data: &[u8]) -> Result<usize, Errno> {
    let dst = out.get_mut(..data.len()).ok_or(Errno::ERANGE)?;
    dst.copy_from_slice(data);
    Ok(data.len())
}

fn xattr_out(out: &mut [u8], answer: Result<XattrAnswer<'_>, Errno>) -> Result<usize, Errno> {
    match answer? {
        XattrAnswer::Size(n) => {
            abi::write_xattr_size(out, n);
            Ok(8)
        }
        XattrAnswer::Data(v) => copy_out(out, v),
    }
}
