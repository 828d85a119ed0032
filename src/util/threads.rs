//! How many threads a long scan may use.

/// Threads a long exact scan, or the coding of a big frozen graph, may use (this process's
/// available parallelism, at most 8, read once).
pub(crate) fn scan_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// `[a, b)`: the `i`-th of `n` near-equal parts of `0..len`.
pub(crate) fn part_bounds(len: usize, i: usize, n: usize) -> (usize, usize) {
    (len * i / n, len * (i + 1) / n)
}
