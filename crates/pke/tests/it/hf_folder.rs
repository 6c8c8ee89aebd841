//! HF folders: export a GGUF model as a HF folder and load it back (single file and sharded), f16/bf16
//! weights, and the bad inputs of a folder.

use pke::io::checkpoint::Checkpoint;
use pke::io::hf::write_hf_dir;
use pke::model::Input;

fn last_logits(ck: &Checkpoint, text: &str) -> Vec<f32> {
    let ids = ck.tok.encode(text, true).unwrap();
    let h = ck.model.forward(&Input::single(&ids)).unwrap();
    ck.model.last_logits(&h).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn gguf_to_hf_folder_round_trip_is_exact() {
    for ck in [crate::common::smollm2(), crate::common::gemma()] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hf");
        write_hf_dir(&ck.model, &ck.tok, &out, None).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
            assert!(out.join(f).exists(), "{f} missing");
        }
        let back = Checkpoint::load(&out).unwrap();
        assert_eq!(back.model.spec.arch, ck.model.spec.arch);
        // The header alone (no weight read) counts the parameters the loaded model has, for both forms,
        // and lists every tensor with its shape.
        for (path, stored) in [(ck.source.path(), "quantized"), (out.as_path(), "f32")] {
            let h = pke::io::checkpoint::Header::read(path).unwrap();
            assert_eq!(h.n_params, ck.model.n_params(), "{stored}");
            assert_eq!(h.tensors.len(), ck.model.weights().len(), "{stored}");
            for t in &h.tensors {
                assert_eq!(&t.shape[..], ck.model.get(&t.hf_name).unwrap().dims(), "{stored} {}", t.hf_name);
            }
        }
        assert_eq!(pke::io::checkpoint::Header::read(&out).unwrap().stored_bytes, ck.model.n_params() as u64 * 4);
        // Untouched weights: bit-identical; the tokenizer gives the same ids (BOS included); same logits.
        for (n, t) in ck.model.weights() {
            let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = back.model.get(n).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a == b, "{n} differs after export");
        }
        let text = "Hello world! It's 2024, can't you see?";
        assert_eq!(ck.tok.encode(text, true).unwrap(), back.tok.encode(text, true).unwrap());
        assert_eq!(last_logits(ck, text), last_logits(&back, text));
        assert_eq!(back.tok.chat_template, ck.tok.chat_template);
        // Never overwrite: a second export to the same folder fails and leaves it intact.
        let e = write_hf_dir(&ck.model, &ck.tok, &out, None).unwrap_err().to_string();
        assert!(e.contains("exists and is not empty"), "{e}");
    }
}

#[test]
fn sharded_and_half_precision_folders_load() {
    let ck = crate::common::smollm2();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sharded");
    write_hf_dir(&ck.model, &ck.tok, &out, Some(100_000_000)).unwrap();
    assert!(out.join("model.safetensors.index.json").exists());
    assert!(out.join("model-00002-of-00006.safetensors").exists());
    let back = Checkpoint::load(&out).unwrap();
    assert_eq!(last_logits(ck, "The capital of France is"), last_logits(&back, "The capital of France is"));

    // bf16 and f16 shards are widened to f32 on load.
    for (dtype, tol) in [(safetensors::Dtype::BF16, 0.5f32), (safetensors::Dtype::F16, 0.05)] {
        let half_dir = dir.path().join(format!("{dtype:?}"));
        std::fs::create_dir_all(&half_dir).unwrap();
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(out.join(f), half_dir.join(f)).unwrap();
        }
        let mut views = Vec::new();
        for (n, t) in ck.model.weights() {
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bytes: Vec<u8> = match dtype {
                safetensors::Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                _ => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
            };
            views.push((n.clone(), t.dims().to_vec(), bytes));
        }
        let st: Vec<(String, safetensors::tensor::TensorView)> =
            views.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dtype, s.clone(), b).unwrap())).collect();
        safetensors::serialize_to_file(st, None, &half_dir.join("model.safetensors")).unwrap();
        let back = Checkpoint::load(&half_dir).unwrap();
        let (a, b) = (last_logits(ck, "The capital of France is"), last_logits(&back, "The capital of France is"));
        let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max < tol, "{dtype:?}: max logit diff {max}");
    }
}

#[test]
fn bad_hf_folders_give_clear_errors() {
    let ck = crate::common::smollm2();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    write_hf_dir(&ck.model, &ck.tok, &good, None).unwrap();
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(&good).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    // Missing tokenizer.
    let d = copy("notok");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let e = Checkpoint::load(&d).unwrap_err().to_string();
    assert!(e.contains("tokenizer") && e.contains("notok"), "{e}");
    // Missing config key.
    let d = copy("nokey");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("num_hidden_layers");
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = Checkpoint::load(&d).unwrap_err().to_string();
    assert!(e.contains("num_hidden_layers") && e.contains("config.json"), "{e}");
    // Header/tensor size mismatch: config says a wider model than the weights.
    let d = copy("mismatch");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(2048);
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    let e = Checkpoint::load(&d).unwrap_err().to_string();
    assert!(e.contains("gate_proj") && e.contains("[1536, 576]") && e.contains("[2048, 576]"), "{e}");
    // Truncated safetensors.
    let d = copy("trunc");
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = Checkpoint::load(&d).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
    // Missing weights file.
    let d = copy("noweights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = Checkpoint::load(&d).unwrap_err().to_string();
    assert!(e.contains("model.safetensors") && e.contains("noweights"), "{e}");
}
