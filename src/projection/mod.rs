//! The projections: per-layer record tables, access statistics, vectors by slot and the
//! per-layer index bookkeeping. `apply` is the only way they change, one event at a time in
//! log order; events at or below `applied_seq` are skipped, so replay is idempotent.
//!
//! Slots are assigned to inserted records in log order and never reused, so a full replay and
//! a snapshot plus delta give every record the same slot (and HNSW dumps stay valid).

use crate::disk::keys::KeyIndex;
use crate::disk::records::{Body, BodyRef, OwnedBody, RecordTable, Row, RowFields};
use crate::disk::vectors::Vectors;
use crate::error::{Error, Result};
use crate::index::distance::dot;
use crate::index::frozen::SearchGraph;
use crate::index::hnsw::HnswBuilder;
use crate::types::{AccessStats, Layer, Record, RecordId, SearchOptions, DECAY_HALF_LIVES_US};
use crate::util::{fnv64, part_bounds, scan_threads, Bits, FastMap, SlotSet, TopK};
use magray_wal::{AccessSource, Envelope, Event, Id, Inserted};
use std::collections::{HashSet, VecDeque};

use std::sync::Arc;

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

/// One live record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordData {
    pub(crate) id: Id,
    pub(crate) layer: Layer,
    /// Kind, text, tags, project, session and refs (never change after the insert).
    pub(crate) body: Body,
    pub(crate) content_hash: u64,
    pub(crate) ts_us: u64,
    pub(crate) inserted_seq: u64,
    /// Commit time at which it entered its current layer (insert or promotion): a layer's
    /// TTL counts from here.
    pub(crate) layer_since_us: u64,
    pub(crate) rating: Option<f32>,
}

/// What `Accessed` events left on a record.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Access {
    pub(crate) stats: AccessStats,
    pub(crate) sessions: HashSet<u64>,
    pub(crate) projects: HashSet<u64>,
}

/// The statistics of a record never accessed.
static NOT_ACCESSED: AccessStats = AccessStats {
    count: 0,
    last_access_us: 0,
    decayed: [0.0; 3],
    distinct_sessions: 0,
    distinct_projects: 0,
    search_hits: 0,
    rank_sum: 0,
    score_sum: 0.0,
};

impl RecordData {
    /// A record as a snapshot's record table holds it.
    pub(crate) fn from_row(f: RowFields, body: Body) -> RecordData {
        RecordData {
            id: f.id,
            layer: f.layer,
            body,
            content_hash: f.content_hash,
            ts_us: f.ts_us,
            inserted_seq: f.inserted_seq,
            layer_since_us: f.layer_since_us,
            rating: f.rating,
        }
    }

    /// This record, to read it, with its access statistics if it has any.
    fn as_rec<'a>(&'a self, access: Option<&'a Access>) -> Rec<'a> {
        Rec {
            id: self.id,
            layer: self.layer,
            body: self.body.as_ref(),
            content_hash: self.content_hash,
            ts_us: self.ts_us,
            inserted_seq: self.inserted_seq,
            layer_since_us: self.layer_since_us,
            rating: self.rating,
            access,
        }
    }

    /// Whether it holds exactly what `f` says.
    fn is_row(&self, f: &RowFields) -> bool {
        (self.id, self.layer, self.content_hash, self.ts_us)
            == (f.id, f.layer, f.content_hash, f.ts_us)
            && (self.inserted_seq, self.layer_since_us) == (f.inserted_seq, f.layer_since_us)
            && self.rating.map(f32::to_bits) == f.rating.map(f32::to_bits)
    }
}

/// A live record, read where it is kept: a row of a loaded record table (a record unchanged
/// since that snapshot) or a [`RecordData`]. Copied out of a row on each read: a few fixed
/// fields; the strings stay where they are.
#[derive(Clone, Copy)]
pub(crate) struct Rec<'a> {
    pub(crate) id: Id,
    pub(crate) layer: Layer,
    pub(crate) body: BodyRef<'a>,
    pub(crate) content_hash: u64,
    pub(crate) ts_us: u64,
    pub(crate) inserted_seq: u64,
    pub(crate) layer_since_us: u64,
    pub(crate) rating: Option<f32>,
    pub(crate) access: Option<&'a Access>,
}

impl<'a> Rec<'a> {
    fn of_row(table: &'a Arc<RecordTable>, row: u32, access: Option<&'a Access>) -> Rec<'a> {
        let f = table.fields(row);
        Rec {
            id: f.id,
            layer: f.layer,
            body: BodyRef::Table(table, row),
            content_hash: f.content_hash,
            ts_us: f.ts_us,
            inserted_seq: f.inserted_seq,
            layer_since_us: f.layer_since_us,
            rating: f.rating,
            access,
        }
    }

    pub(crate) fn stats(&self) -> &'a AccessStats {
        self.access.map_or(&NOT_ACCESSED, |a| &a.stats)
    }

    /// The record as owned data (the body is a reference count; not the statistics).
    pub(crate) fn to_data(self) -> RecordData {
        RecordData {
            id: self.id,
            layer: self.layer,
            body: self.body.to_body(),
            content_hash: self.content_hash,
            ts_us: self.ts_us,
            inserted_seq: self.inserted_seq,
            layer_since_us: self.layer_since_us,
            rating: self.rating,
        }
    }

    /// This record as a row of a snapshot's record table.
    pub(crate) fn to_row(self, slot: u32) -> Row {
        Row {
            fields: RowFields {
                slot,
                id: self.id,
                layer: self.layer,
                content_hash: self.content_hash,
                ts_us: self.ts_us,
                inserted_seq: self.inserted_seq,
                layer_since_us: self.layer_since_us,
                rating: self.rating,
            },
            body: self.body.to_body(),
        }
    }

    pub(crate) fn to_record(self) -> Record {
        Record {
            id: RecordId(self.id),
            layer: self.layer,
            kind: self.body.kind().to_owned(),
            text: self.body.text().to_owned(),
            tags: self.body.tags().into_iter().map(String::from).collect(),
            project: self.body.project().map(String::from),
            session: self.body.session().map(String::from),
            refs: self.body.refs().into_iter().map(RecordId).collect(),
            ts_us: self.ts_us,
            inserted_seq: self.inserted_seq,
            layer_since_us: self.layer_since_us,
            rating: self.rating,
            stats: self.stats().clone(),
        }
    }

    /// Whether the record passes the search filters (layer is checked by the caller).
    pub(crate) fn matches(&self, o: &SearchOptions) -> bool {
        if let Some(p) = &o.project {
            if self.body.project() != Some(p.as_str()) {
                return false;
            }
        }
        if let Some(s) = &o.session {
            if self.body.session() != Some(s.as_str()) {
                return false;
            }
        }
        if let Some((lo, hi)) = o.time_range {
            if self.ts_us < lo || self.ts_us > hi {
                return false;
            }
        }
        o.tags.iter().all(|t| self.body.has_tag(t))
    }
}

/// Records, bodies and tables a repoint replaced, dropped once the state lock is released
/// (their frees, and the unmapping of an old table).
#[derive(Default)]
pub(crate) struct Replaced {
    pub(crate) slots: Vec<Slot>,
    pub(crate) bodies: Vec<Body>,
    pub(crate) tables: Vec<Arc<RecordTable>>,
}

/// What a slot holds. 16 bytes: at 1M records, open builds 16 MB of these instead of a
/// 90-byte record each.
#[derive(Debug, Clone, Default)]
pub(crate) enum Slot {
    /// Never filled (replay ahead of it) or its record is gone.
    #[default]
    Dead,
    /// A record unchanged since a snapshot: a row of one of `Projections::tables`.
    Row(RowRef),
    /// A record inserted or changed since.
    Owned(Box<RecordData>),
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16);

/// Row `row` of `Projections::tables[table]`, with the two fields every search reads of each
/// point it keeps (a copy: the row has them too), so that an unfiltered search reads nothing
/// of the mapped table but its results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RowRef {
    pub(crate) table: u8,
    pub(crate) layer: Layer,
    pub(crate) row: u32,
    pub(crate) layer_since_us: u64,
}

impl RowRef {
    /// What the row must hold for the record in `slot`: the slot, layer and layer-since time
    /// (see `RecordTable::row_ok`).
    pub(crate) fn expect(&self, slot: u32) -> (u32, Layer, u64) {
        (slot, self.layer, self.layer_since_us)
    }
}

/// One layer's membership and index bookkeeping.
#[derive(Default)]
pub(crate) struct LayerState {
    /// Live slots in this layer.
    pub(crate) members: SlotSet,
    /// Slots waiting to be inserted into the index, oldest first; may hold slots that died or
    /// moved since (skipped). Searched exactly.
    pub(crate) pending: VecDeque<u32>,
    /// Slots present in the HNSW graph (live or not).
    pub(crate) in_index: Bits,
    /// Points in the graph whose record is no longer live in this layer.
    pub(crate) tombstones: u64,
    /// Points in the graph.
    pub(crate) indexed: u64,
    /// The graph; `None` while a dump loads or before the first insert (then the whole layer
    /// is searched exactly, unless `frozen` is the dump searched in place).
    pub(crate) graph: Option<Arc<Graph>>,
    /// A compact copy of `graph` as of its last freeze, searched instead of it (right after
    /// open, until the dump's copy is made: the dump itself, see `crate::dump_graph`).
    pub(crate) frozen: Option<Arc<dyn SearchGraph>>,
    /// Slots inserted into `graph` since `frozen` was taken (searched exactly).
    pub(crate) unfrozen: Vec<u32>,
}

impl std::fmt::Debug for LayerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerState")
            .field("members", &self.members.len())
            .field("pending", &self.pending.len())
            .field("indexed", &self.indexed)
            .field("tombstones", &self.tombstones)
            .field("graph", &self.graph.is_some())
            .field("frozen", &self.frozen.as_ref().map(|f| f.len()))
            .field("unfrozen", &self.unfrozen.len())
            .finish()
    }
}

impl LayerState {
    fn forget(&mut self, slot: u32) {
        self.members.remove(&slot);
        if self.in_index.get(slot) {
            self.tombstones += 1;
        }
    }

    /// Recomputes `pending` as the live members not in the graph, in slot order.
    pub(crate) fn recompute_pending(&mut self) {
        self.pending = self
            .members
            .iter()
            .filter(|s| !self.in_index.get(*s))
            .collect();
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
    /// searched in place (see `crate::keys`). Entries can be stale: every hit is confirmed
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
    pub(crate) vectors: Vectors,
    /// Lifecycle counters: promotions into Insights and Assets; expiries by reason (TTL,
    /// capacity, manual). Projections of `Promoted` / `Expired` events.
    pub(crate) promoted: [u64; 2],
    pub(crate) expired: [u64; 3],
    /// Time to live per layer in µs (`u64::MAX` = forever). Not a projection: the engine
    /// sets it from the config, and search hides records past it before they expire.
    pub(crate) ttl_us: [u64; 3],
}

impl Projections {
    pub(crate) fn new(dim: usize) -> Projections {
        Projections {
            dim,
            applied_seq: 0,
            last_ts_us: 0,
            slots: Vec::new(),
            tables: [None, None],
            rows_in: [0, 0],
            access: FastMap::default(),
            keys: Arc::default(),
            by_id: FastMap::default(),
            by_content: FastMap::default(),
            refs_delta: FastMap::default(),
            layers: Default::default(),
            vectors: Vectors::new(dim),
            promoted: [0; 2],
            expired: [0; 3],
            ttl_us: [u64::MAX; 3],
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
        vectors: Vectors,
    ) -> Projections {
        let mut p = Projections::new(dim);
        p.vectors = vectors;
        // Each row of the table is in exactly one slot (rows in slot order, each once).
        p.rows_in[0] = table.as_ref().map_or(0, |t| t.len() as usize);
        p.tables[0] = table;
        p.slots = slots;
        p.keys = Arc::new(keys.unwrap_or_else(|| {
            index_keys(
                p.records()
                    .map(|(slot, r)| (slot, r.id, r.layer, r.content_hash, r.body)),
            )
        }));
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
    fn live_mut(&mut self, slot: u32) -> Option<&mut RecordData> {
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
    fn take(&mut self, slot: u32) -> Option<RecordData> {
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
        r
    }

    pub(crate) fn get(&self, id: &Id) -> Option<Rec<'_>> {
        self.slot_of(id).and_then(|s| self.live(s))
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

    /// What must hold between the slots and what they point into, beyond what
    /// [`Projections::live`] shows: each row's table is loaded, its copied layer and TTL
    /// start are the row's, `rows_in` counts the rows of each table, and every access
    /// statistic is a live record's. The first violation, if any (for `verify` and tests).
    pub(crate) fn broken_invariant(&self) -> Option<String> {
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

    /// Whether `r` is past its layer's TTL at `now_us` (hidden from readers until the
    /// lifecycle run expires or promotes it).
    pub(crate) fn past_ttl(&self, r: &Rec<'_>, now_us: u64) -> bool {
        r.layer_since_us
            .saturating_add(self.ttl_us[r.layer.index()])
            <= now_us
    }

    /// Whether the record in `slot` is live, in `layer`, passes the filters of `o` and is
    /// not past its TTL at `now_us`: what a search may return. Called for every point a
    /// search keeps, so a row is read field by field, and in full only for a filter.
    pub(crate) fn visible(&self, slot: u32, layer: Layer, o: &SearchOptions, now_us: u64) -> bool {
        let in_time = |since: u64| since.saturating_add(self.ttl_us[layer.index()]) > now_us;
        match self.slots.get(slot as usize) {
            Some(Slot::Owned(r)) => {
                r.layer == layer && in_time(r.layer_since_us) && r.as_rec(None).matches(o)
            }
            Some(Slot::Row(r)) => {
                debug_assert!(self.tables[r.table as usize].is_some());
                r.layer == layer
                    && in_time(r.layer_since_us)
                    && (!o.filters()
                        || self
                            .row_table(slot, r)
                            .is_some_and(|t| Rec::of_row(t, r.row, None).matches(o)))
            }
            _ => false,
        }
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

    fn content_add(&mut self, key: u64, slot: u32) {
        content_push(&mut self.by_content, key, slot);
    }

    fn content_remove(&mut self, key: u64, slot: u32) {
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
                    if let Some(n) =
                        p.to.index()
                            .checked_sub(1)
                            .and_then(|i| self.promoted.get_mut(i))
                    {
                        *n += 1;
                    }
                    self.content_remove(old, slot);
                    self.content_add(new, slot);
                    self.layers[p.from.index()].forget(slot);
                    let to = &mut self.layers[p.to.index()];
                    to.members.insert(slot);
                    if to.in_index.get(slot) {
                        // Back in a layer whose graph still holds it: no longer a tombstone.
                        to.tombstones = to.tombstones.saturating_sub(1);
                    } else {
                        to.pending.push_back(slot);
                    }
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

    fn insert(&mut self, seq: u64, ts_us: u64, ins: &Inserted) -> Result<()> {
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
        let l = &mut self.layers[ins.layer.index()];
        l.members.insert(slot);
        l.pending.push_back(slot);
        Ok(())
    }

    /// Removes a live record; false if there was none.
    fn remove(&mut self, id: &Id) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        self.by_id.remove(id);
        let Some(r) = self.take(slot) else {
            return false;
        };
        let key = content_key(r.content_hash, r.layer, r.body.project());
        self.content_remove(key, slot);
        self.layers[r.layer.index()].forget(slot);
        for target in r.body.refs() {
            let n = self.refs_delta.entry(target).or_default();
            *n -= 1;
            if *n == 0 {
                self.refs_delta.remove(&target);
            }
        }
        true
    }

    /// Candidates of one layer for a query, into `top`: the frozen HNSW graph (live, in this
    /// layer, matching the options) plus an exact scan of the points it lacks, or an exact
    /// scan of the whole layer when it is small or has no frozen graph yet.
    pub(crate) fn search_layer(
        &self,
        layer: Layer,
        q: &[f32],
        o: &SearchOptions,
        how: Probe,
        top: &mut TopK,
    ) {
        let Probe {
            ef,
            scale_ef,
            exact_below,
            now_us,
        } = how;
        let ls = &self.layers[layer.index()];
        let ok = |slot: u32| self.visible(slot, layer, o, now_us);
        let exact = |slot: u32, top: &mut TopK| {
            if ok(slot) {
                top.push(dot(q, self.vectors.get(slot)), slot);
            }
        };
        let scan_layer = |top: &mut TopK| {
            // In slot order: sequential vector reads.
            scan_split(
                scan_threads(),
                ls.members.len(),
                |i, n| ls.members.iter_part(i, n),
                &exact,
                top,
            );
        };
        if ls.members.len() < exact_below {
            scan_layer(top);
            return;
        }
        if let Some(f) = &ls.frozen {
            let ef = if scale_ef {
                crate::index::hnsw::scale_ef(ef, f.len() as u64)
            } else {
                ef
            };
            let ef = ef.max(o.top_k);
            let found = f.search(q, ef, &self.vectors, &ok, top);
            // Fewer than k matches in the walk: a selective filter, many dead points or a
            // freeze older than most of the layer; scan the layer exactly, never miss a record.
            if found < o.top_k {
                scan_layer(top);
                return;
            }
            scan_split(
                scan_threads(),
                ls.unfrozen.len() + ls.pending.len(),
                |i, n| tail_part(&ls.unfrozen, &ls.pending, i, n),
                &exact,
                top,
            );
            return;
        }
        // No frozen copy yet (a graph between its first insert and its first freeze, a
        // moment): scan the layer exactly.
        scan_layer(top);
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

/// Exact scans at least this long are split across cores: about 10 ms of work each at 384-d,
/// against tens of µs to start a thread.
const SPLIT_SCAN_MIN: usize = 65_536;

/// The `i`-th of `n` near-equal parts of `unfrozen` followed by `pending` (the points a
/// frozen graph lacks).
fn tail_part<'a>(
    unfrozen: &'a [u32],
    pending: &'a VecDeque<u32>,
    i: usize,
    n: usize,
) -> impl Iterator<Item = u32> + 'a {
    let u = unfrozen.len();
    let (a, b) = part_bounds(u + pending.len(), i, n);
    let (pa, pb) = (a.max(u) - u, b.max(u) - u);
    unfrozen[a.min(u)..b.min(u)]
        .iter()
        .chain(pending.range(pa..pb))
        .copied()
}

/// Scores the `len` slots that `part(i, n)` yields in `n` parts exactly into `top`: in this
/// thread alone when there are few, otherwise one part per thread, up to `threads` (an
/// unindexed million-record layer is a 1.5 GB scan). Results do not depend on the split:
/// `TopK` breaks score ties by slot.
fn scan_split<I>(
    threads: usize,
    len: usize,
    part: impl Fn(usize, usize) -> I + Sync,
    exact: &(impl Fn(u32, &mut TopK) + Sync),
    top: &mut TopK,
) where
    I: Iterator<Item = u32>,
{
    let n = threads.min(len / SPLIT_SCAN_MIN).max(1);
    if n == 1 {
        part(0, 1).for_each(|slot| exact(slot, top));
        return;
    }
    let k = top.k;
    let part = &part;
    // Part `i` into a top-k of its own.
    let scan = move |i: usize| {
        let mut t = TopK::new(k);
        part(i, n).for_each(|slot| exact(slot, &mut t));
        t
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..n)
            .map(|i| {
                // A thread that cannot be started leaves its part to this one.
                std::thread::Builder::new()
                    .name("magray-scan".into())
                    .spawn_scoped(scope, move || scan(i))
                    .map_err(|_| i)
            })
            .collect();
        part(0, n).for_each(|slot| exact(slot, top));
        for h in others {
            let t = match h {
                Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
                Err(i) => scan(i),
            };
            for (score, slot) in t.into_sorted() {
                top.push(score, slot);
            }
        }
    });
}

/// Live slots sharing one content key: almost always one, kept inline (a `Vec` per record
/// was a million allocations when opening a million-record store).
#[derive(Debug)]
enum ContentSlots {
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

fn content_push(map: &mut FastMap<u64, ContentSlots>, key: u64, slot: u32) {
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

/// How a layer search runs: HNSW candidate list, the layer size below which it scans
/// exactly, and the time records past their TTL are hidden at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    pub(crate) ef: usize,
    /// Scale `ef` with the size of the layer's graph (`HnswConfig::effective_ef`).
    pub(crate) scale_ef: bool,
    pub(crate) exact_below: usize,
    pub(crate) now_us: u64,
}

fn touch(
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        [n; 16]
    }

    fn at(seq: u64, event: Event) -> Envelope {
        Envelope {
            seq,
            ts_us: 1_000 * seq,
            event,
        }
    }

    fn inserted(n: u8, layer: Layer, text: &str, project: Option<&str>, refs: &[u8]) -> Event {
        Event::Inserted(Inserted {
            id: id(n),
            layer,
            kind: "note".into(),
            text: text.into(),
            embedding: vec![f32::from(n), 1.0],
            tags: Vec::new(),
            project: project.map(String::from),
            session: None,
            refs: refs.iter().map(|r| id(*r)).collect(),
            content_hash: fnv64(text.as_bytes()),
            ts_us: 0,
        })
    }

    fn promoted(n: u8, from: Layer, to: Layer) -> Event {
        Event::Promoted(vec![magray_wal::Promotion {
            id: id(n),
            from,
            to,
            score: 1.0,
            model_version: 0,
        }])
    }

    /// The record table a checkpoint of `p` writes, loaded back as open loads it, and the
    /// slots open gives its rows.
    fn table_of(p: &Projections) -> (tempfile::TempDir, Arc<RecordTable>, Vec<Slot>) {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<Row> = p.records().map(|(s, r)| r.to_row(s)).collect();
        let f = std::fs::File::create(dir.path().join("records.bin")).unwrap();
        let (len, crc, _) = crate::disk::records::write(f, &rows).unwrap();
        let entry = crate::disk::files::FileEntry {
            name: "records.bin".into(),
            len,
            crc,
        };
        let mut slots = vec![Slot::Dead; p.nslots() as usize];
        let table = crate::disk::records::load_each(
            dir.path(),
            &entry,
            p.nslots(),
            |row, slot, layer, layer_since_us| {
                slots[slot as usize] = Slot::Row(RowRef {
                    table: 0,
                    layer,
                    row,
                    layer_since_us,
                });
            },
        )
        .unwrap();
        (dir, table, slots)
    }

    fn rows_in(p: &Projections, t: u8) -> usize {
        let n = p
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Row(r) if r.table == t))
            .count();
        assert_eq!(n, p.rows_in[t as usize], "the count of rows in table {t}");
        n
    }

    /// Lookups through a snapshot's key index plus the changes after it agree with maps
    /// replayed from the start: through deletes, a move between layers and back, supersedes,
    /// an id inserted again after its delete, expiry, and references added and dropped. The
    /// snapshot's records are rows of its table, as open loads them; halfway, a checkpoint's
    /// table takes their place (unchanged records move to its rows, the first is dropped).
    #[test]
    fn key_lookups_after_a_snapshot_match_a_full_replay() {
        use Layer::{Assets, Insights, Interact};
        let before = [
            inserted(1, Interact, "alpha", None, &[]),
            inserted(2, Interact, "beta", Some("p"), &[1]),
            inserted(3, Insights, "gamma", None, &[1, 2]),
            inserted(4, Interact, "alpha", None, &[]),
            inserted(5, Assets, "eps", None, &[]),
            Event::Rated {
                id: id(1),
                rating: 0.5,
            },
        ];
        let after = [
            Event::Deleted { id: id(1) },
            promoted(2, Interact, Insights),
            promoted(2, Insights, Interact),
            promoted(4, Interact, Insights),
            inserted(6, Insights, "phi", None, &[1]),
            Event::Superseded {
                old: id(3),
                new: id(6),
            },
            inserted(1, Interact, "alpha", None, &[2]),
            Event::Expired {
                ids: vec![id(5)],
                reason: magray_wal::ExpiryReason::Ttl,
            },
        ];
        let mut full = Projections::new(2);
        let mut seq = 0;
        for e in &before {
            seq += 1;
            full.apply(&at(seq, e.clone())).unwrap();
        }
        // The snapshot: its records, vectors and key index, as a load builds them.
        let mut vectors = Vectors::new(2);
        for slot in 0..full.vectors.len() {
            vectors.push(full.vectors.get(slot));
        }
        let keys = index_keys(
            full.records()
                .map(|(s, r)| (s, r.id, r.layer, r.content_hash, r.body)),
        );
        let (_d0, table, slots) = table_of(&full);
        let mut snap = Projections::from_parts(2, slots, Some(table), None, Some(keys), vectors);
        (snap.applied_seq, snap.last_ts_us) = (seq, full.last_ts_us);
        assert_eq!(crate::verify::differ(&snap, &full), None, "as loaded");
        assert_eq!(rows_in(&snap, 0), 5);
        let accessed = Event::Accessed(magray_wal::Accessed {
            source: AccessSource::Get,
            session: None,
            project: None,
            hits: vec![magray_wal::Hit {
                id: id(4),
                rank: 0,
                score: 1.0,
            }],
        });
        let mut tables = Vec::new();
        for (i, e) in std::iter::once(&accessed).chain(&after).enumerate() {
            seq += 1;
            full.apply(&at(seq, e.clone())).unwrap();
            snap.apply(&at(seq, e.clone())).unwrap();
            assert_eq!(crate::verify::differ(&snap, &full), None, "after {e:?}");
            if i == 4 {
                // A checkpoint. At its capture 3 and 5 are rows of the first table, 2 and 4
                // are owned (both moved between layers; 4 has statistics), 1 is gone and 6
                // is not inserted yet; then, before the repoint, 2 is rated.
                let (d1, t1, _) = table_of(&snap);
                seq += 1;
                let rated = Event::Rated {
                    id: id(2),
                    rating: 0.25,
                };
                full.apply(&at(seq, rated.clone())).unwrap();
                snap.apply(&at(seq, rated)).unwrap();
                let mut old = Replaced::default();
                let t = snap.repoint_begin(&t1, &mut old);
                assert_eq!(t, Some(1));
                snap.repoint(&t1, t, 0..t1.len(), &mut old);
                assert_eq!(old.slots.len(), 1, "owned records that became rows");
                assert_eq!(old.bodies.len(), 1, "owned records given the row's body");
                snap.repoint_end(&mut old);
                assert_eq!((old.tables.len(), rows_in(&snap, 0)), (1, 0));
                assert_eq!(rows_in(&snap, 1), 3);
                assert!(snap.tables[0].is_none() && snap.tables[1].is_some());
                let (s2, s4) = (snap.slot_of(&id(2)).unwrap(), snap.slot_of(&id(4)).unwrap());
                assert!(matches!(&snap.slots[s2 as usize], Slot::Owned(r)
                    if matches!(r.body, Body::Table(_, _)) && r.rating == Some(0.25)));
                // Its statistics do not keep a record from being a row.
                assert!(matches!(&snap.slots[s4 as usize], Slot::Row(r) if r.table == 1));
                assert!(snap.live(s4).is_some_and(|r| r.stats().count == 1));
                assert_eq!(
                    crate::verify::differ(&snap, &full),
                    None,
                    "after the repoint"
                );
                tables.push((d1, t1));
            }
        }
        for p in [&snap, &full] {
            // The first "alpha" died; the other one moved to Insights; the id came back.
            assert_eq!(p.slot_of(&id(1)), Some(6));
            assert_eq!(
                p.find_duplicate("alpha", fnv64(b"alpha"), Interact, None, 0),
                Some(id(1))
            );
            assert_eq!(
                p.find_duplicate("alpha", fnv64(b"alpha"), Insights, None, 0),
                Some(id(4))
            );
            assert_eq!(
                p.find_duplicate("beta", fnv64(b"beta"), Interact, Some("p"), 0),
                Some(id(2))
            );
            assert_eq!(
                p.find_duplicate("beta", fnv64(b"beta"), Insights, Some("p"), 0),
                None
            );
            assert_eq!((p.slot_of(&id(3)), p.slot_of(&id(5))), (None, None));
            // References to 1: from 2 and 6 (3 is gone); to 2: from the new 1 only.
            assert_eq!((p.refs_in(&id(1)), p.refs_in(&id(2))), (2, 1));
        }
        // An access only one of them saw is a difference, on a row (4) as on an owned
        // record (the new 1).
        let hit = |n: u8| {
            Event::Accessed(magray_wal::Accessed {
                source: AccessSource::Get,
                session: None,
                project: None,
                hits: vec![magray_wal::Hit {
                    id: id(n),
                    rank: 0,
                    score: 1.0,
                }],
            })
        };
        assert!(matches!(
            &snap.slots[snap.slot_of(&id(4)).unwrap() as usize],
            Slot::Row(_)
        ));
        snap.apply(&at(seq + 1, hit(4))).unwrap();
        assert!(crate::verify::differ(&snap, &full).is_some());
        full.apply(&at(seq + 1, hit(4))).unwrap();
        assert_eq!(crate::verify::differ(&snap, &full), None);
        snap.apply(&at(seq + 2, hit(1))).unwrap();
        full.apply(&at(seq + 2, hit(2))).unwrap();
        assert!(crate::verify::differ(&snap, &full).is_some());
    }

    #[test]
    fn a_split_scan_finds_what_one_thread_finds() {
        let mut members = SlotSet::default();
        // Gaps, a dense run, and ties (many equal scores: the lower slot must win).
        for s in (0..300_000u32).filter(|s| s % 7 != 3) {
            members.insert(s);
        }
        let score = |slot: u32| ((slot.wrapping_mul(2_654_435_761) >> 8) % 5_000) as f32;
        let exact = |slot: u32, top: &mut TopK| {
            if !slot.is_multiple_of(11) {
                top.push(score(slot), slot);
            }
        };
        // Slots in a narrow range of a large bitset still split evenly.
        let mut narrow = SlotSet::default();
        for s in 1_000_000..1_100_000u32 {
            narrow.insert(s);
        }
        let sizes: Vec<usize> = (0..4).map(|i| narrow.iter_part(i, 4).count()).collect();
        assert!(
            sizes.iter().all(|c| (24_900..=25_100).contains(c)),
            "{sizes:?}"
        );
        // The points a frozen graph lacks, in parts that cross from one list to the other.
        let unfrozen: Vec<u32> = (0..1_000).collect();
        let pending: VecDeque<u32> = (5_000..5_007).collect();
        for n in [1, 2, 3, 4, 7, 1_007, 2_000] {
            let parts: Vec<u32> = (0..n)
                .flat_map(|i| tail_part(&unfrozen, &pending, i, n))
                .collect();
            let all: Vec<u32> = unfrozen.iter().chain(&pending).copied().collect();
            assert_eq!(parts, all, "{n} parts");
        }
        let mut one = TopK::new(100);
        members.iter().for_each(|s| exact(s, &mut one));
        let one = one.into_sorted();
        for threads in [2, 3, 8] {
            for n in [1, 2, 3, 5] {
                let parts: Vec<u32> = (0..n).flat_map(|i| members.iter_part(i, n)).collect();
                assert_eq!(parts, members.iter().collect::<Vec<_>>(), "{n} parts");
            }
            let mut split = TopK::new(100);
            split.push(4_999.5, 1); // already in `top` from another layer
            scan_split(
                threads,
                members.len(),
                |i, n| members.iter_part(i, n),
                &exact,
                &mut split,
            );
            let mut want = TopK::new(100);
            want.push(4_999.5, 1);
            one.iter().for_each(|(sc, s)| want.push(*sc, *s));
            assert_eq!(split.into_sorted(), want.into_sorted(), "{threads} threads");
        }
    }
}
