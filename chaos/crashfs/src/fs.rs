//! The FUSE pass-through file system: every operation goes to the backing directory and
//! is recorded in the model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, FileTimes, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::model::{DataOp, Ino, Kind, Model, NodeKind, MAX_FILE_SIZE, ROOT};
use crate::{Counters, SyncCounts};

/// Attribute and entry cache lifetime handed to the kernel: nothing is cached.
const TTL: Duration = Duration::ZERO;

/// An open file or directory.
#[derive(Debug)]
pub(crate) enum Handle {
    File {
        ino: Ino,
        file: File,
        /// Opened with `O_SYNC`/`O_DSYNC`: every write is durable at once.
        sync: bool,
    },
    Dir {
        ino: Ino,
        /// The backing directory, for `fsyncdir` (absent if it could not be opened).
        file: Option<File>,
        entries: Vec<(Ino, FileType, OsString)>,
    },
}

impl Handle {
    fn ino(&self) -> Ino {
        match self {
            Handle::File { ino, .. } | Handle::Dir { ino, .. } => *ino,
        }
    }
}

/// State shared between the FUSE session thread and [`crate::CrashFs`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) model: Model,
    pub(crate) handles: HashMap<u64, Handle>,
    pub(crate) next_fh: u64,
    pub(crate) counters: Counters,
    /// Set at the crash (or unmount): every further operation fails with `EIO`.
    pub(crate) dead: bool,
}

impl Shared {
    pub(crate) fn new(model: Model) -> Shared {
        Shared {
            model,
            handles: HashMap::new(),
            next_fh: 1,
            counters: Counters::default(),
            dead: false,
        }
    }

    fn add_handle(&mut self, h: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, h);
        fh
    }

    fn open_inos(&self) -> HashSet<Ino> {
        self.handles.values().map(Handle::ino).collect()
    }

    fn count(&mut self, ino: Ino, f: impl Fn(&mut SyncCounts)) {
        let path = self.model.display_path(ino);
        f(&mut self.counters.total);
        f(self.counters.per_path.entry(path).or_default());
    }

    fn file_handle(&self, fh: FileHandle, ino: Ino) -> Result<&File, Errno> {
        match self.handles.get(&fh.0) {
            Some(Handle::File { ino: i, file, .. }) if *i == ino => Ok(file),
            _ => Err(Errno::EBADF),
        }
    }
}

/// The `fuser::Filesystem` implementation.
pub(crate) struct PassFs {
    pub(crate) backing: PathBuf,
    pub(crate) shared: Arc<Mutex<Shared>>,
}

fn err(e: io::Error) -> Errno {
    Errno::from(e)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = u32::try_from(nsecs.clamp(0, 999_999_999)).unwrap_or(0);
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs.unsigned_abs(), nsecs)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::new(0, nsecs)
    }
}

fn attr(ino: Ino, m: &Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: system_time(m.atime(), m.atime_nsec()),
        mtime: system_time(m.mtime(), m.mtime_nsec()),
        ctime: system_time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(m.file_type()).unwrap_or(FileType::RegularFile),
        perm: (m.mode() & 0o7777) as u16,
        nlink: u32::try_from(m.nlink()).unwrap_or(u32::MAX),
        uid: m.uid(),
        gid: m.gid(),
        rdev: u32::try_from(m.rdev()).unwrap_or(0),
        blksize: u32::try_from(m.blksize()).unwrap_or(4096),
        flags: 0,
    }
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    // O_APPEND must not reach the backing file: the kernel sends explicit offsets and
    // pwrite on an O_APPEND descriptor would ignore them. Creation and truncation are
    // handled explicitly; O_DIRECT/O_SYNC are modelled, not passed on.
    let strip = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_CREAT
        | libc::O_EXCL
        | libc::O_TRUNC
        | libc::O_DIRECT
        | libc::O_SYNC
        | libc::O_DSYNC
        | libc::O_NOCTTY;
    o.custom_flags(flags & !strip);
    o
}

fn check_end(offset: u64, len: u64) -> Result<(), Errno> {
    match offset.checked_add(len) {
        Some(end) if end <= MAX_FILE_SIZE => Ok(()),
        _ => Err(Errno::EFBIG),
    }
}

impl PassFs {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared state, or `EIO` once the file system is dead (crashed/unmounting).
    fn live(&self) -> Result<MutexGuard<'_, Shared>, Errno> {
        let g = self.lock();
        if g.dead {
            Err(Errno::EIO)
        } else {
            Ok(g)
        }
    }

    fn path(&self, s: &Shared, ino: Ino) -> Result<PathBuf, Errno> {
        s.model
            .rel_path(ino)
            .map(|rel| self.backing.join(rel))
            .ok_or(Errno::ENOENT)
    }

    fn child_path(&self, s: &Shared, parent: Ino, name: &OsStr) -> Result<PathBuf, Errno> {
        s.model.live_dir(parent)?;
        Ok(self.path(s, parent)?.join(name))
    }

    fn stat(&self, s: &Shared, ino: Ino, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
        if let Some(fh) = fh {
            if let Ok(f) = s.file_handle(fh, ino) {
                return f.metadata().map(|m| attr(ino, &m)).map_err(err);
            }
        }
        if let Ok(p) = self.path(s, ino) {
            return fs::symlink_metadata(p).map(|m| attr(ino, &m)).map_err(err);
        }
        // Unlinked but still open somewhere.
        for h in s.handles.values() {
            if let Handle::File { ino: i, file, .. } = h {
                if *i == ino {
                    return file.metadata().map(|m| attr(ino, &m)).map_err(err);
                }
            }
        }
        Err(Errno::ENOENT)
    }

    fn do_lookup(&self, parent: Ino, name: &OsStr) -> Result<FileAttr, Errno> {
        let mut s = self.live()?;
        let ino = s.model.lookup(parent, name)?;
        let a = self.stat(&s, ino, None)?;
        if let Some(i) = s.model.get_mut(ino) {
            i.nlookup += 1;
        }
        Ok(a)
    }

    fn entry_reply(&self, s: &mut Shared, ino: Ino, reply: ReplyEntry) {
        match self.stat(s, ino, None) {
            Ok(a) => {
                if let Some(i) = s.model.get_mut(ino) {
                    i.nlookup += 1;
                }
                reply.entry(&TTL, &a, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: Ino,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let mut s = self.live()?;
        let kind = s.model.node_kind(ino)?;
        // A descriptor for the inode: the caller's handle, or the path.
        let owned;
        let file: Option<&File> = match fh.map(|fh| s.file_handle(fh, ino)) {
            Some(Ok(f)) => Some(f),
            _ if kind == NodeKind::Symlink => None,
            _ => {
                let p = self.path(&s, ino)?;
                let mut o = OpenOptions::new();
                if size.is_some() {
                    o.write(true);
                } else {
                    o.read(true);
                }
                owned = o.open(p).map_err(err)?;
                Some(&owned)
            }
        };
        if let Some(len) = size {
            if kind != NodeKind::File {
                return Err(Errno::EISDIR);
            }
            check_end(len, 0)?;
            let f = file.ok_or(Errno::EBADF)?;
            f.set_len(len).map_err(err)?;
        }
        if let Some(mode) = mode {
            if let Some(f) = file {
                f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(err)?;
            }
        }
        if uid.is_some() || gid.is_some() {
            match file {
                Some(f) => std::os::unix::fs::fchown(f, uid, gid).map_err(err)?,
                None => std::os::unix::fs::lchown(self.path(&s, ino)?, uid, gid).map_err(err)?,
            }
        }
        if atime.is_some() || mtime.is_some() {
            if let Some(f) = file {
                let t = |t: TimeOrNow| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = FileTimes::new();
                if let Some(a) = atime {
                    times = times.set_accessed(t(a));
                }
                if let Some(m) = mtime {
                    times = times.set_modified(t(m));
                }
                f.set_times(times).map_err(err)?;
            }
        }
        let a = match file {
            Some(f) => f.metadata().map(|m| attr(ino, &m)).map_err(err)?,
            None => self.stat(&s, ino, None)?,
        };
        if let Some(len) = size {
            s.model.record(ino, DataOp::SetLen(len))?;
        }
        if let Some(mode) = mode {
            if let Some(i) = s.model.get_mut(ino) {
                i.mode = mode & 0o7777;
            }
        }
        Ok(a)
    }

    /// Creates (or, without `O_EXCL`, opens) a regular file. Returns the inode and an
    /// open backing file.
    fn create_file(
        &self,
        s: &mut Shared,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(Ino, File), Errno> {
        let path = self.child_path(s, parent, name)?;
        if let Ok(existing) = s.model.lookup(parent, name) {
            if flags & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            if s.model.node_kind(existing)? != NodeKind::File {
                return Err(Errno::EISDIR);
            }
            let file = open_options(flags).open(&path).map_err(err)?;
            if flags & libc::O_TRUNC != 0 {
                file.set_len(0).map_err(err)?;
                s.model.record(existing, DataOp::SetLen(0))?;
            }
            return Ok((existing, file));
        }
        let perm = mode & 0o7777 & !umask;
        // The backing descriptor is always read-write: the kernel may read through a
        // handle the caller asked write-only for, and the creator may open any mode.
        let file = open_options((flags & !libc::O_ACCMODE) | libc::O_RDWR)
            .create_new(true)
            .mode(perm)
            .open(&path)
            .map_err(err)?;
        file.set_permissions(fs::Permissions::from_mode(perm))
            .map_err(err)?;
        let ino = s.model.insert_new(parent, name, Kind::new_file(), perm)?;
        Ok((ino, file))
    }

    fn do_create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(FileAttr, u64), Errno> {
        let mut s = self.live()?;
        let (ino, file) = self.create_file(&mut s, parent, name, mode, umask, flags)?;
        let a = file.metadata().map(|m| attr(ino, &m)).map_err(err)?;
        if let Some(i) = s.model.get_mut(ino) {
            i.nlookup += 1;
        }
        let sync = flags & libc::O_DSYNC != 0;
        let fh = s.add_handle(Handle::File { ino, file, sync });
        Ok((a, fh))
    }

    fn do_mknod(&self, parent: Ino, name: &OsStr, mode: u32, umask: u32) -> Result<Ino, Errno> {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Errno::EPERM);
        }
        let mut s = self.live()?;
        if s.model.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let (ino, _file) = self.create_file(
            &mut s,
            parent,
            name,
            mode,
            umask,
            libc::O_WRONLY | libc::O_EXCL,
        )?;
        Ok(ino)
    }

    fn do_mkdir(&self, parent: Ino, name: &OsStr, mode: u32, umask: u32) -> Result<Ino, Errno> {
        let mut s = self.live()?;
        let path = self.child_path(&s, parent, name)?;
        if s.model.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        let perm = mode & 0o7777 & !umask;
        fs::DirBuilder::new()
            .mode(perm)
            .create(&path)
            .map_err(err)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(perm)).map_err(err)?;
        s.model.insert_new(parent, name, Kind::new_dir(), perm)
    }

    fn do_symlink(&self, parent: Ino, name: &OsStr, target: &Path) -> Result<Ino, Errno> {
        let mut s = self.live()?;
        let path = self.child_path(&s, parent, name)?;
        if s.model.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        std::os::unix::fs::symlink(target, &path).map_err(err)?;
        s.model.insert_new(
            parent,
            name,
            Kind::Symlink {
                target: target.to_path_buf(),
            },
            0o777,
        )
    }

    fn do_remove(&self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut s = self.live()?;
        let ino = s.model.lookup(parent, name)?;
        let path = self.child_path(&s, parent, name)?;
        let is_dir = s.model.node_kind(ino)? == NodeKind::Dir;
        if dir {
            if !is_dir {
                return Err(Errno::ENOTDIR);
            }
            if !s.model.live_dir(ino)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            fs::remove_dir(&path).map_err(err)?;
        } else {
            if is_dir {
                return Err(Errno::EISDIR);
            }
            fs::remove_file(&path).map_err(err)?;
        }
        s.model.remove_entry(parent, name)?;
        Ok(())
    }

    fn do_rename(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(Errno::EINVAL);
        }
        let mut s = self.live()?;
        s.model.lookup(parent, name)?;
        let from = self.child_path(&s, parent, name)?;
        let to = self.child_path(&s, newparent, newname)?;
        if flags.contains(RenameFlags::RENAME_NOREPLACE)
            && s.model.lookup(newparent, newname).is_ok()
        {
            return Err(Errno::EEXIST);
        }
        if parent == newparent && name == newname {
            return Ok(());
        }
        fs::rename(&from, &to).map_err(err)?;
        s.model.rename(parent, name, newparent, newname)
    }

    fn do_open(&self, ino: Ino, flags: i32) -> Result<u64, Errno> {
        let mut s = self.live()?;
        match s.model.node_kind(ino)? {
            NodeKind::File => {}
            NodeKind::Dir => return Err(Errno::EISDIR),
            NodeKind::Symlink => return Err(Errno::ELOOP),
        }
        let file = match self.path(&s, ino) {
            Ok(p) => open_options(flags).open(p).map_err(err)?,
            Err(e) => {
                // Unlinked: reuse an existing descriptor of the same inode.
                let mut found = None;
                for h in s.handles.values() {
                    if let Handle::File { ino: i, file, .. } = h {
                        if *i == ino {
                            found = Some(file.try_clone().map_err(err)?);
                            break;
                        }
                    }
                }
                found.ok_or(e)?
            }
        };
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            file.set_len(0).map_err(err)?;
            s.model.record(ino, DataOp::SetLen(0))?;
        }
        let sync = flags & libc::O_DSYNC != 0;
        Ok(s.add_handle(Handle::File { ino, file, sync }))
    }

    fn do_read(&self, ino: Ino, fh: FileHandle, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let s = self.live()?;
        let file = s.file_handle(fh, ino)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0usize;
        while done < buf.len() {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(err(e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn do_write(&self, ino: Ino, fh: FileHandle, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let mut s = self.live()?;
        check_end(offset, data.len() as u64)?;
        let len = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        let sync = match s.handles.get(&fh.0) {
            Some(Handle::File { ino: i, file, sync }) if *i == ino => {
                file.write_all_at(data, offset).map_err(err)?;
                if *sync {
                    file.sync_data().map_err(err)?;
                }
                *sync
            }
            _ => return Err(Errno::EBADF),
        };
        s.model.record(
            ino,
            DataOp::Write {
                offset,
                data: data.to_vec(),
            },
        )?;
        if sync {
            s.model.sync_file(ino);
        }
        s.count(ino, |c| {
            c.writes += 1;
            c.bytes_written += u64::from(len);
        });
        Ok(len)
    }

    fn do_fsync(&self, ino: Ino, fh: FileHandle, datasync: bool) -> Result<(), Errno> {
        let mut s = self.live()?;
        {
            let file = s.file_handle(fh, ino)?;
            if datasync {
                file.sync_data().map_err(err)?;
            } else {
                file.sync_all().map_err(err)?;
            }
        }
        s.model.sync_file(ino);
        s.count(ino, |c| {
            if datasync {
                c.fdatasync += 1;
            } else {
                c.fsync += 1;
            }
        });
        Ok(())
    }

    fn do_fallocate(
        &self,
        ino: Ino,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
        const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE;
        const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
        let ops: Vec<DataOp> = if mode == 0 {
            vec![DataOp::ExtendTo(offset.saturating_add(length))]
        } else if mode == KEEP {
            vec![]
        } else if mode == PUNCH | KEEP || mode == ZERO | KEEP {
            vec![DataOp::Zero {
                offset,
                len: length,
            }]
        } else if mode == ZERO {
            vec![
                DataOp::Zero {
                    offset,
                    len: length,
                },
                DataOp::ExtendTo(offset.saturating_add(length)),
            ]
        } else {
            return Err(Errno::EOPNOTSUPP);
        };
        check_end(offset, length)?;
        let mut s = self.live()?;
        let fd = s.file_handle(fh, ino)?.as_raw_fd();
        let off = i64::try_from(offset).map_err(|_| Errno::EFBIG)?;
        let len = i64::try_from(length).map_err(|_| Errno::EFBIG)?;
        // SAFETY: `fd` belongs to a `File` kept alive by the handle table, which stays
        // locked (and therefore unchanged) for the duration of the call.
        let rc = unsafe { libc::fallocate(fd, mode, off, len) };
        if rc != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        for op in ops {
            s.model.record(ino, op)?;
        }
        Ok(())
    }

    fn do_opendir(&self, ino: Ino) -> Result<u64, Errno> {
        let mut s = self.live()?;
        let live = s.model.live_dir(ino)?;
        let parent = s.model.get(ino).map_or(ROOT, |i| i.parent);
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (parent, FileType::Directory, OsString::from("..")),
        ];
        let listed: BTreeMap<OsString, Ino> = live.clone();
        for (name, child) in listed {
            if let Ok(k) = s.model.node_kind(child) {
                entries.push((child, file_type(k), name));
            }
        }
        let file = self.path(&s, ino).ok().and_then(|p| File::open(p).ok());
        Ok(s.add_handle(Handle::Dir { ino, file, entries }))
    }

    fn do_fsyncdir(&self, ino: Ino, fh: FileHandle) -> Result<(), Errno> {
        let mut s = self.live()?;
        s.model.live_dir(ino)?;
        match s.handles.get(&fh.0) {
            Some(Handle::Dir {
                file: Some(file), ..
            }) => file.sync_all().map_err(err)?,
            _ => {
                let p = self.path(&s, ino)?;
                File::open(p).and_then(|f| f.sync_all()).map_err(err)?;
            }
        }
        s.model.sync_dir(ino);
        s.count(ino, |c| c.fsyncdir += 1);
        let open = s.open_inos();
        s.model.gc(&open);
        Ok(())
    }

    fn do_statfs(&self) -> Result<libc::statvfs, Errno> {
        let c = CString::new(self.backing.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        // SAFETY: statvfs is plain old data; an all-zero value is valid.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out pointer.
        let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
        if rc != 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(st)
    }

    /// Drops an inode's bookkeeping once nothing refers to it any more.
    fn maybe_gc(&self, s: &mut Shared, ino: Ino) {
        if s.model.get(ino).is_some_and(|i| !i.linked) {
            let open = s.open_inos();
            s.model.gc(&open);
        }
    }
}

impl Filesystem for PassFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.do_lookup(parent.0, name) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut s = self.lock();
        if let Some(i) = s.model.get_mut(ino.0) {
            i.nlookup = i.nlookup.saturating_sub(nlookup);
        }
        if !s.dead {
            self.maybe_gc(&mut s, ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = self.live().and_then(|s| self.stat(&s, ino.0, fh));
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        match self.do_setattr(ino.0, mode, uid, gid, size, atime, mtime, fh) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let r = self.live().and_then(|s| match s.model.get(ino.0) {
            Some(crate::model::Inode {
                kind: Kind::Symlink { target },
                ..
            }) => Ok(target.as_os_str().as_bytes().to_vec()),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        });
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mknod(parent.0, name, mode, umask) {
            Ok(ino) => self.entry_reply(&mut self.lock(), ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.do_mkdir(parent.0, name, mode, umask) {
            Ok(ino) => self.entry_reply(&mut self.lock(), ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.do_remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.do_symlink(parent.0, link_name, target) {
            Ok(ino) => self.entry_reply(&mut self.lock(), ino, reply),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self.do_rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.do_open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.do_read(ino.0, fh, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.do_write(ino.0, fh, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() is not a durability point.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        s.handles.remove(&fh.0);
        if !s.dead {
            self.maybe_gc(&mut s, ino.0);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_fsync(ino.0, fh, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.do_opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let s = match self.live() {
            Ok(s) => s,
            Err(e) => return reply.error(e),
        };
        match s.handles.get(&fh.0) {
            Some(Handle::Dir {
                ino: i, entries, ..
            }) if *i == ino.0 => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                for (idx, (child, kind, name)) in entries.iter().enumerate().skip(start) {
                    if reply.add(INodeNo(*child), idx as u64 + 1, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            _ => reply.error(Errno::EBADF),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.do_fsyncdir(ino.0, fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.do_statfs() {
            Ok(st) => reply.statfs(
                st.f_blocks,
                st.f_bfree,
                st.f_bavail,
                st.f_files,
                st.f_ffree,
                u32::try_from(st.f_bsize).unwrap_or(4096),
                u32::try_from(st.f_namemax).unwrap_or(255),
                u32::try_from(st.f_frsize).unwrap_or(4096),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are done by the kernel (default_permissions).
        match self.live().and_then(|s| s.model.node_kind(ino.0)) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.do_create(parent.0, name, mode, umask, flags) {
            Ok((a, fh)) => {
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.do_fallocate(ino.0, fh, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}
