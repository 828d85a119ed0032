#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::search::{scan_split, tail_part};
use super::*;
use crate::disk::records::{Body, Row};
use crate::util::TopK;
use magray_wal::{AccessSource, Envelope, Event, Inserted};

fn id(n: u8) -> Id {
    [n; 16]
}

fn at(seq: u64, event: Event) -> Envelope {
    Envelope {
        seq,
        ts_us: 1_000 * seq,
        event,
    }
}

fn inserted(n: u8, layer: Layer, text: &str, project: Option<&str>, refs: &[u8]) -> Event {
    Event::Inserted(Inserted {
        id: id(n),
        layer,
        kind: "note".into(),
        text: text.into(),
        embedding: vec![f32::from(n), 1.0],
        tags: Vec::new(),
        project: project.map(String::from),
        session: None,
        refs: refs.iter().map(|r| id(*r)).collect(),
        content_hash: fnv64(text.as_bytes()),
        ts_us: 0,
    })
}

fn promoted(n: u8, from: Layer, to: Layer) -> Event {
    Event::Promoted(vec![magray_wal::Promotion {
        id: id(n),
        from,
        to,
        score: 1.0,
        model_version: 0,
    }])
}

/// The record table a checkpoint of `p` writes, loaded back as open loads it, and the
/// slots open gives its rows.
fn table_of(p: &Projections) -> (tempfile::TempDir, Arc<RecordTable>, Vec<Slot>) {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<Row> = p.records().map(|(s, r)| r.to_row(s)).collect();
    let f = std::fs::File::create(dir.path().join("records.bin")).unwrap();
    let (len, crc, _) = crate::disk::records::write(f, &rows).unwrap();
    let entry = crate::disk::files::FileEntry {
        name: "records.bin".into(),
        len,
        crc,
    };
    let mut slots = vec![Slot::Dead; p.nslots() as usize];
    let table = crate::disk::records::load_each(
        dir.path(),
        &entry,
        p.nslots(),
        |row, slot, layer, layer_since_us| {
            slots[slot as usize] = Slot::Row(RowRef {
                table: 0,
                layer,
                row,
                layer_since_us,
            });
        },
    )
    .unwrap();
    (dir, table, slots)
}

fn rows_in(p: &Projections, t: u8) -> usize {
    let n = p
        .slots
        .iter()
        .filter(|s| matches!(s, Slot::Row(r) if r.table == t))
        .count();
    assert_eq!(n, p.rows_in[t as usize], "the count of rows in table {t}");
    n
}

/// Lookups through a snapshot's key index plus the changes after it agree with maps
/// replayed from the start: through deletes, a move between layers and back, supersedes,
/// an id inserted again after its delete, expiry, and references added and dropped. The
/// snapshot's records are rows of its table, as open loads them; halfway, a checkpoint's
/// table takes their place (unchanged records move to its rows, the first is dropped).
#[test]
fn key_lookups_after_a_snapshot_match_a_full_replay() {
    use Layer::{Assets, Insights, Interact};
    let before = [
        inserted(1, Interact, "alpha", None, &[]),
        inserted(2, Interact, "beta", Some("p"), &[1]),
        inserted(3, Insights, "gamma", None, &[1, 2]),
        inserted(4, Interact, "alpha", None, &[]),
        inserted(5, Assets, "eps", None, &[]),
        Event::Rated {
            id: id(1),
            rating: 0.5,
        },
    ];
    let after = [
        Event::Deleted { id: id(1) },
        promoted(2, Interact, Insights),
        promoted(2, Insights, Interact),
        promoted(4, Interact, Insights),
        inserted(6, Insights, "phi", None, &[1]),
        Event::Superseded {
            old: id(3),
            new: id(6),
        },
        inserted(1, Interact, "alpha", None, &[2]),
        Event::Expired {
            ids: vec![id(5)],
            reason: magray_wal::ExpiryReason::Ttl,
        },
    ];
    let mut full = Projections::new(2);
    let mut seq = 0;
    for e in &before {
        seq += 1;
        full.apply(&at(seq, e.clone())).unwrap();
    }
    // The snapshot: its records, vectors and key index, as a load builds them.
    let mut vectors = Vectors::new(2);
    for slot in 0..full.vectors.len() {
        vectors.push(full.vectors.get(slot));
    }
    let keys = index_keys(
        full.records()
            .map(|(s, r)| (s, r.id, r.layer, r.content_hash, r.body)),
    );
    let (_d0, table, slots) = table_of(&full);
    let mut snap = Projections::from_parts(2, slots, Some(table), None, Some(keys), None, vectors);
    (snap.applied_seq, snap.last_ts_us) = (seq, full.last_ts_us);
    assert_eq!(crate::verify::differ(&snap, &full), None, "as loaded");
    assert_eq!(rows_in(&snap, 0), 5);
    let accessed = Event::Accessed(magray_wal::Accessed {
        source: AccessSource::Get,
        session: None,
        project: None,
        hits: vec![magray_wal::Hit {
            id: id(4),
            rank: 0,
            score: 1.0,
        }],
    });
    let mut tables = Vec::new();
    for (i, e) in std::iter::once(&accessed).chain(&after).enumerate() {
        seq += 1;
        full.apply(&at(seq, e.clone())).unwrap();
        snap.apply(&at(seq, e.clone())).unwrap();
        assert_eq!(crate::verify::differ(&snap, &full), None, "after {e:?}");
        if i == 4 {
            // A checkpoint. At its capture 3 and 5 are rows of the first table, 2 and 4
            // are owned (both moved between layers; 4 has statistics), 1 is gone and 6
            // is not inserted yet; then, before the repoint, 2 is rated.
            let (d1, t1, _) = table_of(&snap);
            seq += 1;
            let rated = Event::Rated {
                id: id(2),
                rating: 0.25,
            };
            full.apply(&at(seq, rated.clone())).unwrap();
            snap.apply(&at(seq, rated)).unwrap();
            let mut old = Replaced::default();
            let t = snap.repoint_begin(&t1, &mut old);
            assert_eq!(t, Some(1));
            snap.repoint(&t1, t, 0..t1.len(), &mut old);
            assert_eq!(old.slots.len(), 1, "owned records that became rows");
            assert_eq!(old.bodies.len(), 1, "owned records given the row's body");
            snap.repoint_end(&mut old);
            assert_eq!((old.tables.len(), rows_in(&snap, 0)), (1, 0));
            assert_eq!(rows_in(&snap, 1), 3);
            assert!(snap.tables[0].is_none() && snap.tables[1].is_some());
            let (s2, s4) = (snap.slot_of(&id(2)).unwrap(), snap.slot_of(&id(4)).unwrap());
            assert!(matches!(&snap.slots[s2 as usize], Slot::Owned(r)
                    if matches!(r.body, Body::Table(_, _)) && r.rating == Some(0.25)));
            // Its statistics do not keep a record from being a row.
            assert!(matches!(&snap.slots[s4 as usize], Slot::Row(r) if r.table == 1));
            assert!(snap.live(s4).is_some_and(|r| r.stats().count == 1));
            assert_eq!(
                crate::verify::differ(&snap, &full),
                None,
                "after the repoint"
            );
            tables.push((d1, t1));
        }
    }
    for p in [&snap, &full] {
        // The first "alpha" died; the other one moved to Insights; the id came back.
        assert_eq!(p.slot_of(&id(1)), Some(6));
        assert_eq!(
            p.find_duplicate("alpha", fnv64(b"alpha"), Interact, None, 0),
            Some(id(1))
        );
        assert_eq!(
            p.find_duplicate("alpha", fnv64(b"alpha"), Insights, None, 0),
            Some(id(4))
        );
        assert_eq!(
            p.find_duplicate("beta", fnv64(b"beta"), Interact, Some("p"), 0),
            Some(id(2))
        );
        assert_eq!(
            p.find_duplicate("beta", fnv64(b"beta"), Insights, Some("p"), 0),
            None
        );
        assert_eq!((p.slot_of(&id(3)), p.slot_of(&id(5))), (None, None));
        // References to 1: from 2 and 6 (3 is gone); to 2: from the new 1 only.
        assert_eq!((p.refs_in(&id(1)), p.refs_in(&id(2))), (2, 1));
    }
    // An access only one of them saw is a difference, on a row (4) as on an owned
    // record (the new 1).
    let hit = |n: u8| {
        Event::Accessed(magray_wal::Accessed {
            source: AccessSource::Get,
            session: None,
            project: None,
            hits: vec![magray_wal::Hit {
                id: id(n),
                rank: 0,
                score: 1.0,
            }],
        })
    };
    assert!(matches!(
        &snap.slots[snap.slot_of(&id(4)).unwrap() as usize],
        Slot::Row(_)
    ));
    snap.apply(&at(seq + 1, hit(4))).unwrap();
    assert!(crate::verify::differ(&snap, &full).is_some());
    full.apply(&at(seq + 1, hit(4))).unwrap();
    assert_eq!(crate::verify::differ(&snap, &full), None);
    snap.apply(&at(seq + 2, hit(1))).unwrap();
    full.apply(&at(seq + 2, hit(2))).unwrap();
    assert!(crate::verify::differ(&snap, &full).is_some());
}

#[test]
fn a_split_scan_finds_what_one_thread_finds() {
    let mut members = SlotSet::default();
    // Gaps, a dense run, and ties (many equal scores: the lower slot must win).
    for s in (0..300_000u32).filter(|s| s % 7 != 3) {
        members.insert(s);
    }
    let score = |slot: u32| ((slot.wrapping_mul(2_654_435_761) >> 8) % 5_000) as f32;
    let exact = |slot: u32, top: &mut TopK| {
        if !slot.is_multiple_of(11) {
            top.push(score(slot), slot);
        }
    };
    // Slots in a narrow range of a large bitset still split evenly.
    let mut narrow = SlotSet::default();
    for s in 1_000_000..1_100_000u32 {
        narrow.insert(s);
    }
    let sizes: Vec<usize> = (0..4).map(|i| narrow.iter_part(i, 4).count()).collect();
    assert!(
        sizes.iter().all(|c| (24_900..=25_100).contains(c)),
        "{sizes:?}"
    );
    // The points a frozen graph lacks, in parts that cross from one list to the other.
    let unfrozen: Vec<u32> = (0..1_000).collect();
    let pending: VecDeque<u32> = (5_000..5_007).collect();
    for n in [1, 2, 3, 4, 7, 1_007, 2_000] {
        let parts: Vec<u32> = (0..n)
            .flat_map(|i| tail_part(&unfrozen, &pending, i, n))
            .collect();
        let all: Vec<u32> = unfrozen.iter().chain(&pending).copied().collect();
        assert_eq!(parts, all, "{n} parts");
    }
    let mut one = TopK::new(100);
    members.iter().for_each(|s| exact(s, &mut one));
    let one = one.into_sorted();
    for threads in [2, 3, 8] {
        for n in [1, 2, 3, 5] {
            let parts: Vec<u32> = (0..n).flat_map(|i| members.iter_part(i, n)).collect();
            assert_eq!(parts, members.iter().collect::<Vec<_>>(), "{n} parts");
        }
        let mut split = TopK::new(100);
        split.push(4_999.5, 1); // already in `top` from another layer
        scan_split(
            threads,
            members.len(),
            |i, n| members.iter_part(i, n),
            &exact,
            &mut split,
        );
        let mut want = TopK::new(100);
        want.push(4_999.5, 1);
        one.iter().for_each(|(sc, s)| want.push(*sc, *s));
        assert_eq!(split.into_sorted(), want.into_sorted(), "{threads} threads");
    }
}

/// The records a frozen graph lacks (here 1,500 pending beside a 1,500-point graph) are
/// scored on their tail codes, then their best exactly: a search finds the exact top 10 of
/// the whole store, with the scores of an exact scan.
#[test]
fn a_search_finds_the_records_its_graph_lacks() {
    let dim = 32;
    let vs = crate::index::hnsw::tests::clustered(3_000, dim, 30, 0.6);
    let mut p = Projections::new(dim);
    for (i, v) in vs.iter().enumerate() {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&(i as u32).to_le_bytes());
        let e = Event::Inserted(Inserted {
            id,
            layer: Layer::Assets,
            kind: "note".into(),
            text: format!("record {i}"),
            embedding: v.clone(),
            tags: Vec::new(),
            project: None,
            session: None,
            refs: Vec::new(),
            content_hash: i as u64,
            ts_us: 0,
        });
        p.apply(&at(i as u64 + 1, e)).unwrap();
    }
    assert_eq!(p.index.tail.len(), 3_000);
    let mut g = crate::index::hnsw::HnswBuilder::new(dim, 16, 100, 1);
    for (i, v) in vs.iter().enumerate().take(1_500) {
        g.insert(i as u32, v);
    }
    let slots: Vec<u32> = (0..1_500).collect();
    p.set_index_slots(&slots);
    p.index.frozen = Some(Arc::new(g.freeze()));
    p.recompute_pending();
    assert_eq!(p.index.pending.len(), 1_500);
    // The codes of the slots the graph holds are dropped; the tail's are kept.
    assert!(p.index.tail.get(0).is_none() && p.index.tail.get(1_500).is_some());
    let o = crate::SearchOptions::top_k(10);
    let probe = super::search::Probe {
        ef: 20,
        scale_ef: false,
        exact_below: 0,
        now_us: 0,
    };
    for qi in 0..100 {
        let q = &vs[(qi * 29 + 7) % vs.len()];
        let mut top = TopK::new(10);
        p.search_layers(&[], q, &o, probe, &mut top);
        let got = top.into_sorted();
        let mut exact = TopK::new(10);
        for (s, v) in vs.iter().enumerate() {
            exact.push(crate::index::distance::dot(q, v), s as u32);
        }
        let want = exact.into_sorted();
        // The tail's share of the truth is found in full, each scored exactly.
        for (score, slot) in want.iter().filter(|(_, s)| *s >= 1_500) {
            assert!(
                got.iter().any(|(g, s)| s == slot && g == score),
                "query {qi}: tail slot {slot} ({score}) missing from {got:?}"
            );
        }
        assert!(got.len() == 10);
    }
}
