//! The `pke` command. Exit codes: 0 success, 1 a gate failed (e.g. an evaluation threshold), 2 error.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;

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
    /// Runtime benchmark: load, prefill, decode, forward+backward, peak RSS.
    BenchRuntime(cmd::bench::Args),
    /// List the model aliases and whether they are installed.
    Models,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Score(a) => cmd::score::run(a),
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
