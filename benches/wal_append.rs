//! `wal_append`: durable appends per second and latency (p50/p99) for 1, 4, 16 and 64
//! concurrent writers, with 256 B and 2 KiB events, against this disk's raw append +
//! fdatasync latency measured in the same run.
//!
//! `cargo bench --bench wal_append` runs criterion (throughput) and then prints the report
//! table. `WAL_BENCH_REPORT_ONLY=1 cargo bench --bench wal_append` prints only the table.
//! Set `WAL_BENCH_DIR` to measure another filesystem (default: a temp dir under target/).
//!
//! The report also runs every row again on an emulated slower disk: the log's test-only
//! fault plan sleeps `WAL_BENCH_SLOW_SYNC_MS` (default 4; 0 skips these rows) after each
//! okaywal append + fsync, and the raw row sleeps the same after each fdatasync. The issue's
//! 20× target assumes a disk whose fdatasync takes about 4 ms; this one's takes about 0.14 ms.

use criterion::{Criterion, Throughput};
use magray_wal::{frame, Event, FaultPlan, Inserted, Layer, Log, LogConfig};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WRITERS: [usize; 4] = [1, 4, 16, 64];
const SIZES: [usize; 2] = [256, 2048];
/// The log's default segment size (LogConfig::new).
const SEGMENT_BYTES: usize = 8 << 20;
/// Measurement window per configuration in the report.
const WINDOW: Duration = Duration::from_millis(1500);

fn bench_root() -> PathBuf {
    std::env::var_os("WAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tmp"))
}

/// An insert event whose encoded frame is `target` bytes (± a few).
fn event_of_size(target: usize) -> Event {
    let make = |n: usize| {
        Event::Inserted(Inserted {
            id: [1; 16],
            layer: Layer::Interact,
            kind: "message".into(),
            text: "x".repeat(n),
            embedding: vec![],
            tags: vec![],
            project: None,
            session: None,
            refs: vec![],
            content_hash: 0,
            ts_us: 0,
        })
    };
    let frame_len = |e: Event| frame::encode(1, 0, vec![e]).expect("encodes").len();
    let base = frame_len(make(0));
    make(target.saturating_sub(base))
}

/// Opens a log in a fresh temp dir; with `plan`, its fsyncs can be slowed down.
fn open_log(tag: &str, plan: Option<Arc<FaultPlan>>) -> (tempfile::TempDir, Arc<Log>) {
    std::fs::create_dir_all(bench_root()).expect("bench dir");
    let dir = tempfile::Builder::new()
        .prefix(tag)
        .tempdir_in(bench_root())
        .expect("tempdir");
    let mut cfg = LogConfig::new(dir.path());
    cfg.faults = plan;
    let log = Log::open(cfg).expect("open log");
    (dir, Arc::new(log))
}

/// Runs `writers` threads appending single-event batches until each has done `per_writer`
/// or `deadline` passes; returns latencies.
fn run_writers_until(
    log: &Arc<Log>,
    writers: usize,
    per_writer: usize,
    deadline: Option<Instant>,
    event: &Event,
) -> Vec<Duration> {
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let log = log.clone();
            let event = event.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(per_writer.min(1 << 16));
                for _ in 0..per_writer {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                    let t = Instant::now();
                    log.append(vec![event.clone()]).expect("append");
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect()
}

/// Runs `writers` tokio tasks (on a 2-worker runtime) appending until `deadline`.
fn run_tasks_until(
    log: &Arc<Log>,
    writers: usize,
    deadline: Instant,
    event: &Event,
) -> Vec<Duration> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                let log = log.clone();
                let event = event.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        log.append_async(vec![event.clone()]).await.expect("append");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.await.expect("task"));
        }
        all
    })
}

/// Runs `writers` threads appending `per_writer` single-event batches; returns latencies.
fn run_writers(log: &Arc<Log>, writers: usize, per_writer: usize, event: &Event) -> Vec<Duration> {
    run_writers_until(log, writers, per_writer, None, event)
}

/// Raw append + fdatasync latencies of `size`-byte writes on the bench filesystem, each
/// followed by `extra` (the emulated slower disk).
fn raw_fsync(size: usize, n: usize, extra: Duration) -> Vec<Duration> {
    std::fs::create_dir_all(bench_root()).expect("bench dir");
    let dir = tempfile::tempdir_in(bench_root()).expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("raw")).expect("create");
    let buf = vec![0xabu8; size];
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&buf).expect("write");
            f.sync_data().expect("fdatasync");
            if !extra.is_zero() {
                std::thread::sleep(extra);
            }
            t.elapsed()
        })
        .collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn criterion_benches(c: &mut Criterion) {
    for size in SIZES {
        let event = event_of_size(size);
        let mut group = c.benchmark_group(format!("wal_append/{size}B"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4));
        for writers in WRITERS {
            let (_dir, log) = open_log("crit", None);
            group.throughput(Throughput::Elements(writers as u64));
            group.bench_function(format!("{writers}_writers"), |b| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    run_writers(&log, writers, iters as usize, &event);
                    t.elapsed()
                })
            });
        }
        group.finish();
    }
}

fn report() {
    report_disk(Duration::ZERO);
    let slow_ms = std::env::var("WAL_BENCH_SLOW_SYNC_MS")
        .ok()
        .map(|v| {
            v.parse::<u64>()
                .expect("WAL_BENCH_SLOW_SYNC_MS: whole milliseconds")
        })
        .unwrap_or(4);
    if slow_ms > 0 {
        report_disk(Duration::from_millis(slow_ms));
    }
}

/// One report table; `extra` > 0 emulates a disk whose fsync takes that much longer.
fn report_disk(extra: Duration) {
    println!(
        "\nwal_append report: steady state (after two segment rotations), {WINDOW:?} per row;"
    );
    if !extra.is_zero() {
        println!("EMULATED SLOW DISK: every fsync (log and raw) is followed by a {extra:?} sleep");
    }
    println!(
        "p50/p99 of per-call latency; events/s = acknowledged single-event batches per second;"
    );
    println!("writers N = N OS threads calling append; Nt = N tokio tasks on 2 workers calling append_async");
    println!("filesystem: {}", bench_root().display());
    println!(
        "{:>6} {:>8} {:>12} {:>10} {:>10} {:>14} {:>16} {:>12}",
        "size",
        "writers",
        "events/s",
        "p50 ms",
        "p99 ms",
        "vs 1 writer",
        "p50 / raw fsync",
        "calls/fsync"
    );
    for size in SIZES {
        let raw_n = if extra.is_zero() { 300 } else { 100 };
        let mut raw = raw_fsync(size, raw_n, extra);
        let raw_p50 = pct(&mut raw, 0.5);
        let raw_p99 = pct(&mut raw, 0.99);
        println!(
            "{:>6} {:>8} {:>12.0} {:>10.3} {:>10.3} {:>14} {:>16}   <- raw append+fdatasync",
            size,
            "raw",
            1.0 / raw_p50.as_secs_f64(),
            raw_p50.as_secs_f64() * 1e3,
            raw_p99.as_secs_f64() * 1e3,
            "",
            ""
        );
        let event = event_of_size(size);
        let mut one_writer_rate = 0.0;
        for (tasks, writers) in WRITERS
            .map(|w| (false, w))
            .into_iter()
            .chain(WRITERS.map(|w| (true, w)))
        {
            let plan = Arc::new(FaultPlan::default());
            let (_dir, log) = open_log("report", Some(plan.clone()));
            // Steady state: write two segments' worth first, so okaywal has recycled segment
            // files instead of zero-filling new ones, then measure a fixed window. The
            // emulated delay starts after the warm-up (it would take minutes at 1 writer).
            let warm = (2 * SEGMENT_BYTES / size).div_ceil(writers);
            run_writers(&log, writers, warm, &event);
            plan.sync_delay_us
                .store(extra.as_micros() as u64, Ordering::SeqCst);
            let rounds_before = plan.appends();
            let t = Instant::now();
            let mut lat = if tasks {
                run_tasks_until(&log, writers, t + WINDOW, &event)
            } else {
                run_writers_until(&log, writers, usize::MAX, Some(t + WINDOW), &event)
            };
            let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
            let per_fsync = lat.len() as f64 / (plan.appends() - rounds_before).max(1) as f64;
            if writers == 1 && !tasks {
                one_writer_rate = rate;
            }
            let p50 = pct(&mut lat, 0.5);
            let p99 = pct(&mut lat, 0.99);
            println!(
                "{:>6} {:>8} {:>12.0} {:>10.3} {:>10.3} {:>13.1}x {:>15.2}x {:>12.1}",
                size,
                format!("{writers}{}", if tasks { "t" } else { "" }),
                rate,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                rate / one_writer_rate,
                p50.as_secs_f64() / raw_p50.as_secs_f64(),
                per_fsync
            );
        }
    }
}

fn main() {
    if std::env::var_os("WAL_BENCH_REPORT_ONLY").is_none() {
        let mut c = Criterion::default().configure_from_args();
        criterion_benches(&mut c);
        c.final_summary();
    }
    report();
}
