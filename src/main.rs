//! The `revsnn` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use revsnn::commands::{self, DTypeArg, DeviceArg, ModelArgs};
use revsnn::model::reversible::Coupling;
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

/// The reversible coupling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum CouplingArg {
    /// The paper's floating-point coupling.
    Float,
    /// Fixed-point grid: a bitwise-exact inverse.
    Exact,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version, the CPU threads and whether CUDA can be used (and why not).
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a model's layer table and total parameters.
    Summary {
        #[command(flatten)]
        model: ModelArgs,
        /// Print one JSON object (with "parameters").
        #[arg(long)]
        json: bool,
    },
    /// Check a model's invertibility, its reversible gradients against stored-activation
    /// backpropagation, and its gradients against finite differences; exit code 0 iff passed.
    Verify {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, value_enum, default_value = "f64")]
        dtype: DTypeArg,
        #[arg(long, value_enum, default_value = "float")]
        coupling: CouplingArg,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// Coordinates checked by finite differences (half input, half parameters).
        #[arg(long, default_value_t = 8)]
        fd_samples: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        #[arg(long)]
        json: bool,
    },
    /// Measure the peak bytes of one training step (forward, backward, optimizer step) per batch
    /// size, and the memory per image.
    Memory {
        #[command(flatten)]
        model: ModelArgs,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        batch: Vec<usize>,
        /// Store every activation (plain backpropagation) instead of recomputing.
        #[arg(long)]
        bptt: bool,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        #[arg(long)]
        json: bool,
    },
    /// One training step on given weights and input, writing logits, loss, every gradient and the
    /// BatchNorm statistics after the forward (the parity fixtures' format).
    Grad {
        #[command(flatten)]
        model: ModelArgs,
        /// Weights: a safetensors state_dict under the official key names.
        #[arg(long)]
        weights: PathBuf,
        /// Input: a safetensors file with `images` and `labels`.
        #[arg(long)]
        input: PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "f64")]
        dtype: DTypeArg,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
    },
    /// Train a model (default: a small RevSResNet on the embedded `synthetic` dataset), with
    /// checkpoints, metrics.jsonl and curves.png in the run folder.
    Train(Box<commands::train::TrainArgs>),
    /// Top-1 and top-5 accuracy of a checkpoint on a dataset's test split.
    Eval {
        /// A safetensors checkpoint (the model comes from the `.json` beside it, or --model/--spec).
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        dataset: Option<String>,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, conflicts_with = "spec")]
        model: Option<String>,
        #[arg(long)]
        spec: Option<PathBuf>,
        /// Test samples (the synthetic datasets' size; a cap for the real ones).
        #[arg(long, default_value_t = 1000)]
        test_samples: usize,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        #[arg(long)]
        json: bool,
    },
    /// Median seconds per training step (forward, backward, optimizer step), images/s and peak
    /// memory, in f32.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// CPU threads (default: all).
        #[arg(long)]
        threads: Option<usize>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceArg,
        /// On CUDA, let cuBLAS run the f32 GEMMs (every convolution and matmul) on TF32 tensor
        /// cores, as PyTorch does for convolutions by default: faster, about 1e-3 relative error
        /// in each product instead of 1e-6. Needs --device cuda.
        #[arg(long)]
        tf32: bool,
        #[arg(long)]
        json: bool,
    },
}

fn run(command: Command) -> revsnn::error::Result<bool> {
    match command {
        Command::Info { json } => {
            let info = revsnn::info::machine_info();
            if json {
                println!("{}", info.to_json());
            } else {
                println!("{info}");
            }
            Ok(true)
        }
        Command::Summary { model, json } => commands::summary::run(&model, json).map(|()| true),
        Command::Verify {
            model,
            dtype,
            coupling,
            seed,
            batch,
            fd_samples,
            device,
            json,
        } => {
            let coupling = match coupling {
                CouplingArg::Float => Coupling::Float,
                CouplingArg::Exact => Coupling::Exact,
            };
            commands::verify::run(
                &model, dtype, coupling, seed, batch, fd_samples, device, json,
            )
        }
        Command::Memory {
            model,
            batch,
            bptt,
            device,
            json,
        } => commands::memory::run(&model, &batch, device, bptt, json).map(|()| true),
        Command::Grad {
            model,
            weights,
            input,
            output,
            dtype,
            device,
        } => commands::grad::run(&model, &weights, &input, &output, dtype, device).map(|()| true),
        Command::Train(args) => commands::train::run(&args).map(|()| true),
        Command::Eval {
            checkpoint,
            dataset,
            data_dir,
            model,
            spec,
            test_samples,
            batch,
            device,
            json,
        } => commands::eval::run(
            &checkpoint,
            dataset.as_deref(),
            data_dir.as_deref(),
            &model,
            &spec,
            test_samples,
            batch,
            device,
            json,
        )
        .map(|()| true),
        Command::Bench {
            model,
            batch,
            steps,
            threads,
            device,
            tf32,
            json,
        } => commands::train::set_threads(threads)
            .and_then(|()| commands::bench::run(&model, batch, steps, device, tf32, json))
            .map(|()| true),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
