// The 16-bit GEMM operands and stored convolution outputs of --precision bf16 and fp16
// (docs/precision.md); twin of reference/src/contract/precision.rs (`Precision::round`), host
// side in gpu/src/ops/precision.rs.
//
// The round trips (f32 -> 16 bits -> f32) give the rounded f32 values the reference computes
// with `Precision::round`. `from_*` widens 16-bit outputs exactly (`add_from_*` onto what the f32
// target holds). The conversions themselves are in half.cuh.

#include "half.cuh"

#define PRECISION_KERNELS(FORMAT)                                                                          \
    extern "C" __global__ void to_##FORMAT(const float* __restrict__ x, unsigned short* __restrict__ y,  \
                                           long long n) {                                                \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = f32_to_##FORMAT##_bits(x[at]);                                                       \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void round_##FORMAT(const float* __restrict__ x, float* __restrict__ y,        \
                                              long long n) {                                             \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = FORMAT##_bits_to_f32(f32_to_##FORMAT##_bits(x[at]));                                 \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void from_##FORMAT(const unsigned short* __restrict__ x, float* __restrict__ y, \
                                             long long n) {                                              \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = FORMAT##_bits_to_f32(x[at]);                                                         \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void add_from_##FORMAT(const unsigned short* __restrict__ x,                   \
                                                 float* __restrict__ y, long long n) {                   \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] += FORMAT##_bits_to_f32(x[at]);                                                        \
        }                                                                                                \
    }

PRECISION_KERNELS(bf16)
PRECISION_KERNELS(fp16)
