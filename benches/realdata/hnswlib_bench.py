#!/usr/bin/env python3
"""hnswlib 0.8.0 on the real-data bench's vectors, for the side-by-side table that
`cargo run --release --example realdata_search` prints (it runs this script itself).

    python hnswlib_bench.py DATA_DIR BUILD_THREADS EF[,EF...]

Reads DATA_DIR/{meta.json, vectors.f32, queries.f32, gt-<case>.i32, mask-<case>.u8}; builds
one index (M 16, ef_construction 200, inner product on unit vectors) with BUILD_THREADS
threads; then, on one thread, one knn_query call per query (k 10) for each ef and each case:
"all" (no filter), "f20" and "f2" (a filter function admitting 20 % / 2 % of the records).
Prints one JSON object per line: {"build_s": ...} then {"case", "ef", "qps", "p50_ms",
"p99_ms", "recall"}.
"""
import json
import sys
import time

import hnswlib
import numpy as np


def main():
    data, threads, efs = sys.argv[1], int(sys.argv[2]), [int(e) for e in sys.argv[3].split(",")]
    meta = json.load(open(f"{data}/meta.json"))
    n, dim, nq = meta["n"], meta["dim"], meta["queries"]
    vectors = np.fromfile(f"{data}/vectors.f32", dtype="<f4").reshape(n, dim)
    queries = np.fromfile(f"{data}/queries.f32", dtype="<f4").reshape(nq, dim)
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, ef_construction=200, M=16, random_seed=100)
    index.set_num_threads(threads)
    t = time.perf_counter()
    index.add_items(vectors, np.arange(n))
    print(json.dumps({"build_s": time.perf_counter() - t}), flush=True)
    index.set_num_threads(1)
    for case in ("all", "f20", "f2"):
        gt = np.fromfile(f"{data}/gt-{case}.i32", dtype="<i4").reshape(nq, 10)
        flt = None
        if case != "all":
            mask = np.fromfile(f"{data}/mask-{case}.u8", dtype="u1").astype(bool)
            flt = lambda i, m=mask: bool(m[i])
        for ef in efs:
            index.set_ef(max(ef, 10))
            lat = []
            found = 0
            for qi in range(nq):
                t = time.perf_counter()
                labels, _ = index.knn_query(queries[qi : qi + 1], k=10, filter=flt)
                lat.append(time.perf_counter() - t)
                found += len(set(labels[0].tolist()) & set(gt[qi].tolist()))
            lat.sort()
            print(
                json.dumps(
                    {
                        "case": case,
                        "ef": ef,
                        "qps": nq / sum(lat),
                        "p50_ms": lat[nq // 2] * 1e3,
                        "p99_ms": lat[int(nq * 0.99)] * 1e3,
                        "recall": found / (nq * 10),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
