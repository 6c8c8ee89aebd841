#!/usr/bin/env python3
"""Merge the rows of several compare.json files measured on the same prompts (same model, cases, split and
set sizes) into one, e.g. an earlier run's vanilla and pke rows with a new run's arms, so that
`pke compare --from MERGED --out DIR` renders one table with paired tests against vanilla and pke.

usage: scripts/merge-compare.py OUT.json A/compare.json[:label,label] B/compare.json[:label,...] ...
Rows are taken in the order given (all rows of a file when no labels follow it). The files must agree on
the model sha256 and on every evaluated prompt of the first row, or the merge stops with an error."""
import json
import sys


def prompts(row):
    # The prefill attack is optional per run (--n-prefill); the other sets must match.
    return [(s["set"], s["prompt"]) for s in row["report"]["samples"] if not s["set"].startswith("prefill_")]


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, specs = argv[0], argv[1:]
    merged, ref = None, None
    for spec in specs:
        path, _, labels = spec.partition(":")
        c = json.load(open(path))
        want = labels.split(",") if labels else [r["label"] for r in c["rows"]]
        rows = [r for r in c["rows"] if r["label"] in want]
        missing = set(want) - {r["label"] for r in rows}
        if missing:
            sys.exit(f"{path}: no row labelled {sorted(missing)}")
        if merged is None:
            merged = {**c, "rows": [], "settings": {**c["settings"], "arms": []}, "seconds": 0}
            ref = prompts(c["rows"][0])
        if c["model_sha256"] != merged["model_sha256"]:
            sys.exit(f"{path}: another model (sha256 {c['model_sha256']})")
        for r in rows:
            if prompts(r) != ref:
                sys.exit(f"{path}: row {r['label']} was evaluated on other prompts")
            merged["rows"].append(r)
            merged["settings"]["arms"] += [a for a in c["settings"]["arms"] if a["label"] == r["label"]]
        merged["seconds"] += c["seconds"]
    json.dump(merged, open(out, "w"), indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
