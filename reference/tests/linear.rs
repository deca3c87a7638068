//! linear and batched_matmul: forwards against direct sums in f64, every gradient against central
//! finite differences (L = <dy, y>, relative L2 error <= 1e-6 in f64), random shapes by proptest,
//! bitwise determinism across thread counts, f32 against f64, and errors instead of panics.

use ndarray::{ArcArray, IxDyn};
use proptest::prelude::*;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{Cpu, CpuTensor, Element, OpError};

const FD_STEP: f64 = 1e-3;
const FD_TOLERANCE: f64 = 1e-6;

fn tensor<E: Element>(shape: &[usize], data: &[f64]) -> CpuTensor<E> {
    let data = data.iter().map(|&v| E::cast(v)).collect();
    ArcArray::from_shape_vec(IxDyn(shape), data).unwrap()
}

fn values<E: Element>(t: &CpuTensor<E>) -> Vec<f64> {
    assert!(t.is_standard_layout());
    t.iter().map(|v| v.widen()).collect()
}

fn linear<E: Element>(
    shapes: (usize, usize, usize),
    x: &[f64],
    w: &[f64],
    b: Option<&[f64]>,
) -> Vec<f64> {
    let (n, i, o) = shapes;
    let bias = b.map(|b| tensor::<E>(&[o], b));
    let y = Cpu::<E>::new()
        .linear_forward(&tensor(&[n, i], x), &tensor(&[o, i], w), bias.as_ref())
        .unwrap();
    assert_eq!(y.shape(), [n, o]);
    values(&y)
}

/// Errors of the forward against a direct sum and of the three gradients against finite
/// differences, for `x [n, i]`, `w [o, i]`.
fn check_linear(n: usize, i: usize, o: usize, with_bias: bool, seed: u64) -> [f64; 4] {
    let mut rng = SplitMix64::new(seed);
    let x = rng.normal_vec(n * i, 1.0);
    let w = rng.normal_vec(o * i, 0.5);
    let b = with_bias.then(|| rng.normal_vec(o, 1.0));
    let dy = rng.normal_vec(n * o, 1.0);
    let y = linear::<f64>((n, i, o), &x, &w, b.as_deref());
    let direct: Vec<f64> = (0..n * o)
        .map(|k| {
            let (r, c) = (k / o, k % o);
            b.as_ref().map_or(0.0, |b| b[c])
                + (0..i).map(|j| x[r * i + j] * w[c * i + j]).sum::<f64>()
        })
        .collect();

    let grads = Cpu::<f64>::new()
        .linear_backward(
            &tensor(&[n, o], &dy),
            &tensor(&[n, i], &x),
            &tensor(&[o, i], &w),
            with_bias,
        )
        .unwrap();
    assert_eq!(grads.input.shape(), [n, i]);
    assert_eq!(grads.weight.shape(), [o, i]);
    let bd = b.as_deref();
    let dx = central_difference(
        |x| dot(&dy, &linear::<f64>((n, i, o), x, &w, bd)),
        &x,
        FD_STEP,
    );
    let dw = central_difference(
        |w| dot(&dy, &linear::<f64>((n, i, o), &x, w, bd)),
        &w,
        FD_STEP,
    );
    let bias_error = match (&b, &grads.bias) {
        (Some(b), Some(db)) => {
            let fd = central_difference(
                |b| dot(&dy, &linear::<f64>((n, i, o), &x, &w, Some(b))),
                b,
                FD_STEP,
            );
            relative_error(&values(db), &fd)
        }
        (None, None) => 0.0,
        _ => panic!("a bias gradient must be present iff has_bias"),
    };
    [
        relative_error(&y, &direct),
        relative_error(&values(&grads.input), &dx),
        relative_error(&values(&grads.weight), &dw),
        bias_error,
    ]
}

fn assert_errors(errors: [f64; 4], what: &str) {
    assert!(errors[0] <= 1e-12, "{what}: forward error {}", errors[0]);
    assert!(
        errors[1..].iter().all(|&e| e <= FD_TOLERANCE),
        "{what}: gradient errors {errors:?}"
    );
}

#[test]
fn linear_matches_direct_sum_and_finite_differences() {
    for (n, i, o, bias) in [
        (4, 5, 3, true),
        (4, 5, 3, false),
        (1, 1, 1, true),
        (7, 2, 11, true),
        (3, 13, 1, false),
    ] {
        assert_errors(
            check_linear(n, i, o, bias, (n * 100 + i * 10 + o) as u64),
            &format!("linear {n}x{i} -> {o}"),
        );
    }
}

/// `[batch..., rows, cols]` operands of a batched product: `op(a) [m, k]`, `op(b) [k, n]`.
fn operand_shape(batch: &[usize], rows: usize, cols: usize, transpose: bool) -> Vec<usize> {
    let mut shape = batch.to_vec();
    if transpose {
        shape.extend([cols, rows]);
    } else {
        shape.extend([rows, cols]);
    }
    shape
}

/// `op(t[batch])[r, c]` of a row-major `[batch, rows, cols]` buffer.
fn entry(
    t: &[f64],
    batch: usize,
    r: usize,
    c: usize,
    (rows, cols): (usize, usize),
    transpose: bool,
) -> f64 {
    let (stored_rows, stored_cols) = if transpose {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let (sr, sc) = if transpose { (c, r) } else { (r, c) };
    t[(batch * stored_rows + sr) * stored_cols + sc]
}

struct Matmul {
    batch: Vec<usize>,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
}

impl Matmul {
    fn a_shape(&self) -> Vec<usize> {
        operand_shape(&self.batch, self.m, self.k, self.ta)
    }

    fn b_shape(&self) -> Vec<usize> {
        operand_shape(&self.batch, self.k, self.n, self.tb)
    }

    fn c_shape(&self) -> Vec<usize> {
        operand_shape(&self.batch, self.m, self.n, false)
    }

    fn run<E: Element>(&self, a: &[f64], b: &[f64]) -> Vec<f64> {
        let c = Cpu::<E>::new()
            .batched_matmul(
                &tensor(&self.a_shape(), a),
                &tensor(&self.b_shape(), b),
                self.ta,
                self.tb,
            )
            .unwrap();
        assert_eq!(c.shape(), self.c_shape());
        values(&c)
    }

    /// Forward error against a direct sum, and the errors of the gradients given by the contract's
    /// two further products (`da = dc op(b)^T`, `db = op(a)^T dc`, transposed back when the
    /// operand was) against finite differences.
    fn check(&self, seed: u64) -> [f64; 3] {
        let mut rng = SplitMix64::new(seed);
        let a = rng.normal_vec(self.a_shape().iter().product(), 1.0);
        let b = rng.normal_vec(self.b_shape().iter().product(), 1.0);
        let dc = rng.normal_vec(self.c_shape().iter().product(), 1.0);
        let batches: usize = self.batch.iter().product();
        let (m, k, n) = (self.m, self.k, self.n);
        let mut direct = vec![0.0; batches * m * n];
        for bi in 0..batches {
            for r in 0..m {
                for c in 0..n {
                    direct[(bi * m + r) * n + c] = (0..k)
                        .map(|j| {
                            entry(&a, bi, r, j, (m, k), self.ta)
                                * entry(&b, bi, j, c, (k, n), self.tb)
                        })
                        .sum();
                }
            }
        }
        let cpu = Cpu::<f64>::new();
        let (at, bt, dct) = (
            tensor(&self.a_shape(), &a),
            tensor(&self.b_shape(), &b),
            tensor(&self.c_shape(), &dc),
        );
        // d op(a) = dc op(b)^T; da = that, or its transpose when a was transposed.
        let da = if self.ta {
            cpu.batched_matmul(&bt, &dct, self.tb, true).unwrap()
        } else {
            cpu.batched_matmul(&dct, &bt, false, !self.tb).unwrap()
        };
        // d op(b) = op(a)^T dc; db = that, or its transpose when b was transposed.
        let db = if self.tb {
            cpu.batched_matmul(&dct, &at, true, self.ta).unwrap()
        } else {
            cpu.batched_matmul(&at, &dct, !self.ta, false).unwrap()
        };
        assert_eq!(da.shape(), self.a_shape().as_slice());
        assert_eq!(db.shape(), self.b_shape().as_slice());
        let fd_a = central_difference(|a| dot(&dc, &self.run::<f64>(a, &b)), &a, FD_STEP);
        let fd_b = central_difference(|b| dot(&dc, &self.run::<f64>(&a, b)), &b, FD_STEP);
        [
            relative_error(&self.run::<f64>(&a, &b), &direct),
            relative_error(&values(&da), &fd_a),
            relative_error(&values(&db), &fd_b),
        ]
    }
}

#[test]
fn batched_matmul_matches_direct_sum_and_its_backward_matches_finite_differences() {
    for batch in [vec![], vec![3], vec![2, 3], vec![2, 1, 2]] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let problem = Matmul {
                batch: batch.clone(),
                m: 4,
                k: 5,
                n: 3,
                ta,
                tb,
            };
            let errors = problem.check(batch.len() as u64 * 4 + ta as u64 * 2 + tb as u64);
            assert!(
                errors[0] <= 1e-12,
                "forward error {errors:?} for batch {batch:?}, {ta} {tb}"
            );
            assert!(
                errors[1..].iter().all(|&e| e <= FD_TOLERANCE),
                "gradient errors {errors:?} for batch {batch:?}, {ta} {tb}"
            );
        }
    }
}

#[test]
fn batched_matmul_with_an_empty_inner_axis_is_zero_and_empty_batches_are_empty() {
    let cpu = Cpu::<f64>::new();
    let c = cpu
        .batched_matmul(
            &cpu.zeros(&[2, 3, 0]).unwrap(),
            &cpu.zeros(&[2, 0, 4]).unwrap(),
            false,
            false,
        )
        .unwrap();
    assert_eq!(c.shape(), [2, 3, 4]);
    assert!(c.iter().all(|&v| v == 0.0));
    let c = cpu
        .batched_matmul(
            &cpu.zeros(&[0, 3, 2]).unwrap(),
            &cpu.zeros(&[0, 2, 4]).unwrap(),
            false,
            false,
        )
        .unwrap();
    assert_eq!(c.shape(), [0, 3, 4]);
}

#[test]
fn non_standard_layout_operands_give_the_same_result() {
    let mut rng = SplitMix64::new(8);
    let a = rng.normal_vec(2 * 3 * 4, 1.0);
    let b = rng.normal_vec(2 * 4 * 5, 1.0);
    let cpu = Cpu::<f64>::new();
    let (at, bt) = (tensor::<f64>(&[2, 3, 4], &a), tensor::<f64>(&[2, 4, 5], &b));
    let expected = cpu.batched_matmul(&at, &bt, false, false).unwrap();
    // b stored as [2, 5, 4] and viewed as [2, 4, 5].
    let stored = bt
        .view()
        .permuted_axes(IxDyn(&[0, 2, 1]))
        .as_standard_layout()
        .into_owned()
        .into_shared();
    let swapped = stored.permuted_axes(IxDyn(&[0, 2, 1]));
    assert!(!swapped.is_standard_layout());
    assert_eq!(
        values(&cpu.batched_matmul(&at, &swapped, false, false).unwrap()),
        values(&expected)
    );

    let x = tensor::<f64>(&[4, 3], &a[..12]);
    let w = tensor::<f64>(&[5, 3], &b[..15]);
    let xt = x
        .view()
        .reversed_axes()
        .as_standard_layout()
        .into_owned()
        .into_shared()
        .reversed_axes();
    assert!(!xt.is_standard_layout());
    assert_eq!(
        values(&cpu.linear_forward(&xt, &w, None).unwrap()),
        values(&cpu.linear_forward(&x, &w, None).unwrap())
    );
}

#[test]
fn f32_agrees_with_f64() {
    let mut rng = SplitMix64::new(12);
    let (n, i, o) = (9, 33, 17);
    let x = rng.normal_vec(n * i, 1.0);
    let w = rng.normal_vec(o * i, 0.5);
    let b = rng.normal_vec(o, 1.0);
    let error = relative_error(
        &linear::<f32>((n, i, o), &x, &w, Some(&b)),
        &linear::<f64>((n, i, o), &x, &w, Some(&b)),
    );
    assert!(error <= 1e-5, "linear f32 differs from f64 by {error}");
    let problem = Matmul {
        batch: vec![3, 2],
        m: 9,
        k: 31,
        n: 7,
        ta: true,
        tb: true,
    };
    let a = rng.normal_vec(problem.a_shape().iter().product(), 1.0);
    let bb = rng.normal_vec(problem.b_shape().iter().product(), 1.0);
    let error = relative_error(&problem.run::<f32>(&a, &bb), &problem.run::<f64>(&a, &bb));
    assert!(
        error <= 1e-5,
        "batched_matmul f32 differs from f64 by {error}"
    );
}

#[test]
fn results_are_bitwise_identical_with_one_and_two_threads() {
    let mut rng = SplitMix64::new(21);
    let (n, i, o) = (256, 300, 100);
    let x = tensor::<f32>(&[n, i], &rng.normal_vec(n * i, 1.0));
    let w = tensor::<f32>(&[o, i], &rng.normal_vec(o * i, 1.0));
    let b = tensor::<f32>(&[o], &rng.normal_vec(o, 1.0));
    let dy = tensor::<f32>(&[n, o], &rng.normal_vec(n * o, 1.0));
    let q = tensor::<f32>(&[4, 8, 64, 32], &rng.normal_vec(4 * 8 * 64 * 32, 1.0));
    let k = tensor::<f32>(&[4, 8, 64, 32], &rng.normal_vec(4 * 8 * 64 * 32, 1.0));
    let run = |threads: usize| -> Vec<Vec<u32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let cpu = Cpu::<f32>::new();
            let y = cpu.linear_forward(&x, &w, Some(&b)).unwrap();
            let grads = cpu.linear_backward(&dy, &x, &w, true).unwrap();
            let attn = cpu.batched_matmul(&q, &k, false, true).unwrap();
            let out = cpu.batched_matmul(&attn, &k, false, false).unwrap();
            [y, grads.input, grads.weight, grads.bias.unwrap(), attn, out]
                .iter()
                .map(|t| t.iter().map(|v| v.to_bits()).collect())
                .collect()
        })
    };
    let one = run(1);
    assert!(
        one == run(2) && one == run(3),
        "results depend on the thread count"
    );
}

#[test]
fn bad_inputs_are_errors() {
    let cpu = Cpu::<f64>::new();
    let zeros = |shape: &[usize]| cpu.zeros(shape).unwrap();
    let is_shape = |r: Result<(), OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    let (x, w) = (zeros(&[4, 3]), zeros(&[5, 3]));
    assert!(is_shape(
        cpu.linear_forward(&x, &zeros(&[5, 2]), None).map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_forward(&zeros(&[4, 3, 1]), &w, None).map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_forward(&zeros(&[3]), &w, None).map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_forward(&x, &zeros(&[15]), None).map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_forward(&x, &w, Some(&zeros(&[4]))).map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_forward(&x, &w, Some(&zeros(&[5, 1])))
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_backward(&zeros(&[4, 4]), &x, &w, true)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_backward(&zeros(&[5, 4]), &x, &w, false)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.linear_backward(&zeros(&[4, 5]), &x, &zeros(&[5, 4]), false)
            .map(|_| ())
    ));

    let mm = |a: &[usize], b: &[usize], ta: bool, tb: bool| {
        is_shape(cpu.batched_matmul(&zeros(a), &zeros(b), ta, tb).map(|_| ()))
    };
    assert!(mm(&[2, 3, 4], &[2, 5, 6], false, false));
    assert!(mm(&[2, 3, 4], &[2, 4, 6], true, false));
    assert!(mm(&[2, 3, 4], &[2, 4, 6], false, true));
    assert!(mm(&[2, 3, 4], &[3, 4, 6], false, false));
    assert!(mm(&[2, 3, 4], &[4, 6], false, false));
    assert!(mm(&[2, 2, 3, 4], &[2, 1, 4, 6], false, false));
    assert!(mm(&[4], &[4], false, false));
    assert!(!mm(&[2, 3, 4], &[2, 4, 6], false, false));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_linear_shapes(
        n in prop::sample::select(vec![1usize, 2, 3, 7]),
        i in prop::sample::select(vec![1usize, 2, 5, 13]),
        o in prop::sample::select(vec![1usize, 3, 11]),
        bias in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let errors = check_linear(n, i, o, bias, seed);
        prop_assert!(errors[0] <= 1e-12 && errors[1..].iter().all(|&e| e <= FD_TOLERANCE), "errors {:?}", errors);
    }

    #[test]
    fn random_batched_matmul_shapes(
        batch in prop::collection::vec(prop::sample::select(vec![1usize, 2, 3]), 0..=3),
        m in prop::sample::select(vec![1usize, 2, 3, 5]),
        k in prop::sample::select(vec![1usize, 2, 7]),
        n in prop::sample::select(vec![1usize, 3, 5]),
        ta in any::<bool>(),
        tb in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let errors = Matmul { batch, m, k, n, ta, tb }.check(seed);
        prop_assert!(errors[0] <= 1e-12 && errors[1..].iter().all(|&e| e <= FD_TOLERANCE), "errors {:?}", errors);
    }
}
