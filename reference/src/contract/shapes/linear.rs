//! The shape rules of linear layers and batched matrix products (docs/architectures.md §4.0).

use crate::contract::error::{OpError, Result};

/// The sizes of a linear layer, checked: `x [rows, inputs]`, `weight [outputs, inputs]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
}

impl LinearShape {
    /// The sizes of `x w^T` (shapes), or why they do not fit.
    pub fn new(op: &'static str, x: &[usize], weight: &[usize]) -> Result<Self> {
        match (x, weight) {
            (&[rows, inputs], &[outputs, w_inputs]) if inputs == w_inputs => Ok(LinearShape {
                rows,
                inputs,
                outputs,
            }),
            _ => Err(OpError::shape(
                op,
                format!("expected x [N, in] and weight [out, in], got {x:?} and {weight:?}"),
            )),
        }
    }

    /// Errors unless `bias` (a shape) is `[out]`.
    pub fn check_bias(&self, op: &'static str, bias: &[usize]) -> Result<()> {
        if bias != [self.outputs] {
            return Err(OpError::shape(
                op,
                format!("bias must be [{}], got {bias:?}", self.outputs),
            ));
        }
        Ok(())
    }

    /// Errors unless `grad_y` is `[rows, outputs]`; `x` and `weight` are named in the message.
    pub fn check_grad(
        &self,
        op: &'static str,
        grad_y: &[usize],
        x: &[usize],
        weight: &[usize],
    ) -> Result<()> {
        let expected = [self.rows, self.outputs];
        if grad_y != expected {
            return Err(OpError::shape(
                op,
                format!("grad_y must be {expected:?} (x {x:?}, weight {weight:?}), got {grad_y:?}"),
            ));
        }
        Ok(())
    }
}

/// The sizes of `c[b] = op(a[b]) op(b[b])`, checked: `batch` products of `[m, k]` by `[k, n]`
/// over operands stored `[a_rows, a_cols]` and `[b_rows, b_cols]`, giving `output_shape`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulShape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a_rows: usize,
    pub a_cols: usize,
    pub b_rows: usize,
    pub b_cols: usize,
    /// `[..., m, n]`.
    pub output_shape: Vec<usize>,
}

impl MatmulShape {
    /// The sizes of a batched product of `a` and `b` (shapes), or why they do not fit: fewer than
    /// two axes, unequal batch axes or unequal inner sizes `k`.
    pub fn new(sa: &[usize], sb: &[usize], transpose_a: bool, transpose_b: bool) -> Result<Self> {
        const OP: &str = "batched_matmul";
        if sa.len() < 2 || sa.len() != sb.len() || sa[..sa.len() - 2] != sb[..sb.len() - 2] {
            return Err(OpError::shape(
                OP,
                format!(
                    "expected a [..., m, k] and b [..., k, n] with the same leading axes, got {sa:?} and {sb:?}"
                ),
            ));
        }
        let rank = sa.len();
        let (a_rows, a_cols) = (sa[rank - 2], sa[rank - 1]);
        let (b_rows, b_cols) = (sb[rank - 2], sb[rank - 1]);
        let (m, k) = if transpose_a {
            (a_cols, a_rows)
        } else {
            (a_rows, a_cols)
        };
        let (k_b, n) = if transpose_b {
            (b_cols, b_rows)
        } else {
            (b_rows, b_cols)
        };
        if k != k_b {
            return Err(OpError::shape(
                OP,
                format!(
                    "inner sizes differ: op(a) is [{m}, {k}] and op(b) is [{k_b}, {n}] \
                     (a {sa:?}, b {sb:?}, transpose_a {transpose_a}, transpose_b {transpose_b})"
                ),
            ));
        }
        let mut output_shape = sa[..rank - 2].to_vec();
        output_shape.extend([m, n]);
        Ok(MatmulShape {
            batch: sa[..rank - 2].iter().product(),
            m,
            n,
            k,
            a_rows,
            a_cols,
            b_rows,
            b_cols,
            output_shape,
        })
    }
}
