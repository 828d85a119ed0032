//! The write path: validate, embed (through the batcher), reserve against duplicates, commit
//! to the log (group commit, fsynced) and apply to the projections in log order before the
//! caller is told.

use super::*;

impl Memory {
    /// Stores one record, embedding its text first when its embedding is empty
    /// ([`NewRecord::text`]). Returns once durable, like [`Memory::insert`].
    pub async fn store(&self, record: NewRecord) -> Result<RecordId> {
        let mut ids = self.store_batch(vec![record]).await?;
        ids.pop()
            .ok_or_else(|| Error::InvalidInput("empty store".into()))
    }

    /// Stores records atomically (one log entry), embedding the texts of those with an empty
    /// embedding in one request to the batcher first.
    pub async fn store_batch(&self, mut records: Vec<NewRecord>) -> Result<Vec<RecordId>> {
        let todo: Vec<usize> = (0..records.len())
            .filter(|&i| records[i].embedding.is_empty())
            .collect();
        // Content already stored needs no embedding: like `insert`, identical content (text,
        // layer, project) returns the existing id and writes nothing. (Re-ingesting unchanged
        // files then costs no inference.)
        let mut known: Vec<Option<RecordId>> = vec![None; records.len()];
        if !todo.is_empty() {
            let batcher = self.batcher()?;
            for &i in &todo {
                self.inner.validate_text(&records[i].text)?;
            }
            {
                let now = self.inner.config.clock.now_us();
                let st = self.inner.state.read();
                for &i in &todo {
                    let r = &records[i];
                    if r.id.is_none() {
                        let hash = fnv64(r.text.as_bytes());
                        known[i] = st
                            .find_duplicate(&r.text, hash, r.layer, r.project.as_deref(), now)
                            .map(RecordId);
                    }
                }
                // A damaged row reads as no record: a duplicate found may not be the one.
                self.inner.undamaged_in(&st)?;
            }
            let embed: Vec<usize> = todo
                .iter()
                .copied()
                .filter(|&i| known[i].is_none())
                .collect();
            if !embed.is_empty() {
                let texts = embed.iter().map(|&i| records[i].text.clone()).collect();
                let vectors = batcher.embed(texts).await?;
                for (&i, v) in embed.iter().zip(vectors) {
                    records[i].embedding = v.to_vec();
                }
            }
        }
        if known.iter().all(Option::is_none) {
            return self.insert_batch(records).await;
        }
        let rest: Vec<NewRecord> = records
            .into_iter()
            .zip(&known)
            .filter(|(_, k)| k.is_none())
            .map(|(r, _)| r)
            .collect();
        let mut inserted = self.insert_batch(rest).await?.into_iter();
        known
            .into_iter()
            .map(|k| match k {
                Some(id) => Ok(id),
                None => inserted
                    .next()
                    .ok_or_else(|| Error::Poisoned("insert_batch returned too few ids".into())),
            })
            .collect()
    }

    /// Inserts one record; returns its id once durable (or the id of an identical record —
    /// same text, layer and project — already stored).
    pub async fn insert(&self, record: NewRecord) -> Result<RecordId> {
        let mut ids = self.insert_batch(vec![record]).await?;
        ids.pop()
            .ok_or_else(|| Error::InvalidInput("empty insert".into()))
    }

    /// Inserts records as one atomic batch (one log entry): all or none. Every record is
    /// validated first; any invalid one fails the call and nothing is written.
    pub async fn insert_batch(&self, records: Vec<NewRecord>) -> Result<Vec<RecordId>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        inner.check()?;
        let dim = inner.config.dimension;
        // Validate and normalise before touching any shared state.
        let mut prepared = Vec::with_capacity(records.len());
        for r in records {
            inner.validate_text(&r.text)?;
            let v = normalise(&r.embedding, dim)?;
            let hash = fnv64(r.text.as_bytes());
            prepared.push((r, v, hash));
        }
        let keys: Vec<u64> = prepared
            .iter()
            .map(|(r, _, h)| content_key(*h, r.layer, r.project.as_deref()))
            .collect();
        let reserved = inner.reserve(&keys).await?;
        let now = inner.config.clock.now_us();
        let mut ids = Vec::with_capacity(prepared.len());
        let mut events = Vec::new();
        let mut in_batch: HashMap<u64, Vec<(usize, RecordId)>> = HashMap::new();
        {
            let st = inner.state.read();
            let mut batch_ids: HashSet<RecordId> = HashSet::new();
            for (i, (r, v, hash)) in prepared.into_iter().enumerate() {
                if let Some(id) = r.id {
                    if st.get(&id.0).is_some() || batch_ids.contains(&id) {
                        ids.push(id);
                        continue;
                    }
                }
                if let Some(id) =
                    st.find_duplicate(&r.text, hash, r.layer, r.project.as_deref(), now)
                {
                    ids.push(RecordId(id));
                    continue;
                }
                let same = in_batch.entry(keys[i]).or_default();
                if let Some((_, id)) = same.iter().find(|(j, _)| {
                    let Event::Inserted(e) = &events[*j] else {
                        return false;
                    };
                    e.text == r.text && e.layer == r.layer && e.project == r.project
                }) {
                    ids.push(*id);
                    continue;
                }
                let id = r.id.unwrap_or_else(RecordId::new_v7);
                batch_ids.insert(id);
                same.push((events.len(), id));
                ids.push(id);
                events.push(inserted(id, r, v, hash, now));
            }
            // A damaged row reads as no record: an id returned for a duplicate, or one
            // found present, may be wrong (checked here too when nothing is committed).
            inner.undamaged_in(&st)?;
        }
        if !events.is_empty() {
            inner.commit_holding(events, Some(reserved)).await?;
        }
        Ok(ids)
    }

    /// Deletes a record.
    pub async fn delete(&self, id: RecordId) -> Result<()> {
        self.inner.check()?;
        self.inner.require(id)?;
        self.inner.commit(vec![Event::Deleted { id: id.0 }]).await?;
        Ok(())
    }

    /// Replaces `old` by a new record, atomically (one log entry); returns the new id. A
    /// record without an embedding (`NewRecord::text`) is embedded first, when the store was
    /// opened with an embedder.
    pub async fn supersede(&self, old: RecordId, mut record: NewRecord) -> Result<RecordId> {
        let inner = &self.inner;
        inner.check()?;
        inner.validate_text(&record.text)?;
        if record.embedding.is_empty() && self.embedder.is_some() {
            record.embedding = self.embed_query(&record.text).await?;
        }
        let v = normalise(&record.embedding, inner.config.dimension)?;
        inner.require(old)?;
        let id = RecordId::new_v7();
        let hash = fnv64(record.text.as_bytes());
        let now = inner.config.clock.now_us();
        inner
            .commit(vec![
                inserted(id, record, v, hash, now),
                Event::Superseded {
                    old: old.0,
                    new: id.0,
                },
            ])
            .await?;
        Ok(id)
    }

    /// Records the user's rating of a record (`0.0..=1.0`).
    pub async fn rate(&self, id: RecordId, rating: f32) -> Result<()> {
        self.inner.check()?;
        if !(0.0..=1.0).contains(&rating) {
            return Err(Error::InvalidRating(rating));
        }
        self.inner.require(id)?;
        self.inner
            .commit(vec![Event::Rated { id: id.0, rating }])
            .await?;
        Ok(())
    }
}

impl Inner {
    pub(super) fn validate_text(&self, text: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(Error::EmptyText);
        }
        if text.len() > self.config.max_text_bytes {
            return Err(Error::TextTooLong {
                len: text.len(),
                limit: self.config.max_text_bytes,
            });
        }
        Ok(())
    }

    pub(super) fn require(&self, id: RecordId) -> Result<()> {
        let st = self.state.read();
        let found = st.get(&id.0).is_some();
        // A damaged row reads as no record: not "not found" but the damage.
        self.undamaged_in(&st)?;
        if found {
            Ok(())
        } else {
            Err(Error::NotFound(id))
        }
    }

    /// Reserves content keys so two concurrent inserts of the same content resolve to one
    /// record: a second caller waits for the first to apply, then finds it as a duplicate.
    pub(super) async fn reserve(self: &Arc<Self>, keys: &[u64]) -> Result<Reservation> {
        let mut rx = self.applied_tx.subscribe();
        loop {
            {
                let mut f = self.inflight.lock();
                if keys.iter().all(|k| !f.contains(k)) {
                    let mut uniq = keys.to_vec();
                    uniq.sort_unstable();
                    uniq.dedup();
                    for k in &uniq {
                        f.insert(*k);
                    }
                    return Ok(Reservation {
                        inner: self.clone(),
                        keys: uniq,
                    });
                }
            }
            self.check()?;
            // Wait for any apply, then look again (bounded, in case the holder failed).
            let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
        }
    }

    /// Appends a batch and waits until it is applied. The append and the hand-off to the
    /// apply queue run in their own task, so a caller that gives up (drops the future)
    /// cannot leave a hole in the apply order.
    pub(super) async fn commit(self: &Arc<Self>, events: Vec<Event>) -> Result<Appended> {
        self.commit_holding(events, None).await
    }

    /// [`Inner::commit`], holding `reserved` until the events are applied: the task owns it,
    /// so a caller that gives up cannot release its content keys while its insert is still
    /// on the way (a second insert of the same content would then miss it and duplicate it).
    pub(super) async fn commit_holding(
        self: &Arc<Self>,
        events: Vec<Event>,
        reserved: Option<Reservation>,
    ) -> Result<Appended> {
        self.undamaged()?;
        let log = self.log()?;
        let me = self.clone();
        tokio::spawn(async move {
            let mut rx = me.applied_tx.subscribe();
            let (at, events) = log.append_keep_async(events).await?;
            drop(log);
            me.enqueue_apply(at, events);
            loop {
                if *rx.borrow_and_update() >= at.last_seq {
                    drop(reserved);
                    return Ok::<_, Error>(at);
                }
                me.check()?;
                if rx.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        })
        .await
        .map_err(|e| Error::Poisoned(format!("commit task failed: {e}")))?
    }

    pub(super) fn commit_blocking(&self, events: Vec<Event>) -> Result<Appended> {
        self.undamaged()?;
        let log = self.log()?;
        let (at, events) = log.append_keep(events)?;
        drop(log);
        self.enqueue_apply(at, events);
        let mut q = self.apply_q.lock();
        while *self.applied_tx.borrow() < at.last_seq {
            if let Some(r) = self.failure.lock().clone() {
                return Err(Error::Poisoned(r));
            }
            self.applied_cv.wait_for(&mut q, Duration::from_millis(100));
        }
        Ok(at)
    }

    /// Queues a durable batch and applies every batch that is next in sequence order.
    pub(super) fn enqueue_apply(&self, at: Appended, events: Vec<Event>) {
        let mut q = self.apply_q.lock();
        q.insert(at.first_seq, (at, events));
        let mut st = self.state.write();
        let live = self.events_tx.receiver_count() > 0;
        while let Some(entry) = q.first_entry() {
            if *entry.key() != st.applied_seq + 1 {
                break;
            }
            let (at, events) = entry.remove();
            for (i, event) in events.into_iter().enumerate() {
                let env = Envelope {
                    seq: at.first_seq + i as u64,
                    ts_us: at.ts_us,
                    event,
                };
                if let Err(e) = st.apply(&env) {
                    drop(st);
                    self.fail(format!("applying event {}: {e}", env.seq));
                    return;
                }
                if live {
                    let _ = self.events_tx.send(Arc::new(env));
                }
            }
        }
        let applied = st.applied_seq;
        drop(st);
        // Publish while still holding the queue, and never backwards: two overlapping calls
        // must not overwrite a newer value with an older one (a waiter would sleep forever).
        self.applied_tx.send_if_modified(|v| {
            if applied > *v {
                *v = applied;
                true
            } else {
                false
            }
        });
        self.applied_cv.notify_all();
        drop(q);
        self.index_wake.notify();
    }
}

pub(super) fn normalise(v: &[f32], dim: usize) -> Result<Vec<f32>> {
    if v.len() != dim {
        return Err(Error::DimensionMismatch {
            expected: dim,
            got: v.len(),
        });
    }
    if let Some((index, value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        return Err(Error::NonFiniteVector {
            index,
            value: *value,
        });
    }
    let norm = v
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(Error::ZeroVector);
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// The `Inserted` event for a validated record.
pub(super) fn inserted(
    id: RecordId,
    r: NewRecord,
    embedding: Vec<f32>,
    hash: u64,
    now: u64,
) -> Event {
    Event::Inserted(Inserted {
        id: id.0,
        layer: r.layer,
        kind: r.kind,
        text: r.text,
        embedding,
        tags: r.tags,
        project: r.project,
        session: r.session,
        refs: r.refs.into_iter().map(|x| x.0).collect(),
        content_hash: hash,
        ts_us: r.ts_us.unwrap_or(now),
    })
}

/// Content keys held by one insert until its events are applied (or it fails).
pub(super) struct Reservation {
    inner: Arc<Inner>,
    keys: Vec<u64>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut f = self.inner.inflight.lock();
        for k in &self.keys {
            f.remove(k);
        }
    }
}
