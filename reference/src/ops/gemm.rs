//! The dense matrix product of the reference, `C = A B` or `C = A B + C`, for every GEMM of the
//! convolutions (forward, weight gradient, input gradient) and of the linear layers and batched
//! products. `A`, `B` and `C` are 2-D views with any strides (transposed and sliced views
//! included).
//!
//! `f32` on an x86-64 CPU with AVX-512F runs on this module's own packed, register-blocked
//! kernel ([`avx512`]); anything else (`f64`, whose results the fixtures pin; other CPUs; products
//! too small for packing to pay) runs on ndarray's `general_mat_mul`. Both are deterministic: each
//! element's sum over `k` runs in an order fixed by the shapes alone, on one thread (the callers
//! parallelise over samples and channel groups).

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod operand;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
use std::any::TypeId;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use crate::contract::{Element, OpError, Result};

/// What a product does with the old contents of `C`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Update {
    /// `C = A B`; the old contents of `C` are never read (they may be anything, NaN included).
    Overwrite,
    /// `C = A B + C`.
    Accumulate,
}

/// Products with fewer multiply-adds than this run on `general_mat_mul`: packing does not pay.
#[cfg(target_arch = "x86_64")]
const MIN_PACKED_FLOPS: usize = 16 * 16 * 16;

/// `C = A B` or `C = A B + C` (see [`Update`]) for `A [m, k]`, `B [k, n]` and `C [m, n]`.
/// Errors, writing nothing, when the shapes do not match (a bug of the caller).
pub(crate) fn gemm<E: Element>(
    a: &ArrayView2<'_, E>,
    b: &ArrayView2<'_, E>,
    update: Update,
    c: &mut ArrayViewMut2<'_, E>,
) -> Result<()> {
    let (m, k) = a.dim();
    let n = b.ncols();
    if b.nrows() != k || c.dim() != (m, n) {
        return Err(OpError::shape(
            "gemm",
            format!(
                "internal error: cannot multiply {:?} by {:?} into {:?}",
                a.dim(),
                b.dim(),
                c.dim()
            ),
        ));
    }
    if k == 0 {
        if update == Update::Overwrite {
            c.fill(E::zero());
        }
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if packed_f32(a, b, update, c) {
        return Ok(());
    }
    let beta = match update {
        Update::Overwrite => E::zero(),
        Update::Accumulate => E::one(),
    };
    general_mat_mul(E::one(), a, b, beta, c);
    Ok(())
}

/// Runs the product on the AVX-512F kernel when `E` is `f32`, the CPU has AVX-512F and the
/// product is big enough; returns whether it did. The shapes were checked by [`gemm`], and
/// `k > 0`.
#[cfg(target_arch = "x86_64")]
fn packed_f32<E: Element>(
    a: &ArrayView2<'_, E>,
    b: &ArrayView2<'_, E>,
    update: Update,
    c: &mut ArrayViewMut2<'_, E>,
) -> bool {
    let (m, k) = a.dim();
    let n = b.ncols();
    if TypeId::of::<E>() != TypeId::of::<f32>()
        || m.saturating_mul(k).saturating_mul(n) < MIN_PACKED_FLOPS
    {
        return false;
    }
    let Some(cpu) = avx512::Avx512::detect() else {
        return false;
    };
    let (a, b, c) = (
        operand::Operand::of(a),
        operand::Operand::of(b),
        operand::OperandMut::of(c),
    );
    // SAFETY: `E` is `f32` (same type id), so the views' pointers address `f32` elements; each
    // view is valid at every index within its shape, which `gemm` checked to be [m, k], [k, n]
    // and [m, n]; `c` is borrowed mutably, so it overlaps neither `a` nor `b`; `k > 0` (checked
    // by `gemm`).
    unsafe { avx512::gemm(cpu, (m, k, n), a, b, update, c) };
    true
}
