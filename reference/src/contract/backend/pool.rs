//! [`PoolOps`]: average and max pooling over images. The CPU kernels are
//! `reference/src/ops/pool.rs`, their CUDA twins `gpu/src/ops/pool.rs`.

use std::fmt::Debug;

use super::tensor::TensorOps;
use crate::contract::error::Result;
use crate::contract::params::Pool2dParams;

/// 2-D pooling over `x [N, C, H, W]`.
pub trait PoolOps: TensorOps {
    /// What [`PoolOps::max_pool2d_backward`] needs: the position of each window's maximum.
    type MaxPoolContext: Debug + Send + Sync;

    /// Average pooling over `x [N, C, H, W]` with `count_include_pad=True`: every window divides
    /// by `kernel^2`, padded zeros included (docs/conventions.md §1; docs/choices.md §A7).
    fn avg_pool2d_forward(&self, x: &Self::Tensor, params: Pool2dParams) -> Result<Self::Tensor>;

    /// The backward of [`PoolOps::avg_pool2d_forward`].
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

    /// The backward of [`PoolOps::max_pool2d_forward`]: each output's gradient goes to its maximum.
    fn max_pool2d_backward(
        &self,
        grad_y: &Self::Tensor,
        context: &Self::MaxPoolContext,
    ) -> Result<Self::Tensor>;
}
