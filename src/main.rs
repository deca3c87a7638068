//! The `revsnn` command line: each subcommand's arguments are a struct of `revsnn::commands`
//! whose `run` does the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use revsnn::commands::bench::BenchArgs;
use revsnn::commands::eval::EvalArgs;
use revsnn::commands::grad::GradArgs;
use revsnn::commands::info::InfoArgs;
use revsnn::commands::memory::MemoryArgs;
use revsnn::commands::summary::SummaryArgs;
use revsnn::commands::train::TrainArgs;
use revsnn::commands::verify::VerifyArgs;
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
    Info(InfoArgs),
    /// Print a model's layer table and total parameters.
    Summary(SummaryArgs),
    /// Check a model's invertibility, its reversible gradients against stored-activation
    /// backpropagation, and its gradients against finite differences; exit code 0 iff passed.
    Verify(VerifyArgs),
    /// Measure the peak bytes of one training step (forward, backward, optimizer step) per batch
    /// size, and the memory per image.
    Memory(MemoryArgs),
    /// One training step on given weights and input, writing logits, loss, every gradient and the
    /// BatchNorm statistics after the forward to one safetensors file.
    Grad(GradArgs),
    /// Train a model (default: a small RevSResNet on the embedded `synthetic` dataset), with
    /// checkpoints, metrics.jsonl and curves.png in the run folder.
    Train(Box<TrainArgs>),
    /// Top-1 and top-5 accuracy of a checkpoint on a dataset's test split.
    Eval(EvalArgs),
    /// Median seconds per training step (forward, backward, optimizer step), images/s and peak
    /// memory, in f32.
    Bench(BenchArgs),
}

impl Command {
    /// Runs the command; `Ok(false)` when it ran but failed its check (`verify`).
    fn run(&self) -> revsnn::error::Result<bool> {
        match self {
            Command::Info(args) => args.run().map(|()| true),
            Command::Summary(args) => args.run().map(|()| true),
            Command::Verify(args) => args.run(),
            Command::Memory(args) => args.run().map(|()| true),
            Command::Grad(args) => args.run().map(|()| true),
            Command::Train(args) => args.run().map(|()| true),
            Command::Eval(args) => args.run().map(|()| true),
            Command::Bench(args) => args.run().map(|()| true),
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command.run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
