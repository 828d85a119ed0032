#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Shared helpers for the integration tests (they mount for real).
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crashfs::CrashFs;
use tempfile::TempDir;

/// A backing directory and a mount point, both temporary.
pub struct Env {
    pub backing: TempDir,
    pub mnt: TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            backing: tempfile::tempdir().unwrap(),
            mnt: tempfile::tempdir().unwrap(),
        }
    }

    /// Path inside the backing directory.
    pub fn b(&self, rel: &str) -> PathBuf {
        self.backing.path().join(rel)
    }

    /// Path inside the mount.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    pub fn mount(&self) -> CrashFs {
        CrashFs::mount(self.backing.path(), self.mnt.path()).unwrap()
    }
}

/// fsync a directory the way programs do: open read-only, fsync.
pub fn fsync_dir(p: &Path) {
    File::open(p).unwrap().sync_all().unwrap();
}

/// Sorted names in a directory.
pub fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
