#!/usr/bin/env bash
# Batched decode against llama.cpp, side by side in one run (the evidence issue's speed target): pke's
# `bench-runtime` (single stream and a batch of 16, float32 and int8 kernels) and llama.cpp's single
# stream (llama-cpp-python 0.3.36 built from source for this CPU) on the same GGUF files, same prompt,
# 64 new tokens, the same thread count. Prints one markdown table.
#
#   scripts/bench-decode.sh [MODEL ...]        (default: smollm2 qwen2.5-0.5b gemma3-270m)
#   THREADS=2 REPS=3 BATCH=16 scripts/bench-decode.sh
#
# The first run installs llama-cpp-python into .data/llama-venv (a C++ build, ~10 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-2}
REPS=${REPS:-3}
BATCH=${BATCH:-16}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(smollm2 qwen2.5-0.5b gemma3-270m)
VENV=.data/llama-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "== installing llama-cpp-python 0.3.36 (built from source) into $VENV" >&2
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VENV/bin/pip" install -q llama-cpp-python==0.3.36
fi
PKE=${PKE:-target/release/pke}
[ -x "$PKE" ] || cargo build --release -p pke-cli
args=()
for m in "${MODELS[@]}"; do args+=(-m "$m"); done
pke_json=$(RAYON_NUM_THREADS=$THREADS "$PKE" bench-runtime "${args[@]}" --reps "$REPS" --batch "$BATCH" --json)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; threads $THREADS; $(date -u +%F); commit $(git rev-parse --short HEAD)"
echo
echo "| model | llama.cpp single stream tok/s | pke single stream tok/s (f32 / int8) | pke batch $BATCH tok/s (f32 / int8) | batch $BATCH int8 / llama.cpp |"
echo "|---|---|---|---|---|"
for m in "${MODELS[@]}"; do
  gguf=$("$PKE" inspect -m "$m" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["source"])')
  llama=$("$VENV/bin/python" scripts/llama-decode.py "$gguf" "$THREADS" "$REPS" 2> >(grep -v "^llama_kv_cache" >&2))
  python3 - "$m" "$BATCH" "$pke_json" "$llama" <<'EOF'
import json, sys
m, batch, rows, llama = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
r = next(x for x in rows if x["model"] == m)
l = llama["decode_tok_s"]
print(f"| {m} | {l:.1f} | {r['decode_tok_s']:.1f} / {r['decode_quantized_tok_s']:.1f} | "
      f"{r['decode_batch_tok_s']:.1f} / {r['decode_batch_quantized_tok_s']:.1f} | {r['decode_batch_quantized_tok_s'] / l:.2f}x |")
EOF
done
