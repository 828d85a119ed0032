//! The storage backend under the log, kept behind a small trait because okaywal's on-disk
//! format is marked unstable upstream and we may need to replace it.

pub(crate) mod faulty;
pub(crate) mod okay;
pub(crate) mod segment;
pub(crate) mod shared;

/// What the log needs from the segment store underneath it.
pub(crate) trait LogBackend: Send + Sync + std::fmt::Debug {
    /// Appends one atomic entry made of `frames` (one chunk each: header then payload).
    /// Returns only once the entry is durable (fsync). Any error is final: the caller
    /// poisons the log.
    fn append(&self, frames: &[OutFrame<'_>]) -> std::io::Result<()>;
    /// Hands the active segment to the archiver now (regardless of its size).
    fn checkpoint_active(&self) -> std::io::Result<()>;
    /// Waits for background checkpointing to finish and releases the files.
    fn shutdown(&self) -> std::io::Result<()>;
}

/// A frame on its way to disk, in two pieces so the payload is never copied to join them.
#[derive(Debug)]
pub(crate) struct OutFrame<'a> {
    pub header: [u8; crate::frame::FRAME_HEADER_LEN],
    pub payload: &'a [u8],
}
