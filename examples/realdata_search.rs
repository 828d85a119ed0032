//! Search on real sentence vectors, side by side with hnswlib 0.8.0 in the same run.
//!
//! ```sh
//! bash tools/setup.sh && bash benches/realdata/setup.sh        # model; hnswlib venv
//! cargo run --release --example realdata_search -- prepare      # corpus, vectors, truth (once)
//! cargo run --release --example realdata_search                 # the table
//! ```
//! `prepare` builds the corpus with `benches/realdata/build_corpus.py` (100,000 paragraphs of
//! this machine's man pages and Python docstrings, 1,000 held-out queries), embeds it with
//! the store's own embedder (all-MiniLM-L6-v2) and computes exact top-10 ground truth. All of
//! it is cached in `$MAGRAY_BENCH_DATA` (default `~/.cache/magray/realdata`), outside the
//! repository.
//!
//! The run stores the vectors in a fresh store: 10 % Interact, 30 % Insights, 60 % Assets,
//! `LifecycleConfig::manual()`, in batches of 1,000; 20 % of the records in project `p20`,
//! 2 % in `p2`. It times acknowledgement and indexing, then on one thread, for each ef in
//! `BENCH_EFS` (default 16,32,64,128,256; 0 is the store's default, scaled with the graph),
//! 1,000 queries in each case: all layers; one layer (Assets, 60 %; Interact, 10 %: the one
//! graph walked with the layer as a filter); `project == p20`; `project == p2`. hnswlib
//! (M 16, ef_construction 200, `BENCH_THREADS` build threads, our `index_threads` too) runs
//! on the same vectors, then the table gives each side's best QPS at recall@10 ≥ 0.95 and
//! ≥ 0.99 and the ratio. Then, ours only, on the store reopened: the queries on 2 client
//! threads against 1, and search latency while the indexer takes in a
//! batch of 20,000 more records against the store idle (`BENCH_SKIP_LOAD=1` skips it).
//! Env: `BENCH_THREADS` (build threads, default 2), `BENCH_PYTHON` (default the venv's
//! python).

use anyhow::{anyhow, bail, Context, Result};
use magray_memory::{
    Config, Embedder, EmbedderConfig, Layer, LifecycleConfig, Memory, NewRecord, SearchOptions,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const K: usize = 10;
const CASES: [&str; 5] = ["all", "assets", "interact", "f20", "f2"];

fn data_dir() -> PathBuf {
    std::env::var_os("MAGRAY_BENCH_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
            PathBuf::from(home).join(".cache/magray/realdata")
        })
}

fn read_lines(p: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_to_string(p)
        .with_context(|| format!("reading {}", p.display()))?
        .lines()
        .map(str::to_string)
        .collect())
}

fn write_f32(p: &Path, rows: &[Vec<f32>]) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(p)?);
    for r in rows {
        for x in r {
            out.write_all(&x.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

fn read_f32(p: &Path, dim: usize) -> Result<Vec<Vec<f32>>> {
    let b = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    if b.len() % (4 * dim) != 0 {
        bail!("{} is not a whole number of {dim}-d vectors", p.display());
    }
    Ok(b.chunks_exact(4 * dim)
        .map(|row| {
            row.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
        .collect())
}

/// A record's filter bucket, 0..100: a hash of its index, independent of its layer (so a
/// 20 % filter admits 20 % of every layer).
fn bucket(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % 100
}

/// Which records a case admits.
fn admits(case: &str, i: usize) -> bool {
    match case {
        "f20" => bucket(i) < 20,
        "f2" => (20..22).contains(&bucket(i)),
        "assets" => layer_of(i) == Layer::Assets,
        "interact" => layer_of(i) == Layer::Interact,
        _ => true,
    }
}

fn layer_of(i: usize) -> Layer {
    match i % 10 {
        0 => Layer::Interact,
        1..=3 => Layer::Insights,
        _ => Layer::Assets,
    }
}

fn project_of(i: usize) -> &'static str {
    if admits("f20", i) {
        "p20"
    } else if admits("f2", i) {
        "p2"
    } else {
        "rest"
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact top-k ids of each query among the records `case` admits (two threads).
fn ground_truth(vectors: &[Vec<f32>], queries: &[Vec<f32>], case: &str) -> Vec<Vec<u32>> {
    let half = queries.len() / 2;
    let run = |qs: &[Vec<f32>]| -> Vec<Vec<u32>> {
        qs.iter()
            .map(|q| {
                let mut best: Vec<(f32, u32)> = vectors
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| admits(case, *i))
                    .map(|(i, v)| (dot(q, v), i as u32))
                    .collect();
                best.select_nth_unstable_by(K, |a, b| b.0.total_cmp(&a.0));
                best.truncate(K);
                best.sort_by(|a, b| b.0.total_cmp(&a.0));
                best.into_iter().map(|(_, i)| i).collect()
            })
            .collect()
    };
    std::thread::scope(|s| {
        let a = s.spawn(|| run(&queries[..half]));
        let mut b = run(&queries[half..]);
        let mut out = a.join().unwrap_or_default();
        out.append(&mut b);
        out
    })
}

fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    if !dir.join("corpus.txt").exists() {
        let status = std::process::Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/benches/realdata/build_corpus.py"
            ))
            .arg(dir)
            .status()
            .context("running benches/realdata/build_corpus.py (needs python3)")?;
        if !status.success() {
            bail!("building the corpus failed");
        }
    }
    let corpus = read_lines(&dir.join("corpus.txt"))?;
    let queries = read_lines(&dir.join("queries.txt"))?;
    let embedder = Embedder::open(&EmbedderConfig::from_env()?)
        .context("the embedder needs the model and ONNX Runtime: run `bash tools/setup.sh`")?;
    let dim = embedder.dimension();
    let embed = |texts: &[String], what: &str| -> Result<Vec<Vec<f32>>> {
        let started = Instant::now();
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(512) {
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            out.extend(embedder.embed(&refs)?.iter().map(|v| v.to_vec()));
            eprint!(
                "\r{what}: {} of {} ({:.0} texts/s)   ",
                out.len(),
                texts.len(),
                out.len() as f64 / started.elapsed().as_secs_f64()
            );
        }
        eprintln!();
        Ok(out)
    };
    // Embedded once (the slow part); a second `prepare` only recomputes the truth.
    let (vectors, qv) = if dir.join("vectors.f32").exists() && dir.join("queries.f32").exists() {
        (
            read_f32(&dir.join("vectors.f32"), dim)?,
            read_f32(&dir.join("queries.f32"), dim)?,
        )
    } else {
        let qv = embed(&queries, "queries")?;
        let vectors = embed(&corpus, "corpus")?;
        write_f32(&dir.join("vectors.f32"), &vectors)?;
        write_f32(&dir.join("queries.f32"), &qv)?;
        (vectors, qv)
    };
    for case in CASES {
        let gt = ground_truth(&vectors, &qv, case);
        let mut bytes = Vec::new();
        for row in &gt {
            for id in row {
                bytes.extend_from_slice(&(*id as i32).to_le_bytes());
            }
        }
        std::fs::write(dir.join(format!("gt-{case}.i32")), bytes)?;
        let mask: Vec<u8> = (0..vectors.len())
            .map(|i| u8::from(admits(case, i)))
            .collect();
        std::fs::write(dir.join(format!("mask-{case}.u8")), mask)?;
    }
    std::fs::write(
        dir.join("meta.json"),
        format!(
            "{{\"n\": {}, \"dim\": {dim}, \"queries\": {}}}\n",
            vectors.len(),
            qv.len()
        ),
    )?;
    println!(
        "prepared {} vectors and {} queries in {}",
        vectors.len(),
        qv.len(),
        dir.display()
    );
    Ok(())
}

/// Measurements by (case, ef).
type Points = BTreeMap<(String, usize), Point>;

#[derive(Debug, Clone, Copy)]
struct Point {
    qps: f64,
    p50_ms: f64,
    p99_ms: f64,
    recall: f64,
}

/// The best QPS at recall ≥ `target`, with its ef.
fn best_at(points: &BTreeMap<usize, Point>, target: f64) -> Option<(usize, Point)> {
    points
        .iter()
        .filter(|(_, p)| p.recall >= target)
        .max_by(|a, b| a.1.qps.total_cmp(&b.1.qps))
        .map(|(ef, p)| (*ef, *p))
}

fn hnswlib(dir: &Path, threads: usize, efs: &[usize]) -> Result<(f64, Points)> {
    let python = std::env::var_os("BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("venv/bin/python"));
    if !python.exists() {
        bail!(
            "no python with hnswlib at {}: run `bash benches/realdata/setup.sh` (or set BENCH_PYTHON)",
            python.display()
        );
    }
    let efs: Vec<String> = efs.iter().map(|e| e.to_string()).collect();
    let out = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/realdata/hnswlib_bench.py"
        ))
        .arg(dir)
        .arg(threads.to_string())
        .arg(efs.join(","))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running benches/realdata/hnswlib_bench.py")?;
    if !out.status.success() {
        bail!("the hnswlib bench failed; see its stderr above");
    }
    let mut build = 0.0;
    let mut points = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(b) = v["build_s"].as_f64() {
            build = b;
            continue;
        }
        let get = |k: &str| v[k].as_f64().ok_or_else(|| anyhow!("no {k} in {line}"));
        points.insert(
            (
                v["case"].as_str().unwrap_or_default().to_string(),
                get("ef")? as usize,
            ),
            Point {
                qps: get("qps")?,
                p50_ms: get("p50_ms")?,
                p99_ms: get("p99_ms")?,
                recall: get("recall")?,
            },
        );
    }
    Ok((build, points))
}

/// Bytes of the files under `p`.
fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let dir = data_dir();
    if std::env::args().nth(1).as_deref() == Some("prepare") {
        return prepare(&dir);
    }
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("meta.json")).with_context(|| {
            format!(
                "no prepared data in {}: run `cargo run --release --example realdata_search -- prepare`",
                dir.display()
            )
        })?,
    )?;
    let dim = meta["dim"]
        .as_u64()
        .ok_or_else(|| anyhow!("meta.json: no dim"))? as usize;
    let vectors = read_f32(&dir.join("vectors.f32"), dim)?;
    let queries = read_f32(&dir.join("queries.f32"), dim)?;
    let texts = read_lines(&dir.join("corpus.txt"))?;
    let efs: Vec<usize> = std::env::var("BENCH_EFS")
        .unwrap_or_else(|_| "16,32,64,128,256".into())
        .split(',')
        .map(|e| e.trim().parse())
        .collect::<Result<_, _>>()?;
    let threads: usize = std::env::var("BENCH_THREADS")
        .ok()
        .map(|t| t.parse())
        .transpose()?
        .unwrap_or(2);
    let mut truth = BTreeMap::new();
    for case in CASES {
        let b = std::fs::read(dir.join(format!("gt-{case}.i32")))?;
        let ids: Vec<u32> = b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
            .collect();
        truth.insert(case, ids.chunks(K).map(|c| c.to_vec()).collect::<Vec<_>>());
    }

    // Our side: the store, built the way an agent's fills.
    let store = tempfile::tempdir()?;
    let config = Config {
        dimension: dim,
        lifecycle: LifecycleConfig::manual(),
        // The same cores as hnswlib's build below.
        index_threads: threads,
        ..Config::default()
    };
    let memory = Memory::open(store.path(), config.clone()).await?;
    let started = Instant::now();
    let mut id_of = std::collections::HashMap::new();
    for (c, chunk) in vectors.chunks(1000).enumerate() {
        let batch = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let i = c * 1000 + j;
                NewRecord::new(texts[i].clone(), v.clone())
                    .layer(layer_of(i))
                    .project(project_of(i))
            })
            .collect();
        for (j, id) in memory.insert_batch(batch).await?.into_iter().enumerate() {
            id_of.insert(id, (c * 1000 + j) as u32);
        }
    }
    let acked = started.elapsed();
    memory.wait_indexed().await?;
    let indexed = started.elapsed();
    eprintln!(
        "ours: {} records acknowledged in {:.2} s, indexed after {:.1} s",
        vectors.len(),
        acked.as_secs_f64(),
        indexed.as_secs_f64()
    );
    let mut ours: Points = BTreeMap::new();
    // BENCH_CASES narrows the run (profiling); the table needs all, f20 and f2.
    let cases: Vec<String> = std::env::var("BENCH_CASES")
        .unwrap_or_else(|_| CASES.join(","))
        .split(',')
        .map(str::to_string)
        .collect();
    for case in CASES.into_iter().filter(|c| cases.iter().any(|x| x == c)) {
        for &ef in &efs {
            let o = SearchOptions {
                layers: match case {
                    "assets" => vec![Layer::Assets],
                    "interact" => vec![Layer::Interact],
                    _ => Vec::new(),
                },
                project: match case {
                    "f20" => Some("p20".into()),
                    "f2" => Some("p2".into()),
                    _ => None,
                },
                record_access: false,
                // ef 0: the store's default (`Config::hnsw.ef_search`, scaled with the graph).
                ef_search: (ef > 0).then_some(ef),
                ..SearchOptions::top_k(K)
            };
            let mut lat = Vec::with_capacity(queries.len());
            let mut found = 0usize;
            for (qi, q) in queries.iter().enumerate() {
                let t = Instant::now();
                let hits = memory.search(q, &o).await?;
                lat.push(t.elapsed());
                let want = &truth[case][qi];
                found += hits
                    .iter()
                    .filter(|h| id_of.get(&h.id).is_some_and(|i| want.contains(i)))
                    .count();
            }
            let total: Duration = lat.iter().sum();
            lat.sort();
            ours.insert(
                (case.to_string(), ef),
                Point {
                    qps: queries.len() as f64 / total.as_secs_f64(),
                    p50_ms: percentile(&lat, 0.5),
                    p99_ms: percentile(&lat, 0.99),
                    recall: found as f64 / (queries.len() * K) as f64,
                },
            );
        }
    }
    // Disk after the load, by part, once a checkpoint has covered it.
    memory.checkpoint().await?;
    memory.close().await?;
    let part = |name: &str| dir_bytes(&store.path().join(name));
    let disk: Vec<(&str, u64)> = ["wal", "archive", "snapshots"]
        .into_iter()
        .map(|p| (p, part(p)))
        .collect();
    let load = if std::env::var_os("BENCH_SKIP_LOAD").is_some() {
        String::new()
    } else {
        under_load(store.path(), config, &queries, &vectors, &texts).await?
    };
    if std::env::var_os("BENCH_SKIP_HNSWLIB").is_some() {
        for ((case, ef), p) in &ours {
            println!(
                "{case} ef {ef}: {:.0} QPS, p50 {:.3} ms, recall {:.4}",
                p.qps, p.p50_ms, p.recall
            );
        }
        print!("{load}");
        return Ok(());
    }
    let (hnsw_build, theirs) = hnswlib(&dir, threads, &efs)?;

    println!(
        "# real-data search: {} vectors × {dim}, {} queries, one client thread, build on {threads}\n",
        vectors.len(),
        queries.len()
    );
    println!("| case | ef | ours QPS | p50 ms | p99 ms | recall@10 | hnswlib QPS | p50 ms | p99 ms | recall@10 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for case in CASES {
        for &ef in &efs {
            let o = ours[&(case.to_string(), ef)];
            let t = theirs.get(&(case.to_string(), ef));
            let t = t.map_or("| | | |".to_string(), |t| {
                format!(
                    "{:.0} | {:.3} | {:.3} | {:.4}",
                    t.qps, t.p50_ms, t.p99_ms, t.recall
                )
            });
            println!(
                "| {case} | {ef} | {:.0} | {:.3} | {:.3} | {:.4} | {t} |",
                o.qps, o.p50_ms, o.p99_ms, o.recall
            );
        }
    }
    println!("\n| case | recall ≥ | ours: best QPS (ef) | hnswlib: best QPS (ef) | ratio |\n|---|---:|---:|---:|---:|");
    for case in ["all", "f20", "f2"] {
        let pick = |m: &Points| -> BTreeMap<usize, Point> {
            m.iter()
                .filter(|((c, _), _)| c == case)
                .map(|((_, ef), p)| (*ef, *p))
                .collect()
        };
        let (o, t) = (pick(&ours), pick(&theirs));
        for target in [0.95, 0.99] {
            let show = |b: Option<(usize, Point)>| {
                b.map_or("not reached".to_string(), |(ef, p)| {
                    format!("{:.0} ({ef}, {:.3})", p.qps, p.recall)
                })
            };
            let (bo, bt) = (best_at(&o, target), best_at(&t, target));
            let ratio = match (bo, bt) {
                (Some((_, a)), Some((_, b))) => format!("{:.2}×", a.qps / b.qps),
                _ => "–".into(),
            };
            println!(
                "| {case} | {target} | {} | {} | {ratio} |",
                show(bo),
                show(bt)
            );
        }
    }
    println!(
        "\nbuild: ours {:.2} s acknowledged + {:.1} s indexing = {:.1} s; hnswlib add_items {:.1} s; ratio {:.2}×",
        acked.as_secs_f64(),
        (indexed - acked).as_secs_f64(),
        indexed.as_secs_f64(),
        hnsw_build,
        hnsw_build / indexed.as_secs_f64()
    );
    let total: u64 = disk.iter().map(|(_, b)| b).sum();
    println!(
        "disk after the load and a checkpoint: {:.0} MB, {:.0} bytes per record ({})",
        total as f64 / 1e6,
        total as f64 / vectors.len() as f64,
        disk.iter()
            .map(|(p, b)| format!(
                "{p} {:.0} MB, {:.0} B/record",
                *b as f64 / 1e6,
                *b as f64 / vectors.len() as f64
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    print!("{load}");
    Ok(())
}

/// Each query once over all layers at the store's default ef, on this thread: the sorted
/// latencies.
async fn timed(memory: &Memory, queries: &[Vec<f32>]) -> Result<Vec<Duration>> {
    let o = SearchOptions {
        record_access: false,
        ..SearchOptions::top_k(K)
    };
    let mut lat = Vec::with_capacity(queries.len());
    for q in queries {
        let t = Instant::now();
        memory.search(q, &o).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(lat)
}

/// Ours only, on the store just measured (reopened, its graph loaded): the queries on two
/// client threads against one, then search latency while the indexer takes in a batch of
/// `BUSY_BATCH` new records (the corpus's first vectors again, under new texts), against the
/// same store idle. Lines for the report.
async fn under_load(
    store: &Path,
    config: Config,
    queries: &[Vec<f32>],
    vectors: &[Vec<f32>],
    texts: &[String],
) -> Result<String> {
    const BUSY_BATCH: usize = 20_000;
    let memory = Memory::open(store, config).await?;
    memory.wait_indexed().await?;
    timed(&memory, queries).await?; // warm
    let t = Instant::now();
    let one = timed(&memory, queries).await?;
    let one_qps = queries.len() as f64 / t.elapsed().as_secs_f64();
    let handle = tokio::runtime::Handle::current();
    let t = Instant::now();
    let two: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..2)
            .map(|_| s.spawn(|| handle.block_on(timed(&memory, queries))))
            .collect();
        clients
            .into_iter()
            .map(|c| {
                c.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect()
    });
    let two_qps = 2.0 * queries.len() as f64 / t.elapsed().as_secs_f64();
    let mut both: Vec<Duration> = Vec::new();
    for lat in two {
        both.extend(lat?);
    }
    both.sort();
    let mut out = format!(
        "\n2 client threads (all layers, default ef): {two_qps:.0} QPS, p50 {:.3} ms, p99 {:.3} ms; \
         1 thread: {one_qps:.0} QPS, p50 {:.3} ms, p99 {:.3} ms ({:.2}×)\n",
        percentile(&both, 0.5),
        percentile(&both, 0.99),
        percentile(&one, 0.5),
        percentile(&one, 0.99),
        two_qps / one_qps
    );
    let batch = (0..BUSY_BATCH.min(vectors.len()))
        .map(|i| {
            NewRecord::new(format!("again {i}: {}", texts[i]), vectors[i].clone())
                .layer(layer_of(i))
                .project(project_of(i))
        })
        .collect();
    let t = Instant::now();
    memory.insert_batch(batch).await?;
    let acked = t.elapsed();
    let pending_at_ack = memory.stats().index.pending;
    let mut busy = Vec::new();
    while memory.stats().index.pending > 0 && t.elapsed() < Duration::from_secs(120) {
        busy.extend(timed(&memory, queries).await?);
    }
    let searching = t.elapsed();
    memory.wait_indexed().await?;
    let indexed = t.elapsed();
    busy.sort();
    if busy.is_empty() {
        out.push_str("search while indexing: the batch was indexed before a query ran\n");
    } else {
        out.push_str(&format!(
            "search while indexing {BUSY_BATCH} new records (acknowledged in {:.2} s, {pending_at_ack} \
             pending then, indexed after {:.1} s): {} queries in {:.1} s, p50 {:.3} ms, p99 {:.3} ms; \
             idle p99 {:.3} ms ({:.2}×)\n",
            acked.as_secs_f64(),
            indexed.as_secs_f64(),
            busy.len(),
            searching.as_secs_f64(),
            percentile(&busy, 0.5),
            percentile(&busy, 0.99),
            percentile(&one, 0.99),
            percentile(&busy, 0.99) / percentile(&one, 0.99),
        ));
    }
    memory.close().await?;
    Ok(out)
}
