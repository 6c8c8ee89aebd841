//! Finite-difference checks of the gradient path on a small random model of every architecture.

use candle_core::Tensor;
use pke::model::decoder::{make_trainable, token_logprobs};
use pke::model::{Act, Arch, Decoder, Input, LayerType, ModelSpec};
use pke::trace::{GradProbe, Site};

pub fn tiny_spec(arch: Arch) -> ModelSpec {
    let n_layers = 3;
    ModelSpec {
        arch,
        n_layers,
        hidden_size: 16,
        intermediate_size: 24,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
        vocab_size: 32,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_local_theta: 1_000.0,
        layer_types: (0..n_layers)
            .map(|i| if arch == Arch::Gemma3 && i != 2 { LayerType::SlidingAttention } else { LayerType::FullAttention })
            .collect(),
        sliding_window: if arch == Arch::Gemma3 { Some(3) } else { None },
        attn_scale: 8f64.powf(-0.5),
        max_position_embeddings: 64,
        tie_word_embeddings: arch != Arch::Qwen2,
        act: if arch == Arch::Gemma3 { Act::GeluTanh } else { Act::Silu },
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        pad_token_id: Some(0),
    }
}

const IDS: [u32; 7] = [1, 5, 9, 3, 17, 30, 4];

fn loss(model: &Decoder) -> Tensor {
    let h = model.forward(&Input::single(&IDS)).unwrap().squeeze(0).unwrap();
    let logits = model.logits(&h.narrow(0, 0, IDS.len() - 1).unwrap()).unwrap();
    token_logprobs(&logits, &IDS[1..]).unwrap().sum_all().unwrap().neg().unwrap()
}

fn loss_f64(model: &Decoder) -> f64 {
    loss(model).to_scalar::<f32>().unwrap() as f64
}

/// Central difference along the analytic gradient direction: (L(w + e g) - L(w - e g)) / 2e vs |g|^2.
#[test]
fn weight_gradients_match_finite_differences_for_every_arch() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3] {
        let base = Decoder::random(tiny_spec(arch), 7).unwrap();
        // Tensors on every path: MLP (both sides of the activation), attention (through softmax and RoPE), norms, embedding.
        for name in [
            "model.layers.1.mlp.down_proj.weight",
            // Through the activation (silu / gelu-tanh): what `edit_keys` trains.
            "model.layers.1.mlp.gate_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.2.input_layernorm.weight",
            "model.embed_tokens.weight",
        ] {
            let mut m = base.clone();
            let vars = make_trainable(&mut m, &[name.to_string()]).unwrap();
            let l = loss(&m);
            let grads = l.backward().unwrap();
            let g = grads.get(vars[0].1.as_tensor()).unwrap_or_else(|| panic!("{arch} {name}: no gradient")).clone();
            let g2 = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
            assert!(g2 > 0.0, "{arch} {name}: zero gradient");
            let w0 = base.get(name).unwrap().clone();
            let eps = 1e-2 / g2.sqrt();
            let mut plus = base.clone();
            plus.set(name, (&w0 + (&g * eps).unwrap()).unwrap()).unwrap();
            let mut minus = base.clone();
            minus.set(name, (&w0 - (&g * eps).unwrap()).unwrap()).unwrap();
            let fd = (loss_f64(&plus) - loss_f64(&minus)) / (2.0 * eps);
            let ratio = fd / g2;
            assert!((ratio - 1.0).abs() < 2e-2, "{arch} {name}: finite difference / analytic = {ratio}");
        }
    }
}

/// Activation gradients from zero-Var probes equal those implied by the weight gradient:
/// dL/dW_down = sum_t g_out[t]^T a[t], so probing MlpOut and MlpAct must reproduce it.
#[test]
fn activation_probe_gradients_agree_with_weight_gradient() {
    let base = Decoder::random(tiny_spec(Arch::Llama), 3).unwrap();
    let mut m = base.clone();
    let name = "model.layers.1.mlp.down_proj.weight".to_string();
    let vars = make_trainable(&mut m, std::slice::from_ref(&name)).unwrap();
    let mut probe = GradProbe::new([Site::MlpAct(1), Site::MlpOut(1)]);
    let h = m.forward_with(&Input::single(&IDS), &mut probe, None).unwrap().squeeze(0).unwrap();
    let logits = m.logits(&h.narrow(0, 0, IDS.len() - 1).unwrap()).unwrap();
    let l = token_logprobs(&logits, &IDS[1..]).unwrap().sum_all().unwrap().neg().unwrap();
    let grads = l.backward().unwrap();
    let gw = grads.get(vars[0].1.as_tensor()).unwrap();
    let g_out = probe.grad(&grads, Site::MlpOut(1)).unwrap().squeeze(0).unwrap(); // (s, d)
    let a = probe.values[&Site::MlpAct(1)].squeeze(0).unwrap(); // (s, f)
    let implied = g_out.t().unwrap().matmul(&a).unwrap(); // (d, f)
    let diff = (gw - &implied).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "max diff {diff}");
    // And the activation gradient is g_out @ W_down.
    let g_act = probe.grad(&grads, Site::MlpAct(1)).unwrap().squeeze(0).unwrap();
    let implied_act = g_out.matmul(&base.get(&name).unwrap()).unwrap();
    let diff = (g_act - implied_act).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "max diff {diff}");
}

/// `forward == forward_with(Noop)`, and capturing does not change the output.
#[test]
fn recording_does_not_change_the_forward_pass() {
    let m = Decoder::random(tiny_spec(Arch::Gemma3), 1).unwrap();
    let a = m.forward(&Input::single(&IDS)).unwrap();
    let mut cap = pke::trace::Capture::everything();
    let b = m.forward_with(&Input::single(&IDS), &mut cap, None).unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0);
    assert!(cap.get(Site::MlpAct(2)).is_some());
}

/// Decoding one token at a time with the KV cache gives the full forward's logits at every position, past
/// the point where the cache's buffers grow (the prompt plus 64), for every architecture (grouped-query
/// heads, Gemma's sliding window).
#[test]
fn cached_decoding_equals_the_full_forward_past_the_cache_growth() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3] {
        let mut spec = tiny_spec(arch);
        spec.max_position_embeddings = 128;
        let m = Decoder::random(spec, 4).unwrap();
        let ids: Vec<u32> = (0..90u32).map(|i| (i * 7 + 3) % 32).collect();
        let full = m.logits(&m.forward(&Input::single(&ids)).unwrap().squeeze(0).unwrap()).unwrap();
        let mut cache = pke::model::KvCache::default();
        let h = m.forward_with(&Input::single(&ids[..3]), &mut pke::trace::Noop, Some(&mut cache)).unwrap();
        let mut worst = 0f32;
        let mut step = |pos: usize, h: &Tensor| {
            let got = m.last_logits(h).unwrap().squeeze(0).unwrap();
            let d = (got - full.get(pos).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            worst = worst.max(d);
        };
        step(2, &h);
        for (pos, &id) in ids.iter().enumerate().skip(3) {
            let input = Input { ids: vec![vec![id]], mask: None, positions: Some(vec![vec![pos as u32]]), resume: None };
            let h = m.forward_with(&input, &mut pke::trace::Noop, Some(&mut cache)).unwrap();
            step(pos, &h);
        }
        assert_eq!(cache.len(), ids.len());
        assert!(worst < 1e-4, "{arch:?}: cached logits differ by {worst}");
    }
}

/// The edit's two memory savers give the plain path's gradients: a trainable column delta beside a
/// frozen weight (`set_column_delta`) and the blocks above it run as one recomputing op
/// (`set_checkpoint_from`). In f64, so any difference is a wrong gradient, not rounding.
#[test]
fn column_delta_and_checkpointed_blocks_give_the_plain_gradient() {
    for arch in [Arch::Llama, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3] {
        let mut base = Decoder::random(tiny_spec(arch), 9).unwrap();
        base.to_dtype(candle_core::DType::F64).unwrap();
        let name = "model.layers.0.mlp.down_proj.weight";
        let cols = [3usize, 7, 20];
        // Plain: the whole weight trainable; its gradient at the chosen columns.
        let mut plain = base.clone();
        let w = candle_core::Var::from_tensor(&base.get(name).unwrap()).unwrap();
        plain.set(name, w.as_tensor().clone()).unwrap();
        let l_plain = loss(&plain);
        let g = l_plain.backward().unwrap().get(w.as_tensor()).unwrap().clone();
        let idx = Tensor::new(&[3u32, 7, 20], g.device()).unwrap();
        let want = g.index_select(&idx, 1).unwrap();
        for checkpoint in [None, Some(1), Some(2)] {
            let mut m = base.clone();
            m.set_checkpoint_from(checkpoint);
            let delta = candle_core::Var::zeros((16, cols.len()), candle_core::DType::F64, &candle_core::Device::Cpu).unwrap();
            m.set_column_delta(name, &cols, delta.as_tensor().clone()).unwrap();
            let l = loss(&m);
            let lv = l.to_scalar::<f64>().unwrap();
            let pv = l_plain.to_scalar::<f64>().unwrap();
            assert!((lv - pv).abs() < 1e-9 * pv.abs().max(1.0), "{arch} {checkpoint:?}: loss {lv} vs {pv}");
            let got = l.backward().unwrap().get(delta.as_tensor()).unwrap_or_else(|| panic!("{arch}: no gradient")).clone();
            let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
            assert!(scale > 0.0 && err < 1e-9 * scale, "{arch} {checkpoint:?}: gradient off by {err} (scale {scale})");
            // The column delta reads back through `get` as the changed weight.
            let moved = (delta.as_tensor() + 1.0).unwrap();
            m.set_column_delta(name, &cols, moved).unwrap();
            let w = m.get(name).unwrap();
            let w0 = base.get(name).unwrap();
            let d = (w - &w0).unwrap().sum_all().unwrap().to_scalar::<f64>().unwrap();
            assert!((d - 16.0 * cols.len() as f64).abs() < 1e-9, "{arch}: get adds the delta ({d})");
        }
        let mut m = base.clone();
        let e = m.set_column_delta(name, &[3, 99], Tensor::zeros((16, 2), candle_core::DType::F64, &candle_core::Device::Cpu).unwrap());
        assert!(e.unwrap_err().to_string().contains("99"));
    }
}
