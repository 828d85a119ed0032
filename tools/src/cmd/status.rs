//! `status`: a store's figures, sizes and warnings, as text, JSON or Prometheus metrics.

use super::*;

pub(super) fn dir_bytes(p: &Path) -> u64 {
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
pub(super) fn free_bytes(p: &Path) -> Option<u64> {
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

pub(super) async fn status(dir: &Path, json: bool, prometheus: bool) -> Result<()> {
    let st = gather(dir).await?;
    if prometheus {
        print!(
            "{}",
            prometheus_text(st.stats.as_ref(), st.offline, &st.sizes, st.free)
        );
    } else if json {
        println!("{}", status_json(dir, &st));
    } else {
        print_status(dir, &st);
    }
    Ok(())
}

/// What `status` reports of a store: its MANIFEST, file sizes, free space, the engine's
/// figures (or, while another process holds the store, record counts read from its files)
/// and the warnings they call for.
struct Status {
    manifest: StoreManifest,
    sizes: [(&'static str, u64); 3],
    free: Option<u64>,
    stats: Option<Stats>,
    offline: Option<[u64; 3]>,
    warnings: Vec<String>,
}

async fn gather(dir: &Path) -> Result<Status> {
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
        warnings.extend(warnings_of(s));
    }
    Ok(Status {
        manifest,
        sizes,
        free,
        stats,
        offline,
        warnings,
    })
}

/// What an open store's figures call for a warning about.
fn warnings_of(s: &Stats) -> Vec<String> {
    let mut warnings = Vec::new();
    if s.index.pending > 10_000 {
        warnings.push(format!(
            "{} records not yet indexed (searched exactly meanwhile)",
            s.index.pending
        ));
    }
    for (path, why) in &s.open.snapshots_rejected {
        warnings.push(format!("snapshot rejected at open: {path}: {why}"));
    }
    if let Some(t) = &s.open.log.torn_tail {
        warnings.push(format!("a torn log tail was repaired at open: {t:?}"));
    }
    for why in &s.open.index_rebuilds {
        warnings.push(format!("index rebuilt at open: {why}"));
    }
    if let Some(why) = &s.open.full_check {
        warnings.push(format!(
            "damage was found after an earlier open ({why}); this open checked every snapshot file in full"
        ));
    }
    if let Some(d) = &s.damage {
        warnings.push(format!(
            "damaged snapshot file: {d}; searches fail until the store is reopened"
        ));
    }
    warnings
}

fn status_json(dir: &Path, st: &Status) -> Value {
    let layers: Vec<Value> = Layer::ALL
        .iter()
        .map(|l| match (&st.stats, st.offline) {
            (Some(s), _) => {
                json!({"layer": l.name(), "records": s.layers[l.index()].records})
            }
            (None, Some(n)) => json!({"layer": l.name(), "records": n[l.index()]}),
            _ => json!({}),
        })
        .collect();
    let m = &st.manifest;
    let mut v = json!({
        "store": dir, "timeline": m.timeline, "parent": m.parent,
        "model": m.model_id, "dimension": m.dimension,
        "layers": layers, "free_bytes": st.free, "warnings": st.warnings, "in_use": st.stats.is_none(),
    });
    for (k, b) in &st.sizes {
        v[*k] = json!(b);
    }
    if let Some(s) = &st.stats {
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
        v["index"] = json!({"indexed": s.index.indexed, "pending": s.index.pending,
                            "tombstones": s.index.tombstones, "ready": s.index.ready});
        v["graph_in_place"] = json!(s.open.graph_in_place);
        v["embedding_cache_hit_rate"] = json!(s.embedder.as_ref().map(|e| e.hit_rate()));
    }
    v
}

fn print_status(dir: &Path, st: &Status) {
    let m = &st.manifest;
    println!("store      {}", dir.display());
    println!(
        "identity   model {}, dimension {}, timeline {}{}",
        m.model_id,
        m.dimension,
        m.timeline,
        m.parent
            .as_ref()
            .map(|p| format!(" (restored from {p})"))
            .unwrap_or_default()
    );
    println!("layer       records");
    for (i, l) in Layer::ALL.iter().enumerate() {
        match (&st.stats, st.offline) {
            (Some(s), _) => println!("{:<9} {:>9}", l.name(), s.layers[i].records),
            (None, Some(n)) => println!("{:<9} {:>9}", l.name(), n[i]),
            _ => {}
        }
    }
    if let Some(s) = &st.stats {
        let x = &s.index;
        println!(
            "index      {} points, {} pending, {} tombstones{}",
            x.indexed,
            x.pending,
            x.tombstones,
            if x.ready {
                ""
            } else {
                " (not ready: searches scan exactly)"
            }
        );
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "files      log {:.1} MiB, archive {:.1} MiB, snapshots {:.1} MiB, free {}",
        mib(st.sizes[0].1),
        mib(st.sizes[1].1),
        mib(st.sizes[2].1),
        st.free.map_or("unknown".into(), |f| format!(
            "{:.1} GiB",
            f as f64 / (1u64 << 30) as f64
        ))
    );
    if let Some(s) = &st.stats {
        print_engine(s);
    }
    if st.warnings.is_empty() {
        println!("warnings   none");
    }
    for w in &st.warnings {
        println!("warning    {w}");
    }
}

fn print_engine(s: &Stats) {
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
        if s.open.graph_in_place {
            "; graph searched in place from open"
        } else {
            ""
        }
    );
}

pub(super) fn prometheus_text(
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
                "Records not yet in the HNSW index.",
                "gauge",
                vec![(String::new(), s.index.pending as f64)],
            );
            metric(
                "index_tombstones",
                "Index points whose record is gone.",
                "gauge",
                vec![(String::new(), s.index.tombstones as f64)],
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
