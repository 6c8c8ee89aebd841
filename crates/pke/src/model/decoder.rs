//! Provides the one generic decoder that serves every supported architecture. Differences between
//! architectures come from [`ArchSpec`](super::arch::ArchSpec) data; weights live in one map under HF
//! names, in HF orientation, so editing and exporting a tensor means touching one map entry.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use super::arch::Act;
use super::config::ModelSpec;
use super::ops::{linear, rms_norm, rope, rope_tables, softmax_last};
use crate::io::names;
use crate::trace::{Recorder, Site};
use crate::{Error, Result};

/// What a query row whose keys are all masked (a left-pad position) gets from attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskedRows {
    /// Zero output, as torch's SDPA (transformers' default) gives.
    Zero,
    /// Uniform weights over all keys, as eager attention with an additive `finfo.min` mask gives.
    Uniform,
}

/// Inputs of one forward pass: `ids` rows of equal length, optional attention mask (1 = real token)
/// and positions (default: 0..s, or continuing after the cache).
#[derive(Clone, Debug, Default)]
pub struct Input {
    pub ids: Vec<Vec<u32>>,
    pub mask: Option<Vec<Vec<u8>>>,
    pub positions: Option<Vec<Vec<u32>>>,
    /// Start at block `.0` from this residual stream (b, s, d) instead of the embedding: the blocks
    /// below an edited layer do not change during an edit, so their output is computed once.
    pub resume: Option<(usize, Tensor)>,
}

impl Input {
    /// One unpadded sequence.
    pub fn single(ids: &[u32]) -> Self {
        Input { ids: vec![ids.to_vec()], mask: None, positions: None, resume: None }
    }
}

/// Key/value cache for incremental decoding: per layer the keys and values after RoPE, shape
/// (b, kv_heads, t, hd), in buffers with room to grow (new positions are copied in place, not the whole
/// cache re-concatenated each step), and the key padding mask (b, t). Not `Clone`: a copy would share the
/// buffers that later steps write into.
#[derive(Debug, Default)]
pub struct KvCache {
    kv: Vec<Option<LayerKv>>,
    pub key_mask: Vec<Vec<u8>>,
}

/// One layer's cache: `k` and `v` have room for `k.dim(2)` positions, of which `len` are filled.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.key_mask.first().map(|r| r.len()).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append layer `l`'s new keys and values (b, kv_heads, s, hd); returns every cached position's.
    fn append(&mut self, l: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.kv.len() <= l {
            self.kv.resize_with(l + 1, || None);
        }
        let (b, h, s, d) = k.dims4()?;
        let slot = &mut self.kv[l];
        let len = slot.as_ref().map_or(0, |e| e.len);
        if slot.as_ref().is_none_or(|e| len + s > e.k.dim(2).unwrap_or(0)) {
            // Room for the prompt and 64 more positions, doubling after that.
            let cap = (2 * len).max(len + s + 64);
            let grown = LayerKv {
                k: Tensor::zeros((b, h, cap, d), k.dtype(), k.device())?,
                v: Tensor::zeros((b, h, cap, d), v.dtype(), v.device())?,
                len,
            };
            if let Some(old) = slot.take() {
                grown.k.slice_set(&old.k.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                grown.v.slice_set(&old.v.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
            }
            *slot = Some(grown);
        }
        let e = slot.as_mut().expect("set above");
        e.k.slice_set(&k.detach().contiguous()?, 2, e.len)?;
        e.v.slice_set(&v.detach().contiguous()?, 2, e.len)?;
        e.len += s;
        Ok((e.k.narrow(2, 0, e.len)?, e.v.narrow(2, 0, e.len)?))
    }
}

/// HF tensor names of one block, formatted once.
#[derive(Clone, Debug)]
struct LayerNames {
    input_layernorm: String,
    q_proj: String,
    k_proj: String,
    v_proj: String,
    o_proj: String,
    q_bias: String,
    k_bias: String,
    v_bias: String,
    q_norm: String,
    k_norm: String,
    post_attention_layernorm: String,
    pre_feedforward_layernorm: String,
    post_feedforward_layernorm: String,
    gate_proj: String,
    up_proj: String,
    down_proj: String,
}

impl LayerNames {
    fn new(i: usize) -> Self {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        LayerNames {
            input_layernorm: p("input_layernorm.weight"),
            q_proj: p("self_attn.q_proj.weight"),
            k_proj: p("self_attn.k_proj.weight"),
            v_proj: p("self_attn.v_proj.weight"),
            o_proj: p("self_attn.o_proj.weight"),
            q_bias: p("self_attn.q_proj.bias"),
            k_bias: p("self_attn.k_proj.bias"),
            v_bias: p("self_attn.v_proj.bias"),
            q_norm: p("self_attn.q_norm.weight"),
            k_norm: p("self_attn.k_norm.weight"),
            post_attention_layernorm: p("post_attention_layernorm.weight"),
            pre_feedforward_layernorm: p("pre_feedforward_layernorm.weight"),
            post_feedforward_layernorm: p("post_feedforward_layernorm.weight"),
            gate_proj: p("mlp.gate_proj.weight"),
            up_proj: p("mlp.up_proj.weight"),
            down_proj: p("mlp.down_proj.weight"),
        }
    }
}

/// The name of block `layer`'s `down_proj` weight.
pub fn down_proj_name(layer: usize) -> String {
    format!("model.layers.{layer}.mlp.down_proj.weight")
}

/// A decoder-only transformer.
#[derive(Clone)]
pub struct Decoder {
    pub spec: ModelSpec,
    weights: HashMap<String, Tensor>,
    names: Vec<LayerNames>,
    /// Convention for fully masked query rows (default: `Zero`, as transformers' SDPA).
    pub masked_rows: MaskedRows,
    device: Device,
    /// Weights in their GGUF blocks. Either a copy beside the float32 weight (attached for inference-only
    /// paths, see [`Decoder::attach_quantized`]) or, with [`Weights::Native`], the only form of a frozen
    /// weight (see [`Decoder::from_gguf_native`]). A weight replaced through [`Decoder::set`] loses it.
    quant: HashMap<String, QWeight>,
    /// Whether paths without gradients run the linears through candle's quantized kernels (fast,
    /// activations quantized to 8 bits as llama.cpp does) instead of exactly on dequantized weights.
    quant_kernels: bool,
    /// Changes to some columns of a weight, kept apart from it (see [`Decoder::set_column_delta`]).
    column_deltas: HashMap<String, ColumnDelta>,
    /// With gradients, run the blocks from this one up as one recomputing op (see
    /// [`Decoder::set_checkpoint_from`]).
    checkpoint_from: Option<usize>,
    /// Weights replaced ([`Decoder::set`]) or given a column delta since loading: they no longer hold the
    /// file's values, so [`Decoder::attach_quantized`] must not give them the file's blocks.
    changed: std::collections::HashSet<String>,
}

/// A change to columns `idx` of a weight (out, in): `delta` (out, |idx|) is added to them.
#[derive(Clone)]
struct ColumnDelta {
    idx: Tensor,
    delta: Tensor,
}

/// How a checkpoint's frozen weights are held in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// Every weight dequantized to float32 (exact reference path; 4 bytes per parameter).
    F32,
    /// Frozen linear and embedding weights stay in their GGUF blocks; gradients flow through them
    /// (`dX = dY W`, one weight dequantized at a time); only trained or edited tensors are float32.
    Native,
    /// `native` when the float32 weights would not fit comfortably in memory, else `f32`.
    Auto,
}

impl Weights {
    /// What reports, hotspots and comparisons written before the mode was recorded used: float32.
    pub fn before_modes() -> Self {
        Weights::F32
    }
}

impl std::fmt::Display for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Weights::F32 => "f32",
            Weights::Native => "native",
            Weights::Auto => "auto",
        })
    }
}

impl std::str::FromStr for Weights {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Weights::F32),
            "native" => Ok(Weights::Native),
            "auto" => Ok(Weights::Auto),
            _ => Err(Error::Input(format!("unknown weights mode `{s}` (f32, native or auto)"))),
        }
    }
}

/// One weight in GGUF blocks: `stored` as in the file (what [`Decoder::get`] dequantizes, so an
/// untouched weight reads back exactly as transformers would see the file) and `fast`, the same
/// values in a block type with SIMD kernels for the matmuls (the same tensor when `stored` has them).
#[derive(Clone)]
struct QWeight {
    stored: std::sync::Arc<candle_core::quantized::QTensor>,
    fast: std::sync::Arc<candle_core::quantized::QTensor>,
    /// `fast` repacked for pke's int8 kernel ([`super::int8`]), where this CPU and the shape allow it; the
    /// generation path prefers it to `fast`.
    packed: Option<std::sync::Arc<super::int8::PackedQ8>>,
    /// True when the decoder holds no float copy of this weight.
    only: bool,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("spec", &self.spec).finish()
    }
}

/// Blocks `from..` of a decoder as one op on the residual stream (see [`Decoder::set_checkpoint_from`]).
struct Checkpointed {
    dec: Decoder,
    ids: Vec<Vec<u32>>,
    mask: Option<Vec<Vec<u8>>>,
    positions: Option<Vec<Vec<u32>>>,
    from: usize,
    /// Each block's input residual, from the forward pass.
    saved: std::sync::Mutex<Vec<Tensor>>,
}

impl Checkpointed {
    /// Block `l` applied to `h` (with graph when `h` carries one).
    fn block(&self, l: usize, h: Tensor) -> candle_core::Result<Tensor> {
        let input = Input { ids: self.ids.clone(), mask: self.mask.clone(), positions: self.positions.clone(), resume: Some((l, h)) };
        let mut stop = crate::trace::Capture { stop: Some(l), ..Default::default() };
        self.dec.forward_with(&input, &mut stop, None).map_err(|e| candle_core::Error::Msg(format!("checkpointed block {l}: {e}")))
    }
}

impl candle_core::CustomOp1 for Checkpointed {
    fn name(&self) -> &'static str {
        "checkpointed-blocks"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (start, end) =
            l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("checkpointed blocks need a contiguous input".into()))?;
        let mut h = match s {
            candle_core::CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.shape(), &Device::Cpu)?,
            candle_core::CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.shape(), &Device::Cpu)?,
            _ => candle_core::bail!("checkpointed blocks run in f32 or f64"),
        };
        let mut saved = self.saved.lock().expect("not poisoned");
        saved.clear();
        for b in self.from..self.dec.spec.n_layers {
            saved.push(h.clone());
            h = self.block(b, h)?;
        }
        let shape = h.shape().clone();
        let out = match h.dtype() {
            DType::F64 => candle_core::CpuStorage::F64(h.flatten_all()?.to_vec1::<f64>()?),
            _ => candle_core::CpuStorage::F32(h.flatten_all()?.to_vec1::<f32>()?),
        };
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let saved = self.saved.lock().expect("not poisoned");
        let mut g = grad_res.detach();
        for (i, x) in saved.iter().enumerate().rev() {
            let x = candle_core::Var::from_tensor(x)?;
            let y = self.block(self.from + i, x.as_tensor().clone())?;
            let grads = (y * &g)?.sum_all()?.backward()?;
            g = match grads.get(x.as_tensor()) {
                Some(t) => t.detach(),
                None => x.as_tensor().zeros_like()?,
            };
        }
        Ok(Some(g))
    }
}

/// Expected shape of every HF tensor for `spec`.
pub fn expected_shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let (d, f, v, hd) = (spec.hidden_size, spec.intermediate_size, spec.vocab_size, spec.head_dim);
    let (qd, kd) = (spec.n_heads * hd, spec.n_kv_heads * hd);
    names::hf_tensor_names(spec.arch, spec.n_layers, spec.tie_word_embeddings)
        .into_iter()
        .map(|n| {
            let s = match n.rsplit_once("model.layers.").map(|(_, r)| r.split_once('.').map(|x| x.1).unwrap_or("")).unwrap_or(&n) {
                "model.embed_tokens.weight" | "lm_head.weight" => vec![v, d],
                "model.norm.weight" => vec![d],
                "self_attn.q_proj.weight" => vec![qd, d],
                "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kd, d],
                "self_attn.o_proj.weight" => vec![d, qd],
                "self_attn.q_proj.bias" => vec![qd],
                "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kd],
                "self_attn.q_norm.weight" | "self_attn.k_norm.weight" => vec![hd],
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, d],
                "mlp.down_proj.weight" => vec![d, f],
                _ => vec![d], // layer norms
            };
            (n, s)
        })
        .collect()
}

impl Decoder {
    /// Build from HF-named f32 weights; checks that every tensor is present with the right shape.
    pub fn new(spec: ModelSpec, mut weights: HashMap<String, Tensor>, origin: &std::path::Path) -> Result<Self> {
        for (name, shape) in expected_shapes(&spec) {
            let t = weights.get(&name).ok_or_else(|| Error::MissingTensor { name: name.clone(), path: origin.into() })?;
            if t.dims() != shape.as_slice() {
                return Err(Error::TensorShape { name, path: origin.into(), got: t.dims().to_vec(), expected: shape });
            }
        }
        if spec.tie_word_embeddings {
            weights.remove("lm_head.weight");
        }
        let device = weights["model.embed_tokens.weight"].device().clone();
        let names = (0..spec.n_layers).map(LayerNames::new).collect();
        Ok(Decoder {
            spec,
            weights,
            names,
            masked_rows: MaskedRows::Zero,
            device,
            quant: HashMap::new(),
            quant_kernels: false,
            column_deltas: HashMap::new(),
            checkpoint_from: None,
            changed: Default::default(),
        })
    }

    /// A small random model (fixed seed) for tests: weights ~ N(0, 0.02·scale), norms = 1.
    pub fn random(spec: ModelSpec, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut w = HashMap::new();
        for (name, shape) in expected_shapes(&spec) {
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = if name.contains("norm") {
                vec![1.0 - spec.arch.spec().norm_weight_offset; n]
            } else {
                // Box-Muller from uniforms, scaled for unit-ish activations.
                (0..n)
                    .map(|_| {
                        let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
                        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos() * 0.2
                    })
                    .collect()
            };
            w.insert(name, Tensor::from_vec(vals, shape, &Device::Cpu)?);
        }
        Decoder::new(spec, w, std::path::Path::new("<random>"))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A weight by HF name (`lm_head.weight` resolves to the embedding when tied).
    /// A weight kept only in GGUF blocks is dequantized for the call (float32, dropped with the result).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let w = self.get_base(name)?;
        match self.column_deltas.get(self.key(name)) {
            Some(c) => Ok(w.index_add(&c.idx, &c.delta.to_dtype(w.dtype())?, 1)?),
            None => Ok(w),
        }
    }

    /// A weight without its column delta.
    fn get_base(&self, name: &str) -> Result<Tensor> {
        let name = self.key(name);
        if let Some(t) = self.weights.get(name) {
            return Ok(t.clone());
        }
        match self.quant.get(name) {
            Some(q) if q.only => {
                let mut v = q.stored.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
                crate::io::gguf::flush_denormals(&mut v);
                Ok(Tensor::from_vec(v, q.stored.shape().clone(), &Device::Cpu)?.to_device(&self.device)?)
            }
            _ => Err(Error::Input(format!("model has no tensor `{name}`"))),
        }
    }

    /// The map key of weight `name`: a tied `lm_head.weight` is the embedding.
    fn key<'a>(&self, name: &'a str) -> &'a str {
        if name == "lm_head.weight" && self.spec.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            name
        }
    }

    /// The weights held only in GGUF blocks, each once (a tied lm_head, which shares the embedding's
    /// blocks, left out).
    fn blocks_only(&self) -> impl Iterator<Item = (&String, &QWeight)> {
        self.quant.iter().filter(|(n, q)| q.only && self.key(n) == n.as_str())
    }

    /// Names of all weights (HF names; a tied lm_head not listed), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.weights.keys().cloned().collect();
        v.extend(self.blocks_only().map(|(n, _)| n.clone()));
        v.sort();
        v
    }

    /// Shape of a weight without reading it.
    pub fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let name = self.key(name);
        if let Some(t) = self.weights.get(name) {
            return Ok(t.dims().to_vec());
        }
        match self.quant.get(name) {
            Some(q) if q.only => Ok(q.stored.shape().dims().to_vec()),
            _ => Err(Error::Input(format!("model has no tensor `{name}`"))),
        }
    }

    /// Which form the frozen weights are in: `Native` when any weight is held only in GGUF blocks.
    pub fn weights_mode(&self) -> Weights {
        if self.blocks_only().next().is_some() {
            Weights::Native
        } else {
            Weights::F32
        }
    }

    /// Bytes the weights take in memory (float tensors plus GGUF blocks; a shared block tensor once).
    pub fn resident_bytes(&self) -> usize {
        let f: usize = self.weights.values().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
        let mut seen = std::collections::HashSet::new();
        let mut q = 0;
        for w in self.quant.values() {
            for t in [&w.stored, &w.fast] {
                if seen.insert(std::sync::Arc::as_ptr(t) as usize) {
                    q += t.storage_size_in_bytes();
                }
            }
            if let Some(p) = &w.packed {
                if seen.insert(std::sync::Arc::as_ptr(p) as usize) {
                    q += p.size_in_bytes();
                }
            }
        }
        f + q
    }

    fn opt(&self, name: &str) -> Option<&Tensor> {
        self.weights.get(name)
    }

    /// Hold `other`'s float tensor instead of this decoder's own wherever `same(name)` says the two hold
    /// equal values, both are float tensors of one shape and type, and this decoder keeps neither GGUF
    /// blocks nor a column delta for it: one copy of the unchanged weights in memory instead of two (an
    /// edited model beside its base). Returns how many tensors are now shared.
    pub fn share_equal(&mut self, other: &Decoder, same: impl Fn(&str) -> bool) -> usize {
        let mut n = 0;
        for (name, t) in self.weights.iter_mut() {
            let Some(o) = other.weights.get(name) else { continue };
            if t.dtype() == o.dtype()
                && t.dims() == o.dims()
                && !t.is_variable()
                && !self.quant.contains_key(name)
                && !self.column_deltas.contains_key(name)
                && same(name)
            {
                *t = o.clone();
                n += 1;
            }
        }
        n
    }

    /// Replace a weight (same shape), e.g. with a `Var` to make it trainable or with an edited value.
    pub fn set(&mut self, name: &str, t: Tensor) -> Result<()> {
        let old = self.shape_of(name)?;
        if old != t.dims() {
            return Err(Error::Input(format!("tensor `{name}` has shape {:?}; got {:?}", old, t.dims())));
        }
        let key = self.key(name).to_string();
        self.weights.insert(key.clone(), t);
        self.column_deltas.remove(&key);
        self.quant.remove(name);
        self.changed.insert(name.to_string());
        self.changed.insert(key.clone());
        if key != name || (self.spec.tie_word_embeddings && name == "model.embed_tokens.weight") {
            self.quant.remove("lm_head.weight");
            self.changed.insert("lm_head.weight".into());
        }
        Ok(())
    }

    /// Add `delta` (out, |columns|) to the columns `columns` of the linear weight `name` (out, in) without
    /// materializing the changed weight: the linear becomes `x W^T + x[.., columns] delta^T`, so the weight
    /// itself stays as held (GGUF blocks or float32, shared with the original model) and a trainable
    /// `delta` carries the gradient. What an edit of a few hotspot columns trains: a (d, k) tensor instead
    /// of a float32 copy of the whole (d, f) weight with its optimizer state. [`Decoder::get`] returns
    /// the weight with the delta added; [`Decoder::set`] drops it. Replaces an earlier delta of `name`.
    pub fn set_column_delta(&mut self, name: &str, columns: &[usize], delta: Tensor) -> Result<()> {
        let shape = self.shape_of(name)?;
        if shape.len() != 2 || name.ends_with("embed_tokens.weight") || self.key(name) != name {
            return Err(Error::Input(format!("a column delta needs a linear weight; `{name}` has shape {shape:?}")));
        }
        if delta.dims() != [shape[0], columns.len()] {
            return Err(Error::Input(format!(
                "column delta for `{name}` ({shape:?}) must be ({}, {}); got {:?}",
                shape[0],
                columns.len(),
                delta.dims()
            )));
        }
        if let Some(&c) = columns.iter().find(|&&c| c >= shape[1]) {
            return Err(Error::Input(format!("column {c} is outside `{name}` ({shape:?})")));
        }
        let idx = index_tensor(columns, &self.device)?;
        self.column_deltas.insert(name.to_string(), ColumnDelta { idx, delta });
        self.changed.insert(name.to_string());
        Ok(())
    }

    /// Gradient checkpointing for the blocks `from..` (None = off): when a forward pass carries a gradient
    /// and records nothing there, those blocks run as one op that keeps only each block's input
    /// residual (b, s, d) and, in the backward pass, recomputes one block at a time with its graph to
    /// carry the gradient down. Only for blocks without trainable tensors (an edit's blocks above its
    /// highest edited layer): the op passes the gradient to its input alone. Memory for the activations
    /// of those blocks drops from all of them to one; the price is one more forward of them per backward.
    pub fn set_checkpoint_from(&mut self, from: Option<usize>) {
        self.checkpoint_from = from;
    }

    /// Use the GGUF file's quantized blocks for the linear layers on inference-only paths (no tensor
    /// on the path carries a gradient): activations are quantized to 8 bits as llama.cpp does, so
    /// outputs differ from the float32 path by quantization noise, and decoding reads ~4-8x fewer bytes.
    /// Weights changed since loading (edited, given a column delta, trainable) stay exact: they no longer
    /// hold the file's values. `g` must be the file the model was loaded from. Returns the number of
    /// weights attached.
    pub fn attach_quantized(&mut self, g: &crate::io::gguf::GgufFile) -> Result<usize> {
        // A trainable weight (a Var), a changed one or one already held in blocks keeps what it has; only
        // the others' blocks are read (and repacked), so a natively held model costs nothing here.
        let wanted =
            |hf: &str| self.weights.get(hf).is_some_and(|t| !t.track_op()) && !self.quant.contains_key(hf) && !self.changed.contains(hf);
        for (hf, w) in gguf_linear_blocks(g, &self.spec, true, wanted)? {
            self.quant.insert(hf, QWeight { only: false, ..w });
        }
        if self.spec.tie_word_embeddings
            && !self.changed.contains("lm_head.weight")
            && !self.quant.contains_key("lm_head.weight")
            && self.weights.contains_key("model.embed_tokens.weight")
        {
            if let Some((_, w)) = gguf_blocks(g, &self.spec, "token_embd.weight", true)? {
                self.quant.insert("lm_head.weight".into(), QWeight { only: false, ..w });
            }
        }
        self.quant_kernels = true;
        Ok(self.quant.len())
    }

    /// Drop the quantized copies of float32 weights and compute every linear exactly (float32 matmuls;
    /// weights held only in GGUF blocks, [`Weights::Native`], are dequantized one product at a time).
    pub fn detach_quantized(&mut self) {
        self.quant.retain(|_, q| q.only);
        self.quant_kernels = false;
    }

    /// Whether paths without gradients run some linear through quantized kernels.
    pub fn kernels_on(&self) -> bool {
        self.quant_kernels && !self.quant.is_empty()
    }

    /// This model with every linear computed exactly (see [`Decoder::detach_quantized`]): what locate
    /// and edit run on, so that a natively held model gives the float32 path's numbers.
    pub fn exact(&self) -> Decoder {
        let mut m = self.clone();
        m.detach_quantized();
        m
    }

    /// Build from a GGUF file keeping every linear weight and the embedding in their blocks (see
    /// [`Weights::Native`]); the rest (norms, biases, float32-stored tensors) is float32. Tensors stored as
    /// Q8_0 are not repacked for the int8 kernel (that would be a second copy of them): they run on candle's.
    pub fn from_gguf_native(g: &crate::io::gguf::GgufFile, spec: ModelSpec) -> Result<Self> {
        let blocks = gguf_linear_blocks(g, &spec, false, |_| true)?;
        let embed = gguf_blocks(g, &spec, "token_embd.weight", false)?;
        let small = crate::io::checkpoint::load_gguf_weights_except(g, &spec, |hf| {
            blocks.iter().any(|(n, _)| n == hf) || embed.as_ref().is_some_and(|(n, _)| n == hf)
        })?;
        let mut quant: HashMap<String, QWeight> = blocks.into_iter().collect();
        if let Some((hf, w)) = embed {
            quant.insert(hf, w);
        }
        Self::with_blocks(spec, small, quant, &g.path)
    }

    /// A decoder whose linear weights and embedding are the half-precision tensors of a HF folder kept as
    /// stored (F16/BF16 `QTensor`s: exact, half the bytes of float32), the rest float32. The same machinery
    /// as GGUF blocks: exact linears for locate and edit, candle's F16/BF16 kernels for generation.
    pub fn from_hf_native(
        spec: ModelSpec,
        floats: HashMap<String, Tensor>,
        halves: HashMap<String, candle_core::quantized::QTensor>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        let quant = halves
            .into_iter()
            .map(|(n, q)| {
                let q = std::sync::Arc::new(q);
                (n, QWeight { stored: q.clone(), fast: q, packed: None, only: true })
            })
            .collect();
        Self::with_blocks(spec, floats, quant, origin)
    }

    /// A natively held decoder from its float tensors and its blocks-only weights (a tied head shares the
    /// embedding's blocks); shapes checked as [`Decoder::new`] checks them.
    fn with_blocks(
        spec: ModelSpec,
        small: HashMap<String, Tensor>,
        mut quant: HashMap<String, QWeight>,
        origin: &std::path::Path,
    ) -> Result<Self> {
        if spec.tie_word_embeddings {
            if let Some(w) = quant.get("model.embed_tokens.weight").cloned() {
                quant.insert("lm_head.weight".into(), w);
            }
        }
        for (name, shape) in expected_shapes(&spec) {
            let got = match (small.get(&name), quant.get(&name)) {
                (Some(t), _) => t.dims().to_vec(),
                (None, Some(q)) => q.stored.shape().dims().to_vec(),
                (None, None) if name == "lm_head.weight" && spec.tie_word_embeddings => continue,
                (None, None) => return Err(Error::MissingTensor { name, path: origin.into() }),
            };
            if got != shape {
                return Err(Error::TensorShape { name, path: origin.into(), got, expected: shape });
            }
        }
        let names = (0..spec.n_layers).map(LayerNames::new).collect();
        Ok(Decoder {
            spec,
            weights: small,
            names,
            masked_rows: MaskedRows::Zero,
            device: Device::Cpu,
            quant,
            quant_kernels: true,
            column_deltas: HashMap::new(),
            checkpoint_from: None,
            changed: Default::default(),
        })
    }

    /// `x @ W^T (+ b)` for the weight `name`: through candle's quantized kernels when they are on and no
    /// gradient flows through `x`; exactly on the dequantized blocks ([`QuantLinear`](super::ops::QuantLinear),
    /// which also carries `x`'s gradient) when the blocks are the weight's only form; else the float32 weight.
    fn lin(&self, x: &Tensor, name: &str, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = self.lin_base(x, name, bias)?;
        match self.column_deltas.get(name) {
            Some(c) => {
                let xc = x.index_select(&c.idx, x.rank() - 1)?;
                Ok((y + linear(&xc, &c.delta.to_dtype(x.dtype())?, None)?)?)
            }
            None => Ok(y),
        }
    }

    /// [`Decoder::lin`] without the weight's column delta.
    fn lin_base(&self, x: &Tensor, name: &str, bias: Option<&Tensor>) -> Result<Tensor> {
        if let Some(q) = self.quant.get(name) {
            if self.quant_kernels && !x.track_op() {
                let x = x.contiguous()?;
                let y = match &q.packed {
                    Some(p) => x.apply_op1_no_bwd(p.as_ref())?,
                    None => x.apply_op1_no_bwd(q.fast.as_ref())?,
                };
                return Ok(match bias {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                });
            }
            if q.only {
                return super::ops::quant_linear(x, &q.stored, bias);
            }
        }
        linear(x, &self.get_base(name)?, bias)
    }

    /// Embedding rows for `ids` (flat): (n, d).
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        const E: &str = "model.embed_tokens.weight";
        if let Some(t) = self.weights.get(E) {
            return Ok(t.index_select(ids, 0)?);
        }
        match self.quant.get(E) {
            Some(q) => Ok(q.stored.embedding(ids)?),
            None => Err(Error::Input(format!("model has no tensor `{E}`"))),
        }
    }

    /// An identity of this decoder's weights within the process, for memoizing work that depends on the
    /// weights alone (never persisted): clones that share every weight have the same one; a weight set,
    /// edited or given a column delta is a new tensor (candle never reuses a tensor id), so any change
    /// gives another.
    pub fn weights_identity(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut w: Vec<_> = self.weights.iter().map(|(n, t)| (n.as_str(), t.id())).collect();
        w.sort_unstable_by(|a, b| a.0.cmp(b.0));
        w.hash(&mut h);
        let mut q: Vec<_> = self
            .quant
            .iter()
            .map(|(n, q)| (n.as_str(), std::sync::Arc::as_ptr(&q.stored) as usize, std::sync::Arc::as_ptr(&q.fast) as usize))
            .collect();
        q.sort_unstable();
        q.hash(&mut h);
        let mut c: Vec<_> = self.column_deltas.iter().map(|(n, d)| (n.as_str(), d.idx.id(), d.delta.id())).collect();
        c.sort_unstable_by(|a, b| a.0.cmp(b.0));
        c.hash(&mut h);
        (self.quant_kernels, format!("{:?}", self.masked_rows)).hash(&mut h);
        h.finish()
    }

    /// The float weights, by HF name (tied lm_head not repeated): every weight with [`Weights::F32`];
    /// with [`Weights::Native`] only those not held in GGUF blocks (see [`Decoder::names`]).
    pub fn weights(&self) -> &HashMap<String, Tensor> {
        &self.weights
    }

    /// Move all weights to `device`.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        if !device.is_cpu() && self.weights_mode() == Weights::Native {
            return Err(Error::Input(
                "weights held as stored (--weights native) run on the CPU only for now; use --weights f32 on a GPU".into(),
            ));
        }
        for t in self.weights.values_mut() {
            *t = t.to_device(device)?;
        }
        for c in self.column_deltas.values_mut() {
            c.idx = c.idx.to_device(device)?;
            c.delta = c.delta.to_device(device)?;
        }
        self.device = device.clone();
        Ok(())
    }

    /// Convert all weights to `dtype` (f64 gives a low-noise reference for numerical checks).
    pub fn to_dtype(&mut self, dtype: DType) -> Result<()> {
        for t in self.weights.values_mut() {
            *t = t.to_dtype(dtype)?;
        }
        for c in self.column_deltas.values_mut() {
            c.delta = c.delta.to_dtype(dtype)?;
        }
        Ok(())
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.weights["model.norm.weight"].dtype()
    }

    /// Number of parameters (tied head counted once).
    pub fn n_params(&self) -> usize {
        let q: usize = self.blocks_only().map(|(_, q)| q.stored.shape().elem_count()).sum();
        self.weights.values().map(|t| t.elem_count()).sum::<usize>() + q
    }

    fn build_mask(&self, input: &Input, cache_len: usize, key_mask: &[Vec<u8>], window: Option<usize>) -> Result<(Tensor, Option<Tensor>)> {
        let b = input.ids.len();
        let s = input.ids[0].len();
        let t = cache_len + s;
        let mut m = vec![0f32; b * s * t];
        let mut valid = vec![1f32; b * s];
        let mut any_invalid = false;
        for bi in 0..b {
            for i in 0..s {
                let qi = cache_len + i;
                let mut any = false;
                for j in 0..t {
                    let ok = j <= qi && key_mask[bi][j] != 0 && window.is_none_or(|w| qi - j < w);
                    if ok {
                        any = true;
                    } else {
                        m[(bi * s + i) * t + j] = -1e30;
                    }
                }
                if !any {
                    valid[bi * s + i] = 0.0;
                    any_invalid = true;
                }
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, s, t), &self.device)?.to_dtype(self.dtype())?;
        let rows = if any_invalid && self.masked_rows == MaskedRows::Zero {
            Some(Tensor::from_vec(valid, (b, 1, s, 1), &self.device)?.to_dtype(self.dtype())?)
        } else {
            None
        };
        Ok((mask, rows))
    }

    /// Run the decoder. Returns the final-normed hidden states (b, s, d), or the residual stream after
    /// block `rec.stop_after()` if the recorder stops early. With a cache, keys/values are appended.
    pub fn forward_with(&self, input: &Input, rec: &mut dyn Recorder, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let spec = &self.spec;
        let arch = spec.arch.spec();
        let off = arch.norm_weight_offset;
        let eps = spec.rms_norm_eps;
        let b = input.ids.len();
        if b == 0 || input.ids[0].is_empty() {
            return Err(Error::Input("empty input: no tokens to run".into()));
        }
        let s = input.ids[0].len();
        if input.ids.iter().any(|r| r.len() != s) {
            return Err(Error::Input("batch rows must have equal length (pad them)".into()));
        }
        let cache_len = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let total = cache_len + s;
        if total > spec.max_position_embeddings {
            return Err(Error::ContextOverflow { len: total, ctx: spec.max_position_embeddings, extra: String::new() });
        }
        for row in &input.ids {
            if let Some(&bad) = row.iter().find(|&&id| id as usize >= spec.vocab_size) {
                return Err(Error::Input(format!("token id {bad} is outside the vocabulary of {}", spec.vocab_size)));
            }
        }
        let new_mask: Vec<Vec<u8>> = input.mask.clone().unwrap_or_else(|| vec![vec![1u8; s]; b]);
        let key_mask: Vec<Vec<u8>> = match cache.as_ref() {
            Some(c) if !c.key_mask.is_empty() => {
                c.key_mask.iter().zip(&new_mask).map(|(a, n)| a.iter().chain(n).copied().collect()).collect()
            }
            _ => new_mask.clone(),
        };
        let positions: Vec<Vec<u32>> = input.positions.clone().unwrap_or_else(|| vec![(cache_len as u32..total as u32).collect(); b]);

        let (mask_full, rows_full) = self.build_mask(input, cache_len, &key_mask, None)?;
        let sliding = (0..spec.n_layers).any(|l| spec.window_of(l).is_some_and(|w| w < total));
        let (mask_slide, rows_slide) = if sliding {
            self.build_mask(input, cache_len, &key_mask, spec.sliding_window)?
        } else {
            (mask_full.clone(), rows_full.clone())
        };
        let mut tables: HashMap<u64, (Tensor, Tensor)> = HashMap::new();

        let (first_layer, mut h) = match &input.resume {
            Some((l0, h0)) => {
                if cache.is_some() || *l0 > spec.n_layers || h0.dims() != [b, s, spec.hidden_size] {
                    return Err(Error::Input(format!(
                        "cannot resume at block {l0} from a {:?} residual (with a cache: {})",
                        h0.dims(),
                        cache.is_some()
                    )));
                }
                (*l0, h0.clone())
            }
            None => {
                // Embedding: (b, s, d)
                let flat: Vec<u32> = input.ids.iter().flatten().copied().collect();
                let ids = Tensor::from_vec(flat, b * s, &self.device)?;
                let mut h = self.embed(&ids)?.reshape((b, s, spec.hidden_size))?;
                if arch.embed_scale {
                    let scale = (spec.hidden_size as f64).sqrt() as f32;
                    h = (h * scale as f64)?;
                }
                if rec.wants(Site::Embed) {
                    h = rec.on(Site::Embed, h)?;
                }
                (0, h)
            }
        };
        let (nh, nkv, hd) = (spec.n_heads, spec.n_kv_heads, spec.head_dim);
        let stop = rec.stop_after();
        for (l, nm) in self.names.iter().enumerate().skip(first_layer) {
            if self.checkpoint_from == Some(l) && cache.is_none() && h.track_op() && !self.records_from(rec, l) {
                let op = Checkpointed {
                    dec: Decoder { checkpoint_from: None, quant_kernels: false, ..self.clone() },
                    ids: input.ids.clone(),
                    mask: input.mask.clone(),
                    positions: input.positions.clone(),
                    from: l,
                    saved: std::sync::Mutex::new(Vec::new()),
                };
                h = h.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(op)))?;
                break;
            }
            let theta = spec.rope_theta_of(l);
            if let std::collections::hash_map::Entry::Vacant(e) = tables.entry(theta.to_bits()) {
                let (c, si) = rope_tables(&positions, hd, theta, &self.device)?;
                e.insert((c.to_dtype(self.dtype())?, si.to_dtype(self.dtype())?));
            }
            let (cos, sin) = &tables[&theta.to_bits()];
            let (mask, rows) = if spec.window_of(l).is_some() { (&mask_slide, &rows_slide) } else { (&mask_full, &rows_full) };

            // --- attention ---
            let x = rms_norm(&h, &self.get(&nm.input_layernorm)?, off, eps)?;
            let q = self.lin(&x, &nm.q_proj, self.opt(&nm.q_bias))?.reshape((b, s, nh, hd))?;
            let k = self.lin(&x, &nm.k_proj, self.opt(&nm.k_bias))?.reshape((b, s, nkv, hd))?;
            let v = self.lin(&x, &nm.v_proj, self.opt(&nm.v_bias))?.reshape((b, s, nkv, hd))?;
            let (q, k) = if arch.qk_norm {
                (rms_norm(&q, &self.get(&nm.q_norm)?, off, eps)?, rms_norm(&k, &self.get(&nm.k_norm)?, off, eps)?)
            } else {
                (q, k)
            };
            let q = rope(&q.transpose(1, 2)?.contiguous()?, cos, sin)?; // (b, nh, s, hd)
            let k = rope(&k.transpose(1, 2)?.contiguous()?, cos, sin)?; // (b, nkv, s, hd)
            let v = v.transpose(1, 2)?.contiguous()?; // (b, nkv, s, hd)
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.append(l, &k, &v)?,
                None => (k, v),
            };
            // Grouped-query attention without copying keys and values per head: query heads
            // g*rep .. (g+1)*rep read kv head g, so (b, nh, s, hd) is viewed as (b, nkv, rep*s, hd).
            let rep = nh / nkv;
            let t = k.dim(2)?;
            let qg = q.reshape((b, nkv, rep * s, hd))?;
            let scores = (qg.matmul(&k.t()?)? * spec.attn_scale)?.reshape((b, nh, s, t))?;
            let scores = scores.broadcast_add(mask)?;
            let probs = softmax_last(&scores)?;
            let mut att = probs.reshape((b, nkv, rep * s, t))?.matmul(&v)?.reshape((b, nh, s, hd))?;
            if let Some(r) = rows {
                att = att.broadcast_mul(r)?;
            }
            let att = att.transpose(1, 2)?.reshape((b, s, nh * hd))?;
            let mut att = self.lin(&att, &nm.o_proj, None)?;
            if arch.sandwich_norms {
                att = rms_norm(&att, &self.get(&nm.post_attention_layernorm)?, off, eps)?;
            }
            if rec.wants(Site::AttnOut(l)) {
                att = rec.on(Site::AttnOut(l), att)?;
            }
            h = (h + att)?;

            // --- MLP ---
            let pre = if arch.sandwich_norms { &nm.pre_feedforward_layernorm } else { &nm.post_attention_layernorm };
            let mut x = rms_norm(&h, &self.get(pre)?, off, eps)?;
            if rec.wants(Site::MlpIn(l)) {
                x = rec.on(Site::MlpIn(l), x)?;
            }
            let gate = self.lin(&x, &nm.gate_proj, None)?;
            let gate = match spec.act {
                Act::Silu => gate.silu()?,
                Act::GeluTanh => gate.gelu()?,
            };
            let mut act = (gate * self.lin(&x, &nm.up_proj, None)?)?; // (b, s, d_ff)
            if rec.wants(Site::MlpAct(l)) {
                act = rec.on(Site::MlpAct(l), act)?;
            }
            let mut mlp = self.lin(&act, &nm.down_proj, None)?;
            if rec.wants(Site::MlpDown(l)) {
                mlp = rec.on(Site::MlpDown(l), mlp)?;
            }
            if arch.sandwich_norms {
                mlp = rms_norm(&mlp, &self.get(&nm.post_feedforward_layernorm)?, off, eps)?;
            }
            if rec.wants(Site::MlpOut(l)) {
                mlp = rec.on(Site::MlpOut(l), mlp)?;
            }
            h = (h + mlp)?;
            if rec.wants(Site::ResidPost(l)) {
                h = rec.on(Site::ResidPost(l), h)?;
            }
            if stop == Some(l) {
                if let Some(c) = cache {
                    c.key_mask = key_mask;
                }
                return Ok(h);
            }
        }
        if let Some(c) = cache {
            c.key_mask = key_mask;
        }
        let mut h = rms_norm(&h, &self.get("model.norm.weight")?, off, eps)?;
        if rec.wants(Site::FinalNorm) {
            h = rec.on(Site::FinalNorm, h)?;
        }
        Ok(h)
    }

    /// Whether `rec` records or stops at block `from` or above.
    fn records_from(&self, rec: &dyn Recorder, from: usize) -> bool {
        rec.stop_after().is_some_and(|s| s >= from)
            || rec.wants(Site::FinalNorm)
            || (from..self.spec.n_layers).any(|l| {
                [Site::AttnOut(l), Site::MlpIn(l), Site::MlpAct(l), Site::MlpDown(l), Site::MlpOut(l), Site::ResidPost(l)]
                    .into_iter()
                    .any(|x| rec.wants(x))
            })
    }

    /// Run without recording.
    pub fn forward(&self, input: &Input) -> Result<Tensor> {
        self.forward_with(input, &mut crate::trace::Noop, None)
    }

    /// Logits for hidden states `h` (.., d) -> (.., vocab). Compute them only for the positions a loss
    /// or a decision reads: over a 150k-262k vocabulary they dominate the cost.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        self.lin(h, "lm_head.weight", None)
    }

    /// Logits at the last position of each row: (b, vocab).
    pub fn last_logits(&self, h: &Tensor) -> Result<Tensor> {
        let s = h.dim(1)?;
        self.logits(&h.narrow(1, s - 1, 1)?.squeeze(1)?)
    }
}

/// A GGUF tensor in its blocks (q/k rows un-permuted as [`names::unpermute_qk`] does, moving whole rows
/// of blocks, which is exact), with its `fast` twin: Q4_1, Q5_0 and Q5_1 have no SIMD dot products in
/// candle, so their matmuls run on a Q8_0 copy (8.5 bits, still 4x fewer bytes than f32). None for a
/// tensor stored as float (F32/F16/BF16), which the float path handles. Where pke's int8 kernel runs
/// ([`super::int8`]), the Q8_0 values are repacked for it instead; `pack_q8` also repacks a tensor stored as
/// Q8_0 (a second copy of it: not for natively held models, where memory is the point).
fn gguf_blocks(g: &crate::io::gguf::GgufFile, spec: &ModelSpec, gname: &str, pack_q8: bool) -> Result<Option<(String, QWeight)>> {
    use candle_core::quantized::{GgmlDType, QTensor};
    let Some(hf) = names::gguf_to_hf(spec.arch, gname) else { return Ok(None) };
    if !g.content.tensor_infos.contains_key(gname) {
        return Ok(None);
    }
    let (bytes, dtype, dims) = g.tensor_bytes(gname)?;
    if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
        return Ok(None);
    }
    let q = match names::qk_permutation_heads(spec.arch.spec(), &hf, spec.n_heads, spec.n_kv_heads) {
        Some(heads) => {
            let rows = dims[0];
            let row_bytes = bytes.len() / rows;
            let order = names::unpermute_qk(&Tensor::arange(0f32, rows as f32, &Device::Cpu)?.reshape((rows, 1))?, heads)?;
            let mut out = Vec::with_capacity(bytes.len());
            for r in order.flatten_all()?.to_vec1::<f32>()? {
                let r = r as usize;
                out.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
            }
            candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &out, dims, &Device::Cpu)?
        }
        None => g.qtensor(gname)?,
    };
    g.release(gname);
    let stored = std::sync::Arc::new(q);
    // `PackedQ8::for_kernels` re-quantizes the Q4/Q5 types to Q8_0 itself, and only where it packs.
    let packable =
        matches!(dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1) || (dtype == GgmlDType::Q8_0 && pack_q8);
    let packed = if packable { super::int8::PackedQ8::for_kernels(&stored)?.map(std::sync::Arc::new) } else { None };
    let fast = match dtype {
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 if packed.is_none() => {
            std::sync::Arc::new(QTensor::quantize(&stored.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?)
        }
        _ => stored.clone(),
    };
    Ok(Some((hf, QWeight { stored, fast, packed, only: true })))
}

/// The linear weights of a GGUF file that `wanted` asks for (by HF name), in their blocks (see
/// [`gguf_blocks`]); the others are not read.
fn gguf_linear_blocks(
    g: &crate::io::gguf::GgufFile,
    spec: &ModelSpec,
    pack_q8: bool,
    wanted: impl Fn(&str) -> bool,
) -> Result<Vec<(String, QWeight)>> {
    let mut out = Vec::new();
    for gname in g.tensor_names() {
        let Some(hf) = names::gguf_to_hf(spec.arch, gname) else { continue };
        if is_linear_weight(&hf) && wanted(&hf) {
            if let Some(w) = gguf_blocks(g, spec, gname, pack_q8)? {
                out.push(w);
            }
        }
    }
    Ok(out)
}

/// `idx` as a u32 index tensor (for `index_select` / `index_add`).
pub fn index_tensor(idx: &[usize], dev: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(idx.iter().map(|&i| i as u32).collect::<Vec<_>>(), idx.len(), dev)?)
}

/// Whether an HF weight is a linear layer's (the weights held in blocks with `Weights::Native`, with the
/// embedding).
pub fn is_linear_weight(name: &str) -> bool {
    name.ends_with("_proj.weight") || name == "lm_head.weight"
}

/// Gather rows `idx` of a (n, ..) tensor.
pub fn gather_rows(t: &Tensor, idx: &[u32]) -> Result<Tensor> {
    let i = Tensor::from_vec(idx.to_vec(), idx.len(), t.device())?;
    Ok(t.index_select(&i, 0)?)
}

/// Make `names` trainable: each becomes a fresh `Var` holding the same values. Returns the Vars.
pub fn make_trainable(model: &mut Decoder, names: &[String]) -> Result<Vec<(String, candle_core::Var)>> {
    let mut out = Vec::new();
    for n in names {
        let v = candle_core::Var::from_tensor(&model.get(n)?.detach().to_dtype(DType::F32)?)?;
        model.set(n, v.as_tensor().clone())?;
        out.push((n.clone(), v));
    }
    Ok(out)
}

/// Per-token log-probabilities of `targets` given logits (n, V): -NLL terms, computed stably.
pub fn token_logprobs(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let lsm = super::ops::log_softmax_last(logits)?;
    let idx = Tensor::from_vec(targets.to_vec(), (targets.len(), 1), logits.device())?;
    Ok(lsm.gather(&idx, D::Minus1)?.squeeze(D::Minus1)?)
}
