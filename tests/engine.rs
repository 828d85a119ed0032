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
    assert_eq!(s.layers[0].pending, 0);
    assert!(s.layers[0].indexed >= 299, "{:?}", s.layers[0]);
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
