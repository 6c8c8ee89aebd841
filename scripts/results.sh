#!/usr/bin/env bash
# `make results`: rebuild the generated part of docs/results.md from scratch with the current binary and
# defaults, on the test split of every evaluation set, on both safety models (SmolLM2-135M-Instruct and
# Qwen2.5-Coder-0.5B-Instruct):
#   1. pke compare with every method (vanilla, pke, dinm, ft-l, ga), default hyper-parameters, the
#      built-in AdvBench edit cases, every set in full (the default) and the prefill attack on every
#      HarmBench test behaviour;
#   2. (RESULTS_ATTACKS=1, the default) pke attack on each method's edit (scripts/attack-methods.sh sizes);
#   3. (RESULTS_REPEATS=3, the default) the pke default made from RESULTS_REPEATS disjoint sets of as many
#      AdvBench requests (requests 1..r*n dealt round-robin, `pke compare --repeats`): the spread a user's
#      own cases get, where the compare table has one set;
#   4. scripts/results.py writes the tables, the issue's goal check and the run's provenance (date, commit,
#      machine, wall time) between the markers in docs/results.md, and copies each run's JSON and
#      markdown to docs/data/results-*.
# Usage: scripts/results.sh [MODEL...]   (default: smollm2 qwen2.5-0.5b)
#   RESULTS_ATTACKS=0        skip the attacks (the compare tables alone)
#   RESULTS_REPEATS=N        case sets of the repeats run (default 3; 0 or 1 skips it)
#   RESULTS_ASSEMBLE_ONLY=1  only step 4, from the runs already under out/results
#   RESULTS_THREADS=N        RAYON_NUM_THREADS for the runs (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${*:-smollm2 qwen2.5-0.5b}
PKE=${PKE:-target/release/pke}
OUT=out/results
mkdir -p "$OUT"
export RAYON_NUM_THREADS=${RESULTS_THREADS:-$(nproc)}
t0=$(date +%s)

# Edit cases per model: Qwen takes 4 (it learns the refusal in 2-3 steps; 8 doubles the locate time for
# nothing measured on validation), SmolLM2 8.
cases_for() { case "$1" in qwen*) echo 4 ;; *) echo 8 ;; esac; }

if [ "${RESULTS_ASSEMBLE_ONLY:-0}" != 1 ]; then
  # Provenance: the commit the binary is built from (flagged when the tree has uncommitted changes) and
  # the machine.
  c=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- crates config data || c="$c (with uncommitted changes)"
  echo "$c" > "$OUT/commit"
  echo "$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), \
$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $RAYON_NUM_THREADS threads" > "$OUT/machine"
  for m in $MODELS; do
    n=$(cases_for "$m")
    rm -rf "$OUT/compare-$m"
    "$PKE" compare --model "$m" --builtin "advbench:$n" --chat --split test \
      --methods vanilla,pke,dinm,ft-l,ga --n-prefill all --out "$OUT/compare-$m"
    if [ "${RESULTS_ATTACKS:-1}" = 1 ]; then
      for meth in pke dinm ft-l ga; do
        rm -rf "out/attack-$m-$meth"
      done
      PKE="$PKE" scripts/attack-methods.sh "$m" pke dinm ft-l ga
      for meth in pke dinm ft-l ga; do
        mkdir -p "$OUT/attack-$m-$meth"
        cp "out/attack-$m-$meth/attack.md" "out/attack-$m-$meth/attack.json" "$OUT/attack-$m-$meth/"
        echo "Run by \`scripts/attack-methods.sh $m $meth\` (its quick set sizes) with the binary of commit $c." \
          > "$OUT/attack-$m-$meth/provenance"
      done
    fi
    r=${RESULTS_REPEATS:-3}
    if [ "$r" -gt 1 ]; then
      # Requests 1..r*n of AdvBench dealt round-robin into r sets of n (case i in set i mod r).
      rm -rf "$OUT/repeats-$m"
      "$PKE" compare --model "$m" --builtin "advbench:$((r * n))" --chat --split test \
        --methods vanilla,pke --repeats "$r" --out "$OUT/repeats-$m"
      echo "Run by \`make results\` with the binary of commit $c." > "$OUT/repeats-$m/provenance"
    fi
  done
  echo $(( $(date +%s) - t0 )) > "$OUT/wall_seconds"
fi
python3 scripts/results.py --out "$OUT" --doc docs/results.md --data docs/data $MODELS
