//! Promoter comparison on the simulated agent workload (`magray_memory::sim`): plays the
//! workload into a fresh store, trains the learned promoter on the first part of the history
//! and prints precision@k / recall@k of every promoter on the held-out rest.
//!
//! ```sh
//! cargo run --release --example promoter_report            # seeds 1, 2, 3
//! cargo run --release --example promoter_report -- 7 8 9   # other seeds
//! ```

use magray_memory::lifecycle::EvalConfig;
use magray_memory::sim::{self, SimConfig};
use magray_memory::wal::ManualClock;
use magray_memory::{Config, LifecycleConfig, Memory};
use std::sync::Arc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seeds: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("seeds must be integers: {e}"))?;
    let seeds = if seeds.is_empty() {
        vec![1, 2, 3]
    } else {
        seeds
    };
    let mut precision: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for seed in &seeds {
        let cfg = SimConfig {
            seed: *seed,
            ..SimConfig::default()
        };
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(cfg.start_us);
        let config = Config {
            dimension: cfg.dim,
            clock: Arc::new(clock.clone()),
            lifecycle: LifecycleConfig::manual(),
            // Exact search: the same seed gives the same history (HNSW builds concurrently).
            exact_search_below: usize::MAX,
            ..Config::default()
        };
        let memory = Memory::open(dir.path(), config).await?;
        let started = std::time::Instant::now();
        let summary = sim::run(&memory, &clock, &cfg).await?;
        let played = started.elapsed();
        // Train on days 0..24, evaluate on the rest (held out).
        let split = cfg.start_us + 24 * 86_400_000_000;
        let started = std::time::Instant::now();
        let report = memory
            .evaluate_promoters(EvalConfig::split_at(split))
            .await?;
        println!(
            "## seed {seed}: {} days, {} sessions, {} records, {} searches, {} ratings \
             (played in {:.1} s, evaluated in {:.1} s)\n\n{report}\n",
            cfg.days,
            summary.sessions,
            summary.records,
            summary.searches,
            summary.ratings,
            played.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        for row in &report.rows {
            precision
                .entry(row.promoter.clone())
                .or_default()
                .push(row.precision_at_k);
        }
        memory.close().await?;
    }
    println!(
        "## median precision@10 over seeds {seeds:?}\n\n| promoter | precision@10 |\n|---|---:|"
    );
    for (name, mut v) in precision {
        v.sort_by(f64::total_cmp);
        println!("| {name} | {:.3} |", v[v.len() / 2]);
    }
    Ok(())
}
