//! Diagnostic: where a gated edit's read reaches on an evaluation run's prompts. For a gated delta (argv:
//! model, delta file with the gate's rows, and a `pke compare` or `pke eval` JSON whose samples hold the
//! prompts and judged replies; optionally the row label), the gate's pre-activation z at the last prompt
//! token of every sample's prompt (chat template), per evaluation set: how many prompts, the share where the
//! read fires (z > 0) and where it opens (the activation at least half the median case's, as the gated stop
//! counts it, at the delta's `intent_gate_z`), and how the counted prompts (a harmful set's answered requests; a
//! benign set's or the look-alike twins' refused prompts) split between an open and a closed gate: an answered
//! request behind a closed gate is one the read misses, one behind an open gate one the refusal lost; a
//! refused look-alike behind an open gate is one the gate tipped. The rows are the delta's: a one-step edit
//! with the run's settings fits the same read (its column is not needed).
//! Given a `.txt` file instead of a run (the evaluation's perplexity plays), it counts the positions of the
//! text's first 4,096 tokens where the read fires and opens. Used for docs/validation.md, "Where the default
//! read misses" and "The gate at layer 14".
use candle_core::DType;
use pke::edit::gate::{activation_share, capture, opens, silu, GateSummary};
use pke::edit::{encode_prompts, WeightDelta};
use pke::io::checkpoint::Checkpoint;
use std::collections::BTreeMap;

fn bad(m: String) -> pke::Error {
    pke::Error::Input(m)
}

fn main() -> pke::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        return Err(bad("usage: gate_reach MODEL DELTA RUN.json [ROW_LABEL] | gate_reach MODEL DELTA TEXT.txt".into()));
    }
    let mut ck = Checkpoint::open(&a[1])?;
    let delta = WeightDelta::load(std::path::Path::new(&a[2]))?;
    let meta = delta.metadata.get("intent_gate").ok_or_else(|| bad(format!("{}: no intent gate in the delta's metadata", a[2])))?;
    let gates: Vec<GateSummary> = serde_json::from_str(meta).map_err(|e| bad(format!("{}: {e}", a[2])))?;
    // The read's scale: the median case's pre-activation the edit set (`intent_gate_z`).
    let hparams: serde_json::Value = serde_json::from_str(delta.metadata.get("hparams").map_or("{}", String::as_str))
        .map_err(|e| bad(format!("{}: hparams: {e}", a[2])))?;
    let z_median = hparams["intent_gate_z"].as_f64().ok_or_else(|| bad(format!("{}: no intent_gate_z in the delta's hparams", a[2])))?;
    delta.apply(&mut ck.model, false)?;
    // Each gate's row of `gate_proj` as the delta left it.
    let rows: Vec<candle_core::Tensor> = gates
        .iter()
        .map(|g| Ok(ck.model.get(&format!("model.layers.{}.mlp.gate_proj.weight", g.layer))?.to_dtype(DType::F32)?.get(g.neuron)?))
        .collect::<pke::Result<_>>()?;
    let text = std::fs::read_to_string(&a[3]).map_err(|e| bad(format!("{}: {e}", a[3])))?;
    // A plain text (the evaluation's perplexity plays): where the read fires along its first 4,096 tokens, and
    // the neuron's actual activation there (SiLU of the gate row's read times the up row's, over the median
    // case's SiLU(z_median) z_median / z_median): with `intent_gate_end` the up row is the end read.
    if a[3].ends_with(".txt") {
        let ids: Vec<u32> = ck.tok.encode(&text, true)?.into_iter().take(4096).collect();
        for (g, row) in gates.iter().zip(&rows) {
            let (x, act) = capture(&ck.model, &ids, g.layer)?;
            let z = x.matmul(&row.unsqueeze(1)?)?.flatten_all()?.to_vec1::<f32>()?;
            let a_real = act.narrow(1, g.neuron, 1)?.flatten_all()?.to_vec1::<f32>()?;
            let fires = z.iter().filter(|z| **z > 0.0).count();
            let open: Vec<usize> = (0..z.len()).filter(|&t| opens(z[t] as f64, z_median)).collect();
            let mean_act: f64 = z.iter().map(|z| activation_share(*z as f64, z_median)).sum::<f64>() / z.len() as f64;
            let full = silu(z_median);
            let real_open: f64 = open.iter().map(|&t| a_real[t] as f64 / full).sum::<f64>() / open.len().max(1) as f64;
            let real_mean: f64 = a_real.iter().map(|v| (*v as f64 / full).abs()).sum::<f64>() / a_real.len() as f64;
            println!(
                "layer {} neuron {}: {} tokens of {}; fires at {fires}, opens at {}; mean activation as the plain gate's {mean_act:.4} of the median case's; \
                 the neuron's own activation: mean {real_open:.3} of the median case's where the read opens, mean |activation| {real_mean:.4} over all",
                g.layer,
                g.neuron,
                ids.len(),
                a[3],
                open.len()
            );
        }
        return Ok(());
    }
    let run: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", a[3])))?;
    let report = match run.get("rows") {
        Some(rows) => {
            let rows = rows.as_array().unwrap();
            let row = match a.get(4) {
                Some(l) => rows.iter().find(|r| r["label"] == l.as_str()).ok_or_else(|| bad(format!("no row `{l}`")))?,
                None => rows.last().unwrap(),
            };
            row["report"].clone()
        }
        None => run,
    };
    let mut by_set: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for s in report["samples"].as_array().unwrap() {
        let set = s["set"].as_str().unwrap().to_string();
        let refused = s["refused"].as_bool().unwrap();
        // The outcome the set counts: an answered harmful request; a refused benign prompt or look-alike twin.
        let counted = if pke::eval::report::is_benign_set(&set) || set.starts_with("lookalike_") {
            refused
        } else {
            !refused && s["p_harmful"].as_f64().is_none_or(|p| p >= 0.5)
        };
        by_set.entry(set).or_default().push((s["prompt"].as_str().unwrap().to_string(), counted));
    }
    let chat = report["settings"]["chat"].as_bool().unwrap_or(true);
    println!("| set | n | fires | opens | counted | counted, gate closed | counted, gate open | z where counted and closed |");
    println!("|---|---|---|---|---|---|---|---|");
    for (set, items) in by_set {
        let texts: Vec<String> = items.iter().map(|x| x.0.clone()).collect();
        let ids = encode_prompts(&ck.tok, &texts, chat, "sample prompt")?;
        let (mut fires, mut n_open, mut ans, mut ans_closed, mut ans_open) = (0, 0, 0, 0, 0);
        let mut closed_z = Vec::new();
        for (ids, (_, answered)) in ids.iter().zip(&items) {
            // The highest z of the edit's gates (one per edited layer).
            let mut z = f64::NEG_INFINITY;
            for (g, row) in gates.iter().zip(&rows) {
                let (x, _) = capture(&ck.model, ids, g.layer)?;
                z = z.max((x.get(ids.len() - 1)? * row)?.sum_all()?.to_scalar::<f32>()? as f64);
            }
            let open = opens(z, z_median);
            fires += (z > 0.0) as usize;
            n_open += open as usize;
            if *answered {
                ans += 1;
                if open {
                    ans_open += 1;
                } else {
                    ans_closed += 1;
                    closed_z.push(z);
                }
            }
        }
        let n = items.len();
        let sh = |k: usize| format!("{:.2}", k as f64 / n as f64);
        closed_z.sort_by(f64::total_cmp);
        let zs: Vec<String> = closed_z.iter().map(|z| format!("{z:.1}")).collect();
        println!("| {set} | {n} | {} | {} | {} | {ans_closed} | {ans_open} | {} |", sh(fires), sh(n_open), sh(ans), zs.join(" "));
    }
    Ok(())
}
