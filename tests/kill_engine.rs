#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Kill test for the engine: a child process inserting, deleting and rating — with automatic
//! snapshots every 30 events and the indexer running — is SIGKILLed at random moments
//! (during open and replay, HNSW insertion, snapshot writing, chunk adoption). After each kill:
//! every acknowledged insert is there with its text, every acknowledged delete is gone,
//! nothing was never issued, projections equal a full replay from sequence 1, and records are
//! their own top-1. The child is this binary re-executed (`kill_child_engine`); on failure the
//! seed is printed: `MAGRAY_KILL_SEED` replays it.
mod common;
use common::*;
use magray_memory::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DIR_ENV: &str = "MAGRAY_KILL_ENGINE_DIR";
const CYCLE_ENV: &str = "MAGRAY_KILL_ENGINE_CYCLE";
const CYCLES: u64 = 12;

fn cfg() -> Config {
    let mut c = config();
    c.checkpoint_every = 30;
    c.exact_search_below = 0;
    c.checkpoint_on_close = false;
    c.access_flush_interval = Duration::from_millis(10);
    c
}

/// The vector is a function of the text, so the parent can check top-1 without the child.
fn vector_for(text: &str) -> Vec<f32> {
    let seed = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    unit((0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect())
}

#[test]
#[ignore = "child process of engine_survives_sigkill; runs only when re-executed by it"]
fn kill_child_engine() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        return;
    };
    let cycle: u64 = std::env::var(CYCLE_ENV).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let m = Memory::open(&dir, cfg()).await.expect("child open");
        let mut rng = StdRng::seed_from_u64(cycle);
        let mut mine: Vec<RecordId> = Vec::new();
        for counter in 0u64.. {
            let n = rng.random_range(1..8);
            let batch: Vec<NewRecord> = (0..n)
                .map(|j| {
                    let text = format!("c{cycle} n{counter} j{j}");
                    NewRecord::new(text.clone(), vector_for(&text))
                })
                .collect();
            let texts: Vec<String> = batch.iter().map(|r| r.text.clone()).collect();
            let ids = m.insert_batch(batch).await.expect("child insert");
            let mut out = std::io::stdout().lock();
            for (id, t) in ids.iter().zip(&texts) {
                writeln!(out, "ACK {id} {t}").unwrap();
            }
            out.flush().unwrap();
            drop(out);
            mine.extend(ids);
            if rng.random_bool(0.3) && !mine.is_empty() {
                let id = mine.swap_remove(rng.random_range(0..mine.len()));
                // Pending first: a kill between the delete's fsync and "DEL" leaves it
                // unacknowledged, and then either outcome is correct.
                println!("PENDING-DEL {id}");
                m.delete(id).await.expect("child delete");
                println!("DEL {id}");
            }
            if rng.random_bool(0.3) && !mine.is_empty() {
                let id = mine[rng.random_range(0..mine.len())];
                m.search(
                    &vector_for(&format!("c{cycle} n0 j0")),
                    &SearchOptions::top_k(3),
                )
                .await
                .expect("child search");
                m.rate(id, 0.5).await.expect("child rate");
            }
        }
    });
}

#[test]
fn engine_survives_sigkill() {
    let seed: u64 = std::env::var("MAGRAY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("engine kill test seed: {seed} (replay with MAGRAY_KILL_SEED={seed})");
    if let Err(e) = std::panic::catch_unwind(|| run(seed)) {
        eprintln!("FAILED with seed {seed}: replay with MAGRAY_KILL_SEED={seed}");
        std::panic::resume_unwind(e);
    }
}

fn run(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut live: HashMap<RecordId, String> = HashMap::new();
    let mut deleted: HashSet<RecordId> = HashSet::new();
    let mut pending: HashMap<RecordId, String> = HashMap::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args([
                "kill_child_engine",
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
        let delay = if rng.random_bool(0.25) {
            rng.random_range(5..60) // during open / replay
        } else {
            rng.random_range(60..700)
        };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in reader.join().unwrap() {
            let parts: Vec<&str> = line.splitn(3, ' ').collect();
            match parts[..] {
                ["ACK", id, text] => {
                    if let Ok(id) = id.parse::<RecordId>() {
                        if text.split(' ').count() == 3 {
                            live.insert(id, text.to_string());
                        }
                    }
                }
                ["PENDING-DEL", id] => {
                    if let Ok(id) = id.parse::<RecordId>() {
                        if let Some(text) = live.remove(&id) {
                            pending.insert(id, text);
                        }
                    }
                }
                ["DEL", id] => {
                    if let Ok(id) = id.parse::<RecordId>() {
                        pending.remove(&id);
                        deleted.insert(id);
                    }
                }
                _ => {} // a line cut by the kill
            }
        }
        let present = rt.block_on(verify(dir.path(), &live, &deleted, cycle));
        // An unacknowledged delete happened entirely or not at all; from now on it is known.
        for (id, text) in pending.drain() {
            if present.contains(&id) {
                live.insert(id, text);
            } else {
                deleted.insert(id);
            }
        }
        eprintln!(
            "cycle {cycle}: killed after {delay} ms; {} live acked records verified",
            live.len()
        );
    }
    assert!(
        live.len() > 50,
        "the children acknowledged a meaningful amount of work"
    );
}

async fn verify(
    dir: &Path,
    live: &HashMap<RecordId, String>,
    deleted: &HashSet<RecordId>,
    cycle: u64,
) -> HashSet<RecordId> {
    let m = Memory::open(dir, cfg())
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: open after kill failed: {e}"));
    let records = m.records(None).unwrap();
    let present: HashMap<RecordId, &Record> = records.iter().map(|r| (r.id, r)).collect();
    for (id, text) in live {
        let r = present
            .get(id)
            .unwrap_or_else(|| panic!("cycle {cycle}: acknowledged insert {id} ({text}) lost"));
        assert_eq!(&r.text, text, "cycle {cycle}: record {id} text");
    }
    for id in deleted {
        assert!(
            !present.contains_key(id),
            "cycle {cycle}: acknowledged delete {id} undone"
        );
    }
    for r in &records {
        let p: Vec<&str> = r.text.split(' ').collect();
        assert!(
            p.len() == 3 && p[0].starts_with('c') && p[1].starts_with('n') && p[2].starts_with('j'),
            "cycle {cycle}: a record nobody issued: {:?}",
            r.text
        );
    }
    // Records are their own top-1 (graph + exact tail, as served right after open).
    for r in records.iter().step_by(7) {
        let o = SearchOptions {
            record_access: false,
            ..SearchOptions::top_k(1)
        };
        let hits = m.search(&vector_for(&r.text), &o).await.unwrap();
        assert_eq!(
            hits[0].id, r.id,
            "cycle {cycle}: {} is not its own top-1",
            r.text
        );
    }
    // The projections catch up with the log. Not necessarily at this very instant: with
    // `checkpoint_every` 30 the maintenance thread may be checkpointing right after the open,
    // and its `Checkpointed` marker is durable a moment before it is applied.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stats = m.stats();
        assert!(
            stats.applied_seq <= stats.last_seq,
            "cycle {cycle}: applied {} past the log's end {}",
            stats.applied_seq,
            stats.last_seq
        );
        if stats.applied_seq == stats.last_seq {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "cycle {cycle}: projections stuck at {} behind the log's {}",
            stats.applied_seq,
            stats.last_seq
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(m);
    // Projections equal a full replay from sequence 1.
    let copy = tempfile::tempdir().unwrap();
    copy_store(dir, copy.path());
    let mut full = cfg();
    full.full_replay = true;
    let f = Memory::open(copy.path(), full).await.unwrap();
    assert_eq!(
        f.records(None).unwrap(),
        records,
        "cycle {cycle}: snapshot + delta == full replay"
    );
    drop(f);
    records.iter().map(|r| r.id).collect()
}
