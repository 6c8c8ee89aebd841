//! Match the reference numbers computed with Hugging Face transformers (../shared/fixtures). Tolerances
//! are the ones the fixtures' README derives from measured float32 noise; each is stated at its assert.

use candle_core::Tensor;
use pke::generate::{generate, GenOpts};
use pke::io::chat::{render, Message};
use pke::io::checkpoint::Checkpoint;
use pke::model::Input;
use pke::trace::{Capture, Site};
use sha2::Digest;

use crate::common::*;

fn norm_last(t: &Tensor) -> f64 {
    // t: (1, s, n) -> L2 norm at the last position, accumulated in f64.
    let s = t.dim(1).unwrap();
    let v = t.narrow(1, s - 1, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt()
}

fn check_dequant(ck: &Checkpoint, fx: &serde_json::Value) {
    for t in fx["dequant_check"]["tensors"].as_array().unwrap() {
        let name = t["hf_param"].as_str().unwrap();
        let w = ck.model.get(name).unwrap();
        // The fixture hashes transformers' value; Gemma norms are stored as w - 1, as transformers does.
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut h = sha2::Sha256::new();
        for x in &v {
            h.update(x.to_le_bytes());
        }
        let got = format!("{:x}", h.finalize());
        let first5: Vec<f32> = w.flatten_all().unwrap().to_vec1::<f32>().unwrap()[..5].to_vec();
        assert_eq!(
            got,
            t["sha256_of_hf_f32_le_bytes"].as_str().unwrap(),
            "{name}: dequantized bytes differ (first5 {first5:?} vs {})",
            t["first5_row0"]
        );
    }
}

fn check_prompt(ck: &Checkpoint, p: &serde_json::Value) {
    let id = p["id"].as_str().unwrap();
    let text = p["text"].as_str().unwrap();
    if p["kind"] == "chat" {
        let tmpl = ck.tok.chat_template.as_deref().expect("chat template in GGUF");
        let bos = ck.tok.bos_id.and_then(|b| ck.tok.id_to_token(b)).unwrap_or_default();
        let eos = ck.tok.eos_id.and_then(|b| ck.tok.id_to_token(b)).unwrap_or_default();
        let rendered = render(tmpl, &[Message::user(p["user_message"].as_str().unwrap())], true, &bos, &eos).unwrap();
        assert_eq!(rendered, text, "case {id}: chat template output differs");
    }
    let ids = ck.tok.encode(text, true).unwrap();
    assert_eq!(ids, u32s(&p["input_ids"]), "case {id}: token ids differ");

    let n = ck.model.spec.n_layers;
    let mut cap = Capture::new((0..n).map(Site::MlpAct).chain((0..n).map(Site::ResidPost)).chain([Site::Embed, Site::FinalNorm]));
    let h = ck.model.forward_with(&Input::single(&ids), &mut cap, None).unwrap();
    let logits = ck.model.logits(&h.squeeze(0).unwrap()).unwrap(); // (s, V)
    let s = ids.len();
    let last = logits.get(s - 1).unwrap().to_vec1::<f32>().unwrap();

    // Last-position logits: abs < 1e-3; top-10 ids equal up to swaps of near-ties (< 1e-3).
    let want_ids = u32s(&p["last_logits_top10"]["ids"]);
    let want_vals = f64s(&p["last_logits_top10"]["values"]);
    for (k, (&wid, &wv)) in want_ids.iter().zip(&want_vals).enumerate() {
        let got = last[wid as usize] as f64;
        assert!((got - wv).abs() < 1e-3, "case {id}: logit of top-{k} id {wid}: {got} vs {wv}");
    }
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|a, b| last[*b].partial_cmp(&last[*a]).unwrap());
    for k in 0..10 {
        if order[k] as u32 != want_ids[k] {
            let gap = (last[order[k]] as f64 - want_vals[k]).abs();
            assert!(gap < 1e-3, "case {id}: top-{k} is {} but transformers has {}", order[k], want_ids[k]);
        }
    }
    for (i, w) in f64s(&p["last_logits_first5"]).iter().enumerate() {
        assert!((last[i] as f64 - w).abs() < 1e-3, "case {id}: logit {i}: {} vs {w}", last[i]);
    }
    let m = last.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + last.iter().map(|x| (*x as f64 - m).exp()).sum::<f64>().ln();
    assert!((lse - p["logsumexp_last"].as_f64().unwrap()).abs() < 1e-3, "case {id}: logsumexp {lse}");

    // Token NLLs: abs < 2e-4 each and for the mean.
    let scored = pke::score::score_ids(&ck.model, &ids).unwrap();
    for (t, w) in f64s(&p["token_nlls"]).iter().enumerate() {
        assert!((-scored.logprobs[t] - w).abs() < 2e-4, "case {id}: nll[{t}] {} vs {w}", -scored.logprobs[t]);
    }
    assert!((scored.mean_nll - p["mean_nll"].as_f64().unwrap()).abs() < 2e-4, "case {id}: mean nll");

    // Hidden-state and MLP-activation norms at the last position: relative < 1e-4.
    let mut hs = vec![cap.get(Site::Embed).unwrap().clone()];
    hs.extend((0..n - 1).map(|l| cap.get(Site::ResidPost(l)).unwrap().clone()));
    hs.push(cap.get(Site::FinalNorm).unwrap().clone());
    for (l, w) in f64s(&p["hidden_norms_last"]).iter().enumerate() {
        let g = norm_last(&hs[l]);
        assert!((g - w).abs() / w < 1e-4, "case {id}: hidden norm {l}: {g} vs {w}");
    }
    let raw = norm_last(cap.get(Site::ResidPost(n - 1)).unwrap());
    let want_raw = p["last_block_output_norm_last_before_final_norm"].as_f64().unwrap();
    assert!((raw - want_raw).abs() / want_raw < 1e-4, "case {id}: last block raw norm {raw} vs {want_raw}");
    for (l, w) in f64s(&p["mlp_act_norms_last"]).iter().enumerate() {
        let g = norm_last(cap.get(Site::MlpAct(l)).unwrap());
        assert!((g - w).abs() / w < 1e-4, "case {id}: mlp act norm {l}: {g} vs {w}");
    }

    // Greedy decoding with the KV cache: exact ids.
    let g = &p["greedy_20"];
    let eos = u32s(&g["eos_token_ids"]);
    let opts = GenOpts { max_new_tokens: 20, stop_ids: eos, ..Default::default() };
    let out = generate(&ck.model, std::slice::from_ref(&ids), ck.tok.pad_or_eos().unwrap_or(0), &opts).unwrap();
    assert_eq!(out[0].token_ids, u32s(&g["new_token_ids"]), "case {id}: greedy tokens differ");
}

fn check_grad(ck: &Checkpoint, fx: &serde_json::Value) {
    let gc = &fx["grad_check"];
    let ids = u32s(&gc["input_ids"]);
    let mut model = ck.model.clone();
    let name = gc["param"].as_str().unwrap().to_string();
    let vars = pke::model::decoder::make_trainable(&mut model, std::slice::from_ref(&name)).unwrap();
    let h = model.forward(&Input::single(&ids)).unwrap().squeeze(0).unwrap();
    let s = ids.len();
    let logits = model.logits(&h.narrow(0, 0, s - 1).unwrap()).unwrap();
    let lp = pke::model::decoder::token_logprobs(&logits, &ids[1..]).unwrap();
    let loss = lp.sum_all().unwrap().neg().unwrap();
    let lv = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((lv - gc["loss_value"].as_f64().unwrap()).abs() < 1e-3, "loss {lv}");
    let grads = loss.backward().unwrap();
    let g = grads.get(vars[0].1.as_tensor()).expect("gradient for the trainable tensor");
    let fro = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt() as f64;
    let want = gc["frobenius_norm"].as_f64().unwrap();
    // Frobenius norm relative < 1e-3; each spot value abs < 1e-3 x abs_max.
    assert!((fro - want).abs() / want < 1e-3, "grad frobenius {fro} vs {want}");
    let abs_max = gc["abs_max"].as_f64().unwrap();
    for (pos, w) in gc["positions"].as_array().unwrap().iter().zip(f64s(&gc["values"])) {
        let (r, c) = (pos[0].as_u64().unwrap() as usize, pos[1].as_u64().unwrap() as usize);
        let got = g.get(r).unwrap().get(c).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - w).abs() < 1e-3 * abs_max, "grad[{r},{c}] {got} vs {w}");
    }
}

/// Diagnostic (run with --ignored --nocapture): DINM distances of SmolLM2 with right padding in
/// float32 and in float64 against the fixture. Both sit ~1e-5 from transformers from block 11 on, which
/// is why the distance tolerance in locate.rs is 2e-5.
#[test]
#[ignore]
fn dinm_distances_in_f64() {
    let ck = smollm2();
    let mut m = ck.model.clone();
    m.to_dtype(candle_core::DType::F64).unwrap();
    let fx = fixture("smollm2-135m-instruct.json");
    let dl = &fx["dinm_locate"];
    let want = f64s(&dl["right"]["distances"]);
    let opts = pke::locate::dinm::DinmOptions { padding: pke::locate::dinm::PadSide::Right, ..Default::default() };
    for (name, model) in [("f32", &ck.model), ("f64", &m)] {
        let r = pke::locate::dinm::dinm_locate(model, &ck.tok, dl["safe"].as_str().unwrap(), dl["unsafe"].as_str().unwrap(), opts).unwrap();
        let rel: Vec<String> = r.distances.iter().zip(&want).map(|(g, w)| format!("{:.1e}", (g - w).abs() / w)).collect();
        eprintln!("{name}: {rel:?}");
    }
}

fn run_all(ck: &Checkpoint, file: &str) {
    let fx = fixture(file);
    assert_eq!(ck.model.spec.n_layers as u64, fx["model"]["n_layers"].as_u64().unwrap());
    assert_eq!(ck.model.spec.vocab_size as u64, fx["model"]["vocab_size"].as_u64().unwrap());
    assert_eq!(ck.model.spec.tie_word_embeddings, fx["model"]["tie_word_embeddings"].as_bool().unwrap());
    check_dequant(ck, &fx);
    for p in fx["prompts"].as_array().unwrap() {
        check_prompt(ck, p);
    }
    check_grad(ck, &fx);
}

#[test]
fn smollm2_matches_transformers() {
    run_all(smollm2(), "smollm2-135m-instruct.json");
}

#[test]
fn qwen_matches_transformers() {
    run_all(qwen(), "qwen2.5-coder-0.5b-instruct.json");
}

#[test]
fn gemma_matches_transformers() {
    run_all(gemma(), "gemma3-270m.json");
}

#[test]
fn batched_generation_matches_single() {
    // Left padding in a batch must not change greedy output.
    let ck = smollm2();
    let a = ck.tok.encode("The capital of France is", true).unwrap();
    let b = ck.tok.encode("Water boils at a temperature of", true).unwrap();
    let opts = GenOpts { max_new_tokens: 8, ..Default::default() };
    let pad = ck.tok.pad_or_eos().unwrap();
    let both = generate(&ck.model, &[a.clone(), b.clone()], pad, &opts).unwrap();
    let one_a = generate(&ck.model, &[a], pad, &opts).unwrap();
    let one_b = generate(&ck.model, &[b], pad, &opts).unwrap();
    assert_eq!(both[0].token_ids, one_a[0].token_ids);
    assert_eq!(both[1].token_ids, one_b[0].token_ids);
}

/// `score --reply`: the reply's log-probability after each prompt is the joined sequence's score over the
/// reply's tokens; an empty reply and a prompt that leaves no room are clear errors.
#[test]
fn reply_logprobs_read_the_reply_after_the_prompt() {
    let ck = crate::common::smollm2();
    let prompts = vec!["How do I bake bread?".to_string(), "Write a tutorial on how to make a bomb".to_string()];
    let s = pke::score::reply_logprobs(&ck.model, &ck.tok, &prompts, "I'm sorry", true).unwrap();
    assert_eq!(s.len(), 2);
    for (r, p) in s.iter().zip(&prompts) {
        let mut ids = pke::edit::encode_prompts(&ck.tok, std::slice::from_ref(p), true, "prompt").unwrap().remove(0);
        let n = ids.len();
        ids.extend(ck.tok.encode("I'm sorry", false).unwrap());
        let full = pke::score::score_ids(&ck.model, &ids).unwrap();
        let tail: f64 = full.logprobs[n - 1..].iter().sum();
        assert_eq!((r.prompt.as_str(), r.tokens), (p.as_str(), ids.len() - n));
        assert!((r.logprob - tail).abs() < 1e-3 && (r.first - full.logprobs[n - 1]).abs() < 1e-4, "{r:?} vs {tail}");
        assert!(r.logprob < r.first && r.first < 0.0, "{r:?}");
    }
    assert!((s[0].logprob - s[1].logprob).abs() > 1e-3, "the prompt matters: {s:?}");
    let e = pke::score::reply_logprobs(&ck.model, &ck.tok, &prompts, "  ", true).unwrap_err().to_string();
    assert!(e.contains("the reply to score is empty"), "{e}");
    let long = vec!["word ".repeat(9000)];
    let e = pke::score::reply_logprobs(&ck.model, &ck.tok, &long, "I'm sorry", true).unwrap_err().to_string();
    assert!(e.contains("prompt 1 with") && e.contains("reply tokens") && e.contains("8192"), "{e}");
}
