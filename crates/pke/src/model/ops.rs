//! Provides the decoder's numeric building blocks. On any path that carries gradients they are composed
//! from primitive candle ops, because candle's fused `rms_norm`, `softmax_last_dim` and `rope` silently
//! cut or corrupt gradients (see docs/architecture.md). When no gradient flows through an input the fused
//! kernels are used, which is decided per call from `Tensor::track_op`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Result;

/// `x @ w^T` for a weight that gets no gradient: the backward pass returns only the input gradient
/// (candle's matmul backward would also compute the frozen weight's gradient, e.g. for a 262144 x 640
/// tied lm_head, and throw it away).
struct FrozenLinear;

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-linear: input has {k} features, weight expects {k2}");
        }
        let rhs = l2.transpose(0, 1)?; // (k, n) view of the (n, k) weight
        let out = s1.matmul(s2, (1, m, n, k), l1, &rhs)?;
        Ok((out, Shape::from((m, n))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, _) = l2.shape().dims2()?;
        let rhs = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, m, n, k), l1, &rhs)?;
        Ok((out, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// `x @ w^T (+ b)` over the last dimension of `x` (any leading dims). `w` is `(out, in)` as in HF.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("linear input has a feature dimension");
    let m: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((m, k))?; // (tokens, in)
    let y = if w.track_op() {
        x2.matmul(&w.t()?)?
    } else if x2.track_op() {
        x2.contiguous()?.apply_op2_arc(&w.contiguous()?, std::sync::Arc::new(Box::new(FrozenLinear)))?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = w.dim(0)?;
    let y = y.reshape(out_dims)?; // (.., out)
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `x @ W^T` for a frozen weight kept in its GGUF blocks, computed exactly as the float32 path computes
/// it: the forward pass dequantizes `W` for this one product, a piece of rows at a time (the same float32
/// values and the same matmul kernel as [`FrozenLinear`]) and drops it; the backward pass `dX = dY W`
/// dequantizes it again. No float32 copy of the model ever exists, and nothing of `W` stays in the
/// autograd graph. `W` gets no
/// gradient. (Inference-only paths use candle's quantized kernels instead; see `Decoder::lin`.)
pub struct QuantLinear(pub std::sync::Arc<candle_core::quantized::QTensor>);

/// Float32 values of `W` dequantized at a time by [`QuantLinear`] (64 MiB): a 151,936 x 1,536 lm_head
/// is taken in ten row pieces instead of one 0.9 GB copy.
const QUANT_PIECE: usize = 1 << 24;

impl QuantLinear {
    /// Row ranges of `W` (out, in) to dequantize one at a time.
    fn pieces(&self) -> candle_core::Result<Vec<(usize, usize)>> {
        let (n, k) = self.0.shape().dims2()?;
        let rows = (QUANT_PIECE / k.max(1)).max(1);
        Ok((0..n).step_by(rows).map(|r0| (r0, rows.min(n - r0))).collect())
    }

    /// Rows `r0 .. r0 + rows` of `W` as float32 (whole rows of blocks; exact).
    fn piece(&self, r0: usize, rows: usize) -> candle_core::Result<Tensor> {
        let (n, k) = self.0.shape().dims2()?;
        let cpu = candle_core::Device::Cpu;
        if r0 == 0 && rows == n {
            return self.0.dequantize(&cpu);
        }
        let data = self.0.data()?;
        let row_bytes = data.len() / n;
        let bytes = &data[r0 * row_bytes..(r0 + rows) * row_bytes];
        candle_core::quantized::ggml_file::qtensor_from_ggml(self.0.dtype(), bytes, vec![rows, k], &cpu)?.dequantize(&cpu)
    }
}

impl CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        "quant-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let (n, k2) = self.0.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("quant-linear: input has {k} features, weight expects {k2}");
        }
        let pieces = self.pieces()?;
        let mut out = if pieces.len() == 1 { Vec::new() } else { vec![0f32; m * n] };
        for (r0, rows) in pieces {
            let w = self.piece(r0, rows)?;
            let (ws, wl) = w.storage_and_layout();
            let candle_core::Storage::Cpu(ws) = &*ws else { candle_core::bail!("quant-linear: weight not on the CPU") };
            let y = s.matmul(ws, (1, m, rows, k), l, &wl.transpose(0, 1)?)?;
            if rows == n {
                return Ok((y, Shape::from((m, n))));
            }
            let CpuStorage::F32(y) = y else { candle_core::bail!("quant-linear: input must be f32") };
            for i in 0..m {
                out[i * n + r0..i * n + r0 + rows].copy_from_slice(&y[i * rows..(i + 1) * rows]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let mut gx: Option<Tensor> = None;
        for (r0, rows) in self.pieces()? {
            let w = self.piece(r0, rows)?.to_device(x.device())?;
            let g = grad.narrow(1, r0, rows)?.matmul(&w)?;
            gx = Some(match gx {
                Some(a) => (a + g)?,
                None => g,
            });
        }
        Ok(gx)
    }
}

/// `x @ W^T (+ b)` through [`QuantLinear`] (any leading dims of `x`).
pub fn quant_linear(x: &Tensor, w: &std::sync::Arc<candle_core::quantized::QTensor>, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let k = *dims.last().expect("linear input has a feature dimension");
    let m: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((m, k))?.contiguous()?.apply_op1_arc(std::sync::Arc::new(Box::new(QuantLinear(w.clone()))))?;
    let mut out_dims = dims;
    *out_dims.last_mut().expect("non-empty") = y.dim(1)?;
    let y = y.reshape(out_dims)?;
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// RMSNorm over the last dim: `x / sqrt(mean(x^2) + eps) * (offset + w)`.
pub fn rms_norm(x: &Tensor, w: &Tensor, offset: f32, eps: f64) -> Result<Tensor> {
    let w = if offset != 0.0 { (w + offset as f64)? } else { w.clone() };
    if !x.track_op() && !w.track_op() && x.is_contiguous() && x.dtype() == candle_core::DType::F32 {
        return Ok(candle_nn::ops::rms_norm(x, &w, eps as f32)?);
    }
    let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&r)?.broadcast_mul(&w)?)
}

/// Softmax over the last dim.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(candle_nn::ops::softmax_last_dim(&x.contiguous()?)?);
    }
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

/// Log-softmax over the last dim (composed; stable).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

fn f32_rows<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<(&'a [f32], usize, usize)> {
    let (r, v) = l.shape().dims2()?;
    let data = match s {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("kl-rows: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok((&data[a..b], r, v)),
        None => candle_core::bail!("kl-rows: {what} must be contiguous"),
    }
}

/// Row max and log-sum-exp (f64 sum) of one row of logits.
fn row_lse(z: &[f32]) -> f64 {
    let m = z.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    m as f64 + z.iter().map(|&x| (x - m).exp() as f64).sum::<f64>().ln()
}

/// Per-row `KL(P || softmax(z))` for logits `z` (r, V) and fixed log-probabilities `b` (r, V) of `P`,
/// shape (r,). One parallel pass per row, where the composed form makes about ten single-threaded
/// element-wise passes over r x V values (V = 262,144 for Gemma: the locality KL dominated a `pke` edit).
/// Backward in closed form: dKL_r/dz = softmax(z_r) - exp(b_r); `b` gets no gradient.
struct KlRows;

impl CustomOp2 for KlRows {
    fn name(&self) -> &'static str {
        "kl-rows"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, r, v) = f32_rows(s1, l1, "logits")?;
        let (b, r2, v2) = f32_rows(s2, l2, "base log-probabilities")?;
        if (r, v) != (r2, v2) {
            candle_core::bail!("kl-rows: logits ({r}, {v}) and base ({r2}, {v2}) differ in shape");
        }
        let out: Vec<f32> = (0..r)
            .into_par_iter()
            .map(|i| {
                let (zr, br) = (&z[i * v..(i + 1) * v], &b[i * v..(i + 1) * v]);
                let lse = row_lse(zr);
                zr.iter().zip(br).map(|(&x, &y)| y.exp() as f64 * (y as f64 - x as f64 + lse)).sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(r)))
    }

    fn bwd(&self, z: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = z.apply_op3_no_bwd(b, &grad.contiguous()?, &KlRowsGrad)?;
        Ok((Some(g), None))
    }
}

/// `g_r * (softmax(z_r) - exp(b_r))`, the input gradient of [`KlRows`].
struct KlRowsGrad;

impl CustomOp3 for KlRowsGrad {
    fn name(&self) -> &'static str {
        "kl-rows-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, r, v) = f32_rows(s1, l1, "logits")?;
        let (b, _, _) = f32_rows(s2, l2, "base log-probabilities")?;
        let g = match (s3, l3.contiguous_offsets()) {
            (CpuStorage::F32(d), Some((a, e))) if e - a == r => &d[a..e],
            _ => candle_core::bail!("kl-rows: gradient must be a contiguous f32 vector of {r}"),
        };
        let mut out = vec![0f32; r * v];
        out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            let (zr, br) = (&z[i * v..(i + 1) * v], &b[i * v..(i + 1) * v]);
            let lse = row_lse(zr) as f32;
            for ((o, &x), &y) in o.iter_mut().zip(zr).zip(br) {
                *o = g[i] * ((x - lse).exp() - y.exp());
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((r, v))))
    }
}

/// Row-wise log-softmax with the same log-sum-exp as [`KlRows`], no gradient: the reference
/// log-probabilities a KL is later taken against, so that KL(P || P) computes to ~0 (1e-8, not 1e-6).
struct LogSoftmaxRows;

impl CustomOp1 for LogSoftmaxRows {
    fn name(&self) -> &'static str {
        "log-softmax-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (z, r, v) = f32_rows(s, l, "logits")?;
        let mut out = vec![0f32; r * v];
        out.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
            let zr = &z[i * v..(i + 1) * v];
            let lse = row_lse(zr);
            for (o, &x) in o.iter_mut().zip(zr) {
                *o = (x as f64 - lse) as f32;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((r, v))))
    }
}

/// Reference log-probabilities (r, V) for [`kl_rows`], detached. Fused on CPU, composed elsewhere.
pub fn base_log_probs(z: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() && z.dtype() == candle_core::DType::F32 && z.rank() == 2 {
        return Ok(z.detach().contiguous()?.apply_op1_no_bwd(&LogSoftmaxRows)?);
    }
    Ok(log_softmax_last(z)?.detach())
}

/// Per-row `KL(P || softmax(z))`, shape (r,), for logits `z` (r, V) and log-probabilities `b` (r, V) of
/// a fixed `P` (no gradient to `b`). Fused on CPU; composed from primitives elsewhere.
pub fn kl_rows(z: &Tensor, b: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() && z.rank() == 2 && z.dtype() == candle_core::DType::F32 && b.dtype() == candle_core::DType::F32 {
        return Ok(z.contiguous()?.apply_op2_arc(&b.detach().contiguous()?, std::sync::Arc::new(Box::new(KlRows)))?);
    }
    let post = log_softmax_last(z)?;
    Ok((b.exp()? * (b - post)?)?.sum(D::Minus1)?)
}

/// RoPE with half-split pairs (i, i + hd/2), as transformers' `rotate_half`.
/// `x`: (b, heads, s, hd); `cos`, `sin`: (b, 1, s, hd).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// cos/sin tables for `positions` (b, s) as f32: (b, 1, s, hd), with `inv_freq = 1/theta^(2i/hd)`
/// computed in f32 as transformers does.
pub fn rope_tables(positions: &[Vec<u32>], head_dim: usize, theta: f64, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half).map(|i| 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32)).collect();
    let b = positions.len();
    let s = positions.first().map(|p| p.len()).unwrap_or(0);
    let mut cos = Vec::with_capacity(b * s * head_dim);
    let mut sin = Vec::with_capacity(b * s * head_dim);
    for row in positions {
        for &p in row {
            let f: Vec<f32> = inv.iter().map(|&w| p as f32 * w).collect();
            for _ in 0..2 {
                cos.extend(f.iter().map(|a| a.cos()));
                sin.extend(f.iter().map(|a| a.sin()));
            }
        }
    }
    let cos = Tensor::from_vec(cos, (b, 1, s, head_dim), dev)?;
    let sin = Tensor::from_vec(sin, (b, 1, s, head_dim), dev)?;
    Ok((cos, sin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        d / n.max(1e-12)
    }

    #[test]
    fn quant_linear_equals_the_float_path_on_the_dequantized_weight() -> Result<()> {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        for ty in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
            // 48 rows fit one piece; 65,600 x 256 rows take two (the second partial).
            for rows in [48, 65_600] {
                let w = Tensor::randn(0f32, 0.05, (rows, 256), &dev)?;
                let q = std::sync::Arc::new(QTensor::quantize(&w, ty)?);
                let wd = q.dequantize(&dev)?; // the weight the op stands for
                let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 256), &dev)?)?;
                let r = Tensor::randn(0f32, 1., (2, 3, rows), &dev)?;
                let bias = Tensor::randn(0f32, 1., rows, &dev)?;
                let y = quant_linear(x.as_tensor(), &q, Some(&bias))?;
                let y_ref = linear(&x.as_tensor().detach(), &wd, Some(&bias))?;
                // Forward: the float32 path's own kernel on the dequantized weight.
                assert!(rel(&y, &y_ref) < 1e-6, "{ty:?} {rows}: forward rel {}", rel(&y, &y_ref));
                // Backward: dX = dY W with the dequantized W, exactly what the float path gives.
                let g = (y * &r)?.sum_all()?.backward()?;
                let gx = g.get(x.as_tensor()).expect("x gets a gradient");
                let gx_ref = r.reshape((6, rows))?.matmul(&wd)?.reshape((2, 3, 256))?;
                assert!(rel(gx, &gx_ref) < 1e-5, "{ty:?} {rows}: grad rel {}", rel(gx, &gx_ref));
            }
        }
        Ok(())
    }

    #[test]
    fn fused_kl_rows_matches_the_composed_form_and_its_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (r, v) = (3, 1000);
        let z = Var::from_tensor(&(Tensor::randn(0f32, 3.0, (r, v), &dev)?))?;
        let b = log_softmax_last(&Tensor::randn(0f32, 2.0, (r, v), &dev)?)?;
        let fused = kl_rows(z.as_tensor(), &b)?;
        let zc = z.as_tensor().clone();
        let composed = (b.exp()? * (&b - log_softmax_last(&zc)?)?)?.sum(D::Minus1)?;
        assert!(rel(&fused, &composed) < 1e-5, "values {}", rel(&fused, &composed));
        // KL of a distribution with itself, reference taken with base_log_probs: zero up to the f32
        // rounding of the stored log-probabilities. Each log p_i is rounded to nearest (relative error
        // at most 2^-24), and KL(P||P) computes to sum_i p_i * (rounding error of log p_i), so per row
        // |KL| <= 2^-24 * sum_i p_i |log p_i| = 2^-24 * H(P): about 1e-7 for these rows, which is why
        // a fixed 1e-7 bound failed now and then on unseeded logits.
        let zt = z.as_tensor().detach();
        let own = kl_rows(&zt, &base_log_probs(&zt)?)?.abs()?.to_vec1::<f32>()?;
        let lp = log_softmax_last(&zt)?;
        let entropy = (lp.exp()? * lp.neg()?)?.sum(D::Minus1)?.to_vec1::<f32>()?;
        for (k, h) in own.iter().zip(&entropy) {
            assert!(*k <= 1.01 * h * 2f32.powi(-24) + 1e-12, "KL(P||P) = {k}, above the rounding bound of entropy {h}");
        }
        // Weighted sum so each row's gradient is scaled differently.
        let w = Tensor::new(&[1.0f32, -2.0, 0.5], &dev)?;
        let gf = (fused * &w)?.sum_all()?.backward()?.get(z.as_tensor()).unwrap().clone();
        let gc = (composed * &w)?.sum_all()?.backward()?.get(z.as_tensor()).unwrap().clone();
        assert!(rel(&gf, &gc) < 1e-5, "gradients {}", rel(&gf, &gc));
        // Finite difference on the logit with the largest gradient (f32: a small one drowns in rounding).
        let gv = gf.to_vec2::<f32>()?;
        let (ri, ci) =
            (0..r).flat_map(|i| (0..v).map(move |j| (i, j))).max_by(|a, c| gv[a.0][a.1].abs().total_cmp(&gv[c.0][c.1].abs())).unwrap();
        let eps = 1e-2f32;
        let zv = z.as_tensor().to_vec2::<f32>()?;
        let at = |d: f32| -> Result<f32> {
            let mut zz = zv.clone();
            zz[ri][ci] += d;
            Ok((kl_rows(&Tensor::new(zz, &dev)?, &b)? * &w)?.sum_all()?.to_scalar::<f32>()?)
        };
        let fd = (at(eps)? - at(-eps)?) / (2.0 * eps);
        let an = gv[ri][ci];
        assert!((fd - an).abs() < 1e-2 * an.abs(), "fd {fd} vs analytic {an}");
        Ok(())
    }

    #[test]
    fn frozen_linear_matches_matmul_and_its_input_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 3, 5), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (4, 5), &dev)?;
        let y = linear(x.as_tensor(), &w, None)?;
        let y_ref = x.as_tensor().broadcast_matmul(&w.t()?)?;
        assert!(rel(&y, &y_ref) < 1e-6);
        let g = y.sqr()?.sum_all()?.backward()?;
        let g_ref = y_ref.sqr()?.sum_all()?.backward()?;
        assert!(rel(g.get(x.as_tensor()).unwrap(), g_ref.get(x.as_tensor()).unwrap()) < 1e-6);
        Ok(())
    }

    #[test]
    fn fused_and_composed_paths_agree() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 8), &dev)?;
        let w = Tensor::randn(0f32, 1., 8, &dev)?;
        let xv = Var::from_tensor(&x)?;
        assert!(rel(&rms_norm(&x, &w, 1.0, 1e-6)?, &rms_norm(xv.as_tensor(), &w, 1.0, 1e-6)?) < 1e-5);
        assert!(rel(&softmax_last(&x)?, &softmax_last(xv.as_tensor())?) < 1e-6);
        assert!(rel(&log_softmax_last(&x)?.exp()?, &softmax_last(&x)?) < 1e-6);
        Ok(())
    }
}
