//! Optimizer updates against PyTorch's update rules written out per element in the test, over
//! several steps, in f64 (exact: the same operations in the same order) and f32.

use revsnn_reference::prelude::*;
use revsnn_reference::testing::SplitMix64;
use revsnn_reference::{AdamWParams, Cpu, SgdParams};

fn tensor(cpu: &Cpu<f64>, values: &[f64]) -> <Cpu<f64> as TensorOps>::Tensor {
    cpu.tensor_from_vec(&[values.len()], values.to_vec())
        .unwrap()
}

#[test]
fn sgd_with_momentum_and_weight_decay_follows_torch_over_three_steps() {
    let cpu = Cpu::<f64>::new();
    let hp = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    let mut rng = SplitMix64::new(1);
    let mut p_expected = rng.normal_vec(37, 1.0);
    let mut buf_expected: Option<Vec<f64>> = None;
    let mut p = tensor(&cpu, &p_expected);
    let mut buf = None;
    for _ in 0..3 {
        let g = rng.normal_vec(37, 1.0);
        let d: Vec<f64> = g
            .iter()
            .zip(&p_expected)
            .map(|(g, p)| g + 1e-4 * p)
            .collect();
        let b: Vec<f64> = match &buf_expected {
            Some(b) => b.iter().zip(&d).map(|(b, d)| 0.9 * b + d).collect(),
            None => d,
        };
        p_expected = p_expected
            .iter()
            .zip(&b)
            .map(|(p, b)| p - 0.1 * b)
            .collect();
        buf_expected = Some(b);
        let (p_new, buf_new) = cpu
            .sgd_step(&p, &tensor(&cpu, &g), buf.as_ref(), hp)
            .unwrap();
        p = p_new;
        buf = Some(buf_new);
        assert_eq!(cpu.to_vec(&p).unwrap(), p_expected);
        assert_eq!(
            cpu.to_vec(buf.as_ref().unwrap()).unwrap(),
            *buf_expected.as_ref().unwrap()
        );
    }
}

#[test]
fn adamw_follows_torch_over_three_steps() {
    let cpu = Cpu::<f64>::new();
    let hp = AdamWParams::new(5e-4, 0.06);
    let mut rng = SplitMix64::new(2);
    let mut p_expected = rng.normal_vec(41, 1.0);
    let (mut m_expected, mut v_expected) = (vec![0.0; 41], vec![0.0; 41]);
    let mut p = tensor(&cpu, &p_expected);
    let (mut m, mut v) = (tensor(&cpu, &m_expected), tensor(&cpu, &v_expected));
    for step in 1..=3u64 {
        let g = rng.normal_vec(41, 1.0);
        let c1 = 1.0 - 0.9f64.powf(step as f64);
        let c2 = (1.0 - 0.999f64.powf(step as f64)).sqrt();
        for i in 0..41 {
            m_expected[i] = 0.9 * m_expected[i] + (1.0 - 0.9) * g[i];
            v_expected[i] = 0.999 * v_expected[i] + (1.0 - 0.999) * g[i] * g[i];
            let denom = v_expected[i].sqrt() / c2 + 1e-8;
            p_expected[i] =
                p_expected[i] * (1.0 - 5e-4 * 0.06) - (5e-4 / c1) * m_expected[i] / denom;
        }
        (p, m, v) = cpu
            .adamw_step(&p, &tensor(&cpu, &g), &m, &v, hp, step)
            .unwrap();
        assert_eq!(cpu.to_vec(&m).unwrap(), m_expected);
        assert_eq!(cpu.to_vec(&v).unwrap(), v_expected);
        assert_eq!(cpu.to_vec(&p).unwrap(), p_expected);
    }
}

#[test]
fn f32_updates_agree_with_f64() {
    let (c32, c64) = (Cpu::<f32>::new(), Cpu::<f64>::new());
    let values = SplitMix64::new(3).normal_vec(100, 1.0);
    let grads = SplitMix64::new(4).normal_vec(100, 1.0);
    let p32 = c32
        .tensor_from_vec(&[100], values.iter().map(|&x| x as f32).collect())
        .unwrap();
    let g32 = c32
        .tensor_from_vec(&[100], grads.iter().map(|&x| x as f32).collect())
        .unwrap();
    let z32 = c32.zeros(&[100]).unwrap();
    let (p, _, _) = c32
        .adamw_step(&p32, &g32, &z32, &z32, AdamWParams::new(1e-3, 0.05), 1)
        .unwrap();
    let z64 = c64.zeros(&[100]).unwrap();
    let (q, _, _) = c64
        .adamw_step(
            &tensor(&c64, &values),
            &tensor(&c64, &grads),
            &z64,
            &z64,
            AdamWParams::new(1e-3, 0.05),
            1,
        )
        .unwrap();
    let p: Vec<f32> = c32.to_vec(&p).unwrap();
    let q = c64.to_vec(&q).unwrap();
    assert!(revsnn_reference::testing::relative_error(&p, &q) < 1e-6);
}

#[test]
fn bad_hyperparameters_and_shapes_are_errors() {
    let cpu = Cpu::<f64>::new();
    let p = tensor(&cpu, &[1.0, 2.0]);
    let short = tensor(&cpu, &[1.0]);
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 0.0,
    };
    assert!(cpu.sgd_step(&p, &short, None, sgd).is_err());
    assert!(cpu.sgd_step(&p, &p, Some(&short), sgd).is_err());
    assert!(
        cpu.sgd_step(
            &p,
            &p,
            None,
            SgdParams {
                momentum: 1.0,
                ..sgd
            }
        )
        .is_err()
    );
    assert!(
        cpu.sgd_step(
            &p,
            &p,
            None,
            SgdParams {
                lr: f64::NAN,
                ..sgd
            }
        )
        .is_err()
    );
    let adamw = AdamWParams::new(1e-3, 0.0);
    assert!(
        cpu.adamw_step(&p, &p, &p, &p, adamw, 0).is_err(),
        "steps count from 1"
    );
    assert!(cpu.adamw_step(&p, &p, &short, &p, adamw, 1).is_err());
    assert!(
        cpu.adamw_step(&p, &p, &p, &p, AdamWParams { eps: 0.0, ..adamw }, 1)
            .is_err()
    );
}
