//! The storage backend under the log, kept behind a small trait because okaywal's on-disk
//! format is marked unstable upstream and we may need to replace it.

pub(crate) mod faulty;
pub(crate) mod okay;
pub(crate) mod segment;
pub(crate) mod shared;

/// What the log needs from the segment store underneath it.
pub(crate) trait LogBackend: Send + Sync + std::fmt::Debug {
    /// Appends one atomic entry made of `chunks` (our frames). Returns only once the entry
    /// is durable (fsync). Any error is final: the caller poisons the log.
    fn append(&self, chunks: &[Vec<u8>]) -> std::io::Result<()>;
    /// Hands the active segment to the archiver now (regardless of its size).
    fn checkpoint_active(&self) -> std::io::Result<()>;
    /// Waits for background checkpointing to finish and releases the files.
    fn shutdown(&self) -> std::io::Result<()>;
}
