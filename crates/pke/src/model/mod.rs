//! Provides the model: architecture table, resolved config, composed ops and the generic decoder.

pub mod arch;
pub mod config;
pub mod decoder;
pub mod int8;
pub mod ops;

pub use arch::{Act, Arch, ArchSpec};
pub use config::{LayerType, ModelSpec};
pub use decoder::{Decoder, Input, KvCache, MaskedRows, Weights};
