#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! A torn tail (a partial last entry) recovers to the prefix and is reported; damage in the
//! middle of the log is an error naming the file and offset; salvage mode says what it dropped.

mod common;

use common::*;
use magray_wal::*;
use std::path::Path;

fn small(dir: &Path) -> LogConfig {
    let mut c = LogConfig::new(dir);
    c.segment_bytes = 1 << 20;
    c
}

/// Opening the log in `dir` must fail as corruption, naming `seg` and an offset inside
/// `victim` (the damaged entry).
fn assert_refused_in(dir: &Path, seg: &Path, victim: &inspect::EntrySpan, what: &str) {
    let err = Log::open(small(dir)).expect_err(what);
    assert!(err.is_corruption(), "{what}: {err}");
    assert!(
        err.to_string().contains(&seg.display().to_string()),
        "{what}: the error names the damaged file: {err}"
    );
    match err {
        Error::ChecksumMismatch { offset, .. } | Error::Corrupted { offset, .. } => {
            assert!(
                offset >= victim.start && offset < victim.end,
                "{what}: offset {offset} inside the damaged entry {victim:?}"
            );
        }
        other => panic!("{what}: unexpected error kind {other:?}"),
    }
}

fn read_all(log: &Log) -> Vec<Envelope> {
    log.history(1)
        .collect::<Result<Vec<_>>>()
        .expect("history reads")
}

/// Writes `n` single-writer batches and returns the log dir's pristine copy.
fn build(dir: &Path, n: u64) -> Vec<Envelope> {
    let log = Log::open(small(dir)).expect("open");
    for c in 0..n {
        log.append(batch(0, c, 100)).expect("append");
    }
    let all = read_all(&log);
    log.close().expect("close");
    all
}

#[test]
fn truncating_the_last_entry_at_every_offset_recovers_the_prefix() {
    let pristine = tempfile::tempdir().unwrap();
    let all = build(pristine.path(), 6);
    let seg = last_segment(pristine.path());
    let (spans, problem) = inspect::segment_entries(&seg).unwrap();
    assert!(problem.is_none());
    let last = spans.last().unwrap().clone();
    let (first_lost, _) = last.seqs.unwrap();
    let prefix: Vec<Envelope> = all.iter().filter(|e| e.seq < first_lost).cloned().collect();
    let name = seg.file_name().unwrap().to_owned();

    for cut in last.start..last.end {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(work.path().join("wal").join(&name))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);

        let log = Log::open(small(work.path()))
            .unwrap_or_else(|e| panic!("cut at {cut}: open failed: {e}"));
        let report = log.recovery_report().clone();
        if cut == last.start {
            assert!(
                report.torn_tail.is_none(),
                "cut at the entry boundary is a clean end"
            );
        } else {
            let torn = report
                .torn_tail
                .unwrap_or_else(|| panic!("cut at {cut}: torn tail not reported"));
            assert_eq!(torn.offset, last.start, "cut at {cut}");
            assert_eq!(torn.bytes, cut - last.start, "cut at {cut}");
            assert_eq!(torn.from_seq, first_lost, "cut at {cut}");
            assert!(torn.file.ends_with(&name));
        }
        assert_eq!(report.last_seq, first_lost - 1);
        assert_eq!(read_all(&log), prefix, "cut at {cut}");
        // The log continues where the prefix ended, and the repair is durable.
        let at = log.append(batch(1, 0, 10)).unwrap();
        assert_eq!(at.first_seq, first_lost);
        log.close().unwrap();
        let log = Log::open(small(work.path())).unwrap();
        assert!(log.recovery_report().torn_tail.is_none());
        assert_eq!(read_all(&log).len(), prefix.len() + 1);
        log.close().unwrap();
    }
}

#[test]
fn a_torn_tail_with_garbage_after_a_preallocated_prefix_is_tolerated() {
    // A crash can leave a complete-looking last entry whose bytes never all reached disk.
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 4);
    let seg = last_segment(dir.path());
    let (spans, _) = inspect::segment_entries(&seg).unwrap();
    let last = spans.last().unwrap().clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(last.start + last.end) as usize / 2] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let log = Log::open(small(dir.path())).unwrap();
    let torn = log.recovery_report().torn_tail.clone().expect("reported");
    assert_eq!(torn.offset, last.start);
    assert!(
        torn.reason.contains("checksum") || torn.reason.contains("corruption"),
        "{}",
        torn.reason
    );
    assert_eq!(
        read_all(&log),
        all[..all.len()
            - spans
                .last()
                .map(|s| {
                    let (a, b) = s.seqs.unwrap();
                    (b - a + 1) as usize
                })
                .unwrap()]
            .to_vec()
    );
    log.close().unwrap();
}

#[test]
fn a_bit_flip_in_the_middle_of_the_log_names_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 10);
    let seg = last_segment(dir.path());
    let (spans, _) = inspect::segment_entries(&seg).unwrap();
    let victim = spans[3].clone();
    let at = victim.start + (victim.end - victim.start) * 2 / 3;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at as usize] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();

    assert_refused_in(dir.path(), &seg, &victim, "mid-log damage");
    // Offline readers refuse the same way and never skip it.
    let offline: Result<Vec<_>> = History::open_offline(dir.path(), 1).collect();
    assert!(offline.expect_err("offline read must fail").is_corruption());
}

#[test]
fn salvage_stops_at_the_last_good_event_and_says_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 10);
    let seg = last_segment(dir.path());
    let (spans, _) = inspect::segment_entries(&seg).unwrap();
    let victim = spans[3].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(victim.end - 6) as usize] ^= 0x80;
    std::fs::write(&seg, &bytes).unwrap();

    let mut cfg = small(dir.path());
    cfg.recovery = RecoveryMode::Salvage;
    let log = Log::open(cfg).unwrap();
    let s = log
        .recovery_report()
        .salvaged
        .clone()
        .expect("salvage report");
    let (first_bad, _) = victim.seqs.unwrap();
    assert_eq!(s.dropped_from_seq, first_bad);
    assert_eq!(s.offset, victim.start);
    assert!(
        s.saved_in.join(seg.file_name().unwrap()).exists(),
        "damaged segment copied aside"
    );
    let kept = read_all(&log);
    assert_eq!(
        kept,
        all.iter()
            .filter(|e| e.seq < first_bad)
            .cloned()
            .collect::<Vec<_>>()
    );
    log.close().unwrap();
}

#[test]
fn an_empty_segment_from_an_interrupted_creation_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 3);
    let stray = dir.path().join("wal").join("wal-999999");
    std::fs::write(&stray, vec![0u8; 4096]).unwrap();
    let log = Log::open(small(dir.path())).unwrap();
    assert_eq!(
        log.recovery_report().removed_empty_segments,
        vec![stray.clone()]
    );
    assert!(!stray.exists());
    assert_eq!(read_all(&log), all);
    log.close().unwrap();
}

/// Regression: okaywal 0.3.1 double-skips the crc of chunks a `LogManager::recover` leaves
/// unread, resumes writing inside the last entry, and destroys acknowledged data.
#[test]
fn reopen_then_append_never_overwrites_acknowledged_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = build(dir.path(), 3);
    for round in 0..4u64 {
        let log = Log::open(small(dir.path())).unwrap();
        assert!(log.recovery_report().torn_tail.is_none(), "round {round}");
        let at = log.append(batch(7, round, 50)).unwrap();
        assert_eq!(at.first_seq, acked.len() as u64 + 1);
        acked = read_all(&log);
        log.close().unwrap();
        let seg = last_segment(dir.path());
        let (spans, problem) = inspect::segment_entries(&seg).unwrap();
        assert!(problem.is_none(), "round {round}: {problem:?}");
        assert_eq!(spans.last().unwrap().seqs.unwrap().1, acked.len() as u64);
    }
    let offline: Vec<Envelope> = History::open_offline(dir.path(), 1)
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(offline, acked);
}

/// Regression: a recycled okaywal segment keeps stale bytes after its valid end; a `0x01`
/// followed by a large number there (common in rkyv payloads) looked like an entry to
/// okaywal's parser, so opening (or archiving) failed. Found by the kill test.
#[test]
fn stale_bytes_after_a_recycled_segments_end_are_not_taken_for_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 5);
    let seg = last_segment(dir.path());
    let (spans, _) = inspect::segment_entries(&seg).unwrap();
    let end = spans.last().unwrap().end as usize;
    let next_id = spans.last().unwrap().entry_id + 1;
    let mut bytes = std::fs::read(&seg).unwrap();
    // Stale look-alike: marker, an id from the future, then junk.
    bytes[end] = 1;
    bytes[end + 1..end + 9].copy_from_slice(&(next_id + 1000).to_le_bytes());
    bytes[end + 9] = 2;
    bytes[end + 10..end + 14].copy_from_slice(&77u32.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();

    let log = Log::open(small(dir.path())).expect("stale bytes are not an entry");
    assert!(log.recovery_report().torn_tail.is_none());
    assert_eq!(read_all(&log), all);
    let at = log.append(batch(3, 0, 10)).unwrap();
    assert_eq!(at.first_seq, all.len() as u64 + 1);
    log.checkpoint().expect("the segment archives cleanly");
    log.close().unwrap();
    let offline: Vec<Envelope> = History::open_offline(dir.path(), 1)
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(offline.len(), all.len() + 1);
}

/// Regression (found by `kill_appenders` after the segment-switch fix: "expected the header
/// of entry 969 here, found 0x03; valid entries follow"): after our `recover` callback has
/// read an entry to its end marker, okaywal 0.3.1 calls `read_chunk` again, which consumes
/// a stale `0x03` (END_OF_ENTRY) after the entry, and skips a stale `0x02` (CHUNK) with
/// whatever length follows it. okaywal then resumes writing past stale bytes, and the next
/// open found valid entries after a gap: mid-log corruption that no crash had caused.
#[test]
fn a_stale_end_or_chunk_marker_after_the_last_entry_does_not_shift_the_next_append() {
    let mut chunk_header = vec![2u8];
    chunk_header.extend_from_slice(&7u32.to_le_bytes());
    chunk_header.extend_from_slice(b"stale bytes");
    let shapes: [(&str, Vec<u8>); 4] = [
        ("end marker", vec![3]),
        ("two end markers", vec![3, 3, 0x55]),
        ("chunk marker", chunk_header),
        (
            "chunk marker with a 64 KiB length",
            vec![2, 0xff, 0xff, 0x00, 0x00, 3],
        ),
    ];
    for (what, stale) in shapes {
        let dir = tempfile::tempdir().unwrap();
        let all = build(dir.path(), 5);
        let seg = last_segment(dir.path());
        let (spans, _) = inspect::segment_entries(&seg).unwrap();
        let end = spans.last().unwrap().end as usize;
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[end..end + stale.len()].copy_from_slice(&stale);
        std::fs::write(&seg, &bytes).unwrap();

        let log = Log::open(small(dir.path())).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(log.recovery_report().torn_tail.is_none(), "{what}");
        assert_eq!(read_all(&log), all, "{what}");
        let at = log.append(batch(3, 0, 10)).unwrap();
        assert_eq!(at.first_seq, all.len() as u64 + 1, "{what}");
        log.close().unwrap();

        // The new entry follows the old last one directly: no gap for the next open.
        let (spans_after, problem) = inspect::segment_entries(&seg).unwrap();
        assert!(problem.is_none(), "{what}: {problem:?}");
        assert_eq!(spans_after.len(), spans.len() + 1, "{what}");
        assert_eq!(spans_after.last().unwrap().start as usize, end, "{what}");
        let log = Log::open(small(dir.path()))
            .unwrap_or_else(|e| panic!("{what}: reopen after the append failed: {e}"));
        assert!(log.recovery_report().torn_tail.is_none(), "{what}");
        assert_eq!(read_all(&log).len(), all.len() + 1, "{what}");
        log.close().unwrap();
    }
}

#[test]
fn a_damaged_entry_header_in_the_middle_is_corruption_not_the_end() {
    for (what, delta) in [
        ("entry marker", 0u64),
        ("entry id", 3),
        ("chunk marker", 9),
        ("chunk length", 11),
    ] {
        let dir = tempfile::tempdir().unwrap();
        build(dir.path(), 8);
        let seg = last_segment(dir.path());
        let (spans, _) = inspect::segment_entries(&seg).unwrap();
        let victim = spans[4].clone();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[(victim.start + delta) as usize] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        assert_refused_in(dir.path(), &seg, &victim, what);
    }
}

/// What a crash leaves in the segment okaywal activated just before it.
#[derive(Debug, Clone, Copy)]
enum NextSegment {
    /// A recycled `wal-N-cp`, renamed: its old header and stale entries of lower ids.
    Recycled,
    /// A new file: header, then preallocated zeros.
    Fresh,
    /// A new file whose header was never written: all zeros.
    Unheadered,
}

/// Regression (found by `kill_appenders`, "checksum mismatch in wal-6743 at offset 48095"):
/// okaywal activates the next segment (renames a recycled file to `wal-{K+1}`, or creates
/// one) *before* it flushes the entry K that crossed the checkpoint threshold. A SIGKILL
/// inside that flush's write(2) leaves entry K torn (a page-aligned prefix, then stale
/// bytes or zeros) in a segment that is no longer the last one. That is still a torn tail:
/// every later segment is empty. Opening must truncate and report it, not fail.
#[test]
fn torn_entry_at_a_segment_switch_is_a_torn_tail_not_corruption() {
    let pristine = tempfile::tempdir().unwrap();
    let all = build(pristine.path(), 6);
    let seg = last_segment(pristine.path());
    let seg_name = seg.file_name().unwrap().to_owned();
    let original = std::fs::read(&seg).unwrap();
    let (spans, problem) = inspect::segment_entries(&seg).unwrap();
    assert!(problem.is_none());
    let last = spans.last().unwrap().clone();
    let (first_lost, _) = last.seqs.unwrap();
    let prefix: Vec<Envelope> = all.iter().filter(|e| e.seq < first_lost).cloned().collect();
    let header_len = 5 + inspect::segment_version_info().len();
    let next_name = format!("wal-{}", last.entry_id + 1);
    // Stale bytes as a recycled segment holds them: text of another writer's events.
    let stale: Vec<u8> = b"w55-c1234-i0-"
        .iter()
        .copied()
        .cycle()
        .take(4096)
        .collect();
    let (s, e) = (last.start, last.end);
    let cuts = [
        ("inside the entry header", s + 4),
        ("inside the chunk header", s + 11),
        ("inside the frame header", s + 14 + 20),
        ("inside the payload", (s + e) / 2),
        ("inside the chunk crc", e - 3),
        ("before the end marker", e - 1),
    ];
    for next in [
        NextSegment::Recycled,
        NextSegment::Fresh,
        NextSegment::Unheadered,
    ] {
        for stale_after_cut in [true, false] {
            for (what, cut) in cuts {
                let case = format!("{next:?}, stale bytes {stale_after_cut}, cut {what} ({cut})");
                let work = tempfile::tempdir().unwrap();
                copy_dir(pristine.path(), work.path());
                let wal = work.path().join("wal");
                // Entry K: the part written before the kill, then whatever was there before.
                let mut bytes = original.clone();
                for (k, b) in bytes[cut as usize..e as usize].iter_mut().enumerate() {
                    *b = if stale_after_cut {
                        stale[k % stale.len()]
                    } else {
                        0
                    };
                }
                std::fs::write(wal.join(&seg_name), &bytes).unwrap();
                let next_bytes = match next {
                    // An earlier incarnation: ids 1..=K, all below the new file id K+1.
                    NextSegment::Recycled => original.clone(),
                    NextSegment::Fresh => {
                        let mut b = original[..header_len].to_vec();
                        b.resize(original.len(), 0);
                        b
                    }
                    NextSegment::Unheadered => vec![0; original.len()],
                };
                std::fs::write(wal.join(&next_name), &next_bytes).unwrap();

                // An offline reader (nothing modified) stops at the torn entry too.
                let mut offline = History::open_offline(work.path(), 1);
                let read: Vec<Envelope> = offline
                    .by_ref()
                    .collect::<Result<_>>()
                    .unwrap_or_else(|err| panic!("{case}: offline read of the crash: {err}"));
                assert_eq!(read, prefix, "{case}");
                if let Some(torn) = offline.torn_tail() {
                    assert_eq!(torn.offset, last.start, "{case}");
                    assert_eq!(torn.from_seq, first_lost, "{case}");
                } else {
                    assert!(
                        stale_after_cut && cut < s + 9,
                        "{case}: offline: not reported"
                    );
                }

                let log = Log::open(small(work.path()))
                    .unwrap_or_else(|err| panic!("{case}: open failed: {err}"));
                let report = log.recovery_report().clone();
                match report.torn_tail {
                    Some(torn) => {
                        assert!(torn.file.ends_with(&seg_name), "{case}: {torn:?}");
                        assert_eq!(torn.offset, last.start, "{case}");
                        assert_eq!(torn.from_seq, first_lost, "{case}");
                    }
                    // Stale bytes over the entry id: no entry starts there, the segment
                    // simply ends before it.
                    None => assert!(stale_after_cut && cut < s + 9, "{case}: not reported"),
                }
                assert_eq!(report.last_seq, first_lost - 1, "{case}");
                if matches!(next, NextSegment::Unheadered) {
                    assert_eq!(
                        report.removed_empty_segments,
                        vec![wal.join(&next_name)],
                        "{case}"
                    );
                }
                assert_eq!(read_all(&log), prefix, "{case}");
                // The log goes on from the torn entry's first sequence, and the repair holds.
                let at = log.append(batch(1, 0, 10)).unwrap();
                assert_eq!(at.first_seq, first_lost, "{case}");
                log.checkpoint()
                    .unwrap_or_else(|err| panic!("{case}: {err}"));
                log.close().unwrap();
                let log = Log::open(small(work.path())).unwrap();
                assert!(log.recovery_report().torn_tail.is_none(), "{case}");
                let after = read_all(&log);
                assert_eq!(after.len(), prefix.len() + 1, "{case}");
                assert_eq!(after[..prefix.len()], prefix[..], "{case}");
                log.close().unwrap();
                let offline: Vec<Envelope> = History::open_offline(work.path(), 1)
                    .collect::<Result<_>>()
                    .unwrap_or_else(|err| panic!("{case}: offline read: {err}"));
                assert_eq!(offline, after, "{case}");
            }
        }
    }
}

/// The same torn-looking damage is corruption when a later segment holds a valid entry:
/// it was written after the damaged one, so the damaged one had been written in full.
#[test]
fn damage_in_a_segment_followed_by_a_segment_with_entries_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 6);
    let seg = last_segment(dir.path());
    let original = std::fs::read(&seg).unwrap();
    let (spans, _) = inspect::segment_entries(&seg).unwrap();
    let header_len = 5 + inspect::segment_version_info().len();
    let last = spans.last().unwrap().clone();
    let victim = spans[spans.len() - 2].clone();
    // Move the last entry into the next segment, then damage the one before it, which is
    // now the last entry of the first segment.
    let mut next = original[..header_len].to_vec();
    next.extend_from_slice(&original[last.start as usize..last.end as usize]);
    next.resize(original.len(), 0);
    std::fs::write(
        dir.path()
            .join("wal")
            .join(format!("wal-{}", last.entry_id)),
        &next,
    )
    .unwrap();
    let mut bytes = original.clone();
    bytes[last.start as usize..last.end as usize].fill(0);
    bytes[((victim.start + victim.end) / 2) as usize] ^= 0x04;
    std::fs::write(&seg, &bytes).unwrap();

    assert_refused_in(dir.path(), &seg, &victim, "damage before a valid entry");
    let offline: Result<Vec<_>> = History::open_offline(dir.path(), 1).collect();
    assert!(offline.expect_err("offline read must fail").is_corruption());
}
