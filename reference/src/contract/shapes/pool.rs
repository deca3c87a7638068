//! The shape rules of average and max pooling (docs/conventions.md §1), PyTorch's
//! `ceil_mode=False`.

use crate::contract::error::{OpError, Result};
use crate::contract::params::Pool2dParams;

/// The sizes of one pooling (PyTorch's `ceil_mode=False`): `planes = N C` planes of `h x w`
/// pooled to `out_h x out_w` by the window of `params`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeometry {
    pub planes: usize,
    pub h: usize,
    pub w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub params: Pool2dParams,
}

impl Pool2dGeometry {
    /// Validates `params` and an input shape `[N, C, H, W]` with `H, W >= 1`.
    pub fn new(op: &'static str, input_shape: &[usize], params: Pool2dParams) -> Result<Self> {
        params.validate(op)?;
        let &[n, c, h, w] = input_shape else {
            return Err(OpError::shape(
                op,
                format!("expected x [N, C, H, W], got {input_shape:?}"),
            ));
        };
        if h == 0 || w == 0 {
            return Err(OpError::shape(
                op,
                format!("expected a non-empty H x W plane, got {input_shape:?}"),
            ));
        }
        Ok(Pool2dGeometry {
            planes: n * c,
            h,
            w,
            out_h: params.output_size(op, h)?,
            out_w: params.output_size(op, w)?,
            params,
        })
    }

    /// `[N, C, out_h, out_w]` for an input of shape `[N, C, h, w]`.
    pub fn output_shape(&self, input_shape: &[usize]) -> Vec<usize> {
        vec![input_shape[0], input_shape[1], self.out_h, self.out_w]
    }

    /// Errors unless `grad_y` has the shape of the output of an input of `input_shape`.
    pub fn check_grad(
        &self,
        op: &'static str,
        grad_y: &[usize],
        input_shape: &[usize],
    ) -> Result<()> {
        check_pool_grad(op, grad_y, &self.output_shape(input_shape))
    }

    /// Errors when an `H x W` plane has 2^32 elements or more, or a window more than 256: max
    /// pooling keeps each window's argmax as a `u32` position inside its plane (CPU) or as one
    /// byte, its offset inside the `k x k` window (CUDA), and both backends refuse the same shapes.
    pub fn check_argmax_fits(&self, op: &'static str, input_shape: &[usize]) -> Result<()> {
        let kernel = self.params.kernel;
        if kernel * kernel > 256 {
            return Err(OpError::shape(
                op,
                format!(
                    "a {kernel}x{kernel} window has more than 256 positions, and max pooling keeps \
                     each window's argmax in one byte; use a kernel of at most 16"
                ),
            ));
        }
        if u32::try_from(self.h * self.w).is_err() {
            return Err(OpError::shape(
                op,
                format!(
                    "an H x W plane of {input_shape:?} has 2^32 or more elements; split the input"
                ),
            ));
        }
        Ok(())
    }
}

/// Errors unless a pooling backward's `grad_y` has the forward's `output_shape`.
pub fn check_pool_grad(op: &'static str, grad_y: &[usize], output_shape: &[usize]) -> Result<()> {
    if grad_y != output_shape {
        return Err(OpError::shape(
            op,
            format!("expected grad_y of the output's shape {output_shape:?}, got {grad_y:?}"),
        ));
    }
    Ok(())
}
