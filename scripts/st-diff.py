#!/usr/bin/env python3
"""Largest absolute difference between the same-named float32 tensors of two safetensors files (standard
library only): tells whether two deltas hold the same edit when their metadata differ."""
import array, json, struct, sys

def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    out = {}
    for k, v in h.items():
        s, e = v["data_offsets"]
        if v["dtype"] == "F32":
            out[k] = array.array("f", b[8 + n + s:8 + n + e])
    return out

a, b = load(sys.argv[1]), load(sys.argv[2])
print("same names:", sorted(a) == sorted(b))
for k in sorted(set(a) & set(b)):
    print(k, len(a[k]), max((abs(x - y) for x, y in zip(a[k], b[k])), default=0.0) if len(a[k]) == len(b[k]) else "length differs")
