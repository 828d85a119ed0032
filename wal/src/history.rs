//! Reading history: archive files, then live segments, as one contiguous sequence.

use crate::archive;
use crate::backend::segment;
use crate::backend::segment::list_live_segments;
use crate::backend::shared::Shared;
use crate::error::{Error, IoContext, Result};
use crate::event::Envelope;
use crate::frame::version_info;
use crate::recovery::{only_empty_segments_follow, TornTail};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bound on source switches per fill (archive/live races resolve in a few).
const MAX_SOURCE_RETRIES: usize = 64;

/// An iterator over events in sequence order, from a start sequence to a stop point.
///
/// Each item is validated (checksums, rkyv checks, contiguity). Any corruption ends the
/// iteration with an error naming file and offset.
#[derive(Debug)]
pub struct History {
    wal_dir: PathBuf,
    archive_dir: PathBuf,
    info: Vec<u8>,
    /// In-process readers coordinate with the archiver; offline readers own the files.
    shared: Option<Arc<Shared>>,
    next_seq: u64,
    /// Last durable sequence when an in-process reader was created.
    bound: Option<u64>,
    until_seq: Option<u64>,
    until_ts_us: Option<u64>,
    buf: VecDeque<Envelope>,
    source: PathBuf,
    last_live_segment: u64,
    done: bool,
    torn_tail: Option<TornTail>,
}

impl History {
    pub(crate) fn in_process(shared: Arc<Shared>, from_seq: u64, bound: u64) -> History {
        let mut h = History::new(&shared.wal_dir, &shared.archive_dir, from_seq);
        h.shared = Some(shared);
        h.bound = Some(bound);
        h
    }

    fn new(wal_dir: &Path, archive_dir: &Path, from_seq: u64) -> History {
        History {
            wal_dir: wal_dir.to_path_buf(),
            archive_dir: archive_dir.to_path_buf(),
            info: version_info(),
            shared: None,
            next_seq: from_seq.max(1),
            bound: None,
            until_seq: None,
            until_ts_us: None,
            buf: VecDeque::new(),
            source: PathBuf::new(),
            last_live_segment: 0,
            done: false,
            torn_tail: None,
        }
    }

    /// Reads the history of a log that is not open (a closed store, a backup). Nothing is
    /// modified: a torn tail ends the history and is reported by [`History::torn_tail`].
    pub fn open_offline(log_dir: &Path, from_seq: u64) -> History {
        History::new(&log_dir.join("wal"), &log_dir.join("archive"), from_seq)
    }

    /// Stops after the event with this sequence (inclusive).
    pub fn until_seq(mut self, seq: u64) -> Self {
        self.until_seq = Some(seq);
        self
    }

    /// Stops after the last event with a timestamp at or before `ts_us` (inclusive).
    pub fn until_ts_us(mut self, ts_us: u64) -> Self {
        self.until_ts_us = Some(ts_us);
        self
    }

    /// A torn tail that ended an offline read (not an error: it was never acknowledged).
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// Sequence the iterator will yield next.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn archived_last_seq(&self, archives: &[archive::ArchiveFile]) -> u64 {
        match &self.shared {
            Some(s) => s.lock().archived_last_seq,
            None => archives.last().map_or(0, |a| a.last_seq),
        }
    }

    /// Loads the next source holding `next_seq` into the buffer. False at the end.
    fn fill(&mut self) -> Result<bool> {
        for _ in 0..MAX_SOURCE_RETRIES {
            if self.bound.is_some_and(|b| self.next_seq > b) {
                return Ok(false);
            }
            let archives = archive::list(&self.archive_dir)?;
            if self.next_seq <= self.archived_last_seq(&archives) {
                let Some(f) = archives
                    .iter()
                    .find(|f| f.first_seq <= self.next_seq && self.next_seq <= f.last_seq)
                else {
                    return Err(match archives.first() {
                        Some(a) if self.next_seq < a.first_seq => Error::NotAvailable {
                            seq: self.next_seq,
                            first_available: a.first_seq,
                        },
                        _ => Error::Gap {
                            file: self.archive_dir.clone(),
                            expected: self.next_seq,
                            found: archives
                                .iter()
                                .map(|a| a.first_seq)
                                .find(|&s| s > self.next_seq)
                                .unwrap_or(0),
                        },
                    });
                };
                let (_, events) = archive::read(&f.path)?;
                self.source = f.path.clone();
                self.buf
                    .extend(events.into_iter().filter(|e| e.seq >= self.next_seq));
                return Ok(true);
            }
            match self.fill_live()? {
                Some(true) => return Ok(true),
                Some(false) => continue,
                // No live segment left: offline, that is the end of history. In process,
                // anything up to the bound that is no longer live was archived meanwhile:
                // the next round finds it in the archive.
                None if self.shared.is_none() => return Ok(false),
                None => {}
            }
        }
        Err(Error::Corrupted {
            file: self.wal_dir.clone(),
            offset: 0,
            reason: format!(
                "could not locate sequence {} in the archive or the live log",
                self.next_seq
            ),
        })
    }

    /// Reads live segments in order until one holds events at or after `next_seq`.
    /// Some(true) = events buffered, Some(false) = a segment vanished (archived meanwhile),
    /// None = no segment left.
    fn fill_live(&mut self) -> Result<Option<bool>> {
        let segments = list_live_segments(&self.wal_dir)?;
        for (pos, (id, path)) in segments.iter().cloned().enumerate() {
            let later = &segments[pos + 1..];
            if id <= self.last_live_segment {
                continue;
            }
            if let Some(s) = &self.shared {
                if !s.register_reader(id) {
                    continue; // archived meanwhile; the archive has it
                }
            }
            let read = std::fs::read(&path).at(&path);
            if let Some(s) = &self.shared {
                s.unregister_reader(id);
            }
            self.last_live_segment = id;
            let bytes = match read {
                Ok(b) => b,
                // Recycled between listing and opening: it was archived.
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Some(false))
                }
                Err(e) => return Err(e),
            };
            let scan = match segment::scan(&bytes, &path, id, &self.info, None) {
                Ok(scan) => scan,
                // A segment creation interrupted before its header (recovery removes it).
                Err(_)
                    if bytes.iter().all(|&b| b == 0)
                        && only_empty_segments_follow(later, &self.info)? =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut pushed = false;
            for entry in scan.entries {
                for (_, _, events) in entry.frames {
                    for e in events {
                        if e.seq >= self.next_seq && self.bound.is_none_or(|b| e.seq <= b) {
                            self.buf.push_back(e);
                            pushed = true;
                        }
                    }
                }
            }
            if let Some(problem) = scan.problem {
                let covered = self
                    .bound
                    .is_some_and(|b| self.buf.back().map_or(self.next_seq > b, |e| e.seq >= b));
                if covered {
                    // In process: everything durable was read; what follows is being written.
                } else if self.shared.is_none()
                    && !problem.followed_by_valid
                    && only_empty_segments_follow(later, &self.info)?
                {
                    // The torn tail, possibly in the segment before a just-activated, still
                    // empty one (see `recovery::only_empty_segments_follow`).
                    self.torn_tail = Some(TornTail {
                        file: path.clone(),
                        offset: problem.entry_offset,
                        bytes: problem.extent_end - problem.entry_offset,
                        from_seq: self.buf.back().map_or(self.next_seq, |e| e.seq + 1),
                        reason: problem.error.to_string(),
                    });
                } else {
                    return Err(problem.error);
                }
            }
            self.source = path;
            if pushed {
                return Ok(Some(true));
            }
            // Nothing at or after next_seq here (already read from the archive): try the
            // next segment without spending one of fill()'s bounded retries.
        }
        Ok(None)
    }
}

impl Iterator for History {
    type Item = Result<Envelope>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.buf.is_empty() {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        let env = self.buf.pop_front()?;
        if env.seq != self.next_seq {
            self.done = true;
            return Some(Err(Error::Gap {
                file: self.source.clone(),
                expected: self.next_seq,
                found: env.seq,
            }));
        }
        if self.until_seq.is_some_and(|s| env.seq > s)
            || self.until_ts_us.is_some_and(|t| env.ts_us > t)
        {
            self.done = true;
            return None;
        }
        self.next_seq += 1;
        Some(Ok(env))
    }
}
