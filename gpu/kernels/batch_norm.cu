// Batch normalisation over x [N, C, inner] (inner = the product of the trailing axes) with
// deterministic per-channel reductions (docs/conventions.md §1); twin of reference/src/ops/batch_norm.rs.
//
// Element (b, c, i) sits at (b * C + c) * inner + i; channel c's n = N * inner elements are
// numbered j = b * inner + i. Every per-channel reduction is accumulated in double in two passes
// over a fixed partition, with no atomics:
//   1. `*_partial`: block (c, chunk) reduces the elements j of [chunk * chunk_len, (chunk + 1) *
//      chunk_len) of channel c, thread t taking j = start + t, start + t + BN_THREADS, ... in
//      order, then a fixed shared-memory tree over the BN_THREADS threads; it writes
//      partial[(s * C + c) * chunks + chunk] for each of its values s.
//   2. `*_finalize`: block c reduces its `chunks` partials the same way and derives the channel's
//      constants.
// The partition depends only on the shape, the launch is always BN_THREADS threads per block and
// blocks loop over (c, chunk) with a grid stride, so the bits do not depend on the grid size or
// on the scheduling.
//
// The forward's statistics read x once: each thread sums its elements' differences from its first
// element x0, S1 = sum (x - x0) and S2 = sum (x - x0)^2, and turns them into (count n, mean
// x0 + S1 / n, m2 = S2 - S1^2 / n) once; the trees merge such triples pairwise with the update of
// Chan, Golub and LeVeque ("Algorithms for computing the sample variance", 1983). The subtraction
// in m2 cancels at most a factor n + 1: S2 = m2 + n (mean - x0)^2 and, x0 being one of the values,
// (mean - x0)^2 <= m2. So unlike "mean of squares minus squared mean" it stays accurate when the
// mean is large against the spread, with no division per element (docs/ARCHITECTURE.md, "GPU").
// The backward's two sums are plain sums. Both directions also read an f32 input held as the
// 16-bit patterns that hold it exactly (`*_f32_from_bf16`, `*_f32_from_fp16`: a 16-bit
// convolution's output, docs/precision.md §"CUDA"), widening each element as it loads it: the
// same values as the f32 input, with half its bytes read and no f32 copy. The backward's input
// gradient can be stored as 16-bit patterns too (`bn_backward_input_*_to_bf16`, `_to_fp16`): each
// element's f32 value rounded to the format, which is what the 16-bit convolution before the
// BatchNorm reads as its dy, and written over a 16-bit input (`bn_backward_input_in_place_*`).

#include "batch_norm.cuh"
#include "half.cuh"
#include "pool.cuh"
#include "rounding.cuh"

#define BN_THREADS 256

// The sum of every thread's v, returned to every thread of the block, in a fixed order. All
// threads of the block must call it (it synchronises).
__device__ __forceinline__ double block_sum(double v, double* buf) {
    __syncthreads();  // the previous call's readers are done with buf
    buf[threadIdx.x] = v;
    __syncthreads();
    for (int stride = BN_THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    return buf[0];
}

// Pass 1's partition: reduce(c, chunk, start, end) for each block (c, chunk) of this block's grid
// stride, whose elements are j in [start, end) of channel c.
template <typename Reduce>
__device__ void for_each_chunk(Reduce reduce, long long channels, long long per_channel, long long chunks,
                               long long chunk_len) {
    for (long long block = blockIdx.x; block < channels * chunks; block += gridDim.x) {
        const long long c = block / chunks, chunk = block % chunks;
        const long long start = chunk * chunk_len;
        reduce(c, chunk, start, min(start + chunk_len, per_channel));
    }
}

// The elements j = start + t, start + t + BN_THREADS, ... < end of channel c that thread t takes:
// add(load(k)) on each one's flat index k, in order. The loads of WALK_UNROLL consecutive elements
// are issued before their adds, so each thread keeps that many loads in flight (one at a time
// leaves the reductions bound by memory latency, not bandwidth); the order of the adds is the same.
#define WALK_UNROLL 4
template <typename Load, typename Add>
__device__ __forceinline__ void walk_chunk(Load load, Add add, long long c, long long start, long long end,
                                           long long channels, long long inner) {
    long long j = start + threadIdx.x;
    if (j >= end) return;
    const long long step_b = BN_THREADS / inner, step_i = BN_THREADS % inner;
    long long b = j / inner, i = j % inner;
    while (j < end) {
        decltype(load(0LL)) values[WALK_UNROLL];
        int loaded = 0;
#pragma unroll
        for (int u = 0; u < WALK_UNROLL; ++u) {
            if (j < end) {
                values[u] = load((b * channels + c) * inner + i);
                ++loaded;
                j += BN_THREADS;
                b += step_b;
                i += step_i;
                if (i >= inner) {
                    i -= inner;
                    ++b;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < WALK_UNROLL; ++u) {
            if (u < loaded) add(values[u]);
        }
    }
}

// Pass 1 of plain sums: add(load(k), c, acc) adds element k's terms (of channel c) to acc[0..SUMS).
template <int SUMS, typename Load, typename Add>
__device__ void partial_sums(Load load, Add add, double* partial, long long channels, long long inner,
                             long long per_channel, long long chunks, long long chunk_len) {
    __shared__ double buf[BN_THREADS];
    for_each_chunk(
        [&](long long c, long long chunk, long long start, long long end) {
            double acc[SUMS];
            for (int s = 0; s < SUMS; ++s) acc[s] = 0.0;
            using Value = decltype(load(0LL));
            walk_chunk(load, [&](const Value& value) { add(value, c, acc); }, c, start, end, channels, inner);
            for (int s = 0; s < SUMS; ++s) {
                const double total = block_sum(acc[s], buf);
                if (threadIdx.x == 0) partial[((long long)s * channels + c) * chunks + chunk] = total;
            }
        },
        channels, per_channel, chunks, chunk_len);
}

// Pass 2 of plain sums: finish(c, totals) runs on thread 0 with channel c's SUMS totals.
template <int SUMS, typename Finish>
__device__ void channel_totals(Finish finish, const double* partial, long long channels, long long chunks) {
    __shared__ double buf[BN_THREADS];
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        double totals[SUMS];
        for (int s = 0; s < SUMS; ++s) {
            double acc = 0.0;
            for (long long k = threadIdx.x; k < chunks; k += BN_THREADS) acc += partial[((long long)s * channels + c) * chunks + k];
            totals[s] = block_sum(acc, buf);
        }
        if (threadIdx.x == 0) finish(c, totals);
    }
}

// The count, mean and sum of squared deviations from the mean of some values.
struct Moments {
    double count, mean, m2;
};

// One thread's running sums of its values' differences from its first value.
struct ShiftedSums {
    double count, first, s1, s2;
};

__device__ __forceinline__ void add_value(ShiftedSums& sums, double v) {
    if (sums.count == 0.0) sums.first = v;
    const double d = v - sums.first;
    sums.count += 1.0;
    sums.s1 += d;
    sums.s2 += d * d;
}

// The moments of the values summed: mean = first + S1 / n, m2 = S2 - S1^2 / n (at least 0).
__device__ __forceinline__ Moments moments_of(const ShiftedSums& sums) {
    if (sums.count == 0.0) return {0.0, 0.0, 0.0};
    const double shift = sums.s1 / sums.count;
    return {sums.count, sums.first + shift, fmax(sums.s2 - sums.s1 * shift, 0.0)};
}

// The moments of the union of the values of a and of b (Chan, Golub and LeVeque): with
// delta = mean_b - mean_a, mean = mean_a + delta n_b / n and m2 = m2_a + m2_b + delta^2 n_a n_b / n.
// Either side may be empty, and then the other is returned as it is.
__device__ __forceinline__ Moments merge(Moments a, Moments b) {
    if (b.count == 0.0) return a;
    if (a.count == 0.0) return b;
    const double count = a.count + b.count;
    const double delta = b.mean - a.mean, share = b.count / count;
    return {count, a.mean + delta * share, a.m2 + b.m2 + delta * delta * a.count * share};
}

// The merge of every thread's m, returned to every thread of the block, through the same fixed
// tree as block_sum. All threads of the block must call it (it synchronises).
__device__ __forceinline__ Moments block_merge(Moments m, Moments* buf) {
    __syncthreads();  // the previous call's readers are done with buf
    buf[threadIdx.x] = m;
    __syncthreads();
    for (int stride = BN_THREADS / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) buf[threadIdx.x] = merge(buf[threadIdx.x], buf[threadIdx.x + stride]);
        __syncthreads();
    }
    return buf[0];
}

// Pass 1 of the forward's statistics: the moments of each block's elements of x, written as
// three partials (count, mean, m2); x stored as X (E, or the 16-bit patterns of an f32 input),
// plus x_bias when not null (plus_bias, batch_norm.cuh).
template <typename E, typename X>
__device__ void bn_moments_partial(const X* __restrict__ x, const E* __restrict__ x_bias, double* __restrict__ partial,
                                   long long channels, long long inner, long long per_channel, long long chunks,
                                   long long chunk_len) {
    __shared__ Moments buf[BN_THREADS];
    for_each_chunk(
        [&](long long c, long long chunk, long long start, long long end) {
            ShiftedSums sums = {0.0, 0.0, 0.0, 0.0};
            walk_chunk([&](long long k) { return widened(x[k]); },
                       [&](double v) { add_value(sums, plus_bias(v, x_bias, c)); }, c, start, end, channels, inner);
            const Moments total = block_merge(moments_of(sums), buf);
            if (threadIdx.x == 0) {
                const double values[3] = {total.count, total.mean, total.m2};
                for (int s = 0; s < 3; ++s) partial[((long long)s * channels + c) * chunks + chunk] = values[s];
            }
        },
        channels, per_channel, chunks, chunk_len);
}

// Pass 2: the channel's moments, merged from its chunks' partials, give mean_c (kept in double and
// written to the batch statistics in E) and var_c = m2 / n (biased): inv_std_c = 1 / sqrt(var_c +
// eps), var_unbiased_c = m2 / (n - 1).
template <typename E>
__device__ void bn_moments_finalize(const double* __restrict__ partial, double* __restrict__ mean,
                                    E* __restrict__ mean_out, double* __restrict__ inv_std,
                                    E* __restrict__ var_unbiased, long long channels, long long chunks, double eps) {
    __shared__ Moments buf[BN_THREADS];
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        Moments m = {0.0, 0.0, 0.0};
        for (long long k = threadIdx.x; k < chunks; k += BN_THREADS) {
            const Moments chunk = {partial[c * chunks + k], partial[(channels + c) * chunks + k],
                                   partial[(2 * channels + c) * chunks + k]};
            m = merge(m, chunk);
        }
        const Moments total = block_merge(m, buf);
        if (threadIdx.x == 0) {
            mean[c] = total.mean;
            mean_out[c] = (E)total.mean;
            const double var = total.m2 / total.count;
            inv_std[c] = 1.0 / sqrt(var + eps);
            var_unbiased[c] = (E)(var * total.count / (total.count - 1.0));
        }
    }
}

// Evaluation constants from the running statistics: mean_c and 1 / sqrt(running_var_c + eps).
template <typename E>
__device__ void bn_eval_constants(const E* __restrict__ running_mean, const E* __restrict__ running_var,
                                  double* __restrict__ mean, double* __restrict__ inv_std, long long channels,
                                  double eps) {
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < channels;
         c += (long long)gridDim.x * blockDim.x) {
        mean[c] = (double)running_mean[c];
        inv_std[c] = 1.0 / sqrt((double)running_var[c] + eps);
    }
}

// The elementwise kernels below take `width` consecutive elements per thread: BN_VEC when inner is
// a multiple of BN_VEC (so a group lies in one channel), else 1. The channel is found once per
// group, and a group loads and stores as one 16-byte vector where its pointers allow (`vector`,
// the same for every group: the buffers' bases are 16-byte aligned); each element's arithmetic
// is the same either way.
#define BN_VEC 4

__device__ __forceinline__ bool aligned16(const void* p) { return (unsigned long long)p % 16 == 0; }

// A group of BN_VEC consecutive elements, widened to double, and back.
__device__ __forceinline__ void load_group(const float* p, double v[BN_VEC], bool vector) {
    if (vector) {
        const float4 q = *reinterpret_cast<const float4*>(p);
        v[0] = q.x;
        v[1] = q.y;
        v[2] = q.z;
        v[3] = q.w;
    } else {
        for (int u = 0; u < BN_VEC; ++u) v[u] = p[u];
    }
}
__device__ __forceinline__ void load_group(const double* p, double v[BN_VEC], bool vector) {
    if (vector) {
        const double2 lo = reinterpret_cast<const double2*>(p)[0], hi = reinterpret_cast<const double2*>(p)[1];
        v[0] = lo.x;
        v[1] = lo.y;
        v[2] = hi.x;
        v[3] = hi.y;
    } else {
        for (int u = 0; u < BN_VEC; ++u) v[u] = p[u];
    }
}
// Four 16-bit patterns as one 8-byte vector (the group's offset, 8 bytes per group, keeps the
// 16-byte alignment of the base at 8), element u in the low half of word u / 2 first.
template <typename Half>
__device__ __forceinline__ void load_half_group(const Half* p, double v[BN_VEC], bool vector) {
    if (vector) {
        const uint2 q = *reinterpret_cast<const uint2*>(p);
        const unsigned int words[2] = {q.x, q.y};
        for (int u = 0; u < BN_VEC; ++u) v[u] = widened(Half{(unsigned short)(words[u / 2] >> (16 * (u % 2)))});
    } else {
        for (int u = 0; u < BN_VEC; ++u) v[u] = widened(p[u]);
    }
}
__device__ __forceinline__ void load_group(const Bf16* p, double v[BN_VEC], bool vector) {
    load_half_group(p, v, vector);
}
__device__ __forceinline__ void load_group(const Fp16* p, double v[BN_VEC], bool vector) {
    load_half_group(p, v, vector);
}
__device__ __forceinline__ void store_group(float* p, const double v[BN_VEC], bool vector) {
    if (vector) {
        float4 q;
        q.x = (float)v[0];
        q.y = (float)v[1];
        q.z = (float)v[2];
        q.w = (float)v[3];
        *reinterpret_cast<float4*>(p) = q;
    } else {
        for (int u = 0; u < BN_VEC; ++u) p[u] = (float)v[u];
    }
}
__device__ __forceinline__ void store_group(double* p, const double v[BN_VEC], bool vector) {
    if (vector) {
        double2 lo, hi;
        lo.x = v[0];
        lo.y = v[1];
        hi.x = v[2];
        hi.y = v[3];
        reinterpret_cast<double2*>(p)[0] = lo;
        reinterpret_cast<double2*>(p)[1] = hi;
    } else {
        for (int u = 0; u < BN_VEC; ++u) p[u] = v[u];
    }
}

// Four results as 16-bit patterns (each rounded through f32, store_element), packed into one
// 8-byte vector as load_half_group reads them.
template <typename Half>
__device__ __forceinline__ void store_half_group(Half* p, const double v[BN_VEC], bool vector) {
    Half h[BN_VEC];
    for (int u = 0; u < BN_VEC; ++u) store_element(&h[u], v[u]);
    if (vector) {
        uint2 q;
        q.x = (unsigned int)h[0].bits | ((unsigned int)h[1].bits << 16);
        q.y = (unsigned int)h[2].bits | ((unsigned int)h[3].bits << 16);
        *reinterpret_cast<uint2*>(p) = q;
    } else {
        for (int u = 0; u < BN_VEC; ++u) p[u] = h[u];
    }
}
__device__ __forceinline__ void store_group(Bf16* p, const double v[BN_VEC], bool vector) {
    store_half_group(p, v, vector);
}
__device__ __forceinline__ void store_group(Fp16* p, const double v[BN_VEC], bool vector) {
    store_half_group(p, v, vector);
}

// group(k, c) for each group of `width` elements k, ..., k + width - 1 of channel c, with a
// grid stride over the groups.
template <typename Group>
__device__ __forceinline__ void for_each_group(Group group, long long channels, long long inner, long long total,
                                               long long width) {
    const bool narrow = total <= 0xffffffffLL;
    const long long groups = total / width;
    for (long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += (long long)gridDim.x * blockDim.x) {
        const long long k = g * width;
        group(k, channel_of(k, inner, channels, narrow));
    }
}

// y = gamma_c inv_std_c (x - mean_c) + beta_c over every element; x stored as X, plus x_bias when
// not null.
template <typename E, typename X>
__device__ void bn_normalise(const X* __restrict__ x, const E* __restrict__ x_bias, E* __restrict__ y,
                             const double* __restrict__ mean, const double* __restrict__ inv_std,
                             const E* __restrict__ gamma, const E* __restrict__ beta,
                             long long channels, long long inner, long long total, long long width) {
    const bool vector = aligned16(x) && aligned16(y);
    for_each_group(
        [&](long long k, long long c) {
            const ChannelMap map = ChannelMap::of(mean, inv_std, gamma, beta, c);
            if (width == BN_VEC) {
                double v[BN_VEC];
                load_group(x + k, v, vector);
                for (int u = 0; u < BN_VEC; ++u) v[u] = map(plus_bias(v[u], x_bias, c));
                store_group(y + k, v, vector);
            } else {
                y[k] = (E)map(plus_bias(widened(x[k]), x_bias, c));
            }
        },
        channels, inner, total, width);
}

// y = y + n or y - n (subtract != 0) with n = gamma_c inv_std_c (x - mean_c) + beta_c rounded to
// E, y holding the residual the output lands on: the bits of bn_normalise, then add_in_place or
// sub_in_place of tensor.cu (residual +- n rounded once in E), with no buffer for n.
template <typename E, typename X>
__device__ void bn_normalise_onto(const X* __restrict__ x, const E* __restrict__ x_bias, E* __restrict__ y,
                                  const double* __restrict__ mean, const double* __restrict__ inv_std,
                                  const E* __restrict__ gamma,
                                  const E* __restrict__ beta, long long channels, long long inner, long long total,
                                  long long width, int subtract) {
    const bool vector = aligned16(x) && aligned16(y);
    for_each_group(
        [&](long long k, long long c) {
            const ChannelMap map = ChannelMap::of(mean, inv_std, gamma, beta, c);
            const auto land = [&](double residual, double value) -> E {
                const E n = (E)map(value);
                return subtract ? sub_rn((E)residual, n) : add_rn((E)residual, n);
            };
            if (width == BN_VEC) {
                double v[BN_VEC], r[BN_VEC];
                load_group(x + k, v, vector);
                load_group(y + k, r, vector);
                for (int u = 0; u < BN_VEC; ++u) v[u] = land(r[u], plus_bias(v[u], x_bias, c));
                store_group(y + k, v, vector);
            } else {
                y[k] = land(widened(y[k]), plus_bias(widened(x[k]), x_bias, c));
            }
        },
        channels, inner, total, width);
}

// An element's gradient and input, as the backward's sums read them.
struct GradAndInput {
    double dy, x;
};

// dy as the backward reads it, element k or a group of BN_VEC from k: a tensor of E
// (GradTensor), or the input gradient of the average pool after the BatchNorm, made from the
// pool's output gradient as it is read (AvgPooledGrad, pool.cuh: the f32 values avg_pool_backward
// would write, so the same bits with no tensor of the BatchNorm's output size).
template <typename E> struct GradTensor {
    const E* __restrict__ p;
    __device__ __forceinline__ double operator[](long long k) const { return (double)p[k]; }
    __device__ __forceinline__ void load(long long k, double v[BN_VEC], bool vector) const {
        load_group(p + k, v, vector);
    }
    __device__ __forceinline__ bool aligned() const { return aligned16(p); }
};
struct AvgPooledGrad {
    const float* __restrict__ grad_pooled;
    PoolGeometry g;
    __device__ __forceinline__ double operator[](long long k) const {
        return (double)avg_pool_grad_at(grad_pooled, g, k);
    }
    __device__ __forceinline__ void load(long long k, double v[BN_VEC], bool) const {
        for (int u = 0; u < BN_VEC; ++u) v[u] = (*this)[k + u];
    }
    __device__ __forceinline__ bool aligned() const { return true; }
};

// sum_j dy and sum_j dy x_hat with x_hat = (x - mean_c) inv_std_c; x stored as X (E, or the
// 16-bit patterns of an f32 input) plus x_bias when not null, dy read through DY (GradTensor or
// AvgPooledGrad).
template <typename E, typename X, typename DY>
__device__ void bn_grad_partial(const X* __restrict__ x, const E* __restrict__ x_bias, DY grad_y,
                                const double* __restrict__ mean,
                                const double* __restrict__ inv_std, double* __restrict__ partial, long long channels,
                                long long inner, long long per_channel, long long chunks, long long chunk_len) {
    partial_sums<2>([&](long long k) { return GradAndInput{grad_y[k], widened(x[k])}; },
                    [&](const GradAndInput& v, long long c, double* acc) {
                        acc[0] += v.dy;
                        acc[1] += v.dy * (plus_bias(v.x, x_bias, c) - mean[c]) * inv_std[c];
                    },
                    partial, channels, inner, per_channel, chunks, chunk_len);
}

// means = [sum dy / n (C), sum dy x_hat / n (C)] in double, once per channel for the input
// gradient; grad_beta = sum dy, grad_gamma = sum dy x_hat in E.
template <typename E>
__device__ void bn_grad_finalize(const double* __restrict__ partial, double* __restrict__ means, E* __restrict__ grad_gamma,
                                 E* __restrict__ grad_beta, long long channels, long long chunks, long long per_channel) {
    const double count = (double)per_channel;
    channel_totals<2>(
        [&](long long c, const double* totals) {
            means[c] = totals[0] / count;
            means[channels + c] = totals[1] / count;
            grad_beta[c] = (E)totals[0];
            grad_gamma[c] = (E)totals[1];
        },
        partial, channels, chunks);
}

// train: dx = gamma_c inv_std_c (dy - sum dy / n - x_hat sum dy x_hat / n), the two means from
// bn_grad_finalize; eval: dx = gamma_c inv_std_c dy.
__device__ __forceinline__ double bn_input_grad(double dy, double x, double scale, double mean, double inv_std,
                                                double mean_dy, double mean_dy_xhat, int train) {
    if (!train) return scale * dy;
    const double x_hat = (x - mean) * inv_std;
    return scale * (dy - mean_dy - x_hat * mean_dy_xhat);
}

// grad_x stored as D: E, or the 16-bit patterns of the f32 result (the operand of the
// convolution before the BatchNorm, docs/precision.md §"Convolution outputs"); x is read plus x_bias
// when not null. grad_x may be x
// itself (the `_in_place` kernels), so neither is restrict: each element of x is read before its
// gradient is written over it, by the same thread. dy is read through DY (GradTensor or
// AvgPooledGrad).
template <typename E, typename X, typename D, typename DY>
__device__ void bn_backward_input(const X* x, const E* __restrict__ x_bias, DY grad_y, D* grad_x,
                                  const double* __restrict__ mean, const double* __restrict__ inv_std,
                                  const E* __restrict__ gamma, const double* __restrict__ means, long long channels,
                                  long long inner, long long total, long long width, int train) {
    const bool vector = aligned16(x) && grad_y.aligned() && aligned16(grad_x);
    for_each_group(
        [&](long long k, long long c) {
            const double scale = (double)gamma[c] * inv_std[c], shift = mean[c], inv = inv_std[c];
            const double mean_dy = train ? means[c] : 0.0, mean_dy_xhat = train ? means[channels + c] : 0.0;
            if (width == BN_VEC) {
                double dy[BN_VEC], xs[BN_VEC] = {0.0, 0.0, 0.0, 0.0};
                grad_y.load(k, dy, vector);
                if (train) load_group(x + k, xs, vector);
                for (int u = 0; u < BN_VEC; ++u) {
                    const double xu = plus_bias(xs[u], x_bias, c);
                    dy[u] = bn_input_grad(dy[u], xu, scale, shift, inv, mean_dy, mean_dy_xhat, train);
                }
                store_group(grad_x + k, dy, vector);
            } else {
                const double xk = train ? plus_bias(widened(x[k]), x_bias, c) : 0.0;
                store_element(grad_x + k,
                              bn_input_grad(grad_y[k], xk, scale, shift, inv, mean_dy, mean_dy_xhat, train));
            }
        },
        channels, inner, total, width);
}

// running = (1 - momentum) running + momentum batch, in double, per channel.
template <typename E>
__device__ void bn_update_running(const E* __restrict__ running_mean, const E* __restrict__ running_var,
                                  const E* __restrict__ batch_mean, const E* __restrict__ batch_var,
                                  E* __restrict__ new_mean, E* __restrict__ new_var, long long channels, double momentum) {
    for (long long c = (long long)blockIdx.x * blockDim.x + threadIdx.x; c < channels;
         c += (long long)gridDim.x * blockDim.x) {
        new_mean[c] = (E)((1.0 - momentum) * (double)running_mean[c] + momentum * (double)batch_mean[c]);
        new_var[c] = (E)((1.0 - momentum) * (double)running_var[c] + momentum * (double)batch_var[c]);
    }
}

#define BATCH_NORM_KERNELS(E, SUFFIX)                                                                                  \
    extern "C" __global__ void bn_moments_partial_##SUFFIX(const E* x, const E* x_bias, double* partial,               \
                                                           long long channels, long long inner, long long per_channel, \
                                                           long long chunks, long long chunk_len) {                    \
        bn_moments_partial<E, E>(x, x_bias, partial, channels, inner, per_channel, chunks, chunk_len);                 \
    }                                                                                                                  \
    extern "C" __global__ void bn_moments_finalize_##SUFFIX(const double* partial, double* mean, E* mean_out,          \
                                                            double* inv_std, E* var_unbiased, long long channels,      \
                                                            long long chunks, double eps) {                            \
        bn_moments_finalize<E>(partial, mean, mean_out, inv_std, var_unbiased, channels, chunks, eps);                 \
    }                                                                                                                  \
    extern "C" __global__ void bn_eval_constants_##SUFFIX(const E* running_mean, const E* running_var,                 \
                                                          double* mean, double* inv_std, long long channels,           \
                                                          double eps) {                                                \
        bn_eval_constants<E>(running_mean, running_var, mean, inv_std, channels, eps);                                 \
    }                                                                                                                  \
    extern "C" __global__ void bn_normalise_##SUFFIX(const E* x, const E* x_bias, E* y, const double* mean,            \
                                                     const double* inv_std, const E* gamma, const E* beta,             \
                                                     long long channels, long long inner, long long total,             \
                                                     long long width) {                                                \
        bn_normalise<E, E>(x, x_bias, y, mean, inv_std, gamma, beta, channels, inner, total, width);                   \
    }                                                                                                                  \
    extern "C" __global__ void bn_normalise_onto_##SUFFIX(const E* x, const E* x_bias, E* y, const double* mean,       \
                                                          const double* inv_std, const E* gamma, const E* beta,        \
                                                          long long channels, long long inner, long long total,        \
                                                          long long width, int subtract) {                             \
        bn_normalise_onto<E, E>(x, x_bias, y, mean, inv_std, gamma, beta, channels, inner, total, width, subtract);    \
    }                                                                                                                  \
    extern "C" __global__ void bn_grad_partial_##SUFFIX(const E* x, const E* x_bias, const E* grad_y,                  \
                                                        const double* mean, const double* inv_std, double* partial,    \
                                                        long long channels, long long inner, long long per_channel,    \
                                                        long long chunks, long long chunk_len) {                       \
        bn_grad_partial<E, E>(x, x_bias, GradTensor<E>{grad_y}, mean, inv_std, partial, channels, inner,               \
                              per_channel, chunks, chunk_len);                                                         \
    }                                                                                                                  \
    extern "C" __global__ void bn_grad_finalize_##SUFFIX(const double* partial, double* means, E* grad_gamma,          \
                                                         E* grad_beta, long long channels, long long chunks,           \
                                                         long long per_channel) {                                      \
        bn_grad_finalize<E>(partial, means, grad_gamma, grad_beta, channels, chunks, per_channel);                     \
    }                                                                                                                  \
    extern "C" __global__ void bn_backward_input_##SUFFIX(const E* x, const E* x_bias, const E* grad_y, E* grad_x,     \
                                                          const double* mean, const double* inv_std,                   \
                                                          const E* gamma, const double* means, long long channels,     \
                                                          long long inner, long long total, long long width,           \
                                                          int train) {                                                 \
        bn_backward_input<E, E, E>(x, x_bias, GradTensor<E>{grad_y}, grad_x, mean, inv_std, gamma, means,              \
                                   channels, inner, total, width, train);                                              \
    }                                                                                                                  \
    extern "C" __global__ void bn_update_running_##SUFFIX(const E* running_mean, const E* running_var,                 \
                                                          const E* batch_mean, const E* batch_var, E* new_mean,        \
                                                          E* new_var, long long channels, double momentum) {           \
        bn_update_running<E>(running_mean, running_var, batch_mean, batch_var, new_mean, new_var, channels,            \
                             momentum);                                                                                \
    }

BATCH_NORM_KERNELS(float, f32)
BATCH_NORM_KERNELS(double, f64)

// The forward and the backward over an f32 input held as its 16-bit patterns X (Bf16 or Fp16).
#define BATCH_NORM_HALF_INPUT_KERNELS(X, FORMAT)                                                                      \
    extern "C" __global__ void bn_moments_partial_f32_from_##FORMAT(const X* x, const float* x_bias,                  \
                                                                    double* partial, long long channels,              \
                                                                    long long inner, long long per_channel,           \
                                                                    long long chunks, long long chunk_len) {          \
        bn_moments_partial<float, X>(x, x_bias, partial, channels, inner, per_channel, chunks, chunk_len);            \
    }                                                                                                                 \
    extern "C" __global__ void bn_normalise_f32_from_##FORMAT(                                                        \
        const X* x, const float* x_bias, float* y, const double* mean, const double* inv_std, const float* gamma,     \
        const float* beta, long long channels, long long inner, long long total, long long width) {                   \
        bn_normalise<float, X>(x, x_bias, y, mean, inv_std, gamma, beta, channels, inner, total, width);              \
    }                                                                                                                 \
    extern "C" __global__ void bn_normalise_onto_f32_from_##FORMAT(                                                   \
        const X* x, const float* x_bias, float* y, const double* mean, const double* inv_std, const float* gamma,     \
        const float* beta, long long channels, long long inner, long long total, long long width, int subtract) {     \
        bn_normalise_onto<float, X>(x, x_bias, y, mean, inv_std, gamma, beta, channels, inner, total, width,          \
                                    subtract);                                                                        \
    }                                                                                                                 \
    extern "C" __global__ void bn_grad_partial_f32_from_##FORMAT(                                                     \
        const X* x, const float* x_bias, const float* grad_y, const double* mean, const double* inv_std,              \
        double* partial, long long channels, long long inner, long long per_channel, long long chunks,                \
        long long chunk_len) {                                                                                        \
        bn_grad_partial<float, X>(x, x_bias, GradTensor<float>{grad_y}, mean, inv_std, partial, channels, inner,      \
                                  per_channel, chunks, chunk_len);                                                    \
    }                                                                                                                 \
    extern "C" __global__ void bn_backward_input_f32_from_##FORMAT(                                                   \
        const X* x, const float* x_bias, const float* grad_y, float* grad_x, const double* mean,                      \
        const double* inv_std, const float* gamma, const double* means, long long channels, long long inner,          \
        long long total, long long width, int train) {                                                                \
        bn_backward_input<float, X, float>(x, x_bias, GradTensor<float>{grad_y}, grad_x, mean, inv_std, gamma, means, \
                                           channels, inner, total, width, train);                                     \
    }

BATCH_NORM_HALF_INPUT_KERNELS(Bf16, bf16)
BATCH_NORM_HALF_INPUT_KERNELS(Fp16, fp16)

// The input gradient of an f32 BatchNorm stored as the 16-bit patterns D of its f32 values, for
// the 16-bit convolution before it (Backend::conv_batch_norm_backward): from an input held as X,
// f32 or the 16-bit patterns of an f32 input, `bn_backward_input_<input>_to_<format>`.
#define BATCH_NORM_HALF_GRAD_KERNEL(X, INPUT, D, FORMAT)                                                            \
    extern "C" __global__ void bn_backward_input_##INPUT##_to_##FORMAT(                                             \
        const X* x, const float* x_bias, const float* grad_y, D* grad_x, const double* mean, const double* inv_std, \
        const float* gamma, const double* means, long long channels, long long inner, long long total,              \
        long long width, int train) {                                                                               \
        bn_backward_input<float, X, D>(x, x_bias, GradTensor<float>{grad_y}, grad_x, mean, inv_std, gamma, means,   \
                                       channels, inner, total, width, train);                                       \
    }

BATCH_NORM_HALF_GRAD_KERNEL(float, f32, Bf16, bf16)
BATCH_NORM_HALF_GRAD_KERNEL(float, f32, Fp16, fp16)
BATCH_NORM_HALF_GRAD_KERNEL(Bf16, f32_from_bf16, Bf16, bf16)
BATCH_NORM_HALF_GRAD_KERNEL(Bf16, f32_from_bf16, Fp16, fp16)
BATCH_NORM_HALF_GRAD_KERNEL(Fp16, f32_from_fp16, Bf16, bf16)
BATCH_NORM_HALF_GRAD_KERNEL(Fp16, f32_from_fp16, Fp16, fp16)

// The same, written over the 16-bit input it reads (docs/precision.md §"Convolution outputs": the
// convolution's 16-bit output, whose last reader this is, becomes its 16-bit dy):
// `bn_backward_input_in_place_f32_from_<format>`.
#define BATCH_NORM_HALF_GRAD_IN_PLACE_KERNEL(X, FORMAT)                                                                \
    extern "C" __global__ void bn_backward_input_in_place_f32_from_##FORMAT(                                           \
        X* x, const float* x_bias, const float* grad_y, const double* mean, const double* inv_std, const float* gamma, \
        const double* means, long long channels, long long inner, long long total, long long width, int train) {       \
        bn_backward_input<float, X, X>(x, x_bias, GradTensor<float>{grad_y}, x, mean, inv_std, gamma, means, channels, \
                                       inner, total, width, train);                                                    \
    }

BATCH_NORM_HALF_GRAD_IN_PLACE_KERNEL(Bf16, bf16)
BATCH_NORM_HALF_GRAD_IN_PLACE_KERNEL(Fp16, fp16)

// The backward's two passes over the 16-bit input they write over, with dy the input gradient of
// the average pool after the BatchNorm (AvgPooledGrad) made from the pool's output gradient
// grad_pooled [planes, out_h, out_w] (Backend::avg_pool_conv_batch_norm_backward): `_avg_pooled`.
#define BATCH_NORM_AVG_POOLED_KERNELS(X, FORMAT)                                                                     \
    extern "C" __global__ void bn_grad_partial_f32_from_##FORMAT##_avg_pooled(                                       \
        const X* x, const float* x_bias, const float* grad_pooled, const double* mean, const double* inv_std,        \
        double* partial, long long channels, long long inner, long long per_channel, long long chunks,               \
        long long chunk_len, long long planes, long long h, long long w, long long out_h, long long out_w,           \
        long long kernel, long long stride, long long padding) {                                                     \
        const AvgPooledGrad dy{grad_pooled, {planes, h, w, out_h, out_w, kernel, stride, padding}};                  \
        bn_grad_partial<float, X>(x, x_bias, dy, mean, inv_std, partial, channels, inner, per_channel, chunks,       \
                                  chunk_len);                                                                        \
    }                                                                                                                \
    extern "C" __global__ void bn_backward_input_in_place_f32_from_##FORMAT##_avg_pooled(                            \
        X* x, const float* x_bias, const float* grad_pooled, const double* mean, const double* inv_std,              \
        const float* gamma, const double* means, long long channels, long long inner, long long total,               \
        long long width, int train, long long planes, long long h, long long w, long long out_h, long long out_w,    \
        long long kernel, long long stride, long long padding) {                                                     \
        const AvgPooledGrad dy{grad_pooled, {planes, h, w, out_h, out_w, kernel, stride, padding}};                  \
        bn_backward_input<float, X, X>(x, x_bias, dy, x, mean, inv_std, gamma, means, channels, inner, total, width, \
                                       train);                                                                       \
    }

BATCH_NORM_AVG_POOLED_KERNELS(Bf16, bf16)
BATCH_NORM_AVG_POOLED_KERNELS(Fp16, fp16)
