#![allow(clippy::unwrap_used)]
//! `engine_insert`: acknowledged (durable and applied) records per second for
//! (a) `insert_batch` of 1,000 records, (b) 64 concurrent single `insert` calls (tokio tasks
//! on a 2-worker runtime, `Memory` in an `Arc`; 1 task for reference), and (c) the time for
//! one 10,000-record `insert_batch` to be durable. Targets: >= 20,000 records/s batched; a
//! 10k batch durable in <= 0.5 s. Every run uses a fresh store in a fresh temp dir; the
//! background indexer runs as it would in production (it shares the 2 cores).
//!
//! ```text
//! cargo bench --bench engine_insert
//! cargo bench --bench engine_insert -- --test          # each criterion bench once
//! BENCH_REPORT_ONLY=1 cargo bench --bench engine_insert
//! ```
//! Env: `BENCH_INSERT_BATCHES` (1,000-record batches in the report, default 30),
//! `BENCH_INSERT_SECS` (window of the concurrent run, default 3), `BENCH_DURABLE_RUNS`
//! (10k-batch runs, default 5), `BENCH_DURABLE_BATCH` (default 10000).

mod common;

use common::*;
use criterion::{Criterion, SamplingMode, Throughput};
use magray_memory::{Memory, NewRecord};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SEED: u64 = 0x0001_5e47;
const BATCH: usize = 1_000;
const TASKS: usize = 64;
const TARGET_BATCHED: f64 = 20_000.0;
const TARGET_DURABLE_S: f64 = 0.5;

/// Unique record numbers across the whole run (the engine dedups equal texts).
static NEXT: AtomicUsize = AtomicUsize::new(0);

fn records(emb: &mut Embedder, n: usize) -> Vec<NewRecord> {
    (0..n)
        .map(|_| {
            record(
                "insert",
                NEXT.fetch_add(1, Ordering::Relaxed),
                emb.next_vector(),
            )
        })
        .collect()
}

fn open_fresh(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, Arc<Memory>) {
    let dir = tempfile::tempdir().unwrap();
    let m = rt
        .block_on(Memory::open(dir.path(), store_config()))
        .unwrap();
    (dir, Arc::new(m))
}

/// Throws a store away: dropping without `close()` skips the snapshot (nothing is lost;
/// everything acknowledged is in the log).
fn discard(rt: &tokio::runtime::Runtime, m: Arc<Memory>) {
    let m = Arc::try_unwrap(m).unwrap();
    rt.block_on(async move { drop(m) });
}

/// Record vectors for one task, made before the clock starts: record `j` is a unit mix of
/// two vectors from a pool of 256 (distinct for j < 65,280), so generating them costs a few
/// hundred ns instead of the ~6 µs of 384 gaussian samples.
struct TaskVectors {
    pool: Vec<Vec<f32>>,
}

impl TaskVectors {
    const POOL: usize = 256;

    fn new(emb: &mut Embedder) -> TaskVectors {
        TaskVectors {
            pool: (0..Self::POOL).map(|_| emb.next_vector()).collect(),
        }
    }

    fn get(&self, j: usize) -> Vec<f32> {
        let a = j % Self::POOL;
        let b = (a + 1 + (j / Self::POOL) % (Self::POOL - 1)) % Self::POOL;
        let mut v: Vec<f32> = self.pool[a]
            .iter()
            .zip(&self.pool[b])
            .map(|(x, y)| x + 0.25 * y)
            .collect();
        normalise(&mut v);
        v
    }
}

/// `tasks` tasks each inserting one record at a time until `deadline` (or `per_task`
/// records); returns per-call latencies. Vectors are prepared before the clock starts.
fn run_tasks(
    rt: &tokio::runtime::Runtime,
    m: &Arc<Memory>,
    tasks: usize,
    per_task: usize,
    deadline: Option<Duration>,
    base: &Embedder,
) -> (Duration, Vec<Duration>) {
    let inputs: Vec<(usize, TaskVectors)> = (0..tasks)
        .map(|_| {
            let first = NEXT.fetch_add(1 << 16, Ordering::Relaxed);
            let mut emb = base.fork(first as u64);
            (first, TaskVectors::new(&mut emb))
        })
        .collect();
    rt.block_on(async {
        let start = Instant::now();
        let deadline = deadline.map(|d| start + d);
        let handles: Vec<_> = inputs
            .into_iter()
            .map(|(first, vs)| {
                let m = m.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for j in 0..per_task.min(1 << 16) {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let r = record("insert", first + j, vs.get(j));
                        let t = Instant::now();
                        m.insert(r).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.unwrap());
        }
        (start.elapsed(), all)
    })
}

fn criterion_benches(c: &mut Criterion, rt: &tokio::runtime::Runtime) {
    let mut group = c.benchmark_group("engine_insert");
    let mut emb = Embedder::new(SEED);

    let (_dir, m) = open_fresh(rt);
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function(format!("insert_batch_{BATCH}"), |b| {
        b.iter_custom(|iters| {
            let batches: Vec<_> = (0..iters).map(|_| records(&mut emb, BATCH)).collect();
            rt.block_on(async {
                let t = Instant::now();
                for recs in batches {
                    m.insert_batch(recs).await.unwrap();
                }
                t.elapsed()
            })
        })
    });
    discard(rt, m);

    let (_dir, m) = open_fresh(rt);
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(TASKS as u64));
    group.bench_function(format!("insert_{TASKS}_concurrent"), |b| {
        b.iter_custom(|iters| run_tasks(rt, &m, TASKS, iters as usize, None, &emb).0)
    });
    discard(rt, m);

    let n = env_usize("BENCH_DURABLE_BATCH", 10_000);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("insert_batch_{n}_durable"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let recs = records(&mut emb, n);
                let (_dir, m) = open_fresh(rt);
                let t = Instant::now();
                rt.block_on(m.insert_batch(recs)).unwrap();
                total += t.elapsed();
                discard(rt, m);
            }
            total
        })
    });
    group.finish();
}

fn report(rt: &tokio::runtime::Runtime) {
    let batches = env_usize("BENCH_INSERT_BATCHES", 30);
    let secs = env_usize("BENCH_INSERT_SECS", 3);
    let runs = env_usize("BENCH_DURABLE_RUNS", 5);
    let n = env_usize("BENCH_DURABLE_BATCH", 10_000);
    let mut emb = Embedder::new(SEED + 1);
    println!("\nengine_insert report: {DIM}-d records (~160 B text) into Assets, fresh store per row, acknowledged = durable + applied");
    println!(
        "{:<38} {:>10} {:>12} {:>10} {:>10} {:>12}",
        "what", "records", "records/s", "p50 ms", "p99 ms", "vs target"
    );

    // (a) batches of 1,000.
    let (_dir, m) = open_fresh(rt);
    let all: Vec<_> = (0..batches).map(|_| records(&mut emb, BATCH)).collect();
    let (elapsed, mut lat) = rt.block_on(async {
        let mut lat = Vec::new();
        let start = Instant::now();
        for recs in all {
            let t = Instant::now();
            m.insert_batch(recs).await.unwrap();
            lat.push(t.elapsed());
        }
        (start.elapsed(), lat)
    });
    discard(rt, m);
    let rate = (batches * BATCH) as f64 / elapsed.as_secs_f64();
    println!(
        "{:<38} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>11.2}x   (target >= {TARGET_BATCHED:.0}/s; latency per batch)",
        format!("(a) insert_batch x{BATCH}, sequential"),
        batches * BATCH,
        rate,
        ms(pct(&mut lat, 0.5)),
        ms(pct(&mut lat, 0.99)),
        rate / TARGET_BATCHED
    );

    // (b) concurrent single inserts for a fixed window; 1 task for reference.
    for tasks in [1, TASKS] {
        let (_dir, m) = open_fresh(rt);
        let (elapsed, mut lat) = run_tasks(
            rt,
            &m,
            tasks,
            usize::MAX,
            Some(Duration::from_secs(secs as u64)),
            &emb,
        );
        discard(rt, m);
        let rate = lat.len() as f64 / elapsed.as_secs_f64();
        println!(
            "{:<38} {:>10} {:>12.0} {:>10.2} {:>10.2} {:>12}",
            format!("(b) insert, {tasks} concurrent task(s)"),
            lat.len(),
            rate,
            ms(pct(&mut lat, 0.5)),
            ms(pct(&mut lat, 0.99)),
            ""
        );
    }

    // (c) one big batch until durable, fresh store each run.
    let mut times = Vec::new();
    for _ in 0..runs {
        let recs = records(&mut emb, n);
        let (_dir, m) = open_fresh(rt);
        let t = Instant::now();
        rt.block_on(m.insert_batch(recs)).unwrap();
        times.push(t.elapsed());
        discard(rt, m);
    }
    let p50 = pct(&mut times, 0.5);
    println!(
        "{:<38} {:>10} {:>12.0} {:>10.1} {:>10.1} {:>11.2}x   (target <= {TARGET_DURABLE_S} s; p50/max of {runs} runs; min {:.1} ms)",
        format!("(c) one insert_batch x{n} durable"),
        n,
        n as f64 / p50.as_secs_f64(),
        ms(p50),
        ms(*times.last().unwrap()),
        TARGET_DURABLE_S / p50.as_secs_f64(),
        ms(times[0])
    );
    println!("vs target: achieved / target for (a); target / achieved for (c): >= 1.00x meets it");
}

fn main() {
    let rt = runtime();
    if !report_only() {
        let mut c = criterion();
        criterion_benches(&mut c, &rt);
        c.final_summary();
    }
    report(&rt);
}
