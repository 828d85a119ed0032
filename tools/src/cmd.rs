//! The commands.

use crate::store::{self, Need};
use crate::{chunk, Cli, Cmd, ExportFormat, LogArgs, RestoreArgs, SearchArgs, StoreArgs};
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use magray_memory::backup::{self, Target};
use magray_memory::lifecycle::LifecycleReport;
use magray_memory::wal::{Event, History};
use magray_memory::{
    parse_layer, verify, Layer, Memory, NewRecord, Record, RecordId, SearchHit, SearchOptions,
    Stats, StoreManifest,
};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let dir = store::path(&cli.store)?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Status { prometheus } => status(&dir, json, prometheus).await?,
        Cmd::Store(a) => store_one(&dir, a, json).await?,
        Cmd::Search(a) => search(&dir, a, json).await?,
        Cmd::Ingest {
            paths,
            layer,
            project,
        } => {
            let m = store::open(&dir, Need::Text).await?;
            let cwd = std::env::current_dir()?;
            let r = ingest(&m, &paths, &cwd, parse_layer(&layer)?, project.as_deref()).await;
            m.close().await?;
            print_ingest(&r?, json);
        }
        Cmd::Import { file } => import(&dir, &file, json).await?,
        Cmd::Export {
            format,
            layer,
            embeddings,
            output,
        } => export(
            &dir,
            format,
            layer.as_deref(),
            embeddings,
            output.as_deref(),
        )?,
        Cmd::Log(a) => log(&dir, &a, json)?,
        Cmd::Checkpoint => {
            let m = store::open(&dir, Need::Existing).await?;
            let seq = m.checkpoint().await;
            m.close().await?;
            let seq = seq?;
            out(json, json!({ "snapshot_seq": seq }), || {
                format!("snapshot written at sequence {seq}")
            });
        }
        Cmd::Optimize => {
            let m = store::open(&dir, Need::Existing).await?;
            let spinner = spinner("rebuilding indices");
            let seq = m.optimize().await;
            spinner.finish_and_clear();
            let st = m.stats();
            m.close().await?;
            let seq = seq?;
            out(
                json,
                json!({ "snapshot_seq": seq, "tombstones": st.layers.iter().map(|l| l.tombstones).collect::<Vec<_>>() }),
                || {
                    format!(
                        "indices rebuilt without tombstones; snapshot written at sequence {seq}"
                    )
                },
            );
        }
        Cmd::Promote => {
            let m = store::open(&dir, Need::Existing).await?;
            let r = m.promote().await;
            m.close().await?;
            print_lifecycle(&r?, json);
        }
        Cmd::Expire => {
            let m = store::open(&dir, Need::Existing).await?;
            let r = m.expire().await;
            m.close().await?;
            print_lifecycle(&r?, json);
        }
        Cmd::Backup { dest } => {
            let bar = counter("events copied");
            let src = dir.clone();
            let d = dest.clone();
            let b = bar.clone();
            let r = tokio::task::spawn_blocking(move || {
                backup::backup(&src, &d, &mut |n| b.set_position(n))
            })
            .await??;
            bar.finish_and_clear();
            out(json, copy_json(&r, &dest), || {
                format!(
                    "backup {}: {} new events (now up to sequence {}, {}), snapshot {}{}; timeline {}",
                    dest.display(),
                    r.events_copied,
                    r.last_seq,
                    rfc3339(r.last_ts_us),
                    r.snapshot_seq.map_or("none".into(), |s| s.to_string()),
                    if r.snapshot_copied { " (copied)" } else { "" },
                    r.timeline
                )
            });
        }
        Cmd::Restore(a) => restore(&a, json).await?,
        Cmd::Verify { path } => {
            let target = path.unwrap_or(dir);
            let t = target.clone();
            let spinner = spinner("verifying");
            let r = tokio::task::spawn_blocking(move || verify::verify(&t)).await?;
            spinner.finish_and_clear();
            let r = r.with_context(|| format!("verifying {}", target.display()))?;
            out(json, verify_json(&r), || verify_text(&r));
            if !r.ok() {
                return Ok(ExitCode::from(3));
            }
        }
        Cmd::Demo => demo(&dir).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn out(json: bool, value: Value, text: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", text());
    }
}

fn spinner(what: &str) -> ProgressBar {
    let p = ProgressBar::new_spinner().with_message(what.to_string());
    p.enable_steady_tick(Duration::from_millis(120));
    p
}

fn counter(what: &str) -> ProgressBar {
    let p = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} {msg} ({elapsed})") {
        p.set_style(style);
    }
    p.set_message(what.to_string());
    p.enable_steady_tick(Duration::from_millis(120));
    p
}

/// RFC 3339 text of a µs timestamp.
fn rfc3339(us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// µs of an RFC 3339 time (`2026-11-21T14:00:00Z`, fractions and offsets accepted).
fn parse_time(flag: &str, s: &str) -> Result<u64> {
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|e| anyhow!("{flag} {s:?}: {e}; expected RFC 3339, e.g. 2026-11-21T14:00:00Z"))?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map_err(|_| anyhow!("{flag} {s:?} is before 1970"))?
        .as_micros() as u64)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Free bytes on the filesystem holding `p`.
#[allow(unsafe_code)]
fn free_bytes(p: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `s` points to writable memory of the
    // right type; statvfs only writes into it, and we read it only when it returned 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let s = unsafe { s.assume_init() };
    #[allow(clippy::unnecessary_cast)] // u64 on Linux x86-64, narrower elsewhere
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

async fn status(dir: &Path, json: bool, prometheus: bool) -> Result<()> {
    let manifest = StoreManifest::read(dir)?.ok_or_else(|| {
        anyhow!(
            "no store at {}: create one with `magray-mem store`, `ingest`, `import` or `demo`",
            dir.display()
        )
    })?;
    let sizes = [
        ("log_bytes", dir_bytes(&dir.join("wal"))),
        ("archive_bytes", dir_bytes(&dir.join("archive"))),
        ("snapshot_bytes", dir_bytes(&dir.join("snapshots"))),
    ];
    let free = free_bytes(dir);
    let mut warnings = Vec::new();
    if let Some(f) = free {
        if f < 1 << 30 {
            warnings.push(format!(
                "only {} MiB free on the store's filesystem",
                f >> 20
            ));
        }
    }
    // In use by another process: read its files instead (no index figures then).
    let (stats, offline): (Option<Stats>, Option<[u64; 3]>) =
        match store::open(dir, Need::Existing).await {
            Ok(m) => {
                let s = m.stats();
                m.close().await?;
                (Some(s), None)
            }
            Err(e)
                if e.chain().any(|c| {
                    matches!(
                        c.downcast_ref::<magray_memory::Error>(),
                        Some(magray_memory::Error::Locked { .. })
                    )
                }) =>
            {
                warnings.push(format!("{e:#}; figures below are read from its files"));
                let mut n = [0u64; 3];
                for r in verify::read_records(dir, None)? {
                    n[r.layer.index()] += 1;
                }
                (None, Some(n))
            }
            Err(e) => return Err(e),
        };
    if let Some(s) = &stats {
        for (l, ls) in Layer::ALL.iter().zip(&s.layers) {
            if ls.pending > 10_000 {
                warnings.push(format!(
                    "{l}: {} records not yet indexed (searched exactly meanwhile)",
                    ls.pending
                ));
            }
        }
        for (path, why) in &s.open.snapshots_rejected {
            warnings.push(format!("snapshot rejected at open: {path}: {why}"));
        }
        if let Some(t) = &s.open.log.torn_tail {
            warnings.push(format!("a torn log tail was repaired at open: {t:?}"));
        }
        for (l, why) in &s.open.index_rebuilds {
            warnings.push(format!("{l} index rebuilt at open: {why}"));
        }
        if let Some(why) = &s.open.full_check {
            warnings.push(format!(
                "damage was found after an earlier open ({why}); this open checked every snapshot file in full"
            ));
        }
        if let Some(d) = &s.damage {
            warnings.push(format!(
                "damaged vector chunk: {d}; searches fail until the store is reopened"
            ));
        }
    }
    if prometheus {
        print!("{}", prometheus_text(stats.as_ref(), offline, &sizes, free));
        return Ok(());
    }
    let layers: Vec<Value> = Layer::ALL
        .iter()
        .map(|l| match (&stats, offline) {
            (Some(s), _) => {
                let x = &s.layers[l.index()];
                json!({"layer": l.name(), "records": x.records, "indexed": x.indexed,
                       "pending": x.pending, "tombstones": x.tombstones})
            }
            (None, Some(n)) => json!({"layer": l.name(), "records": n[l.index()]}),
            _ => json!({}),
        })
        .collect();
    let mut v = json!({
        "store": dir, "timeline": manifest.timeline, "parent": manifest.parent,
        "model": manifest.model_id, "dimension": manifest.dimension,
        "layers": layers, "free_bytes": free, "warnings": warnings, "in_use": stats.is_none(),
    });
    for (k, b) in &sizes {
        v[*k] = json!(b);
    }
    if let Some(s) = &stats {
        v["last_seq"] = json!(s.last_seq);
        v["last_snapshot_seq"] = json!(s.last_snapshot_seq);
        v["events_since_snapshot"] = json!(s.events_since_snapshot);
        v["pending_accesses"] = json!(s.pending_accesses);
        v["promoted"] = json!(s.promoted);
        v["expired"] = json!(s.expired);
        v["promoter_version"] = json!(s.promoter_version);
        v["open_ms"] = json!(s.open.open_us / 1000);
        v["open_parts_ms"] = json!({
            "log": s.open.log_open_us / 1000,
            "snapshot": s.open.snapshot_load_us / 1000,
            "replay": s.open.replay_us / 1000,
        });
        v["replayed_events"] = json!(s.open.replayed_events);
        v["graphs_in_place"] = json!(s
            .open
            .graphs_in_place
            .iter()
            .map(|l| l.name())
            .collect::<Vec<_>>());
        v["embedding_cache_hit_rate"] = json!(s.embedder.as_ref().map(|e| e.hit_rate()));
    }
    if json {
        println!("{v}");
        return Ok(());
    }
    println!("store      {}", dir.display());
    println!(
        "identity   model {}, dimension {}, timeline {}{}",
        manifest.model_id,
        manifest.dimension,
        manifest.timeline,
        manifest
            .parent
            .as_ref()
            .map(|p| format!(" (restored from {p})"))
            .unwrap_or_default()
    );
    println!("layer       records   indexed   pending  tombstones");
    for (i, l) in Layer::ALL.iter().enumerate() {
        match (&stats, offline) {
            (Some(s), _) => {
                let x = &s.layers[i];
                println!(
                    "{:<9} {:>9} {:>9} {:>9} {:>11}",
                    l.name(),
                    x.records,
                    x.indexed,
                    x.pending,
                    x.tombstones
                );
            }
            (None, Some(n)) => println!("{:<9} {:>9}", l.name(), n[i]),
            _ => {}
        }
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "files      log {:.1} MiB, archive {:.1} MiB, snapshots {:.1} MiB, free {}",
        mib(sizes[0].1),
        mib(sizes[1].1),
        mib(sizes[2].1),
        free.map_or("unknown".into(), |f| format!(
            "{:.1} GiB",
            f as f64 / (1u64 << 30) as f64
        ))
    );
    if let Some(s) = &stats {
        println!(
            "log        last sequence {}, last snapshot {}, {} events since",
            s.last_seq,
            s.last_snapshot_seq.map_or("none".into(), |x| x.to_string()),
            s.events_since_snapshot
        );
        println!(
            "lifecycle  promoted {} to insights, {} to assets; expired {} (ttl) {} (capacity) {} (manual); promoter model v{}",
            s.promoted[0], s.promoted[1], s.expired[0], s.expired[1], s.expired[2], s.promoter_version
        );
        println!(
            "open       {} ms (log {} ms, snapshot {} ms, replay {} ms), {} events replayed{}",
            s.open.open_us / 1000,
            s.open.log_open_us / 1000,
            s.open.snapshot_load_us / 1000,
            s.open.replay_us / 1000,
            s.open.replayed_events,
            if s.open.graphs_in_place.is_empty() {
                String::new()
            } else {
                let names: Vec<&str> = s.open.graphs_in_place.iter().map(|l| l.name()).collect();
                format!("; graphs searched in place from open: {}", names.join(", "))
            }
        );
    }
    if warnings.is_empty() {
        println!("warnings   none");
    }
    for w in &warnings {
        println!("warning    {w}");
    }
    Ok(())
}

fn prometheus_text(
    stats: Option<&Stats>,
    offline: Option<[u64; 3]>,
    sizes: &[(&str, u64)],
    free: Option<u64>,
) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, rows: Vec<(String, f64)>| {
        o.push_str(&format!(
            "# HELP magray_{name} {help}\n# TYPE magray_{name} {kind}\n"
        ));
        for (labels, v) in rows {
            o.push_str(&format!("magray_{name}{labels} {v}\n"));
        }
    };
    let per_layer = |f: &dyn Fn(usize) -> u64| {
        Layer::ALL
            .iter()
            .map(|l| (format!("{{layer=\"{}\"}}", l.name()), f(l.index()) as f64))
            .collect::<Vec<_>>()
    };
    match (stats, offline) {
        (Some(s), _) => {
            metric(
                "records",
                "Live records per layer.",
                "gauge",
                per_layer(&|i| s.layers[i].records),
            );
            metric(
                "index_pending",
                "Records not yet in their layer's HNSW index.",
                "gauge",
                per_layer(&|i| s.layers[i].pending),
            );
            metric(
                "index_tombstones",
                "Index points whose record is gone or moved.",
                "gauge",
                per_layer(&|i| s.layers[i].tombstones),
            );
            metric(
                "last_seq",
                "Last durable event sequence.",
                "gauge",
                vec![(String::new(), s.last_seq as f64)],
            );
            metric(
                "events_since_snapshot",
                "Events applied since the newest snapshot.",
                "gauge",
                vec![(String::new(), s.events_since_snapshot as f64)],
            );
            metric(
                "promoted_total",
                "Promotions ever applied.",
                "counter",
                vec![
                    ("{to=\"insights\"}".into(), s.promoted[0] as f64),
                    ("{to=\"assets\"}".into(), s.promoted[1] as f64),
                ],
            );
            metric(
                "expired_total",
                "Records ever expired, by reason.",
                "counter",
                vec![
                    ("{reason=\"ttl\"}".into(), s.expired[0] as f64),
                    ("{reason=\"capacity\"}".into(), s.expired[1] as f64),
                    ("{reason=\"manual\"}".into(), s.expired[2] as f64),
                ],
            );
            metric(
                "open_seconds",
                "Time the last open took.",
                "gauge",
                vec![(String::new(), s.open.open_us as f64 / 1e6)],
            );
        }
        (None, Some(n)) => {
            metric(
                "records",
                "Live records per layer.",
                "gauge",
                per_layer(&|i| n[i]),
            );
        }
        _ => {}
    }
    for (k, b) in sizes {
        metric(
            k,
            "Bytes on disk.",
            "gauge",
            vec![(String::new(), *b as f64)],
        );
    }
    if let Some(f) = free {
        metric(
            "free_bytes",
            "Free bytes on the store's filesystem.",
            "gauge",
            vec![(String::new(), f as f64)],
        );
    }
    o
}

async fn store_one(dir: &Path, a: StoreArgs, json: bool) -> Result<()> {
    let text = if a.text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the text from stdin")?;
        s
    } else {
        a.text
    };
    let layer = parse_layer(&a.layer)?;
    let vector = a.vector.as_deref().map(store::parse_vector).transpose()?;
    let need = match &vector {
        Some(v) => Need::Vectors(v.len()),
        None => Need::Text,
    };
    let m = store::open(dir, need).await?;
    let mut r = NewRecord::new(text, vector.clone().unwrap_or_default())
        .layer(layer)
        .kind(a.kind);
    r.tags = a.tags;
    r.project = a.project;
    r.session = a.session;
    let id = match vector {
        Some(_) => m.insert(r).await,
        None => m.store(r).await,
    };
    m.close().await?;
    let id = id?;
    out(json, json!({ "id": id.to_string() }), || id.to_string());
    Ok(())
}

/// Search filters as given on the command line or in a batch line.
struct Filters {
    layers: Vec<String>,
    tags: Vec<String>,
    project: Option<String>,
    session: Option<String>,
    since: Option<String>,
    until: Option<String>,
    top_k: usize,
    threshold: Option<f32>,
}

fn options(f: Filters) -> Result<SearchOptions> {
    let Filters {
        layers,
        tags,
        project,
        session,
        since,
        until,
        top_k,
        threshold,
    } = f;
    let time_range = match (&since, &until) {
        (None, None) => None,
        (s, u) => Some((
            s.as_deref()
                .map(|s| parse_time("--since", s))
                .transpose()?
                .unwrap_or(0),
            u.as_deref()
                .map(|u| parse_time("--until", u))
                .transpose()?
                .unwrap_or(u64::MAX),
        )),
    };
    Ok(SearchOptions {
        layers: layers
            .iter()
            .map(|l| parse_layer(l))
            .collect::<Result<_, _>>()?,
        top_k,
        score_threshold: threshold,
        tags,
        project,
        session,
        time_range,
        ..SearchOptions::default()
    })
}

fn hit_json(h: &SearchHit) -> Value {
    json!({
        "id": h.id.to_string(), "score": h.score, "layer": h.layer.name(),
        "kind": h.record.kind, "text": h.record.text, "tags": h.record.tags,
        "project": h.record.project, "session": h.record.session,
        "ts": rfc3339(h.record.ts_us),
    })
}

fn print_hits(hits: &[SearchHit]) {
    if hits.is_empty() {
        println!("no results");
        return;
    }
    println!("rank  score  layer      id                                    text");
    for (i, h) in hits.iter().enumerate() {
        let text: String = h.record.text.replace('\n', " ").chars().take(90).collect();
        println!(
            "{:>4}  {:.3}  {:<9}  {}  {}",
            i + 1,
            h.score,
            h.layer.name(),
            h.id,
            text
        );
    }
}

async fn search(dir: &Path, a: SearchArgs, json: bool) -> Result<()> {
    if let Some(file) = &a.batch {
        return search_batch(dir, file, &a).await;
    }
    let o = options(Filters {
        layers: a.layers.clone(),
        tags: a.tags.clone(),
        project: a.project.clone(),
        session: a.session.clone(),
        since: a.since.clone(),
        until: a.until.clone(),
        top_k: a.top_k,
        threshold: a.threshold,
    })?;
    let vector = a.vector.as_deref().map(store::parse_vector).transpose()?;
    let need = match &vector {
        Some(v) => Need::Vectors(v.len()),
        None => Need::Text,
    };
    let Some(query) = a.query.clone().or(vector.as_ref().map(|_| String::new())) else {
        bail!("give a QUERY text, --vector or --batch FILE");
    };
    if StoreManifest::read(dir)?.is_none() {
        bail!(
            "no store at {}: create one with `magray-mem store`, `ingest`, `import` or `demo`",
            dir.display()
        );
    }
    let m = store::open(dir, need).await?;
    let hits = match &vector {
        Some(v) => m.search(v, &o).await,
        None => m.search_text(&query, &o).await,
    };
    m.close().await?;
    let hits = hits?;
    if json {
        println!(
            "{}",
            json!({ "results": hits.iter().map(hit_json).collect::<Vec<_>>() })
        );
    } else {
        print_hits(&hits);
    }
    Ok(())
}

/// One query of a `search --batch` file.
struct BatchQuery {
    text: Option<String>,
    embedding: Option<Vec<f32>>,
    options: SearchOptions,
}

fn parse_batch_line(line: &str, defaults: &SearchArgs) -> Result<BatchQuery> {
    let v: Value = serde_json::from_str(line)?;
    let strs = |k: &str| -> Result<Vec<String>> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow!("{k}: expected strings"))
                })
                .collect(),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(_) => Err(anyhow!("{k}: expected a string or a list of strings")),
        }
    };
    let str_opt = |k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    let text = str_opt("text");
    let embedding = match v.get("embedding") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|x| {
                    x.as_f64()
                        .map(|f| f as f32)
                        .ok_or_else(|| anyhow!("embedding: expected numbers"))
                })
                .collect::<Result<Vec<f32>>>()?,
        ),
        Some(_) => bail!("embedding: expected a list of numbers"),
    };
    if text.is_none() == embedding.is_none() {
        bail!("give exactly one of \"text\" and \"embedding\"");
    }
    let layers = if v.get("layers").is_some() {
        strs("layers")?
    } else {
        defaults.layers.clone()
    };
    let tags = if v.get("tags").is_some() {
        strs("tags")?
    } else {
        defaults.tags.clone()
    };
    let top_k = match v.get("top_k") {
        Some(k) => k
            .as_u64()
            .ok_or_else(|| anyhow!("top_k: expected a number"))? as usize,
        None => defaults.top_k,
    };
    let threshold = match v.get("threshold") {
        Some(t) => Some(
            t.as_f64()
                .ok_or_else(|| anyhow!("threshold: expected a number"))? as f32,
        ),
        None => defaults.threshold,
    };
    let options = options(Filters {
        layers,
        tags,
        project: str_opt("project").or(defaults.project.clone()),
        session: str_opt("session").or(defaults.session.clone()),
        since: str_opt("since").or(defaults.since.clone()),
        until: str_opt("until").or(defaults.until.clone()),
        top_k,
        threshold,
    })?;
    Ok(BatchQuery {
        text,
        embedding,
        options,
    })
}

async fn search_batch(dir: &Path, file: &Path, a: &SearchArgs) -> Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut queries = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("{} line {}", file.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let q = parse_batch_line(&line, a)
            .with_context(|| format!("{} line {}: not a valid query", file.display(), i + 1))?;
        queries.push((i + 1, q));
    }
    let need = if queries.iter().any(|(_, q)| q.text.is_some()) {
        Need::Text
    } else {
        match queries.first() {
            Some((_, q)) => Need::Vectors(q.embedding.as_ref().map_or(0, Vec::len)),
            None => Need::Existing,
        }
    };
    if StoreManifest::read(dir)?.is_none() {
        bail!("no store at {}", dir.display());
    }
    let m = store::open(dir, need).await?;
    let bar = ProgressBar::new(queries.len() as u64);
    let stdout = std::io::stdout();
    let mut w = stdout.lock();
    let mut result = Ok(());
    for (line, q) in &queries {
        let started = Instant::now();
        let hits = match (&q.text, &q.embedding) {
            (Some(t), _) => m.search_text(t, &q.options).await,
            (None, Some(v)) => m.search(v, &q.options).await,
            (None, None) => unreachable!("checked when parsed"),
        };
        let latency_ms = started.elapsed().as_secs_f64() * 1e3;
        match hits {
            Ok(hits) => {
                let v = json!({
                    "line": line,
                    "ids": hits.iter().map(|h| h.id.to_string()).collect::<Vec<_>>(),
                    "scores": hits.iter().map(|h| h.score).collect::<Vec<_>>(),
                    "latency_ms": latency_ms,
                });
                writeln!(w, "{v}")?;
            }
            Err(e) => {
                result = Err(anyhow!(e).context(format!("{} line {line}", file.display())));
                break;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    m.close().await?;
    result
}

/// What `ingest` did.
pub struct IngestReport {
    files: usize,
    chunks: usize,
    added: u64,
}

/// `path` relative to `base` when it lies under it (labels and tags say `docs/format.md`, not
/// an absolute path).
fn relative(path: &Path, base: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    abs.strip_prefix(&base)
        .map_or(abs.clone(), Path::to_path_buf)
}

async fn ingest(
    m: &Memory,
    paths: &[PathBuf],
    base: &Path,
    layer: Layer,
    project: Option<&str>,
) -> Result<IngestReport> {
    let files = chunk::files(paths)?;
    let before: u64 = m.stats().layers.iter().map(|l| l.records).sum();
    let bar = ProgressBar::new(files.len() as u64);
    let mut chunks = 0;
    for f in &files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                bar.println(format!("skipped {} (not UTF-8 text)", f.display()));
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.display())),
        };
        let kind = chunk::kind_of(f).unwrap_or("doc");
        let rel = relative(f, base);
        let label = rel.display().to_string();
        let pieces = chunk::chunks(&label, &text, kind == "doc");
        chunks += pieces.len();
        let tags = chunk::tags(&rel);
        let records: Vec<NewRecord> = pieces
            .into_iter()
            .map(|c| {
                let mut r = NewRecord::text(c).layer(layer).kind(kind);
                r.tags = tags.clone();
                r.tags.push("ingest".into());
                r.project = project.map(String::from);
                r
            })
            .collect();
        if !records.is_empty() {
            m.store_batch(records)
                .await
                .with_context(|| format!("storing {}", f.display()))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let after: u64 = m.stats().layers.iter().map(|l| l.records).sum();
    Ok(IngestReport {
        files: files.len(),
        chunks,
        added: after.saturating_sub(before),
    })
}

fn print_ingest(r: &IngestReport, json: bool) {
    out(
        json,
        json!({"files": r.files, "chunks": r.chunks, "added": r.added}),
        || {
            format!(
                "{} files, {} chunks, {} new records ({} already stored)",
                r.files,
                r.chunks,
                r.added,
                r.chunks as u64 - r.added.min(r.chunks as u64)
            )
        },
    );
}

/// One line of an import file, validated.
struct ImportLine {
    record: NewRecord,
}

fn parse_import_line(v: &Value, dim: Option<usize>) -> Result<ImportLine> {
    let text = v
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or_else(|| anyhow!("\"text\" (a string) is required"))?;
    let mut r = NewRecord::new(text, Vec::new());
    if let Some(l) = v.get("layer").and_then(|x| x.as_str()) {
        r.layer = parse_layer(l)?;
    }
    if let Some(k) = v.get("kind").and_then(|x| x.as_str()) {
        r.kind = k.to_string();
    }
    if let Some(t) = v.get("tags") {
        r.tags = t
            .as_array()
            .ok_or_else(|| anyhow!("\"tags\" must be a list of strings"))?
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| anyhow!("\"tags\" must be strings"))
            })
            .collect::<Result<_>>()?;
    }
    r.project = v.get("project").and_then(|x| x.as_str()).map(String::from);
    r.session = v.get("session").and_then(|x| x.as_str()).map(String::from);
    match v.get("ts") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => r.ts_us = Some(parse_time("\"ts\"", s)?),
        Some(Value::Number(n)) => {
            r.ts_us = Some(
                n.as_u64()
                    .ok_or_else(|| anyhow!("\"ts\": µs since 1970, a whole number"))?,
            )
        }
        Some(_) => bail!("\"ts\": an RFC 3339 string or µs since 1970"),
    }
    if let Some(id) = v.get("id").and_then(|x| x.as_str()) {
        r.id = Some(id.parse::<RecordId>().map_err(|e| anyhow!("\"id\": {e}"))?);
    }
    if let Some(e) = v.get("embedding") {
        let e: Vec<f32> = e
            .as_array()
            .ok_or_else(|| anyhow!("\"embedding\" must be a list of numbers"))?
            .iter()
            .map(|x| {
                x.as_f64()
                    .map(|f| f as f32)
                    .ok_or_else(|| anyhow!("\"embedding\" must be numbers"))
            })
            .collect::<Result<_>>()?;
        if let Some(d) = dim {
            if e.len() != d {
                bail!(
                    "\"embedding\" has {} dimensions, the store has {d}",
                    e.len()
                );
            }
        }
        r.embedding = e;
    }
    Ok(ImportLine { record: r })
}

async fn import(dir: &Path, file: &Path, json: bool) -> Result<()> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let manifest = StoreManifest::read(dir)?;
    let mut dim = manifest.as_ref().map(|m| m.dimension);
    // Every line is checked before anything is written: a bad line writes nothing.
    let mut lines = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{} line {n}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {n}: not JSON; nothing was imported",
                file.display()
            )
        })?;
        let parsed = parse_import_line(&v, dim)
            .with_context(|| format!("{} line {n}; nothing was imported", file.display()))?;
        if dim.is_none() && !parsed.record.embedding.is_empty() {
            dim = Some(parsed.record.embedding.len());
        }
        lines.push(parsed.record);
    }
    let any_text = lines.iter().any(|r| r.embedding.is_empty());
    let need = if any_text {
        Need::Text
    } else {
        Need::Vectors(dim.unwrap_or(0))
    };
    if lines.is_empty() {
        bail!("{} holds no records", file.display());
    }
    let m = store::open(dir, need).await?;
    if let Some(d) = m.stats().dimension.checked_sub(0) {
        if let Some((n, _)) = lines
            .iter()
            .enumerate()
            .find(|(_, r)| !r.embedding.is_empty() && r.embedding.len() != d)
        {
            m.close().await?;
            bail!(
                "{} record {}: the embedding has a different dimension than the store's {d}; nothing was imported",
                file.display(),
                n + 1
            );
        }
    }
    let before: u64 = m.stats().layers.iter().map(|l| l.records).sum();
    let bar = ProgressBar::new(lines.len() as u64);
    let total = lines.len();
    let mut result = Ok(());
    let mut lines = lines.into_iter().peekable();
    while lines.peek().is_some() {
        let batch: Vec<NewRecord> = lines.by_ref().take(256).collect();
        let n = batch.len() as u64;
        // Idempotent by id and by content: a rerun after a crash skips what is there.
        if let Err(e) = m.store_batch(batch).await {
            result = Err(anyhow!(e));
            break;
        }
        bar.inc(n);
    }
    bar.finish_and_clear();
    let after: u64 = m.stats().layers.iter().map(|l| l.records).sum();
    m.close().await?;
    result?;
    let added = after.saturating_sub(before);
    out(
        json,
        json!({"records": total, "added": added, "already_present": total as u64 - added.min(total as u64)}),
        || {
            format!(
                "{total} records read, {added} imported, {} already present",
                total as u64 - added.min(total as u64)
            )
        },
    );
    Ok(())
}

fn record_json(r: &Record, v: Option<&[f32]>) -> Value {
    let mut j = json!({
        "id": r.id.to_string(), "text": r.text, "layer": r.layer.name(), "kind": r.kind,
        "tags": r.tags, "project": r.project, "session": r.session,
        "ts": rfc3339(r.ts_us), "rating": r.rating,
    });
    if let Some(v) = v {
        j["embedding"] = json!(v);
    }
    j
}

fn export(
    dir: &Path,
    format: ExportFormat,
    layer: Option<&str>,
    embeddings: bool,
    output: Option<&Path>,
) -> Result<()> {
    let layer = layer.map(parse_layer).transpose()?;
    let records = verify::read_records_with_vectors(dir, layer)
        .with_context(|| format!("reading {}", dir.display()))?;
    let mut w: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match format {
        ExportFormat::Jsonl => {
            for (r, v) in &records {
                writeln!(w, "{}", record_json(r, embeddings.then_some(v.as_slice())))?;
            }
        }
        ExportFormat::Markdown => {
            for l in Layer::ALL {
                let rs: Vec<_> = records.iter().filter(|(r, _)| r.layer == l).collect();
                if rs.is_empty() {
                    continue;
                }
                writeln!(w, "# {} ({} records)\n", l.name(), rs.len())?;
                for (r, _) in rs {
                    let tags = if r.tags.is_empty() {
                        String::new()
                    } else {
                        format!(" · tags: {}", r.tags.join(", "))
                    };
                    writeln!(w, "## {} · {} · {}{tags}\n", r.id, r.kind, rfc3339(r.ts_us))?;
                    writeln!(w, "{}\n", r.text)?;
                }
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// Ids an event names.
fn ids_of(e: &Event) -> Vec<[u8; 16]> {
    match e {
        Event::Inserted(i) => vec![i.id],
        Event::Accessed(a) => a.hits.iter().map(|h| h.id).collect(),
        Event::Rated { id, .. } | Event::Deleted { id } => vec![*id],
        Event::Promoted(list) => list.iter().map(|p| p.id).collect(),
        Event::Expired { ids, .. } => ids.clone(),
        Event::Superseded { old, new } => vec![*old, *new],
        Event::Checkpointed { .. } => Vec::new(),
    }
}

fn event_json(e: &Event) -> Value {
    let id = |b: &[u8; 16]| RecordId(*b).to_string();
    match e {
        Event::Inserted(i) => json!({"id": id(&i.id), "layer": i.layer.name(), "kind": i.kind,
            "text": i.text, "tags": i.tags, "project": i.project, "session": i.session}),
        Event::Accessed(a) => json!({"source": format!("{:?}", a.source), "session": a.session,
            "hits": a.hits.iter().map(|h| json!({"id": id(&h.id), "rank": h.rank, "score": h.score})).collect::<Vec<_>>()}),
        Event::Rated { id: i, rating } => json!({"id": id(i), "rating": rating}),
        Event::Promoted(list) => json!({"promotions": list.iter().map(|p| json!({"id": id(&p.id),
            "from": p.from.name(), "to": p.to.name(), "score": p.score, "model_version": p.model_version})).collect::<Vec<_>>()}),
        Event::Expired { ids, reason } => {
            json!({"ids": ids.iter().map(id).collect::<Vec<_>>(), "reason": format!("{reason:?}").to_lowercase()})
        }
        Event::Deleted { id: i } => json!({"id": id(i)}),
        Event::Superseded { old, new } => json!({"old": id(old), "new": id(new)}),
        Event::Checkpointed { snapshot_seq } => json!({"snapshot_seq": snapshot_seq}),
    }
}

fn event_text(e: &Event) -> String {
    let id = |b: &[u8; 16]| RecordId(*b).to_string();
    let short = |t: &str| -> String { t.replace('\n', " ").chars().take(70).collect() };
    match e {
        Event::Inserted(i) => format!("{} {} {:?}", id(&i.id), i.layer.name(), short(&i.text)),
        Event::Accessed(a) => format!(
            "{:?} {} record(s){}",
            a.source,
            a.hits.len(),
            a.session
                .as_ref()
                .map(|s| format!(" session {s}"))
                .unwrap_or_default()
        ),
        Event::Rated { id: i, rating } => format!("{} rating {rating}", id(i)),
        Event::Promoted(list) => format!(
            "{} record(s): {}",
            list.len(),
            list.iter()
                .take(3)
                .map(|p| format!(
                    "{} {}→{} ({:.2})",
                    id(&p.id),
                    p.from.name(),
                    p.to.name(),
                    p.score
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::Expired { ids, reason } => format!("{} record(s), {reason:?}", ids.len()),
        Event::Deleted { id: i } => id(i),
        Event::Superseded { old, new } => format!("{} → {}", id(old), id(new)),
        Event::Checkpointed { snapshot_seq } => format!("snapshot at {snapshot_seq}"),
    }
}

fn log(dir: &Path, a: &LogArgs, json: bool) -> Result<()> {
    verify::manifest(dir)?;
    let since = a
        .since
        .as_deref()
        .map(|s| parse_time("--since", s))
        .transpose()?;
    let mut h = History::open_offline(dir, a.from_seq.unwrap_or(1));
    if let Some(s) = a.to_seq {
        h = h.until_seq(s);
    }
    if let Some(u) = &a.until {
        h = h.until_ts_us(parse_time("--until", u)?);
    }
    let id =
        a.id.as_deref()
            .map(|s| {
                s.parse::<RecordId>()
                    .map_err(|e| anyhow!("--id {s:?}: {e}"))
            })
            .transpose()?;
    let known = [
        "inserted",
        "accessed",
        "rated",
        "promoted",
        "expired",
        "deleted",
        "superseded",
        "checkpointed",
    ];
    let types: HashSet<String> = a.types.iter().map(|t| t.to_lowercase()).collect();
    if let Some(bad) = types.iter().find(|t| !known.contains(&t.as_str())) {
        bail!("--type {bad:?}: expected one of {}", known.join(", "));
    }
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut shown = 0;
    for env in h {
        let env = env.with_context(|| format!("reading the log of {}", dir.display()))?;
        if since.is_some_and(|s| env.ts_us < s) {
            continue;
        }
        if !types.is_empty() && !types.contains(env.event.type_name()) {
            continue;
        }
        if let Some(id) = id {
            if !ids_of(&env.event).contains(&id.0) {
                continue;
            }
        }
        if shown >= a.limit {
            break;
        }
        shown += 1;
        if json {
            writeln!(
                w,
                "{}",
                json!({"seq": env.seq, "ts": rfc3339(env.ts_us), "ts_us": env.ts_us,
                       "type": env.event.type_name(), "event": event_json(&env.event)})
            )?;
        } else {
            writeln!(
                w,
                "{:>8}  {}  {:<12} {}",
                env.seq,
                rfc3339(env.ts_us),
                env.event.type_name(),
                event_text(&env.event)
            )?;
        }
    }
    w.flush()?;
    Ok(())
}

fn print_lifecycle(r: &LifecycleReport, json: bool) {
    out(
        json,
        json!({"promoter": r.promoter, "model_version": r.model_version, "scored": r.scored,
               "promoted": {"insights": r.promoted[0], "assets": r.promoted[1]},
               "saved_from_expiry": r.saved_from_expiry, "expired_ttl": r.expired_ttl,
               "expired_capacity": r.expired_capacity, "seq": r.seq}),
        || {
            format!(
                "{} promoter (model v{}): {} scored; promoted {} to insights, {} to assets ({} instead of expiring); expired {} (ttl), {} (capacity)",
                r.promoter,
                r.model_version,
                r.scored,
                r.promoted[0],
                r.promoted[1],
                r.saved_from_expiry,
                r.expired_ttl,
                r.expired_capacity
            )
        },
    );
}

fn copy_json(r: &backup::CopyReport, dest: &Path) -> Value {
    json!({"dest": dest, "events_copied": r.events_copied, "last_seq": r.last_seq,
           "last_ts": rfc3339(r.last_ts_us), "snapshot_seq": r.snapshot_seq,
           "snapshot_copied": r.snapshot_copied, "timeline": r.timeline})
}

fn verify_json(r: &verify::VerifyReport) -> Value {
    json!({"dir": r.dir, "ok": r.ok(), "timeline": r.timeline, "events": r.events,
           "last_seq": r.last_seq, "first_ts": rfc3339(r.first_ts_us), "last_ts": rfc3339(r.last_ts_us),
           "torn_tail": r.torn_tail, "records": r.records,
           "snapshots": r.snapshots.iter().map(|(s, p)| json!({"seq": s, "problem": p})).collect::<Vec<_>>(),
           "problems": r.problems})
}

fn verify_text(r: &verify::VerifyReport) -> String {
    let mut s = format!(
        "{}: {} events (sequences 1..={}, {} … {}), {} snapshot(s) checked, records {} / {} / {}",
        r.dir.display(),
        r.events,
        r.last_seq,
        rfc3339(r.first_ts_us),
        rfc3339(r.last_ts_us),
        r.snapshots.len(),
        r.records[0],
        r.records[1],
        r.records[2]
    );
    if let Some(t) = &r.torn_tail {
        s.push_str(&format!(
            "\nnote: the log ends in an unfinished entry (never acknowledged): {t}"
        ));
    }
    if r.ok() {
        s.push_str("\nOK: every checksum, sequence and projection checks out");
    } else {
        for p in &r.problems {
            s.push_str(&format!("\nPROBLEM: {p}"));
        }
    }
    s
}

async fn restore(a: &RestoreArgs, json: bool) -> Result<()> {
    let target = match (&a.to_time, a.to_seq) {
        (Some(t), None) => Target::Time(parse_time("--to-time", t)?),
        (None, Some(s)) => Target::Seq(s),
        _ => bail!("give exactly one of --to-time and --to-seq"),
    };
    let (from, into) = (a.from.clone(), a.into.clone());
    let bar = counter("events restored");
    let b = bar.clone();
    let r = tokio::task::spawn_blocking(move || {
        backup::restore(&from, &into, target, &mut |n| b.set_position(n))
    })
    .await?;
    bar.finish_and_clear();
    let (copied, report) =
        r.with_context(|| format!("restoring {} into {}", a.from.display(), a.into.display()))?;
    out(
        json,
        json!({"into": a.into, "copy": copy_json(&copied, &a.into), "verify": verify_json(&report)}),
        || {
            format!(
                "restored {} events (up to sequence {}, committed {}) into {}, from snapshot {}; new timeline {}; verified OK",
                copied.events_copied,
                copied.last_seq,
                rfc3339(copied.last_ts_us),
                a.into.display(),
                copied.snapshot_seq.map_or("none (full replay)".into(), |s| s.to_string()),
                copied.timeline
            )
        },
    );
    Ok(())
}

/// The README's first command: this repository's docs into Assets, a short agent session
/// into Interact, three questions, a promotion run, and the status.
async fn demo(dir: &Path) -> Result<()> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut docs: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "docs"]
        .iter()
        .map(|p| repo.join(p))
        .filter(|p| p.exists())
        .collect();
    if docs.is_empty() {
        docs.push(PathBuf::from("."));
    }
    println!("store: {}\n", dir.display());
    let m = store::open(dir, Need::Text).await?;
    let started = Instant::now();
    let r = ingest(&m, &docs, &repo, Layer::Assets, Some("magray-memory")).await?;
    println!(
        "1. ingested this repository's docs into assets: {} files, {} chunks, {} new records ({:.1} s)",
        r.files,
        r.chunks,
        r.added,
        started.elapsed().as_secs_f64()
    );
    let session = format!("demo-{}", now_us() / 1_000_000);
    let messages = [
        "User: our agent lost a day of notes after the laptop crashed; we need memory that survives a kill -9.",
        "Agent: I will keep every note in magray-memory; a write returns only after its fsync.",
        "User: we also need to go back to what the agent knew yesterday, before a bad import.",
        "Agent: noted — point-in-time restore from the event log can do that.",
        "User: the disk on the build box is tiny; what happens when it fills up?",
        "Agent: TODO check how the store behaves on a full disk and what error it gives.",
        "User: searches must stay fast as the memory grows to a million records.",
        "Agent: decision: keep session chatter in interact and promote only what keeps being used.",
    ];
    let records: Vec<NewRecord> = messages
        .iter()
        .map(|t| {
            NewRecord::text(*t)
                .layer(Layer::Interact)
                .kind("message")
                .session(session.clone())
                .project("magray-memory")
        })
        .collect();
    m.store_batch(records).await?;
    println!(
        "2. played an agent session into interact: {} messages (session {session})",
        messages.len()
    );
    println!("3. searched:");
    for q in [
        "how does the store recover after a crash?",
        "restore the memory as it was yesterday",
        "what happens when the disk is full?",
    ] {
        let o = SearchOptions::top_k(3).asked_by(Some(&session), Some("magray-memory"));
        let hits = m.search_text(q, &o).await?;
        println!("\n   \"{q}\"");
        for h in &hits {
            let text: String = h.record.text.replace('\n', " ").chars().take(100).collect();
            println!("   {:.3}  {:<9} {text}", h.score, h.layer.name());
        }
    }
    m.flush_accesses().await?;
    let p = m.promote().await?;
    println!(
        "\n4. promotion run ({} promoter, model v{}): {} scored, {} promoted to insights, {} to assets",
        p.promoter, p.model_version, p.scored, p.promoted[0], p.promoted[1]
    );
    let s = m.stats();
    println!(
        "5. status: interact {} · insights {} · assets {} records; log at sequence {}; embedding cache hit rate {:.0}%",
        s.layers[0].records,
        s.layers[1].records,
        s.layers[2].records,
        s.last_seq,
        s.embedder.as_ref().map_or(0.0, |e| e.hit_rate() * 100.0)
    );
    m.close().await?;
    println!("\nnext: magray-mem status · magray-mem search \"…\" · magray-mem log --type promoted · magray-mem backup DIR");
    Ok(())
}
