// The bias of the linear layers and convolutions (docs/architectures.md §4.0); twin of
// reference/src/ops/linear.rs and conv/mod.rs, host side in gpu/src/ops/linear.rs. The products
// themselves are cuBLAS GEMMs.
//
// Both kernels see the output as [outer, channels, inner] row-major: [N, out] with inner = 1 for a
// linear layer, [N, C_out, H_out W_out] for a convolution.

#include "half.cuh"

#define BIAS_THREADS 256

// y[a, c, p] = bias[c] over outer * channels * inner elements (the GEMM then adds its product).
template <typename E>
__device__ void bias_fill(const E* __restrict__ bias, E* __restrict__ y, long long total, long long channels,
                          long long inner) {
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        y[at] = bias[(at / inner) % channels];
    }
}

// db[c] = sum_{a, p} dy[a, c, p]. One block of exactly BIAS_THREADS threads per channel (grid
// stride over channels): thread t sums the flattened (a, p) indices t, t + BIAS_THREADS, ... in
// increasing order, then a fixed shared-memory tree adds the threads' sums. The order depends on
// the shapes only, never on scheduling, and no atomics are used. `dy` may be stored as 16-bit
// patterns (X = Bf16 or Fp16, `bias_grad_f32_from_*`): each is widened exactly as it is read, so
// the sums are the bits `bias_grad_f32` gives over the widened values.
template <typename X, typename E>
__device__ void bias_grad(const X* __restrict__ dy, E* __restrict__ db, long long outer, long long channels,
                          long long inner) {
    __shared__ E partial[BIAS_THREADS];
    long long count = outer * inner;
    int t = threadIdx.x;
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        E sum = (E)0;
        for (long long e = t; e < count; e += BIAS_THREADS) {
            long long a = e / inner;
            long long p = e % inner;
            sum += (E)widened(dy[(a * channels + c) * inner + p]);
        }
        partial[t] = sum;
        __syncthreads();
        for (int half = BIAS_THREADS / 2; half > 0; half /= 2) {
            if (t < half) partial[t] += partial[t + half];
            __syncthreads();
        }
        if (t == 0) db[c] = partial[0];
        __syncthreads();
    }
}

#define LINEAR_KERNELS(E, SUFFIX)                                                                            \
    extern "C" __global__ void bias_fill_##SUFFIX(const E* bias, E* y, long long total, long long channels,  \
                                                  long long inner) {                                         \
        bias_fill<E>(bias, y, total, channels, inner);                                                       \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(BIAS_THREADS)                                               \
        bias_grad_##SUFFIX(const E* dy, E* db, long long outer, long long channels, long long inner) {       \
        bias_grad<E, E>(dy, db, outer, channels, inner);                                                     \
    }

LINEAR_KERNELS(float, f32)
LINEAR_KERNELS(double, f64)

#define BIAS_GRAD_FROM_HALF_KERNEL(X, FORMAT)                                                                \
    extern "C" __global__ void __launch_bounds__(BIAS_THREADS) bias_grad_f32_from_##FORMAT(                 \
        const X* dy, float* db, long long outer, long long channels, long long inner) {                      \
        bias_grad<X, float>(dy, db, outer, channels, inner);                                                 \
    }

BIAS_GRAD_FROM_HALF_KERNEL(Bf16, bf16)
BIAS_GRAD_FROM_HALF_KERNEL(Fp16, fp16)
