//! `log`: the event history, filtered by type, id and time.

use super::*;

/// Ids an event names.
pub(super) fn ids_of(e: &Event) -> Vec<[u8; 16]> {
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

pub(super) fn event_json(e: &Event) -> Value {
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

pub(super) fn event_text(e: &Event) -> String {
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

pub(super) fn log(dir: &Path, a: &LogArgs, json: bool) -> Result<()> {
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
