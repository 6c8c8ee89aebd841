use std::process::ExitCode;

use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Text to score.
    #[arg(long)]
    text: Option<String>,
    /// File whose whole content is scored.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
    /// Window for texts longer than it (tokens; default 1024, at most the context).
    #[arg(long, default_value_t = 1024)]
    window: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let text = super::read_text(a.text, a.file)?;
    if text.is_empty() {
        anyhow::bail!("the text to score is empty");
    }
    let ck = super::load_model(&a.model)?;
    let ids = ck.tok.encode(&text, true)?;
    let s = pke::score::score_ids_windowed(&ck.model, &ids, a.window)?;
    if a.json {
        super::print_json(&s)?;
    } else {
        println!("{:>6}  {:>10}  token", "pos", "logprob");
        for (t, lp) in s.logprobs.iter().enumerate() {
            let tok = ck.tok.decode(&ids[t + 1..t + 2], false)?;
            println!("{:>6}  {:>10.4}  {:?}", t + 1, lp, tok);
        }
        println!("tokens {}  mean NLL {:.4}  perplexity {:.3}", ids.len(), s.mean_nll, s.perplexity);
    }
    Ok(ExitCode::SUCCESS)
}
