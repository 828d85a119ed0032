#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Kill test: a child process appending from 4 concurrent writers is SIGKILLed at random
//! moments; after each kill every acknowledged batch reads back identical, sequences are
//! contiguous, and nothing unacknowledged is half there.
//!
//! The child is this test binary re-executed (`kill_child_writer`, ignored unless the
//! environment names a directory). On failure the parent prints the seed; set
//! `MAGRAY_KILL_SEED` to replay it.
//!
//! Stress knobs (the defaults keep a run at ~35 s):
//! - `MAGRAY_KILL_CYCLES`: kills per run (24);
//! - `MAGRAY_KILL_TEXT_LEN`: bytes of text per event (300). Larger entries span more pages,
//!   so more kills land inside a write; at 100000 every entry crosses the checkpoint
//!   threshold, so most torn entries land at a segment switch;
//! - `MAGRAY_KILL_MAX_DELAY_MS`: latest kill after the child starts (400);
//! - `MAGRAY_KILL_KEEP_DIR`: where to copy the log directory when reopening it fails.
//!
//! `MAGRAY_KILL_CYCLES=40 MAGRAY_KILL_TEXT_LEN=100000 MAGRAY_KILL_MAX_DELAY_MS=150 cargo test
//! --release -p magray-wal --test kill_appenders` failed about every other run before the fix
//! pinned by `torn_entry_at_a_segment_switch_is_a_torn_tail_not_corruption`.

mod common;

use common::*;
use magray_wal::*;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DIR_ENV: &str = "MAGRAY_KILL_CHILD_DIR";
const CYCLE_ENV: &str = "MAGRAY_KILL_CHILD_CYCLE";
const WRITERS: u64 = 4;
const TEXT_LEN: usize = 300;
const CYCLES: u64 = 24;
const MAX_DELAY_MS: u64 = 400;

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn text_len() -> usize {
    knob("MAGRAY_KILL_TEXT_LEN", TEXT_LEN)
}

fn config(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    // Small segments: kills also land while segments are archived and recycled.
    c.segment_bytes = 64 << 10;
    c
}

#[test]
#[ignore = "child process of appenders_survive_sigkill; runs only when re-executed by it"]
fn kill_child_writer() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var(CYCLE_ENV)
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let log = std::sync::Arc::new(Log::open(config(Path::new(&dir))).expect("child open"));
    println!("READY");
    let text_len = text_len();
    let handles: Vec<_> = (0..WRITERS)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let writer = cycle * WRITERS + t;
                for counter in 0.. {
                    let at = log
                        .append(batch(writer, counter, text_len))
                        .expect("child append");
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "ACK {writer} {counter} {} {}",
                        at.first_seq, at.last_seq
                    )
                    .expect("pipe");
                    out.flush().expect("flush");
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

#[test]
fn appenders_survive_sigkill() {
    let seed: u64 = std::env::var("MAGRAY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("kill test seed: {seed} (replay with MAGRAY_KILL_SEED={seed})");
    let result = std::panic::catch_unwind(|| run(seed));
    if let Err(e) = result {
        eprintln!("FAILED with seed {seed}: replay with MAGRAY_KILL_SEED={seed}");
        std::panic::resume_unwind(e);
    }
}

fn run(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    // (writer, counter) -> (first_seq, last_seq) for every acknowledged batch.
    let mut acked: HashMap<(u64, u64), (u64, u64)> = HashMap::new();
    let mut total_torn = 0;
    let cycles = knob("MAGRAY_KILL_CYCLES", CYCLES);
    let max_delay_ms = knob("MAGRAY_KILL_MAX_DELAY_MS", MAX_DELAY_MS).max(31);
    for cycle in 0..cycles {
        let mut child = Command::new(&exe)
            .args([
                "kill_child_writer",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(DIR_ENV, dir.path())
            .env(CYCLE_ENV, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
                .collect::<Vec<String>>()
        });
        // Some kills land during open/recovery, most during appends.
        let delay_ms = if rng.random_bool(0.2) {
            rng.random_range(0..30)
        } else {
            rng.random_range(30..max_delay_ms)
        };
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let killed_after = start.elapsed();
        let lines = reader.join().unwrap();
        let mut new_acks = 0;
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let ["ACK", w, c, f, l] = parts[..] {
                let (Ok(w), Ok(c), Ok(f), Ok(l)) = (w.parse(), c.parse(), f.parse(), l.parse())
                else {
                    continue; // a line cut by the kill
                };
                acked.insert((w, c), (f, l));
                new_acks += 1;
            }
        }
        let torn = verify(dir.path(), &acked, cycle);
        total_torn += usize::from(torn);
        eprintln!(
            "cycle {cycle}: killed after {killed_after:?}, {new_acks} new acks, {} total, torn tail: {torn}",
            acked.len()
        );
    }
    assert!(
        acked.len() > 100,
        "the children acknowledged a meaningful amount of work"
    );
    eprintln!(
        "{cycles} kills, {} acknowledged batches verified, {total_torn} torn tails repaired",
        acked.len()
    );
}

/// Names of the live segments (`wal-N`), highest id last.
fn live_segments(dir: &Path) -> Vec<String> {
    let mut segs: Vec<(u64, String)> = std::fs::read_dir(dir.join("wal"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name.strip_prefix("wal-")?.parse::<u64>().ok()?;
                    Some((id, name))
                })
                .collect()
        })
        .unwrap_or_default();
    segs.sort();
    segs.into_iter().map(|(_, name)| name).collect()
}

/// Opens the log after a kill and checks the oracle. Returns whether a torn tail was repaired.
fn verify(dir: &Path, acked: &HashMap<(u64, u64), (u64, u64)>, cycle: u64) -> bool {
    let text_len = text_len();
    let segments = live_segments(dir);
    let log = Log::open(config(dir)).unwrap_or_else(|e| {
        if let Ok(keep) = std::env::var("MAGRAY_KILL_KEEP_DIR") {
            copy_dir(dir, Path::new(&keep));
            eprintln!("cycle {cycle}: log directory copied to {keep}");
        }
        panic!("cycle {cycle}: open after kill failed: {e} (live segments {segments:?})")
    });
    let torn = log.recovery_report().torn_tail.is_some();
    if let Some(t) = &log.recovery_report().torn_tail {
        let name = t.file.file_name().map(|n| n.to_string_lossy().into_owned());
        let where_ = if name.as_ref() == segments.last() {
            "the last segment"
        } else {
            "a segment before the last"
        };
        eprintln!(
            "cycle {cycle}: torn tail in {name:?} ({where_} of {segments:?}) at {}: {}",
            t.offset, t.reason
        );
    }
    let history: Vec<Envelope> = log
        .history(1)
        .collect::<Result<_>>()
        .unwrap_or_else(|e| panic!("cycle {cycle}: history unreadable: {e}"));
    for (i, e) in history.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "cycle {cycle}: sequences contiguous from 1"
        );
    }
    // Every acknowledged batch is present and identical.
    for (&(w, c), &(first, last)) in acked {
        let want = batch(w, c, text_len);
        assert_eq!(last - first + 1, want.len() as u64);
        for (k, ev) in want.iter().enumerate() {
            let got = history
                .get((first - 1) as usize + k)
                .unwrap_or_else(|| panic!("cycle {cycle}: acked seq {} missing", first + k as u64));
            assert_eq!(
                &got.event, ev,
                "cycle {cycle}: acked event at seq {} differs",
                got.seq
            );
        }
    }
    // Every batch present (acknowledged or not) is whole and contiguous.
    let mut groups: BTreeMap<(u64, u64), Vec<(u64, u64)>> = BTreeMap::new();
    for e in &history {
        let (w, c, i) = origin(&e.event).expect("only inserts are written");
        groups.entry((w, c)).or_default().push((i, e.seq));
    }
    for ((w, c), members) in groups {
        let want = batch(w, c, text_len);
        assert_eq!(
            members.len(),
            want.len(),
            "cycle {cycle}: batch ({w},{c}) is partial: {members:?}"
        );
        for (k, (i, seq)) in members.iter().enumerate() {
            assert_eq!(*i, k as u64);
            assert_eq!(*seq, members[0].1 + k as u64);
            assert_eq!(history[(*seq - 1) as usize].event, want[k]);
        }
    }
    log.close().unwrap();
    torn
}
