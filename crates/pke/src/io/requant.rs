//! Activation-aware re-quantization of edited tensors (`--gguf-rounding shaped`).
//!
//! A null-space edit changes a `down_proj`'s edited columns by about as much as the weights themselves
//! (SmolLM2's default edit: RMS 0.23 against the layer's 0.20), yet benign inputs do not see it, because
//! the change lies where their keys (the columns' input activations) have no energy. Rounding the edited
//! tensor back to a 4-bit type adds an error the size of a quantization step to every edited value, and
//! that error is not in the null space: plainly rounded to Q4_1, the edited SmolLM2 reads Hamlet at
//! perplexity +5% instead of the float edit's +1.4% (+5% still with every untouched value kept exact: the
//! cost is the rounding of the edited values).
//!
//! Shaped rounding keeps the grid plain rounding picks for every block (its scales and minimums, so every
//! untouched value stays exactly where plain rounding puts it) and re-rounds only the edited columns on
//! it, one column at a time in GPTQ's way (Frantar et al. 2022): the error a column's rounding leaves is
//! fed forward to the columns not yet rounded through the inverse of H = S + 1% of its mean diagonal,
//! where S is the benign keys' second moment over the edited columns
//! ([`crate::edit::preserve::shaping`]). What it minimizes is tr(E S Eᵀ), E the rounding error of the
//! edited columns: the output error benign inputs see. The result is kept only where it beats plain
//! rounding on that measure. On SmolLM2's default edit (154 columns, Q4_1) it cuts that error by a third
//! and the perplexity cost of re-quantizing from +5% to +2% (docs/results.md).
//!
//! The block layouts (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) are read and written here bit by bit;
//! a unit test checks them against candle's quantizer and dequantizer. Other types are rounded plainly.

use std::collections::BTreeMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What shaped rounding needs for one tensor: its edited columns (row-major GGUF orientation: each row is
/// one output, the columns its inputs) and the benign keys' second moment over them (c x c, row-major).
#[derive(Clone, Debug)]
pub struct Shaping {
    pub columns: Vec<usize>,
    pub moment: Vec<f64>,
    /// Benign key positions the moment was taken over.
    pub positions: usize,
}

/// Shaping per HF tensor name.
pub type ShapingMap = BTreeMap<String, Shaping>;

/// How one tensor was rounded: the benign output error of plain and of shaped rounding, each relative
/// to the benign output of the edited columns, sqrt(tr(E S Eᵀ) / tr(W_C S W_Cᵀ)).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundingReport {
    pub name: String,
    pub ty: String,
    pub plain: f64,
    pub shaped: f64,
    /// Whether the shaped rounding was kept (it beat plain rounding on the benign error).
    pub shaped_kept: bool,
    pub positions: usize,
}

impl RoundingReport {
    pub fn describe(&self) -> String {
        format!(
            "{} as {}: benign output error {:.4} rounded plainly, {:.4} shaped ({:.0}% less{}; keys at {} benign positions)",
            self.name,
            self.ty,
            self.plain,
            self.shaped,
            100.0 * (1.0 - self.shaped / self.plain.max(f64::MIN_POSITIVE)),
            if self.shaped_kept { "" } else { ": plain rounding kept" },
            self.positions
        )
    }
}

/// The benign energy tr(E S Eᵀ) of the rounding error E on the edited columns (rows x c).
fn error_energy(q: &[f32], w: &[f32], n: usize, cols: &[usize], s: &[f64]) -> f64 {
    let c = cols.len();
    let rows = w.len() / n;
    let mut e = vec![0.0; rows * c];
    for r in 0..rows {
        for (j, &col) in cols.iter().enumerate() {
            e[r * c + j] = q[r * n + col] as f64 - w[r * n + col] as f64;
        }
    }
    quad(&e, rows, c, s)
}

/// Σ_rows x S xᵀ for `x` (rows x c), rows in parallel.
fn quad(x: &[f64], rows: usize, c: usize, s: &[f64]) -> f64 {
    use rayon::prelude::*;
    x[..rows * c]
        .par_chunks(c.max(1))
        .map(|xr| {
            let mut total = 0.0;
            for i in 0..c {
                if xr[i] == 0.0 {
                    continue;
                }
                let si = &s[i * c..(i + 1) * c];
                total += xr[i] * si.iter().zip(xr).map(|(a, b)| a * b).sum::<f64>();
            }
            total
        })
        .sum()
}

/// Where one element's quantized value lives in its block and which affine map reads it.
#[derive(Clone, Copy)]
struct Layout {
    block_bytes: usize,
    block_len: usize,
    /// q's range (inclusive).
    qmin: i32,
    qmax: i32,
}

/// The block types shaped rounding can re-round on a fixed grid; others are rounded plainly.
fn layout(ty: GgmlDType) -> Option<Layout> {
    let l = |block_bytes, block_len, qmin, qmax| Some(Layout { block_bytes, block_len, qmin, qmax });
    match ty {
        GgmlDType::Q4_0 => l(18, 32, 0, 15),
        GgmlDType::Q4_1 => l(20, 32, 0, 15),
        GgmlDType::Q5_0 => l(22, 32, 0, 31),
        GgmlDType::Q5_1 => l(24, 32, 0, 31),
        GgmlDType::Q8_0 => l(34, 32, -127, 127),
        GgmlDType::Q4K => l(144, 256, 0, 15),
        GgmlDType::Q5K => l(176, 256, 0, 31),
        GgmlDType::Q6K => l(210, 256, 0, 63),
        _ => None,
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// A bit field in a block: (byte, shift, bits).
type Field = (usize, u32, u32);

/// Bit fields of element `e`'s q in its block: the low part and, for 5- and 6-bit types, the high part
/// (its value is shifted up by the low part's width).
fn slots(ty: GgmlDType, e: usize) -> (Field, Option<Field>) {
    // Q4_0/Q4_1/Q5_x: element e < 16 in the low nibble of qs[e], e >= 16 in the high nibble of qs[e - 16].
    let nib32 = |qs: usize| (qs + e % 16, if e < 16 { 0 } else { 4 }, 4);
    // Q4_K/Q5_K: 64-element chunks k of 32 bytes, the first 32 elements in low nibbles, the next in high.
    let nib256 = |qs: usize| {
        let (k, r) = (e / 64, e % 64);
        (qs + 32 * k + r % 32, if r < 32 { 0 } else { 4 }, 4)
    };
    match ty {
        GgmlDType::Q4_0 => (nib32(2), None),
        GgmlDType::Q4_1 => (nib32(4), None),
        GgmlDType::Q5_0 => (nib32(6), Some((2 + e / 8, (e % 8) as u32, 1))),
        GgmlDType::Q5_1 => (nib32(8), Some((4 + e / 8, (e % 8) as u32, 1))),
        GgmlDType::Q8_0 => ((2 + e, 0, 8), None),
        GgmlDType::Q4K => (nib256(16), None),
        GgmlDType::Q5K => {
            let (k, r) = (e / 64, e % 64);
            (nib256(48), Some((16 + r % 32, (2 * k + usize::from(r >= 32)) as u32, 1)))
        }
        GgmlDType::Q6K => {
            let (n, r) = (e / 128, e % 128);
            let (quarter, l) = (r / 32, r % 32);
            let low = (64 * n + l + if quarter % 2 == 1 { 32 } else { 0 }, if quarter >= 2 { 4 } else { 0 }, 4);
            (low, Some((128 + 32 * n + l, 2 * quarter as u32, 2)))
        }
        _ => unreachable!("slots of a type without a layout"),
    }
}

fn get_bits(b: &[u8], (byte, shift, bits): Field) -> u32 {
    (b[byte] as u32 >> shift) & ((1 << bits) - 1)
}

fn set_bits(b: &mut [u8], (byte, shift, bits): Field, v: u32) {
    let mask = (((1u32 << bits) - 1) << shift) as u8;
    b[byte] = (b[byte] & !mask) | (((v << shift) as u8) & mask);
}

fn get_q(ty: GgmlDType, b: &[u8], e: usize) -> i32 {
    let (low, high) = slots(ty, e);
    let mut q = get_bits(b, low);
    if let Some(h) = high {
        q |= get_bits(b, h) << low.2;
    }
    if ty == GgmlDType::Q8_0 {
        q as u8 as i8 as i32
    } else {
        q as i32
    }
}

fn set_q(ty: GgmlDType, b: &mut [u8], e: usize, q: i32) {
    let (low, high) = slots(ty, e);
    let v = if ty == GgmlDType::Q8_0 { q as i8 as u8 as u32 } else { q as u32 };
    set_bits(b, low, v & ((1 << low.2) - 1));
    if let Some(h) = high {
        set_bits(b, h, v >> low.2);
    }
}

/// Scale and minimum of sub-block j of a Q4_K/Q5_K block's 12 packed 6-bit values.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((s[j] & 63) as f32, (s[j + 4] & 63) as f32)
    } else {
        (((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4)) as f32, ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as f32)
    }
}

/// Element e of a block reads a·q + b.
fn affine(ty: GgmlDType, b: &[u8], e: usize) -> (f32, f32) {
    match ty {
        GgmlDType::Q4_0 => (f16_at(b, 0), -8.0 * f16_at(b, 0)),
        GgmlDType::Q5_0 => (f16_at(b, 0), -16.0 * f16_at(b, 0)),
        GgmlDType::Q4_1 | GgmlDType::Q5_1 => (f16_at(b, 0), f16_at(b, 2)),
        GgmlDType::Q8_0 => (f16_at(b, 0), 0.0),
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let (sc, m) = scale_min_k4(e / 32, &b[4..16]);
            (f16_at(b, 0) * sc, -f16_at(b, 2) * m)
        }
        GgmlDType::Q6K => {
            let (n, r) = (e / 128, e % 128);
            let sc = b[192 + 8 * n + (r % 32) / 16 + 2 * (r / 32)] as i8 as f32;
            let a = f16_at(b, 208) * sc;
            (a, -32.0 * a)
        }
        _ => unreachable!("affine of a type without a layout"),
    }
}

fn dequantize(q: &QTensor) -> Result<Vec<f32>> {
    Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// GPTQ's order and updates (Frantar et al. 2022) on the edited columns: U = chol(H⁻¹) (upper), H = S +
/// 1% of its mean diagonal; the columns in descending order of their benign energy.
fn gptq_factor(s: &[f64], c: usize) -> Result<(Vec<usize>, nalgebra::DMatrix<f64>)> {
    let mean_diag = (0..c).map(|i| s[i * c + i]).sum::<f64>() / c.max(1) as f64;
    let damp = 0.01 * mean_diag.max(f64::MIN_POSITIVE);
    let mut order: Vec<usize> = (0..c).collect();
    order.sort_by(|&a, &b| s[b * c + b].total_cmp(&s[a * c + a]));
    let h = nalgebra::DMatrix::from_fn(c, c, |i, j| s[order[i] * c + order[j]] + if i == j { damp } else { 0.0 });
    let hinv =
        h.cholesky().ok_or_else(|| Error::Input("shaped rounding: the benign keys' moment is not positive definite".into()))?.inverse();
    let hinv = (&hinv + hinv.transpose()) * 0.5;
    let l = hinv.cholesky().ok_or_else(|| Error::Input("shaped rounding: H⁻¹ is not positive definite".into()))?.l();
    Ok((order, l.transpose()))
}

/// Quantize `t` (rows x n, GGUF orientation, float) to `dtype`, rounding `sh.columns` on the grid that
/// plain rounding chose (every block keeps its scales, so untouched values stay where plain rounding put
/// them) but column by column with GPTQ's error feedback through the benign keys' moment, so that benign
/// inputs see as little of the rounding as it can manage. Kept only where it beats plain rounding on
/// that measure; types without a fixed-grid layout here (Q2_K, Q3_K, float types) are rounded plainly.
pub fn quantize_shaped(name: &str, t: &Tensor, dtype: GgmlDType, sh: &Shaping) -> Result<(QTensor, RoundingReport)> {
    let (rows, n) = t.dims2()?;
    let c = sh.columns.len();
    if sh.moment.len() != c * c {
        return Err(Error::Input(format!("shaping of `{name}`: a {c}-column moment needs {} values, got {}", c * c, sh.moment.len())));
    }
    if let Some(&bad) = sh.columns.iter().find(|&&j| j >= n) {
        return Err(Error::Input(format!("shaping of `{name}`: column {bad} is outside its {n} columns")));
    }
    let w = t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let plain_q = crate::io::gguf_export::quantize_checked(name, t, dtype)?;
    let plain = error_energy(&dequantize(&plain_q)?, &w, n, &sh.columns, &sh.moment);
    let wc: Vec<f64> = (0..rows).flat_map(|r| sh.columns.iter().map(move |&j| (r, j))).map(|(r, j)| w[r * n + j] as f64).collect();
    let reference = quad(&wc, rows, c, &sh.moment).max(f64::MIN_POSITIVE);
    let mut report = RoundingReport {
        name: name.to_string(),
        ty: crate::io::checkpoint::ggml_name(dtype).to_string(),
        plain: (plain / reference).sqrt(),
        shaped: (plain / reference).sqrt(),
        shaped_kept: false,
        positions: sh.positions,
    };
    let Some(lay) = layout(dtype) else { return Ok((plain_q, report)) };
    if c == 0 || plain == 0.0 {
        return Ok((plain_q, report));
    }
    let (order, u) = gptq_factor(&sh.moment, c)?;
    let mut bytes = plain_q.data()?.into_owned();
    let blocks_per_row = n / lay.block_len;
    // x: the edited columns' values still to be rounded (rows x c, in GPTQ order), updated as it goes.
    let mut x: Vec<f64> =
        (0..rows).flat_map(|r| order.iter().map(move |&i| (r, i))).map(|(r, i)| w[r * n + sh.columns[i]] as f64).collect();
    // Rows are independent (each its own blocks and its own x), so each runs GPTQ's column loop alone.
    use rayon::prelude::*;
    let row_bytes = blocks_per_row * lay.block_bytes;
    bytes.par_chunks_mut(row_bytes).zip(x.par_chunks_mut(c)).for_each(|(row, xr)| {
        for k in 0..c {
            let col = sh.columns[order[k]];
            let (blk, e) = (col / lay.block_len, col % lay.block_len);
            let b = &mut row[blk * lay.block_bytes..(blk + 1) * lay.block_bytes];
            let (a, z) = affine(dtype, b, e);
            let v = xr[k];
            let q = if a == 0.0 { get_q(dtype, b, e) } else { (((v - z as f64) / a as f64).round() as i32).clamp(lay.qmin, lay.qmax) };
            set_q(dtype, b, e, q);
            let err = (v - (a as f64 * q as f64 + z as f64)) / u[(k, k)];
            for j in k + 1..c {
                xr[j] -= err * u[(k, j)];
            }
        }
    });
    let shaped_q = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &bytes, plain_q.shape().dims().to_vec(), &Device::Cpu)?;
    let shaped = error_energy(&dequantize(&shaped_q)?, &w, n, &sh.columns, &sh.moment);
    if shaped < plain {
        report.shaped = (shaped / reference).sqrt();
        report.shaped_kept = true;
        return Ok((shaped_q, report));
    }
    Ok((plain_q, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that use only a few directions of the columns (as benign keys do), an edit in the others:
    /// shaped rounding must cut the benign output error well below plain rounding's and never raise it.
    #[test]
    fn shaped_rounding_hides_the_error_from_the_benign_keys() {
        let (rows, n, c) = (64usize, 256usize, 40usize);
        let cols: Vec<usize> = (0..c).map(|i| i * 6 + 1).collect();
        let mut rng = 12345u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 10_000) as f64 / 5_000.0 - 1.0
        };
        let mut w: Vec<f32> = (0..rows * n).map(|_| (next() * 0.1) as f32).collect();
        for r in 0..rows {
            for &j in &cols {
                w[r * n + j] += (next() * 0.3) as f32;
            }
        }
        // S = K^T K / m with keys in a 6-dimensional subspace of the 40 columns.
        let basis: Vec<f64> = (0..6 * c).map(|_| next()).collect();
        let m = 200;
        let mut s = vec![0.0; c * c];
        for _ in 0..m {
            let coef: Vec<f64> = (0..6).map(|_| next()).collect();
            let k: Vec<f64> = (0..c).map(|j| (0..6).map(|d| coef[d] * basis[d * c + j]).sum()).collect();
            for i in 0..c {
                for j in 0..c {
                    s[i * c + j] += k[i] * k[j] / m as f64;
                }
            }
        }
        let t = Tensor::from_vec(w, (rows, n), &Device::Cpu).unwrap();
        let sh = Shaping { columns: cols, moment: s, positions: m };
        for ty in [GgmlDType::Q4_1, GgmlDType::Q4K, GgmlDType::Q8_0] {
            let (q, r) = quantize_shaped("w", &t, ty, &sh).unwrap();
            eprintln!("{}", r.describe());
            assert!(r.shaped <= r.plain, "{ty:?}: {r:?}");
            assert!(r.shaped < 0.5 * r.plain, "{ty:?}: shaping should more than halve the benign error: {r:?}");
            assert_eq!(q.dtype(), ty);
        }
    }

    #[test]
    fn bad_shaping_is_refused_by_name() {
        let t = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let sh = Shaping { columns: vec![40], moment: vec![1.0], positions: 1 };
        let e = quantize_shaped("blk.w", &t, GgmlDType::Q8_0, &sh).unwrap_err().to_string();
        assert!(e.contains("blk.w") && e.contains("40"), "{e}");
        let sh = Shaping { columns: vec![1, 2], moment: vec![1.0], positions: 1 };
        let e = quantize_shaped("blk.w", &t, GgmlDType::Q8_0, &sh).unwrap_err().to_string();
        assert!(e.contains("4 values"), "{e}");
    }

    /// The block layouts read what candle's quantizer wrote: every element's a·q + b is its dequantized
    /// value, and writing the same q's back gives the same bytes.
    #[test]
    fn block_layouts_read_and_write_candles_blocks() {
        let (rows, n) = (3usize, 512usize);
        let v: Vec<f32> = (0..rows * n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32)).collect();
        let t = Tensor::from_vec(v, (rows, n), &Device::Cpu).unwrap();
        for ty in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let lay = layout(ty).unwrap();
            assert_eq!(lay.block_bytes, ty.type_size(), "{ty:?}");
            assert_eq!(lay.block_len, ty.block_size(), "{ty:?}");
            let q = QTensor::quantize(&t, ty).unwrap();
            let deq = dequantize(&q).unwrap();
            let bytes = q.data().unwrap().into_owned();
            let mut copy = bytes.clone();
            for (bi, b) in bytes.chunks(lay.block_bytes).enumerate() {
                for e in 0..lay.block_len {
                    let (a, z) = affine(ty, b, e);
                    let qv = get_q(ty, b, e);
                    assert!((lay.qmin..=lay.qmax).contains(&qv) || ty == GgmlDType::Q8_0, "{ty:?} q {qv}");
                    let want = deq[bi * lay.block_len + e];
                    let got = a * qv as f32 + z;
                    assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{ty:?} block {bi} element {e}: {got} vs {want}");
                    let cb = &mut copy[bi * lay.block_bytes..(bi + 1) * lay.block_bytes];
                    set_q(ty, cb, e, lay.qmin);
                    set_q(ty, cb, e, qv);
                }
            }
            assert!(copy == bytes, "{ty:?}: writing the q's back changed the bytes");
        }
    }
}
