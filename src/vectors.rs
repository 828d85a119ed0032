//! Vector storage by slot: immutable memory-mapped chunk files written by snapshots, plus an
//! in-memory tail of vectors inserted since. Slots are assigned in log order, never reused, so
//! a chunk never changes once written and later snapshots hard-link it instead of rewriting.
//!
//! Chunk file (`vectors-<start>-<count>.f32`): a 64-byte header (magic `MGVC`, format version,
//! dimension, first slot, count, header crc32) then `count × dimension` little-endian f32.
//! The snapshot manifest holds a crc32 of the whole file.

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

struct Chunk {
    start: u32,
    count: u32,
    name: String,
    map: Mmap,
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
        // Alignment and length were checked when the chunk was mapped.
        bytemuck::cast_slice(&c.map[at..at + self.dim * 4])
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

    /// Builds the store from a snapshot's chunk files, mapped and crc-checked by the caller.
    pub(crate) fn from_chunks(
        dim: usize,
        maps: Vec<(PathBuf, Mmap)>,
        slots: u32,
    ) -> Result<Vectors> {
        let mut v = Vectors::new(dim);
        let last = maps.last().map(|(p, _)| p.clone()).unwrap_or_default();
        for (p, map) in maps {
            let p = &p;
            let c = chunk_of(p, map, dim)?;
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

/// Writes (and fsyncs) a chunk file; returns its length and crc32, taken from the bytes
/// written (reading a new 1.5 GB chunk back for its crc was seconds of a 1M checkpoint).
pub(crate) fn write_chunk(path: &Path, dim: usize, start: u32, data: &[u8]) -> Result<(u64, u32)> {
    let count = (data.len() / (dim * 4)) as u32;
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&(dim as u32).to_le_bytes());
    h[12..16].copy_from_slice(&start.to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(&h)
        .and_then(|_| f.write_all(data))
        .and_then(|_| magray_wal::fsutil::sync_file(&f, path))
        .map_err(|e| Error::io(path, e))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    crc.update(data);
    Ok(((HEADER_LEN + data.len()) as u64, crc.finalize()))
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
    if map.len() < HEADER_LEN {
        return Err(Error::corrupted(path, 0, "shorter than the chunk header"));
    }
    let h = &map[..HEADER_LEN];
    let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[0..4] != MAGIC {
        return Err(Error::corrupted(path, 0, "bad magic (not a vector chunk)"));
    }
    if crc32fast::hash(&h[..60]) != u32_at(60) {
        return Err(Error::corrupted(path, 60, "header checksum mismatch"));
    }
    if u32_at(4) != VERSION {
        return Err(Error::corrupted(
            path,
            4,
            format!("unsupported chunk version {}", u32_at(4)),
        ));
    }
    if u32_at(8) as usize != dim {
        return Err(Error::corrupted(
            path,
            8,
            format!(
                "chunk dimension {} differs from the store's {dim}",
                u32_at(8)
            ),
        ));
    }
    let (start, count) = (u32_at(12), u32_at(16));
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
        map,
    })
}
