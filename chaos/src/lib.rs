//! The chaos suite: a worker process runs a seeded random workload against a store and
//! reports every operation as pending before and acknowledged after; the harness SIGKILLs it
//! at moments biased to dangerous windows, injects storage faults between runs, reopens, and
//! checks the store against an expected-state oracle.
//!
//! Protocol (one line each, flushed):
//! * `P <op> <kind> <args…>` before an operation, `A <op> <results…>` after it is acknowledged.
//! * kinds: `insert <text>…` (`A` lists the ids), `delete <id>`, `supersede <id> <text>`
//!   (`A` gives the new id), `rate <id>`, `search`, `lifecycle`, `checkpoint`, `optimize`,
//!   `restore <dir>`.
//!
//! Texts are `w<seed>.<op>.<j>`; a record's vector is a function of its text, so the harness
//! can check "own top-1" without the worker.

use magray_memory::wal::{Event, ExpiryReason, History};
use magray_memory::{
    Config, LifecycleConfig, Memory, Promoter, Record, RecordId, SearchMode, SearchOptions,
};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod faults;
mod power;

use faults::disk_full;
pub use faults::{inject, Fault, FaultOutcome};
pub use power::{run_power, PowerSummary};

/// Vector dimension of chaos stores.
pub const DIM: usize = 16;

/// The store configuration of the worker and of every check: small snapshots intervals,
/// small segments (frequent archiving), HNSW always on, a capacity that expires records.
pub fn config() -> Config {
    Config {
        dimension: DIM,
        checkpoint_every: 60,
        checkpoint_interval: Duration::ZERO,
        checkpoint_on_close: false,
        snapshots_keep: 2,
        exact_search_below: 0,
        index_batch: 16,
        access_flush_interval: Duration::from_millis(20),
        segment_bytes: 256 << 10,
        lifecycle: LifecycleConfig {
            promoter: Promoter::AccessCount,
            thresholds: Some([2.0, f64::INFINITY]),
            capacity: [Some(600), None, None],
            ..LifecycleConfig::manual()
        },
        ..Config::default()
    }
}

/// The vector of a text (SplitMix over its bytes), unit length.
pub fn vector_for(text: &str) -> Vec<f32> {
    let mut rng =
        magray_memory::sim::Rng::new(text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }));
    rng.unit(DIM)
}

/// Where the harness kills the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// During open: recovery, replay, snapshot load (a crash during recovery).
    Recovery,
    /// While inserts stream in and the indexer inserts into HNSW.
    Indexing,
    /// Right after a checkpoint starts: snapshot writing, rename, the log checkpoint marker.
    Snapshot,
    /// Inside a promotion / expiry batch.
    Promotion,
    /// Inside an index rebuild + snapshot (`optimize`).
    Rebuild,
    /// Inside a point-in-time restore into a new directory.
    Restore,
    /// Just after a batch big enough to fill a log segment: okaywal rotates and checkpoints
    /// it, and the segment is being written to `archive/`.
    Archive,
    /// At a random moment (segment rotation and archiving happen throughout).
    Anywhere,
}

impl Window {
    /// Every window.
    pub const ALL: [Window; 8] = [
        Window::Recovery,
        Window::Indexing,
        Window::Snapshot,
        Window::Promotion,
        Window::Rebuild,
        Window::Restore,
        Window::Archive,
        Window::Anywhere,
    ];

    /// The operation whose `P` line opens this window.
    fn marker(self) -> Option<&'static str> {
        match self {
            Window::Snapshot => Some("checkpoint"),
            Window::Promotion => Some("lifecycle"),
            Window::Rebuild => Some("optimize"),
            Window::Restore => Some("restore"),
            Window::Archive => Some("archive"),
            _ => None,
        }
    }
}

/// The expected state: what the worker was told happened.
#[derive(Debug, Default)]
pub struct Oracle {
    /// Every text a worker ever issued (P line).
    issued: HashSet<String>,
    /// Acknowledged inserts: id → text.
    acked: HashMap<RecordId, String>,
    /// Acknowledged deletes and supersedes (the old record).
    removed: HashSet<RecordId>,
    /// Inserts issued but not acknowledged, per op: their texts (all or none may exist).
    pending_inserts: Vec<Vec<String>>,
    /// Acknowledged ratings: the last value each record was given.
    ratings: HashMap<RecordId, f32>,
    /// Ratings issued but not acknowledged: either value may be the record's now.
    pending_ratings: Vec<(RecordId, f32)>,
    /// Records the workload asked to delete or supersede (acknowledged or not): the only
    /// ones the log may say were deleted or superseded.
    asked_removed: HashSet<RecordId>,
    /// Records expired by acknowledged lifecycle runs, in order (the runs' own counts).
    acked_expiries: Vec<u64>,
    /// Lifecycle runs issued but not acknowledged: each may have expired records too.
    pending_lifecycle_runs: usize,
    /// Why the last worker stopped on its own (`E <kind> <message>`), if it did.
    pub stopped: Option<(String, String)>,
}

impl Oracle {
    /// Acknowledged inserts known.
    pub fn acked(&self) -> usize {
        self.acked.len()
    }

    fn absorb(&mut self, lines: &[String]) {
        let mut pending: HashMap<&str, (&str, Vec<&str>)> = HashMap::new();
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["E", kind, msg @ ..] => {
                    self.stopped = Some((kind.to_string(), msg.join(" ")));
                }
                ["P", op, kind, rest @ ..] => {
                    if *kind == "delete" || *kind == "supersede" {
                        if let Some(Ok(id)) = rest.first().map(|a| a.parse()) {
                            self.asked_removed.insert(id);
                        }
                    }
                    if *kind == "insert" || *kind == "archive" || *kind == "supersede" {
                        let texts: Vec<&str> = if *kind != "supersede" {
                            rest.to_vec()
                        } else {
                            rest.iter().skip(1).copied().collect()
                        };
                        self.issued.extend(texts.iter().map(|t| t.to_string()));
                    }
                    pending.insert(op, (kind, rest.to_vec()));
                }
                ["A", op, results @ ..] => {
                    let Some((kind, args)) = pending.remove(op) else {
                        continue;
                    };
                    match kind {
                        "insert" | "archive" => {
                            for (id, text) in results.iter().zip(&args) {
                                if let Ok(id) = id.parse() {
                                    self.acked.insert(id, text.to_string());
                                }
                            }
                        }
                        "delete" => {
                            if let Some(Ok(id)) = args.first().map(|a| a.parse()) {
                                self.removed.insert(id);
                            }
                        }
                        "rate" => {
                            if let (Some(Ok(id)), Some(Ok(v))) = (
                                args.first().map(|a| a.parse()),
                                args.get(1).map(|a| a.parse::<f32>()),
                            ) {
                                self.ratings.insert(id, v);
                            }
                        }
                        "lifecycle" => {
                            if let Some(Ok(n)) = results.get(1).map(|r| r.parse::<u64>()) {
                                if n > 0 {
                                    self.acked_expiries.push(n);
                                }
                            }
                        }
                        "supersede" => {
                            if let (Some(Ok(old)), Some(Ok(new)), Some(text)) = (
                                args.first().map(|a| a.parse()),
                                results.first().map(|r| r.parse()),
                                args.get(1),
                            ) {
                                self.removed.insert(old);
                                self.acked.insert(new, text.to_string());
                            }
                        }
                        _ => {}
                    }
                }
                _ => {} // a line cut by the kill
            }
        }
        for (_, (kind, args)) in pending {
            match kind {
                "insert" | "archive" => self
                    .pending_inserts
                    .push(args.iter().map(|s| s.to_string()).collect()),
                "supersede" => self
                    .pending_inserts
                    .push(args.iter().skip(1).map(|s| s.to_string()).collect()),
                "rate" => {
                    if let (Some(Ok(id)), Some(Ok(v))) = (
                        args.first().map(|a| a.parse()),
                        args.get(1).map(|a| a.parse::<f32>()),
                    ) {
                        self.pending_ratings.push((id, v));
                    }
                }
                "lifecycle" => self.pending_lifecycle_runs += 1,
                _ => {}
            }
        }
    }
}

/// One cycle's outcome.
#[derive(Debug, Clone, Default)]
pub struct CycleReport {
    /// Acknowledged inserts checked present (or legitimately removed by the log).
    pub acked_verified: usize,
    /// Records the oracle expected that were missing (must be 0).
    pub lost: usize,
    /// Acknowledged ratings checked on the records present.
    pub ratings_verified: usize,
    /// Whether the kill landed after the window's marker.
    pub in_window: bool,
    /// The kill left a half-written archive file (`archive/.tmp-*`), which the reopen removed.
    pub archive_cut: bool,
}

/// Totals over a run, for the soak table.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Kill cycles.
    pub cycles: u64,
    /// Cycles per window, and how many landed inside it.
    pub windows: std::collections::BTreeMap<String, (u64, u64)>,
    /// Acknowledged inserts verified, summed over cycles.
    pub acked_verified: u64,
    /// Acknowledged ratings checked, summed over cycles.
    pub ratings_verified: u64,
    /// Acknowledged operations lost (must be 0).
    pub lost: u64,
    /// Opens that failed after a kill (must be 0).
    pub failed_opens: u64,
    /// Faults injected / detected, by kind.
    pub faults: std::collections::BTreeMap<String, (u64, u64)>,
    /// Kills that cut an archive file mid-write (its temp file was there at the reopen).
    pub archive_cuts: u64,
    /// Fault attempts, including those that hit nothing to damage (e.g. bytes past the valid
    /// end of a recycled segment, or no archive file yet).
    pub fault_attempts: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| cycles | acked inserts verified | lost | failed opens | faults injected | faults detected | time |")?;
        writeln!(f, "|---:|---:|---:|---:|---:|---:|---:|")?;
        let (inj, det) = self
            .faults
            .values()
            .fold((0, 0), |(a, b), (i, d)| (a + i, b + d));
        writeln!(
            f,
            "| {} | {} | {} | {} | {} | {} | {:.0} s |",
            self.cycles,
            self.acked_verified,
            self.lost,
            self.failed_opens,
            inj,
            det,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(
            f,
            "\n| window | cycles | killed inside it |\n|---|---:|---:|"
        )?;
        for (w, (n, inside)) in &self.windows {
            writeln!(f, "| {w} | {n} | {inside} |")?;
        }
        writeln!(
            f,
            "\nkills that cut an archive file mid-write: {}; acknowledged ratings checked: {}",
            self.archive_cuts, self.ratings_verified
        )?;
        writeln!(
            f,
            "\n{} fault attempts; those that found something to damage:\n\n| fault | injected | detected |\n|---|---:|---:|",
            self.fault_attempts
        )?;
        for (k, (i, d)) in &self.faults {
            writeln!(f, "| {k} | {i} | {d} |")?;
        }
        Ok(())
    }
}

/// A small splitmix RNG for the harness (stable across versions: a seed replays).
pub type Rng = magray_memory::sim::Rng;

/// What a run carries from cycle to cycle.
struct Ctx<'a> {
    worker: &'a Path,
    dir: &'a Path,
    seed: u64,
    rng: Rng,
    oracle: Oracle,
    rt: tokio::runtime::Runtime,
}

/// Runs one kill cycle: starts the worker on the store, kills it in `window`, reads its
/// report into the oracle and verifies the store. `Err` describes a violated expectation.
fn kill_cycle(ctx: &mut Ctx, cycle: u64, window: Window) -> Result<CycleReport, String> {
    let (lines, in_window) =
        run_worker(ctx.worker, ctx.dir, ctx.seed, &mut ctx.rng, cycle, window)?;
    ctx.oracle.absorb(&lines);
    let archive_cut = std::fs::read_dir(ctx.dir.join("archive")).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
    });
    let mut report = ctx.rt.block_on(verify(ctx.dir, &mut ctx.oracle, cycle))?;
    report.in_window = in_window;
    report.archive_cut = archive_cut;
    Ok(report)
}

/// Starts the worker on the store in `dir`, SIGKILLs it in `window` and returns everything
/// it said, and whether the kill landed inside the window.
pub(crate) fn run_worker(
    worker: &Path,
    dir: &Path,
    seed: u64,
    rng: &mut Rng,
    cycle: u64,
    window: Window,
) -> Result<(Vec<String>, bool), String> {
    let mut child = Command::new(worker)
        .arg(dir)
        .arg(format!("{}", seed.wrapping_mul(1000).wrapping_add(cycle)))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", worker.display()))?;
    let stdout = child.stdout.take().ok_or("no worker stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(l.clone());
            lines.push(l);
        }
        lines
    });
    let started = Instant::now();
    let mut in_window = false;
    match window {
        Window::Recovery => std::thread::sleep(Duration::from_millis(rng.range(0, 25))),
        Window::Indexing | Window::Anywhere => {
            wait_ready(&rx, Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(rng.range(20, 600)));
            in_window = true;
        }
        w => {
            let marker = w.marker().unwrap_or("");
            let deadline = started + Duration::from_secs(20);
            while Instant::now() < deadline {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(l) if l.starts_with('P') && l.split(' ').nth(2) == Some(marker) => {
                        // Archiving starts once the big batch is durable (a few ms in).
                        let upto = if w == Window::Archive { 40_000 } else { 8_000 };
                        std::thread::sleep(Duration::from_micros(rng.range(0, upto)));
                        in_window = true;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let lines = reader.join().map_err(|_| "reader thread panicked")?;
    let last = last_pending(&lines);
    if window == Window::Recovery {
        // Inside the window if the worker had not finished opening.
        in_window = !lines.iter().any(|l| l == "READY");
    }
    if window == Window::Archive {
        // Archiving starts once the batch is durable: inside only if it was acknowledged.
        in_window &= last_archive_acked(&lines);
    } else if let Some(m) = window.marker() {
        // Inside the window only if that operation was still unacknowledged at the kill.
        in_window &= last.as_deref() == Some(m);
    }
    Ok((lines, in_window))
}

/// The kind of the last operation the worker announced (`P` line).
fn last_pending(lines: &[String]) -> Option<String> {
    lines.iter().rev().find_map(|l| {
        let mut parts = l.split(' ');
        (parts.next() == Some("P"))
            .then(|| parts.nth(1).map(str::to_string))
            .flatten()
    })
}

/// Whether the worker's last `archive` batch was acknowledged before the kill.
fn last_archive_acked(lines: &[String]) -> bool {
    let Some((at, op)) = lines.iter().enumerate().rev().find_map(|(i, l)| {
        let mut parts = l.split(' ');
        (parts.next() == Some("P") && parts.clone().nth(1) == Some("archive"))
            .then(|| (i, parts.next().unwrap_or_default().to_string()))
    }) else {
        return false;
    };
    let acked = format!("A {op} ");
    lines[at..].iter().any(|l| l.starts_with(&acked))
}

fn wait_ready(rx: &std::sync::mpsc::Receiver<String>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            if l == "READY" {
                return;
            }
        }
    }
}

/// What the log says happened.
struct LogFacts {
    /// Ids deleted, superseded or expired.
    removed: HashSet<RecordId>,
    /// Ids deleted or superseded (only the workload asks for those).
    asked: Vec<RecordId>,
    /// Each `Expired` event: its reason and how many ids it names.
    expiries: Vec<(ExpiryReason, u64)>,
    /// Texts inserted.
    texts: HashSet<String>,
    /// The last sequence.
    last: u64,
}

fn log_facts(dir: &Path) -> Result<LogFacts, String> {
    let mut f = LogFacts {
        removed: HashSet::new(),
        asked: Vec::new(),
        expiries: Vec::new(),
        texts: HashSet::new(),
        last: 0,
    };
    for env in History::open_offline(dir, 1) {
        let env = env.map_err(|e| format!("history unreadable: {e}"))?;
        if env.seq != f.last + 1 {
            return Err(format!("sequence gap: {} after {}", env.seq, f.last));
        }
        f.last = env.seq;
        match env.event {
            Event::Inserted(i) => {
                f.texts.insert(i.text);
            }
            Event::Deleted { id } | Event::Superseded { old: id, .. } => {
                f.removed.insert(RecordId(id));
                f.asked.push(RecordId(id));
            }
            Event::Expired { ids, reason } => {
                f.expiries.push((reason, ids.len() as u64));
                f.removed.extend(ids.into_iter().map(RecordId));
            }
            _ => {}
        }
    }
    Ok(f)
}

/// Checks the log's removals against what the workload asked for: deletes and supersedes
/// only of records it named, expiries only by capacity (the chaos config has no TTL) and only
/// from its lifecycle runs: the acknowledged runs' counts in order, plus at most one event per
/// run that was cut before its acknowledgement.
fn check_removals(f: &LogFacts, oracle: &mut Oracle) -> Result<(), String> {
    if let Some(id) = f.asked.iter().find(|id| !oracle.asked_removed.contains(id)) {
        return Err(format!(
            "the log deletes or supersedes {id}, which the workload never asked for"
        ));
    }
    if let Some((reason, n)) = f
        .expiries
        .iter()
        .find(|(r, _)| *r != ExpiryReason::Capacity)
    {
        return Err(format!(
            "the log expires {n} records for {reason:?}; only capacity evictions can happen"
        ));
    }
    let logged: Vec<u64> = f.expiries.iter().map(|(_, n)| *n).collect();
    let mut want = oracle.acked_expiries.iter().peekable();
    let mut extra = 0usize;
    for n in &logged {
        if want.peek() == Some(&n) {
            want.next();
        } else {
            extra += 1;
        }
    }
    if want.peek().is_some() || extra > oracle.pending_lifecycle_runs {
        return Err(format!(
            "expiries in the log {logged:?} do not match the acknowledged lifecycle runs {:?} \
             (plus {} unacknowledged)",
            oracle.acked_expiries, oracle.pending_lifecycle_runs
        ));
    }
    // What landed is now known.
    oracle.acked_expiries = logged;
    oracle.pending_lifecycle_runs = 0;
    Ok(())
}

/// Checks every acknowledged rating (or one issued after it, not acknowledged) on the
/// records present, then adopts what landed.
fn check_ratings(
    present: &HashMap<RecordId, &Record>,
    oracle: &mut Oracle,
) -> Result<usize, String> {
    let pending = std::mem::take(&mut oracle.pending_ratings);
    let mut checked = 0;
    for (id, v) in &oracle.ratings {
        let Some(r) = present.get(id) else {
            continue;
        };
        let ok = r.rating == Some(*v)
            || pending
                .iter()
                .any(|(p, pv)| p == id && r.rating == Some(*pv));
        if !ok {
            return Err(format!(
                "record {id} has rating {:?}, but {v} was acknowledged",
                r.rating
            ));
        }
        checked += 1;
    }
    for (id, v) in pending {
        if present.get(&id).is_some_and(|r| r.rating == Some(v)) {
            oracle.ratings.insert(id, v);
        }
    }
    oracle.ratings.retain(|id, _| present.contains_key(id));
    Ok(checked)
}

/// Opens the store and checks it against the oracle and against a full replay.
pub async fn verify(dir: &Path, oracle: &mut Oracle, cycle: u64) -> Result<CycleReport, String> {
    // No automatic snapshot while checking: the log must not move under the comparison.
    let m = Memory::open(dir, quiet_config())
        .await
        .map_err(|e| format!("cycle {cycle}: open after kill failed: {e}"))?;
    let fail = |why: String| format!("cycle {cycle}: {why}");
    let facts = log_facts(dir).map_err(fail)?;
    check_removals(&facts, oracle).map_err(fail)?;
    let LogFacts {
        removed,
        texts: logged_texts,
        last: last_seq,
        ..
    } = facts;
    let records = m
        .records(None)
        .map_err(|e| fail(format!("reading the records: {e}")))?;
    let present: HashMap<RecordId, &Record> = records.iter().map(|r| (r.id, r)).collect();
    let mut report = CycleReport::default();
    for (id, text) in &oracle.acked {
        match present.get(id) {
            Some(r) if &r.text == text => report.acked_verified += 1,
            Some(r) => {
                return Err(fail(format!(
                    "record {id} has text {:?}, expected {text:?}",
                    r.text
                )))
            }
            None if removed.contains(id) => report.acked_verified += 1,
            None => return Err(fail(format!("acknowledged insert {id} ({text}) lost"))),
        }
    }
    for id in &oracle.removed {
        if present.contains_key(id) {
            return Err(fail(format!("acknowledged delete of {id} undone")));
        }
    }
    report.ratings_verified = check_ratings(&present, oracle).map_err(fail)?;
    for t in &logged_texts {
        if !oracle.issued.contains(t) {
            return Err(fail(format!("the log holds {t:?}, which no worker issued")));
        }
    }
    for batch in std::mem::take(&mut oracle.pending_inserts) {
        let n = batch.iter().filter(|t| logged_texts.contains(*t)).count();
        if n != 0 && n != batch.len() {
            return Err(fail(format!(
                "a pending insert batch landed partly: {n} of {}",
                batch.len()
            )));
        }
        // Whatever landed is now known: adopt it.
        if n > 0 {
            for r in records.iter().filter(|r| batch.contains(&r.text)) {
                oracle.acked.insert(r.id, r.text.clone());
            }
        }
    }
    // Records removed by the log stay removed from the oracle's view.
    oracle.acked.retain(|id, _| !removed.contains(id));
    for r in records.iter().step_by(11) {
        let o = |mode, k| SearchOptions {
            record_access: false,
            mode,
            ..SearchOptions::top_k(k)
        };
        let v = vector_for(&r.text);
        let hits = m
            .search(&v, &o(SearchMode::Vector, 1))
            .await
            .map_err(|e| fail(format!("search: {e}")))?;
        if hits.first().map(|h| h.id) != Some(r.id) {
            return Err(fail(format!("{} is not its own top-1", r.text)));
        }
        // The keyword index came back with the records: its exact words find it, and hybrid
        // search ranks it first.
        let words = m
            .search_hybrid(&r.text, &v, &o(SearchMode::Keyword, 5))
            .await
            .map_err(|e| fail(format!("keyword search: {e}")))?;
        if !words.iter().any(|h| h.id == r.id) {
            return Err(fail(format!("{} is not found by its words", r.text)));
        }
        let hybrid = m
            .search_hybrid(&r.text, &v, &o(SearchMode::Hybrid, 1))
            .await
            .map_err(|e| fail(format!("hybrid search: {e}")))?;
        if hybrid.first().map(|h| h.id) != Some(r.id) {
            return Err(fail(format!("{} is not its own hybrid top-1", r.text)));
        }
    }
    let s = m.stats();
    let in_layers: u64 = s.layers.iter().map(|l| l.records).sum();
    if s.applied_seq != s.last_seq || s.last_seq != last_seq || in_layers != records.len() as u64 {
        return Err(fail(format!(
            "stats disagree: applied {} last {} log {last_seq}; {in_layers} in layers, {} records",
            s.applied_seq,
            s.last_seq,
            records.len()
        )));
    }
    drop(m);
    let copy = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    copy_store(dir, copy.path()).map_err(fail)?;
    let full = Memory::open(
        copy.path(),
        Config {
            full_replay: true,
            ..config()
        },
    )
    .await
    .map_err(|e| fail(format!("full replay open: {e}")))?;
    let replayed = full
        .records(None)
        .map_err(|e| fail(format!("reading the replayed records: {e}")))?;
    if replayed != records {
        return Err(fail("snapshot + delta differs from a full replay".into()));
    }
    drop(full);
    Ok(report)
}

/// Copies a store directory (not its LOCK).
pub fn copy_store(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for e in std::fs::read_dir(from).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        if name == "LOCK" {
            continue;
        }
        let dst = to.join(&name);
        if e.file_type().map_err(|e| e.to_string())?.is_dir() {
            copy_store(&e.path(), &dst)?;
        } else {
            std::fs::copy(e.path(), &dst).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Runs `cycles` kill cycles on a fresh store in `dir`, cycling through every window and
/// injecting every fault kind in turn every `fault_every` cycles (0 = none). Stops at the
/// first violated expectation with the seed in the message.
pub fn run(
    worker: &Path,
    dir: &Path,
    seed: u64,
    cycles: u64,
    fault_every: u64,
    mut progress: impl FnMut(u64, &Summary),
) -> Result<Summary, String> {
    let rt = runtime()?;
    let started = Instant::now();
    let mut ctx = Ctx {
        worker,
        dir,
        seed,
        rng: Rng::new(seed),
        oracle: Oracle::default(),
        rt,
    };
    let mut sum = Summary::default();
    let mut fault_i = 0usize;
    for cycle in 0..cycles {
        let window = Window::ALL[(cycle as usize) % Window::ALL.len()];
        let r = kill_cycle(&mut ctx, cycle, window)
            .map_err(|e| format!("seed {seed}, {window:?}: {e}"));
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                if e.contains("open after kill failed") {
                    sum.failed_opens += 1;
                }
                if e.contains("lost") {
                    sum.lost += 1;
                }
                sum.cycles += 1;
                sum.elapsed = started.elapsed();
                return Err(format!("{e}\n(replay: seed {seed})"));
            }
        };
        sum.cycles += 1;
        sum.acked_verified += r.acked_verified as u64;
        sum.ratings_verified += r.ratings_verified as u64;
        let e = sum.windows.entry(format!("{window:?}")).or_default();
        e.0 += 1;
        e.1 += u64::from(r.in_window);
        sum.archive_cuts += u64::from(r.archive_cut);
        if fault_every > 0 && cycle % fault_every == fault_every - 1 {
            let fault = Fault::ALL[fault_i % Fault::ALL.len()];
            fault_i += 1;
            sum.fault_attempts += 1;
            let out = if fault == Fault::DiskFull {
                let s = seed.wrapping_mul(7919).wrapping_add(cycle);
                ctx.rt.block_on(disk_full(worker, dir, s, &mut ctx.oracle))
            } else {
                ctx.rt
                    .block_on(inject(dir, fault, &mut ctx.rng, &mut ctx.oracle))
            };
            if let Err(detail) = out.tally(fault, &mut sum.faults) {
                sum.elapsed = started.elapsed();
                return Err(format!(
                    "seed {seed}, cycle {cycle}: fault {fault:?} not detected as expected: {detail}"
                ));
            }
        }
        sum.elapsed = started.elapsed();
        progress(cycle, &sum);
    }
    sum.elapsed = started.elapsed();
    Ok(sum)
}

/// The harness's runtime (two workers, like the worker's).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The worker binary next to the running executable (`chaos-worker`), or `$CHAOS_WORKER`.
pub fn worker_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHAOS_WORKER") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("chaos-worker"), dir.join("../chaos-worker")]
        .into_iter()
        .find(|p| p.exists())
}

/// [`config`] that never writes on its own (no automatic snapshot): for opening a store to
/// look at a fault, after which the original bytes go back.
fn quiet_config() -> Config {
    Config {
        checkpoint_every: 0,
        ..config()
    }
}
