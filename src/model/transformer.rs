//! The spiking transformers (docs/architectures.md §4.4, 4.5): RevSFormer, the reversible one, and Spikingformer,
//! its non-reversible counterpart. Both share the spiking tokenizer, the spiking self-attention
//! (SSA) and the MLP of docs/architectures.md §4.0, and read out the mean over tokens and time through a linear
//! head:
//!
//! ```text
//! images [B, C, H, W] --repeat T--> [T, B, C, H, W]      (CIFAR: before the tokenizer)
//! events [B, T, C, H, W] --permute--> [T, B, C, H, W]     (DVS)
//! tokenizer -> x [T, B, D, H/p, W/p]
//! RevSFormer:    x = cat([x, x], 2); x = ReversibleSequence(F = SSA, G = MLP)(x)   [T, B, 2D, ..]
//! Spikingformer: per block x = x + SSA(x); x = x + MLP(x)                          [T, B, D, ..]
//! logits = head(mean over T and tokens of x)                                        [B, K]
//! ```
//!
//! Every parameter is created through the [`Builder`] under its official `state_dict` name and in
//! the official order (the `fixtures/checkpoint-keys/*former*.txt` files), with the official
//! initialisation (docs/architectures.md §4.6).

use revsnn_reference::{Backend, Conv2dParams, Element, NeuronConfig, Pool2dParams};

use super::build::{Builder, Init};
use super::layers::{
    BatchNorm, ConvBn, ConvKind, Linear, MaxPool, Neuron, flatten_time, unflatten_time,
};
use super::reversible::{ReversibleBlock, ReversibleSequence, SequenceSaved};
use super::{BuildOptions, Layer, ParamId, Session, backward_each, forward_each};
use crate::error::{Error, Result};
use crate::spec::{Arch, ModelSpec, TransformerSizes};

/// What a [`ConvBn`] keeps for its backward.
type ConvBnSaved<B> = (
    <B as Backend>::Conv2dContext,
    <B as Backend>::BatchNormContext,
);

/// The constant the attention output is scaled by, whatever the head width (docs/architectures.md §4.0).
const ATTENTION_SCALE: f64 = 0.125;

/// The LIF neurons of one model family: `tau = 2` on CIFAR, `tau = 1.5` on DVS, `V_th = 1`,
/// except the attention LIF with `V_th = 0.5` (docs/architectures.md §4.0, 4.4, 4.5).
#[derive(Clone, Copy, Debug)]
struct Neurons {
    tau: f64,
    options: BuildOptions,
}

impl Neurons {
    fn new(arch: Arch, options: &BuildOptions) -> Self {
        Neurons {
            tau: if arch.is_dvs() { 1.5 } else { 2.0 },
            options: *options,
        }
    }

    fn lif(&self) -> Neuron {
        self.options
            .neuron(NeuronConfig::lif_sigmoid(self.tau, 1.0))
    }

    fn attention_lif(&self) -> Neuron {
        self.options
            .neuron(NeuronConfig::lif_sigmoid(self.tau, 0.5))
    }
}

/// A convolution (PyTorch default init U(+-1/sqrt(fan_in)) for weight and bias) followed by a
/// BatchNorm, named `{conv}.weight`, `{conv}.bias`, then `{bn}.*`.
fn conv_bn<B: Backend>(
    builder: &mut Builder<B>,
    conv: &str,
    bn: &str,
    weight_shape: &[usize],
    bias: bool,
    kind: ConvKind,
) -> Result<ConvBn> {
    let weight = builder.parameter(format!("{conv}.weight"), weight_shape, Init::UniformFanIn)?;
    let bias = if bias {
        let fan_in = weight_shape[1..].iter().product();
        Some(builder.bias(format!("{conv}.bias"), weight_shape[0], fan_in)?)
    } else {
        None
    };
    let norm = BatchNorm {
        ids: builder.batch_norm(bn, weight_shape[0])?,
    };
    Ok(ConvBn {
        weight,
        bias,
        kind,
        norm,
    })
}

/// `[T, B, C, H, W] -> [T B, C, H W]`, the layout of the attention's 1-D convolutions.
fn tokens_flat<B: Backend>(backend: &B, x: &B::Tensor) -> Result<B::Tensor> {
    let s = backend.shape(x);
    Ok(backend.reshape(x, &[s[0] * s[1], s[2], s[3..].iter().product()])?)
}

/// A `[T, B, C, H, W]` input shape, or an error naming `what`.
fn five_dims<B: Backend>(backend: &B, x: &B::Tensor, what: &'static str) -> Result<[usize; 5]> {
    let shape = backend.shape(x);
    <[usize; 5]>::try_from(shape.as_slice()).map_err(|_| {
        Error::Op(revsnn_reference::OpError::shape(
            what,
            format!("expected [T, B, C, H, W], got {shape:?}"),
        ))
    })
}

// ------------------------------------------------------------------------------------ attention

/// Spiking self-attention SSA(C, h) over `[T, B, C, H, W]` (docs/architectures.md §4.0), `d = C / h`,
/// `N = H W`, channel `c = head d + j`:
///
/// ```text
/// s       = proj_lif(x)                                   spikes, flattened to [T B, C, N]
/// q, k, v = LIF(BN1d(Conv1d 1x1 (C -> C, no bias)(s)))    each [T, B, h, N, d] per head
/// attn    = q k^T                                         [T, B, h, N, N], no softmax
/// o       = (attn v) 0.125                                [T, B, h, N, d] -> [T, B, C, N]
/// y       = BN1d(Conv1d 1x1 (C -> C, bias)(attn_lif(o)))  attn_lif V_th = 0.5; [T, B, C, H, W]
/// ```
///
/// The products run on the per-head transposes `q^T, k^T, v^T` `[T, B, h, d, N]`, which are plain
/// reshapes of `[T, B, C, N]`: `attn = (q^T)^T k^T` and `o^T = v^T attn^T`, so no permute is
/// materialised.
#[derive(Clone, Debug)]
pub struct SpikingSelfAttention {
    /// `h`; the head width is `d = C / h`.
    pub heads: usize,
    /// The input LIF (`V_th = 1`).
    pub proj_lif: Neuron,
    /// `q_conv` (Conv1d 1x1, no bias) + `q_bn`; likewise `k` and `v`.
    pub q: ConvBn,
    pub q_lif: Neuron,
    pub k: ConvBn,
    pub k_lif: Neuron,
    pub v: ConvBn,
    pub v_lif: Neuron,
    /// The LIF after the attention product (`V_th = 0.5`).
    pub attn_lif: Neuron,
    /// `proj_conv` (Conv1d 1x1, with bias) + `proj_bn`.
    pub proj: ConvBn,
}

impl SpikingSelfAttention {
    /// The parameters under `prefix` in the official order: `q_conv`, `q_bn`, `k_conv`, `k_bn`,
    /// `v_conv`, `v_bn`, `proj_conv` (with bias), `proj_bn`.
    fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        dim: usize,
        heads: usize,
        neurons: &Neurons,
    ) -> Result<Self> {
        let shape = [dim, dim, 1];
        let mut qkv = |name: &str| {
            conv_bn(
                builder,
                &format!("{prefix}.{name}_conv"),
                &format!("{prefix}.{name}_bn"),
                &shape,
                false,
                ConvKind::Conv1d,
            )
        };
        let q = qkv("q")?;
        let k = qkv("k")?;
        let v = qkv("v")?;
        let proj = conv_bn(
            builder,
            &format!("{prefix}.proj_conv"),
            &format!("{prefix}.proj_bn"),
            &shape,
            true,
            ConvKind::Conv1d,
        )?;
        Ok(SpikingSelfAttention {
            heads,
            proj_lif: neurons.lif(),
            q,
            q_lif: neurons.lif(),
            k,
            k_lif: neurons.lif(),
            v,
            v_lif: neurons.lif(),
            attn_lif: neurons.attention_lif(),
            proj,
        })
    }

    /// One of q, k, v: `LIF(BN(conv(s)))` on `[T B, C, N]`, returned as spikes `[T, B, h, d, N]`.
    fn branch<B: Backend>(
        &self,
        session: &mut Session<B>,
        conv: &ConvBn,
        lif: &Neuron,
        flat: &B::Tensor,
        dims: [usize; 5],
    ) -> Result<(B::Tensor, BranchSaved<B>)> {
        let backend = session.backend;
        let [t, b, c, _, _] = dims;
        let (y, conv_saved) = conv.forward(session, flat)?;
        let y = unflatten_time(backend, &y, t)?;
        let (spikes, lif_saved) = lif.forward(session, &y)?;
        let n = backend.shape(&spikes)[3];
        let per_head = backend.reshape(&spikes, &[t, b, self.heads, c / self.heads, n])?;
        Ok((
            per_head,
            BranchSaved {
                conv: conv_saved,
                lif: lif_saved,
            },
        ))
    }

    /// The backward of [`SpikingSelfAttention::branch`]: `dL/ds` `[T B, C, N]` from
    /// `dL/d(spikes)` `[T, B, h, d, N]`.
    fn branch_backward<B: Backend>(
        session: &mut Session<B>,
        conv: &ConvBn,
        lif: &Neuron,
        saved: BranchSaved<B>,
        grad: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let g = backend.shape(grad);
        let grad = backend.reshape(grad, &[g[0], g[1], g[2] * g[3], g[4]])?;
        let grad = lif.backward(session, saved.lif, &grad)?;
        let grad = flatten_time(backend, &grad)?;
        conv.backward(session, saved.conv, &grad)
    }
}

/// What one of the q, k, v branches keeps.
#[derive(Debug)]
pub struct BranchSaved<B: Backend> {
    conv: ConvBnSaved<B>,
    lif: B::NeuronContext,
}

/// What a [`SpikingSelfAttention`] forward keeps for its backward.
#[derive(Debug)]
pub struct AttentionSaved<B: Backend> {
    dims: [usize; 5],
    proj_lif: B::NeuronContext,
    q: BranchSaved<B>,
    k: BranchSaved<B>,
    v: BranchSaved<B>,
    /// The per-head transposed spikes `[T, B, h, d, N]` and the scores `[T, B, h, N, N]`.
    q_t: B::Tensor,
    k_t: B::Tensor,
    v_t: B::Tensor,
    attn: B::Tensor,
    attn_lif: B::NeuronContext,
    proj: ConvBnSaved<B>,
}

impl<B: Backend> Layer<B> for SpikingSelfAttention {
    type Saved = AttentionSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let dims = five_dims(backend, x, "spiking self-attention")?;
        let [t, b, c, h, w] = dims;
        if c % self.heads != 0 {
            return Err(revsnn_reference::OpError::shape(
                "spiking self-attention",
                format!("{c} channels do not split into {} heads", self.heads),
            )
            .into());
        }
        let (spikes, proj_lif) = self.proj_lif.forward(session, x)?;
        let flat = tokens_flat(backend, &spikes)?;
        let (q_t, q) = self.branch(session, &self.q, &self.q_lif, &flat, dims)?;
        let (k_t, k) = self.branch(session, &self.k, &self.k_lif, &flat, dims)?;
        let (v_t, v) = self.branch(session, &self.v, &self.v_lif, &flat, dims)?;
        // attn[n, m] = sum_j q[n, j] k[m, j] = ((q^T)^T k^T)[n, m].
        let attn = backend.batched_matmul(&q_t, &k_t, true, false)?;
        // o^T[j, n] = sum_m v[m, j] attn[n, m] = (v^T attn^T)[j, n], i.e. (attn v).transpose(3, 4).
        let o_t = backend.batched_matmul(&v_t, &attn, false, true)?;
        let o_t = backend.scale(&o_t, <B::Elem as Element>::cast(ATTENTION_SCALE))?;
        let o = backend.reshape(&o_t, &[t, b, c, h * w])?;
        let (spikes, attn_lif) = self.attn_lif.forward(session, &o)?;
        let (y, proj) = self
            .proj
            .forward(session, &flatten_time(backend, &spikes)?)?;
        let y = backend.reshape(&y, &dims)?;
        Ok((
            y,
            AttentionSaved {
                dims,
                proj_lif,
                q,
                k,
                v,
                q_t,
                k_t,
                v_t,
                attn,
                attn_lif,
                proj,
            },
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let [t, b, c, h, w] = saved.dims;
        let grad = backend.reshape(grad_y, &[t * b, c, h * w])?;
        let grad = self.proj.backward(session, saved.proj, &grad)?;
        let grad = unflatten_time(backend, &grad, t)?;
        let grad = self.attn_lif.backward(session, saved.attn_lif, &grad)?;
        let grad = backend.scale(&grad, <B::Elem as Element>::cast(ATTENTION_SCALE))?;
        let grad_o_t = backend.reshape(&grad, &[t, b, self.heads, c / self.heads, h * w])?;
        // o^T = v^T attn^T: d(v^T) = d(o^T) attn, d(attn) = d(o^T)^T v^T.
        let grad_v_t = backend.batched_matmul(&grad_o_t, &saved.attn, false, false)?;
        let grad_attn = backend.batched_matmul(&grad_o_t, &saved.v_t, true, false)?;
        // attn = (q^T)^T k^T: d(q^T) = k^T d(attn)^T, d(k^T) = q^T d(attn).
        let grad_q_t = backend.batched_matmul(&saved.k_t, &grad_attn, false, true)?;
        let grad_k_t = backend.batched_matmul(&saved.q_t, &grad_attn, false, false)?;
        let grad_q = Self::branch_backward(session, &self.q, &self.q_lif, saved.q, &grad_q_t)?;
        let grad_k = Self::branch_backward(session, &self.k, &self.k_lif, saved.k, &grad_k_t)?;
        let grad_v = Self::branch_backward(session, &self.v, &self.v_lif, saved.v, &grad_v_t)?;
        let grad = backend.add(&backend.add(&grad_q, &grad_k)?, &grad_v)?;
        let grad = backend.reshape(&grad, &saved.dims)?;
        self.proj_lif.backward(session, saved.proj_lif, &grad)
    }
}

// ------------------------------------------------------------------------------------------ MLP

/// The transformer MLP(C, hidden) over `[T, B, C, H, W]` (docs/architectures.md §4.0):
///
/// ```text
/// x = BN2d(Conv2d 1x1 (C -> hidden, bias)(LIF(x)))     mlp1
/// x = BN2d(Conv2d 1x1 (hidden -> C, bias)(LIF(x)))     mlp2
/// ```
#[derive(Clone, Debug)]
pub struct Mlp {
    pub lif1: Neuron,
    /// `mlp1_conv` (C -> hidden) + `mlp1_bn`.
    pub conv1: ConvBn,
    pub lif2: Neuron,
    /// `mlp2_conv` (hidden -> C) + `mlp2_bn`.
    pub conv2: ConvBn,
}

impl Mlp {
    /// The parameters under `prefix` in the official order: `mlp1_conv`, `mlp1_bn`,
    /// `mlp2_conv`, `mlp2_bn`.
    fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        dim: usize,
        hidden: usize,
        neurons: &Neurons,
    ) -> Result<Self> {
        let kind = ConvKind::Conv2d(Conv2dParams::new(1, 0));
        let conv1 = conv_bn(
            builder,
            &format!("{prefix}.mlp1_conv"),
            &format!("{prefix}.mlp1_bn"),
            &[hidden, dim, 1, 1],
            true,
            kind,
        )?;
        let conv2 = conv_bn(
            builder,
            &format!("{prefix}.mlp2_conv"),
            &format!("{prefix}.mlp2_bn"),
            &[dim, hidden, 1, 1],
            true,
            kind,
        )?;
        Ok(Mlp {
            lif1: neurons.lif(),
            conv1,
            lif2: neurons.lif(),
            conv2,
        })
    }
}

/// What an [`Mlp`] forward keeps for its backward.
#[derive(Debug)]
pub struct MlpSaved<B: Backend> {
    time_steps: usize,
    lif1: B::NeuronContext,
    conv1: ConvBnSaved<B>,
    lif2: B::NeuronContext,
    conv2: ConvBnSaved<B>,
}

impl<B: Backend> Layer<B> for Mlp {
    type Saved = MlpSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let [t, ..] = five_dims(backend, x, "mlp")?;
        let (s, lif1) = self.lif1.forward(session, x)?;
        let (y, conv1) = self.conv1.forward(session, &flatten_time(backend, &s)?)?;
        let (s, lif2) = self
            .lif2
            .forward(session, &unflatten_time(backend, &y, t)?)?;
        let (y, conv2) = self.conv2.forward(session, &flatten_time(backend, &s)?)?;
        Ok((
            unflatten_time(backend, &y, t)?,
            MlpSaved {
                time_steps: t,
                lif1,
                conv1,
                lif2,
                conv2,
            },
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let t = saved.time_steps;
        let grad = self
            .conv2
            .backward(session, saved.conv2, &flatten_time(backend, grad_y)?)?;
        let grad = self
            .lif2
            .backward(session, saved.lif2, &unflatten_time(backend, &grad, t)?)?;
        let grad = self
            .conv1
            .backward(session, saved.conv1, &flatten_time(backend, &grad)?)?;
        self.lif1
            .backward(session, saved.lif1, &unflatten_time(backend, &grad, t)?)
    }
}

// ------------------------------------------------------------------------------------ tokenizer

/// One stage of the spiking tokenizer: `[LIF ->] [MaxPool(3, 2, 1) ->] Conv3x3 -> BN`.
#[derive(Clone, Debug)]
struct TokenizerStage {
    lif: Option<Neuron>,
    pool: Option<MaxPool>,
    conv: ConvBn,
}

/// What one tokenizer stage keeps.
#[derive(Debug)]
struct StageSaved<B: Backend> {
    lif: Option<B::NeuronContext>,
    pool: Option<B::MaxPoolContext>,
    conv: ConvBnSaved<B>,
}

/// The spiking tokenizer over `[T, B, C, H, W]` (docs/architectures.md §4.4, 4.5): five 3x3 convolutions
/// (no bias) with BN, widths `D/8, D/4, D/2, D, D`; every stage after the first starts with a
/// LIF; the last two stages (CIFAR, `block{i}_*`) or the last four (DVS, `proj{i}_*`) max-pool
/// by 2 before their convolution. Output `[T, B, D, H/p, W/p]`.
#[derive(Clone, Debug)]
struct Tokenizer {
    stages: Vec<TokenizerStage>,
}

impl Tokenizer {
    fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        dim: usize,
        neurons: &Neurons,
    ) -> Result<Self> {
        let dvs = spec.arch.is_dvs();
        let widths = [spec.in_channels, dim / 8, dim / 4, dim / 2, dim, dim];
        let pool = MaxPool {
            params: Pool2dParams {
                kernel: 3,
                stride: 2,
                padding: 1,
            },
        };
        let mut stages = Vec::with_capacity(5);
        for i in 0..5 {
            let (conv, bn) = match (dvs, i) {
                (true, 0) => ("proj_conv".to_string(), "proj_bn".to_string()),
                (true, _) => (format!("proj{i}_conv"), format!("proj{i}_bn")),
                (false, _) => (format!("block{i}_conv"), format!("block{i}_bn")),
            };
            let conv = conv_bn(
                builder,
                &format!("patch_embed.{conv}"),
                &format!("patch_embed.{bn}"),
                &[widths[i + 1], widths[i], 3, 3],
                false,
                ConvKind::Conv2d(Conv2dParams::new(1, 1)),
            )?;
            let pools = if dvs { i >= 1 } else { i >= 3 };
            stages.push(TokenizerStage {
                lif: (i > 0).then(|| neurons.lif()),
                pool: pools.then(|| pool.clone()),
                conv,
            });
        }
        Ok(Tokenizer { stages })
    }

    fn forward<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: &B::Tensor,
    ) -> Result<(B::Tensor, Vec<StageSaved<B>>)> {
        let backend = session.backend;
        let t = backend.shape(x)[0];
        let mut x = x.clone();
        let mut saved = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let lif = match &stage.lif {
                Some(lif) => {
                    let (s, context) = lif.forward(session, &x)?;
                    x = s;
                    Some(context)
                }
                None => None,
            };
            let mut flat = flatten_time(backend, &x)?;
            let pool = match &stage.pool {
                Some(pool) => {
                    let (y, context) = pool.forward(session, &flat)?;
                    flat = y;
                    Some(context)
                }
                None => None,
            };
            let (y, conv) = stage.conv.forward(session, &flat)?;
            x = unflatten_time(backend, &y, t)?;
            saved.push(StageSaved { lif, pool, conv });
        }
        Ok((x, saved))
    }

    fn backward<B: Backend>(
        &self,
        session: &mut Session<B>,
        saved: Vec<StageSaved<B>>,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let t = backend.shape(grad_y)[0];
        let mut grad = grad_y.clone();
        for (stage, saved) in self.stages.iter().zip(saved).rev() {
            let mut flat =
                stage
                    .conv
                    .backward(session, saved.conv, &flatten_time(backend, &grad)?)?;
            if let (Some(pool), Some(context)) = (&stage.pool, saved.pool) {
                flat = pool.backward(session, context, &flat)?;
            }
            grad = unflatten_time(backend, &flat, t)?;
            if let (Some(lif), Some(context)) = (&stage.lif, saved.lif) {
                grad = lif.backward(session, context, &grad)?;
            }
        }
        Ok(grad)
    }
}

// ------------------------------------------------------------------------ input and read-out

/// What both transformers share around their body: the input encoding, the tokenizer, and the
/// read-out `head(mean over T and tokens)`.
#[derive(Clone, Debug)]
struct Frame {
    arch: Arch,
    time_steps: usize,
    in_channels: usize,
    img_size: usize,
    tokenizer: Tokenizer,
}

impl Frame {
    /// Images `[B, C, H, W]` repeated over T (CIFAR), or events `[B, T, C, H, W]` permuted
    /// (DVS), to `[T, B, C, H, W]`, then the tokenizer.
    fn encode<B: Backend>(
        &self,
        session: &mut Session<B>,
        x: &B::Tensor,
    ) -> Result<(B::Tensor, Vec<StageSaved<B>>)> {
        let backend = session.backend;
        let shape = backend.shape(x);
        let (expected, sequence) = if self.arch.is_dvs() {
            let expected = [
                self.time_steps,
                self.in_channels,
                self.img_size,
                self.img_size,
            ];
            (expected.to_vec(), true)
        } else {
            (
                [self.in_channels, self.img_size, self.img_size].to_vec(),
                false,
            )
        };
        if shape.len() != expected.len() + 1 || shape[1..] != expected[..] || shape[0] == 0 {
            let layout = if sequence {
                "[B, T, C, H, W]"
            } else {
                "[B, C, H, W]"
            };
            return Err(revsnn_reference::OpError::shape(
                "transformer input",
                format!("expected {layout} with [..] = {expected:?} and B >= 1, got {shape:?}"),
            )
            .into());
        }
        let x = if sequence {
            backend.permute(x, &[1, 0, 2, 3, 4])?
        } else {
            backend.repeat_leading(x, self.time_steps)?
        };
        self.tokenizer.forward(session, &x)
    }

    /// The backward of [`Frame::encode`]: `dL/dx` shaped like the model input.
    fn encode_backward<B: Backend>(
        &self,
        session: &mut Session<B>,
        saved: Vec<StageSaved<B>>,
        grad: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let grad = self.tokenizer.backward(session, saved, grad)?;
        Ok(if self.arch.is_dvs() {
            backend.permute(&grad, &[1, 0, 2, 3, 4])?
        } else {
            backend.sum_leading(&grad)?
        })
    }
}

/// The read-out axes of `[T, B, C, H, W]`: time and both token axes.
const READOUT_AXES: [usize; 3] = [0, 3, 4];

/// `logits = head(mean_{t, n} x[t, :, :, n])`, and what its backward needs.
fn read_out<B: Backend>(
    session: &mut Session<B>,
    head: &Linear,
    x: &B::Tensor,
) -> Result<(B::Tensor, ReadOutSaved<B>)> {
    let backend = session.backend;
    let features = backend.mean_axes(x, &READOUT_AXES)?;
    let (logits, head_saved) = head.forward(session, &features)?;
    Ok((
        logits,
        ReadOutSaved {
            body_shape: backend.shape(x),
            head: head_saved,
        },
    ))
}

fn read_out_backward<B: Backend>(
    session: &mut Session<B>,
    head: &Linear,
    saved: ReadOutSaved<B>,
    grad_logits: &B::Tensor,
) -> Result<B::Tensor> {
    let grad = head.backward(session, saved.head, grad_logits)?;
    Ok(session
        .backend
        .mean_axes_backward(&grad, &saved.body_shape, &READOUT_AXES)?)
}

/// What the read-out keeps.
#[derive(Debug)]
pub struct ReadOutSaved<B: Backend> {
    body_shape: Vec<usize>,
    head: B::Tensor,
}

/// The head `Linear(features -> K)`: weight `trunc_normal(std 0.02)`, bias 0 (docs/architectures.md §4.6).
fn head<B: Backend>(builder: &mut Builder<B>, features: usize, classes: usize) -> Result<Linear> {
    Ok(Linear {
        weight: builder.parameter(
            "head.weight",
            &[classes, features],
            Init::TruncatedNormal { std: 0.02 },
        )?,
        bias: builder.parameter("head.bias", &[classes], Init::Constant(0.0))?,
    })
}

/// The validated sizes of a transformer spec of one of `archs`.
fn sizes(spec: &ModelSpec, archs: [Arch; 2], model: &str) -> Result<TransformerSizes> {
    if !archs.contains(&spec.arch) {
        return Err(Error::Spec(format!(
            "{model} is built from arch {:?} or {:?}, got {:?}",
            archs[0], archs[1], spec.arch
        )));
    }
    spec.validate()?;
    spec.transformer_sizes()
}

fn frame<B: Backend>(
    builder: &mut Builder<B>,
    spec: &ModelSpec,
    dim: usize,
    neurons: &Neurons,
) -> Result<Frame> {
    Ok(Frame {
        arch: spec.arch,
        time_steps: spec.time_steps,
        in_channels: spec.in_channels,
        img_size: spec.img_size,
        tokenizer: Tokenizer::build(builder, spec, dim, neurons)?,
    })
}

// ----------------------------------------------------------------------------------- RevSFormer

/// RevSFormer (docs/architectures.md §4.4, 4.5; arch `revsformer`, `revsformer-dvs`):
///
/// ```text
/// x      = tokenizer(encode(input))                     [T, B, D, H/p, W/p]
/// x      = cat([x, x], channel)                         X1 = X2 = tokens
/// Y1     = X1 + SSA(X2);  Y2 = X2 + MLP(Y1)             per reversible block (docs/reversible.md §3)
/// logits = head(mean over T and tokens of [Y1, Y2])     head Linear(2D -> K), no final LIF
/// ```
///
/// Parameters: `patch_embed.*`, `block.reversible_blocks.{i}.f_block.*` (SSA),
/// `...g_block.*` (MLP), `head.*`.
#[derive(Clone, Debug)]
pub struct RevSFormer {
    frame: Frame,
    /// `block`: F = SSA(D), G = MLP(D, mlp_ratio D) per reversible block.
    pub body: ReversibleSequence<SpikingSelfAttention, Mlp>,
    /// `head`: Linear(2D -> K).
    pub head: Linear,
}

impl RevSFormer {
    /// Creates every parameter through `builder` in the official `state_dict` order. A spec of
    /// another arch, or one that fails [`ModelSpec::validate`], is an [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let sizes = sizes(spec, [Arch::Revsformer, Arch::RevsformerDvs], "RevSFormer")?;
        let neurons = Neurons::new(spec.arch, options);
        let frame = frame(builder, spec, sizes.dim, &neurons)?;
        let mut blocks = Vec::with_capacity(sizes.depth);
        for i in 0..sizes.depth {
            let prefix = format!("block.reversible_blocks.{i}");
            let f = SpikingSelfAttention::build(
                builder,
                &format!("{prefix}.f_block"),
                sizes.dim,
                sizes.heads,
                &neurons,
            )?;
            let g = Mlp::build(
                builder,
                &format!("{prefix}.g_block"),
                sizes.dim,
                sizes.dim * sizes.mlp_ratio,
                &neurons,
            )?;
            blocks.push(ReversibleBlock { f, g });
        }
        let head = head(builder, 2 * sizes.dim, spec.num_classes)?;
        Ok(RevSFormer {
            frame,
            body: ReversibleSequence {
                blocks,
                options: options.reversible,
            },
            head,
        })
    }
}

/// What a [`RevSFormer`] forward keeps: the tokenizer's tape, the reversible sequence's output
/// (or its stored contexts) and the read-out's input.
pub struct RevSFormerSaved<B: Backend> {
    tokenizer: Vec<StageSaved<B>>,
    body: SequenceSaved<B, AttentionSaved<B>, MlpSaved<B>>,
    read_out: ReadOutSaved<B>,
}

impl<B: Backend> Layer<B> for RevSFormer {
    type Saved = RevSFormerSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let (tokens, tokenizer) = self.frame.encode(session, x)?;
        let stream = backend.concat(&[&tokens, &tokens], 2)?;
        let (stream, body) = self.body.forward(session, &stream)?;
        let (logits, read_out) = read_out(session, &self.head, &stream)?;
        Ok((
            logits,
            RevSFormerSaved {
                tokenizer,
                body,
                read_out,
            },
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let grad = read_out_backward(session, &self.head, saved.read_out, grad_y)?;
        let grad = self.body.backward(session, saved.body, &grad)?;
        // Both halves of the stream are the tokens: their gradients add.
        let dim = backend.shape(&grad)[2] / 2;
        let grad = backend.add(
            &backend.narrow(&grad, 2, 0, dim)?,
            &backend.narrow(&grad, 2, dim, dim)?,
        )?;
        self.frame.encode_backward(session, saved.tokenizer, &grad)
    }
}

// -------------------------------------------------------------------------------- Spikingformer

/// One Spikingformer block (docs/architectures.md §4.4): `x = x + SSA(x); x = x + MLP(x)`. Its LayerNorms
/// `norm1`, `norm2` are parameters of the official model that its forward never uses; they are
/// kept (weight 1, bias 0) so that parameter counts and checkpoints match.
#[derive(Clone, Debug)]
pub struct SpikingTransformerBlock {
    /// The unused LayerNorm `norm1`: (weight, bias).
    pub norm1: (ParamId, ParamId),
    pub attn: SpikingSelfAttention,
    /// The unused LayerNorm `norm2`: (weight, bias).
    pub norm2: (ParamId, ParamId),
    pub mlp: Mlp,
}

/// What a [`SpikingTransformerBlock`] keeps.
#[derive(Debug)]
pub struct BlockSaved<B: Backend> {
    attn: AttentionSaved<B>,
    mlp: MlpSaved<B>,
}

/// An unused LayerNorm's `weight` (1) and `bias` (0) under `prefix` (docs/architectures.md §4.4, 4.6).
fn unused_layer_norm<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    dim: usize,
) -> Result<(ParamId, ParamId)> {
    Ok((
        builder.parameter(format!("{prefix}.weight"), &[dim], Init::Constant(1.0))?,
        builder.parameter(format!("{prefix}.bias"), &[dim], Init::Constant(0.0))?,
    ))
}

impl SpikingTransformerBlock {
    fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        sizes: &TransformerSizes,
        neurons: &Neurons,
    ) -> Result<Self> {
        let norm1 = unused_layer_norm(builder, &format!("{prefix}.norm1"), sizes.dim)?;
        let attn = SpikingSelfAttention::build(
            builder,
            &format!("{prefix}.attn"),
            sizes.dim,
            sizes.heads,
            neurons,
        )?;
        let norm2 = unused_layer_norm(builder, &format!("{prefix}.norm2"), sizes.dim)?;
        let mlp = Mlp::build(
            builder,
            &format!("{prefix}.mlp"),
            sizes.dim,
            sizes.dim * sizes.mlp_ratio,
            neurons,
        )?;
        Ok(SpikingTransformerBlock {
            norm1,
            attn,
            norm2,
            mlp,
        })
    }
}

impl<B: Backend> Layer<B> for SpikingTransformerBlock {
    type Saved = BlockSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let (a, attn) = self.attn.forward(session, x)?;
        let x = backend.add(x, &a)?;
        let (m, mlp) = self.mlp.forward(session, &x)?;
        Ok((backend.add(&x, &m)?, BlockSaved { attn, mlp }))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let grad = backend.add(grad_y, &self.mlp.backward(session, saved.mlp, grad_y)?)?;
        Ok(backend.add(&grad, &self.attn.backward(session, saved.attn, &grad)?)?)
    }
}

/// Spikingformer (docs/architectures.md §4.4, 4.5; arch `spikingformer`, `spikingformer-dvs`), the
/// non-reversible counterpart of [`RevSFormer`], trained by plain backpropagation:
///
/// ```text
/// x      = tokenizer(encode(input))                     [T, B, D, H/p, W/p]
/// x      = x + SSA(x);  x = x + MLP(x)                  per block
/// logits = head(mean over T and tokens of x)            head Linear(D -> K)
/// ```
///
/// Parameters: `patch_embed.*`, `block.{i}.norm1.*`, `block.{i}.attn.*`, `block.{i}.norm2.*`,
/// `block.{i}.mlp.*`, `head.*`.
#[derive(Clone, Debug)]
pub struct Spikingformer {
    frame: Frame,
    /// `block.{i}`.
    pub blocks: Vec<SpikingTransformerBlock>,
    /// `head`: Linear(D -> K).
    pub head: Linear,
}

impl Spikingformer {
    /// Creates every parameter through `builder` in the official `state_dict` order, the unused
    /// LayerNorms included. A spec of another arch, or one that fails [`ModelSpec::validate`],
    /// is an [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let sizes = sizes(
            spec,
            [Arch::Spikingformer, Arch::SpikingformerDvs],
            "Spikingformer",
        )?;
        let neurons = Neurons::new(spec.arch, options);
        let frame = frame(builder, spec, sizes.dim, &neurons)?;
        let blocks = (0..sizes.depth)
            .map(|i| {
                SpikingTransformerBlock::build(builder, &format!("block.{i}"), &sizes, &neurons)
            })
            .collect::<Result<Vec<_>>>()?;
        let head = head(builder, sizes.dim, spec.num_classes)?;
        Ok(Spikingformer {
            frame,
            blocks,
            head,
        })
    }
}

/// What a [`Spikingformer`] forward keeps: every layer's context (plain backpropagation).
pub struct SpikingformerSaved<B: Backend> {
    tokenizer: Vec<StageSaved<B>>,
    blocks: Vec<BlockSaved<B>>,
    read_out: ReadOutSaved<B>,
}

impl<B: Backend> Layer<B> for Spikingformer {
    type Saved = SpikingformerSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (x, tokenizer) = self.frame.encode(session, x)?;
        let (x, blocks) = forward_each(&self.blocks, session, x)?;
        let (logits, read_out) = read_out(session, &self.head, &x)?;
        Ok((
            logits,
            SpikingformerSaved {
                tokenizer,
                blocks,
                read_out,
            },
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grad = read_out_backward(session, &self.head, saved.read_out, grad_y)?;
        let grad = backward_each(&self.blocks, session, saved.blocks, grad)?;
        self.frame.encode_backward(session, saved.tokenizer, &grad)
    }
}
