//! The ranks of `train --gpus N` and of torchrun: processes with one GPU each
//! (docs/distributed.md §6, §7). The launcher starts N copies of this command with torchrun's
//! variables; each copy, a rank, takes its settings from the command line like the others,
//! opens GPU `LOCAL_RANK`, meets the others at the rendezvous and trains its share.

use std::sync::Arc;
use std::time::Duration;

use crate::collective::{NcclGroup, ProcessRank, run_local_ranks};
use crate::device::{Device, DeviceChoice};
use crate::error::{Error, Result};
use crate::train::config::GivenSettings;
use crate::train::{Run, config_file_text, interrupt};

/// Starts `count` ranks of this very command, rank `r` on GPU `r`, and waits for them all; the
/// first to fail stops the others. More GPUs than the machine shows, or `--device cpu`, is an
/// error saying what to give instead.
pub fn launch(count: usize, device: Option<DeviceChoice>) -> Result<()> {
    if count == 0 {
        return Err(Error::Usage("--gpus 0: give at least 1 GPU".into()));
    }
    if device == Some(DeviceChoice::Cpu) {
        return Err(Error::Usage(format!(
            "--gpus {count} with --device cpu: ranks on the CPU are threads, give --ranks \
             {count} instead of --gpus"
        )));
    }
    let visible = visible_gpus()?;
    if count > visible {
        return Err(Error::Usage(format!(
            "--gpus {count} asks for more GPUs than the {visible} this machine shows: give \
             --gpus {visible} or fewer (CUDA_VISIBLE_DEVICES limits what is shown)"
        )));
    }
    let program = std::env::current_exe()
        .map_err(|e| Error::Usage(format!("cannot find this program to start its ranks: {e}")))?;
    let arguments: Vec<_> = std::env::args_os().skip(1).collect();
    // A terminal's Ctrl-C reaches the ranks too, which stop together and say how to continue:
    // the launcher waits for them instead of ending at once (a second Ctrl-C ends everything).
    interrupt::listen();
    run_local_ranks(count, |_| {
        let mut command = std::process::Command::new(&program);
        command.args(&arguments);
        command
    })
}

/// The number of GPUs the driver shows, or why there are none.
fn visible_gpus() -> Result<usize> {
    match revsnn_gpu::probe() {
        revsnn_gpu::CudaStatus::Available(info) => Ok(info.device_count),
        revsnn_gpu::CudaStatus::Unavailable(error) => Err(Error::Cuda(error)),
    }
}

/// Makes `given` the settings of rank `me`: on CUDA, with `ranks` the world size. Another
/// `--ranks`, `--gpus` or `--device` is an error saying which.
pub fn as_rank(given: &mut GivenSettings, me: &ProcessRank, gpus: Option<usize>) -> Result<()> {
    let world = me.world_size;
    if let Some(gpus) = gpus.filter(|&g| g != world) {
        return Err(Error::Usage(format!(
            "--gpus {gpus} but this process was started as rank {} of WORLD_SIZE {world}: \
             under torchrun leave --gpus out (torchrun starts the ranks)",
            me.rank
        )));
    }
    if let Some(ranks) = given.ranks.filter(|&r| r != world) {
        return Err(Error::Usage(format!(
            "--ranks {ranks} but WORLD_SIZE is {world}: the ranks of a multi-GPU run are its \
             processes; leave --ranks out or give --ranks {world}"
        )));
    }
    if given.device == Some(DeviceChoice::Cpu) {
        return Err(Error::Usage(format!(
            "--device cpu, but this process is rank {} of {world} processes, which train on \
             GPUs: give --device cuda, or run CPU ranks as threads with --ranks {world}",
            me.rank
        )));
    }
    given.ranks = Some(world);
    given.device = Some(DeviceChoice::Cuda);
    Ok(())
}

/// The device of `run`: GPU `LOCAL_RANK` for a rank of a run of processes, else the one its
/// settings choose; in the run's precision.
pub fn open_device(run: &Run, process: Option<&ProcessRank>) -> Result<Device> {
    let precision = run.config.precision;
    match process {
        Some(me) => Device::open_cuda_ordinal(me.local_rank)?.with_precision(precision),
        None => run.config.device.open(precision),
    }
}

/// Joins the NCCL group of the run's ranks as `me` ([`NcclGroup::join`]): every rank must have
/// been started with the same settings.
pub fn join(me: &ProcessRank, device: &Device, run: &Run, timeout: Duration) -> Result<NcclGroup> {
    let Device::Cuda(gpu) = device else {
        return Err(Error::Usage(
            "the ranks of a multi-GPU run train on CUDA: give --device cuda".into(),
        ));
    };
    let settings = config_file_text(&run.config, None)?;
    NcclGroup::join(me, &Arc::clone(gpu), &settings, timeout)
}
