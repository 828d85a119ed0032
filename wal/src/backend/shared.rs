//! State shared between the archiver (running on okaywal's checkpoint thread) and
//! in-process history readers.
//!
//! Lock order: this mutex is a leaf. The archiver takes it while okaywal holds its manager
//! lock; readers take it alone and never call into okaywal while holding it.

use crate::archive;
use crate::error::{Error, Result};
use crate::frame;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};

/// How long archived history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Retention {
    /// Keep every archive file (default): any point in time can be restored.
    #[default]
    KeepAll,
    /// Delete archive files whose newest event is older than this many µs — but never
    /// above the retention floor set by the engine, and never the newest archive file.
    MaxAgeUs(u64),
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// okaywal entry id through which segments have been archived.
    pub archived_entry_id: u64,
    /// Last sequence present in the archive.
    pub archived_last_seq: u64,
    /// Live segments being read, by segment id.
    pub readers: HashMap<u64, usize>,
    /// Set when archiving failed: the log is poisoned.
    pub failure: Option<String>,
    /// Archive files at or above this sequence are never pruned.
    pub retention_floor_seq: u64,
    /// Completed archive writes (for tests and stats).
    pub archives_written: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub wal_dir: PathBuf,
    pub archive_dir: PathBuf,
    pub version_info: Vec<u8>,
    pub retention: Retention,
    pub clock: std::sync::Arc<dyn crate::Clock>,
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    pub fn new(
        wal_dir: PathBuf,
        archive_dir: PathBuf,
        version_info: Vec<u8>,
        retention: Retention,
        clock: std::sync::Arc<dyn crate::Clock>,
        archived_last_seq: u64,
    ) -> Self {
        Shared {
            wal_dir,
            archive_dir,
            version_info,
            retention,
            clock,
            state: Mutex::new(State {
                archived_last_seq,
                ..State::default()
            }),
            cond: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn notify(&self) {
        self.cond.notify_all();
    }

    pub fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.cond.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    pub fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    pub fn fail(&self, reason: String) {
        tracing::error!(%reason, "event log poisoned");
        let mut st = self.lock();
        st.failure.get_or_insert(reason);
        drop(st);
        self.notify();
    }

    /// Registers a reader of live segment `id`; false if it has been archived meanwhile.
    pub fn register_reader(&self, id: u64) -> bool {
        let mut st = self.lock();
        if id <= st.archived_entry_id {
            return false;
        }
        *st.readers.entry(id).or_default() += 1;
        true
    }

    pub fn unregister_reader(&self, id: u64) {
        let mut st = self.lock();
        if let Some(n) = st.readers.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                st.readers.remove(&id);
            }
        }
        drop(st);
        self.notify();
    }

    /// Copies a segment's entries into the archive; durable before it returns, and no
    /// in-process reader is still reading the segment when it returns.
    ///
    /// The segment is parsed with our own strict scanner, not okaywal's `SegmentReader`:
    /// okaywal would take stale bytes after the valid end of a recycled file for an entry.
    pub fn archive_segment(&self, last_id: u64) -> Result<()> {
        let (id, path) = super::segment::list_live_segments(&self.wal_dir)?
            .into_iter()
            .rfind(|(id, _)| *id <= last_id)
            .ok_or_else(|| Error::Corrupted {
                file: self.wal_dir.clone(),
                offset: 0,
                reason: format!("no live segment holds checkpointed entry {last_id}"),
            })?;
        let buf = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let scan = super::segment::scan(&buf, &path, id, &self.version_info, None)?;
        if let Some(problem) = scan.problem {
            return Err(problem.error);
        }
        if scan.entries.last().map(|e| e.entry_id) != Some(last_id) {
            return Err(Error::Corrupted {
                file: path.clone(),
                offset: scan.valid_end,
                reason: format!("okaywal checkpoints through entry {last_id}, the segment's valid entries end earlier"),
            });
        }
        let frames: Vec<Vec<u8>> = scan
            .entries
            .iter()
            .flat_map(|e| e.frames.iter())
            .map(|(at, h, _)| {
                let at = *at as usize;
                buf[at..at + frame::FRAME_HEADER_LEN + h.payload_len as usize].to_vec()
            })
            .collect();
        let mut last_seq = None;
        if let (Some(first), Some(last)) = (scan.entries.first(), scan.entries.last()) {
            let (first_seq, l) = (first.first_seq(), last.last_seq());
            if let (Some(first_seq), Some(l)) = (first_seq, l) {
                let already = archive::list(&self.archive_dir)?
                    .into_iter()
                    .any(|f| f.first_seq == first_seq && f.last_seq == l);
                if already {
                    tracing::info!(
                        first_seq,
                        last_seq = l,
                        "segment already archived before a restart"
                    );
                } else {
                    let f = archive::write(&self.archive_dir, &frames)?;
                    tracing::debug!(path = %f.path.display(), "archived log segment");
                    // An archive of this segment's first part, made before a power cut undid
                    // its checkpoint, is now a prefix of this one.
                    archive::remove_superseded(&self.archive_dir)?;
                }
                last_seq = Some(l);
            }
        }
        let mut st = self.lock();
        st.archived_entry_id = st.archived_entry_id.max(last_id);
        if let Some(l) = last_seq {
            st.archived_last_seq = st.archived_last_seq.max(l);
            st.archives_written += 1;
        }
        self.notify();
        // okaywal recycles the segment once we return: wait out readers still on it.
        while st.readers.keys().any(|&id| id <= last_id) {
            st = self.wait(st);
        }
        let floor = st.retention_floor_seq;
        drop(st);
        self.prune(floor)?;
        Ok(())
    }

    /// Applies retention below `floor_seq`.
    pub fn prune(&self, floor_seq: u64) -> Result<usize> {
        let Retention::MaxAgeUs(max_age) = self.retention else {
            return Ok(0);
        };
        let cutoff = self.clock.now_us().saturating_sub(max_age);
        let files = archive::list(&self.archive_dir)?;
        let mut removed = 0;
        // Never the newest file: it anchors the sequence after a restart.
        for f in files.iter().take(files.len().saturating_sub(1)) {
            if f.last_ts_us < cutoff && f.last_seq < floor_seq {
                std::fs::remove_file(&f.path).map_err(|e| Error::io(&f.path, e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            crate::fsutil::sync_dir(&self.archive_dir)?;
        }
        Ok(removed)
    }
}
