//! The published promoters the learned one is compared with, each as its source defines it.
//! Some normalise or group across the candidates, so every scorer takes the whole candidate
//! set (one layer in a lifecycle run, one sample point in an evaluation) and returns one
//! score per candidate, in order.

use super::Signals;
use crate::util::fnv64;
use std::collections::HashMap;

/// Generative Agents' weights for recency, relevance and importance: `gw = [0.5, 3, 2]` in
/// the authors' released code (`reverie/backend_server/persona/cognitive_modules/retrieve.py`,
/// `new_retrieve`). The paper (§4.1) writes the sum with every α set to 1.
pub const GA_WEIGHTS: [f64; 3] = [0.5, 3.0, 2.0];
/// Generative Agents' recency decay per hour since the memory was last retrieved (§4.1).
pub const GA_DECAY: f64 = 0.995;

/// Generative Agents' three components of one memory, before normalisation: recency
/// `0.995^hours since last retrieved` (since it entered its layer if never), relevance (the
/// paper's query cosine; a promoter has no query, so the mean similarity the record was
/// retrieved with) and importance (the paper asks an LLM for poignancy 1–10; here the user's
/// rating, 0 when unrated).
pub fn generative_agents_components(s: &Signals) -> [f64; 3] {
    let dh = s.hours_since_access.unwrap_or(s.hours_in_layer);
    [
        GA_DECAY.powf(dh),
        s.mean_score.unwrap_or(0.0).max(0.0),
        f64::from(s.rating.unwrap_or(0.0)),
    ]
}

/// Generative Agents (Park et al., "Generative Agents: Interactive Simulacra of Human
/// Behavior", UIST 2023, §4.1): `score = α_rec·recency + α_rel·relevance + α_imp·importance`,
/// where "we normalize the recency, relevance, and importance scores to the range of [0, 1]
/// by min-max scaling" across the candidate memories. A component equal for every candidate
/// normalises to 0.5, as the released code's `normalize_dict_floats` does.
pub fn generative_agents(set: &[Signals]) -> Vec<f64> {
    let comps: Vec<[f64; 3]> = set.iter().map(generative_agents_components).collect();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for c in &comps {
        for j in 0..3 {
            lo[j] = lo[j].min(c[j]);
            hi[j] = hi[j].max(c[j]);
        }
    }
    comps
        .iter()
        .map(|c| {
            (0..3)
                .map(|j| {
                    let range = hi[j] - lo[j];
                    let norm = if range > 0.0 {
                        (c[j] - lo[j]) / range
                    } else {
                        0.5
                    };
                    GA_WEIGHTS[j] * norm
                })
                .sum()
        })
        .collect()
}

/// MemoryOS's time constant of recency (hours): `R_recency = exp(−Δt/τ)`, τ = 24 h in the
/// released code (`memoryos-pypi/mid_term.py`, `compute_segment_heat`, `RECENCY_TAU_HOURS`).
pub const MEMORYOS_TAU_HOURS: f64 = 24.0;

/// MemoryOS heat (Kang et al., "Memory OS of AI Agent", EMNLP 2025, §3.3), read per record:
/// `Heat = α·N_visit + β·L_interaction + γ·R_recency` with α = β = γ = 1, `N_visit` the
/// record's access count, `L_interaction` the distinct sessions that used it and `Δt` the
/// hours since its last access (since it entered its layer if never).
pub fn memoryos_heat(s: &Signals) -> f64 {
    let dh = s.hours_since_access.unwrap_or(s.hours_in_layer);
    s.count as f64 + f64::from(s.sessions) + (-dh / MEMORYOS_TAU_HOURS).exp()
}

/// MemoryOS heat as the paper computes it, per segment (§3.3, Eq. 5): mid-term memory groups
/// dialogue pages into segments, and a segment's heat is `N_visit + L_interaction +
/// R_recency` (α = β = γ = 1): the times the segment was retrieved, the pages it holds and
/// `exp(−Δt/τ)` since its last visit. A segment here is the candidates stored in one session
/// (the pages of one dialogue); `N_visit` is the sum of its records' accesses (a search that
/// returns two pages of a segment counts twice: the store does not record it once per
/// segment), `L_interaction` its candidates and `Δt` the hours since any of them was last
/// read. A record without a session is a segment of its own. Every record scores its
/// segment's heat.
pub fn memoryos_segments(set: &[Signals]) -> Vec<f64> {
    #[derive(Default)]
    struct Seg {
        visits: f64,
        pages: f64,
        hours: f64,
    }
    let key = |i: usize, s: &Signals| match &s.session {
        Some(name) => (fnv64(name.as_bytes()), true),
        None => (i as u64, false),
    };
    let mut segs: HashMap<(u64, bool), Seg> = HashMap::new();
    for (i, s) in set.iter().enumerate() {
        let seg = segs.entry(key(i, s)).or_insert(Seg {
            hours: f64::INFINITY,
            ..Seg::default()
        });
        seg.visits += s.count as f64;
        seg.pages += 1.0;
        seg.hours = seg
            .hours
            .min(s.hours_since_access.unwrap_or(s.hours_in_layer));
    }
    set.iter()
        .enumerate()
        .map(|(i, s)| {
            let seg = &segs[&key(i, s)];
            seg.visits + seg.pages + (-seg.hours / MEMORYOS_TAU_HOURS).exp()
        })
        .collect()
}

/// A random ranking that is the same for the same key (record id and time): what picking
/// without looking scores, the base rate.
pub fn random(key: u64) -> f64 {
    // SplitMix64's finaliser: a well-mixed 53-bit fraction.
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(count: u64, since: Option<f64>, score: Option<f64>, rating: Option<f32>) -> Signals {
        Signals {
            count,
            hours_since_access: since,
            sessions: 1,
            projects: 1,
            mean_score: score,
            rating,
            text_chars: 10,
            ..crate::lifecycle::quiet_signals()
        }
    }

    #[test]
    fn generative_agents_normalises_each_component_across_the_candidates() {
        // Worked by hand. Recency: 0.995^0 = 1, 0.995^10 = 0.951110, 0.995^100 = 0.605770
        // → normalised 1, 0.875986, 0. Relevance 0.9, 0.5, 0.7 → 1, 0, 0.5. Importance
        // 0, 1, 0.5 → 0, 1, 0.5.
        let set = [
            sig(1, Some(0.0), Some(0.9), None),
            sig(1, Some(10.0), Some(0.5), Some(1.0)),
            sig(1, Some(100.0), Some(0.7), Some(0.5)),
        ];
        let got = generative_agents(&set);
        let r1 = (0.995f64.powi(10) - 0.995f64.powi(100)) / (1.0 - 0.995f64.powi(100));
        assert!((r1 - 0.875986).abs() < 1e-5, "{r1}");
        let want = [0.5 * 1.0 + 3.0, 0.5 * r1 + 2.0, 3.0 * 0.5 + 2.0 * 0.5];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}");
        }
        // Without normalisation recency would barely count: here the least recent record
        // ranks last although its raw score (0.30 + 2.1 + 1.0 = 3.40) beats the first's
        // (0.5 + 2.7 + 0 = 3.20).
        assert!(got[2] < got[0]);
    }

    #[test]
    fn a_constant_component_normalises_to_one_half() {
        let set = [sig(1, Some(5.0), None, None), sig(2, Some(5.0), None, None)];
        let got = generative_agents(&set);
        assert!(
            got.iter().all(|g| (g - (0.25 + 1.5 + 1.0)).abs() < 1e-12),
            "{got:?}"
        );
        assert!(generative_agents(&[]).is_empty());
    }

    #[test]
    fn memoryos_heat_per_record_and_per_segment() {
        // Per record: 3 visits + 1 session + exp(-24/24).
        let a = sig(3, Some(24.0), None, None);
        assert!((memoryos_heat(&a) - (3.0 + 1.0 + (-1.0f64).exp())).abs() < 1e-12);
        // Segments: s1 = {3 visits, 0 visits (never read, 10 h in layer)}, s2 = {1 visit,
        // 2 h ago}, and one record without a session (its own segment).
        let mut x = sig(3, Some(24.0), None, None);
        x.session = Some("s1".into());
        let mut y = sig(0, None, None, None);
        y.session = Some("s1".into());
        let mut z = sig(1, Some(2.0), None, None);
        z.session = Some("s2".into());
        let w = sig(0, None, None, None);
        let got = memoryos_segments(&[x, y, z, w]);
        let s1 = 3.0 + 2.0 + (-10.0f64 / 24.0).exp();
        let s2 = 1.0 + 1.0 + (-2.0f64 / 24.0).exp();
        let lone = 1.0 + (-10.0f64 / 24.0).exp();
        let want = [s1, s1, s2, lone];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn random_is_stable_and_uniform_enough() {
        assert_eq!(random(42), random(42));
        let mean = (0..10_000u64).map(random).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert!((0..1000u64).map(random).all(|x| (0.0..1.0).contains(&x)));
    }
}
