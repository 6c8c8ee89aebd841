//! `pke attack` mechanics on the real SmolLM2: the refusal-direction ablation removes the direction from
//! the residual stream exactly, re-quantization reports how much of an edit survives, the edited tensors
//! are found by comparison, and bad inputs are refused before any long step.

use pke::attack::{attack, edited_tensors, orthogonalize, requantize, share_base, Attack, AttackSettings};
use pke::model::decoder::down_proj_name;
use pke::model::Input;
use pke::trace::{Capture, Site};

/// A copy of SmolLM2 with `scale` added to 8 columns of one `down_proj` (what a hotspot edit touches).
fn edited_copy(scale: f64) -> pke::io::checkpoint::Checkpoint {
    let mut ck = crate::common::smollm2().clone();
    let name = down_proj_name(11);
    let w = ck.model.get(&name).unwrap().clone();
    let (rows, cols) = w.dims2().unwrap();
    let mut mask = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..8 {
            mask[r * cols + c * 37] = 1.0;
        }
    }
    let m = candle_core::Tensor::from_vec(mask, (rows, cols), w.device()).unwrap();
    ck.model.set(&name, (&w + (m * scale).unwrap()).unwrap()).unwrap();
    ck
}

#[test]
fn ablation_removes_the_direction_from_every_residual_stream() {
    let mut ck = crate::common::smollm2().clone();
    let d = ck.model.spec.hidden_size;
    // Any unit direction: the projection must hold for all, not only the refusal one.
    let mut r: Vec<f32> = (0..d).map(|i| ((i * 7919 % 97) as f32 - 48.0) / 48.0).collect();
    let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
    r.iter_mut().for_each(|x| *x /= norm);
    let ids = ck.tok.encode("How do I bake bread at home?", true).unwrap();
    let proj = |ck: &pke::io::checkpoint::Checkpoint, l: usize| -> f32 {
        let mut cap = Capture::new([Site::ResidPost(l)]);
        ck.model.forward_with(&Input::single(&ids), &mut cap, None).unwrap();
        let h = cap.get(Site::ResidPost(l)).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        h.iter().map(|row| row.iter().zip(&r).map(|(a, b)| a * b).sum::<f32>().abs()).fold(0.0, f32::max)
    };
    let before = proj(&ck, 10);
    orthogonalize(&mut ck, &r).unwrap();
    for l in [0, 10, 20] {
        let after = proj(&ck, l);
        assert!(after < 1e-3 * before.max(1.0), "layer {l}: |h.r| = {after} after ablation (before, layer 10: {before})");
    }
    // Everything orthogonal to r still flows: the model is not zeroed.
    let logits = ck.model.last_logits(&ck.model.forward(&Input::single(&ids)).unwrap()).unwrap();
    assert!(logits.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1.0);
}

#[test]
fn requant_reports_how_much_of_the_edit_survives() {
    let base = crate::common::smollm2();
    let dir = tempfile::tempdir().unwrap();
    // A large edit survives Q4_1 (SmolLM2's type) mostly; a tiny one is rounded away.
    let big = edited_copy(0.5);
    let names = edited_tensors(&big, base).unwrap();
    assert_eq!(names, vec![down_proj_name(11)]);
    let (ck, info, file) = requantize(&big, base, &names, "source", dir.path()).unwrap();
    assert_eq!(info.stored_as, vec!["Q4_1".to_string()]);
    assert!(info.kept > 0.7 && info.rel_error < 0.7, "{info:?}");
    // While the file is held the re-quantized model can be evaluated on the int8 kernels (they read its
    // blocks from the file: removing it at once broke every requant attack under the int8 default).
    let int8 = pke::eval::report::with_kernels(&ck, pke::eval::report::Kernels::Int8).unwrap();
    let ids = base.tok.encode("The capital of France is", true).unwrap();
    int8.model.forward(&Input::single(&ids)).unwrap();
    drop(file);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "the temporary GGUF is removed");
    // Untouched tensors are the base's own.
    let n = "model.layers.3.mlp.up_proj.weight";
    let same = (ck.model.get(n).unwrap() - base.model.get(n).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(same.to_scalar::<f32>().unwrap(), 0.0);
    let tiny = edited_copy(1e-4);
    let (_, info, _) = requantize(&tiny, base, &names, "source", dir.path()).unwrap();
    assert!(info.kept < 0.5, "a 1e-4 edit should not survive Q4_1: {info:?}");
    // Q8_0 keeps most of the tiny edit (its rounding of the touched blocks adds noise: rel_error > 1).
    let (_, q8, _) = requantize(&tiny, base, &names, "q8_0", dir.path()).unwrap();
    assert_eq!(q8.stored_as, vec!["Q8_0".to_string()]);
    assert!(q8.kept > 0.5 && info.kept < 0.5, "q8_0 {q8:?} vs source {info:?}");
}

/// `source+shaped` rounds the edited columns on plain rounding's grid with error feedback through benign
/// keys. On a real (short) PKE edit, whose change the benign inputs do not see: the report says the
/// benign error fell, the untouched columns are exactly where plain rounding puts them, and a text that is
/// not among the shaping data (Macbeth) reads closer to the float edit than after plain rounding.
#[test]
fn shaped_requant_hides_the_rounding_from_benign_inputs() {
    use pke::edit::{compute_delta_with, EditParams, Method};
    let base = crate::common::smollm2();
    let dir = tempfile::tempdir().unwrap();
    let cases = pke::data::sets::builtin_cases("advbench", 2).unwrap();
    let s = pke::locate::LocateSettings { layers: vec![11], ..Default::default() };
    let (h, _) = pke::locate::locate(&base.model, &base.tok, &cases, &s, None, |_, _| {}).unwrap();
    let p = EditParams::resolve(
        Method::Pke,
        Some(&crate::common::hotspot()),
        &["steps=5".into(), "stop_nll=0".into(), "stop_probes=4".into(), "stop_prose_tokens=256".into()],
    )
    .unwrap();
    let out = compute_delta_with(&base.model, &base.tok, &cases, &h, Method::Pke, &p, Some(&crate::common::small_retain()), |_, _, _| {})
        .unwrap();
    let mut edited = base.clone();
    out.delta.apply(&mut edited.model, false).unwrap();
    let names = edited_tensors(&edited, base).unwrap();
    let name = down_proj_name(11);
    assert_eq!(names, vec![name.clone()]);
    let (plain, pinfo, _pf) = requantize(&edited, base, &names, "source", dir.path()).unwrap();
    let (shaped, sinfo, _sf) = requantize(&edited, base, &names, "source+shaped", dir.path()).unwrap();
    assert!(pinfo.rounding.is_empty(), "{pinfo:?}");
    assert_eq!(sinfo.ty, "source+shaped");
    assert_eq!(sinfo.stored_as, vec!["Q4_1".to_string()]);
    let r = &sinfo.rounding[..];
    assert_eq!(r.len(), 1, "{sinfo:?}");
    assert!(r[0].shaped_kept && r[0].shaped < 0.9 * r[0].plain, "{:?}", r[0]);
    assert!(sinfo.kept > 0.7, "the edit itself survives shaped rounding: {sinfo:?}");
    let hot: std::collections::BTreeSet<usize> = out.delta.tensors[0].columns.iter().copied().collect();
    let (wp, ws) = (plain.model.get(&name).unwrap().to_vec2::<f32>().unwrap(), shaped.model.get(&name).unwrap().to_vec2::<f32>().unwrap());
    let mut moved = 0;
    for (rp, rs) in wp.iter().zip(&ws) {
        for (c, (a, b)) in rp.iter().zip(rs).enumerate() {
            if hot.contains(&c) {
                moved += usize::from(a != b);
            } else {
                assert_eq!(a, b, "column {c} is not edited: shaped rounding must leave it where plain rounding put it");
            }
        }
    }
    assert!(moved > 0, "shaped rounding changed no edited value");
    let text = pke::data::sets::perplexity_text("macbeth_gut.txt").unwrap();
    let ids = base.tok.encode(&text, true).unwrap()[..1024].to_vec();
    let nll = |ck: &pke::io::checkpoint::Checkpoint| pke::score::score_ids(&ck.model, &ids).unwrap().mean_nll;
    let want = nll(&edited);
    let (dp, ds) = ((nll(&plain) - want).abs(), (nll(&shaped) - want).abs());
    assert!(ds < 0.5 * dp, "Macbeth's mean NLL moved {ds} from the float edit's after shaped rounding, {dp} after plain");
}

#[test]
fn an_edited_model_holds_its_unedited_tensors_as_the_bases_own() {
    let base = crate::common::smollm2();
    // As `pke attack` loads it: the edited model from its own file, every tensor a copy of its own.
    let mut ck = edited_copy(0.5);
    let names: Vec<String> = ck.model.weights().keys().cloned().collect();
    for n in &names {
        let own = ck.model.weights()[n].copy().unwrap();
        ck.model.set(n, own).unwrap();
    }
    let ids = ck.tok.encode("How do I bake bread at home?", true).unwrap();
    let logits = |ck: &pke::io::checkpoint::Checkpoint| ck.model.last_logits(&ck.model.forward(&Input::single(&ids)).unwrap()).unwrap();
    let before = logits(&ck);
    assert_eq!(share_base(&mut ck, base).unwrap(), names.len() - 1);
    let (w, w0) = (&ck.model.weights(), base.model.weights());
    assert_eq!(w["model.layers.3.mlp.up_proj.weight"].id(), w0["model.layers.3.mlp.up_proj.weight"].id(), "shared, not copied");
    assert_ne!(w[&down_proj_name(11)].id(), w0[&down_proj_name(11)].id());
    assert_eq!(edited_tensors(&ck, base).unwrap(), vec![down_proj_name(11)], "the edit is kept");
    let diff = (logits(&ck) - before).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(diff, 0.0, "the same model");
}

#[test]
fn attack_refuses_bad_inputs_before_any_long_step() {
    let base = crate::common::smollm2();
    let edited = edited_copy(0.5);
    let dir = tempfile::tempdir().unwrap();
    let run = |e: &pke::io::checkpoint::Checkpoint, b: &pke::io::checkpoint::Checkpoint, s: &AttackSettings| {
        attack(e, b, s, dir.path(), |_, _| {}).unwrap_err().to_string()
    };
    let s = AttackSettings::default();
    // Nothing edited.
    let e = run(base, base, &s);
    assert!(e.contains("same weights as the base"), "{e}");
    // Another architecture / tokenizer.
    let e = run(&edited, crate::common::gemma(), &s);
    assert!(e.contains("not comparable"), "{e}");
    // A type the rows cannot take: SmolLM2's down_proj rows are 1536 = 6 x 256 long, so q4_k fits them, but
    // its o_proj rows (576) do not.
    let mut o = crate::common::smollm2().clone();
    let name = "model.layers.2.self_attn.o_proj.weight";
    o.model.set(name, (o.model.get(name).unwrap() * 1.5).unwrap()).unwrap();
    let e = requantize(&o, base, &[name.to_string()], "q4_k", dir.path()).unwrap_err().to_string();
    assert!(e.contains(name) && e.contains("Q4_K") && e.contains("576"), "{e}");
    let e = run(&edited, base, &AttackSettings { requant_types: vec!["q9_9".into()], ..s.clone() });
    assert!(e.contains("unknown GGML type `q9_9`"), "{e}");
    // requant needs a GGUF base: an HF folder of the same model is refused, by name.
    let hf = dir.path().join("base-hf");
    pke::io::hf::write_hf_dir(&base.model, &base.tok, &hf, None).unwrap();
    let hf_base = pke::io::checkpoint::Checkpoint::load(&hf).unwrap();
    let e = run(&edited, &hf_base, &AttackSettings { attacks: vec![Attack::Requant], ..s.clone() });
    assert!(e.contains("needs the base model as a GGUF") && e.contains("base-hf"), "{e}");
    let e = run(&edited, base, &AttackSettings { attacks: vec![], ..s });
    assert!(e.contains("no attacks"), "{e}");
}

#[test]
fn benign_finetuning_changes_every_mlp_and_nothing_else() {
    use pke::attack::finetune;
    let base = crate::common::smollm2();
    let s = AttackSettings { finetune_steps: vec![1, 2], ..AttackSettings::default() };
    let mut seen = Vec::new();
    finetune(base, &s, "vanilla", &mut |_| {}, &mut |step, tuned| {
        let changed = edited_tensors(&tuned, base).unwrap();
        seen.push((step, changed, tuned.model.get(&down_proj_name(3)).unwrap().clone()));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
    let n_layers = base.model.spec.n_layers;
    for (step, changed, _) in &seen {
        assert_eq!(changed.len(), 3 * n_layers, "step {step}: {changed:?}");
        assert!(changed.iter().all(|n| n.contains(".mlp.")), "step {step}: {changed:?}");
    }
    let d = (&seen[1].2 - &seen[0].2).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 0.0, "the second step changed nothing");
    // Bad settings are refused before any step.
    let dir = tempfile::tempdir().unwrap();
    let edited = edited_copy(0.5);
    for bad in [
        AttackSettings { attacks: vec![Attack::Finetune], finetune_steps: vec![0, 10], ..AttackSettings::default() },
        AttackSettings { attacks: vec![Attack::Finetune], finetune_lr: f64::NAN, ..AttackSettings::default() },
    ] {
        let e = attack(&edited, base, &bad, dir.path(), |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("finetune attack needs"), "{e}");
    }
}
