//! Block sums: a crc32 per 4 KiB block of a snapshot file (a vector chunk, `records.bin`,
//! `keys.bin`, a graph dump), kept in a `.sums` file beside it, so that a mapped file is
//! checked block by block on first read ([`Lazy`], [`InPlace`]) instead of read whole at open;
//! and `MADV_POPULATE_READ`, which turns a media error under a map into an error, not SIGBUS.

use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

/// Bytes per checksummed block of a chunk file (the last block may be shorter).
pub(crate) const BLOCK: usize = 4096;

const SUMS_MAGIC: [u8; 4] = *b"MGVS";

const SUMS_VERSION: u32 = 1;

pub(crate) const SUMS_HEADER: usize = 32;

/// Name of the block sums file of the chunk file `chunk`.
pub(crate) fn sums_name(chunk: &str) -> String {
    format!("{}.sums", chunk.strip_suffix(".f32").unwrap_or(chunk))
}

/// The blocks of a mapped snapshot file (a vector chunk, `records.bin`, `keys.bin`, a graph
/// dump), checked against its block sums on first read.
pub(crate) struct Lazy {
    sums: Vec<u32>,
    /// One bit per block, set once it checked out.
    done: Vec<AtomicU64>,
    /// Every block checked out.
    all: AtomicBool,
    /// The first damage found: offset in the file and what was wrong.
    damage: OnceLock<(u64, String)>,
}

impl Lazy {
    pub(crate) fn new(sums: Vec<u32>) -> Lazy {
        Lazy {
            done: (0..sums.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            sums,
            all: AtomicBool::new(false),
            damage: OnceLock::new(),
        }
    }

    /// Checks block `b` of `map`, the chunk file `chunk` (at once if it checked out before);
    /// `populated`: its pages were just populated by the caller. False (and the damage noted)
    /// when it does not.
    pub(crate) fn check_block(&self, map: &Mmap, b: usize, populated: bool, chunk: &str) -> bool {
        let bit = 1u64 << (b % 64);
        if self.done[b / 64].load(Ordering::Acquire) & bit != 0 {
            return true;
        }
        let lo = b * BLOCK;
        let hi = (lo + BLOCK).min(map.len());
        if !populated {
            if let Err(why) = populate_block(map, lo, hi - lo) {
                let _ = self.damage.set((lo as u64, why));
                return false;
            }
        }
        if crc32fast::hash(&map[lo..hi]) != self.sums[b] {
            let _ = self.damage.set((
                lo as u64,
                format!(
                    "checksum mismatch in block {b} (bytes {lo}..{hi}) against {}",
                    sums_name(chunk)
                ),
            ));
            return false;
        }
        self.done[b / 64].fetch_or(bit, Ordering::Release);
        true
    }

    /// True when bytes `[at, at + n)` of `map` (the file `name`) checked out, checking each
    /// block not yet checked (populated first).
    pub(crate) fn check_range(&self, map: &Mmap, at: usize, n: usize, name: &str) -> bool {
        if n == 0 || self.all.load(Ordering::Acquire) {
            return true;
        }
        (at / BLOCK..=(at + n - 1) / BLOCK).all(|b| self.check_block(map, b, false, name))
    }

    /// Notes damage found by a check of what the blocks hold (the first is kept).
    pub(crate) fn fail(&self, at: u64, why: String) {
        let _ = self.damage.set((at, why));
    }

    /// The first damage found: offset in the file and what was wrong.
    /// True once every block checked out.
    pub(crate) fn all_checked(&self) -> bool {
        self.all.load(Ordering::Acquire)
    }

    pub(crate) fn damage(&self) -> Option<&(u64, String)> {
        self.damage.get()
    }

    /// Checks every block of `map` (the file `name`) not yet checked, in file order, 16 MiB
    /// populated at a time (where a step cannot be, each block is, and names the one), until
    /// `stop` says so (checked between steps); then marks them all checked. False when it
    /// stopped or found damage ([`Lazy::damage`] says which).
    pub(crate) fn scrub(&self, map: &Mmap, name: &str, stop: &dyn Fn() -> bool) -> bool {
        const STEP: usize = (16 << 20) / BLOCK;
        let mut b = 0;
        while b < self.sums.len() && !self.all.load(Ordering::Acquire) {
            if stop() {
                return false;
            }
            let end = (b + STEP).min(self.sums.len());
            let (lo, hi) = (b * BLOCK, (end * BLOCK).min(map.len()));
            let populated = populate_block(map, lo, hi - lo).is_ok();
            if !(b..end).all(|k| self.check_block(map, k, populated, name)) {
                return false;
            }
            b = end;
        }
        if self.damage.get().is_some() {
            return false;
        }
        self.all.store(true, Ordering::Release);
        true
    }
}

/// Checks `bytes`, the whole of the snapshot file at `file`, against its block sums `sums`
/// (parsed from the sums file at `sums_path`): each 4 KiB block's crc32. A mismatch names the
/// sums file and the offset of the sum (tools, and an open after damage, find sums that
/// disagree with their file before a lazy open trusts them).
pub(crate) fn check_sums(bytes: &[u8], sums: &[u32], sums_path: &Path, file: &Path) -> Result<()> {
    let blocks = bytes.chunks(BLOCK);
    if blocks.len() != sums.len() {
        return Err(Error::corrupted(
            sums_path,
            12,
            format!("{} block sums for {} blocks", sums.len(), blocks.len()),
        ));
    }
    match blocks.zip(sums).position(|(b, s)| crc32fast::hash(b) != *s) {
        Some(i) => Err(Error::corrupted(
            sums_path,
            (SUMS_HEADER + 4 * i) as u64,
            format!(
                "the checksum of block {i} does not match {}",
                file.display()
            ),
        )),
        None => Ok(()),
    }
}

/// A snapshot file read in place through its map (the key index, a graph dump): checked in
/// full when it was mapped (`lazy` none), or each block against its sum on first read
/// ([`InPlace::ok`]) and by the indexer's scrub ([`InPlace::scrub`]).
pub(crate) struct InPlace {
    pub(crate) path: PathBuf,
    /// File name (named by a damage message).
    pub(crate) name: String,
    pub(crate) map: Mmap,
    pub(crate) lazy: Option<Lazy>,
    /// Damage found in a file checked in full at open (a check of what it holds that open
    /// does not make); a lazy one keeps it in `lazy`.
    failed: OnceLock<(u64, String)>,
}

impl InPlace {
    pub(crate) fn new(path: PathBuf, map: Mmap, lazy: Option<Lazy>) -> InPlace {
        InPlace {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path,
            map,
            lazy,
            failed: OnceLock::new(),
        }
    }

    /// True when bytes `[at, at + n)` checked out (checking any block not yet checked); false
    /// (the damage noted, see [`InPlace::damage`]) when they did not or lie beyond the file.
    pub(crate) fn ok(&self, at: usize, n: usize) -> bool {
        if at.checked_add(n).is_none_or(|end| end > self.map.len()) {
            self.fail(at as u64, format!("{n} bytes at {at} lie beyond the file"));
            return false;
        }
        match &self.lazy {
            None => true,
            Some(lz) => lz.check_range(&self.map, at, n, &self.name),
        }
    }

    /// Notes damage found by a check of what the blocks hold (the first is kept).
    pub(crate) fn fail(&self, at: u64, why: String) {
        match &self.lazy {
            Some(lz) => lz.fail(at, why),
            None => {
                let _ = self.failed.set((at, why));
            }
        }
    }

    /// The first damage found: offset in the file and what was wrong.
    pub(crate) fn fault(&self) -> Option<&(u64, String)> {
        match &self.lazy {
            Some(lz) => lz.damage(),
            None => self.failed.get(),
        }
    }

    /// The first damage found, as the error to report.
    pub(crate) fn damage(&self) -> Option<Error> {
        let (at, why) = self.fault()?;
        Some(Error::corrupted(&self.path, *at, why.clone()))
    }

    /// Checks every block not yet checked (see [`Lazy::scrub`]): true once all are, false
    /// when `stop` stopped it; the damage found is the error.
    pub(crate) fn scrub(&self, stop: &dyn Fn() -> bool) -> Result<bool> {
        let Some(lz) = &self.lazy else {
            return Ok(true);
        };
        let done = lz.scrub(&self.map, &self.name, stop);
        match self.damage() {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }
}

/// What `MADV_POPULATE_READ` over a range of a map found.
pub(crate) enum Populated {
    /// Every page is in memory: reading the range cannot raise SIGBUS.
    Yes,
    /// A page cannot be read (a media error), what a read through the map would turn into
    /// SIGBUS; the text says where and why.
    Unreadable(String),
    /// Interrupted (EINTR, EAGAIN): worth another try.
    Interrupted,
    /// The call is missing (Linux before 5.14, other systems) or refused for another reason
    /// (memory short): the bytes can only be read as they are.
    Unsupported(String),
}

/// Populates `map[at..at + n]` with `MADV_POPULATE_READ` (see [`Populated`]). The one place
/// that calls it: snapshot files checked through their maps, and chunk blocks checked on
/// first read and by the scrub.
pub(crate) fn populate(map: &Mmap, at: usize, n: usize) -> Populated {
    #[cfg(target_os = "linux")]
    {
        // errno values (Linux, every architecture we build for).
        const EINTR: i32 = 4;
        const EIO: i32 = 5;
        const EAGAIN: i32 = 11;
        const EFAULT: i32 = 14;
        const EHWPOISON: i32 = 133;
        match map.advise_range(memmap2::Advice::PopulateRead, at, n) {
            Ok(()) => Populated::Yes,
            Err(e) => match e.raw_os_error() {
                Some(EFAULT | EIO | EHWPOISON) => {
                    Populated::Unreadable(format!("cannot read {n} bytes from here: {e}"))
                }
                Some(EINTR | EAGAIN) => Populated::Interrupted,
                _ => Populated::Unsupported(e.to_string()),
            },
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (map, at, n);
        Populated::Unsupported("MADV_POPULATE_READ is Linux-only".into())
    }
}

/// True where [`populate`] can turn an unreadable page into an error (Linux 5.14 on): only
/// then is a chunk mapped unread at open (else a media error found by a later read would be a
/// SIGBUS, not an error; such a chunk is checked in full at open instead).
pub(crate) fn populate_works(map: &Mmap) -> bool {
    matches!(
        populate(map, 0, map.len().min(BLOCK)),
        Populated::Yes | Populated::Unreadable(_)
    )
}

/// Populates a range of a chunk before its blocks are checked: an unreadable page is damage
/// (the text says why); where the call is missing, refused or interrupted the bytes are read
/// as they are.
fn populate_block(map: &Mmap, at: usize, n: usize) -> std::result::Result<(), String> {
    match populate(map, at, n) {
        Populated::Unreadable(why) => Err(why),
        _ => Ok(()),
    }
}

/// Tests: the block sums of `bytes`, a whole file (a crc32 per block).
#[cfg(test)]
pub(crate) fn block_sums(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks(BLOCK).map(crc32fast::hash).collect()
}

/// Writes (and fsyncs) the block sums file of the chunk file at `chunk` (`len` bytes).
pub(crate) fn write_sums(chunk: &Path, len: u64, sums: &[u32]) -> Result<(u64, u32)> {
    let name = chunk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = chunk.with_file_name(sums_name(&name));
    let mut b = Vec::with_capacity(SUMS_HEADER + sums.len() * 4);
    b.extend_from_slice(&SUMS_MAGIC);
    b.extend_from_slice(&SUMS_VERSION.to_le_bytes());
    b.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    b.extend_from_slice(&(sums.len() as u32).to_le_bytes());
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    let hcrc = crc32fast::hash(&b);
    b.extend_from_slice(&hcrc.to_le_bytes());
    for s in sums {
        b.extend_from_slice(&s.to_le_bytes());
    }
    let mut f = magray_wal::fsutil::create_file(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(&b)
        .and_then(|_| magray_wal::fsutil::sync_file(&f, &path))
        .map_err(|e| Error::io(&path, e))?;
    Ok((b.len() as u64, crc32fast::hash(&b)))
}

/// Writes the block sums file of an existing chunk file (one a snapshot from before block
/// sums links), reading the chunk once; its length and crc32 must match the manifest's
/// (`len`, `crc`), so that damage is never blessed with sums of its own.
pub(crate) fn write_sums_of(chunk: &Path, len: u64, crc: u32) -> Result<(u64, u32)> {
    use std::io::Read;
    let mut f = File::open(chunk).map_err(|e| Error::io(chunk, e))?;
    let mut whole = crc32fast::Hasher::new();
    let mut sums = Vec::new();
    let mut buf = vec![0u8; 256 * BLOCK];
    let mut read = 0u64;
    loop {
        // Fill the buffer (a short read is not the end).
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(chunk, e)),
            }
        }
        if n == 0 {
            break;
        }
        whole.update(&buf[..n]);
        sums.extend(buf[..n].chunks(BLOCK).map(crc32fast::hash));
        read += n as u64;
        if n < buf.len() {
            break;
        }
    }
    if read != len || whole.finalize() != crc {
        return Err(Error::corrupted(
            chunk,
            0,
            "checksum mismatch against the manifest (found while writing its block sums)",
        ));
    }
    write_sums(chunk, len, &sums)
}

/// Checks the `len`-byte header at the start of `file`: the file is long enough, `magic`, the
/// crc32 of all but the last 4 bytes (which hold it), and `version` at offset 4. Returns a
/// reader of the header's little-endian u32 fields by offset.
pub(crate) fn check_header<'a>(
    path: &Path,
    file: &'a [u8],
    len: usize,
    magic: &[u8; 4],
    what: &str,
    version: u32,
) -> Result<impl Fn(usize) -> u32 + 'a> {
    if file.len() < len {
        return Err(Error::corrupted(
            path,
            0,
            format!("shorter than the {what} header"),
        ));
    }
    let h = &file[..len];
    let u32_at = move |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
    if h[0..4] != *magic {
        return Err(Error::corrupted(
            path,
            0,
            format!("bad magic (not a {what})"),
        ));
    }
    if crc32fast::hash(&h[..len - 4]) != u32_at(len - 4) {
        return Err(Error::corrupted(
            path,
            (len - 4) as u64,
            "header checksum mismatch",
        ));
    }
    if u32_at(4) != version {
        return Err(Error::corrupted(
            path,
            4,
            format!("unsupported {what} version {}", u32_at(4)),
        ));
    }
    Ok(u32_at)
}

/// The block sums in `bytes`, the sums file at `path` (crc-checked against the manifest by the
/// caller) of a chunk file of `chunk_len` bytes.
pub(crate) fn parse_sums(path: &Path, bytes: &[u8], chunk_len: u64) -> Result<Vec<u32>> {
    let u32_at = check_header(
        path,
        bytes,
        SUMS_HEADER,
        &SUMS_MAGIC,
        "block sums",
        SUMS_VERSION,
    )?;
    if u32_at(8) as usize != BLOCK {
        return Err(Error::corrupted(
            path,
            8,
            format!("block size {}; this build reads {BLOCK}", u32_at(8)),
        ));
    }
    let n = u32_at(12) as usize;
    let len = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
    if len != chunk_len || n as u64 != chunk_len.div_ceil(BLOCK as u64) {
        return Err(Error::corrupted(
            path,
            12,
            format!("{n} blocks of a {len}-byte chunk; the chunk is {chunk_len} bytes"),
        ));
    }
    if bytes.len() != SUMS_HEADER + n * 4 {
        return Err(Error::corrupted(
            path,
            bytes.len() as u64,
            format!(
                "file is {} bytes; header says {}",
                bytes.len(),
                SUMS_HEADER + n * 4
            ),
        ));
    }
    Ok(bytes[SUMS_HEADER..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
