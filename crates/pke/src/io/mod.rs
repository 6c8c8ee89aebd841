//! Provides checkpoint input and output: GGUF, safetensors, the name map, tokenizers and chat templates.

pub mod card;
pub mod chat;
pub mod checkpoint;
pub mod gguf;
pub mod gguf_export;
pub mod hf;
pub mod names;
pub mod requant;
pub mod safetensors;
pub mod synth;
pub mod tokenizer;

use std::path::Path;

use crate::{Error, Result};

/// Write `bytes` to `path` atomically: a temp file in the same folder, then a rename, so a reader never
/// sees a half-written file and an existing file is replaced only by a complete one.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
