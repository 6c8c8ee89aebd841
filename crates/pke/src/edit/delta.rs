//! Provides `WeightDelta`: the changed columns of the edited tensors, before and after, with the
//! metadata to apply or revert them exactly (bit for bit) and to know where they came from.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::Dtype;

use crate::io::safetensors::{read_raw, serialize, RawTensor};
use crate::model::decoder::index_tensor;
use crate::model::Decoder;
use crate::{Error, Result};

/// The change to one weight tensor: the slices `columns` along `axis` held `before` and now hold `after`.
/// `axis` 1 (the usual case): columns of a (rows, cols) weight, `before`/`after` (rows, k), e.g. the
/// hotspot neurons' columns of `down_proj`. `axis` 0: rows, `before`/`after` (k, cols), e.g. the same
/// neurons' input rows of `gate_proj`/`up_proj`. Stored as `N::columns` or `N::rows`.
#[derive(Clone, Debug)]
pub struct TensorDelta {
    pub name: String,
    pub columns: Vec<usize>,
    pub axis: usize,
    pub before: Tensor,
    pub after: Tensor,
}

/// A set of tensor changes plus metadata (`base_sha256`, `method`, `hparams`, `hotspots`, ...).
#[derive(Clone, Debug)]
pub struct WeightDelta {
    pub tensors: Vec<TensorDelta>,
    pub metadata: BTreeMap<String, String>,
}

impl TensorDelta {
    /// The delta between `w0` and `w1` restricted to the slices `columns` along `axis` (0 rows, 1 columns).
    pub fn between(name: &str, w0: &Tensor, w1: &Tensor, columns: &[usize], axis: usize) -> Result<Self> {
        let idx = index_tensor(columns, w0.device())?;
        Ok(TensorDelta {
            name: name.into(),
            columns: columns.to_vec(),
            axis,
            before: w0.index_select(&idx, axis)?,
            after: w1.index_select(&idx, axis)?,
        })
    }

    /// The key suffix of the stored indices.
    fn index_key(&self) -> &'static str {
        if self.axis == 0 {
            "rows"
        } else {
            "columns"
        }
    }

    /// `w` with the delta's slices set to `vals` ((rows, k) for columns, (k, cols) for rows).
    fn with_columns(&self, w: &Tensor, vals: &Tensor) -> Result<Tensor> {
        let (rows, cols) = w.dims2()?;
        let mut m = w.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let v = vals.to_vec2::<f32>()?;
        let width = if self.axis == 0 { rows } else { cols };
        if let Some(&c) = self.columns.iter().find(|&&c| c >= width) {
            return Err(Error::Input(format!("delta index {c} ({}) outside `{}` ({rows} x {cols})", self.index_key(), self.name)));
        }
        if self.axis == 0 {
            for (j, &r) in self.columns.iter().enumerate() {
                m[r].copy_from_slice(&v[j]);
            }
        } else {
            for (r, row) in m.iter_mut().enumerate().take(rows) {
                for (j, &c) in self.columns.iter().enumerate() {
                    row[c] = v[r][j];
                }
            }
        }
        Ok(Tensor::new(m, w.device())?)
    }

    fn check_current(&self, w: &Tensor, expect: &Tensor, what: &str) -> Result<()> {
        let idx = index_tensor(&self.columns, w.device())?;
        let cur = w.index_select(&idx, self.axis)?.flatten_all()?.to_vec1::<f32>()?;
        let exp = expect.flatten_all()?.to_vec1::<f32>()?;
        if cur.iter().zip(&exp).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(Error::Input(format!("`{}` does not hold the delta's {what} values; is this the right model?", self.name)));
        }
        Ok(())
    }
}

impl WeightDelta {
    /// Names of the edited tensors.
    pub fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }

    /// Number of changed values.
    pub fn n_values(&self) -> usize {
        self.tensors.iter().map(|t| t.after.elem_count()).sum()
    }

    /// Set the edited columns to their `after` values. Unless `force`, the model must hold the `before`
    /// values (the delta's base model).
    pub fn apply(&self, model: &mut Decoder, force: bool) -> Result<()> {
        self.write_columns(model, force, |t| (&t.before, &t.after), "base")
    }

    /// Restore the `before` values (exactly). Unless `force`, the model must hold the `after` values.
    pub fn revert(&self, model: &mut Decoder, force: bool) -> Result<()> {
        self.write_columns(model, force, |t| (&t.after, &t.before), "edited")
    }

    /// For each tensor, check it holds `pick(t).0` (unless `force`) and write `pick(t).1`.
    fn write_columns(&self, model: &mut Decoder, force: bool, pick: impl Fn(&TensorDelta) -> (&Tensor, &Tensor), what: &str) -> Result<()> {
        for t in &self.tensors {
            let (expect, new) = pick(t);
            let w = model.get(&t.name)?.detach();
            if !force {
                t.check_current(&w, expect, what)?;
            }
            model.set(&t.name, t.with_columns(&w, new)?)?;
        }
        Ok(())
    }

    /// Serialize (deterministic bytes). Per tensor N: `N::columns` (I64), `N::before`, `N::after`,
    /// `N::delta` (after − before, for reading); metadata includes `edited_tensors`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut raw = Vec::new();
        for t in &self.tensors {
            raw.push(RawTensor::i64(&format!("{}::{}", t.name, t.index_key()), &t.columns.iter().map(|&c| c as i64).collect::<Vec<_>>()));
            raw.push(RawTensor::f32(&format!("{}::before", t.name), &t.before)?);
            raw.push(RawTensor::f32(&format!("{}::after", t.name), &t.after)?);
            raw.push(RawTensor::f32(&format!("{}::delta", t.name), &(&t.after - &t.before)?)?);
        }
        let mut meta = self.metadata.clone();
        meta.insert("edited_tensors".into(), serde_json::to_string(&self.names())?);
        meta.insert("format".into(), "pke-delta-v1".into());
        serialize(&raw, &meta)
    }

    /// sha256 of the delta file's bytes (hex): what identifies an edit beside its base model's sha256.
    pub fn sha256(&self) -> Result<String> {
        Ok(format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(self.to_bytes()?)))
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::atomic_write(path, &self.to_bytes()?)
    }

    /// Read a delta file.
    pub fn load(path: &Path) -> Result<Self> {
        let (raw, meta) = read_raw(path)?;
        let bad = |m: String| Error::Safetensors { path: path.into(), msg: m };
        if meta.get("format").map(String::as_str) != Some("pke-delta-v1") {
            return Err(bad("not a pke delta file (metadata `format` is not pke-delta-v1)".into()));
        }
        let names: Vec<String> =
            serde_json::from_str(meta.get("edited_tensors").ok_or_else(|| bad("no `edited_tensors` metadata".into()))?)
                .map_err(|e| bad(format!("`edited_tensors`: {e}")))?;
        let f32_tensor = |key: &str| -> Result<Tensor> {
            let (dt, shape, bytes) = raw.get(key).ok_or_else(|| bad(format!("missing tensor `{key}`")))?;
            if *dt != Dtype::F32 {
                return Err(bad(format!("`{key}` is {dt:?}, expected F32")));
            }
            let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Ok(Tensor::from_vec(v, shape.clone(), &Device::Cpu)?)
        };
        let mut tensors = Vec::new();
        for n in names {
            let (axis, key) = if raw.contains_key(&format!("{n}::rows")) { (0, "rows") } else { (1, "columns") };
            let (dt, _, bytes) = raw.get(&format!("{n}::{key}")).ok_or_else(|| bad(format!("missing `{n}::columns`")))?;
            if *dt != Dtype::I64 {
                return Err(bad(format!("`{n}::{key}` is {dt:?}, expected I64")));
            }
            let columns: Vec<usize> = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as usize).collect();
            let (before, after) = (f32_tensor(&format!("{n}::before"))?, f32_tensor(&format!("{n}::after"))?);
            let fits = |t: &Tensor| t.dims().len() == 2 && t.dims()[axis] == columns.len();
            if !fits(&before) || before.dims() != after.dims() {
                return Err(bad(format!(
                    "`{n}`: before {:?} / after {:?} do not hold one slice per index of `{n}::{key}` ({})",
                    before.dims(),
                    after.dims(),
                    columns.len()
                )));
            }
            tensors.push(TensorDelta { columns, axis, before, after, name: n });
        }
        let mut metadata: BTreeMap<String, String> = meta.into_iter().collect();
        metadata.remove("edited_tensors");
        metadata.remove("format");
        Ok(WeightDelta { tensors, metadata })
    }
}
