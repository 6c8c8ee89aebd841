use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use pke::locate::dinm::{DinmOptions, PadSide};
use pke::locate::{charts, locate, LayerRule, LocateSettings, Locator};
use pke::model::MaskedRows;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    pub model: String,
    #[command(flatten)]
    pub cases: super::cases::CaseArgs,
    /// Layer signal that picks the layer: pke (safe-reply gradient norm), attribution, dinm, drift.
    #[arg(long, default_value = "pke")]
    pub locator: String,
    /// Number of layers to choose.
    #[arg(long, default_value_t = 1)]
    pub n_layers: usize,
    /// Force these layers (0-based), overriding the locator.
    #[arg(long = "layer")]
    pub layers: Vec<usize>,
    /// Depth band the pke and attribution locators choose layers from, as `LO,HI` fractions of the depth
    /// (`0,1` = every layer).
    #[arg(long, default_value = "0.25,0.75", value_parser = super::parse_layer_band)]
    pub layer_band: [f64; 2],
    /// How the pke and attribution locators choose the layer: `located` (their profile) or `intent` (where
    /// the MLP neurons' LDA read, fitted on the cases and the retain set's pairs, best tells held-out twins
    /// from their benign sides; the retain set is --retain's or the built-in one).
    #[arg(long, default_value = "located")]
    pub layer_rule: String,
    /// Hotspot size as a fraction of the MLP width.
    #[arg(long, default_value_t = 0.10)]
    pub top_fraction: f64,
    /// Hotspot size in neurons (overrides --top-fraction).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// DINM locator padding side (EasyEdit today: left).
    #[arg(long, default_value = "left")]
    pub padding: String,
    /// DINM: exclude pad positions from the distance.
    #[arg(long)]
    pub mask_pads: bool,
    /// DINM: compare only the last real position.
    #[arg(long)]
    pub last_position: bool,
    /// DINM: eager-attention convention for fully masked rows (uniform) instead of SDPA's zeros.
    #[arg(long)]
    pub eager: bool,
    /// Append DINM's suffix system prompt to each prompt.
    #[arg(long)]
    pub dinm_suffix: bool,
    /// A reference model of the same shapes: adds the weight-drift signal (SafeTune's reading of PKE).
    #[arg(long)]
    pub reference: Option<String>,
    /// Contrastive neuron selection: subtract this times each neuron's rank on benign look-alikes (the
    /// retain set) from its harmful-side score; 0 = off (default: pke's `contrast_weight`).
    #[arg(long)]
    pub contrast_weight: Option<f64>,
    #[command(flatten)]
    pub retain: super::cases::RetainArgs,
    /// Output folder for hotspots.json and the charts.
    #[arg(long, default_value = "out/locate")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn settings(a: &Args) -> Result<LocateSettings> {
    let cw = a.contrast_weight.unwrap_or(pke::edit::EditParams::defaults(pke::edit::Method::Pke).contrast_weight);
    let layer_rule: LayerRule = a.layer_rule.parse()?;
    // The retain file is read (once) only when the contrast or the intent rule needs it.
    let retain = if cw > 0.0 || layer_rule == LayerRule::Intent { a.retain.load()? } else { None };
    let benign = if cw > 0.0 { retain.as_deref().map(pke::data::probes::benign_prompts) } else { None };
    let intent_retain = if layer_rule == LayerRule::Intent { retain.as_deref().map(pke::data::probes::retain_pairs) } else { None };
    Ok(LocateSettings {
        layer_rule,
        intent_retain: intent_retain.unwrap_or_default(),
        locator: a.locator.parse::<Locator>()?,
        n_layers: a.n_layers,
        layers: a.layers.clone(),
        layer_band: Some(a.layer_band),
        top_fraction: a.top_fraction,
        top_k: a.top_k,
        chat: a.cases.chat,
        suffix: a.dinm_suffix.then(|| pke::edit::DINM_SUFFIX.to_string()),
        dinm: DinmOptions {
            padding: match a.padding.as_str() {
                "left" => PadSide::Left,
                "right" => PadSide::Right,
                o => anyhow::bail!("--padding must be left or right, got `{o}`"),
            },
            mask_pads: a.mask_pads,
            last_position: a.last_position,
            masked_rows: if a.eager { MaskedRows::Uniform } else { MaskedRows::Zero },
        },
        ..Default::default()
    }
    .with_contrast(cw, benign.as_deref()))
}

/// Write `DIR/hotspots.json`, `layers.svg` and `neurons.svg`; returns the JSON path.
pub fn write_hotspots(h: &pke::locate::Hotspots, dir: &std::path::Path) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let json_path = dir.join("hotspots.json");
    pke::io::atomic_write(&json_path, serde_json::to_string_pretty(h)?.as_bytes())?;
    charts::layer_profile(h, &dir.join("layers.svg"))?;
    charts::neuron_distribution(h, &dir.join("neurons.svg"))?;
    Ok(json_path)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cases = a.cases.load_unread()?;
    let settings = settings(&a)?;
    let ck = super::load_model(&a.model)?;
    let cases = a.cases.choose(&ck, cases)?;
    let reference = a.reference.as_deref().map(super::load_model).transpose()?;
    let bar = super::progress_bar(cases.len() as u64, "locating");
    let (mut h, _) =
        locate(&ck.model, &ck.tok, &cases, &settings, reference.as_ref().map(|r| &r.model), |i, _| bar.set_position(i as u64))?;
    bar.finish_and_clear();
    h.model = ck.source.path().display().to_string();
    h.model_sha256 = Some(ck.sha256()?);
    let json_path = write_hotspots(&h, &a.out)?;
    if a.json {
        super::print_json(&h)?;
        return Ok(ExitCode::SUCCESS);
    }
    let intent = h.layers.iter().any(|l| l.intent_auc.is_some());
    println!(
        "{:>5}  {:>12}  {:>12}  {:>12}  {:>12}{}{}",
        "layer",
        "grad_norm",
        "attribution",
        "dinm_dist",
        "dinm_other",
        if reference.is_some() { "  weight_drift" } else { "" },
        if intent { "  intent_auc" } else { "" }
    );
    for l in &h.layers {
        let mark = if h.chosen_layers.contains(&l.layer) { " <" } else { "" };
        let drift = l.weight_drift.map(|d| format!("  {d:>12.4}")).unwrap_or_default();
        let auc =
            if intent { l.intent_auc.map(|x| format!("  {x:>10.4}")).unwrap_or_else(|| format!("  {:>10}", "-")) } else { String::new() };
        println!(
            "{:>5}  {:>12.5}  {:>12.5}  {:>12.1}  {:>12.1}{drift}{auc}{mark}",
            l.layer, l.grad_norm, l.attribution, l.dinm_distance, l.dinm_distance_other_padding
        );
    }
    for n in &h.neurons {
        let top: Vec<String> = n.top.iter().take(10).map(|x| format!("{}", x.index)).collect();
        println!("layer {}: {} hotspot neurons of {} (top: {} ...)", n.layer, n.k, n.width, top.join(", "));
    }
    println!(
        "DINM layer: {} (left padding) / {} (right padding){}; cases flipping: {:.0}%",
        h.dinm.layer_left,
        h.dinm.layer_right,
        if h.dinm.flips_with_padding { " -- DINM's choice depends on padding" } else { "" },
        100.0 * h.dinm.cases_flipping
    );
    println!(
        "stability over {} cases: layer agreement {:.0}%, top-k overlap with aggregate {:.2}, pairwise {:.2}; {:.2} s/case",
        h.n_cases,
        100.0 * h.stability.layer_agreement,
        h.stability.topk_overlap_with_aggregate,
        h.stability.topk_pairwise_overlap,
        h.seconds_per_case
    );
    println!("wrote {}, layers.svg, neurons.svg", json_path.display());
    Ok(ExitCode::SUCCESS)
}
