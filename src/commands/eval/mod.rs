//! `revsnn eval`: top-1 and top-5 accuracy (and loss) of a checkpoint on a dataset's test split;
//! with `--versus-cpu`, where the device and the CPU reference part ([`versus_cpu`]).

mod versus_cpu;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use revsnn_reference::{Backend, Cpu, DType, Precision};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ModelArgs, ThreadsArg, print_json_report};
use crate::checkpoint::{self, TensorFile};
use crate::data::Dataset;
use crate::data::synthetic::Split;
use crate::device::{Device, DeviceChoice, on_backend};
use crate::error::{Error, Result};
use crate::finite;
use crate::footprint;
use crate::model::BuildOptions;
use crate::network::Network;
use crate::spec::ModelSpec;
use crate::train::{EvalResult, evaluate, open_dataset};

/// The `.json` saved beside a checkpoint (`X.json` for `X.safetensors`): a run state (the
/// model's spec and the run's settings) or a bare spec.
struct Neighbour {
    path: PathBuf,
    value: Value,
}

impl Neighbour {
    /// The `.json` beside `checkpoint`, if there is one.
    fn read(checkpoint: &Path) -> Result<Option<Neighbour>> {
        let path = checkpoint.with_extension("json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let value = serde_json::from_str(&text)
            .map_err(|e| Error::file(&path, format!("not JSON: {e}")))?;
        Ok(Some(Neighbour { path, value }))
    }

    /// The model's spec: a run state's `spec`, or the file itself.
    fn spec(&self) -> Result<ModelSpec> {
        let spec = self.value.get("spec").unwrap_or(&self.value);
        ModelSpec::deserialize(spec).map_err(|e| {
            Error::file(
                &self.path,
                format!("no model spec in it: {e}; pass --model or --spec"),
            )
        })
    }

    /// The model's name: a run state's (`revsresnet21`, or the spec file of a run of `--spec`),
    /// else this file's path, as `--spec` names a model.
    fn model_name(&self) -> String {
        match self.value.get("model").and_then(Value::as_str) {
            Some(name) => name.to_string(),
            None => self.path.display().to_string(),
        }
    }

    /// The test data of a run state's settings (`dataset`, `data_dir`, `test_samples`), so that
    /// `eval` scores a run's checkpoint on the data the run tested on; `None` for a bare spec.
    fn test_data(&self) -> Option<TestData> {
        let config = self.value.get("config")?;
        Some(TestData {
            dataset: config["dataset"].as_str().map(String::from),
            data_dir: config["data_dir"].as_str().map(PathBuf::from),
            test_samples: config["test_samples"].as_u64().map(|n| n as usize),
        })
    }
}

/// Which test split `eval` scores: each part from its flag, else the run's, else the default.
#[derive(Debug)]
struct TestData {
    dataset: Option<String>,
    data_dir: Option<PathBuf>,
    test_samples: Option<usize>,
}

/// The test samples `eval` scores without `--test-samples` or a run's.
const DEFAULT_TEST_SAMPLES: usize = 1000;

/// The arguments of `revsnn eval`.
#[derive(Clone, Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint: safetensors (the model comes from the `.json` beside it, or --model/--spec),
    /// or a PyTorch file of torch.save holding a state_dict (the official code's and timm's
    /// training checkpoints included; docs/pytorch-files.md).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The dataset whose test split to score (default: the run's, from the run state beside a
    /// run's checkpoint; else `synthetic`, or `synthetic-events` for DVS models).
    #[arg(long)]
    pub dataset: Option<String>,
    /// The folder of a downloaded dataset (default: the run's).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A preset (as `train --model`), where the checkpoint has no run state beside it or holds
    /// another model's weights.
    #[arg(long, conflicts_with = "spec")]
    pub model: Option<String>,
    /// A JSON model spec file, in place of --model.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Override the number of classes of --model or --spec (a CIFAR preset's head has 100).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Override the number of time steps T of --model or --spec.
    #[arg(long)]
    pub time_steps: Option<usize>,
    /// Test samples: the synthetic datasets' size, a cap for the real ones (default: the
    /// run's, else 1000).
    #[arg(long)]
    pub test_samples: Option<usize>,
    /// Images per forward pass (the accuracy does not depend on it).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Where to compute: auto (CUDA when a usable GPU is found, else the CPU; one line on
    /// stderr says which and why), cpu or cuda.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
    /// The precision of the GEMM operands (convolutions, linear layers, attention matmuls):
    /// f32 (default), tf32, bf16 or fp16, accumulating in f32 (docs/precision.md). The CPU
    /// emulates every one; so does CUDA (bf16 from compute capability 8.0).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Load weights holding NaN or infinities anyway (a deliberate experiment); by default they
    /// are an error naming the tensor and the first such index.
    #[arg(long)]
    pub allow_non_finite: bool,
    /// Score the moving average of the weights that a timm training checkpoint keeps beside
    /// them (trained with --model-ema: its 'state_dict_ema', or DeiT's 'model_ema'), as timm's
    /// validate.py --use-ema; a checkpoint without one is an error.
    #[arg(long)]
    pub use_ema: bool,
    /// Also evaluate on the CPU reference in the same precision, batch by batch, and report where
    /// the two part: differing predictions, differing spikes per sample, and the predictions
    /// that differ without a flipped spike (docs/precision.md, "Two devices").
    #[arg(long)]
    pub versus_cpu: bool,
    /// Print one JSON object instead of a line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

impl EvalArgs {
    /// Runs `revsnn eval`; prints text or one JSON object.
    pub fn run(&self) -> Result<()> {
        self.threads.apply()?;
        let device = self.device.open(self.precision)?;
        let weights = match self.use_ema {
            true => checkpoint::read_ema_weights(&self.checkpoint)?,
            false => checkpoint::read_weights(&self.checkpoint)?,
        };
        finite::check_loaded(&self.checkpoint, &weights, self.allow_non_finite)?;
        let neighbour = Neighbour::read(&self.checkpoint)?;
        let (name, spec) = self.model(neighbour.as_ref())?;
        spec.validate()?;
        let test = self.test_data(neighbour.as_ref());
        let dataset = test.dataset.unwrap_or_else(|| {
            if spec.arch.is_dvs() {
                "synthetic-events"
            } else {
                "synthetic"
            }
            .into()
        });
        let data_dir = test.data_dir.as_deref();
        let samples = test.test_samples.unwrap_or(DEFAULT_TEST_SAMPLES);
        let data = open_dataset(&dataset, data_dir, &spec, Split::Test, samples)?;
        if self.batch == 0 {
            return Err(Error::Usage("--batch must be >= 1".into()));
        }
        if self.versus_cpu && matches!(device, Device::Cpu(_)) {
            eprintln!(
                "note: --versus-cpu on the CPU compares the CPU reference with itself (a check of \
                 the comparison, not of a device); give --device cuda to compare a GPU"
            );
        }
        let (result, agreement) = on_backend!(&device, DType::F32, |backend| {
            let setting = format!("--batch {}", self.batch);
            let advice = "Lower --batch, or choose a smaller model or image size";
            footprint::check_forward(&backend, &spec, self.batch, &setting, advice)?;
            if self.versus_cpu {
                let cpu = Cpu::<f32>::with_precision(self.precision);
                let (result, agreement) =
                    versus_cpu::versus_cpu(&backend, &cpu, &spec, &weights, data, self.batch)?;
                Ok::<_, Error>((result, Some(agreement)))
            } else {
                let result = evaluate_checkpoint(&backend, &spec, &weights, data, self.batch)?;
                Ok((result, None))
            }
        })?;
        let weights_read = if self.use_ema { "ema" } else { "model" };
        if self.json {
            let mut fields = json!({
                "checkpoint": self.checkpoint.display().to_string(),
                "weights": weights_read,
                "dataset": dataset,
                "samples": result.samples,
                "loss": result.loss,
                "acc1": result.acc1,
                "acc5": result.acc5,
            });
            if let Some(agreement) = &agreement {
                fields["versus_cpu"] = agreement.to_json();
            }
            print_json_report(&name, &device, fields);
        } else {
            let ema = if self.use_ema { ", EMA weights" } else { "" };
            println!(
                "{dataset} ({} samples{ema}): top-1 {:.2}%, top-5 {:.2}%, loss {:.4}",
                result.samples,
                100.0 * result.acc1,
                100.0 * result.acc5,
                result.loss
            );
            if let Some(agreement) = &agreement {
                agreement.print();
            }
        }
        Ok(())
    }

    /// The test data of the flags, with the run's (from the state beside the checkpoint) where
    /// a flag is not given and the dataset is the run's; stderr says what was taken.
    fn test_data(&self, neighbour: Option<&Neighbour>) -> TestData {
        let given = TestData {
            dataset: self.dataset.clone(),
            data_dir: self.data_dir.clone(),
            test_samples: self.test_samples,
        };
        let Some(run) = neighbour.and_then(Neighbour::test_data) else {
            return given;
        };
        if given.dataset.is_some() && given.dataset != run.dataset {
            // another dataset: the run's folder and sample count are not its own
            return given;
        }
        let merged = TestData {
            dataset: given.dataset.clone().or(run.dataset),
            data_dir: given.data_dir.clone().or(run.data_dir),
            test_samples: given.test_samples.or(run.test_samples),
        };
        let data_dir = merged
            .data_dir
            .as_ref()
            .map(|dir| dir.display().to_string());
        let taken: Vec<String> = [
            ("--dataset", given.dataset.is_none(), merged.dataset.clone()),
            ("--data-dir", given.data_dir.is_none(), data_dir),
            (
                "--test-samples",
                given.test_samples.is_none(),
                merged.test_samples.map(|n| n.to_string()),
            ),
        ]
        .into_iter()
        .filter_map(|(flag, unset, value)| Some(format!("{flag} {}", value.filter(|_| unset)?)))
        .collect();
        if let (false, Some(neighbour)) = (taken.is_empty(), neighbour) {
            let path = neighbour.path.display();
            eprintln!("the run's test data ({path}): {}", taken.join(", "));
        }
        merged
    }

    /// The model: `--model` or `--spec`, else the spec saved beside the checkpoint.
    fn model(&self, neighbour: Option<&Neighbour>) -> Result<(String, ModelSpec)> {
        if self.model.is_some() || self.spec.is_some() {
            let args = ModelArgs {
                model: self.model.clone(),
                spec: self.spec.clone(),
                num_classes: self.num_classes,
                time_steps: self.time_steps,
            };
            return args.resolve();
        }
        if self.num_classes.is_some() || self.time_steps.is_some() {
            return Err(Error::Usage(
                "--num-classes and --time-steps change the model of --model or --spec; the run's \
                 own model (from the state beside the checkpoint) is taken as it is"
                    .into(),
            ));
        }
        match neighbour {
            Some(neighbour) => Ok((neighbour.model_name(), neighbour.spec()?)),
            None => Err(Error::Usage(format!(
                "no {} beside the checkpoint to take the model from; pass --model or --spec",
                self.checkpoint.with_extension("json").display()
            ))),
        }
    }
}

/// Builds the network of `spec` on `backend` with `weights` loaded.
fn loaded_network<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    weights: &TensorFile,
) -> Result<Network<B>> {
    let mut network = Network::new(backend, spec, 0, BuildOptions::default())?;
    checkpoint::load_state_dict(backend, &mut network.store, weights)?;
    Ok(network)
}

/// Builds the network on `backend`, loads `weights` and evaluates it on `data`.
fn evaluate_checkpoint<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    weights: &TensorFile,
    data: Arc<dyn Dataset>,
    batch: usize,
) -> Result<EvalResult> {
    evaluate(
        backend,
        &mut loaded_network(backend, spec, weights)?,
        data,
        batch,
    )
}
