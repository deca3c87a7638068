//! Optimizer updates on the GPU (docs/recipes.md §5: SGD for the ResNets, AdamW for the transformers);
//! twin of `reference/src/ops/optim.rs`, kernels in `gpu/kernels/optim.cu`.
//!
//! One fused kernel per step reads the parameter, the gradient and the state once and writes the
//! new parameter and state. Each update is computed in `E` with the reference's operations in
//! its order, without FMA contraction, so the results equal the reference's bit for bit.

use cudarc::driver::PushKernelArg;
use revsnn_reference::contract::shapes::check_like_param;
use revsnn_reference::{AdamWParams, AdamWState, SgdParams};

use super::{GpuElement, elementwise_launch};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::OPTIM;
use crate::tensor::CudaTensor;

/// One SGD step (see [`SgdParams`]): `d = g + weight_decay p`, `b = momentum b_old + d` (`b = d`
/// on the first step, without a buffer), `p_new = p - lr b`; returns the new parameter and
/// momentum buffer.
pub fn sgd_step<E: GpuElement>(
    device: &GpuDevice,
    param: &CudaTensor<E>,
    grad: &CudaTensor<E>,
    momentum_buffer: Option<&CudaTensor<E>>,
    params: SgdParams,
) -> Result<(CudaTensor<E>, CudaTensor<E>), GpuError> {
    const OP: &str = "sgd";
    params.validate()?;
    check_like_param(OP, "the gradient", param.shape(), grad.shape())?;
    if let Some(buffer) = momentum_buffer {
        check_like_param(OP, "the momentum buffer", param.shape(), buffer.shape())?;
    }
    let n = param.len();
    // SAFETY: the kernel writes every element of both outputs.
    let mut new_param = unsafe { device.alloc::<E>(n) }?;
    // SAFETY: as above.
    let mut new_buffer = unsafe { device.alloc::<E>(n) }?;
    if n > 0 {
        let function = device.function(&OPTIM, &format!("sgd_step_{}", E::SUFFIX))?;
        let (lr, momentum, weight_decay) = (
            E::cast(params.lr),
            E::cast(params.momentum),
            E::cast(params.weight_decay),
        );
        let (n_arg, has_buffer) = (n as i64, momentum_buffer.is_some() as i32);
        // Without a buffer the kernel does not read this argument; the gradient stands in.
        let buffer = momentum_buffer.unwrap_or(grad);
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(param.slice())
            .arg(grad.slice())
            .arg(buffer.slice())
            .arg(new_param.slice_mut())
            .arg(new_buffer.slice_mut())
            .arg(&n_arg)
            .arg(&has_buffer)
            .arg(&lr)
            .arg(&momentum)
            .arg(&weight_decay);
        // SAFETY: the arguments match `sgd_step_<E>(const E* param, const E* grad, const E*
        // buffer, E* new_param, E* new_buffer, long long n, int has_buffer, E lr, E momentum,
        // E weight_decay)`; the five buffers hold n elements.
        unsafe { launch.launch(elementwise_launch(n)) }
            .map_err(GpuError::driver("launching sgd_step"))?;
    }
    Ok((
        CudaTensor::new(new_param, param.shape())?,
        CudaTensor::new(new_buffer, param.shape())?,
    ))
}

/// One AdamW step number `step >= 1` (see [`AdamWParams`]): `m = b1 m + (1 - b1) g`,
/// `v = b2 v + (1 - b2) g g`, `p_new = p (1 - lr wd) - (lr / (1 - b1^t)) m / (sqrt(v) /
/// sqrt(1 - b2^t) + eps)`, the scalar factors computed in `f64` and rounded to `E` as the
/// reference does; returns the new parameter and moments.
pub fn adamw_step<E: GpuElement>(
    device: &GpuDevice,
    param: &CudaTensor<E>,
    grad: &CudaTensor<E>,
    first_moment: &CudaTensor<E>,
    second_moment: &CudaTensor<E>,
    params: AdamWParams,
    step: u64,
) -> Result<AdamWState<CudaTensor<E>>, GpuError> {
    const OP: &str = "adamw";
    params.validate()?;
    AdamWParams::check_step(step)?;
    check_like_param(OP, "the gradient", param.shape(), grad.shape())?;
    check_like_param(OP, "the first moment", param.shape(), first_moment.shape())?;
    check_like_param(
        OP,
        "the second moment",
        param.shape(),
        second_moment.shape(),
    )?;
    let n = param.len();
    // SAFETY: the kernel writes every element of the three outputs.
    let mut new_param = unsafe { device.alloc::<E>(n) }?;
    // SAFETY: as above.
    let mut new_first = unsafe { device.alloc::<E>(n) }?;
    // SAFETY: as above.
    let mut new_second = unsafe { device.alloc::<E>(n) }?;
    if n > 0 {
        let function = device.function(&OPTIM, &format!("adamw_step_{}", E::SUFFIX))?;
        let (beta1, beta2) = (E::cast(params.beta1), E::cast(params.beta2));
        let shrink = E::cast(1.0 - params.lr * params.weight_decay);
        let step_size = E::cast(params.lr / (1.0 - params.beta1.powf(step as f64)));
        let correction2_sqrt = E::cast((1.0 - params.beta2.powf(step as f64)).sqrt());
        let eps = E::cast(params.eps);
        let n_arg = n as i64;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(param.slice())
            .arg(grad.slice())
            .arg(first_moment.slice())
            .arg(second_moment.slice())
            .arg(new_param.slice_mut())
            .arg(new_first.slice_mut())
            .arg(new_second.slice_mut())
            .arg(&n_arg)
            .arg(&beta1)
            .arg(&beta2)
            .arg(&shrink)
            .arg(&step_size)
            .arg(&correction2_sqrt)
            .arg(&eps);
        // SAFETY: the arguments match `adamw_step_<E>(const E* param, const E* grad, const E*
        // first, const E* second, E* new_param, E* new_first, E* new_second, long long n,
        // E beta1, E beta2, E shrink, E step_size, E correction2_sqrt, E eps)`; the seven buffers
        // hold n elements.
        unsafe { launch.launch(elementwise_launch(n)) }
            .map_err(GpuError::driver("launching adamw_step"))?;
    }
    Ok((
        CudaTensor::new(new_param, param.shape())?,
        CudaTensor::new(new_first, param.shape())?,
        CudaTensor::new(new_second, param.shape())?,
    ))
}
