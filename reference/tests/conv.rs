//! conv2d: forward against a direct loop in f64, every gradient against central finite
//! differences (L = <dy, y>, relative L2 error <= 1e-6 in f64), random shapes by proptest, bitwise
//! determinism across thread counts, f32 against f64, and errors instead of panics. Every check
//! also runs on spike inputs (each element 0 or 1), which take the sparse spike kernels when at
//! most half of the elements are 1 and the dense GEMMs otherwise.

use ndarray::{ArcArray, IxDyn};
use proptest::prelude::*;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{Conv2dParams, Cpu, CpuTensor, Element, OpError};

const FD_STEP: f64 = 1e-3;
const FD_TOLERANCE: f64 = 1e-6;

fn tensor<E: Element>(shape: &[usize], data: &[f64]) -> CpuTensor<E> {
    let data = data.iter().map(|&v| E::cast(v)).collect();
    ArcArray::from_shape_vec(IxDyn(shape), data).unwrap()
}

fn values<E: Element>(t: &CpuTensor<E>) -> Vec<f64> {
    t.iter().map(|v| v.widen()).collect()
}

/// One convolution problem: shapes, parameters and random operands (f64 values).
#[derive(Clone, Debug)]
struct Case {
    x_shape: [usize; 4],
    w_shape: [usize; 4],
    params: Conv2dParams,
    x: Vec<f64>,
    w: Vec<f64>,
    b: Option<Vec<f64>>,
}

impl Case {
    fn new(x_shape: [usize; 4], w_shape: [usize; 4], params: Conv2dParams, bias: bool) -> Self {
        let seed = x_shape
            .iter()
            .chain(&w_shape)
            .fold(17u64, |s, &d| s * 31 + d as u64);
        let mut rng = SplitMix64::new(seed + params.stride as u64 * 7 + params.padding as u64);
        let x = rng.normal_vec(x_shape.iter().product(), 1.0);
        let w = rng.normal_vec(w_shape.iter().product(), 0.5);
        let b = bias.then(|| rng.normal_vec(w_shape[0], 1.0));
        Case {
            x_shape,
            w_shape,
            params,
            x,
            w,
            b,
        }
    }

    /// The same problem with `x` replaced by spikes: each element is 1 with probability `density`.
    fn with_spike_input(mut self, density: f64) -> Self {
        let mut rng = SplitMix64::new(self.x.len() as u64 + 5);
        for v in &mut self.x {
            *v = if rng.next_f64() < density { 1.0 } else { 0.0 };
        }
        self
    }

    fn out_shape(&self) -> [usize; 4] {
        let [n, _, h, w] = self.x_shape;
        let [o, _, kh, kw] = self.w_shape;
        let (s, p) = (self.params.stride, self.params.padding);
        [n, o, (h + 2 * p - kh) / s + 1, (w + 2 * p - kw) / s + 1]
    }

    fn forward<E: Element>(&self, x: &[f64], w: &[f64], b: Option<&[f64]>) -> Vec<f64> {
        let bias = b.map(|b| tensor::<E>(&[b.len()], b));
        let (y, _) = Cpu::<E>::new()
            .conv2d_forward(
                &tensor(&self.x_shape, x),
                &tensor(&self.w_shape, w),
                bias.as_ref(),
                self.params,
            )
            .unwrap();
        assert_eq!(y.shape(), self.out_shape());
        assert!(y.is_standard_layout());
        values(&y)
    }
}

/// Calls `tap(y, x, w)` with the flat indices of every output, input and weight element that
/// one term `w[o, c, i, j] x[n, c, s p + i - pad, s q + j - pad]` of the convolution joins
/// (padding skipped), outputs in order and each output's terms in order of `(c, i, j)`.
fn for_each_tap(case: &Case, mut tap: impl FnMut(usize, usize, usize)) {
    let [n_, c_, h_, w_] = case.x_shape;
    let [o_, _, kh, kw] = case.w_shape;
    let [_, _, ho, wo] = case.out_shape();
    let (s, pad) = (case.params.stride as isize, case.params.padding as isize);
    for n in 0..n_ {
        for o in 0..o_ {
            for p in 0..ho {
                for q in 0..wo {
                    let y = ((n * o_ + o) * ho + p) * wo + q;
                    for c in 0..c_ {
                        for i in 0..kh {
                            for j in 0..kw {
                                let yy = p as isize * s + i as isize - pad;
                                let xx = q as isize * s + j as isize - pad;
                                if yy < 0 || xx < 0 || yy >= h_ as isize || xx >= w_ as isize {
                                    continue;
                                }
                                let (yy, xx) = (yy as usize, xx as usize);
                                let x = ((n * c_ + c) * h_ + yy) * w_ + xx;
                                tap(y, x, ((o * c_ + c) * kh + i) * kw + j);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `y[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] x[n, c, s p + i - pad, s q + j - pad]`,
/// skipping the padding, written as plainly as possible.
fn naive_conv(case: &Case) -> Vec<f64> {
    let [n_, o_, ho, wo] = case.out_shape();
    let mut y = vec![0.0; n_ * o_ * ho * wo];
    if let Some(b) = &case.b {
        for (index, value) in y.iter_mut().enumerate() {
            *value = b[index / (ho * wo) % o_];
        }
    }
    for_each_tap(case, |y_at, x_at, w_at| {
        y[y_at] += case.w[w_at] * case.x[x_at]
    });
    y
}

/// Relative errors of the forward against [`naive_conv`] and of the input, weight and bias
/// gradients against central differences of `L = <dy, y>`.
fn check_case(case: &Case) -> [f64; 4] {
    let cpu = Cpu::<f64>::new();
    let forward_error = relative_error(
        &case.forward::<f64>(&case.x, &case.w, case.b.as_deref()),
        &naive_conv(case),
    );

    let mut rng = SplitMix64::new(99);
    let dy = rng.normal_vec(case.out_shape().iter().product(), 1.0);
    let bias = case.b.as_ref().map(|b| tensor::<f64>(&[b.len()], b));
    let (_, context) = cpu
        .conv2d_forward(
            &tensor(&case.x_shape, &case.x),
            &tensor(&case.w_shape, &case.w),
            bias.as_ref(),
            case.params,
        )
        .unwrap();
    let grads = cpu
        .conv2d_backward(tensor(&case.out_shape(), &dy), &context)
        .unwrap();
    assert_eq!(grads.input.shape(), case.x_shape);
    assert_eq!(grads.weight.shape(), case.w_shape);
    assert!(grads.input.is_standard_layout() && grads.weight.is_standard_layout());

    let b = case.b.as_deref();
    let dx = central_difference(
        |x| dot(&dy, &case.forward::<f64>(x, &case.w, b)),
        &case.x,
        FD_STEP,
    );
    let dw = central_difference(
        |w| dot(&dy, &case.forward::<f64>(&case.x, w, b)),
        &case.w,
        FD_STEP,
    );
    let bias_error = match (&case.b, &grads.bias) {
        (Some(b), Some(db)) => {
            let fd = central_difference(
                |b| dot(&dy, &case.forward::<f64>(&case.x, &case.w, Some(b))),
                b,
                FD_STEP,
            );
            relative_error(&values(db), &fd)
        }
        (None, None) => 0.0,
        _ => panic!("a bias gradient must be present iff the forward had a bias"),
    };
    [
        forward_error,
        relative_error(&values(&grads.input), &dx),
        relative_error(&values(&grads.weight), &dw),
        bias_error,
    ]
}

fn assert_case(case: &Case) {
    let errors = check_case(case);
    assert!(
        errors[0] <= 1e-12,
        "forward differs from the direct loop by {} in {case:?}",
        errors[0]
    );
    for (name, error) in ["input", "weight", "bias"].iter().zip(&errors[1..]) {
        assert!(
            *error <= FD_TOLERANCE,
            "{name} gradient has relative error {error} against finite differences in {:?} {:?} {:?}",
            case.x_shape,
            case.w_shape,
            case.params
        );
    }
}

#[test]
fn forward_and_gradients_match_direct_loop_and_finite_differences() {
    let p = Conv2dParams::new;
    for (x_shape, w_shape, params, bias) in [
        ([2, 3, 5, 5], [4, 3, 3, 3], p(1, 1), false),
        ([2, 3, 5, 5], [4, 3, 3, 3], p(1, 1), true),
        ([2, 3, 7, 6], [2, 3, 3, 3], p(2, 1), true),
        ([1, 2, 8, 5], [3, 2, 3, 3], p(2, 0), false),
        ([3, 2, 5, 7], [3, 2, 3, 3], p(1, 0), true),
        ([2, 4, 6, 5], [3, 4, 1, 1], p(1, 0), true),
        ([2, 4, 6, 5], [3, 4, 1, 1], p(1, 0), false),
        ([2, 3, 7, 5], [5, 3, 1, 1], p(2, 0), false),
        ([1, 3, 4, 6], [2, 3, 1, 1], p(1, 1), true),
        ([2, 2, 6, 7], [3, 2, 2, 3], p(3, 2), true),
        ([1, 1, 1, 1], [1, 1, 1, 1], p(1, 0), true),
        ([1, 1, 1, 1], [2, 1, 3, 3], p(1, 1), false),
    ] {
        assert_case(&Case::new(x_shape, w_shape, params, bias));
        for density in [0.0, 0.2, 0.5, 0.8, 1.0] {
            assert_case(&Case::new(x_shape, w_shape, params, bias).with_spike_input(density));
        }
    }
}

#[test]
fn spike_inputs_with_several_channel_tiles_match_direct_loop_and_finite_differences() {
    // The spike kernels sum 64 (f32) or 32 (f64) output channels at a time: 70 output channels
    // make three f64 tiles, the last one partial.
    let p = Conv2dParams::new;
    for (x_shape, w_shape, params, bias) in [
        ([2, 5, 6, 6], [70, 5, 3, 3], p(1, 1), true),
        ([2, 5, 7, 6], [70, 5, 3, 3], p(2, 1), false),
        ([3, 6, 4, 4], [33, 6, 1, 1], p(1, 0), true),
        ([3, 6, 5, 5], [40, 6, 1, 1], p(2, 0), false),
    ] {
        for density in [0.1, 0.3] {
            assert_case(&Case::new(x_shape, w_shape, params, bias).with_spike_input(density));
        }
    }
}

#[test]
fn spike_inputs_with_several_input_channel_blocks_match_direct_loop_and_finite_differences() {
    // The spike forward sums at most 64 (tap, channel) weight rows at a time: 3x3 kernels take
    // input channels 7 at a time (20 channels: blocks of 7, 7 and 6), 1x1 kernels 64 at a time
    // (70 channels: 64 and 6), 2x3 kernels 10 at a time; 9x9 kernels (81 taps) take the dense path.
    let p = Conv2dParams::new;
    for (x_shape, w_shape, params, bias) in [
        ([2, 20, 6, 5], [3, 20, 3, 3], p(1, 1), true),
        ([2, 20, 7, 6], [4, 20, 3, 3], p(2, 1), false),
        ([2, 70, 4, 4], [3, 70, 1, 1], p(1, 0), true),
        ([1, 23, 5, 6], [2, 23, 2, 3], p(1, 2), false),
        ([1, 2, 9, 9], [2, 2, 9, 9], p(1, 1), true),
    ] {
        for density in [0.1, 0.4] {
            assert_case(&Case::new(x_shape, w_shape, params, bias).with_spike_input(density));
        }
    }
}

#[test]
fn gradients_are_checked_on_batches_spanning_several_blocks() {
    // Blocks of ceil(2048 / P) samples: 70 samples of 8x8 outputs make blocks of 32, 32 and 6;
    // 130 samples of 4x4 make blocks of 128 and 2. The tree sum of the weight gradient and the
    // split of the input gradient across blocks are exercised.
    assert_case(&Case::new(
        [70, 1, 8, 8],
        [2, 1, 3, 3],
        Conv2dParams::new(1, 1),
        true,
    ));
    assert_case(&Case::new(
        [130, 2, 4, 4],
        [3, 2, 1, 1],
        Conv2dParams::new(1, 0),
        false,
    ));
    assert_case(
        &Case::new([70, 1, 8, 8], [2, 1, 3, 3], Conv2dParams::new(1, 1), true)
            .with_spike_input(0.25),
    );
}

#[test]
fn non_standard_layout_inputs_give_the_same_result() {
    let case = Case::new([2, 3, 5, 4], [2, 3, 3, 3], Conv2dParams::new(1, 1), false);
    let expected = naive_conv(&case);
    // The same x stored as [N, H, C, W] and viewed back through permuted axes.
    let x = tensor::<f64>(&case.x_shape, &case.x);
    let stored = x
        .view()
        .permuted_axes(IxDyn(&[0, 2, 1, 3]))
        .as_standard_layout()
        .into_owned()
        .into_shared();
    let permuted = stored.permuted_axes(IxDyn(&[0, 2, 1, 3]));
    assert!(!permuted.is_standard_layout());
    let (y, context) = Cpu::<f64>::new()
        .conv2d_forward(
            &permuted,
            &tensor(&case.w_shape, &case.w),
            None,
            case.params,
        )
        .unwrap();
    assert!(relative_error(&values(&y), &expected) <= 1e-12);
    let dy = tensor::<f64>(
        &case.out_shape(),
        &vec![1.0; case.out_shape().iter().product()],
    );
    let grads = Cpu::<f64>::new()
        .conv2d_backward(dy.clone(), &context)
        .unwrap();
    let (_, reference) = Cpu::<f64>::new()
        .conv2d_forward(&x, &tensor(&case.w_shape, &case.w), None, case.params)
        .unwrap();
    let reference = Cpu::<f64>::new()
        .conv2d_backward(dy.clone(), &reference)
        .unwrap();
    assert_eq!(values(&grads.input), values(&reference.input));
    assert_eq!(values(&grads.weight), values(&reference.weight));
}

#[test]
fn f32_agrees_with_f64() {
    for (x_shape, w_shape, params) in [
        ([4, 8, 11, 9], [6, 8, 3, 3], Conv2dParams::new(1, 1)),
        ([4, 8, 11, 9], [6, 8, 3, 3], Conv2dParams::new(2, 1)),
        ([4, 8, 11, 9], [6, 8, 1, 1], Conv2dParams::new(1, 0)),
    ] {
        for case in [
            Case::new(x_shape, w_shape, params, true),
            Case::new(x_shape, w_shape, params, true).with_spike_input(0.2),
        ] {
            let dy = SplitMix64::new(3).normal_vec(case.out_shape().iter().product(), 1.0);
            let run = |precision_32: bool| -> Vec<Vec<f64>> {
                fn go<E: Element>(case: &Case, dy: &[f64]) -> Vec<Vec<f64>> {
                    let cpu = Cpu::<E>::new();
                    let bias = tensor::<E>(&[case.w_shape[0]], case.b.as_ref().unwrap());
                    let (y, context) = cpu
                        .conv2d_forward(
                            &tensor(&case.x_shape, &case.x),
                            &tensor(&case.w_shape, &case.w),
                            Some(&bias),
                            case.params,
                        )
                        .unwrap();
                    let grads = cpu
                        .conv2d_backward(tensor(&case.out_shape(), dy), &context)
                        .unwrap();
                    vec![
                        values(&y),
                        values(&grads.input),
                        values(&grads.weight),
                        values(&grads.bias.unwrap()),
                    ]
                }
                if precision_32 {
                    go::<f32>(&case, &dy)
                } else {
                    go::<f64>(&case, &dy)
                }
            };
            for (single, double) in run(true).iter().zip(&run(false)) {
                let error = relative_error(single, double);
                assert!(error <= 1e-5, "f32 differs from f64 by {error}");
            }
        }
    }
}

/// Forward output and every gradient, as bits, inside a pool of `threads` threads.
fn bits_with_threads<E: Element>(
    threads: usize,
    case: &Case,
    dy: &[f64],
    to_bits: fn(E) -> u64,
) -> Vec<Vec<u64>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let cpu = Cpu::<E>::new();
        let bias = case.b.as_ref().map(|b| tensor::<E>(&[b.len()], b));
        let (y, context) = cpu
            .conv2d_forward(
                &tensor(&case.x_shape, &case.x),
                &tensor(&case.w_shape, &case.w),
                bias.as_ref(),
                case.params,
            )
            .unwrap();
        let grads = cpu
            .conv2d_backward(tensor(&case.out_shape(), dy), &context)
            .unwrap();
        let mut out = vec![y, grads.input, grads.weight];
        out.extend(grads.bias);
        out.iter()
            .map(|t| t.iter().map(|&v| to_bits(v)).collect())
            .collect()
    })
}

#[test]
fn results_are_bitwise_identical_with_one_and_two_threads() {
    for (x_shape, w_shape, params, bias) in [
        // 400 outputs per sample: blocks of 6 samples, 5 blocks.
        (
            [27, 8, 20, 20],
            [16, 8, 3, 3],
            Conv2dParams::new(1, 1),
            true,
        ),
        (
            [32, 16, 17, 13],
            [8, 16, 3, 3],
            Conv2dParams::new(2, 1),
            false,
        ),
        (
            [40, 16, 8, 8],
            [24, 16, 1, 1],
            Conv2dParams::new(1, 0),
            true,
        ),
    ] {
        for case in [
            Case::new(x_shape, w_shape, params, bias),
            Case::new(x_shape, w_shape, params, bias).with_spike_input(0.2),
        ] {
            let dy = SplitMix64::new(4).normal_vec(case.out_shape().iter().product(), 1.0);
            let f32_bits = |v: f32| u64::from(v.to_bits());
            let one = bits_with_threads::<f32>(1, &case, &dy, f32_bits);
            let two = bits_with_threads::<f32>(2, &case, &dy, f32_bits);
            let three = bits_with_threads::<f32>(3, &case, &dy, f32_bits);
            assert!(
                one == two && one == three,
                "f32 results depend on the thread count for {x_shape:?}"
            );
            let one = bits_with_threads::<f64>(1, &case, &dy, f64::to_bits);
            let two = bits_with_threads::<f64>(2, &case, &dy, f64::to_bits);
            assert!(
                one == two,
                "f64 results depend on the thread count for {x_shape:?}"
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Cpu::<f64>::new();
    let zeros = |shape: &[usize]| cpu.zeros(shape).unwrap();
    let x = zeros(&[2, 3, 5, 5]);
    let w = zeros(&[4, 3, 3, 3]);
    let p = Conv2dParams::new(1, 1);
    let is_shape = |r: Result<_, OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    assert!(matches!(
        cpu.conv2d_forward(&x, &w, None, Conv2dParams::new(0, 1)),
        Err(OpError::InvalidParameter { name: "stride", .. })
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &zeros(&[4, 3, 8, 3]), None, p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &zeros(&[4, 3, 6, 6]), None, Conv2dParams::new(1, 0))
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &zeros(&[4, 2, 3, 3]), None, p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &w, Some(&zeros(&[3])), p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &w, Some(&zeros(&[4, 1])), p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&zeros(&[3, 5, 5]), &w, None, p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &zeros(&[4, 3, 3]), None, p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &zeros(&[4, 3, 0, 3]), None, p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&zeros(&[2, 0, 5, 5]), &zeros(&[4, 0, 3, 3]), None, p)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_forward(&x, &zeros(&[0, 3, 3, 3]), None, p)
            .map(|_| ())
    ));

    let (y, context) = cpu.conv2d_forward(&x, &w, None, p).unwrap();
    assert_eq!(y.shape(), [2, 4, 5, 5]);
    assert!(is_shape(
        cpu.conv2d_backward(zeros(&[2, 4, 5, 4]), &context)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv2d_backward(zeros(&[2, 4, 25]), &context)
            .map(|_| ())
    ));

    assert!(is_shape(
        cpu.conv1d_forward(&zeros(&[2, 3, 5]), &zeros(&[4, 3, 3]), None)
            .map(|_| ())
    ));
}

#[test]
fn an_empty_batch_gives_empty_outputs_and_zero_weight_gradients() {
    let cpu = Cpu::<f64>::new();
    let w = tensor::<f64>(&[2, 3, 3, 3], &[1.0; 54]);
    let (y, context) = cpu
        .conv2d_forward(
            &cpu.zeros(&[0, 3, 5, 5]).unwrap(),
            &w,
            Some(&cpu.zeros(&[2]).unwrap()),
            Conv2dParams::new(1, 1),
        )
        .unwrap();
    assert_eq!(y.shape(), [0, 2, 5, 5]);
    let grads = cpu.conv2d_backward(y.clone(), &context).unwrap();
    assert_eq!(grads.input.shape(), [0, 3, 5, 5]);
    assert!(grads.weight.iter().all(|&v| v == 0.0) && grads.weight.shape() == [2, 3, 3, 3]);
    assert_eq!(values(&grads.bias.unwrap()), [0.0, 0.0]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_shapes_match_direct_loop_and_finite_differences(
        n in 1usize..=3,
        c_in in prop::sample::select(vec![1usize, 2, 3, 5]),
        c_out in prop::sample::select(vec![1usize, 2, 3]),
        h in prop::sample::select(vec![1usize, 2, 3, 5, 7]),
        w in prop::sample::select(vec![1usize, 2, 3, 5, 7]),
        kh in 1usize..=3,
        kw in 1usize..=3,
        stride in 1usize..=3,
        padding in 0usize..=2,
        bias in any::<bool>(),
        spike_density in prop::option::of(0.0f64..=1.0),
    ) {
        prop_assume!(h + 2 * padding >= kh && w + 2 * padding >= kw);
        let case = Case::new([n, c_in, h, w], [c_out, c_in, kh, kw], Conv2dParams::new(stride, padding), bias);
        let case = match spike_density {
            Some(density) => case.with_spike_input(density),
            None => case,
        };
        let errors = check_case(&case);
        prop_assert!(errors[0] <= 1e-12, "forward error {} for {:?}", errors[0], case);
        prop_assert!(errors[1..].iter().all(|&e| e <= FD_TOLERANCE), "gradient errors {:?} for {:?}", errors, case);
    }

    #[test]
    fn kernels_larger_than_the_padded_input_are_errors(
        h in 1usize..=4,
        padding in 0usize..=2,
        extra in 1usize..=3,
    ) {
        let cpu = Cpu::<f64>::new();
        let x = cpu.zeros(&[1, 2, h, 6]).unwrap();
        let w = cpu.zeros(&[3, 2, h + 2 * padding + extra, 1]).unwrap();
        let is_shape_error = matches!(
            cpu.conv2d_forward(&x, &w, None, Conv2dParams::new(1, padding)),
            Err(OpError::ShapeMismatch { .. })
        );
        prop_assert!(is_shape_error);
    }
}

/// `dx[n, c, s p + i - pad, s q + j - pad] += w[o, c, i, j] dy[n, o, p, q]`, skipping the
/// padding, written as plainly as possible.
fn naive_input_grad(case: &Case, dy: &[f64]) -> Vec<f64> {
    let mut dx = vec![0.0; case.x.len()];
    for_each_tap(case, |y_at, x_at, w_at| dx[x_at] += case.w[w_at] * dy[y_at]);
    dx
}

#[test]
fn spike_outputs_spanning_whole_cache_sets_match_the_direct_loop() {
    // The spike forward stages each tile's sums position-major and writes them out channel-major;
    // output planes of 4 KiB multiples (512 positions in f64, 1024 in f32) would put a position's
    // values into one L1 set if stored directly. 70 output channels make partial last tiles.
    let p = Conv2dParams::new;
    for (x_shape, params) in [([2, 3, 16, 32], p(1, 1)), ([1, 3, 32, 32], p(1, 1))] {
        let case = Case::new(x_shape, [70, 3, 3, 3], params, true).with_spike_input(0.3);
        let expected = naive_conv(&case);
        let b = case.b.as_deref();
        assert!(relative_error(&case.forward::<f64>(&case.x, &case.w, b), &expected) <= 1e-12);
        assert!(relative_error(&case.forward::<f32>(&case.x, &case.w, b), &expected) <= 1e-5);
    }
}

#[test]
fn input_gradients_of_layers_with_many_blocks_match_the_direct_loop() {
    // 72 samples of 16x16 outputs make 9 blocks of 8, whose input gradient is one group of all
    // input channels per block; 8 samples make one block in 3 groups.
    for n in [72, 8] {
        for case in [
            Case::new([n, 3, 16, 16], [4, 3, 3, 3], Conv2dParams::new(1, 1), false),
            Case::new([n, 3, 16, 16], [4, 3, 3, 3], Conv2dParams::new(1, 1), false)
                .with_spike_input(0.2),
        ] {
            let dy = SplitMix64::new(8).normal_vec(case.out_shape().iter().product(), 1.0);
            let cpu = Cpu::<f64>::new();
            let (_, context) = cpu
                .conv2d_forward(
                    &tensor(&case.x_shape, &case.x),
                    &tensor(&case.w_shape, &case.w),
                    None,
                    case.params,
                )
                .unwrap();
            let grads = cpu
                .conv2d_backward(tensor(&case.out_shape(), &dy), &context)
                .unwrap();
            let expected = naive_input_grad(&case, &dy);
            assert!(relative_error(&values(&grads.input), &expected) <= 1e-12);
        }
    }
}
