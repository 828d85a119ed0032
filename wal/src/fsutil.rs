//! Durable file-system steps: atomic file writes (temp name, fsync file, rename, fsync
//! directory), directories whose names survive a power cut, and owner-only creation (an
//! agent's memory holds private conversations: files 0600, directories 0700).

use crate::error::{IoContext, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of every file the store creates: owner read/write only.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the store creates: owner only.
pub const DIR_MODE: u32 = 0o700;

/// Creates (or truncates) `path` for writing, owner-only ([`FILE_MODE`]) when new.
pub fn create_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates `dir` and any missing ancestors, owner-only ([`DIR_MODE`]), and fsyncs the parent
/// of each one it created, so that the new names survive a power cut (a directory entry is
/// durable only once its parent directory is synced). Existing directories are left alone.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = dir;
    loop {
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(crate::Error::io(
                    p,
                    std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not a directory"),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(crate::Error::io(p, e)),
        }
        match p.parent() {
            Some(q) if !q.as_os_str().is_empty() => p = q,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(DIR_MODE).create(d) {
            Ok(()) => {}
            // Another opener made it meanwhile: its parent still needs the sync below.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(crate::Error::io(d, e)),
        }
        let parent = match d.parent() {
            Some(q) if !q.as_os_str().is_empty() => q,
            _ => Path::new("."),
        };
        sync_dir(parent)?;
    }
    Ok(())
}

/// Prefix of temp files; anything starting with it is a leftover of an interrupted write.
pub const TEMP_PREFIX: &str = ".tmp-";

/// fsyncs a directory so renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| sync_file(&d, dir)).at(dir)
}

/// fsyncs `f`, opened from `path`. Every fsync of our own files (archive, snapshots, vector
/// chunks, backups, recovery truncations) goes through here, so a build with the
/// `fault-injection` feature can make chosen ones fail ([`fault`]); okaywal fsyncs its
/// segments itself (the log's own fault tests use a failing backend instead).
pub fn sync_file(f: &File, path: &Path) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    fault::check(path)?;
    #[cfg(not(feature = "fault-injection"))]
    let _ = path;
    f.sync_all()
}

/// Test-only fsync faults (feature `fault-injection`, enabled by the chaos crate): the next N
/// fsyncs of a path containing a pattern fail with EIO, the way a failing disk reports them.
/// The plan is process-wide: a test binary that arms it runs a single test, or patterns that
/// only its own directory's paths contain.
#[cfg(feature = "fault-injection")]
pub mod fault {
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    static PLAN: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
    static INJECTED: AtomicU64 = AtomicU64::new(0);

    /// Makes the next `times` fsyncs of a path containing `pattern` fail with EIO.
    pub fn fail_fsync(pattern: &str, times: u32) {
        if times == 0 {
            return;
        }
        let mut plan = PLAN.lock().unwrap_or_else(|p| p.into_inner());
        plan.push((pattern.to_string(), times));
    }

    /// Disarms every pattern.
    pub fn clear() {
        PLAN.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// fsync failures injected so far in this process.
    pub fn injected() -> u64 {
        INJECTED.load(Ordering::Acquire)
    }

    pub(super) fn check(path: &Path) -> std::io::Result<()> {
        let p = path.to_string_lossy();
        let mut plan = PLAN.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = plan.iter().position(|(pat, _)| p.contains(pat.as_str())) {
            plan[i].1 -= 1;
            if plan[i].1 == 0 {
                plan.remove(i);
            }
            INJECTED.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(path = %p, "injected EIO from fsync (fault-injection)");
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
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
        let mut f = create_file(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        sync_file(&f, &tmp).at(&tmp)?;
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
