// A BatchNorm's per-channel map y = gamma_c inv_std_c (x - mean_c) + beta_c over x [N, C, inner]
// (docs/conventions.md §1), shared by batch_norm.cu, which writes y, and neuron.cu and pool.cu,
// which make a training BatchNorm's output as they read it (docs/neurons.md §2.4.2): one
// expression in all, so the same bits.
#pragma once

#include "half.cuh"

// The channel of element k: (k / inner) % channels, in 32 bits when every index fits (a 64-bit
// division costs several times a 32-bit one, and the elementwise kernels do one per element).
__device__ __forceinline__ long long channel_of(long long k, long long inner, long long channels, bool narrow) {
    if (narrow) return (long long)((unsigned int)k / (unsigned int)inner % (unsigned int)channels);
    return (k / inner) % channels;
}

// Channel c's map in double: scale (x - shift) + offset with scale = gamma_c inv_std_c,
// shift = mean_c, offset = beta_c.
struct ChannelMap {
    double scale, shift, offset;
    template <typename E>
    __device__ __forceinline__ static ChannelMap of(const double* mean, const double* inv_std, const E* gamma,
                                                    const E* beta, long long c) {
        return {(double)gamma[c] * inv_std[c], mean[c], (double)beta[c]};
    }
    __device__ __forceinline__ double operator()(double x) const { return scale * (x - shift) + offset; }
};

// A BatchNorm's input value v (an element widened by half.cuh) plus channel c's entry of the
// input's bias when there is one (`bias` not null), added in E: a biased convolution's output kept
// as its 16-bit sums and its bias, whose f32 value bias_c + sums, the one the convolution would
// have written, every kernel that reads such an input makes as it loads it (docs/precision.md
// §"Convolution outputs").
template <typename E>
__device__ __forceinline__ double plus_bias(double v, const E* bias, long long c) {
    return bias ? (double)((E)v + bias[c]) : v;
}

// A training BatchNorm's output as it wrote it, or would have, made as it is read (docs/neurons.md
// §2.4.2; docs/memory.md §9.6): the map of channel c over its input x, stored as X (widened by
// half.cuh) plus the input's bias (plus_bias), rounded to E as bn_normalise rounds it. A neuron's
// input in neuron.cu, an average pool's in pool.cu.
template <typename E, typename X> struct NormalisedInput {
    const X* x;
    const E* bias;
    long long c;
    ChannelMap map;
    __device__ __forceinline__ E operator[](long long at) const {
        return (E)map(plus_bias(widened(x[at]), bias, c));
    }
};
