//! What a checkpoint copies out of the projections under the state lock, to write without it.

use super::*;

/// A record as snapshot format 2 kept it (read only).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SnapRecord {
    pub(super) slot: u32,
    pub(super) id: [u8; 16],
    pub(super) layer: Layer,
    pub(super) kind: String,
    pub(super) text: String,
    pub(super) tags: Vec<String>,
    pub(super) project: Option<String>,
    pub(super) session: Option<String>,
    pub(super) refs: Vec<[u8; 16]>,
    pub(super) content_hash: u64,
    pub(super) ts_us: u64,
    pub(super) inserted_seq: u64,
    pub(super) layer_since_us: u64,
    pub(super) rating: Option<f32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SnapStat {
    pub(super) slot: u32,
    pub(super) count: u64,
    pub(super) last_access_us: u64,
    pub(super) decayed: [f64; 3],
    pub(super) search_hits: u64,
    pub(super) rank_sum: u64,
    pub(super) score_sum: f64,
    pub(super) sessions: Vec<u64>,
    pub(super) projects: Vec<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(super) struct Records {
    pub(super) records: Vec<SnapRecord>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(super) struct Stats {
    pub(super) stats: Vec<SnapStat>,
    pub(super) promoted: [u64; 2],
    pub(super) expired: [u64; 3],
}

/// Everything a snapshot needs, copied out under the state lock.
pub(crate) struct Capture {
    pub(crate) seq: u64,
    pub(crate) ts_us: u64,
    pub(crate) nslots: u32,
    pub(crate) dim: usize,
    pub(super) records: Vec<Row>,
    pub(super) stats: Vec<SnapStat>,
    pub(super) promoted: [u64; 2],
    pub(super) expired: [u64; 3],
    /// The trained promoter, if any (the default model is not written).
    pub(crate) model: Option<PromoterModel>,
    /// The store's graph, dumped under the index lock (`Writer::dump_graph`).
    pub(crate) graph: Option<Arc<Graph>>,
    pub(super) new_chunk: Option<(u32, Vec<u8>)>,
    pub(super) old_chunks: Vec<String>,
    /// `keywords.bin`, encoded under the state lock.
    pub(super) keywords: Vec<u8>,
}

impl Capture {
    pub(crate) fn take(p: &Projections) -> Capture {
        let mut records = Vec::new();
        let mut stats = Vec::new();
        for (slot, r) in p.records() {
            records.push(r.to_row(slot));
            if let Some(a) = r.access {
                let mut sessions: Vec<u64> = a.sessions.iter().copied().collect();
                let mut projects: Vec<u64> = a.projects.iter().copied().collect();
                sessions.sort_unstable();
                projects.sort_unstable();
                let s = &a.stats;
                stats.push(SnapStat {
                    slot,
                    count: s.count,
                    last_access_us: s.last_access_us,
                    decayed: s.decayed,
                    search_hits: s.search_hits,
                    rank_sum: s.rank_sum,
                    score_sum: s.score_sum,
                    sessions,
                    projects,
                });
            }
        }
        let nslots = p.vectors.len();
        let new_chunk = (nslots > p.vectors.tail_start()).then(|| p.vectors.tail_range(nslots));
        Capture {
            seq: p.applied_seq,
            ts_us: p.last_ts_us,
            nslots,
            dim: p.dim,
            records,
            stats,
            promoted: p.promoted,
            expired: p.expired,
            model: None,
            graph: p.index.graph.clone(),
            new_chunk,
            old_chunks: p.vectors.chunk_names(),
            keywords: keyword::encode(&p.keywords),
        }
    }
}
