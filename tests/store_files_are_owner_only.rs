#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! An agent's memory holds private conversations: every file and directory the store creates
//! is owner-only (0600 / 0700), whatever the process umask.

mod common;

use common::*;
use magray_memory::*;
use std::os::unix::fs::PermissionsExt;

fn walk(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        out.push((e.path(), mode));
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_and_directory_of_a_store_is_owner_only() {
    let parent = tempfile::tempdir().unwrap();
    let store = parent.path().join("agent").join("store");
    let config = Config {
        segment_bytes: 256 << 10,
        ..common::config()
    };
    let m = Memory::open(&store, config.clone()).await.unwrap();
    // Enough to fill segments (archive files, a recycled segment) and write snapshots.
    let pad = "x".repeat(2_000);
    let vs = clustered(1, 400, DIM, 8);
    for k in 0..4 {
        let batch = (0..100)
            .map(|i| NewRecord::new(format!("{k}-{i} {pad}"), vs[k * 100 + i].clone()))
            .collect();
        m.insert_batch(batch).await.unwrap();
        m.checkpoint().await.unwrap();
    }
    m.close().await.unwrap();
    let mut all = Vec::new();
    walk(parent.path(), &mut all);
    let kinds = |p: &str| all.iter().any(|(x, _)| x.to_string_lossy().contains(p));
    assert!(
        kinds("/wal/wal-") && kinds("/archive/") && kinds("/snapshots/"),
        "{all:?}"
    );
    for (path, mode) in &all {
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
}
