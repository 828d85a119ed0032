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

use anyhow::{anyhow, bail, Context, Result};
use magray_memory::{
    Config, Embedder, EmbedderConfig, Layer, Memory, NewRecord, RecordId, SearchMode, SearchOptions,
};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KS: [usize; 4] = [5, 10, 25, 50];
// Category ids, in the order printed: 4 single-hop, 1 multi-hop, 2 temporal, 3 open-domain,
// 5 adversarial.

struct Question {
    project: String,
    text: String,
    category: u64,
    evidence: HashSet<String>,
}

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

/// A conversation's sessions in order: name, date (µs), and each turn's id and text.
type Session = (String, u64, Vec<(String, String)>);

fn sessions(c: &Value) -> Result<Vec<Session>> {
    let conv = &c["conversation"];
    let mut out = Vec::new();
    for n in 1.. {
        let Some(turns) = conv.get(format!("session_{n}")).and_then(|t| t.as_array()) else {
            break;
        };
        let date = conv[format!("session_{n}_date_time")]
            .as_str()
            .ok_or_else(|| anyhow!("session {n} has no date"))?;
        let mut records = Vec::new();
        for t in turns {
            let (Some(speaker), Some(id)) = (t["speaker"].as_str(), t["dia_id"].as_str()) else {
                bail!("a turn of session {n} has no speaker or dia_id");
            };
            let mut text = format!("{speaker} said, \"{}\"", t["text"].as_str().unwrap_or(""));
            if let Some(caption) = t.get("blip_caption").and_then(|c| c.as_str()) {
                text.push_str(&format!(" and shared {caption}"));
            }
            records.push((id.to_string(), text));
        }
        out.push((format!("session_{n}"), parse_date(date)?, records));
    }
    Ok(out)
}

fn questions_of(c: &Value, project: &str) -> Result<Vec<Question>> {
    let qa = c["qa"]
        .as_array()
        .ok_or_else(|| anyhow!("{project}: no qa"))?;
    qa.iter()
        .map(|q| {
            let evidence = q["evidence"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str())
                .flat_map(|e| e.split([';', ',', ' ']))
                .filter(|e| is_dia_id(e))
                .map(str::to_string)
                .collect();
            Ok(Question {
                project: project.to_string(),
                text: q["question"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{project}: a question without text"))?
                    .to_string(),
                category: q["category"].as_u64().unwrap_or(0),
                evidence,
            })
        })
        .collect()
}

/// `D<n>:<n>`.
fn is_dia_id(e: &str) -> bool {
    let Some(rest) = e.strip_prefix('D') else {
        return false;
    };
    let mut parts = rest.split(':');
    let num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    num(parts.next()) && num(parts.next()) && parts.next().is_none()
}

/// "1:56 pm on 8 May, 2023" as µs since the epoch (UTC).
fn parse_date(s: &str) -> Result<u64> {
    let bad = || anyhow!("unreadable session date {s:?}");
    let (time, date) = s.split_once(" on ").ok_or_else(bad)?;
    let mut d = date.split([' ', ',']).filter(|p| !p.is_empty());
    let day: i64 = d.next().ok_or_else(bad)?.parse()?;
    let month = d.next().ok_or_else(bad)?;
    let year: i64 = d.next().ok_or_else(bad)?.parse()?;
    let months = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let m = months
        .iter()
        .position(|x| x.eq_ignore_ascii_case(month))
        .ok_or_else(bad)? as i64
        + 1;
    let (clock, half) = time.trim().split_once(' ').ok_or_else(bad)?;
    let (h, min) = clock.split_once(':').ok_or_else(bad)?;
    let mut h: i64 = h.parse()?;
    let min: i64 = min.parse()?;
    if half.eq_ignore_ascii_case("pm") && h != 12 {
        h += 12;
    } else if half.eq_ignore_ascii_case("am") && h == 12 {
        h = 0;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + h * 3600 + min * 60) * 1_000_000) as u64)
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
