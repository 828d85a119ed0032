#!/usr/bin/env python3
"""Raw Python onnxruntime inference on the same model, for benches/embedder.rs's ratio.

Prints one line per (texts, batch): `py <kind> <batch> <sentences/s>` (median of runs).
Usage: python embed_bench_py.py MODEL_DIR THREADS RUNS  (texts come on stdin as JSON:
{"short": [...], "medium": [...]}, batches as argv[4] comma-separated).
Needs onnxruntime==1.31.1, tokenizers and numpy (see README "Embedder figures").
"""
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

model_dir, threads, runs, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(b) for b in sys.argv[4].split(",")]
texts = json.load(sys.stdin)
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

for kind in ("short", "medium"):
    pool = texts[kind]
    for b in batches:
        rates = []
        for r in range(runs):
            n = max(b, 128 if kind == "short" else 32)
            n -= n % b
            t = time.perf_counter()
            for i in range(0, n, b):
                embed(pool[i % len(pool): i % len(pool) + b] if i % len(pool) + b <= len(pool) else pool[:b])
            rates.append(n / (time.perf_counter() - t))
        print(f"py {kind} {b} {statistics.median(rates):.1f}", flush=True)
