#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Durability rules: what survives `crash`.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use common::{fsync_dir, ls, Env};
use crashfs::{AffectedKind, CrashMode};

#[test]
fn unsynced_write_to_existing_file_is_lost() {
    let env = Env::new();
    fs::write(env.b("f"), b"old content").unwrap();
    let cfs = env.mount();
    {
        let mut f = OpenOptions::new().write(true).open(env.m("f")).unwrap();
        f.write_all(b"NEW").unwrap();
    }
    assert_eq!(fs::read(env.m("f")).unwrap(), b"NEW content");
    assert_eq!(
        fs::read(env.b("f")).unwrap(),
        b"NEW content",
        "live pass-through"
    );
    let report = cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("f")).unwrap(), b"old content");
    assert_eq!(report.data_ops_dropped, 1);
    assert_eq!(report.name_ops_dropped, 0);
    assert_eq!(report.affected.len(), 1);
    assert_eq!(report.affected[0].path.to_str(), Some("f"));
}

#[test]
fn new_file_in_unsynced_dir_is_absent() {
    let env = Env::new();
    let cfs = env.mount();
    fs::write(env.m("new"), b"data").unwrap();
    assert_eq!(ls(env.mnt.path()), ["new"]);
    let report = cfs.crash(CrashMode::DropAllPending).unwrap();
    assert!(ls(env.backing.path()).is_empty());
    assert_eq!(report.vanished, [std::path::PathBuf::from("new")]);
}

#[test]
fn fsynced_file_needs_dir_fsync() {
    // Without the directory fsync the name is lost even though the data was synced.
    let env = Env::new();
    let cfs = env.mount();
    let mut f = File::create(env.m("a")).unwrap();
    f.write_all(b"payload").unwrap();
    f.sync_all().unwrap();
    drop(f);
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert!(!env.b("a").exists());

    // With it, the file is there with its content.
    let env = Env::new();
    let cfs = env.mount();
    let mut f = File::create(env.m("a")).unwrap();
    f.write_all(b"payload").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(env.mnt.path());
    let report = cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("a")).unwrap(), b"payload");
    assert!(!report.lost_anything(), "{report}");
}

#[test]
fn dir_fsync_without_file_fsync_gives_empty_file() {
    let env = Env::new();
    let cfs = env.mount();
    fs::write(env.m("a"), b"payload").unwrap();
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("a")).unwrap(), b"");
}

#[test]
fn rename_needs_dir_fsync() {
    for sync in [false, true] {
        let env = Env::new();
        fs::write(env.b("a"), b"A").unwrap();
        fs::write(env.b("b"), b"old B").unwrap();
        let cfs = env.mount();
        fs::rename(env.m("a"), env.m("b")).unwrap();
        assert_eq!(ls(env.mnt.path()), ["b"]);
        assert_eq!(fs::read(env.m("b")).unwrap(), b"A");
        if sync {
            fsync_dir(env.mnt.path());
        }
        cfs.crash(CrashMode::DropAllPending).unwrap();
        if sync {
            assert_eq!(ls(env.backing.path()), ["b"]);
            assert_eq!(fs::read(env.b("b")).unwrap(), b"A");
        } else {
            assert_eq!(ls(env.backing.path()), ["a", "b"]);
            assert_eq!(fs::read(env.b("a")).unwrap(), b"A");
            assert_eq!(fs::read(env.b("b")).unwrap(), b"old B");
        }
    }
}

#[test]
fn atomic_replace_pattern() {
    // write tmp, fsync tmp, rename over target, fsync dir: the classic safe update.
    let env = Env::new();
    fs::write(env.b("CURRENT"), b"v1").unwrap();
    let cfs = env.mount();
    let mut f = File::create(env.m("CURRENT.tmp")).unwrap();
    f.write_all(b"v2").unwrap();
    f.sync_data().unwrap();
    drop(f);
    fs::rename(env.m("CURRENT.tmp"), env.m("CURRENT")).unwrap();
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(ls(env.backing.path()), ["CURRENT"]);
    assert_eq!(fs::read(env.b("CURRENT")).unwrap(), b"v2");

    // Same without the tmp fsync: the renamed file is durable but empty.
    let env = Env::new();
    fs::write(env.b("CURRENT"), b"v1").unwrap();
    let cfs = env.mount();
    fs::write(env.m("CURRENT.tmp"), b"v2").unwrap();
    fs::rename(env.m("CURRENT.tmp"), env.m("CURRENT")).unwrap();
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("CURRENT")).unwrap(), b"");
}

#[test]
fn cross_directory_rename_syncs_each_side() {
    let env = Env::new();
    fs::create_dir(env.b("d1")).unwrap();
    fs::create_dir(env.b("d2")).unwrap();
    fs::write(env.b("d1/x"), b"X").unwrap();
    let cfs = env.mount();
    fs::rename(env.m("d1/x"), env.m("d2/x")).unwrap();
    fsync_dir(&env.m("d2")); // only the destination
    cfs.crash(CrashMode::DropAllPending).unwrap();
    // Source removal not durable: the file has both names (one inode, hard link).
    assert_eq!(fs::read(env.b("d1/x")).unwrap(), b"X");
    assert_eq!(fs::read(env.b("d2/x")).unwrap(), b"X");
}

#[test]
fn unlink_needs_dir_fsync() {
    for sync in [false, true] {
        let env = Env::new();
        fs::write(env.b("f"), b"keep me").unwrap();
        let cfs = env.mount();
        fs::remove_file(env.m("f")).unwrap();
        assert!(!env.m("f").exists());
        if sync {
            fsync_dir(env.mnt.path());
        }
        let report = cfs.crash(CrashMode::DropAllPending).unwrap();
        if sync {
            assert!(!env.b("f").exists());
        } else {
            assert_eq!(fs::read(env.b("f")).unwrap(), b"keep me");
            assert_eq!(report.reappeared, [std::path::PathBuf::from("f")]);
        }
    }
}

#[test]
fn mkdir_rmdir_and_nested_files() {
    let env = Env::new();
    fs::create_dir(env.b("gone")).unwrap();
    let cfs = env.mount();
    fs::create_dir(env.m("d")).unwrap();
    let mut f = File::create(env.m("d/f")).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&env.m("d"));
    fs::remove_dir(env.m("gone")).unwrap();
    // Root not synced: d (and everything in it) is lost, "gone" comes back.
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(ls(env.backing.path()), ["gone"]);

    let env = Env::new();
    let cfs = env.mount();
    fs::create_dir(env.m("d")).unwrap();
    fs::write(env.m("d/f"), b"x").unwrap();
    File::open(env.m("d/f")).unwrap().sync_all().unwrap();
    fsync_dir(&env.m("d"));
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("d/f")).unwrap(), b"x");
}

#[test]
fn truncate_pending_vs_synced() {
    for sync in [false, true] {
        let env = Env::new();
        fs::write(env.b("f"), b"0123456789").unwrap();
        let cfs = env.mount();
        let f = OpenOptions::new().write(true).open(env.m("f")).unwrap();
        f.set_len(3).unwrap();
        assert_eq!(fs::read(env.m("f")).unwrap(), b"012");
        if sync {
            f.sync_all().unwrap();
        }
        drop(f);
        cfs.crash(CrashMode::DropAllPending).unwrap();
        let want: &[u8] = if sync { b"012" } else { b"0123456789" };
        assert_eq!(fs::read(env.b("f")).unwrap(), want);
    }
}

#[test]
fn o_trunc_and_append() {
    let env = Env::new();
    fs::write(env.b("log"), b"durable;").unwrap();
    let cfs = env.mount();
    let mut f = OpenOptions::new().append(true).open(env.m("log")).unwrap();
    f.write_all(b"one;").unwrap();
    f.sync_data().unwrap();
    f.write_all(b"two;").unwrap();
    drop(f);
    assert_eq!(fs::read(env.m("log")).unwrap(), b"durable;one;two;");
    let mut t = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(env.m("log"))
        .unwrap();
    t.write_all(b"T").unwrap();
    drop(t);
    assert_eq!(fs::read(env.m("log")).unwrap(), b"T");
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("log")).unwrap(), b"durable;one;");
}

#[test]
fn o_dsync_writes_are_durable() {
    let env = Env::new();
    fs::write(env.b("f"), b"").unwrap();
    let cfs = env.mount();
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(env.m("f"))
        .unwrap();
    f.write_all(b"sync").unwrap();
    drop(f);
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("f")).unwrap(), b"sync");
}

#[test]
fn modes_survive_crash() {
    let env = Env::new();
    let cfs = env.mount();
    fs::create_dir(env.m("private")).unwrap();
    fs::set_permissions(env.m("private"), fs::Permissions::from_mode(0o700)).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(env.m("private/key"))
        .unwrap();
    f.write_all(b"secret").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(&env.m("private"));
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    let mode = |p| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(env.b("private")), 0o700);
    assert_eq!(mode(env.b("private/key")), 0o600);
    assert_eq!(fs::read(env.b("private/key")).unwrap(), b"secret");
}

#[test]
fn random_prefix_is_deterministic_and_partial() {
    let env = Env::new();
    fs::write(env.b("wal"), b"").unwrap();
    let cfs = env.mount();
    let mut f = OpenOptions::new().append(true).open(env.m("wal")).unwrap();
    for i in 0..10u8 {
        f.write_all(&[b'a' + i; 1000]).unwrap();
    }
    drop(f);
    let full: Vec<u8> = (0..10u8).flat_map(|i| [b'a' + i; 1000]).collect();

    let snaps = tempfile::tempdir().unwrap();
    let mut lens = std::collections::BTreeSet::new();
    for seed in 0..8u64 {
        let a = snaps.path().join(format!("{seed}-a"));
        let b = snaps.path().join(format!("{seed}-b"));
        let ra = cfs
            .snapshot_crash(CrashMode::RandomPrefix { seed }, &a)
            .unwrap();
        let rb = cfs
            .snapshot_crash(CrashMode::RandomPrefix { seed }, &b)
            .unwrap();
        assert_eq!(ra, rb);
        let ca = fs::read(a.join("wal")).unwrap();
        assert_eq!(ca, fs::read(b.join("wal")).unwrap());
        assert_eq!(ca[..], full[..ca.len()], "always a prefix of the appends");
        lens.insert(ca.len());
    }
    assert!(
        lens.iter().any(|&l| l > 0 && l < full.len()),
        "some state strictly between nothing and everything: {lens:?}"
    );
    assert!(
        lens.len() > 1,
        "different seeds give different states: {lens:?}"
    );

    // The real crash with a seed gives the same state as the snapshot with that seed.
    let snap = fs::read(snaps.path().join("3-a/wal")).unwrap();
    let report = cfs.crash(CrashMode::RandomPrefix { seed: 3 }).unwrap();
    assert_eq!(fs::read(env.b("wal")).unwrap(), snap);
    assert_eq!(report.affected[0].kind, AffectedKind::FileData);
}

#[test]
fn random_prefix_on_directories() {
    let env = Env::new();
    let cfs = env.mount();
    for i in 0..10 {
        fs::write(env.m(&format!("f{i}")), b"").unwrap();
    }
    let snaps = tempfile::tempdir().unwrap();
    let mut counts = std::collections::BTreeSet::new();
    for seed in 0..8u64 {
        let d = snaps.path().join(seed.to_string());
        cfs.snapshot_crash(CrashMode::RandomPrefix { seed }, &d)
            .unwrap();
        let names = ls(&d);
        // A prefix of the creations: f0..f{k-1}.
        for (i, n) in names.iter().enumerate() {
            assert!(names.contains(&format!("f{i}")), "{n} without predecessors");
        }
        counts.insert(names.len());
    }
    assert!(counts.len() > 1, "{counts:?}");
    cfs.unmount().unwrap();
    assert_eq!(ls(env.backing.path()).len(), 10, "clean unmount keeps live");
}

#[test]
fn keep_all_pending_equals_live() {
    let env = Env::new();
    fs::write(env.b("old"), b"1").unwrap();
    let cfs = env.mount();
    fs::create_dir(env.m("d")).unwrap();
    fs::write(env.m("d/x"), b"xx").unwrap();
    fs::rename(env.m("old"), env.m("d/old")).unwrap();
    let report = cfs.crash(CrashMode::KeepAllPending).unwrap();
    assert!(
        report.vanished.is_empty() && report.reappeared.is_empty(),
        "{report}"
    );
    assert_eq!(ls(env.backing.path()), ["d"]);
    assert_eq!(ls(&env.b("d")), ["old", "x"]);
    assert_eq!(fs::read(env.b("d/x")).unwrap(), b"xx");
}

#[test]
fn crash_with_file_still_open() {
    let env = Env::new();
    fs::write(env.b("f"), b"durable").unwrap();
    let cfs = env.mount();
    let mut f = OpenOptions::new().write(true).open(env.m("f")).unwrap();
    f.write_all(b"DURABLE").unwrap();
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("f")).unwrap(), b"durable");
    // The still-open descriptor now fails.
    assert!(f.write_all(b"more").and_then(|_| f.sync_all()).is_err());
}
