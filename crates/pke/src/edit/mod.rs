//! Provides editing: compute a [`WeightDelta`] for the hotspot weights with one of four methods
//! (`pke`, `dinm`, `ft-l`, `ga`; method.md 1.4-1.9 and 2.4 P4) and apply it. `compute_delta` leaves the
//! model it is given unchanged (ROME's invariant): it trains a copy.

pub mod delta;
pub mod gate;
pub mod gate_scan;
pub mod params;
pub mod preserve;
pub mod select;
pub mod watch;

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::Serialize;

pub use delta::{TensorDelta, WeightDelta};
pub use params::{BatchMode, EditParams, Method};

pub use crate::data::probes::{builtin_retain, builtin_retain_prompts, Probe};

use crate::data::EditCase;
use crate::io::tokenizer::Tok;
use crate::locate::signals::prompt_text;
use crate::locate::Hotspots;
use crate::model::decoder::{down_proj_name, index_tensor, token_logprobs};
use crate::model::ops::{base_log_probs, kl_rows};
use crate::model::{Decoder, Input};
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// EasyEdit's `suffix_system_prompt` (method.md 1.2).
pub const DINM_SUFFIX: &str = "If the user's request is reasonable, give the correct answer. Please give the right response:";

/// One tokenized training sequence: ids, and the rows whose logits a loss reads with their labels.
#[derive(Clone, Debug)]
struct Seq {
    ids: Vec<u32>,
    /// (row of the logits, label)
    rows: Vec<usize>,
    labels: Vec<u32>,
    /// Residual stream entering the lowest edited block, computed once with the original weights.
    resume: Option<(usize, Tensor)>,
}

impl Seq {
    /// The tokens up to and including the one whose logits predict the first label (for a safe-reply
    /// sequence: the prompt as the edit encodes it).
    fn prompt(&self) -> Vec<u32> {
        self.ids[..self.rows[0] + 1].to_vec()
    }
}

/// The tokenized sequences of one case (before `precompute`).
#[derive(Clone, Debug)]
struct CaseSeqs {
    id: String,
    safe: Seq,
    unsafe_: Seq,
    loc: Option<Seq>,
    /// The safe reply after the prompt and the unsafe reply's opening (`prefill_weight`), one sequence
    /// per opening depth (`prefill_depths`); empty when off.
    recover: Vec<Seq>,
}

/// The sequences of one case, ready to train on.
#[derive(Clone, Debug)]
struct Prepared {
    id: String,
    safe: Seq,
    unsafe_: Seq,
    /// Recovery sequences, one trained per step in turn (empty when off).
    recover: Vec<Seq>,
    /// Locality sequence and the original model's log-probabilities at its KL rows (A, V).
    loc: Option<(Seq, Tensor)>,
}

/// Per-step loss terms, for logs and `--json`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct StepLog {
    pub step: usize,
    /// Seconds since the edit began, when this step began (after the setup: retain replies, null space,
    /// held-out probes).
    #[serde(default)]
    pub elapsed_s: f64,
    pub case: Option<String>,
    pub loss: f64,
    pub nll_safe: f64,
    /// NaN where not evaluated (null in JSON).
    #[serde(deserialize_with = "crate::eval::report::null_is_nan")]
    pub kl: f64,
    pub unlikelihood: f64,
    pub nll_unsafe: f64,
    /// Mean KL(original || edited) over this step's retain prompts (0 when the retain term is off).
    #[serde(default)]
    pub retain_kl: f64,
    /// The benign refusal hinge (`benign_refusal_weight`): mean over this step's benign retain prompts and
    /// the cases' refusal openings of relu(log p'(R | b) - log p(R | b) + margin) (0 when off).
    #[serde(default)]
    pub benign_refusal: f64,
    /// The representation term (`direction_weight`): mean squared shortfall of the harmful cases plus mean
    /// squared drift of the benign retain prompts, in units of the gap (0 when off).
    #[serde(default)]
    pub direction: f64,
    /// NLL of the safe reply after the unsafe reply's opening (`prefill_weight`; 0 when off).
    #[serde(default)]
    pub nll_recover: f64,
    /// Every case's safe reply opens the greedy reply (its first `stop_greedy_tokens` tokens are each the
    /// top token); true when that check is off.
    #[serde(default)]
    pub greedy_opening: bool,
    /// The held-out stop rule's reading before this step's update (`stop_probes`; None when off).
    #[serde(default)]
    pub watch: Option<watch::Reading>,
    /// This step's weights went past a `stop_drift` / `stop_benign_rise` bound: the edit kept the
    /// previous step's weights and stopped (or, with `stop_backoff`, went on from them at a smaller step,
    /// retrying the cases the taken-back update had trained). Such an entry is not a step of the edit.
    #[serde(default)]
    pub reverted: bool,
    /// With `cases_per_step`: the indices of the cases this step trained (empty: every case of the group).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trained: Vec<usize>,
    /// This step's reading ended the edit (the NLL stop, with the held-out share where it applies, or the
    /// loss stop); false on every other step. Logs written before the field have none: see [`describe_stop`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
}

impl StepLog {
    /// The locality KL term as printed: "-" where it was not evaluated (EasyEdit's KL has no gradient, so
    /// DINM leaves it out; NaN in the log, null in JSON; see `EditParams::always_log_inert_kl`).
    pub fn kl_text(&self, decimals: usize) -> String {
        if self.kl.is_nan() {
            "-".into()
        } else {
            format!("{:.*}", decimals, self.kl)
        }
    }
}

/// The result of an edit.
#[derive(Clone, Debug)]
pub struct EditOutcome {
    pub delta: WeightDelta,
    pub log: Vec<StepLog>,
    pub seconds: f64,
    /// Of `seconds`, the time before the first step: tokenizing, the original model's retain replies and
    /// the null space's keys, the held-out probes.
    pub setup_seconds: f64,
    /// Per edited `down_proj` of a null-space edit, what the projection leaves free (empty when off).
    pub preserve: Vec<preserve::PreserveSummary>,
    /// Per edited layer of an intent-gated edit, where its read fires (empty when off; also in the delta's
    /// `intent_gate` metadata).
    pub gates: Vec<gate::GateSummary>,
    /// The layers edited: the located ones, or the one `intent_gate_scan` chose.
    pub layers: Vec<usize>,
    /// With `intent_gate_scan`: every candidate layer's reach (also in the delta's metadata).
    pub layer_scan: Option<gate_scan::LayerScan>,
}

impl EditOutcome {
    /// Steps whose weights the edit kept (the log without a step taken back by the held-out stop rule).
    pub fn steps_run(&self) -> usize {
        self.log.iter().filter(|e| !e.reverted).count()
    }

    /// The loss of the last step the edit kept (a step taken back has no loss of its own); None without steps.
    pub fn final_loss(&self) -> Option<f64> {
        self.log.iter().rev().find(|e| !e.reverted).map(|e| e.loss)
    }
}

/// How an edit ended, in words, from its log: the steps kept, the steps the held-out bounds took back (with
/// the reading that crossed them) and what ended it (the NLL / loss stop, the step cap or a bound). For the
/// compare tables, which do not print the per-step log `pke edit` does.
pub fn describe_stop(log: &[StepLog], p: &EditParams) -> String {
    let kept = log.iter().filter(|e| !e.reverted).count();
    if p.mode == BatchMode::Sequential {
        return format!("{kept} steps over the cases one at a time");
    }
    let b0 = log.iter().find_map(|e| e.watch.map(|w| w.benign_refused));
    let why = |e: &StepLog| match (e.watch, b0) {
        (Some(r), Some(b0)) => bound_crossed(&r, b0, p).unwrap_or_else(|| "a bound".into()),
        _ => "a bound".into(),
    };
    let backs: Vec<String> = log.iter().filter(|e| e.reverted).map(|e| format!("before step {}: {}", e.step, why(e))).collect();
    let end = match log.last() {
        None => "no step".to_string(),
        Some(e) if e.reverted => "a held-out bound".into(),
        // Without `stopped` (logs from before the field) a log shorter than the cap ended by a stop.
        Some(e) if !e.stopped && log.len() >= p.steps => "the step cap".into(),
        Some(e) => match e.watch.and_then(|w| w.harmful_refused) {
            Some(h) => format!("the NLL stop (held-out harmful requests refused {h:.2})"),
            None => "the NLL / loss stop".into(),
        },
    };
    let mut s = format!("{kept} steps kept, ended by {end}");
    if !backs.is_empty() {
        s += &format!("; taken back {}", backs.join("; "));
    }
    s
}

/// The `stop_drift` / `stop_benign_rise` bound a held-out reading is past, in words (`benign0`: the original
/// model's benign refusal share); None within both.
fn bound_crossed(r: &watch::Reading, benign0: f64, p: &EditParams) -> Option<String> {
    if p.stop_drift > 0.0 && r.drift > p.stop_drift {
        Some(format!("prose drift {:.4} > {}", r.drift, p.stop_drift))
    } else if p.stop_benign_rise > 0.0 && r.benign_refused - benign0 > p.stop_benign_rise + 1e-9 {
        Some(format!("benign refusals {benign0:.3} -> {:.3}, rise > {}", r.benign_refused, p.stop_benign_rise))
    } else {
        None
    }
}

fn seq_after(prompt: &[u32], resp: &[u32]) -> Seq {
    let ids: Vec<u32> = prompt.iter().chain(resp).copied().collect();
    let rows = (prompt.len() - 1..prompt.len() - 1 + resp.len()).collect();
    Seq { ids, rows, labels: resp.to_vec(), resume: None }
}

fn encode_nonempty(tok: &Tok, text: &str, special: bool, what: &str, id: &str) -> Result<Vec<u32>> {
    let ids = tok.encode(text, special)?;
    if ids.is_empty() {
        return Err(Error::Input(format!("case {id}: {what} tokenizes to zero tokens")));
    }
    Ok(ids)
}

/// Tokenize a case for `method`. pke, ft-l and ga use the locate inputs (prompt with chat template or
/// not, responses tokenized alone without BOS). dinm reproduces EasyEdit's strings and label alignment.
fn prepare(tok: &Tok, i: usize, c: &EditCase, chat: bool, p: &EditParams, method: Method) -> Result<CaseSeqs> {
    let suffix = (method == Method::Dinm && p.quirk_suffix).then_some(DINM_SUFFIX);
    let sep = |r: &str| crate::io::chat::reply_text(r, chat);
    // `safe_reply`: one refusal for every case in place of each case's own.
    let safe_text = if p.safe_reply.is_empty() { c.safe_response.as_str() } else { p.safe_reply.as_str() };
    if method == Method::Dinm {
        // ft_input = prompt_S + " " + (" " + target); labels = tok(" " + target) with special tokens (Q3);
        // the loss reads logits[:-1][-T:].
        let prompt_s = prompt_text(tok, &c.prompt, chat, suffix)?;
        let target = format!(" {safe_text}");
        let ids = encode_nonempty(tok, &format!("{prompt_s} {target}"), !chat, "the edit input", &c.id)?;
        let labels = encode_nonempty(tok, &target, p.quirk_bos_label, "the safe reply", &c.id)?;
        if labels.len() >= ids.len() {
            return Err(Error::Input(format!("case {}: the safe reply is as long as the whole input", c.id)));
        }
        let s = ids.len();
        let safe = Seq { rows: (s - 1 - labels.len()..s - 1).collect(), labels, ids, resume: None };
        let unsafe_ids = encode_nonempty(tok, &format!("{prompt_s} {}", sep(&c.unsafe_response)), !chat, "the unsafe input", &c.id)?;
        let ul = encode_nonempty(tok, &sep(&c.unsafe_response), false, "the unsafe reply", &c.id)?;
        let su = unsafe_ids.len();
        let unsafe_ = Seq { rows: (su - 1 - ul.len()..su - 1).collect(), labels: ul, ids: unsafe_ids, resume: None };
        let loc = match (&c.locality_prompt, &c.locality_answer) {
            (Some(lp), Some(la)) => {
                let loc_s = prompt_text(tok, lp, chat, suffix)?;
                let ids = encode_nonempty(tok, &format!("{loc_s} {la}"), !chat, "the locality input", &c.id)?;
                let a = encode_nonempty(tok, la, true, "the locality answer", &c.id)?.len().min(ids.len() - 1);
                let sl = ids.len();
                // EasyEdit: the last A logit rows, no shift (Q: no_shift_kl); fixed: the A rows predicting the answer.
                let rows: Vec<usize> = if p.quirk_no_shift_kl { (sl - a..sl).collect() } else { (sl - 1 - a..sl - 1).collect() };
                Some(Seq { labels: vec![0; rows.len()], rows, ids, resume: None })
            }
            _ => None,
        };
        return Ok(CaseSeqs { id: c.id.clone(), safe, unsafe_, loc, recover: Vec::new() });
    }
    let prompt = encode_nonempty(tok, &prompt_text(tok, &c.prompt, chat, None)?, !chat, "the prompt", &c.id)?;
    let mut safe = encode_nonempty(tok, &sep(safe_text), false, "the safe reply", &c.id)?;
    if p.target_eos {
        let eos = *tok
            .stop_token_ids()
            .first()
            .ok_or_else(|| Error::Input("target_eos: the tokenizer has no end-of-sequence or end-of-turn token".into()))?;
        safe.push(eos);
    }
    let unsafe_ = encode_nonempty(tok, &sep(&c.unsafe_response), false, "the unsafe reply", &c.id)?;
    let loc = match (&c.locality_prompt, &c.locality_answer) {
        (Some(lp), Some(la)) => {
            let lpi = encode_nonempty(tok, &prompt_text(tok, lp, chat, None)?, !chat, "the locality prompt", &c.id)?;
            let lai = encode_nonempty(tok, &sep(la), false, "the locality answer", &c.id)?;
            Some(seq_after(&lpi, &lai))
        }
        _ => None,
    };
    let recover = if p.prefill_weight > 0.0 {
        let openings: Vec<Vec<u32>> = if p.prefill_openings.is_empty() {
            // At least one token of the (non-empty) unsafe reply, never all of a longer one; depths that
            // clip to the same opening are trained once.
            let depths = if p.prefill_depths.is_empty() { vec![p.prefill_tokens] } else { p.prefill_depths.clone() };
            let mut cut: Vec<usize> = depths.iter().map(|&d| d.min(unsafe_.len() - 1).max(1)).collect();
            cut.sort_unstable();
            cut.dedup();
            cut.iter().map(|&d| unsafe_[..d].to_vec()).collect()
        } else {
            // The given openings, one per case in turn.
            let o = &p.prefill_openings[i % p.prefill_openings.len()];
            vec![encode_nonempty(tok, &sep(o), false, "the prefill opening", &c.id)?]
        };
        openings
            .iter()
            .map(|opening| {
                let opened: Vec<u32> = prompt.iter().chain(opening).copied().collect();
                seq_after(&opened, &safe)
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(CaseSeqs { id: c.id.clone(), safe: seq_after(&prompt, &safe), unsafe_: seq_after(&prompt, &unsafe_), loc, recover })
}

/// The safe-reply token ids `compute_delta` trains toward for `case` (what the edit term of pke, dinm and
/// ft-l reads; `ga` ascends on the unsafe reply instead): with `target_eos`, ending in the end-of-turn
/// token.
pub fn training_labels(tok: &Tok, case: &EditCase, chat: bool, p: &EditParams, method: Method) -> Result<Vec<u32>> {
    Ok(prepare(tok, 0, case, chat, p, method)?.safe.labels)
}

/// Hidden states (s, d) of `seq` from its cached residual, and the logits at its rows.
fn seq_logits(model: &Decoder, seq: &Seq) -> Result<Tensor> {
    let input = Input { ids: vec![seq.ids.clone()], mask: None, positions: None, resume: seq.resume.clone() };
    let h = model.forward_with(&input, &mut crate::trace::Noop, None)?.squeeze(0)?;
    let idx = Tensor::from_vec(seq.rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), seq.rows.len(), h.device())?;
    model.logits(&h.index_select(&idx, 0)?)
}

fn nll(model: &Decoder, seq: &Seq) -> Result<Tensor> {
    Ok(nll_and_greedy_opening(model, seq, 0)?.0)
}

/// NLL of `seq`'s labels, and whether the first `k` labels are each the model's top token (teacher
/// forced): the greedy reply would open with them. `k = 0` skips the check (true).
fn nll_and_greedy_opening(model: &Decoder, seq: &Seq, k: usize) -> Result<(Tensor, bool)> {
    let logits = seq_logits(model, seq)?;
    let n = token_logprobs(&logits, &seq.labels)?.mean_all()?.neg()?;
    let k = k.min(seq.labels.len());
    let opens = k == 0 || {
        let top: Vec<u32> = logits.narrow(0, 0, k)?.detach().argmax(candle_core::D::Minus1)?.to_vec1()?;
        top == seq.labels[..k]
    };
    Ok((n, opens))
}

/// −mean_t log(1 − p(y_t)).
fn unlikelihood(model: &Decoder, seq: &Seq) -> Result<Tensor> {
    let p = token_logprobs(&seq_logits(model, seq)?, &seq.labels)?.exp()?;
    Ok(p.affine(-1.0, 1.0)?.clamp(1e-6f32, 1.0f32)?.log()?.mean_all()?.neg()?)
}

/// KL(P_original || P_edited), averaged over rows; `base` holds the original log-probabilities.
fn kl(model: &Decoder, seq: &Seq, base: &Tensor) -> Result<Tensor> {
    Ok(kl_rows(&seq_logits(model, seq)?, base)?.mean_all()?)
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_scalar::<f32>()? as f64)
}

/// Fill `resume` for every sequence (residual entering block `l0`, original weights) and the original
/// log-probabilities of the locality rows.
fn precompute(model: &Decoder, cases: Vec<CaseSeqs>, l0: usize) -> Result<Vec<Prepared>> {
    let resume_of = |ids: &[u32]| resume_at(model, ids, l0);
    let mut out = Vec::with_capacity(cases.len());
    for mut c in cases {
        c.safe.resume = resume_of(&c.safe.ids)?;
        c.unsafe_.resume = resume_of(&c.unsafe_.ids)?;
        let loc = match c.loc {
            Some(mut seq) => {
                seq.resume = resume_of(&seq.ids)?;
                let base = base_log_probs(&seq_logits(model, &seq)?)?;
                Some((seq, base))
            }
            None => None,
        };
        let recover = c
            .recover
            .into_iter()
            .map(|mut seq| -> Result<Seq> {
                seq.resume = resume_of(&seq.ids)?;
                Ok(seq)
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(Prepared { id: c.id, safe: c.safe, unsafe_: c.unsafe_, loc, recover });
    }
    Ok(out)
}

/// The residual stream entering block `l0` for `ids` with the original weights (None for block 0).
fn resume_at(model: &Decoder, ids: &[u32], l0: usize) -> Result<Option<(usize, Tensor)>> {
    if l0 == 0 {
        return Ok(None);
    }
    let mut cap = Capture::new([Site::ResidPost(l0 - 1)]);
    cap.stop = Some(l0 - 1);
    model.forward_with(&Input::single(ids), &mut cap, None)?;
    Ok(Some((l0, cap.store.remove(&Site::ResidPost(l0 - 1)).expect("captured"))))
}

/// The next `per_step` indices of `0..len` in turn from `cursor` (all of them, from the cursor, when
/// `per_step` is 0 or at least `len`), moving the cursor past them: how the edit cycles through its cases
/// (`cases_per_step`) and the retain and direction terms through their benign prompts (`retain_per_step`).
fn next_window(cursor: &mut usize, len: usize, per_step: usize) -> Vec<usize> {
    let k = if per_step == 0 { len } else { per_step.min(len) };
    let window = (0..k).map(|j| (*cursor + j) % len).collect();
    *cursor = (*cursor + k) % len.max(1);
    window
}

/// The edit's place in its cases and benign prompts when a step begins (`stop_backoff` restores it).
struct Turn {
    case: usize,
    retain: usize,
    direction: usize,
    visits: Vec<usize>,
}

/// `acc + t`, starting from `t`.
fn accumulate(acc: &mut Option<Tensor>, t: Tensor) -> Result<()> {
    *acc = Some(match acc.take() {
        Some(a) => (a + t)?,
        None => t,
    });
    Ok(())
}

/// The last retain replies generated, with everything they depend on: the base model's
/// [`Decoder::weights_identity`], the encoded prompts, `retain_tokens` and the stop tokens. A comparison
/// edits the same base model once per arm and repeat; the replies (tens of seconds for the 48 built-in
/// prompts) are the same each time.
type RetainKey = (u64, Vec<Vec<u32>>, usize, Vec<u32>);
static RETAIN_REPLIES: std::sync::Mutex<Option<(RetainKey, Vec<Seq>)>> = std::sync::Mutex::new(None);

/// Each benign prompt followed by the original model's greedy reply (at most `p.retain_tokens` tokens, the
/// stop token kept); prompts with an empty reply are left out. `model_id` is the weights identity of the
/// model the caller was given (`model` may be its exact copy, rebuilt per call).
fn retain_replies(model: &Decoder, model_id: u64, tok: &Tok, prompts: &[String], chat: bool, p: &EditParams) -> Result<Vec<Seq>> {
    let ids = encode_prompts(tok, prompts, chat, "retain prompt")?;
    check_room(&ids, p.retain_tokens, model.spec.max_position_embeddings, "retain prompt", "")?;
    let opts = crate::generate::GenOpts { max_new_tokens: p.retain_tokens, stop_ids: tok.stop_token_ids(), ..Default::default() };
    let key: RetainKey = (model_id, ids.clone(), p.retain_tokens, opts.stop_ids.clone());
    if let Some((k, v)) = &*RETAIN_REPLIES.lock().unwrap_or_else(|e| e.into_inner()) {
        if *k == key {
            return Ok(v.clone());
        }
    }
    let mut out = Vec::with_capacity(ids.len());
    // Batches of 16: the 48 built-in prompts' replies on SmolLM2 took 23 s instead of 30 s in batches of 8
    // (one loaded core, 2026-12-02); bench-runtime's batch-16 decode rate is 2.4x its single-prompt one.
    for chunk in ids.chunks(16) {
        for (x, g) in chunk.iter().zip(crate::generate::generate(model, chunk, tok.pad_or_eos().unwrap_or(0), &opts)?) {
            if !g.token_ids.is_empty() {
                out.push(seq_after(x, &g.token_ids));
            }
        }
    }
    *RETAIN_REPLIES.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, out.clone()));
    Ok(out)
}

/// Prompt ids as the edit sees them (chat template or not); an empty one is an error naming `what` and
/// its position.
pub fn encode_prompts(tok: &Tok, prompts: &[String], chat: bool, what: &str) -> Result<Vec<Vec<u32>>> {
    prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = tok.encode(&prompt_text(tok, p, chat, None)?, !chat)?;
            if ids.is_empty() {
                return Err(Error::Input(format!("{what} {} tokenizes to zero tokens", i + 1)));
            }
            Ok(ids)
        })
        .collect()
}

/// Every prompt of `prompts` leaves room for `reply` tokens in the context `ctx`; else an error naming the
/// first that does not as `what` (1-based), with `note` after it.
pub(crate) fn check_room(prompts: &[Vec<u32>], reply: usize, ctx: usize, what: &str, note: &str) -> Result<()> {
    match prompts.iter().enumerate().find(|(_, x)| x.len() + reply > ctx) {
        Some((i, x)) => {
            Err(Error::ContextOverflow { len: x.len() + reply, ctx, extra: format!(" ({what} {} with {reply} reply tokens{note})", i + 1) })
        }
        None => Ok(()),
    }
}

/// Book passages as token ids, in the order given, each cut to the context `ctx`; passages under two tokens
/// are left out. Lazy: callers take what they need.
fn passage_ids<'a>(
    tok: &'a Tok,
    passages: impl Iterator<Item = &'a String> + 'a,
    ctx: usize,
) -> impl Iterator<Item = Result<Vec<u32>>> + 'a {
    passages
        .map(move |passage| {
            let mut ids = tok.encode(passage, true)?;
            ids.truncate(ctx);
            Ok(ids)
        })
        .filter(|ids: &Result<Vec<u32>>| ids.as_ref().map_or(true, |ids| ids.len() >= 2))
}

/// About `tokens` tokens of plain prose (whole book passages in order, each its own sequence), for the
/// null space to protect; none for 0.
pub(crate) fn prose_ids(tok: &Tok, tokens: usize, ctx: usize) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    if tokens == 0 {
        return Ok(out);
    }
    let mut n = 0;
    let passages = crate::data::sets::prose_passages()?;
    for ids in passage_ids(tok, passages.iter(), ctx) {
        let ids = ids?;
        n += ids.len();
        out.push(ids);
        if n >= tokens {
            return Ok(out);
        }
    }
    Err(Error::Input(format!("preserve_text = {tokens} tokens, but the prose passages hold only {n}")))
}

/// The benign refusal hinge starts this far (nats) above its threshold, so that float noise between the
/// original model's forward pass and the trained one's (under 1e-4 nats on Qwen) does not switch it on before any
/// update: at the original weights a hinge on its kink would add its whole gradient to Adam's first,
/// sign-like step (measured: that step drifted held-out prose 0.038 nats instead of 0.003).
const HINGE_SLACK: f64 = 1e-3;

/// Log-probability of `seq`'s labels (summed).
fn labels_logprob(model: &Decoder, seq: &Seq) -> Result<Tensor> {
    Ok(token_logprobs(&seq_logits(model, seq)?, &seq.labels)?.sum_all()?)
}

/// `benign_refusal_weight`: per benign retain prompt (in order), the prompt followed by each distinct
/// refusal opening of the cases (the first `benign_refusal_tokens` tokens of their safe replies), ready to
/// resume at block `l0`, with the original model's log-probability of that opening.
fn benign_refusal_seqs(
    model: &Decoder,
    tok: &Tok,
    prompts: &[String],
    cases: &[Prepared],
    chat: bool,
    p: &EditParams,
    l0: usize,
) -> Result<Vec<Vec<(Seq, f64)>>> {
    if prompts.is_empty() {
        return Err(Error::Input("benign_refusal_weight > 0 but the retain set has no benign prompts".into()));
    }
    let mut openings: Vec<Vec<u32>> = Vec::new();
    for c in cases {
        let o = c.safe.labels[..p.benign_refusal_tokens.min(c.safe.labels.len())].to_vec();
        if !openings.contains(&o) {
            openings.push(o);
        }
    }
    let ids = encode_prompts(tok, prompts, chat, "retain prompt")?;
    let longest = openings.iter().map(Vec::len).max().unwrap_or(0);
    check_room(&ids, longest, model.spec.max_position_embeddings, "retain prompt", "")?;
    ids.iter()
        .map(|prompt| {
            openings
                .iter()
                .map(|o| {
                    let mut seq = seq_after(prompt, o);
                    seq.resume = resume_at(model, &seq.ids, l0)?;
                    let lp = scalar(&labels_logprob(model, &seq)?)?;
                    Ok((seq, lp))
                })
                .collect()
        })
        .collect()
}

/// Retain sequences ready for the KL term: resume residual and the original log-probabilities at the reply
/// rows.
fn prepare_retain(model: &Decoder, replies: Vec<Seq>, l0: usize) -> Result<Vec<(Seq, Tensor)>> {
    replies
        .into_iter()
        .map(|mut seq| {
            seq.resume = resume_at(model, &seq.ids, l0)?;
            let base = base_log_probs(&seq_logits(model, &seq)?)?;
            Ok((seq, base))
        })
        .collect()
}

/// A trainable tensor: its name, the variable, its original value, the column mask of a whole trained
/// weight (None: the variable is a column delta), its optimizer state, and the (low, high) bounds of
/// `quant_block`.
type TrainVar = (String, Var, Tensor, Option<Tensor>, Adam, Option<(Tensor, Tensor)>);

/// `m` with the trained tensors' current values, without gradient tracking.
fn untracked(m: &Decoder, vars: &[TrainVar], targets: &[EditTarget]) -> Result<Decoder> {
    let mut frozen = m.clone();
    for ((name, var, _, mask, ..), t) in vars.iter().zip(targets) {
        match mask {
            Some(_) => frozen.set(name, var.as_tensor().detach())?,
            None => frozen.set_column_delta(name, &t.index, var.as_tensor().detach())?,
        }
    }
    Ok(frozen)
}

/// Set the trained tensors back to `before` (their values before the last update).
fn take_back(vars: &[TrainVar], before: Vec<Tensor>) -> Result<()> {
    for ((_, var, ..), t) in vars.iter().zip(before) {
        var.set(&t)?;
    }
    Ok(())
}

/// Back-propagate one loss term and add its gradient for each trainable tensor to `acc`.
fn backprop(term: &Tensor, vars: &[TrainVar], acc: &mut [Option<Tensor>]) -> Result<()> {
    let g = term.backward()?;
    for ((_, var, ..), a) in vars.iter().zip(acc.iter_mut()) {
        if let Some(x) = g.get(var.as_tensor()) {
            accumulate(a, x.clone())?;
        }
    }
    Ok(())
}

/// Minimal Adam (betas 0.9/0.999, eps 1e-8, no weight decay) as torch.optim.Adam, updating in place.
pub(crate) struct Adam {
    m: Tensor,
    v: Tensor,
    t: i32,
}

impl Adam {
    pub(crate) fn new(like: &Tensor) -> Result<Self> {
        Ok(Adam { m: like.zeros_like()?, v: like.zeros_like()?, t: 0 })
    }
    pub(crate) fn step(&mut self, w: &Var, g: &Tensor, lr: f64) -> Result<()> {
        let upd = self.update(g)?;
        w.set(&(w.as_tensor().detach() - (upd * lr)?)?)?;
        Ok(())
    }
    /// The next update direction for gradient `g` (the step is `-lr` times it).
    pub(crate) fn update(&mut self, g: &Tensor) -> Result<Tensor> {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
        self.t += 1;
        self.m = ((&self.m * b1)? + (g * (1.0 - b1))?)?;
        self.v = ((&self.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
        let mhat = (&self.m / (1.0 - b1.powi(self.t)))?;
        let vhat = (&self.v / (1.0 - b2.powi(self.t)))?;
        Ok((mhat / (vhat.sqrt()? + eps)?)?)
    }
}

/// Loss terms of one case at the current weights.
/// `frozen` is the same weights without gradient tracking, for terms computed without gradient.
/// With `skip_inert_kl`, an inert KL term (no gradient) is left out and logged as NaN; see
/// `EditParams::always_log_inert_kl`. `turn` picks the recovery sequence trained (one opening depth per
/// turn: the step, or the case's own visit count under `cases_per_step`).
fn case_loss(
    model: &Decoder,
    frozen: &Decoder,
    c: &Prepared,
    method: Method,
    p: &EditParams,
    skip_inert_kl: bool,
    turn: usize,
) -> Result<(Tensor, StepLog)> {
    let zero = || Tensor::zeros((), candle_core::DType::F32, model.device());
    let mut log = StepLog::default();
    let mut loss = zero()?;
    match method {
        Method::Ga => {
            let n = nll(model, &c.unsafe_)?;
            log.nll_unsafe = scalar(&n)?;
            loss = (loss - (n * p.edit_weight)?)?;
        }
        _ => {
            let (n, opens) = nll_and_greedy_opening(model, &c.safe, p.stop_greedy_tokens)?;
            log.greedy_opening = opens;
            log.nll_safe = scalar(&n)?;
            loss = (loss + (n * p.edit_weight)?)?;
        }
    }
    if p.kl_weight != 0.0 && p.quirk_inert_kl && skip_inert_kl && c.loc.is_some() {
        log.kl = f64::NAN;
    } else if p.kl_weight != 0.0 {
        if let Some((seq, base)) = &c.loc {
            // EasyEdit computes this term under no_grad (quirk Q2): evaluate it on untracked weights.
            let k = if p.quirk_inert_kl { kl(frozen, seq, base)? } else { kl(model, seq, base)? };
            log.kl = scalar(&k)?;
            loss = (loss + (k * p.kl_weight)?)?;
        }
    }
    if let (Some(seq), true) = (c.recover.get(turn % c.recover.len().max(1)), p.prefill_weight > 0.0 && method != Method::Ga) {
        // The stop rule waits for the recovery reply to open the greedy reply too.
        let (r, opens) = nll_and_greedy_opening(model, seq, p.stop_greedy_tokens)?;
        log.greedy_opening &= opens;
        log.nll_recover = scalar(&r)?;
        loss = (loss + (r * p.prefill_weight)?)?;
    }
    if p.unlikelihood_weight != 0.0 {
        let u = unlikelihood(model, &c.unsafe_)?;
        log.unlikelihood = scalar(&u)?;
        loss = (loss + (u * p.unlikelihood_weight)?)?;
    }
    log.loss = scalar(&loss)?;
    if !log.loss.is_finite() {
        return Err(Error::NonFinite(format!("edit loss is {} for case {} (try a smaller lr); nothing was written", log.loss, c.id)));
    }
    Ok((loss, log))
}

/// A prompt's ids and the residual entering the lowest edited block (None for block 0).
type PromptAt = (Vec<u32>, Option<(usize, Tensor)>);

/// The representation term's fixed parts, from the original model: the block whose output is read, the
/// unit direction, the harmful cases' target projection, the gap between the means, and per benign prompt
/// its ids, resume residual and original projection.
struct Direction {
    layer: usize,
    r: Tensor,
    target: f64,
    gap: f64,
    /// Benign prompts with their original projection.
    benign: Vec<(PromptAt, f64)>,
    harmful: Vec<PromptAt>,
}

/// Residual stream after block `layer` at the last token of `ids` (with graph when `model` has Vars).
fn last_token_state(model: &Decoder, ids: &[u32], resume: &Option<(usize, Tensor)>, layer: usize) -> Result<Tensor> {
    let input = Input { ids: vec![ids.to_vec()], mask: None, positions: None, resume: resume.clone() };
    let mut tap = crate::trace::Tap { layer, x: None };
    let h = model.forward_with(&input, &mut tap, None)?;
    Ok(h.squeeze(0)?.get(ids.len() - 1)?)
}

fn projection(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    Ok((x * r)?.sum_all()?)
}

#[allow(clippy::too_many_arguments)]
fn prepare_direction(
    model: &Decoder,
    tok: &Tok,
    prepared: &[Prepared],
    benign_prompts: &[String],
    chat: bool,
    p: &EditParams,
    l0: usize,
    last_layer: usize,
) -> Result<Direction> {
    let layer = (last_layer + p.direction_offset).min(model.spec.n_layers - 1);
    let harmful: Vec<PromptAt> = prepared
        .iter()
        .map(|c| {
            let ids = c.safe.prompt();
            let res = resume_at(model, &ids, l0)?;
            Ok((ids, res))
        })
        .collect::<Result<_>>()?;
    let mut benign = Vec::new();
    for ids in encode_prompts(tok, benign_prompts, chat, "retain prompt")? {
        let res = resume_at(model, &ids, l0)?;
        benign.push((ids, res));
    }
    if harmful.is_empty() || benign.is_empty() {
        return Err(Error::Input("direction_weight > 0 needs edit cases and benign retain prompts".into()));
    }
    let mean = |v: &[Tensor]| -> Result<Tensor> { Ok((Tensor::stack(v, 0)?.sum(0)? / v.len() as f64)?) };
    let hs: Vec<Tensor> = harmful.iter().map(|(ids, r)| last_token_state(model, ids, r, layer)).collect::<Result<_>>()?;
    let bs: Vec<Tensor> = benign.iter().map(|(ids, r)| last_token_state(model, ids, r, layer)).collect::<Result<_>>()?;
    let diff = (mean(&hs)? - mean(&bs)?)?;
    let gap = diff.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    if !(gap > 0.0 && gap.is_finite()) {
        return Err(Error::Input(format!("direction_weight: harmful and benign prompts have the same mean after block {layer}")));
    }
    let r = (diff / gap)?;
    let mh = scalar(&projection(&mean(&hs)?, &r)?)?;
    let benign = benign.into_iter().zip(&bs).map(|(at, x)| Ok((at, scalar(&projection(x, &r)?)?))).collect::<Result<_>>()?;
    Ok(Direction { layer, r, target: mh + p.direction_margin * gap, gap, benign, harmful })
}

/// `write_refusal`: for each target that writes to the residual stream (`down_proj` columns, axis 1), the
/// model's refusal direction after its block as a column (d, 1): the difference of the mean
/// last-prompt-token residual streams of harmful requests and harmless prompts
/// ([`crate::data::probes::refusal_direction_prompts`], 32 each), in the original model, unnormalized
/// (a read-out of 1 moves a prompt by the distance between the two means). Also, per layer, how far
/// apart the two sets lie along it (in pooled standard deviations of the projection) and that distance.
pub(crate) fn refusal_writes(
    model: &Decoder,
    tok: &Tok,
    chat: bool,
    targets: &[EditTarget],
) -> Result<(Vec<Option<Tensor>>, Vec<WriteDirection>)> {
    let (harmful, harmless, _) = crate::data::probes::refusal_direction_prompts(32, 0)?;
    let hs = encode_prompts(tok, &harmful, chat, "refusal-direction prompt")?;
    let bs = encode_prompts(tok, &harmless, chat, "refusal-direction harmless prompt")?;
    let mut by_layer: BTreeMap<usize, Tensor> = BTreeMap::new();
    let mut seps = Vec::new();
    for t in targets.iter().filter(|t| t.axis == 1) {
        if by_layer.contains_key(&t.layer) {
            continue;
        }
        let states = |seqs: &[Vec<u32>]| -> Result<Vec<Vec<f32>>> {
            seqs.iter().map(|ids| Ok(last_token_state(model, ids, &None, t.layer)?.to_vec1::<f32>()?)).collect()
        };
        let (h, b) = (states(&hs)?, states(&bs)?);
        let (hr, br): (Vec<&[f32]>, Vec<&[f32]>) = (h.iter().map(|x| x.as_slice()).collect(), b.iter().map(|x| x.as_slice()).collect());
        let md = crate::locate::intent::mean_difference(&hr, &br).ok_or_else(|| {
            Error::Input(format!("write_refusal: harmful and harmless prompts have the same mean residual after block {}", t.layer))
        })?;
        seps.push((t.layer, md.separation, md.norm));
        // In units of the gap: c . a(x) = 1 moves x by the distance between the two means.
        let col: Vec<f32> = md.diff.iter().map(|x| *x as f32).collect();
        by_layer.insert(t.layer, Tensor::from_vec(col, (model.spec.hidden_size, 1), model.device())?);
    }
    Ok((targets.iter().map(|t| if t.axis == 1 { by_layer.get(&t.layer).cloned() } else { None }).collect(), seps))
}

/// A `write_refusal` direction's layer, the harmful / harmless separation along it (pooled standard
/// deviations) and its length (the distance between the two means).
pub(crate) type WriteDirection = (usize, f64, f64);

/// One trainable slice of a weight: the indices along `axis` (1 columns, 0 rows) that may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditTarget {
    pub name: String,
    pub layer: usize,
    pub index: Vec<usize>,
    pub axis: usize,
}

/// The trainable tensors and their slices for a method: pke edits the hotspot columns of the chosen
/// layers' `down_proj` (with `p.edit_keys`, also the same neurons' rows of `gate_proj` and `up_proj`);
/// the others the whole `down_proj` of the chosen layers.
pub fn edit_targets(model: &Decoder, hotspots: &Hotspots, method: Method, p: &EditParams) -> Result<Vec<EditTarget>> {
    let f = model.spec.intermediate_size;
    if hotspots.chosen_layers.is_empty() {
        return Err(Error::Input("the hotspots name no layer".into()));
    }
    let mut out = Vec::new();
    for &l in &hotspots.chosen_layers {
        if l >= model.spec.n_layers {
            return Err(Error::Input(format!("hotspot layer {l} is out of range (0..={})", model.spec.n_layers - 1)));
        }
        let cols = match method {
            Method::Pke => hotspots.neuron_indices(l).ok_or_else(|| Error::Input(format!("the hotspots list no neurons for layer {l}")))?,
            _ => (0..f).collect(),
        };
        if let Some(&bad) = cols.iter().find(|&&c| c >= f) {
            return Err(Error::Input(format!("hotspot neuron {bad} is outside the MLP width {f}")));
        }
        if method == Method::Pke && p.edit_keys {
            for proj in ["gate_proj", "up_proj"] {
                out.push(EditTarget { name: format!("model.layers.{l}.mlp.{proj}.weight"), layer: l, index: cols.clone(), axis: 0 });
            }
        }
        out.push(EditTarget { name: down_proj_name(l), layer: l, index: cols, axis: 1 });
    }
    Ok(out)
}

/// Compute the delta of an edit. The model is not modified. With `p.retain_weight > 0` or
/// `p.twin_cases > 0`, the built-in retain set is used (see [`compute_delta_with`]).
pub fn compute_delta(
    model: &Decoder,
    tok: &Tok,
    cases: &[EditCase],
    hotspots: &Hotspots,
    method: Method,
    p: &EditParams,
    progress: impl FnMut(usize, usize, &StepLog),
) -> Result<EditOutcome> {
    compute_delta_with(model, tok, cases, hotspots, method, p, None, progress)
}

/// `quant_block`: per trained value, the bounds that keep the weight inside the range its block of `block`
/// consecutive input columns held in `full` (the original weight, `[out, in]`), with the block's extremes
/// fixed, so each block keeps its minimum and maximum (Q4_1's scale and offset) exactly. For a column
/// slice the trained tensor is the change of the columns `index` from `w0`, so the bounds are shifted by
/// `w0`.
fn block_range(full: &Tensor, w0: &Tensor, index: &[usize], sliced: bool, block: usize, name: &str) -> Result<(Tensor, Tensor)> {
    let (rows, cols) = full.dims2()?;
    if cols % block != 0 {
        return Err(Error::Input(format!("quant_block = {block} does not divide the {cols} input columns of `{name}`")));
    }
    let blocks = full.reshape((rows, cols / block, block))?;
    let (lo, hi) = (blocks.min_keepdim(2)?, blocks.max_keepdim(2)?);
    let at: Vec<usize> = if sliced { index.iter().map(|c| c / block).collect() } else { (0..cols).map(|c| c / block).collect() };
    let at = index_tensor(&at, full.device())?;
    let (lo, hi) = (lo.squeeze(2)?.index_select(&at, 1)?, hi.squeeze(2)?.index_select(&at, 1)?);
    // A weight that is its block's minimum or maximum stays as it is: moved inward, it would narrow the
    // block's range and shift the grid the other weights sit on.
    let extreme = w0.eq(&lo)?.maximum(&w0.eq(&hi)?)?;
    let (lo, hi) = (extreme.where_cond(w0, &lo)?, extreme.where_cond(w0, &hi)?);
    Ok(if sliced { ((lo - w0)?, (hi - w0)?) } else { (lo, hi) })
}

/// As [`compute_delta`], with the retain set given (`None` = the built-in one). Its benign prompts are
/// used only when `p.retain_weight > 0`, its harmful twins only when `p.twin_cases > 0`.
#[allow(clippy::too_many_arguments)]
pub fn compute_delta_with(
    model: &Decoder,
    tok: &Tok,
    cases: &[EditCase],
    hotspots: &Hotspots,
    method: Method,
    p: &EditParams,
    retain: Option<&[Probe]>,
    mut progress: impl FnMut(usize, usize, &StepLog),
) -> Result<EditOutcome> {
    if cases.is_empty() {
        return Err(Error::Input("no edit cases".into()));
    }
    let t0 = Instant::now();
    let model_id = model.weights_identity();
    // Natively held weights: every linear exactly on its dequantized blocks, as the float32 path.
    let exact = model.exact();
    let model = &exact;
    let chat = hotspots.settings.chat;
    if p.intent_gate && method != Method::Pke {
        return Err(Error::Input(format!("intent_gate is a pke setting; {method} edits whole layers")));
    }
    let owned_retain;
    let retain_set: &[Probe] = match retain {
        Some(r) => r,
        None if p.retain_weight > 0.0
            || p.benign_refusal_weight > 0.0
            || p.twin_cases > 0
            || p.direction_weight > 0.0
            || p.preserve_energy > 0.0
            || p.intent_gate
            || p.stop_probes > 0 =>
        {
            owned_retain = builtin_retain();
            &owned_retain[..]
        }
        None => &[],
    };
    let twins = if p.twin_cases > 0 {
        let t = crate::data::sets::twin_cases(retain_set, p.twin_cases);
        if t.is_empty() {
            return Err(Error::Input(
                "twin_cases > 0 but the retain set has no harmful twins (a retain file in the probe format with `harmful` fields has them)"
                    .into(),
            ));
        }
        t
    } else {
        vec![]
    };
    // `intent_gate_scan`: the gate's layer chosen by how each candidate's read generalizes; the rest of the
    // edit (its resume point, the watch, the targets) follows the chosen layer.
    let scanned;
    let (hotspots, layer_scan) = if p.intent_gate && p.intent_gate_scan {
        let case_prompts: Vec<String> = cases.iter().chain(&twins).map(|c| c.prompt.clone()).collect();
        let harmful = encode_prompts(tok, &case_prompts, chat, "edit case")?;
        let located = *hotspots.chosen_layers.iter().min().ok_or_else(|| Error::Input("the hotspots name no layer".into()))?;
        let retain_left: Vec<Probe> = retain_set.iter().filter(|x| x.harmful.is_some()).skip(twins.len()).cloned().collect();
        let scan = gate_scan::scan(
            model,
            tok,
            chat,
            &harmful,
            &case_prompts,
            &retain_left,
            &if p.layers.is_empty() { gate_scan::candidates(model.spec.n_layers) } else { p.layers.clone() },
            located,
            p,
        )?;
        eprintln!(
            "intent gate scan (the read cross-fitted at each layer, open shares on prompts it was not fitted on):\n{}",
            scan.markdown()
        );
        eprintln!("intent gate scan: layer {} chosen (located: {located})", scan.chosen);
        let mut h = hotspots.clone();
        h.chosen_layers = vec![scan.chosen];
        scanned = h;
        (&scanned, Some(scan))
    } else {
        (hotspots, None)
    };
    // With a scanned gate the targets are the gate's own (below); the located neurons of another layer are not used.
    let mut targets = if layer_scan.is_some() { vec![] } else { edit_targets(model, hotspots, method, p)? };
    let seqs: Vec<CaseSeqs> =
        cases.iter().chain(&twins).enumerate().map(|(i, c)| prepare(tok, i, c, chat, p, method)).collect::<Result<_>>()?;
    let l0 = *hotspots.chosen_layers.iter().min().expect("non-empty");
    let prepared = precompute(model, seqs, l0)?;
    // Before the retain replies are generated, so a `preserve_text` the passages cannot fill is refused at
    // once (generating them takes minutes on a large model).
    let prose = if p.preserve_energy > 0.0 { prose_ids(tok, p.preserve_text, model.spec.max_position_embeddings)? } else { vec![] };
    // The whitening moment's own prose: `whiten_text` tokens where that is more than `preserve_text`'s (the
    // same passages, from the front); otherwise it whitens by the null space's sequences.
    let white_prose = if p.preserve_whiten > 0.0 && p.whiten_text > p.preserve_text {
        Some(prose_ids(tok, p.whiten_text, model.spec.max_position_embeddings)?)
    } else {
        None
    };
    // The retain set's benign prompts: the held-out probes', the retain replies' and the direction's.
    let benign_prompts = crate::data::probes::benign_prompts(retain_set);
    // `intent_gate`: one repurposed neuron per edited layer, read fitted here; its rows and column replace
    // the hotspot targets.
    let gates = if p.intent_gate {
        let harmful: Vec<Vec<u32>> = prepared.iter().map(|c| c.safe.prompt()).collect();
        let case_prompts: Vec<String> = cases.iter().chain(&twins).map(|c| c.prompt.clone()).collect();
        let (gates, gate_targets) = gate::fit_layers(
            model,
            tok,
            chat,
            harmful,
            &case_prompts,
            retain_set,
            twins.len(),
            &benign_prompts,
            &hotspots.chosen_layers,
            &if p.intent_gate_reply || p.intent_gate_end { prepared.iter().map(|c| c.safe.labels.clone()).collect() } else { vec![] },
            p,
        )?;
        targets = gate_targets;
        gates
    } else {
        vec![]
    };
    // Likewise the held-out probes (too many for AdvBench is refused here).
    let mut watch = if p.stop_probes > 0 && method != Method::Ga {
        Some(watch::Watch::new(model, tok, cases, &benign_prompts, p, chat, l0)?)
    } else {
        None
    };
    // `intent_gate_stop`: the NLL stop waits only for the cases a gate opens on, the held-out stop only for
    // the held-out requests (the others the gate's column cannot reach, so they would hold the edit to the
    // step cap); both counts go into the delta's metadata.
    let mut gate_stop = Vec::new();
    let counted: Vec<bool> = if p.intent_gate_stop && !gates.is_empty() {
        let prompts: Vec<Vec<u32>> = prepared.iter().map(|c| c.safe.prompt()).collect();
        let (open, k) = gate::stop_filter(model, &gates, &prompts, p.intent_gate_z, "edit cases")?;
        gate_stop.push(("intent_gate_stop_cases", k));
        if let Some(w) = watch.as_mut() {
            let (open, k) = gate::stop_filter(model, &gates, w.harmful(), p.intent_gate_z, "held-out harmful requests")?;
            w.keep_harmful(&open);
            gate_stop.push(("intent_gate_stop_probes", k));
        }
        open
    } else {
        vec![true; prepared.len()]
    };
    let replies = if p.retain_weight > 0.0 || p.preserve_energy > 0.0 {
        if benign_prompts.is_empty() && p.retain_weight > 0.0 {
            return Err(Error::Input("retain_weight > 0 but the retain set has no prompts".into()));
        }
        retain_replies(model, model_id, tok, &benign_prompts, chat, p)?
    } else {
        vec![]
    };
    let projectors = if p.preserve_energy > 0.0 {
        let down: Vec<(String, usize, Vec<usize>)> =
            targets.iter().filter(|t| t.axis == 1).map(|t| (t.name.clone(), t.layer, t.index.clone())).collect();
        // The retain replies' prompts are summarized at their last token; the locality pairs are not.
        let prompts: Vec<(Vec<u32>, Option<usize>)> = replies
            .iter()
            .map(|s| (s.ids.clone(), Some(s.rows[0] + 1)))
            .chain(prepared.iter().filter_map(|c| c.loc.as_ref().map(|(s, _)| (s.ids.clone(), None))))
            .collect();
        let with_prose = |prose: Vec<Vec<u32>>| prompts.iter().cloned().chain(prose.into_iter().map(|ids| (ids, None))).collect::<Vec<_>>();
        let benign = with_prose(prose);
        let harmful: Vec<Vec<u32>> = prepared.iter().map(|c| c.safe.prompt()).collect();
        let mut pr = preserve::projectors(model, &down, &benign, &harmful, p.preserve_energy, p.preserve_sink, p.preserve_last)?;
        if p.preserve_whiten > 0.0 {
            let white = white_prose.map(with_prose);
            preserve::whiten(model, &mut pr, white.as_deref().unwrap_or(&benign), &harmful, p.preserve_whiten, p.whiten_last)?;
        }
        pr
    } else {
        vec![]
    };
    let n_replies = replies.len();
    let retain_seqs = if p.retain_weight > 0.0 { prepare_retain(model, replies, l0)? } else { vec![] };
    let refusal_seqs =
        if p.benign_refusal_weight > 0.0 { benign_refusal_seqs(model, tok, &benign_prompts, &prepared, chat, p, l0)? } else { vec![] };
    let mut retain_cursor = 0usize;
    let direction = if p.direction_weight > 0.0 {
        if method == Method::Dinm {
            return Err(Error::Input("direction_weight is not available for dinm (its inputs follow EasyEdit's strings)".into()));
        }
        let last = *hotspots.chosen_layers.iter().max().expect("non-empty");
        Some(prepare_direction(model, tok, &prepared, &benign_prompts, chat, p, l0, last)?)
    } else {
        None
    };
    let mut direction_cursor = 0usize;
    // `write_refusal`: per target, the direction (d, 1) its columns may write along.
    let (writes, write_seps) = if p.write_refusal {
        let w = refusal_writes(model, tok, chat, &targets)?;
        for (l, sep, gap) in &w.1 {
            eprintln!("write_refusal: the edit writes along the refusal direction after block {l} (the harmful and harmless means {gap:.2} apart, {sep:.1} pooled sd)");
        }
        w
    } else {
        (vec![None; targets.len()], vec![])
    };
    // The original model's benign refusal share, and the weights before the last update (to take it back).
    let mut benign0: Option<f64> = None;
    let mut before_update: Option<Vec<Tensor>> = None;
    let mut stopped = false;
    // `stop_backoff`: steps taken back so far, and the learning rate's factor after them.
    let (mut backoffs, mut lr_scale) = (0usize, 1.0f64);
    let setup_seconds = t0.elapsed().as_secs_f64();

    let mut m = model.clone();
    // Weights held as stored are for models too big for float32: recompute the blocks above the edited
    // layers in the backward pass instead of keeping their activations (one block's at a time).
    let top = *hotspots.chosen_layers.iter().max().expect("non-empty");
    if model.weights_mode() == crate::model::decoder::Weights::Native && top + 1 < model.spec.n_layers {
        m.set_checkpoint_from(Some(top + 1));
    }
    let mut vars = Vec::new();
    for t in &targets {
        let full = model.get(&t.name)?.detach();
        let f = full.dim(t.axis)?;
        // Some columns of a weight: the trained tensor is their change alone (d, k), added beside the
        // weight as held (see `Decoder::set_column_delta`); no float32 copy of the whole weight is trained.
        let sliced = t.axis == 1 && t.index.len() < f;
        let (w0, var, mask) = if sliced {
            let w0 = full.index_select(&index_tensor(&t.index, full.device())?, 1)?;
            let var = Var::from_tensor(&w0.zeros_like()?)?;
            m.set_column_delta(&t.name, &t.index, var.as_tensor().clone())?;
            (w0, var, None)
        } else {
            let var = Var::from_tensor(&full)?;
            m.set(&t.name, var.as_tensor().clone())?;
            let mut mask = vec![0f32; f];
            for &c in &t.index {
                mask[c] = 1.0;
            }
            let shape = if t.axis == 0 { (f, 1) } else { (1, f) };
            (full.clone(), var, Some(Tensor::from_vec(mask, shape, model.device())?))
        };
        // `quant_block`: the range each edited weight must stay in, as the trained tensor holds it.
        let range = if p.quant_block > 0 { Some(block_range(&full, &w0, &t.index, sliced, p.quant_block, &t.name)?) } else { None };
        // A projected weight keeps its optimizer state in the free basis's coordinates.
        // With `write_refusal`, in the coordinates along the refusal direction (one row).
        let written = writes[vars.len()].is_some();
        let rows = if written { 1 } else { w0.dim(0)? };
        let adam = match (projectors.iter().find(|pr| pr.name == t.name), written) {
            (Some(pr), _) => Adam::new(&Tensor::zeros((rows, pr.basis.dim(1)?), w0.dtype(), w0.device())?)?,
            (None, true) => Adam::new(&Tensor::zeros((rows, var.as_tensor().dim(1)?), w0.dtype(), w0.device())?)?,
            (None, false) => Adam::new(var.as_tensor())?,
        };
        vars.push((t.name.clone(), var, w0, mask, adam, range));
    }
    // `intent_gate`: the repurposed neuron's rows take the fitted read and stay there (their column mask,
    // which picks the neuron's row, becomes zero: Adam never moves them); its down_proj column starts at
    // zero (the change is minus the original).
    for ((_, var, w0, mask, ..), t) in vars.iter_mut().zip(&targets) {
        let Some(g) = gates.iter().find(|g| g.summary.layer == t.layer) else { continue };
        match mask.take() {
            Some(pick) => {
                let row = if t.name.ends_with(".mlp.gate_proj.weight") { &g.gate_row } else { &g.up_row };
                let row = Tensor::from_vec(row.clone(), (1, row.len()), w0.device())?.to_dtype(w0.dtype())?;
                var.set(&(w0.broadcast_mul(&(pick.ones_like()? - &pick)?)? + pick.broadcast_mul(&row)?)?)?;
                *mask = Some(pick.zeros_like()?);
            }
            None => var.set(&w0.neg()?)?,
        }
    }
    let groups: Vec<Vec<usize>> = match p.mode {
        BatchMode::Joint => vec![(0..prepared.len()).collect()],
        BatchMode::Sequential => (0..prepared.len()).map(|i| vec![i]).collect(),
    };
    let total_steps = groups.len() * p.steps;
    let mut log = Vec::new();
    let mut done = 0;
    // `cases_per_step`: where the next step's cases start, and each case's NLL (the larger of its safe and
    // recovery replies') and greedy opening from the last step that trained it, which the stop reads.
    let mut case_cursor = 0usize;
    let mut seen_nll = vec![f64::INFINITY; prepared.len()];
    let mut seen_open = vec![false; prepared.len()];
    // Steps that trained each case: with a few cases per step, case i takes its recovery depths in turn
    // from its own visits (offset by i), since the global step would give it the same depth every round.
    let mut visits = vec![0usize; prepared.len()];
    // Where the cursors and visit counts stood when the last update's step began: a taken-back update is
    // retried on the same cases and retain prompts, not skipped past them.
    let mut turn_before_update: Option<Turn> = None;
    'groups: for group in &groups {
        for step in 0..p.steps {
            let mut entry = StepLog { step, elapsed_s: t0.elapsed().as_secs_f64(), ..Default::default() };
            let frozen = untracked(&m, &vars, &targets)?;
            if let Some(w) = &watch {
                let r = w.read(&frozen, tok)?;
                let b0 = *benign0.get_or_insert(r.benign_refused);
                entry.watch = Some(r);
                if before_update.is_some() && bound_crossed(&r, b0, p).is_some() {
                    take_back(&vars, before_update.take().expect("checked"))?;
                    if let Some(t) = turn_before_update.take() {
                        (case_cursor, retain_cursor, direction_cursor, visits) = (t.case, t.retain, t.direction, t.visits);
                    }
                    entry.reverted = true;
                    log.push(entry);
                    if backoffs < p.stop_backoff {
                        // Go on from the weights before that step, with half its step size.
                        backoffs += 1;
                        lr_scale *= 0.5;
                        done += 1;
                        continue;
                    }
                    stopped = true;
                    break 'groups;
                }
            }
            let at_start = Turn { case: case_cursor, retain: retain_cursor, direction: direction_cursor, visits: visits.clone() };
            let active: Vec<usize> = next_window(&mut case_cursor, group.len(), p.cases_per_step).into_iter().map(|j| group[j]).collect();
            if active.len() < group.len() {
                entry.trained = active.clone();
            }
            let n = active.len() as f64;
            let lazy_kl = p.quirk_inert_kl && p.kl_weight != 0.0 && !p.always_log_inert_kl;
            // The loss is a mean over cases (and retain prompts), so its gradient is the sum of each
            // term's: each term is back-propagated as soon as it is computed, and only one term's graph
            // (activations and full-vocabulary logits) is alive at a time. The price: the step on which an
            // early stop fires has back-propagated too (one wasted backward per edit).
            let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
            for &i in &active {
                let turn = if active.len() < group.len() { visits[i] + i } else { step };
                visits[i] += 1;
                let (l, s) = case_loss(&m, &frozen, &prepared[i], method, p, lazy_kl, turn)?;
                // With the recovery term, the NLL stop waits for the refusal after the compliant opening too.
                seen_nll[i] = s.nll_safe.max(s.nll_recover);
                seen_open[i] = s.greedy_opening || method == Method::Ga;
                entry.loss += s.loss / n;
                entry.nll_safe += s.nll_safe / n;
                entry.kl += s.kl / n;
                entry.unlikelihood += s.unlikelihood / n;
                entry.nll_unsafe += s.nll_unsafe / n;
                entry.nll_recover += s.nll_recover / n;
                backprop(&(l / n)?, &vars, &mut grads)?;
            }
            // The retain KL and the benign refusal hinge read the same benign prompts each step.
            let n_benign = retain_seqs.len().max(refusal_seqs.len());
            let window = if n_benign > 0 { next_window(&mut retain_cursor, n_benign, p.retain_per_step) } else { vec![] };
            if !refusal_seqs.is_empty() {
                let mut bv = 0f64;
                for &j in &window {
                    let per = &refusal_seqs[j];
                    let share = 1.0 / (window.len() * per.len()) as f64;
                    for (seq, lp0) in per {
                        let h = (labels_logprob(&m, seq)? - (lp0 - p.benign_refusal_margin + HINGE_SLACK))?.relu()?;
                        let v = scalar(&h)?;
                        if !v.is_finite() {
                            return Err(Error::NonFinite(format!(
                                "the benign refusal hinge is {v} (try a smaller lr); nothing was written"
                            )));
                        }
                        if v > 0.0 {
                            bv += v * share;
                            backprop(&(h * (p.benign_refusal_weight * share))?, &vars, &mut grads)?;
                        }
                    }
                }
                entry.benign_refusal = bv;
                entry.loss += p.benign_refusal_weight * bv;
            }
            if !retain_seqs.is_empty() {
                let k = window.len();
                let mut rv = 0f64;
                for &j in &window {
                    let (seq, base) = &retain_seqs[j];
                    let r = kl(&m, seq, base)?;
                    let v = scalar(&r)?;
                    if !v.is_finite() {
                        return Err(Error::NonFinite(format!("the retain KL is {v} (try a smaller lr); nothing was written")));
                    }
                    rv += v / k as f64;
                    backprop(&(r * (p.retain_weight / k as f64))?, &vars, &mut grads)?;
                }
                entry.retain_kl = rv;
                entry.loss += p.retain_weight * rv;
            }
            // Every case of the group as last trained (with all cases per step: this step's values).
            let max_nll = group.iter().filter(|&&i| counted[i]).map(|&i| seen_nll[i]).fold(0f64, f64::max);
            let all_open = group.iter().filter(|&&i| counted[i]).all(|&i| seen_open[i]);
            if let Some(d) = &direction {
                let w = p.direction_weight;
                let mut dv = 0f64;
                for &i in &active {
                    let (ids, res) = &d.harmful[i];
                    let proj = projection(&last_token_state(&m, ids, res, d.layer)?, &d.r)?;
                    let short = ((proj * -1.0)? + d.target)?.relu()?;
                    let term = (short / d.gap)?.sqr()?;
                    dv += scalar(&term)? / n;
                    backprop(&(term * (w / n))?, &vars, &mut grads)?;
                }
                let window = next_window(&mut direction_cursor, d.benign.len(), p.retain_per_step);
                let k = window.len();
                for j in window {
                    let ((ids, res), p0) = &d.benign[j];
                    let proj = projection(&last_token_state(&m, ids, res, d.layer)?, &d.r)?;
                    let term = ((proj - *p0)? / d.gap)?.sqr()?;
                    dv += scalar(&term)? / k as f64;
                    backprop(&(term * (w / k as f64))?, &vars, &mut grads)?;
                }
                if !dv.is_finite() {
                    return Err(Error::NonFinite(format!("the direction term is {dv} (try a smaller lr); nothing was written")));
                }
                entry.direction = dv;
                entry.loss += w * dv;
            }
            if lazy_kl && entry.loss < p.early_stop_loss + 1e-6 {
                // The inert KL (>= 0, no gradient) could decide the early stop: add its value now.
                let mut kl_sum = 0.0;
                for &i in &active {
                    if let Some((seq, base)) = &prepared[i].loc {
                        kl_sum += scalar(&kl(&frozen, seq, base)?)? / n;
                    }
                }
                entry.kl = kl_sum;
                entry.loss += p.kl_weight * kl_sum;
            }
            if p.mode == BatchMode::Sequential {
                entry.case = Some(prepared[group[0]].id.clone());
            }
            done += 1;
            progress(done, total_steps, &entry);
            entry.greedy_opening = all_open;
            let mut taken = p.stop_nll > 0.0 && method != Method::Ga && max_nll < p.stop_nll && all_open && step >= p.min_steps;
            // With the held-out probes, the refusal must also have spread beyond the cases (read only here,
            // where it decides).
            if let (Some(w), Some(r), true) = (&watch, entry.watch.as_mut(), taken) {
                let h = w.harmful_refused(&frozen, tok)?;
                r.harmful_refused = Some(h);
                taken = h >= p.stop_probe_share - 1e-9;
            }
            // The loss is this step's cases' alone: under `cases_per_step` it ends the edit only once every
            // case has been read.
            let stop = (entry.loss < p.early_stop_loss && max_nll.is_finite()) || taken;
            entry.stopped = stop;
            log.push(entry);
            if stop {
                stopped = p.mode == BatchMode::Joint;
                break;
            }
            if watch.is_some() {
                before_update = Some(vars.iter().map(|(_, var, ..)| var.as_tensor().copy()).collect::<candle_core::Result<_>>()?);
                turn_before_update = Some(at_start);
            }
            let lr = lr_scale * if p.warmup_steps > 0 { p.lr * ((step + 1) as f64 / p.warmup_steps as f64).min(1.0) } else { p.lr };
            for (((name, var, w0, mask, adam, range), g), wr) in vars.iter_mut().zip(&grads).zip(&writes) {
                let g = g.as_ref().ok_or_else(|| Error::Input(format!("no gradient reached `{name}`")))?;
                let now = var.as_tensor().detach();
                // `write_refusal`: a gradient read along the direction (r^T G), an update written along it (r u).
                let read = |c: Tensor| -> Result<Tensor> {
                    Ok(match wr {
                        Some(r) => r.t()?.matmul(&c)?,
                        None => c,
                    })
                };
                let write = |u: Tensor| -> Result<Tensor> {
                    Ok(match wr {
                        Some(r) => r.matmul(&u)?,
                        None => u,
                    })
                };
                match (projectors.iter().find(|pr| &pr.name == name), &*mask) {
                    // Adam in the free basis's coordinates: the change stays in the free directions exactly,
                    // and its per-coordinate scaling acts on those directions, not on single weights.
                    (Some(pr), Some(_)) => {
                        let u = adam.update(&read(pr.coordinates(g)?)?)?;
                        var.set(&pr.step(&now, &write(u)?, lr)?)?;
                    }
                    (Some(pr), None) => {
                        let u = adam.update(&read(pr.column_coordinates(g)?)?)?;
                        var.set(&(now + pr.column_step(&write(u)?, lr)?)?)?;
                    }
                    (None, mask) if wr.is_some() => {
                        let g = match mask {
                            Some(m) => g.broadcast_mul(m)?,
                            None => g.clone(),
                        };
                        let u = adam.update(&read(g)?)?;
                        var.set(&(now - (write(u)? * lr)?)?)?;
                    }
                    (None, Some(mask)) => adam.step(var, &g.broadcast_mul(mask)?, lr)?,
                    (None, None) => adam.step(var, g, lr)?,
                }
                if p.norm_constraint > 0.0 {
                    // A column delta is the change itself; a whole weight is kept within w0 +- c.
                    let (c, now) = (p.norm_constraint, var.as_tensor().detach());
                    var.set(&if mask.is_some() { now.clamp(&(&*w0 - c)?, &(&*w0 + c)?)? } else { now.clamp(-c, c)? })?;
                }
                if let Some((lo, hi)) = range {
                    let now = var.as_tensor().detach();
                    var.set(&now.clamp(&*lo, &*hi)?)?;
                }
                let w = var.as_tensor();
                if !w.abs()?.max_all()?.to_scalar::<f32>()?.is_finite() {
                    return Err(Error::NonFinite(format!("`{name}` became non-finite (try a smaller lr); nothing was written")));
                }
            }
        }
    }
    if let (Some(w), false) = (&watch, stopped) {
        // The last update ran out of steps without a reading: read it, and take it back if it went too far.
        let r = w.read(&untracked(&m, &vars, &targets)?, tok)?;
        if let (Some(prev), Some(b0)) = (before_update.take(), benign0) {
            if bound_crossed(&r, b0, p).is_some() {
                take_back(&vars, prev)?;
                log.push(StepLog { step: p.steps, watch: Some(r), reverted: true, ..Default::default() });
            }
        }
    }
    let mut tensors = Vec::new();
    for ((name, var, w0, mask, ..), t) in vars.iter().zip(&targets) {
        let now = var.as_tensor().detach();
        tensors.push(match mask {
            Some(_) => TensorDelta::between(name, w0, &now, &t.index, t.axis)?,
            None => TensorDelta { name: name.clone(), columns: t.index.clone(), axis: 1, before: w0.clone(), after: (w0 + now)? },
        });
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("method".into(), method.to_string());
    metadata.insert("hparams".into(), serde_json::to_string(p)?);
    metadata.insert(
        "hotspots".into(),
        serde_json::to_string(&hotspots.chosen_layers.iter().map(|l| (l, hotspots.neuron_indices(*l))).collect::<Vec<_>>())?,
    );
    let gates: Vec<gate::GateSummary> = gates.into_iter().map(|g| g.summary).collect();
    if !gates.is_empty() {
        // The neurons that changed are the gates', not the located hotspots.
        let edited: Vec<(usize, Option<Vec<usize>>)> = gates.iter().map(|g| (g.layer, Some(vec![g.neuron]))).collect();
        metadata.insert("hotspots".into(), serde_json::to_string(&edited)?);
        metadata.insert("intent_gate".into(), serde_json::to_string(&gates)?);
        if let Some(scan) = &layer_scan {
            metadata.insert("intent_gate_scan".into(), serde_json::to_string(scan)?);
        }
        // The cases and held-out harmful requests the stop waited for, of those it holds.
        for (key, k) in gate_stop {
            metadata.insert(key.into(), k);
        }
    }
    metadata.insert("n_cases".into(), cases.len().to_string());
    if !twins.is_empty() {
        metadata.insert("twin_cases".into(), twins.len().to_string());
    }
    if !write_seps.is_empty() {
        // Per layer written along: the harmful / harmless separation along the direction and its length.
        metadata.insert("write_refusal".into(), serde_json::to_string(&write_seps)?);
    }
    if p.retain_weight > 0.0 || p.benign_refusal_weight > 0.0 || p.preserve_energy > 0.0 || !twins.is_empty() {
        metadata.insert(
            "retain".into(),
            match retain {
                Some(r) => format!("user retain set, {} prompts ({} with a reply)", r.len(), n_replies),
                None => format!("{} ({} prompts)", crate::data::probes::BUILTIN_RETAIN, retain_set.len()),
            },
        );
    }
    let preserve: Vec<_> = projectors.into_iter().map(|pr| pr.summary).collect();
    if !preserve.is_empty() {
        metadata.insert("preserve".into(), serde_json::to_string(&preserve)?);
    }
    metadata.insert("pke_version".into(), env!("CARGO_PKG_VERSION").into());
    Ok(EditOutcome {
        delta: WeightDelta { tensors, metadata },
        log,
        seconds: t0.elapsed().as_secs_f64(),
        setup_seconds,
        preserve,
        gates,
        layers: hotspots.chosen_layers.clone(),
        layer_scan,
    })
}

#[cfg(test)]
mod tests {
    use super::{describe_stop, next_window, watch::Reading, EditParams, Method, StepLog};

    #[test]
    fn describe_stop_names_what_ended_the_edit_and_what_was_taken_back() {
        let p =
            EditParams::resolve(Method::Pke, None, &["steps=5".into(), "stop_drift=0.01".into(), "stop_benign_rise=0.1".into()]).unwrap();
        let read =
            |drift: f64, benign: f64, harmful: Option<f64>| Some(Reading { harmful_refused: harmful, benign_refused: benign, drift });
        let step = |step: usize, watch, reverted| StepLog { step, watch, reverted, ..Default::default() };
        // The NLL stop after two updates, the probes read where it held.
        let nll =
            [step(0, read(0.0, 0.2, None), false), step(1, read(0.002, 0.2, None), false), step(2, read(0.004, 0.2, Some(1.0)), false)];
        assert_eq!(describe_stop(&nll, &p), "3 steps kept, ended by the NLL stop (held-out harmful requests refused 1.00)");
        // A drifting update taken back and retried (backoff), then a benign rise that ends it.
        let bound = [
            step(0, read(0.0, 0.2, None), false),
            step(1, read(0.02, 0.2, None), true),
            step(2, read(0.0, 0.2, None), false),
            step(3, read(0.005, 0.4, None), true),
        ];
        let d = describe_stop(&bound, &p);
        assert!(d.starts_with("2 steps kept, ended by a held-out bound; taken back before step 1: prose drift 0.0200 > 0.01"), "{d}");
        assert!(d.ends_with("before step 3: benign refusals 0.200 -> 0.400, rise > 0.1"), "{d}");
        // Every step run: the cap.
        let cap: Vec<StepLog> = (0..5).map(|i| step(i, None, false)).collect();
        assert_eq!(describe_stop(&cap, &p), "5 steps kept, ended by the step cap");
        assert_eq!(describe_stop(&cap[..2], &p), "2 steps kept, ended by the NLL / loss stop");
        // The NLL stop on the last allowed step is the stop, not the cap.
        let mut last = cap.clone();
        last[4] = StepLog { stopped: true, ..step(4, read(0.004, 0.2, Some(0.9)), false) };
        assert_eq!(describe_stop(&last, &p), "5 steps kept, ended by the NLL stop (held-out harmful requests refused 0.90)");
    }

    #[test]
    fn next_window_cycles_in_turn_and_takes_all_when_asked() {
        let mut c = 0;
        let w: Vec<Vec<usize>> = (0..4).map(|_| next_window(&mut c, 3, 2)).collect();
        assert_eq!(w, vec![vec![0, 1], vec![2, 0], vec![1, 2], vec![0, 1]]);
        // 0 or more than there are: every index, in order, the cursor staying where it was.
        let mut c = 0;
        assert_eq!((next_window(&mut c, 3, 0), next_window(&mut c, 3, 5), c), (vec![0, 1, 2], vec![0, 1, 2], 0));
        let mut c = 0;
        assert!(next_window(&mut c, 0, 4).is_empty());
    }
}
