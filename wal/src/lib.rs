//! # magray-wal — the event log of magray-memory
//!
//! Everything in magray-memory is a projection of this one append-only log.
//!
//! * [`Event`]s are rkyv-encoded and grouped into frames (one caller's atomic batch per
//!   frame) with a checksummed header ([`frame`]); frames are stored as chunks of okaywal
//!   entries, behind a small backend trait.
//! * [`Log::append`] / [`Log::append_async`] are group-committed by one writer thread: one
//!   fsync covers every caller queued at the time; a call returns after the fsync covering it.
//!   A failed write or fsync poisons the log ([`Error::Poisoned`]); nothing is retried.
//! * [`Log::open`] validates every live segment first: a torn tail is truncated and reported
//!   ([`RecoveryReport::torn_tail`]); a checksum failure elsewhere is an error naming the file
//!   and offset, unless [`RecoveryMode::Salvage`] is asked for.
//! * When okaywal checkpoints a segment, its entries are first copied to `archive/`
//!   ([`archive`]), so [`History`] can read every event ever written, from sequence 1, and
//!   stop at a sequence or a timestamp (point-in-time restore).
//!
//! ```
//! use magray_wal::{Event, Log, LogConfig};
//! let dir = tempfile::tempdir().unwrap();
//! let log = Log::open(LogConfig::new(dir.path())).unwrap();
//! let at = log.append(vec![Event::Deleted { id: [7; 16] }]).unwrap();
//! assert_eq!((at.first_seq, at.last_seq), (1, 1));
//! let events: Vec<_> = log.history(1).collect::<Result<_, _>>().unwrap();
//! assert_eq!(events[0].event, Event::Deleted { id: [7; 16] });
//! log.close().unwrap();
//! ```

pub mod archive;
mod backend;
mod clock;
mod error;
mod event;
pub mod frame;
pub mod fsutil;
mod history;
pub mod inspect;
mod lock;
mod log;
mod recovery;

#[doc(hidden)]
pub use backend::faulty::FaultPlan;
pub use backend::shared::Retention;
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use event::*;
pub use history::History;
pub use lock::StoreLock;
pub use log::{Appended, Log, LogConfig};
pub use recovery::{RecoveryMode, RecoveryReport, Salvaged, TornTail};
