//! `crashfs`: a FUSE pass-through file system that models what survives a power cut.
//!
//! Every operation under the mount point is passed through to a backing directory (the
//! live view). In parallel, crashfs keeps a model of the durable state under strict POSIX
//! rules: file data becomes durable only when the file is `fsync`ed/`fdatasync`ed, and a
//! name (create, unlink, rename, mkdir, rmdir) only when its parent directory is
//! `fsync`ed. [`CrashFs::crash`] unmounts and rewrites the backing directory to a state
//! the file system may legally be in after a power cut.
//!
//! ```no_run
//! # fn main() -> Result<(), crashfs::Error> {
//! use crashfs::{CrashFs, CrashMode};
//! let fs = CrashFs::mount("/tmp/backing".as_ref(), "/tmp/mnt".as_ref())?;
//! // ... run the workload under /tmp/mnt, then stop every process using it ...
//! let report = fs.crash(CrashMode::RandomPrefix { seed: 42 })?;
//! println!("{report}");
//! // /tmp/backing now holds the post-crash state; mount it again to recover.
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
// FUSE plumbing needs a few libc calls (umount2, fallocate, statvfs); each has a SAFETY note.
#![allow(unsafe_code)]

mod crash;
mod fs;
mod model;
mod rng;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use fuser::{BackgroundSession, Config, MountOption};

pub use crate::crash::{Affected, AffectedKind, CrashMode, CrashReport};
pub use crate::rng::SplitMix64;

use crate::fs::{PassFs, Shared};
use crate::model::Model;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on the backing directory or the mount point.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The backing directory and the mount point overlap.
    #[error(
        "backing directory {backing:?} and mount point {mountpoint:?} must not contain each other"
    )]
    Overlap {
        /// Backing directory.
        backing: PathBuf,
        /// Mount point.
        mountpoint: PathBuf,
    },
    /// Mounting failed.
    #[error("mounting crashfs at {mountpoint:?} failed: {source}")]
    Mount {
        /// Mount point.
        mountpoint: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Unmounting failed.
    #[error("unmounting {mountpoint:?} failed: {source}")]
    Unmount {
        /// Mount point.
        mountpoint: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The FUSE session thread ended with an error or panicked.
    #[error("FUSE session thread failed: {0}")]
    Session(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Sync and write counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounts {
    /// `fsync` on files (data and metadata).
    pub fsync: u64,
    /// `fdatasync` on files.
    pub fdatasync: u64,
    /// `fsync`/`fdatasync` on directories.
    pub fsyncdir: u64,
    /// FUSE write requests (one `write(2)` may arrive as several, split at page
    /// boundaries; writes from shared mappings arrive on `msync`/writeback).
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
}

/// Counters since mount or the last [`CrashFs::reset_counters`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Totals over all paths.
    pub total: SyncCounts,
    /// Per path relative to the mount point, as it was at the time of each call
    /// (`"."` is the root directory; a file already unlinked is
    /// `"<last path> (deleted)"`).
    pub per_path: BTreeMap<PathBuf, SyncCounts>,
}

impl Counters {
    /// Counts for one path (zero if never touched).
    pub fn path(&self, path: impl AsRef<Path>) -> SyncCounts {
        self.per_path
            .get(path.as_ref())
            .copied()
            .unwrap_or_default()
    }
}

/// A mounted crashfs. Dropping it unmounts cleanly (like [`CrashFs::unmount`]).
#[derive(Debug)]
pub struct CrashFs {
    shared: Arc<Mutex<Shared>>,
    session: Option<BackgroundSession>,
    backing: PathBuf,
    mountpoint: PathBuf,
    /// FUSE connection number (`/sys/fs/fuse/connections/<n>`), for aborting.
    connection: Option<u64>,
}

impl CrashFs {
    /// Mounts crashfs at `mountpoint`, passing through to `backing`. Everything already in
    /// `backing` is considered durable. Both must be existing directories, and neither may
    /// contain the other. Nothing else may modify `backing` while mounted.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<CrashFs, Error> {
        let backing = backing
            .canonicalize()
            .map_err(io_err(format!("canonicalize {}", backing.display())))?;
        let mountpoint = mountpoint
            .canonicalize()
            .map_err(io_err(format!("canonicalize {}", mountpoint.display())))?;
        if backing.starts_with(&mountpoint) || mountpoint.starts_with(&backing) {
            return Err(Error::Overlap {
                backing,
                mountpoint,
            });
        }
        let model = Model::scan(&backing).map_err(io_err(format!("scan {}", backing.display())))?;
        let shared = Arc::new(Mutex::new(Shared::new(model)));
        let fs = PassFs {
            backing: backing.clone(),
            shared: Arc::clone(&shared),
        };
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("crashfs".to_string()),
            MountOption::Subtype("crashfs".to_string()),
            MountOption::DefaultPermissions,
        ];
        let session =
            fuser::spawn_mount(fs, &mountpoint, &config).map_err(|source| Error::Mount {
                mountpoint: mountpoint.clone(),
                source,
            })?;
        let connection = std::fs::metadata(&mountpoint).ok().map(|m| {
            let dev = m.dev();
            let (major, minor) = (libc::major(dev), libc::minor(dev));
            (u64::from(major) << 20) | u64::from(minor)
        });
        Ok(CrashFs {
            shared,
            session: Some(session),
            backing,
            mountpoint,
            connection,
        })
    }

    /// The (canonical) mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The (canonical) backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sync and write counters since mount or the last reset.
    pub fn counters(&self) -> Counters {
        self.lock().counters.clone()
    }

    /// Resets all counters to zero.
    pub fn reset_counters(&self) {
        self.lock().counters = Counters::default();
    }

    /// Number of operations not yet durable: `(data ops, name ops)`.
    pub fn pending(&self) -> (usize, usize) {
        self.lock().model.pending_counts()
    }

    /// Writes the state a power cut *now* could leave into `dest` (created if missing, must
    /// be empty) without disturbing the mount. Lets one workload be checked against many
    /// crash states.
    pub fn snapshot_crash(&self, mode: CrashMode, dest: &Path) -> Result<CrashReport, Error> {
        let (image, report) = {
            let s = self.lock();
            crash::compute(&s.model, mode)
        };
        std::fs::create_dir_all(dest).map_err(io_err(format!("mkdir {}", dest.display())))?;
        let mut it =
            std::fs::read_dir(dest).map_err(io_err(format!("read_dir {}", dest.display())))?;
        if it.next().is_some() {
            return Err(Error::Io {
                context: format!("snapshot destination {}", dest.display()),
                source: io::Error::new(io::ErrorKind::AlreadyExists, "directory is not empty"),
            });
        }
        crash::materialize(&image, dest).map_err(io_err("write crash state"))?;
        Ok(report)
    }

    /// Power cut: from now on every operation on the mount fails with `EIO`; the file
    /// system is unmounted (lazily, and the FUSE connection aborted, if something still
    /// uses it: callers should kill their processes first) and `backing` is rewritten to
    /// a state chosen by `mode`. Returns what was kept and dropped.
    pub fn crash(mut self, mode: CrashMode) -> Result<CrashReport, Error> {
        self.lock().dead = true;
        self.shutdown()?;
        let (image, report) = {
            let s = self.lock();
            crash::compute(&s.model, mode)
        };
        crash::clear_dir(&self.backing).map_err(io_err("clear backing directory"))?;
        crash::materialize(&image, &self.backing).map_err(io_err("write crash state"))?;
        Ok(report)
    }

    /// Clean unmount: the backing directory keeps the live state.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let c =
            CString::new(self.mountpoint.as_os_str().as_bytes()).map_err(|_| Error::Unmount {
                mountpoint: self.mountpoint.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"),
            })?;
        // A process that was just killed may still be releasing its files: give the
        // kernel a moment before detaching a busy mount.
        let mut failed = None;
        for _ in 0..50 {
            // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
            let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
            failed = (rc != 0).then(io::Error::last_os_error);
            if failed.as_ref().and_then(io::Error::raw_os_error) != Some(libc::EBUSY) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut joinable = true;
        if let Some(e) = failed {
            match e.raw_os_error() {
                Some(libc::EBUSY) => {
                    // Still in use: detach it from the name space and abort the connection
                    // so that users get errors and the session thread ends.
                    // SAFETY: as above.
                    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                    if rc != 0 {
                        let source = io::Error::last_os_error();
                        self.session = Some(session);
                        return Err(Error::Unmount {
                            mountpoint: self.mountpoint.clone(),
                            source,
                        });
                    }
                    joinable = self.abort_connection();
                }
                // Already unmounted by someone else.
                Some(libc::EINVAL) => {}
                _ => {
                    self.session = Some(session);
                    return Err(Error::Unmount {
                        mountpoint: self.mountpoint.clone(),
                        source: e,
                    });
                }
            }
        }
        self.lock().dead = true;
        if !joinable {
            // Open descriptors keep the detached mount alive; the session thread ends
            // when the last one is closed. Operations fail with EIO meanwhile.
            drop(session);
            return Ok(());
        }
        // Moving the thread handle out drops the rest of the session; its own unmount
        // attempt finds nothing mounted any more.
        let guard = session.guard;
        match guard.join() {
            Ok(Ok(())) => Ok(()),
            // The kernel ends a session that is being unmounted with ECONNABORTED (or
            // ENODEV) on /dev/fuse: that is the end we asked for.
            Ok(Err(e)) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::ENODEV)) => {
                Ok(())
            }
            Ok(Err(e)) => Err(Error::Session(e.to_string())),
            Err(_) => Err(Error::Session("session thread panicked".to_string())),
        }
    }

    /// Aborts the FUSE connection through fusectl. Returns whether it worked.
    fn abort_connection(&self) -> bool {
        let Some(conn) = self.connection else {
            return false;
        };
        let path = format!("/sys/fs/fuse/connections/{conn}/abort");
        std::fs::write(path, b"1").is_ok()
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
