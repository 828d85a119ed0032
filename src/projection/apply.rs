//! Applying events in log order: inserts, deletes, promotions, accesses, ratings and
//! expiries; and repointing slots at the rows of a new snapshot's record table.

use super::*;
use crate::disk::records::{Body, OwnedBody, RecordTable};
use crate::error::{Error, Result};
use crate::types::{Layer, DECAY_HALF_LIVES_US};
use crate::util::{fnv64, FastMap};
use magray_wal::{AccessSource, Envelope, Event, Id, Inserted};
use std::sync::Arc;

impl Projections {
    /// Sets the access statistics of the live record in `slot` (a snapshot's `stats.zst`).
    pub(crate) fn set_access(&mut self, slot: u32, a: Access) -> bool {
        // Not `live`: that would read (and check) the row of every accessed record at open.
        if !matches!(
            self.slots.get(slot as usize),
            Some(Slot::Row(_) | Slot::Owned(_))
        ) {
            return false;
        }
        self.access.insert(slot, Box::new(a));
        true
    }

    /// The live record in `slot`, to change it: a table row becomes an owned record first.
    pub(super) fn live_mut(&mut self, slot: u32) -> Option<&mut RecordData> {
        if let Some(Slot::Row(r)) = self.slots.get(slot as usize) {
            let r = *r;
            let data = Rec::of_row(self.row_table(slot, &r)?, r.row, None).to_data();
            self.slots[slot as usize] = Slot::Owned(Box::new(data));
            self.rows_in[r.table as usize] -= 1;
        }
        match self.slots.get_mut(slot as usize)? {
            Slot::Owned(r) => Some(r),
            _ => None,
        }
    }

    /// Takes the live record out of `slot`, leaving it dead (and drops its statistics).
    pub(super) fn take(&mut self, slot: u32) -> Option<RecordData> {
        let r = match std::mem::take(self.slots.get_mut(slot as usize)?) {
            Slot::Dead => None,
            Slot::Owned(r) => Some(*r),
            Slot::Row(r) => {
                self.rows_in[r.table as usize] -= 1;
                self.row_table(slot, &r)
                    .map(|t| Rec::of_row(t, r.row, None).to_data())
            }
        };
        self.access.remove(&slot);
        if let Some(a) = self.attrs.get_mut(slot as usize) {
            *a = attrs::DEAD;
        }
        r
    }

    /// Starts moving the records unchanged since a checkpoint to the rows of its record
    /// `table` (see [`Projections::repoint`]): the table index the rows will name, or `None`
    /// if both tables still have rows (never: every row of the older table has one in the
    /// newer, so a whole repoint empties it). A table replaced here goes into `old`.
    pub(crate) fn repoint_begin(
        &mut self,
        table: &Arc<RecordTable>,
        old: &mut Replaced,
    ) -> Option<u8> {
        let free = (0..2).find(|t| self.rows_in[*t] == 0);
        debug_assert!(free.is_some(), "both record tables still have rows");
        let free = free?;
        old.tables.extend(self.tables[free].replace(table.clone()));
        Some(free as u8)
    }

    /// Points the records of rows `rows` of a checkpoint's record `table` at their row.
    /// With `t` from [`Projections::repoint_begin`], a record that still holds what its row
    /// says (a row of the older table, or an owned record unchanged since the capture; its
    /// access statistics are kept beside it) becomes a row of table `t`; any other owned record of the row's id gets its body
    /// from the row. What is replaced goes into `old`, to be dropped outside the lock.
    pub(crate) fn repoint(
        &mut self,
        table: &Arc<RecordTable>,
        t: Option<u8>,
        rows: std::ops::Range<u32>,
        old: &mut Replaced,
    ) {
        for row in rows {
            let f = table.fields(row);
            let Some(s) = self.slots.get_mut(f.slot as usize) else {
                continue;
            };
            // To a row: a row of the older table (unchanged since the older snapshot, so also
            // since this one), or an owned record that holds what the row says.
            let to_row = match (&*s, t) {
                (Slot::Row(r), Some(t)) if r.table != t => Some((Some(r.table), t)),
                (Slot::Owned(r), Some(t)) if r.is_row(&f) => Some((None, t)),
                _ => None,
            };
            match (to_row, s) {
                (Some((from, t)), s) => {
                    if let Some(from) = from {
                        self.rows_in[from as usize] -= 1;
                    }
                    self.rows_in[t as usize] += 1;
                    let r = RowRef {
                        table: t,
                        layer: f.layer,
                        row,
                        layer_since_us: f.layer_since_us,
                    };
                    let was = std::mem::replace(s, Slot::Row(r));
                    if from.is_none() {
                        old.slots.push(was);
                    }
                }
                (None, Slot::Owned(r)) if r.id == f.id => {
                    let body = Body::Table(table.clone(), row);
                    old.bodies.push(std::mem::replace(&mut r.body, body));
                }
                _ => {}
            }
        }
    }

    /// Takes out each record table no slot points into any more, into `old`.
    pub(crate) fn repoint_end(&mut self, old: &mut Replaced) {
        for t in 0..2 {
            if self.rows_in[t] == 0 {
                old.tables.extend(self.tables[t].take());
            }
        }
    }

    /// An existing live record with the same text, layer and project.
    pub(crate) fn find_duplicate(
        &self,
        text: &str,
        hash: u64,
        layer: Layer,
        project: Option<&str>,
        now_us: u64,
    ) -> Option<Id> {
        // The oldest matching live record (lowest slot): the same answer whatever the history
        // of restarts. One past its TTL is on its way out and does not count.
        let key = content_key(hash, layer, project);
        let recent = self
            .by_content
            .get(&key)
            .map_or(&[][..], ContentSlots::slots);
        recent
            .iter()
            .chain(self.keys.content_slots(key))
            .filter_map(|s| self.live(*s).map(|r| (*s, r)))
            .filter(|(_, r)| {
                r.layer == layer && r.body.project() == project && r.body.text() == text
            })
            .filter(|(_, r)| !self.past_ttl(r, now_us))
            .min_by_key(|(s, _)| *s)
            .map(|(_, r)| r.id)
    }

    pub(super) fn content_add(&mut self, key: u64, slot: u32) {
        content_push(&mut self.by_content, key, slot);
    }

    pub(super) fn content_remove(&mut self, key: u64, slot: u32) {
        let gone = match self.by_content.get_mut(&key) {
            Some(ContentSlots::One(s)) => *s == slot,
            Some(ContentSlots::Many(v)) => {
                v.retain(|s| *s != slot);
                v.is_empty()
            }
            None => false,
        };
        if gone {
            self.by_content.remove(&key);
        }
    }

    /// Applies one event. Events at or below `applied_seq` are skipped.
    pub(crate) fn apply(&mut self, env: &Envelope) -> Result<()> {
        if env.seq <= self.applied_seq {
            return Ok(());
        }
        match &env.event {
            Event::Inserted(ins) => self.insert(env.seq, env.ts_us, ins)?,
            Event::Accessed(a) => {
                let sess = a.session.as_deref().map(|s| fnv64(s.as_bytes()));
                let proj = a.project.as_deref().map(|s| fnv64(s.as_bytes()));
                for hit in &a.hits {
                    let Some(slot) = self.slot_of(&hit.id) else {
                        continue;
                    };
                    let stats = self.access.entry(slot).or_default();
                    touch(stats, env.ts_us, a.source, hit.rank, hit.score, sess, proj);
                }
            }
            Event::Rated { id, rating } => {
                if let Some(slot) = self.slot_of(id) {
                    if let Some(r) = self.live_mut(slot) {
                        r.rating = Some(*rating);
                    }
                }
            }
            Event::Promoted(list) => {
                for p in list {
                    let Some(slot) = self.slot_of(&p.id) else {
                        continue;
                    };
                    if p.from == p.to || self.live(slot).is_none_or(|r| r.layer != p.from) {
                        continue;
                    }
                    let Some(r) = self.live_mut(slot) else {
                        continue;
                    };
                    let old = content_key(r.content_hash, r.layer, r.body.project());
                    r.layer = p.to;
                    r.layer_since_us = env.ts_us;
                    let new = content_key(r.content_hash, r.layer, r.body.project());
                    self.attrs[slot as usize] = attrs::pack(p.to, env.ts_us);
                    if let Some(n) =
                        p.to.index()
                            .checked_sub(1)
                            .and_then(|i| self.promoted.get_mut(i))
                    {
                        *n += 1;
                    }
                    self.content_remove(old, slot);
                    self.content_add(new, slot);
                    // One graph holds every layer: the point stays where it is.
                    self.layers[p.from.index()].members.remove(&slot);
                    self.layers[p.to.index()].members.insert(slot);
                }
            }
            Event::Expired { ids, reason } => {
                for id in ids {
                    if self.remove(id) {
                        self.expired[*reason as usize] += 1;
                    }
                }
            }
            Event::Deleted { id } => {
                self.remove(id);
            }
            Event::Superseded { old, .. } => {
                self.remove(old);
            }
            Event::Checkpointed { .. } => {}
        }
        self.applied_seq = env.seq;
        self.last_ts_us = self.last_ts_us.max(env.ts_us);
        Ok(())
    }

    pub(super) fn insert(&mut self, seq: u64, ts_us: u64, ins: &Inserted) -> Result<()> {
        if ins.embedding.len() != self.dim {
            return Err(Error::InvalidInput(format!(
                "event {seq} inserts a {}-dimensional vector into a {}-dimensional store",
                ins.embedding.len(),
                self.dim
            )));
        }
        if self.slot_of(&ins.id).is_some() {
            // An id is inserted once; a repeat is ignored so replay stays deterministic.
            return Ok(());
        }
        let slot = self.vectors.push(&ins.embedding);
        debug_assert_eq!(slot as usize, self.slots.len());
        self.index.tail.push(slot, &ins.embedding);
        self.attrs.push(attrs::pack(ins.layer, ts_us));
        self.slots.push(Slot::Owned(Box::new(RecordData {
            id: ins.id,
            layer: ins.layer,
            body: Body::owned(OwnedBody {
                kind: ins.kind.clone(),
                text: ins.text.clone(),
                tags: ins.tags.clone(),
                project: ins.project.clone(),
                session: ins.session.clone(),
                refs: ins.refs.clone(),
            }),
            content_hash: ins.content_hash,
            ts_us: ins.ts_us,
            inserted_seq: seq,
            layer_since_us: ts_us,
            rating: None,
        })));
        self.by_id.insert(ins.id, slot);
        self.content_add(
            content_key(ins.content_hash, ins.layer, ins.project.as_deref()),
            slot,
        );
        for id in &ins.refs {
            *self.refs_delta.entry(*id).or_default() += 1;
        }
        self.keywords.add(
            slot,
            &ins.text,
            ins.project.as_deref(),
            ins.session.as_deref(),
            ins.ts_us,
        );
        self.layers[ins.layer.index()].members.insert(slot);
        self.index.pending.push_back(slot);
        Ok(())
    }

    /// Removes a live record; false if there was none.
    pub(super) fn remove(&mut self, id: &Id) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        self.by_id.remove(id);
        let Some(r) = self.take(slot) else {
            return false;
        };
        let key = content_key(r.content_hash, r.layer, r.body.project());
        self.content_remove(key, slot);
        self.keywords.remove(slot);
        let layer = r.layer;
        self.forget(slot, layer);
        for target in r.body.refs() {
            let n = self.refs_delta.entry(target).or_default();
            *n -= 1;
            if *n == 0 {
                self.refs_delta.remove(&target);
            }
        }
        true
    }
}

/// Live slots sharing one content key: almost always one, kept inline (a `Vec` per record
/// was a million allocations when opening a million-record store).
#[derive(Debug)]
pub(super) enum ContentSlots {
    One(u32),
    Many(Vec<u32>),
}

impl ContentSlots {
    fn slots(&self) -> &[u32] {
        match self {
            ContentSlots::One(s) => std::slice::from_ref(s),
            ContentSlots::Many(v) => v,
        }
    }
}

pub(super) fn content_push(map: &mut FastMap<u64, ContentSlots>, key: u64, slot: u32) {
    use std::collections::hash_map::Entry;
    match map.entry(key) {
        Entry::Vacant(e) => {
            e.insert(ContentSlots::One(slot));
        }
        Entry::Occupied(mut e) => {
            let v = e.get_mut();
            *v = ContentSlots::Many(match v {
                ContentSlots::One(s) => vec![*s, slot],
                ContentSlots::Many(v) => {
                    v.push(slot);
                    std::mem::take(v)
                }
            });
        }
    }
}

pub(super) fn touch(
    a: &mut Access,
    ts: u64,
    source: AccessSource,
    rank: u16,
    score: f32,
    sess: Option<u64>,
    proj: Option<u64>,
) {
    let s = &mut a.stats;
    let now = ts.max(s.last_access_us);
    let dt = now - s.last_access_us;
    for (v, hl) in s.decayed.iter_mut().zip(DECAY_HALF_LIVES_US) {
        *v = *v * (-(dt as f64) / hl as f64 * std::f64::consts::LN_2).exp() + 1.0;
    }
    s.last_access_us = now;
    s.count += 1;
    if source == AccessSource::SearchHit {
        s.search_hits += 1;
        s.rank_sum += u64::from(rank);
        s.score_sum += f64::from(score);
    }
    if let Some(h) = sess {
        a.sessions.insert(h);
        s.distinct_sessions = a.sessions.len() as u32;
    }
    if let Some(h) = proj {
        a.projects.insert(h);
        s.distinct_projects = a.projects.len() as u32;
    }
}
