//! Memory lifecycle: which records move up a layer, and which expire.
//!
//! * [`Signals`]: what the engine knows about a record at a time `t` — access statistics,
//!   rating, references, its semantic neighbourhood — computed by one function for the live
//!   engine and for training replays, so a model is trained on exactly what it is served.
//! * [`PromoterModel`]: a logistic regression over [`FEATURES`], trained from the log itself
//!   (replay history, take signals at sample times, label = accessed again within a horizon).
//! * [`Promoter`]: the learned model or one of the published baselines ([`baselines`]:
//!   MemoryOS heat per record and per segment, Generative Agents, access count), or the
//!   caller's own scorer.
//!
//! Decisions are events (`Promoted`, `Expired`): replay applies them and never re-decides.

pub mod baselines;
mod model;
pub(crate) mod offline;

pub use model::{PromoterModel, TrainError, FEATURES};
pub use offline::{EvalConfig, EvalReport, EvalRow, EvalTarget};

use crate::projection::{Probe, Projections};
use crate::types::{Layer, SearchOptions};
pub(crate) use crate::util::us;
use crate::util::TopK;
use std::sync::Arc;

/// Cosine similarity at or above which another record counts in a record's semantic cluster.
pub const CLUSTER_RADIUS: f32 = 0.8;
/// Largest cluster size counted (the neighbour search asks for this many).
pub const CLUSTER_CAP: usize = 16;

/// What the engine knows about one record at one time: the promoters' input.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    /// Its layer.
    pub layer: Layer,
    /// Times accessed.
    pub count: u64,
    /// Access counts decayed to now, half-lives 1 h, 24 h, 7 d.
    pub decayed: [f64; 3],
    /// Hours since the last access; `None` if never accessed.
    pub hours_since_access: Option<f64>,
    /// Hours since the record's own timestamp.
    pub age_hours: f64,
    /// Hours since it entered its layer.
    pub hours_in_layer: f64,
    /// Distinct sessions that accessed it.
    pub sessions: u32,
    /// Distinct projects that accessed it.
    pub projects: u32,
    /// Mean rank (0 = top) over search hits, if any.
    pub mean_rank: Option<f64>,
    /// Mean similarity score over search hits, if any.
    pub mean_score: Option<f64>,
    /// The user's rating, if rated.
    pub rating: Option<f32>,
    /// Length of the text in characters.
    pub text_chars: usize,
    /// Live records whose `refs` name it.
    pub refs_in: u32,
    /// Records of its layer within cosine [`CLUSTER_RADIUS`] (at most [`CLUSTER_CAP`]).
    pub cluster: u32,
    /// Distinct sessions that stored it and those neighbours: a subject that keeps coming
    /// up across sessions, against one worked on once.
    pub cluster_sessions: u32,
    /// Mean cosine to its nearest [`CLUSTER_CAP`] records in its layer (how central it is
    /// to its subject: central records are the ones later queries land on).
    pub centrality: f32,
    /// Access heat of the neighbourhood: the neighbours' access counts decayed to now
    /// (half-life 24 h), summed. A live subject is warm even where this record is not.
    pub cluster_heat: f64,
    /// Highest cosine to a record in the next layer up (0 when empty or none).
    pub redundancy: f32,
    /// The record's kind.
    pub kind: String,
    /// The session that stored it (MemoryOS groups a session's records into a segment).
    pub session: Option<String>,
}

/// Signals of an Interact `message` 10 hours old, never read: the base of test fixtures.
#[cfg(test)]
pub(crate) fn quiet_signals() -> Signals {
    Signals {
        layer: Layer::Interact,
        count: 0,
        decayed: [0.0; 3],
        hours_since_access: None,
        age_hours: 10.0,
        hours_in_layer: 10.0,
        sessions: 0,
        projects: 0,
        mean_rank: None,
        mean_score: None,
        rating: None,
        text_chars: 40,
        refs_in: 0,
        cluster: 0,
        cluster_sessions: 1,
        centrality: 0.0,
        cluster_heat: 0.0,
        redundancy: 0.0,
        kind: "message".into(),
        session: None,
    }
}

/// Computes a record's signals at `now_us` from the projections. With `neighbours` (HNSW
/// candidate list, exact-scan size), the neighbourhood signals are computed too: through the
/// layer's index when it has one (the live engine), by an exact scan when it does not
/// (training replays). Without, they are zero (the baselines do not read them).
pub(crate) fn signals(
    p: &Projections,
    slot: u32,
    now_us: u64,
    neighbours: Option<(usize, usize)>,
) -> Option<Signals> {
    let r = p.live(slot)?;
    let s = r.stats();
    let hours = |us: u64| now_us.saturating_sub(us) as f64 / 3.6e9;
    let mut sig = Signals {
        layer: r.layer,
        count: s.count,
        decayed: s.decayed_at(now_us),
        hours_since_access: (s.count > 0).then(|| hours(s.last_access_us)),
        age_hours: hours(r.ts_us),
        hours_in_layer: hours(r.layer_since_us),
        sessions: s.distinct_sessions,
        projects: s.distinct_projects,
        mean_rank: (s.search_hits > 0).then(|| s.rank_sum as f64 / s.search_hits as f64),
        mean_score: (s.search_hits > 0).then(|| s.score_sum / s.search_hits as f64),
        rating: r.rating,
        text_chars: r.body.text().chars().count(),
        refs_in: p.refs_in(&r.id),
        cluster: 0,
        cluster_sessions: u32::from(r.body.session().is_some()),
        centrality: 0.0,
        cluster_heat: 0.0,
        redundancy: 0.0,
        kind: r.body.kind().to_owned(),
        session: r.body.session().map(str::to_owned),
    };
    let Some((ef, exact_below)) = neighbours else {
        return Some(sig);
    };
    let q = p.vectors.get(slot);
    let o = SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(CLUSTER_CAP + 1)
    };
    let how = Probe {
        ef,
        scale_ef: true,
        exact_below,
        now_us,
    };
    let mut top = TopK::new(CLUSTER_CAP + 1);
    p.search_layers(&[r.layer], q, &o, how, &mut top);
    let nearest: Vec<(f32, u32)> = top
        .into_sorted()
        .into_iter()
        .filter(|(_, s)| *s != slot)
        .take(CLUSTER_CAP)
        .collect();
    let centrality = if nearest.is_empty() {
        0.0
    } else {
        nearest.iter().map(|(score, _)| *score).sum::<f32>() / nearest.len() as f32
    };
    let neighbours: Vec<crate::projection::Rec<'_>> = nearest
        .into_iter()
        .filter(|(score, s)| *s != slot && *score >= CLUSTER_RADIUS)
        .take(CLUSTER_CAP)
        .filter_map(|(_, s)| p.live(s))
        .collect();
    let cluster = neighbours.len() as u32;
    let mut sessions: Vec<&str> = neighbours
        .iter()
        .chain(std::iter::once(&r))
        .filter_map(|n| n.body.session())
        .collect();
    sessions.sort_unstable();
    sessions.dedup();
    let cluster_heat = neighbours
        .iter()
        .map(|n| n.stats().decayed_at(now_us)[1])
        .sum();
    let redundancy = match r.layer.next() {
        Some(next) if !p.layers[next.index()].members.is_empty() => {
            let mut top = TopK::new(1);
            let o = SearchOptions {
                record_access: false,
                ..SearchOptions::top_k(1)
            };
            p.search_layers(&[next], q, &o, how, &mut top);
            top.into_sorted()
                .first()
                .map(|(score, _)| score.max(0.0))
                .unwrap_or(0.0)
        }
        _ => 0.0,
    };
    sig.cluster = cluster;
    sig.cluster_sessions = sessions.len() as u32;
    sig.centrality = centrality;
    sig.cluster_heat = cluster_heat;
    sig.redundancy = redundancy;
    Some(sig)
}

/// A scorer of records: higher = more worth keeping and promoting.
pub type CustomScorer = Arc<dyn Fn(&Signals) -> f64 + Send + Sync>;

/// Which promoter scores records. Thresholds are per promoter (see
/// [`Promoter::default_thresholds`]) unless `LifecycleConfig::thresholds` overrides them.
#[derive(Clone, Default)]
pub enum Promoter {
    /// The learned model ([`PromoterModel`]): the built-in default until enough history
    /// exists, then one trained from the log. Scores are probabilities of being accessed
    /// again within the horizon.
    #[default]
    Learned,
    /// MemoryOS heat per record ([`baselines::memoryos_heat`]): `H = N_visit + L_interaction +
    /// exp(-Δh/24)`, promote at `H ≥ 5`, with `N_visit` the access count, `L_interaction` the
    /// distinct sessions that used the record and `Δh` hours since the last access.
    MemoryOs,
    /// MemoryOS heat as the paper computes it, per segment ([`baselines::memoryos_segments`]):
    /// the records of one session share their segment's visits, pages and recency.
    MemoryOsSegment,
    /// Generative Agents retrieval score ([`baselines::generative_agents`]):
    /// `0.5·recency + 3·relevance + 2·importance`, each min-max normalised across the
    /// candidates, with recency `0.995^hours since last access`, relevance the mean
    /// similarity when retrieved and importance the user's rating (0 unrated).
    GenerativeAgents,
    /// Pure access count.
    AccessCount,
    /// The caller's own scorer (name, function); thresholds default to 0.5 / 0.8.
    Custom(&'static str, CustomScorer),
}

impl std::fmt::Debug for Promoter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Promoter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "learned" => Ok(Promoter::Learned),
            "memoryos" => Ok(Promoter::MemoryOs),
            "memoryos-segment" => Ok(Promoter::MemoryOsSegment),
            "generative-agents" => Ok(Promoter::GenerativeAgents),
            "access-count" => Ok(Promoter::AccessCount),
            other => Err(format!(
                "unknown promoter {other:?}; expected learned, memoryos, memoryos-segment, generative-agents or access-count"
            )),
        }
    }
}

impl Promoter {
    /// Name used in reports and `MEMORY_PROMOTER`.
    pub fn name(&self) -> &'static str {
        match self {
            Promoter::Learned => "learned",
            Promoter::MemoryOs => "memoryos",
            Promoter::MemoryOsSegment => "memoryos-segment",
            Promoter::GenerativeAgents => "generative-agents",
            Promoter::AccessCount => "access-count",
            Promoter::Custom(name, _) => name,
        }
    }

    /// Thresholds for Interact → Insights and Insights → Assets.
    pub fn default_thresholds(&self) -> [f64; 2] {
        match self {
            Promoter::Learned | Promoter::Custom(..) => [0.5, 0.8],
            // MemoryOS promotes at heat 5; it has one tier, so both steps use it.
            Promoter::MemoryOs | Promoter::MemoryOsSegment => [5.0, 5.0],
            // 0.5 + 3 + 2 at most: the most recent, relevant and highly rated candidate.
            Promoter::GenerativeAgents => [3.0, 4.0],
            Promoter::AccessCount => [5.0, 20.0],
        }
    }

    /// Whether the scorer reads the neighbourhood signals (they cost two searches per
    /// record; the baselines skip them).
    pub fn needs_neighbours(&self) -> bool {
        matches!(self, Promoter::Learned | Promoter::Custom(..))
    }

    /// Scores a set of candidates (one layer in a lifecycle run, one sample point in an
    /// evaluation), one score per candidate in order: some baselines normalise or group
    /// across the set. `model` is used by [`Promoter::Learned`].
    pub fn score_set(&self, model: &PromoterModel, set: &[Signals]) -> Vec<f64> {
        match self {
            Promoter::Learned => set.iter().map(|s| model.score(s)).collect(),
            Promoter::MemoryOs => set.iter().map(baselines::memoryos_heat).collect(),
            Promoter::MemoryOsSegment => baselines::memoryos_segments(set),
            Promoter::GenerativeAgents => baselines::generative_agents(set),
            Promoter::AccessCount => set.iter().map(|s| s.count as f64).collect(),
            Promoter::Custom(_, f) => set.iter().map(|s| f(s)).collect(),
        }
    }
}

/// What one lifecycle run (promotion and/or expiry) decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LifecycleReport {
    /// Clock time of the run (µs).
    pub at_us: u64,
    /// Promoter that scored.
    pub promoter: &'static str,
    /// Its model version (learned promoter; 0 = the built-in default).
    pub model_version: u32,
    /// Records scored.
    pub scored: u64,
    /// Promotions: Interact → Insights, Insights → Assets.
    pub promoted: [u64; 2],
    /// Of those, records past their TTL that were promoted instead of expiring.
    pub saved_from_expiry: u64,
    /// Records expired for their layer's TTL.
    pub expired_ttl: u64,
    /// Records evicted to keep a layer under its capacity (lowest scores first).
    pub expired_capacity: u64,
    /// Sequence of the log entry that holds the decisions (0 when nothing changed).
    pub seq: u64,
}

/// What a training run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainReport {
    /// Events replayed.
    pub events: u64,
    /// Labelled samples (record, time) used.
    pub samples: u64,
    /// Of those, accessed again within the horizon.
    pub positives: u64,
    /// The model now in use (unchanged when not trained).
    pub model_version: u32,
    /// Why no new model was made, if none was.
    pub skipped: Option<String>,
    /// Wall time of the run (ms).
    pub took_ms: u64,
}
