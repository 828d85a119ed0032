#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use super::*;

fn record(i: usize) -> NewRecord {
    NewRecord::new(format!("record {i}"), vec![1.0, i as f32, 0.5, 0.0])
}

/// A checkpoint's marker can land after other events (they commit while the snapshot is
/// written). The snapshot does not hold those: the close must still write one, or the next
/// open replays them (and an idle-looking store never checkpoints them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_a_checkpoint_is_written_are_not_taken_as_covered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let config = Config {
        dimension: 4,
        checkpoint_every: 0,
        checkpoint_interval: Duration::ZERO,
        ..Config::default()
    };
    let m = Arc::new(Memory::open(&dir, config.clone()).await.unwrap());
    for i in 0..3 {
        m.insert(record(i)).await.unwrap();
    }
    let snap_seq = m.stats().last_seq;
    HOLD_CHECKPOINT_MARKERS.lock().push(dir.clone());
    let held = {
        let m = m.clone();
        tokio::spawn(async move { m.checkpoint().await })
    };
    let snapshots = dir.join("snapshots");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot::list(&snapshots)
        .unwrap()
        .iter()
        .any(|(s, _)| *s == snap_seq)
    {
        assert!(
            Instant::now() < deadline,
            "the checkpoint never renamed its snapshot"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The snapshot is in place, its marker not yet written: two inserts land before it.
    for i in 3..5 {
        m.insert(record(i)).await.unwrap();
    }
    HOLD_CHECKPOINT_MARKERS.lock().retain(|d| *d != dir);
    assert_eq!(held.await.unwrap().unwrap(), snap_seq);
    let st = m.stats();
    assert_eq!(st.last_seq, snap_seq + 3, "two inserts, then the marker");
    assert_eq!(st.last_snapshot_seq, Some(snap_seq));
    assert_eq!(
        st.events_since_snapshot, 3,
        "the inserts are in no snapshot"
    );
    Arc::try_unwrap(m).ok().unwrap().close().await.unwrap();

    // The close wrote a snapshot holding them: the reopen replays only its marker.
    let m = Memory::open(&dir, config).await.unwrap();
    let st = m.stats();
    assert_eq!(st.open.snapshot_seq, Some(snap_seq + 3));
    assert_eq!(st.open.replayed_events, 1);
    assert_eq!(st.layers.iter().map(|l| l.records).sum::<u64>(), 5);
    m.close().await.unwrap();
}
