//! The CI power-cut run: 32 cuts, four in each window (recovery, indexing, snapshot,
//! promotion, rebuild, restore, archive, anywhere), the worker on the crash file system
//! (`crashfs`), half the cuts dropping everything not fsynced and half keeping a random prefix
//! of each file's and directory's un-synced changes; after each, the store opens from what
//! survived and the oracle finds every acknowledged record; every 4 cuts the surviving store
//! is also damaged (a storage fault, as in `crash.rs`) and the damage must be named. Deterministic seed (printed;
//! `CHAOS_SEED=<seed>` replays another). Needs root and `/dev/fuse` (CI runs as root). The
//! soak: `./target/release/chaos-power-soak 1000`.

#[test]
fn power_cuts_in_every_window_lose_nothing_acknowledged() {
    let seed: u64 = match std::env::var("CHAOS_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED must be an integer, got {s:?}")),
        Err(_) => 20261207,
    };
    eprintln!("power-cut seed {seed} (replay with CHAOS_SEED={seed})");
    let worker = std::path::PathBuf::from(env!("CARGO_BIN_EXE_chaos-worker"));
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = magray_chaos::run_power(&worker, dir.path(), seed, 32, 4, |_, _| {})
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{summary}");
    assert_eq!(summary.cycles, 32);
    assert_eq!((summary.lost, summary.failed_opens), (0, 0));
    assert!(summary.acked_verified > 1000, "{summary}");
    assert_eq!(summary.modes, (16, 16));
    for w in magray_chaos::Window::ALL {
        assert_eq!(summary.windows[&format!("{w:?}")].0, 4, "{w:?}");
    }
    // Damage after a cut is named like damage after a kill (run_power stops otherwise).
    let (injected, detected) = summary
        .faults
        .values()
        .fold((0, 0), |(a, b), (i, d)| (a + i, b + d));
    assert!(injected >= 4 && detected == injected, "{summary}");
    // The cuts did drop something: the file system really lost un-synced state.
    assert!(
        summary.dropped_data_ops + summary.dropped_name_ops > 0,
        "{summary}"
    );
}
