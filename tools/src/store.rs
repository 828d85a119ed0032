//! Opening the store the way each command needs it.

use anyhow::{anyhow, bail, Context, Result};
use magray_memory::{Config, Embedder, EmbedderConfig, LifecycleConfig, Memory, StoreManifest};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The store directory: `--store`, else the documented default.
pub fn path(flag: &Option<PathBuf>) -> Result<PathBuf> {
    match flag {
        Some(p) => Ok(p.clone()),
        None => Ok(magray_memory::default_store_path()?),
    }
}

/// What a command needs from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Open an existing store; no embedding.
    Existing,
    /// Open or create, with the embedder (text in).
    Text,
    /// Open or create a store of caller-supplied vectors of this dimension.
    Vectors(usize),
}

/// Where the model files are: `$MEMORY_MODEL_DIR`, else `./models`, else this checkout's
/// `models/` (where `tools/setup.sh` puts them).
fn embedder_config() -> Result<EmbedderConfig> {
    let mut c = EmbedderConfig::from_env()?;
    if std::env::var_os("MEMORY_MODEL_DIR").is_none() && !c.model_dir.join("model.onnx").exists() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        if repo.join("model.onnx").exists() {
            c.model_dir = repo;
        }
    }
    Ok(c)
}

fn config(m: Option<&StoreManifest>, long_lived: bool) -> Result<Config> {
    let mut c = Config::from_env()?;
    // A command runs its own lifecycle steps (`promote`, `expire`); no background runs or
    // training in a short-lived process. A server keeps them.
    if !long_lived {
        c.lifecycle = LifecycleConfig {
            interval: None,
            train_every: None,
            ..c.lifecycle
        };
    }
    if let Some(m) = m {
        c.dimension = m.dimension;
        c.model_id = m.model_id.clone();
    }
    Ok(c)
}

/// Opens `dir` for a command.
pub async fn open(dir: &Path, need: Need) -> Result<Memory> {
    open_as(dir, need, false).await
}

/// Opens `dir` for a server (`mcp`, `serve`): the lifecycle runs in the background.
pub async fn open_server(dir: &Path) -> Result<Memory> {
    open_as(dir, Need::Text, true).await
}

async fn open_as(dir: &Path, need: Need, long_lived: bool) -> Result<Memory> {
    let m = StoreManifest::read(dir).with_context(|| format!("reading {}", dir.display()))?;
    if m.is_none() && need == Need::Existing {
        bail!(
            "no store at {}: create one with `magray-mem store`, `ingest`, `import` or `demo`, \
             or point --store / MEMORY_DB_PATH at an existing one",
            dir.display()
        );
    }
    let mut c = config(m.as_ref(), long_lived)?;
    let external = m.as_ref().is_some_and(|m| m.model_id == "external");
    let memory = match need {
        Need::Text if external => bail!(
            "the store at {} holds caller-supplied vectors (model \"external\"): pass --vector, \
             or use a store made with the embedder",
            dir.display()
        ),
        Need::Text => {
            let ec = embedder_config()?;
            let e = Embedder::open(&ec).context(
                "the embedder is needed for text; fetch the model with `bash tools/setup.sh`",
            )?;
            if let Some(m) = &m {
                if m.model_id != e.model_id() {
                    bail!(
                        "the store at {} was embedded with {}, the embedder here is {}",
                        dir.display(),
                        m.model_id,
                        e.model_id()
                    );
                }
            }
            c.dimension = e.dimension();
            Memory::open_with_embedder(dir, c, Arc::new(e)).await
        }
        Need::Vectors(dim) => {
            if m.is_none() {
                c.dimension = dim;
                c.model_id = "external".into();
            }
            if c.dimension != dim {
                bail!(
                    "the vector has {dim} numbers but the store's dimension is {}",
                    c.dimension
                );
            }
            Memory::open(dir, c).await
        }
        Need::Existing => Memory::open(dir, c).await,
    };
    memory.map_err(|e| {
        let what = match &e {
            magray_memory::Error::Locked { holder, .. } => format!(
                "the store at {} is in use by {holder}: stop that process, or use a command \
                 that only reads its files (status, log, export, verify, backup)",
                dir.display()
            ),
            _ => format!("opening the store at {}", dir.display()),
        };
        anyhow::Error::new(e).context(what)
    })
}

/// Parses `0.1,0.2,…` into a vector.
pub fn parse_vector(s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<f32>()
                .map_err(|e| anyhow!("--vector: {x:?} is not a number ({e})"))
        })
        .collect()
}
