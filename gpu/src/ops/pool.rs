//! Average and max pooling on the GPU; twin of `reference/src/ops/pool.rs`, kernels in
//! `gpu/kernels/pool.cu`.
//!
//! One thread per output element (forwards) or per input element (backwards), each summing in
//! the reference's fixed row-major order. Both backwards are gathers: an input element sums the
//! outputs whose windows cover it, so no two threads write one element and no atomics are needed
//! (docs/design.md principle 4). The results are the reference's bit for bit: the same operations in
//! the same order.

use cudarc::driver::{CudaFunction, LaunchArgs, PushKernelArg};
use revsnn_reference::contract::shapes::check_pool_grad;
use revsnn_reference::contract::{Pool2dGeometry, Pool2dParams};

use super::batch_norm::{BatchNormContext, NormalisedMap};
use super::{GpuElement, elementwise_launch, shape_error};
use crate::device::GpuDevice;
use crate::error::GpuError;
use crate::kernels::POOL;
use crate::memory::DeviceBuffer;
use crate::tensor::CudaTensor;

/// What [`max_backward`] needs: where each window's maximum is, one byte per output.
#[derive(Debug)]
pub struct MaxPoolContext {
    /// `[N, C, H, W]`.
    pub input_shape: Vec<usize>,
    /// `[N, C, H_out, W_out]`.
    pub output_shape: Vec<usize>,
    /// For each output element `(i, j)` in row-major order, the offset `a k + b` of its window's
    /// maximum inside the unclipped `k x k` window, whose first element is at row `s i - p` and
    /// column `s j - p` of the plane (`u8`: the forward checks `k k <= 256`). A quarter of the
    /// reference's `u32` plane positions, for the same backward.
    pub argmax: DeviceBuffer<u8>,
    /// The forward's window: the backward gathers over the windows covering each input element.
    pub params: Pool2dParams,
}

/// The checked sizes of one pooling (the contract's [`Pool2dGeometry`], so both backends accept
/// and reject the same shapes) with the launch arguments of this module's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry(Pool2dGeometry);

impl std::ops::Deref for Geometry {
    type Target = Pool2dGeometry;

    fn deref(&self) -> &Pool2dGeometry {
        &self.0
    }
}

impl Geometry {
    /// Validates `params` and an input shape `[N, C, H, W]` with `H, W >= 1`.
    fn new(
        op: &'static str,
        input_shape: &[usize],
        params: Pool2dParams,
    ) -> Result<Geometry, GpuError> {
        Ok(Geometry(Pool2dGeometry::new(op, input_shape, params)?))
    }

    fn outputs(&self) -> usize {
        self.planes * self.out_h * self.out_w
    }

    fn inputs(&self) -> usize {
        self.planes * self.h * self.w
    }

    /// The kernels' trailing arguments `planes, h, w, out_h, out_w, kernel, stride, padding`.
    fn args(&self) -> [i64; 8] {
        [
            self.planes,
            self.h,
            self.w,
            self.out_h,
            self.out_w,
            self.params.kernel,
            self.params.stride,
            self.params.padding,
        ]
        .map(|v| v as i64)
    }
}

/// The pooling kernel `name` in `E`.
fn pool_kernel<E: GpuElement>(device: &GpuDevice, name: &str) -> Result<CudaFunction, GpuError> {
    device.function(&POOL, &format!("{name}_{}", E::SUFFIX))
}

/// Pushes the kernels' trailing arguments, [`Geometry::args`], after the buffers.
fn push_geometry<'a>(launch: &mut LaunchArgs<'a>, args: &'a [i64; 8]) {
    for value in args {
        launch.arg(value);
    }
}

/// Average pooling with `count_include_pad=True` (docs/conventions.md §1; docs/choices.md §A7): over `x [N, C, H, W]`,
/// `y[n, c, i, j] = (1 / k^2) sum_{a, b < k} x_pad[n, c, s i - p + a, s j - p + b]` with zero
/// padding; `H_out = floor((H + 2p - k) / s) + 1`, likewise `W_out`. Errors as the reference:
/// invalid `params`, `x` not `[N, C, H, W]` with `H, W >= 1`, a window larger than the padded input.
pub fn avg_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    params: Pool2dParams,
) -> Result<CudaTensor<E>, GpuError> {
    let g = Geometry::new("avg_pool2d", x.shape(), params)?;
    // SAFETY: the kernel writes every output (there are none when N C = 0).
    let mut y = unsafe { device.alloc::<E>(g.outputs()) }?;
    if g.outputs() > 0 {
        let (function, args) = (pool_kernel::<E>(device, "avg_pool_forward")?, g.args());
        let mut launch = device.stream().launch_builder(&function);
        launch.arg(x.slice()).arg(y.slice_mut());
        push_geometry(&mut launch, &args);
        // SAFETY: matches `avg_pool_forward_<E>(x, y, planes, h, w, out_h, out_w, kernel, stride,
        // padding)`; x holds planes h w elements, y planes out_h out_w.
        unsafe { launch.launch(elementwise_launch(g.outputs())) }
            .map_err(GpuError::driver("launching avg_pool_forward"))?;
    }
    CudaTensor::new(y, &g.output_shape(x.shape()))
}

/// [`avg_forward`] over the output of a training BatchNorm, made from the BatchNorm's input as
/// it is read (`avg_pool_forward_from_normalised_<E>[_input_<format>]`, docs/memory.md §9.6):
/// the bits of `batch_norm::train_forward`'s output pooled, with that output never written.
/// Errors as [`avg_forward`], and for a context not of a training BatchNorm or a `beta` not
/// `[C]`.
pub fn avg_forward_from_normalised<E: GpuElement>(
    device: &GpuDevice,
    norm: &BatchNormContext<E>,
    beta: &CudaTensor<E>,
    params: Pool2dParams,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "avg_pool2d";
    let map = NormalisedMap::of(OP, norm, beta)?;
    let g = Geometry::new(OP, map.shape(), params)?;
    // SAFETY: the kernel writes every output (there are none when N C = 0).
    let mut y = unsafe { device.alloc::<E>(g.outputs()) }?;
    if g.outputs() > 0 {
        let (input, input_format) = map.input(device, OP)?;
        let name = format!(
            "avg_pool_forward_from_normalised_{}{input_format}",
            E::SUFFIX
        );
        let (function, args) = (device.function(&POOL, &name)?, g.args());
        let mut launch = device.stream().launch_builder(&function);
        launch.arg(y.slice_mut());
        map.push_map(&input, &mut launch);
        push_geometry(&mut launch, &args);
        // SAFETY: matches `avg_pool_forward_from_normalised_<E>[_input_<format>](y, x, mean,
        // inv_std, gamma, beta, channels, planes, h, w, out_h, out_w, kernel, stride, padding)`;
        // x (E, or its 16-bit patterns) holds planes h w elements, mean, inv_std, gamma and beta
        // one per channel (checked by `NormalisedMap::of`), y planes out_h out_w.
        unsafe { launch.launch(elementwise_launch(g.outputs())) }.map_err(GpuError::driver(
            "launching avg_pool_forward_from_normalised",
        ))?;
    }
    CudaTensor::new(y, &g.output_shape(map.shape()))
}

/// The backward of [`avg_forward`] (docs/conventions.md §1; docs/choices.md §A7): `dx[n, c, h, w] = (1 / k^2) sum dy[n, c, i, j]`
/// over the outputs `(i, j)` whose windows contain `(h, w)`, in row-major output order.
/// `input_shape` is the forward's `[N, C, H, W]`; errors also when `grad_y` is not the output's shape.
pub fn avg_backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    input_shape: &[usize],
    params: Pool2dParams,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "avg_pool2d_backward";
    let g = Geometry::new(OP, input_shape, params)?;
    g.check_grad(OP, grad_y.shape(), input_shape)?;
    // SAFETY: the kernel writes every input element (there are none when N C = 0).
    let mut dx = unsafe { device.alloc::<E>(g.inputs()) }?;
    if g.inputs() > 0 {
        let (function, args) = (pool_kernel::<E>(device, "avg_pool_backward")?, g.args());
        let mut launch = device.stream().launch_builder(&function);
        launch.arg(grad_y.slice()).arg(dx.slice_mut());
        push_geometry(&mut launch, &args);
        // SAFETY: matches `avg_pool_backward_<E>(grad_y, grad_x, planes, h, w, out_h, out_w,
        // kernel, stride, padding)`; grad_y holds planes out_h out_w elements, dx planes h w.
        unsafe { launch.launch(elementwise_launch(g.inputs())) }
            .map_err(GpuError::driver("launching avg_pool_backward"))?;
    }
    CudaTensor::new(dx, input_shape)
}

/// The kernel arguments of [`avg_backward`]'s geometry ([`Geometry::args`]) for a pool over
/// `input_shape` whose output gradient is `grad_y`, checked as [`avg_backward`] checks them:
/// what a kernel that makes the pool's `dx` as it reads it takes (batch_norm.cu's `_avg_pooled`
/// passes, over pool.cuh).
pub(crate) fn avg_backward_args(
    op: &'static str,
    grad_y: &[usize],
    input_shape: &[usize],
    params: Pool2dParams,
) -> Result<[i64; 8], GpuError> {
    let g = Geometry::new(op, input_shape, params)?;
    g.check_grad(op, grad_y, input_shape)?;
    Ok(g.args())
}

/// Max pooling (docs/conventions.md §1): over `x [N, C, H, W]` padded with `-inf`,
/// `y[n, c, i, j] = max_{a, b < k} x_pad[n, c, s i - p + a, s j - p + b]`. Ties go to the first
/// maximum in row-major window order and a NaN wins (PyTorch's CPU rule). The context keeps each
/// output's argmax, one byte. Errors as [`avg_forward`], and when an `H x W` plane has 2^32
/// elements or more or the window more than 256.
pub fn max_forward<E: GpuElement>(
    device: &GpuDevice,
    x: &CudaTensor<E>,
    params: Pool2dParams,
) -> Result<(CudaTensor<E>, MaxPoolContext), GpuError> {
    const OP: &str = "max_pool2d";
    let g = Geometry::new(OP, x.shape(), params)?;
    g.check_argmax_fits(OP, x.shape())?;
    // SAFETY (both): the kernel writes every output and its argmax (none when N C = 0).
    let mut y = unsafe { device.alloc::<E>(g.outputs()) }?;
    let mut argmax = unsafe { device.alloc::<u8>(g.outputs()) }?;
    if g.outputs() > 0 {
        let (function, args) = (pool_kernel::<E>(device, "max_pool_forward")?, g.args());
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(x.slice())
            .arg(y.slice_mut())
            .arg(argmax.slice_mut());
        push_geometry(&mut launch, &args);
        // SAFETY: matches `max_pool_forward_<E>(x, y, argmax, planes, h, w, out_h, out_w, kernel,
        // stride, padding)`; x holds planes h w elements, y and argmax planes out_h out_w.
        unsafe { launch.launch(elementwise_launch(g.outputs())) }
            .map_err(GpuError::driver("launching max_pool_forward"))?;
    }
    let output_shape = g.output_shape(x.shape());
    let y = CudaTensor::new(y, &output_shape)?;
    Ok((
        y,
        MaxPoolContext {
            input_shape: x.shape().to_vec(),
            output_shape,
            argmax,
            params,
        },
    ))
}

/// Checks that a context describes a [`max_forward`] of its `input_shape` with its `params`, and
/// returns that pooling's geometry.
fn context_geometry(op: &'static str, context: &MaxPoolContext) -> Result<Geometry, GpuError> {
    let g = Geometry::new(op, &context.input_shape, context.params)?;
    let expected = g.output_shape(&context.input_shape);
    if context.output_shape != expected || context.argmax.len() != g.outputs() {
        return Err(shape_error(
            op,
            format!(
                "a context of input {:?}, output {:?} and {} argmax offsets does not come from max_pool2d_forward (expected output {expected:?})",
                context.input_shape,
                context.output_shape,
                context.argmax.len()
            ),
        ));
    }
    Ok(g)
}

/// The backward of [`max_forward`] (docs/conventions.md §1): `dx[n, c, h, w] = sum dy[n, c, i, j]` over the
/// outputs `(i, j)` whose argmax is `(h, w)` (overlapping windows may share one), accumulated in
/// `E` in row-major output order. Errors when `grad_y` is not the output's shape or the context
/// does not describe a forward.
pub fn max_backward<E: GpuElement>(
    device: &GpuDevice,
    grad_y: &CudaTensor<E>,
    context: &MaxPoolContext,
) -> Result<CudaTensor<E>, GpuError> {
    const OP: &str = "max_pool2d_backward";
    check_pool_grad(OP, grad_y.shape(), &context.output_shape)?;
    let g = context_geometry(OP, context)?;
    // SAFETY: the kernel writes every input element (none when N C = 0).
    let mut dx = unsafe { device.alloc::<E>(g.inputs()) }?;
    if g.inputs() > 0 {
        let (function, args) = (pool_kernel::<E>(device, "max_pool_backward")?, g.args());
        let mut launch = device.stream().launch_builder(&function);
        launch
            .arg(grad_y.slice())
            .arg(context.argmax.slice())
            .arg(dx.slice_mut());
        push_geometry(&mut launch, &args);
        // SAFETY: matches `max_pool_backward_<E>(grad_y, argmax, grad_x, planes, h, w, out_h,
        // out_w, kernel, stride, padding)`; grad_y and argmax hold planes out_h out_w elements
        // (checked against the context), dx planes h w. An argmax outside its window is never
        // dereferenced, only compared.
        unsafe { launch.launch(elementwise_launch(g.inputs())) }
            .map_err(GpuError::driver("launching max_pool_backward"))?;
    }
    CudaTensor::new(dx, &context.input_shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_follows_the_reference() {
        let g = Geometry::new("test", &[2, 3, 7, 8], Pool2dParams::K3_S2_P1).unwrap();
        assert_eq!((g.planes, g.out_h, g.out_w), (6, 4, 4));
        assert_eq!(g.output_shape(&[2, 3, 7, 8]), vec![2, 3, 4, 4]);
        assert_eq!((g.inputs(), g.outputs()), (6 * 56, 6 * 16));
        assert_eq!(g.args(), [6, 7, 8, 4, 4, 3, 2, 1]);
        let p = |kernel, stride, padding| Pool2dParams {
            kernel,
            stride,
            padding,
        };
        assert!(Geometry::new("test", &[1, 1, 4, 4], p(0, 1, 0)).is_err());
        assert!(Geometry::new("test", &[1, 1, 4, 4], p(2, 0, 0)).is_err());
        assert!(Geometry::new("test", &[1, 1, 4, 4], p(3, 1, 2)).is_err());
        assert!(Geometry::new("test", &[1, 1, 2, 4], p(5, 1, 1)).is_err());
        assert!(Geometry::new("test", &[1, 1, 0, 4], p(1, 1, 0)).is_err());
        assert!(Geometry::new("test", &[1, 4, 4], p(1, 1, 0)).is_err());
        assert!(Geometry::new("test", &[0, 3, 5, 5], p(2, 2, 0)).is_ok());
    }
}
