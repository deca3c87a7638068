//! `revsnn train --device cuda --gpus N`: data-parallel ranks that are processes with one GPU
//! each, exchanging through NCCL (docs/distributed.md §7). On the CPU emulator the driver shows
//! `REVSNN_EMU_DEVICES` devices (2, set by gpu/emulator/run-tests.sh) and a fake NCCL sums in
//! rank order between the processes, so these tests check the launcher, the rendezvous, the
//! shares, the collectives, the checkpoints and the faults; NCCL's own speed and ring order only
//! show on real GPUs (gpu/check.sh). Skips without a CUDA device or without NCCL, and the tests of
//! two ranks with fewer than two GPUs (`SKIP:` lines); fails then with `REVSNN_REQUIRE_GPU=1` /
//! `REVSNN_REQUIRE_NCCL=1`.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    f32_tensors, failed, last_metrics, ok, revsnn, revsnn_command, scratch, tiny_train_args,
    wait_for_file,
};
use revsnn::collective::{Collective, GradReducer, NcclGroup, ProcessRank, UsePlan};
use revsnn::error::Result;
use revsnn::model::{BuildOptions, Targets};
use revsnn::network::{Network, PassOptions, StepHooks};
use revsnn::spec::ModelSpec;
use revsnn_gpu::testing::{device_or_skip, nccl_or_skip};
use revsnn_gpu::{Cuda, CudaStatus, probe};
use revsnn_reference::prelude::*;

/// Whether the test can run: a CUDA device (or the emulator) and NCCL (or its fake).
fn ready(test: &str) -> bool {
    device_or_skip(test).is_some() && nccl_or_skip(test)
}

/// The number of GPUs the driver shows (0 without one).
fn gpu_count() -> usize {
    match probe() {
        CudaStatus::Available(info) => info.device_count,
        CudaStatus::Unavailable(_) => 0,
    }
}

/// Whether the test of two ranks can run: [`ready`] and two GPUs (NCCL refuses two ranks on
/// one GPU).
fn ready_for_two(test: &str) -> bool {
    if !ready(test) {
        return false;
    }
    let count = gpu_count();
    if count < 2 {
        eprintln!("SKIP: {test} needs 2 GPUs, the driver shows {count}");
    }
    count >= 2
}

/// The arguments of a short run of the tiny spec into `out` ([`tiny_train_args`]) on CUDA,
/// with `extra` flags.
fn train_args(out: &Path, extra: &[&str]) -> Vec<String> {
    tiny_train_args(out, &[&["--device", "cuda"][..], extra].concat())
}

fn train(out: &Path, extra: &[&str]) -> Output {
    revsnn(&train_args(out, extra))
}

fn checkpoint(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("last.safetensors")).unwrap()
}

/// The parameters of a run folder's checkpoint, flattened in name order.
fn parameters(dir: &Path) -> Vec<f64> {
    f32_tensors(dir, true)
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect()
}

#[test]
fn one_gpu_through_nccl_equals_the_plain_run_bit_for_bit() {
    if !ready("gpu_ranks") {
        return;
    }
    let dir = scratch("one-gpu");
    ok(train(&dir.join("plain"), &["--epochs", "1"]));
    let output = ok(train(&dir.join("nccl"), &["--epochs", "1", "--gpus", "1"]));
    assert!(
        checkpoint(&dir.join("plain")) == checkpoint(&dir.join("nccl")),
        "--gpus 1 (NCCL, world size 1) and the plain run differ"
    );
    let (plain, nccl) = (
        last_metrics(&dir.join("plain")),
        last_metrics(&dir.join("nccl")),
    );
    assert_eq!(plain["test_loss"], nccl["test_loss"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("done in"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_gpus_with_sync_bn_train_as_one_and_resume_bit_for_bit() {
    if !ready_for_two("two_gpus_with_sync_bn") {
        return;
    }
    let dir = scratch("two-gpus");
    // augmented, with mixup: each GPU's process makes only its share of every batch and its
    // rows' mixup partners from the other share, which must be the rows of the one-GPU batch
    let augmented = [
        "--flip",
        "true",
        "--crop-padding",
        "2",
        "--mixup-alpha",
        "0.5",
        "--mixup-prob",
        "1.0",
        "--mixup-off-epoch",
        "5",
        "--label-smoothing",
        "0.1",
        "--random-erasing",
        "0.25",
    ];
    ok(train(
        &dir.join("one"),
        &[&["--epochs", "1"][..], &augmented].concat(),
    ));
    let two = [&["--gpus", "2", "--sync-bn"][..], &augmented].concat();
    let output = ok(train(
        &dir.join("two"),
        &[&["--epochs", "2"][..], &two[..]].concat(),
    ));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 ranks (processes, one GPU each)")
            && stderr.contains("effective batch 12"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.matches("done in").count(),
        1,
        "rank 0 alone reports: {stdout}"
    );
    let config = std::fs::read_to_string(dir.join("two/config.toml")).unwrap();
    assert!(
        config.contains("ranks = 2") && config.contains("sync_bn = true"),
        "{config}"
    );

    // one epoch on two GPUs against one GPU on the same global batches
    ok(train(
        &dir.join("split"),
        &[&["--epochs", "2", "--stop-after", "1"][..], &two[..]].concat(),
    ));
    let (one, split) = (parameters(&dir.join("one")), parameters(&dir.join("split")));
    let scale = one.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let apart = one
        .iter()
        .zip(&split)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("2 GPUs vs 1 after 4 steps: weights {apart:.1e} apart (largest {scale:.2})");
    assert_eq!(one.len(), split.len());
    assert!(apart <= 1e-4 * scale, "2 GPUs vs 1: {apart:e}");
    assert_eq!(
        last_metrics(&dir.join("one"))["test_acc1"],
        last_metrics(&dir.join("split"))["test_acc1"]
    );

    // the split run resumed on two GPUs ends where the whole one did, bit for bit
    ok(train(
        &dir.join("split"),
        &[&["--epochs", "2", "--resume"][..], &two[..]].concat(),
    ));
    assert!(
        checkpoint(&dir.join("two")) == checkpoint(&dir.join("split")),
        "a resumed two-GPU run differs from the whole one"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_gpu_counts_and_mismatched_ranks_are_refused_with_what_to_do() {
    if !ready("gpu_ranks") {
        return;
    }
    let dir = scratch("bad-gpus");
    let count = gpu_count();
    let more = (count + 1).to_string();
    let many = failed(train(&dir.join("many"), &["--gpus", &more]));
    let shows = format!("the {count} this machine shows");
    assert!(
        many.contains(&format!("--gpus {more}")) && many.contains(&shows),
        "{many}"
    );
    let threads = failed(train(&dir.join("threads"), &["--ranks", "2"]));
    assert!(threads.contains("--gpus 2"), "{threads}");
    // two ranks started by hand with different settings meet at the rendezvous and both stop
    // (on GPU 0 both: they never reach NCCL)
    let port = free_port();
    let ranks: Vec<_> = ["0.1", "0.2"]
        .iter()
        .enumerate()
        .map(|(rank, lr)| {
            let extra = ["--lr", lr, "--rank-timeout", "20"];
            spawn_rank(&dir.join("differ"), (rank, 0), 2, port, &extra)
        })
        .collect();
    for child in ranks {
        let output = child.wait_with_output().unwrap();
        let stderr = failed(output);
        assert!(
            stderr.contains("different settings") && stderr.contains("lr"),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two ranks of a long run into `out`, started by hand with `--rank-timeout timeout_s` (the
/// fake NCCL's own timeout set to the same), once rank 0 has saved its first checkpoint: rank 0
/// and rank 1.
fn two_ranks_past_a_checkpoint(out: &Path, timeout_s: u64) -> (Child, Child) {
    let port = free_port();
    let timeout = timeout_s.to_string();
    let extra = ["--epochs", "50", "--rank-timeout", &timeout];
    let start = |place| {
        rank_command(out, place, 2, port, &extra)
            .env("REVSNN_FAKE_NCCL_TIMEOUT_MS", format!("{timeout_s}000"))
            .spawn()
            .expect("the binary starts")
    };
    let (mut leader, other) = (start((0, 0)), start((1, 1)));
    wait_for_file(
        &mut leader,
        &out.join("last.safetensors"),
        Duration::from_secs(300),
    );
    (leader, other)
}

/// The run folder `out` holds the checkpoint of an epoch or more, whole.
fn assert_checkpoint_whole(out: &Path) {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("last.json")).unwrap()).unwrap();
    assert!(state["epochs_done"].as_u64().unwrap() >= 1, "{state}");
    let weights = revsnn::checkpoint::read(&out.join("last.safetensors")).unwrap();
    assert!(!weights.is_empty());
}

#[test]
fn a_rank_that_dies_stops_the_others_and_leaves_the_last_checkpoint() {
    if !ready_for_two("a_rank_that_dies") {
        return;
    }
    let dir = scratch("rank-dies");
    let out = dir.join("run");
    let (leader, mut other) = two_ranks_past_a_checkpoint(&out, 30);
    other.kill().unwrap();
    other.wait().unwrap();
    let stopped = Instant::now();
    let output = leader.wait_with_output().unwrap();
    let stderr = failed(output);
    eprintln!(
        "rank 0 stopped {:.1} s after rank 1 died",
        stopped.elapsed().as_secs_f64()
    );
    assert!(stderr.contains("rank 1"), "{stderr}");
    assert!(
        stopped.elapsed() < Duration::from_secs(30),
        "rank 0 waited out the timeout"
    );
    assert_checkpoint_whole(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rank that hangs (its process stopped by SIGSTOP) stops the other after `--rank-timeout`,
/// with an error that says it waited, and leaves the last checkpoint whole. NCCL's collectives
/// run on the stream and the rank's wait for them times out (`--rank-timeout`); the emulator's
/// fake NCCL computes them inside the call and has a timeout of its own, set to the same.
#[cfg(unix)]
#[test]
fn a_rank_that_hangs_stops_the_others_after_the_timeout_and_leaves_the_last_checkpoint() {
    if !ready_for_two("a_rank_that_hangs") {
        return;
    }
    let dir = scratch("rank-hangs");
    let out = dir.join("run");
    // long enough that no wait of a healthy run (rank 1 while rank 0 evaluates and saves, on a
    // busy machine) reaches it
    let (leader, mut other) = two_ranks_past_a_checkpoint(&out, 10);
    // SAFETY: kill only sends a signal to the child process this test started.
    assert_eq!(unsafe { libc::kill(other.id() as i32, libc::SIGSTOP) }, 0);
    let stopped = Instant::now();
    let output = leader.wait_with_output().unwrap();
    let waited = stopped.elapsed();
    other.kill().unwrap();
    other.wait().unwrap();
    let stderr = failed(output);
    eprintln!(
        "rank 0 stopped {:.1} s after rank 1 hung: {}",
        waited.as_secs_f64(),
        stderr.lines().last().unwrap_or_default()
    );
    assert!(
        [
            "did not take part within 10s",
            "did not finish its queued work within 10s"
        ]
        .iter()
        .any(|waited| stderr.contains(waited))
            || stderr.contains("hung or far behind"),
        "says rank 0 waited: {stderr}"
    );
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(60),
        "rank 0 stopped {waited:?} after rank 1 hung, with a 10 s timeout: {stderr}"
    );
    assert_checkpoint_whole(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A terminal's Ctrl-C reaches the launcher and both ranks; the ranks agree on a step to stop
/// before, say so, and the launcher ends with their exit code.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_both_gpu_ranks_before_the_same_step() {
    use std::os::unix::process::CommandExt;

    if !ready_for_two("ctrl_c_stops_both_gpu_ranks") {
        return;
    }
    let dir = scratch("gpus-ctrl-c");
    let out = dir.join("run");
    let mut launcher = revsnn_command(&train_args(&out, &["--gpus", "2", "--epochs", "500"]));
    // a process group of its own, as a terminal's foreground job
    launcher
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut launcher = launcher.spawn().unwrap();
    wait_for_file(
        &mut launcher,
        &out.join("last.json"),
        Duration::from_secs(300),
    );
    // SAFETY: killpg only sends a signal to the launcher's group, which the test made for it.
    assert_eq!(
        unsafe { libc::killpg(launcher.id() as i32, libc::SIGINT) },
        0
    );
    let output = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    // each rank's line, without its "rank R: " prefix, in rank order
    let said: Vec<&str> = (0..2)
        .filter_map(|rank| {
            let prefix = format!("rank {rank}: error: interrupted (Ctrl-C) before step ");
            stderr.lines().find_map(|line| line.strip_prefix(&prefix))
        })
        .collect();
    assert_eq!(said.len(), 2, "each rank says where it stopped: {stderr}");
    assert_eq!(said[0], said[1], "the ranks stopped before the same step");
    assert!(stderr.contains("the ranks stopped on Ctrl-C"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Rank `rank` of `world` processes, on GPU `local_rank`, started by hand with torchrun's
/// variables.
fn spawn_rank(
    out: &Path,
    (rank, local_rank): (usize, usize),
    world: usize,
    port: u16,
    extra: &[&str],
) -> std::process::Child {
    rank_command(out, (rank, local_rank), world, port, extra)
        .spawn()
        .expect("the binary starts")
}

/// The command of [`spawn_rank`], to add to before it starts.
fn rank_command(
    out: &Path,
    (rank, local_rank): (usize, usize),
    world: usize,
    port: u16,
    extra: &[&str],
) -> std::process::Command {
    let mut command = revsnn_command(&train_args(out, extra));
    command
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", local_rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A localhost port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A rank's NCCL group, counting the all-reduces started through it.
struct Counting {
    group: Box<dyn Collective<Cuda<f32>> + Send>,
    started: Cell<usize>,
}

type CudaTensor32 = <Cuda<f32> as TensorOps>::Tensor;

impl Collective<Cuda<f32>> for Counting {
    fn rank(&self) -> usize {
        self.group.rank()
    }

    fn world_size(&self) -> usize {
        self.group.world_size()
    }

    fn all_reduce_sum(&self, backend: &Cuda<f32>, x: &CudaTensor32) -> Result<CudaTensor32> {
        self.group.all_reduce_sum(backend, x)
    }

    fn start_all_reduce_sum(&self, backend: &Cuda<f32>, x: &CudaTensor32) -> Result<CudaTensor32> {
        self.started.set(self.started.get() + 1);
        self.group.start_all_reduce_sum(backend, x)
    }

    fn join_started(&self, backend: &Cuda<f32>) -> Result<()> {
        self.group.join_started(backend)
    }

    fn wait_started(&self, backend: &Cuda<f32>) -> Result<()> {
        self.group.wait_started(backend)
    }

    fn all_gather_u64(&self, value: u64) -> Result<Vec<u64>> {
        self.group.all_gather_u64(value)
    }
}

/// What one rank's step on CUDA left: its averaged gradients' bits, the contributions its
/// backward made, the buckets started and the host waits before the backward returned, and the
/// host waits of the whole step (the gradients averaged).
struct CudaStep {
    bits: Vec<Vec<u32>>,
    uses: UsePlan,
    started_in_backward: usize,
    waits_in_backward: u64,
    waits: u64,
}

/// One step of a tiny RevSResNet on CUDA as the only rank of `group` (an NCCL group),
/// BatchNorm synchronised, its gradients reduced in buckets of `bucket_bytes` with the
/// contribution counts `uses` of a previous step.
fn nccl_step(
    backend: &Cuda<f32>,
    group: &Counting,
    bucket_bytes: usize,
    uses: UsePlan,
) -> CudaStep {
    let spec: ModelSpec = serde_json::from_str(
        r#"{"arch": "revsresnet", "layers": [1,1,1,1], "planes": [4,4,8,8],
          "num_classes": 10, "time_steps": 2, "in_channels": 3, "img_size": 16}"#,
    )
    .unwrap();
    let mut network = Network::new(backend, &spec, 5, BuildOptions::default()).unwrap();
    let pixels = (0..2 * 3 * 16 * 16).map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0);
    let images = backend
        .tensor_from_vec(&[2, 3, 16, 16], pixels.collect())
        .unwrap();
    let mut grads = network.zero_grads();
    let mut reducer = GradReducer::new(group, grads.len(), bucket_bytes, uses);
    let hooks = StepHooks {
        sync_batch_norm: Some(group),
        final_grads: Some(&mut reducer),
        ..StepHooks::default()
    };
    let waits = || backend.device().transfer_counts().host_waits;
    let (targets, run) = (Targets::Hard(&[1, 4]), PassOptions::default());
    let before = waits();
    group.started.set(0);
    network
        .train_step_hooked(backend, &mut grads, &images, targets, run, hooks)
        .unwrap();
    let waits_in_backward = waits() - before;
    let started_in_backward = group.started.get();
    let uses = reducer.finish(backend, &mut grads).unwrap();
    assert_eq!(
        waits() - before,
        waits_in_backward,
        "finish queues without a host wait"
    );
    group.wait_started(backend).unwrap();
    let waits = waits() - before;
    let bits = grads
        .tensors()
        .iter()
        .map(|g| {
            backend
                .to_vec(g)
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    CudaStep {
        bits,
        uses,
        started_in_backward,
        waits_in_backward,
        waits,
    }
}

#[test]
fn many_gradient_buckets_on_the_communication_stream_give_the_bits_of_one() {
    let test = "many_gradient_buckets_on_the_communication_stream_give_the_bits_of_one";
    if !ready(test) {
        return;
    }
    let backend = Cuda::<f32>::open().unwrap();
    let alone = ProcessRank {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master: None,
    };
    let group = NcclGroup::join(
        &alone,
        backend.device(),
        "settings",
        Duration::from_secs(60),
    )
    .unwrap()
    .into_collective::<Cuda<f32>>()
    .unwrap();
    let group = Counting {
        group,
        started: Cell::new(0),
    };
    let one = nccl_step(&backend, &group, usize::MAX, UsePlan::default());
    let many = nccl_step(&backend, &group, 256, one.uses.clone());
    assert_eq!(one.started_in_backward, 0);
    assert!(
        many.started_in_backward > 10,
        "{} buckets started in the backward",
        many.started_in_backward
    );
    assert_eq!(one.uses, many.uses);
    assert!(
        one.bits == many.bits,
        "many buckets and one bucket give different gradients"
    );
    // The backward's host waits are its synchronised BatchNorms' alone: the buckets started in
    // it wait nowhere, and all of them together cost the step one wait, as one bucket does.
    assert_eq!(one.waits_in_backward, many.waits_in_backward);
    assert_eq!(many.waits, many.waits_in_backward + 1);
    assert_eq!(one.waits, many.waits);
}
