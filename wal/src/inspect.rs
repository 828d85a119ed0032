//! Read-only views of on-disk structures, for tests, fuzzing and `verify`.

use crate::backend::segment;
use crate::error::{IoContext, Result};
use crate::frame::version_info;
use std::path::Path;

/// One complete entry of a live segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySpan {
    /// okaywal entry id.
    pub entry_id: u64,
    /// Byte offset where the entry starts.
    pub start: u64,
    /// Byte offset just past the entry.
    pub end: u64,
    /// First and last event sequence inside.
    pub seqs: Option<(u64, u64)>,
}

/// Lists the valid entries of the live segment at `path` (file name `wal-N`), and the error
/// for the first bad spot if there is one.
pub fn segment_entries(path: &Path) -> Result<(Vec<EntrySpan>, Option<crate::Error>)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let id = segment::live_segment_id(&name).unwrap_or(0);
    let bytes = std::fs::read(path).at(path)?;
    let scan = segment::scan(&bytes, path, id, &version_info(), None)?;
    let spans = scan
        .entries
        .iter()
        .map(|e| EntrySpan {
            entry_id: e.entry_id,
            start: e.offset,
            end: e.end,
            seqs: e.first_seq().zip(e.last_seq()),
        })
        .collect();
    Ok((spans, scan.problem.map(|p| p.error)))
}

/// Scans arbitrary bytes as a segment file; never panics (for fuzzing).
pub fn scan_segment_bytes(bytes: &[u8]) -> Result<usize> {
    let scan = segment::scan(bytes, Path::new("fuzz"), 1, &version_info(), None)?;
    Ok(scan.entries.len())
}

/// The `version_info` stamped into okaywal segment headers.
pub fn segment_version_info() -> Vec<u8> {
    version_info()
}
