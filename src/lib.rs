//! # magray-memory — an embedded, crash-safe memory store for AI agents
//!
//! An agent keeps what it sees and learns as records (text + embedding + metadata) in three
//! layers — [`Layer::Interact`], [`Layer::Insights`], [`Layer::Assets`] — and finds them again
//! by meaning. **The log is the truth**: every change is an event appended to a checksummed
//! write-ahead log ([`wal`]) and fsynced before the call returns; record tables, the HNSW
//! index (one graph over every layer) and access statistics are projections of it,
//! checkpointed into snapshots and rebuilt after a crash from the newest snapshot plus the
//! log after it.
//!
//! ```
//! use magray_memory::{Config, Layer, Memory, NewRecord, SearchOptions};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> magray_memory::Result<()> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let config = Config { dimension: 4, ..Config::default() };
//! let memory = Memory::open(dir.path(), config.clone()).await?;
//!
//! // Durable (fsynced) when it returns. Vectors are L2-normalised; scores are cosines.
//! let id = memory
//!     .insert(
//!         NewRecord::new("the build needs gcc for zstd", vec![0.9, 0.1, 0.0, 0.0])
//!             .layer(Layer::Assets)
//!             .tag("build")
//!             .project("magray"),
//!     )
//!     .await?;
//! memory.insert(NewRecord::new("lunch at noon", vec![0.0, 0.0, 1.0, 0.2])).await?;
//!
//! let hits = memory.search(&[1.0, 0.0, 0.0, 0.0], &SearchOptions::top_k(1)).await?;
//! assert_eq!(hits[0].id, id);
//! assert_eq!(hits[0].record.text, "the build needs gcc for zstd");
//!
//! memory.close().await?; // flushes access statistics, writes a snapshot
//! let memory = Memory::open(dir.path(), config).await?;
//! assert_eq!(memory.get(id).await?.layer, Layer::Assets);
//! # memory.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Guarantees (each pinned by a test in `tests/`):
//! * A call that returned is durable; nothing is visible to readers before it is durable.
//! * Projections recovered from snapshot + delta equal a full replay from sequence 1.
//! * Open replays only the log after the newest valid snapshot, and serves queries at once:
//!   records not yet in an HNSW graph are searched exactly, so a search never misses one.
//! * Bad input gets a typed [`Error`] and writes nothing; corruption is an error naming the
//!   file and offset; one writer process per store (`LOCK`).
//!
//! What a crash may lose: search/get access statistics buffered for at most
//! [`Config::access_flush_interval`] (1 s). Never a record, rating, delete or promotion.

pub use magray_wal as wal;

pub mod backup;
mod config;
mod disk;
pub mod embed;
mod engine;
mod error;
mod id;
mod index;
mod keyword;
pub mod lifecycle;
mod limits;
mod projection;
pub mod sim;
mod snapshot;
mod types;
mod util;
pub mod verify;

pub use config::{default_store_path, Config, HnswConfig, LifecycleConfig};
pub use disk::store_files::{StoreManifest, STORE_FORMAT_VERSION};
pub use embed::{Embedder, EmbedderConfig, EmbedderStats};
pub use engine::{EventStream, Memory, Stats};
pub use error::{Error, Result};
pub use lifecycle::{LifecycleReport, Promoter, TrainReport};
pub use magray_wal::{Envelope, Event, RecoveryMode};
pub use snapshot::SNAPSHOT_FORMAT_VERSION;
pub use types::{
    parse_layer, AccessStats, IndexStats, Layer, LayerStats, NewRecord, OpenReport, Record,
    RecordId, SearchHit, SearchMode, SearchOptions, DECAY_HALF_LIVES_US,
};
