//! Fault injection for tests and benches: fails the N-th append the way a failed fsync does
//! (the bytes may well be on disk; the caller is told it failed), or makes every fsync slower,
//! the way a slower disk would. Real ENOSPC is tested on a tiny tmpfs.

use super::{LogBackend, OutFrame};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What to inject. `fail_append_number` counts backend appends (group-commit rounds) from 1;
/// 0 never fails. `sync_delay_us` is added to every append after its fsync returns: it
/// emulates a disk whose fdatasync takes that much longer (the `wal_append` bench's
/// slow-disk rows, and the group-commit test). Both may change while the log runs.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FaultPlan {
    /// Which append fails with EIO.
    pub fail_append_number: AtomicU64,
    /// Extra latency of every durable append, in microseconds.
    pub sync_delay_us: AtomicU64,
    appends: AtomicU64,
}

impl FaultPlan {
    /// Backend appends (group-commit rounds, one fsync each) so far.
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::SeqCst)
    }
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
        let delay = self.plan.sync_delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_micros(delay));
        }
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
