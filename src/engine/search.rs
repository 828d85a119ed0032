//! The read path: `get`, `search` and `search_text` over the projections, and the access
//! statistics a search records (buffered, flushed as `Accessed` events).

use super::*;

impl Memory {
    /// Searches by text: the query is embedded (identical queries come from the cache), then
    /// searched like [`Memory::search`].
    pub async fn search_text(
        &self,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<SearchHit>> {
        self.inner.validate_text(query)?;
        let batcher = self.batcher()?;
        // A cached query skips the batcher and its gathering wait.
        if let Some(v) = batcher.embedder().cached(query) {
            return self.search(&v, options).await;
        }
        let v = batcher.embed(vec![query.to_string()]).await?;
        let v = v
            .first()
            .ok_or_else(|| Error::Embedder("no vector for the query".into()))?;
        self.search(v, options).await
    }

    /// The record with this id.
    pub async fn get(&self, id: RecordId) -> Result<Record> {
        self.inner.check()?;
        let now = self.inner.config.clock.now_us();
        let rec = {
            let st = self.inner.state.read();
            // A record past its layer's TTL is expired for readers, even before the
            // lifecycle run writes its `Expired` event.
            let rec = st
                .get(&id.0)
                .filter(|r| !st.past_ttl(r, now))
                .map(|r| r.to_record());
            // A damaged row reads as no record: not "not found" but the damage.
            self.inner.undamaged_in(&st)?;
            rec.ok_or(Error::NotFound(id))?
        };
        self.inner.record_access(Accessed {
            source: AccessSource::Get,
            session: None,
            project: None,
            hits: vec![Hit {
                id: id.0,
                rank: 0,
                score: 0.0,
            }],
        });
        Ok(rec)
    }

    /// Nearest records to `query` (cosine similarity), best first.
    pub async fn search(&self, query: &[f32], options: &SearchOptions) -> Result<Vec<SearchHit>> {
        self.inner.check()?;
        self.inner.search(query, options)
    }

    /// Several searches with the same options.
    pub async fn search_batch(
        &self,
        queries: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<SearchHit>>> {
        self.inner.check()?;
        queries
            .iter()
            .map(|q| self.inner.search(q, options))
            .collect()
    }

    /// Writes buffered search/get accesses to the log now.
    pub async fn flush_accesses(&self) -> Result<()> {
        let events = self.inner.take_accesses();
        if !events.is_empty() {
            self.inner.commit(events).await?;
        }
        Ok(())
    }

    /// Every live record (optionally of one layer), in insertion order, including records
    /// past their TTL that no lifecycle run has expired yet (search and `get` hide those).
    /// For export, verification and tests; it copies every record. Fails with
    /// `Error::Corrupted` where a record's row in the snapshot's table is damaged (see
    /// `Stats::damage`).
    pub fn records(&self, layer: Option<Layer>) -> Result<Vec<Record>> {
        let st = self.inner.state.read();
        let all = st
            .records()
            .map(|(_, r)| r)
            .filter(|r| layer.is_none_or(|l| r.layer == l))
            .map(|r| r.to_record())
            .collect();
        self.inner.undamaged_in(&st)?;
        Ok(all)
    }
}

impl Inner {
    /// Commits the access statistics gathered since the last flush. Once damage is known
    /// nothing is committed (`undamaged`): they are then dropped, as a crash may drop them,
    /// and the store is not failed for them.
    pub(super) fn commit_accesses(&self) -> Result<()> {
        let events = self.take_accesses();
        if events.is_empty() {
            return Ok(());
        }
        match self.commit_blocking(events) {
            Err(e) if self.state.read().damage().is_some() => {
                tracing::debug!(error = %e, "access statistics dropped: the store is damaged");
                Ok(())
            }
            done => done.map(|_| ()),
        }
    }

    pub(super) fn search(&self, query: &[f32], o: &SearchOptions) -> Result<Vec<SearchHit>> {
        if o.top_k == 0 || o.top_k > 100 {
            return Err(Error::InvalidTopK(o.top_k));
        }
        let q = normalise(query, self.config.dimension)?;
        let layers: &[Layer] = if o.layers.is_empty() {
            &Layer::ALL
        } else {
            &o.layers
        };
        let ef = o.ef_search.unwrap_or(self.config.hnsw.ef_search);
        if !(1..=crate::limits::MAX_EF).contains(&ef) {
            return Err(Error::InvalidInput(format!(
                "ef_search {ef} must be within 1..={}",
                crate::limits::MAX_EF
            )));
        }
        let now = self.config.clock.now_us();
        let (hits, damage): (Vec<SearchHit>, _) = {
            let st = self.state.read();
            let mut top = crate::util::TopK::new(o.top_k);
            for l in layers {
                let how = crate::projection::Probe {
                    ef,
                    // An explicit per-search ef is taken as given.
                    scale_ef: o.ef_search.is_none(),
                    exact_below: self.config.exact_search_below,
                    now_us: now,
                };
                st.search_layer(*l, &q, o, how, &mut top);
            }
            let hits: Vec<SearchHit> = top
                .into_sorted()
                .into_iter()
                .filter(|(s, _)| o.score_threshold.is_none_or(|t| *s >= t))
                .filter_map(|(score, slot)| {
                    st.live(slot).map(|r| SearchHit {
                        id: RecordId(r.id),
                        score,
                        layer: r.layer,
                        record: r.to_record(),
                    })
                })
                .collect();
            // A damaged vector block read as zeros, a damaged row as no record (see
            // `crate::vectors`, `RecordTable::row_ok`): this search's answer cannot be
            // trusted, nor any later one's. Checked after the results were read.
            let damage = st.damage();
            (hits, damage)
        };
        if let Some(e) = damage {
            self.note_damage(&e);
            return Err(e);
        }
        if o.record_access && !hits.is_empty() {
            self.record_access(Accessed {
                source: AccessSource::SearchHit,
                session: match &o.caller {
                    Some((s, _)) => s.clone(),
                    None => o.session.clone(),
                },
                project: match &o.caller {
                    Some((_, p)) => p.clone(),
                    None => o.project.clone(),
                },
                hits: hits
                    .iter()
                    .enumerate()
                    .map(|(rank, h)| Hit {
                        id: h.id.0,
                        rank: rank as u16,
                        score: h.score,
                    })
                    .collect(),
            });
        }
        Ok(hits)
    }

    pub(super) fn record_access(&self, a: Accessed) {
        let n = a.hits.len() as u64;
        self.access_buf.lock().push(a);
        if self.access_hits.fetch_add(n, Ordering::Relaxed) + n
            >= self.config.access_flush_hits as u64
        {
            self.maint_wake.notify();
        }
    }

    pub(super) fn take_accesses(&self) -> Vec<Event> {
        let buf = std::mem::take(&mut *self.access_buf.lock());
        self.access_hits.store(0, Ordering::Relaxed);
        buf.into_iter().map(Event::Accessed).collect()
    }
}
