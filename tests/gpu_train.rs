//! `revsnn train --device cuda` on a device that runs out of memory in the middle of an epoch,
//! after the check before the first step let the run through (that check is a lower bound,
//! docs/memory.md §9.5): the run stops with an error naming the step, the batch on the device,
//! the bytes requested and the bytes free, and what to lower, and it writes no checkpoint of the
//! failed epoch. On the CUDA emulator with a small emulated device (`REVSNN_EMU_MEMORY_BYTES`); a
//! real card cannot shrink, and the test says SKIP. Skips without a GPU (`SKIP: no CUDA device`),
//! fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use std::path::Path;
use std::process::Output;

use common::{
    TINY_REVSRESNET, failed, last_metrics, ok, revsnn, revsnn_command, scratch, tiny_train_args,
};
use revsnn::footprint::{self, Footprint};
use revsnn::spec::ModelSpec;
use revsnn_gpu::testing::device_or_skip;

/// The arguments of the tiny run ([`tiny_train_args`]) into `out` on CUDA, at batch 32 (the
/// evaluation's too, so that the training step holds the peak), 2 steps an epoch, with `extra`
/// flags.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let cuda = ["--device", "cuda", "--batch", "32", "--train-samples", "64"];
    tiny_train_args(out, &[&cuda[..], extra].concat())
}

/// `revsnn` with `args` on an emulated device of `bytes` bytes.
fn on_device_of(bytes: u64, args: &[String]) -> Output {
    revsnn_command(args)
        .env("REVSNN_EMU_MEMORY_BYTES", bytes.to_string())
        .output()
        .unwrap()
}

#[test]
fn out_of_device_memory_mid_epoch_names_the_step_and_bytes_and_keeps_the_last_checkpoint() {
    let Some(device) = device_or_skip("gpu_train out of memory") else {
        return;
    };
    if device.info.name != "revsnn CPU emulator" {
        eprintln!("SKIP: out of memory mid-epoch needs the CUDA emulator, whose device can shrink");
        return;
    }
    let dir = scratch("out-of-memory");
    let saved = dir.join("saved");
    ok(revsnn(&train_args(&saved, &["--epochs", "1"])));
    let peak = last_metrics(&saved)["peak_memory_bytes"].as_u64().unwrap();
    let checkpoint = std::fs::read(saved.join("last.safetensors")).unwrap();
    // halfway between the estimate the run is checked against before it starts and the peak
    let spec = ModelSpec::from_json(TINY_REVSRESNET).unwrap();
    let estimate = Footprint::data_parallel_step_bytes(&spec, 32, 1, 1, 4) as u64;
    assert!(estimate < peak, "estimate {estimate}, peak {peak}");
    let small = (estimate + peak) / 2;

    let fresh = dir.join("fresh");
    let said = failed(on_device_of(small, &train_args(&fresh, &["--epochs", "1"])));
    for part in [
        "out of device memory during the training step at epoch 1, step 1 (lr ",
        "a batch of 32 on this device: ",
        " more requested with ",
        &format!(" free of the device's {}. ", footprint::human(small.into())),
        &format!(
            "Lower --batch (e.g. to 16) and start the run again; {} holds no checkpoint yet",
            fresh.display()
        ),
    ] {
        assert!(said.contains(part), "missing {part:?} in: {said}");
    }
    assert!(!fresh.join("last.safetensors").exists(), "{said}");

    let out = saved.display().to_string();
    let resume = train_args(&saved, &["--epochs", "2", "--resume"]);
    let said = failed(on_device_of(small, &resume));
    for part in [
        "during the training step at epoch 2, step 1 (lr ",
        &format!(
            "{out} holds the checkpoint of epoch 1 and nothing of the failed epoch: continue it \
             on a device with more memory free with `revsnn train --out {out} --resume`, or \
             lower --batch (e.g. to 16) and start a new run with another --out"
        ),
    ] {
        assert!(said.contains(part), "missing {part:?} in: {said}");
    }
    let kept = std::fs::read(saved.join("last.safetensors")).unwrap();
    assert!(
        kept == checkpoint,
        "the failed epoch changed the checkpoint"
    );
    assert_eq!(last_metrics(&saved)["epoch"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}
