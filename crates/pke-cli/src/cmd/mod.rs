//! One module per subcommand.

use std::process::ExitCode;

use anyhow::{Context, Result};
use pke::io::checkpoint::{data_dir, Checkpoint, KNOWN_MODELS};

pub mod attack;
pub mod bench;
pub mod cases;
pub mod compare;
pub mod demo;
pub mod edit;
pub mod eval;
pub mod generate;
pub mod inspect;
pub mod intent;
pub mod locate;
pub mod plan;
pub mod score;
pub mod synth;

static WEIGHTS: std::sync::OnceLock<pke::model::Weights> = std::sync::OnceLock::new();

/// The global `--weights` mode, set once from the command line.
pub fn set_weights(w: pke::model::Weights) {
    let _ = WEIGHTS.set(w);
}

/// Load `--model` (frozen weights as `--weights` says) with a message naming it on failure.
pub fn load_model(arg: &str) -> Result<Checkpoint> {
    let w = WEIGHTS.get().copied().unwrap_or(pke::model::Weights::Auto);
    Checkpoint::open_with(arg, w).with_context(|| format!("cannot load model `{arg}`"))
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} {wide_msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Print JSON to stdout.
pub fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Read the prompt text from `--text`/positional or `--file`.
pub fn read_text(text: Option<String>, file: Option<std::path::PathBuf>) -> Result<String> {
    match (text, file) {
        (Some(t), None) => Ok(t),
        (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display())),
        (Some(_), Some(_)) => anyhow::bail!("give either --text or --file, not both"),
        (None, None) => anyhow::bail!("no text: give --text or --file"),
    }
}

pub fn models() -> Result<ExitCode> {
    let dir = data_dir();
    println!("{:<14} {:<10} model", "alias", "installed");
    for k in KNOWN_MODELS {
        let ok = dir.join(k.file).exists();
        println!("{:<14} {:<10} {}", k.alias, if ok { "yes" } else { "no" }, k.description);
    }
    println!("\ndata folder: {} (install with `make setup` or `scripts/setup.sh <target>`)", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// `LO,HI` depth fractions for `--layer-band`.
pub fn parse_layer_band(s: &str) -> std::result::Result<[f64; 2], String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>().map_err(|_| format!("`{x}` is not a number (expected LO,HI, e.g. 0.25,0.75)")))
        .collect::<std::result::Result<_, _>>()?;
    pke::locate::check_layer_band(&v)
}
