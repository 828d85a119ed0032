//! The key index a snapshot persists, `keys.bin` (key index format 1): every live record's
//! id, its content key (content hash, layer, project: what an identical insert is matched
//! on) and how many live records refer to each id, as sorted arrays searched in place.
//!
//! Opening a store used to rebuild these as hash maps from every record, about a third of a
//! 1M-record open. Now open maps this file and looks keys up by binary search in place; what
//! changed since the snapshot lives in small hash maps beside it (see `Projections`). An
//! entry here can be stale (its record was deleted, or moved to another layer): every lookup
//! is confirmed against the record itself.
//!
//! From snapshot format 7 the file has block sums (`keys.bin.sums`) and open reads only its
//! header: each probe of a lookup checks the block it reads on first read (a damaged one makes
//! the lookup find nothing and is the store's damage, as for the record table), and the
//! indexer's scrub checks every block and then what open used to check in full (order, slots
//! below the snapshot's count, counts above zero). Older files, and any file a full check
//! opens, are checked in full at open and read into memory.
//!
//! Layout (integers little-endian; docs/format.md has the table):
//! ```text
//! header (64 B) | content keys (u64 each) | ids (16 B each) | ref targets (16 B each)
//!               | id slots (u32 each) | content slots (u32 each) | ref counts (u32 each)
//! ```
//! Ids and ref targets are strictly ascending (bytewise); content keys ascend, equal keys in
//! slot order. Each slot is below the snapshot's slot count; each ref count is at least 1.

use crate::disk::files::{table_header, u64_at, CrcWriter};
use crate::disk::sums::InPlace;
use crate::error::{Error, Result};
use magray_wal::Id;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Key index format version (`keys.bin`). Changelog in docs/format.md.
pub(crate) const KEYS_FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"MGRYKEYS";
const HEADER: usize = 64;

/// The sorted key arrays of one snapshot (or of an older snapshot's records, built at open).
pub(crate) struct KeyIndex {
    buf: Buf,
    ids: usize,
    content: usize,
    refs: usize,
    /// Where each section starts; `at.end` is the file length (a built `buf` is rounded up to
    /// whole words).
    at: Sections,
    /// Slots of the snapshot (every slot listed is below).
    nslots: u32,
    /// What open checks of a file it reads in full (order, slots, counts) holds: at once for
    /// a built index or one checked in full; for one mapped unread, once the scrub checked it.
    checked: AtomicBool,
}

/// Where an index's bytes are.
enum Buf {
    /// Built here (u64 words, so every section is aligned for its type).
    Built(Vec<u64>),
    /// A snapshot's `keys.bin`, read in place (a map starts on a page: aligned too).
    Mapped(InPlace),
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
        let mut buf = vec![0u64; s.end.div_ceil(8)];
        let b: &mut [u8] = bytemuck::cast_slice_mut(&mut buf);
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
        KeyIndex {
            buf: Buf::Built(buf),
            ids: ni,
            content: nc,
            refs: nr,
            at: s,
            // Slots of live records: below any count that matters (the bound is for files).
            nslots: u32::MAX,
            checked: AtomicBool::new(true),
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.buf {
            Buf::Built(words) => &bytemuck::cast_slice(words)[..self.at.end],
            Buf::Mapped(f) => &f.map,
        }
    }

    /// The file read in place, if it is one.
    fn file(&self) -> Option<&InPlace> {
        match &self.buf {
            Buf::Mapped(f) => Some(f),
            Buf::Built(_) => None,
        }
    }

    /// True when bytes `[at, at + n)` may be read: built, checked in full, or their blocks
    /// checked out now (else the damage is noted: [`KeyIndex::damage`]).
    fn ok(&self, at: usize, n: usize) -> bool {
        self.file().is_none_or(|f| f.ok(at, n))
    }

    // Sections start at byte 64 of u64-aligned memory (a built buffer, a page-aligned map),
    // u64 and id sections at multiples of 8, u32 sections at multiples of 4: the casts hold
    // (and an impossible misalignment reads as an empty section, never a panic).
    fn content_keys(&self) -> &[u64] {
        let at = self.at.content_keys;
        bytemuck::try_cast_slice(&self.bytes()[at..at + self.content * 8]).unwrap_or(&[])
    }

    fn u32s(&self, at: usize, n: usize) -> &[u32] {
        bytemuck::try_cast_slice(&self.bytes()[at..at + n * 4]).unwrap_or(&[])
    }

    fn id_list(&self, at: usize, n: usize) -> &[[u8; 16]] {
        bytemuck::try_cast_slice(&self.bytes()[at..at + n * 16]).unwrap_or(&[])
    }

    /// The first `i` in `0..n` for which `less(i)` is false (`less` false from some point on),
    /// checking each probed element (`width` bytes from `at + i · width`) before `less` reads
    /// it; `None` when one is damaged.
    fn lower(
        &self,
        at: usize,
        width: usize,
        n: usize,
        less: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if !self.ok(at + mid * width, width) {
                return None;
            }
            if less(mid) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Some(lo)
    }

    /// Index of `id` in the id list at `at` (`n` long), checked.
    fn find_id(&self, at: usize, n: usize, id: &Id) -> Option<usize> {
        let list = self.id_list(at, n);
        let i = self.lower(at, 16, n, |i| list.get(i).is_some_and(|x| x < id))?;
        (i < list.len() && self.ok(at + i * 16, 16) && list[i] == *id).then_some(i)
    }

    /// Damage found by a lookup or the scrub, as the error to report.
    pub(crate) fn damage(&self) -> Option<crate::error::Error> {
        self.file()?.damage()
    }

    /// True until a file mapped unread has been checked in full by [`KeyIndex::scrub`].
    pub(crate) fn unchecked(&self) -> bool {
        !self.checked.load(Ordering::Acquire)
    }

    /// Checks every block not yet checked, then the order, slots and counts (what open checks
    /// of a file it reads in full), until `stop` says so; the damage found is the error (and
    /// stays noted).
    pub(crate) fn scrub(&self, stop: &dyn Fn() -> bool) -> Result<()> {
        let Some(f) = self.file() else {
            return Ok(());
        };
        if !self.unchecked() || !f.scrub(stop)? {
            return Ok(());
        }
        if let Err((at, why)) = self.check_contents() {
            f.fail(at as u64, why.clone());
            return Err(Error::corrupted(&f.path, at as u64, why));
        }
        self.checked.store(true, Ordering::Release);
        Ok(())
    }

    /// Number of ids (live records when the snapshot was taken).
    pub(crate) fn ids(&self) -> usize {
        self.ids
    }

    /// The slot `id` had when the index was written (the record may have died since). A
    /// damaged block (noted: [`KeyIndex::damage`]) finds nothing.
    pub(crate) fn slot_of(&self, id: &Id) -> Option<u32> {
        let s = self.at;
        let i = self.find_id(s.ids, self.ids, id)?;
        let slot = self.u32_entry(s.id_slots, self.ids, i)?;
        if slot >= self.nslots {
            self.slot_beyond(s.id_slots + i * 4);
            return None;
        }
        Some(slot)
    }

    /// Entry `i` of the u32 section at `at` (`n` long), its block checked first; `None` when
    /// it is damaged (noted).
    fn u32_entry(&self, at: usize, n: usize, i: usize) -> Option<u32> {
        self.ok(at + i * 4, 4)
            .then(|| self.u32s(at, n).get(i).copied())
            .flatten()
    }

    /// Notes the slot at byte `at` as damage: it is not below the snapshot's slot count.
    fn slot_beyond(&self, at: usize) {
        self.fail(at, format!("slot beyond the snapshot's {}", self.nslots));
    }

    /// Slots that had content key `key` when the index was written, ascending. A damaged
    /// block (noted: [`KeyIndex::damage`]) finds none.
    pub(crate) fn content_slots(&self, key: u64) -> &[u32] {
        let (s, n) = (self.at, self.content);
        let keys = self.content_keys();
        let Some(lo) = self.lower(s.content_keys, 8, n, |i| {
            keys.get(i).is_some_and(|k| *k < key)
        }) else {
            return &[];
        };
        let Some(hi) = self.lower(s.content_keys, 8, n, |i| {
            keys.get(i).is_some_and(|k| *k <= key)
        }) else {
            return &[];
        };
        let hi = hi.max(lo);
        if !self.ok(s.content_slots + lo * 4, (hi - lo) * 4) {
            return &[];
        }
        let found = self.u32s(s.content_slots, n).get(lo..hi).unwrap_or(&[]);
        if let Some(i) = found.iter().position(|slot| *slot >= self.nslots) {
            self.slot_beyond(s.content_slots + (lo + i) * 4);
            return &[];
        }
        found
    }

    /// How many live records referred to `id` when the index was written. A damaged block
    /// (noted: [`KeyIndex::damage`]) counts none.
    pub(crate) fn refs_to(&self, id: &Id) -> u32 {
        let s = self.at;
        let Some(i) = self.find_id(s.ref_ids, self.refs, id) else {
            return 0;
        };
        match self.u32_entry(s.ref_counts, self.refs, i) {
            Some(0) => {
                self.fail(s.ref_counts + i * 4, "zero reference count".into());
                0
            }
            n => n.unwrap_or(0),
        }
    }

    /// Notes damage found in what a checked block holds (a file read in place only).
    fn fail(&self, at: usize, why: String) {
        if let Some(f) = self.file() {
            f.fail(at as u64, why);
        }
    }

    /// Writes (and fsyncs) the file; returns its length, crc32 and block sums (taken on the
    /// way out, as `records::write` does).
    pub(crate) fn write(&self, f: File, path: &Path) -> Result<(u64, u32, Vec<u32>)> {
        let mut w = CrcWriter::with_block_sums(f);
        w.write_all(self.bytes())
            .and_then(|_| magray_wal::fsutil::sync_file(&w.inner, path))
            .map_err(|e| Error::io(path, e))?;
        let sums = w.sums();
        Ok((w.len, w.crc.finalize(), sums))
    }

    /// Opens `keys.bin` of a snapshot with `nslots` slots, mapped (see
    /// `snapshot::map_in_place`): its header and section sizes now, and, unless it is read
    /// lazily, its order, slots and counts (the scrub's check, see [`KeyIndex::scrub`]).
    pub(crate) fn open(file: InPlace, nslots: u32) -> Result<KeyIndex> {
        let path = file.path.clone();
        let bad = |off: usize, why: String| Error::corrupted(&path, off as u64, why);
        let len = file.map.len();
        if !file.ok(0, HEADER.min(len)) {
            return Err(file.damage().unwrap_or_else(|| bad(0, "header".into())));
        }
        let h = table_header(&path, &file.map, &MAGIC, "key index", KEYS_FORMAT_VERSION)?;
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
        let lazy = file.lazy.is_some();
        let buf = if lazy {
            Buf::Mapped(file)
        } else {
            // Checked in full: read whole into memory as before format 7, so that no later
            // lookup reads through a map (a page the kernel cannot read back would be a
            // SIGBUS there) and a pruned snapshot's file is not held open.
            let mut words = vec![0u64; len.div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..len].copy_from_slice(&file.map);
            Buf::Built(words)
        };
        let k = KeyIndex {
            buf,
            ids,
            content,
            refs,
            at: s,
            nslots,
            checked: AtomicBool::new(!lazy),
        };
        if !lazy {
            k.check_contents().map_err(|(at, why)| bad(at, why))?;
        }
        Ok(k)
    }

    /// Order, slots below the snapshot's count, and counts above zero, over the whole file
    /// (every block of it checked): the byte offset of the first fault and what it is.
    fn check_contents(&self) -> std::result::Result<(), (usize, String)> {
        let (s, nslots) = (self.at, self.nslots);
        let (ids, content, refs) = (self.ids, self.content, self.refs);
        let ascending = |at: usize, n: usize, what: &str| {
            let list = self.id_list(at, n);
            match list.windows(2).position(|w| w[0] >= w[1]) {
                Some(i) => Err((at + (i + 1) * 16, format!("{what} out of order"))),
                None => Ok(()),
            }
        };
        ascending(s.ids, ids, "id")?;
        ascending(s.ref_ids, refs, "ref target")?;
        let keys = self.content_keys();
        let cslots = self.u32s(s.content_slots, content);
        if keys.len() != content || cslots.len() != content {
            return Err((s.content_keys, "content keys not aligned in memory".into()));
        }
        if let Some(i) = keys
            .windows(2)
            .zip(cslots.windows(2))
            .position(|(k, c)| (k[0], c[0]) >= (k[1], c[1]))
        {
            return Err((
                s.content_keys + (i + 1) * 8,
                "content key out of order".into(),
            ));
        }
        for (at, n) in [(s.id_slots, ids), (s.content_slots, content)] {
            if let Some(i) = self.u32s(at, n).iter().position(|slot| *slot >= nslots) {
                return Err((at + i * 4, format!("slot beyond the snapshot's {nslots}")));
            }
        }
        if let Some(i) = self.u32s(s.ref_counts, refs).iter().position(|n| *n == 0) {
            return Err((s.ref_counts + i * 4, "zero reference count".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
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
        let sums = crate::disk::sums::parse_sums(
            &spath,
            &std::fs::read(&spath).unwrap(),
            map.len() as u64,
        )?;
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
            err.contains("zero reference count")
                && err.contains(&format!("offset {}", s.ref_counts)),
            "{err}"
        );
    }
}
