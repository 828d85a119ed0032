#![allow(clippy::unwrap_used)]
//! Model test: random sequences of insert / delete / supersede / search (access) / rate /
//! checkpoint / reopen against a plain in-memory model. Records, access counts and search
//! results must agree after every step.
mod common;
use common::*;
use magray_memory::*;
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Insert { text: u8, vec: u8, layer: u8 },
    Delete(u8),
    Supersede { victim: u8, text: u8, vec: u8 },
    Search { vec: u8, k: u8 },
    Rate { who: u8, r: u8 },
    Checkpoint,
    Reopen { checkpoint: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..12, 0u8..40, 0u8..3).prop_map(|(text, vec, layer)| Op::Insert { text, vec, layer }),
        2 => any::<u8>().prop_map(Op::Delete),
        1 => (any::<u8>(), 0u8..12, 0u8..40).prop_map(|(victim, text, vec)| Op::Supersede { victim, text, vec }),
        3 => (0u8..40, 1u8..6).prop_map(|(vec, k)| Op::Search { vec, k }),
        1 => (any::<u8>(), 0u8..=10).prop_map(|(who, r)| Op::Rate { who, r }),
        1 => Just(Op::Checkpoint),
        1 => any::<bool>().prop_map(|checkpoint| Op::Reopen { checkpoint }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
struct M {
    text: String,
    layer: Layer,
    vec: usize,
    rating: Option<f32>,
    accesses: u64,
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(99, 40, DIM, 40); // 40 well-separated directions
    let mut cfg = config();
    cfg.exact_search_below = 8;
    let mut mem = Some(Memory::open(dir.path(), cfg.clone()).await.unwrap());
    let mut model: HashMap<RecordId, M> = HashMap::new();
    let mut order: Vec<RecordId> = Vec::new();
    for op in ops {
        let m = mem.as_ref().unwrap();
        match op {
            Op::Insert { text, vec, layer } => {
                let layer = Layer::ALL[layer as usize];
                let text = format!("text {text}");
                let id = m
                    .insert(NewRecord::new(text.clone(), vs[vec as usize].clone()).layer(layer))
                    .await
                    .unwrap();
                let existing = model
                    .iter()
                    .find(|(_, r)| r.text == text && r.layer == layer)
                    .map(|(id, _)| *id);
                match existing {
                    Some(e) => assert_eq!(id, e, "identical content returns the existing id"),
                    None => {
                        model.insert(
                            id,
                            M {
                                text,
                                layer,
                                vec: vec as usize,
                                rating: None,
                                accesses: 0,
                            },
                        );
                        order.push(id);
                    }
                }
            }
            Op::Delete(i) => {
                if order.is_empty() {
                    continue;
                }
                let id = order.remove(i as usize % order.len());
                m.delete(id).await.unwrap();
                model.remove(&id);
                assert!(matches!(m.delete(id).await, Err(Error::NotFound(_))));
            }
            Op::Supersede { victim, text, vec } => {
                if order.is_empty() {
                    continue;
                }
                let old = order.remove(victim as usize % order.len());
                let layer = model[&old].layer;
                let text = format!("new text {text} {}", order.len());
                let id = m
                    .supersede(
                        old,
                        NewRecord::new(text.clone(), vs[vec as usize].clone()).layer(layer),
                    )
                    .await
                    .unwrap();
                model.remove(&old);
                model.insert(
                    id,
                    M {
                        text,
                        layer,
                        vec: vec as usize,
                        rating: None,
                        accesses: 0,
                    },
                );
                order.push(id);
            }
            Op::Search { vec, k } => {
                let q = &vs[vec as usize];
                let hits = m
                    .search(q, &SearchOptions::top_k(k as usize))
                    .await
                    .unwrap();
                let mut want: Vec<(f32, RecordId)> = model
                    .iter()
                    .map(|(id, r)| (dot(q, &vs[r.vec]), *id))
                    .collect();
                want.sort_by(|a, b| b.0.total_cmp(&a.0));
                let got_scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
                let want_scores: Vec<f32> = want.iter().take(k as usize).map(|w| w.0).collect();
                assert_eq!(hits.len(), want_scores.len());
                for (g, w) in got_scores.iter().zip(&want_scores) {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "scores {got_scores:?} vs model {want_scores:?}"
                    );
                }
                for h in &hits {
                    model.get_mut(&h.id).unwrap().accesses += 1;
                }
            }
            Op::Rate { who, r } => {
                if order.is_empty() {
                    continue;
                }
                let id = order[who as usize % order.len()];
                let r = f32::from(r) / 10.0;
                m.rate(id, r).await.unwrap();
                model.get_mut(&id).unwrap().rating = Some(r);
            }
            Op::Checkpoint => {
                m.checkpoint().await.unwrap();
            }
            Op::Reopen { checkpoint } => {
                let mut c = cfg.clone();
                c.checkpoint_on_close = checkpoint;
                let old = mem.take().unwrap();
                old.flush_accesses().await.unwrap();
                old.close().await.unwrap();
                mem = Some(Memory::open(dir.path(), c).await.unwrap());
            }
        }
        // Compare the whole table after every step.
        let m = mem.as_ref().unwrap();
        m.flush_accesses().await.unwrap();
        let got: HashMap<RecordId, M> = m
            .records(None)
            .unwrap()
            .into_iter()
            .map(|r| {
                let vec = model.get(&r.id).map(|x| x.vec).unwrap_or(usize::MAX);
                (
                    r.id,
                    M {
                        text: r.text,
                        layer: r.layer,
                        vec,
                        rating: r.rating,
                        accesses: r.stats.count,
                    },
                )
            })
            .collect();
        assert_eq!(got, model);
    }
    mem.take().unwrap().close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn engine_agrees_with_model(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
