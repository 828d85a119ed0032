//! The read path: `get`, `search` and `search_text` over the projections, and the access
//! statistics a search records (buffered, flushed as `Accessed` events).

use super::*;

impl Memory {
    /// Searches by text, in `options.mode`: [`SearchMode::Hybrid`] (the default) embeds the
    /// query (identical queries come from the cache) and fuses the nearest records by meaning
    /// with the best BM25 matches of its words; [`SearchMode::Vector`] uses the embedding
    /// alone, [`SearchMode::Keyword`] the words alone (no embedder needed). A query of stop
    /// words alone has no keyword matches: hybrid then returns the vector results.
    pub async fn search_text(
        &self,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<SearchHit>> {
        self.inner.validate_text(query)?;
        self.inner.check()?;
        if options.mode == SearchMode::Keyword {
            return self.inner.find(Some(query), None, options);
        }
        let v = self.embed_query(query).await?;
        self.inner.find(Some(query), Some(&v), options)
    }

    /// Searches with the caller's own embedding of the query and its text, in
    /// `options.mode` (see [`Memory::search_text`]).
    pub async fn search_hybrid(
        &self,
        text: &str,
        vector: &[f32],
        options: &SearchOptions,
    ) -> Result<Vec<SearchHit>> {
        self.inner.validate_text(text)?;
        self.inner.check()?;
        self.inner.find(Some(text), Some(vector), options)
    }

    /// The embedding of `query` (the cache first, then the batcher).
    pub(super) async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        let batcher = self.batcher()?;
        // A cached query skips the batcher and its gathering wait.
        if let Some(v) = batcher.embedder().cached(query) {
            return Ok(v.to_vec());
        }
        let mut v = batcher.embed(vec![query.to_string()]).await?;
        v.pop()
            .map(|v| v.to_vec())
            .ok_or_else(|| Error::Embedder("no vector for the query".into()))
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

    /// Nearest records to the embedding `query` (cosine similarity), best first. Without the
    /// query's text this is a vector search whatever `options.mode` says, except that
    /// [`SearchMode::Keyword`] is refused: use [`Memory::search_text`] or
    /// [`Memory::search_hybrid`].
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
        if o.mode == SearchMode::Keyword {
            return Err(Error::InvalidInput(
                "a keyword search needs the query's text: use search_text or search_hybrid".into(),
            ));
        }
        self.find(None, Some(query), o)
    }

    /// One search: by the words of `text` and/or near `vector`, as `o.mode` asks and what is
    /// given allows (no text: vector only; no vector: keyword only).
    pub(super) fn find(
        &self,
        text: Option<&str>,
        vector: Option<&[f32]>,
        o: &SearchOptions,
    ) -> Result<Vec<SearchHit>> {
        if o.top_k == 0 || o.top_k > 100 {
            return Err(Error::InvalidTopK(o.top_k));
        }
        let q = vector
            .filter(|_| o.mode != SearchMode::Keyword)
            .map(|v| normalise(v, self.config.dimension))
            .transpose()?;
        let text = text.filter(|_| o.mode != SearchMode::Vector);
        let probe = self.probe(o)?;
        if text.is_some() {
            self.wait_keywords()?;
        }
        let layers: &[Layer] = if o.layers.is_empty() {
            &Layer::ALL
        } else {
            &o.layers
        };
        let (hits, damage): (Vec<SearchHit>, _) = {
            let st = self.state.read();
            // Vector candidates: a pool wider than k when they are to be fused.
            let pool = if text.is_some() {
                o.top_k.max(FUSION_POOL)
            } else {
                o.top_k
            };
            let near = q.as_ref().map(|q| {
                let mut top = crate::util::TopK::new(pool);
                if !st.search_few_filtered(layers, q, o, probe.now_us, &mut top) {
                    st.search_layers(layers, q, o, probe, &mut top);
                }
                top.into_sorted()
            });
            let filter = crate::projection::Filter::new(layers, o);
            let words = text.map(|t| {
                st.keywords.search(t, o.project.as_deref(), |slot| {
                    st.visible(slot, &filter, o, probe.now_us)
                })
            });
            let ranked = fuse(&st, q.as_deref(), near, words, o.top_k);
            let hits: Vec<SearchHit> = ranked
                .into_iter()
                .filter(|r| {
                    o.score_threshold
                        .is_none_or(|t| r.vector.unwrap_or(r.score) >= t)
                })
                .filter_map(|r| {
                    st.live(r.slot).map(|rec| SearchHit {
                        id: RecordId(rec.id),
                        score: r.score,
                        layer: rec.layer,
                        record: rec.to_record(),
                        vector_score: r.vector,
                        keyword_score: r.keyword,
                    })
                })
                .collect();
            // A damaged vector block read as zeros, a damaged row as no record (see
            // `disk::vectors`, `RecordTable::row_ok`): this search's answer cannot be
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
                        // The promoter's relevance is a similarity: the cosine where known.
                        score: h.vector_score.unwrap_or(h.score),
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

    /// How this search walks the graph.
    fn probe(&self, o: &SearchOptions) -> Result<crate::projection::Probe> {
        let ef = o.ef_search.unwrap_or(self.config.hnsw.ef_search);
        if !(1..=crate::limits::MAX_EF).contains(&ef) {
            return Err(Error::InvalidInput(format!(
                "ef_search {ef} must be within 1..={}",
                crate::limits::MAX_EF
            )));
        }
        Ok(crate::projection::Probe {
            ef,
            // An explicit per-search ef is taken as given.
            scale_ef: o.ef_search.is_none(),
            exact_below: self.config.exact_search_below,
            now_us: self.config.clock.now_us(),
        })
    }
}

/// Candidates each list gives the fusion: its best this many (or k, if more).
const FUSION_POOL: usize = 50;

/// One ranked result: its fused score, and each list's own score where it has one.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    slot: u32,
    score: f32,
    vector: Option<f32>,
    keyword: Option<f32>,
}

/// The best `k` of the vector list `near` (cosine, best first) and the keyword scores
/// `words` (BM25), fused: each list's scores divided by its best score, then averaged
/// (`0.5·bm25/max bm25 + 0.5·cos/max cos`), every candidate scored in both (the cosine of a
/// keyword candidate is computed exactly; a record that shares no word scores 0 in BM25).
/// Dividing by the best keeps each list's shape where ranks would flatten it: on LoCoMo
/// this beat reciprocal-rank fusion by 5-11 points of recall@5 (docs/benchmarks.md). With
/// only one list, its own order and scores.
fn fuse(
    st: &Projections,
    q: Option<&[f32]>,
    near: Option<Vec<(f32, u32)>>,
    words: Option<crate::keyword::Scores>,
    k: usize,
) -> Vec<Ranked> {
    let words = words.unwrap_or_default();
    let Some(near) = near else {
        return words
            .best(k)
            .into_iter()
            .map(|(slot, s)| Ranked {
                slot,
                score: s,
                vector: None,
                keyword: Some(s),
            })
            .collect();
    };
    let mut cands: Vec<Ranked> = near
        .iter()
        .map(|&(cos, slot)| Ranked {
            slot,
            score: 0.0,
            vector: Some(cos),
            keyword: words.get(slot),
        })
        .collect();
    let pool = near.len().max(FUSION_POOL).max(k);
    let by_words = words.best(pool);
    for &(slot, s) in &by_words {
        if !cands.iter().any(|c| c.slot == slot) {
            let cos = q.map(|q| crate::index::distance::dot(q, st.vectors.get(slot)));
            cands.push(Ranked {
                slot,
                score: 0.0,
                vector: cos,
                keyword: Some(s),
            });
        }
    }
    let best_words = by_words.first().map_or(0.0, |b| b.1);
    let best_cos = cands
        .iter()
        .filter_map(|c| c.vector)
        .fold(f32::MIN, f32::max);
    for c in &mut cands {
        let cos = c.vector.unwrap_or(0.0);
        let v = if best_cos > 0.0 { cos / best_cos } else { cos };
        c.score = if best_words > 0.0 {
            0.5 * c.keyword.unwrap_or(0.0) / best_words + 0.5 * v
        } else {
            cos
        };
    }
    cands.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.slot.cmp(&b.slot)));
    cands.truncate(k);
    cands
}
