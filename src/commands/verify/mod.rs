//! `revsnn verify`: on random weights and inputs, checks a model's invertibility (reconstruction
//! error, spike flips between forward and recompute counted exactly), its reversible gradients
//! against stored-activation backpropagation of the same model, and a finite-difference spot
//! check of its gradients (docs/design.md's checks, for any spec). Under `--precision` other
//! than f32 the reversible checks compare two runs in that precision and are reported, not held
//! to the f32 bars, and a forward is compared with the f64 reference ([`precision`]).

pub mod precision;

use clap::{Args, ValueEnum};
use revsnn_reference::testing::{SplitMix64, five_point_difference, relative_error};
use revsnn_reference::{Backend, Cpu, DType, Element, Precision};
use serde_json::{Value, json};

use super::{DTypeArg, ModelArgs, ThreadsArg, print_json_report, random_batch, random_images};
use crate::device::{Device, DeviceChoice, on_backend};
use crate::error::{Error, Result};
use crate::footprint;
use crate::model::reversible::{Coupling, ReversibleOptions, Storage};
use crate::model::{BuildOptions, EntryKind, Grads, Mode, ParamId, Targets};
use crate::network::{Network, PassOptions};
use crate::spec::ModelSpec;
use crate::train::evaluate::widened;
use precision::{PrecisionReport, compare_with_f64};

/// What `verify` found.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyReport {
    /// Largest relative L2 error between a reversible sequence's input and its reconstruction.
    pub reconstruction_max_rel_err: f64,
    /// Spikes that differ between the forward and the backward's recompute.
    pub spike_flips: u64,
    /// Spikes compared.
    pub spikes_compared: u64,
    /// Relative L2 error of the reversible gradients (all parameters together, and the input
    /// gradient, the larger of the two) against stored-activation backpropagation.
    pub grad_max_rel_err_vs_bptt: f64,
    /// Relative L2 error of backpropagated against central-difference gradients on sampled
    /// coordinates, in f64 with smooth neurons and the float coupling.
    pub fd_max_rel_err: f64,
    /// Coordinates checked by finite differences.
    pub fd_coordinates: usize,
    /// Coordinates skipped because a kink lay within the stencil's reach.
    pub fd_skipped: usize,
    /// The checks that did not run, each with why: a check that compared nothing proves
    /// nothing, so any entry here fails the report.
    pub skipped: Vec<String>,
    /// Under a precision other than f32: a forward in it against the f64 reference.
    pub versus_f64: Option<PrecisionReport>,
    /// Every check ran and met its bar.
    pub passed: bool,
}

/// The checks that compared nothing: no finite-difference coordinate checked, or (for a model
/// with reversible sequences) no spike compared between forward and recompute.
pub fn skipped_checks(
    reversible: bool,
    spikes_compared: u64,
    fd_coordinates: usize,
    fd_skipped: usize,
) -> Vec<String> {
    let mut skipped = Vec::new();
    if reversible && spikes_compared == 0 {
        skipped.push(
            "spike flips: no spike was compared between forward and recompute (the audit saw no \
             reversible neuron layer)"
                .to_string(),
        );
    }
    if fd_coordinates == 0 {
        skipped.push(format!(
            "finite differences: 0 coordinates checked ({fd_skipped} skipped near kinks); \
             give --fd-samples >= 1, or another --seed if every coordinate lay near a kink"
        ));
    }
    skipped
}

/// The bars `verify` applies: exact coupling bitwise; float coupling 1e-12 (f64) or 1e-5 (f32)
/// reconstruction and 1e-10 (f64) or 1e-4 (f32) gradients; no spike flip; finite differences
/// 1e-6.
pub fn thresholds(coupling: Coupling, dtype: DType) -> (f64, f64) {
    match (coupling, dtype) {
        (Coupling::Exact, _) => (0.0, 0.0),
        (Coupling::Float, DType::F64) => (1e-12, 1e-10),
        (Coupling::Float, DType::F32) => (1e-5, 1e-4),
    }
}

fn flatten_grads<B: Backend>(
    backend: &B,
    network: &Network<B>,
    grads: &Grads<B>,
) -> Result<Vec<f64>> {
    let mut all = Vec::new();
    for (index, entry) in network.store.entries().iter().enumerate() {
        if entry.kind != EntryKind::Parameter {
            continue;
        }
        match grads.get(ParamId(index)) {
            Some(grad) => all.extend(backend.to_vec(grad)?.into_iter().map(Element::widen)),
            None => all.extend(std::iter::repeat_n(0.0, entry.shape.iter().product())),
        }
    }
    Ok(all)
}

/// The reversible checks on `backend`: reconstruction error, spike flips, spikes compared and the
/// gradients' relative error against stored-activation backpropagation.
fn checks<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    coupling: Coupling,
    seed: u64,
    batch: usize,
) -> Result<(f64, u64, u64, f64)> {
    let options = |storage| BuildOptions {
        reversible: ReversibleOptions {
            coupling,
            storage,
            ..Default::default()
        },
        ..Default::default()
    };
    let (images, labels) = random_images(backend, spec, batch, seed)?;
    let step = |storage, pass| -> Result<_> {
        let mut network = Network::new(backend, spec, seed, options(storage))?;
        let mut grads = network.zero_grads();
        let targets = Targets::Hard(&labels);
        let report = network.train_step(backend, &mut grads, &images, targets, pass)?;
        Ok((network, grads, report))
    };
    let audited = PassOptions {
        audit: true,
        ..Default::default()
    };
    let (reversible, rev_grads, report) = step(Storage::Reversible, audited)?;
    let audit = report.audit.unwrap_or_default();
    let (stored, stored_grads, baseline) =
        step(Storage::StoredActivations, PassOptions::default())?;
    let params = relative_error(
        &flatten_grads(backend, &reversible, &rev_grads)?,
        &flatten_grads(backend, &stored, &stored_grads)?,
    );
    let input = relative_error(
        &widened(backend, &report.output.grad_input)?,
        &widened(backend, &baseline.output.grad_input)?,
    );
    Ok((
        audit.max_reconstruction_rel_err,
        audit.spike_flips,
        audit.spikes_compared,
        params.max(input),
    ))
}

/// The derivative of `f` at `x0` by the five-point stencil at steps `2e-6` and `1e-6`, or `None`
/// when the two disagree by more than `1e-7` relative: then a kink (a max-pool window switching
/// its maximum) lies within reach of the stencil, and no finite difference measures the gradient
/// there. Errors of `f` propagate.
fn smooth_derivative(mut f: impl FnMut(f64) -> Result<f64>, x0: f64) -> Result<Option<f64>> {
    let mut failure = None;
    let mut at = |step: f64| {
        five_point_difference(
            |x| {
                f(x[0]).unwrap_or_else(|e| {
                    failure.get_or_insert(e);
                    f64::NAN
                })
            },
            &[x0],
            step,
        )[0]
    };
    let (coarse, fine) = (at(2e-6), at(1e-6));
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(((coarse - fine).abs() <= 1e-7 * fine.abs().max(1e-2)).then_some(fine))
}

/// Finite differences on `samples` coordinates, in f64 with smooth neurons and BatchNorm in
/// training mode without running-statistic updates: half on the input coordinates with the
/// largest gradients, half on the largest-gradient coordinate of randomly drawn parameter
/// tensors (where the differences measure the gradient rather than their own rounding noise),
/// skipping points next to a kink ([`smooth_derivative`]). Returns the relative L2 error over the
/// checked coordinates ([`Comparison::error`]), how many were checked and how many were skipped.
/// `backend` computes in f64 (the stencil needs its precision).
fn finite_differences<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    seed: u64,
    batch: usize,
    samples: usize,
) -> Result<(f64, usize, usize)> {
    let mut probe = Probe::new(backend, spec, seed, batch)?;
    let mut comparison = Comparison::default();
    probe.check_inputs(samples.div_ceil(2), &mut comparison)?;
    probe.check_parameters(samples / 2, seed, &mut comparison)?;
    let checked = comparison.analytic.len();
    Ok((comparison.error(), checked, comparison.skipped))
}

/// Analytic derivatives and their finite differences, coordinate by coordinate.
#[derive(Default)]
struct Comparison {
    analytic: Vec<f64>,
    numeric: Vec<f64>,
    /// Coordinates next to a kink, where no finite difference measures the gradient.
    skipped: usize,
}

impl Comparison {
    /// Records a coordinate whose gradient is `analytic` and its finite difference (`None`:
    /// skipped).
    fn add(&mut self, analytic: f64, numeric: Option<f64>) {
        match numeric {
            Some(numeric) => {
                self.analytic.push(analytic);
                self.numeric.push(numeric);
            }
            None => self.skipped += 1,
        }
    }

    /// The relative L2 error of the analytic derivatives, with a floor of 1e-2 on the reference
    /// norm: the stencil's own error is up to about 1e-9 absolute (the loss's rounding in f64
    /// divided by steps of 1e-6), so below a norm of 1e-2 the comparison is absolute, at 1e-8,
    /// which a wrong gradient (off by its own size) still fails by orders of magnitude.
    fn error(&self) -> f64 {
        let difference: Vec<f64> = (self.analytic.iter().zip(&self.numeric))
            .map(|(a, n)| a - n)
            .collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        norm(&difference) / norm(&self.numeric).max(1e-2)
    }
}

/// How the finite differences run the network: training-mode BatchNorm (batch statistics) that
/// leaves the running statistics alone, so that every evaluation of the loss is the same function.
const PROBE_PASS: PassOptions = PassOptions {
    mode: Mode::Train,
    update_running_stats: false,
    audit: false,
    loss_scale: 1.0,
};

/// A smooth network, a random batch and their gradients: what the finite differences probe.
struct Probe<'a, B: Backend> {
    backend: &'a B,
    network: Network<B>,
    shape: Vec<usize>,
    values: Vec<f64>,
    images: B::Tensor,
    labels: Vec<usize>,
    grads: Grads<B>,
    grad_input: Vec<f64>,
}

impl<'a, B: Backend> Probe<'a, B> {
    /// `spec` with smooth neurons and weights from `seed`, a batch of `batch` random samples, and
    /// one training step's gradients.
    fn new(backend: &'a B, spec: &ModelSpec, seed: u64, batch: usize) -> Result<Self> {
        let options = BuildOptions {
            smooth_neurons: true,
            ..Default::default()
        };
        let mut network = Network::new(backend, spec, seed, options)?;
        let (shape, values, labels) = random_batch(spec, batch, seed)?;
        let images = tensor(backend, &shape, &values)?;
        let mut grads = network.zero_grads();
        let step = network.train_step(
            backend,
            &mut grads,
            &images,
            Targets::Hard(&labels),
            PROBE_PASS,
        )?;
        let grad_input = widened(backend, &step.output.grad_input)?;
        Ok(Probe {
            backend,
            network,
            shape,
            values,
            images,
            labels,
            grads,
            grad_input,
        })
    }

    /// The mean cross-entropy of the network on `images`.
    fn loss(&mut self, images: &B::Tensor) -> Result<f64> {
        let logits = self.network.forward(self.backend, images, PROBE_PASS)?;
        let (loss, _) = self.backend.cross_entropy_forward(&logits, &self.labels)?;
        Ok(loss.widen())
    }

    /// Compares up to `count` input coordinates, largest gradients first (trying at most three
    /// times as many).
    fn check_inputs(&mut self, count: usize, into: &mut Comparison) -> Result<()> {
        let mut by_size: Vec<usize> = (0..self.grad_input.len()).collect();
        by_size.sort_by(|&a, &b| {
            self.grad_input[b]
                .abs()
                .total_cmp(&self.grad_input[a].abs())
        });
        let values = self.values.clone();
        for &i in by_size.iter().take(count.saturating_mul(3)) {
            if into.analytic.len() == count {
                break;
            }
            let derivative = smooth_derivative(
                |x| {
                    let mut perturbed = values.clone();
                    perturbed[i] = x;
                    let images = tensor(self.backend, &self.shape, &perturbed)?;
                    self.loss(&images)
                },
                values[i],
            )?;
            into.add(self.grad_input[i], derivative);
        }
        Ok(())
    }

    /// Compares up to `count` parameter coordinates: the largest-gradient one of parameter
    /// tensors drawn at random from `seed` (trying at most three times as many).
    fn check_parameters(&mut self, count: usize, seed: u64, into: &mut Comparison) -> Result<()> {
        let entries = self.network.store.entries();
        let parameters: Vec<ParamId> = (0..entries.len())
            .map(ParamId)
            .filter(|&id| {
                entries[id.0].kind == EntryKind::Parameter && self.grads.get(id).is_some()
            })
            .collect();
        let mut rng = SplitMix64::new(seed ^ 0xfd);
        let target = into.analytic.len() + count;
        for _ in 0..count.saturating_mul(3) {
            if into.analytic.len() == target {
                break;
            }
            let id = parameters[(rng.next_u64() % parameters.len() as u64) as usize];
            let grad = widened(self.backend, self.grads.get(id).expect("has a gradient"))?;
            let j = (0..grad.len())
                .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
                .unwrap_or(0);
            into.add(grad[j], self.parameter_derivative(id, j)?);
        }
        Ok(())
    }

    /// The finite difference of the loss in coordinate `j` of parameter `id`, which is restored
    /// afterwards.
    fn parameter_derivative(&mut self, id: ParamId, j: usize) -> Result<Option<f64>> {
        let original = widened(self.backend, self.network.store.get(id))?;
        let shape = self.network.store.entries()[id.0].shape.clone();
        let images = self.images.clone();
        let derivative = smooth_derivative(
            |x| {
                let mut perturbed = original.clone();
                perturbed[j] = x;
                let value = tensor(self.backend, &shape, &perturbed)?;
                self.network.store.set(id, value);
                self.loss(&images)
            },
            original[j],
        );
        let value = tensor(self.backend, &shape, &original)?;
        self.network.store.set(id, value);
        derivative
    }
}

/// `values` as a tensor of shape `shape`.
fn tensor<B: Backend>(backend: &B, shape: &[usize], values: &[f64]) -> Result<B::Tensor> {
    let values = values.iter().map(|&v| B::Elem::cast(v)).collect();
    Ok(backend.tensor_from_vec(shape, values)?)
}

/// Runs every check on the CPU.
pub fn verify(
    spec: &ModelSpec,
    dtype: DType,
    coupling: Coupling,
    seed: u64,
    batch: usize,
    fd_samples: usize,
) -> Result<VerifyReport> {
    verify_on(
        &Device::Cpu(Precision::F32),
        spec,
        dtype,
        coupling,
        seed,
        batch,
        fd_samples,
    )
}

/// `check` run on `device` without rounding: the CPU in f32 precision, or the CUDA device with its
/// precision switched to f32 for the call and back after (bf16 and fp16 refuse f64 tensors, and
/// TF32 never touches them).
fn without_rounding<T>(device: &Device, check: impl FnOnce(&Device) -> Result<T>) -> Result<T> {
    let precision = device.precision();
    let exact = device.clone().with_precision(Precision::F32)?;
    let result = check(&exact);
    exact.with_precision(precision)?;
    result
}

/// Runs every check on `device`: the reversible checks in `dtype` and the device's precision,
/// the finite differences in f64 without rounding; under a precision other than f32 also a
/// forward against the f64 reference. The reversible checks meet their bars in f32 only; in
/// another precision they are reported, and the forward must stay within its bounds where they
/// apply ([`PrecisionReport::within_bounds`]).
pub fn verify_on(
    device: &Device,
    spec: &ModelSpec,
    dtype: DType,
    coupling: Coupling,
    seed: u64,
    batch: usize,
    fd_samples: usize,
) -> Result<VerifyReport> {
    without_rounding(device, |exact| {
        on_backend!(exact, DType::F64, |backend| {
            let setting = footprint::batch_setting(batch, spec);
            footprint::check_step(&backend, spec, batch, Storage::StoredActivations, &setting)
        })
    })?;
    let low_precision = device.precision() != Precision::F32;
    let versus_f64 = if low_precision {
        Some(on_backend!(device, dtype, |backend| {
            compare_with_f64(&backend, &Cpu::<f64>::new(), spec, seed, batch)
        })?)
    } else {
        None
    };
    let (reconstruction, flips, compared, grads) = on_backend!(device, dtype, |backend| {
        checks(&backend, spec, coupling, seed, batch)
    })?;
    let (fd, fd_coordinates, fd_skipped) = without_rounding(device, |exact| {
        on_backend!(exact, DType::F64, |backend| {
            finite_differences(&backend, spec, seed, batch, fd_samples)
        })
    })?;
    let (reconstruction_bar, grad_bar) = thresholds(coupling, dtype);
    let skipped = skipped_checks(
        spec.arch.is_reversible(),
        compared,
        fd_coordinates,
        fd_skipped,
    );
    let reversible_met =
        low_precision || (reconstruction <= reconstruction_bar && flips == 0 && grads <= grad_bar);
    let bounds_met = versus_f64
        .as_ref()
        .is_none_or(|report| report.within_bounds() != Some(false));
    let passed = skipped.is_empty() && reversible_met && bounds_met && fd <= 1e-6;
    Ok(VerifyReport {
        reconstruction_max_rel_err: reconstruction,
        spike_flips: flips,
        spikes_compared: compared,
        grad_max_rel_err_vs_bptt: grads,
        fd_max_rel_err: fd,
        fd_coordinates,
        fd_skipped,
        skipped,
        versus_f64,
        passed,
    })
}

/// The reversible coupling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CouplingArg {
    /// The paper's floating-point coupling.
    Float,
    /// Fixed-point grid: a bitwise-exact inverse.
    Exact,
}

impl From<CouplingArg> for Coupling {
    fn from(coupling: CouplingArg) -> Coupling {
        match coupling {
            CouplingArg::Float => Coupling::Float,
            CouplingArg::Exact => Coupling::Exact,
        }
    }
}

/// The arguments of `revsnn verify`.
#[derive(Clone, Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The element type of the tensors: f64 (the tight bars) or f32. The finite differences
    /// always run in f64.
    #[arg(long, value_enum, default_value = "f64")]
    pub dtype: DTypeArg,
    #[arg(long, value_enum, default_value = "float")]
    pub coupling: CouplingArg,
    /// The seed of the random weights and inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images of the random input.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Coordinates checked by finite differences (half input, half parameters).
    #[arg(long, default_value_t = 8)]
    pub fd_samples: usize,
    /// Where to compute: cpu (the reference), cuda, or auto (CUDA when a usable GPU is found).
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceChoice,
    /// The precision of the GEMM operands: f32 (default), tf32, bf16 or fp16, accumulating in
    /// f32 (docs/precision.md). The CPU emulates every one; CUDA runs every one (bf16 from
    /// compute capability 8.0).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub threads: ThreadsArg,
}

impl VerifyArgs {
    /// Runs `revsnn verify`: prints a table or one JSON object; the caller exits 0 iff it passed.
    pub fn run(&self) -> Result<bool> {
        if self.batch == 0 {
            return Err(Error::Usage("--batch must be >= 1".into()));
        }
        self.threads.apply()?;
        let device = self.device.open(self.precision)?;
        let (name, spec) = self.model.resolve()?;
        let (dtype, coupling) = (DType::from(self.dtype), Coupling::from(self.coupling));
        let report = verify_on(
            &device,
            &spec,
            dtype,
            coupling,
            self.seed,
            self.batch,
            self.fd_samples,
        )?;
        if self.json {
            self.print_json(&name, &spec, &device, &report);
        } else {
            self.print_table(&name, &spec, &device, &report);
        }
        Ok(report.passed)
    }

    /// The report as one JSON object; the reversible checks are `null` for a model without
    /// reversible sequences, where they compare nothing.
    fn print_json(&self, name: &str, spec: &ModelSpec, device: &Device, report: &VerifyReport) {
        let reversible = spec.arch.is_reversible();
        let reversible_only = |value: Value| if reversible { value } else { Value::Null };
        print_json_report(
            name,
            device,
            json!({
                "dtype": DType::from(self.dtype).to_string(),
                "coupling": format!("{:?}", Coupling::from(self.coupling)).to_lowercase(),
                "seed": self.seed,
                "batch": self.batch,
                "reversible": reversible,
                "reconstruction_max_rel_err": reversible_only(report.reconstruction_max_rel_err.into()),
                "spike_flips": reversible_only(report.spike_flips.into()),
                "spikes_compared": reversible_only(report.spikes_compared.into()),
                "grad_max_rel_err_vs_bptt": reversible_only(report.grad_max_rel_err_vs_bptt.into()),
                "fd_max_rel_err": report.fd_max_rel_err,
                "fd_coordinates": report.fd_coordinates,
                "fd_skipped_near_kinks": report.fd_skipped,
                "skipped_checks": report.skipped,
                "versus_f64": report.versus_f64.as_ref().map(PrecisionReport::to_json),
                "passed": report.passed,
            }),
        );
    }

    fn print_table(&self, name: &str, spec: &ModelSpec, device: &Device, report: &VerifyReport) {
        let (dtype, coupling) = (DType::from(self.dtype), Coupling::from(self.coupling));
        let (reconstruction_bar, grad_bar) = thresholds(coupling, dtype);
        let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
        let low_precision = self.precision != Precision::F32;
        let mark_reversible = |ok: bool| if low_precision { "reported" } else { mark(ok) };
        let gemm = match low_precision {
            true => format!("GEMM operands rounded to {}", self.precision),
            false => "GEMM operands unrounded".to_string(),
        };
        println!(
            "{name}: {dtype} tensors, {gemm}, {coupling:?} coupling, seed {}, batch {}, on {}",
            self.seed,
            self.batch,
            device.name()
        );
        if spec.arch.is_reversible() {
            println!(
                "  reconstruction max rel. error  {:>10.3e}  (bar {reconstruction_bar:.0e})  {}",
                report.reconstruction_max_rel_err,
                mark_reversible(report.reconstruction_max_rel_err <= reconstruction_bar)
            );
            println!(
                "  spike flips                    {:>10} of {}  {}",
                report.spike_flips,
                report.spikes_compared,
                mark_reversible(report.spike_flips == 0)
            );
            println!(
                "  gradients vs stored BPTT       {:>10.3e}  (bar {grad_bar:.0e})  {}",
                report.grad_max_rel_err_vs_bptt,
                mark_reversible(report.grad_max_rel_err_vs_bptt <= grad_bar)
            );
        } else {
            println!(
                "  reconstruction, spike flips, gradients vs stored BPTT: n/a (the model has no \
                 reversible sequence)"
            );
        }
        let fd_error = match report.fd_coordinates {
            0 => "not run".to_string(),
            _ => format!("{:.3e}", report.fd_max_rel_err),
        };
        println!(
            "  finite differences (f64, {:>2})  {fd_error:>10}  (bar 1e-6)  {}",
            report.fd_coordinates,
            mark(report.fd_coordinates > 0 && report.fd_max_rel_err <= 1e-6)
        );
        if let Some(versus) = &report.versus_f64 {
            versus.print_table();
        }
        for check in &report.skipped {
            println!("  not run: {check}");
        }
        println!("{}", if report.passed { "passed" } else { "FAILED" });
    }
}
