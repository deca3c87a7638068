//! The convolution's forward and weight gradient when its input is spikes (every element exactly
//! 0 or 1), as sums of weight rows and gradient rows over the input's ones instead of dense GEMMs:
//!
//! ```text
//! y[n, o, p, q]  = b[o] + sum_{i, j} sum_{c : x_pad[n, c, s p + i, s q + j] = 1} w[o, c, i, j]
//! dw[o, c, i, j] = sum_n sum_{(h, w) : x[n, c, h, w] = 1, h = s p + i - pad, w = s q + j - pad} dy[n, o, p, q]
//! ```
//!
//! Both skip every multiply and every zero of the input, so their work is proportional to the
//! number of spikes. Output channels are processed in tiles of `T` values, summed in registers;
//! the forward takes input channels in blocks whose weight rows stay in L1 ([`ChannelBlocks`],
//! [`SpikeMasks`]). Each sum runs in a fixed order (blocks, then offsets `(i, j)`, then channels
//! for `y`; samples then input positions for `dw`, whose consecutive terms alternate between two
//! partial sums, added at the end), so results do not depend on the number of threads or the
//! instruction set.

use std::ops::Range;

use rayon::prelude::*;

use crate::contract::Conv2dGeometry;
use crate::contract::element::Element;
use crate::ops::simd::{self, Kernel};

/// Output channels are summed in tiles of 256 bytes: 64 `f32` or 32 `f64` accumulators.
const TILE_BYTES: usize = 256;

/// The forward sums the weight rows of at most this many `(tap, channel)` pairs at a time
/// ([`ChannelBlocks`]); kernels with more taps take the dense GEMMs.
const BLOCK_ROWS: usize = 64;

/// Whether the spike kernels take this convolution: every element of `x` is 0 or 1, at most half
/// of them are 1 (the inputs for which they beat a dense GEMM), and the kernel has at most
/// [`BLOCK_ROWS`] taps. Counts without branches, chunks in parallel (an integer count: the answer
/// does not depend on the threads).
pub(super) fn sparse_spikes<E: Element>(g: &Conv2dGeometry, x: &[E]) -> bool {
    if g.kh * g.kw > BLOCK_ROWS {
        return false;
    }
    let ones = x
        .par_chunks(4096)
        .map(|chunk| {
            let (mut ones, mut others) = (0usize, 0usize);
            for &v in chunk {
                ones += usize::from(v == E::one());
                others += usize::from(v != E::one() && v != E::zero());
            }
            (others == 0).then_some(ones)
        })
        .try_reduce(|| 0, |a, b| Some(a + b));
    ones.is_some_and(|ones| 2 * ones <= x.len())
}

/// The weight `[C_out, C_in, k_h, k_w]` rearranged for [`forward_samples`]: tile `t`, row
/// [`ChannelBlocks::row`]`(tap, c)`, lane `l` holds `w[t T + l, c, i, j]` with `tap = i k_w + j`
/// (zero past `C_out`).
struct WeightTiles<E> {
    values: Vec<E>,
}

impl<E: Element> WeightTiles<E> {
    fn new(g: &Conv2dGeometry, weight: &[E]) -> Self {
        let tile = tile_width::<E>();
        let (k, taps, blocks) = (g.k(), g.kh * g.kw, ChannelBlocks::new(g));
        let mut values = vec![E::zero(); g.c_out.div_ceil(tile) * k * tile];
        values
            .par_chunks_mut(k * tile)
            .enumerate()
            .for_each(|(t, tile_values)| {
                let lanes = tile.min(g.c_out - t * tile);
                let tile_weight = &weight[t * tile * k..][..lanes * k];
                for c in 0..g.c_in {
                    for tap in 0..taps {
                        let out = &mut tile_values[blocks.row(tap, c) * tile..][..lanes];
                        for (l, value) in out.iter_mut().enumerate() {
                            *value = tile_weight[l * k + c * taps + tap];
                        }
                    }
                }
            });
        WeightTiles { values }
    }
}

/// The spike forward takes samples in groups of at least this many output positions, so that a
/// block of weight rows loaded into L1 serves many positions even where the planes are small.
const GROUP_POSITIONS: usize = 256;

/// `y [N, C_out, P] = b + W x` for the spike samples `x [N, C_in, H, W]` and the weight
/// `[C_out, C_in, k_h, k_w]`: groups of samples ([`GROUP_POSITIONS`]) in parallel.
pub(super) fn forward<E: Element>(
    g: &Conv2dGeometry,
    weight: &[E],
    bias: Option<&[E]>,
    x: &[E],
    y: &mut [E],
) {
    let weights = WeightTiles::new(g, weight);
    let group = GROUP_POSITIONS.div_ceil(g.p()).clamp(1, g.n.max(1));
    y.par_chunks_mut(group * g.out_len())
        .zip(x.par_chunks(group * g.in_len()))
        .for_each(|(y, x)| forward_samples(g, &weights, bias, x, y));
}

/// `y_n [C_out, P] = b + W x_n` for each spike sample `x_n [C_in, H, W]` of `x`, into `y`.
fn forward_samples<E: Element>(
    g: &Conv2dGeometry,
    weights: &WeightTiles<E>,
    bias: Option<&[E]>,
    x: &[E],
    y: &mut [E],
) {
    let masks: Vec<SpikeMasks> = x
        .chunks_exact(g.in_len())
        .map(|x_n| SpikeMasks::new(g, x_n))
        .collect();
    if size_of::<E>() * 64 == TILE_BYTES {
        simd::widest(ForwardTiles::<E, 64> {
            g,
            weights: &weights.values,
            bias,
            masks: &masks,
            y,
        });
    } else {
        simd::widest(ForwardTiles::<E, 32> {
            g,
            weights: &weights.values,
            bias,
            masks: &masks,
            y,
        });
    }
}

/// `dw [C_out, K] = sum_n dy[n] cols[n]^T` over the spike samples `x [samples, C_in, H, W]` and
/// their output gradients `dy [samples, C_out, P]`, summed in sample order; groups of input
/// channels run in parallel, each computing its own entries.
pub(super) fn weight_grad<E: Element>(g: &Conv2dGeometry, x: &[E], dy: &[E], dw: &mut [E]) {
    let samples = x.len() / g.in_len();
    let spikes = ChannelSpikes::new(g, x, samples);
    let offsets = OffsetOutputs::new(g);
    let taps = g.kh * g.kw;
    let group_rows = g.c_in.div_ceil(super::INPUT_CHANNEL_GROUPS.min(g.c_in)) * taps;
    let mut dw_t = vec![E::zero(); g.k() * g.c_out];
    if size_of::<E>() * 64 == TILE_BYTES {
        weight_grad_groups::<E, 64>(g, &spikes, &offsets, samples, dy, group_rows, &mut dw_t);
    } else {
        weight_grad_groups::<E, 32>(g, &spikes, &offsets, samples, dy, group_rows, &mut dw_t);
    }
    transpose(&dw_t, g.k(), g.c_out, dw);
}

/// `dw_t [K, C_out]` from `dy` in tiles of `T` output channels: groups of `group_rows` rows
/// `(c, i, j)` in parallel, each with its own [`RowSources`].
fn weight_grad_groups<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    spikes: &ChannelSpikes,
    offsets: &OffsetOutputs,
    samples: usize,
    dy: &[E],
    group_rows: usize,
    dw_t: &mut [E],
) {
    let dy_tiles = gradient_tiles::<E, T>(g, dy, samples);
    dw_t.par_chunks_mut(group_rows * g.c_out)
        .enumerate()
        .for_each(|(index, dw_t)| {
            let rows = index * group_rows..index * group_rows + dw_t.len() / g.c_out;
            let sources = RowSources::new(g, spikes, offsets, samples, rows);
            simd::widest(WeightGradTiles::<E, T> {
                g,
                sources: &sources,
                dy_tiles: &dy_tiles,
                samples,
                dw_t,
            });
        });
}

/// `dst [cols, rows] = src [rows, cols]^T`, in square blocks that stay in cache, blocks of `dst`
/// rows in parallel.
fn transpose<E: Element>(src: &[E], rows: usize, cols: usize, dst: &mut [E]) {
    const BLOCK: usize = 16;
    dst.par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(block, dst_rows)| {
            let first_col = block * BLOCK;
            for first_row in (0..rows).step_by(BLOCK) {
                for (c, dst_row) in dst_rows.chunks_exact_mut(rows).enumerate() {
                    let col = first_col + c;
                    for r in first_row..(first_row + BLOCK).min(rows) {
                        dst_row[r] = src[r * cols + col];
                    }
                }
            }
        });
}

fn tile_width<E>() -> usize {
    TILE_BYTES / size_of::<E>()
}

/// Input channels in consecutive blocks of `width` (the last one may be narrower), `taps x width`
/// at most [`BLOCK_ROWS`]. The forward sums one block of a tile's weight rows at a time: they stay
/// in the L1 cache (16 KiB), and the rows an output position uses in a block are the set bits of
/// one `u64` ([`SpikeMasks::rows`]).
#[derive(Clone, Copy)]
struct ChannelBlocks {
    c_in: usize,
    taps: usize,
    width: usize,
}

impl ChannelBlocks {
    fn new(g: &Conv2dGeometry) -> Self {
        let taps = g.kh * g.kw;
        let width = (BLOCK_ROWS / taps).clamp(1, g.c_in.max(1));
        ChannelBlocks {
            c_in: g.c_in,
            taps,
            width,
        }
    }

    /// The blocks' channels, in order.
    fn ranges(self) -> impl Iterator<Item = Range<usize>> {
        (0..self.c_in)
            .step_by(self.width)
            .map(move |first| first..(first + self.width).min(self.c_in))
    }

    /// The weight row of kernel tap `tap` and input channel `c`: a block's rows follow those of
    /// the blocks before it, tap by tap, each tap's channels in order.
    fn row(self, tap: usize, c: usize) -> usize {
        let first = c - c % self.width;
        let width = self.width.min(self.c_in - first);
        first * self.taps + tap * width + (c - first)
    }
}

/// One sample's spikes as bit masks, one plane per [`ChannelBlocks`] block over the zero-padded
/// input: bit `c - first` of entry `(h + pad) W_pad + w + pad` is set where `x[c, h, w] = 1`.
struct SpikeMasks {
    planes: Vec<u64>,
    plane_len: usize,
    w_pad: usize,
}

impl SpikeMasks {
    fn new<E: Element>(g: &Conv2dGeometry, x_n: &[E]) -> Self {
        let (plane, w_pad) = (g.h * g.w, g.w + 2 * g.padding);
        let plane_len = (g.h + 2 * g.padding) * w_pad;
        let blocks = ChannelBlocks::new(g);
        let mut planes = vec![0u64; blocks.ranges().count() * plane_len];
        for (masks, channels) in planes.chunks_exact_mut(plane_len).zip(blocks.ranges()) {
            for (bit, c) in channels.enumerate() {
                let channel = x_n[c * plane..][..plane].chunks_exact(g.w);
                for (h, row) in channel.enumerate() {
                    let out = &mut masks[(h + g.padding) * w_pad + g.padding..][..g.w];
                    for (mask, &v) in out.iter_mut().zip(row) {
                        *mask |= u64::from(v != E::zero()) << bit;
                    }
                }
            }
        }
        SpikeMasks {
            planes,
            plane_len,
            w_pad,
        }
    }

    /// For output row `p` and block `block` (`width` channels), each padded input column's
    /// masks of the kernel rows stacked: `columns[w] = sum_i plane[s p + i, w] << (i k_w width)`.
    #[inline(always)]
    fn columns(
        &self,
        g: &Conv2dGeometry,
        block: usize,
        width: usize,
        p: usize,
        columns: &mut [u64],
    ) {
        let plane = &self.planes[block * self.plane_len..][..self.plane_len];
        columns.fill(0);
        for i in 0..g.kh {
            let masks = &plane[(g.stride * p + i) * self.w_pad..][..self.w_pad];
            let shift = i * g.kw * width;
            for (column, &mask) in columns.iter_mut().zip(masks) {
                *column |= mask << shift;
            }
        }
    }

    /// The rows of a block (`width` channels) that output position `(p, q)` sums, from the output
    /// row's [`Self::columns`]: bit `(i k_w + j) width + c - first` is set where the input under
    /// tap `(i, j)` holds a 1 in channel `c`.
    #[inline(always)]
    fn rows(g: &Conv2dGeometry, columns: &[u64], width: usize, q: usize) -> u64 {
        let columns = &columns[g.stride * q..][..g.kw];
        let mut rows = 0;
        for (j, &column) in columns.iter().enumerate() {
            rows |= column << (j * width);
        }
        rows
    }
}

/// For each sample and channel, its input positions `h W + w` holding a 1, in increasing order
/// (compressed rows indexed by `n C_in + c`).
struct ChannelSpikes {
    starts: Vec<u32>,
    positions: Vec<u32>,
}

impl ChannelSpikes {
    fn new<E: Element>(g: &Conv2dGeometry, x: &[E], samples: usize) -> Self {
        let plane = g.h * g.w;
        let mut starts = Vec::with_capacity(samples * g.c_in + 1);
        let mut positions = vec![0u32; x.len() + 1];
        let mut len = 0;
        starts.push(0);
        for channel in x.chunks_exact(plane) {
            for (r, &v) in channel.iter().enumerate() {
                positions[len] = r as u32;
                len += usize::from(v != E::zero());
            }
            starts.push(len as u32);
        }
        positions.truncate(len);
        ChannelSpikes { starts, positions }
    }

    #[inline(always)]
    fn of(&self, sample_channel: usize) -> &[u32] {
        &self.positions
            [self.starts[sample_channel] as usize..self.starts[sample_channel + 1] as usize]
    }
}

/// For each kernel offset `(i, j)` and input position `(h, w)`, the output position `p W_out + q`
/// with `s p + i - pad = h` and `s q + j - pad = w`, or `P` (the zero row of [`gradient_tiles`])
/// where there is none.
struct OffsetOutputs {
    outputs: Vec<u32>,
}

impl OffsetOutputs {
    fn new(g: &Conv2dGeometry) -> Self {
        let plane = g.h * g.w;
        let mut outputs = vec![g.p() as u32; g.kh * g.kw * plane];
        let rows = g.output_ranges(g.kh, g.h, g.h_out);
        let cols = g.output_ranges(g.kw, g.w, g.w_out);
        for i in 0..g.kh {
            for j in 0..g.kw {
                let map = &mut outputs[(i * g.kw + j) * plane..][..plane];
                for p in rows[i].0..rows[i].1 {
                    for q in cols[j].0..cols[j].1 {
                        map[g.source(p, i) * g.w + g.source(q, j)] = (p * g.w_out + q) as u32;
                    }
                }
            }
        }
        OffsetOutputs { outputs }
    }
}

/// For each row `(c, i, j)` of a weight-gradient task, the rows of a [`gradient_tiles`] tile that
/// its sum adds, in order: sample by sample, the output position under tap `(i, j)` of each spike
/// of channel `c` (the sample's zero row `P` where there is none). Built once per task and used
/// for every tile. A sample with an odd number of spikes gets one more zero row: every run has
/// even length, so each sample's terms alternate between [`add_rows`]' two chains starting with
/// the first, the order in which this kernel has always summed (results keep their bits; the
/// extra term adds `+0.0` to the second chain, which changes no bit: that chain starts at `+0.0`
/// and can never hold `-0.0`).
struct RowSources {
    starts: Vec<usize>,
    rows: Vec<u32>,
}

impl RowSources {
    fn new(
        g: &Conv2dGeometry,
        spikes: &ChannelSpikes,
        offsets: &OffsetOutputs,
        samples: usize,
        rows: Range<usize>,
    ) -> Self {
        let (taps, plane, p_len) = (g.kh * g.kw, g.h * g.w, g.p());
        let mut starts = Vec::with_capacity(rows.len() + 1);
        let mut sources = Vec::new();
        starts.push(0);
        for row in rows {
            let (c, tap) = (row / taps, row % taps);
            let outputs = &offsets.outputs[tap * plane..][..plane];
            for n in 0..samples {
                let base = (n * (p_len + 1)) as u32;
                let positions = spikes.of(n * g.c_in + c);
                sources.extend(positions.iter().map(|&r| base + outputs[r as usize]));
                if positions.len() % 2 == 1 {
                    sources.push(base + p_len as u32);
                }
            }
            starts.push(sources.len());
        }
        RowSources {
            starts,
            rows: sources,
        }
    }

    /// The tile rows of the task's row `row` (counted from the task's first).
    #[inline(always)]
    fn of(&self, row: usize) -> &[u32] {
        &self.rows[self.starts[row]..self.starts[row + 1]]
    }
}

/// `dy [samples, C_out, P]` rearranged as tile `t`, row `n (P + 1) + p`, lane `l` = `dy[n, t T + l, p]`
/// (zero past `C_out`, and in each sample's extra row `P`, which stands for "no output").
fn gradient_tiles<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    dy: &[E],
    samples: usize,
) -> Vec<E> {
    let (p_len, rows) = (g.p(), samples * (g.p() + 1));
    let mut tiles = vec![E::zero(); g.c_out.div_ceil(T) * rows * T];
    tiles
        .par_chunks_mut(rows * T)
        .enumerate()
        .for_each(|(t, tile)| {
            let lanes = T.min(g.c_out - t * T);
            for (n, sample) in tile.chunks_exact_mut((p_len + 1) * T).enumerate() {
                for l in 0..lanes {
                    let source = &dy[(n * g.c_out + t * T + l) * p_len..][..p_len];
                    for (row, &v) in sample.chunks_exact_mut(T).zip(source) {
                        row[l] = v;
                    }
                }
            }
        });
    tiles
}

/// `even += table[i_0] + table[i_2] + ...` and `odd += table[i_1] + table[i_3] + ...` over the
/// row indices `indices` (of even length: [`RowSources`] pads every sample's run), rows of `T`
/// values: two independent chains of additions, which the CPU overlaps.
#[inline(always)]
fn add_rows<E: Element, const T: usize>(
    even: &mut [E; T],
    odd: &mut [E; T],
    table: &[E],
    indices: &[u32],
) {
    let (pairs, rest) = indices.as_chunks::<2>();
    debug_assert!(rest.is_empty(), "an odd number of row indices");
    for &[first, second] in pairs {
        let first = &table[first as usize * T..][..T];
        let second = &table[second as usize * T..][..T];
        for ((a, b), (&u, &v)) in even
            .iter_mut()
            .zip(odd.iter_mut())
            .zip(first.iter().zip(second))
        {
            *a += u;
            *b += v;
        }
    }
}

/// `a + b`, lane by lane.
#[inline(always)]
fn add<E: Element, const T: usize>(mut a: [E; T], b: &[E; T]) -> [E; T] {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
    a
}

/// `acc + table[row]` for the set bits `row` of `rows`, in increasing order.
#[inline(always)]
fn add_rows_of_mask<E: Element, const T: usize>(
    mut acc: [E; T],
    table: &[[E; T]],
    mut rows: u64,
) -> [E; T] {
    while rows != 0 {
        acc = add(acc, &table[rows.trailing_zeros() as usize]);
        rows &= rows - 1;
    }
    acc
}

/// The operands of [`forward_tiles`], which [`simd::widest`] runs.
struct ForwardTiles<'a, E, const T: usize> {
    g: &'a Conv2dGeometry,
    weights: &'a [E],
    bias: Option<&'a [E]>,
    masks: &'a [SpikeMasks],
    y: &'a mut [E],
}

impl<E: Element, const T: usize> Kernel for ForwardTiles<'_, E, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        forward_tiles::<E, T>(self.g, self.weights, self.bias, self.masks, self.y);
    }
}

/// `y[n, o, p, q] = b[o] + sum_{i, j} sum_{c active at (s p + i - pad, s q + j - pad)} w[o, c, i, j]`
/// for the samples of `masks`, one tile of `T` output channels at a time, summed block by block of
/// input channels over all the samples (the sums of all positions staged position-major), in each
/// block tap by tap and channel by channel.
#[inline(always)]
fn forward_tiles<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    weights: &[E],
    bias: Option<&[E]>,
    masks: &[SpikeMasks],
    y: &mut [E],
) {
    let (k, taps, p_len) = (g.k(), g.kh * g.kw, g.p());
    let mut sums = vec![[E::zero(); T]; masks.len() * p_len];
    let mut columns = vec![0u64; g.w + 2 * g.padding];
    for (t, tile) in weights.chunks_exact(k * T).enumerate() {
        let lanes = T.min(g.c_out - t * T);
        let mut start = [E::zero(); T];
        if let Some(b) = bias {
            start[..lanes].copy_from_slice(&b[t * T..t * T + lanes]);
        }
        sums.fill(start);
        let (rows, _) = tile.as_chunks::<T>();
        for (block, channels) in ChannelBlocks::new(g).ranges().enumerate() {
            let width = channels.len();
            let block_rows = &rows[channels.start * taps..][..width * taps];
            for (masks, sums) in masks.iter().zip(sums.chunks_exact_mut(p_len)) {
                for p in 0..g.h_out {
                    masks.columns(g, block, width, p, &mut columns);
                    for (q, sum) in sums[p * g.w_out..][..g.w_out].iter_mut().enumerate() {
                        let active = SpikeMasks::rows(g, &columns, width, q);
                        *sum = add_rows_of_mask(*sum, block_rows, active);
                    }
                }
            }
        }
        for (sums, y_n) in sums
            .chunks_exact(p_len)
            .zip(y.chunks_exact_mut(g.out_len()))
        {
            store_channel_major(sums, lanes, &mut y_n[t * T * p_len..][..lanes * p_len]);
        }
    }
}

/// `y[l, position] = sums[position][l]` for the first `lanes` lanes: the tile's position-major
/// sums written channel-major, in blocks of positions that stay in cache.
#[inline(always)]
fn store_channel_major<E: Element, const T: usize>(sums: &[[E; T]], lanes: usize, y: &mut [E]) {
    const POSITIONS: usize = 16;
    let p_len = sums.len();
    for first in (0..p_len).step_by(POSITIONS) {
        let block = &sums[first..(first + POSITIONS).min(p_len)];
        for (l, y_row) in y.chunks_exact_mut(p_len).take(lanes).enumerate() {
            for (out, sum) in y_row[first..first + block.len()].iter_mut().zip(block) {
                *out = sum[l];
            }
        }
    }
}

/// The operands of [`weight_grad_tiles`], which [`simd::widest`] runs.
struct WeightGradTiles<'a, E, const T: usize> {
    g: &'a Conv2dGeometry,
    sources: &'a RowSources,
    dy_tiles: &'a [E],
    samples: usize,
    dw_t: &'a mut [E],
}

impl<E: Element, const T: usize> Kernel for WeightGradTiles<'_, E, T> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        weight_grad_tiles::<E, T>(self.g, self.sources, self.dy_tiles, self.samples, self.dw_t);
    }
}

/// `dw_t[row, o] = sum_n sum_{(h, w) spiking in channel c of sample n} dy[n, o, p(h, i), q(w, j)]`
/// for the task's rows `(c, i, j)` ([`RowSources`]), one tile of `T` output channels and one row
/// at a time.
#[inline(always)]
fn weight_grad_tiles<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    sources: &RowSources,
    dy_tiles: &[E],
    samples: usize,
    dw_t: &mut [E],
) {
    let p_len = g.p();
    for (t, tile) in dy_tiles.chunks_exact(samples * (p_len + 1) * T).enumerate() {
        let lanes = T.min(g.c_out - t * T);
        for (row, out) in dw_t.chunks_exact_mut(g.c_out).enumerate() {
            let (mut even, mut odd) = ([E::zero(); T], [E::zero(); T]);
            add_rows(&mut even, &mut odd, tile, sources.of(row));
            let acc = add(even, &odd);
            out[t * T..][..lanes].copy_from_slice(&acc[..lanes]);
        }
    }
}
