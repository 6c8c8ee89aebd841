//! Diagnostic: where a gated edit's read reaches on an evaluation run's prompts. For a gated delta (argv:
//! model, delta file with the gate's rows, and a `pke compare` or `pke eval` JSON whose samples hold the
//! prompts and judged replies; optionally the row label), the gate's pre-activation z at the last prompt
//! token of every sample's prompt (chat template), per evaluation set: how many prompts, the share where the
//! read fires (z > 0) and where it opens (the activation at least half the median case's, as the gated stop
//! counts it; the default z of 12 assumed), and how the counted prompts (a harmful set's answered requests; a
//! benign set's or the look-alike twins' refused prompts) split between an open and a closed gate: an answered
//! request behind a closed gate is one the read misses, one behind an open gate one the refusal lost; a
//! refused look-alike behind an open gate is one the gate tipped. The rows are the delta's: a one-step edit
//! with the run's settings fits the same read (its column is not needed).
//! Given a `.txt` file instead of a run (the evaluation's perplexity plays), it counts the positions of the
//! text's first 4,096 tokens where the read fires and opens. Used for docs/validation.md, "Where the default
//! read misses" and "The gate at layer 14".
use candle_core::{DType, IndexOp};
use pke::edit::gate::GateSummary;
use pke::edit::{encode_prompts, WeightDelta};
use pke::io::checkpoint::Checkpoint;
use pke::model::Input;
use pke::trace::{Capture, Site};
use std::collections::BTreeMap;

fn bad(m: String) -> pke::Error {
    pke::Error::Input(m)
}

/// The median case's pre-activation (`intent_gate_z`'s default) and the share of its activation at which the
/// gated stop counts a request as one the gate opens on (`edit::gate::STOP_OPEN_SHARE`).
const Z_MEDIAN: f64 = 12.0;
const OPEN_SHARE: f64 = 0.5;

/// The gate neuron's activation for pre-activation z, as a share of the median case's: SiLU(z) z / z_median.
fn act(z: f64) -> f64 {
    z * z / (1.0 + (-z).exp()) / Z_MEDIAN
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
    delta.apply(&mut ck.model, false)?;
    let text = std::fs::read_to_string(&a[3]).map_err(|e| bad(format!("{}: {e}", a[3])))?;
    // A plain text (the evaluation's perplexity plays): where the read fires along its first 4,096 tokens.
    if a[3].ends_with(".txt") {
        let ids: Vec<u32> = ck.tok.encode(&text, true)?.into_iter().take(4096).collect();
        for g in &gates {
            let mut cap = Capture::new([Site::MlpIn(g.layer)]);
            cap.stop = Some(g.layer);
            ck.model.forward_with(&Input::single(&ids), &mut cap, None)?;
            let x = cap.get(Site::MlpIn(g.layer)).unwrap().i(0)?.to_dtype(DType::F32)?;
            let row = ck.model.get(&format!("model.layers.{}.mlp.gate_proj.weight", g.layer))?.to_dtype(DType::F32)?.get(g.neuron)?;
            let z = x.matmul(&row.unsqueeze(1)?)?.flatten_all()?.to_vec1::<f32>()?;
            let fires = z.iter().filter(|z| **z > 0.0).count();
            let opens = z.iter().filter(|z| act(**z as f64) >= OPEN_SHARE * act(Z_MEDIAN)).count();
            let mean_act: f64 = z.iter().map(|z| act(*z as f64).max(0.0)).sum::<f64>() / z.len() as f64 / act(Z_MEDIAN);
            println!(
                "layer {} neuron {}: {} tokens of {}; fires at {fires}, opens at {opens}; mean activation {mean_act:.4} of the median case's",
                g.layer,
                g.neuron,
                ids.len(),
                a[3]
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
        let (mut fires, mut opens, mut ans, mut ans_closed, mut ans_open) = (0, 0, 0, 0, 0);
        let mut closed_z = Vec::new();
        for (ids, (_, answered)) in ids.iter().zip(&items) {
            // The highest z of the edit's gates (one per edited layer).
            let mut z = f64::NEG_INFINITY;
            for g in &gates {
                let mut cap = Capture::new([Site::MlpIn(g.layer)]);
                cap.stop = Some(g.layer);
                ck.model.forward_with(&Input::single(ids), &mut cap, None)?;
                let x = cap.get(Site::MlpIn(g.layer)).unwrap().i(0)?.to_dtype(DType::F32)?.get(ids.len() - 1)?;
                let row = ck.model.get(&format!("model.layers.{}.mlp.gate_proj.weight", g.layer))?.to_dtype(DType::F32)?.get(g.neuron)?;
                z = z.max((x * row)?.sum_all()?.to_scalar::<f32>()? as f64);
            }
            let open = act(z) >= OPEN_SHARE * act(Z_MEDIAN);
            fires += (z > 0.0) as usize;
            opens += open as usize;
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
        println!("| {set} | {n} | {} | {} | {} | {ans_closed} | {ans_open} | {} |", sh(fires), sh(opens), sh(ans), zs.join(" "));
    }
    Ok(())
}
