//! A compact, read-only copy of one layer's HNSW graph, searched instead of the live hnsw_rs
//! graph.
//!
//! hnsw_rs keeps every point behind an `Arc` with its neighbour lists behind an `RwLock`, and
//! its search allocates an `Arc` per candidate and tracks visited points in a `HashMap`. That
//! bookkeeping, not the distance arithmetic, was most of a query's time. A frozen graph holds
//! the same links as plain `u32` arrays (layer 0 as one CSR, the sparse upper levels in maps),
//! reads vectors from the store's own [`Vectors`] by slot (no second copy), and marks visited
//! nodes in a reusable per-thread array.
//!
//! The indexer keeps inserting into the live graph; points inserted after a freeze are
//! searched exactly until the next freeze (see `Inner::maybe_freeze`). An older freeze is still
//! a valid HNSW graph of the points it holds: inserts only add points and re-link, so it stays
//! correct, merely missing the newer points.

use crate::state::{FastMap, Graph, TopK};
use crate::vectors::Vectors;
use hnsw_rs::prelude::{DistDot, Distance};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// See the module documentation.
pub(crate) struct FrozenGraph {
    /// Node → slot.
    slots: Vec<u32>,
    /// Layer 0 adjacency (nodes), CSR: node `i`'s links are `adj0[off0[i]..off0[i + 1]]`.
    off0: Vec<u32>,
    adj0: Vec<u32>,
    /// Levels 1..=top: node → links at that level (`upper[l - 1]`).
    upper: Vec<HashMap<u32, Box<[u32]>>>,
    /// Entry node (a node of the top level); `None` for an empty graph.
    entry: Option<u32>,
    /// Every point's vector as int8, node-major, each scaled by its own largest |component|
    /// (`round(x · 127 / peak)`): the walk compares these (a quarter of the bytes of f32, and
    /// memory bandwidth is what a walk spends), and only the `ef` it keeps are re-scored
    /// exactly from the f32 vectors. A per-vector scale uses each code's full range, and one
    /// peaky vector cannot coarsen the others.
    codes: Vec<i8>,
    /// Per node: `peak / 127`, which turns a code back into the vector's units.
    unscale: Vec<f32>,
    dim: usize,
}

impl std::fmt::Debug for FrozenGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenGraph")
            .field("points", &self.slots.len())
            .field("levels", &(self.upper.len() + 1))
            .finish()
    }
}

thread_local! {
    /// Visited marks of the searches run on this thread: node → generation of the search that
    /// last visited it. Bumping the generation clears every mark at once.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

impl FrozenGraph {
    /// Copies the links of `g`. The caller makes sure nothing inserts into `g` meanwhile (the
    /// indexer thread freezes the graphs it alone inserts into).
    pub(crate) fn freeze(g: &Graph) -> FrozenGraph {
        let pi = g.get_point_indexation();
        if g.get_nb_point() == 0 {
            // hnsw_rs's point iterator unwraps the entry point, which an empty graph lacks.
            return FrozenGraph {
                slots: Vec::new(),
                off0: vec![0],
                adj0: Vec::new(),
                upper: Vec::new(),
                entry: None,
                codes: Vec::new(),
                unscale: Vec::new(),
                dim: 0,
            };
        }
        let top = pi.get_max_level_observed() as usize;
        let points: Vec<_> = pi.into_iter().collect();
        let dim = points.first().map_or(0, |p| p.get_v().len());
        let mut codes = Vec::with_capacity(points.len() * dim);
        let mut unscale = Vec::with_capacity(points.len());
        let mut slots = Vec::with_capacity(points.len());
        let mut entry = None;
        for p in &points {
            let (scale, back) = code_scale(p.get_v());
            codes.extend(quantize(p.get_v(), scale));
            unscale.push(back);
            if p.get_point_id().0 as usize == top && entry.is_none() {
                entry = Some(slots.len() as u32);
            }
            slots.push(p.get_origin_id() as u32);
        }
        let mut node_of: FastMap<u32, u32> = FastMap::default();
        node_of.reserve(slots.len());
        for (node, slot) in slots.iter().enumerate() {
            node_of.insert(*slot, node as u32);
        }
        let nodes = |ns: &[hnsw_rs::prelude::Neighbour]| -> Vec<u32> {
            ns.iter()
                .filter_map(|n| node_of.get(&(n.d_id as u32)).copied())
                .collect()
        };
        // One point's neighbour lists at a time (hnsw_rs hands out copies, ~1 KB a point).
        let mut off0 = Vec::with_capacity(slots.len() + 1);
        let mut adj0 = Vec::new();
        let mut upper: Vec<HashMap<u32, Box<[u32]>>> = vec![HashMap::new(); top];
        off0.push(0u32);
        for (node, p) in points.iter().enumerate() {
            let per_level = p.get_neighborhood_id();
            if let Some(l0) = per_level.first() {
                adj0.extend(nodes(l0));
            }
            off0.push(adj0.len() as u32);
            for (l, ns) in per_level.iter().enumerate().skip(1) {
                if l <= top && !ns.is_empty() {
                    upper[l - 1].insert(node as u32, nodes(ns).into_boxed_slice());
                }
            }
        }
        FrozenGraph {
            slots,
            off0,
            adj0,
            upper,
            entry,
            codes,
            unscale,
            dim,
        }
    }

    /// Points in the graph.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Searches with a candidate list of `ef` and pushes up to `ef` of the nearest points whose
    /// slot passes `ok` into `top`, as (1 − cosine distance, slot). Returns how many it pushed.
    /// Points failing `ok` are still walked through (they link the graph), as hnswlib does.
    ///
    /// Unlike plain HNSW, level 1 is searched with the full `ef` beam (not greedily) and every
    /// point of that beam seeds layer 0: on clustered data a single greedy entry can land in
    /// the wrong cluster, and layer 0 rarely links clusters. Level 1 holds ~1/M of the points,
    /// so the wider beam costs little.
    pub(crate) fn search(
        &self,
        q: &[f32],
        ef: usize,
        vectors: &Vectors,
        ok: &dyn Fn(u32) -> bool,
        top: &mut TopK,
    ) -> usize {
        let Some(mut cur) = self.entry else {
            return 0;
        };
        let ef = ef.max(1);
        // Approximate cosine distance from the codes, as 2 − dot: positive, so its bits
        // order like its value.
        let (qs, q_back) = code_scale(q);
        let qc: Vec<i8> = quantize(q, qs).collect();
        let dist = |node: u32| {
            let at = node as usize * self.dim;
            let dot = dot_i8(&qc, &self.codes[at..at + self.dim]) as f32;
            (2.0 - dot * q_back * self.unscale[node as usize])
                .max(0.0)
                .to_bits()
        };
        let mut cur_d = dist(cur);
        // Greedy through levels top..2.
        for level in self.upper.iter().skip(1).rev() {
            loop {
                let mut moved = false;
                for &n in upper_links(level, cur) {
                    let d = dist(n);
                    if d < cur_d {
                        (cur, cur_d) = (n, d);
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        VISITED.with(|v| {
            let (marks, generation) = &mut *v.borrow_mut();
            if marks.len() < self.slots.len() {
                marks.resize(self.slots.len(), 0);
            }
            let mut seeds = vec![(cur_d, cur)];
            if let Some(level1) = self.upper.first() {
                let g = next_generation(marks, generation);
                let all = |_: u32| true;
                let res = beam(
                    &seeds,
                    ef,
                    |n| upper_links(level1, n),
                    &dist,
                    &all,
                    marks,
                    g,
                );
                seeds = res.into_vec();
            }
            let g = next_generation(marks, generation);
            let ok_node = |n: u32| ok(self.slots[n as usize]);
            let res = beam(
                &seeds,
                ef,
                |n| &self.adj0[self.off0[n as usize] as usize..self.off0[n as usize + 1] as usize],
                &dist,
                &ok_node,
                marks,
                g,
            );
            let found = res.len();
            for (_, n) in res {
                let slot = self.slots[n as usize];
                top.push(1.0 - DistDot.eval(q, vectors.get(slot)), slot);
            }
            found
        })
    }
}

/// A vector's int8 scale `127 / peak` and its inverse `peak / 127` (1 for a zero vector).
fn code_scale(v: &[f32]) -> (f32, f32) {
    let peak = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if peak > 0.0 && peak.is_finite() {
        (127.0 / peak, peak / 127.0)
    } else {
        (1.0, 1.0)
    }
}

/// int8 code of a vector: `round(x · scale)`, clamped to ±127.
fn quantize(v: &[f32], scale: f32) -> impl Iterator<Item = i8> + '_ {
    v.iter()
        .map(move |x| (x * scale).round().clamp(-127.0, 127.0) as i8)
}

/// Dot product of two int8 codes: with AVX2 where the CPU has it (the crate is built for
/// baseline x86-64, whose SSE2 lacks the sign-extending loads), else portable.
#[allow(unsafe_code)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `dot_i8_avx2` only needs AVX2, which the CPU was just checked to have.
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_portable(a, b)
}

/// [`dot_i8_portable`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

/// Dot product of two int8 codes (16 lanes, which the compiler vectorises).
#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let tail: i32 = ra
        .iter()
        .zip(rb)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// Links of node `n` on one upper level.
fn upper_links(level: &HashMap<u32, Box<[u32]>>, n: u32) -> &[u32] {
    level.get(&n).map(|b| &b[..]).unwrap_or(&[])
}

/// A fresh visited generation (clearing every mark when the counter wraps).
fn next_generation(marks: &mut [u32], generation: &mut u32) -> u32 {
    *generation = generation.wrapping_add(1);
    if *generation == 0 {
        marks.fill(0);
        *generation = 1;
    }
    *generation
}

/// One HNSW beam search on one level: from `seeds` ((distance bits, node)), keeps the `ef`
/// nearest nodes that pass `ok` (walking through those that do not). `marks[n] == g` means
/// visited.
fn beam<'a>(
    seeds: &[(u32, u32)],
    ef: usize,
    links: impl Fn(u32) -> &'a [u32],
    dist: &dyn Fn(u32) -> u32,
    ok: &dyn Fn(u32) -> bool,
    marks: &mut [u32],
    g: u32,
) -> BinaryHeap<(u32, u32)> {
    let mut cand: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::with_capacity(ef * 4);
    let mut res: BinaryHeap<(u32, u32)> = BinaryHeap::with_capacity(ef + 1);
    for &(d, n) in seeds {
        if marks[n as usize] == g {
            continue;
        }
        marks[n as usize] = g;
        cand.push(Reverse((d, n)));
        if ok(n) {
            res.push((d, n));
            if res.len() > ef {
                res.pop();
            }
        }
    }
    let mut bound = res.peek().map_or(u32::MAX, |r| r.0);
    while let Some(Reverse((cd, c))) = cand.pop() {
        if cd > bound && res.len() >= ef {
            break;
        }
        for &n in links(c) {
            let mark = &mut marks[n as usize];
            if *mark == g {
                continue;
            }
            *mark = g;
            let d = dist(n);
            if res.len() < ef || d < bound {
                cand.push(Reverse((d, n)));
                if ok(n) {
                    res.push((d, n));
                    if res.len() > ef {
                        res.pop();
                    }
                    bound = res.peek().map_or(u32::MAX, |r| r.0);
                }
            }
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use hnsw_rs::prelude::Hnsw;

    /// Clustered, normalised vectors (a tiny SplitMix generator keeps the test seeded).
    fn data(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dim).map(|_| next()).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centres[i % centres.len()];
                let mut v: Vec<f32> = c.iter().map(|x| x + 0.3 * next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                v
            })
            .collect()
    }

    fn exact(vs: &[Vec<f32>], q: &[f32], k: usize, ok: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut top = TopK::new(k);
        for (i, v) in vs.iter().enumerate() {
            if ok(i as u32) {
                top.push(1.0 - DistDot.eval(q, v), i as u32);
            }
        }
        top.into_sorted().into_iter().map(|(_, s)| s).collect()
    }

    #[test]
    fn frozen_search_finds_the_exact_neighbours_and_respects_the_filter() {
        let dim = 32;
        let vs = data(3_000, dim);
        let g: Graph = Hnsw::new(16, 3_000, 16, 100, DistDot);
        let mut store = Vectors::new(dim);
        for (i, v) in vs.iter().enumerate() {
            assert_eq!(store.push(v), i as u32);
            g.insert((v.as_slice(), i));
        }
        let f = FrozenGraph::freeze(&g);
        assert_eq!(f.len(), 3_000);
        let (mut hits, mut even_hits) = (0, 0);
        let queries = 100;
        for qi in 0..queries {
            let q = &vs[(qi * 29) % vs.len()];
            let mut top = TopK::new(10);
            assert!(f.search(q, 64, &store, &|_| true, &mut top) >= 10);
            let got: Vec<u32> = top.into_sorted().into_iter().map(|(_, s)| s).collect();
            let want = exact(&vs, q, 10, |_| true);
            hits += got.iter().filter(|s| want.contains(s)).count();

            let even = |s: u32| s.is_multiple_of(2);
            let mut top = TopK::new(10);
            f.search(q, 64, &store, &even, &mut top);
            let got: Vec<u32> = top.into_sorted().into_iter().map(|(_, s)| s).collect();
            assert!(
                got.iter().all(|s| even(*s)),
                "a filtered-out slot came back"
            );
            let want = exact(&vs, q, 10, even);
            even_hits += got.iter().filter(|s| want.contains(s)).count();
        }
        let recall = hits as f64 / (queries * 10) as f64;
        let even_recall = even_hits as f64 / (queries * 10) as f64;
        assert!(recall >= 0.95, "recall@10 {recall}");
        assert!(even_recall >= 0.95, "filtered recall@10 {even_recall}");
    }

    #[test]
    fn an_empty_graph_finds_nothing() {
        let g: Graph = Hnsw::new(16, 100, 16, 100, DistDot);
        let f = FrozenGraph::freeze(&g);
        let mut top = TopK::new(10);
        assert_eq!(
            f.search(&[1.0, 0.0], 10, &Vectors::new(2), &|_| true, &mut top),
            0
        );
        assert!(top.into_sorted().is_empty());
    }
}
