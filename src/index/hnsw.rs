//! The HNSW graph builder: one layer's graph, built by the indexer thread alone.
//!
//! hnsw_rs (which built our graphs before) is written for concurrent inserts: every point sits
//! behind an `Arc` with its links behind an `RwLock`, and each search allocates an `Arc` per
//! candidate and keeps visited points in a `HashMap`. Profiled on 30k clustered 384-d
//! vectors, that bookkeeping was 42 % of an insert and the distances 35 %, for 191 inserts/s.
//! Only our indexer thread ever inserts (searches run on a [`FrozenGraph`] copy), so this
//! builder needs no locks: links are plain `u32` arrays, visited marks a reusable generation
//! array, and the heaps are reused between inserts.
//!
//! The algorithm is HNSW as in Malkov & Yashunin (and hnswlib): a random level per point
//! (`⌊−ln U / ln M⌋`), greedy descent to the point's level, then on each level down to 0 a
//! beam search of width `ef_construction`, whose result is pruned to the new point's links
//! (`M` on upper levels, `2M` on level 0) by the neighbour-selection heuristic (a candidate is
//! kept only if it is nearer to the new point than to every link kept so far), and each link
//! made mutual; a neighbour whose list is full keeps its nearest. Distance is `1 − dot` on
//! L2-normalised vectors (cosine).
//!
//! Dumped into snapshots as `hnsw-<layer>.graph` ([`HnswBuilder::write_to`], layout in
//! `docs/format.md`): links only; the vectors are taken back from the store's own vector
//! chunks by slot when a dump loads.

use crate::disk::vectors::Vectors;
use crate::index::distance::{dist_key, dot, dot_i8, prefetch};
use crate::index::frozen::{beam, greedy, next_generation, push_code, FrozenGraph, Scorer};

/// Cache lines of each code a beam asks for ahead (see [`prefetch`]): all of it (6 lines at
/// 384-d). With f32 vectors, asking for their first 4 lines made inserts 9–19 % faster on
/// 20k bench-like vectors (three paired runs) than asking for none.
const PREFETCH_LINES: usize = usize::MAX;

/// How many candidates ahead the f32 re-score of a beam's result asks for a vector.
const RESCORE_AHEAD: usize = 4;

/// A round of fewer points is inserted one by one on the calling thread: a few records
/// trickling in are not worth starting threads for (with rounds of any size, single durable
/// inserts from one task ran 14 % slower in `engine_insert`, p99 1.5 ms against 0.5 ms).
const MIN_PARALLEL_ROUND: usize = 32;

/// A parallel insert round holds at most this many points ([`HnswBuilder::insert_batch`]).
const MAX_ROUND: usize = 128;
/// ... and at most this share of the graph it is inserted into: a round's points do not see
/// each other's neighbourhoods, only each other.
const ROUND_SHARE: usize = 64;

/// Highest level a point may get (a level above this has a probability below 16^-15).
const MAX_LEVEL: usize = 15;
/// `ef` scaled for a graph of `points` (see [`HnswConfig::effective_ef`]).
pub(crate) fn scale_ef(ef: usize, points: u64) -> usize {
    const BASE: f64 = 100_000.0;
    if points as f64 <= BASE {
        return ef;
    }
    let scaled = ef as f64 * (points as f64 / BASE).powf(0.6);
    (scaled.ceil() as usize).min(crate::limits::MAX_EF)
}

/// First bytes of `hnsw-<layer>.graph`.
const DUMP_MAGIC: [u8; 8] = *b"MGRYHNSW";
/// Layout version of `hnsw-<layer>.graph`.
const DUMP_VERSION: u32 = 1;
/// Magic, version, seven u32 fields, the level generator's state.
const DUMP_HEADER_LEN: usize = 48;

/// Writes `xs` little-endian, 16k values per write.
fn write_u32s(w: &mut impl std::io::Write, xs: &[u32]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 * xs.len().min(1 << 14));
    for chunk in xs.chunks(1 << 14) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
        w.write_all(&buf)?;
    }
    Ok(())
}

/// Padding that brings `len` to a multiple of 4.
fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The fixed part of a graph dump ([`HnswBuilder::write_to`], `docs/format.md`): its header
/// fields, each checked, and where its regions start. The regions up to the upper-level links
/// are checked to fit in the dump.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DumpHeader {
    pub(crate) m: usize,
    pub(crate) ef_c: usize,
    /// Points.
    pub(crate) n: usize,
    pub(crate) top: usize,
    /// Entry node (`u32::MAX` in an empty graph; checked by the caller against the levels).
    pub(crate) entry: u32,
    pub(crate) rng: u64,
    /// Byte offsets: `n` levels (then `n` level-0 link counts), the level-0 link cells
    /// (`2m` per node), the upper-level blocks.
    pub(crate) levels_at: usize,
    pub(crate) links_at: usize,
    pub(crate) upper_at: usize,
}

impl DumpHeader {
    /// The slot list starts here.
    pub(crate) const SLOTS_AT: usize = DUMP_HEADER_LEN;

    /// Parses and checks the header of a dump for `dim`-d vectors. Errors carry the byte
    /// offset of the bad field.
    pub(crate) fn parse(bytes: &[u8], dim: usize) -> Result<DumpHeader, (u64, String)> {
        let at = |o: usize| -> Result<u32, (u64, String)> {
            bytes
                .get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or((o as u64, "the dump ends inside its header".into()))
        };
        if bytes.len() < DUMP_HEADER_LEN {
            return Err((
                bytes.len() as u64,
                format!(
                    "{} bytes: shorter than the {DUMP_HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        }
        if bytes[..8] != DUMP_MAGIC {
            return Err((0, "not an HNSW graph dump (bad magic)".into()));
        }
        let version = at(8)?;
        if version != DUMP_VERSION {
            return Err((
                8,
                format!("graph dump format {version}, this build reads {DUMP_VERSION}"),
            ));
        }
        let (fdim, m, ef_c, n, top, entry) = (
            at(12)? as usize,
            at(16)? as usize,
            at(20)? as usize,
            at(24)? as usize,
            at(28)? as usize,
            at(32)?,
        );
        if fdim != dim {
            return Err((12, format!("graph of {fdim}-d vectors in a {dim}-d store")));
        }
        if !(2..=crate::limits::MAX_M).contains(&m) {
            return Err((16, format!("M {m} out of range")));
        }
        if top > MAX_LEVEL {
            return Err((28, format!("top level {top} above {MAX_LEVEL}")));
        }
        if !(1..=crate::limits::MAX_EF).contains(&ef_c) {
            return Err((20, format!("ef_construction {ef_c} out of range")));
        }
        if at(36)? != 0 {
            return Err((36, "reserved field is not zero".into()));
        }
        let rng = u64::from_le_bytes(bytes[40..48].try_into().unwrap_or_default());
        let m0 = 2 * m;
        let levels_at = DUMP_HEADER_LEN + 4 * n;
        let links_at = levels_at + 2 * n + pad4(2 * n);
        let upper_at = n
            .checked_mul(m0 * 4)
            .and_then(|l| l.checked_add(links_at))
            .filter(|e| *e <= bytes.len())
            .ok_or((
                24,
                format!("{n} points do not fit in {} bytes", bytes.len()),
            ))?;
        Ok(DumpHeader {
            m,
            ef_c,
            n,
            top,
            entry,
            rng,
            levels_at,
            links_at,
            upper_at,
        })
    }

    /// Checks every node's level against the top, the entry node, and that the upper-level
    /// blocks (`level · (m + 1)` cells per node) fill the rest of the dump exactly. Returns
    /// where each node's block starts, in u32 cells after `upper_at`.
    pub(crate) fn upper_cells(&self, bytes: &[u8]) -> Result<Vec<u32>, (u64, String)> {
        let n = self.n;
        let levels = &bytes[self.levels_at..self.levels_at + n];
        if let Some(i) = levels.iter().position(|l| *l as usize > self.top) {
            return Err((
                (self.levels_at + i) as u64,
                format!(
                    "node {i} has level {} above the top {}",
                    levels[i], self.top
                ),
            ));
        }
        // At most 2^32 nodes of level ≤ MAX_LEVEL with M < 128: no u64 overflow. A total
        // that fits u32 makes every running sum fit too (they only grow), so the truncating
        // casts below are exact whenever the check after them passes.
        let per_level = (self.m + 1) as u64;
        let mut cell = 0u64;
        let starts: Vec<u32> = levels
            .iter()
            .map(|l| {
                let at = cell as u32;
                cell += u64::from(*l) * per_level;
                at
            })
            .collect();
        if u32::try_from(cell).is_err() {
            return Err((
                self.upper_at as u64,
                "upper-level links beyond 16 GiB".to_string(),
            ));
        }
        let cell = cell as usize;
        let entry_ok = match levels.get(self.entry as usize) {
            Some(l) => *l as usize == self.top,
            None => n == 0 && self.entry == u32::MAX,
        };
        let end = cell
            .checked_mul(4)
            .and_then(|c| c.checked_add(self.upper_at));
        if end != Some(bytes.len()) {
            return Err((
                self.upper_at as u64,
                format!(
                    "the upper-level links take {} bytes; the dump has {} after the level-0 links",
                    cell.saturating_mul(4),
                    bytes.len() - self.upper_at
                ),
            ));
        }
        if !entry_ok {
            return Err((
                32,
                format!(
                    "entry node {} is not a node of the top level {}",
                    self.entry, self.top
                ),
            ));
        }
        Ok(starts)
    }
}

/// Checks a dump's slot list (`slots`, from byte [`DumpHeader::SLOTS_AT`]): each below the
/// snapshot's `nslots`, each once (a bitset: the slots are dense).
pub(crate) fn check_slots(slots: &[u32], nslots: u32) -> Result<(), (u64, String)> {
    let mut seen = vec![0u64; (nslots as usize).div_ceil(64)];
    for (i, s) in slots.iter().enumerate() {
        let at = (DumpHeader::SLOTS_AT + 4 * i) as u64;
        let (w, bit) = (*s as usize / 64, 1u64 << (s % 64));
        match seen.get_mut(w) {
            Some(word) if *s < nslots && *word & bit == 0 => *word |= bit,
            Some(_) if *s < nslots => return Err((at, format!("slot {s} appears twice"))),
            _ => return Err((at, format!("slot {s}, but the snapshot has {nslots} slots"))),
        }
    }
    Ok(())
}

/// A level-0 link's distance key not yet scored (see `HnswBuilder::dist0`); `dist_key`
/// never gives it (its largest is +∞'s bits, 0x7f80_0000).
const UNKNOWN: u32 = u32::MAX;

/// Where a new node links: for each level from 0 up, (distance key, node) of each link.
type Plan = Vec<Vec<(u32, u32)>>;

/// Set in `HnswBuilder::loc` for a node whose vector is a copy in `own`.
const OWN: u32 = 1 << 31;

/// `shared` (a builder's mapped vectors), if it holds `slot`'s vector. A function of the
/// field, not of the builder, so a caller may write the builder's other fields meanwhile.
fn map_of(shared: &Option<Vectors>, slot: u32) -> Option<&Vectors> {
    shared.as_ref().filter(|s| slot < OWN && slot < s.len())
}

/// See the module documentation.
pub(crate) struct HnswBuilder {
    m: usize,
    m0: usize,
    ef_construction: usize,
    dim: usize,
    level_mult: f64,
    rng: u64,
    /// Node → slot.
    slots: Vec<u32>,
    /// The store's mapped vectors (immutable chunk maps, read without the projections'
    /// lock): a node whose slot is in them reads its vector there instead of keeping a copy
    /// (1.5 GB less at a million 384-d points). See [`HnswBuilder::share`].
    shared: Option<Vectors>,
    /// Copies of the other nodes' vectors (slots past the maps: inserted since the last
    /// checkpoint), in the order they were added.
    own: Vec<f32>,
    /// Node → where its vector is: its slot in `shared`, or [`OWN`] | the index of its copy
    /// in `own`. One array, so a distance needs one lookup before the vector's address is
    /// known. Against copies of every vector, inserts on the unindexed 1M store ran 2–11 %
    /// slower this way (median 4 %, five paired 50 s runs), and 5–20 % slower when the slot
    /// list was looked up as well.
    loc: Vec<u32>,
    /// Node `i`'s int8 code ([`crate::index::frozen::code_into`]) is
    /// `codes[i * dim..][..dim]`, its scale back `unscale[i]`: the beams that find a new
    /// point's candidates compare these (a quarter of the bytes of f32; memory is what a beam
    /// spends), and only the candidates they keep are scored on f32 before the links are
    /// chosen.
    codes: Vec<i8>,
    unscale: Vec<f32>,
    levels: Vec<u8>,
    /// Level-0 links: node `i`'s are `links0[i * m0..][..len0[i]]`.
    links0: Vec<u32>,
    /// The distance key from each level-0 link's node to its target, or [`UNKNOWN`] (not in
    /// dumps: a loaded graph scores them when first needed). See [`HnswBuilder::link_back0`].
    dist0: Vec<u32>,
    len0: Vec<u8>,
    /// Levels 1..=level of node `i`: `upper[i][(l - 1) * (m + 1)]` is the count, followed by
    /// `m` link cells. Empty for level-0 nodes.
    upper: Vec<Box<[u32]>>,
    entry: Option<u32>,
    top: usize,
    /// Visited marks of the beam searches: node → generation of the search that visited it.
    marks: Vec<u32>,
    generation: u32,
    /// Each parallel insert thread's visited marks and generation (see
    /// [`HnswBuilder::insert_batch`]), kept between rounds.
    scratch: Vec<(Vec<u32>, u32)>,
}

impl std::fmt::Debug for HnswBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HnswBuilder")
            .field("points", &self.slots.len())
            .field("levels", &(self.top + 1))
            .finish()
    }
}

impl HnswBuilder {
    /// An empty graph of `dim`-d vectors; `m` links per upper level (2·`m` on level 0).
    pub(crate) fn new(dim: usize, m: usize, ef_construction: usize, seed: u64) -> HnswBuilder {
        let m = m.clamp(2, crate::limits::MAX_M);
        HnswBuilder {
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(m),
            dim,
            level_mult: 1.0 / (m as f64).ln(),
            rng: seed | 1,
            slots: Vec::new(),
            shared: None,
            own: Vec::new(),
            loc: Vec::new(),
            codes: Vec::new(),
            unscale: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            dist0: Vec::new(),
            len0: Vec::new(),
            upper: Vec::new(),
            entry: None,
            top: 0,
            marks: Vec::new(),
            generation: 0,
            scratch: Vec::new(),
        }
    }

    /// Node → slot, in insertion order.
    pub(crate) fn slots(&self) -> &[u32] {
        &self.slots
    }

    #[inline]
    fn vec(&self, n: u32) -> &[f32] {
        let l = self.loc[n as usize];
        match &self.shared {
            Some(s) if l & OWN == 0 => s.get(l),
            _ => {
                let at = (l & !OWN) as usize * self.dim;
                &self.own[at..at + self.dim]
            }
        }
    }

    /// Whether `slot`'s vector is in the shared maps.
    fn is_shared(&self, slot: u32) -> bool {
        map_of(&self.shared, slot).is_some()
    }

    /// `loc` of the next copy in `own`.
    fn next_own(&self) -> u32 {
        OWN | (self.own.len() / self.dim.max(1)) as u32
    }

    /// Reads the vectors of nodes whose slots `mapped` (the store's mapped part,
    /// [`Vectors::mapped_part`]) holds from there from now on, and drops their copies. A
    /// builder shares the maps as of its creation or load, and again after each checkpoint
    /// (whose new chunk maps what was the in-memory tail). `mapped` must hold the same
    /// vectors the builder was given for those slots (slots are never reused).
    pub(crate) fn share(&mut self, mapped: Vectors) {
        if self
            .shared
            .as_ref()
            .is_some_and(|s| s.len() >= mapped.len())
        {
            return;
        }
        let covered = mapped.len().min(OWN);
        let dim = self.dim;
        let mut own = Vec::new();
        for (node, l) in self.loc.iter_mut().enumerate() {
            if *l & OWN == 0 {
                continue;
            }
            let slot = self.slots[node];
            if slot < covered {
                *l = slot;
            } else {
                let from = (*l & !OWN) as usize * dim;
                *l = OWN | (own.len() / dim.max(1)) as u32;
                own.extend_from_slice(&self.own[from..from + dim]);
            }
        }
        self.own = own;
        self.shared = Some(mapped);
    }

    /// Vector copies the builder holds (not read from the maps).
    #[cfg(test)]
    pub(crate) fn own_vectors(&self) -> usize {
        self.own.len() / self.dim.max(1)
    }

    /// Keeps `v` as node `node`'s vector: a copy, unless its slot is in the shared maps.
    fn keep_vector(&mut self, slot: u32, v: &[f32]) {
        if self.is_shared(slot) {
            self.loc.push(slot);
        } else {
            self.loc.push(self.next_own());
            self.own.extend_from_slice(v);
        }
        self.keep_code(v);
    }

    /// Appends the code of `v` (the next node's vector).
    fn keep_code(&mut self, v: &[f32]) {
        let back = push_code(&mut self.codes, v);
        self.unscale.push(back);
    }

    /// Node `n`'s code and scale back.
    #[inline]
    fn code(&self, n: u32) -> (&[i8], f32) {
        let at = n as usize * self.dim;
        (&self.codes[at..at + self.dim], self.unscale[n as usize])
    }

    fn next_level(&mut self) -> usize {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        // U in (0, 1].
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    /// Links of node `n` on `level`.
    #[inline]
    fn links(&self, n: u32, level: usize) -> &[u32] {
        if level == 0 {
            let at = n as usize * self.m0;
            &self.links0[at..at + self.len0[n as usize] as usize]
        } else {
            let u = &self.upper[n as usize];
            let at = (level - 1) * (self.m + 1);
            if at >= u.len() {
                return &[];
            }
            &u[at + 1..at + 1 + u[at] as usize]
        }
    }

    fn set_links(&mut self, n: u32, level: usize, ls: &[u32]) {
        if level == 0 {
            let at = n as usize * self.m0;
            self.links0[at..at + ls.len()].copy_from_slice(ls);
            self.len0[n as usize] = ls.len() as u8;
        } else {
            let at = (level - 1) * (self.m + 1);
            let u = &mut self.upper[n as usize];
            u[at] = ls.len() as u32;
            u[at + 1..at + 1 + ls.len()].copy_from_slice(ls);
        }
    }

    /// Inserts `v` (unit length, `dim` long) as `slot`.
    pub(crate) fn insert(&mut self, slot: u32, v: &[f32]) {
        let (node, level) = self.register(slot, v);
        let mut marks = std::mem::take(&mut self.marks);
        let mut generation = self.generation;
        let plan = self.plan(node, level, node..node, &mut marks, &mut generation);
        (self.marks, self.generation) = (marks, generation);
        self.connect(node, level, &plan);
    }

    /// Inserts `items` (unit length, `dim` long, with their slots) in order, on `threads`
    /// threads: the searches that find a point's links run in parallel, in rounds of up to
    /// [`MAX_ROUND`] points (1/[`ROUND_SHARE`] of the graph), against the graph as the round
    /// found it; a point also weighs the round's earlier points as candidates (one distance
    /// each), so it sees what a one-by-one insert would have seen. The links are then made
    /// on this thread, in order, exactly as [`HnswBuilder::insert`] makes them.
    pub(crate) fn insert_batch(&mut self, items: &[(u32, Vec<f32>)], threads: usize) {
        let mut at = 0;
        while at < items.len() {
            let round = if threads <= 1 {
                1
            } else {
                (self.slots.len() / ROUND_SHARE).clamp(1, MAX_ROUND)
            }
            .min(items.len() - at);
            if round < MIN_PARALLEL_ROUND {
                for (slot, v) in &items[at..at + round] {
                    self.insert(*slot, v);
                }
                at += round;
                continue;
            }
            let first = self.slots.len() as u32;
            let levels: Vec<usize> = items[at..at + round]
                .iter()
                .map(|(slot, v)| self.register(*slot, v).1)
                .collect();
            let plans = self.plan_round(first, &levels, threads);
            for (k, plan) in plans.iter().enumerate() {
                self.connect(first + k as u32, levels[k], plan);
            }
            at += round;
        }
    }

    /// The plans of the round of nodes `first..first + levels.len()` (registered, not yet
    /// connected), found on `threads` threads, in node order.
    fn plan_round(&mut self, first: u32, levels: &[usize], threads: usize) -> Vec<Plan> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize_with(threads, || (Vec::new(), 0));
        for (marks, _) in &mut scratch {
            marks.resize(self.slots.len(), 0);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let this = &*self;
        let work = |(marks, generation): &mut (Vec<u32>, u32)| {
            let mut done = Vec::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&level) = levels.get(k) else {
                    return done;
                };
                let node = first + k as u32;
                done.push((k, this.plan(node, level, first..node, marks, generation)));
            }
        };
        let mut plans = vec![Vec::new(); levels.len()];
        std::thread::scope(|s| {
            let (mine, rest) = scratch.split_first_mut().expect("at least one thread");
            // A helper that cannot be started leaves its share to this thread (the points are
            // handed out one at a time).
            let helpers: Vec<_> = rest
                .iter_mut()
                .filter_map(|sc| {
                    std::thread::Builder::new()
                        .name("magray-indexer".into())
                        .spawn_scoped(s, || work(sc))
                        .ok()
                })
                .collect();
            let mut done = work(mine);
            for h in helpers {
                // A helper only panics on a bug; carry its panic to this thread.
                done.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            for (k, plan) in done {
                plans[k] = plan;
            }
        });
        self.scratch = scratch;
        plans
    }

    /// Adds `slot` as a node with a random level and no links yet; returns the node and its
    /// level.
    fn register(&mut self, slot: u32, v: &[f32]) -> (u32, usize) {
        debug_assert_eq!(v.len(), self.dim);
        let node = self.slots.len() as u32;
        let level = self.next_level();
        self.slots.push(slot);
        self.keep_vector(slot, v);
        self.levels.push(level as u8);
        self.links0.resize(self.links0.len() + self.m0, 0);
        self.dist0.resize(self.dist0.len() + self.m0, UNKNOWN);
        self.len0.push(0);
        self.upper
            .push(vec![0u32; level * (self.m + 1)].into_boxed_slice());
        self.marks.push(0);
        (node, level)
    }

    /// The links registered `node` of `level` gets on each level from 0 up: a descent from
    /// the entry, a beam of `ef_construction` on each of its levels the graph has, and the
    /// `mates` (nodes registered before it and not yet connected) whose level reaches, all
    /// pruned by [`HnswBuilder::select`]. Reads the graph only.
    fn plan(
        &self,
        node: u32,
        level: usize,
        mates: std::ops::Range<u32>,
        marks: &mut [u32],
        generation: &mut u32,
    ) -> Plan {
        let q = self.vec(node);
        let dist = |n: u32| dist_key(dot(q, self.vec(n)));
        let (qc, q_back) = self.code(node);
        let approx = |n: u32| {
            let (code, unscale) = self.code(n);
            dist_key(dot_i8(qc, code) as f32 * q_back * unscale)
        };
        let mut found: Vec<Vec<(u32, u32)>> = vec![Vec::new(); level + 1];
        if let Some(mut ep) = self.entry {
            let mut ep_d = approx(ep);
            for l in (level + 1..=self.top).rev() {
                (ep, ep_d) = greedy(ep, ep_d, |n| self.links(n, l), &approx);
            }
            let mut seeds = vec![(ep_d, ep)];
            for l in (0..=level.min(self.top)).rev() {
                let g = next_generation(marks, generation);
                seeds = self.search_level(&approx, &seeds, self.ef_construction, l, marks, g);
                // What the beam kept, scored on f32 for the choice of links, each vector
                // asked for a few ahead of its turn.
                found[l] = seeds
                    .iter()
                    .enumerate()
                    .map(|(i, &(_, n))| {
                        if let Some(&(_, ahead)) = seeds.get(i + RESCORE_AHEAD) {
                            prefetch(self.vec(ahead), usize::MAX);
                        }
                        (dist(n), n)
                    })
                    .collect();
            }
        }
        for mate in mates {
            let d = dist(mate);
            let reach = (self.levels[mate as usize] as usize).min(level);
            for f in &mut found[..=reach] {
                f.push((d, mate));
            }
        }
        found
            .iter_mut()
            .enumerate()
            .map(|(l, f)| {
                f.sort_unstable();
                self.select(f, if l == 0 { self.m0 } else { self.m })
            })
            .collect()
    }

    /// Gives registered `node` of `level` the links `plan` chose and makes each mutual; the
    /// node becomes the entry when it is the highest.
    fn connect(&mut self, node: u32, level: usize, plan: &[Vec<(u32, u32)>]) {
        for (l, chosen) in plan.iter().enumerate() {
            let mut ids = [0u32; 2 * crate::limits::MAX_M];
            for (i, &(_, n)) in chosen.iter().enumerate() {
                ids[i] = n;
            }
            self.set_links(node, l, &ids[..chosen.len()]);
            if l == 0 {
                let at = node as usize * self.m0;
                for (i, &(d, _)) in chosen.iter().enumerate() {
                    self.dist0[at + i] = d;
                }
            }
            for &(d, n) in chosen {
                self.link_back(n, node, l, d);
            }
        }
        if self.entry.is_none() || level > self.top {
            self.top = level;
            self.entry = Some(node);
        }
    }

    /// Adds `node` to `n`'s links on `level`; a full list keeps its nearest (to `n`). Pruning
    /// these with the heuristic instead cut the mean layer-0 degree from 26 to 23 and recall
    /// at ef 10 from 0.979 to 0.966 (10k clustered vectors); keeping the nearest is also what
    /// hnsw_rs does. `d` is the distance key between the two.
    fn link_back(&mut self, n: u32, node: u32, level: usize, d: u32) {
        if level == 0 {
            return self.link_back0(n, node, d);
        }
        let cap = self.m;
        let cur = self.links(n, level);
        if cur.len() < cap {
            // Room left: append (on the stack; a list holds at most 2·crate::limits::MAX_M links).
            let mut ls = [0u32; 2 * crate::limits::MAX_M];
            ls[..cur.len()].copy_from_slice(cur);
            ls[cur.len()] = node;
            let len = cur.len() + 1;
            self.set_links(n, level, &ls[..len]);
            return;
        }
        let base = self.vec(n);
        let mut cands: Vec<(u32, u32)> = cur
            .iter()
            .chain(std::iter::once(&node))
            .map(|&c| (dist_key(dot(base, self.vec(c))), c))
            .collect();
        cands.sort_unstable();
        let kept: Vec<u32> = cands.iter().take(cap).map(|c| c.1).collect();
        self.set_links(n, level, &kept);
    }

    /// [`HnswBuilder::link_back`] on level 0, where each link's distance key is kept beside
    /// it (`dist0`): a full list swaps its farthest link for `node` if `node` is nearer,
    /// without scoring the list again (it did, on one thread, for 11 % of the indexer's time).
    /// Keys a loaded dump lacks are scored the first time the list is full.
    fn link_back0(&mut self, n: u32, node: u32, d: u32) {
        let at = n as usize * self.m0;
        let len = self.len0[n as usize] as usize;
        if len < self.m0 {
            self.links0[at + len] = node;
            self.dist0[at + len] = d;
            self.len0[n as usize] += 1;
            return;
        }
        for i in at..at + self.m0 {
            if self.dist0[i] == UNKNOWN {
                self.dist0[i] = dist_key(dot(self.vec(n), self.vec(self.links0[i])));
            }
        }
        let (far, far_d) = (at..at + self.m0)
            .map(|i| (i, self.dist0[i]))
            .max_by_key(|&(_, d)| d)
            .unwrap_or((at, 0));
        if d < far_d {
            self.links0[far] = node;
            self.dist0[far] = d;
        }
    }

    /// The neighbour-selection heuristic over `cands` (sorted by distance, nearest first):
    /// keeps a candidate only if it is nearer to the base point than to every one kept so
    /// far, up to `m`. The kept with their distance keys.
    fn select(&self, cands: &[(u32, u32)], m: usize) -> Vec<(u32, u32)> {
        let mut kept: Vec<(u32, u32)> = Vec::with_capacity(m);
        for &(d, c) in cands {
            if kept.len() >= m {
                break;
            }
            let cv = self.vec(c);
            if kept
                .iter()
                .all(|&(_, k)| dist_key(dot(cv, self.vec(k))) >= d)
            {
                kept.push((d, c));
            }
        }
        kept
    }

    /// Beam search of width `ef` on `level` from `seeds` by `dist` (on the codes), with
    /// `marks` at generation `g`; the result sorted nearest first.
    fn search_level(
        &self,
        dist: &dyn Fn(u32) -> u32,
        seeds: &[(u32, u32)],
        ef: usize,
        level: usize,
        marks: &mut [u32],
        g: u32,
    ) -> Vec<(u32, u32)> {
        let pf = |n: u32| prefetch(self.code(n).0, PREFETCH_LINES);
        beam(
            seeds,
            ef,
            |n| self.links(n, level),
            Scorer {
                dist,
                prefetch: &pf,
            },
            &|_| true,
            marks,
            g,
        )
        .into_sorted_vec()
    }

    /// Writes the graph (links and levels, not vectors) in the `hnsw-<layer>.graph` layout.
    /// Many small writes: give it a buffered writer.
    pub(crate) fn write_to(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let n = self.slots.len();
        w.write_all(&DUMP_MAGIC)?;
        write_u32s(
            w,
            &[
                DUMP_VERSION,
                self.dim as u32,
                self.m as u32,
                self.ef_construction as u32,
                n as u32,
                self.top as u32,
                self.entry.unwrap_or(u32::MAX),
                0,
            ],
        )?;
        w.write_all(&self.rng.to_le_bytes())?;
        write_u32s(w, &self.slots)?;
        w.write_all(&self.levels)?;
        w.write_all(&self.len0)?;
        w.write_all(&[0u8; 3][..pad4(2 * n)])?;
        write_u32s(w, &self.links0)?;
        for u in &self.upper {
            write_u32s(w, u)?;
        }
        Ok(())
    }

    /// Reads a dump written by [`HnswBuilder::write_to`] for `dim`-d vectors of a snapshot
    /// with `nslots` slots, validating every field (a dump whose crc matches can still be
    /// from another build). The vectors are not in the dump: call
    /// [`HnswBuilder::fill_vectors`] for every node before inserting. Errors carry the byte
    /// offset of the bad field.
    pub(crate) fn read(
        bytes: &[u8],
        dim: usize,
        nslots: u32,
    ) -> Result<HnswBuilder, (u64, String)> {
        let head = DumpHeader::parse(bytes, dim)?;
        let DumpHeader {
            m,
            ef_c,
            n,
            top,
            entry,
            rng,
            levels_at,
            links_at,
            upper_at,
        } = head;
        let upper_cells = head.upper_cells(bytes)?;
        let m0 = 2 * m;
        let u32s = |from: usize, count: usize| {
            bytes[from..from + 4 * count]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<u32>>()
        };
        let slots = u32s(DUMP_HEADER_LEN, n);
        check_slots(&slots, nslots)?;
        let levels = bytes[levels_at..levels_at + n].to_vec();
        let len0 = bytes[levels_at + n..levels_at + 2 * n].to_vec();
        let links0 = u32s(links_at, n * m0);
        let mut upper = Vec::with_capacity(n);
        let upper_off: Vec<usize> = upper_cells
            .iter()
            .map(|c| upper_at + 4 * *c as usize)
            .collect();
        for (i, &off) in upper_off.iter().enumerate() {
            let lvl = levels[i] as usize;
            if len0[i] as usize > m0 {
                return Err((
                    (levels_at + n + i) as u64,
                    format!("node {i} has {} level-0 links, at most {m0}", len0[i]),
                ));
            }
            let u = u32s(off, lvl * (m + 1));
            for l in 0..lvl {
                if u[l * (m + 1)] as usize > m {
                    return Err((
                        (off + 4 * l * (m + 1)) as u64,
                        format!(
                            "node {i} has {} links on level {}, at most {m}",
                            u[l * (m + 1)],
                            l + 1
                        ),
                    ));
                }
            }
            upper.push(u.into_boxed_slice());
        }
        let b = HnswBuilder {
            m,
            m0,
            ef_construction: ef_c.max(m),
            dim,
            level_mult: 1.0 / (m as f64).ln(),
            rng,
            slots,
            shared: None,
            own: Vec::new(),
            loc: Vec::with_capacity(n),
            codes: Vec::with_capacity(n * dim),
            unscale: Vec::with_capacity(n),
            levels,
            dist0: vec![UNKNOWN; links0.len()],
            links0,
            len0,
            upper,
            entry: (n > 0).then_some(entry),
            top,
            marks: vec![0; n],
            generation: 0,
            scratch: Vec::new(),
        };
        // Every link points at a node that is on that level (a link to a node below it would
        // later make an insert write past that node's level cells).
        for (i, &uo) in upper_off.iter().enumerate() {
            for l in 0..=b.levels[i] as usize {
                for (j, &x) in b.links(i as u32, l).iter().enumerate() {
                    let missing = x as usize >= n;
                    if missing || (b.levels[x as usize] as usize) < l {
                        let cell = if l == 0 {
                            links_at + 4 * (i * m0 + j)
                        } else {
                            uo + 4 * ((l - 1) * (m + 1) + 1 + j)
                        };
                        let why = if missing {
                            format!("node {i} links to node {x} on level {l}, of {n}")
                        } else {
                            format!("node {i} links to node {x} on level {l}, above its level")
                        };
                        return Err((cell as u64, why));
                    }
                }
            }
        }
        Ok(b)
    }

    /// Makes later inserts use `ef` (a loaded graph keeps the M it was built with, but takes
    /// the configured ef_construction).
    pub(crate) fn set_ef_construction(&mut self, ef: usize) {
        self.ef_construction = ef.max(self.m);
    }

    /// Nodes whose vectors are still missing after [`HnswBuilder::read`].
    pub(crate) fn vectors_missing(&self) -> std::ops::Range<usize> {
        self.loc.len()..self.slots.len()
    }

    /// Gives the next `count` nodes (from [`HnswBuilder::vectors_missing`]) their vectors:
    /// from the shared maps ([`HnswBuilder::share`] first) where they hold the slot, else a
    /// copy of `get(slot)`; `Err(slot)` if the store lacks one. Their codes are taken from
    /// `coded`, a frozen copy of this graph ([`HnswBuilder::freeze_with`]), where it has them.
    pub(crate) fn fill_vectors<'a>(
        &mut self,
        count: usize,
        get: impl Fn(u32) -> Option<&'a [f32]>,
        coded: Option<&FrozenGraph>,
    ) -> Result<(), u32> {
        let r = self.vectors_missing();
        let coded =
            coded.filter(|f| crate::index::frozen::SearchGraph::len(*f) == self.slots.len());
        for node in r.start..r.start.saturating_add(count).min(r.end) {
            let slot = self.slots[node];
            if let Some(s) = map_of(&self.shared, slot) {
                self.loc.push(slot);
                // The frozen copy of this graph has the code: copied, the vector is not
                // read (at a million points, 1.5 GB of mapped pages not touched).
                match coded.filter(|f| f.slot(node as u32) == slot) {
                    Some(f) => {
                        let (code, back) = f.code(node as u32);
                        self.codes.extend_from_slice(code);
                        self.unscale.push(back);
                    }
                    None => self.unscale.push(push_code(&mut self.codes, s.get(slot))),
                }
                continue;
            }
            match get(slot) {
                Some(v) if v.len() == self.dim => self.keep_vector(slot, v),
                _ => return Err(slot),
            }
        }
        Ok(())
    }

    /// A read-only copy for searches.
    pub(crate) fn freeze(&self) -> FrozenGraph {
        self.freeze_with(|node| self.vec(node as u32))
    }

    /// [`HnswBuilder::freeze`] with each node's vector from `vector_of(node)`: a graph just
    /// read from a dump is frozen from the store's mapped vectors (by its slots) before its
    /// own vectors are attached.
    pub(crate) fn freeze_with<'a>(
        &self,
        vector_of: impl Fn(usize) -> &'a [f32] + Sync,
    ) -> FrozenGraph {
        let mut upper = vec![std::collections::HashMap::new(); self.top];
        for (i, lvl) in self.levels.iter().enumerate() {
            for l in 1..=*lvl as usize {
                let ls = self.links(i as u32, l);
                if !ls.is_empty() {
                    upper[l - 1].insert(i as u32, ls.to_vec().into_boxed_slice());
                }
            }
        }
        FrozenGraph::from_parts(
            &self.slots,
            |node| self.links(node as u32, 0),
            upper,
            self.entry,
            vector_of,
            self.dim,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests;
