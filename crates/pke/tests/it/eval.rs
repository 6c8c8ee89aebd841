//! `pke eval`: the report has every metric with its set and size, KL to itself is zero, and bad inputs
//! (incomparable base, chat without a template, empty prompt files, zero sizes) are clear errors.

use pke::eval::report::{evaluate, EvalSettings};

fn small() -> EvalSettings {
    EvalSettings { n_harmful: 2, n_benign: 2, n_factual: 4, ppl_tokens: 64, max_new_tokens: 8, ..Default::default() }
}

#[test]
fn report_has_every_metric_and_kl_to_itself_is_zero() {
    let ck = crate::common::smollm2();
    let r = evaluate(ck, Some(ck), &small(), |_| {}).unwrap();
    assert_eq!(r.asr.n, 4);
    assert_eq!(r.asr.per_set.len(), 2);
    assert!((0.0..=1.0).contains(&r.asr.overall));
    assert_eq!(r.over_refusal.n, 2);
    assert!(r.perplexity.value > 1.0 && r.perplexity.value < 1000.0, "{}", r.perplexity.value);
    assert_eq!(r.factual_accuracy.n, 4);
    assert!(r.fluency.value > 0.0);
    assert!(r.kl_to_base.as_ref().unwrap().value.abs() < 1e-6);
    assert_eq!(r.judge_validation.len(), 2);
    assert_eq!(r.samples.len(), 6);
    let v = serde_json::to_value(&r).unwrap();
    for k in ["asr", "over_refusal", "perplexity", "kl_to_base", "factual_accuracy", "fluency", "judge_validation"] {
        assert!(!v[k].is_null(), "{k}");
    }
}

#[test]
fn bad_eval_inputs_are_clear_errors() {
    let (smol, gemma) = (crate::common::smollm2(), crate::common::gemma());
    let e = evaluate(smol, Some(gemma), &small(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("not comparable"), "{e}");
    let e = evaluate(gemma, None, &small(), |_| {}).unwrap_err().to_string();
    assert!(e.contains("no chat template"), "{e}");
    let e = evaluate(smol, None, &EvalSettings { n_harmful: 0, ..small() }, |_| {}).unwrap_err().to_string();
    assert!(e.contains("no harmful prompts"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("prompts.jsonl");
    std::fs::write(&f, "\n\n").unwrap();
    let e = evaluate(smol, None, &EvalSettings { extra_harmful: vec![f.clone()], ..small() }, |_| {}).unwrap_err().to_string();
    assert!(e.contains("prompts.jsonl") && e.contains("no prompts"), "{e}");
    std::fs::write(&f, "{\"nope\": 1}\n").unwrap();
    let e = evaluate(smol, None, &EvalSettings { extra_harmful: vec![f], ..small() }, |_| {}).unwrap_err().to_string();
    assert!(e.contains("prompts.jsonl:1"), "{e}");
}
