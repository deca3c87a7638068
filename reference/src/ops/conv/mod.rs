//! 2-D convolution as a blocked im2col GEMM: the 3x3 and 1x1 convolutions of the ResNets and the
//! 1x1 convolutions of the MLPs and (through `conv1d`) of the attention (docs/architectures.md §4.0).
//!
//! With `K = C_in k_h k_w` and `P = H_out W_out`, each sample `n` is one matrix product:
//!
//! ```text
//! cols[n] = im2col(x_pad[n])                 [K, P]   cols[(c, i, j), (p, q)] = x_pad[n, c, s p + i, s q + j]
//! y[n]    = W cols[n] + b                    [C_out, P], W = weight viewed as [C_out, K]
//! dx[n]   = col2im(W^T dy[n])                (adds every column entry back where it came from)
//! dW      = sum_n dy[n] cols[n]^T            [C_out, K]
//! db[o]   = sum_n sum_p dy[n, o, p]
//! ```
//!
//! A 1x1, stride-1, unpadded convolution needs no im2col: `cols[n]` is `x[n]` viewed as `[C_in, P]`.
//!
//! When the input is spikes (every element 0 or 1, at most half of them 1, and the kernel at most 64
//! taps: checked once in the forward and remembered in the context), the forward and the weight
//! gradient skip the GEMMs and sum weight and gradient rows over the ones instead ([`spikes`]); the
//! input gradient stays a GEMM.
//!
//! Samples are processed in blocks whose size depends on the shapes only. The forward writes
//! disjoint samples in parallel; the input gradient of a block is computed by groups of input
//! channels in parallel, each writing only its own channels; the weight gradient of each block is
//! summed in sample order, and the blocks' partial sums are added along a fixed binary tree (split
//! at the middle block), so the result is bitwise the same whatever the number of rayon threads.

use ndarray::{ArcArray, Array2, ArrayView2, ArrayViewMut2, IxDyn, ShapeError, s};
use rayon::prelude::*;

use crate::contract::{
    Conv2dGeometry, Conv2dGrads, Conv2dParams, Element, OpError, Precision, Result,
};
use crate::cpu::CpuTensor;
use crate::ops::gemm::{Update, gemm};
use crate::ops::tensor::round_to_precision;

mod spikes;

const OP: &str = "conv2d";

/// A block of samples spans at least this many output positions, so that small images still give
/// matrix products worth a task; the block size is a function of the shapes, never of the threads.
const MIN_BLOCK_POSITIONS: usize = 2048;

/// The tasks a layer's input gradient aims for: its blocks of samples, each in groups of input
/// channels computed in parallel where the blocks are fewer (the late, small-image layers, whose
/// batch fits in one block).
const INPUT_CHANNEL_GROUPS: usize = 8;

/// What the convolution backward needs: the input and weight (shared, not copied), whether there
/// was a bias, the geometry, and whether the input is sparse spikes.
#[derive(Debug)]
pub struct Conv2dContext<E> {
    pub input: CpuTensor<E>,
    pub weight: CpuTensor<E>,
    pub has_bias: bool,
    pub params: Conv2dParams,
    pub sparse_spike_input: bool,
}

/// `y[n, o, p, q] = bias[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, c, stride p + i, stride q + j]`
/// for `x [N, C_in, H, W]`, `w [C_out, C_in, k_h, k_w]`, `bias [C_out]`, zero padding on every side;
/// `y [N, C_out, H_out, W_out]` with `H_out = floor((H + 2 padding - k_h) / stride) + 1`
/// (docs/conventions.md §1; docs/architectures.md §4.0). Errors on a stride of 0, a kernel larger than the padded input, a channel
/// mismatch, an empty kernel or channel axis, or a bias that is not `[C_out]`.
pub fn forward<E: Element>(
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    bias: Option<&CpuTensor<E>>,
    params: Conv2dParams,
) -> Result<(CpuTensor<E>, Conv2dContext<E>)> {
    let g = Conv2dGeometry::new(x.shape(), weight.shape(), params)?;
    let bias_values = match bias {
        Some(b) => {
            g.check_bias(b.shape())?;
            Some(b.iter().copied().collect::<Vec<E>>())
        }
        None => None,
    };
    let xs = x.as_standard_layout();
    let xs = contiguous(xs.as_slice())?;
    let ws = weight.as_standard_layout();
    let w_values = contiguous(ws.as_slice())?;
    let w2 = ArrayView2::from_shape((g.c_out, g.k()), w_values).map_err(layout)?;

    let out_len = g.c_out * g.p();
    let mut y = vec![E::zero(); g.n * out_len];
    let sparse_spike_input = spikes::sparse_spikes(&g, xs);
    if sparse_spike_input {
        spikes::forward(&g, w_values, bias_values.as_deref(), xs, &mut y);
    } else {
        y.par_chunks_mut(g.block() * out_len)
            .enumerate()
            .try_for_each(|(block, y_block)| -> Result<()> {
                let mut cols = g.cols_buffer();
                for (s, y_n) in y_block.chunks_mut(out_len).enumerate() {
                    let n = block * g.block() + s;
                    let x_n = &xs[n * g.in_len()..(n + 1) * g.in_len()];
                    let mut y_n =
                        ArrayViewMut2::from_shape((g.c_out, g.p()), y_n).map_err(layout)?;
                    let update = match &bias_values {
                        Some(b) => {
                            for (mut row, &value) in y_n.rows_mut().into_iter().zip(b) {
                                row.fill(value);
                            }
                            Update::Accumulate
                        }
                        None => Update::Overwrite,
                    };
                    let cols_n = g.columns(x_n, &mut cols)?;
                    gemm(&w2, &cols_n, update, &mut y_n)?;
                }
                Ok(())
            })?;
    }

    let y = ArcArray::from_shape_vec(IxDyn(&g.output_shape()), y).map_err(layout)?;
    let context = Conv2dContext {
        input: x.clone(),
        weight: weight.clone(),
        has_bias: bias.is_some(),
        params,
        sparse_spike_input,
    };
    Ok((y, context))
}

/// The convolution of a precision whose convolutions store their outputs in its format
/// ([`Precision::stores_conv_outputs`]; docs/precision.md §"Convolution outputs"):
/// `y[n, o, p, q] = bias[o] + round(sum_{c, i, j} w[o, c, i, j] x_pad[n, c, stride p + i, stride q + j])`,
/// the sums of [`forward`] rounded to the format, then the bias added in `E`. Errors as
/// [`forward`] does.
pub fn forward_stored<E: Element>(
    x: &CpuTensor<E>,
    weight: &CpuTensor<E>,
    bias: Option<&CpuTensor<E>>,
    params: Conv2dParams,
    precision: Precision,
) -> Result<(CpuTensor<E>, Conv2dContext<E>)> {
    let g = Conv2dGeometry::new(x.shape(), weight.shape(), params)?;
    if let Some(b) = bias {
        g.check_bias(b.shape())?;
    }
    let (sums, mut context) = forward(x, weight, None, params)?;
    let mut y = round_to_precision(&sums, precision);
    if let Some(b) = bias {
        for mut image in y.outer_iter_mut() {
            for (mut channel, &value) in image.outer_iter_mut().zip(b.iter()) {
                channel.mapv_inplace(|v| v + value);
            }
        }
        context.has_bias = true;
    }
    Ok((y, context))
}

/// Gradients of [`forward`] given `dy = dL/dy [N, C_out, H_out, W_out]`:
/// `dx[n, c, h, w] = sum_{o, i, j, p, q: stride p + i - padding = h, stride q + j - padding = w} w[o, c, i, j] dy[n, o, p, q]`,
/// `dw[o, c, i, j] = sum_{n, p, q} dy[n, o, p, q] x_pad[n, c, stride p + i, stride q + j]` and
/// `db[o] = sum_{n, p, q} dy[n, o, p, q]` (present iff the forward had a bias). Bitwise the same for
/// any number of rayon threads. Errors when `dy` does not have the forward's output shape.
pub fn backward<E: Element>(
    grad_y: &CpuTensor<E>,
    context: &Conv2dContext<E>,
) -> Result<Conv2dGrads<CpuTensor<E>>> {
    let g = Conv2dGeometry::new(
        context.input.shape(),
        context.weight.shape(),
        context.params,
    )?;
    g.check_grad(grad_y.shape())?;
    let xs = context.input.as_standard_layout();
    let xs = contiguous(xs.as_slice())?;
    let ws = context.weight.as_standard_layout();
    let w2 =
        ArrayView2::from_shape((g.c_out, g.k()), contiguous(ws.as_slice())?).map_err(layout)?;
    let dys = grad_y.as_standard_layout();
    let dys = contiguous(dys.as_slice())?;

    let mut dx = vec![E::zero(); g.n * g.in_len()];
    let blocks = g.n.div_ceil(g.block());
    let dw = if blocks == 0 {
        Array2::zeros((g.c_out, g.k()))
    } else {
        let operands = Operands {
            g: &g,
            x: xs,
            w: w2,
            dy: dys,
            sparse_spike_input: context.sparse_spike_input,
        };
        operands.backward_blocks(&mut dx, 0, blocks)?
    };

    let bias = if context.has_bias {
        let out_len = g.c_out * g.p();
        let db: Vec<E> = (0..g.c_out)
            .into_par_iter()
            .map(|o| {
                let mut sum = E::zero();
                for n in 0..g.n {
                    let start = n * out_len + o * g.p();
                    for &v in &dys[start..start + g.p()] {
                        sum += v;
                    }
                }
                sum
            })
            .collect();
        Some(ArcArray::from_shape_vec(IxDyn(&[g.c_out]), db).map_err(layout)?)
    } else {
        None
    };

    let input = ArcArray::from_shape_vec(IxDyn(&[g.n, g.c_in, g.h, g.w]), dx).map_err(layout)?;
    let weight = dw
        .into_shape_with_order(IxDyn(&g.weight_shape()))
        .map_err(layout)?
        .into_shared();
    Ok(Conv2dGrads {
        input,
        weight,
        bias,
    })
}

/// The layout of this module's kernels over the contract's checked sizes: blocks of samples,
/// im2col columns and their inverse.
impl Conv2dGeometry {
    /// Samples per block, from the shapes alone.
    fn block(&self) -> usize {
        MIN_BLOCK_POSITIONS
            .div_ceil(self.p())
            .clamp(1, self.n.max(1))
    }

    /// The groups of input channels that compute a block's input gradient in parallel: enough,
    /// with the blocks, for [`INPUT_CHANNEL_GROUPS`] tasks. Every group packs the block's whole
    /// `dy` for its GEMM again, so layers with many blocks use one.
    fn input_channel_groups(&self) -> usize {
        let blocks = self.n.div_ceil(self.block()).max(1);
        INPUT_CHANNEL_GROUPS.div_ceil(blocks).min(self.c_in).max(1)
    }

    /// Scratch for one sample's columns (empty when the input serves as its own columns).
    fn cols_buffer<E: Element>(&self) -> Vec<E> {
        if self.pointwise() {
            Vec::new()
        } else {
            vec![E::zero(); self.k() * self.p()]
        }
    }

    /// `cols = im2col(x_pad)` of one sample `x [C_in, H, W]`, as a `[K, P]` view of the input (1x1
    /// stride-1 unpadded) or of `scratch`, which it fills.
    fn columns<'a, E: Element>(
        &self,
        x: &'a [E],
        scratch: &'a mut [E],
    ) -> Result<ArrayView2<'a, E>> {
        if self.pointwise() {
            return ArrayView2::from_shape((self.c_in, self.p()), x).map_err(layout);
        }
        let rows = self.output_ranges(self.kh, self.h, self.h_out);
        let cols = self.output_ranges(self.kw, self.w, self.w_out);
        for (row, cols_row) in scratch.chunks_exact_mut(self.p()).enumerate() {
            let (c, i, j) = self.unflatten(row);
            let ((p_lo, p_hi), (q_lo, q_hi)) = (rows[i], cols[j]);
            let channel = &x[c * self.h * self.w..(c + 1) * self.h * self.w];
            for (p, out) in cols_row.chunks_exact_mut(self.w_out).enumerate() {
                if p < p_lo || p >= p_hi {
                    out.fill(E::zero());
                    continue;
                }
                let line = &channel[self.source(p, i) * self.w..][..self.w];
                out[..q_lo].fill(E::zero());
                out[q_hi..].fill(E::zero());
                if self.stride == 1 {
                    let start = self.source(q_lo, j);
                    out[q_lo..q_hi].copy_from_slice(&line[start..start + (q_hi - q_lo)]);
                } else {
                    for (q, value) in out.iter_mut().enumerate().take(q_hi).skip(q_lo) {
                        *value = line[self.source(q, j)];
                    }
                }
            }
        }
        ArrayView2::from_shape((self.k(), self.p()), &*scratch).map_err(layout)
    }

    /// `dx += col2im(dcols)` for one sample and some of its channels: every entry of `dcols` (row
    /// `r` is `dcols[r row_stride + offset..][..P]`, rows `(c, i, j)` for the channels of `dx`) is
    /// added to the input element it was read from (padding positions are dropped), row by row.
    /// Where an output line is as long as an input line (stride 1, `2 padding = kw - 1`), a row's
    /// lines are one run in both `dcols` and `dx`: its dropped entries are set to `+0.0` in
    /// `dcols` and the run is added at once. Every element of `dx` gets the same additions in the
    /// same order as line by line, and adding `+0.0` to a sum that started at `+0.0` changes no
    /// bit.
    fn add_columns<E: Element>(
        &self,
        dcols: &mut [E],
        row_stride: usize,
        offset: usize,
        dx: &mut [E],
    ) {
        let rows = self.output_ranges(self.kh, self.h, self.h_out);
        let cols = self.output_ranges(self.kw, self.w, self.w_out);
        let plane = self.h * self.w;
        for row in 0..dx.len() / plane * self.kh * self.kw {
            let cols_row = &mut dcols[row * row_stride + offset..][..self.p()];
            let (c, i, j) = self.unflatten(row);
            let ((p_lo, p_hi), (q_lo, q_hi)) = (rows[i], cols[j]);
            if p_lo >= p_hi || q_lo >= q_hi {
                continue;
            }
            let channel = &mut dx[c * plane..][..plane];
            if self.stride == 1 && self.w_out == self.w {
                for line in cols_row[p_lo * self.w..p_hi * self.w].chunks_exact_mut(self.w) {
                    line[..q_lo].fill(E::zero());
                    line[q_hi..].fill(E::zero());
                }
                let run = p_lo * self.w + q_lo..(p_hi - 1) * self.w + q_hi;
                let start = self.source(p_lo, i) * self.w + self.source(q_lo, j);
                add_assign(&mut channel[start..][..run.len()], &cols_row[run]);
                continue;
            }
            for p in p_lo..p_hi {
                let line = &mut channel[self.source(p, i) * self.w..][..self.w];
                let grads = &cols_row[p * self.w_out..(p + 1) * self.w_out];
                if self.stride == 1 {
                    let start = self.source(q_lo, j);
                    add_assign(&mut line[start..start + (q_hi - q_lo)], &grads[q_lo..q_hi]);
                } else {
                    for (q, &v) in grads.iter().enumerate().take(q_hi).skip(q_lo) {
                        line[self.source(q, j)] += v;
                    }
                }
            }
        }
    }

    /// The row of `cols` as `(c, i, j)`.
    fn unflatten(&self, row: usize) -> (usize, usize, usize) {
        (
            row / (self.kh * self.kw),
            (row / self.kw) % self.kh,
            row % self.kw,
        )
    }

    /// The unpadded input coordinate `stride out + offset - padding` of an in-range output.
    fn source(&self, out: usize, offset: usize) -> usize {
        out * self.stride + offset - self.padding
    }

    /// For each kernel offset, the outputs `[lo, hi)` whose source `stride out + offset - padding`
    /// lies inside `[0, size)`.
    fn output_ranges(&self, kernel: usize, size: usize, out_size: usize) -> Vec<(usize, usize)> {
        (0..kernel)
            .map(|offset| {
                let lo = (self.padding.saturating_sub(offset)).div_ceil(self.stride);
                let hi = if size + self.padding > offset {
                    ((size + self.padding - offset - 1) / self.stride + 1).min(out_size)
                } else {
                    0
                };
                (lo.min(hi), hi)
            })
            .collect()
    }
}

/// The operands of one backward, shared by its tasks.
struct Operands<'a, E> {
    g: &'a Conv2dGeometry,
    x: &'a [E],
    w: ArrayView2<'a, E>,
    dy: &'a [E],
    sparse_spike_input: bool,
}

impl<E: Element> Operands<'_, E> {
    /// Fills `dx` for the blocks `first..last` (whose samples it holds) and returns their weight
    /// gradient `sum_n dy[n] cols[n]^T`: one block is summed in sample order, more are split at the
    /// middle block and the two halves added, left + right, whatever thread runs them.
    fn backward_blocks(&self, dx: &mut [E], first: usize, last: usize) -> Result<Array2<E>> {
        if last - first > 1 {
            let mid = first + (last - first) / 2;
            let (dx_left, dx_right) =
                dx.split_at_mut((mid - first) * self.g.block() * self.g.in_len());
            let (left, right) = rayon::join(
                || self.backward_blocks(dx_left, first, mid),
                || self.backward_blocks(dx_right, mid, last),
            );
            let mut sum = left?;
            sum += &right?;
            return Ok(sum);
        }
        let g = self.g;
        let (out_len, samples) = (g.c_out * g.p(), dx.len() / g.in_len());
        let first_sample = first * g.block();
        let x = &self.x[first_sample * g.in_len()..][..samples * g.in_len()];
        let dy = &self.dy[first_sample * out_len..][..samples * out_len];
        self.input_grad_block(dy, dx)?;
        let mut dw = Array2::zeros((g.c_out, g.k()));
        if self.sparse_spike_input {
            let dw_values = dw.as_slice_mut().ok_or_else(|| {
                OpError::shape(OP, "internal error: weight gradient is not contiguous")
            })?;
            spikes::weight_grad(g, x, dy, dw_values);
        } else {
            let mut cols = g.cols_buffer();
            for (x_n, dy_n) in x.chunks_exact(g.in_len()).zip(dy.chunks_exact(out_len)) {
                let dy_n = ArrayView2::from_shape((g.c_out, g.p()), dy_n).map_err(layout)?;
                let cols_n = g.columns(x_n, &mut cols)?;
                gemm(&dy_n, &cols_n.t(), Update::Accumulate, &mut dw.view_mut())?;
            }
        }
        Ok(dw)
    }

    /// `dx[n] = col2im(W^T dy[n])` for the samples of one block, in groups of input channels that
    /// run in parallel, each writing only its own channels of `dx`: each group computes
    /// `dcols = W[:, group]^T [dy[0] .. dy[S-1]]` for all the block's samples at once and adds it
    /// back with col2im. One wide product instead of `S` narrow ones keeps the GEMM's tiles full
    /// where the images are small (64 tokens per sample in the transformers, 16 positions in the
    /// ResNets' last stage); its sums do not depend on the number of columns, so `dx` is bitwise
    /// what per-sample products give, and col2im adds each entry once to a `+0.0`.
    fn input_grad_block(&self, dy: &[E], dx: &mut [E]) -> Result<()> {
        let g = self.g;
        let (plane, taps, samples) = (g.h * g.w, g.kh * g.kw, dx.len() / g.in_len());
        let columns = samples * g.p();
        let mut dy_wide = vec![E::zero(); dy.len()];
        for (n, dy_n) in dy.chunks_exact(g.c_out * g.p()).enumerate() {
            for (o, row) in dy_n.chunks_exact(g.p()).enumerate() {
                dy_wide[o * columns + n * g.p()..][..g.p()].copy_from_slice(row);
            }
        }
        let dy_wide = ArrayView2::from_shape((g.c_out, columns), &dy_wide[..]).map_err(layout)?;
        let group_channels = g.c_in.div_ceil(g.input_channel_groups());
        let mut groups: Vec<Vec<&mut [E]>> = Vec::new();
        for dx_n in dx.chunks_mut(g.in_len()) {
            for (index, part) in dx_n.chunks_mut(group_channels * plane).enumerate() {
                if groups.len() <= index {
                    groups.push(Vec::with_capacity(samples));
                }
                groups[index].push(part);
            }
        }
        groups
            .into_par_iter()
            .enumerate()
            .try_for_each(|(index, mut parts)| -> Result<()> {
                let rows = parts.first().map_or(0, |part| part.len() / plane) * taps;
                let first_row = index * group_channels * taps;
                let w_group_t = self
                    .w
                    .slice(s![.., first_row..first_row + rows])
                    .reversed_axes();
                let mut dcols = vec![E::zero(); rows * columns];
                let mut dcols_view =
                    ArrayViewMut2::from_shape((rows, columns), &mut dcols[..]).map_err(layout)?;
                gemm(&w_group_t, &dy_wide, Update::Overwrite, &mut dcols_view)?;
                for (n, part) in parts.iter_mut().enumerate() {
                    g.add_columns(&mut dcols, columns, n * g.p(), part);
                }
                Ok(())
            })
    }
}

/// `dst[k] += src[k]`.
fn add_assign<E: Element>(dst: &mut [E], src: &[E]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += v;
    }
}

/// A standard-layout array's slice; `None` cannot happen after `as_standard_layout`.
fn contiguous<E>(slice: Option<&[E]>) -> Result<&[E]> {
    slice.ok_or_else(|| OpError::shape(OP, "internal error: tensor is not contiguous"))
}

/// An internal layout error (the sizes are computed here, so this means a bug).
fn layout(error: ShapeError) -> OpError {
    OpError::shape(OP, format!("internal layout error: {error}"))
}
