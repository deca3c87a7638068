//! `revsnn train --device cuda` near the device's limit (docs/memory.md §9.5):
//! - a run that runs out of memory in the middle of an epoch, after the check before the first
//!   step let it through (that check is a lower bound), stops with an error naming the step, the
//!   batch on the device, the bytes requested and the bytes free, and what to lower, and it
//!   writes no checkpoint of the failed epoch;
//! - a run whose evaluation needs the memory the pool keeps from the training's freed blocks
//!   finishes after the pool releases them, as it would with room to spare;
//! - an evaluation that runs out of memory advises resuming with a smaller `--eval-batch`, and
//!   that resumed run ends as the run with room to spare, scores included.
//!
//! On the CUDA emulator with a small emulated device (`REVSNN_EMU_MEMORY_BYTES`); a real card
//! cannot shrink, and the tests say SKIP. Skip without a GPU (`SKIP: no CUDA device`), fail then
//! with `REVSNN_REQUIRE_GPU=1`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{
    TINY_REVSRESNET, failed, json_lines, last_metrics, ok, revsnn, revsnn_command, scratch,
    tiny_train_args,
};
use revsnn::footprint::{self, Footprint};
use revsnn::spec::ModelSpec;
use revsnn_gpu::testing::emulator_or_skip;

/// The arguments of the tiny run ([`tiny_train_args`]) into `out` on CUDA, at batch 32 (the
/// evaluation's too, so that the training step holds the peak), 2 steps an epoch, with `extra`
/// flags.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let cuda = ["--device", "cuda", "--batch", "32", "--train-samples", "64"];
    tiny_train_args(out, &[&cuda[..], extra].concat())
}

/// The arguments of the tiny run into `out` on CUDA at batch 8 with 64 test samples, whose
/// evaluation's batches of 32 need larger buffers than the training's and hold the peak, with
/// `extra` flags.
fn batch_8_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let cuda = ["--device", "cuda", "--batch", "8", "--test-samples", "64"];
    tiny_train_args(out, &[&cuda[..], extra].concat())
}

/// Two epochs of the batch-8 run ([`batch_8_args`]) on a device with room, into `dir/roomy`.
fn run_with_room(dir: &Path) -> PathBuf {
    let roomy = dir.join("roomy");
    ok(revsnn(&batch_8_args(&roomy, &["--epochs", "2"])));
    roomy
}

/// The peak device bytes of the last epoch of the run in `out`.
fn peak(out: &Path) -> u64 {
    last_metrics(out)["peak_memory_bytes"].as_u64().unwrap()
}

/// The bytes of the last checkpoint in `out`.
fn checkpoint(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("last.safetensors")).unwrap()
}

/// What these tests need of the CUDA emulator.
const SHRINKS: &str = "whose device can shrink";

/// `revsnn` with `args` on an emulated device of `bytes` bytes.
fn on_device_of(bytes: u64, args: &[String]) -> Output {
    revsnn_command(args)
        .env("REVSNN_EMU_MEMORY_BYTES", bytes.to_string())
        .output()
        .unwrap()
}

#[test]
fn out_of_device_memory_mid_epoch_names_the_step_and_bytes_and_keeps_the_last_checkpoint() {
    if emulator_or_skip("gpu_train out of memory mid-epoch", SHRINKS).is_none() {
        return;
    }
    let dir = scratch("out-of-memory");
    let saved = dir.join("saved");
    ok(revsnn(&train_args(&saved, &["--epochs", "1"])));
    let (peak, saved_checkpoint) = (peak(&saved), checkpoint(&saved));
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
    assert!(
        checkpoint(&saved) == saved_checkpoint,
        "the failed epoch changed the checkpoint"
    );
    assert_eq!(last_metrics(&saved)["epoch"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_evaluation_gets_the_blocks_the_pool_kept_from_training_and_the_run_is_unchanged() {
    if emulator_or_skip("gpu_train pool release", SHRINKS).is_none() {
        return;
    }
    let dir = scratch("pool-release");
    let roomy = run_with_room(&dir);
    let tight = dir.join("tight");
    let small = peak(&roomy) * 13 / 10;
    ok(on_device_of(
        small,
        &batch_8_args(&tight, &["--epochs", "2"]),
    ));

    let retries = |out: &Path| -> Vec<u64> {
        let lines = json_lines(&out.join("metrics.jsonl"));
        lines
            .iter()
            .map(|line| line["alloc_retries"].as_u64().unwrap())
            .collect()
    };
    let (roomy_retries, tight_retries) = (retries(&roomy), retries(&tight));
    eprintln!("allocation retries per epoch: {roomy_retries:?} with room, {tight_retries:?} tight");
    assert_eq!(roomy_retries, [0, 0]);
    assert!(tight_retries.iter().sum::<u64>() > 0, "{tight_retries:?}");
    assert!(
        checkpoint(&tight) == checkpoint(&roomy),
        "the run that retried differs from the run with room"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_evaluation_out_of_memory_advises_a_smaller_eval_batch_and_the_resumed_run_matches() {
    if emulator_or_skip("gpu_train evaluation out of memory", SHRINKS).is_none() {
        return;
    }
    let dir = scratch("evaluation-out-of-memory");
    let roomy = run_with_room(&dir);
    let halved = dir.join("halved");
    let halved_args = ["--epochs", "1", "--eval-batch", "16"];
    ok(revsnn(&batch_8_args(&halved, &halved_args)));
    let (peak_32, peak_16) = (peak(&roomy), peak(&halved));
    assert!(peak_16 < peak_32, "{peak_16} {peak_32}");
    let small = (peak_16 + peak_32) / 2;

    // epoch 1 with room; epoch 2 on the small device, whose evaluation fails
    let tight = dir.join("tight");
    ok(revsnn(&batch_8_args(&tight, &["--epochs", "1"])));
    let out = tight.display().to_string();
    let resume = ["--epochs", "2", "--resume"];
    let said = failed(on_device_of(small, &batch_8_args(&tight, &resume)));
    for part in [
        "out of device memory during the evaluation after epoch 2, a batch of 32 on this device",
        &format!(
            "{out} holds the checkpoint of epoch 1 and nothing of the failed epoch: continue it \
             with `revsnn train --out {out} --resume --eval-batch 16`"
        ),
    ] {
        assert!(said.contains(part), "missing {part:?} in: {said}");
    }
    // what it advises, on the same device
    let advised = ["--epochs", "2", "--resume", "--eval-batch", "16"];
    ok(on_device_of(small, &batch_8_args(&tight, &advised)));
    assert!(
        checkpoint(&tight) == checkpoint(&roomy),
        "the run resumed after the failed evaluation differs from the run with room"
    );
    // and the scores, whatever the evaluation's batch (the mean loss but for its rounding)
    let (tight, roomy) = (last_metrics(&tight), last_metrics(&roomy));
    for key in ["test_acc1", "test_acc5"] {
        assert_eq!(tight[key], roomy[key], "{key}");
    }
    let loss = |metrics: &serde_json::Value| metrics["test_loss"].as_f64().unwrap();
    assert!((loss(&tight) - loss(&roomy)).abs() <= 1e-12 * loss(&roomy));
    let _ = std::fs::remove_dir_all(&dir);
}
