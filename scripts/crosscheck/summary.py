#!/usr/bin/env python3
"""Turn crosscheck results.jsonl into the markdown tables of docs/crosscheck.md."""

import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
load = [r for r in rows if r["check"] == "load"]
dinm = [r for r in rows if r["check"] == "dinm"]
delta = [r for r in rows if r["check"] == "delta"]

if load:
    print("| model | file | runtime | same token ids | max abs logprob diff | mean NLL pke | mean NLL runtime | greedy continuation |")
    print("|---|---|---|---|---|---|---|---|")
    for r in load:
        f = r["model"].rsplit("/", 1)[-1]
        rt = "transformers 5.23.0" if r["runtime"] == "hf" else "llama.cpp (llama-cpp-python 0.3.36)"
        cont = r["greedy_continuation"].replace("|", "\\|").replace("\n", " ")
        print(f"| {r['alias']} | {f} | {rt} | {r['same_ids']} | {r['max_abs_logprob_diff']:.1e} | "
              f"{r['mean_nll_pke']:.4f} | {r['mean_nll_runtime']:.4f} | {cont!r} |")
    print()

if dinm:
    print("| implementation | runs | layer | locate s | total s per edit (min-max) | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    impls = list(dict.fromkeys(r["impl"] for r in dinm))
    for impl in impls:
        rs = [r for r in dinm if r["impl"] == impl]
        secs = [r["seconds"] for r in rs]
        loc = statistics.median(r["locate_seconds"] for r in rs)
        rss = max((r.get("peak_rss_mb") or 0) for r in rs)
        layers = sorted({r["layer"] for r in rs})
        print(f"| {impl} | {len(rs)} | {layers} | {loc:.2f} | {min(secs):.2f}-{max(secs):.2f} | {rss:.0f} |")
    print()
    ref = next((r for r in dinm if r["impl"] == "torch-eager"), None)
    mine = next((r for r in dinm if r["impl"] == "pke"), None)
    if ref and mine:
        print("| step | NLL(safe) pke | NLL(safe) PyTorch | abs diff |")
        print("|---|---|---|---|")
        for i, (a, b) in enumerate(zip(mine["nll_safe"], ref["nll_safe"])):
            print(f"| {i} | {a:.6f} | {b:.6f} | {abs(a - b):.1e} |")
        print()

for r in delta:
    print(f"Delta `{r['tensor']}`, pke vs PyTorch: max |diff| {r['max_abs_diff']:.2e} (largest |delta| "
          f"{r['max_abs_delta']:.2e}), relative Frobenius error {r['rel_fro_err']:.2e}, cosine {r['cosine']:.7f}, "
          f"bit-identical: {r['bit_identical']}.")
