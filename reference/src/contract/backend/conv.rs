//! [`ConvOps`]: 2-D convolutions, and the kernel-size-1 1-D convolution of the attention run as
//! a 1x1 2-D one. The CPU kernels are `reference/src/ops/conv/`, their CUDA twins
//! `gpu/src/ops/conv/`.

use std::fmt::Debug;

use super::tensor::TensorOps;
use crate::contract::error::Result;
use crate::contract::params::{Conv2dParams, ConvKind};
use crate::contract::shapes::Conv1dAs2d;

/// Convolutions with zero padding, forward returning the context its backward needs.
pub trait ConvOps: TensorOps {
    /// What [`ConvOps::conv2d_backward`] needs.
    type Conv2dContext: Debug + Send + Sync;

    /// `y[n, o] = bias[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, c, stride y + i, stride x + j]`:
    /// `x [N, C_in, H, W]`, `w [C_out, C_in, k_h, k_w]`, bias `[C_out]`, zero padding.
    fn conv2d_forward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        params: Conv2dParams,
    ) -> Result<(Self::Tensor, Self::Conv2dContext)>;

    /// Gradients of [`ConvOps::conv2d_forward`] with respect to input, weight and bias. It takes
    /// `grad_y` by value, so that a backend may free it once read: CUDA under a 16-bit precision
    /// keeps only its rounded 16-bit copy (docs/precision.md §"Convolution outputs").
    fn conv2d_backward(
        &self,
        grad_y: Self::Tensor,
        context: &Self::Conv2dContext,
    ) -> Result<Conv2dGrads<Self::Tensor>>;

    /// A 1-D convolution with kernel size 1, `x [N, C_in, L]`, `w [C_out, C_in, 1]`: the conv of
    /// the attention (docs/architectures.md §4.0), computed as a 1x1 [`ConvOps::conv2d_forward`] on
    /// `[N, C, L, 1]`.
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

    /// Gradients of [`ConvOps::conv1d_forward`], shaped like its operands.
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

    /// The convolution `kind` names: [`ConvOps::conv2d_forward`] or [`ConvOps::conv1d_forward`].
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

    /// Gradients of [`ConvOps::conv_forward`] of the same `kind`.
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
}

/// Gradients of a convolution.
#[derive(Clone, Debug)]
pub struct Conv2dGrads<T> {
    pub input: T,
    pub weight: T,
    /// Present iff the forward had a bias.
    pub bias: Option<T>,
}
