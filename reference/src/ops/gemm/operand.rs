//! Raw `f32` matrix operands of the AVX-512F kernel: a pointer to element `(0, 0)` and the
//! strides, in elements, of the rows and columns (negative, zero or any other, as ndarray allows).

use ndarray::{ArrayView2, ArrayViewMut2};

/// A read-only `f32` matrix operand: element `(i, j)` is at `ptr + i row_stride + j col_stride`.
#[derive(Clone, Copy)]
pub(super) struct Operand {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

impl Operand {
    /// The operand of a view whose elements are `f32` (the caller checks `E`).
    pub(super) fn of<E>(view: &ArrayView2<'_, E>) -> Self {
        let strides = view.strides();
        Operand {
            ptr: view.as_ptr().cast(),
            row_stride: strides[0],
            col_stride: strides[1],
        }
    }

    /// The operand whose element `(0, 0)` is this one's `(i, j)`.
    pub(super) fn offset(self, i: usize, j: usize) -> Self {
        Operand {
            ptr: self.ptr.wrapping_offset(self.index(i, j)),
            ..self
        }
    }

    /// Element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be within the operand's shape.
    pub(super) unsafe fn get(self, i: usize, j: usize) -> f32 {
        // SAFETY: the caller guarantees that (i, j) is within the operand.
        unsafe { *self.ptr.offset(self.index(i, j)) }
    }

    /// Copies elements `(0, 0), (0, 1), ..` of row 0 into `out`, with one `memcpy` when the
    /// columns are contiguous.
    ///
    /// # Safety
    /// Elements `(0, j)` with `j < out.len()` must be within the operand's shape.
    pub(super) unsafe fn copy_row(self, out: &mut [f32]) {
        if self.col_stride == 1 {
            // SAFETY: the caller guarantees out.len() contiguous elements from (0, 0).
            out.copy_from_slice(unsafe { std::slice::from_raw_parts(self.ptr, out.len()) });
        } else {
            for (j, value) in out.iter_mut().enumerate() {
                // SAFETY: (0, j) with j < out.len() is within the operand.
                *value = unsafe { self.get(0, j) };
            }
        }
    }

    /// Copies elements `(0, 0), (1, 0), .., (len - 1, 0)` of column 0 to `out[0]`,
    /// `out[stride]`, .., reading one contiguous run when the rows are contiguous.
    ///
    /// # Safety
    /// Elements `(i, 0)` with `i < len` must be within the operand's shape; `out` must hold
    /// `(len - 1) stride + 1` elements or more.
    pub(super) unsafe fn copy_column(self, out: &mut [f32], stride: usize, len: usize) {
        let targets = out.iter_mut().step_by(stride).take(len);
        if self.row_stride == 1 {
            // SAFETY: the caller guarantees len contiguous elements from (0, 0).
            let column = unsafe { std::slice::from_raw_parts(self.ptr, len) };
            targets
                .zip(column)
                .for_each(|(target, &value)| *target = value);
        } else {
            for (i, target) in targets.enumerate() {
                // SAFETY: (i, 0) with i < len is within the operand.
                *target = unsafe { self.get(i, 0) };
            }
        }
    }

    /// Whether the columns are the contiguous runs (and the rows are not).
    pub(super) fn column_major(self) -> bool {
        self.row_stride == 1 && self.col_stride != 1
    }

    /// The transpose: element `(i, j)` of the result is this one's `(j, i)`.
    pub(super) fn transposed(self) -> Self {
        Operand {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The offset of element `(i, j)` from element `(0, 0)`, in elements.
    fn index(self, i: usize, j: usize) -> isize {
        i as isize * self.row_stride + j as isize * self.col_stride
    }
}

/// A writable `f32` matrix operand, laid out as [`Operand`].
#[derive(Clone, Copy)]
pub(super) struct OperandMut {
    pub(super) ptr: *mut f32,
    pub(super) row_stride: isize,
    pub(super) col_stride: isize,
}

impl OperandMut {
    /// The operand of a mutable view whose elements are `f32` (the caller checks `E`).
    pub(super) fn of<E>(view: &mut ArrayViewMut2<'_, E>) -> Self {
        let strides = view.strides();
        let (row_stride, col_stride) = (strides[0], strides[1]);
        OperandMut {
            ptr: view.as_mut_ptr().cast(),
            row_stride,
            col_stride,
        }
    }

    fn read_only(self) -> Operand {
        Operand {
            ptr: self.ptr,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    /// The operand whose element `(0, 0)` is this one's `(i, j)`.
    pub(super) fn offset(self, i: usize, j: usize) -> Self {
        OperandMut {
            ptr: self.ptr.wrapping_offset(self.read_only().index(i, j)),
            ..self
        }
    }

    /// The address of element `(i, 0)`.
    pub(super) fn row(self, i: usize) -> *mut f32 {
        self.offset(i, 0).ptr
    }

    /// Element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be within the operand's shape.
    pub(super) unsafe fn get(self, i: usize, j: usize) -> f32 {
        // SAFETY: as `Operand::get`, whose conditions the caller guarantees.
        unsafe { self.read_only().get(i, j) }
    }

    /// Writes element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be within the operand's shape.
    pub(super) unsafe fn set(self, i: usize, j: usize, value: f32) {
        // SAFETY: the caller guarantees that (i, j) is within the operand.
        unsafe { *self.ptr.offset(self.read_only().index(i, j)) = value };
    }
}
