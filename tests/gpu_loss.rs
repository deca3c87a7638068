//! The CUDA cross-entropy losses against the CPU reference, through `LossOps`, in f32 and f64:
//! against labels and soft targets, batches of 1 to 4097 rows and 1 to 1001 classes, ordinary and
//! confident (large) logits. The loss and the gradient (whose values with `grad_loss = B` are
//! `softmax - targets`, so the softmax is compared too) are held to the tolerance class of
//! docs/design.md (relative L2 error, f32 <= 1e-5, f64 <= 1e-12; both sides compute each row's
//! log-sum-exp in f64, the GPU's `exp`/`log1p` are not the host's, so bitwise equality is not
//! required). Two runs are bitwise identical; bad shapes and labels are errors. Skips without a GPU
//! (`SKIP: no CUDA device`), fails then with `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::ops::loss::CrossEntropyContext;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Cpu, DType, Element};

const SHAPES: [(usize, usize); 8] = [
    (1, 1),
    (1, 10),
    (7, 10),
    (33, 100),
    (128, 100),
    (4097, 10),
    (64, 1001),
    (3, 2),
];

fn tolerance<E: Element>() -> f64 {
    match E::DTYPE {
        DType::F32 => 1e-5,
        DType::F64 => 1e-12,
    }
}

fn close<E: Element>(what: &str, device: &[E], reference: &[E]) {
    let widen = |v: &[E]| v.iter().map(|x| x.widen()).collect::<Vec<_>>();
    let error = relative_error(&widen(device), &widen(reference));
    assert!(
        error <= tolerance::<E>(),
        "{what} ({}): relative error {error:e} > {:e}",
        E::DTYPE,
        tolerance::<E>()
    );
}

fn bits<E: Element>(values: &[E]) -> Vec<u64> {
    values.iter().map(|v| v.widen().to_bits()).collect()
}

/// Targets of one kind, for both backends.
enum Kind<E> {
    Labels(Vec<usize>),
    Soft(Vec<E>),
}

/// The loss and the gradient with `grad_loss = B` (`softmax - targets`), on the host.
fn run<B: Backend>(
    device: &B,
    shape: [usize; 2],
    logits: &[B::Elem],
    kind: &Kind<B::Elem>,
) -> (B::Elem, Vec<B::Elem>) {
    let x = device.tensor_from_vec(&shape, logits.to_vec()).unwrap();
    let (loss, context) = match kind {
        Kind::Labels(labels) => device.cross_entropy_forward(&x, labels).unwrap(),
        Kind::Soft(targets) => {
            let t = device.tensor_from_vec(&shape, targets.clone()).unwrap();
            device.soft_cross_entropy_forward(&x, &t).unwrap()
        }
    };
    let grad = device
        .cross_entropy_backward(&context, <B::Elem>::cast(shape[0] as f64))
        .unwrap();
    (loss, device.to_vec(&grad).unwrap())
}

fn compare_all<B: Backend>(device: &B) {
    let cpu = Cpu::<B::Elem>::new();
    for (i, &(rows, classes)) in SHAPES.iter().enumerate() {
        for (scale, confidence) in [(3.0, "ordinary"), (40.0, "confident")] {
            let mut rng = SplitMix64::new(10 * i as u64 + scale as u64);
            let logits: Vec<B::Elem> = rng
                .normal_vec(rows * classes, scale)
                .into_iter()
                .map(<B::Elem>::cast)
                .collect();
            let labels: Vec<usize> = (0..rows)
                .map(|_| (rng.next_u64() % classes as u64) as usize)
                .collect();
            // Mixup-like rows: random positive weights normalised to sum 1.
            let mut soft = Vec::with_capacity(rows * classes);
            for _ in 0..rows {
                let weights: Vec<f64> = (0..classes).map(|_| rng.next_f64() + 0.01).collect();
                let sum: f64 = weights.iter().sum();
                soft.extend(weights.iter().map(|w| <B::Elem>::cast(w / sum)));
            }
            for (name, kind) in [
                ("labels", Kind::Labels(labels)),
                ("soft targets", Kind::Soft(soft)),
            ] {
                let what = format!("[{rows}, {classes}] {confidence} logits, {name}");
                let (loss, grad) = run(device, [rows, classes], &logits, &kind);
                let (loss_cpu, grad_cpu) = run(&cpu, [rows, classes], &logits, &kind);
                close(&format!("{what}: loss"), &[loss], &[loss_cpu]);
                close(&format!("{what}: softmax - targets"), &grad, &grad_cpu);
                let (loss_again, grad_again) = run(device, [rows, classes], &logits, &kind);
                assert_eq!(
                    loss_again.widen().to_bits(),
                    loss.widen().to_bits(),
                    "{what}: loss run to run"
                );
                assert_eq!(
                    bits(&grad_again),
                    bits(&grad),
                    "{what}: gradient run to run"
                );
            }
        }
    }
    // grad_loss scales the gradient.
    let logits: Vec<B::Elem> = [0.5, -1.0, 2.0, 0.0, 0.25, 3.0]
        .map(<B::Elem>::cast)
        .to_vec();
    let x = device.tensor_from_vec(&[2, 3], logits.clone()).unwrap();
    let x_cpu = cpu.tensor_from_vec(&[2, 3], logits).unwrap();
    let (_, context) = device.cross_entropy_forward(&x, &[2, 0]).unwrap();
    let (_, context_cpu) = cpu.cross_entropy_forward(&x_cpu, &[2, 0]).unwrap();
    let grad_loss = <B::Elem>::cast(-0.37);
    close(
        "grad_loss -0.37",
        &device
            .to_vec(&device.cross_entropy_backward(&context, grad_loss).unwrap())
            .unwrap(),
        &cpu.to_vec(&cpu.cross_entropy_backward(&context_cpu, grad_loss).unwrap())
            .unwrap(),
    );
}

fn rejects_bad_input<B: Backend>(device: &B) {
    let tensor = |shape: &[usize]| {
        let n = shape.iter().product();
        device
            .tensor_from_vec(shape, vec![<B::Elem>::cast(0.25); n])
            .unwrap()
    };
    let logits = tensor(&[2, 3]);
    assert!(
        device.cross_entropy_forward(&logits, &[0]).is_err(),
        "too few labels"
    );
    assert!(
        device.cross_entropy_forward(&logits, &[0, 1, 2]).is_err(),
        "too many labels"
    );
    assert!(
        device.cross_entropy_forward(&logits, &[0, 3]).is_err(),
        "a label >= K"
    );
    assert!(
        device.cross_entropy_forward(&tensor(&[6]), &[0]).is_err(),
        "1-D logits"
    );
    assert!(
        device
            .cross_entropy_forward(&tensor(&[1, 2, 3]), &[0])
            .is_err(),
        "3-D logits"
    );
    assert!(
        device
            .soft_cross_entropy_forward(&logits, &tensor(&[3, 2]))
            .is_err(),
        "targets of another shape"
    );
    assert!(
        device
            .soft_cross_entropy_forward(&tensor(&[6]), &tensor(&[6]))
            .is_err(),
        "1-D soft logits"
    );
}

fn all<E: GpuElement>(test: &str) {
    let Some(gpu) = backend_or_skip::<E>(test) else {
        return;
    };
    compare_all(&gpu);
    rejects_bad_input(&gpu);
    let softmax = gpu.tensor_from_vec(&[2, 3], vec![E::cast(0.5); 6]).unwrap();
    let mismatched = CrossEntropyContext {
        softmax: softmax.clone(),
        targets: gpu.tensor_from_vec(&[3, 2], vec![E::cast(0.5); 6]).unwrap(),
    };
    assert!(
        gpu.cross_entropy_backward(&mismatched, E::cast(1.0))
            .is_err(),
        "a context whose targets do not fit"
    );
    let flat = CrossEntropyContext {
        softmax: gpu.reshape(&softmax, &[6]).unwrap(),
        targets: gpu.reshape(&softmax, &[6]).unwrap(),
    };
    assert!(
        gpu.cross_entropy_backward(&flat, E::cast(1.0)).is_err(),
        "a 1-D context"
    );
    gpu.synchronize().unwrap();
}

#[test]
fn gpu_cross_entropy_matches_the_reference_in_f32() {
    all::<f32>("gpu_loss f32");
}

#[test]
fn gpu_cross_entropy_matches_the_reference_in_f64() {
    all::<f64>("gpu_loss f64");
}

/// This file's comparisons with the reference standing in for the device, on any machine: checks
/// the harness itself.
#[test]
fn the_harness_passes_with_the_reference_as_the_device() {
    let cpu = Cpu::<f64>::new();
    compare_all(&cpu);
    rejects_bad_input(&cpu);
}
