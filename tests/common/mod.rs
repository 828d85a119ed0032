#![allow(dead_code, clippy::unwrap_used)]
//! Shared helpers: vectors that look like sentence embeddings (clustered, normalised).

use magray_memory::{Config, NewRecord};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const DIM: usize = 32;

/// A config for small test stores: small dimension, no automatic checkpoints.
pub fn config() -> Config {
    Config {
        dimension: DIM,
        checkpoint_every: 0,
        checkpoint_interval: std::time::Duration::ZERO,
        exact_search_below: 64,
        ..Config::default()
    }
}

/// `n` unit vectors around `clusters` random centres.
pub fn clustered(seed: u64, n: usize, dim: usize, clusters: usize) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..clusters.max(1))
        .map(|_| unit((0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect()))
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            unit(
                c.iter()
                    .map(|x| x + rng.random_range(-0.35f32..0.35))
                    .collect(),
            )
        })
        .collect()
}

pub fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

pub fn record(i: usize, v: Vec<f32>) -> NewRecord {
    NewRecord::new(format!("record number {i}"), v)
}

/// [`record`] for each of `vs`, numbered from `first`.
pub fn records(first: usize, vs: &[Vec<f32>]) -> Vec<NewRecord> {
    vs.iter()
        .enumerate()
        .map(|(i, v)| record(first + i, v.clone()))
        .collect()
}

/// Copies a store (not its LOCK), e.g. to open the copy with `full_replay`.
pub fn copy_store(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_store(&e.path(), &dst);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// XORs `mask` into the byte of `path` at `at(file length)`.
pub fn flip_byte(path: &std::path::Path, at: impl Fn(usize) -> usize, mask: u8) {
    let mut b = std::fs::read(path).unwrap();
    let i = at(b.len());
    b[i] ^= mask;
    std::fs::write(path, b).unwrap();
}
