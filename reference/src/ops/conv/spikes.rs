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
//! each sum runs in a fixed order (offsets `(i, j)` then channels for `y`; samples then input
//! positions for `dw`; consecutive terms alternate between two partial sums, added at the end), so
//! results do not depend on the number of threads or the instruction set.

use std::ops::Range;

use rayon::prelude::*;

use crate::contract::Conv2dGeometry;
use crate::contract::element::Element;

/// Output channels are summed in tiles of 256 bytes: 64 `f32` or 32 `f64` accumulators.
const TILE_BYTES: usize = 256;

/// Addresses this many bytes apart map to the same set of a typical L1 data cache (32 KiB, 8 ways).
const ALIASING_BYTES: usize = 4096;

/// Whether every element of `x` is 0 or 1 and at most half of them are 1, the inputs for which the
/// spike kernels beat a dense GEMM. Counts without branches, chunks in parallel (an integer count:
/// the answer does not depend on the threads).
pub(super) fn sparse_spikes<E: Element>(x: &[E]) -> bool {
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

/// The weight `[C_out, C_in, k_h, k_w]` rearranged for [`forward_sample`]: tile `t`, row
/// `(i k_w + j) C_in + c`, lane `l` holds `w[t T + l, c, i, j]` (zero past `C_out`).
pub(super) struct WeightTiles<E> {
    values: Vec<E>,
}

impl<E: Element> WeightTiles<E> {
    pub(super) fn new(g: &Conv2dGeometry, weight: &[E]) -> Self {
        let tile = tile_width::<E>();
        let (k, taps) = (g.k(), g.kh * g.kw);
        let mut values = vec![E::zero(); g.c_out.div_ceil(tile) * k * tile];
        values
            .par_chunks_mut(k * tile)
            .enumerate()
            .for_each(|(t, tile_values)| {
                let lanes = tile.min(g.c_out - t * tile);
                let tile_weight = &weight[t * tile * k..][..lanes * k];
                for (row, out) in tile_values.chunks_exact_mut(tile).enumerate() {
                    let (tap, c) = (row / g.c_in, row % g.c_in);
                    for (l, value) in out[..lanes].iter_mut().enumerate() {
                        *value = tile_weight[l * k + c * taps + tap];
                    }
                }
            });
        WeightTiles { values }
    }
}

/// `y_n [C_out, P] = b + W x_n` for one spike sample `x_n [C_in, H, W]`.
pub(super) fn forward_sample<E: Element>(
    g: &Conv2dGeometry,
    weights: &WeightTiles<E>,
    bias: Option<&[E]>,
    x_n: &[E],
    y_n: &mut [E],
) {
    let active = PixelChannels::new(g, x_n);
    if size_of::<E>() * 64 == TILE_BYTES {
        dispatch_forward::<E, 64>(g, &weights.values, bias, &active, y_n);
    } else {
        dispatch_forward::<E, 32>(g, &weights.values, bias, &active, y_n);
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
    let group_len = group_rows * g.c_out;
    if size_of::<E>() * 64 == TILE_BYTES {
        let dy_tiles = gradient_tiles::<E, 64>(g, dy, samples);
        dw_t.par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(index, dw_t)| {
                let rows = index * group_rows..index * group_rows + dw_t.len() / g.c_out;
                dispatch_weight_grad::<E, 64>(g, &spikes, &offsets, &dy_tiles, samples, rows, dw_t);
            });
    } else {
        let dy_tiles = gradient_tiles::<E, 32>(g, dy, samples);
        dw_t.par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(index, dw_t)| {
                let rows = index * group_rows..index * group_rows + dw_t.len() / g.c_out;
                dispatch_weight_grad::<E, 32>(g, &spikes, &offsets, &dy_tiles, samples, rows, dw_t);
            });
    }
    transpose(&dw_t, g.k(), g.c_out, dw);
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

/// For each input position `h W + w` of one sample, its channels holding a 1, in increasing order:
/// the channels of position `r` are `channels[starts[r]..ends[r]]`. Each position's range has one
/// spare slot after its last channel, so the lists are filled without branches.
struct PixelChannels {
    starts: Vec<u32>,
    ends: Vec<u32>,
    channels: Vec<u32>,
}

impl PixelChannels {
    fn new<E: Element>(g: &Conv2dGeometry, x_n: &[E]) -> Self {
        let plane = g.h * g.w;
        let mut counts = vec![0u32; plane];
        for channel in x_n.chunks_exact(plane) {
            for (count, &v) in counts.iter_mut().zip(channel) {
                *count += u32::from(v != E::zero());
            }
        }
        let mut starts = Vec::with_capacity(plane);
        let mut next = 0u32;
        for &count in &counts {
            starts.push(next);
            next += count + 1;
        }
        let mut ends = starts.clone();
        let mut channels = vec![0u32; next as usize];
        for (c, channel) in x_n.chunks_exact(plane).enumerate() {
            for (end, &v) in ends.iter_mut().zip(channel) {
                channels[*end as usize] = c as u32;
                *end += u32::from(v != E::zero());
            }
        }
        PixelChannels {
            starts,
            ends,
            channels,
        }
    }

    #[inline(always)]
    fn at(&self, position: usize) -> &[u32] {
        &self.channels[self.starts[position] as usize..self.ends[position] as usize]
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

/// `even += table[row(i_0)] + table[row(i_2)] + ...` and `odd += table[row(i_1)] + ...` over
/// `indices`, rows of `T` values: two independent chains of additions, which the CPU overlaps.
#[inline(always)]
fn add_rows<E: Element, const T: usize>(
    even: &mut [E; T],
    odd: &mut [E; T],
    table: &[E],
    indices: &[u32],
    row: impl Fn(u32) -> usize,
) {
    let mut pairs = indices.chunks_exact(2);
    for pair in &mut pairs {
        let (first, second) = (
            &table[row(pair[0]) * T..][..T],
            &table[row(pair[1]) * T..][..T],
        );
        for ((a, b), (&u, &v)) in even
            .iter_mut()
            .zip(odd.iter_mut())
            .zip(first.iter().zip(second))
        {
            *a += u;
            *b += v;
        }
    }
    if let [last] = pairs.remainder() {
        for (a, &v) in even.iter_mut().zip(&table[row(*last) * T..][..T]) {
            *a += v;
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

/// Runs [`forward_tiles`] compiled for the widest vector instructions this CPU has.
fn dispatch_forward<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    weights: &[E],
    bias: Option<&[E]>,
    active: &PixelChannels,
    y_n: &mut [E],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { forward_tiles_avx512::<E, T>(g, weights, bias, active, y_n) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { forward_tiles_avx2::<E, T>(g, weights, bias, active, y_n) };
        }
    }
    forward_tiles::<E, T>(g, weights, bias, active, y_n);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_tiles_avx512<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    weights: &[E],
    bias: Option<&[E]>,
    active: &PixelChannels,
    y_n: &mut [E],
) {
    forward_tiles::<E, T>(g, weights, bias, active, y_n);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn forward_tiles_avx2<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    weights: &[E],
    bias: Option<&[E]>,
    active: &PixelChannels,
    y_n: &mut [E],
) {
    forward_tiles::<E, T>(g, weights, bias, active, y_n);
}

/// `y[o, p, q] = b[o] + sum_{i, j} sum_{c active at (s p + i - pad, s q + j - pad)} w[o, c, i, j]`,
/// one tile of `T` output channels and one output position at a time.
#[inline(always)]
fn forward_tiles<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    weights: &[E],
    bias: Option<&[E]>,
    active: &PixelChannels,
    y_n: &mut [E],
) {
    let (k, p_len) = (g.k(), g.p());
    let rows = g.output_ranges(g.kh, g.h, g.h_out);
    let cols = g.output_ranges(g.kw, g.w, g.w_out);
    let one_cache_set = (p_len * size_of::<E>()).is_multiple_of(ALIASING_BYTES);
    let mut sums = vec![[E::zero(); T]; if one_cache_set { p_len } else { 0 }];
    for (t, tile) in weights.chunks_exact(k * T).enumerate() {
        let lanes = T.min(g.c_out - t * T);
        let mut start = [E::zero(); T];
        if let Some(b) = bias {
            start[..lanes].copy_from_slice(&b[t * T..t * T + lanes]);
        }
        for p in 0..g.h_out {
            for q in 0..g.w_out {
                let (mut even, mut odd) = (start, [E::zero(); T]);
                for i in (0..g.kh).filter(|&i| rows[i].0 <= p && p < rows[i].1) {
                    let h = g.source(p, i);
                    for j in (0..g.kw).filter(|&j| cols[j].0 <= q && q < cols[j].1) {
                        let base = (i * g.kw + j) * g.c_in;
                        let channels = active.at(h * g.w + g.source(q, j));
                        add_rows(&mut even, &mut odd, tile, channels, |c| base + c as usize);
                    }
                }
                let (position, acc) = (p * g.w_out + q, add(even, &odd));
                if one_cache_set {
                    sums[position] = acc;
                } else {
                    for (l, &v) in acc[..lanes].iter().enumerate() {
                        y_n[(t * T + l) * p_len + position] = v;
                    }
                }
            }
        }
        if one_cache_set {
            let y_tile = &mut y_n[t * T * p_len..][..lanes * p_len];
            store_channel_major(&sums, lanes, y_tile);
        }
    }
}

/// `y[l, position] = sums[position][l]` for the first `lanes` lanes: the tile's position-major
/// sums written channel-major, in blocks of positions that stay in cache. The forward takes this
/// detour when `P` elements span a multiple of [`ALIASING_BYTES`]: a position's `T` values,
/// stored straight into `y`, would then all fall into one set of the L1 cache and evict each
/// other (31 ms -> 26 ms for a 64-channel 32x32 layer on Zen 4; at other sizes the direct stores
/// are as fast or faster).
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

/// Runs [`weight_grad_tiles`] compiled for the widest vector instructions this CPU has.
fn dispatch_weight_grad<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    spikes: &ChannelSpikes,
    offsets: &OffsetOutputs,
    dy_tiles: &[E],
    samples: usize,
    rows: Range<usize>,
    dw_t: &mut [E],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe {
                weight_grad_tiles_avx512::<E, T>(g, spikes, offsets, dy_tiles, samples, rows, dw_t)
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe {
                weight_grad_tiles_avx2::<E, T>(g, spikes, offsets, dy_tiles, samples, rows, dw_t)
            };
        }
    }
    weight_grad_tiles::<E, T>(g, spikes, offsets, dy_tiles, samples, rows, dw_t);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_tiles_avx512<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    spikes: &ChannelSpikes,
    offsets: &OffsetOutputs,
    dy_tiles: &[E],
    samples: usize,
    rows: Range<usize>,
    dw_t: &mut [E],
) {
    weight_grad_tiles::<E, T>(g, spikes, offsets, dy_tiles, samples, rows, dw_t);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weight_grad_tiles_avx2<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    spikes: &ChannelSpikes,
    offsets: &OffsetOutputs,
    dy_tiles: &[E],
    samples: usize,
    rows: Range<usize>,
    dw_t: &mut [E],
) {
    weight_grad_tiles::<E, T>(g, spikes, offsets, dy_tiles, samples, rows, dw_t);
}

/// `dw_t[(c, i, j) - rows.start, o] = sum_n sum_{(h, w) spiking in channel c of sample n} dy[n, o, p(h, i), q(w, j)]`
/// for the rows `(c, i, j)` in `rows`, one tile of `T` output channels and one row at a time.
#[inline(always)]
fn weight_grad_tiles<E: Element, const T: usize>(
    g: &Conv2dGeometry,
    spikes: &ChannelSpikes,
    offsets: &OffsetOutputs,
    dy_tiles: &[E],
    samples: usize,
    rows: Range<usize>,
    dw_t: &mut [E],
) {
    let (taps, plane, p_len) = (g.kh * g.kw, g.h * g.w, g.p());
    for (t, tile) in dy_tiles.chunks_exact(samples * (p_len + 1) * T).enumerate() {
        let lanes = T.min(g.c_out - t * T);
        for row in rows.clone() {
            let (c, tap) = (row / taps, row % taps);
            let outputs = &offsets.outputs[tap * plane..][..plane];
            let (mut even, mut odd) = ([E::zero(); T], [E::zero(); T]);
            for n in 0..samples {
                let base = n * (p_len + 1);
                let spikes = spikes.of(n * g.c_in + c);
                add_rows(&mut even, &mut odd, tile, spikes, |r| {
                    base + outputs[r as usize] as usize
                });
            }
            let acc = add(even, &odd);
            let out = &mut dw_t[(row - rows.start) * g.c_out + t * T..][..lanes];
            out.copy_from_slice(&acc[..lanes]);
        }
    }
}
