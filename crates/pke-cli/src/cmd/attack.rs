//! `pke attack`: the edited model and its base under attacks that undo shallow safety edits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pke::attack::{attack, markdown, work_dir, Attack, AttackSettings};

/// The attacks' options, shared by `pke attack` and `pke compare --attacks`.
#[derive(clap::Args)]
pub struct AttackArgs {
    /// Types the edited tensors are re-quantized to: `source` (each tensor's type in the base GGUF) and/or
    /// GGML names (q8_0, q4_0, q4_k, ...), comma-separated; `TYPE+shaped` rounds the edited down_proj as
    /// `pke apply --gguf-type source` does by default (activation-aware), plain `TYPE` as any quantizer.
    #[arg(long, default_value = "source,source+shaped", value_delimiter = ',')]
    requant_types: Vec<String>,
    /// Prompts per side (harmful AdvBench from the back, harmless retain prompts) for the refusal direction.
    #[arg(long, default_value_t = 32)]
    ablate_prompts: usize,
    /// Held-aside harmful prompts on which each candidate layer's ablation is tried.
    #[arg(long, default_value_t = 8)]
    ablate_select: usize,
    /// Templates per jailbreak family (classic, Arth_Singh, in_the_wild, pliny), each wrapping a HarmBench
    /// behaviour.
    #[arg(long, default_value_t = 8)]
    jailbreak_per_family: usize,
    /// Benign fine-tuning of every MLP weight on GSM8K with reference answers: evaluate after these
    /// numbers of steps, comma-separated.
    #[arg(long, default_value = "10,50,100", value_delimiter = ',')]
    finetune_steps: Vec<usize>,
    /// Adam learning rate of the fine-tuning attack.
    #[arg(long, default_value_t = 2e-5)]
    finetune_lr: f64,
    /// Examples per fine-tuning step.
    #[arg(long, default_value_t = 2)]
    finetune_batch: usize,
    /// Seed of the fine-tuning example order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl AttackArgs {
    /// The settings for `attacks` (names as on the command line), evaluated with `eval`.
    pub fn settings(&self, attacks: &[String], eval: pke::eval::report::EvalSettings) -> Result<AttackSettings> {
        Ok(AttackSettings {
            attacks: attacks.iter().map(|x| x.parse::<Attack>()).collect::<Result<Vec<_>, _>>()?,
            eval,
            requant_types: self.requant_types.clone(),
            ablate_prompts: self.ablate_prompts,
            ablate_select: self.ablate_select,
            jailbreak_per_family: self.jailbreak_per_family,
            finetune_steps: self.finetune_steps.clone(),
            finetune_lr: self.finetune_lr,
            finetune_batch: self.finetune_batch,
            seed: self.seed,
        })
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The edited model (HF folder or GGUF written by `pke edit`/`pke apply`).
    #[arg(long, short)]
    model: String,
    /// The model it was edited from (the vanilla model): a GGUF file or alias for the requant attack.
    #[arg(long)]
    base: String,
    /// Attacks, comma-separated: prefill, requant, ablate, jailbreak, finetune.
    #[arg(long, default_value = "prefill,requant,ablate,jailbreak,finetune", value_delimiter = ',')]
    attacks: Vec<String>,
    #[command(flatten)]
    options: AttackArgs,
    #[command(flatten)]
    eval: super::eval::EvalArgs,
    /// Do not apply the chat template (base models).
    #[arg(long)]
    no_chat: bool,
    #[arg(long, default_value = "out/attack")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let settings = a.options.settings(&a.attacks, a.eval.settings(!a.no_chat)?)?;
    let base = super::load_model(&a.base)?;
    let mut edited = super::load_model(&a.model)?;
    // The edited model differs from its base in a few tensors: hold the rest once (on Qwen2.5-Coder-0.5B
    // ~2 GB less for the whole attack).
    crate::returning_freed_memory(|| pke::attack::share_base(&mut edited, &base))?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let bar = super::progress_bar(1, "attacking");
    let r = attack(&edited, &base, &settings, &work_dir(&a.out), |what, m| bar.set_message(format!("{what}: {m}")))?;
    bar.finish_and_clear();
    let _ = std::fs::remove_dir(work_dir(&a.out));
    pke::io::atomic_write(&a.out.join("attack.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
    let md = markdown(&r);
    pke::io::atomic_write(&a.out.join("attack.md"), md.as_bytes())?;
    pke::attack::chart(&r, &a.out.join("attack.svg"))?;
    if a.json {
        super::print_json(&r)?;
    } else {
        println!("{md}\nwrote {0}/attack.json, {0}/attack.md, {0}/attack.svg", a.out.display());
    }
    Ok(ExitCode::SUCCESS)
}
