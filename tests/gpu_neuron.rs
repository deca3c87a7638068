//! The fused CUDA neuron kernels against the CPU reference (docs/design.md tolerance classes): spikes
//! agree except where `|h - V_th| < 1e-5` (a neuron with such a flip is left out of the value
//! comparison, since its later steps legitimately differ, and flips must stay rare); `h` and
//! `dL/dx` within 1e-5 relative in f32 and 1e-12 in f64; two runs bitwise identical, a
//! neuron keeping its input in place of `h` bitwise the one keeping `h`, a neuron keeping
//! nothing firing the same spikes (over a handed-over `x`) and `neuron_charge` giving the same `h`,
//! a backward writing `dL/dx` over the `dL/ds` it was handed bitwise one that allocates, and the
//! forward that folds its spikes' fingerprint as it fires them equal to `fold_fingerprint` of its
//! spikes.
//! Every configuration runs at 1, 33 and 4097 neurons (one partial block to 17 blocks) and
//! T = 1, 4, 7 and 17; the first Heaviside and smooth configurations also run over thousands of
//! blocks ([`LARGE`] neurons, T = 7), which checks the launch and the indexing at scale (the
//! arithmetic per neuron is the same at any size, and on the CPU emulator in CI the large size
//! of every configuration and T cost minutes). Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

mod common;

use common::neurons::configs;
use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::{backend_or_skip, with_peak_rise};
use revsnn_gpu::{Cuda, CudaTensor};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Cpu, Firing, NeuronConfig, NeuronKept, NeuronKind};

/// The sizes every configuration runs at.
const SIZES: [usize; 3] = [1, 33, 4097];
/// Neurons spanning 4097 blocks of 256 threads, with a partial one.
const LARGE: usize = (1 << 20) + 3;

struct Compared {
    flipped_neurons: usize,
    /// Zero with Heaviside firing (kept neurons spike identically); the smooth spikes' error
    /// otherwise.
    spike_error: f64,
    h_error: f64,
    grad_error: f64,
}

fn compare<E: GpuElement>(
    gpu: &Cuda<E>,
    config: &NeuronConfig,
    time_steps: usize,
    neurons: usize,
    seed: u64,
) -> Compared {
    let mut rng = SplitMix64::new(seed);
    let len = time_steps * neurons;
    let x: Vec<E> = rng
        .normal_vec(len, 1.5)
        .into_iter()
        .map(|v| E::cast(v + 0.3))
        .collect();
    let grad: Vec<E> = rng.normal_vec(len, 1.0).into_iter().map(E::cast).collect();
    let shape = [time_steps, neurons];
    let x_gpu = gpu.tensor_from_vec(&shape, x.clone()).unwrap();
    let grad_gpu = gpu.tensor_from_vec(&shape, grad.clone()).unwrap();
    let (spikes_gpu, context_gpu) = gpu.neuron_forward(x_gpu.clone(), config).unwrap();
    let grad_x_gpu = gpu
        .neuron_backward(grad_gpu.clone(), &context_gpu, config)
        .unwrap();
    gpu.synchronize().unwrap();
    let (spikes_gpu, h_gpu, grad_x_gpu) = (
        gpu.to_vec(&spikes_gpu).unwrap(),
        gpu.to_vec(context_gpu.kept.tensor()).unwrap(),
        gpu.to_vec(&grad_x_gpu).unwrap(),
    );

    assert_eq!(
        gpu.to_vec(&x_gpu).unwrap(),
        x,
        "the forward changed an input held elsewhere"
    );

    // a second run is bitwise identical
    let (spikes_again, context_again) = gpu.neuron_forward(x_gpu.clone(), config).unwrap();
    let grad_again = gpu
        .neuron_backward(grad_gpu.clone(), &context_again, config)
        .unwrap();
    assert_eq!(
        gpu.to_vec(&spikes_again).unwrap(),
        spikes_gpu,
        "spikes differ run to run"
    );
    assert_eq!(
        gpu.to_vec(&grad_again).unwrap(),
        grad_x_gpu,
        "dL/dx differs run to run"
    );
    // x handed over alone: h is written over it, the same bits, with only the spikes allocated
    let handed = gpu.tensor_from_vec(&shape, x.clone()).unwrap();
    let ((spikes_over, context_over), allocated) =
        with_peak_rise(gpu.device(), || gpu.neuron_forward(handed, config).unwrap());
    assert!(
        allocated <= len * size_of::<E>(),
        "the forward over a handed-over x allocated {allocated} bytes, more than the spikes"
    );
    assert_eq!(
        gpu.to_vec(&spikes_over).unwrap(),
        spikes_gpu,
        "spikes differ when h is written over x"
    );
    assert_eq!(
        gpu.to_vec(context_over.kept.tensor()).unwrap(),
        h_gpu,
        "h differs when written over x"
    );
    // dL/ds handed over alone with h kept: dL/dx is written over it, the same bits, with nothing
    // allocated
    let handed = gpu.tensor_from_vec(&shape, grad.clone()).unwrap();
    let (grad_over, allocated) = with_peak_rise(gpu.device(), || {
        gpu.neuron_backward(handed, &context_again, config).unwrap()
    });
    assert_eq!(
        allocated, 0,
        "the backward over a handed-over dL/ds allocated"
    );
    assert_eq!(
        gpu.to_vec(&grad_over).unwrap(),
        grad_x_gpu,
        "dL/dx differs when written over dL/ds"
    );
    // keeping the input instead of h: the same bits, charged again in the backward, with no
    // buffer but the spikes in the forward and dL/dx in the backward
    let bytes = len * size_of::<E>();
    let ((spikes_kept, context_kept, grad_kept), held) = with_peak_rise(gpu.device(), || {
        let (spikes, context) = gpu
            .neuron_forward_keeping_input(x_gpu.clone(), config)
            .unwrap();
        let grad = gpu
            .neuron_backward(grad_gpu.clone(), &context, config)
            .unwrap();
        (spikes, context, grad)
    });
    assert!(matches!(context_kept.kept, NeuronKept::Input(_)));
    assert!(
        held <= 2 * bytes,
        "keeping the input held {held} bytes, more than the spikes and dL/dx ({bytes} each)"
    );
    assert_eq!(
        gpu.to_vec(&spikes_kept).unwrap(),
        spikes_gpu,
        "spikes differ when the input is kept"
    );
    assert_eq!(
        gpu.to_vec(&grad_kept).unwrap(),
        grad_x_gpu,
        "dL/dx differs when the input is kept"
    );
    // keeping the input, dL/ds handed over alone: up to 16 steps, dL/dx is written over it (h
    // charged into each thread's own memory), the same bits, with nothing allocated
    let handed = gpu.tensor_from_vec(&shape, grad.clone()).unwrap();
    let (grad_over, allocated) = with_peak_rise(gpu.device(), || {
        gpu.neuron_backward(handed, &context_kept, config).unwrap()
    });
    let expected = if time_steps <= 16 { 0 } else { bytes };
    assert_eq!(
        allocated, expected,
        "the backward from the input over a handed-over dL/ds at T = {time_steps}"
    );
    assert_eq!(
        gpu.to_vec(&grad_over).unwrap(),
        grad_x_gpu,
        "dL/dx differs when written over dL/ds from the input"
    );

    // keeping nothing (docs/neurons.md §2.4.2): the same spikes, written over a handed-over x
    // with nothing allocated, into a buffer of their own over a shared x; and the context charged
    // again without the spikes holds the forward's h, written over a handed-over x
    let handed = gpu.tensor_from_vec(&shape, x.clone()).unwrap();
    let (fired, allocated) = with_peak_rise(gpu.device(), || {
        gpu.neuron_forward_keeping_nothing(handed, config, None)
            .unwrap()
    });
    assert_eq!(
        allocated, 0,
        "the forward keeping nothing over a handed-over x allocated"
    );
    assert_eq!(
        gpu.to_vec(&fired).unwrap(),
        spikes_gpu,
        "spikes written over x"
    );
    let fired = gpu
        .neuron_forward_keeping_nothing(x_gpu.clone(), config, None)
        .unwrap();
    assert_eq!(
        gpu.to_vec(&fired).unwrap(),
        spikes_gpu,
        "spikes beside a shared x"
    );
    let handed = gpu.tensor_from_vec(&shape, x.clone()).unwrap();
    let (charged, allocated) =
        with_peak_rise(gpu.device(), || gpu.neuron_charge(handed, config).unwrap());
    assert_eq!(allocated, 0, "charging a handed-over x allocated");
    assert!(matches!(charged.kept, NeuronKept::Potentials(_)));
    assert_eq!(
        gpu.to_vec(charged.kept.tensor()).unwrap(),
        h_gpu,
        "h charged again"
    );

    check_fingerprinted(gpu, &x_gpu, config, &spikes_gpu);

    let cpu = Cpu::<E>::new();
    let (spikes_cpu, context) = cpu
        .neuron_forward(cpu.tensor_from_vec(&shape, x.clone()).unwrap(), config)
        .unwrap();
    let grad_x_cpu = cpu
        .neuron_backward(
            cpu.tensor_from_vec(&shape, grad.clone()).unwrap(),
            &context,
            config,
        )
        .unwrap();
    let spikes_cpu = cpu.to_vec(&spikes_cpu).unwrap();
    let grad_x_cpu = cpu.to_vec(&grad_x_cpu).unwrap();
    let h_cpu = reference_h(&x, time_steps, neurons, config, &spikes_cpu);

    let mut kept = vec![true; neurons];
    if config.firing == Firing::Heaviside {
        for t in 0..time_steps {
            for (i, keep) in kept.iter_mut().enumerate() {
                let at = t * neurons + i;
                if *keep && spikes_cpu[at] != spikes_gpu[at] {
                    let margin = (h_cpu[at].widen() - config.v_threshold).abs();
                    assert!(
                        margin < 1e-5,
                        "spike flip at t {t}, neuron {i} with |h - V_th| = {margin}"
                    );
                    *keep = false;
                }
            }
        }
    }
    let select = |values: &[E]| -> Vec<f64> {
        (0..len)
            .filter(|at| kept[at % neurons])
            .map(|at| values[at].widen())
            .collect()
    };
    Compared {
        flipped_neurons: kept.iter().filter(|k| !**k).count(),
        spike_error: relative_error(&select(&spikes_gpu), &select(&spikes_cpu)),
        h_error: relative_error(&select(&h_gpu), &select(&h_cpu)),
        grad_error: relative_error(&select(&grad_x_gpu), &select(&grad_x_cpu)),
    }
}

/// The forward that folds its spikes' fingerprint as it fires them, keeping `h`, its input or
/// nothing:
/// the same spikes as the plain forward (`spikes`), and twice folded into a word, the word that
/// `fold_fingerprint` makes of those spikes.
fn check_fingerprinted<E: GpuElement>(
    gpu: &Cuda<E>,
    x: &CudaTensor<E>,
    config: &NeuronConfig,
    spikes: &[E],
) {
    for keeps_input in [false, true] {
        let what = format!("keeping the input: {keeps_input}");
        assert_folds(gpu, spikes, &what, |word| {
            let (fired, context) = gpu
                .neuron_forward_fingerprinted(x.clone(), config, keeps_input, word)
                .unwrap();
            let kept_input = matches!(context.kept, NeuronKept::Input(_));
            assert_eq!(
                kept_input, keeps_input,
                "the context keeps the wrong tensor"
            );
            fired
        });
    }
    assert_folds(gpu, spikes, "keeping nothing", |word| {
        gpu.neuron_forward_keeping_nothing(x.clone(), config, Some(word))
            .unwrap()
    });
}

/// `fire` twice into one word: the spikes are `spikes`, and the word is the one
/// `fold_fingerprint` makes of them.
fn assert_folds<E: GpuElement>(
    gpu: &Cuda<E>,
    spikes: &[E],
    what: &str,
    fire: impl Fn(&mut <Cuda<E> as WordOps>::Word) -> CudaTensor<E>,
) {
    let (mut folded, mut expected) = (gpu.zero_word().unwrap(), gpu.zero_word().unwrap());
    for _ in 0..2 {
        let fired = fire(&mut folded);
        let values = gpu.to_vec(&fired).unwrap();
        assert_eq!(values, spikes, "{what}: fingerprinting changed the spikes");
        gpu.fold_fingerprint(&mut expected, &fired).unwrap();
    }
    let (folded, expected) = (gpu.read_word(&folded), gpu.read_word(&expected));
    assert_eq!(
        folded.unwrap(),
        expected.unwrap(),
        "{what}: the neuron's fingerprint is not fold_fingerprint's"
    );
}

/// The membrane potentials of the reference forward, replayed from its spikes with the charge
/// equations of docs/neurons.md §2.2 (the reference keeps `h` in an opaque context).
fn reference_h<E: GpuElement>(
    x: &[E],
    time_steps: usize,
    neurons: usize,
    config: &NeuronConfig,
    spikes: &[E],
) -> Vec<E> {
    let mut h = vec![E::zero(); x.len()];
    for i in 0..neurons {
        let mut v = E::zero();
        for t in 0..time_steps {
            let at = t * neurons + i;
            h[at] = match config.kind {
                NeuronKind::If => v + x[at],
                NeuronKind::Lif {
                    tau,
                    decay_input: true,
                } => v + (x[at] - v) / E::cast(tau),
                NeuronKind::Lif {
                    tau,
                    decay_input: false,
                } => v * E::cast(1.0 - 1.0 / tau) + x[at],
            };
            v = (E::one() - spikes[at]) * h[at];
        }
    }
    h
}

/// The (neurons, T) pairs of a configuration: every size and T, and [`LARGE`] at T = 7 where
/// `large`.
fn cases(large: bool) -> Vec<(usize, usize)> {
    // 17 steps are more than the backward from a kept input charges in a thread's own memory
    // (16): it then writes h into dL/dx's buffer.
    let mut cases: Vec<(usize, usize)> = SIZES
        .iter()
        .flat_map(|&neurons| [1, 4, 7, 17].map(|time_steps| (neurons, time_steps)))
        .collect();
    if large {
        cases.push((LARGE, 7));
    }
    cases
}

fn check_all<E: GpuElement>(gpu: &Cuda<E>, tolerance: f64) {
    // the large size for the first configuration of each firing, Heaviside and smooth
    let mut firings_at_scale = Vec::new();
    for (name, config) in configs() {
        let large = !firings_at_scale.contains(&config.firing);
        firings_at_scale.push(config.firing);
        for (neurons, time_steps) in cases(large) {
            let result = compare::<E>(
                gpu,
                &config,
                time_steps,
                neurons,
                neurons as u64 * 31 + time_steps as u64,
            );
            println!(
                "{} {name:<32} T {time_steps} N {neurons:>8}: spikes rel {:.2e}, h rel {:.2e}, dL/dx rel {:.2e}, flipped neurons {}",
                E::SUFFIX,
                result.spike_error,
                result.h_error,
                result.grad_error,
                result.flipped_neurons
            );
            assert!(
                result.spike_error <= tolerance,
                "{name}: spikes rel error {}",
                result.spike_error
            );
            assert!(
                result.h_error <= tolerance,
                "{name}: h rel error {}",
                result.h_error
            );
            assert!(
                result.grad_error <= tolerance,
                "{name}: dL/dx rel error {}",
                result.grad_error
            );
            assert!(
                result.flipped_neurons * 1000 <= neurons.max(1000),
                "{name}: too many spike flips"
            );
        }
    }
}

#[test]
fn gpu_neuron_matches_the_reference_in_f32() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_neuron f32") {
        check_all(&gpu, 1e-5);
    }
}

#[test]
fn gpu_neuron_matches_the_reference_in_f64() {
    if let Some(gpu) = backend_or_skip::<f64>("gpu_neuron f64") {
        check_all(&gpu, 1e-12);
    }
}

#[test]
fn gpu_neuron_rejects_bad_parameters_and_shapes() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_neuron bad input") else {
        return;
    };
    let x = gpu.tensor_from_vec(&[4, 3], vec![0.5f32; 12]).unwrap();
    let no_time = gpu.tensor_from_vec(&[0, 3], vec![]).unwrap();
    assert!(
        gpu.neuron_forward(no_time, &NeuronConfig::if_atan())
            .is_err(),
        "T = 0 is invalid"
    );
    let bad_threshold = NeuronConfig {
        v_threshold: 0.0,
        ..NeuronConfig::if_atan()
    };
    assert!(
        gpu.neuron_forward(x.clone(), &bad_threshold).is_err(),
        "V_th = 0 is invalid"
    );
    let bad_tau = NeuronConfig::lif_sigmoid(1.0, 1.0);
    assert!(
        gpu.neuron_forward(x.clone(), &bad_tau).is_err(),
        "tau = 1 is invalid"
    );
    let (_, context) = gpu.neuron_forward(x, &NeuronConfig::if_atan()).unwrap();
    let wrong_grad = gpu.tensor_from_vec(&[3, 4], vec![1.0f32; 12]).unwrap();
    assert!(
        gpu.neuron_backward(wrong_grad.clone(), &context, &NeuronConfig::if_atan())
            .is_err(),
        "a gradient of another shape is rejected"
    );
    // A backward with a config other than the forward's: the same context check, and the same
    // error, as the reference.
    let other = NeuronConfig::lif_sigmoid(2.0, 1.0);
    let grad = gpu.tensor_from_vec(&[4, 3], vec![1.0f32; 12]).unwrap();
    let gpu_error = gpu
        .neuron_backward(grad.clone(), &context, &other)
        .unwrap_err();
    let cpu = Cpu::<f32>::new();
    let x_cpu = cpu.tensor_from_vec(&[4, 3], vec![0.5f32; 12]).unwrap();
    let (_, context_cpu) = cpu.neuron_forward(x_cpu, &NeuronConfig::if_atan()).unwrap();
    let grad_cpu = cpu.tensor_from_vec(&[4, 3], vec![1.0f32; 12]).unwrap();
    let cpu_error = cpu
        .neuron_backward(grad_cpu.clone(), &context_cpu, &other)
        .unwrap_err();
    assert_eq!(gpu_error, cpu_error, "a config other than the forward's");
}

#[test]
fn gpu_neuron_handles_empty_tensors_like_the_reference() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_neuron empty") else {
        return;
    };
    let cpu = Cpu::<f32>::new();
    let config = NeuronConfig::lif_sigmoid(2.0, 1.0);
    let (spikes_cpu, context_cpu) = cpu
        .neuron_forward(cpu.tensor_from_vec(&[2, 0], vec![]).unwrap(), &config)
        .unwrap();
    let (spikes, context) = gpu
        .neuron_forward(gpu.tensor_from_vec(&[2, 0], vec![]).unwrap(), &config)
        .unwrap();
    assert_eq!(gpu.shape(&spikes), cpu.shape(&spikes_cpu));
    let grad_cpu = cpu
        .neuron_backward(spikes_cpu.clone(), &context_cpu, &config)
        .unwrap();
    let grad = gpu
        .neuron_backward(spikes.clone(), &context, &config)
        .unwrap();
    assert_eq!(gpu.shape(&grad), cpu.shape(&grad_cpu));
    assert!(gpu.to_vec(&grad).unwrap().is_empty());
    let x = gpu.tensor_from_vec(&[2, 0], vec![]).unwrap();
    check_fingerprinted(&gpu, &x, &config, &[]);
}
