//! What every snapshot file shares: its manifest entry (name, length, crc32), whole-file
//! checks, checked and unread maps, a writer that sums what it writes, and the checked
//! fixed header of the record table, slot index and key index.

use crate::disk::sums::{self, Populated, BLOCK};
use crate::error::{Error, Result};
use magray_wal::fsutil;
use memmap2::Mmap;
use rkyv::{Archive, Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct FileEntry {
    pub(crate) name: String,
    pub(crate) len: u64,
    pub(crate) crc: u32,
}

pub(crate) fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| fsutil::sync_file(&f, path))
        .map_err(|e| Error::io(path, e))
}

/// Length and crc32 of a file, read with `read()` (not through a map: a media error is then
/// an error that rejects the snapshot, not a SIGBUS).
pub(crate) fn crc_file(path: &Path) -> Result<(u64, u32)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = crc32fast::Hasher::new();
    // 128 KiB stays in L2 between the copy and the crc: reading a 1.5 GB chunk this way took
    // 221 ms here, against 263 ms with 1 MiB (and 550 ms with 16 MiB).
    let mut buf = vec![0u8; 128 << 10];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.finalize()))
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<FileEntry> {
    let mut f = magray_wal::fsutil::create_file(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| fsutil::sync_file(&f, path))
        .map_err(|e| Error::io(path, e))?;
    Ok(FileEntry {
        name: file_name(path),
        len: bytes.len() as u64,
        crc: crc32fast::hash(bytes),
    })
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Maps the listed file `entry` of the snapshot in `dir` and checks its length and crc32
/// through the map. The pages are first populated with `MADV_POPULATE_READ`, which returns a
/// media error as an error (the snapshot is rejected and open falls back) where a plain read
/// through the map would raise SIGBUS; the crc is then taken in place, without the copy a
/// `read()` makes (a 1.5 GB vector chunk: 167 ms this way, 221 ms with `read()`). Without
/// that call (Linux before 5.14, other systems) the crc is taken with `read()` first.
pub(crate) fn map_checked(dir: &Path, entry: &FileEntry) -> Result<Mmap> {
    let map = map_unread(dir, entry)?;
    let path = &dir.join(&entry.name);
    match crc_populated(path, &map)? {
        Some(crc) => check_sum(path, entry, map.len() as u64, crc)?,
        None => check_file(dir, entry)?,
    }
    Ok(map)
}

/// Maps the listed file `entry` of the snapshot in `dir` without reading it: only its length
/// is checked against the manifest. Whoever reads through the map checks what it reads
/// first (the crc of the whole file, or each block against its sum).
pub(crate) fn map_unread(dir: &Path, entry: &FileEntry) -> Result<Mmap> {
    let path = &dir.join(&entry.name);
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: snapshot files are immutable once renamed into place; nothing in this crate
    // writes to them again, and the store lock keeps other writers of ours out.
    #[allow(unsafe_code)]
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    if map.len() as u64 != entry.len {
        check_sum(path, entry, map.len() as u64, 0)?;
    }
    Ok(map)
}

/// Maps the listed file `entry` of the snapshot in `dir` unread (see [`map_unread`]) to check
/// it block by block on first read, where `MADV_POPULATE_READ` works
/// ([`sums::populate_works`]: a bad page read later is then an error, not a SIGBUS);
/// `None` where it does not, and the caller checks the file in full instead.
pub(crate) fn map_for_blocks(dir: &Path, entry: &FileEntry) -> Result<Option<Mmap>> {
    let map = map_unread(dir, entry)?;
    Ok(sums::populate_works(&map).then_some(map))
}

/// crc32 of `map`, each step populated before it is read; `None` where a step could not be
/// populated for a reason other than the file's bytes (the kernel lacks the call, or memory
/// is short): the caller then reads the file with `read()`, which needs no populated map.
pub(crate) fn crc_populated(path: &Path, map: &Mmap) -> Result<Option<u32>> {
    const STEP: usize = 16 << 20;
    let mut h = crc32fast::Hasher::new();
    let mut at = 0;
    let mut retries = 0;
    while at < map.len() {
        let n = STEP.min(map.len() - at);
        match sums::populate(map, at, n) {
            Populated::Yes => h.update(&map[at..at + n]),
            Populated::Unreadable(why) => return Err(Error::corrupted(path, at as u64, why)),
            Populated::Interrupted if retries < 8 => {
                retries += 1;
                continue;
            }
            Populated::Interrupted => {
                tracing::debug!(file = %path.display(), "MADV_POPULATE_READ kept being interrupted; checking the file with read()");
                return Ok(None);
            }
            Populated::Unsupported(why) => {
                tracing::debug!(file = %path.display(), error = %why, "MADV_POPULATE_READ failed; checking the file with read()");
                return Ok(None);
            }
        }
        at += n;
    }
    Ok(Some(h.finalize()))
}

/// Checks one listed file's length and crc32.
pub(crate) fn check_file(dir: &Path, entry: &FileEntry) -> Result<()> {
    let path = dir.join(&entry.name);
    let (len, crc) = crc_file(&path)?;
    check_sum(&path, entry, len, crc)
}

/// Checks a file's length and crc32, as read, against its manifest entry.
pub(crate) fn check_sum(path: &Path, entry: &FileEntry, len: u64, crc: u32) -> Result<()> {
    if len != entry.len {
        return Err(Error::corrupted(
            path,
            len.min(entry.len),
            format!("file is {len} bytes; the manifest says {}", entry.len),
        ));
    }
    if crc != entry.crc {
        return Err(Error::corrupted(
            path,
            0,
            "checksum mismatch against the manifest",
        ));
    }
    Ok(())
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

/// A writer that keeps the crc32 and length of what went through it.
pub(crate) struct CrcWriter<W> {
    pub(crate) inner: W,
    pub(crate) crc: crc32fast::Hasher,
    pub(crate) len: u64,
    /// With block sums: the crc32 of each whole 4 KiB block so far, and of the one begun.
    blocks: Option<(Vec<u32>, crc32fast::Hasher)>,
}

impl<W> CrcWriter<W> {
    pub(crate) fn new(inner: W) -> CrcWriter<W> {
        CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
            blocks: None,
        }
    }

    /// A writer that also takes the crc32 of each 4 KiB block (see [`CrcWriter::sums`]).
    pub(crate) fn with_block_sums(inner: W) -> CrcWriter<W> {
        CrcWriter {
            blocks: Some((Vec::new(), crc32fast::Hasher::new())),
            ..CrcWriter::new(inner)
        }
    }

    /// The crc32 of each 4 KiB block written (the last one short), if asked for.
    pub(crate) fn sums(&mut self) -> Vec<u32> {
        let Some((mut sums, last)) = self.blocks.take() else {
            return Vec::new();
        };
        if !self.len.is_multiple_of(BLOCK as u64) {
            sums.push(last.finalize());
        }
        sums
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        if let Some((sums, block)) = &mut self.blocks {
            let mut at = self.len;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let room = BLOCK - (at % BLOCK as u64) as usize;
                let (now, later) = rest.split_at(room.min(rest.len()));
                block.update(now);
                at += now.len() as u64;
                if at.is_multiple_of(BLOCK as u64) {
                    sums.push(std::mem::take(block).finalize());
                }
                rest = later;
            }
        }
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn len32(n: usize, what: &str) -> std::io::Result<u32> {
    u32::try_from(n).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} of {n} bytes does not fit the record table"),
        )
    })
}

/// Checks the 64-byte header a snapshot's table files start with (`records.bin`,
/// `keys.bin`): that `file` holds one, its magic (bytes 0..8), its crc32 of bytes 0..60 (at
/// 60) and its format version (u32 at 8), `what` naming the kind of file in the errors.
/// Returns the header.
/// Length of that header.
pub(crate) const TABLE_HEADER: usize = 64;

pub(crate) fn table_header<'a>(
    path: &Path,
    file: &'a [u8],
    magic: &[u8; 8],
    what: &str,
    version: u32,
) -> Result<&'a [u8]> {
    let bad = |off: u64, why: String| Error::corrupted(path, off, why);
    if file.len() < TABLE_HEADER {
        return Err(bad(0, format!("shorter than the {what} header")));
    }
    let h = &file[..TABLE_HEADER];
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
