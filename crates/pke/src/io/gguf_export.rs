//! Provides GGUF export of an edited model: every metadata key and every untouched tensor is copied
//! byte for byte from the source GGUF; edited tensors are written back in GGUF form (llama q/k rows
//! re-permuted, Gemma norms shifted by +1) as F32, F16, or re-quantized to the source tensor's type.
//! candle's writer emits GGUF v2 with 32-byte alignment, which llama.cpp reads.

use std::io::Write;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::io::gguf::GgufFile;
use crate::io::names;
use crate::io::requant::{quantize_shaped, RoundingReport, ShapingMap};
use crate::model::Decoder;
use crate::{Error, Result};

/// Storage type for edited tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EditedType {
    F32,
    F16,
    /// The source tensor's quantization type (lossy: the edit is quantized too).
    Source,
}

impl std::str::FromStr for EditedType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" => EditedType::F32,
            "f16" => EditedType::F16,
            "source" => EditedType::Source,
            o => return Err(Error::Input(format!("unknown GGUF tensor type `{o}` (f32, f16, source)"))),
        })
    }
}

/// Write `model` as a GGUF at `path` (atomically), taking everything not in `edited` from `src`.
pub fn write_gguf(src: &GgufFile, model: &Decoder, edited: &[String], ty: EditedType, path: &Path) -> Result<()> {
    write_gguf_typed(src, model, edited, &|t| pick_type(ty, t), path)
}

/// The storage type of an edited tensor whose source type is `src_type`.
pub fn pick_type(ty: EditedType, src_type: GgmlDType) -> GgmlDType {
    match ty {
        EditedType::F32 => GgmlDType::F32,
        EditedType::F16 => GgmlDType::F16,
        EditedType::Source => src_type,
    }
}

/// A GGML storage type by its llama.cpp name (`q4_0`, `Q4_K`, `f16`, ...).
pub fn parse_ggml_type(s: &str) -> Result<GgmlDType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "bf16" => GgmlDType::BF16,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        o => {
            return Err(Error::Input(format!(
                "unknown GGML type `{o}` (f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k)"
            )))
        }
    })
}

/// Quantize `t` (GGUF orientation) to `dtype`, or say which tensor and type do not fit: GGML quantizes
/// each row in blocks, so the row length must be a multiple of the type's block size.
pub fn quantize_checked(name: &str, t: &candle_core::Tensor, dtype: GgmlDType) -> Result<QTensor> {
    let row = *t.dims().last().unwrap_or(&0);
    let block = dtype.block_size();
    if !row.is_multiple_of(block) {
        return Err(Error::Input(format!(
            "tensor `{name}` has rows of {row} values, which {} cannot store (its blocks hold {block}); \
             pick a type with smaller blocks (q8_0, q4_0, f16)",
            crate::io::checkpoint::ggml_name(dtype)
        )));
    }
    Ok(QTensor::quantize(t, dtype)?)
}

/// As [`write_gguf`], with the edited tensors' storage type chosen per tensor from its source type.
pub fn write_gguf_typed(
    src: &GgufFile,
    model: &Decoder,
    edited: &[String],
    pick: &dyn Fn(GgmlDType) -> GgmlDType,
    path: &Path,
) -> Result<()> {
    write_gguf_shaped(src, model, edited, pick, &ShapingMap::new(), path).map(|_| ())
}

/// As [`write_gguf_typed`]; edited tensors in `shaping` that are stored in a block type are rounded with
/// [`quantize_shaped`] (the benign keys see less of the rounding), the others plainly. Returns how each
/// shaped tensor was rounded.
pub fn write_gguf_shaped(
    src: &GgufFile,
    model: &Decoder,
    edited: &[String],
    pick: &dyn Fn(GgmlDType) -> GgmlDType,
    shaping: &ShapingMap,
    path: &Path,
) -> Result<Vec<RoundingReport>> {
    let mut reports = Vec::new();
    if path.exists() && std::fs::canonicalize(path).ok() == std::fs::canonicalize(&src.path).ok() {
        return Err(Error::Input(format!("refusing to overwrite the source model {}", path.display())));
    }
    let spec = &model.spec;
    let arch = spec.arch.spec();
    let mut names_by_offset: Vec<(&String, u64)> = src.content.tensor_infos.iter().map(|(n, i)| (n, i.offset)).collect();
    names_by_offset.sort_by_key(|x| x.1);
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names_by_offset.len());
    for (gname, _) in names_by_offset {
        let hf = names::gguf_to_hf(spec.arch, gname);
        let is_edited = hf.as_ref().is_some_and(|h| edited.iter().any(|e| e == h))
            || (gname == "token_embd.weight" && spec.tie_word_embeddings && edited.iter().any(|e| e == "lm_head.weight"));
        let q = if is_edited {
            let hf = hf.expect("edited tensors have HF names");
            let mut t = model.get(&hf)?.detach().to_dtype(candle_core::DType::F32)?;
            if let Some(heads) = names::qk_permutation_heads(arch, &hf, spec.n_heads, spec.n_kv_heads) {
                t = names::permute_qk(&t, heads)?;
            }
            if arch.norm_weight_offset != 0.0 && hf.contains("norm") {
                t = (t + arch.norm_weight_offset as f64)?;
            }
            let (_, src_type, _) = src.tensor_bytes(gname)?;
            let ty = pick(src_type);
            match shaping.get(&hf) {
                Some(sh) if ty.block_size() > 1 => {
                    let (q, r) = quantize_shaped(&hf, &t, ty, sh)?;
                    reports.push(r);
                    q
                }
                _ => quantize_checked(&hf, &t, ty)?,
            }
        } else {
            src.qtensor(gname)?
        };
        tensors.push((gname.clone(), q));
    }
    let mut meta: Vec<(&str, &Value)> =
        src.content.metadata.iter().filter(|(k, _)| k.as_str() != "general.alignment").map(|(k, v)| (k.as_str(), v)).collect();
    meta.sort_by(|a, b| a.0.cmp(b.0));
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.{}.tmp", path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(), std::process::id()));
    let res = (|| -> Result<()> {
        let f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = std::io::BufWriter::new(f);
        gguf_file::write(&mut w, &meta, &refs)?;
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        w.into_inner().map_err(|e| Error::io(&tmp, e.into_error()))?.sync_all().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.map(|_| reports)
}
