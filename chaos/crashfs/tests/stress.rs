#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Concurrent appenders with periodic fsync: every crash state keeps what was synced and
//! is a prefix of what was written.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::Arc;

use common::{fsync_dir, Env};
use crashfs::{CrashMode, SplitMix64};

#[test]
fn concurrent_appenders_crash_to_prefixes() {
    let env = Env::new();
    let cfs = env.mount();
    let names: Vec<String> = (0..4).map(|i| format!("log{i}")).collect();
    for n in &names {
        File::create(env.m(n)).unwrap();
    }
    fsync_dir(env.mnt.path());

    let mnt = Arc::new(env.mnt.path().to_path_buf());
    let threads: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let path = mnt.join(n);
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(i as u64);
                let mut f = OpenOptions::new().append(true).open(path).unwrap();
                let mut written = Vec::new();
                let mut synced = 0usize;
                for k in 0..205 {
                    let len = 1 + rng.below(3000) as usize;
                    let chunk: Vec<u8> = (0..len).map(|j| (k * 7 + j + i) as u8).collect();
                    f.write_all(&chunk).unwrap();
                    written.extend_from_slice(&chunk);
                    if k % 10 == 9 {
                        f.sync_data().unwrap();
                        synced = written.len();
                    }
                }
                (written, synced)
            })
        })
        .collect();
    let results: Vec<(Vec<u8>, usize)> = threads.into_iter().map(|t| t.join().unwrap()).collect();

    let snaps = tempfile::tempdir().unwrap();
    let mut partial = 0;
    for seed in 0..6u64 {
        let d = snaps.path().join(seed.to_string());
        cfs.snapshot_crash(CrashMode::RandomPrefix { seed }, &d)
            .unwrap();
        for (n, (written, synced)) in names.iter().zip(&results) {
            let got = fs::read(d.join(n)).unwrap();
            assert!(got.len() >= *synced, "{n}: lost synced data");
            assert_eq!(&got[..], &written[..got.len()], "{n}: not a prefix");
            if got.len() > *synced && got.len() < written.len() {
                partial += 1;
            }
        }
    }
    assert!(
        partial > 0,
        "some crash state keeps part of the unsynced tail"
    );
    let c = cfs.counters();
    assert_eq!(c.total.fdatasync, 4 * 20);
    // write(2) calls may be split into several FUSE writes at page boundaries.
    assert!(c.total.writes >= 4 * 205);
    let total: usize = results.iter().map(|(w, _)| w.len()).sum();
    assert_eq!(c.total.bytes_written, total as u64);
    cfs.unmount().unwrap();
    for (n, (written, _)) in names.iter().zip(&results) {
        assert_eq!(&fs::read(env.b(n)).unwrap(), written);
    }
}
