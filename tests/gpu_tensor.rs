//! The CUDA tensor ops against the CPU reference, through `TensorOps`, in f32 and f64. Every op
//! here is expected to equal the reference bit for bit (copies move bits; add, sub, scale, quantize
//! and the divisions round once per operation as the CPU does; sum_leading and mean_axes add in the
//! reference's order), so each comparison first checks the tolerance class of docs/design.md
//! (relative L2 error, f32 <= 1e-5, f64 <= 1e-12) and then bitwise equality, with messages that
//! tell the two failures apart. Two runs are bitwise identical. The fingerprint is not the
//! reference's hash: it is checked for equality on equal bits and sensitivity to changed bits,
//! positions and shapes; its fold into a device word equals the host's fold and does not wait for
//! the device. Sizes span one partial block up to thousands of blocks; bad shapes and parameters
//! are errors. Skips without a GPU (`SKIP: no CUDA device`), fails then with
//! `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::{backend_or_skip, with_peak_rise};
use revsnn_gpu::{Cuda, CudaTensor};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{Cpu, CpuTensor, DType, DeviceError, Element, OpError};

const SIZES: [usize; 4] = [1, 33, 4097, (1 << 20) + 3];

fn random<E: Element>(rng: &mut SplitMix64, len: usize) -> Vec<E> {
    rng.normal_vec(len, 1.5).into_iter().map(E::cast).collect()
}

fn bits<E: Element>(values: &[E]) -> Vec<u64> {
    values.iter().map(|v| v.widen().to_bits()).collect()
}

/// `gpu` against `cpu`: the tolerance class, then bit for bit.
fn check<E: Element>(what: &str, gpu: &[E], cpu: &[E]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: lengths differ");
    let tolerance = match E::DTYPE {
        DType::F32 => 1e-5,
        DType::F64 => 1e-12,
    };
    let error = relative_error(
        &gpu.iter().map(|v| v.widen()).collect::<Vec<_>>(),
        &cpu.iter().map(|v| v.widen()).collect::<Vec<_>>(),
    );
    assert!(
        error <= tolerance,
        "{what} ({}): relative error {error:e} > {tolerance:e}",
        E::DTYPE
    );
    let differing = bits(gpu)
        .iter()
        .zip(bits(cpu))
        .filter(|(a, b)| **a != *b)
        .count();
    assert_eq!(
        differing,
        0,
        "{what} ({}): within tolerance but {differing} of {} elements differ from the reference in their bits",
        E::DTYPE,
        gpu.len()
    );
}

/// The backend under test (the GPU) beside the reference.
struct Pair<B: Backend> {
    gpu: B,
    cpu: Cpu<B::Elem>,
}

impl<B: Backend> Pair<B> {
    fn tensors(&self, shape: &[usize], data: Vec<B::Elem>) -> (B::Tensor, CpuTensor<B::Elem>) {
        (
            self.gpu.tensor_from_vec(shape, data.clone()).unwrap(),
            self.cpu.tensor_from_vec(shape, data).unwrap(),
        )
    }

    fn random(&self, shape: &[usize], seed: u64) -> (B::Tensor, CpuTensor<B::Elem>) {
        let data = random(&mut SplitMix64::new(seed), shape.iter().product());
        self.tensors(shape, data)
    }

    /// Compares shapes and values, then reruns `op` on the device and requires the same bits.
    fn compare(&self, what: &str, op: impl Fn(&B) -> B::Tensor, expected: &CpuTensor<B::Elem>) {
        let y = op(&self.gpu);
        assert_eq!(
            self.gpu.shape(&y),
            self.cpu.shape(expected),
            "{what}: shape"
        );
        let values = self.gpu.to_vec(&y).unwrap();
        check(what, &values, &self.cpu.to_vec(expected).unwrap());
        let again = self.gpu.to_vec(&op(&self.gpu)).unwrap();
        assert_eq!(bits(&again), bits(&values), "{what}: differs run to run");
    }
}

fn pair<E: GpuElement>(test: &str) -> Option<Pair<Cuda<E>>> {
    backend_or_skip::<E>(test).map(|gpu| Pair {
        gpu,
        cpu: Cpu::new(),
    })
}

fn elementwise<B: Backend>(p: &Pair<B>) {
    for (i, &n) in SIZES.iter().enumerate() {
        let seed = 10 * i as u64;
        let (a, a_cpu) = p.random(&[n], seed);
        let (b, b_cpu) = p.random(&[n], seed + 1);
        p.compare(
            &format!("add n {n}"),
            |g| g.add(&a, &b).unwrap(),
            &p.cpu.add(&a_cpu, &b_cpu).unwrap(),
        );
        p.compare(
            &format!("sub n {n}"),
            |g| g.sub(&a, &b).unwrap(),
            &p.cpu.sub(&a_cpu, &b_cpu).unwrap(),
        );
        // The reusing twins, over a fresh `b` each run (written over) and over a shared one
        // (left as it was).
        let b_values = p.gpu.to_vec(&b).unwrap();
        let fresh = |g: &B| g.tensor_from_vec(&[n], b_values.clone()).unwrap();
        p.compare(
            &format!("add_reusing n {n}"),
            |g| g.add_reusing(&a, fresh(g)).unwrap(),
            &p.cpu.add(&a_cpu, &b_cpu).unwrap(),
        );
        p.compare(
            &format!("sub_reusing n {n}"),
            |g| g.sub_reusing(&a, fresh(g)).unwrap(),
            &p.cpu.sub(&a_cpu, &b_cpu).unwrap(),
        );
        p.compare(
            &format!("sub_reusing of a shared b, n {n}"),
            |g| g.sub_reusing(&a, b.clone()).unwrap(),
            &p.cpu.sub(&a_cpu, &b_cpu).unwrap(),
        );
        assert_eq!(
            bits(&p.gpu.to_vec(&b).unwrap()),
            bits(&b_values),
            "sub_reusing wrote over a shared b, n {n}"
        );
        let factor = <B::Elem>::cast(-1.7);
        p.compare(
            &format!("scale n {n}"),
            |g| g.scale(&a, factor).unwrap(),
            &p.cpu.scale(&a_cpu, factor).unwrap(),
        );
        for k in [-2, 0, 3, 10, 24] {
            p.compare(
                &format!("quantize k {k} n {n}"),
                |g| g.quantize(&a, k).unwrap(),
                &p.cpu.quantize(&a_cpu, k).unwrap(),
            );
        }
    }
    // Halves (round away from zero), small negatives (round to +0, not -0), -0 itself.
    let k = 3;
    let step = 2f64.powi(-k);
    let mut ties: Vec<B::Elem> = (-40..40)
        .map(|j| <B::Elem>::cast((j as f64 + 0.5) * step))
        .collect();
    ties.extend(
        [
            -0.0,
            0.0,
            -0.01 * step,
            0.01 * step,
            -0.5 * step,
            0.5 * step,
        ]
        .map(<B::Elem>::cast),
    );
    let (x, x_cpu) = p.tensors(&[ties.len()], ties);
    p.compare(
        "quantize ties and zeros",
        |g| g.quantize(&x, k).unwrap(),
        &p.cpu.quantize(&x_cpu, k).unwrap(),
    );
}

fn structural<B: Backend>(p: &Pair<B>) {
    let permutes: [(&[usize], &[usize]); 6] = [
        (&[33], &[0]),
        (&[3, 4097], &[1, 0]),
        (&[4, 33, 17, 65], &[0, 2, 3, 1]),
        (&[4, 33, 17, 65], &[3, 1, 0, 2]),
        (&[2, 3, 5, 7, 11, 13], &[5, 3, 1, 4, 2, 0]),
        (&[1025, 1, 1025], &[2, 1, 0]),
    ];
    for (seed, (shape, axes)) in permutes.into_iter().enumerate() {
        let (x, x_cpu) = p.random(shape, 100 + seed as u64);
        p.compare(
            &format!("permute {shape:?} by {axes:?}"),
            |g| g.permute(&x, axes).unwrap(),
            &p.cpu.permute(&x_cpu, axes).unwrap(),
        );
    }

    let shape = [4, 33, 17, 65];
    let (x, x_cpu) = p.random(&shape, 200);
    for (axis, start, len) in [
        (0, 1, 2),
        (1, 16, 17),
        (1, 0, 33),
        (2, 5, 1),
        (3, 64, 1),
        (3, 0, 32),
    ] {
        p.compare(
            &format!("narrow {shape:?} axis {axis} {start}+{len}"),
            |g| g.narrow(&x, axis, start, len).unwrap(),
            &p.cpu.narrow(&x_cpu, axis, start, len).unwrap(),
        );
    }

    for axis in 0..4 {
        let parts: Vec<(B::Tensor, CpuTensor<B::Elem>)> = [1, 3, 16]
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let mut part = shape.to_vec();
                part[axis] = size;
                p.random(&part, 300 + 10 * axis as u64 + i as u64)
            })
            .collect();
        let gpu_parts: Vec<&B::Tensor> = parts.iter().map(|(g, _)| g).collect();
        let cpu_parts: Vec<&CpuTensor<B::Elem>> = parts.iter().map(|(_, c)| c).collect();
        p.compare(
            &format!("concat along {axis}"),
            |g| g.concat(&gpu_parts, axis).unwrap(),
            &p.cpu.concat(&cpu_parts, axis).unwrap(),
        );
    }

    for (i, &n) in SIZES.iter().enumerate() {
        let (x, x_cpu) = p.random(&[n], 400 + i as u64);
        for times in [1, 4] {
            p.compare(
                &format!("repeat_leading n {n} times {times}"),
                |g| g.repeat_leading(&x, times).unwrap(),
                &p.cpu.repeat_leading(&x_cpu, times).unwrap(),
            );
        }
    }
    let (x, x_cpu) = p.random(&[3, 5, 7], 410);
    p.compare(
        "repeat_leading [3, 5, 7] times 10",
        |g| g.repeat_leading(&x, 10).unwrap(),
        &p.cpu.repeat_leading(&x_cpu, 10).unwrap(),
    );
}

fn reductions<B: Backend>(p: &Pair<B>) {
    for (i, &n) in SIZES.iter().enumerate() {
        for steps in [1, 4, 7] {
            let (x, x_cpu) = p.random(&[steps, n], 500 + 10 * i as u64 + steps as u64);
            p.compare(
                &format!("sum_leading T {steps} n {n}"),
                |g| g.sum_leading(&x).unwrap(),
                &p.cpu.sum_leading(&x_cpu).unwrap(),
            );
        }
    }
    let (x, x_cpu) = p.random(&[4, 3, 5, 2], 550);
    p.compare(
        "sum_leading [4, 3, 5, 2]",
        |g| g.sum_leading(&x).unwrap(),
        &p.cpu.sum_leading(&x_cpu).unwrap(),
    );

    let means: [(&[usize], &[usize]); 10] = [
        (&[4, 8, 33, 5, 5], &[3, 4]),
        (&[4, 8, 33, 5, 5], &[0]),
        (&[4, 8, 33, 5, 5], &[0, 3]),
        (&[4, 8, 33, 5, 5], &[4, 2, 0]),
        (&[4, 8, 33, 5, 5], &[1]),
        (&[4, 8, 33, 5, 5], &[]),
        (&[4, 8, 33, 5, 5], &[0, 1, 2, 3, 4]),
        (&[(1 << 20) + 3], &[0]),
        (&[7, 4097], &[0]),
        (&[7, 4097], &[1]),
    ];
    for (seed, (shape, axes)) in means.into_iter().enumerate() {
        let (x, x_cpu) = p.random(shape, 600 + seed as u64);
        let expected = p.cpu.mean_axes(&x_cpu, axes).unwrap();
        p.compare(
            &format!("mean_axes {shape:?} over {axes:?}"),
            |g| g.mean_axes(&x, axes).unwrap(),
            &expected,
        );
        let (dy, dy_cpu) = p.random(&p.cpu.shape(&expected), 700 + seed as u64);
        p.compare(
            &format!("mean_axes_backward {shape:?} over {axes:?}"),
            |g| g.mean_axes_backward(&dy, shape, axes).unwrap(),
            &p.cpu.mean_axes_backward(&dy_cpu, shape, axes).unwrap(),
        );
    }
}

/// The backend's fingerprint is the reference's value, whatever the size (one element, runs of
/// the reference's parallel sum and of the device's blocks) and the layout (a permuted view on
/// the reference, the permuted copy on the device).
fn fingerprints_match_the_reference<B: Backend>(p: &Pair<B>) {
    for (i, &n) in SIZES.iter().enumerate() {
        let (x, x_cpu) = p.random(&[n], 900 + i as u64);
        assert_eq!(
            p.gpu.fingerprint(&x).unwrap(),
            p.cpu.fingerprint(&x_cpu).unwrap(),
            "n {n}"
        );
    }
    let (x, x_cpu) = p.random(&[4, 33, 129], 910);
    let permuted_cpu = x_cpu.clone().permuted_axes(vec![2, 0, 1]);
    assert_eq!(
        p.gpu
            .fingerprint(&p.gpu.permute(&x, &[2, 0, 1]).unwrap())
            .unwrap(),
        p.cpu.fingerprint(&permuted_cpu.into_shared()).unwrap(),
        "a permuted [4, 33, 129]"
    );
}

fn fingerprints<B: Backend>(gpu: &B) {
    for (i, &n) in SIZES.iter().enumerate() {
        let data: Vec<B::Elem> = random(&mut SplitMix64::new(800 + i as u64), n);
        let x = gpu.tensor_from_vec(&[n], data.clone()).unwrap();
        let fingerprint = gpu.fingerprint(&x).unwrap();
        assert_eq!(
            gpu.fingerprint(&x).unwrap(),
            fingerprint,
            "n {n}: run to run"
        );
        let copy = gpu.tensor_from_vec(&[n], data.clone()).unwrap();
        assert_eq!(
            gpu.fingerprint(&copy).unwrap(),
            fingerprint,
            "n {n}: equal bits"
        );
        let reshaped = gpu.reshape(&x, &[1, n]).unwrap();
        assert_ne!(
            gpu.fingerprint(&reshaped).unwrap(),
            fingerprint,
            "n {n}: shape"
        );

        let mut flipped = data.clone();
        let last = <B::Elem>::cast(flipped[n - 1].widen() * (1.0 + 1e-3));
        flipped[n - 1] = last;
        let flipped = gpu.tensor_from_vec(&[n], flipped).unwrap();
        assert_ne!(
            gpu.fingerprint(&flipped).unwrap(),
            fingerprint,
            "n {n}: a changed value"
        );

        let mut zero = data.clone();
        zero[0] = <B::Elem>::cast(0.0);
        let zero_fingerprint = gpu
            .fingerprint(&gpu.tensor_from_vec(&[n], zero.clone()).unwrap())
            .unwrap();
        zero[0] = <B::Elem>::cast(-0.0);
        let negative_zero = gpu
            .fingerprint(&gpu.tensor_from_vec(&[n], zero).unwrap())
            .unwrap();
        assert_ne!(
            zero_fingerprint, negative_zero,
            "n {n}: +0 and -0 differ in bits"
        );

        if n > 1 {
            let mut swapped = data.clone();
            swapped.swap(0, n - 1);
            let swapped = gpu.tensor_from_vec(&[n], swapped).unwrap();
            assert_ne!(
                gpu.fingerprint(&swapped).unwrap(),
                fingerprint,
                "n {n}: moved values"
            );
        }
    }
}

/// Fingerprints folded into a backend word equal the host's fold of the same fingerprints, and
/// words compare where they live; neither waits for the device: the host waits only to read a
/// word back.
fn folded_fingerprints<B: Compute>(gpu: &B) {
    let tensors: Vec<B::Tensor> = SIZES
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let data: Vec<B::Elem> = random(&mut SplitMix64::new(850 + i as u64), n);
            gpu.tensor_from_vec(&[n], data).unwrap()
        })
        .collect();
    let mut expected = 0u64;
    for x in &tensors {
        expected = expected.rotate_left(5) ^ gpu.fingerprint(x).unwrap();
    }
    let waits = || gpu.transfer_counts().map(|counts| counts.host_waits);
    let before = waits();
    let mut word = gpu.zero_word().unwrap();
    for x in &tensors {
        gpu.fold_fingerprint(&mut word, x).unwrap();
    }
    let mut reversed = gpu.zero_word().unwrap();
    for x in tensors.iter().rev() {
        gpu.fold_fingerprint(&mut reversed, x).unwrap();
    }
    let mut unequal = gpu.zero_word().unwrap();
    gpu.count_unequal(&mut unequal, &word, &word).unwrap();
    gpu.count_unequal(&mut unequal, &word, &reversed).unwrap();
    gpu.count_unequal(&mut unequal, &reversed, &word).unwrap();
    assert_eq!(
        waits(),
        before,
        "folding and comparing waited for the device"
    );
    assert_eq!(gpu.read_word(&word).unwrap(), expected, "the host's fold");
    assert_ne!(
        gpu.read_word(&reversed).unwrap(),
        expected,
        "the order counts"
    );
    assert_eq!(gpu.read_word(&unequal).unwrap(), 2, "two unequal pairs");
    long_chains(gpu, &tensors);
}

/// Chains longer than a CUDA word's pending slots (`revsnn_gpu::word::PENDING_SLOTS`, 32), which
/// it folds on the device when they run out: each equals the host's fold, and comparing one with
/// itself, with its copy and with the chain one fold shorter counts only the last.
fn long_chains<B: Compute>(gpu: &B, tensors: &[B::Tensor]) {
    let slots = revsnn_gpu::word::PENDING_SLOTS;
    let fingerprints: Vec<u64> = tensors
        .iter()
        .map(|x| gpu.fingerprint(x).unwrap())
        .collect();
    for len in [
        slots - 1,
        slots,
        slots + 1,
        2 * slots,
        2 * slots + 1,
        3 * slots + 5,
    ] {
        let chain = |len: usize| {
            let mut word = gpu.zero_word().unwrap();
            for i in 0..len {
                gpu.fold_fingerprint(&mut word, &tensors[i % tensors.len()])
                    .unwrap();
            }
            word
        };
        let (word, copy, shorter) = (chain(len), chain(len), chain(len - 1));
        let expected = (0..len).fold(0u64, |word, i| {
            word.rotate_left(5) ^ fingerprints[i % fingerprints.len()]
        });
        assert_eq!(gpu.read_word(&word).unwrap(), expected, "{len} folds");
        let mut unequal = gpu.zero_word().unwrap();
        gpu.count_unequal(&mut unequal, &word, &word).unwrap();
        gpu.count_unequal(&mut unequal, &word, &copy).unwrap();
        gpu.count_unequal(&mut unequal, &word, &shorter).unwrap();
        assert_eq!(
            gpu.read_word(&unequal).unwrap(),
            1,
            "{len} folds: one unequal pair"
        );
    }
}

/// The non-finite count against the reference's, over tensors of every size with NaN and
/// infinities at the first, last and scattered positions, summed over several tensors in one call
/// and over 300 (several launches).
fn non_finite_counts<B: Backend>(p: &Pair<B>) {
    let special = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    let mut gpu_tensors = Vec::new();
    let mut cpu_tensors = Vec::new();
    for (i, &n) in SIZES.iter().enumerate() {
        let mut rng = SplitMix64::new(900 + i as u64);
        let mut data: Vec<B::Elem> = random(&mut rng, n);
        for (k, position) in [0, n - 1, n / 2, n / 3].into_iter().enumerate() {
            data[position] = <B::Elem>::cast(special[k % 3]);
        }
        let (x, x_cpu) = p.tensors(&[n], data);
        let expected = p.cpu.count_non_finite(&[&x_cpu]).unwrap();
        assert_eq!(p.gpu.count_non_finite(&[&x]).unwrap(), expected, "n {n}");
        gpu_tensors.push(x);
        cpu_tensors.push(x_cpu);
    }
    let (finite, _) = p.random(&[3, 4097], 950);
    gpu_tensors.push(finite);
    let gpu_refs: Vec<&B::Tensor> = gpu_tensors.iter().collect();
    let cpu_refs: Vec<_> = cpu_tensors.iter().collect();
    let total = p.cpu.count_non_finite(&cpu_refs).unwrap();
    assert_eq!(
        p.gpu.count_non_finite(&gpu_refs).unwrap(),
        total,
        "all at once"
    );
    assert_eq!(p.gpu.count_non_finite(&gpu_refs[4..]).unwrap(), 0, "finite");
    // Past one launch's table of 128 tensors: the list many times over.
    let gpu_cycled: Vec<_> = gpu_refs[..4].iter().copied().cycle().take(300).collect();
    let cpu_cycled: Vec<_> = cpu_refs.iter().copied().cycle().take(300).collect();
    assert_eq!(
        p.gpu.count_non_finite(&gpu_cycled).unwrap(),
        p.cpu.count_non_finite(&cpu_cycled).unwrap(),
        "300 tensors"
    );
    assert_eq!(p.gpu.count_non_finite(&[]).unwrap(), 0, "no tensor");
}

macro_rules! typed_tests {
    ($e:ty, $elementwise:ident, $structural:ident, $reductions:ident, $fingerprint:ident, $non_finite:ident) => {
        #[test]
        fn $elementwise() {
            if let Some(p) = pair::<$e>(stringify!($elementwise)) {
                elementwise(&p);
            }
        }

        #[test]
        fn $structural() {
            if let Some(p) = pair::<$e>(stringify!($structural)) {
                structural(&p);
            }
        }

        #[test]
        fn $reductions() {
            if let Some(p) = pair::<$e>(stringify!($reductions)) {
                reductions(&p);
                fingerprints_match_the_reference(&p);
            }
        }

        #[test]
        fn $fingerprint() {
            if let Some(gpu) = backend_or_skip::<$e>(stringify!($fingerprint)) {
                fingerprints(&gpu);
                folded_fingerprints(&gpu);
            }
        }

        #[test]
        fn $non_finite() {
            if let Some(p) = pair::<$e>(stringify!($non_finite)) {
                non_finite_counts(&p);
            }
        }
    };
}

typed_tests!(
    f32,
    gpu_elementwise_ops_match_the_reference_in_f32,
    gpu_structural_ops_match_the_reference_in_f32,
    gpu_sums_and_means_match_the_reference_in_f32,
    gpu_fingerprint_is_deterministic_and_sensitive_in_f32,
    gpu_non_finite_count_matches_the_reference_in_f32
);
typed_tests!(
    f64,
    gpu_elementwise_ops_match_the_reference_in_f64,
    gpu_structural_ops_match_the_reference_in_f64,
    gpu_sums_and_means_match_the_reference_in_f64,
    gpu_fingerprint_is_deterministic_and_sensitive_in_f64,
    gpu_non_finite_count_matches_the_reference_in_f64
);

/// Zero-size operands and results: kept apart because they depend on zero-byte allocations.
#[test]
fn gpu_tensor_ops_handle_empty_tensors() {
    let Some(p) = pair::<f32>("gpu_tensor empty") else {
        return;
    };
    let (empty, empty_cpu) = p.tensors(&[0, 5], vec![]);
    let (x, x_cpu) = p.random(&[3, 5], 900);
    p.compare(
        "add of empty",
        |g| g.add(&empty, &empty).unwrap(),
        &p.cpu.add(&empty_cpu, &empty_cpu).unwrap(),
    );
    p.compare(
        "permute of empty",
        |g| g.permute(&empty, &[1, 0]).unwrap(),
        &p.cpu.permute(&empty_cpu, &[1, 0]).unwrap(),
    );
    p.compare(
        "narrow to nothing",
        |g| g.narrow(&x, 1, 2, 0).unwrap(),
        &p.cpu.narrow(&x_cpu, 1, 2, 0).unwrap(),
    );
    p.compare(
        "concat with an empty part",
        |g| g.concat(&[&empty, &x, &empty], 0).unwrap(),
        &p.cpu.concat(&[&empty_cpu, &x_cpu, &empty_cpu], 0).unwrap(),
    );
    p.compare(
        "sum_leading over T = 0",
        |g| g.sum_leading(&empty).unwrap(),
        &p.cpu.sum_leading(&empty_cpu).unwrap(),
    );
    p.compare(
        "mean_axes with no outputs",
        |g| g.mean_axes(&empty, &[1]).unwrap(),
        &p.cpu.mean_axes(&empty_cpu, &[1]).unwrap(),
    );
    p.compare(
        "quantize of empty",
        |g| g.quantize(&empty, 4).unwrap(),
        &p.cpu.quantize(&empty_cpu, 4).unwrap(),
    );
    assert!(
        p.gpu.mean_axes(&empty, &[0]).is_err(),
        "a mean over no elements"
    );
    let other_empty = p.gpu.zeros(&[5, 0]).unwrap();
    assert_ne!(
        p.gpu.fingerprint(&empty).unwrap(),
        p.gpu.fingerprint(&other_empty).unwrap(),
        "empty tensors of different shapes"
    );
}

#[test]
fn gpu_tensor_ops_reject_bad_shapes_and_parameters() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_tensor bad input") else {
        return;
    };
    let x = gpu.tensor_from_vec(&[2, 3], vec![1.0; 6]).unwrap();
    let y = gpu.tensor_from_vec(&[3, 2], vec![1.0; 6]).unwrap();
    let scalar = gpu.tensor_from_vec(&[], vec![1.0]).unwrap();
    assert!(gpu.add(&x, &y).is_err(), "add of different shapes");
    assert!(gpu.sub(&x, &y).is_err(), "sub of different shapes");
    assert!(gpu.permute(&x, &[0, 0]).is_err(), "a repeated axis");
    assert!(gpu.permute(&x, &[0]).is_err(), "too few axes");
    assert!(gpu.permute(&x, &[0, 2]).is_err(), "an axis out of range");
    let nine = gpu.zeros(&[2; 9]).unwrap();
    let reversed: Vec<usize> = (0..9).rev().collect();
    assert!(
        gpu.permute(&nine, &reversed).is_err(),
        "more than 8 unmergeable axes"
    );
    assert!(gpu.narrow(&x, 2, 0, 1).is_err(), "narrow axis out of range");
    assert!(gpu.narrow(&x, 1, 2, 2).is_err(), "narrow past the end");
    assert!(gpu.concat(&[], 0).is_err(), "concat of nothing");
    assert!(
        gpu.concat(&[&x, &y], 0).is_err(),
        "concat of mismatched parts"
    );
    assert!(
        gpu.concat(&[&x, &x], 2).is_err(),
        "concat axis out of range"
    );
    assert!(gpu.repeat_leading(&x, 0).is_err(), "repeat zero times");
    assert!(gpu.sum_leading(&scalar).is_err(), "sum_leading of a scalar");
    assert!(gpu.quantize(&x, 61).is_err(), "k > 60");
    assert!(gpu.quantize(&x, -61).is_err(), "k < -60");
    assert!(gpu.mean_axes(&x, &[2]).is_err(), "mean axis out of range");
    assert!(gpu.mean_axes(&x, &[1, 1]).is_err(), "a repeated mean axis");
    let dy = gpu.tensor_from_vec(&[3], vec![1.0; 3]).unwrap();
    assert!(
        gpu.mean_axes_backward(&dy, &[2, 3], &[1]).is_err(),
        "a gradient of the wrong shape"
    );
    assert!(
        gpu.mean_axes_backward(&dy, &[2, 3], &[2]).is_err(),
        "a backward axis out of range"
    );
    gpu.synchronize().unwrap();
}

/// `add_reusing` and `sub_reusing` write over an unshared `b`: the result takes `b`'s buffer, so
/// the peak does not rise above the live bytes before the op, while `add` and `sub` (or a shared
/// `b`) allocate the result's bytes.
#[test]
fn the_reusing_sums_allocate_nothing_for_an_unshared_operand() {
    let Some(gpu) = backend_or_skip::<f32>("gpu_tensor reusing sums") else {
        return;
    };
    let device = gpu.device();
    let n = 4097;
    let values = random::<f32>(&mut SplitMix64::new(3), n);
    let a = gpu.tensor_from_vec(&[n], values.clone()).unwrap();
    let rise = |op: &dyn Fn(CudaTensor<f32>) -> CudaTensor<f32>, b: CudaTensor<f32>| {
        with_peak_rise(device, || op(b)).1
    };
    let bytes = n * size_of::<f32>();
    let fresh = || gpu.tensor_from_vec(&[n], values.clone()).unwrap();
    let add_reusing = |b| gpu.add_reusing(&a, b).unwrap();
    let sub_reusing = |b| gpu.sub_reusing(&a, b).unwrap();
    let add = |b: CudaTensor<f32>| gpu.add(&a, &b).unwrap();
    for (what, op, expected) in [
        ("add_reusing", &add_reusing as &dyn Fn(_) -> _, 0),
        ("sub_reusing", &sub_reusing, 0),
        ("add", &add, bytes),
    ] {
        assert_eq!(rise(op, fresh()), expected, "{what}");
    }
    let shared = fresh();
    let shared_rise = rise(&sub_reusing, shared.clone());
    assert_eq!(shared_rise, bytes, "sub_reusing of a shared b");
}

/// An allocation the device cannot hold (2^60 bytes) reaches the caller of the op as the
/// contract's typed out-of-memory error, matchable above the ops, its message saying what to do;
/// the device stays usable after it.
#[test]
fn gpu_out_of_memory_is_a_matchable_device_error() {
    let Some(gpu) = backend_or_skip::<f64>("gpu_tensor out of memory") else {
        return;
    };
    let error = gpu.zeros(&[1 << 57]).unwrap_err();
    assert!(
        matches!(
            &error,
            OpError::Device {
                backend: "cuda",
                error: DeviceError::OutOfMemory { requested_bytes, .. },
            } if *requested_bytes == 1 << 60
        ),
        "expected out of memory, got {error:?}"
    );
    assert!(error.to_string().contains("--batch"), "{error}");
    let x = gpu.zeros(&[4]).unwrap();
    assert_eq!(gpu.to_vec(&x).unwrap(), vec![0.0; 4]);
    gpu.synchronize().unwrap();
}

/// This file's comparisons with the reference standing in for the device, on any machine: checks
/// the harness itself (shapes the reference accepts, the fingerprint's sensitivity cases).
#[test]
fn the_harness_passes_with_the_reference_as_the_device() {
    let p = Pair {
        gpu: Cpu::<f64>::new(),
        cpu: Cpu::new(),
    };
    elementwise(&p);
    structural(&p);
    reductions(&p);
    fingerprints_match_the_reference(&p);
    fingerprints(&p.gpu);
    folded_fingerprints(&p.gpu);
}
