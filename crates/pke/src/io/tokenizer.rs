//! Provides the tokenizer: `tokenizer.json` through the `tokenizers` crate, or one built from GGUF
//! metadata as transformers builds it (`gpt2` byte-level BPE for SmolLM2/Qwen, SentencePiece-style BPE
//! with byte fallback for Gemma). The GGUF-built tokenizer is produced as a `tokenizer.json` document, so
//! the same document can be written out when a model is exported as a HF folder.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::io::gguf::GgufFile;
use crate::{Error, Result};

/// Pre-tokenizer split regexes, keyed by GGUF `tokenizer.ggml.pre`.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special-token facts generation and chat need.
#[derive(Clone)]
pub struct Tok {
    inner: tokenizers::Tokenizer,
    /// The `tokenizer.json` document (for export).
    pub json: Value,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// Whether encoding with special tokens adds BOS (decided by the post-processor in the document).
    pub adds_bos: bool,
    /// Tokens that end a turn in addition to EOS (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`).
    pub stop_ids: Vec<u32>,
    pub chat_template: Option<String>,
    /// Where it came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tok").field("source", &self.source).field("vocab", &self.vocab_size()).finish()
    }
}

fn tok_err(source: &str, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer { source_desc: source.into(), msg: msg.to_string() }
}

fn added(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": special})
}

/// With GGUF `add_bos_token`, BOS is added by a TemplateProcessing post-processor, as in a
/// transformers-saved tokenizer.json, so the same document works when written into a HF folder.
fn bos_post_processor(g: &GgufFile, pieces: &[String], otherwise: Value) -> Value {
    let add_bos = matches!(g.meta("tokenizer.ggml.add_bos_token"), Some(candle_core::quantized::gguf_file::Value::Bool(true)));
    match g.meta_f64("tokenizer.ggml.bos_token_id").map(|b| b as usize) {
        Some(b) if add_bos && b < pieces.len() => {
            let t = &pieces[b];
            json!({"type": "TemplateProcessing",
                   "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                   "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                            {"SpecialToken": {"id": t, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                   "special_tokens": {t.as_str(): {"id": t, "ids": [b], "tokens": [t]}}})
        }
        _ => otherwise,
    }
}

/// Byte-level BPE document for `tokenizer.ggml.model == "gpt2"`.
fn gpt2_document(g: &GgufFile, tokens: &[&str], types: &[i64]) -> Result<Value> {
    let merges = g.meta_strings("tokenizer.ggml.merges")?;
    let merges: Vec<Value> = merges
        .iter()
        .map(|m| {
            m.split_once(' ').map(|(a, b)| json!([a, b])).ok_or_else(|| Error::GgufKey {
                path: g.path.clone(),
                key: "tokenizer.ggml.merges".into(),
                msg: format!("merge `{m}` has no space"),
            })
        })
        .collect::<Result<_>>()?;
    let pre = g.meta_str("tokenizer.ggml.pre").unwrap_or("default");
    let byte_level =
        |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]})
        }
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]})
        }
        // transformers falls back to the GPT-2 ByteLevel regex for other names (SmolLM2's `smollm`).
        _ => byte_level(true),
    };
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
    let added_tokens: Vec<Value> =
        types.iter().enumerate().filter(|(_, t)| **t == 3 || **t == 4).map(|(i, t)| added(i, tokens[i], *t == 3)).collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": bos_post_processor(g, &tokens.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})),
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

/// SentencePiece-style BPE for `tokenizer.ggml.model == "llama"` (Gemma): merges rebuilt from the
/// vocabulary and scores as transformers' extractor does (every split of a token into two vocabulary
/// pieces is a merge, ranked by the merged token's score), byte fallback, " " -> "▁".
fn spm_document(g: &GgufFile, tokens: &[&str], types: &[i64]) -> Result<Value> {
    let scores = g.meta_numbers("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(Error::GgufKey {
            path: g.path.clone(),
            key: "tokenizer.ggml.scores".into(),
            msg: format!("{} scores for {} tokens", scores.len(), tokens.len()),
        });
    }
    // Multi-space user tokens are respelled with ▁ so the normalized text can reach them.
    let pieces: Vec<String> = tokens.iter().map(|t| t.replace(' ', "▁")).collect();
    let index: HashMap<&str, usize> = pieces.iter().enumerate().map(|(i, t)| (t.as_str(), i)).collect();
    let mut merges: Vec<(usize, usize, f64, usize)> = Vec::new(); // (left, right, score, order)
    for (id, piece) in pieces.iter().enumerate() {
        let mut local = Vec::new();
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (index.get(l), index.get(r)) {
                local.push((li, ri));
            }
        }
        local.sort_by(|a, b| (scores[b.0], scores[b.1]).partial_cmp(&(scores[a.0], scores[a.1])).unwrap_or(std::cmp::Ordering::Equal));
        for (li, ri) in local {
            let order = merges.len();
            merges.push((li, ri, scores[id], order));
        }
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal).then(a.3.cmp(&b.3)));
    let merges: Vec<Value> = merges.iter().map(|(l, r, _, _)| json!([pieces[*l], pieces[*r]])).collect();
    let vocab: serde_json::Map<String, Value> = pieces.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let unk = g.meta_f64("tokenizer.ggml.unknown_token_id").map(|u| pieces[u as usize].clone());
    let added_tokens: Vec<Value> =
        types.iter().enumerate().filter(|(_, t)| **t == 3 || **t == 4).map(|(i, t)| added(i, &pieces[i], *t == 3)).collect();
    let prefix = matches!(g.meta("tokenizer.ggml.add_space_prefix"), Some(candle_core::quantized::gguf_file::Value::Bool(true)));
    let post_processor = bos_post_processor(g, &pieces, Value::Null);
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})
    } else {
        json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges}
    }))
}

fn find_stop_ids(inner: &tokenizers::Tokenizer) -> Vec<u32> {
    ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "</s>"].iter().filter_map(|t| inner.token_to_id(t)).collect()
}

impl Tok {
    fn from_document(json: Value, source: String) -> Result<Self> {
        let bytes = serde_json::to_vec(&json)?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| tok_err(&source, e))?;
        let stop_ids = find_stop_ids(&inner);
        let probe = inner.encode("a", true).map_err(|e| tok_err(&source, e))?;
        let plain = inner.encode("a", false).map_err(|e| tok_err(&source, e))?;
        let adds_bos = probe.get_ids().len() > plain.get_ids().len();
        Ok(Tok { inner, json, bos_id: None, eos_id: None, pad_id: None, adds_bos, stop_ids, chat_template: None, source })
    }

    /// Build from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let model = g.meta_str("tokenizer.ggml.model")?;
        let tokens = g.meta_strings("tokenizer.ggml.tokens")?;
        let types: Vec<i64> = match g.meta("tokenizer.ggml.token_type") {
            Some(_) => g.meta_numbers("tokenizer.ggml.token_type")?.into_iter().map(|t| t as i64).collect(),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(Error::GgufKey {
                path: g.path.clone(),
                key: "tokenizer.ggml.token_type".into(),
                msg: format!("{} types for {} tokens", types.len(), tokens.len()),
            });
        }
        let doc = match model {
            "gpt2" => gpt2_document(g, &tokens, &types)?,
            "llama" => spm_document(g, &tokens, &types)?,
            other => {
                return Err(Error::GgufKey {
                    path: g.path.clone(),
                    key: "tokenizer.ggml.model".into(),
                    msg: format!("tokenizer kind `{other}` is not supported (gpt2, llama)"),
                })
            }
        };
        let mut t = Tok::from_document(doc, format!("GGUF {}", g.path.display()))?;
        let id = |k: &str| g.meta_f64(&format!("tokenizer.ggml.{k}")).map(|v| v as u32);
        t.bos_id = id("bos_token_id");
        t.eos_id = id("eos_token_id");
        t.pad_id = id("padding_token_id");
        t.chat_template = g.meta_str("tokenizer.chat_template").ok().map(str::to_string);
        Ok(t)
    }

    /// Load `tokenizer.json` and `tokenizer_config.json` (chat template, special tokens) from a HF folder.
    pub fn from_hf_dir(dir: &Path, config: &Value) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { what: "tokenizer", path: path.clone(), hint: String::new() },
            _ => Error::io(&path, e),
        })?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| tok_err(&path.display().to_string(), format!("malformed JSON: {e}")))?;
        let mut t = Tok::from_document(doc, path.display().to_string())?;
        let cfg_path = dir.join("tokenizer_config.json");
        let tcfg: Value = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| Error::Config {
                path: cfg_path.clone(),
                key: "<file>".into(),
                msg: format!("malformed JSON: {e}"),
            })?,
            Err(_) => json!({}),
        };
        let token_id = |key: &str| -> Option<u32> {
            let v = tcfg.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            t.inner.token_to_id(s)
        };
        let cfg_id = |key: &str| config.get(key).and_then(|v| v.as_u64().or_else(|| v.as_array()?.first()?.as_u64())).map(|v| v as u32);
        t.bos_id = token_id("bos_token").or(cfg_id("bos_token_id"));
        t.eos_id = token_id("eos_token").or(cfg_id("eos_token_id"));
        t.pad_id = token_id("pad_token").or(cfg_id("pad_token_id"));
        t.chat_template = match tcfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        Ok(t)
    }

    /// A `tokenizer_config.json` for a HF folder: special tokens and the chat template.
    pub fn hf_tokenizer_config(&self) -> Value {
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos_id),
            "eos_token": name(self.eos_id),
            "pad_token": name(self.pad_id),
            "add_bos_token": self.adds_bos,
            "add_eos_token": false,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
            "model_max_length": 1_000_000_000u64,
        })
    }

    /// Encode `text`. With `special`, BOS is prepended where the model expects it and special-token text
    /// (`<|im_start|>`) maps to its id.
    pub fn encode(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, special).map_err(|e| tok_err(&self.source, e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids to text.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| tok_err(&self.source, e))
    }

    /// The text of one token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token string.
    pub fn token_to_id(&self, t: &str) -> Option<u32> {
        self.inner.token_to_id(t)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Kind of tokenizer model (`BPE`, `Unigram`, ...) and whether it is byte-level.
    pub fn kind(&self) -> String {
        let model = self.json.pointer("/model/type").and_then(|v| v.as_str()).unwrap_or("?");
        let bytefb = self.json.pointer("/model/byte_fallback").and_then(|v| v.as_bool()).unwrap_or(false);
        let bl = self.json.to_string().contains("\"ByteLevel\"");
        format!(
            "{model}{}",
            if bl {
                " (byte-level)"
            } else if bytefb {
                " (SentencePiece-style, byte fallback)"
            } else {
                ""
            }
        )
    }

    /// Ids that end generation: EOS plus end-of-turn tokens.
    pub fn stop_token_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eos_id.into_iter().collect();
        for s in &self.stop_ids {
            if !v.contains(s) {
                v.push(*s);
            }
        }
        v
    }

    /// Pad id, falling back to EOS (as EasyEdit and transformers do).
    pub fn pad_or_eos(&self) -> Option<u32> {
        self.pad_id.or(self.eos_id)
    }
}
