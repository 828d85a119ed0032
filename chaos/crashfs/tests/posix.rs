#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
#![allow(unsafe_code)] // flock and mmap through the mount; each block has a SAFETY note
//! Behaviour seen by processes: counters, child processes, mmap, locks, misc ops.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{fsync_dir, ls, Env};
use crashfs::{CrashMode, SyncCounts};

const ACTION: &str = "CRASHFS_TEST_CHILD_ACTION";
const DIR: &str = "CRASHFS_TEST_CHILD_DIR";

/// Runs `child_helper` (below) in a separate process of this test binary.
fn run_child(action: &str, dir: &Path) -> i32 {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_helper",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--quiet",
        ])
        .env(ACTION, action)
        .env(DIR, dir)
        .status()
        .unwrap();
    status.code().unwrap_or(-1)
}

/// Not a real test: the body of child processes started by `run_child`.
#[test]
#[ignore]
fn child_helper() {
    let (Ok(action), Ok(dir)) = (std::env::var(ACTION), std::env::var(DIR)) else {
        return;
    };
    let dir = Path::new(&dir);
    match action.as_str() {
        "syncs" => {
            let mut f = File::create(dir.join("d/f")).unwrap();
            f.write_all(b"0123456789").unwrap();
            for _ in 0..3 {
                f.sync_data().unwrap();
            }
            f.sync_all().unwrap();
            drop(f);
            File::open(dir.join("d")).unwrap().sync_all().unwrap();
            std::process::exit(0);
        }
        "trylock" => {
            let f = File::open(dir.join("lock")).unwrap();
            // SAFETY: valid descriptor owned by `f`.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            let err = std::io::Error::last_os_error().raw_os_error();
            std::process::exit(if rc == 0 {
                0
            } else if err == Some(libc::EWOULDBLOCK) {
                1
            } else {
                2
            });
        }
        other => panic!("unknown action {other}"),
    }
}

#[test]
fn counters_count_a_child_process_exactly() {
    let env = Env::new();
    let cfs = env.mount();
    fs::create_dir(env.m("d")).unwrap();
    fs::write(env.m("noise"), b"abc").unwrap();
    cfs.reset_counters();
    assert_eq!(cfs.counters().total, SyncCounts::default());

    assert_eq!(run_child("syncs", env.mnt.path()), 0);
    let c = cfs.counters();
    assert_eq!(
        c.path("d/f"),
        SyncCounts {
            fsync: 1,
            fdatasync: 3,
            fsyncdir: 0,
            writes: 1,
            bytes_written: 10
        }
    );
    assert_eq!(c.path("d").fsyncdir, 1);
    assert_eq!(
        c.total,
        SyncCounts {
            fsync: 1,
            fdatasync: 3,
            fsyncdir: 1,
            writes: 1,
            bytes_written: 10
        }
    );
    assert_eq!(c.per_path.len(), 2, "{c:?}");
    cfs.reset_counters();
    assert_eq!(cfs.counters(), crashfs::Counters::default());

    // What the child synced is durable: d/f is in d (synced), but d itself is not in
    // the root (never synced), so after a crash d and f are gone ...
    fsync_dir(env.mnt.path());
    // ... unless the root is synced too.
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(fs::read(env.b("d/f")).unwrap(), b"0123456789");
    assert_eq!(
        fs::read(env.b("noise")).unwrap(),
        b"",
        "noise data never synced"
    );
}

#[test]
fn shell_child_writes_are_tracked() {
    let env = Env::new();
    let cfs = env.mount();
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"printf hello > "$MNT/x" && dd if=/dev/zero of="$MNT/y" bs=1000 count=3 conv=fsync status=none"#)
        .env("MNT", env.mnt.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read(env.m("x")).unwrap(), b"hello");
    let c = cfs.counters();
    assert_eq!(c.path("x").bytes_written, 5);
    assert_eq!(c.path("x").fsync + c.path("x").fdatasync, 0);
    assert_eq!(c.path("y").bytes_written, 3000);
    assert_eq!(c.path("y").fsync, 1, "dd conv=fsync");
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    // Both names are durable; only y's data was synced.
    assert_eq!(fs::read(env.b("x")).unwrap(), b"");
    assert_eq!(fs::read(env.b("y")).unwrap(), vec![0u8; 3000]);

    // Without the directory fsync, the child's file is simply absent.
    let env = Env::new();
    let cfs = env.mount();
    let st = Command::new("sh")
        .arg("-c")
        .arg(r#"printf hello > "$MNT/x""#)
        .env("MNT", env.mnt.path())
        .status()
        .unwrap();
    assert!(st.success());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    assert!(ls(env.backing.path()).is_empty());
}

#[test]
fn mmap_reads_see_file_content() {
    let env = Env::new();
    let cfs = env.mount();
    let data: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i % 251) as u8).collect();
    let mut f = File::create(env.m("snap")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let f = File::open(env.m("snap")).unwrap();
    // SAFETY: the file is not modified while mapped.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_eq!(&map[..], &data[..]);
    drop(map);

    // A rewrite through write() is visible to a new mapping.
    let w = OpenOptions::new().write(true).open(env.m("snap")).unwrap();
    w.write_all_at(b"XYZ", 4096).unwrap();
    drop(w);
    // SAFETY: as above.
    let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    assert_eq!(&map[4096..4099], b"XYZ");
    drop(map);
    drop(f);

    // Shared writable mappings reach the daemon on msync and are tracked as writes.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.m("snap"))
        .unwrap();
    // SAFETY: only this mapping modifies the file.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&f) }.unwrap();
    map[0..4].copy_from_slice(b"MMAP");
    map.flush().unwrap();
    drop(map);
    drop(f);
    assert_eq!(&fs::read(env.b("snap")).unwrap()[0..4], b"MMAP");
    let c = cfs.counters().path("snap");
    assert_eq!(
        (c.fsync, c.fdatasync),
        (1, 1),
        "msync(MS_SYNC) arrives as fdatasync"
    );
    fsync_dir(env.mnt.path());
    cfs.crash(CrashMode::DropAllPending).unwrap();
    let after = fs::read(env.b("snap")).unwrap();
    assert_eq!(&after[0..4], b"MMAP", "msync made it durable");
    assert_eq!(&after[4096..4099], b"XYZ");
    assert_eq!(after.len(), data.len());
}

#[test]
fn flock_and_ofd_locks_contend() {
    let env = Env::new();
    let cfs = env.mount();
    fs::write(env.m("lock"), b"").unwrap();
    let a = File::open(env.m("lock")).unwrap();
    let b = File::open(env.m("lock")).unwrap();
    let flock = |f: &File, op| {
        // SAFETY: valid descriptor owned by `f`.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error())
        }
    };
    assert_eq!(flock(&a, libc::LOCK_EX | libc::LOCK_NB), Ok(()));
    assert_eq!(
        flock(&b, libc::LOCK_EX | libc::LOCK_NB),
        Err(Some(libc::EWOULDBLOCK))
    );
    // Another process sees the lock too.
    assert_eq!(run_child("trylock", env.mnt.path()), 1);
    assert_eq!(flock(&a, libc::LOCK_UN), Ok(()));
    assert_eq!(flock(&b, libc::LOCK_EX | libc::LOCK_NB), Ok(()));
    assert_eq!(flock(&b, libc::LOCK_UN), Ok(()));
    assert_eq!(run_child("trylock", env.mnt.path()), 0);

    // fcntl open-file-description locks (what e.g. SQLite-style byte-range locking and
    // Rust's File::try_lock use) conflict between two descriptors as well.
    let ofd = |f: &File, typ: i32| {
        // SAFETY: all-zero is a valid `flock` value; fields are set below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = typ as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: valid descriptor and pointer to an initialised `flock`.
        let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error())
        }
    };
    let w = OpenOptions::new().write(true).open(env.m("lock")).unwrap();
    let w2 = OpenOptions::new().write(true).open(env.m("lock")).unwrap();
    assert_eq!(ofd(&w, libc::F_WRLCK), Ok(()));
    assert_eq!(ofd(&w2, libc::F_WRLCK), Err(Some(libc::EAGAIN)));
    drop((a, b, w, w2));
    cfs.unmount().unwrap();
}

#[test]
fn misc_operations() {
    let env = Env::new();
    fs::write(env.b("pre"), b"existing").unwrap();
    let cfs = env.mount();

    // readdir across several reply buffers.
    fs::create_dir(env.m("many")).unwrap();
    for i in 0..300 {
        fs::write(env.m(&format!("many/file-with-a-long-name-{i:04}")), b"").unwrap();
    }
    assert_eq!(ls(&env.m("many")).len(), 300);
    assert_eq!(ls(env.mnt.path()), ["many", "pre"]);

    // statfs
    // SAFETY: all-zero statvfs is valid; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(env.mnt.path().to_str().unwrap()).unwrap();
    // SAFETY: valid path and out pointer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 0 && st.f_bsize > 0);

    // fallocate extends the size (pending until fsync).
    let f = OpenOptions::new().write(true).open(env.m("pre")).unwrap();
    // SAFETY: valid descriptor.
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 8192) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 8192);
    drop(f);

    // chmod and times.
    fs::set_permissions(env.m("pre"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(
        fs::metadata(env.m("pre")).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    File::open(env.m("pre")).unwrap().set_modified(t).unwrap();
    assert_eq!(fs::metadata(env.m("pre")).unwrap().modified().unwrap(), t);

    // symlink works, hard links are refused.
    std::os::unix::fs::symlink("pre", env.m("sym")).unwrap();
    assert_eq!(fs::read_link(env.m("sym")).unwrap(), Path::new("pre"));
    assert_eq!(fs::read(env.m("sym")).unwrap().len(), 8192);
    assert!(fs::hard_link(env.m("pre"), env.m("hard")).is_err());

    // rename over an existing target, and RENAME_NOREPLACE.
    fs::write(env.m("t1"), b"1").unwrap();
    fs::write(env.m("t2"), b"2").unwrap();
    let (a, b) = (
        std::ffi::CString::new(env.m("t1").to_str().unwrap()).unwrap(),
        std::ffi::CString::new(env.m("t2").to_str().unwrap()).unwrap(),
    );
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    fs::rename(env.m("t1"), env.m("t2")).unwrap();
    assert_eq!(fs::read(env.m("t2")).unwrap(), b"1");

    // Unlinked-but-open files keep working.
    let mut o = OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.m("t2"))
        .unwrap();
    fs::remove_file(env.m("t2")).unwrap();
    o.write_all(b"more").unwrap();
    assert_eq!(o.metadata().unwrap().len(), 4);
    drop(o);

    let report = cfs.crash(CrashMode::DropAllPending).unwrap();
    assert_eq!(ls(env.backing.path()), ["pre"], "{report}");
    assert_eq!(fs::read(env.b("pre")).unwrap(), b"existing");
    // Mode changes are not modelled as pending: the new mode stays.
    assert_eq!(
        fs::metadata(env.b("pre")).unwrap().permissions().mode() & 0o777,
        0o640
    );
}

#[test]
fn create_with_each_access_mode() {
    use std::io::{Read, Seek, SeekFrom};
    let env = Env::new();
    let cfs = env.mount();
    let mut rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(env.m("rw"))
        .unwrap();
    rw.write_all(b"abc").unwrap();
    rw.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    rw.read_to_string(&mut s).unwrap();
    assert_eq!(s, "abc");
    drop(rw);
    // O_RDONLY|O_CREAT creates an empty file.
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe {
        let p = std::ffi::CString::new(env.m("ro").to_str().unwrap()).unwrap();
        libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CREAT, 0o644)
    };
    assert!(fd >= 0);
    // SAFETY: fd was just opened by us.
    unsafe { libc::close(fd) };
    assert_eq!(fs::read(env.m("ro")).unwrap(), b"");
    assert_eq!(cfs.pending(), (1, 2));
    fsync_dir(env.mnt.path());
    assert_eq!(cfs.pending(), (1, 0));
    cfs.unmount().unwrap();
    assert_eq!(fs::read(env.b("rw")).unwrap(), b"abc");
}

#[test]
fn remount_after_crash_sees_crash_state() {
    let env = Env::new();
    let cfs = env.mount();
    let mut f = File::create(env.m("a")).unwrap();
    f.write_all(b"one").unwrap();
    f.sync_all().unwrap();
    drop(f);
    fsync_dir(env.mnt.path());
    fs::write(env.m("b"), b"two").unwrap();
    cfs.crash(CrashMode::DropAllPending).unwrap();

    let cfs = env.mount();
    assert_eq!(ls(env.mnt.path()), ["a"]);
    assert_eq!(fs::read(env.m("a")).unwrap(), b"one");
    // Everything present at mount time is durable.
    let report = cfs.crash(CrashMode::DropAllPending).unwrap();
    assert!(!report.lost_anything());
    assert_eq!(fs::read(env.b("a")).unwrap(), b"one");
}
