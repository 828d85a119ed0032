//! The indexer thread: loads the snapshot's graph dump, inserts new records into the store's
//! one HNSW graph (every layer's records: a search filters by layer), publishes frozen copies
//! for searches, scrubs what open mapped unread, and rebuilds the graph when asked or when it
//! must.

use super::*;
use crate::index::frozen::FrozenGraph;

impl Memory {
    /// Rebuilds the index from the live records when it has tombstones (deleted, expired or
    /// superseded records), waits for indexing to finish, then writes a snapshot. Returns the
    /// snapshot's sequence.
    pub async fn optimize(&self) -> Result<u64> {
        self.inner.check()?;
        if self.inner.state.read().index.tombstones > 0 {
            self.inner.force_rebuild.store(true, Ordering::Release);
            self.inner.index_wake.notify();
            while self.inner.force_rebuild.load(Ordering::Acquire) {
                self.inner.check()?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        self.wait_indexed().await?;
        self.checkpoint().await
    }

    /// Tests: vectors the graph builder holds copies of (not read from the maps); `None`
    /// without a graph.
    #[cfg(test)]
    pub(crate) fn graph_copies(&self) -> Option<usize> {
        let g = self.inner.state.read().index.graph.clone();
        g.map(|g| g.lock().own_vectors())
    }

    /// Tests: whether searches walk the snapshot's dump in place.
    #[cfg(test)]
    pub(crate) fn graph_in_place(&self) -> bool {
        self.inner
            .state
            .read()
            .index
            .frozen
            .as_ref()
            .is_some_and(|f| f.in_place())
    }

    /// Waits until every live record is in the HNSW index and the vector blocks
    /// mapped at open are all checked (benchmarks, tests); fails with damage found in them
    /// (see `Stats::damage`).
    pub async fn wait_indexed(&self) -> Result<()> {
        loop {
            self.inner.check()?;
            let done = {
                let st = self.inner.state.read();
                // Nothing is indexed once damage is found (see `Stats::damage`).
                self.inner.undamaged_in(&st)?;
                self.inner.graphs_loading.load(Ordering::Acquire) == 0
                    && !self.inner.scrubbing.load(Ordering::Acquire)
                    && !st.keywords.is_pending()
                    && st.index.pending.iter().all(|s| st.layer_of(*s).is_none())
                    && (st.index.graph.is_none() || st.index.frozen.is_some())
                    && !needs_rebuild(&st.index, &self.inner.config)
            };
            if done {
                return Ok(());
            }
            self.inner.index_wake.notify();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Inner {
    /// Reads the snapshot's keyword index (its crc32 checked, every field validated) outside
    /// the state lock, then puts it in place with what the replay and writes changed since.
    /// Damage is noted like damage in any snapshot file: searches fail with it until a reopen,
    /// which checks every file in full and falls back past the snapshot.
    fn load_keywords(&self, dir: &Path, manifest: &snapshot::ManifestBody) {
        if !self.state.read().keywords.is_pending() {
            return;
        }
        let loaded = snapshot::load_keywords(dir, manifest);
        let mut st = self.state.write();
        match loaded {
            Ok(Some(ix)) => st.keywords.resolve(ix),
            Ok(None) => st
                .keywords
                .fail(dir.to_path_buf(), "keywords.bin not listed".into()),
            Err(e) => {
                st.keywords.fail(dir.to_path_buf(), e.to_string());
                drop(st);
                self.note_damage(&e);
            }
        }
    }

    /// Waits until the snapshot's keyword index is read (at most once after an open).
    pub(super) fn wait_keywords(&self) -> Result<()> {
        while self.state.read().keywords.is_pending() {
            self.check()?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// An empty graph, reading the vectors `mapped` holds from there.
    pub(super) fn new_graph(&self, mapped: crate::disk::vectors::Vectors) -> HnswBuilder {
        let h = self.config.hnsw;
        // Seeded: the same records inserted in the same order make the same graph.
        let seed = 0x4d47_5259_0000_0000;
        let mut g = HnswBuilder::new(self.config.dimension, h.m, h.ef_construction, seed);
        g.share(mapped);
        g
    }

    /// After a checkpoint mapped a new vector chunk: the graph reads those vectors from the
    /// map and drops its copies of them.
    pub(super) fn share_maps(&self) {
        let _idx = self.index_lock.lock();
        let (mapped, graph) = {
            let st = self.state.read();
            (st.vectors.mapped_part(), st.index.graph.clone())
        };
        if let Some(g) = graph {
            g.lock().share(mapped);
        }
    }

    /// Gives a loaded graph dump its vectors: the store's maps for the slots they hold, else
    /// copies from the store by slot, 64k nodes per read lock (so writers are not held up).
    pub(super) fn attach_vectors(
        &self,
        mut g: HnswBuilder,
        dir: &Path,
        base: &str,
        coded: Option<&FrozenGraph>,
    ) -> Result<HnswBuilder> {
        // The snapshot's own slots are all mapped: nothing to copy but what is not.
        g.share(self.state.read().vectors.mapped_part());
        while !g.vectors_missing().is_empty() {
            let st = self.state.read();
            let nslots = st.nslots();
            g.fill_vectors(
                1 << 16,
                |slot| (slot < nslots).then(|| st.vectors.get(slot)),
                coded,
            )
            .map_err(|slot| {
                Error::corrupted(
                    snapshot::graph_path(dir, base),
                    0,
                    format!("the graph holds slot {slot}, which the store does not have"),
                )
            })?;
        }
        Ok(g)
    }

    /// Makes a graph just read from a dump searchable before its vectors are attached:
    /// freezes it from the store's mapped vectors, outside the projections' lock, and
    /// installs that frozen copy (replacing the dump searched in place) and returns it (its
    /// codes are the builder's too). `None` (nothing installed) when the graph names a slot
    /// that is not mapped; `attach_vectors` then decides.
    pub(super) fn freeze_loaded(&self, g: &HnswBuilder) -> Option<Arc<FrozenGraph>> {
        let mapped = self.state.read().vectors.mapped_part();
        if g.slots().iter().any(|s| *s >= mapped.len()) {
            return None;
        }
        let frozen = Arc::new(g.freeze_with(|node| mapped.get(g.slots()[node])));
        let _idx = self.index_lock.lock();
        install_graph(&mut self.state.write(), g.slots(), frozen.clone());
        Some(frozen)
    }

    pub(super) fn indexer(self: &Arc<Self>, dumps: Option<Dumps>) {
        // Searches and writes come first (the insert threads spawned later inherit this).
        crate::util::lower_this_thread_priority();
        // First the keyword index (searches by words wait for it), then the rest.
        if let Some((dir, manifest, _)) = &dumps {
            self.load_keywords(dir, manifest);
        }
        #[cfg(test)]
        while HOLD_DUMP_LOADS.lock().contains(&self.dir) && !self.shutdown.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every block of the chunks mapped at open is checked before the graphs read them,
        // and every row of a record table mapped unread, and the key index.
        let (mapped, tables, keys) = {
            let st = self.state.read();
            (st.vectors.mapped_part(), st.record_tables(), st.key_index())
        };
        let stop = || self.shutdown.load(Ordering::Acquire);
        let scrubbed = mapped
            .scrub(&stop)
            .and_then(|_| tables.iter().try_for_each(|t| t.scrub_blocks(&stop)))
            .and_then(|_| self.scrub_rows(&tables, &stop))
            .and_then(|_| keys.scrub(&stop));
        drop((mapped, tables, keys));
        if self.shutdown.load(Ordering::Acquire) {
            // A dropped handle: nobody waits for the rest (close() checkpoints, which waits for
            // the scrub, before shutting down). The dump is not loaded: say so, or a
            // checkpoint the maintenance thread began before the shutdown waits for it forever
            // (fsync_audit hung on this once the indexer ran at a lower priority).
            if let Some((_, _, Some(_))) = &dumps {
                self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
            }
            return;
        }
        self.scrubbing.store(false, Ordering::Release);
        if let Err(e) = scrubbed {
            self.note_damage(&e);
            // Nothing is indexed from damaged vectors; searches fail until a reopen.
            if let Some((_, _, Some(_))) = &dumps {
                self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
            }
            while !self.shutdown.load(Ordering::Acquire) {
                self.index_wake.wait(Duration::from_millis(200));
            }
            return;
        }
        if let Some((dir, manifest, Some((base, mapped)))) = dumps {
            if self.shutdown.load(Ordering::Acquire) {
                // A dropped handle stops here instead of loading a dump nobody will use
                // (close() checkpoints, which waits for the load, before shutting down).
                self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            self.load_dump(&dir, &manifest, &base, mapped);
        }
        while !self.shutdown.load(Ordering::Acquire) {
            let forced = self.force_rebuild.load(Ordering::Acquire);
            if forced || needs_rebuild(&self.state.read().index, &self.config) {
                self.rebuild();
                if forced {
                    self.force_rebuild.store(false, Ordering::Release);
                }
                continue;
            }
            let worked = self.index_some() | self.maybe_freeze();
            if !worked {
                self.index_wake.wait(Duration::from_millis(200));
            }
        }
    }

    /// Loads the snapshot's graph dump `base` (mapped at open when `mapped`): searchable at
    /// once from the store's mapped vectors, then given its vectors to insert into; an
    /// unusable dump is reported and the graph built again from the records.
    fn load_dump(
        &self,
        dir: &Path,
        manifest: &snapshot::ManifestBody,
        base: &str,
        mapped: Option<Arc<MappedGraph>>,
    ) {
        let mut early = false;
        // A dump mapped at open: every block checked before it is read in full.
        let loaded = mapped
            .as_ref()
            .map(|g| g.checked_bytes())
            .transpose()
            .and_then(|checked| {
                snapshot::load_graph(dir, manifest, base, self.config.dimension, checked)
            });
        // Searches hold it while it is installed; this thread no longer needs the map (once
        // replaced, the dump is unmapped before the vectors are attached).
        drop(mapped);
        let res = loaded.and_then(|mut g| {
            g.set_ef_construction(self.config.hnsw.ef_construction);
            let frozen = self.freeze_loaded(&g);
            early = frozen.is_some();
            self.attach_vectors(g, dir, base, frozen.as_deref())
        });
        let _idx = self.index_lock.lock();
        let mut st = self.state.write();
        match res {
            Ok(g) => {
                st.set_index_slots(g.slots());
                let ix = &mut st.index;
                ix.graph = Some(Arc::new(parking_lot::Mutex::new(g)));
                if !early && !ix.frozen.as_ref().is_some_and(|f| f.in_place()) {
                    ix.frozen = None;
                    ix.unfrozen.clear();
                }
                // Else the early copy stays: nothing was inserted since it was taken (this
                // thread is the only one that inserts). A dump searched in place stays until
                // `maybe_freeze` below replaces it.
            }
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(reason = %why, "HNSW dump unusable; rebuilding the index");
                self.report.lock().index_rebuilds.push(why);
                let ix = &mut st.index;
                ix.in_index.clear();
                ix.indexed = 0;
                ix.tombstones = 0;
                ix.frozen = None;
                ix.unfrozen.clear();
            }
        }
        st.recompute_pending();
        drop(st);
        drop(_idx);
        self.maybe_freeze();
        self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
    }

    /// Inserts up to `index_batch` pending vectors into the graph.
    pub(super) fn index_some(&self) -> bool {
        let _idx = self.index_lock.lock();
        let (graph, fresh, consumed, batch) = {
            let st = self.state.read();
            let ix = &st.index;
            if ix.pending.is_empty() {
                return false;
            }
            let mut batch = Vec::new();
            let mut consumed = 0;
            for &slot in &ix.pending {
                if batch.len() >= self.config.index_batch {
                    break;
                }
                consumed += 1;
                let live = st.layer_of(slot).is_some();
                if live && !ix.in_index.get(slot) && !batch.iter().any(|(s, _)| *s == slot) {
                    batch.push((slot, st.vectors.get(slot).to_vec()));
                }
            }
            let (graph, fresh) = match &ix.graph {
                Some(g) => (g.clone(), false),
                None => (
                    Arc::new(parking_lot::Mutex::new(
                        self.new_graph(st.vectors.mapped_part()),
                    )),
                    true,
                ),
            };
            (graph, fresh, consumed, batch)
        };
        {
            graph.lock().insert_batch(&batch, self.config.index_threads);
        }
        let mut st = self.state.write();
        let died = batch
            .iter()
            .filter(|(s, _)| st.layer_of(*s).is_none())
            .count() as u64;
        let ix = &mut st.index;
        ix.pending.drain(..consumed);
        for (slot, _) in &batch {
            ix.in_index.set(*slot);
        }
        ix.tombstones += died; // died while we were inserting them
        ix.indexed += batch.len() as u64;
        self.graph_points
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        if ix.frozen.is_some() {
            ix.unfrozen.extend(batch.iter().map(|(s, _)| *s));
        }
        if fresh && !batch.is_empty() {
            ix.graph = Some(graph);
        }
        ix.trim_tail();
        true
    }

    /// Takes a new frozen copy of the graph (the copy searches run on) when there is none or
    /// when the points inserted since the last one cost searches too much exact scanning: more
    /// than 1/32 of the graph (at least 1,024) while indexing, or, once the index has caught
    /// up, more than 1/1,024 of it (at least 64). True if it froze.
    pub(super) fn maybe_freeze(&self) -> bool {
        let _idx = self.index_lock.lock();
        let graph = {
            let st = self.state.read();
            let ix = &st.index;
            let Some(g) = &ix.graph else {
                return false;
            };
            let due = match &ix.frozen {
                None => true,
                Some(f) if f.in_place() => true,
                Some(_) => {
                    let n = ix.unfrozen.len() as u64;
                    n >= (ix.indexed / 32).max(1024)
                        || (ix.pending.is_empty() && n >= (ix.indexed / 1024).max(64))
                }
            };
            if !due {
                return false;
            }
            g.clone()
        };
        // The index lock keeps the indexer (this thread) from inserting while we copy.
        let frozen = Arc::new(graph.lock().freeze());
        let mut st = self.state.write();
        let ix = &mut st.index;
        if ix.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, &graph)) {
            ix.frozen = Some(frozen);
            ix.unfrozen.clear();
            ix.trim_tail();
        }
        true
    }

    /// Builds a fresh graph of the live records beside the old one, then swaps.
    pub(super) fn rebuild(&self) {
        // Ascending slot order.
        let members: Vec<u32> = self.state.read().live_slots();
        tracing::info!(
            records = members.len(),
            "rebuilding the HNSW index (tombstones over threshold)"
        );
        let mut graph = self.new_graph(self.state.read().vectors.mapped_part());
        for chunk in members.chunks(self.config.index_batch) {
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let vs: Vec<(u32, Vec<f32>)> = {
                let st = self.state.read();
                // A checkpoint during the rebuild mapped more vectors: read those from the map
                // too (this graph is not yet in the state, where `share_maps` finds it).
                graph.share(st.vectors.mapped_part());
                chunk
                    .iter()
                    .map(|s| (*s, st.vectors.get(*s).to_vec()))
                    .collect()
            };
            graph.insert_batch(&vs, self.config.index_threads);
        }
        let frozen = (!members.is_empty())
            .then(|| Arc::new(graph.freeze()) as Arc<dyn crate::index::frozen::SearchGraph>);
        let _idx = self.index_lock.lock();
        graph.share(self.state.read().vectors.mapped_part());
        let mut st = self.state.write();
        st.set_index_slots(&members);
        let ix = &mut st.index;
        ix.frozen = frozen;
        ix.unfrozen.clear();
        // An empty store keeps no graph (and dumps none).
        ix.graph = (!members.is_empty()).then(|| Arc::new(parking_lot::Mutex::new(graph)));
        st.recompute_pending();
        self.graph_points
            .fetch_add(members.len() as u64, Ordering::AcqRel);
    }
}

pub(super) fn needs_rebuild(ix: &crate::projection::IndexState, c: &Config) -> bool {
    ix.graph.is_some()
        && ix.tombstones >= 256
        && ix.tombstones as f64 > c.rebuild_tombstone_ratio * ix.indexed as f64
}

/// Makes `graph`, which holds `slots`, the one searches walk: its slots are what is in the
/// index, nothing is searched exactly beside it but the records it lacks.
pub(super) fn install_graph(
    st: &mut Projections,
    slots: &[u32],
    graph: Arc<dyn crate::index::frozen::SearchGraph>,
) {
    st.set_index_slots(slots);
    st.index.frozen = Some(graph);
    st.index.unfrozen.clear();
    st.recompute_pending();
}
