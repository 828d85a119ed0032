#![allow(clippy::unwrap_used)]
//! `engine_search`: single-thread top-10 search over N 384-d sentence-embedding-like vectors
//! (1,000 topic clusters, L2-normalised) in one layer: QPS, p50/p99 latency and recall@10
//! against exact brute force, per `ef_search`, plus the index build (catch-up) rate.
//!
//! ```text
//! cargo bench --bench engine_search                         # N = 100,000 (a few minutes)
//! BENCH_N=5000 cargo bench --bench engine_search -- --test  # quick smoke run
//! BENCH_REPORT_ONLY=1 cargo bench --bench engine_search     # report table only
//! ```
//! Env: `BENCH_N` (records, default 100000), `BENCH_QUERIES` (default 1000),
//! `BENCH_EF` (ef_search sweep, default "16,32,50,64,100"), `BENCH_STORE` (a directory to
//! build the store in and keep, with its ids in `<dir>.ids`; a later run with the same N
//! reopens it instead of rebuilding — the build takes minutes). The store is built once with
//! `insert_batch` (batches of 1,000) and `wait_indexed`; each further ef reopens it
//! (close, then `Memory::open` with the new `Config.hnsw.ef_search`, then `wait_indexed`
//! while the HNSW dump reloads). Queries are stored vectors plus noise (cosine ≈ 0.96 to
//! their source), searched with `record_access: false`. `BENCH_SHOW_MISSES=1` prints each
//! query that finds fewer than half of its true top 10, with the true and returned scores.
//!
//! Hybrid case (after the sweep, at the first ef): each record's text is 20 words drawn from
//! a Zipf(1.1) vocabulary of 50,000 (word frequencies like prose: a few words in most
//! records, most words in few); each query is 4 words of its source record plus its vector,
//! searched with `search_hybrid` (BM25 fused with the vector list). With the model files of
//! `tools/setup.sh` present, every query's text is also embedded by the real model inside
//! the timed span, so the latency is what `search_text` costs; `BENCH_HYBRID=0` skips it.

mod common;

use common::*;
use criterion::Throughput;
use magray_memory::{Layer, Memory, NewRecord, RecordId, SearchMode, SearchOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_0384;
const BATCH: usize = 1_000;
const K: usize = 10;
/// Queries run before each latency measurement (caches, lazily touched pages).
const WARMUP_QUERIES: usize = 100;

fn options() -> SearchOptions {
    SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(K)
    }
}

struct Row {
    ef: usize,
    reopen: Option<(Duration, Duration)>,
    qps: f64,
    p50: Duration,
    p99: Duration,
    recall: f64,
    min_recall: f64,
}

/// Runs every query once, timing each; returns (QPS, latencies, mean recall, worst recall).
fn measure(
    rt: &tokio::runtime::Runtime,
    m: &Memory,
    queries: &[Vec<f32>],
    truth: &[Vec<u32>],
    index_of: &HashMap<RecordId, u32>,
    data: &[f32],
) -> (f64, Vec<Duration>, f64, f64) {
    let o = options();
    rt.block_on(async {
        for q in queries.iter().cycle().take(WARMUP_QUERIES) {
            m.search(q, &o).await.unwrap();
        }
        let mut lat = Vec::with_capacity(queries.len());
        let mut results = Vec::with_capacity(queries.len());
        let start = Instant::now();
        for q in queries {
            let t = Instant::now();
            let hits = m.search(q, &o).await.unwrap();
            lat.push(t.elapsed());
            results.push(hits);
        }
        let qps = queries.len() as f64 / start.elapsed().as_secs_f64();
        let mut sum = 0.0;
        let mut worst = 1.0f64;
        for (j, (hits, want)) in results.iter().zip(truth).enumerate() {
            let got = hits
                .iter()
                .filter(|h| want.contains(&index_of[&h.id]))
                .count();
            let r = got as f64 / want.len().min(K) as f64;
            sum += r;
            worst = worst.min(r);
            if r < 0.5 && std::env::var_os("BENCH_SHOW_MISSES").is_some() {
                let scores = |v: Vec<f32>| {
                    v.iter()
                        .map(|x| format!("{x:.3}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let cos =
                    |i: u32| dot(&queries[j], &data[i as usize * DIM..(i as usize + 1) * DIM]);
                println!(
                    "miss: query {j} found {got}/{K}; true scores {}; returned {}",
                    scores(want.iter().map(|i| cos(*i)).collect()),
                    scores(hits.iter().map(|h| h.score).collect())
                );
            }
        }
        (qps, lat, sum / queries.len() as f64, worst)
    })
}

fn main() {
    let n = env_usize("BENCH_N", 100_000);
    let nq = env_usize("BENCH_QUERIES", 1_000);
    let efs = env_list("BENCH_EF", "16,32,50,64,100");
    assert!(
        n >= K && nq >= 1 && !efs.is_empty(),
        "need N >= 10, queries and an ef"
    );
    let rt = runtime();

    eprintln!("engine_search: generating {n} vectors and {nq} queries ...");
    let t = Instant::now();
    let mut emb = Embedder::new(SEED);
    let data = emb.flat(n);
    let sources: Vec<usize> = (0..nq).map(|_| emb.rng.random_range(0..n)).collect();
    let queries: Vec<Vec<f32>> = sources
        .iter()
        .map(|&i| emb.perturb(&data[i * DIM..(i + 1) * DIM], QUERY_NOISE))
        .collect();
    let gen_time = t.elapsed();
    let t = Instant::now();
    let truth = exact_top_k(&data, &queries, K);
    let exact_time = t.elapsed();
    // Cosines that describe the data set: query to its exact top-1 / top-10, and to random.
    let cos = |q: &[f32], i: u32| dot(q, &data[i as usize * DIM..(i as usize + 1) * DIM]);
    let mean = |f: &dyn Fn(usize) -> f32| (0..nq).map(f).sum::<f32>() / nq as f32;
    let cos_top1 = mean(&|j| cos(&queries[j], truth[j][0]));
    let cos_top10 = mean(&|j| cos(&queries[j], *truth[j].last().unwrap()));
    let cos_random = mean(&|j| cos(&queries[j], ((j * 7919) % n) as u32));

    // Build: insert everything, then wait for the indexer to catch up.
    let tmp = tempfile::tempdir().unwrap();
    let kept = std::env::var_os("BENCH_STORE").map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let ids_file = dir.with_extension("ids");
    let mut config = store_config();
    config.hnsw.ef_search = efs[0];
    let reuse = kept.is_some() && ids_file.exists();
    if reuse {
        eprintln!("engine_search: reopening the store kept in {dir:?} ...");
    } else {
        eprintln!(
            "engine_search: inserting {n} records and indexing them (~450 vectors/s at 100k here) ..."
        );
    }
    let (m, index_of, insert_time, indexed_at_ack, build_time) = rt.block_on(async {
        let m = Memory::open(&dir, config.clone()).await.unwrap();
        if reuse {
            let start = Instant::now();
            let index_of: HashMap<RecordId, u32> = std::fs::read_to_string(&ids_file)
                .unwrap()
                .lines()
                .enumerate()
                .map(|(i, l)| (l.parse().unwrap(), i as u32))
                .collect();
            m.wait_indexed().await.unwrap();
            let t = start.elapsed();
            return (m, index_of, t, n as u64, t);
        }
        let mut index_of = HashMap::with_capacity(n);
        let start = Instant::now();
        for (b, chunk) in data.chunks(BATCH * DIM).enumerate() {
            let recs = chunk
                .chunks_exact(DIM)
                .enumerate()
                .map(|(j, v)| {
                    NewRecord::new(zipf_text(b * BATCH + j), v.to_vec())
                        .layer(Layer::Assets)
                        .kind("doc")
                })
                .collect();
            let ids = m.insert_batch(recs).await.unwrap();
            for (j, id) in ids.into_iter().enumerate() {
                index_of.insert(id, (b * BATCH + j) as u32);
            }
        }
        let insert_time = start.elapsed();
        let indexed_at_ack = m.stats().index.indexed;
        m.wait_indexed().await.unwrap();
        if kept.is_some() {
            let mut ids = vec![String::new(); n];
            for (id, i) in &index_of {
                ids[*i as usize] = id.to_string();
            }
            std::fs::write(&ids_file, ids.join("\n")).unwrap();
        }
        (m, index_of, insert_time, indexed_at_ack, start.elapsed())
    });
    assert_eq!(index_of.len(), n, "every record got its own id");
    let st = m.stats().layers[Layer::Assets.index()].clone();
    assert_eq!(st.records, n as u64);

    let mut c = criterion();
    let mut group = c.benchmark_group(format!("engine_search/n{n}"));
    group.throughput(Throughput::Elements(1));
    let mut rows = Vec::new();
    let mut m = Some(m);
    for (k, &ef) in efs.iter().enumerate() {
        let mut reopen = None;
        if k > 0 {
            let mut config = config.clone();
            config.hnsw.ef_search = ef;
            let (next, times) = rt.block_on(async {
                m.take().unwrap().close().await.unwrap();
                let t = Instant::now();
                let next = Memory::open(&dir, config).await.unwrap();
                let open = t.elapsed();
                next.wait_indexed().await.unwrap();
                (next, (open, t.elapsed()))
            });
            m = Some(next);
            reopen = Some(times);
        }
        let mem = m.as_ref().unwrap();
        let (qps, mut lat, recall, min_recall) =
            measure(&rt, mem, &queries, &truth, &index_of, &data);
        rows.push(Row {
            ef,
            reopen,
            qps,
            p50: pct(&mut lat, 0.5),
            p99: pct(&mut lat, 0.99),
            recall,
            min_recall,
        });
        if !report_only() {
            let o = options();
            let mut next = 0usize;
            group.bench_function(format!("top{K}/ef{ef}"), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let t = Instant::now();
                        for _ in 0..iters {
                            let q = &queries[next % queries.len()];
                            next += 1;
                            std::hint::black_box(mem.search(q, &o).await.unwrap());
                        }
                        t.elapsed()
                    })
                })
            });
        }
    }
    group.finish();
    if !report_only() {
        c.final_summary();
    }
    let hybrid = (std::env::var("BENCH_HYBRID").as_deref() != Ok("0"))
        .then(|| hybrid_case(&rt, m.as_ref().unwrap(), &queries, &sources, &index_of));
    rt.block_on(m.take().unwrap().close()).unwrap();

    println!("\nengine_search report: N = {n} x {DIM}-d in one layer (Assets), {CLUSTERS} clusters, top-{K}, 1 thread, record_access off");
    println!(
        "data: generated in {:.1} s; exact top-{K} of {nq} queries in {:.1} s; mean cosine query->top1 {cos_top1:.3}, ->top10 {cos_top10:.3}, ->random {cos_random:.3}",
        gen_time.as_secs_f64(),
        exact_time.as_secs_f64()
    );
    let ins = insert_time.as_secs_f64();
    let build = build_time.as_secs_f64();
    let tail = (build - ins).max(1e-9);
    if reuse {
        println!(
            "build: reused the store kept in {dir:?}: open + wait_indexed {:.1} s",
            build_time.as_secs_f64()
        );
    } else {
        println!(
        "build: insert_batch x{BATCH}: {ins:.1} s = {:.0} records/s acknowledged; fully indexed after {build:.1} s = {:.0} vectors/s overall \
         (indexer alone after the last ack: {:.0} vectors/s, {} of {n} were indexed at the last ack); hnsw M={} efC={}",
        n as f64 / ins,
        n as f64 / build,
        (n as u64 - indexed_at_ack.min(n as u64)) as f64 / tail,
        indexed_at_ack,
        config.hnsw.m,
        config.hnsw.ef_construction,
    );
    }
    if n < config.exact_search_below {
        println!(
            "note: N < exact_search_below ({}): the layer is searched exactly, ef has no effect",
            config.exact_search_below
        );
    }
    let scaled: Vec<String> = efs
        .iter()
        .map(|&ef| {
            let h = magray_memory::HnswConfig {
                ef_search: ef,
                ..config.hnsw
            };
            format!("{ef} -> {}", h.effective_ef(n as u64))
        })
        .collect();
    println!(
        "ef = Config.hnsw.ef_search; the beam a search uses at N = {n} (HnswConfig::effective_ef): {}",
        scaled.join(", ")
    );
    println!(
        "{:>5} {:>10} {:>9} {:>9} {:>11} {:>11} {:>16}",
        "ef", "QPS", "p50 ms", "p99 ms", "recall@10", "min recall", "reopen/ready ms"
    );
    let base_p50 = rows.iter().find(|r| r.ef == 50).map(|r| r.p50);
    for r in &rows {
        println!(
            "{:>5} {:>10.0} {:>9.3} {:>9.3} {:>11.4} {:>11.2} {:>16}{}",
            r.ef,
            r.qps,
            ms(r.p50),
            ms(r.p99),
            r.recall,
            r.min_recall,
            r.reopen
                .map(|(o, w)| format!("{:.0}/{:.0}", ms(o), ms(w)))
                .unwrap_or_else(|| "-".into()),
            base_p50
                .map(|b| format!("   p50 {:.2}x ef50", r.p50.as_secs_f64() / b.as_secs_f64()))
                .unwrap_or_default()
        );
    }
    let mut by_ef: Vec<&Row> = rows.iter().collect();
    by_ef.sort_by_key(|r| r.ef);
    match by_ef.iter().find(|r| r.recall >= 0.95) {
        Some(r) => println!(
            "smallest ef with recall@10 >= 0.95: {} (recall {:.4}, p50 {:.3} ms, {:.0} QPS)",
            r.ef,
            r.recall,
            ms(r.p50),
            r.qps
        ),
        None => println!("no ef in the sweep reaches recall@10 >= 0.95"),
    }
    println!("reopen/ready: Memory::open returned / wait_indexed returned (HNSW dump reloaded), after close()");
    if let Some(h) = hybrid {
        println!(
            "hybrid (default ef {}): search_hybrid of 4 words + the vector, top-{K}{}: p50 {:.3} ms, p99 {:.3} ms, {:.0} QPS; source record in the top {K}: {:.1} %",
            magray_memory::Config::default().hnsw.ef_search,
            if h.embedded { ", the text embedded by the model in the timed span" } else { " (no model files: embedding not timed)" },
            ms(h.p50),
            ms(h.p99),
            h.qps,
            h.found * 100.0
        );
    }
}

/// `i`'s text: 20 words of a Zipf(1.1) vocabulary of 50,000, the same in every run.
fn zipf_text(i: usize) -> String {
    const VOCAB: usize = 50_000;
    static CDF: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let cdf = CDF.get_or_init(|| {
        let mut acc = 0.0;
        let mut v: Vec<f64> = (1..=VOCAB)
            .map(|r| {
                acc += 1.0 / (r as f64).powf(1.1);
                acc
            })
            .collect();
        let total = acc;
        v.iter_mut().for_each(|x| *x /= total);
        v
    });
    let mut rng = StdRng::seed_from_u64(SEED ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (0..20)
        .map(|_| {
            let u: f64 = rng.random();
            format!("w{}", cdf.partition_point(|c| *c < u))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Hybrid {
    p50: Duration,
    p99: Duration,
    qps: f64,
    found: f64,
    embedded: bool,
}

/// Hybrid search of each query's 4 words (the 2nd, 5th, 9th and 14th of its source's text)
/// plus its vector; the model, when present, embeds the words inside the timed span.
fn hybrid_case(
    rt: &tokio::runtime::Runtime,
    m: &Memory,
    queries: &[Vec<f32>],
    sources: &[usize],
    index_of: &HashMap<RecordId, u32>,
) -> Hybrid {
    let model = magray_memory::EmbedderConfig::from_env()
        .ok()
        .and_then(|c| magray_memory::Embedder::open(&c).ok());
    // The default beam (scaling is 1 up to 100k points), whatever ef the sweep ended on.
    let o = SearchOptions {
        mode: SearchMode::Hybrid,
        ef_search: Some(magray_memory::Config::default().hnsw.ef_search),
        ..options()
    };
    let words: Vec<String> = sources
        .iter()
        .map(|&i| {
            let all: Vec<String> = zipf_text(i).split(' ').map(String::from).collect();
            [1, 4, 8, 13].map(|k| all[k].clone()).join(" ")
        })
        .collect();
    rt.block_on(async {
        for (t, q) in words.iter().zip(queries).take(WARMUP_QUERIES) {
            m.search_hybrid(t, q, &o).await.unwrap();
        }
        let mut lat = Vec::with_capacity(queries.len());
        let mut found = 0usize;
        let start = Instant::now();
        for ((t, q), &src) in words.iter().zip(queries).zip(sources) {
            let began = Instant::now();
            if let Some(e) = &model {
                std::hint::black_box(e.embed(&[t.as_str()]).unwrap());
            }
            let hits = m.search_hybrid(t, q, &o).await.unwrap();
            lat.push(began.elapsed());
            found += hits.iter().any(|h| index_of[&h.id] as usize == src) as usize;
        }
        let qps = queries.len() as f64 / start.elapsed().as_secs_f64();
        Hybrid {
            p50: pct(&mut lat, 0.5),
            p99: pct(&mut lat, 0.99),
            qps,
            found: found as f64 / queries.len() as f64,
            embedded: model.is_some(),
        }
    })
}
