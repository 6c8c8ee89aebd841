//! Provides synthetic checkpoints: a GGUF with the exact configuration of a large model (Llama-2-7B,
//! Llama-3-8B, Mistral-7B) and random weights from a fixed seed, stored as llama.cpp stores them (Q4_K_M or
//! Q8_0), with a real tokenizer copied from an installed model. No 7-8B checkpoint can be fetched here;
//! these files benchmark the mechanics at full size (loading, memory, locate and edit time, decode speed)
//! and make no claim about quality: the weights are noise.
//!
//! The file is written as a stream (header, then one tensor at a time), so writing an 8B model needs no
//! more memory than its largest tensor.

use std::io::{Seek, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;

use crate::io::gguf::{ggml_nbytes, GgufFile};
use crate::{Error, Result};

/// A model configuration (llama architecture in GGUF; Mistral is stored as `llama` by llama.cpp too).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SynthShape {
    pub name: &'static str,
    pub hidden: usize,
    pub ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// The real model's vocabulary (the file's comes from the tokenizer it borrows).
    pub vocab: usize,
    pub context: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The installed model whose tokenizer is borrowed by default (the one with the closest vocabulary).
    pub tokenizer: &'static str,
}

/// The shapes: the published `config.json` values of each model.
pub const SHAPES: &[SynthShape] = &[
    SynthShape {
        name: "llama-2-7b",
        hidden: 4096,
        ff: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        vocab: 32000,
        context: 4096,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tokenizer: "smollm2",
    },
    SynthShape {
        name: "llama-3-8b",
        hidden: 4096,
        ff: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        vocab: 128256,
        context: 8192,
        rope_theta: 500_000.0,
        rms_eps: 1e-5,
        tokenizer: "qwen2.5-0.5b",
    },
    SynthShape {
        name: "mistral-7b",
        hidden: 4096,
        ff: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        vocab: 32000,
        context: 32768,
        rope_theta: 1_000_000.0,
        rms_eps: 1e-5,
        tokenizer: "smollm2",
    },
    // For planning only (`pke plan --shape`): 141 GB as float32.
    SynthShape {
        name: "llama-3-70b",
        hidden: 8192,
        ff: 28672,
        layers: 80,
        heads: 64,
        kv_heads: 8,
        vocab: 128256,
        context: 8192,
        rope_theta: 500_000.0,
        rms_eps: 1e-5,
        tokenizer: "qwen2.5-0.5b",
    },
    // A small shape with the same layout, for tests.
    SynthShape {
        name: "tiny",
        hidden: 256,
        ff: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 0,
        context: 2048,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        tokenizer: "smollm2",
    },
];

/// A shape by name, or an error listing them.
pub fn shape(name: &str) -> Result<&'static SynthShape> {
    SHAPES
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Input(format!("unknown shape `{name}` ({})", SHAPES.iter().map(|s| s.name).collect::<Vec<_>>().join(", "))))
}

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum SynthType {
    /// llama.cpp's Q4_K_M mix: Q4_K, with `attn_v` and `ffn_down` in Q6_K on the layers llama.cpp gives
    /// more bits, and the output matrix in Q6_K.
    Q4KM,
    Q8_0,
}

impl std::str::FromStr for SynthType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q4_k_m" => Ok(SynthType::Q4KM),
            "q8_0" => Ok(SynthType::Q8_0),
            o => Err(Error::Input(format!("unknown synthetic weight type `{o}` (q4_k_m, q8_0)"))),
        }
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third in between.
fn more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Parameters and Q4_K_M bytes of a shape with its own vocabulary (for `pke plan --shape`).
pub fn shape_size(s: &SynthShape) -> (usize, u64) {
    tensor_plan(s, s.vocab.max(1), SynthType::Q4KM).iter().fold((0, 0), |(n, b), (_, shape, t)| {
        let k: usize = shape.iter().product();
        (n + k, b + ggml_nbytes(*t, k).unwrap_or(0) as u64)
    })
}

/// The tensors (GGUF name, candle-order shape [rows, cols], type) of a shape with `vocab` tokens.
pub fn tensor_plan(s: &SynthShape, vocab: usize, ty: SynthType) -> Vec<(String, Vec<usize>, GgmlDType)> {
    let hd = s.hidden / s.heads;
    let (base, more) = match ty {
        SynthType::Q4KM => (GgmlDType::Q4K, GgmlDType::Q6K),
        SynthType::Q8_0 => (GgmlDType::Q8_0, GgmlDType::Q8_0),
    };
    let mut v = vec![("token_embd.weight".to_string(), vec![vocab, s.hidden], base)];
    for i in 0..s.layers {
        let b = |n: &str| format!("blk.{i}.{n}.weight");
        let mb = if more_bits(i, s.layers) { more } else { base };
        v.push((b("attn_norm"), vec![s.hidden], GgmlDType::F32));
        v.push((b("attn_q"), vec![s.heads * hd, s.hidden], base));
        v.push((b("attn_k"), vec![s.kv_heads * hd, s.hidden], base));
        v.push((b("attn_v"), vec![s.kv_heads * hd, s.hidden], mb));
        v.push((b("attn_output"), vec![s.hidden, s.heads * hd], base));
        v.push((b("ffn_norm"), vec![s.hidden], GgmlDType::F32));
        v.push((b("ffn_gate"), vec![s.ff, s.hidden], base));
        v.push((b("ffn_up"), vec![s.ff, s.hidden], base));
        v.push((b("ffn_down"), vec![s.hidden, s.ff], mb));
    }
    v.push(("output_norm.weight".to_string(), vec![s.hidden], GgmlDType::F32));
    v.push(("output.weight".to_string(), vec![vocab, s.hidden], more));
    v
}

/// GGML type ids as the GGUF format numbers them.
fn ggml_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// GGUF value type ids.
fn value_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&x.to_le_bytes()),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(b) => w.write_all(&[*b as u8]),
        Value::String(s) => write_str(w, s),
        Value::Array(a) => {
            w.write_all(&a.first().map_or(0, value_id).to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            a.iter().try_for_each(|x| write_value(w, x))
        }
    }
}

/// SplitMix64: fast, seeded, good enough for noise and for fixed example orders.
pub(crate) struct SplitMix64(pub(crate) u64);
impl SplitMix64 {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }
}

/// Random blocks of `t` holding `n` values: random quants with fixed block scales chosen so that the
/// weights are centred with a standard deviation near 0.02 (a typical initialisation); F32 = ones (norms).
fn random_tensor(t: GgmlDType, n: usize, rng: &mut SplitMix64) -> Vec<u8> {
    let nbytes = ggml_nbytes(t, n).expect("planned shapes fit their blocks");
    if t == GgmlDType::F32 {
        return std::iter::repeat_n(1f32.to_le_bytes(), n).flatten().collect();
    }
    let mut buf = vec![0u8; nbytes];
    rng.fill(&mut buf);
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    match t {
        // block_q4_K: d, dmin (f16), scales[12], qs[128]; w = d*sc*q - dmin*m, centred by dmin = 7.5 d.
        GgmlDType::Q4K => buf.chunks_exact_mut(144).for_each(|b| {
            b[0..2].copy_from_slice(&f16(5e-5));
            b[2..4].copy_from_slice(&f16(3.75e-4));
        }),
        // block_q6_K: ql[128], qh[64], scales[16] (i8), d (f16); w = d*scale*(q-32).
        GgmlDType::Q6K => buf.chunks_exact_mut(210).for_each(|b| b[208..210].copy_from_slice(&f16(1.5e-5))),
        // block_q8_0: d (f16), qs[32] (i8).
        GgmlDType::Q8_0 => buf.chunks_exact_mut(34).for_each(|b| b[0..2].copy_from_slice(&f16(2.7e-4))),
        other => unreachable!("no synthetic blocks for {other:?}"),
    }
    buf
}

/// Write a synthetic GGUF at `path` (atomically): `shape`'s configuration with `tokenizer`'s tokenizer (every
/// `tokenizer.*` key copied), random weights from `seed`. Returns the number of parameters written.
pub fn write_synthetic(s: &SynthShape, ty: SynthType, tokenizer: &GgufFile, seed: u64, path: &Path) -> Result<usize> {
    let vocab = match tokenizer.meta("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) if !a.is_empty() => a.len(),
        _ => {
            return Err(Error::GgufKey {
                path: tokenizer.path.clone(),
                key: "tokenizer.ggml.tokens".into(),
                msg: "missing or empty: no tokenizer to borrow".into(),
            })
        }
    };
    let hd = s.hidden / s.heads;
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String(format!("pke synthetic {} (random weights, seed {seed})", s.name))),
        ("general.file_type".into(), Value::U32(if ty == SynthType::Q4KM { 15 } else { 7 })),
        ("llama.context_length".into(), Value::U32(s.context as u32)),
        ("llama.embedding_length".into(), Value::U32(s.hidden as u32)),
        ("llama.block_count".into(), Value::U32(s.layers as u32)),
        ("llama.feed_forward_length".into(), Value::U32(s.ff as u32)),
        ("llama.attention.head_count".into(), Value::U32(s.heads as u32)),
        ("llama.attention.head_count_kv".into(), Value::U32(s.kv_heads as u32)),
        ("llama.rope.freq_base".into(), Value::F32(s.rope_theta)),
        ("llama.rope.dimension_count".into(), Value::U32(hd as u32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(s.rms_eps)),
        ("llama.vocab_size".into(), Value::U32(vocab as u32)),
    ];
    let mut tok: Vec<(&String, &Value)> = tokenizer.content.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")).collect();
    tok.sort_by(|a, b| a.0.cmp(b.0));
    meta.extend(tok.into_iter().map(|(k, v)| (k.clone(), v.clone())));
    let plan = tensor_plan(s, vocab, ty);

    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(), std::process::id()));
    let res = (|| -> Result<usize> {
        let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let e = io_err(&tmp);
        w.write_all(b"GGUF").map_err(&e)?;
        w.write_all(&3u32.to_le_bytes()).map_err(&e)?;
        w.write_all(&(plan.len() as u64).to_le_bytes()).map_err(&e)?;
        w.write_all(&(meta.len() as u64).to_le_bytes()).map_err(&e)?;
        for (k, v) in &meta {
            write_str(&mut w, k).map_err(&e)?;
            w.write_all(&value_id(v).to_le_bytes()).map_err(&e)?;
            write_value(&mut w, v).map_err(&e)?;
        }
        let pad = |n: u64| (32 - n % 32) % 32;
        let mut offset = 0u64;
        for (name, shape, t) in &plan {
            write_str(&mut w, name).map_err(&e)?;
            w.write_all(&(shape.len() as u32).to_le_bytes()).map_err(&e)?;
            for d in shape.iter().rev() {
                w.write_all(&(*d as u64).to_le_bytes()).map_err(&e)?;
            }
            w.write_all(&ggml_id(*t).to_le_bytes()).map_err(&e)?;
            w.write_all(&offset.to_le_bytes()).map_err(&e)?;
            let n = ggml_nbytes(*t, shape.iter().product()).expect("planned shapes fit their blocks") as u64;
            offset += n + pad(n);
        }
        let pos = w.stream_position().map_err(&e)?;
        w.write_all(&vec![0u8; pad(pos) as usize]).map_err(&e)?;
        let mut rng = SplitMix64(seed);
        let mut n_params = 0;
        for (_, shape, t) in &plan {
            let n: usize = shape.iter().product();
            n_params += n;
            let data = random_tensor(*t, n, &mut rng);
            w.write_all(&data).map_err(&e)?;
            w.write_all(&vec![0u8; pad(data.len() as u64) as usize]).map_err(&e)?;
        }
        w.flush().map_err(&e)?;
        w.into_inner().map_err(|x| Error::io(&tmp, x.into_error()))?.sync_all().map_err(&e)?;
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        Ok(n_params)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_published_parameter_counts() {
        // Published totals (with the model's own vocabulary): Llama-2-7B 6.74B, Llama-3-8B 8.03B, Mistral-7B 7.24B.
        for (name, want) in [
            ("llama-2-7b", 6_738_415_616usize),
            ("llama-3-8b", 8_030_261_248),
            ("mistral-7b", 7_241_732_096),
            ("llama-3-70b", 70_553_706_496),
        ] {
            let s = shape(name).unwrap();
            let n: usize = tensor_plan(s, s.vocab, SynthType::Q4KM).iter().map(|t| t.1.iter().product::<usize>()).sum();
            assert_eq!(n, want, "{name}");
        }
        assert!(shape("llama-9b").unwrap_err().to_string().contains("llama-2-7b, llama-3-8b, mistral-7b, llama-3-70b"));
        // Q4_K_M: llama.cpp's share of Q6_K layers for 32 blocks (4 + 4 + every third of the 24 between).
        let p = tensor_plan(shape("llama-3-8b").unwrap(), 128256, SynthType::Q4KM);
        let q6 = p.iter().filter(|t| t.0.ends_with("ffn_down.weight") && t.2 == GgmlDType::Q6K).count();
        assert_eq!(q6, 16);
    }
}
