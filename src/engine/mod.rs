//! The `Memory` handle: the async API, the ordered apply path, and the background threads
//! (indexer; maintenance: access flush and automatic checkpoints; lifecycle), each job in a
//! file of its own.

use crate::config::Config;
use crate::disk::files::FileEntry;
use crate::disk::records::{self, RecordTable};
use crate::disk::store_files::{lock_store, StoreManifest};
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

mod checkpoint;
mod close;
mod damage;
mod events;
mod indexer;
mod lifecycle_run;
mod open;
mod search;
mod stats;
mod write;

use damage::write_damage_mark;
use indexer::install_graph;
pub use stats::Stats;
use write::normalise;

use crate::lifecycle::{EvalConfig, EvalReport, LifecycleReport, PromoterModel};
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

/// A snapshot's directory, manifest and the HNSW dump it holds (basename, the dump mapped to
/// search in place if open could).
type Dumps = (
    PathBuf,
    snapshot::ManifestBody,
    Option<(String, Option<Arc<MappedGraph>>)>,
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
    /// Points inserted into the graph since open (a rebuild counts all of its own).
    graph_points: AtomicU64,
    /// `optimize()` asked for the index to be rebuilt.
    force_rebuild: AtomicBool,
    report: Mutex<OpenReport>,
    /// The promoter model in use (the default until one is trained or loaded).
    model: RwLock<Arc<PromoterModel>>,
    /// One lifecycle run at a time.
    lifecycle_lock: Mutex<()>,
    last_lifecycle: Mutex<Option<LifecycleReport>>,
    training: AtomicBool,
    /// Short-lived background threads (training), joined at close.
    bg_threads: Mutex<Vec<JoinHandle<()>>>,
    _lock: Arc<magray_wal::StoreLock>,
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

impl Memory {
    fn batcher(&self) -> Result<&crate::embed::Batcher> {
        self.embedder.as_ref().ok_or_else(|| {
            Error::Config(
                "this store was opened without an embedder; use Memory::open_with_embedder \
                 or supply embeddings"
                    .into(),
            )
        })
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn log(&self) -> Result<Arc<Log>> {
        self.log.read().clone().ok_or(Error::Closed)
    }
}

#[cfg(test)]
mod tests;
