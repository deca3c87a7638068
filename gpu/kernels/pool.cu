// Average and max pooling over x [N, C, H, W], PyTorch's ceil_mode=False (docs/conventions.md §1; docs/choices.md §A7); twin of
// reference/src/ops/pool.rs.
//
// A plane is one (n, c) slice: x holds `planes` planes of h x w, y planes of out_h x out_w.
// Output (o_h, o_w) pools the input rows [o_h stride - padding, o_h stride - padding + kernel)
// clipped to [0, h), likewise the columns. Every kernel has one thread per output (forwards) or
// per input element (backwards, as gathers over the windows covering it), grid-strided, each
// summing in a fixed row-major order with no atomics, exactly as the reference's loops do.

#include "batch_norm.cuh"
#include "pool.cuh"

template <typename E> __device__ __forceinline__ E negative_infinity();
template <> __device__ __forceinline__ float negative_infinity<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double negative_infinity<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}

// y = (1 / kernel^2) sum over the window, zero padding counted (count_include_pad=True), the
// input's plane p read through plane_at(p) (a pointer, or a NormalisedInput: a training
// BatchNorm's output made as it is read).
template <typename E, typename PlaneAt>
__device__ void avg_pool_forward(PlaneAt plane_at, E* __restrict__ y, long long planes, long long h, long long w,
                                 long long out_h, long long out_w, long long kernel, long long stride,
                                 long long padding) {
    const long long total = planes * out_h * out_w;
    const double divisor = (double)(kernel * kernel);
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        const long long plane = at / (out_h * out_w), o = at % (out_h * out_w);
        long long r0, r1, c0, c1;
        window(o / out_w, h, kernel, stride, padding, &r0, &r1);
        window(o % out_w, w, kernel, stride, padding, &c0, &c1);
        const auto x_plane = plane_at(plane);
        double sum = 0.0;
        for (long long r = r0; r < r1; ++r)
            for (long long c = c0; c < c1; ++c) sum += (double)x_plane[r * w + c];
        y[at] = (E)(sum / divisor);
    }
}

// dx = (1 / kernel^2) sum of dy over the outputs whose windows contain the element, row-major
// (pool.cuh).
template <typename E>
__device__ void avg_pool_backward(const E* __restrict__ grad_y, E* __restrict__ grad_x, long long planes, long long h,
                                  long long w, long long out_h, long long out_w, long long kernel, long long stride,
                                  long long padding) {
    const PoolGeometry g{planes, h, w, out_h, out_w, kernel, stride, padding};
    const long long total = planes * h * w;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        grad_x[at] = avg_pool_grad_at(grad_y, g, at);
    }
}

// y = the window's maximum with -inf padding; the first maximum in row-major window order wins a
// tie and a NaN wins (replace when v > best or v is NaN). argmax = its offset a k + b inside the
// unclipped k x k window, one byte (the host checks k k <= 256).
template <typename E>
__device__ void max_pool_forward(const E* __restrict__ x, E* __restrict__ y, unsigned char* __restrict__ argmax,
                                 long long planes, long long h, long long w, long long out_h, long long out_w,
                                 long long kernel, long long stride, long long padding) {
    const long long total = planes * out_h * out_w;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        const long long plane = at / (out_h * out_w), o = at % (out_h * out_w);
        const long long top = (o / out_w) * stride - padding, left = (o % out_w) * stride - padding;
        long long r0, r1, c0, c1;
        window(o / out_w, h, kernel, stride, padding, &r0, &r1);
        window(o % out_w, w, kernel, stride, padding, &c0, &c1);
        const E* x_plane = x + plane * h * w;
        E best = negative_infinity<E>();
        long long best_at = (r0 - top) * kernel + (c0 - left);
        for (long long r = r0; r < r1; ++r)
            for (long long c = c0; c < c1; ++c) {
                const E v = x_plane[r * w + c];
                if (v > best || v != v) {
                    best = v;
                    best_at = (r - top) * kernel + (c - left);
                }
            }
        y[at] = best;
        argmax[at] = (unsigned char)best_at;
    }
}

// dx = the sum of dy over the outputs whose argmax is this element, in row-major output order,
// accumulated in E from 0 as the reference does. Only windows covering the element can hold it;
// in the window of output (r, c) the element sits at offset (i_r - r s + p) k + (i_c - c s + p).
template <typename E>
__device__ void max_pool_backward(const E* __restrict__ grad_y, const unsigned char* __restrict__ argmax,
                                  E* __restrict__ grad_x, long long planes, long long h, long long w, long long out_h,
                                  long long out_w, long long kernel, long long stride, long long padding) {
    const long long total = planes * h * w;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        const long long plane = at / (h * w), i = at % (h * w);
        const long long row = i / w + padding, col = i % w + padding;
        long long r0, r1, c0, c1;
        covering(i / w, out_h, kernel, stride, padding, &r0, &r1);
        covering(i % w, out_w, kernel, stride, padding, &c0, &c1);
        const long long out_plane = plane * out_h * out_w;
        E sum = (E)0;
        for (long long r = r0; r < r1; ++r)
            for (long long c = c0; c < c1; ++c) {
                const long long o = out_plane + r * out_w + c;
                const long long offset = (row - r * stride) * kernel + (col - c * stride);
                if ((long long)argmax[o] == offset) sum += grad_y[o];
            }
        grad_x[at] = sum;
    }
}

#define POOL_KERNELS(E, SUFFIX)                                                                                    \
    extern "C" __global__ void avg_pool_forward_##SUFFIX(const E* x, E* y, long long planes, long long h,          \
                                                         long long w, long long out_h, long long out_w,            \
                                                         long long kernel, long long stride, long long padding) {  \
        const auto plane_at = [&](long long plane) { return x + plane * h * w; };                                 \
        avg_pool_forward<E>(plane_at, y, planes, h, w, out_h, out_w, kernel, stride, padding);                     \
    }                                                                                                              \
    extern "C" __global__ void avg_pool_backward_##SUFFIX(const E* grad_y, E* grad_x, long long planes,            \
                                                          long long h, long long w, long long out_h,               \
                                                          long long out_w, long long kernel, long long stride,     \
                                                          long long padding) {                                     \
        avg_pool_backward<E>(grad_y, grad_x, planes, h, w, out_h, out_w, kernel, stride, padding);                 \
    }                                                                                                              \
    extern "C" __global__ void max_pool_forward_##SUFFIX(const E* x, E* y, unsigned char* argmax,                  \
                                                         long long planes, long long h, long long w,               \
                                                         long long out_h, long long out_w, long long kernel,       \
                                                         long long stride, long long padding) {                    \
        max_pool_forward<E>(x, y, argmax, planes, h, w, out_h, out_w, kernel, stride, padding);                    \
    }                                                                                                              \
    extern "C" __global__ void max_pool_backward_##SUFFIX(const E* grad_y, const unsigned char* argmax,            \
                                                          E* grad_x, long long planes, long long h, long long w,   \
                                                          long long out_h, long long out_w, long long kernel,      \
                                                          long long stride, long long padding) {                   \
        max_pool_backward<E>(grad_y, argmax, grad_x, planes, h, w, out_h, out_w, kernel, stride, padding);         \
    }

POOL_KERNELS(float, f32)
POOL_KERNELS(double, f64)

// The average pool of a training BatchNorm's output made as it is read from the BatchNorm's input
// x [N, C, h w] stored as X (NormalisedInput, batch_norm.cuh), so that output is never written
// (Backend::conv_batch_norm_train_avg_pool; docs/memory.md §9.6): the bits of bn_normalise, then
// avg_pool_forward. Plane p is channel p % channels.
#define AVG_POOL_NORMALISED_KERNEL(E, X, NAME)                                                                     \
    extern "C" __global__ void NAME(E* y, const X* x, const E* x_bias, const double* mean, const double* inv_std, \
                                    const E* gamma, const E* beta, long long channels, long long planes,          \
                                    long long h, long long w, long long out_h, long long out_w, long long kernel, \
                                    long long stride, long long padding) {                                         \
        const auto plane_at = [&](long long plane) {                                                               \
            const long long c = plane % channels;                                                                  \
            const ChannelMap map = ChannelMap::of(mean, inv_std, gamma, beta, c);                                  \
            return NormalisedInput<E, X>{x + plane * h * w, x_bias, c, map};                                       \
        };                                                                                                         \
        avg_pool_forward<E>(plane_at, y, planes, h, w, out_h, out_w, kernel, stride, padding);                     \
    }

AVG_POOL_NORMALISED_KERNEL(float, float, avg_pool_forward_from_normalised_f32)
AVG_POOL_NORMALISED_KERNEL(double, double, avg_pool_forward_from_normalised_f64)
AVG_POOL_NORMALISED_KERNEL(float, Bf16, avg_pool_forward_from_normalised_f32_input_bf16)
AVG_POOL_NORMALISED_KERNEL(float, Fp16, avg_pool_forward_from_normalised_f32_input_fp16)
