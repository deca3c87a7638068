//! Optimizer updates, elementwise over one parameter tensor (twin of `gpu/src/ops/optim.rs` and
//! `gpu/kernels/optim.cu`). Each update is computed in `E` in the order PyTorch's single-tensor (`foreach=False`)
//! implementation uses, so results match it to rounding.

use ndarray::Zip;

use crate::contract::shapes::check_like_param;
use crate::contract::{AdamWParams, Element, Result, SgdParams};
use crate::cpu::CpuTensor;

/// One SGD step (see [`SgdParams`]): returns the new parameter and momentum buffer. Without a
/// previous buffer (the first step) the buffer is `d = g + weight_decay p`.
pub fn sgd_step<E: Element>(
    param: &CpuTensor<E>,
    grad: &CpuTensor<E>,
    momentum_buffer: Option<&CpuTensor<E>>,
    hp: SgdParams,
) -> Result<(CpuTensor<E>, CpuTensor<E>)> {
    hp.validate()?;
    check_like_param("sgd", "the gradient", param.shape(), grad.shape())?;
    let (lr, momentum, decay) = (
        E::cast(hp.lr),
        E::cast(hp.momentum),
        E::cast(hp.weight_decay),
    );
    let decayed = Zip::from(param)
        .and(grad)
        .par_map_collect(|&p, &g| g + decay * p);
    let buffer = match momentum_buffer {
        Some(buffer) => {
            check_like_param("sgd", "the momentum buffer", param.shape(), buffer.shape())?;
            Zip::from(buffer)
                .and(&decayed)
                .par_map_collect(|&b, &d| momentum * b + d)
        }
        None => decayed,
    };
    let updated = Zip::from(param)
        .and(&buffer)
        .par_map_collect(|&p, &b| p - lr * b);
    Ok((updated.into_shared(), buffer.into_shared()))
}

/// One AdamW step number `step >= 1` (see [`AdamWParams`]): returns the new parameter and the
/// new first and second moments.
pub fn adamw_step<E: Element>(
    param: &CpuTensor<E>,
    grad: &CpuTensor<E>,
    first_moment: &CpuTensor<E>,
    second_moment: &CpuTensor<E>,
    hp: AdamWParams,
    step: u64,
) -> Result<(CpuTensor<E>, CpuTensor<E>, CpuTensor<E>)> {
    hp.validate()?;
    AdamWParams::check_step(step)?;
    check_like_param("adamw", "the gradient", param.shape(), grad.shape())?;
    check_like_param(
        "adamw",
        "the first moment",
        param.shape(),
        first_moment.shape(),
    )?;
    check_like_param(
        "adamw",
        "the second moment",
        param.shape(),
        second_moment.shape(),
    )?;
    let (b1, b2) = (E::cast(hp.beta1), E::cast(hp.beta2));
    let one = E::one();
    let shrink = E::cast(1.0 - hp.lr * hp.weight_decay);
    let step_size = E::cast(hp.lr / (1.0 - hp.beta1.powf(step as f64)));
    let correction2_sqrt = E::cast((1.0 - hp.beta2.powf(step as f64)).sqrt());
    let eps = E::cast(hp.eps);
    let m = Zip::from(first_moment)
        .and(grad)
        .par_map_collect(|&m, &g| b1 * m + (one - b1) * g);
    let v = Zip::from(second_moment)
        .and(grad)
        .par_map_collect(|&v, &g| b2 * v + (one - b2) * g * g);
    let updated = Zip::from(param)
        .and(&m)
        .and(&v)
        .par_map_collect(|&p, &m, &v| {
            p * shrink - step_size * m / (v.sqrt() / correction2_sqrt + eps)
        });
    Ok((updated.into_shared(), m.into_shared(), v.into_shared()))
}
