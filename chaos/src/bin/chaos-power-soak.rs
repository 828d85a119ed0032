//! The power-cut soak: `chaos-power-soak [CYCLES] [SEED]` runs CYCLES power cuts (default
//! 1000) across every window on the crash file system, damages the surviving store every 5
//! cuts (each storage fault kind in turn but the full disk), and prints the summary table. Exits 1
//! at the first violated expectation, printing the seed that replays it. Needs root and
//! `/dev/fuse`.

use anyhow::{anyhow, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cycles: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let seed: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20261207);
    let worker = magray_chaos::worker_path()
        .ok_or_else(|| anyhow!("chaos-worker not found beside this binary; build it with `cargo build --release -p magray-chaos` (or set CHAOS_WORKER)"))?;
    let dir = tempfile::tempdir()?;
    eprintln!(
        "power soak: {cycles} cuts, seed {seed}, under {}",
        dir.path().display()
    );
    let result = magray_chaos::run_power(&worker, dir.path(), seed, cycles, 5, |c, s| {
        if (c + 1) % 50 == 0 {
            eprintln!(
                "  {} cuts, {} acked inserts verified, {:.0} s",
                c + 1,
                s.acked_verified,
                s.elapsed.as_secs_f64()
            );
        }
    });
    match result {
        Ok(s) => {
            println!("seed {seed}\n\n{s}");
            Ok(())
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            std::process::exit(1);
        }
    }
}
