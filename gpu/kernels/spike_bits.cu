// Spikes kept one bit each for a backward (docs/precision.md §"Spike bits"); host side in
// gpu/src/ops/saved_input.rs. A neuron's Heaviside output holds only 0 and 1, so a context that
// keeps it for a convolution's weight gradient keeps one bit per element instead of four bytes
// (f32) or two (a 16-bit copy) and widens the bits again when the backward runs: the same values.
// No twin in the reference, whose contexts keep their tensors as they are.
//
// Layout: element i is bit i % 32 of 32-bit word i / 32; the last word's bits past n are 0.

// Packing: one thread per word, which reads its 32 elements in turn (no warp exchange, so the
// word needs no whole warp); unpacking: one thread per element.
#define SPIKE_BITS_KERNELS(E, SUFFIX)                                                                      \
    extern "C" __global__ void to_spike_bits_##SUFFIX(const E* __restrict__ x,                           \
                                                      unsigned int* __restrict__ y, long long n) {       \
        const long long words = (n + 31) / 32;                                                           \
        for (long long word = (long long)blockIdx.x * blockDim.x + threadIdx.x; word < words;            \
             word += (long long)gridDim.x * blockDim.x) {                                                \
            const long long first = word * 32;                                                           \
            const int count = n - first < 32 ? (int)(n - first) : 32;                                    \
            unsigned int bits = 0;                                                                       \
            for (int bit = 0; bit < count; ++bit) bits |= (x[first + bit] != (E)0 ? 1u : 0u) << bit;    \
            y[word] = bits;                                                                              \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void from_spike_bits_##SUFFIX(const unsigned int* __restrict__ x,              \
                                                        E* __restrict__ y, long long n) {                \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = (E)((x[at >> 5] >> (at & 31)) & 1u);                                                 \
        }                                                                                                \
    }

SPIKE_BITS_KERNELS(float, f32)
SPIKE_BITS_KERNELS(double, f64)

// The bits as 16-bit patterns of 0 and 1 (1 is 0x3f80 in bf16, 0x3c00 in fp16): a 16-bit GEMM's
// or cuDNN's operand.
#define SPIKE_BITS_HALF_KERNEL(FORMAT, ONE)                                                                \
    extern "C" __global__ void from_spike_bits_##FORMAT(const unsigned int* __restrict__ x,              \
                                                        unsigned short* __restrict__ y, long long n) {   \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = (x[at >> 5] >> (at & 31)) & 1u ? ONE : 0;                                            \
        }                                                                                                \
    }

SPIKE_BITS_HALF_KERNEL(bf16, 0x3f80)
SPIKE_BITS_HALF_KERNEL(fp16, 0x3c00)
