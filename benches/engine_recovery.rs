#![allow(clippy::unwrap_used)]
//! `engine_recovery`: open-to-first-query time after an unclean stop. For each N the store
//! gets N records (`insert_batch` x1,000), is indexed (`wait_indexed`, only for N <= 100k:
//! building HNSW at 1M takes ~20 min here), checkpointed, then gets a 10k-record delta and
//! is dropped without `close()` (`checkpoint_on_close: false`), so every open loads the
//! snapshot and replays the delta. Measured: `Memory::open` + the first `search` (top-10,
//! `record_access: false`), in-process under criterion and in fresh child processes for the
//! report (which also reads VmRSS from /proc/self/status next to the raw vector bytes).
//! Also the empty-store open (target <= 150 ms). The page cache is warm (the store was just
//! written or opened); a cold-cache open after a reboot is slower.
//!
//! ```text
//! cargo bench --bench engine_recovery                                   # 10k, 100k (~4 min)
//! BENCH_RECOVERY_SIZES=10000,100000,1000000 cargo bench --bench engine_recovery  # full run
//! BENCH_RECOVERY_SIZES=5000 cargo bench --bench engine_recovery -- --test        # smoke
//! ```
//! Env: `BENCH_RECOVERY_SIZES` (default "10000,100000"), `BENCH_RECOVERY_DELTA` (default
//! 10000), `BENCH_RECOVERY_RUNS` (child-process opens per size, default 3),
//! `BENCH_EMPTY_RUNS` (default 20), `BENCH_REPORT_ONLY=1` (skip criterion), `BENCH_KEEP=1`
//! (keep the stores and print where, to profile an open by hand),
//! `BENCH_RECOVERY_INDEX_UP_TO` (largest store indexed before its snapshot, default 100000;
//! 1000000 indexes the 1M store too, about 20 more minutes). By hand:
//! `ENGINE_RECOVERY_CHILD=<store> [ENGINE_RECOVERY_INDEX_SECS=60] <this bench binary>` opens a
//! kept store once (and then reports the index catch-up rate over that many seconds).
//! `ENGINE_RECOVERY_UPGRADE=<store> <this bench binary>` rewrites a kept store's snapshot in
//! the current format and keeps a delta after it: one checkpoint (its log delta goes into the
//! snapshot), then `BENCH_RECOVERY_DELTA` new records left in the log only.

mod common;

use common::*;
use criterion::SamplingMode;
use magray_memory::{Config, Layer, Memory, SearchOptions};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const SEED: u64 = 0x07ec_00e7;
const BATCH: usize = 1_000;
/// Largest store that is indexed before its snapshot (`BENCH_RECOVERY_INDEX_UP_TO`).
fn index_up_to() -> usize {
    env_usize("BENCH_RECOVERY_INDEX_UP_TO", 100_000)
}
const TARGET_EMPTY_MS: f64 = 150.0;
/// Set (to the store dir) in the child process that measures one open.
const CHILD_ENV: &str = "ENGINE_RECOVERY_CHILD";

fn config() -> Config {
    Config {
        checkpoint_on_close: false,
        ..store_config()
    }
}

fn options() -> SearchOptions {
    SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(10)
    }
}

fn query() -> Vec<f32> {
    Embedder::new(SEED ^ 0xffff).next_vector()
}

struct Built {
    n: usize,
    dir: tempfile::TempDir,
    insert: Duration,
    index: Option<Duration>,
    checkpoint: Duration,
    delta: Duration,
}

/// Inserts `count` records numbered from `first` in batches.
async fn insert_range(m: &Memory, emb: &mut Embedder, first: usize, count: usize) {
    let mut i = first;
    while i < first + count {
        let b = BATCH.min(first + count - i);
        let recs = (i..i + b)
            .map(|j| record("recovery", j, emb.next_vector()))
            .collect();
        m.insert_batch(recs).await.unwrap();
        i += b;
    }
}

fn build(rt: &tokio::runtime::Runtime, n: usize, delta: usize) -> Built {
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let mut emb = Embedder::new(SEED);
        let m = Memory::open(dir.path(), config()).await.unwrap();
        let t = Instant::now();
        insert_range(&m, &mut emb, 0, n).await;
        let insert = t.elapsed();
        let index = if n <= index_up_to() {
            let t = Instant::now();
            m.wait_indexed().await.unwrap();
            Some(t.elapsed())
        } else {
            None
        };
        let t = Instant::now();
        m.checkpoint().await.unwrap();
        let checkpoint = t.elapsed();
        let t = Instant::now();
        insert_range(&m, &mut emb, n, delta).await;
        let delta = t.elapsed();
        drop(m); // no close(): the delta stays in the log only
        Built {
            n,
            dir,
            insert,
            index,
            checkpoint,
            delta,
        }
    })
}

/// Open + first search (timed), then drop without close (untimed).
fn open_first_query(rt: &tokio::runtime::Runtime, dir: &Path, q: &[f32]) -> (Duration, Duration) {
    rt.block_on(async {
        let t = Instant::now();
        let m = Memory::open(dir, config()).await.unwrap();
        let open = t.elapsed();
        std::hint::black_box(m.search(q, &options()).await.unwrap());
        let total = t.elapsed();
        drop(m);
        (open, total)
    })
}

/// Child process: one measured open of the store in `dir`; prints a `CHILD` line.
fn child(dir: &str) {
    let rt = runtime();
    let q = query();
    let rss0 = proc_status_kb("VmRSS").unwrap_or(0);
    rt.block_on(async {
        let t = Instant::now();
        let m = Memory::open(dir, config()).await.unwrap();
        let open = t.elapsed();
        let hits = m.search(&q, &options()).await.unwrap();
        let first = t.elapsed();
        assert_eq!(hits.len(), 10);
        let rss_open = proc_status_kb("VmRSS").unwrap_or(0);
        let layer = Layer::Assets.index();
        while !m.stats().index.ready {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let ready = t.elapsed();
        // The dump loaded in full: the indexer's own copy searched, its builder ready for
        // later inserts (the steady state's memory).
        while m.stats().graphs_loading > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let loaded = t.elapsed();
        let rss_ready = proc_status_kb("VmRSS").unwrap_or(0);
        let s = m.stats();
        println!(
            "CHILD open_us={} log_us={} snap_us={} replay_us={} first_us={} ready_us={} loaded_us={} rss0_kb={rss0} rss_open_kb={rss_open} rss_ready_kb={rss_ready} hwm_kb={} replayed={} records={} pending={}",
            open.as_micros(),
            s.open.log_open_us,
            s.open.snapshot_load_us,
            s.open.replay_us,
            first.as_micros(),
            ready.as_micros(),
            loaded.as_micros(),
            proc_status_kb("VmHWM").unwrap_or(0),
            s.open.replayed_events,
            s.layers[layer].records,
            s.index.pending,
        );
        // Index catch-up on this store for a while (an unindexed store's vectors are mapped:
        // the rate of a builder reading them from the maps).
        if let Some(secs) = std::env::var("ENGINE_RECOVERY_INDEX_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            let before = m.stats().index.indexed;
            let t = Instant::now();
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let after = m.stats().index.indexed;
            println!(
                "INDEXING indexed={} in {:.1} s: {:.0} vectors/s (from {before} points)",
                after - before,
                t.elapsed().as_secs_f64(),
                (after - before) as f64 / t.elapsed().as_secs_f64()
            );
        }
        drop(m);
    });
}

#[derive(Default, Clone)]
struct ChildRun {
    open_ms: f64,
    /// The engine's own split of its open time (`OpenReport`).
    log_ms: f64,
    snap_ms: f64,
    replay_ms: f64,
    first_ms: f64,
    ready_ms: f64,
    loaded_ms: f64,
    rss0: u64,
    rss_open: u64,
    rss_ready: u64,
    hwm: u64,
    replayed: u64,
    records: u64,
    pending: u64,
}

fn run_child(dir: &Path) -> ChildRun {
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("CHILD "))
        .unwrap_or_else(|| panic!("no CHILD line in {stdout:?}"));
    let mut r = ChildRun::default();
    for kv in line.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=').unwrap();
        let v: u64 = v.parse().unwrap();
        match k {
            "open_us" => r.open_ms = v as f64 / 1e3,
            "log_us" => r.log_ms = v as f64 / 1e3,
            "snap_us" => r.snap_ms = v as f64 / 1e3,
            "replay_us" => r.replay_ms = v as f64 / 1e3,
            "first_us" => r.first_ms = v as f64 / 1e3,
            "ready_us" => r.ready_ms = v as f64 / 1e3,
            "loaded_us" => r.loaded_ms = v as f64 / 1e3,
            "rss0_kb" => r.rss0 = v,
            "rss_open_kb" => r.rss_open = v,
            "rss_ready_kb" => r.rss_ready = v,
            "hwm_kb" => r.hwm = v,
            "replayed" => r.replayed = v,
            "records" => r.records = v,
            "pending" => r.pending = v,
            _ => {}
        }
    }
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `ENGINE_RECOVERY_UPGRADE`: checkpoint the kept store in `dir` (the current snapshot
/// format), then add a delta of new records to its log only.
fn upgrade(dir: &Path) {
    let rt = runtime();
    rt.block_on(async {
        let m = Memory::open(dir, config()).await.unwrap();
        m.wait_indexed().await.unwrap();
        let t = Instant::now();
        let seq = m.checkpoint().await.unwrap();
        println!(
            "UPGRADE snapshot {seq} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let n = m.stats().layers[Layer::Assets.index()].records as usize;
        let delta = env_usize("BENCH_RECOVERY_DELTA", 10_000);
        let mut emb = Embedder::new(SEED ^ n as u64);
        insert_range(&m, &mut emb, n, delta).await;
        println!("UPGRADE {delta} records after it, in the log only");
        drop(m); // no close(): the delta stays in the log only
    });
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(&dir.to_string_lossy());
        return;
    }
    if let Some(dir) = std::env::var_os("ENGINE_RECOVERY_UPGRADE") {
        upgrade(Path::new(&dir));
        return;
    }
    let sizes = env_list("BENCH_RECOVERY_SIZES", "10000,100000");
    let delta = env_usize("BENCH_RECOVERY_DELTA", 10_000);
    let runs = env_usize("BENCH_RECOVERY_RUNS", 3).max(1);
    let empty_runs = env_usize("BENCH_EMPTY_RUNS", 20).max(1);
    let rt = runtime();
    let q = query();

    let mut stores = Vec::new();
    for &n in &sizes {
        eprintln!(
            "engine_recovery: building a store of {n} records + {delta} delta{} ...",
            if n <= index_up_to() {
                " (indexing it first)"
            } else {
                " (not indexed)"
            }
        );
        stores.push(build(&rt, n, delta));
    }
    if std::env::var_os("BENCH_KEEP").is_some() {
        // For profiling one open by hand: `ENGINE_RECOVERY_CHILD=<dir> <this bench binary>`.
        for s in &stores {
            eprintln!(
                "engine_recovery: keeping the {}-record store in {:?}",
                s.n,
                s.dir.path()
            );
        }
    }

    if !report_only() {
        let mut c = criterion();
        let mut group = c.benchmark_group("engine_recovery");
        group.sampling_mode(SamplingMode::Flat);
        group.bench_function("open_empty_create", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    total += open_first_query(&rt, dir.path(), &q).0;
                }
                total
            })
        });
        let empty = tempfile::tempdir().unwrap();
        open_first_query(&rt, empty.path(), &q);
        group.bench_function("open_empty_reopen", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| open_first_query(&rt, empty.path(), &q).0)
                    .sum()
            })
        });
        group.measurement_time(Duration::from_secs(5));
        for s in &stores {
            group.bench_function(format!("open_first_query/n{}+{delta}", s.n), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| open_first_query(&rt, s.dir.path(), &q).1)
                        .sum()
                })
            });
        }
        group.finish();
        c.final_summary();
    }

    // Report: empty store in-process, stores in fresh child processes.
    println!("\nengine_recovery report: {DIM}-d, one layer (Assets), delta = {delta} records after the last snapshot, dropped without close; warm page cache");
    let mut create = Vec::new();
    let mut reopen = Vec::new();
    let empty = tempfile::tempdir().unwrap();
    for _ in 0..empty_runs {
        let dir = tempfile::tempdir().unwrap();
        create.push(open_first_query(&rt, dir.path(), &q));
        reopen.push(open_first_query(&rt, empty.path(), &q));
    }
    for (what, v) in [("create", &mut create), ("reopen", &mut reopen)] {
        let mut open: Vec<Duration> = v.iter().map(|x| x.0).collect();
        let mut total: Vec<Duration> = v.iter().map(|x| x.1).collect();
        let p50 = pct(&mut open, 0.5);
        println!(
            "empty store, {what}: open p50 {:.2} ms p99 {:.2} ms, open+first search p50 {:.2} ms ({empty_runs} runs) -> {:.1}x under the {TARGET_EMPTY_MS} ms target",
            ms(p50),
            ms(pct(&mut open, 0.99)),
            ms(pct(&mut total, 0.5)),
            TARGET_EMPTY_MS / ms(p50).max(1e-9)
        );
    }
    println!(
        "{:>9} {:>9} {:>10} {:>10} {:>11} {:>11} {:>11} {:>12} {:>10} {:>10} {:>10}",
        "N",
        "replayed",
        "open ms",
        "1st q ms",
        "open+1st",
        "graph walk",
        "dump loaded",
        "raw vec MiB",
        "RSS open",
        "RSS loaded",
        "peak RSS"
    );
    let mut largest = None;
    let mut parts = Vec::new();
    for s in &stores {
        let rs: Vec<ChildRun> = (0..runs).map(|_| run_child(s.dir.path())).collect();
        parts.push(format!(
            "{:>9}: log {:.1} ms, snapshot {:.1} ms, replay {:.1} ms",
            s.n + delta,
            median(rs.iter().map(|r| r.log_ms).collect()),
            median(rs.iter().map(|r| r.snap_ms).collect()),
            median(rs.iter().map(|r| r.replay_ms).collect()),
        ));
        let first = median(rs.iter().map(|r| r.first_ms).collect());
        let open = median(rs.iter().map(|r| r.open_ms).collect());
        let ready = median(rs.iter().map(|r| r.ready_ms).collect());
        let loaded = median(rs.iter().map(|r| r.loaded_ms).collect());
        let last = rs.last().unwrap().clone();
        let total = (s.n + delta) as u64;
        assert_eq!(last.records, total, "every record is back after the open");
        let raw = total * DIM as u64 * 4;
        let kib = |k: u64| mib(k * 1024);
        println!(
            "{:>9} {:>9} {:>10.1} {:>10.1} {:>11.1} {:>11.0} {:>11.0} {:>12.1} {:>10.1} {:>10.1} {:>10.1}",
            s.n + delta,
            last.replayed,
            open,
            first - open,
            first,
            ready,
            loaded,
            mib(raw),
            kib(last.rss_open),
            kib(last.rss_ready),
            kib(last.hwm),
        );
        largest = Some((s.n + delta, raw, last));
    }
    println!("open, split as the engine reports it (OpenReport; medians):");
    for p in &parts {
        println!("{p}");
    }
    for s in &stores {
        println!(
            "build n={}: insert {:.1} s ({:.0} records/s), wait_indexed {}, checkpoint {:.2} s, delta insert {:.2} s",
            s.n,
            s.insert.as_secs_f64(),
            s.n as f64 / s.insert.as_secs_f64(),
            s.index
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "skipped".into()),
            s.checkpoint.as_secs_f64(),
            s.delta.as_secs_f64()
        );
    }
    if let Some((n, raw, r)) = largest {
        println!(
            "largest store ({n} records): RSS after open + first query {:.1} MiB = {:.2}x the raw vector bytes ({:.1} MiB); \
             after the HNSW dump loaded in full {:.1} MiB ({:.2}x); process baseline before open {:.1} MiB; {} records still pending indexing",
            mib(r.rss_open * 1024),
            (r.rss_open * 1024) as f64 / raw as f64,
            mib(raw),
            mib(r.rss_ready * 1024),
            (r.rss_ready * 1024) as f64 / raw as f64,
            mib(r.rss0 * 1024),
            r.pending
        );
    }
    if std::env::var_os("BENCH_KEEP").is_some() {
        stores.into_iter().for_each(|s| drop(s.dir.keep()));
    }
    println!("columns: medians of {runs} fresh processes; 1st q = first search after open returned (through the HNSW dump searched in place when the store is indexed, else an exact scan); graph walk = ms from open until searches walk an HNSW graph (at open for a dump searched in place); dump loaded = ms until the indexer has read the dump in full and replaced it with its own copy; RSS in MiB (last run; RSS loaded = after the dump loaded: the builder's links, its copies of vectors the snapshot's maps lack, the frozen copy's codes)");
}
