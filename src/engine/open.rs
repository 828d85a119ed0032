//! Opening a store, step by step: config and store MANIFEST checks, the lock, the log (its own
//! recovery), the newest snapshot that loads and agrees with the log, the replay of the log
//! after it, the layers' index state, and the background threads.

use super::*;

impl Memory {
    /// Opens (creating if needed) the store in `dir`: takes the lock, checks the MANIFEST,
    /// loads the newest valid snapshot, replays the log after it, and starts serving at once
    /// (HNSW dumps load and un-indexed records are indexed in the background; until then
    /// those records are searched exactly).
    pub async fn open(dir: impl AsRef<Path>, config: Config) -> Result<Memory> {
        let dir = dir.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Memory::open_blocking(dir, config))
            .await
            .map_err(|e| Error::Poisoned(format!("open task failed: {e}")))?
    }

    /// Like [`Memory::open`], with an embedder on the write path: [`Memory::store`],
    /// [`Memory::store_batch`] and [`Memory::search_text`] take text. The embedder's dimension
    /// must equal `config.dimension`, and its model id is recorded in (or checked against) the
    /// store's MANIFEST: a store made with another model is refused (re-embedding a store is a
    /// later feature, `optimize --reembed`). Concurrent calls are coalesced into batches of up
    /// to `config.batch_size` texts, waiting at most `config.flush_interval`.
    pub async fn open_with_embedder(
        dir: impl AsRef<Path>,
        mut config: Config,
        embedder: Arc<crate::Embedder>,
    ) -> Result<Memory> {
        if embedder.dimension() != config.dimension {
            return Err(Error::Config(format!(
                "the embedder's model {} makes {}-dimensional vectors, but the configured \
                 dimension is {} (MEMORY_DIMENSION)",
                embedder.model_id(),
                embedder.dimension(),
                config.dimension
            )));
        }
        config.model_id = embedder.model_id().to_string();
        let mut memory = Memory::open(dir, config.clone()).await?;
        memory.embedder = Some(crate::embed::Batcher::start(
            embedder,
            config.batch_size,
            config.flush_interval,
        ));
        Ok(memory)
    }

    pub(super) fn open_blocking(dir: PathBuf, config: Config) -> Result<Memory> {
        match Memory::open_once(dir.clone(), config.clone())? {
            Some(m) => Ok(m),
            // The replay found damage in the snapshot mapped unread and marked the store:
            // open again, checking every snapshot file in full.
            None => Memory::open_once(dir.clone(), config)?
                .ok_or_else(|| Error::corrupted(&dir, 0, "damage found again after a full check")),
        }
    }

    /// One open: `None` when the replay found damage in what the snapshot mapped unread (a
    /// row of its record table); the store is then marked (`DAMAGE_MARK`) for the next.
    pub(super) fn open_once(dir: PathBuf, config: Config) -> Result<Option<Memory>> {
        let started = Instant::now();
        config.validate()?;
        // Durable names: a store whose directory entry is lost in a power cut loses all of it.
        magray_wal::fsutil::create_dir_durable(&dir)?;
        let lock = lock_store(&dir)?;
        check_store_manifest(&dir, &config)?;
        let snap_root = dir.join("snapshots");
        magray_wal::fsutil::create_dir_durable(&snap_root)?;
        magray_wal::fsutil::remove_temp_files(&snap_root)?;
        let log = open_log(&dir, &config, lock.clone())?;
        let mut report = OpenReport {
            log: log.recovery_report().clone(),
            ..Default::default()
        };
        report.log_open_us = started.elapsed().as_micros() as u64;

        let snapshots_from = Instant::now();
        let loaded = newest_snapshot(&snap_root, &log, &config, &mut report)?;
        let start = start_from(loaded, &config, &log, &mut report);
        let Start {
            mut proj,
            dumps,
            mut snap_state,
            delta,
            model,
        } = start;
        report.snapshot_load_us = snapshots_from.elapsed().as_micros() as u64;

        let replay_from = Instant::now();
        let only_markers = replay(&dir, &mut proj, delta, &mut report)?;
        report.replay_us = replay_from.elapsed().as_micros() as u64;
        // A record the replay reached through a damaged row was skipped: this state is not
        // the log's. (Nothing was written from it yet.)
        if let Some(e) = proj.damage() {
            tracing::error!(error = %e, "damage found while replaying onto the snapshot; opening again with every snapshot file checked");
            write_damage_mark(&snap_root, &e)?;
            return Ok(None);
        }
        if snap_state.latest.is_some() && only_markers {
            // Nothing but the snapshot's own `Checkpointed` marker since: an idle open/close
            // must not write another snapshot.
            snap_state.covered_seq = proj.applied_seq;
        }
        if proj.applied_seq != log.last_seq() {
            return Err(Error::corrupted(
                dir.join("wal"),
                0,
                format!(
                    "replay stopped at sequence {} but the log ends at {}",
                    proj.applied_seq,
                    log.last_seq()
                ),
            ));
        }
        let with_dump = prepare_index(&mut proj, &dumps, &mut report);
        report.open_us = started.elapsed().as_micros() as u64;
        let inner = Inner::new(
            dir, config, log, proj, snap_state, with_dump, report, model, lock,
        );
        let threads = start_threads(&inner, dumps)?;
        Ok(Some(Memory {
            inner,
            threads: Mutex::new(threads),
            embedder: None,
        }))
    }
}

/// A store made with another dimension or model is refused, naming both; a new store gets
/// its MANIFEST.
fn check_store_manifest(dir: &Path, config: &Config) -> Result<()> {
    match StoreManifest::read(dir)? {
        Some(m) => {
            if m.dimension != config.dimension {
                return Err(Error::StoreMismatch {
                    path: StoreManifest::path(dir),
                    what: "dimension",
                    stored: m.dimension.to_string(),
                    given: config.dimension.to_string(),
                });
            }
            if m.model_id != config.model_id {
                return Err(Error::StoreMismatch {
                    path: StoreManifest::path(dir),
                    what: "embedding model",
                    stored: m.model_id,
                    given: config.model_id.clone(),
                });
            }
            Ok(())
        }
        None => {
            StoreManifest::new(config.dimension, &config.model_id, config.clock.now_us()).write(dir)
        }
    }
}

/// Opens the log (its own recovery included) with the store's settings.
fn open_log(dir: &Path, config: &Config, lock: Arc<magray_wal::StoreLock>) -> Result<Log> {
    let mut lc = LogConfig::new(dir);
    lc.lock = Some(lock);
    lc.recovery = config.recovery;
    lc.segment_bytes = config.segment_bytes;
    lc.clock = config.clock.clone();
    Ok(Log::open(lc)?)
}

/// A snapshot that loaded, with the log reader positioned at its sequence.
type Found = (u64, PathBuf, snapshot::Loaded, magray_wal::History);

/// The newest snapshot that loads and agrees with the log (none with `full_replay`). After
/// damage (the mark in `snapshots/`) every file is checked in full, a snapshot that fails is
/// set aside, and the mark is cleared once one passes or none is left.
fn newest_snapshot(
    snap_root: &Path,
    log: &Log,
    config: &Config,
    report: &mut OpenReport,
) -> Result<Option<Found>> {
    let mark = snap_root.join(DAMAGE_MARK);
    report.full_check = match std::fs::read(&mark) {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&mark, e)),
    };
    if config.full_replay {
        return Ok(None);
    }
    let check = match &report.full_check {
        Some(why) => {
            tracing::warn!(%why, "damage was found after an earlier open; checking every snapshot file in full");
            snapshot::Check::Full
        }
        None => snapshot::Check::Blocks,
    };
    let mut found = None;
    for (seq, path) in snapshot::list(snap_root)? {
        if seq > log.last_seq() {
            let why = format!(
                "snapshot at {seq} is ahead of the log (last sequence {})",
                log.last_seq()
            );
            report
                .snapshots_rejected
                .push(quarantine(&path, why, config));
            continue;
        }
        match snapshot::load(&path, config.dimension, check) {
            Ok(l) => {
                // The log's event at S must be the one the snapshot saw: after a salvage,
                // later sequences may belong to a different history. The replay goes on from
                // this same reader, so the log is read once.
                let mut delta = log.history(seq.max(1));
                if let Some(why) = timeline_mismatch(&mut delta, seq, l.manifest.ts_us) {
                    report
                        .snapshots_rejected
                        .push(quarantine(&path, why, config));
                    continue;
                }
                found = Some((seq, path, l, delta));
                break;
            }
            // After damage (the mark), a snapshot that fails the full check is set aside, so
            // that no later open maps it unread again.
            Err(e) if report.full_check.is_some() => {
                report
                    .snapshots_rejected
                    .push(quarantine(&path, e.to_string(), config));
            }
            Err(e) => {
                tracing::warn!(snapshot = %path.display(), error = %e, "snapshot rejected; trying an older one");
                report
                    .snapshots_rejected
                    .push((path.display().to_string(), e.to_string()));
            }
        }
    }
    if report.full_check.is_some() {
        // Every snapshot newer than the one loaded failed the full check and is set aside;
        // the one loaded passed it: no open needs the full check any more.
        match std::fs::remove_file(&mark) {
            Ok(()) => magray_wal::fsutil::sync_dir(snap_root)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&mark, e)),
        }
    }
    Ok(found)
}

/// Where the replay starts: the snapshot's projections, its graph dumps and what the next
/// checkpoint needs to know of it; or empty projections and the whole log.
struct Start {
    proj: Projections,
    dumps: Option<Dumps>,
    snap_state: SnapState,
    delta: magray_wal::History,
    model: PromoterModel,
}

fn start_from(found: Option<Found>, config: &Config, log: &Log, report: &mut OpenReport) -> Start {
    let Some((seq, path, l, delta)) = found else {
        let mut proj = Projections::new(config.dimension);
        proj.ttl_us = config.lifecycle.ttl_us();
        proj.keywords.set_window(config.keyword_window);
        return Start {
            proj,
            dumps: None,
            snap_state: SnapState {
                latest: None,
                covered_seq: 0,
                known_chunks: HashMap::new(),
                at: Instant::now(),
                model_version: 0,
                graph_points: 0,
            },
            delta: log.history(1),
            model: PromoterModel::default(),
        };
    };
    let model = l.model.unwrap_or_default();
    report.snapshot_seq = Some(seq);
    // The chunks and their block sums files: the next checkpoint links both.
    let known: HashMap<String, FileEntry> = l
        .manifest
        .files
        .iter()
        .filter(|f| l.manifest.is_vector_file(&f.name))
        .map(|f| (f.name.clone(), f.clone()))
        .collect();
    let dump = l.manifest.graph.clone().map(|d| (d, l.graph));
    let mut proj = l.projections;
    proj.ttl_us = config.lifecycle.ttl_us();
    proj.keywords.set_window(config.keyword_window);
    Start {
        proj,
        dumps: Some((path.clone(), l.manifest, dump)),
        snap_state: SnapState {
            latest: Some((seq, path)),
            covered_seq: seq,
            known_chunks: known,
            at: Instant::now(),
            model_version: model.version,
            graph_points: 0,
        },
        delta,
        model,
    }
}

/// Applies the log after the snapshot, in order, refusing a gap; true when it held nothing but
/// `Checkpointed` markers.
fn replay(
    dir: &Path,
    proj: &mut Projections,
    delta: magray_wal::History,
    report: &mut OpenReport,
) -> Result<bool> {
    let mut only_markers = true;
    for env in delta {
        let env = env?;
        if env.seq != proj.applied_seq + 1 {
            return Err(Error::corrupted(
                dir.join("wal"),
                0,
                format!(
                    "log replay expected sequence {} but read {}",
                    proj.applied_seq + 1,
                    env.seq
                ),
            ));
        }
        only_markers &= matches!(env.event, Event::Checkpointed { .. });
        proj.apply(&env)?;
        report.replayed_events += 1;
    }
    Ok(only_markers)
}

/// Without a usable dump every record is indexed from scratch; with one, the index gets its
/// slot list from the dump: at once from a dump searched in place, else when the indexer
/// loads it (until then searches scan exactly). Returns whether there is a dump to load.
fn prepare_index(proj: &mut Projections, dumps: &Option<Dumps>, report: &mut OpenReport) -> bool {
    if let Some((_, m, _)) = dumps {
        if m.format < snapshot::ONE_GRAPH_FORMAT
            && m.files.iter().any(|f| f.name.starts_with("hnsw-"))
        {
            report.index_rebuilds.push(format!(
                "snapshot format {} kept one graph per layer; this version keeps one graph for \
                 the store, built again from the records",
                m.format
            ));
        }
    }
    let Some((_, _, Some((_, mapped)))) = dumps else {
        proj.index.in_index.clear();
        proj.recompute_pending();
        return false;
    };
    // A dump open could map and check is searched in place at once; the indexer replaces it
    // with the usual frozen copy once it has read the dump (see `index::dump_graph`).
    if let Some(g) = mapped {
        install_graph(proj, g.slots(), g.clone());
        report.graph_in_place = true;
    }
    true
}

impl Inner {
    #[allow(clippy::too_many_arguments)] // each is one part of the opened store
    fn new(
        dir: PathBuf,
        config: Config,
        log: Log,
        proj: Projections,
        snap_state: SnapState,
        with_dump: bool,
        report: OpenReport,
        model: PromoterModel,
        lock: Arc<magray_wal::StoreLock>,
    ) -> Arc<Inner> {
        let (applied_tx, _) = watch::channel(proj.applied_seq);
        let (events_tx, _) = broadcast::channel(SUBSCRIBER_BUFFER);
        let unchecked = proj.unchecked();
        Arc::new(Inner {
            dir,
            config,
            log: RwLock::new(Some(Arc::new(log))),
            state: RwLock::new(proj),
            apply_q: Mutex::new(BTreeMap::new()),
            applied_cv: Condvar::new(),
            applied_tx,
            events_tx,
            index_lock: Mutex::new(()),
            index_wake: Wake::new(),
            maint_wake: Wake::new(),
            lifecycle_wake: Wake::new(),
            shutdown: AtomicBool::new(false),
            failure: Mutex::new(None),
            access_buf: Mutex::new(Vec::new()),
            access_hits: AtomicU64::new(0),
            snap_info: Mutex::new((
                snap_state.latest.as_ref().map(|(s, _)| *s),
                snap_state.covered_seq,
            )),
            snap: Mutex::new(snap_state),
            inflight: Mutex::new(HashSet::new()),
            graphs_loading: AtomicU64::new(with_dump as u64),
            scrubbing: AtomicBool::new(unchecked),
            damage_noted: AtomicBool::new(false),
            graph_points: AtomicU64::new(0),
            force_rebuild: AtomicBool::new(false),
            report: Mutex::new(report),
            model: RwLock::new(Arc::new(model)),
            lifecycle_lock: Mutex::new(()),
            last_lifecycle: Mutex::new(None),
            training: AtomicBool::new(false),
            bg_threads: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }
}

/// Starts the indexer (which loads the snapshot's graph `dumps` first), maintenance and
/// lifecycle threads.
fn start_threads(inner: &Arc<Inner>, dumps: Option<Dumps>) -> Result<Vec<JoinHandle<()>>> {
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| Error::io(&inner.dir, e))
    };
    let (a, b, c) = (inner.clone(), inner.clone(), inner.clone());
    Ok(vec![
        spawn(
            "magray-indexer",
            Box::new(move || a.guard("indexer", |i| i.indexer(dumps))),
        )?,
        spawn(
            "magray-maint",
            Box::new(move || b.guard("maintenance", |i| i.maintenance())),
        )?,
        spawn(
            "magray-lifecycle",
            Box::new(move || c.guard("lifecycle", |i| i.lifecycle_loop())),
        )?,
    ])
}

/// Moves a snapshot that must never be loaded (ahead of the log, or from another history)
/// out of the way, so that it is not picked up later; returns the report entry.
pub(super) fn quarantine(path: &Path, why: String, config: &Config) -> (String, String) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dst = path.with_file_name(format!("rejected-{name}-{}", config.clock.now_us()));
    tracing::warn!(snapshot = %path.display(), reason = %why, moved_to = %dst.display(), "snapshot set aside");
    // The rename is made durable: otherwise a power cut could bring the snapshot back under
    // its old name, to be loaded (a snapshot ahead of the log) and set aside again.
    let synced = |dir: Option<&Path>| match dir {
        Some(d) => magray_wal::fsutil::sync_dir(d).map_err(|e| e.to_string()),
        None => Ok(()),
    };
    let moved = match std::fs::rename(path, &dst) {
        Ok(()) => match synced(dst.parent()) {
            Ok(()) => format!("; moved to {}", dst.display()),
            Err(e) => format!("; moved to {}, not yet durably: {e}", dst.display()),
        },
        Err(e) => format!("; could not move it aside: {e}"),
    };
    (path.display().to_string(), format!("{why}{moved}"))
}

/// Why the snapshot at `seq` (committed at `ts_us`) does not belong to this log, if it does
/// not. Reads event `seq` from `delta` (a reader starting there), leaving it at `seq + 1`;
/// a snapshot at 0 has nothing to check (the reader then starts at 1).
pub(super) fn timeline_mismatch(
    delta: &mut magray_wal::History,
    seq: u64,
    ts_us: u64,
) -> Option<String> {
    if seq == 0 {
        return None;
    }
    match delta.next() {
        Some(Ok(e)) if e.seq == seq && e.ts_us == ts_us => None,
        Some(Ok(e)) => Some(format!(
            "the log's event {} was committed at {} µs, the snapshot's at {ts_us} µs: a different history",
            e.seq, e.ts_us
        )),
        Some(Err(e)) => Some(format!("cannot read the log's event {seq} to check the snapshot: {e}")),
        None => Some(format!("the log has no event {seq}")),
    }
}
