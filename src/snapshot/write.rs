//! Writing a snapshot: every file into `snapshots/.tmp-<S>/`, each fsynced, the manifest,
//! the directory fsynced, renamed into place, `snapshots/` fsynced.

use super::*;
use std::os::unix::fs::DirBuilderExt;

/// A graph dump written into a snapshot: its basename, and the manifest entries of the dump
/// and its block sums.
pub(super) type Dump = (String, FileEntry, FileEntry);

/// Writes (and fsyncs) the block sums file of the `len`-byte snapshot file at `path` and
/// returns its manifest entry.
pub(super) fn write_sums_entry(path: &Path, len: u64, sums: &[u32]) -> Result<FileEntry> {
    let (slen, scrc) = sums::write_sums(path, len, sums)?;
    Ok(FileEntry {
        name: sums::sums_name(&file_name(path)),
        len: slen,
        crc: scrc,
    })
}

/// A snapshot being written; graphs are dumped into it under the caller's index lock.
pub(crate) struct Writer {
    pub(super) tmp: PathBuf,
    pub(super) root: PathBuf,
    /// The graph's dump, if the store has a graph.
    pub(super) dump: Option<Dump>,
}

impl Writer {
    pub(crate) fn begin(root: &Path, seq: u64) -> Result<Writer> {
        magray_wal::fsutil::create_dir_durable(root)?;
        let tmp = root.join(format!("{TEMP_PREFIX}{}", dir_name(seq)));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::DirBuilder::new()
            .mode(magray_wal::fsutil::DIR_MODE)
            .create(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(Writer {
            tmp,
            root: root.to_path_buf(),
            dump: None,
        })
    }

    /// Dumps the captured graph (call with the index lock held, so the graph and its slot
    /// list agree).
    pub(crate) fn dump_graph(&mut self, cap: &mut Capture) -> Result<()> {
        let Some(g) = cap.graph.take() else {
            return Ok(());
        };
        let base = GRAPH_BASE.to_string();
        let path = graph_path(&self.tmp, &base);
        let f = magray_wal::fsutil::create_file(&path).map_err(|e| Error::io(&path, e))?;
        // The crc and block sums are taken on the way out (the dump is not read back).
        let mut w = CrcWriter::with_block_sums(std::io::BufWriter::with_capacity(1 << 20, f));
        g.lock()
            .write_to(&mut w)
            .and_then(|_| w.flush())
            .map_err(|e| Error::io(&path, e))?;
        let sums = write_sums_entry(&path, w.len, &w.sums())?;
        let entry = FileEntry {
            name: file_name(&path),
            len: w.len,
            crc: w.crc.finalize(),
        };
        self.dump = Some((base, entry, sums));
        Ok(())
    }

    /// Writes the remaining files and the manifest, syncs, renames into place. `prev` is the
    /// directory of the newest snapshot (holds the chunk files to hard-link) and the entries
    /// already known for them.
    pub(crate) fn finish(
        self,
        mut cap: Capture,
        prev: Option<&Path>,
        known_chunks: &HashMap<String, FileEntry>,
        created_us: u64,
    ) -> Result<Written> {
        let tmp = &self.tmp;
        let mut files = Vec::new();
        let records = write_tables(
            tmp,
            std::mem::take(&mut cap.records),
            cap.nslots,
            &mut files,
        )?;
        let st = zstd::bulk::compress(
            &encode(&Stats {
                stats: std::mem::take(&mut cap.stats),
                promoted: cap.promoted,
                expired: cap.expired,
            })?,
            1,
        )
        .map_err(|e| Error::io(tmp.join("stats.zst"), e))?;
        files.push(write_file(&tmp.join("stats.zst"), &st)?);
        files.push(write_file(&tmp.join(KEYWORDS_FILE), &cap.keywords)?);
        cap.keywords = Vec::new();
        if let Some(model) = &cap.model {
            files.push(write_file(&tmp.join(PROMOTER_FILE), &encode(model)?)?);
        }
        let (mut chunk_entries, mut sums_entries) =
            link_chunks(tmp, &cap.old_chunks, prev, known_chunks)?;
        let mut new_chunk = None;
        if let Some((start, bytes)) = &cap.new_chunk {
            let (chunk, sums) = write_new_chunk(tmp, cap.dim, *start, bytes)?;
            new_chunk = Some(chunk.name.clone());
            chunk_entries.push(chunk);
            sums_entries.push(sums);
        }
        let chunks = chunk_entries.iter().map(|e| e.name.clone()).collect();
        files.extend(chunk_entries.iter().cloned());
        files.extend(sums_entries.iter().cloned());
        let graph = match self.dump {
            Some((base, entry, sums)) => {
                sync_file(&graph_path(tmp, &base))?;
                files.push(entry);
                files.push(sums);
                Some(base)
            }
            None => None,
        };
        let body = ManifestBody {
            format: SNAPSHOT_FORMAT_VERSION,
            seq: cap.seq,
            ts_us: cap.ts_us,
            dim: cap.dim as u32,
            nslots: cap.nslots,
            created_us,
            files,
            chunks,
            graph,
        };
        let dir = install(tmp, &self.root, &body)?;
        chunk_entries.extend(sums_entries);
        Ok(Written {
            dir,
            new_chunk,
            chunks: chunk_entries,
            records,
            nslots: cap.nslots,
        })
    }
}

/// Writes the record table of `rows` into the temporary snapshot directory `tmp`, with its
/// block sums (a lazy open checks each row's blocks on first read), its slot index (a lazy
/// open fills the slots from it, without reading the table), and the key index with its block
/// sums (a lazy open reads only the header: see `disk::keys`); pushes their entries onto
/// `files` and returns the table's.
pub(super) fn write_tables(
    tmp: &Path,
    rows: Vec<Row>,
    nslots: u32,
    files: &mut Vec<FileEntry>,
) -> Result<FileEntry> {
    let rpath = tmp.join(RECORDS_FILE);
    let (len, crc, sums) = magray_wal::fsutil::create_file(&rpath)
        .and_then(|f| records::write(f, &rows))
        .map_err(|e| Error::io(&rpath, e))?;
    sync_file(&rpath)?;
    let records = FileEntry {
        name: RECORDS_FILE.into(),
        len,
        crc,
    };
    files.push(records.clone());
    files.push(write_sums_entry(&rpath, len, &sums)?);
    let ipath = tmp.join(SLOTS_FILE);
    let (ilen, icrc) = slots::write_slots(&ipath, nslots, &rows)?;
    files.push(FileEntry {
        name: SLOTS_FILE.into(),
        len: ilen,
        crc: icrc,
    });
    let keys = index_keys(rows.iter().map(|r| {
        let f = &r.fields;
        (f.slot, f.id, f.layer, f.content_hash, r.body.as_ref())
    }));
    drop(rows);
    let kpath = tmp.join(KEYS_FILE);
    let (len, crc, sums) = keys.write(
        magray_wal::fsutil::create_file(&kpath).map_err(|e| Error::io(&kpath, e))?,
        &kpath,
    )?;
    drop(keys);
    files.push(FileEntry {
        name: KEYS_FILE.into(),
        len,
        crc,
    });
    files.push(write_sums_entry(&kpath, len, &sums)?);
    Ok(records)
}

/// Hard-links `src` (an immutable file of an older snapshot, already durable) to `dst`; on a
/// file system without hard links (EPERM, ENOSYS, EOPNOTSUPP, EXDEV, EMLINK) copies it and
/// fsyncs the copy instead. Either way the new name is durable once `dst`'s directory is
/// synced, which the snapshot writer does before its rename.
fn link_or_copy(src: &Path, dst: &Path) -> Result<()> {
    let e = match std::fs::hard_link(src, dst) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    use std::io::ErrorKind as K;
    // EPERM, ENOSYS / EOPNOTSUPP, EXDEV, EMLINK.
    let no_links = matches!(
        e.kind(),
        K::PermissionDenied | K::Unsupported | K::CrossesDevices | K::TooManyLinks
    );
    if !no_links {
        return Err(Error::io(dst, e));
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        tracing::info!(error = %e, "this file system refuses hard links; snapshots copy unchanged vector chunks instead")
    });
    std::fs::copy(src, dst).map_err(|e| Error::io(dst, e))?;
    let f = std::fs::File::open(dst).map_err(|e| Error::io(dst, e))?;
    magray_wal::fsutil::sync_file(&f, dst).map_err(|e| Error::io(dst, e))
}

/// Hard-links the vector chunks `names` of the previous snapshot `prev` and their block sums
/// into `tmp`; returns the chunks' entries and their sums' entries. A chunk from before block
/// sums gets them written once, from the chunk as read (checked against its entry first).
pub(super) fn link_chunks(
    tmp: &Path,
    names: &[String],
    prev: Option<&Path>,
    known_chunks: &HashMap<String, FileEntry>,
) -> Result<(Vec<FileEntry>, Vec<FileEntry>)> {
    let mut chunk_entries = Vec::new();
    let mut sums_entries = Vec::new();
    for name in names {
        let prev = prev.ok_or_else(|| {
            Error::InvalidInput("vector chunks without a previous snapshot".into())
        })?;
        let dst = tmp.join(name);
        link_or_copy(&prev.join(name), &dst)?;
        let entry = match known_chunks.get(name) {
            Some(e) => e.clone(),
            None => {
                let (len, crc) = crc_file(&dst)?;
                FileEntry {
                    name: name.clone(),
                    len,
                    crc,
                }
            }
        };
        let sums = sums::sums_name(name);
        let sums_entry = match known_chunks.get(&sums) {
            Some(e) => {
                let sdst = tmp.join(&sums);
                link_or_copy(&prev.join(&sums), &sdst)?;
                e.clone()
            }
            None => {
                let (len, crc) = sums::write_sums_of(&dst, entry.len, entry.crc)?;
                FileEntry {
                    name: sums,
                    len,
                    crc,
                }
            }
        };
        chunk_entries.push(entry);
        sums_entries.push(sums_entry);
    }
    Ok((chunk_entries, sums_entries))
}

/// Writes the vectors inserted since the last snapshot (`bytes`, from slot `start`) as a new
/// chunk in `tmp`; returns its entry and its block sums' entry.
pub(super) fn write_new_chunk(
    tmp: &Path,
    dim: usize,
    start: u32,
    bytes: &[u8],
) -> Result<(FileEntry, FileEntry)> {
    let count = (bytes.len() / (dim * 4)) as u32;
    let name = vectors::chunk_name(start, count);
    let path = tmp.join(&name);
    let ((len, crc), (slen, scrc)) = vectors::write_chunk(&path, dim, start, bytes)?;
    let sums = FileEntry {
        name: sums::sums_name(&name),
        len: slen,
        crc: scrc,
    };
    Ok((FileEntry { name, len, crc }, sums))
}

/// Writes the manifest `body` into `tmp`, fsyncs the directory, renames it to its place under
/// `root` and fsyncs `root`: the snapshot exists from that fsync on.
pub(super) fn install(tmp: &Path, root: &Path, body: &ManifestBody) -> Result<PathBuf> {
    write_manifest(tmp, body)?;
    sync_dir(tmp)?;
    let dst = root.join(dir_name(body.seq));
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
    }
    std::fs::rename(tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    sync_dir(root)?;
    Ok(dst)
}

/// A snapshot [`Writer::finish`] put in place.
pub(crate) struct Written {
    pub(crate) dir: PathBuf,
    /// The vector chunk it wrote (the others are hard-linked), if any.
    pub(crate) new_chunk: Option<String>,
    /// Manifest entries of all its vector chunks and their block sums files.
    pub(crate) chunks: Vec<FileEntry>,
    /// Manifest entry of its record table, and the slots it covers.
    pub(crate) records: FileEntry,
    pub(crate) nslots: u32,
}
