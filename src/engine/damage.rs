//! Damage and failure: a panicking background task or a failed fsync poisons the engine;
//! damage found in a mapped snapshot file marks the store so that the next open checks every
//! file in full.

use super::*;

impl Inner {
    pub(super) fn guard(self: Arc<Self>, what: &str, f: impl FnOnce(&Arc<Inner>)) {
        let me = self.clone();
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&me))) {
            self.fail(format!(
                "the {what} thread panicked: {}",
                lifecycle_run::panic_text(e.as_ref())
            ));
        }
    }

    pub(super) fn fail(&self, reason: String) {
        tracing::error!(%reason, "magray-memory stops accepting work");
        {
            let mut f = self.failure.lock();
            if f.is_none() {
                *f = Some(reason);
            }
        }
        // Wake every waiter (blocking and async) so it sees the failure.
        self.applied_cv.notify_all();
        self.applied_tx.send_modify(|_| {});
    }

    pub(super) fn check(&self) -> Result<()> {
        if let Some(r) = self.failure.lock().clone() {
            return Err(Error::Poisoned(r));
        }
        if self.shutdown.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Fails with the damage found after open in the snapshot's files, if any: nothing is
    /// committed once some of what it was decided from may have read as missing (a damaged
    /// row reads as no record, so an insert could duplicate it, or a delete miss it).
    pub(super) fn undamaged(&self) -> Result<()> {
        self.undamaged_in(&self.state.read())
    }

    /// [`Inner::undamaged`] with the state already read-locked by the caller.
    pub(super) fn undamaged_in(&self, st: &Projections) -> Result<()> {
        match st.damage() {
            Some(e) => {
                self.note_damage(&e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Notes damage found in the vector chunks: logged, and marked in the store (once) so
    /// that the next open checks every snapshot file in full.
    pub(super) fn note_damage(&self, e: &Error) {
        if self.damage_noted.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(error = %e, "damaged snapshot file: reads, writes and checkpoints fail until the store is reopened (the next open checks every snapshot file and replays the log past a damaged snapshot)");
        if let Err(err) = write_damage_mark(&self.dir.join("snapshots"), e) {
            tracing::error!(error = %err, "could not mark the store as damaged");
        }
    }

    /// Checks every row a slot names in the record `tables` mapped unread (their blocks were
    /// checked before), 16k slots per hold of the read lock; then marks the tables checked.
    pub(super) fn scrub_rows(
        &self,
        tables: &[Arc<RecordTable>],
        stop: &dyn Fn() -> bool,
    ) -> Result<()> {
        if !tables.iter().any(|t| t.unchecked()) {
            return Ok(());
        }
        let mut next = Some(0);
        while let Some(from) = next {
            if stop() {
                return Ok(());
            }
            let st = self.state.read();
            next = st.check_rows(from, 16_384);
            if let Some(e) = st.damage() {
                return Err(e);
            }
        }
        for t in tables {
            t.set_rows_checked();
        }
        Ok(())
    }
}

/// Writes (and fsyncs) the damage mark in the snapshots directory `root`, holding `e`.
pub(super) fn write_damage_mark(root: &Path, e: &Error) -> Result<()> {
    let mark = root.join(DAMAGE_MARK);
    magray_wal::fsutil::create_file(&mark)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(e.to_string().as_bytes())?;
            magray_wal::fsutil::sync_file(&f, &mark)
        })
        .map_err(|err| Error::io(&mark, err))?;
    Ok(magray_wal::fsutil::sync_dir(root)?)
}
