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
mod tests;
