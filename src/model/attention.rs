//! Spiking self-attention SSA (docs/architectures.md §4.0), the F of RevSFormer's reversible
//! blocks and the attention of Spikingformer's. Its backward is written by hand: the two
//! attention products are not a chain of layers.

#[cfg(doc)]
use revsnn_reference::AttentionOps;
use revsnn_reference::{AttentionKept, Backend, Element, Onto, OpError};

use super::build::{Builder, ConvInit};
use super::compose::SeqToAnn;
use super::layers::{ConvBnNeuron, ConvKind, KeepInput, Neuron, SpikingConvBn};
use super::transformer::Neurons;
use super::{Layer, Session};
use crate::error::Result;

/// The constant the attention output is scaled by, whatever the head width
/// (docs/architectures.md §4.0).
const ATTENTION_SCALE: f64 = 0.125;

/// One of q, k, v over the tokens `[T, B, C, N]`: `LIF(BN1d(Conv1d 1x1 (C -> C, no bias)(s)))`,
/// the LIF keeping nothing in training ([`ConvBnNeuron`]).
pub type Projection = ConvBnNeuron;

/// Spiking self-attention SSA(C, h) over `[T, B, C, H, W]` (docs/architectures.md §4.0),
/// `d = C / h`, `N = H W`, channel `c = head d + j`:
///
/// ```text
/// s       = proj_lif(x)                                   spikes, as tokens [T, B, C, N]
/// q, k, v = LIF(BN1d(Conv1d 1x1 (C -> C, no bias)(s)))    each [T, B, h, N, d] per head
/// attn    = q k^T                                         [T, B, h, N, N], no softmax
/// o       = (attn v) 0.125                                [T, B, h, N, d] -> [T, B, C, N]
/// y       = BN1d(Conv1d 1x1 (C -> C, bias)(attn_lif(o)))  attn_lif V_th = 0.5; [T, B, C, H, W]
/// ```
///
/// The products run on the per-head transposes `q^T, k^T, v^T` `[T, B, h, d, N]`, which are plain
/// reshapes of `[T, B, C, N]`: `attn = (q^T)^T k^T` and `o^T = v^T attn^T`, so no permute is
/// materialised, as one op whose backward is one op too ([`AttentionOps::attention_forward`],
/// [`AttentionOps::attention_backward`]). The forward keeps `q^T`, `k^T`, `v^T` (spikes: one bit
/// each on CUDA) and not the `f32` scores, which the backward computes again from them
/// (docs/memory.md §9.6).
#[derive(Clone, Debug)]
pub struct SpikingSelfAttention {
    /// `h`; the head width is `d = C / h`.
    pub heads: usize,
    /// The input LIF (`V_th = 1`).
    pub proj_lif: Neuron,
    /// `q_conv` (Conv1d 1x1, no bias) + `q_bn` + `q_lif`; likewise `k` and `v`.
    pub q: Projection,
    pub k: Projection,
    pub v: Projection,
    /// The LIF after the attention product (`V_th = 0.5`), then `proj_conv` (Conv1d 1x1, with
    /// bias) + `proj_bn`.
    pub output: SpikingConvBn,
}

impl SpikingSelfAttention {
    /// The parameters under `prefix` in the official order: `q_conv`, `q_bn`, `k_conv`, `k_bn`,
    /// `v_conv`, `v_bn`, `proj_conv` (with bias), `proj_bn`.
    pub(super) fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        dim: usize,
        heads: usize,
        neurons: &Neurons,
    ) -> Result<Self> {
        let mut conv_bn = |name: &str, bias: bool| {
            builder.conv_bn(
                &format!("{prefix}.{name}_conv"),
                &format!("{prefix}.{name}_bn"),
                &[dim, dim, 1],
                ConvInit::PyTorchDefault { bias },
                ConvKind::Conv1d,
            )
        };
        let mut projection = |name: &str| -> Result<Projection> {
            Ok(ConvBnNeuron {
                conv_bn: SeqToAnn {
                    layer: conv_bn(name, false)?,
                },
                neuron: neurons.lif(),
            })
        };
        let (q, k, v) = (projection("q")?, projection("k")?, projection("v")?);
        let proj = conv_bn("proj", true)?;
        Ok(SpikingSelfAttention {
            heads,
            proj_lif: neurons.lif(),
            q,
            k,
            v,
            output: SpikingConvBn::new(neurons.attention_lif(), proj),
        })
    }
}

/// What a [`SpikingSelfAttention`] forward keeps for its backward.
pub struct AttentionSaved<B: Backend> {
    dims: [usize; 5],
    proj_lif: B::NeuronContext,
    q: <Projection as Layer<B>>::Saved,
    k: <Projection as Layer<B>>::Saved,
    v: <Projection as Layer<B>>::Saved,
    /// The per-head transposed spikes `q^T`, `k^T`, `v^T` `[T, B, h, d, N]` (as the backend keeps
    /// them). The scores `[T, B, h, N, N]` are not kept: the backward computes them again.
    kept: AttentionKept<B::Kept>,
    output: <SpikingConvBn as Layer<B>>::Saved,
}

/// `x` under `shape`, `x` given up: the result is the only handle on its storage, so the layer
/// it is handed to may free it or write over it.
fn reshaped<B: Backend>(backend: &B, x: B::Tensor, shape: &[usize]) -> Result<B::Tensor> {
    Ok(backend.reshape(&x, shape)?)
}

/// A `[T, B, C, H, W]` input shape whose `C` splits into `heads`, or an error.
fn attention_dims<B: Backend>(backend: &B, x: &B::Tensor, heads: usize) -> Result<[usize; 5]> {
    let shape = backend.shape(x);
    let dims = <[usize; 5]>::try_from(shape.as_slice()).map_err(|_| {
        OpError::shape(
            "spiking self-attention",
            format!("expected [T, B, C, H, W], got {shape:?}"),
        )
    })?;
    if dims[2] % heads != 0 {
        return Err(OpError::shape(
            "spiking self-attention",
            format!("{} channels do not split into {heads} heads", dims[2]),
        )
        .into());
    }
    Ok(dims)
}

/// The attention keeps its input through its input LIF.
impl KeepInput for SpikingSelfAttention {
    fn keeping_input(self) -> Self {
        SpikingSelfAttention {
            proj_lif: self.proj_lif.keeping_input(),
            ..self
        }
    }
}

impl SpikingSelfAttention {
    /// The tokens' shape `[T, B, C, N]` and the per-head shape `[T, B, heads, C / heads, N]` of
    /// an input `[T, B, C, H, W]` (`N = H W`).
    fn token_shapes(&self, [t, b, c, h, w]: [usize; 5]) -> ([usize; 4], [usize; 5]) {
        let n = h * w;
        ([t, b, c, n], [t, b, self.heads, c / self.heads, n])
    }

    /// The forward, its output projection's output landing on `onto` when given.
    fn attend<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Option<Onto<B::Tensor>>,
    ) -> Result<(B::Tensor, AttentionSaved<B>)> {
        let backend = session.backend;
        let dims = attention_dims(backend, &x, self.heads)?;
        let (tokens, per_head) = self.token_shapes(dims);
        let (spikes, proj_lif) = self.proj_lif.forward(session, x)?;
        let token_spikes = reshaped(backend, spikes, &tokens)?;
        let (q_t, q) = self.q.forward(session, token_spikes.clone())?;
        let (k_t, k) = self.k.forward(session, token_spikes.clone())?;
        let (v_t, v) = self.v.forward(session, token_spikes)?;
        let (o_t, kept) = backend.attention_forward(
            reshaped(backend, q_t, &per_head)?,
            reshaped(backend, k_t, &per_head)?,
            reshaped(backend, v_t, &per_head)?,
        )?;
        // (attn v).transpose(3, 4), scaled.
        let scale = <B::Elem as Element>::cast(ATTENTION_SCALE);
        let o = reshaped(backend, backend.scale(&o_t, scale)?, &tokens)?;
        drop(o_t);
        let (y, output) = match onto {
            None => self.output.forward(session, o)?,
            Some(onto) => {
                let onto = onto.map(|residual| reshaped(backend, residual, &tokens))?;
                self.output.forward_onto(session, o, onto)?
            }
        };
        let saved = AttentionSaved {
            dims,
            proj_lif,
            q,
            k,
            v,
            kept,
            output,
        };
        Ok((backend.reshape(&y, &dims)?, saved))
    }
}

impl<B: Backend> Layer<B> for SpikingSelfAttention {
    type Saved = AttentionSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        self.attend(session, x, None)
    }

    /// The output projection's output lands on the residual.
    fn forward_onto(
        &self,
        session: &mut Session<B>,
        x: B::Tensor,
        onto: Onto<B::Tensor>,
    ) -> Result<(B::Tensor, Self::Saved)> {
        self.attend(session, x, Some(onto))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let AttentionSaved {
            dims,
            proj_lif,
            q,
            k,
            v,
            kept,
            output,
        } = saved;
        let (tokens, per_head) = self.token_shapes(dims);
        let grad_o = self
            .output
            .backward(session, output, reshaped(backend, grad_y, &tokens)?)?;
        let scale = <B::Elem as Element>::cast(ATTENTION_SCALE);
        let grad_o_t = reshaped(backend, backend.scale(&grad_o, scale)?, &per_head)?;
        drop(grad_o);
        let grads = backend.attention_backward(grad_o_t, kept)?;
        let grad_q = (self.q).backward(session, q, reshaped(backend, grads.q_t, &tokens)?)?;
        let grad_k = (self.k).backward(session, k, reshaped(backend, grads.k_t, &tokens)?)?;
        let grad_v = (self.v).backward(session, v, reshaped(backend, grads.v_t, &tokens)?)?;
        // (dq + dk) + dv, each sum over the buffer of a gradient nothing else holds.
        let grad_qk = backend.add_reusing(&grad_q, grad_k)?;
        drop(grad_q);
        let grad = backend.add_reusing(&grad_qk, grad_v)?;
        drop(grad_qk);
        self.proj_lif
            .backward(session, proj_lif, reshaped(backend, grad, &dims)?)
    }
}
