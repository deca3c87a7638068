//! Host sides of the CUDA kernels; each module is the twin of the CPU kernels' module of the same
//! name (`reference/src/ops/`), with the same public functions, and of `gpu/kernels/<same
//! name>.cu`, except `precision`, whose twin is the contract's
//! `reference/src/contract/precision.rs` (`Precision::round`), `saved_input`, the compact forms
//! in which contexts keep their inputs (no twin; kernels in `gpu/kernels/spike_bits.cu`),
//! `conv_batch_norm`, the two ops fused (no twin: the CPU runs the contract's default), and
//! `foreach`, the launches over many tensors at once that `optim` and `tensor` share (kernel side
//! in `gpu/kernels/foreach.cuh`). Every function validates its operands with the contract's shape
//! rules (`revsnn_reference::contract`; a [`GpuError::Op`] names the op and what is wrong, as the
//! CPU backend does), allocates its outputs through [`GpuDevice`] so they are
//! counted, and queues its kernels on the device's one stream.

pub mod attention;
pub mod batch_norm;
pub mod conv;
pub mod conv_batch_norm;
mod foreach;
pub mod linear;
pub mod loss;
pub mod neuron;
pub mod optim;
pub mod pool;
pub mod precision;
pub mod saved_input;
pub mod tensor;

use cudarc::cublas::sys::cudaDataType;
use cudarc::cublas::{CudaBlas, Gemm, StridedBatchedConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};

use revsnn_reference::OpError;

use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::KernelSource;

/// A float the kernels are instantiated for.
pub trait GpuElement:
    revsnn_reference::Element
    + DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + cudarc::cudnn::CudnnDataType
    + cudarc::nccl::NcclType
{
    /// The suffix of the `extern "C"` kernel names, `f32` or `f64`.
    const SUFFIX: &'static str;
    /// The type as cuBLAS's mixed-type GEMMs name it.
    const BLAS_TYPE: cudaDataType;

    /// cuBLAS `C[b] = alpha op(A[b]) op(B[b]) + beta C[b]` in this type (column-major, as cuBLAS
    /// sees it), `sgemmStridedBatched` or `dgemmStridedBatched`.
    ///
    /// # Safety
    /// The configuration must describe matrices inside the three buffers.
    unsafe fn gemm_strided_batched<A: DevicePtr<Self>, B: DevicePtr<Self>, C: DevicePtrMut<Self>>(
        blas: &CudaBlas,
        config: StridedBatchedConfig<Self>,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<(), GpuError>;
}

macro_rules! gpu_element {
    ($t:ty, $suffix:literal, $data_type:ident) => {
        impl GpuElement for $t {
            const SUFFIX: &'static str = $suffix;
            const BLAS_TYPE: cudaDataType = cudaDataType::$data_type;

            unsafe fn gemm_strided_batched<
                A: DevicePtr<Self>,
                B: DevicePtr<Self>,
                C: DevicePtrMut<Self>,
            >(
                blas: &CudaBlas,
                config: StridedBatchedConfig<Self>,
                a: &A,
                b: &B,
                c: &mut C,
            ) -> Result<(), GpuError> {
                // SAFETY: guaranteed by the caller.
                unsafe { blas.gemm_strided_batched(config, a, b, c) }.map_err(|e| GpuError::Blas {
                    during: concat!("a ", $suffix, " strided batched GEMM"),
                    detail: e.to_string(),
                })
            }
        }
    };
}

gpu_element!(f32, "f32", CUDA_R_32F);
gpu_element!(f64, "f64", CUDA_R_64F);

/// Threads per block of the one-thread-per-element kernels.
pub(crate) const THREADS: u32 = 256;

/// One block of one thread: the scalar kernels (a fingerprint's fold, a comparison of two words,
/// the mean of a batch's row losses).
pub(crate) const ONE_THREAD: LaunchConfig = LaunchConfig {
    grid_dim: (1, 1, 1),
    block_dim: (1, 1, 1),
    shared_mem_bytes: 0,
};

/// Launches the elementwise conversion `name(const X* x, Y* y, long long n)` of `kernels` over
/// the `n` elements at the device pointers `x` and `y`; `during` names it in a launch error.
///
/// # Safety
/// `name` must have that signature, and `x` and `y` must point to at least `n` elements of its
/// types, kept live and ordered on the device's stream by their pointers' guards.
pub(crate) unsafe fn launch_conversion(
    device: &GpuDevice,
    kernels: &KernelSource,
    name: &str,
    (x, y): (u64, u64),
    n: usize,
    during: &'static str,
) -> Result<(), GpuError> {
    let function = device.function(kernels, name)?;
    let count = n as i64;
    let mut launch = device.stream().launch_builder(&function);
    launch.arg(&x).arg(&y).arg(&count);
    // SAFETY: guaranteed by the caller.
    unsafe { launch.launch(elementwise_launch(n)) }.map_err(GpuError::driver(during))?;
    Ok(())
}

/// A 1-D launch of one thread per element over `elements` (at least one block). Kernels loop
/// with a grid stride, so the grid is capped without losing elements.
pub(crate) fn elementwise_launch(elements: usize) -> LaunchConfig {
    const MAX_BLOCKS: usize = 1 << 20;
    LaunchConfig {
        grid_dim: (
            elements.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A shape error of `op`, as the contract words it.
pub(crate) fn shape_error(op: &'static str, detail: impl Into<String>) -> GpuError {
    GpuError::Op(OpError::shape(op, detail))
}
