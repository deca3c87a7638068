//! Optimizer updates, elementwise over one parameter tensor (twin of `gpu/kernels/optim.cu` to
//! come). Each update is computed in `E` in the order PyTorch's single-tensor (`foreach=False`)
//! implementation uses, so results match it to rounding.

use ndarray::Zip;

use crate::cpu::CpuTensor;
use crate::element::Element;
use crate::error::{OpError, Result};
use crate::params::{AdamWParams, SgdParams};

fn same_shape<E: Element>(
    op: &'static str,
    what: &str,
    a: &CpuTensor<E>,
    b: &CpuTensor<E>,
) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(OpError::shape(
            op,
            format!(
                "{what} has shape {:?} but the parameter {:?}",
                b.shape(),
                a.shape()
            ),
        ));
    }
    Ok(())
}

/// One SGD step (see [`SgdParams`]): returns the new parameter and momentum buffer. Without a
/// previous buffer (the first step) the buffer is `d = g + weight_decay p`.
pub fn sgd_step<E: Element>(
    param: &CpuTensor<E>,
    grad: &CpuTensor<E>,
    momentum_buffer: Option<&CpuTensor<E>>,
    hp: SgdParams,
) -> Result<(CpuTensor<E>, CpuTensor<E>)> {
    hp.validate()?;
    same_shape("sgd", "the gradient", param, grad)?;
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
            same_shape("sgd", "the momentum buffer", param, buffer)?;
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
    if step == 0 {
        return Err(OpError::parameter("adamw", "step", 0, "counts from 1"));
    }
    same_shape("adamw", "the gradient", param, grad)?;
    same_shape("adamw", "the first moment", param, first_moment)?;
    same_shape("adamw", "the second moment", param, second_moment)?;
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
