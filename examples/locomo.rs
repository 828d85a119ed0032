//! LoCoMo retrieval through the real engine: every dialog turn of every conversation stored
//! with `Memory::store_batch` (one project per conversation, one session per LoCoMo session,
//! the session's date as the record's time), every question asked with `search_text` in its
//! conversation's project; prints the share of evidence turns found in the top k (5, 10, 25,
//! 50), overall and per category, import time and query latency, for each search mode.
//!
//! ```sh
//! bash tools/setup.sh    # the model and ONNX Runtime
//! cargo run --release --example locomo                       # ../shared/bench/locomo/locomo-dev.json
//! cargo run --release --example locomo -- /path/locomo10.json
//! LOCOMO_PATH=/path/locomo10.json LOCOMO_MODES=hybrid cargo run --release --example locomo
//! ```
//!
//! Protocol (the data's README, the paper's "dialog" setting): a record per turn,
//! `<speaker> said, "<text>"` plus ` and shared <blip_caption>` when the turn has an image;
//! the query is the raw question; recall = |evidence ∩ top-k| / |evidence|, a question with
//! no evidence counts 1; evidence strings are split on `;`, `,` and spaces and only `D<n>:<n>`
//! ids are kept (a few are malformed). The data is CC BY-NC 4.0: it is read from where it
//! lies, never copied into this repository. Nothing here reads an answer.

use anyhow::{anyhow, Context, Result};
use magray_memory::{
    Config, Embedder, EmbedderConfig, Layer, Memory, NewRecord, RecordId, SearchMode, SearchOptions,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "locomo_data/mod.rs"]
mod locomo_data;
use locomo_data::{questions_of, sessions, Question};

const KS: [usize; 4] = [5, 10, 25, 50];
// Category ids, in the order printed: 4 single-hop, 1 multi-hop, 2 temporal, 3 open-domain,
// 5 adversarial.

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("LOCOMO_PATH").ok())
        .unwrap_or_else(|| "../shared/bench/locomo/locomo-dev.json".into());
    let data: Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading LoCoMo from {path}"))?,
    )
    .with_context(|| format!("{path} is not JSON"))?;
    let modes: Vec<SearchMode> = std::env::var("LOCOMO_MODES")
        .unwrap_or_else(|_| "vector,keyword,hybrid".into())
        .split(',')
        .map(|m| m.trim().parse())
        .collect::<Result<_, _>>()?;
    // No embedding cache: every mode's latency includes embedding its query.
    let embedder_config = EmbedderConfig {
        cache_size: 0,
        ..EmbedderConfig::from_env()?
    };
    let embedder = Arc::new(Embedder::open(&embedder_config).context(
        "the embedder needs the model and ONNX Runtime: run `bash tools/setup.sh` first",
    )?);
    let dir = tempfile::tempdir()?;
    let config = Config {
        dimension: embedder.dimension(),
        ..Config::from_env()?
    };
    let memory = Memory::open_with_embedder(dir.path(), config, embedder).await?;

    let convs = data
        .as_array()
        .ok_or_else(|| anyhow!("{path}: not a list of conversations"))?;
    let started = Instant::now();
    let mut turn_of: HashMap<RecordId, String> = HashMap::new();
    let mut questions = Vec::new();
    let mut turns = 0usize;
    for c in convs {
        let project = c["sample_id"]
            .as_str()
            .ok_or_else(|| anyhow!("no sample_id"))?;
        for (session, ts_us, records) in sessions(c)? {
            let ids: Vec<String> = records.iter().map(|(id, _)| id.clone()).collect();
            let batch = records
                .into_iter()
                .map(|(_, text)| {
                    NewRecord::text(text)
                        .layer(Layer::Assets)
                        .project(project)
                        .session(session.as_str())
                        .at_us(ts_us)
                })
                .collect();
            let stored = memory.store_batch(batch).await?;
            turns += stored.len();
            turn_of.extend(stored.into_iter().zip(ids));
        }
        questions.extend(questions_of(c, project)?);
    }
    let import = started.elapsed();
    println!(
        "LoCoMo {path}: {} conversations, {turns} turns stored in {:.1} s ({:.0} turns/s), {} questions",
        convs.len(),
        import.as_secs_f64(),
        turns as f64 / import.as_secs_f64(),
        questions.len()
    );
    println!(
        "{:<8} {:>6} {:>6} {:>6} {:>6} | R@5: {:>10} {:>9} {:>8} {:>11} {:>11} | {:>7} {:>7}",
        "mode",
        "R@5",
        "R@10",
        "R@25",
        "R@50",
        "single-hop",
        "multi-hop",
        "temporal",
        "open-domain",
        "adversarial",
        "p50 ms",
        "p99 ms"
    );
    for mode in modes {
        let r = evaluate(&memory, &questions, &turn_of, mode).await?;
        let cat = |c: u64| r.by_category.get(&c).map_or(0.0, |v| mean(v) * 100.0);
        println!(
            "{:<8} {:>6.1} {:>6.1} {:>6.1} {:>6.1} | {:>15.1} {:>9.1} {:>8.1} {:>11.1} {:>11.1} | {:>7.1} {:>7.1}",
            mode.name(),
            r.at_k[0] * 100.0,
            r.at_k[1] * 100.0,
            r.at_k[2] * 100.0,
            r.at_k[3] * 100.0,
            cat(4),
            cat(1),
            cat(2),
            cat(3),
            cat(5),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
        );
    }
    memory.close().await?;
    Ok(())
}

struct Report {
    at_k: [f64; 4],
    by_category: BTreeMap<u64, Vec<f64>>,
    p50: Duration,
    p99: Duration,
}

async fn evaluate(
    memory: &Memory,
    questions: &[Question],
    turn_of: &HashMap<RecordId, String>,
    mode: SearchMode,
) -> Result<Report> {
    let mut at_k = [0.0f64; 4];
    let mut by_category: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    let mut latencies = Vec::with_capacity(questions.len());
    for q in questions {
        let options = SearchOptions {
            top_k: 50,
            project: Some(q.project.clone()),
            record_access: false,
            mode,
            ..SearchOptions::default()
        };
        let t = Instant::now();
        let hits = memory.search_text(&q.text, &options).await?;
        latencies.push(t.elapsed());
        let found: Vec<&str> = hits
            .iter()
            .filter_map(|h| turn_of.get(&h.id).map(String::as_str))
            .collect();
        for (i, k) in KS.iter().enumerate() {
            let r = recall(&q.evidence, &found[..found.len().min(*k)]);
            at_k[i] += r;
            if i == 0 {
                by_category.entry(q.category).or_default().push(r);
            }
        }
    }
    let n = questions.len().max(1) as f64;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    Ok(Report {
        at_k: at_k.map(|x| x / n),
        by_category,
        p50: pct(0.5),
        p99: pct(0.99),
    })
}

fn recall(evidence: &HashSet<String>, found: &[&str]) -> f64 {
    if evidence.is_empty() {
        return 1.0;
    }
    evidence
        .iter()
        .filter(|e| found.contains(&e.as_str()))
        .count() as f64
        / evidence.len() as f64
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
