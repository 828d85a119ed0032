//! The `Memory` handle: the async API, the ordered apply path, and the background threads
//! (indexer; access flush + automatic checkpoints).

use crate::config::Config;
use crate::disk::files::FileEntry;
use crate::disk::records::{self, RecordTable};
use crate::disk::store_files::{StoreLock, StoreManifest};
use crate::error::{Error, Result};
use crate::index::dump_graph::MappedGraph;
use crate::index::hnsw::HnswBuilder;
use crate::projection::{content_key, Projections, Replaced};
use crate::snapshot::{self, Capture, Writer};
use crate::types::*;
use crate::util::fnv64;
use magray_wal::{
    AccessSource, Accessed, Appended, Envelope, Event, Hit, Inserted, Log, LogConfig,
};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};

mod lifecycle_run;
mod stats;

pub use stats::Stats;

use crate::lifecycle::{EvalConfig, EvalReport, LifecycleReport, PromoterModel, TrainReport};
use tokio_stream::wrappers::ReceiverStream;

/// A stream of committed events (see [`Memory::subscribe`]).
pub type EventStream = ReceiverStream<Result<Envelope>>;

/// Capacity of the live-event broadcast a subscriber may fall behind by before it is told it
/// lagged.
const SUBSCRIBER_BUFFER: usize = 4096;
/// File in `snapshots/` that marks damage found in a vector chunk after open (it holds the
/// error): the next open checks every snapshot file in full, and its first checkpoint
/// removes the mark.
pub(crate) const DAMAGE_MARK: &str = "DAMAGED";

/// Writes (and fsyncs) the damage mark in the snapshots directory `root`, holding `e`.
fn write_damage_mark(root: &Path, e: &Error) -> Result<()> {
    let mark = root.join(DAMAGE_MARK);
    std::fs::File::create(&mark)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(e.to_string().as_bytes())?;
            magray_wal::fsutil::sync_file(&f, &mark)
        })
        .map_err(|err| Error::io(&mark, err))?;
    Ok(magray_wal::fsutil::sync_dir(root)?)
}

/// A snapshot's directory, manifest and the HNSW dumps it holds (layer, basename).
/// See `SnapState::graph_points`.
const GRAPH_ONLY_CHECKPOINT_POINTS: u64 = 1_024;

/// Tests: stores (by the path given to open) whose indexer waits before it loads their HNSW
/// dumps, for as long as they are listed here.
#[cfg(test)]
pub(crate) static HOLD_DUMP_LOADS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Tests: stores (by the path given to open) whose checkpoints wait after the snapshot's
/// rename, before its `Checkpointed` marker, for as long as they are listed here.
#[cfg(test)]
static HOLD_CHECKPOINT_MARKERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

type Dumps = (
    PathBuf,
    snapshot::ManifestBody,
    Vec<(Layer, String, Option<Arc<MappedGraph>>)>,
);

struct SnapState {
    latest: Option<(u64, PathBuf)>,
    /// Sequence up to which the latest snapshot holds every event: its `Checkpointed`
    /// marker's when nothing but markers came between the snapshot and it, else the
    /// snapshot's own (events committed while it was written are in no snapshot yet).
    covered_seq: u64,
    known_chunks: HashMap<String, FileEntry>,
    at: Instant,
    /// Version of the promoter model the latest snapshot holds (a newly trained model makes
    /// the next checkpoint write a snapshot even with no new events).
    model_version: u32,
    /// `Inner::graph_points` when the latest snapshot's graphs were captured. Graphs that
    /// gained [`GRAPH_ONLY_CHECKPOINT_POINTS`] since (say, rebuilt at open from an unusable
    /// dump) are worth a snapshot even with no new events: otherwise every open indexes them
    /// again. Fewer are cheaper to index again than a snapshot is to write.
    graph_points: u64,
}

struct Wake {
    flag: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    fn new() -> Wake {
        Wake {
            flag: Mutex::new(false),
            cv: Condvar::new(),
        }
    }
    fn notify(&self) {
        *self.flag.lock() = true;
        self.cv.notify_all();
    }
    fn wait(&self, timeout: Duration) {
        let mut f = self.flag.lock();
        if !*f {
            self.cv.wait_for(&mut f, timeout);
        }
        *f = false;
    }
}

pub(crate) struct Inner {
    dir: PathBuf,
    config: Config,
    log: RwLock<Option<Arc<Log>>>,
    state: RwLock<Projections>,
    apply_q: Mutex<BTreeMap<u64, (Appended, Vec<Event>)>>,
    applied_cv: Condvar,
    applied_tx: watch::Sender<u64>,
    events_tx: broadcast::Sender<Arc<Envelope>>,
    index_lock: Mutex<()>,
    index_wake: Wake,
    maint_wake: Wake,
    lifecycle_wake: Wake,
    shutdown: AtomicBool,
    failure: Mutex<Option<String>>,
    access_buf: Mutex<Vec<Accessed>>,
    access_hits: AtomicU64,
    snap: Mutex<SnapState>,
    /// (newest snapshot seq, marker seq) for stats(): never blocks behind a checkpoint.
    snap_info: Mutex<(Option<u64>, u64)>,
    inflight: Mutex<HashSet<u64>>,
    graphs_loading: AtomicU64,
    /// The indexer's scrub of the vector chunks mapped at open has not finished.
    scrubbing: AtomicBool,
    /// Damage was found and the store marked (`DAMAGE_MARK`).
    damage_noted: AtomicBool,
    /// Points inserted into the layers' graphs since open (a rebuild counts all of its own).
    graph_points: AtomicU64,
    /// Layers whose index `optimize()` asked to rebuild (bit per layer).
    force_rebuild: std::sync::atomic::AtomicU8,
    report: Mutex<OpenReport>,
    /// The promoter model in use (the default until one is trained or loaded).
    model: RwLock<Arc<PromoterModel>>,
    /// One lifecycle run at a time.
    lifecycle_lock: Mutex<()>,
    last_lifecycle: Mutex<Option<LifecycleReport>>,
    training: AtomicBool,
    /// Short-lived background threads (training), joined at close.
    bg_threads: Mutex<Vec<JoinHandle<()>>>,
    _lock: StoreLock,
}

/// An open store. Cheap to share: wrap it in an `Arc`; every method takes `&self`.
///
/// Writes return once their events are durable in the log and applied to the projections;
/// nothing is visible to readers before it is durable.
pub struct Memory {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    embedder: Option<crate::embed::Batcher>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn normalise(v: &[f32], dim: usize) -> Result<Vec<f32>> {
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
fn inserted(id: RecordId, r: NewRecord, embedding: Vec<f32>, hash: u64, now: u64) -> Event {
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

impl Memory {
    /// Opens (creating if needed) the store in `dir`: takes the lock, checks the MANIFEST,
    /// loads the newest valid snapshot, replays the log after it, and starts serving at once
    /// (HNSW dumps load and un-indexed records are indexed in the background; until then
    /// those records are searched exactly).
    pub async fn open(dir: impl AsRef<Path>, config: Config) -> Result<Memory> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Memory::open_blocking(dir, config))
            .await
            .map_err(|e| Error::Poisoned(format!("open task failed: {e}")))?
    }

    /// Like [`Memory::open`], with an embedder on the write path: [`Memory::store`],
    /// [`Memory::store_batch`] and [`Memory::search_text`] take text. The embedder's dimension
    /// must equal `config.dimension`, and its model id is recorded in (or checked against) the
    /// store's MANIFEST: a store made with another model is refused (re-embedding a store is a
    /// later feature, `optimize --reembed`). Concurrent calls are coalesced into batches of up
    /// to `config.batch_size` texts, waiting at most `config.flush_interval`.
    pub async fn open_with_embedder(
        dir: impl AsRef<Path>,
        mut config: Config,
        embedder: Arc<crate::Embedder>,
    ) -> Result<Memory> {
        if embedder.dimension() != config.dimension {
            return Err(Error::Config(format!(
                "the embedder's model {} makes {}-dimensional vectors, but the configured \
                 dimension is {} (MEMORY_DIMENSION)",
                embedder.model_id(),
                embedder.dimension(),
                config.dimension
            )));
        }
        config.model_id = embedder.model_id().to_string();
        let mut memory = Memory::open(dir, config.clone()).await?;
        memory.embedder = Some(crate::embed::Batcher::start(
            embedder,
            config.batch_size,
            config.flush_interval,
        ));
        Ok(memory)
    }

    fn batcher(&self) -> Result<&crate::embed::Batcher> {
        self.embedder.as_ref().ok_or_else(|| {
            Error::Config(
                "this store was opened without an embedder; use Memory::open_with_embedder \
                 or supply embeddings"
                    .into(),
            )
        })
    }

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

    /// Searches by text: the query is embedded (identical queries come from the cache), then
    /// searched like [`Memory::search`].
    pub async fn search_text(
        &self,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<SearchHit>> {
        self.inner.validate_text(query)?;
        let batcher = self.batcher()?;
        // A cached query skips the batcher and its gathering wait.
        if let Some(v) = batcher.embedder().cached(query) {
            return self.search(&v, options).await;
        }
        let v = batcher.embed(vec![query.to_string()]).await?;
        let v = v
            .first()
            .ok_or_else(|| Error::Embedder("no vector for the query".into()))?;
        self.search(v, options).await
    }

    fn open_blocking(dir: PathBuf, config: Config) -> Result<Memory> {
        match Memory::open_once(dir.clone(), config.clone())? {
            Some(m) => Ok(m),
            // The replay found damage in the snapshot mapped unread and marked the store:
            // open again, checking every snapshot file in full.
            None => Memory::open_once(dir.clone(), config)?
                .ok_or_else(|| Error::corrupted(&dir, 0, "damage found again after a full check")),
        }
    }

    /// One open: `None` when the replay found damage in what the snapshot mapped unread (a
    /// row of its record table); the store is then marked (`DAMAGE_MARK`) for the next.
    fn open_once(dir: PathBuf, config: Config) -> Result<Option<Memory>> {
        let started = Instant::now();
        config.validate()?;
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock = StoreLock::acquire(&dir)?;
        match StoreManifest::read(&dir)? {
            Some(m) => {
                if m.dimension != config.dimension {
                    return Err(Error::StoreMismatch {
                        path: StoreManifest::path(&dir),
                        what: "dimension",
                        stored: m.dimension.to_string(),
                        given: config.dimension.to_string(),
                    });
                }
                if m.model_id != config.model_id {
                    return Err(Error::StoreMismatch {
                        path: StoreManifest::path(&dir),
                        what: "embedding model",
                        stored: m.model_id,
                        given: config.model_id.clone(),
                    });
                }
            }
            None => StoreManifest::new(config.dimension, &config.model_id, config.clock.now_us())
                .write(&dir)?,
        }
        let snap_root = dir.join("snapshots");
        std::fs::create_dir_all(&snap_root).map_err(|e| Error::io(&snap_root, e))?;
        magray_wal::fsutil::remove_temp_files(&snap_root)?;

        let mut lc = LogConfig::new(&dir);
        lc.recovery = config.recovery;
        lc.segment_bytes = config.segment_bytes;
        lc.clock = config.clock.clone();
        let log = Log::open(lc)?;
        let mut report = OpenReport {
            log: log.recovery_report().clone(),
            ..Default::default()
        };

        report.log_open_us = started.elapsed().as_micros() as u64;
        let snapshots_from = Instant::now();
        let mark = snap_root.join(DAMAGE_MARK);
        report.full_check = match std::fs::read(&mark) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&mark, e)),
        };
        let check = match &report.full_check {
            Some(why) => {
                tracing::warn!(%why, "damage was found after an earlier open; checking every snapshot file in full");
                snapshot::Check::Full
            }
            None => snapshot::Check::Blocks,
        };
        let mut loaded = None;
        if !config.full_replay {
            for (seq, path) in snapshot::list(&snap_root)? {
                if seq > log.last_seq() {
                    let why = format!(
                        "snapshot at {seq} is ahead of the log (last sequence {})",
                        log.last_seq()
                    );
                    report
                        .snapshots_rejected
                        .push(quarantine(&path, why, &config));
                    continue;
                }
                match snapshot::load(&path, config.dimension, check) {
                    Ok(l) => {
                        // The log's event at S must be the one the snapshot saw: after a
                        // salvage, later sequences may belong to a different history.
                        // The replay goes on from this same reader, so the log is read once.
                        let mut delta = log.history(seq.max(1));
                        if let Some(why) = timeline_mismatch(&mut delta, seq, l.manifest.ts_us) {
                            report
                                .snapshots_rejected
                                .push(quarantine(&path, why, &config));
                            continue;
                        }
                        loaded = Some((seq, path, l, delta));
                        break;
                    }
                    // After damage (the mark), a snapshot that fails the full check is set
                    // aside, so that no later open maps it unread again.
                    Err(e) if report.full_check.is_some() => {
                        report
                            .snapshots_rejected
                            .push(quarantine(&path, e.to_string(), &config));
                    }
                    Err(e) => {
                        tracing::warn!(snapshot = %path.display(), error = %e, "snapshot rejected; trying an older one");
                        report
                            .snapshots_rejected
                            .push((path.display().to_string(), e.to_string()));
                    }
                }
            }
        }
        if report.full_check.is_some() && !config.full_replay {
            // Every snapshot newer than the one loaded failed the full check and is set
            // aside; the one loaded passed it: no open needs the full check any more.
            match std::fs::remove_file(&mark) {
                Ok(()) => magray_wal::fsutil::sync_dir(&snap_root)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&mark, e)),
            }
        }
        let mut model = PromoterModel::default();
        let (mut proj, dumps, mut snap_state, delta) = match loaded {
            Some((seq, path, l, delta)) => {
                if let Some(m) = l.model {
                    model = m;
                }
                report.snapshot_seq = Some(seq);
                // The chunks and their block sums files: the next checkpoint links both.
                let known: HashMap<String, FileEntry> = l
                    .manifest
                    .files
                    .iter()
                    .filter(|f| l.manifest.is_vector_file(&f.name))
                    .map(|f| (f.name.clone(), f.clone()))
                    .collect();
                let graphs = l.graphs;
                let dumps: Vec<(Layer, String, Option<Arc<MappedGraph>>)> = l
                    .manifest
                    .layers
                    .iter()
                    .filter_map(|le| {
                        let mapped = graphs
                            .iter()
                            .find(|(gl, _)| *gl == le.layer)
                            .map(|(_, g)| g.clone());
                        le.dump.clone().map(|d| (le.layer, d, mapped))
                    })
                    .collect();
                let manifest = l.manifest;
                (
                    l.projections,
                    Some((path.clone(), manifest, dumps)),
                    SnapState {
                        latest: Some((seq, path)),
                        covered_seq: seq,
                        known_chunks: known,
                        at: Instant::now(),
                        model_version: model.version,
                        graph_points: 0,
                    },
                    delta,
                )
            }
            None => (
                Projections::new(config.dimension),
                None,
                SnapState {
                    latest: None,
                    covered_seq: 0,
                    known_chunks: HashMap::new(),
                    at: Instant::now(),
                    model_version: 0,
                    graph_points: 0,
                },
                log.history(1),
            ),
        };
        proj.ttl_us = config.lifecycle.ttl_us();
        report.snapshot_load_us = snapshots_from.elapsed().as_micros() as u64;
        let replay_from = Instant::now();
        let mut only_markers = true;
        for env in delta {
            let env = env?;
            if env.seq != proj.applied_seq + 1 {
                return Err(Error::corrupted(
                    dir.join("wal"),
                    0,
                    format!(
                        "log replay expected sequence {} but read {}",
                        proj.applied_seq + 1,
                        env.seq
                    ),
                ));
            }
            only_markers &= matches!(env.event, Event::Checkpointed { .. });
            proj.apply(&env)?;
            report.replayed_events += 1;
        }
        report.replay_us = replay_from.elapsed().as_micros() as u64;
        // A record the replay reached through a damaged row was skipped: this state is not
        // the log's. (Nothing was written from it yet.)
        if let Some(e) = proj.damage() {
            tracing::error!(error = %e, "damage found while replaying onto the snapshot; opening again with every snapshot file checked");
            write_damage_mark(&snap_root, &e)?;
            return Ok(None);
        }
        if snap_state.latest.is_some() && only_markers {
            // Nothing but the snapshot's own `Checkpointed` marker since: an idle open/close
            // must not write another snapshot.
            snap_state.covered_seq = proj.applied_seq;
        }
        if proj.applied_seq != log.last_seq() {
            return Err(Error::corrupted(
                dir.join("wal"),
                0,
                format!(
                    "replay stopped at sequence {} but the log ends at {}",
                    proj.applied_seq,
                    log.last_seq()
                ),
            ));
        }
        // Layers without a usable dump are indexed from scratch; the others get their slot
        // list from the dump: at once from a dump searched in place (below), else when the
        // indexer loads it (until then the layer is searched exactly; a format-6 manifest
        // listed the slots meanwhile, a format-7 one does not).
        let with_dump: HashSet<Layer> = dumps
            .as_ref()
            .map(|(_, _, d)| d.iter().map(|(l, _, _)| *l).collect())
            .unwrap_or_default();
        for l in Layer::ALL {
            if !with_dump.contains(&l) {
                let ls = &mut proj.layers[l.index()];
                ls.in_index.clear();
                ls.recompute_pending();
            }
        }
        // A dump open could map and check is searched in place at once; the indexer replaces
        // it with the usual frozen copy once it has read the dump (see `crate::dump_graph`).
        for (l, _, mapped) in dumps.iter().flat_map(|(_, _, d)| d) {
            if let Some(g) = mapped {
                install_graph(&mut proj.layers[l.index()], g.slots(), g.clone());
                report.graphs_in_place.push(*l);
            }
        }
        let applied = proj.applied_seq;
        let unchecked = proj.unchecked();
        let (applied_tx, _) = watch::channel(applied);
        let (events_tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        report.open_us = started.elapsed().as_micros() as u64;
        let inner = Arc::new(Inner {
            dir,
            config,
            log: RwLock::new(Some(Arc::new(log))),
            state: RwLock::new(proj),
            apply_q: Mutex::new(BTreeMap::new()),
            applied_cv: Condvar::new(),
            applied_tx,
            events_tx,
            index_lock: Mutex::new(()),
            index_wake: Wake::new(),
            maint_wake: Wake::new(),
            lifecycle_wake: Wake::new(),
            shutdown: AtomicBool::new(false),
            failure: Mutex::new(None),
            access_buf: Mutex::new(Vec::new()),
            access_hits: AtomicU64::new(0),
            snap_info: Mutex::new((
                snap_state.latest.as_ref().map(|(s, _)| *s),
                snap_state.covered_seq,
            )),
            snap: Mutex::new(snap_state),
            inflight: Mutex::new(HashSet::new()),
            graphs_loading: AtomicU64::new(with_dump.len() as u64),
            scrubbing: AtomicBool::new(unchecked),
            damage_noted: AtomicBool::new(false),
            graph_points: AtomicU64::new(0),
            force_rebuild: std::sync::atomic::AtomicU8::new(0),
            report: Mutex::new(report),
            model: RwLock::new(Arc::new(model)),
            lifecycle_lock: Mutex::new(()),
            last_lifecycle: Mutex::new(None),
            training: AtomicBool::new(false),
            bg_threads: Mutex::new(Vec::new()),
            _lock: lock,
        });
        let mut threads = Vec::new();
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("magray-indexer".into())
                .spawn(move || i.guard("indexer", |i| i.indexer(dumps)))
                .map_err(|e| Error::io(&inner.dir, e))?,
        );
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("magray-maint".into())
                .spawn(move || i.guard("maintenance", |i| i.maintenance()))
                .map_err(|e| Error::io(&inner.dir, e))?,
        );
        let i = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("magray-lifecycle".into())
                .spawn(move || i.guard("lifecycle", |i| i.lifecycle_loop()))
                .map_err(|e| Error::io(&inner.dir, e))?,
        );
        Ok(Some(Memory {
            inner,
            threads: Mutex::new(threads),
            embedder: None,
        }))
    }

    /// Flushes pending access statistics, writes a snapshot (unless
    /// `Config::checkpoint_on_close` is off), stops the background threads and closes the log.
    pub async fn close(self) -> Result<()> {
        let inner = self.inner.clone();
        let threads = std::mem::take(&mut *self.threads.lock());
        drop(self);
        tokio::task::spawn_blocking(move || inner.close_blocking(threads))
            .await
            .map_err(|e| Error::Poisoned(format!("close task failed: {e}")))?
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

    /// The record with this id.
    pub async fn get(&self, id: RecordId) -> Result<Record> {
        self.inner.check()?;
        let now = self.inner.config.clock.now_us();
        let rec = {
            let st = self.inner.state.read();
            // A record past its layer's TTL is expired for readers, even before the
            // lifecycle run writes its `Expired` event.
            let rec = st
                .get(&id.0)
                .filter(|r| !st.past_ttl(r, now))
                .map(|r| r.to_record());
            // A damaged row reads as no record: not "not found" but the damage.
            self.inner.undamaged_in(&st)?;
            rec.ok_or(Error::NotFound(id))?
        };
        self.inner.record_access(Accessed {
            source: AccessSource::Get,
            session: None,
            project: None,
            hits: vec![Hit {
                id: id.0,
                rank: 0,
                score: 0.0,
            }],
        });
        Ok(rec)
    }

    /// Nearest records to `query` (cosine similarity), best first.
    pub async fn search(&self, query: &[f32], options: &SearchOptions) -> Result<Vec<SearchHit>> {
        self.inner.check()?;
        self.inner.search(query, options)
    }

    /// Several searches with the same options.
    pub async fn search_batch(
        &self,
        queries: &[Vec<f32>],
        options: &SearchOptions,
    ) -> Result<Vec<Vec<SearchHit>>> {
        self.inner.check()?;
        queries
            .iter()
            .map(|q| self.inner.search(q, options))
            .collect()
    }

    /// Deletes a record.
    pub async fn delete(&self, id: RecordId) -> Result<()> {
        self.inner.check()?;
        self.inner.require(id)?;
        self.inner.commit(vec![Event::Deleted { id: id.0 }]).await?;
        Ok(())
    }

    /// Replaces `old` by a new record, atomically (one log entry); returns the new id.
    pub async fn supersede(&self, old: RecordId, record: NewRecord) -> Result<RecordId> {
        let inner = &self.inner;
        inner.check()?;
        inner.validate_text(&record.text)?;
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

    /// Writes buffered search/get accesses to the log now.
    pub async fn flush_accesses(&self) -> Result<()> {
        let events = self.inner.take_accesses();
        if !events.is_empty() {
            self.inner.commit(events).await?;
        }
        Ok(())
    }

    /// Writes a snapshot of every projection now; returns its sequence.
    pub async fn checkpoint(&self) -> Result<u64> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.checkpoint_blocking())
            .await
            .map_err(|e| Error::Poisoned(format!("checkpoint task failed: {e}")))?
    }

    /// Promotes every record whose score reaches its layer's threshold (Interact → Insights,
    /// Insights → Assets after `assets_min_dwell`), as one atomic log entry of `Promoted`
    /// events. Also runs in the background every `LifecycleConfig::interval`.
    pub async fn promote(&self) -> Result<LifecycleReport> {
        self.lifecycle(true, false).await
    }

    /// Expires records past their layer's TTL (promoting those that score above the
    /// threshold instead) and evicts the lowest-scoring records of a layer over its capacity.
    /// One atomic log entry. Also runs in the background.
    pub async fn expire(&self) -> Result<LifecycleReport> {
        self.lifecycle(false, true).await
    }

    /// [`Memory::promote`] then [`Memory::expire`], in one run and one log entry: what the
    /// background task does.
    pub async fn run_lifecycle(&self) -> Result<LifecycleReport> {
        self.lifecycle(true, true).await
    }

    async fn lifecycle(&self, promote: bool, expire: bool) -> Result<LifecycleReport> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.catch("lifecycle run", || inner.run_lifecycle(promote, expire))
        })
        .await
        .map_err(|e| Error::Poisoned(format!("lifecycle task failed: {e}")))?
    }

    /// Trains the learned promoter from the log now (also runs every
    /// `LifecycleConfig::train_every`). With too little history the model is unchanged and
    /// the report says why.
    pub async fn train_promoter(&self) -> Result<TrainReport> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.catch("promoter training", || inner.train()))
            .await
            .map_err(|e| Error::Poisoned(format!("training task failed: {e}")))?
    }

    /// The promoter model in use.
    pub fn promoter_model(&self) -> PromoterModel {
        (*self.inner.model()).clone()
    }

    /// Replays this store's history, trains the learned promoter on the period before
    /// `config.split_us` and reports precision@k / recall@k of every promoter on the period
    /// after it (label: accessed again within the horizon).
    pub async fn evaluate_promoters(&self, config: EvalConfig) -> Result<EvalReport> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let history = inner.log()?.history(1);
            crate::lifecycle::offline::evaluate(
                history.map(|e| e.map_err(Error::from)),
                inner.config.dimension,
                inner.config.lifecycle.ttl_us(),
                &config,
            )
        })
        .await
        .map_err(|e| Error::Poisoned(format!("evaluation task failed: {e}")))?
    }

    /// Rebuilds the index of every layer that has tombstones (deleted, expired or moved
    /// records) from its live records, waits for indexing to finish, then writes a snapshot.
    /// Returns the snapshot's sequence.
    pub async fn optimize(&self) -> Result<u64> {
        self.inner.check()?;
        let mut bits = 0u8;
        for l in Layer::ALL {
            if self.inner.state.read().layers[l.index()].tombstones > 0 {
                bits |= 1 << l.index();
            }
        }
        self.inner.force_rebuild.fetch_or(bits, Ordering::AcqRel);
        self.inner.index_wake.notify();
        while self.inner.force_rebuild.load(Ordering::Acquire) & bits != 0 {
            self.inner.check()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.wait_indexed().await?;
        self.checkpoint().await
    }

    /// Tests: vectors `layer`'s graph builder holds copies of (not read from the maps); `None`
    /// without a graph.
    #[cfg(test)]
    pub(crate) fn graph_copies(&self, layer: Layer) -> Option<usize> {
        let g = self.inner.state.read().layers[layer.index()].graph.clone();
        g.map(|g| g.lock().own_vectors())
    }

    /// Tests: whether `layer`'s searches walk its snapshot's dump in place.
    #[cfg(test)]
    pub(crate) fn graph_in_place(&self, layer: Layer) -> bool {
        self.inner.state.read().layers[layer.index()]
            .frozen
            .as_ref()
            .is_some_and(|f| f.in_place())
    }

    /// Waits until every live record is in its layer's HNSW index and the vector blocks
    /// mapped at open are all checked (benchmarks, tests); fails with damage found in them
    /// (see `Stats::damage`).
    pub async fn wait_indexed(&self) -> Result<()> {
        loop {
            self.inner.check()?;
            let done = {
                let st = self.inner.state.read();
                // Nothing is indexed once damage is found (see `Stats::damage`).
                self.inner.undamaged_in(&st)?;
                self.inner.graphs_loading.load(Ordering::Acquire) == 0
                    && !self.inner.scrubbing.load(Ordering::Acquire)
                    && st.layers.iter().all(|l| {
                        l.pending.iter().all(|s| !l.members.contains(s))
                            && (l.graph.is_none() || l.frozen.is_some())
                            && !needs_rebuild(l, &self.inner.config)
                    })
            };
            if done {
                return Ok(());
            }
            self.inner.index_wake.notify();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

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
                indexed: ls.indexed,
                // Without a frozen graph (a dump loading, a new graph not yet frozen) the
                // whole layer is searched exactly: all of it is pending.
                pending: if ls.frozen.is_some() {
                    ls.pending.iter().filter(|s| ls.members.contains(s)).count() as u64
                } else {
                    ls.members.len() as u64
                },
                tombstones: ls.tombstones,
                index_ready: ls.frozen.is_some(),
            };
        }
        Stats {
            last_seq: inner
                .log
                .read()
                .as_ref()
                .map(|l| l.last_seq())
                .unwrap_or(st.applied_seq),
            applied_seq: st.applied_seq,
            layers,
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

    /// Every event from `from_seq` on: history (archive and live log), then new events as
    /// they commit. The buffer is bounded: a subscriber that falls more than 4,096 events
    /// behind receives [`Error::Lagged`] with the sequence to resubscribe from, and the
    /// stream ends. Writers never wait for subscribers.
    pub fn subscribe(&self, from_seq: u64) -> Result<EventStream> {
        self.inner.check()?;
        let mut live = self.inner.events_tx.subscribe();
        let log = self.inner.log()?;
        let (tx, rx) = mpsc::channel(1024);
        std::thread::Builder::new()
            .name("magray-subscriber".into())
            .spawn(move || {
                let mut next = from_seq.max(1);
                // The History reads files on its own; holding the Log here would keep close()
                // waiting on a subscriber nobody reads.
                let history = log.history(next);
                drop(log);
                for env in history {
                    let item = env.map_err(Error::from);
                    let stop = item.is_err();
                    if let Ok(e) = &item {
                        next = e.seq + 1;
                    }
                    if tx.blocking_send(item).is_err() || stop {
                        return;
                    }
                }
                loop {
                    match live.blocking_recv() {
                        Ok(env) => {
                            if env.seq < next {
                                continue;
                            }
                            next = env.seq + 1;
                            if tx.blocking_send(Ok((*env).clone())).is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let _ = tx.blocking_send(Err(Error::Lagged { resume_from: next }));
                            return;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
            .map_err(|e| Error::io(&self.inner.dir, e))?;
        Ok(ReceiverStream::new(rx))
    }

    /// Every live record (optionally of one layer), in insertion order, including records
    /// past their TTL that no lifecycle run has expired yet (search and `get` hide those).
    /// For export, verification and tests; it copies every record. Fails with
    /// `Error::Corrupted` where a record's row in the snapshot's table is damaged (see
    /// `Stats::damage`).
    pub fn records(&self, layer: Option<Layer>) -> Result<Vec<Record>> {
        let st = self.inner.state.read();
        let all = st
            .records()
            .map(|(_, r)| r)
            .filter(|r| layer.is_none_or(|l| r.layer == l))
            .map(|r| r.to_record())
            .collect();
        self.inner.undamaged_in(&st)?;
        Ok(all)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        // Without close(): stop the background threads; the log closes when the last
        // reference goes. Nothing acknowledged is lost (it is in the log already).
        let threads = std::mem::take(&mut *self.threads.lock());
        if threads.is_empty() {
            return; // close() owns the shutdown
        }
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.index_wake.notify();
        self.inner.maint_wake.notify();
        // The threads stop within one batch; joining them here means the store lock is
        // released (with the last reference) by the time a drop returns.
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Moves a snapshot that must never be loaded (ahead of the log, or from another history)
/// out of the way, so that it is not picked up later; returns the report entry.
fn quarantine(path: &Path, why: String, config: &Config) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dst = path.with_file_name(format!("rejected-{name}-{}", config.clock.now_us()));
    tracing::warn!(snapshot = %path.display(), reason = %why, moved_to = %dst.display(), "snapshot set aside");
    let moved = match std::fs::rename(path, &dst) {
        Ok(()) => format!("; moved to {}", dst.display()),
        Err(e) => format!("; could not move it aside: {e}"),
    };
    (path.display().to_string(), format!("{why}{moved}"))
}

/// Why the snapshot at `seq` (committed at `ts_us`) does not belong to this log, if it does
/// not. Reads event `seq` from `delta` (a reader starting there), leaving it at `seq + 1`;
/// a snapshot at 0 has nothing to check (the reader then starts at 1).
fn timeline_mismatch(delta: &mut magray_wal::History, seq: u64, ts_us: u64) -> Option<String> {
    if seq == 0 {
        return None;
    }
    match delta.next() {
        Some(Ok(e)) if e.seq == seq && e.ts_us == ts_us => None,
        Some(Ok(e)) => Some(format!(
            "the log's event {} was committed at {} µs, the snapshot's at {ts_us} µs: a different history",
            e.seq, e.ts_us
        )),
        Some(Err(e)) => Some(format!("cannot read the log's event {seq} to check the snapshot: {e}")),
        None => Some(format!("the log has no event {seq}")),
    }
}

fn needs_rebuild(ls: &crate::projection::LayerState, c: &Config) -> bool {
    ls.graph.is_some()
        && ls.tombstones >= 256
        && ls.tombstones as f64 > c.rebuild_tombstone_ratio * ls.indexed as f64
}

/// Content keys held by one insert until its events are applied (or it fails).
struct Reservation {
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

impl Inner {
    fn guard(self: Arc<Self>, what: &str, f: impl FnOnce(&Arc<Inner>)) {
        let me = self.clone();
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&me))) {
            self.fail(format!(
                "the {what} thread panicked: {}",
                lifecycle_run::panic_text(e.as_ref())
            ));
        }
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "magray-memory stops accepting work");
        {
            let mut f = self.failure.lock();
            if f.is_none() {
                *f = Some(reason);
            }
        }
        // Wake every waiter (blocking and async) so it sees the failure.
        self.applied_cv.notify_all();
        self.applied_tx.send_modify(|_| {});
    }

    fn check(&self) -> Result<()> {
        if let Some(r) = self.failure.lock().clone() {
            return Err(Error::Poisoned(r));
        }
        if self.shutdown.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    fn log(&self) -> Result<Arc<Log>> {
        self.log.read().clone().ok_or(Error::Closed)
    }

    fn validate_text(&self, text: &str) -> Result<()> {
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

    fn require(&self, id: RecordId) -> Result<()> {
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
    async fn reserve(self: &Arc<Self>, keys: &[u64]) -> Result<Reservation> {
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

    /// Fails with the damage found after open in the snapshot's files, if any: nothing is
    /// committed once some of what it was decided from may have read as missing (a damaged
    /// row reads as no record, so an insert could duplicate it, or a delete miss it).
    fn undamaged(&self) -> Result<()> {
        self.undamaged_in(&self.state.read())
    }

    /// Commits the access statistics gathered since the last flush. Once damage is known
    /// nothing is committed (`undamaged`): they are then dropped, as a crash may drop them,
    /// and the store is not failed for them.
    fn commit_accesses(&self) -> Result<()> {
        let events = self.take_accesses();
        if events.is_empty() {
            return Ok(());
        }
        match self.commit_blocking(events) {
            Err(e) if self.state.read().damage().is_some() => {
                tracing::debug!(error = %e, "access statistics dropped: the store is damaged");
                Ok(())
            }
            done => done.map(|_| ()),
        }
    }

    /// [`Inner::undamaged`] with the state already read-locked by the caller.
    fn undamaged_in(&self, st: &Projections) -> Result<()> {
        match st.damage() {
            Some(e) => {
                self.note_damage(&e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Appends a batch and waits until it is applied. The append and the hand-off to the
    /// apply queue run in their own task, so a caller that gives up (drops the future)
    /// cannot leave a hole in the apply order.
    async fn commit(self: &Arc<Self>, events: Vec<Event>) -> Result<Appended> {
        self.commit_holding(events, None).await
    }

    /// [`Inner::commit`], holding `reserved` until the events are applied: the task owns it,
    /// so a caller that gives up cannot release its content keys while its insert is still
    /// on the way (a second insert of the same content would then miss it and duplicate it).
    async fn commit_holding(
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

    fn commit_blocking(&self, events: Vec<Event>) -> Result<Appended> {
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
    fn enqueue_apply(&self, at: Appended, events: Vec<Event>) {
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

    fn search(&self, query: &[f32], o: &SearchOptions) -> Result<Vec<SearchHit>> {
        if o.top_k == 0 || o.top_k > 100 {
            return Err(Error::InvalidTopK(o.top_k));
        }
        let q = normalise(query, self.config.dimension)?;
        let layers: &[Layer] = if o.layers.is_empty() {
            &Layer::ALL
        } else {
            &o.layers
        };
        let ef = o.ef_search.unwrap_or(self.config.hnsw.ef_search);
        if !(1..=crate::limits::MAX_EF).contains(&ef) {
            return Err(Error::InvalidInput(format!(
                "ef_search {ef} must be within 1..={}",
                crate::limits::MAX_EF
            )));
        }
        let now = self.config.clock.now_us();
        let (hits, damage): (Vec<SearchHit>, _) = {
            let st = self.state.read();
            let mut top = crate::util::TopK::new(o.top_k);
            for l in layers {
                let how = crate::projection::Probe {
                    ef,
                    // An explicit per-search ef is taken as given.
                    scale_ef: o.ef_search.is_none(),
                    exact_below: self.config.exact_search_below,
                    now_us: now,
                };
                st.search_layer(*l, &q, o, how, &mut top);
            }
            let hits: Vec<SearchHit> = top
                .into_sorted()
                .into_iter()
                .filter(|(s, _)| o.score_threshold.is_none_or(|t| *s >= t))
                .filter_map(|(score, slot)| {
                    st.live(slot).map(|r| SearchHit {
                        id: RecordId(r.id),
                        score,
                        layer: r.layer,
                        record: r.to_record(),
                    })
                })
                .collect();
            // A damaged vector block read as zeros, a damaged row as no record (see
            // `crate::vectors`, `RecordTable::row_ok`): this search's answer cannot be
            // trusted, nor any later one's. Checked after the results were read.
            let damage = st.damage();
            (hits, damage)
        };
        if let Some(e) = damage {
            self.note_damage(&e);
            return Err(e);
        }
        if o.record_access && !hits.is_empty() {
            self.record_access(Accessed {
                source: AccessSource::SearchHit,
                session: match &o.caller {
                    Some((s, _)) => s.clone(),
                    None => o.session.clone(),
                },
                project: match &o.caller {
                    Some((_, p)) => p.clone(),
                    None => o.project.clone(),
                },
                hits: hits
                    .iter()
                    .enumerate()
                    .map(|(rank, h)| Hit {
                        id: h.id.0,
                        rank: rank as u16,
                        score: h.score,
                    })
                    .collect(),
            });
        }
        Ok(hits)
    }

    fn record_access(&self, a: Accessed) {
        let n = a.hits.len() as u64;
        self.access_buf.lock().push(a);
        if self.access_hits.fetch_add(n, Ordering::Relaxed) + n
            >= self.config.access_flush_hits as u64
        {
            self.maint_wake.notify();
        }
    }

    fn take_accesses(&self) -> Vec<Event> {
        let buf = std::mem::take(&mut *self.access_buf.lock());
        self.access_hits.store(0, Ordering::Relaxed);
        buf.into_iter().map(Event::Accessed).collect()
    }

    fn maintenance(self: &Arc<Self>) {
        let tick = self
            .config
            .access_flush_interval
            .min(Duration::from_secs(1))
            .max(Duration::from_millis(1));
        let mut last_flush = Instant::now();
        let mut retry_at = Instant::now();
        while !self.shutdown.load(Ordering::Acquire) {
            self.maint_wake.wait(tick);
            if self.shutdown.load(Ordering::Acquire) || self.failure.lock().is_some() {
                break;
            }
            let due = last_flush.elapsed() >= self.config.access_flush_interval
                || self.access_hits.load(Ordering::Relaxed) >= self.config.access_flush_hits as u64;
            if due {
                last_flush = Instant::now();
                if let Err(e) = self.commit_accesses() {
                    self.fail(format!("writing access statistics: {e}"));
                    break;
                }
            }
            if Instant::now() >= retry_at && self.checkpoint_due() {
                if let Err(e) = self.checkpoint_blocking() {
                    // A failed snapshot loses nothing (the log has it all); retry later.
                    tracing::warn!(error = %e, "automatic checkpoint failed; retrying in 30 s");
                    retry_at = Instant::now() + Duration::from_secs(30);
                }
            }
        }
    }

    /// Whether the graphs gained enough points since the latest snapshot to be worth one.
    fn graphs_changed(&self, snap: &SnapState) -> bool {
        self.graph_points
            .load(Ordering::Acquire)
            .saturating_sub(snap.graph_points)
            >= GRAPH_ONLY_CHECKPOINT_POINTS
    }

    fn checkpoint_due(&self) -> bool {
        let applied = *self.applied_tx.borrow();
        let snap = self.snap.lock();
        let since = applied.saturating_sub(snap.covered_seq);
        let graphs_changed = self.graphs_changed(&snap);
        if since == 0 && !graphs_changed {
            return false;
        }
        (self.config.checkpoint_every > 0 && since >= self.config.checkpoint_every)
            || (!self.config.checkpoint_interval.is_zero()
                && snap.at.elapsed() >= self.config.checkpoint_interval)
    }

    fn checkpoint_blocking(&self) -> Result<u64> {
        self.checkpoint_then(true)
    }

    /// Waits until what open mapped unread (vector chunks, the record table, the key index) is
    /// checked (the indexer's scrub), then fails with the damage found, if any. Whatever writes a
    /// decision taken from vectors or records to the log or to a snapshot calls this first.
    fn snapshot_checked(&self) -> Result<()> {
        while self.scrubbing.load(Ordering::Acquire) {
            self.check()?;
            std::thread::sleep(Duration::from_millis(5));
        }
        self.undamaged()
    }

    /// A checkpoint; `repoint`: then point the records at the new snapshot's table (not worth
    /// it when the store is closing).
    fn checkpoint_then(&self, repoint: bool) -> Result<u64> {
        // One checkpoint at a time; the snap mutex is held throughout.
        let mut snap = self.snap.lock();
        let unchanged = |snap: &SnapState| {
            let applied = self.state.read().applied_seq;
            (applied == snap.covered_seq
                && self.model().version == snap.model_version
                && !self.graphs_changed(snap))
            .then(|| snap.latest.as_ref().map(|(s, _)| *s).unwrap_or(0))
        };
        self.undamaged()?;
        // Nothing to write (an idle open and close): no need to wait for the loads below.
        if let Some(seq) = unchanged(&snap) {
            return Ok(seq);
        }
        while self.graphs_loading.load(Ordering::Acquire) > 0 {
            if let Some(r) = self.failure.lock().clone() {
                return Err(Error::Poisoned(r));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // A snapshot would link a damaged chunk again: refuse, so that the snapshots kept
        // (and the log floor) stay as they are until a reopen has checked them.
        self.snapshot_checked()?;
        let model = self.model();
        let model_version = model.version;
        if let Some(seq) = unchanged(&snap) {
            return Ok(seq);
        }
        let applied = self.state.read().applied_seq;
        if snap.latest.as_ref().is_some_and(|(s, _)| *s == applied) {
            // The latest snapshot's marker never reached the log (a crash or a failed commit
            // right after its rename), and no event came since: only the graphs or the model
            // changed. Write the marker now, so this snapshot gets a sequence of its own
            // instead of replacing that directory in place.
            let at = self.commit_blocking(vec![Event::Checkpointed {
                snapshot_seq: applied,
            }])?;
            snap.covered_seq = covered_by_marker(applied, &at);
        }
        let root = self.dir.join("snapshots");
        let (cap_seq, written, points) = {
            let idx = self.index_lock.lock();
            let points = self.graph_points.load(Ordering::Acquire);
            let mut cap = {
                let st = self.state.read();
                let cap = Capture::take(&st);
                // A row that read as no record would be missing from this snapshot.
                self.undamaged_in(&st)?;
                cap
            };
            cap.model = Some(model).filter(|m| m.version > 0).map(|m| (*m).clone());
            let seq = cap.seq;
            let mut w = Writer::begin(&root, seq)?;
            w.dump_graphs(&mut cap)?;
            drop(idx);
            let prev = snap.latest.as_ref().map(|(_, p)| p.clone());
            let written = w.finish(
                cap,
                prev.as_deref(),
                &snap.known_chunks,
                self.config.clock.now_us(),
            )?;
            (seq, written, points)
        };
        let dst = written.dir;
        // The record table just written is read back and checked as a load checks it. A
        // failure fails the checkpoint before anything depends on this snapshot (no marker,
        // nothing pruned, the log floor unchanged; the next open reports and skips it).
        let table = records::load(&dst, &written.records, written.nslots)?;
        if let Some(name) = written.new_chunk {
            self.state.write().vectors.adopt_chunk(&dst.join(name))?;
            // Not at close: the graphs are about to be dropped.
            if repoint {
                self.share_maps();
            }
        }
        if repoint {
            self.repoint_records(&table);
        }
        drop(table);
        snap.known_chunks = written
            .chunks
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        snap.latest = Some((cap_seq, dst));
        snap.at = Instant::now();
        snap.model_version = model_version;
        snap.graph_points = points;
        #[cfg(test)]
        while HOLD_CHECKPOINT_MARKERS.lock().contains(&self.dir) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = self.commit_blocking(vec![Event::Checkpointed {
            snapshot_seq: cap_seq,
        }])?;
        snap.covered_seq = covered_by_marker(cap_seq, &at);
        // Keep the newest K snapshots; the log keeps (at least) what the oldest needs.
        let all = snapshot::list(&root)?;
        for (_, p) in all.iter().skip(self.config.snapshots_keep) {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
        if let Some((oldest, _)) = all.iter().take(self.config.snapshots_keep).next_back() {
            self.log()?.set_retention_floor(*oldest)?;
        }
        // Published last: stats() names a snapshot only once its checkpoint (pruning included)
        // is done, so a reader never sees the new snapshot beside ones about to be removed.
        *self.snap_info.lock() = (Some(cap_seq), snap.covered_seq);
        Ok(cap_seq)
    }

    /// Points every record a new snapshot's record `table` holds at its row: a record
    /// unchanged since becomes that row (16 bytes in memory), the body of any other leaves
    /// the heap for the mapped file (page cache, which the kernel can evict), and the table
    /// an older snapshot had stops being used, so its file is released once that snapshot is
    /// pruned. A body never changes, and a row is used only for the record with its id. 64k
    /// rows per hold of the write lock; what is replaced is dropped after it is released
    /// (the frees, and the unmapping of an old table).
    fn repoint_records(&self, table: &Arc<RecordTable>) {
        let mut old = Replaced::default();
        let t = self.state.write().repoint_begin(table, &mut old);
        drop(old);
        let rows = table.len();
        let mut row = 0;
        while row < rows {
            let end = rows.min(row.saturating_add(65_536));
            let mut old = Replaced::default();
            self.state.write().repoint(table, t, row..end, &mut old);
            drop(old);
            row = end;
        }
        let mut old = Replaced::default();
        self.state.write().repoint_end(&mut old);
        drop(old);
    }

    /// An empty graph for `layer`, reading the vectors `mapped` holds from there.
    fn new_graph(&self, layer: Layer, mapped: crate::disk::vectors::Vectors) -> HnswBuilder {
        let h = self.config.hnsw;
        // Seeded per layer: the same records inserted in the same order make the same graph.
        let seed = 0x4d47_5259_0000_0000 | layer.index() as u64;
        let mut g = HnswBuilder::new(self.config.dimension, h.m, h.ef_construction, seed);
        g.share(mapped);
        g
    }

    /// After a checkpoint mapped a new vector chunk: every graph reads those vectors from the
    /// map and drops its copies of them.
    fn share_maps(&self) {
        let _idx = self.index_lock.lock();
        let (mapped, graphs) = {
            let st = self.state.read();
            let graphs: Vec<_> = st.layers.iter().filter_map(|l| l.graph.clone()).collect();
            (st.vectors.mapped_part(), graphs)
        };
        for g in graphs {
            g.lock().share(mapped.mapped_part());
        }
    }

    /// Gives a loaded graph dump its vectors: the store's maps for the slots they hold, else
    /// copies from the store by slot, 64k nodes per read lock (so writers are not held up).
    fn attach_vectors(&self, mut g: HnswBuilder, dir: &Path, base: &str) -> Result<HnswBuilder> {
        // The snapshot's own slots are all mapped: nothing to copy but what is not.
        g.share(self.state.read().vectors.mapped_part());
        while !g.vectors_missing().is_empty() {
            let st = self.state.read();
            let nslots = st.nslots();
            g.fill_vectors(1 << 16, |slot| {
                (slot < nslots).then(|| st.vectors.get(slot))
            })
            .map_err(|slot| {
                Error::corrupted(
                    snapshot::graph_path(dir, base),
                    0,
                    format!("the graph holds slot {slot}, which the store does not have"),
                )
            })?;
        }
        Ok(g)
    }

    /// Makes a graph just read from a dump searchable before its vectors are attached:
    /// freezes it from the store's mapped vectors, outside the projections' lock, and
    /// installs that frozen copy (replacing the dump searched in place). False (nothing
    /// installed) when the graph names a slot that is not mapped; `attach_vectors` then
    /// decides.
    fn freeze_loaded(&self, layer: Layer, g: &HnswBuilder) -> bool {
        let mapped = self.state.read().vectors.mapped_part();
        if g.slots().iter().any(|s| *s >= mapped.len()) {
            return false;
        }
        let frozen = Arc::new(g.freeze_with(|node| mapped.get(g.slots()[node])));
        let _idx = self.index_lock.lock();
        install_graph(
            &mut self.state.write().layers[layer.index()],
            g.slots(),
            frozen,
        );
        true
    }

    /// Notes damage found in the vector chunks: logged, and marked in the store (once) so
    /// that the next open checks every snapshot file in full.
    fn note_damage(&self, e: &Error) {
        if self.damage_noted.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(error = %e, "damaged snapshot file: reads, writes and checkpoints fail until the store is reopened (the next open checks every snapshot file and replays the log past a damaged snapshot)");
        if let Err(err) = write_damage_mark(&self.dir.join("snapshots"), e) {
            tracing::error!(error = %err, "could not mark the store as damaged");
        }
    }

    /// Checks every row a slot names in the record `tables` mapped unread (their blocks were
    /// checked before), 16k slots per hold of the read lock; then marks the tables checked.
    fn scrub_rows(&self, tables: &[Arc<RecordTable>], stop: &dyn Fn() -> bool) -> Result<()> {
        if !tables.iter().any(|t| t.unchecked()) {
            return Ok(());
        }
        let mut next = Some(0);
        while let Some(from) = next {
            if stop() {
                return Ok(());
            }
            let st = self.state.read();
            next = st.check_rows(from, 16_384);
            if let Some(e) = st.damage() {
                return Err(e);
            }
        }
        for t in tables {
            t.set_rows_checked();
        }
        Ok(())
    }

    fn indexer(self: &Arc<Self>, dumps: Option<Dumps>) {
        #[cfg(test)]
        while HOLD_DUMP_LOADS.lock().contains(&self.dir) && !self.shutdown.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every block of the chunks mapped at open is checked before the graphs read them,
        // and every row of a record table mapped unread, and the key index.
        let (mapped, tables, keys) = {
            let st = self.state.read();
            (st.vectors.mapped_part(), st.record_tables(), st.key_index())
        };
        let stop = || self.shutdown.load(Ordering::Acquire);
        let scrubbed = mapped
            .scrub(&stop)
            .and_then(|_| tables.iter().try_for_each(|t| t.scrub_blocks(&stop)))
            .and_then(|_| self.scrub_rows(&tables, &stop))
            .and_then(|_| keys.scrub(&stop));
        drop((mapped, tables, keys));
        if self.shutdown.load(Ordering::Acquire) {
            // A dropped handle: nobody waits for the rest (close() checkpoints, which waits for
            // the scrub, before shutting down).
            return;
        }
        self.scrubbing.store(false, Ordering::Release);
        if let Err(e) = scrubbed {
            self.note_damage(&e);
            // Nothing is indexed from damaged vectors; searches fail until a reopen.
            if let Some((_, _, list)) = &dumps {
                self.graphs_loading
                    .fetch_sub(list.len() as u64, Ordering::AcqRel);
            }
            while !self.shutdown.load(Ordering::Acquire) {
                self.index_wake.wait(Duration::from_millis(200));
            }
            return;
        }
        if let Some((dir, manifest, list)) = dumps {
            for (layer, base, mapped) in list {
                if self.shutdown.load(Ordering::Acquire) {
                    // A dropped handle stops here instead of loading dumps nobody will use
                    // (close() checkpoints, which waits for the loads, before shutting down).
                    self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
                let mut early = false;
                // A dump mapped at open: every block checked before it is read in full.
                let loaded = mapped
                    .as_ref()
                    .map(|g| g.checked_bytes())
                    .transpose()
                    .and_then(|checked| {
                        snapshot::load_graph(&dir, &manifest, &base, self.config.dimension, checked)
                    });
                // Searches hold it while it is installed; this thread no longer needs the map
                // (once replaced, the dump is unmapped before the vectors are attached).
                drop(mapped);
                let res = loaded.and_then(|mut g| {
                    g.set_ef_construction(self.config.hnsw.ef_construction);
                    early = self.freeze_loaded(layer, &g);
                    self.attach_vectors(g, &dir, &base)
                });
                let _idx = self.index_lock.lock();
                let mut st = self.state.write();
                let ls = &mut st.layers[layer.index()];
                match res {
                    Ok(g) => {
                        set_index_slots(ls, g.slots());
                        ls.graph = Some(Arc::new(parking_lot::Mutex::new(g)));
                        if !early && !ls.frozen.as_ref().is_some_and(|f| f.in_place()) {
                            ls.frozen = None;
                            ls.unfrozen.clear();
                        }
                        // Else the early copy stays: nothing was inserted since it was taken
                        // (this thread is the only one that inserts). A dump searched in place
                        // stays until `maybe_freeze` below replaces it.
                    }
                    Err(e) => {
                        let why = e.to_string();
                        tracing::warn!(layer = %layer, reason = %why, "HNSW dump unusable; rebuilding the index");
                        self.report.lock().index_rebuilds.push((layer, why));
                        ls.in_index.clear();
                        ls.indexed = 0;
                        ls.tombstones = 0;
                        ls.frozen = None;
                        ls.unfrozen.clear();
                    }
                }
                ls.recompute_pending();
                drop(st);
                drop(_idx);
                self.maybe_freeze(layer);
                self.graphs_loading.fetch_sub(1, Ordering::AcqRel);
            }
        }
        while !self.shutdown.load(Ordering::Acquire) {
            let mut worked = false;
            for layer in Layer::ALL {
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let bit = 1u8 << layer.index();
                let forced = self.force_rebuild.load(Ordering::Acquire) & bit != 0;
                let rebuild =
                    forced || needs_rebuild(&self.state.read().layers[layer.index()], &self.config);
                if rebuild {
                    self.rebuild(layer);
                    if forced {
                        self.force_rebuild.fetch_and(!bit, Ordering::AcqRel);
                    }
                    worked = true;
                    continue;
                }
                worked |= self.index_some(layer);
                worked |= self.maybe_freeze(layer);
            }
            if !worked {
                self.index_wake.wait(Duration::from_millis(200));
            }
        }
    }

    /// Inserts up to `index_batch` pending vectors of a layer into its graph.
    fn index_some(&self, layer: Layer) -> bool {
        let _idx = self.index_lock.lock();
        let (graph, fresh, consumed, batch) = {
            let st = self.state.read();
            let ls = &st.layers[layer.index()];
            if ls.pending.is_empty() {
                return false;
            }
            let mut batch = Vec::new();
            let mut consumed = 0;
            for &slot in &ls.pending {
                if batch.len() >= self.config.index_batch {
                    break;
                }
                consumed += 1;
                let live = st.live(slot).is_some_and(|r| r.layer == layer);
                if live && !ls.in_index.get(slot) && !batch.iter().any(|(s, _)| *s == slot) {
                    batch.push((slot, st.vectors.get(slot).to_vec()));
                }
            }
            let (graph, fresh) = match &ls.graph {
                Some(g) => (g.clone(), false),
                None => (
                    Arc::new(parking_lot::Mutex::new(
                        self.new_graph(layer, st.vectors.mapped_part()),
                    )),
                    true,
                ),
            };
            (graph, fresh, consumed, batch)
        };
        {
            let mut g = graph.lock();
            for (slot, v) in &batch {
                g.insert(*slot, v);
            }
        }
        let mut st = self.state.write();
        let ls = &mut st.layers[layer.index()];
        ls.pending.drain(..consumed);
        for (slot, _) in &batch {
            ls.in_index.set(*slot);
            if !ls.members.contains(slot) {
                ls.tombstones += 1; // died while we were inserting it
            }
        }
        ls.indexed += batch.len() as u64;
        self.graph_points
            .fetch_add(batch.len() as u64, Ordering::AcqRel);
        if ls.frozen.is_some() {
            ls.unfrozen.extend(batch.iter().map(|(s, _)| *s));
        }
        if fresh && !batch.is_empty() {
            ls.graph = Some(graph);
        }
        true
    }

    /// Takes a new frozen copy of a layer's graph (the copy searches run on) when there is none
    /// or when the points inserted since the last one cost searches too much exact scanning:
    /// more than 1/32 of the graph (at least 1,024) while indexing, or, once the layer has
    /// caught up, more than 1/1,024 of it (at least 64). True if it froze.
    fn maybe_freeze(&self, layer: Layer) -> bool {
        let _idx = self.index_lock.lock();
        let graph = {
            let st = self.state.read();
            let ls = &st.layers[layer.index()];
            let Some(g) = &ls.graph else {
                return false;
            };
            let due = match &ls.frozen {
                None => true,
                Some(f) if f.in_place() => true,
                Some(_) => {
                    let n = ls.unfrozen.len() as u64;
                    n >= (ls.indexed / 32).max(1024)
                        || (ls.pending.is_empty() && n >= (ls.indexed / 1024).max(64))
                }
            };
            if !due {
                return false;
            }
            g.clone()
        };
        // The index lock keeps the indexer (this thread) from inserting while we copy.
        let frozen = Arc::new(graph.lock().freeze());
        let mut st = self.state.write();
        let ls = &mut st.layers[layer.index()];
        if ls.graph.as_ref().is_some_and(|g| Arc::ptr_eq(g, &graph)) {
            ls.frozen = Some(frozen);
            ls.unfrozen.clear();
        }
        true
    }

    /// Builds a fresh graph of a layer's live records beside the old one, then swaps.
    fn rebuild(&self, layer: Layer) {
        // Ascending slot order (the set iterates in it).
        let members: Vec<u32> = self.state.read().layers[layer.index()]
            .members
            .iter()
            .collect();
        tracing::info!(layer = %layer, records = members.len(), "rebuilding HNSW index (tombstones over threshold)");
        let mut graph = self.new_graph(layer, self.state.read().vectors.mapped_part());
        for chunk in members.chunks(self.config.index_batch) {
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let vs: Vec<(u32, Vec<f32>)> = {
                let st = self.state.read();
                // A checkpoint during the rebuild mapped more vectors: read those from the map
                // too (this graph is not yet in the state, where `share_maps` finds graphs).
                graph.share(st.vectors.mapped_part());
                chunk
                    .iter()
                    .map(|s| (*s, st.vectors.get(*s).to_vec()))
                    .collect()
            };
            for (s, v) in &vs {
                graph.insert(*s, v);
            }
        }
        let frozen = (!members.is_empty())
            .then(|| Arc::new(graph.freeze()) as Arc<dyn crate::index::frozen::SearchGraph>);
        let _idx = self.index_lock.lock();
        graph.share(self.state.read().vectors.mapped_part());
        let mut st = self.state.write();
        let ls = &mut st.layers[layer.index()];
        ls.frozen = frozen;
        ls.unfrozen.clear();
        ls.in_index.clear();
        for s in &members {
            ls.in_index.set(*s);
        }
        ls.indexed = members.len() as u64;
        ls.tombstones = members.iter().filter(|s| !ls.members.contains(s)).count() as u64;
        // An empty layer keeps no graph (and dumps none).
        ls.graph = (!members.is_empty()).then(|| Arc::new(parking_lot::Mutex::new(graph)));
        ls.recompute_pending();
        self.graph_points
            .fetch_add(members.len() as u64, Ordering::AcqRel);
    }

    fn close_blocking(self: Arc<Self>, threads: Vec<JoinHandle<()>>) -> Result<()> {
        let mut result = Ok(());
        if self.failure.lock().is_none() {
            // Dropped on damage: the checkpoint below reports it.
            result = self.commit_accesses();
            if result.is_ok() && self.config.checkpoint_on_close {
                result = match self.checkpoint_then(false) {
                    // Reported already (the mark, the log, searches); the next open recovers.
                    Err(e) if self.damage_noted.load(Ordering::Acquire) => {
                        tracing::warn!(error = %e, "no snapshot at close: a snapshot file is damaged");
                        Ok(())
                    }
                    r => r.map(|_| ()),
                };
            }
        }
        self.shutdown.store(true, Ordering::Release);
        self.index_wake.notify();
        self.maint_wake.notify();
        self.lifecycle_wake.notify();
        for t in threads {
            let _ = t.join();
        }
        let bg = std::mem::take(&mut *self.bg_threads.lock());
        for t in bg {
            let _ = t.join();
        }
        let log = self.log.write().take();
        if let Some(mut log) = log {
            // Subscribers reading history hold the log briefly; wait for them (bounded).
            let deadline = Instant::now() + Duration::from_secs(10);
            let log = loop {
                match Arc::try_unwrap(log) {
                    Ok(l) => break Some(l),
                    Err(l) if Instant::now() < deadline => {
                        log = l;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break None,
                }
            };
            if let Some(l) = log {
                let r = l.close().map_err(Error::from);
                if result.is_ok() {
                    result = r;
                }
            }
        }
        if let Some(r) = self.failure.lock().clone() {
            if result.is_ok() {
                result = Err(Error::Poisoned(r));
            }
        }
        result
    }
}

/// What a snapshot at `snapshot_seq` covers once its `Checkpointed` marker is `at`: up to the
/// marker when the marker directly follows it, else only up to itself (events that committed
/// while the snapshot was written are in the log only, and the next checkpoint must not be
/// skipped as if nothing had happened).
fn covered_by_marker(snapshot_seq: u64, at: &Appended) -> u64 {
    if at.first_seq == snapshot_seq + 1 {
        at.last_seq
    } else {
        snapshot_seq
    }
}

/// Makes `graph`, which holds `slots`, the one a layer's searches walk: its slots are what is
/// in the index, nothing is searched exactly beside it but the records it lacks.
fn install_graph(
    ls: &mut crate::projection::LayerState,
    slots: &[u32],
    graph: Arc<dyn crate::index::frozen::SearchGraph>,
) {
    set_index_slots(ls, slots);
    ls.frozen = Some(graph);
    ls.unfrozen.clear();
    ls.recompute_pending();
}

/// Marks `slots` (a graph's own slot list) as what is in a layer's index, with its count and
/// tombstones.
fn set_index_slots(ls: &mut crate::projection::LayerState, slots: &[u32]) {
    ls.in_index.clear();
    for s in slots {
        ls.in_index.set(*s);
    }
    ls.indexed = slots.len() as u64;
    ls.tombstones = slots.iter().filter(|s| !ls.members.contains(s)).count() as u64;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn record(i: usize) -> NewRecord {
        NewRecord::new(format!("record {i}"), vec![1.0, i as f32, 0.5, 0.0])
    }

    /// A checkpoint's marker can land after other events (they commit while the snapshot is
    /// written). The snapshot does not hold those: the close must still write one, or the next
    /// open replays them (and an idle-looking store never checkpoints them).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_committed_while_a_checkpoint_is_written_are_not_taken_as_covered() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let config = Config {
            dimension: 4,
            checkpoint_every: 0,
            checkpoint_interval: Duration::ZERO,
            ..Config::default()
        };
        let m = Arc::new(Memory::open(&dir, config.clone()).await.unwrap());
        for i in 0..3 {
            m.insert(record(i)).await.unwrap();
        }
        let snap_seq = m.stats().last_seq;
        HOLD_CHECKPOINT_MARKERS.lock().push(dir.clone());
        let held = {
            let m = m.clone();
            tokio::spawn(async move { m.checkpoint().await })
        };
        let snapshots = dir.join("snapshots");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !snapshot::list(&snapshots)
            .unwrap()
            .iter()
            .any(|(s, _)| *s == snap_seq)
        {
            assert!(
                Instant::now() < deadline,
                "the checkpoint never renamed its snapshot"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The snapshot is in place, its marker not yet written: two inserts land before it.
        for i in 3..5 {
            m.insert(record(i)).await.unwrap();
        }
        HOLD_CHECKPOINT_MARKERS.lock().retain(|d| *d != dir);
        assert_eq!(held.await.unwrap().unwrap(), snap_seq);
        let st = m.stats();
        assert_eq!(st.last_seq, snap_seq + 3, "two inserts, then the marker");
        assert_eq!(st.last_snapshot_seq, Some(snap_seq));
        assert_eq!(
            st.events_since_snapshot, 3,
            "the inserts are in no snapshot"
        );
        Arc::try_unwrap(m).ok().unwrap().close().await.unwrap();

        // The close wrote a snapshot holding them: the reopen replays only its marker.
        let m = Memory::open(&dir, config).await.unwrap();
        let st = m.stats();
        assert_eq!(st.open.snapshot_seq, Some(snap_seq + 3));
        assert_eq!(st.open.replayed_events, 1);
        assert_eq!(st.layers.iter().map(|l| l.records).sum::<u64>(), 5);
        m.close().await.unwrap();
    }
}
