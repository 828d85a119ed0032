#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;
use crate::disk::files::FileEntry;
use crate::disk::sums::BLOCK;

fn id(n: u32) -> Id {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id[15] = 0xa5;
    id
}

fn sample() -> KeyIndex {
    // Slots 0..100 with ids in reverse order; content keys with duplicates; refs to a few.
    let ids = (0..100u32).map(|s| (id(1000 - s), s)).collect();
    let content = (0..100u32).map(|s| (u64::from(s % 7) << 40, s)).collect();
    let refs = (0..100u32).map(|s| id(s % 3)).collect();
    KeyIndex::build(ids, content, refs)
}

fn write(dir: &Path, k: &KeyIndex) -> FileEntry {
    let path = dir.join("keys.bin");
    let (len, crc, sums) = k.write(File::create(&path).unwrap(), &path).unwrap();
    crate::disk::sums::write_sums(&path, len, &sums).unwrap();
    FileEntry {
        name: "keys.bin".into(),
        len,
        crc,
    }
}

fn load(dir: &Path, e: &FileEntry, nslots: u32) -> Result<KeyIndex> {
    let map = crate::disk::files::map_checked(dir, e)?;
    KeyIndex::open(InPlace::new(dir.join(&e.name), map, None), nslots)
}

fn check(k: &KeyIndex) {
    assert_eq!(k.ids(), 100);
    for s in 0..100u32 {
        assert_eq!(k.slot_of(&id(1000 - s)), Some(s));
    }
    assert_eq!(k.slot_of(&id(5)), None);
    let want: Vec<u32> = (0..100u32).filter(|s| s % 7 == 3).collect();
    assert_eq!(k.content_slots(3 << 40), &want[..]);
    assert!(k.content_slots(9).is_empty());
    assert!(k.content_slots(u64::MAX).is_empty());
    assert_eq!(k.refs_to(&id(0)), 34);
    assert_eq!(k.refs_to(&id(2)), 33);
    assert_eq!(k.refs_to(&id(3)), 0);
}

#[test]
fn an_index_reads_back_what_was_built() {
    let tmp = tempfile::tempdir().unwrap();
    let k = sample();
    check(&k);
    let e = write(tmp.path(), &k);
    check(&load(tmp.path(), &e, 100).unwrap());
    let empty = KeyIndex::build(Vec::new(), Vec::new(), Vec::new());
    let e = write(tmp.path(), &empty);
    let back = load(tmp.path(), &e, 0).unwrap();
    assert_eq!(back.slot_of(&id(1)), None);
    assert!(back.content_slots(0).is_empty());
}

/// Rewrites `keys.bin` with `edit` applied and a manifest entry that matches (as if the
/// writer had been wrong), then loads it.
fn load_edited(dir: &Path, nslots: u32, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    let path = dir.join("keys.bin");
    let mut b = std::fs::read(&path).unwrap();
    edit(&mut b);
    std::fs::write(&path, &b).unwrap();
    let e = FileEntry {
        name: "keys.bin".into(),
        len: b.len() as u64,
        crc: crc32fast::hash(&b),
    };
    load(dir, &e, nslots).unwrap_err().to_string()
}

#[test]
fn damage_is_refused_with_the_file_and_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let k = sample();
    let s = k.at;
    let e = write(tmp.path(), &k);
    // A flipped byte: the manifest's crc.
    let path = tmp.path().join("keys.bin");
    let good = std::fs::read(&path).unwrap();
    let mut b = good.clone();
    b[s.ids + 5] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let err = load(tmp.path(), &e, 100).unwrap_err().to_string();
    assert!(
        err.contains("keys.bin") && err.contains("checksum"),
        "{err}"
    );
    // Cut short.
    std::fs::write(&path, &good[..good.len() - 4]).unwrap();
    let err = load(tmp.path(), &e, 100).unwrap_err().to_string();
    assert!(err.contains("keys.bin") && err.contains("bytes"), "{err}");
    // Slots beyond the snapshot's.
    std::fs::write(&path, &good).unwrap();
    let err = load(tmp.path(), &e, 50).unwrap_err().to_string();
    assert!(err.contains("slot beyond"), "{err}");
    // Ids out of order, with a crc that matches: the order check catches it.
    let err = load_edited(tmp.path(), 100, |b| {
        let (a, z) = (s.ids, s.ids + 16);
        let first: Vec<u8> = b[a..a + 16].to_vec();
        b.copy_within(z..z + 16, a);
        b[z..z + 16].copy_from_slice(&first);
    });
    assert!(
        err.contains("id out of order") && err.contains(&format!("offset {}", s.ids + 16)),
        "{err}"
    );
    std::fs::write(&path, &good).unwrap();
    // A count that does not fit the file.
    let err = load_edited(tmp.path(), 100, |b| {
        b[32] = 9;
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    });
    assert!(err.contains("do not fill"), "{err}");
    std::fs::write(&path, &good).unwrap();
    // A header byte changed without its crc.
    let err = load_edited(tmp.path(), 100, |b| b[20] ^= 1);
    assert!(err.contains("header checksum"), "{err}");
    std::fs::write(&path, &good).unwrap();
    // Header edits with a matching header crc.
    let header = |b: &mut Vec<u8>, at: usize, v: u8| {
        b[at] = v;
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
    };
    let err = load_edited(tmp.path(), 100, |b| header(b, 44, 1));
    assert!(err.contains("reserved"), "{err}");
    std::fs::write(&path, &good).unwrap();
    let err = load_edited(tmp.path(), 100, |b| header(b, 24, 99));
    assert!(err.contains("99 content keys for 100 ids"), "{err}");
    std::fs::write(&path, &good).unwrap();
    // Content keys out of order (the last key made smaller than the one before).
    let err = load_edited(tmp.path(), 100, |b| {
        let last = s.content_keys + 99 * 8;
        b[last..last + 8].copy_from_slice(&0u64.to_le_bytes());
    });
    assert!(
        err.contains("content key out of order")
            && err.contains(&format!("offset {}", s.content_keys + 99 * 8)),
        "{err}"
    );
    std::fs::write(&path, &good).unwrap();
    // Ref targets out of order, and a zero count.
    let err = load_edited(tmp.path(), 100, |b| {
        b.copy_within(s.ref_ids..s.ref_ids + 16, s.ref_ids + 16);
    });
    assert!(err.contains("ref target out of order"), "{err}");
    std::fs::write(&path, &good).unwrap();
    let err = load_edited(tmp.path(), 100, |b| {
        b[s.ref_counts + 4..s.ref_counts + 8].copy_from_slice(&0u32.to_le_bytes());
    });
    assert!(
        err.contains("zero reference count")
            && err.contains(&format!("offset {}", s.ref_counts + 4)),
        "{err}"
    );
}

/// Opens `keys.bin` in `dir` mapped unread, with its block sums (as a format-7 open).
fn load_lazy(dir: &Path, nslots: u32) -> Result<KeyIndex> {
    let path = dir.join("keys.bin");
    let spath = dir.join("keys.bin.sums");
    let f = File::open(&path).unwrap();
    // SAFETY: a test's own file, not written while mapped.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let sums =
        crate::disk::sums::parse_sums(&spath, &std::fs::read(&spath).unwrap(), map.len() as u64)?;
    let lazy = crate::disk::sums::Lazy::new(sums);
    KeyIndex::open(InPlace::new(path, map, Some(lazy)), nslots)
}

/// Writes `bytes` as the file at `path` with block sums that match them (a wrong writer).
fn write_with_sums(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
    let sums = crate::disk::sums::block_sums(bytes);
    crate::disk::sums::write_sums(path, bytes.len() as u64, &sums).unwrap();
}

/// 20k keys: many blocks per section.
fn big() -> KeyIndex {
    let ids = (0..20_000u32).map(|s| (id(50_000 - s), s)).collect();
    let content = (0..20_000u32)
        .map(|s| (u64::from(s % 1_000) << 20, s))
        .collect();
    let refs = (0..20_000u32).map(|s| id(s % 5_000)).collect();
    KeyIndex::build(ids, content, refs)
}

#[test]
fn a_mapped_index_checks_each_block_on_first_read_and_the_scrub_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let k = big();
    let s = k.at;
    write(tmp.path(), &k);
    let path = tmp.path().join("keys.bin");
    let good = std::fs::read(&path).unwrap();

    // Intact: lookups answer as the built index, nothing is damaged, the scrub passes.
    let lazy = load_lazy(tmp.path(), 20_000).unwrap();
    assert!(lazy.unchecked());
    for slot in (0..20_000u32).step_by(97) {
        let i = id(50_000 - slot);
        assert_eq!(lazy.slot_of(&i), Some(slot));
        assert_eq!(
            lazy.content_slots((u64::from(slot % 1_000)) << 20),
            k.content_slots((u64::from(slot % 1_000)) << 20)
        );
        assert_eq!(lazy.refs_to(&id(slot % 5_000)), 4);
    }
    assert_eq!(lazy.slot_of(&id(7)), None);
    assert!(lazy.damage().is_none());
    lazy.scrub(&|| false).unwrap();
    assert!(!lazy.unchecked());

    // A flipped byte in the slot of the id in slot 0 (the last id, bytewise): its lookup
    // finds nothing and the damage names the file and the block; a lookup elsewhere
    // still answers.
    let i_last = s.id_slots + (20_000 - 1) * 4;
    let mut b = good.clone();
    b[i_last] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let lazy = load_lazy(tmp.path(), 20_000).unwrap();
    assert_eq!(lazy.slot_of(&id(50_000 - 19_999)), Some(19_999));
    assert!(lazy.damage().is_none());
    assert_eq!(lazy.slot_of(&id(50_000)), None);
    let block = i_last / BLOCK * BLOCK;
    let err = lazy.damage().unwrap().to_string();
    assert!(
        err.contains("keys.bin") && err.contains(&format!("offset {block}")),
        "{err}"
    );
    // The scrub of a fresh open finds it too.
    let lazy = load_lazy(tmp.path(), 20_000).unwrap();
    let err = lazy.scrub(&|| false).unwrap_err().to_string();
    assert!(err.contains(&format!("offset {block}")), "{err}");
    assert!(lazy.damage().is_some());

    // Ids out of order, with block sums that match (a wrong writer): lookups are
    // confirmed by the caller; the scrub's full check names the fault.
    let mut b = good.clone();
    let (a, z) = (s.ids, s.ids + 16);
    let first: Vec<u8> = b[a..a + 16].to_vec();
    b.copy_within(z..z + 16, a);
    b[z..z + 16].copy_from_slice(&first);
    write_with_sums(&path, &b);
    let lazy = load_lazy(tmp.path(), 20_000).unwrap();
    let err = lazy.scrub(&|| false).unwrap_err().to_string();
    assert!(
        err.contains("id out of order") && err.contains(&format!("offset {}", s.ids + 16)),
        "{err}"
    );
    assert!(lazy.damage().is_some() && lazy.unchecked());

    // A slot beyond the snapshot's, found by the lookup that reads it.
    write_with_sums(&path, &good);
    let lazy = load_lazy(tmp.path(), 10_000).unwrap();
    assert_eq!(lazy.slot_of(&id(50_000 - 15_000)), None);
    let err = lazy.damage().unwrap().to_string();
    assert!(err.contains("slot beyond the snapshot's 10000"), "{err}");
    // The same for a content key (slots 999, 1999, … 19999 share one).
    let lazy = load_lazy(tmp.path(), 10_000).unwrap();
    assert!(lazy.content_slots(999 << 20).is_empty());
    let err = lazy.damage().unwrap().to_string();
    assert!(err.contains("slot beyond the snapshot's 10000"), "{err}");

    // A flipped byte among the content slots: the lookup that reads it finds none.
    let key = 500u64 << 20;
    let lo = k.content_keys().partition_point(|c| *c < key);
    let at = s.content_slots + lo * 4;
    let mut b = good.clone();
    b[at] ^= 1;
    std::fs::write(&path, &b).unwrap();
    let lazy = load_lazy(tmp.path(), 20_000).unwrap();
    assert!(lazy.content_slots(key).is_empty());
    let err = lazy.damage().unwrap().to_string();
    assert!(
        err.contains(&format!("offset {}", at / BLOCK * BLOCK)),
        "{err}"
    );

    // A zero reference count whose block sums match: the lookup counts none and notes it.
    let mut b = good.clone();
    b[s.ref_counts..s.ref_counts + 4].copy_from_slice(&0u32.to_le_bytes());
    write_with_sums(&path, &b);
    let lazy = load_lazy(tmp.path(), 20_000).unwrap();
    assert_eq!(lazy.refs_to(&id(0)), 0);
    let err = lazy.damage().unwrap().to_string();
    assert!(
        err.contains("zero reference count") && err.contains(&format!("offset {}", s.ref_counts)),
        "{err}"
    );
}
