//! The LoCoMo family of the promoter report: LoCoMo's conversations replayed into a store on
//! a manual clock, and promoters judged by the evidence turns they keep.
//!
//! * Session `n` of every conversation arrives on day `n − 1` (conversation `c` at
//!   09:00 + c hours), its turns stored in Interact with their real embeddings.
//! * Each question with evidence is asked once, on a day drawn (by the seed) between the day
//!   of its last evidence session and its conversation's last session, at 18:00–20:00: a
//!   hybrid search, top 5, in its conversation. Those searches are the store's accesses.
//! * Every 6 h, the candidates are the turns that entered Interact in the last 24 h: what a
//!   promoter must pick from before the Interact TTL takes them. A promoter keeps its top 10
//!   (the capacity budget); a kept turn counts when it is evidence for a question asked in
//!   the next 7 days (`EvalTarget::Needed`).
//! * The learned model trains on days 0–13 with the labels the engine can see (a turn read
//!   again within 7 days); days 14 and later are held out.

use super::locomo_data::{questions_of, sessions};
use anyhow::{anyhow, Context, Result};
use magray_memory::lifecycle::{EvalConfig, EvalReport, EvalTarget};
use magray_memory::sim::{self, Rng};
use magray_memory::wal::ManualClock;
use magray_memory::{Embedder, Layer, Memory, NewRecord, RecordId, SearchOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const HOUR: u64 = 3_600_000_000;
const DAY: u64 = 24 * HOUR;

struct Session {
    conv: usize,
    /// 1-based session number.
    n: u64,
    turns: Vec<(String, String, Vec<f32>)>,
}

struct Ask {
    conv: usize,
    text: String,
    vector: Vec<f32>,
    /// The last session that holds its evidence, and the conversation's last session.
    first_day: u64,
    last_day: u64,
    evidence: Vec<String>,
}

/// The conversations, embedded once.
pub struct Replay {
    projects: Vec<String>,
    sessions: Vec<Session>,
    asks: Vec<Ask>,
    dim: usize,
}

impl Replay {
    /// Reads LoCoMo from `path` and embeds every turn and question with `embedder`.
    pub fn load(path: &str, embedder: &Embedder) -> Result<Replay> {
        let data: serde_json::Value = serde_json::from_slice(
            &std::fs::read(path).with_context(|| format!("reading LoCoMo from {path}"))?,
        )
        .with_context(|| format!("{path} is not JSON"))?;
        let convs = data
            .as_array()
            .ok_or_else(|| anyhow!("{path}: not a list of conversations"))?;
        let mut out = Replay {
            projects: Vec::new(),
            sessions: Vec::new(),
            asks: Vec::new(),
            dim: embedder.dimension(),
        };
        for (conv, c) in convs.iter().enumerate() {
            let project = c["sample_id"]
                .as_str()
                .ok_or_else(|| anyhow!("no sample_id"))?
                .to_string();
            let mut session_of: HashMap<String, u64> = HashMap::new();
            let mut last = 0;
            for (i, (_, _, turns)) in sessions(c)?.into_iter().enumerate() {
                let n = i as u64 + 1;
                last = n;
                let texts: Vec<&str> = turns.iter().map(|(_, t)| t.as_str()).collect();
                let vectors = embedder.embed(&texts)?;
                session_of.extend(turns.iter().map(|(id, _)| (id.clone(), n)));
                out.sessions.push(Session {
                    conv,
                    n,
                    turns: turns
                        .into_iter()
                        .zip(vectors)
                        .map(|((id, text), v)| (id, text, v.to_vec()))
                        .collect(),
                });
            }
            let questions: Vec<_> = questions_of(c, &project)?
                .into_iter()
                .filter_map(|q| {
                    let first = q.evidence.iter().filter_map(|e| session_of.get(e)).max()?;
                    let mut evidence: Vec<String> = q.evidence.into_iter().collect();
                    evidence.sort();
                    Some((q.text, *first, evidence))
                })
                .collect();
            let texts: Vec<&str> = questions.iter().map(|(t, _, _)| t.as_str()).collect();
            let vectors = embedder.embed(&texts)?;
            for ((text, first, evidence), v) in questions.into_iter().zip(vectors) {
                out.asks.push(Ask {
                    conv,
                    text,
                    vector: v.to_vec(),
                    first_day: first - 1,
                    last_day: last - 1,
                    evidence,
                });
            }
            out.projects.push(project);
        }
        Ok(out)
    }

    /// Turns and questions replayed.
    pub fn size(&self) -> (usize, usize) {
        (
            self.sessions.iter().map(|s| s.turns.len()).sum(),
            self.asks.len(),
        )
    }

    /// Replays with the question days drawn from `seed` and evaluates every promoter.
    pub async fn run(&self, seed: u64) -> Result<EvalReport> {
        let start = sim::SimConfig::default().start_us;
        let mut rng = Rng::new(seed);
        enum Step<'a> {
            Store(&'a Session),
            Ask(&'a Ask),
        }
        let mut steps: Vec<(u64, usize, Step<'_>)> = Vec::new();
        for (i, s) in self.sessions.iter().enumerate() {
            let at = start + (s.n - 1) * DAY + 9 * HOUR + s.conv as u64 * HOUR;
            steps.push((at, i, Step::Store(s)));
        }
        for (i, a) in self.asks.iter().enumerate() {
            let day = rng.range(a.first_day, a.last_day);
            let at = start + day * DAY + 18 * HOUR + rng.range(0, 120) * 60_000_000;
            steps.push((at, self.sessions.len() + i, Step::Ask(a)));
        }
        steps.sort_by_key(|(at, i, _)| (*at, *i));
        let dir = tempfile::tempdir()?;
        let clock = ManualClock::new(start);
        let memory = Memory::open(dir.path(), sim::store_config(&clock, self.dim)).await?;
        let mut ids: HashMap<(usize, &str), RecordId> = HashMap::new();
        let mut needed: HashMap<RecordId, Vec<u64>> = HashMap::new();
        let mut day = 0;
        for (at, _, step) in steps {
            if at / DAY != day {
                // Accesses reach the log at the end of each day.
                memory.flush_accesses().await?;
                day = at / DAY;
            }
            clock.set_us(at);
            match step {
                Step::Store(s) => {
                    let project = &self.projects[s.conv];
                    let batch = s
                        .turns
                        .iter()
                        .map(|(_, text, v)| {
                            NewRecord::new(text.as_str(), v.clone())
                                .layer(Layer::Interact)
                                .kind("message")
                                .project(project.as_str())
                                .session(format!("{project}-s{}", s.n))
                        })
                        .collect();
                    let stored = memory.insert_batch(batch).await?;
                    for ((dia, _, _), id) in s.turns.iter().zip(stored) {
                        ids.insert((s.conv, dia.as_str()), id);
                    }
                }
                Step::Ask(a) => {
                    let project = &self.projects[a.conv];
                    let asker = format!("{project}-asked-d{}", at / DAY);
                    let o = SearchOptions {
                        project: Some(project.clone()),
                        ..SearchOptions::top_k(5)
                    }
                    .asked_by(Some(&asker), Some(project));
                    memory.search_hybrid(&a.text, &a.vector, &o).await?;
                    for e in &a.evidence {
                        if let Some(id) = ids.get(&(a.conv, e.as_str())) {
                            needed.entry(*id).or_default().push(at);
                        }
                    }
                }
            }
        }
        memory.flush_accesses().await?;
        let report = memory
            .evaluate_promoters(EvalConfig {
                horizon: Duration::from_secs(7 * 86_400),
                target: EvalTarget::Needed(Arc::new(needed)),
                ..EvalConfig::split_at(start + 14 * DAY)
            })
            .await?;
        memory.close().await?;
        Ok(report)
    }
}
