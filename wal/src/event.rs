//! The event vocabulary of magray-memory. Every change to the store is one of these,
//! appended to the log before anyone is told it happened.
//!
//! Encoding is rkyv 0.8 with frozen format features (little-endian, aligned, 32-bit
//! relative pointers: see the workspace `Cargo.toml`). Changing any type here changes the
//! on-disk format: bump [`EVENT_FORMAT_VERSION`] and add a line to its changelog.

use rkyv::{Archive, Deserialize, Serialize};

/// Version of the event payload encoding.
///
/// Changelog:
/// - 1: initial format (Inserted, Accessed, Rated, Promoted, Expired, Deleted, Superseded,
///   Checkpointed).
pub const EVENT_FORMAT_VERSION: u16 = 1;

/// A record id: the 16 bytes of a UUID.
pub type Id = [u8; 16];

/// The memory layer a record lives in.
#[derive(
    Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum Layer {
    /// Session context: messages, temporary notes (default TTL 24 h).
    Interact = 0,
    /// Distilled knowledge: patterns, summaries (default TTL 90 d).
    Insights = 1,
    /// Permanent: code docs, references.
    Assets = 2,
}

impl Layer {
    /// All layers, lowest first.
    pub const ALL: [Layer; 3] = [Layer::Interact, Layer::Insights, Layer::Assets];

    /// Index of the layer (0, 1, 2), stable across versions.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name used in configs, the CLI and file names.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Interact => "interact",
            Layer::Insights => "insights",
            Layer::Assets => "assets",
        }
    }

    /// The next layer up, if any.
    pub fn next(self) -> Option<Layer> {
        match self {
            Layer::Interact => Some(Layer::Insights),
            Layer::Insights => Some(Layer::Assets),
            Layer::Assets => None,
        }
    }
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Layer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "interact" => Ok(Layer::Interact),
            "insights" => Ok(Layer::Insights),
            "assets" => Ok(Layer::Assets),
            other => Err(format!(
                "unknown layer {other:?}; expected one of interact, insights, assets"
            )),
        }
    }
}

/// A new record entering the store.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Inserted {
    /// Record id.
    pub id: Id,
    /// Layer it is inserted into.
    pub layer: Layer,
    /// Free-form kind ("message", "note", "code", ...).
    pub kind: String,
    /// The text.
    pub text: String,
    /// Its embedding (dimension fixed per store).
    pub embedding: Vec<f32>,
    /// Tags.
    pub tags: Vec<String>,
    /// Project it belongs to, if any.
    pub project: Option<String>,
    /// Session that produced it, if any.
    pub session: Option<String>,
    /// Records this one refers to.
    pub refs: Vec<Id>,
    /// Hash of the text, used for idempotent inserts.
    pub content_hash: u64,
    /// The record's own timestamp (µs since the Unix epoch, UTC); an import may carry an older one.
    pub ts_us: u64,
}

/// Why a record was read.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum AccessSource {
    /// Returned by a search.
    SearchHit = 0,
    /// Fetched by id.
    Get = 1,
    /// Marked as used by the agent.
    Explicit = 2,
}

/// One record that was accessed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hit {
    /// Record id.
    pub id: Id,
    /// Rank in the result list (0 = top), 0 for non-search accesses.
    pub rank: u16,
    /// Similarity score, 0 for non-search accesses.
    pub score: f32,
}

/// A batch of accesses.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Accessed {
    /// How the records were reached.
    pub source: AccessSource,
    /// Session of the caller, if known.
    pub session: Option<String>,
    /// Project of the caller, if known.
    pub project: Option<String>,
    /// The records, in rank order for search hits.
    pub hits: Vec<Hit>,
}

/// One promotion decision.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Promotion {
    /// Record id.
    pub id: Id,
    /// Layer it leaves.
    pub from: Layer,
    /// Layer it enters.
    pub to: Layer,
    /// Score the promoter gave it.
    pub score: f32,
    /// Version of the model that decided.
    pub model_version: u32,
}

/// Why records expired.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum ExpiryReason {
    /// Older than the layer's TTL.
    Ttl = 0,
    /// Evicted to keep the layer under its capacity.
    Capacity = 1,
    /// Expired on request.
    Manual = 2,
}

/// A change to the store. Decisions (promotions, expiries) are recorded, never re-decided.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Event {
    /// A record was inserted.
    Inserted(Inserted),
    /// Records were accessed.
    Accessed(Accessed),
    /// The user rated a record.
    Rated {
        /// Record id.
        id: Id,
        /// Rating (the engine validates the range).
        rating: f32,
    },
    /// Records moved up a layer (one atomic batch).
    Promoted(Vec<Promotion>),
    /// Records expired.
    Expired {
        /// Record ids.
        ids: Vec<Id>,
        /// Why.
        reason: ExpiryReason,
    },
    /// A record was deleted.
    Deleted {
        /// Record id.
        id: Id,
    },
    /// A record was replaced by a newer one (inserted in the same batch).
    Superseded {
        /// The old record.
        old: Id,
        /// The record that replaces it.
        new: Id,
    },
    /// A snapshot of all projections at `snapshot_seq` is durable.
    Checkpointed {
        /// Sequence the snapshot covers.
        snapshot_seq: u64,
    },
}

impl Event {
    /// Short lower-case name of the event type (for `log` filters and reports).
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Inserted(_) => "inserted",
            Event::Accessed(_) => "accessed",
            Event::Rated { .. } => "rated",
            Event::Promoted(_) => "promoted",
            Event::Expired { .. } => "expired",
            Event::Deleted { .. } => "deleted",
            Event::Superseded { .. } => "superseded",
            Event::Checkpointed { .. } => "checkpointed",
        }
    }
}

/// An event with its place in history. On disk, sequence and timestamp are carried by the
/// frame header (base sequence + index), not repeated per event.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Sequence number: gap-free and monotonic across restarts, starting at 1.
    pub seq: u64,
    /// Commit timestamp, µs since the Unix epoch (UTC); non-decreasing with `seq`.
    pub ts_us: u64,
    /// The change.
    pub event: Event,
}

/// What one frame's payload holds: one caller's atomic batch.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Batch {
    pub(crate) events: Vec<Event>,
}
