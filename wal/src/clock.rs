//! Time, injectable so tests can run weeks of simulated history in milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A source of UTC time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Now, in µs since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }
}

/// A manually advanced clock for tests and simulations.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `start_us`.
    pub fn new(start_us: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_us)))
    }
    /// Moves time forward.
    pub fn advance_us(&self, us: u64) {
        self.0.fetch_add(us, Ordering::SeqCst);
    }
    /// Sets the time.
    pub fn set_us(&self, us: u64) {
        self.0.store(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
