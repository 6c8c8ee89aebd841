#!/usr/bin/env python3
"""Load a model pke wrote in an independent runtime and compare its per-token log-probabilities with pke's.

  load_check.py hf   FOLDER  PKE_SCORE_JSON   # Hugging Face transformers (AutoModelForCausalLM, AutoTokenizer)
  load_check.py gguf FILE    PKE_SCORE_JSON   # llama.cpp (through llama-cpp-python, built from source)

PKE_SCORE_JSON is `pke score -m SAME_MODEL --text TEXT --json`; the text is taken from it by detokenizing
in the other runtime, so both sides score the same token ids. Prints one JSON object: whether the
runtime's own tokenizer gives the same ids, max |logprob difference|, both mean NLLs, and a short greedy
continuation; exit 1 if the model does not load or the ids differ.
"""

import json
import math
import sys


def hf(folder, ids):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    text = tok.decode(ids, skip_special_tokens=True)
    own = tok(text)["input_ids"]
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    logprobs = [lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    cont = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    tmpl = getattr(tok, "chat_template", None)
    return own, logprobs, cont, {"chat_template": bool(tmpl), "class": type(model).__name__}


def gguf(path, ids):
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=path, n_ctx=max(512, len(ids) + 32), n_threads=2, logits_all=True, verbose=False)
    text = llm.detokenize(ids).decode("utf-8")
    own = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    lse = scores.max(-1) + np.log(np.exp(scores - scores.max(-1, keepdims=True)).sum(-1))
    logprobs = [scores[i, ids[i + 1]] - lse[i] for i in range(len(ids) - 1)]
    llm.reset()
    out = llm.create_completion(text, max_tokens=12, temperature=0.0)
    return own, logprobs, out["choices"][0]["text"], {"llama_cpp": "llama-cpp-python " + llama_cpp.__version__}


def main():
    kind, model, score = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
    ids, ref = score["token_ids"], score["logprobs"]
    own, lps, cont, info = (hf if kind == "hf" else gguf)(model, ids)
    diffs = [abs(a - b) for a, b in zip(lps, ref)]
    res = {
        "runtime": kind, "model": model, "tokens": len(ids), "same_ids": own == ids,
        "max_abs_logprob_diff": max(diffs), "mean_nll_runtime": -sum(lps) / len(lps),
        "mean_nll_pke": score["mean_nll"], "greedy_continuation": cont, **info,
    }
    print(json.dumps(res))
    return 0 if own == ids else 1


if __name__ == "__main__":
    sys.exit(main())
