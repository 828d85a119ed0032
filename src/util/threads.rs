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

/// How much nicer than the thread that spawns them the indexer's threads run: a foreground
/// thread competing with one for a core gets about nine tenths of it (CFS weights 1,024
/// against 110 at nice 0 and 10), and the indexer still runs whenever a core is free.
pub(crate) const BACKGROUND_NICE: i32 = 10;

/// Raises the calling thread's nice value by [`BACKGROUND_NICE`], to at most 19 (threads it
/// spawns afterwards inherit it). Linux only, where the nice value is per thread; elsewhere,
/// and if the call fails, the thread keeps its priority and a debug line says why.
pub(crate) fn lower_this_thread_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority and setpriority read their integer arguments and touch no
        // memory of ours; `who = 0` names the calling thread (Linux keeps the nice value per
        // thread). getpriority's -1 may be an error; then the thread goes to 9 at worst.
        #[allow(unsafe_code)]
        let rc = unsafe {
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            libc::setpriority(libc::PRIO_PROCESS, 0, (nice + BACKGROUND_NICE).min(19))
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not lower the indexer thread's priority"
            );
        }
    }
}
