#![allow(clippy::unwrap_used)]
//! Regression tests, each named after the bug it pins (found in review of the engine).
mod common;
use common::*;
use magray_memory::*;

#[test]
fn stats_never_waits_behind_a_checkpoint_on_a_current_thread_runtime() {
    // stats() used to block the only runtime thread on the checkpoint mutex while the
    // checkpoint waited for a commit task that needed that thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut c = config();
            c.checkpoint_every = 1;
            c.access_flush_interval = std::time::Duration::from_millis(1);
            let m = std::sync::Arc::new(Memory::open(dir.path(), c).await.unwrap());
            let m2 = m.clone();
            let poll = tokio::spawn(async move {
                for _ in 0..2000 {
                    let _ = m2.stats();
                    tokio::task::yield_now().await;
                }
            });
            for (i, v) in clustered(31, 150, DIM, 3).into_iter().enumerate() {
                m.insert(record(i, v)).await.unwrap();
            }
            poll.await.unwrap();
            std::sync::Arc::try_unwrap(m)
                .unwrap()
                .close()
                .await
                .unwrap();
        });
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("inserts with concurrent stats() and checkpoints finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_ahead_of_the_log_is_set_aside_not_loaded_later() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(32, 10, DIM, 2);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    for (i, v) in vs.iter().enumerate() {
        m.insert(record(i, v.clone())).await.unwrap();
    }
    let seq = m.checkpoint().await.unwrap();
    m.close().await.unwrap();
    // Pretend the snapshot covers history the log no longer has (e.g. after a salvage).
    let snaps = dir.path().join("snapshots");
    let ahead = snaps.join(format!("{:020}", seq + 1000));
    std::fs::rename(snaps.join(format!("{seq:020}")), &ahead).unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let open = m.stats().open;
    assert_eq!(open.snapshot_seq, None);
    assert!(
        open.snapshots_rejected[0].1.contains("ahead of the log"),
        "{open:?}"
    );
    assert!(!ahead.exists(), "moved aside");
    assert_eq!(m.records(None).unwrap().len(), 10, "full replay");
    m.close().await.unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    assert!(m.stats().open.snapshots_rejected.is_empty());
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_resolves_to_the_same_record_whatever_the_restart_history() {
    let dir = tempfile::tempdir().unwrap();
    let vs = clustered(33, 3, DIM, 3);
    let m = Memory::open(dir.path(), config()).await.unwrap();
    let a = m
        .insert(NewRecord::new("foo", vs[0].clone()))
        .await
        .unwrap();
    let b = m
        .insert(NewRecord::new("bar", vs[1].clone()))
        .await
        .unwrap();
    let c = m
        .supersede(b, NewRecord::new("foo", vs[2].clone()))
        .await
        .unwrap();
    m.delete(c).await.unwrap();
    assert_eq!(
        m.insert(NewRecord::new("foo", vs[0].clone()))
            .await
            .unwrap(),
        a
    );
    m.close().await.unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    assert_eq!(
        m.insert(NewRecord::new("foo", vs[0].clone()))
            .await
            .unwrap(),
        a
    );
    m.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_open_and_close_writes_no_new_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    m.insert(record(1, clustered(34, 1, DIM, 1).remove(0)))
        .await
        .unwrap();
    m.close().await.unwrap();
    let before = m_last_seq(dir.path()).await;
    for _ in 0..3 {
        Memory::open(dir.path(), config())
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
    }
    assert_eq!(
        m_last_seq(dir.path()).await,
        before,
        "no new events, no new snapshots"
    );
}

async fn m_last_seq(dir: &std::path::Path) -> (u64, Option<u64>) {
    let mut c = config();
    c.checkpoint_on_close = false;
    let m = Memory::open(dir, c).await.unwrap();
    let s = m.stats();
    m.close().await.unwrap();
    (s.last_seq, s.open.snapshot_seq)
}

#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_insert_keeps_its_content_reserved_until_applied() {
    // The content reservation used to live in the caller's future: a caller that gave up
    // released it while its append was still on the way, so the same content inserted again
    // missed it and became a second record.
    let dir = tempfile::tempdir().unwrap();
    let m = Memory::open(dir.path(), config()).await.unwrap();
    for (i, v) in clustered(41, 5, DIM, 1).into_iter().enumerate() {
        let r = NewRecord::new(format!("inserted once, however often it is asked #{i}"), v);
        // Polled exactly once (reserve, spawn the append), then dropped: the append goes on.
        let mut gave_up = Box::pin(m.insert(r.clone()));
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(gave_up.as_mut(), cx).is_pending())
        })
        .await;
        assert!(first, "#{i}: the first poll cannot have finished an fsync");
        drop(gave_up);
        m.insert(r.clone()).await.unwrap();
        let same = m
            .records(None)
            .unwrap()
            .into_iter()
            .filter(|rec| rec.text == r.text)
            .count();
        assert_eq!(same, 1, "one record for one content, got {same}");
    }
    m.close().await.unwrap();
}
