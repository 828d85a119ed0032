//! The snapshot `MANIFEST`: a 32-byte header (magic `MGSM`, format version, body length,
//! body crc32, header crc32) and an rkyv body listing every file with its length and crc32;
//! the rkyv codecs the snapshot's other rkyv files share; snapshot directory names.

use super::*;

pub(super) const MAGIC: [u8; 4] = *b"MGSM";

pub(super) const HEADER_LEN: usize = 32;

/// Largest manifest body we accept (checked before allocating).
pub(super) const MAX_MANIFEST: u64 = 64 << 20;

/// A layer's graph in a manifest of format 8 or older (one graph per layer; read only: such a
/// snapshot's graphs are not used, the store's one graph is built again from the records).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct LayerEntry {
    pub(crate) layer: Layer,
    /// Slots in the dumped graph (up to format 6; from format 7 empty: the dump lists them).
    pub(crate) indexed: Vec<u32>,
    /// Dump basename, if the layer had a graph.
    pub(crate) dump: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ManifestBody {
    pub(crate) format: u32,
    pub(crate) seq: u64,
    pub(crate) ts_us: u64,
    pub(crate) dim: u32,
    pub(crate) nslots: u32,
    pub(crate) created_us: u64,
    pub(crate) files: Vec<FileEntry>,
    /// Vector chunk files, in slot order (also listed in `files`).
    pub(crate) chunks: Vec<String>,
    /// Basename of the store's HNSW graph dump (`<base>.graph`), if the store had a graph.
    pub(crate) graph: Option<String>,
}

/// A manifest body of format 8 or older: one graph dump per layer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct LegacyManifestBody {
    pub(crate) format: u32,
    pub(crate) seq: u64,
    pub(crate) ts_us: u64,
    pub(crate) dim: u32,
    pub(crate) nslots: u32,
    pub(crate) created_us: u64,
    pub(crate) files: Vec<FileEntry>,
    pub(crate) chunks: Vec<String>,
    pub(crate) layers: Vec<LayerEntry>,
}

impl LegacyManifestBody {
    /// The body as this version reads it: the per-layer graphs are left out (their files stay
    /// listed and checked; open reports that the graph is built again).
    fn upgrade(self) -> ManifestBody {
        ManifestBody {
            format: self.format,
            seq: self.seq,
            ts_us: self.ts_us,
            dim: self.dim,
            nslots: self.nslots,
            created_us: self.created_us,
            files: self.files,
            chunks: self.chunks,
            graph: None,
        }
    }
}

impl ManifestBody {
    /// True for a vector chunk or its block sums file (both also listed in `files`).
    pub(crate) fn is_vector_file(&self, name: &str) -> bool {
        self.chunks
            .iter()
            .any(|c| c == name || sums::sums_name(c) == name)
    }
}

pub(super) fn encode<T>(v: &T) -> Result<Vec<u8>>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            BoxedError,
        >,
    >,
{
    rkyv::to_bytes::<BoxedError>(v)
        .map(|b| b.into_vec())
        // 32-bit relative pointers cap one archive at 2 GiB (e.g. ~2 GiB of record text).
        .map_err(|e| Error::InvalidInput(format!("snapshot table too large to encode: {e}")))
}

pub(super) fn decode<T>(bytes: &[u8], file: &Path) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    decode_aligned(&aligned, file)
}

pub(super) fn decode_aligned<T>(aligned: &AlignedVec<16>, file: &Path) -> Result<T>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, BoxedError>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<BoxedError>>,
{
    rkyv::from_bytes::<T, BoxedError>(aligned)
        .map_err(|e| Error::corrupted(file, 0, format!("structure check failed: {e}")))
}

/// Directory name of the snapshot at `seq`.
pub(crate) fn dir_name(seq: u64) -> String {
    format!("{seq:020}")
}

/// Valid-looking snapshot directories under `root`, newest first.
pub(crate) fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(root, e)),
    };
    for e in rd {
        let e = e.map_err(|e| Error::io(root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 20 {
            if let Ok(seq) = name.parse::<u64>() {
                out.push((seq, e.path()));
            }
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(out)
}

/// Writes (and fsyncs) `dir/MANIFEST` for `body`, in the format `body.format` names.
pub(crate) fn write_manifest(dir: &Path, body: &ManifestBody) -> Result<()> {
    write_manifest_bytes(dir, body.format, &encode(body)?)
}

/// Tests: writes `dir/MANIFEST` as format 8 or older wrote it.
#[cfg(test)]
pub(crate) fn write_legacy_manifest(dir: &Path, body: &LegacyManifestBody) -> Result<()> {
    write_manifest_bytes(dir, body.format, &encode(body)?)
}

fn write_manifest_bytes(dir: &Path, format: u32, body_bytes: &[u8]) -> Result<()> {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&format.to_le_bytes());
    h[8..16].copy_from_slice(&(body_bytes.len() as u64).to_le_bytes());
    h[16..20].copy_from_slice(&crc32fast::hash(body_bytes).to_le_bytes());
    let hcrc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&hcrc.to_le_bytes());
    let mut m = h.to_vec();
    m.extend_from_slice(body_bytes);
    write_file(&dir.join("MANIFEST"), &m).map(|_| ())
}

/// Reads and validates a snapshot's MANIFEST.
pub(crate) fn read_manifest(dir: &Path) -> Result<ManifestBody> {
    let path = dir.join("MANIFEST");
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    if bytes.len() < HEADER_LEN {
        return Err(Error::corrupted(
            &path,
            0,
            "shorter than the manifest header",
        ));
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    if bytes[0..4] != MAGIC {
        return Err(Error::corrupted(
            &path,
            0,
            "bad magic (not a snapshot manifest)",
        ));
    }
    if crc32fast::hash(&bytes[..28]) != u32_at(28) {
        return Err(Error::corrupted(&path, 28, "header checksum mismatch"));
    }
    let version = u32_at(4);
    if !(OLDEST_READ_FORMAT..=SNAPSHOT_FORMAT_VERSION).contains(&version) {
        // An older format is not converted: the log holds every event, so the store is
        // rebuilt by replay (slower once) and the next checkpoint writes the current format.
        return Err(Error::corrupted(
            &path,
            4,
            format!(
                "snapshot format {version}; this build reads formats \
                 {OLDEST_READ_FORMAT}..={SNAPSHOT_FORMAT_VERSION}, so the store is rebuilt \
                 from the log instead"
            ),
        ));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&bytes[8..16]);
    let len = u64::from_le_bytes(l);
    if len > MAX_MANIFEST || HEADER_LEN as u64 + len != bytes.len() as u64 {
        return Err(Error::corrupted(
            &path,
            8,
            format!(
                "body length {len} does not match the file ({} bytes)",
                bytes.len()
            ),
        ));
    }
    let body = &bytes[HEADER_LEN..];
    if crc32fast::hash(body) != u32_at(16) {
        return Err(Error::corrupted(
            &path,
            HEADER_LEN as u64,
            "body checksum mismatch",
        ));
    }
    let m: ManifestBody = if version < ONE_GRAPH_FORMAT {
        decode::<LegacyManifestBody>(body, &path)?.upgrade()
    } else {
        decode(body, &path)?
    };
    if m.format != version {
        return Err(Error::corrupted(
            &path,
            HEADER_LEN as u64,
            format!("the body says format {}, the header {version}", m.format),
        ));
    }
    for f in &m.files {
        if f.name.contains('/') || f.name.starts_with('.') {
            return Err(Error::corrupted(
                &path,
                HEADER_LEN as u64,
                format!("bad file name {:?}", f.name),
            ));
        }
    }
    Ok(m)
}
