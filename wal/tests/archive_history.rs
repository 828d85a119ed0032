#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! After several checkpoints, history reads back contiguously from sequence 1 across the
//! archive and the live log, and stops at the right event by sequence or timestamp.

mod common;

use common::*;
use magray_wal::*;
use std::sync::Arc;

const T0: u64 = 1_780_000_000_000_000;

fn config(dir: &std::path::Path, clock: &ManualClock) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 64 << 10;
    c.clock = Arc::new(clock.clone());
    c
}

#[test]
fn history_is_contiguous_across_archive_and_live_log_and_stops_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let log = Log::open(config(dir.path(), &clock)).unwrap();
    let mut expected = Vec::new();
    for c in 0..400u64 {
        clock.advance_us(1_000);
        let events = batch(0, c, 200);
        let at = log.append(events.clone()).unwrap();
        assert_eq!(at.ts_us, T0 + (c + 1) * 1_000);
        for (i, e) in events.into_iter().enumerate() {
            expected.push(Envelope {
                seq: at.first_seq + i as u64,
                ts_us: at.ts_us,
                event: e,
            });
        }
        if c % 97 == 0 {
            log.checkpoint().unwrap();
            assert_eq!(
                log.archived_last_seq(),
                at.last_seq,
                "checkpoint archives everything durable"
            );
        }
    }
    let archives = archive::list(&dir.path().join("archive")).unwrap();
    assert!(
        archives.len() >= 5,
        "several segments archived, got {}",
        archives.len()
    );
    assert_eq!(archives[0].first_seq, 1);
    for w in archives.windows(2) {
        assert_eq!(
            w[1].first_seq,
            w[0].last_seq + 1,
            "archive files are contiguous"
        );
    }

    let all: Vec<Envelope> = log.history(1).collect::<Result<_>>().unwrap();
    assert_eq!(all, expected, "full history from sequence 1");

    // Starting in the middle of an archive file.
    let mid = archives[2].first_seq + 3;
    let from_mid: Vec<Envelope> = log.history(mid).collect::<Result<_>>().unwrap();
    assert_eq!(from_mid[..], expected[(mid - 1) as usize..]);

    // until(timestamp): inclusive, stops at the last event at or before it.
    let cut_ts = T0 + 250 * 1_000 + 500; // between batch 249 and 250
    let upto: Vec<Envelope> = log
        .history(1)
        .until_ts_us(cut_ts)
        .collect::<Result<_>>()
        .unwrap();
    let want: Vec<Envelope> = expected
        .iter()
        .filter(|e| e.ts_us <= cut_ts)
        .cloned()
        .collect();
    assert_eq!(upto, want);
    assert_eq!(upto.last().unwrap().ts_us, T0 + 250 * 1_000);
    let exact: Vec<Envelope> = log
        .history(1)
        .until_ts_us(T0 + 250 * 1_000)
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(exact, want, "the boundary timestamp itself is included");

    let by_seq: Vec<Envelope> = log
        .history(10)
        .until_seq(20)
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(
        by_seq.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (10..=20).collect::<Vec<_>>()
    );
    log.close().unwrap();

    // After a restart: the same history, offline and in process, and the sequence continues.
    let offline: Vec<Envelope> = History::open_offline(dir.path(), 1)
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(offline, expected);
    let log = Log::open(config(dir.path(), &clock)).unwrap();
    assert_eq!(log.recovery_report().first_seq, 1);
    let at = log.append(batch(1, 0, 10)).unwrap();
    assert_eq!(at.first_seq, expected.len() as u64 + 1);
    let again: Vec<Envelope> = log.history(1).collect::<Result<_>>().unwrap();
    assert_eq!(again.len(), expected.len() + 1);
    assert_eq!(again[..expected.len()], expected[..]);
    log.close().unwrap();
}

#[test]
fn a_damaged_archive_file_is_named_when_read() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let log = Log::open(config(dir.path(), &clock)).unwrap();
    for c in 0..50u64 {
        clock.advance_us(10);
        log.append(batch(0, c, 100)).unwrap();
    }
    log.checkpoint().unwrap();
    log.close().unwrap();
    let a = archive::list(&dir.path().join("archive"))
        .unwrap()
        .remove(0);
    let mut bytes = std::fs::read(&a.path).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x04;
    std::fs::write(&a.path, &bytes).unwrap();
    let err = History::open_offline(dir.path(), 1)
        .collect::<Result<Vec<_>>>()
        .expect_err("damaged archive must fail");
    assert!(err.is_corruption());
    assert!(
        err.to_string().contains(&a.path.display().to_string()),
        "{err}"
    );
}

#[test]
fn retention_keeps_everything_by_default_and_prunes_only_below_the_floor() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut cfg = config(dir.path(), &clock);
    cfg.retention = Retention::MaxAgeUs(3_600_000_000);
    let log = Log::open(cfg).unwrap();
    for c in 0..300u64 {
        clock.advance_us(60_000_000); // a minute per batch: five hours in all
        log.append(batch(0, c, 200)).unwrap();
    }
    log.checkpoint().unwrap();
    let before = archive::list(&dir.path().join("archive")).unwrap();
    assert!(before.len() >= 3);
    // Floor 0: nothing may be pruned, however old.
    assert_eq!(log.set_retention_floor(0).unwrap(), 0);
    let floor = before[before.len() - 1].first_seq;
    let removed = log.set_retention_floor(floor).unwrap();
    let after = archive::list(&dir.path().join("archive")).unwrap();
    assert_eq!(after.len(), before.len() - removed);
    assert!(removed >= 1);
    let cutoff = clock.now_us() - 3_600_000_000;
    for f in &before {
        let kept = after.contains(f);
        let eligible = f.last_ts_us < cutoff && f.last_seq < floor;
        assert_eq!(kept, !eligible, "{f:?}");
    }
    let first = after[0].first_seq;
    let err = log.history(1).next().unwrap().expect_err("pruned history");
    assert!(
        matches!(err, Error::NotAvailable { seq: 1, first_available } if first_available == first),
        "{err}"
    );
    log.close().unwrap();
}

#[test]
fn an_archive_superseded_by_a_longer_one_of_the_same_segment_is_removed_at_open() {
    // A power cut can undo okaywal's checkpoint of a segment after it was archived: the
    // segment comes back live, takes more entries and is archived again, whole. Open keeps
    // the longer file and removes the shorter, instead of refusing two overlapping archives.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let log = Log::open(config(dir.path(), &clock)).unwrap();
    for c in 0..60u64 {
        clock.advance_us(1_000);
        log.append(batch(0, c, 200)).unwrap();
    }
    log.checkpoint().unwrap();
    let last = log.last_seq();
    drop(log);
    let archive = dir.path().join("archive");
    let files = archive::list(&archive).unwrap();
    let f = files.first().expect("an archive file");
    assert!(f.last_seq > f.first_seq, "{f:?}");
    // The shorter archive of the same segment, as the first archiving wrote it.
    let shorter = archive.join(archive::file_name(
        f.first_seq,
        f.last_seq - 1,
        f.first_ts_us,
        f.last_ts_us,
    ));
    std::fs::copy(&f.path, &shorter).unwrap();
    assert!(archive::list(&archive).is_err(), "two overlapping archives");

    let log = Log::open(config(dir.path(), &clock)).unwrap();
    assert_eq!(
        log.recovery_report().superseded_archives,
        vec![shorter.clone()]
    );
    assert!(!shorter.exists() && f.path.exists());
    let seqs: Vec<u64> = History::open_offline(dir.path(), 1)
        .map(|e| e.unwrap().seq)
        .collect();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
}
