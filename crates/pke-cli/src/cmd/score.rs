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
    /// Score this reply after each prompt instead of a text: log p(reply | prompt) per prompt (e.g. a
    /// refusal opening, "I'm sorry", on benign prompts: how near the model's refusal boundary each sits).
    #[arg(long, conflicts_with_all = ["text", "file"])]
    reply: Option<String>,
    /// Prompt for --reply; repeat for several.
    #[arg(long = "prompt", short = 'p')]
    prompts: Vec<String>,
    /// Prompt file for --reply (JSONL with `prompt`/`text`, or one prompt per line; adds to --prompt).
    #[arg(long)]
    prompt_file: Option<std::path::PathBuf>,
    /// With --reply: wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(reply) = &a.reply {
        return score_reply(&a, reply);
    }
    if !a.prompts.is_empty() || a.prompt_file.is_some() || a.chat {
        anyhow::bail!("--prompt, --prompt-file and --chat go with --reply (the reply scored after each prompt); a text is scored with --text or --file alone");
    }
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

fn score_reply(a: &Args, reply: &str) -> Result<ExitCode> {
    let mut prompts = a.prompts.clone();
    if let Some(f) = &a.prompt_file {
        prompts.extend(pke::data::sets::read_prompt_file(f)?);
    }
    if prompts.is_empty() {
        anyhow::bail!("--reply scores a reply after prompts: give --prompt or --prompt-file");
    }
    let ck = super::load_model(&a.model)?;
    let s = pke::score::reply_logprobs(&ck.model, &ck.tok, &prompts, reply, a.chat)?;
    if a.json {
        super::print_json(&s)?;
    } else {
        println!("{:>9}  {:>9}  prompt", "logprob", "first");
        for r in &s {
            println!("{:>9.4}  {:>9.4}  {}", r.logprob, r.first, r.prompt);
        }
    }
    Ok(ExitCode::SUCCESS)
}
