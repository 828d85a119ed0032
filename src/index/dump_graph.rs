//! A snapshot's HNSW graph dump, searched in place through its memory map, so that a layer
//! with a dump is searched through its graph from the moment open returns.
//!
//! Making the usual searchable copy ([`crate::index::frozen::FrozenGraph`]: links copied into flat
//! arrays, an int8 code per point) reads every point's vector: about 0.3 s at a million
//! 384-d points, after the dump itself is read and checked (about 0.4 s). Until then a layer
//! would be scanned exactly (about 120 ms a query at a million points on two cores). A
//! [`MappedGraph`] needs one pass over its level bytes and one over its slots (each below
//! the snapshot's slot count, each once); it scores points exactly, on the f32 vectors, so it
//! is slower per query than the coded copy that replaces it once the indexer has made it, but
//! as exact.
//!
//! What open reads (header, slots, levels, upper-level blocks: under a tenth of a dump, 11 MB
//! of 143 MB at 1M points) is checked at open. The level-0 links, the rest, are checked against
//! the dump's block sums (snapshot format 7 on) block by block as walks first read them, so
//! open does not read them; an older dump is checked in full at open. A walk that reads a
//! damaged block stops using the graph: that search and every later one scan the layer exactly
//! (nothing is missed), and the indexer, which checks every block before it reads the dump,
//! reports the damage and rebuilds the layer's graph.
//!
//! A link is checked when it is read (a link list naming a node beyond the graph is read as
//! empty), so a dump whose sums match but whose links are wrong cannot make a walk panic or
//! read out of bounds. The indexer's full check of the same bytes
//! ([`crate::index::hnsw::HnswBuilder::read`]) still runs before the graph is used to insert; if it
//! fails, this graph is dropped and the layer is rebuilt, as for any bad dump.
//!
//! Pages are populated before they are checked; a page the kernel later drops and cannot
//! read back would raise SIGBUS, the risk the store already takes with its mapped vector
//! chunks and record table.

use crate::disk::sums::InPlace;
use crate::disk::vectors::Vectors;
use crate::index::distance::{dist_key, dot, prefetch};
use crate::index::frozen::{push_exact, walk, Scorer, SearchGraph};
use crate::index::hnsw::{check_slots, DumpHeader};
use crate::util::TopK;
use std::sync::atomic::{AtomicBool, Ordering};

/// Cache lines of each f32 vector a walk asks for ahead (see [`prefetch`]), as the builder.
const PREFETCH_LINES: usize = 4;

/// See the module documentation.
pub(crate) struct MappedGraph {
    file: InPlace,
    head: DumpHeader,
    /// A walk found a damaged block (reported once).
    warned: AtomicBool,
    /// Per node: where its upper-level block starts, in u32 cells after `head.upper_at`.
    upper_cell: Vec<u32>,
}

impl std::fmt::Debug for MappedGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedGraph")
            .field("points", &self.head.n)
            .field("levels", &(self.head.top + 1))
            .finish()
    }
}

impl MappedGraph {
    /// A graph over `file`, a dump mapped (see `snapshot::map_in_place`), for a store of
    /// `dim`-d vectors with `nslots` slots. Checks the blocks of all but the level-0 links,
    /// the header, that the blocks fill the dump exactly, that each slot is below `nslots`
    /// and appears once, and the entry node. Errors carry the byte offset of the bad field.
    pub(crate) fn open(
        file: InPlace,
        dim: usize,
        nslots: u32,
    ) -> Result<MappedGraph, (u64, String)> {
        if cfg!(target_endian = "big") {
            return Err((
                0,
                "a dump is searched in place only on little-endian CPUs".into(),
            ));
        }
        let fault = |file: &InPlace| {
            file.fault()
                .cloned()
                .unwrap_or((0, "the dump cannot be read".into()))
        };
        let len = file.map.len();
        if !file.ok(0, DumpHeader::SLOTS_AT.min(len)) {
            return Err(fault(&file));
        }
        let head = DumpHeader::parse(&file.map, dim)?;
        if !file.ok(0, head.links_at) || !file.ok(head.upper_at, len - head.upper_at) {
            return Err(fault(&file));
        }
        let upper_cell = head.upper_cells(&file.map)?;
        let g = MappedGraph {
            file,
            head,
            warned: AtomicBool::new(false),
            upper_cell,
        };
        let slots = g.slots();
        if slots.len() != head.n {
            return Err((
                DumpHeader::SLOTS_AT as u64,
                "the slot list is not 4-byte aligned".into(),
            ));
        }
        check_slots(slots, nslots)?;
        Ok(g)
    }

    /// The dump's bytes, every block checked first (for the indexer's full read of the same
    /// graph); the damage found is the error.
    pub(crate) fn checked_bytes(&self) -> crate::error::Result<&[u8]> {
        self.file.scrub(&|| false)?;
        Ok(&self.file.map)
    }

    /// True once a read found a damaged block: the graph is no longer walked.
    fn damaged(&self) -> bool {
        self.file.fault().is_some()
    }

    /// Node → slot.
    pub(crate) fn slots(&self) -> &[u32] {
        self.u32s(DumpHeader::SLOTS_AT, self.head.n)
    }

    /// `count` little-endian u32 from byte `at`; empty if they are not in the dump or not
    /// 4-byte aligned (the layout keeps every region aligned, and maps start on a page).
    fn u32s(&self, at: usize, count: usize) -> &[u32] {
        at.checked_add(count.saturating_mul(4))
            .and_then(|end| self.file.map.get(at..end))
            .and_then(|b| bytemuck::try_cast_slice(b).ok())
            .unwrap_or(&[])
    }

    /// `links` if every one names a node of the graph, else none (see the module docs).
    fn checked<'a>(&self, links: &'a [u32]) -> &'a [u32] {
        if links.iter().all(|x| (*x as usize) < self.head.n) {
            links
        } else {
            &[]
        }
    }

    fn level(&self, node: u32) -> usize {
        self.file
            .map
            .get(self.head.levels_at + node as usize)
            .map_or(0, |l| *l as usize)
    }

    /// Links of `node` on layer 0.
    fn links0(&self, node: u32) -> &[u32] {
        let h = &self.head;
        let Some(len) = self.file.map.get(h.levels_at + h.n + node as usize) else {
            return &[];
        };
        let m0 = 2 * h.m;
        let len = (*len as usize).min(m0);
        let at = h.links_at + 4 * node as usize * m0;
        if !self.file.ok(at, 4 * len) {
            return &[];
        }
        self.checked(self.u32s(at, len))
    }

    /// Links of `node` on `level` (1 and up): none if the node is not on that level.
    fn upper(&self, level: usize, node: u32) -> &[u32] {
        if level == 0 || self.level(node) < level {
            return &[];
        }
        let h = &self.head;
        let Some(first) = self.upper_cell.get(node as usize) else {
            return &[];
        };
        let at = h.upper_at + 4 * (*first as usize + (level - 1) * (h.m + 1));
        let block = self.u32s(at, h.m + 1);
        let Some((count, links)) = block.split_first() else {
            return &[];
        };
        self.checked(&links[..(*count as usize).min(h.m)])
    }
}

impl SearchGraph for MappedGraph {
    fn len(&self) -> usize {
        self.head.n
    }

    fn in_place(&self) -> bool {
        true
    }

    /// The same walk as the frozen copy's, scored exactly on the f32 vectors.
    fn search(
        &self,
        q: &[f32],
        ef: usize,
        vectors: &Vectors,
        ok: &dyn Fn(u32) -> bool,
        top: &mut TopK,
    ) -> usize {
        if self.head.n == 0 || self.damaged() {
            return 0;
        }
        let slots = self.slots();
        let vector = |node: u32| vectors.get(slots[node as usize]);
        let dist = |node: u32| dist_key(dot(q, vector(node)));
        let pf = |node: u32| prefetch(vector(node), PREFETCH_LINES);
        let ok_node = |node: u32| ok(slots[node as usize]);
        let res = walk(
            self.head.entry,
            self.head.n,
            self.head.top,
            |l, node| self.upper(l, node),
            |node| self.links0(node),
            Scorer {
                dist: &dist,
                prefetch: &pf,
            },
            &ok_node,
            ef.max(1),
        );
        if self.damaged() {
            // Found nothing: the caller scans the layer exactly (see the module docs).
            if !self.warned.swap(true, Ordering::AcqRel) {
                if let Some(e) = self.file.damage() {
                    tracing::warn!(error = %e, "graph dump damaged; searching the layer exactly until the indexer rebuilds its graph");
                }
            }
            return 0;
        }
        push_exact(res, q, |n| slots[n as usize], vectors, top)
    }
}

#[cfg(test)]
mod tests;
