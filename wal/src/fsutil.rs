//! Atomic file writes: temp name, fsync file, rename, fsync directory.

use crate::error::{IoContext, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

/// Prefix of temp files; anything starting with it is a leftover of an interrupted write.
pub const TEMP_PREFIX: &str = ".tmp-";

/// fsyncs a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    sync_dir(dir)
}

/// Removes leftover temp files (and temp directories) in `dir`; returns how many.
pub fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(crate::Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let p = entry.path();
            if p.is_dir() {
                fs::remove_dir_all(&p).at(&p)?;
            } else {
                fs::remove_file(&p).at(&p)?;
            }
            tracing::info!(path = %p.display(), "removed leftover temp file from an interrupted write");
            removed += 1;
        }
    }
    if removed > 0 {
        sync_dir(dir)?;
    }
    Ok(removed)
}
