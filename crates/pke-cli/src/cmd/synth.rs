//! `pke synth`: a GGUF with a large model's exact configuration and random weights (fixed seed), for
//! benchmarking the mechanics at full size without downloading the model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pke::io::gguf::GgufFile;
use pke::io::synth::{shape, write_synthetic, SynthType};

#[derive(clap::Args)]
pub struct Args {
    /// llama-2-7b, llama-3-8b, mistral-7b (or tiny, for tests).
    #[arg(long)]
    shape: String,
    /// q4_k_m (llama.cpp's mix) or q8_0.
    #[arg(long = "type", default_value = "q4_k_m")]
    ty: String,
    /// Installed model whose tokenizer is copied (default: the one with the closest vocabulary).
    #[arg(long)]
    tokenizer: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output GGUF file (never overwritten in place: written to a temporary file and renamed).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let s = shape(&a.shape)?;
    let ty: SynthType = a.ty.parse()?;
    let tok_model = a.tokenizer.as_deref().unwrap_or(s.tokenizer);
    let tok_path = pke::io::checkpoint::resolve_model(tok_model)?;
    let g = GgufFile::open(&tok_path).with_context(|| format!("the tokenizer source must be a GGUF model: {}", tok_path.display()))?;
    let t0 = std::time::Instant::now();
    let n = write_synthetic(s, ty, &g, a.seed, &a.out)?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({} shape, {:?}, {:.2} B parameters, {:.2} GiB, tokenizer of {tok_model}) in {:.0} s; random weights: no claim about quality",
        a.out.display(),
        s.name,
        ty,
        n as f64 / 1e9,
        bytes as f64 / (1u64 << 30) as f64,
        t0.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
