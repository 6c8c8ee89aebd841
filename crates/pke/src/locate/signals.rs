//! Provides the per-case signal computation and the aggregation into [`Hotspots`]. One case costs one
//! forward and one backward pass per response (plus DINM's two small batched forwards), not one backward
//! pass per layer.

use std::time::Instant;

use candle_core::{Tensor, D};

use super::dinm::{dinm_locate, DinmOptions, PadSide};
use super::hotspots::*;
use super::score::{jaccard, normalized, rank_sum, relative_gap, top_k};
use crate::data::EditCase;
pub use crate::io::chat::prompt_text;
use crate::io::tokenizer::Tok;
use crate::model::decoder::{down_proj_name, make_trainable, token_logprobs};
use crate::model::{Decoder, Input};
use crate::trace::{GradProbe, Site};
use crate::{Error, Result};

/// Token ids of one case: the prompt (with BOS / chat template as configured) and each response
/// tokenized on its own without special tokens, so labels hold no stray BOS (method.md Q3).
#[derive(Clone, Debug)]
pub struct CaseInputs {
    pub id: String,
    pub prompt_ids: Vec<u32>,
    pub safe_ids: Vec<u32>,
    pub unsafe_ids: Vec<u32>,
    pub safe_text: String,
    pub unsafe_text: String,
}

/// Tokenize a case.
pub fn case_inputs(tok: &Tok, case: &EditCase, chat: bool, suffix: Option<&str>) -> Result<CaseInputs> {
    let text = prompt_text(tok, &case.prompt, chat, suffix)?;
    // With a chat template the rendered text carries BOS and role tokens itself; transformers tokenizes it
    // with add_special_tokens=False.
    let prompt_ids = tok.encode(&text, !chat)?;
    let resp = |r: &str, field: &str| -> Result<Vec<u32>> {
        let ids = tok.encode(&crate::io::chat::reply_text(r, chat), false)?;
        if ids.is_empty() {
            return Err(Error::Input(format!("case {}: `{field}` tokenizes to zero tokens", case.id)));
        }
        Ok(ids)
    };
    if prompt_ids.is_empty() {
        return Err(Error::Input(format!("case {}: the prompt tokenizes to zero tokens", case.id)));
    }
    Ok(CaseInputs {
        id: case.id.clone(),
        prompt_ids,
        safe_ids: resp(&case.safe_response, "safe_response")?,
        unsafe_ids: resp(&case.unsafe_response, "unsafe_response")?,
        safe_text: case.safe_response.clone(),
        unsafe_text: case.unsafe_response.clone(),
    })
}

/// Mean NLL of `resp` after `prompt`, logits computed only at the positions that predict `resp`.
pub fn response_nll(model: &Decoder, prompt: &[u32], resp: &[u32], rec: &mut dyn crate::trace::Recorder) -> Result<Tensor> {
    let ids: Vec<u32> = prompt.iter().chain(resp).copied().collect();
    if ids.len() > model.spec.max_position_embeddings {
        return Err(Error::ContextOverflow {
            len: ids.len(),
            ctx: model.spec.max_position_embeddings,
            extra: " (prompt + response)".into(),
        });
    }
    let h = model.forward_with(&Input::single(&ids), rec, None)?.squeeze(0)?; // (s, d)
    let start = prompt.len() - 1;
    let logits = model.logits(&h.narrow(0, start, resp.len())?)?; // (T, V)
    let lp = token_logprobs(&logits, resp)?;
    Ok(lp.mean_all()?.neg()?)
}

/// Per-case, per-layer signals.
struct CaseSignals {
    /// ‖∂L⁺/∂W_down^ℓ‖_F per layer.
    grad_norm: Vec<f64>,
    /// Column norms of ∂L⁺/∂W_down^ℓ per layer: (L, f).
    weight_change: Vec<Vec<f64>>,
    /// Σ_i s_ℓ,i per layer.
    attribution: Vec<f64>,
    /// s_ℓ,i = |Σ_t a ∂(−L⁻)/∂a| per layer: (L, f).
    neuron_attr: Vec<Vec<f64>>,
}

fn finite(name: &str, v: f32) -> Result<f32> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NonFinite(format!("{name} is {v}")))
    }
}

fn case_signals(model: &Decoder, c: &CaseInputs) -> Result<CaseSignals> {
    let n = model.spec.n_layers;
    // L⁺ with probes on every down_proj's input and output: ∂L⁺/∂W_down = Σ_t g_out[t]ᵀ a[t], so one
    // backward gives every layer's weight gradient without a float32 copy of any weight to train.
    let mut probe = GradProbe::new((0..n).flat_map(|l| [Site::MlpAct(l), Site::MlpDown(l)]));
    let loss = response_nll(model, &c.prompt_ids, &c.safe_ids, &mut probe)?;
    finite("the safe-reply loss", loss.to_scalar::<f32>()?)?;
    let grads = loss.backward()?;
    let mut grad_norm = Vec::with_capacity(n);
    let mut weight_change = Vec::with_capacity(n);
    for l in 0..n {
        let a = probe.values[&Site::MlpAct(l)].squeeze(0)?; // (s, f)
        let g_out =
            probe.grad(&grads, Site::MlpDown(l)).ok_or_else(|| Error::Input(format!("no gradient reached layer {l}'s down_proj")))?;
        let g = g_out.squeeze(0)?.t()?.matmul(&a)?; // (d, f)
        let col = g.sqr()?.sum(0)?.to_vec1::<f32>()?; // (f,)
        grad_norm.push(col.iter().map(|x| *x as f64).sum::<f64>().sqrt());
        weight_change.push(col.iter().map(|x| (*x as f64).sqrt()).collect());
    }
    drop(grads);
    // L⁻ with probes on every MLP activation: attribution a * ∂(−L⁻)/∂a summed over positions.
    let mut probe = GradProbe::new((0..n).map(Site::MlpAct));
    let loss = response_nll(model, &c.prompt_ids, &c.unsafe_ids, &mut probe)?;
    finite("the unsafe-reply loss", loss.to_scalar::<f32>()?)?;
    let grads = loss.neg()?.backward()?;
    let mut attribution = Vec::with_capacity(n);
    let mut neuron_attr = Vec::with_capacity(n);
    for l in 0..n {
        let a = &probe.values[&Site::MlpAct(l)]; // (1, s, f)
        let g = probe.grad(&grads, Site::MlpAct(l)).ok_or_else(|| Error::Input(format!("no gradient at layer {l}'s MLP")))?;
        let s = (a * g)?.sum(D::Minus2)?.squeeze(0)?.abs()?.to_vec1::<f32>()?; // (f,)
        let s: Vec<f64> = s.into_iter().map(|x| x as f64).collect();
        attribution.push(s.iter().sum());
        neuron_attr.push(s);
    }
    Ok(CaseSignals { grad_norm, weight_change, attribution, neuron_attr })
}

/// The benign side of contrastive neuron selection on layer `l`: per column of `down_proj`, the norm of
/// the gradient of NLL(a refusal | benign look-alike prompt), normalized per prompt and averaged. A large
/// value means moving that column toward refusing would also make harmless look-alikes refuse. The
/// refusals are the cases' own safe replies, rotated over the prompts.
fn benign_column_grads(model: &Decoder, tok: &Tok, inputs: &[CaseInputs], settings: &LocateSettings, l: usize) -> Result<Vec<f64>> {
    let mut m = model.clone();
    let vars = make_trainable(&mut m, &[down_proj_name(l)])?;
    let mut rows = Vec::with_capacity(settings.contrast_prompts.len());
    for (j, p) in settings.contrast_prompts.iter().enumerate() {
        let text = prompt_text(tok, p, settings.chat, settings.suffix.as_deref())?;
        let ids = tok.encode(&text, !settings.chat)?;
        if ids.is_empty() {
            return Err(Error::Input(format!("contrast prompt {} tokenizes to zero tokens", j + 1)));
        }
        let loss = response_nll(&m, &ids, &inputs[j % inputs.len()].safe_ids, &mut crate::trace::Noop)?;
        finite("a contrast prompt's loss", loss.to_scalar::<f32>()?)?;
        let grads = loss.backward()?;
        let g = grads.get(vars[0].1.as_tensor()).ok_or_else(|| Error::Input("no gradient reached the contrast layer".into()))?;
        let col: Vec<f64> = g.sqr()?.sum(0)?.to_vec1::<f32>()?.into_iter().map(|x| (x as f64).sqrt()).collect();
        rows.push(normalized(&col));
    }
    Ok(mean_of(&rows))
}

/// Per-layer and per-neuron weight drift of `down_proj` against a reference model of the same shapes.
pub fn weight_drift(model: &Decoder, reference: &Decoder) -> Result<(Vec<f64>, Vec<Vec<f64>>)> {
    let (a, b) = (&model.spec, &reference.spec);
    if a.arch != b.arch || a.n_layers != b.n_layers || a.hidden_size != b.hidden_size || a.intermediate_size != b.intermediate_size {
        return Err(Error::Input(format!(
            "reference model differs: {} {}x{}x{} vs {} {}x{}x{} (architecture, layers, hidden, MLP width must match)",
            b.arch, b.n_layers, b.hidden_size, b.intermediate_size, a.arch, a.n_layers, a.hidden_size, a.intermediate_size
        )));
    }
    let mut layer = Vec::new();
    let mut neuron = Vec::new();
    for l in 0..a.n_layers {
        let n = down_proj_name(l);
        let d = (reference.get(&n)? - model.get(&n)?)?;
        let col = d.sqr()?.sum(0)?.to_vec1::<f32>()?;
        layer.push(col.iter().map(|x| *x as f64).sum::<f64>().sqrt());
        neuron.push(col.iter().map(|x| (*x as f64).sqrt()).collect());
    }
    Ok((layer, neuron))
}

fn mean_of(rows: &[Vec<f64>]) -> Vec<f64> {
    let n = rows.len().max(1) as f64;
    let mut out = vec![0.0; rows.first().map(|r| r.len()).unwrap_or(0)];
    for r in rows {
        for (o, x) in out.iter_mut().zip(r) {
            *o += x / n;
        }
    }
    out
}

/// A depth band `[lo, hi]` with `0 <= lo <= hi <= 1`, or a message naming what is wrong.
pub fn check_layer_band(band: &[f64]) -> std::result::Result<[f64; 2], String> {
    match band {
        [lo, hi] if lo.is_finite() && hi.is_finite() && 0.0 <= *lo && lo <= hi && *hi <= 1.0 => Ok([*lo, *hi]),
        _ => Err(format!("a depth band is two fractions 0 <= lo <= hi <= 1, got {band:?}")),
    }
}

/// Which of `n` layers lie in the depth band (`l / (n - 1)` within it); every layer when `band` is None
/// or holds none of them (a model too shallow for it).
fn layers_in_band(n: usize, band: Option<[f64; 2]>) -> Vec<bool> {
    let Some([lo, hi]) = band else { return vec![true; n] };
    let depth = |l: usize| if n > 1 { l as f64 / (n - 1) as f64 } else { 0.5 };
    let inside: Vec<bool> = (0..n).map(|l| (lo..=hi).contains(&depth(l))).collect();
    if inside.iter().any(|&b| b) {
        inside
    } else {
        vec![true; n]
    }
}

/// The `k` best-scoring layers, those in the band first.
fn top_k_in_band(profile: &[f64], inside: &[bool], k: usize) -> Vec<usize> {
    let (mut a, b): (Vec<usize>, Vec<usize>) = top_k(profile, profile.len()).into_iter().partition(|&l| inside[l]);
    a.extend(b);
    a.truncate(k);
    a
}

/// With [`LayerRule::Intent`] and no forced layer, the intent rule's per-layer profile (None otherwise).
fn intent_profile(model: &Decoder, tok: &Tok, cases: &[EditCase], settings: &LocateSettings) -> Result<Option<Vec<Option<f64>>>> {
    if settings.layer_rule != LayerRule::Intent || !settings.layers.is_empty() {
        return Ok(None);
    }
    if !matches!(settings.locator, Locator::Pke | Locator::Attribution) {
        return Err(Error::Input(format!(
            "the intent layer rule chooses the layer for the pke and attribution locators, not for {:?}",
            settings.locator
        )));
    }
    let retain = if settings.intent_retain.is_empty() {
        crate::data::probes::retain_pairs(&crate::data::probes::builtin_retain())
    } else {
        settings.intent_retain.clone()
    };
    let prompts: Vec<String> = cases.iter().map(|c| c.prompt.clone()).collect();
    super::intent::intent_layer_profile(model, tok, &prompts, &retain, settings.chat, &mut |_| {}).map(Some)
}

/// Locate hotspots over `cases`. `reference` adds the weight-drift signal.
pub fn locate(
    model: &Decoder,
    tok: &Tok,
    cases: &[EditCase],
    settings: &LocateSettings,
    reference: Option<&Decoder>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Hotspots, Vec<CaseInputs>)> {
    // Natively held weights: every linear exactly on its dequantized blocks, as the float32 path.
    let exact = model.exact();
    let model = &exact;
    let spec = &model.spec;
    let (n, f) = (spec.n_layers, spec.intermediate_size);
    if cases.is_empty() {
        return Err(Error::Input("no edit cases to locate with".into()));
    }
    let k = match settings.top_k {
        Some(k) => k,
        None => {
            if !(settings.top_fraction > 0.0 && settings.top_fraction <= 1.0) {
                return Err(Error::Input(format!("top fraction must be in (0, 1], got {}", settings.top_fraction)));
            }
            ((settings.top_fraction * f as f64).ceil() as usize).max(1)
        }
    };
    if k == 0 || k > f {
        return Err(Error::Input(format!("k = {k} neurons is outside 1..={f} (the MLP width)")));
    }
    if let Some(&bad) = settings.layers.iter().find(|&&l| l >= n) {
        return Err(Error::Input(format!("layer {bad} is out of range: the model has layers 0..={}", n - 1)));
    }
    if settings.n_layers == 0 || settings.n_layers > n {
        return Err(Error::Input(format!("number of layers {} is outside 1..={n}", settings.n_layers)));
    }
    if let Some(b) = settings.layer_band {
        check_layer_band(&b).map_err(Error::Input)?;
    }
    // DINM's rule follows EasyEdit and the drift locator looks for a reference's changes: no band.
    let inside =
        layers_in_band(n, if matches!(settings.locator, Locator::Pke | Locator::Attribution) { settings.layer_band } else { None });
    if settings.locator == Locator::Drift && reference.is_none() {
        return Err(Error::Input("the drift locator needs a reference model (--reference)".into()));
    }
    let neuron_signals: Vec<String> = if !settings.neuron_signals.is_empty() {
        for sig in &settings.neuron_signals {
            match sig.as_str() {
                "weight_change" | "attribution" => {}
                "weight_drift" if reference.is_some() => {}
                "weight_drift" => return Err(Error::Input("neuron signal `weight_drift` needs a reference model".into())),
                o => return Err(Error::Input(format!("unknown neuron signal `{o}` (weight_change, attribution, weight_drift)"))),
            }
        }
        settings.neuron_signals.clone()
    } else if settings.locator == Locator::Drift {
        vec!["weight_drift".into()]
    } else if reference.is_some() {
        vec!["weight_change".into(), "attribution".into(), "weight_drift".into()]
    } else {
        vec!["weight_change".into(), "attribution".into()]
    };
    let inputs: Vec<CaseInputs> =
        cases.iter().map(|c| case_inputs(tok, c, settings.chat, settings.suffix.as_deref())).collect::<Result<_>>()?;
    let t0 = Instant::now();
    let intent = intent_profile(model, tok, cases, settings)?;
    if settings.locator == Locator::Dinm && settings.dinm_rule_only && settings.layers.is_empty() {
        progress(0, 1);
        let c = &inputs[0];
        let a = dinm_locate(model, tok, &c.safe_text, &c.unsafe_text, settings.dinm)?;
        progress(1, 1);
        let mut chosen_layers = vec![a.toxic_layer];
        chosen_layers.extend(top_k(&a.distances, n).into_iter().filter(|l| *l != a.toxic_layer).take(settings.n_layers - 1));
        let layers = (0..n)
            .map(|l| LayerSignal {
                layer: l,
                dinm_distance: a.distances[l],
                dinm_distance_other_padding: 0.0,
                grad_norm: 0.0,
                attribution: 0.0,
                weight_drift: None,
                intent_auc: None,
            })
            .collect();
        return Ok((
            Hotspots {
                model: String::new(),
                model_sha256: None,
                weights: model.weights_mode(),
                architecture: spec.arch.to_string(),
                n_cases: cases.len(),
                settings: settings.clone(),
                layers,
                chosen_layers,
                neurons: vec![],
                dinm: DinmSensitivity {
                    layer_left: a.toxic_layer,
                    layer_right: a.toxic_layer,
                    flips_with_padding: false,
                    cases_flipping: 0.0,
                },
                stability: Stability {
                    layer_agreement: 1.0,
                    topk_overlap_with_aggregate: 0.0,
                    topk_pairwise_overlap: 0.0,
                    layer_margin: relative_gap(&a.distances),
                },
                seconds_per_case: t0.elapsed().as_secs_f64(),
            },
            inputs,
        ));
    }
    let mut per_case = Vec::with_capacity(cases.len());
    let mut dinm_layers = Vec::new();
    let mut dinm_first = None;
    let other =
        DinmOptions { padding: if settings.dinm.padding == PadSide::Left { PadSide::Right } else { PadSide::Left }, ..settings.dinm };
    for (i, c) in inputs.iter().enumerate() {
        progress(i, inputs.len());
        per_case.push(case_signals(model, c)?);
        let a = dinm_locate(model, tok, &c.safe_text, &c.unsafe_text, settings.dinm)?;
        let b = dinm_locate(model, tok, &c.safe_text, &c.unsafe_text, other)?;
        dinm_layers.push((a.toxic_layer, b.toxic_layer));
        if dinm_first.is_none() {
            dinm_first = Some((a, b));
        }
    }
    progress(inputs.len(), inputs.len());
    let seconds_per_case = t0.elapsed().as_secs_f64() / inputs.len() as f64;
    let (dinm_a, dinm_b) = dinm_first.expect("at least one case");

    // Aggregate layer profiles: normalize each case's profile, then average.
    let grad_norm = mean_of(&per_case.iter().map(|c| normalized(&c.grad_norm)).collect::<Vec<_>>());
    let attribution = mean_of(&per_case.iter().map(|c| normalized(&c.attribution)).collect::<Vec<_>>());
    let drift = reference.map(|r| weight_drift(model, r)).transpose()?;

    let profile: Vec<f64> = match settings.locator {
        Locator::Pke => grad_norm.clone(),
        Locator::Attribution => attribution.clone(),
        Locator::Dinm => dinm_a.distances.clone(),
        Locator::Drift => drift.as_ref().expect("checked").0.clone(),
    };
    let chosen_layers: Vec<usize> = if !settings.layers.is_empty() {
        settings.layers.clone()
    } else if let Some(p) = &intent {
        // Layers the read cannot be fitted at rank last.
        top_k_in_band(&p.iter().map(|a| a.unwrap_or(f64::NEG_INFINITY)).collect::<Vec<_>>(), &inside, settings.n_layers)
    } else if settings.locator == Locator::Dinm {
        // EasyEdit locates on the first case and reuses the layer (quirk Q1); more layers: next distances.
        let mut v = vec![dinm_a.toxic_layer];
        v.extend(top_k(&dinm_a.distances, n).into_iter().filter(|l| *l != dinm_a.toxic_layer).take(settings.n_layers - 1));
        v
    } else {
        top_k_in_band(&profile, &inside, settings.n_layers)
    };

    if settings.contrast_weight < 0.0 || !settings.contrast_weight.is_finite() {
        return Err(Error::Input(format!("contrast weight must be >= 0, got {}", settings.contrast_weight)));
    }
    if settings.contrast_weight > 0.0 && settings.contrast_prompts.is_empty() {
        return Err(Error::Input("contrastive neuron selection needs benign contrast prompts".into()));
    }
    // Per-neuron scores in each chosen layer.
    let mut neurons = Vec::new();
    for &l in &chosen_layers {
        let benign = if settings.contrast_weight > 0.0 { Some(benign_column_grads(model, tok, &inputs, settings, l)?) } else { None };
        let wc = mean_of(&per_case.iter().map(|c| normalized(&c.weight_change[l])).collect::<Vec<_>>());
        let at = mean_of(&per_case.iter().map(|c| normalized(&c.neuron_attr[l])).collect::<Vec<_>>());
        let dr = drift.as_ref().map(|d| d.1[l].clone());
        let sigs: Vec<&[f64]> = neuron_signals
            .iter()
            .map(|s| match s.as_str() {
                "weight_change" => &wc[..],
                "attribution" => &at[..],
                _ => &dr.as_ref().expect("validated: reference present")[..],
            })
            .collect();
        let combined = rank_sum(&sigs);
        let max = ((f - 1) * sigs.len()) as f64;
        let mut all_scores: Vec<f64> = combined.iter().map(|x| x / max.max(1.0)).collect();
        if let Some(b) = &benign {
            let rb = super::score::ranks(b);
            let denom = (f - 1).max(1) as f64;
            for (sc, r) in all_scores.iter_mut().zip(rb) {
                *sc -= settings.contrast_weight * r / denom;
            }
        }
        let top = top_k(&all_scores, k)
            .into_iter()
            .map(|i| Neuron {
                index: i,
                score: all_scores[i],
                weight_change: wc[i],
                attribution: at[i],
                weight_drift: dr.as_ref().map(|d| d[i]),
                benign_weight_change: benign.as_ref().map(|b| b[i]),
            })
            .collect();
        neurons.push(LayerNeurons {
            layer: l,
            width: f,
            k,
            top,
            all_scores,
            all_weight_change: wc,
            all_attribution: at,
            all_benign_weight_change: benign.unwrap_or_default(),
        });
    }

    // Stability across cases.
    let first = chosen_layers[0];
    let case_best: Vec<usize> = per_case
        .iter()
        .zip(&dinm_layers)
        .map(|(c, d)| match settings.locator {
            Locator::Pke => top_k_in_band(&c.grad_norm, &inside, 1)[0],
            Locator::Attribution => top_k_in_band(&c.attribution, &inside, 1)[0],
            Locator::Dinm => d.0,
            Locator::Drift => first,
        })
        .collect();
    let layer_agreement = case_best.iter().filter(|&&l| l == first).count() as f64 / per_case.len() as f64;
    let case_topk: Vec<Vec<usize>> =
        per_case.iter().map(|c| top_k(&rank_sum(&[&c.weight_change[first], &c.neuron_attr[first]]), k)).collect();
    let agg: Vec<usize> = neurons[0].top.iter().map(|x| x.index).collect();
    let topk_overlap_with_aggregate = case_topk.iter().map(|t| jaccard(t, &agg)).sum::<f64>() / case_topk.len() as f64;
    let mut pair = (0.0, 0usize);
    for i in 0..case_topk.len() {
        for j in i + 1..case_topk.len() {
            pair.0 += jaccard(&case_topk[i], &case_topk[j]);
            pair.1 += 1;
        }
    }
    let stability = Stability {
        layer_agreement,
        topk_overlap_with_aggregate,
        topk_pairwise_overlap: if pair.1 > 0 { pair.0 / pair.1 as f64 } else { 1.0 },
        layer_margin: relative_gap(&profile.iter().zip(&inside).filter(|(_, &i)| i).map(|(x, _)| *x).collect::<Vec<_>>()),
    };
    let (left, right) = if settings.dinm.padding == PadSide::Left { (&dinm_a, &dinm_b) } else { (&dinm_b, &dinm_a) };
    let dinm = DinmSensitivity {
        layer_left: left.toxic_layer,
        layer_right: right.toxic_layer,
        flips_with_padding: left.toxic_layer != right.toxic_layer,
        cases_flipping: dinm_layers.iter().filter(|(a, b)| a != b).count() as f64 / dinm_layers.len() as f64,
    };
    let layers = (0..n)
        .map(|l| LayerSignal {
            layer: l,
            dinm_distance: dinm_a.distances[l],
            dinm_distance_other_padding: dinm_b.distances[l],
            grad_norm: grad_norm[l],
            attribution: attribution[l],
            weight_drift: drift.as_ref().map(|d| d.0[l]),
            intent_auc: intent.as_ref().and_then(|p| p[l]),
        })
        .collect();
    let mut settings = settings.clone();
    settings.neuron_signals = neuron_signals;
    Ok((
        Hotspots {
            model: String::new(),
            model_sha256: None,
            weights: model.weights_mode(),
            architecture: spec.arch.to_string(),
            n_cases: cases.len(),
            settings,
            layers,
            chosen_layers,
            neurons,
            dinm,
            stability,
            seconds_per_case,
        },
        inputs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_band_membership_and_order() {
        // 24 layers: l / 23 in [0.25, 0.75] -> 6..=17.
        let inside = layers_in_band(24, Some([0.25, 0.75]));
        assert_eq!(inside.iter().enumerate().filter(|(_, &b)| b).map(|(l, _)| l).collect::<Vec<_>>(), (6..=17).collect::<Vec<_>>());
        assert!(layers_in_band(24, None).iter().all(|&b| b));
        // A band that holds no layer of a shallow model falls back to all of them.
        assert_eq!(layers_in_band(2, Some([0.4, 0.6])), vec![true, true]);
        let p = [9.0, 1.0, 5.0, 3.0];
        let inside = layers_in_band(4, Some([0.3, 0.7])); // layers 1 and 2
        assert_eq!(top_k_in_band(&p, &inside, 1), vec![2]);
        assert_eq!(top_k_in_band(&p, &inside, 3), vec![2, 1, 0]);
        for bad in [vec![0.5], vec![0.7, 0.3], vec![-0.1, 0.5], vec![0.2, f64::NAN], vec![0.0, 1.5]] {
            assert!(check_layer_band(&bad).unwrap_err().contains("depth band"), "{bad:?}");
        }
        assert_eq!(check_layer_band(&[0.0, 1.0]), Ok([0.0, 1.0]));
    }
}
