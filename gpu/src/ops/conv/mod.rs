//! 2-D convolution on the GPU (docs/conventions.md §1; docs/architectures.md §4.0); twin of
//! `reference/src/ops/conv/` (the CPU's sparse-spike path is its submodule, cuDNN is this one's). Two
//! engines ([`ConvEngine`], chosen per device): cuDNN's deterministic algorithms ([`cudnn`]), the
//! default when cuDNN loads, and im2col + cuBLAS GEMM, below, with its kernels in
//! `gpu/kernels/conv.cu` (im2col, col2im). Both share the operand checks, the bias (its fill and
//! gradient kernels in `gpu/kernels/linear.cu`) and the context; a shape cuDNN has no
//! deterministic algorithm for runs on im2col. A pointwise (1x1, stride 1, unpadded)
//! convolution's forward and input gradient are single GEMMs on cuBLAS with either engine (on the
//! H200, 122 us against cuDNN's 270 us for 384 -> 1536 channels at 8x8 over 256 images, TF32);
//! its weight gradient follows the engine. Under bf16 and fp16 the forward's GEMM, and on cuDNN's
//! engine the input gradient's, read 16-bit operands and write 16-bit outputs (docs/precision.md
//! §"CUDA").
//!
//! ## The im2col engine
//!
//! With `K = C_in k_h k_w` and `P = H_out W_out`, a chunk of `B` images is unfolded into columns
//! laid out `[K, B, P]` (row `(c, i, j)`, column `(n, p, q)`), so that both one GEMM per image and
//! one GEMM over all `B P` columns read them without a copy:
//!
//! ```text
//! cols       = im2col(x_pad[chunk])          [K, B P]   cols[(c, i, j), (n, p, q)] = x_pad[n, c, s p + i, s q + j]
//! y[n]       = W cols[:, n, :] (+ b)          [C_out, P] per image, one strided batched GEMM, W = weight as [C_out, K]
//! dy_t       = dy[chunk] as [C_out, B P]      (the 1x1 im2col of dy: a transpose)
//! dW        += dy_t cols^T                    [C_out, K] one GEMM over the chunk's B P columns
//! dcols      = W^T dy_t                       [K, B P]   one GEMM, written over cols
//! dx[chunk]  = col2im(dcols)                  a gather: each input element sums its entries, (i, j) in order
//! db[o]      = sum_{n, p} dy[n, o, p]         a fixed-order reduction kernel
//! ```
//!
//! A 1x1, stride-1, unpadded convolution needs no im2col for its forward and input gradient:
//! `x[n]` viewed as `[C_in, P]` is its columns, so `y = W x[n]` and `dx[n] = W^T dy[n]` are single
//! strided batched GEMMs over the whole batch. Its weight gradient still goes through the chunked
//! path (there the 1x1 im2col transposes `x` to `[C_in, B P]`, so `dW` is one GEMM per chunk).
//!
//! **Workspace.** The columns of a big batch are large (256 images of a 3x3 convolution over 64
//! channels at 32x32: 256 x 576 x 1024 floats, 600 MB), so the batch is processed in chunks of as
//! many images as keep the workspace (`cols` in the forward, `cols` and `dy_t` in the backward)
//! within [`WORKSPACE_BYTES`], and never fewer than one image (a single image over the bound gets
//! a workspace of its own size). The chunk size is a function of the shapes alone, so the results
//! are the same bits whatever the batch's history; the workspace is freed (back to the caching
//! pool, stream-ordered) before the op returns, and counted in the device's peak while it lives.
//!
//! **Determinism.** cuBLAS on the device's one stream (no atomics; f32, TF32 or 16-bit operands)
//! gives the same bits run to run on one GPU; `dW` accumulates the chunks in order (`beta = 1`
//! from the second chunk on); col2im gathers instead of scattering, so no float atomics anywhere.

use std::sync::Arc;

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};
use revsnn_reference::contract::{Conv2dGeometry, Conv2dGrads, Conv2dParams};

use super::linear::{Operand, RowMajorGemm, bias_gradient, bias_gradient_from_half, fill_bias};
use super::precision::{self, HalfBits, HalfFormat};
use super::saved_input::SavedInput;
use super::{GpuElement, elementwise_launch, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::CONV;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

pub mod cudnn;

use cudnn::DataTypes;

const OP: &str = "conv2d";

/// How a device runs its convolutions ([`GpuDevice::set_conv_engine`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvEngine {
    /// cuDNN's first deterministic algorithm by its heuristics, per shape ([`cudnn`]); pointwise
    /// forwards and input gradients as one cuBLAS GEMM.
    Cudnn,
    /// im2col + cuBLAS GEMM over chunks of images (this module).
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

/// The most bytes of im2col workspace one call holds (unless a single image needs more): 64 MiB,
/// e.g. 28 images of a 3x3 convolution over 64 channels at 32x32 in f32 (K P = 589,824 elements
/// per image), 14 over 128 channels. Big enough that each chunk's GEMMs fill the GPU, small next
/// to the activations a training step keeps.
pub const WORKSPACE_BYTES: usize = 64 << 20;

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
/// accept and reject the same shapes) with the chunking and launches of this module's engines.
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

    /// Images per chunk when each image needs `per_image` workspace elements of `element_bytes`:
    /// as many as fit in [`WORKSPACE_BYTES`], at least 1, at most `N` (a function of the shapes
    /// alone).
    fn chunk(&self, per_image: usize, element_bytes: usize) -> usize {
        let image_bytes = per_image.saturating_mul(element_bytes).max(1);
        (WORKSPACE_BYTES / image_bytes).clamp(1, self.n.max(1))
    }

    /// The im2col of `batch` input images into `[K, batch P]` columns.
    fn unfold_input(&self, batch: usize) -> Unfold {
        Unfold {
            batch,
            channels: self.c_in,
            height: self.h,
            width: self.w,
            kernel_h: self.kh,
            kernel_w: self.kw,
            stride: self.stride,
            padding: self.padding,
            out_h: self.h_out,
            out_w: self.w_out,
        }
    }

    /// The transpose of `batch` output gradients `[batch, C_out, P]` into `[C_out, batch P]`: a
    /// 1x1, stride-1, unpadded im2col.
    fn unfold_grad_y(&self, batch: usize) -> Unfold {
        Unfold {
            batch,
            channels: self.c_out,
            height: self.h_out,
            width: self.w_out,
            kernel_h: 1,
            kernel_w: 1,
            stride: 1,
            padding: 0,
            out_h: self.h_out,
            out_w: self.w_out,
        }
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

    /// `dW [C_out, K] (+)= dy_t [C_out, batch P] cols^T`, `cols [K, batch P]`.
    fn weight_grad_gemm(&self, batch: usize, accumulate: bool) -> RowMajorGemm {
        let columns = batch * self.p();
        RowMajorGemm {
            m: self.c_out,
            n: self.k(),
            k: columns,
            batch: 1,
            a: Operand {
                transposed: false,
                ld: columns,
                stride: 0,
            },
            b: Operand {
                transposed: true,
                ld: columns,
                stride: 0,
            },
            c_ld: self.k(),
            c_stride: 0,
            accumulate,
        }
    }

    /// `dcols [K, batch P] = W^T dy_t`, `W [C_out, K]`, `dy_t [C_out, batch P]`.
    fn columns_grad_gemm(&self, batch: usize) -> RowMajorGemm {
        let columns = batch * self.p();
        RowMajorGemm {
            m: self.k(),
            n: columns,
            k: self.c_out,
            batch: 1,
            a: Operand {
                transposed: true,
                ld: self.k(),
                stride: 0,
            },
            b: Operand {
                transposed: false,
                ld: columns,
                stride: 0,
            },
            c_ld: columns,
            c_stride: 0,
            accumulate: false,
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

/// The arguments of `im2col` / `col2im` in conv.cu: images `[batch, channels, height, width]`
/// and their columns `[channels kernel_h kernel_w, batch out_h out_w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unfold {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
}

impl Unfold {
    fn image_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    fn columns_len(&self) -> usize {
        self.channels * self.kernel_h * self.kernel_w * self.batch * self.out_h * self.out_w
    }

    /// Launches `kernel` (`im2col` or `col2im`) from `source` into `target` with `elements`
    /// threads' worth of work.
    fn launch<E: GpuElement>(
        &self,
        device: &GpuDevice,
        kernel: &str,
        source: &CudaView<'_, E>,
        target: &mut CudaViewMut<'_, E>,
        elements: usize,
    ) -> Result<(), GpuError> {
        if elements == 0 {
            return Ok(());
        }
        let int = |what: &str, value: usize| {
            i32::try_from(value)
                .map_err(|_| shape_error(OP, format!("{what} = {value} does not fit in 32 bits")))
        };
        let (kernel_h, kernel_w) = (int("k_h", self.kernel_h)?, int("k_w", self.kernel_w)?);
        let (stride, padding) = (int("stride", self.stride)?, int("padding", self.padding)?);
        let long = |value: usize| value as i64;
        let (batch, channels) = (long(self.batch), long(self.channels));
        let (height, width) = (long(self.height), long(self.width));
        let (out_h, out_w) = (long(self.out_h), long(self.out_w));
        let function = device.function(&CONV, &format!("{kernel}_{}", E::SUFFIX))?;
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(source)
            .arg(target)
            .arg(&batch)
            .arg(&channels)
            .arg(&height)
            .arg(&width)
            .arg(&kernel_h)
            .arg(&kernel_w)
            .arg(&stride)
            .arg(&padding)
            .arg(&out_h)
            .arg(&out_w);
        // SAFETY: the argument list matches `im2col_<E>` and `col2im_<E>` in conv.cu (which share
        // it); the callers checked that the images and the columns have `image_len` and
        // `columns_len` elements.
        unsafe { launch.launch(elementwise_launch(elements)) }
            .map_err(GpuError::driver("launching im2col / col2im"))?;
        Ok(())
    }

    /// `cols = im2col(images)`.
    fn im2col<E: GpuElement>(
        &self,
        device: &GpuDevice,
        images: &CudaView<'_, E>,
        cols: &mut CudaViewMut<'_, E>,
    ) -> Result<(), GpuError> {
        self.check(images.len(), cols.len())?;
        self.launch(device, "im2col", images, cols, self.columns_len())
    }

    /// `images = col2im(cols)`, each image element the sum of the column entries read from it.
    fn col2im<E: GpuElement>(
        &self,
        device: &GpuDevice,
        cols: &CudaView<'_, E>,
        images: &mut CudaViewMut<'_, E>,
    ) -> Result<(), GpuError> {
        self.check(images.len(), cols.len())?;
        self.launch(device, "col2im", cols, images, self.image_len())
    }

    fn check(&self, images: usize, cols: usize) -> Result<(), GpuError> {
        if images != self.image_len() || cols != self.columns_len() {
            return Err(shape_error(
                OP,
                format!("internal error: {self:?} given {images} image and {cols} column elements"),
            ));
        }
        Ok(())
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

/// The im2col engine's `y (+)= conv(x, w)` (see the module docs).
fn im2col_forward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    y: &mut DeviceBuffer<E>,
    accumulate: bool,
) -> Result<(), GpuError> {
    if g.n == 0 {
        return Ok(());
    }
    if g.pointwise() {
        g.forward_gemm(g.n, true, accumulate).run(
            device,
            OP,
            weight.slice(),
            x.slice(),
            y.slice_mut(),
        )?;
    } else {
        let columns = g.k() * g.p();
        let chunk = g.chunk(columns, size_of::<E>());
        // SAFETY: im2col writes the part of each chunk before its GEMM reads it.
        let mut cols = unsafe { device.alloc::<E>(chunk * columns) }?;
        for first in (0..g.n).step_by(chunk) {
            let batch = chunk.min(g.n - first);
            let x_chunk = x
                .slice()
                .slice(first * g.in_len()..(first + batch) * g.in_len());
            let mut cols_chunk = cols.slice_mut().slice_mut(..batch * columns);
            g.unfold_input(batch)
                .im2col(device, &x_chunk, &mut cols_chunk)?;
            let mut y_chunk = y
                .slice_mut()
                .slice_mut(first * g.out_len()..(first + batch) * g.out_len());
            g.forward_gemm(batch, false, accumulate).run(
                device,
                OP,
                weight.slice(),
                &cols_chunk,
                &mut y_chunk,
            )?;
        }
    }
    Ok(())
}

/// The im2col engine's `dx` and `dw` (see the module docs), each fully written.
fn im2col_backward<E: GpuElement>(
    device: &GpuDevice,
    g: &Geometry,
    x: &CudaTensor<E>,
    weight: &CudaTensor<E>,
    grad_y: &CudaTensor<E>,
    dx: &mut DeviceBuffer<E>,
    dw: &mut DeviceBuffer<E>,
) -> Result<(), GpuError> {
    if g.n == 0 {
        return Ok(());
    }
    let (columns, gradients) = (g.k() * g.p(), g.out_len());
    let chunk = g.chunk(columns + gradients, size_of::<E>());
    // SAFETY: im2col writes the part of each chunk before anything reads it.
    let mut cols = unsafe { device.alloc::<E>(chunk * columns) }?;
    // SAFETY: as above.
    let mut dy_t = unsafe { device.alloc::<E>(chunk * gradients) }?;
    for first in (0..g.n).step_by(chunk) {
        let batch = chunk.min(g.n - first);
        let x_chunk = x
            .slice()
            .slice(first * g.in_len()..(first + batch) * g.in_len());
        let dy_chunk = grad_y
            .slice()
            .slice(first * gradients..(first + batch) * gradients);
        let mut cols_chunk = cols.slice_mut().slice_mut(..batch * columns);
        let mut dy_t_chunk = dy_t.slice_mut().slice_mut(..batch * gradients);
        g.unfold_input(batch)
            .im2col(device, &x_chunk, &mut cols_chunk)?;
        g.unfold_grad_y(batch)
            .im2col(device, &dy_chunk, &mut dy_t_chunk)?;
        g.weight_grad_gemm(batch, first > 0).run(
            device,
            OP,
            &dy_t_chunk,
            &cols_chunk,
            dw.slice_mut(),
        )?;
        if !g.pointwise() {
            // The columns are consumed: their gradient overwrites them (stream order).
            g.columns_grad_gemm(batch).run(
                device,
                OP,
                weight.slice(),
                &dy_t_chunk,
                &mut cols_chunk,
            )?;
            let mut dx_chunk = dx
                .slice_mut()
                .slice_mut(first * g.in_len()..(first + batch) * g.in_len());
            g.unfold_input(batch)
                .col2im(device, &cols_chunk.as_view(), &mut dx_chunk)?;
        }
    }
    if g.pointwise() {
        pointwise_input_grad(device, g, weight, grad_y, dx)?;
    }
    Ok(())
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
    //! The chunked pipeline's layouts (im2col and col2im as conv.cu indexes them, the GEMM
    //! descriptors through a host model of cuBLAS) against the CPU reference in f64, for chunk
    //! sizes 1, 2 and N, without a GPU.

    use super::*;
    use crate::ops::linear::tests::run_on_host;
    use revsnn_reference::Cpu;
    use revsnn_reference::prelude::*;
    use revsnn_reference::testing::{SplitMix64, relative_error};

    /// `im2col` of conv.cu, index for index.
    fn host_im2col(u: &Unfold, x: &[f64]) -> Vec<f64> {
        assert_eq!(x.len(), u.image_len());
        let mut cols = vec![f64::NAN; u.columns_len()];
        let (stride, padding) = (u.stride as i64, u.padding as i64);
        for (at, out) in cols.iter_mut().enumerate() {
            let mut rest = at;
            let q = rest % u.out_w;
            rest /= u.out_w;
            let p = rest % u.out_h;
            rest /= u.out_h;
            let n = rest % u.batch;
            rest /= u.batch;
            let j = rest % u.kernel_w;
            rest /= u.kernel_w;
            let i = rest % u.kernel_h;
            let c = rest / u.kernel_h;
            let row = p as i64 * stride + i as i64 - padding;
            let col = q as i64 * stride + j as i64 - padding;
            *out = if row >= 0 && row < u.height as i64 && col >= 0 && col < u.width as i64 {
                x[((n * u.channels + c) * u.height + row as usize) * u.width + col as usize]
            } else {
                0.0
            };
        }
        cols
    }

    /// `col2im` of conv.cu, index for index.
    fn host_col2im(u: &Unfold, dcols: &[f64]) -> Vec<f64> {
        assert_eq!(dcols.len(), u.columns_len());
        let mut dx = vec![f64::NAN; u.image_len()];
        let (stride, padding) = (u.stride as i64, u.padding as i64);
        for (at, out) in dx.iter_mut().enumerate() {
            let mut rest = at;
            let w = rest % u.width;
            rest /= u.width;
            let h = rest % u.height;
            rest /= u.height;
            let c = rest % u.channels;
            let n = rest / u.channels;
            let mut sum = 0.0;
            for i in 0..u.kernel_h {
                let row = h as i64 + padding - i as i64;
                if row < 0 || row % stride != 0 || row / stride >= u.out_h as i64 {
                    continue;
                }
                let p = (row / stride) as usize;
                for j in 0..u.kernel_w {
                    let col = w as i64 + padding - j as i64;
                    if col < 0 || col % stride != 0 || col / stride >= u.out_w as i64 {
                        continue;
                    }
                    let q = (col / stride) as usize;
                    let k = (c * u.kernel_h + i) * u.kernel_w + j;
                    sum += dcols[((k * u.batch + n) * u.out_h + p) * u.out_w + q];
                }
            }
            *out = sum;
        }
        dx
    }

    /// [`forward`]'s steps on the host with `chunk` images per chunk.
    fn host_forward(
        g: &Geometry,
        x: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        chunk: usize,
    ) -> Vec<f64> {
        let mut y: Vec<f64> = match bias {
            Some(b) => (0..g.n * g.out_len())
                .map(|i| b[(i / g.p()) % g.c_out])
                .collect(),
            None => vec![f64::NAN; g.n * g.out_len()],
        };
        if g.pointwise() {
            run_on_host(&g.forward_gemm(g.n, true, bias.is_some()), w, x, &mut y);
            return y;
        }
        for first in (0..g.n).step_by(chunk) {
            let batch = chunk.min(g.n - first);
            let cols = host_im2col(
                &g.unfold_input(batch),
                &x[first * g.in_len()..(first + batch) * g.in_len()],
            );
            run_on_host(
                &g.forward_gemm(batch, false, bias.is_some()),
                w,
                &cols,
                &mut y[first * g.out_len()..(first + batch) * g.out_len()],
            );
        }
        y
    }

    /// [`backward`]'s steps on the host (without the bias) with `chunk` images per chunk.
    fn host_backward(
        g: &Geometry,
        x: &[f64],
        w: &[f64],
        dy: &[f64],
        chunk: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut dx = vec![f64::NAN; g.n * g.in_len()];
        let mut dw = vec![f64::NAN; g.c_out * g.k()];
        for first in (0..g.n).step_by(chunk) {
            let batch = chunk.min(g.n - first);
            let mut cols = host_im2col(
                &g.unfold_input(batch),
                &x[first * g.in_len()..(first + batch) * g.in_len()],
            );
            let dy_t = host_im2col(
                &g.unfold_grad_y(batch),
                &dy[first * g.out_len()..(first + batch) * g.out_len()],
            );
            run_on_host(&g.weight_grad_gemm(batch, first > 0), &dy_t, &cols, &mut dw);
            if !g.pointwise() {
                run_on_host(&g.columns_grad_gemm(batch), w, &dy_t, &mut cols);
                dx[first * g.in_len()..(first + batch) * g.in_len()]
                    .copy_from_slice(&host_col2im(&g.unfold_input(batch), &cols));
            }
        }
        if g.pointwise() {
            run_on_host(&g.pointwise_input_grad_gemm(), w, dy, &mut dx);
        }
        (dx, dw)
    }

    /// `(x shape, weight shape, stride, padding)` covering 3x3 same, strided, 1x1 direct, 1x1
    /// strided, rectangular kernels, strides that skip inputs and padding wider than the kernel.
    const CASES: [([usize; 4], [usize; 4], usize, usize); 7] = [
        ([3, 2, 5, 6], [4, 2, 3, 3], 1, 1),
        ([3, 3, 7, 5], [2, 3, 3, 3], 2, 1),
        ([4, 5, 3, 4], [3, 5, 1, 1], 1, 0),
        ([3, 2, 5, 5], [3, 2, 1, 1], 2, 0),
        ([2, 2, 6, 7], [3, 2, 5, 3], 2, 2),
        ([3, 1, 8, 7], [2, 1, 2, 2], 3, 0),
        ([2, 2, 3, 3], [2, 2, 2, 2], 1, 3),
    ];

    #[test]
    fn the_chunked_pipeline_matches_the_reference() {
        let cpu = Cpu::<f64>::new();
        for (case, (xs, ws, stride, padding)) in CASES.into_iter().enumerate() {
            let params = Conv2dParams::new(stride, padding);
            let g = Geometry::new(&xs, &ws, params).unwrap();
            let mut rng = SplitMix64::new(case as u64);
            let x = rng.normal_vec(xs.iter().product(), 1.0);
            let w = rng.normal_vec(ws.iter().product(), 1.0);
            let b = rng.normal_vec(ws[0], 1.0);
            let dy = rng.normal_vec(g.n * g.out_len(), 1.0);

            let x_cpu = cpu.tensor_from_vec(&xs, x.clone()).unwrap();
            let w_cpu = cpu.tensor_from_vec(&ws, w.clone()).unwrap();
            let b_cpu = cpu.tensor_from_vec(&[ws[0]], b.clone()).unwrap();
            let (y_ref, context) = cpu
                .conv2d_forward(&x_cpu, &w_cpu, Some(&b_cpu), params)
                .unwrap();
            let dy_cpu = cpu.tensor_from_vec(&cpu.shape(&y_ref), dy.clone()).unwrap();
            let grads = cpu.conv2d_backward(dy_cpu.clone(), &context).unwrap();
            let (y_ref, dx_ref, dw_ref) = (
                cpu.to_vec(&y_ref).unwrap(),
                cpu.to_vec(&grads.input).unwrap(),
                cpu.to_vec(&grads.weight).unwrap(),
            );
            let y_no_bias = cpu
                .to_vec(&cpu.conv2d_forward(&x_cpu, &w_cpu, None, params).unwrap().0)
                .unwrap();

            for chunk in [1, 2, g.n] {
                let y = host_forward(&g, &x, &w, Some(&b), chunk);
                assert!(
                    relative_error(&y, &y_ref) < 1e-13,
                    "case {case} chunk {chunk}: y"
                );
                let y = host_forward(&g, &x, &w, None, chunk);
                assert!(
                    relative_error(&y, &y_no_bias) < 1e-13,
                    "case {case} chunk {chunk}: y without bias"
                );
                let (dx, dw) = host_backward(&g, &x, &w, &dy, chunk);
                assert!(
                    relative_error(&dx, &dx_ref) < 1e-13,
                    "case {case} chunk {chunk}: dx"
                );
                assert!(
                    relative_error(&dw, &dw_ref) < 1e-13,
                    "case {case} chunk {chunk}: dw"
                );
            }
        }
    }

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
    fn chunks_keep_the_workspace_under_the_bound_with_at_least_one_image() {
        // the ResNets' 3x3 conv over 64 channels at 32x32: 576 x 1024 columns per image
        let g =
            Geometry::new(&[256, 64, 32, 32], &[64, 64, 3, 3], Conv2dParams::new(1, 1)).unwrap();
        let per_image = g.k() * g.p();
        let chunk = g.chunk(per_image, 4);
        assert_eq!(chunk, WORKSPACE_BYTES / (per_image * 4));
        assert!(
            chunk * per_image * 4 <= WORKSPACE_BYTES
                && (chunk + 1) * per_image * 4 > WORKSPACE_BYTES
        );
        assert_eq!(g.chunk(per_image, 8), chunk / 2);
        // a small batch is one chunk; an image over the bound is a chunk of its own
        let small = Geometry::new(&[3, 2, 5, 5], &[2, 2, 3, 3], Conv2dParams::new(1, 1)).unwrap();
        assert_eq!(small.chunk(small.k() * small.p(), 8), 3);
        assert_eq!(g.chunk(WORKSPACE_BYTES, 8), 1);
        let empty = Geometry::new(&[0, 2, 5, 5], &[2, 2, 3, 3], Conv2dParams::new(1, 1)).unwrap();
        assert_eq!(empty.chunk(10, 8), 1);
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
