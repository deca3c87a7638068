//! A bias-free convolution and the training BatchNorm after it as one op
//! (`Backend::conv_batch_norm_train_forward`; docs/precision.md §"Convolution outputs"). Under
//! `bf16` and `fp16` the BatchNorm reads and keeps the convolution's 16-bit sums, so the
//! convolution's `f32` output is never written: one pass over the output and its buffer fewer,
//! and half the bytes for the BatchNorm's two reads. Every output and context holds the bits of
//! [`conv::forward`] followed by [`batch_norm::train_forward`], which is what runs under `f32`
//! and `f64`.

use revsnn_reference::contract::shapes::Conv1dAs2d;
use revsnn_reference::{BatchNormAffine, Conv2dParams, ConvBatchNormTrainOutput, ConvKind};

use super::GpuElement;
use super::batch_norm::{self, BatchNormContext};
use super::conv::{self, Conv2dContext};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;

/// What [`train_forward`] returns.
pub type ConvBatchNormOutput<E> =
    ConvBatchNormTrainOutput<CudaTensor<E>, Conv2dContext<E>, BatchNormContext<E>>;

/// `batch_norm_train_forward(conv(x, weight))` for a bias-free convolution of `kind`
/// (a 1-D one runs as the 1x1 2-D convolution of `Backend::conv1d_forward`), with both contexts;
/// `x` is dropped before the BatchNorm allocates (the convolution's context keeps what it needs
/// of it). Errors as the two ops do.
pub fn train_forward<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, CudaTensor<E>>,
) -> Result<ConvBatchNormOutput<E>, GpuError> {
    let (output, conv) = match kind {
        ConvKind::Conv2d(params) => conv::forward_kept(device, &x, weight, params)?,
        ConvKind::Conv1d => {
            let as_2d = Conv1dAs2d::new(x.shape(), weight.shape())?;
            let x = x.reshaped(&as_2d.x)?;
            let weight = weight.reshaped(&as_2d.weight)?;
            let (output, conv) = conv::forward_kept(device, &x, &weight, Conv2dParams::new(1, 0))?;
            (output.reshaped(&as_2d.output)?, conv)
        }
    };
    drop(x);
    let (y, batch, norm_context) =
        batch_norm::train_forward_over(device, output, norm.gamma, norm.beta, norm.params)?;
    Ok(ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm: norm_context,
    })
}
