//! Checkpoints: capture the projections under the state lock, write a snapshot without it,
//! log its `Checkpointed` marker, repoint records at the new table; and the maintenance
//! thread that runs them (every N events or T seconds) and flushes access statistics.

use super::*;

impl Memory {
    /// Writes a snapshot of every projection now; returns its sequence.
    pub async fn checkpoint(&self) -> Result<u64> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.checkpoint_blocking())
            .await
            .map_err(|e| Error::Poisoned(format!("checkpoint task failed: {e}")))?
    }
}

impl Inner {
    pub(super) fn maintenance(self: &Arc<Self>) {
        let tick = self
            .config
            .access_flush_interval
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        let mut last_flush = Instant::now();
        let mut retry_at = Instant::now();
        while !self.shutdown.load(Ordering::Acquire) {
            self.maint_wake.wait(tick);
            if self.shutdown.load(Ordering::Acquire) || self.failure.lock().is_some() {
                break;
            }
            let due = last_flush.elapsed() >= self.config.access_flush_interval
                || self.access_hits.load(Ordering::Relaxed) >= self.config.access_flush_hits as u64;
            if due {
                last_flush = Instant::now();
                if let Err(e) = self.commit_accesses() {
                    self.fail(format!("writing access statistics: {e}"));
                    break;
                }
            }
            if Instant::now() >= retry_at && self.checkpoint_due() {
                if let Err(e) = self.checkpoint_blocking() {
                    // A failed snapshot loses nothing (the log has it all); retry later.
                    tracing::warn!(error = %e, "automatic checkpoint failed; retrying in 30 s");
                    retry_at = Instant::now() + Duration::from_secs(30);
                }
            }
        }
    }

    /// Whether the graphs gained enough points since the latest snapshot to be worth one.
    pub(super) fn graphs_changed(&self, snap: &SnapState) -> bool {
        self.graph_points
            .load(Ordering::Acquire)
            .saturating_sub(snap.graph_points)
            >= GRAPH_ONLY_CHECKPOINT_POINTS
    }

    pub(super) fn checkpoint_due(&self) -> bool {
        let applied = *self.applied_tx.borrow();
        let snap = self.snap.lock();
        let since = applied.saturating_sub(snap.covered_seq);
        let graphs_changed = self.graphs_changed(&snap);
        if since == 0 && !graphs_changed {
            return false;
        }
        (self.config.checkpoint_every > 0 && since >= self.config.checkpoint_every)
            || (!self.config.checkpoint_interval.is_zero()
                && snap.at.elapsed() >= self.config.checkpoint_interval)
    }

    pub(super) fn checkpoint_blocking(&self) -> Result<u64> {
        self.checkpoint_then(true)
    }

    /// Waits until what open mapped unread (vector chunks, the record table, the key index) is
    /// checked (the indexer's scrub), then fails with the damage found, if any. Whatever writes a
    /// decision taken from vectors or records to the log or to a snapshot calls this first.
    pub(super) fn snapshot_checked(&self) -> Result<()> {
        while self.scrubbing.load(Ordering::Acquire) {
            self.check()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        self.undamaged()
    }

    /// A checkpoint; `repoint`: then point the records at the new snapshot's table (not worth
    /// it when the store is closing).
    pub(super) fn checkpoint_then(&self, repoint: bool) -> Result<u64> {
        // One checkpoint at a time; the snap mutex is held throughout.
        let mut snap = self.snap.lock();
        let unchanged = |snap: &SnapState| {
            let applied = self.state.read().applied_seq;
            (applied == snap.covered_seq
                && self.model().version == snap.model_version
                && !self.graphs_changed(snap))
            .then(|| snap.latest.as_ref().map(|(s, _)| *s).unwrap_or(0))
        };
        self.undamaged()?;
        // Nothing to write (an idle open and close): no need to wait for the loads below.
        if let Some(seq) = unchanged(&snap) {
            return Ok(seq);
        }
        while self.graphs_loading.load(Ordering::Acquire) > 0 {
            if let Some(r) = self.failure.lock().clone() {
                return Err(Error::Poisoned(r));
            }
            // Shutting down (close has written its snapshot): the indexer may stop before
            // the load this waits for.
            if self.shutdown.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.wait_keywords()?;
        // A snapshot would link a damaged chunk again: refuse, so that the snapshots kept
        // (and the log floor) stay as they are until a reopen has checked them.
        self.snapshot_checked()?;
        let model = self.model();
        let model_version = model.version;
        if let Some(seq) = unchanged(&snap) {
            return Ok(seq);
        }
        let applied = self.state.read().applied_seq;
        if snap.latest.as_ref().is_some_and(|(s, _)| *s == applied) {
            // The latest snapshot's marker never reached the log (a crash or a failed commit
            // right after its rename), and no event came since: only the graphs or the model
            // changed. Write the marker now, so this snapshot gets a sequence of its own
            // instead of replacing that directory in place.
            let at = self.commit_blocking(vec![Event::Checkpointed {
                snapshot_seq: applied,
            }])?;
            snap.covered_seq = covered_by_marker(applied, &at);
        }
        let root = self.dir.join("snapshots");
        let (cap_seq, written, points) = {
            let idx = self.index_lock.lock();
            let points = self.graph_points.load(Ordering::Acquire);
            let mut cap = {
                let st = self.state.read();
                let cap = Capture::take(&st);
                // A row that read as no record would be missing from this snapshot.
                self.undamaged_in(&st)?;
                cap
            };
            cap.model = Some(model).filter(|m| m.version > 0).map(|m| (*m).clone());
            let seq = cap.seq;
            let mut w = Writer::begin(&root, seq)?;
            w.dump_graph(&mut cap)?;
            drop(idx);
            let prev = snap.latest.as_ref().map(|(_, p)| p.clone());
            let written = w.finish(
                cap,
                prev.as_deref(),
                &snap.known_chunks,
                self.config.clock.now_us(),
            )?;
            (seq, written, points)
        };
        let dst = written.dir;
        // The record table just written is read back and checked as a load checks it. A
        // failure fails the checkpoint before anything depends on this snapshot (no marker,
        // nothing pruned, the log floor unchanged; the next open reports and skips it).
        let table = records::load(&dst, &written.records, written.nslots)?;
        if let Some(name) = written.new_chunk {
            self.state.write().vectors.adopt_chunk(&dst.join(name))?;
            // Not at close: the graphs are about to be dropped.
            if repoint {
                self.share_maps();
            }
        }
        if repoint {
            self.repoint_records(&table);
        }
        drop(table);
        snap.known_chunks = written
            .chunks
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        snap.latest = Some((cap_seq, dst));
        snap.at = Instant::now();
        snap.model_version = model_version;
        snap.graph_points = points;
        #[cfg(test)]
        while HOLD_CHECKPOINT_MARKERS.lock().contains(&self.dir) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = self.commit_blocking(vec![Event::Checkpointed {
            snapshot_seq: cap_seq,
        }])?;
        snap.covered_seq = covered_by_marker(cap_seq, &at);
        // Keep the newest K snapshots; the log keeps (at least) what the oldest needs.
        let all = snapshot::list(&root)?;
        let mut pruned = false;
        for (_, p) in all.iter().skip(self.config.snapshots_keep) {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
            pruned = true;
        }
        if pruned {
            // The removal is durable before the log's floor moves past what it needed.
            magray_wal::fsutil::sync_dir(&root)?;
        }
        if let Some((oldest, _)) = all.iter().take(self.config.snapshots_keep).next_back() {
            self.log()?.set_retention_floor(*oldest)?;
        }
        // Published last: stats() names a snapshot only once its checkpoint (pruning included)
        // is done, so a reader never sees the new snapshot beside ones about to be removed.
        *self.snap_info.lock() = (Some(cap_seq), snap.covered_seq);
        Ok(cap_seq)
    }

    /// Points every record a new snapshot's record `table` holds at its row: a record
    /// unchanged since becomes that row (16 bytes in memory), the body of any other leaves
    /// the heap for the mapped file (page cache, which the kernel can evict), and the table
    /// an older snapshot had stops being used, so its file is released once that snapshot is
    /// pruned. A body never changes, and a row is used only for the record with its id. 64k
    /// rows per hold of the write lock; what is replaced is dropped after it is released
    /// (the frees, and the unmapping of an old table).
    pub(super) fn repoint_records(&self, table: &Arc<RecordTable>) {
        let mut old = Replaced::default();
        let t = self.state.write().repoint_begin(table, &mut old);
        drop(old);
        let rows = table.len();
        let mut row = 0;
        while row < rows {
            let end = rows.min(row.saturating_add(65_536));
            let mut old = Replaced::default();
            self.state.write().repoint(table, t, row..end, &mut old);
            drop(old);
            row = end;
        }
        let mut old = Replaced::default();
        self.state.write().repoint_end(&mut old);
        drop(old);
    }
}

/// What a snapshot at `snapshot_seq` covers once its `Checkpointed` marker is `at`: up to the
/// marker when the marker directly follows it, else only up to itself (events that committed
/// while the snapshot was written are in the log only, and the next checkpoint must not be
/// skipped as if nothing had happened).
pub(super) fn covered_by_marker(snapshot_seq: u64, at: &Appended) -> u64 {
    if at.first_seq == snapshot_seq + 1 {
        at.last_seq
    } else {
        snapshot_seq
    }
}
