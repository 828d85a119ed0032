//! The archive: checkpointed log segments kept for point-in-time restore.
//!
//! One file per checkpointed segment, named
//! `{first_seq:020}-{last_seq:020}-{first_ts_us:020}-{last_ts_us:020}.mwa`, written atomically
//! (temp, fsync, rename, fsync dir) before okaywal may recycle the segment.
//!
//! ```text
//! offset size field
//!  0     4    magic          b"MGAR"
//!  4     2    format version u16 LE (ARCHIVE_FORMAT_VERSION)
//!  6     2    flags          u16 LE, must be 0
//!  8     8    first_seq      u64 LE
//! 16     8    last_seq       u64 LE
//! 24     8    first_ts_us    u64 LE
//! 32     8    last_ts_us     u64 LE
//! 40     8    body_len       u64 LE (compressed bytes that follow the header)
//! 48     8    raw_len        u64 LE (bytes after decompression, <= MAX_ARCHIVE_RAW)
//! 56     4    body_crc       u32 LE, crc32 of the compressed body
//! 60     4    header_crc     u32 LE, crc32 of bytes 0..60
//! 64     ...  body           zstd( frame || frame || ... ), frames exactly as in the log
//! ```

use crate::error::{Error, IoContext, Result};
use crate::event::Envelope;
use crate::frame::{self, FRAME_HEADER_LEN};
use crate::fsutil;
use std::fs;
use std::path::{Path, PathBuf};

/// Archive magic.
pub const ARCHIVE_MAGIC: [u8; 4] = *b"MGAR";
/// Archive layout version. Changelog:
/// - 1: initial layout (64-byte header, zstd body of frames).
pub const ARCHIVE_FORMAT_VERSION: u16 = 1;
/// Archive header length.
pub const ARCHIVE_HEADER_LEN: usize = 64;
/// Largest decompressed body accepted (1 GiB), checked before allocating.
pub const MAX_ARCHIVE_RAW: u64 = 1 << 30;
/// Archive file extension.
pub const ARCHIVE_EXT: &str = "mwa";
const ZSTD_LEVEL: i32 = 3;

const _: () = assert!(ARCHIVE_HEADER_LEN == 4 + 2 + 2 + 8 * 6 + 4 + 4);

/// An archive file, as named on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Path of the file.
    pub path: PathBuf,
    /// First sequence inside.
    pub first_seq: u64,
    /// Last sequence inside.
    pub last_seq: u64,
    /// Timestamp of the first event (µs).
    pub first_ts_us: u64,
    /// Timestamp of the last event (µs).
    pub last_ts_us: u64,
}

/// File name for an archive covering the given range.
pub fn file_name(first_seq: u64, last_seq: u64, first_ts_us: u64, last_ts_us: u64) -> String {
    format!("{first_seq:020}-{last_seq:020}-{first_ts_us:020}-{last_ts_us:020}.{ARCHIVE_EXT}")
}

fn parse_name(name: &str) -> Option<[u64; 4]> {
    let stem = name.strip_suffix(&format!(".{ARCHIVE_EXT}"))?;
    let mut parts = stem.split('-');
    let mut out = [0u64; 4];
    for slot in &mut out {
        let p = parts.next()?;
        if p.len() != 20 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Lists the archive files in `dir`, sorted by first sequence. Names are checked for
/// overlap; contents are validated when read.
pub fn list(dir: &Path) -> Result<Vec<ArchiveFile>> {
    let files = list_unchecked(dir)?;
    for w in files.windows(2) {
        if w[1].first_seq <= w[0].last_seq {
            return Err(Error::Corrupted {
                file: w[1].path.clone(),
                offset: 0,
                reason: format!(
                    "archive overlaps {} (sequences {}..={} and {}..={})",
                    w[0].path.display(),
                    w[0].first_seq,
                    w[0].last_seq,
                    w[1].first_seq,
                    w[1].last_seq
                ),
            });
        }
    }
    Ok(files)
}

/// Removes archive files that a later archive of the same segment supersedes: same first
/// sequence, fewer events. That happens when a power cut undoes okaywal's checkpoint of a
/// segment after it was archived (its rename to `wal-N-cp` was not yet durable): the
/// segment comes back live, takes more entries and is archived again, whole. The shorter
/// file holds a prefix of the same events, so removing it loses nothing. Returns the files
/// removed; `dir` is synced when there were any.
pub fn remove_superseded(dir: &Path) -> Result<Vec<PathBuf>> {
    let files = list_unchecked(dir)?;
    let mut removed = Vec::new();
    for w in files.windows(2) {
        // Sorted by (first, last): a shorter file with the same first sequence comes first.
        if w[0].first_seq == w[1].first_seq && w[0].last_seq <= w[1].last_seq {
            // The longer file must read whole before the shorter one goes.
            read(&w[1].path)?;
            fs::remove_file(&w[0].path).at(&w[0].path)?;
            tracing::warn!(
                removed = %w[0].path.display(),
                kept = %w[1].path.display(),
                "removed an archive file that a later archive of the same segment supersedes"
            );
            removed.push(w[0].path.clone());
        }
    }
    if !removed.is_empty() {
        crate::fsutil::sync_dir(dir)?;
    }
    Ok(removed)
}

/// The archive files in `dir`, sorted by first then last sequence, without the overlap check.
fn list_unchecked(dir: &Path) -> Result<Vec<ArchiveFile>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some([first_seq, last_seq, first_ts_us, last_ts_us]) = parse_name(&name) {
            files.push(ArchiveFile {
                path: entry.path(),
                first_seq,
                last_seq,
                first_ts_us,
                last_ts_us,
            });
        }
    }
    files.sort_by_key(|f| (f.first_seq, f.last_seq));
    Ok(files)
}

/// Writes an archive of `frames` (raw frame bytes, contiguous sequences) into `dir`,
/// atomically and durably. Returns the file written.
pub fn write(dir: &Path, frames: &[Vec<u8>]) -> Result<ArchiveFile> {
    let (mut first, mut last) = (None::<(u64, u64)>, None::<(u64, u64)>);
    let mut raw = Vec::with_capacity(frames.iter().map(Vec::len).sum());
    for f in frames {
        // The caller decoded these frames fully while scanning the segment; re-check the
        // header and checksum (cheap) rather than deserialise every event again.
        let h = frame::check_crc(f).map_err(|e| Error::Corrupted {
            file: dir.to_path_buf(),
            offset: 0,
            reason: format!("refusing to archive an invalid frame: {e}"),
        })?;
        if let Some((l, _)) = last {
            if h.first_seq != l + 1 {
                return Err(Error::InvalidBatch(format!(
                    "archive frames are not contiguous: {} follows {l}",
                    h.first_seq
                )));
            }
        }
        first.get_or_insert((h.first_seq, h.ts_us));
        last = Some((h.last_seq(), h.ts_us));
        raw.extend_from_slice(f);
    }
    let (Some((first_seq, first_ts)), Some((last_seq, last_ts))) = (first, last) else {
        return Err(Error::InvalidBatch(
            "an archive needs at least one frame".into(),
        ));
    };
    let body = zstd::bulk::compress(&raw, ZSTD_LEVEL).at(dir)?;
    let mut out = Vec::with_capacity(ARCHIVE_HEADER_LEN + body.len());
    out.extend_from_slice(&ARCHIVE_MAGIC);
    out.extend_from_slice(&ARCHIVE_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    for v in [
        first_seq,
        last_seq,
        first_ts,
        last_ts,
        body.len() as u64,
        raw.len() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let hcrc = crc32fast::hash(&out[..60]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&body);
    let path = dir.join(file_name(first_seq, last_seq, first_ts, last_ts));
    fsutil::write_atomic(&path, &out)?;
    Ok(ArchiveFile {
        path,
        first_seq,
        last_seq,
        first_ts_us: first_ts,
        last_ts_us: last_ts,
    })
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Decodes an archive held in memory; `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<(ArchiveFile, Vec<Envelope>)> {
    let corrupt = |offset: u64, reason: String| Error::Corrupted {
        file: path.to_path_buf(),
        offset,
        reason,
    };
    if bytes.len() < ARCHIVE_HEADER_LEN {
        return Err(corrupt(
            0,
            format!("{} bytes is shorter than the archive header", bytes.len()),
        ));
    }
    if bytes[0..4] != ARCHIVE_MAGIC {
        return Err(corrupt(0, "bad archive magic".into()));
    }
    let stored = u32_at(bytes, 60);
    let computed = crc32fast::hash(&bytes[..60]);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            file: path.to_path_buf(),
            offset: 60,
            expected: stored,
            got: computed,
        });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != ARCHIVE_FORMAT_VERSION {
        return Err(corrupt(
            4,
            format!("unsupported archive format version {version}"),
        ));
    }
    if u16::from_le_bytes([bytes[6], bytes[7]]) != 0 {
        return Err(corrupt(6, "unknown archive flags".into()));
    }
    let info = ArchiveFile {
        path: path.to_path_buf(),
        first_seq: u64_at(bytes, 8),
        last_seq: u64_at(bytes, 16),
        first_ts_us: u64_at(bytes, 24),
        last_ts_us: u64_at(bytes, 32),
    };
    let body_len = u64_at(bytes, 40);
    let raw_len = u64_at(bytes, 48);
    if body_len != (bytes.len() - ARCHIVE_HEADER_LEN) as u64 {
        return Err(corrupt(
            40,
            format!(
                "header declares {body_len} body bytes, file holds {}",
                bytes.len() - ARCHIVE_HEADER_LEN
            ),
        ));
    }
    if raw_len > MAX_ARCHIVE_RAW || info.last_seq < info.first_seq || info.first_seq == 0 {
        return Err(corrupt(8, "implausible archive header values".into()));
    }
    let body = &bytes[ARCHIVE_HEADER_LEN..];
    let stored = u32_at(bytes, 56);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(Error::ChecksumMismatch {
            file: path.to_path_buf(),
            offset: ARCHIVE_HEADER_LEN as u64,
            expected: stored,
            got: computed,
        });
    }
    let raw = zstd::bulk::decompress(body, raw_len as usize).map_err(|e| {
        corrupt(
            ARCHIVE_HEADER_LEN as u64,
            format!("zstd body failed to decompress: {e}"),
        )
    })?;
    if raw.len() as u64 != raw_len {
        return Err(corrupt(
            48,
            format!(
                "body decompressed to {} bytes, header says {raw_len}",
                raw.len()
            ),
        ));
    }
    let mut events = Vec::new();
    let mut at = 0usize;
    let mut expected = info.first_seq;
    while at < raw.len() {
        let bad = |e: frame::FrameError| {
            corrupt(
                ARCHIVE_HEADER_LEN as u64,
                format!("frame at decompressed body offset {at}: {e}"),
            )
        };
        let h = frame::decode_header(&raw[at..]).map_err(bad)?;
        let end = at + FRAME_HEADER_LEN + h.payload_len as usize;
        if end > raw.len() {
            return Err(corrupt(
                ARCHIVE_HEADER_LEN as u64,
                format!("frame at decompressed body offset {at} runs past the end of the body"),
            ));
        }
        let (_, evs) = frame::decode(&raw[at..end]).map_err(bad)?;
        if h.first_seq != expected {
            return Err(Error::Gap {
                file: path.to_path_buf(),
                expected,
                found: h.first_seq,
            });
        }
        expected = h.last_seq() + 1;
        events.extend(evs);
        at = end;
    }
    let ok_range = events.first().map(|e| (e.seq, e.ts_us))
        == Some((info.first_seq, info.first_ts_us))
        && events.last().map(|e| (e.seq, e.ts_us)) == Some((info.last_seq, info.last_ts_us));
    if !ok_range {
        return Err(corrupt(
            8,
            "archive contents do not match its header's sequence/time range".into(),
        ));
    }
    Ok((info, events))
}

/// Reads and validates one archive file.
pub fn read(path: &Path) -> Result<(ArchiveFile, Vec<Envelope>)> {
    let bytes = fs::read(path).at(path)?;
    let (info, events) = decode(path, &bytes)?;
    let named = path
        .file_name()
        .and_then(|n| parse_name(&n.to_string_lossy()));
    if named
        != Some([
            info.first_seq,
            info.last_seq,
            info.first_ts_us,
            info.last_ts_us,
        ])
    {
        return Err(Error::Corrupted {
            file: path.to_path_buf(),
            offset: 8,
            reason: "archive header does not match its file name".into(),
        });
    }
    Ok((info, events))
}
