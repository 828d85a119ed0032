//! A search of some layers: the store's HNSW or in-place graph, the exact tail, filters and
//! TTL.

use super::*;
use crate::index::distance::{dot, dot_i8};
use crate::index::frozen::code_into;
use crate::types::{Layer, SearchOptions};
use crate::util::{part_bounds, scan_threads, TopK};
use std::collections::VecDeque;

impl Projections {
    /// Whether `r` is past its layer's TTL at `now_us` (hidden from readers until the
    /// lifecycle run expires or promotes it).
    pub(crate) fn past_ttl(&self, r: &Rec<'_>, now_us: u64) -> bool {
        r.layer_since_us
            .saturating_add(self.ttl_us[r.layer.index()])
            <= now_us
    }

    /// The layer of the live record in `slot`.
    pub(crate) fn layer_of(&self, slot: u32) -> Option<Layer> {
        match self.slots.get(slot as usize) {
            Some(Slot::Owned(r)) => Some(r.layer),
            Some(Slot::Row(r)) => Some(r.layer),
            _ => None,
        }
    }

    /// Whether the record in `slot` is live, in one of the layers of `f.mask`, passes the
    /// filters of `o` and is not past its layer's TTL at `now_us`: what a search may return.
    /// Called for every point a walk keeps, so a row is read field by field, and in full only
    /// for a filter; a record the keyword index places in another project is refused without
    /// reading its row.
    pub(crate) fn visible(&self, slot: u32, f: &Filter, o: &SearchOptions, now_us: u64) -> bool {
        let Some((layer, since)) = self
            .attrs
            .get(slot as usize)
            .and_then(|w| attrs::unpack(*w))
        else {
            return false;
        };
        if f.mask & (1 << layer) == 0
            || since.saturating_add(self.ttl_us[layer]) <= now_us
            || f.project
                .is_some_and(|key| !self.keywords.may_be_in_project(slot, key))
        {
            return false;
        }
        if !o.filters() {
            return true;
        }
        match self.slots.get(slot as usize) {
            Some(Slot::Owned(r)) => r.as_rec(None).matches(o),
            Some(Slot::Row(r)) => {
                debug_assert!(self.tables[r.table as usize].is_some());
                self.row_table(slot, r)
                    .is_some_and(|t| Rec::of_row(t, r.row, None).matches(o))
            }
            _ => false,
        }
    }

    /// With a `project` filter that admits few records (at most [`FEW_FILTERED`], or a 32nd
    /// of the layers searched), every one of them that is in `layers` and visible, scored
    /// exactly into `top`; returns false (nothing done) otherwise, or while the keyword index,
    /// which lists a project's records, is still being read. Walking graphs for a filter
    /// this selective visits most of their nodes, and a layer the project has no record in
    /// is walked whole and then scanned: this is faster and exact.
    pub(crate) fn search_few_filtered(
        &self,
        layers: &[Layer],
        q: &[f32],
        o: &SearchOptions,
        now_us: u64,
        top: &mut TopK,
    ) -> bool {
        let Some(project) = o.project.as_deref() else {
            return false;
        };
        let searched: usize = layers
            .iter()
            .map(|l| self.layers[l.index()].members.len())
            .sum();
        let few = FEW_FILTERED.max(searched / FEW_SHARE) as u64;
        if self
            .keywords
            .project_count(Some(project))
            .is_none_or(|n| n > few)
        {
            return false;
        }
        let Some(slots) = self.keywords.project_slots(Some(project)) else {
            return false;
        };
        let f = Filter::new(layers, o);
        for slot in slots {
            if self.visible(slot, &f, o, now_us) {
                top.push(dot(q, self.vectors.get(slot)), slot);
            }
        }
        true
    }

    /// Candidates in `layers` for a query, into `top`: a walk of the store's frozen HNSW
    /// graph keeping the points that are live, in those layers and match the options, plus an
    /// exact scan of the records the graph lacks; or an exact scan of those layers' records
    /// when they are few (under `exact_below`, or a small share of the graph: a walk for a
    /// filter that selective visits most of the graph) or there is no frozen graph yet.
    pub(crate) fn search_layers(
        &self,
        layers: &[Layer],
        q: &[f32],
        o: &SearchOptions,
        how: Probe,
        top: &mut TopK,
    ) {
        let Probe {
            ef,
            scale_ef,
            exact_below,
            now_us,
        } = how;
        let f = Filter::new(layers, o);
        let mask = f.mask;
        let ix = &self.index;
        let ok = |slot: u32| self.visible(slot, &f, o, now_us);
        let exact = |slot: u32, top: &mut TopK| {
            if ok(slot) {
                top.push(dot(q, self.vectors.get(slot)), slot);
            }
        };
        // The layers searched (no allocation: this runs for every search).
        let members = Layer::ALL
            .map(|l| (mask & (1 << l.index()) != 0).then_some(&self.layers[l.index()].members));
        let searched: usize = members.iter().flatten().map(|m| m.len()).sum();
        let scan_layers = |top: &mut TopK| {
            // Layer by layer, each in slot order: sequential vector reads.
            for m in members.iter().flatten() {
                scan_split(
                    scan_threads(),
                    m.len(),
                    |i, n| m.iter_part(i, n),
                    &exact,
                    top,
                );
            }
        };
        let Some(frozen) = &ix.frozen else {
            // No frozen copy yet (a graph between its first insert and its first freeze, a
            // moment, or a dump still loading): scan exactly.
            scan_layers(top);
            return;
        };
        let graph = frozen.len();
        if searched < exact_below || searched <= FEW_FILTERED.max(graph / FEW_SHARE) {
            scan_layers(top);
            return;
        }
        let ef = if scale_ef {
            crate::index::hnsw::scale_ef(ef, graph as u64)
        } else {
            ef
        };
        let ef = ef.max(o.top_k);
        let found = frozen.search(q, ef, &self.vectors, &ok, top);
        // Fewer than k matches in the walk: a selective filter, many dead points or a freeze
        // older than most of the store; scan exactly, never miss a record.
        if found < o.top_k {
            scan_layers(top);
            return;
        }
        // The points the walk lacks: scored on their int8 codes where the tail has them
        // (else exactly), the best `ef + top_k` then re-scored exactly.
        let tail_len = ix.unfrozen.len() + ix.pending.len();
        if tail_len == 0 {
            return;
        }
        let mut qc = vec![0i8; q.len()];
        let q_back = code_into(q, &mut qc);
        let coded = |slot: u32, t: &mut TopK| {
            if !ok(slot) {
                return;
            }
            let score = match ix.tail.get(slot) {
                Some((code, back)) => dot_i8(&qc, code) as f32 * q_back * back,
                None => dot(q, self.vectors.get(slot)),
            };
            t.push(score, slot);
        };
        let mut best = TopK::new(ef + o.top_k);
        scan_split(
            scan_threads(),
            tail_len,
            |i, n| tail_part(&ix.unfrozen, &ix.pending, i, n),
            &coded,
            &mut best,
        );
        for (_, slot) in best.into_sorted() {
            top.push(dot(q, self.vectors.get(slot)), slot);
        }
    }
}

/// What [`Projections::visible`] checks before a record's row: its layer, and the project
/// key of a `project` filter.
pub(crate) struct Filter {
    /// The layers searched, as bits `1 << layer.index()` (no layers: all of them).
    pub(crate) mask: u8,
    /// `keyword::project_key` of the filter's project.
    pub(crate) project: Option<u64>,
}

impl Filter {
    pub(crate) fn new(layers: &[Layer], o: &SearchOptions) -> Filter {
        let layers = if layers.is_empty() {
            &Layer::ALL[..]
        } else {
            layers
        };
        Filter {
            mask: layers.iter().fold(0, |m, l| m | 1 << l.index()),
            project: o
                .project
                .as_deref()
                .map(|p| crate::keyword::project_key(Some(p))),
        }
    }
}

/// A search of layers holding at most a `FEW_SHARE`-th of the graph's points scans them
/// exactly instead of walking the graph for them.
const FEW_SHARE: usize = 32;

/// A `project` filter admitting at most this many records is searched exactly, record by
/// record ([`Projections::search_few_filtered`]): about 0.2 ms at 384-d.
pub(crate) const FEW_FILTERED: usize = 2048;

/// Exact scans at least this long are split across cores: about 10 ms of work each at 384-d,
/// against tens of µs to start a thread.
const SPLIT_SCAN_MIN: usize = 65_536;

/// The `i`-th of `n` near-equal parts of `unfrozen` followed by `pending` (the points a
/// frozen graph lacks).
pub(super) fn tail_part<'a>(
    unfrozen: &'a [u32],
    pending: &'a VecDeque<u32>,
    i: usize,
    n: usize,
) -> impl Iterator<Item = u32> + 'a {
    let u = unfrozen.len();
    let (a, b) = part_bounds(u + pending.len(), i, n);
    let (pa, pb) = (a.max(u) - u, b.max(u) - u);
    unfrozen[a.min(u)..b.min(u)]
        .iter()
        .chain(pending.range(pa..pb))
        .copied()
}

/// Scores the `len` slots that `part(i, n)` yields in `n` parts exactly into `top`: in this
/// thread alone when there are few, otherwise one part per thread, up to `threads` (an
/// unindexed million-record layer is a 1.5 GB scan). Results do not depend on the split:
/// `TopK` breaks score ties by slot.
pub(super) fn scan_split<I>(
    threads: usize,
    len: usize,
    part: impl Fn(usize, usize) -> I + Sync,
    exact: &(impl Fn(u32, &mut TopK) + Sync),
    top: &mut TopK,
) where
    I: Iterator<Item = u32>,
{
    let n = threads.min(len / SPLIT_SCAN_MIN).max(1);
    if n == 1 {
        part(0, 1).for_each(|slot| exact(slot, top));
        return;
    }
    let k = top.k;
    let part = &part;
    // Part `i` into a top-k of its own.
    let scan = move |i: usize| {
        let mut t = TopK::new(k);
        part(i, n).for_each(|slot| exact(slot, &mut t));
        t
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..n)
            .map(|i| {
                // A thread that cannot be started leaves its part to this one.
                std::thread::Builder::new()
                    .name("magray-scan".into())
                    .spawn_scoped(scope, move || scan(i))
                    .map_err(|_| i)
            })
            .collect();
        part(0, n).for_each(|slot| exact(slot, top));
        for h in others {
            let t = match h {
                Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
                Err(i) => scan(i),
            };
            for (score, slot) in t.into_sorted() {
                top.push(score, slot);
            }
        }
    });
}

/// How a layer search runs: HNSW candidate list, the layer size below which it scans
/// exactly, and the time records past their TTL are hidden at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    pub(crate) ef: usize,
    /// Scale `ef` with the size of the layer's graph (`HnswConfig::effective_ef`).
    pub(crate) scale_ef: bool,
    pub(crate) exact_below: usize,
    pub(crate) now_us: u64,
}
