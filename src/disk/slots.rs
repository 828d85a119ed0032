//! The slot index of a record table (`slots.bin`, snapshot format 6 on): each slot's row, layer
//! and layer-since time, so that open fills the slots without reading the table.

use crate::disk::files::{
    map_checked, table_header, u32_at, u64_at, FileEntry, TABLE_HEADER as HEADER,
};
use crate::disk::records::Row;
use crate::error::{Error, Result};
use crate::types::Layer;
use crate::util::SlotSet;
use memmap2::Mmap;
use std::io::Write;
use std::path::Path;

/// Slot index format version (`slots.bin`, snapshot format 6 on). Changelog in docs/format.md.
pub(crate) const SLOTS_FORMAT_VERSION: u32 = 1;

const SLOTS_MAGIC: [u8; 8] = *b"MGRYSLOT";

pub(crate) const SLOT_ENTRY: usize = 16;

pub(crate) const NO_ROW: u32 = u32::MAX;

/// Writes the slot index of a record table (`slots.bin`): for each of `nslots` slots, the
/// row of its record in the table written from `rows` (or none), its layer and the time it
/// entered it, so that open fills the slots without reading the table. Layout: a 64-byte
/// header (magic `MGRYSLOT`, version at 8, entry size at 12, slots at 16, rows at 24, zeros,
/// crc32 of bytes 0..60 at 60), then 16 bytes per slot: row u32 (`u32::MAX`: none), layer
/// u8, 3 zero bytes, layer-since µs u64 (zero for none). Returns its length and crc32.
pub(crate) fn write_slots(path: &Path, nslots: u32, rows: &[Row]) -> Result<(u64, u32)> {
    let mut b = vec![0u8; HEADER + nslots as usize * SLOT_ENTRY];
    b[0..8].copy_from_slice(&SLOTS_MAGIC);
    b[8..12].copy_from_slice(&SLOTS_FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(SLOT_ENTRY as u32).to_le_bytes());
    b[16..24].copy_from_slice(&u64::from(nslots).to_le_bytes());
    b[24..32].copy_from_slice(&(rows.len() as u64).to_le_bytes());
    let hcrc = crc32fast::hash(&b[..60]);
    b[60..64].copy_from_slice(&hcrc.to_le_bytes());
    for e in b[HEADER..].chunks_exact_mut(SLOT_ENTRY) {
        e[0..4].copy_from_slice(&NO_ROW.to_le_bytes());
    }
    for (row, r) in rows.iter().enumerate() {
        let at = HEADER + r.fields.slot as usize * SLOT_ENTRY;
        let Some(e) = b.get_mut(at..at + SLOT_ENTRY) else {
            return Err(Error::InvalidInput(format!(
                "slot {} beyond the {nslots} slots of a snapshot",
                r.fields.slot
            )));
        };
        e[0..4].copy_from_slice(&(row as u32).to_le_bytes());
        e[4] = r.fields.layer.index() as u8;
        e[8..16].copy_from_slice(&r.fields.layer_since_us.to_le_bytes());
    }
    let mut f = magray_wal::fsutil::create_file(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&b)
        .and_then(|_| magray_wal::fsutil::sync_file(&f, path))
        .map_err(|e| Error::io(path, e))?;
    Ok((b.len() as u64, crc32fast::hash(&b)))
}

/// Maps the slot index `entry` of the snapshot in `dir` (length and crc32 against the
/// manifest first, through the map) for a table of `rows` rows and `nslots` slots, and checks
/// its header and length: the map and its entries, one per slot.
fn map_slot_index(dir: &Path, entry: &FileEntry, rows: u32, nslots: u32) -> Result<Mmap> {
    let path = &dir.join(&entry.name);
    // Mapped, its length and crc32 checked through the map (no 16 MB copy per 1M slots).
    let b = map_checked(dir, entry)?;
    let bad = |off: usize, why: String| Error::corrupted(path, off as u64, why);
    let h = table_header(path, &b, &SLOTS_MAGIC, "slot index", SLOTS_FORMAT_VERSION)?;
    if u32_at(h, 12) as usize != SLOT_ENTRY || h[32..60].iter().any(|x| *x != 0) {
        return Err(bad(
            12,
            "entry size or reserved bytes unknown to this build".into(),
        ));
    }
    if u64_at(h, 16) != u64::from(nslots) || u64_at(h, 24) != u64::from(rows) {
        return Err(bad(
            16,
            format!(
                "{} slots and {} rows; the snapshot has {nslots} slots and its table {rows} rows",
                u64_at(h, 16),
                u64_at(h, 24)
            ),
        ));
    }
    if b.len() != HEADER + nslots as usize * SLOT_ENTRY {
        return Err(bad(0, format!("{} bytes for {nslots} slots", b.len())));
    }
    Ok(b)
}

/// One slot index entry (slot `slot`, `next` the row the next record must have): `None` for
/// a slot without a record, else its row, layer and layer-since time; the fault otherwise.
#[inline(always)]
fn slot_entry(
    e: &[u8; SLOT_ENTRY],
    slot: usize,
    next: u32,
) -> std::result::Result<Option<(u32, Layer, u64)>, String> {
    let row = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
    let since = u64::from_le_bytes([e[8], e[9], e[10], e[11], e[12], e[13], e[14], e[15]]);
    let pad = e[5] | e[6] | e[7];
    match Layer::ALL.get(e[4] as usize) {
        Some(layer) if row == next && pad == 0 => Ok(Some((row, *layer, since))),
        _ if row == NO_ROW && e[4] == 0 && pad == 0 && since == 0 => Ok(None),
        _ if row == NO_ROW => Err(format!("slot {slot} has no record but has fields")),
        _ => Err(format!(
            "slot {slot}: row {row} out of order, or an unknown layer"
        )),
    }
}

/// The entries of a slot index map checked by [`map_slot_index`].
fn slot_entries(b: &Mmap) -> &[[u8; SLOT_ENTRY]] {
    // The length was checked: a whole number of entries after the header.
    bytemuck::cast_slice(&b[HEADER..])
}

/// Reads the slot index `entry` of the snapshot in `dir` (see [`map_slot_index`]), calling
/// `each(slot, row, layer, layer_since_us)` for each slot with a record: rows must come in
/// slot order, each once, and every field must be sound.
pub(crate) fn read_slots(
    dir: &Path,
    entry: &FileEntry,
    rows: u32,
    nslots: u32,
    mut each: impl FnMut(u32, u32, Layer, u64),
) -> Result<()> {
    let b = map_slot_index(dir, entry, rows, nslots)?;
    let mut next = 0u32;
    for (slot, e) in slot_entries(&b).iter().enumerate() {
        match slot_entry(e, slot, next) {
            Ok(Some((row, layer, since))) => {
                each(slot as u32, row, layer, since);
                next += 1;
            }
            Ok(None) => {}
            Err(why) => return Err(slot_fault(dir, entry, HEADER + slot * SLOT_ENTRY, why)),
        }
    }
    slots_all_rows(dir, entry, next, rows)
}

/// The slots of a table of `rows` rows (table 0 of the projections) read from its slot index
/// `entry` (see [`map_slot_index`]), in one tight pass: each slot, and each layer's slots
/// (built as bitset words). What [`read_slots`] gives, without a call per slot (a
/// million slots in a few ms). `row(row, layer, layer_since_us)` makes the slot of a record,
/// `dead()` the slot of none.
pub(crate) fn slots_from_index<S>(
    dir: &Path,
    entry: &FileEntry,
    rows: u32,
    nslots: u32,
    row_slot: impl Fn(u32, Layer, u64) -> S,
    dead: impl Fn() -> S,
) -> Result<(Vec<S>, [SlotSet; 3])> {
    let b = map_slot_index(dir, entry, rows, nslots)?;
    let words = (nslots as usize).div_ceil(64);
    let mut layers: [(Vec<u64>, usize); 3] = std::array::from_fn(|_| (vec![0u64; words], 0));
    let mut slots = Vec::with_capacity(nslots as usize);
    let mut next = 0u32;
    for (slot, e) in slot_entries(&b).iter().enumerate() {
        match slot_entry(e, slot, next) {
            Ok(Some((row, layer, since))) => {
                slots.push(row_slot(row, layer, since));
                let (bits, count) = &mut layers[layer.index()];
                // slot < nslots: its word exists.
                if let Some(w) = bits.get_mut(slot / 64) {
                    *w |= 1 << (slot % 64);
                    *count += 1;
                }
                next += 1;
            }
            Ok(None) => slots.push(dead()),
            Err(why) => return Err(slot_fault(dir, entry, HEADER + slot * SLOT_ENTRY, why)),
        }
    }
    slots_all_rows(dir, entry, next, rows)?;
    Ok((
        slots,
        layers.map(|(words, n)| SlotSet::from_words(words, n)),
    ))
}

fn slot_fault(dir: &Path, entry: &FileEntry, at: usize, why: String) -> Error {
    Error::corrupted(dir.join(&entry.name), at as u64, why)
}

/// A slot index must name every row of its table.
fn slots_all_rows(dir: &Path, entry: &FileEntry, named: u32, rows: u32) -> Result<()> {
    if named != rows {
        return Err(slot_fault(
            dir,
            entry,
            24,
            format!("{named} slots with a record for {rows} rows"),
        ));
    }
    Ok(())
}
