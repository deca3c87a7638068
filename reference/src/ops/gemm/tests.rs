//! The GEMM against a naive `f64` triple loop, within the bound `k 2^-24 sum |a| |b|` of an
//! `f32` accumulation of length `k`, on shapes around the kernel's tile and block sizes, with
//! transposed, sliced and reversed operands; and against `general_mat_mul` for `f64`, bitwise.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, s};
use proptest::prelude::*;

use super::{Update, gemm};

/// A deterministic pseudo-random matrix with entries in [-1, 1].
fn matrix(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        let x = (i as u64 * 7919 + j as u64 * 104_729 + seed * 1_000_003) % 2001;
        x as f32 / 1000.0 - 1.0
    })
}

/// Asserts that `c` is `a b (+ c0)` within the accumulation bound.
fn assert_close(
    a: &ArrayView2<f32>,
    b: &ArrayView2<f32>,
    c0: Option<&Array2<f32>>,
    c: &Array2<f32>,
) {
    let k = a.ncols();
    for ((i, j), &got) in c.indexed_iter() {
        let start = c0.map_or(0.0, |c0| f64::from(c0[[i, j]]));
        let (mut exact, mut magnitude) = (start, start.abs());
        for p in 0..k {
            let term = f64::from(a[[i, p]]) * f64::from(b[[p, j]]);
            exact += term;
            magnitude += term.abs();
        }
        let bound = (k + 1) as f64 * 2f64.powi(-24) * magnitude;
        let error = (f64::from(got) - exact).abs();
        assert!(
            error <= bound,
            "c[{i}, {j}] = {got}, exact {exact}, error {error} > bound {bound} ({:?} x {:?})",
            a.dim(),
            b.dim()
        );
    }
}

/// `a b` into a matrix full of NaN with [`Update::Overwrite`], checked against the naive loop.
fn check_overwrite(a: &ArrayView2<f32>, b: &ArrayView2<f32>) -> Array2<f32> {
    let mut c = Array2::from_elem((a.nrows(), b.ncols()), f32::NAN);
    gemm(a, b, Update::Overwrite, &mut c.view_mut()).unwrap();
    assert_close(a, b, None, &c);
    c
}

/// Shapes around the tile (8 x 48), the runs of k (at most 256), the blocks of A (144 rows) and B
/// (1008 columns) and the small-product cutoff (16^3 multiply-adds).
const SIZES: [(usize, usize, usize); 18] = [
    (1, 1, 1),
    (1, 300, 1),
    (7, 5, 47),
    (8, 16, 48),
    (9, 17, 49),
    (16, 16, 16),
    (25, 255, 65),
    (37, 257, 97),
    (144, 64, 64),
    (145, 513, 40),
    (150, 20, 1007),
    (150, 20, 1009),
    (64, 576, 300),
    (3, 1000, 7),
    (200, 3, 1100),
    (11, 5, 31),
    (13, 17, 33),
    (143, 770, 2017),
];

#[test]
fn matches_the_naive_product_on_edge_shapes() {
    for &(m, k, n) in &SIZES {
        check_overwrite(&matrix(m, k, 1).view(), &matrix(k, n, 2).view());
    }
}

#[test]
fn accumulates_onto_c() {
    for &(m, k, n) in &SIZES {
        let (a, b, c0) = (matrix(m, k, 3), matrix(k, n, 4), matrix(m, n, 5));
        let mut c = c0.clone();
        gemm(&a.view(), &b.view(), Update::Accumulate, &mut c.view_mut()).unwrap();
        assert_close(&a.view(), &b.view(), Some(&c0), &c);
    }
}

#[test]
fn takes_transposed_sliced_and_reversed_operands() {
    let (m, k, n) = (50, 300, 70);
    let a_t = matrix(k + 3, m + 5, 6);
    let a = a_t.slice(s![1..k + 1, 2..m + 2]).reversed_axes();
    let b_wide = matrix(2 * k, n, 7);
    let b = b_wide.slice(s![..;-2, ..]);
    check_overwrite(&a, &b);
    let b_t = matrix(n, k, 8);
    check_overwrite(&a, &b_t.t());
}

#[test]
fn writes_into_transposed_and_strided_c() {
    let (m, k, n) = (40, 90, 45);
    let (a, b) = (matrix(m, k, 9), matrix(k, n, 10));
    let mut c_t = Array2::from_elem((n, m), f32::NAN);
    gemm(
        &a.view(),
        &b.view(),
        Update::Overwrite,
        &mut c_t.view_mut().reversed_axes(),
    )
    .unwrap();
    assert_close(&a.view(), &b.view(), None, &c_t.t().to_owned());
    let mut c_wide = Array2::from_elem((m, 2 * n), 7.0f32);
    gemm(
        &a.view(),
        &b.view(),
        Update::Overwrite,
        &mut c_wide.slice_mut(s![.., ..;2]),
    )
    .unwrap();
    assert_close(
        &a.view(),
        &b.view(),
        None,
        &c_wide.slice(s![.., ..;2]).to_owned(),
    );
    assert!(c_wide.slice(s![.., 1..;2]).iter().all(|&x| x == 7.0));
}

#[test]
fn an_empty_sum_zeroes_or_keeps_c() {
    let (a, b) = (Array2::<f32>::zeros((4, 0)), Array2::<f32>::zeros((0, 5)));
    let mut c = Array2::from_elem((4, 5), f32::NAN);
    gemm(&a.view(), &b.view(), Update::Overwrite, &mut c.view_mut()).unwrap();
    assert!(c.iter().all(|&x| x == 0.0));
    let mut c = Array2::from_elem((4, 5), 3.0f32);
    gemm(&a.view(), &b.view(), Update::Accumulate, &mut c.view_mut()).unwrap();
    assert!(c.iter().all(|&x| x == 3.0));
}

#[test]
fn each_element_is_the_same_whatever_block_of_c_it_is_computed_in() {
    let (m, k, n) = (300, 600, 1100);
    let (a, b) = (matrix(m, k, 11), matrix(k, n, 12));
    let whole = check_overwrite(&a.view(), &b.view());
    let (rows, cols) = (s![13..250, ..], s![.., 37..1090]);
    let mut part = Array2::zeros((237, 1053));
    gemm(
        &a.slice(rows),
        &b.slice(cols),
        Update::Overwrite,
        &mut part.view_mut(),
    )
    .unwrap();
    assert_eq!(part, whole.slice(s![13..250, 37..1090]));
}

#[test]
fn f64_is_bitwise_general_mat_mul() {
    for &(m, k, n) in &SIZES {
        let a = matrix(m, k, 13).mapv(f64::from);
        let b = matrix(k, n, 14).mapv(f64::from);
        let mut expected = matrix(m, n, 15).mapv(f64::from);
        let mut c = expected.clone();
        general_mat_mul(1.0, &a, &b, 1.0, &mut expected);
        gemm(&a.view(), &b.view(), Update::Accumulate, &mut c.view_mut()).unwrap();
        assert_eq!(c, expected);
    }
}

#[test]
fn mismatched_shapes_are_an_error() {
    let (a, b) = (matrix(3, 4, 16), matrix(5, 6, 17));
    let mut c = Array2::zeros((3, 6));
    assert!(gemm(&a.view(), &b.view(), Update::Overwrite, &mut c.view_mut()).is_err());
    assert!(c.iter().all(|&x| x == 0.0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matches_the_naive_product(
        m in 1usize..60, k in 1usize..300, n in 1usize..80,
        transpose_a: bool, transpose_b: bool, seed in 0u64..1000,
    ) {
        let a_data = if transpose_a { matrix(k, m, seed) } else { matrix(m, k, seed) };
        let b_data = if transpose_b { matrix(n, k, seed + 1) } else { matrix(k, n, seed + 1) };
        let a = if transpose_a { a_data.t() } else { a_data.view() };
        let b = if transpose_b { b_data.t() } else { b_data.view() };
        check_overwrite(&a, &b);
    }
}
