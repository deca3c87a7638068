// What the emulator's fake libraries (fake_cublas.cpp, fake_cudnn.cpp, fake_nccl.cpp) share: the
// entry points of the emulator's libcuda.so.1 they link, the visibility of their own API, and the
// TF32 rounding of the tensor cores' f32 inputs.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

extern "C" {
// From the emulator's libcuda.so.1 (emulator.cpp): whether [p, p + bytes) lies inside one live
// device allocation, and what the fault handler names as running (nullptr: nothing).
int revsnn_emu_range_ok(const void* p, std::size_t bytes);
void revsnn_emu_set_activity(const char* what);
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
