//! The spiking ResNets (docs/architectures.md §4.0-4.3): RevSResNet, whose stages are reversible sequences of
//! [`BasicResidualBlock`] pairs joined by [`DownSampleConv`]s, and its non-reversible counterpart
//! MS-ResNet, whose stages are [`BasicBlock`]s with a membrane shortcut `o + identity`.
//!
//! ```text
//! static  [B, C, H, W] -> conv3x3 + BN (once, 4-D) -> repeat over T -> [T, B, c1, H, W]
//! events  [B, T, C, H, W] -> permute -> [T, B, ...] -> conv3x3 s2 + BN -> pool(3, 2, 1)
//!         -> stages -> SN -> mean over H, W -> Linear -> mean over T -> logits [B, K]
//! ```
//!
//! Every parameter is created through a [`Builder`] in the official `state_dict` order and under
//! the official names, with the official initialisation (docs/architectures.md §4.6): convolutions
//! `kaiming_normal_(fan_out)`, BatchNorm 1/0, the head PyTorch's default U(+-1/sqrt(fan_in)).
//! Stateless layers run on the time-flattened `[T B, ...]` ([`SeqToAnn`], docs/conventions.md §1).

use revsnn_reference::{Backend, Conv2dParams, NeuronConfig, OpError, Pool2dParams};

use super::build::{Builder, Init};
use super::layers::{
    AvgPool, BatchNorm, ConvBn, ConvKind, Linear, MaxPool, Neuron, flatten_time, unflatten_time,
};
use super::reversible::{ReversibleBlock, ReversibleSequence, SequenceSaved};
use super::{BuildOptions, Layer, Session, backward_each, forward_each};
use crate::error::{Error, Result};
use crate::spec::{Arch, ModelSpec};

/// What a [`ConvBn`] backward needs.
type ConvBnSaved<B> = (
    <B as Backend>::Conv2dContext,
    <B as Backend>::BatchNormContext,
);

/// A bias-free `k x k` convolution named `conv_name` (`kaiming_normal_(fan_out)`) followed by a
/// BatchNorm under `bn_prefix` (1/0), in that `state_dict` order (docs/architectures.md §4.6).
#[allow(clippy::too_many_arguments)]
fn conv_bn<B: Backend>(
    builder: &mut Builder<B>,
    conv_name: &str,
    bn_prefix: &str,
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<ConvBn> {
    let weight = builder.parameter(
        conv_name,
        &[out_channels, in_channels, kernel, kernel],
        Init::KaimingNormalFanOut,
    )?;
    let norm = BatchNorm {
        ids: builder.batch_norm(bn_prefix, out_channels)?,
    };
    Ok(ConvBn {
        weight,
        bias: None,
        kind: ConvKind::Conv2d(Conv2dParams::new(stride, padding)),
        norm,
    })
}

/// `SeqToANNContainer(layer)`: `layer` applied to a sequence `[T, B, ...]` as the time-flattened
/// batch `[T B, ...]` and reshaped back, so BatchNorm statistics cover `T B H W` (docs/conventions.md §1).
#[derive(Clone, Debug)]
pub struct SeqToAnn<L> {
    pub layer: L,
}

impl<B: Backend, L: Layer<B>> Layer<B> for SeqToAnn<L> {
    /// The inner layer's context and `T`.
    type Saved = (L::Saved, usize);

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let time_steps = backend.shape(x)[0];
        let (y, saved) = self.layer.forward(session, &flatten_time(backend, x)?)?;
        Ok((
            unflatten_time(backend, &y, time_steps)?,
            (saved, time_steps),
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        let (inner, time_steps) = saved;
        let grad = self
            .layer
            .backward(session, inner, &flatten_time(backend, grad_y)?)?;
        unflatten_time(backend, &grad, time_steps)
    }
}

/// The F or G of a RevSResNet reversible block (docs/architectures.md §4.0), over `[T, B, p, H, W]`:
/// `out = BN1(Conv3x3(SN1(x)))`, `out = BN2(Conv3x3(SN2(out)))`, both convolutions `p -> p`,
/// stride 1, padding 1, no bias; no internal shortcut (the reversible coupling is the residual).
#[derive(Clone, Debug)]
pub struct BasicResidualBlock {
    pub sn1: Neuron,
    /// `conv1.0` (conv) and `conv1.1` (BN).
    pub conv1: SeqToAnn<ConvBn>,
    pub sn2: Neuron,
    /// `conv2.0` (conv) and `conv2.1` (BN).
    pub conv2: SeqToAnn<ConvBn>,
}

impl BasicResidualBlock {
    /// The block of width `planes` under `prefix` (e.g. `layer1.reversible_blocks.0.f_block`).
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        planes: usize,
        neuron: &Neuron,
    ) -> Result<Self> {
        let conv = |builder: &mut Builder<B>, name: &str| -> Result<SeqToAnn<ConvBn>> {
            Ok(SeqToAnn {
                layer: conv_bn(
                    builder,
                    &format!("{prefix}.{name}.0.weight"),
                    &format!("{prefix}.{name}.1"),
                    planes,
                    planes,
                    3,
                    1,
                    1,
                )?,
            })
        };
        Ok(BasicResidualBlock {
            sn1: neuron.clone(),
            conv1: conv(builder, "conv1")?,
            sn2: neuron.clone(),
            conv2: conv(builder, "conv2")?,
        })
    }
}

/// What a [`BasicResidualBlock`] backward needs.
#[derive(Debug)]
pub struct BasicResidualSaved<B: Backend> {
    sn1: B::NeuronContext,
    conv1: (ConvBnSaved<B>, usize),
    sn2: B::NeuronContext,
    conv2: (ConvBnSaved<B>, usize),
}

impl<B: Backend> Layer<B> for BasicResidualBlock {
    type Saved = BasicResidualSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (s1, sn1) = self.sn1.forward(session, x)?;
        let (c1, conv1) = self.conv1.forward(session, &s1)?;
        let (s2, sn2) = self.sn2.forward(session, &c1)?;
        let (c2, conv2) = self.conv2.forward(session, &s2)?;
        Ok((
            c2,
            BasicResidualSaved {
                sn1,
                conv1,
                sn2,
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
        let grad = self.conv2.backward(session, saved.conv2, grad_y)?;
        let grad = self.sn2.backward(session, saved.sn2, &grad)?;
        let grad = self.conv1.backward(session, saved.conv1, &grad)?;
        self.sn1.backward(session, saved.sn1, &grad)
    }
}

/// `DownSampleConv(C_in, C_out, 2)` between RevSResNet stages (docs/architectures.md §4.0), non-reversible:
/// `SN(x) -> AvgPool2d(3, 2, 1) -> Conv1x1(C_in -> C_out, stride 1, no bias) -> BN(C_out)`, the
/// last three on `[T B, ...]`. Names: `ds{i}.1.1.weight` (conv), `ds{i}.1.2.*` (BN).
#[derive(Clone, Debug)]
pub struct DownSampleConv {
    pub sn: Neuron,
    pub pool: AvgPool,
    pub conv: ConvBn,
}

impl DownSampleConv {
    /// The downsample `C_in -> C_out` under `prefix` (e.g. `ds1`).
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        neuron: &Neuron,
    ) -> Result<Self> {
        Ok(DownSampleConv {
            sn: neuron.clone(),
            pool: AvgPool {
                params: Pool2dParams::K3_S2_P1,
            },
            conv: conv_bn(
                builder,
                &format!("{prefix}.1.1.weight"),
                &format!("{prefix}.1.2"),
                in_channels,
                out_channels,
                1,
                1,
                0,
            )?,
        })
    }
}

/// What a [`DownSampleConv`] backward needs.
#[derive(Debug)]
pub struct DownSampleSaved<B: Backend> {
    sn: B::NeuronContext,
    pool_input_shape: Vec<usize>,
    conv: ConvBnSaved<B>,
    time_steps: usize,
}

impl<B: Backend> Layer<B> for DownSampleConv {
    type Saved = DownSampleSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let time_steps = backend.shape(x)[0];
        let (spikes, sn) = self.sn.forward(session, x)?;
        let (pooled, pool_input_shape) = self
            .pool
            .forward(session, &flatten_time(backend, &spikes)?)?;
        let (y, conv) = self.conv.forward(session, &pooled)?;
        Ok((
            unflatten_time(backend, &y, time_steps)?,
            DownSampleSaved {
                sn,
                pool_input_shape,
                conv,
                time_steps,
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
        let grad = self
            .conv
            .backward(session, saved.conv, &flatten_time(backend, grad_y)?)?;
        let grad = self.pool.backward(session, saved.pool_input_shape, &grad)?;
        let grad = unflatten_time(backend, &grad, saved.time_steps)?;
        self.sn.backward(session, saved.sn, &grad)
    }
}

/// The shortcut of the first MS-ResNet block of a strided stage (docs/architectures.md §4.0, cifar10/ms_resnet.py
/// L162-169): `BN(Conv1x1(in -> out, stride)(SN(x)))`. Names: `downsample.1.0.weight`,
/// `downsample.1.1.*`.
#[derive(Clone, Debug)]
pub struct Downsample {
    pub sn: Neuron,
    pub conv: SeqToAnn<ConvBn>,
}

/// What a [`Downsample`] backward needs.
#[derive(Debug)]
pub struct DownsampleSaved<B: Backend> {
    sn: B::NeuronContext,
    conv: (ConvBnSaved<B>, usize),
}

impl<B: Backend> Layer<B> for Downsample {
    type Saved = DownsampleSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (spikes, sn) = self.sn.forward(session, x)?;
        let (y, conv) = self.conv.forward(session, &spikes)?;
        Ok((y, DownsampleSaved { sn, conv }))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grad = self.conv.backward(session, saved.conv, grad_y)?;
        self.sn.backward(session, saved.sn, &grad)
    }
}

/// The MS-ResNet block (docs/architectures.md §4.0, cifar10/ms_resnet.py L24-63) over `[T, B, in, H, W]`:
/// `o = BN(Conv3x3(in -> out, stride)(SN1(x)))`, `o = BN(Conv3x3(out -> out)(SN2(o)))`,
/// `y = o + identity` with `identity = x` or [`Downsample`]`(x)`.
#[derive(Clone, Debug)]
pub struct BasicBlock {
    pub sn1: Neuron,
    pub conv1: SeqToAnn<ConvBn>,
    pub sn2: Neuron,
    pub conv2: SeqToAnn<ConvBn>,
    pub downsample: Option<Downsample>,
}

impl BasicBlock {
    /// The block `in -> out` with the first convolution's `stride` under `prefix`
    /// (e.g. `layer2.0`); a [`Downsample`] iff `stride != 1` or `in != out` (the official rule).
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        prefix: &str,
        in_planes: usize,
        planes: usize,
        stride: usize,
        neuron: &Neuron,
    ) -> Result<Self> {
        let conv1 = conv_bn(
            builder,
            &format!("{prefix}.conv1.0.weight"),
            &format!("{prefix}.conv1.1"),
            in_planes,
            planes,
            3,
            stride,
            1,
        )?;
        let conv2 = conv_bn(
            builder,
            &format!("{prefix}.conv2.0.weight"),
            &format!("{prefix}.conv2.1"),
            planes,
            planes,
            3,
            1,
            1,
        )?;
        let downsample = if stride != 1 || in_planes != planes {
            Some(Downsample {
                sn: neuron.clone(),
                conv: SeqToAnn {
                    layer: conv_bn(
                        builder,
                        &format!("{prefix}.downsample.1.0.weight"),
                        &format!("{prefix}.downsample.1.1"),
                        in_planes,
                        planes,
                        1,
                        stride,
                        0,
                    )?,
                },
            })
        } else {
            None
        };
        Ok(BasicBlock {
            sn1: neuron.clone(),
            conv1: SeqToAnn { layer: conv1 },
            sn2: neuron.clone(),
            conv2: SeqToAnn { layer: conv2 },
            downsample,
        })
    }
}

/// What a [`BasicBlock`] backward needs.
#[derive(Debug)]
pub struct BasicBlockSaved<B: Backend> {
    sn1: B::NeuronContext,
    conv1: (ConvBnSaved<B>, usize),
    sn2: B::NeuronContext,
    conv2: (ConvBnSaved<B>, usize),
    downsample: Option<DownsampleSaved<B>>,
}

impl<B: Backend> Layer<B> for BasicBlock {
    type Saved = BasicBlockSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (s1, sn1) = self.sn1.forward(session, x)?;
        let (o, conv1) = self.conv1.forward(session, &s1)?;
        let (s2, sn2) = self.sn2.forward(session, &o)?;
        let (o, conv2) = self.conv2.forward(session, &s2)?;
        let (y, downsample) = match &self.downsample {
            Some(downsample) => {
                let (identity, saved) = downsample.forward(session, x)?;
                (session.backend.add(&o, &identity)?, Some(saved))
            }
            None => (session.backend.add(&o, x)?, None),
        };
        Ok((
            y,
            BasicBlockSaved {
                sn1,
                conv1,
                sn2,
                conv2,
                downsample,
            },
        ))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grad = self.conv2.backward(session, saved.conv2, grad_y)?;
        let grad = self.sn2.backward(session, saved.sn2, &grad)?;
        let grad = self.conv1.backward(session, saved.conv1, &grad)?;
        let grad_main = self.sn1.backward(session, saved.sn1, &grad)?;
        let grad_identity = match (&self.downsample, saved.downsample) {
            (Some(downsample), Some(ds_saved)) => downsample.backward(session, ds_saved, grad_y)?,
            (None, None) => grad_y.clone(),
            _ => {
                return Err(OpError::shape(
                    "basic block",
                    "the saved context does not match the block's downsample",
                )
                .into());
            }
        };
        Ok(session.backend.add(&grad_main, &grad_identity)?)
    }
}

/// The pooling of an event stem: RevSResNet24's `self.maxpool` is an AvgPool2d(3, 2, 1);
/// MS-ResNet20's a real MaxPool2d(3, 2, 1) (docs/architectures.md §4.3; docs/choices.md §A6).
#[derive(Clone, Debug)]
pub enum StemPool {
    Avg(AvgPool),
    Max(MaxPool),
}

/// How the input becomes the sequence `[T, B, C, H, W]` the stages see.
#[derive(Clone, Debug)]
pub enum Stem {
    /// Static images `[B, C, H, W]` (docs/architectures.md §4.1, 4.2; docs/choices.md §A25): `conv1` 3x3 stride 1 + `bn1` once on
    /// the 4-D batch (statistics over `B H W`), then the same analog input at every one of
    /// `time_steps` steps (`repeat`); its backward sums the gradient over time.
    Static { conv: ConvBn, time_steps: usize },
    /// Event frames `[B, T, C, H, W]` (docs/architectures.md §4.3): permuted to `[T, B, ...]`, then
    /// `SeqToANN(conv1 3x3 stride 2)`, `SeqToANN(bn1)` and the stem pool on `[T B, ...]`; `T` is
    /// the input's, as in the official code. Its backward permutes the gradient back.
    Events { conv: ConvBn, pool: StemPool },
}

impl Stem {
    fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        width: usize,
        pool: StemPool,
    ) -> Result<Self> {
        Ok(if spec.arch.is_dvs() {
            Stem::Events {
                conv: conv_bn(
                    builder,
                    "conv1.0.weight",
                    "bn1.0",
                    spec.in_channels,
                    width,
                    3,
                    2,
                    1,
                )?,
                pool,
            }
        } else {
            Stem::Static {
                conv: conv_bn(
                    builder,
                    "conv1.weight",
                    "bn1",
                    spec.in_channels,
                    width,
                    3,
                    1,
                    1,
                )?,
                time_steps: spec.time_steps,
            }
        })
    }
}

/// What a [`Stem`] backward needs.
#[derive(Debug)]
pub enum StemSaved<B: Backend> {
    Static {
        conv: ConvBnSaved<B>,
    },
    Events {
        conv: ConvBnSaved<B>,
        pool: StemPoolSaved<B>,
        time_steps: usize,
    },
}

/// What a [`StemPool`] backward needs.
#[derive(Debug)]
pub enum StemPoolSaved<B: Backend> {
    Avg(Vec<usize>),
    Max(B::MaxPoolContext),
}

/// `[B, T, ...] <-> [T, B, ...]` for 5-D event tensors (its own inverse).
const SWAP_BATCH_TIME: [usize; 5] = [1, 0, 2, 3, 4];

/// Checks that `x` has `rank` axes, none empty.
fn expect_input<B: Backend>(backend: &B, x: &B::Tensor, rank: usize, layout: &str) -> Result<()> {
    let shape = backend.shape(x);
    if shape.len() != rank || shape.contains(&0) {
        return Err(OpError::shape(
            "resnet input",
            format!("expected {layout} with every size >= 1, got {shape:?}"),
        )
        .into());
    }
    Ok(())
}

impl<B: Backend> Layer<B> for Stem {
    type Saved = StemSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        match self {
            Stem::Static { conv, time_steps } => {
                expect_input(backend, x, 4, "images [B, C, H, W]")?;
                let (y, conv_saved) = conv.forward(session, x)?;
                Ok((
                    backend.repeat_leading(&y, *time_steps)?,
                    StemSaved::Static { conv: conv_saved },
                ))
            }
            Stem::Events { conv, pool } => {
                expect_input(backend, x, 5, "event frames [B, T, C, H, W]")?;
                let sequence = backend.permute(x, &SWAP_BATCH_TIME)?;
                let time_steps = backend.shape(&sequence)[0];
                let (y, conv_saved) = conv.forward(session, &flatten_time(backend, &sequence)?)?;
                let (y, pool_saved) = match pool {
                    StemPool::Avg(avg) => {
                        let (y, saved) = avg.forward(session, &y)?;
                        (y, StemPoolSaved::Avg(saved))
                    }
                    StemPool::Max(max) => {
                        let (y, saved) = max.forward(session, &y)?;
                        (y, StemPoolSaved::Max(saved))
                    }
                };
                Ok((
                    unflatten_time(backend, &y, time_steps)?,
                    StemSaved::Events {
                        conv: conv_saved,
                        pool: pool_saved,
                        time_steps,
                    },
                ))
            }
        }
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let backend = session.backend;
        match (self, saved) {
            (Stem::Static { conv, .. }, StemSaved::Static { conv: conv_saved }) => {
                let grad = backend.sum_leading(grad_y)?;
                conv.backward(session, conv_saved, &grad)
            }
            (
                Stem::Events { conv, pool },
                StemSaved::Events {
                    conv: conv_saved,
                    pool: pool_saved,
                    time_steps,
                },
            ) => {
                let grad = flatten_time(backend, grad_y)?;
                let grad = match (pool, pool_saved) {
                    (StemPool::Avg(avg), StemPoolSaved::Avg(saved)) => {
                        avg.backward(session, saved, &grad)?
                    }
                    (StemPool::Max(max), StemPoolSaved::Max(saved)) => {
                        max.backward(session, saved, &grad)?
                    }
                    _ => return Err(mismatched("stem pool")),
                };
                let grad = conv.backward(session, conv_saved, &grad)?;
                let grad = unflatten_time(backend, &grad, time_steps)?;
                Ok(backend.permute(&grad, &SWAP_BATCH_TIME)?)
            }
            _ => Err(mismatched("stem")),
        }
    }
}

fn mismatched(layer: &'static str) -> Error {
    OpError::shape(layer, "the saved context belongs to another kind of layer").into()
}

/// The classifier of every spiking ResNet (docs/architectures.md §4.1-4.3): `SN` on `[T, B, C, H, W]`,
/// `AdaptiveAvgPool2d(1)` (the mean over `H, W`), `fc` on `[T B, C]` and the mean of the logits
/// over `T`: `[B, K]`.
#[derive(Clone, Debug)]
pub struct Head {
    pub sn: Neuron,
    /// `fc.weight [K, C]`, `fc.bias [K]`, both U(+-1/sqrt(C)) (docs/architectures.md §4.6).
    pub fc: Linear,
}

impl Head {
    fn build<B: Backend>(
        builder: &mut Builder<B>,
        channels: usize,
        num_classes: usize,
        neuron: &Neuron,
    ) -> Result<Self> {
        let weight =
            builder.parameter("fc.weight", &[num_classes, channels], Init::UniformFanIn)?;
        let bias = builder.bias("fc.bias", num_classes, channels)?;
        Ok(Head {
            sn: neuron.clone(),
            fc: Linear { weight, bias },
        })
    }
}

/// What a [`Head`] backward needs.
#[derive(Debug)]
pub struct HeadSaved<B: Backend> {
    sn: B::NeuronContext,
    spikes_shape: Vec<usize>,
    fc: B::Tensor,
    logits_shape: Vec<usize>,
}

impl<B: Backend> Layer<B> for Head {
    type Saved = HeadSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let backend = session.backend;
        let (spikes, sn) = self.sn.forward(session, x)?;
        let spikes_shape = backend.shape(&spikes);
        let (time_steps, batch, channels) = (spikes_shape[0], spikes_shape[1], spikes_shape[2]);
        let pooled = backend.mean_axes(&spikes, &[3, 4])?;
        let pooled = backend.reshape(&pooled, &[time_steps * batch, channels])?;
        let (logits, fc) = self.fc.forward(session, &pooled)?;
        let classes = backend.shape(&logits)[1];
        let logits_shape = vec![time_steps, batch, classes];
        let logits = backend.reshape(&logits, &logits_shape)?;
        Ok((
            backend.mean_axes(&logits, &[0])?,
            HeadSaved {
                sn,
                spikes_shape,
                fc,
                logits_shape,
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
        let [time_steps, batch, classes] = saved.logits_shape[..] else {
            return Err(mismatched("head"));
        };
        let grad = backend.mean_axes_backward(grad_y, &saved.logits_shape, &[0])?;
        let grad = backend.reshape(&grad, &[time_steps * batch, classes])?;
        let grad = self.fc.backward(session, saved.fc, &grad)?;
        let grad = backend.reshape(&grad, &saved.spikes_shape[..3])?;
        let grad = backend.mean_axes_backward(&grad, &saved.spikes_shape, &[3, 4])?;
        self.sn.backward(session, saved.sn, &grad)
    }
}

/// The neuron of every layer of a ResNet family (docs/neurons.md §2.1): IF with ATan(2) for static images,
/// LIF tau 1.5 with Sigmoid(4) for events; both `detach_reset`, V_th 1.
fn family_neuron(arch: Arch, options: &BuildOptions) -> Neuron {
    if arch.is_dvs() {
        options.neuron(NeuronConfig::lif_sigmoid(1.5, 1.0))
    } else {
        options.neuron(NeuronConfig::if_atan())
    }
}

/// The validated `(layers, planes)` of `spec` if its arch is one of `archs`.
fn sizes_for(spec: &ModelSpec, archs: &[Arch], model: &str) -> Result<(Vec<usize>, Vec<usize>)> {
    if !archs.contains(&spec.arch) {
        return Err(Error::Spec(format!(
            "{model} is built from the archs {archs:?}, not {:?}",
            spec.arch
        )));
    }
    spec.validate()?;
    let sizes = spec.resnet_sizes()?;
    Ok((sizes.layers, sizes.planes))
}

/// One RevSResNet stage: the [`DownSampleConv`] from the previous stage (none for the first),
/// then the reversible sequence of [`BasicResidualBlock`] pairs.
#[derive(Clone, Debug)]
pub struct RevStage {
    pub downsample: Option<DownSampleConv>,
    pub blocks: ReversibleSequence<BasicResidualBlock, BasicResidualBlock>,
}

/// What a [`RevStage`] backward needs: the downsample's context (a tape entry) and whatever the
/// reversible sequence keeps (only its output, under [`super::reversible::Storage::Reversible`]).
pub struct RevStageSaved<B: Backend> {
    downsample: Option<DownSampleSaved<B>>,
    blocks: SequenceSaved<B, BasicResidualSaved<B>, BasicResidualSaved<B>>,
}

impl<B: Backend> Layer<B> for RevStage {
    type Saved = RevStageSaved<B>;

    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (x, downsample) = match &self.downsample {
            Some(downsample) => {
                let (y, saved) = downsample.forward(session, x)?;
                (y, Some(saved))
            }
            None => (x.clone(), None),
        };
        let (y, blocks) = self.blocks.forward(session, &x)?;
        Ok((y, RevStageSaved { downsample, blocks }))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grad = self.blocks.backward(session, saved.blocks, grad_y)?;
        match (&self.downsample, saved.downsample) {
            (Some(downsample), Some(ds_saved)) => downsample.backward(session, ds_saved, &grad),
            (None, None) => Ok(grad),
            _ => Err(mismatched("reversible stage")),
        }
    }
}

/// RevSResNet (docs/architectures.md §4.1 static, 4.3 events): stage `i` is `c_i = 2 planes_i` wide and runs
/// `layers_i` reversible blocks `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)` with F, G
/// [`BasicResidualBlock`]s of width `planes_i` on the channel halves (docs/reversible.md §3.1, 3.4); stages
/// are joined by [`DownSampleConv`]`(c_{i-1} -> c_i)`. Static: IF/ATan neurons, stem 3x3 stride 1
/// once on the image then repeated over T. Events: LIF tau 1.5, stem 3x3 stride 2 and
/// AvgPool(3, 2, 1) over `[T B, ...]`. Head: [`Head`] `(c_last -> num_classes)`.
#[derive(Clone, Debug)]
pub struct RevSResNet {
    pub stem: Stem,
    pub stages: Vec<RevStage>,
    pub head: Head,
}

impl RevSResNet {
    /// Builds the parameters of `spec` (arch `revsresnet` or `revsresnet-dvs`) in the official
    /// order: `conv1`, `bn1`, `layer1.reversible_blocks.{j}.{f,g}_block.conv{1,2}.{0,1}`, `ds1.1.1`,
    /// `ds1.1.2`, `layer2`, ..., `fc` (fixtures/checkpoint-keys). Any other spec is an
    /// [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let (layers, planes) =
            sizes_for(spec, &[Arch::Revsresnet, Arch::RevsresnetDvs], "RevSResNet")?;
        let widths = planes
            .iter()
            .map(|&p| {
                p.checked_mul(2)
                    .ok_or_else(|| Error::Spec(format!("planes {p} is too large")))
            })
            .collect::<Result<Vec<usize>>>()?;
        let neuron = family_neuron(spec.arch, options);
        let stem = Stem::build(
            builder,
            spec,
            widths[0],
            StemPool::Avg(AvgPool {
                params: Pool2dParams::K3_S2_P1,
            }),
        )?;
        let mut stages = Vec::with_capacity(layers.len());
        for (i, (&count, &half)) in layers.iter().zip(&planes).enumerate() {
            let downsample = if i == 0 {
                None
            } else {
                Some(DownSampleConv::build(
                    builder,
                    &format!("ds{i}"),
                    widths[i - 1],
                    widths[i],
                    &neuron,
                )?)
            };
            let mut blocks = Vec::with_capacity(count);
            for j in 0..count {
                let prefix = format!("layer{}.reversible_blocks.{j}", i + 1);
                let f = BasicResidualBlock::build(
                    builder,
                    &format!("{prefix}.f_block"),
                    half,
                    &neuron,
                )?;
                let g = BasicResidualBlock::build(
                    builder,
                    &format!("{prefix}.g_block"),
                    half,
                    &neuron,
                )?;
                blocks.push(ReversibleBlock { f, g });
            }
            stages.push(RevStage {
                downsample,
                blocks: ReversibleSequence {
                    blocks,
                    options: options.reversible,
                },
            });
        }
        let head = Head::build(builder, widths[widths.len() - 1], spec.num_classes, &neuron)?;
        Ok(RevSResNet { stem, stages, head })
    }
}

/// What a [`RevSResNet`] backward needs.
pub struct RevSResNetSaved<B: Backend> {
    stem: StemSaved<B>,
    stages: Vec<RevStageSaved<B>>,
    head: HeadSaved<B>,
}

impl<B: Backend> Layer<B> for RevSResNet {
    type Saved = RevSResNetSaved<B>;

    /// Images `[B, C, H, W]` (static) or event frames `[B, T, C, H, W]` to logits `[B, K]`.
    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (x, stem) = self.stem.forward(session, x)?;
        let (x, stages) = forward_each(&self.stages, session, x)?;
        let (logits, head) = self.head.forward(session, &x)?;
        Ok((logits, RevSResNetSaved { stem, stages, head }))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grad = self.head.backward(session, saved.head, grad_y)?;
        let grad = backward_each(&self.stages, session, saved.stages, grad)?;
        self.stem.backward(session, saved.stem, &grad)
    }
}

/// MS-ResNet (docs/architectures.md §4.2 static, 4.3 events), the non-reversible counterpart: a stem of width
/// `planes_0`, then stage `i` of `layers_i` [`BasicBlock`]s of width `planes_i`, the first with
/// stride 2 and a [`Downsample`] shortcut for `i > 0`; plain backpropagation keeps every block's
/// context. Static: IF/ATan, stem once on the image and repeated over T (the constructed but
/// unused `maxpool` of the CIFAR code has no parameters and is left out). Events: LIF tau 1.5,
/// stem 3x3 stride 2 and MaxPool(3, 2, 1). Head: [`Head`] `(planes_last -> num_classes)`.
#[derive(Clone, Debug)]
pub struct MsResNet {
    pub stem: Stem,
    pub stages: Vec<Vec<BasicBlock>>,
    pub head: Head,
}

impl MsResNet {
    /// Builds the parameters of `spec` (arch `msresnet` or `msresnet-dvs`) in the official order:
    /// `conv1`, `bn1`, `layer{i}.{j}.conv{1,2}.{0,1}`, `layer{i}.0.downsample.1.{0,1}`, ..., `fc`
    /// (fixtures/checkpoint-keys). Any other spec is an [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let (layers, planes) = sizes_for(spec, &[Arch::Msresnet, Arch::MsresnetDvs], "MS-ResNet")?;
        let neuron = family_neuron(spec.arch, options);
        let stem = Stem::build(
            builder,
            spec,
            planes[0],
            StemPool::Max(MaxPool {
                params: Pool2dParams::K3_S2_P1,
            }),
        )?;
        let mut in_planes = planes[0];
        let mut stages = Vec::with_capacity(layers.len());
        for (i, (&count, &width)) in layers.iter().zip(&planes).enumerate() {
            let mut blocks = Vec::with_capacity(count);
            for j in 0..count {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                blocks.push(BasicBlock::build(
                    builder,
                    &format!("layer{}.{j}", i + 1),
                    in_planes,
                    width,
                    stride,
                    &neuron,
                )?);
                in_planes = width;
            }
            stages.push(blocks);
        }
        let head = Head::build(builder, in_planes, spec.num_classes, &neuron)?;
        Ok(MsResNet { stem, stages, head })
    }
}

/// What an [`MsResNet`] backward needs: every block's context, in forward order.
pub struct MsResNetSaved<B: Backend> {
    stem: StemSaved<B>,
    blocks: Vec<BasicBlockSaved<B>>,
    head: HeadSaved<B>,
}

impl<B: Backend> Layer<B> for MsResNet {
    type Saved = MsResNetSaved<B>;

    /// Images `[B, C, H, W]` (static) or event frames `[B, T, C, H, W]` to logits `[B, K]`.
    fn forward(&self, session: &mut Session<B>, x: &B::Tensor) -> Result<(B::Tensor, Self::Saved)> {
        let (x, stem) = self.stem.forward(session, x)?;
        let (x, blocks) = forward_each(self.stages.iter().flatten(), session, x)?;
        let (logits, head) = self.head.forward(session, &x)?;
        Ok((logits, MsResNetSaved { stem, blocks, head }))
    }

    fn backward(
        &self,
        session: &mut Session<B>,
        saved: Self::Saved,
        grad_y: &B::Tensor,
    ) -> Result<B::Tensor> {
        let grad = self.head.backward(session, saved.head, grad_y)?;
        let grad = backward_each(self.stages.iter().flatten(), session, saved.blocks, grad)?;
        self.stem.backward(session, saved.stem, &grad)
    }
}
