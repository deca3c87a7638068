//! [`ConvBatchNormOps`]: a convolution and the training BatchNorm after it as one op, with the
//! neuron that fires over the BatchNorm's output or the average pool after it, and the backwards
//! of those chains. Each op's default runs its ops in turn (the `*_in_turn` functions here); a
//! backend may fuse them so that intermediate tensors are never written (CUDA:
//! `gpu/src/ops/conv_batch_norm.rs`, docs/memory.md §9.6), and every output holds the bits of
//! the ops in turn.

use super::batch_norm::{BatchNormAffine, BatchNormOps, BatchStats};
use super::conv::ConvOps;
use super::neuron::{BackendNeuronSource, NeuronBackward, NeuronOps};
use super::pool::PoolOps;
use super::tensor::{TensorOps, unflatten_time};
use crate::contract::error::Result;
use crate::contract::params::{ConvKind, NeuronConfig, Pool2dParams};

/// Chains of a convolution, its training BatchNorm and the neuron or pool after it, forward
/// and backward, each equal bit for bit to its ops in turn.
pub trait ConvBatchNormOps: ConvOps + BatchNormOps + PoolOps + NeuronOps {
    /// Training-mode BatchNorm over a convolution's output, with its `bias` when it has one,
    /// `batch_norm_train_forward(conv(x, weight) (+ bias))`, with the contexts of both, whose
    /// backwards are [`BatchNormOps::batch_norm_backward`] and [`ConvOps::conv_backward`]. The
    /// default runs the two ops ([`conv_batch_norm_train_forward_in_turn`]). A backend may fuse
    /// them so that the convolution's output never exists in the element type: CUDA under a 16-bit
    /// precision hands the convolution's 16-bit sums (and its bias) to the BatchNorm, which reads
    /// and keeps them (docs/precision.md §"Convolution outputs"). Either way every output and
    /// context holds the bits of the two ops. It takes `x` by value, so that the convolution's
    /// input can be freed before the BatchNorm allocates, as it is when the two layers run in turn.
    fn conv_batch_norm_train_forward(
        &self,
        x: Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, Self::Tensor>,
    ) -> Result<ConvBatchNormTrainOutput<Self::Tensor, Self::Conv2dContext, Self::BatchNormContext>>
    {
        conv_batch_norm_train_forward_in_turn(self, x, weight, bias, kind, norm)
    }

    /// [`ConvBatchNormOps::conv_batch_norm_train_forward`] landing on `onto`: its `y` is
    /// `residual ± batch_norm_train_forward(conv(x, weight) (+ bias))`, the bits of the op then
    /// [`Onto::land`], with the same statistics and contexts. The default runs exactly that. A
    /// backend may write the BatchNorm's output over the residual when nothing else holds it
    /// (CUDA), so that no tensor the size of `y` is allocated (docs/reversible.md §3.3). Errors as
    /// the op does, and when the residual's shape is not `y`'s.
    fn conv_batch_norm_train_forward_onto(
        &self,
        x: Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, Self::Tensor>,
        onto: Onto<Self::Tensor>,
    ) -> Result<ConvBatchNormTrainOutput<Self::Tensor, Self::Conv2dContext, Self::BatchNormContext>>
    {
        let mut output = self.conv_batch_norm_train_forward(x, weight, bias, kind, norm)?;
        output.y = onto.land(self, output.y)?;
        Ok(output)
    }

    /// [`ConvBatchNormOps::conv_batch_norm_train_forward`] of a convolution (with its `bias` when
    /// it has one), then [`PoolOps::avg_pool2d_forward`] of the BatchNorm's output (RevSResNet24's
    /// event stem, docs/architectures.md §4.3): the returned `y` is the pooled output, with the
    /// statistics and both contexts (whose backward is
    /// [`ConvBatchNormOps::avg_pool_conv_batch_norm_backward`]). The default runs the two. A
    /// backend may pool the BatchNorm's output as it makes it from the BatchNorm's input and
    /// statistics, so that it is never written (CUDA: docs/memory.md §9.6); the outputs, statistics
    /// and contexts are the same bits. Errors as the ops do.
    fn conv_batch_norm_train_avg_pool(
        &self,
        x: Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, Self::Tensor>,
        pool: Pool2dParams,
    ) -> Result<ConvBatchNormTrainOutput<Self::Tensor, Self::Conv2dContext, Self::BatchNormContext>>
    {
        conv_batch_norm_train_avg_pool_in_turn(self, x, weight, bias, kind, norm, pool)
    }

    /// The convolution of `kind` with its `bias` when it has one, `conv(x, weight) (+ bias)`, its
    /// training BatchNorm, then the neuron `neuron` firing over the BatchNorm's output unflattened
    /// to `[T, B, ...]` and keeping nothing ([`NeuronOps::neuron_forward_keeping_nothing`], the
    /// fingerprint folded as it folds it): the returned `y` is the spikes `[T, B, ...]`, with the
    /// statistics and both contexts (whose backward is
    /// [`ConvBatchNormOps::conv_batch_norm_backward`], or [`BatchNormOps::batch_norm_backward`] and
    /// [`ConvOps::conv_backward`] in turn); the neuron's backward makes its input again from the
    /// BatchNorm's context (docs/neurons.md §2.4.2). The default runs exactly that
    /// ([`conv_batch_norm_train_fire_in_turn`]). A backend may fire from the BatchNorm's input and
    /// statistics as it normalises, so that the BatchNorm's output is never written (CUDA:
    /// docs/neurons.md §2.4.3); the spikes, the fingerprint, the statistics and the contexts are
    /// the same bits. Errors as the ops do, and when `T` does not divide the output's first axis.
    fn conv_batch_norm_train_fire(
        &self,
        x: Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        kind: ConvKind,
        norm: BatchNormAffine<'_, Self::Tensor>,
        neuron: NeuronFire<'_, Self::Word>,
    ) -> Result<ConvBatchNormTrainOutput<Self::Tensor, Self::Conv2dContext, Self::BatchNormContext>>
    {
        conv_batch_norm_train_fire_in_turn(self, x, weight, bias, kind, norm, neuron)
    }

    /// Gradients of a convolution and the training BatchNorm after it from their two contexts
    /// (those of [`ConvBatchNormOps::conv_batch_norm_train_forward`], or of
    /// [`ConvOps::conv_forward`], with a bias or without, and
    /// [`BatchNormOps::batch_norm_train_forward`]): [`BatchNormOps::batch_norm_backward`], then
    /// [`ConvOps::conv_backward`] of its `dx`. The default runs the two ops. A backend may fuse
    /// them: CUDA under a 16-bit precision has the BatchNorm's last pass write its `dx` as the
    /// 16-bit `dy` the convolution's backward reads (docs/precision.md §"Convolution outputs").
    /// Either way every gradient holds the bits of the two ops. It takes `grad_y` and the contexts
    /// by value, so that each is freed as soon as it has served, as when the two layers run in
    /// turn. Errors as the two ops do.
    fn conv_batch_norm_backward(
        &self,
        grad_y: Self::Tensor,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
    ) -> Result<ConvBatchNormGrads<Self::Tensor>> {
        conv_batch_norm_backward_in_turn(self, grad_y, conv, norm, kind)
    }

    /// Gradients of a convolution, the training BatchNorm after it and an average pool after that
    /// (RevSResNet24's event stem, docs/architectures.md §4.3) from the pool's output gradient and
    /// the two contexts: [`PoolOps::avg_pool2d_backward`], then
    /// [`ConvBatchNormOps::conv_batch_norm_backward`] of its `dx`. The default runs the two. A
    /// backend may fuse them: CUDA under a 16-bit precision makes the pool's `dx` as the
    /// BatchNorm's backward reads it (docs/memory.md §9.6), so no tensor of the BatchNorm's output
    /// size holds it. Either way every gradient holds the bits of the ops in turn. Errors as those
    /// do.
    fn avg_pool_conv_batch_norm_backward(
        &self,
        pool: AvgPoolGrad<'_, Self::Tensor>,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
    ) -> Result<ConvBatchNormGrads<Self::Tensor>> {
        avg_pool_conv_batch_norm_backward_in_turn(self, pool, conv, norm, kind)
    }

    /// Gradients of `BN(conv(SN(x)))` over `x [T, B, ...]`, the spiking convolution of every model
    /// (docs/architectures.md §4.0), from the three contexts:
    /// [`ConvBatchNormOps::conv_batch_norm_backward`], then [`NeuronOps::neuron_backward`] of its
    /// `dx` unflattened to `[T, B, ...]`; `input` is `dL/dx`. The default runs the two ops. A
    /// backend may fuse them: CUDA under a 16-bit precision has the neuron's backward read the
    /// convolution's 16-bit `dx` and write `dL/dx` over the membrane potentials it kept, so no
    /// `f32` `dL/ds` is written (docs/memory.md §9.6). Either way every gradient holds the bits of
    /// the two ops. Errors as the two ops do.
    fn spiking_conv_batch_norm_backward(
        &self,
        grad_y: Self::Tensor,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
        neuron: NeuronBackward<'_, BackendNeuronSource<'_, Self>>,
    ) -> Result<ConvBatchNormGrads<Self::Tensor>> {
        spiking_conv_batch_norm_backward_in_turn(self, grad_y, conv, norm, kind, neuron)
    }
}

/// What [`ConvBatchNormOps::conv_batch_norm_train_forward`] returns: the BatchNorm's output and
/// batch statistics, and the contexts of the convolution's and the BatchNorm's backwards.
#[derive(Debug)]
pub struct ConvBatchNormTrainOutput<T, ConvContext, NormContext> {
    pub y: T,
    pub batch: BatchStats<T>,
    pub conv: ConvContext,
    pub norm: NormContext,
}

/// How an op's output `y` lands on a residual: `residual + y` or `residual - y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Add,
    Sub,
}

/// The residual an op's output lands on ([`ConvBatchNormOps::conv_batch_norm_train_forward_onto`]):
/// the reversible couplings `y1 = x1 + F(x2)` and `x1 = y1 - F(x2)` (docs/reversible.md §3.3),
/// where F's last op may write its output over the residual, which nothing else needs.
#[derive(Clone, Debug)]
pub struct Onto<T> {
    pub residual: T,
    pub combine: Combine,
}

impl<T> Onto<T> {
    /// `residual + y`.
    pub fn add(residual: T) -> Self {
        Onto {
            residual,
            combine: Combine::Add,
        }
    }

    /// `residual - y`.
    pub fn sub(residual: T) -> Self {
        Onto {
            residual,
            combine: Combine::Sub,
        }
    }

    /// The same combination onto another handle on the residual (a reshape of it).
    pub fn map<U, Error>(
        self,
        f: impl FnOnce(T) -> std::result::Result<U, Error>,
    ) -> std::result::Result<Onto<U>, Error> {
        Ok(Onto {
            residual: f(self.residual)?,
            combine: self.combine,
        })
    }

    /// `residual ± y` by [`TensorOps::add_reusing`] or [`TensorOps::sub_reusing`], over `y`'s
    /// storage: what an op that writes its output over the residual instead must equal, bit for
    /// bit. Errors unless the shapes are equal.
    pub fn land<B: TensorOps<Tensor = T>>(self, backend: &B, y: T) -> Result<T> {
        match self.combine {
            Combine::Add => backend.add_reusing(&self.residual, y),
            Combine::Sub => backend.sub_reusing(&self.residual, y),
        }
    }
}

/// Gradients of a convolution and the training BatchNorm after it
/// ([`ConvBatchNormOps::conv_batch_norm_backward`]) with respect to the convolution's input, weight
/// and bias, and the BatchNorm's scale and shift.
#[derive(Clone, Debug)]
pub struct ConvBatchNormGrads<T> {
    pub input: T,
    pub weight: T,
    /// Present iff the convolution had a bias.
    pub bias: Option<T>,
    pub gamma: T,
    pub beta: T,
}

/// The average pool after a convolution's BatchNorm, as
/// [`ConvBatchNormOps::avg_pool_conv_batch_norm_backward`] takes it.
#[derive(Debug)]
pub struct AvgPoolGrad<'a, T> {
    /// The gradient of the pool's output `[N, C, H_out, W_out]`, handed over.
    pub grad_y: T,
    /// The pool's input shape `[N, C, H, W]`: the BatchNorm's output.
    pub input_shape: &'a [usize],
    /// The pool's window.
    pub params: Pool2dParams,
}

/// The neuron that fires over a training BatchNorm's output keeping nothing, as
/// [`ConvBatchNormOps::conv_batch_norm_train_fire`] takes it: its configuration, `T`, which
/// unflattens the BatchNorm's `[T B, ...]` output to the neuron's `[T, B, ...]`, and the
/// fingerprint word its spikes are folded into, when there is one.
#[derive(Debug)]
pub struct NeuronFire<'a, W> {
    pub config: &'a NeuronConfig,
    pub time_steps: usize,
    pub fingerprint: Option<&'a mut W>,
}

/// [`ConvBatchNormOps::conv_batch_norm_train_forward`] as its two ops in turn, the convolution with
/// `bias` when given: [`ConvOps::conv_forward`], `x` dropped, then
/// [`BatchNormOps::batch_norm_train_forward`]. The default, and the first half of
/// [`conv_batch_norm_train_fire_in_turn`].
pub fn conv_batch_norm_train_forward_in_turn<B: ConvOps + BatchNormOps>(
    backend: &B,
    x: B::Tensor,
    weight: &B::Tensor,
    bias: Option<&B::Tensor>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, B::Tensor>,
) -> Result<ConvBatchNormTrainOutput<B::Tensor, B::Conv2dContext, B::BatchNormContext>> {
    let (conv_y, conv) = backend.conv_forward(&x, weight, bias, kind)?;
    drop(x);
    let (y, batch, norm_context) =
        backend.batch_norm_train_forward(&conv_y, norm.gamma, norm.beta, norm.params)?;
    Ok(ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm: norm_context,
    })
}

/// [`ConvBatchNormOps::conv_batch_norm_train_avg_pool`] as its ops in turn: the default, and what a
/// backend that fuses them runs where it does not.
pub fn conv_batch_norm_train_avg_pool_in_turn<B: ConvBatchNormOps>(
    backend: &B,
    x: B::Tensor,
    weight: &B::Tensor,
    bias: Option<&B::Tensor>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, B::Tensor>,
    pool: Pool2dParams,
) -> Result<ConvBatchNormTrainOutput<B::Tensor, B::Conv2dContext, B::BatchNormContext>> {
    let ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm,
    } = backend.conv_batch_norm_train_forward(x, weight, bias, kind, norm)?;
    let pooled = backend.avg_pool2d_forward(&y, pool)?;
    drop(y);
    Ok(ConvBatchNormTrainOutput {
        y: pooled,
        batch,
        conv,
        norm,
    })
}

/// [`ConvBatchNormOps::conv_batch_norm_train_fire`] as its ops in turn: the default, and what a
/// backend that fuses them is checked against.
pub fn conv_batch_norm_train_fire_in_turn<B: ConvBatchNormOps>(
    backend: &B,
    x: B::Tensor,
    weight: &B::Tensor,
    bias: Option<&B::Tensor>,
    kind: ConvKind,
    norm: BatchNormAffine<'_, B::Tensor>,
    neuron: NeuronFire<'_, B::Word>,
) -> Result<ConvBatchNormTrainOutput<B::Tensor, B::Conv2dContext, B::BatchNormContext>> {
    let output = conv_batch_norm_train_forward_in_turn(backend, x, weight, bias, kind, norm)?;
    let ConvBatchNormTrainOutput {
        y,
        batch,
        conv,
        norm,
    } = output;
    let x = unflatten_time(backend, &y, neuron.time_steps)?;
    drop(y);
    let spikes = backend.neuron_forward_keeping_nothing(x, neuron.config, neuron.fingerprint)?;
    Ok(ConvBatchNormTrainOutput {
        y: spikes,
        batch,
        conv,
        norm,
    })
}

/// [`ConvBatchNormOps::conv_batch_norm_backward`] as its two ops in turn: the default, and what a
/// backend that fuses them runs where it does not (CUDA under `f32` and `f64`).
pub fn conv_batch_norm_backward_in_turn<B: ConvOps + BatchNormOps>(
    backend: &B,
    grad_y: B::Tensor,
    conv: B::Conv2dContext,
    norm: B::BatchNormContext,
    kind: ConvKind,
) -> Result<ConvBatchNormGrads<B::Tensor>> {
    let normed = backend.batch_norm_backward(&grad_y, &norm)?;
    drop((grad_y, norm));
    let grads = backend.conv_backward(normed.input, &conv, kind)?;
    Ok(ConvBatchNormGrads {
        input: grads.input,
        weight: grads.weight,
        bias: grads.bias,
        gamma: normed.gamma,
        beta: normed.beta,
    })
}

/// [`ConvBatchNormOps::avg_pool_conv_batch_norm_backward`] as its ops in turn: the default, and
/// what a backend that fuses them runs where it does not.
pub fn avg_pool_conv_batch_norm_backward_in_turn<B: ConvBatchNormOps>(
    backend: &B,
    pool: AvgPoolGrad<'_, B::Tensor>,
    conv: B::Conv2dContext,
    norm: B::BatchNormContext,
    kind: ConvKind,
) -> Result<ConvBatchNormGrads<B::Tensor>> {
    let grad_y = backend.avg_pool2d_backward(&pool.grad_y, pool.input_shape, pool.params)?;
    drop(pool.grad_y);
    backend.conv_batch_norm_backward(grad_y, conv, norm, kind)
}

/// [`ConvBatchNormOps::spiking_conv_batch_norm_backward`] as its ops in turn: the default, and what
/// a backend that fuses them runs where it does not (CUDA under `f32` and `f64`).
pub fn spiking_conv_batch_norm_backward_in_turn<B: ConvBatchNormOps>(
    backend: &B,
    grad_y: B::Tensor,
    conv: B::Conv2dContext,
    norm: B::BatchNormContext,
    kind: ConvKind,
    neuron: NeuronBackward<'_, BackendNeuronSource<'_, B>>,
) -> Result<ConvBatchNormGrads<B::Tensor>> {
    let grads = backend.conv_batch_norm_backward(grad_y, conv, norm, kind)?;
    let grad_spikes = unflatten_time(backend, &grads.input, neuron.time_steps)?;
    drop(grads.input);
    let input = backend.neuron_backward_from_source(grad_spikes, neuron)?;
    Ok(ConvBatchNormGrads { input, ..grads })
}
