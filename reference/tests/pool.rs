//! Average and max pooling (docs/conventions.md §1; docs/choices.md §A7): forwards against naive f64 loops over an explicitly
//! padded input and hand-checked border values (divisor 9), backwards against central finite
//! differences (f64, relative error in the 2-norm over the whole tensor <= 1e-6) and naive
//! scatters, shapes by proptest, bitwise determinism across thread counts, and typed errors.

use ndarray::{ArcArray, IxDyn};
use proptest::prelude::*;
use revsnn_reference::ops::pool::{self, MaxPoolContext};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{Cpu, CpuTensor, Element, OpError, Pool2dParams};

const FD_STEP: f64 = 1e-6;
const FD_TOLERANCE: f64 = 1e-6;

fn tensor<E: Element>(shape: &[usize], data: &[f64]) -> CpuTensor<E> {
    ArcArray::from_shape_vec(IxDyn(shape), data.iter().map(|&v| E::cast(v)).collect()).unwrap()
}

fn values<E: Element>(x: &CpuTensor<E>) -> Vec<f64> {
    x.iter().map(|v| v.widen()).collect()
}

fn pool_params(kernel: usize, stride: usize, padding: usize) -> Pool2dParams {
    Pool2dParams {
        kernel,
        stride,
        padding,
    }
}

/// Distinct values at least 0.01 apart in a random order: no ties, and a finite-difference step of
/// 1e-6 never changes an argmax.
fn distinct_values(rng: &mut SplitMix64, len: usize) -> Vec<f64> {
    let mut v: Vec<f64> = (0..len)
        .map(|i| i as f64 * 0.01 - len as f64 * 0.005)
        .collect();
    for i in (1..len).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Naive reference pooling over an explicitly padded copy of every plane, padded with `fill`.
/// Returns the outputs and, for max pooling, the flat input index of each output's first maximum.
struct Naive {
    y: Vec<f64>,
    argmax: Vec<Option<usize>>,
}

fn naive_pool(x: &[f64], shape: &[usize], p: Pool2dParams, max: bool) -> (Naive, [usize; 2]) {
    let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3]);
    let (k, s, pad) = (p.kernel, p.stride, p.padding);
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let (oh, ow) = ((hp - k) / s + 1, (wp - k) / s + 1);
    let fill = if max { f64::NEG_INFINITY } else { 0.0 };
    let mut out = Naive {
        y: Vec::new(),
        argmax: Vec::new(),
    };
    for plane in 0..planes {
        // padded[r][c] = (value, flat input index if real)
        let mut padded = vec![vec![(fill, None); wp]; hp];
        for r in 0..h {
            for c in 0..w {
                let flat = plane * h * w + r * w + c;
                padded[r + pad][c + pad] = (x[flat], Some(flat));
            }
        }
        for i in 0..oh {
            for j in 0..ow {
                let mut acc = fill;
                let mut arg = None;
                for a in 0..k {
                    for b in 0..k {
                        let (v, flat) = padded[i * s + a][j * s + b];
                        if max {
                            if v > acc {
                                acc = v;
                                arg = flat;
                            }
                        } else {
                            acc += v;
                        }
                    }
                }
                out.y.push(if max { acc } else { acc / (k * k) as f64 });
                out.argmax.push(arg);
            }
        }
    }
    (out, [oh, ow])
}

/// Naive max-pool backward: each output's gradient added to its first maximum.
fn naive_max_backward(dy: &[f64], argmax: &[Option<usize>], len: usize) -> Vec<f64> {
    let mut dx = vec![0.0; len];
    for (g, a) in dy.iter().zip(argmax) {
        dx[a.expect("every window holds a real element")] += g;
    }
    dx
}

/// Naive avg-pool backward: each output's gradient divided by k^2 and scattered on its window.
fn naive_avg_backward(dy: &[f64], shape: &[usize], p: Pool2dParams) -> Vec<f64> {
    let (planes, h, w) = (shape[0] * shape[1], shape[2], shape[3]);
    let (oh, ow) = (
        (h + 2 * p.padding - p.kernel) / p.stride + 1,
        (w + 2 * p.padding - p.kernel) / p.stride + 1,
    );
    let mut dx = vec![0.0; planes * h * w];
    for plane in 0..planes {
        for i in 0..oh {
            for j in 0..ow {
                let g = dy[(plane * oh + i) * ow + j] / (p.kernel * p.kernel) as f64;
                for a in 0..p.kernel {
                    for b in 0..p.kernel {
                        let (r, c) = (i * p.stride + a, j * p.stride + b);
                        if r >= p.padding
                            && r < h + p.padding
                            && c >= p.padding
                            && c < w + p.padding
                        {
                            dx[plane * h * w + (r - p.padding) * w + c - p.padding] += g;
                        }
                    }
                }
            }
        }
    }
    dx
}

/// Forward, naive forward, and the backward by the op, by finite differences and naively, for
/// one pooling; returns an error message on the first disagreement.
fn check_pool(shape: &[usize], p: Pool2dParams, max: bool, seed: u64) -> Result<(), String> {
    let mut rng = SplitMix64::new(seed);
    let numel: usize = shape.iter().product();
    let x = distinct_values(&mut rng, numel);
    let (naive, [oh, ow]) = naive_pool(&x, shape, p, max);
    let out_shape = [shape[0], shape[1], oh, ow];
    let dy = rng.normal_vec(naive.y.len(), 1.0);
    let forward = |x: &[f64]| -> CpuTensor<f64> {
        if max {
            pool::max_forward(&tensor(shape, x), p).unwrap().0
        } else {
            pool::avg_forward(&tensor(shape, x), p).unwrap()
        }
    };
    let y = forward(&x);
    if y.shape() != out_shape {
        return Err(format!("output shape {:?}, want {out_shape:?}", y.shape()));
    }
    let err = relative_error(&values(&y), &naive.y);
    if err > 1e-15 {
        return Err(format!("forward relative error {err:e}"));
    }
    let dy_t = tensor::<f64>(&out_shape, &dy);
    let (dx, naive_dx) = if max {
        let (_, context) = pool::max_forward(&tensor::<f64>(shape, &x), p).unwrap();
        let dx = pool::max_backward(&dy_t, &context).unwrap();
        (dx, naive_max_backward(&dy, &naive.argmax, numel))
    } else {
        let dx = pool::avg_backward(&dy_t, shape, p).unwrap();
        (dx, naive_avg_backward(&dy, shape, p))
    };
    if dx.shape() != shape {
        return Err(format!("dx shape {:?}, want {shape:?}", dx.shape()));
    }
    let err = relative_error(&values(&dx), &naive_dx);
    if err > 1e-14 {
        return Err(format!("backward vs naive relative error {err:e}"));
    }
    let fd = central_difference(|x| dot(&dy, &values(&forward(x))), &x, FD_STEP);
    let err = relative_error(&values(&dx), &fd);
    if err > FD_TOLERANCE {
        return Err(format!(
            "backward vs finite differences relative error {err:e}"
        ));
    }
    Ok(())
}

const SHAPES: [[usize; 4]; 5] = [
    [2, 3, 8, 8],
    [1, 2, 7, 5],
    [3, 1, 1, 1],
    [1, 1, 2, 13],
    [2, 2, 11, 3],
];

#[test]
fn avg_pool_hand_checked_borders_divide_by_nine() {
    // x = 1..=16 on 4x4; AvgPool2d(3, 2, 1) gives 2x2, every window divided by 9 although the
    // first row and column of windows hang over the zero padding.
    let x: Vec<f64> = (1..=16).map(f64::from).collect();
    let y = pool::avg_forward(&tensor::<f64>(&[1, 1, 4, 4], &x), Pool2dParams::K3_S2_P1).unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    let expected = [14.0 / 9.0, 30.0 / 9.0, 57.0 / 9.0, 11.0];
    assert!(relative_error(&values(&y), &expected) < 1e-15);

    // Ones on 3x3: the centre window sees 4 real ones (corner-offset by the padding) -> 4/9.
    let y = pool::avg_forward(
        &tensor::<f64>(&[1, 1, 3, 3], &[1.0; 9]),
        Pool2dParams::K3_S2_P1,
    )
    .unwrap();
    assert_eq!(y.shape(), &[1, 1, 2, 2]);
    let want = [4.0 / 9.0, 4.0 / 9.0, 4.0 / 9.0, 4.0 / 9.0];
    assert!(relative_error(&values(&y), &want) < 1e-15);

    // Backward of that pooling with dy = 1: the centre is in all 4 windows, edges in 2, corners 1.
    let dx = pool::avg_backward(
        &tensor::<f64>(&[1, 1, 2, 2], &[1.0; 4]),
        &[1, 1, 3, 3],
        Pool2dParams::K3_S2_P1,
    )
    .unwrap();
    let n = 1.0 / 9.0;
    let want = [n, 2.0 * n, n, 2.0 * n, 4.0 * n, 2.0 * n, n, 2.0 * n, n];
    assert!(relative_error(&values(&dx), &want) < 1e-15);
}

#[test]
fn output_size_is_ceil_half_for_the_revsnn_window() {
    for size in 1..=20usize {
        let y = pool::avg_forward(
            &tensor::<f64>(&[1, 1, size, size + 1], &vec![0.0; size * (size + 1)]),
            Pool2dParams::K3_S2_P1,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, size.div_ceil(2), (size + 1).div_ceil(2)]);
    }
}

#[test]
fn max_pool_hand_checked_values_and_ties() {
    // Padding is -inf, so negative inputs at the border still win their windows.
    let x = [-1.0, -2.0, -3.0, -4.0];
    let (y, _) =
        pool::max_forward(&tensor::<f64>(&[1, 1, 2, 2], &x), Pool2dParams::K3_S2_P1).unwrap();
    assert_eq!(values(&y), [-1.0]);

    // A constant plane: every window's first in-bounds element wins, and overlapping windows
    // that share it add their gradients there.
    let (y, context) = pool::max_forward(
        &tensor::<f64>(&[1, 1, 4, 4], &[2.0; 16]),
        Pool2dParams::K3_S2_P1,
    )
    .unwrap();
    assert_eq!(values(&y), [2.0; 4]);
    // Windows start at rows/cols {0 (clipped from -1), 1}.
    assert_eq!(context.argmax, [0, 1, 4, 5]);
    let dx = pool::max_backward(
        &tensor::<f64>(&[1, 1, 2, 2], &[1.0, 2.0, 3.0, 4.0]),
        &context,
    )
    .unwrap();
    let mut want = [0.0; 16];
    want[0] = 1.0;
    want[1] = 2.0;
    want[4] = 3.0;
    want[5] = 4.0;
    assert_eq!(values(&dx), want);

    // Stride 1 over a constant plane: several windows share each first element.
    let (_, context) = pool::max_forward(
        &tensor::<f64>(&[1, 1, 3, 3], &[0.0; 9]),
        pool_params(3, 1, 1),
    )
    .unwrap();
    let dx = pool::max_backward(&tensor::<f64>(&[1, 1, 3, 3], &[1.0; 9]), &context).unwrap();
    // Window starts clip to {0, 0, 1} per axis: (0,0) gets 4, (0,1) and (1,0) get 2, (1,1) 1.
    assert_eq!(values(&dx), [4.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn max_pool_propagates_nan_like_pytorch() {
    let x = [1.0, f64::NAN, 3.0, 4.0];
    let (y, context) =
        pool::max_forward(&tensor::<f64>(&[1, 1, 2, 2], &x), pool_params(2, 2, 0)).unwrap();
    assert!(y[[0, 0, 0, 0]].is_nan());
    assert_eq!(context.argmax, [1]);
}

#[test]
fn forwards_and_backwards_match_naive_loops_and_finite_differences() {
    let windows = [
        Pool2dParams::K3_S2_P1,
        pool_params(2, 2, 0),
        pool_params(3, 1, 1),
        pool_params(2, 1, 1),
        pool_params(1, 3, 0),
        pool_params(4, 3, 2),
    ];
    for (i, shape) in SHAPES.iter().enumerate() {
        for (j, &p) in windows.iter().enumerate() {
            if shape[2] + 2 * p.padding < p.kernel || shape[3] + 2 * p.padding < p.kernel {
                continue;
            }
            for max in [false, true] {
                let seed = (i * 100 + j * 2) as u64 + u64::from(max);
                if let Err(msg) = check_pool(shape, p, max, seed) {
                    panic!("{shape:?} {p:?} max {max}: {msg}");
                }
            }
        }
    }
}

#[test]
fn a_strided_input_gives_the_same_result_as_its_row_major_copy() {
    let mut rng = SplitMix64::new(5);
    let data = distinct_values(&mut rng, 2 * 3 * 7 * 6);
    // A [2, 3, 7, 6] view of a [6, 7, 3, 2] array.
    let strided = tensor::<f64>(&[6, 7, 3, 2], &data).permuted_axes(vec![3, 2, 1, 0]);
    assert!(!strided.is_standard_layout());
    let plain = strided.as_standard_layout().into_owned().into_shared();
    let p = Pool2dParams::K3_S2_P1;
    assert_eq!(
        values(&pool::avg_forward(&strided, p).unwrap()),
        values(&pool::avg_forward(&plain, p).unwrap())
    );
    let (y_s, ctx_s) = pool::max_forward(&strided, p).unwrap();
    let (y_p, ctx_p) = pool::max_forward(&plain, p).unwrap();
    assert_eq!(values(&y_s), values(&y_p));
    assert_eq!(ctx_s.argmax, ctx_p.argmax);
    // A strided gradient too.
    let dy = tensor::<f64>(&[3, 4, 3, 2], &rng.normal_vec(72, 1.0)).permuted_axes(vec![3, 2, 1, 0]);
    let dy_plain = dy.as_standard_layout().into_owned().into_shared();
    assert_eq!(
        values(&pool::max_backward(&dy, &ctx_s).unwrap()),
        values(&pool::max_backward(&dy_plain, &ctx_s).unwrap())
    );
    assert_eq!(
        values(&pool::avg_backward(&dy, &[2, 3, 7, 6], p).unwrap()),
        values(&pool::avg_backward(&dy_plain, &[2, 3, 7, 6], p).unwrap())
    );
}

#[test]
fn the_backend_delegates_to_the_kernels() {
    let cpu = Cpu::<f32>::new();
    let x = cpu
        .tensor_from_vec(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect())
        .unwrap();
    let p = Pool2dParams::K3_S2_P1;
    let avg = cpu.avg_pool2d_forward(&x, p).unwrap();
    assert!((cpu.to_vec(&avg).unwrap()[3] - 24.0 / 9.0).abs() < 1e-6);
    let (mx, ctx) = cpu.max_pool2d_forward(&x, p).unwrap();
    assert_eq!(cpu.to_vec(&mx).unwrap(), [4.0, 5.0, 7.0, 8.0]);
    let dx = cpu.max_pool2d_backward(&avg, &ctx).unwrap();
    assert_eq!(cpu.shape(&dx), [1, 1, 3, 3]);
    let dx = cpu.avg_pool2d_backward(&avg, &[1, 1, 3, 3], p).unwrap();
    assert_eq!(cpu.shape(&dx), [1, 1, 3, 3]);
}

/// Every output and gradient of both poolings, widened to f64.
fn run_all<E: Element>(x: &[f64], dy: &[f64], shape: &[usize], p: Pool2dParams) -> Vec<Vec<f64>> {
    let x = tensor::<E>(shape, x);
    let avg = pool::avg_forward(&x, p).unwrap();
    let dy = tensor::<E>(avg.shape(), &dy[..avg.len()]);
    let (mx, context) = pool::max_forward(&x, p).unwrap();
    vec![
        values(&avg),
        values(&pool::avg_backward(&dy, shape, p).unwrap()),
        values(&mx),
        context.argmax.iter().map(|&a| f64::from(a)).collect(),
        values(&pool::max_backward(&dy, &context).unwrap()),
    ]
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
    let shape = [4, 8, 33, 31];
    let mut rng = SplitMix64::new(9);
    let numel: usize = shape.iter().product();
    // Values rounded to a coarse grid so that many windows tie.
    let x: Vec<f64> = (0..numel).map(|_| (rng.normal() * 4.0).round()).collect();
    let dy = rng.normal_vec(numel, 1.0);
    for p in [Pool2dParams::K3_S2_P1, pool_params(3, 1, 1)] {
        let a = one.install(|| run_all::<f64>(&x, &dy, &shape, p));
        let b = two.install(|| run_all::<f64>(&x, &dy, &shape, p));
        assert_eq!(bits(&a), bits(&b), "f64 {p:?}");
        let a = one.install(|| run_all::<f32>(&x, &dy, &shape, p));
        let b = two.install(|| run_all::<f32>(&x, &dy, &shape, p));
        assert_eq!(bits(&a), bits(&b), "f32 {p:?}");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let x = tensor::<f64>(&[1, 2, 5, 5], &[0.0; 50]);
    let is_shape = |r: Result<(), OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    let is_param = |r: Result<(), OpError>| matches!(r, Err(OpError::InvalidParameter { .. }));
    let avg = |x: &CpuTensor<f64>, p| pool::avg_forward(x, p).map(|_| ());
    let max = |x: &CpuTensor<f64>, p| pool::max_forward(x, p).map(|_| ());

    for p in [
        pool_params(3, 0, 1),
        pool_params(0, 1, 0),
        pool_params(3, 2, 2),
        pool_params(2, 1, 2),
    ] {
        assert!(is_param(avg(&x, p)), "{p:?}");
        assert!(is_param(max(&x, p)), "{p:?}");
        assert!(is_param(
            pool::avg_backward(&x, &[1, 2, 5, 5], p).map(|_| ())
        ));
    }
    let p = Pool2dParams::K3_S2_P1;
    for bad in [
        tensor::<f64>(&[2, 5, 5], &[0.0; 50]),
        tensor(&[1, 1, 2, 5, 5], &[0.0; 50]),
        tensor(&[1, 1, 0, 5], &[]),
        tensor(&[1, 1, 6, 0], &[]),
    ] {
        assert!(is_shape(avg(&bad, p)), "{:?}", bad.shape());
        assert!(is_shape(max(&bad, p)), "{:?}", bad.shape());
    }
    // Smaller than the kernel even with the padding.
    let tiny = tensor::<f64>(&[1, 1, 1, 4], &[0.0; 4]);
    assert!(is_shape(avg(&tiny, pool_params(4, 1, 1))));
    assert!(is_shape(max(&tiny, pool_params(4, 1, 1))));

    // Gradients of the wrong shape, and input shapes the backward cannot use.
    let wrong = tensor::<f64>(&[1, 2, 3, 2], &[0.0; 12]);
    assert!(is_shape(
        pool::avg_backward(&wrong, &[1, 2, 5, 5], p).map(|_| ())
    ));
    assert!(is_shape(
        pool::avg_backward(&wrong, &[2, 5, 5], p).map(|_| ())
    ));
    let (_, context) = pool::max_forward(&x, p).unwrap();
    assert!(is_shape(pool::max_backward(&wrong, &context).map(|_| ())));
    let forged = MaxPoolContext {
        input_shape: vec![1, 1, 2, 2],
        output_shape: vec![1, 1, 1, 1],
        argmax: vec![4],
    };
    let dy = tensor::<f64>(&[1, 1, 1, 1], &[1.0]);
    assert!(is_shape(pool::max_backward(&dy, &forged).map(|_| ())));
}

fn case_strategy() -> impl Strategy<Value = ([usize; 4], Pool2dParams)> {
    let size = prop::sample::select(vec![1usize, 2, 3, 5, 7, 11]);
    let small = prop::sample::select(vec![1usize, 2, 3]);
    (
        small.clone(),
        small,
        size.clone(),
        size,
        1usize..=4,
        1usize..=3,
    )
        .prop_flat_map(|(n, c, h, w, kernel, stride)| {
            (0..=kernel / 2)
                .prop_map(move |padding| ([n, c, h, w], pool_params(kernel, stride, padding)))
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_shape_and_window_matches_naive_and_finite_differences(
        (shape, p) in case_strategy(),
        seed in any::<u64>(),
    ) {
        let fits = shape[2] + 2 * p.padding >= p.kernel && shape[3] + 2 * p.padding >= p.kernel;
        let x = tensor::<f64>(&shape, &vec![0.5; shape.iter().product()]);
        if fits {
            for max in [false, true] {
                let outcome = check_pool(&shape, p, max, seed);
                prop_assert!(outcome.is_ok(), "max {}: {:?}", max, outcome);
            }
        } else {
            let refused = matches!(pool::avg_forward(&x, p), Err(OpError::ShapeMismatch { .. }))
                && matches!(pool::max_forward(&x, p), Err(OpError::ShapeMismatch { .. }));
            prop_assert!(refused, "a window larger than the padded input must be refused");
        }
    }
}
