//! [`AttentionOps`]: spiking self-attention's two products as one op, which keeps its operands
//! compactly and computes the scores again in its backward (docs/memory.md §9.6). The CUDA
//! fusion is `gpu/src/ops/attention.rs`; the defaults run [`LinearOps::batched_matmul`] in turn.

use super::linear::LinearOps;
#[cfg(doc)]
use super::tensor::TensorOps;
use crate::contract::error::Result;

/// Spiking self-attention's products `attn = q k^T`, `o = attn v`, forward and backward.
pub trait AttentionOps: LinearOps {
    /// Spiking self-attention's two products (docs/architectures.md §4.0) over the per-head
    /// transposes `q^T`, `k^T`, `v^T` `[..., d, N]`: the scores `attn = (q^T)^T k^T` `[..., N, N]`,
    /// then `o^T = v^T attn^T` `[..., d, N]`, unscaled. Returns `o^T` and the operands as
    /// [`TensorOps::keep`] keeps them, for [`AttentionOps::attention_backward`], which computes the
    /// scores again: they are not kept (docs/memory.md §9.6). The default runs the two
    /// [`LinearOps::batched_matmul`]s. A backend may fuse them: CUDA under a 16-bit precision makes
    /// each operand's 16-bit patterns once, from its spike bits where it kept those, and writes the
    /// scores only in 16 bits, the form the second product reads (docs/precision.md §"Attention").
    /// Either way `o^T` holds the bits of the products in turn. It takes the operands by value, so
    /// that each can be freed once kept. Errors as [`LinearOps::batched_matmul`] does.
    fn attention_forward(
        &self,
        q_t: Self::Tensor,
        k_t: Self::Tensor,
        v_t: Self::Tensor,
    ) -> Result<(Self::Tensor, AttentionKept<Self::Kept>)> {
        attention_forward_in_turn(self, q_t, k_t, v_t)
    }

    /// Gradients of [`AttentionOps::attention_forward`] from `d(o^T)` and the kept operands: the
    /// scores again, `d(v^T) = d(o^T) attn`, `d(attn) = d(o^T)^T v^T`, `d(q^T) = k^T d(attn)^T` and
    /// `d(k^T) = q^T d(attn)`. The default runs the five [`LinearOps::batched_matmul`]s. A backend
    /// may fuse them: CUDA under a 16-bit precision converts `d(o^T)` and each operand to 16 bits
    /// once, though two products read each of `q^T`, `k^T` and `d(o^T)`, and writes the scores and
    /// `d(attn)` only in 16 bits (docs/precision.md §"Attention"). Either way every gradient holds
    /// the bits of the products in turn. Errors as the products in turn do.
    fn attention_backward(
        &self,
        grad_o_t: Self::Tensor,
        kept: AttentionKept<Self::Kept>,
    ) -> Result<AttentionGrads<Self::Tensor>> {
        attention_backward_in_turn(self, grad_o_t, kept)
    }
}

/// The operands of spiking self-attention's products as [`AttentionOps::attention_forward`] keeps
/// them for [`AttentionOps::attention_backward`] ([`TensorOps::keep`]): the per-head transposes
/// `q^T`, `k^T`, `v^T` `[..., d, N]`.
#[derive(Clone, Debug)]
pub struct AttentionKept<K> {
    pub q_t: K,
    pub k_t: K,
    pub v_t: K,
}

/// Gradients of [`AttentionOps::attention_forward`] with respect to `q^T`, `k^T` and `v^T`.
#[derive(Clone, Debug)]
pub struct AttentionGrads<T> {
    pub q_t: T,
    pub k_t: T,
    pub v_t: T,
}

/// [`AttentionOps::attention_forward`] as its two products in turn: the default, and what a backend
/// that fuses them runs where it does not (CUDA under `f32` and `f64`).
pub fn attention_forward_in_turn<B: LinearOps>(
    backend: &B,
    q_t: B::Tensor,
    k_t: B::Tensor,
    v_t: B::Tensor,
) -> Result<(B::Tensor, AttentionKept<B::Kept>)> {
    // attn[n, m] = sum_j q[n, j] k[m, j] = ((q^T)^T k^T)[n, m].
    let attn = backend.batched_matmul(&q_t, &k_t, true, false)?;
    // o^T[j, n] = sum_m v[m, j] attn[n, m] = (v^T attn^T)[j, n].
    let o_t = backend.batched_matmul(&v_t, &attn, false, true)?;
    drop(attn);
    let kept = AttentionKept {
        q_t: backend.keep(&q_t)?,
        k_t: backend.keep(&k_t)?,
        v_t: backend.keep(&v_t)?,
    };
    Ok((o_t, kept))
}

/// [`AttentionOps::attention_backward`] as its five products in turn: the default, and what a
/// backend that fuses them runs where it does not. Each tensor is dropped after its last use, so
/// the later products do not hold it.
pub fn attention_backward_in_turn<B: LinearOps>(
    backend: &B,
    grad_o_t: B::Tensor,
    kept: AttentionKept<B::Kept>,
) -> Result<AttentionGrads<B::Tensor>> {
    let AttentionKept { q_t, k_t, v_t } = kept;
    // The scores again: the forward's product of the same operands, so the same bits.
    let attn = backend.batched_matmul(&backend.kept(&q_t)?, &backend.kept(&k_t)?, true, false)?;
    // o^T = v^T attn^T: d(v^T) = d(o^T) attn, d(attn) = d(o^T)^T v^T.
    let grad_v_t = backend.batched_matmul(&grad_o_t, &attn, false, false)?;
    drop(attn);
    let grad_attn = backend.batched_matmul(&grad_o_t, &backend.kept(&v_t)?, true, false)?;
    drop((grad_o_t, v_t));
    // attn = (q^T)^T k^T: d(q^T) = k^T d(attn)^T, d(k^T) = q^T d(attn).
    let grad_q_t = backend.batched_matmul(&backend.kept(&k_t)?, &grad_attn, false, true)?;
    drop(k_t);
    let grad_k_t = backend.batched_matmul(&backend.kept(&q_t)?, &grad_attn, false, false)?;
    Ok(AttentionGrads {
        q_t: grad_q_t,
        k_t: grad_k_t,
        v_t: grad_v_t,
    })
}
