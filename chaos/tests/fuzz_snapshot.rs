//! Fuzzing the snapshot manifest and loader (a proptest equivalent of a cargo-fuzz target, run
//! by `cargo test`): arbitrary damage to a snapshot — random bit flips in any of its files,
//! arbitrary bytes as its MANIFEST, truncation, a missing file — never panics the loader, is
//! named by `verify`, and `Memory::open` falls back to the log and loses nothing. (The event
//! decoder and the archive reader have the same kind of tests in `wal/tests/frame_props.rs`.)

use magray_chaos::{config, copy_store, vector_for};
use magray_memory::{Memory, NewRecord, Record};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A store with 300 records and one snapshot, built once.
fn pristine() -> &'static (tempfile::TempDir, Vec<Record>) {
    static P: OnceLock<(tempfile::TempDir, Vec<Record>)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let records = rt.block_on(async {
            let m = Memory::open(dir.path(), config()).await.expect("open");
            let batch = (0..300)
                .map(|i| {
                    let t = format!("fuzz.{i}.0");
                    NewRecord::new(t.clone(), vector_for(&t))
                })
                .collect();
            m.insert_batch(batch).await.expect("insert");
            m.wait_indexed().await.expect("index");
            m.checkpoint().await.expect("checkpoint");
            let r = m.records(None).expect("records");
            drop(m);
            r
        });
        (dir, records)
    })
}

fn snapshot_files(store: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for d in std::fs::read_dir(store.join("snapshots"))
        .expect("snapshots")
        .flatten()
    {
        if d.file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            for f in std::fs::read_dir(d.path()).expect("snapshot dir").flatten() {
                files.push(f.path());
            }
        }
    }
    files.sort();
    files
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { file: usize, at: usize, bit: u8 },
    Manifest(Vec<u8>),
    Truncate { file: usize, keep: usize },
    Remove { file: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), 0u8..8).prop_map(|(file, at, bit)| Damage::Flip {
            file,
            at,
            bit
        }),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Damage::Manifest),
        (any::<usize>(), any::<usize>()).prop_map(|(file, keep)| Damage::Truncate { file, keep }),
        any::<usize>().prop_map(|file| Damage::Remove { file }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn damaged_snapshots_are_named_and_lose_nothing(d in damage()) {
        let (src, records) = pristine();
        let dir = tempfile::tempdir().expect("temp dir");
        copy_store(src.path(), dir.path()).expect("copy");
        let files = snapshot_files(dir.path());
        prop_assume!(!files.is_empty());
        let pick = |i: usize| files[i % files.len()].clone();
        let changed = match &d {
            Damage::Flip { file, at, bit } => {
                let f = pick(*file);
                let mut b = std::fs::read(&f).expect("read");
                prop_assume!(!b.is_empty());
                let at = at % b.len();
                b[at] ^= 1 << bit;
                std::fs::write(&f, &b).expect("write");
                f
            }
            Damage::Manifest(bytes) => {
                let f = files.iter().find(|f| f.ends_with("MANIFEST")).expect("manifest").clone();
                std::fs::write(&f, bytes).expect("write");
                f
            }
            Damage::Truncate { file, keep } => {
                let f = pick(*file);
                let len = std::fs::metadata(&f).expect("meta").len() as usize;
                prop_assume!(len > 0);
                std::fs::OpenOptions::new().write(true).open(&f).expect("open")
                    .set_len((keep % len) as u64).expect("truncate");
                f
            }
            Damage::Remove { file } => {
                let f = pick(*file);
                std::fs::remove_file(&f).expect("remove");
                f
            }
        };
        let snap = changed.parent().expect("snapshot dir").to_path_buf();
        // verify names the damaged snapshot (never a panic, never "OK").
        let report = magray_memory::verify::verify(dir.path()).expect("verify runs");
        prop_assert!(!report.ok(), "damage to {} went unnoticed", changed.display());
        let snap_name = snap.display().to_string();
        prop_assert!(
            report.problems.iter().any(|p| p.contains(&snap_name)),
            "{:?} does not name {}", report.problems, snap_name
        );
        // Open falls back to the log and loses nothing. Or, for a row of the record table
        // (mapped unread, each row checked on first read): reading the records fails with the
        // damage, naming the snapshot, and the next open falls back.
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (got, found) = rt.block_on(async {
            let m = Memory::open(dir.path(), config()).await.expect("open falls back");
            match m.records(None) {
                Ok(r) => (r, None),
                Err(e) => {
                    drop(m);
                    let m = Memory::open(dir.path(), config()).await.expect("reopen falls back");
                    (m.records(None).expect("records after the fallback"), Some(e.to_string()))
                }
            }
        });
        if let Some(e) = found {
            prop_assert!(e.contains(&snap_name), "{} does not name {}", e, snap_name);
        }
        prop_assert_eq!(&got, records);
    }
}
