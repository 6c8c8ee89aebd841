//! Provides the one place that knows GGUF tensor names, HF tensor names, and the llama.cpp Q/K row
//! permutation. pke keeps weights under HF names and in HF row order everywhere; GGUF only at the edges.

use candle_core::Tensor;

use crate::model::arch::{Arch, ArchSpec};
use crate::Result;

/// (GGUF suffix inside `blk.{i}.`, HF suffix inside `model.layers.{i}.`). Order is the export order.
fn block_table(arch: Arch) -> Vec<(&'static str, &'static str)> {
    let s = arch.spec();
    let mut t = vec![
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];
    if s.qkv_bias {
        t.extend([
            ("attn_q.bias", "self_attn.q_proj.bias"),
            ("attn_k.bias", "self_attn.k_proj.bias"),
            ("attn_v.bias", "self_attn.v_proj.bias"),
        ]);
    }
    if s.qk_norm {
        t.extend([("attn_q_norm.weight", "self_attn.q_norm.weight"), ("attn_k_norm.weight", "self_attn.k_norm.weight")]);
    }
    if s.sandwich_norms {
        t.extend([
            ("post_attention_norm.weight", "post_attention_layernorm.weight"),
            ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
            ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
        ]);
    } else {
        t.push(("ffn_norm.weight", "post_attention_layernorm.weight"));
    }
    t
}

const GLOBAL: &[(&str, &str)] =
    &[("token_embd.weight", "model.embed_tokens.weight"), ("output_norm.weight", "model.norm.weight"), ("output.weight", "lm_head.weight")];

/// HF name of a GGUF tensor, or None if pke does not use it.
pub fn gguf_to_hf(arch: Arch, gguf: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == gguf) {
        return Some(hf.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    block_table(arch).into_iter().find(|(g, _)| *g == suffix).map(|(_, hf)| format!("model.layers.{i}.{hf}"))
}

/// GGUF name of a HF tensor, or None if it has none.
pub fn hf_to_gguf(arch: Arch, hf: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL.iter().find(|(_, h)| *h == hf) {
        return Some(g.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, suffix) = rest.split_once('.')?;
    let i: usize = idx.parse().ok()?;
    block_table(arch).into_iter().find(|(_, h)| *h == suffix).map(|(g, _)| format!("blk.{i}.{g}"))
}

/// All HF tensor names a model of this shape has, in a stable order.
pub fn hf_tensor_names(arch: Arch, n_layers: usize, tied: bool) -> Vec<String> {
    let mut v = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..n_layers {
        v.extend(block_table(arch).into_iter().map(|(_, h)| format!("model.layers.{i}.{h}")));
    }
    v.push("model.norm.weight".into());
    if !tied {
        v.push("lm_head.weight".into());
    }
    v
}

/// Which permutation, if any, a tensor needs between GGUF and HF row order.
/// Returns the number of heads the rows are grouped in.
pub fn qk_permutation_heads(spec: &ArchSpec, hf: &str, n_heads: usize, n_kv_heads: usize) -> Option<usize> {
    if !spec.gguf_qk_permuted {
        return None;
    }
    if hf.ends_with("self_attn.q_proj.weight") || hf.ends_with("self_attn.q_proj.bias") {
        Some(n_heads)
    } else if hf.ends_with("self_attn.k_proj.weight") || hf.ends_with("self_attn.k_proj.bias") {
        Some(n_kv_heads)
    } else {
        None
    }
}

/// GGUF -> HF: within each head, GGUF row 2i becomes HF row i and row 2i+1 becomes row i + head_dim/2
/// (transformers' `LlamaTensorProcessor`: reshape(n_head, dim, 2, ...).swapaxes(2, 1)).
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let half = rows / n_head / 2;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![n_head, half, 2];
    shape.extend(&rest);
    // (n_head, half, 2, ..) -> (n_head, 2, half, ..)
    Ok(w.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

/// HF -> GGUF, the inverse of [`unpermute_qk`] (llama.cpp's converter `permute`).
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let half = rows / n_head / 2;
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![n_head, 2, half];
    shape.extend(&rest);
    // (n_head, 2, half, ..) -> (n_head, half, 2, ..)
    Ok(w.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_round_trip_for_every_arch() {
        for arch in [Arch::Llama, Arch::Mistral, Arch::Qwen2, Arch::Qwen3, Arch::Gemma3] {
            for hf in hf_tensor_names(arch, 3, false) {
                let g = hf_to_gguf(arch, &hf).unwrap_or_else(|| panic!("{arch}: no gguf name for {hf}"));
                assert_eq!(gguf_to_hf(arch, &g).as_deref(), Some(hf.as_str()), "{arch}: {g}");
            }
        }
        assert_eq!(gguf_to_hf(Arch::Llama, "blk.7.ffn_norm.weight").unwrap(), "model.layers.7.post_attention_layernorm.weight");
        assert_eq!(gguf_to_hf(Arch::Gemma3, "blk.7.ffn_norm.weight").unwrap(), "model.layers.7.pre_feedforward_layernorm.weight");
        assert_eq!(gguf_to_hf(Arch::Llama, "rope_freqs.weight"), None);
    }

    #[test]
    fn qk_permutation_moves_rows_as_transformers_does() -> Result<()> {
        // 2 heads of head_dim 4, 1 column: GGUF row order within a head is (0, 2, 1, 3) of HF.
        let g = Tensor::new(&[[0f32], [1.], [2.], [3.], [4.], [5.], [6.], [7.]], &Device::Cpu)?;
        let h = unpermute_qk(&g, 2)?;
        assert_eq!(h.flatten_all()?.to_vec1::<f32>()?, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(permute_qk(&h, 2)?.flatten_all()?.to_vec1::<f32>()?, g.flatten_all()?.to_vec1::<f32>()?);
        Ok(())
    }
}
