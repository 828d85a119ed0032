//! Snapshots: every projection at one sequence S, in `snapshots/<S>/`.
//!
//! Files: `records.bin` (the record table, read without decoding each row: see
//! `crate::records`) with its block sums `records.bin.sums` and slot index `slots.bin`
//! (format 6 on: open maps the table unread), `keys.bin` (ids and content keys sorted, searched
//! in place: see `crate::keys`; format 7 on with block sums `keys.bin.sums`, mapped unread),
//! `stats.zst` (zstd over rkyv), vector chunks (`vectors-*.f32`, raw little-endian f32 for
//! memmap2; immutable, hard-linked from the previous snapshot, with block sums `.sums`), HNSW
//! graph dumps (`hnsw-<layer>.graph`, links only; see `crate::hnsw`; format 7 on with block
//! sums `hnsw-<layer>.graph.sums`, level-0 links mapped unread), the trained
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
use crate::lifecycle::PromoterModel;
use crate::projection::{
    index_keys, Access, Graph, LayerState, Projections, RecordData, RowRef, Slot,
};
use crate::types::{AccessStats, Layer};
use crate::util::SlotSet;
use magray_wal::fsutil::{sync_dir, TEMP_PREFIX};
use rkyv::rancor::BoxedError;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Snapshot format version (MANIFEST, records, stats). Changelog in docs/format.md.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 7;
/// The oldest snapshot format this build still reads (format 2 kept its records in
/// `records.zst`; they are decoded as they were; formats 2 and 3 have no `keys.bin`, it is
/// built from the records at open).
const OLDEST_READ_FORMAT: u32 = 2;
const MAGIC: [u8; 4] = *b"MGSM";
const HEADER_LEN: usize = 32;
/// Largest manifest body we accept (checked before allocating).
const MAX_MANIFEST: u64 = 64 << 20;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct LayerEntry {
    pub(crate) layer: Layer,
    /// Slots in the dumped graph (up to format 6; from format 7 empty: the dump lists them).
    pub(crate) indexed: Vec<u32>,
    /// Dump basename, if the layer had a graph.
    pub(crate) dump: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ManifestBody {
    pub(crate) format: u32,
    pub(crate) seq: u64,
    pub(crate) ts_us: u64,
    pub(crate) dim: u32,
    pub(crate) nslots: u32,
    pub(crate) created_us: u64,
    pub(crate) files: Vec<FileEntry>,
    /// Vector chunk files, in slot order (also listed in `files`).
    pub(crate) chunks: Vec<String>,
    pub(crate) layers: Vec<LayerEntry>,
}

impl ManifestBody {
    /// True for a vector chunk or its block sums file (both also listed in `files`).
    pub(crate) fn is_vector_file(&self, name: &str) -> bool {
        self.chunks
            .iter()
            .any(|c| c == name || sums::sums_name(c) == name)
    }
}

/// A record as snapshot format 2 kept it (read only).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SnapRecord {
    slot: u32,
    id: [u8; 16],
    layer: Layer,
    kind: String,
    text: String,
    tags: Vec<String>,
    project: Option<String>,
    session: Option<String>,
    refs: Vec<[u8; 16]>,
    content_hash: u64,
    ts_us: u64,
    inserted_seq: u64,
    layer_since_us: u64,
    rating: Option<f32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct SnapStat {
    slot: u32,
    count: u64,
    last_access_us: u64,
    decayed: [f64; 3],
    search_hits: u64,
    rank_sum: u64,
    score_sum: f64,
    sessions: Vec<u64>,
    projects: Vec<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Records {
    records: Vec<SnapRecord>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Stats {
    stats: Vec<SnapStat>,
    promoted: [u64; 2],
    expired: [u64; 3],
}

/// Everything a snapshot needs, copied out under the state lock.
pub(crate) struct Capture {
    pub(crate) seq: u64,
    pub(crate) ts_us: u64,
    pub(crate) nslots: u32,
    pub(crate) dim: usize,
    records: Vec<Row>,
    stats: Vec<SnapStat>,
    promoted: [u64; 2],
    expired: [u64; 3],
    /// The trained promoter, if any (the default model is not written).
    pub(crate) model: Option<PromoterModel>,
    pub(crate) layers: Vec<(Layer, Option<Arc<Graph>>)>,
    new_chunk: Option<(u32, Vec<u8>)>,
    old_chunks: Vec<String>,
}

impl Capture {
    pub(crate) fn take(p: &Projections) -> Capture {
        let mut records = Vec::new();
        let mut stats = Vec::new();
        for (slot, r) in p.records() {
            records.push(r.to_row(slot));
            if let Some(a) = r.access {
                let mut sessions: Vec<u64> = a.sessions.iter().copied().collect();
                let mut projects: Vec<u64> = a.projects.iter().copied().collect();
                sessions.sort_unstable();
                projects.sort_unstable();
                let s = &a.stats;
                stats.push(SnapStat {
                    slot,
                    count: s.count,
                    last_access_us: s.last_access_us,
                    decayed: s.decayed,
                    search_hits: s.search_hits,
                    rank_sum: s.rank_sum,
                    score_sum: s.score_sum,
                    sessions,
                    projects,
                });
            }
        }
        let nslots = p.vectors.len();
        let new_chunk = (nslots > p.vectors.tail_start()).then(|| p.vectors.tail_range(nslots));
        let layers = Layer::ALL
            .iter()
            .map(|l| {
                let ls: &LayerState = &p.layers[l.index()];
                (*l, ls.graph.clone())
            })
            .collect();
        Capture {
            seq: p.applied_seq,
            ts_us: p.last_ts_us,
            nslots,
            dim: p.dim,
            records,
            stats,
            promoted: p.promoted,
            expired: p.expired,
            model: None,
            layers,
            new_chunk,
            old_chunks: p.vectors.chunk_names(),
        }
    }
}

fn encode<T>(v: &T) -> Result<Vec<u8>>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >,
{
    rkyv::to_bytes::<BoxedError>(v)
        .map(|b| b.into_vec())
        // 32-bit relative pointers cap one archive at 2 GiB (e.g. ~2 GiB of record text).
        .map_err(|e| Error::InvalidInput(format!("snapshot table too large to encode: {e}")))
}

fn decode<T>(bytes: &[u8], file: &Path) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    decode_aligned(&aligned, file)
}

fn decode_aligned<T>(aligned: &AlignedVec<16>, file: &Path) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    rkyv::from_bytes::<T, BoxedError>(aligned)
        .map_err(|e| Error::corrupted(file, 0, format!("structure check failed: {e}")))
}

/// A graph dump written into a snapshot: its basename, and the manifest entries of the dump
/// and its block sums.
type Dump = (String, FileEntry, FileEntry);

/// Writes (and fsyncs) the block sums file of the `len`-byte snapshot file at `path` and
/// returns its manifest entry.
fn write_sums_entry(path: &Path, len: u64, sums: &[u32]) -> Result<FileEntry> {
    let (slen, scrc) = sums::write_sums(path, len, sums)?;
    Ok(FileEntry {
        name: sums::sums_name(&file_name(path)),
        len: slen,
        crc: scrc,
    })
}

/// Directory name of the snapshot at `seq`.
pub(crate) fn dir_name(seq: u64) -> String {
    format!("{seq:020}")
}

/// Valid-looking snapshot directories under `root`, newest first.
pub(crate) fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(root, e)),
    };
    for e in rd {
        let e = e.map_err(|e| Error::io(root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 20 {
            if let Ok(seq) = name.parse::<u64>() {
                out.push((seq, e.path()));
            }
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// A snapshot being written; graphs are dumped into it under the caller's index lock.
pub(crate) struct Writer {
    tmp: PathBuf,
    root: PathBuf,
    /// Per layer: its dump, if it has a graph.
    dumps: Vec<(Layer, Option<Dump>)>,
}

impl Writer {
    pub(crate) fn begin(root: &Path, seq: u64) -> Result<Writer> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let tmp = root.join(format!("{TEMP_PREFIX}{}", dir_name(seq)));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Writer {
            tmp,
            root: root.to_path_buf(),
            dumps: Vec::new(),
        })
    }

    /// Dumps each captured graph (call with the index lock held, so the graph and its slot
    /// list agree).
    pub(crate) fn dump_graphs(&mut self, cap: &mut Capture) -> Result<()> {
        for (layer, graph) in cap.layers.drain(..) {
            let Some(g) = graph else {
                self.dumps.push((layer, None));
                continue;
            };
            let base = format!("hnsw-{}", layer.name());
            let path = graph_path(&self.tmp, &base);
            let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
            // The crc and block sums are taken on the way out (the dump is not read back).
            let mut w = CrcWriter::with_block_sums(std::io::BufWriter::with_capacity(1 << 20, f));
            g.lock()
                .write_to(&mut w)
                .and_then(|_| w.flush())
                .map_err(|e| Error::io(&path, e))?;
            let sums = write_sums_entry(&path, w.len, &w.sums())?;
            let entry = FileEntry {
                name: file_name(&path),
                len: w.len,
                crc: w.crc.finalize(),
            };
            self.dumps.push((layer, Some((base, entry, sums))));
        }
        Ok(())
    }

    /// Writes the remaining files and the manifest, syncs, renames into place. `prev` is the
    /// directory of the newest snapshot (holds the chunk files to hard-link) and the entries
    /// already known for them.
    pub(crate) fn finish(
        self,
        cap: Capture,
        prev: Option<&Path>,
        known_chunks: &HashMap<String, FileEntry>,
        created_us: u64,
    ) -> Result<Written> {
        let tmp = &self.tmp;
        let mut files = Vec::new();
        let rpath = tmp.join(RECORDS_FILE);
        let (len, crc, sums) = File::create(&rpath)
            .and_then(|f| records::write(f, &cap.records))
            .map_err(|e| Error::io(&rpath, e))?;
        sync_file(&rpath)?;
        let records = FileEntry {
            name: RECORDS_FILE.into(),
            len,
            crc,
        };
        files.push(records.clone());
        // Its block sums (a lazy open checks each row's blocks on first read) and the slot
        // index (a lazy open fills the slots from it, without reading the table).
        files.push(write_sums_entry(&rpath, len, &sums)?);
        let ipath = tmp.join(SLOTS_FILE);
        let (ilen, icrc) = slots::write_slots(&ipath, cap.nslots, &cap.records)?;
        files.push(FileEntry {
            name: SLOTS_FILE.into(),
            len: ilen,
            crc: icrc,
        });
        let keys = index_keys(cap.records.iter().map(|r| {
            let f = &r.fields;
            (f.slot, f.id, f.layer, f.content_hash, r.body.as_ref())
        }));
        drop(cap.records);
        let kpath = tmp.join(KEYS_FILE);
        let (len, crc, sums) = keys.write(
            File::create(&kpath).map_err(|e| Error::io(&kpath, e))?,
            &kpath,
        )?;
        drop(keys);
        files.push(FileEntry {
            name: KEYS_FILE.into(),
            len,
            crc,
        });
        // Its block sums: a lazy open reads only the header (see `crate::keys`).
        files.push(write_sums_entry(&kpath, len, &sums)?);
        let st = zstd::bulk::compress(
            &encode(&Stats {
                stats: cap.stats,
                promoted: cap.promoted,
                expired: cap.expired,
            })?,
            1,
        )
        .map_err(|e| Error::io(tmp.join("stats.zst"), e))?;
        files.push(write_file(&tmp.join("stats.zst"), &st)?);
        if let Some(model) = &cap.model {
            files.push(write_file(&tmp.join(PROMOTER_FILE), &encode(model)?)?);
        }
        let mut chunk_entries = Vec::new();
        let mut sums_entries = Vec::new();
        for name in &cap.old_chunks {
            let prev = prev.ok_or_else(|| {
                Error::InvalidInput("vector chunks without a previous snapshot".into())
            })?;
            let dst = tmp.join(name);
            std::fs::hard_link(prev.join(name), &dst).map_err(|e| Error::io(&dst, e))?;
            let entry = match known_chunks.get(name) {
                Some(e) => e.clone(),
                None => {
                    let (len, crc) = crc_file(&dst)?;
                    FileEntry {
                        name: name.clone(),
                        len,
                        crc,
                    }
                }
            };
            let sums = sums::sums_name(name);
            let sums_entry = match known_chunks.get(&sums) {
                Some(e) => {
                    let sdst = tmp.join(&sums);
                    std::fs::hard_link(prev.join(&sums), &sdst).map_err(|e| Error::io(&sdst, e))?;
                    e.clone()
                }
                // A chunk from before block sums: written once, from the chunk as read.
                None => {
                    let (len, crc) = sums::write_sums_of(&dst, entry.len, entry.crc)?;
                    FileEntry {
                        name: sums,
                        len,
                        crc,
                    }
                }
            };
            chunk_entries.push(entry);
            sums_entries.push(sums_entry);
        }
        let mut new_chunk = None;
        if let Some((start, bytes)) = &cap.new_chunk {
            let count = (bytes.len() / (cap.dim * 4)) as u32;
            let name = vectors::chunk_name(*start, count);
            let path = tmp.join(&name);
            let ((len, crc), (slen, scrc)) = vectors::write_chunk(&path, cap.dim, *start, bytes)?;
            sums_entries.push(FileEntry {
                name: sums::sums_name(&name),
                len: slen,
                crc: scrc,
            });
            chunk_entries.push(FileEntry {
                name: name.clone(),
                len,
                crc,
            });
            new_chunk = Some(name);
        }
        let chunks = chunk_entries.iter().map(|e| e.name.clone()).collect();
        files.extend(chunk_entries.iter().cloned());
        files.extend(sums_entries.iter().cloned());
        let mut layers = Vec::new();
        for (layer, dump) in self.dumps {
            let dump = match dump {
                Some((base, entry, sums)) => {
                    sync_file(&graph_path(tmp, &base))?;
                    files.push(entry);
                    files.push(sums);
                    Some(base)
                }
                None => None,
            };
            // Format 7 on: the dump's own slot list is the layer's index (`indexed` empty).
            layers.push(LayerEntry {
                layer,
                indexed: Vec::new(),
                dump,
            });
        }
        let body = ManifestBody {
            format: SNAPSHOT_FORMAT_VERSION,
            seq: cap.seq,
            ts_us: cap.ts_us,
            dim: cap.dim as u32,
            nslots: cap.nslots,
            created_us,
            files,
            chunks,
            layers,
        };
        write_manifest(tmp, &body)?;
        sync_dir(tmp)?;
        let dst = self.root.join(dir_name(cap.seq));
        if dst.exists() {
            std::fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
        }
        std::fs::rename(tmp, &dst).map_err(|e| Error::io(&dst, e))?;
        sync_dir(&self.root)?;
        chunk_entries.extend(sums_entries);
        Ok(Written {
            dir: dst,
            new_chunk,
            chunks: chunk_entries,
            records,
            nslots: cap.nslots,
        })
    }
}

/// A snapshot [`Writer::finish`] put in place.
pub(crate) struct Written {
    pub(crate) dir: PathBuf,
    /// The vector chunk it wrote (the others are hard-linked), if any.
    pub(crate) new_chunk: Option<String>,
    /// Manifest entries of all its vector chunks and their block sums files.
    pub(crate) chunks: Vec<FileEntry>,
    /// Manifest entry of its record table, and the slots it covers.
    pub(crate) records: FileEntry,
    pub(crate) nslots: u32,
}

/// Writes (and fsyncs) `dir/MANIFEST` for `body`, in the format `body.format` names.
pub(crate) fn write_manifest(dir: &Path, body: &ManifestBody) -> Result<()> {
    let body_bytes = encode(body)?;
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&body.format.to_le_bytes());
    h[8..16].copy_from_slice(&(body_bytes.len() as u64).to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(&body_bytes).to_le_bytes());
    let hcrc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&hcrc.to_le_bytes());
    let mut m = h.to_vec();
    m.extend_from_slice(&body_bytes);
    write_file(&dir.join("MANIFEST"), &m).map(|_| ())
}

/// Reads and validates a snapshot's MANIFEST.
pub(crate) fn read_manifest(dir: &Path) -> Result<ManifestBody> {
    let path = dir.join("MANIFEST");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() < HEADER_LEN {
        return Err(Error::corrupted(
            &path,
            0,
            "shorter than the manifest header",
        ));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if bytes[0..4] != MAGIC {
        return Err(Error::corrupted(
            &path,
            0,
            "bad magic (not a snapshot manifest)",
        ));
    }
    if crc32fast::hash(&bytes[..28]) != u32_at(28) {
        return Err(Error::corrupted(&path, 28, "header checksum mismatch"));
    }
    let version = u32_at(4);
    if !(OLDEST_READ_FORMAT..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
        // An older format is not converted: the log holds every event, so the store is
        // rebuilt by replay (slower once) and the next checkpoint writes the current format.
        return Err(Error::corrupted(
            &path,
            4,
            format!(
                "snapshot format {version}; this build reads formats \
                 {OLDEST_READ_FORMAT}..={SNAPSHOT_FORMAT_VERSION}, so the store is rebuilt \
                 from the log instead"
            ),
        ));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(l);
    if len > MAX_MANIFEST || HEADER_LEN as u64 + len != bytes.len() as u64 {
        return Err(Error::corrupted(
            &path,
            8,
            format!(
                "body length {len} does not match the file ({} bytes)",
                bytes.len()
            ),
        ));
    }
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != u32_at(16) {
        return Err(Error::corrupted(
            &path,
            HEADER_LEN as u64,
            "body checksum mismatch",
        ));
    }
    let m: ManifestBody = decode(body, &path)?;
    for f in &m.files {
        if f.name.contains('/') || f.name.starts_with('.') {
            return Err(Error::corrupted(
                &path,
                HEADER_LEN as u64,
                format!("bad file name {:?}", f.name),
            ));
        }
    }
    Ok(m)
}

/// Maps the listed file `entry` of the snapshot in `dir` to read it in place (the key index and
/// the graph dumps). With [`Check::Blocks`] and its block sums listed (format 7 on) it is
/// mapped unread, each block checked on first read; otherwise checked in full now, and with
/// [`Check::Full`] its block sums (if listed) checked against it too.
pub(crate) fn map_in_place(
    dir: &Path,
    m: &ManifestBody,
    entry: &FileEntry,
    check: Check,
) -> Result<InPlace> {
    let sums = listed_sums(dir, m, entry)?;
    let path = dir.join(&entry.name);
    if let (Check::Blocks, Some(s)) = (check, sums) {
        if let Some(map) = map_for_blocks(dir, entry)? {
            let lazy = Lazy::new(read_sums(dir, s, entry.len)?);
            return Ok(InPlace::new(path, map, Some(lazy)));
        }
    }
    let map = map_checked(dir, entry)?;
    if check == Check::Full {
        check_listed_sums(dir, m, entry, &map)?;
    }
    Ok(InPlace::new(path, map, None))
}

/// The block sums file the manifest `m` lists for its file `entry` (from format 7 the key
/// index and each graph dump must have one).
fn listed_sums<'m>(
    dir: &Path,
    m: &'m ManifestBody,
    entry: &FileEntry,
) -> Result<Option<&'m FileEntry>> {
    let name = sums::sums_name(&entry.name);
    match m.files.iter().find(|f| f.name == name) {
        None if m.format >= 7 => Err(Error::corrupted(
            dir.join("MANIFEST"),
            0,
            format!("{name} not listed"),
        )),
        sums => Ok(sums),
    }
}

/// Checks `bytes`, the whole listed file `entry` of the snapshot in `dir`, against its block
/// sums file where one is listed (read and checked against the manifest first).
fn check_listed_sums(dir: &Path, m: &ManifestBody, entry: &FileEntry, bytes: &[u8]) -> Result<()> {
    match listed_sums(dir, m, entry)? {
        Some(s) => sums::check_sums(
            bytes,
            &read_sums(dir, s, entry.len)?,
            &dir.join(&s.name),
            &dir.join(&entry.name),
        ),
        None => Ok(()),
    }
}

/// Checks every graph dump file the manifest `m` of the snapshot in `dir` lists, in full: its
/// crc32, and from format 7 its block sums against it (what `verify` and backups check; a
/// load leaves a bad dump to the indexer, which rebuilds the graph).
pub(crate) fn check_dumps(dir: &Path, m: &ManifestBody) -> Result<()> {
    for f in m.files.iter().filter(|f| f.name.starts_with("hnsw-")) {
        if m.files.iter().any(|s| s.name == sums::sums_name(&f.name)) {
            map_in_place(dir, m, f, Check::Full)?;
        } else {
            check_file(dir, f)?;
        }
    }
    Ok(())
}

/// A snapshot loaded into projections (graphs load later, in the background).
pub(crate) struct Loaded {
    pub(crate) projections: Projections,
    pub(crate) manifest: ManifestBody,
    /// The trained promoter the snapshot holds, if any.
    pub(crate) model: Option<PromoterModel>,
    /// Each layer's graph dump, mapped and checked, searchable in place (see
    /// [`map_graph`]); a layer whose dump cannot be is missing here.
    pub(crate) graphs: Vec<(Layer, Arc<MappedGraph>)>,
}

/// File name of the record table (snapshot format 3; format 2 had `records.zst`).
const RECORDS_FILE: &str = "records.bin";

/// File name of the key index (snapshot format 4 on).
const KEYS_FILE: &str = "keys.bin";

/// File name of the trained promoter in a snapshot.
const PROMOTER_FILE: &str = "promoter.bin";

/// How [`load`] checks the files it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Every byte of every file, before load returns (tools, backups, and an open after
    /// damage was found), and each file's block sums against it.
    Full,
    /// A file with block sums is mapped unread: vector chunks (format 5 on), the record table
    /// (6 on), the key index and the graph dumps' level-0 links (7 on); each block is checked
    /// on first read and by the indexer (see `crate::vectors`). Every other file in full.
    Blocks,
}

/// Loads the snapshot in `dir`: validates the manifest and every non-graph file, decodes the
/// records and stats and maps the vector chunks (checked as `check` says); maps and checks
/// each HNSW dump to search it in place (a dump that fails that is left to the indexer, which
/// reports it).
pub(crate) fn load(dir: &Path, dim: usize, check: Check) -> Result<Loaded> {
    let m = read_manifest(dir)?;
    let mpath = dir.join("MANIFEST");
    if m.dim as usize != dim {
        return Err(Error::corrupted(
            &mpath,
            0,
            format!(
                "snapshot dimension {} differs from the store's {dim}",
                m.dim
            ),
        ));
    }
    let other_files: Vec<&FileEntry> = m
        .files
        .iter()
        .filter(|f| {
            !f.name.starts_with("hnsw-")
                && f.name != RECORDS_FILE
                && f.name != KEYS_FILE
                && f.name != sums::sums_name(KEYS_FILE)
                && f.name != SLOTS_FILE
                && f.name != sums::sums_name(RECORDS_FILE)
                && !m.is_vector_file(&f.name)
        })
        .collect();
    // Two threads: this one reads the record table (format 6 on: maps it unread and reads its
    // slot index) and points a slot at each row; the other maps the vector chunks unread,
    // reads the key index and maps each graph dump. (With the chunks checked in full: below.
    // Taking the dumps here after a slot index read was no faster: 9 paired rounds at 1M.)
    // The key index and each graph dump, mapped and checked to search in place (a dump that
    // fails is left to the indexer, which reads it again, and reports it when it rebuilds
    // the layer's graph).
    let keys_and_graphs = || -> Result<KeysAndGraphs> {
        let keys = load_keys(dir, &m, check)?;
        let graphs = m
            .layers
            .iter()
            .filter_map(|le| {
                let base = le.dump.as_ref()?;
                match map_graph(dir, &m, base, dim, check) {
                    Ok(g) => Some((le.layer, Arc::new(g))),
                    Err(e) => {
                        tracing::debug!(layer = %le.layer, error = %e, "graph dump not searchable in place");
                        None
                    }
                }
            })
            .collect();
        Ok((keys, graphs))
    };
    // Chunks checked in full (about 0.1 s per GB) are the second thread's only work; the
    // keys and dumps are then this one's, after the records.
    let chunks_in_full = check == Check::Full || m.format < 5;
    let (mref, kg) = (&m, &keys_and_graphs);
    std::thread::scope(|scope| {
        let second = scope.spawn(move || {
            let vectors = map_chunks(dir, dim, mref, check)?;
            let more = (!chunks_in_full).then(kg).transpose()?;
            Ok((vectors, more))
        });
        let rest = other_files
            .iter()
            .try_for_each(|f| check_file(dir, f))
            .and_then(|_| decode_tables(dir, &m, check));
        let mine = chunks_in_full.then(kg).transpose();
        let second = second
            .join()
            .unwrap_or_else(|_| Err(Error::corrupted(dir, 0, "snapshot load thread panicked")));
        let (mut tables, (vectors, theirs), mine) = (rest?, second?, mine?);
        let Some((keys, graphs)) = theirs.or(mine) else {
            return Err(Error::corrupted(dir, 0, "key index not loaded"));
        };
        check_keys(dir, &keys, tables.live)?;
        tables.keys = keys;
        Ok((tables, vectors, graphs))
    })
    .and_then(|(tables, vectors, graphs)| finish_load(dim, m, tables, vectors, graphs))
}

/// A snapshot's key index (format 4 on) and the graph dumps open could map to search in place.
type KeysAndGraphs = (Option<KeyIndex>, Vec<(Layer, Arc<MappedGraph>)>);

/// The key index of the snapshot (format 4 on; `None` before, built from the records).
fn load_keys(dir: &Path, m: &ManifestBody, check: Check) -> Result<Option<KeyIndex>> {
    match m.files.iter().find(|f| f.name == KEYS_FILE) {
        Some(entry) => {
            let file = map_in_place(dir, m, entry, check)?;
            Ok(Some(KeyIndex::open(file, m.nslots)?))
        }
        None if m.format >= 4 => Err(Error::corrupted(
            dir.join("MANIFEST"),
            0,
            format!("{KEYS_FILE} not listed"),
        )),
        None => Ok(None),
    }
}

/// A key index must hold exactly the snapshot's live records.
fn check_keys(dir: &Path, keys: &Option<KeyIndex>, live: usize) -> Result<()> {
    match keys {
        Some(k) if k.ids() != live => Err(Error::corrupted(
            dir.join(KEYS_FILE),
            16,
            format!("{} ids for {live} records", k.ids()),
        )),
        _ => Ok(()),
    }
}

/// Maps one layer's graph dump (checked in full or block by block, as [`map_in_place`]) and
/// opens it for searching in place ([`MappedGraph::open`]).
fn map_graph(
    dir: &Path,
    m: &ManifestBody,
    base: &str,
    dim: usize,
    check: Check,
) -> Result<MappedGraph> {
    let entry = graph_entry(dir, m, base)?;
    let path = graph_path(dir, base);
    let file = map_in_place(dir, m, entry, check)?;
    MappedGraph::open(file, dim, m.nslots).map_err(|(off, why)| Error::corrupted(&path, off, why))
}

/// Decoded tables.
struct Tables {
    slots: Vec<Slot>,
    /// The record table the slots' rows are in (format 3 on).
    table: Option<Arc<RecordTable>>,
    /// Each layer's slots, found as the rows were checked (format 3 on).
    members: Option<[SlotSet; 3]>,
    /// Access statistics by slot (each of a live record).
    access: Vec<(u32, Access)>,
    /// Live records among the slots.
    live: usize,
    /// The key index (format 4 on; read beside the tables, see [`load`]).
    keys: Option<KeyIndex>,
    /// Lifecycle counters: promotions, expiries.
    promoted: [u64; 2],
    expired: [u64; 3],
    model: Option<PromoterModel>,
}

/// File name of the slot index (snapshot format 6 on).
const SLOTS_FILE: &str = "slots.bin";

/// The block sums file of `records.bin` and the slot index, listed from format 6 on (`None`
/// before).
fn index_files<'m>(
    dir: &Path,
    m: &'m ManifestBody,
) -> Result<Option<(&'m FileEntry, &'m FileEntry)>> {
    if m.format < 6 {
        return Ok(None);
    }
    let sums = sums::sums_name(RECORDS_FILE);
    let find = |name: &str| {
        m.files
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::corrupted(dir.join("MANIFEST"), 0, format!("{name} not listed")))
    };
    Ok(Some((find(&sums)?, find(SLOTS_FILE)?)))
}

/// Decodes the records (checked as `check` says), stats and promoter.
fn decode_tables(dir: &Path, m: &ManifestBody, check: Check) -> Result<Tables> {
    // Decompressed straight into aligned memory: one 270 MB buffer (and its page faults) less
    // per million records than decompressing and then copying for rkyv.
    let read_zst = |name: &str| -> Result<AlignedVec<16>> {
        let p = dir.join(name);
        let raw = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let size = zstd::zstd_safe::get_frame_content_size(&raw)
            .ok()
            .flatten()
            .unwrap_or(0);
        // The file's crc matched, but never trust a size field with an allocation unchecked.
        let cap = size.min(raw.len() as u64 * 64).min(4 << 30) as usize;
        let mut out = AlignedVec::<16>::with_capacity(cap);
        zstd::stream::copy_decode(&raw[..], &mut out)
            .map_err(|e| Error::corrupted(&p, 0, format!("zstd: {e}")))?;
        Ok(out)
    };
    let spath = dir.join("stats.zst");
    let stats: Stats = decode_aligned(&read_zst("stats.zst")?, &spath)?;
    // Rows are in slot order: push them, gaps as `Slot::Dead`.
    let nslots = m.nslots as usize;
    let mut slots: Vec<Slot> = Vec::with_capacity(nslots);
    // Live records, counted as they are placed (both formats refuse a slot out of order, so
    // none is placed twice), instead of a second pass over every slot.
    let mut live = 0usize;
    let mut place = |at: usize, rec: Slot| {
        live += 1;
        if at < slots.len() {
            slots[at] = rec;
        } else {
            slots.resize_with(at, Slot::default);
            slots.push(rec);
        }
    };
    let (mut loaded_table, mut layer_members) = (None, None);
    if let Some(entry) = m.files.iter().find(|f| f.name == RECORDS_FILE) {
        // Format 3: the table stays as read; each record's body is a row of it.
        let mut members: [SlotSet; 3] = Default::default();
        let mut fill = |slot: u32, row: u32, layer: Layer, since: u64| {
            let r = RowRef {
                table: 0,
                layer,
                row,
                layer_since_us: since,
            };
            place(slot as usize, Slot::Row(r));
            members[layer.index()].insert(slot);
        };
        let index = index_files(dir, m)?;
        // Format 6 on, opened by the engine: the table is mapped unread (each row checked on
        // its first read and by the scrub), and the slots come from the slot index.
        let lazy = match (check, &index) {
            (Check::Blocks, Some((sums, slots_file))) => {
                let sums = read_sums(dir, sums, entry.len)?;
                records::load_lazy(dir, entry, sums, m.nslots)?.map(|t| (t, slots_file))
            }
            _ => None,
        };
        let table = match lazy {
            Some((table, slots_file)) => {
                // One tight pass, not a call of `fill` per slot (at a million slots about
                // 15 ms instead of 25–30).
                (slots, members) = slots::slots_from_index(
                    dir,
                    slots_file,
                    table.len(),
                    m.nslots,
                    |row, layer, layer_since_us| {
                        Slot::Row(RowRef {
                            table: 0,
                            layer,
                            row,
                            layer_since_us,
                        })
                    },
                    || Slot::Dead,
                )?;
                live = table.len() as usize;
                table
            }
            None => {
                let mut from_rows = Vec::new();
                let table = records::load_each(dir, entry, m.nslots, |row, slot, layer, since| {
                    fill(slot, row, layer, since);
                    if index.is_some() {
                        from_rows.push((slot, row, layer, since));
                    }
                })?;
                // Checked in full: the index files must agree with the table.
                if let Some((sums, slots_file)) = &index {
                    let parsed = read_sums(dir, sums, entry.len)?;
                    table.check_block_sums(&parsed, &dir.join(&sums.name))?;
                    let mut listed = Vec::with_capacity(from_rows.len());
                    slots::read_slots(dir, slots_file, table.len(), m.nslots, |s, r, l, t| {
                        listed.push((s, r, l, t));
                    })?;
                    if listed != from_rows {
                        return Err(Error::corrupted(
                            dir.join(&slots_file.name),
                            0,
                            "the slot index disagrees with the record table",
                        ));
                    }
                }
                table
            }
        };
        loaded_table = Some(table);
        layer_members = Some(members);
    } else {
        // Format 2: zstd over rkyv, every record decoded.
        let rpath = dir.join("records.zst");
        let raw = read_zst("records.zst")?;
        let recs: Records = decode_aligned(&raw, &rpath)?;
        let mut prev: Option<u32> = None;
        for r in recs.records {
            if r.slot >= m.nslots || prev.is_some_and(|p| r.slot <= p) {
                return Err(Error::corrupted(
                    &rpath,
                    0,
                    format!("slot {} out of order or beyond {}", r.slot, m.nslots),
                ));
            }
            prev = Some(r.slot);
            let body = Body::owned(OwnedBody {
                kind: r.kind,
                text: r.text,
                tags: r.tags,
                project: r.project,
                session: r.session,
                refs: r.refs,
            });
            let fields = RowFields {
                slot: r.slot,
                id: r.id,
                layer: r.layer,
                content_hash: r.content_hash,
                ts_us: r.ts_us,
                inserted_seq: r.inserted_seq,
                layer_since_us: r.layer_since_us,
                rating: r.rating,
            };
            place(
                r.slot as usize,
                Slot::Owned(Box::new(RecordData::from_row(fields, body))),
            );
        }
    }
    slots.resize_with(nslots, Slot::default);
    let mut access = Vec::with_capacity(stats.stats.len());
    for s in stats.stats {
        if !matches!(
            slots.get(s.slot as usize),
            Some(Slot::Row(_) | Slot::Owned(_))
        ) {
            return Err(Error::corrupted(
                &spath,
                0,
                format!("stats for dead slot {}", s.slot),
            ));
        }
        access.push((
            s.slot,
            Access {
                stats: AccessStats {
                    count: s.count,
                    last_access_us: s.last_access_us,
                    decayed: s.decayed,
                    distinct_sessions: s.sessions.len() as u32,
                    distinct_projects: s.projects.len() as u32,
                    search_hits: s.search_hits,
                    rank_sum: s.rank_sum,
                    score_sum: s.score_sum,
                },
                sessions: s.sessions.into_iter().collect(),
                projects: s.projects.into_iter().collect(),
            },
        ));
    }
    let model = if m.files.iter().any(|f| f.name == PROMOTER_FILE) {
        let p = dir.join(PROMOTER_FILE);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let m = decode::<PromoterModel>(&bytes, &p)?;
        match m.check() {
            Ok(()) => Some(m),
            Err(why) => {
                tracing::warn!(file = %p.display(), %why, "promoter model unusable; the default is used until the next training");
                None
            }
        }
    } else {
        None
    };
    Ok(Tables {
        slots,
        table: loaded_table,
        members: layer_members,
        access,
        live,
        keys: None,
        promoted: stats.promoted,
        expired: stats.expired,
        model,
    })
}

/// Maps the snapshot's vector chunks. With [`Check::Blocks`], a chunk with block sums (all,
/// from format 5 on) is mapped unread with its sums; any other is checked against its
/// manifest entry (see [`map_checked`]) before anything else is read from it.
fn map_chunks(dir: &Path, dim: usize, m: &ManifestBody, check: Check) -> Result<Vectors> {
    let listed = |name: &str| m.files.iter().find(|f| f.name == name);
    let unlisted =
        |name: &str| Error::corrupted(dir.join("MANIFEST"), 0, format!("{name} is not listed"));
    let mut maps = Vec::with_capacity(m.chunks.len());
    for name in &m.chunks {
        let entry = listed(name).ok_or_else(|| unlisted(name))?;
        let sums_name = sums::sums_name(name);
        let sums = match listed(&sums_name) {
            Some(s) => Some(s),
            None if m.format >= 5 => return Err(unlisted(&sums_name)),
            None => None,
        };
        let path = dir.join(name);
        let unread = match (check, sums) {
            // Every read through the map checks its block first (`Vectors`).
            (Check::Blocks, Some(s)) => map_for_blocks(dir, entry)?.map(|map| (s, map)),
            _ => None,
        };
        match unread {
            Some((s, map)) => {
                let sums = read_sums(dir, s, entry.len)?;
                maps.push((path, map, Some(sums)));
            }
            // In full: the whole file's crc now, and its block sums (if any) kept, so that
            // the scrub (and `verify`) checks those against the chunk too.
            None => {
                let sums = sums.map(|s| read_sums(dir, s, entry.len)).transpose()?;
                maps.push((path, map_checked(dir, entry)?, sums));
            }
        }
    }
    Vectors::from_chunks(dim, maps, m.nslots)
}

/// The block sums file `entry` of the snapshot in `dir`, checked against the manifest, for a
/// chunk of `chunk_len` bytes.
fn read_sums(dir: &Path, entry: &FileEntry, chunk_len: u64) -> Result<Vec<u32>> {
    sums::parse_sums(&dir.join(&entry.name), &read_listed(dir, entry)?, chunk_len)
}

fn finish_load(
    dim: usize,
    m: ManifestBody,
    tables: Tables,
    vectors: Vectors,
    graphs: Vec<(Layer, Arc<MappedGraph>)>,
) -> Result<Loaded> {
    let Tables {
        slots,
        table,
        members,
        access,
        keys,
        promoted,
        expired,
        model,
        ..
    } = tables;
    let mut p = Projections::from_parts(dim, slots, table, members, keys, vectors);
    (p.applied_seq, p.last_ts_us) = (m.seq, m.ts_us);
    for (slot, a) in access {
        p.set_access(slot, a);
    }
    p.promoted = promoted;
    p.expired = expired;
    for le in &m.layers {
        let ls = &mut p.layers[le.layer.index()];
        if le.dump.is_some() {
            for s in &le.indexed {
                ls.in_index.set(*s);
            }
        }
    }
    Ok(Loaded {
        projections: p,
        manifest: m,
        model,
        graphs,
    })
}

/// The graph dump of a layer whose manifest entry names it `base`.
pub(crate) fn graph_path(dir: &Path, base: &str) -> PathBuf {
    dir.join(format!("{base}.graph"))
}

/// The manifest entry of the graph dump `base`.
fn graph_entry<'m>(dir: &Path, m: &'m ManifestBody, base: &str) -> Result<&'m FileEntry> {
    let name = file_name(&graph_path(dir, base));
    let Some(entry) = m.files.iter().find(|f| f.name == name) else {
        let why = if m
            .files
            .iter()
            .any(|f| f.name == format!("{base}.hnsw.graph"))
        {
            "the snapshot holds an hnsw_rs dump from an older version; the graph is rebuilt"
                .to_string()
        } else {
            format!("{name} not listed")
        };
        return Err(Error::corrupted(dir.join("MANIFEST"), 0, why));
    };
    Ok(entry)
}

/// Loads one layer's HNSW graph dump (without its vectors: see
/// [`HnswBuilder::fill_vectors`]), after checking it against the manifest; from `checked`
/// when open has already mapped and checked the same file ([`map_graph`]).
pub(crate) fn load_graph(
    dir: &Path,
    m: &ManifestBody,
    base: &str,
    dim: usize,
    checked: Option<&[u8]>,
) -> Result<HnswBuilder> {
    let path = graph_path(dir, base);
    match checked {
        Some(bytes) => HnswBuilder::read(bytes, dim, m.nslots),
        None => HnswBuilder::read(&read_graph(dir, m, base)?, dim, m.nslots),
    }
    .map_err(|(off, why)| Error::corrupted(&path, off, why))
}

/// Reads the graph dump `base` and checks it against its manifest entry and its block sums
/// (format 7 on): the same checks as a dump open mapped has had once the indexer read it
/// (`MappedGraph::checked_bytes`), so a damaged sums file is found and the graph rebuilt.
fn read_graph(dir: &Path, m: &ManifestBody, base: &str) -> Result<Vec<u8>> {
    let entry = graph_entry(dir, m, base)?;
    let bytes = read_listed(dir, entry)?;
    check_listed_sums(dir, m, entry, &bytes)?;
    Ok(bytes)
}

/// The bytes of the listed file `entry` of the snapshot in `dir`, read once and checked
/// against its manifest length and crc32 (the same check and message as [`check_file`]).
fn read_listed(dir: &Path, entry: &FileEntry) -> Result<Vec<u8>> {
    let path = dir.join(&entry.name);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    check_sum(&path, entry, bytes.len() as u64, crc32fast::hash(&bytes))?;
    Ok(bytes)
}

/// Rewrites the snapshot in `dir` (of `dim`-d vectors) as format 6 wrote it: no block sums
/// of the key index or the graph dumps, and each dumped layer's slots listed in the manifest.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
pub(crate) fn downgrade_to_format_6(dir: &Path, dim: usize) {
    downgrade(dir, 6, |m| {
        let mut sums = vec![sums::sums_name(KEYS_FILE)];
        for le in &mut m.layers {
            if let Some(base) = &le.dump {
                let path = graph_path(dir, base);
                let bytes = std::fs::read(&path).unwrap();
                let h = crate::index::hnsw::DumpHeader::parse(&bytes, dim).unwrap();
                le.indexed = bytes[crate::index::hnsw::DumpHeader::SLOTS_AT..][..4 * h.n]
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                sums.push(sums::sums_name(&file_name(&path)));
            }
        }
        sums
    });
}

/// Rewrites the snapshot in `dir` as format `format`: `edit` changes its manifest and names
/// the files that format did not have, which are removed from the directory and the manifest.
#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
fn downgrade(dir: &Path, format: u32, edit: impl FnOnce(&mut ManifestBody) -> Vec<String>) {
    let mut m = read_manifest(dir).unwrap();
    let gone = edit(&mut m);
    for g in &gone {
        std::fs::remove_file(dir.join(g)).unwrap();
    }
    m.files.retain(|f| !gone.contains(&f.name));
    m.format = format;
    write_manifest(dir, &m).unwrap();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::disk::files::crc_populated;
    use crate::{Config, Memory, NewRecord};

    /// Rewrites the snapshot in `dir` as format 5 wrote it: as format 6, without the record
    /// table's block sums and slot index.
    fn downgrade_to_format_5(dir: &Path, dim: usize) {
        downgrade_to_format_6(dir, dim);
        downgrade(dir, 5, |_| {
            vec![sums::sums_name(RECORDS_FILE), SLOTS_FILE.to_string()]
        });
    }

    /// Rewrites the snapshot in `dir` as format 4 wrote it: no block sums files.
    fn downgrade_to_format_4(dir: &Path, dim: usize) {
        downgrade_to_format_5(dir, dim);
        downgrade(dir, 4, |m| {
            let sums: Vec<String> = m.chunks.iter().map(|c| sums::sums_name(c)).collect();
            assert!(!sums.is_empty());
            sums
        });
    }

    /// Rewrites the snapshot in `dir` as format 3 wrote it: no `keys.bin`.
    fn downgrade_to_format_3(dir: &Path, dim: usize) {
        downgrade_to_format_4(dir, dim);
        downgrade(dir, 3, |_| vec![KEYS_FILE.to_string()]);
    }

    /// Rewrites the snapshot in `dir` as format 2 wrote it: `records.zst` instead of
    /// `records.bin`, no `keys.bin`, and a format-2 MANIFEST.
    fn downgrade_to_format_2(dir: &Path, dim: usize) {
        downgrade_to_format_3(dir, dim);
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
        m.format = 2;
        m.files.retain(|f| f.name != RECORDS_FILE);
        m.files.push(entry);
        write_manifest(dir, &m).unwrap();
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
        let graph = "hnsw-interact.graph";
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
            3 => downgrade_to_format_3(&snap, dim),
            4 => downgrade_to_format_4(&snap, dim),
            5 => downgrade_to_format_5(&snap, dim),
            _ => downgrade_to_format_6(&snap, dim),
        }
        assert_eq!(read_manifest(&snap).unwrap().format, format);

        let m = Memory::open(tmp.path(), config()).await.unwrap();
        let st = m.stats();
        assert_eq!(st.open.snapshot_seq, Some(seq), "{:?}", st.open);
        assert!(st.open.snapshots_rejected.is_empty(), "{:?}", st.open);
        assert_eq!(m.records(None).unwrap(), before);
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
}
