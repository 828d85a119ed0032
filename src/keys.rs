//! The key index a snapshot persists, `keys.bin` (key index format 1): every live record's
//! id, its content key (content hash, layer, project: what an identical insert is matched
//! on) and how many live records refer to each id, as sorted arrays searched in place.
//!
//! Opening a store used to rebuild these as hash maps from every record, about a third of a
//! 1M-record open. Now open reads this file (one read, one crc32 and one linear check of
//! its order) and looks keys up by binary search; what changed since the snapshot lives in
//! small hash maps beside it (see `Projections`). An entry here can be stale (its record was
//! deleted, or moved to another layer): every lookup is confirmed against the record itself.
//!
//! Layout (integers little-endian; docs/format.md has the table):
//! ```text
//! header (64 B) | content keys (u64 each) | ids (16 B each) | ref targets (16 B each)
//!               | id slots (u32 each) | content slots (u32 each) | ref counts (u32 each)
//! ```
//! Ids and ref targets are strictly ascending (bytewise); content keys ascend, equal keys in
//! slot order. Each slot is below the snapshot's slot count; each ref count is at least 1.

use crate::error::{Error, Result};
use crate::records::{table_header, u64_at};
use crate::snapshot::{check_sum, FileEntry};
use magray_wal::Id;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// Key index format version (`keys.bin`). Changelog in docs/format.md.
pub(crate) const KEYS_FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"MGRYKEYS";
const HEADER: usize = 64;

/// The sorted key arrays of one snapshot (or of an older snapshot's records, built at open).
/// The whole file is held in `buf` (u64 words, so every section is aligned for its type).
pub(crate) struct KeyIndex {
    buf: Vec<u64>,
    ids: usize,
    content: usize,
    refs: usize,
    /// Where each section starts; `at.end` is the file length (`buf` is rounded up to whole
    /// words).
    at: Sections,
}

impl Default for KeyIndex {
    /// The index of no records.
    fn default() -> KeyIndex {
        KeyIndex::build(Vec::new(), Vec::new(), Vec::new())
    }
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyIndex")
            .field("ids", &self.ids)
            .field("content", &self.content)
            .field("refs", &self.refs)
            .finish()
    }
}

/// Byte offsets of the sections, in file order.
#[derive(Clone, Copy)]
struct Sections {
    content_keys: usize,
    ids: usize,
    ref_ids: usize,
    id_slots: usize,
    content_slots: usize,
    ref_counts: usize,
    end: usize,
}

/// The sections of an index with nothing in it.
const EMPTY: Sections = Sections {
    content_keys: HEADER,
    ids: HEADER,
    ref_ids: HEADER,
    id_slots: HEADER,
    content_slots: HEADER,
    ref_counts: HEADER,
    end: HEADER,
};

fn sections(ids: usize, content: usize, refs: usize) -> Option<Sections> {
    let content_keys = HEADER;
    let id_at = content_keys.checked_add(content.checked_mul(8)?)?;
    let ref_ids = id_at.checked_add(ids.checked_mul(16)?)?;
    let id_slots = ref_ids.checked_add(refs.checked_mul(16)?)?;
    let content_slots = id_slots.checked_add(ids.checked_mul(4)?)?;
    let ref_counts = content_slots.checked_add(content.checked_mul(4)?)?;
    let end = ref_counts.checked_add(refs.checked_mul(4)?)?;
    Some(Sections {
        content_keys,
        ids: id_at,
        ref_ids,
        id_slots,
        content_slots,
        ref_counts,
        end,
    })
}

impl KeyIndex {
    /// Builds the index of a set of live records: `(slot, id)` and `(content key, slot)` of
    /// each, and every id any of them refers to (once per reference).
    pub(crate) fn build(
        mut ids: Vec<(Id, u32)>,
        mut content: Vec<(u64, u32)>,
        mut refs: Vec<Id>,
    ) -> KeyIndex {
        ids.sort_unstable();
        content.sort_unstable();
        refs.sort_unstable();
        let mut counted: Vec<(Id, u32)> = Vec::new();
        for id in refs {
            match counted.last_mut() {
                Some((last, n)) if *last == id => *n += 1,
                _ => counted.push((id, 1)),
            }
        }
        // In-memory lists: their sizes in bytes cannot overflow (and an empty index is
        // right if they did).
        let (ni, nc, nr) = (ids.len(), content.len(), counted.len());
        let (s, (ni, nc, nr)) = match sections(ni, nc, nr) {
            Some(s) => (s, (ni, nc, nr)),
            None => (EMPTY, (0, 0, 0)),
        };
        let mut k = KeyIndex {
            buf: vec![0; s.end.div_ceil(8)],
            ids: ni,
            content: nc,
            refs: nr,
            at: s,
        };
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut k.buf);
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&KEYS_FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&(ni as u64).to_le_bytes());
        b[24..32].copy_from_slice(&(nc as u64).to_le_bytes());
        b[32..40].copy_from_slice(&(nr as u64).to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        for (i, (key, slot)) in content.iter().take(nc).enumerate() {
            b[s.content_keys + i * 8..][..8].copy_from_slice(&key.to_le_bytes());
            b[s.content_slots + i * 4..][..4].copy_from_slice(&slot.to_le_bytes());
        }
        for (i, (id, slot)) in ids.iter().take(ni).enumerate() {
            b[s.ids + i * 16..][..16].copy_from_slice(id);
            b[s.id_slots + i * 4..][..4].copy_from_slice(&slot.to_le_bytes());
        }
        for (i, (id, n)) in counted.iter().take(nr).enumerate() {
            b[s.ref_ids + i * 16..][..16].copy_from_slice(id);
            b[s.ref_counts + i * 4..][..4].copy_from_slice(&n.to_le_bytes());
        }
        k
    }

    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.buf)[..self.at.end]
    }

    fn content_keys(&self) -> &[u64] {
        // The section starts at byte 64 of a u64 buffer: aligned.
        let at = self.at.content_keys / 8;
        &self.buf[at..at + self.content]
    }

    fn u32s(&self, at: usize, n: usize) -> &[u32] {
        // Every u32 section starts at a multiple of 4 bytes into a u64-aligned buffer.
        bytemuck::cast_slice(&self.bytes()[at..at + n * 4])
    }

    fn id_list(&self, at: usize, n: usize) -> &[[u8; 16]] {
        bytemuck::cast_slice(&self.bytes()[at..at + n * 16])
    }

    /// Number of ids (live records when the snapshot was taken).
    pub(crate) fn ids(&self) -> usize {
        self.ids
    }

    /// The slot `id` had when the index was written (the record may have died since).
    pub(crate) fn slot_of(&self, id: &Id) -> Option<u32> {
        let s = self.at;
        let ids = self.id_list(s.ids, self.ids);
        let i = ids.binary_search(id).ok()?;
        self.u32s(s.id_slots, self.ids).get(i).copied()
    }

    /// Slots that had content key `key` when the index was written, ascending.
    pub(crate) fn content_slots(&self, key: u64) -> &[u32] {
        let keys = self.content_keys();
        let lo = keys.partition_point(|k| *k < key);
        let hi = lo + keys[lo..].partition_point(|k| *k == key);
        &self.u32s(self.at.content_slots, self.content)[lo..hi]
    }

    /// How many live records referred to `id` when the index was written.
    pub(crate) fn refs_to(&self, id: &Id) -> u32 {
        let s = self.at;
        match self.id_list(s.ref_ids, self.refs).binary_search(id) {
            Ok(i) => self.u32s(s.ref_counts, self.refs)[i],
            Err(_) => 0,
        }
    }

    /// Writes the file; returns its length and crc32.
    pub(crate) fn write(&self, mut f: File, path: &Path) -> Result<(u64, u32)> {
        let bytes = self.bytes();
        f.write_all(bytes)
            .and_then(|_| magray_wal::fsutil::sync_file(&f, path))
            .map_err(|e| Error::io(path, e))?;
        Ok((bytes.len() as u64, crc32fast::hash(bytes)))
    }

    /// Reads and checks `keys.bin` of the snapshot in `dir`: length and crc32 against the
    /// manifest, header, section sizes, order, and every slot below `nslots`.
    pub(crate) fn load(dir: &Path, entry: &FileEntry, nslots: u32) -> Result<KeyIndex> {
        let path = &dir.join(&entry.name);
        let bad = |off: usize, why: String| Error::corrupted(path, off as u64, why);
        let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
        let flen = f.metadata().map_err(|e| Error::io(path, e))?.len();
        if flen != entry.len {
            // The same check and message as every other snapshot file (fails on the length).
            check_sum(path, entry, flen, 0)?;
        }
        let len = usize::try_from(flen).map_err(|_| bad(0, "too large for this host".into()))?;
        let mut k = KeyIndex {
            buf: vec![0; len.div_ceil(8)],
            ids: 0,
            content: 0,
            refs: 0,
            at: Sections { end: len, ..EMPTY },
        };
        let b: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut k.buf)[..len];
        f.read_exact(b).map_err(|e| Error::io(path, e))?;
        check_sum(path, entry, flen, crc32fast::hash(b))?;
        let h = table_header(path, b, &MAGIC, "key index", KEYS_FORMAT_VERSION)?;
        if h[12..16].iter().chain(&h[40..60]).any(|b| *b != 0) {
            return Err(bad(12, "reserved bytes are not zero".into()));
        }
        let count = |at: usize| usize::try_from(u64_at(h, at)).unwrap_or(usize::MAX);
        let (ids, content, refs) = (count(16), count(24), count(32));
        if content != ids {
            return Err(bad(
                24,
                format!("{content} content keys for {ids} ids (one each)"),
            ));
        }
        let s = sections(ids, content, refs)
            .filter(|s| s.end == len)
            .ok_or_else(|| {
                bad(
                    16,
                    format!(
                        "{ids} ids, {content} content keys and {refs} ref targets do not \
                         fill a {len}-byte file"
                    ),
                )
            })?;
        (k.ids, k.content, k.refs, k.at) = (ids, content, refs, s);
        let ascending = |at: usize, n: usize, what: &str| -> Result<()> {
            let list = k.id_list(at, n);
            match list.windows(2).position(|w| w[0] >= w[1]) {
                Some(i) => Err(bad(at + (i + 1) * 16, format!("{what} out of order"))),
                None => Ok(()),
            }
        };
        ascending(s.ids, ids, "id")?;
        ascending(s.ref_ids, refs, "ref target")?;
        let keys = k.content_keys();
        let cslots = k.u32s(s.content_slots, content);
        if let Some(i) =
            (1..content).find(|&i| (keys[i - 1], cslots[i - 1]) >= (keys[i], cslots[i]))
        {
            return Err(bad(
                s.content_keys + i * 8,
                "content key out of order".into(),
            ));
        }
        for (at, n) in [(s.id_slots, ids), (s.content_slots, content)] {
            if let Some(i) = k.u32s(at, n).iter().position(|slot| *slot >= nslots) {
                return Err(bad(
                    at + i * 4,
                    format!("slot beyond the snapshot's {nslots}"),
                ));
            }
        }
        if let Some(i) = k.u32s(s.ref_counts, refs).iter().position(|n| *n == 0) {
            return Err(bad(s.ref_counts + i * 4, "zero reference count".into()));
        }
        Ok(k)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

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
        let (len, crc) = k.write(File::create(&path).unwrap(), &path).unwrap();
        FileEntry {
            name: "keys.bin".into(),
            len,
            crc,
        }
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
        check(&KeyIndex::load(tmp.path(), &e, 100).unwrap());
        let empty = KeyIndex::build(Vec::new(), Vec::new(), Vec::new());
        let e = write(tmp.path(), &empty);
        let back = KeyIndex::load(tmp.path(), &e, 0).unwrap();
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
        KeyIndex::load(dir, &e, nslots).unwrap_err().to_string()
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
        let err = KeyIndex::load(tmp.path(), &e, 100).unwrap_err().to_string();
        assert!(
            err.contains("keys.bin") && err.contains("checksum"),
            "{err}"
        );
        // Cut short.
        std::fs::write(&path, &good[..good.len() - 4]).unwrap();
        let err = KeyIndex::load(tmp.path(), &e, 100).unwrap_err().to_string();
        assert!(err.contains("keys.bin") && err.contains("bytes"), "{err}");
        // Slots beyond the snapshot's.
        std::fs::write(&path, &good).unwrap();
        let err = KeyIndex::load(tmp.path(), &e, 50).unwrap_err().to_string();
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
}
