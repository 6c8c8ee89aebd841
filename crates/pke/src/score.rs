//! Provides teacher-forced scoring: per-token log-probabilities, mean NLL and perplexity, with texts
//! longer than the context scored in overlapping windows.

use crate::model::decoder::token_logprobs;
use crate::model::{Decoder, Input};
use crate::{Error, Result};

/// Scores of one token sequence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Scored {
    pub token_ids: Vec<u32>,
    /// log p(token[t+1] | tokens[..=t]) for every predicted token (len = n - 1).
    pub logprobs: Vec<f64>,
    pub mean_nll: f64,
    pub perplexity: f64,
    /// Window used when the sequence was longer than it (tokens), if any.
    pub window: Option<usize>,
}

/// Positions per logits chunk: bounds memory at large vocabularies (64 x 262144 f32 = 64 MB).
const LOGIT_CHUNK: usize = 64;

/// Log-probs of `ids[first+1..]` from one forward pass over `ids` (positions < first are context only).
fn logprobs_from(model: &Decoder, ids: &[u32], first: usize) -> Result<Vec<f64>> {
    let h = model.forward(&Input::single(ids))?.squeeze(0)?; // (s, d)
    let mut out = Vec::with_capacity(ids.len() - 1 - first);
    let mut t = first;
    while t + 1 < ids.len() {
        let n = LOGIT_CHUNK.min(ids.len() - 1 - t);
        let logits = model.logits(&h.narrow(0, t, n)?)?;
        let lp = token_logprobs(&logits, &ids[t + 1..t + 1 + n])?.to_vec1::<f32>()?;
        out.extend(lp.into_iter().map(|x| x as f64));
        t += n;
    }
    Ok(out)
}

/// Score a token sequence that fits the context.
pub fn score_ids(model: &Decoder, ids: &[u32]) -> Result<Scored> {
    score_ids_windowed(model, ids, model.spec.max_position_embeddings)
}

/// Score a token sequence; if longer than `window`, slide windows with half-window overlap so every
/// token after the first has at least `window / 2` tokens of context (except at the start).
pub fn score_ids_windowed(model: &Decoder, ids: &[u32], window: usize) -> Result<Scored> {
    if ids.len() < 2 {
        return Err(Error::Input(format!("need at least 2 tokens to score, got {}", ids.len())));
    }
    let window = window.min(model.spec.max_position_embeddings).max(2);
    let mut logprobs = Vec::with_capacity(ids.len() - 1);
    if ids.len() <= window {
        logprobs = logprobs_from(model, ids, 0)?;
    } else {
        let stride = (window / 2).max(1);
        let mut begin = 0usize;
        loop {
            let end = (begin + window).min(ids.len());
            let scored_upto = logprobs.len(); // tokens 1..=scored_upto are done
            let first = scored_upto.saturating_sub(begin); // predict ids[begin+first+1..end]
            logprobs.extend(logprobs_from(model, &ids[begin..end], first)?);
            if end == ids.len() {
                break;
            }
            begin += stride;
        }
    }
    if let Some(bad) = logprobs.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite(format!("log-probability of token {} is {}", bad + 1, logprobs[bad])));
    }
    let mean_nll = -logprobs.iter().sum::<f64>() / logprobs.len() as f64;
    Ok(Scored {
        token_ids: ids.to_vec(),
        logprobs,
        mean_nll,
        perplexity: mean_nll.exp(),
        window: if ids.len() > window { Some(window) } else { None },
    })
}

/// How readily the model opens its answer to one prompt with a given reply.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplyScore {
    pub prompt: String,
    /// log p(reply | prompt), summed over the reply's tokens.
    pub logprob: f64,
    /// log p of the reply's first token alone.
    pub first: f64,
    /// The reply's tokens.
    pub tokens: usize,
}

/// `reply` scored after each prompt, the prompt encoded as the edit encodes it (chat template or not) and
/// the reply tokenized alone, without BOS (after a space without the template), as the edit's safe replies
/// are: e.g. the log-probability of a refusal opening on benign prompts, which reads how near the
/// model's refusal boundary each one sits (docs/validation.md, "How near the refusal boundary").
pub fn reply_logprobs(
    model: &Decoder,
    tok: &crate::io::tokenizer::Tok,
    prompts: &[String],
    reply: &str,
    chat: bool,
) -> Result<Vec<ReplyScore>> {
    let labels = tok.encode(&crate::io::chat::reply_text(reply, chat), false)?;
    if reply.trim().is_empty() || labels.is_empty() {
        return Err(Error::Input("the reply to score is empty".into()));
    }
    let ids = crate::edit::encode_prompts(tok, prompts, chat, "prompt")?;
    crate::edit::check_room(&ids, labels.len(), model.spec.max_position_embeddings, "prompt", "")?;
    prompts
        .iter()
        .zip(ids)
        .enumerate()
        .map(|(i, (prompt, mut ids))| {
            let first = ids.len() - 1;
            ids.extend(&labels);
            let lp = logprobs_from(model, &ids, first)?;
            if let Some(bad) = lp.iter().find(|x| !x.is_finite()) {
                return Err(Error::NonFinite(format!("log-probability of the reply after prompt {} is {bad}", i + 1)));
            }
            Ok(ReplyScore { prompt: prompt.clone(), logprob: lp.iter().sum(), first: lp[0], tokens: labels.len() })
        })
        .collect()
}
