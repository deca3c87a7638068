//! Spiking self-attention's products as one op under a 16-bit precision
//! (`AttentionOps::attention_forward`, `attention_backward`; docs/precision.md §"Attention"), the
//! twin of the contract's `attention_forward_in_turn` and `attention_backward_in_turn`, which
//! run under `f32` and `f64`. Each operand's 16-bit patterns are made once, from its spike bits
//! where it is kept so, though two products read each of `q^T`, `k^T` and `d(o^T)`; the scores
//! and their gradient exist only in 16 bits, as cuBLAS rounds their `f32` sums, the one form
//! the next products read. Every output and gradient holds the bits of the products in turn.

use revsnn_reference::{AttentionGrads, AttentionKept};

use super::GpuElement;
use super::linear::{RowMajorGemm, batched_layout};
use super::precision::{self, HalfFormat};
use super::saved_input::SavedInput;
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

const OP: &str = "batched_matmul";

/// One batched product of the attention: its output shape and its GEMM.
struct Product {
    shape: Vec<usize>,
    gemm: RowMajorGemm,
}

impl Product {
    /// `op(a) op(b)` of operands shaped `a` and `b` (`LinearOps::batched_matmul`'s rules), or the
    /// reference's shape error.
    fn new(
        a: &[usize],
        b: &[usize],
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<Self, GpuError> {
        let (shape, gemm) = batched_layout(a, b, transpose_a, transpose_b)?;
        Ok(Product { shape, gemm })
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// The product of 16-bit operands, its `f32` sums stored in `format`.
    fn stored(
        &self,
        device: &GpuDevice,
        format: HalfFormat,
        a: &DeviceBuffer<u16>,
        b: &DeviceBuffer<u16>,
    ) -> Result<DeviceBuffer<u16>, GpuError> {
        // SAFETY: the GEMM writes every element (zeros when k = 0).
        let mut c = unsafe { device.alloc::<u16>(self.len()) }?;
        self.gemm.run_stored(device, OP, format, a, b, &mut c)?;
        Ok(c)
    }

    /// The product of 16-bit operands into a new tensor of the element type (`f32`).
    fn full<E: GpuElement>(
        &self,
        device: &GpuDevice,
        format: HalfFormat,
        a: &DeviceBuffer<u16>,
        b: &DeviceBuffer<u16>,
    ) -> Result<CudaTensor<E>, GpuError> {
        // SAFETY: as for `stored`.
        let mut c = unsafe { device.alloc::<E>(self.len()) }?;
        self.gemm
            .run_from_half(device, OP, format, a, b, c.slice_mut())?;
        CudaTensor::new(c, &self.shape)
    }
}

/// `attn = (q^T)^T k^T`, then `o^T = v^T attn^T` under `format` (docs/architectures.md §4.0), the
/// operands `[..., d, N]` kept as `TensorOps::keep` keeps them (spikes one bit each) and freed
/// before the products run; the scores exist only in 16 bits. Returns `o^T` and the kept
/// operands. Errors as the products in turn do.
pub fn forward<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    q_t: CudaTensor<E>,
    k_t: CudaTensor<E>,
    v_t: CudaTensor<E>,
) -> Result<(CudaTensor<E>, AttentionKept<SavedInput<E>>), GpuError> {
    let scores = Product::new(q_t.shape(), k_t.shape(), true, false)?;
    let output = Product::new(v_t.shape(), &scores.shape, false, true)?;
    let kept = AttentionKept {
        q_t: SavedInput::compact(device, &q_t)?,
        k_t: SavedInput::compact(device, &k_t)?,
        v_t: SavedInput::compact(device, &v_t)?,
    };
    drop((q_t, k_t, v_t));
    let attn = {
        let (q16, k16) = (
            kept.q_t.half(device, format)?,
            kept.k_t.half(device, format)?,
        );
        scores.stored(device, format, q16.buffer(), k16.buffer())?
    };
    let v16 = kept.v_t.half(device, format)?;
    let o_t = output.full(device, format, v16.buffer(), &attn)?;
    Ok((o_t, kept))
}

/// Gradients of [`forward`] from `d(o^T)` under `format`: the scores again, `d(v^T) = d(o^T)
/// attn`, `d(attn) = d(o^T)^T v^T`, `d(q^T) = k^T d(attn)^T`, `d(k^T) = q^T d(attn)`, with
/// `d(o^T)` and each kept operand converted to 16 bits once and the scores and `d(attn)` stored
/// in 16 bits; each operand is dropped after its last product. Errors as the products in turn
/// do.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    grad_o_t: CudaTensor<E>,
    kept: AttentionKept<SavedInput<E>>,
) -> Result<AttentionGrads<CudaTensor<E>>, GpuError> {
    let AttentionKept { q_t, k_t, v_t } = kept;
    // The layouts checked in the order the products in turn check them.
    let scores = Product::new(q_t.shape(), k_t.shape(), true, false)?;
    let grad_v = Product::new(grad_o_t.shape(), &scores.shape, false, false)?;
    let grad_scores = Product::new(grad_o_t.shape(), v_t.shape(), true, false)?;
    let grad_q = Product::new(k_t.shape(), &grad_scores.shape, false, true)?;
    let grad_k = Product::new(q_t.shape(), &grad_scores.shape, false, false)?;
    let (q16, k16) = (q_t.half(device, format)?, k_t.half(device, format)?);
    let attn = scores.stored(device, format, q16.buffer(), k16.buffer())?;
    let dy16 = precision::to_half_bits(device, format, grad_o_t.slice(), grad_o_t.len())?;
    drop(grad_o_t);
    let grad_v_t = grad_v.full(device, format, &dy16, &attn)?;
    drop(attn);
    let grad_attn = {
        let v16 = v_t.half(device, format)?;
        grad_scores.stored(device, format, &dy16, v16.buffer())?
    };
    drop((dy16, v_t));
    let grad_q_t = grad_q.full(device, format, k16.buffer(), &grad_attn)?;
    drop(k16);
    let grad_k_t = grad_k.full(device, format, q16.buffer(), &grad_attn)?;
    Ok(AttentionGrads {
        q_t: grad_q_t,
        k_t: grad_k_t,
        v_t: grad_v_t,
    })
}
