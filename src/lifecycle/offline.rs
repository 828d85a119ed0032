//! Labelled samples from history: replay the log into fresh projections, take every
//! candidate's [`Signals`] at regular sample times `t`, and label each with whether the
//! record was accessed again in `(t, t + horizon]`. The training run and the promoter
//! evaluation both use it, so a model is judged on exactly what it was trained on.

use super::model::features;
use super::{baselines, signals, Promoter, PromoterModel, Signals, FEATURES};
use crate::error::Result;
use crate::projection::Projections;
use crate::types::{Layer, RecordId};
use crate::util::fnv64;
use magray_wal::{Envelope, Event, Id};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// One labelled observation.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) id: Id,
    pub(crate) t_us: u64,
    pub(crate) signals: Signals,
    pub(crate) label: bool,
}

/// Replays events and collects samples.
pub(crate) struct Collector {
    proj: Projections,
    horizon_us: u64,
    every_us: u64,
    from_us: u64,
    /// Before `cap_until_us`, at most `cap` candidates per sample time (chosen by a hash of
    /// id and time, so the choice is stable); after it, all.
    cap: usize,
    cap_until_us: u64,
    /// Only records that entered their layer less than this long before `t` are candidates.
    window_us: u64,
    next_t: Option<u64>,
    samples: Vec<Sample>,
    open: HashMap<Id, Vec<usize>>,
    ef: usize,
    exact_below: usize,
    pub(crate) events: u64,
    pub(crate) last_ts_us: u64,
    pub(crate) last_seq: u64,
}

impl Collector {
    pub(crate) fn new(
        dim: usize,
        ttl_us: [u64; 3],
        horizon: Duration,
        every: Duration,
        from_us: u64,
    ) -> Collector {
        let mut proj = Projections::new(dim);
        proj.ttl_us = ttl_us;
        // Never searched through a graph: no tail codes.
        proj.index.tail.turn_off();
        Collector {
            proj,
            horizon_us: super::us(horizon),
            every_us: super::us(every).max(1),
            from_us,
            cap: usize::MAX,
            cap_until_us: 0,
            window_us: u64::MAX,
            next_t: None,
            samples: Vec::new(),
            open: HashMap::new(),
            ef: 64,
            exact_below: usize::MAX,
            events: 0,
            last_ts_us: 0,
            last_seq: 0,
        }
    }

    pub(crate) fn cap_per_time(mut self, cap: usize, until_us: u64) -> Collector {
        self.cap = cap.max(1);
        self.cap_until_us = until_us;
        self
    }

    pub(crate) fn window(mut self, window: Option<Duration>) -> Collector {
        self.window_us = window.map(super::us).unwrap_or(u64::MAX);
        self
    }

    pub(crate) fn push(&mut self, env: &Envelope) -> Result<()> {
        let next = *self.next_t.get_or_insert_with(|| {
            let start = env.ts_us.max(self.from_us);
            start.div_ceil(self.every_us) * self.every_us
        });
        let mut t = next;
        while env.ts_us > t {
            if t >= self.from_us {
                self.sample_at(t);
            }
            t += self.every_us;
        }
        self.next_t = Some(t);
        if let Event::Accessed(a) = &env.event {
            for hit in &a.hits {
                let Some(list) = self.open.get_mut(&hit.id) else {
                    continue;
                };
                let samples = &mut self.samples;
                let h = self.horizon_us;
                list.retain(|&i| {
                    let s = &mut samples[i];
                    if env.ts_us > s.t_us && env.ts_us <= s.t_us.saturating_add(h) {
                        s.label = true;
                    }
                    !s.label && s.t_us.saturating_add(h) > env.ts_us
                });
                if list.is_empty() {
                    self.open.remove(&hit.id);
                }
            }
        }
        self.proj.apply(env)?;
        self.events += 1;
        self.last_ts_us = self.last_ts_us.max(env.ts_us);
        self.last_seq = env.seq;
        Ok(())
    }

    fn sample_at(&mut self, t: u64) {
        let mut cands: Vec<u32> = [Layer::Interact, Layer::Insights]
            .iter()
            .flat_map(|l| self.proj.layers[l.index()].members.iter())
            .filter(|s| {
                self.proj.live(*s).is_some_and(|r| {
                    !self.proj.past_ttl(&r, t)
                        && t.saturating_sub(r.layer_since_us) < self.window_us
                })
            })
            .collect();
        cands.sort_unstable();
        if t < self.cap_until_us {
            // Every record read before is kept (the top of any ranking is made of them);
            // never-read records, much alike, are sampled down to `cap`.
            let (read, mut unread): (Vec<u32>, Vec<u32>) = cands
                .into_iter()
                .partition(|s| self.proj.live(*s).is_some_and(|r| r.stats().count > 0));
            if unread.len() > self.cap {
                // By slot, not id: ids carry the wall clock, and a replay of the same
                // history must choose the same samples.
                let key = |s: &u32| fnv64(&s.to_le_bytes()) ^ t.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                unread.sort_by_key(key);
                unread.truncate(self.cap);
            }
            cands = read;
            cands.extend(unread);
            cands.sort_unstable();
        }
        for slot in cands {
            let Some(sig) = signals(&self.proj, slot, t, Some((self.ef, self.exact_below))) else {
                continue;
            };
            let Some(id) = self.proj.live(slot).map(|r| r.id) else {
                continue;
            };
            self.open.entry(id).or_default().push(self.samples.len());
            self.samples.push(Sample {
                id,
                t_us: t,
                signals: sig,
                label: false,
            });
        }
    }

    /// The samples whose whole horizon lies within the history (the rest are unlabelled).
    pub(crate) fn finish(self) -> (Vec<Sample>, u64, u64) {
        let end = self.last_ts_us;
        let h = self.horizon_us;
        let samples = self
            .samples
            .into_iter()
            .filter(|s| s.t_us.saturating_add(h) <= end)
            .collect();
        (samples, self.events, self.last_seq)
    }
}

/// How to evaluate promoters on a store's history.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// Samples before this time (µs) train the learned model; samples at or after it are the
    /// held-out period the table is computed on. Training labels never look past it.
    pub split_us: u64,
    /// "Accessed again within" this long. Default 72 h.
    pub horizon: Duration,
    /// Time between sample points. Default 6 h.
    pub sample_every: Duration,
    /// The `k` of precision@k and recall@k. Default 10.
    pub k: usize,
    /// Never-read training candidates per sample point, at most (every read one is kept).
    /// Default 200.
    pub train_per_time: usize,
    /// Candidates are the records that entered Interact or Insights less than this long
    /// before the sample point: the ones a promoter must decide on before a 24 h TTL takes
    /// them. `None`: every live Interact and Insights record. Default 24 h.
    pub candidate_window: Option<Duration>,
    /// What a held-out candidate must be to count as a hit. Default
    /// [`EvalTarget::AccessedAgain`].
    pub target: EvalTarget,
}

/// What the held-out figures count as a right pick. Training always labels by what the
/// engine itself can see (an access within the horizon), as the live engine does.
#[derive(Debug, Clone, Default)]
pub enum EvalTarget {
    /// Accessed again within the horizon after the sample point.
    #[default]
    AccessedAgain,
    /// Needed within the horizon: the times each record is needed (for a benchmark with
    /// ground truth, such as the evidence turns of questions asked later). A record absent
    /// from the map is never needed.
    Needed(Arc<HashMap<RecordId, Vec<u64>>>),
}

impl EvalConfig {
    /// Defaults with the given split.
    pub fn split_at(split_us: u64) -> EvalConfig {
        EvalConfig {
            split_us,
            horizon: Duration::from_secs(72 * 3600),
            sample_every: Duration::from_secs(6 * 3600),
            k: 10,
            train_per_time: 200,
            candidate_window: Some(Duration::from_secs(24 * 3600)),
            target: EvalTarget::AccessedAgain,
        }
    }
}

/// One promoter's figures on the held-out period.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    /// Promoter name.
    pub promoter: String,
    /// Mean over sample points of |top k ∩ accessed again| / k.
    pub precision_at_k: f64,
    /// Mean over sample points with any positive of |top k ∩ accessed again| / |accessed again|.
    pub recall_at_k: f64,
}

/// The comparison table.
#[derive(Debug, Clone)]
pub struct EvalReport {
    /// k.
    pub k: usize,
    /// Horizon of the label.
    pub horizon: Duration,
    /// One row per promoter, learned first: `learned`, `memoryos`, `memoryos-segment`,
    /// `generative-agents`, `access-count`, `random` and `best-single-feature`.
    pub rows: Vec<EvalRow>,
    /// The feature `best-single-feature` ranks by, with its direction: the one of the learned
    /// model's [`FEATURES`] whose ranking scored the best precision@k on the training period.
    pub best_feature: String,
    /// What counted as a right pick on the held-out period, in words.
    pub label: String,
    /// Training samples and positives.
    pub train_samples: usize,
    /// Positives among the training samples.
    pub train_positives: usize,
    /// Held-out sample points.
    pub eval_points: usize,
    /// Mean candidates per held-out point.
    pub mean_candidates: f64,
    /// Fraction of held-out candidates accessed again (what a random pick scores).
    pub base_rate: f64,
    /// The model trained on the training period.
    pub model: PromoterModel,
}

impl EvalReport {
    /// The row of one promoter.
    pub fn row(&self, promoter: &str) -> Option<&EvalRow> {
        self.rows.iter().find(|r| r.promoter == promoter)
    }
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| promoter | precision@{k} | recall@{k} |\n|---|---:|---:|",
            k = self.k
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {:.3} | {:.3} |",
                r.promoter, r.precision_at_k, r.recall_at_k
            )?;
        }
        write!(
            f,
            "\nbest single feature (chosen on the training period): {}\n\
             label: {}; held-out points: {}; candidates per point: {:.0}; \
             base rate: {:.3}; training samples: {} ({} positive)\nmodel: {}",
            self.best_feature,
            self.label,
            self.eval_points,
            self.mean_candidates,
            self.base_rate,
            self.train_samples,
            self.train_positives,
            self.model.summary()
        )
    }
}

/// Replays `history`, trains the learned promoter on samples before the split and scores
/// every promoter on the held-out samples after it.
pub(crate) fn evaluate(
    history: impl Iterator<Item = Result<Envelope>>,
    dim: usize,
    ttl_us: [u64; 3],
    cfg: &EvalConfig,
) -> Result<EvalReport> {
    if !(1..=1000).contains(&cfg.k)
        || cfg.sample_every < std::time::Duration::from_secs(60)
        || cfg.horizon.is_zero()
    {
        return Err(crate::Error::InvalidInput(format!(
            "evaluation needs k within 1..=1000, sample_every of at least a minute and a \
             positive horizon (got k {}, sample_every {:?}, horizon {:?})",
            cfg.k, cfg.sample_every, cfg.horizon
        )));
    }
    let mut c = Collector::new(dim, ttl_us, cfg.horizon, cfg.sample_every, 0)
        .cap_per_time(cfg.train_per_time, cfg.split_us)
        .window(cfg.candidate_window);
    for env in history {
        c.push(&env?)?;
    }
    let (samples, _, last_seq) = c.finish();
    let h = super::us(cfg.horizon);
    let train: Vec<(Signals, bool)> = samples
        .iter()
        .filter(|s| s.t_us.saturating_add(h) <= cfg.split_us)
        .map(|s| (s.signals.clone(), s.label))
        .collect();
    let model = PromoterModel::train(&train, 100, 1, h, last_seq).map_err(|e| {
        crate::Error::InvalidInput(format!("training on the period before the split: {e}"))
    })?;
    let (best, best_feature) = best_single_feature(&samples, cfg, h);
    let mut held_out: Vec<Sample> = samples
        .into_iter()
        .filter(|s| s.t_us >= cfg.split_us)
        .collect();
    if let EvalTarget::Needed(needed) = &cfg.target {
        for s in &mut held_out {
            s.label = needed.get(&RecordId(s.id)).is_some_and(|times| {
                times
                    .iter()
                    .any(|t| *t > s.t_us && *t <= s.t_us.saturating_add(h))
            });
        }
    }
    let mut points: BTreeMap<u64, Vec<&Sample>> = Default::default();
    for s in &held_out {
        points.entry(s.t_us).or_default().push(s);
    }
    if points.is_empty() {
        return Err(crate::Error::InvalidInput(
            "no held-out sample points: the history after the split is shorter than the horizon"
                .into(),
        ));
    }
    let promoters = [
        Promoter::Learned,
        Promoter::MemoryOs,
        Promoter::MemoryOsSegment,
        Promoter::GenerativeAgents,
        Promoter::AccessCount,
    ];
    // Each point's signals, gathered once for every promoter's `score_set`.
    let point_signals: BTreeMap<u64, Vec<Signals>> = points
        .iter()
        .map(|(t, set)| (*t, set.iter().map(|s| s.signals.clone()).collect()))
        .collect();
    let mut rows: Vec<EvalRow> = promoters
        .iter()
        .map(|p| {
            let (precision_at_k, recall_at_k) = rank_points(&points, cfg.k, |t, _| {
                p.score_set(&model, &point_signals[&t])
            });
            EvalRow {
                promoter: p.name().to_string(),
                precision_at_k,
                recall_at_k,
            }
        })
        .collect();
    // Keyed by time and position (candidates come in slot order), not by id: ids carry the
    // wall clock, and the same history must give the same table.
    let (precision_at_k, recall_at_k) = rank_points(&points, cfg.k, |_, set| {
        set.iter()
            .enumerate()
            .map(|(i, s)| baselines::random(s.t_us.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64))
            .collect()
    });
    rows.push(EvalRow {
        promoter: "random".into(),
        precision_at_k,
        recall_at_k,
    });
    let (precision_at_k, recall_at_k) = rank_points(&points, cfg.k, |_, set| {
        set.iter().map(|s| best.score(&s.signals)).collect()
    });
    rows.push(EvalRow {
        promoter: "best-single-feature".into(),
        precision_at_k,
        recall_at_k,
    });
    let n_eval: usize = points.values().map(Vec::len).sum();
    let pos_eval = points.values().flatten().filter(|s| s.label).count();
    Ok(EvalReport {
        k: cfg.k,
        horizon: cfg.horizon,
        rows,
        best_feature,
        label: format!(
            "{} within {} h",
            match cfg.target {
                EvalTarget::AccessedAgain => "accessed again",
                EvalTarget::Needed(_) => "needed",
            },
            h / 3_600_000_000
        ),
        train_samples: train.len(),
        train_positives: train.iter().filter(|(_, y)| *y).count(),
        eval_points: points.len(),
        mean_candidates: n_eval as f64 / points.len() as f64,
        base_rate: pos_eval as f64 / n_eval.max(1) as f64,
        model,
    })
}

/// Mean precision@k over the points and mean recall@k over the points with any positive,
/// ranking each point's candidates by `score` (best first; ties keep the older record first).
fn rank_points(
    points: &BTreeMap<u64, Vec<&Sample>>,
    k: usize,
    score: impl Fn(u64, &[&Sample]) -> Vec<f64>,
) -> (f64, f64) {
    let (mut prec, mut rec, mut rec_n) = (0.0, 0.0, 0usize);
    for (t, cands) in points {
        let mut scored: Vec<(f64, usize)> = score(*t, cands).into_iter().zip(0..).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let hits = scored
            .iter()
            .take(k)
            .filter(|(_, i)| cands[*i].label)
            .count();
        let pos = cands.iter().filter(|s| s.label).count();
        prec += hits as f64 / k as f64;
        if pos > 0 {
            rec += hits as f64 / pos as f64;
            rec_n += 1;
        }
    }
    (
        prec / points.len().max(1) as f64,
        if rec_n > 0 { rec / rec_n as f64 } else { 0.0 },
    )
}

/// One feature of the learned model, used alone: `direction · x[feature]`.
struct SingleFeature {
    feature: usize,
    direction: f64,
}

impl SingleFeature {
    fn score(&self, s: &Signals) -> f64 {
        self.direction * features(s, &[])[self.feature]
    }
}

/// The strongest single feature: of the learned model's [`FEATURES`], each ranking high or
/// low first, the one with the best precision@k on the training period (the same samples
/// the model is fitted on, labels that never look past the split).
fn best_single_feature(samples: &[Sample], cfg: &EvalConfig, h: u64) -> (SingleFeature, String) {
    let mut points: BTreeMap<u64, Vec<&Sample>> = Default::default();
    for s in samples
        .iter()
        .filter(|s| s.t_us.saturating_add(h) <= cfg.split_us)
    {
        points.entry(s.t_us).or_default().push(s);
    }
    // Each sample's feature vector, computed once for all 42 rankings.
    let point_features: BTreeMap<u64, Vec<Vec<f64>>> = points
        .iter()
        .map(|(t, set)| (*t, set.iter().map(|s| features(&s.signals, &[])).collect()))
        .collect();
    let mut best = (f64::NEG_INFINITY, 0, 1.0);
    for feature in 0..FEATURES.len() {
        for direction in [1.0, -1.0] {
            let (p, _) = rank_points(&points, cfg.k, |t, _| {
                point_features[&t]
                    .iter()
                    .map(|x| direction * x[feature])
                    .collect()
            });
            if p > best.0 {
                best = (p, feature, direction);
            }
        }
    }
    let (_, feature, direction) = best;
    let name = format!(
        "{} {} first",
        FEATURES[feature],
        if direction > 0.0 { "high" } else { "low" }
    );
    (SingleFeature { feature, direction }, name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::lifecycle::quiet_signals;

    fn sample(t_us: u64, slot: u8, sessions: u32, count: u64, label: bool) -> Sample {
        Sample {
            id: [slot; 16],
            t_us,
            signals: Signals {
                sessions,
                count,
                ..quiet_signals()
            },
            label,
        }
    }

    #[test]
    fn precision_and_recall_at_k_match_a_hand_worked_ranking() {
        // Point 1: scores 4, 3, 2, 1 with labels T F T F; k = 2 keeps the first two: 1 hit,
        // precision 1/2, recall 1/2. Point 2: labels F F F F: precision 0, no recall term.
        let a = [
            sample(1, 0, 0, 4, true),
            sample(1, 1, 0, 3, false),
            sample(1, 2, 0, 2, true),
            sample(1, 3, 0, 1, false),
        ];
        let b = [
            sample(2, 0, 0, 1, false),
            sample(2, 1, 0, 2, false),
            sample(2, 2, 0, 3, false),
            sample(2, 3, 0, 4, false),
        ];
        let mut points: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
        points.insert(1, a.iter().collect());
        points.insert(2, b.iter().collect());
        let (p, r) = rank_points(&points, 2, |_, set| {
            set.iter().map(|s| s.signals.count as f64).collect()
        });
        assert_eq!((p, r), ((0.5 + 0.0) / 2.0, 0.5));
    }

    #[test]
    fn the_best_single_feature_is_the_one_whose_ranking_predicts_the_label() {
        // Labels follow distinct sessions exactly; a low access count marks the positives
        // and as many negatives: sessions, high first, is the best single feature
        // (precision@5 1.0 against 0.6 for count, low first).
        let mut samples = Vec::new();
        for t in 0..6u64 {
            for i in 0..20u8 {
                let positive = i % 4 == 0;
                let sessions = if positive { 3 } else { 1 };
                let count = if i % 4 <= 1 { 1 } else { 5 };
                samples.push(sample(t * 3_600_000_000, i, sessions, count, positive));
            }
        }
        let cfg = EvalConfig {
            k: 5,
            ..EvalConfig::split_at(u64::MAX)
        };
        let (f, name) = best_single_feature(&samples, &cfg, 1);
        assert_eq!(FEATURES[f.feature], "ln(1+sessions)", "{name}");
        assert_eq!(f.direction, 1.0, "{name}");
        assert_eq!(name, "ln(1+sessions) high first");
    }

    #[test]
    fn every_baseline_scores_a_set_in_order() {
        // Access count is the count; the set scorers keep the candidates' order.
        let set: Vec<Signals> = (0..4)
            .map(|c| Signals {
                count: c,
                ..quiet_signals()
            })
            .collect();
        let model = PromoterModel::default();
        assert_eq!(
            Promoter::AccessCount.score_set(&model, &set),
            vec![0.0, 1.0, 2.0, 3.0]
        );
        for p in [
            Promoter::Learned,
            Promoter::MemoryOs,
            Promoter::MemoryOsSegment,
            Promoter::GenerativeAgents,
        ] {
            assert_eq!(p.score_set(&model, &set).len(), set.len(), "{p:?}");
        }
    }
}
