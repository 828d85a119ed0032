//! Engine errors. Every variant says what failed and, where it helps, what to do.

use crate::id::RecordId;
use std::path::PathBuf;

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can refuse or fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vector has the wrong number of dimensions for this store.
    #[error("embedding has {got} dimensions; this store holds {expected}-dimensional vectors")]
    DimensionMismatch {
        /// The store's dimension.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A vector contains NaN or ±inf.
    #[error("embedding component {index} is {value}; every component must be finite")]
    NonFiniteVector {
        /// Position of the first bad component.
        index: usize,
        /// The bad value.
        value: f32,
    },
    /// A vector of length zero cannot be normalised for cosine similarity.
    #[error("embedding has zero length; cosine similarity needs a non-zero vector")]
    ZeroVector,
    /// Empty (or whitespace-only) text.
    #[error("record text is empty")]
    EmptyText,
    /// Text above the configured limit.
    #[error("record text is {len} bytes, above the {limit}-byte limit (Config::max_text_bytes)")]
    TextTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// `top_k` outside `1..=100`.
    #[error("top_k is {0}; it must be between 1 and 100")]
    InvalidTopK(usize),
    /// A layer name that is not interact, insights or assets.
    #[error("{0}")]
    UnknownLayer(String),
    /// No live record has this id.
    #[error("no record with id {0}")]
    NotFound(RecordId),
    /// A rating outside `0.0..=1.0`.
    #[error("rating {0} is outside 0.0..=1.0")]
    InvalidRating(f32),
    /// Any other invalid argument.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A configuration value (from code or the environment) is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Another handle (in this process or another) holds the store's lock.
    #[error("store {path} is locked by {holder}; close that process first (one writer per store)")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it, as written in the lock file ("pid 1234" when known).
        holder: String,
    },
    /// The store was created with different settings (dimension, model).
    #[error("store {path} was created with {what} {stored}, but {given} was asked for")]
    StoreMismatch {
        /// The store's MANIFEST.
        path: PathBuf,
        /// Which setting.
        what: &'static str,
        /// What the store holds.
        stored: String,
        /// What the caller configured.
        given: String,
    },
    /// An on-disk structure failed validation.
    #[error("corrupted {file} at offset {offset}: {reason}")]
    Corrupted {
        /// The file.
        file: PathBuf,
        /// Byte offset of the problem.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file-system operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The event log refused or failed.
    #[error(transparent)]
    Log(#[from] magray_wal::Error),
    /// A subscriber fell behind the bounded buffer; resubscribe from `resume_from`.
    #[error("subscriber lagged behind; resubscribe from sequence {resume_from}")]
    Lagged {
        /// The first sequence it did not receive.
        resume_from: u64,
    },
    /// A background task failed; the handle refuses further work.
    #[error("the engine stopped after a background failure: {0}")]
    Poisoned(String),
    /// The embedder (ONNX Runtime, tokenizer or model) failed.
    #[error("embedder: {0}")]
    Embedder(String),
    /// The handle is closed.
    #[error("the store is closed")]
    Closed,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupted(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corrupted {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True for errors caused by the caller's input (nothing was written).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::DimensionMismatch { .. }
                | Error::NonFiniteVector { .. }
                | Error::ZeroVector
                | Error::EmptyText
                | Error::TextTooLong { .. }
                | Error::InvalidTopK(_)
                | Error::UnknownLayer(_)
                | Error::NotFound(_)
                | Error::InvalidRating(_)
                | Error::InvalidInput(_)
        )
    }
}

// Beside the error type, so that `id` stays below `error`.
impl std::str::FromStr for RecordId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        uuid::Uuid::parse_str(s)
            .map(|u| RecordId(*u.as_bytes()))
            .map_err(|e| Error::InvalidInput(format!("{s:?} is not a record id (a UUID): {e}")))
    }
}
