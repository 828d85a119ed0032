#!/usr/bin/env bash
# Set-up of the real-data benches (`cargo run --release --example realdata_search`,
# `bash benches/realdata/import.sh`): a virtual environment with hnswlib, numpy and the
# Python ONNX Runtime reference (onnxruntime, tokenizers), pinned, in $MAGRAY_BENCH_DATA/venv (outside
# the repository; default ~/.cache/magray/realdata). hnswlib 0.8.0 ships as source only: pip
# builds it with the machine's C++ compiler (g++; on Debian: apt-get install -y g++). pip
# checks every download against PyPI's hashes. Idempotent.
set -euo pipefail
DATA="${MAGRAY_BENCH_DATA:-$HOME/.cache/magray/realdata}"
PY="${PYTHON:-python3}"
HNSWLIB="hnswlib==0.8.0"
NUMPY="numpy==2.3.5"
ORT="onnxruntime==1.31.1"
TOKENIZERS="tokenizers==0.23.3"
mkdir -p "$DATA"
VENV="$DATA/venv"
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import hnswlib, numpy, onnxruntime, tokenizers" 2>/dev/null \
    && "$VENV/bin/python" -m pip show hnswlib 2>/dev/null | grep -qx "Version: ${HNSWLIB#hnswlib==}" \
    && "$VENV/bin/python" -m pip show onnxruntime 2>/dev/null | grep -qx "Version: ${ORT#onnxruntime==}"; then
    echo "ok       $HNSWLIB, $NUMPY, $ORT and $TOKENIZERS in $VENV"
    exit 0
fi
command -v g++ >/dev/null || { echo "realdata setup: g++ is needed to build hnswlib (apt-get install -y g++)" >&2; exit 1; }
"$PY" -m venv "$VENV" || { echo "realdata setup: python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2; exit 1; }
"$VENV/bin/python" -m pip install -q "$NUMPY" pybind11 setuptools wheel
"$VENV/bin/python" -m pip install -q --no-build-isolation "$HNSWLIB"
"$VENV/bin/python" -m pip install -q "$ORT" "$TOKENIZERS"
echo "ok       $HNSWLIB, $NUMPY, $ORT and $TOKENIZERS in $VENV"
