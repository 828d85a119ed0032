//! The engine side of the lifecycle: score candidates under short read locks, commit every
//! decision of a run as one log entry, train the promoter from the log, and schedule both by
//! the config's clock.

use super::Inner;
use super::*;
use crate::error::{Error, Result};
use crate::lifecycle::offline::Collector;
use crate::lifecycle::{signals, LifecycleReport, PromoterModel, TrainReport};
use crate::types::Layer;
use magray_wal::{Event, ExpiryReason, Id, Promotion};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Candidates scored per read-lock hold (writers apply between chunks; with the learned
/// promoter each costs two index searches, so a hold is a few milliseconds).
const SCORE_CHUNK: usize = 32;

struct Scored {
    id: Id,
    score: f64,
    past_ttl: bool,
    layer_since_us: u64,
}

/// The text of a panic payload.
pub(super) fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Inner {
    /// Runs `f`; a panic poisons the engine (every later call gets [`Error::Poisoned`] naming
    /// `what`) instead of dying silently.
    pub(super) fn catch<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("the {what} panicked: {}", panic_text(e.as_ref()));
                self.fail(why.clone());
                Err(Error::Poisoned(why))
            }
        }
    }

    pub(super) fn model(&self) -> Arc<PromoterModel> {
        self.model.read().clone()
    }

    fn score_layer(&self, layer: Layer, now: u64, model: &PromoterModel) -> Vec<Scored> {
        // Ascending slot order (the set iterates in it).
        let slots: Vec<u32> = self.state.read().layers[layer.index()]
            .members
            .iter()
            .collect();
        let promoter = &self.config.lifecycle.promoter;
        let neighbours = promoter
            .needs_neighbours()
            .then_some((self.config.hnsw.ef_search, self.config.exact_search_below));
        let mut out = Vec::with_capacity(slots.len());
        let mut sigs = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(SCORE_CHUNK) {
            let st = self.state.read();
            for &slot in chunk {
                let Some(r) = st.live(slot).filter(|r| r.layer == layer) else {
                    continue;
                };
                let (id, past_ttl, layer_since_us) = (r.id, st.past_ttl(&r, now), r.layer_since_us);
                if let Some(sig) = signals(&st, slot, now, neighbours) {
                    sigs.push(sig);
                    out.push(Scored {
                        id,
                        score: 0.0,
                        past_ttl,
                        layer_since_us,
                    });
                }
            }
        }
        // The whole layer is one candidate set (Generative Agents normalises across it,
        // MemoryOS per segment groups within it).
        for (s, score) in out.iter_mut().zip(promoter.score_set(model, &sigs)) {
            // A NaN score (a custom scorer's) is the lowest: never promoted, evicted first.
            s.score = if score.is_nan() {
                f64::NEG_INFINITY
            } else {
                score
            };
        }
        out
    }

    /// One lifecycle run at the clock's now. `promote`: move every record scoring at or above
    /// its layer's threshold up a layer. `expire`: expire records past their layer's TTL
    /// (those scoring above the threshold are promoted instead), then evict the lowest
    /// scores of a layer over its capacity. All decisions go into one log entry.
    pub(super) fn run_lifecycle(&self, promote: bool, expire: bool) -> Result<LifecycleReport> {
        let _one_at_a_time = self.lifecycle_lock.lock();
        self.check()?;
        // Scores read the records' vectors (their own and their neighbours'): never from an
        // unchecked or damaged block.
        self.snapshot_checked()?;
        let now = self.config.clock.now_us();
        let lc = &self.config.lifecycle;
        let model = self.model();
        let th = lc.thresholds();
        let dwell = crate::lifecycle::us(lc.assets_min_dwell);
        let ttl_us = lc.ttl_us();
        // A record whose TTL ends before the next background run is decided now: promoted if
        // it scores above the threshold, so it is never hidden first.
        let lookahead = lc.interval.map_or(0, crate::lifecycle::us);
        let mut report = LifecycleReport {
            at_us: now,
            promoter: lc.promoter.name(),
            model_version: model.version,
            ..Default::default()
        };
        let mut promotions = Vec::new();
        let (mut ttl_ids, mut cap_ids) = (Vec::new(), Vec::new());
        let mut incoming = 0usize;
        for layer in Layer::ALL {
            let cap = lc.capacity[layer.index()].filter(|_| expire);
            let next = layer.next();
            let has_ttl = ttl_us[layer.index()] != u64::MAX;
            if next.is_none() && cap.is_none() && !(expire && has_ttl) {
                continue;
            }
            let scored = self.score_layer(layer, now, &model);
            report.scored += scored.len() as u64;
            // An infinite threshold means never.
            let threshold = next
                .map(|_| th[layer.index()])
                .filter(|t| *t < f64::INFINITY);
            let mut kept: Vec<&Scored> = Vec::new();
            let mut out = 0usize;
            for s in &scored {
                let above = threshold.is_some_and(|t| s.score >= t);
                let dwelt =
                    layer != Layer::Insights || now.saturating_sub(s.layer_since_us) >= dwell;
                let soon = s.past_ttl
                    || s.layer_since_us.saturating_add(ttl_us[layer.index()])
                        <= now.saturating_add(lookahead);
                let up = match next {
                    Some(to) if above && (soon || (promote && dwelt)) => Some(to),
                    _ => None,
                };
                if let Some(to) = up {
                    if s.past_ttl {
                        report.saved_from_expiry += 1;
                    }
                    report.promoted[layer.index()] += 1;
                    promotions.push(Promotion {
                        id: s.id,
                        from: layer,
                        to,
                        score: s.score as f32,
                        model_version: model.version,
                    });
                    out += 1;
                } else if s.past_ttl {
                    if expire {
                        ttl_ids.push(s.id);
                    }
                } else {
                    kept.push(s);
                }
            }
            if let Some(cap) = cap {
                let live_after = kept.len() + incoming;
                if live_after > cap {
                    // Lowest score first; among equals, the longest in the layer.
                    kept.sort_by(|a, b| {
                        a.score
                            .total_cmp(&b.score)
                            .then(a.layer_since_us.cmp(&b.layer_since_us))
                            .then(a.id.cmp(&b.id))
                    });
                    cap_ids.extend(kept.iter().take(live_after - cap).map(|s| s.id));
                }
            }
            incoming = out;
        }
        report.expired_ttl = ttl_ids.len() as u64;
        report.expired_capacity = cap_ids.len() as u64;
        let mut events = Vec::new();
        if !promotions.is_empty() {
            events.push(Event::Promoted(promotions));
        }
        if !ttl_ids.is_empty() {
            events.push(Event::Expired {
                ids: ttl_ids,
                reason: ExpiryReason::Ttl,
            });
        }
        if !cap_ids.is_empty() {
            events.push(Event::Expired {
                ids: cap_ids,
                reason: ExpiryReason::Capacity,
            });
        }
        if !events.is_empty() {
            // Damage a search found while this run scored: its decisions are not written.
            self.snapshot_checked()?;
            report.seq = self.commit_blocking(events)?.last_seq;
            tracing::info!(
                promoted = ?report.promoted,
                expired_ttl = report.expired_ttl,
                expired_capacity = report.expired_capacity,
                "lifecycle run"
            );
        }
        *self.last_lifecycle.lock() = Some(report.clone());
        Ok(report)
    }

    /// Trains the learned promoter from the log: replays history into fresh projections,
    /// labels samples from the last `train_window`, fits, and swaps the model in when there
    /// was enough history.
    pub(super) fn train(&self) -> Result<TrainReport> {
        let started = Instant::now();
        // One training at a time (background or on demand); the flag drops with the guard.
        struct Busy<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Busy<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        if self.training.swap(true, Ordering::AcqRel) {
            return Ok(TrainReport {
                model_version: self.model().version,
                skipped: Some("a training run is already in progress".into()),
                ..Default::default()
            });
        }
        let _busy = Busy(&self.training);
        let lc = &self.config.lifecycle;
        let now = self.config.clock.now_us();
        let from = now.saturating_sub(crate::lifecycle::us(lc.train_window));
        let mut c = Collector::new(
            self.config.dimension,
            lc.ttl_us(),
            lc.horizon,
            lc.sample_every,
            from,
        )
        .cap_per_time(lc.samples_per_point, u64::MAX);
        let history = self.log()?.history(1);
        for env in history {
            if self.shutdown.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            c.push(&env?)?;
        }
        let (samples, events, last_seq) = c.finish();
        let labelled: Vec<_> = samples.into_iter().map(|s| (s.signals, s.label)).collect();
        let current = self.model();
        let mut report = TrainReport {
            events,
            samples: labelled.len() as u64,
            positives: labelled.iter().filter(|(_, y)| *y).count() as u64,
            model_version: current.version,
            ..Default::default()
        };
        match PromoterModel::train(
            &labelled,
            lc.min_train_samples,
            current.version + 1,
            crate::lifecycle::us(lc.horizon),
            last_seq,
        ) {
            Ok(mut m) => {
                // The version is taken at the swap, so it is unique even if another model
                // was swapped in meanwhile.
                let mut slot = self.model.write();
                m.version = slot.version + 1;
                tracing::info!(model = %m.summary(), "promoter trained");
                report.model_version = m.version;
                *slot = Arc::new(m);
                drop(slot);
                // Persist it now rather than at the next checkpoint.
                if let Err(e) = self.checkpoint_blocking() {
                    tracing::warn!(error = %e, "snapshot after training failed; the model is written at the next checkpoint");
                }
            }
            Err(e) => report.skipped = Some(e.to_string()),
        }
        report.took_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// The lifecycle thread: looks at the clock every 250 ms (wall time) and runs what is
    /// due. Its own thread, so a long run never delays the access-statistics flush.
    pub(super) fn lifecycle_loop(self: &Arc<Self>) {
        let (mut next_run, mut next_train) = self.lifecycle_schedule();
        if next_run.is_none() && next_train.is_none() {
            return;
        }
        loop {
            self.lifecycle_wake.wait(Duration::from_millis(250));
            if self.shutdown.load(Ordering::Acquire) || self.failure.lock().is_some() {
                return;
            }
            self.lifecycle_tick(&mut next_run, &mut next_train);
        }
    }

    /// Runs what is due by the clock.
    fn lifecycle_tick(self: &Arc<Self>, next_run: &mut Option<u64>, next_train: &mut Option<u64>) {
        let lc = &self.config.lifecycle;
        let now = self.config.clock.now_us();
        if let (Some(at), Some(every)) = (*next_run, lc.interval) {
            if now >= at {
                *next_run = Some(now.saturating_add(crate::lifecycle::us(every)));
                match self.catch("lifecycle run", || self.run_lifecycle(true, true)) {
                    Ok(_) | Err(Error::Poisoned(_)) | Err(Error::Closed) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "lifecycle run failed; retrying at the next interval")
                    }
                }
            }
        }
        if let (Some(at), Some(every)) = (*next_train, lc.train_every) {
            if now >= at && matches!(lc.promoter, crate::lifecycle::Promoter::Learned) {
                *next_train = Some(now.saturating_add(crate::lifecycle::us(every)));
                if !self.training.load(Ordering::Acquire) {
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("magray-train".into())
                        .spawn(move || match me.catch("promoter training", || me.train()) {
                            Ok(r) => tracing::info!(report = ?r, "promoter training run"),
                            Err(Error::Poisoned(_)) | Err(Error::Closed) => {}
                            Err(e) => tracing::warn!(error = %e, "promoter training failed"),
                        });
                    match spawned {
                        Ok(h) => {
                            let mut bg = self.bg_threads.lock();
                            bg.retain(|t| !t.is_finished());
                            bg.push(h);
                        }
                        Err(e) => tracing::warn!(error = %e, "could not start promoter training"),
                    }
                }
            }
        }
    }

    /// First due times at open: a run one interval from now; training soon when only the
    /// default model exists, else one period from now.
    fn lifecycle_schedule(&self) -> (Option<u64>, Option<u64>) {
        let lc = &self.config.lifecycle;
        let now = self.config.clock.now_us();
        let run = lc
            .interval
            .map(|d| now.saturating_add(crate::lifecycle::us(d)));
        let train = lc.train_every.map(|d| {
            let first = if self.model().version == 0 {
                d.min(Duration::from_secs(600))
            } else {
                d
            };
            now.saturating_add(crate::lifecycle::us(first))
        });
        (run, train)
    }
}

impl Memory {
    /// Promotes every record whose score reaches its layer's threshold (Interact → Insights,
    /// Insights → Assets after `assets_min_dwell`), as one atomic log entry of `Promoted`
    /// events. Also runs in the background every `LifecycleConfig::interval`.
    pub async fn promote(&self) -> Result<LifecycleReport> {
        self.lifecycle(true, false).await
    }

    /// Expires records past their layer's TTL (promoting those that score above the
    /// threshold instead) and evicts the lowest-scoring records of a layer over its capacity.
    /// One atomic log entry. Also runs in the background.
    pub async fn expire(&self) -> Result<LifecycleReport> {
        self.lifecycle(false, true).await
    }

    /// [`Memory::promote`] then [`Memory::expire`], in one run and one log entry: what the
    /// background task does.
    pub async fn run_lifecycle(&self) -> Result<LifecycleReport> {
        self.lifecycle(true, true).await
    }

    pub(super) async fn lifecycle(&self, promote: bool, expire: bool) -> Result<LifecycleReport> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.catch("lifecycle run", || inner.run_lifecycle(promote, expire))
        })
        .await
        .map_err(|e| Error::Poisoned(format!("lifecycle task failed: {e}")))?
    }

    /// Trains the learned promoter from the log now (also runs every
    /// `LifecycleConfig::train_every`). With too little history the model is unchanged and
    /// the report says why.
    pub async fn train_promoter(&self) -> Result<TrainReport> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.catch("promoter training", || inner.train()))
            .await
            .map_err(|e| Error::Poisoned(format!("training task failed: {e}")))?
    }

    /// The promoter model in use.
    pub fn promoter_model(&self) -> PromoterModel {
        (*self.inner.model()).clone()
    }

    /// Replays this store's history, trains the learned promoter on the period before
    /// `config.split_us` and reports precision@k / recall@k of every promoter on the period
    /// after it (label: accessed again within the horizon).
    pub async fn evaluate_promoters(&self, config: EvalConfig) -> Result<EvalReport> {
        self.inner.check()?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let history = inner.log()?.history(1);
            crate::lifecycle::offline::evaluate(
                history.map(|e| e.map_err(Error::from)),
                inner.config.dimension,
                inner.config.lifecycle.ttl_us(),
                &config,
            )
        })
        .await
        .map_err(|e| Error::Poisoned(format!("evaluation task failed: {e}")))?
    }
}
