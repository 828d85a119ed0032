//! Appends a few events to the log of the default store and prints its history and what
//! recovery found. Default store: `$MEMORY_DB_PATH`, else `$XDG_DATA_HOME/magray-memory/default`,
//! else `~/.local/share/magray-memory/default`.

use magray_wal::{AccessSource, Accessed, Event, History, Hit, Inserted, Layer, Log, LogConfig};
use std::path::PathBuf;

fn default_store() -> PathBuf {
    if let Some(p) = std::env::var_os("MEMORY_DB_PATH") {
        return PathBuf::from(p);
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("magray-memory/default")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = default_store();
    println!("store: {}", store.display());
    let log = Log::open(LogConfig::new(&store))?;
    let r = log.recovery_report();
    println!(
        "recovered: {} events (seq {}..={}), {} archive files, torn tail: {:?}",
        if r.last_seq == 0 {
            0
        } else {
            r.last_seq - r.first_seq + 1
        },
        r.first_seq,
        r.last_seq,
        r.archive_files,
        r.torn_tail
    );
    let id = *b"quickstart-rec-1";
    let at = log.append(vec![
        Event::Inserted(Inserted {
            id,
            layer: Layer::Interact,
            kind: "message".into(),
            text: "the user prefers tabs over spaces".into(),
            embedding: vec![0.6, 0.8],
            tags: vec!["style".into()],
            project: Some("demo".into()),
            session: Some("s1".into()),
            refs: vec![],
            content_hash: 42,
            ts_us: 0,
        }),
        Event::Accessed(Accessed {
            source: AccessSource::Get,
            session: Some("s1".into()),
            project: Some("demo".into()),
            hits: vec![Hit {
                id,
                rank: 0,
                score: 0.0,
            }],
        }),
    ])?;
    println!("appended seq {}..={} (durable)", at.first_seq, at.last_seq);
    log.checkpoint()?;
    log.close()?;
    let mut n = 0;
    for e in History::open_offline(&store, 1) {
        let e = e?;
        n += 1;
        if n <= 5 || e.seq + 5 > at.last_seq {
            println!(
                "  seq {:>6}  ts {}  {}",
                e.seq,
                e.ts_us,
                e.event.type_name()
            );
        }
    }
    println!("history: {n} events, contiguous from sequence 1");
    Ok(())
}
