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

/// Copies a directory tree.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}
