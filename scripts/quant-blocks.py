#!/usr/bin/env python3
"""How an edit sits in the Q4_1 blocks of the tensor it changed (standard library only).

Usage: scripts/quant-blocks.py EDITED_HF_FOLDER DELTA_FILE TENSOR_NAME

Reads the edited float32 weight from the folder's model.safetensors and the edited columns' values
before the edit from the delta file (`NAME::columns`, `NAME::before`), rebuilds the original weight, and
reports, over the 32-value blocks along each row (GGUF's Q4_1 blocks): how many blocks hold an edited
column, how much the edit widens their range, and the relative error a min/max Q4_1 re-quantization
leaves on the unedited values in those blocks and on the edit itself.
"""
import json
import struct
import sys


def header(path):
    try:
        f = open(path, "rb")
        n = struct.unpack("<Q", f.read(8))[0]
        return f, json.loads(f.read(n)), 8 + n
    except (OSError, struct.error, ValueError) as e:
        sys.exit(f"{path}: not a readable safetensors file ({e})")


def read(f, h, base, name, fmt):
    m = h[name]
    a, b = m["data_offsets"]
    f.seek(base + a)
    raw = f.read(b - a)
    return m["shape"], struct.unpack("<%d%s" % ((b - a) // struct.calcsize(fmt), fmt), raw)


def q41(vals):
    lo, hi = min(vals), max(vals)
    d = (hi - lo) / 15 or 1.0
    return [lo + d * max(0, min(15, round((v - lo) / d))) for v in vals]


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    folder, delta, name = sys.argv[1:]
    f, h, base = header(folder + "/model.safetensors")
    if h.get(name, {}).get("dtype") != "F32":
        sys.exit(f"{folder}/model.safetensors: no float32 tensor `{name}`")
    (rows, cols), w = read(f, h, base, name, "f")
    f, h, base = header(delta)
    if name + "::columns" not in h:
        sys.exit(f"{delta}: no column delta for `{name}`")
    _, edited = read(f, h, base, name + "::columns", "q")
    _, before = read(f, h, base, name + "::before", "f")
    k = len(edited)
    orig = list(w)
    for r in range(rows):
        for j, c in enumerate(edited):
            orig[r * cols + c] = before[r * k + j]
    edited = set(edited)
    widen, blocks, touched = [], 0, 0
    err_other = norm_other = err_edit = norm_edit = 0.0
    for r in range(rows):
        for b0 in range(0, cols, 32):
            idx = range(b0, b0 + 32)
            blocks += 1
            if not any(c in edited for c in idx):
                continue
            touched += 1
            old = [orig[r * cols + c] for c in idx]
            new = [w[r * cols + c] for c in idx]
            widen.append((max(new) - min(new)) / max(1e-12, max(old) - min(old)))
            for t, (c, q) in enumerate(zip(idx, q41(new))):
                if c in edited:
                    err_edit += (q - new[t]) ** 2
                    norm_edit += (new[t] - old[t]) ** 2
                else:
                    err_other += (q - new[t]) ** 2
                    norm_other += new[t] ** 2
    widen.sort()
    print(f"{name}: {k} edited columns; {touched} of {blocks} blocks hold one")
    print(
        "range widening of those blocks: median %.2f, 90th percentile %.2f, max %.2f; widened (>1%%): %.2f"
        % (widen[len(widen) // 2], widen[int(0.9 * len(widen))], widen[-1], sum(x > 1.01 for x in widen) / len(widen))
    )
    print("Q4_1 re-quantization: relative error %.4f on their unedited values, %.3f of the edit's norm" % (
        (err_other / norm_other) ** 0.5, (err_edit / max(norm_edit, 1e-30)) ** 0.5))


if __name__ == "__main__":
    main()
