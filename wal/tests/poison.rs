#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! A failed write or fsync poisons the log: the caller and every later caller get
//! `Poisoned`, nothing is retried, and a reopen recovers everything acknowledged.

mod common;

use common::*;
use magray_wal::*;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[test]
fn a_failed_fsync_poisons_every_later_call_and_reopen_recovers_the_acked_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    plan.fail_append_number.store(5, Ordering::SeqCst);
    let mut cfg = LogConfig::new(dir.path());
    cfg.faults = Some(plan);
    let log = Log::open(cfg).unwrap();
    let mut acked = Vec::new();
    for c in 0..4 {
        acked.push(log.append(batch(0, c, 20)).unwrap());
    }
    let err = log
        .append(batch(0, 4, 20))
        .expect_err("the fifth fsync fails");
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("injected EIO"), "{err}");
    for c in 5..8 {
        let err = log.append(batch(0, c, 20)).expect_err("poisoned");
        assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    }
    assert!(log.poisoned().is_some());
    assert!(log.close().is_err(), "close reports the poisoning");

    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    let got: Vec<Envelope> = log.history(1).collect::<Result<_>>().unwrap();
    let acked_last = acked.last().unwrap().last_seq;
    // Every acknowledged event is there; the failed batch is there whole or not at all.
    assert!(got.len() as u64 >= acked_last);
    let failed: Vec<_> = got
        .iter()
        .filter(|e| origin(&e.event).map(|o| o.1) == Some(4))
        .collect();
    assert!(failed.is_empty() || failed.len() == batch(0, 4, 20).len());
    assert!(
        got.iter().all(|e| origin(&e.event).map(|o| o.1) <= Some(4)),
        "nothing after the failure"
    );
    log.close().unwrap();
}

/// Mounts a tmpfs of `size` at a fresh directory; unmounts on drop.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount(size: &str) -> TinyFs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "this test mounts a small tmpfs to provoke a real ENOSPC and needs root \
             (CI runs as root): run `sudo -E cargo test -p magray-wal --test poison`"
        );
        TinyFs(dir)
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_poisons_the_log_and_loses_nothing_acknowledged() {
    let fs = TinyFs::mount("1m");
    let dir = fs.0.path().join("log");
    let mut cfg = LogConfig::new(&dir);
    cfg.segment_bytes = 128 << 10;
    let log = Log::open(cfg.clone()).unwrap();
    let mut acked = 0u64;
    let mut err = None;
    for c in 0..100_000u64 {
        match log.append(batch(0, c, 2000)) {
            Ok(at) => acked = at.last_seq,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("a 1 MiB filesystem fills up");
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("space"),
        "says why: {err}"
    );
    let again = log.append(batch(0, 0, 1)).expect_err("stays poisoned");
    assert!(matches!(again, Error::Poisoned { .. }));
    drop(log);

    // Free space the way an operator would (here: move the archive aside), then reopen.
    let aside = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(dir.join("archive")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), aside.path().join(e.file_name())).unwrap();
        std::fs::remove_file(e.path()).unwrap();
    }
    let report_dir = tempfile::tempdir().unwrap();
    copy_dir(&dir, report_dir.path());
    for e in std::fs::read_dir(aside.path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(
            e.path(),
            report_dir.path().join("archive").join(e.file_name()),
        )
        .unwrap();
    }
    let log = Log::open(LogConfig::new(report_dir.path())).unwrap();
    let got: Vec<Envelope> = log.history(1).collect::<Result<_>>().unwrap();
    assert!(
        got.len() as u64 >= acked,
        "all {acked} acknowledged events survive, got {}",
        got.len()
    );
    log.close().unwrap();
}
