//! Data-parallel training with ranks as threads (docs/distributed.md): one step of N ranks
//! against one process with the same global batch (f64, gradients and BatchNorm statistics),
//! the per-rank BatchNorm semantics without --sync-bn, and `revsnn train --ranks` end to end:
//! agreement with one rank, bitwise repeatability, resume and bad input.

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::{f32_tensors, failed, last_metrics, ok, revsnn, scratch, tiny_train_args};
use revsnn::collective::{Collective, ThreadGroup, average_grads};
use revsnn::model::{BuildOptions, Grads, Targets};
use revsnn::network::{Network, PassOptions, StepHooks};
use revsnn::spec::ModelSpec;
use revsnn_reference::Cpu;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};

type Cpu64 = Cpu<f64>;

const BATCH: usize = 12;
const SEED: u64 = 3;

/// A tiny spec of `arch`: 16x16 RGB, T = 2, 10 classes.
fn tiny(arch: &str) -> ModelSpec {
    let text = match arch {
        "revsresnet" => {
            r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,4,8,8],
              "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#
        }
        _ => {
            r#"{"arch": "revsformer", "num_classes": 10, "time_steps": 2, "in_channels": 3,
              "img_size": 16, "depth": 1, "dim": 16, "heads": 2, "mlp_ratio": 2,
              "patch_size": 4}"#
        }
    };
    serde_json::from_str(text).unwrap()
}

/// A global batch of `BATCH` random images `[B, 3, 16, 16]` and labels.
fn global_batch() -> (Vec<f64>, Vec<usize>) {
    let mut rng = SplitMix64::new(41);
    let images = (0..BATCH * 3 * 16 * 16)
        .map(|_| rng.next_f64() * 2.0 - 1.0)
        .collect();
    let labels = (0..BATCH).map(|i| (i * 7 + 3) % 10).collect();
    (images, labels)
}

/// What one training step leaves: the gradients and the BatchNorm running statistics, each
/// tensor's values in store order.
struct Step {
    grads: Vec<Vec<f64>>,
    running: Vec<Vec<f64>>,
}

fn values(cpu: &Cpu64, tensor: &<Cpu64 as TensorOps>::Tensor) -> Vec<f64> {
    cpu.to_vec(tensor).unwrap()
}

/// The step of a network of `spec` on `images`/`labels` as one rank of `group` (its BatchNorm
/// statistics synchronised when `sync_bn`), gradients averaged over the group.
fn rank_step(
    spec: &ModelSpec,
    images: &[f64],
    labels: &[usize],
    group: Option<&dyn Collective<Cpu64>>,
    sync_bn: bool,
) -> Step {
    let cpu = Cpu64::new();
    let mut network = Network::new(&cpu, spec, SEED, BuildOptions::default()).unwrap();
    let batch = labels.len();
    let tensor = cpu
        .tensor_from_vec(&[batch, 3, 16, 16], images.to_vec())
        .unwrap();
    let mut grads: Grads<Cpu64> = network.zero_grads();
    let hooks = StepHooks {
        sync_batch_norm: group.filter(|_| sync_bn),
        ..StepHooks::default()
    };
    network
        .train_step_hooked(
            &cpu,
            &mut grads,
            &tensor,
            Targets::Hard(labels),
            PassOptions::default(),
            hooks,
        )
        .unwrap();
    if let Some(group) = group {
        average_grads(group, &cpu, &mut grads).unwrap();
    }
    let entries = network.store.entries();
    Step {
        grads: (0..entries.len())
            .filter_map(|i| {
                grads
                    .get(revsnn::model::ParamId(i))
                    .map(|g| values(&cpu, g))
            })
            .collect(),
        running: entries
            .iter()
            .filter(|e| e.kind == revsnn::model::EntryKind::RunningStat)
            .map(|e| values(&cpu, e.tensor().unwrap()))
            .collect(),
    }
}

/// Each of `ranks` ranks' step on its contiguous share of the global batch, in rank order.
fn data_parallel_step(spec: &ModelSpec, ranks: usize, sync_bn: bool) -> Vec<Step> {
    let (images, labels) = global_batch();
    let (images, labels) = (Arc::new(images), Arc::new(labels));
    let share = BATCH / ranks;
    let per_image = images.len() / BATCH;
    let handles: Vec<_> = ThreadGroup::new(ranks, Duration::from_secs(120))
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(rank, group)| {
            let (spec, images, labels) = (spec.clone(), images.clone(), labels.clone());
            std::thread::spawn(move || {
                let range = rank * share..(rank + 1) * share;
                let pixels = &images[range.start * per_image..range.end * per_image];
                rank_step(&spec, pixels, &labels[range], Some(&group), sync_bn)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn one_process_step(spec: &ModelSpec) -> Step {
    let (images, labels) = global_batch();
    rank_step(spec, &images, &labels, None, false)
}

fn norm(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// The largest error between two lists of tensors, each relative to its tensor's L2 norm; a
/// tensor that is zero but for rounding (a norm below 1e-9 of the whole list's, e.g. the
/// gradient of a BatchNorm shift that a following BatchNorm cancels) relative to the whole
/// list's norm instead, since relative to its own noise it means nothing.
fn worst(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    let whole = norm(&b.concat());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            let diff: Vec<f64> = x.iter().zip(y).map(|(p, q)| p - q).collect();
            let own = norm(y);
            let scale = if own < 1e-9 * whole { whole } else { own };
            norm(&diff) / scale.max(f64::MIN_POSITIVE)
        })
        .fold(0.0, f64::max)
}

#[test]
fn with_sync_bn_n_ranks_compute_one_process_gradients_and_statistics_in_f64() {
    for arch in ["revsresnet", "revsformer"] {
        let spec = tiny(arch);
        let one = one_process_step(&spec);
        for ranks in [2, 3, 4] {
            let steps = data_parallel_step(&spec, ranks, true);
            for (rank, step) in steps.iter().enumerate() {
                let grads = worst(&step.grads, &one.grads);
                let running = worst(&step.running, &one.running);
                eprintln!(
                    "{arch}, {ranks} ranks, rank {rank}: gradients {grads:.1e}, running statistics {running:.1e}"
                );
                assert!(
                    grads <= 1e-12,
                    "{arch}, {ranks} ranks, rank {rank}: gradients {grads:e}"
                );
                assert!(
                    running <= 1e-12,
                    "{arch}, {ranks} ranks: running stats {running:e}"
                );
                assert_eq!(
                    step.grads, steps[0].grads,
                    "every rank steps with the same bits"
                );
            }
        }
    }
}

#[test]
fn without_sync_bn_each_rank_normalises_with_its_own_share() {
    // Without --sync-bn, a data-parallel step equals the mean of one-process steps on each
    // share alone, and rank r's running statistics are those of a process that saw share r.
    let spec = tiny("revsresnet");
    let (images, labels) = global_batch();
    let ranks = 3;
    let share = BATCH / ranks;
    let per_image = images.len() / BATCH;
    let alone: Vec<Step> = (0..ranks)
        .map(|r| {
            let range = r * share..(r + 1) * share;
            let pixels = &images[range.start * per_image..range.end * per_image];
            rank_step(&spec, pixels, &labels[range], None, false)
        })
        .collect();
    let mean: Vec<Vec<f64>> = (0..alone[0].grads.len())
        .map(|t| {
            let len = alone[0].grads[t].len();
            (0..len)
                .map(|i| alone.iter().map(|s| s.grads[t][i]).sum::<f64>() / ranks as f64)
                .collect()
        })
        .collect();
    let steps = data_parallel_step(&spec, ranks, false);
    for (rank, step) in steps.iter().enumerate() {
        let grads = worst(&step.grads, &mean);
        eprintln!("no sync-bn, rank {rank}: gradients vs the mean of per-share steps {grads:.1e}");
        assert!(grads <= 1e-12, "rank {rank}: gradients {grads:e}");
        assert_eq!(
            step.running, alone[rank].running,
            "rank {rank}'s own statistics"
        );
    }
    // and that is not the one-process step: per-rank statistics change the gradients
    let one = one_process_step(&spec);
    let apart = worst(&steps[0].grads, &one.grads);
    eprintln!("no sync-bn vs one process on the global batch: {apart:.1e}");
    assert!(apart > 1e-6);
}

// ---------------------------------------------------------------- `revsnn train --ranks`

/// `revsnn train` of the tiny spec in `out` (global batch 12, 48 training samples: 4 steps an
/// epoch) on the CPU, with `extra` flags.
fn train(out: &Path, extra: &[&str]) -> Output {
    revsnn(&tiny_train_args(out, extra))
}

#[test]
fn a_short_f32_run_on_n_ranks_with_sync_bn_matches_one_rank() {
    let dir = scratch("ranks-agree");
    ok(train(&dir.join("one"), &["--epochs", "1"]));
    let one = f32_tensors(&dir.join("one"), true);
    let flat = |w: &[(String, Vec<f64>)]| w.iter().flat_map(|(_, v)| v.clone()).collect::<Vec<_>>();
    for ranks in ["2", "3", "4"] {
        let out = dir.join(format!("ranks{ranks}"));
        let output = ok(train(
            &out,
            &["--epochs", "1", "--ranks", ranks, "--sync-bn"],
        ));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("effective batch 12"), "{stderr}");
        let config = std::fs::read_to_string(out.join("config.toml")).unwrap();
        assert!(config.contains(&format!("ranks = {ranks}")), "{config}");
        assert!(config.contains("sync_bn = true"), "{config}");
        let share = 12 / ranks.parse::<usize>().unwrap();
        let line = format!("{ranks} ranks x {share} samples = effective batch 12");
        assert!(config.contains(&line), "{config}");
        let many = f32_tensors(&out, true);
        assert_eq!(many.len(), one.len());
        let error = relative_error(&flat(&many), &flat(&one));
        eprintln!("{ranks} ranks, f32, 4 steps: weights differ by {error:.1e}");
        assert!(error <= 1e-4, "{ranks} ranks: weights differ by {error:e}");
        let (a, b) = (last_metrics(&out), last_metrics(&dir.join("one")));
        assert_eq!(a["test_acc1"], b["test_acc1"], "{ranks} ranks: test top-1");
        assert_eq!(a["ranks"].to_string(), ranks, "metrics record the ranks");
        assert!(b.get("ranks").is_none(), "one rank records none");
    }
}

/// `--sync-bn` on one rank changes nothing (the batch's own statistics are SyncBatchNorm's over
/// one process) and says so, where a run without it says nothing of BatchNorm.
#[test]
fn sync_bn_on_one_rank_says_it_changes_nothing_and_changes_nothing() {
    let dir = scratch("ranks-one-sync-bn");
    let plain = ok(train(&dir.join("plain"), &["--epochs", "1"]));
    let synced = ok(train(&dir.join("synced"), &["--epochs", "1", "--sync-bn"]));
    let note = "sync_bn: one rank, so BatchNorm statistics are the batch's own";
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr(&synced).contains(note), "{}", stderr(&synced));
    assert!(!stderr(&plain).contains("sync_bn"), "{}", stderr(&plain));
    let config = std::fs::read_to_string(dir.join("synced/config.toml")).unwrap();
    assert!(config.contains("sync_bn = true"), "{config}");
    let weights = |run: &str| std::fs::read(dir.join(run).join("last.safetensors")).unwrap();
    assert!(
        weights("plain") == weights("synced"),
        "one rank with --sync-bn trained other weights than without"
    );
}

#[test]
fn fp16_on_two_ranks_scales_unscales_and_steps_like_one_rank() {
    // The ranks average their scaled gradients before the loss scaler looks at them, so every
    // rank skips or takes the same step with the same scale; a share of half the batch scales
    // its loss gradient by exactly 2, which fp16's rounding does not see (only the order of the
    // sums over the ranks differs from one process).
    let dir = scratch("ranks-fp16");
    let fp16 = ["--epochs", "1", "--precision", "fp16"];
    ok(train(&dir.join("one"), &fp16));
    let two = dir.join("two");
    ok(train(
        &two,
        &[&fp16[..], &["--ranks", "2", "--sync-bn"]].concat(),
    ));
    let flat = |w: Vec<(String, Vec<f64>)>| w.into_iter().flat_map(|(_, v)| v).collect::<Vec<_>>();
    let error = relative_error(
        &flat(f32_tensors(&two, true)),
        &flat(f32_tensors(&dir.join("one"), true)),
    );
    eprintln!("2 ranks, fp16, 4 steps: weights differ by {error:.1e}");
    assert!(
        error <= 1e-4,
        "2 ranks in fp16: weights differ by {error:e}"
    );
    let (a, b) = (last_metrics(&two), last_metrics(&dir.join("one")));
    for key in ["precision", "loss_scale", "skipped_steps"] {
        assert!(!a[key].is_null(), "metrics lack {key}: {a}");
        assert_eq!(a[key], b[key], "2 ranks against 1: {key}");
    }
}

/// `--initial-checkpoint` on two ranks: every rank starts from the file's weights (a rank left at
/// the seed's would compute its share's gradients at other weights), so the run matches one rank
/// started from it.
#[test]
fn every_rank_starts_from_the_initial_checkpoint() {
    let dir = scratch("ranks-initial");
    ok(train(&dir.join("source"), &["--epochs", "1"]));
    let source = dir.join("source/last.safetensors");
    let from = [
        "--epochs",
        "1",
        "--initial-checkpoint",
        source.to_str().unwrap(),
    ];
    ok(train(&dir.join("one"), &from));
    let two = [&from[..], &["--ranks", "2", "--sync-bn"]].concat();
    ok(train(&dir.join("two"), &two));
    let flat = |w: Vec<(String, Vec<f64>)>| w.into_iter().flat_map(|(_, v)| v).collect::<Vec<_>>();
    let error = relative_error(
        &flat(f32_tensors(&dir.join("two"), true)),
        &flat(f32_tensors(&dir.join("one"), true)),
    );
    assert!(
        error <= 1e-4,
        "2 ranks from a checkpoint: weights differ by {error:e}"
    );
}

#[test]
fn two_runs_on_three_ranks_write_the_same_bytes() {
    let dir = scratch("ranks-repeat");
    let bytes = |name: &str| {
        let out = dir.join(name);
        ok(train(&out, &["--epochs", "1", "--ranks", "3"]));
        std::fs::read(out.join("last.safetensors")).unwrap()
    };
    assert!(bytes("first") == bytes("second"));
}

#[test]
fn resume_on_the_same_ranks_continues_bit_for_bit_and_other_ranks_are_refused() {
    let dir = scratch("ranks-resume");
    let whole = dir.join("whole");
    ok(train(&whole, &["--epochs", "2", "--ranks", "2"]));
    let split = dir.join("split");
    ok(train(
        &split,
        &["--epochs", "2", "--ranks", "2", "--stop-after", "1"],
    ));
    let refused = failed(train(
        &split,
        &["--epochs", "2", "--ranks", "3", "--resume"],
    ));
    assert!(refused.contains("ranks = 3 (the run has 2)"), "{refused}");
    ok(train(&split, &["--epochs", "2", "--resume"]));
    let read = |d: &Path| std::fs::read(d.join("last.safetensors")).unwrap();
    assert!(
        read(&whole) == read(&split),
        "the resumed run's weights differ"
    );
}

#[test]
fn bad_ranks_are_refused_with_what_to_do() {
    let dir = scratch("ranks-bad");
    let zero = failed(train(&dir.join("zero"), &["--ranks", "0"]));
    assert!(
        zero.contains("--ranks") && zero.contains("from 1"),
        "{zero}"
    );
    let uneven = failed(train(&dir.join("uneven"), &["--ranks", "5"]));
    assert!(
        uneven.contains("--ranks 5") && uneven.contains("12"),
        "{uneven}"
    );
    let gpus = failed(train(
        &dir.join("gpus"),
        &["--gpus", "2", "--device", "cpu"],
    ));
    assert!(gpus.contains("--ranks 2 instead"), "{gpus}");
}
