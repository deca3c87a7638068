//! The CUDA linear layer and batched matmul (cuBLAS) against the CPU reference through `LinearOps`
//! (docs/design.md, GEMM-based tolerance class): outputs and gradients within 1e-4 relative (L2
//! over the whole tensor) in f32 and 1e-10 in f64; two runs bitwise identical; bad shapes rejected
//! with an error. Linear shapes run from one element to a million-element input (the bias kernels
//! then span thousands of blocks); batched matmuls cover every transpose combination, no batch
//! axis, one and two batch axes and the attention products. Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::Cuda;
use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::Cpu;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};

/// `(N, in, out)`; the bias is on for odd `out`.
const LINEAR: [(usize, usize, usize); 6] = [
    (1, 1, 1),
    (33, 17, 10),
    (4097, 65, 3),
    (8193, 129, 11),
    (7, 512, 100),
    (2, 3, 4097),
];

/// `(batch axes, m, k, n)`.
const BATCHED: [(&[usize], usize, usize, usize); 6] = [
    (&[], 1, 1, 1),
    (&[], 33, 17, 9),
    (&[5], 16, 64, 16),
    (&[2, 3], 17, 33, 9),
    (&[4, 8], 64, 16, 64),
    (&[1, 1, 3], 129, 7, 65),
];

/// `relative_error` in f64 of `got` against the reference `want`.
fn rel<E: GpuElement>(got: &[E], want: &[E]) -> f64 {
    let widen = |v: &[E]| v.iter().map(|x| x.widen()).collect::<Vec<f64>>();
    relative_error(&widen(got), &widen(want))
}

fn random<E: GpuElement>(rng: &mut SplitMix64, len: usize) -> Vec<E> {
    rng.normal_vec(len, 1.0).into_iter().map(E::cast).collect()
}

/// `y`, `dx`, `dw` and `db` (empty without a bias) of one linear forward and backward.
fn linear<E: GpuElement, B: Backend<Elem = E>>(
    backend: &B,
    (rows, inputs, outputs): (usize, usize, usize),
    has_bias: bool,
    values: &[Vec<E>; 4],
) -> [Vec<E>; 4] {
    let [x, w, b, dy] = values;
    let x = backend.tensor_from_vec(&[rows, inputs], x.clone()).unwrap();
    let w = backend
        .tensor_from_vec(&[outputs, inputs], w.clone())
        .unwrap();
    let b = backend.tensor_from_vec(&[outputs], b.clone()).unwrap();
    let dy = backend
        .tensor_from_vec(&[rows, outputs], dy.clone())
        .unwrap();
    let y = backend
        .linear_forward(&x, &w, has_bias.then_some(&b))
        .unwrap();
    assert_eq!(backend.shape(&y), [rows, outputs]);
    let grads = backend.linear_backward(&dy, &x, &w, has_bias).unwrap();
    assert_eq!(grads.bias.is_some(), has_bias);
    [
        backend.to_vec(&y).unwrap(),
        backend.to_vec(&grads.input).unwrap(),
        backend.to_vec(&grads.weight).unwrap(),
        grads
            .bias
            .map(|db| backend.to_vec(&db).unwrap())
            .unwrap_or_default(),
    ]
}

fn check_linear<E: GpuElement>(gpu: &Cuda<E>, tolerance: f64) {
    for (i, &sizes) in LINEAR.iter().enumerate() {
        let (rows, inputs, outputs) = sizes;
        let has_bias = outputs % 2 == 1;
        let mut rng = SplitMix64::new(40 + i as u64);
        let values = [
            random::<E>(&mut rng, rows * inputs),
            random::<E>(&mut rng, outputs * inputs),
            random::<E>(&mut rng, outputs),
            random::<E>(&mut rng, rows * outputs),
        ];
        let got = linear(gpu, sizes, has_bias, &values);
        let again = linear(gpu, sizes, has_bias, &values);
        assert!(got == again, "linear {sizes:?}: differs run to run");
        let want = linear(&Cpu::<E>::new(), sizes, has_bias, &values);
        let names = ["y", "dx", "dw", "db"];
        let errors: Vec<f64> = (0..4).map(|j| rel(&got[j], &want[j])).collect();
        println!(
            "{} linear N {rows} in {inputs} out {outputs} bias {has_bias}: {}",
            E::SUFFIX,
            names
                .iter()
                .zip(&errors)
                .map(|(n, e)| format!("{n} rel {e:.2e}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (name, error) in names.iter().zip(errors) {
            assert!(
                error <= tolerance,
                "linear {sizes:?}: {name} rel error {error:.3e} > {tolerance:.0e}"
            );
        }
    }
}

fn matmul<E: GpuElement, B: Backend<Elem = E>>(
    backend: &B,
    shapes: (&[usize], &[usize]),
    values: (&[E], &[E]),
    transposes: (bool, bool),
) -> (Vec<usize>, Vec<E>) {
    let a = backend
        .tensor_from_vec(shapes.0, values.0.to_vec())
        .unwrap();
    let b = backend
        .tensor_from_vec(shapes.1, values.1.to_vec())
        .unwrap();
    let c = backend
        .batched_matmul(&a, &b, transposes.0, transposes.1)
        .unwrap();
    (backend.shape(&c), backend.to_vec(&c).unwrap())
}

fn check_batched<E: GpuElement>(gpu: &Cuda<E>, tolerance: f64) {
    for (i, &(batch, m, k, n)) in BATCHED.iter().enumerate() {
        for transposes @ (transpose_a, transpose_b) in
            [(false, false), (false, true), (true, false), (true, true)]
        {
            let shape = |rows: usize, cols: usize| [batch, &[rows, cols]].concat();
            let sa = if transpose_a {
                shape(k, m)
            } else {
                shape(m, k)
            };
            let sb = if transpose_b {
                shape(n, k)
            } else {
                shape(k, n)
            };
            let mut rng = SplitMix64::new(70 + i as u64);
            let a = random::<E>(&mut rng, sa.iter().product());
            let b = random::<E>(&mut rng, sb.iter().product());
            let (shape_got, got) = matmul(gpu, (&sa, &sb), (&a, &b), transposes);
            let (_, again) = matmul(gpu, (&sa, &sb), (&a, &b), transposes);
            assert!(got == again, "batched {sa:?} x {sb:?}: differs run to run");
            let (shape_want, want) = matmul(&Cpu::<E>::new(), (&sa, &sb), (&a, &b), transposes);
            assert_eq!(shape_got, shape_want);
            let error = rel(&got, &want);
            println!(
                "{} batched_matmul {sa:?} x {sb:?} transposes {transposes:?}: rel {error:.2e}",
                E::SUFFIX
            );
            assert!(
                error <= tolerance,
                "batched {sa:?} x {sb:?} {transposes:?}: rel error {error:.3e} > {tolerance:.0e}"
            );
        }
    }
}

/// Runs without a GPU: every case is valid for the reference.
#[test]
fn the_cases_are_valid_for_the_reference() {
    let cpu = Cpu::<f64>::new();
    for &sizes in &LINEAR {
        let (rows, inputs, outputs) = sizes;
        let values =
            [rows * inputs, outputs * inputs, outputs, rows * outputs].map(|n| vec![1.0; n]);
        let [y, dx, dw, db] = linear(&cpu, sizes, true, &values);
        assert_eq!(
            (y.len(), dx.len(), dw.len(), db.len()),
            (rows * outputs, rows * inputs, outputs * inputs, outputs)
        );
    }
    for &(batch, m, k, n) in &BATCHED {
        let a = [batch, &[k, m]].concat();
        let b = [batch, &[n, k]].concat();
        let ones = |shape: &[usize]| vec![1.0; shape.iter().product()];
        let (shape, _) = matmul(&cpu, (&a, &b), (&ones(&a), &ones(&b)), (true, true));
        assert_eq!(shape, [batch, &[m, n]].concat());
    }
}

#[test]
fn gpu_linear_matches_the_reference_in_f32() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_linear f32") {
        check_linear(&gpu, 1e-4);
    }
}

#[test]
fn gpu_linear_matches_the_reference_in_f64() {
    if let Some(gpu) = backend_or_skip::<f64>("gpu_linear f64") {
        check_linear(&gpu, 1e-10);
    }
}

#[test]
fn gpu_batched_matmul_matches_the_reference_in_f32() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_batched_matmul f32") {
        check_batched(&gpu, 1e-4);
    }
}

#[test]
fn gpu_batched_matmul_matches_the_reference_in_f64() {
    if let Some(gpu) = backend_or_skip::<f64>("gpu_batched_matmul f64") {
        check_batched(&gpu, 1e-10);
    }
}

/// Empty products: an inner size of 0 gives zeros (or the bias), an empty batch an empty result.
#[test]
fn gpu_linear_and_matmul_handle_empty_sizes() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_linear empty sizes") else {
        return;
    };
    let x = gpu.tensor_from_vec(&[3, 0], vec![]).unwrap();
    let w = gpu.tensor_from_vec(&[2, 0], vec![]).unwrap();
    let b = gpu.tensor_from_vec(&[2], vec![1.5, -2.0]).unwrap();
    let y = gpu.linear_forward(&x, &w, Some(&b)).unwrap();
    assert_eq!(gpu.to_vec(&y).unwrap(), [1.5, -2.0].repeat(3));
    let y = gpu.linear_forward(&x, &w, None).unwrap();
    assert_eq!(gpu.to_vec(&y).unwrap(), vec![0.0; 6]);

    let x = gpu.tensor_from_vec(&[0, 4], vec![]).unwrap();
    let w = gpu.tensor_from_vec(&[2, 4], vec![1.0; 8]).unwrap();
    let dy = gpu.tensor_from_vec(&[0, 2], vec![]).unwrap();
    let grads = gpu.linear_backward(&dy, &x, &w, true).unwrap();
    assert_eq!(gpu.shape(&grads.input), [0, 4]);
    assert_eq!(gpu.to_vec(&grads.weight).unwrap(), vec![0.0; 8]);
    assert_eq!(gpu.to_vec(&grads.bias.unwrap()).unwrap(), vec![0.0; 2]);

    let a = gpu.tensor_from_vec(&[2, 3, 0], vec![]).unwrap();
    let b = gpu.tensor_from_vec(&[2, 0, 4], vec![]).unwrap();
    let c = gpu.batched_matmul(&a, &b, false, false).unwrap();
    assert_eq!(gpu.shape(&c), [2, 3, 4]);
    assert_eq!(gpu.to_vec(&c).unwrap(), vec![0.0; 24]);
    let a = gpu.tensor_from_vec(&[0, 3, 2], vec![]).unwrap();
    let b = gpu.tensor_from_vec(&[0, 2, 4], vec![]).unwrap();
    let c = gpu.batched_matmul(&a, &b, false, false).unwrap();
    assert_eq!(gpu.shape(&c), [0, 3, 4]);
}

#[test]
fn gpu_linear_and_matmul_reject_bad_shapes() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_linear bad input") else {
        return;
    };
    let tensor = |shape: &[usize]| {
        gpu.tensor_from_vec(shape, vec![0.5f32; shape.iter().product()])
            .unwrap()
    };
    let (x, w) = (tensor(&[4, 3]), tensor(&[2, 3]));
    assert!(
        gpu.linear_forward(&x, &tensor(&[2, 4]), None).is_err(),
        "in differs"
    );
    assert!(
        gpu.linear_forward(&tensor(&[2, 4, 3]), &w, None).is_err(),
        "x of rank 3"
    );
    assert!(
        gpu.linear_forward(&x, &tensor(&[3]), None).is_err(),
        "w of rank 1"
    );
    assert!(
        gpu.linear_forward(&x, &w, Some(&tensor(&[3]))).is_err(),
        "bias length"
    );
    assert!(
        gpu.linear_backward(&tensor(&[4, 3]), &x, &w, true).is_err(),
        "dy of the wrong width"
    );
    assert!(
        gpu.linear_backward(&tensor(&[3, 2]), &x, &w, false)
            .is_err(),
        "dy of the wrong height"
    );
    let bm = |a: &[usize], b: &[usize], ta, tb| {
        gpu.batched_matmul(&tensor(a), &tensor(b), ta, tb).is_err()
    };
    assert!(bm(&[3], &[3], false, false), "rank 1");
    assert!(
        bm(&[2, 3, 4], &[3, 4, 5], false, false),
        "batch axes differ"
    );
    assert!(bm(&[2, 3, 4], &[4, 5], false, false), "ranks differ");
    assert!(
        bm(&[2, 3, 4], &[2, 5, 4], false, false),
        "inner sizes differ"
    );
    assert!(
        bm(&[2, 3, 4], &[2, 3, 5], false, false),
        "inner sizes differ"
    );
    assert!(!bm(&[2, 3, 4], &[2, 3, 5], true, false), "a^T b fits");
}
