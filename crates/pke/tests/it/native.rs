//! Frozen weights held as stored (`Weights::Native`: GGUF blocks, quantized matmuls, gradients through
//! them) against the float32 reference on the real models: same tensors read back, close log-probs, the
//! same located layer and hotspot, a close edit, and a fraction of the memory.

use pke::edit::{compute_delta_with, EditParams, Method};
use pke::io::checkpoint::Checkpoint;
use pke::locate::{locate, LocateSettings};
use pke::model::decoder::{down_proj_name, token_logprobs};
use pke::model::{Decoder, Input, Weights};

const TEXT: &str = "The capital of France is Paris. It is known for the Eiffel Tower, the Louvre and its cafes, \
                    which attract millions of visitors every year. The river Seine runs through the city.";

fn native(alias: &str) -> Checkpoint {
    Checkpoint::open_with(alias, Weights::Native).unwrap_or_else(|e| panic!("{e}"))
}

fn logprobs(m: &Decoder, ids: &[u32]) -> Vec<f32> {
    let h = m.forward(&Input::single(ids)).unwrap().squeeze(0).unwrap();
    let logits = m.logits(&h.narrow(0, 0, ids.len() - 1).unwrap()).unwrap();
    token_logprobs(&logits, &ids[1..]).unwrap().to_vec1::<f32>().unwrap()
}

fn bits(m: &Decoder, name: &str) -> Vec<u32> {
    m.get(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// Every default model: the native model lists the same tensors and reads each back bit for bit (q/k
/// rows of llama files un-permuted by moving whole rows of blocks), holds well under half the bytes,
/// gives the float32 path's log-probs when computed exactly on the dequantized blocks, and scores within
/// a stated bound through the quantized kernels (activations quantized to 8 bits, as llama.cpp does).
#[test]
fn native_weights_read_back_exactly_and_score_close_to_float32() {
    for (f, alias) in
        [(crate::common::smollm2(), "smollm2"), (crate::common::qwen(), "qwen2.5-0.5b"), (crate::common::gemma(), "gemma3-270m")]
    {
        let n = native(alias);
        assert_eq!(f.model.weights_mode(), Weights::F32, "{alias}");
        assert_eq!(n.model.weights_mode(), Weights::Native, "{alias}");
        assert_eq!(n.model.names(), f.model.names(), "{alias}");
        assert_eq!(n.model.n_params(), f.model.n_params(), "{alias}");
        let last = f.model.spec.n_layers - 1;
        for name in [
            "model.embed_tokens.weight".to_string(),
            "model.layers.0.self_attn.q_proj.weight".into(),
            "model.layers.0.self_attn.k_proj.weight".into(),
            format!("model.layers.{last}.self_attn.o_proj.weight"),
            down_proj_name(last),
        ] {
            assert!(bits(&n.model, &name) == bits(&f.model, &name), "{alias}: {name} reads back differently");
        }
        let ratio = n.model.resident_bytes() as f64 / f.model.resident_bytes() as f64;
        assert!(ratio < 0.45, "{alias}: native holds {ratio:.2} of the float32 bytes");
        let ids = f.tok.encode(TEXT, true).unwrap();
        // Exactly on the dequantized blocks (what locate and edit run): the float32 numbers.
        let (a, e) = (logprobs(&f.model, &ids), logprobs(&n.model.exact(), &ids));
        let max_exact = a.iter().zip(&e).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max_exact < 1e-4, "{alias}: exact path differs from float32 by {max_exact}");
        // Through the quantized kernels (generation and scoring).
        let b = logprobs(&n.model, &ids);
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let mean_nll = |v: &[f32]| -v.iter().sum::<f32>() / v.len() as f32;
        let dnll = (mean_nll(&a) - mean_nll(&b)).abs();
        eprintln!(
            "{alias}: exact max |d log p| {max_exact:.2e}; kernels max |d log p| {max:.4}, |d mean NLL| {dnll:.4}; bytes ratio {ratio:.3}"
        );
        assert!(max < 0.75 && dnll < 0.04, "{alias}: max |d log p| {max}, |d mean NLL| {dnll}");
    }
}

/// Locate and edit on SmolLM2 with native weights: gradients flow through the frozen block linears to the
/// activations and to the trained hotspot, giving the same layer, the same top-k neurons and the same
/// edit as the float32 path (up to float summation order).
#[test]
fn native_locate_and_edit_agree_with_float32_on_smollm2() {
    let f = crate::common::smollm2();
    let n = native("smollm2");
    let cases = pke::data::sets::builtin_cases("advbench", 2).unwrap();
    let s = LocateSettings { chat: true, ..Default::default() };
    let (hf, _) = locate(&f.model, &f.tok, &cases, &s, None, |_, _| {}).unwrap();
    let (hn, _) = locate(&n.model, &n.tok, &cases, &s, None, |_, _| {}).unwrap();
    assert_eq!(hf.chosen_layers, hn.chosen_layers);
    let l = hf.chosen_layers[0];
    let (a, b) = (hf.neuron_indices(l).unwrap(), hn.neuron_indices(l).unwrap());
    let common = a.iter().filter(|i| b.contains(i)).count();
    let overlap = common as f64 / a.len() as f64;
    eprintln!("top-{} overlap {overlap:.3}", a.len());
    assert!(overlap >= 0.99, "top-{} overlap {overlap}", a.len());

    // The same hotspot, 3 steps each.
    let p = EditParams::resolve(Method::Pke, Some(&crate::common::hotspot()), &["steps=3".into(), "stop_probes=0".into()]).unwrap();
    let name = down_proj_name(l);
    let retain = crate::common::small_retain();
    let delta = |m: &Decoder| {
        let out = compute_delta_with(m, &f.tok, &cases, &hf, Method::Pke, &p, Some(&retain), |_, _, _| {}).unwrap();
        let mut e = m.clone();
        out.delta.apply(&mut e, false).unwrap();
        // Only the trained tensor left the blocks.
        assert_eq!(e.weights_mode(), m.weights_mode());
        (e.get(&name).unwrap() - m.get(&name).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let (df, dn) = (delta(&f.model), delta(&n.model));
    let dot: f64 = df.iter().zip(&dn).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (norm(&df) * norm(&dn));
    let ratio = norm(&dn) / norm(&df);
    eprintln!("edit delta cosine {cos:.4}, norm ratio {ratio:.3}");
    assert!(cos > 0.999 && (ratio - 1.0).abs() < 1e-3, "delta cosine {cos}, norm ratio {ratio}");
}

/// A HF folder in half precision (F16 or BF16, as transformers saves most checkpoints) is held as stored
/// with `--weights native`: its linear weights and embedding stay 2 bytes per value, every tensor reads
/// back as the float32 load widens it, the exact path (locate, edit) gives the float32 log-probs bit for
/// bit and the F16/BF16 kernels (generation) stay close. An all-float32 folder has nothing to keep: it
/// loads as float32 and says so in its weights mode.
#[test]
fn native_weights_keep_a_half_precision_hf_folder_as_stored() {
    use safetensors::tensor::{Dtype, TensorView};
    let src = Checkpoint::open_with("smollm2", Weights::F32).unwrap();
    let base = std::env::temp_dir().join(format!("pke-native-hf-{}", std::process::id()));
    let f32_dir = base.join("f32");
    pke::io::hf::write_hf_dir(&src.model, &src.tok, &f32_dir, None).unwrap();
    let f = Checkpoint::load_with(&f32_dir, Weights::Native).unwrap();
    assert_eq!(f.model.weights_mode(), Weights::F32, "nothing to keep in an all-float32 folder");
    let ids = src.tok.encode(TEXT, true).unwrap();
    for (dtype, name) in [(Dtype::F16, "f16"), (Dtype::BF16, "bf16")] {
        let dir = base.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&f32_dir).unwrap() {
            let e = e.unwrap();
            if e.file_name() != "model.safetensors" {
                std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
            }
        }
        let (raw, _) = pke::io::safetensors::read_raw(&f32_dir.join("model.safetensors")).unwrap();
        let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (n, (_, shape, bytes)) in raw {
            let vals = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            let half: Vec<u8> = match dtype {
                Dtype::F16 => vals.flat_map(|x| half::f16::from_f32(x).to_le_bytes()).collect(),
                _ => vals.flat_map(|x| half::bf16::from_f32(x).to_le_bytes()).collect(),
            };
            data.push((n, dtype, shape, half));
        }
        let views: Vec<(String, TensorView<'_>)> =
            data.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
        let wide = Checkpoint::load_with(&dir, Weights::F32).unwrap();
        let held = Checkpoint::load_with(&dir, Weights::Native).unwrap();
        assert_eq!(held.model.weights_mode(), Weights::Native, "{name}");
        assert_eq!(held.model.names(), wide.model.names(), "{name}");
        let ratio = held.model.resident_bytes() as f64 / wide.model.resident_bytes() as f64;
        assert!(ratio < 0.55, "{name}: held as stored takes {ratio:.2} of the float32 bytes");
        for t in ["model.embed_tokens.weight", "model.layers.3.self_attn.q_proj.weight", "model.layers.11.mlp.down_proj.weight"] {
            assert_eq!(bits(&held.model, t), bits(&wide.model, t), "{name} {t}");
        }
        let exact = logprobs(&held.model.exact(), &ids);
        assert_eq!(exact, logprobs(&wide.model, &ids), "{name}: the exact path is the float32 path");
        let fast = logprobs(&held.model, &ids);
        let worst = fast.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{name}: held/float32 bytes {ratio:.3}, kernels max |d log p| {worst:.4}");
        assert!(worst < 0.75, "{name}: kernels max |d log p| {worst}");
    }
    std::fs::remove_dir_all(&base).ok();
}

/// An evaluation with the int8 kernels (native weights, or float32 weights with the GGUF's blocks
/// attached) checks them against the exact path on a sample of its own prompts: the check is reported
/// (and absent for the exact path), and on SmolLM2 most reply tokens are the exact path's greedy choice.
#[test]
fn int8_evaluation_reports_the_kernel_check() {
    use pke::eval::report::{evaluate, EvalSettings, Kernels};
    let s = EvalSettings {
        n_harmful: 2,
        n_jailbreak: 0,
        n_benign: 2,
        n_factual: 2,
        ppl_tokens: 32,
        max_new_tokens: 12,
        n_probes_per_category: 1,
        kernels: Kernels::Int8,
        ..Default::default()
    };
    let n = native("smollm2");
    let r = evaluate(&n, None, &s, |_| {}).unwrap();
    assert_eq!((r.weights, r.kernels), (Weights::Native, Kernels::Int8));
    let k = r.kernel_check.expect("an int8 evaluation has a kernel check");
    // 2 HarmBench + 2 StrongREJECT prompts (the first 16 harmful are all 4) and 2 benign ones.
    assert_eq!(k.n, 6);
    assert!(k.identical <= k.n && k.tokens > 0 && k.ci_low <= k.ci_high);
    assert!(k.token_agreement > 0.7, "{k:?}");
    let same = k.same_verdicts.expect("verdicts compared");
    assert!(same <= k.n && same >= k.identical, "{k:?}");
    assert!(r.rates.iter().any(|x| x.metric == "replies the exact path reproduces"));
    assert!(r.rates.iter().any(|x| x.metric == "verdicts the exact path gives too"));
    // Float32 weights: the blocks are attached for the replies, the same check runs.
    let q = evaluate(crate::common::smollm2(), None, &s, |_| {}).unwrap();
    assert_eq!((q.weights, q.kernels), (Weights::F32, Kernels::Int8));
    assert!(q.kernel_check.is_some());
    let f = evaluate(crate::common::smollm2(), None, &EvalSettings { kernels: Kernels::Exact, ..s }, |_| {}).unwrap();
    assert!(f.kernel_check.is_none() && f.weights == Weights::F32 && f.kernels == Kernels::Exact);
}

/// With the int8 kernels, a weight an edit changed keeps its new float32 values: the GGUF's blocks (the
/// values before the edit) are attached only to the weights that still hold them.
#[test]
fn int8_kernels_leave_edited_weights_exact() {
    use pke::eval::report::{with_kernels, Kernels};
    let ck = crate::common::smollm2();
    let ids = ck.tok.encode("The capital of France is", true).unwrap();
    let last = |c: &pke::io::checkpoint::Checkpoint| -> Vec<f32> {
        let h = c.model.forward(&pke::model::Input::single(&ids)).unwrap().squeeze(0).unwrap();
        let h = h.narrow(0, ids.len() - 1, 1).unwrap();
        c.model.logits(&h).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let name = "model.layers.20.mlp.down_proj.weight";
    let mut edited = ck.clone();
    let w = edited.model.get(name).unwrap();
    edited.model.set(name, (w * 4.0).unwrap()).unwrap();
    let (orig, exact, int8) =
        (last(ck), last(&with_kernels(&edited, Kernels::Exact).unwrap()), last(&with_kernels(&edited, Kernels::Int8).unwrap()));
    let (edit_size, kernel_noise) = (diff(&exact, &orig), diff(&int8, &exact));
    eprintln!("edit moves logits by {edit_size:.3}; int8 vs exact on the edited model {kernel_noise:.3}");
    assert!(edit_size > 1.0, "the edit must move the logits: {edit_size}");
    assert!(kernel_noise < 0.25 * edit_size, "the int8 path lost the edit: {kernel_noise} vs {edit_size}");
}
