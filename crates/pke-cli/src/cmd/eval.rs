use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pke::eval::judge::RefusalJudge;
use pke::eval::report::{evaluate, EvalSettings, ModelReport};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Base model for KL (same architecture and tokenizer).
    #[arg(long)]
    base: Option<String>,
    /// Items per harmful set (HarmBench test standard, StrongREJECT minus AdvBench).
    #[arg(long, default_value_t = 20)]
    n_harmful: usize,
    #[arg(long, default_value_t = 20)]
    n_benign: usize,
    #[arg(long, default_value_t = 50)]
    n_factual: usize,
    #[arg(long, default_value_t = 1024)]
    ppl_tokens: usize,
    #[arg(long, default_value_t = 48)]
    max_new_tokens: usize,
    /// Do not apply the chat template (base models).
    #[arg(long)]
    no_chat: bool,
    /// Refusal judge: broad or harmbench-prefixes.
    #[arg(long, default_value = "broad")]
    judge: String,
    /// Extra harmful prompt file(s): JSONL with `prompt`/`text`, or one prompt per line.
    #[arg(long = "prompts")]
    prompts: Vec<PathBuf>,
    #[arg(long, default_value = "out/eval")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn markdown(r: &ModelReport) -> String {
    let mut s = format!(
        "# pke eval: {}\n\nmodel sha256 `{}`; {:.0} s\n\n| metric | set | n | value |\n|---|---|---|---|\n",
        r.model, r.model_sha256, r.seconds
    );
    s += &format!("| ASR (overall) | harmful sets | {} | {:.3} |\n", r.asr.n, r.asr.overall);
    for p in &r.asr.per_set {
        s += &format!("| ASR | {} | {} | {:.3} |\n", p.set, p.n, p.value);
    }
    for (name, m) in [
        ("over-refusal", &r.over_refusal),
        ("perplexity", &r.perplexity),
        ("factual accuracy", &r.factual_accuracy),
        ("fluency", &r.fluency),
    ] {
        s += &format!("| {name} | {} | {} | {:.3} |\n", m.set, m.n, m.value);
    }
    if let Some(k) = &r.kl_to_base {
        s += &format!("| KL to base | {} | {} | {:.4} |\n", k.set, k.n, k.value);
    }
    s += &format!("\nASR: {}.\n\nJudge validation (human labels):\n\n| judge | data | n | accuracy | precision | recall |\n|---|---|---|---|---|---|\n", r.asr.definition);
    for v in &r.judge_validation {
        s += &format!("| {:?} | {} | {} | {:.3} | {:.3} | {:.3} |\n", v.judge, v.data, v.n, v.accuracy, v.precision, v.recall);
    }
    s
}

pub fn run(a: Args) -> Result<ExitCode> {
    let settings = EvalSettings {
        n_harmful: a.n_harmful,
        n_benign: a.n_benign,
        n_factual: a.n_factual,
        ppl_tokens: a.ppl_tokens,
        max_new_tokens: a.max_new_tokens,
        chat: !a.no_chat,
        judge: match a.judge.as_str() {
            "broad" => RefusalJudge::Broad,
            "harmbench-prefixes" | "harmbench" => RefusalJudge::HarmbenchPrefixes,
            o => anyhow::bail!("--judge must be broad or harmbench-prefixes, got `{o}`"),
        },
        extra_harmful: a.prompts.clone(),
        ..Default::default()
    };
    let ck = super::load_model(&a.model)?;
    let base = a.base.as_deref().map(super::load_model).transpose()?;
    let bar = super::progress_bar(1, "evaluating");
    let r = evaluate(&ck, base.as_ref(), &settings, |m| bar.set_message(format!("evaluating: {m}")))?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    pke::io::atomic_write(&a.out.join("report.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
    let md = markdown(&r);
    pke::io::atomic_write(&a.out.join("report.md"), md.as_bytes())?;
    if a.json {
        super::print_json(&r)?;
    } else {
        println!("{md}\nwrote {}/report.json and report.md", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
