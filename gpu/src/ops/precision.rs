//! The 16-bit GEMMs of `--precision bf16` and `fp16` (docs/precision.md §"CUDA"); kernels in
//! `gpu/kernels/precision.cu`, the twin of `reference/src/contract/precision.rs`. The
//! convolutions' cuDNN engine uses the same conversions, and [`widen_into`] reads its 16-bit
//! outputs back.
//!
//! Under a 16-bit precision every GEMM of the linear layers, the attention's batched matmuls and
//! the im2col convolutions converts its two operands to 16-bit buffers (to nearest even, as
//! [`Precision::round`] rounds) and runs `cublasGemmStridedBatchedEx` on them with an `f32` `C`
//! and `CUBLAS_COMPUTE_32F`; a pointwise convolution's GEMMs read 16-bit operands made before
//! and write a 16-bit `C` ([`gemm_strided_batched_stored`]), the sums rounded once by cuBLAS.
//! The product of two bf16 or fp16 numbers is exact in `f32`, so the result differs from the
//! reference's emulation (`Cpu::with_precision`) by the order of the `f32` sums only. The
//! 16-bit copies live for one GEMM and go back to the caching pool after it.

use std::ffi::c_void;

use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
use cudarc::cublas::{CudaBlas, StridedBatchedConfig, result};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{DevicePtr, DevicePtrMut};
use revsnn_reference::Precision;

use super::{GpuElement, launch_conversion, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::PRECISION;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

/// A 16-bit operand format of cuBLAS's mixed-precision GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfFormat {
    /// bfloat16: 8 exponent bits, 7 mantissa bits.
    Bf16,
    /// IEEE binary16: 5 exponent bits, 10 mantissa bits.
    Fp16,
}

impl HalfFormat {
    /// The 16-bit format of `precision`'s GEMM operands, or `None` for `f32` and `tf32`.
    pub fn of(precision: Precision) -> Option<HalfFormat> {
        match precision {
            Precision::Bf16 => Some(HalfFormat::Bf16),
            Precision::Fp16 => Some(HalfFormat::Fp16),
            Precision::F32 | Precision::Tf32 => None,
        }
    }

    /// The precision this format is the operand format of.
    pub fn precision(self) -> Precision {
        match self {
            HalfFormat::Bf16 => Precision::Bf16,
            HalfFormat::Fp16 => Precision::Fp16,
        }
    }

    fn data_type(self) -> cudaDataType {
        match self {
            HalfFormat::Bf16 => cudaDataType::CUDA_R_16BF,
            HalfFormat::Fp16 => cudaDataType::CUDA_R_16F,
        }
    }

    /// Launches the kernel `{prefix}_{format}` of precision.cu on `n` elements from `x` to `y`.
    fn launch(
        self,
        device: &GpuDevice,
        prefix: &str,
        x: u64,
        y: u64,
        n: usize,
    ) -> Result<(), GpuError> {
        let name = format!("{prefix}_{}", self.name());
        // SAFETY: `{prefix}_{format}` in precision.cu is a conversion of that signature; the
        // callers pass buffers of at least `n` elements of the kernel's types, live on the
        // device's stream.
        unsafe {
            launch_conversion(
                device,
                &PRECISION,
                &name,
                (x, y),
                n,
                "launching a 16-bit conversion",
            )
        }
    }

    /// The format's name in kernel names: `bf16` or `fp16`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HalfFormat::Bf16 => "bf16",
            HalfFormat::Fp16 => "fp16",
        }
    }
}

/// A tensor's values as 16-bit patterns in `format`: a 16-bit copy (a GEMM's or cuDNN's operand),
/// or a convolution's 16-bit sums from which its `f32` output was widened.
#[derive(Debug)]
pub struct HalfBits {
    pub bits: DeviceBuffer<u16>,
    pub format: HalfFormat,
}

/// Refuses an element type other than `f32` under a 16-bit precision: cuBLAS's 16-bit GEMMs
/// accumulate into `f32`.
pub(crate) fn require_f32<E: GpuElement>(format: HalfFormat) -> Result<(), GpuError> {
    if E::BLAS_TYPE == cudaDataType::CUDA_R_32F {
        Ok(())
    } else {
        Err(GpuError::PrecisionElement {
            precision: format.precision(),
            element: E::SUFFIX,
        })
    }
}

/// The first `len` elements of the `f32` buffer `x` converted to `format`'s 16-bit patterns.
pub(crate) fn to_half_bits<E: GpuElement, X: DevicePtr<E>>(
    device: &GpuDevice,
    format: HalfFormat,
    x: &X,
    len: usize,
) -> Result<DeviceBuffer<u16>, GpuError> {
    require_f32::<E>(format)?;
    // SAFETY: the conversion writes every element.
    let mut half = unsafe { device.alloc::<u16>(len) }?;
    if len > 0 {
        let (source, _read) = x.device_ptr(device.stream());
        let (target, _write) = half.slice_mut().device_ptr_mut(device.stream());
        format.launch(device, "to", source, target, len)?;
    }
    Ok(half)
}

/// `y = widen(half)`, or `y += widen(half)` when `accumulate`: 16-bit outputs in `format` (a
/// convolution's, docs/precision.md §"Convolution outputs") read as the `f32` values they hold
/// exactly. The two buffers have the same length.
pub(crate) fn widen_into<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    half: &DeviceBuffer<u16>,
    y: &mut DeviceBuffer<E>,
    accumulate: bool,
) -> Result<(), GpuError> {
    require_f32::<E>(format)?;
    if half.len() != y.len() {
        let detail = format!(
            "internal error: {} 16-bit values into {}",
            half.len(),
            y.len()
        );
        return Err(shape_error("widening 16-bit outputs", detail));
    }
    if !half.is_empty() {
        let (source, _read) = half.slice().device_ptr(device.stream());
        let (target, _write) = y.slice_mut().device_ptr_mut(device.stream());
        let kernel = if accumulate { "add_from" } else { "from" };
        format.launch(device, kernel, source, target, half.len())?;
    }
    Ok(())
}

/// The 16-bit patterns of `x` in `format`, copied to the host: what cuBLAS's operands hold.
pub fn half_bits(
    device: &GpuDevice,
    x: &CudaTensor<f32>,
    format: HalfFormat,
) -> Result<Vec<u16>, GpuError> {
    let half = to_half_bits(device, format, x.slice(), x.len())?;
    device.download(&half)
}

/// `x` with every element rounded to `format` and widened back to `f32` exactly: the tensor the
/// reference's `Precision::round` gives (a NaN stays a NaN, with a quiet payload).
pub fn rounded<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    format: HalfFormat,
) -> Result<CudaTensor<E>, GpuError> {
    CudaTensor::new(rounded_buffer(device, x.buffer(), format)?, x.shape())
}

/// [`rounded`] for a bare buffer.
pub(crate) fn rounded_buffer<E: GpuElement>(
    device: &GpuDevice,
    x: &DeviceBuffer<E>,
    format: HalfFormat,
) -> Result<DeviceBuffer<E>, GpuError> {
    require_f32::<E>(format)?;
    // SAFETY: the round trip writes every element.
    let mut y = unsafe { device.alloc::<E>(x.len()) }?;
    if !x.is_empty() {
        let (source, _read) = x.slice().device_ptr(device.stream());
        let (target, _write) = y.slice_mut().device_ptr_mut(device.stream());
        format.launch(device, "round", source, target, x.len())?;
    }
    Ok(y)
}

/// The 16-bit patterns `half` read back as a new `f32` buffer ([`widen_into`]).
pub(crate) fn widened<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    half: &DeviceBuffer<u16>,
) -> Result<DeviceBuffer<E>, GpuError> {
    // SAFETY: the widening writes every element.
    let mut wide = unsafe { device.alloc::<E>(half.len()) }?;
    widen_into(device, format, half, &mut wide, false)?;
    Ok(wide)
}

/// The 16-bit patterns `half` read back as a new `f32` tensor of `shape` ([`widened`]).
pub(crate) fn widened_tensor<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    half: &DeviceBuffer<u16>,
    shape: &[usize],
) -> Result<CudaTensor<E>, GpuError> {
    CudaTensor::new(widened(device, format, half)?, shape)
}

/// `dy` as the backward of a GEMM op reads it: rounded to the device's 16-bit format when it has
/// one (docs/precision.md: `dY` is rounded once and serves the input, weight and bias gradients,
/// so the bias gradient sums the rounded values), else `dy` itself.
pub(crate) fn gradient_operand<E: GpuElement>(
    device: &GpuDevice,
    dy: &CudaTensor<E>,
) -> Result<CudaTensor<E>, GpuError> {
    match device.half_format() {
        Some(format) => rounded(device, dy, format),
        None => Ok(dy.clone()),
    }
}

/// cuBLAS's `C[b] = alpha op(A[b]) op(B[b]) + beta C[b]` (column-major) with `A` and `B` in
/// `format` and `C` in `f32`, accumulated in `f32` (`CUBLAS_COMPUTE_32F`).
///
/// # Safety
/// The configuration must describe matrices inside the three buffers, and `C` must hold `f32`
/// elements (checked by the caller with [`require_f32`] through [`to_half_bits`]).
pub(crate) unsafe fn gemm_strided_batched<E: GpuElement, C: DevicePtrMut<E>>(
    device: &GpuDevice,
    blas: &CudaBlas,
    format: HalfFormat,
    config: StridedBatchedConfig<f32>,
    a: &DeviceBuffer<u16>,
    b: &DeviceBuffer<u16>,
    c: &mut C,
) -> Result<(), GpuError> {
    require_f32::<E>(format)?;
    let (c, _write_c) = c.device_ptr_mut(device.stream());
    let output = (c, cudaDataType::CUDA_R_32F);
    // SAFETY: guaranteed by the caller.
    unsafe { gemm_ex(device, blas, format, config, (a, b), output) }
}

/// [`gemm_strided_batched`] with `C` stored in `format` as well: each element the `f32` sum
/// rounded once to the format, by cuBLAS.
///
/// # Safety
/// The configuration must describe matrices inside the three buffers, with `beta` zero.
pub(crate) unsafe fn gemm_strided_batched_stored(
    device: &GpuDevice,
    format: HalfFormat,
    config: StridedBatchedConfig<f32>,
    a: &DeviceBuffer<u16>,
    b: &DeviceBuffer<u16>,
    c: &mut DeviceBuffer<u16>,
) -> Result<(), GpuError> {
    let (c, _write_c) = c.slice_mut().device_ptr_mut(device.stream());
    let output = (c, format.data_type());
    // SAFETY: guaranteed by the caller.
    unsafe { gemm_ex(device, device.blas()?, format, config, (a, b), output) }
}

/// `cublasGemmStridedBatchedEx` with `A` and `B` in `format`, `C` at `output`'s address in its
/// data type, `f32` sums (`CUBLAS_COMPUTE_32F`, so `alpha` and `beta` are `f32`).
///
/// # Safety
/// The configuration must describe matrices inside the three buffers, `C`'s of the given type.
unsafe fn gemm_ex(
    device: &GpuDevice,
    blas: &CudaBlas,
    format: HalfFormat,
    config: StridedBatchedConfig<f32>,
    (a, b): (&DeviceBuffer<u16>, &DeviceBuffer<u16>),
    (c, c_type): (CUdeviceptr, cudaDataType),
) -> Result<(), GpuError> {
    let stream = device.stream();
    let (a, _read_a) = a.slice().device_ptr(stream);
    let (b, _read_b) = b.slice().device_ptr(stream);
    let g = &config.gemm;
    // SAFETY: guaranteed by the caller.
    unsafe {
        result::gemm_strided_batched_ex(
            *blas.handle(),
            g.transa,
            g.transb,
            g.m,
            g.n,
            g.k,
            (&g.alpha) as *const f32 as *const c_void,
            a as *const c_void,
            format.data_type(),
            g.lda,
            config.stride_a,
            b as *const c_void,
            format.data_type(),
            g.ldb,
            config.stride_b,
            (&g.beta) as *const f32 as *const c_void,
            c as *mut c_void,
            c_type,
            g.ldc,
            config.stride_c,
            config.batch_size,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| GpuError::Blas {
        during: "a 16-bit strided batched GEMM (cublasGemmStridedBatchedEx)",
        detail: e.to_string(),
    })
}
