//! GGUF export: untouched tensors byte for byte, edited tensors exact in f32 (including llama's q/k
//! re-permutation and Gemma's norm shift), and the exported file reloads to the same logits.

use pke::io::checkpoint::Checkpoint;
use pke::io::gguf::GgufFile;
use pke::io::gguf_export::{write_gguf, EditedType};
use pke::model::decoder::down_proj_name;
use pke::model::Input;

fn logits(m: &pke::model::Decoder, ids: &[u32]) -> Vec<f32> {
    m.last_logits(&m.forward(&Input::single(ids)).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn edited_gguf_round_trips() {
    for (ck, extra) in [
        (crate::common::smollm2(), "model.layers.0.self_attn.q_proj.weight"),
        (crate::common::gemma(), "model.layers.2.input_layernorm.weight"),
    ] {
        let src_path = ck.source.path().to_path_buf();
        let src = GgufFile::open(&src_path).unwrap();
        let mut edited = ck.model.clone();
        let name = down_proj_name(5);
        let w = (edited.get(&name).unwrap() * 1.01).unwrap();
        edited.set(&name, w).unwrap();
        let names = vec![name.clone(), extra.to_string()]; // `extra` unchanged: tests the inverse transforms
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("edited.gguf");
        write_gguf(&src, &edited, &names, EditedType::F32, &out).unwrap();
        let g = GgufFile::open(&out).unwrap();
        for gname in src.tensor_names() {
            let (a, ta, _) = src.tensor_bytes(gname).unwrap();
            let (b, tb, _) = g.tensor_bytes(gname).unwrap();
            let hf = pke::io::names::gguf_to_hf(ck.model.spec.arch, gname).unwrap_or_default();
            if names.contains(&hf) {
                assert_eq!(format!("{tb:?}"), "F32", "{gname}");
            } else {
                assert!(a == b && format!("{ta:?}") == format!("{tb:?}"), "{gname} not copied byte for byte");
            }
        }
        let back = Checkpoint::load(&out).unwrap();
        for n in &names {
            let a = edited.get(n).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = back.model.get(n).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a == b, "{n} differs after GGUF export");
        }
        let ids = ck.tok.encode("The capital of France is", true).unwrap();
        assert_eq!(back.tok.encode("The capital of France is", true).unwrap(), ids);
        assert_eq!(logits(&edited, &ids), logits(&back.model, &ids));
        // Re-quantized to the source type: close, not exact.
        let outq = dir.path().join("edited-q.gguf");
        write_gguf(&src, &edited, std::slice::from_ref(&name), EditedType::Source, &outq).unwrap();
        let q = Checkpoint::load(&outq).unwrap();
        let d = (q.model.get(&name).unwrap() - edited.get(&name).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 0.05, "re-quantized max diff {d}");
        // The source is never overwritten.
        let e = write_gguf(&src, &edited, &names, EditedType::F32, &src_path).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
    }
}

#[test]
fn synthetic_gguf_loads_with_its_shape_types_and_the_borrowed_tokenizer() {
    use pke::io::synth::{shape, write_synthetic, SynthType};
    let smol = crate::common::smollm2();
    let src = GgufFile::open(smol.source.path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = shape("tiny").unwrap();
    for (ty, want) in [(SynthType::Q4KM, ["Q4_K", "Q6_K"]), (SynthType::Q8_0, ["Q8_0", "Q8_0"])] {
        let out = dir.path().join(format!("tiny-{ty:?}.gguf"));
        let n = write_synthetic(s, ty, &src, 7, &out).unwrap();
        let h = pke::io::checkpoint::Header::read(&out).unwrap();
        assert_eq!(h.n_params, n);
        assert_eq!((h.spec.hidden_size, h.spec.intermediate_size, h.spec.n_layers, h.spec.n_kv_heads), (256, 512, 2, 2));
        assert_eq!(h.spec.vocab_size, smol.model.spec.vocab_size);
        let dtype = |name: &str| h.tensors.iter().find(|t| t.hf_name == name).unwrap().dtype.clone();
        assert_eq!(dtype("model.layers.1.self_attn.q_proj.weight"), want[0]);
        assert_eq!(dtype("model.layers.1.mlp.down_proj.weight"), want[1], "the last eighth of the layers gets more bits in Q4_K_M");
        assert_eq!(dtype("model.layers.0.mlp.down_proj.weight"), want[0]);
        assert_eq!(dtype("lm_head.weight"), want[1]);
        let ck = Checkpoint::load(&out).unwrap();
        let ids = ck.tok.encode("The capital of France is", true).unwrap();
        assert_eq!(ids, smol.tok.encode("The capital of France is", true).unwrap());
        let l = logits(&ck.model, &ids);
        assert!(l.iter().all(|x| x.is_finite()), "non-finite logits");
        let (mean, var) = {
            let w = ck.model.get("model.layers.0.mlp.gate_proj.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let m = w.iter().sum::<f32>() / w.len() as f32;
            (m, w.iter().map(|x| (x - m).powi(2)).sum::<f32>() / w.len() as f32)
        };
        assert!(mean.abs() < 0.01 && (0.005..0.05).contains(&var.sqrt()), "{ty:?}: mean {mean}, std {}", var.sqrt());
        // Same seed, same bytes.
        let again = dir.path().join("again.gguf");
        write_synthetic(s, ty, &src, 7, &again).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    }
}
