#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use magray_memory::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_get_search_delete_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(1, 300, DIM, 10);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let mut ids = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        ids.push(
            m.insert(record(i, v.clone()).tag(format!("t{}", i % 3)))
                .await
                .unwrap(),
        );
    }
    // Identical content (text, layer, project) is a no-op returning the existing id.
    assert_eq!(m.insert(record(5, vs[5].clone())).await.unwrap(), ids[5]);
    assert_eq!(m.stats().layers[0].records, 300);
    for (i, v) in vs.iter().enumerate().step_by(7) {
        let hits = m.search(v, &SearchOptions::top_k(3)).await.unwrap();
        assert_eq!(hits[0].id, ids[i], "record {i} is its own top-1");
        assert!((hits[0].score - 1.0).abs() < 1e-4);
    }
    m.delete(ids[0]).await.unwrap();
    assert!(matches!(m.get(ids[0]).await, Err(Error::NotFound(_))));
    let hits = m.search(&vs[0], &SearchOptions::top_k(5)).await.unwrap();
    assert!(hits.iter().all(|h| h.id != ids[0]));
    let tagged = m
        .search(
            &vs[4],
            &SearchOptions {
                tags: vec!["t1".into()],
                ..SearchOptions::top_k(10)
            },
        )
        .await
        .unwrap();
    assert!(
        !tagged.is_empty()
            && tagged
                .iter()
                .all(|h| h.record.tags == vec!["t1".to_string()])
    );
    m.wait_indexed().await.unwrap();
    let s = m.stats();
    assert_eq!(s.index.pending, 0);
    assert!(s.index.indexed >= 299, "{:?}", s.index);
    let seq = m.checkpoint().await.unwrap();
    assert!(seq > 0);
    let n_new = m.insert(record(1000, vs[1].clone())).await.unwrap();
    m.close().await.unwrap();

    let m = Memory::open(dir.path(), config()).await.unwrap();
    let st = m.stats();
    assert_eq!(st.layers[0].records, 300);
    assert!(st.open.snapshot_seq.is_some(), "{:?}", st.open);
    assert!(matches!(m.get(ids[0]).await, Err(Error::NotFound(_))));
    assert_eq!(m.get(n_new).await.unwrap().text, "record number 1000");
    m.wait_indexed().await.unwrap();
    for (i, v) in vs.iter().enumerate().skip(1).step_by(11) {
        let hits = m.search(v, &SearchOptions::top_k(3)).await.unwrap();
        assert_eq!(hits[0].id, ids[i]);
    }
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_typed_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.max_text_bytes = 1000;
    let m = Memory::open(dir.path(), c).await.unwrap();
    let v = clustered(2, 1, DIM, 1).remove(0);
    let id = m.insert(record(1, v.clone())).await.unwrap();
    let before = m.stats().last_seq;

    let mut nan = v.clone();
    nan[3] = f32::NAN;
    let mut inf = v.clone();
    inf[0] = f32::INFINITY;
    let cases: Vec<(NewRecord, &str)> = vec![
        (record(2, vec![0.1; DIM + 1]), "dimension"),
        (record(3, nan), "nan"),
        (record(4, inf), "inf"),
        (record(5, vec![0.0; DIM]), "zero"),
        (NewRecord::new("   ", v.clone()), "empty"),
        (NewRecord::new("x".repeat(1001), v.clone()), "too long"),
    ];
    for (r, what) in cases {
        let e = m.insert(r.clone()).await.unwrap_err();
        assert!(e.is_invalid_input(), "{what}: {e}");
        // A bad record poisons the whole batch: the good one beside it is not written.
        let e = m
            .insert_batch(vec![record(99, v.clone()), r])
            .await
            .unwrap_err();
        assert!(e.is_invalid_input(), "{what} in a batch: {e}");
    }
    assert!(matches!(
        m.insert(record(2, vec![0.1; 3])).await,
        Err(Error::DimensionMismatch {
            expected: DIM,
            got: 3
        })
    ));
    assert!(matches!(
        m.insert(NewRecord::new("", v.clone())).await,
        Err(Error::EmptyText)
    ));
    assert!(matches!(
        m.insert(NewRecord::new("y".repeat(1001), v.clone())).await,
        Err(Error::TextTooLong {
            len: 1001,
            limit: 1000
        })
    ));
    for k in [0, 101] {
        assert!(matches!(
            m.search(&v, &SearchOptions::top_k(k)).await,
            Err(Error::InvalidTopK(_))
        ));
    }
    assert!(matches!(
        m.search(&v[1..], &SearchOptions::default()).await,
        Err(Error::DimensionMismatch { .. })
    ));
    assert!(matches!(
        parse_layer("episodic"),
        Err(Error::UnknownLayer(_))
    ));
    assert_eq!(parse_layer("Insights").unwrap(), Layer::Insights);
    let ghost: RecordId = "0190a5f1-0000-7000-8000-000000000000".parse().unwrap();
    assert!(matches!(m.get(ghost).await, Err(Error::NotFound(_))));
    assert!(matches!(m.delete(ghost).await, Err(Error::NotFound(_))));
    assert!(matches!(m.rate(ghost, 0.5).await, Err(Error::NotFound(_))));
    assert!(matches!(
        m.supersede(ghost, record(7, v.clone())).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        m.rate(id, 1.5).await,
        Err(Error::InvalidRating(_))
    ));
    assert!(matches!(
        m.rate(id, f32::NAN).await,
        Err(Error::InvalidRating(_))
    ));
    assert!("not-a-uuid".parse::<RecordId>().is_err());
    let s = m.stats();
    assert_eq!(s.last_seq, before, "no bad call may append to the log");
    assert_eq!(m.records(None).unwrap().len(), 1);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_is_refused_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let e = Memory::open(dir.path(), config()).await.unwrap_err();
    match &e {
        Error::Locked { holder, .. } => {
            assert_eq!(holder, &format!("pid {}", std::process::id()))
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(e.to_string().contains("LOCK"), "{e}");
    m.close().await.unwrap();
    // Released on close.
    Memory::open(dir.path(), config())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    // A different dimension is refused by the MANIFEST.
    let mut c = config();
    c.dimension = DIM + 1;
    assert!(matches!(
        Memory::open(dir.path(), c).await,
        Err(Error::StoreMismatch {
            what: "dimension",
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_from_env_names_the_bad_variable() {
    // Only this test touches these variables.
    std::env::set_var("MEMORY_HNSW_M", "300");
    let e = Config::from_env().unwrap_err();
    assert!(e.to_string().contains("MEMORY_HNSW_M"), "{e}");
    std::env::set_var("MEMORY_HNSW_M", "twelve");
    let e = Config::from_env().unwrap_err();
    assert!(e.to_string().contains("MEMORY_HNSW_M"), "{e}");
    std::env::set_var("MEMORY_HNSW_M", "24");
    std::env::set_var("MEMORY_HNSW_EF_SEARCH", "80");
    let c = Config::from_env().unwrap();
    assert_eq!((c.hnsw.m, c.hnsw.ef_search), (24, 80));
    std::env::remove_var("MEMORY_HNSW_M");
    std::env::remove_var("MEMORY_HNSW_EF_SEARCH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_identical_content() {
    let dir = tempfile::tempdir().unwrap();
    let m = std::sync::Arc::new(Memory::open(dir.path(), config()).await.unwrap());
    let vs = clustered(3, 64, DIM, 4);
    let mut tasks = Vec::new();
    for (i, v) in vs.iter().cloned().enumerate() {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            m.insert(record(i, v)).await.unwrap()
        }));
    }
    // 16 tasks inserting the same content get one id.
    let same = clustered(4, 1, DIM, 1).remove(0);
    for _ in 0..16 {
        let m = m.clone();
        let v = same.clone();
        tasks.push(tokio::spawn(async move {
            m.insert(NewRecord::new("the same thing", v)).await.unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let dup: std::collections::HashSet<_> = ids[64..].iter().collect();
    assert_eq!(
        dup.len(),
        1,
        "identical concurrent inserts resolve to one record"
    );
    assert_eq!(m.records(None).unwrap().len(), 65);
    let s = m.stats();
    assert_eq!(s.applied_seq, s.last_seq);
    std::sync::Arc::try_unwrap(m)
        .unwrap()
        .close()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_replays_history_then_follows_live_commits() {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let vs = clustered(5, 20, DIM, 2);
    for (i, v) in vs.iter().take(10).enumerate() {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    let mut sub = m.subscribe(3).unwrap();
    for (i, v) in vs.iter().enumerate().skip(10) {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 18 {
        let env = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(env.event.type_name(), "inserted");
        seqs.push(env.seq);
    }
    assert_eq!(seqs, (3..=20).collect::<Vec<_>>());
    drop(sub);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_falls_back_to_an_older_one_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(6, 40, DIM, 4);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    for (i, v) in vs.iter().take(20).enumerate() {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    let first = m.checkpoint().await.unwrap();
    for (i, v) in vs.iter().enumerate().skip(20) {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    let second = m.checkpoint().await.unwrap();
    assert!(second > first);
    let mut c = config();
    c.checkpoint_on_close = false;
    drop(m);
    // Flip one byte in the newest snapshot's records.
    let snap = dir.path().join("snapshots").join(format!("{second:020}"));
    flip_byte(&snap.join("records.bin"), |len| len / 2, 0x40);
    let m = Memory::open(dir.path(), c).await.unwrap();
    let st = m.stats();
    assert_eq!(st.open.snapshot_seq, Some(first));
    assert_eq!(st.open.snapshots_rejected.len(), 1);
    assert!(
        st.open.snapshots_rejected[0].1.contains("records.bin"),
        "{:?}",
        st.open
    );
    assert_eq!(
        m.records(None).unwrap().len(),
        40,
        "the longer replay recovers everything"
    );
    m.close().await.unwrap();
}

/// Flips a bit at `at(len)` of `file` in the newer of two snapshots of 400 records
/// (clustered vectors from `seed`), a file open maps unread: open still loads that snapshot;
/// the `get` of the record `pick` chooses among the newer half fails with the damage, naming
/// the file, and so does everything after it (nothing is written); the next open checks
/// everything, falls back to the older snapshot and recovers every record from the log.
async fn damage_found_after_open_falls_back(
    seed: u64,
    file: &str,
    at: impl Fn(usize) -> usize,
    pick: impl Fn(&[RecordId]) -> RecordId,
) {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(seed, 400, DIM, 4);
    let mut c = config();
    c.checkpoint_on_close = false;
    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    let (first_half, second_half) = vs.split_at(200);
    m.insert_batch(records(0, first_half)).await.unwrap();
    let first = m.checkpoint().await.unwrap();
    let ids = m.insert_batch(records(200, second_half)).await.unwrap();
    let second = m.checkpoint().await.unwrap();
    let all = m.records(None).unwrap();
    drop(m);
    let snap = dir.path().join("snapshots").join(format!("{second:020}"));
    flip_byte(&snap.join(file), at, 0x01);
    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    let st = m.stats();
    assert_eq!(
        st.open.snapshot_seq,
        Some(second),
        "{file} is not read at open"
    );
    assert!(st.open.snapshots_rejected.is_empty());
    let id = pick(&ids);
    let e = m.get(id).await.unwrap_err();
    assert!(
        matches!(&e, Error::Corrupted { .. }) && e.to_string().contains(file),
        "{e}"
    );
    assert!(m.records(None).is_err());
    assert!(m.wait_indexed().await.is_err());
    assert!(m.stats().damage.is_some_and(|d| d.contains(file)));
    // Nothing is written once damage is known (an insert's duplicate check read rows).
    assert!(m.insert(record(9_999, vs[0].clone())).await.is_err());
    drop(m);
    let m = Memory::open(dir.path(), c).await.unwrap();
    let st = m.stats();
    assert!(st.open.full_check.is_some(), "{:?}", st.open);
    assert_eq!(st.open.snapshot_seq, Some(first));
    assert_eq!(st.damage, None);
    assert_eq!(
        m.records(None).unwrap(),
        all,
        "the longer replay recovers everything"
    );
    m.get(id).await.unwrap();
    m.close().await.unwrap();
}

/// A row of the record table is checked on its first read (the table is mapped unread at
/// open): damage there is found by the first read of it or by the scrub, fails every read and
/// write from then on with the file and offset, and the next open checks everything and falls
/// back to the older snapshot, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_row_is_found_after_open_and_the_next_open_falls_back() {
    // The last record's text, at the end of the newest table (far from its header block).
    damage_found_after_open_falls_back(7, "records.bin", |len| len - 3, |ids| *ids.last().unwrap())
        .await;
}

/// A damaged block of the key index (snapshot format 7: mapped unread, each block checked on
/// the first lookup that reads it): the lookup fails with the damage instead of finding
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_key_index_block_is_found_after_open_and_the_next_open_falls_back() {
    // The middle id, which every binary search probes first (a 64 B header, then 400 content
    // keys of 8 B, then the ids, 16 B each).
    damage_found_after_open_falls_back(
        9,
        "keys.bin",
        |_| 64 + 400 * 8 + 200 * 16 + 3,
        |ids| ids[0],
    )
    .await;
}

/// Damage the replay itself reaches (a delete in the log after the snapshot, of a record whose
/// row is damaged): open does not return a state that skipped it, but opens again with every
/// snapshot file checked, and the delete holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_the_replay_reaches_makes_open_check_everything() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(8, 300, DIM, 4);
    let mut c = config();
    c.checkpoint_on_close = false;
    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    let ids = m.insert_batch(records(0, &vs)).await.unwrap();
    let snap_seq = m.checkpoint().await.unwrap();
    let last = *ids.last().unwrap();
    m.delete(last).await.unwrap();
    drop(m);
    let snap = dir.path().join("snapshots").join(format!("{snap_seq:020}"));
    flip_byte(&snap.join("records.bin"), |len| len - 3, 0x01);
    let m = Memory::open(dir.path(), c).await.unwrap();
    let st = m.stats();
    assert!(
        st.open
            .full_check
            .as_deref()
            .is_some_and(|w| w.contains("records.bin")),
        "{:?}",
        st.open
    );
    assert_ne!(st.open.snapshot_seq, Some(snap_seq));
    assert_eq!(st.damage, None);
    let left = m.records(None).unwrap();
    assert_eq!(left.len(), ids.len() - 1);
    assert!(left.iter().all(|r| r.id != last));
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selective_filter_on_an_indexed_layer_still_finds_every_match() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.exact_search_below = 0;
    let m = Memory::open(dir.path(), c).await.unwrap();
    let vs = clustered(8, 2000, DIM, 20);
    let batch = vs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let r = record(i, v.clone());
            if i % 500 == 7 {
                r.project("rare")
            } else {
                r
            }
        })
        .collect();
    let ids = m.insert_batch(batch).await.unwrap();
    m.wait_indexed().await.unwrap();
    let o = SearchOptions {
        project: Some("rare".into()),
        ..SearchOptions::top_k(10)
    };
    let hits = m.search(&vs[3], &o).await.unwrap();
    let mut got: Vec<_> = hits.iter().map(|h| h.id).collect();
    got.sort();
    let mut want: Vec<_> = (0..2000).filter(|i| i % 500 == 7).map(|i| ids[i]).collect();
    want.sort();
    assert_eq!(
        got, want,
        "all 4 records of the project, wherever they sit in the graph"
    );
    m.close().await.unwrap();
}

/// A project filter that admits few records searches exactly those, in every layer asked
/// for (even one the project has no record in: no graph walk, no layer scan); one that
/// admits many walks the graphs and still finds nearly all of the exact top 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_filters_are_exact_when_few_and_walk_the_graphs_when_many() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.exact_search_below = 0;
    let m = Memory::open(dir.path(), c).await.unwrap();
    let vs = clustered(11, 6000, DIM, 30);
    let project = |i: usize| match i {
        i if i % 100 == 5 => "few",
        i if i % 2 == 0 => "many",
        _ => "other",
    };
    let layer = |i: usize| match (project(i), i % 3) {
        ("few", _) => Layer::Assets,
        (_, 0) => Layer::Interact,
        (_, 1) => Layer::Insights,
        _ => Layer::Assets,
    };
    let batch = vs
        .iter()
        .enumerate()
        .map(|(i, v)| record(i, v.clone()).project(project(i)).layer(layer(i)))
        .collect();
    let ids = m.insert_batch(batch).await.unwrap();
    m.wait_indexed().await.unwrap();
    let gone = ids[105];
    m.delete(gone).await.unwrap();
    let exact = |q: &[f32], p: &str, k: usize| -> Vec<RecordId> {
        let mut v: Vec<(f32, usize)> = (0..vs.len())
            .filter(|i| project(*i) == p && ids[*i] != gone)
            .map(|i| (vs[i].iter().zip(q).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        v.sort_by(|a, b| b.0.total_cmp(&a.0));
        v.into_iter().take(k).map(|(_, i)| ids[i]).collect()
    };
    let mut found = 0;
    for qi in [3usize, 1001, 2002, 4004, 5005] {
        let q = &vs[qi];
        let o = |p: &str| SearchOptions {
            project: Some(p.into()),
            ef_search: Some(16),
            record_access: false,
            ..SearchOptions::top_k(10)
        };
        let few: Vec<RecordId> = m
            .search(q, &o("few"))
            .await
            .unwrap()
            .iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(
            few,
            exact(q, "few", 10),
            "query {qi}: exact for a small project"
        );
        let elsewhere = SearchOptions {
            layers: vec![Layer::Interact, Layer::Insights],
            ..o("few")
        };
        assert!(
            m.search(q, &elsewhere).await.unwrap().is_empty(),
            "none outside Assets"
        );
        let many = m.search(q, &o("many")).await.unwrap();
        let want = exact(q, "many", 10);
        found += many.iter().filter(|h| want.contains(&h.id)).count();
    }
    assert!(
        found >= 45,
        "a large project walks the graphs: {found} of 50 found"
    );
    m.close().await.unwrap();
}

/// A chunk is mapped unread at open; the indexer's scrub finds a flipped bit in the
/// background, names the file, and marks the store: searches fail with that error until the
/// store is reopened, and the next open checks in full, rejects the snapshot and replays the
/// log, every record intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_a_vector_chunk_is_found_by_the_scrub_and_the_log_replayed_at_the_next_open(
) {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(9, 50, DIM, 5);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let batch = records(0, &vs);
    let ids = m.insert_batch(batch).await.unwrap();
    let seq = m.checkpoint().await.unwrap();
    drop(m);
    let snap = dir.path().join("snapshots").join(format!("{seq:020}"));
    let chunk = std::fs::read_dir(&snap)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "f32"))
        .unwrap();
    flip_byte(&chunk, |len| len - 5, 0x10);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    assert_eq!(m.stats().open.snapshot_seq, Some(seq), "mapped unread");
    // Returns once the scrub is done: with the damage it found.
    let damage = m.wait_indexed().await.unwrap_err().to_string();
    assert_eq!(m.stats().damage.as_ref(), Some(&damage));
    assert!(
        damage.contains(".f32") && damage.contains("offset"),
        "{damage}"
    );
    let e = m
        .search(&vs[49], &SearchOptions::top_k(1))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), damage);
    m.close().await.unwrap();

    let m = Memory::open(dir.path(), config()).await.unwrap();
    let open = m.stats().open;
    assert_eq!(open.full_check, Some(damage), "{open:?}");
    assert_eq!(
        open.snapshot_seq, None,
        "the only snapshot is rejected: {open:?}"
    );
    assert!(open.snapshots_rejected[0].1.contains(".f32"), "{open:?}");
    let hits = m.search(&vs[49], &SearchOptions::top_k(1)).await.unwrap();
    assert_eq!(hits[0].id, ids[49], "vectors come from the log, intact");
    assert_eq!(m.stats().damage, None);
    m.close().await.unwrap();
}

/// Record tables under `dir` still mapped by this process whose file was deleted (a pruned
/// snapshot's).
#[cfg(target_os = "linux")]
fn deleted_tables_mapped(dir: &std::path::Path) -> usize {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&*dir) && l.contains("records.bin") && l.ends_with("(deleted)"))
        .count()
}

/// After a checkpoint, records point at the new snapshot's record table: the table a pruned
/// snapshot had is no longer mapped (its disk space is freed), and every record reads the same.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_moves_records_to_its_own_table_and_a_pruned_one_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(7, 60, DIM, 4);
    let mut c = config();
    c.snapshots_keep = 1;
    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    for (i, v) in vs.iter().take(30).enumerate() {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    m.checkpoint().await.unwrap();
    m.close().await.unwrap();
    // Reopened: the 30 records' bodies are rows of that snapshot's table.
    let m = Memory::open(dir.path(), c).await.unwrap();
    let loaded = m.records(None).unwrap();
    assert_eq!(loaded.len(), 30);
    for (i, v) in vs.iter().enumerate().skip(30) {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    let before = m.records(None).unwrap();
    // Two checkpoints: the snapshot loaded at open is pruned by the first.
    m.checkpoint().await.unwrap();
    m.insert(record(99, vs[0].iter().map(|x| -x).collect()))
        .await
        .unwrap();
    m.checkpoint().await.unwrap();
    assert_eq!(
        deleted_tables_mapped(dir.path()),
        0,
        "a pruned snapshot's records.bin is still mapped"
    );
    let after = m.records(None).unwrap();
    assert_eq!(after.len(), 61);
    assert_eq!(after[..60], before[..]);
    m.close().await.unwrap();
}

/// The indexer yields the CPU to searches and writes: its thread runs 10 nicer than the
/// caller (at most 19; read back from /proc, as `ps` would).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_runs_below_the_callers_priority() {
    let nice_of = |stat: &str| -> Option<i64> {
        // Fields after the parenthesised name: state is field 3, nice field 19.
        stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(16)?
            .parse()
            .ok()
    };
    let own = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
    let want = (own + 10).min(19);
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    // The nice value of every thread of this process named magray-indexer.
    let indexers = || -> Vec<i64> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                let nice = nice_of(&std::fs::read_to_string(t.join("stat")).ok()?)?;
                (comm.trim() == "magray-indexer").then_some(nice)
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !indexers().contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "no indexer thread at nice {want} (this thread: {own}): {:?}",
            indexers()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The caller keeps its priority.
    let after = nice_of(&std::fs::read_to_string("/proc/thread-self/stat").unwrap()).unwrap();
    assert_eq!(after, own);
    m.close().await.unwrap();
}
