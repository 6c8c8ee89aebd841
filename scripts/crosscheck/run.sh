#!/usr/bin/env bash
# Cross-check pke against independent runtimes (issue #4), on this machine's CPUs:
#   1. the HF folders and GGUF files pke writes load in Hugging Face transformers and in llama.cpp, with
#      the same per-token log-probabilities as pke computes (all three default models);
#   2. `pke edit --method dinm` against DINM as EasyEdit runs it in PyTorch (dinm_reference.py), side by
#      side on the same case and the same weights: chosen layer, per-step loss, delta, time per edit.
# Not part of `make test`: it installs PyTorch (+ its CUDA wheels, ~4 GB) and builds llama.cpp
# (llama-cpp-python's sdist; the prebuilt llama.cpp wheels need glibc 2.38, Debian 12 has 2.36)
# from source (~10 min on 2 cores) into .data/crosscheck-venv, once.
#
# Usage: scripts/crosscheck/run.sh [OUT]     (default OUT=out/crosscheck; needs `make setup build`)
# Env:   RUNS=3 (timing repetitions)  SKIP_LOAD=1 / SKIP_DINM=1 (run one half)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${1:-out/crosscheck}
RUNS=${RUNS:-3}
PKE=$ROOT/target/release/pke
VENV=$ROOT/.data/crosscheck-venv
HERE=$ROOT/scripts/crosscheck
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}

[ -x "$PKE" ] || { echo "error: $PKE missing: run \`make build\` first" >&2; exit 2; }

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, transformers, llama_cpp" 2>/dev/null; then
  echo "== installing torch 2.15.0, transformers 5.23.0, llama-cpp-python 0.3.36 (built from source) into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.15.0 transformers==5.23.0 safetensors numpy
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$VENV/bin/pip" install -q llama-cpp-python==0.3.36
fi
PY=$VENV/bin/python

mkdir -p "$OUT"
RES=$OUT/results.jsonl
: > "$RES"
TEXT="The capital of France is Paris. The tallest mountain on Earth is Mount Everest, and water boils at 100 degrees Celsius at sea level."

if [ -z "${SKIP_LOAD:-}" ]; then
  for mf in smollm2:SmolLM2-135M-Instruct.Q4_1 qwen2.5-0.5b:qwen2.5-coder-0.5b-instruct-q4_k_m gemma3-270m:gemma-3-270m-q4_k_m; do
    m=${mf%%:*}
    echo "== $m: edit (ft-l, 3 steps) -> HF folder + GGUF (f32 and source-type edited tensors); load elsewhere"
    rm -rf "$OUT/$m"; mkdir -p "$OUT/$m"
    "$PKE" edit -m "$m" --builtin advbench:1 --method ft-l --set steps=3 --delta "$OUT/$m/delta.safetensors" \
      --out "$OUT/$m/hf" --gguf "$OUT/$m/edited-f32.gguf" >/dev/null 2>"$OUT/$m/edit.log"
    "$PKE" apply -m "$m" --delta "$OUT/$m/delta.safetensors" --gguf "$OUT/$m/edited-source.gguf" --gguf-type source >/dev/null
    # The untouched source GGUF first: llama.cpp's own arithmetic (activations quantized to 8 bits in its
    # quantized matmuls) differs from f32 on dequantized weights by this much before any edit.
    ln -sf "$ROOT/.data/models/${mf#*:}.gguf" "$OUT/$m/original.gguf"
    for t in gguf:original.gguf hf:hf gguf:edited-f32.gguf gguf:edited-source.gguf; do
      kind=${t%%:*}; f=$OUT/$m/${t#*:}
      "$PKE" score -m "$f" --text "$TEXT" --json > "$f.score.json"
      "$PY" "$HERE/load_check.py" "$kind" "$f" "$f.score.json" 2>>"$OUT/$m/load.log" \
        | "$PY" -c "import json,sys; d=json.load(sys.stdin); d['check']='load'; d['alias']='$m'; print(json.dumps(d))" >> "$RES"
    done
  done
fi

if [ -z "${SKIP_DINM:-}" ]; then
  m=gemma3-270m; D=$OUT/dinm; rm -rf "$D"; mkdir -p "$D"
  echo "== $m: DINM side by side (pke vs PyTorch reference), $RUNS runs each"
  "$PKE" cases --builtin advbench:1 > "$D/case.jsonl"
  # The reference needs the same weights as an HF folder: edit once, then revert to the base.
  "$PKE" edit -m "$m" --cases "$D/case.jsonl" --method dinm --delta "$D/pke.safetensors" --out "$D/edited" >/dev/null 2>&1
  "$PKE" revert -m "$D/edited" --delta "$D/pke.safetensors" --out "$D/base" >/dev/null
  rm -rf "$D/edited"
  for i in $(seq "$RUNS"); do
    /usr/bin/time -f "%M" -o "$D/pke$i.rss" \
      "$PKE" edit -m "$m" --cases "$D/case.jsonl" --method dinm --delta "$D/pke$i.safetensors" --json 2>/dev/null > "$D/pke$i.json"
    "$PY" -c "import json,sys; d=json.load(open('$D/pke$i.json')); rss=int(open('$D/pke$i.rss').read().split()[-1])/1024; print(json.dumps({'check':'dinm','impl':'pke','run':$i,'layer':d['chosen_layers'][0],'locate_seconds':d['locate_seconds'],'seconds':d['locate_seconds']+d['seconds'],'peak_rss_mb':rss,'nll_safe':[s['nll_safe'] for s in d['steps']]}))" >> "$RES"
  done
  for variant in eager sliced; do
    flag=""; [ $variant = sliced ] && flag=--sliced-logits
    for i in $(seq "$RUNS"); do
      "$PY" "$HERE/dinm_reference.py" --model "$D/base" --cases "$D/case.jsonl" --out "$D/ref-$variant$i.safetensors" $flag 2>/dev/null \
        | "$PY" -c "import json,sys; d=json.load(sys.stdin); print(json.dumps({'check':'dinm','impl':'torch-$variant','run':$i,'layer':d['layer'],'locate_seconds':d['locate_seconds'],'seconds':d['seconds'],'peak_rss_mb':d['peak_rss_mb'],'nll_safe':[s['nll_safe'] for s in d['steps']]}))" >> "$RES"
    done
  done
  "$PY" "$HERE/compare_delta.py" "$D/pke1.safetensors" "$D/ref-eager1.safetensors" \
    | "$PY" -c "import json,sys; d=json.load(sys.stdin); [print(json.dumps({'check':'delta','tensor':k,**v})) for k,v in d.items()]" >> "$RES"
fi

"$PY" "$HERE/summary.py" "$RES" | tee "$OUT/summary.md"
