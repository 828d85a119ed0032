//! Public value types: ids, records, search options and results, statistics.

use crate::error::Error;
pub use crate::id::RecordId;
pub use magray_wal::Layer;

/// Parses a layer name (`interact`, `insights`, `assets`; any case).
pub fn parse_layer(s: &str) -> Result<Layer, Error> {
    s.parse::<Layer>().map_err(Error::UnknownLayer)
}

/// A record to insert. Build it with [`NewRecord::new`] and the chained setters.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRecord {
    /// The text (non-empty, at most `Config::max_text_bytes`).
    pub text: String,
    /// Its embedding: `Config::dimension` finite components, not all zero. The engine stores
    /// it L2-normalised (scores are cosine similarities).
    pub embedding: Vec<f32>,
    /// Layer. Default [`Layer::Interact`].
    pub layer: Layer,
    /// Free-form kind. Default `"note"`.
    pub kind: String,
    /// Tags (search can require them).
    pub tags: Vec<String>,
    /// Project, if any.
    pub project: Option<String>,
    /// Session, if any.
    pub session: Option<String>,
    /// Records this one refers to.
    pub refs: Vec<RecordId>,
    /// The record's own time (µs since the Unix epoch); default: the commit time.
    pub ts_us: Option<u64>,
    /// Its id, for imports that must keep ids (an id already live makes the insert a no-op
    /// returning it); default: a new time-ordered id.
    pub id: Option<RecordId>,
}

impl NewRecord {
    /// A note in the Interact layer whose embedding the store's embedder computes
    /// ([`Memory::open_with_embedder`](crate::Memory::open_with_embedder), then
    /// [`Memory::store`](crate::Memory::store)).
    pub fn text(text: impl Into<String>) -> NewRecord {
        NewRecord::new(text, Vec::new())
    }

    /// A note in the Interact layer.
    pub fn new(text: impl Into<String>, embedding: Vec<f32>) -> NewRecord {
        NewRecord {
            text: text.into(),
            embedding,
            layer: Layer::Interact,
            kind: "note".into(),
            tags: Vec::new(),
            project: None,
            session: None,
            refs: Vec::new(),
            ts_us: None,
            id: None,
        }
    }

    /// Keeps this id (imports): inserting an id that is already live writes nothing.
    pub fn with_id(mut self, id: RecordId) -> Self {
        self.id = Some(id);
        self
    }
    /// Sets the layer.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layer = layer;
        self
    }
    /// Sets the kind.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = kind.into();
        self
    }
    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
    /// Sets the project.
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }
    /// Sets the session.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }
    /// Adds a reference.
    pub fn refers_to(mut self, id: RecordId) -> Self {
        self.refs.push(id);
        self
    }
    /// Sets the record's own timestamp.
    pub fn at_us(mut self, ts_us: u64) -> Self {
        self.ts_us = Some(ts_us);
        self
    }
}

/// Access statistics of one record (a projection of `Accessed` events).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccessStats {
    /// Times accessed (search hits, gets, explicit uses).
    pub count: u64,
    /// Commit time of the last access (µs), 0 if never.
    pub last_access_us: u64,
    /// Exponentially decayed access counts at half-lives of 1 h, 24 h and 7 d, as of
    /// `last_access_us` (use [`AccessStats::decayed_at`] for another time).
    pub decayed: [f64; 3],
    /// Distinct sessions that accessed it.
    pub distinct_sessions: u32,
    /// Distinct projects that accessed it.
    pub distinct_projects: u32,
    /// Times returned by a search.
    pub search_hits: u64,
    /// Sum of ranks over search hits (0 = top), for the mean rank.
    pub rank_sum: u64,
    /// Sum of scores over search hits, for the mean score.
    pub score_sum: f64,
}

/// Half-lives of [`AccessStats::decayed`], in microseconds.
pub const DECAY_HALF_LIVES_US: [u64; 3] = [3_600_000_000, 86_400_000_000, 604_800_000_000];

impl AccessStats {
    /// The decayed counts as of `now_us`.
    pub fn decayed_at(&self, now_us: u64) -> [f64; 3] {
        let dt = now_us.saturating_sub(self.last_access_us) as f64;
        let mut out = self.decayed;
        for (v, hl) in out.iter_mut().zip(DECAY_HALF_LIVES_US) {
            *v *= (-dt / hl as f64 * std::f64::consts::LN_2).exp();
        }
        out
    }
}

/// A stored record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Id.
    pub id: RecordId,
    /// Current layer.
    pub layer: Layer,
    /// Kind.
    pub kind: String,
    /// Text.
    pub text: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Project.
    pub project: Option<String>,
    /// Session.
    pub session: Option<String>,
    /// References.
    pub refs: Vec<RecordId>,
    /// The record's own time (µs since the Unix epoch).
    pub ts_us: u64,
    /// Sequence of the event that inserted it.
    pub inserted_seq: u64,
    /// When it entered its current layer (µs, commit time of its insert or promotion); the
    /// layer's TTL counts from here.
    pub layer_since_us: u64,
    /// Latest user rating, if any.
    pub rating: Option<f32>,
    /// Access statistics.
    pub stats: AccessStats,
}

/// What a search looks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOptions {
    /// Layers to search; empty = all.
    pub layers: Vec<Layer>,
    /// How many results (1..=100). Default 10.
    pub top_k: usize,
    /// Drop results below this cosine similarity (the BM25 score in [`SearchMode::Keyword`]).
    pub score_threshold: Option<f32>,
    /// Every one of these tags must be on the record.
    pub tags: Vec<String>,
    /// Only this project.
    pub project: Option<String>,
    /// Only this session.
    pub session: Option<String>,
    /// Only records whose `ts_us` lies in this inclusive range.
    pub time_range: Option<(u64, u64)>,
    /// Record the hits as `Accessed` events (batched). Default true.
    pub record_access: bool,
    /// HNSW candidate list for this query (1..=4096), used as given; default
    /// `Config::hnsw.ef_search`, scaled with the graph's size ([`crate::HnswConfig::effective_ef`]).
    pub ef_search: Option<usize>,
    /// Who is asking: the caller's session and project, written with the access (the
    /// promoter counts distinct sessions and projects that used a record). Not a filter.
    /// When unset, the `session` / `project` filters are recorded instead.
    pub caller: Option<(Option<String>, Option<String>)>,
    /// By meaning, by words, or both (the default); see [`SearchMode`].
    pub mode: SearchMode,
}

/// How a search finds records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// By meaning: the cosine similarity of the query's embedding to each record's (HNSW,
    /// plus an exact scan of what the graph lacks). `score` is the cosine.
    Vector,
    /// By words: BM25 over each record's words, its neighbours' in the same conversation and
    /// its date's (see `docs/search.md`). `score` is the BM25 score. Needs the query's text,
    /// not an embedder.
    Keyword,
    /// Both, fused: each list's scores divided by its best, averaged. `score` is the fused
    /// score (at most 1); `vector_score` and `keyword_score` say where it came from.
    #[default]
    Hybrid,
}

impl SearchMode {
    /// The mode's name, as [`SearchMode::from_str`](std::str::FromStr) reads it.
    pub fn name(self) -> &'static str {
        match self {
            SearchMode::Vector => "vector",
            SearchMode::Keyword => "keyword",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

impl std::str::FromStr for SearchMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "vector" => Ok(SearchMode::Vector),
            "keyword" => Ok(SearchMode::Keyword),
            "hybrid" => Ok(SearchMode::Hybrid),
            _ => Err(Error::InvalidInput(format!(
                "unknown search mode {s:?}: expected vector, keyword or hybrid"
            ))),
        }
    }
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            layers: Vec::new(),
            top_k: 10,
            score_threshold: None,
            tags: Vec::new(),
            project: None,
            session: None,
            time_range: None,
            record_access: true,
            ef_search: None,
            caller: None,
            mode: SearchMode::default(),
        }
    }
}

impl SearchOptions {
    /// Defaults with `top_k`.
    pub fn top_k(top_k: usize) -> Self {
        SearchOptions {
            top_k,
            ..Default::default()
        }
    }

    /// Whether any filter on the records is set (tags, project, session, time range).
    pub(crate) fn filters(&self) -> bool {
        !self.tags.is_empty()
            || self.project.is_some()
            || self.session.is_some()
            || self.time_range.is_some()
    }

    /// Records the caller's session and project with the hits (not a filter).
    pub fn asked_by(mut self, session: Option<&str>, project: Option<&str>) -> Self {
        self.caller = Some((session.map(Into::into), project.map(Into::into)));
        self
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// Record id.
    pub id: RecordId,
    /// How well it matches: the cosine similarity to the query in [`SearchMode::Vector`],
    /// the BM25 score in [`SearchMode::Keyword`], the fused score in [`SearchMode::Hybrid`].
    pub score: f32,
    /// Layer it was found in.
    pub layer: Layer,
    /// The record.
    pub record: Record,
    /// Its cosine similarity to the query, where the query had an embedding.
    pub vector_score: Option<f32>,
    /// Its BM25 score, where the query's words matched it.
    pub keyword_score: Option<f32>,
}

/// Per-layer figures in [`Stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Live records.
    pub records: u64,
}

/// The store's HNSW index in [`Stats`]: one graph holds the records of every layer (a search
/// of some layers filters by layer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexStats {
    /// Points in the graph (live and tombstoned).
    pub indexed: u64,
    /// Live records not yet in the graph (searched exactly).
    pub pending: u64,
    /// Points in the graph whose record was deleted, expired or superseded.
    pub tombstones: u64,
    /// Whether there is a graph for searches to walk: from open when the snapshot's dump
    /// could be searched in place (`OpenReport::graph_in_place`), else once the dump has
    /// loaded; false before a new graph's first freeze (searches scan exactly until then).
    /// Layers under `Config::exact_search_below` records are scanned exactly anyway.
    pub ready: bool,
}

/// What happened at open.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenReport {
    /// Snapshot the projections were loaded from (its sequence), if any.
    pub snapshot_seq: Option<u64>,
    /// Snapshots that were found invalid and skipped: (directory, reason).
    pub snapshots_rejected: Vec<(String, String)>,
    /// Events replayed from the log after the snapshot.
    pub replayed_events: u64,
    /// The log's own recovery report (torn tail, salvage, cleanup).
    pub log: magray_wal::RecoveryReport,
    /// Why the snapshot's HNSW dump could not be used (each reason once); the index is then
    /// built again from the records in the background.
    pub index_rebuilds: Vec<String>,
    /// Whether open mapped and checked the snapshot's HNSW dump: searches walk it in place
    /// from the moment open returns, until the indexer has made its usual copy (without
    /// this, searches scan exactly until then). If the indexer's full check of the same dump
    /// fails, the reason is in `index_rebuilds` and searches scan exactly until rebuilt.
    pub graph_in_place: bool,
    /// Why open checked every byte of the snapshot's vector chunks, record table, key index and
    /// graph dumps before returning: damage found after an earlier open (see `Stats::damage`).
    /// `None`: they were mapped unread, each 4 KiB block (and each row) checked on its first
    /// read and in the background (the scrub; a dump by the indexer's full read).
    pub full_check: Option<String>,
    /// Time spent opening (µs), in all. Its parts below: where a slow open spends its time.
    pub open_us: u64,
    /// Of `open_us`: everything before the snapshots: the config check, the lock, the store
    /// MANIFEST, temp-file cleanup, and opening the log (its own recovery included).
    pub log_open_us: u64,
    /// Of `open_us`: loading and checking snapshots (rejected ones included).
    pub snapshot_load_us: u64,
    /// Of `open_us`: replaying the log after the snapshot. What is left of `open_us` after
    /// these three is setting up the index state and starting the threads.
    pub replay_us: u64,
}
