#!/usr/bin/env bash
# `magray-mem import` of real conversation turns beside raw ONNX Runtime on the same texts,
# the same model file and the same threads, in one run. Prints texts/s and peak RSS for each.
#
#   bash tools/setup.sh && bash benches/realdata/setup.sh
#   bash benches/realdata/import.sh            # LoCoMo's development split, about 1 min
#
# The turns (`examples/locomo_turns.rs`): every turn of LoCoMo's development split
# (`LOCOMO_JSON`, default ../shared/bench/locomo/locomo-dev.json; CC BY-NC 4.0, read in place,
# never copied into the repository) as `<speaker> said, "<text>"`, one JSONL record each with its conversation as
# the project and its session; written to a temporary folder. Env: BENCH_THREADS (default 2),
# BENCH_PYTHON (default the realdata venv's python).
set -euo pipefail
cd "$(dirname "$0")/../.."
LOCOMO="${LOCOMO_JSON:-../shared/bench/locomo/locomo-dev.json}"
THREADS="${BENCH_THREADS:-2}"
DATA="${MAGRAY_BENCH_DATA:-$HOME/.cache/magray/realdata}"
PY="${BENCH_PYTHON:-$DATA/venv/bin/python}"
[[ -f "$LOCOMO" ]] || { echo "no LoCoMo data at $LOCOMO (set LOCOMO_JSON)" >&2; exit 1; }
"$PY" -c "import onnxruntime, tokenizers, numpy" 2>/dev/null \
    || { echo "no python with onnxruntime at $PY: run \`bash benches/realdata/setup.sh\`" >&2; exit 1; }
[[ -f models/model.onnx ]] || { echo "no model: run \`bash tools/setup.sh\`" >&2; exit 1; }
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo build --release -q -p magray-tools
cargo build --release -q --example locomo_turns
target/release/examples/locomo_turns "$LOCOMO" > "$WORK/turns.jsonl"
N=$(wc -l < "$WORK/turns.jsonl")
echo "$N turns of $LOCOMO; $THREADS threads; model models/model.onnx"
row() { printf "| %-58s | %9s | %9s |\n" "$1" "$2" "$3"; }
row "" "texts/s" "peak RSS"
row "---" "---:" "---:"
py() {
    local out
    out=$("$PY" tools/embed_bench_py.py models "$THREADS" --real "$1" "$2" < "$WORK/turns.jsonl")
    row "raw ONNX Runtime (Python), batches of $1, $2 order" \
        "$(awk '{print $6}' <<<"$out")" "$(awk '{print $8}' <<<"$out") MB"
    # The reference is the fastest sorted run.
    if [[ "$2" == sorted ]]; then
        REF=$(awk -v a="${REF:-0}" -v b="$(awk '{print $6}' <<<"$out")" 'BEGIN { print (b > a ? b : a) }')
    fi
}
py 8 sorted
py 32 sorted
py 64 file
MEMORY_EMBED_THREADS="$THREADS" /usr/bin/time -f "%e %M" -o "$WORK/time" \
    target/release/magray-mem --store "$WORK/store" import "$WORK/turns.jsonl" > /dev/null
read -r SECS KB < "$WORK/time"
RATE=$(awk -v n="$N" -v s="$SECS" 'BEGIN { printf "%.1f", n / s }')
row "magray-mem import (embed + durable append + index)" "$RATE" "$((KB / 1024)) MB"
awk -v a="$RATE" -v b="$REF" 'BEGIN { printf "import / the fastest sorted raw ONNX Runtime: %.2fx\n", a / b }'
