//! The training loop behind `revsnn train`: the run's settings ([`config`], a recipe from
//! [`recipe`]), seeded batches from prefetching workers ([`loader`], [`pipeline`]), one
//! [`epoch`] after another, each [`evaluate()`]d on the test split and saved to the run folder
//! ([`run_dir`]: atomic checkpoints `last.*` and `best.*`, `metrics.jsonl`, `curves.png`), and a
//! bit-for-bit `--resume` ([`run`]).

pub mod config;
pub mod datasets;
pub mod epoch;
pub mod evaluate;
pub mod initial;
pub mod interrupt;
pub mod loader;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod ranks;
pub mod recipe;
pub mod run;
pub mod run_dir;
pub mod tensorboard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use revsnn_reference::DType;
use serde_json::{Value, json};

use crate::collective::NcclGroup;
use crate::data::Dataset;
use crate::data::synthetic::Split;
use crate::device::{Compute, Device, on_backend};
use crate::error::{BatchSetting, Error, Result, RunPlace, counted};
use crate::footprint;
use crate::network::Network;
use crate::spec::ModelSpec;
use config::RunSettings;
pub use config::default_spec;
pub use datasets::{DATA_SEED, open_dataset, open_split};
use epoch::{EpochStats, Learner, check_batch, train_epoch};
pub use evaluate::{EvalResult, evaluate, score_share};
use pipeline::TrainSet;
use ranks::{Rank, on_threads};
pub use run::{Run, config_file_text};
use run_dir::RunDir;
pub use run_dir::RunState;
use tensorboard::EventWriter;

/// What one `revsnn train` invocation does beside the run's settings: where it stops and
/// whether it draws progress bars.
#[derive(Clone, Copy, Debug)]
pub struct Invocation {
    /// Stop after this many epochs of this invocation (a run split into sessions; `--resume`
    /// continues it exactly as if it had not stopped).
    pub stop_after: Option<usize>,
    /// Ctrl-C stops the run before its next step with [`Error::Interrupted`] ([`interrupt`]),
    /// from the first step on; several ranks before the same step.
    pub ctrl_c_stops: bool,
    /// No progress bar and no line per epoch.
    pub quiet: bool,
    /// Each epoch's metrics also as TensorBoard events in the run folder's `tb/`.
    pub tensorboard: bool,
    /// A resumed run, or one started from `--initial-checkpoint`, may load a checkpoint holding
    /// NaN or infinities (a deliberate experiment).
    pub allow_non_finite: bool,
    /// How long a rank waits for the others (at the start and in each collective), and on a GPU
    /// for its device in any host wait, before it stops with an error (a rank died or hangs;
    /// docs/distributed.md §7).
    pub rank_timeout: Duration,
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub out: PathBuf,
    /// The last epoch's metrics line.
    pub last: Value,
    pub best_test_acc1: f64,
    pub seconds: f64,
    /// The epochs the run has done, and the run's length: fewer done where `--stop-after` ended
    /// this invocation early.
    pub epochs_done: usize,
    pub epochs: usize,
}

/// The seed of epoch `epoch`'s shuffle.
pub fn shuffle_seed(seed: u64, epoch: usize) -> u64 {
    let mut rng = revsnn_reference::testing::SplitMix64::new(seed ^ 0x5348_5546_464c_4500);
    rng.next_u64() ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Trains `run` on `device` in f32, printing the run folder first and a progress bar per epoch;
/// writes `config.toml` before the first epoch of this invocation. `process` is this process's
/// rank of a run whose ranks are processes, one GPU each (`--gpus`, docs/distributed.md §7);
/// without it, the run's `ranks` are threads of this process.
pub fn train(
    run: &Run,
    options: &Invocation,
    device: &Device,
    process: Option<NcclGroup>,
) -> Result<TrainSummary> {
    on_backend!(device, DType::F32, |backend| {
        train_on(backend, device, run, options, process)
    })
}

/// Trains `run` on `backend`, made from `device`: opens the data and the run folder (rank 0),
/// restores a resumed run, then trains this process's ranks ([`train_rank`]), each on a thread
/// of its own when there are several.
fn train_on<B: Compute>(
    backend: B,
    device: &Device,
    run: &Run,
    options: &Invocation,
    process: Option<NcclGroup>,
) -> Result<TrainSummary> {
    let started = Instant::now();
    let config = &run.config;
    let dir = RunDir::new(config.out.clone());
    let state = run.first_state(&dir)?;
    let initial = initial::weights(run, options.allow_non_finite)?;
    let ranks = local_ranks::<B>(config, device, process, options.rank_timeout)?;
    check_memory(&backend, config, &state.spec, ranks.len())?;
    let (train_set, test_data) = open_data(config, &state.spec)?;
    let mut learners = (0..ranks.len())
        .map(|_| Learner::new(&backend, &state.spec, config))
        .collect::<Result<Vec<_>>>()?;
    if let Some((path, weights)) = &initial {
        initial::load(path, weights, &backend, &mut learners)?;
    }
    let leader = ranks[0].is_leader();
    if leader {
        let initial = initial.as_ref().map(|(path, _)| *path);
        let spec = &state.spec;
        open_run_folder(run, &dir, device, spec, initial, ranks.len(), &*test_data)?;
    }
    let lines = match run.resumed {
        Some(_) => restore(
            &dir,
            &backend,
            &mut learners,
            &state,
            config.epochs,
            options,
            leader,
        )?,
        None => Vec::new(),
    };
    check_batch(config, train_set.split.data.len())?;
    let events = match options.tensorboard && leader {
        true => Some(EventWriter::create(&dir.path().join("tb"))?),
        false => None,
    };
    let end = match options.stop_after {
        Some(count) => config.epochs.min(state.epochs_done + count),
        None => config.epochs,
    };
    let shared = Shared {
        backend: &backend,
        device,
        config,
        options,
        dir: &dir,
        train_set: &train_set,
        test_data: &test_data,
        end,
    };
    let leader_part = Some((lines, events)).filter(|_| leader);
    let jobs = RankJob::all(ranks, learners, &state, leader_part);
    if options.ctrl_c_stops {
        interrupt::listen();
    }
    let (lines, state) = on_threads(jobs, |job| train_rank(&shared, job))?;
    Ok(TrainSummary {
        out: config.out.clone(),
        last: lines.last().cloned().unwrap_or(Value::Null),
        best_test_acc1: state.best_test_acc1,
        seconds: started.elapsed().as_secs_f64(),
        epochs_done: state.epochs_done,
        epochs: config.epochs,
    })
}

/// The leader's start of an invocation: creates the run folder and says where it is, which
/// weights a new run starts from (`initial`), how the ranks share each batch (`local_ranks` of
/// them in this process) and whether the head is wider than the classes of `test_data` (a new
/// run only); then writes `config.toml`.
fn open_run_folder(
    run: &Run,
    dir: &RunDir,
    device: &Device,
    spec: &ModelSpec,
    initial: Option<&Path>,
    local_ranks: usize,
    test_data: &dyn Dataset,
) -> Result<()> {
    let config = &run.config;
    dir.create()?;
    eprintln!("run folder: {}", dir.path().display());
    if let Some(path) = initial {
        eprintln!("starting from the weights of {}", path.display());
    }
    if config.ranks > 1 {
        eprintln!("{}", describe_ranks(config, local_ranks));
    } else if config.sync_bn {
        eprintln!("{SYNC_BN_ON_ONE_RANK}");
    }
    let note = wider_head(spec, config.dataset.name(), test_data);
    if let (Some(note), None) = (note, &run.resumed) {
        eprintln!("{note}");
    }
    dir.write_config(&config_file_text(config, Some((dir.path(), device)))?)
}

/// The ranks this process trains: this process's one rank of a run of processes, else the
/// run's `ranks` as threads ([`Rank::all`]; several of them only on the CPU).
fn local_ranks<B: Compute>(
    config: &RunSettings,
    device: &Device,
    process: Option<NcclGroup>,
    timeout: Duration,
) -> Result<Vec<Rank<B>>> {
    match process {
        Some(group) => Ok(vec![Rank::process(
            group.into_collective::<B>()?,
            config.sync_bn,
        )]),
        None => {
            check_ranks_device(config.ranks, device)?;
            Rank::all(config.ranks, config.sync_bn, timeout)
        }
    }
}

/// Checks before training that a step fits the device: one replica's step on `batch / ranks`
/// samples per device when the ranks are processes (one each), N replicas' when this process
/// holds all `ranks` ([`footprint::check_data_parallel_step`]); and so does the evaluation, each
/// replica's forward on its share of an `--eval-batch` batch.
fn check_memory<B: Compute>(
    backend: &B,
    config: &RunSettings,
    spec: &ModelSpec,
    local_ranks: usize,
) -> Result<()> {
    let setting = footprint::batch_setting(config.batch, spec);
    let setting = match (config.ranks, local_ranks) {
        (1, _) => setting,
        (ranks, 1) => format!(
            "{setting}, {} per GPU on {ranks} GPUs",
            config.batch / ranks
        ),
        (ranks, _) => format!("{setting} on --ranks {ranks}"),
    };
    footprint::check_data_parallel_step(
        backend,
        spec,
        config.batch,
        config.ranks,
        local_ranks,
        &setting,
    )?;
    let eval_batch = config.eval_batch.min(config.test_samples);
    let share = eval_batch.div_ceil(config.ranks);
    let setting = match config.ranks {
        1 => format!("--eval-batch {eval_batch}"),
        ranks => format!("--eval-batch {eval_batch}, {share} per rank on {ranks} ranks"),
    };
    let advice = "Lower --eval-batch, or choose a smaller model or image size";
    footprint::check_forward(backend, spec, share * local_ranks, &setting, advice)
}

/// What every rank of a run reads.
struct Shared<'a, B: Compute> {
    backend: &'a B,
    device: &'a Device,
    config: &'a RunSettings,
    options: &'a Invocation,
    dir: &'a RunDir,
    train_set: &'a TrainSet,
    test_data: &'a Arc<dyn Dataset>,
    /// The epoch this invocation stops before.
    end: usize,
}

/// One rank's part of a run: its model and optimizer, where the run stands, and for rank 0
/// the metrics so far and the TensorBoard writer.
struct RankJob<B: Compute> {
    rank: Rank<B>,
    learner: Learner<B>,
    state: RunState,
    lines: Vec<Value>,
    events: Option<EventWriter>,
}

impl<B: Compute> RankJob<B> {
    /// One job per rank, each from `state`; the first also takes `leader_part`, the metrics so
    /// far and the event writer (`None` unless this process holds the leader).
    fn all(
        ranks: Vec<Rank<B>>,
        learners: Vec<Learner<B>>,
        state: &RunState,
        mut leader_part: Option<(Vec<Value>, Option<EventWriter>)>,
    ) -> Vec<RankJob<B>> {
        let jobs = ranks.into_iter().zip(learners);
        jobs.map(|(rank, learner)| {
            let (lines, events) = leader_part.take().unwrap_or_default();
            RankJob {
                rank,
                learner,
                state: state.clone(),
                lines,
                events,
            }
        })
        .collect()
    }
}

/// Trains one rank until the invocation's last epoch: each epoch trains, shares rank 0's
/// running statistics, evaluates (each rank its share), checks; rank 0 then saves the
/// checkpoint, the metrics (with the device used) and the curves. Returns rank 0's metrics and
/// state.
fn train_rank<B: Compute>(shared: &Shared<B>, job: RankJob<B>) -> Result<(Vec<Value>, RunState)> {
    let RankJob {
        rank,
        mut learner,
        mut state,
        mut lines,
        mut events,
    } = job;
    let (backend, config) = (shared.backend, shared.config);
    for epoch in state.epochs_done..shared.end {
        if rank.is_leader() {
            backend.reset_peak_memory();
        }
        let quiet = shared.options.quiet;
        let transfers_before = backend.transfer_counts();
        let mut train = train_epoch(
            backend,
            &mut learner,
            shared.train_set,
            config,
            epoch,
            quiet,
            &rank,
        )?;
        rank.share_running_stats(backend, &mut learner.network.store)?;
        let test = evaluate_rank(backend, &mut learner.network, shared, &rank, epoch)?;
        train.alloc_retries = transfers_before
            .zip(backend.transfer_counts())
            .map(|(before, after)| after.since(before).alloc_retries);
        check_test_loss(&test, epoch, shared.dir)?;
        let improved = state.finish_epoch(epoch, learner.optimizer.steps(), test.acc1, config.seed);
        state.loss_scaler = learner.scaler;
        if !rank.is_leader() {
            continue;
        }
        let peak = backend.peak_memory_bytes();
        lines.push(metrics_line(
            config,
            epoch,
            &train,
            &test,
            peak,
            &state,
            shared.device,
        ));
        save_epoch(shared.dir, backend, &learner, &state, improved, &lines)?;
        if let (Some(events), Some(line)) = (&mut events, lines.last()) {
            events.add_metrics(line)?;
        }
        if !quiet {
            log_epoch(config, epoch, &train, &test, &state);
        }
    }
    Ok((lines, state))
}

/// The test split's evaluation after epoch `epoch` (from 0) in batches of `--eval-batch`, each
/// rank scoring its share of every batch and the scores summed over the ranks.
fn evaluate_rank<B: Compute>(
    backend: &B,
    network: &mut Network<B>,
    shared: &Shared<B>,
    rank: &Rank<B>,
    epoch: usize,
) -> Result<EvalResult> {
    let config = shared.config;
    let data = shared.test_data.clone();
    let expected = data.len();
    // no batch holds more than the test set
    let batch = config.eval_batch.min(expected.max(1));
    let place = || RunPlace {
        during: format!("the evaluation after epoch {}", epoch + 1),
        batch: batch.div_ceil(rank.world()),
        lower: BatchSetting::evaluation(batch, config.ranks),
        saved: epoch,
        out: config.out.display().to_string(),
    };
    let score = score_share(backend, network, data, batch, rank.index(), rank.world())
        .map_err(|error| error.in_run_out_of_memory(place))?;
    EvalResult::of(rank.sum_score(score)?, expected)
}

/// Ranks in one process are CPU threads: a run whose `--device auto` chose CUDA cannot have
/// several (several GPUs are several processes, `--gpus`).
fn check_ranks_device(ranks: usize, device: &Device) -> Result<()> {
    if ranks > 1 && matches!(device, Device::Cuda(_)) {
        return Err(Error::Usage(format!(
            "--ranks {ranks} runs its ranks as CPU threads, but the run computes on {} \
             (--device auto found it): pass --device cpu, or --gpus {ranks} for one process \
             per GPU",
            device.describe()
        )));
    }
    Ok(())
}

/// What `--sync-bn` (or a recipe that sets it) does on one rank: nothing, said once.
const SYNC_BN_ON_ONE_RANK: &str = "sync_bn: one rank, so BatchNorm statistics are the batch's \
     own, as SyncBatchNorm's over one process; the setting takes effect on --ranks or --gpus N";

/// The line that says how a data-parallel run shares its batches, `local_ranks` of its ranks
/// in this process (threads when several, else one process per GPU).
fn describe_ranks(config: &RunSettings, local_ranks: usize) -> String {
    let kind = match local_ranks {
        1 => "processes, one GPU each",
        _ => "CPU threads",
    };
    format!(
        "data-parallel: {} ranks ({kind}) x {} samples = effective batch {} (the learning rate \
         is the recipe's for that batch, unscaled); BatchNorm statistics {}",
        config.ranks,
        config.batch / config.ranks,
        config.batch,
        if config.sync_bn {
            "synchronised over the ranks (--sync-bn)"
        } else {
            "per rank (each rank's share)"
        }
    )
}

/// Saves the epoch `state` records as done: its metrics (`lines`) and curves, then its
/// checkpoint, committed last ([`RunDir::save_checkpoint`]; a resumed run reads as many metrics
/// lines as the committed epochs). A write that fails stops the run with
/// [`Error::NotSaved`], which says what is kept and how to go on.
fn save_epoch<B: Compute>(
    dir: &RunDir,
    backend: &B,
    learner: &Learner<B>,
    state: &RunState,
    improved: bool,
    lines: &[Value],
) -> Result<()> {
    dir.write_metrics(lines)
        .and_then(|()| dir.save_checkpoint(backend, learner, state, improved))
        .map_err(|error| Error::NotSaved {
            epoch: state.epochs_done,
            kept: state.epochs_done - 1,
            dir: dir.path().display().to_string(),
            source: Box::new(error),
        })
}

/// Restores a resumed run into each rank's `learners` from its last checkpoint in `dir`, and
/// returns the metrics of the epochs it has done (of `epochs`); only the `leader` completes an
/// interrupted commit in `dir` (see [`RunDir::load_checkpoint`]).
fn restore<B: Compute>(
    dir: &RunDir,
    backend: &B,
    learners: &mut [Learner<B>],
    state: &RunState,
    epochs: usize,
    options: &Invocation,
    leader: bool,
) -> Result<Vec<Value>> {
    for learner in learners {
        dir.load_checkpoint(backend, learner, state, options.allow_non_finite, leader)?;
    }
    let lines = dir.read_metrics(state.epochs_done);
    if leader {
        eprintln!("{}", resume_line(state.epochs_done, epochs));
    }
    Ok(lines)
}

/// What a resumed run says as it restores: where it resumes, or that it has trained all its
/// epochs and how to train it longer.
fn resume_line(done: usize, epochs: usize) -> String {
    if done < epochs {
        format!("resuming after epoch {done} of {epochs}")
    } else {
        format!(
            "the run has trained all {epochs} of its epochs, so there is nothing to resume; to \
             train it longer, give --resume --epochs N, N above {epochs}"
        )
    }
}

/// A note when the model's head has more classes than the dataset (a preset's 100 classes on a
/// 10-class dataset, `--num-classes` left out): allowed, as the official code allows it, but the
/// extra outputs are never a target, which is seldom what was meant.
fn wider_head(spec: &ModelSpec, dataset: &str, data: &dyn Dataset) -> Option<String> {
    let classes = data.num_classes();
    (spec.num_classes > classes).then(|| {
        format!(
            "note: the model's head has {} classes and {dataset} has {classes}, so {} outputs are \
             never a target; give --num-classes {classes} for a head of the dataset's size",
            spec.num_classes,
            spec.num_classes - classes
        )
    })
}

/// The run's training set (with its augmentation) and test split, shaped for `spec`.
fn open_data(config: &RunSettings, spec: &ModelSpec) -> Result<(TrainSet, Arc<dyn Dataset>)> {
    let (name, dir) = (config.dataset.name(), config.data_dir.as_deref());
    let train_set = TrainSet {
        split: open_split(name, dir, spec, Split::Train, config.train_samples)?,
        augmentation: config.augmentation,
        mixup_off_epoch: config.mixup_off_epoch,
    };
    let test = open_dataset(name, dir, spec, Split::Test, config.test_samples)?;
    Ok((train_set, test))
}

/// A non-finite test loss after epoch `epoch` (from 0) stops training.
fn check_test_loss(test: &EvalResult, epoch: usize, dir: &RunDir) -> Result<()> {
    if test.loss.is_finite() {
        return Ok(());
    }
    Err(Error::Diverged {
        what: format!(
            "the test loss became {} after epoch {}",
            test.loss,
            epoch + 1
        ),
        saved: epoch,
        out: dir.path().display().to_string(),
    })
}

/// The `metrics.jsonl` line of epoch `epoch` (from 0), whose training and evaluation held at
/// most `peak` bytes on `device` (its name, kind and precision, as in the commands' JSON
/// reports); on CUDA also the host's waits for the device and uploads to it per step, and the
/// epoch's allocation retries; in fp16 the loss scale at the epoch's end and the steps it
/// skipped; on several ranks their number.
fn metrics_line(
    config: &RunSettings,
    epoch: usize,
    train: &EpochStats,
    test: &EvalResult,
    peak: usize,
    state: &RunState,
    device: &Device,
) -> Value {
    let mut line = json!({
        "epoch": epoch + 1,
        "train_loss": train.loss(),
        "train_acc1": train.acc1(),
        "test_loss": test.loss,
        "test_acc1": test.acc1,
        "test_acc5": test.acc5,
        "lr": config.lr(epoch),
        "images_per_second": train.images as f64 / train.seconds.max(1e-9),
        "epoch_seconds": train.seconds,
        "loader_images_per_second_per_worker": train.loader_images_per_second_per_worker(),
        "loader_wait_seconds": train.loader_wait_seconds,
        "peak_memory_bytes": peak,
        "best_test_acc1": state.best_test_acc1,
        "recomputes": train.recomputes,
        "diverged_recomputes": train.diverged_recomputes,
        "device": device.name(),
        "backend": device.kind(),
        "precision": device.precision().name(),
    });
    if let Some(fields) = line.as_object_mut() {
        if let Some(transfers) = train.transfers_per_step {
            fields.insert("host_waits_per_step".into(), json!(transfers.host_waits));
            fields.insert("uploads_per_step".into(), json!(transfers.uploads));
        }
        if let Some(retries) = train.alloc_retries {
            fields.insert("alloc_retries".into(), json!(retries));
        }
        if let Some(scale) = train.loss_scale {
            fields.insert("loss_scale".into(), json!(scale));
            fields.insert("skipped_steps".into(), json!(train.skipped_steps));
        }
        if config.ranks > 1 {
            fields.insert("ranks".into(), json!(config.ranks));
        }
    }
    line
}

/// The line printed after epoch `epoch` (from 0).
fn log_epoch(
    config: &RunSettings,
    epoch: usize,
    train: &EpochStats,
    test: &EvalResult,
    state: &RunState,
) {
    eprintln!(
        "epoch {}/{}: train loss {:.4} acc {:.2}%, test loss {:.4} acc {:.2}% (top-5 {:.2}%), \
         best {:.2}%",
        epoch + 1,
        config.epochs,
        train.loss(),
        100.0 * train.acc1(),
        test.loss,
        100.0 * test.acc1,
        100.0 * test.acc5,
        100.0 * state.best_test_acc1
    );
    if let Some(retries) = train.alloc_retries.filter(|&retries| retries > 0) {
        let allocations = counted(retries as usize, "allocation", "allocations");
        eprintln!(
            "  {}",
            footprint::retry_note(&format!("{allocations} in the epoch"))
        );
    }
}
