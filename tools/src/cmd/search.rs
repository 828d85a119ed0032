//! `store` and `search` (one query, or a JSONL batch): filters, hit output.

use super::*;

pub(super) async fn store_one(dir: &Path, a: StoreArgs, json: bool) -> Result<()> {
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
pub(super) struct Filters {
    pub(super) layers: Vec<String>,
    pub(super) tags: Vec<String>,
    pub(super) project: Option<String>,
    pub(super) session: Option<String>,
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
    pub(super) top_k: usize,
    pub(super) threshold: Option<f32>,
    pub(super) mode: String,
}

pub(super) fn options(f: Filters) -> Result<SearchOptions> {
    let Filters {
        layers,
        tags,
        project,
        session,
        since,
        until,
        top_k,
        threshold,
        mode,
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
        mode: mode.parse()?,
        tags,
        project,
        session,
        time_range,
        ..SearchOptions::default()
    })
}

/// One hit, as `search --json` and `search --batch` print it: `rank` from 1, `score` (fused
/// in hybrid mode), and the `vector_score` (cosine) and `keyword_score` (BM25) it came from.
pub(super) fn hit_json(rank: usize, h: &SearchHit) -> Value {
    json!({
        "rank": rank + 1, "id": h.id.to_string(), "score": h.score,
        "vector_score": h.vector_score, "keyword_score": h.keyword_score,
        "layer": h.layer.name(),
        "kind": h.record.kind, "text": h.record.text, "tags": h.record.tags,
        "project": h.record.project, "session": h.record.session,
        "ts": rfc3339(h.record.ts_us),
    })
}

pub(super) fn hits_json(hits: &[SearchHit]) -> Vec<Value> {
    hits.iter()
        .enumerate()
        .map(|(i, h)| hit_json(i, h))
        .collect()
}

pub(super) fn print_hits(hits: &[SearchHit], explain: bool) {
    if hits.is_empty() {
        println!("no results");
        return;
    }
    let opt = |x: Option<f32>| x.map_or("    -".to_string(), |x| format!("{x:>5.2}"));
    if explain {
        println!(
            "rank  score  vector  keyword  layer      id                                    text"
        );
    } else {
        println!("rank  score  layer      id                                    text");
    }
    for (i, h) in hits.iter().enumerate() {
        let text: String = h.record.text.replace('\n', " ").chars().take(90).collect();
        let why = if explain {
            format!("  {}    {}", opt(h.vector_score), opt(h.keyword_score))
        } else {
            String::new()
        };
        println!(
            "{:>4}  {:.3}{why}  {:<9}  {}  {}",
            i + 1,
            h.score,
            h.layer.name(),
            h.id,
            text
        );
    }
}

pub(super) async fn search(dir: &Path, a: SearchArgs, json: bool) -> Result<()> {
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
        mode: a.mode.clone(),
    })?;
    let vector = a.vector.as_deref().map(store::parse_vector).transpose()?;
    let need = match &vector {
        Some(v) => Need::Vectors(v.len()),
        // Words alone need no embedder.
        None if o.mode == SearchMode::Keyword => Need::Existing,
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
    let hits = match (&vector, a.query.as_deref()) {
        (Some(v), Some(text)) => m.search_hybrid(text, v, &o).await,
        (Some(v), None) => m.search(v, &o).await,
        (None, _) => m.search_text(&query, &o).await,
    };
    m.close().await?;
    let hits = hits?;
    if json {
        println!("{}", json!({ "results": hits_json(&hits) }));
    } else {
        print_hits(&hits, a.explain);
    }
    Ok(())
}

/// One query of a `search --batch` file.
pub(super) struct BatchQuery {
    pub(super) text: Option<String>,
    pub(super) embedding: Option<Vec<f32>>,
    pub(super) options: SearchOptions,
}

pub(super) fn parse_batch_line(line: &str, defaults: &SearchArgs) -> Result<BatchQuery> {
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
        mode: str_opt("mode").unwrap_or(defaults.mode.clone()),
    })?;
    Ok(BatchQuery {
        text,
        embedding,
        options,
    })
}

pub(super) async fn search_batch(dir: &Path, file: &Path, a: &SearchArgs) -> Result<()> {
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
                    "results": hits_json(&hits),
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
