//! # pke: Precision Knowledge Editing
//!
//! pke makes an open-weight LLM refuse harmful requests by locating the few layers and MLP neurons that
//! drive its harmful answers ("toxic hotspots") and editing only those weights, and it measures whether
//! the edited model is safer and no less able.
//!
//! The pieces, in dependency order: [`io`] reads GGUF files and HF folders into HF-named f32 weights
//! and a tokenizer; [`model`] runs one generic decoder (Llama, Mistral, Qwen2/3, Gemma 3) whose every
//! differentiable op is composed from primitive candle ops; [`trace`] records activations and their
//! gradients at named sites; [`generate`] and [`score`] produce text and log-probabilities.
//!
//! ```no_run
//! use pke::io::checkpoint::Checkpoint;
//! let ckpt = Checkpoint::open("smollm2")?;
//! let ids = ckpt.tok.encode("The capital of France is", true)?;
//! let scored = pke::score::score_ids(&ckpt.model, &ids)?;
//! println!("perplexity {:.2}", scored.perplexity);
//! # Ok::<(), pke::Error>(())
//! ```

pub mod attack;
pub mod compare;
pub mod data;
pub mod edit;
pub mod error;
pub mod eval;
pub mod generate;
pub mod io;
pub mod locate;
pub mod model;
pub mod plan;
pub mod score;
pub mod trace;

pub use error::{Error, Result};
