#!/usr/bin/env bash
# Edit MODEL with each method (default hyper-parameters, the built-in AdvBench cases) and attack each edit
# beside the vanilla model with `pke attack` on the test split; tables in out/attack-MODEL-METHOD/attack.md.
# Usage: scripts/attack-methods.sh MODEL [METHOD...]   (default methods: pke dinm ft-l ga)
# Sizes are reduced so that one method takes ~40 min on one core; pass more with ATTACK_ARGS.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:?usage: scripts/attack-methods.sh MODEL [METHOD...]}; shift
METHODS=${*:-pke dinm ft-l ga}
PKE=${PKE:-target/release/pke}
ARGS=${ATTACK_ARGS:---split test --n-harmful 10 --n-jailbreak 0 --n-benign 10 --n-probes 3 --n-factual 20 --ppl-tokens 256 --max-new-tokens 40 --jailbreak-per-family 6 --n-prefill 10}
for m in $METHODS; do
  dir=out/attack-$MODEL-$m
  if [ ! -d "$dir/edited" ]; then
    "$PKE" edit -m "$MODEL" --method "$m" --builtin advbench:8 --chat --out "$dir/edited" --delta "$dir/delta.safetensors"
  fi
  # shellcheck disable=SC2086
  "$PKE" attack -m "$dir/edited" --base "$MODEL" $ARGS --out "$dir"
done
