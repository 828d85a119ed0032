#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::disk::sums::BLOCK;
use std::fs::File;

fn rows() -> Vec<Row> {
    rows_n(50)
}

fn rows_n(n: u32) -> Vec<Row> {
    (0..n)
        .filter(|s| s % 7 != 3)
        .map(|s| Row {
            fields: RowFields {
                slot: s,
                id: [s as u8; 16],
                layer: Layer::ALL[s as usize % 3],
                content_hash: u64::from(s) * 77,
                ts_us: 1_000 + u64::from(s),
                inserted_seq: u64::from(s) + 1,
                layer_since_us: 2_000 + u64::from(s),
                rating: (s % 4 == 0).then_some(s as f32 / 10.0),
            },
            body: Body::owned(OwnedBody {
                kind: if s % 2 == 0 {
                    "note".into()
                } else {
                    String::new()
                },
                text: format!("text {s} é ✓ {}", "x".repeat(s as usize)),
                tags: (0..s % 3).map(|t| format!("tag{t}·{s}")).collect(),
                project: (s % 5 != 0).then(|| format!("proj{}", s % 5)),
                session: (s % 3 == 0).then(String::new),
                refs: (0..s % 2).map(|i| [i as u8 + s as u8; 16]).collect(),
            }),
        })
        .collect()
}

/// `load` of the table in `dir` as a manifest entry of `len` bytes and `crc`.
fn load_as(dir: &tempfile::TempDir, len: u64, crc: u32, nslots: u32) -> Result<Arc<RecordTable>> {
    let entry = FileEntry {
        name: "records.bin".into(),
        len,
        crc,
    };
    load(dir.path(), &entry, nslots)
}

fn written(rows: &[Row]) -> (tempfile::TempDir, std::path::PathBuf, u64, u32) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.bin");
    let f = File::create(&path).unwrap();
    let (len, crc, _) = write(f, rows).unwrap();
    (dir, path, len, crc)
}

/// The slot index read back both ways (the callback for a full check, the tight pass of a
/// lazy open) gives each slot's row, layer and layer-since time; each kind of fault in an
/// entry whose file crc matches is refused, naming the file and the entry's offset.
#[test]
fn the_slot_index_reads_back_and_refuses_bad_entries() {
    use crate::disk::slots::{read_slots, write_slots, NO_ROW, SLOT_ENTRY};
    // The tight pass, each slot as its (row, layer, layer-since) or none.
    let slots_from_index = |dir: &Path, e: &FileEntry, rows: u32, nslots: u32| {
        crate::disk::slots::slots_from_index(
            dir,
            e,
            rows,
            nslots,
            |r, l, t| Some((r, l, t)),
            || None,
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slots.bin");
    let rows = rows_n(200);
    let nslots = 205;
    let (len, crc) = write_slots(&path, nslots, &rows).unwrap();
    let entry = |len: u64, crc: u32| FileEntry {
        name: "slots.bin".into(),
        len,
        crc,
    };
    let n = rows.len() as u32;
    let want: Vec<(u32, u32, Layer, u64)> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let f = &r.fields;
            (f.slot, i as u32, f.layer, f.layer_since_us)
        })
        .collect();
    let mut got = Vec::new();
    read_slots(dir.path(), &entry(len, crc), n, nslots, |s, r, l, t| {
        got.push((s, r, l, t))
    })
    .unwrap();
    assert_eq!(got, want);
    let (slots, layers) = slots_from_index(dir.path(), &entry(len, crc), n, nslots).unwrap();
    assert_eq!(slots.len(), nslots as usize);
    let from_slots: Vec<(u32, u32, Layer, u64)> = slots
        .iter()
        .enumerate()
        .filter_map(|(s, slot)| slot.map(|(row, layer, since)| (s as u32, row, layer, since)))
        .collect();
    assert_eq!(from_slots, want);
    for l in Layer::ALL {
        let members: Vec<u32> = layers[l.index()].iter().collect();
        let expect: Vec<u32> = want.iter().filter(|w| w.2 == l).map(|w| w.0).collect();
        assert_eq!(members, expect, "{l}");
        assert_eq!(layers[l.index()].len(), expect.len());
    }

    // Edits with a crc that matches: both readers refuse each, at the entry.
    let good = std::fs::read(&path).unwrap();
    // (slot, byte in its entry, bytes written there, what the error says)
    let no_row = NO_ROW.to_le_bytes();
    let cases: [(usize, usize, &[u8], &str); 5] = [
        (2, 0, &[7], "row 7 out of order"),
        (4, 4, &[3], "unknown layer"),
        (5, 6, &[1], "out of order, or an unknown layer"),
        (3, 9, &[1], "slot 3 has no record but has fields"),
        (0, 0, &no_row, "slot 0 has no record but has fields"),
    ];
    for (slot, byte, bytes, why) in cases {
        let off = HEADER + slot * SLOT_ENTRY;
        let mut b = good.clone();
        b[off + byte..off + byte + bytes.len()].copy_from_slice(bytes);
        std::fs::write(&path, &b).unwrap();
        let e = entry(b.len() as u64, crc32fast::hash(&b));
        let full = read_slots(dir.path(), &e, n, nslots, |_, _, _, _| {}).unwrap_err();
        let fast = slots_from_index(dir.path(), &e, n, nslots).unwrap_err();
        for err in [full.to_string(), fast.to_string()] {
            assert!(
                err.contains("slots.bin")
                    && err.contains(&format!("offset {off}"))
                    && err.contains(why),
                "{err}"
            );
        }
    }
    // A count that differs from the table's rows.
    std::fs::write(&path, &good).unwrap();
    let err = slots_from_index(dir.path(), &entry(len, crc), n + 1, nslots).unwrap_err();
    assert!(err.to_string().contains("rows"), "{err}");
}

#[test]
fn a_table_reads_back_what_was_written() {
    let rows = rows();
    let (dir, _, len, crc) = written(&rows);
    let t = load_as(&dir, len, crc, 50).unwrap();
    assert_eq!(t.len() as usize, rows.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(t.fields(i as u32), r.fields);
        let b = Body::Table(t.clone(), i as u32);
        assert_eq!(b, r.body);
        assert_eq!(b.session(), r.body.session());
        assert!(b.tags().iter().all(|x| b.as_ref().has_tag(x)));
        assert!(!b.as_ref().has_tag("absent"));
    }
    // An empty table is valid too.
    let (dir, _, len, crc) = written(&[]);
    assert_eq!(load_as(&dir, len, crc, 0).unwrap().len(), 0);
}

/// The table, its sums and a `load_lazy` of it (`None`: no `MADV_POPULATE_READ` here).
fn lazy(rows: &[Row], nslots: u32) -> (tempfile::TempDir, PathBuf, Option<Arc<RecordTable>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.bin");
    let (len, crc, sums) = write(File::create(&path).unwrap(), rows).unwrap();
    assert_eq!(sums.len() as u64, len.div_ceil(BLOCK as u64));
    let entry = FileEntry {
        name: "records.bin".into(),
        len,
        crc,
    };
    let t = load_lazy(dir.path(), &entry, sums, nslots).unwrap();
    (dir, path, t)
}

/// A table mapped unread reads back the same, row by row; a damaged byte fails the row
/// that holds it (and only it) on its first read, names the file and offset, and the
/// scrub finds it too.
#[test]
fn a_table_mapped_unread_checks_each_row_on_first_read() {
    let rows = rows_n(3_000);
    let (dir, path, t) = lazy(&rows, 3_000);
    let Some(t) = t else {
        eprintln!("MADV_POPULATE_READ missing: tables are loaded in full here");
        return;
    };
    let expect = |r: &Row| (r.fields.slot, r.fields.layer, r.fields.layer_since_us);
    assert!(t.unchecked() && t.damage().is_none());
    t.scrub_blocks(&|| false).unwrap();
    for (i, r) in rows.iter().enumerate() {
        assert!(t.row_ok(i as u32, expect(r)));
        assert_eq!(t.fields(i as u32), r.fields);
        assert_eq!(Body::Table(t.clone(), i as u32), r.body);
    }
    t.set_rows_checked();
    assert!(!t.unchecked());
    // A row that disagrees with the slot index (another slot, layer or layer-since time)
    // is damage too.
    for wrong in [
        expect(&rows[4]),
        (
            rows[5].fields.slot,
            Layer::Assets,
            rows[5].fields.layer_since_us,
        ),
        (rows[5].fields.slot, rows[5].fields.layer, 7),
    ] {
        if wrong == expect(&rows[5]) {
            continue;
        }
        let (_d, _p, t2) = lazy(&rows, 3_000);
        let t2 = t2.unwrap();
        assert!(!t2.row_ok(5, wrong));
        assert!(t2.damage().unwrap().to_string().contains("slot index"));
    }
    drop(t);
    // One flipped text byte in the middle of the arena: its row fails, a row in another
    // block reads, and the scrub of a fresh map fails too.
    let good = std::fs::read(&path).unwrap();
    let at = good.len() - 40_000;
    let mut b = good.clone();
    b[at] ^= 0x20;
    std::fs::write(&path, &b).unwrap();
    let entry = |bytes: &[u8]| FileEntry {
        name: "records.bin".into(),
        len: bytes.len() as u64,
        crc: crc32fast::hash(&good),
    };
    let sums = crate::disk::sums::block_sums(&good);
    let t = load_lazy(dir.path(), &entry(&b), sums.clone(), 3_000)
        .unwrap()
        .unwrap();
    assert!(t.row_ok(0, expect(&rows[0])), "a row far from the damage");
    let bad = (0..t.len())
        .filter(|r| !t.row_ok(*r, expect(&rows[*r as usize])))
        .collect::<Vec<_>>();
    assert!(!bad.is_empty() && bad.len() < 10, "{bad:?}");
    let e = t.damage().unwrap().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    let t = load_lazy(dir.path(), &entry(&b), sums, 3_000)
        .unwrap()
        .unwrap();
    let e = t.scrub_blocks(&|| false).unwrap_err().to_string();
    assert!(e.contains("records.bin") && e.contains("block"), "{e}");
    // A table checked in full is refused where its block sums disagree with it.
    std::fs::write(&path, &good).unwrap();
    let full = load_as(&dir, good.len() as u64, crc32fast::hash(&good), 3_000).unwrap();
    let mut sums = crate::disk::sums::block_sums(&good);
    full.check_block_sums(&sums, &path).unwrap();
    sums[3] ^= 1;
    let e = full.check_block_sums(&sums, &path).unwrap_err().to_string();
    assert!(e.contains("block 3"), "{e}");
}

#[test]
fn damage_is_an_error_naming_the_file() {
    let rows = rows();
    let (dir, path, len, crc) = written(&rows);
    let good = std::fs::read(&path).unwrap();
    // Any flipped byte: the crc (or the header crc) catches it.
    for at in [0, 9, 61, 64 + 5, 64 + 112 * 3 + 90, good.len() - 1] {
        let mut b = good.clone();
        b[at] ^= 0x40;
        std::fs::write(&path, &b).unwrap();
        let e = load_as(&dir, len, crc, 50).unwrap_err().to_string();
        assert!(e.contains("records.bin"), "{e}");
    }
    // Cut short.
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let e = load_as(&dir, len, crc, 50).unwrap_err().to_string();
    assert!(e.contains("manifest says"), "{e}");
    // A crc-valid table whose row points outside the text: refused, with the row's offset.
    let mut b = good.clone();
    let row3 = HEADER + 3 * ROW;
    b[row3 + at::LENS + 4] = b[row3 + at::LENS + 4].wrapping_add(1);
    std::fs::write(&path, &b).unwrap();
    let crc2 = crc32fast::hash(&b);
    let e = load_as(&dir, len, crc2, 50).unwrap_err().to_string();
    // Row 3's text now overlaps where row 4's strings start: row 4 is named.
    let row4 = row3 + ROW;
    assert!(
        e.contains(&format!("offset {row4}: row 4: string, tag or ref start")),
        "{e}"
    );
    // Slots beyond the snapshot's.
    std::fs::write(&path, &good).unwrap();
    let e = load_as(&dir, len, crc, 20).unwrap_err().to_string();
    assert!(e.contains("slots") || e.contains("beyond"), "{e}");
}

#[test]
fn a_string_split_inside_a_character_is_refused() {
    let rows = vec![Row {
        fields: RowFields {
            slot: 0,
            id: [1; 16],
            layer: Layer::Interact,
            content_hash: 1,
            ts_us: 1,
            inserted_seq: 1,
            layer_since_us: 1,
            rating: None,
        },
        body: Body::owned(OwnedBody {
            kind: "é".into(),
            text: "é".into(),
            ..OwnedBody::default()
        }),
    }];
    let (dir, path, len, _) = written(&rows);
    let mut b = std::fs::read(&path).unwrap();
    // kind 1 byte, text 3 bytes: same total, but the kind ends inside the 'é'.
    b[HEADER + at::LENS..HEADER + at::LENS + 4].copy_from_slice(&1u32.to_le_bytes());
    b[HEADER + at::LENS + 4..HEADER + at::LENS + 8].copy_from_slice(&3u32.to_le_bytes());
    std::fs::write(&path, &b).unwrap();
    let e = load_as(&dir, len, crc32fast::hash(&b), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inside a character"), "{e}");
}
