//! Parser for okaywal segment files (format 0, documented in okaywal's README):
//!
//! ```text
//! header: b"okw" 0x00 | info_len u8 | version_info[info_len]
//! entry:  0x01 | entry_id u64 LE | chunk* | 0x03
//! chunk:  0x02 | len u32 LE | data[len] | crc32c(data) u32 LE
//! ```
//! A segment is preallocated and recycled without being cleared, so the valid prefix is
//! followed by zeros or by stale bytes of an earlier incarnation. okaywal itself accepts any
//! `0x01` followed by an id >= the file id as an entry, and stale rkyv payloads are full of
//! such bytes; we are stricter: our single writer never rolls an entry back (it poisons the
//! log instead), so entry ids inside a segment are consecutive, and anything else ends it.
//! Each chunk holds one of our frames; okaywal's crc32c and our frame checks are verified.

use crate::error::{Error, IoContext, Result};
use crate::event::Envelope;
use crate::frame::{self, FrameHeader};
use std::fs;
use std::path::{Path, PathBuf};

pub(crate) const NEW_ENTRY: u8 = 1;
pub(crate) const CHUNK: u8 = 2;
pub(crate) const END_OF_ENTRY: u8 = 3;
const ENTRY_HEADER_LEN: u64 = 9;

/// A complete, validated entry.
#[derive(Debug)]
pub(crate) struct ScannedEntry {
    pub entry_id: u64,
    pub offset: u64,
    pub end: u64,
    /// Frames in the entry: (file offset of the frame, header, events). The frame's bytes
    /// are `offset .. offset + FRAME_HEADER_LEN + header.payload_len`.
    pub frames: Vec<(u64, FrameHeader, Vec<Envelope>)>,
}

impl ScannedEntry {
    pub fn first_seq(&self) -> Option<u64> {
        self.frames.first().map(|f| f.1.first_seq)
    }
    pub fn last_seq(&self) -> Option<u64> {
        self.frames.last().map(|f| f.1.last_seq())
    }
}

/// The first bad spot in a segment.
#[derive(Debug)]
pub(crate) struct Problem {
    /// Offset of the entry that failed.
    pub entry_offset: u64,
    /// Where parsing of the bad entry stopped (its apparent extent).
    pub extent_end: u64,
    /// What failed, naming file and offset.
    pub error: Error,
    /// Whether a valid entry follows the bad one (then it is not a torn tail).
    pub followed_by_valid: bool,
}

/// Result of scanning one segment.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    pub entries: Vec<ScannedEntry>,
    /// End of the last valid entry: where okaywal resumes writing.
    pub valid_end: u64,
    pub problem: Option<Problem>,
}

enum Parse {
    /// No entry starts here (zeros, stale data, end of file).
    End,
    Complete(ScannedEntry),
    /// The entry is incomplete or fails a check.
    Bad {
        extent_end: u64,
        error: Error,
    },
}

/// Length of the okaywal segment header, or an error naming the file.
pub(crate) fn header_len(buf: &[u8], path: &Path, expected_info: &[u8]) -> Result<u64, Error> {
    if buf.len() < 5 || &buf[0..3] != b"okw" {
        return Err(Error::Corrupted {
            file: path.to_path_buf(),
            offset: 0,
            reason: "missing okaywal segment magic".into(),
        });
    }
    if buf[3] != 0 {
        return Err(Error::Corrupted {
            file: path.to_path_buf(),
            offset: 3,
            reason: format!("unsupported okaywal segment version {}", buf[3]),
        });
    }
    let info_len = buf[4] as usize;
    if buf.len() < 5 + info_len {
        return Err(Error::Corrupted {
            file: path.to_path_buf(),
            offset: 4,
            reason: "segment header truncated".into(),
        });
    }
    let info = &buf[5..5 + info_len];
    if info != expected_info {
        return Err(Error::Corrupted {
            file: path.to_path_buf(),
            offset: 5,
            reason: format!(
                "segment was written with format {:?}, this build reads {:?}",
                String::from_utf8_lossy(info),
                String::from_utf8_lossy(expected_info)
            ),
        });
    }
    Ok(5 + info_len as u64)
}

/// Parses the entry at `pos`. `expected_id` is the id it must carry (the previous id + 1),
/// None for a segment's first entry (which must carry at least `file_id`).
fn parse_entry(buf: &[u8], pos: u64, file_id: u64, expected_id: Option<u64>, path: &Path) -> Parse {
    let len = buf.len() as u64;
    let p0 = pos as usize;
    if pos >= len || buf[p0] != NEW_ENTRY {
        return Parse::End;
    }
    let bad = |extent_end: u64, offset: u64, reason: String| Parse::Bad {
        extent_end,
        error: Error::Corrupted {
            file: path.to_path_buf(),
            offset,
            reason,
        },
    };
    if pos + ENTRY_HEADER_LEN > len {
        return bad(len, pos, "entry header cut short (torn write)".into());
    }
    let mut id_bytes = [0u8; 8];
    id_bytes.copy_from_slice(&buf[p0 + 1..p0 + 9]);
    let entry_id = u64::from_le_bytes(id_bytes);
    let plausible = match expected_id {
        Some(want) => entry_id == want,
        None => entry_id >= file_id,
    };
    if !plausible {
        // Stale bytes from an earlier use of this recycled file.
        return Parse::End;
    }
    let mut p = pos + ENTRY_HEADER_LEN;
    let mut frames = Vec::new();
    loop {
        if p >= len {
            return bad(len, p, "entry has no end marker (torn write)".into());
        }
        match buf[p as usize] {
            CHUNK => {
                if p + 5 > len {
                    return bad(len, p, "chunk header cut short (torn write)".into());
                }
                let mut lb = [0u8; 4];
                lb.copy_from_slice(&buf[p as usize + 1..p as usize + 5]);
                let clen = u64::from(u32::from_le_bytes(lb));
                let data_at = p + 5;
                if data_at + clen + 4 > len {
                    return bad(
                        len,
                        p,
                        format!("chunk of {clen} bytes runs past the end of the file (torn write)"),
                    );
                }
                let data = &buf[data_at as usize..(data_at + clen) as usize];
                let mut cb = [0u8; 4];
                cb.copy_from_slice(&buf[(data_at + clen) as usize..(data_at + clen + 4) as usize]);
                let stored = u32::from_le_bytes(cb);
                let computed = crc32c::crc32c(data);
                let end = data_at + clen + 4;
                if stored != computed {
                    return Parse::Bad {
                        extent_end: end,
                        error: Error::ChecksumMismatch {
                            file: path.to_path_buf(),
                            offset: data_at,
                            expected: stored,
                            got: computed,
                        },
                    };
                }
                match frame::decode(data) {
                    Ok((h, events)) => frames.push((data_at, h, events)),
                    Err(e) => {
                        return Parse::Bad {
                            extent_end: end,
                            error: Error::from_frame(path, data_at, e),
                        }
                    }
                }
                p = end;
            }
            END_OF_ENTRY => {
                return Parse::Complete(ScannedEntry {
                    entry_id,
                    offset: pos,
                    end: p + 1,
                    frames,
                })
            }
            other => {
                return bad(
                    p + 1,
                    p,
                    format!(
                    "unexpected byte {other:#04x} inside entry {entry_id} (aborted or torn write)"
                ),
                )
            }
        }
    }
}

/// Scans a whole segment held in `buf`. `expected_seq` is the sequence the first event must
/// carry (None when unknown); sequence continuity inside the segment is checked.
pub(crate) fn scan(
    buf: &[u8],
    path: &Path,
    file_id: u64,
    expected_info: &[u8],
    mut expected_seq: Option<u64>,
) -> Result<SegmentScan, Error> {
    let mut pos = header_len(buf, path, expected_info)?;
    let mut entries: Vec<ScannedEntry> = Vec::new();
    let mut expected_id: Option<u64> = None;
    loop {
        let done = |entries, problem| {
            Ok(SegmentScan {
                entries,
                valid_end: pos,
                problem,
            })
        };
        match parse_entry(buf, pos, file_id, expected_id, path) {
            Parse::End => {
                // A damaged entry header also looks like the end: it is only the end if no
                // valid entry follows.
                let min_id = expected_id.unwrap_or(file_id);
                if valid_entry_after(buf, pos, file_id, min_id, path) {
                    let problem = Problem {
                        entry_offset: pos,
                        extent_end: pos + 1,
                        error: Error::Corrupted {
                            file: path.to_path_buf(),
                            offset: pos,
                            reason: format!(
                                "expected the header of entry {min_id} here, found {:#04x}; valid entries follow",
                                buf.get(pos as usize).copied().unwrap_or(0)
                            ),
                        },
                        followed_by_valid: true,
                    };
                    return done(entries, Some(problem));
                }
                return done(entries, None);
            }
            Parse::Complete(entry) => {
                if let (Some(want), Some(first)) = (expected_seq, entry.first_seq()) {
                    if first != want {
                        let problem = Problem {
                            entry_offset: pos,
                            extent_end: entry.end,
                            error: Error::Gap {
                                file: path.to_path_buf(),
                                expected: want,
                                found: first,
                            },
                            followed_by_valid: true,
                        };
                        return done(entries, Some(problem));
                    }
                }
                for w in entry.frames.windows(2) {
                    if w[1].1.first_seq != w[0].1.last_seq() + 1 {
                        return Err(Error::Gap {
                            file: path.to_path_buf(),
                            expected: w[0].1.last_seq() + 1,
                            found: w[1].1.first_seq,
                        });
                    }
                }
                if let Some(last) = entry.last_seq() {
                    expected_seq = Some(last + 1);
                }
                expected_id = Some(entry.entry_id + 1);
                pos = entry.end;
                entries.push(entry);
            }
            Parse::Bad { extent_end, error } => {
                let min_id = expected_id.unwrap_or(file_id);
                let followed_by_valid = valid_entry_after(buf, pos + 1, file_id, min_id, path);
                return done(
                    entries,
                    Some(Problem {
                        entry_offset: pos,
                        extent_end,
                        error,
                        followed_by_valid,
                    }),
                );
            }
        }
    }
}

/// Is there any complete, valid entry starting after `from`? Distinguishes a torn tail
/// (nothing valid follows) from corruption in the middle of the log.
fn valid_entry_after(buf: &[u8], from: u64, file_id: u64, min_id: u64, path: &Path) -> bool {
    // Ids are consecutive; a damaged stretch can hide a bounded number of entries.
    let max_id = min_id.saturating_add(1 << 24);
    let mut q = from as usize;
    let mut candidates = 0u32;
    while q < buf.len() && candidates < 100_000 {
        match buf[q..].iter().position(|&b| b == NEW_ENTRY) {
            None => return false,
            Some(i) => q += i,
        }
        if q + 9 <= buf.len() {
            let mut id_bytes = [0u8; 8];
            id_bytes.copy_from_slice(&buf[q + 1..q + 9]);
            let id = u64::from_le_bytes(id_bytes);
            if id >= min_id && id <= max_id {
                candidates += 1;
                if let Parse::Complete(e) = parse_entry(buf, q as u64, file_id, Some(id), path) {
                    if !e.frames.is_empty() {
                        return true;
                    }
                }
            }
        }
        q += 1;
    }
    false
}

/// Parses the numeric id of a live segment file name (`wal-N`); None for others
/// (including checkpointed `wal-N-cp`).
pub(crate) fn live_segment_id(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("wal-")?;
    if rest.bytes().all(|b| b.is_ascii_digit()) && !rest.is_empty() {
        rest.parse().ok()
    } else {
        None
    }
}

/// The live segments in `wal_dir`, by id.
pub(crate) fn list_live_segments(wal_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(wal_dir).at(wal_dir)? {
        let entry = entry.at(wal_dir)?;
        if let Some(id) = live_segment_id(&entry.file_name().to_string_lossy()) {
            out.push((id, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}
