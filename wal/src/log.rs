//! The log handle: open (with recovery), group-committed appends, checkpoints, history.

use crate::backend::faulty::FaultyBackend;
use crate::backend::okay::OkayBackend;
use crate::backend::shared::{Retention, Shared};
use crate::backend::LogBackend;
use crate::backend::OutFrame;
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::frame::{version_info, Payload};
use crate::history::History;
use crate::recovery::{self, RecoveryMode, RecoveryReport};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot, watch};

/// Log configuration. `dir` holds `wal/` (live segments), `archive/` and `salvage/`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Root directory of the log.
    pub dir: PathBuf,
    /// Size each segment is preallocated to; it is archived after 3/4 of it is written.
    /// Default 8 MiB.
    pub segment_bytes: u32,
    /// Group commit stops adding callers to one entry past this many bytes. Default 4 MiB.
    pub max_entry_bytes: usize,
    /// Callers that may queue before `append` waits (back-pressure). Default 4096.
    pub queue_depth: usize,
    /// Damage policy at open.
    pub recovery: RecoveryMode,
    /// Archive retention. Default: keep everything.
    pub retention: Retention,
    /// Time source for event timestamps.
    pub clock: Arc<dyn Clock>,
    /// The store lock (`<dir>/LOCK`) when the caller already holds it (the engine does).
    /// `None`: [`Log::open`] takes it, and fails with [`Error::Locked`] while another handle
    /// has it.
    pub lock: Option<Arc<crate::StoreLock>>,
    /// Test-only fault injection.
    #[doc(hidden)]
    pub faults: Option<Arc<crate::backend::faulty::FaultPlan>>,
}

impl LogConfig {
    /// Defaults for a log rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LogConfig {
            dir: dir.into(),
            segment_bytes: 8 << 20,
            max_entry_bytes: 4 << 20,
            queue_depth: 4096,
            recovery: RecoveryMode::default(),
            retention: Retention::default(),
            clock: Arc::new(SystemClock),
            lock: None,
            faults: None,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.segment_bytes < 64 << 10 {
            return Err(Error::Config(format!(
                "segment_bytes {} is below the 64 KiB minimum",
                self.segment_bytes
            )));
        }
        if self.queue_depth == 0 {
            return Err(Error::Config("queue_depth must be at least 1".into()));
        }
        if self.max_entry_bytes == 0 {
            return Err(Error::Config("max_entry_bytes must be at least 1".into()));
        }
        Ok(())
    }
}

/// Where an appended batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Sequence of the first event of the batch.
    pub first_seq: u64,
    /// Sequence of the last event.
    pub last_seq: u64,
    /// Commit timestamp shared by the batch (µs since the Unix epoch).
    pub ts_us: u64,
}

struct Request {
    payload: Payload,
    reply: oneshot::Sender<Result<Appended>>,
}

/// The append-only event log. Cheap to share behind an `Arc`; all methods take `&self`.
///
/// Appends from any number of threads and tasks are group-committed by one writer thread:
/// each round drains every queued caller into one okaywal entry, fsyncs once, then answers
/// them all. A call returns only after the fsync that covers its batch.
pub struct Log {
    tx: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    backend: Option<Arc<dyn LogBackend>>,
    shared: Arc<Shared>,
    durable: Arc<AtomicU64>,
    durable_rx: watch::Receiver<u64>,
    report: RecoveryReport,
    dir: PathBuf,
    _lock: Arc<crate::StoreLock>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

impl Log {
    /// Opens (creating if needed) the log, running recovery first.
    pub fn open(config: LogConfig) -> Result<Log> {
        config.validate()?;
        let lock = match &config.lock {
            Some(l) => l.clone(),
            None => {
                crate::fsutil::create_dir_durable(&config.dir)?;
                Arc::new(crate::StoreLock::acquire(&config.dir)?)
            }
        };
        let wal_dir = config.dir.join("wal");
        let archive_dir = config.dir.join("archive");
        let info = version_info();
        let report = recovery::recover(
            &wal_dir,
            &archive_dir,
            &config.dir.join("salvage"),
            &info,
            config.recovery,
        )?;
        let shared = Arc::new(Shared::new(
            wal_dir.clone(),
            archive_dir,
            info,
            config.retention,
            config.clock.clone(),
            report.archived_last_seq,
        ));
        let mut backend: Arc<dyn LogBackend> = Arc::new(
            OkayBackend::open(&wal_dir, config.segment_bytes, shared.clone())
                .map_err(|e| Error::io(&wal_dir, e))?,
        );
        if let Some(plan) = &config.faults {
            backend = Arc::new(FaultyBackend {
                inner: backend,
                plan: plan.clone(),
            });
        }
        let durable = Arc::new(AtomicU64::new(report.last_seq));
        let (durable_tx, durable_rx) = watch::channel(report.last_seq);
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let writer = {
            let state = WriterState {
                backend: backend.clone(),
                shared: shared.clone(),
                durable: durable.clone(),
                durable_tx,
                next_seq: report.last_seq + 1,
                last_ts: report.last_ts_us,
                clock: config.clock.clone(),
                max_entry_bytes: config.max_entry_bytes,
            };
            std::thread::Builder::new()
                .name("magray-wal-writer".into())
                .spawn(move || state.run(rx))
                .map_err(|e| Error::io(&config.dir, e))?
        };
        Ok(Log {
            tx: Some(tx),
            writer: Some(writer),
            backend: Some(backend),
            shared,
            durable,
            durable_rx,
            report,
            dir: config.dir,
            _lock: lock,
        })
    }

    /// What recovery found when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Root directory of the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Last durable sequence (0 if the log is empty).
    pub fn last_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Last sequence copied to the archive.
    pub fn archived_last_seq(&self) -> u64 {
        self.shared.lock().archived_last_seq
    }

    /// Archive files written since open (including ones found already written).
    pub fn archives_written(&self) -> u64 {
        self.shared.lock().archives_written
    }

    /// Watches the last durable sequence (for subscribers and indexers).
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable_rx.clone()
    }

    /// Why the log is poisoned, if it is.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.failure()
    }

    #[allow(clippy::type_complexity)]
    fn request(
        &self,
        events: Vec<Event>,
    ) -> Result<(Request, oneshot::Receiver<Result<Appended>>, Vec<Event>)> {
        if let Some(reason) = self.shared.failure() {
            return Err(Error::Poisoned { reason });
        }
        // Serialise and checksum here, on the caller's thread, not in the writer.
        let (payload, events) = Payload::encode_keep(events)?;
        let (reply, rx) = oneshot::channel();
        Ok((Request { payload, reply }, rx, events))
    }

    fn poisoned_or_closed(&self) -> Error {
        match self.shared.failure() {
            Some(reason) => Error::Poisoned { reason },
            None => Error::Closed,
        }
    }

    /// Appends one atomic batch from a plain thread; returns once it is durable.
    /// Must not be called from inside an async runtime (use [`Log::append_async`]).
    pub fn append(&self, events: Vec<Event>) -> Result<Appended> {
        self.append_keep(events).map(|(at, _)| at)
    }

    /// [`Log::append`], handing the events back once they are durable.
    pub fn append_keep(&self, events: Vec<Event>) -> Result<(Appended, Vec<Event>)> {
        let (req, rx, events) = self.request(events)?;
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        tx.blocking_send(req)
            .map_err(|_| self.poisoned_or_closed())?;
        let at = rx
            .blocking_recv()
            .map_err(|_| self.poisoned_or_closed())??;
        Ok((at, events))
    }

    /// Appends one atomic batch from async code; resolves once it is durable.
    pub async fn append_async(&self, events: Vec<Event>) -> Result<Appended> {
        self.append_keep_async(events).await.map(|(at, _)| at)
    }

    /// [`Log::append_async`], handing the events back once they are durable.
    pub async fn append_keep_async(&self, events: Vec<Event>) -> Result<(Appended, Vec<Event>)> {
        let (req, rx, events) = self.request(events)?;
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        tx.send(req).await.map_err(|_| self.poisoned_or_closed())?;
        let at = rx.await.map_err(|_| self.poisoned_or_closed())??;
        Ok((at, events))
    }

    /// Archives the active segment now and waits until everything durable at the time of
    /// the call is in `archive/` (used by backups, and by tests).
    pub fn checkpoint(&self) -> Result<()> {
        let target = self.last_seq();
        let mut st = self.shared.lock();
        if st.archived_last_seq >= target {
            return Ok(());
        }
        drop(st);
        if let Some(b) = &self.backend {
            b.checkpoint_active().map_err(|e| Error::io(&self.dir, e))?;
        }
        st = self.shared.lock();
        while st.archived_last_seq < target {
            if let Some(reason) = st.failure.clone() {
                return Err(Error::Poisoned { reason });
            }
            st = self.shared.wait(st);
        }
        Ok(())
    }

    /// Archive files entirely below `seq` become eligible for retention (the engine sets
    /// this to the oldest snapshot it keeps). Applies retention now.
    pub fn set_retention_floor(&self, seq: u64) -> Result<usize> {
        self.shared.lock().retention_floor_seq = seq;
        self.shared.prune(seq)
    }

    /// History from `from_seq` through the last durable event at the time of the call,
    /// read from the archive and the live log.
    pub fn history(&self, from_seq: u64) -> History {
        History::in_process(self.shared.clone(), from_seq, self.last_seq())
    }

    /// Flushes, stops the writer and the checkpoint thread, and releases the files.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                self.shared.fail("the log writer thread panicked".into());
            }
        }
        if let Some(b) = self.backend.take() {
            if let Some(reason) = self.shared.failure() {
                // After a failed fsync okaywal's own sync state is unreliable; do not wait on it.
                drop(b);
                return Err(Error::Poisoned { reason });
            }
            b.shutdown().map_err(|e| Error::io(&self.dir, e))?;
        }
        Ok(())
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if self.tx.is_some() {
            if let Err(e) = self.shutdown() {
                tracing::warn!(error = %e, "closing the event log on drop failed");
            }
        }
    }
}

struct WriterState {
    backend: Arc<dyn LogBackend>,
    shared: Arc<Shared>,
    durable: Arc<AtomicU64>,
    durable_tx: watch::Sender<u64>,
    next_seq: u64,
    last_ts: u64,
    clock: Arc<dyn Clock>,
    max_entry_bytes: usize,
}

impl WriterState {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut round: Vec<(Request, [u8; crate::frame::FRAME_HEADER_LEN], Appended)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            if let Some(reason) = self.shared.failure() {
                let _ = first.reply.send(Err(Error::Poisoned { reason }));
                continue;
            }
            let ts_us = self.clock.now_us().max(self.last_ts);
            let mut bytes = 0usize;
            let mut next = Some(first);
            // Drain every queued caller into one entry (bounded by max_entry_bytes).
            while let Some(req) = next.take() {
                let first_seq = self.next_seq;
                let last_seq = first_seq + u64::from(req.payload.count()) - 1;
                self.next_seq = last_seq + 1;
                let header = req.payload.header(first_seq, ts_us);
                bytes += header.len() + req.payload.bytes().len();
                round.push((
                    req,
                    header,
                    Appended {
                        first_seq,
                        last_seq,
                        ts_us,
                    },
                ));
                if bytes < self.max_entry_bytes {
                    next = rx.try_recv().ok();
                }
            }
            let frames: Vec<OutFrame<'_>> = round
                .iter()
                .map(|(req, header, _)| OutFrame {
                    header: *header,
                    payload: req.payload.bytes(),
                })
                .collect();
            let result = self.backend.append(&frames);
            drop(frames);
            match result {
                Ok(()) => {
                    let last = self.next_seq - 1;
                    self.last_ts = ts_us;
                    self.durable.store(last, Ordering::Release);
                    self.durable_tx.send_replace(last);
                    for (req, _, appended) in round.drain(..) {
                        let _ = req.reply.send(Ok(appended));
                    }
                }
                Err(e) => {
                    // fsyncgate: never retry a failed write or fsync; refuse everything after.
                    let reason = format!("writing or syncing the log failed: {e}");
                    self.shared.fail(reason.clone());
                    for (req, _, _) in round.drain(..) {
                        let _ = req.reply.send(Err(Error::Poisoned {
                            reason: reason.clone(),
                        }));
                    }
                }
            }
        }
    }
}
