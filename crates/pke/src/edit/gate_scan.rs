//! Which layer should the intent gate read at? (`intent_gate_scan`)
//!
//! The gate's read sits at the located layer unless told otherwise, and fitted on its own training data
//! every candidate layer's read looks alike (93-100% of the harmful training prompts fire, a few percent of
//! the benign ones). Measured on validation prompts, the layers differ a lot (docs/validation.md, "The gate
//! at layer 14": on SmolLM2 layer 14's read opens on 86% of the framed requests against layer 11's 56%, and on
//! half as many benign look-alikes). What tells them apart is how the read *generalizes*, so the scan scores
//! each candidate layer's read on training-side prompts it was not fitted on:
//! - the retain pairs are split in two folds (by index parity); the read is fitted, as the edit fits it, on
//!   the cases and one fold's harmful twins against that fold's benign prompts, their positions and book
//!   prose, then scored on the other fold (both ways round): the held-out twins should open the gate and
//!   the held-out benign look-alikes should not;
//! - harmful requests that are neither cases nor evaluation prompts (the project's 64 harm-category
//!   requests, everyday wording), plain and inside the project's own framings ([`PROBE_WRAPPERS`], one each
//!   in turn), should open it; the locality instructions, plain and framed the same way, and held-out book
//!   prose (the drift watch's passages) should not.
//!
//! "Open" is the gated stop's rule ([`opens`]: the neuron's activation at least half the median case's at
//! `intent_gate_z`). A layer's score is the mean open share of the three harmful groups minus the mean
//! open share of the four benign ones (a Youden-like J); the best score wins, ties going to the layer
//! nearest the located one. The evaluation sets are never read. All candidate layers are captured in one
//! forward pass per sequence; the fits (two per layer) run in parallel.
//!
//! `intent_gate_reply` and `intent_gate_prefill` shape the edit's own fit but not the scan's (it reads the
//! prompts' last tokens, where the gate decides first).

use candle_core::{DType, IndexOp};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::gate::{fit_read, opens, read_noise};
use super::watch::wrap;
use super::{encode_prompts, passage_ids, prose_ids, EditParams};
use crate::data::probes::Probe;
use crate::io::tokenizer::Tok;
use crate::locate::intent::dot;
use crate::model::{Decoder, Input};
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// How one candidate layer's read generalizes: open shares on prompts it was not fitted on.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerReach {
    pub layer: usize,
    /// Harmful: the held-out fold's retain twins, the harm-category requests plain and framed.
    pub twins: f64,
    pub requests: f64,
    pub framed: f64,
    /// Benign: the held-out fold's look-alikes, the locality instructions plain and framed, held-out prose
    /// positions.
    pub lookalikes: f64,
    pub locality: f64,
    pub locality_framed: f64,
    pub prose: f64,
    /// Mean harmful open share minus mean benign open share.
    pub score: f64,
}

/// The scan's result: every candidate's reach and the chosen layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerScan {
    pub located: usize,
    pub chosen: usize,
    pub layers: Vec<LayerReach>,
}

impl LayerScan {
    /// A markdown table, one row per candidate, the chosen one in bold.
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| layer | score | twins | requests | framed | look-alikes | locality | locality framed | prose |\n|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in &self.layers {
            let mark = match (r.layer == self.chosen, r.layer == self.located) {
                (true, true) => " (chosen, located)",
                (true, false) => " (chosen)",
                (false, true) => " (located)",
                _ => "",
            };
            s += &format!(
                "| {}{mark} | {:.3} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.2} | {:.4} |\n",
                r.layer, r.score, r.twins, r.requests, r.framed, r.lookalikes, r.locality, r.locality_framed, r.prose
            );
        }
        s
    }
}

/// The candidate layers for a model of `n` layers: the middle half, from n/4 to 3n/4.
pub fn candidates(n: usize) -> Vec<usize> {
    (n / 4..=(3 * n / 4).min(n.saturating_sub(1))).collect()
}

/// The MLP input at the last token of each of `seqs`, at every layer of `layers` (one forward each):
/// [layer][sequence].
fn last_rows(model: &Decoder, seqs: &[Vec<u32>], layers: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
    let mut last = vec![Vec::with_capacity(seqs.len()); layers.len()];
    for ids in seqs {
        let cap = forward(model, ids, layers)?;
        for (k, &l) in layers.iter().enumerate() {
            last[k].push(get(&cap, l)?.get(ids.len() - 1)?.to_vec1::<f32>()?);
        }
    }
    Ok(last)
}

fn refs(v: &[Vec<f32>]) -> Vec<&Vec<f32>> {
    v.iter().collect()
}

fn forward(model: &Decoder, ids: &[u32], layers: &[usize]) -> Result<Capture> {
    let mut cap = Capture::new(layers.iter().map(|&l| Site::MlpIn(l)));
    cap.stop = layers.iter().max().copied();
    model.forward_with(&Input::single(ids), &mut cap, None)?;
    Ok(cap)
}

fn get(cap: &Capture, layer: usize) -> Result<candle_core::Tensor> {
    let t = cap.get(Site::MlpIn(layer)).ok_or_else(|| Error::Input(format!("intent gate scan: nothing captured at layer {layer}")))?;
    Ok(t.i(0)?.to_dtype(DType::F32)?)
}

/// Every position of each of `seqs` at every layer, split into (last tokens, other positions) when
/// `split_last`, else all in the second.
fn all_rows(model: &Decoder, seqs: &[Vec<u32>], layers: &[usize], split_last: bool) -> Result<Vec<[Vec<Vec<f32>>; 2]>> {
    let mut out: Vec<[Vec<Vec<f32>>; 2]> = (0..layers.len()).map(|_| [Vec::new(), Vec::new()]).collect();
    for ids in seqs {
        let cap = forward(model, ids, layers)?;
        for (k, &l) in layers.iter().enumerate() {
            for (t, r) in get(&cap, l)?.to_vec2::<f32>()?.into_iter().enumerate() {
                out[k][usize::from(!(split_last && t + 1 == ids.len()))].push(r);
            }
        }
    }
    Ok(out)
}

/// Score every layer of `layers` (see the module's doc) and choose one. `harmful`: the cases' prompt ids as
/// the edit encodes them (`case_prompts` their texts, left out of the held-out requests); `retain`: the
/// retain pairs after those already taken as cases (each with a harmful twin; at least 4 are needed for two
/// folds); `located`: the layer ties lean to.
#[allow(clippy::too_many_arguments)]
pub fn scan(
    model: &Decoder,
    tok: &Tok,
    chat: bool,
    harmful: &[Vec<u32>],
    case_prompts: &[String],
    retain: &[Probe],
    layers: &[usize],
    located: usize,
    p: &EditParams,
) -> Result<LayerScan> {
    let pairs: Vec<(String, String)> = retain.iter().filter_map(|x| x.harmful.clone().map(|h| (x.benign.clone(), h))).collect();
    if pairs.len() < 4 || layers.is_empty() {
        return Err(Error::Input(format!(
            "intent_gate_scan cross-fits the read on two folds of the retain set's pairs with a harmful twin: it needs at least 4 (got {}) and a candidate layer (got {})",
            pairs.len(),
            layers.len()
        )));
    }
    let ctx = model.spec.max_position_embeddings;
    let (benign_txt, twin_txt): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
    let twins = encode_prompts(tok, &twin_txt, chat, "retain harmful twin")?;
    let benign = encode_prompts(tok, &benign_txt, chat, "retain prompt")?;
    let requests: Vec<String> = crate::data::sets::harm_category_prompts()
        .into_iter()
        .map(|x| x.0)
        .filter(|q| !case_prompts.contains(q) && !twin_txt.contains(q))
        .collect();
    let locality: Vec<String> = crate::data::sets::benign_pairs()?.into_iter().map(|(o, _)| o).collect();
    let framed = |v: &[String]| -> Vec<String> { v.iter().enumerate().map(|(i, t)| wrap(t.trim(), i)).collect() };
    let held_harmful = [
        encode_prompts(tok, &requests, chat, "harm-category request")?,
        encode_prompts(tok, &framed(&requests), chat, "framed harm-category request")?,
    ];
    let held_benign = [
        encode_prompts(tok, &locality, chat, "locality instruction")?,
        encode_prompts(tok, &framed(&locality), chat, "framed locality instruction")?,
    ];
    let prose = prose_ids(tok, p.intent_gate_prose, ctx)?;
    let passages = crate::data::sets::prose_passages()?;
    let heldout: Vec<Vec<u32>> = passage_ids(tok, passages.iter().rev(), ctx).take(4).collect::<Result<_>>()?;

    // One forward per sequence, every candidate layer captured.
    let cases = last_rows(model, harmful, layers)?;
    let twin_rows = last_rows(model, &twins, layers)?;
    let benign_rows = all_rows(model, &benign, layers, true)?;
    let prose_rows = all_rows(model, &prose, layers, false)?;
    let held_rows = all_rows(model, &heldout, layers, false)?;
    let hh = [last_rows(model, &held_harmful[0], layers)?, last_rows(model, &held_harmful[1], layers)?];
    let hb = [last_rows(model, &held_benign[0], layers)?, last_rows(model, &held_benign[1], layers)?];
    // Which benign prompt each "other" position came from, so a fold leaves out the held-out prompts' positions.
    let owner: Vec<usize> = benign.iter().enumerate().flat_map(|(i, ids)| std::iter::repeat_n(i, ids.len() - 1)).collect();

    let z_median = p.intent_gate_z;
    let share_open = |w: &[f64], scale: f64, rows: &[&Vec<f32>]| -> f64 {
        if rows.is_empty() {
            return 0.0;
        }
        rows.iter().filter(|r| opens(scale * dot(w, r), z_median)).count() as f64 / rows.len() as f64
    };
    let fits: Vec<(usize, usize)> = (0..layers.len()).flat_map(|k| [(k, 0), (k, 1)]).collect();
    // Per (layer, fold): open shares [twins, requests, framed, look-alikes, locality, locality framed, prose]
    // and how many held-out twins / look-alikes each fold scored (the folds differ by one at odd counts).
    let scored: Vec<Result<[f64; 7]>> = fits
        .par_iter()
        .map(|&(k, fold)| {
            let fitted = |i: &usize| i % 2 == fold;
            let pos: Vec<Vec<f32>> =
                cases[k].iter().cloned().chain(twin_rows[k].iter().enumerate().filter(|(i, _)| fitted(i)).map(|x| x.1.clone())).collect();
            let last: Vec<Vec<f32>> = benign_rows[k][0].iter().enumerate().filter(|(i, _)| fitted(i)).map(|x| x.1.clone()).collect();
            let other: Vec<Vec<f32>> = benign_rows[k][1]
                .iter()
                .zip(&owner)
                .filter(|(_, o)| fitted(o))
                .map(|x| x.0.clone())
                .chain(prose_rows[k][1].iter().cloned())
                .collect();
            let groups = [(&pos[..], 1.0, 1.0), (&last[..], 0.0, 1.0), (&other[..], 0.0, p.intent_gate_positions)];
            let noise = read_noise(&groups, p.intent_gate_rounding);
            let (w, logits) = fit_read(&groups, p.intent_gate_l2, &noise);
            let mut lp = logits[0].clone();
            lp.sort_by(f64::total_cmp);
            let median = lp[lp.len() / 2];
            if !(median > 0.0 && median.is_finite()) {
                // A read that does not fire on its own median case opens nowhere: score it so.
                return Ok([0.0; 7]);
            }
            let scale = z_median / median;
            let out = |i: &usize| i % 2 != fold;
            let held_twins: Vec<&Vec<f32>> = twin_rows[k].iter().enumerate().filter(|(i, _)| out(i)).map(|x| x.1).collect();
            let held_look: Vec<&Vec<f32>> = benign_rows[k][0].iter().enumerate().filter(|(i, _)| out(i)).map(|x| x.1).collect();
            Ok([
                share_open(&w, scale, &held_twins),
                share_open(&w, scale, &refs(&hh[0][k])),
                share_open(&w, scale, &refs(&hh[1][k])),
                share_open(&w, scale, &held_look),
                share_open(&w, scale, &refs(&hb[0][k])),
                share_open(&w, scale, &refs(&hb[1][k])),
                share_open(&w, scale, &refs(&held_rows[k][1])),
            ])
        })
        .collect();
    let scored: Vec<[f64; 7]> = scored.into_iter().collect::<Result<_>>()?;
    let mut out = Vec::new();
    for (k, &layer) in layers.iter().enumerate() {
        let m: Vec<f64> = (0..7).map(|j| (scored[2 * k][j] + scored[2 * k + 1][j]) / 2.0).collect();
        let score = (m[0] + m[1] + m[2]) / 3.0 - (m[3] + m[4] + m[5] + m[6]) / 4.0;
        out.push(LayerReach {
            layer,
            twins: m[0],
            requests: m[1],
            framed: m[2],
            lookalikes: m[3],
            locality: m[4],
            locality_framed: m[5],
            prose: m[6],
            score,
        });
    }
    let chosen = out
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score).then_with(|| b.layer.abs_diff(located).cmp(&a.layer.abs_diff(located))))
        .map(|r| r.layer)
        .expect("at least one candidate layer");
    Ok(LayerScan { located, chosen, layers: out })
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn candidates_are_the_middle_half() {
        assert_eq!(candidates(30), (7..=22).collect::<Vec<_>>());
        assert_eq!(candidates(24), (6..=18).collect::<Vec<_>>());
        assert_eq!(candidates(1), vec![0]);
    }
}
