//! A convolution and the training BatchNorm after it as one op, forward and backward
//! (`ConvBatchNormOps::conv_batch_norm_train_forward`, `conv_batch_norm_train_fire` and
//! `conv_batch_norm_backward`; docs/precision.md §"Convolution outputs"). Under `bf16` and `fp16`
//! the forward's BatchNorm reads and keeps the convolution's 16-bit sums, and its bias when it
//! has one, which its kernels add as they load each sum ([`SavedInput::BiasedHalf`]), so the
//! convolution's `f32` output is never written: one pass over the output (two with a bias: the
//! bias fill, then the widened sums added) and its buffer fewer, and half the bytes for the
//! BatchNorm's reads. The backward's BatchNorm writes its `dx` as the 16-bit `dy` the
//! convolution's backward reads (and a bias's gradient sums), so no `f32` `dx` is written and none
//! is converted. Every output, context and gradient holds the bits of [`conv::forward`] and
//! [`batch_norm::train_forward`] in turn and of their backwards, which is what runs under `f32`
//! and `f64` (the backward through the contract's `conv_batch_norm_backward_in_turn`).

use revsnn_reference::contract::shapes::Conv1dAs2d;
use revsnn_reference::{
    AvgPoolGrad, BatchNormAffine, Conv2dParams, ConvBatchNormGrads, ConvBatchNormTrainOutput,
    ConvKind, NeuronFire, Onto, Pool2dParams,
};

use super::GpuElement;
use super::batch_norm::{self, BatchNormContext, GradSource};
use super::conv::{self, Conv2dContext, StoredGrads};
use super::precision::{self, HalfBits, HalfFormat};
use super::saved_input::SavedInput;
use super::{neuron, pool};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::tensor::CudaTensor;
use crate::word::DeviceWord;

/// What [`train_forward`] returns.
pub type ConvBatchNormOutput<E> =
    ConvBatchNormTrainOutput<CudaTensor<E>, Conv2dContext<E>, BatchNormContext<E>>;

/// `batch_norm_train_forward(conv(x, weight) (+ bias))` for a convolution of `kind`, with its
/// `bias` when it has one (a 1-D one runs as the 1x1 2-D convolution of
/// `ConvOps::conv1d_forward`), with both contexts;
/// `x` is dropped before the BatchNorm allocates, spikes as soon as their bits exist (the
/// convolution's context keeps what it needs of it). With `onto`, the output lands on its
/// residual, over the residual's buffer when nothing else holds it
/// (`ConvBatchNormOps::conv_batch_norm_train_forward_onto`). Errors as the two ops do.
pub fn train_forward<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, CudaTensor<E>>,
    onto: Option<Onto<CudaTensor<E>>>,
) -> Result<ConvBatchNormOutput<E>, GpuError> {
    let (output, conv) = convolved(device, x, weight, bias, kind)?;
    let (y, batch, norm_context) =
        batch_norm::train_forward_over(device, output, norm.gamma, norm.beta, norm.params, onto)?;
    Ok(ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm: norm_context,
    })
}

/// [`train_forward`], the convolution with its `bias` when it has one, with the neuron `fire`
/// firing over the BatchNorm's output keeping nothing
/// (`ConvBatchNormOps::conv_batch_norm_train_fire`): the BatchNorm computes its statistics only,
/// and the neuron's kernel maps its input as it reads it ([`neuron::fire_from_normalised`]), so the
/// BatchNorm's output is never written; `y` is the spikes `[T, B, ...]`, the bits of
/// [`conv::forward`], [`batch_norm::train_forward`] and the neuron's forward in turn. Errors as
/// those do.
pub fn train_fire<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, CudaTensor<E>>,
    fire: NeuronFire<'_, DeviceWord>,
) -> Result<ConvBatchNormOutput<E>, GpuError> {
    let beta = norm.beta;
    train_statistics_then(device, x, weight, bias, kind, norm, |context| {
        neuron::fire_from_normalised(device, context, beta, fire)
    })
}

/// [`train_forward`] (the convolution with its `bias` when it has one), then the average pool
/// `pool` of the BatchNorm's output made as it is read
/// (`ConvBatchNormOps::conv_batch_norm_train_avg_pool`): the BatchNorm computes its statistics only
/// and the pool's kernel maps its input as it reads it ([`pool::avg_forward_from_normalised`]), so
/// the BatchNorm's output is never written; `y` is the pooled output, the bits of [`train_forward`]
/// then [`pool::avg_forward`]. Errors as those do.
pub fn train_avg_pool<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, CudaTensor<E>>,
    pool: Pool2dParams,
) -> Result<ConvBatchNormOutput<E>, GpuError> {
    let beta = norm.beta;
    train_statistics_then(device, x, weight, bias, kind, norm, |context| {
        pool::avg_forward_from_normalised(device, context, beta, pool)
    })
}

/// The convolution (with its `bias` when it has one), the BatchNorm's statistics only, then
/// `y = make_y(context)` from the BatchNorm's context, a kernel that normalises its input as it
/// reads it, so the BatchNorm's output is never written: the shared body of [`train_fire`] and
/// [`train_avg_pool`].
fn train_statistics_then<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, CudaTensor<E>>,
    make_y: impl FnOnce(&BatchNormContext<E>) -> Result<CudaTensor<E>, GpuError>,
) -> Result<ConvBatchNormOutput<E>, GpuError> {
    let (output, conv) = convolved(device, x, weight, bias, kind)?;
    let (batch, norm_context) =
        batch_norm::train_statistics_over(device, output, norm.gamma, norm.beta, norm.params)?;
    let y = make_y(&norm_context)?;
    Ok(ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm: norm_context,
    })
}

/// The convolution of `kind`, with `bias` when given, as the BatchNorm after it reads its
/// output ([`conv::forward_kept`]), with its context; `x` handed over.
fn convolved<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    kind: ConvKind,
) -> Result<(SavedInput<E>, Conv2dContext<E>), GpuError> {
    match kind {
        ConvKind::Conv2d(params) => conv::forward_kept(device, x, weight, bias, params),
        ConvKind::Conv1d => {
            let as_2d = Conv1dAs2d::new(x.shape(), weight.shape())?;
            let x_2d = x.reshaped(&as_2d.x)?;
            drop(x);
            let weight = weight.reshaped(&as_2d.weight)?;
            let params = Conv2dParams::new(1, 0);
            let (output, conv) = conv::forward_kept(device, x_2d, &weight, bias, params)?;
            Ok((output.reshaped(&as_2d.output)?, conv))
        }
    }
}

/// Gradients of a convolution (with a bias or without) and the training BatchNorm after it
/// under `format` (`bf16` or `fp16`) from their contexts: the BatchNorm's backward stores its
/// `dx` as the 16-bit `dy` the convolution's backward reads, over the convolution's 16-bit
/// output when its context alone holds it ([`batch_norm::backward_stored_over_input`],
/// [`conv::backward_stored`]), each context freed once it has served; the bits of
/// [`batch_norm::backward`] then [`conv::backward`]. (Under `f32` and `f64` the backend runs
/// those two: `conv_batch_norm_backward_in_turn`.) Errors as the two ops do.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    grad_y: CudaTensor<E>,
    conv: Conv2dContext<E>,
    norm: BatchNormContext<E>,
    kind: ConvKind,
) -> Result<ConvBatchNormGrads<CudaTensor<E>>, GpuError> {
    let grad = GradSource::Tensor(grad_y);
    backward_widened(device, format, grad, conv, norm, kind)
}

/// [`backward`] from the gradient of an average pool after the BatchNorm
/// (`ConvBatchNormOps::avg_pool_conv_batch_norm_backward`): where the BatchNorm's context alone
/// holds the convolution's 16-bit output, its backward makes the pool's `dx` as it reads it
/// ([`GradSource::AvgPooled`]), so no tensor of the BatchNorm's output size holds it; else the
/// pool's backward, then [`backward`]. Either way the bits of [`super::pool::avg_backward`] then
/// [`backward`]. Errors as those do.
pub fn avg_pool_backward<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    pool: AvgPoolGrad<'_, CudaTensor<E>>,
    conv: Conv2dContext<E>,
    norm: BatchNormContext<E>,
    kind: ConvKind,
) -> Result<ConvBatchNormGrads<CudaTensor<E>>, GpuError> {
    let grad = GradSource::AvgPooled(pool);
    backward_widened(device, format, grad, conv, norm, kind)
}

/// [`backward_to_half`], then the convolution's 16-bit `dx` widened to an `f32` tensor.
fn backward_widened<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    grad: GradSource<'_, E>,
    conv: Conv2dContext<E>,
    norm: BatchNormContext<E>,
    kind: ConvKind,
) -> Result<ConvBatchNormGrads<CudaTensor<E>>, GpuError> {
    let grads = backward_to_half(device, format, grad, conv, norm, kind)?;
    grads.finish(|dx, shape| precision::widened_tensor(device, format, &dx.bits, shape))
}

/// [`backward`], then the backward of the neuron whose spikes the convolution read
/// (`ConvBatchNormOps::spiking_conv_batch_norm_backward`), `neuron_backward`, from the
/// convolution's 16-bit `dx` and its flat shape `[T B, ...]`: the neuron reads those patterns as
/// its `dL/ds` ([`super::neuron::backward_from_half`],
/// [`super::neuron::backward_from_half_normalised`]), so no `f32` `dL/ds` is written; the bits of
/// [`backward`] then the neuron's backward. It runs once the convolution's passes have freed their
/// buffers, so a context made again (docs/neurons.md §2.4.2) is not held beside them. Errors as
/// those do.
pub fn spiking_backward<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    grad_y: CudaTensor<E>,
    conv: Conv2dContext<E>,
    norm: BatchNormContext<E>,
    kind: ConvKind,
    neuron_backward: impl FnOnce(HalfBits, &[usize]) -> Result<CudaTensor<E>, GpuError>,
) -> Result<ConvBatchNormGrads<CudaTensor<E>>, GpuError> {
    let grads = backward_to_half(device, format, GradSource::Tensor(grad_y), conv, norm, kind)?;
    grads.finish(neuron_backward)
}

/// The gradients of [`backward`] with `dx` still as its 16-bit patterns.
struct HalfInputGrads<E> {
    /// `dx` (shaped `[N, C, L]` for a 1-D convolution), `dW`, and `db` after a biased convolution.
    conv: StoredGrads<E>,
    gamma: CudaTensor<E>,
    beta: CudaTensor<E>,
}

impl<E> HalfInputGrads<E> {
    /// The gradients with `dx` made by `finish` from its 16-bit patterns and shape.
    fn finish(
        self,
        finish: impl FnOnce(HalfBits, &[usize]) -> Result<CudaTensor<E>, GpuError>,
    ) -> Result<ConvBatchNormGrads<CudaTensor<E>>, GpuError> {
        let StoredGrads {
            input,
            input_shape,
            weight,
            bias,
        } = self.conv;
        Ok(ConvBatchNormGrads {
            input: finish(input, &input_shape)?,
            weight,
            bias,
            gamma: self.gamma,
            beta: self.beta,
        })
    }
}

/// [`backward`] up to the convolution's 16-bit `dx`, `grad` freed once the BatchNorm has read
/// it.
fn backward_to_half<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    grad: GradSource<'_, E>,
    conv: Conv2dContext<E>,
    norm: BatchNormContext<E>,
    kind: ConvKind,
) -> Result<HalfInputGrads<E>, GpuError> {
    let normed = batch_norm::backward_stored_over_input(device, grad, norm, format)?;
    let mut conv = conv::backward_stored(device, format, normed.input, conv)?;
    if kind == ConvKind::Conv1d {
        conv.input_shape = Conv1dAs2d::one_d(&conv.input_shape).to_vec();
        conv.weight = conv
            .weight
            .reshaped(Conv1dAs2d::one_d(conv.weight.shape()))?;
    }
    Ok(HalfInputGrads {
        conv,
        gamma: normed.gamma,
        beta: normed.beta,
    })
}
