//! The projections: per-layer record tables, access statistics, vectors by slot and the
//! per-layer index bookkeeping. `apply` is the only way they change, one event at a time in
//! log order; events at or below `applied_seq` are skipped, so replay is idempotent.
//!
//! Slots are assigned to inserted records in log order and never reused, so a full replay and
//! a snapshot plus delta give every record the same slot (and HNSW dumps stay valid).

use crate::disk::keys::KeyIndex;
use crate::disk::records::{BodyRef, RecordTable};
use crate::disk::vectors::Vectors;
use crate::index::frozen::SearchGraph;
use crate::index::hnsw::HnswBuilder;
use crate::types::Layer;
use crate::util::{fnv64, Bits, FastMap, SlotSet};
use magray_wal::Id;
use std::collections::VecDeque;

use crate::keyword::KeywordIndex;
use std::sync::Arc;

/// Records on each side of a record whose words count in its keyword context
/// (`Config::keyword_window`).
pub(crate) const DEFAULT_KEYWORD_WINDOW: usize = 2;

mod apply;
pub(crate) mod attrs;
mod record;
mod search;
mod tail;

use apply::ContentSlots;
pub(crate) use record::{Access, Rec, RecordData, Replaced, RowRef, Slot};
pub(crate) use search::{Filter, Probe};

/// The HNSW graph of one layer: only the indexer thread inserts (and a checkpoint dumps it
/// under the index lock); searches run on its [`FrozenGraph`] copies.
pub(crate) type Graph = parking_lot::Mutex<HnswBuilder>;

/// Key of the dedup map (and of the engine's in-flight reservations): text hash, layer, project.
pub(crate) fn content_key(content_hash: u64, layer: Layer, project: Option<&str>) -> u64 {
    let mut k = content_hash ^ (layer.index() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if let Some(p) = project {
        k ^= fnv64(p.as_bytes()).rotate_left(17);
    }
    k
}

/// One layer's live records.
#[derive(Default, Debug)]
pub(crate) struct LayerState {
    /// Live slots in this layer.
    pub(crate) members: SlotSet,
}

/// The store's one HNSW index over the records of every layer (a record's layer is an
/// attribute a search filters on, so a promotion moves no point), and its bookkeeping.
#[derive(Default)]
pub(crate) struct IndexState {
    /// Slots waiting to be inserted into the index, oldest first; may hold slots that died
    /// since (skipped). Searched exactly.
    pub(crate) pending: VecDeque<u32>,
    /// Slots present in the HNSW graph (live or not).
    pub(crate) in_index: Bits,
    /// Points in the graph whose record is no longer live (deleted, expired, superseded).
    pub(crate) tombstones: u64,
    /// Points in the graph.
    pub(crate) indexed: u64,
    /// The graph; `None` while a dump loads or before the first insert (then every record is
    /// searched exactly, unless `frozen` is the dump searched in place).
    pub(crate) graph: Option<Arc<Graph>>,
    /// A compact copy of `graph` as of its last freeze, searched instead of it (right after
    /// open, until the dump's copy is made: the dump itself, see `index::dump_graph`).
    pub(crate) frozen: Option<Arc<dyn SearchGraph>>,
    /// Slots inserted into `graph` since `frozen` was taken (searched exactly).
    pub(crate) unfrozen: Vec<u32>,
    /// Int8 codes of the newest slots' vectors, which the exact scan of `pending` and
    /// `unfrozen` scores first ([`tail`]).
    pub(crate) tail: tail::TailCodes,
}

impl IndexState {
    /// Drops the tail codes of slots the graph's frozen copy now holds (below the lowest
    /// slot in `pending` and `unfrozen`). Call after either shrinks.
    pub(crate) fn trim_tail(&mut self) {
        let low = self
            .unfrozen
            .iter()
            .chain(self.pending.iter())
            .min()
            .copied();
        self.tail.trim_below(low);
    }
}

impl std::fmt::Debug for IndexState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexState")
            .field("pending", &self.pending.len())
            .field("indexed", &self.indexed)
            .field("tombstones", &self.tombstones)
            .field("graph", &self.graph.is_some())
            .field("frozen", &self.frozen.as_ref().map(|f| f.len()))
            .field("unfrozen", &self.unfrozen.len())
            .field("tail_codes", &self.tail.len())
            .finish()
    }
}

/// All projections.
#[derive(Debug)]
pub(crate) struct Projections {
    pub(crate) dim: usize,
    pub(crate) applied_seq: u64,
    pub(crate) last_ts_us: u64,
    /// Every slot's record (see [`Slot`]).
    slots: Vec<Slot>,
    /// Per slot, what a search checks for every point it walks ([`attrs`]): the live
    /// record's layer and layer-since time in one word, [`attrs::DEAD`] for none. Eight bytes
    /// beside the slot's sixteen and its record: the walk's check reads nothing else when
    /// the search has no filter.
    attrs: Vec<u64>,
    /// The record tables that `Slot::Row` points into: the one loaded at open, and after a
    /// checkpoint the one it wrote (`Memory::repoint_records` moves the rows to it and then
    /// drops the older).
    tables: [Option<Arc<RecordTable>>; 2],
    /// How many slots point into each of `tables`.
    rows_in: [usize; 2],
    /// Access statistics of the live records accessed at least once (most never are), kept
    /// beside the records so that an access does not turn a row into an owned record.
    access: FastMap<u32, Box<Access>>,
    /// Ids, content keys and reference counts as of the snapshot this state was loaded from,
    /// searched in place (see `disk::keys`). Entries can be stale: every hit is confirmed
    /// against the record. Empty for a state replayed from the log alone.
    keys: Arc<KeyIndex>,
    /// Ids inserted since `keys` was taken.
    by_id: FastMap<Id, u32>,
    /// Content key → slots given it since `keys` was taken (inserts, moves between layers).
    /// Candidates from both are confirmed against the record, and the lowest live slot wins,
    /// so replay order cannot change which record a later identical insert resolves to.
    by_content: FastMap<u64, ContentSlots>,
    /// Change since `keys` in how many live records name an id in their `refs` (a feature
    /// of the promoter).
    refs_delta: FastMap<Id, i64>,
    pub(crate) layers: [LayerState; 3],
    pub(crate) index: IndexState,
    pub(crate) vectors: Vectors,
    /// Lifecycle counters: promotions into Insights and Assets; expiries by reason (TTL,
    /// capacity, manual). Projections of `Promoted` / `Expired` events.
    pub(crate) promoted: [u64; 2],
    pub(crate) expired: [u64; 3],
    /// Time to live per layer in µs (`u64::MAX` = forever). Not a projection: the engine
    /// sets it from the config, and search hides records past it before they expire.
    pub(crate) ttl_us: [u64; 3],
    /// Every live record's words (BM25), kept in log order with the records.
    pub(crate) keywords: KeywordIndex,
}

impl Projections {
    pub(crate) fn new(dim: usize) -> Projections {
        Projections {
            dim,
            applied_seq: 0,
            last_ts_us: 0,
            slots: Vec::new(),
            attrs: Vec::new(),
            tables: [None, None],
            rows_in: [0, 0],
            access: FastMap::default(),
            keys: Arc::default(),
            by_id: FastMap::default(),
            by_content: FastMap::default(),
            refs_delta: FastMap::default(),
            layers: Default::default(),
            index: IndexState::default(),
            vectors: Vectors::new(dim),
            promoted: [0; 2],
            expired: [0; 3],
            ttl_us: [u64::MAX; 3],
            keywords: KeywordIndex::new(DEFAULT_KEYWORD_WINDOW),
        }
    }

    /// Projections loaded from a snapshot: its records by slot (rows of `table`, or owned,
    /// see [`Slot`]), each layer's slots and the key index (`None` for those not read from
    /// the snapshot: they are found here from the records).
    /// The caller sets `applied_seq` and `last_ts_us`.
    pub(crate) fn from_parts(
        dim: usize,
        slots: Vec<Slot>,
        table: Option<Arc<RecordTable>>,
        members: Option<[SlotSet; 3]>,
        keys: Option<KeyIndex>,
        keywords: Option<KeywordIndex>,
        vectors: Vectors,
    ) -> Projections {
        let mut p = Projections::new(dim);
        p.vectors = vectors;
        // Each row of the table is in exactly one slot (rows in slot order, each once).
        p.rows_in[0] = table.as_ref().map_or(0, |t| t.len() as usize);
        p.tables[0] = table;
        p.attrs = slots.iter().map(attrs::of_slot).collect();
        p.slots = slots;
        p.keys = Arc::new(keys.unwrap_or_else(|| {
            index_keys(
                p.records()
                    .map(|(slot, r)| (slot, r.id, r.layer, r.content_hash, r.body)),
            )
        }));
        p.keywords = keywords.unwrap_or_else(|| {
            // A snapshot from before the keyword index (format 7 or older): built once from
            // its records; the next checkpoint writes it.
            let mut ix = KeywordIndex::new(DEFAULT_KEYWORD_WINDOW);
            for (slot, r) in p.records() {
                ix.add(
                    slot,
                    r.body.text(),
                    r.body.project(),
                    r.body.session(),
                    r.ts_us,
                );
            }
            ix
        });
        let members = members.unwrap_or_else(|| {
            let mut members: [SlotSet; 3] = Default::default();
            for (slot, r) in p.records() {
                members[r.layer.index()].insert(slot);
            }
            members
        });
        for (ls, m) in p.layers.iter_mut().zip(members) {
            ls.members = m;
        }
        p
    }

    /// Removes `slot` from `layer`'s live records; a point the graph holds for it becomes a
    /// tombstone.
    pub(crate) fn forget(&mut self, slot: u32, layer: Layer) {
        self.layers[layer.index()].members.remove(&slot);
        if self.index.in_index.get(slot) {
            self.index.tombstones += 1;
        }
    }

    /// Live records, all layers.
    pub(crate) fn live_count(&self) -> usize {
        self.layers.iter().map(|l| l.members.len()).sum()
    }

    /// Every live slot (all layers) in ascending order.
    pub(crate) fn live_slots(&self) -> Vec<u32> {
        self.live_where(|_| true)
    }

    /// The live slots (all layers) that pass `keep`, in ascending order: one sequential
    /// pass over the per-slot words (about a millisecond at 1M).
    fn live_where(&self, keep: impl Fn(u32) -> bool) -> Vec<u32> {
        self.attrs
            .iter()
            .enumerate()
            .filter(|(s, w)| **w != attrs::DEAD && keep(*s as u32))
            .map(|(s, _)| s as u32)
            .collect()
    }

    /// Recomputes the index's `pending` as the live records not in the graph, in slot order.
    pub(crate) fn recompute_pending(&mut self) {
        let pending = self.live_where(|s| !self.index.in_index.get(s)).into();
        self.index.pending = pending;
        self.index.trim_tail();
    }

    /// Marks `slots` (a graph's own slot list) as what is in the index, with its count and
    /// tombstones.
    pub(crate) fn set_index_slots(&mut self, slots: &[u32]) {
        let tombstones = slots
            .iter()
            .filter(|s| self.layer_of(**s).is_none())
            .count() as u64;
        let ix = &mut self.index;
        ix.in_index.clear();
        for s in slots {
            ix.in_index.set(*s);
        }
        ix.indexed = slots.len() as u64;
        ix.tombstones = tombstones;
    }

    /// Slots given out so far (live or not).
    pub(crate) fn nslots(&self) -> u32 {
        self.slots.len() as u32
    }

    pub(crate) fn live(&self, slot: u32) -> Option<Rec<'_>> {
        self.read(slot, self.slots.get(slot as usize)?)
    }

    fn read<'a>(&'a self, slot: u32, s: &'a Slot) -> Option<Rec<'a>> {
        let access = || {
            (!self.access.is_empty())
                .then(|| self.access.get(&slot).map(|a| &**a))
                .flatten()
        };
        match s {
            Slot::Dead => None,
            Slot::Owned(r) => Some(r.as_rec(access())),
            Slot::Row(r) => self
                .row_table(slot, r)
                .map(|t| Rec::of_row(t, r.row, access())),
        }
    }

    /// The table holding `slot`'s row `r`, once the row checked out: a row of a table mapped
    /// unread is checked on its first read (`RecordTable::row_ok`); a bad one reads as no
    /// record, and the damage is the store's (`damage`).
    fn row_table(&self, slot: u32, r: &RowRef) -> Option<&Arc<RecordTable>> {
        let table = self.tables.get(r.table as usize)?.as_ref()?;
        table.row_ok(r.row, r.expect(slot)).then_some(table)
    }

    /// Damage found after open in what a snapshot mapped unread (a vector chunk, the record
    /// table, the key index): every read that needs it fails from then on.
    pub(crate) fn damage(&self) -> Option<crate::error::Error> {
        self.vectors
            .damage()
            .or_else(|| self.tables.iter().flatten().find_map(|t| t.damage()))
            .or_else(|| self.keys.damage())
            .or_else(|| self.keywords.damage())
    }

    /// True while something mapped unread has not been checked in full (the scrub's work).
    pub(crate) fn unchecked(&self) -> bool {
        self.vectors.unchecked()
            || self.tables.iter().flatten().any(|t| t.unchecked())
            || self.keys.unchecked()
    }

    /// The key index, to scrub outside the state lock.
    pub(crate) fn key_index(&self) -> Arc<KeyIndex> {
        self.keys.clone()
    }

    /// Checks the rows that slots `from..` name (at most `n` slots), as their first read
    /// would: the next slot to check, `None` past the last. The scrub calls it in steps, so
    /// writers are not held up for long.
    pub(crate) fn check_rows(&self, from: u32, n: u32) -> Option<u32> {
        let end = from.saturating_add(n).min(self.nslots());
        for slot in from..end {
            if let Some(Slot::Row(r)) = self.slots.get(slot as usize) {
                let table = self.tables.get(r.table as usize).and_then(Option::as_ref);
                if table.is_some_and(|t| !t.row_ok(r.row, r.expect(slot))) {
                    return None;
                }
            }
        }
        (end < self.nslots()).then_some(end)
    }

    /// The record tables, to scrub outside the state lock.
    pub(crate) fn record_tables(&self) -> Vec<Arc<RecordTable>> {
        self.tables.iter().flatten().cloned().collect()
    }

    /// Every live record with its slot, in slot order.
    pub(crate) fn records(&self) -> impl Iterator<Item = (u32, Rec<'_>)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| self.read(slot as u32, s).map(|r| (slot as u32, r)))
    }

    pub(crate) fn get(&self, id: &Id) -> Option<Rec<'_>> {
        self.slot_of(id).and_then(|s| self.live(s))
    }

    /// What must hold between the slots and what they point into, beyond what
    /// [`Projections::live`] shows: each slot's search attributes are its record's layer and
    /// layer-since time, each row's table is loaded, its copied layer and TTL
    /// start are the row's, `rows_in` counts the rows of each table, and every access
    /// statistic is a live record's. The first violation, if any (for `verify` and tests).
    pub(crate) fn broken_invariant(&self) -> Option<String> {
        if self.attrs.len() != self.slots.len() {
            return Some(format!(
                "{} search attributes for {} slots",
                self.attrs.len(),
                self.slots.len()
            ));
        }
        for ((slot, s), a) in self.slots.iter().enumerate().zip(&self.attrs) {
            if *a != attrs::of_slot(s) {
                return Some(format!(
                    "slot {slot}'s search attributes disagree with its record"
                ));
            }
        }
        let mut rows = [0usize; 2];
        for (slot, s) in self.slots.iter().enumerate() {
            let Slot::Row(r) = s else { continue };
            let Some(table) = self.tables.get(r.table as usize).and_then(Option::as_ref) else {
                return Some(format!(
                    "slot {slot} is a row of an unloaded table {}",
                    r.table
                ));
            };
            if !table.row_ok(r.row, r.expect(slot as u32)) {
                continue;
            }
            let f = table.fields(r.row);
            if (f.slot as usize, f.layer, f.layer_since_us) != (slot, r.layer, r.layer_since_us) {
                return Some(format!(
                    "slot {slot} disagrees with row {} of its table",
                    r.row
                ));
            }
            rows[r.table as usize] += 1;
        }
        if rows != self.rows_in {
            return Some(format!(
                "{rows:?} rows in the tables, counted {:?}",
                self.rows_in
            ));
        }
        self.access
            .keys()
            .find(|s| self.live(**s).is_none())
            .map(|s| format!("access statistics for dead slot {s}"))
    }

    /// Live records whose `refs` name `id`.
    pub(crate) fn refs_in(&self, id: &Id) -> u32 {
        let n = i64::from(self.keys.refs_to(id)) + self.refs_delta.get(id).copied().unwrap_or(0);
        u32::try_from(n.max(0)).unwrap_or(u32::MAX)
    }

    /// The slot of the live record `id`.
    pub(crate) fn slot_of(&self, id: &Id) -> Option<u32> {
        let slot = match self.by_id.get(id) {
            Some(s) => *s,
            None => self.keys.slot_of(id)?,
        };
        // Slots are never reused: a live record in the slot an id was given is that record.
        self.live(slot).is_some_and(|r| r.id == *id).then_some(slot)
    }
}

/// The key index of a set of live records: `(slot, id, layer, content hash, body)` each.
pub(crate) fn index_keys<'a>(
    recs: impl Iterator<Item = (u32, Id, Layer, u64, BodyRef<'a>)>,
) -> KeyIndex {
    let (mut ids, mut content, mut refs) = (Vec::new(), Vec::new(), Vec::new());
    for (slot, id, layer, content_hash, body) in recs {
        ids.push((id, slot));
        content.push((content_key(content_hash, layer, body.project()), slot));
        refs.extend(body.refs());
    }
    KeyIndex::build(ids, content, refs)
}

#[cfg(test)]
mod tests;
