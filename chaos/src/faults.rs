//! The storage faults the suite injects between kill cycles, and what each must be detected as.

use super::*;

/// A storage fault injected into a closed store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Cut the live log inside its last entry.
    TruncateTail,
    /// Flip a bit in the last entry of the live log.
    FlipTail,
    /// Flip a bit in an entry in the middle of the live log.
    FlipMiddle,
    /// Flip a bit in a file of the newest snapshot.
    FlipSnapshot,
    /// Delete the newest snapshot.
    DeleteSnapshot,
    /// Zero the last 4 KiB page of a file of the newest snapshot.
    ZeroSnapshotPage,
    /// Flip a bit in an archive file.
    FlipArchive,
    /// Run the worker on a copy of the store on a tmpfs with 256 KiB to spare, until writes
    /// and checkpoints hit ENOSPC (needs root, to mount).
    DiskFull,
}

impl Fault {
    /// Every fault kind.
    pub const ALL: [Fault; 8] = [
        Fault::TruncateTail,
        Fault::FlipTail,
        Fault::FlipMiddle,
        Fault::FlipSnapshot,
        Fault::DeleteSnapshot,
        Fault::ZeroSnapshotPage,
        Fault::FlipArchive,
        Fault::DiskFull,
    ];
}

fn newest_snapshot(dir: &Path) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    v.sort();
    v.pop()
}

fn live_segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(dir.join("wal"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("wal-")?
                .parse::<u64>()
                .ok()
                .map(|id| (id, e.path()))
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, p)| p).collect()
}

/// The end of the valid entries of the last live segment: the shortest length of the file
/// that still reads the log's last event `last` (binary search; the file is put back).
/// `None` when that event is not in this segment. Recycled segments keep stale bytes after
/// their valid end, so the last non-zero byte is not it.
fn valid_end(dir: &Path, seg: &Path, original: &[u8], last: u64) -> Option<usize> {
    let reads = |len: usize| {
        std::fs::write(seg, &original[..len]).is_ok()
            && History::open_offline(dir, last)
                .until_seq(last)
                .next()
                .is_some_and(|e| e.is_ok_and(|e| e.seq == last))
    };
    let found = if last == 0 || !reads(original.len()) || reads(0) {
        None
    } else {
        let (mut lo, mut hi) = (0, original.len());
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            if reads(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    };
    let _ = std::fs::write(seg, original);
    found
}

/// Where the last entry of the live segment starts: the valid end of the latest event that
/// an earlier entry holds (events of one entry share its end). `None` when the segment holds
/// one entry, or the search gives up.
fn last_entry_start(dir: &Path, seg: &Path, original: &[u8], last: u64, end: u64) -> Option<u64> {
    // A group-committed entry holds at most a few hundred events here (batches of 100).
    for seq in (last.saturating_sub(1024).max(1)..last).rev() {
        match valid_end(dir, seg, original, seq) {
            Some(e) if (e as u64) < end => return Some(e as u64),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

/// What injecting a fault found.
#[derive(Debug, Clone)]
pub struct FaultOutcome {
    /// The fault was applied (there was something to damage).
    pub injected: bool,
    /// The damage was detected and reported or named as expected.
    pub detected: bool,
    /// What happened, for the log.
    pub detail: String,
}

impl FaultOutcome {
    /// Counts this outcome in `faults` (injected, detected, by kind) when it was injected;
    /// `Err` with its detail when it was injected and not detected.
    pub fn tally(
        self,
        fault: Fault,
        faults: &mut std::collections::BTreeMap<String, (u64, u64)>,
    ) -> Result<(), String> {
        if !self.injected {
            return Ok(());
        }
        let f = faults.entry(format!("{fault:?}")).or_default();
        f.0 += 1;
        f.1 += u64::from(self.detected);
        if self.detected {
            Ok(())
        } else {
            Err(self.detail)
        }
    }
}

/// Space the files under `p` take on a tmpfs: every file and directory rounded up to whole
/// 4 KiB pages.
fn dir_bytes(p: &Path) -> u64 {
    let page = |n: u64| n.div_ceil(4096) * 4096;
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => 4096 + dir_bytes(&e.path()),
            _ => page(e.metadata().map_or(0, |m| m.len())),
        })
        .sum()
}

/// The `DiskFull` fault: the store copied onto a just-too-small tmpfs, the worker run there
/// until the disk fills, the store copied back and checked. Expected: the worker stops with
/// an error (not a panic), and nothing it acknowledged is lost.
pub(crate) async fn disk_full(
    worker: &Path,
    dir: &Path,
    seed: u64,
    oracle: &mut Oracle,
) -> FaultOutcome {
    let none = |why: String| FaultOutcome {
        injected: false,
        detected: false,
        detail: why,
    };
    let Ok(mnt) = tempfile::tempdir() else {
        return none("no temp dir".into());
    };
    let size = dir_bytes(dir) + (256 << 10);
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return none("cannot mount a tmpfs (needs root: run as root, e.g. `sudo -E cargo test -p magray-chaos`)".into());
    }
    let small = mnt.path().join("store");
    if let Err(e) = copy_store(dir, &small) {
        let _ = Command::new("umount").arg(mnt.path()).status();
        return none(format!("the store did not fit the tmpfs: {e}"));
    }
    let outcome = async {
        let mut child = Command::new(worker)
            .arg(&small)
            .arg(seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
                .collect::<Vec<String>>()
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let lines = reader.join().map_err(|_| "reader panicked")?;
        oracle.absorb(&lines);
        // Back onto the big disk (the originals are replaced: the run went on there).
        std::fs::remove_dir_all(dir).map_err(|e| e.to_string())?;
        copy_store(&small, dir)?;
        Ok::<_, String>((status, err))
    }
    .await;
    let _ = Command::new("umount").arg(mnt.path()).status();
    let (status, err) = match outcome {
        Ok(x) => x,
        Err(e) => {
            return FaultOutcome {
                injected: true,
                detected: false,
                detail: e,
            }
        }
    };
    // The worker says why it stopped, typed: an ENOSPC in its error's chain.
    let stop = oracle.stopped.take();
    let full = stop.as_ref().is_some_and(|(kind, _)| kind == "enospc");
    let clean_exit = status.is_some_and(|s| s.code() == Some(1));
    let checked = verify(dir, oracle, u64::MAX - 1).await;
    FaultOutcome {
        injected: full,
        detected: full && clean_exit && checked.is_ok(),
        detail: format!(
            "worker exit {:?}; {:?} ({}); after: {}",
            status.and_then(|s| s.code()),
            stop,
            err.lines().last().unwrap_or(""),
            checked
                .err()
                .unwrap_or_else(|| "nothing acknowledged lost".into())
        ),
    }
}

/// Injects `fault` into the closed store, checks the expected reaction, and (for damage to
/// the log or archive, which would otherwise be permanent) puts the original bytes back so
/// the run can go on. Snapshot damage is left: the store must fall back and lose nothing.
pub async fn inject(dir: &Path, fault: Fault, rng: &mut Rng, oracle: &mut Oracle) -> FaultOutcome {
    match fault {
        Fault::TruncateTail | Fault::FlipTail | Fault::FlipMiddle => {
            damage_log(dir, fault, rng).await
        }
        Fault::FlipSnapshot | Fault::ZeroSnapshotPage | Fault::DeleteSnapshot => {
            damage_snapshot(dir, fault, rng, oracle).await
        }
        Fault::DiskFull => none("run through `disk_full`"),
        Fault::FlipArchive => damage_archive(dir, rng),
    }
}

/// A fault that could not be injected, and why.
fn none(why: &str) -> FaultOutcome {
    FaultOutcome {
        injected: false,
        detected: false,
        detail: why.to_string(),
    }
}

/// Cuts or flips a byte of the live log segment, opens, and puts the bytes back.
async fn damage_log(dir: &Path, fault: Fault, rng: &mut Rng) -> FaultOutcome {
    let Some(seg) = live_segments(dir).pop() else {
        return none("no live segment");
    };
    let Ok(original) = std::fs::read(&seg) else {
        return none("unreadable segment");
    };
    let last = log_facts(dir).map(|f| f.last).unwrap_or(0);
    let Some(end) = valid_end(dir, &seg, &original, last).map(|e| e as u64) else {
        return none("the last event is not in the last segment");
    };
    if end < 2048 {
        return none("too little data in the live segment");
    }
    // A mid-log flip lands before the last entry's first byte: valid entries follow it, so
    // recovery must refuse the log (naming the segment), never cut it there.
    let last_entry_start = match fault {
        Fault::FlipMiddle => match last_entry_start(dir, &seg, &original, last, end) {
            Some(s) if s > 512 => s,
            _ => return none("a single entry in the live segment"),
        },
        _ => 0,
    };
    let mut damaged = original.clone();
    let at = match fault {
        Fault::FlipMiddle => rng.range(256, last_entry_start - 1),
        _ => end - rng.range(1, 24),
    } as usize;
    match fault {
        Fault::TruncateTail => damaged.truncate(at),
        _ => damaged[at] ^= 1 << rng.range(0, 7),
    }
    // `valid_end` put the segment back as it was: the log still ends at `last`.
    let before = last;
    if std::fs::write(&seg, &damaged).is_err() {
        return none("cannot write the segment");
    }
    let name = seg
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let outcome = match Memory::open(dir, quiet_config()).await {
        Ok(m) => {
            let (r, after) = (m.stats().open.log, m.stats().last_seq);
            drop(m);
            if fault == Fault::FlipMiddle {
                // Damage followed by valid entries opened anyway: a silent cut, or a flip
                // nothing checked.
                FaultOutcome {
                    injected: true,
                    detected: false,
                    detail: format!(
                        "a flip before the last entry opened: last sequence {before} → {after}, \
                         torn tail {:?}",
                        r.torn_tail.map(|t| (t.offset, t.from_seq))
                    ),
                }
            } else if after == before {
                // The bytes hit held no event (preallocated or stale bytes after the
                // valid end of a recycled segment): nothing to detect.
                none("the damage hit bytes that hold no event")
            } else {
                // Events were cut off: only as a reported torn tail.
                FaultOutcome {
                    injected: true,
                    detected: after < before && r.torn_tail.is_some(),
                    detail: format!(
                        "last sequence {before} → {after}, torn tail {:?}",
                        r.torn_tail.map(|t| (t.offset, t.from_seq))
                    ),
                }
            }
        }
        Err(e) => {
            let msg = e.to_string();
            FaultOutcome {
                injected: true,
                // Damage before valid entries must be refused, naming the segment;
                // a cut tail must never make the store unopenable.
                detected: fault != Fault::TruncateTail && msg.contains(&name),
                detail: msg,
            }
        }
    };
    // Put the original bytes back (the repair truncated the file): the run goes on
    // from the undamaged log, so the oracle stays valid.
    let _ = std::fs::write(&seg, &original);
    outcome
}

/// Flips a byte, zeroes the last page, or deletes the newest snapshot; expects open to fall
/// back and the oracle to find nothing lost.
async fn damage_snapshot(
    dir: &Path,
    fault: Fault,
    rng: &mut Rng,
    oracle: &mut Oracle,
) -> FaultOutcome {
    let Some(snap) = newest_snapshot(dir) else {
        return none("no snapshot");
    };
    let name = snap.display().to_string();
    let mut damaged_file = String::new();
    let files: Vec<PathBuf> = std::fs::read_dir(&snap)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect();
    match fault {
        Fault::DeleteSnapshot => {
            if std::fs::remove_dir_all(&snap).is_err() {
                return none("cannot delete");
            }
        }
        _ => {
            if files.is_empty() {
                return none("empty snapshot");
            }
            let f = &files[rng.range(0, files.len() as u64 - 1) as usize];
            damaged_file = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Ok(mut b) = std::fs::read(f) else {
                return none("unreadable");
            };
            if fault == Fault::FlipSnapshot {
                let at = rng.range(0, b.len() as u64 - 1) as usize;
                b[at] ^= 1 << rng.range(0, 7);
            } else {
                let from = b.len().saturating_sub(4096);
                if b[from..].iter().all(|x| *x == 0) {
                    return none("last page already zero");
                }
                b[from..].iter_mut().for_each(|x| *x = 0);
            }
            if std::fs::write(f, &b).is_err() {
                return none("cannot write");
            }
        }
    }
    // Expected: open falls back (an older snapshot or a full replay), names the bad
    // snapshot (or there is nothing to name when it was deleted), and loses nothing.
    // Or, for a vector chunk (mapped unread, each block checked on first read and by
    // the indexer's scrub): the damage is reported after open, naming the chunk, and
    // the next open (the oracle's check below) falls back.
    let rejected = match Memory::open(dir, quiet_config()).await {
        Ok(m) => {
            // HNSW dumps and vector blocks are checked in the background.
            let _ = m.wait_indexed().await;
            let s = m.stats();
            drop(m);
            let r = s.open;
            r.snapshots_rejected
                .iter()
                .any(|(p, _)| name.contains(p.as_str()) || p.contains(&name))
                // An index rebuilt because of this file, which its reason names.
                || r.index_rebuilds
                    .iter()
                    .any(|why| !damaged_file.is_empty() && why.contains(&damaged_file))
                || s.damage.is_some_and(|d| d.contains(&name))
        }
        Err(e) => {
            return FaultOutcome {
                injected: true,
                detected: false,
                detail: format!("open failed after snapshot damage: {e}"),
            }
        }
    };
    let lost = verify(dir, oracle, u64::MAX).await;
    FaultOutcome {
        injected: true,
        detected: lost.is_ok() && (fault == Fault::DeleteSnapshot || rejected),
        detail: match lost {
            Ok(_) => format!("fell back; rejected reported: {rejected}"),
            Err(e) => e,
        },
    }
}

/// Flips a byte of an archive file; expects `verify` to name it.
fn damage_archive(dir: &Path, rng: &mut Rng) -> FaultOutcome {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("archive"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 64))
        .collect();
    if files.is_empty() {
        return none("no archive file yet");
    }
    let f = &files[rng.range(0, files.len() as u64 - 1) as usize];
    let Ok(original) = std::fs::read(f) else {
        return none("unreadable");
    };
    let mut b = original.clone();
    let at = rng.range(0, b.len() as u64 - 1) as usize;
    b[at] ^= 1 << rng.range(0, 7);
    if std::fs::write(f, &b).is_err() {
        return none("cannot write");
    }
    let name = f
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let r = magray_memory::verify::verify(dir);
    let _ = std::fs::write(f, &original);
    match r {
        Ok(r) => FaultOutcome {
            injected: true,
            detected: !r.ok() && r.problems.iter().any(|p| p.contains(&name)),
            detail: r.problems.join("; "),
        },
        Err(e) => FaultOutcome {
            injected: true,
            detected: e.to_string().contains(&name),
            detail: e.to_string(),
        },
    }
}
