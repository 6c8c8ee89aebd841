use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF file, HF folder, or alias (smollm2, qwen2.5-0.5b, gemma3-270m).
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
}

/// Reads the header only (metadata, tokenizer, tensor list), so it works on models too large to load.
pub fn run(a: Args) -> Result<ExitCode> {
    let ck = pke::io::checkpoint::Header::open(&a.model).with_context(|| format!("cannot read model `{}`", a.model))?;
    let s = &ck.spec;
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let f32_bytes = ck.n_params as f64 * 4.0;
    let available = pke::io::checkpoint::available_memory();
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for t in &ck.tensors {
        *dtypes.entry(t.dtype.clone()).or_default() += 1;
    }
    let v = serde_json::json!({
        "source": ck.source.path(),
        "format": match ck.source { pke::io::checkpoint::Source::Gguf(_) => "gguf", _ => "hf" },
        "architecture": s.arch.to_string(),
        "n_layers": s.n_layers,
        "hidden_size": s.hidden_size,
        "intermediate_size": s.intermediate_size,
        "n_heads": s.n_heads,
        "n_kv_heads": s.n_kv_heads,
        "head_dim": s.head_dim,
        "vocab_size": s.vocab_size,
        "context_length": s.max_position_embeddings,
        "rope_theta": s.rope_theta,
        "tie_word_embeddings": s.tie_word_embeddings,
        "n_params": ck.n_params,
        "stored_bytes": ck.stored_bytes,
        "f32_bytes": ck.n_params as u64 * 4,
        "available_memory_bytes": available,
        "tensor_dtypes": dtypes,
        "tokenizer": ck.tok.kind(),
        "bos_token_id": ck.tok.bos_id,
        "eos_token_id": ck.tok.eos_id,
        "add_bos": ck.tok.adds_bos,
        "chat_template": ck.tok.chat_template.is_some(),
        "spec": s,
        "tensors": if a.tensors { serde_json::to_value(&ck.tensors)? } else { serde_json::Value::Null },
    });
    if a.json {
        super::print_json(&v)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("model         {}", ck.source.path().display());
    println!(
        "architecture  {} ({} layers, d={}, d_ff={}, heads {}/{} kv, head_dim {})",
        s.arch, s.n_layers, s.hidden_size, s.intermediate_size, s.n_heads, s.n_kv_heads, s.head_dim
    );
    println!("vocab         {} ({})", s.vocab_size, ck.tok.kind());
    println!("context       {} (rope theta {})", s.max_position_embeddings, s.rope_theta);
    println!("parameters    {:.1} M{}", ck.n_params as f64 / 1e6, if s.tie_word_embeddings { " (tied embeddings)" } else { "" });
    println!(
        "memory        {:.2} GiB stored; {:.2} GiB as float32 (how pke holds weights){}",
        gib(ck.stored_bytes as f64),
        gib(f32_bytes),
        available.map_or(String::new(), |a| format!("; {:.1} GiB available", gib(a as f64)))
    );
    println!("tensor types  {}", dtypes.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "));
    println!("chat template {}", if ck.tok.chat_template.is_some() { "yes" } else { "no" });
    if a.tensors {
        for t in &ck.tensors {
            println!("  {:<48} {:<6} {:?}  ({})", t.hf_name, t.dtype, t.shape, t.source_name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
