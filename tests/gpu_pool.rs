//! The CUDA average and max pools against the CPU reference through `PoolOps`: forward outputs,
//! backward gradients and the max pool's argmax (a byte inside the window on CUDA, a position
//! inside the plane on the CPU, compared as positions) are bitwise identical to the reference (both
//! sum the same terms in the same order), which implies the docs/design.md bar (relative L2 error
//! <= 1e-5 in f32, 1e-12 in f64, also checked and printed). Windows: `(3, 2, 1)` (RevSNN's),
//! `(2, 2, 0)`, `(3, 1, 1)`, `(1, 1, 0)`, `(5, 3, 2)`, `(4, 2, 1)`, `(2, 1, 1)`, `(16, 5, 8)` (the
//! widest whose argmax fits a byte); planes from 1x1 to 56x56, up to 1.6M inputs; inputs normal, or
//! small integers so that max windows tie (the first maximum in row-major order wins) and
//! overlapping windows share an argmax; NaN and `-inf` inputs. Two runs are bitwise identical.
//! Every invalid input the reference rejects is an error here too. Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::Cuda;
use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Cpu, Pool2dParams};

const SHAPES: &[[usize; 4]] = &[
    [1, 1, 1, 1],
    [1, 1, 5, 5],
    [2, 3, 7, 9],
    [1, 2, 1, 40],
    [3, 5, 16, 16],
    [4, 16, 33, 31],
    [8, 64, 56, 56],
];

fn windows() -> Vec<Pool2dParams> {
    [
        (3, 2, 1),
        (2, 2, 0),
        (3, 1, 1),
        (1, 1, 0),
        (5, 3, 2),
        (4, 2, 1),
        (2, 1, 1),
        (16, 5, 8),
    ]
    .into_iter()
    .map(|(kernel, stride, padding)| Pool2dParams {
        kernel,
        stride,
        padding,
    })
    .collect()
}

/// How the inputs are drawn.
#[derive(Clone, Copy, Debug)]
enum Values {
    Normal,
    /// Integers in 0..4: most max windows tie.
    SmallIntegers,
    /// Normal with every 7th value NaN and every 5th `-inf`.
    Special,
}

fn draw<E: GpuElement>(rng: &mut SplitMix64, len: usize, values: Values) -> Vec<E> {
    (0..len)
        .map(|i| {
            let v = match values {
                Values::Normal => rng.normal(),
                Values::SmallIntegers => (rng.next_u64() % 4) as f64,
                Values::Special if i % 7 == 3 => f64::NAN,
                Values::Special if i % 5 == 1 => f64::NEG_INFINITY,
                Values::Special => rng.normal(),
            };
            E::cast(v)
        })
        .collect()
}

/// Everything one backend computes for one case, on the host.
#[derive(Debug)]
struct Outputs {
    avg_y: Vec<f64>,
    avg_dx: Vec<f64>,
    max_y: Vec<f64>,
    argmax: Vec<u32>,
    max_dx: Vec<f64>,
}

/// Runs the four ops on `b`, reading argmax from a context with `argmax`.
fn run<E: GpuElement, B: Backend<Elem = E>>(
    b: &B,
    shape: &[usize],
    x: &[E],
    grad: &[E],
    params: Pool2dParams,
    argmax: impl Fn(&B::MaxPoolContext) -> Vec<u32>,
) -> Outputs {
    let host = |t: &B::Tensor| -> Vec<f64> {
        b.to_vec(t)
            .unwrap()
            .into_iter()
            .map(|v| v.widen())
            .collect()
    };
    let x = b.tensor_from_vec(shape, x.to_vec()).unwrap();
    let avg_y = b.avg_pool2d_forward(&x, params).unwrap();
    let out_shape = b.shape(&avg_y);
    let grad = b.tensor_from_vec(&out_shape, grad.to_vec()).unwrap();
    let avg_dx = b.avg_pool2d_backward(&grad, shape, params).unwrap();
    let (max_y, context) = b.max_pool2d_forward(&x, params).unwrap();
    assert_eq!(b.shape(&max_y), out_shape);
    let max_dx = b.max_pool2d_backward(&grad, &context).unwrap();
    Outputs {
        avg_y: host(&avg_y),
        avg_dx: host(&avg_dx),
        max_y: host(&max_y),
        argmax: argmax(&context),
        max_dx: host(&max_dx),
    }
}

/// Equal bits, or both NaN (a NaN's payload after arithmetic is the hardware's own).
fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

/// The plane position `h W + w` of each CUDA argmax, a byte `a k + b` inside the unclipped
/// `k x k` window of its output `(i, j)`, whose first element is at `(s i - p, s j - p)`.
fn plane_positions(
    offsets: &[u8],
    shape: &[usize],
    out_shape: &[usize],
    params: Pool2dParams,
) -> Vec<u32> {
    let Pool2dParams {
        kernel,
        stride,
        padding,
    } = params;
    let (w, out_w, plane_out) = (shape[3], out_shape[3], out_shape[2] * out_shape[3]);
    let position = |(at, &offset): (usize, &u8)| {
        let (o, offset) = (at % plane_out, usize::from(offset));
        let row = (o / out_w) * stride + offset / kernel - padding;
        let col = (o % out_w) * stride + offset % kernel - padding;
        u32::try_from(row * w + col).unwrap()
    };
    offsets.iter().enumerate().map(position).collect()
}

fn compare<E: GpuElement>(
    gpu: &Cuda<E>,
    shape: [usize; 4],
    params: Pool2dParams,
    values: Values,
    tolerance: f64,
    seed: u64,
) {
    let cpu = Cpu::<E>::new();
    let probe = cpu
        .tensor_from_vec(&shape, vec![E::zero(); shape.iter().product()])
        .unwrap();
    let Ok(probe_y) = cpu.avg_pool2d_forward(&probe, params) else {
        // the window does not fit: both backends refuse it
        let x = gpu
            .tensor_from_vec(&shape, vec![E::zero(); shape.iter().product()])
            .unwrap();
        assert!(
            gpu.avg_pool2d_forward(&x, params).is_err(),
            "{shape:?} {params:?}"
        );
        assert!(
            gpu.max_pool2d_forward(&x, params).is_err(),
            "{shape:?} {params:?}"
        );
        return;
    };
    let out_shape = cpu.shape(&probe_y);
    let mut rng = SplitMix64::new(seed);
    let x = draw::<E>(&mut rng, shape.iter().product(), values);
    let grad = draw::<E>(&mut rng, out_shape.iter().product(), Values::Normal);

    let on_gpu = |_: ()| {
        let out = run(gpu, &shape, &x, &grad, params, |context| {
            let offsets = gpu.device().download(&context.argmax).unwrap();
            plane_positions(&offsets, &shape, &out_shape, params)
        });
        gpu.synchronize().unwrap();
        out
    };
    let (g, again) = (on_gpu(()), on_gpu(()));
    let c = run(&cpu, &shape, &x, &grad, params, |context| {
        context.argmax.clone()
    });
    let what = format!("{} {shape:?} {params:?} {values:?}", E::SUFFIX);
    for (name, g, again, c) in [
        ("avg y", &g.avg_y, &again.avg_y, &c.avg_y),
        ("avg dx", &g.avg_dx, &again.avg_dx, &c.avg_dx),
        ("max y", &g.max_y, &again.max_y, &c.max_y),
        ("max dx", &g.max_dx, &again.max_dx, &c.max_dx),
    ] {
        assert!(same_bits(g, again), "{what}: {name} differs run to run");
        assert!(same_bits(g, c), "{what}: {name} differs from the reference");
        if !matches!(values, Values::Special) {
            let error = relative_error(g, c);
            assert!(error <= tolerance, "{what}: {name} rel error {error:e}");
        }
    }
    assert_eq!(
        g.argmax, c.argmax,
        "{what}: argmax differs from the reference"
    );
    assert_eq!(g.argmax, again.argmax, "{what}: argmax differs run to run");
}

fn check_all<E: GpuElement>(gpu: &Cuda<E>, tolerance: f64) {
    for (s, &shape) in SHAPES.iter().enumerate() {
        for (w, params) in windows().into_iter().enumerate() {
            for (v, values) in [Values::Normal, Values::SmallIntegers, Values::Special]
                .into_iter()
                .enumerate()
            {
                compare(
                    gpu,
                    shape,
                    params,
                    values,
                    tolerance,
                    (s * 100 + w * 10 + v) as u64,
                );
            }
        }
        println!(
            "{} {shape:?}: every window bitwise equal to the reference",
            E::SUFFIX
        );
    }
}

#[test]
fn gpu_pool_matches_the_reference_in_f32() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_pool f32") {
        check_all(&gpu, 1e-5);
    }
}

#[test]
fn gpu_pool_matches_the_reference_in_f64() {
    if let Some(gpu) = backend_or_skip::<f64>("gpu_pool f64") {
        check_all(&gpu, 1e-12);
    }
}

/// N = 0 or C = 0: empty outputs and gradients, as the reference. Kept apart: it also exercises
/// zero-length device allocations.
#[test]
fn gpu_pool_handles_empty_batches() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_pool empty") else {
        return;
    };
    for shape in [[0, 3, 5, 5], [2, 0, 5, 5]] {
        let out = run(&gpu, &shape, &[], &[], Pool2dParams::K3_S2_P1, |context| {
            let offsets = gpu.device().download(&context.argmax).unwrap();
            offsets.into_iter().map(u32::from).collect()
        });
        gpu.synchronize().unwrap();
        assert!(
            out.avg_y.is_empty()
                && out.avg_dx.is_empty()
                && out.max_y.is_empty()
                && out.max_dx.is_empty()
                && out.argmax.is_empty(),
            "{shape:?}: {out:?}"
        );
    }
}

#[test]
fn gpu_pool_rejects_what_the_reference_rejects() {
    // the reference first (no GPU needed): it pins down what must be rejected
    check_rejections(&Cpu::<f32>::new(), "cpu");
    if let Some(gpu) = backend_or_skip::<f32>("gpu_pool bad input") {
        check_rejections(&gpu, "cuda");
    }
}

/// Each invalid call is an error on `b` (both backends must agree).
fn check_rejections<B: Backend<Elem = f32>>(b: &B, name: &str) {
    let t = |shape: &[usize]| {
        b.tensor_from_vec(shape, vec![0.5; shape.iter().product()])
            .unwrap()
    };
    let p = |kernel, stride, padding| Pool2dParams {
        kernel,
        stride,
        padding,
    };
    let x = t(&[2, 3, 6, 6]);
    for params in [p(0, 1, 0), p(2, 0, 0), p(3, 1, 2), p(7, 1, 0)] {
        assert!(
            b.avg_pool2d_forward(&x, params).is_err(),
            "{name}: avg {params:?}"
        );
        assert!(
            b.max_pool2d_forward(&x, params).is_err(),
            "{name}: max {params:?}"
        );
        assert!(
            b.avg_pool2d_backward(&t(&[2, 3, 6, 6]), &[2, 3, 6, 6], params)
                .is_err(),
            "{name}: avg backward {params:?}"
        );
    }
    // a max pool's argmax is one byte inside its window: 16x16 windows and no wider
    let wide = t(&[1, 1, 17, 17]);
    assert!(b.max_pool2d_forward(&wide, p(16, 1, 0)).is_ok(), "{name}");
    assert!(b.max_pool2d_forward(&wide, p(17, 1, 0)).is_err(), "{name}");
    assert!(b.avg_pool2d_forward(&wide, p(17, 1, 0)).is_ok(), "{name}");
    let k3 = Pool2dParams::K3_S2_P1;
    for shape in [
        &[3, 6, 6][..],
        &[1, 2, 3, 6, 6],
        &[2, 3, 0, 6],
        &[2, 3, 6, 0],
    ] {
        assert!(
            b.avg_pool2d_forward(&t(shape), k3).is_err(),
            "{name}: avg x {shape:?}"
        );
        assert!(
            b.max_pool2d_forward(&t(shape), k3).is_err(),
            "{name}: max x {shape:?}"
        );
    }
    // gradients of the output's shape [2, 3, 3, 3] only
    assert!(
        b.avg_pool2d_backward(&t(&[2, 3, 3, 3]), &[2, 3, 6, 6], k3)
            .is_ok(),
        "{name}: avg backward"
    );
    for grad in [&[2, 3, 3, 4][..], &[2, 3, 9], &[2, 3, 6, 6]] {
        assert!(
            b.avg_pool2d_backward(&t(grad), &[2, 3, 6, 6], k3).is_err(),
            "{name}: avg grad {grad:?}"
        );
    }
    assert!(
        b.avg_pool2d_backward(&t(&[2, 3, 3, 3]), &[2, 3, 6], k3)
            .is_err(),
        "{name}: avg input shape [2, 3, 6]"
    );
    let (_, context) = b.max_pool2d_forward(&x, k3).unwrap();
    assert!(
        b.max_pool2d_backward(&t(&[2, 3, 3, 3]), &context).is_ok(),
        "{name}: max backward"
    );
    for grad in [&[2, 3, 3, 4][..], &[2, 3, 9], &[2, 3, 6, 6]] {
        assert!(
            b.max_pool2d_backward(&t(grad), &context).is_err(),
            "{name}: max grad {grad:?}"
        );
    }
}
