//! The fused CUDA optimizer steps against the CPU reference, through `OptimOps`, in f32 and f64:
//! SGD with momentum (first step without a buffer, then with one; with and without momentum and
//! weight decay) and AdamW (steps 1, 2, 10 and 1000; PyTorch's defaults and other betas). Each new
//! parameter and state is first held to the tolerance class of docs/design.md (relative L2 error,
//! f32 <= 1e-5, f64 <= 1e-12), then to bitwise equality: the kernels do the reference's operations
//! in its order without FMA contraction, with IEEE division and square root. The many-tensor steps
//! (`*_step_foreach`: 150 tensors, empty to several chunks, so several launches) equal the single
//! steps bit for bit. Two runs are bitwise identical; bad shapes and parameters are errors. Sizes
//! span one partial block up to thousands of blocks. Skips without a GPU (`SKIP: no CUDA device`),
//! fails then with `REVSNN_REQUIRE_GPU=1`.

use revsnn_gpu::ops::GpuElement;
use revsnn_gpu::testing::backend_or_skip;
use revsnn_reference::prelude::*;
use revsnn_reference::testing::{SplitMix64, relative_error};
use revsnn_reference::{AdamWParams, AdamWTensors, Cpu, DType, Element, SgdParams, SgdTensors};

const SIZES: [usize; 4] = [1, 33, 4097, (1 << 20) + 3];

fn bits<E: Element>(values: &[E]) -> Vec<u64> {
    values.iter().map(|v| v.widen().to_bits()).collect()
}

/// `device` against `reference`: the tolerance class, then bit for bit.
fn check<E: Element>(what: &str, device: &[E], reference: &[E]) {
    let tolerance = match E::DTYPE {
        DType::F32 => 1e-5,
        DType::F64 => 1e-12,
    };
    let widen = |v: &[E]| v.iter().map(|x| x.widen()).collect::<Vec<_>>();
    let error = relative_error(&widen(device), &widen(reference));
    assert!(
        error <= tolerance,
        "{what} ({}): relative error {error:e} > {tolerance:e}",
        E::DTYPE
    );
    let differing = bits(device)
        .iter()
        .zip(bits(reference))
        .filter(|(a, b)| **a != *b)
        .count();
    assert_eq!(
        differing,
        0,
        "{what} ({}): within tolerance but {differing} of {} elements differ from the reference in their bits",
        E::DTYPE,
        device.len()
    );
}

fn values<E: Element>(rng: &mut SplitMix64, len: usize, std: f64) -> Vec<E> {
    rng.normal_vec(len, std).into_iter().map(E::cast).collect()
}

fn sgd<B: Backend>(device: &B) {
    let cpu = Cpu::<B::Elem>::new();
    let settings = [
        SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
        },
        SgdParams {
            lr: 0.05,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    ];
    for (i, &n) in SIZES.iter().enumerate() {
        for (j, params) in settings.into_iter().enumerate() {
            let what = format!("sgd n {n} {params:?}");
            let mut rng = SplitMix64::new(100 * i as u64 + j as u64);
            let (p, g1, g2) = (
                values(&mut rng, n, 1.0),
                values(&mut rng, n, 0.1),
                values(&mut rng, n, 0.1),
            );
            let upload = |d: &Vec<B::Elem>| device.tensor_from_vec(&[n], d.clone()).unwrap();
            let upload_cpu = |d: &Vec<B::Elem>| cpu.tensor_from_vec(&[n], d.clone()).unwrap();
            let (p_dev, g1_dev, g2_dev) = (upload(&p), upload(&g1), upload(&g2));
            let (p_cpu, g1_cpu, g2_cpu) = (upload_cpu(&p), upload_cpu(&g1), upload_cpu(&g2));

            let (p1, b1) = device.sgd_step(&p_dev, &g1_dev, None, params).unwrap();
            let (p1_cpu, b1_cpu) = cpu.sgd_step(&p_cpu, &g1_cpu, None, params).unwrap();
            let first = (device.to_vec(&p1).unwrap(), device.to_vec(&b1).unwrap());
            check(
                &format!("{what}: first step, parameter"),
                &first.0,
                &cpu.to_vec(&p1_cpu).unwrap(),
            );
            check(
                &format!("{what}: first step, buffer"),
                &first.1,
                &cpu.to_vec(&b1_cpu).unwrap(),
            );

            let (p2, b2) = device.sgd_step(&p1, &g2_dev, Some(&b1), params).unwrap();
            let (p2_cpu, b2_cpu) = cpu
                .sgd_step(&p1_cpu, &g2_cpu, Some(&b1_cpu), params)
                .unwrap();
            let second = (device.to_vec(&p2).unwrap(), device.to_vec(&b2).unwrap());
            check(
                &format!("{what}: second step, parameter"),
                &second.0,
                &cpu.to_vec(&p2_cpu).unwrap(),
            );
            check(
                &format!("{what}: second step, buffer"),
                &second.1,
                &cpu.to_vec(&b2_cpu).unwrap(),
            );

            let (p2_again, b2_again) = device.sgd_step(&p1, &g2_dev, Some(&b1), params).unwrap();
            assert_eq!(
                bits(&device.to_vec(&p2_again).unwrap()),
                bits(&second.0),
                "{what}: run to run"
            );
            assert_eq!(
                bits(&device.to_vec(&b2_again).unwrap()),
                bits(&second.1),
                "{what}: run to run"
            );
        }
    }
}

fn adamw<B: Backend>(device: &B) {
    let cpu = Cpu::<B::Elem>::new();
    let settings = [
        AdamWParams::new(5e-4, 0.06),
        AdamWParams {
            lr: 1e-3,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.0,
        },
    ];
    for (i, &n) in SIZES.iter().enumerate() {
        for (j, params) in settings.into_iter().enumerate() {
            for step in [1, 2, 10, 1000] {
                let what = format!("adamw n {n} step {step} {params:?}");
                let mut rng = SplitMix64::new(1000 * i as u64 + 10 * j as u64 + step);
                let p: Vec<B::Elem> = values(&mut rng, n, 1.0);
                let g: Vec<B::Elem> = values(&mut rng, n, 0.1);
                let m: Vec<B::Elem> = values(&mut rng, n, 0.05);
                // The second moment is a running mean of squares: non-negative.
                let v: Vec<B::Elem> = rng
                    .normal_vec(n, 0.05)
                    .into_iter()
                    .map(|x| <B::Elem>::cast(x * x))
                    .collect();
                let dev: Vec<B::Tensor> = [&p, &g, &m, &v]
                    .iter()
                    .map(|d| device.tensor_from_vec(&[n], (*d).clone()).unwrap())
                    .collect();
                let host: Vec<_> = [&p, &g, &m, &v]
                    .iter()
                    .map(|d| cpu.tensor_from_vec(&[n], (*d).clone()).unwrap())
                    .collect();
                let out = device
                    .adamw_step(&dev[0], &dev[1], &dev[2], &dev[3], params, step)
                    .unwrap();
                let expected = cpu
                    .adamw_step(&host[0], &host[1], &host[2], &host[3], params, step)
                    .unwrap();
                let got = [&out.0, &out.1, &out.2].map(|t| device.to_vec(t).unwrap());
                let want = [&expected.0, &expected.1, &expected.2].map(|t| cpu.to_vec(t).unwrap());
                for ((name, got), want) in ["parameter", "first moment", "second moment"]
                    .iter()
                    .zip(&got)
                    .zip(&want)
                {
                    check(&format!("{what}: {name}"), got, want);
                }
                let again = device
                    .adamw_step(&dev[0], &dev[1], &dev[2], &dev[3], params, step)
                    .unwrap();
                let again = [&again.0, &again.1, &again.2].map(|t| device.to_vec(t).unwrap());
                for (a, b) in again.iter().zip(&got) {
                    assert_eq!(bits(a), bits(b), "{what}: run to run");
                }
            }
        }
    }
}

/// Tensor sizes for the many-tensor steps: empty, one element, a partial chunk of the CUDA
/// kernels' 4096 elements, one chunk, one past it, several chunks.
const FOREACH_SIZES: [usize; 6] = [0, 1, 255, 4096, 4097, 9000];
/// Tensors per many-tensor step: SGD's launches take 64, AdamW's 48, so both take several.
const FOREACH_TENSORS: usize = 150;

/// `FOREACH_TENSORS` parameters of the sizes in turn, with gradients and two more tensors each
/// (a momentum buffer, or the AdamW moments, the second non-negative).
fn foreach_operands<B: Backend>(backend: &B, seed: u64) -> Vec<[B::Tensor; 4]> {
    let mut rng = SplitMix64::new(seed);
    (0..FOREACH_TENSORS)
        .map(|i| {
            let n = FOREACH_SIZES[i % FOREACH_SIZES.len()];
            let square = |x: f64| <B::Elem>::cast(x * x);
            let data: [Vec<B::Elem>; 4] = [
                values(&mut rng, n, 1.0),
                values(&mut rng, n, 0.1),
                values(&mut rng, n, 0.05),
                rng.normal_vec(n, 0.05).into_iter().map(square).collect(),
            ];
            data.map(|d| backend.tensor_from_vec(&[n], d).unwrap())
        })
        .collect()
}

/// The many-tensor steps against the reference's single steps, bit for bit: SGD with every
/// third tensor at its first step (no buffer), AdamW with every other tensor exempt from the
/// weight decay; every size from empty to several chunks, in several launches.
fn foreach<B: Backend>(device: &B) {
    let cpu = Cpu::<B::Elem>::new();
    let (on_device, on_cpu) = (foreach_operands(device, 7), foreach_operands(&cpu, 7));
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    let tensors: Vec<_> = on_device
        .iter()
        .enumerate()
        .map(|(i, [param, grad, buffer, _])| SgdTensors {
            param,
            grad,
            momentum_buffer: (i % 3 != 0).then_some(buffer),
        })
        .collect();
    let updated = device.sgd_step_foreach(&tensors, sgd).unwrap();
    assert_eq!(
        updated.len(),
        FOREACH_TENSORS,
        "sgd foreach: one result per tensor"
    );
    for (i, ((param, buffer), [p, g, b, _])) in updated.iter().zip(&on_cpu).enumerate() {
        let expected = cpu.sgd_step(p, g, (i % 3 != 0).then_some(b), sgd).unwrap();
        let what = format!("sgd foreach tensor {i}");
        check(
            &format!("{what}: parameter"),
            &device.to_vec(param).unwrap(),
            &cpu.to_vec(&expected.0).unwrap(),
        );
        check(
            &format!("{what}: buffer"),
            &device.to_vec(buffer).unwrap(),
            &cpu.to_vec(&expected.1).unwrap(),
        );
    }

    let adamw = AdamWParams::new(5e-4, 0.06);
    let step = 3;
    let tensors: Vec<_> = on_device
        .iter()
        .enumerate()
        .map(
            |(i, [param, grad, first_moment, second_moment])| AdamWTensors {
                param,
                grad,
                first_moment,
                second_moment,
                decays: i % 2 == 0,
            },
        )
        .collect();
    let updated = device.adamw_step_foreach(&tensors, adamw, step).unwrap();
    assert_eq!(
        updated.len(),
        FOREACH_TENSORS,
        "adamw foreach: one result per tensor"
    );
    for (i, (got, [p, g, m, v])) in updated.iter().zip(&on_cpu).enumerate() {
        let weight_decay = if i % 2 == 0 { adamw.weight_decay } else { 0.0 };
        let params = AdamWParams {
            weight_decay,
            ..adamw
        };
        let expected = cpu.adamw_step(p, g, m, v, params, step).unwrap();
        let pairs = [
            (&got.0, &expected.0),
            (&got.1, &expected.1),
            (&got.2, &expected.2),
        ];
        for (name, (got, want)) in ["parameter", "first moment", "second moment"]
            .iter()
            .zip(pairs)
        {
            check(
                &format!("adamw foreach tensor {i}: {name}"),
                &device.to_vec(got).unwrap(),
                &cpu.to_vec(want).unwrap(),
            );
        }
    }
}

fn rejects_bad_input<B: Backend>(device: &B) {
    let tensor = |shape: &[usize]| {
        let n = shape.iter().product();
        device
            .tensor_from_vec(shape, vec![<B::Elem>::cast(0.5); n])
            .unwrap()
    };
    let (p, g, other) = (tensor(&[2, 3]), tensor(&[2, 3]), tensor(&[3, 2]));
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    assert!(
        device.sgd_step(&p, &other, None, sgd).is_err(),
        "sgd: gradient shape"
    );
    assert!(
        device.sgd_step(&p, &g, Some(&other), sgd).is_err(),
        "sgd: buffer shape"
    );
    assert!(
        device
            .sgd_step(&p, &g, None, SgdParams { lr: -1.0, ..sgd })
            .is_err(),
        "sgd: lr < 0"
    );
    assert!(
        device
            .sgd_step(
                &p,
                &g,
                None,
                SgdParams {
                    momentum: 1.0,
                    ..sgd
                }
            )
            .is_err(),
        "sgd: momentum 1"
    );
    assert!(
        device
            .sgd_step(
                &p,
                &g,
                None,
                SgdParams {
                    weight_decay: f64::NAN,
                    ..sgd
                }
            )
            .is_err(),
        "sgd: NaN decay"
    );
    let adamw = AdamWParams::new(1e-3, 0.05);
    assert!(
        device.adamw_step(&p, &g, &p, &p, adamw, 0).is_err(),
        "adamw: step 0"
    );
    assert!(
        device.adamw_step(&p, &other, &p, &p, adamw, 1).is_err(),
        "adamw: gradient shape"
    );
    assert!(
        device.adamw_step(&p, &g, &other, &p, adamw, 1).is_err(),
        "adamw: first moment shape"
    );
    assert!(
        device.adamw_step(&p, &g, &p, &other, adamw, 1).is_err(),
        "adamw: second moment shape"
    );
    assert!(
        device
            .adamw_step(
                &p,
                &g,
                &p,
                &p,
                AdamWParams {
                    beta2: 1.0,
                    ..adamw
                },
                1
            )
            .is_err(),
        "adamw: beta2 1"
    );
    assert!(
        device
            .adamw_step(&p, &g, &p, &p, AdamWParams { eps: 0.0, ..adamw }, 1)
            .is_err(),
        "adamw: eps 0"
    );
    // One bad tensor anywhere in a many-tensor step, past the first launch's table.
    let operands = foreach_operands(device, 8);
    let mut sgd_tensors: Vec<_> = operands
        .iter()
        .map(|[param, grad, _, _]| SgdTensors {
            param,
            grad,
            momentum_buffer: None,
        })
        .collect();
    sgd_tensors[100].momentum_buffer = Some(&other);
    assert!(
        device.sgd_step_foreach(&sgd_tensors, sgd).is_err(),
        "sgd foreach: buffer shape"
    );
    let mut adamw_tensors: Vec<_> = operands
        .iter()
        .map(|[param, grad, first_moment, second_moment]| AdamWTensors {
            param,
            grad,
            first_moment,
            second_moment,
            decays: true,
        })
        .collect();
    adamw_tensors[100].grad = &other;
    assert!(
        device.adamw_step_foreach(&adamw_tensors, adamw, 1).is_err(),
        "adamw foreach: gradient shape"
    );
}

fn all<E: GpuElement>(test: &str) {
    if let Some(gpu) = backend_or_skip::<E>(test) {
        sgd(&gpu);
        adamw(&gpu);
        foreach(&gpu);
        rejects_bad_input(&gpu);
        gpu.synchronize().unwrap();
    }
}

#[test]
fn gpu_optimizers_match_the_reference_in_f32() {
    all::<f32>("gpu_optim f32");
}

#[test]
fn gpu_optimizers_match_the_reference_in_f64() {
    all::<f64>("gpu_optim f64");
}

/// This file's comparisons with the reference standing in for the device, on any machine: checks
/// the harness itself.
#[test]
fn the_harness_passes_with_the_reference_as_the_device() {
    let cpu = Cpu::<f64>::new();
    sgd(&cpu);
    adamw(&cpu);
    foreach(&cpu);
    rejects_bad_input(&cpu);
}
