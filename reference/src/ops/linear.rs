//! Linear layers and batched matrix products (the classifier heads, and the attention products
//! `q k^T` and `attn v` of docs/architectures.md §4.0), on the reference's GEMM ([`gemm`]). Each
//! output element is one GEMM entry, computed by a single thread, so results do not depend on the thread count.

use ndarray::{ArcArray, Array1, Array2, ArrayView2, ArrayViewMut2, Ix2, IxDyn, ShapeError};
use rayon::prelude::*;

use crate::contract::shapes::{LinearShape, MatmulShape};
use crate::contract::{Element, LinearGrads, OpError, Result};
use crate::cpu::CpuTensor;
use crate::ops::gemm::{Update, gemm};

/// `y = x w^T + b`, i.e. `y[n, o] = b[o] + sum_i x[n, i] w[o, i]`, for `x [N, in]`, `w [out, in]`
/// and an optional `b [out]`; `y [N, out]`. Errors on any other shapes.
pub fn forward<E: Element>(
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    bias: Option<&CpuTensor<E>>,
) -> Result<CpuTensor<E>> {
    const OP: &str = "linear";
    let (sizes, x2, w2) = linear_operands(OP, x, weight)?;
    let mut y = Array2::zeros((sizes.rows, sizes.outputs));
    let update = match bias {
        Some(b) => {
            sizes.check_bias(OP, b.shape())?;
            for mut row in y.rows_mut() {
                row.iter_mut().zip(b.iter()).for_each(|(y, &b)| *y = b);
            }
            Update::Accumulate
        }
        None => Update::Overwrite,
    };
    gemm(&x2, &w2.t(), update, &mut y.view_mut())?;
    Ok(y.into_dyn().into_shared())
}

/// Gradients of [`forward`] given `dy = dL/dy [N, out]`: `dx = dy w [N, in]`,
/// `dw = dy^T x [out, in]` and, when `has_bias`, `db[o] = sum_n dy[n, o]` summed in row order.
/// Errors when `dy` is not `[N, out]` for the `x [N, in]` and `w [out, in]` given.
pub fn backward<E: Element>(
    grad_y: &CpuTensor<E>,
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    has_bias: bool,
) -> Result<LinearGrads<CpuTensor<E>>> {
    const OP: &str = "linear_backward";
    let (sizes, x2, w2) = linear_operands(OP, x, weight)?;
    sizes.check_grad(OP, grad_y.shape(), x.shape(), weight.shape())?;
    let dy = matrix(OP, grad_y)?;
    let input = product(&dy, &w2)?;
    let weight_grad = product(&dy.t(), &x2)?;
    let bias = has_bias.then(|| {
        let mut db = Array1::zeros(dy.ncols());
        for row in dy.rows() {
            db += &row;
        }
        db.into_dyn().into_shared()
    });
    Ok(LinearGrads {
        input: input.into_dyn().into_shared(),
        weight: weight_grad.into_dyn().into_shared(),
        bias,
    })
}

/// `c[b] = op_a(a[b]) op_b(b[b])` for every index `b` of the leading batch axes, which must be
/// equal in number and size (no broadcasting); `op_a` transposes the last two axes when
/// `transpose_a` (`a [..., k, m]`), else is the identity (`a [..., m, k]`), and likewise `op_b`
/// (`b [..., n, k]` or `b [..., k, n]`). Returns `c [..., m, n]`; the batch runs in parallel on
/// rayon (docs/architectures.md §4.0: `q k^T` and `attn v`). Errors on fewer than two axes, unequal batch axes or
/// unequal inner sizes `k`.
pub fn batched_matmul<E: Element>(
    a: &CpuTensor<E>,
    b: &CpuTensor<E>,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<CpuTensor<E>> {
    const OP: &str = "batched_matmul";
    let MatmulShape {
        batch,
        m,
        n,
        a_rows,
        a_cols,
        b_rows,
        b_cols,
        output_shape: shape,
        ..
    } = MatmulShape::new(a.shape(), b.shape(), transpose_a, transpose_b)?;
    let mut c = vec![E::zero(); batch * m * n];
    if m * n > 0 {
        let a_std = a.as_standard_layout();
        let a_data = contiguous(OP, a_std.as_slice())?;
        let b_std = b.as_standard_layout();
        let b_data = contiguous(OP, b_std.as_slice())?;
        c.par_chunks_mut(m * n)
            .enumerate()
            .try_for_each(|(i, c_i)| -> Result<()> {
                let a_i = ArrayView2::from_shape(
                    (a_rows, a_cols),
                    &a_data[i * a_rows * a_cols..(i + 1) * a_rows * a_cols],
                )
                .map_err(|e| layout(OP, e))?;
                let b_i = ArrayView2::from_shape(
                    (b_rows, b_cols),
                    &b_data[i * b_rows * b_cols..(i + 1) * b_rows * b_cols],
                )
                .map_err(|e| layout(OP, e))?;
                let a_i = if transpose_a {
                    a_i.reversed_axes()
                } else {
                    a_i
                };
                let b_i = if transpose_b {
                    b_i.reversed_axes()
                } else {
                    b_i
                };
                let mut c_i = ArrayViewMut2::from_shape((m, n), c_i).map_err(|e| layout(OP, e))?;
                gemm(&a_i, &b_i, Update::Overwrite, &mut c_i)
            })?;
    }
    ArcArray::from_shape_vec(IxDyn(&shape), c).map_err(|e| layout(OP, e))
}

/// `a b` as a new row-major matrix.
fn product<E: Element>(a: &ArrayView2<'_, E>, b: &ArrayView2<'_, E>) -> Result<Array2<E>> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    gemm(a, b, Update::Overwrite, &mut c.view_mut())?;
    Ok(c)
}

/// The sizes of `x [N, in]` and `w [out, in]` and the two as matrices, or a shape error.
fn linear_operands<'a, E: Element>(
    op: &'static str,
    x: &'a CpuTensor<E>,
    weight: &'a CpuTensor<E>,
) -> Result<(LinearShape, ArrayView2<'a, E>, ArrayView2<'a, E>)> {
    let sizes = LinearShape::new(op, x.shape(), weight.shape())?;
    Ok((sizes, matrix(op, x)?, matrix(op, weight)?))
}

/// A two-axis tensor as a matrix view.
fn matrix<'a, E: Element>(op: &'static str, t: &'a CpuTensor<E>) -> Result<ArrayView2<'a, E>> {
    t.view()
        .into_dimensionality::<Ix2>()
        .map_err(|e| layout(op, e))
}

/// A standard-layout array's slice; `None` cannot happen after `as_standard_layout`.
fn contiguous<'a, E>(op: &'static str, slice: Option<&'a [E]>) -> Result<&'a [E]> {
    slice.ok_or_else(|| OpError::shape(op, "internal error: tensor is not contiguous"))
}

/// A shape error from ndarray (the sizes were checked, so this means a bug).
fn layout(op: &'static str, error: ShapeError) -> OpError {
    OpError::shape(op, format!("internal layout error: {error}"))
}
