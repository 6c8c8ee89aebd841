//! Provides GGUF reading: header and metadata through candle's parser, with bounds checked against the
//! file before any tensor is touched, and dequantization to float32 with denormals flushed to zero.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use crate::model::arch::Arch;
use crate::model::config::{ConfigSource, LayerType, ModelSpec};
use crate::{Error, Result};

/// An open, validated GGUF file (memory-mapped).
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    mmap: memmap2::Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.content.tensor_infos.len()).finish()
    }
}

/// Size in bytes of `n` elements of a GGML type.
pub fn ggml_nbytes(dtype: GgmlDType, n: usize) -> Option<usize> {
    let bs = dtype.block_size();
    if !n.is_multiple_of(bs) {
        return None;
    }
    Some(n / bs * dtype.type_size())
}

/// Value as f64 for any numeric GGUF type.
fn value_f64(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => *x as f64,
        Value::I8(x) => *x as f64,
        Value::U16(x) => *x as f64,
        Value::I16(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::I32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        Value::Bool(b) => *b as u8 as f64,
        _ => return None,
    })
}

impl GgufFile {
    /// Open and validate a GGUF file: magic, header, and that every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { what: "GGUF file", path: path.into(), hint: String::new() },
            _ => Error::io(path, e),
        })?;
        // SAFETY: the file is opened read-only; pke never writes to a file it has mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let gerr = |msg: String| Error::Gguf { path: path.into(), msg };
        if mmap.len() < 8 || &mmap[..4] != b"GGUF" {
            return Err(gerr("not a GGUF file (missing `GGUF` magic)".into()));
        }
        let version = u32::from_le_bytes([mmap[4], mmap[5], mmap[6], mmap[7]]);
        if !(2..=3).contains(&version) {
            return Err(gerr(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let content = Content::read(&mut Cursor::new(&mmap[..])).map_err(|e| gerr(format!("malformed or truncated header: {e}")))?;
        let len = mmap.len() as u64;
        for (name, info) in &content.tensor_infos {
            let n = info.shape.elem_count();
            let nbytes = ggml_nbytes(info.ggml_dtype, n)
                .ok_or_else(|| gerr(format!("tensor `{name}`: {n} elements is not a multiple of the {:?} block size", info.ggml_dtype)))?;
            let end = content.tensor_data_offset + info.offset + nbytes as u64;
            if end > len {
                return Err(gerr(format!("truncated: tensor `{name}` ends at byte {end} but the file has {len} bytes")));
            }
        }
        Ok(GgufFile { path: path.into(), content, mmap })
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn key_err(&self, key: &str, msg: &str) -> Error {
        Error::GgufKey { path: self.path.clone(), key: key.into(), msg: msg.into() }
    }

    /// A required string value.
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        match self.meta(key) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(self.key_err(key, "not a string")),
            None => Err(self.key_err(key, "missing")),
        }
    }

    /// An optional numeric value.
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        self.meta(key).and_then(value_f64)
    }

    /// A required array of strings.
    pub fn meta_strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.meta(key) {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(self.key_err(key, "array element is not a string")),
                })
                .collect(),
            Some(_) => Err(self.key_err(key, "not an array")),
            None => Err(self.key_err(key, "missing")),
        }
    }

    /// A required array of numbers.
    pub fn meta_numbers(&self, key: &str) -> Result<Vec<f64>> {
        match self.meta(key) {
            Some(Value::Array(a)) => {
                a.iter().map(|v| value_f64(v).ok_or_else(|| self.key_err(key, "array element is not a number"))).collect()
            }
            Some(_) => Err(self.key_err(key, "not an array")),
            None => Err(self.key_err(key, "missing")),
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.meta_str("general.architecture")
    }

    /// Raw bytes of a tensor (its GGML encoding, as stored).
    pub fn tensor_bytes(&self, name: &str) -> Result<(&[u8], GgmlDType, Vec<usize>)> {
        let info =
            self.content.tensor_infos.get(name).ok_or_else(|| Error::MissingTensor { name: name.into(), path: self.path.clone() })?;
        let n = info.shape.elem_count();
        let nbytes = ggml_nbytes(info.ggml_dtype, n).expect("checked in open");
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        Ok((&self.mmap[start..start + nbytes], info.ggml_dtype, info.shape.dims().to_vec()))
    }

    /// Let the kernel drop the mapped pages of tensor `name` once it has been copied out (it is read back
    /// from the file if asked for again), so that loading does not hold the file's pages and the copy at
    /// once: without it, holding a model natively peaks at twice the file.
    pub fn release(&self, name: &str) {
        let Some(info) = self.content.tensor_infos.get(name) else { return };
        let Some(nbytes) = ggml_nbytes(info.ggml_dtype, info.shape.elem_count()) else { return };
        let start = (self.content.tensor_data_offset + info.offset) as usize;
        // SAFETY: the mapping is read-only and file-backed, so dropped pages hold nothing that the file
        // does not; a later read faults them back in. No slice into the range is alive here (callers
        // have copied the tensor out).
        let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, nbytes) };
    }

    /// A tensor as candle `QTensor` (still quantized).
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        let (bytes, dtype, dims) = self.tensor_bytes(name)?;
        Ok(candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, bytes, dims, &Device::Cpu)?)
    }

    /// A tensor dequantized to float32 (shape in HF orientation: rows = output features), with
    /// subnormal values flushed to zero (they make matmuls very slow and carry no information).
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let (bytes, dtype, dims) = self.tensor_bytes(name)?;
        let mut v: Vec<f32> = match dtype {
            GgmlDType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            _ => self.qtensor(name)?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?,
        };
        flush_denormals(&mut v);
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    }

    /// Names of all tensors.
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.content.tensor_infos.keys().map(|s| s.as_str()).collect();
        v.sort();
        v
    }

    /// Resolve the model configuration from metadata (keys `{arch}.*`).
    pub fn model_spec(&self) -> Result<ModelSpec> {
        let name = self.architecture()?.to_string();
        let arch = Arch::from_name(&name).ok_or_else(|| Error::UnsupportedArch {
            name: name.clone(),
            path: self.path.clone(),
            supported: Arch::supported(),
        })?;
        let src = GgufMeta { file: self, prefix: name.clone() };
        let n_layers = src.req_usize("block_count")?;
        let hidden_size = src.req_usize("embedding_length")?;
        let n_heads = src.req_usize("attention.head_count")?;
        let n_kv_heads = src.opt_usize("attention.head_count_kv").unwrap_or(n_heads);
        let head_dim = src.opt_usize("attention.key_length").unwrap_or(hidden_size / n_heads.max(1));
        let vocab_size = match self.meta("tokenizer.ggml.tokens") {
            Some(Value::Array(a)) => a.len(),
            _ => src.req_usize("vocab_size")?,
        };
        let gemma = arch == Arch::Gemma3;
        let rope_theta = src.get_f64("rope.freq_base").unwrap_or(10_000.0);
        let tok_id = |k: &str| self.meta_f64(&format!("tokenizer.ggml.{k}")).map(|v| v as u32);
        let spec = ModelSpec {
            arch,
            n_layers,
            hidden_size,
            intermediate_size: src.req_usize("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: src.req_f64("attention.layer_norm_rms_epsilon")?,
            rope_theta,
            // Not in Gemma 3 GGUF metadata: transformers' and llama.cpp's fixed values.
            rope_local_theta: if gemma { 10_000.0 } else { rope_theta },
            layer_types: (0..n_layers)
                .map(|i| if gemma && (i + 1) % 6 != 0 { LayerType::SlidingAttention } else { LayerType::FullAttention })
                .collect(),
            sliding_window: if gemma || arch == Arch::Mistral { src.opt_usize("attention.sliding_window") } else { None },
            // Gemma 3: query_pre_attn_scalar = head_dim (not in the metadata).
            attn_scale: (head_dim as f64).powf(-0.5),
            max_position_embeddings: src.opt_usize("context_length").unwrap_or(4096),
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            act: arch.spec().act,
            bos_token_id: tok_id("bos_token_id"),
            eos_token_id: tok_id("eos_token_id"),
            pad_token_id: tok_id("padding_token_id"),
        };
        spec.validate(&self.path)?;
        Ok(spec)
    }
}

/// Flush subnormal floats to zero.
pub fn flush_denormals(v: &mut [f32]) {
    for x in v.iter_mut() {
        if x.is_subnormal() {
            *x = 0.0;
        }
    }
}

/// GGUF metadata under `{arch}.` as a `ConfigSource`, so missing keys are reported with their full name.
struct GgufMeta<'a> {
    file: &'a GgufFile,
    prefix: String,
}

impl ConfigSource for GgufMeta<'_> {
    fn path(&self) -> &Path {
        &self.file.path
    }
    fn get_f64(&self, key: &str) -> Option<f64> {
        self.file.meta_f64(&format!("{}.{key}", self.prefix))
    }
    fn get_str(&self, key: &str) -> Option<String> {
        self.file.meta_str(&format!("{}.{key}", self.prefix)).ok().map(str::to_string)
    }
    fn req_f64(&self, key: &str) -> Result<f64> {
        self.get_f64(key).ok_or_else(|| Error::GgufKey {
            path: self.file.path.clone(),
            key: format!("{}.{key}", self.prefix),
            msg: "missing or not a number".into(),
        })
    }
}

/// The GGUF metadata, stringified for display (`pke inspect`); long arrays are summarised.
pub fn describe_metadata(content: &Content) -> HashMap<String, String> {
    content
        .metadata
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::Array(a) => format!("[{} items]", a.len()),
                Value::String(s) if s.len() > 80 => {
                    format!("{}… ({} chars)", &s[..s.char_indices().nth(60).map(|c| c.0).unwrap_or(s.len())], s.len())
                }
                Value::String(s) => s.clone(),
                other => value_f64(other).map(|f| f.to_string()).unwrap_or_default(),
            };
            (k.clone(), s)
        })
        .collect()
}
