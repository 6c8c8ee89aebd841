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
//! The best layer replaces the located one only when it wins by more than `intent_gate_scan_z` standard
//! errors of the score's difference ([`paired_se`]: the same prompts read at both layers, each prompt's
//! open value the mean over the folds that held it out; the groups' paired variances weighted as the score
//! weighs them). A few dozen prompts per group make a difference of a few points noise: on Qwen the scan's
//! best layer, 12, won by 0.021 and answered more validation requests than the located 11
//! (docs/validation.md, "The gate's layer chosen by a scan, ...").
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
    /// The best-scoring layer, and the standard error of its score's difference to the located layer's
    /// ([`paired_se`]; absent when the best is the located layer or the located layer was no candidate).
    /// `chosen` is the best only where it wins by more than `z` standard errors.
    #[serde(default)]
    pub best: usize,
    #[serde(default)]
    pub se: Option<f64>,
    #[serde(default)]
    pub z: f64,
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
        if let Some(se) = self.se {
            let best = self.layers.iter().find(|r| r.layer == self.best).map_or(f64::NAN, |r| r.score);
            let loc = self.layers.iter().find(|r| r.layer == self.located).map_or(f64::NAN, |r| r.score);
            s += &format!(
                "\nbest layer {} against the located {}: {:+.3} (standard error {:.3}, {:.1} SE; needed: more than {})\n",
                self.best,
                self.located,
                best - loc,
                se,
                (best - loc) / se,
                self.z
            );
        }
        s
    }
}

/// Per prompt (or prose position) of each of the seven groups, its open value at one layer: the mean over
/// the folds that scored it (the retain twins and look-alikes are scored by one fold, the rest by both).
type Items = [Vec<f64>; 7];

/// The group weights of the score: +1/3 for each harmful group, -1/4 for each benign one.
const WEIGHTS: [f64; 7] = [1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, -0.25, -0.25, -0.25, -0.25];

/// The standard error of the score difference between two layers read on the same prompts: each group's
/// paired differences' variance over its count, weighted by the square of the group's weight in the score.
pub fn paired_se(a: &Items, b: &Items) -> f64 {
    let mut var = 0.0;
    for g in 0..7 {
        let d: Vec<f64> = a[g].iter().zip(&b[g]).map(|(x, y)| x - y).collect();
        let n = d.len();
        if n < 2 {
            continue;
        }
        let mean = d.iter().sum::<f64>() / n as f64;
        let v = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        var += WEIGHTS[g].powi(2) * v / n as f64;
    }
    var.sqrt()
}

/// The scan's decision: the best-scoring layer (ties to the one nearest `located`), kept only where it beats
/// the located layer by more than `z` paired standard errors (`z` = 0: the best, always).
fn decide(reach: &[LayerReach], items: &[Items], located: usize, z: f64) -> (usize, usize, Option<f64>) {
    let best = reach
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score).then_with(|| b.layer.abs_diff(located).cmp(&a.layer.abs_diff(located))))
        .map(|r| r.layer)
        .expect("at least one candidate layer");
    let (Some(kb), Some(kl)) = (reach.iter().position(|r| r.layer == best), reach.iter().position(|r| r.layer == located)) else {
        return (best, best, None);
    };
    if kb == kl {
        return (best, best, None);
    }
    let se = paired_se(&items[kb], &items[kl]);
    let wins = reach[kb].score - reach[kl].score > z * se;
    (if wins || z <= 0.0 { best } else { located }, best, Some(se))
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
    // Each row's open value (1 or 0); NaN for the rows of `all` the fold fitted on (`held` false).
    let open_values = |w: &[f64], scale: f64, rows: &[Vec<f32>], held: &dyn Fn(usize) -> bool| -> Vec<f64> {
        rows.iter()
            .enumerate()
            .map(|(i, r)| if held(i) { f64::from(u8::from(opens(scale * dot(w, r), z_median))) } else { f64::NAN })
            .collect()
    };
    let fits: Vec<(usize, usize)> = (0..layers.len()).flat_map(|k| [(k, 0), (k, 1)]).collect();
    // Per (layer, fold): every row's open value in [twins, requests, framed, look-alikes, locality, locality
    // framed, prose], NaN where the fold fitted on it (the folds differ by one at odd counts).
    let scored: Vec<Result<Items>> = fits
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
            // A read that does not fire on its own median case opens nowhere: score it so (scale 0 opens
            // nothing).
            let scale = if median > 0.0 && median.is_finite() { z_median / median } else { 0.0 };
            let out = |i: usize| i % 2 != fold;
            let all = |_: usize| true;
            Ok([
                open_values(&w, scale, &twin_rows[k], &out),
                open_values(&w, scale, &hh[0][k], &all),
                open_values(&w, scale, &hh[1][k], &all),
                open_values(&w, scale, &benign_rows[k][0], &out),
                open_values(&w, scale, &hb[0][k], &all),
                open_values(&w, scale, &hb[1][k], &all),
                open_values(&w, scale, &held_rows[k][1], &all),
            ])
        })
        .collect();
    let scored: Vec<Items> = scored.into_iter().collect::<Result<_>>()?;
    // A fold's open share of a group: the mean over the rows it scored (0 where it scored none).
    let share = |v: &[f64]| -> f64 {
        let held: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
        if held.is_empty() {
            0.0
        } else {
            held.iter().sum::<f64>() / held.len() as f64
        }
    };
    let mut out = Vec::new();
    let mut items: Vec<Items> = Vec::new();
    for (k, &layer) in layers.iter().enumerate() {
        let m: Vec<f64> = (0..7).map(|j| (share(&scored[2 * k][j]) + share(&scored[2 * k + 1][j])) / 2.0).collect();
        // Each row's value over the folds that scored it, for the paired standard error.
        items.push(std::array::from_fn(|j| {
            scored[2 * k][j]
                .iter()
                .zip(&scored[2 * k + 1][j])
                .map(|(a, b)| match (a.is_nan(), b.is_nan()) {
                    (false, false) => (a + b) / 2.0,
                    (false, true) => *a,
                    (true, false) => *b,
                    (true, true) => 0.0,
                })
                .collect()
        }));
        // The score weighs the groups as the paired error does (one table of weights for both).
        let score: f64 = m.iter().zip(WEIGHTS).map(|(v, w)| v * w).sum();
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
    let (chosen, best, se) = decide(&out, &items, located, p.intent_gate_scan_z);
    Ok(LayerScan { located, chosen, layers: out, best, se, z: p.intent_gate_scan_z })
}

#[cfg(test)]
mod tests {
    use super::{candidates, decide, paired_se, Items, LayerReach};

    fn reach(layer: usize, score: f64) -> LayerReach {
        LayerReach {
            layer,
            twins: 0.0,
            requests: 0.0,
            framed: 0.0,
            lookalikes: 0.0,
            locality: 0.0,
            locality_framed: 0.0,
            prose: 0.0,
            score,
        }
    }

    /// Seven groups of `n` rows: the harmful ones open on the first `h` rows, the benign ones on the first `b`.
    fn items(n: usize, h: usize, b: usize) -> Items {
        std::array::from_fn(|g| (0..n).map(|i| f64::from(u8::from(i < if g < 3 { h } else { b }))).collect())
    }

    #[test]
    fn the_paired_error_weighs_each_group_as_the_score_does() {
        // Identical reads: no difference, no error.
        assert_eq!(paired_se(&items(10, 4, 1), &items(10, 4, 1)), 0.0);
        // One harmful group differs on 2 of 10 rows (d = 1, 1, 0 x 8): variance 0.1778, over 10, times 1/9.
        let a = items(10, 4, 1);
        let mut b = a.clone();
        b[1][0] = 0.0;
        b[1][1] = 0.0;
        let want = ((8.0f64 * 0.2f64.powi(2) + 2.0 * 0.8f64.powi(2)) / 9.0 / 10.0 / 9.0).sqrt();
        assert!((paired_se(&a, &b) - want).abs() < 1e-12, "{} vs {want}", paired_se(&a, &b));
    }

    #[test]
    fn the_best_layer_replaces_the_located_one_only_by_a_clear_margin() {
        // Layer 12 leads layer 11 by 0.02 with a paired error of ~0.05: the located 11 stays; at z = 0 the best wins.
        let r = [reach(11, 0.58), reach(12, 0.60), reach(13, 0.40)];
        let mut near = items(40, 20, 2);
        near[0][20] = 1.0;
        near[1][0] = 0.0;
        near[1][21] = 1.0;
        near[3][5] = 1.0;
        let its = [items(40, 20, 2), near, items(40, 10, 2)];
        let (chosen, best, se) = decide(&r, &its, 11, 2.0);
        assert_eq!((chosen, best), (11, 12));
        let se = se.unwrap();
        assert!(se > 0.01 && 0.02 < 2.0 * se, "{se}");
        assert_eq!(decide(&r, &its, 11, 0.0).0, 12);
        // A lead many times its error: the best layer is chosen.
        let r = [reach(11, 0.40), reach(14, 0.60)];
        let its = [items(40, 20, 8), items(40, 30, 1)];
        let (chosen, best, se) = decide(&r, &its, 11, 2.0);
        assert_eq!((chosen, best), (14, 14));
        assert!(0.2 > 2.0 * se.unwrap());
        // The located layer best, or no candidate: no comparison.
        assert_eq!(decide(&r, &its, 14, 2.0), (14, 14, None));
        assert_eq!(decide(&r, &its, 9, 2.0), (14, 14, None));
    }

    #[test]
    fn candidates_are_the_middle_half() {
        assert_eq!(candidates(30), (7..=22).collect::<Vec<_>>());
        assert_eq!(candidates(24), (6..=18).collect::<Vec<_>>());
        assert_eq!(candidates(1), vec![0]);
    }
}
