//! The shape rules of the 2-D convolution (docs/conventions.md §1; docs/architectures.md §4.0).

use crate::contract::error::{OpError, Result};
use crate::contract::params::Conv2dParams;

/// The sizes of one convolution, checked: `x [n, c_in, h, w]`, `weight [c_out, c_in, kh, kw]`,
/// output `[n, c_out, h_out, w_out]` with `h_out = floor((h + 2 padding - kh) / stride) + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl Conv2dGeometry {
    /// The geometry of a convolution of `x` by `weight` (shapes), or why they do not fit: an
    /// invalid `params`, a rank other than 4, a channel mismatch, an empty kernel or channel axis,
    /// or a kernel larger than the padded input.
    pub fn new(x: &[usize], weight: &[usize], params: Conv2dParams) -> Result<Self> {
        const OP: &str = "conv2d";
        params.validate()?;
        let (&[n, c_in, h, w], &[c_out, c_w, kh, kw]) = (x, weight) else {
            return Err(OpError::shape(
                OP,
                format!(
                    "expected x [N, C_in, H, W] and weight [C_out, C_in, k_h, k_w], got {x:?} and {weight:?}"
                ),
            ));
        };
        if c_w != c_in {
            return Err(OpError::shape(
                OP,
                format!("x has {c_in} channels but the weight {weight:?} expects {c_w}"),
            ));
        }
        if c_in == 0 || c_out == 0 || kh == 0 || kw == 0 {
            return Err(OpError::shape(
                OP,
                format!(
                    "channels and kernel sizes must be >= 1, got x {x:?} and weight {weight:?}"
                ),
            ));
        }
        Ok(Conv2dGeometry {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride: params.stride,
            padding: params.padding,
            h_out: params.output_size(h, kh)?,
            w_out: params.output_size(w, kw)?,
        })
    }

    /// `K = C_in k_h k_w`, the inner dimension of the products.
    pub fn k(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// `P = H_out W_out`, the output positions of one sample.
    pub fn p(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Elements of one input sample.
    pub fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    /// Elements of one output sample.
    pub fn out_len(&self) -> usize {
        self.c_out * self.p()
    }

    /// `[N, C_in, H, W]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [self.n, self.c_in, self.h, self.w]
    }

    /// `[C_out, C_in, k_h, k_w]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [self.c_out, self.c_in, self.kh, self.kw]
    }

    /// `[N, C_out, H_out, W_out]`.
    pub fn output_shape(&self) -> [usize; 4] {
        [self.n, self.c_out, self.h_out, self.w_out]
    }

    /// A 1x1, stride-1, unpadded convolution: its columns are the input itself.
    pub fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Errors unless `grad_y` has the output's shape.
    pub fn check_grad(&self, grad_y: &[usize]) -> Result<()> {
        let expected = self.output_shape();
        if grad_y != expected {
            return Err(OpError::shape(
                "conv2d",
                format!("grad_y must have the output shape {expected:?}, got {grad_y:?}"),
            ));
        }
        Ok(())
    }

    /// Errors unless `bias` (a shape) is `[C_out]`.
    pub fn check_bias(&self, bias: &[usize]) -> Result<()> {
        if bias != [self.c_out] {
            return Err(OpError::shape(
                "conv2d",
                format!("bias must be [{}], got {bias:?}", self.c_out),
            ));
        }
        Ok(())
    }
}

/// The 1x1 2-D convolution that a 1-D convolution with kernel size 1 runs as: `x [N, C_in, L]`
/// as `[N, C_in, L, 1]`, `weight [C_out, C_in, 1]` as `[C_out, C_in, 1, 1]`, the output
/// `[N, C_out, L]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv1dAs2d {
    pub x: [usize; 4],
    pub weight: [usize; 4],
    pub output: [usize; 3],
}

impl Conv1dAs2d {
    /// The 2-D shapes of a 1-D convolution of `x` by `weight` (shapes), or an error unless they
    /// are `[N, C, L]` and `[C_out, C_in, 1]` (the channels are checked by the 2-D convolution).
    pub fn new(x: &[usize], weight: &[usize]) -> Result<Self> {
        let (&[n, c_in, l], &[c_out, c_w, 1]) = (x, weight) else {
            return Err(OpError::shape(
                "conv1d",
                format!(
                    "expected x [N, C, L] and weight [C_out, C_in, 1], got {x:?} and {weight:?}"
                ),
            ));
        };
        Ok(Conv1dAs2d {
            x: [n, c_in, l, 1],
            weight: [c_out, c_w, 1, 1],
            output: [n, c_out, l],
        })
    }

    /// A 1-D convolution's output gradient `[N, C_out, L]` as the 2-D one's `[N, C_out, L, 1]`,
    /// or an error unless it is 3-D.
    pub fn grad_output(grad_y: &[usize]) -> Result<[usize; 4]> {
        match grad_y {
            &[n, c, l] => Ok([n, c, l, 1]),
            _ => Err(OpError::shape(
                "conv1d",
                format!("expected grad_y [N, C, L], got {grad_y:?}"),
            )),
        }
    }

    /// The 1-D shape of a gradient of the 2-D convolution, `[.., 1]` without its trailing 1.
    pub fn one_d(shape_2d: &[usize]) -> &[usize] {
        &shape_2d[..shape_2d.len() - 1]
    }
}
