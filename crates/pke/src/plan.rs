//! Provides `pke plan`: from a checkpoint's header (or a named shape) alone, the memory and rough time an
//! edit and an evaluation will take on this kind of machine, which `--weights` mode `auto` would pick, and
//! whether they fit.
//!
//! The figures are fits to measurements on the project's 2-core development machine (AMD EPYC, 2 threads;
//! docs/benchmarks.md): a default `pke` edit step costs ~5.3e-9 s per parameter in float32 (SmolLM2 0.71 s,
//! Gemma 3 270M 1.6 s, Qwen2.5-0.5B 2.5 s) and ~15% more with native weights (Qwen2.5-Coder-1.5B), a `dinm`
//! step ~1.5e-9, a `pke` locate ~8e-9 per case, and a default (full-size, int8 kernels) evaluation ~150 s
//! plus ~1e-6 s per parameter, mostly greedy decoding (SmolLM2 282 s, 2026-12-03). Before its first step a default `pke` edit generates the original model's replies to
//! the 48 retain prompts and the null space's keys: ~9 s + 6.9e-8 s per parameter (18.5 s on SmolLM2,
//! 43.4 s on Qwen2.5-Coder-0.5B, 2026-12-02 at commit 75fe1db), ~15% more native; with it, ten steps on
//! the Llama-3-8B-shaped file come out at ~19 min against the 20 min measured (docs/scaling.md). Peak
//! memory of a one-case edit: the weights (float32, or as stored when native) plus four copies of the
//! trained tensors (value, gradient, two Adam moments; for `pke` only the hotspot columns' change, 10% of
//! one `down_proj`, since commit 669a4e9) plus activations and the autograd graph.
//! Float32: ~10.5 KB per layer and unit of (d + d_ff) (fitted on the Qwen2.5-Coder-1.5B float32 edit,
//! 9.63 GiB). Native, where the edit recomputes the blocks above its layer and locate's graph over all
//! layers sets the peak: ~1.7 GB plus ~1.9 KB per layer and unit (two points: Qwen2.5-Coder-1.5B native,
//! 3.21 GiB, and the Llama-3-8B-shaped synthetic file, 7.44 GiB; both measured 2026-12-01 at commit 669a4e9).
//! An evaluation: ~1.5 GiB (harm judge, batch buffers) plus ~1.3x the float32 weights and the stored bytes
//! (the int8 kernels' copy) with float32 weights (SmolLM2: 2.4 GiB measured), or plus ~2.2x the stored bytes
//! native. Rough by design: within a factor of ~1.5 on the measured
//! models; nothing was measured on a GPU.

use serde::Serialize;

use crate::edit::Method;

/// A default evaluation (every set in full, replies through the int8 kernels): fixed seconds (judges,
/// perplexity, the kernel check) and seconds per parameter, and the fixed part of its memory.
const EVAL_BASE_S: f64 = 150.0;
const EVAL_PER_PARAM_S: f64 = 1.0e-6;
const EVAL_BASE_BYTES: f64 = 1.5 * GIB;

/// What the plan needs to know about a model.
#[derive(Clone, Debug, Serialize)]
pub struct PlanModel {
    pub name: String,
    pub n_params: usize,
    pub n_layers: usize,
    pub hidden: usize,
    pub ff: usize,
    pub vocab: usize,
    /// Bytes of the checkpoint's weights as stored (quantized, f16, ...).
    pub stored_bytes: u64,
}

/// The plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub model: PlanModel,
    pub method: String,
    pub cases: usize,
    pub steps: usize,
    pub devices: usize,
    /// How `--weights auto` would hold the weights on this machine: `f32` or `native`.
    pub weights_mode: String,
    pub f32_weights_gib: f64,
    pub stored_gib: f64,
    /// Per device.
    pub edit_peak_gib: f64,
    pub eval_peak_gib: f64,
    /// `pke attack` with the fine-tuning attack (every MLP weight trained in float32 with Adam, 2 examples
    /// per step) beside the weights, on one device: what its memory check asks for, plus the weights.
    pub attack_peak_gib: f64,
    pub available_gib: Option<f64>,
    /// Whether the edit fits the available memory (None when it is unknown).
    pub fits: Option<bool>,
    /// Rough times on the measured CPU (None on other devices: not measured).
    pub locate_s: Option<f64>,
    /// The whole edit, `edit_setup_s` included.
    pub edit_s: Option<f64>,
    /// Of the edit, the time before the first step (pke's null space: the original model's retain replies
    /// and keys).
    pub edit_setup_s: Option<f64>,
    /// Of the edit, the held-out stop's readings before each step (pke's default `stop_probes`: greedy
    /// replies to the benign probes and the held-out prose, forward only; `stop_probes=0` saves it).
    pub edit_watch_s: Option<f64>,
    pub eval_s: Option<f64>,
    pub notes: Vec<String>,
}

const GIB: f64 = (1u64 << 30) as f64;
/// Activation and graph bytes per layer and unit of (d + d_ff) of a float32 edit (all blocks in the graph).
const F32_ACT_PER_UNIT: f64 = 10.5e3;
/// The same for a native edit (peak while locating; the edit recomputes the blocks above its layer).
const NATIVE_ACT_BASE: f64 = 1.7e9;
const NATIVE_ACT_PER_UNIT: f64 = 1.9e3;
/// The held-out stop's reading per step on two threads (32 benign probes answered with 16 tokens, 1,024
/// tokens of prose scored): a fixed part and a part per parameter, through the two measured readings
/// (SmolLM2-135M 10.7 s, Qwen2.5-Coder-0.5B 20.1 s: a step with the reading minus one without, quiet
/// machine, 2026-12-02; docs/scaling.md). The harmful probes read on the steps where the NLL stop holds
/// are not counted (SmolLM2: +4.5 s on 6 of 17 steps).
const WATCH_BASE_S: f64 = 7.2;
const WATCH_PER_PARAM_S: f64 = 2.6e-8;

/// Plan an edit of `cases` cases (`steps` optimizer steps) with `method`, and a default-size evaluation,
/// on `device` (`cpu` or `cuda`) split over `devices` (tensor-parallel: every weight divided evenly).
pub fn plan(m: &PlanModel, method: Method, cases: usize, steps: usize, device: &str, devices: usize, available: Option<u64>) -> Plan {
    let devices = devices.max(1);
    let f32_bytes = m.n_params as f64 * 4.0;
    // The trained tensors: pke's hotspot edit (config/presets/hotspot.toml) trains the change of 10% of one
    // layer's down_proj columns, its default intent gate one column (the plan keeps the larger, an upper
    // bound of a few MB), the other methods one layer's whole down_proj.
    let trained = match method {
        Method::Pke => (m.hidden * m.ff.div_ceil(10)) as f64 * 4.0,
        _ => (m.hidden * m.ff) as f64 * 4.0,
    };
    let units = (m.n_layers * (m.hidden + m.ff)) as f64;
    let cpu = device == "cpu";
    // `available` is host memory; a GPU's own memory is not read.
    let available = if cpu { available } else { None };
    let mode = crate::io::checkpoint::auto_weights(m.n_params / devices, available.map(|a| a * devices as u64));
    let native = mode == crate::model::Weights::Native;
    let weights = if native { m.stored_bytes as f64 } else { f32_bytes };
    let native_act = NATIVE_ACT_BASE + NATIVE_ACT_PER_UNIT * units;
    let act = if native { native_act } else { F32_ACT_PER_UNIT * units };
    let edit_peak = (weights + 4.0 * trained + act) / devices as f64;
    let eval_peak =
        (EVAL_BASE_BYTES + if native { 2.2 * m.stored_bytes as f64 } else { 1.3 * f32_bytes + m.stored_bytes as f64 }) / devices as f64;
    let attack_peak = weights + crate::attack::finetune_bytes_of(m.n_layers, m.hidden, m.ff, m.vocab, 2);
    let slow = if native { 1.15 } else { 1.0 };
    let per_step = match method {
        Method::Dinm => 1.5e-9,
        _ => 5.3e-9,
    } * m.n_params as f64
        * cases as f64
        * slow;
    // The null space (on by default for pke only) is set up once, whatever the number of cases.
    let setup = if method == Method::Pke { (9.0 + 6.9e-8 * m.n_params as f64) * slow } else { 0.0 };
    // The held-out stop (on by default for pke only) reads its probes before every step.
    let watch = if method == Method::Pke { (WATCH_BASE_S + WATCH_PER_PARAM_S * m.n_params as f64) * slow } else { 0.0 };
    let mut notes = vec![];
    if !cpu {
        notes.push(format!("no timing was measured on {device}: times are not estimated"));
        notes.push(format!("{device} memory is not read: compare the peak per device with the device's memory"));
    }
    if devices > 1 {
        notes.push(format!(
            "memory per device with every weight split over {devices} devices (tensor parallel); pke runs on one device today"
        ));
    }
    if native {
        notes.push(format!(
            "auto holds the weights as stored (--weights native): float32 ({:.1} GiB) would take more than 60% of the memory",
            f32_bytes / GIB
        ));
    }
    let avail = available.map(|a| a as f64);
    let fits = avail.map(|a| edit_peak <= a);
    if fits == Some(false) && !native {
        let n = (m.stored_bytes as f64 + 4.0 * trained + native_act) / devices as f64;
        notes.push(format!("does not fit in float32; with --weights native (GGUF) an edit would need about {:.1} GiB", n / GIB));
    }
    Plan {
        model: m.clone(),
        method: method.to_string(),
        cases,
        steps,
        devices,
        weights_mode: mode.to_string(),
        f32_weights_gib: f32_bytes / GIB,
        stored_gib: m.stored_bytes as f64 / GIB,
        edit_peak_gib: edit_peak / GIB,
        eval_peak_gib: eval_peak / GIB,
        attack_peak_gib: attack_peak / GIB,
        available_gib: avail.map(|a| a / GIB),
        fits,
        locate_s: cpu.then_some(8e-9 * m.n_params as f64 * cases as f64 * slow),
        edit_s: cpu.then_some(setup + (per_step + watch) * steps as f64),
        edit_setup_s: cpu.then_some(setup),
        edit_watch_s: cpu.then_some(watch * steps as f64),
        eval_s: cpu.then_some(EVAL_BASE_S + EVAL_PER_PARAM_S * m.n_params as f64),
        notes,
    }
}

/// The plan as text.
pub fn render(p: &Plan) -> String {
    let t = |x: Option<f64>| match x {
        Some(s) if s >= 3600.0 => format!("~{:.1} h", s / 3600.0),
        Some(s) if s >= 60.0 => format!("~{:.0} min", s / 60.0),
        Some(s) => format!("~{s:.0} s"),
        None => "not estimated".into(),
    };
    let mut s = format!(
        "model         {} ({:.2} B parameters, {} layers, d={}, d_ff={})\n\
         stored        {:.2} GiB; float32 {:.2} GiB (weights mode: {})\n\
         edit          {} x {} case(s), {} steps: peak ~{:.1} GiB{}; locate {}, edit {} ({} of it before the first step, {} the held-out stop's readings)\n\
         evaluation    full sets, int8 kernels: peak ~{:.1} GiB{}; {}\n\
         attack        with finetune (every MLP weight trained, Adam): peak ~{:.1} GiB on one device{}\n\
         available     {}\n\
         verdict       {}\n",
        p.model.name,
        p.model.n_params as f64 / 1e9,
        p.model.n_layers,
        p.model.hidden,
        p.model.ff,
        p.stored_gib,
        p.f32_weights_gib,
        p.weights_mode,
        p.method,
        p.cases,
        p.steps,
        p.edit_peak_gib,
        if p.devices > 1 { format!(" per device ({} devices)", p.devices) } else { String::new() },
        t(p.locate_s),
        t(p.edit_s),
        t(p.edit_setup_s),
        t(p.edit_watch_s),
        p.eval_peak_gib,
        if p.devices > 1 { " per device" } else { "" },
        t(p.eval_s),
        p.attack_peak_gib,
        match p.available_gib {
            Some(a) if p.attack_peak_gib > a => "; does not fit: `pke attack` refuses finetune here (leave it out of --attacks)",
            _ => "",
        },
        p.available_gib.map_or("unknown".into(), |a| format!("{a:.1} GiB")),
        match p.fits {
            Some(true) => "fits",
            Some(false) => "does not fit: pke refuses to load it (no OOM kill)",
            None => "memory unknown",
        }
    );
    for n in &p.notes {
        s += &format!("note          {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(n: usize) -> PlanModel {
        PlanModel { name: "m".into(), n_params: n, n_layers: 30, hidden: 576, ff: 1536, vocab: 49152, stored_bytes: n as u64 / 2 }
    }

    #[test]
    fn plan_reproduces_the_measured_native_edits_and_picks_native_for_8b() {
        // Qwen2.5-Coder-1.5B (1.78 B parameters, 1.04 GiB stored): native edit measured at 3.21 GiB.
        let q15 = PlanModel {
            name: "q".into(),
            n_params: 1_777_088_000,
            n_layers: 28,
            hidden: 1536,
            ff: 8960,
            vocab: 151936,
            stored_bytes: 1_117_320_768,
        };
        let p = plan(&q15, Method::Pke, 1, 3, "cpu", 1, Some(4 << 30));
        assert_eq!(p.weights_mode, "native");
        assert!((p.edit_peak_gib - 3.21).abs() < 0.2, "{}", p.edit_peak_gib);
        // The same model with room for float32: f32, measured at 9.63 GiB.
        let p = plan(&q15, Method::Pke, 1, 3, "cpu", 1, Some(24 << 30));
        assert_eq!(p.weights_mode, "f32");
        // The held-out stop's reading, measured there at 59.6 s per step (not one of the two points its
        // line was fitted to): within 15%.
        assert!((p.edit_watch_s.unwrap() / 3.0 / 59.6 - 1.0).abs() < 0.15, "{:?}", p.edit_watch_s);
        assert!((p.edit_peak_gib - 9.63).abs() < 0.5, "{}", p.edit_peak_gib);
        // Llama-3-8B shape with a 151,936-token vocabulary (8.22 B, 4.71 GiB Q4_K_M): native on 24 GiB,
        // measured at 7.44 GiB; it fits.
        let l8 = PlanModel {
            name: "l".into(),
            n_params: 8_220_000_000,
            n_layers: 32,
            hidden: 4096,
            ff: 14336,
            vocab: 151936,
            stored_bytes: 5_057_000_000,
        };
        let p = plan(&l8, Method::Pke, 1, 2, "cpu", 1, Some(24 << 30));
        assert_eq!(p.weights_mode, "native");
        assert!((p.edit_peak_gib - 7.44).abs() < 0.4, "{}", p.edit_peak_gib);
        assert_eq!(p.fits, Some(true));
        // Its fine-tuning attack trains 5.6 B MLP weights in float32 with Adam: ~90 GB, which does not fit.
        assert!(p.attack_peak_gib > 80.0, "{}", p.attack_peak_gib);
        // Ten steps of the default edit on the Llama-3-8B-shaped file took 1,215 s (replies and keys for the
        // null space, then the steps; docs/scaling.md): within 15%.
        // That run predates the held-out stop (on by default since): its readings are counted apart.
        let p10 = plan(&l8, Method::Pke, 1, 10, "cpu", 1, Some(24 << 30));
        assert!(((p10.edit_s.unwrap() - p10.edit_watch_s.unwrap()) / 1215.0 - 1.0).abs() < 0.15, "{:?}", p10.edit_s);
        assert!(render(&p).contains("does not fit: `pke attack` refuses finetune here"), "{}", render(&p));
    }

    #[test]
    fn plan_scales_with_size_and_says_when_it_does_not_fit() {
        let small = plan(&model(135_000_000), Method::Pke, 1, 10, "cpu", 1, Some(24 << 30));
        assert_eq!(small.fits, Some(true));
        // The fit reproduces the measured SmolLM2 pke step (0.71 s) within 10%, and its null-space setup
        // (18.5 s) within 15%.
        let (setup, watch) = (small.edit_setup_s.unwrap(), small.edit_watch_s.unwrap());
        assert!(((small.edit_s.unwrap() - setup - watch) / 10.0 - 0.71).abs() < 0.071, "{:?}", small.edit_s);
        assert!((setup / 18.5 - 1.0).abs() < 0.15, "{setup}");
        // The held-out stop's reading: 10.7 s per step measured on SmolLM2, 20.1 s on Qwen2.5-Coder-0.5B
        // (494 M parameters); none for the other methods.
        assert!((watch / 10.0 / 10.7 - 1.0).abs() < 0.1, "{watch}");
        let q = plan(&model(494_000_000), Method::Pke, 1, 10, "cpu", 1, Some(24 << 30));
        assert!((q.edit_watch_s.unwrap() / 10.0 / 20.1 - 1.0).abs() < 0.1, "{:?}", q.edit_watch_s);
        assert_eq!(plan(&model(135_000_000), Method::Dinm, 1, 10, "cpu", 1, None).edit_watch_s, Some(0.0));
        // 8 B parameters with no room for float32: auto goes native, and says why.
        let big = plan(&model(8_000_000_000), Method::Pke, 1, 10, "cpu", 1, Some(24 << 30));
        assert_eq!(big.weights_mode, "native");
        assert!(big.notes.iter().any(|n| n.contains("--weights native")), "{:?}", big.notes);
        // Too little memory even as stored: does not fit, and the text says so.
        let tiny = plan(&model(8_000_000_000), Method::Pke, 1, 10, "cpu", 1, Some(2 << 30));
        assert_eq!(tiny.fits, Some(false));
        assert!(render(&tiny).contains("does not fit"));
        // Split over 8 devices: an eighth per device; on cuda no time is claimed.
        let tp = plan(&model(8_000_000_000), Method::Pke, 1, 10, "cuda", 8, None);
        let one = plan(&model(8_000_000_000), Method::Pke, 1, 10, "cuda", 1, None);
        assert!((tp.edit_peak_gib * 8.0 - one.edit_peak_gib).abs() < 1e-9);
        assert!(tp.edit_s.is_none() && tp.fits.is_none());
        assert!(plan(&model(135_000_000), Method::Dinm, 1, 10, "cpu", 1, None).edit_s < small.edit_s);
    }
}
