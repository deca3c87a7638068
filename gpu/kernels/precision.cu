// The 16-bit GEMM operands and stored convolution outputs of --precision bf16 and fp16
// (docs/precision.md); twin of reference/src/contract/precision.rs (`Precision::round`), host
// side in gpu/src/ops/precision.rs.
//
// f32 -> bf16 / fp16 bits by integer arithmetic on the f32 bit pattern (no cuda_bf16.h or
// cuda_fp16.h): to nearest, ties to even, subnormals kept, overflow to an infinity of the same
// sign, NaN to a quiet NaN of the same sign. The round trips (f32 -> 16 bits -> f32) give the
// rounded f32 values the reference computes with `Precision::round`. `from_*` widens 16-bit
// outputs exactly (`add_from_*` onto what the f32 target holds).

// bf16 keeps the top 16 bits of an f32: add half an ulp of bit 16 (minus one unless the kept
// lowest bit is odd) and drop the low half; a carry runs into the exponent, which is how the
// values past the largest finite bf16 become infinity.
__device__ __forceinline__ unsigned short f32_to_bf16_bits(float value) {
    unsigned int bits = __float_as_uint(value);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x0040u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return (unsigned short)(bits >> 16);
}

__device__ __forceinline__ float bf16_bits_to_f32(unsigned short half) {
    return __uint_as_float((unsigned int)half << 16);
}

// fp16: exponent bias 15, 10 mantissa bits, normals from 2^-14, subnormals in steps of 2^-24,
// largest finite 65504 (65520, the tie above it, and everything beyond round to infinity).
__device__ __forceinline__ unsigned short f32_to_fp16_bits(float value) {
    unsigned int bits = __float_as_uint(value);
    unsigned int sign = (bits >> 16) & 0x8000u;
    unsigned int magnitude = bits & 0x7fffffffu;
    if (magnitude > 0x7f800000u) return (unsigned short)(sign | 0x7e00u);  // NaN
    if (magnitude >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);  // >= 65520, infinity
    if (magnitude >= 0x38800000u) {  // a normal fp16: rebias the exponent (127 -> 15), round at bit 13
        unsigned int rebiased = magnitude - 0x38000000u;
        rebiased += 0x0fffu + ((rebiased >> 13) & 1u);
        return (unsigned short)(sign | (rebiased >> 13));
    }
    if (magnitude <= 0x33000000u) return (unsigned short)sign;  // at most 2^-25: the tie goes to zero
    // A subnormal fp16: the value in units of 2^-24 is mantissa * 2^(exponent - 126).
    unsigned int exponent = magnitude >> 23;
    unsigned int mantissa = (magnitude & 0x007fffffu) | 0x00800000u;
    unsigned int shift = 126u - exponent;  // 14 to 24 here
    unsigned int quotient = mantissa >> shift;
    unsigned int remainder = mantissa & ((1u << shift) - 1u);
    unsigned int halfway = 1u << (shift - 1u);
    if (remainder > halfway || (remainder == halfway && (quotient & 1u))) quotient += 1u;
    return (unsigned short)(sign | quotient);  // 0x400 after a carry: the smallest normal
}

__device__ __forceinline__ float fp16_bits_to_f32(unsigned short half) {
    unsigned int sign = ((unsigned int)half & 0x8000u) << 16;
    unsigned int exponent = ((unsigned int)half >> 10) & 0x1fu;
    unsigned int mantissa = (unsigned int)half & 0x03ffu;
    if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0u) {
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;  // mantissa * 2^-24, exact
        return sign ? -magnitude : magnitude;
    }
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

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
