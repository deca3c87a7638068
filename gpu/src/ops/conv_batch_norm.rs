//! A bias-free convolution and the training BatchNorm after it as one op, forward and backward
//! (`Backend::conv_batch_norm_train_forward` and `conv_batch_norm_backward`; docs/precision.md
//! §"Convolution outputs"). Under `bf16` and `fp16` the forward's BatchNorm reads and keeps the
//! convolution's 16-bit sums, so the convolution's `f32` output is never written: one pass over
//! the output and its buffer fewer, and half the bytes for the BatchNorm's two reads. The
//! backward's BatchNorm writes its `dx` as the 16-bit `dy` the convolution's backward reads, so
//! no `f32` `dx` is written and none is converted. Every output, context and gradient holds the
//! bits of [`conv::forward`] and [`batch_norm::train_forward`] in turn and of their backwards,
//! which is what runs under `f32` and `f64`.

use revsnn_reference::contract::shapes::Conv1dAs2d;
use revsnn_reference::{
    BatchNormAffine, Conv2dGrads, Conv2dParams, ConvBatchNormGrads, ConvBatchNormTrainOutput,
    ConvKind,
};

use super::batch_norm::{self, BatchNormContext};
use super::conv::{self, Conv2dContext};
use super::{GpuElement, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// What [`train_forward`] returns.
pub type ConvBatchNormOutput<E> =
    ConvBatchNormTrainOutput<CudaTensor<E>, Conv2dContext<E>, BatchNormContext<E>>;

/// `batch_norm_train_forward(conv(x, weight))` for a bias-free convolution of `kind`
/// (a 1-D one runs as the 1x1 2-D convolution of `Backend::conv1d_forward`), with both contexts;
/// `x` is dropped before the BatchNorm allocates, spikes as soon as their bytes exist (the
/// convolution's context keeps what it needs of it). Errors as the two ops do.
pub fn train_forward<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, CudaTensor<E>>,
) -> Result<ConvBatchNormOutput<E>, GpuError> {
    let (output, conv) = match kind {
        ConvKind::Conv2d(params) => conv::forward_kept(device, x, weight, params)?,
        ConvKind::Conv1d => {
            let as_2d = Conv1dAs2d::new(x.shape(), weight.shape())?;
            let x_2d = x.reshaped(&as_2d.x)?;
            drop(x);
            let weight = weight.reshaped(&as_2d.weight)?;
            let params = Conv2dParams::new(1, 0);
            let (output, conv) = conv::forward_kept(device, x_2d, &weight, params)?;
            (output.reshaped(&as_2d.output)?, conv)
        }
    };
    let (y, batch, norm_context) =
        batch_norm::train_forward_over(device, output, norm.gamma, norm.beta, norm.params)?;
    Ok(ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm: norm_context,
    })
}

/// Gradients of [`train_forward`] (or of the two ops it fuses) from its contexts:
/// [`batch_norm::backward`], then [`conv::backward`] of its `dx`, each context freed once it has
/// served. Under `bf16` and `fp16` the BatchNorm stores `dx` as the 16-bit `dy` the convolution
/// reads ([`batch_norm::backward_stored`], [`conv::backward_stored`]). Errors as the two ops do,
/// and when the convolution had a bias.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: CudaTensor<E>,
    conv: Conv2dContext<E>,
    norm: BatchNormContext<E>,
    kind: ConvKind,
) -> Result<ConvBatchNormGrads<CudaTensor<E>>, GpuError> {
    if conv.has_bias {
        let detail = "the convolution's context has a bias, which this op's forward never adds; \
                      run batch_norm_backward and conv_backward instead";
        return Err(shape_error("conv_batch_norm_backward", detail));
    }
    let (grads, gamma, beta) = match device.half_format() {
        Some(format) => {
            let normed = batch_norm::backward_stored(device, &grad_y, &norm, format)?;
            drop((grad_y, norm));
            let grads = conv::backward_stored(device, format, normed.input, &conv)?;
            (grads, normed.gamma, normed.beta)
        }
        None => {
            let normed = batch_norm::backward(device, &grad_y, &norm)?;
            drop((grad_y, norm));
            let dy = as_2d_output(normed.input, kind)?;
            (
                conv::backward(device, dy, &conv)?,
                normed.gamma,
                normed.beta,
            )
        }
    };
    let Conv2dGrads { input, weight, .. } = grads;
    let (input, weight) = match kind {
        ConvKind::Conv2d(_) => (input, weight),
        ConvKind::Conv1d => (without_last_axis(&input)?, without_last_axis(&weight)?),
    };
    Ok(ConvBatchNormGrads {
        input,
        weight,
        gamma,
        beta,
    })
}

/// A convolution's output gradient as the 2-D convolution that ran it sees it: a 1-D one's
/// `[N, C, L]` as `[N, C, L, 1]` (`Conv1dAs2d`).
fn as_2d_output<E: GpuElement>(
    dy: CudaTensor<E>,
    kind: ConvKind,
) -> Result<CudaTensor<E>, GpuError> {
    match kind {
        ConvKind::Conv2d(_) => Ok(dy),
        ConvKind::Conv1d => dy.reshaped(&[dy.shape(), &[1]].concat()),
    }
}

/// A 1-D convolution's gradient from the 2-D convolution that ran it: `[.., 1]` without the 1.
fn without_last_axis<E: GpuElement>(x: &CudaTensor<E>) -> Result<CudaTensor<E>, GpuError> {
    let shape = x.shape();
    x.reshaped(&shape[..shape.len() - 1])
}
