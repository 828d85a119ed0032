//! Errors of the event log. Corruption has structured variants naming file and offset;
//! it is never folded into `Io`.

use std::path::PathBuf;

/// Result alias for the log.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the event log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O error on a named file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Bytes on disk failed validation.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corrupted {
        /// The file.
        file: PathBuf,
        /// Byte offset in the file where the bad data starts.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A stored checksum did not match the data.
    #[error("checksum mismatch in {file} at offset {offset}: stored {expected:#010x}, computed {got:#010x}")]
    ChecksumMismatch {
        /// The file.
        file: PathBuf,
        /// Byte offset of the checksummed data.
        offset: u64,
        /// Checksum stored on disk.
        expected: u32,
        /// Checksum computed from the data.
        got: u32,
    },
    /// Another handle (in this process or another) holds the store's lock.
    #[error("store {path} is locked by {holder}; close that process first (one writer per store)")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as written in the lock file ("pid 1234" when known).
        holder: String,
    },
    /// An earlier write or fsync failed; the log refuses all further writes.
    #[error("the event log is poisoned by an earlier failure and accepts no more writes: {reason}. Nothing acknowledged was lost; close the store and reopen it (recovery re-reads the log from disk)")]
    Poisoned {
        /// The failure that poisoned the log.
        reason: String,
    },
    /// History is not contiguous.
    #[error("history gap in {file}: expected sequence {expected}, found {found}")]
    Gap {
        /// Where the gap was seen.
        file: PathBuf,
        /// Sequence expected next.
        expected: u64,
        /// Sequence found.
        found: u64,
    },
    /// Asked for history that retention removed (or that never existed).
    #[error("sequence {seq} is not available: the history kept here starts at sequence {first_available}")]
    NotAvailable {
        /// Requested sequence.
        seq: u64,
        /// Oldest sequence on disk.
        first_available: u64,
    },
    /// A configuration value is invalid.
    #[error("invalid log configuration: {0}")]
    Config(String),
    /// A batch was rejected before being written.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// The log was closed.
    #[error("the event log is closed")]
    Closed,
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// True for errors that mean bytes on disk are bad.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupted { .. } | Error::ChecksumMismatch { .. } | Error::Gap { .. }
        )
    }
}

/// Extension to attach a path to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
