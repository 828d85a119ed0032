//! A compact, read-only copy of one layer's HNSW graph ([`crate::index::hnsw::HnswBuilder`]),
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

use crate::disk::vectors::Vectors;
use crate::index::distance::{dist_key, dot, dot_i8, prefetch};
use crate::util::TopK;
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Cache lines a beam asks for ahead (see [`prefetch`]): all of what it will read (a
/// node's code, scale and slot: 7 lines at 384-d; a kept point's f32 vector: 24). Asking for
/// the first 6 lines of each code, on the 100k bench store at ef 16,
/// single-thread QPS rose in each of three paired runs (4,409 → 5,225, 2,770 → 4,224,
/// 2,691 → 3,923 on a noisy machine), results unchanged.
const PREFETCH_LINES: usize = usize::MAX;

/// See the module documentation.
pub(crate) struct FrozenGraph {
    /// Node `i`'s record is `stride` words from word `i · stride` of `lines`, cache-line
    /// aligned: what scoring a node and following its links read lies together, as in
    /// hnswlib's level-0 block, so a node visited costs one run of adjacent lines rather than
    /// a miss in each of five arrays. Layout ([`Layout`]): the node's int8 code (see
    /// [`code_into`]), its `peak / 127`, its slot, its layer-0 link count, its layer-0
    /// links (nodes).
    lines: Vec<Line>,
    layout: Layout,
    /// Levels 1..=top: node → links at that level (`upper[l - 1]`).
    upper: Vec<HashMap<u32, Box<[u32]>>>,
    /// Entry node (a node of the top level); `None` for an empty graph.
    entry: Option<u32>,
}

/// One cache line of [`FrozenGraph::lines`].
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// Where the parts of a node's record are, in words (see [`FrozenGraph::lines`]). The code
/// is the vector as int8, scaled by its own largest |component| (`round(x · 127 / peak)`):
/// the walk compares these (a quarter of the bytes of f32, and memory is what a walk
/// spends), and only the `ef` it keeps are re-scored exactly from the f32 vectors. A
/// per-vector scale uses each code's full range, and one peaky vector cannot coarsen the
/// others.
#[derive(Debug, Clone, Copy)]
struct Layout {
    dim: usize,
    /// Words of the code (`dim` bytes, padded to a word).
    code: usize,
    /// Most layer-0 links of any node.
    links: usize,
    /// Words per record: code, unscale, slot, count, links, padded to a line.
    stride: usize,
}

impl Layout {
    fn new(dim: usize, links: usize) -> Layout {
        let code = dim.div_ceil(4);
        Layout {
            dim,
            code,
            links,
            stride: (code + 3 + links).next_multiple_of(16),
        }
    }
}

impl std::fmt::Debug for FrozenGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenGraph")
            .field("points", &self.len())
            .field("levels", &(self.upper.len() + 1))
            .field("record_bytes", &(self.layout.stride * 4))
            .finish()
    }
}

/// Beam width on level 1 (at most the search's `ef`; layer 0 uses `ef`), whose beam seeds
/// layer 0. Narrower beams there cost recall on clustered data: on the `engine_search` bench
/// store (100k points in 1,000 clusters, one graph), with 8, 4 or 1 on level 1 some query of
/// 1,000 found none of its true top 10 at ef 16 (with 16, the worst finds 8). Wider than 16
/// bought little: on 100k real sentence vectors, level 1 at `ef` instead of 16 was 13–27 %
/// slower at ef 20–48 for +0.001–0.002 of recall@10 (docs/benchmarks.md).
///
/// Above 100k points it grows as `ef` does (`scale_ef`: 64 at 1M), since level 1 grows with
/// the graph: on the 1M clustered store, 16 and 32 each left a query with none of its top 10
/// even at ef 32 (128 at 1M); 64 brought the worst back to 8 of 10.
const LEVEL1_BEAM: usize = 16;

/// Beam width on levels 2 and up: they hold a 16th of level 1's points and less. 4 instead of
/// 16 kept the worst query of the clustered bench store at 8 of 10 and searched about a
/// fifth faster there. Scaled like [`LEVEL1_BEAM`] above 100k points (16 at 1M, where 4
/// instead gave mean recall@10 0.975 against 0.990 at the same QPS).
const UPPER_BEAM: usize = 4;

thread_local! {
    /// Visited marks of the searches run on this thread: node → generation of the search that
    /// last visited it. Bumping the generation clears every mark at once.
    static VISITED: RefCell<(Vec<u32>, u32)> = const { RefCell::new((Vec::new(), 0)) };
}

impl FrozenGraph {
    /// A frozen graph of the nodes whose slots are `slots`, from each node's layer-0 links
    /// (`links0(node)`), the upper levels (see the fields) and each node's f32 vector
    /// (`vector_of(node)`), from which the int8 codes are made: the records are filled on up
    /// to `available_parallelism` threads (at most 8) once there are [`SPLIT_CODES_FROM`]
    /// nodes, each filling ranges of nodes.
    pub(crate) fn from_parts<'a, 'l>(
        slots: &[u32],
        links0: impl Fn(usize) -> &'l [u32] + Sync,
        upper: Vec<HashMap<u32, Box<[u32]>>>,
        entry: Option<u32>,
        vector_of: impl Fn(usize) -> &'a [f32] + Sync,
        dim: usize,
    ) -> FrozenGraph {
        let n = slots.len();
        let layout = Layout::new(dim, (0..n).map(|i| links0(i).len()).max().unwrap_or(0));
        let per_node = layout.stride / 16;
        let mut lines = vec![Line([0; 16]); n * per_node];
        // `code`: a scratch buffer of `layout.code · 4` bytes, reused from node to node.
        let fill = |node: usize, rec: &mut [Line], code: &mut [i8]| {
            let back = if dim > 0 {
                code_into(vector_of(node), &mut code[..dim])
            } else {
                1.0
            };
            let links = links0(node);
            let words = code
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]))
                .chain([back.to_bits(), slots[node], links.len() as u32])
                .chain(links.iter().copied());
            for (w, x) in rec.iter_mut().flat_map(|l| l.0.iter_mut()).zip(words) {
                *w = x;
            }
        };
        let threads = if n >= SPLIT_CODES_FROM {
            crate::util::scan_threads()
        } else {
            1
        };
        // Four parts per thread, taken from a shared list, so a slow or unstarted thread
        // leaves its share to the others.
        let per = n.div_ceil(threads * 4).max(1);
        let parts: Vec<_> = lines
            .chunks_mut(per * per_node.max(1))
            .enumerate()
            .map(|(i, c)| (i * per, c))
            .collect();
        let parts = parking_lot::Mutex::new(parts);
        let work = || loop {
            let next = parts.lock().pop();
            match next {
                Some((first, c)) => {
                    let mut code = vec![0i8; layout.code * 4];
                    for (i, rec) in c.chunks_mut(per_node.max(1)).enumerate() {
                        fill(first + i, rec, &mut code);
                    }
                }
                None => break,
            }
        };
        std::thread::scope(|scope| {
            for _ in 1..threads {
                // A thread that cannot be started leaves its parts to the others.
                let _ = std::thread::Builder::new()
                    .name("magray-codes".into())
                    .spawn_scoped(scope, work);
            }
            work();
        });
        FrozenGraph {
            lines,
            layout,
            upper,
            entry,
        }
    }

    /// Node `node`'s record (see [`FrozenGraph::lines`]).
    #[inline(always)]
    #[allow(unsafe_code)]
    fn record(&self, node: u32) -> &[u32] {
        let stride = self.layout.stride;
        // SAFETY: `Line` is `repr(C)` around `[u32; 16]`, 64 bytes with no padding, so a
        // `[Line]` is `16 · len` initialised, aligned `u32`s in one allocation, borrowed as
        // long as `self`.
        let words = unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<u32>(), self.lines.len() * 16)
        };
        &words[node as usize * stride..(node as usize + 1) * stride]
    }

    /// The int8 code of `node` and its `peak / 127`.
    #[inline(always)]
    #[allow(unsafe_code)]
    pub(crate) fn code(&self, node: u32) -> (&[i8], f32) {
        let rec = self.record(node);
        let code = &rec[..self.layout.code];
        // SAFETY: `code` is `4 · len` initialised bytes, every bit pattern is a valid `i8`,
        // whose alignment is 1; `dim ≤ 4 · len` (see `Layout::new`).
        let bytes =
            unsafe { std::slice::from_raw_parts(code.as_ptr().cast::<i8>(), self.layout.dim) };
        (bytes, f32::from_bits(rec[self.layout.code]))
    }

    /// The slot of `node`.
    #[inline(always)]
    pub(crate) fn slot(&self, node: u32) -> u32 {
        self.record(node)[self.layout.code + 1]
    }

    /// The layer-0 links of `node`.
    #[inline(always)]
    fn links0(&self, node: u32) -> &[u32] {
        let rec = self.record(node);
        let at = self.layout.code + 3;
        &rec[at..at + (rec[self.layout.code + 2] as usize).min(self.layout.links)]
    }
}

impl SearchGraph for FrozenGraph {
    fn len(&self) -> usize {
        self.lines.len() / (self.layout.stride / 16)
    }

    /// Walks the codes ([`walk`]), then re-scores the kept points exactly. Unlike plain
    /// HNSW, every upper level is searched with a beam (not greedily), each seeded by the
    /// whole beam of the level above: [`LEVEL1_BEAM`] wide on level 1, whose beam seeds layer
    /// 0, and [`UPPER_BEAM`] wide above it. On clustered data a single greedy path can end
    /// in the wrong cluster, and layer 0 rarely links clusters. With greedy descent above level
    /// 1, one query in 1,000 of the 100k bench store found none of its true top 10 (its results
    /// scored 0.17, the true top 0.96), and two at 1M; with the beam the worst query finds 8 of
    /// 10 at 100k and 7 of 10 at 1M, at the same speed (the upper levels hold ~1/M of the
    /// points; a full `ef` beam on every level was 40 % slower at 1M).
    fn search(
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
        let mut qc = vec![0i8; q.len()];
        let q_back = code_into(q, &mut qc);
        let dist = |node: u32| {
            let (code, unscale) = self.code(node);
            dist_key(dot_i8(&qc, code) as f32 * q_back * unscale)
        };
        // The code, its scale and the slot: what scoring and the filter read.
        let pf = |node: u32| prefetch(&self.record(node)[..self.layout.code + 2], PREFETCH_LINES);
        let ok_node = |n: u32| ok(self.slot(n));
        let res = walk(
            cur,
            self.len(),
            self.upper.len(),
            |l, n| upper_links(&self.upper[l - 1], n),
            |n| self.links0(n),
            Scorer {
                dist: &dist,
                prefetch: &pf,
            },
            &ok_node,
            ef,
        );
        push_exact(res, q, |n| self.slot(n), vectors, top)
    }
}

/// Pushes the nodes a [`walk`] kept into `top` by slot (`slot_of(node)`), each scored
/// exactly on its f32 vector; returns how many. Both graph kinds end their search with it.
pub(crate) fn push_exact(
    kept: BinaryHeap<(u32, u32)>,
    q: &[f32],
    slot_of: impl Fn(u32) -> u32,
    vectors: &Vectors,
    top: &mut TopK,
) -> usize {
    let found = kept.len();
    // Every kept vector asked for before any is read: their misses overlap.
    for &(_, node) in kept.iter() {
        prefetch(vectors.get(slot_of(node)), PREFETCH_LINES);
    }
    for (_, node) in kept {
        let slot = slot_of(node);
        top.push(dot(q, vectors.get(slot)), slot);
    }
    found
}

/// A read-only HNSW graph that searches walk: a [`FrozenGraph`] (links copied, int8 codes),
/// or right after open a [`crate::index::dump_graph::MappedGraph`] (the snapshot's dump, searched in
/// place on the f32 vectors) until the first is made.
pub(crate) trait SearchGraph: Send + Sync + std::fmt::Debug {
    /// Points in the graph.
    fn len(&self) -> usize;
    /// True for a dump searched in place, which the indexer replaces with a frozen copy as
    /// soon as it has the graph.
    fn in_place(&self) -> bool {
        false
    }
    /// Searches with a candidate list of `ef` and pushes up to `ef` of the nearest points
    /// whose slot passes `ok` into `top`, as (1 − cosine distance, slot). Returns how many it
    /// pushed. Points failing `ok` are still walked through (they link the graph), as hnswlib
    /// does. See [`FrozenGraph`]'s implementation for the walk.
    fn search(
        &self,
        q: &[f32],
        ef: usize,
        vectors: &Vectors,
        ok: &dyn Fn(u32) -> bool,
        top: &mut TopK,
    ) -> usize;
}

/// The walk of a search through a graph of `n` nodes with levels `1..=levels` above layer 0,
/// from `entry`: a beam on each upper level, seeded by the level above (see
/// `FrozenGraph`'s `search`), then layer 0 with `ef`, keeping nodes that pass `ok_node`.
/// Returns the kept nodes as (distance key, node).
#[allow(clippy::too_many_arguments)]
pub(crate) fn walk<'a>(
    entry: u32,
    n: usize,
    levels: usize,
    upper: impl Fn(usize, u32) -> &'a [u32],
    links0: impl Fn(u32) -> &'a [u32],
    score: Scorer<'_>,
    ok_node: &dyn Fn(u32) -> bool,
    ef: usize,
) -> BinaryHeap<(u32, u32)> {
    let cur_d = (score.dist)(entry);
    VISITED.with(|v| {
        let (marks, generation) = &mut *v.borrow_mut();
        if marks.len() < n {
            marks.resize(n, 0);
        }
        let mut seeds = vec![(cur_d, entry)];
        for l in (1..=levels).rev() {
            let g = next_generation(marks, generation);
            let all = |_: u32| true;
            // Level 1, whose beam seeds layer 0, gets a wider beam; the sparser levels above
            // need less.
            let base = if l == 1 { LEVEL1_BEAM } else { UPPER_BEAM };
            let width = ef.min(crate::index::hnsw::scale_ef(base, n as u64));
            let res = beam(&seeds, width, |x| upper(l, x), score, &all, marks, g);
            seeds = res.into_vec();
        }
        let g = next_generation(marks, generation);
        beam(&seeds, ef, links0, score, ok_node, marks, g)
    })
}

/// Nodes from which [`FrozenGraph::from_parts`] codes on several threads (a million
/// 384-d points took about 0.3 s on one core).
const SPLIT_CODES_FROM: usize = 65_536;

/// Writes the int8 code of `v` into `out` (as long as `v`) and returns `peak / 127`, which
/// turns the code back into the vector's units (1 for a zero vector): see
/// [`FrozenGraph::codes`]. AVX2 where the CPU has it, else portable (the same results).
#[allow(unsafe_code)]
pub(crate) fn code_into(v: &[f32], out: &mut [i8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: `code_into_avx2` only needs AVX2, which the CPU was just checked to have.
        return unsafe { code_into_avx2(v, out) };
    }
    code_into_portable(v, out)
}

/// Appends the int8 code of `v` to `codes` ([`code_into`]) and returns its scale back.
pub(crate) fn push_code(codes: &mut Vec<i8>, v: &[f32]) -> f32 {
    let at = codes.len();
    codes.resize(at + v.len(), 0);
    code_into(v, &mut codes[at..])
}

/// [`code_into_portable`] compiled with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn code_into_avx2(v: &[f32], out: &mut [i8]) -> f32 {
    code_into_portable(v, out)
}

/// `x · 127 / peak`, clamped to ±127 and rounded to nearest (ties to even), for each
/// component. Written so the compiler vectorises it: the peak is the largest `|x|` as bits
/// (for finite floats their order is the values'), and the rounding adds 1.5 · 2²³, which
/// leaves the rounded integer in the low mantissa bits. `f32::round` is a libm call on
/// baseline x86-64, and `as i8` from f32 saturates element by element; with those, coding a
/// million 384-d points took 0.8–0.9 s against about 0.3 s this way.
#[inline(always)]
fn code_into_portable(v: &[f32], out: &mut [i8]) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let peak = f32::from_bits(v.iter().fold(0u32, |m, x| m.max(x.to_bits() & 0x7fff_ffff)));
    // A zero, NaN, infinite or subnormal peak (whose 127 / peak overflows) codes with scale 1.
    let (scale, back) = if peak > 0.0 && peak.is_finite() && (127.0 / peak).is_finite() {
        (127.0 / peak, peak / 127.0)
    } else {
        (1.0, 1.0)
    };
    for (o, x) in out.iter_mut().zip(v) {
        // `max`/`min` return the other operand for NaN: a NaN component codes as −127
        // (`clamp` would keep the NaN).
        #[allow(clippy::manual_clamp)]
        let y = (x * scale).max(-127.0).min(127.0);
        *o = ((y + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8;
    }
    back
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
    let mut fresh = [0u32; 2 * crate::limits::MAX_M];
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
    use crate::index::hnsw::tests::exact;
    use crate::index::hnsw::HnswBuilder;

    /// Clustered, normalised vectors, seeded.
    fn data(n: usize, dim: usize) -> Vec<Vec<f32>> {
        crate::index::hnsw::tests::clustered(n, dim, 20, 0.3)
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

    /// The int8 code is `x · 127 / peak` rounded to nearest, ties to even, clamped to ±127;
    /// the dispatched kernel (AVX2 here where the CPU has it) agrees with the portable one on
    /// every length, and with that definition computed the slow way.
    #[test]
    fn codes_round_to_nearest_on_every_path() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for len in [1, 7, 31, 32, 33, 384, 385] {
            for round in 0..50 {
                let mut v: Vec<f32> = (0..len).map(|_| next() * 3.0).collect();
                if round == 0 {
                    v.fill(0.0);
                }
                if round == 1 && len > 2 {
                    // Exact ties: peak 127, so the codes are the values themselves.
                    v[0] = 127.0;
                    v[1] = 2.5;
                    v[2] = -3.5;
                }
                let (mut fast, mut slow) = (vec![0i8; len], vec![0i8; len]);
                let back = code_into(&v, &mut fast);
                assert_eq!(code_into_portable(&v, &mut slow), back);
                assert_eq!(fast, slow, "len {len} round {round}");
                let peak = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                let scale = if peak > 0.0 { 127.0 / peak } else { 1.0 };
                assert_eq!(back, if peak > 0.0 { peak / 127.0 } else { 1.0 });
                for (x, c) in v.iter().zip(&fast) {
                    let want = (x * scale).clamp(-127.0, 127.0).round_ties_even() as i8;
                    assert_eq!(*c, want, "{x} · {scale}");
                }
                if round == 1 && len > 2 {
                    assert_eq!(fast[..3], [127, 2, -4]);
                }
            }
        }
    }

    /// A graph big enough to be coded on several threads gets the codes one thread makes.
    #[test]
    fn codes_made_on_several_threads_match_one_thread() {
        let dim = 8;
        let n = SPLIT_CODES_FROM + 1_001;
        let vs = data(n, dim);
        let slots: Vec<u32> = (0..n as u32).collect();
        let f = FrozenGraph::from_parts(
            &slots,
            |_| &[],
            Vec::new(),
            Some(0),
            |node| &vs[node][..],
            dim,
        );
        for (node, v) in vs.iter().enumerate() {
            let mut c = vec![0i8; dim];
            let (code, unscale) = f.code(node as u32);
            assert_eq!(unscale, code_into(v, &mut c), "node {node}");
            assert_eq!(code, &c[..], "node {node}");
            assert_eq!(f.slot(node as u32), node as u32);
            assert!(f.links0(node as u32).is_empty());
        }
    }
}
