//! [`LinearOps`]: the dense products, linear layers and batched matmuls. The CPU kernels are
//! `reference/src/ops/linear.rs`, their CUDA twins `gpu/src/ops/linear.rs`.

use super::tensor::TensorOps;
use crate::contract::error::Result;

/// Linear layers and batched products, computed from operands in the backend's
/// [`TensorOps::precision`] and accumulated in its element type (docs/precision.md).
pub trait LinearOps: TensorOps {
    /// `y = x w^T + b`: `x [N, in]`, `w [out, in]`, `b [out]`.
    fn linear_forward(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// Gradients of [`LinearOps::linear_forward`]: `dx = dy w`, `dw = dy^T x`, `db = sum_n dy`.
    fn linear_backward(
        &self,
        grad_y: &Self::Tensor,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        has_bias: bool,
    ) -> Result<LinearGrads<Self::Tensor>>;

    /// `c[b] = op(a[b]) op(b[b])` over any leading batch axes, `op` a transpose of the last two
    /// axes when asked: the attention products `q k^T` and `attn v` (docs/architectures.md §4.0).
    /// Its backward is two more calls: `da = dc op(b)^T`, `db = op(a)^T dc` (up to the transposes).
    fn batched_matmul(
        &self,
        a: &Self::Tensor,
        b: &Self::Tensor,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Self::Tensor>;
}

/// Gradients of a linear layer.
#[derive(Clone, Debug)]
pub struct LinearGrads<T> {
    pub input: T,
    pub weight: T,
    /// Present iff the forward had a bias.
    pub bias: Option<T>,
}
