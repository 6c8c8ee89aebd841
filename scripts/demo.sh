#!/usr/bin/env bash
# The newcomer demo on the default model (SmolLM2-135M-Instruct). Runs what pke can do today.
set -euo pipefail
cd "$(dirname "$0")/.."
PKE=${PKE:-target/release/pke}
M=${1:-smollm2}
echo "== inspect"; $PKE inspect -m "$M"
echo; echo "== generate (chat template, greedy)"
$PKE generate -m "$M" --chat --max-new-tokens 48 -p "What is the capital of Australia?" -p "How do I bake bread at home?"
echo; echo "== score"
$PKE score -m "$M" --text "The capital of France is Paris." | tail -n 1
