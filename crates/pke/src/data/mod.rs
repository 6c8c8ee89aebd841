//! Provides the data pke edits and evaluates with: edit cases (JSONL, SafeEdit JSON, built-in sets from
//! the installed harmful-request data) and prompt sets.

pub mod cases;
pub mod probes;
pub mod sets;

pub use cases::{load_cases, to_jsonl, EditCase};
