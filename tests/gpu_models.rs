//! Whole models on the CUDA backend against the CPU reference, in f32, for every family (the
//! parity fixtures' small specs): the same weights (built from one seed) and the same inputs on
//! `Cpu<f32>` and `Cuda<f32>` through the same generic model code.
//!
//! - Smooth firing (`Firing::Smooth`, `BuildOptions::smooth_neurons`): no spike can flip, so the
//!   logits, the loss, the input gradient, every parameter gradient, every BatchNorm running
//!   statistic after the forward and the parameters after one SGD and one AdamW step must agree
//!   within the GEMM class, 1e-4 relative per tensor. Where a tensor is ill-conditioned in f32
//!   itself (the gradient of a convolution bias placed before a BatchNorm is 0 in exact arithmetic
//!   and rounding noise in floating point; AdamW turns such noise into steps of +-lr), the bar is
//!   10x the CPU's own f32 error against a `Cpu<f64>` run of the same model: the GPU may not be
//!   worse than the CPU's own rounding there (and an L2 distance below 1e-7, f32's resolution of
//!   O(1) values, passes). Every tensor's figures are printed.
//! - Heaviside firing (the real models): a membrane potential within rounding of the threshold
//!   may spike on one backend and not the other, and such a flip changes everything downstream.
//!   Every spike of a training-mode forward is compared: flips must be rare (at most 1 in 100
//!   spikes: one flip near the threshold may cascade into a few downstream ones), and when there
//!   is none the logits and the loss agree within 1e-4. The gradients are checked on the smooth
//!   models above, where no flip can happen. In bf16 and fp16 the same against the CPU's
//!   emulation of the precision (`Cpu::with_precision`), flips printed and as rare; the logits
//!   differ from f32's, so the 16-bit path ran. On the CPU emulator, whose GEMMs sum in the
//!   reference's order, the two must agree bit for bit; a GPU's own order shows on a GPU.
//! - The reversible backward on CUDA equals stored-activation backpropagation on CUDA bitwise
//!   with the exact coupling, in f32 and f64 (`revsnn verify --device cuda`'s checks), with the
//!   finite-difference check on the GPU in f64; its spike fingerprints, folded and compared on
//!   the device, find no recompute that diverged from its forward.
//! - Two runs of a training step (SGD) on CUDA are bitwise identical.
//! - A checkpoint of a CUDA network (downloaded) loads back into a CUDA network and into a CPU
//!   one unchanged.
//!
//! - The same harness CPU against CPU (no GPU needed), so the comparisons themselves stay tested.
//!
//! Skips without a GPU (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

use revsnn::checkpoint::{load_state_dict, state_dict};
use revsnn::commands::random_images;
use revsnn::commands::verify::verify_on;
use revsnn::device::Device;
use revsnn::model::reversible::{Coupling, ReversibleOptions};
use revsnn::model::{BuildOptions, EntryKind, Grads, Layer, Mode, ParamId, Session, Targets};
use revsnn::network::{Body, Network, PassOptions, StepReport};
use revsnn::optim::{Optimizer, OptimizerKind};
use revsnn::spec::ModelSpec;
use revsnn_gpu::Cuda;
use revsnn_gpu::testing::{backend_or_skip, is_emulator};
use revsnn_reference::testing::relative_error;
use revsnn_reference::{AdamWParams, Backend, Compute, Cpu, DType, Element, Precision, SgdParams};

const FAMILIES: [&str; 4] = ["revsresnet", "msresnet", "revsformer", "spikingformer"];
const BATCH: usize = 3;
const SEED: u64 = 11;
const GEMM_CLASS: f64 = 1e-4;

/// The parity fixture's spec of `family`, embedded: the test binary is carried to the GPU
/// machine without the repository's path.
fn spec(family: &str) -> ModelSpec {
    let json = match family {
        "revsresnet" => include_str!("../fixtures/parity/revsresnet.spec.json"),
        "msresnet" => include_str!("../fixtures/parity/msresnet.spec.json"),
        "revsformer" => include_str!("../fixtures/parity/revsformer.spec.json"),
        "spikingformer" => include_str!("../fixtures/parity/spikingformer.spec.json"),
        other => panic!("no fixture spec for {other}"),
    };
    ModelSpec::from_json(json).unwrap()
}

fn widen<B: Backend>(backend: &B, tensor: &B::Tensor) -> Vec<f64> {
    backend
        .to_vec(tensor)
        .unwrap()
        .into_iter()
        .map(Element::widen)
        .collect()
}

fn smooth() -> BuildOptions {
    BuildOptions {
        smooth_neurons: true,
        ..Default::default()
    }
}

/// Everything one training step produced, by name, widened to f64, and the batch counters.
#[derive(Debug, PartialEq)]
struct Outcome {
    tensors: Vec<(String, Vec<f64>)>,
    counters: Vec<(String, u64)>,
}

/// Builds `spec` from [`SEED`] on `backend` and runs one training step (forward, cross-entropy,
/// backward) on the seeded batch: the network, its gradients and the step's report.
fn one_step<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    options: BuildOptions,
) -> (Network<B>, Grads<B>, StepReport<B>) {
    let mut network = Network::new(backend, spec, SEED, options).unwrap();
    let (images, labels) = random_images(backend, spec, BATCH, SEED).unwrap();
    let mut grads = network.zero_grads();
    let targets = Targets::Hard(&labels);
    let report = network
        .train_step(
            backend,
            &mut grads,
            &images,
            targets,
            PassOptions::default(),
        )
        .unwrap();
    (network, grads, report)
}

/// [`one_step`] and, with `optimizer`, one optimizer step.
fn run_step<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    options: BuildOptions,
    optimizer: Option<OptimizerKind>,
) -> Outcome {
    let (mut network, grads, report) = one_step(backend, spec, options);
    let output = report.output;
    let mut tensors = vec![
        ("logits".to_string(), widen(backend, &output.logits)),
        ("loss".to_string(), widen(backend, &output.loss)),
        ("grad_input".to_string(), widen(backend, &output.grad_input)),
    ];
    let mut counters = Vec::new();
    for (index, entry) in network.store.entries().iter().enumerate() {
        let id = ParamId(index);
        match entry.kind {
            EntryKind::Parameter => {
                if let Some(grad) = grads.get(id) {
                    tensors.push((format!("grad.{}", entry.name), widen(backend, grad)));
                }
            }
            EntryKind::RunningStat => tensors.push((
                format!("after_forward.{}", entry.name),
                widen(backend, network.store.get(id)),
            )),
            EntryKind::BatchesTracked => {
                counters.push((entry.name.clone(), network.store.count(id)))
            }
        }
    }
    if let Some(kind) = optimizer {
        let mut optimizer = Optimizer::new(kind, &network.store);
        optimizer
            .step(backend, &mut network.store, &grads, kind.lr())
            .unwrap();
        for (index, entry) in network.store.entries().iter().enumerate() {
            if entry.kind == EntryKind::Parameter {
                tensors.push((
                    format!("updated.{}", entry.name),
                    widen(backend, network.store.get(ParamId(index))),
                ));
            }
        }
    }
    Outcome { tensors, counters }
}

/// Checks `gpu` against `cpu` (both f32) tensor by tensor: relative error <= 1e-4, or <= 10x the
/// CPU's own f32 error against `exact` (the same run in f64) where that is larger.
fn assert_close(case: &str, gpu: &Outcome, cpu: &Outcome, exact: &Outcome) {
    assert_eq!(gpu.counters, cpu.counters, "{case}: batch counters");
    assert_eq!(
        gpu.tensors.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        cpu.tensors.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "{case}: the same tensors"
    );
    let mut failures = Vec::new();
    let mut worst = (0.0f64, String::new());
    for (((name, g), (_, c)), (_, e)) in gpu.tensors.iter().zip(&cpu.tensors).zip(&exact.tensors) {
        assert_eq!(g.len(), c.len(), "{case}: {name} length");
        assert!(g.iter().all(|v| v.is_finite()), "{case}: {name} not finite");
        let error = relative_error(g, c);
        let noise = relative_error(c, e);
        let bar = GEMM_CLASS.max(10.0 * noise);
        // below f32's resolution of O(1) values in absolute terms: a tensor that is 0 in exact
        // arithmetic may come out as exact zeros on one side and rounding noise on the other
        let distance = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt();
        println!(
            "{case} {name}: gpu vs cpu {error:.2e} (L2 distance {distance:.1e}), cpu f32 vs f64 \
             {noise:.2e}"
        );
        if error > bar && distance > 1e-7 {
            failures.push(format!("{name}: {error:.2e} > {bar:.2e}"));
        }
        if error > worst.0 {
            worst = (error, name.clone());
        }
    }
    println!("{case}: worst {:.2e} ({})", worst.0, worst.1);
    assert!(failures.is_empty(), "{case}: {}", failures.join("; "));
}

#[test]
fn smooth_models_match_the_cpu_logits_loss_gradients_and_statistics() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models smooth") else {
        return;
    };
    for family in FAMILIES {
        let spec = spec(family);
        let on_gpu = run_step(&gpu, &spec, smooth(), None);
        gpu.synchronize().unwrap();
        let on_cpu = run_step(&Cpu::<f32>::new(), &spec, smooth(), None);
        let exact = run_step(&Cpu::<f64>::new(), &spec, smooth(), None);
        assert_close(family, &on_gpu, &on_cpu, &exact);
    }
}

#[test]
fn one_sgd_and_one_adamw_step_match_the_cpu() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models optimizer steps") else {
        return;
    };
    let kinds = [
        OptimizerKind::Sgd(SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
        }),
        OptimizerKind::AdamW(AdamWParams::new(5e-4, 0.06)),
    ];
    for family in FAMILIES {
        let spec = spec(family);
        for kind in kinds {
            let case = format!("{family} {kind:?}");
            let on_gpu = run_step(&gpu, &spec, smooth(), Some(kind));
            gpu.synchronize().unwrap();
            let on_cpu = run_step(&Cpu::<f32>::new(), &spec, smooth(), Some(kind));
            let exact = run_step(&Cpu::<f64>::new(), &spec, smooth(), Some(kind));
            assert_close(&case, &on_gpu, &on_cpu, &exact);
        }
    }
}

/// The logits of a training-mode forward (running statistics left alone) and every spike of it,
/// in the order the neuron layers ran.
fn spiking_forward<B: Backend>(backend: &B, spec: &ModelSpec) -> (Vec<f64>, Vec<Vec<f64>>) {
    let mut network = Network::new(backend, spec, SEED, BuildOptions::default()).unwrap();
    let (images, _) = random_images(backend, spec, BATCH, SEED).unwrap();
    let mut grads = network.zero_grads();
    let mut session = Session::new(backend, &mut network.store, &mut grads, Mode::Train);
    session.update_running_stats = false;
    session.probes.spike_log = Some(Vec::new());
    let logits = match &network.body {
        Body::RevSResNet(model) => {
            Layer::<B>::forward(model, &mut session, images.clone()).map(|r| r.0)
        }
        Body::MsResNet(model) => {
            Layer::<B>::forward(model, &mut session, images.clone()).map(|r| r.0)
        }
        Body::RevSFormer(model) => {
            Layer::<B>::forward(model, &mut session, images.clone()).map(|r| r.0)
        }
        Body::Spikingformer(model) => {
            Layer::<B>::forward(model, &mut session, images.clone()).map(|r| r.0)
        }
    }
    .unwrap();
    let spikes = session
        .probes
        .spike_log
        .take()
        .unwrap()
        .iter()
        .map(|s| widen(backend, s))
        .collect();
    (widen(backend, &logits), spikes)
}

/// The spikes of two runs of the same forward that differ, and the spikes compared.
fn count_flips(case: &str, ours: &[Vec<f64>], theirs: &[Vec<f64>]) -> (usize, usize) {
    assert_eq!(ours.len(), theirs.len(), "{case}: neuron layers");
    let (mut flips, mut compared) = (0usize, 0usize);
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a.len(), b.len(), "{case}: a spike tensor's length");
        compared += a.len();
        flips += a.iter().zip(b).filter(|(x, y)| x != y).count();
    }
    assert!(compared > 0, "{case}: no spikes logged");
    (flips, compared)
}

#[test]
fn spiking_models_flip_rarely_and_otherwise_match_the_cpu_logits() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models spiking") else {
        return;
    };
    for family in FAMILIES {
        let spec = spec(family);
        let (gpu_logits, gpu_spikes) = spiking_forward(&gpu, &spec);
        gpu.synchronize().unwrap();
        let (cpu_logits, cpu_spikes) = spiking_forward(&Cpu::<f32>::new(), &spec);
        let (flips, compared) = count_flips(family, &gpu_spikes, &cpu_spikes);
        let error = relative_error(&gpu_logits, &cpu_logits);
        println!("{family}: {flips} of {compared} spikes differ; logits {error:.2e}");
        assert!(
            flips * 100 <= compared,
            "{family}: {flips} of {compared} spikes differ"
        );
        if flips == 0 {
            assert!(error <= GEMM_CLASS, "{family}: logits differ by {error:e}");
            let on_gpu = run_step(&gpu, &spec, BuildOptions::default(), None);
            let on_cpu = run_step(&Cpu::<f32>::new(), &spec, BuildOptions::default(), None);
            let loss = relative_error(&on_gpu.tensors[1].1, &on_cpu.tensors[1].1);
            assert!(loss <= GEMM_CLASS, "{family}: loss differs by {loss:e}");
        }
    }
}

/// The real (Heaviside) models in bf16 and fp16 on CUDA against the CPU's emulation of the same
/// precision (`Cpu::with_precision`): both multiply the same rounded operands, so they differ by
/// the order of their f32 sums, and where that straddles a rounding boundary of a convolution's
/// 16-bit output, by one spacing of the format there (tests/gpu_precision.rs bounds both per
/// op). A membrane potential that close to the threshold may flip, and a flip changes what
/// follows it. The flips are printed, and must stay as rare as in f32 (1 in 100 spikes); the
/// logits must differ from the f32 forward's, so the 16-bit path ran. On the CPU emulator, whose
/// GEMMs and convolutions sum in the reference's order, no spike may flip and the logits must be
/// the emulation's bit for bit: the casts are at the same places.
#[test]
fn spiking_models_in_bf16_and_fp16_flip_rarely_against_the_cpus_emulation() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models spiking in bf16 and fp16") else {
        return;
    };
    let emulated = is_emulator(gpu.device());
    for family in FAMILIES {
        let spec = spec(family);
        let (f32_logits, _) = spiking_forward(&Cpu::<f32>::new(), &spec);
        for precision in [Precision::Bf16, Precision::Fp16] {
            gpu.device().set_precision(precision).unwrap();
            let (gpu_logits, gpu_spikes) = spiking_forward(&gpu, &spec);
            gpu.synchronize().unwrap();
            let emulation = Cpu::<f32>::with_precision(precision);
            let (cpu_logits, cpu_spikes) = spiking_forward(&emulation, &spec);
            let case = format!("{family} {precision}");
            let (flips, compared) = count_flips(&case, &gpu_spikes, &cpu_spikes);
            let error = relative_error(&gpu_logits, &cpu_logits);
            let from_f32 = relative_error(&gpu_logits, &f32_logits);
            println!(
                "{case}: {flips} of {compared} spikes differ; logits {error:.2e} from the \
                 emulation's, {from_f32:.2e} from f32's"
            );
            assert!(
                flips * 100 <= compared,
                "{case}: {flips} of {compared} spikes differ"
            );
            assert!(from_f32 > 1e-6, "{case}: the logits are f32's");
            if emulated {
                assert!(
                    flips == 0 && error == 0.0,
                    "{case}: not the emulation's bits"
                );
            }
        }
    }
    gpu.device().set_precision(Precision::F32).unwrap();
}

#[test]
fn two_training_steps_on_cuda_are_bitwise_identical() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models determinism") else {
        return;
    };
    let sgd = OptimizerKind::Sgd(SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    });
    for family in FAMILIES {
        let spec = spec(family);
        let first = run_step(&gpu, &spec, BuildOptions::default(), Some(sgd));
        let second = run_step(&gpu, &spec, BuildOptions::default(), Some(sgd));
        gpu.synchronize().unwrap();
        for ((name, a), (_, b)) in first.tensors.iter().zip(&second.tensors) {
            let same =
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{family}: {name} differs between two runs");
        }
        assert_eq!(first.counters, second.counters, "{family}");
    }
}

#[test]
fn reversible_backward_on_cuda_equals_stored_activations_bitwise_with_exact_coupling() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models reversible") else {
        return;
    };
    let device = Device::Cuda(gpu.device().clone());
    for family in ["revsresnet", "revsformer"] {
        for dtype in [DType::F32, DType::F64] {
            let report =
                verify_on(&device, &spec(family), dtype, Coupling::Exact, SEED, 2, 4).unwrap();
            println!("{family} {dtype}: {report:?}");
            assert_eq!(report.reconstruction_max_rel_err, 0.0, "{family} {dtype}");
            assert_eq!(report.spike_flips, 0, "{family} {dtype}");
            assert!(report.spikes_compared > 0, "{family} {dtype}");
            assert_eq!(report.grad_max_rel_err_vs_bptt, 0.0, "{family} {dtype}");
            assert!(
                report.fd_max_rel_err <= 1e-6,
                "{family} {dtype}: finite differences on the GPU {}",
                report.fd_max_rel_err
            );
            assert!(report.passed, "{family} {dtype}");
        }
    }
}

/// The spike fingerprints of a reversible training step, folded and compared on the device (the
/// CUDA word, `revsnn_gpu::word`), find every recompute equal to its forward under the exact
/// coupling, whose inverse is bitwise; as on the CPU.
#[test]
fn exact_coupling_finds_no_diverged_recompute_by_fingerprint_on_cuda() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models fingerprints") else {
        return;
    };
    let options = BuildOptions {
        reversible: ReversibleOptions {
            coupling: Coupling::Exact,
            ..ReversibleOptions::default()
        },
        ..BuildOptions::default()
    };
    for family in ["revsresnet", "revsformer"] {
        let spec = spec(family);
        let on_cuda = diverged_after_one_step(&gpu, &spec, options);
        let on_cpu = diverged_after_one_step(&Cpu::<f32>::new(), &spec, options);
        assert_eq!(
            (on_cuda, on_cpu),
            (0, 0),
            "{family}: diverged recomputes, CUDA and CPU"
        );
    }
}

/// The diverged recomputes of [`one_step`], read back.
fn diverged_after_one_step<B: Backend>(
    backend: &B,
    spec: &ModelSpec,
    options: BuildOptions,
) -> usize {
    let (_, _, report) = one_step(backend, spec, options);
    report.diverged_recomputes.read(backend).unwrap()
}

#[test]
fn checkpoints_of_a_cuda_network_round_trip() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_models checkpoints") else {
        return;
    };
    for family in FAMILIES {
        let spec = spec(family);
        let mut network = Network::new(&gpu, &spec, SEED, BuildOptions::default()).unwrap();
        let (images, labels) = random_images(&gpu, &spec, BATCH, SEED).unwrap();
        let mut grads = network.zero_grads();
        network
            .train_step(
                &gpu,
                &mut grads,
                &images,
                Targets::Hard(&labels),
                PassOptions::default(),
            )
            .unwrap();
        let saved = state_dict(&gpu, &network.store).unwrap();
        let mut again = Network::new(&gpu, &spec, SEED + 1, BuildOptions::default()).unwrap();
        load_state_dict(&gpu, &mut again.store, &saved).unwrap();
        assert_eq!(
            state_dict(&gpu, &again.store).unwrap(),
            saved,
            "{family}: CUDA"
        );
        let cpu = Cpu::<f32>::new();
        let mut on_cpu = Network::new(&cpu, &spec, SEED + 1, BuildOptions::default()).unwrap();
        load_state_dict(&cpu, &mut on_cpu.store, &saved).unwrap();
        assert_eq!(
            state_dict(&cpu, &on_cpu.store).unwrap(),
            saved,
            "{family}: CPU"
        );
        // the training step counted one batch on the host, written as an int64 scalar
        assert!(
            network.store.entries().iter().any(|e| e.count() == Some(1)),
            "{family}: no BatchNorm counted the batch"
        );
    }
}

/// `Cuda<f32>` is a backend the commands run on (`--device cuda`), and its device reports the
/// name that `bench` and `memory` print; kept as a compile-time check without a GPU too.
#[test]
fn cuda_is_a_compute_backend() {
    fn is_compute<B: revsnn::device::Compute>() {}
    is_compute::<Cuda<f32>>();
    is_compute::<Cuda<f64>>();
    let Some(gpu) = backend_or_skip::<f32>("gpu_models device") else {
        return;
    };
    assert!(!Device::Cuda(gpu.device().clone()).name().is_empty());
}

#[test]
fn the_embedded_fixture_specs_are_valid() {
    for family in FAMILIES {
        spec(family).validate().unwrap();
    }
}

/// The comparisons above, CPU against CPU: runs without a GPU, so the harness itself (the step,
/// the optimizer, the spike log through reversible blocks, the bars) is exercised everywhere.
#[test]
fn the_harness_passes_cpu_against_cpu() {
    let cpu = Cpu::<f32>::new();
    for family in FAMILIES {
        let spec = spec(family);
        let kind = OptimizerKind::AdamW(AdamWParams::new(5e-4, 0.06));
        let first = run_step(&cpu, &spec, smooth(), Some(kind));
        let exact = run_step(&Cpu::<f64>::new(), &spec, smooth(), Some(kind));
        assert_close(
            family,
            &first,
            &run_step(&cpu, &spec, smooth(), Some(kind)),
            &exact,
        );
        let (logits, spikes) = spiking_forward(&cpu, &spec);
        let neurons: usize = spikes.iter().map(Vec::len).sum();
        assert!(
            neurons > 0 && logits.iter().all(|v| v.is_finite()),
            "{family}"
        );
        println!("{family}: {} neuron layers, {neurons} spikes", spikes.len());
        if family.starts_with("revs") {
            // the log reaches into the reversible blocks, where most neuron layers are
            assert!(
                spikes.len() > 10,
                "{family}: {} layers logged",
                spikes.len()
            );
        }
    }
}
