//! Which matmul orientation is fastest for y = x W^T on this machine (x: (m,k), W: (n,k))?
use candle_core::{Device, Tensor};
use std::time::Instant;

fn time(f: impl Fn() -> Tensor) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (m, k, n) in [(63, 576, 49152), (64, 576, 1536), (64, 1536, 576), (64, 640, 262144), (1, 576, 1536), (512, 576, 1536)] {
        let x = Tensor::randn(0f32, 1., (m, k), &dev)?;
        let w = Tensor::randn(0f32, 1., (n, k), &dev)?;
        let wt = w.t()?.contiguous()?; // (k, n)
        let a = time(|| x.matmul(&w.t().unwrap()).unwrap());
        let b = time(|| x.matmul(&wt).unwrap());
        let c = time(|| w.matmul(&x.t().unwrap()).unwrap().t().unwrap().contiguous().unwrap());
        let gf = 2.0 * (m * k * n) as f64 / 1e9;
        println!("m={m:4} k={k:5} n={n:6}: x@W^T(view) {:6.1} GF/s | x@Wt(contig) {:6.1} | (W@x^T)^T {:6.1}", gf / a, gf / b, gf / c);
    }
    Ok(())
}
