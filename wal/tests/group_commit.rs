#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Group commit: while one fsync is in flight, every caller that arrives queues, and the next
//! round makes all of them durable with one fsync. Counted in backend appends (one fsync
//! each), not timed: a disk made 2 ms slower per fsync gives the callers time to queue.

mod common;

use common::*;
use magray_wal::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const PER_WRITER: u64 = 10;

/// Opens a log whose fsyncs take 2 ms longer, runs `writers` threads appending
/// `PER_WRITER` single-event batches each, and returns (fsync rounds, events read back).
fn run(writers: u64) -> (u64, Vec<Envelope>) {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    plan.sync_delay_us.store(2_000, Ordering::SeqCst);
    let mut cfg = LogConfig::new(dir.path());
    cfg.faults = Some(plan.clone());
    let log = Arc::new(Log::open(cfg).unwrap());
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..PER_WRITER)
                    .map(|c| {
                        let at = log.append(vec![insert_event(w, c, 0, 40)]).unwrap();
                        assert_eq!(at.first_seq, at.last_seq);
                        at.last_seq
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut acked: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    acked.sort_unstable();
    let n = writers * PER_WRITER;
    assert_eq!(
        acked,
        (1..=n).collect::<Vec<u64>>(),
        "one sequence per call"
    );
    let rounds = plan.appends();
    let log = Arc::try_unwrap(log).unwrap();
    log.close().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    let got: Vec<Envelope> = log.history(1).collect::<Result<_>>().unwrap();
    (rounds, got)
}

#[test]
fn one_writer_pays_one_fsync_per_call() {
    let (rounds, got) = run(1);
    assert_eq!(rounds, PER_WRITER, "nothing to group with a single caller");
    assert_eq!(got.len() as u64, PER_WRITER);
}

#[test]
fn sixty_four_writers_share_fsyncs() {
    let (rounds, got) = run(64);
    let n = 64 * PER_WRITER;
    // Perfect grouping is 1 + ceil(639 / 63) ≈ 12 rounds; allow a loaded machine 8 callers
    // per fsync on average.
    assert!(
        rounds <= n / 8,
        "{rounds} fsync rounds for {n} calls: group commit is not grouping"
    );
    assert_eq!(got.len() as u64, n, "every acknowledged event reads back");
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "contiguous sequences");
    }
}
