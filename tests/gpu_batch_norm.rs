//! The CUDA BatchNorm against the CPU reference through `BatchNormOps` (docs/design.md tolerance
//! classes, relative L2 error over each whole tensor): training forward (`y`, batch mean, unbiased
//! variance), evaluation forward, both backwards (`dx`, `dgamma`, `dbeta`) and the running
//! statistics update, within 1e-5 in f32 and 1e-12 in f64; the contexts' per-channel `f64` mean and
//! `1 / std` within 1e-12 in both types (both sides accumulate in `f64`, only the summation order
//! differs). Shapes from 2 values per channel to 2^20 + 2 (many pass-1 chunks) and from 1 to 300
//! channels, 2-D to 5-D, and in f32 70 000 channels (more than a reduction launch has blocks);
//! inputs off-centre (mean 3) so a one-pass variance would show. The training `dx` is a difference
//! of terms of the size of `gamma inv_std dy` that cancel almost exactly when a channel has few
//! values (with 2, `x_hat` is `±(1 - O(eps / var))`), so its error is measured against that size
//! when it is the larger one. Two runs are bitwise identical. Every invalid input the reference
//! rejects is an error here too, never a panic. Skips without a GPU (`SKIP: no CUDA device`), fails
//! then with `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::Cuda;
use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Backend, BatchNormParams, BatchStats, Compute, Cpu, RunningStats};

const SHAPES: &[&[usize]] = &[
    &[2, 1],
    &[33, 5],
    &[3, 7, 11],
    &[4, 3, 5, 5],
    &[2, 3, 2, 5, 7],
    &[4, 300, 3, 3],
    &[16, 8, 17, 31],
    &[64, 6, 32, 32],
    &[3, 2, 349_526],
];

/// The host inputs of one case.
struct Inputs<E> {
    shape: Vec<usize>,
    x: Vec<E>,
    grad_y: Vec<E>,
    gamma: Vec<E>,
    beta: Vec<E>,
    running_mean: Vec<E>,
    running_var: Vec<E>,
}

impl<E: GpuElement> Inputs<E> {
    fn random(shape: &[usize], seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let (len, channels) = (shape.iter().product::<usize>(), shape[1]);
        let cast = |values: Vec<f64>, scale: f64, offset: f64| -> Vec<E> {
            values
                .into_iter()
                .map(|v| E::cast(v * scale + offset))
                .collect()
        };
        let x = cast(rng.normal_vec(len, 1.0), 2.0, 3.0);
        let grad_y = cast(rng.normal_vec(len, 1.0), 1.0, 0.0);
        let gamma = cast(rng.normal_vec(channels, 1.0), 0.3, 1.0);
        let beta = cast(rng.normal_vec(channels, 1.0), 0.5, 0.0);
        let running_mean = cast(rng.normal_vec(channels, 1.0), 1.0, 2.0);
        let running_var = (0..channels)
            .map(|_| E::cast(rng.uniform(0.5, 4.0)))
            .collect();
        Inputs {
            shape: shape.to_vec(),
            x,
            grad_y,
            gamma,
            beta,
            running_mean,
            running_var,
        }
    }
}

/// Every output of one pass of all four ops on one backend, on the host.
#[derive(PartialEq)]
struct Outputs {
    train_y: Vec<f64>,
    batch_mean: Vec<f64>,
    batch_var: Vec<f64>,
    train_mean: Vec<f64>,
    train_inv_std: Vec<f64>,
    train_dx: Vec<f64>,
    train_dgamma: Vec<f64>,
    train_dbeta: Vec<f64>,
    eval_y: Vec<f64>,
    eval_mean: Vec<f64>,
    eval_inv_std: Vec<f64>,
    eval_dx: Vec<f64>,
    eval_dgamma: Vec<f64>,
    eval_dbeta: Vec<f64>,
    new_mean: Vec<f64>,
    new_var: Vec<f64>,
}

/// The names of [`Outputs`]' fields, in order, with whether they are the contexts' `f64` values.
const FIELDS: [(&str, bool); 16] = [
    ("train y", false),
    ("batch mean", false),
    ("batch var_unbiased", false),
    ("train context mean", true),
    ("train context inv_std", true),
    ("train dx", false),
    ("train dgamma", false),
    ("train dbeta", false),
    ("eval y", false),
    ("eval context mean", true),
    ("eval context inv_std", true),
    ("eval dx", false),
    ("eval dgamma", false),
    ("eval dbeta", false),
    ("running mean", false),
    ("running var", false),
];

impl Outputs {
    fn fields(&self) -> [&Vec<f64>; 16] {
        [
            &self.train_y,
            &self.batch_mean,
            &self.batch_var,
            &self.train_mean,
            &self.train_inv_std,
            &self.train_dx,
            &self.train_dgamma,
            &self.train_dbeta,
            &self.eval_y,
            &self.eval_mean,
            &self.eval_inv_std,
            &self.eval_dx,
            &self.eval_dgamma,
            &self.eval_dbeta,
            &self.new_mean,
            &self.new_var,
        ]
    }
}

/// Runs the four ops on backend `B`; `context_constants` reads a context's `(mean, inv_std)`.
fn run<E: GpuElement, B: Backend<Elem = E>>(
    backend: &B,
    inputs: &Inputs<E>,
    params: BatchNormParams,
    context_constants: impl Fn(&B::BatchNormContext) -> (Vec<f64>, Vec<f64>),
) -> Outputs {
    let tensor =
        |shape: &[usize], data: &Vec<E>| backend.tensor_from_vec(shape, data.clone()).unwrap();
    let host = |t: &B::Tensor| -> Vec<f64> {
        backend
            .to_vec(t)
            .unwrap()
            .into_iter()
            .map(|v| v.widen())
            .collect()
    };
    let channels = [inputs.shape[1]];
    let x = tensor(&inputs.shape, &inputs.x);
    let grad_y = tensor(&inputs.shape, &inputs.grad_y);
    let gamma = tensor(&channels, &inputs.gamma);
    let beta = tensor(&channels, &inputs.beta);
    let running = RunningStats {
        mean: tensor(&channels, &inputs.running_mean),
        var: tensor(&channels, &inputs.running_var),
    };
    let (train_y, stats, train_context) = backend
        .batch_norm_train_forward(&x, &gamma, &beta, params)
        .unwrap();
    let train_grads = backend
        .batch_norm_backward(&grad_y, &train_context)
        .unwrap();
    let (eval_y, eval_context) = backend
        .batch_norm_eval_forward(&x, &gamma, &beta, &running, params)
        .unwrap();
    let eval_grads = backend.batch_norm_backward(&grad_y, &eval_context).unwrap();
    let updated = backend
        .update_running_stats(&running, &stats, params)
        .unwrap();
    let (train_mean, train_inv_std) = context_constants(&train_context);
    let (eval_mean, eval_inv_std) = context_constants(&eval_context);
    Outputs {
        train_y: host(&train_y),
        batch_mean: host(&stats.mean),
        batch_var: host(&stats.var_unbiased),
        train_mean,
        train_inv_std,
        train_dx: host(&train_grads.input),
        train_dgamma: host(&train_grads.gamma),
        train_dbeta: host(&train_grads.beta),
        eval_y: host(&eval_y),
        eval_mean,
        eval_inv_std,
        eval_dx: host(&eval_grads.input),
        eval_dgamma: host(&eval_grads.gamma),
        eval_dbeta: host(&eval_grads.beta),
        new_mean: host(&updated.mean),
        new_var: host(&updated.var),
    }
}

fn run_gpu<E: GpuElement>(gpu: &Cuda<E>, inputs: &Inputs<E>, params: BatchNormParams) -> Outputs {
    let outputs = run(gpu, inputs, params, |context| {
        let device = gpu.device();
        (
            device.download(&context.mean).unwrap(),
            device.download(&context.inv_std).unwrap(),
        )
    });
    gpu.synchronize().unwrap();
    outputs
}

fn run_cpu<E: GpuElement>(inputs: &Inputs<E>, params: BatchNormParams) -> Outputs {
    run(&Cpu::<E>::new(), inputs, params, |context| {
        (context.mean.clone(), context.inv_std.clone())
    })
}

/// `||gamma_c inv_std_c dy||_2`: the size of the terms whose difference is the training `dx`.
fn train_dx_term_norm<E: GpuElement>(inputs: &Inputs<E>, inv_std: &[f64]) -> f64 {
    let channels = inputs.shape[1];
    let inner: usize = inputs.shape[2..].iter().product();
    let squares: f64 = inputs
        .grad_y
        .iter()
        .enumerate()
        .map(|(k, dy)| {
            let c = (k / inner) % channels;
            let term = inputs.gamma[c].widen() * inv_std[c] * dy.widen();
            term * term
        })
        .sum();
    squares.sqrt()
}

fn check_all<E: GpuElement>(gpu: &Cuda<E>, tolerance: f64) {
    for (case, shape) in SHAPES.iter().enumerate() {
        check_case(
            gpu,
            &Inputs::<E>::random(shape, 1000 + case as u64),
            tolerance,
        );
    }
}

/// The GPU's outputs for `inputs` against the reference's (and against a second GPU run, bit
/// for bit).
fn check_case<E: GpuElement>(gpu: &Cuda<E>, inputs: &Inputs<E>, tolerance: f64) {
    let params = BatchNormParams {
        eps: 1e-5,
        momentum: 0.1,
    };
    let shape = &inputs.shape;
    let gpu_out = run_gpu(gpu, inputs, params);
    let again = run_gpu(gpu, inputs, params);
    for (((name, _), a), b) in FIELDS.iter().zip(gpu_out.fields()).zip(again.fields()) {
        let same_bits =
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same_bits, "{shape:?}: {name} differs run to run");
    }
    let cpu_out = run_cpu(inputs, params);
    let dx_terms = train_dx_term_norm(inputs, &cpu_out.train_inv_std);
    let mut report = Vec::new();
    for (((name, is_f64), g), c) in FIELDS.iter().zip(gpu_out.fields()).zip(cpu_out.fields()) {
        let mut error = relative_error(g, c);
        if *name == "train dx" {
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
            error *= norm / norm.max(dx_terms);
        }
        let bar = if *is_f64 { 1e-12 } else { tolerance };
        assert!(
            error <= bar,
            "{} {shape:?}: {name} rel error {error:e} > {bar:e}",
            E::SUFFIX
        );
        report.push(format!("{name} {error:.1e}"));
    }
    println!("{} {shape:?}: {}", E::SUFFIX, report.join(", "));
}

/// `inputs` whose `x` is `offset` plus a trend along the batch axis plus noise, both of size
/// `spread`: a mean large against the spread (where "mean of squares minus squared mean" would
/// cancel a factor (mean / spread)^2, 1e10 in the f32 case, of the f64 sums' precision), and
/// chunks and threads whose means differ, so the merge's `delta^2` term carries weight.
fn offset_inputs<E: GpuElement>(shape: &[usize], offset: f64, spread: f64) -> Inputs<E> {
    let mut inputs = Inputs::<E>::random(shape, 77);
    let batch_stride: usize = shape[1..].iter().product();
    let mut rng = SplitMix64::new(78);
    for (k, x) in inputs.x.iter_mut().enumerate() {
        let trend = (k / batch_stride) as f64 / shape[0] as f64;
        *x = E::cast(offset + spread * (trend + rng.normal_vec(1, 1.0)[0]));
    }
    inputs
}

#[test]
fn gpu_batch_norm_statistics_hold_for_a_mean_large_against_the_spread() {
    for shape in [&[64, 4, 16, 16][..], &[3, 2, 349_526]] {
        if let Some(gpu) = backend_or_skip::<f32>("gpu_batch_norm large mean f32") {
            check_case(&gpu, &offset_inputs::<f32>(shape, 1e4, 1e-1), 1e-5);
        }
        if let Some(gpu) = backend_or_skip::<f64>("gpu_batch_norm large mean f64") {
            check_case(&gpu, &offset_inputs::<f64>(shape, 10.0, 1e-1), 1e-12);
        }
    }
}

#[test]
fn gpu_batch_norm_matches_the_reference_in_f32() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_batch_norm f32") {
        check_all(&gpu, 1e-5);
    }
}

/// More channels than a reduction launch has blocks (`MAX_REDUCE_BLOCKS`, 65 536, in
/// gpu/src/ops/batch_norm.rs), so the blocks loop over the channels. That loop is the same code
/// in f32 and f64, so it runs in f32 only: on the CPU emulator in CI the shape takes over a minute
/// per run (70 000 blocks of 256 threads per reduction).
#[test]
fn gpu_batch_norm_loops_over_more_channels_than_blocks() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_batch_norm many channels") {
        check_case(&gpu, &Inputs::<f32>::random(&[2, 70_000], 1006), 1e-5);
    }
}

#[test]
fn gpu_batch_norm_matches_the_reference_in_f64() {
    if let Some(gpu) = backend_or_skip::<f64>("gpu_batch_norm f64") {
        check_all(&gpu, 1e-12);
    }
}

/// The evaluation forward and its backward on `b`: `y`'s shape, `dx`, `dgamma`, `dbeta`.
fn eval_case<B: Backend<Elem = f64>>(
    b: &B,
    inputs: &Inputs<f64>,
    params: BatchNormParams,
) -> (Vec<usize>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (shape, c) = (&inputs.shape, [inputs.shape[1]]);
    let tensor = |shape: &[usize], data: &Vec<f64>| b.tensor_from_vec(shape, data.clone()).unwrap();
    let running = RunningStats {
        mean: tensor(&c, &inputs.running_mean),
        var: tensor(&c, &inputs.running_var),
    };
    let (y, context) = b
        .batch_norm_eval_forward(
            &tensor(shape, &inputs.x),
            &tensor(&c, &inputs.gamma),
            &tensor(&c, &inputs.beta),
            &running,
            params,
        )
        .unwrap();
    let grads = b
        .batch_norm_backward(&tensor(shape, &inputs.grad_y), &context)
        .unwrap();
    (
        b.shape(&y),
        b.to_vec(&grads.input).unwrap(),
        b.to_vec(&grads.gamma).unwrap(),
        b.to_vec(&grads.beta).unwrap(),
    )
}

/// Tensors with no element (N = 0, an empty trailing axis, C = 0) give empty outputs and zero
/// parameter gradients, as the reference does. Kept apart: it also exercises zero-length device
/// allocations.
#[test]
fn gpu_batch_norm_handles_empty_tensors() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_batch_norm empty") else {
        return;
    };
    let params = BatchNormParams::default();
    for shape in [&[0usize, 3, 4][..], &[2, 3, 0], &[2, 0, 5]] {
        let inputs = Inputs::<f64>::random(shape, 7);
        let on_gpu = eval_case(&gpu, &inputs, params);
        gpu.synchronize().unwrap();
        assert_eq!(
            on_gpu,
            eval_case(&Cpu::<f64>::new(), &inputs, params),
            "{shape:?}"
        );
        assert_eq!(on_gpu.0, shape, "{shape:?}: y");
        assert_eq!(on_gpu.2, vec![0.0; shape[1]], "{shape:?}: dgamma");
    }
    // training needs n >= 2, which C = 0 allows
    let inputs = Inputs::<f64>::random(&[2, 0, 5], 8);
    let (g, c) = (run_gpu(&gpu, &inputs, params), run_cpu(&inputs, params));
    for (((name, _), g), c) in FIELDS.iter().zip(g.fields()).zip(c.fields()) {
        assert_eq!(g, c, "[2, 0, 5]: {name}");
    }
}

#[test]
fn gpu_batch_norm_rejects_what_the_reference_rejects() {
    // the reference first (no GPU needed): it pins down what must be rejected
    check_rejections(&Cpu::<f32>::new(), "cpu");
    if let Some(gpu) = backend_or_skip::<f32>("gpu_batch_norm bad input") {
        check_rejections(&gpu, "cuda");
    }
}

/// Each invalid call is an error on `backend` (both backends must agree).
fn check_rejections<B: Backend<Elem = f32>>(b: &B, name: &str) {
    let ok = BatchNormParams::default();
    let t = |shape: &[usize]| {
        let len = shape.iter().product();
        b.tensor_from_vec(shape, (0..len).map(|i| i as f32 * 0.25).collect())
            .unwrap()
    };
    let (x, c3, c4) = (t(&[4, 3, 2]), t(&[3]), t(&[4]));
    let running = RunningStats {
        mean: t(&[3]),
        var: t(&[3]),
    };
    let bad_params = [
        BatchNormParams { eps: 0.0, ..ok },
        BatchNormParams {
            eps: f64::NAN,
            ..ok
        },
        BatchNormParams {
            momentum: 1.5,
            ..ok
        },
        BatchNormParams {
            momentum: -0.1,
            ..ok
        },
    ];
    for params in bad_params {
        assert!(
            b.batch_norm_train_forward(&x, &c3, &c3, params).is_err(),
            "{name}: train with {params:?}"
        );
        assert!(
            b.batch_norm_eval_forward(&x, &c3, &c3, &running, params)
                .is_err(),
            "{name}: eval with {params:?}"
        );
    }
    // gamma, beta and the running statistics must be [C]
    assert!(
        b.batch_norm_train_forward(&x, &c4, &c3, ok).is_err(),
        "{name}: gamma [4]"
    );
    assert!(
        b.batch_norm_train_forward(&x, &c3, &c4, ok).is_err(),
        "{name}: beta [4]"
    );
    assert!(
        b.batch_norm_train_forward(&x, &t(&[1, 3]), &c3, ok)
            .is_err(),
        "{name}: gamma [1, 3]"
    );
    assert!(
        b.batch_norm_eval_forward(&x, &c4, &c3, &running, ok)
            .is_err(),
        "{name}: eval gamma [4]"
    );
    let wrong_running = RunningStats {
        mean: t(&[3]),
        var: t(&[4]),
    };
    assert!(
        b.batch_norm_eval_forward(&x, &c3, &c3, &wrong_running, ok)
            .is_err(),
        "{name}: running var [4]"
    );
    // x needs [N, C, ...]; training needs 2 values per channel
    assert!(
        b.batch_norm_train_forward(&t(&[6]), &c3, &c3, ok).is_err(),
        "{name}: x [6]"
    );
    assert!(
        b.batch_norm_train_forward(&t(&[1, 3]), &c3, &c3, ok)
            .is_err(),
        "{name}: n = 1"
    );
    assert!(
        b.batch_norm_train_forward(&t(&[1, 3, 1, 1]), &c3, &c3, ok)
            .is_err(),
        "{name}: n = 1 with trailing axes"
    );
    assert!(
        b.batch_norm_eval_forward(&t(&[1, 3]), &c3, &c3, &running, ok)
            .is_ok(),
        "{name}: evaluation accepts n = 1"
    );
    // backward: grad_y of the input's shape
    let (_, stats, context) = b.batch_norm_train_forward(&x, &c3, &c3, ok).unwrap();
    assert!(
        b.batch_norm_backward(&t(&[4, 3, 2]), &context).is_ok(),
        "{name}: backward"
    );
    assert!(
        b.batch_norm_backward(&t(&[4, 3, 3]), &context).is_err(),
        "{name}: grad_y [4, 3, 3]"
    );
    assert!(
        b.batch_norm_backward(&t(&[4, 6]), &context).is_err(),
        "{name}: grad_y [4, 6]"
    );
    // running statistics: four [C] vectors and valid params
    assert!(
        b.update_running_stats(&running, &stats, ok).is_ok(),
        "{name}: update"
    );
    let other = BatchStats {
        mean: t(&[4]),
        var_unbiased: t(&[4]),
    };
    assert!(
        b.update_running_stats(&running, &other, ok).is_err(),
        "{name}: batch [4]"
    );
    let flat = RunningStats {
        mean: t(&[1, 3]),
        var: t(&[1, 3]),
    };
    assert!(
        b.update_running_stats(&flat, &stats, ok).is_err(),
        "{name}: running [1, 3]"
    );
    assert!(
        b.update_running_stats(&running, &stats, bad_params[2])
            .is_err(),
        "{name}: momentum 1.5"
    );
}

/// The running update agrees with the reference at the momentum extremes too (0 keeps the running
/// statistics, 1 takes the batch's).
#[test]
fn gpu_running_stats_at_momentum_0_and_1() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_batch_norm momentum") else {
        return;
    };
    let inputs = Inputs::<f64>::random(&[5, 4, 3], 11);
    for momentum in [0.0, 1.0] {
        let params = BatchNormParams {
            eps: 1e-3,
            momentum,
        };
        let (g, c) = (run_gpu(&gpu, &inputs, params), run_cpu(&inputs, params));
        for (((name, _), g), c) in FIELDS.iter().zip(g.fields()).zip(c.fields()) {
            let error = relative_error(g, c);
            assert!(
                error <= 1e-12,
                "momentum {momentum}: {name} rel error {error:e}"
            );
        }
        assert_eq!(
            g.new_mean,
            if momentum == 0.0 {
                inputs.running_mean.clone()
            } else {
                g.batch_mean.clone()
            }
        );
    }
}
