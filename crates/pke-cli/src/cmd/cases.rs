//! Case input shared by locate and edit: `--cases FILE` or `--builtin SET[:N]`.

use anyhow::{bail, Result};
use pke::data::{load_cases, EditCase};

#[derive(clap::Args, Clone, Debug)]
pub struct CaseArgs {
    /// Edit cases: JSONL ({prompt, safe_response, unsafe_response, locality_prompt?, locality_answer?, general_prompts? (4), id?, category?}) or
    /// a SafeEdit JSON file.
    #[arg(long)]
    pub cases: Option<std::path::PathBuf>,
    /// Built-in cases: advbench[:N], advbench-2form[:N] (the first N AdvBench requests, each also asked as
    /// a question: 2N cases), harmbench-val[:N], harm-categories[:N] (project-written requests in
    /// eight harm categories, interleaved), or safeedit-style[:N] (PyRIT jailbreak templates x AdvBench
    /// questions, with SafeEdit's four generalization inputs).
    #[arg(long)]
    pub builtin: Option<String>,
    /// Wrap prompts in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Leave out built-in cases of these categories (comma-separated), e.g. with harm-categories:
    /// hate,harassment, to measure how an edit transfers to kinds of harm it never saw.
    #[arg(long, value_delimiter = ',')]
    pub exclude_category: Vec<String>,
    /// Keep only cases the model answers (its greedy reply is not a refusal): with --builtin SET:N, the
    /// first N such requests of the set (AdvBench's scanned up to its 100th request, the held-out stop's
    /// probes start there); with --cases, every answered case of the file. A case the model already
    /// refuses teaches the edit nothing.
    #[arg(long)]
    pub answered_only: bool,
}

/// `SET[:N]` of `--builtin` (no count: 0, the whole set).
fn parse_builtin(spec: &str) -> Result<(&str, usize)> {
    Ok(match spec.split_once(':') {
        Some((s, n)) => (s, n.parse::<usize>().map_err(|_| anyhow::anyhow!("--builtin {spec}: `{n}` is not a count"))?),
        None => (spec, 0),
    })
}

impl CaseArgs {
    /// The cases as given (no model read): `--answered-only` needs [`CaseArgs::choose`].
    pub fn load(&self) -> Result<Vec<EditCase>> {
        if self.answered_only {
            bail!("--answered-only reads the model's replies: it applies to locate, edit, compare and intent");
        }
        self.load_unread()
    }

    /// The cases as given, whatever `--answered-only` says: its callers check the input before the model
    /// loads, and choose among these with [`CaseArgs::choose`] after.
    pub fn load_unread(&self) -> Result<Vec<EditCase>> {
        match (&self.cases, &self.builtin) {
            (Some(_), None) if !self.exclude_category.is_empty() => bail!("--exclude-category applies to --builtin cases"),
            (Some(p), None) => Ok(load_cases(p)?),
            (None, Some(spec)) => {
                let (set, n) = parse_builtin(spec)?;
                Ok(pke::data::sets::builtin_cases_excluding(set, n, &self.exclude_category)?)
            }
            (Some(_), Some(_)) => bail!("give either --cases or --builtin, not both"),
            (None, None) => bail!("no edit cases: give --cases FILE or --builtin advbench:N"),
        }
    }

    /// `given` (what [`CaseArgs::load_unread`] returned), or with `--answered-only` only the cases `ck`'s
    /// model answers: among `given` for a file, among the whole built-in set for `--builtin SET:N` (a line
    /// on stderr says which were left out).
    pub fn choose(&self, ck: &pke::io::checkpoint::Checkpoint, given: Vec<EditCase>) -> Result<Vec<EditCase>> {
        if !self.answered_only {
            return Ok(given);
        }
        let (pool, n) = match (&self.cases, &self.builtin) {
            (None, Some(spec)) => {
                let (set, n) = parse_builtin(spec)?;
                let mut all = pke::data::sets::builtin_cases_excluding(set, 0, &self.exclude_category)?;
                if set.starts_with("advbench") || set == "safeedit-style" {
                    // Two cases per request in advbench-2form.
                    let per = if set == "advbench-2form" { 2 } else { 1 };
                    all.truncate(per * pke::edit::watch::HARMFUL_FROM);
                }
                (all, n)
            }
            _ => (given, 0),
        };
        let bar = super::progress_bar(1, "reading which cases the model answers");
        let s = pke::edit::select::answered_cases(&ck.model, &ck.tok, pool, n, self.chat)?;
        bar.finish_and_clear();
        eprintln!(
            "--answered-only: {} cases the model answers, {} of the {} read left out as already refused{}",
            s.kept.len(),
            s.refused.len(),
            s.examined,
            if s.refused.is_empty() { String::new() } else { format!(" ({})", s.refused.join(", ")) }
        );
        Ok(s.kept)
    }
}

/// The retain set: benign prompts that look harmful, kept answered by the edit (the retain term) and used
/// as the benign side of contrastive neuron selection.
#[derive(clap::Args, Clone, Debug)]
pub struct RetainArgs {
    /// Your own retain prompts instead of the built-in set (data/retain/lookalike_retain.jsonl): the probe
    /// format ({benign, harmful?, trigger?, category?}), JSONL with `prompt`/`text`, or one per line.
    #[arg(long)]
    pub retain: Option<std::path::PathBuf>,
}

impl RetainArgs {
    /// The user's retain set (benign prompts and any harmful twins), or None for the built-in set.
    pub fn load(&self) -> Result<Option<Vec<pke::data::probes::Probe>>> {
        Ok(match &self.retain {
            Some(p) => Some(pke::data::probes::load_retain(p)?),
            None => None,
        })
    }
}

/// `pke cases`: print the cases a `--cases`/`--builtin` selection resolves to, as JSONL (the format
/// `--cases` reads), so built-in cases can be inspected, edited, or fed to another tool.
#[derive(clap::Args, Debug)]
pub struct PrintArgs {
    #[command(flatten)]
    pub cases: CaseArgs,
}

pub fn print(a: PrintArgs) -> Result<std::process::ExitCode> {
    use std::io::Write;
    let cases = a.cases.load()?;
    std::io::stdout().write_all(pke::data::to_jsonl(&cases)?.as_bytes())?;
    Ok(std::process::ExitCode::SUCCESS)
}
