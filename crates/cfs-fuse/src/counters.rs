//! Request counters per FUSE opcode, so that a benchmark can explain itself.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The FUSE requests that are counted separately; everything else is [`Op::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// LOOKUP.
    Lookup,
    /// GETATTR.
    Getattr,
    /// READDIR.
    Readdir,
    /// READDIRPLUS.
    Readdirplus,
    /// OPEN.
    Open,
    /// READ.
    Read,
    /// READLINK.
    Readlink,
    /// GETXATTR.
    Getxattr,
    /// LISTXATTR.
    Listxattr,
    /// OPENDIR.
    Opendir,
    /// RELEASE.
    Release,
    /// RELEASEDIR.
    Releasedir,
    /// STATFS.
    Statfs,
    /// FORGET (BATCH_FORGET counts each inode it names).
    Forget,
    /// Anything else (ACCESS, LSEEK, FLUSH, mutating requests, …).
    Other,
}

impl Op {
    /// Every counted opcode, in display order.
    pub const ALL: [Op; 15] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readdir,
        Op::Readdirplus,
        Op::Open,
        Op::Read,
        Op::Readlink,
        Op::Getxattr,
        Op::Listxattr,
        Op::Opendir,
        Op::Release,
        Op::Releasedir,
        Op::Statfs,
        Op::Forget,
        Op::Other,
    ];

    /// The opcode's name as the kernel spells it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "LOOKUP",
            Op::Getattr => "GETATTR",
            Op::Readdir => "READDIR",
            Op::Readdirplus => "READDIRPLUS",
            Op::Open => "OPEN",
            Op::Read => "READ",
            Op::Readlink => "READLINK",
            Op::Getxattr => "GETXATTR",
            Op::Listxattr => "LISTXATTR",
            Op::Opendir => "OPENDIR",
            Op::Release => "RELEASE",
            Op::Releasedir => "RELEASEDIR",
            Op::Statfs => "STATFS",
            Op::Forget => "FORGET",
            Op::Other => "OTHER",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One counter on its own cache line, so that workers on different CPUs do not bounce a shared
/// line on every request.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

/// Request counters, shared by every worker thread (relaxed atomics).
///
/// `Display` prints a two-column table (opcode, count) with a total.
#[derive(Debug, Default)]
pub struct Counters {
    slots: [Slot; Op::ALL.len()],
    read_bytes: Slot,
}

impl Counters {
    /// Fresh counters, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one request.
    #[inline]
    pub fn hit(&self, op: Op) {
        if let Some(slot) = self.slots.get(op.index()) {
            slot.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Count bytes returned by READ.
    #[inline]
    pub fn add_read_bytes(&self, n: u64) {
        self.read_bytes.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The number of requests of `op` so far.
    pub fn get(&self, op: Op) -> u64 {
        self.slots
            .get(op.index())
            .map_or(0, |s| s.0.load(Ordering::Relaxed))
    }

    /// Bytes returned by READ requests so far.
    pub fn read_bytes(&self) -> u64 {
        self.read_bytes.0.load(Ordering::Relaxed)
    }

    /// All requests so far.
    pub fn total(&self) -> u64 {
        Op::ALL.iter().map(|&op| self.get(op)).sum()
    }

    /// (opcode, count) for every opcode, in display order.
    pub fn snapshot(&self) -> Vec<(Op, u64)> {
        Op::ALL.iter().map(|&op| (op, self.get(op))).collect()
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<12} {:>12}", "REQUEST", "COUNT")?;
        for (op, n) in self.snapshot() {
            writeln!(f, "{:<12} {n:>12}", op.name())?;
        }
        writeln!(f, "{:<12} {:>12}", "TOTAL", self.total())?;
        write!(f, "{:<12} {:>12}", "READ_BYTES", self.read_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_and_print() {
        let c = Counters::new();
        c.hit(Op::Lookup);
        c.hit(Op::Lookup);
        c.hit(Op::Read);
        c.add_read_bytes(4096);
        assert_eq!(c.get(Op::Lookup), 2);
        assert_eq!(c.get(Op::Read), 1);
        assert_eq!(c.get(Op::Open), 0);
        assert_eq!(c.total(), 3);
        let table = c.to_string();
        assert!(table.contains("LOOKUP"), "{table}");
        let lookup_line = table
            .lines()
            .find(|l| l.starts_with("LOOKUP "))
            .unwrap_or("");
        assert!(lookup_line.trim_end().ends_with(" 2"), "{table}");
        assert!(table.contains("READDIRPLUS"), "{table}");
        assert!(table
            .lines()
            .any(|l| l.starts_with("TOTAL") && l.ends_with(" 3")));
        for op in Op::ALL {
            assert!(table.contains(op.name()), "{table}");
        }
    }

    #[test]
    fn indexes_are_dense() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}
