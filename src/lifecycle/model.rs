//! The learned promoter: a logistic regression over standardised features (Newton's method
//! with an L2 penalty), then gradient-boosted depth-2 trees fitted to what it gets wrong
//! (thresholds and interactions a linear model cannot express: "read recently *and* in
//! several sessions"). Small, deterministic, and readable: the weights and the trees'
//! split features say what it learned.

use super::Signals;
use rkyv::{Archive, Deserialize, Serialize};

/// Names of the fixed features, in vector order. After them come one indicator per kind in
/// [`PromoterModel::kinds`].
pub const FEATURES: [&str; 21] = [
    "ln(1+count)",
    "ln(1+decayed_1h)",
    "ln(1+decayed_24h)",
    "ln(1+decayed_7d)",
    "ln(1+hours_since_access)",
    "never_accessed",
    "ln(1+age_hours)",
    "ln(1+hours_in_layer)",
    "ln(1+sessions)",
    "ln(1+projects)",
    "ln(1+mean_rank)",
    "mean_score",
    "rating",
    "rated",
    "ln(1+text_chars)",
    "ln(1+refs_in)",
    "cluster/16",
    "redundancy",
    "ln(1+cluster_sessions)",
    "ln(1+cluster_heat)",
    "centrality",
];

/// Kinds given their own indicator feature, at most (the most frequent in training).
const MAX_KINDS: usize = 8;

/// Why a model could not be trained.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The fit did not converge to finite parameters.
    #[error("training diverged (non-finite parameters); the current model is kept")]
    Diverged,
    /// Too little labelled history.
    #[error("not enough history: {samples} labelled samples ({positives} positive); need {need} with at least 10 of each label")]
    NotEnoughHistory {
        /// Samples found.
        samples: usize,
        /// Positives among them.
        positives: usize,
        /// Samples needed.
        need: usize,
    },
}

/// One depth-2 regression tree: `x[f0] ≤ t0` picks the left (`x[f1] ≤ t1`) or right
/// (`x[f2] ≤ t2`) node, which picks one of four leaves (LL, LR, RL, RR).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Tree {
    /// (feature, threshold) of the root, the left node and the right node.
    pub splits: [(u16, f64); 3],
    /// Leaf values (log-odds), already scaled by the learning rate.
    pub leaves: [f64; 4],
}

impl Tree {
    fn eval(&self, x: &[f64]) -> f64 {
        let go = |(f, t): (u16, f64)| x.get(f as usize).is_some_and(|v| *v <= t);
        let leaf = if go(self.splits[0]) {
            usize::from(!go(self.splits[1]))
        } else {
            2 + usize::from(!go(self.splits[2]))
        };
        self.leaves[leaf]
    }
}

/// Boosting rounds, learning rate, leaf L2 penalty, least samples per leaf, histogram bins.
const ROUNDS: usize = 120;
const LEARNING_RATE: f64 = 0.1;
const LEAF_LAMBDA: f64 = 1.0;
const MIN_LEAF: usize = 200;
const BINS: usize = 32;

/// The learned promoter: `p = σ(b + Σ wᵢ·(xᵢ − meanᵢ)/scaleᵢ + Σ trees(x))`, the probability
/// that a record is accessed again within `horizon_us`. Persisted in snapshots
/// (`promoter.bin`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PromoterModel {
    /// 0 for the built-in default; each training run makes the next version.
    pub version: u32,
    /// Kinds with an indicator feature.
    pub kinds: Vec<String>,
    /// Feature means (standardisation).
    pub mean: Vec<f64>,
    /// Feature scales (standardisation; 1 for constant features).
    pub scale: Vec<f64>,
    /// Weights, one per feature.
    pub weights: Vec<f64>,
    /// Intercept.
    pub bias: f64,
    /// Boosted trees over the raw features, added to the linear log-odds.
    pub trees: Vec<Tree>,
    /// The horizon its label used (µs).
    pub horizon_us: u64,
    /// Training samples and positives.
    pub samples: u64,
    /// Positives among `samples`.
    pub positives: u64,
    /// Last log sequence the training saw.
    pub trained_to_seq: u64,
}

impl Default for PromoterModel {
    /// The model used before enough history exists, on raw features: distinct sessions,
    /// recent use, references, the rating and a dense neighbourhood raise the score; long
    /// idleness and a near-duplicate already in the next layer lower it. A record read in
    /// three sessions within the last hour scores about 0.6; one never read, about 0.1.
    fn default() -> Self {
        let mut w = vec![0.0; FEATURES.len()];
        w[0] = 0.3; // count
        w[2] = 0.3; // decayed 24 h
        w[3] = 0.3; // decayed 7 d
        w[4] = -0.3; // hours since access
        w[8] = 1.0; // sessions
        w[9] = 0.3; // projects
        w[12] = 1.5; // rating
        w[15] = 0.5; // references in
        w[16] = 0.5; // cluster
        w[17] = -1.5; // redundancy
        PromoterModel {
            version: 0,
            kinds: Vec::new(),
            mean: vec![0.0; FEATURES.len()],
            scale: vec![1.0; FEATURES.len()],
            weights: w,
            bias: -2.0,
            trees: Vec::new(),
            horizon_us: 72 * 3_600_000_000,
            samples: 0,
            positives: 0,
            trained_to_seq: 0,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The feature vector of `s` for a model with these `kinds`.
pub(crate) fn features(s: &Signals, kinds: &[String]) -> Vec<f64> {
    let ln = |x: f64| x.max(0.0).ln_1p();
    let mut x = Vec::with_capacity(FEATURES.len() + kinds.len());
    x.push(ln(s.count as f64));
    x.extend(s.decayed.iter().map(|d| ln(*d)));
    x.push(ln(s.hours_since_access.unwrap_or(s.hours_in_layer)));
    x.push(if s.count == 0 { 1.0 } else { 0.0 });
    x.push(ln(s.age_hours));
    x.push(ln(s.hours_in_layer));
    x.push(ln(f64::from(s.sessions)));
    x.push(ln(f64::from(s.projects)));
    x.push(ln(s.mean_rank.unwrap_or(10.0)));
    x.push(s.mean_score.unwrap_or(0.0));
    x.push(f64::from(s.rating.unwrap_or(0.0)));
    x.push(if s.rating.is_some() { 1.0 } else { 0.0 });
    x.push(ln(s.text_chars as f64));
    x.push(ln(f64::from(s.refs_in)));
    x.push(f64::from(s.cluster) / 16.0);
    x.push(f64::from(s.redundancy));
    x.push(ln(f64::from(s.cluster_sessions)));
    x.push(ln(s.cluster_heat));
    x.push(f64::from(s.centrality));
    debug_assert_eq!(x.len(), FEATURES.len());
    x.extend(kinds.iter().map(|k| if *k == s.kind { 1.0 } else { 0.0 }));
    x
}

impl PromoterModel {
    /// Probability that the record is accessed again within the horizon.
    pub fn score(&self, s: &Signals) -> f64 {
        sigmoid(self.log_odds(&features(s, &self.kinds)))
    }

    fn linear(&self, x: &[f64]) -> f64 {
        self.bias
            + x.iter()
                .zip(&self.weights)
                .zip(self.mean.iter().zip(&self.scale))
                .map(|((x, w), (m, sc))| w * (x - m) / sc)
                .sum::<f64>()
    }

    fn log_odds(&self, x: &[f64]) -> f64 {
        self.linear(x) + self.trees.iter().map(|t| t.eval(x)).sum::<f64>()
    }

    /// Names of every feature this model uses (fixed ones, then kinds), with their weights.
    pub fn explain(&self) -> Vec<(String, f64)> {
        FEATURES
            .iter()
            .map(|f| f.to_string())
            .chain(self.kinds.iter().map(|k| format!("kind={k}")))
            .zip(self.weights.iter().copied())
            .collect()
    }

    /// Fits a model to labelled samples (one model serves both steps, with a threshold per
    /// step). Needs `min_samples` samples with at least 10 of each label.
    pub fn train(
        samples: &[(Signals, bool)],
        min_samples: usize,
        version: u32,
        horizon_us: u64,
        trained_to_seq: u64,
    ) -> Result<PromoterModel, TrainError> {
        let positives = samples.iter().filter(|(_, y)| *y).count();
        if samples.len() < min_samples.max(20) || positives < 10 || samples.len() - positives < 10 {
            return Err(TrainError::NotEnoughHistory {
                samples: samples.len(),
                positives,
                need: min_samples.max(20),
            });
        }
        // Kinds: the most frequent, ties by name, so the same samples give the same model.
        let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
        for (s, _) in samples {
            *counts.entry(s.kind.as_str()).or_default() += 1;
        }
        let mut kinds: Vec<(&str, usize)> = counts.into_iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let kinds: Vec<String> = kinds
            .into_iter()
            .take(MAX_KINDS)
            .map(|(k, _)| k.to_string())
            .collect();
        let xs: Vec<Vec<f64>> = samples.iter().map(|(s, _)| features(s, &kinds)).collect();
        let ys: Vec<f64> = samples
            .iter()
            .map(|(_, y)| if *y { 1.0 } else { 0.0 })
            .collect();
        let d = xs[0].len();
        let n = xs.len() as f64;
        let mut mean = vec![0.0; d];
        for x in &xs {
            for (m, v) in mean.iter_mut().zip(x) {
                *m += v / n;
            }
        }
        let mut scale = vec![0.0; d];
        for x in &xs {
            for ((s, v), m) in scale.iter_mut().zip(x).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        for s in &mut scale {
            *s = if *s > 1e-12 { s.sqrt() } else { 1.0 };
        }
        let zs: Vec<Vec<f64>> = xs
            .iter()
            .map(|x| {
                x.iter()
                    .zip(&mean)
                    .zip(&scale)
                    .map(|((v, m), s)| (v - m) / s)
                    .collect()
            })
            .collect();
        // Newton-Raphson on the penalised log-likelihood; parameter 0 is the bias (unpenalised).
        let lambda = 1.0;
        let mut beta = vec![0.0; d + 1];
        let base = positives as f64 / n;
        beta[0] = (base / (1.0 - base)).ln();
        for _ in 0..50 {
            let mut grad = vec![0.0; d + 1];
            let mut hess = vec![vec![0.0; d + 1]; d + 1];
            for (z, y) in zs.iter().zip(&ys) {
                let eta = beta[0] + z.iter().zip(&beta[1..]).map(|(a, b)| a * b).sum::<f64>();
                let p = sigmoid(eta);
                let w = (p * (1.0 - p)).max(1e-9);
                let r = y - p;
                grad[0] += r;
                for i in 0..d {
                    grad[i + 1] += r * z[i];
                }
                hess[0][0] += w;
                for i in 0..d {
                    hess[0][i + 1] += w * z[i];
                    for j in i..d {
                        hess[i + 1][j + 1] += w * z[i] * z[j];
                    }
                }
            }
            for i in 1..=d {
                let (upper, lower) = hess.split_at_mut(i);
                for (j, row) in upper.iter().enumerate() {
                    lower[0][j] = row[i];
                }
            }
            for i in 1..=d {
                grad[i] -= lambda * beta[i];
                hess[i][i] += lambda;
            }
            let Some(step) = solve(hess, grad) else {
                break;
            };
            let mut change: f64 = 0.0;
            for (b, s) in beta.iter_mut().zip(&step) {
                *b += s;
                change = change.max(s.abs());
            }
            if change < 1e-8 {
                break;
            }
        }
        let mut model = PromoterModel {
            version,
            kinds,
            mean,
            scale,
            bias: beta[0],
            weights: beta[1..].to_vec(),
            trees: Vec::new(),
            horizon_us,
            samples: samples.len() as u64,
            positives: positives as u64,
            trained_to_seq,
        };
        model.trees = boost(&xs, &ys, &model);
        model.check().map_err(|_| TrainError::Diverged)?;
        Ok(model)
    }

    /// Checks the parameters are usable: one weight, mean and scale per feature, every number
    /// finite, tree splits on existing features. A model loaded from disk that fails this is
    /// not used.
    pub fn check(&self) -> Result<(), String> {
        let d = FEATURES.len() + self.kinds.len();
        if self.weights.len() != d || self.mean.len() != d || self.scale.len() != d {
            return Err(format!(
                "{} features but {} weights, {} means, {} scales",
                d,
                self.weights.len(),
                self.mean.len(),
                self.scale.len()
            ));
        }
        let finite = self
            .weights
            .iter()
            .chain(&self.mean)
            .chain(&self.scale)
            .chain(std::iter::once(&self.bias))
            .chain(self.trees.iter().flat_map(|t| t.leaves.iter()))
            .all(|x| x.is_finite());
        if !finite || self.scale.iter().any(|s| *s <= 0.0) {
            return Err("non-finite or non-positive parameters".into());
        }
        if self
            .trees
            .iter()
            .flat_map(|t| t.splits.iter())
            .any(|(f, t)| usize::from(*f) >= d || t.is_nan())
        {
            return Err("a tree splits on a feature the model does not have".into());
        }
        Ok(())
    }

    /// The model as a short text (for logs and `status`): the largest linear weights and
    /// the features the trees split on most.
    pub fn summary(&self) -> String {
        let names = self.explain();
        let mut top = names.clone();
        top.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
        let parts: Vec<String> = top
            .iter()
            .take(4)
            .map(|(n, w)| format!("{n} {w:+.2}"))
            .collect();
        let mut uses: std::collections::BTreeMap<usize, usize> = Default::default();
        for t in &self.trees {
            for (f, _) in t.splits {
                *uses.entry(f as usize).or_default() += 1;
            }
        }
        let mut uses: Vec<(usize, usize)> = uses.into_iter().collect();
        uses.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let splits: Vec<String> = uses
            .iter()
            .take(4)
            .filter_map(|(f, n)| names.get(*f).map(|(name, _)| format!("{name} ×{n}")))
            .collect();
        format!(
            "v{} ({} samples, {} positive); linear: {}; {} trees split on: {}",
            self.version,
            self.samples,
            self.positives,
            parts.join(", "),
            self.trees.len(),
            splits.join(", ")
        )
    }
}

/// Gradient boosting of depth-2 trees on the logistic loss, starting from the linear model's
/// log-odds. Features are cut into at most [`BINS`] quantile bins; each node takes the split
/// with the best second-order gain; leaves are Newton steps scaled by the learning rate.
fn boost(xs: &[Vec<f64>], ys: &[f64], linear: &PromoterModel) -> Vec<Tree> {
    let n = xs.len();
    let d = xs.first().map(Vec::len).unwrap_or(0);
    // Per feature: the cut points (x ≤ cut[k] ⇔ bin ≤ k) and each sample's bin.
    let mut cuts: Vec<Vec<f64>> = Vec::with_capacity(d);
    let mut bins: Vec<Vec<u8>> = Vec::with_capacity(d);
    for f in 0..d {
        let mut v: Vec<f64> = xs.iter().map(|x| x[f]).collect();
        v.sort_by(f64::total_cmp);
        let mut c: Vec<f64> = (1..BINS).map(|q| v[q * (n - 1) / BINS]).collect();
        c.dedup();
        if c.last().is_some_and(|l| *l >= v[n - 1]) {
            c.pop();
        }
        bins.push(
            xs.iter()
                .map(|x| c.partition_point(|cut| *cut < x[f]) as u8)
                .collect(),
        );
        cuts.push(c);
    }
    let mut f_cur: Vec<f64> = xs.iter().map(|x| linear.linear(x)).collect();
    let mut trees = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let (g, h): (Vec<f64>, Vec<f64>) = f_cur
            .iter()
            .zip(ys)
            .map(|(f, y)| {
                let p = sigmoid(*f);
                (y - p, (p * (1.0 - p)).max(1e-9))
            })
            .unzip();
        let all: Vec<u32> = (0..n as u32).collect();
        let leaf = |idx: &[u32]| {
            let (gs, hs) = idx.iter().fold((0.0, 0.0), |(a, b), i| {
                (a + g[*i as usize], b + h[*i as usize])
            });
            LEARNING_RATE * gs / (hs + LEAF_LAMBDA)
        };
        let split = |idx: &[u32]| -> Option<(u16, f64, Vec<u32>, Vec<u32>)> {
            let (gt, ht) = idx.iter().fold((0.0, 0.0), |(a, b), i| {
                (a + g[*i as usize], b + h[*i as usize])
            });
            let parent = gt * gt / (ht + LEAF_LAMBDA);
            let mut best: Option<(f64, usize, usize)> = None;
            for (f, fbins) in bins.iter().enumerate() {
                let nb = cuts[f].len() + 1;
                if nb < 2 {
                    continue;
                }
                let mut hist = vec![(0.0f64, 0.0f64, 0usize); nb];
                for i in idx {
                    let e = &mut hist[fbins[*i as usize] as usize];
                    e.0 += g[*i as usize];
                    e.1 += h[*i as usize];
                    e.2 += 1;
                }
                let (mut gl, mut hl, mut cl) = (0.0, 0.0, 0);
                for (k, e) in hist.iter().enumerate().take(nb - 1) {
                    gl += e.0;
                    hl += e.1;
                    cl += e.2;
                    let cr = idx.len() - cl;
                    if cl < MIN_LEAF || cr < MIN_LEAF {
                        continue;
                    }
                    let (gr, hr) = (gt - gl, ht - hl);
                    let gain = gl * gl / (hl + LEAF_LAMBDA) + gr * gr / (hr + LEAF_LAMBDA) - parent;
                    if gain > 1e-9 && best.is_none_or(|b| gain > b.0) {
                        best = Some((gain, f, k));
                    }
                }
            }
            let (_, f, k) = best?;
            let (l, r): (Vec<u32>, Vec<u32>) = idx
                .iter()
                .partition(|i| usize::from(bins[f][**i as usize]) <= k);
            Some((f as u16, cuts[f][k], l, r))
        };
        let Some((f0, t0, left, right)) = split(&all) else {
            break;
        };
        let mut splits = [(f0, t0), (0, f64::INFINITY), (0, f64::INFINITY)];
        let mut leaves = [0.0; 4];
        for (side, idx) in [left, right].into_iter().enumerate() {
            match split(&idx) {
                Some((f, t, a, b)) => {
                    splits[side + 1] = (f, t);
                    leaves[side * 2] = leaf(&a);
                    leaves[side * 2 + 1] = leaf(&b);
                }
                None => {
                    leaves[side * 2] = leaf(&idx);
                    leaves[side * 2 + 1] = leaves[side * 2];
                }
            }
        }
        let tree = Tree { splits, leaves };
        for (fc, x) in f_cur.iter_mut().zip(xs) {
            *fc += tree.eval(x);
        }
        trees.push(tree);
    }
    trees
}

/// Solves `a·x = b` by Gaussian elimination with partial pivoting; `None` if singular.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n).max_by(|i, j| a[*i][col].abs().total_cmp(&a[*j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        let (top, rest) = a.split_at_mut(col + 1);
        let pivot = &top[col];
        for (row, r) in rest.iter_mut().enumerate() {
            let f = r[col] / pivot[col];
            if f != 0.0 {
                for (x, p) in r[col..].iter_mut().zip(&pivot[col..]) {
                    *x -= f * p;
                }
                b[col + 1 + row] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| a[i][k] * x[k]).sum();
        x[i] = (b[i] - s) / a[i][i];
    }
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(count: u64, sessions: u32, rating: Option<f32>) -> Signals {
        Signals {
            count,
            hours_since_access: (count > 0).then_some(2.0),
            sessions,
            rating,
            ..crate::lifecycle::quiet_signals()
        }
    }

    #[test]
    fn training_learns_the_signal_that_predicts_the_label() {
        // The label follows distinct sessions, not the raw count: a learned model must put a
        // larger weight on sessions, and rank a many-session record above a bursty one.
        let mut samples = Vec::new();
        for i in 0..400u64 {
            let sessions = (i % 5) as u32;
            let count = (i * 7919) % 13;
            samples.push((sig(count, sessions, None), sessions >= 3));
        }
        let m = PromoterModel::train(&samples, 100, 1, 1, 0).expect("trains");
        assert!(m.score(&sig(2, 4, None)) > 0.8, "{}", m.summary());
        assert!(m.score(&sig(12, 1, None)) < 0.2, "{}", m.summary());
        // Deterministic: the same samples give the same model.
        assert_eq!(
            m,
            PromoterModel::train(&samples, 100, 1, 1, 0).expect("trains")
        );
    }

    #[test]
    fn too_little_history_is_a_clear_error() {
        let samples = vec![(sig(1, 1, None), true); 30];
        let e = PromoterModel::train(&samples, 100, 1, 1, 0).expect_err("30 samples are too few");
        assert!(e.to_string().contains("not enough history"), "{e}");
    }

    #[test]
    fn solve_matches_a_known_system() {
        let x = solve(vec![vec![2.0, 1.0], vec![1.0, 3.0]], vec![3.0, 5.0]).expect("solves");
        assert!(
            (x[0] - 0.8).abs() < 1e-12 && (x[1] - 1.4).abs() < 1e-12,
            "{x:?}"
        );
        assert!(solve(vec![vec![1.0, 2.0], vec![2.0, 4.0]], vec![1.0, 2.0]).is_none());
    }
}
