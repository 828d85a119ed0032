//! The okaywal implementation of [`LogBackend`].

use super::shared::Shared;
use super::{LogBackend, OutFrame};
use okaywal::{Configuration, Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};
use std::io;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// okaywal's callbacks: recovery re-reads each entry (our own scan validated and repaired
/// the segments before okaywal opened them); checkpointing archives the segment.
#[derive(Debug)]
struct Archiver {
    shared: Arc<Shared>,
}

impl LogManager for Archiver {
    fn recover(&mut self, entry: &mut Entry<'_>) -> io::Result<()> {
        // Every chunk must be read to the end, crc included. If a chunk is left for okaywal
        // to skip, okaywal 0.3.1 skips its 4-byte crc twice (`skip_remaining_bytes` and then
        // `Drop`), computes a wrong end of the valid data, and the next append overwrites
        // the last acknowledged entry. Pinned by the test
        // `reopen_then_append_never_overwrites_acknowledged_entries`.
        match entry.read_all_chunks()? {
            Some(_) => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "okaywal found an aborted entry that recovery had not repaired",
            )),
        }
    }

    fn checkpoint_to(
        &mut self,
        last_checkpointed_id: EntryId,
        _checkpointed_entries: &mut SegmentReader,
        _wal: &WriteAheadLog,
    ) -> io::Result<()> {
        match self.shared.archive_segment(last_checkpointed_id.0) {
            Ok(()) => Ok(()),
            Err(e) => {
                // okaywal's checkpoint thread stops on error; poison so writers learn of it.
                let reason = format!("archiving a checkpointed log segment failed: {e}");
                self.shared.fail(reason.clone());
                Err(io::Error::other(reason))
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct OkayBackend {
    wal: WriteAheadLog,
    /// `wal/`, synced before the first entry of a segment is acknowledged (see `append`).
    dir: PathBuf,
}

/// Tests: directory syncs `append` made for the first entry of a segment.
#[cfg(test)]
pub(crate) static SEGMENT_DIR_SYNCS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

impl OkayBackend {
    pub fn open(dir: &Path, segment_bytes: u32, shared: Arc<Shared>) -> io::Result<Self> {
        let config = Configuration::default_for(dir)
            .preallocate_bytes(segment_bytes)
            .checkpoint_after_bytes(u64::from(segment_bytes) / 4 * 3)
            // One write(2) for a whole group-commit round in the common case.
            .buffer_bytes(1 << 20);
        let config = Configuration {
            version_info: Arc::new(shared.version_info.clone()),
            ..config
        };
        let wal = config.open(Archiver { shared })?;
        Ok(OkayBackend {
            wal,
            dir: dir.to_path_buf(),
        })
    }
}

impl LogBackend for OkayBackend {
    fn append(&self, frames: &[OutFrame<'_>]) -> io::Result<()> {
        let mut entry = self.wal.begin_entry()?;
        for f in frames {
            let len = u32::try_from(f.header.len() + f.payload.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
            let mut chunk = entry.begin_chunk(len)?;
            chunk.write_all(&f.header)?;
            chunk.write_all(f.payload)?;
            chunk.finish()?;
        }
        let id = entry.commit()?;
        // The first entry of a segment names it: okaywal's `activate_new_file` opens
        // `wal-<id>`, and reuses a checkpointed segment by renaming `wal-<old>-cp` to it. It
        // does not make that rename durable (its own directory sync skips a reused file), so
        // after a power cut the file could come back as `wal-<old>-cp`, which recovery takes
        // for a free segment: the log would end early and acknowledged entries be gone. So
        // `wal/` is synced before this entry is acknowledged (once a segment: a stat per append
        // finds out). The segment is also made owner-only then, like every file of the store
        // (okaywal creates its files with the process umask's mode).
        let segment = self.dir.join(format!("wal-{}", id.0));
        if segment.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                &segment,
                std::fs::Permissions::from_mode(crate::fsutil::FILE_MODE),
            )?;
            crate::fsutil::sync_dir(&self.dir).map_err(|e| io::Error::other(e.to_string()))?;
            #[cfg(test)]
            SEGMENT_DIR_SYNCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    fn checkpoint_active(&self) -> io::Result<()> {
        self.wal.checkpoint_active()
    }

    fn shutdown(&self) -> io::Result<()> {
        // okaywal's shutdown stops and joins its checkpoint thread; a clone is enough.
        self.wal.clone().shutdown()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::SEGMENT_DIR_SYNCS;
    use crate::{Event, Inserted, Layer, Log, LogConfig};
    use std::collections::BTreeSet;
    use std::sync::atomic::Ordering;

    fn live_names(dir: &std::path::Path) -> BTreeSet<String> {
        std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("wal-") && !n.ends_with("-cp"))
            .collect()
    }

    /// The append whose entry is the first in a segment (okaywal opens the next segment when
    /// one fills, named after the entry that will start it; reused segments included) syncs
    /// `wal/` before it returns: the rename okaywal leaves unsynced is durable before the
    /// caller is told.
    #[test]
    fn an_append_that_starts_a_segment_syncs_the_directory_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = LogConfig::new(dir.path());
        c.segment_bytes = 64 << 10;
        let log = Log::open(c).unwrap();
        let (mut starts, mut reused) = (0, 0);
        // A segment that appeared and whose first entry is not yet acknowledged.
        let mut awaiting: Option<String> = None;
        for i in 0..400u32 {
            let before = live_names(dir.path());
            let had_cp = std::fs::read_dir(dir.path().join("wal"))
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().ends_with("-cp"));
            let synced = SEGMENT_DIR_SYNCS.load(Ordering::Relaxed);
            log.append(vec![Event::Inserted(Inserted {
                id: [(i % 251) as u8; 16],
                layer: Layer::Assets,
                kind: "note".into(),
                text: format!("{i}:{}", "x".repeat(2000)),
                embedding: vec![1.0, 0.0],
                tags: vec![],
                project: None,
                session: None,
                refs: vec![],
                content_hash: u64::from(i),
                ts_us: 0,
            })])
            .unwrap();
            let did_sync = SEGMENT_DIR_SYNCS.load(Ordering::Relaxed) > synced;
            if let Some(name) = awaiting.take() {
                assert!(
                    did_sync,
                    "the first entry of {name} was acknowledged before wal/ was synced"
                );
            }
            if let Some(new) = live_names(dir.path()).difference(&before).next() {
                starts += 1;
                reused += usize::from(had_cp);
                if !did_sync {
                    awaiting = Some(new.clone());
                }
            }
        }
        log.close().unwrap();
        assert!(starts >= 2, "the test never rotated a segment");
        assert!(reused >= 1, "the test never reused a checkpointed segment");
    }
}
