//! Provides edit cases: a harmful prompt with a safe and an unsafe reply, and optionally a benign
//! locality prompt/answer that the edit must not disturb. Read from JSONL
//! (`{prompt, safe_response, unsafe_response, locality_prompt?, locality_answer?, general_prompts? (4), id?, category?}`) or from SafeEdit JSON
//! files as published (field names with spaces, see method.md section 5).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// One edit case.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EditCase {
    pub id: String,
    pub prompt: String,
    pub safe_response: String,
    pub unsafe_response: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_answer: Option<String>,
    /// SafeEdit's four generalization inputs (onlyQ, otherA, otherQ, otherAQ), when present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub general_prompts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

fn data_err(path: &Path, line: usize, msg: impl Into<String>) -> Error {
    Error::Data { path: path.into(), line, msg: msg.into() }
}

fn req_str(path: &Path, line: usize, v: &Value, key: &str) -> Result<String> {
    match v.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(data_err(path, line, format!("field `{key}` is empty"))),
        Some(_) => Err(data_err(path, line, format!("field `{key}` is not a string"))),
        None => Err(data_err(path, line, format!("missing field `{key}`"))),
    }
}

fn opt_str(path: &Path, line: usize, v: &Value, key: &str) -> Result<Option<String>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(data_err(path, line, format!("field `{key}` is not a string"))),
    }
}

/// `general_prompts`: absent, or SafeEdit's four generalization inputs (onlyQ, otherA, otherQ, otherAQ) as
/// non-empty strings, so that `pke cases` output reads back whole.
fn general_prompts(path: &Path, line: usize, v: &Value) -> Result<Vec<String>> {
    let g = match v.get("general_prompts") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(data_err(path, line, "field `general_prompts` is not an array")),
    };
    if g.len() != 4 {
        return Err(data_err(
            path,
            line,
            format!("field `general_prompts` has {} entries; give SafeEdit's four (onlyQ, otherA, otherQ, otherAQ)", g.len()),
        ));
    }
    g.iter()
        .enumerate()
        .map(|(i, x)| match x {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(data_err(path, line, format!("`general_prompts[{i}]` is not a non-empty string"))),
        })
        .collect()
}

/// Parse one JSONL record.
fn from_jsonl_record(path: &Path, line: usize, v: &Value) -> Result<EditCase> {
    if !v.is_object() {
        return Err(data_err(path, line, "record is not a JSON object"));
    }
    let lp = opt_str(path, line, v, "locality_prompt")?;
    let la = opt_str(path, line, v, "locality_answer")?;
    if lp.is_some() != la.is_some() {
        return Err(data_err(path, line, "give both `locality_prompt` and `locality_answer`, or neither"));
    }
    Ok(EditCase {
        id: match v.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => format!("{line}"),
        },
        prompt: req_str(path, line, v, "prompt")?,
        safe_response: req_str(path, line, v, "safe_response")?,
        unsafe_response: req_str(path, line, v, "unsafe_response")?,
        locality_prompt: lp,
        locality_answer: la,
        general_prompts: general_prompts(path, line, v)?,
        category: opt_str(path, line, v, "category")?,
    })
}

/// SafeEdit field names (with spaces, as published).
const SE_GENERAL: [&str; 4] = [
    "test input of only harmful question",
    "test input of other attack prompt input",
    "test input of other question input",
    "test input of other questions and attack prompts",
];

/// Parse one SafeEdit record (`index` is the 1-based record number, reported as the "line").
fn from_safeedit_record(path: &Path, index: usize, v: &Value) -> Result<EditCase> {
    if !v.is_object() {
        return Err(data_err(path, index, "SafeEdit record is not a JSON object"));
    }
    let kc = v.get("knowledge constrain");
    let (lp, la) = match kc {
        Some(k) => (opt_str(path, index, k, "prompt")?, opt_str(path, index, k, "answer")?),
        None => (None, None),
    };
    let general = match v.get("generalization test") {
        Some(g) => SE_GENERAL.iter().map(|k| req_str(path, index, g, k)).collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    Ok(EditCase {
        id: v.get("id").map(|x| x.to_string().trim_matches('"').to_string()).unwrap_or_else(|| index.to_string()),
        prompt: req_str(path, index, v, "adversarial prompt")?,
        safe_response: req_str(path, index, v, "safe generation")?,
        unsafe_response: req_str(path, index, v, "unsafe generation")?,
        locality_prompt: lp,
        locality_answer: la,
        general_prompts: general,
        category: opt_str(path, index, v, "unsafety category")?,
    })
}

/// Load edit cases from a `.jsonl` file (one case per line) or a SafeEdit `.json` array.
/// Every bad record is reported with the file and line (JSONL) or record number (SafeEdit).
pub fn load_cases(path: &Path) -> Result<Vec<EditCase>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: "case file", path: path.into(), hint: String::new() },
        _ => Error::io(path, e),
    })?;
    let trimmed = text.trim_start();
    let cases = if trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(&text).map_err(|e| data_err(path, e.line(), format!("malformed JSON: {e}")))?;
        v.as_array()
            .expect("starts with [")
            .iter()
            .enumerate()
            .map(|(i, r)| {
                if r.get("adversarial prompt").is_some() {
                    from_safeedit_record(path, i + 1, r)
                } else {
                    from_jsonl_record(path, i + 1, r)
                }
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).map_err(|e| data_err(path, i + 1, format!("malformed JSON: {e}")))?;
            out.push(from_jsonl_record(path, i + 1, &v)?);
        }
        out
    };
    if cases.is_empty() {
        return Err(data_err(path, 0, "no cases in the file"));
    }
    Ok(cases)
}

/// Write cases as JSONL.
pub fn to_jsonl(cases: &[EditCase]) -> Result<String> {
    let mut s = String::new();
    for c in cases {
        s.push_str(&serde_json::to_string(c)?);
        s.push('\n');
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn jsonl_round_trip_and_errors_name_the_line() {
        let (_d, p) = write(
            "c.jsonl",
            "{\"prompt\":\"p\",\"safe_response\":\"s\",\"unsafe_response\":\"u\"}\n\n{\"prompt\":\"p2\",\"safe_response\":\"s2\",\"unsafe_response\":\"u2\",\"locality_prompt\":\"q\",\"locality_answer\":\"a\"}\n",
        );
        let c = load_cases(&p).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].locality_answer.as_deref(), Some("a"));
        let mut c = c;
        c[0].general_prompts = vec!["q".into(), "aq".into(), "oq".into(), "oaq".into()];
        let (_d, p2) = write("c2.jsonl", &to_jsonl(&c).unwrap());
        assert_eq!(load_cases(&p2).unwrap(), c);

        for (text, want) in [
            ("{\"prompt\":\"p\",\"safe_response\":\"s\"}\n", "c.jsonl:1: missing field `unsafe_response`"),
            ("\n{\"prompt\":\"p\",\"safe_response\":\"\",\"unsafe_response\":\"u\"}", "c.jsonl:2: field `safe_response` is empty"),
            ("{\"prompt\": 3,\"safe_response\":\"s\",\"unsafe_response\":\"u\"}", "field `prompt` is not a string"),
            ("{not json}", "c.jsonl:1: malformed JSON"),
            ("{\"prompt\":\"p\",\"safe_response\":\"s\",\"unsafe_response\":\"u\",\"locality_prompt\":\"q\"}", "both `locality_prompt`"),
            (
                "{\"prompt\":\"p\",\"safe_response\":\"s\",\"unsafe_response\":\"u\",\"general_prompts\":[\"a\"]}",
                "c.jsonl:1: field `general_prompts` has 1 entries",
            ),
            (
                "{\"prompt\":\"p\",\"safe_response\":\"s\",\"unsafe_response\":\"u\",\"general_prompts\":[\"a\",\"b\",\"c\",1]}",
                "`general_prompts[3]`",
            ),
            ("\n\n", "no cases"),
        ] {
            let (_d, p) = write("c.jsonl", text);
            let e = load_cases(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (want {want})");
        }
    }

    #[test]
    fn safeedit_records_map_their_spaced_fields() {
        let rec = serde_json::json!([{
            "id": 7, "unsafety category": "offensiveness", "adversarial prompt": "ADV", "question": "Q",
            "attack category": "x", "attack name": "y", "unsafe generation": "UNSAFE", "safe generation": "SAFE",
            "generalization test": {"attack_category": "a", "attack_name": "b",
                "test input of only harmful question": "G0", "test input of other attack prompt input": "G1",
                "test input of other question input": "G2", "test input of other questions and attack prompts": "G3"},
            "knowledge constrain": {"prompt": "LP", "answer": "LA"}
        }]);
        let (_d, p) = write("safeedit.json", &rec.to_string());
        let c = &load_cases(&p).unwrap()[0];
        assert_eq!(
            (c.id.as_str(), c.prompt.as_str(), c.safe_response.as_str(), c.unsafe_response.as_str()),
            ("7", "ADV", "SAFE", "UNSAFE")
        );
        assert_eq!(c.general_prompts, vec!["G0", "G1", "G2", "G3"]);
        assert_eq!((c.locality_prompt.as_deref(), c.locality_answer.as_deref()), (Some("LP"), Some("LA")));
        let mut bad = rec.clone();
        bad[0].as_object_mut().unwrap().remove("safe generation");
        let (_d, p) = write("safeedit.json", &bad.to_string());
        let e = load_cases(&p).unwrap_err().to_string();
        assert!(e.contains("safeedit.json:1") && e.contains("safe generation"), "{e}");
    }
}
