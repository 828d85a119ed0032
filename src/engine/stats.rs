//! What `Memory::stats` reports.

use super::*;
use crate::types::{IndexStats, LayerStats, OpenReport};

/// A snapshot of the engine's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Last durable sequence in the log.
    pub last_seq: u64,
    /// Last sequence applied to the projections.
    pub applied_seq: u64,
    /// Interact, Insights, Assets.
    pub layers: [LayerStats; 3],
    /// The HNSW index over every layer.
    pub index: IndexStats,
    /// Sequence of the newest snapshot on disk, if any.
    pub last_snapshot_seq: Option<u64>,
    /// Events applied since the newest snapshot.
    pub events_since_snapshot: u64,
    /// Search hits waiting to be written as `Accessed` events.
    pub pending_accesses: u64,
    /// HNSW dumps of the snapshot opened that the indexer has still to load in full, 0 or 1
    /// (searches walk it in place or scan exactly meanwhile: see `IndexStats::ready`).
    pub graphs_loading: u64,
    /// Damage found in the snapshot's vector chunks, record table or key index since open (by
    /// a read or the background scrub): the file, offset and reason. (Damage in a graph dump
    /// is not: searches scan exactly and the graph is rebuilt, see
    /// `OpenReport::index_rebuilds`.) Searches, `get`, `records`, writes
    /// and checkpoints fail with it until the store is reopened; the next open checks every
    /// snapshot file in full, skips a damaged snapshot and replays the log instead (see
    /// `OpenReport::full_check`).
    pub damage: Option<String>,
    /// Vector dimension.
    pub dimension: usize,
    /// What happened at open.
    pub open: OpenReport,
    /// The embedder's counters, when the store was opened with one.
    pub embedder: Option<crate::embed::EmbedderStats>,
    /// Promotions ever applied: into Insights, into Assets.
    pub promoted: [u64; 2],
    /// Records ever expired, by reason: TTL, capacity, manual.
    pub expired: [u64; 3],
    /// Version of the promoter model in use (0 = the built-in default).
    pub promoter_version: u32,
    /// The last lifecycle run (background or on demand), if any since open.
    pub last_lifecycle: Option<crate::lifecycle::LifecycleReport>,
}

impl Memory {
    /// Figures for `status` and monitoring.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        // Not `snap`: a checkpoint holds it for its whole run.
        let (last_snapshot_seq, covered_seq) = *inner.snap_info.lock();
        let st = inner.state.read();
        let mut layers: [LayerStats; 3] = Default::default();
        for (i, ls) in st.layers.iter().enumerate() {
            layers[i] = LayerStats {
                records: ls.members.len() as u64,
            };
        }
        let ix = &st.index;
        let index = IndexStats {
            indexed: ix.indexed,
            // Without a frozen graph (a dump loading, a new graph not yet frozen) every record
            // is searched exactly: all of them are pending.
            pending: if ix.frozen.is_some() {
                ix.pending
                    .iter()
                    .filter(|s| st.layer_of(**s).is_some())
                    .count() as u64
            } else {
                st.live_count() as u64
            },
            tombstones: ix.tombstones,
            ready: ix.frozen.is_some(),
        };
        Stats {
            last_seq: inner
                .log
                .read()
                .as_ref()
                .map(|l| l.last_seq())
                .unwrap_or(st.applied_seq),
            applied_seq: st.applied_seq,
            layers,
            index,
            last_snapshot_seq,
            events_since_snapshot: st.applied_seq.saturating_sub(covered_seq),
            pending_accesses: inner.access_hits.load(Ordering::Relaxed),
            graphs_loading: inner.graphs_loading.load(Ordering::Acquire),
            damage: st.damage().map(|e| e.to_string()),
            dimension: st.dim,
            open: inner.report.lock().clone(),
            embedder: self.embedder.as_ref().map(|b| b.embedder().stats()),
            promoted: st.promoted,
            expired: st.expired,
            promoter_version: inner.model.read().version,
            last_lifecycle: inner.last_lifecycle.lock().clone(),
        }
    }
}
