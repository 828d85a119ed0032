//! Closing: flush access statistics, write a snapshot (unless turned off), stop the threads,
//! close the log.

use super::*;

impl Memory {
    /// Flushes pending access statistics, writes a snapshot (unless
    /// `Config::checkpoint_on_close` is off), stops the background threads and closes the log.
    pub async fn close(self) -> Result<()> {
        let inner = self.inner.clone();
        let threads = std::mem::take(&mut *self.threads.lock());
        drop(self);
        tokio::task::spawn_blocking(move || inner.close_blocking(threads))
            .await
            .map_err(|e| Error::Poisoned(format!("close task failed: {e}")))?
    }
}

impl Inner {
    pub(super) fn close_blocking(self: Arc<Self>, threads: Vec<JoinHandle<()>>) -> Result<()> {
        let mut result = Ok(());
        if self.failure.lock().is_none() {
            // Dropped on damage: the checkpoint below reports it.
            result = self.commit_accesses();
            if result.is_ok() && self.config.checkpoint_on_close {
                result = match self.checkpoint_then(false) {
                    // Reported already (the mark, the log, searches); the next open recovers.
                    Err(e) if self.damage_noted.load(Ordering::Acquire) => {
                        tracing::warn!(error = %e, "no snapshot at close: a snapshot file is damaged");
                        Ok(())
                    }
                    r => r.map(|_| ()),
                };
            }
        }
        self.shutdown.store(true, Ordering::Release);
        self.index_wake.notify();
        self.maint_wake.notify();
        self.lifecycle_wake.notify();
        for t in threads {
            let _ = t.join();
        }
        let bg = std::mem::take(&mut *self.bg_threads.lock());
        for t in bg {
            let _ = t.join();
        }
        let log = self.log.write().take();
        if let Some(mut log) = log {
            // Subscribers reading history hold the log briefly; wait for them (bounded).
            let deadline = Instant::now() + Duration::from_secs(10);
            let log = loop {
                match Arc::try_unwrap(log) {
                    Ok(l) => break Some(l),
                    Err(l) if Instant::now() < deadline => {
                        log = l;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break None,
                }
            };
            if let Some(l) = log {
                let r = l.close().map_err(Error::from);
                if result.is_ok() {
                    result = r;
                }
            }
        }
        if let Some(r) = self.failure.lock().clone() {
            if result.is_ok() {
                result = Err(Error::Poisoned(r));
            }
        }
        result
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // Without close(): stop the background threads; the log closes when the last
        // reference goes. Nothing acknowledged is lost (it is in the log already).
        let threads = std::mem::take(&mut *self.threads.lock());
        if threads.is_empty() {
            return; // close() owns the shutdown
        }
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.index_wake.notify();
        self.inner.maint_wake.notify();
        // The threads stop within one batch; joining them here means the store lock is
        // released (with the last reference) by the time a drop returns.
        for t in threads {
            let _ = t.join();
        }
    }
}
