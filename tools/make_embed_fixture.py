#!/usr/bin/env python3
"""Reference vectors for tests/embedder.rs, made independently of the Rust code:
Python onnxruntime + the Python `tokenizers` package on the same model files.

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install onnxruntime==1.31.1 tokenizers numpy
    bash tools/setup.sh && /tmp/pyref/bin/python tools/make_embed_fixture.py

Writes tests/fixtures/embed_reference.json: each sentence, its paraphrase partner's index
(or null) and its vector (mean-pooled over the attention mask, L2-normalised, max 256 tokens).
"""
import json, os, sys
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
models = os.environ.get("MEMORY_MODEL_DIR", os.path.join(root, "models"))

LONG = " ".join(["The write-ahead log is fsynced before a record becomes visible to readers,"
                 " and recovery replays only the events after the newest snapshot."] * 12)
# (sentence, paraphrase partner index or None)
PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the rug."),
    ("How do I reset my password?", "What are the steps to change my login password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She is learning to play the violin.", "She takes violin lessons."),
    ("The database crashed after the disk filled up.", "A full disk made the database fail."),
    ("Der Hund läuft im Park.", "Ein Hund rennt durch den Park."),
    ("我喜欢喝绿茶。", "我爱喝绿茶。"),
    ("Rust prevents data races at compile time.", "The Rust compiler rules out data races."),
    ("Paris is the capital of France.", "France's capital city is Paris."),
    ("It will rain tomorrow in London.", "Tomorrow London expects rain."),
]
SINGLES = [
    "Quantum entanglement links the states of two particles.",
    "🍕 pizza night with friends 🎉",
    "Photosynthesis converts light into chemical energy.",
    LONG,
]

sentences, partner = [], []
for a, b in PAIRS:
    i = len(sentences)
    sentences += [a, b]
    partner += [i + 1, i]
for s in SINGLES:
    sentences.append(s)
    partner.append(None)

tok = Tokenizer.from_file(os.path.join(models, "tokenizer.json"))
tok.enable_truncation(256)
tok.enable_padding(pad_id=0, pad_token="[PAD]")
sess = ort.InferenceSession(os.path.join(models, "model.onnx"), providers=["CPUExecutionProvider"])
vectors = []
for s in sentences:  # one at a time: no padding effects in the reference
    e = tok.encode(s)
    ids = np.array([e.ids], dtype=np.int64)
    mask = np.array([e.attention_mask], dtype=np.int64)
    types = np.array([e.type_ids], dtype=np.int64)
    (h,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    v = v[0] / np.linalg.norm(v[0])
    vectors.append([round(float(x), 7) for x in v])

out = {
    "model": "all-MiniLM-L6-v2-int8",
    "made_by": "tools/make_embed_fixture.py (Python onnxruntime %s, tokenizers)" % ort.__version__,
    "max_tokens": 256,
    "items": [{"text": s, "partner": p, "long": len(tok.encode(s).ids) >= 256, "vector": v}
              for s, p, v in zip(sentences, partner, vectors)],
}
path = os.path.join(root, "tests", "fixtures", "embed_reference.json")
with open(path, "w", encoding="utf-8") as f:
    json.dump(out, f, ensure_ascii=False)
print("wrote", path, len(sentences), "sentences")
