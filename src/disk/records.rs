//! A record's immutable body (kind, text, tags, project, session, refs) and the snapshot's
//! record table file, `records.bin` (record table format 1).
//!
//! The table is memory-mapped and not decoded row by row into owned strings: a loaded
//! record's [`Body`] is the table plus its row number, and its accessors slice the table's
//! string arena. Opening a store therefore costs one crc32 and one UTF-8 check of the mapped
//! file plus a fixed-size parse per row, instead of a decompression, an rkyv check and a
//! deserialisation of every string (1.0 s of a 1.4 s open at 1M records).
//!
//! Layout (all integers little-endian; docs/format.md has the table):
//! ```text
//! header (64 B) | rows (n × 112 B) | tag lengths (u32 each) | refs (16 B each) | arena (UTF-8)
//! ```
//! Each row holds the fixed fields and the lengths and starts of its strings; a row's strings
//! are consecutive in the arena (kind, text, project, session, then its tags). A full load
//! ([`load`]) checks the header crc, the whole file's length and crc32 against the snapshot
//! manifest, that the arena is UTF-8, and every row: slot order, layer, flags, and that each
//! start is the running sum of the lengths before it and falls on a character boundary.
//! From snapshot format 6 the engine maps the table unread instead ([`load_lazy`]): with its
//! block sums (`records.bin.sums`) and its slot index (`slots.bin`, [`write_slots`] /
//! [`read_slots`]: each slot's row, layer and layer-since time) open checks only the header
//! block, and each row is checked on its first read ([`RecordTable::row_ok`]) or by the
//! scrub. The accessors never panic: they slice with bounds and check each string's UTF-8.

use crate::disk::files::{
    len32, map_checked, table_header, u32_at, u64_at, CrcWriter, FileEntry, TABLE_HEADER,
};
use crate::disk::sums::Lazy;
use crate::error::{Error, Result};
use crate::types::Layer;
use magray_wal::Id;
use memmap2::Mmap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Record table format version (`records.bin`). Changelog in docs/format.md.
pub(crate) const RECORDS_FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"MGRYRECS";
const HEADER: usize = TABLE_HEADER;
const ROW: usize = 112;
const FLAG_PROJECT: u8 = 1;
const FLAG_SESSION: u8 = 2;
const FLAG_RATING: u8 = 4;

/// The body of a record inserted since the store was opened.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct OwnedBody {
    pub(crate) kind: String,
    pub(crate) text: String,
    pub(crate) tags: Vec<String>,
    pub(crate) project: Option<String>,
    pub(crate) session: Option<String>,
    pub(crate) refs: Vec<Id>,
}

/// A record's immutable fields: owned, or a row of a loaded record table. Cloning is a
/// reference count either way (a checkpoint clones every body under the state lock).
#[derive(Clone)]
pub(crate) enum Body {
    Owned(Arc<OwnedBody>),
    Table(Arc<RecordTable>, u32),
}

impl Body {
    pub(crate) fn owned(b: OwnedBody) -> Body {
        Body::Owned(Arc::new(b))
    }

    /// The body where it is kept, to read it.
    pub(crate) fn as_ref(&self) -> BodyRef<'_> {
        match self {
            Body::Owned(b) => BodyRef::Owned(b),
            Body::Table(t, row) => BodyRef::Table(t, *row),
        }
    }

    pub(crate) fn kind(&self) -> &str {
        self.as_ref().kind()
    }

    pub(crate) fn text(&self) -> &str {
        self.as_ref().text()
    }

    pub(crate) fn project(&self) -> Option<&str> {
        self.as_ref().project()
    }

    pub(crate) fn session(&self) -> Option<&str> {
        self.as_ref().session()
    }

    /// The tags, in insertion order.
    pub(crate) fn tags(&self) -> Vec<&str> {
        self.as_ref().tags()
    }

    pub(crate) fn refs(&self) -> Vec<Id> {
        self.as_ref().refs()
    }
}

/// A record's body, borrowed from where it is kept: a [`Body`], or a row of a loaded table
/// (a record unchanged since that snapshot has nothing else).
#[derive(Clone, Copy)]
pub(crate) enum BodyRef<'a> {
    Owned(&'a Arc<OwnedBody>),
    Table(&'a Arc<RecordTable>, u32),
}

impl<'a> BodyRef<'a> {
    /// An owned handle on the same body (a reference count).
    pub(crate) fn to_body(self) -> Body {
        match self {
            BodyRef::Owned(b) => Body::Owned(b.clone()),
            BodyRef::Table(t, row) => Body::Table(t.clone(), row),
        }
    }

    pub(crate) fn kind(self) -> &'a str {
        match self {
            BodyRef::Owned(b) => &b.kind,
            BodyRef::Table(t, row) => t.span(row, 0),
        }
    }

    pub(crate) fn text(self) -> &'a str {
        match self {
            BodyRef::Owned(b) => &b.text,
            BodyRef::Table(t, row) => t.span(row, 1),
        }
    }

    pub(crate) fn project(self) -> Option<&'a str> {
        match self {
            BodyRef::Owned(b) => b.project.as_deref(),
            BodyRef::Table(t, row) => (t.flags(row) & FLAG_PROJECT != 0).then(|| t.span(row, 2)),
        }
    }

    pub(crate) fn session(self) -> Option<&'a str> {
        match self {
            BodyRef::Owned(b) => b.session.as_deref(),
            BodyRef::Table(t, row) => (t.flags(row) & FLAG_SESSION != 0).then(|| t.span(row, 3)),
        }
    }

    /// The tags, in insertion order.
    pub(crate) fn tags(self) -> Vec<&'a str> {
        match self {
            BodyRef::Owned(b) => b.tags.iter().map(String::as_str).collect(),
            BodyRef::Table(t, row) => t.tags(row).collect(),
        }
    }

    pub(crate) fn has_tag(self, tag: &str) -> bool {
        match self {
            BodyRef::Owned(b) => b.tags.iter().any(|t| t == tag),
            BodyRef::Table(t, row) => t.tags(row).any(|t| t == tag),
        }
    }

    pub(crate) fn refs(self) -> Vec<Id> {
        match self {
            BodyRef::Owned(b) => b.refs.clone(),
            BodyRef::Table(t, row) => t.refs(row),
        }
    }
}

impl PartialEq for Body {
    /// Equal contents, wherever they are kept.
    fn eq(&self, o: &Body) -> bool {
        self.kind() == o.kind()
            && self.text() == o.text()
            && self.project() == o.project()
            && self.session() == o.session()
            && self.tags() == o.tags()
            && self.refs() == o.refs()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("kind", &self.kind())
            .field("text", &self.text())
            .field("tags", &self.tags())
            .field("project", &self.project())
            .field("session", &self.session())
            .field("refs", &self.refs().len())
            .finish()
    }
}

/// One record of the table: its fixed fields (those that change, layer, layer-since time and
/// rating, as of the snapshot) and its body.
pub(crate) struct Row {
    pub(crate) fields: RowFields,
    pub(crate) body: Body,
}

/// A loaded `records.bin`: the mapped file, whose fixed part (rows, tag lengths, refs) runs
/// from the header to `arena_at` and whose string arena runs from there to the end.
pub(crate) struct RecordTable {
    map: Mmap,
    arena_at: usize,
    rows: u32,
    tags_at: usize,
    refs_at: usize,
    ntags: u64,
    nrefs: u64,
    nslots: u32,
    /// Where it is (in errors).
    path: PathBuf,
    /// A table mapped unread: its blocks checked against its block sums, and each row's
    /// fields and strings, on first read (see [`RecordTable::row_ok`]). `None`: every byte
    /// and row was checked when it was loaded.
    lazy: Option<LazyRows>,
}

/// What a table mapped unread has checked so far.
struct LazyRows {
    blocks: Lazy,
    /// One bit per row, set once it checked out.
    rows: Vec<AtomicU64>,
    /// Every row checked out (a scrub).
    all: AtomicBool,
}

impl std::fmt::Debug for RecordTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordTable")
            .field("rows", &self.rows)
            .field("arena", &self.arena().len())
            .field("lazy", &self.lazy.is_some())
            .finish()
    }
}

/// Byte offsets of a row's fields.
mod at {
    pub(super) const SLOT: usize = 0;
    pub(super) const LAYER: usize = 4;
    pub(super) const FLAGS: usize = 5;
    pub(super) const PAD: usize = 6;
    pub(super) const ID: usize = 8;
    pub(super) const HASH: usize = 24;
    pub(super) const TS: usize = 32;
    pub(super) const SEQ: usize = 40;
    pub(super) const SINCE: usize = 48;
    pub(super) const RATING: usize = 56;
    pub(super) const NTAGS: usize = 60;
    pub(super) const NREFS: usize = 64;
    /// kind, text, project, session lengths (u32 each).
    pub(super) const LENS: usize = 68;
    pub(super) const PAD2: usize = 84;
    pub(super) const STR: usize = 88;
    pub(super) const TAG0: usize = 96;
    pub(super) const REF0: usize = 104;
}

/// The fixed fields of one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowFields {
    pub(crate) slot: u32,
    pub(crate) id: Id,
    pub(crate) layer: Layer,
    pub(crate) content_hash: u64,
    pub(crate) ts_us: u64,
    pub(crate) inserted_seq: u64,
    pub(crate) layer_since_us: u64,
    pub(crate) rating: Option<f32>,
}

impl RecordTable {
    pub(crate) fn len(&self) -> u32 {
        self.rows
    }

    fn row(&self, row: u32) -> &[u8] {
        let at = row as usize * ROW;
        &self.fixed()[at..at + ROW]
    }

    /// Rows, tag lengths and refs.
    fn fixed(&self) -> &[u8] {
        &self.map[HEADER..self.arena_at]
    }

    /// The text of every row.
    #[allow(unsafe_code)]
    fn arena(&self) -> &[u8] {
        self.map.get(self.arena_at..).unwrap_or_default()
    }

    /// Bytes `[start, end)` of the arena as text: a span of a checked row, so in bounds and
    /// UTF-8 (`load` checked the whole arena; `row_ok` each span of a lazily read table).
    /// Anything else reads as empty, never a panic.
    fn text_at(&self, start: usize, end: usize) -> &str {
        self.arena()
            .get(start..end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    fn flags(&self, row: u32) -> u8 {
        self.row(row)[at::FLAGS]
    }

    /// Where string `which` of a row starts in the arena (0 kind, 1 text, 2 project,
    /// 3 session, 4 its first tag): the row's start plus the lengths before it.
    fn start(r: &[u8], which: usize) -> usize {
        let lens = (0..which).map(|i| u32_at(r, at::LENS + 4 * i) as usize);
        u64_at(r, at::STR) as usize + lens.sum::<usize>()
    }

    /// String `which` of a row: 0 kind, 1 text, 2 project, 3 session.
    fn span(&self, row: u32, which: usize) -> &str {
        let r = self.row(row);
        let start = Self::start(r, which);
        let end = start + u32_at(r, at::LENS + 4 * which) as usize;
        self.text_at(start, end)
    }

    fn tags(&self, row: u32) -> impl Iterator<Item = &str> {
        let r = self.row(row);
        let mut start = Self::start(r, 4);
        let first = u64_at(r, at::TAG0) as usize;
        let n = u32_at(r, at::NTAGS) as usize;
        (first..first + n).map(move |t| {
            let len = self
                .fixed()
                .get(self.tags_at + 4 * t..self.tags_at + 4 * t + 4)
                .map_or(0, |b| u32_at(b, 0) as usize);
            let s = start;
            start += len;
            self.text_at(s, s + len)
        })
    }

    fn refs(&self, row: u32) -> Vec<Id> {
        let r = self.row(row);
        let first = u64_at(r, at::REF0) as usize;
        let n = u32_at(r, at::NREFS) as usize;
        (first..first + n)
            .map(|i| {
                let at = self.refs_at + 16 * i;
                let mut id = [0u8; 16];
                if let Some(b) = self.fixed().get(at..at + 16) {
                    id.copy_from_slice(b);
                }
                id
            })
            .collect()
    }

    /// True when row `row` can be read as the record the slot index gave `expect` (its
    /// slot, layer and layer-since time): always for a table checked in full at load; for one
    /// mapped unread, once the blocks holding the row, its tag lengths, refs and strings
    /// match their sums and its fields are sound (layer, flags, zero padding, every span in
    /// bounds and UTF-8) and agree with `expect`. The first failure is kept as the table's
    /// damage. A row is named by one slot only, so once checked it stays checked.
    pub(crate) fn row_ok(&self, row: u32, expect: (u32, Layer, u64)) -> bool {
        let Some(lz) = &self.lazy else {
            return true;
        };
        if row >= self.rows {
            lz.blocks
                .fail(16, format!("row {row} of a table of {} rows", self.rows));
            return false;
        }
        let bit = 1u64 << (row % 64);
        if lz.all.load(Ordering::Acquire)
            || lz.rows[row as usize / 64].load(Ordering::Acquire) & bit != 0
        {
            return true;
        }
        match self.check_lazy_row(lz, row, expect) {
            Ok(()) => {
                lz.rows[row as usize / 64].fetch_or(bit, Ordering::Release);
                true
            }
            Err((at, why)) => {
                lz.blocks.fail(at as u64, format!("row {row}: {why}"));
                false
            }
        }
    }

    fn check_lazy_row(
        &self,
        lz: &LazyRows,
        row: u32,
        expect: (u32, Layer, u64),
    ) -> Result<(), (usize, String)> {
        let name = "records.bin";
        let row_at = HEADER + row as usize * ROW;
        let blocks_ok = |at: usize, n: usize| lz.blocks.check_range(&self.map, at, n, name);
        if !blocks_ok(row_at, ROW) {
            return Err((row_at, "a block holding it does not match its sum".into()));
        }
        let r = self.row(row);
        let layer = check_row_fields(r, self.nslots).map_err(|why| (row_at, why))?;
        let found = (u32_at(r, at::SLOT), layer, u64_at(r, at::SINCE));
        if found != expect {
            return Err((
                row_at,
                format!(
                    "holds slot {}, layer {} since {}; the slot index says slot {}, layer {} since {}",
                    found.0, found.1, found.2, expect.0, expect.1, expect.2
                ),
            ));
        }
        let (ntag, nref) = (
            u64::from(u32_at(r, at::NTAGS)),
            u64::from(u32_at(r, at::NREFS)),
        );
        let (tag0, ref0) = (u64_at(r, at::TAG0), u64_at(r, at::REF0));
        if tag0.checked_add(ntag).is_none_or(|e| e > self.ntags)
            || ref0.checked_add(nref).is_none_or(|e| e > self.nrefs)
        {
            return Err((row_at, "tags or refs beyond their tables".into()));
        }
        let (tags_at, refs_at) = (
            HEADER + self.tags_at + 4 * tag0 as usize,
            HEADER + self.refs_at + 16 * ref0 as usize,
        );
        if !blocks_ok(tags_at, 4 * ntag as usize) || !blocks_ok(refs_at, 16 * nref as usize) {
            return Err((
                row_at,
                "a block holding its tags or refs does not match its sum".into(),
            ));
        }
        let tag_lens = (tag0..tag0 + ntag).map(|t| {
            let at = self.tags_at + 4 * t as usize;
            u64::from(u32_at(self.fixed(), at))
        });
        let lens: Vec<u64> = (0..4)
            .map(|i| u64::from(u32_at(r, at::LENS + 4 * i)))
            .chain(tag_lens)
            .collect();
        let start = u64_at(r, at::STR);
        let total = lens.iter().try_fold(0u64, |a, l| a.checked_add(*l));
        let arena = self.arena().len() as u64;
        let Some(total) = total.filter(|t| start.checked_add(*t).is_some_and(|e| e <= arena))
        else {
            return Err((row_at, "its strings end beyond the text".into()));
        };
        let text_at = self.arena_at + start as usize;
        if !blocks_ok(text_at, total as usize) {
            return Err((
                text_at,
                "a block holding its text does not match its sum".into(),
            ));
        }
        let mut s = start as usize;
        for len in lens {
            let e = s + len as usize;
            if let Err(err) = std::str::from_utf8(&self.arena()[s..e]) {
                return Err((
                    self.arena_at + s + err.valid_up_to(),
                    "text is not UTF-8".into(),
                ));
            }
            s = e;
        }
        Ok(())
    }

    /// Checks a table loaded in full against its block sums file (`sums_path`, parsed):
    /// each 4 KiB block's crc32 (tools and open after damage, so that sums that disagree
    /// with the table are found before a lazy open trusts them).
    pub(crate) fn check_block_sums(&self, sums: &[u32], sums_path: &Path) -> Result<()> {
        crate::disk::sums::check_sums(&self.map, sums, sums_path, &self.path)
    }

    /// The damage found in a table mapped unread, naming the file and offset.
    pub(crate) fn damage(&self) -> Option<Error> {
        let (at, why) = self.lazy.as_ref()?.blocks.damage()?;
        Some(Error::corrupted(&self.path, *at, why.clone()))
    }

    /// True while some rows of a table mapped unread have not been checked.
    pub(crate) fn unchecked(&self) -> bool {
        self.lazy
            .as_ref()
            .is_some_and(|lz| !lz.all.load(Ordering::Acquire))
    }

    /// Checks every block of a table mapped unread against its sum (the indexer does, in the
    /// background, right after open, before it checks the rows the slots name:
    /// `Projections::check_rows`), unless `stop` says to stop: the damage found, if any.
    pub(crate) fn scrub_blocks(&self, stop: &dyn Fn() -> bool) -> Result<()> {
        let Some(lz) = &self.lazy else {
            return Ok(());
        };
        lz.blocks.scrub(&self.map, "records.bin", stop);
        match self.damage() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Marks every row checked: every row a slot names was (`Projections::check_rows`; rows
    /// no slot names any more are never read).
    pub(crate) fn set_rows_checked(&self) {
        if let Some(lz) = &self.lazy {
            lz.all.store(true, Ordering::Release);
        }
    }

    /// A row's layer (checked by `load`).
    pub(crate) fn layer(&self, row: u32) -> Layer {
        let l = self.row(row)[at::LAYER];
        Layer::ALL
            .get(l as usize)
            .copied()
            .unwrap_or(Layer::Interact)
    }

    pub(crate) fn fields(&self, row: u32) -> RowFields {
        let r = self.row(row);
        let mut id = [0u8; 16];
        id.copy_from_slice(&r[at::ID..at::ID + 16]);
        RowFields {
            slot: u32_at(r, at::SLOT),
            id,
            layer: self.layer(row),
            content_hash: u64_at(r, at::HASH),
            ts_us: u64_at(r, at::TS),
            inserted_seq: u64_at(r, at::SEQ),
            layer_since_us: u64_at(r, at::SINCE),
            rating: (r[at::FLAGS] & FLAG_RATING != 0)
                .then(|| f32::from_bits(u32_at(r, at::RATING))),
        }
    }
}

/// Writes `rows` (in slot order) as a record table; returns its length, crc32 and block
/// sums (a crc32 per 4 KiB block, for [`load_lazy`]).
pub(crate) fn write(w: impl Write, rows: &[Row]) -> std::io::Result<(u64, u32, Vec<u32>)> {
    let mut w = CrcWriter::with_block_sums(std::io::BufWriter::with_capacity(1 << 20, w));
    let (mut ntags, mut nrefs, mut arena) = (0u64, 0u64, 0u64);
    let mut fixed = Vec::with_capacity(rows.len() * ROW);
    for Row { fields: r, body: b } in rows {
        let (project, session) = (b.project(), b.session());
        let tags = b.tags();
        let refs = b.refs();
        let mut row = [0u8; ROW];
        row[at::SLOT..at::SLOT + 4].copy_from_slice(&r.slot.to_le_bytes());
        row[at::LAYER] = r.layer.index() as u8;
        row[at::FLAGS] = if project.is_some() { FLAG_PROJECT } else { 0 }
            | if session.is_some() { FLAG_SESSION } else { 0 }
            | if r.rating.is_some() { FLAG_RATING } else { 0 };
        row[at::ID..at::ID + 16].copy_from_slice(&r.id);
        for (off, v) in [
            (at::HASH, r.content_hash),
            (at::TS, r.ts_us),
            (at::SEQ, r.inserted_seq),
            (at::SINCE, r.layer_since_us),
            (at::STR, arena),
            (at::TAG0, ntags),
            (at::REF0, nrefs),
        ] {
            row[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        let lens = [
            len32(b.kind().len(), "a kind")?,
            len32(b.text().len(), "a text")?,
            len32(project.map_or(0, str::len), "a project")?,
            len32(session.map_or(0, str::len), "a session")?,
        ];
        for (i, v) in [
            r.rating.map_or(0, f32::to_bits),
            len32(tags.len(), "a tag list")?,
            len32(refs.len(), "a ref list")?,
        ]
        .into_iter()
        .chain(lens)
        .enumerate()
        {
            let off = at::RATING + 4 * i;
            row[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        ntags += tags.len() as u64;
        nrefs += refs.len() as u64;
        arena += lens.iter().map(|l| u64::from(*l)).sum::<u64>()
            + tags.iter().map(|t| t.len() as u64).sum::<u64>();
        fixed.extend_from_slice(&row);
    }
    let mut h = [0u8; HEADER];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&RECORDS_FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(ROW as u32).to_le_bytes());
    h[16..24].copy_from_slice(&(rows.len() as u64).to_le_bytes());
    h[24..32].copy_from_slice(&ntags.to_le_bytes());
    h[32..40].copy_from_slice(&nrefs.to_le_bytes());
    h[40..48].copy_from_slice(&arena.to_le_bytes());
    let hcrc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&hcrc.to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&fixed)?;
    drop(fixed);
    for r in rows {
        for t in r.body.tags() {
            w.write_all(&len32(t.len(), "a tag")?.to_le_bytes())?;
        }
    }
    for r in rows {
        for id in r.body.refs() {
            w.write_all(&id)?;
        }
    }
    for Row { body: b, .. } in rows {
        for s in [
            b.kind(),
            b.text(),
            b.project().unwrap_or(""),
            b.session().unwrap_or(""),
        ] {
            w.write_all(s.as_bytes())?;
        }
        for t in b.tags() {
            w.write_all(t.as_bytes())?;
        }
    }
    w.flush()?;
    let sums = w.sums();
    Ok((w.len, w.crc.clone().finalize(), sums))
}

/// Checks the record table `entry` of the snapshot in `dir` against its manifest length and
/// crc32, then maps and reads it; `nslots` bounds the slots it may name.
pub(crate) fn load(dir: &Path, entry: &FileEntry, nslots: u32) -> Result<Arc<RecordTable>> {
    load_each(dir, entry, nslots, |_, _, _, _| {})
}

/// [`load`], calling `each(row, slot, layer, layer_since_us)` for every row as it is checked
/// (one pass over the rows instead of two: at 1M records they are 112 MB).
pub(crate) fn load_each(
    dir: &Path,
    entry: &FileEntry,
    nslots: u32,
    each: impl FnMut(u32, u32, Layer, u64),
) -> Result<Arc<RecordTable>> {
    // Length and crc are checked before anything else is read through the map.
    let map = map_checked(dir, entry)?;
    let path = &dir.join(&entry.name);
    let t = table_of(map, path, entry.len, nslots, None)?;
    let bad = |off: u64, why: String| Error::corrupted(path, off, why);
    if let Err(e) = std::str::from_utf8(t.arena()) {
        return Err(bad(
            (t.arena_at + e.valid_up_to()) as u64,
            "text is not UTF-8".into(),
        ));
    }
    check_rows(&t, t.ntags, t.nrefs, nslots, each).map_err(|(row, why)| {
        bad(
            HEADER as u64 + u64::from(row) * ROW as u64,
            format!("row {row}: {why}"),
        )
    })?;
    Ok(Arc::new(t))
}

/// The record table `entry` of the snapshot in `dir` mapped unread, with its block `sums`
/// (read and checked by the caller): only its header and sizes are checked here; each row
/// on its first read ([`RecordTable::row_ok`]) or by the scrub ([`RecordTable::scrub_blocks`],
/// then `Projections::check_rows`).
/// `None` where a page that cannot be read would be a SIGBUS rather than an error
/// (`MADV_POPULATE_READ` missing): the caller then loads it in full.
pub(crate) fn load_lazy(
    dir: &Path,
    entry: &FileEntry,
    sums: Vec<u32>,
    nslots: u32,
) -> Result<Option<Arc<RecordTable>>> {
    let path = &dir.join(&entry.name);
    let Some(map) = crate::disk::files::map_for_blocks(dir, entry)? else {
        return Ok(None);
    };
    // The header is read through the map: populate it first (an unreadable page is an
    // error, not a SIGBUS) and check its block against its sum.
    let blocks = Lazy::new(sums);
    if !blocks.check_range(&map, 0, HEADER.min(map.len()), &entry.name) {
        let (at, why) = blocks.damage().cloned().unwrap_or_default();
        return Err(Error::corrupted(path, at, why));
    }
    Ok(Some(Arc::new(table_of(
        map,
        path,
        entry.len,
        nslots,
        Some(blocks),
    )?)))
}

/// A table over `map` (the file at `path`, `flen` bytes) after its header's checks: magic,
/// crc, version, row size, reserved bytes, and sizes that add up to the file. With `lazy`
/// (its block checks), each row is checked on first read.
fn table_of(
    map: Mmap,
    path: &Path,
    flen: u64,
    nslots: u32,
    lazy: Option<Lazy>,
) -> Result<RecordTable> {
    let bad = |off: u64, why: String| Error::corrupted(path, off, why);
    let h = table_header(path, &map, &MAGIC, "record table", RECORDS_FORMAT_VERSION)?;
    if u32_at(h, 12) as usize != ROW {
        return Err(bad(
            12,
            format!("row size {}, expected {ROW}", u32_at(h, 12)),
        ));
    }
    if h[48..60].iter().any(|b| *b != 0) {
        return Err(bad(48, "reserved bytes are not zero".into()));
    }
    let (rows, ntags, nrefs, arena_len) =
        (u64_at(h, 16), u64_at(h, 24), u64_at(h, 32), u64_at(h, 40));
    // Sizes from a header whose crc matched, but checked against the file before use.
    let fixed_len = rows
        .checked_mul(ROW as u64)
        .and_then(|x| x.checked_add(ntags.checked_mul(4)?))
        .and_then(|x| x.checked_add(nrefs.checked_mul(16)?));
    let Some(fixed_len) = fixed_len.filter(|x| {
        x.checked_add(arena_len)
            .and_then(|t| t.checked_add(HEADER as u64))
            == Some(flen)
    }) else {
        return Err(bad(
            16,
            format!("{rows} rows, {ntags} tags, {nrefs} refs and {arena_len} text bytes do not add up to the file's {flen} bytes"),
        ));
    };
    if rows > u64::from(nslots) {
        return Err(bad(16, format!("{rows} rows but only {nslots} slots")));
    }
    let arena_at = HEADER + fixed_len as usize;
    Ok(RecordTable {
        map,
        arena_at,
        rows: rows as u32,
        tags_at: rows as usize * ROW,
        refs_at: rows as usize * ROW + ntags as usize * 4,
        ntags,
        nrefs,
        nslots,
        path: path.to_path_buf(),
        lazy: lazy.map(|blocks| LazyRows {
            blocks,
            rows: (0..(rows as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            all: AtomicBool::new(false),
        }),
    })
}

/// What one row must hold on its own: a slot below `nslots`, a known layer, known flags, zero
/// padding, and nothing in a field flagged absent. Its layer.
fn check_row_fields(r: &[u8], nslots: u32) -> Result<Layer, String> {
    let slot = u32_at(r, at::SLOT);
    if slot >= nslots {
        return Err(format!("slot {slot} out of order or beyond {nslots}"));
    }
    let Some(layer) = Layer::ALL.get(r[at::LAYER] as usize).copied() else {
        return Err(format!("unknown layer {}", r[at::LAYER]));
    };
    let flags = r[at::FLAGS];
    if flags & !(FLAG_PROJECT | FLAG_SESSION | FLAG_RATING) != 0
        || r[at::PAD..at::PAD + 2] != [0, 0]
        || r[at::PAD2..at::PAD2 + 4] != [0; 4]
    {
        return Err("unknown flags or non-zero padding".into());
    }
    if (flags & FLAG_RATING == 0 && u32_at(r, at::RATING) != 0)
        || (flags & FLAG_PROJECT == 0 && u32_at(r, at::LENS + 8) != 0)
        || (flags & FLAG_SESSION == 0 && u32_at(r, at::LENS + 12) != 0)
    {
        return Err("a field flagged absent has a value".into());
    }
    Ok(layer)
}

/// Every row's fields and spans, so the accessors can slice without checking.
fn check_rows(
    t: &RecordTable,
    ntags: u64,
    nrefs: u64,
    nslots: u32,
    mut each: impl FnMut(u32, u32, Layer, u64),
) -> Result<(), (u32, String)> {
    let (mut str_at, mut tag_at, mut ref_at) = (0u64, 0u64, 0u64);
    let mut prev_slot: Option<u32> = None;
    for row in 0..t.rows {
        let r = t.row(row);
        let slot = u32_at(r, at::SLOT);
        if prev_slot.is_some_and(|p| slot <= p) {
            return Err((row, format!("slot {slot} out of order or beyond {nslots}")));
        }
        prev_slot = Some(slot);
        let layer = check_row_fields(r, nslots).map_err(|why| (row, why))?;
        if (u64_at(r, at::STR), u64_at(r, at::TAG0), u64_at(r, at::REF0))
            != (str_at, tag_at, ref_at)
        {
            return Err((
                row,
                "string, tag or ref start is not where the rows before end".into(),
            ));
        }
        let ntag = u64::from(u32_at(r, at::NTAGS));
        let nref = u64::from(u32_at(r, at::NREFS));
        if tag_at + ntag > ntags || ref_at + nref > nrefs {
            return Err((row, "tags or refs beyond their tables".into()));
        }
        let strings = (0..4).map(|i| u32_at(r, at::LENS + 4 * i));
        let tags = (tag_at..tag_at + ntag).map(|i| u32_at(t.fixed(), t.tags_at + 4 * i as usize));
        for len in strings.chain(tags).map(u64::from) {
            str_at += len;
            // The arena is UTF-8 (checked before): a boundary is its end or a byte that
            // does not continue a character.
            let at_boundary = t
                .arena()
                .get(str_at as usize)
                .is_none_or(|b| (*b as i8) >= -0x40);
            if str_at > t.arena().len() as u64 || !at_boundary {
                return Err((
                    row,
                    "a string ends beyond the text or inside a character".into(),
                ));
            }
        }
        tag_at += ntag;
        ref_at += nref;
        each(row, slot, layer, u64_at(r, at::SINCE));
    }
    if (str_at, tag_at, ref_at) != (t.arena().len() as u64, ntags, nrefs) {
        return Err((t.rows, "the rows do not use the whole tables".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
