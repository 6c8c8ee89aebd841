//! Provides the per-architecture table. All supported checkpoints are pre-norm RMSNorm/RoPE/gated-MLP
//! decoders; what differs between them is data, recorded here once and read by the one generic decoder.

use std::fmt;

/// A supported decoder family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gemma3,
}

/// MLP activation applied to the gate projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Act {
    /// x * sigmoid(x)
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// What makes one architecture differ from another, as data.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    pub arch: Arch,
    /// Canonical lower-case name (also the GGUF `general.architecture`).
    pub name: &'static str,
    /// HF `architectures[0]` values that select this entry.
    pub hf_classes: &'static [&'static str],
    /// HF `model_type` values that select this entry.
    pub hf_model_types: &'static [&'static str],
    /// RMSNorm multiplies by `offset + w` (Gemma stores `w` relative to 1).
    pub norm_weight_offset: f32,
    /// Embeddings are scaled by sqrt(hidden_size) (Gemma).
    pub embed_scale: bool,
    pub act: Act,
    /// q/k/v projections carry a bias (Qwen2).
    pub qkv_bias: bool,
    /// RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma3).
    pub qk_norm: bool,
    /// Extra norms after attention and around the MLP (Gemma2/3 "sandwich" norms).
    pub sandwich_norms: bool,
    /// llama.cpp's converter permuted q/k rows for interleaved RoPE; undo on load, redo on export.
    pub gguf_qk_permuted: bool,
}

const TABLE: &[ArchSpec] = &[
    ArchSpec {
        arch: Arch::Llama,
        name: "llama",
        hf_classes: &["LlamaForCausalLM"],
        hf_model_types: &["llama"],
        norm_weight_offset: 0.0,
        embed_scale: false,
        act: Act::Silu,
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
        gguf_qk_permuted: true,
    },
    ArchSpec {
        arch: Arch::Mistral,
        name: "mistral",
        hf_classes: &["MistralForCausalLM"],
        hf_model_types: &["mistral"],
        norm_weight_offset: 0.0,
        embed_scale: false,
        act: Act::Silu,
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
        gguf_qk_permuted: true,
    },
    ArchSpec {
        arch: Arch::Qwen2,
        name: "qwen2",
        hf_classes: &["Qwen2ForCausalLM"],
        hf_model_types: &["qwen2"],
        norm_weight_offset: 0.0,
        embed_scale: false,
        act: Act::Silu,
        qkv_bias: true,
        qk_norm: false,
        sandwich_norms: false,
        gguf_qk_permuted: false,
    },
    ArchSpec {
        arch: Arch::Qwen3,
        name: "qwen3",
        hf_classes: &["Qwen3ForCausalLM"],
        hf_model_types: &["qwen3"],
        norm_weight_offset: 0.0,
        embed_scale: false,
        act: Act::Silu,
        qkv_bias: false,
        qk_norm: true,
        sandwich_norms: false,
        gguf_qk_permuted: false,
    },
    ArchSpec {
        arch: Arch::Gemma3,
        name: "gemma3",
        hf_classes: &["Gemma3ForCausalLM"],
        hf_model_types: &["gemma3_text", "gemma3"],
        norm_weight_offset: 1.0,
        embed_scale: true,
        act: Act::GeluTanh,
        qkv_bias: false,
        qk_norm: true,
        sandwich_norms: true,
        gguf_qk_permuted: false,
    },
];

impl Arch {
    /// The table entry for this architecture.
    pub fn spec(self) -> &'static ArchSpec {
        TABLE.iter().find(|s| s.arch == self).expect("every Arch has a table entry")
    }

    /// Look up by GGUF `general.architecture` or canonical name.
    pub fn from_name(name: &str) -> Option<Arch> {
        TABLE.iter().find(|s| s.name == name).map(|s| s.arch)
    }

    /// Look up by HF `architectures[0]` class name.
    pub fn from_hf_class(class: &str) -> Option<Arch> {
        TABLE.iter().find(|s| s.hf_classes.contains(&class)).map(|s| s.arch)
    }

    /// Look up by HF `model_type`.
    pub fn from_hf_model_type(t: &str) -> Option<Arch> {
        TABLE.iter().find(|s| s.hf_model_types.contains(&t)).map(|s| s.arch)
    }

    /// Names of all supported architectures, for error messages.
    pub fn supported() -> String {
        TABLE.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    }

    /// The HF class written to an exported `config.json`.
    pub fn hf_class(self) -> &'static str {
        self.spec().hf_classes[0]
    }

    /// The HF `model_type` written to an exported `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        self.spec().hf_model_types[0]
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_round_trip() {
        for s in TABLE {
            assert_eq!(Arch::from_name(s.name), Some(s.arch));
            assert_eq!(Arch::from_hf_class(s.arch.hf_class()), Some(s.arch));
            assert_eq!(Arch::from_hf_model_type(s.arch.hf_model_type()), Some(s.arch));
        }
        assert_eq!(Arch::from_name("gpt2"), None);
        assert!(Arch::supported().contains("gemma3"));
    }
}
