//! Opening the log: validate every live segment before okaywal sees it, repair a torn
//! tail, refuse (or, in salvage mode, set aside) corruption anywhere else, and find where
//! the sequence continues.

use crate::archive;
use crate::backend::segment::{self, list_live_segments, CHUNK, END_OF_ENTRY, NEW_ENTRY};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

/// What to do about damage found at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// A torn tail (a partial last entry, never acknowledged) is truncated and reported;
    /// a checksum failure anywhere else refuses to open, naming file and offset. Default.
    #[default]
    TolerateTornTail,
    /// Explicit salvage: stop at the last good event. The damaged segment and everything
    /// after it are copied to `salvage/` first, and the report says what was dropped.
    Salvage,
}

/// A torn tail that recovery truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment file.
    pub file: PathBuf,
    /// Offset where the partial entry began (the file now ends there).
    pub offset: u64,
    /// Bytes of the partial entry that were dropped.
    pub bytes: u64,
    /// First sequence that was not recovered (never acknowledged).
    pub from_seq: u64,
    /// What was wrong with the entry.
    pub reason: String,
}

/// What salvage mode dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// The first damaged file.
    pub file: PathBuf,
    /// Offset of the damage.
    pub offset: u64,
    /// The error that salvage stepped over.
    pub error: String,
    /// Events from this sequence on were dropped.
    pub dropped_from_seq: u64,
    /// Bytes dropped from the live log (including later segments).
    pub dropped_bytes: u64,
    /// Where copies of the dropped data were put.
    pub saved_in: PathBuf,
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// A truncated torn tail, if there was one.
    pub torn_tail: Option<TornTail>,
    /// What salvage mode dropped, if it ran and found damage.
    pub salvaged: Option<Salvaged>,
    /// Leftover temp files removed.
    pub removed_temp_files: usize,
    /// Empty segment files (from an interrupted segment creation) removed.
    pub removed_empty_segments: Vec<PathBuf>,
    /// Archive files removed because a later archive of the same segment holds all of their
    /// events and more (a power cut undid a segment's checkpoint; see
    /// [`crate::archive::remove_superseded`]).
    pub superseded_archives: Vec<PathBuf>,
    /// Live segments found.
    pub live_segments: usize,
    /// Archive files found.
    pub archive_files: usize,
    /// Last sequence in the history (0 for an empty log).
    pub last_seq: u64,
    /// Timestamp of the last event (0 for an empty log).
    pub last_ts_us: u64,
    /// Last sequence held in the archive.
    pub archived_last_seq: u64,
    /// First sequence still available (archive or live), 0 when empty.
    pub first_seq: u64,
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).at(path)?;
    f.set_len(len).at(path)?;
    fsutil::sync_file(&f, path).at(path)
}

pub(crate) fn recover(
    wal_dir: &Path,
    archive_dir: &Path,
    salvage_dir: &Path,
    version_info: &[u8],
    mode: RecoveryMode,
) -> Result<RecoveryReport> {
    fsutil::create_dir_durable(wal_dir)?;
    fsutil::create_dir_durable(archive_dir)?;
    let mut report = RecoveryReport {
        removed_temp_files: fsutil::remove_temp_files(archive_dir)?,
        superseded_archives: archive::remove_superseded(archive_dir)?,
        ..RecoveryReport::default()
    };
    let archives = archive::list(archive_dir)?;
    report.archive_files = archives.len();
    if let Some(last) = archives.last() {
        report.archived_last_seq = last.last_seq;
        report.last_seq = last.last_seq;
        report.last_ts_us = last.last_ts_us;
    }
    report.first_seq = archives.first().map_or(0, |a| a.first_seq);

    let mut segments = list_live_segments(wal_dir)?;
    let mut expected: Option<u64> = None;
    let mut i = 0;
    while i < segments.len() {
        let (id, path) = segments[i].clone();
        let is_last = i + 1 == segments.len();
        let buf = fs::read(&path).at(&path)?;
        let scan = match segment::scan(&buf, &path, id, version_info, expected) {
            Ok(s) => s,
            Err(e) if is_last && buf.iter().all(|&b| b == 0) => {
                // okaywal zero-fills a new segment before writing its header: a crash in
                // between leaves an empty file that never held an entry.
                tracing::warn!(path = %path.display(), error = %e, "removing empty segment left by an interrupted segment creation");
                fs::remove_file(&path).at(&path)?;
                fsutil::sync_dir(wal_dir)?;
                report.removed_empty_segments.push(path);
                segments.pop();
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(first) = scan.entries.first().and_then(|e| e.first_seq()) {
            if expected.is_none() {
                // The first live event may overlap the archive (archived, not yet recycled)
                // but must not leave a hole after it.
                let max_first = report.archived_last_seq + 1;
                if first > max_first {
                    return Err(Error::Gap {
                        file: path.clone(),
                        expected: max_first,
                        found: first,
                    });
                }
                if report.first_seq == 0 {
                    report.first_seq = first;
                }
            }
        }
        for e in &scan.entries {
            if let Some(l) = e.last_seq() {
                expected = Some(l + 1);
                if l > report.last_seq {
                    report.last_seq = l;
                    report.last_ts_us = e
                        .frames
                        .last()
                        .map_or(0, |f| f.2.last().map_or(0, |env| env.ts_us));
                }
            }
        }
        let repaired_tail = scan.problem.is_some();
        if !repaired_tail {
            neutralise_stale_entry_marker(&path, &buf, scan.valid_end)?;
        }
        if let Some(problem) = scan.problem {
            let from_seq = expected.unwrap_or(report.last_seq + 1);
            if !problem.followed_by_valid
                && (is_last || only_empty_segments_follow(&segments[i + 1..], version_info)?)
            {
                let bytes = problem.extent_end - problem.entry_offset;
                tracing::warn!(
                    file = %path.display(), offset = problem.entry_offset, bytes, from_seq,
                    before_empty_segments = !is_last,
                    reason = %problem.error, "truncating torn tail of the log (never acknowledged)"
                );
                truncate(&path, problem.entry_offset)?;
                report.torn_tail = Some(TornTail {
                    file: path.clone(),
                    offset: problem.entry_offset,
                    bytes,
                    from_seq,
                    reason: problem.error.to_string(),
                });
            } else if mode == RecoveryMode::Salvage {
                report.salvaged = Some(salvage(
                    &segments[i..],
                    problem.entry_offset,
                    &problem.error,
                    from_seq,
                    salvage_dir,
                    wal_dir,
                )?);
                segments.truncate(i + 1);
            } else {
                return Err(problem.error);
            }
        }
        i += 1;
    }
    report.live_segments = segments.len();
    Ok(report)
}

/// True if every segment in `later` holds no entry at all: each is all zeros (a creation
/// interrupted before its header) or a header followed by zeros or stale bytes.
///
/// okaywal activates the next segment (renames a recycled `wal-N-cp` to `wal-{K+1}`, or
/// creates a zero-filled one) *before* it flushes and syncs the entry K that crossed the
/// checkpoint threshold (`WriteAheadLog::reclaim`). A crash inside that flush tears entry K
/// in a segment that is no longer the last one. Nothing can have been written after it (the
/// single writer waits for K's fsync), so such a damaged entry is still the torn tail of the
/// log when the later segments are empty; any entry in a later one makes it mid-log damage.
pub(crate) fn only_empty_segments_follow(
    later: &[(u64, PathBuf)],
    version_info: &[u8],
) -> Result<bool> {
    for (id, path) in later {
        let buf = fs::read(path).at(path)?;
        if buf.iter().all(|&b| b == 0) {
            continue;
        }
        match segment::scan(&buf, path, *id, version_info, None) {
            Ok(scan) if scan.entries.is_empty() && scan.problem.is_none() => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// A recycled segment keeps stale bytes after its valid end, and okaywal 0.3.1's reader
/// acts on the first of them: it reads any `0x01` + id >= file id as an entry start, and
/// after an entry it calls `read_chunk` once more, which consumes a stale `0x03`
/// (END_OF_ENTRY) and skips a stale `0x02` (CHUNK) with whatever length follows. Either
/// way okaywal would resume writing *past* stale bytes, leaving a gap that the next open
/// rightly takes for mid-log corruption. Overwrite such a marker byte at the valid end with 0
/// so okaywal's parser stops exactly where ours did (the bytes are stale, never data).
fn neutralise_stale_entry_marker(path: &Path, buf: &[u8], valid_end: u64) -> Result<()> {
    let Some(&stale) = usize::try_from(valid_end).ok().and_then(|at| buf.get(at)) else {
        return Ok(());
    };
    if !matches!(stale, NEW_ENTRY | CHUNK | END_OF_ENTRY) {
        // okaywal takes any other byte for the end of the segment.
        return Ok(());
    }
    use std::io::{Seek, SeekFrom, Write};
    let mut f = OpenOptions::new().write(true).open(path).at(path)?;
    f.seek(SeekFrom::Start(valid_end)).at(path)?;
    f.write_all(&[0]).at(path)?;
    fsutil::sync_file(&f, path).at(path)?;
    tracing::debug!(file = %path.display(), offset = valid_end, byte = stale, "cleared a stale byte after the valid end");
    Ok(())
}

/// Copies the damaged segment and every later one into `salvage_dir`, truncates the damaged
/// one at the damage and removes the later ones from the live log.
fn salvage(
    segments: &[(u64, PathBuf)],
    offset: u64,
    error: &Error,
    from_seq: u64,
    salvage_dir: &Path,
    wal_dir: &Path,
) -> Result<Salvaged> {
    let stamp = crate::clock::SystemClock.now_us();
    let saved_in = salvage_dir.join(format!("salvage-{stamp}"));
    fsutil::create_dir_durable(&saved_in)?;
    let mut dropped_bytes = 0;
    for (n, (_, path)) in segments.iter().enumerate() {
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let copy = saved_in.join(&name);
        fs::copy(path, &copy).at(&copy)?;
        let len = fs::metadata(path).at(path)?.len();
        if n == 0 {
            dropped_bytes += len.saturating_sub(offset);
            truncate(path, offset)?;
        } else {
            dropped_bytes += len;
            fs::remove_file(path).at(path)?;
        }
    }
    fsutil::sync_dir(&saved_in)?;
    fsutil::sync_dir(wal_dir)?;
    let file = segments[0].1.clone();
    tracing::error!(file = %file.display(), offset, from_seq, "salvage dropped the log from a damaged entry on");
    Ok(Salvaged {
        file,
        offset,
        error: error.to_string(),
        dropped_from_seq: from_seq,
        dropped_bytes,
        saved_in,
    })
}

use crate::clock::Clock as _;
