//! The CUDA convolution, on each engine (cuDNN and im2col + cuBLAS), against the CPU reference
//! through `ConvOps` (docs/design.md, GEMM-based tolerance class): `y`, `dx`, `dw` and `db` within
//! 1e-4 relative (L2 over the whole tensor) in f32 and 1e-10 in f64, and within 1e-2 with TF32
//! allowed; two runs bitwise identical; bad shapes rejected with an error. Cases span 3x3 same
//! convolutions, strides, 1x1 direct and strided, rectangular kernels, padding wider than the
//! kernel, and a batch large enough to be split into several im2col chunks (the last one partial),
//! whose workspace must stay within the engine's bound. Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`; cuDNN's engine is tested where
//! cuDNN loads, and its absence fails with `REVSNN_REQUIRE_CUDNN=1`.

use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::ops::conv::cudnn;
use revsnn_gpu::ops::conv::im2col::WORKSPACE_BYTES;
use revsnn_gpu::testing::{backend_or_skip, each_conv_engine};
use revsnn_gpu::{ConvEngine, Cuda};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Conv2dParams, Cpu};

/// `(name, x shape, weight shape, stride, padding, bias)`.
type Case = (&'static str, [usize; 4], [usize; 4], usize, usize, bool);

const CASES: [Case; 9] = [
    (
        "3x3 same, bias",
        [8, 16, 32, 32],
        [16, 16, 3, 3],
        1,
        1,
        true,
    ),
    ("3x3 same", [3, 5, 9, 11], [7, 5, 3, 3], 1, 1, false),
    ("3x3 stride 2", [5, 7, 17, 13], [9, 7, 3, 3], 2, 1, true),
    (
        "1x1 direct, bias",
        [6, 33, 9, 11],
        [17, 33, 1, 1],
        1,
        0,
        true,
    ),
    ("1x1 stride 2", [3, 8, 9, 9], [5, 8, 1, 1], 2, 0, false),
    (
        "5x3 stride 2 pad 2",
        [2, 3, 11, 10],
        [4, 3, 5, 3],
        2,
        2,
        true,
    ),
    (
        "2x2 stride 3 (skips inputs)",
        [3, 2, 8, 7],
        [3, 2, 2, 2],
        3,
        0,
        false,
    ),
    ("pad 3 > kernel", [2, 2, 3, 3], [3, 2, 2, 2], 1, 3, true),
    ("single element", [1, 1, 1, 1], [1, 1, 1, 1], 1, 0, true),
];

/// Several chunks: one image's columns are 576 x 4096 elements (9.4 MB in f32), so the forward
/// runs 7 + 2 images in f32 and 3 + 3 + 3 in f64.
const CHUNKED: Case = (
    "3x3 over 64 channels at 64x64, chunked",
    [9, 64, 64, 64],
    [8, 64, 3, 3],
    1,
    1,
    true,
);

/// `relative_error` in f64 of `got` against the reference `want`.
fn rel<E: GpuElement>(got: &[E], want: &[E]) -> f64 {
    let widen = |v: &[E]| v.iter().map(|x| x.widen()).collect::<Vec<f64>>();
    relative_error(&widen(got), &widen(want))
}

fn random<E: GpuElement>(rng: &mut SplitMix64, len: usize) -> Vec<E> {
    rng.normal_vec(len, 1.0).into_iter().map(E::cast).collect()
}

/// Every output of one forward and backward on `backend`, downloaded.
struct Outputs<E> {
    y: Vec<E>,
    dx: Vec<E>,
    dw: Vec<E>,
    db: Option<Vec<E>>,
}

fn run<E: GpuElement, B: Backend<Elem = E>>(
    backend: &B,
    case: &Case,
    x: &[E],
    w: &[E],
    b: &[E],
    dy: &[E],
) -> Outputs<E> {
    let &(name, xs, ws, stride, padding, has_bias) = case;
    let params = Conv2dParams::new(stride, padding);
    let x = backend.tensor_from_vec(&xs, x.to_vec()).unwrap();
    let w = backend.tensor_from_vec(&ws, w.to_vec()).unwrap();
    let b = backend.tensor_from_vec(&[ws[0]], b.to_vec()).unwrap();
    let (y, context) = backend
        .conv2d_forward(&x, &w, has_bias.then_some(&b), params)
        .unwrap_or_else(|e| panic!("{name}: forward: {e}"));
    let dy = backend
        .tensor_from_vec(&backend.shape(&y), dy.to_vec())
        .unwrap();
    let grads = backend
        .conv2d_backward(dy.clone(), &context)
        .unwrap_or_else(|e| panic!("{name}: backward: {e}"));
    assert_eq!(backend.shape(&grads.input), xs, "{name}: dx shape");
    assert_eq!(backend.shape(&grads.weight), ws, "{name}: dw shape");
    assert_eq!(grads.bias.is_some(), has_bias, "{name}: db presence");
    Outputs {
        y: backend.to_vec(&y).unwrap(),
        dx: backend.to_vec(&grads.input).unwrap(),
        dw: backend.to_vec(&grads.weight).unwrap(),
        db: grads.bias.map(|db| backend.to_vec(&db).unwrap()),
    }
}

fn output_len(case: &Case) -> usize {
    let &(_, [n, _, h, w], [c_out, _, kh, kw], stride, padding, _) = case;
    n * c_out * ((h + 2 * padding - kh) / stride + 1) * ((w + 2 * padding - kw) / stride + 1)
}

fn check<E: GpuElement>(gpu: &Cuda<E>, case: &Case, seed: u64, tolerance: f64) {
    let &(name, xs, ws, ..) = case;
    let mut rng = SplitMix64::new(seed);
    let x = random::<E>(&mut rng, xs.iter().product());
    let w = random::<E>(&mut rng, ws.iter().product());
    let b = random::<E>(&mut rng, ws[0]);
    let dy = random::<E>(&mut rng, output_len(case));

    let got = run(gpu, case, &x, &w, &b, &dy);
    let again = run(gpu, case, &x, &w, &b, &dy);
    assert!(got.y == again.y, "{name}: y differs run to run");
    assert!(got.dx == again.dx, "{name}: dx differs run to run");
    assert!(got.dw == again.dw, "{name}: dw differs run to run");
    assert!(got.db == again.db, "{name}: db differs run to run");

    let want = run(&Cpu::<E>::new(), case, &x, &w, &b, &dy);
    let mut errors = vec![
        ("y", rel(&got.y, &want.y)),
        ("dx", rel(&got.dx, &want.dx)),
        ("dw", rel(&got.dw, &want.dw)),
    ];
    if let (Some(got), Some(want)) = (&got.db, &want.db) {
        errors.push(("db", rel(got, want)));
    }
    let report: Vec<String> = errors
        .iter()
        .map(|(what, error)| format!("{what} rel {error:.2e}"))
        .collect();
    println!("{} {name:<40} {}", E::SUFFIX, report.join(", "));
    for (what, error) in errors {
        assert!(
            error <= tolerance,
            "{name}: {what} rel error {error:.3e} > {tolerance:.0e}"
        );
    }
}

fn check_all<E: GpuElement>(gpu: &Cuda<E>, tolerance: f64) {
    for engine in each_conv_engine(gpu.device()) {
        println!("engine {}", engine.name());
        for (i, case) in CASES.iter().chain([&CHUNKED]).enumerate() {
            check(gpu, case, 17 + i as u64, tolerance);
        }
    }
}

/// Runs without a GPU: every case is a valid convolution for the reference, and `output_len`
/// agrees with its output shape.
#[test]
fn the_cases_are_valid_for_the_reference() {
    let cpu = Cpu::<f64>::new();
    for case in CASES.iter().chain([&CHUNKED]) {
        let &(_, xs, ws, ..) = case;
        let out = run(
            &cpu,
            case,
            &vec![1.0; xs.iter().product()],
            &vec![1.0; ws.iter().product()],
            &vec![1.0; ws[0]],
            &vec![1.0; output_len(case)],
        );
        assert_eq!(out.y.len(), output_len(case));
    }
}

#[test]
fn gpu_conv_matches_the_reference_in_f32() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_conv f32") {
        check_all(&gpu, 1e-4);
    }
}

#[test]
fn gpu_conv_matches_the_reference_in_f64() {
    if let Some(gpu) = backend_or_skip::<f64>("gpu_conv f64") {
        check_all(&gpu, 1e-10);
    }
}

#[test]
fn gpu_conv_with_tf32_stays_within_its_class() {
    if let Some(gpu) = backend_or_skip::<f32>("gpu_conv tf32") {
        gpu.device().allow_tf32(true).unwrap();
        check_all(&gpu, 1e-2);
    }
}

#[test]
fn gpu_conv_workspace_stays_within_its_bound_and_is_freed() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_conv workspace") else {
        return;
    };
    for engine in each_conv_engine(gpu.device()) {
        let bound = match engine {
            ConvEngine::Cudnn => cudnn::WORKSPACE_LIMIT_BYTES,
            ConvEngine::Im2colGemm => WORKSPACE_BYTES,
        };
        workspace_is_bounded_and_freed(&gpu, bound);
    }
}

fn workspace_is_bounded_and_freed(gpu: &Cuda<f32>, workspace: usize) {
    let (_, xs, ws, stride, padding, _) = CHUNKED;
    let mut rng = SplitMix64::new(5);
    let x = gpu
        .tensor_from_vec(&xs, random(&mut rng, xs.iter().product()))
        .unwrap();
    let w = gpu
        .tensor_from_vec(&ws, random(&mut rng, ws.iter().product()))
        .unwrap();
    let b = gpu
        .tensor_from_vec(&[ws[0]], random(&mut rng, ws[0]))
        .unwrap();
    let bytes = |elements: usize| elements * size_of::<f32>();
    let params = Conv2dParams::new(stride, padding);

    gpu.synchronize().unwrap();
    let before = gpu.device().reset_peak_memory();
    let live = gpu.memory().live_bytes;
    assert_eq!(before.live_bytes, live);
    let (y, context) = gpu.conv2d_forward(&x, &w, Some(&b), params).unwrap();
    gpu.synchronize().unwrap();
    let y_bytes = bytes(output_len(&CHUNKED));
    let after = gpu.memory();
    assert_eq!(after.live_bytes, live + y_bytes, "forward: workspace freed");
    assert!(
        after.peak_bytes <= live + y_bytes + workspace,
        "forward peak {} over live {live} + y {y_bytes} + workspace {workspace}",
        after.peak_bytes
    );

    let dy = gpu
        .tensor_from_vec(&gpu.shape(&y), random(&mut rng, output_len(&CHUNKED)))
        .unwrap();
    gpu.synchronize().unwrap();
    gpu.device().reset_peak_memory();
    let live = gpu.memory().live_bytes;
    let grads = gpu.conv2d_backward(dy.clone(), &context).unwrap();
    gpu.synchronize().unwrap();
    let grad_bytes = bytes(xs.iter().product::<usize>() + ws.iter().product::<usize>() + ws[0]);
    let after = gpu.memory();
    assert_eq!(
        after.live_bytes,
        live + grad_bytes,
        "backward: workspace freed"
    );
    assert!(
        after.peak_bytes <= live + grad_bytes + workspace,
        "backward peak {} over live {live} + grads {grad_bytes} + workspace {workspace}",
        after.peak_bytes
    );
    drop(grads);
}

#[test]
fn gpu_conv_handles_an_empty_batch() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_conv empty batch") else {
        return;
    };
    for _engine in each_conv_engine(gpu.device()) {
        let x = gpu.tensor_from_vec(&[0, 2, 5, 5], vec![]).unwrap();
        let w = gpu.tensor_from_vec(&[3, 2, 3, 3], vec![0.5; 54]).unwrap();
        let b = gpu.tensor_from_vec(&[3], vec![1.0; 3]).unwrap();
        let (y, context) = gpu
            .conv2d_forward(&x, &w, Some(&b), Conv2dParams::new(1, 1))
            .unwrap();
        assert_eq!(gpu.shape(&y), [0, 3, 5, 5]);
        let grads = gpu.conv2d_backward(y.clone(), &context).unwrap();
        assert_eq!(gpu.shape(&grads.input), [0, 2, 5, 5]);
        assert_eq!(gpu.to_vec(&grads.weight).unwrap(), vec![0.0; 54]);
        assert_eq!(gpu.to_vec(&grads.bias.unwrap()).unwrap(), vec![0.0; 3]);
    }
}

#[test]
fn gpu_conv_rejects_bad_shapes_and_parameters() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_conv bad input") else {
        return;
    };
    let tensor = |shape: &[usize]| {
        gpu.tensor_from_vec(shape, vec![0.5f32; shape.iter().product()])
            .unwrap()
    };
    let x = tensor(&[2, 3, 8, 8]);
    let w = tensor(&[4, 3, 3, 3]);
    let same = Conv2dParams::new(1, 1);
    assert!(
        gpu.conv2d_forward(&x, &w, None, Conv2dParams::new(0, 1))
            .is_err(),
        "stride 0"
    );
    assert!(
        gpu.conv2d_forward(&tensor(&[2, 3, 2, 2]), &w, None, Conv2dParams::new(1, 0))
            .is_err(),
        "a kernel larger than the padded input"
    );
    assert!(
        gpu.conv2d_forward(&x, &tensor(&[4, 2, 3, 3]), None, same)
            .is_err(),
        "a channel mismatch"
    );
    assert!(
        gpu.conv2d_forward(&tensor(&[3, 8, 8]), &w, None, same)
            .is_err(),
        "x without a batch axis"
    );
    assert!(
        gpu.conv2d_forward(&x, &tensor(&[4, 3, 3]), None, same)
            .is_err(),
        "a weight of rank 3"
    );
    assert!(
        gpu.conv2d_forward(&x, &w, Some(&tensor(&[3])), same)
            .is_err(),
        "a bias of the wrong length"
    );
    let (_, context) = gpu.conv2d_forward(&x, &w, None, same).unwrap();
    assert!(
        gpu.conv2d_backward(tensor(&[2, 4, 8, 7]), &context)
            .is_err(),
        "a gradient of another shape"
    );
}
