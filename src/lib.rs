//! magray-memory (work in progress)
pub use magray_wal as wal;
mod config;
mod error;
mod memory;
mod snapshot;
mod state;
mod store_files;
mod types;
mod vectors;
pub use config::*;
pub use error::*;
pub use magray_wal::{Envelope, Event};
pub use memory::{EventStream, Memory};
pub use types::*;
