//! Repository locking: every open [`Repository`] holds `flock(LOCK_SH)` on the repository
//! directory; garbage collection converts it to `LOCK_EX` for as long as it deletes, so no
//! writer (which keeps its shared lock for its whole life) ever runs concurrently with it.

use rustix::fs::FlockOperation;

use super::{RepoError, Repository};

/// The repository's lock, held exclusively. Dropping it (or [`downgrade`](Self::downgrade))
/// goes back to the shared lock every open repository holds.
#[derive(Debug)]
#[must_use = "the exclusive lock is released when this guard is dropped"]
pub struct ExclusiveLock<'a> {
    repo: &'a Repository,
}

impl Repository {
    /// Wait until no other process has the repository open, then hold it exclusively.
    ///
    /// `flock` converts a lock by dropping the old one first, so two processes asking at the
    /// same time cannot deadlock. Another `Repository` for the same directory in this process
    /// is another lock holder: this waits for it to be dropped.
    pub fn lock_exclusive(&self) -> Result<ExclusiveLock<'_>, RepoError> {
        rustix::fs::flock(self.dir(), FlockOperation::LockExclusive)
            .map_err(|e| RepoError::io(self.path(), e))?;
        Ok(ExclusiveLock { repo: self })
    }

    /// [`lock_exclusive`](Self::lock_exclusive) without waiting: `Ok(None)` when another holder
    /// exists (the shared lock is kept in that case).
    pub fn try_lock_exclusive(&self) -> Result<Option<ExclusiveLock<'_>>, RepoError> {
        match rustix::fs::flock(self.dir(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(ExclusiveLock { repo: self })),
            Err(rustix::io::Errno::WOULDBLOCK) => {
                // A failed conversion may have dropped our shared lock: take it back.
                rustix::fs::flock(self.dir(), FlockOperation::LockShared)
                    .map_err(|e| RepoError::io(self.path(), e))?;
                Ok(None)
            }
            Err(e) => Err(RepoError::io(self.path(), e)),
        }
    }
}

impl ExclusiveLock<'_> {
    /// Go back to the shared lock, reporting a failure (which dropping cannot).
    pub fn downgrade(self) -> Result<(), RepoError> {
        let repo = self.repo;
        std::mem::forget(self);
        rustix::fs::flock(repo.dir(), FlockOperation::LockShared)
            .map_err(|e| RepoError::io(repo.path(), e))
    }
}

impl Drop for ExclusiveLock<'_> {
    fn drop(&mut self) {
        // Converting to a shared lock cannot fail for a descriptor we own; if it did, the lock
        // would simply stay exclusive until the repository is closed.
        let _ = rustix::fs::flock(self.repo.dir(), FlockOperation::LockShared);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::repo;
    use super::super::OpenOptions;
    use super::*;

    #[test]
    fn exclusive_lock_excludes_other_openers_until_downgraded() {
        let (_dir, repo) = repo();
        let other = Repository::open(repo.path(), &OpenOptions::default()).expect("open");
        assert!(
            repo.try_lock_exclusive().expect("try").is_none(),
            "other holds it shared"
        );
        drop(other);
        let guard = repo.try_lock_exclusive().expect("try").expect("free now");
        let path = repo.path().to_path_buf();
        // While held exclusively, another opener (another open file description) must wait.
        let opened = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let r = Repository::open(&path, &OpenOptions::default()).expect("open");
            drop(r);
            start.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(150));
        guard.downgrade().expect("downgrade");
        let waited = opened.join().expect("join");
        assert!(
            waited >= std::time::Duration::from_millis(100),
            "{waited:?}"
        );
        // Shared again: a second opener coexists with us.
        let again = Repository::open(repo.path(), &OpenOptions::default()).expect("open");
        drop(again);
        let blocking = repo.lock_exclusive().expect("lock");
        drop(blocking);
    }
}
