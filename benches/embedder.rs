#![allow(clippy::unwrap_used)]
//! Embedder throughput: sentences/s at batch 1, 8, 32, 128 for short (~15 token) and medium
//! (~100 token) texts, cache off; end-to-end `store_batch` (embed + durable append); and what
//! `search_text` with a cached query adds over a vector search.
//!
//! ```text
//! bash tools/setup.sh
//! cargo bench --bench embedder                      # criterion, then the report
//! BENCH_REPORT_ONLY=1 BENCH_PYTHON=/tmp/pyref/bin/python cargo bench --bench embedder
//! ```
//! `BENCH_PYTHON`: a python with onnxruntime==1.31.1, tokenizers and numpy; the report then
//! runs `tools/embed_bench_py.py` (the same model, the same thread count) for the ratio.
//! Env: `BENCH_EMBED_THREADS` (default 2), `BENCH_EMBED_RUNS` (default 3),
//! `BENCH_EMBED_BATCHES` (default 1,8,32,128).

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use criterion::Throughput;
use magray_memory::{Embedder, EmbedderConfig, Memory, NewRecord, SearchOptions};

const WORDS: &[&str] = &[
    "agent",
    "memory",
    "index",
    "search",
    "layer",
    "record",
    "snapshot",
    "log",
    "vector",
    "query",
    "session",
    "project",
    "crash",
    "recovery",
    "disk",
    "model",
    "token",
    "batch",
    "cache",
    "promotion",
    "expiry",
    "user",
    "asked",
    "about",
    "the",
    "build",
    "failed",
    "because",
    "of",
    "missing",
    "dependency",
    "and",
    "then",
    "retried",
    "with",
    "gcc",
];

fn sentence(i: usize, words: usize) -> String {
    let mut s = String::new();
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for w in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if w > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
    }
    s.push_str(&format!(" #{i}."));
    s
}

fn texts(kind: &str, n: usize) -> Vec<String> {
    // ~15 tokens: 11 words + the number; ~100 tokens: 85 words + the number; mixed: 3 to 100
    // words in a scattered order, as real texts come (what padding to the longest costs).
    (0..n)
        .map(|i| match kind {
            "short" => sentence(i, 11),
            "medium" => sentence(i, 85),
            _ => sentence(i, 3 + (i * 37) % 98),
        })
        .collect()
}

/// Texts each report row embeds: the pool's first this many (at least one batch).
fn row_texts(kind: &str, batch: usize) -> usize {
    let n = (match kind {
        "short" => 128,
        "medium" => 32,
        _ => 64,
    })
    .max(batch);
    n - n % batch
}

/// The environment's embedder settings; the repository's `models/` unless `MEMORY_MODEL_DIR`.
fn embed_config() -> EmbedderConfig {
    let mut c = EmbedderConfig::from_env().unwrap();
    if std::env::var_os("MEMORY_MODEL_DIR").is_none() {
        c.model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    }
    c
}

fn embedder(cache: usize) -> Arc<Embedder> {
    let mut c = embed_config();
    c.cache_size = cache;
    c.threads = env_usize("BENCH_EMBED_THREADS", 2);
    Arc::new(Embedder::open(&c).unwrap_or_else(|e| panic!("{e}; run `bash tools/setup.sh`")))
}

fn rate(e: &Embedder, pool: &[String], batch: usize, n: usize) -> f64 {
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let chunk: Vec<&str> = pool[done % pool.len()..][..batch]
            .iter()
            .map(|s| s.as_str())
            .collect();
        e.embed(&chunk).unwrap();
        done += batch;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let batches = env_list("BENCH_EMBED_BATCHES", "1,8,32,128");
    let runs = env_usize("BENCH_EMBED_RUNS", 3);
    let e = embedder(0);
    let short = texts("short", 512);
    let medium = texts("medium", 256);
    let mixed = texts("mixed", 256);
    let kinds = [("short", &short), ("medium", &medium), ("mixed", &mixed)];
    if !report_only() {
        let mut c = criterion();
        let mut g = c.benchmark_group("embed");
        for (kind, pool) in kinds {
            for &b in &batches {
                g.throughput(Throughput::Elements(b as u64));
                g.bench_function(format!("{kind}/batch{b}"), |bench| {
                    let chunk: Vec<&str> = pool[..b].iter().map(|s| s.as_str()).collect();
                    bench.iter(|| e.embed(&chunk).unwrap())
                });
            }
        }
        g.finish();
        c.final_summary();
    }

    println!(
        "\n== embedder report (cache off, {} threads, median of {runs} runs) ==",
        env_usize("BENCH_EMBED_THREADS", 2)
    );
    let mut ours = Vec::new();
    for (kind, pool) in kinds {
        for &b in &batches {
            let n = row_texts(kind, b);
            let r = median((0..runs).map(|_| rate(&e, pool, b, n)).collect());
            ours.push((kind, b, r));
        }
    }
    let py = python_rates(&short, &medium, &mixed, &batches, runs);
    println!(
        "{:<8} {:>6} {:>12} {:>12} {:>7}",
        "texts", "batch", "rust sent/s", "python", "ratio"
    );
    for (kind, b, r) in &ours {
        let p = py
            .iter()
            .find(|(k, pb, _)| k == kind && pb == b)
            .map(|x| x.2);
        match p {
            Some(p) => println!("{kind:<8} {b:>6} {r:>12.1} {p:>12.1} {:>7.2}", r / p),
            None => println!("{kind:<8} {b:>6} {r:>12.1} {:>12} {:>7}", "-", "-"),
        }
    }

    // End to end: store_batch of 128 short texts (embed + durable append), cache off.
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let config = magray_memory::Config {
        dimension: e.dimension(),
        ..store_config()
    };
    let memory = rt
        .block_on(Memory::open_with_embedder(dir.path(), config, e.clone()))
        .unwrap();
    let mut e2e = Vec::new();
    for run in 0..runs {
        let recs: Vec<NewRecord> = texts("short", 128 * (run + 2))[128 * (run + 1)..]
            .iter()
            .map(|t| NewRecord::text(t.clone()))
            .collect();
        let start = Instant::now();
        rt.block_on(memory.store_batch(recs)).unwrap();
        e2e.push(128.0 / start.elapsed().as_secs_f64());
    }
    let e2e = median(e2e);
    let raw128 = ours
        .iter()
        .find(|(k, b, _)| *k == "short" && *b == 128)
        .map(|x| x.2);
    let py128 = py
        .iter()
        .find(|(k, b, _)| k == "short" && *b == 128)
        .map(|x| x.2);
    println!(
        "store_batch(128 short texts), embed + fsync: {e2e:.1} records/s (raw rust batch 128: {}; python batch 128: {})",
        raw128.map_or("-".into(), |r| format!("{r:.1}")),
        py128.map_or("-".into(), |p| format!("{p:.1}, ratio {:.2}", e2e / p)),
    );

    // search_text with a cached query vs search with the vector.
    let q = "agent memory search build failed";
    let v = e.embed(&[q]).unwrap()[0].to_vec();
    let cached = embedder(10_000);
    drop(memory);
    let dir2 = tempfile::tempdir().unwrap();
    let config = magray_memory::Config {
        dimension: e.dimension(),
        ..store_config()
    };
    let memory = rt
        .block_on(Memory::open_with_embedder(dir2.path(), config, cached))
        .unwrap();
    let recs: Vec<NewRecord> = short.iter().map(|t| NewRecord::text(t.clone())).collect();
    rt.block_on(memory.store_batch(recs)).unwrap();
    let opts = SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(10)
    };
    rt.block_on(memory.search_text(q, &opts)).unwrap(); // warm the cache
    let time = |f: &dyn Fn()| {
        let mut d: Vec<Duration> = (0..2000)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed()
            })
            .collect();
        pct(&mut d, 0.5)
    };
    let t_vec = time(&|| {
        rt.block_on(memory.search(&v, &opts)).unwrap();
    });
    let t_text = time(&|| {
        rt.block_on(memory.search_text(q, &opts)).unwrap();
    });
    println!(
        "search over {} records, p50: vector {:.3} ms, cached text {:.3} ms, added {:.3} ms",
        short.len(),
        ms(t_vec),
        ms(t_text),
        ms(t_text.saturating_sub(t_vec))
    );
}

fn python_rates(
    short: &[String],
    medium: &[String],
    mixed: &[String],
    batches: &[usize],
    runs: usize,
) -> Vec<(String, usize, f64)> {
    let Ok(py) = std::env::var("BENCH_PYTHON") else {
        println!("(BENCH_PYTHON not set: no Python onnxruntime comparison)");
        return Vec::new();
    };
    let model_dir = embed_config().model_dir;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/embed_bench_py.py");
    let list = batches
        .iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = std::process::Command::new(&py)
        .arg(&script)
        .arg(&model_dir)
        .arg(env_usize("BENCH_EMBED_THREADS", 2).to_string())
        .arg(runs.to_string())
        .arg(list)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("BENCH_PYTHON={py}: {e}"));
    let input = serde_json::json!({ "short": short, "medium": medium, "mixed": mixed }).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python bench failed; see its stderr above"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                ["py", k, b, r] => Some((k.to_string(), b.parse().ok()?, r.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}
