#![allow(clippy::unwrap_used)]
//! Invariant 3: projections recovered from snapshot + delta equal projections from replaying
//! the whole log from sequence 1 — records, access statistics, and top-10 of 100 queries.
mod common;
use common::*;
use magray_memory::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

async fn top10(m: &Memory, q: &[f32]) -> Vec<(RecordId, f32)> {
    let o = SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(10)
    };
    let hits = m.search(q, &o).await.unwrap();
    hits.into_iter().map(|h| (h.id, h.score)).collect()
}

async fn workload(m: &Memory, rng: &mut StdRng, vs: &[Vec<f32>], from: usize, to: usize) {
    let mut ids = m
        .records(None)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect::<Vec<_>>();
    for chunk in (from..to).collect::<Vec<_>>().chunks(25) {
        let batch = chunk
            .iter()
            .map(|i| {
                let layer = Layer::ALL[*i % 3];
                record(*i, vs[*i].clone())
                    .layer(layer)
                    .tag(format!("t{}", i % 4))
                    .session(format!("s{}", i % 5))
            })
            .collect();
        ids.extend(m.insert_batch(batch).await.unwrap());
        for _ in 0..3 {
            let q = &vs[rng.random_range(0..to)];
            let o = SearchOptions {
                session: Some(format!("s{}", rng.random_range(0..5))),
                ..SearchOptions::top_k(5)
            };
            m.search(q, &o).await.unwrap();
        }
        let victim = ids.swap_remove(rng.random_range(0..ids.len()));
        m.delete(victim).await.unwrap();
        let old = ids.swap_remove(rng.random_range(0..ids.len()));
        let i = rng.random_range(0..vs.len());
        ids.push(
            m.supersede(old, record(100_000 + i, vs[i].clone()))
                .await
                .unwrap(),
        );
        let r = ids[rng.random_range(0..ids.len())];
        m.rate(r, rng.random_range(0.0..1.0)).await.unwrap();
        let g = ids[rng.random_range(0..ids.len())];
        m.get(g).await.unwrap();
        m.flush_accesses().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_plus_delta_equals_full_replay() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(11, 1200, DIM, 30);
    let mut rng = StdRng::seed_from_u64(7);
    let mut c = config();
    c.checkpoint_on_close = false;
    c.exact_search_below = 0; // exercise the HNSW path too
    let m = Memory::open(dir.path(), c.clone()).await.unwrap();
    workload(&m, &mut rng, &vs, 0, 600).await;
    m.wait_indexed().await.unwrap();
    m.checkpoint().await.unwrap();
    workload(&m, &mut rng, &vs, 600, 1200).await;
    m.close().await.unwrap();

    let replay_dir = tempfile::tempdir().unwrap();
    copy_store(dir.path(), replay_dir.path());

    let recovered = Memory::open(dir.path(), c.clone()).await.unwrap();
    let open = recovered.stats().open;
    assert!(open.snapshot_seq.is_some(), "{open:?}");
    let delta = recovered.stats().applied_seq - open.snapshot_seq.unwrap();
    assert_eq!(
        open.replayed_events, delta,
        "recovery replays only the delta"
    );
    let mut full_cfg = c.clone();
    full_cfg.full_replay = true;
    let full = Memory::open(replay_dir.path(), full_cfg).await.unwrap();
    assert_eq!(full.stats().open.snapshot_seq, None);
    assert_eq!(full.stats().open.replayed_events, full.stats().applied_seq);

    let a = recovered.records(None).unwrap();
    let b = full.records(None).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a.iter().any(|r| r.stats.count > 0 && r.rating.is_some()));
    assert_eq!(a, b, "records and access statistics agree");

    // Through the (differently built) HNSW graphs: nearly the same; exact: identical.
    recovered.wait_indexed().await.unwrap();
    full.wait_indexed().await.unwrap();
    let mut overlap = 0usize;
    for q in vs.iter().step_by(12).take(100) {
        let (x, y) = (top10(&recovered, q).await, top10(&full, q).await);
        overlap += x.iter().filter(|i| y.iter().any(|j| j.0 == i.0)).count();
    }
    assert!(
        overlap >= 950,
        "top-10 overlap {overlap}/1000 between recovered and replayed indices"
    );
    recovered.close().await.unwrap();
    full.close().await.unwrap();

    let mut exact = c.clone();
    exact.exact_search_below = usize::MAX;
    let recovered = Memory::open(dir.path(), exact.clone()).await.unwrap();
    exact.full_replay = true;
    let full = Memory::open(replay_dir.path(), exact).await.unwrap();
    for q in vs.iter().step_by(12).take(100) {
        assert_eq!(top10(&recovered, q).await, top10(&full, q).await);
    }
    recovered.close().await.unwrap();
    full.close().await.unwrap();
}
