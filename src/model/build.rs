//! Building a model's parameters under their official names, with the official initialisation
//! (docs/architectures.md §4.6).

use revsnn_reference::Backend;
use revsnn_reference::testing::SplitMix64;

use super::layers::{BatchNorm, BatchNormIds, Conv, ConvBn, ConvKind};
use super::params::{EntryKind, ParamId, ParamStore};
use crate::error::Result;

/// How a weight is initialised (docs/architectures.md §4.6).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `kaiming_normal_(mode='fan_out', nonlinearity='relu')`: N(0, 2 / (C_out k_h k_w)); the
    /// ResNets' convolutions.
    KaimingNormalFanOut,
    /// PyTorch's default for Conv and Linear weights (`kaiming_uniform_(a = sqrt 5)`) and biases:
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    UniformFanIn,
    /// `trunc_normal_(std)`, truncated at +-2 (absolute, so effectively untruncated for small std).
    TruncatedNormal { std: f64 },
    /// A constant (BatchNorm: gamma 1, beta 0, running mean 0, running var 1).
    Constant(f64),
}

/// How a convolution's parameters start (docs/architectures.md §4.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvInit {
    /// The ResNets': weight `kaiming_normal_(fan_out)`, no bias.
    KaimingNormalFanOut,
    /// PyTorch's default: the weight and, when there is one, the bias U(+-1/sqrt(fan_in)).
    PyTorchDefault { bias: bool },
}

/// Creates the parameters of a model in `state_dict` order.
pub struct Builder<'a, B: Backend> {
    pub backend: &'a B,
    pub store: ParamStore<B>,
    rng: SplitMix64,
}

impl<'a, B: Backend> Builder<'a, B> {
    /// A builder whose random initialisation is determined by `seed`.
    pub fn new(backend: &'a B, seed: u64) -> Self {
        Builder {
            backend,
            store: ParamStore::default(),
            rng: SplitMix64::new(seed),
        }
    }

    /// A parameter of `shape` named `name`; `fan_in` and `fan_out` for the scaled inits.
    pub fn parameter(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        init: Init,
    ) -> Result<ParamId> {
        let len: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product();
        let receptive: usize = shape.iter().skip(2).product();
        let values: Vec<f64> = match init {
            Init::KaimingNormalFanOut => {
                let std = (2.0 / (shape[0] * receptive.max(1)) as f64).sqrt();
                self.rng.normal_vec(len, std)
            }
            Init::UniformFanIn => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                (0..len).map(|_| self.rng.uniform(-bound, bound)).collect()
            }
            Init::TruncatedNormal { std } => (0..len)
                .map(|_| (std * self.rng.normal()).clamp(-2.0, 2.0))
                .collect(),
            Init::Constant(c) => vec![c; len],
        };
        self.push(name.into(), EntryKind::Parameter, shape, values)
    }

    /// A bias `[channels]` with PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pub fn bias(
        &mut self,
        name: impl Into<String>,
        channels: usize,
        fan_in: usize,
    ) -> Result<ParamId> {
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let values = (0..channels)
            .map(|_| self.rng.uniform(-bound, bound))
            .collect();
        self.push(name.into(), EntryKind::Parameter, &[channels], values)
    }

    /// A convolution `{conv}.weight` of `weight_shape` (`[out, in, kernel...]`), with a bias
    /// `{conv}.bias` when `init` has one, followed by a BatchNorm under `bn`, in that
    /// `state_dict` order.
    pub fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        weight_shape: &[usize],
        init: ConvInit,
        kind: ConvKind,
    ) -> Result<ConvBn> {
        let name = format!("{conv}.weight");
        let (weight, bias) = match init {
            ConvInit::KaimingNormalFanOut => (
                self.parameter(name, weight_shape, Init::KaimingNormalFanOut)?,
                None,
            ),
            ConvInit::PyTorchDefault { bias } => {
                let weight = self.parameter(name, weight_shape, Init::UniformFanIn)?;
                let fan_in = weight_shape[1..].iter().product();
                let bias = bias
                    .then(|| self.bias(format!("{conv}.bias"), weight_shape[0], fan_in))
                    .transpose()?;
                (weight, bias)
            }
        };
        let norm = BatchNorm {
            ids: self.batch_norm(bn, weight_shape[0])?,
        };
        Ok(ConvBn {
            conv: Conv { weight, bias, kind },
            norm,
        })
    }

    /// A BatchNorm over `channels` under `prefix`: `weight`, `bias`, `running_mean`,
    /// `running_var`, `num_batches_tracked`.
    pub fn batch_norm(&mut self, prefix: &str, channels: usize) -> Result<BatchNormIds> {
        Ok(BatchNormIds {
            gamma: self.push(
                format!("{prefix}.weight"),
                EntryKind::Parameter,
                &[channels],
                vec![1.0; channels],
            )?,
            beta: self.push(
                format!("{prefix}.bias"),
                EntryKind::Parameter,
                &[channels],
                vec![0.0; channels],
            )?,
            running_mean: self.push(
                format!("{prefix}.running_mean"),
                EntryKind::RunningStat,
                &[channels],
                vec![0.0; channels],
            )?,
            running_var: self.push(
                format!("{prefix}.running_var"),
                EntryKind::RunningStat,
                &[channels],
                vec![1.0; channels],
            )?,
            batches_tracked: self
                .store
                .push_counter(format!("{prefix}.num_batches_tracked"), 0)?,
        })
    }

    fn push(
        &mut self,
        name: String,
        kind: EntryKind,
        shape: &[usize],
        values: Vec<f64>,
    ) -> Result<ParamId> {
        let data = values
            .into_iter()
            .map(<B::Elem as revsnn_reference::Element>::cast)
            .collect();
        let tensor = self.backend.tensor_from_vec(shape, data)?;
        self.store.push(name, kind, tensor, self.backend)
    }
}
