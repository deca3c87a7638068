//! Average and max pooling over `[N, C, H, W]` (docs/conventions.md §1; docs/choices.md §A7), PyTorch's `ceil_mode=False`.
//!
//! Every `(n, c)` plane is one rayon task and every output or input element is computed by one
//! fixed sequential loop, so the bits do not depend on the number of threads (docs/design.md
//! principle 4).

use std::ops::Range;

use rayon::prelude::*;

use super::{slice_of, standard, tensor};
use crate::contract::shapes::check_pool_grad;
use crate::contract::{Element, OpError, Pool2dGeometry, Pool2dParams, Result};
use crate::cpu::CpuTensor;

/// What the max-pool backward needs: the shapes and, for each output element in row-major order,
/// the position `h W + w` of its window's maximum inside its `(n, c)` plane of the input.
#[derive(Debug)]
pub struct MaxPoolContext {
    /// `[N, C, H, W]`.
    pub input_shape: Vec<usize>,
    /// `[N, C, H_out, W_out]`.
    pub output_shape: Vec<usize>,
    /// `N C H_out W_out` plane offsets of the maxima; `u32` since a plane holds fewer than 2^32
    /// elements (checked by the forward).
    pub argmax: Vec<u32>,
}

/// The window walks of this module's kernels over the contract's checked sizes.
impl Pool2dGeometry {
    /// The input rows (or columns) of window `o` along an axis of `size`, clipped to the input:
    /// `[o stride - padding, o stride - padding + kernel)`. Never empty since
    /// `padding <= kernel / 2` and `size >= 1`.
    fn window(&self, o: usize, size: usize) -> Range<usize> {
        let Pool2dParams {
            kernel,
            stride,
            padding,
        } = self.params;
        let start = o * stride;
        start.saturating_sub(padding)..(start + kernel - padding).min(size)
    }

    /// The outputs along an axis with `out` outputs whose windows contain input index `i`:
    /// `o stride - padding <= i < o stride - padding + kernel`.
    fn covering(&self, i: usize, out: usize) -> Range<usize> {
        let Pool2dParams {
            kernel,
            stride,
            padding,
        } = self.params;
        let shifted = i + padding;
        let lo = (shifted + 1)
            .saturating_sub(kernel)
            .div_ceil(stride)
            .min(out);
        let hi = (shifted / stride + 1).min(out);
        lo..hi.max(lo)
    }
}

/// Average pooling with `count_include_pad=True` (docs/conventions.md §1; docs/choices.md §A7): over `x [N, C, H, W]`,
/// `y[n, c, i, j] = (1 / k^2) sum_{a, b < k} x_pad[n, c, s i - p + a, s j - p + b]` with
/// zero padding, so every window divides by `k^2` (9 for `AvgPool2d(3, 2, 1)`, also at the
/// borders); `H_out = floor((H + 2p - k) / s) + 1`, likewise `W_out`.
pub fn avg_forward<E: Element>(x: &CpuTensor<E>, params: Pool2dParams) -> Result<CpuTensor<E>> {
    const OP: &str = "avg_pool2d";
    let g = Pool2dGeometry::new(OP, x.shape(), params)?;
    let input = standard(x);
    let columns = LineGather::new(g.out_w, params.kernel, g.w, |q| g.window(q, g.w));
    let y = average_lines(slice_of(&input), (g.out_h, g.h), &columns, params, |o| {
        g.window(o, g.h)
    });
    Ok(tensor(&g.output_shape(x.shape()), y))
}

/// The backward of [`avg_forward`] (docs/conventions.md §1; docs/choices.md §A7):
/// `dx[n, c, h, w] = (1 / k^2) sum dy[n, c, i, j]` over the outputs `(i, j)` whose windows
/// contain `(h, w)`, summed in row-major output order. `input_shape` is the forward's `[N, C, H, W]`.
pub fn avg_backward<E: Element>(
    grad_y: &CpuTensor<E>,
    input_shape: &[usize],
    params: Pool2dParams,
) -> Result<CpuTensor<E>> {
    const OP: &str = "avg_pool2d_backward";
    let g = Pool2dGeometry::new(OP, input_shape, params)?;
    g.check_grad(OP, grad_y.shape(), input_shape)?;
    let dy = standard(grad_y);
    let taps = params.kernel.div_ceil(params.stride);
    let columns = LineGather::new(g.w, taps, g.out_w, |c| g.covering(c, g.out_w));
    let dx = average_lines(slice_of(&dy), (g.h, g.out_h), &columns, params, |h| {
        g.covering(h, g.out_h)
    });
    Ok(tensor(input_shape, dx))
}

/// The planes of an average pooling or of its backward from the planes of `source` (each
/// `source_lines` lines of `columns.len` elements): element `i` of line `o` of a result plane is
/// the sum, over the source lines `r` in `lines(o)` in increasing order, of `columns`' sum for
/// position `i` of line `r`, divided by `k^2` and cast to `E`; each sum in `f64` from `+0.0`,
/// planes in parallel.
fn average_lines<E: Element>(
    source: &[E],
    (result_lines, source_lines): (usize, usize),
    columns: &LineGather,
    params: Pool2dParams,
    lines: impl Fn(usize) -> Range<usize> + Sync,
) -> Vec<E> {
    let divisor = (params.kernel * params.kernel) as f64;
    let mut result =
        vec![
            E::zero();
            source.len() / (source_lines * columns.len) * result_lines * columns.positions
        ];
    result
        .par_chunks_mut(result_lines * columns.positions)
        .zip(source.par_chunks(source_lines * columns.len))
        .for_each(|(result_plane, source_plane)| {
            let mut sums = vec![0.0; columns.positions];
            let mut widened = vec![0.0; columns.len + 1];
            for (o, result_line) in result_plane.chunks_exact_mut(columns.positions).enumerate() {
                sums.fill(0.0);
                for r in lines(o) {
                    let line = &source_plane[r * columns.len..][..columns.len];
                    columns.add(&mut sums, &mut widened, line);
                }
                for (v, &sum) in result_line.iter_mut().zip(&sums) {
                    *v = E::cast(sum / divisor);
                }
            }
        });
    result
}

/// Which elements of a line each position along an axis sums: for position `i`, `taps`
/// indices into the line widened to `f64` with one `+0.0` appended at index `len`, the
/// elements of `range(i)` in increasing order, then that zero for the taps `range(i)` lacks.
/// Adding `+0.0` leaves every sum's bits as they are (a sum that starts at `+0.0` is never
/// `-0.0`), so each position's sum is the plain loop over `range(i)`, in the same order.
struct LineGather {
    positions: usize,
    taps: usize,
    len: usize,
    indices: Vec<usize>,
}

impl LineGather {
    /// `positions` positions over a line of `len` elements, `range(i)` of at most `taps` each.
    fn new(
        positions: usize,
        taps: usize,
        len: usize,
        range: impl Fn(usize) -> Range<usize>,
    ) -> Self {
        let mut indices = vec![len; positions * taps];
        for (i, slots) in indices.chunks_exact_mut(taps).enumerate() {
            debug_assert!(
                range(i).len() <= taps,
                "position {i} sums more than {taps} elements"
            );
            for (slot, index) in slots.iter_mut().zip(range(i)) {
                *slot = index;
            }
        }
        LineGather {
            positions,
            taps,
            len,
            indices,
        }
    }

    /// `sums[i] += line[j]` over the elements `j` of position `i`'s range, in increasing order;
    /// `widened` is scratch of `len + 1` values.
    fn add<E: Element>(&self, sums: &mut [f64], widened: &mut [f64], line: &[E]) {
        for (w, &v) in widened.iter_mut().zip(line) {
            *w = v.widen();
        }
        widened[self.len] = 0.0;
        for (sum, slots) in sums.iter_mut().zip(self.indices.chunks_exact(self.taps)) {
            for &index in slots {
                *sum += widened[index];
            }
        }
    }
}

/// Max pooling (docs/conventions.md §1): over `x [N, C, H, W]` padded with `-inf`,
/// `y[n, c, i, j] = max_{a, b < k} x_pad[n, c, s i - p + a, s j - p + b]`. Ties go to the first
/// maximum in row-major window order and a NaN wins (PyTorch's CPU rule: replace when
/// `v > max || isnan(v)`). The context keeps each output's argmax.
pub fn max_forward<E: Element>(
    x: &CpuTensor<E>,
    params: Pool2dParams,
) -> Result<(CpuTensor<E>, MaxPoolContext)> {
    const OP: &str = "max_pool2d";
    let g = Pool2dGeometry::new(OP, x.shape(), params)?;
    g.check_argmax_fits(OP, x.shape())?;
    let input = standard(x);
    let plane_out = g.out_h * g.out_w;
    let mut y = vec![E::zero(); g.planes * plane_out];
    let mut argmax = vec![0u32; g.planes * plane_out];
    y.par_chunks_mut(plane_out)
        .zip(argmax.par_chunks_mut(plane_out))
        .zip(slice_of(&input).par_chunks(g.h * g.w))
        .for_each(|((y_plane, arg_plane), x_plane)| {
            for (o, (y, arg)) in y_plane.iter_mut().zip(arg_plane).enumerate() {
                let (rows, cols) = (g.window(o / g.out_w, g.h), g.window(o % g.out_w, g.w));
                let mut best = E::neg_infinity();
                let mut best_at = rows.start * g.w + cols.start;
                for r in rows {
                    let start = r * g.w + cols.start;
                    for (k, &v) in x_plane[start..r * g.w + cols.end].iter().enumerate() {
                        if v > best || v.is_nan() {
                            best = v;
                            best_at = start + k;
                        }
                    }
                }
                *y = best;
                // Fits: the plane size was checked against u32 above.
                *arg = best_at as u32;
            }
        });
    let output_shape = g.output_shape(x.shape());
    let context = MaxPoolContext {
        input_shape: x.shape().to_vec(),
        output_shape: output_shape.clone(),
        argmax,
    };
    Ok((tensor(&output_shape, y), context))
}

/// The backward of [`max_forward`] (docs/conventions.md §1): `dx[n, c, h, w] = sum dy[n, c, i, j]`
/// over the outputs `(i, j)` whose argmax is `(h, w)` (overlapping windows may share one),
/// accumulated in row-major output order.
pub fn max_backward<E: Element>(
    grad_y: &CpuTensor<E>,
    context: &MaxPoolContext,
) -> Result<CpuTensor<E>> {
    const OP: &str = "max_pool2d_backward";
    check_pool_grad(OP, grad_y.shape(), &context.output_shape)?;
    let (input_shape, output_shape) = (&context.input_shape, &context.output_shape);
    if input_shape.len() != 4 || output_shape.len() != 4 || input_shape[..2] != output_shape[..2] {
        return Err(OpError::shape(
            OP,
            format!(
                "a context of input {input_shape:?} and output {output_shape:?} does not come from max_pool2d_forward"
            ),
        ));
    }
    let plane_in: usize = input_shape[2..].iter().product();
    let plane_out: usize = output_shape[2..].iter().product();
    if context.argmax.len() != output_shape.iter().product::<usize>()
        || context.argmax.iter().any(|&a| a as usize >= plane_in)
    {
        return Err(OpError::shape(
            OP,
            format!(
                "the context's {} argmax positions do not fit output {output_shape:?} and input {input_shape:?}",
                context.argmax.len()
            ),
        ));
    }
    let dy = standard(grad_y);
    let mut dx = vec![E::zero(); input_shape.iter().product()];
    if plane_in > 0 && plane_out > 0 {
        dx.par_chunks_mut(plane_in)
            .zip(slice_of(&dy).par_chunks(plane_out))
            .zip(context.argmax.par_chunks(plane_out))
            .for_each(|((dx_plane, dy_plane), arg_plane)| {
                for (&dy, &arg) in dy_plane.iter().zip(arg_plane) {
                    dx_plane[arg as usize] += dy;
                }
            });
    }
    Ok(tensor(input_shape, dx))
}
