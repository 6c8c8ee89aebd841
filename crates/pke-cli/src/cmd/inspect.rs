use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;

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

pub fn run(a: Args) -> Result<ExitCode> {
    let ck = super::load_model(&a.model)?;
    let s = &ck.model.spec;
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
        "n_params": ck.model.n_params(),
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
    println!("parameters    {:.1} M{}", ck.model.n_params() as f64 / 1e6, if s.tie_word_embeddings { " (tied embeddings)" } else { "" });
    println!("tensor types  {}", dtypes.iter().map(|(k, v)| format!("{k} x{v}")).collect::<Vec<_>>().join(", "));
    println!("chat template {}", if ck.tok.chat_template.is_some() { "yes" } else { "no" });
    if a.tensors {
        for t in &ck.tensors {
            println!("  {:<48} {:<6} {:?}  ({})", t.hf_name, t.dtype, t.shape, t.source_name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
