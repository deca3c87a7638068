//! Cross-entropy losses: forwards against naive f64 formulas and hand-checked values, stability
//! for large logits, backwards against central finite differences of the loss itself (f64,
//! relative error in the 2-norm over the whole tensor <= 1e-6), shapes by proptest, bitwise
//! determinism across thread counts, and typed errors.

use ndarray::{ArcArray, IxDyn};
use proptest::prelude::*;
use revsnn_reference::ops::loss::{self, CrossEntropyContext, Targets};
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, central_difference, relative_error};
use revsnn_reference::{Cpu, CpuTensor, Element, OpError};

const FD_STEP: f64 = 1e-5;
const FD_TOLERANCE: f64 = 1e-6;

fn tensor<E: Element>(shape: &[usize], data: &[f64]) -> CpuTensor<E> {
    ArcArray::from_shape_vec(IxDyn(shape), data.iter().map(|&v| E::cast(v)).collect()).unwrap()
}

fn values<E: Element>(x: &CpuTensor<E>) -> Vec<f64> {
    x.iter().map(|v| v.widen()).collect()
}

/// Naive `-log softmax(row)[k]` for every `k`, unstabilised (fine for moderate logits).
fn naive_neg_log_softmax(row: &[f64]) -> Vec<f64> {
    let z: f64 = row.iter().map(|x| x.exp()).sum();
    row.iter().map(|x| -(x.exp() / z).ln()).collect()
}

fn naive_hard(logits: &[f64], classes: usize, labels: &[usize]) -> f64 {
    let rows: Vec<&[f64]> = logits.chunks(classes).collect();
    rows.iter()
        .zip(labels)
        .map(|(row, &l)| naive_neg_log_softmax(row)[l])
        .sum::<f64>()
        / labels.len() as f64
}

fn naive_soft(logits: &[f64], targets: &[f64], classes: usize) -> f64 {
    let batch = logits.len() / classes;
    logits
        .chunks(classes)
        .zip(targets.chunks(classes))
        .map(|(row, t)| {
            naive_neg_log_softmax(row)
                .iter()
                .zip(t)
                .map(|(nl, t)| t * nl)
                .sum::<f64>()
        })
        .sum::<f64>()
        / batch as f64
}

/// Random target distributions: positive weights normalised per row.
fn random_targets(rng: &mut SplitMix64, batch: usize, classes: usize) -> Vec<f64> {
    let mut t: Vec<f64> = (0..batch * classes)
        .map(|_| rng.uniform(0.0, 1.0))
        .collect();
    for row in t.chunks_mut(classes) {
        let s: f64 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    t
}

struct Case {
    batch: usize,
    classes: usize,
    logits: Vec<f64>,
    labels: Vec<usize>,
    targets: Vec<f64>,
    grad_loss: f64,
}

impl Case {
    fn new(seed: u64, batch: usize, classes: usize) -> Case {
        let mut rng = SplitMix64::new(seed);
        Case {
            batch,
            classes,
            logits: rng.normal_vec(batch * classes, 2.0),
            labels: (0..batch)
                .map(|_| (rng.next_u64() % classes as u64) as usize)
                .collect(),
            targets: random_targets(&mut rng, batch, classes),
            grad_loss: rng.uniform(0.5, 2.0),
        }
    }

    fn shape(&self) -> [usize; 2] {
        [self.batch, self.classes]
    }

    fn hard(&self, logits: &[f64]) -> f64 {
        loss::cross_entropy_forward(&tensor::<f64>(&self.shape(), logits), &self.labels)
            .unwrap()
            .0
    }

    fn soft(&self, logits: &[f64]) -> f64 {
        let targets = tensor::<f64>(&self.shape(), &self.targets);
        loss::soft_cross_entropy_forward(&tensor::<f64>(&self.shape(), logits), &targets)
            .unwrap()
            .0
    }

    /// Forwards against the naive formulas and backwards against finite differences of
    /// `grad_loss * L`; returns an error message on the first disagreement.
    fn check(&self) -> Result<(), String> {
        let hard = self.hard(&self.logits);
        let want = naive_hard(&self.logits, self.classes, &self.labels);
        if (hard - want).abs() > 1e-12 * want.abs().max(1.0) {
            return Err(format!("hard loss {hard}, naive {want}"));
        }
        let soft = self.soft(&self.logits);
        let want = naive_soft(&self.logits, &self.targets, self.classes);
        if (soft - want).abs() > 1e-12 * want.abs().max(1.0) {
            return Err(format!("soft loss {soft}, naive {want}"));
        }
        let x = tensor::<f64>(&self.shape(), &self.logits);
        let t = tensor::<f64>(&self.shape(), &self.targets);
        let (_, hard_ctx) = loss::cross_entropy_forward(&x, &self.labels).unwrap();
        let (_, soft_ctx) = loss::soft_cross_entropy_forward(&x, &t).unwrap();
        let g = self.grad_loss;
        for (name, context, fd) in [
            (
                "hard",
                &hard_ctx,
                central_difference(|x| g * self.hard(x), &self.logits, FD_STEP),
            ),
            (
                "soft",
                &soft_ctx,
                central_difference(|x| g * self.soft(x), &self.logits, FD_STEP),
            ),
        ] {
            let grad = loss::backward(context, g).unwrap();
            if grad.shape() != self.shape() {
                return Err(format!("{name} gradient shape {:?}", grad.shape()));
            }
            let err = relative_error(&values(&grad), &fd);
            if err > FD_TOLERANCE {
                return Err(format!("{name} gradient relative error {err:e}"));
            }
        }
        Ok(())
    }
}

#[test]
fn hand_checked_values() {
    // Equal logits: the loss is ln K whatever the label.
    let (l, _) = loss::cross_entropy_forward(&tensor::<f64>(&[2, 4], &[0.3; 8]), &[0, 3]).unwrap();
    assert!((l - 4f64.ln()).abs() < 1e-15);
    // logits [0, ln 3]: softmax [1/4, 3/4]; labels 0 and 1 give ln 4 and ln 4/3, mean ln(4/sqrt 3).
    let x = tensor::<f64>(&[2, 2], &[0.0, 3f64.ln(), 0.0, 3f64.ln()]);
    let (l, ctx) = loss::cross_entropy_forward(&x, &[0, 1]).unwrap();
    assert!((l - (4.0 / 3f64.sqrt()).ln()).abs() < 1e-15);
    assert!(relative_error(&values(&ctx.softmax), &[0.25, 0.75, 0.25, 0.75]) < 1e-15);
    // Gradient (softmax - onehot) / B with grad_loss 2: [[-3/4, 3/4], [1/4, -1/4]].
    let grad = loss::backward(&ctx, 2.0).unwrap();
    assert!(relative_error(&values(&grad), &[-0.75, 0.75, 0.25, -0.25]) < 1e-15);
    // Soft targets [1/2, 1/2]: the loss is (ln 4 + ln 4/3) / 2 per row.
    let t = tensor::<f64>(&[2, 2], &[0.5; 4]);
    let (l, ctx) = loss::soft_cross_entropy_forward(&x, &t).unwrap();
    assert!((l - (4.0 / 3f64.sqrt()).ln()).abs() < 1e-15);
    let grad = loss::backward(&ctx, 1.0).unwrap();
    assert!(relative_error(&values(&grad), &[-0.125, 0.125, -0.125, 0.125]) < 1e-15);
}

#[test]
fn large_logits_are_stable() {
    // Shifting every logit of a row by a constant changes nothing; huge ones must not overflow.
    let base = [1.0, 2.0, -0.5, 0.25];
    for shift in [1000.0, -1000.0, 1e6] {
        let shifted: Vec<f64> = base.iter().map(|x| x + shift).collect();
        let (want, want_ctx) =
            loss::cross_entropy_forward(&tensor::<f64>(&[1, 4], &base), &[2]).unwrap();
        let (got, ctx) =
            loss::cross_entropy_forward(&tensor::<f64>(&[1, 4], &shifted), &[2]).unwrap();
        assert!(got.is_finite(), "shift {shift}");
        assert!((got - want).abs() < 1e-9, "shift {shift}: {got} vs {want}");
        assert!(relative_error(&values(&ctx.softmax), &values(&want_ctx.softmax)) < 1e-9);
        let (got32, _) =
            loss::cross_entropy_forward(&tensor::<f32>(&[1, 4], &shifted), &[2]).unwrap();
        assert!(got32.is_finite(), "f32 shift {shift}");
    }
    // A confidently right prediction has a tiny positive loss, not 0 or NaN.
    let (l, _) = loss::cross_entropy_forward(&tensor::<f64>(&[1, 2], &[0.0, 40.0]), &[1]).unwrap();
    assert!(l > 0.0 && l < 1e-16);
    assert!((l - (-40f64).exp()).abs() < 1e-30);
    // A NaN logit gives a NaN loss (the training loop turns it into an error), not a panic.
    let (l, _) =
        loss::cross_entropy_forward(&tensor::<f64>(&[2, 2], &[0.0, f64::NAN, 1.0, 2.0]), &[0, 1])
            .unwrap();
    assert!(l.is_nan());
}

#[test]
fn one_hot_soft_targets_equal_class_labels() {
    let case = Case::new(3, 5, 7);
    let mut one_hot = vec![0.0; 35];
    for (b, &l) in case.labels.iter().enumerate() {
        one_hot[b * 7 + l] = 1.0;
    }
    let x = tensor::<f64>(&case.shape(), &case.logits);
    let (hard, hard_ctx) = loss::cross_entropy_forward(&x, &case.labels).unwrap();
    let (soft, soft_ctx) =
        loss::soft_cross_entropy_forward(&x, &tensor(&case.shape(), &one_hot)).unwrap();
    assert!((hard - soft).abs() < 1e-14);
    let g_hard = loss::backward(&hard_ctx, 1.5).unwrap();
    let g_soft = loss::backward(&soft_ctx, 1.5).unwrap();
    assert_eq!(values(&g_hard), values(&g_soft));
}

#[test]
fn forwards_and_backwards_match_naive_formulas_and_finite_differences() {
    for (seed, (batch, classes)) in [(3, 5), (7, 2), (1, 10), (4, 1), (2, 100)]
        .into_iter()
        .enumerate()
    {
        if let Err(msg) = Case::new(seed as u64, batch, classes).check() {
            panic!("[{batch}, {classes}]: {msg}");
        }
    }
}

#[test]
fn a_strided_input_gives_the_same_result_as_its_row_major_copy() {
    let case = Case::new(4, 6, 5);
    // [6, 5] views of [5, 6] arrays.
    let transpose = |v: &[f64]| -> CpuTensor<f64> {
        let t: Vec<f64> = (0..30).map(|i| v[(i % 6) * 5 + i / 6]).collect();
        tensor::<f64>(&[5, 6], &t).reversed_axes()
    };
    let (x, t) = (transpose(&case.logits), transpose(&case.targets));
    assert!(!x.is_standard_layout());
    assert_eq!(values(&x), case.logits);
    let (l, ctx) = loss::soft_cross_entropy_forward(&x, &t).unwrap();
    assert_eq!(l, case.soft(&case.logits));
    let plain = loss::soft_cross_entropy_forward(
        &tensor::<f64>(&case.shape(), &case.logits),
        &tensor(&case.shape(), &case.targets),
    )
    .unwrap()
    .1;
    assert_eq!(
        values(&loss::backward(&ctx, 1.0).unwrap()),
        values(&loss::backward(&plain, 1.0).unwrap())
    );
    assert_eq!(
        loss::cross_entropy_forward(&x, &case.labels).unwrap().0,
        case.hard(&case.logits)
    );
}

#[test]
fn the_backend_delegates_to_the_kernels() {
    let cpu = Cpu::<f32>::new();
    let x = cpu.tensor_from_vec(&[2, 3], vec![0.5; 6]).unwrap();
    let (l, ctx) = cpu.cross_entropy_forward(&x, &[0, 2]).unwrap();
    assert!((l - 3f32.ln()).abs() < 1e-6);
    let t = cpu.tensor_from_vec(&[2, 3], vec![1.0 / 3.0; 6]).unwrap();
    let (ls, soft_ctx) = cpu.soft_cross_entropy_forward(&x, &t).unwrap();
    assert!((ls - 3f32.ln()).abs() < 1e-6);
    let g = cpu.cross_entropy_backward(&ctx, 1.0).unwrap();
    assert_eq!(cpu.shape(&g), [2, 3]);
    let g = cpu
        .to_vec(&cpu.cross_entropy_backward(&soft_ctx, 1.0).unwrap())
        .unwrap();
    assert!(g.iter().all(|v| v.abs() < 1e-7));
}

/// The losses and gradients of both cross-entropies, widened to f64.
fn run_all<E: Element>(case: &Case) -> Vec<Vec<f64>> {
    let x = tensor::<E>(&case.shape(), &case.logits);
    let t = tensor::<E>(&case.shape(), &case.targets);
    let (hard, hard_ctx) = loss::cross_entropy_forward(&x, &case.labels).unwrap();
    let (soft, soft_ctx) = loss::soft_cross_entropy_forward(&x, &t).unwrap();
    let g = E::cast(case.grad_loss);
    vec![
        vec![hard.widen(), soft.widen()],
        values(&hard_ctx.softmax),
        values(&loss::backward(&hard_ctx, g).unwrap()),
        values(&loss::backward(&soft_ctx, g).unwrap()),
    ]
}

fn bits(v: &[Vec<f64>]) -> Vec<Vec<u64>> {
    v.iter()
        .map(|t| t.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn losses_and_gradients_are_bitwise_identical_across_thread_counts() {
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    };
    let (one, two) = (pool(1), pool(2));
    let case = Case::new(8, 2048, 100);
    let a = one.install(|| run_all::<f64>(&case));
    let b = two.install(|| run_all::<f64>(&case));
    assert_eq!(bits(&a), bits(&b));
    let a = one.install(|| run_all::<f32>(&case));
    let b = two.install(|| run_all::<f32>(&case));
    assert_eq!(bits(&a), bits(&b));
}

#[test]
fn bad_inputs_are_errors() {
    let x = tensor::<f64>(&[2, 3], &[0.0; 6]);
    let is_shape = |r: Result<(), OpError>| matches!(r, Err(OpError::ShapeMismatch { .. }));
    let hard =
        |x: &CpuTensor<f64>, labels: &[usize]| loss::cross_entropy_forward(x, labels).map(|_| ());
    let soft =
        |x: &CpuTensor<f64>, t: &CpuTensor<f64>| loss::soft_cross_entropy_forward(x, t).map(|_| ());

    assert!(matches!(
        hard(&x, &[0, 3]),
        Err(OpError::InvalidParameter { name: "label", .. })
    ));
    assert!(is_shape(hard(&x, &[0])));
    assert!(is_shape(hard(&x, &[0, 1, 2])));
    assert!(is_shape(hard(&tensor(&[6], &[0.0; 6]), &[0; 6])));
    assert!(is_shape(hard(&tensor(&[1, 2, 3], &[0.0; 6]), &[0])));
    assert!(is_shape(hard(&tensor(&[0, 3], &[]), &[])));
    assert!(is_shape(hard(&tensor(&[2, 0], &[]), &[0, 0])));

    assert!(is_shape(soft(&x, &tensor(&[3, 2], &[0.0; 6]))));
    assert!(is_shape(soft(&x, &tensor(&[2, 3, 1], &[0.0; 6]))));
    assert!(is_shape(soft(&tensor(&[0, 3], &[]), &tensor(&[0, 3], &[]))));

    // Contexts that cannot come from a forward.
    let forged = CrossEntropyContext {
        softmax: x.clone(),
        targets: Targets::Labels(vec![0, 5]),
    };
    assert!(is_shape(loss::backward(&forged, 1.0).map(|_| ())));
    let forged = CrossEntropyContext {
        softmax: x.clone(),
        targets: Targets::Soft(tensor(&[2, 2], &[0.0; 4])),
    };
    assert!(is_shape(loss::backward(&forged, 1.0).map(|_| ())));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_shape_matches_naive_formulas_and_finite_differences(
        batch in prop::sample::select(vec![1usize, 2, 3, 5, 7, 13]),
        classes in prop::sample::select(vec![1usize, 2, 3, 5, 10, 11]),
        seed in any::<u64>(),
    ) {
        let outcome = Case::new(seed, batch, classes).check();
        prop_assert!(outcome.is_ok(), "{:?}", outcome);
    }
}
