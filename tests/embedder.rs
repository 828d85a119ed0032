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
