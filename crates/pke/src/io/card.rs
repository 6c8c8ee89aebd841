//! Provides the model card (README.md in the Hugging Face model-card format) of an exported edited
//! folder: YAML header (base model, licence of the source, tags), what was edited, the evaluation summary
//! when one was run, and how to revert. `write_hf_dir_with` puts it in the folder.

use crate::edit::WeightDelta;
use crate::eval::report::ModelReport;
use crate::io::checkpoint::{Checkpoint, Source, KNOWN_MODELS};
use crate::Result;

/// What a card says about an export.
pub struct CardInput<'a> {
    /// The model the delta was computed on (the base).
    pub base: &'a Checkpoint,
    pub delta: &'a WeightDelta,
    /// The folder holds the base again (the delta was reverted), not the edit.
    pub reverted: bool,
    /// Evaluation of the base and of the exported model, when one was run.
    pub evaluation: Option<(&'a ModelReport, &'a ModelReport)>,
}

/// The base model's repository id and licence: the installed-model table when the file is one of them,
/// else the GGUF's `general.*` metadata or the HF folder's own card / config. `None` where unknown.
fn provenance(ck: &Checkpoint) -> (Option<String>, Option<String>) {
    let sha = ck.sha256().ok();
    if let Some(k) = KNOWN_MODELS.iter().find(|k| Some(k.sha256) == sha.as_deref()) {
        return (Some(k.base_model.into()), Some(k.license.into()));
    }
    match &ck.source {
        Source::Gguf(p) => {
            let Ok(g) = crate::io::gguf::GgufFile::open(p) else { return (None, None) };
            let s = |k: &str| g.meta_str(k).ok().map(str::to_string);
            let repo = match (s("general.organization"), s("general.name")) {
                (Some(o), Some(n)) => Some(format!("{o}/{n}")),
                (None, n) => n,
                _ => None,
            };
            (repo, s("general.license"))
        }
        Source::HfDir(d) => {
            let repo = ck.hf_config.as_ref().and_then(|c| c["_name_or_path"].as_str()).filter(|s| !s.is_empty()).map(str::to_string);
            let license = std::fs::read_to_string(d.join("README.md")).ok().and_then(|t| {
                let header = t.strip_prefix("---")?.split("\n---").next()?.to_string();
                header.lines().find_map(|l| l.strip_prefix("license:").map(|v| v.trim().trim_matches('"').to_string()))
            });
            (repo, license)
        }
    }
}

/// The `pke` YAML value `v` quoted when it needs to be.
fn yaml_str(v: &str) -> String {
    if v.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) && !v.is_empty() {
        v.to_string()
    } else {
        serde_json::to_string(v).expect("a string serializes")
    }
}

/// The card text.
pub fn model_card(c: &CardInput) -> Result<String> {
    let (repo, license) = provenance(c.base);
    let d = c.delta;
    let meta = |k: &str| d.metadata.get(k).map(String::as_str).unwrap_or("-");
    let method = meta("method");
    let delta_sha = d.sha256()?;
    let mut s = String::from("---\n");
    if let Some(r) = &repo {
        s += &format!("base_model: {}\n", yaml_str(r));
    }
    // The Hub's value for a licence it has no id for is `other`; the name stays in `license_name`.
    match license.as_deref() {
        Some(l @ ("apache-2.0" | "mit" | "gemma" | "llama2" | "llama3" | "llama3.1" | "llama3.2" | "cc-by-4.0" | "bsd-3-clause")) => {
            s += &format!("license: {l}\n")
        }
        Some(l) => s += &format!("license: other\nlicense_name: {}\n", yaml_str(l)),
        None => s += "license: other\nlicense_name: unknown (the source names none; check the base model's terms)\n",
    }
    s += "library_name: transformers\npipeline_tag: text-generation\ntags:\n- pke\n- knowledge-editing\n- model-editing\n- safety\n- refusal\n";
    s += &format!("- {}\n---\n\n", yaml_str(&format!("edit-method-{method}")));
    let base_name = repo.clone().unwrap_or_else(|| c.base.source.path().display().to_string());
    if c.reverted {
        s += &format!(
            "# {base_name}, pke edit reverted\n\nThis folder holds {base_name} with the `{method}` edit below reverted: every edited \
             value is back at the base model's (bit for bit).\n\n"
        );
    } else {
        s += &format!(
            "# {base_name} + a pke safety edit (method `{method}`)\n\nThis folder is {base_name} with a safety edit made by \
             pke (Precision Knowledge Editing, in Rust): only the weights listed below changed, so that the \
             model refuses harmful requests; everything else is the base model's.\n\n"
        );
    }
    s += "## What was edited\n\n| | |\n|---|---|\n";
    s += &format!("| method | `{method}` |\n");
    for t in &d.tensors {
        let what = if t.axis == 0 { "rows (the neurons' input weights)" } else { "columns (the neurons' output weights)" };
        s += &format!("| `{}` | {} {what} |\n", t.name, t.columns.len());
    }
    s += &format!("| changed values | {} |\n", d.n_values());
    s += &format!("| edit cases | {} |\n", meta("n_cases"));
    if let Some(t) = d.metadata.get("twin_cases") {
        s += &format!("| contrastive twin cases | {t} |\n");
    }
    if let Some(r) = d.metadata.get("retain") {
        s += &format!("| retain set | {r} |\n");
    }
    // The hotspots metadata is [[layer, [neuron, ...]], ...]: a short summary here, the indices below.
    let hot: Vec<(usize, Option<Vec<usize>>)> = serde_json::from_str(meta("hotspots")).unwrap_or_default();
    let summary: Vec<String> = hot.iter().map(|(l, n)| format!("layer {l}: {} neurons", n.as_ref().map(Vec::len).unwrap_or(0))).collect();
    s += &format!("| hotspots | {} |\n", if summary.is_empty() { "-".into() } else { summary.join("; ") });
    s += &format!("| base model file | `{}` |\n", meta("base_model"));
    s += &format!("| base sha256 | `{}` |\n", meta("base_sha256"));
    s += &format!("| delta sha256 | `{delta_sha}` |\n");
    s += &format!("| pke version | {} |\n\n", meta("pke_version"));
    if let Some(h) = d.metadata.get("hparams") {
        let pretty =
            serde_json::from_str::<serde_json::Value>(h).and_then(|v| serde_json::to_string_pretty(&v)).unwrap_or_else(|_| h.clone());
        s += &format!("Hyper-parameters:\n\n```json\n{pretty}\n```\n\n");
    }
    if !hot.is_empty() {
        s += &format!("<details><summary>Hotspot neuron indices</summary>\n\n`{}`\n\n</details>\n\n", meta("hotspots"));
    }
    s += "## Evaluation\n\n";
    match c.evaluation {
        Some((before, after)) => {
            s += &format!(
                "Measured by `pke eval` on the {} part of its sets (chat template: {}); 95% Wilson intervals.\n\n| rate | base | this model |\n|---|---|---|\n",
                after.settings.split, after.settings.chat
            );
            for metric in ["ASR", "non-refusal", "over-refusal", "look-alike over-refusal", "twins refused", "factual accuracy"] {
                let first = |r: &ModelReport| r.rates.iter().find(|x| x.metric == metric).cloned();
                if let (Some(a), Some(b)) = (first(before), first(after)) {
                    s += &format!(
                        "| {metric} ({}, n {}) | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] |\n",
                        a.set, a.n, a.value, a.ci_low, a.ci_high, b.value, b.ci_low, b.ci_high
                    );
                }
            }
            s += &format!("| perplexity ({}) | {} | {} |\n\n", after.perplexity.set, before.perplexity.show(3), after.perplexity.show(3));
        }
        None => {
            s += "No evaluation was run with this export. `pke eval -m <this folder> --base <base model>` measures attack success, \
                  over-refusal (including benign look-alikes) and general ability against the base.\n\n"
        }
    }
    s += "## Reverting and limits\n\n\
          The edit ships as a delta file (`pke apply` / `pke revert` restore either side exactly). A safety edit of a few \
          neurons is narrow: it can over-refuse benign requests that share words with harmful ones, transfer only partly to \
          kinds of harm it was not trained on, and be undone by further fine-tuning; measure on your own prompts before \
          relying on it.\n";
    Ok(s)
}
