//! Time conversions.

/// A duration in µs, saturating at `u64::MAX` (a "very long" setting never wraps to 0).
pub(crate) fn us(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
