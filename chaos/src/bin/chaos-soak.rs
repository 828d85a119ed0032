//! The soak: `chaos-soak [CYCLES] [SEED]` runs CYCLES kill cycles (default 1000) across every
//! window, injecting a storage fault every 5 cycles, and prints the summary table. Exits 1 at
//! the first violated expectation, printing the seed that replays it.

use anyhow::{anyhow, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let cycles: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let seed: u64 = match args.next() {
        Some(s) => s.parse()?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64,
    };
    let worker = magray_chaos::worker_path()
        .ok_or_else(|| anyhow!("chaos-worker not found beside this binary; build it with `cargo build --release -p magray-chaos` (or set CHAOS_WORKER)"))?;
    let dir = tempfile::tempdir()?;
    let store = dir.path().join("store");
    eprintln!(
        "soak: {cycles} cycles, seed {seed}, store {}",
        store.display()
    );
    let result = magray_chaos::run(&worker, &store, seed, cycles, 5, |c, s| {
        if (c + 1) % 50 == 0 {
            eprintln!(
                "  {} cycles, {} acked inserts verified, {:.0} s",
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
