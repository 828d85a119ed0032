//! The indexer thread: loads the snapshot's graph dumps, inserts new records into each
//! layer's HNSW graph, publishes frozen copies for searches, scrubs what open mapped unread,
//! and rebuilds a layer's graph when asked or when it must.

use super::*;

impl Memory {
    /// Rebuilds the index of every layer that has tombstones (deleted, expired or moved
    /// records) from its live records, waits for indexing to finish, then writes a snapshot.
    /// Returns the snapshot's sequence.
    pub async fn optimize(&self) -> Result<u64> {
        self.inner.check()?;
        let mut bits = 0u8;
        for l in Layer::ALL {
            if self.inner.state.read().layers[l.index()].tombstones > 0 {
                bits |= 1 << l.index();
            }
        }
        self.inner.force_rebuild.fetch_or(bits, Ordering::AcqRel);
        self.inner.index_wake.notify();
        while self.inner.force_rebuild.load(Ordering::Acquire) & bits != 0 {
            self.inner.check()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.wait_indexed().await?;
        self.checkpoint().await
    }

    /// Tests: vectors `layer`'s graph builder holds copies of (not read from the maps); `None`
    /// without a graph.
    #[cfg(test)]
    pub(crate) fn graph_copies(&self, layer: Layer) -> Option<usize> {
        let g = self.inner.state.read().layers[layer.index()].graph.clone();
        g.map(|g| g.lock().own_vectors())
    }

    /// Tests: whether `layer`'s searches walk its snapshot's dump in place.
    #[cfg(test)]
    pub(crate) fn graph_in_place(&self, layer: Layer) -> bool {
        self.inner.state.read().layers[layer.index()]
            .frozen
            .as_ref()
            .is_some_and(|f| f.in_place())
    }

    /// Waits until every live record is in its layer's HNSW index and the vector blocks
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
                    && st.layers.iter().all(|l| {
                        l.pending.iter().all(|s| !l.members.contains(s))
                            && (l.graph.is_none() || l.frozen.is_some())
                            && !needs_rebuild(l, &self.inner.config)
                    })
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

    /// An empty graph for `layer`, reading the vectors `mapped` holds from there.
    pub(super) fn new_graph(
        &self,
        layer: Layer,
        mapped: crate::disk::vectors::Vectors,
    ) -> HnswBuilder {
        let h = self.config.hnsw;
        // Seeded per layer: the same records inserted in the same order make the same graph.
        let seed = 0x4d47_5259_0000_0000 | layer.index() as u64;
        let mut g = HnswBuilder::new(self.config.dimension, h.m, h.ef_construction, seed);
        g.share(mapped);
        g
    }

    /// After a checkpoint mapped a new vector chunk: every graph reads those vectors from the
    /// map and drops its copies of them.
    pub(super) fn share_maps(&self) {
        let _idx = self.index_lock.lock();
        let (mapped, graphs) = {
            let st = self.state.read();
            let graphs: Vec<_> = st.layers.iter().filter_map(|l| l.graph.clone()).collect();
            (st.vectors.mapped_part(), graphs)
        };
        for g in graphs {
            g.lock().share(mapped.mapped_part());
        }
    }

    /// Gives a loaded graph dump its vectors: the store's maps for the slots they hold, else
    /// copies from the store by slot, 64k nodes per read lock (so writers are not held up).
    pub(super) fn attach_vectors(
        &self,
        mut g: HnswBuilder,
        dir: &Path,
        base: &str,
    ) -> Result<HnswBuilder> {
        // The snapshot's own slots are all mapped: nothing to copy but what is not.
        g.share(self.state.read().vectors.mapped_part());
        while !g.vectors_missing().is_empty() {
            let st = self.state.read();
            let nslots = st.nslots();
            g.fill_vectors(1 << 16, |slot| {
                (slot < nslots).then(|| st.vectors.get(slot))
            })
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
    /// installs that frozen copy (replacing the dump searched in place). False (nothing
    /// installed) when the graph names a slot that is not mapped; `attach_vectors` then
    /// decides.
    pub(super) fn freeze_loaded(&self, layer: Layer, g: &HnswBuilder) -> bool {
        let mapped = self.state.read().vectors.mapped_part();
        if g.slots().iter().any(|s| *s >= mapped.len()) {
            return false;
        }
        let frozen = Arc::new(g.freeze_with(|node| mapped.get(g.slots()[node])));
        let _idx = self.index_lock.lock();
        install_graph(
            &mut self.state.write().layers[layer.index()],
            g.slots(),
            frozen,
        );
        true
    }

    pub(super) fn indexer(self: &Arc<Self>, dumps: Option<Dumps>) {
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
            // the scrub, before shutting down).
            return;
        }
        self.scrubbing.store(false, Ordering::Release);
        if let Err(e) = scrubbed {
            self.note_damage(&e);
            // Nothing is indexed from damaged vectors; searches fail until a reopen.
            if let Some((_, _, list)) = &dumps {
                self.graphs_loading
                    .fetch_sub(list.len() as u64, Ordering::AcqRel);
            }
            while !self.shutdown.load(Ordering::Acquire) {
                self.index_wake.wait(Duration::from_millis(200));
            }
            return;
        }
        if let Some((dir, manifest, list)) = dumps {
            for (layer, base, mapped) in list {
                if self.shutdown.load(Ordering::Acquire) {
                    // A dropped handle stops here instead of loading dumps nobody will use
                    // (close() checkpoints, which waits for the loads, before shutting down).
                    self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let mut early = false;
                // A dump mapped at open: every block checked before it is read in full.
                let loaded = mapped
                    .as_ref()
                    .map(|g| g.checked_bytes())
                    .transpose()
                    .and_then(|checked| {
                        snapshot::load_graph(&dir, &manifest, &base, self.config.dimension, checked)
                    });
                // Searches hold it while it is installed; this thread no longer needs the map
                // (once replaced, the dump is unmapped before the vectors are attached).
                drop(mapped);
                let res = loaded.and_then(|mut g| {
                    g.set_ef_construction(self.config.hnsw.ef_construction);
                    early = self.freeze_loaded(layer, &g);
                    self.attach_vectors(g, &dir, &base)
                });
                let _idx = self.index_lock.lock();
                let mut st = self.state.write();
                let ls = &mut st.layers[layer.index()];
                match res {
                    Ok(g) => {
                        set_index_slots(ls, g.slots());
                        ls.graph = Some(Arc::new(parking_lot::Mutex::new(g)));
                        if !early && !ls.frozen.as_ref().is_some_and(|f| f.in_place()) {
                            ls.frozen = None;
                            ls.unfrozen.clear();
                        }
                        // Else the early copy stays: nothing was inserted since it was taken
                        // (this thread is the only one that inserts). A dump searched in place
                        // stays until `maybe_freeze` below replaces it.
                    }
                    Err(e) => {
                        let why = e.to_string();
                        tracing::warn!(layer = %layer, reason = %why, "HNSW dump unusable; rebuilding the index");
                        self.report.lock().index_rebuilds.push((layer, why));
                        ls.in_index.clear();
                        ls.indexed = 0;
                        ls.tombstones = 0;
                        ls.frozen = None;
                        ls.unfrozen.clear();
                    }
                }
                ls.recompute_pending();
                drop(st);
                drop(_idx);
                self.maybe_freeze(layer);
                self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
            }
        }
        while !self.shutdown.load(Ordering::Acquire) {
            let mut worked = false;
            for layer in Layer::ALL {
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let bit = 1u8 << layer.index();
                let forced = self.force_rebuild.load(Ordering::Acquire) & bit != 0;
                let rebuild =
                    forced || needs_rebuild(&self.state.read().layers[layer.index()], &self.config);
                if rebuild {
                    self.rebuild(layer);
                    if forced {
                        self.force_rebuild.fetch_and(!bit, Ordering::AcqRel);
                    }
                    worked = true;
                    continue;
                }
                worked |= self.index_some(layer);
                worked |= self.maybe_freeze(layer);
            }
            if !worked {
                self.index_wake.wait(Duration::from_millis(200));
            }
        }
    }

    /// Inserts up to `index_batch` pending vectors of a layer into its graph.
    pub(super) fn index_some(&self, layer: Layer) -> bool {
        let _idx = self.index_lock.lock();
        let (graph, fresh, consumed, batch) = {
            let st = self.state.read();
            let ls = &st.layers[layer.index()];
            if ls.pending.is_empty() {
                return false;
            }
            let mut batch = Vec::new();
            let mut consumed = 0;
            for &slot in &ls.pending {
                if batch.len() >= self.config.index_batch {
                    break;
                }
                consumed += 1;
                let live = st.live(slot).is_some_and(|r| r.layer == layer);
                if live && !ls.in_index.get(slot) && !batch.iter().any(|(s, _)| *s == slot) {
                    batch.push((slot, st.vectors.get(slot).to_vec()));
                }
            }
            let (graph, fresh) = match &ls.graph {
                Some(g) => (g.clone(), false),
                None => (
                    Arc::new(parking_lot::Mutex::new(
                        self.new_graph(layer, st.vectors.mapped_part()),
                    )),
                    true,
                ),
            };
            (graph, fresh, consumed, batch)
        };
        {
            let mut g = graph.lock();
            for (slot, v) in &batch {
                g.insert(*slot, v);
            }
        }
        let mut st = self.state.write();
        let ls = &mut st.layers[layer.index()];
        ls.pending.drain(..consumed);
        for (slot, _) in &batch {
            ls.in_index.set(*slot);
            if !ls.members.contains(slot) {
                ls.tombstones += 1; // died while we were inserting it
            }
        }
        ls.indexed += batch.len() as u64;
        self.graph_points
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        if ls.frozen.is_some() {
            ls.unfrozen.extend(batch.iter().map(|(s, _)| *s));
        }
        if fresh && !batch.is_empty() {
            ls.graph = Some(graph);
        }
        true
    }

    /// Takes a new frozen copy of a layer's graph (the copy searches run on) when there is none
    /// or when the points inserted since the last one cost searches too much exact scanning:
    /// more than 1/32 of the graph (at least 1,024) while indexing, or, once the layer has
    /// caught up, more than 1/1,024 of it (at least 64). True if it froze.
    pub(super) fn maybe_freeze(&self, layer: Layer) -> bool {
        let _idx = self.index_lock.lock();
        let graph = {
            let st = self.state.read();
            let ls = &st.layers[layer.index()];
            let Some(g) = &ls.graph else {
                return false;
            };
            let due = match &ls.frozen {
                None => true,
                Some(f) if f.in_place() => true,
                Some(_) => {
                    let n = ls.unfrozen.len() as u64;
                    n >= (ls.indexed / 32).max(1024)
                        || (ls.pending.is_empty() && n >= (ls.indexed / 1024).max(64))
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
        let ls = &mut st.layers[layer.index()];
        if ls.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, &graph)) {
            ls.frozen = Some(frozen);
            ls.unfrozen.clear();
        }
        true
    }

    /// Builds a fresh graph of a layer's live records beside the old one, then swaps.
    pub(super) fn rebuild(&self, layer: Layer) {
        // Ascending slot order (the set iterates in it).
        let members: Vec<u32> = self.state.read().layers[layer.index()]
            .members
            .iter()
            .collect();
        tracing::info!(layer = %layer, records = members.len(), "rebuilding HNSW index (tombstones over threshold)");
        let mut graph = self.new_graph(layer, self.state.read().vectors.mapped_part());
        for chunk in members.chunks(self.config.index_batch) {
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let vs: Vec<(u32, Vec<f32>)> = {
                let st = self.state.read();
                // A checkpoint during the rebuild mapped more vectors: read those from the map
                // too (this graph is not yet in the state, where `share_maps` finds graphs).
                graph.share(st.vectors.mapped_part());
                chunk
                    .iter()
                    .map(|s| (*s, st.vectors.get(*s).to_vec()))
                    .collect()
            };
            for (s, v) in &vs {
                graph.insert(*s, v);
            }
        }
        let frozen = (!members.is_empty())
            .then(|| Arc::new(graph.freeze()) as Arc<dyn crate::index::frozen::SearchGraph>);
        let _idx = self.index_lock.lock();
        graph.share(self.state.read().vectors.mapped_part());
        let mut st = self.state.write();
        let ls = &mut st.layers[layer.index()];
        ls.frozen = frozen;
        ls.unfrozen.clear();
        ls.in_index.clear();
        for s in &members {
            ls.in_index.set(*s);
        }
        ls.indexed = members.len() as u64;
        ls.tombstones = members.iter().filter(|s| !ls.members.contains(s)).count() as u64;
        // An empty layer keeps no graph (and dumps none).
        ls.graph = (!members.is_empty()).then(|| Arc::new(parking_lot::Mutex::new(graph)));
        ls.recompute_pending();
        self.graph_points
            .fetch_add(members.len() as u64, Ordering::AcqRel);
    }
}

pub(super) fn needs_rebuild(ls: &crate::projection::LayerState, c: &Config) -> bool {
    ls.graph.is_some()
        && ls.tombstones >= 256
        && ls.tombstones as f64 > c.rebuild_tombstone_ratio * ls.indexed as f64
}

/// Makes `graph`, which holds `slots`, the one a layer's searches walk: its slots are what is
/// in the index, nothing is searched exactly beside it but the records it lacks.
pub(super) fn install_graph(
    ls: &mut crate::projection::LayerState,
    slots: &[u32],
    graph: Arc<dyn crate::index::frozen::SearchGraph>,
) {
    set_index_slots(ls, slots);
    ls.frozen = Some(graph);
    ls.unfrozen.clear();
    ls.recompute_pending();
}

/// Marks `slots` (a graph's own slot list) as what is in a layer's index, with its count and
/// tombstones.
pub(super) fn set_index_slots(ls: &mut crate::projection::LayerState, slots: &[u32]) {
    ls.in_index.clear();
    for s in slots {
        ls.in_index.set(*s);
    }
    ls.indexed = slots.len() as u64;
    ls.tombstones = slots.iter().filter(|s| !ls.members.contains(s)).count() as u64;
}
