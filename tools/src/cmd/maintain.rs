//! Output of the maintenance commands (lifecycle runs, backups, verify) and `restore`.

use super::*;

pub(super) fn print_lifecycle(r: &LifecycleReport, json: bool) {
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

pub(super) fn copy_json(r: &backup::CopyReport, dest: &Path) -> Value {
    json!({"dest": dest, "events_copied": r.events_copied, "last_seq": r.last_seq,
           "last_ts": rfc3339(r.last_ts_us), "snapshot_seq": r.snapshot_seq,
           "snapshot_copied": r.snapshot_copied, "timeline": r.timeline})
}

pub(super) fn verify_json(r: &verify::VerifyReport) -> Value {
    json!({"dir": r.dir, "ok": r.ok(), "timeline": r.timeline, "events": r.events,
           "last_seq": r.last_seq, "first_ts": rfc3339(r.first_ts_us), "last_ts": rfc3339(r.last_ts_us),
           "torn_tail": r.torn_tail, "records": r.records,
           "snapshots": r.snapshots.iter().map(|(s, p)| json!({"seq": s, "problem": p})).collect::<Vec<_>>(),
           "problems": r.problems})
}

pub(super) fn verify_text(r: &verify::VerifyReport) -> String {
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

pub(super) async fn restore(a: &RestoreArgs, json: bool) -> Result<()> {
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
