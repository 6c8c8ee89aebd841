//! Provides `ModelSpec`, the fully resolved model configuration, built from a HF `config.json` or from
//! GGUF metadata, and written back as a `config.json` on export.

use std::path::Path;

use serde_json::{json, Value};

use super::arch::{Act, Arch};
use crate::{Error, Result};

/// Attention kind of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerType {
    FullAttention,
    SlidingAttention,
}

/// Resolved model configuration: everything the decoder needs, nothing optional left to guess.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelSpec {
    pub arch: Arch,
    pub n_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    /// RoPE base for full-attention layers.
    pub rope_theta: f64,
    /// RoPE base for sliding-attention layers (Gemma 3: 10,000).
    pub rope_local_theta: f64,
    pub layer_types: Vec<LayerType>,
    pub sliding_window: Option<usize>,
    /// Multiplier of q.k (1/sqrt(head_dim), or Gemma's query_pre_attn_scalar^-0.5).
    pub attn_scale: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub act: Act,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
}

/// A read-only view of a key/value config (HF JSON or GGUF metadata) that reports missing keys by name.
pub trait ConfigSource {
    fn path(&self) -> &Path;
    fn get_f64(&self, key: &str) -> Option<f64>;
    fn get_str(&self, key: &str) -> Option<String>;
    fn req_f64(&self, key: &str) -> Result<f64> {
        self.get_f64(key).ok_or_else(|| Error::Config {
            path: self.path().to_path_buf(),
            key: key.to_string(),
            msg: "missing or not a number".into(),
        })
    }
    fn req_usize(&self, key: &str) -> Result<usize> {
        let v = self.req_f64(key)?;
        if v < 0.0 || v.fract() != 0.0 {
            return Err(Error::Config {
                path: self.path().to_path_buf(),
                key: key.into(),
                msg: format!("expected a non-negative integer, got {v}"),
            });
        }
        Ok(v as usize)
    }
    fn opt_usize(&self, key: &str) -> Option<usize> {
        self.get_f64(key).filter(|v| *v >= 0.0).map(|v| v as usize)
    }
}

/// HF `config.json` as a `ConfigSource`.
pub struct HfConfig<'a> {
    pub path: &'a Path,
    pub json: &'a Value,
}

impl ConfigSource for HfConfig<'_> {
    fn path(&self) -> &Path {
        self.path
    }
    fn get_f64(&self, key: &str) -> Option<f64> {
        let v = self.json.get(key)?;
        v.as_f64().or_else(|| v.as_array().and_then(|a| a.first()).and_then(|x| x.as_f64()))
    }
    fn get_str(&self, key: &str) -> Option<String> {
        self.json.get(key)?.as_str().map(str::to_string)
    }
}

fn default_layer_types(arch: Arch, n: usize, pattern: usize) -> Vec<LayerType> {
    (0..n)
        .map(|i| {
            if arch == Arch::Gemma3 && pattern > 0 && (i + 1) % pattern != 0 {
                LayerType::SlidingAttention
            } else {
                LayerType::FullAttention
            }
        })
        .collect()
}

impl ModelSpec {
    /// Resolve from a HF `config.json`.
    pub fn from_hf(path: &Path, json: &Value) -> Result<Self> {
        let src = HfConfig { path, json };
        let class =
            json.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()).and_then(|c| c.as_str()).map(str::to_string);
        let model_type = src.get_str("model_type");
        let arch = class
            .as_deref()
            .and_then(Arch::from_hf_class)
            .or_else(|| model_type.as_deref().and_then(Arch::from_hf_model_type))
            .ok_or_else(|| Error::UnsupportedArch {
                name: class.or(model_type).unwrap_or_else(|| "<none: no `architectures` or `model_type`>".into()),
                path: path.to_path_buf(),
                supported: Arch::supported(),
            })?;
        let n_layers = src.req_usize("num_hidden_layers")?;
        let hidden_size = src.req_usize("hidden_size")?;
        let n_heads = src.req_usize("num_attention_heads")?;
        let n_kv_heads = src.opt_usize("num_key_value_heads").unwrap_or(n_heads);
        let head_dim = src.opt_usize("head_dim").unwrap_or(hidden_size / n_heads.max(1));
        let rope = json.get("rope_parameters");
        let rope_theta = src
            .get_f64("rope_theta")
            .or_else(|| rope.and_then(|r| r.pointer("/full_attention/rope_theta").or(r.get("rope_theta"))).and_then(|v| v.as_f64()))
            .unwrap_or(10_000.0);
        let rope_local_theta = src
            .get_f64("rope_local_base_freq")
            .or_else(|| rope.and_then(|r| r.pointer("/sliding_attention/rope_theta")).and_then(|v| v.as_f64()))
            .unwrap_or(if arch == Arch::Gemma3 { 10_000.0 } else { rope_theta });
        let pattern = src.opt_usize("sliding_window_pattern").or(src.opt_usize("_sliding_window_pattern")).unwrap_or(6);
        let layer_types = match json.get("layer_types").and_then(|v| v.as_array()) {
            Some(a) => a
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("full_attention") => Ok(LayerType::FullAttention),
                    Some("sliding_attention") => Ok(LayerType::SlidingAttention),
                    other => Err(Error::Config {
                        path: path.into(),
                        key: format!("layer_types[{i}]"),
                        msg: format!("unknown layer type {other:?}"),
                    }),
                })
                .collect::<Result<Vec<_>>>()?,
            None => default_layer_types(arch, n_layers, pattern),
        };
        if layer_types.len() != n_layers {
            return Err(Error::Config {
                path: path.into(),
                key: "layer_types".into(),
                msg: format!("has {} entries for {n_layers} layers", layer_types.len()),
            });
        }
        let use_sliding = json.get("use_sliding_window").and_then(|v| v.as_bool()).unwrap_or(arch != Arch::Qwen2 && arch != Arch::Qwen3);
        let sliding_window = if use_sliding { src.opt_usize("sliding_window") } else { None };
        let attn_scale = match src.get_f64("query_pre_attn_scalar") {
            Some(s) if arch == Arch::Gemma3 => s.powf(-0.5),
            _ => (head_dim as f64).powf(-0.5),
        };
        let act = match src.get_str("hidden_activation").or(src.get_str("hidden_act")).as_deref() {
            Some("silu") | Some("swish") => Act::Silu,
            Some("gelu_pytorch_tanh") | Some("gelu_tanh") => Act::GeluTanh,
            None => arch.spec().act,
            Some(other) => {
                return Err(Error::Config { path: path.into(), key: "hidden_act".into(), msg: format!("unsupported activation `{other}`") })
            }
        };
        let spec = ModelSpec {
            arch,
            n_layers,
            hidden_size,
            intermediate_size: src.req_usize("intermediate_size")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size: src.req_usize("vocab_size")?,
            rms_norm_eps: src.req_f64("rms_norm_eps")?,
            rope_theta,
            rope_local_theta,
            layer_types,
            sliding_window,
            attn_scale,
            max_position_embeddings: src.opt_usize("max_position_embeddings").unwrap_or(4096),
            tie_word_embeddings: json.get("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(arch == Arch::Gemma3),
            act,
            bos_token_id: src.opt_usize("bos_token_id").map(|v| v as u32),
            eos_token_id: src.opt_usize("eos_token_id").map(|v| v as u32),
            pad_token_id: src.opt_usize("pad_token_id").map(|v| v as u32),
        };
        spec.validate(path)?;
        Ok(spec)
    }

    /// Check internal consistency (heads divide, sizes non-zero).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::Config { path: path.into(), key: key.into(), msg });
        for (k, v) in [
            ("num_hidden_layers", self.n_layers),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.n_heads),
            ("num_key_value_heads", self.n_kv_heads),
            ("vocab_size", self.vocab_size),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(k, "must be positive".into());
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad("num_key_value_heads", format!("{} does not divide num_attention_heads {}", self.n_kv_heads, self.n_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} is odd; RoPE needs an even head_dim", self.head_dim));
        }
        Ok(())
    }

    /// The RoPE base of layer `i`.
    pub fn rope_theta_of(&self, layer: usize) -> f64 {
        match self.layer_types[layer] {
            LayerType::FullAttention => self.rope_theta,
            LayerType::SlidingAttention => self.rope_local_theta,
        }
    }

    /// The sliding window of layer `i`, if it has one.
    pub fn window_of(&self, layer: usize) -> Option<usize> {
        match self.layer_types[layer] {
            LayerType::SlidingAttention => self.sliding_window,
            LayerType::FullAttention => None,
        }
    }

    /// A HF `config.json` that transformers loads for this model (checked with transformers 5.23 by
    /// scripts/crosscheck).
    pub fn to_hf_config(&self) -> Value {
        let act = match self.act {
            Act::Silu => "silu",
            Act::GeluTanh => "gelu_pytorch_tanh",
        };
        let mut c = json!({
            "architectures": [self.arch.hf_class()],
            "model_type": self.arch.hf_model_type(),
            "num_hidden_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": shortest(self.rms_norm_eps),
            "rope_theta": shortest(self.rope_theta),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": act,
            "torch_dtype": "float32",
            "attention_bias": self.arch.spec().qkv_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        });
        let o = c.as_object_mut().expect("object");
        match self.arch {
            Arch::Gemma3 => {
                o.insert("hidden_activation".into(), json!(act));
                // transformers (5.x) validates this field as an integer: a 256.0 here refuses to load.
                o.insert("query_pre_attn_scalar".into(), json!((1.0 / (self.attn_scale * self.attn_scale)).round() as u64));
                o.insert("rope_local_base_freq".into(), json!(shortest(self.rope_local_theta)));
                o.insert("sliding_window".into(), json!(self.sliding_window));
                o.insert(
                    "layer_types".into(),
                    json!(self
                        .layer_types
                        .iter()
                        .map(|t| match t {
                            LayerType::FullAttention => "full_attention",
                            LayerType::SlidingAttention => "sliding_attention",
                        })
                        .collect::<Vec<_>>()),
                );
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                o.insert("use_sliding_window".into(), json!(self.sliding_window.is_some()));
                o.insert("sliding_window".into(), json!(self.sliding_window));
            }
            Arch::Mistral => {
                o.insert("sliding_window".into(), json!(self.sliding_window));
            }
            Arch::Llama => {}
        }
        c
    }
}

/// A GGUF stores these floats as f32: 1e-6 arrives as 9.999999974752427e-7. Write the shortest decimal
/// that reads back as the same f32, as the original config.json had it.
fn shortest(v: f64) -> f64 {
    let f = v as f32;
    if f as f64 == v {
        f.to_string().parse().unwrap_or(v)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: Value) -> Value {
        let mut base = json!({
            "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 8,
            "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 10, "rms_norm_eps": 1e-5
        });
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        base
    }

    #[test]
    fn resolves_llama_defaults() -> Result<()> {
        let s = ModelSpec::from_hf(Path::new("c.json"), &cfg(json!({})))?;
        assert_eq!(s.arch, Arch::Llama);
        assert_eq!(s.head_dim, 4);
        assert!((s.attn_scale - 0.5).abs() < 1e-12);
        assert_eq!(s.layer_types, vec![LayerType::FullAttention; 2]);
        Ok(())
    }

    #[test]
    fn missing_key_is_named() {
        let mut c = cfg(json!({}));
        c.as_object_mut().unwrap().remove("hidden_size");
        let e = ModelSpec::from_hf(Path::new("m/config.json"), &c).unwrap_err().to_string();
        assert!(e.contains("hidden_size") && e.contains("m/config.json"), "{e}");
    }

    #[test]
    fn unknown_arch_lists_supported() {
        let e = ModelSpec::from_hf(Path::new("c.json"), &cfg(json!({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPT2LMHeadModel") && e.contains("llama, mistral"), "{e}");
    }

    #[test]
    fn hf_config_round_trips() -> Result<()> {
        let s = ModelSpec::from_hf(
            Path::new("c.json"),
            &cfg(
                json!({"architectures": ["Gemma3ForCausalLM"], "query_pre_attn_scalar": 256, "head_dim": 4, "num_hidden_layers": 6, "sliding_window": 512}),
            ),
        )?;
        assert_eq!(s.layer_types[5], LayerType::FullAttention);
        assert_eq!(s.layer_types[4], LayerType::SlidingAttention);
        let back = ModelSpec::from_hf(Path::new("c.json"), &s.to_hf_config())?;
        assert_eq!(serde_json::to_value(&back)?, serde_json::to_value(&s)?);
        Ok(())
    }

    #[test]
    fn hf_config_types_match_transformers() -> Result<()> {
        // As read from a GGUF: f32 values widened to f64.
        let s = ModelSpec::from_hf(
            Path::new("c.json"),
            &cfg(json!({"architectures": ["Gemma3ForCausalLM"], "query_pre_attn_scalar": 256, "head_dim": 4,
                "rms_norm_eps": 1e-6f32 as f64, "rope_theta": 1e6f32 as f64})),
        )?;
        let c = s.to_hf_config();
        assert!(c["query_pre_attn_scalar"].is_u64(), "{}", c["query_pre_attn_scalar"]);
        assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-6));
        assert_eq!(c["rope_theta"].as_f64(), Some(1e6));
        Ok(())
    }
}
