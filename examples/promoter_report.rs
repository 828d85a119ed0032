//! Promoter comparison on simulated agent workloads (`magray_memory::sim`): for each workload
//! family and seed, plays the workload into a fresh store, trains the learned promoter on the
//! first 24 days and scores every promoter on the held-out rest (precision@10: of the 10
//! candidates a promoter ranks first at a sample point, how many are read again within 72 h).
//! Then, per family: the mean of each promoter over the seeds, and the learned model's margin
//! over the best baseline with a 95 % confidence interval (paired over seeds, Student's t).
//!
//! The `locomo` family replays LoCoMo's conversations (`examples/locomo_data/replay.rs`): it
//! runs when the data is there (`LOCOMO_PATH`, default `../shared/bench/locomo/locomo-dev.json`)
//! and needs the embedder (`bash tools/setup.sh`).
//!
//! ```sh
//! cargo run --release --example promoter_report                          # the README table
//! cargo run --release --example promoter_report -- --seeds 1-3 --workload original
//! cargo run --release --example promoter_report -- --workload locomo     # LoCoMo only
//! cargo run --release --example promoter_report -- --verbose             # every seed's table
//! ```
//! Every setting is pinned (`sim::store_config`, `SimConfig::default`, `EvalConfig::split_at`):
//! the same command prints the same table.

#[path = "locomo_data/mod.rs"]
mod locomo_data;
#[path = "locomo_data/replay.rs"]
mod replay;

use anyhow::Context;
use magray_memory::lifecycle::{EvalConfig, EvalReport};
use magray_memory::sim::{self, SimConfig, Workload};
use magray_memory::wal::ManualClock;
use magray_memory::{Embedder, EmbedderConfig, Memory};
use std::collections::BTreeMap;

/// A workload family of the report: a simulated one, or the LoCoMo replay.
#[derive(Clone, Copy, PartialEq)]
enum Family {
    Sim(Workload),
    Locomo,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Sim(w) => w.name(),
            Family::Locomo => "locomo",
        }
    }
}

fn locomo_path() -> String {
    std::env::var("LOCOMO_PATH").unwrap_or_else(|_| "../shared/bench/locomo/locomo-dev.json".into())
}

/// One seed of a simulated family: play, then train on days 0–23 and score the rest.
async fn sim_report(workload: Workload, seed: u64) -> anyhow::Result<EvalReport> {
    let cfg = SimConfig {
        seed,
        workload,
        ..SimConfig::default()
    };
    let dir = tempfile::tempdir()?;
    let clock = ManualClock::new(cfg.start_us);
    let memory = Memory::open(dir.path(), sim::store_config(&clock, cfg.dim)).await?;
    sim::run(&memory, &clock, &cfg).await?;
    let split = cfg.start_us + 24 * 86_400_000_000;
    let report = memory
        .evaluate_promoters(EvalConfig::split_at(split))
        .await?;
    memory.close().await?;
    Ok(report)
}

const BASELINES: [&str; 6] = [
    "memoryos",
    "memoryos-segment",
    "generative-agents",
    "access-count",
    "random",
    "best-single-feature",
];

struct Args {
    seeds: Vec<u64>,
    families: Vec<Family>,
    verbose: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seeds: (1..=10).collect(),
        families: Workload::ALL.map(Family::Sim).to_vec(),
        verbose: false,
    };
    let mut chosen = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seeds" => {
                let v = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--seeds needs a value such as 1-10"))?;
                args.seeds = parse_seeds(&v)?;
            }
            "--workload" => {
                let v = it.next().ok_or_else(|| {
                    anyhow::anyhow!("--workload needs a name such as recurring-bursts")
                })?;
                chosen.push(if v == "locomo" {
                    Family::Locomo
                } else {
                    Family::Sim(v.parse().map_err(anyhow::Error::msg)?)
                });
            }
            "--verbose" => args.verbose = true,
            other => anyhow::bail!(
                "unknown argument {other:?}; usage: promoter_report [--seeds 1-10|1,2,3] \
                 [--workload NAME]... [--verbose]"
            ),
        }
    }
    if !chosen.is_empty() {
        args.families = chosen;
    } else if std::path::Path::new(&locomo_path()).exists() {
        args.families.push(Family::Locomo);
    } else {
        println!(
            "(the locomo family is skipped: no LoCoMo data at {}; set LOCOMO_PATH)\n",
            locomo_path()
        );
    }
    Ok(args)
}

fn parse_seeds(v: &str) -> anyhow::Result<Vec<u64>> {
    let bad = || anyhow::anyhow!("seeds must look like 1-10 or 1,2,3 (got {v:?})");
    if let Some((a, b)) = v.split_once('-') {
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        anyhow::ensure!(a <= b, bad());
        return Ok((a..=b).collect());
    }
    v.split(',')
        .map(|s| s.trim().parse().map_err(|_| bad()))
        .collect()
}

use sim::mean_ci95 as mean_ci;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    println!(
        "# promoter report: seeds {:?}, workloads {}\n",
        args.seeds,
        args.families
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let locomo = if args.families.contains(&Family::Locomo) {
        let embedder = Embedder::open(&EmbedderConfig::from_env()?).context(
            "the locomo family needs the model and ONNX Runtime: run `bash tools/setup.sh` first",
        )?;
        let replay = replay::Replay::load(&locomo_path(), &embedder)?;
        let (turns, asks) = replay.size();
        println!(
            "locomo: {} — {turns} turns, {asks} questions with evidence\n",
            locomo_path()
        );
        Some(replay)
    } else {
        None
    };
    let mut summary = Vec::new();
    for &workload in &args.families {
        let mut precision: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut features: BTreeMap<String, usize> = BTreeMap::new();
        let mut base_rate = Vec::new();
        let started = std::time::Instant::now();
        for &seed in &args.seeds {
            let report = match (workload, &locomo) {
                (Family::Sim(w), _) => sim_report(w, seed).await?,
                (Family::Locomo, Some(replay)) => replay.run(seed).await?,
                (Family::Locomo, None) => anyhow::bail!("the LoCoMo replay was not loaded"),
            };
            if args.verbose {
                println!("## {} seed {seed}\n\n{report}\n", workload.name());
            }
            for row in &report.rows {
                precision
                    .entry(row.promoter.clone())
                    .or_default()
                    .push(row.precision_at_k);
            }
            *features.entry(report.best_feature.clone()).or_default() += 1;
            base_rate.push(report.base_rate);
        }
        let learned = precision.get("learned").cloned().unwrap_or_default();
        // The best baseline is the one with the highest mean over the seeds.
        let (best, best_v) = BASELINES
            .iter()
            .filter_map(|b| precision.get(*b).map(|v| (*b, v.clone())))
            .max_by(|a, b| mean_ci(&a.1).0.total_cmp(&mean_ci(&b.1).0))
            .ok_or_else(|| anyhow::anyhow!("no baseline rows in the report"))?;
        let margins: Vec<f64> = learned.iter().zip(&best_v).map(|(l, b)| l - b).collect();
        let (m, hw) = mean_ci(&margins);
        println!(
            "## {} ({} seeds, {:.0} s; base rate {:.3})\n\n| promoter | mean precision@10 | 95 % CI |\n|---|---:|---:|",
            workload.name(),
            args.seeds.len(),
            started.elapsed().as_secs_f64(),
            mean_ci(&base_rate).0
        );
        for name in std::iter::once("learned").chain(BASELINES) {
            if let Some(v) = precision.get(name) {
                let (mean, hw) = mean_ci(v);
                println!("| {name} | {mean:.3} | ± {hw:.3} |");
            }
        }
        let mut chosen: Vec<_> = features.into_iter().collect();
        chosen.sort_by_key(|c| std::cmp::Reverse(c.1));
        println!(
            "\nbest single feature chosen on training: {}\n",
            chosen
                .iter()
                .map(|(f, n)| format!("{f} ({n}×)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        summary.push((workload, best, m, hw));
    }
    println!(
        "## learned promoter against the best baseline, per family\n\n\
         | workload | best baseline | margin (precision@10) | 95 % CI | verdict |\n|---|---|---:|---:|---|"
    );
    for (workload, best, m, hw) in summary {
        let verdict = if m - hw > 0.0 {
            "learned wins"
        } else if m + hw < 0.0 {
            "learned loses"
        } else {
            "no clear difference"
        };
        println!(
            "| {} | {best} | {m:+.3} | [{:+.3}, {:+.3}] | {verdict} |",
            workload.name(),
            m - hw,
            m + hw
        );
    }
    Ok(())
}
