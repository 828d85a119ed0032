//! `ingest` (files, chunked), `import` (JSONL records) and `export`.

use super::*;

/// What `ingest` did.
pub struct IngestReport {
    pub(super) files: usize,
    pub(super) chunks: usize,
    pub(super) added: u64,
}

/// `path` relative to `base` when it lies under it (labels and tags say `docs/format.md`, not
/// an absolute path).
pub(super) fn relative(path: &Path, base: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    abs.strip_prefix(&base)
        .map_or(abs.clone(), Path::to_path_buf)
}

pub(super) async fn ingest(
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

pub(super) fn print_ingest(r: &IngestReport, json: bool) {
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
pub(super) struct ImportLine {
    pub(super) record: NewRecord,
}

pub(super) fn parse_import_line(v: &Value, dim: Option<usize>) -> Result<ImportLine> {
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

pub(super) async fn import(dir: &Path, file: &Path, json: bool) -> Result<()> {
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

pub(super) fn record_json(r: &Record, v: Option<&[f32]>) -> Value {
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

pub(super) fn export(
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
