//! The AVX-512F single-precision GEMM: B is packed into panels [`NR`] columns wide and A into
//! panels [`MR`] rows tall (both zero-padded at the edges), and a register-blocked micro-kernel
//! keeps an `MR x NR` tile of C in 24 zmm accumulators while it runs over the packed panels.
//! Cache blocking: k in runs of equal length (at most `KC`, the last one shorter), `MC` rows of A
//! and `NC` columns of B per packed block.
//!
//! The order of the sums depends on `k` alone, never on the tiles or on `m` and `n`: for each run
//! of k, in order, each element of C gets `s = fma(a[i, p], b[p, j], s)` from `s = 0` over the
//! run's `p` in increasing order, then `c = c + s` (for the first run `c = s` when overwriting).

use std::arch::x86_64::{
    __m512, _MM_HINT_T0, _mm_prefetch, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::Update;
use super::operand::{Operand, OperandMut};

/// Rows of a C tile (and of a packed A panel).
const MR: usize = 8;
/// zmm registers (16 lanes each) per row of a C tile.
const VECTORS: usize = 3;
/// Columns of a C tile (and of a packed B panel).
const NR: usize = 16 * VECTORS;
/// The most steps of k per packed block.
const KC: usize = 256;
/// Rows of A per packed block (a multiple of `MR`).
const MC: usize = 144;
/// Columns of B per packed block: a multiple of `NR`, about 1024.
const NC: usize = NR * (1024 / NR);
/// Bytes to which the packed buffers are aligned (one cache line, one zmm).
const ALIGN: usize = 64;

/// Proof that the running CPU has AVX-512F: only [`Avx512::detect`] makes one.
#[derive(Clone, Copy)]
pub(super) struct Avx512(());

impl Avx512 {
    /// `Some` when the running CPU supports AVX-512F.
    pub(super) fn detect() -> Option<Self> {
        is_x86_feature_detected!("avx512f").then_some(Avx512(()))
    }
}

/// `C = A B` or `C = A B + C` for `A [m, k]`, `B [k, n]`, `C [m, n]` with `k > 0`.
///
/// # Safety
/// Every element `(i, j)` of each operand within its shape (`a`: `m x k`, `b`: `k x n`, `c`:
/// `m x n`) must be valid to read (and, for `c`, to write), and `c` must not overlap `a` or `b`.
pub(super) unsafe fn gemm(
    cpu: Avx512,
    (m, k, n): (usize, usize, usize),
    a: Operand,
    b: Operand,
    update: Update,
    c: OperandMut,
) {
    let kc_step = k.div_ceil(k.div_ceil(KC));
    let mut b_buffer = Packed::new(kc_step * NC.min(n.next_multiple_of(NR)));
    let mut a_buffer = Packed::new(MC.min(m.next_multiple_of(MR)) * kc_step);
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(kc_step) {
            let kc = kc_step.min(k - p0);
            let start = if p0 == 0 { update } else { Update::Accumulate };
            // SAFETY: rows p0..p0 + kc <= k and columns j0..j0 + nc <= n of B are in its shape.
            let packed_b = unsafe { pack::<NR>(b_buffer.slice(), b.offset(p0, j0), kc, nc) };
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                // SAFETY: rows i0..i0 + mc <= m and columns p0..p0 + kc <= k of A are in its
                // shape, i.e. elements (p, i) with p < kc, i < mc of the transpose.
                let a_t = a.offset(i0, p0).transposed();
                let packed_a = unsafe { pack::<MR>(a_buffer.slice(), a_t, kc, mc) };
                let tiles = Tiles { kc, mc, nc, start };
                // SAFETY: the block of C at (i0, j0) spans mc x nc elements within its shape.
                unsafe { tiles.run(cpu, packed_a, packed_b, c.offset(i0, j0)) };
            }
        }
    }
}

/// A zeroed `f32` buffer with a window of a given length, aligned to 64 bytes.
struct Packed {
    storage: Vec<f32>,
    start: usize,
    len: usize,
}

impl Packed {
    fn new(len: usize) -> Self {
        let storage = vec![0.0; len + ALIGN / size_of::<f32>()];
        // `align_offset` may give up (usize::MAX): the window is then unaligned, still in bounds.
        let start = storage
            .as_ptr()
            .align_offset(ALIGN)
            .min(ALIGN / size_of::<f32>());
        Packed {
            storage,
            start,
            len,
        }
    }

    fn slice(&mut self) -> &mut [f32] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Packs `kc x width` elements `(p, j)` of `source` into panels `W` wide, `p`-major within a
/// panel (`panel[p W + j]`), zero-padding the last panel; returns the packed part of `buffer`.
/// B is packed as it is (`W = NR`), A through its transpose (`W = MR`). The source is read along
/// whichever axis is contiguous.
///
/// # Safety
/// Elements `(p, j)` of `source` with `p < kc`, `j < width` must be valid to read.
unsafe fn pack<const W: usize>(
    buffer: &mut [f32],
    source: Operand,
    kc: usize,
    width: usize,
) -> &[f32] {
    let panels = width.div_ceil(W);
    let packed = &mut buffer[..panels * kc * W];
    for (panel_index, panel) in packed.chunks_exact_mut(kc * W).enumerate() {
        let j0 = panel_index * W;
        let valid = W.min(width - j0);
        let block = source.offset(0, j0);
        if source.column_major() {
            for j in 0..valid {
                // SAFETY: j0 + j < width and the column's kc elements have p < kc.
                unsafe { block.offset(0, j).copy_column(&mut panel[j..], W, kc) };
            }
            for row in panel.chunks_exact_mut(W) {
                row[valid..].fill(0.0);
            }
        } else {
            for (p, row) in panel.chunks_exact_mut(W).enumerate() {
                // SAFETY: p < kc and j0 + valid <= width.
                unsafe { block.offset(p, 0).copy_row(&mut row[..valid]) };
                row[valid..].fill(0.0);
            }
        }
    }
    packed
}

/// One packed block's product: its `mc x nc` block of C, tile by tile.
struct Tiles {
    kc: usize,
    mc: usize,
    nc: usize,
    start: Update,
}

impl Tiles {
    /// Runs the micro-kernel on every tile of the block of C at `c`.
    ///
    /// # Safety
    /// `packed_a` and `packed_b` must hold `kc` steps of the block's panels, and elements
    /// `(i, j)` of `c` with `i < mc`, `j < nc` must be valid to read and write.
    unsafe fn run(&self, cpu: Avx512, packed_a: &[f32], packed_b: &[f32], c: OperandMut) {
        let b_panels = packed_b.chunks_exact(self.kc * NR);
        for (b_index, b_panel) in b_panels.enumerate() {
            let j0 = b_index * NR;
            let width = NR.min(self.nc - j0);
            for (a_index, a_panel) in packed_a.chunks_exact(self.kc * MR).enumerate() {
                let i0 = a_index * MR;
                let height = MR.min(self.mc - i0);
                let tile = c.offset(i0, j0);
                if height == MR && width == NR && c.col_stride == 1 {
                    // SAFETY: `cpu` proves AVX-512F; the full tile is in C, its rows contiguous;
                    // the panels hold kc steps.
                    unsafe { micro_kernel(cpu, self.kc, a_panel, b_panel, tile, self.start) };
                } else {
                    // SAFETY: the tile's height x width elements are in C; the panels hold kc steps.
                    unsafe { self.edge_tile(cpu, a_panel, b_panel, tile, height, width) };
                }
            }
        }
    }

    /// A tile that is partial or whose rows are not contiguous, computed in a local full tile
    /// and copied out (only its `height x width` elements are read and written in C).
    ///
    /// # Safety
    /// As [`Tiles::run`], for elements `(i, j)` of `c` with `i < height`, `j < width`.
    unsafe fn edge_tile(
        &self,
        cpu: Avx512,
        a_panel: &[f32],
        b_panel: &[f32],
        c: OperandMut,
        height: usize,
        width: usize,
    ) {
        let mut local = [0.0f32; MR * NR];
        if self.start == Update::Accumulate {
            for (i, row) in local.chunks_exact_mut(NR).take(height).enumerate() {
                for (j, value) in row[..width].iter_mut().enumerate() {
                    // SAFETY: i < height and j < width.
                    *value = unsafe { c.get(i, j) };
                }
            }
        }
        let local_tile = OperandMut {
            ptr: local.as_mut_ptr(),
            row_stride: NR as isize,
            col_stride: 1,
        };
        // SAFETY: `cpu` proves AVX-512F; `local` is a full MR x NR tile with contiguous rows;
        // the panels hold kc steps.
        unsafe { micro_kernel(cpu, self.kc, a_panel, b_panel, local_tile, self.start) };
        for (i, row) in local.chunks_exact(NR).take(height).enumerate() {
            for (j, &value) in row[..width].iter().enumerate() {
                // SAFETY: i < height and j < width.
                unsafe { c.set(i, j, value) };
            }
        }
    }
}

/// `tile = a_panel b_panel (+ tile)` for one `MR x NR` tile over `kc` steps: per step, `VECTORS`
/// zmm loads of B, `MR` broadcasts of A and `MR VECTORS` fused multiply-adds into accumulators
/// that start at zero; the tile, prefetched at the start, is added at the end when accumulating.
///
/// # Safety
/// `a_panel` must hold at least `kc * MR` and `b_panel` at least `kc * NR` elements; the
/// `MR x NR` elements of `tile` must be valid to read and write, with `tile.col_stride == 1`.
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel(
    _: Avx512,
    kc: usize,
    a_panel: &[f32],
    b_panel: &[f32],
    tile: OperandMut,
    start: Update,
) {
    let a_panel = &a_panel[..kc * MR];
    let b_panel = &b_panel[..kc * NR];
    for i in 0..MR {
        let row = tile.row(i).cast_const();
        for offset in (0..NR).step_by(16).chain([NR - 1]) {
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(offset).cast());
        }
    }
    let mut acc = [[_mm512_setzero_ps(); VECTORS]; MR];
    for (a, b) in a_panel.chunks_exact(MR).zip(b_panel.chunks_exact(NR)) {
        // SAFETY: `b` holds NR = 16 VECTORS elements.
        let b = unsafe { load_row(b.as_ptr()) };
        for (row, &a) in acc.iter_mut().zip(a) {
            let a = _mm512_set1_ps(a);
            for (sum, &b) in row.iter_mut().zip(&b) {
                *sum = _mm512_fmadd_ps(a, b, *sum);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let ptr = tile.row(i);
        let mut sum = *row;
        if start == Update::Accumulate {
            // SAFETY: row i < MR of the tile holds NR contiguous elements.
            let old = unsafe { load_row(ptr.cast_const()) };
            for (sum, old) in sum.iter_mut().zip(old) {
                *sum = _mm512_add_ps(old, *sum);
            }
        }
        // SAFETY: row i < MR of the tile holds NR contiguous elements.
        unsafe { store_row(ptr, sum) };
    }
}

/// The `NR` contiguous elements at `ptr` as `VECTORS` zmm registers.
///
/// # Safety
/// `ptr` must be valid to read `NR` elements.
#[target_feature(enable = "avx512f")]
unsafe fn load_row(ptr: *const f32) -> [__m512; VECTORS] {
    // SAFETY: the caller guarantees NR = 16 VECTORS readable elements.
    std::array::from_fn(|v| unsafe { _mm512_loadu_ps(ptr.add(16 * v)) })
}

/// Stores `VECTORS` zmm registers to the `NR` contiguous elements at `ptr`.
///
/// # Safety
/// `ptr` must be valid to write `NR` elements.
#[target_feature(enable = "avx512f")]
unsafe fn store_row(ptr: *mut f32, row: [__m512; VECTORS]) {
    for (v, value) in row.into_iter().enumerate() {
        // SAFETY: the caller guarantees NR = 16 VECTORS writable elements.
        unsafe { _mm512_storeu_ps(ptr.add(16 * v), value) };
    }
}
