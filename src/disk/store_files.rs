//! The store's own small files: `LOCK` (one writer process) and `MANIFEST` (format
//! version, dimension, model id, creation time; crc-checked).

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Version of the store layout (MANIFEST, snapshots). Changelog in docs/format.md.
pub const STORE_FORMAT_VERSION: u32 = 1;

/// Takes the store's lock (`magray_wal::StoreLock`: an exclusive `flock` on `<store>/LOCK`,
/// released when dropped or when the process dies). The engine shares it with its log.
pub(crate) fn lock_store(dir: &Path) -> Result<std::sync::Arc<magray_wal::StoreLock>> {
    match magray_wal::StoreLock::acquire(dir) {
        Ok(l) => Ok(std::sync::Arc::new(l)),
        Err(magray_wal::Error::Locked { path, holder }) => Err(Error::Locked { path, holder }),
        Err(e) => Err(e.into()),
    }
}

/// The store's identity (`<store>/MANIFEST`, read with [`StoreManifest::read`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreManifest {
    /// Store layout version.
    pub format: u32,
    /// Vector dimension.
    pub dimension: usize,
    /// Id of the model that made the embeddings (`external`: the caller embeds).
    pub model_id: String,
    /// Creation time (µs).
    pub created_us: u64,
    /// This store's history line. A restored store gets a new one, so its new events are
    /// never mixed with the history it was restored from (a backup keeps its source's).
    pub timeline: String,
    /// For a restored store, `<timeline>@<seq>`: the history it branched from.
    pub parent: Option<String>,
}

impl StoreManifest {
    /// A new store's identity, with a fresh timeline.
    pub(crate) fn new(dimension: usize, model_id: &str, created_us: u64) -> StoreManifest {
        StoreManifest {
            format: STORE_FORMAT_VERSION,
            dimension,
            model_id: model_id.to_string(),
            created_us,
            timeline: uuid::Uuid::now_v7().to_string(),
            parent: None,
        }
    }

    fn body(&self) -> String {
        let mut b = format!(
            "magray-memory store\nformat={}\ndimension={}\nmodel={}\ncreated_us={}\ntimeline={}\n",
            self.format, self.dimension, self.model_id, self.created_us, self.timeline
        );
        if let Some(p) = &self.parent {
            b.push_str(&format!("parent={p}\n"));
        }
        b
    }

    /// `<dir>/MANIFEST`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("MANIFEST")
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let body = self.body();
        let text = format!("{body}crc32={:08x}\n", crc32fast::hash(body.as_bytes()));
        magray_wal::fsutil::write_atomic(&Self::path(dir), text.as_bytes())?;
        Ok(())
    }

    /// Reads and validates `<dir>/MANIFEST`; `Ok(None)` if there is none.
    pub fn read(dir: &Path) -> Result<Option<StoreManifest>> {
        let path = Self::path(dir);
        let text = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let bad = |offset: usize, why: &str| Error::corrupted(&path, offset as u64, why);
        let text = std::str::from_utf8(&text).map_err(|e| bad(e.valid_up_to(), "not UTF-8"))?;
        let crc_at = text
            .rfind("crc32=")
            .ok_or_else(|| bad(text.len(), "no crc32 line"))?;
        let (body, crc_line) = text.split_at(crc_at);
        let want = u32::from_str_radix(crc_line.trim_start_matches("crc32=").trim(), 16)
            .map_err(|_| bad(crc_at, "unreadable crc32 value"))?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err(bad(0, "checksum mismatch"));
        }
        let mut m = StoreManifest {
            format: 0,
            dimension: 0,
            model_id: String::new(),
            created_us: 0,
            timeline: String::new(),
            parent: None,
        };
        let mut offset = 0;
        for (i, line) in body.lines().enumerate() {
            let here = offset;
            offset += line.len() + 1;
            if i == 0 {
                if line != "magray-memory store" {
                    return Err(bad(here, "not a magray-memory MANIFEST"));
                }
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(here, "line is not key=value"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| bad(here, "bad number"));
            match k {
                "format" => m.format = num(v)? as u32,
                "dimension" => m.dimension = num(v)? as usize,
                "model" => m.model_id = v.to_string(),
                "created_us" => m.created_us = num(v)?,
                "timeline" => m.timeline = v.to_string(),
                "parent" => m.parent = Some(v.to_string()),
                _ => {} // later versions may add keys
            }
        }
        if m.timeline.is_empty() {
            // Written before timelines existed: the creation time names its one history.
            m.timeline = format!("created-{}", m.created_us);
        }
        if m.format == 0 || m.format > STORE_FORMAT_VERSION {
            return Err(bad(
                0,
                &format!(
                    "store format {} is not supported by this build (it reads up to {STORE_FORMAT_VERSION})",
                    m.format
                ),
            ));
        }
        Ok(Some(m))
    }
}
