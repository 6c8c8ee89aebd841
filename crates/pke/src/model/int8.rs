//! Provides the inference-only int8 matmul `y = x W^T` for weights in Q8_0 blocks, repacked sixteen output
//! rows at a time so that one AVX-512 VNNI instruction (`vpdpbusd`) computes four multiply-adds for each of
//! sixteen output columns, and one load of a weight tile serves up to [`ROWS`] input rows.
//!
//! Why it exists: candle's own quantized matmul takes its tiled VNNI path only when the inner dimension is
//! a multiple of 256 (the K-quant super-block), which leaves out most matrices of the small models pke runs
//! on (SmolLM2's 576, Qwen2.5-0.5B's 896, Gemma 3 270M's 640); its fallback computes one dot product per
//! (row, column), so a batch of sixteen decoding streams costs nearly sixteen single-stream matmuls.
//!
//! The arithmetic is llama.cpp's Q8_0 x Q8_0: each input row is quantized per block of 32 values to int8
//! with a float scale (`amax / 127`), each block's dot product is exact in integers, and the blocks are
//! summed in float32 with the product of the two scales. Weights are stored offset by +128 (unsigned, as
//! `vpdpbusd` wants), and the offset is taken back with each input block's integer sum. A scalar
//! implementation of the same arithmetic runs where the CPU lacks AVX-512 VNNI and is the reference the
//! SIMD kernel is tested against.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;
use rayon::prelude::*;

/// Output columns per weight tile (one 512-bit register of float32).
pub const TILE_N: usize = 16;
/// Values per Q8_0 block.
const QK: usize = 32;
/// Input rows one pass over a weight tile serves (accumulators held in registers).
pub const ROWS: usize = 8;

/// One 32-value block of sixteen weight rows: `qs[(g * 16 + r) * 4 + j]` = row `r`'s value `4 g + j`,
/// plus 128; `d[r]` = row `r`'s block scale (f16, as Q8_0 stores it, so the packed weight takes exactly the
/// bytes of its Q8_0 blocks).
#[repr(C)]
#[derive(Clone)]
struct Tile {
    qs: [u8; QK * TILE_N],
    d: [f16; TILE_N],
}

/// One input row's block of 32 values quantized to int8: `x ~ d * qs`; `sum` = the sum of `qs` (for the
/// weights' +128 offset).
#[derive(Clone, Copy)]
struct ActBlock {
    qs: [i8; QK],
    d: f32,
    sum: i32,
}

/// A weight `(n, k)` in Q8_0 blocks, repacked in tiles of [`TILE_N`] rows: tile `t` holds rows
/// `16 t .. 16 t + 16`, block `b` of them at `tiles[t * k / 32 + b]`.
pub struct PackedQ8 {
    n: usize,
    k: usize,
    tiles: Vec<Tile>,
    simd: bool,
}

/// Whether this CPU runs the AVX-512 VNNI kernel.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedQ8 {
    /// The packed form of `q` for the fast path, or None where it would not be faster than candle's own
    /// kernels: no AVX-512 VNNI on this CPU, a shape that does not tile (`n` not a multiple of 16, `k` not
    /// of 32), or a K-quant type with candle's tiled path. Q8_0 blocks are packed as they are; Q4_0, Q4_1,
    /// Q5_0 and Q5_1 (no SIMD kernels in candle) are re-quantized to Q8_0 first, which keeps every value
    /// within half a Q8_0 step.
    pub fn for_kernels(q: &QTensor) -> candle_core::Result<Option<Self>> {
        if !simd_available() {
            return Ok(None);
        }
        Self::from_qtensor(q, true)
    }

    /// See [`PackedQ8::for_kernels`]; `simd` chooses the kernel (the scalar one is the tested reference).
    fn from_qtensor(q: &QTensor, simd: bool) -> candle_core::Result<Option<Self>> {
        let Ok((n, k)) = q.shape().dims2() else { return Ok(None) };
        if n % TILE_N != 0 || k % QK != 0 || k == 0 {
            return Ok(None);
        }
        let q8 = match q.dtype() {
            GgmlDType::Q8_0 => None,
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
                Some(QTensor::quantize(&q.dequantize(&candle_core::Device::Cpu)?, GgmlDType::Q8_0)?)
            }
            _ => return Ok(None),
        };
        let data = q8.as_ref().unwrap_or(q).data()?;
        Ok(Some(Self::from_q8_0_bytes(&data, n, k, simd)))
    }

    /// Repack row-major Q8_0 blocks (34 bytes each: an f16 scale, 32 int8 values) of an `(n, k)` weight.
    fn from_q8_0_bytes(data: &[u8], n: usize, k: usize, simd: bool) -> Self {
        const BLOCK: usize = 2 + QK;
        let kb = k / QK;
        assert_eq!(data.len(), n * kb * BLOCK, "Q8_0 data of a ({n}, {k}) weight");
        let mut tiles = Vec::with_capacity(n / TILE_N * kb);
        for t in 0..n / TILE_N {
            for b in 0..kb {
                let mut tile = Tile { qs: [0; QK * TILE_N], d: [f16::ZERO; TILE_N] };
                for r in 0..TILE_N {
                    let at = ((t * TILE_N + r) * kb + b) * BLOCK;
                    let blk = &data[at..at + BLOCK];
                    tile.d[r] = f16::from_le_bytes([blk[0], blk[1]]);
                    for g in 0..QK / 4 {
                        for j in 0..4 {
                            tile.qs[(g * TILE_N + r) * 4 + j] = (blk[2 + g * 4 + j] as i8 as i16 + 128) as u8;
                        }
                    }
                }
                tiles.push(tile);
            }
        }
        PackedQ8 { n, k, tiles, simd }
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        self.tiles.len() * std::mem::size_of::<Tile>()
    }

    /// `y (m, n) = x (m, k) W^T`, both row-major.
    pub fn matmul(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k);
        assert_eq!(y.len(), m * n);
        let acts = quantize_rows(x, m, k);
        let kb = k / QK;
        let out = y.as_mut_ptr() as usize;
        (0..n / TILE_N).into_par_iter().for_each(|t| {
            let tiles = &self.tiles[t * kb..(t + 1) * kb];
            for m0 in (0..m).step_by(ROWS) {
                let rows = (m - m0).min(ROWS);
                let mut acc = [[0f32; TILE_N]; ROWS];
                self.tile_rows(tiles, &acts[m0 * kb..(m0 + rows) * kb], kb, rows, &mut acc);
                for (i, a) in acc[..rows].iter().enumerate() {
                    // SAFETY: tile `t` writes columns 16 t .. 16 t + 16 of each row and no other tile
                    // writes them, so the parallel writes never overlap; the index is inside `y` (m * n).
                    unsafe {
                        let dst = (out as *mut f32).add((m0 + i) * n + t * TILE_N);
                        std::ptr::copy_nonoverlapping(a.as_ptr(), dst, TILE_N);
                    }
                }
            }
        });
    }

    /// One tile column for `rows` input rows, on the kernel this weight was packed for.
    fn tile_rows(&self, tiles: &[Tile], acts: &[ActBlock], kb: usize, rows: usize, acc: &mut [[f32; TILE_N]; ROWS]) {
        #[cfg(target_arch = "x86_64")]
        if self.simd {
            // SAFETY: `simd` is only set where `simd_available()` (for_kernels).
            return unsafe { avx512::tile_rows(tiles, acts, kb, rows, acc) };
        }
        tile_rows_scalar(tiles, acts, kb, rows, acc)
    }
}

/// `x` as the int8 kernel reads it: each block of 32 values rounded to int8 on the block's own scale
/// (`amax / 127`, [`quantize_rows`]'s rule) and read back. A length that is not a multiple of 32 (no kernel
/// takes it) comes back unchanged.
pub fn round_q8_0(x: &[f32]) -> Vec<f32> {
    if x.is_empty() || !x.len().is_multiple_of(QK) {
        return x.to_vec();
    }
    quantize_rows(x, 1, x.len()).iter().flat_map(|b| b.qs.map(|q| q as f32 * b.d)).collect()
}

/// Quantize each row of `x (m, k)` per block of 32 values (llama.cpp's Q8_0 rule, scale kept in f32).
fn quantize_rows(x: &[f32], m: usize, k: usize) -> Vec<ActBlock> {
    let mut out = vec![ActBlock { qs: [0; QK], d: 0.0, sum: 0 }; m * k / QK];
    out.par_chunks_mut(k / QK).zip(x.par_chunks(k)).for_each(|(blocks, row)| {
        for (blk, xs) in blocks.iter_mut().zip(row.chunks_exact(QK)) {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in blk.qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            blk.d = d;
            blk.sum = sum;
        }
    });
    out
}

/// The kernel's arithmetic in plain Rust: for each of `rows` input rows, the 16 outputs of one tile column.
fn tile_rows_scalar(tiles: &[Tile], acts: &[ActBlock], kb: usize, rows: usize, acc: &mut [[f32; TILE_N]; ROWS]) {
    for (b, tile) in tiles.iter().enumerate() {
        for i in 0..rows {
            let a = &acts[i * kb + b];
            for (r, out) in acc[i].iter_mut().enumerate() {
                let mut s = 0i32;
                for g in 0..QK / 4 {
                    for j in 0..4 {
                        s += tile.qs[(g * TILE_N + r) * 4 + j] as i32 * a.qs[g * 4 + j] as i32;
                    }
                }
                let dot = (s - 128 * a.sum) as f32;
                *out = dot.mul_add(tile.d[r].to_f32() * a.d, *out);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{ActBlock, Tile, QK, ROWS, TILE_N};
    use std::arch::x86_64::*;

    /// [`super::tile_rows_scalar`] with `vpdpbusd`: the 8 groups of 4 values of a block are loaded once
    /// (8 registers) and used for every input row; two independent integer chains per row hide the
    /// instruction's latency when `rows` is 1 (decoding one stream).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_rows(tiles: &[Tile], acts: &[ActBlock], kb: usize, rows: usize, acc: &mut [[f32; TILE_N]; ROWS]) {
        let mut sums = [_mm512_setzero_ps(); ROWS];
        for (b, tile) in tiles.iter().enumerate() {
            let p = tile.qs.as_ptr() as *const __m512i;
            let w: [__m512i; QK / 4] = std::array::from_fn(|g| _mm512_loadu_si512(p.add(g)));
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(tile.d.as_ptr() as *const __m256i));
            for (i, s) in sums.iter_mut().enumerate().take(rows) {
                let a = &acts[i * kb + b];
                let q = a.qs.as_ptr() as *const i32;
                let mut i0 = _mm512_setzero_si512();
                let mut i1 = _mm512_setzero_si512();
                for g in (0..QK / 4).step_by(2) {
                    i0 = _mm512_dpbusd_epi32(i0, w[g], _mm512_set1_epi32(q.add(g).read_unaligned()));
                    i1 = _mm512_dpbusd_epi32(i1, w[g + 1], _mm512_set1_epi32(q.add(g + 1).read_unaligned()));
                }
                let dot = _mm512_sub_epi32(_mm512_add_epi32(i0, i1), _mm512_set1_epi32(128 * a.sum));
                *s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, _mm512_set1_ps(a.d)), *s);
            }
        }
        for (i, s) in sums.iter().enumerate().take(rows) {
            _mm512_storeu_ps(acc[i].as_mut_ptr(), *s);
        }
    }
}

impl CustomOp1 for PackedQ8 {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    /// `x (.., k)` -> `(.., n)`; `x` must be contiguous float32 (the caller makes it so).
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else { candle_core::bail!("int8-linear: input must be float32") };
        let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("int8-linear: input must be contiguous") };
        let dims = l.shape().dims();
        let k = *dims.last().unwrap_or(&0);
        if k != self.k {
            candle_core::bail!("int8-linear: input has {k} features, weight expects {}", self.k);
        }
        let m = (end - start) / k;
        let mut y = vec![0f32; m * self.n];
        self.matmul(&v[start..end], m, &mut y);
        let mut out = dims.to_vec();
        *out.last_mut().expect("non-empty") = self.n;
        Ok((CpuStorage::F32(y), Shape::from(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn weight(n: usize, k: usize) -> QTensor {
        let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
    }

    /// The scalar arithmetic is Q8_0 x Q8_0: within activation rounding of the float32 product of the
    /// dequantized weight.
    #[test]
    fn scalar_kernel_matches_the_float_product() {
        let (m, k, n) = (5, 96, 48);
        let q = weight(n, k);
        let p = PackedQ8::from_qtensor(&q, false).unwrap().expect("tiles");
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let want = x.matmul(&q.dequantize(&Device::Cpu).unwrap().t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut got = vec![0f32; m * n];
        p.matmul(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), m, &mut got);
        let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let err = want.iter().zip(&got).fold(0f32, |a, (w, g)| a.max((w - g).abs()));
        assert!(err < 0.02 * scale, "max error {err} against outputs up to {scale}");
        assert!(err > 0.0, "activations are quantized, so the product cannot be exact");
    }

    /// `round_q8_0` is candle's Q8_0 round trip up to the scale (f16 there, f32 in the kernel: up to
    /// 127 x 2^-11 of a step apart): each value within half a step of where it was, a block with one large
    /// value rounded coarsely, and a length no kernel takes left alone.
    #[test]
    fn round_q8_0_rounds_each_block_on_its_largest_value() {
        let mut x = Tensor::randn(0f32, 1.0, (1, 64), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        x[40] = 100.0;
        let r = round_q8_0(&x);
        let c = QTensor::quantize(&Tensor::from_slice(&x, (1, 64), &Device::Cpu).unwrap(), GgmlDType::Q8_0)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (b, (rb, xb)) in r.chunks(32).zip(x.chunks(32)).enumerate() {
            let step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            for (i, (v, o)) in rb.iter().zip(xb).enumerate() {
                assert!((v - o).abs() <= 0.5 * step * 1.0001, "block {b} value {i}: {o} -> {v}, step {step}");
                assert!((v - c[b * 32 + i]).abs() <= step * 0.07, "block {b} value {i}: {v} against candle's {}", c[b * 32 + i]);
            }
        }
        // The block holding 100 rounds its other values on a step of 0.79: most of them move.
        assert!(r[32..64].iter().zip(&x[32..64]).filter(|(v, o)| (*v - *o).abs() > 0.05).count() > 10);
        assert_eq!(round_q8_0(&x[..40]), x[..40].to_vec());
    }

    /// The AVX-512 kernel gives the scalar kernel's numbers (the same integer dot products), for row
    /// counts below, at and above the register tile. Where the CPU lacks AVX-512 VNNI the kernel never
    /// runs (`for_kernels` returns None), which this test checks instead.
    #[test]
    fn simd_kernel_matches_the_scalar_kernel() {
        let q = weight(64, 576);
        let Some(fast) = PackedQ8::for_kernels(&q).unwrap() else {
            assert!(!simd_available());
            return;
        };
        let slow = PackedQ8::from_qtensor(&q, false).unwrap().expect("tiles");
        for m in [1, 7, 8, 17] {
            let x = Tensor::randn(0f32, 1.0, (m, 576), &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (mut a, mut b) = (vec![0f32; m * 64], vec![0f32; m * 64]);
            fast.matmul(&x, m, &mut a);
            slow.matmul(&x, m, &mut b);
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "rows {m}: {u} vs {v}");
            }
        }
    }

    /// Q4_1 blocks (SmolLM2's type) are re-quantized to Q8_0; shapes that do not tile and K-quants stay
    /// with candle.
    #[test]
    fn packs_only_what_it_can_tile() {
        let w = Tensor::randn(0f32, 0.05, (32, 256), &Device::Cpu).unwrap();
        for (dt, tiles) in [(GgmlDType::Q4_1, true), (GgmlDType::Q8_0, true), (GgmlDType::Q4K, false), (GgmlDType::Q6K, false)] {
            let q = QTensor::quantize(&w, dt).unwrap();
            assert_eq!(PackedQ8::from_qtensor(&q, false).unwrap().is_some(), tiles, "{dt:?}");
        }
        let odd = QTensor::quantize(&Tensor::zeros((24, 64), candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::Q8_0).unwrap();
        assert!(PackedQ8::from_qtensor(&odd, false).unwrap().is_none(), "24 rows do not tile by 16");
    }
}
