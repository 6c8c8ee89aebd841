# Newcomer entry points: `make demo` (set up + run on the default model) and `make test`.
CARGO ?= cargo
PKE := target/release/pke

.PHONY: setup build demo test bench bench-decode results crosscheck fmt clippy

setup:
	scripts/setup.sh all

build:
	$(CARGO) build --release -p pke-cli

# `pke demo` refuses to overwrite a previous run's folder; the demo's own folder is replaced.
demo: setup build
	rm -rf out/demo
	$(PKE) demo --out out/demo

# One compute thread per test: the harness runs a test per core, and two tests of two threads each on two
# cores took 105 s where one thread each took 82 s (compare_runs_each_arm + pke_edit_invariants, 2026-12-02,
# docs/benchmarks.md). Set RAYON_NUM_THREADS to override.
test: setup
	RAYON_NUM_THREADS=$${RAYON_NUM_THREADS:-1} $(CARGO) test --workspace

bench: setup build
	RAYON_NUM_THREADS=2 $(PKE) bench-runtime -m smollm2 -m qwen2.5-0.5b -m gemma3-270m

# pke's decode (single stream, batch 16) beside llama.cpp's single stream on the same GGUFs, one run;
# installs llama-cpp-python into .data/llama-venv the first time (docs/benchmarks.md).
bench-decode: setup build
	scripts/bench-decode.sh

# Rebuild the generated tables of docs/results.md (test split, both safety models, every method, attacks,
# the pke default over three case sets); hours on 2 cores (the wall time is in the generated block).
# RESULTS_ATTACKS=0 RESULTS_REPEATS=0 for the compare tables alone.
results: setup build
	scripts/results.sh

# Independent runtimes (transformers, llama.cpp, an EasyEdit-faithful DINM in PyTorch); installs ~4 GB
# of Python packages once into .data/crosscheck-venv. Not part of `make test`. docs/crosscheck.md.
crosscheck: setup build
	scripts/crosscheck/run.sh

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets
