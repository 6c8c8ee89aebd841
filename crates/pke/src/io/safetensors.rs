//! Provides safetensors reading (single file or sharded with `model.safetensors.index.json`;
//! f32/f16/bf16 widened to f32) and atomic writing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

/// Raw tensors by name: (dtype, shape, little-endian bytes).
pub type RawTensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// Read one safetensors file with all dtypes kept raw (for delta files): name -> (dtype, shape, bytes).
pub fn read_raw(path: &Path) -> Result<(RawTensors, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: "safetensors file", path: path.into(), hint: String::new() },
        _ => Error::io(path, e),
    })?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| st_err(path, format!("malformed or truncated: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| st_err(path, e.to_string()))?;
    let out = st.iter().map(|(n, v)| (n.to_string(), (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

use crate::io::atomic_write;
use crate::{Error, Result};

fn st_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Safetensors { path: path.into(), msg: msg.into() }
}

fn view_to_tensor(path: &Path, name: &str, v: &TensorView<'_>) -> Result<Tensor> {
    let data = v.data();
    let shape = v.shape().to_vec();
    let vals: Vec<f32> = match v.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(st_err(path, format!("tensor `{name}` has dtype {other:?}; pke reads F32, F16 and BF16"))),
    };
    Ok(Tensor::from_vec(vals, shape, &Device::Cpu)?)
}

/// Tensors read from safetensors: float32, and those kept in half precision as stored.
pub type Loaded = (HashMap<String, Tensor>, HashMap<String, candle_core::quantized::QTensor>);

/// Read every tensor of one safetensors file as f32, keeping names. `keep` filters names.
pub fn read_file(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let ((out, _), meta) = read_file_with(path, keep, &|_| false)?;
    Ok((out, meta))
}

/// As [`read_file`], keeping the F16/BF16 tensors that `half` accepts as stored (candle `QTensor`s of
/// type F16/BF16: exact, 2 bytes per value) instead of widening them.
fn read_file_with(path: &Path, keep: &dyn Fn(&str) -> bool, half: &dyn Fn(&str) -> bool) -> Result<(Loaded, HashMap<String, String>)> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: "safetensors file", path: path.into(), hint: String::new() },
        _ => Error::io(path, e),
    })?;
    // SAFETY: read-only mapping of a file pke does not modify while it is mapped.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, format!("malformed or truncated: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| st_err(path, e.to_string()))?;
    let mut out = HashMap::new();
    let mut halves = HashMap::new();
    for (name, view) in st.iter() {
        if !keep(name) {
            continue;
        }
        let ty = match view.dtype() {
            Dtype::F16 => Some(candle_core::quantized::GgmlDType::F16),
            Dtype::BF16 => Some(candle_core::quantized::GgmlDType::BF16),
            _ => None,
        };
        match ty {
            Some(ty) if half(name) => {
                let q = candle_core::quantized::ggml_file::qtensor_from_ggml(ty, view.data(), view.shape().to_vec(), &Device::Cpu)?;
                halves.insert(name.to_string(), q);
            }
            _ => {
                out.insert(name.to_string(), view_to_tensor(path, name, &view)?);
            }
        }
    }
    Ok(((out, halves), meta.metadata().clone().unwrap_or_default()))
}

/// The shards of a sharded HF folder (`model.safetensors.index.json`): file name -> tensor names.
fn index_shards(dir: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::NotFound {
            what: "weights (model.safetensors or model.safetensors.index.json)",
            path: dir.into(),
            hint: String::new(),
        });
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: index.clone(),
        key: "<file>".into(),
        msg: format!("malformed JSON: {e}"),
    })?;
    let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Config {
        path: index.clone(),
        key: "weight_map".into(),
        msg: "missing or not an object".into(),
    })?;
    let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, file) in map {
        let f = file.as_str().ok_or_else(|| Error::Config {
            path: index.clone(),
            key: format!("weight_map.{name}"),
            msg: "not a string".into(),
        })?;
        shards.entry(f.to_string()).or_default().push(name.clone());
    }
    Ok(shards)
}

/// The weight files of a HF folder: `model.safetensors`, or the shards its index names.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Ok(index_shards(dir)?.keys().map(|f| dir.join(f)).collect())
}

/// Read a HF checkpoint folder's weights: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn read_folder(dir: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(read_folder_with(dir, &|_| false)?.0)
}

/// As [`read_folder`], keeping the F16/BF16 tensors that `half` accepts as stored (see [`read_file_with`]).
pub fn read_folder_with(dir: &Path, half: &dyn Fn(&str) -> bool) -> Result<Loaded> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(read_file_with(&single, &|_| true, half)?.0);
    }
    let shards = index_shards(dir)?;
    let (mut out, mut halves) = (HashMap::new(), HashMap::new());
    for (shard, names) in shards {
        let p: PathBuf = dir.join(&shard);
        let ((t, h), _) = read_file_with(&p, &|n| names.iter().any(|x| x == n), half)?;
        for n in &names {
            if !t.contains_key(n) && !h.contains_key(n) {
                return Err(Error::MissingTensor { name: n.clone(), path: p.clone() });
            }
        }
        out.extend(t);
        halves.extend(h);
    }
    Ok((out, halves))
}

/// A tensor to write: dtype name as safetensors spells it, shape, little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// An f32 tensor.
    pub fn f32(name: &str, t: &Tensor) -> Result<Self> {
        let v = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(RawTensor { name: name.into(), dtype: "F32", shape: t.dims().to_vec(), bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() })
    }
    /// An i64 vector.
    pub fn i64(name: &str, v: &[i64]) -> Self {
        RawTensor { name: name.into(), dtype: "I64", shape: vec![v.len()], bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect() }
    }
}

/// Serialize to safetensors bytes deterministically: tensors sorted by name, metadata keys sorted (the
/// `safetensors` crate writes metadata from a HashMap, whose order changes between processes, so the
/// same delta would not give the same bytes).
pub fn serialize(tensors: &[RawTensor], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut order: Vec<&RawTensor> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata)?);
    }
    let mut offset = 0usize;
    for t in &order {
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.bytes.len()]}),
        );
        offset += t.bytes.len();
    }
    let mut h = serde_json::to_string(&serde_json::Value::Object(header))?.into_bytes();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + offset);
    out.extend((h.len() as u64).to_le_bytes());
    out.extend(h);
    for t in order {
        out.extend(&t.bytes);
    }
    Ok(out)
}

/// Write f32 tensors to `path` atomically (temp file + rename), with string metadata.
pub fn write_file(path: &Path, tensors: &[(String, Tensor)], metadata: HashMap<String, String>) -> Result<()> {
    let raw: Vec<RawTensor> = tensors.iter().map(|(n, t)| RawTensor::f32(n, t)).collect::<Result<_>>()?;
    let bytes = serialize(&raw, &metadata.into_iter().collect())?;
    atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_round_trip_and_truncation() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let t = Tensor::new(&[[1f32, 2., 3.], [4., 5., f32::MIN_POSITIVE]], &Device::Cpu)?;
        write_file(&p, &[("w".into(), t.clone())], HashMap::from([("k".into(), "v".into())]))?;
        let (m, meta) = read_file(&p, &|_| true)?;
        assert_eq!(m["w"].to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        assert_eq!(meta["k"], "v");
        // Truncate: a clear error naming the file.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 5]).unwrap();
        let e = read_file(&p, &|_| true).unwrap_err().to_string();
        assert!(e.contains("a.safetensors") && e.contains("truncated"), "{e}");
        Ok(())
    }
}
