use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use pke::model::decoder::{down_proj_name, make_trainable, token_logprobs};
use pke::model::Input;

#[derive(clap::Args)]
pub struct Args {
    /// Models to benchmark (aliases or paths).
    #[arg(long = "model", short, default_values_t = vec!["smollm2".to_string()])]
    models: Vec<String>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long)]
    json: bool,
    /// Batch size of the aggregate decode throughput (greedy, KV cache, 16-token prompts).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Run only the forward+backward measurement (for profiling).
    #[arg(long)]
    only_fwd_bwd: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub fn run(a: Args) -> Result<ExitCode> {
    anyhow::ensure!((1..=32).contains(&a.batch), "--batch must be in 1..=32, got {}", a.batch);
    let mut rows = Vec::new();
    for m in &a.models {
        let t0 = Instant::now();
        let ck = super::load_model(m)?;
        let load = t0.elapsed().as_secs_f64();
        let model = &ck.model;
        let ids: Vec<u32> = (0..512u32).map(|i| 100 + (i * 7919) % 5000).collect();
        let prefill = |n: usize| -> Result<f64> {
            let mut ts = Vec::new();
            for _ in 0..a.reps {
                let t = Instant::now();
                let h = model.forward(&Input::single(&ids[..n]))?;
                model.last_logits(&h)?;
                ts.push(t.elapsed().as_secs_f64());
            }
            Ok(n as f64 / median(ts))
        };
        let quick = a.only_fwd_bwd;
        let p64 = if quick { f64::NAN } else { prefill(64)? };
        let p512 = if quick { f64::NAN } else { prefill(512)? };
        let opts = pke::generate::GenOpts { max_new_tokens: 64, ..Default::default() };
        // Greedy decode throughput: new tokens of every prompt per second (median over the repetitions),
        // for one 16-token prompt and for a batch of different ones.
        let single = vec![ids[..16].to_vec()];
        let batch: Vec<Vec<u32>> = (0..a.batch).map(|r| ids[r * 16..r * 16 + 16].to_vec()).collect();
        let rate = |m: &pke::model::Decoder, prompts: &[Vec<u32>]| -> Result<f64> {
            let mut ts = Vec::new();
            let mut n = 0;
            for _ in 0..if quick { 0 } else { a.reps } {
                let t = Instant::now();
                let g = pke::generate::generate(m, prompts, 0, &opts)?;
                ts.push(t.elapsed().as_secs_f64());
                n = g.iter().map(|x| x.token_ids.len()).sum::<usize>();
            }
            Ok(if ts.is_empty() { f64::NAN } else { n as f64 / median(ts) })
        };
        let (decode, decode_b) = (rate(model, &single)?, rate(model, &batch)?);
        // The same decodes with the GGUF's quantized blocks (inference-only path).
        let mut qck = super::load_model(m)?;
        let nq = qck.attach_quantized()?;
        let (decode_q, decode_bq) = if nq == 0 { (f64::NAN, f64::NAN) } else { (rate(&qck.model, &single)?, rate(&qck.model, &batch)?) };
        drop(qck);
        // forward + backward on 64 tokens with one down_proj trainable
        let mut tm = model.clone();
        let layer = tm.spec.n_layers / 2;
        let vars = make_trainable(&mut tm, &[down_proj_name(layer)])?;
        let mut ts = Vec::new();
        for _ in 0..a.reps {
            let t = Instant::now();
            let h = tm.forward(&Input::single(&ids[..64]))?.squeeze(0)?;
            let logits = tm.logits(&h.narrow(0, 0, 63)?)?;
            let loss = token_logprobs(&logits, &ids[1..64])?.mean_all()?.neg()?;
            let g = loss.backward()?;
            assert!(g.get(vars[0].1.as_tensor()).is_some());
            ts.push(t.elapsed().as_secs_f64());
        }
        let fb = median(ts);
        rows.push(serde_json::json!({
            "model": m, "load_s": load, "prefill64_tok_s": p64, "prefill512_tok_s": p512,
            "decode_tok_s": decode, "decode_quantized_tok_s": decode_q,
            "batch": a.batch, "decode_batch_tok_s": decode_b, "decode_batch_quantized_tok_s": decode_bq, "fwd_bwd64_s": fb, "peak_rss_mb": peak_rss_mb(),
        }));
    }
    if a.json {
        super::print_json(&rows)?;
    } else {
        println!("threads: RAYON_NUM_THREADS={}", std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "(all cores)".into()));
        println!(
            "| model | load s | prefill 64 tok/s | prefill 512 tok/s | decode tok/s (f32) | decode tok/s (quantized) | batch {b} decode tok/s (f32) | batch {b} decode tok/s (quantized) | fwd+bwd 64 tok s | peak RSS MB |",
            b = a.batch
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.3} | {:.0} |",
                r["model"].as_str().unwrap(),
                r["load_s"].as_f64().unwrap(),
                r["prefill64_tok_s"].as_f64().unwrap(),
                r["prefill512_tok_s"].as_f64().unwrap(),
                r["decode_tok_s"].as_f64().unwrap(),
                r["decode_quantized_tok_s"].as_f64().unwrap_or(f64::NAN),
                r["decode_batch_tok_s"].as_f64().unwrap_or(f64::NAN),
                r["decode_batch_quantized_tok_s"].as_f64().unwrap_or(f64::NAN),
                r["fwd_bwd64_s"].as_f64().unwrap(),
                r["peak_rss_mb"].as_f64().unwrap()
            );
        }
        println!("(peak RSS is the process high-water mark after each model, so it accumulates)");
    }
    Ok(ExitCode::SUCCESS)
}
