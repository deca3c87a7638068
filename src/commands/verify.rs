//! `revsnn verify`: on random weights and inputs, checks a model's invertibility (reconstruction
//! error, spike flips between forward and recompute counted exactly), its reversible gradients
//! against stored-activation backpropagation of the same model, and a finite-difference spot
//! check of its gradients (DESIGN.md's checks, for any spec).

use revsnn_reference::testing::{SplitMix64, five_point_difference, relative_error};
use revsnn_reference::{Backend, Cpu, DType, Element};
use serde_json::json;

use super::{DTypeArg, DeviceArg, ModelArgs, random_batch};
use crate::error::Result;
use crate::model::reversible::{Coupling, ReversibleOptions, Storage};
use crate::model::{BuildOptions, EntryKind, Grads, Mode, ParamId};
use crate::network::{Network, RunOptions};
use crate::spec::ModelSpec;

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
    pub fd_coordinates: usize,
    pub passed: bool,
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

fn checks<E: Element>(
    spec: &ModelSpec,
    coupling: Coupling,
    seed: u64,
    batch: usize,
) -> Result<(f64, u64, u64, f64)>
where
    Cpu<E>: Backend<Elem = E>,
{
    let backend = Cpu::<E>::new();
    let options = |storage| BuildOptions {
        reversible: ReversibleOptions {
            coupling,
            storage,
            ..Default::default()
        },
        ..Default::default()
    };
    let (shape, values, labels) = random_batch(spec, batch, seed);
    let images = backend.tensor_from_vec(&shape, values.iter().map(|&v| E::cast(v)).collect())?;

    let mut reversible = Network::new(&backend, spec, seed, options(Storage::Reversible))?;
    let mut rev_grads = reversible.zero_grads();
    let report = reversible.train_step(
        &backend,
        &mut rev_grads,
        &images,
        &labels,
        RunOptions {
            audit: true,
            ..Default::default()
        },
    )?;
    let audit = report.audit.unwrap_or_default();

    let mut stored = Network::new(&backend, spec, seed, options(Storage::StoredActivations))?;
    let mut stored_grads = stored.zero_grads();
    let baseline = stored.train_step(
        &backend,
        &mut stored_grads,
        &images,
        &labels,
        RunOptions::default(),
    )?;

    let params = relative_error(
        &flatten_grads(&backend, &reversible, &rev_grads)?,
        &flatten_grads(&backend, &stored, &stored_grads)?,
    );
    let input = relative_error(
        &backend
            .to_vec(&report.output.grad_input)?
            .into_iter()
            .map(Element::widen)
            .collect::<Vec<_>>(),
        &backend
            .to_vec(&baseline.output.grad_input)?
            .into_iter()
            .map(Element::widen)
            .collect::<Vec<_>>(),
    );
    Ok((
        audit.max_reconstruction_rel_err,
        audit.spike_flips,
        audit.spikes_compared,
        params.max(input),
    ))
}

/// Finite differences (five-point stencil, step 1e-5) on `samples` coordinates, in f64 with smooth neurons and
/// BatchNorm in training mode without running-statistic updates: half on the input coordinates
/// with the largest gradients, half on the largest-gradient coordinate of randomly drawn
/// parameter tensors.
fn finite_differences(
    spec: &ModelSpec,
    seed: u64,
    batch: usize,
    samples: usize,
) -> Result<(f64, usize)> {
    let backend = Cpu::<f64>::new();
    let options = BuildOptions {
        smooth_neurons: true,
        ..Default::default()
    };
    let mut network = Network::new(&backend, spec, seed, options)?;
    let (shape, values, labels) = random_batch(spec, batch, seed);
    let images = backend.tensor_from_vec(&shape, values.clone())?;
    let run = RunOptions {
        mode: Mode::Train,
        update_running_stats: false,
        audit: false,
    };
    let mut grads = network.zero_grads();
    let step = network.train_step(&backend, &mut grads, &images, &labels, run)?;

    let loss =
        |network: &mut Network<Cpu<f64>>, images: &<Cpu<f64> as Backend>::Tensor| -> Result<f64> {
            let logits = network.forward(&backend, images, run)?;
            Ok(backend.cross_entropy_forward(&logits, &labels)?.0)
        };
    let mut rng = SplitMix64::new(seed ^ 0xfd);
    let (mut analytic, mut numeric) = (Vec::new(), Vec::new());
    // input coordinates
    let grad_input = backend.to_vec(&step.output.grad_input)?;
    // The coordinates with the largest gradients: where central differences (absolute error
    // about 1e-10 here) measure the gradient rather than their own noise.
    let mut by_size: Vec<usize> = (0..grad_input.len()).collect();
    by_size.sort_by(|&a, &b| grad_input[b].abs().total_cmp(&grad_input[a].abs()));
    for &i in by_size.iter().take(samples.div_ceil(2)) {
        let mut failure = None;
        let fd = five_point_difference(
            |x| {
                let mut perturbed = values.clone();
                perturbed[i] = x[0];
                let images = backend
                    .tensor_from_vec(&shape, perturbed)
                    .expect("same shape");
                loss(&mut network, &images).unwrap_or_else(|e| {
                    failure = Some(e);
                    f64::NAN
                })
            },
            &[values[i]],
            1e-5,
        );
        if let Some(error) = failure {
            return Err(error);
        }
        analytic.push(grad_input[i]);
        numeric.push(fd[0]);
    }
    // parameter coordinates
    let parameters: Vec<usize> = (0..network.store.entries().len())
        .filter(|&i| {
            network.store.entries()[i].kind == EntryKind::Parameter
                && grads.get(ParamId(i)).is_some()
        })
        .collect();
    for _ in 0..samples / 2 {
        let id = ParamId(parameters[(rng.next_u64() % parameters.len() as u64) as usize]);
        let original = backend.to_vec(network.store.get(id))?;
        let param_shape = network.store.entries()[id.0].shape.clone();
        let grad = backend.to_vec(grads.get(id).expect("has a gradient"))?;
        let j = (0..grad.len())
            .max_by(|&a, &b| grad[a].abs().total_cmp(&grad[b].abs()))
            .unwrap_or(0);
        let mut failure = None;
        let fd = five_point_difference(
            |x| {
                let mut perturbed = original.clone();
                perturbed[j] = x[0];
                network.store.set(
                    id,
                    backend
                        .tensor_from_vec(&param_shape, perturbed)
                        .expect("same shape"),
                );
                loss(&mut network, &images).unwrap_or_else(|e| {
                    failure = Some(e);
                    f64::NAN
                })
            },
            &[original[j]],
            1e-5,
        );
        network
            .store
            .set(id, backend.tensor_from_vec(&param_shape, original)?);
        if let Some(error) = failure {
            return Err(error);
        }
        analytic.push(grad[j]);
        numeric.push(fd[0]);
    }
    Ok((relative_error(&analytic, &numeric), analytic.len()))
}

/// Runs every check.
pub fn verify(
    spec: &ModelSpec,
    dtype: DType,
    coupling: Coupling,
    seed: u64,
    batch: usize,
    fd_samples: usize,
) -> Result<VerifyReport> {
    let (reconstruction, flips, compared, grads) = match dtype {
        DType::F64 => checks::<f64>(spec, coupling, seed, batch)?,
        DType::F32 => checks::<f32>(spec, coupling, seed, batch)?,
    };
    let (fd, fd_coordinates) = finite_differences(spec, seed, batch, fd_samples)?;
    let (reconstruction_bar, grad_bar) = thresholds(coupling, dtype);
    let passed =
        reconstruction <= reconstruction_bar && flips == 0 && grads <= grad_bar && fd <= 1e-6;
    Ok(VerifyReport {
        reconstruction_max_rel_err: reconstruction,
        spike_flips: flips,
        spikes_compared: compared,
        grad_max_rel_err_vs_bptt: grads,
        fd_max_rel_err: fd,
        fd_coordinates,
        passed,
    })
}

/// `revsnn verify`: prints a table or one JSON object; the caller exits 0 iff it passed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    args: &ModelArgs,
    dtype: DTypeArg,
    coupling: Coupling,
    seed: u64,
    batch: usize,
    fd_samples: usize,
    device: DeviceArg,
    json: bool,
) -> Result<bool> {
    device.require_cpu()?;
    let (name, spec) = args.resolve()?;
    let dtype = match dtype {
        DTypeArg::F32 => DType::F32,
        DTypeArg::F64 => DType::F64,
    };
    let report = verify(&spec, dtype, coupling, seed, batch, fd_samples)?;
    let (reconstruction_bar, grad_bar) = thresholds(coupling, dtype);
    if json {
        println!(
            "{}",
            json!({
                "model": name,
                "dtype": dtype.to_string(),
                "coupling": format!("{coupling:?}").to_lowercase(),
                "seed": seed,
                "batch": batch,
                "reversible": spec.arch.is_reversible(),
                "reconstruction_max_rel_err": report.reconstruction_max_rel_err,
                "spike_flips": report.spike_flips,
                "spikes_compared": report.spikes_compared,
                "grad_max_rel_err_vs_bptt": report.grad_max_rel_err_vs_bptt,
                "fd_max_rel_err": report.fd_max_rel_err,
                "fd_coordinates": report.fd_coordinates,
                "passed": report.passed,
            })
        );
    } else {
        let mark = |ok: bool| if ok { "ok" } else { "FAILED" };
        println!("{name}: {dtype}, {coupling:?} coupling, seed {seed}, batch {batch}");
        println!(
            "  reconstruction max rel. error  {:>10.3e}  (bar {reconstruction_bar:.0e})  {}",
            report.reconstruction_max_rel_err,
            mark(report.reconstruction_max_rel_err <= reconstruction_bar)
        );
        println!(
            "  spike flips                    {:>10} of {}  {}",
            report.spike_flips,
            report.spikes_compared,
            mark(report.spike_flips == 0)
        );
        println!(
            "  gradients vs stored BPTT       {:>10.3e}  (bar {grad_bar:.0e})  {}",
            report.grad_max_rel_err_vs_bptt,
            mark(report.grad_max_rel_err_vs_bptt <= grad_bar)
        );
        println!(
            "  finite differences (f64, {:>2})  {:>10.3e}  (bar 1e-6)  {}",
            report.fd_coordinates,
            report.fd_max_rel_err,
            mark(report.fd_max_rel_err <= 1e-6)
        );
        println!("{}", if report.passed { "passed" } else { "FAILED" });
    }
    Ok(report.passed)
}
