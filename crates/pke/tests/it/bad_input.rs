//! Bad input gives a clear error naming the file, field or value, and never a panic.

use pke::io::checkpoint::{resolve_model, Checkpoint};
use pke::io::gguf::GgufFile;

fn err_of<T: std::fmt::Debug>(r: pke::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn missing_model_file_is_named() {
    let e = err_of(resolve_model("/nonexistent/model.gguf"));
    assert!(e.contains("/nonexistent/model.gguf") && e.contains("aliases"), "{e}");
}

#[test]
fn missing_installed_model_names_the_setup_command() {
    let dir = tempfile::tempdir().unwrap();
    let e = err_of(pke::io::checkpoint::resolve_model_in("qwen2.5-0.5b", dir.path()));
    assert!(e.contains("scripts/setup.sh qwen2.5-0.5b") && e.contains("make setup"), "{e}");
}

#[test]
fn not_a_gguf_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    std::fs::write(&p, b"this is not a model file at all").unwrap();
    let e = err_of(GgufFile::open(&p));
    assert!(e.contains("x.gguf") && e.contains("not a GGUF"), "{e}");
}

#[test]
fn truncated_gguf_is_rejected_with_the_tensor_named() {
    let src = resolve_model("smollm2").unwrap();
    let bytes = std::fs::read(&src).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for cut in [bytes.len() - 1000, 200_000, 64] {
        let p = dir.path().join(format!("cut{cut}.gguf"));
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = err_of(GgufFile::open(&p));
        assert!(e.contains(&format!("cut{cut}.gguf")) && (e.contains("truncated") || e.contains("malformed")), "{e}");
    }
}

#[test]
fn unknown_architecture_is_named_with_the_supported_list() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}"#).unwrap();
    let e = err_of(Checkpoint::load(dir.path()));
    assert!(e.contains("GPT2LMHeadModel") && e.contains("qwen2"), "{e}");
}

#[test]
fn malformed_config_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
    let e = err_of(Checkpoint::load(dir.path()));
    assert!(e.contains("config.json") && e.contains("malformed JSON"), "{e}");
}

#[test]
fn empty_and_overlong_prompts_are_errors() {
    // A tiny random model with a 64-token context keeps this cheap; the checks happen before any compute.
    let m = pke::model::Decoder::random(crate::grad::tiny_spec(pke::model::Arch::Llama), 1).unwrap();
    let e = err_of(pke::generate::generate(&m, &[vec![]], 0, &Default::default()));
    assert!(e.contains("empty"), "{e}");
    let e = err_of(m.forward(&pke::model::Input::single(&[])));
    assert!(e.contains("empty"), "{e}");
    let ctx = m.spec.max_position_embeddings;
    let long = vec![3u32; ctx + 10];
    let e = err_of(m.forward(&pke::model::Input::single(&long)));
    assert!(e.contains("74 tokens does not fit the context of 64"), "{e}");
    let opts = pke::generate::GenOpts { max_new_tokens: 4, ..Default::default() };
    let e = err_of(pke::generate::generate(&m, std::slice::from_ref(&long), 0, &opts));
    assert!(e.contains("does not fit the context") && e.contains("left truncation"), "{e}");
    // Documented left truncation keeps the last (ctx - max_new_tokens) prompt tokens.
    let opts = pke::generate::GenOpts { max_new_tokens: 4, truncate_left: true, ..Default::default() };
    let g = pke::generate::generate(&m, std::slice::from_ref(&long), 0, &opts).unwrap();
    assert_eq!(g[0].truncated, 14);
    assert_eq!(g[0].token_ids.len(), 4);
    // Long texts are scored in windows instead of failing.
    let s = pke::score::score_ids_windowed(&m, &long, ctx).unwrap();
    assert_eq!(s.logprobs.len(), long.len() - 1);
    assert_eq!(s.window, Some(ctx));
    // Token ids outside the vocabulary are named.
    let e = err_of(m.forward(&pke::model::Input::single(&[1, 999])));
    assert!(e.contains("999"), "{e}");
}

#[test]
fn real_model_rejects_overlong_input_before_computing() {
    let ck = crate::common::smollm2();
    let long = vec![42u32; ck.model.spec.max_position_embeddings + 1];
    let t = std::time::Instant::now();
    let e = err_of(ck.model.forward(&pke::model::Input::single(&long)));
    assert!(e.contains("8193 tokens does not fit the context of 8192"), "{e}");
    assert!(t.elapsed().as_secs() < 5, "the check must come before any compute");
}

#[test]
fn gguf_with_unknown_architecture_or_missing_key_is_named() {
    use candle_core::quantized::gguf_file::{write, Value};
    let dir = tempfile::tempdir().unwrap();
    let write_meta = |name: &str, meta: &[(&str, Value)]| {
        let p = dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        write(&mut f, &refs, &[]).unwrap();
        p
    };
    let p = write_meta("gpt2.gguf", &[("general.architecture", Value::String("gpt2".into()))]);
    let e = err_of(Checkpoint::load(&p));
    assert!(e.contains("gpt2") && e.contains("gpt2.gguf") && e.contains("llama, mistral"), "{e}");
    let p = write_meta("nokey.gguf", &[("general.architecture", Value::String("llama".into())), ("llama.block_count", Value::U32(2))]);
    let e = err_of(Checkpoint::load(&p));
    assert!(e.contains("llama.embedding_length") && e.contains("nokey.gguf"), "{e}");
}

/// The null-space edit needs benign keys beyond the first position: none at all, and only single-token
/// sequences (whose one position is the protected sink), are clear errors naming what is missing.
#[test]
fn null_space_without_usable_benign_sequences_is_a_clear_error() {
    use pke::edit::preserve::projectors;
    let m = pke::model::Decoder::random(crate::grad::tiny_spec(pke::model::Arch::Llama), 3).unwrap();
    let targets = vec![("model.layers.1.mlp.down_proj.weight".to_string(), 1usize, vec![0usize, 4, 9])];
    let harmful = vec![vec![1u32, 5, 9, 3]];
    let e = err_of(projectors(&m, &targets, &[], &harmful, 0.95, true, 0.0));
    assert!(e.contains("no benign sequences"), "{e}");
    let single = vec![(vec![1u32], None), (vec![7u32], Some(0))];
    let e = err_of(projectors(&m, &targets, &single, &harmful, 0.95, true, 0.0));
    assert!(e.contains("single token"), "{e}");
    // With real sequences it works and leaves some directions free.
    let ok = vec![(vec![1u32, 5, 9, 3, 17], None), (vec![1u32, 8, 2, 30], Some(2))];
    let p = projectors(&m, &targets, &ok, &harmful, 0.5, true, 0.0).unwrap();
    assert_eq!(p.len(), 1);
    assert!(p[0].summary.free_dims >= 1 && p[0].summary.free_dims < 3, "{:?}", p[0].summary);
    let e = err_of(projectors(&m, &targets, &ok, &harmful, 0.5, true, 1.0));
    assert!(e.contains("preserve_last must be in [0, 1), got 1"), "{e}");
}

type NullSpaceInputs = (pke::model::Decoder, Vec<(String, usize, Vec<usize>)>, Vec<(Vec<u32>, Option<usize>)>, Vec<Vec<u32>>);

/// A random tiny decoder, 12 `down_proj` columns of layer 1 to edit, four 25-token benign sequences whose
/// prompts end at tokens 3-6, and one harmful prompt.
fn twelve_columns_four_prompts() -> NullSpaceInputs {
    let m = pke::model::Decoder::random(crate::grad::tiny_spec(pke::model::Arch::Llama), 3).unwrap();
    let targets = vec![("model.layers.1.mlp.down_proj.weight".to_string(), 1usize, (0..12).collect::<Vec<usize>>())];
    let benign = (0..4u32).map(|i| ((0..25).map(|j| (i * 7 + j * 3) % 30 + 1).collect(), Some(3 + i as usize))).collect();
    (m, targets, benign, vec![vec![1u32, 5, 9, 3]])
}

/// `preserve_whiten`: the basis turns within the free directions (the projector onto them is the same), the
/// step weights lie in (0, 1], and a direction the benign keys vary along is damped more than a quiet one
/// (the weighted step reaches less of the benign keys' energy than of an even spread); bad shrinks and an
/// empty benign set are clear errors.
#[test]
fn whitening_turns_the_free_basis_and_damps_where_benign_keys_vary() {
    use pke::edit::preserve::{projectors, whiten};
    let (m, targets, benign, harmful) = twelve_columns_four_prompts();
    let mut p = projectors(&m, &targets, &benign, &harmful, 0.5, true, 0.0).unwrap();
    let before = p[0].basis.matmul(&p[0].basis.t().unwrap()).unwrap();
    let f = p[0].summary.free_dims;
    assert!(p[0].summary.whitened.is_none());
    // One update of ones in every free coordinate, before whitening: its energy on the benign keys.
    let u = candle_core::Tensor::ones((1, f), candle_core::DType::F32, m.device()).unwrap();
    for bad in [0.0, -1.0, f64::NAN] {
        let e = err_of(whiten(&m, &mut p, &benign, &harmful, bad, false));
        assert!(e.contains("preserve_whiten must be > 0"), "{e}");
    }
    let e = err_of(whiten(&m, &mut p, &[], &harmful, 1.0, false));
    assert!(e.contains("no benign sequences"), "{e}");
    whiten(&m, &mut p, &benign, &harmful, 1.0, false).unwrap();
    let after = p[0].basis.matmul(&p[0].basis.t().unwrap()).unwrap();
    let diff = (&after - &before).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "the free directions' projector moved by {diff}");
    let w = p[0].summary.whitened.clone().unwrap();
    assert!(w.weight_sum > 0.0 && w.weight_sum < f as f64, "{w:?} of {f}");
    assert!(w.positions == 4 * 25 && !w.last, "{w:?}");
    assert!(w.benign_last > 0.0 && w.benign_last < p[0].summary.benign_last_free, "{w:?} vs {:?}", p[0].summary);
    // The weighted step of an even update: less change on the benign keys than the unweighted one.
    let step = p[0].column_step(&u, 1.0).unwrap();
    let plain = u.matmul(&p[0].basis.t().unwrap()).unwrap().neg().unwrap();
    // The benign keys of the 12 columns, every position after the first (the whitening moment's rows).
    let cols = candle_core::Tensor::new(&(0..12u32).collect::<Vec<_>>()[..], m.device()).unwrap();
    let rows: Vec<candle_core::Tensor> = benign
        .iter()
        .map(|(ids, _)| {
            let mut cap = pke::trace::Capture::new([pke::trace::Site::MlpAct(1)]);
            m.forward_with(&pke::model::Input::single(ids), &mut cap, None).unwrap();
            let k = cap.get(pke::trace::Site::MlpAct(1)).unwrap().squeeze(0).unwrap();
            k.index_select(&cols, 1).unwrap().narrow(0, 1, ids.len() - 1).unwrap()
        })
        .collect();
    let k = candle_core::Tensor::cat(&rows, 0).unwrap();
    let energy = |d: &candle_core::Tensor| {
        k.matmul(&d.t().unwrap()).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
            / d.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let (ew, ep) = (energy(&step), energy(&plain));
    assert!(ew < ep, "benign key energy per unit of step: whitened {ew}, plain {ep}");
    assert!(p[0].summary.describe().contains("whitened (preserve_whiten 1"), "{}", p[0].summary.describe());
    // By the last prompt tokens' within-class scatter: 4 benign prompts and 1 case, the same span.
    let mut q = projectors(&m, &targets, &benign, &harmful, 0.5, true, 0.0).unwrap();
    whiten(&m, &mut q, &benign, &harmful, 1.0, true).unwrap();
    let wl = q[0].summary.whitened.clone().unwrap();
    assert!(wl.last && wl.positions == 5 && wl.weight_sum > 0.0 && wl.weight_sum < f as f64, "{wl:?}");
    let moved = (&q[0].basis.matmul(&q[0].basis.t().unwrap()).unwrap() - &before).unwrap().abs().unwrap().max_all().unwrap();
    assert!(moved.to_scalar::<f32>().unwrap() < 1e-4);
    let no_prompts: Vec<(Vec<u32>, Option<usize>)> = benign.iter().map(|(ids, _)| (ids.clone(), None)).collect();
    let e = err_of(whiten(&m, &mut q, &no_prompts, &harmful, 1.0, true));
    assert!(e.contains("whiten_last") && e.contains("within-class scatter"), "{e}");
}

/// `preserve_last`: weighting the benign prompts' last tokens protects them (their keys' share in the free
/// directions falls) where pooling every position leaves them mostly free.
#[test]
fn null_space_weighted_to_the_last_prompt_token_protects_it() {
    use pke::edit::preserve::projectors;
    // Long benign sequences whose prompts end early: the last prompt tokens are 4 of ~100 positions.
    let (m, targets, benign, harmful) = twelve_columns_four_prompts();
    let pooled = projectors(&m, &targets, &benign, &harmful, 0.9, false, 0.0).unwrap();
    let last = projectors(&m, &targets, &benign, &harmful, 0.9, false, 0.5).unwrap();
    let (a, b) = (pooled[0].summary.benign_last_free, last[0].summary.benign_last_free);
    assert!(b < 0.5 * a, "last-token share free: pooled {a}, weighted {b}");
}
