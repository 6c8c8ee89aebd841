//! Provides the library's error type. Every variant that comes from a file names the file, and every
//! variant that comes from a key or field names it, so a user can fix the input without reading code.

use std::path::PathBuf;

/// Errors raised by the pke library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input file or folder does not exist.
    #[error("{what} not found: {path}{hint}")]
    NotFound { what: &'static str, path: PathBuf, hint: String },

    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A GGUF file is malformed, truncated or lacks a metadata key.
    #[error("GGUF file {path}: {msg}")]
    Gguf { path: PathBuf, msg: String },

    /// A GGUF metadata key is missing or has the wrong type.
    #[error("GGUF file {path}: metadata key `{key}`: {msg}")]
    GgufKey { path: PathBuf, key: String, msg: String },

    /// A safetensors file is malformed or truncated.
    #[error("safetensors file {path}: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    /// A config file is malformed or lacks a key.
    #[error("config {path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },

    /// The checkpoint's architecture is not one pke runs.
    #[error("unsupported architecture `{name}` in {path} (supported: {supported})")]
    UnsupportedArch { name: String, path: PathBuf, supported: String },

    /// A tensor the architecture needs is missing from the checkpoint.
    #[error("tensor `{name}` missing from {path}")]
    MissingTensor { name: String, path: PathBuf },

    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` in {path} has shape {got:?}, expected {expected:?}")]
    TensorShape { name: String, path: PathBuf, got: Vec<usize>, expected: Vec<usize> },

    /// A tokenizer could not be built or run.
    #[error("tokenizer ({source_desc}): {msg}")]
    Tokenizer { source_desc: String, msg: String },

    /// A chat template is missing or failed to render.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    /// A user input (prompt, option, data record) is invalid.
    #[error("invalid input: {0}")]
    Input(String),

    /// A data file has a bad record.
    #[error("{path}:{line}: {msg}")]
    Data { path: PathBuf, line: usize, msg: String },

    /// A prompt does not fit in the model's context.
    #[error("prompt of {len} tokens does not fit the context of {ctx} tokens{extra}")]
    ContextOverflow { len: usize, ctx: usize, extra: String },

    /// Loading a model would need more memory than the machine has available.
    #[error(
        "loading {path} needs about {need_gib:.1} GiB ({n_params} parameters {form}), \
         but {available_gib:.1} GiB of memory is available; {hint} (`pke inspect` and `pke plan` read only the header)"
    )]
    OutOfMemory { path: PathBuf, n_params: usize, form: &'static str, hint: &'static str, need_gib: f64, available_gib: f64 },

    /// A loss or value became NaN or infinite.
    #[error("non-finite value: {0}")]
    NonFinite(String),

    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// An error from serde_json outside a file context.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
