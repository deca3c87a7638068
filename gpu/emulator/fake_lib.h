// What the emulator's fake libraries (fake_cublas.cpp, fake_cudnn.cpp, fake_nccl.cpp) share: the
// entry points of the emulator's libcuda.so.1 they link, the visibility of their own API, the
// TF32 rounding of the tensor cores' f32 inputs, and the 16-bit formats.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

extern "C" {
// From the emulator's libcuda.so.1 (emulator.cpp): whether [p, p + bytes) lies inside one live
// device allocation, what the fault handler names as running (nullptr: nothing), and whether
// GEMMs and convolutions compute nothing (REVSNN_EMU_HOST_ONLY=1).
int revsnn_emu_range_ok(const void* p, std::size_t bytes);
void revsnn_emu_set_activity(const char* what);
int revsnn_emu_host_only();
}

#define API extern "C" __attribute__((visibility("default")))

// x rounded to TF32 (10 mantissa bits, to nearest even), as tensor cores read f32 inputs.
inline float to_tf32(float x) {
    if (!std::isfinite(x)) return x;
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    bits += 0xFFFu + ((bits >> 13) & 1u);  // round to nearest even at bit 13
    bits &= ~0x1FFFu;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

// The 16-bit formats of --precision bf16 and fp16, as stored bit patterns: the operands of the
// mixed-type GEMMs and the tensors of cuDNN's 16-bit configurations.
struct Bf16 {
    std::uint16_t bits;
};
struct Fp16 {
    std::uint16_t bits;
};

inline float widen(Bf16 x) {
    const std::uint32_t bits = (std::uint32_t)x.bits << 16;
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

inline float widen(Fp16 x) {
    const std::uint32_t sign = ((std::uint32_t)x.bits & 0x8000u) << 16;
    const std::uint32_t exponent = ((std::uint32_t)x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
    if (exponent == 0) {  // zero or a subnormal: mantissa * 2^-24, exact in f32
        const float magnitude = std::ldexp((float)mantissa, -24);
        return sign ? -magnitude : magnitude;
    }
    const std::uint32_t bits =
        sign | (exponent == 0x1fu ? 0x7f800000u | (mantissa << 13) : ((exponent + 112u) << 23) | (mantissa << 13));
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

// x rounded to a binary format with `mantissa_bits` explicit bits, normals from 2^min_exponent
// (fixed spacing below: subnormals) and `max_finite` its largest value: to nearest, ties to even
// (nearbyint in the default rounding mode), an infinity past the largest finite value's rounding
// boundary. x divided by its spacing, a power of two, is exact, so nearbyint is the one rounding.
inline double round_to_format(double x, int mantissa_bits, int min_exponent, double max_finite) {
    if (x == 0.0 || !std::isfinite(x)) return x;
    int exponent;
    std::frexp(x, &exponent);  // |x| in [2^(exponent - 1), 2^exponent)
    const double spacing = std::ldexp(1.0, std::max(exponent - 1, min_exponent) - mantissa_bits);
    const double rounded = std::nearbyint(x / spacing) * spacing;
    return std::fabs(rounded) > max_finite ? std::copysign(INFINITY, x) : rounded;
}

// f32 -> bf16 and fp16, to nearest even (NaN to a quiet NaN): how cuDNN stores a 16-bit output.
inline Bf16 narrow_bf16(float x) {
    std::uint32_t bits;
    std::memcpy(&bits, &x, 4);
    if (std::isnan(x)) return Bf16{(std::uint16_t)((bits >> 16) | 0x0040u)};
    const float rounded = (float)round_to_format(x, 7, -126, 0x1.fep127);
    std::memcpy(&bits, &rounded, 4);  // the low 16 bits are zero
    return Bf16{(std::uint16_t)(bits >> 16)};
}

inline Fp16 narrow_fp16(float x) {
    const std::uint16_t sign = std::signbit(x) ? 0x8000u : 0u;
    if (std::isnan(x)) return Fp16{(std::uint16_t)(sign | 0x7e00u)};
    const double magnitude = std::fabs(round_to_format(x, 10, -14, 65504.0));
    if (std::isinf(magnitude)) return Fp16{(std::uint16_t)(sign | 0x7c00u)};
    if (magnitude < 0x1p-14) return Fp16{(std::uint16_t)(sign | (std::uint16_t)(magnitude * 0x1p24))};
    int exponent;
    const double fraction = std::frexp(magnitude, &exponent);  // in [0.5, 1)
    const unsigned biased = (unsigned)(exponent - 1 + 15), mantissa = (unsigned)(fraction * 2048.0) - 1024u;
    return Fp16{(std::uint16_t)(sign | (biased << 10) | mantissa)};
}

// A value of the accumulator type A stored as data type D: as it is for f32 and f64, narrowed for
// bf16 and fp16.
template <typename D, typename A> D narrow(A x) {
    if constexpr (std::is_same_v<D, Bf16>) {
        return narrow_bf16(x);
    } else if constexpr (std::is_same_v<D, Fp16>) {
        return narrow_fp16(x);
    } else {
        return x;
    }
}

// An input element as the accumulator type E: f32 and f64 as they are (f32 rounded to TF32 in
// that math mode), bf16 and fp16 widened exactly.
template <typename E, typename In> E load_input(const In* p, bool tf32) {
    if constexpr (std::is_same_v<In, Bf16> || std::is_same_v<In, Fp16>) {
        return widen(*p);
    } else if constexpr (sizeof(E) == 4) {
        return tf32 ? to_tf32(*p) : *p;
    } else {
        return *p;
    }
}
