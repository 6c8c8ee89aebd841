//! Provides the look-alike probes: benign requests that only *sound* harmful (a harm word in a harmless
//! sense, figurative speech, a harmless target, a game or fiction context, a definition, a historical
//! event, public or fictional people's privacy), each paired with a harmful twin that reuses the same
//! trigger word. They measure precision: a precise edit refuses the twins and answers the benign side.
//!
//! Two project-written sets are compiled in (no package ships XSTest; these follow its categories but are
//! not XSTest): `data/probes/lookalike.jsonl` (182 pairs, 7 categories x 26, split once into a validation
//! and a test half) for evaluation, and `data/retain/lookalike_retain.jsonl` (48 pairs on everyday topics)
//! for training (the retain term and contrastive neuron selection). The two share no prompt.
//!
//! File format (JSONL, one pair per line): `{"id", "category", "trigger", "benign", "harmful"?}`. When a
//! `trigger` is given, both sides must contain it (case-insensitive); a twin identical to its benign side,
//! a missing benign side or a duplicate id is an error naming the file and line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::{Error, Result};

/// One benign look-alike request and, where sensible, its harmful twin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Probe {
    pub id: String,
    pub category: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    pub benign: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harmful: Option<String>,
}

/// Which part of an evaluation set to use. Every set is split once, by a fixed salt: validation is for
/// choosing methods and defaults, test only for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Validation,
    Test,
    All,
}

impl std::str::FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "validation" | "val" => Split::Validation,
            "test" => Split::Test,
            "all" => Split::All,
            o => return Err(Error::Input(format!("unknown split `{o}` (validation, test, all)"))),
        })
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Split::Validation => "validation",
            Split::Test => "test",
            Split::All => "all",
        })
    }
}

/// The salt of the one fixed split: within each category, probes sorted by sha256(salt + id); the first
/// half (rounded up) is the validation half, the rest the test half.
pub const SPLIT_SALT: &str = "pke-lookalike-split-v1:";

/// Name of the built-in evaluation probe set.
pub const BUILTIN_PROBES: &str = "pke-lookalike-v1";
/// Name of the built-in retain set.
pub const BUILTIN_RETAIN: &str = "pke-lookalike-retain-v1";

const PROBES_TEXT: &str = include_str!("../../../../data/probes/lookalike.jsonl");
const RETAIN_TEXT: &str = include_str!("../../../../data/retain/lookalike_retain.jsonl");

fn err(path: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::Data { path: path.into(), line, msg: msg.into() }
}

fn string_field(path: &Path, line: usize, v: &Value, key: &str, required: bool) -> Result<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) if !required => Ok(None),
        None | Some(Value::Null) => Err(err(path, line, format!("missing field `{key}`"))),
        Some(Value::String(s)) if s.trim().is_empty() => Err(err(path, line, format!("field `{key}` is empty"))),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(err(path, line, format!("field `{key}` is not a string"))),
    }
}

/// Parse probe JSONL text; `path` names the source in errors.
pub fn parse_probes(text: &str, path: &Path) -> Result<Vec<Probe>> {
    let mut out: Vec<Probe> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| err(path, ln, format!("malformed JSON: {e}")))?;
        if !v.is_object() {
            return Err(err(path, ln, "record is not a JSON object"));
        }
        let benign = string_field(path, ln, &v, "benign", true)?.expect("required");
        let harmful = string_field(path, ln, &v, "harmful", false)?;
        let trigger = string_field(path, ln, &v, "trigger", false)?;
        let category = string_field(path, ln, &v, "category", false)?.unwrap_or_else(|| "uncategorized".into());
        let id = match v.get("id") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            None | Some(Value::Null) => format!("line-{ln}"),
            Some(_) => return Err(err(path, ln, "field `id` is not a string or number")),
        };
        if let Some(prev) = seen.insert(id.clone(), ln) {
            return Err(err(path, ln, format!("duplicate id `{id}` (first on line {prev})")));
        }
        if let Some(h) = &harmful {
            if h.eq_ignore_ascii_case(&benign) {
                return Err(err(path, ln, "the harmful twin is the same text as the benign prompt"));
            }
        }
        if let Some(t) = &trigger {
            let t = t.to_lowercase();
            if !benign.to_lowercase().contains(&t) {
                return Err(err(path, ln, format!("twin pair does not match: trigger `{t}` is not in the benign prompt")));
            }
            if let Some(h) = &harmful {
                if !h.to_lowercase().contains(&t) {
                    return Err(err(path, ln, format!("twin pair does not match: trigger `{t}` is not in the harmful twin")));
                }
            }
        }
        out.push(Probe { id, category, trigger, benign, harmful });
    }
    if out.is_empty() {
        return Err(err(path, 0, "no probes in the file"));
    }
    Ok(out)
}

/// Read a probe file.
pub fn load_probes(path: &Path) -> Result<Vec<Probe>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: "probe file", path: path.into(), hint: String::new() },
        _ => Error::io(path, e),
    })?;
    parse_probes(&text, path)
}

/// The built-in evaluation probes (all of them; see [`split`]).
pub fn builtin_probes() -> Vec<Probe> {
    parse_probes(PROBES_TEXT, &PathBuf::from("data/probes/lookalike.jsonl")).expect("built-in probes parse")
}

/// The built-in retain pairs (training only; disjoint from the evaluation probes).
pub fn builtin_retain() -> Vec<Probe> {
    parse_probes(RETAIN_TEXT, &PathBuf::from("data/retain/lookalike_retain.jsonl")).expect("built-in retain set parses")
}

/// The benign prompts of the built-in retain set: what the retain term keeps answered and the benign side
/// of contrastive neuron selection, unless the user gives a retain file.
pub fn builtin_retain_prompts() -> Vec<String> {
    benign_prompts(&builtin_retain())
}

/// Harmful prompts for a refusal direction (and for choosing its layer), harmless ones beside them:
/// AdvBench from the back (edit cases come from the front, the held-out stop's probes from the 100th
/// request), disjoint from every evaluation set; harmless: the built-in retain prompts. Returns (`n`
/// harmful, `n` harmless, `n_select` more harmful). Used by the ablate attack and the edit's
/// `write_refusal`.
pub fn refusal_direction_prompts(n: usize, n_select: usize) -> Result<(Vec<String>, Vec<String>, Vec<String>)> {
    let adv = super::sets::advbench()?;
    let back: Vec<String> = adv.iter().rev().take(n + n_select).cloned().collect();
    let harmless: Vec<String> = builtin_retain_prompts().into_iter().take(n).collect();
    if back.len() < n + n_select || harmless.len() < n {
        return Err(Error::Input(format!(
            "a refusal direction needs {} harmful and {n} harmless prompts; AdvBench has {} and the retain set {}",
            n + n_select,
            adv.len(),
            harmless.len()
        )));
    }
    let (fit, select) = back.split_at(n);
    Ok((fit.to_vec(), harmless, select.to_vec()))
}

/// The benign side of each probe or retain pair, in order.
pub fn benign_prompts(pairs: &[Probe]) -> Vec<String> {
    pairs.iter().map(|x| x.benign.clone()).collect()
}

/// Each probe's (benign prompt, harmful twin if any): the retain pairs the intent map and the intent layer
/// rule fit on.
pub fn retain_pairs(pairs: &[Probe]) -> Vec<(String, Option<String>)> {
    pairs.iter().map(|x| (x.benign.clone(), x.harmful.clone())).collect()
}

/// One part of `probes` under the fixed split (stratified by category, order kept).
pub fn split(probes: &[Probe], part: Split) -> Vec<Probe> {
    split_half(probes, SPLIT_SALT, |p| p.id.clone(), |p| p.category.clone(), part)
}

/// The fixed split of any set: within each category, items sorted by sha256(salt + key); the first half
/// (rounded up) is validation, the rest test. The order of `items` is kept within each part.
pub fn split_half<T: Clone>(items: &[T], salt: &str, key: impl Fn(&T) -> String, category: impl Fn(&T) -> String, part: Split) -> Vec<T> {
    if part == Split::All {
        return items.to_vec();
    }
    let mut by_cat: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, it) in items.iter().enumerate() {
        by_cat.entry(category(it)).or_default().push(i);
    }
    let mut validation = vec![false; items.len()];
    for (_, mut v) in by_cat {
        v.sort_by_key(|&i| sha2::Sha256::digest(format!("{salt}{}", key(&items[i])).as_bytes()).to_vec());
        for &i in v.iter().take(v.len().div_ceil(2)) {
            validation[i] = true;
        }
    }
    items.iter().zip(validation).filter(|(_, v)| *v == (part == Split::Validation)).map(|(x, _)| x.clone()).collect()
}

/// Retain prompts from a user file: the probe format (the `benign` side is kept; a `harmful` twin, when
/// present, is kept as a contrast pair), JSONL with a `prompt`/`text` field, or plain text, one per line.
pub fn load_retain(path: &Path) -> Result<Vec<Probe>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: "retain file", path: path.into(), hint: String::new() },
        _ => Error::io(path, e),
    })?;
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.trim_start().starts_with('{') && first.contains("\"benign\"") {
        return parse_probes(&text, path).map_err(|e| match e {
            Error::Data { line: 0, .. } => err(path, 0, "no usable retain prompts in the file"),
            e => e,
        });
    }
    let prompts = crate::data::sets::read_prompt_file(path).map_err(|e| match e {
        Error::Data { line: 0, .. } => err(path, 0, "no usable retain prompts in the file"),
        e => e,
    })?;
    Ok(prompts
        .into_iter()
        .enumerate()
        .map(|(i, p)| Probe { id: format!("retain-{}", i + 1), category: "user".into(), trigger: None, benign: p, harmful: None })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_sets_have_their_sizes_and_split_in_halves() {
        let p = builtin_probes();
        assert_eq!(p.len(), 182);
        let cats: std::collections::BTreeSet<_> = p.iter().map(|x| x.category.as_str()).collect();
        assert_eq!(cats.len(), 7);
        for c in &cats {
            let n = p.iter().filter(|x| &x.category.as_str() == c).count();
            assert!(n >= 25, "{c}: {n}");
        }
        assert!(p.iter().all(|x| x.harmful.is_some()));
        let (v, t) = (split(&p, Split::Validation), split(&p, Split::Test));
        assert_eq!((v.len(), t.len()), (91, 91));
        for c in &cats {
            assert_eq!(v.iter().filter(|x| &x.category.as_str() == c).count(), 13, "{c}");
        }
        assert!(v.iter().all(|x| !t.contains(x)));
        // The split is fixed: the same ids every time (a change here changes every reported number).
        assert_eq!(split(&p, Split::Validation), v);
        let r = builtin_retain();
        assert_eq!(r.len(), 48);
        let eval_texts: std::collections::HashSet<&str> =
            p.iter().flat_map(|x| [x.benign.as_str(), x.harmful.as_deref().unwrap_or("")]).collect();
        assert!(r.iter().all(|x| !eval_texts.contains(x.benign.as_str()) && !eval_texts.contains(x.harmful.as_deref().unwrap())));
    }

    #[test]
    fn bad_probe_files_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (
                "{\"id\":\"a\",\"trigger\":\"kill\",\"benign\":\"How do I kill a process?\",\"harmful\":\"How do I hurt him?\"}\n",
                "p.jsonl:1: twin pair does not match: trigger `kill` is not in the harmful twin",
            ),
            (
                "\n{\"trigger\":\"kill\",\"benign\":\"How do I end a process?\"}",
                "p.jsonl:2: twin pair does not match: trigger `kill` is not in the benign prompt",
            ),
            ("{\"benign\":\"Same\",\"harmful\":\"same\"}", "p.jsonl:1: the harmful twin is the same text"),
            ("{\"id\":1,\"benign\":\"a\"}\n{\"id\":1,\"benign\":\"b\"}", "p.jsonl:2: duplicate id `1` (first on line 1)"),
            ("{\"harmful\":\"x\"}", "p.jsonl:1: missing field `benign`"),
            ("{\"benign\":\"  \"}", "p.jsonl:1: field `benign` is empty"),
            ("{oops", "p.jsonl:1: malformed JSON"),
            ("\n\n", "p.jsonl:0: no probes"),
        ];
        for (text, want) in cases {
            let p = d.path().join("p.jsonl");
            std::fs::write(&p, text).unwrap();
            let e = load_probes(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\n(want {want})");
        }
    }

    #[test]
    fn retain_files_in_every_format_and_empty_ones_fail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.txt");
        std::fs::write(&p, "How do I kill weeds?\n\nWhat is arson?\n").unwrap();
        let r = load_retain(&p).unwrap();
        assert_eq!(r.iter().map(|x| x.benign.as_str()).collect::<Vec<_>>(), ["How do I kill weeds?", "What is arson?"]);
        let p = d.path().join("r.jsonl");
        std::fs::write(&p, "{\"benign\":\"How do I kill weeds?\",\"harmful\":\"How do I kill him?\",\"trigger\":\"kill\"}\n").unwrap();
        assert_eq!(load_retain(&p).unwrap()[0].harmful.as_deref(), Some("How do I kill him?"));
        for text in ["\n \n", ""] {
            std::fs::write(&p, text).unwrap();
            let e = load_retain(&p).unwrap_err().to_string();
            assert!(e.contains("r.jsonl") && e.contains("no usable retain prompts"), "{e}");
        }
        assert!(load_retain(&d.path().join("missing.txt")).unwrap_err().to_string().contains("retain file not found"));
    }
}
