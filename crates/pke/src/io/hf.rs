//! Provides writing a model as a Hugging Face folder that transformers loads unchanged: `config.json`,
//! `model.safetensors` (or shards plus `model.safetensors.index.json`) under HF names in f32,
//! `tokenizer.json`, `tokenizer_config.json` with the chat template, and `generation_config.json`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::io::tokenizer::Tok;
use crate::model::Decoder;
use crate::{Error, Result};

/// Write `model` and `tok` as a HF folder at `dir`. The folder is assembled under a temporary name
/// beside `dir` and renamed into place, so `dir` either does not exist or is complete. An existing
/// non-empty `dir` is an error (pke never overwrites what might be an input).
pub fn write_hf_dir(model: &Decoder, tok: &Tok, dir: &Path, max_shard_bytes: Option<usize>) -> Result<()> {
    write_hf_dir_with(model, tok, dir, max_shard_bytes, None)
}

/// As [`write_hf_dir`], with `readme` (a model card, [`crate::io::card`]) written as `README.md` inside
/// the folder before it is renamed into place.
pub fn write_hf_dir_with(model: &Decoder, tok: &Tok, dir: &Path, max_shard_bytes: Option<usize>, readme: Option<&str>) -> Result<()> {
    if dir.exists() && std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.next().is_some() {
        return Err(Error::Input(format!("output folder {} exists and is not empty; choose a new path", dir.display())));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
    let tmp: PathBuf = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let res = write_contents(model, tok, &tmp, max_shard_bytes)
        .and_then(|_| match readme {
            Some(r) => crate::io::atomic_write(&tmp.join("README.md"), r.as_bytes()),
            None => Ok(()),
        })
        .and_then(|_| {
            if dir.exists() {
                std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
            }
            std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
        });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    crate::io::atomic_write(path, serde_json::to_string_pretty(v)?.as_bytes())
}

fn write_contents(model: &Decoder, tok: &Tok, dir: &Path, max_shard_bytes: Option<usize>) -> Result<()> {
    let spec = &model.spec;
    let mut cfg = spec.to_hf_config();
    cfg["bos_token_id"] = json!(tok.bos_id.or(spec.bos_token_id));
    cfg["eos_token_id"] = json!(tok.eos_id.or(spec.eos_token_id));
    cfg["pad_token_id"] = json!(tok.pad_id.or(spec.pad_token_id));
    write_json(&dir.join("config.json"), &cfg)?;
    write_json(&dir.join("tokenizer.json"), &tok.json)?;
    write_json(&dir.join("tokenizer_config.json"), &tok.hf_tokenizer_config())?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": tok.bos_id, "eos_token_id": tok.stop_token_ids(), "pad_token_id": tok.pad_id, "do_sample": false}),
    )?;
    let mut names: Vec<&String> = model.weights().keys().collect();
    names.sort();
    let tensors: Vec<(String, candle_core::Tensor)> =
        names.iter().map(|n| Ok(((*n).clone(), model.get(n)?.detach().to_device(&candle_core::Device::Cpu)?))).collect::<Result<_>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    match max_shard_bytes {
        None => crate::io::safetensors::write_file(&dir.join("model.safetensors"), &tensors, meta),
        Some(max) => {
            let mut shards: Vec<Vec<(String, candle_core::Tensor)>> = vec![vec![]];
            let mut size = 0usize;
            for (n, t) in tensors {
                let b = t.elem_count() * 4;
                if size + b > max && !shards.last().expect("non-empty").is_empty() {
                    shards.push(vec![]);
                    size = 0;
                }
                size += b;
                shards.last_mut().expect("non-empty").push((n, t));
            }
            let total: usize = shards.iter().flatten().map(|(_, t)| t.elem_count() * 4).sum();
            let k = shards.len();
            let mut map = BTreeMap::new();
            for (i, shard) in shards.iter().enumerate() {
                let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, k);
                for (n, _) in shard {
                    map.insert(n.clone(), file.clone());
                }
                crate::io::safetensors::write_file(&dir.join(&file), shard, meta.clone())?;
            }
            write_json(&dir.join("model.safetensors.index.json"), &json!({"metadata": {"total_size": total}, "weight_map": map}))
        }
    }
}
