//! Vector storage by slot: immutable memory-mapped chunk files written by snapshots, plus an
//! in-memory tail of vectors inserted since. Slots are assigned in log order, never reused, so
//! a chunk never changes once written and later snapshots hard-link it instead of rewriting.
//!
//! Chunk file (`vectors-<start>-<count>.f32`): a 64-byte header (magic `MGVC`, format version,
//! dimension, first slot, count, header crc32) then `count × dimension` little-endian f32.
//! The snapshot manifest holds a crc32 of the whole file.
//!
//! Block sums file (`vectors-<start>-<count>.sums`, beside its chunk and hard-linked with it):
//! a crc32 per 4 KiB block of the chunk file. A chunk that has one is not read at open: each
//! block is checked the first time anything reads from it ([`Vectors::get`]), and the indexer
//! checks every block in the background right after open ([`Vectors::scrub`]). A block that
//! fails is damage ([`Vectors::damage`]): the read gets zeros instead of the bytes, and the
//! engine fails the search that made it, names the file and offset, and marks the store so
//! that the next open checks every file in full (see `engine::damage`, `DAMAGE_MARK`).

use crate::disk::sums::{check_header, sums_name, write_sums, Lazy, BLOCK, SUMS_HEADER};
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "vector files are little-endian f32 memory-mapped in place; big-endian hosts are not supported"
);

const MAGIC: [u8; 4] = *b"MGVC";
const VERSION: u32 = 1;
/// Header bytes before the vectors (keeps them 64-byte aligned in the map).
pub(crate) const HEADER_LEN: usize = 64;

pub(crate) fn chunk_name(start: u32, count: u32) -> String {
    format!("vectors-{start:010}-{count:010}.f32")
}

/// What a damaged block reads as (the widest dimension a store may have).
static ZEROS: [f32; crate::limits::MAX_DIMENSION] = [0.0; crate::limits::MAX_DIMENSION];

struct Chunk {
    start: u32,
    count: u32,
    name: String,
    path: PathBuf,
    map: Mmap,
    /// Block sums of a chunk not checked in full when it was mapped.
    lazy: Option<Lazy>,
}

impl Chunk {
    /// True when bytes `[at, at + n)` of the file checked out (checking any block not yet
    /// checked), or were checked in full at open.
    fn check(&self, at: usize, n: usize) -> bool {
        self.lazy
            .as_ref()
            .is_none_or(|lz| lz.check_range(&self.map, at, n, &self.name))
    }
}

/// Vectors by slot.
pub(crate) struct Vectors {
    dim: usize,
    chunks: Vec<Arc<Chunk>>,
    tail_start: u32,
    tail: Vec<f32>,
}

impl std::fmt::Debug for Vectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vectors")
            .field("dim", &self.dim)
            .field("chunks", &self.chunks.len())
            .field("len", &self.len())
            .finish()
    }
}

impl Vectors {
    pub(crate) fn new(dim: usize) -> Vectors {
        Vectors {
            dim,
            chunks: Vec::new(),
            tail_start: 0,
            tail: Vec::new(),
        }
    }

    /// Number of slots.
    pub(crate) fn len(&self) -> u32 {
        self.tail_start + (self.tail.len() / self.dim) as u32
    }

    pub(crate) fn push(&mut self, v: &[f32]) -> u32 {
        let slot = self.len();
        self.tail.extend_from_slice(v);
        slot
    }

    pub(crate) fn get(&self, slot: u32) -> &[f32] {
        if slot >= self.tail_start {
            let at = (slot - self.tail_start) as usize * self.dim;
            return &self.tail[at..at + self.dim];
        }
        // Most slots are in the first chunk (the one a store's first big snapshot wrote).
        let c = match self.chunks.first() {
            Some(c) if slot < c.start + c.count => c,
            _ => &self.chunks[self.chunks.partition_point(|c| c.start + c.count <= slot)],
        };
        let at = HEADER_LEN + (slot - c.start) as usize * self.dim * 4;
        if !c.check(at, self.dim * 4) {
            // Damage, now noted in the chunk: the caller reports it (see `damage`).
            return &ZEROS[..self.dim];
        }
        // Alignment and length were checked when the chunk was mapped.
        bytemuck::cast_slice(&c.map[at..at + self.dim * 4])
    }

    /// The first damage found in a chunk (by a read or the scrub), as the error to report.
    pub(crate) fn damage(&self) -> Option<Error> {
        self.chunks.iter().find_map(|c| {
            let (at, why) = c.lazy.as_ref()?.damage()?;
            Some(Error::corrupted(&c.path, *at, why.clone()))
        })
    }

    /// Checks every block of every chunk not yet checked, in file order, until `stop` says so
    /// (checked between 16 MiB steps); the first damage is the error (and stays noted, see
    /// [`Vectors::damage`]). Reads only through the maps, so it needs no lock of the
    /// projections.
    pub(crate) fn scrub(&self, stop: &dyn Fn() -> bool) -> Result<()> {
        for c in &self.chunks {
            let Some(lz) = &c.lazy else { continue };
            if !lz.scrub(&c.map, &c.name, stop) && lz.damage().is_none() {
                // Stopped.
                return Ok(());
            }
            if let Some(e) = self.damage() {
                return Err(e);
            }
        }
        match self.damage() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// True while some block of a chunk has not been checked.
    pub(crate) fn unchecked(&self) -> bool {
        self.chunks
            .iter()
            .any(|c| c.lazy.as_ref().is_some_and(|lz| !lz.all_checked()))
    }

    /// The mapped slots alone (`[0, tail_start)`), sharing the maps: read without the
    /// projections' lock. A slot at or past `tail_start` is not in it.
    pub(crate) fn mapped_part(&self) -> Vectors {
        Vectors {
            dim: self.dim,
            chunks: self.chunks.clone(),
            tail_start: self.tail_start,
            tail: Vec::new(),
        }
    }

    /// Names of the chunk files (all immutable), oldest first.
    pub(crate) fn chunk_names(&self) -> Vec<String> {
        self.chunks.iter().map(|c| c.name.clone()).collect()
    }

    /// The tail slots `[tail_start, upto)` as little-endian bytes, for a new chunk.
    pub(crate) fn tail_range(&self, upto: u32) -> (u32, Vec<u8>) {
        let n = (upto - self.tail_start) as usize * self.dim;
        (
            self.tail_start,
            bytemuck::cast_slice(&self.tail[..n]).to_vec(),
        )
    }

    pub(crate) fn tail_start(&self) -> u32 {
        self.tail_start
    }

    /// Replaces the tail's first `count` slots with a mapped chunk file written from them.
    pub(crate) fn adopt_chunk(&mut self, path: &Path) -> Result<()> {
        let c = map_chunk(path, self.dim)?;
        if c.start != self.tail_start || c.count == 0 {
            return Err(Error::corrupted(
                path,
                0,
                format!(
                    "chunk starts at slot {} with {} vectors; expected start {}",
                    c.start, c.count, self.tail_start
                ),
            ));
        }
        self.tail.drain(..c.count as usize * self.dim);
        self.tail_start += c.count;
        self.chunks.push(Arc::new(c));
        Ok(())
    }

    /// Builds the store from a snapshot's chunk files, mapped by the caller: each either
    /// crc-checked in full (`None`) or with its block sums, to check each block on first read.
    pub(crate) fn from_chunks(
        dim: usize,
        maps: Vec<(PathBuf, Mmap, Option<Vec<u32>>)>,
        slots: u32,
    ) -> Result<Vectors> {
        let mut v = Vectors::new(dim);
        let last = maps.last().map(|(p, _, _)| p.clone()).unwrap_or_default();
        for (p, map, sums) in maps {
            let p = &p;
            let mut c = chunk_of(p, map, dim)?;
            if let Some(sums) = sums {
                if sums.len() != c.map.len().div_ceil(BLOCK) {
                    return Err(Error::corrupted(
                        p.with_file_name(sums_name(&c.name)),
                        SUMS_HEADER as u64,
                        format!(
                            "{} block sums for {} blocks",
                            sums.len(),
                            c.map.len().div_ceil(BLOCK)
                        ),
                    ));
                }
                c.lazy = Some(Lazy::new(sums));
            }
            if c.start != v.tail_start {
                return Err(Error::corrupted(
                    p,
                    0,
                    format!(
                        "chunk starts at slot {}, expected {}",
                        c.start, v.tail_start
                    ),
                ));
            }
            v.tail_start += c.count;
            v.chunks.push(Arc::new(c));
        }
        if v.tail_start != slots {
            return Err(Error::corrupted(
                last,
                0,
                format!(
                    "chunks hold {} vectors; the snapshot has {slots} slots",
                    v.tail_start
                ),
            ));
        }
        Ok(v)
    }
}

/// Writes (and fsyncs) a chunk file and its block sums file beside it; returns the length and
/// crc32 of each (chunk, then sums), taken from the bytes written (reading a new 1.5 GB chunk
/// back for its crc was seconds of a 1M checkpoint).
pub(crate) fn write_chunk(
    path: &Path,
    dim: usize,
    start: u32,
    data: &[u8],
) -> Result<((u64, u32), (u64, u32))> {
    let count = (data.len() / (dim * 4)) as u32;
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(dim as u32).to_le_bytes());
    h[12..16].copy_from_slice(&start.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    let mut f = magray_wal::fsutil::create_file(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&h)
        .and_then(|_| f.write_all(data))
        .and_then(|_| magray_wal::fsutil::sync_file(&f, path))
        .map_err(|e| Error::io(path, e))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(data);
    let len = HEADER_LEN + data.len();
    // Block 0 holds the header and the first vectors.
    let first = (BLOCK - HEADER_LEN).min(data.len());
    let mut block0 = h.to_vec();
    block0.extend_from_slice(&data[..first]);
    let sums: Vec<u32> = std::iter::once(crc32fast::hash(&block0))
        .chain(data[first..].chunks(BLOCK).map(crc32fast::hash))
        .collect();
    let sums = write_sums(path, len as u64, &sums)?;
    Ok(((len as u64, crc.finalize()), sums))
}

fn map_chunk(path: &Path, dim: usize) -> Result<Chunk> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: chunk files are immutable once their snapshot is renamed into place; nothing in
    // this crate writes to them again, and the store lock keeps other writers of ours out.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    chunk_of(path, map, dim)
}

/// The chunk file at `path`, already mapped: its header checked against `dim`.
fn chunk_of(path: &Path, map: Mmap, dim: usize) -> Result<Chunk> {
    let (file_dim, start, count) = {
        let u32_at = check_header(path, &map, HEADER_LEN, &MAGIC, "vector chunk", VERSION)?;
        (u32_at(8), u32_at(12), u32_at(16))
    };
    if file_dim as usize != dim {
        return Err(Error::corrupted(
            path,
            8,
            format!("chunk dimension {file_dim} differs from the store's {dim}"),
        ));
    }
    let want = HEADER_LEN + count as usize * dim * 4;
    if map.len() != want {
        return Err(Error::corrupted(
            path,
            map.len() as u64,
            format!("file is {} bytes; header says {want}", map.len()),
        ));
    }
    if bytemuck::try_cast_slice::<u8, f32>(&map[HEADER_LEN..]).is_err() {
        return Err(Error::corrupted(
            path,
            HEADER_LEN as u64,
            "vectors are not 4-byte aligned in the map",
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Chunk {
        start,
        count,
        name,
        path: path.to_path_buf(),
        map,
        lazy: None,
    })
}

#[cfg(test)]
mod tests;
