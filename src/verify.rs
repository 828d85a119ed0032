//! Offline readers of a store directory (a live store held by another process, a closed one,
//! or a backup): projections rebuilt from its files without taking its lock, and `verify`,
//! which checks every checksum, sequence continuity, and that the newest snapshot plus the
//! log after it equals a full replay.

use crate::disk::store_files::StoreManifest;
use crate::error::{Error, Result};
use crate::projection::Projections;
use crate::snapshot;
use crate::types::{Layer, Record};
use magray_wal::History;
use std::path::{Path, PathBuf};

/// The store's MANIFEST, or an error saying `dir` is not a store.
pub fn manifest(dir: &Path) -> Result<StoreManifest> {
    StoreManifest::read(dir)?.ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} is not a magray-memory store (no MANIFEST); check the path",
            dir.display()
        ))
    })
}

/// Projections of `dir` from its newest loadable snapshot plus the log after it (or a full
/// replay when `full_replay`). Returns them with the snapshot used, if any.
pub(crate) fn load(dir: &Path, full_replay: bool) -> Result<(Projections, Option<u64>)> {
    let m = manifest(dir)?;
    let mut base = None;
    if !full_replay {
        for (seq, path) in snapshot::list(&dir.join("snapshots"))? {
            if let Ok(l) = snapshot::load(&path, m.dimension, snapshot::Check::Full) {
                base = Some((seq, l.projections));
                break;
            }
        }
    }
    let (mut p, from) = match base {
        Some((seq, p)) => (p, Some(seq)),
        None => (Projections::new(m.dimension), None),
    };
    p.index.tail.turn_off();
    let history = History::open_offline(dir, p.applied_seq + 1);
    for env in history {
        let env = env?;
        if env.seq != p.applied_seq + 1 {
            // The snapshot is ahead of (or beside) this log: rebuild from the log alone.
            return load(dir, true);
        }
        p.apply(&env)?;
    }
    Ok((p, from))
}

/// Every live record of a store directory, in insertion order, read from its files without
/// taking its lock (export while an agent holds the store). Records past their TTL are
/// included, like [`Memory::records`](crate::Memory::records).
pub fn read_records(dir: &Path, layer: Option<Layer>) -> Result<Vec<Record>> {
    let (p, _) = load(dir, false)?;
    Ok(p.records()
        .map(|(_, r)| r)
        .filter(|r| layer.is_none_or(|l| r.layer == l))
        .map(|r| r.to_record())
        .collect())
}

/// [`read_records`] with each record's (unit-length) embedding.
pub fn read_records_with_vectors(
    dir: &Path,
    layer: Option<Layer>,
) -> Result<Vec<(Record, Vec<f32>)>> {
    let (p, _) = load(dir, false)?;
    // Every block against its sum before any vector is read out.
    p.vectors.scrub(&|| false)?;
    Ok(p.records()
        .filter(|(_, r)| layer.is_none_or(|l| r.layer == l))
        .map(|(slot, r)| (r.to_record(), p.vectors.get(slot).to_vec()))
        .collect())
}

/// What `verify` found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VerifyReport {
    /// The directory checked.
    pub dir: PathBuf,
    /// Its timeline.
    pub timeline: String,
    /// Events read (every frame's checksums and rkyv checks passed).
    pub events: u64,
    /// Last sequence read.
    pub last_seq: u64,
    /// Commit time of the first and last event (µs).
    pub first_ts_us: u64,
    /// Commit time of the last event (µs).
    pub last_ts_us: u64,
    /// An unfinished last entry (a crash, or a write in progress in a store in use): not a
    /// problem, it was never acknowledged.
    pub torn_tail: Option<String>,
    /// Snapshots checked: (sequence, `None` if valid or the reason it is not).
    pub snapshots: Vec<(u64, Option<String>)>,
    /// Live records per layer after a full replay.
    pub records: [u64; 3],
    /// Everything wrong, each naming the file (and offset where there is one).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks a store or backup directory: the MANIFEST, every log and archive frame (checksum,
/// structure, sequence continuity from 1), every snapshot (manifest, every file's length and
/// crc32, HNSW dumps included), and that the newest valid snapshot plus the log after it
/// equals a full replay. Reads only; never takes the store's lock.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    let m = manifest(dir)?;
    let mut r = VerifyReport {
        dir: dir.to_path_buf(),
        timeline: m.timeline.clone(),
        ..Default::default()
    };
    let mut full = Projections::new(m.dimension);
    full.index.tail.turn_off();
    let mut history = History::open_offline(dir, 1);
    for env in history.by_ref() {
        match env {
            Ok(env) => {
                if r.events == 0 {
                    r.first_ts_us = env.ts_us;
                }
                r.events += 1;
                r.last_seq = env.seq;
                r.last_ts_us = env.ts_us;
                if let Err(e) = full.apply(&env) {
                    r.problems.push(format!("event {}: {e}", env.seq));
                    break;
                }
            }
            Err(e) => {
                r.problems.push(format!("log: {e}"));
                break;
            }
        }
    }
    r.torn_tail = history.torn_tail().map(|t| format!("{t:?}"));
    for l in Layer::ALL {
        r.records[l.index()] = full.layers[l.index()].members.len() as u64;
    }
    let mut compared = false;
    for (seq, path) in snapshot::list(&dir.join("snapshots"))? {
        let checked = snapshot::load(&path, m.dimension, snapshot::Check::Full).and_then(|l| {
            snapshot::check_dumps(&path, &l.manifest)?;
            // Each block against its sum too: what a store opened on these files checks.
            l.projections.vectors.scrub(&|| false)?;
            Ok(l)
        });
        match checked {
            Err(e) => {
                r.problems.push(format!("snapshot {}: {e}", path.display()));
                r.snapshots.push((seq, Some(e.to_string())));
            }
            Ok(l) if seq > r.last_seq => {
                let why = format!(
                    "snapshot {} is at sequence {seq}, beyond the log's last {}",
                    path.display(),
                    r.last_seq
                );
                r.problems.push(why.clone());
                r.snapshots.push((seq, Some(why)));
                drop(l);
            }
            Ok(l) => {
                r.snapshots.push((seq, None));
                if compared || !r.problems.is_empty() {
                    continue;
                }
                compared = true;
                let mut p = l.projections;
                for env in History::open_offline(dir, seq + 1).until_seq(r.last_seq) {
                    let applied = match env {
                        Ok(e) => p
                            .apply(&e)
                            .map_err(|e| format!("replaying after snapshot {seq}: {e}")),
                        Err(e) => Err(format!("log after snapshot {seq}: {e}")),
                    };
                    if let Err(why) = applied {
                        r.problems.push(why);
                        break;
                    }
                }
                if let Some(why) = differ(&p, &full) {
                    r.problems.push(format!(
                        "snapshot {} plus the log after it differs from a full replay: {why}",
                        path.display()
                    ));
                }
            }
        }
    }
    Ok(r)
}

/// The first difference between two projections, if any.
pub(crate) fn differ(a: &Projections, b: &Projections) -> Option<String> {
    if a.applied_seq != b.applied_seq {
        return Some(format!(
            "applied sequence {} vs {}",
            a.applied_seq, b.applied_seq
        ));
    }
    if let Some(why) = a.broken_invariant().or_else(|| b.broken_invariant()) {
        return Some(why);
    }
    if a.nslots() != b.nslots() {
        return Some(format!("{} slots vs {}", a.nslots(), b.nslots()));
    }
    for slot in 0..a.nslots() {
        let (x, y) = (a.live(slot), b.live(slot));
        // Wherever each is kept (a table row or owned), the same record and statistics.
        let data = |r: crate::projection::Rec<'_>| (r.to_data(), r.access.cloned());
        if x.map(data) != y.map(data) {
            let id = x.or(y).map(|r| crate::RecordId(r.id));
            return Some(format!("slot {slot} (record {id:?}) differs"));
        }
    }
    if (a.promoted, a.expired) != (b.promoted, b.expired) {
        return Some("lifecycle counters differ".into());
    }
    // The key lookups (a snapshot's key index plus what changed since, against maps replayed
    // from the start): each record is found by its id, an identical insert resolves to the
    // same record, and it is referred to as often.
    for (slot, r) in a.records() {
        let id = crate::RecordId(r.id);
        let (text, project) = (r.body.text(), r.body.project());
        let dup = |p: &Projections| p.find_duplicate(text, r.content_hash, r.layer, project, 0);
        if a.slot_of(&r.id) != Some(slot) || b.slot_of(&r.id) != Some(slot) {
            return Some(format!(
                "record {id:?} is not found by its id in slot {slot}"
            ));
        }
        if dup(a) != dup(b) {
            return Some(format!(
                "an insert identical to record {id:?} resolves differently"
            ));
        }
        if a.refs_in(&r.id) != b.refs_in(&r.id) {
            return Some(format!(
                "references to record {id:?} are counted differently"
            ));
        }
    }
    a.keywords.differs(&b.keywords)
}
