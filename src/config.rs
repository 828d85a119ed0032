//! Engine configuration, in code or from `MEMORY_*` environment variables.

use crate::error::{Error, Result};
use crate::limits::{MAX_DIMENSION, MAX_EF};
use magray_wal::{Clock, RecoveryMode, SystemClock};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// HNSW parameters (per layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswConfig {
    /// Links per node (`MEMORY_HNSW_M`). 2..=127. Default 16.
    pub m: usize,
    /// Candidate list while building (`MEMORY_HNSW_EF_CONSTRUCTION`). Default 200.
    pub ef_construction: usize,
    /// Candidate list while searching a layer of up to 100,000 points
    /// (`MEMORY_HNSW_EF_SEARCH`); raised to `top_k` when smaller. A larger layer searches
    /// with `ef_search · (points / 100,000)^0.6` (see [`HnswConfig::effective_ef`]): the
    /// beam a fixed recall needs grows with the graph. Default 16: in `engine_search`,
    /// recall@10 0.993 at 100k, and 0.979 at 1M (where it becomes 64); raise it for more
    /// recall at a proportional cost.
    pub ef_search: usize,
}

impl HnswConfig {
    /// The search beam for a graph of `points`: `ef_search` up to 100,000
    /// points, then scaled by `(points / 100,000)^0.6`. Measured in `engine_search` on
    /// clustered 384-d vectors: with the beam fixed at 16, recall@10 fell from 0.993 at 100k
    /// to 0.833 at 1M; a beam of 64 restored 0.979 (this gives 80 at 1M from the default 20).
    pub fn effective_ef(&self, points: u64) -> usize {
        crate::index::hnsw::scale_ef(self.ef_search, points)
    }
}

impl Default for HnswConfig {
    fn default() -> Self {
        HnswConfig {
            m: 16,
            ef_construction: 200,
            ef_search: 20,
        }
    }
}

/// Promotion and expiry (see `lifecycle`).
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// Time to live per layer, counted from when a record entered it; `None` = forever.
    /// Default Interact 24 h (`MEMORY_TTL_INTERACT_H`), Insights 90 d
    /// (`MEMORY_TTL_INSIGHTS_H`), Assets forever; 0 in a variable means forever.
    pub ttl: [Option<Duration>; 3],
    /// Most live records per layer; the lowest-scoring are evicted first. `None` = unlimited.
    /// Default 10,000 / 100,000 / unlimited (`MEMORY_CAP_INTERACT`, `MEMORY_CAP_INSIGHTS`,
    /// `MEMORY_CAP_ASSETS`; 0 = unlimited).
    pub capacity: [Option<usize>; 3],
    /// Background promotion + expiry run every this long, by the config's clock; `None` = only
    /// on demand (`MEMORY_LIFECYCLE_INTERVAL_S`, 0 = off). Default 10 min.
    pub interval: Option<Duration>,
    /// Which promoter scores (`MEMORY_PROMOTER`: learned, memoryos, generative-agents,
    /// access-count). Default learned.
    pub promoter: crate::lifecycle::Promoter,
    /// Score thresholds for Interact → Insights and Insights → Assets; `None` = the
    /// promoter's defaults (learned: 0.5 and 0.8).
    pub thresholds: Option<[f64; 2]>,
    /// Least time in Insights before a record may move on to Assets. Default 7 d.
    pub assets_min_dwell: Duration,
    /// The learned promoter's label: accessed again within this long. Default 72 h.
    pub horizon: Duration,
    /// Retrain the learned promoter from the log this often, by the config's clock; `None` =
    /// only on demand. Default 24 h.
    pub train_every: Option<Duration>,
    /// Sample points cover this much recent history. Default 30 d.
    pub train_window: Duration,
    /// Time between sample points. Default 6 h.
    pub sample_every: Duration,
    /// Never-read candidates sampled per point, at most (every read one is kept). Default 200.
    pub samples_per_point: usize,
    /// Labelled samples needed before a trained model replaces the default. Default 500.
    pub min_train_samples: usize,
}

const HOUR: u64 = 3600;

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            ttl: [
                Some(Duration::from_secs(24 * HOUR)),
                Some(Duration::from_secs(90 * 24 * HOUR)),
                None,
            ],
            capacity: [Some(10_000), Some(100_000), None],
            interval: Some(Duration::from_secs(600)),
            promoter: crate::lifecycle::Promoter::Learned,
            thresholds: None,
            assets_min_dwell: Duration::from_secs(7 * 24 * HOUR),
            horizon: Duration::from_secs(72 * HOUR),
            train_every: Some(Duration::from_secs(24 * HOUR)),
            train_window: Duration::from_secs(30 * 24 * HOUR),
            sample_every: Duration::from_secs(6 * HOUR),
            samples_per_point: 200,
            min_train_samples: 500,
        }
    }
}

impl LifecycleConfig {
    /// No TTL, no capacity, no background runs or training: records stay where they are
    /// put unless `promote()` / `expire()` are called.
    pub fn manual() -> Self {
        LifecycleConfig {
            ttl: [None; 3],
            capacity: [None; 3],
            interval: None,
            train_every: None,
            ..Default::default()
        }
    }

    /// TTLs in µs, `u64::MAX` for none.
    pub(crate) fn ttl_us(&self) -> [u64; 3] {
        self.ttl.map(|t| t.map(crate::util::us).unwrap_or(u64::MAX))
    }

    /// Thresholds in use.
    pub fn thresholds(&self) -> [f64; 2] {
        self.thresholds
            .unwrap_or_else(|| self.promoter.default_thresholds())
    }
}

/// Engine configuration. `Config::default()` suits an agent's store; [`Config::from_env`]
/// reads overrides from the environment.
#[derive(Clone)]
pub struct Config {
    /// Vector dimension (`MEMORY_DIMENSION`). Fixed when the store is created. Default 384.
    pub dimension: usize,
    /// Id of the model that makes the embeddings; recorded in the store's MANIFEST, and a
    /// store is refused under another. Default `"external"` (the caller embeds).
    pub model_id: String,
    /// HNSW parameters.
    pub hnsw: HnswConfig,
    /// Longest accepted text in bytes (`MEMORY_MAX_TEXT_BYTES`). Default 1 MiB.
    pub max_text_bytes: usize,
    /// Write a snapshot after this many events (`MEMORY_CHECKPOINT_EVERY`); 0 = never by
    /// count. Default 50,000.
    pub checkpoint_every: u64,
    /// Write a snapshot after this long if anything changed (new events, or index progress)
    /// (`MEMORY_CHECKPOINT_INTERVAL_S`);
    /// zero = never by time. Default 300 s.
    pub checkpoint_interval: Duration,
    /// Write a snapshot on clean close. Default true.
    pub checkpoint_on_close: bool,
    /// Snapshots kept (`MEMORY_SNAPSHOTS_KEEP`), at least 1. Default 2.
    pub snapshots_keep: usize,
    /// Embedding batcher: largest batch (`MEMORY_BATCH_SIZE`). Default 64.
    pub batch_size: usize,
    /// Embedding batcher: longest wait for a batch to fill (`MEMORY_FLUSH_INTERVAL_MS`).
    /// Default 5 ms.
    pub flush_interval: Duration,
    /// Search hits are written as `Accessed` events at most this long after the search
    /// (`MEMORY_ACCESS_FLUSH_MS`); a crash loses at most this window of access statistics,
    /// never a record. Default 1 s.
    pub access_flush_interval: Duration,
    /// Buffered hits that trigger an early access flush. Default 4,096.
    pub access_flush_hits: usize,
    /// A search whose layers hold fewer live records than this scans them exactly
    /// (`MEMORY_EXACT_BELOW`). Default 2,000.
    pub exact_search_below: usize,
    /// Records on each side of a record, in the same project and session, whose words count
    /// in its keyword context (`MEMORY_KEYWORD_WINDOW`, 0..=8; 0 = a record's own words
    /// only). Default 2.
    pub keyword_window: usize,
    /// Rebuild the index when tombstones exceed this fraction of its points (and 256).
    /// Default 0.2.
    pub rebuild_tombstone_ratio: f64,
    /// Vectors the indexer inserts per round. Default 256.
    pub index_batch: usize,
    /// Threads the indexer inserts with (`MEMORY_INDEX_THREADS`), 1..=256. Default: the
    /// machine's cores, as hnswlib's `add_items` uses. The indexer's threads run at a lower
    /// scheduling priority than the caller's (10 nicer, on Linux), so a search competing with
    /// them for a core gets it first.
    pub index_threads: usize,
    /// Ignore snapshots and replay the whole log from sequence 1 (verification).
    pub full_replay: bool,
    /// How the log treats damage at open.
    pub recovery: RecoveryMode,
    /// Log segment size. Default 8 MiB.
    pub segment_bytes: u32,
    /// Time source for event timestamps, TTLs and lifecycle scheduling (tests inject a
    /// manual clock and run weeks in milliseconds).
    pub clock: Arc<dyn Clock>,
    /// Promotion and expiry.
    pub lifecycle: LifecycleConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("dimension", &self.dimension)
            .field("model_id", &self.model_id)
            .field("hnsw", &self.hnsw)
            .field("max_text_bytes", &self.max_text_bytes)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("snapshots_keep", &self.snapshots_keep)
            .field("exact_search_below", &self.exact_search_below)
            .field("keyword_window", &self.keyword_window)
            .field("index_threads", &self.index_threads)
            .field("full_replay", &self.full_replay)
            .field("lifecycle", &self.lifecycle)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            dimension: 384,
            model_id: "external".into(),
            hnsw: HnswConfig::default(),
            max_text_bytes: 1 << 20,
            checkpoint_every: 50_000,
            checkpoint_interval: Duration::from_secs(300),
            checkpoint_on_close: true,
            snapshots_keep: 2,
            batch_size: 64,
            flush_interval: Duration::from_millis(5),
            access_flush_interval: Duration::from_secs(1),
            access_flush_hits: 4096,
            exact_search_below: 2_000,
            keyword_window: crate::projection::DEFAULT_KEYWORD_WINDOW,
            rebuild_tombstone_ratio: 0.2,
            index_batch: 256,
            index_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            full_replay: false,
            recovery: RecoveryMode::default(),
            segment_bytes: 8 << 20,
            clock: Arc::new(SystemClock),
            lifecycle: LifecycleConfig::default(),
        }
    }
}

/// The store directory: `MEMORY_DB_PATH`, else `$XDG_DATA_HOME/magray-memory/default`, else
/// `~/.local/share/magray-memory/default`.
pub fn default_store_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MEMORY_DB_PATH") {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return Ok(PathBuf::from(x).join("magray-memory").join("default"));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/magray-memory/default")),
        None => Err(Error::Config(
            "no store path: set MEMORY_DB_PATH (or HOME) to choose where the store lives".into(),
        )),
    }
}

impl Config {
    /// Defaults overridden by `MEMORY_*` environment variables, validated.
    pub fn from_env() -> Result<Config> {
        let mut c = Config::default();
        if let Some(v) = crate::util::env_parse("MEMORY_DIMENSION")? {
            c.dimension = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_HNSW_M")? {
            c.hnsw.m = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_HNSW_EF_CONSTRUCTION")? {
            c.hnsw.ef_construction = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_HNSW_EF_SEARCH")? {
            c.hnsw.ef_search = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_MAX_TEXT_BYTES")? {
            c.max_text_bytes = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_CHECKPOINT_EVERY")? {
            c.checkpoint_every = v;
        }
        if let Some(v) = crate::util::env_parse::<u64>("MEMORY_CHECKPOINT_INTERVAL_S")? {
            c.checkpoint_interval = Duration::from_secs(v);
        }
        if let Some(v) = crate::util::env_parse("MEMORY_SNAPSHOTS_KEEP")? {
            c.snapshots_keep = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_BATCH_SIZE")? {
            c.batch_size = v;
        }
        if let Some(v) = crate::util::env_parse::<u64>("MEMORY_FLUSH_INTERVAL_MS")? {
            c.flush_interval = Duration::from_millis(v);
        }
        if let Some(v) = crate::util::env_parse::<u64>("MEMORY_ACCESS_FLUSH_MS")? {
            c.access_flush_interval = Duration::from_millis(v);
        }
        if let Some(v) = crate::util::env_parse("MEMORY_EXACT_BELOW")? {
            c.exact_search_below = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_KEYWORD_WINDOW")? {
            c.keyword_window = v;
        }
        if let Some(v) = crate::util::env_parse("MEMORY_INDEX_THREADS")? {
            c.index_threads = v;
        }
        let lc = &mut c.lifecycle;
        let hours = |var: &str, h: u64| -> Result<Option<Duration>> {
            match h {
                0 => Ok(None),
                h => h
                    .checked_mul(HOUR)
                    .map(|s| Some(Duration::from_secs(s)))
                    .ok_or_else(|| Error::Config(format!("{var}={h}: too large"))),
            }
        };
        if let Some(v) = crate::util::env_parse::<u64>("MEMORY_TTL_INTERACT_H")? {
            lc.ttl[0] = hours("MEMORY_TTL_INTERACT_H", v)?;
        }
        if let Some(v) = crate::util::env_parse::<u64>("MEMORY_TTL_INSIGHTS_H")? {
            lc.ttl[1] = hours("MEMORY_TTL_INSIGHTS_H", v)?;
        }
        for (i, var) in [
            "MEMORY_CAP_INTERACT",
            "MEMORY_CAP_INSIGHTS",
            "MEMORY_CAP_ASSETS",
        ]
        .iter()
        .enumerate()
        {
            if let Some(v) = crate::util::env_parse::<usize>(var)? {
                lc.capacity[i] = (v > 0).then_some(v);
            }
        }
        if let Some(v) = crate::util::env_parse::<u64>("MEMORY_LIFECYCLE_INTERVAL_S")? {
            lc.interval = (v > 0).then(|| Duration::from_secs(v));
        }
        if let Some(v) = crate::util::env_parse("MEMORY_PROMOTER")? {
            lc.promoter = v;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every value; the error names the setting and the accepted range.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, msg: String| if ok { Ok(()) } else { Err(Error::Config(msg)) };
        check(
            self.keyword_window <= crate::keyword::MAX_WINDOW,
            format!(
                "keyword_window {} must be within 0..={} (MEMORY_KEYWORD_WINDOW)",
                self.keyword_window,
                crate::keyword::MAX_WINDOW
            ),
        )?;
        check(
            (1..=MAX_DIMENSION).contains(&self.dimension),
            format!(
                "dimension {} must be within 1..={MAX_DIMENSION} (MEMORY_DIMENSION)",
                self.dimension
            ),
        )?;
        check(
            (2..=crate::limits::MAX_M).contains(&self.hnsw.m),
            format!(
                "hnsw.m {} must be within 2..={} (MEMORY_HNSW_M)",
                self.hnsw.m,
                crate::limits::MAX_M
            ),
        )?;
        check(
            (self.hnsw.m..=MAX_EF).contains(&self.hnsw.ef_construction),
            format!(
                "hnsw.ef_construction {} must be within m..={MAX_EF} (MEMORY_HNSW_EF_CONSTRUCTION)",
                self.hnsw.ef_construction
            ),
        )?;
        check(
            (1..=MAX_EF).contains(&self.hnsw.ef_search),
            format!(
                "hnsw.ef_search {} must be within 1..={MAX_EF} (MEMORY_HNSW_EF_SEARCH)",
                self.hnsw.ef_search
            ),
        )?;
        check(
            (1..=64 << 20).contains(&self.max_text_bytes),
            format!(
                "max_text_bytes {} must be within 1..=64 MiB",
                self.max_text_bytes
            ),
        )?;
        check(
            self.snapshots_keep >= 1,
            "snapshots_keep must be at least 1 (MEMORY_SNAPSHOTS_KEEP)".into(),
        )?;
        check(
            (1..=4096).contains(&self.batch_size),
            format!(
                "batch_size {} must be within 1..=4096 (MEMORY_BATCH_SIZE)",
                self.batch_size
            ),
        )?;
        check(
            self.access_flush_hits >= 1,
            "access_flush_hits must be at least 1".into(),
        )?;
        check(
            self.rebuild_tombstone_ratio > 0.0 && self.rebuild_tombstone_ratio <= 1.0,
            format!(
                "rebuild_tombstone_ratio {} must be within (0, 1]",
                self.rebuild_tombstone_ratio
            ),
        )?;
        check(
            self.index_batch >= 1,
            "index_batch must be at least 1".into(),
        )?;
        check(
            (1..=256).contains(&self.index_threads),
            format!(
                "index_threads {} must be within 1..=256 (MEMORY_INDEX_THREADS)",
                self.index_threads
            ),
        )?;
        check(
            !self.model_id.is_empty() && !self.model_id.contains('\n'),
            "model_id must be a non-empty single line".into(),
        )?;
        let lc = &self.lifecycle;
        check(
            lc.ttl.iter().flatten().all(|d| !d.is_zero()),
            "lifecycle.ttl: a TTL must be positive (use None for forever)".into(),
        )?;
        check(
            lc.capacity.iter().flatten().all(|c| *c > 0),
            "lifecycle.capacity: a capacity must be positive (use None for unlimited)".into(),
        )?;
        check(
            lc.interval.is_none_or(|d| !d.is_zero()),
            "lifecycle.interval must be positive (use None for on-demand only)".into(),
        )?;
        check(
            !lc.horizon.is_zero() && !lc.sample_every.is_zero() && lc.samples_per_point > 0,
            "lifecycle.horizon, sample_every and samples_per_point must be positive".into(),
        )?;
        check(
            lc.thresholds().iter().all(|t| !t.is_nan()),
            "lifecycle.thresholds must be numbers (f64::INFINITY: never promote)".into(),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_beam_grows_with_the_graph_past_100k_points() {
        let h = HnswConfig::default();
        assert_eq!(h.effective_ef(0), 20);
        assert_eq!(h.effective_ef(100_000), 20);
        assert_eq!(h.effective_ef(300_000), 39);
        assert_eq!(h.effective_ef(1_000_000), 80);
        let wide = HnswConfig {
            ef_search: 4_000,
            ..h
        };
        assert_eq!(wide.effective_ef(u64::MAX), 4096, "capped at the ef limit");
    }
}
