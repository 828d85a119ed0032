//! The in-memory model: live name space plus durable state and pending operations.
//!
//! The live name space (`Kind::Dir::live`) mirrors the backing directory exactly and is
//! what lookups use. The durable side (`durable` + `pending`) is only consulted when a
//! crash state is computed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fuser::Errno;

/// Inode number, as handed to the kernel.
pub(crate) type Ino = u64;

/// The root directory's inode number (fixed by FUSE).
pub(crate) const ROOT: Ino = 1;

/// Largest file size the in-memory model accepts; larger writes get `EFBIG`.
pub(crate) const MAX_FILE_SIZE: u64 = 1 << 32;

/// A change to file data that is not yet durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DataOp {
    /// `pwrite(offset, data)`.
    Write { offset: u64, data: Vec<u8> },
    /// `ftruncate(len)`.
    SetLen(u64),
    /// `fallocate` without `KEEP_SIZE`: size becomes at least `len`.
    ExtendTo(u64),
    /// Punch hole / zero range inside the current size.
    Zero { offset: u64, len: u64 },
}

fn to_usize(v: u64) -> usize {
    // Values are bounded by MAX_FILE_SIZE when recorded; clamp defensively.
    usize::try_from(v.min(MAX_FILE_SIZE)).unwrap_or(usize::MAX)
}

impl DataOp {
    /// Applies this operation to file content.
    pub(crate) fn apply(&self, buf: &mut Vec<u8>) {
        match self {
            DataOp::Write { offset, data } => {
                let start = to_usize(*offset);
                let end = start.saturating_add(data.len());
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[start..end].copy_from_slice(data);
            }
            DataOp::SetLen(len) => buf.resize(to_usize(*len), 0),
            DataOp::ExtendTo(len) => {
                let len = to_usize(*len);
                if buf.len() < len {
                    buf.resize(len, 0);
                }
            }
            DataOp::Zero { offset, len } => {
                let start = to_usize(*offset).min(buf.len());
                let end = to_usize(offset.saturating_add(*len)).min(buf.len());
                if start < end {
                    buf[start..end].fill(0);
                }
            }
        }
    }
}

/// A change to a directory's entries that is not yet durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NameOp {
    /// `name` now refers to `ino` (create, mkdir, mknod, symlink, rename target in
    /// another directory). Replaces an existing entry.
    Link { name: OsString, ino: Ino },
    /// `name` removed (unlink, rmdir, rename source in another directory).
    Unlink { name: OsString },
    /// Atomic rename inside one directory (replaces `to` if present).
    Rename {
        from: OsString,
        to: OsString,
        ino: Ino,
    },
}

impl NameOp {
    /// Applies this operation to a directory's entry map.
    pub(crate) fn apply(&self, entries: &mut BTreeMap<OsString, Ino>) {
        match self {
            NameOp::Link { name, ino } => {
                entries.insert(name.clone(), *ino);
            }
            NameOp::Unlink { name } => {
                entries.remove(name);
            }
            NameOp::Rename { from, to, ino } => {
                entries.remove(from);
                entries.insert(to.clone(), *ino);
            }
        }
    }

    fn ino(&self) -> Option<Ino> {
        match self {
            NameOp::Link { ino, .. } | NameOp::Rename { ino, .. } => Some(*ino),
            NameOp::Unlink { .. } => None,
        }
    }

    /// Names this operation touches (for reports).
    pub(crate) fn names(&self) -> Vec<&OsStr> {
        match self {
            NameOp::Link { name, .. } | NameOp::Unlink { name } => vec![name.as_os_str()],
            NameOp::Rename { from, to, .. } => vec![from.as_os_str(), to.as_os_str()],
        }
    }
}

/// What an inode is, with its durable state.
#[derive(Debug)]
pub(crate) enum Kind {
    File {
        durable: Vec<u8>,
        pending: Vec<DataOp>,
    },
    Dir {
        live: BTreeMap<OsString, Ino>,
        durable: BTreeMap<OsString, Ino>,
        pending: Vec<NameOp>,
    },
    Symlink {
        target: PathBuf,
    },
}

/// Coarse type of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeKind {
    File,
    Dir,
    Symlink,
}

impl Kind {
    pub(crate) fn node_kind(&self) -> NodeKind {
        match self {
            Kind::File { .. } => NodeKind::File,
            Kind::Dir { .. } => NodeKind::Dir,
            Kind::Symlink { .. } => NodeKind::Symlink,
        }
    }

    pub(crate) fn new_file() -> Kind {
        Kind::File {
            durable: Vec::new(),
            pending: Vec::new(),
        }
    }

    pub(crate) fn new_dir() -> Kind {
        Kind::Dir {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
            pending: Vec::new(),
        }
    }
}

/// One inode of the model.
#[derive(Debug)]
pub(crate) struct Inode {
    pub(crate) kind: Kind,
    /// Permission bits (`0o7777`). Mode changes are treated as immediately durable.
    pub(crate) mode: u32,
    /// Live parent (last known one once unlinked).
    pub(crate) parent: Ino,
    /// Live name (last known one once unlinked).
    pub(crate) name: OsString,
    /// Whether the inode currently has a live name.
    pub(crate) linked: bool,
    /// Kernel lookup count.
    pub(crate) nlookup: u64,
}

/// The whole model.
#[derive(Debug)]
pub(crate) struct Model {
    inodes: HashMap<Ino, Inode>,
    next_ino: Ino,
}

impl Model {
    /// An empty model with only a root directory.
    #[cfg(test)]
    pub(crate) fn new_empty(root_mode: u32) -> Model {
        let mut inodes = HashMap::new();
        inodes.insert(
            ROOT,
            Inode {
                kind: Kind::new_dir(),
                mode: root_mode,
                parent: ROOT,
                name: OsString::new(),
                linked: true,
                nlookup: 0,
            },
        );
        Model {
            inodes,
            next_ino: ROOT + 1,
        }
    }

    /// Builds the model from an existing directory tree; everything in it is durable.
    /// Regular files, directories and symlinks are modelled; other file types are skipped
    /// (invisible through the mount, and removed by a crash).
    pub(crate) fn scan(root: &Path) -> io::Result<Model> {
        let meta = fs::metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut model = Model {
            inodes: HashMap::new(),
            next_ino: ROOT + 1,
        };
        model.inodes.insert(
            ROOT,
            Inode {
                kind: Kind::new_dir(),
                mode: meta.permissions().mode() & 0o7777,
                parent: ROOT,
                name: OsString::new(),
                linked: true,
                nlookup: 0,
            },
        );
        model.scan_dir(ROOT, root)?;
        Ok(model)
    }

    fn scan_dir(&mut self, dir: Ino, path: &Path) -> io::Result<()> {
        let mut names: Vec<OsString> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut entries = BTreeMap::new();
        for name in names {
            let child_path = path.join(&name);
            let meta = fs::symlink_metadata(&child_path)?;
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                Kind::File {
                    durable: fs::read(&child_path)?,
                    pending: Vec::new(),
                }
            } else if ft.is_dir() {
                Kind::new_dir()
            } else if ft.is_symlink() {
                Kind::Symlink {
                    target: fs::read_link(&child_path)?,
                }
            } else {
                continue;
            };
            let ino = self.alloc(Inode {
                kind,
                mode: meta.permissions().mode() & 0o7777,
                parent: dir,
                name: name.clone(),
                linked: true,
                nlookup: 0,
            });
            entries.insert(name, ino);
            if ft.is_dir() {
                self.scan_dir(ino, &child_path)?;
            }
        }
        if let Some(Inode {
            kind: Kind::Dir { live, durable, .. },
            ..
        }) = self.inodes.get_mut(&dir)
        {
            *durable = entries.clone();
            *live = entries;
        }
        Ok(())
    }

    fn alloc(&mut self, inode: Inode) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, inode);
        ino
    }

    pub(crate) fn get(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub(crate) fn get_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// All inode numbers, sorted.
    pub(crate) fn sorted_inos(&self) -> Vec<Ino> {
        let mut v: Vec<Ino> = self.inodes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Live entries of a directory.
    pub(crate) fn live_dir(&self, ino: Ino) -> Result<&BTreeMap<OsString, Ino>, Errno> {
        match self.inodes.get(&ino) {
            Some(Inode {
                kind: Kind::Dir { live, .. },
                ..
            }) => Ok(live),
            Some(_) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    /// Looks a live name up.
    pub(crate) fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        self.live_dir(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    pub(crate) fn node_kind(&self, ino: Ino) -> Result<NodeKind, Errno> {
        self.inodes
            .get(&ino)
            .map(|i| i.kind.node_kind())
            .ok_or(Errno::ENOENT)
    }

    /// Live path relative to the root (`""` for the root); `None` when unlinked.
    pub(crate) fn rel_path(&self, ino: Ino) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        let mut guard = 0usize;
        while cur != ROOT {
            let inode = self.inodes.get(&cur)?;
            if !inode.linked {
                return None;
            }
            parts.push(&inode.name);
            cur = inode.parent;
            guard += 1;
            if guard > 100_000 {
                return None;
            }
        }
        let mut p = PathBuf::new();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Some(p)
    }

    /// Path for logs and counters: the live path, `"."` for the root, or the last known
    /// path with a `" (deleted)"` suffix.
    pub(crate) fn display_path(&self, ino: Ino) -> PathBuf {
        if ino == ROOT {
            return PathBuf::from(".");
        }
        if let Some(p) = self.rel_path(ino) {
            return p;
        }
        let mut parts: Vec<OsString> = Vec::new();
        let mut cur = ino;
        let mut guard = 0usize;
        while cur != ROOT && guard < 100_000 {
            let Some(inode) = self.inodes.get(&cur) else {
                break;
            };
            parts.push(inode.name.clone());
            cur = inode.parent;
            guard += 1;
        }
        let mut p = PathBuf::new();
        for part in parts.iter().rev() {
            p.push(part);
        }
        let mut s = p.into_os_string();
        s.push(" (deleted)");
        PathBuf::from(s)
    }

    /// Adds a new inode under `parent` (live) and records the pending link.
    pub(crate) fn insert_new(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: Kind,
        mode: u32,
    ) -> Result<Ino, Errno> {
        if self.live_dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.alloc(Inode {
            kind,
            mode,
            parent,
            name: name.to_os_string(),
            linked: true,
            nlookup: 0,
        });
        if let Some((live, pending)) = self.dir_mut(parent) {
            live.insert(name.to_os_string(), ino);
            pending.push(NameOp::Link {
                name: name.to_os_string(),
                ino,
            });
        }
        Ok(ino)
    }

    /// The live names and pending name operations of directory `ino` (`None` for another
    /// kind or a missing inode).
    fn dir_mut(&mut self, ino: Ino) -> Option<(&mut BTreeMap<OsString, Ino>, &mut Vec<NameOp>)> {
        match self.inodes.get_mut(&ino) {
            Some(Inode {
                kind: Kind::Dir { live, pending, .. },
                ..
            }) => Some((live, pending)),
            _ => None,
        }
    }

    /// Removes a live name and records the pending unlink.
    pub(crate) fn remove_entry(&mut self, parent: Ino, name: &OsStr) -> Result<Ino, Errno> {
        let ino = self.lookup(parent, name)?;
        if let Some((live, pending)) = self.dir_mut(parent) {
            live.remove(name);
            pending.push(NameOp::Unlink {
                name: name.to_os_string(),
            });
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.linked = false;
        }
        Ok(ino)
    }

    /// Renames a live name (overwriting a target) and records the pending name ops.
    pub(crate) fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
    ) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        self.live_dir(newparent)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        let mut replaced = None;
        if parent == newparent {
            if let Some((live, pending)) = self.dir_mut(parent) {
                live.remove(name);
                replaced = live.insert(newname.to_os_string(), ino);
                pending.push(NameOp::Rename {
                    from: name.to_os_string(),
                    to: newname.to_os_string(),
                    ino,
                });
            }
        } else {
            // Destination first: a crash that keeps only one side may leave the file
            // reachable under both names (materialised as a hard link), never lost by
            // the rename itself unless the source directory alone is synced.
            if let Some((live, pending)) = self.dir_mut(newparent) {
                replaced = live.insert(newname.to_os_string(), ino);
                pending.push(NameOp::Link {
                    name: newname.to_os_string(),
                    ino,
                });
            }
            if let Some((live, pending)) = self.dir_mut(parent) {
                live.remove(name);
                pending.push(NameOp::Unlink {
                    name: name.to_os_string(),
                });
            }
        }
        if let Some(old) = replaced {
            if old != ino {
                if let Some(inode) = self.inodes.get_mut(&old) {
                    inode.linked = false;
                }
            }
        }
        if let Some(inode) = self.inodes.get_mut(&ino) {
            inode.parent = newparent;
            inode.name = newname.to_os_string();
        }
        Ok(())
    }

    /// Records a pending data operation on a file.
    pub(crate) fn record(&mut self, ino: Ino, op: DataOp) -> Result<(), Errno> {
        match self.inodes.get_mut(&ino) {
            Some(Inode {
                kind: Kind::File { pending, .. },
                ..
            }) => {
                pending.push(op);
                Ok(())
            }
            Some(Inode {
                kind: Kind::Dir { .. },
                ..
            }) => Err(Errno::EISDIR),
            Some(_) => Err(Errno::EINVAL),
            None => Err(Errno::ENOENT),
        }
    }

    /// Makes a file's pending data durable. Returns how many ops were applied.
    pub(crate) fn sync_file(&mut self, ino: Ino) -> usize {
        match self.inodes.get_mut(&ino) {
            Some(Inode {
                kind: Kind::File { durable, pending },
                ..
            }) => {
                let n = pending.len();
                for op in pending.drain(..) {
                    op.apply(durable);
                }
                n
            }
            _ => 0,
        }
    }

    /// Makes a directory's pending name ops durable. Returns how many ops were applied.
    pub(crate) fn sync_dir(&mut self, ino: Ino) -> usize {
        match self.inodes.get_mut(&ino) {
            Some(Inode {
                kind: Kind::Dir {
                    durable, pending, ..
                },
                ..
            }) => {
                let n = pending.len();
                for op in pending.drain(..) {
                    op.apply(durable);
                }
                n
            }
            _ => 0,
        }
    }

    /// Pending `(data ops, name ops)` over all inodes.
    pub(crate) fn pending_counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for inode in self.inodes.values() {
            match &inode.kind {
                Kind::File { pending, .. } => counts.0 += pending.len(),
                Kind::Dir { pending, .. } => counts.1 += pending.len(),
                Kind::Symlink { .. } => {}
            }
        }
        counts
    }

    /// Drops inodes that can no longer matter: not live, not known to the kernel, not
    /// open, and not referenced by any durable entry or pending name op of a kept
    /// directory.
    pub(crate) fn gc(&mut self, open: &HashSet<Ino>) {
        let mut keep: HashSet<Ino> = HashSet::new();
        let mut work: Vec<Ino> = Vec::new();
        for (&ino, inode) in &self.inodes {
            if ino == ROOT || inode.linked || inode.nlookup > 0 || open.contains(&ino) {
                work.push(ino);
            }
        }
        while let Some(ino) = work.pop() {
            if !keep.insert(ino) {
                continue;
            }
            if let Some(Inode {
                kind:
                    Kind::Dir {
                        live,
                        durable,
                        pending,
                    },
                ..
            }) = self.inodes.get(&ino)
            {
                work.extend(live.values().copied());
                work.extend(durable.values().copied());
                work.extend(pending.iter().filter_map(NameOp::ino));
            }
        }
        self.inodes.retain(|ino, _| keep.contains(ino));
    }

    /// Number of inodes in the model.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inodes.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn data_ops_apply() {
        let mut b = b"hello".to_vec();
        DataOp::Write {
            offset: 7,
            data: b"xy".to_vec(),
        }
        .apply(&mut b);
        assert_eq!(b, b"hello\0\0xy");
        DataOp::SetLen(3).apply(&mut b);
        assert_eq!(b, b"hel");
        DataOp::ExtendTo(2).apply(&mut b);
        assert_eq!(b, b"hel");
        DataOp::ExtendTo(4).apply(&mut b);
        assert_eq!(b, b"hel\0");
        DataOp::Zero { offset: 1, len: 10 }.apply(&mut b);
        assert_eq!(b, b"h\0\0\0");
    }

    #[test]
    fn rename_and_sync() {
        let mut m = Model::new_empty(0o755);
        let a = m
            .insert_new(ROOT, &os("a"), Kind::new_file(), 0o600)
            .unwrap();
        m.sync_dir(ROOT);
        m.rename(ROOT, &os("a"), ROOT, &os("b")).unwrap();
        assert_eq!(m.lookup(ROOT, &os("b")).unwrap(), a);
        assert_eq!(m.rel_path(a).unwrap(), PathBuf::from("b"));
        let Kind::Dir { durable, .. } = &m.get(ROOT).unwrap().kind else {
            panic!()
        };
        assert_eq!(durable.get(&os("a")), Some(&a));
        m.sync_dir(ROOT);
        let Kind::Dir { durable, .. } = &m.get(ROOT).unwrap().kind else {
            panic!()
        };
        assert_eq!(durable.get(&os("b")), Some(&a));
        assert!(!durable.contains_key(&os("a")));
    }

    #[test]
    fn gc_keeps_durably_linked() {
        let mut m = Model::new_empty(0o755);
        let a = m
            .insert_new(ROOT, &os("a"), Kind::new_file(), 0o600)
            .unwrap();
        m.sync_dir(ROOT);
        m.remove_entry(ROOT, &os("a")).unwrap();
        m.gc(&HashSet::new());
        assert!(m.get(a).is_some(), "still durable in root");
        assert!(m.display_path(a).to_string_lossy().ends_with("(deleted)"));
        m.sync_dir(ROOT);
        m.gc(&HashSet::new());
        assert!(m.get(a).is_none());
        assert_eq!(m.len(), 1);
    }
}
