//! Snapshots: every projection at one sequence S, in `snapshots/<S>/`.
//!
//! Files: `records.bin` (the record table, read without decoding each row: see
//! `disk::records`) with its block sums `records.bin.sums` and slot index `slots.bin`
//! (format 6 on: open maps the table unread), `keys.bin` (ids and content keys sorted, searched
//! in place: see `disk::keys`; format 7 on with block sums `keys.bin.sums`, mapped unread),
//! `stats.zst` (zstd over rkyv), vector chunks (`vectors-*.f32`, raw little-endian f32 for
//! memmap2; immutable, hard-linked from the previous snapshot, with block sums `.sums`), the
//! HNSW graph dump (`hnsw.graph`, links only, one graph for every layer's records, format 9
//! on; formats 7 and 8 had one `hnsw-<layer>.graph` per layer; see `index::hnsw`; with block
//! sums `hnsw.graph.sums`, level-0 links mapped unread), the keyword index
//! (`keywords.bin`, format 8 on; see `keyword::file`), the trained
//! promoter (`promoter.bin`, rkyv, only once one was trained) and `MANIFEST`:
//! a 32-byte header (magic `MGSM`, format version, body length, body crc32, header crc32)
//! then an rkyv body listing every file with its length and crc32.
//!
//! Written into `snapshots/.tmp-<S>/`; every file is fsynced, then the directory, then it is
//! renamed to `snapshots/<S:020>` and `snapshots/` is fsynced. A snapshot is valid only if its
//! manifest and every file it lists check out; open falls back to the next older one.

use crate::disk::files::{
    check_file, check_sum, crc_file, file_name, map_checked, map_for_blocks, sync_file, write_file,
    CrcWriter, FileEntry,
};
use crate::disk::keys::KeyIndex;
use crate::disk::records::{self, Body, OwnedBody, RecordTable, Row, RowFields};
use crate::disk::slots;
use crate::disk::sums::{self, InPlace, Lazy};
use crate::disk::vectors::{self, Vectors};
use crate::error::{Error, Result};
use crate::index::dump_graph::MappedGraph;
use crate::index::hnsw::HnswBuilder;
use crate::keyword::{self, KeywordIndex};
use crate::lifecycle::PromoterModel;
use crate::projection::{index_keys, Access, Graph, Projections, RecordData, RowRef, Slot};
use crate::types::{AccessStats, Layer};
use crate::util::SlotSet;
use magray_wal::fsutil::{sync_dir, TEMP_PREFIX};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod capture;
mod load;
mod manifest;
mod write;

use capture::*;
pub(crate) use capture::{Capture, SnapStat};
pub(crate) use load::{check_dumps, graph_path, load, load_graph, load_keywords, Check, Loaded};
use manifest::*;
pub(crate) use manifest::{dir_name, list, read_manifest, write_manifest, ManifestBody};
pub(crate) use write::Writer;

/// Snapshot format version (MANIFEST, records, stats). Changelog in docs/format.md.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 9;
/// The first format with one HNSW graph for the store (`hnsw.graph`); formats 8 and older
/// kept one per layer (`hnsw-<layer>.graph`), which this build does not use.
pub(crate) const ONE_GRAPH_FORMAT: u32 = 9;
/// The oldest snapshot format this build still reads (format 2 kept its records in
/// `records.zst`; they are decoded as they were; formats 2 and 3 have no `keys.bin`, it is
/// built from the records at open).
const OLDEST_READ_FORMAT: u32 = 2;
/// File name of the record table (snapshot format 3; format 2 had `records.zst`).
const RECORDS_FILE: &str = "records.bin";

/// File name of the keyword index (snapshot format 8 on).
const KEYWORDS_FILE: &str = "keywords.bin";

/// File name of the key index (snapshot format 4 on).
const KEYS_FILE: &str = "keys.bin";

/// File name of the trained promoter in a snapshot.
const PROMOTER_FILE: &str = "promoter.bin";

/// Basename of the graph dump (`hnsw.graph`, format 9 on).
const GRAPH_BASE: &str = "hnsw";

/// File name of the slot index (snapshot format 6 on).
const SLOTS_FILE: &str = "slots.bin";

/// Rewrites the snapshot in `dir` as format 8 wrote it: a legacy manifest, and its graph dump
/// as a layer's (`hnsw-interact.graph`; format 8 kept one per layer, which this build does
/// not use).
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
pub(crate) fn downgrade_to_format_8(dir: &Path) {
    let mut m = read_manifest(dir).unwrap();
    let mut layers = Vec::new();
    if let Some(base) = m.graph.take() {
        let legacy = "hnsw-interact";
        for (from, to) in [
            (graph_path(dir, &base), graph_path(dir, legacy)),
            (
                dir.join(sums::sums_name(&file_name(&graph_path(dir, &base)))),
                dir.join(sums::sums_name(&file_name(&graph_path(dir, legacy)))),
            ),
        ] {
            std::fs::rename(&from, &to).unwrap();
            let f = m
                .files
                .iter_mut()
                .find(|f| f.name == file_name(&from))
                .unwrap();
            f.name = file_name(&to);
        }
        layers.push(LayerEntry {
            layer: Layer::Interact,
            indexed: Vec::new(),
            dump: Some(legacy.to_string()),
        });
    }
    write_legacy(dir, 8, m, layers);
}

/// Rewrites the snapshot in `dir` as format 6 wrote it: no block sums of the key index.
#[cfg(test)]
pub(crate) fn downgrade_to_format_6(dir: &Path) {
    downgrade_to_format_7(dir);
    downgrade(dir, 6, |_| vec![sums::sums_name(KEYS_FILE)]);
}

/// Rewrites the snapshot in `dir` as format 7 wrote it: no `keywords.bin`.
#[cfg(test)]
pub(crate) fn downgrade_to_format_7(dir: &Path) {
    downgrade_to_format_8(dir);
    downgrade(dir, 7, |_| vec![KEYWORDS_FILE.to_string()]);
}

/// Rewrites the snapshot in `dir` as format `format` (8 or older): `edit` changes its manifest
/// and names the files that format did not have, which are removed from the directory and
/// the manifest.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
fn downgrade(dir: &Path, format: u32, edit: impl FnOnce(&mut ManifestBody) -> Vec<String>) {
    let mut m = read_manifest(dir).unwrap();
    let gone = edit(&mut m);
    for g in &gone {
        std::fs::remove_file(dir.join(g)).unwrap();
    }
    m.files.retain(|f| !gone.contains(&f.name));
    write_legacy(dir, format, m, Vec::new());
}

/// Writes `m` as the legacy manifest of `format` with `layers`.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
fn write_legacy(dir: &Path, format: u32, m: ManifestBody, layers: Vec<LayerEntry>) {
    let legacy = LegacyManifestBody {
        format,
        seq: m.seq,
        ts_us: m.ts_us,
        dim: m.dim,
        nslots: m.nslots,
        created_us: m.created_us,
        files: m.files,
        chunks: m.chunks,
        layers,
    };
    write_legacy_manifest(dir, &legacy).unwrap();
}

#[cfg(test)]
mod tests;
