//! The crate's only `unsafe`: forking the background server of `mount --fuse`.
//!
//! Re-executing the binary for the background server costs a second process start-up (loading
//! and relocating the executable, parsing arguments, opening the repository again): about
//! half of the time `mount --fuse` takes to be ready. A plain `fork(2)` skips all of it, but
//! is only sound while the process has a single thread, so that is checked first.
#![allow(unsafe_code)]

use std::io;

use rustix::process::Pid;

/// Which side of a fork this is.
pub(crate) enum Forked {
    /// The original process; the child has this pid.
    Parent(Pid),
    /// The new process.
    Child,
}

/// Whether this process runs a single thread (so that [`fork_if_single_threaded`] will fork).
pub(crate) fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.count() == 1)
}

/// `fork(2)`, if this process has exactly one thread; `Ok(None)` if it has more (then the
/// caller uses another way).
pub(crate) fn fork_if_single_threaded() -> io::Result<Option<Forked>> {
    if !single_threaded() {
        return Ok(None);
    }
    // SAFETY: with a single thread there is no other thread whose locks (the allocator's,
    // stdio's) the child could inherit in a held state, so the child is a consistent copy of
    // this process and may run any code, not only async-signal-safe functions. No thread can
    // have started since the count: only this thread could have started one.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Some(Forked::Child)),
        pid => Pid::from_raw(pid)
            .map(|pid| Some(Forked::Parent(pid)))
            .ok_or_else(|| io::Error::other("fork returned a negative pid")),
    }
}
