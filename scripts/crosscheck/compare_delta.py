#!/usr/bin/env python3
"""Compare two delta files tensor by tensor (pke's `<name>::delta`, or a reference's): max |a-b|, relative
Frobenius error, cosine. Prints one JSON object; exit 1 if the tensors differ in name or shape."""

import json
import sys

import torch
from safetensors import safe_open


def deltas(path):
    with safe_open(path, "pt") as f:
        return {k[: -len("::delta")]: f.get_tensor(k).double() for k in f.keys() if k.endswith("::delta")}


def main():
    a, b = deltas(sys.argv[1]), deltas(sys.argv[2])
    if a.keys() != b.keys():
        print(json.dumps({"error": "different tensors", "a": sorted(a), "b": sorted(b)}))
        return 1
    out = {}
    for k in a:
        x, y = a[k], b[k]
        if x.shape != y.shape:
            print(json.dumps({"error": f"{k}: shapes {list(x.shape)} vs {list(y.shape)}"}))
            return 1
        d = x - y
        out[k] = {
            "max_abs_diff": d.abs().max().item(),
            "max_abs_delta": y.abs().max().item(),
            "rel_fro_err": (d.norm() / y.norm()).item(),
            "cosine": torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0).item(),
            "bit_identical": bool(torch.equal(x.float(), y.float())),
        }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
