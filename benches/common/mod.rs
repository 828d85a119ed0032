#![allow(dead_code, clippy::unwrap_used)]
//! Helpers shared by the engine benches: env-controlled sizes, the bench store config,
//! vectors that look like sentence embeddings, percentiles, and /proc figures.

use magray_memory::{Config, Layer, NewRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;

/// Embedding dimension (all-MiniLM-L6-v2).
pub const DIM: usize = 384;
/// Topic centres of the synthetic corpus.
pub const CLUSTERS: usize = 1_000;
/// L2 norm of the noise added to a unit centre: a vector's cosine to its centre is about
/// 1/sqrt(1 + NOISE²) ≈ 0.80 and two vectors of one topic have cosine ≈ 0.64, unrelated
/// ones ≈ 0 ± 0.05 (sentence-embedding-like: related texts ~0.5-0.8).
pub const NOISE: f32 = 0.75;
/// L2 norm of the perturbation that turns a stored vector into a query (cosine ≈ 0.96).
pub const QUERY_NOISE: f32 = 0.3;

/// `name` from the environment (underscores allowed: `100_000`), else `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
        Err(_) => default,
    }
}

/// A comma-separated list of numbers from the environment, else `default`.
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_string());
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
        })
        .collect()
}

/// Whether to skip criterion and print only the report (`BENCH_REPORT_ONLY=1`).
pub fn report_only() -> bool {
    std::env::var_os("BENCH_REPORT_ONLY").is_some_and(|v| v != "0")
}

/// The runtime the benches drive the async API with (2 workers, like this machine).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The bench store's config: 384-d, no automatic checkpoints.
pub fn store_config() -> Config {
    Config {
        dimension: DIM,
        checkpoint_every: 0,
        checkpoint_interval: Duration::ZERO,
        ..Config::default()
    }
}

/// One standard normal sample (Box-Muller).
pub fn gauss(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Scales `v` to unit length in place.
pub fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

/// Deterministic sentence-embedding-like vectors: `CLUSTERS` random unit centres, each
/// vector a centre (picked uniformly) plus isotropic gaussian noise of norm ≈ `NOISE`,
/// L2-normalised.
#[derive(Debug)]
pub struct Embedder {
    pub rng: StdRng,
    centres: Arc<Vec<f32>>,
}

impl Embedder {
    pub fn new(seed: u64) -> Embedder {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut centres: Vec<f32> = (0..CLUSTERS * DIM).map(|_| gauss(&mut rng)).collect();
        for c in centres.chunks_exact_mut(DIM) {
            normalise(c);
        }
        Embedder {
            rng,
            centres: Arc::new(centres),
        }
    }

    /// The same topics, another random stream (cheap: the centres are shared).
    pub fn fork(&self, seed: u64) -> Embedder {
        Embedder {
            rng: StdRng::seed_from_u64(seed),
            centres: self.centres.clone(),
        }
    }

    /// The next vector, appended to `out`.
    pub fn next_into(&mut self, out: &mut Vec<f32>) {
        let k = self.rng.random_range(0..CLUSTERS);
        let sigma = NOISE / (DIM as f32).sqrt();
        let start = out.len();
        for d in 0..DIM {
            let c = self.centres[k * DIM + d];
            out.push(c + sigma * gauss(&mut self.rng));
        }
        normalise(&mut out[start..]);
    }

    pub fn next_vector(&mut self) -> Vec<f32> {
        let mut v = Vec::with_capacity(DIM);
        self.next_into(&mut v);
        v
    }

    /// `n` vectors, flat (`n * DIM`).
    pub fn flat(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n * DIM);
        for _ in 0..n {
            self.next_into(&mut out);
        }
        out
    }

    /// `v` plus gaussian noise of norm ≈ `norm`, normalised.
    pub fn perturb(&mut self, v: &[f32], norm: f32) -> Vec<f32> {
        let sigma = norm / (v.len() as f32).sqrt();
        let mut q: Vec<f32> = v.iter().map(|x| x + sigma * gauss(&mut self.rng)).collect();
        normalise(&mut q);
        q
    }
}

/// A record text of about 160 bytes (unique per `i`; the engine dedups equal texts).
pub fn text(tag: &str, i: usize) -> String {
    format!(
        "{tag} record {i}: the quick brown fox jumps over the lazy dog while the agent \
         notes what it learned about the build, the tests and the deploy step"
    )
}

/// A record in the Assets layer.
pub fn record(tag: &str, i: usize, v: Vec<f32>) -> NewRecord {
    NewRecord::new(text(tag, i), v)
        .layer(Layer::Assets)
        .kind("doc")
}

/// Dot product (auto-vectorised).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ra) = a.as_chunks::<16>();
    let (cb, rb) = b.as_chunks::<16>();
    let mut acc = [0f32; 16];
    for (x, y) in ca.iter().zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

/// Exact top-`k` (by dot product, best first) of every query over the flat `data`, on all
/// cores; queries are processed in blocks so each pass over `data` serves several.
pub fn exact_top_k(data: &[f32], queries: &[Vec<f32>], k: usize) -> Vec<Vec<u32>> {
    const BLOCK: usize = 16;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let per = queries.len().div_ceil(threads).max(1);
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); queries.len()];
    std::thread::scope(|s| {
        for (qs, outs) in queries.chunks(per).zip(out.chunks_mut(per)) {
            s.spawn(move || {
                for (qb, ob) in qs.chunks(BLOCK).zip(outs.chunks_mut(BLOCK)) {
                    let mut tops: Vec<Vec<(f32, u32)>> = vec![Vec::with_capacity(k + 1); qb.len()];
                    for (i, row) in data.chunks_exact(DIM).enumerate() {
                        for (q, top) in qb.iter().zip(tops.iter_mut()) {
                            let s = dot(q, row);
                            if top.len() < k || s > top[top.len() - 1].0 {
                                let at = top.partition_point(|(t, _)| *t >= s);
                                top.insert(at, (s, i as u32));
                                top.truncate(k);
                            }
                        }
                    }
                    for (top, o) in tops.into_iter().zip(ob.iter_mut()) {
                        *o = top.into_iter().map(|(_, i)| i).collect();
                    }
                }
            });
        }
    });
    out
}

/// The `p` quantile (0..=1) of `v` (sorts it).
pub fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A `Vm*` field of /proc/self/status, in KiB.
pub fn proc_status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Bytes as MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Criterion settings shared by the engine benches: few samples, short windows (the heavy
/// store building happens once, outside the timed closures).
pub fn criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .configure_from_args()
}
