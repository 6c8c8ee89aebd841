//! Provides text generation: greedy or sampled (temperature, top-p, seed), several prompts in one
//! left-padded batch, a KV cache, and stopping on EOS and end-of-turn tokens.

use rand::{Rng, SeedableRng};

use crate::model::{Decoder, Input, KvCache};
use crate::trace::Noop;
use crate::{Error, Result};

/// Generation settings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GenOpts {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f64,
    pub seed: u64,
    /// Token ids that end a sequence (EOS, end-of-turn).
    pub stop_ids: Vec<u32>,
    /// If a prompt plus `max_new_tokens` exceeds the context, keep the prompt's last tokens instead of
    /// failing.
    pub truncate_left: bool,
}

impl Default for GenOpts {
    fn default() -> Self {
        GenOpts { max_new_tokens: 64, temperature: 0.0, top_p: 1.0, seed: 42, stop_ids: vec![], truncate_left: false }
    }
}

/// Why a sequence stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    StopToken,
    MaxNewTokens,
}

/// One generated continuation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// New token ids (the stop token, if any, included).
    pub token_ids: Vec<u32>,
    pub stop_reason: StopReason,
    /// Prompt tokens dropped by left truncation.
    pub truncated: usize,
}

fn pick(logits: &[f32], opts: &GenOpts, rng: &mut rand::rngs::StdRng) -> u32 {
    if opts.temperature <= 0.0 {
        // First maximum, as torch.argmax.
        let mut best = 0usize;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(usize, f64)> = logits.iter().enumerate().map(|(i, &l)| (i, ((l as f64 - max) / opts.temperature).exp())).collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.iter_mut().for_each(|x| x.1 /= z);
    p.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    let mut keep = p.len();
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        for (k, x) in p.iter().enumerate() {
            acc += x.1;
            if acc >= opts.top_p {
                keep = k + 1;
                break;
            }
        }
    }
    let mass: f64 = p[..keep].iter().map(|x| x.1).sum();
    let mut r = rng.random::<f64>() * mass;
    for x in &p[..keep] {
        r -= x.1;
        if r <= 0.0 {
            return x.0 as u32;
        }
    }
    p[keep - 1].0 as u32
}

/// Generate continuations of `prompts` (token ids) in one batch.
pub fn generate(model: &Decoder, prompts: &[Vec<u32>], pad_id: u32, opts: &GenOpts) -> Result<Vec<Generation>> {
    // On a thread of rayon's pool, so that the matmuls' parallel loops run on this thread and the pool's
    // others instead of waking the pool and putting this thread to sleep a few hundred times per step.
    // A one-thread pool has no parallel loops to share, and callers on several threads (tests) would
    // queue behind its one thread.
    if rayon::current_num_threads() > 1 && rayon::current_thread_index().is_none() {
        rayon::scope(|_| generate_here(model, prompts, pad_id, opts))
    } else {
        generate_here(model, prompts, pad_id, opts)
    }
}

fn generate_here(model: &Decoder, prompts: &[Vec<u32>], pad_id: u32, opts: &GenOpts) -> Result<Vec<Generation>> {
    if prompts.is_empty() {
        return Err(Error::Input("no prompts to generate from".into()));
    }
    let ctx = model.spec.max_position_embeddings;
    let mut truncated = vec![0usize; prompts.len()];
    let mut rows: Vec<Vec<u32>> = Vec::with_capacity(prompts.len());
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(Error::Input(format!("prompt {i} is empty")));
        }
        let budget = ctx.saturating_sub(opts.max_new_tokens);
        if p.len() > budget {
            if !opts.truncate_left || budget == 0 {
                return Err(Error::ContextOverflow {
                    len: p.len() + opts.max_new_tokens,
                    ctx,
                    extra: format!(
                        " (prompt {i}: {} tokens + {} new; use left truncation to keep the last tokens)",
                        p.len(),
                        opts.max_new_tokens
                    ),
                });
            }
            truncated[i] = p.len() - budget;
            rows.push(p[p.len() - budget..].to_vec());
        } else {
            rows.push(p.clone());
        }
    }
    let s = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let b = rows.len();
    let mut ids = Vec::with_capacity(b);
    let mut mask = Vec::with_capacity(b);
    let mut pos = Vec::with_capacity(b);
    for r in &rows {
        let pad = s - r.len();
        ids.push(std::iter::repeat_n(pad_id, pad).chain(r.iter().copied()).collect::<Vec<_>>());
        mask.push(std::iter::repeat_n(0u8, pad).chain(std::iter::repeat_n(1u8, r.len())).collect::<Vec<_>>());
        // transformers: position_ids = cumsum(mask) - 1, pads clamped to 1 (their value is irrelevant).
        pos.push((0..s).map(|j| if j < pad { 1 } else { (j - pad) as u32 }).collect::<Vec<_>>());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut cache = KvCache::default();
    let mut next_pos: Vec<u32> = rows.iter().map(|r| r.len() as u32).collect();
    let h = model.forward_with(&Input { ids, mask: Some(mask), positions: Some(pos), resume: None }, &mut Noop, Some(&mut cache))?;
    let mut logits = model.last_logits(&h)?.to_vec2::<f32>()?;
    let mut out: Vec<Generation> =
        (0..b).map(|i| Generation { token_ids: vec![], stop_reason: StopReason::MaxNewTokens, truncated: truncated[i] }).collect();
    let mut done = vec![false; b];
    for _ in 0..opts.max_new_tokens {
        let mut step = Vec::with_capacity(b);
        for i in 0..b {
            if done[i] {
                step.push(pad_id);
                continue;
            }
            if logits[i].iter().any(|x| x.is_nan()) {
                return Err(Error::NonFinite(format!("NaN logits while generating for prompt {i}")));
            }
            let t = pick(&logits[i], opts, &mut rng);
            out[i].token_ids.push(t);
            if opts.stop_ids.contains(&t) {
                done[i] = true;
                out[i].stop_reason = StopReason::StopToken;
            }
            step.push(t);
        }
        if done.iter().all(|d| *d) || out.iter().all(|g| g.token_ids.len() >= opts.max_new_tokens) {
            break;
        }
        let input = Input {
            ids: step.iter().map(|t| vec![*t]).collect(),
            mask: Some(vec![vec![1u8]; b]),
            positions: Some(next_pos.iter().map(|p| vec![*p]).collect()),
            resume: None,
        };
        next_pos.iter_mut().for_each(|p| *p += 1);
        let h = model.forward_with(&input, &mut Noop, Some(&mut cache))?;
        logits = model.last_logits(&h)?.to_vec2::<f32>()?;
    }
    Ok(out)
}
