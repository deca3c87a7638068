//! Linear layers and batched matmuls on the GPU through cuBLAS (docs/architectures.md §4.0); twin of
//! `reference/src/ops/linear.rs`, bias kernels in `gpu/kernels/linear.cu`.
//!
//! Every product is written here in row-major terms ([`RowMajorGemm`]) and turned into cuBLAS's
//! column-major call in one place: a row-major `[m, n]` matrix is a column-major `[n, m]` one, so
//! `C = op(A) op(B)` is issued as `C^T = op(B)^T op(A)^T`. cuBLAS runs on the device's one stream,
//! without atomics, in the device's precision (`GpuDevice::set_precision`, `--precision`): `f32`
//! by default, TF32 math, or 16-bit operands into an `f32` accumulator through
//! `cublasGemmStridedBatchedEx` (`super::precision`); each product is the same bits run to run.
//! The bias is broadcast into the output before the GEMM accumulates onto it (the reference's
//! order: `y = b` then `y += x w^T`), and its gradient is a fixed-order reduction kernel, never
//! float atomics.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use revsnn_reference::LinearGrads;
use revsnn_reference::contract::shapes::{LinearShape, MatmulShape};

use super::precision::{self, HalfBits, HalfFormat};
use super::{GpuElement, elementwise_launch, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::LINEAR;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

/// One stored row-major operand of a [`RowMajorGemm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Operand {
    /// The product uses the stored matrix transposed (`A` stored `[k, m]`, `B` stored `[n, k]`).
    pub transposed: bool,
    /// Elements from one stored row to the next (at least the stored row length).
    pub ld: usize,
    /// Elements from one batch entry to the next (0: the same matrix for every entry).
    pub stride: usize,
}

/// `C[b] = op(A[b]) op(B[b])` (or `+=` when `accumulate`) for `b < batch`, all matrices row-major:
/// `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]` with row pitch `c_ld` and batch stride
/// `c_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowMajorGemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: Operand,
    pub b: Operand,
    pub c_ld: usize,
    pub c_stride: usize,
    pub accumulate: bool,
}

/// The elements a batch of `[rows, cols]` matrices with pitch `ld` and stride `stride` spans, or
/// `None` when `ld` is shorter than a row or the span overflows.
fn span(rows: usize, cols: usize, ld: usize, stride: usize, batch: usize) -> Option<usize> {
    if rows == 0 || cols == 0 || batch == 0 {
        return Some(0);
    }
    if ld < cols {
        return None;
    }
    (batch - 1)
        .checked_mul(stride)?
        .checked_add((rows - 1).checked_mul(ld)?)?
        .checked_add(cols)
}

fn to_int(op: &'static str, what: &str, value: usize) -> Result<i32, GpuError> {
    i32::try_from(value).map_err(|_| {
        shape_error(
            op,
            format!("{what} = {value} exceeds cuBLAS's 32-bit sizes; split the operands"),
        )
    })
}

fn to_long(op: &'static str, what: &str, value: usize) -> Result<i64, GpuError> {
    i64::try_from(value).map_err(|_| shape_error(op, format!("{what} = {value} is too large")))
}

fn operation(transposed: bool) -> cublasOperation_t {
    if transposed {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

impl RowMajorGemm {
    /// Elements of the stored `A`, `B` and `C` the product reads or writes, or an error when a
    /// pitch is shorter than its row.
    fn spans(&self, op: &'static str) -> Result<[usize; 3], GpuError> {
        let (a_rows, a_cols) = if self.a.transposed {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (b_rows, b_cols) = if self.b.transposed {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        let a = span(a_rows, a_cols, self.a.ld, self.a.stride, self.batch);
        let b = span(b_rows, b_cols, self.b.ld, self.b.stride, self.batch);
        let c = span(self.m, self.n, self.c_ld, self.c_stride, self.batch);
        match (a, b, c) {
            (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
            _ => Err(shape_error(
                op,
                format!("internal error: inconsistent GEMM layout {self:?}"),
            )),
        }
    }

    /// The column-major cuBLAS call computing this product: `C^T = op(B)^T op(A)^T`, so cuBLAS's
    /// `A` is our `B` and the other way round, with `m` and `n` swapped; a stored row-major matrix
    /// read as column-major is its transpose, so each operand keeps its own transpose flag.
    fn column_major<E: GpuElement>(
        &self,
        op: &'static str,
    ) -> Result<StridedBatchedConfig<E>, GpuError> {
        Ok(StridedBatchedConfig {
            gemm: GemmConfig {
                transa: operation(self.b.transposed),
                transb: operation(self.a.transposed),
                m: to_int(op, "n", self.n)?,
                n: to_int(op, "m", self.m)?,
                k: to_int(op, "k", self.k)?,
                alpha: E::one(),
                lda: to_int(op, "the pitch of B", self.b.ld)?,
                ldb: to_int(op, "the pitch of A", self.a.ld)?,
                beta: if self.accumulate { E::one() } else { E::zero() },
                ldc: to_int(op, "the pitch of C", self.c_ld)?,
            },
            batch_size: to_int(op, "the batch", self.batch)?,
            stride_a: to_long(op, "the stride of B", self.b.stride)?,
            stride_b: to_long(op, "the stride of A", self.a.stride)?,
            stride_c: to_long(op, "the stride of C", self.c_stride)?,
        })
    }

    /// Queues the product on the device's stream after checking that every matrix lies inside
    /// its buffer. An empty `C` does nothing; `k = 0` sets `C` to zero (or leaves it when
    /// accumulating), which needs `C` to be exactly the product's span.
    pub(crate) fn run<E, A, B, C>(
        &self,
        device: &GpuDevice,
        op: &'static str,
        a: &A,
        b: &B,
        c: &mut C,
    ) -> Result<(), GpuError>
    where
        E: GpuElement,
        A: DevicePtr<E>,
        B: DevicePtr<E>,
        C: DevicePtrMut<E>,
    {
        let [a_span, b_span, c_span] = self.checked_spans(op, [a.len(), b.len(), c.len()])?;
        if self.finish_if_empty(device, op, c_span, c)? {
            return Ok(());
        }
        if let Some(format) = device.half_format() {
            return self.run_half(device, op, format, (a, a_span), (b, b_span), c);
        }
        let config = self.column_major::<E>(op)?;
        // cuBLAS's `A` is our `B` and its `B` our `A` (see `column_major`).
        // SAFETY: every matrix of the configuration lies inside its buffer (checked above), the
        // pitches are at least the row lengths, and all three are on the device's stream.
        unsafe { E::gemm_strided_batched(device.blas()?, config, b, a, c) }
    }

    /// [`RowMajorGemm::run`] on `A` and `B` already in `format`'s 16-bit patterns, with `C`
    /// stored in `format` too: cuBLAS sums in `f32` and rounds each element once to the format
    /// (docs/precision.md §"Convolution outputs"), so neither an `f32` `C` nor a conversion of
    /// one is written. It never accumulates (a 16-bit `C` would be read back rounded).
    pub(crate) fn run_stored(
        &self,
        device: &GpuDevice,
        op: &'static str,
        format: HalfFormat,
        a: &DeviceBuffer<u16>,
        b: &DeviceBuffer<u16>,
        c: &mut DeviceBuffer<u16>,
    ) -> Result<(), GpuError> {
        if self.accumulate {
            let detail = format!("internal error: a 16-bit C cannot accumulate {self:?}");
            return Err(shape_error(op, detail));
        }
        let Some(config) = self.half_config(device, op, [a, b], c.slice_mut())? else {
            return Ok(());
        };
        // cuBLAS's `A` is our `B` and its `B` our `A` (see `column_major`).
        // SAFETY: every matrix of the configuration lies inside its buffer (`half_config`), the
        // pitches are at least the row lengths, and all three are on the device's stream.
        unsafe { precision::gemm_strided_batched_stored(device, format, config, b, a, c) }
    }

    /// The cuBLAS configuration of this product over the 16-bit `A` and `B` into `c` (of either
    /// output type), every matrix checked to lie inside its buffer; `None` when nothing is left
    /// to sum ([`RowMajorGemm::finish_if_empty`] has completed it).
    fn half_config<T: DeviceRepr + ValidAsZeroBits, C: DevicePtrMut<T>>(
        &self,
        device: &GpuDevice,
        op: &'static str,
        [a, b]: [&DeviceBuffer<u16>; 2],
        c: &mut C,
    ) -> Result<Option<StridedBatchedConfig<f32>>, GpuError> {
        let [_, _, c_span] = self.checked_spans(op, [a.len(), b.len(), c.len()])?;
        if self.finish_if_empty(device, op, c_span, c)? {
            return Ok(None);
        }
        Ok(Some(self.column_major::<f32>(op)?))
    }

    /// The spans of `A`, `B` and `C` ([`RowMajorGemm::spans`]), checked against the lengths of
    /// the buffers that hold them.
    fn checked_spans(&self, op: &'static str, lens: [usize; 3]) -> Result<[usize; 3], GpuError> {
        let spans = self.spans(op)?;
        if spans.iter().zip(lens).any(|(&span, len)| span > len) {
            let [a_span, b_span, c_span] = spans;
            let [a, b, c] = lens;
            return Err(shape_error(
                op,
                format!(
                    "internal error: GEMM {self:?} spans {a_span}, {b_span} and {c_span} elements \
                     of buffers of {a}, {b} and {c}"
                ),
            ));
        }
        Ok(spans)
    }

    /// Completes a product with nothing to sum and says so: an empty `C` is left as it is, and
    /// `k = 0` zeroes `C` (all-zero bits are `+0` in every element format) unless accumulating,
    /// which needs `C` to be exactly the product's span of `c_span` elements.
    fn finish_if_empty<T: DeviceRepr + ValidAsZeroBits, C: DevicePtrMut<T>>(
        &self,
        device: &GpuDevice,
        op: &'static str,
        c_span: usize,
        c: &mut C,
    ) -> Result<bool, GpuError> {
        if c_span == 0 {
            return Ok(true);
        }
        if self.k > 0 {
            return Ok(false);
        }
        if c_span != c.len() {
            return Err(shape_error(
                op,
                format!("internal error: an empty product into a strided C {self:?}"),
            ));
        }
        if !self.accumulate {
            device
                .stream()
                .memset_zeros(c)
                .map_err(GpuError::driver("zeroing an empty product"))?;
        }
        Ok(true)
    }

    /// [`RowMajorGemm::run`] under a 16-bit precision: the `span` elements of `A` and `B` the
    /// product reads, converted to `format` (each converted buffer keeps the layout of its
    /// operand), then one mixed-precision GEMM into the `f32` `C` (crate::ops::precision).
    fn run_half<E, A, B, C>(
        &self,
        device: &GpuDevice,
        op: &'static str,
        format: HalfFormat,
        (a, a_span): (&A, usize),
        (b, b_span): (&B, usize),
        c: &mut C,
    ) -> Result<(), GpuError>
    where
        E: GpuElement,
        A: DevicePtr<E>,
        B: DevicePtr<E>,
        C: DevicePtrMut<E>,
    {
        let a = precision::to_half_bits(device, format, a, a_span)?;
        let b = precision::to_half_bits(device, format, b, b_span)?;
        self.run_from_half(device, op, format, &a, &b, c)
    }

    /// [`RowMajorGemm::run`] under `format` on `A` and `B` already in its 16-bit patterns (made
    /// once for several products), into the `f32` `C`: the bits [`RowMajorGemm::run`] gives for
    /// the operands those patterns round from.
    pub(crate) fn run_from_half<E, C>(
        &self,
        device: &GpuDevice,
        op: &'static str,
        format: HalfFormat,
        a: &DeviceBuffer<u16>,
        b: &DeviceBuffer<u16>,
        c: &mut C,
    ) -> Result<(), GpuError>
    where
        E: GpuElement,
        C: DevicePtrMut<E>,
    {
        let Some(config) = self.half_config(device, op, [a, b], c)? else {
            return Ok(());
        };
        // cuBLAS's `A` is our `B` and its `B` our `A` (see `column_major`).
        // SAFETY: every matrix of the configuration lies inside its buffer (`half_config`), the
        // pitches are at least the row lengths, and `gemm_strided_batched` refuses any element
        // type but f32.
        unsafe { precision::gemm_strided_batched(device, device.blas()?, format, config, b, a, c) }
    }
}

/// `y[a, c, p] = bias[c]` for `y` viewed as `[outer, channels, inner]`: the start of a product
/// that then accumulates onto it.
pub(crate) fn fill_bias<E: GpuElement>(
    device: &GpuDevice,
    bias: &CudaTensor<E>,
    y: &mut DeviceBuffer<E>,
    channels: usize,
    inner: usize,
) -> Result<(), GpuError> {
    let total = y.len();
    if total == 0 {
        return Ok(());
    }
    if bias.len() != channels
        || channels == 0
        || inner == 0
        || !total.is_multiple_of(channels * inner)
    {
        return Err(shape_error(
            "bias",
            format!(
                "internal error: a bias of {} elements for {total} outputs of {channels} channels",
                bias.len()
            ),
        ));
    }
    let function = device.function(&LINEAR, &format!("bias_fill_{}", E::SUFFIX))?;
    let config = elementwise_launch(total);
    let (total, channels, inner) = (total as i64, channels as i64, inner as i64);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(bias.slice())
        .arg(y.slice_mut())
        .arg(&total)
        .arg(&channels)
        .arg(&inner);
    // SAFETY: the argument list matches `bias_fill_<E>` in linear.cu; `y` holds `total` elements
    // and `bias` holds `channels`.
    unsafe { launch.launch(config) }.map_err(GpuError::driver("launching bias_fill"))?;
    Ok(())
}

/// Threads per block of `bias_grad`, `BIAS_THREADS` in linear.cu (its reduction tree needs
/// exactly this many).
const BIAS_THREADS: u32 = 256;

/// `db[c] = sum_{a, p} dy[a, c, p]` for `dy` viewed as `[outer, channels, inner]`, in a fixed
/// order (one block per channel, a fixed tree over its threads).
pub(crate) fn bias_gradient<E: GpuElement>(
    device: &GpuDevice,
    dy: &CudaTensor<E>,
    outer: usize,
    channels: usize,
    inner: usize,
) -> Result<DeviceBuffer<E>, GpuError> {
    let kernel = format!("bias_grad_{}", E::SUFFIX);
    launch_bias_grad(device, &kernel, dy.buffer(), [outer, channels, inner])
}

/// [`bias_gradient`] of `dy` stored as 16-bit patterns (a 16-bit convolution's `dy`, which the
/// BatchNorm after it wrote so: `super::conv_batch_norm::backward`), each widened exactly as it
/// is read: the bits [`bias_gradient`] gives over the widened `f32` values. Errors under an
/// element type other than `f32`.
pub(crate) fn bias_gradient_from_half<E: GpuElement>(
    device: &GpuDevice,
    dy: &HalfBits,
    outer: usize,
    channels: usize,
    inner: usize,
) -> Result<DeviceBuffer<E>, GpuError> {
    precision::require_f32::<E>(dy.format)?;
    let kernel = format!("bias_grad_f32_from_{}", dy.format.name());
    launch_bias_grad(device, &kernel, &dy.bits, [outer, channels, inner])
}

/// Launches `kernel`, a `bias_grad_*` of linear.cu, over `dy` (elements of type `X`) viewed as
/// `[outer, channels, inner]`, into a new `db [channels]` of type `E`.
fn launch_bias_grad<X: DeviceRepr, E: GpuElement>(
    device: &GpuDevice,
    kernel: &str,
    dy: &DeviceBuffer<X>,
    [outer, channels, inner]: [usize; 3],
) -> Result<DeviceBuffer<E>, GpuError> {
    if outer * channels * inner != dy.len() {
        return Err(shape_error(
            "bias",
            format!(
                "internal error: dy has {} elements, not {outer} x {channels} x {inner}",
                dy.len()
            ),
        ));
    }
    if dy.is_empty() {
        return device.alloc_zeros(channels);
    }
    // SAFETY: `bias_grad` writes each of the `channels` sums.
    let mut db = unsafe { device.alloc::<E>(channels) }?;
    let function = device.function(&LINEAR, kernel)?;
    let blocks = channels.min(1 << 16) as u32;
    let (outer, channels, inner) = (outer as i64, channels as i64, inner as i64);
    let mut launch = device.stream().launch_builder(&function);
    launch
        .arg(dy.slice())
        .arg(db.slice_mut())
        .arg(&outer)
        .arg(&channels)
        .arg(&inner);
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BIAS_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the argument list matches every `bias_grad_*` in linear.cu, whose `dy` elements
    // are `X` and `db` elements `E`; `dy` holds outer * channels * inner elements and `db`
    // holds `channels`; the block has BIAS_THREADS threads, the size of its shared tree.
    unsafe { launch.launch(config) }.map_err(GpuError::driver("launching bias_grad"))?;
    Ok(db)
}

/// `y = x w^T + b`, i.e. `y[n, o] = b[o] + sum_i x[n, i] w[o, i]`, for `x [N, in]`,
/// `w [out, in]` and an optional `b [out]`; `y [N, out]` (docs/architectures.md §4.0, the classifier heads).
/// Errors on any other shapes.
pub fn forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "linear";
    let sizes = LinearShape::new(OP, x.shape(), weight.shape())?;
    if let Some(b) = bias {
        sizes.check_bias(OP, b.shape())?;
    }
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = sizes;
    // SAFETY: the bias fill or the GEMM (beta 0, or zeros for in = 0) writes every element.
    let mut y = unsafe { device.alloc::<E>(rows * outputs) }?;
    if let Some(b) = bias {
        fill_bias(device, b, &mut y, outputs, 1)?;
    }
    forward_gemm(rows, inputs, outputs, bias.is_some()).run(
        device,
        OP,
        x.slice(),
        weight.slice(),
        y.slice_mut(),
    )?;
    CudaTensor::new(y, &[rows, outputs])
}

/// Gradients of [`forward`] given `dy = dL/dy [N, out]`: `dx = dy w [N, in]`,
/// `dw = dy^T x [out, in]` and, when `has_bias`, `db[o] = sum_n dy[n, o]` (a fixed-order
/// reduction). Errors when `dy` is not `[N, out]` for the `x [N, in]` and `w [out, in]` given.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    has_bias: bool,
) -> Result<LinearGrads<CudaTensor<E>>, GpuError> {
    const OP: &str = "linear_backward";
    let sizes = LinearShape::new(OP, x.shape(), weight.shape())?;
    sizes.check_grad(OP, grad_y.shape(), x.shape(), weight.shape())?;
    let LinearShape {
        rows,
        inputs,
        outputs,
    } = sizes;
    let grad_y = &precision::gradient_operand(device, grad_y)?;
    // SAFETY: the GEMM writes every element (zeros when out = 0).
    let mut dx = unsafe { device.alloc::<E>(rows * inputs) }?;
    input_grad_gemm(rows, inputs, outputs).run(
        device,
        OP,
        grad_y.slice(),
        weight.slice(),
        dx.slice_mut(),
    )?;
    // SAFETY: the GEMM writes every element (zeros when N = 0).
    let mut dw = unsafe { device.alloc::<E>(outputs * inputs) }?;
    weight_grad_gemm(rows, inputs, outputs).run(
        device,
        OP,
        grad_y.slice(),
        x.slice(),
        dw.slice_mut(),
    )?;
    let bias = if has_bias {
        let db = bias_gradient(device, grad_y, rows, outputs, 1)?;
        Some(CudaTensor::new(db, &[outputs])?)
    } else {
        None
    };
    Ok(LinearGrads {
        input: CudaTensor::new(dx, &[rows, inputs])?,
        weight: CudaTensor::new(dw, &[outputs, inputs])?,
        bias,
    })
}

/// `c[b] = op_a(a[b]) op_b(b[b])` for every index `b` of the leading batch axes, which must be
/// equal in number and size (no broadcasting); `op_a` transposes the last two axes when
/// `transpose_a` (`a [..., k, m]`), else is the identity (`a [..., m, k]`), and likewise `op_b`
/// (`b [..., n, k]` or `b [..., k, n]`). Returns `c [..., m, n]`, one strided batched GEMM
/// (docs/architectures.md §4.0: `q k^T` and `attn v`). Errors on fewer than two axes, unequal batch axes or
/// unequal inner sizes `k`.
pub fn batched_matmul<E: GpuElement>(
    device: &GpuDevice,
    a: &CudaTensor<E>,
    b: &CudaTensor<E>,
    transpose_a: bool,
    transpose_b: bool,
) -> Result<CudaTensor<E>, GpuError> {
    let (shape, gemm) = batched_layout(a.shape(), b.shape(), transpose_a, transpose_b)?;
    // SAFETY: the GEMM writes every element (zeros when k = 0).
    let mut c = unsafe { device.alloc::<E>(shape.iter().product()) }?;
    gemm.run(
        device,
        "batched_matmul",
        a.slice(),
        b.slice(),
        c.slice_mut(),
    )?;
    CudaTensor::new(c, &shape)
}

/// `y [N, out] = x [N, in] w^T` (`+=` onto the bias with `accumulate`).
fn forward_gemm(rows: usize, inputs: usize, outputs: usize, accumulate: bool) -> RowMajorGemm {
    RowMajorGemm {
        m: rows,
        n: outputs,
        k: inputs,
        batch: 1,
        a: Operand {
            transposed: false,
            ld: inputs,
            stride: 0,
        },
        b: Operand {
            transposed: true,
            ld: inputs,
            stride: 0,
        },
        c_ld: outputs,
        c_stride: 0,
        accumulate,
    }
}

/// `dx [N, in] = dy [N, out] w [out, in]`.
fn input_grad_gemm(rows: usize, inputs: usize, outputs: usize) -> RowMajorGemm {
    RowMajorGemm {
        m: rows,
        n: inputs,
        k: outputs,
        batch: 1,
        a: Operand {
            transposed: false,
            ld: outputs,
            stride: 0,
        },
        b: Operand {
            transposed: false,
            ld: inputs,
            stride: 0,
        },
        c_ld: inputs,
        c_stride: 0,
        accumulate: false,
    }
}

/// `dw [out, in] = dy^T x` with `dy [N, out]` and `x [N, in]`.
fn weight_grad_gemm(rows: usize, inputs: usize, outputs: usize) -> RowMajorGemm {
    RowMajorGemm {
        m: outputs,
        n: inputs,
        k: rows,
        batch: 1,
        a: Operand {
            transposed: true,
            ld: outputs,
            stride: 0,
        },
        b: Operand {
            transposed: false,
            ld: inputs,
            stride: 0,
        },
        c_ld: inputs,
        c_stride: 0,
        accumulate: false,
    }
}

/// The output shape and the strided batched product of [`batched_matmul`], or the reference's
/// shape errors.
pub(crate) fn batched_layout(
    sa: &[usize],
    sb: &[usize],
    transpose_a: bool,
    transpose_b: bool,
) -> Result<(Vec<usize>, RowMajorGemm), GpuError> {
    let MatmulShape {
        batch,
        m,
        n,
        k,
        a_rows,
        a_cols,
        b_rows,
        b_cols,
        output_shape: shape,
    } = MatmulShape::new(sa, sb, transpose_a, transpose_b)?;
    let gemm = RowMajorGemm {
        m,
        n,
        k,
        batch,
        a: Operand {
            transposed: transpose_a,
            ld: a_cols,
            stride: a_rows * a_cols,
        },
        b: Operand {
            transposed: transpose_b,
            ld: b_cols,
            stride: b_rows * b_cols,
        },
        c_ld: n,
        c_stride: m * n,
        accumulate: false,
    };
    Ok((shape, gemm))
}

#[cfg(test)]
pub(crate) mod tests {
    //! The row-major descriptors against a host model of cuBLAS's column-major
    //! `gemmStridedBatched`, so the transposition logic is checked without a GPU.

    use super::*;
    use revsnn_reference::testing::SplitMix64;

    /// What cuBLAS computes for `config` (column-major: element `(i, j)` of a matrix at
    /// `i + j ld`), in f64.
    pub(crate) fn cublas_model(
        config: &StridedBatchedConfig<f64>,
        a: &[f64],
        b: &[f64],
        c: &mut [f64],
    ) {
        let g = &config.gemm;
        let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        let trans_a = g.transa == cublasOperation_t::CUBLAS_OP_T;
        let trans_b = g.transb == cublasOperation_t::CUBLAS_OP_T;
        assert!(lda >= if trans_a { k } else { m }.max(1), "lda too small");
        assert!(ldb >= if trans_b { n } else { k }.max(1), "ldb too small");
        assert!(ldc >= m.max(1), "ldc too small");
        for batch in 0..config.batch_size as usize {
            let (oa, ob, oc) = (
                batch * config.stride_a as usize,
                batch * config.stride_b as usize,
                batch * config.stride_c as usize,
            );
            for i in 0..m {
                for j in 0..n {
                    let mut sum = 0.0;
                    for l in 0..k {
                        let av = if trans_a {
                            a[oa + l + i * lda]
                        } else {
                            a[oa + i + l * lda]
                        };
                        let bv = if trans_b {
                            b[ob + j + l * ldb]
                        } else {
                            b[ob + l + j * ldb]
                        };
                        sum += av * bv;
                    }
                    let at = oc + i + j * ldc;
                    // beta = 0 does not read C (it may hold garbage), as in cuBLAS
                    c[at] = if g.beta == 0.0 {
                        g.alpha * sum
                    } else {
                        g.alpha * sum + g.beta * c[at]
                    };
                }
            }
        }
    }

    /// Runs `gemm` through the cuBLAS model after checking its spans fit the buffers.
    pub(crate) fn run_on_host(gemm: &RowMajorGemm, a: &[f64], b: &[f64], c: &mut [f64]) {
        let [sa, sb, sc] = gemm.spans("test").unwrap();
        assert!(sa <= a.len() && sb <= b.len() && sc <= c.len(), "{gemm:?}");
        // cuBLAS's `A` is our `B`, as in `RowMajorGemm::run`.
        cublas_model(&gemm.column_major::<f64>("test").unwrap(), b, a, c);
    }

    /// `[rows, cols]` row-major `m`, transposed.
    fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut t = vec![0.0; m.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = m[r * cols + c];
            }
        }
        t
    }

    /// `a [m, k] b [k, n]` row-major.
    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
            }
        }
        c
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn linear_descriptors_compute_the_reference_products() {
        let mut rng = SplitMix64::new(3);
        let (rows, inputs, outputs) = (5, 7, 3);
        let x = rng.normal_vec(rows * inputs, 1.0);
        let w = rng.normal_vec(outputs * inputs, 1.0);
        let dy = rng.normal_vec(rows * outputs, 1.0);
        let bias = rng.normal_vec(outputs, 1.0);

        let mut y: Vec<f64> = (0..rows * outputs).map(|i| bias[i % outputs]).collect();
        run_on_host(&forward_gemm(rows, inputs, outputs, true), &x, &w, &mut y);
        let mut expected = naive(&x, &transpose(&w, outputs, inputs), rows, inputs, outputs);
        expected
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += bias[i % outputs]);
        close(&y, &expected);

        let mut dx = vec![f64::NAN; rows * inputs];
        run_on_host(&input_grad_gemm(rows, inputs, outputs), &dy, &w, &mut dx);
        close(&dx, &naive(&dy, &w, rows, outputs, inputs));

        let mut dw = vec![f64::NAN; outputs * inputs];
        run_on_host(&weight_grad_gemm(rows, inputs, outputs), &dy, &x, &mut dw);
        close(
            &dw,
            &naive(&transpose(&dy, rows, outputs), &x, outputs, rows, inputs),
        );
    }

    #[test]
    fn batched_descriptors_compute_every_transpose_combination() {
        let mut rng = SplitMix64::new(4);
        let (batch, m, k, n) = (3, 4, 5, 2);
        for transpose_a in [false, true] {
            for transpose_b in [false, true] {
                let sa = if transpose_a {
                    [batch, k, m]
                } else {
                    [batch, m, k]
                };
                let sb = if transpose_b {
                    [batch, n, k]
                } else {
                    [batch, k, n]
                };
                let a = rng.normal_vec(batch * m * k, 1.0);
                let b = rng.normal_vec(batch * k * n, 1.0);
                let (shape, gemm) = batched_layout(&sa, &sb, transpose_a, transpose_b).unwrap();
                assert_eq!(shape, [batch, m, n]);
                let mut c = vec![f64::NAN; batch * m * n];
                run_on_host(&gemm, &a, &b, &mut c);
                for i in 0..batch {
                    let a_i = &a[i * m * k..(i + 1) * m * k];
                    let b_i = &b[i * k * n..(i + 1) * k * n];
                    let a_i = if transpose_a {
                        transpose(a_i, k, m)
                    } else {
                        a_i.to_vec()
                    };
                    let b_i = if transpose_b {
                        transpose(b_i, n, k)
                    } else {
                        b_i.to_vec()
                    };
                    close(&c[i * m * n..(i + 1) * m * n], &naive(&a_i, &b_i, m, k, n));
                }
            }
        }
    }

    #[test]
    fn batched_layout_rejects_what_the_reference_rejects() {
        assert!(batched_layout(&[3], &[3], false, false).is_err());
        assert!(batched_layout(&[2, 3, 4], &[3, 4, 5], false, false).is_err());
        assert!(batched_layout(&[2, 3, 4], &[4, 5], false, false).is_err());
        assert!(batched_layout(&[2, 3, 4], &[2, 5, 4], false, false).is_err());
        let (shape, gemm) = batched_layout(&[2, 3, 4], &[2, 5, 4], false, true).unwrap();
        assert_eq!(shape, [2, 3, 5]);
        assert_eq!(gemm.batch, 2);
        let (shape, gemm) = batched_layout(&[4, 3], &[4, 6], true, false).unwrap();
        assert_eq!((shape, gemm.batch), (vec![3, 6], 1));
    }

    #[test]
    fn spans_catch_short_pitches_and_sizes_that_overflow_cublas() {
        let mut gemm = forward_gemm(4, 3, 2, false);
        assert_eq!(gemm.spans("test").unwrap(), [12, 6, 8]);
        gemm.a.ld = 2;
        assert!(gemm.spans("test").is_err());
        let huge = forward_gemm(1 << 31, 1, 1, false);
        assert!(huge.column_major::<f32>("test").is_err());
    }
}
