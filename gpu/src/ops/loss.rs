//! Cross-entropy losses on the GPU (docs/recipes.md §5); twin of `reference/src/ops/loss.rs`, kernels in
//! `gpu/kernels/loss.cu`.
//!
//! One thread per row computes the row's log-sum-exp in `f64` exactly as the reference writes it
//! (`m + ln(1 + sum_{k != argmax} exp(x_k - m))`, sequentially over the classes), the softmax
//! and the row's loss; one more thread sums the row losses in row order into a `[1]` tensor, as
//! the reference does, so the loss stays on the device until a caller reads it. The context keeps a dense target distribution
//! (one-hot rows for labels), so one elementwise backward serves both losses.

use cudarc::driver::PushKernelArg;
use revsnn_reference::contract::shapes::{
    check_context_targets, check_labels, check_soft_targets, logits_shape,
};

use super::{GpuElement, ONE_THREAD, elementwise_launch};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::LOSS;
use crate::tensor::CudaTensor;

/// What [`backward`] needs: the softmax and the target distribution, `[B, K]` each.
#[derive(Debug)]
pub struct CrossEntropyContext<E> {
    pub softmax: CudaTensor<E>,
    pub targets: CudaTensor<E>,
}

/// The mean of the row losses, summed in row order in `f64` on the device: a `[1]` tensor.
fn mean_of_rows<E: GpuElement>(
    device: &GpuDevice,
    losses: &crate::memory::DeviceBuffer<f64>,
) -> Result<CudaTensor<E>, GpuError> {
    // SAFETY: the kernel writes the one element.
    let mut loss = unsafe { device.alloc::<E>(1) }?;
    let function = device.function(&LOSS, &format!("mean_of_rows_{}", E::SUFFIX))?;
    let rows = losses.len() as i64;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(losses.slice()).arg(loss.slice_mut()).arg(&rows);
    // SAFETY: the arguments match `mean_of_rows_<E>(const double* losses, E* loss, long long
    // rows)`; losses holds `rows` elements and loss one.
    unsafe { launch.launch(ONE_THREAD) }.map_err(GpuError::driver("launching mean_of_rows"))?;
    CudaTensor::new(loss, &[1])
}

/// Mean cross-entropy against class indices (PyTorch's `F.cross_entropy`, reduction `mean`):
/// `L = (1/B) sum_b (lse_b - logits[b, label_b])` with `lse_b = log sum_k exp logits[b, k]`.
/// Errors unless `logits` is `[B, K]`, there are `B` labels and each is `< K`. The context's
/// targets are the labels' one-hot rows.
pub fn cross_entropy_forward<E: GpuElement>(
    device: &GpuDevice,
    logits: &CudaTensor<E>,
    labels: &[usize],
) -> Result<(CudaTensor<E>, CrossEntropyContext<E>), GpuError> {
    let (batch, classes) = check_labels(logits.shape(), labels)?;
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let labels = device.upload(&labels)?;
    // SAFETY: the kernel writes every row of the three outputs.
    let mut softmax = unsafe { device.alloc::<E>(logits.len()) }?;
    // SAFETY: as above.
    let mut targets = unsafe { device.alloc::<E>(logits.len()) }?;
    // SAFETY: as above.
    let mut losses = unsafe { device.alloc::<f64>(batch) }?;
    let function = device.function(&LOSS, &format!("cross_entropy_labels_{}", E::SUFFIX))?;
    let (rows, columns) = (batch as i64, classes as i64);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(logits.slice())
        .arg(labels.slice())
        .arg(softmax.slice_mut())
        .arg(targets.slice_mut())
        .arg(losses.slice_mut())
        .arg(&rows)
        .arg(&columns);
    // SAFETY: the arguments match `cross_entropy_labels_<E>(const E* logits, const long long*
    // labels, E* softmax, E* targets, double* losses, long long rows, long long classes)`; the
    // E buffers hold rows * classes elements, labels and losses `rows`, each label < classes.
    unsafe { launch.launch(elementwise_launch(batch)) }
        .map_err(GpuError::driver("launching cross_entropy_labels"))?;
    let loss = mean_of_rows(device, &losses)?;
    let context = CrossEntropyContext {
        softmax: CudaTensor::new(softmax, logits.shape())?,
        targets: CudaTensor::new(targets, logits.shape())?,
    };
    Ok((loss, context))
}

/// Mean soft-target cross-entropy (mixup, label smoothing; timm's `SoftTargetCrossEntropy`):
/// `L = (1/B) sum_b sum_k targets[b, k] (lse_b - logits[b, k])`. `targets` must have the shape
/// `[B, K]` of `logits`; its rows are not required to sum to 1.
pub fn soft_cross_entropy_forward<E: GpuElement>(
    device: &GpuDevice,
    logits: &CudaTensor<E>,
    targets: &CudaTensor<E>,
) -> Result<(CudaTensor<E>, CrossEntropyContext<E>), GpuError> {
    let (batch, classes) = check_soft_targets(logits.shape(), targets.shape())?;
    // SAFETY: the kernel writes every row of both outputs.
    let mut softmax = unsafe { device.alloc::<E>(logits.len()) }?;
    // SAFETY: as above.
    let mut losses = unsafe { device.alloc::<f64>(batch) }?;
    let function = device.function(&LOSS, &format!("cross_entropy_soft_{}", E::SUFFIX))?;
    let (rows, columns) = (batch as i64, classes as i64);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(logits.slice())
        .arg(targets.slice())
        .arg(softmax.slice_mut())
        .arg(losses.slice_mut())
        .arg(&rows)
        .arg(&columns);
    // SAFETY: the arguments match `cross_entropy_soft_<E>(const E* logits, const E* targets,
    // E* softmax, double* losses, long long rows, long long classes)`; the E buffers hold
    // rows * classes elements and losses `rows`.
    unsafe { launch.launch(elementwise_launch(batch)) }
        .map_err(GpuError::driver("launching cross_entropy_soft"))?;
    let loss = mean_of_rows(device, &losses)?;
    let context = CrossEntropyContext {
        softmax: CudaTensor::new(softmax, logits.shape())?,
        targets: targets.clone(),
    };
    Ok((loss, context))
}

/// The backward of either cross-entropy:
/// `dL/dlogits[b, k] = grad_loss (softmax[b, k] - targets[b, k]) / B`, computed in `f64` and
/// rounded to `E` as the reference does. With soft targets this assumes rows summing to 1, as
/// the reference documents.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    context: &CrossEntropyContext<E>,
    grad_loss: E,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "cross_entropy_backward";
    let (batch, _) = logits_shape(OP, context.softmax.shape())?;
    check_context_targets(OP, context.targets.shape(), context.softmax.shape())?;
    let scale = grad_loss.widen() / batch as f64;
    let n = context.softmax.len();
    // SAFETY: the kernel writes every element.
    let mut grad = unsafe { device.alloc::<E>(n) }?;
    let function = device.function(&LOSS, &format!("cross_entropy_backward_{}", E::SUFFIX))?;
    let n_arg = n as i64;
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(context.softmax.slice())
        .arg(context.targets.slice())
        .arg(grad.slice_mut())
        .arg(&n_arg)
        .arg(&scale);
    // SAFETY: the arguments match `cross_entropy_backward_<E>(const E* softmax, const E*
    // targets, E* grad, long long n, double scale)`; the three buffers hold n elements.
    unsafe { launch.launch(elementwise_launch(n)) }
        .map_err(GpuError::driver("launching cross_entropy_backward"))?;
    CudaTensor::new(grad, context.softmax.shape())
}
