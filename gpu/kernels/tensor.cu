// Structural and elementwise tensor ops; twin of reference/src/ops/tensor.rs, host side in
// gpu/src/ops/tensor.rs. Every kernel loops with a grid stride over 64-bit indices; every
// reduction has a fixed order that depends only on the shapes (docs/design.md principle 4).
//
// Arithmetic uses the explicit round-to-nearest intrinsics (__fadd_rn, __dmul_rn, ...), which the
// compiler never contracts into an FMA, so each result rounds exactly as the CPU reference's.

#include "fingerprint.cuh"
#include "foreach.cuh"
#include "rounding.cuh"

#define MAX_RANK 8

// A walk over an iteration shape `sizes[0..rank]` (row-major: the last axis fastest) that reads
// x and writes y at `offset + sum_d index[d] * stride[d]`. The host merges axes that are
// contiguous in both operands and drops axes of size 1 (gpu/src/ops/tensor.rs `Strided`); its
// #[repr(C)] twin has exactly this layout.
struct Strided {
    long long rank;
    long long sizes[MAX_RANK];
    long long x_strides[MAX_RANK];
    long long y_strides[MAX_RANK];
    long long x_offset;
    long long y_offset;
};

// The x and y offsets of element `i < prod(sizes)` (row-major) of the walk, with divisions in
// the index type `Index`. The loop is unrolled, so every array index is a constant and the
// parameter struct stays in the constant bank; the outermost axis takes what is left of `i`
// without a division.
template <typename Index>
__device__ __forceinline__ void walk_offsets(const Strided& s, Index i, long long& x, long long& y) {
    x = s.x_offset;
    y = s.y_offset;
#pragma unroll
    for (int d = MAX_RANK - 1; d >= 0; --d) {
        if (d < s.rank) {
            Index c = i;
            if (d > 0) {
                c = i % (Index)s.sizes[d];
                i /= (Index)s.sizes[d];
            }
            x += (long long)c * s.x_strides[d];
            y += (long long)c * s.y_strides[d];
        }
    }
}

// walk_offsets in 64 bits, or, when `narrow` (the walk has fewer than 2^32 elements, so every
// index and size fits), in 32 bits: several times cheaper divisions, the same offsets.
__device__ __forceinline__ void strided_offsets(const Strided& s, long long i, long long& x, long long& y,
                                                bool narrow = false) {
    if (narrow) {
        walk_offsets<unsigned int>(s, (unsigned int)i, x, y);
    } else {
        walk_offsets<long long>(s, i, x, y);
    }
}

#define GRID_STRIDE_LOOP(i, n)                                                                   \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (long long)gridDim.x * blockDim.x)

// Elements per thread of a strided copy whose rows allow it (gpu/src/ops/tensor.rs
// `Strided::copy_width`): 16 bytes of f32.
#define COPY_VEC 4

// COPY_VEC consecutive elements from x to y: as 16-byte words where both are 16-byte aligned.
template <typename E> __device__ __forceinline__ void copy_group(const E* __restrict__ x, E* __restrict__ y, bool vector) {
    if (vector) {
        const uint4* from = reinterpret_cast<const uint4*>(x);
        uint4* to = reinterpret_cast<uint4*>(y);
        for (int q = 0; q < (int)(COPY_VEC * sizeof(E) / sizeof(uint4)); ++q) to[q] = from[q];
    } else {
        for (int u = 0; u < COPY_VEC; ++u) y[u] = x[u];
    }
}

// y[walk.y(i)] = x[walk.x(i)] for i < n: permute, narrow, one part of a concat, repeat. With
// `width` = COPY_VEC (the host's choice: the innermost axis is contiguous in both operands, and
// its size, both offsets and every other stride are multiples of COPY_VEC), each thread copies
// COPY_VEC consecutive elements of one row, as 16-byte words when both bases are 16-byte aligned;
// else `width` is 1.
template <typename E>
__device__ void strided_copy(const E* __restrict__ x, E* __restrict__ y, const Strided& s, long long n, long long width) {
    const bool narrow = n <= 0xffffffffLL;
    const bool vector = width == COPY_VEC && (unsigned long long)x % 16 == 0 && (unsigned long long)y % 16 == 0;
    GRID_STRIDE_LOOP(g, n / width) {
        long long xo, yo;
        strided_offsets(s, g * width, xo, yo, narrow);
        if (width == COPY_VEC) {
            copy_group(x + xo, y + yo, vector);
        } else {
            y[yo] = x[xo];
        }
    }
}

// y[walk.y(i)] = x[walk.x(i)] / divisor for i < n: the broadcast of mean_axes_backward.
template <typename E>
__device__ void strided_divide(const E* __restrict__ x, E* __restrict__ y, const Strided& s, long long n, E divisor) {
    GRID_STRIDE_LOOP(i, n) {
        long long xo, yo;
        strided_offsets(s, i, xo, yo);
        y[yo] = div_rn(x[xo], divisor);
    }
}

template <typename E> __device__ void add(const E* __restrict__ a, const E* __restrict__ b, E* __restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) { y[i] = add_rn(a[i], b[i]); }
}

template <typename E> __device__ void sub(const E* __restrict__ a, const E* __restrict__ b, E* __restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) { y[i] = sub_rn(a[i], b[i]); }
}

// The same sums and differences written over the second operand (which may be what a caller
// hands over, Backend::add_reusing): b = a + b, b = a - b.
template <typename E> __device__ void add_in_place(const E* __restrict__ a, E* __restrict__ b, long long n) {
    GRID_STRIDE_LOOP(i, n) { b[i] = add_rn(a[i], b[i]); }
}

template <typename E> __device__ void sub_in_place(const E* __restrict__ a, E* __restrict__ b, long long n) {
    GRID_STRIDE_LOOP(i, n) { b[i] = sub_rn(a[i], b[i]); }
}

template <typename E> __device__ void scale(const E* __restrict__ x, E* __restrict__ y, long long n, E factor) {
    GRID_STRIDE_LOOP(i, n) { y[i] = mul_rn(factor, x[i]); }
}

// y = round(x up) down + 0 with up = 2^k, down = 2^-k: round() rounds halves away from zero as
// Rust's does, and `+ 0` turns a -0 into +0 (see the reference).
template <typename E> __device__ void quantize(const E* __restrict__ x, E* __restrict__ y, long long n, E up, E down) {
    GRID_STRIDE_LOOP(i, n) { y[i] = add_rn(mul_rn(round(mul_rn(x[i], up)), down), (E)0); }
}

// y[i] = x[0, i] + x[1, i] + ... + x[T-1, i], in that order, for x [T, n], T >= 1.
template <typename E> __device__ void sum_leading(const E* __restrict__ x, E* __restrict__ y, long long n, long long steps) {
    GRID_STRIDE_LOOP(i, n) {
        E acc = x[i];
        for (long long t = 1; t < steps; ++t) acc = add_rn(acc, x[t * n + i]);
        y[i] = acc;
    }
}

// y[o] = (sum over the reduced elements of output o) / divisor. `kept` walks the outputs (its x
// side gives the first reduced element's offset); each output sums its reduced elements
// sequentially in row-major order, starting from 0, as the reference does: the outer reduced
// axes by `rest` (rest_count elements), the innermost merged one by `inner_len` and
// `inner_stride`.
template <typename E>
__device__ void mean_axes(const E* __restrict__ x, E* __restrict__ y, const Strided& kept, const Strided& rest,
                          long long outputs, long long rest_count, long long inner_len, long long inner_stride,
                          E divisor) {
    GRID_STRIDE_LOOP(o, outputs) {
        long long base, unused;
        strided_offsets(kept, o, base, unused);
        E acc = (E)0;
        for (long long r = 0; r < rest_count; ++r) {
            long long outer, unused_rest;
            strided_offsets(rest, r, outer, unused_rest);
            const E* run = x + base + outer;
            for (long long j = 0; j < inner_len; ++j) acc = add_rn(acc, run[j * inner_stride]);
        }
        y[o] = div_rn(acc, divisor);
    }
}

// sum += sum_i mix64(bits(x[i]) ^ i * C) (mod 2^64), fingerprint.cuh: the total does not depend
// on the launch or on the order of the atomics.
template <typename E> __device__ void fingerprint(const E* __restrict__ x, unsigned long long* sum, long long n) {
    unsigned long long acc = 0;
    GRID_STRIDE_LOOP(i, n) { acc += fingerprint_term(element_bits(x[i]), i); }
    add_warp_to_sum(acc, sum);
}

// Whether v is NaN or infinite: its exponent bits are all ones (read from the bits, so no
// compiler flag can fold the test away).
__device__ __forceinline__ bool non_finite(float v) { return (__float_as_uint(v) & 0x7f800000u) == 0x7f800000u; }
__device__ __forceinline__ bool non_finite(double v) {
    return ((unsigned long long)__double_as_longlong(v) & 0x7ff0000000000000ULL) == 0x7ff0000000000000ULL;
}

// Tensors per launch of count_non_finite: the table stays within 4 KiB of kernel parameters.
// gpu/src/ops/tensor.rs `CountTable` mirrors it.
#define COUNT_TABLE_LEN 128

// The tensors of one count_non_finite launch, a table of foreach.cuh.
template <typename E> struct CountTable {
    const E* x[COUNT_TABLE_LEN];
    long long len[COUNT_TABLE_LEN];
    int first_block[COUNT_TABLE_LEN + 1];
};

// count += the number of NaN and infinite elements of the table's tensors; integer atomics, so
// the total does not depend on the launch.
template <typename E>
__device__ __forceinline__ void count_non_finite(const CountTable<E>& table, unsigned long long* count) {
    long long start, end;
    const int t = chunk_of_block(table, start, end);
    const E* x = table.x[t];
    unsigned long long acc = 0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) acc += non_finite(x[i]) ? 1ULL : 0ULL;
    add_warp_to_sum(acc, count);
}

// The most element sums a device word holds before it folds them (PENDING_SLOTS of
// gpu/src/word.rs).
#define WORD_PENDING_SLOTS 32

// The shape hashes of a device word's pending element sums, in the order they were taken, and how
// many there are. A word is 1 + WORD_PENDING_SLOTS u64: the folded chain, then the sums.
struct PendingSums {
    unsigned long long shape_hash[WORD_PENDING_SLOTS];
    long long count;
};

// The chain word[0] with the pending sums folded in order, w = rotl(w, 5) ^ feed(hash, sum) with
// feed(h, s) = (rotl(h, 5) ^ s) * 0x9E3779B97F4A7C15 (mod 2^64): the host's fold
// (fingerprint::fold of fingerprint::from_hashed_sum, in the reference's contract).
__device__ unsigned long long folded_word(const unsigned long long* word, const PendingSums& pending) {
    unsigned long long w = word[0];
    for (long long i = 0; i < pending.count; ++i) {
        const unsigned long long h = pending.shape_hash[i];
        const unsigned long long fed = (((h << 5) | (h >> 59)) ^ word[1 + i]) * 0x9E3779B97F4A7C15ULL;
        w = ((w << 5) | (w >> 59)) ^ fed;
    }
    return w;
}

// word[0] = the chain with its pending sums folded in, and their slots zeroed for the next ones.
// One thread.
extern "C" __global__ void fold_pending_sums(unsigned long long* word, PendingSums pending) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    word[0] = folded_word(word, pending);
    for (long long i = 1; i <= pending.count; ++i) word[i] = 0ULL;
}

// count[0] += (a != b): a forward's and a recompute's fingerprints compared where they live, each
// with its pending sums folded (neither word changes). One thread.
extern "C" __global__ void count_unequal(unsigned long long* count, const unsigned long long* a,
                                         PendingSums a_pending, const unsigned long long* b,
                                         PendingSums b_pending) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    if (folded_word(a, a_pending) != folded_word(b, b_pending)) count[0] += 1ULL;
}

#define TENSOR_KERNELS(E, SUFFIX)                                                                                \
    extern "C" __global__ void strided_copy_##SUFFIX(const E* x, E* y, Strided layout, long long n,              \
                                                     long long width) {                                          \
        strided_copy<E>(x, y, layout, n, width);                                                                 \
    }                                                                                                            \
    extern "C" __global__ void strided_divide_##SUFFIX(const E* x, E* y, Strided layout, long long n,            \
                                                       E divisor) {                                              \
        strided_divide<E>(x, y, layout, n, divisor);                                                             \
    }                                                                                                            \
    extern "C" __global__ void add_##SUFFIX(const E* a, const E* b, E* y, long long n) { add<E>(a, b, y, n); }   \
    extern "C" __global__ void sub_##SUFFIX(const E* a, const E* b, E* y, long long n) { sub<E>(a, b, y, n); }   \
    extern "C" __global__ void add_in_place_##SUFFIX(const E* a, E* b, long long n) {                            \
        add_in_place<E>(a, b, n);                                                                                \
    }                                                                                                            \
    extern "C" __global__ void sub_in_place_##SUFFIX(const E* a, E* b, long long n) {                            \
        sub_in_place<E>(a, b, n);                                                                                \
    }                                                                                                            \
    extern "C" __global__ void scale_##SUFFIX(const E* x, E* y, long long n, E factor) {                         \
        scale<E>(x, y, n, factor);                                                                               \
    }                                                                                                            \
    extern "C" __global__ void quantize_##SUFFIX(const E* x, E* y, long long n, E up, E down) {                  \
        quantize<E>(x, y, n, up, down);                                                                          \
    }                                                                                                            \
    extern "C" __global__ void sum_leading_##SUFFIX(const E* x, E* y, long long n, long long steps) {            \
        sum_leading<E>(x, y, n, steps);                                                                          \
    }                                                                                                            \
    extern "C" __global__ void mean_axes_##SUFFIX(const E* x, E* y, Strided kept, Strided rest,                 \
                                                  long long outputs, long long rest_count, long long inner_len, \
                                                  long long inner_stride, E divisor) {                           \
        mean_axes<E>(x, y, kept, rest, outputs, rest_count, inner_len, inner_stride, divisor);                   \
    }                                                                                                            \
    extern "C" __global__ void fingerprint_##SUFFIX(const E* x, unsigned long long* sum, long long n) {          \
        fingerprint<E>(x, sum, n);                                                                               \
    }                                                                                                            \
    extern "C" __global__ void count_non_finite_##SUFFIX(CountTable<E> table, unsigned long long* count) {      \
        count_non_finite<E>(table, count);                                                                       \
    }

TENSOR_KERNELS(float, f32)
TENSOR_KERNELS(double, f64)
