//! The spiking transformers (docs/architectures.md §4.4, 4.5): RevSFormer, the reversible one,
//! and Spikingformer, its non-reversible counterpart. Both share the spiking tokenizer, the
//! spiking self-attention (SSA, [`super::attention`]) and the MLP of docs/architectures.md §4.0,
//! and read out the mean over tokens and time through a linear head; every part but SSA and the
//! tokenizer ([`super::tokenizer`]) is a composition of layers (`super::compose`):
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

use revsnn_reference::{Backend, Conv2dParams, NeuronConfig, Pool2dParams};

use super::BuildOptions;
use super::attention::SpikingSelfAttention;
use super::build::{Builder, ConvInit, Init};
use super::compose::{Model, PerInput, Residual, SeqToAnn};
use super::layers::{
    ConvKind, DuplicateChannels, InputShape, Linear, MaxPool, MeanOver, Neuron, RepeatOverTime,
    SpikingConvBn, SpikingConvPair, SwapBatchTime,
};
use super::reversible::{ReversibleBlock, ReversibleSequence};
use super::tokenizer::{Tokenizer, TokenizerStage};
use crate::error::{Error, Result};
use crate::spec::{Arch, ModelSpec, TransformerSizes};

/// The LIF neurons of one model family: `tau = 2` on CIFAR, `tau = 1.5` on DVS, `V_th = 1`,
/// except the attention LIF with `V_th = 0.5` (docs/architectures.md §4.0, 4.4, 4.5).
#[derive(Clone, Copy, Debug)]
pub(super) struct Neurons {
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

    pub(super) fn lif(&self) -> Neuron {
        self.options
            .neuron(NeuronConfig::lif_sigmoid(self.tau, 1.0))
    }

    pub(super) fn attention_lif(&self) -> Neuron {
        self.options
            .neuron(NeuronConfig::lif_sigmoid(self.tau, 0.5))
    }
}

/// The transformer MLP(C, hidden) over `[T, B, C, H, W]` (docs/architectures.md §4.0):
///
/// ```text
/// x = BN2d(Conv2d 1x1 (C -> hidden, bias)(LIF(x)))     mlp1_conv, mlp1_bn
/// x = BN2d(Conv2d 1x1 (hidden -> C, bias)(LIF(x)))     mlp2_conv, mlp2_bn
/// ```
pub type Mlp = SpikingConvPair;

/// The parameters under `prefix` in the official order: `mlp1_conv`, `mlp1_bn`, `mlp2_conv`,
/// `mlp2_bn`.
fn mlp<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    [dim, hidden]: [usize; 2],
    neurons: &Neurons,
) -> Result<Mlp> {
    let mut layer = |name: &str, weight_shape: [usize; 4]| -> Result<SpikingConvBn> {
        let conv_bn = builder.conv_bn(
            &format!("{prefix}.{name}_conv"),
            &format!("{prefix}.{name}_bn"),
            &weight_shape,
            ConvInit::PyTorchDefault { bias: true },
            ConvKind::Conv2d(Conv2dParams::new(1, 0)),
        )?;
        Ok(SpikingConvBn::new(neurons.lif(), conv_bn))
    };
    let first = layer("mlp1", [hidden, dim, 1, 1])?;
    let second = layer("mlp2", [dim, hidden, 1, 1])?;
    Ok(SpikingConvPair { first, second })
}

/// The input check, then the encoding to `[T, B, C, H, W]`: images `[B, C, H, W]` repeated over
/// T (CIFAR), events `[B, T, C, H, W]` permuted (DVS); the sizes after `B` must be the spec's.
pub type Encoding = (InputShape, PerInput<RepeatOverTime, SwapBatchTime>);

fn encoding(spec: &ModelSpec) -> Encoding {
    let image = [spec.in_channels, spec.img_size, spec.img_size].map(Some);
    if spec.arch.is_dvs() {
        let sizes = [&[Some(spec.time_steps)][..], &image].concat();
        let layout = "event frames [B, T, C, H, W]";
        (
            InputShape { layout, sizes },
            PerInput::Events(SwapBatchTime),
        )
    } else {
        let sizes = image.to_vec();
        let layout = "images [B, C, H, W]";
        let repeat = RepeatOverTime {
            time_steps: spec.time_steps,
        };
        (InputShape { layout, sizes }, PerInput::Static(repeat))
    }
}

/// The spiking tokenizer over `[T, B, C, H, W]` (docs/architectures.md §4.4, 4.5): five 3x3
/// convolutions (no bias) with BN, widths `D/8, D/4, D/2, D, D`; every stage after the first
/// starts with a LIF; the last two stages (CIFAR, `block{i}_*`) or the last four (DVS,
/// `proj{i}_*`) max-pool by 2 before their convolution. Output `[T, B, D, H/p, W/p]`. Stage
/// `i`: `[LIF ->] [MaxPool(3, 2, 1) ->] Conv3x3 -> BN`.
fn tokenizer<B: Backend>(
    builder: &mut Builder<B>,
    spec: &ModelSpec,
    dim: usize,
    neurons: &Neurons,
) -> Result<Tokenizer> {
    let dvs = spec.arch.is_dvs();
    let widths = [spec.in_channels, dim / 8, dim / 4, dim / 2, dim, dim];
    let mut stages = Vec::with_capacity(5);
    for i in 0..5 {
        let (conv, bn) = match (dvs, i) {
            (true, 0) => ("proj_conv".to_string(), "proj_bn".to_string()),
            (true, _) => (format!("proj{i}_conv"), format!("proj{i}_bn")),
            (false, _) => (format!("block{i}_conv"), format!("block{i}_bn")),
        };
        let conv_bn = builder.conv_bn(
            &format!("patch_embed.{conv}"),
            &format!("patch_embed.{bn}"),
            &[widths[i + 1], widths[i], 3, 3],
            ConvInit::PyTorchDefault { bias: false },
            ConvKind::Conv2d(Conv2dParams::new(1, 1)),
        )?;
        let pools = if dvs { i >= 1 } else { i >= 3 };
        let pool = pools.then_some(MaxPool {
            params: Pool2dParams::K3_S2_P1,
        });
        stages.push(TokenizerStage {
            neuron: (i > 0).then(|| neurons.lif()),
            body: SeqToAnn {
                layer: (pool, conv_bn),
            },
        });
    }
    Ok(Tokenizer { stages })
}

/// `logits = head(mean_{t, n} x[t, :, :, n])` over `[T, B, C, H, W]`: the mean over time and
/// both token axes, then the head `Linear(C -> K)`.
pub type ReadOut = (MeanOver, Linear);

/// The read-out with the head `Linear(features -> K)`: weight `trunc_normal(std 0.02)`, bias 0
/// (docs/architectures.md §4.6).
fn read_out<B: Backend>(
    builder: &mut Builder<B>,
    features: usize,
    classes: usize,
) -> Result<ReadOut> {
    let head = Linear {
        weight: builder.parameter(
            "head.weight",
            &[classes, features],
            Init::TruncatedNormal { std: 0.02 },
        )?,
        bias: builder.parameter("head.bias", &[classes], Init::Constant(0.0))?,
    };
    Ok((
        MeanOver {
            axes: vec![0, 3, 4],
        },
        head,
    ))
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
pub type RevSFormer = Model<(
    Encoding,
    Tokenizer,
    DuplicateChannels,
    ReversibleSequence<SpikingSelfAttention, Mlp>,
    ReadOut,
)>;

impl RevSFormer {
    /// Creates every parameter through `builder` in the official `state_dict` order. A spec of
    /// another arch, or one that fails [`ModelSpec::validate`], is an [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let sizes = sizes(spec, [Arch::Revsformer, Arch::RevsformerDvs], "RevSFormer")?;
        let (dim, hidden) = (sizes.dim, sizes.dim * sizes.mlp_ratio);
        let neurons = Neurons::new(spec.arch, options);
        let tokenizer = tokenizer(builder, spec, dim, &neurons)?;
        let mut blocks = Vec::with_capacity(sizes.depth);
        for i in 0..sizes.depth {
            let prefix = format!("block.reversible_blocks.{i}");
            let f_block = format!("{prefix}.f_block");
            let f = SpikingSelfAttention::build(builder, &f_block, dim, sizes.heads, &neurons)?;
            let g = mlp(
                builder,
                &format!("{prefix}.g_block"),
                [dim, hidden],
                &neurons,
            )?;
            blocks.push(ReversibleBlock::keeping_inputs(f, g));
        }
        let options = options.reversible;
        let body = ReversibleSequence { blocks, options };
        let read_out = read_out(builder, 2 * dim, spec.num_classes)?;
        Ok(Model {
            layers: (encoding(spec), tokenizer, DuplicateChannels, body, read_out),
        })
    }
}

// -------------------------------------------------------------------------------- Spikingformer

/// One Spikingformer block (docs/architectures.md §4.4): `x = x + SSA(x); x = x + MLP(x)`. Its
/// LayerNorms `norm1`, `norm2` are parameters of the official model that its forward never
/// uses; the builder creates them (weight 1, bias 0) so that parameter counts and checkpoints
/// match.
pub type SpikingTransformerBlock = (Residual<SpikingSelfAttention>, Residual<Mlp>);

/// An unused LayerNorm's `weight` (1) and `bias` (0) under `prefix` (docs/architectures.md
/// §4.4, 4.6).
fn unused_layer_norm<B: Backend>(builder: &mut Builder<B>, prefix: &str, dim: usize) -> Result<()> {
    builder.parameter(format!("{prefix}.weight"), &[dim], Init::Constant(1.0))?;
    builder.parameter(format!("{prefix}.bias"), &[dim], Init::Constant(0.0))?;
    Ok(())
}

fn transformer_block<B: Backend>(
    builder: &mut Builder<B>,
    prefix: &str,
    sizes: &TransformerSizes,
    neurons: &Neurons,
) -> Result<SpikingTransformerBlock> {
    let (dim, hidden) = (sizes.dim, sizes.dim * sizes.mlp_ratio);
    unused_layer_norm(builder, &format!("{prefix}.norm1"), dim)?;
    let attn_prefix = format!("{prefix}.attn");
    let attn = SpikingSelfAttention::build(builder, &attn_prefix, dim, sizes.heads, neurons)?;
    unused_layer_norm(builder, &format!("{prefix}.norm2"), dim)?;
    let mlp = mlp(builder, &format!("{prefix}.mlp"), [dim, hidden], neurons)?;
    Ok((Residual::around(attn), Residual::around(mlp)))
}

/// Spikingformer (docs/architectures.md §4.4, 4.5; arch `spikingformer`, `spikingformer-dvs`),
/// the non-reversible counterpart of [`RevSFormer`], trained by plain backpropagation:
///
/// ```text
/// x      = tokenizer(encode(input))                     [T, B, D, H/p, W/p]
/// x      = x + SSA(x);  x = x + MLP(x)                  per block
/// logits = head(mean over T and tokens of x)            head Linear(D -> K)
/// ```
///
/// Parameters: `patch_embed.*`, `block.{i}.norm1.*`, `block.{i}.attn.*`, `block.{i}.norm2.*`,
/// `block.{i}.mlp.*`, `head.*`.
pub type Spikingformer = Model<(Encoding, Tokenizer, Vec<SpikingTransformerBlock>, ReadOut)>;

impl Spikingformer {
    /// Creates every parameter through `builder` in the official `state_dict` order, the unused
    /// LayerNorms included. A spec of another arch, or one that fails [`ModelSpec::validate`],
    /// is an [`Error::Spec`].
    pub fn build<B: Backend>(
        builder: &mut Builder<B>,
        spec: &ModelSpec,
        options: &BuildOptions,
    ) -> Result<Self> {
        let archs = [Arch::Spikingformer, Arch::SpikingformerDvs];
        let sizes = sizes(spec, archs, "Spikingformer")?;
        let neurons = Neurons::new(spec.arch, options);
        let tokenizer = tokenizer(builder, spec, sizes.dim, &neurons)?;
        let blocks = (0..sizes.depth)
            .map(|i| transformer_block(builder, &format!("block.{i}"), &sizes, &neurons))
            .collect::<Result<Vec<_>>>()?;
        let read_out = read_out(builder, sizes.dim, spec.num_classes)?;
        Ok(Model {
            layers: (encoding(spec), tokenizer, blocks, read_out),
        })
    }
}
