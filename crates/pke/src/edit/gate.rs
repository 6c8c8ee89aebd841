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
//! The read is fitted without an intercept (the layer has no bias); the normed input's near-constant
//! part plays that role. The fit's shares above the threshold are reported and recorded in the delta.

use candle_core::{DType, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use super::watch::{wrap, PROBE_WRAPPERS};
use super::{encode_prompts, passage_ids, prose_ids, EditParams, EditTarget, Probe};
use crate::eval::harm::sigmoid;
use crate::io::tokenizer::Tok;
use crate::locate::intent::dot;
use crate::model::decoder::down_proj_name;
use crate::model::{Decoder, Input};
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// Iterations of the read's fit (Adam on the logistic loss, standardized inputs).
const FIT_STEPS: usize = 600;
const FIT_LR: f64 = 0.02;

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
        )
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
/// the framing. Prints each fit's summary.
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
    p: &EditParams,
) -> Result<(Vec<Gate>, Vec<EditTarget>)> {
    let twins_left: Vec<String> = retain.iter().filter_map(|x| x.harmful.clone()).skip(twins_taken).collect();
    harmful.extend(encode_prompts(tok, &twins_left, chat, "retain harmful twin")?);
    let mut benign_ids = encode_prompts(tok, benign, chat, "retain prompt")?;
    if p.intent_gate_wrap {
        let half = PROBE_WRAPPERS.len() / 2;
        let wrap = |texts: &[String]| -> Vec<String> {
            texts.iter().enumerate().flat_map(|(i, t)| [i, i + half].map(|k| wrap(t.trim(), k))).collect()
        };
        let harmful_texts: Vec<String> = case_prompts.iter().cloned().chain(twins_left).collect();
        harmful.extend(encode_prompts(tok, &wrap(&harmful_texts), chat, "wrapped harmful prompt")?);
        benign_ids.extend(encode_prompts(tok, &wrap(benign), chat, "wrapped retain prompt")?);
    }
    let ctx = model.spec.max_position_embeddings;
    let prose = prose_ids(tok, p.intent_gate_prose, ctx)?;
    // Held-out prose for the summary only: the drift watch's passages (from the back).
    let passages = crate::data::sets::prose_passages()?;
    let heldout: Vec<Vec<u32>> = passage_ids(tok, passages.iter().rev(), ctx).take(4).collect::<Result<_>>()?;
    let mut gates = Vec::new();
    for &l in layers {
        let g = fit(model, &harmful, &benign_ids, &prose, &heldout, l, p)?;
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

/// The MLP input at `layer` (every position) and the layer's MLP activation, for one sequence.
fn capture(model: &Decoder, ids: &[u32], layer: usize) -> Result<(Tensor, Tensor)> {
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
pub(crate) fn fit(
    model: &Decoder,
    harmful: &[Vec<u32>],
    benign: &[Vec<u32>],
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
    // Rows: harmful last tokens, benign last tokens, every other benign / prose position.
    let mut pos_rows: Vec<Vec<f32>> = Vec::new();
    let mut last_rows: Vec<Vec<f32>> = Vec::new();
    let mut other_rows: Vec<Vec<f32>> = Vec::new();
    for ids in harmful {
        let (x, _) = capture(model, ids, layer)?;
        pos_rows.push(x.get(ids.len() - 1)?.to_vec1::<f32>()?);
    }
    let mut use_sum = vec![0f64; f];
    let mut use_n = 0usize;
    for (k, ids) in benign.iter().chain(prose).enumerate() {
        let (x, a) = capture(model, ids, layer)?;
        let rows = x.to_vec2::<f32>()?;
        for (t, r) in rows.into_iter().enumerate() {
            if k < benign.len() && t + 1 == ids.len() {
                last_rows.push(r);
            } else {
                other_rows.push(r);
            }
        }
        for (s, v) in use_sum.iter_mut().zip(a.abs()?.sum(0)?.to_vec1::<f32>()?) {
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

    let fitted = fit_read(&pos_rows, &last_rows, &other_rows, l2, positions_weight);
    let (lp, lb, lo) = (&fitted.harmful, &fitted.benign, &fitted.positions);
    if !lp.iter().chain(lb).chain(lo).all(|v| v.is_finite()) {
        return Err(Error::NonFinite("the intent gate's read is not finite; nothing was written".into()));
    }
    let w = fitted.w;
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
    let mut held = Vec::new();
    for ids in heldout {
        let (x, _) = capture(model, ids, layer)?;
        for r in x.to_vec2::<f32>()? {
            held.push(dot(&w, &r));
        }
    }
    let share = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().filter(|x| **x > 0.0).count() as f64 / v.len() as f64 };
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
        positions_leak: mean_act(lo),
        heldout_leak: mean_act(&held),
        heldout_fire: share(&held),
    };
    Ok(Gate { summary, gate_row: w.iter().map(|a| (a * scale) as f32).collect(), up_row: w.iter().map(|a| (a / median) as f32).collect() })
}

/// A read fitted by [`fit_read`]: its weights on the raw inputs and its logits on the three groups.
pub(crate) struct FittedRead {
    pub w: Vec<f64>,
    pub harmful: Vec<f64>,
    pub benign: Vec<f64>,
    pub positions: Vec<f64>,
}

/// A logistic read without intercept of `pos` (label 1) against `last` and `other` (label 0), the first two
/// groups weighing 1 in all and `other` `positions_weight`, L2 penalty `l2` on the standardized weights: each input coordinate is
/// scaled by its RMS over every row (not centred: the read has no intercept). Adam, `FIT_STEPS` steps.
pub(crate) fn fit_read(pos: &[Vec<f32>], last: &[Vec<f32>], other: &[Vec<f32>], l2: f64, positions_weight: f64) -> FittedRead {
    let d = pos.first().or(last.first()).map_or(0, |r| r.len());
    let all = || pos.iter().chain(last).chain(other);
    let n_all = (pos.len() + last.len() + other.len()).max(1) as f64;
    let mut rms = vec![0f64; d];
    for r in all() {
        for (s, v) in rms.iter_mut().zip(r) {
            *s += (*v as f64).powi(2);
        }
    }
    for s in rms.iter_mut() {
        *s = (*s / n_all).sqrt().max(1e-6);
    }
    let standard =
        |rows: &[Vec<f32>]| -> Vec<Vec<f64>> { rows.iter().map(|r| r.iter().zip(&rms).map(|(x, s)| *x as f64 / s).collect()).collect() };
    let groups = [(standard(pos), 1.0, 1.0), (standard(last), 0.0, 1.0), (standard(other), 0.0, positions_weight)];
    let logit = |w: &[f64], r: &[f64]| -> f64 { w.iter().zip(r).map(|(a, b)| a * b).sum() };
    let mut w = vec![0f64; d];
    let (mut m1, mut m2) = (vec![0f64; d], vec![0f64; d]);
    let (b1, b2) = (0.9f64, 0.999f64);
    for step in 1..=FIT_STEPS {
        let mut g: Vec<f64> = w.iter().map(|a| l2 * a).collect();
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
    let read = |rows: &[Vec<f64>]| -> Vec<f64> { rows.iter().map(|r| logit(&w, r)).collect() };
    let (harmful, benign, positions) = (read(&groups[0].0), read(&groups[1].0), read(&groups[2].0));
    FittedRead { w: w.iter().zip(&rms).map(|(a, s)| a / s).collect(), harmful, benign, positions }
}

fn silu(x: f64) -> f64 {
    x * sigmoid(x)
}

#[cfg(test)]
mod tests {
    use super::fit_read;

    /// Coordinate 0 is a near-constant offset (the normed input's common part), coordinate 1 carries the
    /// intent with a threshold away from zero, coordinate 2 is noise: the read must learn the threshold
    /// through the offset, since it has no intercept.
    #[test]
    fn the_read_learns_a_threshold_through_the_constant_part() {
        let mut state = 7u64;
        let mut noise = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) as f32
        };
        let mut rows =
            |n: usize, lo: f32| -> Vec<Vec<f32>> { (0..n).map(|_| vec![5.0 + 0.1 * noise(), lo + noise(), 3.0 * noise()]).collect() };
        // Harmful at 4 +- 0.5, benign prompts at 2 +- 0.5, other positions at 1 +- 0.5: all positive, so a
        // read through the origin along coordinate 1 alone cannot separate them.
        let (pos, last, other) = (rows(30, 4.0), rows(30, 2.0), rows(200, 1.0));
        let f = fit_read(&pos, &last, &other, 1e-3, 1.0);
        let share = |v: &[f64]| v.iter().filter(|x| **x > 0.0).count() as f64 / v.len() as f64;
        assert!(share(&f.harmful) >= 0.95, "{:?}", f.harmful);
        assert!(share(&f.benign) <= 0.05 && share(&f.positions) <= 0.01, "{:?}", f.benign);
        // The offset carries the threshold with the opposite sign of the intent coordinate.
        assert!(f.w[1] > 0.0 && f.w[0] < 0.0, "{:?}", f.w);
        // The noise coordinate weighs little against the intent.
        assert!(f.w[2].abs() * 3.0 < f.w[1].abs(), "{:?}", f.w);
        // Logits are the read of the raw inputs.
        let raw: f64 = f.w.iter().zip(&pos[0]).map(|(a, x)| a * *x as f64).sum();
        assert!((raw - f.harmful[0]).abs() < 1e-9);
    }
}
