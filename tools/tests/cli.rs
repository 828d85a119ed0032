#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! `magray-mem` end to end: every command on real stores, point-in-time restore against the
//! log, backups taken while another handle writes, and bad input (exit code, message, nothing
//! half-written).

use magray_memory::wal::ManualClock;
use magray_memory::{Config, Layer, LifecycleConfig, Memory, NewRecord, Promoter, RecordId};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_magray-mem");
const T0: u64 = 1_767_571_200_000_000; // 2026-01-05T00:00:00Z
const MIN: u64 = 60_000_000;

fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("MEMORY_DB_PATH")
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let o = run(store, args);
    assert!(
        o.status.success(),
        "magray-mem {args:?} failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn fails(store: &Path, args: &[&str], code: i32, says: &str) -> String {
    let o = run(store, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "magray-mem {args:?}: {err}");
    assert!(
        err.contains(says),
        "magray-mem {args:?}: expected {says:?} in: {err}"
    );
    err
}

/// `restore --from FROM <flag> VALUE --into INTO`.
fn restore_args<'a>(from: &'a str, flag: &'a str, value: &'a str, into: &'a str) -> [&'a str; 7] {
    ["restore", "--from", from, flag, value, "--into", into]
}

fn json(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap()
}

fn lines(s: &str) -> Vec<Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(json)
        .collect()
}

fn records(store: &Path) -> u64 {
    let s = json(&ok(store, &["status", "--json"]));
    s["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["records"].as_u64().unwrap())
        .sum()
}

#[test]
fn store_search_status_log_and_lifecycle_commands_on_a_vector_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    fails(&s, &["status"], 1, "no store at");
    let a = ok(
        &s,
        &[
            "store",
            "the build needs gcc",
            "--vector",
            "1,0,0,0",
            "--layer",
            "assets",
            "--tag",
            "build",
        ],
    );
    let a = a.trim().to_string();
    ok(
        &s,
        &[
            "store",
            "lunch at noon",
            "--vector",
            "0,1,0,0",
            "--session",
            "s1",
        ],
    );
    ok(
        &s,
        &[
            "store",
            "deploy on friday",
            "--vector",
            "0,0,1,0",
            "--project",
            "atlas",
        ],
    );
    // Same content again: no new record, same id.
    assert_eq!(
        ok(
            &s,
            &[
                "store",
                "the build needs gcc",
                "--vector",
                "1,0,0,0",
                "--layer",
                "assets"
            ]
        )
        .trim(),
        a
    );
    assert_eq!(records(&s), 3);

    let table = ok(&s, &["search", "--vector", "0.9,0.1,0,0", "-k", "2"]);
    assert!(
        table.contains(&a) && table.contains("the build needs gcc"),
        "{table}"
    );
    let r = json(&ok(
        &s,
        &[
            "--json",
            "search",
            "--vector",
            "0.9,0.1,0,0",
            "--layer",
            "assets",
            "--tag",
            "build",
        ],
    ));
    let hits = r["results"].as_array().unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0]["id"], a.as_str());
    let r = json(&ok(
        &s,
        &[
            "--json",
            "search",
            "--vector",
            "0,0,1,0",
            "--project",
            "atlas",
            "--threshold",
            "0.9",
        ],
    ));
    assert_eq!(r["results"][0]["text"], "deploy on friday");
    fails(&s, &["search", "--vector", "1,0"], 1, "dimension");

    // Words alone need no embedder: keyword mode on a store of given vectors.
    let r = json(&ok(&s, &["--json", "search", "gcc", "--mode", "keyword"]));
    assert_eq!(r["results"][0]["id"], a.as_str());
    assert!(r["results"][0]["keyword_score"].as_f64().unwrap() > 0.0);
    assert!(r["results"][0]["vector_score"].is_null());
    // A query's text and vector together: hybrid, and --explain shows where scores came from.
    let t = ok(&s, &["search", "gcc", "--vector", "0,0,1,0", "--explain"]);
    assert!(t.contains("keyword") && t.contains(&a), "{t}");
    fails(
        &s,
        &["search", "gcc", "--mode", "fuzzy"],
        1,
        "vector, keyword or hybrid",
    );

    // search --batch: one result line per query, with latency.
    let q = dir.path().join("q.jsonl");
    std::fs::write(&q, "{\"embedding\": [1,0,0,0], \"top_k\": 1}\n\n{\"embedding\": [0,1,0,0], \"layers\": [\"interact\"]}\n").unwrap();
    let out = lines(&ok(&s, &["search", "--batch", q.to_str().unwrap()]));
    assert_eq!(out.len(), 2);
    assert_eq!(out[0]["line"], 1);
    // The same hit objects as `search --json`.
    assert_eq!(out[0]["results"][0]["id"], a.as_str());
    assert_eq!(out[0]["results"][0]["rank"], 1);
    assert_eq!(out[1]["line"], 3);
    assert!(out[1]["latency_ms"].as_f64().unwrap() >= 0.0);
    std::fs::write(&q, "{\"embedding\": [1,0,0,0]}\n{\"text\": 5}\n").unwrap();
    fails(&s, &["search", "--batch", q.to_str().unwrap()], 1, "line 2");

    let st = json(&ok(&s, &["status", "--json"]));
    assert_eq!(st["layers"][2]["records"], 1);
    assert_eq!(st["dimension"], 4);
    assert_eq!(st["model"], "external");
    assert!(st["log_bytes"].as_u64().unwrap() > 0);
    let prom = ok(&s, &["status", "--prometheus"]);
    assert!(
        prom.contains("magray_records{layer=\"assets\"} 1"),
        "{prom}"
    );
    assert!(prom.contains("# TYPE magray_last_seq gauge"), "{prom}");
    assert!(ok(&s, &["status"]).contains("interact"));

    let log = lines(&ok(&s, &["--json", "log"]));
    assert!(log.len() >= 3);
    assert_eq!(log[0]["seq"], 1);
    assert_eq!(log[0]["type"], "inserted");
    let only = lines(&ok(
        &s,
        &["--json", "log", "--id", &a, "--type", "inserted"],
    ));
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["event"]["id"], a.as_str());
    assert_eq!(
        lines(&ok(
            &s,
            &["--json", "log", "--from-seq", "2", "--to-seq", "2"]
        ))
        .len(),
        1
    );
    fails(&s, &["log", "--type", "nonsense"], 1, "--type");

    let c = json(&ok(&s, &["--json", "checkpoint"]));
    assert!(c["snapshot_seq"].as_u64().unwrap() > 0);
    let o = json(&ok(&s, &["--json", "optimize"]));
    assert!(o["snapshot_seq"].as_u64().unwrap() > 0);
    let p = json(&ok(&s, &["--json", "promote"]));
    assert_eq!(p["promoter"], "learned");
    assert!(p["scored"].as_u64().unwrap() >= 2);
    let e = json(&ok(&s, &["--json", "expire"]));
    assert_eq!(e["expired_ttl"], 0);
    let v = json(&ok(&s, &["--json", "verify"]));
    assert_eq!(v["ok"], true);
}

#[test]
fn import_and_export_round_trip_and_reject_bad_lines_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    let f = dir.path().join("in.jsonl");
    let id = "01a1fea1-fb9d-74da-a098-dbf95eeb1804";
    std::fs::write(
        &f,
        format!(
            "{{\"id\": \"{id}\", \"text\": \"alpha\", \"layer\": \"insights\", \"kind\": \"fact\", \"tags\": [\"x\"], \"ts\": \"2026-01-05T10:00:00Z\", \"embedding\": [1,0,0]}}\n\
             {{\"text\": \"beta\", \"session\": \"s\", \"ts\": 1767571200000000, \"embedding\": [0,1,0]}}\n"
        ),
    )
    .unwrap();
    let r = json(&ok(&s, &["--json", "import", f.to_str().unwrap()]));
    assert_eq!(
        (r["records"].as_u64(), r["added"].as_u64()),
        (Some(2), Some(2))
    );
    // Idempotent: a second run (or a rerun after a crash) adds nothing.
    let r = json(&ok(&s, &["--json", "import", f.to_str().unwrap()]));
    assert_eq!(r["added"], 0);

    let out = dir.path().join("out.jsonl");
    ok(&s, &["export", "--embeddings", "-o", out.to_str().unwrap()]);
    let exported = lines(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(exported.len(), 2);
    let alpha = exported.iter().find(|r| r["text"] == "alpha").unwrap();
    assert_eq!(alpha["id"], id);
    assert_eq!(alpha["layer"], "insights");
    assert_eq!(alpha["ts"], "2026-01-05T10:00:00.000000Z");
    assert_eq!(alpha["embedding"].as_array().unwrap().len(), 3);
    // The export imports into a new store as the same records.
    let s2 = dir.path().join("store2");
    ok(&s2, &["import", out.to_str().unwrap()]);
    let again = lines(&ok(&s2, &["export", "--embeddings"]));
    let key = |v: &Vec<Value>| {
        let mut k: Vec<String> = v
            .iter()
            .map(|r| format!("{} {} {}", r["id"], r["text"], r["layer"]))
            .collect();
        k.sort();
        k
    };
    assert_eq!(key(&again), key(&exported));
    let md = ok(&s, &["export", "--format", "markdown"]);
    assert!(
        md.contains("# insights (1 records)") && md.contains("alpha"),
        "{md}"
    );

    // A malformed line: its number in the message, nothing from the file written.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"gamma\", \"embedding\": [0,0,1]}\n{\"text\": \"delta\", \"embedding\": [0,0,1]}\n{\"text\": \n").unwrap();
    fails(&s, &["import", bad.to_str().unwrap()], 1, "line 3");
    assert_eq!(records(&s), 2, "nothing half-written");
    std::fs::write(&bad, "{\"text\": \"gamma\", \"embedding\": [0,0,1]}\n{\"text\": \"delta\", \"embedding\": [0,1]}\n").unwrap();
    let err = fails(&s, &["import", bad.to_str().unwrap()], 1, "line 2");
    assert!(err.contains("dimensions"), "{err}");
    assert_eq!(records(&s), 2);
    std::fs::write(
        &bad,
        "{\"text\": \"x\", \"layer\": \"attic\", \"embedding\": [0,0,1]}\n",
    )
    .unwrap();
    fails(&s, &["import", bad.to_str().unwrap()], 1, "unknown layer");
}

#[test]
fn text_commands_embed_and_ingest_adds_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    let docs = dir.path().join("docs");
    std::fs::create_dir_all(docs.join("guide")).unwrap();
    std::fs::write(
        docs.join("guide/recovery.md"),
        "# Recovery\n\nAfter a crash the store replays the log after the newest snapshot.\n\n## Backups\n\nA backup copies the log and the newest snapshot.\n",
    )
    .unwrap();
    std::fs::write(docs.join("notes.txt"), "Lunch is at noon on Fridays.\n").unwrap();
    std::fs::write(docs.join("image.bin"), [0u8, 159, 146, 150]).unwrap();
    let r = json(&ok(&s, &["--json", "ingest", docs.to_str().unwrap()]));
    assert_eq!(
        (
            r["files"].as_u64(),
            r["chunks"].as_u64(),
            r["added"].as_u64()
        ),
        (Some(2), Some(3), Some(3))
    );
    let r = json(&ok(&s, &["--json", "ingest", docs.to_str().unwrap()]));
    assert_eq!(r["added"], 0, "unchanged files add nothing");
    let id = ok(
        &s,
        &[
            "store",
            "the agent prefers short answers",
            "--session",
            "s9",
        ],
    );
    assert!(id.trim().parse::<RecordId>().is_ok(), "{id}");
    let r = json(&ok(
        &s,
        &["--json", "search", "what happens after a crash?", "-k", "1"],
    ));
    let top = &r["results"][0];
    assert!(
        top["text"].as_str().unwrap().contains("replays the log"),
        "{r}"
    );
    assert_eq!(top["layer"], "assets");
    assert!(
        top["tags"].as_array().unwrap().iter().any(|t| t == "guide"),
        "{top}"
    );
    let st = json(&ok(&s, &["status", "--json"]));
    assert_eq!(st["model"], "all-MiniLM-L6-v2-int8");
    fails(&s, &["store", "x", "--vector", "1,0,0"], 1, "dimension");
}

fn manual_config(clock: &ManualClock, promoter: Promoter) -> Config {
    Config {
        dimension: 4,
        clock: Arc::new(clock.clone()),
        lifecycle: LifecycleConfig {
            promoter,
            thresholds: Some([0.0, f64::INFINITY]),
            ..LifecycleConfig::manual()
        },
        checkpoint_every: 3,
        ..Config::default()
    }
}

fn rfc(us: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[test]
fn restore_to_a_time_holds_exactly_the_events_up_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    let clock = ManualClock::new(T0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = rt.block_on(async {
        let m = Memory::open(&s, manual_config(&clock, Promoter::AccessCount))
            .await
            .unwrap();
        clock.set_us(T0 + MIN);
        let a = m
            .insert(NewRecord::new("alpha", vec![1.0, 0.0, 0.0, 0.0]))
            .await
            .unwrap();
        clock.set_us(T0 + 2 * MIN);
        let b = m
            .insert(NewRecord::new("beta", vec![0.0, 1.0, 0.0, 0.0]))
            .await
            .unwrap();
        clock.set_us(T0 + 3 * MIN);
        let p = m.promote().await.unwrap();
        assert_eq!(p.promoted, [2, 0]);
        clock.set_us(T0 + 4 * MIN);
        m.delete(a).await.unwrap();
        clock.set_us(T0 + 5 * MIN);
        m.insert(NewRecord::new("gamma", vec![0.0, 0.0, 1.0, 0.0]))
            .await
            .unwrap();
        m.close().await.unwrap();
        (a, b)
    });
    let log_of = |store: &Path| lines(&ok(store, &["--json", "log"]));
    let full = log_of(&s);

    // Just before the delete: alpha is back, promoted; gamma does not exist yet.
    let r1 = dir.path().join("r1");
    let t = rfc(T0 + 4 * MIN - 1_000_000);
    let out = json(&ok(
        &s,
        &[
            "--json",
            "restore",
            "--from",
            s.to_str().unwrap(),
            "--to-time",
            &t,
            "--into",
            r1.to_str().unwrap(),
        ],
    ));
    assert_eq!(out["verify"]["ok"], true);
    let restored = log_of(&r1);
    let expected: Vec<&Value> = full
        .iter()
        .filter(|e| e["ts_us"].as_u64().unwrap() <= T0 + 4 * MIN - 1_000_000)
        .collect();
    assert_eq!(
        restored.iter().collect::<Vec<_>>(),
        expected,
        "exactly the events ≤ T"
    );
    let recs = lines(&ok(&r1, &["export"]));
    let texts: Vec<&str> = recs.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["alpha", "beta"]);
    assert!(recs.iter().all(|r| r["layer"] == "insights"));
    assert_eq!(recs[0]["id"], a.to_string());
    // The restored store is a new timeline that names its parent, and it opens and writes.
    let st = json(&ok(&r1, &["status", "--json"]));
    let src = json(&ok(&s, &["status", "--json"]));
    assert_ne!(st["timeline"], src["timeline"]);
    assert!(st["parent"]
        .as_str()
        .unwrap()
        .starts_with(src["timeline"].as_str().unwrap()));
    ok(&r1, &["store", "after the restore", "--vector", "0,0,0,1"]);
    // A backup of the source cannot be continued from the restored branch.
    let bk = dir.path().join("bk");
    ok(&s, &["backup", bk.to_str().unwrap()]);
    fails(&r1, &["backup", bk.to_str().unwrap()], 1, "timeline");

    // To a sequence, inclusive; the source is untouched.
    let r2 = dir.path().join("r2");
    ok(
        &s,
        &restore_args(s.to_str().unwrap(), "--to-seq", "2", r2.to_str().unwrap()),
    );
    assert_eq!(log_of(&r2), full[..2].to_vec());
    assert_eq!(log_of(&s), full);
    assert!(lines(&ok(&r2, &["export"]))
        .iter()
        .any(|r| r["id"] == b.to_string()));

    // Bad targets and places.
    let r3 = dir.path().join("r3");
    fails(
        &s,
        &restore_args(
            s.to_str().unwrap(),
            "--to-time",
            "2025-01-01T00:00:00Z",
            r3.to_str().unwrap(),
        ),
        1,
        "before its history begins",
    );
    assert!(!r3.exists(), "nothing half-written");
    fails(
        &s,
        &restore_args(s.to_str().unwrap(), "--to-seq", "2", r1.to_str().unwrap()),
        1,
        "not empty",
    );
    fails(
        &s,
        &restore_args(
            s.to_str().unwrap(),
            "--to-time",
            "yesterday",
            r3.to_str().unwrap(),
        ),
        1,
        "RFC 3339",
    );
    let o = run(
        &s,
        &[
            "restore",
            "--from",
            s.to_str().unwrap(),
            "--into",
            r3.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "a target is required");
}

#[test]
fn backup_while_another_process_writes_then_verify_restore_and_catch_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    let bk = dir.path().join("backup");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let clock = ManualClock::new(T0);
    let m = rt
        .block_on(Memory::open(&s, manual_config(&clock, Promoter::Learned)))
        .unwrap();
    // The store is held by this process: commands that write are refused, naming the holder.
    let err = fails(
        &s,
        &["store", "x", "--vector", "1,0,0,0"],
        4,
        "in use by pid",
    );
    assert!(err.contains(&std::process::id().to_string()), "{err}");
    let st = json(&ok(&s, &["status", "--json"]));
    assert_eq!(st["in_use"], true);
    // Writes go on while the backup runs.
    let writer = {
        let m = Arc::new(m);
        let w = m.clone();
        let c = clock.clone();
        let h = rt.spawn(async move {
            for i in 0..400u64 {
                c.advance_us(1_000_000);
                let v = vec![(i % 7) as f32 + 1.0, (i % 5) as f32, 1.0, (i % 3) as f32];
                w.insert(NewRecord::new(format!("note {i}"), v).layer(Layer::Interact))
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    w.checkpoint().await.unwrap();
                }
            }
        });
        (m, h)
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let first = json(&ok(&s, &["--json", "backup", bk.to_str().unwrap()]));
    assert!(first["events_copied"].as_u64().unwrap() > 0);
    let v = json(&ok(&bk, &["--json", "verify"]));
    assert_eq!(v["ok"], true, "{v}");
    rt.block_on(writer.1).unwrap();
    let m = Arc::try_unwrap(writer.0).ok().unwrap();
    rt.block_on(m.close()).unwrap();
    // Incremental: only what is new.
    let second = json(&ok(&s, &["--json", "backup", bk.to_str().unwrap()]));
    let status = json(&ok(&s, &["status", "--json"]));
    let total = status["last_seq"].as_u64().unwrap();
    assert_eq!(second["last_seq"].as_u64().unwrap(), total);
    assert_eq!(
        first["events_copied"].as_u64().unwrap() + second["events_copied"].as_u64().unwrap(),
        total
    );
    let third = json(&ok(&s, &["--json", "backup", bk.to_str().unwrap()]));
    assert_eq!(third["events_copied"], 0, "after {status}: {third}");
    assert_eq!(json(&ok(&bk, &["--json", "verify"]))["ok"], true);
    // A restore from the backup verifies and holds the same records as the source.
    let r = dir.path().join("restored");
    let mid = total / 2;
    ok(
        &s,
        &restore_args(
            bk.to_str().unwrap(),
            "--to-seq",
            &mid.to_string(),
            r.to_str().unwrap(),
        ),
    );
    assert_eq!(json(&ok(&r, &["--json", "verify"]))["ok"], true);
    let full_r = dir.path().join("restored-full");
    ok(
        &s,
        &restore_args(
            bk.to_str().unwrap(),
            "--to-seq",
            &total.to_string(),
            full_r.to_str().unwrap(),
        ),
    );
    let key = |st: &Path| {
        let mut k: Vec<String> = lines(&ok(st, &["export"]))
            .iter()
            .map(|r| format!("{}", r["id"]))
            .collect();
        k.sort();
        k
    };
    assert_eq!(key(&full_r), key(&s));

    // Corruption in the backup: verify names the file, exits 3; restore refuses.
    // A bit flip inside the first logged entries (not the tail: entries follow it).
    let mut segs: Vec<_> = std::fs::read_dir(bk.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("wal-"))
        .collect();
    segs.sort();
    let seg = segs.first().unwrap().clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[300] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let o = run(&bk, &["verify"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{out}");
    let name = seg.file_name().unwrap().to_string_lossy().into_owned();
    assert!(out.contains("PROBLEM") && out.contains(&name), "{out}");
    let r4 = dir.path().join("r4");
    fails(
        &s,
        &restore_args(
            bk.to_str().unwrap(),
            "--to-seq",
            &total.to_string(),
            r4.to_str().unwrap(),
        ),
        1,
        &name,
    );
    assert!(!r4.exists());
}

#[test]
fn demo_runs_the_main_job_and_makes_sense() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("store");
    let out = ok(&s, &["demo"]);
    assert!(
        out.contains("1. ingested this repository's docs into assets"),
        "{out}"
    );
    assert!(out.contains("3. searched"), "{out}");
    // The disk question finds the session's own message about a full disk first.
    let after = out
        .split("what happens when the disk is full?")
        .nth(1)
        .unwrap();
    let first = after
        .lines()
        .find(|l| l.trim_start().starts_with("0."))
        .unwrap();
    assert!(first.contains("disk"), "{out}");
    // Run again: nothing duplicated.
    let again = ok(&s, &["demo"]);
    assert!(again.contains(" 0 new records"), "{again}");
    assert_eq!(json(&ok(&s, &["--json", "verify"]))["ok"], true);
}
