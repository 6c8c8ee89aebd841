use std::process::ExitCode;

use anyhow::{bail, Result};
use pke::generate::{generate, GenOpts};
use pke::io::chat::prompt_text;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Prompt text; repeat for a batch.
    #[arg(long = "prompt", short = 'p')]
    prompts: Vec<String>,
    /// File with one prompt per line (adds to --prompt).
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Keep the last tokens of a prompt that does not fit the context instead of failing.
    #[arg(long)]
    truncate_left: bool,
    /// Use the GGUF's quantized weights for the matmuls (llama.cpp-style, faster decoding; outputs
    /// differ from the float32 path by quantization noise).
    #[arg(long)]
    quantized: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut prompts = a.prompts.clone();
    if let Some(f) = &a.file {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.display()))?;
        prompts.extend(text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string));
    }
    if prompts.is_empty() {
        bail!("no prompt: give --prompt TEXT or --file FILE");
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        bail!("prompt {i} is empty");
    }
    let mut ck = super::load_model(&a.model)?;
    if a.quantized {
        ck.attach_quantized()?;
    }
    if a.chat && ck.tok.chat_template.is_none() {
        anyhow::bail!("model `{}` has no chat template; drop --chat", a.model);
    }
    let texts: Vec<String> = prompts.iter().map(|p| prompt_text(&ck.tok, p, a.chat, None)).collect::<pke::Result<_>>()?;
    // A rendered chat template carries its own BOS/role tokens (transformers: add_special_tokens=False).
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| ck.tok.encode(t, !a.chat)).collect::<pke::Result<_>>()?;
    let opts = GenOpts {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop_ids: ck.tok.stop_token_ids(),
        truncate_left: a.truncate_left,
    };
    let t0 = std::time::Instant::now();
    let out = generate(&ck.model, &ids, ck.tok.pad_or_eos().unwrap_or(0), &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for (p, g) in prompts.iter().zip(&out) {
        let text = ck.tok.decode(&g.token_ids, true)?;
        results.push(serde_json::json!({
            "prompt": p, "text": text, "token_ids": g.token_ids, "stop_reason": g.stop_reason, "truncated_prompt_tokens": g.truncated,
        }));
    }
    if a.json {
        let n: usize = out.iter().map(|g| g.token_ids.len()).sum();
        let v = if results.len() == 1 { results[0].clone() } else { serde_json::json!({ "results": results }) };
        let mut v = v;
        v["seconds"] = serde_json::json!(secs);
        v["new_tokens"] = serde_json::json!(n);
        super::print_json(&v)?;
    } else {
        for r in &results {
            if results.len() > 1 {
                println!("### {}", r["prompt"].as_str().unwrap_or(""));
            }
            println!("{}", r["text"].as_str().unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}
