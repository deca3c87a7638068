//! The `revsnn` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use revsnn_reference::memory::CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Reversible spiking neural networks (RevSNN, AAAI 2024): CPU reference and CUDA backend.
#[derive(Debug, Parser)]
#[command(name = "revsnn", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version, the CPU threads and whether CUDA can be used (and why not).
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Info { json } => {
            let info = revsnn::info::machine_info();
            if json {
                println!("{}", info.to_json());
            } else {
                println!("{info}");
            }
            ExitCode::SUCCESS
        }
    }
}
