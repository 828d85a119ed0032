//! Fault injection for tests: fails the N-th append the way a failed fsync does (the bytes
//! may well be on disk; the caller is told it failed). Real ENOSPC is tested on a tiny tmpfs.

use super::{LogBackend, OutFrame};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// When to inject a failure. `fail_append_number` counts backend appends (group-commit
/// rounds) from 1; 0 never fails.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Which append fails with EIO.
    pub fail_append_number: AtomicU64,
    appends: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct FaultyBackend {
    pub inner: Arc<dyn LogBackend>,
    pub plan: Arc<FaultPlan>,
}

impl LogBackend for FaultyBackend {
    fn append(&self, frames: &[OutFrame<'_>]) -> io::Result<()> {
        let n = self.plan.appends.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.append(frames)?;
        if n == self.plan.fail_append_number.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected EIO from fsync (fault plan)"));
        }
        Ok(())
    }
    fn checkpoint_active(&self) -> io::Result<()> {
        self.inner.checkpoint_active()
    }
    fn shutdown(&self) -> io::Result<()> {
        self.inner.shutdown()
    }
}
