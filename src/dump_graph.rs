//! A snapshot's HNSW graph dump, searched in place through its memory map, so that a layer
//! with a dump is searched through its graph from the moment open returns.
//!
//! Making the usual searchable copy ([`crate::frozen::FrozenGraph`]: links copied into flat
//! arrays, an int8 code per point) reads every point's vector: about 0.3 s at a million
//! 384-d points, after the dump itself is read and checked (about 0.4 s). Until then a layer
//! would be scanned exactly (about 120 ms a query at a million points on two cores). A
//! [`MappedGraph`] needs only the dump's crc (checked through the map as open checks every
//! snapshot file) and one pass over its level bytes and one over its slots (each below the
//! snapshot's slot count, each once); it scores points exactly, on the f32
//! vectors, so it is slower per query than the coded copy that replaces it once the indexer
//! has made it, but as exact.
//!
//! Open checks the header and every node's level and upper-level block; a link is checked
//! when it is read (a link list naming a node beyond the graph is read as empty), so a dump
//! whose crc matches but whose links are wrong cannot make a walk panic or read out of
//! bounds. The indexer's full check of the same bytes ([`crate::hnsw::HnswBuilder::read`])
//! still runs before the graph is used to insert; if it fails, this graph is dropped and the
//! layer is rebuilt, as for any bad dump.
//!
//! Pages are read through the map after open has populated and checked them; a page the
//! kernel later drops and cannot read back would raise SIGBUS, the risk the store already
//! takes with its mapped vector chunks and record table.

use crate::distance::{dist_key, dot, prefetch};
use crate::frozen::{push_exact, walk, Scorer, SearchGraph};
use crate::hnsw::{check_slots, DumpHeader};
use crate::state::TopK;
use crate::vectors::Vectors;
use memmap2::Mmap;
use std::sync::Arc;

/// Cache lines of each f32 vector a walk asks for ahead (see [`prefetch`]), as the builder.
const PREFETCH_LINES: usize = 4;

/// See the module documentation.
pub(crate) struct MappedGraph {
    map: Arc<Mmap>,
    head: DumpHeader,
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
    /// A graph over `map`, a dump whose crc has been checked, for a store of `dim`-d vectors
    /// with `nslots` slots. Checks the header, that the blocks fill the dump exactly, that
    /// each slot is below `nslots` and appears once, and the entry node. Errors carry the
    /// byte offset of the bad field.
    pub(crate) fn open(
        map: Arc<Mmap>,
        dim: usize,
        nslots: u32,
    ) -> Result<MappedGraph, (u64, String)> {
        if cfg!(target_endian = "big") {
            return Err((
                0,
                "a dump is searched in place only on little-endian CPUs".into(),
            ));
        }
        let bytes: &[u8] = &map;
        let head = DumpHeader::parse(bytes, dim)?;
        let upper_cell = head.upper_cells(bytes)?;
        let g = MappedGraph {
            map,
            head,
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

    /// The dump's bytes (for the indexer's full read of the same graph).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Node → slot.
    pub(crate) fn slots(&self) -> &[u32] {
        self.u32s(DumpHeader::SLOTS_AT, self.head.n)
    }

    /// `count` little-endian u32 from byte `at`; empty if they are not in the dump or not
    /// 4-byte aligned (the layout keeps every region aligned, and maps start on a page).
    fn u32s(&self, at: usize, count: usize) -> &[u32] {
        at.checked_add(count.saturating_mul(4))
            .and_then(|end| self.map.get(at..end))
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
        self.map
            .get(self.head.levels_at + node as usize)
            .map_or(0, |l| *l as usize)
    }

    /// Links of `node` on layer 0.
    fn links0(&self, node: u32) -> &[u32] {
        let h = &self.head;
        let Some(len) = self.map.get(h.levels_at + h.n + node as usize) else {
            return &[];
        };
        let m0 = 2 * h.m;
        let len = (*len as usize).min(m0);
        self.checked(self.u32s(h.links_at + 4 * node as usize * m0, len))
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
        if self.head.n == 0 {
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
        push_exact(res, q, slots, vectors, top)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::hnsw::tests::{build, clustered, exact};
    use crate::hnsw::HnswBuilder;

    fn mapped(bytes: &[u8]) -> Arc<Mmap> {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        // SAFETY: a private temp file, not written again while mapped.
        #[allow(unsafe_code)]
        Arc::new(unsafe { Mmap::map(&f) }.unwrap())
    }

    fn dump(g: &HnswBuilder) -> Vec<u8> {
        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        bytes
    }

    fn top10(
        g: &dyn SearchGraph,
        store: &Vectors,
        q: &[f32],
        ok: &dyn Fn(u32) -> bool,
    ) -> Vec<u32> {
        let mut top = TopK::new(10);
        g.search(q, 64, store, ok, &mut top);
        top.into_sorted().into_iter().map(|(_, s)| s).collect()
    }

    /// Walked in place, a dump finds what an exact scan finds (as often as the copy the
    /// indexer makes from it), with filters.
    #[test]
    fn a_dump_searched_in_place_finds_the_exact_neighbours() {
        let dim = 32;
        let vs = clustered(3_000, dim, 20, 0.3);
        let (b, store) = build(&vs, 7);
        let g = MappedGraph::open(mapped(&dump(&b)), dim, 3_000).unwrap();
        assert_eq!(SearchGraph::len(&g), 3_000);
        assert_eq!(g.slots(), b.slots());
        let frozen = b.freeze();
        let (mut hits, mut frozen_hits, mut odd_hits) = (0, 0, 0);
        for qi in 0..100 {
            let q = &vs[(qi * 31) % vs.len()];
            let want = exact(&vs, q, 10, |_| true);
            hits += top10(&g, &store, q, &|_| true)
                .iter()
                .filter(|s| want.contains(s))
                .count();
            frozen_hits += top10(&frozen, &store, q, &|_| true)
                .iter()
                .filter(|s| want.contains(s))
                .count();
            let odd = |s: u32| s % 2 == 1;
            let got = top10(&g, &store, q, &odd);
            assert!(got.iter().all(|s| odd(*s)));
            let want_odd = exact(&vs, q, 10, odd);
            odd_hits += got.iter().filter(|s| want_odd.contains(s)).count();
        }
        assert!(hits >= 950, "recall@10 {}", hits as f64 / 1000.0);
        assert!(
            hits >= frozen_hits,
            "in place {hits}, frozen copy {frozen_hits}"
        );
        assert!(
            odd_hits >= 950,
            "filtered recall@10 {}",
            odd_hits as f64 / 1000.0
        );
    }

    /// A dump whose crc matched but whose fields are wrong is refused at open with the offset
    /// of the field; a wrong link is read as an empty list, never followed.
    #[test]
    fn bad_dumps_are_refused_or_read_safely() {
        let dim = 8;
        let vs = clustered(300, dim, 5, 0.3);
        let (b, store) = build(&vs, 3);
        let ok = dump(&b);
        let open = |bytes: &[u8], nslots: u32| MappedGraph::open(mapped(bytes), dim, nslots);
        assert!(open(&ok, 300).is_ok());
        // A slot the store does not have.
        assert_eq!(open(&ok, 299).unwrap_err().0 as usize, {
            let i = b.slots().iter().position(|s| *s == 299).unwrap();
            DumpHeader::SLOTS_AT + 4 * i
        });
        // A slot twice.
        let mut dup = ok.clone();
        let at = DumpHeader::SLOTS_AT;
        dup.copy_within(at..at + 4, at + 4);
        assert_eq!(open(&dup, 300).unwrap_err().0 as usize, at + 4);
        // A level above the top, and trailing bytes.
        let head = DumpHeader::parse(&ok, dim).unwrap();
        let mut level = ok.clone();
        level[head.levels_at + 5] = 16;
        assert_eq!(
            open(&level, 300).unwrap_err().0 as usize,
            head.levels_at + 5
        );
        let mut long = ok.clone();
        long.extend_from_slice(&[0; 4]);
        assert_eq!(open(&long, 300).unwrap_err().0 as usize, head.upper_at);
        // The entry node not on the top level.
        let mut entry = ok.clone();
        let low = (0..300).find(|&i| ok[head.levels_at + i] == 0).unwrap();
        entry[32..36].copy_from_slice(&(low as u32).to_le_bytes());
        assert_eq!(open(&entry, 300).unwrap_err().0, 32);
        // The wrong dimension (the header check the full read shares).
        assert_eq!(
            MappedGraph::open(mapped(&ok), dim + 1, 300).unwrap_err().0,
            12
        );

        // Every level-0 link of node 0 pointed past the graph: node 0's list reads as empty,
        // and searches still run and return real slots.
        let mut link = ok.clone();
        let len0 = ok[head.levels_at + 300] as usize;
        assert!(len0 > 0);
        for j in 0..len0 {
            let cell = head.links_at + 4 * j;
            link[cell..cell + 4].copy_from_slice(&5_000u32.to_le_bytes());
        }
        let g = open(&link, 300).unwrap();
        assert!(g.links0(0).is_empty());
        assert_eq!(g.links0(1).len(), ok[head.levels_at + 301] as usize);
        for q in vs.iter().step_by(37) {
            let got = top10(&g, &store, q, &|_| true);
            assert!(!got.is_empty() && got.iter().all(|s| *s < 300));
        }
    }

    use crate::memory::HOLD_DUMP_LOADS;
    use crate::{Config, Layer, Memory, NewRecord, SearchOptions};

    const DIM: usize = 16;

    fn config() -> Config {
        Config {
            dimension: DIM,
            exact_search_below: 0,
            checkpoint_every: 0,
            checkpoint_interval: std::time::Duration::ZERO,
            checkpoint_on_close: false,
            ..Config::default()
        }
    }

    fn record(i: usize, v: &[f32]) -> NewRecord {
        NewRecord::new(format!("record {i}"), v.to_vec())
    }

    /// The store's indexer waits before loading dumps while this lives.
    struct Hold(std::path::PathBuf);
    impl Hold {
        fn new(dir: &std::path::Path) -> Hold {
            HOLD_DUMP_LOADS.lock().push(dir.to_path_buf());
            Hold(dir.to_path_buf())
        }
    }
    impl Drop for Hold {
        fn drop(&mut self) {
            HOLD_DUMP_LOADS.lock().retain(|d| *d != self.0);
        }
    }

    fn quiet(k: usize) -> SearchOptions {
        SearchOptions {
            record_access: false,
            ..SearchOptions::top_k(k)
        }
    }

    /// With the indexer held before it reads the dump, the layer is already searched through
    /// its graph (the dump in place), with the right index state after the replayed delta;
    /// once the indexer runs, its own copy replaces the dump and gives the same answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dump_is_searched_in_place_from_open_until_the_indexer_replaces_it() {
        let tmp = tempfile::tempdir().unwrap();
        let vs = clustered(3_050, DIM, 8, 0.3);
        let m = Memory::open(tmp.path(), config()).await.unwrap();
        let batch = (0..3_000).map(|i| record(i, &vs[i])).collect();
        let mut ids = m.insert_batch(batch).await.unwrap();
        m.wait_indexed().await.unwrap();
        m.checkpoint().await.unwrap();
        // After the snapshot: 10 deletes and 50 inserts, replayed at open.
        for id in &ids[..10] {
            m.delete(*id).await.unwrap();
        }
        let batch = (3_000..3_050).map(|i| record(i, &vs[i])).collect();
        ids.extend(m.insert_batch(batch).await.unwrap());
        drop(m);

        let hold = Hold::new(tmp.path());
        let m = Memory::open(tmp.path(), config()).await.unwrap();
        let st = m.stats();
        assert_eq!(
            st.open.graphs_in_place,
            vec![Layer::Interact],
            "{:?}",
            st.open
        );
        assert!(m.graph_in_place(Layer::Interact));
        let l = &st.layers[0];
        assert!(l.index_ready, "{l:?}");
        assert_eq!(
            (l.records, l.indexed, l.tombstones),
            (3_040, 3_000, 10),
            "{l:?}"
        );
        assert_eq!(l.pending, 50, "the inserts since the snapshot: {l:?}");
        let mut early = Vec::new();
        for (i, v) in vs.iter().enumerate().step_by(7) {
            let hits = m.search(v, &quiet(3)).await.unwrap();
            if i < 10 {
                assert!(
                    hits.iter().all(|h| h.id != ids[i]),
                    "deleted record {i} found"
                );
            } else {
                assert_eq!(hits[0].id, ids[i], "record {i}");
            }
            early.push(hits.iter().map(|h| h.id).collect::<Vec<_>>());
        }
        assert!(m.graph_in_place(Layer::Interact), "still held");

        drop(hold);
        m.wait_indexed().await.unwrap();
        assert!(!m.graph_in_place(Layer::Interact));
        let st = m.stats();
        assert!(st.open.index_rebuilds.is_empty(), "{:?}", st.open);
        assert_eq!(st.layers[0].indexed, 3_050);
        // The builder reads the snapshot's vectors from their maps: it copies only the 50
        // inserted since, until a checkpoint maps those too.
        assert_eq!(m.graph_copies(Layer::Interact), Some(50));
        let mut late = Vec::new();
        for v in vs.iter().step_by(7) {
            let hits = m.search(v, &quiet(3)).await.unwrap();
            late.push(hits.iter().map(|h| h.id).collect::<Vec<_>>());
        }
        let same = early.iter().zip(&late).filter(|(a, b)| a == b).count();
        assert!(
            same * 100 >= early.len() * 95,
            "{same} of {} top-3 lists agree",
            early.len()
        );
        m.checkpoint().await.unwrap();
        assert_eq!(m.graph_copies(Layer::Interact), Some(0));
        m.close().await.unwrap();
    }

    /// A dump whose crc matches but that the indexer's full check refuses (here a node with
    /// more level-0 links than 2M, which the in-place reader caps) is searched in place at
    /// open, then reported, dropped and rebuilt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dump_the_indexer_refuses_is_dropped_and_the_layer_rebuilt() {
        let tmp = tempfile::tempdir().unwrap();
        let vs = clustered(1_100, DIM, 5, 0.3);
        let m = Memory::open(tmp.path(), config()).await.unwrap();
        let batch = (0..1_100).map(|i| record(i, &vs[i])).collect();
        let ids = m.insert_batch(batch).await.unwrap();
        m.wait_indexed().await.unwrap();
        let seq = m.checkpoint().await.unwrap();
        drop(m);
        let snap = tmp
            .path()
            .join("snapshots")
            .join(crate::snapshot::dir_name(seq));
        let path = snap.join("hnsw-interact.graph");
        let mut bytes = std::fs::read(&path).unwrap();
        let head = DumpHeader::parse(&bytes, DIM).unwrap();
        let count_at = head.levels_at + head.n;
        bytes[count_at] = (2 * head.m + 1) as u8;
        std::fs::write(&path, &bytes).unwrap();
        let mut manifest = crate::snapshot::read_manifest(&snap).unwrap();
        let entry = manifest
            .files
            .iter_mut()
            .find(|f| f.name == "hnsw-interact.graph")
            .unwrap();
        entry.crc = crc32fast::hash(&bytes);
        crate::snapshot::write_manifest(&snap, &manifest).unwrap();

        let hold = Hold::new(tmp.path());
        let m = Memory::open(tmp.path(), config()).await.unwrap();
        assert_eq!(m.stats().open.graphs_in_place, vec![Layer::Interact]);
        assert!(m.graph_in_place(Layer::Interact));
        for i in (0..1_100).step_by(50) {
            let hits = m.search(&vs[i], &quiet(1)).await.unwrap();
            assert_eq!(hits[0].id, ids[i], "record {i}, in place");
        }
        drop(hold);
        m.wait_indexed().await.unwrap();
        let st = m.stats();
        assert_eq!(st.open.index_rebuilds.len(), 1, "{:?}", st.open);
        let (layer, why) = &st.open.index_rebuilds[0];
        assert_eq!(*layer, Layer::Interact);
        assert!(
            why.contains("hnsw-interact.graph")
                && why.contains(&format!("offset {count_at}"))
                && why.contains("level-0 links"),
            "{why}"
        );
        assert!(!m.graph_in_place(Layer::Interact));
        assert_eq!(st.layers[0].indexed, 1_100, "rebuilt");
        for i in (0..1_100).step_by(50) {
            let hits = m.search(&vs[i], &quiet(1)).await.unwrap();
            assert_eq!(hits[0].id, ids[i], "record {i}, rebuilt");
        }
        m.close().await.unwrap();
    }
}
