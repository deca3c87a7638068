//! The im2col engine of the 2-D convolution: im2col + cuBLAS GEMM over chunks of images, with
//! the kernels `im2col` and `col2im` of `gpu/kernels/conv.cu`.
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
//! A 1x1, stride-1, unpadded convolution needs no im2col for its forward and input gradient
//! (the parent module's GEMMs, which the cuDNN engine runs too): `x[n]` viewed as `[C_in, P]` is
//! its columns, so `y = W x[n]` and `dx[n] = W^T dy[n]` are single strided batched GEMMs over the
//! whole batch. Its weight gradient still goes through the chunked path (there the 1x1 im2col
//! transposes `x` to `[C_in, B P]`, so `dW` is one GEMM per chunk).
//!
//! **Workspace.** The columns of a big batch are large (256 images of a 3x3 convolution over 64
//! channels at 32x32: 256 x 576 x 1024 floats, 600 MB), so the batch is processed in chunks of as
//! many images as keep the workspace (`cols` in the forward, `cols` and `dy_t` in the backward)
//! within [`WORKSPACE_BYTES`], and never fewer than one image (a single image over the bound gets
//! a workspace of its own size). The chunk size is a function of the shapes alone, so the results
//! are the same bits whatever the batch's history; the workspace is freed (back to the caching
//! pool, stream-ordered) before the op returns, and counted in the device's peak while it lives.
//!
//! **Determinism.** cuBLAS on the device's one stream (no atomics) gives the same bits run to
//! run on one GPU; `dW` accumulates the chunks in order (`beta = 1` from the second chunk on);
//! col2im gathers instead of scattering, so no float atomics anywhere.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{Geometry, OP, pointwise_input_grad};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::CONV;
use crate::memory::DeviceBuffer;
use crate::ops::linear::{Operand, RowMajorGemm};
use crate::ops::{GpuElement, elementwise_launch, shape_error};
use crate::tensor::CudaTensor;

/// The most bytes of im2col workspace one call holds (unless a single image needs more): 64 MiB,
/// e.g. 28 images of a 3x3 convolution over 64 channels at 32x32 in f32 (K P = 589,824 elements
/// per image), 14 over 128 channels. Big enough that each chunk's GEMMs fill the GPU, small next
/// to the activations a training step keeps.
pub const WORKSPACE_BYTES: usize = 64 << 20;

impl Geometry {
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

/// The im2col engine's `y (+)= conv(x, w)` (see the module docs).
pub(super) fn im2col_forward<E: GpuElement>(
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
pub(super) fn im2col_backward<E: GpuElement>(
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

#[cfg(test)]
mod tests {
    //! The chunked pipeline's layouts (im2col and col2im as conv.cu indexes them, the GEMM
    //! descriptors through a host model of cuBLAS) against the CPU reference in f64, for chunk
    //! sizes 1, 2 and N, without a GPU.

    use super::*;
    use crate::ops::linear::tests::run_on_host;
    use revsnn_reference::Cpu;
    use revsnn_reference::contract::Conv2dParams;
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
}
