#!/usr/bin/env python3
"""DINM as EasyEdit runs it, in PyTorch + transformers: the side-by-side reference for `pke edit --method dinm`.

Written from ../shared/docs/method.md sections 1.2-1.8 (EasyEdit's SafetyEditor._locate_toxic_layer and
dinm_main.execute_dinm), not copied from EasyEdit: same strings (SUFFIX after the prompt and the locality
prompt, a space added before the target, two spaces in between), same locate rule (both replies alone,
left padding, attention mask on, distance over whole padded matrices, first maximum, index - 1), same loss
(0.1 x NLL of the safe reply with labels tokenized alone incl. BOS, read from logits[:-1][-T:]; plus the
inert KL over the last A unshifted rows of the locality input, computed under no_grad), Adam (wd 0),
stop when loss < 1e-4, no norm clamp, float32, eager.

EasyEdit itself refuses models that are not llama/mistral/gpt (NotImplementedError), and pads with EOS for
those; for other models this uses the tokenizer's own pad token, as pke does.

Timing follows SafetyEditor.edit: the clock starts before locate and stops after the delta is computed.
Output: the delta (safetensors, one tensor `<name>::delta`) and a JSON line with layer, losses and times.
"""

import argparse
import json
import resource
import sys
import time

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

SUFFIX = "If the user's request is reasonable, give the correct answer. Please give the right response:"


def locate(model, tok, safe, unsafe):
    tok.padding_side = "left"
    enc = tok([safe, unsafe], return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    best, best_l = float("-inf"), None
    dists = []
    for l in range(1, len(hs)):
        d = torch.dist(hs[l][0], hs[l][1], p=2).item()
        dists.append(d)
        if d > best:
            best, best_l = d, l
    return best_l - 1, dists


def nll_shifted(logits, labels):
    """EasyEdit's masked_log_probs(shift=True): logits[:, :-1][:, -T:] against the T labels."""
    t = labels.size(1)
    pred = logits[:, :-1][:, -t:].float()
    mask = labels != -100
    lp = pred.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(lp * mask).sum() / mask.sum()


def kl_loc(pre, post, mask):
    """KL(P_pre || P_post) per token, averaged over the mask (EasyEdit's kl_loc_loss for 3-D logits)."""
    v = pre.size(-1)
    pre_, post_ = pre.reshape(-1, v).float(), post.reshape(-1, v).float()
    m = mask.reshape(-1).float()
    kl = (pre_.softmax(-1) * (pre_.log_softmax(-1) - post_.log_softmax(-1))).sum(-1)
    return (kl * m).sum() / m.sum()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="HF folder (e.g. written by `pke revert --out`)")
    ap.add_argument("--cases", required=True, help="JSONL as `pke cases` prints; the first case is edited")
    ap.add_argument("--out", required=True, help="delta safetensors to write")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--kl-factor", type=float, default=0.1)
    ap.add_argument("--layer", type=int, default=None, help="skip locate, edit this block")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--attn", default="eager", help="transformers attn_implementation: eager or sdpa")
    ap.add_argument("--sliced-logits", action="store_true",
                    help="compute logits only at the rows a loss reads (logits_to_keep), the issue's second anchor")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    c = json.loads(open(a.cases).readline())
    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation=a.attn)
    model.eval()
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token_id is None:
        tok.pad_token_id = tok.eos_token_id
    load_s = time.perf_counter() - t_load

    start = time.perf_counter()
    # SafetyEditor.edit: locate on the request without the suffix (raw replies).
    if a.layer is None:
        layer, dists = locate(model, tok, c["safe_response"], c["unsafe_response"])
    else:
        layer, dists = a.layer, []
    locate_s = time.perf_counter() - start

    # execute_dinm on the request with the system-prompt suffix.
    prompt_s = c["prompt"] + " " + SUFFIX
    loc_s = c["locality_prompt"] + " " + SUFFIX
    loc_ans = c["locality_answer"]
    target = " " + c["safe_response"]
    name = f"model.layers.{layer}.mlp.down_proj.weight"
    weights = {n: p for n, p in model.named_parameters() if name in n}
    w0 = {k: v.detach().clone() for k, v in weights.items()}
    opt = torch.optim.Adam(list(weights.values()), lr=a.lr, weight_decay=0)
    for n, p in model.named_parameters():
        p.requires_grad = n in weights

    with torch.no_grad():
        loc_full = dict(tok([loc_s + " " + loc_ans], return_tensors="pt", padding=True, truncation=True))
        loc_only = dict(tok([loc_ans], return_tensors="pt", padding=True, truncation=True))
    n_a = loc_only["attention_mask"].size(1)
    extra = {"logits_to_keep": n_a} if a.sliced_logits else {}
    base = model(**loc_full, **extra).logits[:, -n_a:]
    ft = dict(tok([prompt_s + " " + target], return_tensors="pt", padding=True))
    labels = tok(target, return_tensors="pt", padding=True)["input_ids"]
    labels = labels.masked_fill(labels == tok.pad_token_id, -100)
    t = labels.size(1)
    extra_e = {"logits_to_keep": t + 1} if a.sliced_logits else {}

    steps = []
    for it in range(a.steps):
        ts = time.perf_counter()
        opt.zero_grad()
        logits = model(**ft, **extra_e).logits
        l_edit = nll_shifted(logits, labels)
        with torch.no_grad():
            post = model(**loc_full, **extra).logits
        if post.size(1) != n_a:
            post = post[:, -n_a:]
        l_loc = kl_loc(base.detach(), post, loc_only["attention_mask"])
        loss = a.kl_factor * l_edit + l_loc
        rec = {"step": it, "loss": loss.item(), "nll_safe": l_edit.item(), "kl": l_loc.item()}
        if loss.item() >= 1e-4:
            loss.backward()
            opt.step()
        else:
            steps.append(rec | {"seconds": time.perf_counter() - ts})
            break
        steps.append(rec | {"seconds": time.perf_counter() - ts})
    delta = {k: (weights[k] - w0[k]).detach().contiguous() for k in weights}
    total_s = time.perf_counter() - start

    save_file({f"{k}::delta": v for k, v in delta.items()}, a.out)
    print(json.dumps({
        "layer": layer, "distances": dists, "edited_tensors": list(delta), "ids_len": ft["input_ids"].size(1),
        "labels_len": t, "loc_len": loc_full["input_ids"].size(1), "loc_answer_rows": n_a,
        "load_seconds": load_s, "locate_seconds": locate_s, "seconds": total_s, "steps": steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "sliced_logits": a.sliced_logits, "attn": a.attn,
    }))


if __name__ == "__main__":
    sys.exit(main())
