//! Parameters of the ops, with their validation. Each `validate` returns an
//! [`OpError::InvalidParameter`] naming the op, the parameter and the valid range.

use super::error::{OpError, Result};

/// How a neuron charges its membrane (docs/neurons.md §2.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NeuronKind {
    /// Integrate-and-fire: `h[t] = v[t-1] + x[t]`.
    If,
    /// Leaky integrate-and-fire with time constant `tau > 1`. With `decay_input`,
    /// `h[t] = v[t-1] + (x[t] - v[t-1]) / tau`; without, `h[t] = v[t-1] - v[t-1] / tau + x[t]`
    /// (hard reset to 0, so `V_reset` drops out of both).
    Lif { tau: f64, decay_input: bool },
}

/// The surrogate derivative `psi(z) = dS/dh` used in place of the Dirac delta, with
/// `z = h - V_th` (docs/neurons.md §2.3).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Surrogate {
    /// `psi(z) = alpha / (2 (1 + (pi/2 alpha z)^2))`, primitive `g(z) = atan(pi/2 alpha z)/pi + 1/2`.
    /// SpikingJelly's default `alpha` is 2.
    ATan { alpha: f64 },
    /// `psi(z) = alpha sigma(alpha z) (1 - sigma(alpha z))`, primitive `g(z) = sigma(alpha z)`.
    /// SpikingJelly's default `alpha` is 4.
    Sigmoid { alpha: f64 },
}

impl Surrogate {
    /// SpikingJelly's `surrogate.ATan()`: alpha = 2.
    pub const ATAN: Surrogate = Surrogate::ATan { alpha: 2.0 };
    /// SpikingJelly's `surrogate.Sigmoid()`: alpha = 4.
    pub const SIGMOID: Surrogate = Surrogate::Sigmoid { alpha: 4.0 };

    /// `psi(z)`, the surrogate derivative of the spike with respect to `h` at `z = h - V_th`.
    pub fn derivative(self, z: f64) -> f64 {
        match self {
            Surrogate::ATan { alpha } => {
                let u = std::f64::consts::FRAC_PI_2 * alpha * z;
                alpha / (2.0 * (1.0 + u * u))
            }
            Surrogate::Sigmoid { alpha } => {
                let s = 1.0 / (1.0 + (-alpha * z).exp());
                alpha * s * (1.0 - s)
            }
        }
    }

    /// `g(z)`, the primitive of `psi` with `g(-inf) = 0`, `g(+inf) = 1`: the smooth spike of
    /// [`Firing::Smooth`].
    pub fn primitive(self, z: f64) -> f64 {
        match self {
            Surrogate::ATan { alpha } => {
                (std::f64::consts::FRAC_PI_2 * alpha * z).atan() / std::f64::consts::PI + 0.5
            }
            Surrogate::Sigmoid { alpha } => 1.0 / (1.0 + (-alpha * z).exp()),
        }
    }

    fn alpha(self) -> f64 {
        match self {
            Surrogate::ATan { alpha } | Surrogate::Sigmoid { alpha } => alpha,
        }
    }
}

/// How a neuron fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firing {
    /// `s[t] = Heaviside(h[t] - V_th)`, with `Heaviside(0) = 1` (docs/neurons.md §2.2): what the models run.
    Heaviside,
    /// `s[t] = g(h[t] - V_th)`, the surrogate's primitive: a differentiable neuron whose exact
    /// gradient is what the surrogate backward computes, so finite differences can check it.
    Smooth,
}

/// A multi-step spiking neuron layer with hard reset to 0 (docs/neurons.md §2.1-2.4).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NeuronConfig {
    pub kind: NeuronKind,
    /// Firing threshold `V_th > 0`.
    pub v_threshold: f64,
    pub surrogate: Surrogate,
    /// Treat the reset `v = (1 - s) h` as constant in `s` during backward (SpikingJelly's
    /// `detach_reset=True`, what every RevSNN model uses).
    pub detach_reset: bool,
    pub firing: Firing,
}

impl NeuronConfig {
    /// `MultiStepIFNode(detach_reset=True, surrogate_function=ATan())`: the CIFAR ResNets.
    pub fn if_atan() -> Self {
        NeuronConfig {
            kind: NeuronKind::If,
            v_threshold: 1.0,
            surrogate: Surrogate::ATAN,
            detach_reset: true,
            firing: Firing::Heaviside,
        }
    }

    /// `MultiStepLIFNode(tau, v_threshold, detach_reset=True)` with the default Sigmoid(4)
    /// surrogate: the DVS ResNets (tau 1.5) and every transformer LIF (tau 2 or 1.5; attention
    /// LIFs have V_th 0.5).
    pub fn lif_sigmoid(tau: f64, v_threshold: f64) -> Self {
        NeuronConfig {
            kind: NeuronKind::Lif {
                tau,
                decay_input: true,
            },
            v_threshold,
            surrogate: Surrogate::SIGMOID,
            detach_reset: true,
            firing: Firing::Heaviside,
        }
    }

    /// Checks `V_th > 0`, `tau > 1`, `alpha > 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "neuron";
        if !(self.v_threshold.is_finite() && self.v_threshold > 0.0) {
            return Err(OpError::parameter(
                OP,
                "v_threshold",
                self.v_threshold,
                "must be finite and > 0",
            ));
        }
        if let NeuronKind::Lif { tau, .. } = self.kind
            && !(tau.is_finite() && tau > 1.0)
        {
            return Err(OpError::parameter(
                OP,
                "tau",
                tau,
                "must be finite and > 1 (SpikingJelly asserts tau > 1)",
            ));
        }
        let alpha = self.surrogate.alpha();
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(OpError::parameter(
                OP,
                "surrogate alpha",
                alpha,
                "must be finite and > 0",
            ));
        }
        Ok(())
    }

    /// `(k, r)` of docs/neurons.md §2.4: `k = dh[t+1]/dv[t]` and `r = dh[t]/dx[t]`.
    pub fn charge_coefficients(&self) -> (f64, f64) {
        match self.kind {
            NeuronKind::If => (1.0, 1.0),
            NeuronKind::Lif {
                tau,
                decay_input: true,
            } => (1.0 - 1.0 / tau, 1.0 / tau),
            NeuronKind::Lif {
                tau,
                decay_input: false,
            } => (1.0 - 1.0 / tau, 1.0),
        }
    }
}

/// A 2-D convolution's geometry; the kernel size comes from the weight. Square stride and padding
/// as every RevSNN convolution uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dParams {
    pub fn new(stride: usize, padding: usize) -> Self {
        Conv2dParams { stride, padding }
    }

    /// Checks `stride >= 1`.
    pub fn validate(&self) -> Result<()> {
        if self.stride == 0 {
            return Err(OpError::parameter("conv2d", "stride", 0, "must be >= 1"));
        }
        Ok(())
    }

    /// `floor((size + 2 padding - kernel) / stride) + 1`, or an error when the kernel does not fit.
    pub fn output_size(&self, size: usize, kernel: usize) -> Result<usize> {
        output_size("conv2d", size, kernel, self.stride, self.padding)
    }
}

/// Which convolution an op runs: [`ConvOps::conv2d_forward`](crate::ConvOps::conv2d_forward)
/// with its geometry, or the 1-D 1x1 [`ConvOps::conv1d_forward`](crate::ConvOps::conv1d_forward)
/// of the attention (docs/architectures.md §4.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    Conv2d(Conv2dParams),
    Conv1d,
}

/// A 2-D pooling window (PyTorch `ceil_mode=False`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool2dParams {
    /// `AvgPool2d(3, 2, 1)` / `MaxPool2d(3, 2, 1)`, the only windows RevSNN uses.
    pub const K3_S2_P1: Pool2dParams = Pool2dParams {
        kernel: 3,
        stride: 2,
        padding: 1,
    };

    /// Checks `kernel >= 1`, `stride >= 1` and `padding <= kernel / 2` (PyTorch's rule).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if self.kernel == 0 {
            return Err(OpError::parameter(op, "kernel", 0, "must be >= 1"));
        }
        if self.stride == 0 {
            return Err(OpError::parameter(op, "stride", 0, "must be >= 1"));
        }
        if self.padding > self.kernel / 2 {
            return Err(OpError::parameter(
                op,
                "padding",
                self.padding,
                "must be <= kernel / 2",
            ));
        }
        Ok(())
    }

    /// `floor((size + 2 padding - kernel) / stride) + 1`, or an error when the window does not fit.
    pub fn output_size(&self, op: &'static str, size: usize) -> Result<usize> {
        output_size(op, size, self.kernel, self.stride, self.padding)
    }
}

fn output_size(
    op: &'static str,
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<usize> {
    let padded = size + 2 * padding;
    if padded < kernel {
        return Err(OpError::shape(
            op,
            format!("input size {size} with padding {padding} is smaller than the kernel {kernel}"),
        ));
    }
    Ok((padded - kernel) / stride + 1)
}

/// BatchNorm constants: PyTorch's defaults are `eps = 1e-5`, `momentum = 0.1` (docs/conventions.md §1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormParams {
    pub eps: f64,
    pub momentum: f64,
}

impl Default for BatchNormParams {
    fn default() -> Self {
        BatchNormParams {
            eps: 1e-5,
            momentum: 0.1,
        }
    }
}

impl BatchNormParams {
    /// Checks `eps > 0` and `0 <= momentum <= 1`.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(OpError::parameter(
                "batch_norm",
                "eps",
                self.eps,
                "must be finite and > 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.momentum) {
            return Err(OpError::parameter(
                "batch_norm",
                "momentum",
                self.momentum,
                "must be in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// SGD with momentum, as `torch.optim.SGD` (dampening 0, no Nesterov):
/// `d = g + weight_decay p`; `buf = momentum buf + d` (`buf = d` at the first step);
/// `p = p - lr buf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdParams {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl SgdParams {
    /// Checks `lr >= 0`, `0 <= momentum < 1`, `weight_decay >= 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "sgd";
        non_negative(OP, "lr", self.lr)?;
        unit_interval(OP, "momentum", self.momentum)?;
        non_negative(OP, "weight_decay", self.weight_decay)
    }
}

/// AdamW, as `torch.optim.AdamW` (what timm's `adamw` builds): at step `t >= 1`,
/// `p = p (1 - lr weight_decay)`; `m = b1 m + (1 - b1) g`; `v = b2 v + (1 - b2) g^2`;
/// `p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWParams {
    /// PyTorch's defaults with the given learning rate and weight decay.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        AdamWParams {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Checks a step number: AdamW counts its steps from 1 (the bias corrections divide by
    /// `1 - beta^step`).
    pub fn check_step(step: u64) -> Result<()> {
        if step == 0 {
            return Err(OpError::parameter("adamw", "step", 0, "counts from 1"));
        }
        Ok(())
    }

    /// Checks `lr >= 0`, betas in `[0, 1)`, `eps > 0`, `weight_decay >= 0`, all finite.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "adamw";
        non_negative(OP, "lr", self.lr)?;
        unit_interval(OP, "beta1", self.beta1)?;
        unit_interval(OP, "beta2", self.beta2)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(OpError::parameter(
                OP,
                "eps",
                self.eps,
                "must be finite and > 0",
            ));
        }
        non_negative(OP, "weight_decay", self.weight_decay)
    }
}

/// An error of `op` unless `value` (its parameter `name`) is finite and `>= 0`.
fn non_negative(op: &'static str, name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        return Ok(());
    }
    Err(OpError::parameter(
        op,
        name,
        value,
        "must be finite and >= 0",
    ))
}

/// An error of `op` unless `value` (its parameter `name`) is in `[0, 1)`.
fn unit_interval(op: &'static str, name: &'static str, value: f64) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        return Ok(());
    }
    Err(OpError::parameter(op, name, value, "must be in [0, 1)"))
}
