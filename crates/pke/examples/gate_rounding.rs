//! Diagnostic: where a gated edit's read breaks under quantization. For the gate neuron of an edited model
//! (argv: edited folder, base GGUF, layer, neuron, and the row's type: q4_1 (default), q5_0 or q8_0), the
//! gate's pre-activation z at the last prompt token of the built-in look-alikes' validation half (benign
//! sides and harmful twins), computed several ways: exactly; with the MLP input from the base GGUF run on
//! its quantized kernels (upstream layers as a quantized model runs them); that input also rounded to Q8_0
//! blocks (as the int8 kernel rounds it); the gate row rounded to its type (then Q8_0, as the kernel
//! repacks it); and both. Used for docs/validation.md, "A gate read that survives re-quantization".
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use pke::data::probes::{builtin_probes, split, Split};
use pke::edit::encode_prompts;
use pke::io::checkpoint::Checkpoint;
use pke::model::Input;
use pke::trace::{Capture, Site};

fn round_to(row: &[f32], ty: GgmlDType) -> Vec<f32> {
    let t = Tensor::from_slice(row, (1, row.len()), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, ty).unwrap();
    q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn last_input(ck: &Checkpoint, ids: &[u32], layer: usize) -> Vec<f32> {
    let mut cap = Capture::new([Site::MlpIn(layer)]);
    cap.stop = Some(layer);
    ck.model.forward_with(&Input::single(ids), &mut cap, None).unwrap();
    let x = cap.get(Site::MlpIn(layer)).unwrap().i(0).unwrap().to_dtype(DType::F32).unwrap();
    x.get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap()
}

fn main() -> pke::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let (edited, base, layer, neuron): (&str, &str, usize, usize) = (&a[1], &a[2], a[3].parse().unwrap(), a[4].parse().unwrap());
    let ed = Checkpoint::open(edited)?;
    let gate = ed.model.get(&format!("model.layers.{layer}.mlp.gate_proj.weight"))?.to_dtype(DType::F32)?;
    let w = gate.get(neuron)?.to_vec1::<f32>()?;
    let ty = match a.get(5).map(String::as_str) {
        Some("q5_0") => GgmlDType::Q5_0,
        Some("q8_0") => GgmlDType::Q8_0,
        _ => GgmlDType::Q4_1,
    };
    let wq = round_to(&round_to(&w, ty), GgmlDType::Q8_0);
    let w8 = round_to(&w, GgmlDType::Q8_0);
    let mut qbase = Checkpoint::open(base)?;
    let exact_base = Checkpoint::open(base)?;
    qbase.attach_quantized()?;
    let mut blocks = vec![0f64; w.len() / 32];
    for (i, v) in w.iter().enumerate() {
        blocks[i / 32] = blocks[i / 32].max(v.abs() as f64);
    }
    println!("gate row: |w| max per 32-block {:?}", blocks.iter().map(|b| format!("{b:.2}")).collect::<Vec<_>>());
    for (kind, texts) in [
        ("benign", split(&builtin_probes(), Split::Validation).iter().map(|p| p.benign.clone()).collect::<Vec<_>>()),
        ("harmful", split(&builtin_probes(), Split::Validation).iter().filter_map(|p| p.harmful.clone()).collect()),
    ] {
        let ids = encode_prompts(&ed.tok, &texts, true, "probe")?;
        let mut rows = Vec::new();
        let mut open = [0usize; 7];
        let mut xmax = vec![0f64; w.len() / 32];
        for t in &ids {
            let xe = last_input(&exact_base, t, layer);
            let xq = last_input(&qbase, t, layer);
            for (i, v) in xe.iter().enumerate() {
                xmax[i / 32] = xmax[i / 32].max(v.abs() as f64);
            }
            let x8 = round_to(&xq, GgmlDType::Q8_0);
            let z = [
                dot(&w, &xe),
                dot(&w, &xq),
                dot(&w, &x8),
                dot(&wq, &xe),
                dot(&wq, &x8),
                dot(&w8, &x8),
                dot(&w, &round_to(&xe, GgmlDType::Q8_0)),
            ];
            for (o, v) in open.iter_mut().zip(z) {
                *o += (v > 0.0) as usize;
            }
            rows.push(z);
        }
        let n = rows.len() as f64;
        let rms = |k: usize| (rows.iter().map(|z| (z[k] - z[0]).powi(2)).sum::<f64>() / n).sqrt();
        println!(
            "{kind} ({}): z>0 exact {} | upstream-quantized input {} | + input rounded Q8_0 {} | typed row, exact input {} | typed row, rounded input {} | Q8_0 row, rounded input {} | exact upstream, rounded input {}",
            rows.len(),
            open[0],
            open[1],
            open[2],
            open[3],
            open[4],
            open[5],
            open[6]
        );
        println!(
            "  rms shift of z from exact: upstream {:.3}, +rounded input {:.3}, typed row {:.3}, both {:.3}, Q8_0 row+input {:.3}, rounded input alone {:.3}; mean z exact {:.3}",
            rms(1),
            rms(2),
            rms(3),
            rms(4),
            rms(5),
            rms(6),
            rows.iter().map(|z| z[0]).sum::<f64>() / n
        );
        println!("  input |x| max per block {:?}", xmax.iter().map(|b| format!("{b:.1}")).collect::<Vec<_>>());
    }
    Ok(())
}
