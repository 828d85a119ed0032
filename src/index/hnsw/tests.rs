#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::disk::vectors::Vectors;
use crate::index::frozen::SearchGraph;
use crate::util::TopK;
use hnsw_rs::prelude::{DistDot, Hnsw};
use proptest::prelude::*;

/// `n` unit vectors around `clusters` random centres (each component `noise` × U(−½, ½)
/// off its centre's), from a seeded SplitMix generator.
pub(crate) fn clustered(n: usize, dim: usize, clusters: usize, noise: f32) -> Vec<Vec<f32>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| next()).collect())
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[(i * 7919) % clusters];
            let mut v: Vec<f32> = c.iter().map(|x| x + noise * next()).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn data(n: usize, dim: usize) -> Vec<Vec<f32>> {
    clustered(n, dim, (n / 50).max(1), 0.6)
}

/// The true top `k` of `q` among the vectors passing `ok`, by brute force.
pub(crate) fn exact(vs: &[Vec<f32>], q: &[f32], k: usize, ok: impl Fn(u32) -> bool) -> Vec<u32> {
    let mut top = TopK::new(k);
    for (i, v) in vs.iter().enumerate() {
        if ok(i as u32) {
            top.push(dot(q, v), i as u32);
        }
    }
    top.into_sorted().into_iter().map(|(_, s)| s).collect()
}

fn frozen_top10(f: &FrozenGraph, store: &Vectors, q: &[f32], ef: usize) -> Vec<u32> {
    let mut top = TopK::new(10);
    f.search(q, ef, store, &|_| true, &mut top);
    top.into_sorted().into_iter().map(|(_, s)| s).collect()
}

/// Recall@10 of `g`'s walk at `ef` over `queries` of the points themselves (every 131st).
fn recall_at(g: &FrozenGraph, store: &Vectors, vs: &[Vec<f32>], ef: usize, queries: usize) -> f64 {
    let found: usize = (0..queries)
        .map(|qi| {
            let q = &vs[(qi * 131) % vs.len()];
            let want = exact(vs, q, 10, |_| true);
            frozen_top10(g, store, q, ef)
                .iter()
                .filter(|s| want.contains(s))
                .count()
        })
        .sum();
    found as f64 / (queries * 10) as f64
}

pub(crate) fn build(vs: &[Vec<f32>], seed: u64) -> (HnswBuilder, Vectors) {
    let dim = vs[0].len();
    let mut b = HnswBuilder::new(dim, 16, 100, seed);
    let mut store = Vectors::new(dim);
    for (i, v) in vs.iter().enumerate() {
        assert_eq!(store.push(v), i as u32);
        b.insert(i as u32, v);
    }
    (b, store)
}

/// The links of an hnsw_rs graph as a [`FrozenGraph`] (the same walk, other links).
fn freeze_reference(g: &Hnsw<f32, DistDot>, vs: &[Vec<f32>]) -> FrozenGraph {
    let pi = g.get_point_indexation();
    let top = pi.get_max_level_observed() as usize;
    let n = vs.len();
    let mut off0 = vec![0u32];
    let mut adj0 = Vec::new();
    let mut upper = vec![std::collections::HashMap::new(); top];
    let mut entry = None;
    // Nodes are slots here (inserted as 0..n), so links need no mapping.
    let mut by_slot: Vec<Vec<Vec<u32>>> = vec![Vec::new(); n];
    for p in pi.into_iter() {
        let slot = p.get_origin_id();
        if p.get_point_id().0 as usize == top && entry.is_none() {
            entry = Some(slot as u32);
        }
        by_slot[slot] = p
            .get_neighborhood_id()
            .iter()
            .map(|ns| ns.iter().map(|x| x.d_id as u32).collect())
            .collect();
    }
    for (slot, levels) in by_slot.iter().enumerate() {
        if let Some(l0) = levels.first() {
            adj0.extend_from_slice(l0);
        }
        off0.push(adj0.len() as u32);
        for (l, ns) in levels.iter().enumerate().skip(1) {
            if l <= top && !ns.is_empty() {
                upper[l - 1].insert(slot as u32, ns.clone().into_boxed_slice());
            }
        }
    }
    let slots: Vec<u32> = (0..n as u32).collect();
    FrozenGraph::from_parts(
        &slots,
        |node| &adj0[off0[node] as usize..off0[node + 1] as usize],
        upper,
        entry,
        |node| &vs[node][..],
        vs[0].len(),
    )
}

/// hnsw_rs, which built our graphs before, is the reference: on the same data, with the
/// same M and ef_construction, searched the same way (the frozen walk at ef 10, where
/// misses show), our graph must find the true top-10 as often as hnsw_rs's graph (within
/// 1 %), and at least 97 % of the time.
#[test]
fn recall_matches_hnsw_rs_on_the_same_data() {
    let (n, dim, ef) = (3_000, 48, 10);
    // Overlapping clusters: here ef 10 misses about 1 % of the true top-10.
    let vs = clustered(n, dim, n / 50, 3.0);
    let (b, store) = build(&vs, 1);
    let f = b.freeze();
    let reference: Hnsw<f32, DistDot> = Hnsw::new(16, n, 16, 100, DistDot);
    for (i, v) in vs.iter().enumerate() {
        reference.insert((v.as_slice(), i));
    }
    let fr = freeze_reference(&reference, &vs);
    let ours = recall_at(&f, &store, &vs, ef, 200);
    let theirs = recall_at(&fr, &store, &vs, ef, 200);
    assert!(
        ours >= 0.97 && ours >= theirs - 0.01,
        "recall@10 at ef {ef}: ours {ours}, hnsw_rs {theirs}"
    );
}

/// Inserts on several threads ([`HnswBuilder::insert_batch`]) make a graph that finds what
/// one-by-one inserts' graph finds (within 1 % of recall@10 at ef 10, on the data where ef
/// 10 misses), with the same degree bounds, every node reachable on level 0, and the
/// highest node the entry.
#[test]
fn parallel_inserts_find_what_one_by_one_inserts_find() {
    let (n, dim, ef) = (6_000, 48, 10);
    let vs = clustered(n, dim, n / 50, 3.0);
    let (one, store) = build(&vs, 1);
    let mut par = HnswBuilder::new(dim, 16, 100, 1);
    let items: Vec<(u32, Vec<f32>)> = vs
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u32, v.clone()))
        .collect();
    for chunk in items.chunks(256) {
        par.insert_batch(chunk, 3);
    }
    assert_eq!(par.slots(), one.slots());
    for i in 0..n as u32 {
        let lvl = par.levels[i as usize] as usize;
        for l in 0..=lvl {
            let ls = par.links(i, l);
            assert!(ls.len() <= if l == 0 { par.m0 } else { par.m });
            assert!(ls.iter().all(|x| (*x as usize) < n && *x != i));
            assert!(ls.iter().all(|x| par.levels[*x as usize] as usize >= l));
            if l == 0 {
                assert!(!ls.is_empty(), "node {i} is unreachable on level 0");
            }
        }
    }
    assert_eq!(par.levels[par.entry.unwrap() as usize] as usize, par.top);
    let a = recall_at(&one.freeze(), &store, &vs, ef, 300);
    let b = recall_at(&par.freeze(), &store, &vs, ef, 300);
    assert!(
        b >= a - 0.01,
        "recall@10 at ef {ef}: one by one {a}, parallel {b}"
    );
}

#[test]
fn links_respect_the_degree_bounds_and_point_at_real_nodes() {
    let vs = data(1_500, 16);
    let (b, _) = build(&vs, 2);
    assert_eq!(b.slots().len(), 1_500);
    for i in 0..1_500u32 {
        let lvl = b.levels[i as usize] as usize;
        assert!(lvl <= b.top);
        for l in 0..=lvl {
            let ls = b.links(i, l);
            assert!(ls.len() <= if l == 0 { b.m0 } else { b.m });
            assert!(ls.iter().all(|n| (*n as usize) < 1_500 && *n != i));
            if l == 0 {
                assert!(!ls.is_empty(), "node {i} is unreachable on level 0");
            }
        }
    }
    let e = b.entry.unwrap() as usize;
    assert_eq!(b.levels[e] as usize, b.top);
}

/// A dump read back (its vectors taken from the store) searches exactly like the
/// original, and keeps growing the same way after more inserts.
#[test]
fn a_dump_reads_back_to_the_same_graph_and_keeps_growing() {
    let dim = 24;
    let vs = data(1_200, dim);
    let (mut a, mut store) = build(&vs[..1_000], 3);
    let mut bytes = Vec::new();
    a.write_to(&mut bytes).unwrap();
    let mut b = HnswBuilder::read(&bytes, dim, store.len()).unwrap();
    assert_eq!(b.vectors_missing(), 0..1_000);
    // Frozen straight from the dump, vectors taken from the store by slot (what open does
    // before the builder has its copy): the same searches as the original's freeze.
    let (fa, early) = (a.freeze(), b.freeze_with(|node| store.get(b.slots()[node])));
    for qi in 0..50 {
        let q = &vs[qi * 19];
        let want = frozen_top10(&fa, &store, q, 16);
        assert_eq!(want.len(), 10);
        assert_eq!(frozen_top10(&early, &store, q, 16), want);
    }
    while !b.vectors_missing().is_empty() {
        b.fill_vectors(300, |s| Some(store.get(s)), None).unwrap();
    }
    for (i, v) in vs.iter().enumerate().skip(1_000) {
        assert_eq!(store.push(v), i as u32);
        a.insert(i as u32, v);
        b.insert(i as u32, v);
    }
    let (fa, fb) = (a.freeze(), b.freeze());
    for qi in 0..50 {
        let q = &vs[qi * 23];
        assert_eq!(
            frozen_top10(&fa, &store, q, 16),
            frozen_top10(&fb, &store, q, 16)
        );
    }
    let (mut x, mut y) = (Vec::new(), Vec::new());
    a.write_to(&mut x).unwrap();
    b.write_to(&mut y).unwrap();
    assert!(
        x == y,
        "the same inserts after a reload make the same graph"
    );
}

/// A builder that reads mapped vectors from the store's chunks builds the same graph as
/// one that copies every vector, and copies only the vectors past the maps; sharing a
/// newer map drops the copies it now covers, and a dump read back shares too.
#[test]
fn a_builder_reads_mapped_vectors_instead_of_copying_them() {
    let dim = 16;
    let vs = data(600, dim);
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Vectors::new(dim);
    let map_tail = |store: &mut Vectors, upto: u32| {
        let (start, bytes) = store.tail_range(upto);
        let path = tmp
            .path()
            .join(crate::disk::vectors::chunk_name(start, upto - start));
        crate::disk::vectors::write_chunk(&path, dim, start, &bytes).unwrap();
        store.adopt_chunk(&path).unwrap();
    };
    for v in &vs[..400] {
        store.push(v);
    }
    map_tail(&mut store, 400);
    for v in &vs[400..] {
        store.push(v);
    }
    let mut shared = HnswBuilder::new(dim, 16, 100, 7);
    shared.share(store.mapped_part());
    let mut copied = HnswBuilder::new(dim, 16, 100, 7);
    for (i, v) in vs.iter().enumerate() {
        shared.insert(i as u32, v);
        copied.insert(i as u32, v);
    }
    assert_eq!((shared.own_vectors(), copied.own_vectors()), (200, 600));
    let dump = |g: &HnswBuilder| {
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        bytes
    };
    assert_eq!(dump(&shared), dump(&copied), "the same graph");
    for q in vs.iter().step_by(41) {
        assert_eq!(
            frozen_top10(&shared.freeze(), &store, q, 16),
            frozen_top10(&copied.freeze(), &store, q, 16)
        );
    }

    // A checkpoint maps the rest: the copies go, the graph reads the same vectors.
    map_tail(&mut store, 600);
    shared.share(store.mapped_part());
    assert_eq!(shared.own_vectors(), 0);
    let extra = data(700, dim);
    for (i, v) in extra[600..650].iter().enumerate() {
        store.push(v);
        shared.insert(600 + i as u32, v);
        copied.insert(600 + i as u32, v);
    }
    assert_eq!(shared.own_vectors(), 50, "inserted since: copies");
    // A map that covers only some of the copies keeps the others, renumbered.
    map_tail(&mut store, 625);
    shared.share(store.mapped_part());
    assert_eq!(shared.own_vectors(), 25);
    for (i, v) in extra[650..].iter().enumerate() {
        store.push(v);
        shared.insert(650 + i as u32, v);
        copied.insert(650 + i as u32, v);
    }
    assert_eq!(shared.own_vectors(), 75);
    assert_eq!(dump(&shared), dump(&copied), "still the same graph");
    for q in extra.iter().step_by(29) {
        assert_eq!(
            frozen_top10(&shared.freeze(), &store, q, 16),
            frozen_top10(&copied.freeze(), &store, q, 16)
        );
    }

    // A dump read back copies only what the maps lack.
    let mut back = HnswBuilder::read(&dump(&shared), dim, store.len()).unwrap();
    back.share(store.mapped_part());
    back.fill_vectors(usize::MAX, |s| Some(store.get(s)), None)
        .unwrap();
    assert!(back.vectors_missing().is_empty());
    assert_eq!(back.own_vectors(), 75);
    for q in extra.iter().step_by(37) {
        assert_eq!(
            frozen_top10(&back.freeze(), &store, q, 16),
            frozen_top10(&copied.freeze(), &store, q, 16)
        );
    }
    // ... and given the frozen copy open makes from the maps, takes its codes from it: the
    // same codes as coding the vectors, and the same graph after more inserts.
    let mut coded = HnswBuilder::read(&dump(&shared), dim, store.len()).unwrap();
    coded.share(store.mapped_part());
    let early = coded.freeze_with(|node| store.get(coded.slots()[node]));
    coded
        .fill_vectors(usize::MAX, |s| Some(store.get(s)), Some(&early))
        .unwrap();
    assert_eq!((&coded.codes, &coded.unscale), (&back.codes, &back.unscale));
    for (i, v) in data(720, dim)[700..].iter().enumerate() {
        store.push(v);
        coded.insert(700 + i as u32, v);
        back.insert(700 + i as u32, v);
    }
    assert_eq!(dump(&coded), dump(&back));
}

#[test]
fn bad_dumps_are_errors_with_offsets() {
    let dim = 8;
    let (g, _) = build(&data(300, dim), 4);
    let mut ok = Vec::new();
    g.write_to(&mut ok).unwrap();
    let err = |bytes: &[u8], d: usize| HnswBuilder::read(bytes, d, 300).expect_err("refused");
    assert_eq!(
        err(&ok[..40], dim).0,
        40,
        "short header: the offset where it ends"
    );
    let mut magic = ok.clone();
    magic[0] ^= 1;
    assert!(err(&magic, dim).1.contains("magic"));
    let mut version = ok.clone();
    version[8] = 9;
    assert_eq!(err(&version, dim).0, 8);
    assert_eq!(err(&ok, dim + 1).0, 12, "dimension");
    let (off, why) = err(&ok[..ok.len() - 4], dim);
    assert!(off > 0 && off < ok.len() as u64, "{off} {why}");
    let mut link = ok.clone();
    let links_at = DUMP_HEADER_LEN + 4 * 300 + 2 * 300 + pad4(600);
    link[links_at..links_at + 4].copy_from_slice(&5_000u32.to_le_bytes());
    assert_eq!(
        err(&link, dim),
        (
            links_at as u64,
            "node 0 links to node 5000 on level 0, of 300".into()
        )
    );
    // An upper-level link to a node that is not on that level.
    let i = (0..300)
        .find(|&i| g.levels[i] >= 1 && !g.links(i as u32, 1).is_empty())
        .unwrap();
    let low = (0..300u32).find(|&x| g.levels[x as usize] == 0).unwrap();
    let upper_at = links_at + 4 * 300 * 32;
    let before: usize = (0..i).map(|k| g.levels[k] as usize * 17 * 4).sum();
    let cell = upper_at + before + 4;
    let mut below = ok.clone();
    below[cell..cell + 4].copy_from_slice(&low.to_le_bytes());
    assert_eq!(
        err(&below, dim),
        (
            cell as u64,
            format!("node {i} links to node {low} on level 1, above its level")
        )
    );
    let mut reserved = ok.clone();
    reserved[36] = 1;
    assert_eq!(err(&reserved, dim).0, 36);
    let mut ef = ok.clone();
    ef[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(err(&ef, dim).0, 20);
    let mut dup = ok.clone();
    dup[DUMP_HEADER_LEN + 4..DUMP_HEADER_LEN + 8].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        err(&dup, dim).0,
        (DUMP_HEADER_LEN + 4) as u64,
        "slot 0 twice"
    );
    // The same beside a slot beyond the store: the first bad slot in order is reported.
    let mut far = dup.clone();
    far[DUMP_HEADER_LEN + 8..DUMP_HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        err(&far, dim),
        ((DUMP_HEADER_LEN + 4) as u64, "slot 0 appears twice".into()),
        "slot 0 twice beside slot u32::MAX"
    );
    // A slot the store does not have.
    let mut b = HnswBuilder::read(&ok, dim, 300).unwrap();
    assert_eq!(
        b.fill_vectors(1_000, |s| (s < 100).then_some(&[0.5f32; 8][..]), None),
        Err(100)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any damage (a flipped byte anywhere, or a cut) is refused or yields a graph whose
    /// links all point at its own nodes: the loader never panics, never indexes out of
    /// bounds later.
    #[test]
    fn damaged_dumps_never_panic(at in 0usize..4_000, bit in 0u8..8, cut in 0usize..4_000) {
        let dim = 4;
        let (g, store) = build(&data(120, dim), 5);
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        let mut flipped = bytes.clone();
        let i = at % flipped.len();
        flipped[i] ^= 1 << bit;
        for damaged in [&flipped[..], &bytes[..cut % bytes.len()]] {
            if let Ok(mut b) = HnswBuilder::read(damaged, dim, 120) {
                if b.fill_vectors(usize::MAX, |s| (s < 120).then(|| store.get(s)), None).is_ok() {
                    let f = b.freeze();
                    let mut top = TopK::new(10);
                    f.search(store.get(0), 16, &store, &|_| true, &mut top);
                    // And it keeps growing without indexing out of bounds.
                    for s in 0..8u32 {
                        b.insert(1_000 + s, store.get(s));
                    }
                }
            }
        }
    }
}
