//! Progress of long repository operations, for whoever shows it (a terminal bar, nothing).
//!
//! Operations report phases (with their number of steps when known) and steps done. The
//! library never draws anything itself: the CLI decides whether a terminal is there.

/// Receives the progress of a long operation. Every method does nothing by default; all may be
/// called from several threads.
pub trait Progress: Sync {
    /// A new phase begins: `what` it does, and how many steps it has when known.
    fn phase(&self, _what: &str, _total: Option<u64>) {}
    /// `steps` more steps of the current phase are done.
    fn advance(&self, _steps: u64) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
