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
//! are consecutive in the arena (kind, text, project, session, then its tags). Loading checks
//! the header crc, the whole file's length and crc32 against the snapshot manifest, that the
//! arena is UTF-8, and every row: slot order, layer, flags, and that each start is the running
//! sum of the lengths before it and falls on a character boundary. The accessors then only
//! slice what was checked.

use crate::error::{Error, Result};
use crate::snapshot::{map_checked, FileEntry};
use crate::types::Layer;
use magray_wal::Id;
use memmap2::Mmap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Record table format version (`records.bin`). Changelog in docs/format.md.
pub(crate) const RECORDS_FORMAT_VERSION: u32 = 1;
const MAGIC: [u8; 8] = *b"MGRYRECS";
const HEADER: usize = 64;
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
}

impl std::fmt::Debug for RecordTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordTable")
            .field("rows", &self.rows)
            .field("arena", &self.arena().len())
            .finish()
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
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
    fn arena(&self) -> &str {
        // SAFETY: `load` ran `std::str::from_utf8` over exactly these bytes before it built
        // the table, and they do not change: snapshot files are never written again once
        // renamed into place, and the store lock keeps other writers of ours out (the same
        // assumption as the vector chunk maps).
        unsafe { std::str::from_utf8_unchecked(&self.map[self.arena_at..]) }
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
        // `load` checked every span of every row: in bounds and on character boundaries.
        self.arena().get(start..end).unwrap_or_default()
    }

    fn tags(&self, row: u32) -> impl Iterator<Item = &str> {
        let r = self.row(row);
        let mut start = Self::start(r, 4);
        let first = u64_at(r, at::TAG0) as usize;
        let n = u32_at(r, at::NTAGS) as usize;
        (first..first + n).map(move |t| {
            let len = u32_at(self.fixed(), self.tags_at + 4 * t) as usize;
            let s = start;
            start += len;
            self.arena().get(s..s + len).unwrap_or_default()
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
                id.copy_from_slice(&self.fixed()[at..at + 16]);
                id
            })
            .collect()
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

/// A writer that keeps the crc32 and length of what went through it.
pub(crate) struct CrcWriter<W> {
    pub(crate) inner: W,
    pub(crate) crc: crc32fast::Hasher,
    pub(crate) len: u64,
}

impl<W> CrcWriter<W> {
    pub(crate) fn new(inner: W) -> CrcWriter<W> {
        CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn len32(n: usize, what: &str) -> std::io::Result<u32> {
    u32::try_from(n).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} of {n} bytes does not fit the record table"),
        )
    })
}

/// Writes `rows` (in slot order) as a record table; returns its length and crc32.
pub(crate) fn write(w: impl Write, rows: &[Row]) -> std::io::Result<(u64, u32)> {
    let mut w = CrcWriter::new(std::io::BufWriter::with_capacity(1 << 20, w));
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
    Ok((w.len, w.crc.finalize()))
}

/// Checks the 64-byte header a snapshot's table files start with (`records.bin`,
/// `keys.bin`): that `file` holds one, its magic (bytes 0..8), its crc32 of bytes 0..60 (at
/// 60) and its format version (u32 at 8), `what` naming the kind of file in the errors.
/// Returns the header.
pub(crate) fn table_header<'a>(
    path: &Path,
    file: &'a [u8],
    magic: &[u8; 8],
    what: &str,
    version: u32,
) -> Result<&'a [u8]> {
    let bad = |off: u64, why: String| Error::corrupted(path, off, why);
    if file.len() < HEADER {
        return Err(bad(0, format!("shorter than the {what} header")));
    }
    let h = &file[..HEADER];
    if h[0..8] != *magic {
        return Err(bad(0, format!("bad magic (not a {what})")));
    }
    if crc32fast::hash(&h[..60]) != u32_at(h, 60) {
        return Err(bad(60, "header checksum mismatch".into()));
    }
    let v = u32_at(h, 8);
    if v != version {
        return Err(bad(
            8,
            format!("{what} format {v}, this build reads {version}"),
        ));
    }
    Ok(h)
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
    let bad = |off: u64, why: String| Error::corrupted(path, off, why);
    let flen = entry.len;
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
    if let Err(e) = std::str::from_utf8(&map[arena_at..]) {
        return Err(bad(
            (arena_at + e.valid_up_to()) as u64,
            "text is not UTF-8".into(),
        ));
    }
    let t = RecordTable {
        map,
        arena_at,
        rows: rows as u32,
        tags_at: rows as usize * ROW,
        refs_at: rows as usize * ROW + ntags as usize * 4,
    };
    check_rows(&t, ntags, nrefs, nslots, each).map_err(|(row, why)| {
        bad(
            HEADER as u64 + u64::from(row) * ROW as u64,
            format!("row {row}: {why}"),
        )
    })?;
    Ok(Arc::new(t))
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
        if slot >= nslots || prev_slot.is_some_and(|p| slot <= p) {
            return Err((row, format!("slot {slot} out of order or beyond {nslots}")));
        }
        prev_slot = Some(slot);
        let Some(layer) = Layer::ALL.get(r[at::LAYER] as usize).copied() else {
            return Err((row, format!("unknown layer {}", r[at::LAYER])));
        };
        let flags = r[at::FLAGS];
        if flags & !(FLAG_PROJECT | FLAG_SESSION | FLAG_RATING) != 0
            || r[at::PAD..at::PAD + 2] != [0, 0]
            || r[at::PAD2..at::PAD2 + 4] != [0; 4]
        {
            return Err((row, "unknown flags or non-zero padding".into()));
        }
        if (flags & FLAG_RATING == 0 && u32_at(r, at::RATING) != 0)
            || (flags & FLAG_PROJECT == 0 && u32_at(r, at::LENS + 8) != 0)
            || (flags & FLAG_SESSION == 0 && u32_at(r, at::LENS + 12) != 0)
        {
            return Err((row, "a field flagged absent has a value".into()));
        }
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
            if str_at > t.arena().len() as u64 || !t.arena().is_char_boundary(str_at as usize) {
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
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use std::fs::File;

    fn rows() -> Vec<Row> {
        (0..50u32)
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
    fn load_as(
        dir: &tempfile::TempDir,
        len: u64,
        crc: u32,
        nslots: u32,
    ) -> Result<Arc<RecordTable>> {
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
        let (len, crc) = write(f, rows).unwrap();
        (dir, path, len, crc)
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
}
