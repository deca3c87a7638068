//! 2-D convolution on the GPU (docs/conventions.md §1; docs/architectures.md §4.0); twin of
//! `reference/src/ops/conv/` (the CPU's sparse-spike path is its submodule; this one's are its
//! two engines). The engines ([`ConvEngine`], chosen per device): cuDNN's deterministic
//! algorithms ([`cudnn`]), the default when cuDNN loads, and im2col + cuBLAS GEMM ([`im2col`]).
//! Both share the operand checks, the bias (its fill and gradient kernels in
//! `gpu/kernels/linear.cu`) and the context; a shape cuDNN has no deterministic algorithm for runs
//! on im2col. A pointwise (1x1, stride 1, unpadded) convolution's forward and input gradient are
//! single GEMMs on cuBLAS with either engine (on the H200, 122 us against cuDNN's 270 us for 384 ->
//! 1536 channels at 8x8 over 256 images, TF32); its weight gradient follows the engine. Under bf16
//! and fp16 the forward's GEMM, and on cuDNN's engine the input gradient's, read 16-bit operands
//! and write 16-bit outputs (docs/precision.md §"CUDA").
//!
//! **Determinism.** Both engines give the same bits run to run on one GPU: cuDNN runs only its
//! deterministic algorithms ([`cudnn`]), and cuBLAS on the device's one stream uses no atomics
//! (f32, TF32 or 16-bit operands); the im2col engine's chunk order is in [`im2col`].

use std::sync::Arc;

use revsnn_reference::contract::{Conv2dGeometry, Conv2dGrads, Conv2dParams};

use super::linear::{Operand, RowMajorGemm, bias_gradient, bias_gradient_from_half, fill_bias};
use super::precision::{self, HalfBits, HalfFormat};
use super::saved_input::SavedInput;
use super::{GpuElement, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

pub mod cudnn;
pub mod im2col;

use im2col::{im2col_backward, im2col_forward};

use cudnn::DataTypes;

const OP: &str = "conv2d";

/// How a device runs its convolutions ([`GpuDevice::set_conv_engine`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvEngine {
    /// cuDNN's first deterministic algorithm by its heuristics, per shape ([`cudnn`]); pointwise
    /// forwards and input gradients as one cuBLAS GEMM.
    Cudnn,
    /// im2col + cuBLAS GEMM over chunks of images ([`im2col`]).
    Im2colGemm,
}

impl ConvEngine {
    /// The name `REVSNN_CONV_ENGINE` and reports use: `cudnn` or `im2col`.
    pub fn name(self) -> &'static str {
        match self {
            ConvEngine::Cudnn => "cudnn",
            ConvEngine::Im2colGemm => "im2col",
        }
    }
}

impl std::str::FromStr for ConvEngine {
    type Err = GpuError;

    fn from_str(value: &str) -> Result<Self, GpuError> {
        match value {
            "cudnn" => Ok(ConvEngine::Cudnn),
            "im2col" => Ok(ConvEngine::Im2colGemm),
            _ => Err(GpuError::Setting {
                name: crate::device::CONV_ENGINE_VARIABLE,
                value: value.to_string(),
                expected: "cudnn, im2col",
            }),
        }
    }
}

/// What [`backward`] needs: the input (as [`SavedInput`] says) and the weight (shared with the
/// caller, not copied), whether there was a bias, and the geometry.
#[derive(Debug)]
pub struct Conv2dContext<E> {
    pub input: SavedInput<E>,
    pub weight: CudaTensor<E>,
    pub has_bias: bool,
    pub params: Conv2dParams,
}

/// The checked sizes of one convolution (the contract's [`Conv2dGeometry`], so both backends
/// accept and reject the same shapes), with the GEMMs both engines run; [`im2col`] adds its
/// chunking and its GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry(Conv2dGeometry);

impl std::ops::Deref for Geometry {
    type Target = Conv2dGeometry;

    fn deref(&self) -> &Conv2dGeometry {
        &self.0
    }
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], params: Conv2dParams) -> Result<Self, GpuError> {
        Ok(Geometry(Conv2dGeometry::new(x, weight, params)?))
    }

    /// The forward's sizes, from its backward's context.
    fn of_context<E: GpuElement>(context: &Conv2dContext<E>) -> Result<Self, GpuError> {
        let (x, weight) = (context.input.shape(), context.weight.shape());
        Geometry::new(x, weight, context.params)
    }

    /// A backward's `dx`, `dw` and `db` as tensors of the input's, weight's and bias's shapes.
    fn gradients<E: GpuElement>(
        &self,
        dx: DeviceBuffer<E>,
        dw: DeviceBuffer<E>,
        bias: Option<CudaTensor<E>>,
    ) -> Result<Conv2dGrads<CudaTensor<E>>, GpuError> {
        Ok(Conv2dGrads {
            input: CudaTensor::new(dx, &self.input_shape())?,
            weight: CudaTensor::new(dw, &self.weight_shape())?,
            bias,
        })
    }

    /// `y[n] = W cols[:, n, :]` for `batch` images, `W [C_out, K]` shared by all, the columns
    /// `[K, batch P]` (or, `direct`, the input images `[batch, C_in, P]` themselves), into
    /// `y [batch, C_out, P]`; `accumulate` adds onto the bias already there.
    fn forward_gemm(&self, batch: usize, direct: bool, accumulate: bool) -> RowMajorGemm {
        let (p, k) = (self.p(), self.k());
        let columns = if direct {
            Operand {
                transposed: false,
                ld: p,
                stride: k * p,
            }
        } else {
            Operand {
                transposed: false,
                ld: batch * p,
                stride: p,
            }
        };
        RowMajorGemm {
            m: self.c_out,
            n: p,
            k,
            batch,
            a: Operand {
                transposed: false,
                ld: k,
                stride: 0,
            },
            b: columns,
            c_ld: p,
            c_stride: self.out_len(),
            accumulate,
        }
    }

    /// A 1x1 stride-1 unpadded convolution's `dx[n] = W^T dy[n]` for all `N` images:
    /// `W [C_out, C_in]`, `dy [N, C_out, P]`, `dx [N, C_in, P]`.
    fn pointwise_input_grad_gemm(&self) -> RowMajorGemm {
        let p = self.p();
        RowMajorGemm {
            m: self.c_in,
            n: p,
            k: self.c_out,
            batch: self.n,
            a: Operand {
                transposed: true,
                ld: self.c_in,
                stride: 0,
            },
            b: Operand {
                transposed: false,
                ld: p,
                stride: self.out_len(),
            },
            c_ld: p,
            c_stride: self.in_len(),
            accumulate: false,
        }
    }
}

/// `y[n, o, p, q] = bias[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, c, stride p + i, stride q + j]`
/// for `x [N, C_in, H, W]`, `w [C_out, C_in, k_h, k_w]`, `bias [C_out]`, zero padding on every
/// side; `y [N, C_out, H_out, W_out]` with `H_out = floor((H + 2 padding - k_h) / stride) + 1`
/// (docs/conventions.md §1; docs/architectures.md §4.0). Errors, as the reference does, on a stride of 0, a kernel larger than the
/// padded input, a channel mismatch, an empty kernel or channel axis, or a bias that is not
/// `[C_out]`.
pub fn forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    params: Conv2dParams,
) -> Result<(CudaTensor<E>, Conv2dContext<E>), GpuError> {
    let g = Geometry::new(x.shape(), weight.shape(), params)?;
    if let Some(b) = bias {
        g.check_bias(b.shape())?;
    }
    // Under a 16-bit precision the stored sums come first: the output is allocated once the
    // 16-bit operand the product made from spike bits is freed.
    let (stored, input) = match device.half_format() {
        Some(format) => {
            let (sums, input) = half_forward(device, &g, format, x.clone(), weight)?;
            (Some((format, sums)), input)
        }
        None => (None, SavedInput::compact(device, x)?),
    };
    // SAFETY: the widening, cuDNN, or the GEMMs of every chunk write every element (onto the
    // bias fill when there is one).
    let mut y = unsafe { device.alloc::<E>(g.n * g.out_len()) }?;
    if let Some(b) = bias {
        fill_bias(device, b, &mut y, g.c_out, g.p())?;
    }
    let accumulate = bias.is_some();
    let y = match stored {
        None => {
            full_forward(device, &g, x, weight, &mut y, accumulate)?;
            CudaTensor::new(y, &g.output_shape())?
        }
        Some((format, sums)) => {
            precision::widen_into(device, format, &sums, &mut y, accumulate)?;
            // Without a bias `y` holds exactly the stored sums: the next op may keep those.
            match bias {
                None => {
                    CudaTensor::widened_from(y, &g.output_shape(), HalfBits { bits: sums, format })?
                }
                Some(_) => CudaTensor::new(y, &g.output_shape())?,
            }
        }
    };
    let context = Conv2dContext {
        input,
        weight: weight.clone(),
        has_bias: bias.is_some(),
        params,
    };
    Ok((y, context))
}

/// [`forward`]'s output as the BatchNorm after it keeps it ([`SavedInput::exact`]), with the
/// context: under a 16-bit precision the stored sums alone, never widened into the element type
/// (docs/precision.md §"Convolution outputs"), with the bias beside them when there is one
/// ([`SavedInput::BiasedHalf`]: the kernels that read the output add it as they load each sum);
/// else the output itself. `x` is handed over, so that spikes can be freed once their bits exist.
pub(crate) fn forward_kept<E: GpuElement>(
    device: &GpuDevice,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
    bias: Option<&CudaTensor<E>>,
    params: Conv2dParams,
) -> Result<(SavedInput<E>, Conv2dContext<E>), GpuError> {
    let Some(format) = device.half_format() else {
        let (y, context) = forward(device, &x, weight, bias, params)?;
        return Ok((SavedInput::exact(&y), context));
    };
    let g = Geometry::new(x.shape(), weight.shape(), params)?;
    if let Some(b) = bias {
        g.check_bias(b.shape())?;
    }
    let (sums, input) = half_forward(device, &g, format, x, weight)?;
    let sums = Arc::new(HalfBits { bits: sums, format });
    let shape = g.output_shape().to_vec();
    let output = match bias {
        None => SavedInput::Half { bits: sums, shape },
        Some(bias) => SavedInput::BiasedHalf {
            sums,
            bias: bias.clone(),
            shape,
        },
    };
    let context = Conv2dContext {
        input,
        weight: weight.clone(),
        has_bias: bias.is_some(),
        params,
    };
    Ok((output, context))
}

/// Gradients of [`forward`] given `dy = dL/dy [N, C_out, H_out, W_out]`:
/// `dx[n, c, h, w] = sum_{o, i, j, p, q: stride p + i - padding = h, stride q + j - padding = w} w[o, c, i, j] dy[n, o, p, q]`,
/// `dw[o, c, i, j] = sum_{n, p, q} dy[n, o, p, q] x_pad[n, c, stride p + i, stride q + j]` and
/// `db[o] = sum_{n, p, q} dy[n, o, p, q]` (present iff the forward had a bias), each the same bits
/// run to run. Under `bf16` and `fp16`, `y` is the bias plus the sums stored in the 16-bit format,
/// and `dx` and `dw` are stored too (docs/precision.md §"Convolution outputs"). Errors when `dy`
/// does not have the forward's output shape.
pub fn backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: CudaTensor<E>,
    context: &Conv2dContext<E>,
) -> Result<Conv2dGrads<CudaTensor<E>>, GpuError> {
    let g = Geometry::of_context(context)?;
    g.check_grad(grad_y.shape())?;
    // The bias gradient first: under a 16-bit precision it sums the rounded `dy`
    // (`gradient_operand`), and `dy` then gives way to its 16-bit copy before any pass allocates.
    let bias = if context.has_bias {
        let rounded = precision::gradient_operand(device, &grad_y)?;
        let db = bias_gradient(device, &rounded, g.n, g.c_out, g.p())?;
        Some(CudaTensor::new(db, &[g.c_out])?)
    } else {
        None
    };
    let (x, weight) = (&context.input, &context.weight);
    let (dx, dw) = match device.half_format() {
        None => full_backward(device, &g, x, weight, &grad_y)?,
        Some(format) => {
            let dy_half = stored(device, format, grad_y.buffer())?;
            drop(grad_y);
            let (dx, dw) =
                half_backward(device, &g, format, HeldInput::Borrowed(x), weight, dy_half)?;
            (precision::widened(device, format, &dx)?, dw)
        }
    };
    g.gradients(dx, dw, bias)
}

/// [`backward`] under `format`, given `dy` already as `format`'s 16-bit patterns (the BatchNorm
/// after the convolution writes them: `batch_norm::backward_stored`), with `dx` left as its
/// 16-bit patterns for the caller to widen or read (`conv_batch_norm::backward`,
/// `spiking_backward`). The gradients are the bits [`backward`] gives for the `f32` `dy` those
/// patterns round from, the bias's summed over the patterns as they are widened
/// ([`bias_gradient_from_half`]). The context is handed over, so its saved input is freed once
/// both passes have read it, before `dw` is widened. Errors when `dy` does not hold the
/// output's elements.
pub(crate) fn backward_stored<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    dy: DeviceBuffer<u16>,
    context: Conv2dContext<E>,
) -> Result<StoredGrads<E>, GpuError> {
    let g = Geometry::of_context(&context)?;
    if dy.len() != g.n * g.out_len() {
        let detail = format!(
            "internal error: a 16-bit dy of {} elements for an output of {:?}",
            dy.len(),
            g.output_shape()
        );
        return Err(shape_error("conv2d_backward", detail));
    }
    let dy = HalfBits { bits: dy, format };
    let bias = if context.has_bias {
        let db = bias_gradient_from_half(device, &dy, g.n, g.c_out, g.p())?;
        Some(CudaTensor::new(db, &[g.c_out])?)
    } else {
        None
    };
    let Conv2dContext { input, weight, .. } = context;
    let held = HeldInput::Owned(input);
    let (dx, dw) = half_backward(device, &g, format, held, &weight, dy.bits)?;
    Ok(StoredGrads {
        input: HalfBits { bits: dx, format },
        input_shape: g.input_shape().to_vec(),
        weight: CudaTensor::new(dw, &g.weight_shape())?,
        bias,
    })
}

/// What [`backward_stored`] returns: `dx` as 16-bit patterns, with the input's shape, `dw`, and
/// `db` when the forward had a bias.
pub(crate) struct StoredGrads<E> {
    pub input: HalfBits,
    pub input_shape: Vec<usize>,
    pub weight: CudaTensor<E>,
    pub bias: Option<CudaTensor<E>>,
}

/// Whether this device's convolutions go to cuDNN ([`GpuDevice::conv_engine`]).
fn uses_cudnn(device: &GpuDevice) -> bool {
    device.conv_engine() == ConvEngine::Cudnn
}

/// `y (+)= conv(x, w)` in the element type: by cuDNN on its engine, else (or when cuDNN has no
/// deterministic algorithm) by im2col; a pointwise forward is one cuBLAS GEMM with either engine.
fn full_forward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    y: &mut DeviceBuffer<E>,
    accumulate: bool,
) -> Result<(), GpuError> {
    let types = DataTypes::of::<E>();
    let by_cudnn = g.n > 0
        && uses_cudnn(device)
        && !g.pointwise()
        && cudnn::forward(
            device,
            g,
            types,
            x.slice(),
            weight.slice(),
            y.slice_mut(),
            accumulate,
        )?;
    if !by_cudnn {
        im2col_forward(device, g, x, weight, y, accumulate)?;
    }
    Ok(())
}

/// The sums `conv(x, w)` of a 16-bit precision, stored in `format`: written so by cuBLAS for a
/// pointwise forward (either engine) and by cuDNN's 16-bit configuration on its engine, or
/// summed in `f32` by the im2col engine's GEMMs and rounded. With the input as the backward
/// keeps it: spikes a bit each, else the 16-bit copy the product read, else `x`. Spikes handed
/// over alone are freed once their bits exist, before the product's buffers are allocated.
fn half_forward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    format: HalfFormat,
    x: CudaTensor<E>,
    weight: &CudaTensor<E>,
) -> Result<(DeviceBuffer<u16>, SavedInput<E>), GpuError> {
    if g.n == 0 || !(uses_cudnn(device) || g.pointwise()) {
        return gemm_half_forward(device, g, format, &x, weight);
    }
    let (input, x) = kept_half_input(device, format, x)?;
    let w16 = weight.rounded_half(device, format)?;
    // SAFETY: the product writes every element when it runs; the buffer is dropped when it does
    // not.
    let mut y16 = unsafe { device.alloc::<u16>(g.n * g.out_len()) }?;
    let ran = {
        let x16 = input.half(device, format)?;
        if g.pointwise() {
            let gemm = g.forward_gemm(g.n, true, false);
            gemm.run_stored(device, OP, format, &w16.bits, x16.buffer(), &mut y16)?;
            true
        } else {
            let (x16, w16) = (x16.buffer().slice(), w16.bits.slice());
            let types = DataTypes::half(format);
            cudnn::forward(device, g, types, x16, w16, y16.slice_mut(), false)?
        }
    };
    if ran {
        return Ok((y16, input));
    }
    // cuDNN has no algorithm for this shape: the GEMMs, over the spikes widened back if need be.
    let x = match x {
        Some(x) => x,
        None => input.full(device)?.into_spikes(),
    };
    gemm_half_forward(device, g, format, &x, weight)
}

/// The input of a 16-bit forward as its backward keeps it, made first: spikes a bit each, from
/// which the 16-bit operand is then made (a 32nd of the `f32` bytes read again, not all of them),
/// and `x` itself freed; anything else its 16-bit copy, which the product reads and the context
/// keeps, with `x` handed back for a fallback.
fn kept_half_input<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    x: CudaTensor<E>,
) -> Result<(SavedInput<E>, Option<CudaTensor<E>>), GpuError> {
    if x.is_spikes() {
        let input = SavedInput::compact(device, &x)?;
        return Ok((input, None));
    }
    let bits = Arc::new(HalfBits {
        bits: stored(device, format, x.buffer())?,
        format,
    });
    let shape = x.shape().to_vec();
    Ok((SavedInput::Half { bits, shape }, Some(x)))
}

/// [`half_forward`] by the GEMMs of the im2col engine over `x`, their `f32` sums rounded.
fn gemm_half_forward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    format: HalfFormat,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
) -> Result<(DeviceBuffer<u16>, SavedInput<E>), GpuError> {
    // SAFETY: the GEMMs write every element.
    let mut sums = unsafe { device.alloc::<E>(g.n * g.out_len()) }?;
    im2col_forward(device, g, x, weight, &mut sums, false)?;
    Ok((
        stored(device, format, &sums)?,
        SavedInput::compact(device, x)?,
    ))
}

/// `x` converted to `format`'s 16-bit patterns.
fn stored<E: GpuElement>(
    device: &GpuDevice,
    format: HalfFormat,
    x: &DeviceBuffer<E>,
) -> Result<DeviceBuffer<u16>, GpuError> {
    precision::to_half_bits(device, format, x.slice(), x.len())
}

/// A convolution's `dx` and `dw`.
type Gradients<E> = (DeviceBuffer<E>, DeviceBuffer<E>);

/// A 16-bit backward's `dx` as `format`'s 16-bit patterns and its `dw` widened.
type HalfGradients<E> = (DeviceBuffer<u16>, DeviceBuffer<E>);

/// Buffers for `dx` and `dw`, for a pass that writes every element (`dw` zero without images).
fn gradient_buffers<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
) -> Result<Gradients<E>, GpuError> {
    // SAFETY: the caller's pass writes every element.
    let dx = unsafe { device.alloc::<E>(g.n * g.in_len()) }?;
    let dw = if g.n == 0 {
        device.alloc_zeros::<E>(g.c_out * g.k())?
    } else {
        // SAFETY: as above.
        unsafe { device.alloc::<E>(g.c_out * g.k()) }?
    };
    Ok((dx, dw))
}

/// `dx` and `dw` in the element type: by cuDNN on its engine, else (or when cuDNN has no
/// deterministic algorithm) by im2col.
fn full_backward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    x: &SavedInput<E>,
    weight: &CudaTensor<E>,
    grad_y: &CudaTensor<E>,
) -> Result<Gradients<E>, GpuError> {
    match cudnn_backward(device, g, x, weight, grad_y)? {
        Some(grads) => Ok(grads),
        None => im2col_gradients(device, g, x, weight, grad_y),
    }
}

/// The im2col engine's `dx` and `dw` in `f32` sums, over `x` in the element type.
fn im2col_gradients<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    x: &SavedInput<E>,
    weight: &CudaTensor<E>,
    grad_y: &CudaTensor<E>,
) -> Result<Gradients<E>, GpuError> {
    let (mut dx, mut dw) = gradient_buffers(device, g)?;
    let x = x.full(device)?;
    im2col_backward(device, g, &x, weight, grad_y, &mut dx, &mut dw)?;
    Ok((dx, dw))
}

/// `dx` and `dw` of a 16-bit precision from the rounded 16-bit `dy_half`, stored in `format`
/// (`dw` read back as `f32`, `dx` left in 16 bits): by cuDNN's 16-bit configuration, or summed
/// in `f32` by the im2col engine over `dy_half` widened (its GEMMs round it back to the same
/// bits) and rounded.
fn half_backward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    format: HalfFormat,
    x: HeldInput<'_, E>,
    weight: &CudaTensor<E>,
    dy_half: DeviceBuffer<u16>,
) -> Result<HalfGradients<E>, GpuError> {
    let (dy_half, x) = match cudnn_half_backward(device, g, format, x, weight, dy_half)? {
        HalfPasses::Ran(grads) => return Ok(grads),
        HalfPasses::NotRun(dy_half, x) => (dy_half, x),
    };
    let grad_y = precision::widened_tensor(device, format, &dy_half, &g.output_shape())?;
    drop(dy_half);
    let (dx, dw) = im2col_gradients(device, g, &x, weight, &grad_y)?;
    drop((grad_y, x));
    let dx = stored(device, format, &dx)?;
    Ok((dx, precision::rounded_buffer(device, &dw, format)?))
}

/// A convolution's saved input as a backward receives it: borrowed from a context that outlives
/// the backward, or handed over with the context, and then freed once the passes that read it
/// have run.
enum HeldInput<'a, E> {
    Borrowed(&'a SavedInput<E>),
    Owned(SavedInput<E>),
}

impl<E> std::ops::Deref for HeldInput<'_, E> {
    type Target = SavedInput<E>;

    fn deref(&self) -> &SavedInput<E> {
        match self {
            HeldInput::Borrowed(input) => input,
            HeldInput::Owned(input) => input,
        }
    }
}

/// What [`cudnn_half_backward`] did: both passes, or not both (the im2col engine must then write
/// `dx` and `dw`), handing the 16-bit `dy` and the input back.
enum HalfPasses<'a, E> {
    Ran(HalfGradients<E>),
    NotRun(DeviceBuffer<u16>, HeldInput<'a, E>),
}

/// The cuDNN engine's `dx` and `dw` ([`cudnn_backward`]) in cuDNN's 16-bit configuration from
/// the 16-bit `dy_half`, `dw` read back as `f32` (a pointwise `dx` is one GEMM over `dy_half`
/// that writes it in 16 bits). [`HalfPasses::NotRun`] when the device's engine is im2col or
/// cuDNN has no deterministic algorithm.
fn cudnn_half_backward<'a, E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    format: HalfFormat,
    x: HeldInput<'a, E>,
    weight: &CudaTensor<E>,
    dy_half: DeviceBuffer<u16>,
) -> Result<HalfPasses<'a, E>, GpuError> {
    if g.n == 0 || !uses_cudnn(device) {
        return Ok(HalfPasses::NotRun(dy_half, x));
    }
    let types = DataTypes::half(format);
    // SAFETY: cuDNN writes every element when it runs; the buffer is dropped when it does not.
    let mut dw16 = unsafe { device.alloc::<u16>(g.c_out * g.k()) }?;
    // The 16-bit x (made from the spike bits, or from x when the context kept no 16-bit copy)
    // lives for the filter pass only, and the 16-bit dy until dx's pass: neither stays beside
    // the f32 gradients. Nor does a handed-over input, once no pass falls back to im2col.
    let x_half = x.half(device, format)?;
    let (x16, dy16) = (x_half.buffer().slice(), dy_half.slice());
    let filtered = cudnn::backward_filter(device, g, types, x16, dy16, dw16.slice_mut())?;
    drop(x_half);
    if !filtered {
        return Ok(HalfPasses::NotRun(dy_half, x));
    }
    let dx = if g.pointwise() {
        drop(x);
        let w_half = weight.rounded_half(device, format)?;
        // SAFETY: the GEMM writes every element.
        let mut dx16 = unsafe { device.alloc::<u16>(g.n * g.in_len()) }?;
        let gemm = g.pointwise_input_grad_gemm();
        gemm.run_stored(device, OP, format, &w_half.bits, &dy_half, &mut dx16)?;
        dx16
    } else {
        let w_half = weight.rounded_half(device, format)?;
        // SAFETY: as for `dw16`.
        let mut dx16 = unsafe { device.alloc::<u16>(g.n * g.in_len()) }?;
        let (dy16, w16) = (dy_half.slice(), w_half.bits.slice());
        let ran = cudnn::backward_data(device, g, types, dy16, w16, dx16.slice_mut())?;
        if !ran {
            return Ok(HalfPasses::NotRun(dy_half, x));
        }
        drop((dy_half, x));
        dx16
    };
    let dw = precision::widened(device, format, &dw16)?;
    Ok(HalfPasses::Ran((dx, dw)))
}

/// The cuDNN engine's `dx` and `dw`: `dw` by cuDNN, `dx` by cuDNN or, for a pointwise
/// convolution, by one GEMM on cuBLAS (the twin of its forward). `None` when the device's
/// engine is im2col or cuDNN has no deterministic algorithm, and the im2col engine must write
/// both.
fn cudnn_backward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    x: &SavedInput<E>,
    weight: &CudaTensor<E>,
    grad_y: &CudaTensor<E>,
) -> Result<Option<Gradients<E>>, GpuError> {
    if g.n == 0 || !uses_cudnn(device) {
        return Ok(None);
    }
    let types = DataTypes::of::<E>();
    // SAFETY: the pass that follows writes every element; the buffer is dropped when it does
    // not run.
    let mut dw = unsafe { device.alloc::<E>(g.c_out * g.k()) }?;
    // x in the element type (widened from the spike bits when the context kept those) lives
    // for the filter pass only, not beside `dx`.
    let x = x.full(device)?;
    let filtered =
        cudnn::backward_filter(device, g, types, x.slice(), grad_y.slice(), dw.slice_mut())?;
    drop(x);
    if !filtered {
        return Ok(None);
    }
    // SAFETY: as for `dw`.
    let mut dx = unsafe { device.alloc::<E>(g.n * g.in_len()) }?;
    let ran = if g.pointwise() {
        pointwise_input_grad(device, g, weight, grad_y, &mut dx)?;
        true
    } else {
        let (dy, w) = (grad_y.slice(), weight.slice());
        cudnn::backward_data(device, g, types, dy, w, dx.slice_mut())?
    };
    Ok(ran.then_some((dx, dw)))
}

/// A pointwise convolution's `dx[n] = W^T dy[n]` for all `N` images: one strided batched GEMM
/// on cuBLAS, with either engine.
fn pointwise_input_grad<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    weight: &CudaTensor<E>,
    grad_y: &CudaTensor<E>,
    dx: &mut DeviceBuffer<E>,
) -> Result<(), GpuError> {
    let gemm = g.pointwise_input_grad_gemm();
    gemm.run(device, OP, weight.slice(), grad_y.slice(), dx.slice_mut())
}

#[cfg(test)]
mod tests {
    //! The geometry's checks against the reference's and the engines' names, without a GPU.

    use super::*;

    #[test]
    fn geometry_validates_as_the_reference_does() {
        let ok =
            |x: [usize; 4], w: [usize; 4], s, p| Geometry::new(&x, &w, Conv2dParams::new(s, p));
        assert!(ok([2, 3, 8, 8], [4, 3, 3, 3], 0, 1).is_err(), "stride 0");
        assert!(
            ok([2, 3, 2, 2], [4, 3, 3, 3], 1, 0).is_err(),
            "kernel larger than the input"
        );
        assert!(
            ok([2, 3, 8, 8], [4, 2, 3, 3], 1, 1).is_err(),
            "channel mismatch"
        );
        assert!(ok([2, 0, 8, 8], [4, 0, 3, 3], 1, 1).is_err(), "no channels");
        assert!(
            ok([2, 3, 8, 8], [0, 3, 3, 3], 1, 1).is_err(),
            "no output channels"
        );
        assert!(Geometry::new(&[3, 8, 8], &[4, 3, 3, 3], Conv2dParams::new(1, 1)).is_err());
        let g = ok([2, 3, 8, 7], [4, 3, 3, 3], 2, 1).unwrap();
        assert_eq!((g.h_out, g.w_out, g.k(), g.p()), (4, 4, 27, 16));
        assert!(ok([0, 3, 8, 8], [4, 3, 3, 3], 1, 1).unwrap().n == 0);
        assert!(ok([1, 3, 8, 8], [4, 3, 1, 1], 1, 0).unwrap().pointwise());
        assert!(!ok([1, 3, 8, 8], [4, 3, 1, 1], 1, 1).unwrap().pointwise());
    }

    #[test]
    fn engine_names_parse_back_and_unknown_names_say_what_to_use() {
        for engine in [ConvEngine::Cudnn, ConvEngine::Im2colGemm] {
            assert_eq!(engine.name().parse::<ConvEngine>().unwrap(), engine);
        }
        let message = "winograd".parse::<ConvEngine>().unwrap_err().to_string();
        assert!(
            message.contains("REVSNN_CONV_ENGINE")
                && message.contains("winograd")
                && message.contains("cudnn, im2col"),
            "{message}"
        );
    }
}
