#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::disk::sums::{parse_sums, write_sums_of};
use crate::engine::HOLD_DUMP_LOADS;
use crate::{Config, Memory, NewRecord, SearchOptions};

const DIM: usize = 16;

/// A distinct unit vector per `i`.
fn vector(i: usize) -> Vec<f32> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    v[i % DIM] += 1.0;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn flip(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

/// A chunk of `n` vectors written with its sums, then damaged at byte `damage`, mapped
/// with its sums as open maps it.
fn lazy_chunk(dir: &Path, n: usize, damage: Option<usize>) -> (PathBuf, Vectors) {
    let data: Vec<f32> = (0..n).flat_map(vector).collect();
    let path = dir.join(chunk_name(0, n as u32));
    let ((len, _), _) = write_chunk(&path, DIM, 0, bytemuck::cast_slice(&data)).unwrap();
    if let Some(at) = damage {
        flip(&path, at);
    }
    let spath = path.with_file_name(sums_name(&chunk_name(0, n as u32)));
    let sums = parse_sums(&spath, &std::fs::read(&spath).unwrap(), len).unwrap();
    let f = File::open(&path).unwrap();
    // SAFETY: test file, not changed while mapped.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&f) }.unwrap();
    let v = Vectors::from_chunks(DIM, vec![(path.clone(), map, Some(sums))], n as u32).unwrap();
    (path, v)
}

/// Each block is checked on its first read: a damaged one reads as zeros and is noted with
/// the file and the block's offset; the other blocks read as written; the scrub stops at
/// the damage.
#[test]
fn a_damaged_block_is_found_by_the_first_read_of_it_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    // 64 vectors of 64 bytes per 4 KiB block; 300 vectors span 5 blocks.
    let (path, v) = lazy_chunk(tmp.path(), 300, Some(2 * BLOCK + 100));
    assert!(v.unchecked());
    assert_eq!(v.get(3), &vector(3)[..]);
    assert_eq!(v.get(299), &vector(299)[..]);
    assert!(v.damage().is_none());
    // Slot 127 spans blocks 1 and 2 (bytes 64 + 127 × 64 = 8192 − 64 ..).
    let bad = (2 * BLOCK - HEADER_LEN) / (DIM * 4);
    assert_eq!(v.get(bad as u32), &[0.0; DIM][..]);
    let e = v.damage().unwrap().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains(&format!("offset {}", 2 * BLOCK)),
        "{e}"
    );
    assert!(e.contains("block 2"), "{e}");
    // Still damaged, still named; a good block still reads.
    assert_eq!(v.get(bad as u32 + 1), &[0.0; DIM][..]);
    assert_eq!(v.get(10), &vector(10)[..]);
    let scrub = v.scrub(&|| false).unwrap_err().to_string();
    assert_eq!(scrub, e);
    assert!(v.unchecked());
}

#[test]
fn the_scrub_checks_every_block_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, v) = lazy_chunk(tmp.path(), 1_000, None);
    assert!(v.unchecked());
    v.scrub(&|| false).unwrap();
    assert!(!v.unchecked());
    assert!(v.damage().is_none());
    for i in (0..1_000).step_by(97) {
        assert_eq!(v.get(i as u32), &vector(i)[..]);
    }
    // Found by the scrub, before any read.
    let (path, v) = lazy_chunk(tmp.path(), 1_000, Some(14 * BLOCK + 3));
    let e = v.scrub(&|| false).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains(&format!("offset {}", 14 * BLOCK)),
        "{e}"
    );
}

#[test]
fn block_sums_of_another_chunk_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data: Vec<f32> = (0..100).flat_map(vector).collect();
    let path = tmp.path().join(chunk_name(0, 100));
    let ((len, crc), _) = write_chunk(&path, DIM, 0, bytemuck::cast_slice(&data)).unwrap();
    let spath = path.with_file_name(sums_name(&chunk_name(0, 100)));
    let bytes = std::fs::read(&spath).unwrap();
    let e = parse_sums(&spath, &bytes, len + 64)
        .unwrap_err()
        .to_string();
    assert!(e.contains(".sums") && e.contains("offset 12"), "{e}");
    let e = parse_sums(&spath, &bytes[..bytes.len() - 4], len)
        .unwrap_err()
        .to_string();
    assert!(e.contains("header says"), "{e}");
    // Sums written from the chunk as read match the ones written with it...
    let other = tmp.path().join("copy");
    std::fs::create_dir(&other).unwrap();
    let copy = other.join(chunk_name(0, 100));
    std::fs::copy(&path, &copy).unwrap();
    write_sums_of(&copy, len, crc).unwrap();
    assert_eq!(
        std::fs::read(copy.with_file_name(sums_name(&chunk_name(0, 100)))).unwrap(),
        bytes
    );
    // ... and a chunk that no longer matches its manifest crc gets none.
    flip(&copy, 500);
    let e = write_sums_of(&copy, len, crc).unwrap_err().to_string();
    assert!(e.contains("checksum mismatch"), "{e}");
}

/// A closed store in `dir` with records 0..300 in one snapshot: their ids, and the
/// snapshot's directory.
async fn store_of_300(dir: &Path) -> (Vec<crate::RecordId>, PathBuf) {
    let m = Memory::open(dir, config()).await.unwrap();
    let batch = (0..300)
        .map(|i| NewRecord::new(format!("record {i}"), vector(i)))
        .collect();
    let ids = m.insert_batch(batch).await.unwrap();
    let seq = m.checkpoint().await.unwrap();
    m.close().await.unwrap();
    (ids, dir.join("snapshots").join(format!("{seq:020}")))
}

/// Block sums that disagree with their chunk (their own crc in the manifest matching):
/// `verify` checks every block against them and names the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_every_block_against_its_sum() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, snap) = store_of_300(tmp.path()).await;
    let report = crate::verify::verify(tmp.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let sums = snap.join(sums_name(&chunk_name(0, 300)));
    flip(&sums, SUMS_HEADER + 4 * 3);
    let mut manifest = crate::snapshot::read_manifest(&snap).unwrap();
    let bytes = std::fs::read(&sums).unwrap();
    for f in &mut manifest.files {
        if f.name == sums_name(&chunk_name(0, 300)) {
            f.crc = crc32fast::hash(&bytes);
        }
    }
    crate::snapshot::write_manifest(&snap, &manifest).unwrap();
    let report = crate::verify::verify(tmp.path()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&chunk_name(0, 300))
                && p.contains("block 3")
                && p.contains(&format!("offset {}", 3 * BLOCK))),
        "{:?}",
        report.problems
    );
}

/// A checkpoint after open links the loaded snapshot's block sums with its chunks (it
/// does not write them again).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_sums_are_linked_into_the_next_snapshot() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (_, first) = store_of_300(tmp.path()).await;
    let m = Memory::open(tmp.path(), config()).await.unwrap();
    m.insert(NewRecord::new("one more", vector(300)))
        .await
        .unwrap();
    let seq = m.checkpoint().await.unwrap();
    m.close().await.unwrap();
    let next = tmp.path().join("snapshots").join(format!("{seq:020}"));
    let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    for name in [chunk_name(0, 300), sums_name(&chunk_name(0, 300))] {
        assert_eq!(
            ino(first.join(&name)),
            ino(next.join(&name)),
            "{name} linked"
        );
    }
    assert!(next.join(sums_name(&chunk_name(300, 1))).exists());
}

fn config() -> Config {
    Config {
        dimension: DIM,
        // Every search reads every vector of the layer.
        exact_search_below: 1_000_000,
        checkpoint_every: 0,
        checkpoint_interval: std::time::Duration::ZERO,
        ..Config::default()
    }
}

/// A search that reads a damaged block before the scrub gets there fails, naming the
/// chunk and offset; so does a checkpoint; close writes no snapshot; the store is marked,
/// and the next open checks in full, replays the log past the snapshot, and its first
/// checkpoint clears the mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_that_reads_a_damaged_block_fails_and_the_next_open_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let (ids, snap) = store_of_300(tmp.path()).await;
    let seq = crate::snapshot::read_manifest(&snap).unwrap().seq;
    let chunk = snap.join(chunk_name(0, 300));
    flip(&chunk, 3 * BLOCK + 7);

    HOLD_DUMP_LOADS.lock().push(tmp.path().to_path_buf());
    let m = Memory::open(tmp.path(), config()).await;
    let m = m.inspect_err(|_| HOLD_DUMP_LOADS.lock().clear()).unwrap();
    let st = m.stats();
    assert_eq!(st.open.snapshot_seq, Some(seq), "{:?}", st.open);
    assert_eq!(st.open.full_check, None);
    assert_eq!(st.damage, None, "nothing read yet");
    let e = m
        .search(&vector(5), &SearchOptions::top_k(3))
        .await
        .unwrap_err();
    HOLD_DUMP_LOADS.lock().retain(|d| d != tmp.path());
    assert!(matches!(e, Error::Corrupted { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&chunk_name(0, 300)) && e.contains(&format!("offset {}", 3 * BLOCK)),
        "{e}"
    );
    assert_eq!(m.stats().damage, Some(e.clone()));
    assert_eq!(m.checkpoint().await.unwrap_err().to_string(), e);
    // No lifecycle decision is taken from damaged vectors either; the log is unchanged.
    let last = m.stats().last_seq;
    assert_eq!(m.run_lifecycle().await.unwrap_err().to_string(), e);
    assert_eq!(m.stats().last_seq, last);
    let mark = tmp
        .path()
        .join("snapshots")
        .join(crate::engine::DAMAGE_MARK);
    assert_eq!(std::fs::read_to_string(&mark).unwrap(), e);
    m.close().await.unwrap();
    assert!(
        crate::snapshot::list(&tmp.path().join("snapshots"))
            .unwrap()
            .len()
            == 1
    );

    let m = Memory::open(tmp.path(), config()).await.unwrap();
    let open = m.stats().open;
    assert_eq!(open.full_check, Some(e), "{open:?}");
    assert_eq!(open.snapshot_seq, None, "{open:?}");
    assert!(open.snapshots_rejected[0].1.contains(".f32"), "{open:?}");
    assert!(
        open.snapshots_rejected[0].1.contains("moved to"),
        "set aside: {open:?}"
    );
    assert!(!snap.exists());
    assert!(
        !mark.exists(),
        "the snapshot loaded (none here) passed the full check"
    );
    for i in [5, 190, 299] {
        let hits = m
            .search(&vector(i), &SearchOptions::top_k(1))
            .await
            .unwrap();
        assert_eq!(hits[0].id, ids[i], "record {i} from the log");
    }
    m.close().await.unwrap();
    let m = Memory::open(tmp.path(), config()).await.unwrap();
    assert_eq!(m.stats().open.full_check, None);
    assert!(m.stats().open.snapshots_rejected.is_empty());
    m.close().await.unwrap();
}
