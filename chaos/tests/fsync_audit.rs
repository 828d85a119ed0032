#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! The fsync audit: a store runs on the crash file system (`crashfs`), which counts every
//! fsync, fdatasync and directory fsync by path, and each step is checked for the syncs the
//! design needs (ARCHITECTURE.md, "The commit path, every fsync named"): remove any one of them and this test fails.
//! Needs root and `/dev/fuse` (CI runs as root).

use crashfs::{Counters, CrashFs, CrashMode, SyncCounts};
use magray_chaos::{config, vector_for};
use magray_memory::{Memory, NewRecord};
use std::path::Path;

fn record(text: String) -> NewRecord {
    let v = vector_for(&text);
    NewRecord::new(text, v)
}

/// Syncs of the files (not directories) whose path relative to the mount starts with `prefix`.
fn file_syncs(c: &Counters, prefix: &str) -> u64 {
    c.per_path
        .iter()
        .filter(|(p, _)| p.to_string_lossy().starts_with(prefix))
        .map(|(_, s)| s.fsync + s.fdatasync)
        .sum()
}

/// Syncs of exactly this file.
fn syncs_of(c: &Counters, path: &str) -> u64 {
    let s = c.path(path);
    s.fsync + s.fdatasync
}

fn dir_syncs(c: &Counters, dir: &str) -> u64 {
    c.path(dir).fsyncdir
}

fn show(c: &Counters) -> String {
    c.per_path
        .iter()
        .filter(|(_, s)| s.fsync + s.fdatasync + s.fsyncdir > 0)
        .map(|(p, s): (_, &SyncCounts)| {
            format!(
                "  {}: fsync {} fdatasync {} dir {}\n",
                p.display(),
                s.fsync,
                s.fdatasync,
                s.fsyncdir
            )
        })
        .collect()
}

/// Names of the files in a directory.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_syncs_what_the_design_needs() {
    let backing = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let fs = CrashFs::mount(backing.path(), mnt.path()).unwrap();
    let store = mnt.path().join("store");

    // Creating a store: its directory's name (the mount root), then wal/, archive/,
    // snapshots/ and MANIFEST in it.
    let m = Memory::open(&store, config()).await.unwrap();
    let c = fs.counters();
    assert!(dir_syncs(&c, ".") >= 1, "the store's name:\n{}", show(&c));
    assert!(
        dir_syncs(&c, "store") >= 3,
        "wal/, archive/, snapshots/, MANIFEST:\n{}",
        show(&c)
    );
    assert_eq!(syncs_of(&c, "store/.tmp-MANIFEST"), 1, "{}", show(&c));
    fs.reset_counters();

    // The first acknowledged entry of a segment: one data sync of the segment, and wal/
    // synced (okaywal may have renamed a recycled segment to this name).
    m.insert(record("first".into())).await.unwrap();
    let c = fs.counters();
    assert_eq!(file_syncs(&c, "store/wal/wal-"), 1, "{}", show(&c));
    assert!(dir_syncs(&c, "store/wal") >= 1, "{}", show(&c));
    fs.reset_counters();

    // Every later acknowledged insert: exactly one sync of the log, a batch too (group
    // commit), and nothing else.
    for i in 0..3 {
        m.insert(record(format!("single{i}"))).await.unwrap();
        let c = fs.counters();
        assert_eq!(
            file_syncs(&c, "store/wal/wal-"),
            1,
            "insert {i}:\n{}",
            show(&c)
        );
        assert_eq!(c.total.fsync + c.total.fdatasync, 1, "{}", show(&c));
        fs.reset_counters();
    }
    let batch = (0..100).map(|i| record(format!("batch{i}"))).collect();
    m.insert_batch(batch).await.unwrap();
    let c = fs.counters();
    assert_eq!(file_syncs(&c, "store/wal/wal-"), 1, "{}", show(&c));
    fs.reset_counters();

    // A checkpoint: every file of the new snapshot synced once in its temp directory, the
    // temp directory synced, then snapshots/ after the rename.
    let seq = m.checkpoint().await.unwrap();
    let c = fs.counters();
    let name = format!("{seq:020}");
    let tmp = format!("store/snapshots/.tmp-{name}");
    let files = files_in(&store.join("snapshots").join(&name));
    assert!(files.len() >= 8, "{files:?}");
    for f in &files {
        assert_eq!(syncs_of(&c, &format!("{tmp}/{f}")), 1, "{f}:\n{}", show(&c));
    }
    assert_eq!(dir_syncs(&c, &tmp), 1, "{}", show(&c));
    assert!(dir_syncs(&c, "store/snapshots") >= 1, "{}", show(&c));
    fs.reset_counters();

    // Archiving: fill segments (256 KiB in the chaos config) so okaywal checkpoints them;
    // each archive file is synced under its temp name, and archive/ after each rename.
    // Then fill more: okaywal recycles the archived segments (renames `wal-X-cp` to the new
    // segment's name), and the first entry of every segment must wait for wal/ to be synced.
    // After every acknowledged batch, a power cut must leave every acknowledged record.
    let pad = "a".repeat(2_000);
    let mut acked = m.stats().layers.iter().map(|l| l.records).sum::<u64>();
    for k in 0..8 {
        let batch = (0..100).map(|i| record(format!("z{k}x{i}{pad}"))).collect();
        m.insert_batch(batch).await.unwrap();
        acked += 100;
        if k == 3 {
            m.checkpoint().await.unwrap();
        }
        let cut = tempfile::tempdir().unwrap();
        let report = fs
            .snapshot_crash(CrashMode::DropAllPending, cut.path())
            .unwrap();
        let after = Memory::open(cut.path().join("store"), config())
            .await
            .unwrap();
        let n = after.records(None).unwrap().len() as u64;
        after.close().await.unwrap();
        assert_eq!(
            n, acked,
            "a power cut after batch {k} keeps {n} of {acked}: {report}"
        );
    }
    m.checkpoint().await.unwrap();
    m.close().await.unwrap();
    let c = fs.counters();
    let segments = c
        .per_path
        .iter()
        .filter(|(p, s)| {
            p.to_string_lossy().starts_with("store/wal/wal-") && s.fsync + s.fdatasync > 0
        })
        .count() as u64;
    assert!(segments >= 4, "{}", show(&c));
    // Every segment started in this phase (all but the one already open) syncs wal/ twice:
    // okaywal when it creates or recycles the file, and the log before the segment's first
    // entry is acknowledged (the rename of a recycled file must be durable first).
    assert!(
        dir_syncs(&c, "store/wal") >= 2 * (segments - 1),
        "{segments} segments:\n{}",
        show(&c)
    );
    let archives = files_in(&store.join("archive"));
    assert!(!archives.is_empty(), "no segment was archived");
    for a in &archives {
        let tmp = format!("store/archive/.tmp-{a}");
        assert_eq!(syncs_of(&c, &tmp), 1, "{a}:\n{}", show(&c));
    }
    assert!(
        dir_syncs(&c, "store/archive") >= archives.len() as u64,
        "{}",
        show(&c)
    );
    fs.unmount().unwrap();
}
