use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pke::edit::{compute_delta_with, EditParams, Method, WeightDelta};
use pke::io::card::CardInput;
use pke::locate::{locate, Hotspots, LocateSettings, Locator};

/// Where an edited model is written.
#[derive(clap::Args)]
pub struct OutputArgs {
    /// Write the model as a HF folder here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the model as a GGUF file here (the source must be a GGUF).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Type of the changed tensors in the GGUF: f32, f16, or source (re-quantized to the original type).
    #[arg(long, default_value = "f32")]
    gguf_type: String,
    /// How `--gguf-type source` rounds an edited `down_proj`: `shaped` (on the grid plain rounding picks,
    /// with GPTQ's error feedback through the benign keys, so benign inputs see less of the rounding) or
    /// `plain` (the type's quantizer, as llama.cpp's).
    #[arg(long, default_value = "shaped", value_parser = ["shaped", "plain"])]
    gguf_rounding: String,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    #[command(flatten)]
    cases: super::cases::CaseArgs,
    /// pke (the intent gate at the located layer by default, or its hotspot columns with
    /// --config config/presets/hotspot.toml; KL with gradient), dinm (EasyEdit-faithful), ft-l, ga.
    #[arg(long, default_value = "pke")]
    method: String,
    /// hotspots.json from `pke locate`; without it, locate runs first with the options below.
    #[arg(long)]
    hotspots: Option<PathBuf>,
    /// Locator when locating here: pke, attribution, dinm (default: dinm for --method dinm, else pke).
    #[arg(long)]
    locator: Option<String>,
    /// Force the layer(s) when locating here.
    #[arg(long = "layer")]
    layers: Vec<usize>,
    #[arg(long, default_value_t = 0.10)]
    top_fraction: f64,
    /// Hyper-parameter TOML file (keys as in config/methods/<method>.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Hyper-parameter override, key=value (repeatable), e.g. --set lr=1e-3 --set steps=20.
    #[arg(long = "set")]
    overrides: Vec<String>,
    #[command(flatten)]
    retain: super::cases::RetainArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Write the delta file here (always written).
    #[arg(long, default_value = "out/edit/delta.safetensors")]
    delta: PathBuf,
    /// Print per-step losses and output paths as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let method: Method = a.method.parse()?;
    let params = EditParams::resolve(method, a.config.as_deref(), &a.overrides)?;
    let cases = a.cases.load_unread()?;
    let retain = a.retain.load()?;
    if let Some(out) = &a.output.out {
        if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
            bail!("output folder {} exists and is not empty; choose a new path", out.display());
        }
    }
    let ck = super::load_model(&a.model)?;
    let cases = a.cases.choose(&ck, cases)?;
    let sha = ck.sha256()?;
    let t_locate = std::time::Instant::now();
    let hotspots: Hotspots = match &a.hotspots {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
            let h: Hotspots = serde_json::from_str(&text).with_context(|| format!("{} is not a hotspots.json", p.display()))?;
            if h.architecture != ck.model.spec.arch.to_string() || h.layers.len() != ck.model.spec.n_layers {
                bail!(
                    "{} was located on a {} model with {} layers; this model is {} with {}",
                    p.display(),
                    h.architecture,
                    h.layers.len(),
                    ck.model.spec.arch,
                    ck.model.spec.n_layers
                );
            }
            h
        }
        None => {
            let locator = match &a.locator {
                Some(l) => l.parse::<Locator>()?,
                None if method == Method::Dinm => Locator::Dinm,
                None => Locator::Pke,
            };
            let settings = LocateSettings {
                locator,
                // The dinm locator only needs its own rule here (the edit uses the layer, not neuron scores).
                dinm_rule_only: locator == Locator::Dinm,
                layers: a.layers.clone(),
                top_fraction: a.top_fraction,
                chat: a.cases.chat,
                ..Default::default()
            }
            .for_edit(method, &params, retain.as_deref());
            let bar = super::progress_bar(cases.len() as u64, "locating");
            let (mut h, _) = locate(&ck.model, &ck.tok, &cases, &settings, None, |i, _| bar.set_position(i as u64))?;
            bar.finish_and_clear();
            h.model = ck.source.path().display().to_string();
            h.model_sha256 = Some(sha.clone());
            h
        }
    };
    let locate_seconds = if a.hotspots.is_some() { 0.0 } else { t_locate.elapsed().as_secs_f64() };
    let bar = super::progress_bar(1, "editing");
    let outcome = compute_delta_with(&ck.model, &ck.tok, &cases, &hotspots, method, &params, retain.as_deref(), |done, total, s| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("editing  loss {:.4} (nll_safe {:.3}, kl {})", s.loss, s.nll_safe, s.kl_text(4)));
    })?;
    bar.finish_and_clear();
    let mut delta: WeightDelta = outcome.delta;
    delta.metadata.insert("base_sha256".into(), sha);
    delta.metadata.insert("base_model".into(), ck.source.path().display().to_string());
    delta.metadata.insert("weights".into(), ck.model.weights_mode().to_string());
    if let Some(parent) = a.delta.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    delta.save(&a.delta)?;
    if a.output.out.is_some() || a.output.gguf.is_some() {
        let mut model = ck.model.clone();
        delta.apply(&mut model, false)?;
        let card = pke::io::card::model_card(&CardInput { base: &ck, delta: &delta, reverted: false, evaluation: None })?;
        write_outputs(&ck, &model, &delta.names(), &a.output, &card)?;
    }
    if a.json {
        super::print_json(&serde_json::json!({
            "method": method.to_string(), "hparams": params, "steps": outcome.log, "seconds": outcome.seconds, "setup_seconds": outcome.setup_seconds, "locate_seconds": locate_seconds,
            "edited_tensors": delta.names(), "changed_values": delta.n_values(), "preserve": outcome.preserve,
            "delta": a.delta, "hf_folder": a.output.out, "gguf": a.output.gguf, "chosen_layers": outcome.layers, "intent_gate_scan": outcome.layer_scan,
        }))?;
    } else {
        for s in &outcome.log {
            let watch = s
                .watch
                .map(|w| {
                    format!(
                        "  held-out: harmful refused {}, benign refused {:.2}, prose drift {:+.4}",
                        w.harmful_refused.map(|h| format!("{h:.2}")).unwrap_or("-".into()),
                        w.benign_refused,
                        w.drift
                    )
                })
                .unwrap_or_default();
            if s.reverted {
                println!("step {:>3}  taken back (past stop_drift / stop_benign_rise){watch}", s.step);
                continue;
            }
            // The recovery term's NLL (`prefill_weight`) only when it is on.
            let recover = if params.prefill_weight > 0.0 { format!("  nll_recover {:.4}", s.nll_recover) } else { String::new() };
            println!(
                "step {:>3}{}  loss {:.5}  nll_safe {:.4}  kl {}  ul {:.4}  nll_unsafe {:.4}{recover}{watch}",
                s.step,
                s.case.as_deref().map(|c| format!(" [{c}]")).unwrap_or_default(),
                s.loss,
                s.nll_safe,
                s.kl_text(5),
                s.unlikelihood,
                s.nll_unsafe
            );
        }
        println!(
            "{} edit of {} on layer(s) {:?}: {} values changed in {:.1} s ({:.1} s of it before the first step)",
            method,
            a.model,
            outcome.layers,
            delta.n_values(),
            outcome.seconds,
            outcome.setup_seconds
        );
        for p in &outcome.preserve {
            println!("{}", p.describe());
        }
        println!("delta: {}", a.delta.display());
        if let Some(o) = &a.output.out {
            println!("edited model (HF folder): {}", o.display());
        }
        if let Some(o) = &a.output.gguf {
            println!("edited model (GGUF): {}", o.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the edited model as a HF folder (with `card` as its README.md) and/or a GGUF (checked up front:
/// never half the outputs).
fn write_outputs(
    ck: &pke::io::checkpoint::Checkpoint,
    model: &pke::model::Decoder,
    edited: &[String],
    o: &OutputArgs,
    card: &str,
) -> Result<()> {
    let ty: pke::io::gguf_export::EditedType = o.gguf_type.parse()?;
    let src = match (&o.gguf, &ck.source) {
        (Some(_), pke::io::checkpoint::Source::Gguf(p)) => Some(pke::io::gguf::GgufFile::open(p)?),
        (Some(_), pke::io::checkpoint::Source::HfDir(d)) => bail!("--gguf needs a GGUF source model; {} is a HF folder", d.display()),
        (None, _) => None,
    };
    if let Some(out) = &o.out {
        pke::io::hf::write_hf_dir_with(model, &ck.tok, out, None, Some(card))?;
    }
    if let (Some(g), Some(src)) = (&o.gguf, src) {
        if let Some(parent) = g.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let shaping = if ty == pke::io::gguf_export::EditedType::Source && o.gguf_rounding == "shaped" {
            pke::edit::preserve::shaping(model, &ck.model, &ck.tok, edited)?
        } else {
            Default::default()
        };
        let pick = |t| pke::io::gguf_export::pick_type(ty, t);
        for r in pke::io::gguf_export::write_gguf_shaped(&src, model, edited, &pick, &shaping, g)? {
            eprintln!("{}", r.describe());
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[arg(long, short)]
    model: String,
    #[arg(long)]
    delta: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
    /// Apply even if the model does not hold the delta's base values.
    #[arg(long)]
    force: bool,
}

pub fn apply(a: ApplyArgs, revert: bool) -> Result<ExitCode> {
    let d = WeightDelta::load(&a.delta)?;
    let ck = super::load_model(&a.model)?;
    let mut model = ck.model.clone();
    if revert {
        d.revert(&mut model, a.force)?;
    } else {
        d.apply(&mut model, a.force)?;
    }
    if a.output.out.is_none() && a.output.gguf.is_none() {
        bail!("nothing to write: give --out HF_DIR and/or --gguf FILE");
    }
    let card = pke::io::card::model_card(&CardInput { base: &ck, delta: &d, reverted: revert, evaluation: None })?;
    write_outputs(&ck, &model, &d.names(), &a.output, &card)?;
    let dest: Vec<String> = a.output.out.iter().chain(a.output.gguf.iter()).map(|p| p.display().to_string()).collect();
    println!("{} {} ({} tensors) -> {}", if revert { "reverted" } else { "applied" }, a.delta.display(), d.tensors.len(), dest.join(", "));
    Ok(ExitCode::SUCCESS)
}
