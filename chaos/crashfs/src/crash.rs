//! Computing a legal post-power-cut state from the model, and writing it to disk.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::model::{DataOp, Ino, Kind, Model, ROOT};
use crate::rng::SplitMix64;

/// Sector size used for torn writes.
const SECTOR: u64 = 512;

/// Which legal crash state to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// Every pending (un-fsynced) operation is lost: the result is exactly the durable state.
    DropAllPending,
    /// Every pending operation survives (the state a clean shutdown would give, minus files
    /// that are open but unlinked). Useful as a control.
    KeepAllPending,
    /// For each inode independently, a seeded random prefix (`0..=all`) of its pending
    /// operations survives; the first dropped data write may be torn at a 512-byte sector
    /// boundary (its first part survives). Deterministic for a given seed and history.
    RandomPrefix {
        /// Seed of the deterministic generator.
        seed: u64,
    },
}

/// What kind of state an [`Affected`] entry is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AffectedKind {
    /// Pending data operations of a file (write, truncate, fallocate).
    FileData,
    /// Pending name operations of a directory (create, unlink, rename, ...).
    DirEntries,
}

/// One inode that had pending operations at the crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Affected {
    /// Path relative to the mount at crash time (`"."` is the root; unlinked files carry
    /// their last path plus `" (deleted)"`).
    pub path: PathBuf,
    /// File data or directory entries.
    pub kind: AffectedKind,
    /// Pending operations that survived.
    pub kept: usize,
    /// Pending operations that were lost.
    pub dropped: usize,
    /// Whether the first dropped operation was a write that survived partially.
    pub torn: bool,
    /// For directories: the names touched by the dropped operations.
    pub dropped_names: Vec<OsString>,
}

/// Summary of what a crash kept and dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// The mode the state was chosen with.
    pub mode: CrashMode,
    /// Pending data operations that survived.
    pub data_ops_kept: usize,
    /// Pending data operations that were lost (a torn write counts as lost).
    pub data_ops_dropped: usize,
    /// Writes that survived partially.
    pub torn_writes: usize,
    /// Pending name operations that survived.
    pub name_ops_kept: usize,
    /// Pending name operations that were lost.
    pub name_ops_dropped: usize,
    /// Every inode with pending operations, sorted by inode number.
    pub affected: Vec<Affected>,
    /// Paths that existed in the live view but do not exist after the crash.
    pub vanished: Vec<PathBuf>,
    /// Paths that exist after the crash but did not exist in the live view.
    pub reappeared: Vec<PathBuf>,
}

impl CrashReport {
    fn new(mode: CrashMode) -> CrashReport {
        CrashReport {
            mode,
            data_ops_kept: 0,
            data_ops_dropped: 0,
            torn_writes: 0,
            name_ops_kept: 0,
            name_ops_dropped: 0,
            affected: Vec::new(),
            vanished: Vec::new(),
            reappeared: Vec::new(),
        }
    }

    /// Whether any pending (un-synced) operation was lost, fully or partly.
    pub fn lost_anything(&self) -> bool {
        self.data_ops_dropped > 0 || self.name_ops_dropped > 0
    }
}

impl fmt::Display for CrashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "crash {:?}: data ops kept {} dropped {} (torn {}), name ops kept {} dropped {}",
            self.mode,
            self.data_ops_kept,
            self.data_ops_dropped,
            self.torn_writes,
            self.name_ops_kept,
            self.name_ops_dropped
        )?;
        for a in &self.affected {
            write!(
                f,
                "  {:?} {}: kept {} dropped {}{}",
                a.kind,
                a.path.display(),
                a.kept,
                a.dropped,
                if a.torn { " (torn)" } else { "" }
            )?;
            if !a.dropped_names.is_empty() {
                let names: Vec<_> = a
                    .dropped_names
                    .iter()
                    .map(|n| n.to_string_lossy())
                    .collect();
                write!(f, " names {names:?}")?;
            }
            writeln!(f)?;
        }
        for p in &self.vanished {
            writeln!(f, "  vanished: {}", p.display())?;
        }
        for p in &self.reappeared {
            writeln!(f, "  reappeared: {}", p.display())?;
        }
        Ok(())
    }
}

/// A node of the crash image.
#[derive(Debug)]
pub(crate) enum Node {
    Dir {
        mode: u32,
        children: Vec<(OsString, Node)>,
    },
    File(Ino),
    Symlink(PathBuf),
}

/// The complete crash state.
#[derive(Debug)]
pub(crate) struct Image {
    root_mode: u32,
    root: Vec<(OsString, Node)>,
    files: HashMap<Ino, (u32, Vec<u8>)>,
}

/// How many of `n` pending ops survive.
fn choose_prefix(mode: CrashMode, n: usize, rng: &mut SplitMix64) -> usize {
    match mode {
        CrashMode::DropAllPending => 0,
        CrashMode::KeepAllPending => n,
        CrashMode::RandomPrefix { .. } => {
            usize::try_from(rng.below(n as u64 + 1)).unwrap_or(n).min(n)
        }
    }
}

/// Computes the crash image and the report.
pub(crate) fn compute(model: &Model, mode: CrashMode) -> (Image, CrashReport) {
    let seed = match mode {
        CrashMode::RandomPrefix { seed } => seed,
        _ => 0,
    };
    let mut report = CrashReport::new(mode);
    let mut contents: HashMap<Ino, Vec<u8>> = HashMap::new();
    let mut dirs: HashMap<Ino, BTreeMap<OsString, Ino>> = HashMap::new();

    for ino in model.sorted_inos() {
        let Some(inode) = model.get(ino) else {
            continue;
        };
        let mut rng = SplitMix64::for_inode(seed, ino);
        match &inode.kind {
            Kind::File { durable, pending } => {
                let keep = choose_prefix(mode, pending.len(), &mut rng);
                let mut content = durable.clone();
                for op in &pending[..keep] {
                    op.apply(&mut content);
                }
                let mut torn = false;
                if let (CrashMode::RandomPrefix { .. }, Some(DataOp::Write { offset, data })) =
                    (mode, pending.get(keep))
                {
                    let end = offset.saturating_add(data.len() as u64);
                    let first = offset / SECTOR + 1;
                    let last = end.saturating_sub(1) / SECTOR;
                    if last >= first && rng.below(2) == 1 {
                        let b = (first + rng.below(last - first + 1)) * SECTOR;
                        let cut = usize::try_from(b - offset).unwrap_or(0).min(data.len());
                        DataOp::Write {
                            offset: *offset,
                            data: data[..cut].to_vec(),
                        }
                        .apply(&mut content);
                        torn = true;
                    }
                }
                if !pending.is_empty() {
                    let dropped = pending.len() - keep;
                    report.data_ops_kept += keep;
                    report.data_ops_dropped += dropped;
                    report.torn_writes += usize::from(torn);
                    report.affected.push(Affected {
                        path: model.display_path(ino),
                        kind: AffectedKind::FileData,
                        kept: keep,
                        dropped,
                        torn,
                        dropped_names: Vec::new(),
                    });
                }
                contents.insert(ino, content);
            }
            Kind::Dir {
                durable, pending, ..
            } => {
                let keep = choose_prefix(mode, pending.len(), &mut rng);
                let mut entries = durable.clone();
                for op in &pending[..keep] {
                    op.apply(&mut entries);
                }
                if !pending.is_empty() {
                    let dropped = pending.len() - keep;
                    report.name_ops_kept += keep;
                    report.name_ops_dropped += dropped;
                    let mut names: Vec<OsString> = Vec::new();
                    for op in &pending[keep..] {
                        for n in op.names() {
                            if !names.iter().any(|x| x == n) {
                                names.push(n.to_os_string());
                            }
                        }
                    }
                    report.affected.push(Affected {
                        path: model.display_path(ino),
                        kind: AffectedKind::DirEntries,
                        kept: keep,
                        dropped,
                        torn: false,
                        dropped_names: names,
                    });
                }
                dirs.insert(ino, entries);
            }
            Kind::Symlink { .. } => {}
        }
    }

    let mut visited: HashSet<Ino> = HashSet::new();
    visited.insert(ROOT);
    let mut files: HashMap<Ino, (u32, Vec<u8>)> = HashMap::new();
    let root = build_dir(model, ROOT, &dirs, &mut contents, &mut files, &mut visited);
    let root_mode = model.get(ROOT).map_or(0o755, |i| i.mode);
    let image = Image {
        root_mode,
        root,
        files,
    };

    let mut live = BTreeSet::new();
    live_paths(model, ROOT, PathBuf::new(), &mut live, &mut HashSet::new());
    let mut after = BTreeSet::new();
    image_paths(&image.root, PathBuf::new(), &mut after);
    report.vanished = live.difference(&after).cloned().collect();
    report.reappeared = after.difference(&live).cloned().collect();
    (image, report)
}

fn build_dir(
    model: &Model,
    dir: Ino,
    dirs: &HashMap<Ino, BTreeMap<OsString, Ino>>,
    contents: &mut HashMap<Ino, Vec<u8>>,
    files: &mut HashMap<Ino, (u32, Vec<u8>)>,
    visited: &mut HashSet<Ino>,
) -> Vec<(OsString, Node)> {
    let mut out = Vec::new();
    let Some(entries) = dirs.get(&dir) else {
        return out;
    };
    for (name, &child) in entries {
        let Some(inode) = model.get(child) else {
            continue;
        };
        match &inode.kind {
            Kind::Dir { .. } => {
                // A directory can only have one name; a second durable name (cross-directory
                // rename half-synced) or a cycle is skipped.
                if visited.insert(child) {
                    let children = build_dir(model, child, dirs, contents, files, visited);
                    out.push((
                        name.clone(),
                        Node::Dir {
                            mode: inode.mode,
                            children,
                        },
                    ));
                }
            }
            Kind::File { .. } => {
                files.entry(child).or_insert_with(|| {
                    let content = contents.remove(&child).unwrap_or_default();
                    (inode.mode, content)
                });
                out.push((name.clone(), Node::File(child)));
            }
            Kind::Symlink { target } => out.push((name.clone(), Node::Symlink(target.clone()))),
        }
    }
    out
}

fn live_paths(
    model: &Model,
    dir: Ino,
    prefix: PathBuf,
    out: &mut BTreeSet<PathBuf>,
    seen: &mut HashSet<Ino>,
) {
    if !seen.insert(dir) {
        return;
    }
    let Ok(entries) = model.live_dir(dir) else {
        return;
    };
    for (name, &child) in entries {
        let p = prefix.join(name);
        out.insert(p.clone());
        if model.live_dir(child).is_ok() {
            live_paths(model, child, p, out, seen);
        }
    }
}

fn image_paths(children: &[(OsString, Node)], prefix: PathBuf, out: &mut BTreeSet<PathBuf>) {
    for (name, node) in children {
        let p = prefix.join(name);
        out.insert(p.clone());
        if let Node::Dir { children, .. } = node {
            image_paths(children, p, out);
        }
    }
}

fn ctx(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let msg = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{msg}: {e}"))
}

/// Removes everything inside `dir` (not `dir` itself).
pub(crate) fn clear_dir(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(ctx("read_dir", dir))? {
        let entry = entry?;
        let p = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            // Make sure read-only directories can be emptied.
            let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
            fs::remove_dir_all(&p).map_err(ctx("remove_dir_all", &p))?;
        } else {
            fs::remove_file(&p).map_err(ctx("remove_file", &p))?;
        }
    }
    Ok(())
}

/// Writes the image into `dest`, which must exist and be empty.
pub(crate) fn materialize(image: &Image, dest: &Path) -> io::Result<()> {
    let mut written: HashMap<Ino, PathBuf> = HashMap::new();
    write_children(image, &image.root, dest, &mut written)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(image.root_mode))
        .map_err(ctx("chmod", dest))
}

fn write_children(
    image: &Image,
    children: &[(OsString, Node)],
    dir: &Path,
    written: &mut HashMap<Ino, PathBuf>,
) -> io::Result<()> {
    for (name, node) in children {
        let p = dir.join(name);
        match node {
            Node::Dir { mode, children } => {
                fs::create_dir(&p).map_err(ctx("mkdir", &p))?;
                write_children(image, children, &p, written)?;
                // Permissions last, so read-only directories can be filled first.
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    .map_err(ctx("chmod", &p))?;
            }
            Node::File(ino) => {
                if let Some(first) = written.get(ino) {
                    fs::hard_link(first, &p).map_err(ctx("link", &p))?;
                    continue;
                }
                let (mode, content) = image
                    .files
                    .get(ino)
                    .map(|(m, c)| (*m, c.as_slice()))
                    .unwrap_or((0o600, &[]));
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&p)
                    .map_err(ctx("create", &p))?;
                f.write_all(content).map_err(ctx("write", &p))?;
                drop(f);
                fs::set_permissions(&p, fs::Permissions::from_mode(mode))
                    .map_err(ctx("chmod", &p))?;
                written.insert(*ino, p);
            }
            Node::Symlink(target) => {
                std::os::unix::fs::symlink(target, &p).map_err(ctx("symlink", &p))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::model::Kind;
    use std::ffi::OsStr;

    fn appends(n: usize) -> Model {
        let mut m = Model::new_empty(0o755);
        let f = m
            .insert_new(ROOT, OsStr::new("f"), Kind::new_file(), 0o600)
            .unwrap();
        m.sync_dir(ROOT);
        for i in 0..n {
            m.record(
                f,
                DataOp::Write {
                    offset: (i * 1000) as u64,
                    data: vec![b'a' + i as u8; 1000],
                },
            )
            .unwrap();
        }
        m
    }

    fn file_len(image: &Image) -> usize {
        image
            .files
            .values()
            .next()
            .map_or(usize::MAX, |(_, c)| c.len())
    }

    #[test]
    fn drop_and_keep_all() {
        let m = appends(10);
        let (img, rep) = compute(&m, CrashMode::DropAllPending);
        assert_eq!(file_len(&img), 0);
        assert_eq!(rep.data_ops_dropped, 10);
        let (img, rep) = compute(&m, CrashMode::KeepAllPending);
        assert_eq!(file_len(&img), 10_000);
        assert_eq!(rep.data_ops_kept, 10);
    }

    #[test]
    fn random_prefix_deterministic_and_varied() {
        let m = appends(10);
        let mut lens = BTreeSet::new();
        for seed in 0..32 {
            let (a, ra) = compute(&m, CrashMode::RandomPrefix { seed });
            let (b, rb) = compute(&m, CrashMode::RandomPrefix { seed });
            assert_eq!(ra, rb);
            assert_eq!(a.files.values().next(), b.files.values().next());
            let (_, content) = a.files.values().next().unwrap();
            // Content is always a prefix of the full content.
            for (i, byte) in content.iter().enumerate() {
                assert_eq!(*byte, b'a' + (i / 1000) as u8);
            }
            lens.insert(content.len());
        }
        assert!(lens.len() > 3, "{lens:?}");
        assert!(
            lens.iter().any(|l| l % 1000 != 0),
            "some write torn: {lens:?}"
        );
    }
}
