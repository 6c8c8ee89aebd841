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
    /// Runtime benchmark: load, prefill, decode, forward+backward, peak RSS.
    BenchRuntime(cmd::bench::Args),
    /// List the model aliases and whether they are installed.
    Models,
}

fn main() -> ExitCode {
    // candle's element-wise thread pool spins 25,000 rounds waiting for work; on 2 cores the spinning
    // workers steal time from the matmul threads (a 64-token forward on SmolLM2: 0.225 s with the
    // default, 0.150 s without spinning). Respect a value the user set.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Locate(a) => cmd::locate::run(a),
        Command::Cases(a) => cmd::cases::print(a),
        Command::Edit(a) => cmd::edit::run(a),
        Command::Apply(a) => cmd::edit::apply(a, false),
        Command::Revert(a) => cmd::edit::apply(a, true),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Compare(a) => cmd::compare::run(a),
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
