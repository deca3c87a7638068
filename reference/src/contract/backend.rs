//! The op contract: every op a RevSNN model needs, as a forward that returns its output and the
//! context its backward needs, and a backward that consumes that context (docs/design.md principle 1).
//! There is no general autograd: layers call these ops and keep the contexts on their own tape.
//!
//! Layouts follow PyTorch: images `[N, C, H, W]`, sequences time-first `[T, ...]`, weights
//! `[C_out, C_in, k_h, k_w]` and `[out, in]`. Every op checks its shapes and parameters and returns
//! an [`OpError`](crate::OpError) instead of panicking.

use std::fmt::Debug;

use super::element::Element;
use super::error::{OpError, Result};
use super::params::{
    AdamWParams, BatchNormParams, Conv2dParams, ConvKind, NeuronConfig, Pool2dParams, SgdParams,
};
use super::precision::Precision;
use super::shapes::{Conv1dAs2d, time_split};

/// Gradients of a convolution.
#[derive(Clone, Debug)]
pub struct Conv2dGrads<T> {
    pub input: T,
    pub weight: T,
    /// Present iff the forward had a bias.
    pub bias: Option<T>,
}

/// Gradients of a linear layer.
#[derive(Clone, Debug)]
pub struct LinearGrads<T> {
    pub input: T,
    pub weight: T,
    /// Present iff the forward had a bias.
    pub bias: Option<T>,
}

/// Gradients of a batch normalisation.
#[derive(Clone, Debug)]
pub struct BatchNormGrads<T> {
    pub input: T,
    pub gamma: T,
    pub beta: T,
}

/// Per-channel statistics of one training-mode batch normalisation: the biased variance
/// normalises, the unbiased one (`n / (n - 1)` times it) updates the running variance.
#[derive(Clone, Debug)]
pub struct BatchStats<T> {
    pub mean: T,
    pub var_unbiased: T,
}

/// What a training-mode batch normalisation returns: the output, the batch statistics and the
/// context of its backward.
pub type BatchNormTrainOutput<T, C> = (T, BatchStats<T>, C);

/// A BatchNorm's affine parameters `gamma` and `beta` (each `[C]`) and its parameters.
#[derive(Debug)]
pub struct BatchNormAffine<'a, T> {
    pub gamma: &'a T,
    pub beta: &'a T,
    pub params: BatchNormParams,
}

// Copied whatever `T` is (a derive would ask `T: Copy`).
impl<T> Clone for BatchNormAffine<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for BatchNormAffine<'_, T> {}

/// What [`Backend::conv_batch_norm_train_forward`] returns: the BatchNorm's output and batch
/// statistics, and the contexts of the convolution's and the BatchNorm's backwards.
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

/// The residual an op's output lands on ([`Backend::conv_batch_norm_train_forward_onto`]): the
/// reversible couplings `y1 = x1 + F(x2)` and `x1 = y1 - F(x2)` (docs/reversible.md §3.3), where
/// F's last op may write its output over the residual, which nothing else needs.
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

    /// `residual ± y` by [`Backend::add_reusing`] or [`Backend::sub_reusing`], over `y`'s
    /// storage: what an op that writes its output over the residual instead must equal, bit for
    /// bit. Errors unless the shapes are equal.
    pub fn land<B: Backend<Tensor = T>>(self, backend: &B, y: T) -> Result<T> {
        match self.combine {
            Combine::Add => backend.add_reusing(&self.residual, y),
            Combine::Sub => backend.sub_reusing(&self.residual, y),
        }
    }
}

/// Gradients of a convolution and the training BatchNorm after it
/// ([`Backend::conv_batch_norm_backward`]) with respect to the convolution's input, weight and
/// bias, and the BatchNorm's scale and shift.
#[derive(Clone, Debug)]
pub struct ConvBatchNormGrads<T> {
    pub input: T,
    pub weight: T,
    /// Present iff the convolution had a bias.
    pub bias: Option<T>,
    pub gamma: T,
    pub beta: T,
}

/// [`Backend::conv_batch_norm_backward`] as its two ops in turn: the default, and what a backend
/// that fuses them runs where it does not (CUDA under `f32` and `f64`).
pub fn conv_batch_norm_backward_in_turn<B: Backend>(
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

/// The average pool after a convolution's BatchNorm, as
/// [`Backend::avg_pool_conv_batch_norm_backward`] takes it.
#[derive(Debug)]
pub struct AvgPoolGrad<'a, T> {
    /// The gradient of the pool's output `[N, C, H_out, W_out]`, handed over.
    pub grad_y: T,
    /// The pool's input shape `[N, C, H, W]`: the BatchNorm's output.
    pub input_shape: &'a [usize],
    /// The pool's window.
    pub params: Pool2dParams,
}

/// [`Backend::avg_pool_conv_batch_norm_backward`] as its ops in turn: the default, and what a
/// backend that fuses them runs where it does not.
pub fn avg_pool_conv_batch_norm_backward_in_turn<B: Backend>(
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

/// The neuron whose spikes a convolution read, as [`Backend::spiking_conv_batch_norm_backward`]
/// takes it: where its context comes from (handed over, so a backend may write the gradient over
/// what it keeps), the configuration it ran with, and `T`, which unflattens the convolution's
/// `[T B, ...]` gradient to the neuron's `[T, B, ...]`.
#[derive(Debug)]
pub struct NeuronBackward<'a, S> {
    pub source: S,
    pub config: &'a NeuronConfig,
    pub time_steps: usize,
}

/// The neuron that fires over a training BatchNorm's output keeping nothing, as
/// [`Backend::conv_batch_norm_train_fire`] takes it: its configuration, `T`, which unflattens the
/// BatchNorm's `[T B, ...]` output to the neuron's `[T, B, ...]`, and the fingerprint word its
/// spikes are folded into, when there is one.
#[derive(Debug)]
pub struct NeuronFire<'a, W> {
    pub config: &'a NeuronConfig,
    pub time_steps: usize,
    pub fingerprint: Option<&'a mut W>,
}

/// Where a neuron's backward finds its context (docs/neurons.md §2.4.2): the one its forward
/// returned, or, for a neuron that kept nothing because its input was a training BatchNorm's
/// output, that BatchNorm's context and a copy of its shift, from which the output is computed
/// again ([`Backend::batch_norm_train_output`]) and charged ([`Backend::neuron_charge`]): the
/// same `h`, bit for bit, allocated only once the backward needs it.
#[derive(Debug)]
pub enum NeuronSource<'a, N, Norm, T> {
    Kept(N),
    Normalised { norm: &'a Norm, beta: T },
}

/// [`NeuronSource`] over a backend's types.
pub type BackendNeuronSource<'a, B> = NeuronSource<
    'a,
    <B as Backend>::NeuronContext,
    <B as Backend>::BatchNormContext,
    <B as Backend>::Tensor,
>;

/// The context `source` holds or makes again: the kept one, or the BatchNorm's `[T B, ...]`
/// output computed again, unflattened to the neuron's `[T, B, ...]` and charged.
pub fn neuron_context<B: Backend>(
    backend: &B,
    source: BackendNeuronSource<'_, B>,
    config: &NeuronConfig,
    time_steps: usize,
) -> Result<B::NeuronContext> {
    match source {
        NeuronSource::Kept(context) => Ok(context),
        NeuronSource::Normalised { norm, beta } => {
            let flat = backend.batch_norm_train_output(norm, &beta)?;
            let x = unflatten_time(backend, &flat, time_steps)?;
            drop(flat);
            backend.neuron_charge(x, config)
        }
    }
}

/// `[T, B, ...] -> [T B, ...]`, the time-flattened layout of SpikingJelly's `SeqToANNContainer`
/// (docs/conventions.md §1). Errors when `x` has fewer than two axes.
pub fn flatten_time<B: Backend>(backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
    let shape = backend.shape(x);
    if shape.len() < 2 {
        let detail = format!("a tensor of shape {shape:?} has no [T, B] axes to flatten");
        return Err(OpError::shape("flatten_time", detail));
    }
    let mut flat = vec![shape[0] * shape[1]];
    flat.extend_from_slice(&shape[2..]);
    backend.reshape(x, &flat)
}

/// `[T B, ...] -> [T, B, ...]` ([`time_split`]).
pub fn unflatten_time<B: Backend>(
    backend: &B,
    x: &B::Tensor,
    time_steps: usize,
) -> Result<B::Tensor> {
    backend.reshape(x, &time_split(&backend.shape(x), time_steps)?)
}

/// [`Backend::neuron_backward_from_source`] as its ops in turn: the default, and what a backend
/// that fuses them runs where it does not.
pub fn neuron_backward_from_source_in_turn<B: Backend>(
    backend: &B,
    grad_spikes: B::Tensor,
    neuron: NeuronBackward<'_, BackendNeuronSource<'_, B>>,
) -> Result<B::Tensor> {
    let context = neuron_context(backend, neuron.source, neuron.config, neuron.time_steps)?;
    backend.neuron_backward(grad_spikes, &context, neuron.config)
}

/// [`Backend::conv_batch_norm_train_forward`] as its two ops in turn, the convolution with `bias`
/// when given: [`Backend::conv_forward`], `x` dropped, then [`Backend::batch_norm_train_forward`].
/// The default, and the first half of [`conv_batch_norm_train_fire_in_turn`].
pub fn conv_batch_norm_train_forward_in_turn<B: Backend>(
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

/// [`Backend::conv_batch_norm_train_avg_pool`] as its ops in turn: the default, and what a backend
/// that fuses them runs where it does not.
pub fn conv_batch_norm_train_avg_pool_in_turn<B: Backend>(
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

/// [`Backend::conv_batch_norm_train_fire`] as its ops in turn: the default, and what a backend
/// that fuses them is checked against.
pub fn conv_batch_norm_train_fire_in_turn<B: Backend>(
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

/// [`Backend::spiking_conv_batch_norm_backward`] as its ops in turn: the default, and what a
/// backend that fuses them runs where it does not (CUDA under `f32` and `f64`).
pub fn spiking_conv_batch_norm_backward_in_turn<B: Backend>(
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

/// The operands of spiking self-attention's products as [`Backend::attention_forward`] keeps
/// them for [`Backend::attention_backward`] ([`Backend::keep`]): the per-head transposes
/// `q^T`, `k^T`, `v^T` `[..., d, N]`.
#[derive(Clone, Debug)]
pub struct AttentionKept<K> {
    pub q_t: K,
    pub k_t: K,
    pub v_t: K,
}

/// Gradients of [`Backend::attention_forward`] with respect to `q^T`, `k^T` and `v^T`.
#[derive(Clone, Debug)]
pub struct AttentionGrads<T> {
    pub q_t: T,
    pub k_t: T,
    pub v_t: T,
}

/// [`Backend::attention_forward`] as its two products in turn: the default, and what a backend
/// that fuses them runs where it does not (CUDA under `f32` and `f64`).
pub fn attention_forward_in_turn<B: Backend>(
    backend: &B,
    q_t: B::Tensor,
    k_t: B::Tensor,
    v_t: B::Tensor,
) -> Result<(B::Tensor, AttentionKept<B::Kept>)> {
    // attn[n, m] = sum_j q[n, j] k[m, j] = ((q^T)^T k^T)[n, m].
    let attn = backend.batched_matmul(&q_t, &k_t, true, false)?;
    // o^T[j, n] = sum_m v[m, j] attn[n, m] = (v^T attn^T)[j, n].
    let o_t = backend.batched_matmul(&v_t, &attn, false, true)?;
    drop(attn);
    let kept = AttentionKept {
        q_t: backend.keep(&q_t)?,
        k_t: backend.keep(&k_t)?,
        v_t: backend.keep(&v_t)?,
    };
    Ok((o_t, kept))
}

/// [`Backend::attention_backward`] as its five products in turn: the default, and what a backend
/// that fuses them runs where it does not. Each tensor is dropped after its last use, so the
/// later products do not hold it.
pub fn attention_backward_in_turn<B: Backend>(
    backend: &B,
    grad_o_t: B::Tensor,
    kept: AttentionKept<B::Kept>,
) -> Result<AttentionGrads<B::Tensor>> {
    let AttentionKept { q_t, k_t, v_t } = kept;
    // The scores again: the forward's product of the same operands, so the same bits.
    let attn = backend.batched_matmul(&backend.kept(&q_t)?, &backend.kept(&k_t)?, true, false)?;
    // o^T = v^T attn^T: d(v^T) = d(o^T) attn, d(attn) = d(o^T)^T v^T.
    let grad_v_t = backend.batched_matmul(&grad_o_t, &attn, false, false)?;
    drop(attn);
    let grad_attn = backend.batched_matmul(&grad_o_t, &backend.kept(&v_t)?, true, false)?;
    drop((grad_o_t, v_t));
    // attn = (q^T)^T k^T: d(q^T) = k^T d(attn)^T, d(k^T) = q^T d(attn).
    let grad_q_t = backend.batched_matmul(&backend.kept(&k_t)?, &grad_attn, false, true)?;
    drop(k_t);
    let grad_k_t = backend.batched_matmul(&backend.kept(&q_t)?, &grad_attn, false, false)?;
    Ok(AttentionGrads {
        q_t: grad_q_t,
        k_t: grad_k_t,
        v_t: grad_v_t,
    })
}

/// What a neuron's context keeps for its backward (docs/neurons.md §2.4.1): the membrane
/// potentials `h [T, ...]` it charged, or its input `x [T, ...]` itself, from which the backward
/// charges `h` again, bit for bit. Keeping the input costs no memory of its own when the caller
/// holds `x` through the backward anyway (a reversible block's F and G, docs/reversible.md §3.3).
#[derive(Clone, Debug)]
pub enum NeuronKept<T> {
    /// The membrane potentials `h`.
    Potentials(T),
    /// The input `x`, shared with the caller.
    Input(T),
}

impl<T> NeuronKept<T> {
    /// The kept tensor, shaped like the neuron's input.
    pub fn tensor(&self) -> &T {
        match self {
            NeuronKept::Potentials(t) | NeuronKept::Input(t) => t,
        }
    }
}

/// Which batch-norm forward made a context, and so which backward applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchNormMode {
    /// Batch statistics: the gradient flows through the mean and the variance too.
    Train,
    /// Running statistics: a fixed per-channel affine map.
    Eval,
}

/// A BatchNorm layer's running statistics, `[C]` each.
#[derive(Clone, Debug)]
pub struct RunningStats<T> {
    pub mean: T,
    pub var: T,
}

/// The op contract, implemented by the CPU reference ([`crate::Cpu`]) and the CUDA backend.
///
/// A backend is a cheap handle (`Clone`); its tensors are immutable shared values whose `clone`
/// costs no copy, so a context may keep a tensor the caller keeps too without doubling memory.
pub trait Backend: Clone + Debug + Send + Sync + 'static {
    /// The float type every tensor of this backend holds.
    type Elem: Element;
    /// A dense row-major tensor.
    type Tensor: Clone + Debug + Send + Sync;
    /// What [`Backend::neuron_backward`] needs ([`NeuronKept`]): the membrane potentials `h`
    /// (spikes are a function of `h` and are recomputed from it), or the input `h` is charged from.
    type NeuronContext: Debug + Send + Sync;
    /// What [`Backend::conv2d_backward`] needs.
    type Conv2dContext: Debug + Send + Sync;
    /// What [`Backend::batch_norm_backward`] needs.
    type BatchNormContext: Debug + Send + Sync;
    /// What [`Backend::max_pool2d_backward`] needs: the position of each window's maximum.
    type MaxPoolContext: Debug + Send + Sync;
    /// What [`Backend::cross_entropy_backward`] needs: the softmax and the targets.
    type CrossEntropyContext: Debug + Send + Sync;
    /// A tensor as a layer keeps it for its backward ([`Backend::keep`]): its values exactly,
    /// in the backend's most compact form.
    type Kept: Debug + Send + Sync;
    /// A 64-bit word kept where the backend computes (on a GPU, device memory): spike
    /// fingerprints fold into it and counts add into it without the host waiting; only
    /// [`Backend::read_word`] brings it back (docs/reversible.md §3.3).
    type Word: Debug + Send + Sync;

    /// A short name for messages, e.g. `cpu-f64`.
    fn name(&self) -> String;

    /// The precision of this backend's GEMM operands (docs/precision.md): convolutions, linear
    /// layers and batched matmuls take operands in this format, forward and backward, and
    /// accumulate in [`Backend::Elem`]; every other op computes in [`Backend::Elem`].
    fn precision(&self) -> Precision;

    // ---------------------------------------------------------------- tensors

    /// A tensor of `shape` holding `data` in row-major order.
    fn tensor_from_vec(&self, shape: &[usize], data: Vec<Self::Elem>) -> Result<Self::Tensor>;
    /// The elements of `x` in row-major order.
    fn to_vec(&self, x: &Self::Tensor) -> Result<Vec<Self::Elem>>;
    /// The shape of `x`.
    fn shape(&self, x: &Self::Tensor) -> Vec<usize>;
    /// A tensor of zeros.
    fn zeros(&self, shape: &[usize]) -> Result<Self::Tensor>;
    /// The same elements under another shape of equal size.
    fn reshape(&self, x: &Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;
    /// `y = x.permute(axes)`, materialised row-major; its backward is the inverse permutation.
    fn permute(&self, x: &Self::Tensor, axes: &[usize]) -> Result<Self::Tensor>;
    /// `x` as a layer keeps it for its backward: the CPU keeps the tensor itself; CUDA keeps a
    /// neuron's spikes one bit each (docs/precision.md §"Spike bits"), and the tensor
    /// itself otherwise, so the caller's tensor can be freed.
    fn keep(&self, x: &Self::Tensor) -> Result<Self::Kept>;
    /// The tensor [`Backend::keep`] kept, with the same values.
    fn kept(&self, kept: &Self::Kept) -> Result<Self::Tensor>;

    // ---------------------------------------------------------------- elementwise and structure

    /// `y = a + b`, equal shapes.
    fn add(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// `y = a - b`, equal shapes.
    fn sub(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;
    /// [`Backend::add`] with `b` handed over: the same values, which a backend may write over
    /// `b`'s storage when nothing else holds it, allocating nothing (the reversible stream's
    /// couplings and gradient sums, docs/reversible.md §3.3). The default calls `add`.
    fn add_reusing(&self, a: &Self::Tensor, b: Self::Tensor) -> Result<Self::Tensor> {
        self.add(a, &b)
    }
    /// [`Backend::sub`] with `b` handed over, as [`Backend::add_reusing`].
    fn sub_reusing(&self, a: &Self::Tensor, b: Self::Tensor) -> Result<Self::Tensor> {
        self.sub(a, &b)
    }
    /// `y = factor * x`.
    fn scale(&self, x: &Self::Tensor, factor: Self::Elem) -> Result<Self::Tensor>;
    /// `y = x[.., start..start + len, ..]` along `axis` (the channel split of docs/reversible.md §3.1).
    fn narrow(
        &self,
        x: &Self::Tensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Self::Tensor>;
    /// Concatenation along `axis`; the backward is [`Backend::narrow`] of each part.
    fn concat(&self, parts: &[&Self::Tensor], axis: usize) -> Result<Self::Tensor>;
    /// `y[t] = x` for `t < times`: `[...] -> [times, ...]`, the direct encoding of docs/architectures.md §4.1.
    fn repeat_leading(&self, x: &Self::Tensor, times: usize) -> Result<Self::Tensor>;
    /// `y = round(x 2^k) 2^-k`, the fixed-point grid of the exact reversible coupling (its
    /// gradient is taken as the identity, straight through).
    fn quantize(&self, x: &Self::Tensor, k: i32) -> Result<Self::Tensor>;
    /// A hash of the shape and of every element's bits: equal for bitwise-equal tensors.
    fn fingerprint(&self, x: &Self::Tensor) -> Result<u64>;
    /// A new [`Backend::Word`] holding 0.
    fn zero_word(&self) -> Result<Self::Word>;
    /// `word = word.rotate_left(5) ^ fingerprint(x)`, computed where the word lives: the value
    /// the host would get from [`Backend::fingerprint`], with no wait.
    fn fold_fingerprint(&self, word: &mut Self::Word, x: &Self::Tensor) -> Result<()>;
    /// `count += (a != b) as u64`, computed where the words live, with no wait.
    fn count_unequal(&self, count: &mut Self::Word, a: &Self::Word, b: &Self::Word) -> Result<()>;
    /// The value of `word` on the host (on a GPU, waits for the queued work).
    fn read_word(&self, word: &Self::Word) -> Result<u64>;
    /// The number of NaN and infinite elements over all of `tensors`: one reduction whose single
    /// count is read back, so that training can check every parameter after each optimizer step
    /// at the cost of one pass over them.
    fn count_non_finite(&self, tensors: &[&Self::Tensor]) -> Result<u64>;
    /// `y = sum_t x[t]`: `[T, ...] -> [...]`, the backward of [`Backend::repeat_leading`].
    fn sum_leading(&self, x: &Self::Tensor) -> Result<Self::Tensor>;
    /// Mean over the listed axes, which are removed: the mean over time, over tokens, and the
    /// adaptive average pool to 1x1 (`mean_axes(x, &[2, 3])` on `[N, C, H, W]`).
    fn mean_axes(&self, x: &Self::Tensor, axes: &[usize]) -> Result<Self::Tensor>;
    /// The backward of [`Backend::mean_axes`]: `dx = broadcast(dy) / (product of the reduced sizes)`.
    fn mean_axes_backward(
        &self,
        grad_y: &Self::Tensor,
        input_shape: &[usize],
        axes: &[usize],
    ) -> Result<Self::Tensor>;

    // ---------------------------------------------------------------- spiking neurons (docs/neurons.md §2)

    /// A multi-step neuron layer over `x` of shape `[T, ...]`, starting from `v = 0`
    /// (docs/neurons.md §2.2): `h[t] = charge(v[t-1], x[t])`, `s[t] = Heaviside(h[t] - V_th)`,
    /// `v[t] = (1 - s[t]) h[t]`. Returns the spikes `[T, ...]` and a context keeping `h`
    /// ([`NeuronKept::Potentials`]). `x` is handed over: a backend may write `h` over it when
    /// nothing else holds it (CUDA does, docs/neurons.md §2.4.1).
    fn neuron_forward(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
    ) -> Result<(Self::Tensor, Self::NeuronContext)>;
    /// [`Backend::neuron_forward`] whose context keeps `x` itself ([`NeuronKept::Input`]) and
    /// no tensor of its own: the backward charges `h` from `x` again, so its gradient is
    /// bitwise [`Backend::neuron_forward`]'s. For callers that hold `x` through the backward.
    fn neuron_forward_keeping_input(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
    ) -> Result<(Self::Tensor, Self::NeuronContext)>;
    /// The spikes of [`Backend::neuron_forward`] and no context, with their fingerprint folded
    /// into `fingerprint` when given (as [`Backend::neuron_forward_fingerprinted`] folds it): for
    /// a neuron whose input is made again for its backward (docs/neurons.md §2.4.2). `x` is
    /// handed over: CUDA writes the spikes over it when nothing else holds it. The default runs
    /// [`Backend::neuron_forward_keeping_input`] and drops the context.
    fn neuron_forward_keeping_nothing(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
        fingerprint: Option<&mut Self::Word>,
    ) -> Result<Self::Tensor> {
        let (spikes, _) = self.neuron_forward_keeping_input(x, config)?;
        if let Some(word) = fingerprint {
            self.fold_fingerprint(word, &spikes)?;
        }
        Ok(spikes)
    }
    /// [`Backend::neuron_forward`], or with `keeps_input` [`Backend::neuron_forward_keeping_input`],
    /// with the spikes' fingerprint folded into `word` as [`Backend::fold_fingerprint`] folds it:
    /// the same spikes, context and word. The default runs the two; CUDA sums the fingerprint's
    /// terms in the neuron's kernel as it writes the spikes, which are then not read again.
    fn neuron_forward_fingerprinted(
        &self,
        x: Self::Tensor,
        config: &NeuronConfig,
        keeps_input: bool,
        word: &mut Self::Word,
    ) -> Result<(Self::Tensor, Self::NeuronContext)> {
        let (spikes, context) = if keeps_input {
            self.neuron_forward_keeping_input(x, config)?
        } else {
            self.neuron_forward(x, config)?
        };
        self.fold_fingerprint(word, &spikes)?;
        Ok((spikes, context))
    }
    /// The context [`Backend::neuron_forward`] returns for `x` (keeping `h`), without the spikes:
    /// for a neuron whose input is made again for its backward (docs/neurons.md §2.4.2). The
    /// default runs the forward and drops the spikes; CUDA writes `h` alone, over `x` when
    /// nothing else holds it.
    fn neuron_charge(&self, x: Self::Tensor, config: &NeuronConfig) -> Result<Self::NeuronContext> {
        Ok(self.neuron_forward(x, config)?.1)
    }
    /// Backward through time (docs/neurons.md §2.4): `dL/dh[t] = dL/ds[t] psi[t] + dv/dh[t] k dL/dh[t+1]`,
    /// `dL/dx[t] = r dL/dh[t]`. `dL/ds` is handed over: a backend may write `dL/dx` over it when
    /// nothing else holds it (CUDA does for a context that keeps `h`).
    fn neuron_backward(
        &self,
        grad_spikes: Self::Tensor,
        context: &Self::NeuronContext,
        config: &NeuronConfig,
    ) -> Result<Self::Tensor>;
    /// [`Backend::neuron_backward`] with the context where `neuron.source` finds it: kept, or
    /// made again from the training BatchNorm whose output was the neuron's input
    /// ([`neuron_context`], docs/neurons.md §2.4.2). The default makes the context and runs the
    /// backward ([`neuron_backward_from_source_in_turn`]). A backend may fuse them: CUDA makes the
    /// BatchNorm's output again and charges `h` inside the backward's kernel, writing neither.
    /// Every bit is the default's. Errors as the ops in turn do.
    fn neuron_backward_from_source(
        &self,
        grad_spikes: Self::Tensor,
        neuron: NeuronBackward<'_, BackendNeuronSource<'_, Self>>,
    ) -> Result<Self::Tensor> {
        neuron_backward_from_source_in_turn(self, grad_spikes, neuron)
    }

    // ---------------------------------------------------------------- convolution

    /// `y[n, o] = bias[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, c, stride y + i, stride x + j]`:
    /// `x [N, C_in, H, W]`, `w [C_out, C_in, k_h, k_w]`, bias `[C_out]`, zero padding.
    fn conv2d_forward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        params: Conv2dParams,
    ) -> Result<(Self::Tensor, Self::Conv2dContext)>;
    /// Gradients of [`Backend::conv2d_forward`] with respect to input, weight and bias. It takes
    /// `grad_y` by value, so that a backend may free it once read: CUDA under a 16-bit precision
    /// keeps only its rounded 16-bit copy (docs/precision.md §"Convolution outputs").
    fn conv2d_backward(
        &self,
        grad_y: Self::Tensor,
        context: &Self::Conv2dContext,
    ) -> Result<Conv2dGrads<Self::Tensor>>;

    /// A 1-D convolution with kernel size 1, `x [N, C_in, L]`, `w [C_out, C_in, 1]`: the conv of
    /// the attention (docs/architectures.md §4.0), computed as a 1x1 [`Backend::conv2d_forward`] on `[N, C, L, 1]`.
    fn conv1d_forward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<(Self::Tensor, Self::Conv2dContext)> {
        let as_2d = Conv1dAs2d::new(&self.shape(x), &self.shape(weight))?;
        let x4 = self.reshape(x, &as_2d.x)?;
        let w4 = self.reshape(weight, &as_2d.weight)?;
        let (y, context) = self.conv2d_forward(&x4, &w4, bias, Conv2dParams::new(1, 0))?;
        Ok((self.reshape(&y, &as_2d.output)?, context))
    }

    /// Gradients of [`Backend::conv1d_forward`], shaped like its operands.
    fn conv1d_backward(
        &self,
        grad_y: Self::Tensor,
        context: &Self::Conv2dContext,
    ) -> Result<Conv2dGrads<Self::Tensor>> {
        let as_2d = self.reshape(&grad_y, &Conv1dAs2d::grad_output(&self.shape(&grad_y))?)?;
        drop(grad_y);
        let grads = self.conv2d_backward(as_2d, context)?;
        let [input_shape, weight_shape] = [&grads.input, &grads.weight].map(|g| self.shape(g));
        Ok(Conv2dGrads {
            input: self.reshape(&grads.input, Conv1dAs2d::one_d(&input_shape))?,
            weight: self.reshape(&grads.weight, Conv1dAs2d::one_d(&weight_shape))?,
            bias: grads.bias,
        })
    }

    /// The convolution `kind` names: [`Backend::conv2d_forward`] or [`Backend::conv1d_forward`].
    fn conv_forward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        kind: ConvKind,
    ) -> Result<(Self::Tensor, Self::Conv2dContext)> {
        match kind {
            ConvKind::Conv2d(params) => self.conv2d_forward(x, weight, bias, params),
            ConvKind::Conv1d => self.conv1d_forward(x, weight, bias),
        }
    }

    /// Gradients of [`Backend::conv_forward`] of the same `kind`.
    fn conv_backward(
        &self,
        grad_y: Self::Tensor,
        context: &Self::Conv2dContext,
        kind: ConvKind,
    ) -> Result<Conv2dGrads<Self::Tensor>> {
        match kind {
            ConvKind::Conv2d(_) => self.conv2d_backward(grad_y, context),
            ConvKind::Conv1d => self.conv1d_backward(grad_y, context),
        }
    }

    /// Training-mode BatchNorm over a convolution's output, with its `bias` when it has one,
    /// `batch_norm_train_forward(conv(x, weight) (+ bias))`, with the contexts of both, whose
    /// backwards are [`Backend::batch_norm_backward`] and [`Backend::conv_backward`]. The default
    /// runs the two ops ([`conv_batch_norm_train_forward_in_turn`]). A backend may fuse them so
    /// that the convolution's output never exists in the element type: CUDA under a 16-bit
    /// precision hands the convolution's 16-bit sums (and its bias) to the BatchNorm, which reads
    /// and keeps them (docs/precision.md §"Convolution outputs"). Either way every output and
    /// context holds the bits of the two ops. It takes `x` by value, so that the convolution's
    /// input can be freed before the BatchNorm allocates, as it is when the two layers run in
    /// turn.
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

    /// [`Backend::conv_batch_norm_train_forward`] landing on `onto`: its `y` is
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

    /// [`Backend::conv_batch_norm_train_forward`] of a convolution (with its `bias` when it has
    /// one), then [`Backend::avg_pool2d_forward`] of the BatchNorm's output (RevSResNet24's event
    /// stem, docs/architectures.md §4.3): the returned `y` is the pooled output, with the
    /// statistics and both contexts (whose backward is
    /// [`Backend::avg_pool_conv_batch_norm_backward`]). The default runs the two. A backend may
    /// pool the BatchNorm's output as it makes it from the BatchNorm's input and statistics, so
    /// that it is never written (CUDA: docs/memory.md §9.6); the outputs, statistics and
    /// contexts are the same bits. Errors as the ops do.
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
    /// to `[T, B, ...]` and keeping nothing ([`Backend::neuron_forward_keeping_nothing`], the
    /// fingerprint folded as it folds it): the returned `y` is the spikes `[T, B, ...]`, with the
    /// statistics and both contexts (whose backward is [`Backend::conv_batch_norm_backward`], or
    /// [`Backend::batch_norm_backward`] and [`Backend::conv_backward`] in turn); the
    /// neuron's backward makes its input again from the BatchNorm's context (docs/neurons.md
    /// §2.4.2). The default runs exactly that ([`conv_batch_norm_train_fire_in_turn`]). A backend
    /// may fire from the BatchNorm's input and statistics as it normalises, so that the
    /// BatchNorm's output is never written (CUDA: docs/neurons.md §2.4.3); the spikes, the
    /// fingerprint, the statistics and the contexts are the same bits. Errors as the ops do, and
    /// when `T` does not divide the output's first axis.
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
    /// (those of [`Backend::conv_batch_norm_train_forward`], or of [`Backend::conv_forward`],
    /// with a bias or without, and [`Backend::batch_norm_train_forward`]):
    /// [`Backend::batch_norm_backward`], then [`Backend::conv_backward`] of its `dx`. The default
    /// runs the two ops. A backend may fuse them: CUDA under a 16-bit precision has the
    /// BatchNorm's last pass write its `dx` as the 16-bit `dy` the convolution's backward reads
    /// (docs/precision.md §"Convolution outputs"). Either way every gradient holds the bits of
    /// the two ops. It takes `grad_y` and the contexts by value, so that each is freed as soon as
    /// it has served, as when the two layers run in turn. Errors as the two ops do.
    fn conv_batch_norm_backward(
        &self,
        grad_y: Self::Tensor,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
    ) -> Result<ConvBatchNormGrads<Self::Tensor>> {
        conv_batch_norm_backward_in_turn(self, grad_y, conv, norm, kind)
    }

    /// Gradients of a convolution, the training BatchNorm after it and an average pool after
    /// that (RevSResNet24's event stem, docs/architectures.md §4.3) from the pool's output
    /// gradient and the two contexts: [`Backend::avg_pool2d_backward`], then
    /// [`Backend::conv_batch_norm_backward`] of its `dx`. The default runs the two. A backend
    /// may fuse them: CUDA under a 16-bit precision makes the pool's `dx` as the BatchNorm's
    /// backward reads it (docs/memory.md §9.6), so no tensor of the BatchNorm's output size holds
    /// it. Either way every gradient holds the bits of the ops in turn. Errors as those do.
    fn avg_pool_conv_batch_norm_backward(
        &self,
        pool: AvgPoolGrad<'_, Self::Tensor>,
        conv: Self::Conv2dContext,
        norm: Self::BatchNormContext,
        kind: ConvKind,
    ) -> Result<ConvBatchNormGrads<Self::Tensor>> {
        avg_pool_conv_batch_norm_backward_in_turn(self, pool, conv, norm, kind)
    }

    /// Gradients of `BN(conv(SN(x)))` over `x [T, B, ...]`, the spiking convolution of every
    /// model (docs/architectures.md §4.0), from the three contexts:
    /// [`Backend::conv_batch_norm_backward`], then [`Backend::neuron_backward`] of its `dx`
    /// unflattened to `[T, B, ...]`; `input` is `dL/dx`. The default runs the two ops. A backend
    /// may fuse them: CUDA under a 16-bit precision has the neuron's backward read the
    /// convolution's 16-bit `dx` and write `dL/dx` over the membrane potentials it kept, so no
    /// `f32` `dL/ds` is written (docs/memory.md §9.6). Either way every gradient holds the bits
    /// of the two ops. Errors as the two ops do.
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

    // ---------------------------------------------------------------- batch normalisation

    /// Training mode over `x [N, C, ...]`: statistics over every axis but `C`,
    /// `y = gamma (x - mean) / sqrt(var_biased + eps) + beta`. Returns `y`, the batch statistics
    /// (for [`Backend::update_running_stats`]) and the context.
    fn batch_norm_train_forward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        params: BatchNormParams,
    ) -> Result<BatchNormTrainOutput<Self::Tensor, Self::BatchNormContext>>;
    /// The `y` of the training forward that made `context` (this op's or the fused
    /// [`Backend::conv_batch_norm_train_forward`]'s, given the same `beta`), computed again from
    /// the input and the statistics the context keeps, bit for bit: so a layer can drop `y` and
    /// make it again for its backward (docs/neurons.md §2.4.2). Errors on a context of
    /// [`Backend::batch_norm_eval_forward`], or a `beta` that is not `[C]`.
    fn batch_norm_train_output(
        &self,
        context: &Self::BatchNormContext,
        beta: &Self::Tensor,
    ) -> Result<Self::Tensor>;
    /// Evaluation mode: `y = gamma (x - running_mean) / sqrt(running_var + eps) + beta`.
    fn batch_norm_eval_forward(
        &self,
        x: &Self::Tensor,
        gamma: &Self::Tensor,
        beta: &Self::Tensor,
        running: &RunningStats<Self::Tensor>,
        params: BatchNormParams,
    ) -> Result<(Self::Tensor, Self::BatchNormContext)>;
    /// Gradients of either batch-norm forward.
    fn batch_norm_backward(
        &self,
        grad_y: &Self::Tensor,
        context: &Self::BatchNormContext,
    ) -> Result<BatchNormGrads<Self::Tensor>>;
    /// `running = (1 - momentum) running + momentum batch`, with the unbiased batch variance
    /// (PyTorch's rule, docs/conventions.md §1).
    fn update_running_stats(
        &self,
        running: &RunningStats<Self::Tensor>,
        batch: &BatchStats<Self::Tensor>,
        params: BatchNormParams,
    ) -> Result<RunningStats<Self::Tensor>>;

    // ---------------------------------------------------------------- pooling

    /// Average pooling over `x [N, C, H, W]` with `count_include_pad=True`: every window divides
    /// by `kernel^2`, padded zeros included (docs/conventions.md §1; docs/choices.md §A7).
    fn avg_pool2d_forward(&self, x: &Self::Tensor, params: Pool2dParams) -> Result<Self::Tensor>;
    /// The backward of [`Backend::avg_pool2d_forward`].
    fn avg_pool2d_backward(
        &self,
        grad_y: &Self::Tensor,
        input_shape: &[usize],
        params: Pool2dParams,
    ) -> Result<Self::Tensor>;
    /// Max pooling over `x [N, C, H, W]`, padding with `-inf`; ties go to the first maximum in
    /// row-major window order (PyTorch's rule).
    fn max_pool2d_forward(
        &self,
        x: &Self::Tensor,
        params: Pool2dParams,
    ) -> Result<(Self::Tensor, Self::MaxPoolContext)>;
    /// The backward of [`Backend::max_pool2d_forward`]: each output's gradient goes to its maximum.
    fn max_pool2d_backward(
        &self,
        grad_y: &Self::Tensor,
        context: &Self::MaxPoolContext,
    ) -> Result<Self::Tensor>;

    // ---------------------------------------------------------------- dense algebra

    /// `y = x w^T + b`: `x [N, in]`, `w [out, in]`, `b [out]`.
    fn linear_forward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;
    /// Gradients of [`Backend::linear_forward`]: `dx = dy w`, `dw = dy^T x`, `db = sum_n dy`.
    fn linear_backward(
        &self,
        grad_y: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        has_bias: bool,
    ) -> Result<LinearGrads<Self::Tensor>>;
    /// `c[b] = op(a[b]) op(b[b])` over any leading batch axes, `op` a transpose of the last two
    /// axes when asked: the attention products `q k^T` and `attn v` (docs/architectures.md §4.0). Its backward is
    /// two more calls: `da = dc op(b)^T`, `db = op(a)^T dc` (up to the transposes).
    fn batched_matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Self::Tensor>;

    /// Spiking self-attention's two products (docs/architectures.md §4.0) over the per-head
    /// transposes `q^T`, `k^T`, `v^T` `[..., d, N]`: the scores `attn = (q^T)^T k^T`
    /// `[..., N, N]`, then `o^T = v^T attn^T` `[..., d, N]`, unscaled. Returns `o^T` and the
    /// operands as [`Backend::keep`] keeps them, for [`Backend::attention_backward`], which
    /// computes the scores again: they are not kept (docs/memory.md §9.6). The default runs the
    /// two [`Backend::batched_matmul`]s. A backend may fuse them: CUDA under a 16-bit precision
    /// makes each operand's 16-bit patterns once, from its spike bits where it kept those, and
    /// writes the scores only in 16 bits, the form the second product reads
    /// (docs/precision.md §"Attention"). Either way `o^T` holds the bits of the products in turn.
    /// It takes the operands by value, so that each can be freed once kept. Errors as
    /// [`Backend::batched_matmul`] does.
    fn attention_forward(
        &self,
        q_t: Self::Tensor,
        k_t: Self::Tensor,
        v_t: Self::Tensor,
    ) -> Result<(Self::Tensor, AttentionKept<Self::Kept>)> {
        attention_forward_in_turn(self, q_t, k_t, v_t)
    }

    /// Gradients of [`Backend::attention_forward`] from `d(o^T)` and the kept operands: the
    /// scores again, `d(v^T) = d(o^T) attn`, `d(attn) = d(o^T)^T v^T`, `d(q^T) = k^T d(attn)^T`
    /// and `d(k^T) = q^T d(attn)`. The default runs the five [`Backend::batched_matmul`]s. A
    /// backend may fuse them: CUDA under a 16-bit precision converts `d(o^T)` and each operand
    /// to 16 bits once, though two products read each of `q^T`, `k^T` and `d(o^T)`, and writes
    /// the scores and `d(attn)` only in 16 bits (docs/precision.md §"Attention"). Either way
    /// every gradient holds the bits of the products in turn. Errors as the products in turn
    /// do.
    fn attention_backward(
        &self,
        grad_o_t: Self::Tensor,
        kept: AttentionKept<Self::Kept>,
    ) -> Result<AttentionGrads<Self::Tensor>> {
        attention_backward_in_turn(self, grad_o_t, kept)
    }

    // ---------------------------------------------------------------- losses

    /// Mean cross-entropy of `logits [B, K]` against class indices:
    /// `L = -(1/B) sum_b log softmax(logits[b])[label_b]`, as a `[1]` tensor left where the
    /// backend computes, so that a training step reads it back with whatever else it reads.
    fn cross_entropy_loss(
        &self,
        logits: &Self::Tensor,
        labels: &[usize],
    ) -> Result<(Self::Tensor, Self::CrossEntropyContext)>;
    /// Mean soft-target cross-entropy (mixup, label smoothing):
    /// `L = -(1/B) sum_b sum_k targets[b, k] log softmax(logits[b])[k]`, as a `[1]` tensor
    /// like [`Backend::cross_entropy_loss`].
    fn soft_cross_entropy_loss(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
    ) -> Result<(Self::Tensor, Self::CrossEntropyContext)>;
    /// [`Backend::cross_entropy_loss`] with the loss read back.
    fn cross_entropy_forward(
        &self,
        logits: &Self::Tensor,
        labels: &[usize],
    ) -> Result<(Self::Elem, Self::CrossEntropyContext)> {
        let (loss, context) = self.cross_entropy_loss(logits, labels)?;
        Ok((self.scalar(&loss)?, context))
    }
    /// [`Backend::soft_cross_entropy_loss`] with the loss read back.
    fn soft_cross_entropy_forward(
        &self,
        logits: &Self::Tensor,
        targets: &Self::Tensor,
    ) -> Result<(Self::Elem, Self::CrossEntropyContext)> {
        let (loss, context) = self.soft_cross_entropy_loss(logits, targets)?;
        Ok((self.scalar(&loss)?, context))
    }
    /// The one element of a one-element tensor, read back.
    fn scalar(&self, x: &Self::Tensor) -> Result<Self::Elem> {
        match self.to_vec(x)?.as_slice() {
            [value] => Ok(*value),
            values => Err(OpError::shape(
                "scalar",
                format!("expected one element, got {}", values.len()),
            )),
        }
    }
    /// `dL/dlogits = grad_loss (softmax - targets) / B` for either cross-entropy.
    fn cross_entropy_backward(
        &self,
        context: &Self::CrossEntropyContext,
        grad_loss: Self::Elem,
    ) -> Result<Self::Tensor>;

    // ---------------------------------------------------------------- optimizers

    /// One SGD-with-momentum step on one parameter ([`SgdParams`]): returns the new parameter
    /// and momentum buffer (the first step passes no buffer).
    fn sgd_step(
        &self,
        param: &Self::Tensor,
        grad: &Self::Tensor,
        momentum_buffer: Option<&Self::Tensor>,
        params: SgdParams,
    ) -> Result<SgdState<Self::Tensor>>;
    /// One AdamW step number `step >= 1` on one parameter ([`AdamWParams`]): returns the new
    /// parameter, first moment and second moment.
    fn adamw_step(
        &self,
        param: &Self::Tensor,
        grad: &Self::Tensor,
        first_moment: &Self::Tensor,
        second_moment: &Self::Tensor,
        params: AdamWParams,
        step: u64,
    ) -> Result<AdamWState<Self::Tensor>>;
    /// [`Backend::sgd_step`] on each parameter of `tensors` with the same `params`, the results
    /// in order and equal to the single steps bit for bit. This default takes them in turn; CUDA
    /// updates up to 64 tensors per launch (docs/ARCHITECTURE.md §"`--device cuda`").
    fn sgd_step_foreach(
        &self,
        tensors: &[SgdTensors<'_, Self::Tensor>],
        params: SgdParams,
    ) -> Result<Vec<SgdState<Self::Tensor>>> {
        tensors
            .iter()
            .map(|t| self.sgd_step(t.param, t.grad, t.momentum_buffer, params))
            .collect()
    }
    /// [`Backend::adamw_step`] number `step` on each parameter of `tensors`, with `params` where
    /// the parameter decays and a weight decay of 0 where it does not; the results in order and
    /// equal to the single steps bit for bit. This default takes them in turn; CUDA updates up
    /// to 48 tensors per launch (docs/ARCHITECTURE.md §"`--device cuda`").
    fn adamw_step_foreach(
        &self,
        tensors: &[AdamWTensors<'_, Self::Tensor>],
        params: AdamWParams,
        step: u64,
    ) -> Result<Vec<AdamWState<Self::Tensor>>> {
        tensors
            .iter()
            .map(|t| {
                let params = t.params(params);
                self.adamw_step(
                    t.param,
                    t.grad,
                    t.first_moment,
                    t.second_moment,
                    params,
                    step,
                )
            })
            .collect()
    }
}

/// A parameter and its momentum buffer after one SGD step: `(parameter, buffer)`.
pub type SgdState<T> = (T, T);

/// A parameter and its AdamW moments after one step: `(parameter, first, second)`.
pub type AdamWState<T> = (T, T, T);

/// One parameter's operands of [`Backend::sgd_step_foreach`].
#[derive(Clone, Copy, Debug)]
pub struct SgdTensors<'a, T> {
    pub param: &'a T,
    pub grad: &'a T,
    /// `None` before the parameter's first step.
    pub momentum_buffer: Option<&'a T>,
}

/// One parameter's operands of [`Backend::adamw_step_foreach`].
#[derive(Clone, Copy, Debug)]
pub struct AdamWTensors<'a, T> {
    pub param: &'a T,
    pub grad: &'a T,
    pub first_moment: &'a T,
    pub second_moment: &'a T,
    /// Whether the weight decay applies (timm exempts biases and 1-D parameters,
    /// docs/choices.md §A19).
    pub decays: bool,
}

impl<T> AdamWTensors<'_, T> {
    /// The hyperparameters of this parameter's step: `params`, with no weight decay where the
    /// parameter does not decay.
    pub fn params(&self, params: AdamWParams) -> AdamWParams {
        let weight_decay = if self.decays {
            params.weight_decay
        } else {
            0.0
        };
        AdamWParams {
            weight_decay,
            ..params
        }
    }
}
