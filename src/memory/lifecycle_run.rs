//! The engine side of the lifecycle: score candidates under short read locks, commit every
//! decision of a run as one log entry, train the promoter from the log, and schedule both by
//! the config's clock.

use super::Inner;
use crate::error::{Error, Result};
use crate::lifecycle::offline::Collector;
use crate::lifecycle::{signals, LifecycleReport, PromoterModel, TrainReport};
use crate::types::Layer;
use magray_wal::{Event, ExpiryReason, Id, Promotion};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Candidates scored per read-lock hold (writers apply between chunks).
const SCORE_CHUNK: usize = 256;

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
        let mut slots: Vec<u32> = self.state.read().layers[layer.index()]
            .members
            .iter()
            .copied()
            .collect();
        slots.sort_unstable();
        let promoter = &self.config.lifecycle.promoter;
        let neighbours = promoter
            .needs_neighbours()
            .then_some((self.config.hnsw.ef_search, self.config.exact_search_below));
        let mut out = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(SCORE_CHUNK) {
            let st = self.state.read();
            for &slot in chunk {
                let Some(r) = st.live(slot).filter(|r| r.layer == layer) else {
                    continue;
                };
                let (id, past_ttl, layer_since_us) = (r.id, st.past_ttl(r, now), r.layer_since_us);
                if let Some(sig) = signals(&st, slot, now, neighbours) {
                    out.push(Scored {
                        id,
                        score: promoter.score(model, &sig),
                        past_ttl,
                        layer_since_us,
                    });
                }
            }
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
        let now = self.config.clock.now_us();
        let lc = &self.config.lifecycle;
        let model = self.model();
        let th = lc.thresholds();
        let dwell = lc.assets_min_dwell.as_micros() as u64;
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
            if next.is_none() && cap.is_none() {
                continue;
            }
            let scored = self.score_layer(layer, now, &model);
            report.scored += scored.len() as u64;
            let threshold = next.map(|_| th[layer.index()]).unwrap_or(f64::INFINITY);
            let mut kept: Vec<&Scored> = Vec::new();
            let mut out = 0usize;
            for s in &scored {
                let above = s.score >= threshold;
                let dwelt =
                    layer != Layer::Insights || now.saturating_sub(s.layer_since_us) >= dwell;
                let up = match next {
                    Some(to) if above && (s.past_ttl || (promote && dwelt)) => Some(to),
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
        let lc = &self.config.lifecycle;
        let now = self.config.clock.now_us();
        let from = now.saturating_sub(lc.train_window.as_micros() as u64);
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
            lc.horizon.as_micros() as u64,
            last_seq,
        ) {
            Ok(m) => {
                tracing::info!(model = %m.summary(), "promoter trained");
                report.model_version = m.version;
                *self.model.write() = Arc::new(m);
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
                *next_run = Some(now + every.as_micros() as u64);
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
                *next_train = Some(now + every.as_micros() as u64);
                if !self.training.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("magray-train".into())
                        .spawn(move || {
                            match me.catch("promoter training", || me.train()) {
                                Ok(r) => tracing::info!(report = ?r, "promoter training run"),
                                Err(Error::Poisoned(_)) | Err(Error::Closed) => {}
                                Err(e) => tracing::warn!(error = %e, "promoter training failed"),
                            }
                            me.training.store(false, Ordering::Release);
                        });
                    match spawned {
                        Ok(h) => self.bg_threads.lock().push(h),
                        Err(e) => {
                            self.training.store(false, Ordering::Release);
                            tracing::warn!(error = %e, "could not start promoter training");
                        }
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
        let run = lc.interval.map(|d| now + d.as_micros() as u64);
        let train = lc.train_every.map(|d| {
            let first = if self.model().version == 0 {
                d.min(Duration::from_secs(600))
            } else {
                d
            };
            now + first.as_micros() as u64
        });
        (run, train)
    }
}
