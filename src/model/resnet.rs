//! The spiking ResNets (docs/architectures.md §4.0-4.3): RevSResNet, whose stages are reversible
//! sequences of [`BasicResidualBlock`] pairs joined by [`DownSampleConv`]s, and its
//! non-reversible counterpart MS-ResNet, whose stages are [`BasicBlock`]s with a membrane
//! shortcut `o + identity`. Every part is a composition of layers (`super::compose`).
//!
//! ```text
//! static  [B, C, H, W] -> conv3x3 + BN (once, 4-D) -> repeat over T -> [T, B, c1, H, W]
//! events  [B, T, C, H, W] -> permute -> [T, B, ...] -> conv3x3 s2 + BN -> pool(3, 2, 1)
//!         -> stages -> SN -> mean over H, W -> Linear -> mean over T -> logits [B, K]
//! ```
//!
//! Every parameter is created through a [`Builder`] in the official `state_dict` order and under
//! the official names, with the official initialisation (docs/architectures.md §4.6):
//! convolutions `kaiming_normal_(fan_out)`, BatchNorm 1/0, the head PyTorch's default
//! U(+-1/sqrt(fan_in)). Stateless layers run on the time-flattened `[T B, ...]` ([`SeqToAnn`],
//! docs/conventions.md §1).

use revsnn_reference::{Backend, Conv2dParams, NeuronConfig, Pool2dParams};

use super::BuildOptions;
use super::build::{Builder, ConvInit, Init};
use super::compose::{Model, PerInput, Residual, SeqToAnn};
use super::layers::{
    AvgPool, ConvBn, ConvBnAvgPool, ConvKind, InputShape, KeepInput, Linear, MaxPool, MeanOver,
    Neuron, RepeatOverTime, SpikingConvBn, SpikingConvPair, SwapBatchTime,
};
use super::reversible::{ReversibleBlock, ReversibleSequence};
use crate::error::{Error, Result};
use crate::spec::{Arch, ModelSpec};

/// A ResNet convolution (docs/architectures.md §4.6): `kernel x kernel`, `in -> out` channels,
/// `stride`, padding `kernel / 2`, no bias, `kaiming_normal_(fan_out)`.
#[derive(Clone, Copy, Debug)]
struct ResNetConv {
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
}

impl ResNetConv {
    fn new(in_channels: usize, out_channels: usize, kernel: usize, stride: usize) -> Self {
        ResNetConv {
            in_channels,
            out_channels,
            kernel,
            stride,
        }
    }

    /// The convolution `{conv}.weight` and its BatchNorm under `bn`.
    fn conv_bn<B: Backend>(self, builder: &mut Builder<B>, conv: &str, bn: &str) -> Result<ConvBn> {
        let (k, params) = (self.kernel, Conv2dParams::new(self.stride, self.kernel / 2));
        builder.conv_bn(
            conv,
            bn,
            &[self.out_channels, self.in_channels, k, k],
            ConvInit::KaimingNormalFanOut,
            ConvKind::Conv2d(params),
        )
    }

    /// `SN -> SeqToANN(conv -> BN)`, the convolution under `{prefix}.0`, the BatchNorm under
    /// `{prefix}.1`.
    fn spiking<B: Backend>(
        self,
        builder: &mut Builder<B>,
        prefix: &str,
        neuron: &Neuron,
    ) -> Result<SpikingConvBn> {
        let layer = self.conv_bn(builder, &format!("{prefix}.0"), &format!("{prefix}.1"))?;
        Ok(SpikingConvBn::new(neuron.clone(), layer))
    }
}

/// The F or G of a RevSResNet reversible block (docs/architectures.md §4.0), over
/// `[T, B, p, H, W]`: `out = BN1(Conv3x3(SN1(x)))`, `out = BN2(Conv3x3(SN2(out)))`, both
/// convolutions `p -> p`, stride 1, padding 1, no bias; no internal shortcut (the reversible
/// coupling is the residual). Names: `{prefix}.conv{1,2}.0` (conv), `{prefix}.conv{1,2}.1` (BN).
pub type BasicResidualBlock = SpikingConvPair;

fn basic_residual_block<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    planes: usize,
    neuron: &Neuron,
) -> Result<BasicResidualBlock> {
    let conv = ResNetConv::new(planes, planes, 3, 1);
    let first = conv.spiking(builder, &format!("{prefix}.conv1"), neuron)?;
    let second = conv.spiking(builder, &format!("{prefix}.conv2"), neuron)?;
    Ok(SpikingConvPair { first, second })
}

/// The reversible block `{prefix}` of RevSResNet: F and G [`BasicResidualBlock`]s of width
/// `planes`, under `{prefix}.f_block` and `{prefix}.g_block`.
fn reversible_block<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    planes: usize,
    neuron: &Neuron,
) -> Result<ReversibleBlock<BasicResidualBlock, BasicResidualBlock>> {
    let f = basic_residual_block(builder, &format!("{prefix}.f_block"), planes, neuron)?;
    let g = basic_residual_block(builder, &format!("{prefix}.g_block"), planes, neuron)?;
    Ok(ReversibleBlock::keeping_inputs(f, g))
}

/// `DownSampleConv(C_in, C_out, 2)` between RevSResNet stages (docs/architectures.md §4.0),
/// non-reversible: `SN(x) -> AvgPool2d(3, 2, 1) -> Conv1x1(C_in -> C_out, stride 1, no bias) ->
/// BN(C_out)`, the last three on `[T B, ...]`. Names: `ds{i}.1.1.weight` (conv), `ds{i}.1.2.*`
/// (BN).
pub type DownSampleConv = (Neuron, SeqToAnn<(AvgPool, ConvBn)>);

fn downsample_conv<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    in_channels: usize,
    out_channels: usize,
    neuron: &Neuron,
) -> Result<DownSampleConv> {
    let pool = AvgPool {
        params: Pool2dParams::K3_S2_P1,
    };
    let conv = ResNetConv::new(in_channels, out_channels, 1, 1).conv_bn(
        builder,
        &format!("{prefix}.1.1"),
        &format!("{prefix}.1.2"),
    )?;
    Ok((
        neuron.clone(),
        SeqToAnn {
            layer: (pool, conv),
        },
    ))
}

/// The MS-ResNet block (docs/architectures.md §4.0, cifar10/ms_resnet.py L24-63) over
/// `[T, B, in, H, W]`: `o = BN(Conv3x3(in -> out, stride)(SN1(x)))`,
/// `o = BN(Conv3x3(out -> out)(SN2(o)))`, `y = o + identity` with `identity = x`, or for the
/// first block of a strided stage (L162-169) `BN(Conv1x1(in -> out, stride)(SN(x)))`. Names:
/// `{prefix}.conv{1,2}.{0,1}`, `{prefix}.downsample.1.{0,1}`.
pub type BasicBlock = Residual<SpikingConvPair, Option<SpikingConvBn>>;

/// The block `in -> out` with the first convolution's `stride` under `prefix` (e.g.
/// `layer2.0`); a downsample shortcut iff `stride != 1` or `in != out` (the official rule).
fn basic_block<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    in_planes: usize,
    planes: usize,
    stride: usize,
    neuron: &Neuron,
) -> Result<BasicBlock> {
    let first = ResNetConv::new(in_planes, planes, 3, stride).spiking(
        builder,
        &format!("{prefix}.conv1"),
        neuron,
    )?;
    let second = ResNetConv::new(planes, planes, 3, 1).spiking(
        builder,
        &format!("{prefix}.conv2"),
        neuron,
    )?;
    let shortcut = (stride != 1 || in_planes != planes)
        .then(|| {
            ResNetConv::new(in_planes, planes, 1, stride).spiking(
                builder,
                &format!("{prefix}.downsample.1"),
                neuron,
            )
        })
        .transpose()?;
    Ok(Residual {
        main: SpikingConvPair { first, second },
        shortcut,
    })
}

/// How the input becomes the sequence `[T, B, C, H, W]` the stages see, `L` an event stem's
/// `conv1` + `bn1` and pool: RevSResNet24's `self.maxpool` is an AvgPool2d(3, 2, 1)
/// ([`ConvBnAvgPool`]), MS-ResNet20's a real MaxPool2d(3, 2, 1) (docs/architectures.md §4.3;
/// docs/choices.md §A6).
///
/// Static images `[B, C, H, W]` (docs/architectures.md §4.1, 4.2; docs/choices.md §A25):
/// `conv1` 3x3 stride 1 + `bn1` once on the 4-D batch (statistics over `B H W`), then the same
/// analog input at every one of `time_steps` steps. Event frames `[B, T, C, H, W]`
/// (docs/architectures.md §4.3): permuted to `[T, B, ...]`, then `SeqToANN(conv1 3x3 stride 2)`,
/// `SeqToANN(bn1)` and the pool on `[T B, ...]`; `T` is the input's, as in the official code.
pub type Stem<L> =
    PerInput<(InputShape, ConvBn, RepeatOverTime), (InputShape, SwapBatchTime, SeqToAnn<L>)>;

/// The [`Stem`] of `spec`, an event stem's `conv1` + `bn1` followed by its pool by `pooled`.
fn stem<B: Backend, L>(
    builder: &mut Builder<B>,
    spec: &ModelSpec,
    width: usize,
    pooled: impl FnOnce(ConvBn) -> L,
) -> Result<Stem<L>> {
    Ok(if spec.arch.is_dvs() {
        let check = InputShape {
            layout: "event frames [B, T, C, H, W]",
            sizes: vec![None; 4],
        };
        let conv = ResNetConv::new(spec.in_channels, width, 3, 2);
        let conv = conv.conv_bn(builder, "conv1.0", "bn1.0")?;
        PerInput::Events((
            check,
            SwapBatchTime,
            SeqToAnn {
                layer: pooled(conv),
            },
        ))
    } else {
        let check = InputShape {
            layout: "images [B, C, H, W]",
            sizes: vec![None; 3],
        };
        let conv = ResNetConv::new(spec.in_channels, width, 3, 1);
        let conv = conv.conv_bn(builder, "conv1", "bn1")?;
        let repeat = RepeatOverTime {
            time_steps: spec.time_steps,
        };
        PerInput::Static((check, conv, repeat))
    })
}

/// The classifier of every spiking ResNet (docs/architectures.md §4.1-4.3): `SN` on
/// `[T, B, C, H, W]`, `AdaptiveAvgPool2d(1)` (the mean over `H, W`), `fc` on `[T B, C]` and the
/// mean of the logits over `T`: `[B, K]`. `fc.weight [K, C]`, `fc.bias [K]`, both
/// U(+-1/sqrt(C)) (docs/architectures.md §4.6).
pub type Head = (Neuron, MeanOver, SeqToAnn<Linear>, MeanOver);

fn head<B: Backend>(
    builder: &mut Builder<B>,
    channels: usize,
    num_classes: usize,
    neuron: &Neuron,
) -> Result<Head> {
    let weight = builder.parameter("fc.weight", &[num_classes, channels], Init::UniformFanIn)?;
    let bias = builder.bias("fc.bias", num_classes, channels)?;
    Ok((
        neuron.clone(),
        MeanOver { axes: vec![3, 4] },
        SeqToAnn {
            layer: Linear { weight, bias },
        },
        MeanOver { axes: vec![0] },
    ))
}

/// The neuron of every layer of a ResNet family (docs/neurons.md §2.1): IF with ATan(2) for
/// static images, LIF tau 1.5 with Sigmoid(4) for events; both `detach_reset`, V_th 1.
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
pub type RevStage = (
    Option<DownSampleConv>,
    ReversibleSequence<BasicResidualBlock, BasicResidualBlock>,
);

/// RevSResNet (docs/architectures.md §4.1 static, 4.3 events): stage `i` is `c_i = 2 planes_i`
/// wide and runs `layers_i` reversible blocks `y1 = x1 + F(x2)`, `y2 = x2 + G(y1)` with F, G
/// [`BasicResidualBlock`]s of width `planes_i` on the channel halves (docs/reversible.md §3.1,
/// 3.4); stages are joined by [`DownSampleConv`]`(c_{i-1} -> c_i)`. Static: IF/ATan neurons,
/// stem 3x3 stride 1 once on the image then repeated over T. Events: LIF tau 1.5, stem 3x3
/// stride 2 and AvgPool(3, 2, 1) over `[T B, ...]`. Head: [`Head`] `(c_last -> num_classes)`.
pub type RevSResNet = Model<(Stem<ConvBnAvgPool>, Vec<RevStage>, Head)>;

impl RevSResNet {
    /// Builds the parameters of `spec` (arch `revsresnet` or `revsresnet-dvs`) in the official
    /// order: `conv1`, `bn1`, `layer1.reversible_blocks.{j}.{f,g}_block.conv{1,2}.{0,1}`,
    /// `ds1.1.1`, `ds1.1.2`, `layer2`, ..., `fc` (fixtures/checkpoint-keys). Any other spec is
    /// an [`Error::Spec`].
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
        // The neurons after a stage (the next downsample's, the head's) read the stage's output,
        // which its sequence holds until its reverse, after their backward: they keep it rather
        // than their potentials (docs/neurons.md §2.4.1).
        let after_stage = neuron.clone().keeping_input();
        let stem = stem(builder, spec, widths[0], |conv_bn| ConvBnAvgPool {
            conv_bn,
            pool: AvgPool {
                params: Pool2dParams::K3_S2_P1,
            },
        })?;
        let mut stages = Vec::with_capacity(layers.len());
        for (i, (&count, &half)) in layers.iter().zip(&planes).enumerate() {
            let downsample = (i > 0)
                .then(|| {
                    let prefix = format!("ds{i}");
                    downsample_conv(builder, &prefix, widths[i - 1], widths[i], &after_stage)
                })
                .transpose()?;
            let blocks = (0..count)
                .map(|j| {
                    let prefix = format!("layer{}.reversible_blocks.{j}", i + 1);
                    reversible_block(builder, &prefix, half, &neuron)
                })
                .collect::<Result<Vec<_>>>()?;
            let options = options.reversible;
            stages.push((downsample, ReversibleSequence { blocks, options }));
        }
        let head = head(
            builder,
            widths[widths.len() - 1],
            spec.num_classes,
            &after_stage,
        )?;
        Ok(Model {
            layers: (stem, stages, head),
        })
    }
}

/// MS-ResNet (docs/architectures.md §4.2 static, 4.3 events), the non-reversible counterpart: a
/// stem of width `planes_0`, then stage `i` of `layers_i` [`BasicBlock`]s of width `planes_i`,
/// the first with stride 2 and a downsample shortcut for `i > 0`; plain backpropagation keeps
/// every block's context. Static: IF/ATan, stem once on the image and repeated over T (the
/// constructed but unused `maxpool` of the CIFAR code has no parameters and is left out).
/// Events: LIF tau 1.5, stem 3x3 stride 2 and MaxPool(3, 2, 1). Head: [`Head`]
/// `(planes_last -> num_classes)`.
pub type MsResNet = Model<(Stem<(ConvBn, MaxPool)>, Vec<Vec<BasicBlock>>, Head)>;

impl MsResNet {
    /// Builds the parameters of `spec` (arch `msresnet` or `msresnet-dvs`) in the official
    /// order: `conv1`, `bn1`, `layer{i}.{j}.conv{1,2}.{0,1}`, `layer{i}.0.downsample.1.{0,1}`,
    /// ..., `fc` (fixtures/checkpoint-keys). Any other spec is an [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let (layers, planes) = sizes_for(spec, &[Arch::Msresnet, Arch::MsresnetDvs], "MS-ResNet")?;
        let neuron = family_neuron(spec.arch, options);
        let pool = MaxPool {
            params: Pool2dParams::K3_S2_P1,
        };
        let stem = stem(builder, spec, planes[0], |conv_bn| (conv_bn, pool))?;
        let mut in_planes = planes[0];
        let mut stages = Vec::with_capacity(layers.len());
        for (i, (&count, &width)) in layers.iter().zip(&planes).enumerate() {
            let mut blocks = Vec::with_capacity(count);
            for j in 0..count {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                let prefix = format!("layer{}.{j}", i + 1);
                blocks.push(basic_block(
                    builder, &prefix, in_planes, width, stride, &neuron,
                )?);
                in_planes = width;
            }
            stages.push(blocks);
        }
        let head = head(builder, in_planes, spec.num_classes, &neuron)?;
        Ok(Model {
            layers: (stem, stages, head),
        })
    }
}
