//! A record as the projections hold it: owned (inserted or changed since the snapshot) or a
//! row of a mapped record table, and the slot that says which.

use crate::disk::records::{Body, BodyRef, RecordTable, Row, RowFields};
use crate::types::{AccessStats, Layer, Record, RecordId, SearchOptions};
use magray_wal::Id;
use std::collections::HashSet;
use std::sync::Arc;

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
    pub(super) fn as_rec<'a>(&'a self, access: Option<&'a Access>) -> Rec<'a> {
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
    pub(super) fn is_row(&self, f: &RowFields) -> bool {
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
    pub(super) fn of_row(
        table: &'a Arc<RecordTable>,
        row: u32,
        access: Option<&'a Access>,
    ) -> Rec<'a> {
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
const _: () = assert!(std::mem::size_of::<Slot>() == 16);
