// Spikes kept one byte each for a backward (docs/precision.md §"Spike bytes"); host side in
// gpu/src/ops/saved_input.rs. A neuron's Heaviside output holds only 0 and 1, so a context that
// keeps it for a convolution's weight gradient keeps one byte per element instead of four (f32)
// or two (a 16-bit copy) and widens the bytes again when the backward runs: the same values.
// No twin in the reference, whose contexts keep their tensors as they are.

// A byte per element: 1 where x is not zero.
#define SPIKE_BYTES_KERNELS(E, SUFFIX)                                                                     \
    extern "C" __global__ void to_spike_bytes_##SUFFIX(const E* __restrict__ x,                          \
                                                       unsigned char* __restrict__ y, long long n) {     \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = x[at] != (E)0 ? 1 : 0;                                                               \
        }                                                                                                \
    }                                                                                                    \
    extern "C" __global__ void from_spike_bytes_##SUFFIX(const unsigned char* __restrict__ x,            \
                                                         E* __restrict__ y, long long n) {               \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = (E)x[at];                                                                            \
        }                                                                                                \
    }

SPIKE_BYTES_KERNELS(float, f32)
SPIKE_BYTES_KERNELS(double, f64)

// The bytes as 16-bit patterns of 0 and 1 (1 is 0x3f80 in bf16, 0x3c00 in fp16): a 16-bit GEMM's
// or cuDNN's operand.
#define SPIKE_BYTES_HALF_KERNEL(FORMAT, ONE)                                                               \
    extern "C" __global__ void from_spike_bytes_##FORMAT(const unsigned char* __restrict__ x,            \
                                                         unsigned short* __restrict__ y, long long n) {  \
        for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < n;                    \
             at += (long long)gridDim.x * blockDim.x) {                                                  \
            y[at] = x[at] ? ONE : 0;                                                                     \
        }                                                                                                \
    }

SPIKE_BYTES_HALF_KERNEL(bf16, 0x3f80)
SPIKE_BYTES_HALF_KERNEL(fp16, 0x3c00)
