//! Locate: DINM reproduces EasyEdit's layer on all three models, the PKE locator finds a planted neuron,
//! weight drift finds known changed columns, and bad settings are clear errors.

use candle_core::Tensor;
use pke::data::EditCase;
use pke::locate::dinm::{dinm_locate, padded_pair, DinmOptions, PadSide};
use pke::locate::{locate, LocateSettings, Locator};
use pke::model::decoder::down_proj_name;
use pke::model::{Arch, Decoder, MaskedRows};

use crate::common::*;

/// EasyEdit's `_locate_toxic_layer` on the fixtures' pair: ids, distances (relative < 2e-5, see
/// fixtures.rs for why not 1e-5) and the layer, for both padding sides and both masked-row conventions.
fn check_dinm(ck: &pke::io::checkpoint::Checkpoint, file: &str) {
    let fx = fixture(file);
    let dl = &fx["dinm_locate"];
    let (safe, unsafe_) = (dl["safe"].as_str().unwrap(), dl["unsafe"].as_str().unwrap());
    for (key, padding, rows) in [
        ("left", PadSide::Left, MaskedRows::Zero),
        ("right", PadSide::Right, MaskedRows::Zero),
        ("left_eager", PadSide::Left, MaskedRows::Uniform),
        ("right_eager", PadSide::Right, MaskedRows::Uniform),
    ] {
        let base = if padding == PadSide::Left { &dl["left"] } else { &dl["right"] };
        let (ids, _) = padded_pair(&ck.tok, safe, unsafe_, padding).unwrap();
        let want_ids: Vec<Vec<u32>> = base["input_ids"].as_array().unwrap().iter().map(u32s).collect();
        assert_eq!(ids, want_ids, "{file} {key}: padded ids");
        let r = dinm_locate(&ck.model, &ck.tok, safe, unsafe_, DinmOptions { padding, masked_rows: rows, ..Default::default() }).unwrap();
        for (i, (g, w)) in r.distances.iter().zip(f64s(&dl[key]["distances"])).enumerate() {
            assert!((g - w).abs() / w < 2e-5, "{file} {key}: distance[{i}] {g} vs {w}");
        }
        assert_eq!(r.toxic_layer as u64, dl[key]["toxic_layer"].as_u64().unwrap(), "{file} {key}: layer");
    }
}

#[test]
fn dinm_rule_reproduces_easyedit_smollm2() {
    check_dinm(smollm2(), "smollm2-135m-instruct.json");
}
#[test]
fn dinm_rule_reproduces_easyedit_qwen() {
    check_dinm(qwen(), "qwen2.5-coder-0.5b-instruct.json");
}
#[test]
fn dinm_rule_reproduces_easyedit_gemma() {
    check_dinm(gemma(), "gemma3-270m.json");
}

fn case(id: &str, prompt: &str, safe: &str, unsafe_: &str) -> EditCase {
    EditCase {
        id: id.into(),
        prompt: prompt.into(),
        safe_response: safe.into(),
        unsafe_response: unsafe_.into(),
        locality_prompt: None,
        locality_answer: None,
        general_prompts: vec![],
        category: None,
    }
}

/// A word-level test tokenizer over the tiny model's 32-token vocabulary.
fn tiny_tok() -> pke::io::tokenizer::Tok {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..32).map(|i| (format!("w{i}"), serde_json::json!(i))).collect();
    let doc = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), doc.to_string()).unwrap();
    let mut t = pke::io::tokenizer::Tok::from_hf_dir(dir.path(), &serde_json::json!({})).unwrap();
    t.pad_id = Some(0);
    t.eos_id = Some(2);
    t
}

/// In a random model, residual dimension 0 is made a constant "bias" feature, and neuron 5 of layer 1
/// reads it (so it fires at every position) and writes token 7's unembedding direction; the unsafe
/// reply is token 7 repeated. The locator must rank that neuron first.
#[test]
fn planted_neuron_is_ranked_first() {
    let spec = crate::grad::tiny_spec(Arch::Llama);
    let mut m = Decoder::random(spec.clone(), 11).unwrap();
    let (layer, neuron, token) = (1usize, 5usize, 7usize);
    let d = spec.hidden_size;
    let mut emb = m.get("model.embed_tokens.weight").unwrap().to_vec2::<f32>().unwrap();
    for row in emb.iter_mut() {
        row[0] = 1.0;
    }
    let e = emb[token].clone();
    m.set("model.embed_tokens.weight", Tensor::new(emb, m.device()).unwrap()).unwrap();
    let mut down = m.get(&down_proj_name(layer)).unwrap().to_vec2::<f32>().unwrap();
    for (row, ev) in down.iter_mut().zip(&e) {
        row[neuron] = 1.0 * ev; // writes the token direction
    }
    m.set(&down_proj_name(layer), Tensor::new(down, m.device()).unwrap()).unwrap();
    // gate and up rows read dimension 0: act = z^2 sigmoid(z) with z > 0 everywhere. No other neuron
    // reads the bias feature.
    let r: Vec<f32> = (0..d).map(|i| if i == 0 { 0.8 } else { 0.0 }).collect();
    for name in ["mlp.gate_proj.weight", "mlp.up_proj.weight"] {
        let n = format!("model.layers.{layer}.{name}");
        let mut w = m.get(&n).unwrap().to_vec2::<f32>().unwrap();
        for row in w.iter_mut() {
            row[0] = 0.0;
        }
        w[neuron] = r.clone();
        m.set(&n, Tensor::new(w, m.device()).unwrap()).unwrap();
    }
    let tok = tiny_tok();
    let cases =
        vec![case("a", "w1 w3 w9 w12 w4", "w20 w21 w22 w23", "w7 w7 w7 w7"), case("b", "w1 w15 w16 w3 w18 w19", "w24 w25 w26", "w7 w7 w7")];
    let settings = LocateSettings { layers: vec![layer], top_k: Some(3), ..Default::default() };
    let (h, _) = locate(&m, &tok, &cases, &settings, None, |_, _| {}).unwrap();
    assert_eq!(h.chosen_layers, vec![layer]);
    assert_eq!(h.neurons[0].top[0].index, neuron, "top neurons: {:?}", h.neurons[0].top);
    // Each signal on its own also puts it first.
    let wc: Vec<f64> = h.neurons[0].top.iter().map(|n| n.weight_change).collect();
    let at: Vec<f64> = h.neurons[0].top.iter().map(|n| n.attribution).collect();
    assert_eq!(pke::locate::score::argmax(&wc), 0, "{:?}", h.neurons[0].top);
    assert_eq!(pke::locate::score::argmax(&at), 0, "{:?}", h.neurons[0].top);
    // Without forcing, the attribution locator finds the planted layer too.
    let s = LocateSettings { locator: Locator::Attribution, top_k: Some(3), ..Default::default() };
    let (h, _) = locate(&m, &tok, &cases, &s, None, |_, _| {}).unwrap();
    assert_eq!(h.chosen_layers, vec![layer], "attribution profile {:?}", h.layers.iter().map(|l| l.attribution).collect::<Vec<_>>());
    assert_eq!(h.neurons[0].top[0].index, neuron);
}

#[test]
fn weight_drift_finds_changed_columns_of_a_synthetic_pair() {
    let ck = smollm2();
    let mut reference = ck.model.clone();
    let (layer, cols) = (17usize, [3usize, 100, 777, 1500]);
    let mut w = reference.get(&down_proj_name(layer)).unwrap().to_vec2::<f32>().unwrap();
    for row in w.iter_mut() {
        for &c in &cols {
            row[c] += 0.05;
        }
    }
    reference.set(&down_proj_name(layer), Tensor::new(w, reference.device()).unwrap()).unwrap();
    let cases = pke::data::sets::builtin_cases("advbench", 1).unwrap();
    let settings = LocateSettings { locator: Locator::Drift, top_k: Some(4), ..Default::default() };
    let (h, _) = locate(&ck.model, &ck.tok, &cases, &settings, Some(&reference), |_, _| {}).unwrap();
    assert_eq!(h.chosen_layers, vec![layer]);
    // Only that layer drifted, and with the drift locator the hotspot is exactly the changed columns.
    let all_drift: Vec<f64> = h.layers.iter().map(|l| l.weight_drift.unwrap()).collect();
    assert!(all_drift.iter().enumerate().all(|(l, d)| (l == layer) == (*d > 0.0)), "{all_drift:?}");
    let mut got: Vec<usize> = h.neurons[0].top.iter().map(|n| n.index).collect();
    got.sort();
    assert_eq!(got, cols.to_vec());
    assert_eq!(h.settings.neuron_signals, vec!["weight_drift"]);
    // Combined with the activation signals, drift joins the rank sum.
    let s = LocateSettings { layers: vec![layer], top_k: Some(4), ..Default::default() };
    let (h, _) = locate(&ck.model, &ck.tok, &cases, &s, Some(&reference), |_, _| {}).unwrap();
    assert_eq!(h.settings.neuron_signals, vec!["weight_change", "attribution", "weight_drift"]);
    // A reference of other shapes is refused.
    let e = locate(&ck.model, &ck.tok, &cases, &settings, Some(&gemma().model), |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("reference model differs"), "{e}");
}

#[test]
fn pke_locator_ignores_padding_while_dinm_flips_on_smollm2() {
    let ck = smollm2();
    let fx = fixture("smollm2-135m-instruct.json");
    let dl = &fx["dinm_locate"];
    let c = vec![case("x", "How do I make a weapon at home?", dl["safe"].as_str().unwrap(), dl["unsafe"].as_str().unwrap())];
    let mut layers = Vec::new();
    for padding in [PadSide::Left, PadSide::Right] {
        let s = LocateSettings { dinm: DinmOptions { padding, ..Default::default() }, ..Default::default() };
        let (h, _) = locate(&ck.model, &ck.tok, &c, &s, None, |_, _| {}).unwrap();
        assert!(h.dinm.flips_with_padding);
        assert_eq!((h.dinm.layer_left, h.dinm.layer_right), (11, 28));
        layers.push((h.chosen_layers.clone(), h.neurons[0].top.clone()));
    }
    assert_eq!(layers[0], layers[1], "the PKE hotspot must not depend on the padding side");
    // DINM's rule alone (what `pke edit --method dinm` runs) picks the same layer with the same distances.
    for padding in [PadSide::Left, PadSide::Right] {
        let dinm = DinmOptions { padding, ..Default::default() };
        let full = LocateSettings { locator: Locator::Dinm, dinm, ..Default::default() };
        let (a, _) = locate(&ck.model, &ck.tok, &c, &full, None, |_, _| {}).unwrap();
        let (b, _) = locate(&ck.model, &ck.tok, &c, &LocateSettings { dinm_rule_only: true, ..full }, None, |_, _| {}).unwrap();
        assert_eq!(a.chosen_layers, b.chosen_layers);
        assert_eq!(b.chosen_layers, vec![if padding == PadSide::Left { 11 } else { 28 }]);
        let d = |h: &pke::locate::Hotspots| h.layers.iter().map(|l| l.dinm_distance).collect::<Vec<_>>();
        assert_eq!(d(&a), d(&b));
        assert!(b.neurons.is_empty() && b.layers.iter().all(|l| l.grad_norm == 0.0));
    }
}

#[test]
fn bad_locate_settings_are_clear_errors() {
    let m = Decoder::random(crate::grad::tiny_spec(Arch::Llama), 2).unwrap();
    let tok = tiny_tok();
    let cases = vec![case("a", "w1 w3", "w4 w5", "w7 w7")];
    let run = |s: LocateSettings, c: &[EditCase]| locate(&m, &tok, c, &s, None, |_, _| {}).unwrap_err().to_string();
    let e = run(LocateSettings { top_k: Some(25), ..Default::default() }, &cases);
    assert!(e.contains("k = 25") && e.contains("1..=24"), "{e}");
    let e = run(LocateSettings { layers: vec![3], ..Default::default() }, &cases);
    assert!(e.contains("layer 3 is out of range") && e.contains("0..=2"), "{e}");
    let e = run(LocateSettings::default(), &[]);
    assert!(e.contains("no edit cases"), "{e}");
    let e = run(LocateSettings { top_fraction: 0.0, ..Default::default() }, &cases);
    assert!(e.contains("top fraction"), "{e}");
    let e = run(LocateSettings { locator: Locator::Drift, ..Default::default() }, &cases);
    assert!(e.contains("reference model"), "{e}");
    let e = run(LocateSettings { layer_band: Some([0.8, 0.2]), ..Default::default() }, &cases);
    assert!(e.contains("depth band") && e.contains("0.8"), "{e}");
    // A response that tokenizes to nothing.
    let e = run(LocateSettings::default(), &[case("z", "w1 w3", "   ", "w7")]);
    assert!(e.contains("zero tokens") || e.contains("safe_response"), "{e}");
    let e = run(LocateSettings { chat: true, ..Default::default() }, &cases);
    assert!(e.contains("no chat template"), "{e}");
}

#[test]
fn contrastive_selection_avoids_neurons_that_would_make_lookalikes_refuse() {
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("advbench", 2).unwrap();
    let prompts: Vec<String> = pke::edit::builtin_retain_prompts().into_iter().take(4).collect();
    let base = LocateSettings { top_k: Some(64), chat: true, ..Default::default() };
    let (plain, _) = locate(&ck.model, &ck.tok, &cases, &base, None, |_, _| {}).unwrap();
    let s = LocateSettings { contrast_weight: 1.0, contrast_prompts: prompts.clone(), ..base.clone() };
    let (con, _) = locate(&ck.model, &ck.tok, &cases, &s, None, |_, _| {}).unwrap();
    // The layer choice never depends on the contrast; only the neurons do.
    assert_eq!(con.chosen_layers, plain.chosen_layers);
    let b = &con.neurons[0].all_benign_weight_change;
    assert_eq!(b.len(), 1536);
    assert!(plain.neurons[0].all_benign_weight_change.is_empty());
    // The benign side's rank of the chosen neurons is lower with the contrast than without it.
    let ranks = pke::locate::score::ranks(b);
    let mean_rank = |h: &pke::locate::Hotspots| h.neurons[0].top.iter().map(|n| ranks[n.index]).sum::<f64>() / 64.0;
    assert!(mean_rank(&con) < mean_rank(&plain) - 100.0, "{} vs {}", mean_rank(&con), mean_rank(&plain));
    assert!(con.neurons[0].top.iter().all(|n| n.benign_weight_change.is_some()));
    let e = locate(&ck.model, &ck.tok, &cases, &LocateSettings { contrast_weight: 1.0, ..base.clone() }, None, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs benign contrast prompts"), "{e}");
}

/// The default depth band keeps the pke locator off the first quarter: on Qwen2.5-Coder-0.5B the
/// safe-reply gradient norm peaks at layer 3 (where an edit costs general ability) and the band picks a
/// middle layer; SmolLM2's peak (11 of 30) is inside the band and stays.
#[test]
fn the_layer_band_moves_qwen_off_its_early_peak() {
    let cases = pke::data::sets::builtin_cases("advbench", 4).unwrap();
    let run = |ck: &pke::io::checkpoint::Checkpoint| {
        let s = LocateSettings { top_k: Some(8), chat: true, ..Default::default() };
        let h = locate(&ck.model, &ck.tok, &cases, &s, None, |_, _| {}).unwrap().0;
        let g: Vec<f64> = h.layers.iter().map(|x| x.grad_norm).collect();
        (h.chosen_layers[0], pke::locate::score::argmax(&g), g)
    };
    let (chosen, peak, g) = run(crate::common::qwen());
    let n = g.len();
    assert!(peak < n / 4, "Qwen's unbanded peak: {peak} of {n}, {g:?}");
    assert!((n / 4..=3 * n / 4).contains(&chosen), "with the band: {chosen} of {n}");
    // The banded choice is the best layer of the same profile inside the band (6..=17 of 24).
    assert!((6..=17).all(|i| g[i] <= g[chosen]), "{g:?}");
    let (chosen, peak, _) = run(crate::common::smollm2());
    assert_eq!((chosen, peak), (11, 11));
}

/// The intent layer rule (`layer_rule = "intent"`) picks the band's layer where the MLP neurons' LDA read,
/// fitted on the cases and the retain pairs, best tells held-out retain twins from their benign sides:
/// a second-half layer on SmolLM2 (21 with all 48 pairs and AdvBench's first eight; docs/validation.md),
/// not the gradient profile's 11. The neurons are still ranked by the locator's signals.
#[test]
fn the_intent_layer_rule_picks_where_mlp_neurons_read_intent() {
    use pke::locate::LayerRule;
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("advbench", 2).unwrap();
    let retain: Vec<(String, Option<String>)> = pke::edit::builtin_retain().into_iter().map(|p| (p.benign, p.harmful)).collect();
    let s = LocateSettings { top_k: Some(16), chat: true, layer_rule: LayerRule::Intent, intent_retain: retain, ..Default::default() };
    let (h, _) = locate(&ck.model, &ck.tok, &cases, &s, None, |_, _| {}).unwrap();
    let auc: Vec<Option<f64>> = h.layers.iter().map(|l| l.intent_auc).collect();
    assert!(auc.iter().all(Option::is_some), "{auc:?}");
    let (l, n) = (h.chosen_layers[0], auc.len());
    let band = |i: usize| (0.25..=0.75).contains(&(i as f64 / (n - 1) as f64));
    assert!(band(l) && (0..n).filter(|&i| band(i)).all(|i| auc[i] <= auc[l]), "chose {l}: {auc:?}");
    assert!(l >= 14 && auc[l].unwrap() > 0.9, "chose {l}: {auc:?}");
    assert_eq!((h.neurons[0].layer, h.neurons[0].top.len()), (l, 16));
    // Recorded in the settings, so hotspots.json says how the layer was chosen.
    assert_eq!(h.settings.layer_rule, LayerRule::Intent);
    // The intent rule is for the pke and attribution locators, and needs retain pairs to fit on.
    let e = locate(&ck.model, &ck.tok, &cases, &LocateSettings { locator: Locator::Dinm, ..s.clone() }, None, |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("intent layer rule") && e.contains("Dinm"), "{e}");
    let few = vec![("a benign question".to_string(), Some("a harmful one".to_string())); 3];
    let e = locate(&ck.model, &ck.tok, &cases, &LocateSettings { intent_retain: few, ..s }, None, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("at least 4 retain prompts with a harmful twin") && e.contains("got 3"), "{e}");
}

/// The intent map reads real structure. On SmolLM2, 24 validation look-alike pairs: one direction fitted
/// on half the pairs tells the other half's harmful twins from their benign sides well in the second half
/// of the network (0.84-0.90 on all 91 validation pairs, docs/validation.md), while the same prompts with
/// twin and benign side swapped at random within each pair (labels that carry no intent) stay near chance.
#[test]
fn intent_map_finds_intent_late_and_not_in_shuffled_labels() {
    use pke::data::probes::{builtin_probes, builtin_retain, split, Split};
    use pke::locate::intent::intent_map;
    let ck = smollm2();
    let pairs: Vec<(String, String)> =
        split(&builtin_probes(), Split::Validation).into_iter().filter_map(|p| p.harmful.map(|h| (p.benign, h))).take(24).collect();
    assert_eq!(pairs.len(), 24);
    let retain: Vec<(String, Option<String>)> = builtin_retain().into_iter().take(24).map(|p| (p.benign, p.harmful)).collect();
    // The default edit's cases (`--builtin advbench:8`).
    let cases: Vec<String> = pke::data::sets::builtin_cases("advbench", 8).unwrap().into_iter().map(|c| c.prompt).collect();
    // With the reads beyond one direction, and eight HarmBench validation behaviours scored against the
    // look-alikes' threshold.
    let harmful: Vec<String> = pke::data::sets::harmbench("val").unwrap().into_iter().take(8).collect();
    let wanted = pke::locate::intent::ReadsWanted { harmful: &harmful, shrink: 1.0 };
    let map = pke::locate::intent::intent_map_with(&ck.model, &ck.tok, &pairs, &cases, &retain, Some(wanted), true, &mut |_| {}).unwrap();
    assert_eq!(map.rows.len(), 3 * 30);
    assert_eq!((map.n_harmful, map.shrink, map.reads.len()), (8, Some(1.0), 3));
    assert_eq!((map.n_pairs, map.n_cases, map.n_retain_benign, map.n_retain_twins), (24, 8, 24, 24));
    for r in &map.rows {
        for x in [r.cases.auc, r.probes.auc, r.retain_twins.as_ref().unwrap().auc, r.probes.paired] {
            assert!((0.0..=1.0).contains(&x), "{r:?}");
        }
    }
    let late = |m: &pke::locate::intent::IntentMap| {
        m.rows.iter().filter(|r| r.site == "mlp_post" && r.layer >= 14).map(|r| r.probes.auc).fold(0.0, f64::max)
    };
    let best = late(&map);
    assert!(best > 0.75, "best late cross-fit AUC {best}");
    // Each row's difference-of-means read, refitted by the reads module on the same folds, is the map's
    // own cross-fit read. Fitted on training data (8 cases and 24 retain twins against 24 retain prompts),
    // shrinkage LDA reads the probes' intent better than the difference of means in the second half of
    // the network (mean AUC 0.84 against 0.70 here; on all 91 validation pairs, docs/validation.md).
    // With 12 fitted pairs per fold the cross-fit LDA is no better than the difference of means: it needs
    // more prompts than the directions it whitens.
    let read = |r: &pke::locate::intent::IntentRow, name: &str| r.reads.iter().find(|x| x.name == name).unwrap().clone();
    for r in &map.rows {
        let dm = read(r, pke::locate::reads::MEAN_DIFF);
        assert!((dm.probes.twins.auc - r.probes.auc).abs() < 1e-9 && (dm.probes.twins.paired - r.probes.paired).abs() < 1e-9, "{r:?}");
        assert!(dm.probes.harmful_at_5pct.is_some_and(|x| (0.0..=1.0).contains(&x)), "{r:?}");
    }
    let trained = |name: &str| {
        let v: Vec<f64> = map.rows.iter().filter(|r| r.layer >= 14).map(|r| read(r, name).training.unwrap().twins.auc).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    let (lda, dom) = (trained(pke::locate::reads::LDA), trained(pke::locate::reads::MEAN_DIFF));
    assert!(lda > dom + 0.08, "trained on the retain twins: LDA {lda} vs difference of means {dom}");
    // Cross-fitted on the retain pairs alone, the LDA read names a layer of the network's second half
    // (SmolLM2's MLP neurons read intent from layer 12 on; 14-22 within 0.02 of the best on all 48 pairs).
    let sl = map.suggested_lda_layer("mlp_post").unwrap();
    let rcf = read(sl, pke::locate::reads::LDA).retain_cross_fit.unwrap();
    assert!(sl.layer >= 12 && rcf.auc > 0.85, "suggested layer {} ({rcf:?})", sl.layer);
    assert!(map.markdown().contains(&format!("| mlp_post | {} | {:.2} |", sl.layer, rcf.auc)));
    // The intent layer rule's profile is that read, computed without the probes.
    let prof = pke::locate::intent::intent_layer_profile(&ck.model, &ck.tok, &cases, &retain, true, &mut |_| {}).unwrap();
    for r in map.rows.iter().filter(|r| r.site == "mlp_post") {
        let want = read(r, pke::locate::reads::LDA).retain_cross_fit.map(|x| x.auc);
        assert!(
            matches!((prof[r.layer], want), (Some(a), Some(b)) if (a - b).abs() < 1e-9),
            "layer {}: {:?} vs {want:?}",
            r.layer,
            prof[r.layer]
        );
    }
    let md = map.markdown();
    let best_row = map.best("mlp_post").unwrap();
    assert!(md.contains(&format!("| mlp_post | {} | {:.2} |", best_row.layer, best_row.probes.auc)), "{md}");
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ") && l.chars().nth(2).is_some_and(|c| c.is_ascii_digit())).count(),
        2 * 30,
        "a line per layer in the map and in the reads' table"
    );
    // From training data alone (the cases' direction on the retain set's own twins), the locator's layer
    // is a late one where the same direction also reads the probes' intent; at the located layer 11 it
    // reads none.
    let s = map.suggested_layer("mlp_post").unwrap();
    let on_retain = |r: &pke::locate::intent::IntentRow| r.cases_on_retain.as_ref().unwrap().auc;
    let l11 = map.rows.iter().find(|r| r.site == "mlp_post" && r.layer == 11).unwrap();
    assert!(
        s.layer >= 13 && on_retain(s) > 0.75 && s.cases.auc > 0.65,
        "suggested {} ({:.2}; probes {:.2})",
        s.layer,
        on_retain(s),
        s.cases.auc
    );
    assert!(
        on_retain(l11) < on_retain(s) - 0.2 && l11.cases.auc < s.cases.auc - 0.1,
        "layer 11 {:.2}; probes {:.2}",
        on_retain(l11),
        l11.cases.auc
    );
    assert!(md.contains(&format!("| mlp_post | {} | {:.2} |", s.layer, on_retain(s))), "{md}");
    assert!(md.contains("| one LDA over every site and layer | ") && md.contains("shrinkage LDA | "), "{md}");
    // Swap twin and benign in every other pair, seeded by position: the cross-fit direction then has no
    // consistent intent to learn.
    let shuffled: Vec<(String, String)> = pairs
        .iter()
        .enumerate()
        .map(|(i, (b, h))| if (i * 7 + 3) % 4 < 2 { (h.clone(), b.clone()) } else { (b.clone(), h.clone()) })
        .collect();
    let control = late(&intent_map(&ck.model, &ck.tok, &shuffled, &cases, &retain, true, &mut |_| {}).unwrap());
    assert!(control < best - 0.15, "shuffled labels {control} vs intent {best}");
    // A shrinkage that is not a positive number: an error naming it, before any forward pass.
    for bad in [0.0, -1.0, f64::NAN] {
        let w = pke::locate::intent::ReadsWanted { harmful: &harmful, shrink: bad };
        let e = pke::locate::intent::intent_map_with(&ck.model, &ck.tok, &pairs, &cases, &retain, Some(w), true, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("shrinkage must be a positive number") && e.contains(&format!("{bad}")), "{e}");
    }
    let few = intent_map(&ck.model, &ck.tok, &pairs[..3], &cases, &retain, true, &mut |_| {}).unwrap_err().to_string();
    assert!(few.contains("3 probe pairs") && few.contains("at least 4"), "{few}");
    // A prompt longer than the context: the project's context error, naming the prompt, before any forward.
    let mut long = pairs.clone();
    long[0].0 = "kill ".repeat(9000);
    let e = intent_map(&ck.model, &ck.tok, &long, &cases, &retain, true, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("does not fit the context of 8192 tokens") && e.contains("intent map prompt `kill kill"), "{e}");
}
