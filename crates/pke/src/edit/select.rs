//! Provides the choice of edit cases the model does not already refuse (`--answered-only`): a case whose
//! request the original model refuses teaches an edit nothing (its safe reply is already what the model
//! says), and on a model that refuses most of a set (Qwen2.5-Coder-1.5B refuses most of AdvBench's first
//! eight) the edit's cases and its held-out stop have nothing left to train for.

use super::{check_room, encode_prompts};
use crate::data::EditCase;
use crate::eval::judge::RefusalJudge;
use crate::generate::{generate, GenOpts};
use crate::io::tokenizer::Tok;
use crate::model::Decoder;
use crate::{Error, Result};

/// Greedy reply tokens read per candidate: twice the held-out stop's, so a refusal after a short preamble
/// is seen too.
pub const SELECT_REPLY_TOKENS: usize = 2 * super::watch::REPLY_TOKENS;
/// Candidates answered per batch (the selection stops after the batch that fills it).
const BATCH: usize = 8;

/// The outcome of [`answered_cases`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Selection {
    /// The first `n` candidates (in order) whose greedy reply the broad judge does not call a refusal.
    pub kept: Vec<EditCase>,
    /// Ids of the candidates before the last kept one that the model refuses (left out).
    pub refused: Vec<String>,
    /// Candidates whose replies were read.
    pub examined: usize,
}

/// The first `n` of `candidates` (0 = all of them) that `model` answers: its greedy reply
/// ([`SELECT_REPLY_TOKENS`] tokens, through the chat template when `chat`) is not a refusal by the broad
/// judge. An error when fewer than `n` are answered, naming how many were, or when none is.
pub fn answered_cases(model: &Decoder, tok: &Tok, candidates: Vec<EditCase>, n: usize, chat: bool) -> Result<Selection> {
    if candidates.is_empty() {
        return Err(Error::Input("no edit cases to choose the answered ones from".into()));
    }
    let want = if n == 0 { candidates.len() } else { n };
    let opts = GenOpts { max_new_tokens: SELECT_REPLY_TOKENS, stop_ids: tok.stop_token_ids(), ..Default::default() };
    let pad = tok.pad_or_eos().unwrap_or(0);
    let (mut kept, mut refused, mut examined) = (Vec::new(), Vec::new(), 0usize);
    for chunk in candidates.chunks(BATCH) {
        if kept.len() >= want {
            break;
        }
        let prompts: Vec<String> = chunk.iter().map(|c| c.prompt.clone()).collect();
        let ids = encode_prompts(tok, &prompts, chat, "edit case")?;
        check_room(&ids, SELECT_REPLY_TOKENS, model.spec.max_position_embeddings, "edit case", ", read to choose the answered cases")?;
        for (c, g) in chunk.iter().zip(generate(model, &ids, pad, &opts)?) {
            if kept.len() >= want {
                break;
            }
            examined += 1;
            if RefusalJudge::Broad.is_refusal(&tok.decode(&g.token_ids, true)?) {
                refused.push(c.id.clone());
            } else {
                kept.push(c.clone());
            }
        }
    }
    if kept.is_empty() {
        return Err(Error::Input(format!(
            "the model refuses every one of the {examined} edit cases read: none is left to edit with; give other cases"
        )));
    }
    if n > 0 && kept.len() < n {
        return Err(Error::Input(format!(
            "asked for {n} edit cases the model answers, but it answers only {} of the {} candidates (it refuses the others already): ask for fewer or give other cases",
            kept.len(),
            candidates.len()
        )));
    }
    Ok(Selection { kept, refused, examined })
}
