//! The embedder against reference vectors made independently (Python onnxruntime + the Python
//! `tokenizers`, `tools/make_embed_fixture.py`), the cache, and its errors.
//! Needs the model files: `bash tools/setup.sh` (the README's test command runs it).

use std::path::PathBuf;

use magray_memory::{Embedder, EmbedderConfig, Error};

fn config() -> EmbedderConfig {
    let mut c = EmbedderConfig::from_env().expect("embedder env");
    if std::env::var_os("MEMORY_MODEL_DIR").is_none() {
        c.model_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    }
    c.threads = 2;
    c
}

fn open(c: &EmbedderConfig) -> Embedder {
    match Embedder::open(c) {
        Ok(e) => e,
        Err(e) => panic!("cannot open the embedder ({e}); run `bash tools/setup.sh` first"),
    }
}

struct Item {
    text: String,
    partner: Option<usize>,
    long: bool,
    vector: Vec<f32>,
}

fn fixture() -> Vec<Item> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embed_reference.json");
    let raw = std::fs::read_to_string(&path).expect("fixture");
    let v: serde_json::Value = serde_json::from_str(&raw).expect("fixture json");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| Item {
            text: i["text"].as_str().expect("text").to_string(),
            partner: i["partner"].as_u64().map(|p| p as usize),
            long: i["long"].as_bool().expect("long"),
            vector: i["vector"]
                .as_array()
                .expect("vector")
                .iter()
                .map(|x| x.as_f64().expect("f64") as f32)
                .collect(),
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn matches_independent_reference_and_finds_paraphrases() {
    let items = fixture();
    assert!(items.len() >= 20);
    assert!(
        items.iter().any(|i| i.long),
        "fixture needs a text above 256 tokens"
    );
    let mut c = config();
    c.cache_size = 0;
    let e = open(&c);
    assert_eq!(e.dimension(), 384);
    let texts: Vec<&str> = items.iter().map(|i| i.text.as_str()).collect();
    // One padded batch: the padding must not change any vector.
    let got = e.embed(&texts).expect("embed");
    for (i, (item, v)) in items.iter().zip(&got).enumerate() {
        let cos = dot(&item.vector, v);
        assert!(
            cos >= 0.999,
            "sentence {i} {:?}: cosine {cos} to the reference",
            item.text
        );
        if let Some(p) = item.partner {
            let best = (0..got.len())
                .filter(|&j| j != i)
                .max_by(|&a, &b| dot(v, &got[a]).total_cmp(&dot(v, &got[b])))
                .expect("neighbours");
            assert_eq!(
                best, p,
                "top-1 neighbour of {:?} is {:?}",
                item.text, items[best].text
            );
        }
    }
    let long = items.iter().filter(|i| i.long).count() as u64;
    assert_eq!(e.stats().truncated, long, "truncations counted");
    assert_eq!(e.stats().provider, "cpu");
}

#[test]
fn repeated_texts_hit_the_cache_with_identical_vectors() {
    let e = open(&config());
    let texts = [
        "alpha beta gamma",
        "the log is the database",
        "alpha beta gamma",
    ];
    let first = e.embed(&texts).expect("embed");
    let s1 = e.stats();
    assert_eq!((s1.cache_hits, s1.cache_misses), (0, 3));
    assert_eq!(
        s1.batches, 1,
        "the duplicate inside one call is inferred once"
    );
    assert_eq!(first[0], first[2]);
    let again = e.embed(&texts).expect("embed");
    let s2 = e.stats();
    assert_eq!((s2.cache_hits, s2.cache_misses, s2.batches), (3, 3, 1));
    assert_eq!(first, again);
    assert!((s2.hit_rate() - 0.5).abs() < 1e-9);

    let mut uncached = config();
    uncached.cache_size = 0;
    let u = open(&uncached);
    for t in ["alpha beta gamma", "the log is the database"] {
        let a = u.embed(&[t]).expect("embed");
        let b = e.embed(&[t]).expect("embed");
        assert_eq!(a, b, "cached and uncached vectors differ for {t:?}");
    }
    assert_eq!(u.stats().cache_hits, 0);
}

#[test]
fn missing_files_name_the_setup_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config();
    c.model_dir = dir.path().to_path_buf();
    c.dylib_path = None;
    let err = Embedder::open(&c).expect_err("no model here");
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("bash tools/setup.sh"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn bad_model_file_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = config();
    std::fs::write(dir.path().join("model.onnx"), b"this is not an onnx model").expect("write");
    std::fs::copy(
        good.model_dir.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("copy tokenizer");
    let mut c = good.clone();
    c.model_dir = dir.path().to_path_buf();
    c.dylib_path = Some(good.model_dir.join("libonnxruntime.so"));
    let err = Embedder::open(&c).expect_err("garbage model");
    assert!(matches!(err, Error::Embedder(_)), "{err:?}");
    assert!(err.to_string().contains("model.onnx"), "{err}");
}

fn store_config(dim: usize) -> magray_memory::Config {
    magray_memory::Config {
        dimension: dim,
        batch_size: 64,
        flush_interval: std::time::Duration::from_millis(5),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stores_are_batched_and_land_exactly_once() {
    use std::sync::Arc;
    let e = Arc::new(open(&config()));
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = Arc::new(
        magray_memory::Memory::open_with_embedder(dir.path(), store_config(384), e.clone())
            .await
            .expect("open"),
    );
    let mut tasks = Vec::new();
    for t in 0..50 {
        let m = memory.clone();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..20 {
                let text = format!(
                    "task {t} note {i}: the agent saw event number {}",
                    t * 20 + i
                );
                let id = m
                    .store(magray_memory::NewRecord::text(text.clone()))
                    .await
                    .expect("store");
                ids.push((id, text));
            }
            ids
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    assert_eq!(all.len(), 1000);
    let distinct: std::collections::HashSet<_> = all.iter().map(|(id, _)| *id).collect();
    assert_eq!(distinct.len(), 1000, "every store is its own record");
    for (id, text) in &all {
        let r = memory.get(*id).await.expect("get");
        assert_eq!(&r.text, text);
    }
    let stats = memory.stats();
    assert_eq!(stats.layers.iter().map(|l| l.records).sum::<u64>(), 1000);
    let es = stats.embedder.expect("embedder stats");
    eprintln!(
        "1000 stores from 50 tasks: {} embed calls, mean batch {:.1}",
        es.calls,
        es.mean_batch()
    );
    assert!(
        es.mean_batch() > 1.0,
        "mean batch {} (calls {})",
        es.mean_batch(),
        es.calls
    );

    // A text query finds its record; asking again is answered from the cache.
    let query = "task 7 note 3: the agent saw event number 143";
    let mut hits_before = Vec::new();
    for _ in 0..2 {
        hits_before.push(memory.stats().embedder.expect("stats").cache_hits);
        let hits = memory
            .search_text(query, &magray_memory::SearchOptions::top_k(1))
            .await
            .expect("search");
        assert_eq!(hits[0].record.text, query);
    }
    let after = memory.stats().embedder.expect("stats").cache_hits;
    assert_eq!(
        after,
        hits_before[1] + 1,
        "the repeated query is a cache hit"
    );
}

#[tokio::test]
async fn wrong_dimension_empty_text_and_other_model_are_refused() {
    use std::sync::Arc;
    let e = Arc::new(open(&config()));
    let dir = tempfile::tempdir().expect("tempdir");
    let err = magray_memory::Memory::open_with_embedder(dir.path(), store_config(32), e.clone())
        .await
        .expect_err("384-d model on a 32-d store");
    assert!(
        err.to_string().contains("384") && err.to_string().contains("MEMORY_DIMENSION"),
        "{err}"
    );

    let memory =
        magray_memory::Memory::open_with_embedder(dir.path(), store_config(384), e.clone())
            .await
            .expect("open");
    let err = memory
        .store(magray_memory::NewRecord::text("  "))
        .await
        .expect_err("empty text");
    assert!(matches!(err, Error::EmptyText), "{err:?}");
    memory
        .store(magray_memory::NewRecord::text("kept"))
        .await
        .expect("store");
    memory.close().await.expect("close");

    // The store now records the model; a store opened for vectors from another model is refused.
    let mut other = store_config(384);
    other.model_id = "some-other-model".into();
    let err = magray_memory::Memory::open(dir.path(), other)
        .await
        .expect_err("other model");
    assert!(matches!(err, Error::StoreMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("all-MiniLM-L6-v2-int8"), "{err}");

    // Without an embedder, text-only records are refused with a clear error.
    let plain = tempfile::tempdir().expect("tempdir");
    let m = magray_memory::Memory::open(plain.path(), store_config(384))
        .await
        .expect("open");
    let err = m
        .search_text("anything", &magray_memory::SearchOptions::top_k(1))
        .await
        .expect_err("no embedder");
    assert!(err.to_string().contains("open_with_embedder"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_content_that_is_already_there_embeds_nothing() {
    use magray_memory::{Layer, NewRecord};
    let e = std::sync::Arc::new(open(&config()));
    let dir = tempfile::tempdir().expect("tempdir");
    let m = magray_memory::Memory::open_with_embedder(dir.path(), store_config(384), e.clone())
        .await
        .expect("open");
    let docs = |texts: &[&str]| -> Vec<NewRecord> {
        texts
            .iter()
            .map(|t| NewRecord::text(*t).layer(Layer::Assets).project("p"))
            .collect()
    };
    let first = m
        .store_batch(docs(&["alpha section", "beta section"]))
        .await
        .expect("store");
    let before = e.stats();
    // The same two again, with one new text between them: only the new one is embedded, and
    // ids come back in order.
    let again = m
        .store_batch(docs(&["alpha section", "gamma section", "beta section"]))
        .await
        .expect("store again");
    let after = e.stats();
    assert_eq!((again[0], again[2]), (first[0], first[1]));
    assert_ne!(again[1], first[0]);
    assert_eq!(
        (after.cache_hits + after.cache_misses) - (before.cache_hits + before.cache_misses),
        1,
        "only the new text reached the embedder"
    );
    // The same text in another layer is other content: embedded and stored.
    let other = m
        .store(
            NewRecord::text("alpha section")
                .layer(Layer::Interact)
                .project("p"),
        )
        .await
        .expect("store");
    assert_ne!(other, first[0]);
    assert_eq!(m.stats().layers.iter().map(|l| l.records).sum::<u64>(), 4);
    m.close().await.expect("close");
}
