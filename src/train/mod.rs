//! The training loop behind `revsnn train`: the run's settings ([`config`], a recipe from
//! [`recipe`]), seeded batches from prefetching workers, a progress bar, `metrics.jsonl`,
//! `curves.png`, atomic checkpoints each epoch (`last.*`, `best.*`) and a bit-for-bit `--resume`.
//!
//! Run folder layout:
//! - `config.toml`: every knob of the run, resolved ([`RunConfig::settings`]);
//!   `revsnn train --config DIR/config.toml --out NEW` runs it again;
//! - `last.safetensors`: the weights and BatchNorm statistics under the official key names;
//! - `last.optimizer.safetensors`: the optimizer state (see [`Optimizer::state_tensors`]);
//! - `last.json`: the spec, the settings, epochs done, optimizer step count, RNG state, best
//!   accuracy ([`RunState`]);
//! - `best.safetensors` and `best.json`: the weights of the best test top-1 accuracy;
//! - `metrics.jsonl`, `curves.png`.

pub mod config;
pub mod loader;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod recipe;
pub mod tensorboard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use revsnn_reference::{Backend, DType, Element};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::checkpoint;
use crate::data::Dataset;
use crate::data::synthetic::{Split, Synthetic, SyntheticEvents};
use crate::device::{Compute, Device, Task};
use crate::error::{Error, Result};
use crate::model::{BuildOptions, Mode};
use crate::network::{Network, RunOptions};
use crate::optim::Optimizer;
use crate::spec::{Arch, ModelSpec};
use config::{RunConfig, RunModel, TrainSettings, changed_on_resume};
use loader::{Loader, Plain, shuffled};
use pipeline::{Capped, CifarNormalized, OpenedSplit, TrainSet};
use plot::{Curves, write_atomic, write_curves};
use progress::Progress;
use recipe::DatasetKind;

/// The seed the synthetic datasets are generated from: the same data whatever `--seed` trains.
pub const DATA_SEED: u64 = 2024;

/// The model `revsnn train` trains when given none: a small RevSResNet for 32x32 RGB, 10 classes.
pub fn default_spec() -> ModelSpec {
    ModelSpec {
        arch: Arch::Revsresnet,
        num_classes: 10,
        time_steps: 2,
        in_channels: 3,
        img_size: 32,
        layers: Some(vec![1, 1, 1, 1]),
        planes: Some(vec![8, 16, 16, 32]),
        depth: None,
        dim: None,
        heads: None,
        mlp_ratio: None,
        patch_size: None,
    }
}

/// Opens `split` of dataset `name` shaped for `spec`, capped at `samples` samples, as evaluation
/// sees it (normalised as the family's recipe says, docs/recipes.md §5).
pub fn open_dataset(
    name: &str,
    data_dir: Option<&Path>,
    spec: &ModelSpec,
    split: Split,
    samples: usize,
) -> Result<Arc<dyn Dataset>> {
    Ok(open_split(name, data_dir, spec, split, samples)?.data)
}

fn real_dir<'a>(name: &str, data_dir: Option<&'a Path>) -> Result<&'a Path> {
    data_dir.ok_or_else(|| {
        Error::Usage(format!(
            "--dataset {name} reads its files from disk: pass --data-dir DIR (the folder that \
             holds them, see the README's training section)"
        ))
    })
}

/// Opens `split` of dataset `name` for `spec`, capped at `samples`: the samples as evaluation
/// sees them and, for CIFAR, the pixels the training augmentation starts from.
pub fn open_split(
    name: &str,
    data_dir: Option<&Path>,
    spec: &ModelSpec,
    split: Split,
    samples: usize,
) -> Result<OpenedSplit> {
    use crate::data::cifar::{Cifar, CifarVariant, Split as DataSplit};
    let data_split = match split {
        Split::Train => DataSplit::Train,
        Split::Test => DataSplit::Test,
    };
    let mut pixels = None;
    let data: Arc<dyn Dataset> = match DatasetKind::from_name(name)? {
        DatasetKind::Synthetic => {
            if spec.arch.is_dvs() || spec.in_channels != 3 {
                return Err(Error::Usage(format!(
                    "--dataset synthetic gives 3-channel images, but the model ({:?}, {} input channels) wants {}; use --dataset synthetic-events for DVS models",
                    spec.arch,
                    spec.in_channels,
                    if spec.arch.is_dvs() {
                        "event frames"
                    } else {
                        "other channels"
                    }
                )));
            }
            Arc::new(Synthetic::new(DATA_SEED, split, samples, spec.img_size)?)
        }
        DatasetKind::SyntheticEvents => {
            if !spec.arch.is_dvs() || spec.in_channels != 2 {
                return Err(Error::Usage(
                    "--dataset synthetic-events gives 2-channel event frames [T, 2, H, W]: use a DVS model (revsresnet24, msresnet20, revsformer-2-256, spikingformer-2-256 or a *-dvs spec)".into(),
                ));
            }
            Arc::new(SyntheticEvents::new(
                DATA_SEED,
                split,
                samples,
                spec.time_steps,
                spec.img_size,
            )?)
        }
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let variant = if name == "cifar10" {
                CifarVariant::Cifar10
            } else {
                CifarVariant::Cifar100
            };
            let cifar = Arc::new(Cifar::load(real_dir(name, data_dir)?, variant, data_split)?);
            let normalized = Arc::new(CifarNormalized::new(cifar, spec.arch.is_resnet(), samples));
            pixels = Some(normalized.clone());
            normalized
        }
        DatasetKind::Dvs128Gesture | DatasetKind::Cifar10Dvs => {
            let dir = real_dir(name, data_dir)?;
            if !spec.arch.is_dvs() {
                return Err(Error::Usage(format!(
                    "--dataset {name} gives event frames [T, 2, 128, 128]: use a DVS model \
                     (revsresnet24, msresnet20, revsformer-2-256, spikingformer-2-256 or a *-dvs \
                     spec)"
                )));
            }
            let frames: Arc<dyn Dataset> = if name == "dvs128-gesture" {
                Arc::new(crate::data::dvs128::load(
                    dir,
                    data_split,
                    spec.time_steps,
                    None,
                )?)
            } else {
                Arc::new(crate::data::cifar10_dvs::load(
                    dir,
                    data_split,
                    spec.time_steps,
                    None,
                )?)
            };
            Arc::new(Capped::new(frames, samples))
        }
    };
    if data.num_classes() > spec.num_classes {
        return Err(Error::Usage(format!(
            "{name} has {} classes but the model's head has {}; pass --num-classes {}",
            data.num_classes(),
            spec.num_classes,
            data.num_classes()
        )));
    }
    if data.sample_shape() != spec.sample_shape() {
        return Err(Error::Usage(format!(
            "{name} gives samples of shape {:?} but the model wants {:?}",
            data.sample_shape(),
            spec.sample_shape()
        )));
    }
    Ok(OpenedSplit {
        data,
        cifar: pixels,
    })
}

/// The settings and position of a run, saved as `last.json` after every epoch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    /// The model's display name: a preset, a spec file or `revsresnet-small`.
    pub model: String,
    /// The model as built.
    pub spec: ModelSpec,
    /// Every knob of the run, resolved: what `config.toml` holds.
    pub config: TrainSettings,
    /// The settings as given (flags over the config file): `--resume --epochs N` resolves them
    /// again, so that what the recipe scaled to the run's length follows the new length.
    pub given: TrainSettings,
    /// Epochs finished; the next epoch to run.
    pub epochs_done: usize,
    /// The optimizer's step count (AdamW's bias correction needs it).
    pub optimizer_steps: u64,
    /// The optimizer state file, beside this one.
    pub optimizer_state: String,
    /// The RNG state: the shuffle of epoch `e` is seeded by `shuffle_seed(seed, e)`, so `seed`
    /// and `epochs_done` fix every later batch.
    pub next_shuffle_seed: u64,
    pub best_test_acc1: f64,
    pub best_epoch: Option<usize>,
}

const STATE_FORMAT: &str = "revsnn-train-state-v2";

/// A run ready to start or to continue: its settings, resolved, and where it stands.
#[derive(Clone, Debug)]
pub struct Run {
    /// Every knob of the run.
    pub config: RunConfig,
    /// The settings as given (flags over the config file), paths absolute, but the run folder.
    pub given: TrainSettings,
    /// Where a resumed run stopped; `None` for a new run.
    pub resumed: Option<RunState>,
}

impl Run {
    /// A new run of `given` (flags over the config file).
    pub fn start(given: TrainSettings) -> Result<Run> {
        let given = given.with_absolute_paths()?;
        Ok(Run {
            config: given.resolve()?,
            given: TrainSettings { out: None, ..given },
            resumed: None,
        })
    }

    /// The run in `given`'s run folder (`out`, or the default one of its model, dataset and
    /// seed), to continue with its own settings. `given` may repeat them; it may change only
    /// `epochs` (which resolves the run's given settings again for the new length), `data_dir`,
    /// `device` and the loader's knobs, and may name the model only if it is the run's.
    pub fn resume(given: TrainSettings) -> Result<Run> {
        let given = given.with_absolute_paths()?;
        let out = match &given.out {
            Some(out) => out.clone(),
            None => given.resolve()?.out,
        };
        let state = read_state(&out)?;
        let names_model = given.model.is_some()
            || given.spec.is_some()
            || given.num_classes.is_some()
            || given.time_steps.is_some();
        if names_model
            && given
                .clone()
                .over(state.config.clone())
                .resolve_model()?
                .spec
                != state.spec
        {
            return Err(Error::Usage(format!(
                "--resume: {} holds a run of another model ({}); leave out --model/--spec (and \
                 --num-classes, --time-steps) to continue it, or choose another --out",
                out.display(),
                state.model
            )));
        }
        let changed = changed_on_resume(&given, &state.config)?;
        if !changed.is_empty() {
            let list: Vec<String> = changed
                .iter()
                .map(|(key, value, run)| format!("{key} = {value} (the run has {run})"))
                .collect();
            return Err(Error::Usage(format!(
                "--resume continues the run in {} with its own settings ({}), but these differ: \
                 {}. Leave them out, or start a new run with --config {} and another --out",
                out.display(),
                out.join("config.toml").display(),
                list.join("; "),
                out.join("config.toml").display()
            )));
        }
        let changes = TrainSettings {
            epochs: given.epochs,
            data_dir: given.data_dir.clone(),
            device: given.device,
            loader: given.loader.clone(),
            ..TrainSettings::default()
        };
        let new_length = given.epochs.is_some() && given.epochs != state.config.epochs;
        let base = if new_length {
            &state.given
        } else {
            &state.config
        };
        let model = RunModel::of_run(&state.config, state.model.clone(), state.spec.clone());
        let mut config = RunConfig::resolve(&changes.clone().over(base.clone()), model)?;
        config.out = out;
        Ok(Run {
            config,
            given: changes.over(state.given.clone()),
            resumed: Some(state),
        })
    }
}

/// How a `revsnn train` invocation runs, beside the run's settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrainOptions {
    /// Stop after this many epochs of this invocation (a run split into sessions; `--resume`
    /// continues it exactly as if it had not stopped).
    pub stop_after: Option<usize>,
    /// No progress bar.
    pub quiet: bool,
}

/// The seed of epoch `epoch`'s shuffle.
pub fn shuffle_seed(seed: u64, epoch: usize) -> u64 {
    let mut rng = revsnn_reference::testing::SplitMix64::new(seed ^ 0x5348_5546_464c_4500);
    rng.next_u64() ^ (epoch as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// Loss and accuracies over a dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    pub loss: f64,
    pub acc1: f64,
    pub acc5: f64,
    pub samples: usize,
}

/// Mean cross-entropy, top-1 and top-5 hits of logits `[B, K]` against `labels`.
fn score(logits: &[f64], labels: &[usize]) -> (f64, usize, usize) {
    let classes = logits.len() / labels.len().max(1);
    let (mut loss, mut top1, mut top5) = (0.0, 0, 0);
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        loss += max + sum.ln() - row[label];
        let better = row.iter().filter(|&&v| v > row[label]).count();
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);
    }
    (loss, top1, top5)
}

fn batch_tensor<B: Backend>(
    backend: &B,
    data: &dyn Dataset,
    images: Vec<f32>,
    count: usize,
) -> Result<B::Tensor> {
    let mut shape = vec![count];
    shape.extend(data.sample_shape());
    Ok(backend.tensor_from_vec(
        &shape,
        images
            .into_iter()
            .map(|v| B::Elem::cast(f64::from(v)))
            .collect(),
    )?)
}

/// Evaluates `network` (eval mode, running statistics) on all of `data`.
pub fn evaluate<B: Backend>(
    backend: &B,
    network: &mut Network<B>,
    data: Arc<dyn Dataset>,
    batch: usize,
) -> Result<EvalResult> {
    let order: Vec<usize> = (0..data.len()).collect();
    let (mut loss, mut top1, mut top5, mut samples) = (0.0, 0, 0, 0);
    for next in Loader::new(Arc::new(Plain(data.clone())), order, batch, false, 1, 2, 0) {
        let next = next?;
        let count = next.labels.len();
        let images = batch_tensor(backend, data.as_ref(), next.images, count)?;
        let logits = network.forward(
            backend,
            &images,
            RunOptions {
                mode: Mode::Eval,
                update_running_stats: false,
                audit: false,
            },
        )?;
        let logits: Vec<f64> = backend
            .to_vec(&logits)?
            .into_iter()
            .map(|v| v.widen())
            .collect();
        let (l, a1, a5) = score(&logits, &next.labels);
        loss += l;
        top1 += a1;
        top5 += a5;
        samples += count;
    }
    let n = samples.max(1) as f64;
    Ok(EvalResult {
        loss: loss / n,
        acc1: top1 as f64 / n,
        acc5: top5 as f64 / n,
        samples,
    })
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    pub out: PathBuf,
    /// The last epoch's metrics line.
    pub last: Value,
    pub best_test_acc1: f64,
    pub seconds: f64,
}

fn file_error(path: &Path, detail: String) -> Error {
    Error::File {
        path: path.display().to_string(),
        detail,
    }
}

fn read_state(out: &Path) -> Result<RunState> {
    let path = out.join("last.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        file_error(
            &path,
            format!(
                "cannot read the run state to resume: {e} (is --out the folder of an earlier run?)"
            ),
        )
    })?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| file_error(&path, format!("not a revsnn run state: {e}")))?;
    if value["format"] != STATE_FORMAT {
        return Err(file_error(
            &path,
            format!(
                "run state format {}, expected {STATE_FORMAT:?}: the run was written by another \
                 version of revsnn; continue it with that version, or start a new run",
                value["format"]
            ),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| file_error(&path, format!("not a revsnn run state: {e}")))
}

/// Trains `run` on `device` in f32, printing the run folder first and a progress bar per epoch;
/// writes `config.toml` before the first epoch of this invocation.
pub fn train(run: &Run, options: &TrainOptions, device: &Device) -> Result<TrainSummary> {
    device.run(DType::F32, Train { run, options })
}

/// [`train_on`] as a [`Task`].
struct Train<'a> {
    run: &'a Run,
    options: &'a TrainOptions,
}

impl Task for Train<'_> {
    type Output = TrainSummary;

    fn run<B: Compute>(self, backend: B) -> Result<TrainSummary> {
        train_on(backend, self.run, self.options)
    }
}

/// Trains `run` on `backend`.
fn train_on<B: Compute>(backend: B, run: &Run, options: &TrainOptions) -> Result<TrainSummary> {
    let started = Instant::now();
    let config = &run.config;
    let out = config.out.clone();
    let settings = config.settings();
    let mut state = match &run.resumed {
        Some(resumed) => RunState {
            config: settings.clone(),
            given: run.given.clone(),
            ..resumed.clone()
        },
        None => {
            if out.join("last.json").exists() {
                return Err(Error::Usage(format!(
                    "{} already holds a run; pass --resume to continue it, or choose another --out",
                    out.display()
                )));
            }
            RunState {
                format: STATE_FORMAT.into(),
                model: config.model.name.clone(),
                spec: config.model.spec.clone(),
                config: settings.clone(),
                given: run.given.clone(),
                epochs_done: 0,
                optimizer_steps: 0,
                optimizer_state: "last.optimizer.safetensors".into(),
                next_shuffle_seed: shuffle_seed(config.seed, 0),
                best_test_acc1: 0.0,
                best_epoch: None,
            }
        }
    };
    let spec = state.spec.clone();
    let dataset = config.dataset.name();
    let train_set = TrainSet {
        split: open_split(
            dataset,
            config.data_dir.as_deref(),
            &spec,
            Split::Train,
            config.train_samples,
        )?,
        augmentation: config.augmentation,
        mixup_off_epoch: config.mixup_off_epoch,
    };
    let train_data = train_set.split.data.clone();
    let test_data = open_dataset(
        dataset,
        config.data_dir.as_deref(),
        &spec,
        Split::Test,
        config.test_samples,
    )?;
    let mut network = Network::new(&backend, &spec, config.seed, BuildOptions::default())?;
    let mut optimizer = Optimizer::new(config.optimizer, &network.store);
    std::fs::create_dir_all(&out).map_err(|e| {
        file_error(
            &out,
            format!("cannot create the run folder: {e} (choose a writable --out)"),
        )
    })?;
    eprintln!("run folder: {}", out.display());
    write_atomic(
        &out.join("config.toml"),
        config_file_text(config, Some(&out))?.as_bytes(),
    )?;
    let metrics_path = out.join("metrics.jsonl");
    let mut lines: Vec<Value> = Vec::new();
    if run.resumed.is_some() {
        let weights = checkpoint::read(&out.join("last.safetensors"))?;
        checkpoint::load_state_dict(&backend, &mut network.store, &weights)?;
        let optimizer_path = out.join(&state.optimizer_state);
        let tensors = checkpoint::read(&optimizer_path)?;
        optimizer.load_state_tensors(&backend, &network.store, &tensors, state.optimizer_steps)?;
        let text = std::fs::read_to_string(&metrics_path).unwrap_or_default();
        lines = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(state.epochs_done)
            .collect();
        eprintln!(
            "resuming after epoch {} of {}",
            state.epochs_done, config.epochs
        );
    }
    let run_name = out.file_name().map_or_else(
        || out.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let steps_per_epoch = train_data.len() / config.batch;
    if steps_per_epoch == 0 {
        return Err(Error::Usage(format!(
            "--batch {} is larger than the {} training samples; lower --batch or raise --train-samples",
            config.batch,
            train_data.len()
        )));
    }
    let mut last = lines.last().cloned().unwrap_or(Value::Null);
    let end = match options.stop_after {
        Some(count) => config.epochs.min(state.epochs_done + count),
        None => config.epochs,
    };
    for epoch in state.epochs_done..end {
        let lr = config.lr(epoch);
        backend.reset_peak_memory();
        let epoch_seed = shuffle_seed(config.seed, epoch);
        let order = shuffled(train_data.len(), epoch_seed);
        let source = train_set.source(epoch, spec.num_classes);
        let mut progress = Progress::new(
            format!("epoch {}/{}", epoch + 1, config.epochs),
            steps_per_epoch,
            options.quiet,
        );
        let epoch_start = Instant::now();
        let (mut loss_sum, mut hits, mut seen) = (0.0, 0usize, 0usize);
        let batches = Loader::new(
            source,
            order,
            config.batch,
            true,
            config.workers,
            config.prefetch,
            epoch_seed,
        );
        for (step, next) in batches.enumerate() {
            let next = next?;
            let count = next.labels.len();
            let images = batch_tensor(&backend, train_data.as_ref(), next.images, count)?;
            let mut grads = network.zero_grads();
            let report = match next.targets {
                Some(targets) => {
                    let classes = targets.len() / count.max(1);
                    let targets = backend.tensor_from_vec(
                        &[count, classes],
                        targets
                            .into_iter()
                            .map(|v| B::Elem::cast(f64::from(v)))
                            .collect(),
                    )?;
                    network.train_step_soft(
                        &backend,
                        &mut grads,
                        &images,
                        &targets,
                        RunOptions::default(),
                    )?
                }
                None => network.train_step(
                    &backend,
                    &mut grads,
                    &images,
                    &next.labels,
                    RunOptions::default(),
                )?,
            };
            let loss = report.output.loss.widen();
            if !loss.is_finite() {
                return Err(Error::Usage(format!(
                    "the training loss became {loss} at epoch {}, step {} (lr {lr}): training \
                     diverged and stopped. The last good checkpoint is kept in {} (after epoch \
                     {}); lower --lr and start again, or --resume from it",
                    epoch + 1,
                    step + 1,
                    out.display(),
                    state.epochs_done
                )));
            }
            optimizer.step(&backend, &mut network.store, &grads, lr)?;
            let logits: Vec<f64> = backend
                .to_vec(&report.output.logits)?
                .into_iter()
                .map(|v| v.widen())
                .collect();
            let (_, top1, _) = score(&logits, &next.labels);
            loss_sum += loss * count as f64;
            hits += top1;
            seen += count;
            progress.update(
                step + 1,
                seen,
                loss_sum / seen as f64,
                hits as f64 / seen as f64,
            );
        }
        backend.synchronize()?;
        let train_seconds = epoch_start.elapsed().as_secs_f64();
        let test = evaluate(
            &backend,
            &mut network,
            test_data.clone(),
            config.batch.max(32),
        )?;
        if !test.loss.is_finite() {
            return Err(Error::Usage(format!(
                "the test loss became {} after epoch {}: training diverged and stopped. The last \
                 good checkpoint is kept in {} (after epoch {}); lower --lr and start again",
                test.loss,
                epoch + 1,
                out.display(),
                state.epochs_done
            )));
        }
        let peak = backend.peak_memory_bytes();
        state.epochs_done = epoch + 1;
        state.optimizer_steps = optimizer.steps();
        state.next_shuffle_seed = shuffle_seed(config.seed, epoch + 1);
        let improved = state.best_epoch.is_none() || test.acc1 > state.best_test_acc1;
        if improved {
            state.best_test_acc1 = test.acc1;
            state.best_epoch = Some(epoch + 1);
        }
        // checkpoint: tensors first, the state that names them last
        let weights = checkpoint::state_dict(&backend, &network.store)?;
        checkpoint::write(
            &out.join(&state.optimizer_state),
            &optimizer.state_tensors(&backend, &network.store)?,
        )?;
        checkpoint::write(&out.join("last.safetensors"), &weights)?;
        let state_json = serde_json::to_string_pretty(&state).expect("the state serialises");
        if improved {
            checkpoint::write(&out.join("best.safetensors"), &weights)?;
            write_atomic(&out.join("best.json"), state_json.as_bytes())?;
        }
        write_atomic(&out.join("last.json"), state_json.as_bytes())?;
        let line = json!({
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen.max(1) as f64,
            "train_acc1": hits as f64 / seen.max(1) as f64,
            "test_loss": test.loss,
            "test_acc1": test.acc1,
            "test_acc5": test.acc5,
            "lr": lr,
            "images_per_second": seen as f64 / train_seconds.max(1e-9),
            "epoch_seconds": train_seconds,
            "peak_memory_bytes": peak,
            "best_test_acc1": state.best_test_acc1,
        });
        lines.push(line.clone());
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if text.is_empty() {
            text.push('\n');
        }
        write_atomic(&metrics_path, text.as_bytes())?;
        let curves = Curves::from_metrics(&run_name, &lines);
        write_curves(&out.join("curves.png"), &curves)?;
        if !options.quiet {
            eprintln!(
                "epoch {}/{}: train loss {:.4} acc {:.2}%, test loss {:.4} acc {:.2}% (top-5 {:.2}%), best {:.2}%",
                epoch + 1,
                config.epochs,
                loss_sum / seen.max(1) as f64,
                100.0 * hits as f64 / seen.max(1) as f64,
                test.loss,
                100.0 * test.acc1,
                100.0 * test.acc5,
                100.0 * state.best_test_acc1
            );
        }
        last = line;
    }
    Ok(TrainSummary {
        out,
        last,
        best_test_acc1: state.best_test_acc1,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The run's settings as a config file, with comments naming the model and, for the run folder
/// `out`, how to run them again.
pub fn config_file_text(config: &RunConfig, out: Option<&Path>) -> Result<String> {
    let spec = serde_json::to_string(&config.model.spec).expect("the spec serialises");
    let mut text = format!(
        "# revsnn train: every setting of the run, resolved ({} recipe).\n\
         # model {}: {spec}\n",
        config.recipe.name(),
        config.model.name
    );
    if let Some(out) = out {
        text += &format!(
            "# Run it again: revsnn train --config {} --out NEW_FOLDER\n",
            out.join("config.toml").display()
        );
    }
    Ok(text + "\n" + &config.settings().to_toml()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_count_top1_and_top5() {
        // rows of 7 classes: label 6 is the best; label 0 is second; label 1 is sixth
        let logits = [
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0, 6.0, 1.0, 2.0,
            3.0, 4.0, 5.0, 7.0,
        ];
        let (loss, top1, top5) = score(&logits, &[6, 0, 1]);
        assert_eq!((top1, top5), (1, 2));
        assert!(loss > 0.0);
    }
}
