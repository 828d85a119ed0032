//! The okaywal implementation of [`LogBackend`].

use super::shared::Shared;
use super::{LogBackend, OutFrame};
use okaywal::{Configuration, Entry, EntryId, LogManager, SegmentReader, WriteAheadLog};
use std::io;
use std::io::Write;
use std::path::Path;
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
}

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
        Ok(OkayBackend { wal })
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
        entry.commit()?;
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
