#![allow(clippy::unwrap_used)]
//! The index as a projection: tombstone-triggered rebuilds, a bad HNSW dump, automatic
//! checkpoints, and a subscriber that falls behind.
mod common;
use common::*;
use magray_memory::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_over_the_threshold_rebuild_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.exact_search_below = 0;
    let m = Memory::open(dir.path(), c).await.unwrap();
    let vs = clustered(21, 1000, DIM, 20);
    let batch = records(0, &vs);
    let ids = m.insert_batch(batch).await.unwrap();
    m.wait_indexed().await.unwrap();
    assert_eq!(m.stats().index.indexed, 1000);
    for id in ids.iter().take(400) {
        m.delete(*id).await.unwrap();
    }
    // Deleted records are never returned, rebuild or not.
    for (i, v) in vs.iter().enumerate().take(400).step_by(20) {
        let hits = m.search(v, &SearchOptions::top_k(5)).await.unwrap();
        assert!(hits.iter().all(|h| h.id != ids[i]));
    }
    m.wait_indexed().await.unwrap(); // includes any rebuild due
    let st = m.stats();
    let l = &st.index;
    // The 256th tombstone (over 20% of 1,000 points) triggered a rebuild of the live records;
    // the deletes after it are tombstones again, below the threshold.
    assert!(l.indexed < 1000, "a rebuild dropped the dead points: {l:?}");
    assert_eq!(st.layers[0].records, 600);
    assert_eq!(l.indexed - l.tombstones, 600, "{l:?}");
    assert!(l.tombstones < 256, "{l:?}");
    for (i, v) in vs.iter().enumerate().skip(400).step_by(13) {
        let hits = m.search(v, &SearchOptions::top_k(1)).await.unwrap();
        assert_eq!(hits[0].id, ids[i]);
    }
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hnsw_dump_is_reported_and_the_store_reindexed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.exact_search_below = 0;
    let vs = clustered(22, 1_100, DIM, 5);
    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    let batch = records(0, &vs);
    let ids = m.insert_batch(batch).await.unwrap();
    m.wait_indexed().await.unwrap();
    let seq = m.checkpoint().await.unwrap();
    drop(m);
    let graph = dir
        .path()
        .join("snapshots")
        .join(format!("{seq:020}"))
        .join("hnsw.graph");
    flip_byte(&graph, |len| len / 3, 1);

    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    // Served at once (exactly) while the index is rebuilt. (Without access events: the
    // snapshot at close must come from the rebuilt graph alone.)
    let quiet = SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(1)
    };
    let hits = m.search(&vs[7], &quiet).await.unwrap();
    assert_eq!(hits[0].id, ids[7]);
    m.wait_indexed().await.unwrap();
    let st = m.stats();
    assert_eq!(
        st.open.snapshot_seq,
        Some(seq),
        "records still come from the snapshot"
    );
    assert_eq!(st.open.index_rebuilds.len(), 1, "{:?}", st.open);
    assert!(st.open.index_rebuilds[0].contains("hnsw.graph"));
    assert_eq!(st.index.indexed, 1_100);
    m.close().await.unwrap();

    // No new events, but the rebuilt graph (over 1,024 points) is snapshotted at close: the
    // next open loads it instead of rebuilding again.
    let m = Memory::open(dir.path(), c).await.unwrap();
    m.wait_indexed().await.unwrap();
    let st = m.stats();
    assert!(st.open.index_rebuilds.is_empty(), "{:?}", st.open);
    assert!(st.open.snapshot_seq > Some(seq), "{:?}", st.open);
    assert_eq!(st.index.indexed, 1_100);
    let hits = m.search(&vs[7], &SearchOptions::top_k(1)).await.unwrap();
    assert_eq!(hits[0].id, ids[7]);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_happen_every_n_events_and_old_ones_are_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.checkpoint_every = 50;
    c.snapshots_keep = 2;
    c.access_flush_interval = std::time::Duration::from_millis(20);
    let m = Memory::open(dir.path(), c).await.unwrap();
    let vs = clustered(23, 240, DIM, 5);
    let mut seen = std::collections::HashSet::new();
    for (round, chunk) in vs.chunks(60).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| record(round * 60 + j, v.clone()))
            .collect();
        m.insert_batch(batch).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while m.stats().events_since_snapshot >= 50 {
            assert!(std::time::Instant::now() < deadline, "{:?}", m.stats());
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        seen.insert(m.stats().last_snapshot_seq.unwrap());
    }
    assert_eq!(
        seen.len(),
        4,
        "one automatic snapshot per 60-event round: {seen:?}"
    );
    let snaps = std::fs::read_dir(dir.path().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 2, "keeps the newest two");
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_where_to_resume_and_writers_do_not_wait() {
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let v = clustered(24, 1, DIM, 1).remove(0);
    let mut sub = m.subscribe(1).unwrap();
    // Nobody reads `sub` while 6,000 events commit: more than the 1,024 + 4,096 buffered.
    let texts: Vec<NewRecord> = (0..6000).map(|i| record(i, v.clone())).collect();
    for chunk in texts.chunks(500) {
        m.insert_batch(chunk.to_vec()).await.unwrap();
    }
    let mut last = 0;
    let resume = loop {
        match sub.next().await.unwrap() {
            Ok(env) => {
                assert_eq!(env.seq, last + 1, "in order, no gaps");
                last = env.seq;
            }
            Err(Error::Lagged { resume_from }) => break resume_from,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(resume, last + 1);
    // Resuming from there delivers the rest.
    let mut sub = m.subscribe(resume).unwrap();
    let mut n = resume - 1;
    while n < 6000 {
        n = sub.next().await.unwrap().unwrap().seq;
    }
    m.close().await.unwrap();
}
