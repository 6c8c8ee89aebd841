#!/usr/bin/env python3
"""llama.cpp's single-stream greedy decode speed on a GGUF file: the anchor `make bench-decode` prints
beside pke's batched decode. The same prompt as `pke bench-runtime` (16 token ids 100 + 7919 i mod 5000),
64 new tokens, the median of REPS runs; prints one JSON object.

usage: llama-decode.py GGUF [THREADS] [REPS]   (needs llama-cpp-python; scripts/bench-decode.sh installs it)
"""
import json
import statistics
import sys
import time


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    path = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    try:
        import llama_cpp
        import numpy as np
    except ImportError:
        print("llama-decode.py: llama-cpp-python is not installed (scripts/bench-decode.sh installs it)", file=sys.stderr)
        return 1
    try:
        llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=threads, n_batch=64, verbose=False)
    except Exception as e:  # llama.cpp raises ValueError for an unreadable file
        print(f"llama-decode.py: cannot load {path}: {e}", file=sys.stderr)
        return 1
    prompt = [100 + (i * 7919) % 5000 for i in range(16)]
    rates = []
    for _ in range(reps):
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        for _ in range(64):
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            tok = int(logits.argmax())
            llm.eval([tok])
        rates.append(64 / (time.perf_counter() - t))
    print(json.dumps({"gguf": path, "threads": threads, "llama_cpp": llama_cpp.__version__, "decode_tok_s": statistics.median(rates)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
