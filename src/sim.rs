//! A seeded simulation of an agent's working life, through the real [`Memory`] API with a
//! [`ManualClock`]: weeks of sessions in seconds. It drives the promoter evaluation
//! ([`Memory::evaluate_promoters`]), the lifecycle tests and the report command
//! (`cargo run --release --example promoter_report`).
//!
//! The workload, per day, `sessions_per_day` sessions:
//! * **Recurring topics** (`recurring_topics`): each is active for 5–20 days from a random
//!   start day, and revisited in a session with probability 0.35 / period (period 1–3 days).
//!   A visit stores 3–8 records near one of the topic's 4 sub-topics, then runs 1–3 searches
//!   aimed at sub-topics: later sessions find records stored earlier.
//! * **One-off topics**: with probability 0.6 a session also works on a fresh topic it never
//!   returns to: 4–10 records and a burst of 4–10 searches (debugging something once).
//! * **Ratings**: after a search, with probability 0.15 the agent rates the top hit,
//!   uniformly in 0.4–1.0 whatever the topic.
//! * Kinds `message` (60 %), `note` (25 %), `code` (15 %); 30 % of records refer to an
//!   earlier record of their topic. Every operation advances the clock by 1–3 minutes;
//!   accesses are flushed at the end of each session.
//!
//! It was written to model an agent that keeps coming back to some projects and debugs other
//! things once; that choice decides what is predictable. In it a burst of reads in one
//! session says nothing about later use, so access counts rank those bursts first and do
//! worse than chance (see docs/benchmarks.md); a workload where reads do recur would favour
//! the count-based baselines more.

use crate::error::Result;
use crate::types::{Layer, NewRecord, RecordId, SearchOptions};
use crate::Memory;
use magray_wal::ManualClock;

/// Shape of the simulated workload.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed: the same seed gives the same history.
    pub seed: u64,
    /// Days simulated.
    pub days: u32,
    /// Sessions per day (2 hours apart from 08:00).
    pub sessions_per_day: u32,
    /// Recurring topics over the whole run.
    pub recurring_topics: u32,
    /// Vector dimension (the store's `Config::dimension` must match).
    pub dim: usize,
    /// Clock time of day 0, 00:00 (µs).
    pub start_us: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            days: 35,
            sessions_per_day: 6,
            recurring_topics: 24,
            dim: 32,
            // 2026-01-05 00:00 UTC
            start_us: 1_767_571_200_000_000,
        }
    }
}

/// What a simulation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Sessions played.
    pub sessions: u64,
    /// Records stored.
    pub records: u64,
    /// Searches run.
    pub searches: u64,
    /// Search hits (accesses).
    pub hits: u64,
    /// Ratings given.
    pub ratings: u64,
    /// Clock time at the end (µs).
    pub end_us: u64,
}

/// SplitMix64: small, fast and stable across versions (a simulation must replay exactly).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(1e-12);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// A random unit vector.
    pub fn unit(&mut self, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| self.normal() as f32).collect();
        unit(v)
    }
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// `base + scale · (random unit vector)`, normalised.
fn near(rng: &mut Rng, base: &[f32], scale: f32) -> Vec<f32> {
    let noise = rng.unit(base.len());
    unit(base.iter().zip(noise).map(|(b, n)| b + scale * n).collect())
}

struct Topic {
    id: u32,
    project: String,
    subtopics: Vec<Vec<f32>>,
    first_day: u32,
    last_day: u32,
    period: u32,
    records: Vec<RecordId>,
}

const WORDS: [&str; 16] = [
    "build",
    "cache",
    "index",
    "query",
    "deploy",
    "schema",
    "token",
    "latency",
    "retry",
    "budget",
    "vector",
    "config",
    "migration",
    "review",
    "failure",
    "design",
];

const MINUTE: u64 = 60_000_000;
const HOUR: u64 = 60 * MINUTE;

/// Plays the workload into `memory`, whose config must use `clock` and `cfg.dim`.
pub async fn run(memory: &Memory, clock: &ManualClock, cfg: &SimConfig) -> Result<SimSummary> {
    let mut rng = Rng::new(cfg.seed);
    let mut sum = SimSummary::default();
    let projects = ["atlas", "beacon", "cobalt"];
    let topic = |rng: &mut Rng, id: u32, first_day: u32, last_day: u32, period: u32| {
        let centre = rng.unit(cfg.dim);
        Topic {
            id,
            project: projects[rng.range(0, 2) as usize].to_string(),
            subtopics: (0..4).map(|_| near(rng, &centre, 0.5)).collect(),
            first_day,
            last_day,
            period,
            records: Vec::new(),
        }
    };
    let mut recurring: Vec<Topic> = (0..cfg.recurring_topics)
        .map(|i| {
            let first = rng.range(0, (u64::from(cfg.days) * 6 / 10).max(1)) as u32;
            let life = rng.range(5, 20) as u32;
            let period = rng.range(1, 3) as u32;
            topic(&mut rng, i, first, first + life, period)
        })
        .collect();
    let mut next_topic = cfg.recurring_topics;
    let mut serial = 0u64;
    for day in 0..cfg.days {
        for s in 0..cfg.sessions_per_day {
            let t0 = cfg.start_us
                + u64::from(day) * 24 * HOUR
                + 8 * HOUR
                + u64::from(s) * 2 * HOUR
                + rng.range(0, 30) * MINUTE;
            clock.set_us(t0.max(clock_now(clock)));
            let session = format!("d{day}-s{s}");
            sum.sessions += 1;
            let mut visits: Vec<(usize, bool)> = Vec::new();
            for (i, t) in recurring.iter().enumerate() {
                if (t.first_day..=t.last_day).contains(&day)
                    && rng.chance(0.35 / f64::from(t.period))
                {
                    visits.push((i, true));
                }
            }
            let mut one_off = None;
            if rng.chance(0.6) {
                one_off = Some(topic(&mut rng, next_topic, day, day, 1));
                next_topic += 1;
            }
            if one_off.is_some() {
                visits.push((usize::MAX, false));
            }
            for (i, is_recurring) in visits {
                let t: &mut Topic = if is_recurring {
                    &mut recurring[i]
                } else {
                    match one_off.as_mut() {
                        Some(t) => t,
                        None => continue,
                    }
                };
                let n = if is_recurring {
                    rng.range(3, 8)
                } else {
                    rng.range(4, 10)
                };
                let mut batch = Vec::new();
                for _ in 0..n {
                    serial += 1;
                    let sub = rng.range(0, 3) as usize;
                    let words: Vec<&str> = (0..rng.range(6, 40))
                        .map(|_| WORDS[rng.range(0, 15) as usize])
                        .collect();
                    let kind = match rng.range(0, 19) {
                        0..=11 => "message",
                        12..=16 => "note",
                        _ => "code",
                    };
                    let mut r = NewRecord::new(
                        format!("[{serial}] topic {} part {sub}: {}", t.id, words.join(" ")),
                        near(&mut rng, &t.subtopics[sub], 0.35),
                    )
                    .layer(Layer::Interact)
                    .kind(kind)
                    .project(t.project.clone())
                    .session(session.clone());
                    if !t.records.is_empty() && rng.chance(0.3) {
                        let j = rng.range(0, t.records.len() as u64 - 1) as usize;
                        r = r.refers_to(t.records[j]);
                    }
                    batch.push(r);
                }
                clock.advance_us(rng.range(1, 3) * MINUTE);
                let ids = memory.insert_batch(batch).await?;
                sum.records += ids.len() as u64;
                t.records.extend(ids);
                let searches = if is_recurring {
                    rng.range(1, 3)
                } else {
                    rng.range(4, 10)
                };
                for _ in 0..searches {
                    clock.advance_us(rng.range(1, 3) * MINUTE);
                    let sub = rng.range(0, 3) as usize;
                    let q = near(&mut rng, &t.subtopics[sub], 0.2);
                    let o = SearchOptions::top_k(5).asked_by(Some(&session), Some(&t.project));
                    let hits = memory.search(&q, &o).await?;
                    sum.searches += 1;
                    sum.hits += hits.len() as u64;
                    if let Some(top) = hits.first() {
                        if rng.chance(0.15) {
                            let rating = 0.4 + 0.6 * rng.f64() as f32;
                            memory.rate(top.id, rating).await?;
                            sum.ratings += 1;
                        }
                    }
                }
            }
            clock.advance_us(MINUTE);
            memory.flush_accesses().await?;
        }
    }
    sum.end_us = clock_now(clock);
    Ok(sum)
}

fn clock_now(clock: &ManualClock) -> u64 {
    use magray_wal::Clock;
    clock.now_us()
}
