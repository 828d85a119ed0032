#![allow(clippy::unwrap_used)]
//! EIO from fsync on our own writes (snapshot files, vector chunks, archive files), injected
//! through `magray_wal::fsutil::fault`. The log's own fsync failures are covered by the wal
//! crate's poison tests. Expected, as for any failing disk: the failing call returns an error
//! naming the file; nothing acknowledged is lost; a snapshot that could not be made durable is
//! never used; a failed archive write stops the log (fsyncgate: no silent retry) and the next
//! open recovers the segment it could not archive.
//!
//! One test per file: the fault plan is process-wide, and each scenario arms patterns inside
//! its own temp directory only.

use magray_chaos::{config, vector_for};
use magray_memory::{Memory, NewRecord, RecordId};
use magray_wal::fsutil::fault;
use std::path::Path;

async fn insert_n(m: &Memory, tag: &str, n: usize, acked: &mut Vec<(RecordId, String)>) {
    for i in 0..n {
        let text = format!("{tag} record {i}");
        let id = m
            .insert(NewRecord::new(text.clone(), vector_for(&text)))
            .await
            .expect("insert before any fault");
        acked.push((id, text));
    }
}

async fn assert_all_there(dir: &Path, acked: &[(RecordId, String)]) {
    let m = Memory::open(dir, config())
        .await
        .expect("reopen after the fault");
    for (id, text) in acked {
        let r = m
            .get(*id)
            .await
            .expect("an acknowledged record is readable");
        assert_eq!(&r.text, text);
    }
    m.close().await.expect("close");
    let report = magray_memory::verify::verify(dir).expect("verify runs");
    assert!(report.ok(), "verify found problems: {:?}", report.problems);
    assert!(
        report.snapshots.iter().all(|(_, bad)| bad.is_none()),
        "a snapshot on disk is invalid: {:?}",
        report.snapshots
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_eio_on_snapshots_and_archives_loses_nothing() {
    // Snapshot: every file of the first checkpoint fails its fsync once.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    let mut acked = Vec::new();
    let m = Memory::open(&dir, config()).await.unwrap();
    insert_n(&m, "before", 40, &mut acked).await;
    let pattern = dir.join("snapshots").to_string_lossy().into_owned();
    let before = fault::injected();
    fault::fail_fsync(&pattern, 1);
    let err = m
        .checkpoint()
        .await
        .expect_err("a snapshot whose fsync failed");
    fault::clear();
    assert_eq!(fault::injected(), before + 1, "the fault fired once");
    let msg = err.to_string();
    assert!(
        msg.contains("snapshots") && msg.contains("os error 5"),
        "the error names the file and the EIO: {msg}"
    );
    // The store keeps serving: the log holds everything, a snapshot is only a shortcut.
    insert_n(&m, "after", 40, &mut acked).await;
    let seq = m.checkpoint().await.expect("the next checkpoint succeeds");
    assert!(seq > 0);
    drop(m); // no close: the next open replays from that snapshot
    assert_all_there(&dir, &acked).await;
    let left: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temp snapshot dirs left: {left:?}");

    // Vector chunk: the checkpoint that would map the tail into a chunk file fails on it.
    let dir = tmp.path().join("chunk");
    let mut acked = Vec::new();
    let m = Memory::open(&dir, config()).await.unwrap();
    insert_n(&m, "chunk", 30, &mut acked).await;
    fault::fail_fsync("vectors-", 1);
    let err = m
        .checkpoint()
        .await
        .expect_err("a chunk whose fsync failed");
    fault::clear();
    assert!(
        err.to_string().contains("vectors-"),
        "names the chunk: {err}"
    );
    insert_n(&m, "chunk after", 30, &mut acked).await;
    m.checkpoint().await.expect("the next checkpoint succeeds");
    m.close().await.unwrap();
    assert_all_there(&dir, &acked).await;

    // Archive: the first segment okaywal checkpoints cannot be archived durably.
    let dir = tmp.path().join("archive");
    let mut acked = Vec::new();
    let m = Memory::open(&dir, config()).await.unwrap();
    let pattern = dir.join("archive").to_string_lossy().into_owned();
    fault::fail_fsync(&pattern, 1);
    let mut poisoned = None;
    for i in 0..5_000 {
        // 1 KiB texts fill the 256 KiB test segments within a few hundred inserts.
        let text = format!("archive record {i} {}", "x".repeat(1_000));
        match m
            .insert(NewRecord::new(text.clone(), vector_for(&text)))
            .await
        {
            Ok(id) => acked.push((id, text)),
            Err(e) => {
                poisoned = Some(e);
                break;
            }
        }
    }
    fault::clear();
    let err = poisoned.unwrap_or_else(|| {
        let listing: Vec<_> = std::fs::read_dir(dir.join("archive"))
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        panic!(
            "the failed archive fsync did not stop the log (faults fired {}; archive {listing:?})",
            fault::injected()
        )
    });
    let msg = err.to_string();
    assert!(
        msg.contains("poisoned") && msg.contains("archiving") && msg.contains("os error 5"),
        "writers are told why, naming the file: {msg}"
    );
    assert!(!acked.is_empty());
    drop(m);
    // Reopen: the segment that was never archived is still live, so it is archived now and
    // the history is contiguous from sequence 1 (verify checks that).
    assert_all_there(&dir, &acked).await;
}
