#!/usr/bin/env python3
"""Raw Python onnxruntime inference on the same model, for benches/embedder.rs's ratio.

Prints one line per (texts, batch): `py <kind> <batch> <sentences/s>` (median of runs).
Usage: python embed_bench_py.py MODEL_DIR THREADS RUNS  (texts come on stdin as JSON:
{"short": [...], "medium": [...], "mixed": [...]}, batches as argv[4] comma-separated; the
mixed texts are sorted by token length before the clock starts).

Real texts (`benches/realdata/import.sh`): python embed_bench_py.py MODEL_DIR THREADS --real BATCH
ORDER < texts.jsonl, each line a JSON object with a "text" field. ORDER is `sorted` (batches
of texts of similar token length, sorted before the clock starts) or `file` (batches in the file's
order, each padded to its longest text). Prints `texts <n> seconds <s> texts_per_s <r>
peak_rss_mb <m>`.
Needs onnxruntime==1.31.1, tokenizers and numpy (`bash benches/realdata/setup.sh`).
"""
import json, os, resource, statistics, sys, time
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir, threads = sys.argv[1], int(sys.argv[2])
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.enable_truncation(256)
tok.enable_padding(pad_id=0, pad_token="[PAD]")
so = ort.SessionOptions()
so.intra_op_num_threads = threads
sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), so, providers=["CPUExecutionProvider"])

def embed(batch):
    enc = tok.encode_batch(batch)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    types = np.array([e.type_ids for e in enc], dtype=np.int64)
    (h,) = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

def real(batch, order):
    texts = [json.loads(line)["text"] for line in sys.stdin if line.strip()]
    if order == "sorted":
        # Sorted before the clock starts: the reference at its best.
        lengths = [len(e.ids) for e in tok.encode_batch(texts)]
        idx = sorted(range(len(texts)), key=lambda i: lengths[i])
    elif order == "file":
        idx = list(range(len(texts)))
    else:
        sys.exit(f"ORDER must be sorted or file, not {order!r}")
    t = time.perf_counter()
    for s in range(0, len(idx), batch):
        embed([texts[i] for i in idx[s:s + batch]])
    secs = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"texts {len(texts)} seconds {secs:.2f} texts_per_s {len(texts) / secs:.1f} peak_rss_mb {rss:.0f}")

if sys.argv[3] == "--real":
    real(int(sys.argv[4]), sys.argv[5])
    sys.exit(0)
runs, batches = int(sys.argv[3]), [int(b) for b in sys.argv[4].split(",")]
texts = json.load(sys.stdin)
for kind in ("short", "medium", "mixed"):
    if kind not in texts:
        continue
    pool = texts[kind]
    for b in batches:
        rates = []
        for r in range(runs):
            n = max(b, {"short": 128, "medium": 32}.get(kind, 64))
            n -= n % b
            rows = pool[:n]
            if kind == "mixed":
                # The same texts as the Rust row, sorted by token length before the clock
                # starts: raw onnxruntime at its best on mixed lengths.
                lengths = [len(e.ids) for e in tok.encode_batch(rows)]
                rows = [rows[i] for i in sorted(range(n), key=lambda i: lengths[i])]
            t = time.perf_counter()
            for i in range(0, n, b):
                embed(rows[i:i + b])
            rates.append(n / (time.perf_counter() - t))
        print(f"py {kind} {b} {statistics.median(rates):.1f}", flush=True)
