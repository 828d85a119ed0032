//! Backups and point-in-time restore, from a store's files (it may be in use by another
//! process: nothing here takes the source's lock or writes to it).
//!
//! Both write a *store directory* that opens as a store: its log holds the source's events
//! with their original sequence numbers and commit times (appended through a log opened with
//! a clock that replays those times), plus a copy of the newest snapshot at or before the
//! last copied event, so opening it replays only the delta.
//! * [`backup`] keeps the source's timeline; a later backup to the same place appends only the
//!   events it lacks and copies a newer snapshot if there is one (incremental).
//! * [`restore`] stops at a sequence or a time (inclusive), gets a new timeline (its MANIFEST
//!   names the parent `timeline@seq`), is built in a staging directory beside the target,
//!   verified, then renamed into place.

use crate::disk::store_files::{lock_store, StoreManifest};
use crate::error::{Error, Result};
use crate::snapshot;
use crate::verify::{self, VerifyReport};
use magray_wal::fsutil::{create_dir_durable, sync_dir, sync_file};
use magray_wal::{Event, History, Log, LogConfig, ManualClock};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a restore stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Everything there is.
    End,
    /// The event with this sequence, inclusive.
    Seq(u64),
    /// The last event committed at or before this time (µs since the Unix epoch), inclusive.
    Time(u64),
}

/// What a backup or restore copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Events appended by this run (an incremental backup copies only the new ones).
    pub events_copied: u64,
    /// Last sequence now in the destination.
    pub last_seq: u64,
    /// Its commit time (µs).
    pub last_ts_us: u64,
    /// The snapshot the destination holds (at or before `last_seq`), if any.
    pub snapshot_seq: Option<u64>,
    /// Whether this run copied that snapshot (false: it was there already, or none).
    pub snapshot_copied: bool,
    /// The destination's timeline.
    pub timeline: String,
}

/// Events appended per destination batch at most (they keep their commit times either way).
const BATCH: usize = 4096;

/// Backs `source` up into `dest` (created if missing), online: the source may be in use.
/// Consistent: the backup is the source's history up to its last complete entry, plus the
/// newest snapshot at or before it. Incremental: `dest` must be empty or a backup of the same
/// timeline, and only what it lacks is copied.
pub fn backup(source: &Path, dest: &Path, progress: &mut dyn FnMut(u64)) -> Result<CopyReport> {
    let m = verify::manifest(source)?;
    replicate(source, dest, Target::End, m, progress)
}

/// Restores `from` (a store or a backup) as of `target` into `into`, which must not exist
/// (or be an empty directory). Builds in `.<name>.restore-<pid>` beside it, verifies the
/// result, then renames it into place; `from` is only read. Returns what was copied and the
/// verification report.
pub fn restore(
    from: &Path,
    into: &Path,
    target: Target,
    progress: &mut dyn FnMut(u64),
) -> Result<(CopyReport, VerifyReport)> {
    let src = verify::manifest(from)?;
    if into.exists() {
        let empty = std::fs::read_dir(into)
            .map_err(|e| Error::io(into, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::InvalidInput(format!(
                "{} exists and is not empty; restore into a new directory",
                into.display()
            )));
        }
    }
    let name = into
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Error::InvalidInput(format!("{} has no directory name", into.display())))?;
    let parent = into
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    create_dir_durable(parent)?;
    let staging = parent.join(format!(".{name}.restore-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    }
    let mut m = StoreManifest::new(src.dimension, &src.model_id, src.created_us);
    let result = (|| {
        let copied = replicate(from, &staging, target, m.clone(), progress)?;
        // The branch point is known only now: record it.
        m.parent = Some(format!("{}@{}", src.timeline, copied.last_seq));
        m.write(&staging)?;
        let report = verify::verify(&staging)?;
        if !report.ok() {
            return Err(Error::corrupted(
                &staging,
                0,
                format!(
                    "the restored store does not verify: {}",
                    report.problems.join("; ")
                ),
            ));
        }
        Ok((copied, report))
    })();
    match result {
        Ok((mut copied, mut report)) => {
            if into.exists() {
                std::fs::remove_dir(into).map_err(|e| Error::io(into, e))?;
            }
            std::fs::rename(&staging, into).map_err(|e| Error::io(into, e))?;
            sync_dir(parent)?;
            copied.timeline = m.timeline.clone();
            report.dir = into.to_path_buf();
            Ok((copied, report))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            Err(e)
        }
    }
}

fn replicate(
    source: &Path,
    dest: &Path,
    target: Target,
    new_manifest: StoreManifest,
    progress: &mut dyn FnMut(u64),
) -> Result<CopyReport> {
    let src = verify::manifest(source)?;
    create_dir_durable(dest)?;
    let lock = lock_store(dest)?;
    let timeline = dest_timeline(source, dest, &src.timeline, new_manifest)?;
    let clock = ManualClock::new(0);
    let mut lc = LogConfig::new(dest);
    lc.clock = Arc::new(clock.clone());
    lc.lock = Some(lock);
    let log = Log::open(lc)?;
    let have = log.last_seq();
    // The destination's last event must be the source's event at that sequence.
    if have > 0 {
        let ours = History::open_offline(dest, have).until_seq(have).next();
        let theirs = History::open_offline(source, have).until_seq(have).next();
        match (ours, theirs) {
            (Some(Ok(a)), Some(Ok(b))) if a == b => {}
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{} and {} differ at sequence {have}: not the same history",
                    dest.display(),
                    source.display()
                )))
            }
        }
    }
    let mut history = History::open_offline(source, have + 1);
    history = match target {
        Target::End => history,
        Target::Seq(s) => history.until_seq(s),
        Target::Time(t) => history.until_ts_us(t),
    };
    let mut report = CopyReport {
        last_seq: have,
        timeline,
        ..Default::default()
    };
    let mut batch: Vec<Event> = Vec::new();
    let (mut batch_ts, mut batch_seq) = (0u64, 0u64);
    let mut flush = |batch: &mut Vec<Event>, ts: u64, seq: u64, report: &mut CopyReport| {
        if batch.is_empty() {
            return Ok(());
        }
        clock.set_us(ts);
        let n = batch.len() as u64;
        let at = log.append(std::mem::take(batch))?;
        if at.first_seq != seq || at.ts_us != ts {
            return Err(Error::corrupted(
                dest.join("wal"),
                0,
                format!(
                    "copied events landed at sequence {} time {} instead of {seq} / {ts}",
                    at.first_seq, at.ts_us
                ),
            ));
        }
        report.events_copied += n;
        report.last_seq = at.last_seq;
        report.last_ts_us = ts;
        progress(report.events_copied);
        Ok::<(), Error>(())
    };
    for env in history {
        let env = env?;
        if !batch.is_empty() && (env.ts_us != batch_ts || batch.len() >= BATCH) {
            flush(&mut batch, batch_ts, batch_seq, &mut report)?;
        }
        if batch.is_empty() {
            batch_ts = env.ts_us;
            batch_seq = env.seq;
        }
        batch.push(env.event);
    }
    flush(&mut batch, batch_ts, batch_seq, &mut report)?;
    if report.last_seq == 0 {
        return Err(Error::InvalidInput(match target {
            Target::Time(t) => format!(
                "nothing to restore: {} has no event at or before {t} µs (the target is before its history begins)",
                source.display()
            ),
            Target::Seq(s) => format!(
                "nothing to restore: {} has no event at or before sequence {s}",
                source.display()
            ),
            Target::End => format!("{} has no events", source.display()),
        }));
    }
    if report.last_ts_us == 0 {
        // Nothing new (incremental backup): keep the time of the last event there.
        report.last_ts_us = History::open_offline(dest, report.last_seq)
            .until_seq(report.last_seq)
            .next()
            .and_then(|e| e.ok())
            .map_or(0, |e| e.ts_us);
    }
    log.close()?;
    copy_newest_snapshot(source, dest, src.dimension, &mut report)?;
    Ok(report)
}

/// The destination's timeline: its own when it already holds a copy of the source's
/// (another timeline is refused), else the new store's, whose MANIFEST is written now.
fn dest_timeline(
    source: &Path,
    dest: &Path,
    src_timeline: &str,
    new_manifest: StoreManifest,
) -> Result<String> {
    Ok(match StoreManifest::read(dest)? {
        Some(d) => {
            if d.timeline != src_timeline {
                return Err(Error::InvalidInput(format!(
                    "{} holds timeline {} but {} is timeline {}: back up into an empty directory",
                    dest.display(),
                    d.timeline,
                    source.display(),
                    src_timeline
                )));
            }
            d.timeline
        }
        None => {
            new_manifest.write(dest)?;
            new_manifest.timeline.clone()
        }
    })
}

/// Copies the newest valid snapshot of `source` at or before what the destination holds
/// (`report.last_seq`) into `dest`, and names it in the report.
fn copy_newest_snapshot(
    source: &Path,
    dest: &Path,
    dim: usize,
    report: &mut CopyReport,
) -> Result<()> {
    // The newest valid snapshot at or before what the destination holds.
    let dst_root = dest.join("snapshots");
    create_dir_durable(&dst_root)?;
    // A store in use prunes old snapshots while we copy: a snapshot that vanishes or fails
    // its checks is skipped for the next older one. None at all is fine (the log has every
    // event; opening the copy replays more).
    for (seq, path) in snapshot::list(&source.join("snapshots"))? {
        // Checked once, as the copy (`copy_snapshot` verifies every crc before the rename):
        // a bad source snapshot fails there and the next older one is tried.
        if seq > report.last_seq {
            continue;
        }
        let to = dst_root.join(snapshot::dir_name(seq));
        if !to.exists() {
            match copy_snapshot(&path, &to, dim) {
                Ok(()) => report.snapshot_copied = true,
                Err(e) => {
                    tracing::warn!(snapshot = %path.display(), error = %e, "snapshot invalid or changed while copying; trying an older one");
                    let _ = std::fs::remove_dir_all(&to);
                    continue;
                }
            }
        }
        report.snapshot_seq = Some(seq);
        break;
    }
    if report.snapshot_seq.is_none() {
        // Keep naming what the destination already holds, if anything.
        report.snapshot_seq = snapshot::list(&dst_root)?
            .into_iter()
            .map(|(s, _)| s)
            .find(|s| *s <= report.last_seq);
    }
    Ok(())
}

/// Copies a snapshot directory: files into a temp dir, each fsynced, then every crc checked
/// against its manifest, then the rename.
fn copy_snapshot(from: &Path, to: &Path, dim: usize) -> Result<()> {
    let root = to
        .parent()
        .ok_or_else(|| Error::InvalidInput(format!("{} has no parent", to.display())))?;
    let tmp: PathBuf = root.join(format!(
        "{}{}",
        magray_wal::fsutil::TEMP_PREFIX,
        to.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    create_dir_durable(&tmp)?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let dst = tmp.join(entry.file_name());
        std::fs::copy(entry.path(), &dst).map_err(|e| Error::io(&dst, e))?;
        std::fs::File::open(&dst)
            .and_then(|f| sync_file(&f, &dst))
            .map_err(|e| Error::io(&dst, e))?;
    }
    sync_dir(&tmp)?;
    let checked = snapshot::load(&tmp, dim, snapshot::Check::Full)
        .and_then(|l| snapshot::check_dumps(&tmp, &l.manifest));
    if let Err(e) = checked {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, to).map_err(|e| Error::io(to, e))?;
    Ok(sync_dir(root)?)
}
