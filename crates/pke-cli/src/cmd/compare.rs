//! `pke compare`: vanilla and each method on the same model, cases, held-out sets and seeds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use pke::compare::{add_rate_stats, chart, compare_with, markdown, per_instance, per_instance_markdown, Arm, CompareSettings, Comparison};
use pke::edit::{EditParams, Method};
use pke::locate::LocateSettings;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short, default_value = "smollm2")]
    model: String,
    #[command(flatten)]
    cases: super::cases::CaseArgs,
    /// Methods, comma-separated: vanilla, dinm, pke, ft-l, ga; `METHOD#tag` runs a method again under a new
    /// label (with its own --set overrides).
    #[arg(long, default_value = "vanilla,dinm,pke,ft-l,ga", value_delimiter = ',')]
    methods: Vec<String>,
    /// Hyper-parameter override for one method, LABEL:key=value (repeatable), e.g. --set pke:lr=5e-3.
    #[arg(long = "set")]
    overrides: Vec<String>,
    #[command(flatten)]
    eval: super::eval::EvalArgs,
    #[command(flatten)]
    retain: super::cases::RetainArgs,
    /// SafeEdit's per-instance protocol instead: edit each case alone and judge its DS and four DG inputs
    /// before and after (cases need generalization inputs: a SafeEdit file or --builtin safeedit-style:N).
    #[arg(long)]
    per_instance: bool,
    /// Run each editing arm N times, on N disjoint subsets of the cases (case i in subset i mod N) with
    /// seeds seed, seed+1, ...; rows LABEL, LABEL@r2, ... and the mean and spread per rate.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Also attack every editing arm beside the unedited model, comma-separated: prefill, requant, ablate,
    /// jailbreak, finetune (`pke attack`'s attacks and options; the unedited model's side runs once).
    #[arg(long, value_delimiter = ',')]
    attacks: Vec<String>,
    #[command(flatten)]
    attack: super::attack::AttackArgs,
    /// Re-render an earlier run's compare.json (table, intervals and paired tests, chart) into --out
    /// without running anything; the input is never overwritten.
    #[arg(long, value_name = "COMPARE_JSON")]
    from: Option<PathBuf>,
    #[arg(long, default_value = "out/compare")]
    out: PathBuf,
    #[arg(long)]
    json: bool,
}

/// The arms to run: each method with its TOML defaults and its `LABEL:key=value` overrides. A label is a
/// method name, optionally with a `#tag` to run one method twice with different settings (`pke#lr5e-3`).
pub fn arms(methods: &[String], overrides: &[String]) -> Result<Vec<Arm>> {
    for o in overrides {
        let Some((label, _)) = o.split_once(':') else { bail!("--set {o}: expected METHOD:key=value, e.g. pke:lr=5e-3") };
        if !methods.iter().any(|m| m == label) {
            bail!("--set {o}: `{label}` is not one of --methods ({})", methods.join(","));
        }
    }
    let mut out = Vec::new();
    for label in methods {
        if label == "vanilla" {
            out.push(Arm::vanilla());
            continue;
        }
        let m: Method = label.split('#').next().unwrap_or(label).parse()?;
        let kv: Vec<String> =
            overrides.iter().filter_map(|o| o.split_once(':')).filter(|(l, _)| l == label).map(|(_, kv)| kv.to_string()).collect();
        let mut arm = Arm::edit(m, EditParams::resolve(m, None, &kv)?);
        arm.label = label.clone();
        out.push(arm);
    }
    if out.is_empty() {
        bail!("--methods is empty");
    }
    if let Some(d) = out.iter().enumerate().find(|(i, a)| out[..*i].iter().any(|b| b.label == a.label)) {
        bail!("--methods lists `{}` twice; tag one, e.g. `{}#2`", d.1.label, d.1.label);
    }
    Ok(out)
}

/// `--from`: the comparison of an earlier run, with its rate statistics recomputed.
fn rerender(from: &std::path::Path, out: &std::path::Path) -> Result<Comparison> {
    let target = out.join("compare.json");
    if target.exists() && from.exists() && std::fs::canonicalize(&target)? == std::fs::canonicalize(from)? {
        bail!("--from {}: writing into --out {} would overwrite the input; choose another --out", from.display(), out.display());
    }
    let text = std::fs::read_to_string(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut c: Comparison = serde_json::from_str(&text).with_context(|| format!("{} is not a pke compare.json", from.display()))?;
    add_rate_stats(&mut c.rows);
    c.repeats = pke::compare::repeat_summaries(&c);
    Ok(c)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(from) = &a.from {
        let c = rerender(from, &a.out)?;
        std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
        return write_outputs(&c, &a.out, a.json);
    }
    // Checked before the model loads (with --answered-only: chosen among below, against the model).
    let cases = a.cases.load_unread()?;
    let eval = a.eval.settings(a.cases.chat)?;
    let settings = CompareSettings {
        arms: arms(&a.methods, &a.overrides)?,
        attacks: if a.attacks.is_empty() { None } else { Some(a.attack.settings(&a.attacks, eval.clone())?) },
        attack_dir: Some(pke::attack::work_dir(&a.out)),
        eval,
        locate: LocateSettings { chat: a.cases.chat, ..Default::default() },
        retain: a.retain.load()?,
        repeats: a.repeats,
    };
    if a.per_instance && a.repeats > 1 {
        bail!("--repeats applies to the pooled comparison, not to --per-instance (which already edits each case alone)");
    }
    if a.per_instance && settings.attacks.is_some() {
        bail!("--attacks applies to the pooled comparison, not to --per-instance");
    }
    let ck = super::load_model(&a.model)?;
    let cases = a.cases.choose(&ck, cases)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    if a.per_instance {
        let bar = super::progress_bar(cases.len() as u64, "per-instance");
        let runs =
            per_instance(&ck, &cases, &settings.arms, &settings.eval, &settings.locate, settings.retain.as_deref(), |label, i, n| {
                bar.set_length(n as u64);
                bar.set_position(i as u64);
                bar.set_message(format!("per-instance: {label}"));
            })?;
        bar.finish_and_clear();
        let doc = serde_json::json!({"model": ck.source.path(), "model_sha256": ck.sha256()?, "eval": settings.eval, "runs": runs});
        pke::io::atomic_write(&a.out.join("per_instance.json"), serde_json::to_string_pretty(&doc)?.as_bytes())?;
        let md = per_instance_markdown(&runs);
        pke::io::atomic_write(&a.out.join("per_instance.md"), md.as_bytes())?;
        if a.json {
            super::print_json(&doc)?;
        } else {
            println!("{md}\nwrote {0}/per_instance.json, {0}/per_instance.md", a.out.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let bar = super::progress_bar(settings.arms.len() as u64, "comparing");
    let mut current = String::new();
    // After each arm, the rows so far go to compare.partial.json (removed at the end), so a run that is
    // stopped or killed keeps the arms it finished (`pke compare --from` renders them).
    let partial = a.out.join("compare.partial.json");
    let c = compare_with(
        &ck,
        &cases,
        &settings,
        |arm, msg| {
            if arm != current {
                if !current.is_empty() {
                    bar.inc(1);
                }
                current = arm.to_string();
            }
            bar.set_message(format!("{arm}: {msg}"));
        },
        |so_far| {
            pke::io::atomic_write(&partial, serde_json::to_string(so_far)?.as_bytes())?;
            Ok(())
        },
    )?;
    bar.finish_and_clear();
    let _ = std::fs::remove_file(&partial);
    let _ = std::fs::remove_dir(pke::attack::work_dir(&a.out));
    write_outputs(&c, &a.out, a.json)
}

/// compare.json, compare.md and compare.svg in `out`.
fn write_outputs(c: &Comparison, out: &std::path::Path, json: bool) -> Result<ExitCode> {
    pke::io::atomic_write(&out.join("compare.json"), serde_json::to_string_pretty(c)?.as_bytes())?;
    let md = markdown(c);
    pke::io::atomic_write(&out.join("compare.md"), md.as_bytes())?;
    chart(c, &out.join("compare.svg"))?;
    if json {
        super::print_json(c)?;
    } else {
        println!("{md}\nwrote {0}/compare.json, {0}/compare.md, {0}/compare.svg", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_parse_labels_and_overrides() {
        let m = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = arms(&m(&["vanilla", "pke", "pke#fast"]), &m(&["pke#fast:lr=5e-3", "pke#fast:steps=3"])).unwrap();
        assert_eq!(a.iter().map(|x| x.label.as_str()).collect::<Vec<_>>(), ["vanilla", "pke", "pke#fast"]);
        let (p0, p1) = (a[1].params.as_ref().unwrap(), a[2].params.as_ref().unwrap());
        assert_eq!((p0.lr, p0.steps), (EditParams::defaults(Method::Pke).lr, EditParams::defaults(Method::Pke).steps));
        assert_eq!((p1.lr, p1.steps), (5e-3, 3));
        let e = arms(&m(&["pke"]), &m(&["dinm:lr=1"])).unwrap_err().to_string();
        assert!(e.contains("`dinm` is not one of --methods"), "{e}");
        let e = arms(&m(&["pke", "pke"]), &[]).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        let e = arms(&m(&["sft"]), &[]).unwrap_err().to_string();
        assert!(e.contains("sft"), "{e}");
        let e = arms(&m(&["pke"]), &m(&["pke:nope=1"])).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
