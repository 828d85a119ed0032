//! Power-cut cycles: the worker runs on a crash file system ([`crashfs`]), is killed in a
//! window, and then the file system "loses power": every write, create, rename and unlink not
//! covered by an fsync (of the file, or of the directory for names) is dropped, all of it or
//! a random prefix per file. A kill alone keeps the page cache, so only this shows a missing
//! fsync. The store is then opened from what survived and checked against the oracle.

use crate::{inject, run_worker, runtime, verify, Fault, Oracle, Rng, Window};
use crashfs::{CrashFs, CrashMode};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Power cuts on one store before the run starts a fresh one.
pub const FRESH_STORE_EVERY: u64 = 100;

/// Totals over a power-cut run.
#[derive(Debug, Clone, Default)]
pub struct PowerSummary {
    /// Power cuts.
    pub cycles: u64,
    /// Stores the cuts ran on (a fresh one every [`FRESH_STORE_EVERY`] cuts).
    pub stores: u64,
    /// Cuts per window, and how many landed inside it.
    pub windows: BTreeMap<String, (u64, u64)>,
    /// Acknowledged inserts verified after the cuts, summed over cycles.
    pub acked_verified: u64,
    /// Acknowledged ratings checked after the cuts, summed over cycles.
    pub ratings_verified: u64,
    /// Acknowledged records lost (must be 0).
    pub lost: u64,
    /// Opens refused after a cut (must be 0).
    pub failed_opens: u64,
    /// Cuts that dropped everything not fsynced / kept a random prefix per file.
    pub modes: (u64, u64),
    /// Un-synced data operations (writes, truncations) the cuts dropped.
    pub dropped_data_ops: u64,
    /// Un-synced name operations (create, rename, unlink) the cuts dropped.
    pub dropped_name_ops: u64,
    /// Writes the random cuts tore at a sector boundary.
    pub torn_writes: u64,
    /// Cuts after which a path the process saw was gone or a removed one was back.
    pub names_changed: u64,
    /// Storage faults injected / detected after a cut, by kind (every `fault_every` cuts).
    pub faults: BTreeMap<String, (u64, u64)>,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for PowerSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| power cuts | stores | drop all / random prefix | acked inserts verified | lost | refused opens | \
             dropped writes | dropped name ops | torn writes | cuts that changed names | time |"
        )?;
        writeln!(
            f,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        writeln!(
            f,
            "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.cycles,
            self.stores,
            self.modes.0,
            self.modes.1,
            self.acked_verified,
            self.lost,
            self.failed_opens,
            self.dropped_data_ops,
            self.dropped_name_ops,
            self.torn_writes,
            self.names_changed,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "\nacknowledged ratings checked: {}",
            self.ratings_verified
        )?;
        writeln!(f, "\n| window | cuts | cut inside it |\n|---|---:|---:|")?;
        for (w, (n, inside)) in &self.windows {
            writeln!(f, "| {w} | {n} | {inside} |")?;
        }
        if !self.faults.is_empty() {
            writeln!(
                f,
                "\n| fault after a cut | injected | detected |\n|---|---:|---:|"
            )?;
            for (k, (i, d)) in &self.faults {
                writeln!(f, "| {k} | {i} | {d} |")?;
            }
        }
        Ok(())
    }
}

/// Runs `cycles` power cuts on a fresh store under `dir` (which gets `backing/`, the real
/// files, and `mnt/`, the crash file system over them), cycling through every window and
/// alternating the two crash modes; every `fault_every` cuts (0 = never) it also damages the
/// store that survived, each storage fault kind in turn but the full disk, and expects the
/// damage named (see [`inject`]). Stops at the first violated expectation, with the seed.
/// Needs root and `/dev/fuse`.
pub fn run_power(
    worker: &Path,
    dir: &Path,
    seed: u64,
    cycles: u64,
    fault_every: u64,
    mut progress: impl FnMut(u64, &PowerSummary),
) -> Result<PowerSummary, String> {
    let rt = runtime()?;
    let backing = dir.join("backing");
    let mnt = dir.join("mnt");
    for d in [&backing, &mnt] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut oracle = Oracle::default();
    let mut sum = PowerSummary {
        stores: 1,
        ..PowerSummary::default()
    };
    for cycle in 0..cycles {
        if cycle > 0 && cycle % FRESH_STORE_EVERY == 0 {
            // A fresh store now and then: a cut costs what the store weighs (the crash file
            // system holds and rewrites all of it), and a soak should not slow to a crawl.
            let store = backing.join("store");
            std::fs::remove_dir_all(&store)
                .map_err(|e| format!("removing {}: {e}", store.display()))?;
            oracle = Oracle::default();
            sum.stores += 1;
        }
        let window = Window::ALL[(cycle as usize) % Window::ALL.len()];
        let fail = |e: String| format!("seed {seed}, power cut {cycle} in {window:?}: {e}");
        let fs = CrashFs::mount(&backing, &mnt).map_err(|e| fail(e.to_string()))?;
        let ran = run_worker(worker, &mnt.join("store"), seed, &mut rng, cycle, window);
        let mode = if cycle % 2 == 0 {
            sum.modes.0 += 1;
            CrashMode::DropAllPending
        } else {
            sum.modes.1 += 1;
            CrashMode::RandomPrefix {
                seed: rng.next_u64(),
            }
        };
        let crash = fs.crash(mode).map_err(|e| fail(format!("the cut: {e}")))?;
        let (lines, in_window) = ran.map_err(fail)?;
        sum.cycles += 1;
        sum.dropped_data_ops += crash.data_ops_dropped as u64;
        sum.dropped_name_ops += crash.name_ops_dropped as u64;
        sum.torn_writes += crash.torn_writes as u64;
        sum.names_changed += u64::from(!crash.vanished.is_empty() || !crash.reappeared.is_empty());
        oracle.absorb(&lines);
        let store = backing.join("store");
        let report = match rt.block_on(verify(&store, &mut oracle, cycle)) {
            Ok(r) => r,
            Err(e) => {
                if e.contains("open after kill failed") {
                    sum.failed_opens += 1;
                }
                if e.contains("lost") {
                    sum.lost += 1;
                }
                sum.elapsed = started.elapsed();
                return Err(format!(
                    "{}\nthe cut ({mode:?}): {crash}\n(replay: seed {seed})",
                    fail(e)
                ));
            }
        };
        // A restore target cut mid-way is the worker's scratch, not the store.
        if let Ok(entries) = std::fs::read_dir(&backing) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("restore-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        sum.acked_verified += report.acked_verified as u64;
        sum.ratings_verified += report.ratings_verified as u64;
        if fault_every > 0 && cycle % fault_every == fault_every - 1 {
            let kinds: Vec<Fault> = Fault::ALL
                .into_iter()
                .filter(|f| *f != Fault::DiskFull)
                .collect();
            let fault = kinds[((cycle / fault_every) as usize) % kinds.len()];
            let out = rt.block_on(inject(&store, fault, &mut rng, &mut oracle));
            if let Err(detail) = out.tally(fault, &mut sum.faults) {
                sum.elapsed = started.elapsed();
                return Err(fail(format!(
                    "fault {fault:?} after the cut not detected as expected: {detail}\n(replay: seed {seed})"
                )));
            }
        }
        let e = sum.windows.entry(format!("{window:?}")).or_default();
        e.0 += 1;
        e.1 += u64::from(in_window);
        sum.elapsed = started.elapsed();
        progress(cycle, &sum);
    }
    Ok(sum)
}
