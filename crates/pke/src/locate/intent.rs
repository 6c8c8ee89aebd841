//! Where does the model tell a harmful request from its benign look-alike? An edit can refuse by intent
//! only where intent is represented: this map measures, per layer and site, how well one direction (the
//! difference of two means, Arditi et al.'s recipe) tells the look-alike probes' harmful twins from
//! their benign sides, scored on pairs it was not fitted on.
//!
//! Three directions per (site, layer), each scored by the AUC of twin vs benign on the probe pairs and by
//! the paired accuracy (share of pairs whose twin scores above its own benign side):
//! - `cases`: the edit cases' prompts minus the retain set's benign prompts: what an edit made from those
//!   cases can learn to tell apart. A high AUC here means the cases teach intent; a low one while
//!   `probes` is high means they teach something else (their phrasing).
//! - `retain_twins`: the retain set's harmful twins minus its benign sides (disjoint from the probes):
//!   what contrastive training pairs (`twin_cases`) can teach.
//! - `probes`: fitted on half of the probe pairs and scored on the other half, both ways round (a
//!   two-fold cross-fit by pair index): how well one direction at this site can tell intent at all.
//!
//! The activations are read at the last prompt token (with `chat`, the end of the generation prompt),
//! where the first reply token, refusal or answer, is decided. Nothing here changes the model.

use candle_core::{DType, IndexOp};
use serde::{Deserialize, Serialize};

use crate::io::chat::prompt_text;
use crate::io::tokenizer::Tok;
use crate::locate::reads::{self, Read, ReadScore, Roles};
use crate::model::{Decoder, Input};
use crate::trace::{Capture, Site};
use crate::{Error, Result};

/// The sites the map reads, by their TransformerLens-style short names.
pub const SITES: [&str; 3] = ["resid_post", "attn_out", "mlp_post"];

fn site(name: &str, layer: usize) -> Site {
    match name {
        "resid_post" => Site::ResidPost(layer),
        "attn_out" => Site::AttnOut(layer),
        _ => Site::MlpAct(layer),
    }
}

/// One direction's scores on the probe pairs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Separation {
    /// P(a twin scores above a benign side), over all twin/benign combinations (Mann-Whitney).
    pub auc: f64,
    /// Share of pairs whose twin scores above its own benign side.
    pub paired: f64,
    /// Share of twins above the threshold that only 5% of the benign sides exceed: the most a linear
    /// readout of this site can refuse by intent while refusing at most 5% of the look-alikes (the
    /// precision issue's bound on extra over-refusal).
    pub twins_at_5pct: f64,
}

/// One (site, layer) of the map.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IntentRow {
    pub site: String,
    pub layer: usize,
    pub cases: Separation,
    pub retain_twins: Option<Separation>,
    /// The edit cases' direction scored on the retain set's own twin pairs instead of the probes
    /// (cross-fitted: the benign mean it subtracts leaves out the scored fold's benign sides). Training
    /// data only, so a locator may choose by it; None without retain twins.
    #[serde(default)]
    pub cases_on_retain: Option<Separation>,
    pub probes: Separation,
    /// Cosine between the `cases` direction and the `probes` direction fitted on all pairs.
    pub cos_cases_probes: f64,
    /// The difference-of-means and shrinkage-LDA reads of this site and layer, each fitted on the probes
    /// (cross-fit) and on training data, with the harmful requests they catch
    /// ([`crate::locate::reads`]); empty unless asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reads: Vec<Read>,
}

/// The whole map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntentMap {
    pub model: String,
    pub chat: bool,
    /// Which part of the probe set was scored (`validation` unless asked otherwise).
    pub split: String,
    pub n_pairs: usize,
    pub n_cases: usize,
    pub n_retain_benign: usize,
    pub n_retain_twins: usize,
    pub rows: Vec<IntentRow>,
    /// Harmful requests scored against the look-alikes' threshold by the reads (0 without reads).
    #[serde(default)]
    pub n_harmful: usize,
    /// The LDA shrinkage the reads used (x the scatter's mean eigenvalue); None without reads.
    #[serde(default)]
    pub shrink: Option<f64>,
    /// Reads of every site and layer at once ([`crate::locate::reads::joint`]); empty unless asked for.
    #[serde(default)]
    pub reads: Vec<Read>,
}

impl IntentMap {
    /// The row with the highest `probes` AUC at `site`.
    pub fn best(&self, site: &str) -> Option<&IntentRow> {
        self.rows.iter().filter(|r| r.site == site).max_by(|a, b| a.probes.auc.total_cmp(&b.probes.auc))
    }

    /// The layer whose edit cases' direction best tells the retain set's twins from their benign sides at
    /// `site` ([`IntentRow::cases_on_retain`]): where an edit made from these cases would read intent,
    /// chosen on training data alone. None without retain twins.
    pub fn suggested_layer(&self, site: &str) -> Option<&IntentRow> {
        self.rows
            .iter()
            .filter(|r| r.site == site && r.cases_on_retain.is_some())
            .max_by(|a, b| a.cases_on_retain.as_ref().unwrap().auc.total_cmp(&b.cases_on_retain.as_ref().unwrap().auc))
    }

    /// The layer whose shrinkage-LDA read, cross-fitted on the retain set's pairs (training data alone),
    /// tells their twins from their benign sides best at `site` (AUC); None without reads or retain pairs.
    pub fn suggested_lda_layer(&self, site: &str) -> Option<&IntentRow> {
        let key = |r: &IntentRow| r.reads.iter().find(|x| x.name == reads::LDA).and_then(|x| x.retain_cross_fit.as_ref()).map(|x| x.auc);
        self.rows.iter().filter(|r| r.site == site && key(r).is_some()).max_by(|a, b| key(a).unwrap().total_cmp(&key(b).unwrap()))
    }

    /// A markdown table: one line per layer, the three AUCs per site.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "Intent map of {} ({} probe pairs, {} split; {} cases against {} retain prompts, {} retain twins). \
             AUC of harmful twin vs benign look-alike along each direction (0.5 = cannot tell):\n\n",
            self.model, self.n_pairs, self.split, self.n_cases, self.n_retain_benign, self.n_retain_twins
        );
        s.push_str(&self.per_layer_table(&["cases", "retain twins", "probes (cross-fit)"], |r| {
            format!(
                " {:.2} | {} | {:.2} |",
                r.cases.auc,
                r.retain_twins.as_ref().map(|x| format!("{:.2}", x.auc)).unwrap_or_else(|| "-".into()),
                r.probes.auc
            )
        }));
        s.push_str(
            "\nBest layer per site (cross-fit on the probes): AUC, paired accuracy, and the share of twins a linear \
             readout there catches while at most 5% of the look-alikes pass its threshold; the cases' direction at \
             the same layer:\n\n| site | layer | AUC | paired | twins at 5% look-alikes | cases' AUC | cases' twins at 5% | cosine cases/intent |\n|---|---|---|---|---|---|---|---|\n",
        );
        for site in SITES {
            if let Some(r) = self.best(site) {
                s.push_str(&format!(
                    "| {site} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
                    r.layer, r.probes.auc, r.probes.paired, r.probes.twins_at_5pct, r.cases.auc, r.cases.twins_at_5pct, r.cos_cases_probes
                ));
            }
        }
        if self.rows.iter().any(|r| r.cases_on_retain.is_some()) {
            s.push_str(
                "\nThe layer a locator can choose from training data alone: where the cases' direction best tells the \
                 retain set's twins from their benign sides (cross-fit), with the same direction's AUC on the probes:\n\n\
                 | site | suggested layer | AUC on the retain twins | cases' AUC on the probes there | best cases' AUC on the probes (layer) |\n|---|---|---|---|---|\n",
            );
            for site in SITES {
                let (Some(r), Some(top)) = (
                    self.suggested_layer(site),
                    self.rows.iter().filter(|r| r.site == site).max_by(|a, b| a.cases.auc.total_cmp(&b.cases.auc)),
                ) else {
                    continue;
                };
                s.push_str(&format!(
                    "| {site} | {} | {:.2} | {:.2} | {:.2} ({}) |\n",
                    r.layer,
                    r.cases_on_retain.as_ref().map_or(f64::NAN, |x| x.auc),
                    r.cases.auc,
                    top.cases.auc,
                    top.layer
                ));
            }
        }
        if !self.reads.is_empty() {
            s.push_str(&self.reads_markdown());
        }
        s
    }

    /// A table with a line per layer and, per site, the columns `cols` (`{site}: {col}` headers) filled by
    /// `cells` from that site's row (`" - |"` per column where the map has none).
    fn per_layer_table(&self, cols: &[&str], cells: impl Fn(&IntentRow) -> String) -> String {
        let mut s = String::from("| layer |");
        for site in SITES {
            s.push_str(&format!(" {site}: {} |", cols.join(" | ")));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(cols.len() * SITES.len()));
        s.push('\n');
        let layers: std::collections::BTreeSet<usize> = self.rows.iter().map(|r| r.layer).collect();
        for l in layers {
            s.push_str(&format!("| {l} |"));
            for site in SITES {
                match self.rows.iter().find(|r| r.layer == l && r.site == site) {
                    Some(r) => s.push_str(&cells(r)),
                    None => s.push_str(&" - |".repeat(cols.len())),
                }
            }
            s.push('\n');
        }
        s
    }

    /// The reads beyond one direction: per site, the layer whose cross-fit LDA reads the probes best and
    /// the difference of means there, then the joint reads of every site and layer.
    fn reads_markdown(&self) -> String {
        let cell = |r: Option<&ReadScore>| match r {
            Some(r) => format!(
                "{:.2} | {:.2} | {} |",
                r.twins.auc,
                r.twins.twins_at_5pct,
                r.harmful_at_5pct.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
            ),
            None => "- | - | - |".into(),
        };
        let mut s = format!(
            "\nReads beyond one direction (docs/validation.md): each fitted on half the probe pairs and scored on the \
             other half (cross-fit), and on training data alone (the {} cases and {} retain twins against the {} retain \
             prompts) scored on every pair. \"harmful\" = share of {} harmful requests of the same split (HarmBench, \
             StrongREJECT) above the threshold that 95% of the look-alikes stay below. LDA shrinkage {}. The per-site \
             rows take the layer with the best cross-fit LDA AUC (a choice made on the probes).\n\n\
             | read | cross-fit: AUC | twins at 5% | harmful at 5% | training data: AUC | twins at 5% | harmful at 5% |\n\
             |---|---|---|---|---|---|---|\n",
            self.n_cases,
            self.n_retain_twins,
            self.n_retain_benign,
            self.n_harmful,
            self.shrink.map(|x| format!("{x}")).unwrap_or_else(|| "-".into())
        );
        for site in SITES {
            let lda_auc = |r: &IntentRow| r.reads.iter().find(|x| x.name == reads::LDA).map_or(f64::NEG_INFINITY, |x| x.probes.twins.auc);
            let Some(best) = self.rows.iter().filter(|r| r.site == site).max_by(|a, b| lda_auc(a).total_cmp(&lda_auc(b))) else {
                continue;
            };
            for rd in &best.reads {
                s.push_str(&format!(
                    "| {site}, layer {}, {} | {} {}\n",
                    best.layer,
                    rd.name,
                    cell(Some(&rd.probes)),
                    cell(rd.training.as_ref())
                ));
            }
        }
        for rd in &self.reads {
            s.push_str(&format!("| {} | {} {}\n", rd.name, cell(Some(&rd.probes)), cell(rd.training.as_ref())));
        }
        s.push_str(
            "\nThe layer a locator can choose from training data alone by the LDA read: fitted on the cases and half the \
             retain set's pairs and scored on the other half (cross-fit), with the same read fitted on all the training \
             data and scored on the probes there:\n\n\
             | site | suggested layer | retain pairs: AUC | twins at 5% | probes: twins at 5% | harmful at 5% | best layer on the probes (twins at 5%) |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for site in SITES {
            let lda = |r: &IntentRow| r.reads.iter().find(|x| x.name == reads::LDA).cloned();
            let (Some(r), Some(top)) = (
                self.suggested_lda_layer(site),
                self.rows
                    .iter()
                    .filter(|r| r.site == site)
                    .filter_map(|r| lda(r).and_then(|x| x.training).map(|t| (r.layer, t.twins.twins_at_5pct)))
                    .max_by(|a, b| a.1.total_cmp(&b.1)),
            ) else {
                continue;
            };
            let Some(rd) = lda(r) else { continue };
            let Some(rc) = &rd.retain_cross_fit else { continue };
            let t = rd.training.as_ref();
            s.push_str(&format!(
                "| {site} | {} | {:.2} | {:.2} | {} | {} | {} ({:.2}) |\n",
                r.layer,
                rc.auc,
                rc.twins_at_5pct,
                t.map(|t| format!("{:.2}", t.twins.twins_at_5pct)).unwrap_or_else(|| "-".into()),
                t.and_then(|t| t.harmful_at_5pct).map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()),
                top.0,
                top.1
            ));
        }
        s.push_str(
            "\nPer layer: twins caught at 5% look-alikes by the difference of means (DoM) and shrinkage LDA, cross-fit on \
             the probes / fitted on training data:\n\n",
        );
        s.push_str(&self.per_layer_table(&["DoM", "LDA"], |r| {
            [reads::MEAN_DIFF, reads::LDA]
                .iter()
                .map(|name| match r.reads.iter().find(|x| x.name == *name) {
                    Some(rd) => format!(
                        " {:.2} / {} |",
                        rd.probes.twins.twins_at_5pct,
                        rd.training.as_ref().map(|t| format!("{:.2}", t.twins.twins_at_5pct)).unwrap_or_else(|| "-".into())
                    ),
                    None => " - |".into(),
                })
                .collect()
        }));
        s
    }
}

/// Per prompt, per site (in [`SITES`] order), per layer: the activation at the last prompt token.
type Acts = Vec<Vec<Vec<Vec<f32>>>>;

fn activations(model: &Decoder, tok: &Tok, prompts: &[String], chat: bool, progress: &mut dyn FnMut(usize)) -> Result<Acts> {
    let n_layers = model.spec.n_layers;
    let mut out = Vec::with_capacity(prompts.len());
    for p in prompts {
        let ids = tok.encode(&prompt_text(tok, p, chat, None)?, !chat)?;
        if ids.len() > model.spec.max_position_embeddings {
            return Err(Error::ContextOverflow {
                len: ids.len(),
                ctx: model.spec.max_position_embeddings,
                extra: format!(" (intent map prompt `{}`)", p.chars().take(60).collect::<String>()),
            });
        }
        let mut cap = Capture::new(SITES.iter().flat_map(|s| (0..n_layers).map(move |l| site(s, l))));
        model.forward_with(&Input::single(&ids), &mut cap, None)?;
        let mut per_site = Vec::with_capacity(SITES.len());
        for s in SITES {
            let mut per_layer = Vec::with_capacity(n_layers);
            for l in 0..n_layers {
                let x = cap.get(site(s, l)).ok_or_else(|| Error::Input(format!("intent map: nothing captured at {s} of layer {l}")))?;
                per_layer.push(x.i((0, ids.len() - 1))?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            }
            per_site.push(per_layer);
        }
        out.push(per_site);
        progress(1);
    }
    Ok(out)
}

/// One site and layer of every prompt's activations.
fn at(a: &Acts, si: usize, l: usize) -> Vec<&[f32]> {
    a.iter().map(|x| x[si][l].as_slice()).collect()
}

fn mean(rows: &[&[f32]]) -> Vec<f64> {
    let mut m = vec![0f64; rows[0].len()];
    for r in rows {
        for (a, b) in m.iter_mut().zip(r.iter()) {
            *a += *b as f64 / rows.len() as f64;
        }
    }
    m
}

/// mean(pos) - mean(neg): the difference-of-means direction (not normalized), also the refusal direction
/// the ablation attack projects out.
pub(crate) fn direction(pos: &[&[f32]], neg: &[&[f32]]) -> Vec<f64> {
    mean(pos).iter().zip(mean(neg)).map(|(a, b)| a - b).collect()
}

/// A difference-of-means direction with what its users report: `diff` = mean(pos) - mean(neg), its
/// length, the unit direction as float32, and how far apart the two sets lie along that unit direction
/// (difference of the projections' means over their pooled standard deviation).
pub(crate) struct MeanDifference {
    pub diff: Vec<f64>,
    pub norm: f64,
    pub unit: Vec<f32>,
    pub separation: f64,
}

/// [`direction`] with its length, unit vector and separation; None when the two means coincide (or are
/// not finite). The refusal direction of the ablate attack and of the edit's `write_refusal`.
pub(crate) fn mean_difference(pos: &[&[f32]], neg: &[&[f32]]) -> Option<MeanDifference> {
    let diff = direction(pos, neg);
    let norm = diff.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !(norm > 0.0 && norm.is_finite()) {
        return None;
    }
    let unit: Vec<f32> = diff.iter().map(|x| (x / norm) as f32).collect();
    let proj = |v: &[&[f32]]| -> Vec<f64> { v.iter().map(|x| x.iter().zip(&unit).map(|(a, b)| *a as f64 * *b as f64).sum()).collect() };
    let separation = pooled_separation(&proj(pos), &proj(neg));
    Some(MeanDifference { diff, norm, unit, separation })
}

/// (mean(a) - mean(b)) / sqrt((var(a) + var(b)) / 2).
fn pooled_separation(a: &[f64], b: &[f64]) -> f64 {
    let mv = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (m, v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64)
    };
    let ((ma, va), (mb, vb)) = (mv(a), mv(b));
    (ma - mb) / ((va + vb) / 2.0).sqrt().max(1e-12)
}

pub(crate) fn dot(r: &[f64], x: &[f32]) -> f64 {
    r.iter().zip(x).map(|(a, b)| a * *b as f64).sum()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (na, nb) = (a.iter().map(|x| x * x).sum::<f64>().sqrt(), b.iter().map(|x| x * x).sum::<f64>().sqrt());
    if na > 0.0 && nb > 0.0 {
        a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (na * nb)
    } else {
        0.0
    }
}

/// Mann-Whitney AUC: P(pos > neg) + P(pos == neg) / 2.
pub fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut wins = 0f64;
    for p in pos {
        for n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// Share of `pos` strictly above the smallest threshold that at most `fpr` of `neg` exceed.
pub fn above_fpr(pos: &[f64], neg: &[f64], fpr: f64) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return f64::NAN;
    }
    let mut n = neg.to_vec();
    n.sort_by(|a, b| b.total_cmp(a));
    // The k highest benign scores may lie above the threshold, k = floor(fpr * n).
    let k = (fpr * n.len() as f64).floor() as usize;
    let t = n[k.min(n.len() - 1)];
    pos.iter().filter(|&&p| p > t).count() as f64 / pos.len() as f64
}

impl Separation {
    /// The scores of paired twins (`pos[i]`) and benign sides (`neg[i]`).
    pub(crate) fn of_scores(pos: &[f64], neg: &[f64]) -> Separation {
        let paired = pos.iter().zip(neg).filter(|(p, n)| p > n).count() as f64 / pos.len().max(1) as f64;
        Separation { auc: auc(pos, neg), paired, twins_at_5pct: above_fpr(pos, neg, 0.05) }
    }

    /// Each field's mean over `parts`, weighted by their weights.
    pub(crate) fn weighted_mean(parts: &[(Separation, f64)]) -> Separation {
        let mut out = Separation { auc: 0.0, paired: 0.0, twins_at_5pct: 0.0 };
        for (s, w) in parts {
            out.auc += s.auc * w;
            out.paired += s.paired * w;
            out.twins_at_5pct += s.twins_at_5pct * w;
        }
        out
    }
}

/// Scores of (twin, benign) pairs along `r`.
fn separation(r: &[f64], pairs: &[(&[f32], &[f32])]) -> Separation {
    let pos: Vec<f64> = pairs.iter().map(|(h, _)| dot(r, h)).collect();
    let neg: Vec<f64> = pairs.iter().map(|(_, b)| dot(r, b)).collect();
    Separation::of_scores(&pos, &neg)
}

/// Two folds of `0..n` by index (even, odd): `score(fit, held)` fits on one and scores the other; each
/// fold's result with its weight, the held fold's share of `n`. None when a fold gives none.
pub(crate) fn folds<T>(n: usize, mut score: impl FnMut(&[usize], &[usize]) -> Option<T>) -> Option<Vec<(T, f64)>> {
    (0..2)
        .map(|f| {
            let (fit, held): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 2 == f);
            score(&fit, &held).map(|t| (t, held.len() as f64 / n as f64))
        })
        .collect()
}

/// [`folds`] of a scoring that always gives a result, averaged by the folds' sizes.
fn cross_fit(n: usize, mut score: impl FnMut(&[usize], &[usize]) -> Separation) -> Separation {
    Separation::weighted_mean(&folds(n, |fit, held| Some(score(fit, held))).unwrap_or_default())
}

/// Build the map. `pairs`: (benign look-alike, harmful twin) prompts to score on; `cases`: the edit cases'
/// prompts; `retain`: (benign, optional harmful twin) prompts of the retain set. Needs at least 4 pairs
/// (two per fold) and at least one case and one retain prompt.
pub fn intent_map(
    model: &Decoder,
    tok: &Tok,
    pairs: &[(String, String)],
    cases: &[String],
    retain: &[(String, Option<String>)],
    chat: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<IntentMap> {
    intent_map_with(model, tok, pairs, cases, retain, None, chat, progress)
}

/// A retain set's benign prompts, its harmful twins, and for each twin (in order) the index of its benign
/// side among the benign prompts.
fn retain_sides(retain: &[(String, Option<String>)]) -> (Vec<String>, Vec<String>, Vec<usize>) {
    let benign = retain.iter().map(|(b, _)| b.clone()).collect();
    let twins = retain.iter().filter_map(|(_, h)| h.clone()).collect();
    let twin_of = retain.iter().enumerate().filter(|(_, (_, h))| h.is_some()).map(|(i, _)| i).collect();
    (benign, twins, twin_of)
}

/// The LDA shrinkage of the intent layer rule (the reads' default; 0.1 and 10 read the same layers,
/// docs/validation.md "Reads beyond one direction").
pub const RULE_SHRINK: f64 = 1.0;

/// The intent layer rule's profile (`layer_rule = "intent"`): per layer, the AUC with which a shrinkage-LDA
/// read of the MLP neurons (`down_proj`'s input at the last prompt token), fitted on the edit `cases` and
/// half the retain set's harmful twins against its benign prompts, tells the other half's twins from their
/// benign sides (both ways round; [`reads::Read::retain_cross_fit`]). Training data only: no probe or
/// evaluation prompt is read. None where it cannot be fitted; an error with fewer than 4 retain pairs.
pub fn intent_layer_profile(
    model: &Decoder,
    tok: &Tok,
    cases: &[String],
    retain: &[(String, Option<String>)],
    chat: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Option<f64>>> {
    let (retain_b, retain_h, twin_of) = retain_sides(retain);
    if twin_of.len() < 4 || cases.is_empty() {
        return Err(Error::Input(format!(
            "the intent layer rule needs at least 4 retain prompts with a harmful twin and one edit case; got {} and {}",
            twin_of.len(),
            cases.len()
        )));
    }
    let ac = activations(model, tok, cases, chat, progress)?;
    let arb = activations(model, tok, &retain_b, chat, progress)?;
    let arh = activations(model, tok, &retain_h, chat, progress)?;
    let all: Vec<&Vec<Vec<Vec<f32>>>> = ac.iter().chain(&arb).chain(&arh).collect();
    let (nc, nb) = (ac.len(), arb.len());
    let roles = Roles {
        pairs: vec![],
        harmful: vec![],
        cases: (0..nc).collect(),
        retain_pairs: twin_of.iter().enumerate().map(|(k, &b)| (nc + nb + k, nc + b)).collect(),
        train_neg: (nc..nc + nb).collect(),
    };
    let mlp = SITES.iter().position(|s| *s == "mlp_post").expect("a site");
    let views: Vec<(usize, usize)> = (0..model.spec.n_layers).map(|l| (mlp, l)).collect();
    Ok(reads::retain_lda(&all, &roles, &views, RULE_SHRINK).into_iter().map(|s| s.map(|s| s.auc)).collect())
}

/// What [`intent_map_with`] adds to the map: the reads beyond one direction ([`crate::locate::reads`]),
/// with `harmful` requests scored against the look-alikes' threshold (may be empty) and the LDA
/// shrinkage `shrink` (> 0, x the scatter's mean eigenvalue).
pub struct ReadsWanted<'a> {
    pub harmful: &'a [String],
    pub shrink: f64,
}

/// [`intent_map`], and with `reads` the difference-of-means and shrinkage-LDA reads of every site and
/// layer and the joint reads of all of them, each fitted on the probes (cross-fit) and on training data.
#[allow(clippy::too_many_arguments)]
pub fn intent_map_with(
    model: &Decoder,
    tok: &Tok,
    pairs: &[(String, String)],
    cases: &[String],
    retain: &[(String, Option<String>)],
    reads: Option<ReadsWanted>,
    chat: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<IntentMap> {
    if let Some(r) = &reads {
        if !(r.shrink > 0.0 && r.shrink.is_finite()) {
            return Err(Error::Input(format!("intent reads: the LDA shrinkage must be a positive number, not {}", r.shrink)));
        }
    }
    if pairs.len() < 4 {
        return Err(Error::Input(format!("intent map: {} probe pairs with a harmful twin; at least 4 are needed", pairs.len())));
    }
    if cases.is_empty() || retain.is_empty() {
        return Err(Error::Input("intent map: needs at least one edit case and one retain prompt".into()));
    }
    let benign_p: Vec<String> = pairs.iter().map(|(b, _)| b.clone()).collect();
    let twin_p: Vec<String> = pairs.iter().map(|(_, h)| h.clone()).collect();
    let (retain_b, retain_h, twin_of) = retain_sides(retain);
    let ab = activations(model, tok, &benign_p, chat, progress)?;
    let ah = activations(model, tok, &twin_p, chat, progress)?;
    let ac = activations(model, tok, cases, chat, progress)?;
    let arb = activations(model, tok, &retain_b, chat, progress)?;
    let arh = activations(model, tok, &retain_h, chat, progress)?;
    let aharm = match &reads {
        Some(r) => activations(model, tok, r.harmful, chat, progress)?,
        None => vec![],
    };
    let mut rows = Vec::new();
    for (si, s) in SITES.iter().enumerate() {
        for l in 0..model.spec.n_layers {
            let (b, h) = (at(&ab, si, l), at(&ah, si, l));
            let both: Vec<(&[f32], &[f32])> = h.iter().copied().zip(b.iter().copied()).collect();
            let rc = direction(&at(&ac, si, l), &at(&arb, si, l));
            let cases_sep = separation(&rc, &both);
            let retain_twins = (!arh.is_empty()).then(|| separation(&direction(&at(&arh, si, l), &at(&arb, si, l)), &both));
            let cases_on_retain = (twin_of.len() >= 4).then(|| {
                let (c, rb, rh) = (at(&ac, si, l), at(&arb, si, l), at(&arh, si, l));
                cross_fit(twin_of.len(), |_, held| {
                    // The benign mean leaves out the held pairs' benign sides.
                    let held_b: std::collections::HashSet<usize> = held.iter().map(|&k| twin_of[k]).collect();
                    let neg: Vec<&[f32]> = rb.iter().enumerate().filter(|(i, _)| !held_b.contains(i)).map(|(_, x)| *x).collect();
                    let r = direction(&c, &neg);
                    separation(&r, &held.iter().map(|&k| (rh[k], rb[twin_of[k]])).collect::<Vec<_>>())
                })
            });
            let probes = cross_fit(pairs.len(), |fit, held| {
                let r = direction(&fit.iter().map(|&i| h[i]).collect::<Vec<_>>(), &fit.iter().map(|&i| b[i]).collect::<Vec<_>>());
                separation(&r, &held.iter().map(|&i| both[i]).collect::<Vec<_>>())
            });
            let rp = direction(&h, &b);
            rows.push(IntentRow {
                site: s.to_string(),
                layer: l,
                cases: cases_sep,
                retain_twins,
                cases_on_retain,
                probes,
                cos_cases_probes: cosine(&rc, &rp),
                reads: vec![],
            });
        }
    }
    let mut joint = vec![];
    if let Some(r) = &reads {
        // One index space over every prompt: look-alikes, twins, cases, retain benign, retain twins, harmful.
        let all: Vec<&Vec<Vec<Vec<f32>>>> = ab.iter().chain(&ah).chain(&ac).chain(&arb).chain(&arh).chain(&aharm).collect();
        let (np, nc, nrb, nrh) = (pairs.len(), ac.len(), arb.len(), arh.len());
        let start = [0, np, 2 * np, 2 * np + nc, 2 * np + nc + nrb, 2 * np + nc + nrb + nrh];
        let roles = Roles {
            pairs: (0..np).map(|i| (start[1] + i, start[0] + i)).collect(),
            train_neg: (start[3]..start[4]).collect(),
            harmful: (start[5]..all.len()).collect(),
            cases: (start[2]..start[3]).collect(),
            retain_pairs: twin_of.iter().enumerate().map(|(k, &b)| (start[4] + k, start[3] + b)).collect(),
        };
        let views: Vec<(usize, usize)> =
            rows.iter().map(|row| (SITES.iter().position(|s| *s == row.site).unwrap_or(0), row.layer)).collect();
        for (row, rd) in rows.iter_mut().zip(reads::per_view(&all, &roles, &views, r.shrink)) {
            row.reads = rd;
        }
        joint = reads::joint(&all, &roles, &views, r.shrink);
    }
    Ok(IntentMap {
        model: String::new(),
        chat,
        split: String::new(),
        n_pairs: pairs.len(),
        n_cases: cases.len(),
        n_retain_benign: retain_b.len(),
        n_retain_twins: retain_h.len(),
        rows,
        n_harmful: aharm.len(),
        shrink: reads.as_ref().map(|r| r.shrink),
        reads: joint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_difference_reports_length_unit_and_pooled_separation() {
        // Along x the sets sit at 3 +- 1 and 0 +- 1 (population sd 1), y is the same for both.
        let (p, n): (Vec<[f32; 2]>, Vec<[f32; 2]>) = (vec![[2.0, 5.0], [4.0, 5.0]], vec![[-1.0, 5.0], [1.0, 5.0]]);
        let (pr, nr): (Vec<&[f32]>, Vec<&[f32]>) = (p.iter().map(|x| &x[..]).collect(), n.iter().map(|x| &x[..]).collect());
        let md = mean_difference(&pr, &nr).unwrap();
        assert_eq!((md.diff.clone(), md.norm, md.unit.clone()), (vec![3.0, 0.0], 3.0, vec![1.0, 0.0]));
        assert!((md.separation - 3.0).abs() < 1e-12, "{}", md.separation);
        assert!(mean_difference(&pr, &pr).is_none(), "equal means have no direction");
    }

    #[test]
    fn auc_counts_wins_and_ties() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auc(&[2.0], &[2.0]), 0.5);
        assert!((auc(&[1.0, 3.0], &[2.0]) - 0.5).abs() < 1e-12);
        assert!(auc(&[], &[1.0]).is_nan());
        // 20 benign scores 0..19: one (5%) may lie above the threshold, 18; twins above it count.
        let neg: Vec<f64> = (0..20).map(f64::from).collect();
        assert_eq!(above_fpr(&[18.5, 19.5, 3.0, 30.0], &neg, 0.05), 0.75);
        assert_eq!(above_fpr(&[18.0], &neg, 0.05), 0.0);
        assert_eq!(above_fpr(&[0.5], &neg, 1.0), 1.0);
    }

    /// A planted intent coordinate: twins score high along it, benign sides low, and a nuisance coordinate
    /// (the "phrasing") separates the cases from the retain prompts but says nothing about intent.
    #[test]
    fn directions_find_the_planted_coordinate() {
        let v = |a: f32, b: f32, c: f32| vec![a, b, c];
        let twins: Vec<Vec<f32>> = (0..6).map(|i| v(1.0 + 0.1 * i as f32, 0.0, 0.3 * (i % 3) as f32)).collect();
        let benign: Vec<Vec<f32>> = (0..6).map(|i| v(-1.0 + 0.1 * i as f32, 0.0, 0.3 * (i % 2) as f32)).collect();
        let pairs: Vec<(&[f32], &[f32])> = twins.iter().map(|x| x.as_slice()).zip(benign.iter().map(|x| x.as_slice())).collect();
        let intent = separation(&[1.0, 0.0, 0.0], &pairs);
        assert_eq!((intent.auc, intent.paired), (1.0, 1.0));
        let phrasing = separation(&[0.0, 1.0, 0.0], &pairs);
        assert_eq!((phrasing.auc, phrasing.paired), (0.5, 0.0));
        let d = direction(&[&[2.0, 5.0, 0.0]], &[&[0.0, 1.0, 0.0]]);
        assert_eq!(d, vec![2.0, 4.0, 0.0]);
        assert!((cosine(&d, &[1.0, 2.0, 0.0]) - 1.0).abs() < 1e-12);
    }
}
