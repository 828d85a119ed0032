//! Appends a few events to a log and prints its history and what recovery found.
//!
//! ```sh
//! cargo run -p magray-wal --example quickstart                 # a log in a scratch directory
//! cargo run -p magray-wal --example quickstart -- /tmp/my-log  # a log of your own
//! ```
//! It never writes into a store by default: the events it appends (a 2-d embedding among
//! them) would not fit an engine's store, and the log takes no lock against the engine.

use magray_wal::{AccessSource, Accessed, Event, History, Hit, Inserted, Layer, Log, LogConfig};
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = match std::env::args_os().nth(1) {
        Some(p) => PathBuf::from(p),
        None => std::env::temp_dir().join(format!("magray-wal-quickstart-{}", std::process::id())),
    };
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
