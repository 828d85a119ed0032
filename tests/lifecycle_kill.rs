#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! SIGKILL during promotion batches: a child inserts rounds of 300 records into Interact and
//! promotes each round to Insights in one `promote()` (one log entry), and is killed at random
//! moments — most land while a batch is being scored or written. After each kill: every
//! round is entirely in Interact or entirely in Insights (all or none of a batch), every
//! acknowledged promotion is there, every `Promoted` event in the log is fully applied, and a
//! full replay gives every record the same layer. The child is this binary re-executed;
//! `MAGRAY_KILL_SEED` replays a seed.
mod common;
use common::*;
use magray_memory::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const DIR_ENV: &str = "MAGRAY_KILL_PROMOTE_DIR";
const CYCLE_ENV: &str = "MAGRAY_KILL_PROMOTE_CYCLE";
const CYCLES: u64 = 8;
const ROUND: usize = 300;

fn cfg() -> Config {
    let mut c = config();
    c.checkpoint_every = 1000;
    c.checkpoint_on_close = false;
    c.lifecycle = LifecycleConfig {
        // Every Interact record scores ≥ 0: each promote() moves all of them, one entry.
        promoter: Promoter::AccessCount,
        thresholds: Some([0.0, f64::INFINITY]),
        ..LifecycleConfig::manual()
    };
    c
}

#[test]
#[ignore = "child process of promotion_batches_survive_sigkill_all_or_nothing"]
fn kill_child_promoter() {
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
        println!("READY");
        std::io::stdout().flush().unwrap();
        let vs = clustered(cycle, ROUND, DIM, 8);
        for round in cycle * 1000.. {
            let batch: Vec<NewRecord> = vs
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    NewRecord::new(format!("r{round} i{i}"), v.clone()).tag(format!("r{round}"))
                })
                .collect();
            m.insert_batch(batch).await.expect("child insert");
            println!("INSERTED {round}");
            std::io::stdout().flush().unwrap();
            m.promote().await.expect("child promote");
            println!("PROMOTED {round}");
            std::io::stdout().flush().unwrap();
        }
    });
}

#[test]
fn promotion_batches_survive_sigkill_all_or_nothing() {
    let seed: u64 = std::env::var("MAGRAY_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("promotion kill test seed: {seed} (replay with MAGRAY_KILL_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mut inserted, mut promoted) = (HashSet::new(), HashSet::new());
    let mut mid_batch = 0;
    for cycle in 0..CYCLES {
        let mut child = Command::new(&exe)
            .args(["kill_child_promoter", "--exact", "--ignored", "--nocapture"])
            .env(DIR_ENV, dir.path())
            .env(CYCLE_ENV, cycle.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if l == "READY" {
                    let _ = ready_tx.send(());
                }
                lines.push(l);
            }
            lines
        });
        // Kill after the open (its time grows with the store), while rounds run.
        let _ = ready_rx.recv_timeout(Duration::from_secs(60));
        let delay = rng.random_range(50..1200);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut last = "";
        let lines = reader.join().unwrap();
        for line in &lines {
            match line.split_once(' ') {
                Some(("INSERTED", r)) => {
                    inserted.insert(r.to_string());
                    last = "INSERTED";
                }
                Some(("PROMOTED", r)) => {
                    promoted.insert(r.to_string());
                    last = "PROMOTED";
                }
                _ => {}
            }
        }
        if last == "INSERTED" {
            mid_batch += 1; // killed between a round's insert and its promotion's ack
        }
        rt.block_on(verify(dir.path(), &inserted, &promoted, cycle));
        eprintln!(
            "cycle {cycle}: killed after {delay} ms (last line {last:?}); {} rounds acked, {} promotions acked",
            inserted.len(),
            promoted.len()
        );
    }
    assert!(
        promoted.len() >= 3,
        "the children promoted a meaningful amount"
    );
    assert!(
        mid_batch >= 1,
        "at least one kill landed inside a promotion batch (seed {seed})"
    );
    // Finally: a full replay gives every record the layer the snapshot + delta open gave.
    rt.block_on(async {
        let copy = tempfile::tempdir().unwrap();
        copy_store(dir.path(), copy.path());
        let layers = |m: &Memory| -> HashMap<RecordId, Layer> {
            m.records(None)
                .unwrap()
                .into_iter()
                .map(|r| (r.id, r.layer))
                .collect()
        };
        let m = Memory::open(dir.path(), cfg()).await.unwrap();
        let full = Memory::open(
            copy.path(),
            Config {
                full_replay: true,
                ..cfg()
            },
        )
        .await
        .unwrap();
        assert_eq!(layers(&m), layers(&full));
        m.close().await.unwrap();
        full.close().await.unwrap();
    });
}

async fn verify(
    dir: &std::path::Path,
    inserted: &HashSet<String>,
    promoted: &HashSet<String>,
    cycle: u64,
) {
    let m = Memory::open(dir, cfg())
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: open after kill failed: {e}"));
    let mut rounds: HashMap<String, (usize, HashSet<Layer>)> = HashMap::new();
    for r in m.records(None).unwrap() {
        let e = rounds
            .entry(r.tags[0].trim_start_matches('r').to_string())
            .or_default();
        e.0 += 1;
        e.1.insert(r.layer);
    }
    for (round, (n, layers)) in &rounds {
        assert_eq!(*n, ROUND, "cycle {cycle}: round {round} has {n} records");
        assert_eq!(
            layers.len(),
            1,
            "cycle {cycle}: round {round} is split across {layers:?}"
        );
    }
    for r in inserted {
        assert!(
            rounds.contains_key(r),
            "cycle {cycle}: acked round {r} lost"
        );
    }
    for r in promoted {
        assert_eq!(
            rounds[r].1,
            HashSet::from([Layer::Insights]),
            "cycle {cycle}: acked promotion of round {r} lost"
        );
    }
    // Every promotion batch in the log is applied whole: each id it names is in Insights.
    let layer: HashMap<RecordId, Layer> = m
        .records(None)
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.layer))
        .collect();
    let mut batches = 0;
    for env in magray_memory::wal::History::open_offline(dir, 1) {
        let env = env.unwrap_or_else(|e| panic!("cycle {cycle}: log unreadable: {e}"));
        if let Event::Promoted(list) = env.event {
            batches += 1;
            for p in list {
                assert_eq!(
                    layer.get(&RecordId(p.id)),
                    Some(&Layer::Insights),
                    "cycle {cycle}: promotion batch at sequence {} is not fully applied",
                    env.seq
                );
            }
        }
    }
    assert!(
        batches >= promoted.len(),
        "cycle {cycle}: {batches} batches in the log"
    );
    m.close().await.unwrap();
}
