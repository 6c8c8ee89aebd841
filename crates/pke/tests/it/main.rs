//! Integration tests: one binary (ripgrep style). Real-model tests need `make setup` to have installed
//! the models; they fail with the set-up command in the message otherwise.

mod attack;
mod bad_input;
mod common;
mod compare;
mod edit;
mod eval;
mod fixtures;
mod gguf_export;
mod grad;
mod hf_folder;
mod locate;
mod native;
