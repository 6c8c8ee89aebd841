//! `pke compare`: every arm is evaluated on the same sets, edits start from the same model, the vanilla
//! answers are the ROUGE-L reference, and the table and chart are written.

use pke::attack::{Attack, AttackSettings};
use pke::compare::{chart, compare, markdown, Arm, CompareSettings};
use pke::edit::{EditParams, Method};
use pke::eval::report::EvalSettings;
use pke::locate::LocateSettings;

fn tiny_eval() -> EvalSettings {
    EvalSettings {
        n_harmful: 1,
        n_jailbreak: 1,
        n_benign: 2,
        n_factual: 2,
        ppl_tokens: 32,
        max_new_tokens: 6,
        n_probes_per_category: 1,
        ..Default::default()
    }
}

/// A method's defaults, two steps; the held-out stop stays on in the pke arm, with four probes and 256
/// tokens of prose to keep the tests short.
fn short_params(m: Method) -> EditParams {
    EditParams { steps: 2, stop_probes: if m == Method::Pke { 4 } else { 0 }, stop_prose_tokens: 256, ..EditParams::defaults(m) }
}

#[test]
fn compare_runs_each_arm_on_the_same_sets() {
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("advbench", 1).unwrap();
    let s = CompareSettings {
        arms: vec![Arm::edit(Method::Pke, short_params(Method::Pke)), Arm::vanilla(), Arm::edit(Method::Ga, short_params(Method::Ga))],
        eval: tiny_eval(),
        locate: LocateSettings { chat: true, ..Default::default() },
        retain: Some(crate::common::small_retain()),
        repeats: 1,
        attacks: None,
        attack_dir: None,
    };
    let before = ck.model.get("model.layers.11.mlp.down_proj.weight").unwrap().to_vec2::<f32>().unwrap();
    let mut seen = vec![];
    let c = pke::compare::compare_with(
        ck,
        &cases,
        &s,
        |_, _| {},
        |so_far| {
            seen.push(so_far.rows.iter().map(|r| r.label.clone()).collect::<Vec<_>>());
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(seen, [vec!["vanilla"], vec!["vanilla", "pke"], vec!["vanilla", "pke", "ga"]], "one snapshot after each arm");
    assert_eq!(
        ck.model.get("model.layers.11.mlp.down_proj.weight").unwrap().to_vec2::<f32>().unwrap(),
        before,
        "the loaded model is untouched"
    );
    let labels: Vec<&str> = c.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["vanilla", "pke", "ga"], "vanilla runs first");
    let v = &c.rows[0];
    assert!(v.report.kl_to_base.is_none() && v.report.rouge_l_to_base.is_none() && v.changed_values == 0);
    let width = ck.model.spec.intermediate_size;
    let hidden = ck.model.spec.hidden_size;
    // pke's default, the intent gate: one repurposed neuron's gate_proj and up_proj rows and down_proj column.
    assert_eq!(c.rows[1].changed_values, 3 * hidden, "pke edits one neuron");
    assert_eq!(c.rows[2].changed_values, width * hidden, "ga edits the whole down_proj");
    for r in &c.rows[1..] {
        assert!(r.edit_seconds > 0.0 && r.locate_seconds > 0.0);
        assert_eq!(r.delta_sha256.as_ref().map(|h| h.len()), Some(64));
        assert!(r.report.kl_to_base.as_ref().unwrap().value > 0.0, "{} changed the model", r.label);
        assert!(r.report.rouge_l_to_base.is_some());
        // Same prompts for every arm.
        let prompts = |x: &pke::compare::CompareRow| x.report.samples.iter().map(|s| s.prompt.clone()).collect::<Vec<_>>();
        assert_eq!(prompts(r), prompts(v));
    }
    // Every arm has each rate with its interval, p-values against the other arms where they exist, and
    // the counts behind them.
    for r in &c.rows {
        let asr = r.rates.iter().find(|x| x.metric == "ASR").expect("ASR rate");
        assert_eq!(asr.n, r.report.asr.n);
        assert!((asr.value - r.report.asr.overall).abs() < 1e-12);
        assert!(asr.ci_low <= asr.value && asr.value <= asr.ci_high && asr.ci_high > asr.ci_low);
        let la = r.rates.iter().find(|x| x.metric == "look-alike over-refusal").expect("look-alike rate");
        assert_eq!(la.n, r.report.lookalike.as_ref().unwrap().n_benign);
        assert_eq!(asr.p_vs_vanilla.is_some(), r.label != "vanilla");
        assert_eq!(asr.p_vs_pke.is_some(), r.label != "pke");
        assert!(asr.p_vs_vanilla.is_none_or(|p| (0.0..=1.0).contains(&p)));
    }
    let md = markdown(&c);
    assert!(md.contains("95% Wilson intervals") && md.contains("p vs pke"), "{md}");
    assert!(md.contains("ASR per harm category"), "{md}");
    // The gated default reports where its read fires (from the delta); the other arms have no gate, and
    // none has a null space.
    assert_eq!(c.rows.iter().map(|r| r.gate.len()).collect::<Vec<_>>(), [0, 1, 0]);
    assert_eq!(c.rows[1].gate[0].layer, 11);
    assert!(md.contains("- pke: intent gate: neuron") && md.contains("of layer 11 repurposed"), "{md}");
    assert!(c.rows.iter().all(|r| r.preserve.is_empty()));
    for l in labels {
        assert!(md.contains(&format!("| {l} |")), "{md}");
    }
    // How each edit ended, with its per-step log, which reads back from compare.json.
    assert!(c.rows[0].stop.is_empty() && c.rows[0].edit_log.is_empty());
    for r in &c.rows[1..] {
        assert_eq!(r.edit_log.iter().filter(|e| !e.reverted).count(), r.steps_run);
        assert!(r.stop.starts_with(&format!("{} steps kept, ended by", r.steps_run)), "{}", r.stop);
        assert!(md.contains(&format!("- {}: {}", r.label, r.stop)), "{md}");
    }
    assert!(c.rows[1].edit_log.iter().all(|e| e.watch.is_some()), "the pke arm reads the held-out probes");
    let back: pke::compare::Comparison = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back.rows[2].edit_log.len(), c.rows[2].edit_log.len());
    let dir = tempfile::tempdir().unwrap();
    chart(&c, &dir.path().join("c.svg")).unwrap();
    assert!(std::fs::read_to_string(dir.path().join("c.svg")).unwrap().contains("<svg"));
}

#[test]
fn compare_bad_inputs_are_clear_errors() {
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("advbench", 1).unwrap();
    let s = CompareSettings {
        arms: vec![Arm::vanilla()],
        eval: tiny_eval(),
        locate: LocateSettings { chat: true, ..Default::default() },
        retain: Some(crate::common::small_retain()),
        repeats: 1,
        attacks: None,
        attack_dir: None,
    };
    let e = compare(ck, &[], &s, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("no edit cases"), "{e}");
    let e = compare(ck, &cases, &CompareSettings { arms: vec![], ..s.clone() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("no methods"), "{e}");
    let e = compare(ck, &cases, &CompareSettings { locate: LocateSettings::default(), ..s.clone() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("chat template"), "{e}");
    let e = compare(ck, &cases, &CompareSettings { repeats: 0, ..s.clone() }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("at least 1"), "{e}");
    // Attack settings are checked before the first arm.
    let bad =
        |a: AttackSettings| compare(ck, &cases, &CompareSettings { attacks: Some(a), ..s.clone() }, |_, _| {}).unwrap_err().to_string();
    let e = bad(AttackSettings { attacks: vec![], ..Default::default() });
    assert!(e.contains("no attacks chosen"), "{e}");
    let e = bad(AttackSettings { attacks: vec![Attack::Jailbreak], jailbreak_per_family: 0, ..Default::default() });
    assert!(e.contains("at least one template per family"), "{e}");
    let e = bad(AttackSettings { attacks: vec![Attack::Requant], requant_types: vec!["q9_9".into()], ..Default::default() });
    assert!(e.contains("q9_9"), "{e}");
    let edit = vec![Arm::vanilla(), Arm::edit(Method::Pke, EditParams::defaults(Method::Pke))];
    let e = compare(ck, &cases, &CompareSettings { repeats: 2, arms: edit, ..s }, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("--repeats 2 needs at least 2 edit cases") && e.contains("there are 1"), "{e}");
}

/// `repeats`: each editing arm once per disjoint case subset, with its own seed; rows LABEL and LABEL@r2,
/// and the per-rate mean and spread over them.
#[test]
fn repeats_edit_disjoint_case_subsets_and_summarize() {
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("advbench", 2).unwrap();
    let p = EditParams { steps: 2, stop_probes: 0, ..EditParams::defaults(Method::Pke) };
    let s = CompareSettings {
        arms: vec![Arm::vanilla(), Arm::edit(Method::Pke, p)],
        eval: tiny_eval(),
        locate: LocateSettings { chat: true, ..Default::default() },
        retain: Some(crate::common::small_retain()),
        repeats: 2,
        attacks: None,
        attack_dir: None,
    };
    let c = compare(ck, &cases, &s, |_, _| {}).unwrap();
    let labels: Vec<&str> = c.rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, vec!["vanilla", "pke", "pke@r2"]);
    // One case each: two different edits.
    assert_ne!(c.rows[1].delta_sha256, c.rows[2].delta_sha256);
    let asr = c.repeats.iter().find(|x| x.label == "pke" && x.metric == "ASR").unwrap();
    let per_row: Vec<f64> = c.rows[1..].iter().map(|r| r.report.asr.overall).collect();
    assert_eq!(asr.values, per_row);
    assert!((asr.mean - (per_row[0] + per_row[1]) / 2.0).abs() < 1e-12);
    assert!((asr.sd - (per_row[0] - per_row[1]).abs() / 2f64.sqrt()).abs() < 1e-12);
    assert!(c.repeats.iter().any(|x| x.metric == "perplexity" && x.values.len() == 2));
    assert!(markdown(&c).contains("Repeats: each editing arm on 2 disjoint case subsets"));
}

/// SafeEdit's per-instance protocol on built-in SafeEdit-style cases: five judged replies per side, the
/// summary is the share of safe labels, and cases without generalization inputs are refused.
#[test]
fn per_instance_judges_five_inputs_per_case() {
    use pke::compare::{per_instance, SAFEEDIT_INPUTS};
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("safeedit-style", 2).unwrap();
    let arms = vec![Arm::vanilla(), Arm::edit(Method::Pke, EditParams { steps: 2, stop_probes: 0, ..EditParams::defaults(Method::Pke) })];
    let loc = LocateSettings { chat: true, ..Default::default() };
    let retain = crate::common::small_retain();
    let runs = per_instance(ck, &cases, &arms, &tiny_eval(), &loc, Some(&retain), |_, _, _| {}).unwrap();
    assert_eq!(runs.len(), 1, "vanilla is the `pre` side, not a run");
    let r = &runs[0];
    assert_eq!(r.records.len(), 2);
    for rec in &r.records {
        assert_eq!(rec.vanilla.len(), 5);
        assert_eq!(rec.edited.len(), 5);
        assert!(SAFEEDIT_INPUTS.iter().all(|k| rec.edited.contains_key(*k)));
        assert!(rec.time > 0.0 && !rec.layers.is_empty());
    }
    let safe = |k: &str| r.records.iter().filter(|x| x.edited[k].label == "safe").count() as f64 / 2.0;
    assert_eq!(r.post.ds, safe("DS"));
    assert_eq!(r.post.dg_other_aq, safe("DG_otherAQ"));
    let plain = pke::data::sets::builtin_cases("advbench", 1).unwrap();
    let e = per_instance(ck, &plain, &arms, &tiny_eval(), &loc, Some(&retain), |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("generalization inputs") && e.contains("safeedit-style"), "{e}");
}

/// `attacks`: every editing arm is attacked beside the unedited model in the same run; the unedited
/// model's side is run once (identical rows in every arm's report) and its unattacked rows are the
/// comparison's own evaluations.
#[test]
fn compare_attacks_every_editing_arm_and_runs_the_vanilla_side_once() {
    let ck = crate::common::smollm2();
    let cases = pke::data::sets::builtin_cases("advbench", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Requant's own behaviour is tested in attack.rs; here the cheap attacks show the plumbing.
    let attacks = AttackSettings { attacks: vec![Attack::Prefill, Attack::Jailbreak], jailbreak_per_family: 1, ..Default::default() };
    let s = CompareSettings {
        arms: vec![Arm::vanilla(), Arm::edit(Method::Pke, short_params(Method::Pke)), Arm::edit(Method::Ga, short_params(Method::Ga))],
        eval: EvalSettings { n_prefill: 2, ..tiny_eval() },
        locate: LocateSettings { chat: true, ..Default::default() },
        retain: Some(crate::common::small_retain()),
        repeats: 1,
        attacks: Some(attacks),
        attack_dir: Some(dir.path().join("requant")),
    };
    let mut calls = Vec::new();
    let c = compare(ck, &cases, &s, |arm, m| calls.push(format!("{arm}: {m}"))).unwrap();
    assert_eq!(c.attacks.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(), ["pke", "ga"]);
    let vanilla_rows = |r: &pke::attack::AttackReport| {
        r.rows.iter().filter(|x| x.model == "vanilla").map(|x| (x.attack.clone(), x.asr.value, x.asr.n)).collect::<Vec<_>>()
    };
    let (a, b) = (&c.attacks[0].report, &c.attacks[1].report);
    assert_eq!(vanilla_rows(a), vanilla_rows(b), "one vanilla side for both arms");
    for key in ["none", "prefill", "jailbreak:classic"] {
        assert!(
            a.rows.iter().any(|x| x.attack == key && x.model == "edited"),
            "{key}: {:?}",
            a.rows.iter().map(|x| &x.attack).collect::<Vec<_>>()
        );
    }
    // The unattacked rows are the comparison's evaluations (same prompts, same verdicts).
    let none = |r: &pke::attack::AttackReport, m: &str| r.reports[&format!("none/{m}")].asr.overall;
    assert_eq!(none(a, "vanilla"), c.rows[0].report.asr.overall);
    assert_eq!(none(a, "edited"), c.rows[1].report.asr.overall);
    assert_eq!(none(b, "edited"), c.rows[2].report.asr.overall);
    // Evaluated with the prefill attack (on the evaluation's HarmBench behaviours: min(n_prefill, n_harmful)).
    assert_eq!(c.rows[0].report.samples.iter().filter(|x| x.set.starts_with("prefill")).count(), 1);
    assert!(c.rows[0].report.asr.prefilled.is_some() && c.rows[2].report.asr.prefilled.is_some());
    // The vanilla model's jailbreak replies were generated once: only the first arm's progress says so.
    assert_eq!(
        calls
            .iter()
            .filter(|m| m.contains("jailbreak classic vanilla"))
            .map(|m| m.split(':').next().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1
    );
    let md = markdown(&c);
    assert!(md.contains("## Attacks") && md.contains("| attack | vanilla | pke | ga |") && md.contains("| jailbreak:classic |"), "{md}");
}
