//! The `pke` command. Exit codes: 0 success, 1 a gate failed (e.g. an evaluation threshold), 2 error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

// Why mimalloc: the decoder allocates and frees many large temporaries (logits, attention scores,
// gradients) per step. glibc returns each large block to the OS and page-faults it back in on the
// next allocation; measured on SmolLM2 that cost ~10% of a forward+backward step (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pke", version, about = "Precision Knowledge Editing: locate and edit the weights behind harmful answers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How frozen weights are held: `f32` (every weight dequantized: the exact reference), `native` (GGUF
    /// blocks kept as stored, gradients flow through them; only trained tensors are float32) or `auto`
    /// (native when float32 would take more than 60% of the available memory).
    #[arg(long, global = true, default_value = "auto")]
    weights: pke::model::Weights,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, tensor types, tokenizer and chat template.
    Inspect(cmd::inspect::Args),
    /// Generate text (greedy or sampled) for one or more prompts.
    Generate(cmd::generate::Args),
    /// Per-token log-probabilities, mean NLL and perplexity of a text.
    Score(cmd::score::Args),
    /// Find the toxic hotspot: layer signals, chosen layer(s) and top-k neurons -> hotspots.json + charts.
    Locate(cmd::locate::Args),
    /// Where the model tells harmful requests from benign look-alikes: per layer and site, how well one
    /// direction separates the probes' harmful twins from their benign sides -> intent.json + intent.md.
    Intent(cmd::intent::Args),
    /// Print the edit cases a --cases/--builtin selection resolves to, as JSONL.
    Cases(cmd::cases::PrintArgs),
    /// Edit the hotspot weights (pke, dinm, ft-l, ga) -> delta file, optional HF folder.
    Edit(cmd::edit::Args),
    /// Apply a delta file to a model and write a HF folder.
    Apply(cmd::edit::ApplyArgs),
    /// Revert a delta file (restore the original values exactly) and write a HF folder.
    Revert(cmd::edit::ApplyArgs),
    /// Evaluate safety (ASR), over-refusal and general ability -> report.json + report.md.
    Eval(cmd::eval::Args),
    /// The one-command demo: locate -> PKE edit -> evaluate before/after on the default model.
    Demo(cmd::demo::Args),
    /// Compare vanilla, dinm, pke, ft-l and ga on the same model, cases and sets -> compare.md/.json/.svg.
    Compare(cmd::compare::Args),
    /// Attack an edited model and its base side by side (prefill, re-quantization, refusal-direction
    /// ablation, jailbreak families) -> attack.md/.json/.svg.
    Attack(cmd::attack::Args),
    /// Can this machine do it? Memory and rough time of an edit and an evaluation, from the header alone.
    Plan(cmd::plan::Args),
    /// Write a GGUF with a large model's configuration (llama-2-7b, llama-3-8b, mistral-7b) and random
    /// weights, for benchmarks at full size.
    Synth(cmd::synth::Args),
    /// Runtime benchmark: load, prefill, decode, forward+backward, peak RSS.
    BenchRuntime(cmd::bench::Args),
    /// List the model aliases and whether they are installed.
    Models,
}

/// `mi_option_purge_delay` in `mi_option_e` (index 15 in mimalloc v2 and v3; libmimalloc-sys 0.1.49 builds
/// v3, whose default is 1000 ms); checked by its default value in the test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keep freed memory committed instead of handing it back to the OS after the purge delay (1 s in v3):
/// an edit step frees and re-allocates ~100 MB tensors (full-vocabulary logits and their gradients), and
/// the kernel zeroed the returned huge pages again on every step (18% of a `pke` edit's profile on Gemma; 8-11% faster without).
/// Peak memory is unchanged. `MIMALLOC_PURGE_DELAY` set by the user wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc allows changing it at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Run `f`, which frees large tensors for good (a second copy of a model's weights), handing what it
/// frees back to the OS at once instead of keeping it committed: memory checks that read the OS's
/// available memory afterwards then see it. Respects `MIMALLOC_PURGE_DELAY` set by the user.
pub(crate) fn returning_freed_memory<T>(f: impl FnOnce() -> T) -> T {
    let user = std::env::var_os("MIMALLOC_PURGE_DELAY").is_some();
    if !user {
        // SAFETY: as in `keep_freed_memory`.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    let out = f();
    // SAFETY: collects this thread's free pages; always allowed.
    unsafe { libmimalloc_sys::mi_collect(true) };
    keep_freed_memory();
    out
}

fn main() -> ExitCode {
    keep_freed_memory();
    // candle's element-wise thread pool spins 25,000 rounds waiting for work; on 2 cores the spinning
    // workers steal time from the matmul threads (a 64-token forward on SmolLM2: 0.225 s with the
    // default, 0.150 s without spinning). Respect a value the user set.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    let cli = Cli::parse();
    cmd::set_weights(cli.weights);
    let res = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Locate(a) => cmd::locate::run(a),
        Command::Cases(a) => cmd::cases::print(a),
        Command::Intent(a) => cmd::intent::run(a),
        Command::Edit(a) => cmd::edit::run(a),
        Command::Apply(a) => cmd::edit::apply(a, false),
        Command::Revert(a) => cmd::edit::apply(a, true),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Compare(a) => cmd::compare::run(a),
        Command::Attack(a) => cmd::attack::run(a),
        Command::Synth(a) => cmd::synth::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Demo(a) => cmd::demo::run(a),
        Command::BenchRuntime(a) => cmd::bench::run(a),
        Command::Models => cmd::models(),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purge_delay_index_is_mimallocs() {
        // Before anyone sets it, purge_delay reads its documented default: 1000 ms in mimalloc v3 (10 in v2).
        // Its neighbours (14: a deprecated eager-commit delay, 16: use_numa_nodes) default to other values.
        let get = |i| unsafe { libmimalloc_sys::mi_option_get(i) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert!([10, 1000].contains(&get(super::MI_OPTION_PURGE_DELAY)), "{}", get(super::MI_OPTION_PURGE_DELAY));
            assert!(![10, 1000].contains(&get(16)));
        }
    }
}
