//! Structural and elementwise tensor ops: values against index formulas written here, backward
//! pairings against central finite differences (f64, relative L2 error <= 1e-6, loss
//! `L = <dy, y>`), proptest over odd shapes, thread-count determinism and bad input.

use proptest::prelude::*;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{Cpu, CpuTensor, OpError};

type T64 = CpuTensor<f64>;

fn cpu() -> Cpu<f64> {
    Cpu::new()
}

fn random(shape: &[usize], seed: u64) -> T64 {
    let len = shape.iter().product();
    cpu()
        .tensor_from_vec(shape, SplitMix64::new(seed).normal_vec(len, 1.0))
        .unwrap()
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// The multi-index of flat row-major position `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = i % shape[a];
        i /= shape[a];
    }
    idx
}

fn flat(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(strides(shape)).map(|(i, s)| i * s).sum()
}

fn values(x: &T64) -> Vec<f64> {
    assert!(x.is_standard_layout(), "output is not row-major");
    cpu().to_vec(x).unwrap()
}

/// Relative L2 error between `dL/dx` from `backward(dy)` and central differences of
/// `L(x) = <dy, forward(x)>`.
fn gradient_error(
    x: &T64,
    forward: impl Fn(&T64) -> T64,
    backward: impl Fn(&T64) -> T64,
    seed: u64,
) -> f64 {
    let c = cpu();
    let y = forward(x);
    let dy = random(y.shape(), seed);
    let dyv = c.to_vec(&dy).unwrap();
    let shape = x.shape().to_vec();
    let numeric = central_difference(
        |v| {
            dot(
                &dyv,
                &c.to_vec(&forward(&c.tensor_from_vec(&shape, v.to_vec()).unwrap()))
                    .unwrap(),
            )
        },
        &c.to_vec(x).unwrap(),
        1e-5,
    );
    let analytic = backward(&dy);
    assert_eq!(analytic.shape(), x.shape());
    relative_error(&c.to_vec(&analytic).unwrap(), &numeric)
}

fn inverse(axes: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; axes.len()];
    for (a, &b) in axes.iter().enumerate() {
        inv[b] = a;
    }
    inv
}

// ------------------------------------------------------------------ values

#[test]
fn reshape_keeps_row_major_order_and_checks_the_size() {
    let c = cpu();
    let x = random(&[3, 4, 5], 1);
    let y = c.reshape(&x, &[5, 12]).unwrap();
    assert_eq!(y.shape(), [5, 12]);
    assert_eq!(values(&y), values(&x));
    // A transposed (column-major) input is read in its logical order.
    let xt = x.clone().reversed_axes();
    let y = c.reshape(&xt, &[60]).unwrap();
    assert_eq!(values(&y), xt.iter().copied().collect::<Vec<_>>());
    assert!(matches!(
        c.reshape(&x, &[7, 9]),
        Err(OpError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        c.reshape(&x, &[usize::MAX, 2]),
        Err(OpError::ShapeMismatch { .. })
    ));
}

/// Flattening time into the batch and splitting it out again are inverse reshapes of
/// `[T, B, ...]` and `[T B, ...]`; a `T` that does not divide the batch, a `T` of 0 and a tensor
/// without two axes are refused with the shape in the message.
#[test]
fn time_flattens_into_the_batch_and_splits_back() {
    use revsnn_reference::contract::{flatten_time, unflatten_time};
    let cpu = cpu();
    let x = random(&[3, 2, 4, 5], 7);
    let flat = flatten_time(&cpu, &x).unwrap();
    assert_eq!(cpu.shape(&flat), vec![6, 4, 5]);
    let back = unflatten_time(&cpu, &flat, 3).unwrap();
    assert_eq!(cpu.shape(&back), vec![3, 2, 4, 5]);
    assert_eq!(values(&back), values(&x));
    for time_steps in [4, 0] {
        let message = unflatten_time(&cpu, &flat, time_steps)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("[6, 4, 5]") && message.contains(&format!("T = {time_steps}")),
            "{message}"
        );
    }
    let message = flatten_time(&cpu, &random(&[6], 1))
        .unwrap_err()
        .to_string();
    assert!(message.contains("[6]"), "{message}");
}

#[test]
fn permute_moves_axes_and_inverts() {
    let c = cpu();
    let shape = [2, 3, 5, 7];
    let x = random(&shape, 2);
    let xv = values(&x);
    for axes in [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [0, 2, 1, 3]] {
        let y = c.permute(&x, &axes).unwrap();
        let y_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
        assert_eq!(y.shape(), y_shape.as_slice());
        let yv = values(&y);
        for (i, &v) in yv.iter().enumerate() {
            let yi = unravel(i, &y_shape);
            let mut xi = vec![0; 4];
            for (a, &b) in axes.iter().enumerate() {
                xi[b] = yi[a];
            }
            assert_eq!(v, xv[flat(&xi, &shape)]);
        }
        assert_eq!(c.permute(&y, &inverse(&axes)).unwrap(), x);
    }
}

#[test]
fn add_sub_scale_are_elementwise() {
    let c = cpu();
    let a = random(&[3, 7], 3);
    let b = random(&[3, 7], 4);
    let (av, bv) = (values(&a), values(&b));
    let sum: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| x + y).collect();
    let diff: Vec<f64> = av.iter().zip(&bv).map(|(x, y)| x - y).collect();
    let scaled: Vec<f64> = av.iter().map(|x| -2.5 * x).collect();
    assert_eq!(values(&c.add(&a, &b).unwrap()), sum);
    assert_eq!(values(&c.sub(&a, &b).unwrap()), diff);
    assert_eq!(values(&c.scale(&a, -2.5).unwrap()), scaled);
    // Mixed layouts: a transposed operand is combined in logical order.
    let bt = c
        .tensor_from_vec(&[7, 3], values(&c.permute(&b, &[1, 0]).unwrap()))
        .unwrap();
    let bt = bt.reversed_axes();
    assert!(!bt.is_standard_layout());
    assert_eq!(values(&c.add(&a, &bt).unwrap()), sum);
    assert_eq!(values(&c.scale(&bt, 1.0).unwrap()), bv);
}

#[test]
fn narrow_concat_repeat_sum_by_hand() {
    let c = cpu();
    let x = c
        .tensor_from_vec(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap();
    assert_eq!(
        values(&c.narrow(&x, 1, 1, 2).unwrap()),
        [2.0, 3.0, 5.0, 6.0]
    );
    assert_eq!(values(&c.narrow(&x, 0, 1, 1).unwrap()), [4.0, 5.0, 6.0]);
    assert_eq!(c.narrow(&x, 1, 3, 0).unwrap().shape(), [2, 0]);
    let z = c.tensor_from_vec(&[2, 1], vec![7.0, 8.0]).unwrap();
    let y = c.concat(&[&z, &x, &z], 1).unwrap();
    assert_eq!(y.shape(), [2, 5]);
    assert_eq!(
        values(&y),
        [7.0, 1.0, 2.0, 3.0, 7.0, 8.0, 4.0, 5.0, 6.0, 8.0]
    );
    let r = c.repeat_leading(&x, 3).unwrap();
    assert_eq!(r.shape(), [3, 2, 3]);
    assert_eq!(values(&r)[12..], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(
        values(&c.sum_leading(&r).unwrap()),
        [3.0, 6.0, 9.0, 12.0, 15.0, 18.0]
    );
    assert_eq!(values(&c.sum_leading(&x).unwrap()), [5.0, 7.0, 9.0]);
}

#[test]
fn sum_leading_adds_time_steps_in_order() {
    // The same four values in two orders: summed in order t = 0..T-1, 1e17 absorbs the ones in
    // the first and not in the second (a reversed or pairwise sum would give other results).
    let c = cpu();
    let x = c
        .tensor_from_vec(&[4, 1], vec![1e17, 1.0, 1.0, -1e17])
        .unwrap();
    assert_eq!(values(&c.sum_leading(&x).unwrap()), [0.0]);
    let x = c
        .tensor_from_vec(&[4, 1], vec![1e17, -1e17, 1.0, 1.0])
        .unwrap();
    assert_eq!(values(&c.sum_leading(&x).unwrap()), [2.0]);
}

/// The mean over `axes` by a plain loop over the input, each output summed in row-major order.
fn naive_mean(x: &T64, axes: &[usize]) -> (Vec<usize>, Vec<f64>) {
    let shape = x.shape();
    let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
    let out_shape: Vec<usize> = kept.iter().map(|&a| shape[a]).collect();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let mut sums = vec![0.0; out_shape.iter().product()];
    for (i, &v) in values(x).iter().enumerate() {
        let idx = unravel(i, shape);
        let out_idx: Vec<usize> = kept.iter().map(|&a| idx[a]).collect();
        sums[flat(&out_idx, &out_shape)] += v;
    }
    (
        out_shape,
        sums.into_iter().map(|s| s / count as f64).collect(),
    )
}

#[test]
fn mean_axes_matches_a_plain_loop_and_its_backward_broadcasts() {
    let c = cpu();
    let x = random(&[3, 5, 7, 2], 5);
    for axes in [vec![2, 3], vec![0], vec![3, 1], vec![0, 1, 2, 3], vec![]] {
        let y = c.mean_axes(&x, &axes).unwrap();
        let (shape, expected) = naive_mean(&x, &axes);
        assert_eq!(y.shape(), shape.as_slice());
        // A plain loop sums in row-major order of the reduced axes too: exact.
        assert_eq!(values(&y), expected, "{axes:?}");
        let dy = random(&shape, 6);
        let dx = c.mean_axes_backward(&dy, x.shape(), &axes).unwrap();
        let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
        let dyv = values(&dy);
        for (i, &g) in values(&dx).iter().enumerate() {
            let idx = unravel(i, x.shape());
            let kept: Vec<usize> = (0..4)
                .filter(|a| !axes.contains(a))
                .map(|a| idx[a])
                .collect();
            assert_eq!(g, dyv[flat(&kept, &shape)] / count as f64);
        }
    }
}

// ------------------------------------------------------------------ finite differences

#[test]
fn backward_pairings_match_finite_differences() {
    let c = cpu();
    let x = random(&[3, 4, 5], 7);
    let mut errors = Vec::new();

    let axes = [2, 0, 1];
    errors.push((
        "permute",
        gradient_error(
            &x,
            |x| c.permute(x, &axes).unwrap(),
            |dy| c.permute(dy, &inverse(&axes)).unwrap(),
            8,
        ),
    ));

    // narrow's backward pads with zeros: a concat.
    errors.push((
        "narrow",
        gradient_error(
            &x,
            |x| c.narrow(x, 1, 1, 2).unwrap(),
            |dy| {
                let before = c.zeros(&[3, 1, 5]).unwrap();
                let after = c.zeros(&[3, 1, 5]).unwrap();
                c.concat(&[&before, dy, &after], 1).unwrap()
            },
            9,
        ),
    ));

    // concat's backward is a narrow of each part; here x is split and re-joined with a copy.
    let other = random(&[3, 2, 5], 10);
    errors.push((
        "concat",
        gradient_error(
            &x,
            |x| c.concat(&[&other, x, &other], 1).unwrap(),
            |dy| c.narrow(dy, 1, 2, 4).unwrap(),
            11,
        ),
    ));

    errors.push((
        "repeat_leading",
        gradient_error(
            &x,
            |x| c.repeat_leading(x, 3).unwrap(),
            |dy| c.sum_leading(dy).unwrap(),
            12,
        ),
    ));
    errors.push((
        "sum_leading",
        gradient_error(
            &x,
            |x| c.sum_leading(x).unwrap(),
            |dy| c.repeat_leading(dy, 3).unwrap(),
            13,
        ),
    ));
    for axes in [vec![0], vec![2, 1], vec![0, 2]] {
        errors.push((
            "mean_axes",
            gradient_error(
                &x,
                |x| c.mean_axes(x, &axes).unwrap(),
                |dy| c.mean_axes_backward(dy, &[3, 4, 5], &axes).unwrap(),
                14,
            ),
        ));
    }
    errors.push((
        "scale",
        gradient_error(
            &x,
            |x| c.scale(x, 0.3).unwrap(),
            |dy| c.scale(dy, 0.3).unwrap(),
            15,
        ),
    ));
    errors.push((
        "reshape",
        gradient_error(
            &x,
            |x| c.reshape(x, &[5, 12]).unwrap(),
            |dy| c.reshape(dy, &[3, 4, 5]).unwrap(),
            16,
        ),
    ));
    for (op, e) in errors {
        assert!(e <= 1e-6, "{op}: relative error {e}");
    }
}

#[test]
fn a_wrong_backward_fails_the_finite_difference_check() {
    // The check above can fail: the non-inverse permutation is not the backward of a 3-cycle.
    let c = cpu();
    let x = random(&[3, 4, 5], 7);
    let e = gradient_error(
        &x,
        |x| c.permute(x, &[2, 0, 1]).unwrap(),
        |dy| c.reshape(dy, &[3, 4, 5]).unwrap(),
        8,
    );
    assert!(e > 0.1, "relative error {e}");
}

// ------------------------------------------------------------------ f32, threads, bad input

#[test]
fn f32_ops_agree_with_f64() {
    let c32 = Cpu::<f32>::new();
    let c64 = cpu();
    let x64 = random(&[4, 6, 9], 20);
    let x32 = c32
        .tensor_from_vec(&[4, 6, 9], values(&x64).iter().map(|&v| v as f32).collect())
        .unwrap();
    let pairs: [(Vec<f32>, Vec<f64>); 5] = [
        (
            c32.to_vec(&c32.mean_axes(&x32, &[0, 2]).unwrap()).unwrap(),
            values(&c64.mean_axes(&x64, &[0, 2]).unwrap()),
        ),
        (
            c32.to_vec(&c32.sum_leading(&x32).unwrap()).unwrap(),
            values(&c64.sum_leading(&x64).unwrap()),
        ),
        (
            c32.to_vec(&c32.permute(&x32, &[2, 0, 1]).unwrap()).unwrap(),
            values(&c64.permute(&x64, &[2, 0, 1]).unwrap()),
        ),
        (
            c32.to_vec(&c32.sub(&x32, &c32.scale(&x32, 0.25).unwrap()).unwrap())
                .unwrap(),
            values(&c64.sub(&x64, &c64.scale(&x64, 0.25).unwrap()).unwrap()),
        ),
        (
            c32.to_vec(
                &c32.mean_axes_backward(&c32.narrow(&x32, 1, 2, 3).unwrap(), &[4, 3, 2, 9], &[2])
                    .unwrap(),
            )
            .unwrap(),
            values(
                &c64.mean_axes_backward(&c64.narrow(&x64, 1, 2, 3).unwrap(), &[4, 3, 2, 9], &[2])
                    .unwrap(),
            ),
        ),
    ];
    for (i, (a, b)) in pairs.iter().enumerate() {
        let e = relative_error(a, b);
        assert!(e <= 1e-6, "case {i}: relative error {e}");
    }
}

/// The fingerprint's definition (reference/src/contract/fingerprint.rs), spelled out here as one
/// sequential loop: FNV-style shape hash, then the wrapping sum of SplitMix64-mixed terms.
fn fingerprint_by_definition(shape: &[usize], bits: impl Iterator<Item = u64>) -> u64 {
    let feed = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let shape_hash = shape
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &d| feed(h, d as u64));
    let mut sum = 0u64;
    for (i, b) in bits.enumerate() {
        let mut z = (b ^ (i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        sum = sum.wrapping_add(z ^ (z >> 31));
    }
    feed(shape_hash, sum)
}

#[test]
fn fingerprints_follow_their_definition_in_any_layout_and_thread_count() {
    for (seed, n) in [1, 7, 16_383, 16_384, 16_385, 100_003]
        .into_iter()
        .enumerate()
    {
        let x = random(&[n], 40 + seed as u64);
        let expected = fingerprint_by_definition(&[n], x.iter().map(|v| v.to_bits()));
        assert_eq!(cpu().fingerprint(&x).unwrap(), expected, "f64, n {n}");
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let expected = fingerprint_by_definition(&[n], x32.iter().map(|v| u64::from(v.to_bits())));
        let x32 = Cpu::<f32>::new().tensor_from_vec(&[n], x32).unwrap();
        assert_eq!(
            Cpu::<f32>::new().fingerprint(&x32).unwrap(),
            expected,
            "f32, n {n}"
        );
    }
    let x = random(&[5, 129, 33], 50);
    let permuted = x.clone().permuted_axes(vec![2, 0, 1]);
    let expected = fingerprint_by_definition(&[33, 5, 129], permuted.iter().map(|v| v.to_bits()));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let got = pool.install(|| cpu().fingerprint(&permuted).unwrap());
        assert_eq!(got, expected, "a permuted view, {threads} threads");
    }
}

#[test]
fn reductions_are_bitwise_identical_with_one_and_two_threads() {
    let x = random(&[3, 100_003], 30);
    let y = random(&[3, 100_003], 31);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let c = cpu();
            [
                c.mean_axes(&x, &[1]).unwrap(),
                c.mean_axes(&x, &[0]).unwrap(),
                c.sum_leading(&x).unwrap(),
                c.add(&x, &y).unwrap(),
                c.scale(&x, 0.7).unwrap(),
            ]
            .map(|t| values(&t).iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        })
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let c = cpu();
    let x = random(&[2, 3, 4], 40);
    let shape_err = |r: Result<T64, OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    let param_err = |r: Result<T64, OpError>| matches!(r, Err(OpError::InvalidParameter { .. }));

    for axes in [
        vec![0, 0, 1],
        vec![0, 1],
        vec![0, 1, 3],
        vec![0, 1, 2, 3],
        vec![],
    ] {
        assert!(shape_err(c.permute(&x, &axes)), "{axes:?}");
    }
    assert!(shape_err(c.add(&x, &random(&[2, 4, 3], 41))));
    assert!(shape_err(c.sub(&x, &random(&[2, 3], 41))));

    assert!(shape_err(c.narrow(&x, 1, 2, 2)));
    assert!(shape_err(c.narrow(&x, 2, 5, 0)));
    assert!(shape_err(c.narrow(&x, 0, usize::MAX, 2)));
    assert!(param_err(c.narrow(&x, 3, 0, 1)));

    assert!(shape_err(c.concat(&[], 0)));
    assert!(shape_err(c.concat(&[&x, &random(&[2, 3, 5], 42)], 1)));
    assert!(shape_err(c.concat(&[&x, &random(&[2, 3], 42)], 1)));
    assert!(param_err(c.concat(&[&x, &x], 3)));
    assert!(c.concat(&[&x, &random(&[2, 5, 4], 42)], 1).is_ok());

    assert!(param_err(c.repeat_leading(&x, 0)));
    let scalar = c.tensor_from_vec(&[], vec![1.0]).unwrap();
    assert!(shape_err(c.sum_leading(&scalar)));

    assert!(param_err(c.mean_axes(&x, &[1, 1])));
    assert!(param_err(c.mean_axes(&x, &[3])));
    assert!(shape_err(c.mean_axes(&random(&[2, 0, 4], 43), &[1])));
    let dy = random(&[2, 4], 44);
    assert!(c.mean_axes_backward(&dy, &[2, 3, 4], &[1]).is_ok());
    assert!(shape_err(c.mean_axes_backward(&dy, &[2, 3, 4], &[2])));
    assert!(param_err(c.mean_axes_backward(&dy, &[2, 3, 4], &[5])));
    assert!(param_err(c.mean_axes_backward(&dy, &[2, 3, 4], &[1, 1])));
}

// ------------------------------------------------------------------ proptest

/// One to four axes of odd, unit and prime sizes.
fn any_shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop::sample::select(vec![1usize, 2, 3, 5, 7, 11]), 1..=4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn narrow_then_concat_restores_the_input(
        shape in any_shape(),
        axis_pick in any::<prop::sample::Index>(),
        cut_pick in any::<prop::sample::Index>(),
        seed in any::<u64>(),
    ) {
        let c = cpu();
        let x = random(&shape, seed);
        let axis = axis_pick.index(shape.len());
        let cut = cut_pick.index(shape[axis] + 1);
        let a = c.narrow(&x, axis, 0, cut).unwrap();
        let b = c.narrow(&x, axis, cut, shape[axis] - cut).unwrap();
        prop_assert_eq!(c.concat(&[&a, &b], axis).unwrap(), x);
    }

    #[test]
    fn permute_round_trips_and_mean_matches_a_plain_loop(
        shape in any_shape(),
        order in any::<u64>(),
        mask in any::<u8>(),
        seed in any::<u64>(),
    ) {
        let c = cpu();
        let x = random(&shape, seed);
        // A permutation from `order` by a Fisher-Yates shuffle.
        let mut rng = SplitMix64::new(order);
        let mut axes: Vec<usize> = (0..shape.len()).collect();
        for i in (1..axes.len()).rev() {
            axes.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let y = c.permute(&x, &axes).unwrap();
        prop_assert!(y.is_standard_layout());
        prop_assert_eq!(c.permute(&y, &inverse(&axes)).unwrap(), x.clone());

        let reduce: Vec<usize> = (0..shape.len()).filter(|a| mask >> a & 1 == 1).collect();
        let (out_shape, expected) = naive_mean(&x, &reduce);
        let m = c.mean_axes(&x, &reduce).unwrap();
        prop_assert_eq!(m.shape(), out_shape.as_slice());
        prop_assert_eq!(values(&m), expected);
    }

    #[test]
    fn repeat_then_sum_is_times_the_input(
        shape in any_shape(),
        times in 1usize..=8,
        seed in any::<u64>(),
    ) {
        let c = cpu();
        // Small integers keep every sum exact.
        let len: usize = shape.iter().product();
        let mut rng = SplitMix64::new(seed);
        let data: Vec<f64> = (0..len).map(|_| (rng.next_u64() % 17) as f64 - 8.0).collect();
        let x = c.tensor_from_vec(&shape, data.clone()).unwrap();
        let r = c.repeat_leading(&x, times).unwrap();
        prop_assert_eq!(r.shape()[0], times);
        let s = c.sum_leading(&r).unwrap();
        let expected: Vec<f64> = data.iter().map(|v| v * times as f64).collect();
        prop_assert_eq!(values(&s), expected);
    }
}

#[test]
fn count_non_finite_counts_nan_and_infinities_over_every_tensor() {
    let backend = cpu();
    let mut a = vec![1.0; 10];
    a[3] = f64::NAN;
    a[9] = f64::NEG_INFINITY;
    let mut b = vec![0.5f64; 7];
    b[0] = f64::INFINITY;
    b[1] = f64::MAX;
    let a = backend.tensor_from_vec(&[2, 5], a).unwrap();
    let b = backend.tensor_from_vec(&[7], b).unwrap();
    let empty = backend.tensor_from_vec(&[0, 3], vec![]).unwrap();
    assert_eq!(backend.count_non_finite(&[&a, &b, &empty]).unwrap(), 3);
    assert_eq!(backend.count_non_finite(&[&b]).unwrap(), 1);
    assert_eq!(backend.count_non_finite(&[]).unwrap(), 0);
    let finite = random(&[4, 4], 3);
    assert_eq!(backend.count_non_finite(&[&finite]).unwrap(), 0);
    let single = Cpu::<f32>::new()
        .tensor_from_vec(&[3], vec![f32::NAN, f32::MIN_POSITIVE, f32::INFINITY])
        .unwrap();
    assert_eq!(Cpu::<f32>::new().count_non_finite(&[&single]).unwrap(), 2);
}
