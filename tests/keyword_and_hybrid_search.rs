//! Keyword and hybrid search through the engine: exact words are found whatever the vectors
//! say, filters apply to both lists, deletes and supersedes are respected, the index comes
//! back the same from a snapshot and from the log, `verify` names a damaged keyword file, and
//! bad queries get clear errors.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, unit, DIM};
use magray_memory::{Error, Layer, Memory, NewRecord, RecordId, SearchMode, SearchOptions};
use std::path::Path;

/// A vector along axis `i`: records on different axes are unrelated by meaning.
fn axis(i: usize) -> Vec<f32> {
    let mut v = vec![0.01; DIM];
    v[i % DIM] = 1.0;
    unit(v)
}

fn mode(m: SearchMode, k: usize) -> SearchOptions {
    SearchOptions {
        mode: m,
        record_access: false,
        ..SearchOptions::top_k(k)
    }
}

/// Twelve notes of one conversation, each on its own axis.
async fn notes(m: &Memory) -> Vec<RecordId> {
    let texts = [
        "deploys go through the staging box first",
        "the build needs gcc for zstd",
        "lunch at noon with the infra team",
        "rotate the okaywal segment after checkpoint_to",
        "Caroline went to the LGBTQ support group",
        "Melanie ran a charity race for mental health",
        "the tokenizer pads every batch to its longest text",
        "the staging box has 2 cores and 24 GiB",
        "review the snapshot manifest crc",
        "pottery class on Saturday",
        "the CI runs as root on a fresh clone",
        "backups go to /mnt/backups/agent",
    ];
    let batch = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            NewRecord::new(*t, axis(i))
                .layer(Layer::Assets)
                .project("agent")
                .session("s1")
        })
        .collect();
    m.insert_batch(batch).await.unwrap()
}

async fn keyword_ids(m: &Memory, q: &str) -> Vec<RecordId> {
    m.search_hybrid(q, &axis(31), &mode(SearchMode::Keyword, 5))
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_words_are_found_where_the_vectors_point_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let ids = notes(&m).await;
    // The query vector points at record 2 ("lunch"); the words name record 5.
    let hits = m
        .search_hybrid("charity race", &axis(2), &mode(SearchMode::Hybrid, 3))
        .await
        .unwrap();
    assert_eq!(hits[0].id, ids[5], "{hits:#?}");
    assert!(hits[0].keyword_score.is_some_and(|s| s > 0.0));
    assert!(hits[0].vector_score.is_some());
    assert!(
        hits.iter().any(|h| h.id == ids[2]),
        "the vector's pick is fused in too"
    );
    // Keyword mode: words only; vector mode: the vector only.
    assert_eq!(keyword_ids(&m, "charity race").await[0], ids[5]);
    let v = m
        .search_hybrid("charity race", &axis(2), &mode(SearchMode::Vector, 1))
        .await
        .unwrap();
    assert_eq!(v[0].id, ids[2]);
    assert_eq!(v[0].keyword_score, None);
    // Identifiers and paths are words too.
    assert_eq!(keyword_ids(&m, "checkpoint_to").await[0], ids[3]);
    assert_eq!(keyword_ids(&m, "/mnt/backups").await[0], ids[11]);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_apply_to_the_keyword_list_too() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let ids = notes(&m).await;
    let other = m
        .insert(
            NewRecord::new("the staging box is down", axis(20))
                .layer(Layer::Interact)
                .project("other"),
        )
        .await
        .unwrap();
    let in_project = |p: &str| SearchOptions {
        project: Some(p.into()),
        ..mode(SearchMode::Keyword, 10)
    };
    let found: Vec<RecordId> = m
        .search_hybrid("staging box", &axis(0), &in_project("agent"))
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert!(found.contains(&ids[0]) && found.contains(&ids[7]));
    assert!(!found.contains(&other));
    let only_interact = SearchOptions {
        layers: vec![Layer::Interact],
        ..mode(SearchMode::Hybrid, 10)
    };
    let hits = m
        .search_hybrid("staging box", &axis(0), &only_interact)
        .await
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [other]);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_and_supersedes_are_respected() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let ids = notes(&m).await;
    m.delete(ids[9]).await.unwrap();
    assert!(keyword_ids(&m, "pottery").await.is_empty());
    let new = m
        .supersede(ids[1], NewRecord::new("the build needs clang now", axis(1)))
        .await
        .unwrap();
    assert!(!keyword_ids(&m, "gcc").await.contains(&ids[1]));
    assert_eq!(keyword_ids(&m, "clang").await, [new]);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_comes_back_from_a_snapshot_and_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let ids = notes(&m).await;
    m.checkpoint().await.unwrap();
    // After the snapshot: only in the log.
    let late = m
        .insert(NewRecord::new("zeppelin rides are booked", axis(12)).project("agent"))
        .await
        .unwrap();
    m.delete(ids[4]).await.unwrap();
    let before = (
        keyword_ids(&m, "charity race").await,
        keyword_ids(&m, "zeppelin").await,
    );
    // Reopened without a checkpoint at close: the snapshot plus the log after it.
    drop(m);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    // The checkpoint's marker, the insert and the delete.
    assert_eq!(m.stats().open.replayed_events, 3);
    let after = (
        keyword_ids(&m, "charity race").await,
        keyword_ids(&m, "zeppelin").await,
    );
    assert_eq!(before, after);
    assert_eq!(after.1, [late]);
    assert!(keyword_ids(&m, "support group").await.is_empty());
    m.close().await.unwrap();
    // The snapshot written at close plus nothing, against a full replay: verify agrees.
    let report = magray_memory::verify::verify(dir.path()).unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_damaged_keyword_index() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let ids = notes(&m).await;
    m.close().await.unwrap();
    let snap = newest_snapshot(dir.path());
    common::flip_byte(&snap.join("keywords.bin"), |len| len / 2, 0x10);
    let report = magray_memory::verify::verify(dir.path()).unwrap();
    assert!(!report.ok());
    assert!(
        report.problems.iter().any(|p| p.contains("keywords.bin")),
        "{:?}",
        report.problems
    );
    // Open does not wait for the keyword index (the indexer reads it): the damage is found
    // then, and searches by words fail naming the file, as with damage in any snapshot file.
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let e = m
        .search_hybrid("pottery", &axis(9), &mode(SearchMode::Keyword, 5))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("keywords.bin"), "{e}");
    drop(m);
    // The next open checks every file in full, sets the snapshot aside and replays the log:
    // nothing is lost.
    let m = Memory::open(dir.path(), config()).await.unwrap();
    assert!(!m.stats().open.snapshots_rejected.is_empty());
    assert_eq!(keyword_ids(&m, "pottery").await[0], ids[9]);
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_clear_errors_and_stop_words_fall_back_to_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let ids = notes(&m).await;
    let e = m
        .search_hybrid("", &axis(0), &mode(SearchMode::Hybrid, 3))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::EmptyText), "{e}");
    let e = "fuzzy".parse::<SearchMode>().unwrap_err();
    assert!(e.to_string().contains("vector, keyword or hybrid"), "{e}");
    let e = m
        .search(&axis(0), &mode(SearchMode::Keyword, 3))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("search_text"), "{e}");
    // Stop words only: no keyword match; hybrid gives the vector's results.
    let hits = m
        .search_hybrid(
            "what did they do with it?",
            &axis(6),
            &mode(SearchMode::Hybrid, 1),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].id, ids[6]);
    assert_eq!(hits[0].keyword_score, None);
    assert!(keyword_ids(&m, "what did they do with it?")
        .await
        .is_empty());
    m.close().await.unwrap();
}

fn newest_snapshot(dir: &Path) -> std::path::PathBuf {
    let mut snaps: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("0"))
        .collect();
    snaps.sort();
    snaps.pop().expect("a snapshot")
}
