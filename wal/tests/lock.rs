#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! A program that opens the log directly takes the store lock: it cannot write beside another
//! handle (a running engine, or another log), and the lock goes with the handle.

use magray_wal::{Error, Log, LogConfig};

#[test]
fn a_second_log_on_the_same_store_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Log::open(LogConfig::new(dir.path())).unwrap();
    match Log::open(LogConfig::new(dir.path())) {
        Err(Error::Locked { path, holder }) => {
            assert_eq!(path, dir.path().join("LOCK"));
            assert_eq!(holder, format!("pid {}", std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    Log::open(LogConfig::new(dir.path())).unwrap();
}
