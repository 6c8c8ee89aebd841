//! The intent gate (`intent_gate`): a refusal written only where a read of intent fires.
//!
//! Every other pke edit changes what existing neurons write (`down_proj` columns), so it adds its output
//! wherever those neurons fire, in proportion: a benign question on a sensitive subject that fires them
//! half as much gets half the added refusal, and the questions that sit near the model's own refusal
//! boundary tip over (docs/validation.md, "How near the refusal boundary the over-refused questions
//! sit"). The signal that tells such questions from harmful requests is present at the edited layer
//! (a linear read of the MLP's input separates them, docs/data/intent-qwen-subjects.md), but a linear
//! write cannot threshold it.
//!
//! The gate gives the edit that threshold with the MLP's own non-linearity. One neuron of the edited
//! layer, the one whose output is least used on benign text, is repurposed (T-Patcher's patch neuron,
//! Huang et al. 2023, without growing the layer so the checkpoint keeps its shape):
//! - its `gate_proj` row becomes a logistic read of intent fitted on training data alone (the edit
//!   cases' and the retain set's harmful twins' last prompt token against the retain set's benign
//!   prompts' last token, every position of those prompts and of held-out book prose), scaled so the
//!   median case reads `intent_gate_z`; SiLU then passes it where it is positive and all but closes it
//!   below;
//! - its `up_proj` row is the same read over the median case's value, so the neuron's activation is
//!   SiLU(z) z / z_median: positive where it fires, small either side of zero;
//! - its `down_proj` column starts at zero and is the only weight trained: the edit learns what to write
//!   (the refusal) and the gate decides where.
//!
//! With `intent_gate_end` (chat prompts) the `up_proj` row is not the read again but a read of the prompt's
//! end: ridge least squares to the read's value over the median case's at every training prompt's last token
//! and along the cases' refusals after the harmful ones (teacher-forced), where the read fires; zero at
//! every other prompt position and on prose. The neuron's activation SiLU(z) x up then is the plain gate's
//! where a prompt ends and small where the read fires elsewhere: on Macbeth's first 4,096 tokens, at
//! the 42 where SmolLM2's layer-14 read opens, the plain gate's neuron reaches 2.1 times its activation at the
//! median case, the end-read neuron 0.56 (`examples/gate_reach`).
//!
//! The read is fitted without an intercept (the layer has no bias); the normed input's near-constant
//! part plays that role. The fit's shares above the threshold are reported and recorded in the delta.
//!
//! With `intent_gate_reply` the read is also fitted to stay open along a refusal of a harmful request
//! (teacher-forced safe replies after the harmful prompts: positives) and closed along the same words after
//! a benign prompt (negatives): the gate then writes along the refusal, not only at the token that starts
//! it (more weakly: the reply positions read lower than the last prompt token, and the scale stays set there).
//!
//! A quantized model computes the read from rounded numbers: llama.cpp's and pke's int8 kernels round the
//! MLP input to 8 bits per block of 32 values on the block's largest value, and a quantized `gate_proj` row
//! is rounded per block on the row's. Fitted on standardized inputs alone, the read carries its threshold
//! on an input coordinate that is nearly constant and small (SmolLM2's layer 11: a raw weight of 7,450 where
//! the row's others are below 31), and both roundings of that one product move the gate's pre-activation by
//! several units: re-quantized to Q4_1, a gated edit refused 9 of 21 look-alikes its float edit refused none
//! of. With `intent_gate_rounding` the fit also pays for the variance the input's rounding adds to the read
//! (each coordinate's weight squared times its block's rounding variance), so the threshold moves to
//! coordinates that rounding leaves nearly intact. The summary reports how the read fires when computed as
//! a Q4_1 model's kernels compute it.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::watch::{wrap, PROBE_WRAPPERS};
use super::{encode_prompts, passage_ids, prose_ids, EditParams, EditTarget, Probe};
use crate::eval::harm::sigmoid;
use crate::io::tokenizer::Tok;
use crate::locate::intent::dot;
use crate::model::decoder::down_proj_name;
use crate::model::int8::round_q8_0;
use crate::model::{Decoder, Input};
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// Iterations of the read's fit (Adam on the logistic loss, standardized inputs).
const FIT_STEPS: usize = 600;
const FIT_LR: f64 = 0.02;

/// `intent_gate_end`: the end read's ridge penalty on standardized inputs (1e-3 and 1e-5 fit SmolLM2's
/// layer 14 alike: the solve is well posed; the read's own `intent_gate_l2` is a logistic fit's).
const END_L2: f64 = 1e-3;

/// The type the summary's quantized read rounds the gate row to (then to Q8_0, as pke's int8 kernel
/// repacks it): a common 4-bit type whose blocks (32 values) fit every supported model's hidden size.
const QUANT_READ_TYPE: GgmlDType = GgmlDType::Q4_1;

/// `intent_gate_prefill`: the compliant openings the read is also fitted after (`{}` is the request, its first
/// letter lowered and its closing punctuation dropped), one per prompt in turn, after harmful and benign
/// prompts alike. None opens with the prefill attack's own "Sure, here is", so the attack measures transfer.
pub const GATE_OPENINGS: [&str; 4] = [
    "Certainly! Here is how to {}. Step 1:",
    "Of course. To {}, you first",
    "Absolutely, here are detailed instructions to {}:",
    "No problem! The best way to {} is",
];

/// `intent_gate_stop`: a held-out request counts as one the gate opens on when the gate neuron's
/// activation at its last token is at least this share of the median case's.
pub const STOP_OPEN_SHARE: f64 = 0.5;

/// `intent_gate_extra`: after the harm-category requests, the read's extra harmful requests are AdvBench's
/// from this index (the edit cases come from the front, the held-out stop's probes from index 100, the
/// refusal direction's from the back).
pub const EXTRA_FROM: usize = 200;
/// At most this many extra requests, so the refusal direction keeps AdvBench's last 64.
pub const EXTRA_MAX: usize = 256;

/// `intent_gate_extra`: `n` harmful requests that are not edit cases, the built-in harm-category requests
/// (64, everyday wording in eight categories) first, then AdvBench's from [`EXTRA_FROM`]; and the built-in
/// locality instructions (benign).
pub(crate) fn extra_prompts(n: usize, case_prompts: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    if n > EXTRA_MAX {
        return Err(Error::Input(format!(
            "intent_gate_extra = {n}: at most {EXTRA_MAX} (the 64 harm-category requests, then AdvBench from index {EXTRA_FROM}, its last 64 left to the refusal direction)"
        )));
    }
    let adv = crate::data::sets::advbench()?;
    let cats: Vec<String> = crate::data::sets::harm_category_prompts().into_iter().map(|x| x.0).collect();
    let harmful: Vec<String> =
        cats.iter().chain(adv.iter().skip(EXTRA_FROM)).filter(|q| !case_prompts.contains(q)).take(n).cloned().collect();
    let benign = crate::data::sets::benign_pairs()?.into_iter().map(|(o, _)| o).collect();
    Ok((harmful, benign))
}

/// What the gate was fitted to and how it reads its training data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GateSummary {
    pub layer: usize,
    /// The repurposed neuron (its row of `gate_proj`/`up_proj`, column of `down_proj`).
    pub neuron: usize,
    /// The neuron's mean output norm on the benign sequences before it was repurposed, and the layer's
    /// median neuron's: what repurposing it costs.
    pub use_before: f64,
    pub use_median: f64,
    /// Training prompts and positions the read was fitted on.
    pub n_harmful: usize,
    pub n_benign: usize,
    pub n_positions: usize,
    /// Shares above the gate's threshold (z > 0): the harmful prompts' last token, the benign prompts'
    /// last token, every benign position.
    pub harmful_fire: f64,
    pub benign_fire: f64,
    pub positions_fire: f64,
    /// The read's scale: z = scale x logit.
    pub scale: f64,
    /// The neuron's mean activation on every benign position (fitted on) and on held-out prose (the
    /// passages the drift watch reads, not fitted on), as a share of its activation at the median case;
    /// and the share of held-out prose positions where the gate fires.
    pub positions_leak: f64,
    pub heldout_leak: f64,
    pub heldout_fire: f64,
    /// With `intent_gate_reply`: how the read fires along the replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyRead>,
    /// With `intent_gate_prefill`: how the read fires along compliant openings ([`GATE_OPENINGS`]) after
    /// harmful prompts (fitted to fire) and after benign ones (fitted to stay closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<ReplyRead>,
    /// The read as a quantized model computes it: the gate row rounded to Q4_1 and then Q8_0, the input to
    /// Q8_0 blocks. None where the hidden size is not a multiple of 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantRead>,
    /// With `intent_gate_end`: how the `up_proj` row's read of the prompt's end reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<EndRead>,
}

/// The `up_proj` row's read of the prompt's end (`intent_gate_end`): fitted to be the gate's read over the
/// median case's at the training prompts' last tokens (and the cases' refusal positions) where the read fires,
/// and zero at the prompts' other positions and on prose.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndRead {
    /// Its mean value at the harmful training prompts' last token (the plain gate's: the mean of z / z_median).
    pub cases: f64,
    /// Its RMS at every other position fitted on (prompts' inner tokens, book prose) and on held-out prose.
    pub positions_rms: f64,
    pub heldout_rms: f64,
    /// Positions fitted as ends: prompts' last tokens and refusal positions where the read fires.
    #[serde(default)]
    pub n_ends: usize,
    #[serde(default)]
    pub n_reply_ends: usize,
}

/// How the gate's read fires when a quantized model computes it (see [`GateSummary::quantized`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuantRead {
    /// Shares above the threshold: harmful prompts' last token, benign prompts' last token, every benign
    /// position, held-out prose.
    pub harmful_fire: f64,
    pub benign_fire: f64,
    pub positions_fire: f64,
    pub heldout_fire: f64,
    /// The RMS change of the pre-activation z at the prompts' last tokens (the median case reads
    /// `intent_gate_z`, recorded beside it).
    pub z_shift: f64,
    pub z_median: f64,
}

/// How the gate reads the reply positions (`intent_gate_reply`): of the harmful prompts followed by a safe
/// reply (fitted to fire) and of the benign prompts followed by the same replies (fitted to stay closed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplyRead {
    /// Shares above the threshold.
    pub fire: f64,
    pub benign_fire: f64,
    /// The neuron's mean activation there, as a share of its activation at the median case.
    pub act: f64,
    pub benign_act: f64,
}

impl ReplyRead {
    /// "; along {along} it fires on ..% of the {positions} after harmful prompts and ..% after benign ones ...".
    fn describe(&self, along: &str, positions: &str) -> String {
        format!(
            "; along {along} it fires on {:.0}% of the {positions} after harmful prompts and {:.1}% after benign ones (mean activation {:.3} and {:.4} of the median case's)",
            100.0 * self.fire,
            100.0 * self.benign_fire,
            self.act,
            self.benign_act
        )
    }

    /// From the logits after harmful prompts and after benign ones.
    fn of(harmful: &[f64], benign: &[f64], act: impl Fn(&[f64]) -> f64) -> Self {
        ReplyRead { fire: share(harmful), benign_fire: share(benign), act: act(harmful), benign_act: act(benign) }
    }
}

impl GateSummary {
    pub fn describe(&self) -> String {
        format!(
            "intent gate: neuron {} of layer {} repurposed (its benign output {:.3} against the layer's median {:.3}); the read, fitted on {} harmful and {} benign prompts and {} benign positions, fires on {:.0}% of the harmful, {:.0}% of the benign prompts and {:.1}% of the benign positions",
            self.neuron,
            self.layer,
            self.use_before,
            self.use_median,
            self.n_harmful,
            self.n_benign,
            self.n_positions,
            100.0 * self.harmful_fire,
            100.0 * self.benign_fire,
            100.0 * self.positions_fire
        ) + &format!(
            "; mean activation on benign positions {:.4} and on held-out prose {:.4} of the median case's (fires on {:.1}% of held-out prose positions)",
            self.positions_leak,
            self.heldout_leak,
            100.0 * self.heldout_fire
        ) + &self.reply.as_ref().map_or(String::new(), |r| r.describe("the refusal", "reply positions"))
            + &self.prefill.as_ref().map_or(String::new(), |r| r.describe("a compliant opening", "positions"))
            + &match &self.quantized {
            Some(q) => format!(
                "; computed as a Q4_1 model's int8 kernels compute it, it fires on {:.0}% of the harmful, {:.0}% of the benign prompts, {:.1}% of the benign positions and {:.1}% of held-out prose (pre-activation moved by {:.2} RMS, the median case's {:.0})",
                100.0 * q.harmful_fire,
                100.0 * q.benign_fire,
                100.0 * q.positions_fire,
                100.0 * q.heldout_fire,
                q.z_shift,
                q.z_median
            ),
            None => String::new(),
        } + &self.end.as_ref().map_or(String::new(), |e| {
            format!(
                "; its up_proj row reads the prompt's end ({} ends fitted, {} of them along the refusals): {:.2} at the cases' last token on average, RMS {:.3} at the other positions fitted on and {:.3} on held-out prose (the neuron's activation there is computed with it)",
                e.n_ends, e.n_reply_ends, e.cases, e.positions_rms, e.heldout_rms
            )
        })
    }
}

/// A fitted gate: the new rows of the repurposed neuron.
pub(crate) struct Gate {
    pub summary: GateSummary,
    pub gate_row: Vec<f32>,
    pub up_row: Vec<f32>,
}

/// The gates of `layers` and the targets that replace the hotspots' (each gate's `gate_proj` and `up_proj`
/// rows and `down_proj` column). `harmful`: the cases' prompt ids as the edit encodes them (`case_prompts`
/// their texts); the retain set's harmful twins after the first `twins_taken` (already cases) join them;
/// `benign`: the retain set's benign prompts. With `intent_gate_wrap`, both sides also inside the project's
/// own jailbreak framings (two per prompt, in turn), so the read learns the request inside a framing, not
/// the framing. With `intent_gate_extra`, [`extra_prompts`] join both sides (not framed). `replies` (with `intent_gate_reply`: the cases' safe replies as trained; otherwise empty)
/// follow every prompt of both sides, in turn (see [`fit`]). Prints each fit's summary.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit_layers(
    model: &Decoder,
    tok: &Tok,
    chat: bool,
    mut harmful: Vec<Vec<u32>>,
    case_prompts: &[String],
    retain: &[Probe],
    twins_taken: usize,
    benign: &[String],
    layers: &[usize],
    replies: &[Vec<u32>],
    p: &EditParams,
) -> Result<(Vec<Gate>, Vec<EditTarget>)> {
    if p.intent_gate_end && !chat {
        return Err(Error::Input(
            "intent_gate_end reads the end of the prompt where the chat template's generation prompt closes it: use chat prompts (--chat)"
                .into(),
        ));
    }
    if p.intent_gate_end && p.intent_gate_prefill {
        return Err(Error::Input(
            "intent_gate_end keeps the gate neuron silent past the prompt and its refusal; intent_gate_prefill opens it along compliant openings: choose one".into(),
        ));
    }
    let twins_left: Vec<String> = retain.iter().filter_map(|x| x.harmful.clone()).skip(twins_taken).collect();
    harmful.extend(encode_prompts(tok, &twins_left, chat, "retain harmful twin")?);
    let mut benign_ids = encode_prompts(tok, benign, chat, "retain prompt")?;
    if p.intent_gate_wrap {
        let half = PROBE_WRAPPERS.len() / 2;
        let wrap = |texts: &[String]| -> Vec<String> {
            texts.iter().enumerate().flat_map(|(i, t)| [i, i + half].map(|k| wrap(t.trim(), k))).collect()
        };
        let harmful_texts: Vec<String> = case_prompts.iter().chain(&twins_left).cloned().collect();
        harmful.extend(encode_prompts(tok, &wrap(&harmful_texts), chat, "wrapped harmful prompt")?);
        benign_ids.extend(encode_prompts(tok, &wrap(benign), chat, "wrapped retain prompt")?);
    }
    if p.intent_gate_extra > 0 {
        let (h, b) = extra_prompts(p.intent_gate_extra, case_prompts)?;
        harmful.extend(encode_prompts(tok, &h, chat, "extra harmful request")?);
        benign_ids.extend(encode_prompts(tok, &b, chat, "locality instruction")?);
    }
    let ctx = model.spec.max_position_embeddings;
    let prose = prose_ids(tok, p.intent_gate_prose, ctx)?;
    // Held-out prose for the summary only: the drift watch's passages (from the back).
    let passages = crate::data::sets::prose_passages()?;
    let heldout: Vec<Vec<u32>> = passage_ids(tok, passages.iter().rev(), ctx).take(4).collect::<Result<_>>()?;
    let opened = if p.intent_gate_prefill {
        [open_all(tok, chat, case_prompts.iter().chain(&twins_left), ctx)?, open_all(tok, chat, benign, ctx)?]
    } else {
        [Vec::new(), Vec::new()]
    };
    let mut gates = Vec::new();
    for &l in layers {
        let g = fit(model, &harmful, &benign_ids, replies, &opened, &prose, &heldout, l, p)?;
        eprintln!("{}", g.summary.describe());
        gates.push(g);
    }
    let targets = gates
        .iter()
        .flat_map(|g| {
            let (l, j) = (g.summary.layer, g.summary.neuron);
            ["gate_proj", "up_proj"]
                .map(|proj| EditTarget { name: format!("model.layers.{l}.mlp.{proj}.weight"), layer: l, index: vec![j], axis: 0 })
                .into_iter()
                .chain([EditTarget { name: down_proj_name(l), layer: l, index: vec![j], axis: 1 }])
        })
        .collect();
    Ok((gates, targets))
}

/// Each of `texts` as the edit encodes its prompt, followed by one of [`GATE_OPENINGS`] (in turn) as the
/// assistant's reply opening (as the prefill attack opens it: right after the chat template's generation
/// prompt, or after a space without one): the token ids and the prompt's length in them. Past `ctx`: an error.
fn open_all<'a>(tok: &Tok, chat: bool, texts: impl IntoIterator<Item = &'a String>, ctx: usize) -> Result<Vec<(Vec<u32>, usize)>> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.trim();
            let opening = GATE_OPENINGS[i % GATE_OPENINGS.len()].replace("{}", &crate::data::sets::request_clause(t));
            let prompt = crate::io::chat::prompt_text(tok, t, chat, None)?;
            let n = tok.encode(&prompt, !chat)?.len();
            let ids = tok.encode(&format!("{prompt}{}{opening}", if chat { "" } else { " " }), !chat)?;
            if ids.len() > ctx || ids.len() <= n {
                return Err(Error::Input(format!(
                    "intent_gate_prefill: training prompt {} followed by a compliant opening takes {} tokens (the prompt {n}), past the model's context of {ctx} or with no opening left",
                    i + 1,
                    ids.len()
                )));
            }
            Ok((ids, n))
        })
        .collect()
}

/// The MLP input at `layer` (every position) and the layer's MLP activation, for one sequence.
pub fn capture(model: &Decoder, ids: &[u32], layer: usize) -> Result<(Tensor, Tensor)> {
    let mut cap = Capture::new([Site::MlpIn(layer), Site::MlpAct(layer)]);
    cap.stop = Some(layer);
    model.forward_with(&Input::single(ids), &mut cap, None)?;
    let get = |s: Site| -> Result<Tensor> {
        Ok(cap.get(s).ok_or_else(|| Error::Input(format!("intent gate: nothing captured at {s}")))?.i(0)?.to_dtype(DType::F32)?)
    };
    Ok((get(Site::MlpIn(layer))?, get(Site::MlpAct(layer))?))
}

/// Fit the gate of `layer`: `harmful` and `benign` are prompt token ids (the prompt as the edit encodes
/// it; the last token is where the reply is decided), `prose` plain text ids (negatives at every position).
/// When `replies` is not empty, prompt i is followed by reply i (modulo their number), teacher-forced: the
/// positions that predict the reply's second token onward join the harmful side as positives and the
/// benign side as a negative group of their own (weight 1), so the read stays open along a refusal of a
/// harmful request and closed along the same words after a benign one. `opened` (with `intent_gate_prefill`;
/// otherwise empty): the harmful and the benign prompts followed by a compliant opening ([`open_all`]), whose
/// opening positions join as two more groups the same way.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fit(
    model: &Decoder,
    harmful: &[Vec<u32>],
    benign: &[Vec<u32>],
    replies: &[Vec<u32>],
    opened: &[Vec<(Vec<u32>, usize)>; 2],
    prose: &[Vec<u32>],
    heldout: &[Vec<u32>],
    layer: usize,
    p: &EditParams,
) -> Result<Gate> {
    let (z_median, l2, positions_weight) = (p.intent_gate_z, p.intent_gate_l2, p.intent_gate_positions);
    if harmful.len() < 2 || benign.len() < 2 {
        return Err(Error::Input(format!(
            "intent_gate fits a read of intent on at least 2 harmful and 2 benign prompts; got {} and {} (the retain set's benign prompts and harmful twins count)",
            harmful.len(),
            benign.len()
        )));
    }
    let f = model.spec.intermediate_size;
    let ctx = model.spec.max_position_embeddings;
    // Prompt i with reply i (modulo) after it, or alone.
    let followed = |i: usize, ids: &[u32]| -> Result<Vec<u32>> {
        let mut seq = ids.to_vec();
        if !replies.is_empty() {
            seq.extend(&replies[i % replies.len()]);
            if seq.len() > ctx {
                return Err(Error::Input(format!(
                    "intent_gate_reply: a training prompt followed by a safe reply takes {} tokens, past the model's context of {ctx}",
                    seq.len()
                )));
            }
        }
        Ok(seq)
    };
    // Rows: harmful last tokens, benign last tokens, every other benign / prose position; with replies, the
    // reply positions after harmful and after benign prompts.
    let mut pos_rows: Vec<Vec<f32>> = Vec::new();
    let mut last_rows: Vec<Vec<f32>> = Vec::new();
    let mut other_rows: Vec<Vec<f32>> = Vec::new();
    let mut reply_rows: Vec<Vec<f32>> = Vec::new();
    let mut benign_reply_rows: Vec<Vec<f32>> = Vec::new();
    // The positions of a followed prompt that predict its reply's second token onward.
    let reply_span = |ids: &[u32], seq: &[u32]| ids.len()..seq.len() - 1;
    // `intent_gate_end`: the harmful prompts' inner positions, where the end read is fitted to zero.
    let mut inner_rows: Vec<Vec<f32>> = Vec::new();
    for (i, ids) in harmful.iter().enumerate() {
        let seq = followed(i, ids)?;
        let (x, _) = capture(model, &seq, layer)?;
        pos_rows.push(x.get(ids.len() - 1)?.to_vec1::<f32>()?);
        if p.intent_gate_end {
            for t in 0..ids.len() - 1 {
                inner_rows.push(x.get(t)?.to_vec1::<f32>()?);
            }
        }
        for t in reply_span(ids, &seq) {
            reply_rows.push(x.get(t)?.to_vec1::<f32>()?);
        }
    }
    // Compliant openings: every opening position after a harmful prompt (positives) and after a benign one
    // (negatives); `n` is the prompt's length in the opened sequence.
    let mut open_rows: [Vec<Vec<f32>>; 2] = [Vec::new(), Vec::new()];
    for (rows, seqs) in open_rows.iter_mut().zip(opened) {
        for (seq, n) in seqs {
            let (x, _) = capture(model, seq, layer)?;
            for t in *n..seq.len() {
                rows.push(x.get(t)?.to_vec1::<f32>()?);
            }
        }
    }
    let mut use_sum = vec![0f64; f];
    let mut use_n = 0usize;
    for (k, ids) in benign.iter().chain(prose).enumerate() {
        let is_prompt = k < benign.len();
        // Benign prompts are followed by the replies only where the read is fitted along them
        // (`intent_gate_reply`); the end read takes the harmful side's refusals alone.
        let seq = if is_prompt && p.intent_gate_reply { followed(k, ids)? } else { ids.clone() };
        let (x, a) = capture(model, &seq, layer)?;
        let rows = x.to_vec2::<f32>()?;
        for (t, r) in rows.into_iter().enumerate() {
            if t >= ids.len() {
                if reply_span(ids, &seq).contains(&t) {
                    benign_reply_rows.push(r);
                }
            } else if is_prompt && t + 1 == ids.len() {
                last_rows.push(r);
            } else {
                other_rows.push(r);
            }
        }
        // A neuron's use is read on the text alone, not on the replies (the same neuron with or without them).
        for (s, v) in use_sum.iter_mut().zip(a.narrow(0, 0, ids.len())?.abs()?.sum(0)?.to_vec1::<f32>()?) {
            *s += v as f64;
        }
        use_n += ids.len();
    }
    // What each neuron writes on benign text: mean |activation| x the norm of its down_proj column.
    let down = model.get(&down_proj_name(layer))?.to_dtype(DType::F32)?;
    let col_norm = down.sqr()?.sum(0)?.sqrt()?.to_vec1::<f32>()?;
    let uses: Vec<f64> = use_sum.iter().zip(&col_norm).map(|(s, c)| s / use_n.max(1) as f64 * *c as f64).collect();
    let neuron = (0..f).min_by(|&a, &b| uses[a].total_cmp(&uses[b])).expect("an MLP has neurons");
    let mut sorted = uses.clone();
    sorted.sort_by(f64::total_cmp);
    let use_median = sorted[f / 2];

    let mut groups = vec![(&pos_rows[..], 1.0, 1.0), (&last_rows[..], 0.0, 1.0), (&other_rows[..], 0.0, positions_weight)];
    // Where the reply and opening groups sit among the logits.
    let (mut at_reply, mut at_open) = (None, None);
    // The reply positions join the read's fit with `intent_gate_reply`; with `intent_gate_end` alone they are
    // read only for the end read's targets.
    if !replies.is_empty() && p.intent_gate_reply {
        at_reply = Some(groups.len());
        groups.extend([(&reply_rows[..], 1.0, 1.0), (&benign_reply_rows[..], 0.0, 1.0)]);
    }
    if !opened[0].is_empty() {
        at_open = Some(groups.len());
        groups.extend([(&open_rows[0][..], 1.0, 1.0), (&open_rows[1][..], 0.0, 1.0)]);
    }
    // The rounding noise's price: each coordinate's block rounding variance over every row fitted on.
    let noise = read_noise(&groups, p.intent_gate_rounding);
    let (w, logits) = fit_read(&groups, l2, &noise);
    if !logits.iter().flatten().all(|v| v.is_finite()) {
        return Err(Error::NonFinite("the intent gate's read is not finite; nothing was written".into()));
    }
    let (lp, lb, lo) = (&logits[0], &logits[1], &logits[2]);
    // The scale is set at the harmful prompts' last token alone, also with replies: set at the median of the
    // last tokens and reply positions together (which read lower), the same fit on SmolLM2's layer 11 put
    // the neuron's mean activation on held-out prose at 0.37 of that median's, against 0.03.
    let mut sp = lp.clone();
    sp.sort_by(f64::total_cmp);
    let median = sp[sp.len() / 2];
    if median <= 0.0 {
        return Err(Error::Input(format!(
            "intent_gate: the read fitted at layer {layer} does not fire on the median harmful prompt (logit {median:.3}); nothing was written"
        )));
    }
    let scale = z_median / median;
    // The neuron's activation, SiLU(z) z / z_median, over its value at the median case.
    let act = |l: f64| silu(scale * l) * l / median / silu(z_median);
    let mean_act = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().map(|l| act(*l)).sum::<f64>() / v.len() as f64 };
    let mut held_rows = Vec::new();
    for ids in heldout {
        let (x, _) = capture(model, ids, layer)?;
        held_rows.extend(x.to_vec2::<f32>()?);
    }
    let held: Vec<f64> = held_rows.iter().map(|r| dot(&w, r)).collect();
    // `intent_gate_end`: the up_proj row as a read of the prompt's end; the activation on the positions the
    // summary reports is then SiLU(z) times that read, over the median case's SiLU(z_median).
    let end_row = if p.intent_gate_end {
        // The ends where the gate fires (z > 0): where the neuron's activation is SiLU(z) times the end read.
        let ends = |rows: &[Vec<f32>], l: &[f64]| -> (Vec<Vec<f32>>, Vec<f64>) {
            rows.iter().zip(l).filter(|(_, l)| **l > 0.0).map(|(r, l)| (r.clone(), l / median)).unzip()
        };
        let (hr, hy) = ends(&pos_rows, lp);
        let (br, by) = ends(&last_rows, lb);
        // Along the refusal after a harmful prompt the neuron keeps writing where the read fires (the rest
        // of the refusal and its end-of-turn are learned there too): those positions are ends as well.
        let lr: Vec<f64> = reply_rows.iter().map(|r| dot(&w, r)).collect();
        let (rr, ry) = ends(&reply_rows, &lr);
        let u = fit_linear(
            &[
                (&hr, hy, 1.0),
                (&rr, ry, 1.0),
                (&br, by, 1.0),
                (&other_rows, vec![0.0; other_rows.len()], positions_weight),
                (&inner_rows, vec![0.0; inner_rows.len()], 1.0),
            ],
            END_L2,
        );
        if !u.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFinite("the intent gate's end read is not finite; nothing was written".into()));
        }
        Some((u, hr.len() + rr.len() + br.len(), rr.len()))
    } else {
        None
    };
    let (positions_leak, heldout_leak, end) = match &end_row {
        Some((u, n_ends, n_reply_ends)) => {
            let real = |rows: &[Vec<f32>], l: &[f64]| -> f64 {
                let n = rows.len().max(1) as f64;
                rows.iter().zip(l).map(|(r, l)| silu(scale * l) * dot(u, r) / silu(z_median)).sum::<f64>() / n
            };
            let rms = |rows: &[&Vec<f32>]| (rows.iter().map(|r| dot(u, r).powi(2)).sum::<f64>() / rows.len().max(1) as f64).sqrt();
            let cases = pos_rows.iter().map(|r| dot(u, r)).sum::<f64>() / pos_rows.len() as f64;
            (
                real(&other_rows, lo),
                real(&held_rows, &held),
                Some(EndRead {
                    cases,
                    positions_rms: rms(&other_rows.iter().chain(&inner_rows).collect::<Vec<_>>()),
                    heldout_rms: rms(&held_rows.iter().collect::<Vec<_>>()),
                    n_ends: *n_ends,
                    n_reply_ends: *n_reply_ends,
                }),
            )
        }
        None => (mean_act(lo), mean_act(&held), None),
    };
    let gate_row: Vec<f32> = w.iter().map(|a| (a * scale) as f32).collect();
    let quantized =
        quant_read(&gate_row, [&pos_rows, &last_rows, &other_rows], &held_rows, scale, &[lp, lb])?.map(|[h, b, o, held, z_shift]| {
            QuantRead { harmful_fire: h, benign_fire: b, positions_fire: o, heldout_fire: held, z_shift, z_median }
        });
    let summary = GateSummary {
        layer,
        neuron,
        use_before: uses[neuron],
        use_median,
        n_harmful: pos_rows.len(),
        n_benign: last_rows.len(),
        n_positions: other_rows.len(),
        harmful_fire: share(lp),
        benign_fire: share(lb),
        positions_fire: share(lo),
        scale,
        positions_leak,
        heldout_leak,
        heldout_fire: share(&held),
        reply: at_reply.map(|k| ReplyRead::of(&logits[k], &logits[k + 1], mean_act)),
        prefill: at_open.map(|k| ReplyRead::of(&logits[k], &logits[k + 1], mean_act)),
        quantized,
        end,
    };
    let up_row = match end_row {
        Some((u, ..)) => u.iter().map(|a| *a as f32).collect(),
        None => w.iter().map(|a| (a / median) as f32).collect(),
    };
    Ok(Gate { summary, gate_row, up_row })
}

/// `intent_gate_rounding`'s per-coordinate price for [`fit_read`]: `price` times [`rounding_noise`] over every
/// row of `groups`; none (empty) at price 0.
pub(crate) fn read_noise(groups: &[(&[Vec<f32>], f64, f64)], price: f64) -> Vec<f64> {
    if price > 0.0 {
        rounding_noise(groups.iter().flat_map(|(rows, ..)| rows.iter())).into_iter().map(|v| v * price).collect()
    } else {
        Vec::new()
    }
}

/// Per input coordinate, the variance the int8 kernel's rounding of the input adds to it: its 32-block's
/// rounding step (the block's largest magnitude over 127) squared over 12, the mean over `rows`. Zero for
/// a hidden size no kernel takes (not a multiple of 32).
fn rounding_noise<'a>(rows: impl Iterator<Item = &'a Vec<f32>>) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    let mut n = 0usize;
    for r in rows {
        if sum.is_empty() {
            sum = vec![0.0; r.len()];
        }
        if !r.len().is_multiple_of(32) {
            return vec![0.0; r.len()];
        }
        for (s, blk) in sum.chunks_mut(32).zip(r.chunks(32)) {
            let step = blk.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0;
            for v in s.iter_mut() {
                *v += step * step / 12.0;
            }
        }
        n += 1;
    }
    sum.iter().map(|s| s / n.max(1) as f64).collect()
}

/// The gate row's read as a quantized model computes it ([`QUANT_READ_TYPE`], then the int8 kernel's Q8_0
/// for the row and for each input row): the shares above the threshold of each of `groups` and of `held`,
/// and the RMS change of the pre-activation over the first two groups (their float logits in `float`,
/// `scale` from logit to pre-activation). None where the row's length is not a multiple of 32.
fn quant_read(row: &[f32], groups: [&[Vec<f32>]; 3], held: &[Vec<f32>], scale: f64, float: &[&Vec<f64>; 2]) -> Result<Option<[f64; 5]>> {
    if row.is_empty() || !row.len().is_multiple_of(32) {
        return Ok(None);
    }
    let t = Tensor::from_slice(row, (1, row.len()), &Device::Cpu)?;
    let stored = QTensor::quantize(&t, QUANT_READ_TYPE)?.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let wq: Vec<f64> = round_q8_0(&stored).iter().map(|v| *v as f64).collect();
    let z = |rows: &[Vec<f32>]| -> Vec<f64> { rows.iter().map(|r| dot(&wq, &round_q8_0(r))).collect() };
    let (zh, zb) = (z(groups[0]), z(groups[1]));
    let shifts: Vec<f64> =
        zh.iter().zip(float[0].iter()).chain(zb.iter().zip(float[1].iter())).map(|(q, l)| (q - scale * l).powi(2)).collect();
    let z_shift = (shifts.iter().sum::<f64>() / shifts.len().max(1) as f64).sqrt();
    Ok(Some([share(&zh), share(&zb), share(&z(groups[2])), share(&z(held)), z_shift]))
}

/// A logistic read without intercept of groups of rows, each `(rows, label, weight)`: a group weighs
/// `weight` in all (its rows share it), L2 penalty `l2` on the standardized weights: each input coordinate
/// is scaled by its RMS over every row (not centred: the read has no intercept). `noise` (empty = none):
/// per raw input coordinate, a price on its weight squared (`intent_gate_rounding`: the variance rounding
/// adds to the coordinate, so the penalty is the variance rounding adds to the logit). Adam, `FIT_STEPS`
/// steps. Returns the weights on the raw inputs and each group's logits.
pub(crate) fn fit_read(groups: &[(&[Vec<f32>], f64, f64)], l2: f64, noise: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let rms = coordinate_rms(groups.iter().flat_map(|(rows, ..)| rows.iter()));
    let d = rms.len();
    let standard =
        |rows: &[Vec<f32>]| -> Vec<Vec<f64>> { rows.iter().map(|r| r.iter().zip(&rms).map(|(x, s)| *x as f64 / s).collect()).collect() };
    let groups: Vec<(Vec<Vec<f64>>, f64, f64)> = groups.iter().map(|(rows, y, weight)| (standard(rows), *y, *weight)).collect();
    let logit = |w: &[f64], r: &[f64]| -> f64 { w.iter().zip(r).map(|(a, b)| a * b).sum() };
    let mut w = vec![0f64; d];
    let (mut m1, mut m2) = (vec![0f64; d], vec![0f64; d]);
    let (b1, b2) = (0.9f64, 0.999f64);
    for step in 1..=FIT_STEPS {
        // On standardized weights the price of raw weight w/s is noise w^2/s^2.
        let mut g: Vec<f64> =
            w.iter().enumerate().map(|(j, a)| l2 * a + noise.get(j).map_or(0.0, |c| 2.0 * c / (rms[j] * rms[j]) * a)).collect();
        for (rows, y, weight) in &groups {
            let c = weight / rows.len().max(1) as f64;
            for r in rows {
                let e = c * (sigmoid(logit(&w, r)) - y);
                for (gj, x) in g.iter_mut().zip(r) {
                    *gj += e * x;
                }
            }
        }
        for j in 0..d {
            m1[j] = b1 * m1[j] + (1.0 - b1) * g[j];
            m2[j] = b2 * m2[j] + (1.0 - b2) * g[j] * g[j];
            let (mh, vh) = (m1[j] / (1.0 - b1.powi(step as i32)), m2[j] / (1.0 - b2.powi(step as i32)));
            w[j] -= FIT_LR * mh / (vh.sqrt() + 1e-8);
        }
    }
    let logits = groups.iter().map(|(rows, ..)| rows.iter().map(|r| logit(&w, r)).collect()).collect();
    (w.iter().zip(&rms).map(|(a, s)| a / s).collect(), logits)
}

/// Each input coordinate's RMS over `rows` (at least 1e-6): the reads' standardization (not centred, as the
/// reads have no intercept). Empty for no rows.
fn coordinate_rms<'a>(rows: impl Iterator<Item = &'a Vec<f32>>) -> Vec<f64> {
    let (mut sum, mut n) = (Vec::new(), 0usize);
    for r in rows {
        if sum.is_empty() {
            sum = vec![0f64; r.len()];
        }
        for (s, v) in sum.iter_mut().zip(r) {
            *s += (*v as f64).powi(2);
        }
        n += 1;
    }
    sum.iter().map(|s| (s / n.max(1) as f64).sqrt().max(1e-6)).collect()
}

/// Rows, their targets and the group's weight in all, for [`fit_linear`].
pub(crate) type TargetGroup<'a> = (&'a [Vec<f32>], Vec<f64>, f64);

/// Ridge least squares without intercept on groups `(rows, targets, weight)`: a group weighs `weight` in
/// all (its rows share it); inputs standardized by each coordinate's RMS over every row, penalty `l2` on the
/// standardized weights. Solved exactly (normal equations, Cholesky). Returns the weights on the raw inputs.
pub(crate) fn fit_linear(groups: &[TargetGroup], l2: f64) -> Vec<f64> {
    let rms = coordinate_rms(groups.iter().flat_map(|(rows, ..)| rows.iter()));
    let d = rms.len();
    // The lower triangle of X'WX and X'Wy on standardized inputs.
    let mut g = vec![0f64; d * d];
    let mut b = vec![0f64; d];
    let mut x = vec![0f64; d];
    for (rows, y, weight) in groups {
        let c = weight / rows.len().max(1) as f64;
        for (r, t) in rows.iter().zip(y) {
            for ((xj, v), s) in x.iter_mut().zip(r).zip(&rms) {
                *xj = *v as f64 / s;
            }
            for j in 0..d {
                let cx = c * x[j];
                b[j] += cx * t;
                for (gk, xk) in g[j * d..j * d + j + 1].iter_mut().zip(&x[..=j]) {
                    *gk += cx * xk;
                }
            }
        }
    }
    for j in 0..d {
        g[j * d + j] += l2;
    }
    let u = cholesky_solve(&mut g, &b, d);
    u.iter().zip(&rms).map(|(a, s)| a / s).collect()
}

/// Solve A u = b for a symmetric positive definite A given by its lower triangle (row-major, d x d; it is
/// overwritten by its Cholesky factor). A non-positive pivot gives NaNs, which the caller checks.
fn cholesky_solve(a: &mut [f64], b: &[f64], d: usize) -> Vec<f64> {
    for j in 0..d {
        let s: f64 = a[j * d + j] - (0..j).map(|k| a[j * d + k] * a[j * d + k]).sum::<f64>();
        let pivot = if s > 0.0 { s.sqrt() } else { f64::NAN };
        a[j * d + j] = pivot;
        for i in j + 1..d {
            let s: f64 = a[i * d + j] - (0..j).map(|k| a[i * d + k] * a[j * d + k]).sum::<f64>();
            a[i * d + j] = s / pivot;
        }
    }
    // L y = b, then L' u = y.
    let mut y = vec![0f64; d];
    for i in 0..d {
        y[i] = (b[i] - (0..i).map(|k| a[i * d + k] * y[k]).sum::<f64>()) / a[i * d + i];
    }
    let mut u = vec![0f64; d];
    for i in (0..d).rev() {
        u[i] = (y[i] - (i + 1..d).map(|k| a[k * d + i] * u[k]).sum::<f64>()) / a[i * d + i];
    }
    u
}

/// `intent_gate_stop`: which of `prompts` (token ids as the edit encodes them; `what` names them) open any
/// of `gates` at their last token, the gate neuron's activation there at least [`STOP_OPEN_SHARE`] of its
/// activation at the median case (SiLU(z) z / (z_median SiLU(z_median)), `z_median` = `intent_gate_z`),
/// read with the rows as the edit sets them; and "k of n", which is printed. Where none opens (a read fitted
/// on too few prompts, e.g. a small retain file without harmful twins), the stop could never read the edit on
/// them: a warning says so and none is left out (the plain held-out stop), since the gate is the default and
/// its edit still learns the cases.
pub(crate) fn stop_filter(model: &Decoder, gates: &[Gate], prompts: &[Vec<u32>], z_median: f64, what: &str) -> Result<(Vec<bool>, String)> {
    let mut open = vec![false; prompts.len()];
    for g in gates {
        let row: Vec<f64> = g.gate_row.iter().map(|v| *v as f64).collect();
        for (o, ids) in open.iter_mut().zip(prompts) {
            let (x, _) = capture(model, ids, g.summary.layer)?;
            let z = dot(&row, &x.get(ids.len() - 1)?.to_vec1::<f32>()?);
            *o |= opens(z, z_median);
        }
    }
    let kept = open.iter().filter(|o| **o).count();
    if kept == 0 {
        eprintln!(
            "warning: intent gate stop: the gate opens on none of the {} {what}, so the edit is unlikely to refuse them; \
             the stop waits for all of them instead. Fit the read on more prompts (more cases, or a retain set with harmful twins)",
            open.len()
        );
        return Ok((vec![true; open.len()], format!("0 of {} (none left out)", open.len())));
    }
    let k = format!("{kept} of {}", open.len());
    eprintln!("intent gate stop: the gate opens on {k} {what}; the stop waits for those");
    Ok((open, k))
}

/// The share of `v` above zero (the gate's threshold); 0 for none.
fn share(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().filter(|x| **x > 0.0).count() as f64 / v.len() as f64
    }
}

/// The gate neuron's activation at pre-activation `z` as a share of its activation at the median case's
/// `z_median` (SiLU(z) z over the same at `z_median`: the `up_proj` row is the read over `z_median`).
pub fn activation_share(z: f64, z_median: f64) -> f64 {
    silu(z) * z / (z_median * silu(z_median))
}

/// Whether the gate counts as open at pre-activation `z` (its activation at least [`STOP_OPEN_SHARE`] of the
/// median case's): what `intent_gate_stop` waits for.
pub fn opens(z: f64, z_median: f64) -> bool {
    activation_share(z, z_median) >= STOP_OPEN_SHARE
}

/// SiLU, the gate's non-linearity: the neuron's activation at the median case is `silu(z_median)` times its
/// `up_proj` read there (1 for the plain gate's up row over the median case's z).
pub fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

#[cfg(test)]
mod tests {
    use super::{fit_read, rounding_noise, share};

    /// Uniform noise in [-0.5, 0.5), a fixed sequence per seed.
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        }
    }

    /// Coordinate 0 is a near-constant offset (the normed input's common part), coordinate 1 carries the
    /// intent with a threshold away from zero, coordinate 2 is noise: the read must learn the threshold
    /// through the offset, since it has no intercept.
    #[test]
    fn the_read_learns_a_threshold_through_the_constant_part() {
        let mut noise = uniform(7);
        let mut rows =
            |n: usize, lo: f32| -> Vec<Vec<f32>> { (0..n).map(|_| vec![5.0 + 0.1 * noise(), lo + noise(), 3.0 * noise()]).collect() };
        // Harmful at 4 +- 0.5, benign prompts at 2 +- 0.5, other positions at 1 +- 0.5: all positive, so a
        // read through the origin along coordinate 1 alone cannot separate them.
        let (pos, last, other) = (rows(30, 4.0), rows(30, 2.0), rows(200, 1.0));
        let (w, logits) = fit_read(&[(&pos, 1.0, 1.0), (&last, 0.0, 1.0), (&other, 0.0, 1.0)], 1e-3, &[]);
        assert!(share(&logits[0]) >= 0.95, "{:?}", logits[0]);
        assert!(share(&logits[1]) <= 0.05 && share(&logits[2]) <= 0.01, "{:?}", logits[1]);
        // The offset carries the threshold with the opposite sign of the intent coordinate.
        assert!(w[1] > 0.0 && w[0] < 0.0, "{w:?}");
        // The noise coordinate weighs little against the intent.
        assert!(w[2].abs() * 3.0 < w[1].abs(), "{w:?}");
        // Logits are the read of the raw inputs.
        let raw: f64 = w.iter().zip(&pos[0]).map(|(a, x)| a * *x as f64).sum();
        assert!((raw - logits[0][0]).abs() < 1e-9);
    }

    /// Two near-constant coordinates can carry the threshold: a tiny one (0.01, exact) and a large one
    /// (5, +- 0.05). On standardized inputs the fit takes the tiny one, with a raw weight in the hundreds;
    /// priced at a rounding noise alike on every coordinate (`noise`), it moves the threshold to the large
    /// one, and still separates the groups.
    #[test]
    fn a_price_on_rounding_noise_moves_the_threshold_off_a_tiny_coordinate() {
        let mut noise = uniform(11);
        let mut rows = |n: usize, lo: f32| -> Vec<Vec<f32>> { (0..n).map(|_| vec![0.01, 5.0 + 0.1 * noise(), lo + noise()]).collect() };
        let (pos, last, other) = (rows(30, 4.0), rows(30, 2.0), rows(200, 1.0));
        let groups = [(&pos[..], 1.0, 1.0), (&last[..], 0.0, 1.0), (&other[..], 0.0, 1.0)];
        let (w0, _) = fit_read(&groups, 1e-3, &[]);
        let (w1, logits) = fit_read(&groups, 1e-3, &[1e-3; 3]);
        assert!(share(&logits[0]) >= 0.9 && share(&logits[1]) <= 0.1 && share(&logits[2]) <= 0.02, "{w1:?}");
        assert!(w0[0].abs() > 100.0, "unpriced, the tiny coordinate carries the threshold: {w0:?}");
        assert!(w1[0].abs() < 0.1 * w0[0].abs() && (w1[1] * 5.0).abs() > (w1[0] * 0.01).abs(), "{w0:?} -> {w1:?}");
    }

    /// The exact ridge solve recovers a linear target through the standardization (small penalty), weighs
    /// groups as told, and the end-read shape comes out: one value at the rows marked as ends, zero elsewhere.
    #[test]
    fn fit_linear_solves_weighted_ridge_least_squares() {
        let mut noise = uniform(5);
        let rows: Vec<Vec<f32>> = (0..200).map(|_| vec![1.0 + 0.1 * noise(), 10.0 * noise(), 0.01 * noise(), noise()]).collect();
        let truth = [0.5, -0.2, 30.0, 2.0];
        let y: Vec<f64> = rows.iter().map(|r| r.iter().zip(&truth).map(|(x, t)| *x as f64 * t).sum()).collect();
        let u = super::fit_linear(&[(&rows, y, 1.0)], 1e-9);
        for (a, t) in u.iter().zip(&truth) {
            assert!((a - t).abs() < 1e-4 * t.abs().max(1.0), "{u:?}");
        }
        // Two groups with conflicting targets on the same rows: the fit lands at their weighted mean.
        let ones = vec![vec![1.0f32]; 10];
        let u = super::fit_linear(&[(&ones, vec![1.0; 10], 3.0), (&ones, vec![0.0; 10], 1.0)], 0.0);
        assert!((u[0] - 0.75).abs() < 1e-12, "{u:?}");
    }

    /// The openings the read is fitted after hold one request each and none is (or holds) the prefill
    /// attack's own opening, so what the attack measures is transfer.
    #[test]
    fn gate_openings_are_not_the_prefill_attack_s() {
        let attack = crate::eval::report::EvalSettings::default().prefill;
        for o in super::GATE_OPENINGS {
            assert_eq!(o.matches("{}").count(), 1, "{o}");
            assert!(!o.to_lowercase().contains(&attack.to_lowercase()), "{o} holds {attack}");
        }
    }

    /// A coordinate's rounding noise is its block's step (largest magnitude / 127) squared over 12, averaged
    /// over the rows; a length no kernel takes has none.
    #[test]
    fn rounding_noise_follows_each_block_s_largest_value() {
        let mut a = vec![0.1f32; 64];
        a[3] = 12.7;
        let b = vec![0.1f32; 64];
        let v = rounding_noise([&a, &b].into_iter());
        let want = |step: f64| step * step / 12.0;
        assert!((v[0] - (want(0.1) + want(0.1 / 127.0)) / 2.0).abs() < 1e-9 && (v[31] - v[0]).abs() < 1e-12, "{v:?}");
        assert!((v[32] - want(0.1 / 127.0)).abs() < 1e-12, "{v:?}");
        assert_eq!(rounding_noise([&vec![1f32; 40]].into_iter()), vec![0.0; 40]);
    }
}
