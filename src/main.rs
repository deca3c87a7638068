//! The `revsnn` command line: each subcommand's arguments are a struct of `revsnn::commands`
//! whose `run` does the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use revsnn::collective::ProcessRank;
use revsnn::commands::bench::BenchArgs;
use revsnn::commands::eval::EvalArgs;
use revsnn::commands::grad::GradArgs;
use revsnn::commands::info::InfoArgs;
use revsnn::commands::kernels::KernelsArgs;
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
    /// Compile every CUDA kernel file for GPU architectures (default: device 0's) into the
    /// kernel cache (REVSNN_KERNEL_CACHE), so that later commands there, or on a machine given
    /// the folder, start without compiling; needs NVRTC, not a GPU.
    Kernels(KernelsArgs),
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
    /// Top-1 and top-5 accuracy of a checkpoint on a dataset's test split (by default the run's
    /// model and test data, from the run state beside the checkpoint).
    Eval(EvalArgs),
    /// Median seconds per training step (forward, backward, optimizer step), images/s and peak
    /// memory, in f32 tensors with the GEMMs in --precision (default f32).
    Bench(BenchArgs),
}

impl Command {
    /// Runs the command; `Ok(false)` when it ran but failed its check (`verify`).
    fn run(&self) -> revsnn::error::Result<bool> {
        match self {
            Command::Info(args) => args.run().map(|()| true),
            Command::Kernels(args) => args.run().map(|()| true),
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
    keep_freed_heap();
    match Cli::parse().command.run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // One write, so that the messages of ranks that fail at once do not interleave.
            let message = format!("{}error: {error}\n", rank_prefix());
            eprint!("{message}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// "rank R: " in a process of a run of several (torchrun's environment, or `train --gpus N`'s),
/// whose ranks share one terminal; empty otherwise.
fn rank_prefix() -> String {
    match ProcessRank::from_env() {
        Ok(Some(me)) if me.world_size > 1 => format!("rank {}: ", me.rank),
        _ => String::new(),
    }
}

/// Lets glibc's malloc keep freed memory for the next allocation instead of handing it back to
/// the kernel: a training step frees and re-allocates the same activation-sized buffers (up to
/// tens of MiB) every step, and with glibc's defaults many of them are fresh `mmap`s or trimmed
/// heap tops, whose every page faults and is zeroed again by the kernel on first touch. Buffers
/// up to 32 MiB (glibc's largest threshold) come from the heap, which is trimmed only past
/// 1 GiB free and grows in 64 MiB steps. Allocation sizes and the counted peak are unchanged; the
/// process's resident memory stays at its high-water mark.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_heap() {
    const MIB: libc::c_int = 1 << 20;
    // SAFETY: mallopt only changes malloc's tuning parameters; it is called before any thread
    // starts. A refused value (return 0) leaves glibc's default, which is correct, only slower.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * MIB);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * MIB);
        libc::mallopt(libc::M_TOP_PAD, 64 * MIB);
    }
}

/// Other platforms keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_heap() {}
