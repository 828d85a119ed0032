#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::index::hnsw::tests::{build, clustered, exact};
use crate::index::hnsw::HnswBuilder;

/// A dump read in place, checked in full (as a dump from before block sums).
fn mapped(bytes: &[u8]) -> InPlace {
    let mut f = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
    // SAFETY: a private temp file, not written again while mapped.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    InPlace::new("test.graph".into(), map, None)
}

fn dump(g: &HnswBuilder) -> Vec<u8> {
    let mut bytes = Vec::new();
    g.write_to(&mut bytes).unwrap();
    bytes
}

fn top10(g: &dyn SearchGraph, store: &Vectors, q: &[f32], ok: &dyn Fn(u32) -> bool) -> Vec<u32> {
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

use crate::engine::HOLD_DUMP_LOADS;
use crate::{Config, Memory, NewRecord, SearchOptions};

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
    assert!(st.open.graph_in_place, "{:?}", st.open);
    assert!(m.graph_in_place());
    let l = &st.index;
    assert!(l.ready, "{l:?}");
    assert_eq!(
        (st.layers[0].records, l.indexed, l.tombstones),
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
    assert!(m.graph_in_place(), "still held");

    drop(hold);
    m.wait_indexed().await.unwrap();
    assert!(!m.graph_in_place());
    let st = m.stats();
    assert!(st.open.index_rebuilds.is_empty(), "{:?}", st.open);
    assert_eq!(st.index.indexed, 3_050);
    // The builder reads the snapshot's vectors from their maps: it copies only the 50
    // inserted since, until a checkpoint maps those too.
    assert_eq!(m.graph_copies(), Some(50));
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
    assert_eq!(m.graph_copies(), Some(0));
    m.close().await.unwrap();
}

/// A store of 1,100 indexed records and a snapshot of them: its directory, the vectors,
/// the ids and the snapshot's directory.
async fn indexed_1100() -> (
    tempfile::TempDir,
    Vec<Vec<f32>>,
    Vec<crate::RecordId>,
    std::path::PathBuf,
) {
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
    (tmp, vs, ids, snap)
}

/// Deletes replayed onto a snapshot's graph count as its tombstones when the dump is
/// searched in place (its own slot list is the index). A dump that cannot be mapped at open
/// because its block sums file is damaged (the replay runs with no index slots): searches
/// scan exactly, then the indexer's full read (which checks the sums too) reports the sums
/// file and rebuilds the graph from the live records alone. A format-8 snapshot (one graph
/// per layer, not used by this version): the same, with the format as the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_replayed_onto_a_dump_count_the_same_whatever_the_format() {
    for case in ["format 9", "format 8", "format 9, sums damaged"] {
        let (tmp, vs, ids, snap) = indexed_1100().await;
        let m = Memory::open(tmp.path(), config()).await.unwrap();
        for id in &ids[..50] {
            m.delete(*id).await.unwrap();
        }
        drop(m); // no close: the deletes are in the log only
        let sums = snap.join("hnsw.graph.sums");
        match case {
            "format 8" => crate::snapshot::downgrade_to_format_8(&snap),
            "format 9" => {}
            _ => {
                let mut b = std::fs::read(&sums).unwrap();
                let last = b.len() - 1;
                b[last] ^= 1;
                std::fs::write(&sums, &b).unwrap();
            }
        }
        let hold = Hold::new(tmp.path());
        let m = Memory::open(tmp.path(), config()).await.unwrap();
        let in_place = case == "format 9";
        assert_eq!(m.graph_in_place(), in_place, "{case}");
        if in_place {
            let l = &m.stats().index;
            assert_eq!((l.indexed, l.tombstones), (1_100, 50), "{case}, in place");
        }
        for i in (0..1_100).step_by(25) {
            let hits = m.search(&vs[i], &quiet(1)).await.unwrap();
            if i < 50 {
                assert!(hits.iter().all(|h| h.id != ids[i]), "{case}: {i} deleted");
            } else {
                assert_eq!(hits[0].id, ids[i], "{case}: record {i}");
            }
        }
        drop(hold);
        m.wait_indexed().await.unwrap();
        let st = m.stats();
        let (l, records) = (&st.index, st.layers[0].records);
        if in_place {
            assert!(st.open.index_rebuilds.is_empty(), "{case}: {:?}", st.open);
            assert_eq!(
                (records, l.indexed, l.tombstones, l.pending),
                (1_050, 1_100, 50, 0),
                "{case}"
            );
        } else {
            let why = &st.open.index_rebuilds;
            let expect = if case == "format 8" {
                "snapshot format 8 kept one graph per layer"
            } else {
                "hnsw.graph.sums"
            };
            assert!(
                why.len() == 1 && why[0].contains(expect),
                "{case}: {:?}",
                st.open
            );
            assert_eq!(
                (records, l.indexed, l.tombstones, l.pending),
                (1_050, 1_050, 0, 0),
                "{case}: rebuilt"
            );
        }
        m.close().await.unwrap();
    }
}

/// The graph dump in the snapshot `snap`: its path, bytes and header.
fn store_dump(snap: &std::path::Path) -> (std::path::PathBuf, Vec<u8>, DumpHeader) {
    let path = snap.join("hnsw.graph");
    let bytes = std::fs::read(&path).unwrap();
    let head = DumpHeader::parse(&bytes, DIM).unwrap();
    (path, bytes, head)
}

/// Writes `bytes` as the graph dump of the snapshot `snap`, with block sums
/// and manifest entries that match (as if the writer had written them).
fn rewrite_with_sums(snap: &std::path::Path, bytes: &[u8]) {
    let path = snap.join("hnsw.graph");
    std::fs::write(&path, bytes).unwrap();
    let sums = crate::disk::sums::block_sums(bytes);
    let (slen, scrc) = crate::disk::sums::write_sums(&path, bytes.len() as u64, &sums).unwrap();
    let mut manifest = crate::snapshot::read_manifest(snap).unwrap();
    for f in &mut manifest.files {
        if f.name == "hnsw.graph" {
            f.crc = crc32fast::hash(bytes);
        } else if f.name == "hnsw.graph.sums" {
            (f.len, f.crc) = (slen, scrc);
        }
    }
    crate::snapshot::write_manifest(snap, &manifest).unwrap();
}

/// Level-0 links damaged (a block against its sum; open does not read them): the walk
/// that reads them gives up the graph, so searches scan the layer exactly and miss
/// nothing; the indexer names the file and offset and rebuilds the layer's graph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_links_found_by_a_walk_are_searched_around_and_rebuilt() {
    let (tmp, vs, ids, snap) = indexed_1100().await;
    let (path, mut bytes, head) = store_dump(&snap);
    // A flipped bit in every block of nothing but level-0 links: whichever a walk reads
    // is damaged (a block shared with what open reads would fail the open's check).
    let block = crate::disk::sums::BLOCK;
    let first = head.links_at.div_ceil(block) * block;
    for at in (first..head.upper_at / block * block).step_by(block) {
        bytes[at] ^= 0x40;
    }
    std::fs::write(&path, &bytes).unwrap();

    let why = searched_in_place_then_rebuilt(tmp.path(), &vs, &ids).await;
    // The first damaged block a walk read.
    let named = (first..head.upper_at / block * block)
        .step_by(block)
        .any(|at| why.contains(&format!("offset {at}: checksum mismatch in block")));
    assert!(why.contains("hnsw.graph") && named, "{why}");
}

/// Opens the store in `dir` with the graph dump searched in place (dump loads
/// held), checks that searches for `vs` find `ids`, lets the indexer load the dump, which
/// it must refuse: the layer is rebuilt and searches find them again. Returns why it was
/// refused.
async fn searched_in_place_then_rebuilt(
    dir: &std::path::Path,
    vs: &[Vec<f32>],
    ids: &[crate::RecordId],
) -> String {
    let hold = Hold::new(dir);
    let m = Memory::open(dir, config()).await.unwrap();
    assert!(m.stats().open.graph_in_place);
    for i in (0..1_100).step_by(50) {
        let hits = m.search(&vs[i], &quiet(1)).await.unwrap();
        assert_eq!(hits[0].id, ids[i], "record {i}, in place");
    }
    drop(hold);
    m.wait_indexed().await.unwrap();
    let st = m.stats();
    assert_eq!(st.open.index_rebuilds.len(), 1, "{:?}", st.open);
    let why = st.open.index_rebuilds[0].clone();
    assert!(!m.graph_in_place());
    assert_eq!(st.index.indexed, 1_100, "rebuilt");
    for i in (0..1_100).step_by(50) {
        let hits = m.search(&vs[i], &quiet(1)).await.unwrap();
        assert_eq!(hits[0].id, ids[i], "record {i}, rebuilt");
    }
    m.close().await.unwrap();
    why
}

/// A dump whose crc matches but that the indexer's full check refuses (here a node with
/// more level-0 links than 2M, which the in-place reader caps) is searched in place at
/// open, then reported, dropped and rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_the_indexer_refuses_is_dropped_and_the_layer_rebuilt() {
    let (tmp, vs, ids, snap) = indexed_1100().await;
    let (_, mut bytes, head) = store_dump(&snap);
    let count_at = head.levels_at + head.n;
    bytes[count_at] = (2 * head.m + 1) as u8;
    rewrite_with_sums(&snap, &bytes);

    let why = searched_in_place_then_rebuilt(tmp.path(), &vs, &ids).await;
    assert!(
        why.contains("hnsw.graph")
            && why.contains(&format!("offset {count_at}"))
            && why.contains("level-0 links"),
        "{why}"
    );
}
