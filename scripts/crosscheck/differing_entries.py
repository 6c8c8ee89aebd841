#!/usr/bin/env python3
"""Where do pke's and PyTorch's DINM deltas differ? Counts the entries that differ by more than 1e-5 and
compares their step-0 gradient with the median entry's (run after `make crosscheck`, from the repo root)."""

import json
import sys

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, "scripts/crosscheck")
from dinm_reference import SUFFIX, nll_shifted  # noqa: E402

torch.set_num_threads(2)
D = sys.argv[1] if len(sys.argv) > 1 else "out/crosscheck/dinm"
c = json.loads(open(f"{D}/case.jsonl").readline())
m = AutoModelForCausalLM.from_pretrained(f"{D}/base", dtype=torch.float32, attn_implementation="eager")
tok = AutoTokenizer.from_pretrained(f"{D}/base")
target = " " + c["safe_response"]
ft = dict(tok([c["prompt"] + " " + SUFFIX + " " + target], return_tensors="pt"))
labels = tok(target, return_tensors="pt")["input_ids"]
name = "model.layers.15.mlp.down_proj.weight"
for p in m.parameters():
    p.requires_grad = False
w = m.get_parameter(name)
w.requires_grad = True
nll_shifted(m(**ft).logits, labels).backward()
g = w.grad.abs()
a = safe_open(f"{D}/pke1.safetensors", "pt").get_tensor(name + "::delta")
b = safe_open(f"{D}/ref-eager1.safetensors", "pt").get_tensor(name + "::delta")
big = (a - b).abs() > 1e-5
print(json.dumps({
    "differing_entries": int(big.sum()), "entries": big.numel(),
    "median_abs_grad_all": g.median().item(), "median_abs_grad_differing": g[big].median().item(),
    "ratio": g.median().item() / g[big].median().item(),
}))
