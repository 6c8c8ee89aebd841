//! `pke intent`: where the model tells harmful requests from their benign look-alikes (see
//! `pke::locate::intent`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use pke::data::probes::{self, Split};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    pub model: String,
    /// The edit cases whose direction is scored (`--builtin advbench:8`, `--cases FILE`, ...).
    #[command(flatten)]
    pub cases: super::cases::CaseArgs,
    #[command(flatten)]
    pub retain: super::cases::RetainArgs,
    /// Look-alike probe file (the probe format, with harmful twins) instead of the built-in probes.
    #[arg(long)]
    pub probes: Option<PathBuf>,
    /// Part of the probes to score on: validation (default; for choosing) or test (for reporting), or all.
    #[arg(long, default_value = "validation")]
    pub split: Split,
    /// Also fit reads beyond one direction (shrinkage LDA per site and layer, one LDA over all of them,
    /// the mean and the maximum of the per-layer scores), on the probes (cross-fit) and on training data,
    /// and score the HarmBench and StrongREJECT requests of the same split against the look-alikes'
    /// threshold.
    #[arg(long)]
    pub reads: bool,
    /// LDA shrinkage for --reads, as a multiple of the within-class scatter's mean eigenvalue.
    #[arg(long, default_value_t = 1.0)]
    pub shrink: f64,
    /// Output folder for intent.json and intent.md.
    #[arg(long, default_value = "out/intent")]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cases = a.cases.load_unread()?;
    let all = match &a.probes {
        Some(p) => probes::load_probes(p)?,
        None => probes::builtin_probes(),
    };
    let pairs: Vec<(String, String)> = probes::split(&all, a.split).into_iter().filter_map(|p| p.harmful.map(|h| (p.benign, h))).collect();
    if pairs.is_empty() {
        bail!("no probe in the {} split has a harmful twin", a.split);
    }
    let retain: Vec<(String, Option<String>)> = probes::retain_pairs(&a.retain.load()?.unwrap_or_else(probes::builtin_retain));
    if a.reads && !(a.shrink > 0.0 && a.shrink.is_finite()) {
        bail!("--shrink must be a positive number, not {}", a.shrink);
    }
    // HarmBench's own split and StrongREJECT's half of the same part (every set, whole: a map, not a run).
    let harmful: Vec<String> = if a.reads {
        let hb = pke::data::sets::harmbench(pke::eval::report::harmbench_split(a.split))?;
        hb.into_iter().chain(pke::eval::report::strongreject_part(a.split)?.into_iter().map(|x| x.0)).collect()
    } else {
        vec![]
    };
    let ck = super::load_model(&a.model)?;
    let cases = a.cases.choose(&ck, cases)?;
    let prompts: Vec<String> = cases.iter().map(|c| c.prompt.clone()).collect();
    let total = 2 * pairs.len() + prompts.len() + retain.len() + retain.iter().filter(|r| r.1.is_some()).count() + harmful.len();
    let bar = super::progress_bar(total as u64, "reading activations");
    let reads = a.reads.then_some(pke::locate::intent::ReadsWanted { harmful: &harmful, shrink: a.shrink });
    let mut map = pke::locate::intent::intent_map_with(&ck.model, &ck.tok, &pairs, &prompts, &retain, reads, a.cases.chat, &mut |n| {
        bar.inc(n as u64)
    })?;
    bar.finish_and_clear();
    map.model = ck.source.path().display().to_string();
    map.split = a.split.to_string();
    std::fs::create_dir_all(&a.out)?;
    pke::io::atomic_write(&a.out.join("intent.json"), serde_json::to_string_pretty(&map)?.as_bytes())?;
    let md = map.markdown();
    pke::io::atomic_write(&a.out.join("intent.md"), md.as_bytes())?;
    if a.json {
        super::print_json(&map)?;
    } else {
        print!("{md}");
        println!("wrote {}", a.out.join("intent.json").display());
    }
    Ok(ExitCode::SUCCESS)
}
