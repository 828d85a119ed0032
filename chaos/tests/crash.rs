//! The CI chaos run: 40 kill cycles, five in each window (recovery, indexing, snapshot,
//! promotion, rebuild, restore, archive, anywhere), and a storage fault every 3 cycles (each kind at
//! least once: log tail cut or flipped, mid-log flip, snapshot flip / zeroed page / deletion,
//! archive flip, a full disk), against the expected-state oracle. The full disk mounts a
//! tmpfs, so this test needs root (CI runs as root). A failure prints the seed; `CHAOS_SEED=<seed>` replays it.

#[test]
fn kill_cycles_in_every_window_and_every_fault_kind_lose_nothing() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("chaos seed {seed} (replay with CHAOS_SEED={seed})");
    let worker = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chaos-worker"));
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = magray_chaos::run(&worker, &dir.path().join("store"), seed, 40, 3, |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{summary}");
    assert_eq!(summary.cycles, 40);
    assert_eq!((summary.lost, summary.failed_opens), (0, 0));
    assert!(summary.acked_verified > 1000, "{summary}");
    for w in magray_chaos::Window::ALL {
        let (n, _) = summary.windows[&format!("{w:?}")];
        assert_eq!(n, 5, "{w:?}");
    }
    let inside: u64 = summary.windows.values().map(|(_, i)| i).sum();
    assert!(
        inside >= 20,
        "most kills land inside their window: {summary}"
    );
    for f in magray_chaos::Fault::ALL {
        let (i, d) = summary
            .faults
            .get(&format!("{f:?}"))
            .copied()
            .unwrap_or((0, 0));
        assert!(
            i >= 1 && d == i,
            "{f:?}: injected {i}, detected {d}\n{summary}"
        );
    }
}
