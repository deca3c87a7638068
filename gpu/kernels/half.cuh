// The bf16 and fp16 bit patterns of --precision bf16 and fp16 (docs/precision.md), read and
// written by integer arithmetic on the f32 bit pattern (no cuda_bf16.h or cuda_fp16.h): f32 ->
// 16 bits to nearest, ties to even, subnormals kept, overflow to an infinity of the same sign,
// NaN to a quiet NaN of the same sign; 16 bits -> f32 exactly. Included by precision.cu (the
// conversions), and by batch_norm.cu, neuron.cu and linear.cu (kernels that read 16-bit inputs
// or write 16-bit outputs); twin of reference/src/contract/precision.rs (`Precision::round`).
#pragma once

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

// A tensor element stored as bf16 or fp16 bits, for kernels templated on their input's type.
struct Bf16 {
    unsigned short bits;
};
struct Fp16 {
    unsigned short bits;
};

// An element of any stored type, widened to double exactly.
__device__ __forceinline__ double widened(float v) { return v; }
__device__ __forceinline__ double widened(double v) { return v; }
__device__ __forceinline__ double widened(Bf16 v) { return bf16_bits_to_f32(v.bits); }
__device__ __forceinline__ double widened(Fp16 v) { return fp16_bits_to_f32(v.bits); }

// A result computed in double, stored as D: rounded to f32 first when D is f32 or 16-bit, so a
// 16-bit D holds the bits that storing the f32 result and converting it (precision.cu's `to_*`)
// would give.
__device__ __forceinline__ void store_element(float* p, double v) { *p = (float)v; }
__device__ __forceinline__ void store_element(double* p, double v) { *p = v; }
__device__ __forceinline__ void store_element(Bf16* p, double v) { p->bits = f32_to_bf16_bits((float)v); }
__device__ __forceinline__ void store_element(Fp16* p, double v) { p->bits = f32_to_fp16_bits((float)v); }
