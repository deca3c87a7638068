//! BatchNorm (docs/conventions.md §1): forwards against naive f64 loops and hand-checked values, backwards
//! against central finite differences (f64, relative error in the 2-norm over the whole tensor
//! <= 1e-6), shapes by proptest, bitwise determinism across thread counts, and typed errors.

use ndarray::{ArcArray, IxDyn};
use proptest::prelude::*;
use revsnn_reference::ops::batch_norm::{self, BatchNormContext};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{
    BatchNormAffine, BatchNormParams, BatchStats, Conv2dParams, ConvKind, Cpu, CpuTensor, Element,
    OpError, RunningStats,
};

const FD_STEP: f64 = 1e-6;
/// The step for gamma and beta: the loss `dot(dy, gamma x_hat + beta)` is linear in them, so a
/// central difference has no truncation error at any step, and its rounding error, about
/// `eps |loss| / step`, shrinks with a larger one. At `FD_STEP` it reached 1.3e-6 of a
/// one-channel dgamma that happened to be small against the loss (a CI run of this proptest).
const LINEAR_FD_STEP: f64 = 1.0;
const FD_TOLERANCE: f64 = 1e-6;

fn tensor<E: Element>(shape: &[usize], data: &[f64]) -> CpuTensor<E> {
    ArcArray::from_shape_vec(IxDyn(shape), data.iter().map(|&v| E::cast(v)).collect()).unwrap()
}

fn values<E: Element>(x: &CpuTensor<E>) -> Vec<f64> {
    x.iter().map(|v| v.widen()).collect()
}

fn params() -> BatchNormParams {
    BatchNormParams::default()
}

/// Random input with a per-channel offset and scale, so that the statistics differ per channel.
fn random_input(rng: &mut SplitMix64, shape: &[usize]) -> Vec<f64> {
    let channels = shape[1];
    let inner: usize = shape[2..].iter().product();
    let offsets: Vec<f64> = (0..channels).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let scales: Vec<f64> = (0..channels).map(|_| rng.uniform(0.5, 3.0)).collect();
    (0..shape.iter().product::<usize>())
        .map(|k| {
            let c = (k / inner) % channels;
            offsets[c] + scales[c] * rng.normal()
        })
        .collect()
}

/// Naive per-channel mean and biased variance, two passes in f64.
fn naive_stats(x: &[f64], shape: &[usize]) -> (Vec<f64>, Vec<f64>) {
    let (batch, channels) = (shape[0], shape[1]);
    let inner: usize = shape[2..].iter().product();
    let n = (batch * inner) as f64;
    let mut mean = vec![0.0; channels];
    let mut var = vec![0.0; channels];
    for c in 0..channels {
        for b in 0..batch {
            for i in 0..inner {
                mean[c] += x[(b * channels + c) * inner + i];
            }
        }
        mean[c] /= n;
        for b in 0..batch {
            for i in 0..inner {
                var[c] += (x[(b * channels + c) * inner + i] - mean[c]).powi(2);
            }
        }
        var[c] /= n;
    }
    (mean, var)
}

/// Naive `y = gamma (x - mean) / sqrt(var + eps) + beta`.
#[allow(clippy::too_many_arguments)]
fn naive_normalise(
    x: &[f64],
    shape: &[usize],
    mean: &[f64],
    var: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> Vec<f64> {
    let channels = shape[1];
    let inner: usize = shape[2..].iter().product();
    x.iter()
        .enumerate()
        .map(|(k, &v)| {
            let c = (k / inner) % channels;
            gamma[c] * (v - mean[c]) / (var[c] + eps).sqrt() + beta[c]
        })
        .collect()
}

struct Case {
    shape: Vec<usize>,
    x: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    running_mean: Vec<f64>,
    running_var: Vec<f64>,
    dy: Vec<f64>,
}

impl Case {
    fn new(seed: u64, shape: &[usize]) -> Case {
        let mut rng = SplitMix64::new(seed);
        let channels = shape[1];
        let numel: usize = shape.iter().product();
        Case {
            shape: shape.to_vec(),
            x: random_input(&mut rng, shape),
            gamma: (0..channels).map(|_| rng.uniform(0.5, 2.0)).collect(),
            beta: (0..channels).map(|_| rng.uniform(-1.0, 1.0)).collect(),
            running_mean: (0..channels).map(|_| rng.uniform(-1.0, 1.0)).collect(),
            running_var: (0..channels).map(|_| rng.uniform(0.5, 2.0)).collect(),
            dy: rng.normal_vec(numel, 1.0),
        }
    }

    fn channels(&self) -> usize {
        self.shape[1]
    }

    fn running<E: Element>(&self) -> RunningStats<CpuTensor<E>> {
        RunningStats {
            mean: tensor(&[self.channels()], &self.running_mean),
            var: tensor(&[self.channels()], &self.running_var),
        }
    }

    /// The forward in `train` or eval mode at (x, gamma, beta).
    fn forward<E: Element>(
        &self,
        train: bool,
        x: &[f64],
        gamma: &[f64],
        beta: &[f64],
    ) -> (CpuTensor<E>, BatchNormContext<E>) {
        let c = self.channels();
        let (x, gamma, beta) = (
            tensor::<E>(&self.shape, x),
            tensor::<E>(&[c], gamma),
            tensor::<E>(&[c], beta),
        );
        if train {
            let (y, _, context) = batch_norm::train_forward(&x, &gamma, &beta, params()).unwrap();
            (y, context)
        } else {
            batch_norm::eval_forward(&x, &gamma, &beta, &self.running(), params()).unwrap()
        }
    }

    /// `L = <dy, y>` at (x, gamma, beta).
    fn loss(&self, train: bool, x: &[f64], gamma: &[f64], beta: &[f64]) -> f64 {
        dot(
            &self.dy,
            &values(&self.forward::<f64>(train, x, gamma, beta).0),
        )
    }

    /// Checks the analytic gradients of x, gamma and beta against central differences.
    fn check_gradients(&self, train: bool) {
        let (_, context) = self.forward::<f64>(train, &self.x, &self.gamma, &self.beta);
        let grads = batch_norm::backward(&tensor(&self.shape, &self.dy), &context).unwrap();
        let fd_x = central_difference(
            |x| self.loss(train, x, &self.gamma, &self.beta),
            &self.x,
            FD_STEP,
        );
        let fd_gamma = central_difference(
            |g| self.loss(train, &self.x, g, &self.beta),
            &self.gamma,
            LINEAR_FD_STEP,
        );
        let fd_beta = central_difference(
            |b| self.loss(train, &self.x, &self.gamma, b),
            &self.beta,
            LINEAR_FD_STEP,
        );
        for (name, analytic, numeric) in [
            ("x", values(&grads.input), fd_x),
            ("gamma", values(&grads.gamma), fd_gamma),
            ("beta", values(&grads.beta), fd_beta),
        ] {
            let err = relative_error(&analytic, &numeric);
            assert!(
                err <= FD_TOLERANCE,
                "d{name}, train {train}, shape {:?}: relative error {err:e}",
                self.shape
            );
        }
        assert_eq!(grads.input.shape(), &self.shape[..]);
        assert_eq!(grads.gamma.shape(), &[self.channels()]);
        assert_eq!(grads.beta.shape(), &[self.channels()]);
    }
}

const SHAPES: [&[usize]; 4] = [&[6, 3], &[3, 2, 5], &[2, 3, 4, 5], &[1, 2, 3, 1]];

#[test]
fn train_forward_matches_naive_loops() {
    for (seed, shape) in SHAPES.iter().enumerate() {
        let case = Case::new(seed as u64, shape);
        let c = case.channels();
        let (y, stats, _) = batch_norm::train_forward(
            &tensor::<f64>(shape, &case.x),
            &tensor(&[c], &case.gamma),
            &tensor(&[c], &case.beta),
            params(),
        )
        .unwrap();
        let (mean, var) = naive_stats(&case.x, shape);
        let n = case.x.len() as f64 / c as f64;
        let expected = naive_normalise(&case.x, shape, &mean, &var, &case.gamma, &case.beta, 1e-5);
        assert_eq!(y.shape(), *shape);
        assert!(y.is_standard_layout());
        assert!(relative_error(&values(&y), &expected) < 1e-13, "{shape:?}");
        assert!(relative_error(&values(&stats.mean), &mean) < 1e-13);
        let unbiased: Vec<f64> = var.iter().map(|v| v * n / (n - 1.0)).collect();
        assert!(relative_error(&values(&stats.var_unbiased), &unbiased) < 1e-13);
    }
}

#[test]
fn eval_forward_matches_naive_loops() {
    for (seed, shape) in SHAPES.iter().enumerate() {
        let case = Case::new(100 + seed as u64, shape);
        let (y, _) = case.forward::<f64>(false, &case.x, &case.gamma, &case.beta);
        let expected = naive_normalise(
            &case.x,
            shape,
            &case.running_mean,
            &case.running_var,
            &case.gamma,
            &case.beta,
            1e-5,
        );
        assert!(relative_error(&values(&y), &expected) < 1e-14, "{shape:?}");
    }
}

#[test]
fn hand_checked_values_and_running_stat_update() {
    // One channel holding 1, 3, 5, 7 over [N = 2, C = 1, L = 2]: mean 4, biased var 5,
    // unbiased var 20/3.
    let x = tensor::<f64>(&[2, 1, 2], &[1.0, 3.0, 5.0, 7.0]);
    let params = BatchNormParams {
        eps: 1e-5,
        momentum: 0.1,
    };
    let (y, stats, _) =
        batch_norm::train_forward(&x, &tensor(&[1], &[2.0]), &tensor(&[1], &[0.5]), params)
            .unwrap();
    let s = (5.0f64 + 1e-5).sqrt();
    let expected = [-6.0 / s + 0.5, -2.0 / s + 0.5, 2.0 / s + 0.5, 6.0 / s + 0.5];
    assert!(relative_error(&values(&y), &expected) < 1e-15);
    assert_eq!(values(&stats.mean), [4.0]);
    assert!((stats.var_unbiased[0] - 20.0 / 3.0).abs() < 1e-15);

    // From PyTorch's initial running stats (0, 1): mean 0.1 * 4, var 0.9 * 1 + 0.1 * 20/3.
    let running = RunningStats {
        mean: tensor::<f64>(&[1], &[0.0]),
        var: tensor(&[1], &[1.0]),
    };
    let updated = batch_norm::update_running_stats(&running, &stats, params).unwrap();
    assert!((updated.mean[0] - 0.4).abs() < 1e-15);
    assert!((updated.var[0] - (0.9 + 2.0 / 3.0)).abs() < 1e-15);
}

#[test]
fn running_stat_update_matches_the_formula_per_channel() {
    let case = Case::new(7, &[4, 3, 5]);
    let (_, stats, _) = batch_norm::train_forward(
        &tensor::<f64>(&case.shape, &case.x),
        &tensor(&[3], &case.gamma),
        &tensor(&[3], &case.beta),
        params(),
    )
    .unwrap();
    let updated = batch_norm::update_running_stats(&case.running(), &stats, params()).unwrap();
    let (mean, var) = naive_stats(&case.x, &case.shape);
    let n = 20.0;
    for c in 0..3 {
        let want_mean = 0.9 * case.running_mean[c] + 0.1 * mean[c];
        let want_var = 0.9 * case.running_var[c] + 0.1 * var[c] * n / (n - 1.0);
        assert!((updated.mean[c] - want_mean).abs() < 1e-14);
        assert!((updated.var[c] - want_var).abs() < 1e-14);
    }
}

#[test]
fn train_backward_matches_finite_differences() {
    for (seed, shape) in SHAPES.iter().enumerate() {
        Case::new(200 + seed as u64, shape).check_gradients(true);
    }
}

#[test]
fn eval_backward_matches_finite_differences() {
    for (seed, shape) in SHAPES.iter().enumerate() {
        Case::new(300 + seed as u64, shape).check_gradients(false);
    }
}

#[test]
fn a_strided_input_gives_the_same_result_as_its_row_major_copy() {
    let case = Case::new(11, &[3, 4, 5]);
    // Build x as the transpose of a [5, 4, 3] array, so that it is not in standard layout.
    let transposed: Vec<f64> = {
        let x = tensor::<f64>(&case.shape, &case.x);
        x.permuted_axes(vec![2, 1, 0]).iter().copied().collect()
    };
    let strided = tensor::<f64>(&[5, 4, 3], &transposed).permuted_axes(vec![2, 1, 0]);
    assert!(!strided.is_standard_layout());
    let (gamma, beta) = (tensor(&[4], &case.gamma), tensor(&[4], &case.beta));
    let (y_strided, _, ctx) = batch_norm::train_forward(&strided, &gamma, &beta, params()).unwrap();
    let (y_plain, _, _) = batch_norm::train_forward(
        &tensor::<f64>(&case.shape, &case.x),
        &gamma,
        &beta,
        params(),
    )
    .unwrap();
    assert_eq!(values(&y_strided), values(&y_plain));
    let dy_strided = tensor::<f64>(&case.shape, &case.dy)
        .permuted_axes(vec![2, 1, 0])
        .as_standard_layout()
        .into_owned()
        .into_shared()
        .permuted_axes(vec![2, 1, 0]);
    let plain = batch_norm::backward(&tensor(&case.shape, &case.dy), &ctx).unwrap();
    let strided_grads = batch_norm::backward(&dy_strided, &ctx).unwrap();
    assert_eq!(values(&plain.input), values(&strided_grads.input));
}

#[test]
fn the_backend_delegates_to_the_kernels() {
    let cpu = Cpu::<f64>::new();
    let case = Case::new(12, &[2, 3, 2]);
    let x = cpu.tensor_from_vec(&case.shape, case.x.clone()).unwrap();
    let gamma = cpu.tensor_from_vec(&[3], case.gamma.clone()).unwrap();
    let beta = cpu.tensor_from_vec(&[3], case.beta.clone()).unwrap();
    let (y, stats, ctx) = cpu
        .batch_norm_train_forward(&x, &gamma, &beta, params())
        .unwrap();
    let (y_direct, _, _) = batch_norm::train_forward(&x, &gamma, &beta, params()).unwrap();
    assert_eq!(values(&y), values(&y_direct));
    let grads = cpu
        .batch_norm_backward(&tensor(&case.shape, &case.dy), &ctx)
        .unwrap();
    assert_eq!(grads.input.shape(), &case.shape[..]);
    let updated = cpu
        .update_running_stats(&case.running(), &stats, params())
        .unwrap();
    assert_eq!(updated.mean.shape(), &[3]);
}

/// The contract's fused convolution and BatchNorm (`conv_batch_norm_train_forward`,
/// `conv_batch_norm_backward`) default to the two ops in turn, bit for bit, for a 2-D and a 1-D
/// convolution; the backward of a convolution with a bias gives its gradient too.
#[test]
fn the_fused_convolution_and_batch_norm_default_to_the_two_ops() {
    let cpu = Cpu::<f64>::new();
    let mut rng = SplitMix64::new(61);
    let mut random = |shape: &[usize]| {
        let len = shape.iter().product();
        cpu.tensor_from_vec(shape, rng.normal_vec(len, 1.0))
            .unwrap()
    };
    let (gamma, beta) = (random(&[4]), random(&[4]));
    let norm = BatchNormAffine {
        gamma: &gamma,
        beta: &beta,
        params: params(),
    };
    let cases = [
        (
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
            &[2, 3, 5, 5][..],
            &[4, 3, 3, 3][..],
            &[2, 4, 5, 5][..],
        ),
        (ConvKind::Conv1d, &[2, 3, 7], &[4, 3, 1], &[2, 4, 7]),
    ];
    for (kind, x, w, y) in cases {
        let [x, w, dy] = [x, w, y].map(&mut random);
        let fused = cpu
            .conv_batch_norm_train_forward(x.clone(), &w, None, kind, norm)
            .unwrap();
        let (conv_y, conv) = cpu.conv_forward(&x, &w, None, kind).unwrap();
        let (y, batch, context) = cpu
            .batch_norm_train_forward(&conv_y, &gamma, &beta, params())
            .unwrap();
        let grads = cpu
            .conv_batch_norm_backward(dy.clone(), fused.conv, fused.norm, kind)
            .unwrap();
        let normed = cpu.batch_norm_backward(&dy, &context).unwrap();
        let two_ops = cpu.conv_backward(normed.input, &conv, kind).unwrap();
        let pairs = [
            (&fused.y, &y),
            (&fused.batch.mean, &batch.mean),
            (&fused.batch.var_unbiased, &batch.var_unbiased),
            (&grads.input, &two_ops.input),
            (&grads.weight, &two_ops.weight),
            (&grads.gamma, &normed.gamma),
            (&grads.beta, &normed.beta),
        ];
        for (k, (a, b)) in pairs.into_iter().enumerate() {
            assert_eq!(
                bits(&[values(a)]),
                bits(&[values(b)]),
                "{kind:?}: tensor {k}"
            );
        }
        // A convolution with a bias: the bias's gradient too.
        let bias = random(&[4]);
        let (conv_y, conv) = cpu.conv_forward(&x, &w, Some(&bias), kind).unwrap();
        let (_, _, context) = cpu
            .batch_norm_train_forward(&conv_y, &gamma, &beta, params())
            .unwrap();
        let normed = cpu.batch_norm_backward(&dy, &context).unwrap();
        let two_ops = cpu.conv_backward(normed.input, &conv, kind).unwrap();
        let grads = cpu
            .conv_batch_norm_backward(dy, conv, context, kind)
            .unwrap();
        let pairs = [
            (&grads.input, &two_ops.input),
            (&grads.weight, &two_ops.weight),
            (grads.bias.as_ref().unwrap(), two_ops.bias.as_ref().unwrap()),
            (&grads.gamma, &normed.gamma),
            (&grads.beta, &normed.beta),
        ];
        for (k, (a, b)) in pairs.into_iter().enumerate() {
            let [a, b] = [a, b].map(|t| bits(&[values(t)]));
            assert_eq!(a, b, "{kind:?} with a bias: tensor {k}");
        }
    }
}

/// Forward and backward outputs of both modes, as bits.
fn run_all<E: Element>(case: &Case) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    for train in [true, false] {
        let (y, context) = case.forward::<E>(train, &case.x, &case.gamma, &case.beta);
        let grads = batch_norm::backward(&tensor(&case.shape, &case.dy), &context).unwrap();
        out.extend([
            values(&y),
            values(&grads.input),
            values(&grads.gamma),
            values(&grads.beta),
        ]);
    }
    let c = case.channels();
    let (_, stats, _) = batch_norm::train_forward(
        &tensor::<E>(&case.shape, &case.x),
        &tensor(&[c], &case.gamma),
        &tensor(&[c], &case.beta),
        params(),
    )
    .unwrap();
    out.extend([values(&stats.mean), values(&stats.var_unbiased)]);
    out
}

fn bits(v: &[Vec<f64>]) -> Vec<Vec<u64>> {
    v.iter()
        .map(|t| t.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn outputs_and_gradients_are_bitwise_identical_across_thread_counts() {
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one, two) = (pool(1), pool(2));
    for shape in [&[16, 6, 33, 17][..], &[1000, 7]] {
        let case = Case::new(13, shape);
        let a64 = one.install(|| run_all::<f64>(&case));
        let b64 = two.install(|| run_all::<f64>(&case));
        assert_eq!(bits(&a64), bits(&b64), "f64 {shape:?}");
        let a32 = one.install(|| run_all::<f32>(&case));
        let b32 = two.install(|| run_all::<f32>(&case));
        assert_eq!(bits(&a32), bits(&b32), "f32 {shape:?}");
        // The f32 run agrees with the f64 truth to f32 precision.
        assert!(relative_error(&a32[0], &a64[0]) < 1e-6);
    }
}

/// The output made again from a training context is the forward's, bit for bit (docs/neurons.md
/// §2.4.2), in f64 and f32, and on a strided input; an evaluation context and a `beta` of the
/// wrong shape are errors.
#[test]
fn the_training_output_is_made_again_from_the_context_bit_for_bit() {
    fn check<E: Element>(shape: &[usize], seed: u64) {
        let cpu = Cpu::<E>::new();
        let mut rng = SplitMix64::new(seed);
        let x = tensor::<E>(shape, &random_input(&mut rng, shape));
        let channels = shape[1];
        let gamma = tensor::<E>(&[channels], &rng.normal_vec(channels, 1.0));
        let beta = tensor::<E>(&[channels], &rng.normal_vec(channels, 1.0));
        let (y, _, context) = cpu
            .batch_norm_train_forward(&x, &gamma, &beta, params())
            .unwrap();
        let again = cpu.batch_norm_train_output(&context, &beta).unwrap();
        let bits = |t: &CpuTensor<E>| t.iter().map(|v| v.widen().to_bits()).collect::<Vec<_>>();
        assert_eq!(again.shape(), y.shape());
        assert_eq!(bits(&again), bits(&y), "{shape:?}");
    }
    check::<f64>(&[4, 3, 5, 5], 71);
    check::<f32>(&[4, 3, 5, 5], 72);
    check::<f32>(&[6, 2], 73);

    let cpu = Cpu::<f64>::new();
    let g3 = tensor::<f64>(&[3], &[1.0; 3]);
    let x = tensor::<f64>(
        &[2, 3, 2],
        &random_input(&mut SplitMix64::new(74), &[2, 3, 2]),
    );
    let (_, _, context) = cpu
        .batch_norm_train_forward(&x, &g3, &g3, params())
        .unwrap();
    let wrong_beta = tensor::<f64>(&[4], &[0.0; 4]);
    let result = cpu.batch_norm_train_output(&context, &wrong_beta);
    assert!(
        matches!(result, Err(OpError::ShapeMismatch { .. })),
        "{result:?}"
    );
    let running = RunningStats {
        mean: tensor::<f64>(&[3], &[0.0; 3]),
        var: tensor(&[3], &[1.0; 3]),
    };
    let (_, eval) = cpu
        .batch_norm_eval_forward(&x, &g3, &g3, &running, params())
        .unwrap();
    let result = cpu.batch_norm_train_output(&eval, &g3);
    assert!(
        matches!(result, Err(OpError::InvalidParameter { .. })),
        "{result:?}"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let p = params();
    let g3 = tensor::<f64>(&[3], &[1.0; 3]);
    let running = RunningStats {
        mean: tensor::<f64>(&[3], &[0.0; 3]),
        var: tensor(&[3], &[1.0; 3]),
    };
    let is_shape = |r: Result<(), OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    let is_param = |r: Result<(), OpError>| matches!(r, Err(OpError::InvalidParameter { .. }));
    let train = |x: &CpuTensor<f64>, g: &CpuTensor<f64>, p| {
        batch_norm::train_forward(x, g, &g3, p).map(|_| ())
    };

    // One value per channel in training, with and without trailing axes, and an empty batch.
    for shape in [&[1, 3][..], &[1, 3, 1, 1], &[0, 3]] {
        let numel = shape.iter().product();
        assert!(is_shape(train(&tensor(shape, &vec![0.5; numel]), &g3, p)));
    }
    // ... but evaluation mode accepts a single sample.
    let single = tensor::<f64>(&[1, 3], &[0.5, 1.0, 2.0]);
    assert!(batch_norm::eval_forward(&single, &g3, &g3, &running, p).is_ok());

    let x = tensor::<f64>(&[2, 3, 2], &[0.25; 12]);
    assert!(is_shape(train(&tensor(&[6], &[0.0; 6]), &g3, p)));
    assert!(is_shape(train(&x, &tensor(&[2], &[1.0; 2]), p)));
    assert!(is_shape(train(&x, &tensor(&[3, 1], &[1.0; 3]), p)));
    assert!(is_shape(
        batch_norm::train_forward(&x, &g3, &tensor(&[4], &[0.0; 4]), p).map(|_| ())
    ));
    let bad_eps = BatchNormParams { eps: 0.0, ..p };
    let bad_momentum = BatchNormParams { momentum: 1.5, ..p };
    assert!(is_param(train(&x, &g3, bad_eps)));
    assert!(is_param(train(&x, &g3, bad_momentum)));
    assert!(is_param(
        batch_norm::eval_forward(&x, &g3, &g3, &running, bad_eps).map(|_| ())
    ));

    let short = RunningStats {
        mean: tensor::<f64>(&[2], &[0.0; 2]),
        var: tensor(&[2], &[1.0; 2]),
    };
    assert!(is_shape(
        batch_norm::eval_forward(&x, &g3, &g3, &short, p).map(|_| ())
    ));

    let (_, stats, ctx) = batch_norm::train_forward(&x, &g3, &g3, p).unwrap();
    let wrong_dy = tensor::<f64>(&[2, 3, 1], &[1.0; 6]);
    assert!(is_shape(batch_norm::backward(&wrong_dy, &ctx).map(|_| ())));

    assert!(batch_norm::update_running_stats(&running, &stats, p).is_ok());
    assert!(is_shape(
        batch_norm::update_running_stats(&short, &stats, p).map(|_| ())
    ));
    let mismatched = BatchStats {
        mean: stats.mean.clone(),
        var_unbiased: tensor::<f64>(&[2], &[1.0; 2]),
    };
    assert!(is_shape(
        batch_norm::update_running_stats(&running, &mismatched, p).map(|_| ())
    ));
    assert!(is_param(
        batch_norm::update_running_stats(&running, &stats, bad_momentum).map(|_| ())
    ));
}

/// Naive train-mode `dx = gamma / sqrt(var + eps) (dy - mean dy - x_hat mean(dy x_hat))`.
fn naive_train_dx(case: &Case) -> Vec<f64> {
    let (shape, x, dy) = (&case.shape, &case.x, &case.dy);
    let channels = shape[1];
    let inner: usize = shape[2..].iter().product();
    let (mean, var) = naive_stats(x, shape);
    let channel = |k: usize| (k / inner) % channels;
    let x_hat: Vec<f64> = (0..x.len())
        .map(|k| (x[k] - mean[channel(k)]) / (var[channel(k)] + 1e-5).sqrt())
        .collect();
    let n = (x.len() / channels) as f64;
    let mut mean_dy = vec![0.0; channels];
    let mut mean_dy_xhat = vec![0.0; channels];
    for k in 0..x.len() {
        mean_dy[channel(k)] += dy[k] / n;
        mean_dy_xhat[channel(k)] += dy[k] * x_hat[k] / n;
    }
    (0..x.len())
        .map(|k| {
            let c = channel(k);
            case.gamma[c] / (var[c] + 1e-5).sqrt()
                * (dy[k] - mean_dy[c] - x_hat[k] * mean_dy_xhat[c])
        })
        .collect()
}

fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    let size = prop::sample::select(vec![1usize, 2, 3, 5, 7]);
    (
        size.clone(),
        size.clone(),
        prop::collection::vec(size, 0..=2),
    )
        .prop_map(|(n, c, trailing)| {
            let mut shape = vec![n, c];
            shape.extend(trailing);
            shape
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_shape_matches_naive_forward_and_finite_difference_backward(
        shape in shape_strategy(),
        seed in any::<u64>(),
    ) {
        let case = Case::new(seed, &shape);
        let per_channel = case.x.len() / case.channels();
        let (y_eval, _) = case.forward::<f64>(false, &case.x, &case.gamma, &case.beta);
        let expected = naive_normalise(
            &case.x, &shape, &case.running_mean, &case.running_var, &case.gamma, &case.beta, 1e-5,
        );
        prop_assert!(relative_error(&values(&y_eval), &expected) < 1e-14);
        case.check_gradients(false);

        let c = case.channels();
        let train = batch_norm::train_forward(
            &tensor::<f64>(&shape, &case.x),
            &tensor(&[c], &case.gamma),
            &tensor(&[c], &case.beta),
            params(),
        );
        if per_channel < 2 {
            let refused = matches!(train, Err(OpError::ShapeMismatch { .. }));
            prop_assert!(refused, "one value per channel must be refused in training");
        } else {
            let (y, _, _) = train.unwrap();
            let (mean, var) = naive_stats(&case.x, &shape);
            let expected = naive_normalise(&case.x, &shape, &mean, &var, &case.gamma, &case.beta, 1e-5);
            prop_assert!(relative_error(&values(&y), &expected) < 1e-12);
            let (_, context) = case.forward::<f64>(true, &case.x, &case.gamma, &case.beta);
            let dx = batch_norm::backward(&tensor(&shape, &case.dy), &context).unwrap().input;
            // Compared in the infinity norm against the scale of dy: with two values per channel
            // the true dx nearly vanishes (x_hat = +-1 up to eps), so a relative error is noise.
            let worst = values(&dx)
                .iter()
                .zip(naive_train_dx(&case))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            prop_assert!(worst < 1e-10, "dx differs from the naive formula by {}", worst);
            // Finite differences where the gradient is well conditioned (3 or more values).
            if per_channel >= 3 {
                case.check_gradients(true);
            }
        }
    }
}

#[test]
fn a_context_whose_statistics_do_not_fit_the_input_is_an_error_not_a_panic() {
    let case = Case::new(17, &[2, 3, 4]);
    let dy = tensor::<f64>(&case.shape, &case.dy);
    for damage in [0, 1, 2] {
        let (_, mut bad) = case.forward::<f64>(true, &case.x, &case.gamma, &case.beta);
        match damage {
            0 => bad.mean.pop(),
            1 => bad.inv_std.pop(),
            _ => bad.gamma.pop(),
        };
        let error = batch_norm::backward(&dy, &bad).unwrap_err().to_string();
        assert!(error.contains("the context's"), "{error}");
    }
}
