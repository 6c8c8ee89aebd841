//! `pke plan`: can this machine edit and evaluate a model? From the header alone.

use std::process::ExitCode;

use anyhow::{bail, Result};
use pke::edit::Method;
use pke::plan::{plan, render, PlanModel};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF file, HF folder or alias (only its header is read).
    #[arg(long, short, conflicts_with = "shape")]
    model: Option<String>,
    /// A published configuration instead of a file: llama-2-7b, llama-3-8b, mistral-7b, llama-3-70b.
    #[arg(long)]
    shape: Option<String>,
    #[arg(long, default_value = "pke")]
    method: String,
    #[arg(long, default_value_t = 8)]
    cases: usize,
    /// Optimizer steps (default: the method's step cap, config/methods/; an edit that stops early takes less).
    #[arg(long)]
    steps: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Devices the weights would be split over (tensor parallel; memory per device).
    #[arg(long, default_value_t = 1)]
    devices: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let method: Method = a.method.parse()?;
    if !matches!(a.device.as_str(), "cpu" | "cuda") {
        bail!("--device must be cpu or cuda, got `{}`", a.device);
    }
    let m = match (&a.model, &a.shape) {
        (Some(arg), None) => {
            let h = pke::io::checkpoint::Header::open(arg)?;
            PlanModel {
                name: h.source.path().display().to_string(),
                n_params: h.n_params,
                n_layers: h.spec.n_layers,
                hidden: h.spec.hidden_size,
                ff: h.spec.intermediate_size,
                vocab: h.spec.vocab_size,
                stored_bytes: h.stored_bytes,
            }
        }
        (None, Some(name)) => {
            let s = pke::io::synth::shape(name)?;
            let (n_params, stored_bytes) = pke::io::synth::shape_size(s);
            PlanModel {
                name: format!("{} (published configuration, Q4_K_M)", s.name),
                n_params,
                n_layers: s.layers,
                hidden: s.hidden,
                ff: s.ff,
                vocab: s.vocab,
                stored_bytes,
            }
        }
        _ => bail!("give --model or --shape"),
    };
    let steps = a.steps.unwrap_or_else(|| pke::edit::EditParams::defaults(method).steps);
    let p = plan(&m, method, a.cases, steps, &a.device, a.devices, pke::io::checkpoint::available_memory());
    if a.json {
        super::print_json(&p)?;
    } else {
        print!("{}", render(&p));
    }
    Ok(ExitCode::SUCCESS)
}
