#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::disk::files::crc_populated;
use crate::{Config, Memory, NewRecord};

/// Rewrites the snapshot in `dir` as format 5 wrote it: as format 6, without the record
/// table's block sums and slot index.
fn downgrade_to_format_5(dir: &Path) {
    downgrade_to_format_6(dir);
    downgrade(dir, 5, |_| {
        vec![sums::sums_name(RECORDS_FILE), SLOTS_FILE.to_string()]
    });
}

/// Rewrites the snapshot in `dir` as format 4 wrote it: no block sums files.
fn downgrade_to_format_4(dir: &Path) {
    downgrade_to_format_5(dir);
    downgrade(dir, 4, |m| {
        let sums: Vec<String> = m.chunks.iter().map(|c| sums::sums_name(c)).collect();
        assert!(!sums.is_empty());
        sums
    });
}

/// Rewrites the snapshot in `dir` as format 3 wrote it: no `keys.bin`.
fn downgrade_to_format_3(dir: &Path) {
    downgrade_to_format_4(dir);
    downgrade(dir, 3, |_| vec![KEYS_FILE.to_string()]);
}

/// Rewrites the snapshot in `dir` as format 2 wrote it: `records.zst` instead of
/// `records.bin`, no `keys.bin`, and a format-2 MANIFEST.
fn downgrade_to_format_2(dir: &Path, dim: usize) {
    downgrade_to_format_3(dir);
    let loaded = load(dir, dim, Check::Full).unwrap();
    let records = loaded
        .projections
        .records()
        .map(|(slot, r)| SnapRecord {
            slot,
            id: r.id,
            layer: r.layer,
            kind: r.body.kind().into(),
            text: r.body.text().into(),
            tags: r.body.tags().into_iter().map(String::from).collect(),
            project: r.body.project().map(String::from),
            session: r.body.session().map(String::from),
            refs: r.body.refs(),
            content_hash: r.content_hash,
            ts_us: r.ts_us,
            inserted_seq: r.inserted_seq,
            layer_since_us: r.layer_since_us,
            rating: r.rating,
        })
        .collect();
    let zst = zstd::bulk::compress(&encode(&Records { records }).unwrap(), 1).unwrap();
    let entry = write_file(&dir.join("records.zst"), &zst).unwrap();
    std::fs::remove_file(dir.join(RECORDS_FILE)).unwrap();
    let mut m = loaded.manifest;
    m.files.retain(|f| f.name != RECORDS_FILE);
    m.files.push(entry);
    write_legacy(dir, 2, m, Vec::new());
}

/// Rewrites the block sums file of `name` in the snapshot `dir` with its last sum wrong,
/// and its manifest entry to match (as if the writer had been wrong).
fn spoil_last_sum(dir: &Path, name: &str) {
    let sums = sums::sums_name(name);
    let mut b = std::fs::read(dir.join(&sums)).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x10;
    std::fs::write(dir.join(&sums), &b).unwrap();
    let mut m = read_manifest(dir).unwrap();
    let e = m.files.iter_mut().find(|f| f.name == sums).unwrap();
    e.crc = crc32fast::hash(&b);
    write_manifest(dir, &m).unwrap();
}

/// A full check (`verify`, backups, an open after damage) refuses block sums that
/// disagree with a file whose crc32 matches, naming the file: for the key index the
/// snapshot fails to load, for a graph dump `check_dumps` (and so `verify`) fails. A lazy
/// open checks only the blocks it reads (the last one here, later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_check_refuses_block_sums_that_disagree_with_their_file() {
    let dim = 8;
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        dimension: dim,
        checkpoint_on_close: false,
        ..Config::default()
    };
    let m = Memory::open(tmp.path(), config).await.unwrap();
    let batch = (0..300)
        .map(|i| NewRecord::new(format!("record {i}"), vector(i, dim)))
        .collect();
    m.insert_batch(batch).await.unwrap();
    m.wait_indexed().await.unwrap();
    let seq = m.checkpoint().await.unwrap();
    drop(m);
    let snap = tmp.path().join("snapshots").join(dir_name(seq));
    let graph = "hnsw.graph";
    assert!(snap.join(graph).exists());
    check_dumps(&snap, &read_manifest(&snap).unwrap()).unwrap();

    spoil_last_sum(&snap, KEYS_FILE);
    let err = load(&snap, dim, Check::Full).err().unwrap().to_string();
    assert!(err.contains(KEYS_FILE) && err.contains("checksum"), "{err}");
    assert!(load(&snap, dim, Check::Blocks).is_ok());

    spoil_last_sum(&snap, graph);
    let err = check_dumps(&snap, &read_manifest(&snap).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains(graph) && err.contains("checksum"), "{err}");
    let report = crate::verify::verify(tmp.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&snap.display().to_string())),
        "{:?}",
        report.problems
    );
}

/// Pages that cannot be read (here: cut off the file after it was mapped, which a plain
/// read through the map answers with SIGBUS) are an error that names the file.
#[cfg(target_os = "linux")]
#[test]
fn an_unreadable_mapped_page_is_an_error_not_a_signal() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vectors-0000000000-0000000001.f32");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.set_len(40 << 20).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: test file, cut short on purpose below; only read through crc_populated.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    f.set_len(20 << 20).unwrap();
    let err = match crc_populated(&path, &map) {
        Err(e) => e.to_string(),
        // A kernel without MADV_POPULATE_READ (before 5.14): open reads with read().
        Ok(None) => {
            eprintln!("MADV_POPULATE_READ is not available here; the read() path is used");
            return;
        }
        Ok(Some(crc)) => panic!("a file cut short under its map gave crc {crc:x}"),
    };
    assert!(
        err.contains("vectors-0000000000-0000000001.f32") && err.contains("offset 16777216"),
        "{err}"
    );
}

fn vector(i: usize, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim)
        .map(|d| ((i * 31 + d * 7) % 17) as f32 - 8.0)
        .collect();
    v[i % dim] += 20.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

#[tokio::test]
async fn a_format_2_snapshot_still_opens_and_the_next_checkpoint_writes_the_current_format() {
    older_snapshot_opens(2).await;
}

#[tokio::test]
async fn a_format_3_snapshot_still_opens_and_the_next_checkpoint_writes_the_current_format() {
    older_snapshot_opens(3).await;
}

#[tokio::test]
async fn a_format_4_snapshot_still_opens_and_the_next_checkpoint_writes_the_current_format() {
    older_snapshot_opens(4).await;
}

#[tokio::test]
async fn a_format_5_snapshot_still_opens_and_the_next_checkpoint_writes_the_current_format() {
    older_snapshot_opens(5).await;
}

#[tokio::test]
async fn a_format_6_snapshot_still_opens_and_the_next_checkpoint_writes_the_current_format() {
    older_snapshot_opens(6).await;
}

/// A snapshot downgraded to `format` opens with the same records; identical inserts and
/// reference counts still resolve through the keys built at open; the next checkpoint
/// writes the current format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_7_snapshot_still_opens_and_the_next_checkpoint_writes_the_current_format() {
    older_snapshot_opens(7).await;
}

async fn older_snapshot_opens(format: u32) {
    let dim = 8;
    let tmp = tempfile::tempdir().unwrap();
    let config = || Config {
        dimension: dim,
        checkpoint_every: 0,
        checkpoint_interval: std::time::Duration::ZERO,
        checkpoint_on_close: false,
        ..Config::default()
    };
    let m = Memory::open(tmp.path(), config()).await.unwrap();
    let mut first = None;
    for i in 0..30 {
        let mut r = NewRecord::new(format!("record {i} ✓"), vector(i, dim))
            .layer(crate::Layer::ALL[i % 3])
            .kind(if i % 2 == 0 { "note" } else { "fact" })
            .tag(format!("t{}", i % 4));
        if i % 3 == 0 {
            r = r.project("p").session(format!("s{i}"));
        }
        if let Some(f) = first {
            r = r.refers_to(f);
        }
        let id = m.insert(r).await.unwrap();
        first.get_or_insert(id);
    }
    m.rate(first.unwrap(), 0.5).await.unwrap();
    let seq = m.checkpoint().await.unwrap();
    let before = m.records(None).unwrap();
    drop(m);
    let snap = tmp.path().join("snapshots").join(dir_name(seq));
    match format {
        2 => downgrade_to_format_2(&snap, dim),
        3 => downgrade_to_format_3(&snap),
        4 => downgrade_to_format_4(&snap),
        5 => downgrade_to_format_5(&snap),
        6 => downgrade_to_format_6(&snap),
        7 => downgrade_to_format_7(&snap),
        _ => downgrade_to_format_8(&snap),
    }
    assert_eq!(read_manifest(&snap).unwrap().format, format);

    let m = Memory::open(tmp.path(), config()).await.unwrap();
    let st = m.stats();
    assert_eq!(st.open.snapshot_seq, Some(seq), "{:?}", st.open);
    assert!(st.open.snapshots_rejected.is_empty(), "{:?}", st.open);
    assert_eq!(m.records(None).unwrap(), before);
    // The keyword index: built from the records before format 8, read from the snapshot after.
    let words = crate::SearchOptions {
        mode: crate::SearchMode::Keyword,
        record_access: false,
        ..crate::SearchOptions::top_k(3)
    };
    let hits = m
        .search_hybrid("record 4", &vector(4, dim), &words)
        .await
        .unwrap();
    assert_eq!(hits[0].id, before[4].id);
    let refs = |snap: &Path| {
        load(snap, dim, Check::Blocks)
            .unwrap()
            .projections
            .refs_in(&first.unwrap().0)
    };
    assert_eq!(refs(&snap), 29);
    // An identical insert resolves to the loaded record.
    let again = NewRecord::new("record 4 ✓", vector(4, dim))
        .layer(crate::Layer::ALL[4 % 3])
        .kind("note")
        .tag("t0");
    assert_eq!(m.insert(again).await.unwrap(), before[4].id);
    m.insert(NewRecord::new("one more", vector(99, dim)))
        .await
        .unwrap();
    let next = m.checkpoint().await.unwrap();
    drop(m);
    let snap = tmp.path().join("snapshots").join(dir_name(next));
    assert_eq!(
        read_manifest(&snap).unwrap().format,
        SNAPSHOT_FORMAT_VERSION
    );
    assert!(snap.join(RECORDS_FILE).exists());
    assert!(snap.join(KEYS_FILE).exists());
    assert!(snap.join(KEYWORDS_FILE).exists());
    // The old chunk, linked, got its block sums (written from it, once); the new one too.
    let manifest = read_manifest(&snap).unwrap();
    assert_eq!(manifest.chunks.len(), 2);
    for c in &manifest.chunks {
        let s = sums::sums_name(c);
        assert!(manifest.files.iter().any(|f| f.name == s), "{s} listed");
        assert!(snap.join(&s).exists(), "{s} written");
    }
    let m = Memory::open(tmp.path(), config()).await.unwrap();
    assert_eq!(m.stats().open.snapshot_seq, Some(next));
    assert_eq!(refs(&snap), 29);
    let after = m.records(None).unwrap();
    assert_eq!(after.len(), 31);
    assert_eq!(after[..30], before[..]);
}
