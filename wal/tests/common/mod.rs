#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(dead_code)]
//! Shared helpers for the log's integration tests.

use magray_wal::{Event, Inserted, Layer};

/// A deterministic insert whose content is a function of (writer, counter, index).
pub fn insert_event(writer: u64, counter: u64, index: u64, text_len: usize) -> Event {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&writer.to_le_bytes());
    id[8..].copy_from_slice(&(counter * 16 + index).to_le_bytes());
    let base = format!("w{writer}-c{counter}-i{index}-");
    let text: String = base
        .chars()
        .cycle()
        .take(text_len.max(base.len()))
        .collect();
    let embedding = (0..8)
        .map(|k| ((writer * 31 + counter * 7 + index * 3 + k) % 97) as f32 / 97.0)
        .collect();
    Event::Inserted(Inserted {
        id,
        layer: Layer::ALL[(counter % 3) as usize],
        kind: "note".into(),
        text,
        embedding,
        tags: vec![format!("t{}", counter % 5)],
        project: Some("p".into()),
        session: None,
        refs: vec![],
        content_hash: writer ^ counter.rotate_left(17) ^ index,
        ts_us: counter,
    })
}

/// A batch of `1 + counter % 3` events.
pub fn batch(writer: u64, counter: u64, text_len: usize) -> Vec<Event> {
    (0..1 + counter % 3)
        .map(|i| insert_event(writer, counter, i, text_len))
        .collect()
}

/// Decodes (writer, counter, index) back from an event made by `insert_event`.
pub fn origin(event: &Event) -> Option<(u64, u64, u64)> {
    match event {
        Event::Inserted(ins) => {
            let w = u64::from_le_bytes(ins.id[..8].try_into().ok()?);
            let x = u64::from_le_bytes(ins.id[8..].try_into().ok()?);
            Some((w, x / 16, x % 16))
        }
        _ => None,
    }
}

/// The single live segment file with the highest id.
pub fn last_segment(log_dir: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(log_dir.join("wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_prefix("wal-")?.parse::<u64>().ok()?;
            Some((id, e.path()))
        })
        .collect();
    segs.sort();
    segs.pop().expect("a live segment").1
}

/// Every file under `p` with its length, sorted.
fn listing(p: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(listing(&path));
        } else {
            out.push((path.clone(), e.metadata().map_or(0, |m| m.len())));
        }
    }
    out.sort();
    out
}

fn try_copy(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            try_copy(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}

/// Copies a directory tree. A dropped poisoned log's okaywal threads may still create and
/// remove temp files for a moment, so the copy is retried until the tree held still while
/// it was copied.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for _ in 0..100 {
        let before = listing(from);
        let _ = std::fs::remove_dir_all(to);
        if try_copy(from, to).is_ok() && listing(from) == before {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} kept changing while it was copied", from.display());
}
