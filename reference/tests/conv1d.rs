//! conv1d through `ConvOps`'s default methods (a 1x1 conv2d on `[N, C, L, 1]`,
//! docs/architectures.md §4.0): forward against a direct sum and every gradient against central
//! finite differences of `L = <dy, y>` in f64 (relative L2 error <= 1e-6). These go through
//! `TensorOps::reshape`.

use ndarray::{ArcArray, IxDyn};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, dot, relative_error};
use revsnn_reference::{Cpu, CpuTensor, OpError};

const FD_STEP: f64 = 1e-3;
const FD_TOLERANCE: f64 = 1e-6;

fn tensor(shape: &[usize], data: &[f64]) -> CpuTensor<f64> {
    ArcArray::from_shape_vec(IxDyn(shape), data.to_vec()).unwrap()
}

fn values(t: &CpuTensor<f64>) -> Vec<f64> {
    t.iter().copied().collect()
}

#[test]
fn conv1d_through_the_backend_matches_finite_differences() {
    let cpu = Cpu::<f64>::new();
    let (n, c, l, o) = (3, 4, 7, 5);
    let mut rng = SplitMix64::new(5);
    let x = rng.normal_vec(n * c * l, 1.0);
    let w = rng.normal_vec(o * c, 0.5);
    let b = rng.normal_vec(o, 1.0);
    let dy = rng.normal_vec(n * o * l, 1.0);
    let run = |x: &[f64], w: &[f64], b: &[f64]| {
        let (y, _) = cpu
            .conv1d_forward(
                &tensor(&[n, c, l], x),
                &tensor(&[o, c, 1], w),
                Some(&tensor(&[o], b)),
            )
            .unwrap();
        assert_eq!(y.shape(), [n, o, l]);
        values(&y)
    };
    let y = run(&x, &w, &b);
    for nn in 0..n {
        for oo in 0..o {
            for t in 0..l {
                let expected = b[oo]
                    + (0..c)
                        .map(|cc| w[oo * c + cc] * x[(nn * c + cc) * l + t])
                        .sum::<f64>();
                assert!((y[(nn * o + oo) * l + t] - expected).abs() <= 1e-12);
            }
        }
    }
    let (_, context) = cpu
        .conv1d_forward(
            &tensor(&[n, c, l], &x),
            &tensor(&[o, c, 1], &w),
            Some(&tensor(&[o], &b)),
        )
        .unwrap();
    let grads = cpu
        .conv1d_backward(tensor(&[n, o, l], &dy), &context)
        .unwrap();
    assert_eq!(grads.input.shape(), [n, c, l]);
    assert_eq!(grads.weight.shape(), [o, c, 1]);
    let dx = central_difference(|x| dot(&dy, &run(x, &w, &b)), &x, FD_STEP);
    let dw = central_difference(|w| dot(&dy, &run(&x, w, &b)), &w, FD_STEP);
    let db = central_difference(|b| dot(&dy, &run(&x, &w, b)), &b, FD_STEP);
    assert!(relative_error(&values(&grads.input), &dx) <= FD_TOLERANCE);
    assert!(relative_error(&values(&grads.weight), &dw) <= FD_TOLERANCE);
    assert!(relative_error(&values(grads.bias.as_ref().unwrap()), &db) <= FD_TOLERANCE);
}

#[test]
fn conv1d_bad_shapes_are_errors() {
    let cpu = Cpu::<f64>::new();
    let zeros = |shape: &[usize]| cpu.zeros(shape).unwrap();
    let is_shape = |r: Result<(), OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    assert!(is_shape(
        cpu.conv1d_forward(&zeros(&[2, 3, 5]), &zeros(&[4, 3, 3]), None)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv1d_forward(&zeros(&[2, 3, 5]), &zeros(&[4, 2, 1]), None)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv1d_forward(&zeros(&[2, 3, 5, 1]), &zeros(&[4, 3, 1]), None)
            .map(|_| ())
    ));
    let (_, context) = cpu
        .conv1d_forward(&zeros(&[2, 3, 5]), &zeros(&[4, 3, 1]), None)
        .unwrap();
    assert!(is_shape(
        cpu.conv1d_backward(zeros(&[2, 4, 5, 1]), &context)
            .map(|_| ())
    ));
    assert!(is_shape(
        cpu.conv1d_backward(zeros(&[2, 4, 6]), &context).map(|_| ())
    ));
}
