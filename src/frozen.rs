//! A compact, read-only copy of one layer's HNSW graph ([`crate::hnsw::HnswBuilder`]),
//! searched while the indexer thread keeps inserting into the builder.
//!
//! It holds the builder's links as plain `u32` arrays (layer 0 as one CSR, the sparse upper
//! levels in maps) and an int8 code per point; exact scores are read from the store's own
//! [`Vectors`] by slot. Visited nodes are marked in a reusable per-thread array.
//!
//! The indexer keeps inserting into the live graph; points inserted after a freeze are
//! searched exactly until the next freeze (see `Inner::maybe_freeze`). An older freeze is still
//! a valid HNSW graph of the points it holds: inserts only add points and re-link, so it stays
//! correct, merely missing the newer points.

use crate::distance::{dist_key, dot, dot_i8, prefetch};
use crate::state::TopK;
use crate::vectors::Vectors;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Cache lines of each code a beam asks for ahead (see [`prefetch`]): all of it (a 384-d
/// code spans 6 or 7). Asking for the first 6 lines, on the 100k bench store at ef 16,
/// single-thread QPS rose in each of three paired runs (4,409 → 5,225, 2,770 → 4,224,
/// 2,691 → 3,923 on a noisy machine), results unchanged.
const PREFETCH_LINES: usize = usize::MAX;

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

/// Beam width on levels 2 and up (level 1 and layer 0 use the search's `ef`).
const UPPER_BEAM: usize = 16;

thread_local! {
    /// Visited marks of the searches run on this thread: node → generation of the search that
    /// last visited it. Bumping the generation clears every mark at once.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

impl FrozenGraph {
    /// A frozen graph from its links (see the fields) and each node's f32 vector, in node
    /// order, from which the int8 codes are made.
    pub(crate) fn from_parts<'a>(
        slots: Vec<u32>,
        off0: Vec<u32>,
        adj0: Vec<u32>,
        upper: Vec<HashMap<u32, Box<[u32]>>>,
        entry: Option<u32>,
        vecs: impl Iterator<Item = &'a [f32]>,
        dim: usize,
    ) -> FrozenGraph {
        let mut codes = Vec::with_capacity(slots.len() * dim);
        let mut unscale = Vec::with_capacity(slots.len());
        if dim > 0 {
            for v in vecs {
                let (scale, back) = code_scale(v);
                codes.extend(quantize(v, scale));
                unscale.push(back);
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
    /// Unlike plain HNSW, every upper level is searched with a beam (not greedily), each
    /// seeded by the whole beam of the level above: `ef` wide on level 1, whose beam seeds
    /// layer 0, and [`UPPER_BEAM`] wide above it. On clustered data a single greedy path can end
    /// in the wrong cluster, and layer 0 rarely links clusters. With greedy descent above level
    /// 1, one query in 1,000 of the 100k bench store found none of its true top 10 (its results
    /// scored 0.17, the true top 0.96), and two at 1M; with the beam the worst query finds 8 of
    /// 10 at 100k and 7 of 10 at 1M, at the same speed (the upper levels hold ~1/M of the
    /// points; a full `ef` beam on every level was 40 % slower at 1M).
    pub(crate) fn search(
        &self,
        q: &[f32],
        ef: usize,
        vectors: &Vectors,
        ok: &dyn Fn(u32) -> bool,
        top: &mut TopK,
    ) -> usize {
        let Some(cur) = self.entry else {
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
            dist_key(dot * q_back * self.unscale[node as usize])
        };
        let pf = |node: u32| {
            let at = node as usize * self.dim;
            prefetch(&self.codes[at..at + self.dim], PREFETCH_LINES);
        };
        let cur_d = dist(cur);
        VISITED.with(|v| {
            let (marks, generation) = &mut *v.borrow_mut();
            if marks.len() < self.slots.len() {
                marks.resize(self.slots.len(), 0);
            }
            let mut seeds = vec![(cur_d, cur)];
            for (l, level) in self.upper.iter().enumerate().rev() {
                let g = next_generation(marks, generation);
                let all = |_: u32| true;
                // Level 1 gets the whole beam; the sparser levels above need less.
                let width = if l == 0 { ef } else { ef.min(UPPER_BEAM) };
                let res = beam(
                    &seeds,
                    width,
                    |n| upper_links(level, n),
                    Scorer {
                        dist: &dist,
                        prefetch: &pf,
                    },
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
                Scorer {
                    dist: &dist,
                    prefetch: &pf,
                },
                &ok_node,
                marks,
                g,
            );
            let found = res.len();
            for (_, n) in res {
                let slot = self.slots[n as usize];
                top.push(dot(q, vectors.get(slot)), slot);
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

/// int8 code of a vector: `x · scale` clamped to ±127, rounded half away from zero. The
/// rounding is written out (add ±0.5, truncate): `f32::round` is a libm call on baseline
/// x86-64, 12 % of the time it took to make a million points searchable after open.
fn quantize(v: &[f32], scale: f32) -> impl Iterator<Item = i8> + '_ {
    v.iter().map(move |x| {
        let y = (x * scale).clamp(-127.0, 127.0);
        (y + 0.5f32.copysign(y)) as i8
    })
}

/// Links of node `n` on one upper level.
fn upper_links(level: &HashMap<u32, Box<[u32]>>, n: u32) -> &[u32] {
    level.get(&n).map(|b| &b[..]).unwrap_or(&[])
}

/// Greedy walk on one level (ef 1): moves from `cur` (at distance key `cur_d`) to a nearer
/// linked node while there is one; returns where it stopped. The HNSW descent through the
/// levels above the one a search (or an insert) works on.
pub(crate) fn greedy<'a>(
    mut cur: u32,
    mut cur_d: u32,
    links: impl Fn(u32) -> &'a [u32],
    dist: &dyn Fn(u32) -> u32,
) -> (u32, u32) {
    loop {
        let mut moved = false;
        for &n in links(cur) {
            let d = dist(n);
            if d < cur_d {
                (cur, cur_d) = (n, d);
                moved = true;
            }
        }
        if !moved {
            return (cur, cur_d);
        }
    }
}

/// A fresh visited generation (clearing every mark when the counter wraps).
pub(crate) fn next_generation(marks: &mut [u32], generation: &mut u32) -> u32 {
    *generation = generation.wrapping_add(1);
    if *generation == 0 {
        marks.fill(0);
        *generation = 1;
    }
    *generation
}

/// How a walk scores a node: its distance key, and a prefetch of the data that takes (asked
/// for as soon as the node is known, before any neighbour of the same node is scored).
#[derive(Clone, Copy)]
pub(crate) struct Scorer<'a> {
    pub(crate) dist: &'a dyn Fn(u32) -> u32,
    pub(crate) prefetch: &'a dyn Fn(u32),
}

/// One HNSW beam search on one level: from `seeds` ((distance bits, node)), keeps the `ef`
/// nearest nodes that pass `ok` (walking through those that do not). `marks[n] == g` means
/// visited.
pub(crate) fn beam<'a>(
    seeds: &[(u32, u32)],
    ef: usize,
    links: impl Fn(u32) -> &'a [u32],
    score: Scorer<'_>,
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
    let mut fresh = [0u32; 2 * crate::hnsw::MAX_M];
    while let Some(Reverse((cd, c))) = cand.pop() {
        if cd > bound && res.len() >= ef {
            break;
        }
        // The unvisited links first, each one's data asked for before any is scored: their
        // cache misses then overlap instead of queueing one behind the other.
        let ls = links(c);
        // A node has at most 2·MAX_M links (the builder and the dump reader enforce it).
        debug_assert!(ls.len() <= fresh.len());
        let mut k = 0;
        for &n in ls {
            let mark = &mut marks[n as usize];
            if *mark == g || k == fresh.len() {
                continue;
            }
            *mark = g;
            fresh[k] = n;
            k += 1;
            (score.prefetch)(n);
        }
        for &n in &fresh[..k] {
            let d = (score.dist)(n);
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
    use crate::hnsw::tests::exact;
    use crate::hnsw::HnswBuilder;

    /// Clustered, normalised vectors, seeded.
    fn data(n: usize, dim: usize) -> Vec<Vec<f32>> {
        crate::hnsw::tests::clustered(n, dim, 20, 0.3)
    }

    #[test]
    fn frozen_search_finds_the_exact_neighbours_and_respects_the_filter() {
        let dim = 32;
        let vs = data(3_000, dim);
        let mut g = HnswBuilder::new(dim, 16, 100, 7);
        let mut store = Vectors::new(dim);
        for (i, v) in vs.iter().enumerate() {
            assert_eq!(store.push(v), i as u32);
            g.insert(i as u32, v);
        }
        let f = g.freeze();
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
        let f = HnswBuilder::new(2, 16, 100, 7).freeze();
        let mut top = TopK::new(10);
        assert_eq!(
            f.search(&[1.0, 0.0], 10, &Vectors::new(2), &|_| true, &mut top),
            0
        );
        assert!(top.into_sorted().is_empty());
    }
}
