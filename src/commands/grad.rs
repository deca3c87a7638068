//! `revsnn grad`: one training step's outputs and gradients for given weights and input, in the
//! format of the parity fixtures (fixtures/README.md: parity with the official code). Models run
//! with the float coupling (the official one).

use std::path::{Path, PathBuf};

use clap::Args;

use num_traits::Zero;
use revsnn_reference::{Backend, DType, Element, Precision};

use super::{DTypeArg, ModelArgs, ThreadsArg};
use crate::checkpoint::{self, StoredTensor, TensorData, TensorFile};
use crate::device::{DeviceChoice, on_backend};
use crate::error::{Error, Result};
use crate::finite;
use crate::footprint;
use crate::model::reversible::Storage;
use crate::model::{BuildOptions, EntryKind, Grads, Mode, ParamId, ParamStore, Targets};
use crate::network::{Network, PassOptions};
use crate::spec::ModelSpec;

/// The validated contents of an input file: images and labels.
pub struct Batch {
    pub shape: Vec<usize>,
    pub images: Vec<f64>,
    pub labels: Vec<usize>,
}

/// Reads `images` (float, `[B, C, H, W]` or `[B, T, C, H, W]` for DVS) and `labels` (`[B]` int64,
/// each in `[0, K)`) and checks them against `spec`; non-finite images are an error unless
/// `allow_non_finite`.
pub fn read_batch(path: &Path, spec: &ModelSpec, allow_non_finite: bool) -> Result<Batch> {
    let file = checkpoint::read(path)?;
    finite::check_loaded(path, &file, allow_non_finite)?;
    let fail = |detail: String| Error::file(path, detail);
    let find = |name: &str| file.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    let images = find("images").ok_or_else(|| fail("no tensor named images".into()))?;
    let labels = find("labels").ok_or_else(|| fail("no tensor named labels".into()))?;
    if matches!(images.data, TensorData::I64(_)) {
        return Err(fail("images must be F32 or F64".into()));
    }
    let batch = images.shape.first().copied().unwrap_or(0);
    let mut expected = vec![batch];
    expected.extend(spec.sample_shape());
    if batch == 0 || images.shape != expected {
        return Err(fail(format!(
            "images have shape {:?}; this model takes [B, {}] with B >= 1",
            images.shape,
            spec.sample_shape()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let TensorData::I64(values) = &labels.data else {
        return Err(fail("labels must be int64".into()));
    };
    if labels.shape != [batch] {
        return Err(fail(format!(
            "labels have shape {:?}, expected [{batch}]",
            labels.shape
        )));
    }
    let labels = values
        .iter()
        .map(|&l| {
            usize::try_from(l)
                .ok()
                .filter(|&l| l < spec.num_classes)
                .ok_or_else(|| fail(format!("label {l} is outside [0, {})", spec.num_classes)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Batch {
        shape: images.shape.clone(),
        images: images.to_f64(),
        labels,
    })
}

/// Runs one training-mode forward (BN batch statistics), mean cross-entropy and backward, then an
/// eval-mode forward with the running statistics as loaded, and returns `logits_train`, `loss`,
/// `grad_input`, `grad.<key>` for every parameter (zeros where no gradient reached it),
/// `after_forward.<key>` for every BN running statistic, and `logits_eval`.
pub fn compute<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    weights: &TensorFile,
    batch: &Batch,
) -> Result<TensorFile> {
    let mut network = Network::new(backend, spec, 0, BuildOptions::default())?;
    checkpoint::load_state_dict(backend, &mut network.store, weights)?;
    let loaded = network.store.clone();
    let images = backend.tensor_from_vec(
        &batch.shape,
        batch.images.iter().map(|&v| B::Elem::cast(v)).collect(),
    )?;
    let mut grads = network.zero_grads();
    let step = network
        .train_step(
            backend,
            &mut grads,
            &images,
            Targets::Hard(&batch.labels),
            PassOptions::default(),
        )?
        .output;

    let mut outputs: TensorFile = vec![
        ("logits_train".into(), stored(backend, &step.logits)?),
        ("loss".into(), stored(backend, &step.loss)?),
        ("grad_input".into(), stored(backend, &step.grad_input)?),
    ];
    outputs.extend(gradients_and_statistics(backend, &network.store, &grads)?);
    network.store = loaded;
    let logits_eval = network.forward(
        backend,
        &images,
        PassOptions {
            mode: Mode::Eval,
            update_running_stats: false,
            audit: false,
            loss_scale: 1.0,
        },
    )?;
    outputs.push(("logits_eval".into(), stored(backend, &logits_eval)?));
    Ok(outputs)
}

/// `grad.<key>` for every parameter of `store` (zeros where no gradient reached it) and
/// `after_forward.<key>` for every BatchNorm running statistic, in `state_dict` order.
fn gradients_and_statistics<B: Backend>(
    backend: &B,
    store: &ParamStore<B>,
    grads: &Grads<B>,
) -> Result<TensorFile> {
    let mut outputs = TensorFile::new();
    for (index, entry) in store.entries().iter().enumerate() {
        let id = ParamId(index);
        match entry.kind {
            EntryKind::Parameter => {
                let grad = match grads.get(id) {
                    Some(grad) => stored(backend, grad)?,
                    None => StoredTensor::from_elements(
                        entry.shape.clone(),
                        vec![B::Elem::zero(); entry.shape.iter().product()],
                    ),
                };
                outputs.push((format!("grad.{}", entry.name), grad));
            }
            EntryKind::RunningStat => outputs.push((
                format!("after_forward.{}", entry.name),
                stored(backend, store.get(id))?,
            )),
            EntryKind::BatchesTracked => {}
        }
    }
    Ok(outputs)
}

/// `tensor` downloaded, in its own element type.
fn stored<B: Backend>(backend: &B, tensor: &B::Tensor) -> Result<StoredTensor> {
    Ok(StoredTensor::from_elements(
        backend.shape(tensor),
        backend.to_vec(tensor)?,
    ))
}

/// The arguments of `revsnn grad`.
#[derive(Clone, Debug, Args)]
pub struct GradArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights: a state_dict under the official key names, in safetensors or a PyTorch file of
    /// torch.save (docs/pytorch-files.md).
    #[arg(long)]
    pub weights: PathBuf,
    /// Input: a safetensors file with `images` and `labels`.
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the outputs, a safetensors file: `logits_train`, `loss`, `grad_input`,
    /// `grad.<key>` for every parameter, `after_forward.<key>` for every BatchNorm running
    /// statistic, `logits_eval`.
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: DTypeArg,
    /// Where to compute: cpu (the reference), cuda, or auto (CUDA when a usable GPU is found).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// The precision of the GEMM operands (convolutions, linear layers, attention matmuls):
    /// f32 (default), tf32, bf16 or fp16, accumulating in f32 (docs/precision.md). The CPU
    /// emulates every one; so does CUDA (bf16 from compute capability 8.0).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Load weights or input holding NaN or infinities anyway (a deliberate experiment); by default they
    /// are an error naming the tensor and the first such index.
    #[arg(long)]
    pub allow_non_finite: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

impl GradArgs {
    /// Runs `revsnn grad`: reads the files, computes, writes `output`.
    pub fn run(&self) -> Result<()> {
        self.threads.apply()?;
        let device = self.device.open(self.precision)?;
        let (_, spec) = self.model.resolve()?;
        let weights = checkpoint::read_weights(&self.weights)?;
        finite::check_loaded(&self.weights, &weights, self.allow_non_finite)?;
        let batch = read_batch(&self.input, &spec, self.allow_non_finite)?;
        let outputs = on_backend!(&device, DType::from(self.dtype), |backend| {
            let samples = batch.labels.len();
            let setting = format!("{} ({samples} samples)", self.input.display());
            footprint::check_step(&backend, &spec, samples, Storage::Reversible, &setting)?;
            compute(&backend, &spec, &weights, &batch)
        })
        .map_err(|e| match e {
            Error::Spec(detail) => Error::file(&self.weights, detail),
            other => other,
        })?;
        checkpoint::write(&self.output, &outputs)
    }
}
