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
//! That is [`Workload::Original`], written beside the learned model's features: a burst of
//! reads in one session says nothing about later use, so access counts rank those bursts
//! first and do worse than chance; ratings are noise; and a record's text carries its topic
//! id (one-off ids have more digits, a channel `text_chars` can see). The other families
//! change one of those choices each ([`Workload`]), so a promoter is also judged on
//! workloads it was not shaped on.

use crate::error::Result;
use crate::types::{Layer, NewRecord, RecordId, SearchOptions};
use crate::Memory;
use magray_wal::ManualClock;

/// A family of workloads: what differs from [`Workload::Original`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Workload {
    /// The workload the learned promoter was designed beside (above): one-off bursts never
    /// recur, ratings are uniform noise, texts carry `[serial] topic <id> part <n>:`.
    #[default]
    Original,
    /// As `Original`, but a text is only its words: no serial, topic id or part.
    NoTopicIds,
    /// Bursts recur: a one-off topic comes back 1–3 times within the next 1–6 days, each
    /// time with 1–4 new records and another burst of 4–10 searches. Reads in a burst now
    /// predict later reads. No topic ids in text.
    RecurringBursts,
    /// Ratings carry signal: a top hit of a recurring topic is rated 0.6–1.0, one of a
    /// one-off topic 0.0–0.5 (still on 15 % of searches). No topic ids in text.
    SignalRatings,
}

impl Workload {
    /// Every family, in report order.
    pub const ALL: [Workload; 4] = [
        Workload::Original,
        Workload::NoTopicIds,
        Workload::RecurringBursts,
        Workload::SignalRatings,
    ];

    /// Name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Original => "original",
            Workload::NoTopicIds => "no-topic-ids",
            Workload::RecurringBursts => "recurring-bursts",
            Workload::SignalRatings => "signal-ratings",
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload {s:?}; expected one of {}",
                    Workload::ALL.map(Workload::name).join(", ")
                )
            })
    }
}

/// The store settings every promoter evaluation on the simulation uses (the report command
/// and the tests share them, so a table reproduces exactly): manual lifecycle, exact search
/// (HNSW builds concurrently, which would make a history depend on timing) and accesses
/// written only when the simulation flushes them.
pub fn store_config(clock: &ManualClock, dim: usize) -> crate::Config {
    crate::Config {
        dimension: dim,
        clock: std::sync::Arc::new(clock.clone()),
        lifecycle: crate::LifecycleConfig::manual(),
        exact_search_below: usize::MAX,
        access_flush_interval: std::time::Duration::from_secs(24 * 3600),
        access_flush_hits: usize::MAX,
        ..crate::Config::default()
    }
}

/// The mean of `v` and the half-width of its 95 % confidence interval (Student's t with
/// `n − 1` degrees of freedom; NaN for fewer than two values): how the promoter report and
/// its test summarise seeds.
pub fn mean_ci95(v: &[f64]) -> (f64, f64) {
    // t quantile 0.975 for 1–30 degrees of freedom; 1.96 beyond.
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let t = T.get(v.len() - 2).copied().unwrap_or(1.96);
    (mean, t * (var / n).sqrt())
}

/// Shape of the simulated workload.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seed: the same seed gives the same history.
    pub seed: u64,
    /// Which family of workloads.
    pub workload: Workload,
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
            workload: Workload::Original,
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

/// What a session works on.
enum Visit {
    Recurring(usize),
    OneOff,
    /// A one-off topic coming back ([`Workload::RecurringBursts`]).
    Return(usize),
}

/// Plays the workload into `memory`, whose config must use `clock` and `cfg.dim`
/// ([`store_config`]).
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
    // Bursts that come back: the topic and its (day, session) returns, soonest last.
    let mut returning: Vec<(Topic, Vec<(u32, u32)>)> = Vec::new();
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
            let mut visits: Vec<Visit> = Vec::new();
            for (i, t) in recurring.iter().enumerate() {
                if (t.first_day..=t.last_day).contains(&day)
                    && rng.chance(0.35 / f64::from(t.period))
                {
                    visits.push(Visit::Recurring(i));
                }
            }
            for (i, (_, returns)) in returning.iter().enumerate() {
                if returns.last() == Some(&(day, s)) {
                    visits.push(Visit::Return(i));
                }
            }
            let mut one_off = None;
            if rng.chance(0.6) {
                one_off = Some(topic(&mut rng, next_topic, day, day, 1));
                next_topic += 1;
                visits.push(Visit::OneOff);
            }
            for visit in visits {
                let is_recurring = matches!(visit, Visit::Recurring(_));
                let t: &mut Topic = match visit {
                    Visit::Recurring(i) => &mut recurring[i],
                    Visit::Return(i) => {
                        returning[i].1.pop();
                        &mut returning[i].0
                    }
                    Visit::OneOff => match one_off.as_mut() {
                        Some(t) => t,
                        None => continue,
                    },
                };
                let n = match visit {
                    Visit::Recurring(_) => rng.range(3, 8),
                    Visit::OneOff => rng.range(4, 10),
                    Visit::Return(_) => rng.range(1, 4),
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
                    let text = if cfg.workload == Workload::Original {
                        format!("[{serial}] topic {} part {sub}: {}", t.id, words.join(" "))
                    } else {
                        words.join(" ")
                    };
                    let mut r = NewRecord::new(text, near(&mut rng, &t.subtopics[sub], 0.35))
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
                            let r = rng.f64() as f32;
                            let rating = match (cfg.workload, is_recurring) {
                                (Workload::SignalRatings, true) => 0.6 + 0.4 * r,
                                (Workload::SignalRatings, false) => 0.5 * r,
                                _ => 0.4 + 0.6 * r,
                            };
                            memory.rate(top.id, rating).await?;
                            sum.ratings += 1;
                        }
                    }
                }
            }
            if let Some(t) = one_off {
                if cfg.workload == Workload::RecurringBursts {
                    let mut returns: Vec<(u32, u32)> = (0..rng.range(1, 3))
                        .map(|_| {
                            let d = day + rng.range(1, 6) as u32;
                            (d, rng.range(0, u64::from(cfg.sessions_per_day) - 1) as u32)
                        })
                        .collect();
                    // Soonest last (popped first); one return per session.
                    returns.sort_unstable_by(|a, b| b.cmp(a));
                    returns.dedup();
                    returning.push((t, returns));
                }
            }
            returning.retain(|(_, r)| !r.is_empty());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confidence_interval_matches_a_hand_worked_one() {
        // Mean 2.5, sample variance 5/3, standard error √(5/12) = 0.645497, t(3) = 3.182.
        let (m, hw) = mean_ci95(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m, 2.5);
        assert!((hw - 3.182 * (5.0f64 / 12.0).sqrt()).abs() < 1e-9, "{hw}");
        assert!(mean_ci95(&[1.0]).1.is_nan());
    }

    #[test]
    fn workload_names_round_trip() {
        for w in Workload::ALL {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
        }
        assert!("nope".parse::<Workload>().is_err());
    }
}
