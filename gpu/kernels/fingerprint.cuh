// The spike fingerprint's element sum (twin of reference/src/contract/fingerprint.rs):
// sum_i mix64(bits(x[i]) ^ i C) (mod 2^64) over the row-major index i. Wrapping integer addition
// is associative and commutative, so threads, warps and blocks may add their shares in any order
// and the total stays the same. Included by tensor.cu (the fingerprint of a tensor) and neuron.cu
// (of the spikes a neuron writes, as it writes them).
#pragma once

// The bits of an element, zero-extended to 64 bits.
__device__ __forceinline__ unsigned long long element_bits(float v) { return (unsigned long long)__float_as_uint(v); }
__device__ __forceinline__ unsigned long long element_bits(double v) { return (unsigned long long)__double_as_longlong(v); }

// SplitMix64's finaliser: a bijection of 64-bit words that mixes every input bit into every
// output bit.
__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// The term of the element at `index` whose bits are `bits`.
__device__ __forceinline__ unsigned long long fingerprint_term(unsigned long long bits, long long index) {
    return mix64(bits ^ ((unsigned long long)index * 0xD1B54A32D192ED03ULL));
}

// *sum += the accs of a whole warp (every lane must call it): a shuffle tree, then one atomic per
// warp whose total is not 0. Also tensor.cu's count of non-finite elements.
__device__ __forceinline__ void add_warp_to_sum(unsigned long long acc, unsigned long long* sum) {
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if ((threadIdx.x & 31) == 0 && acc != 0) atomicAdd(sum, acc);
}
