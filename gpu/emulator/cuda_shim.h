// The CUDA C++ device dialect our kernels use, as plain C++17 for g++, so gpu/kernels/*.cu compile
// into the CPU emulator (gpu/README.md, "Running the GPU tests on the CPU emulator").
//
// Execution model (emulator.cpp): the blocks of a grid run one after another; the threads of a
// block run as cooperative fibers on one OS thread, switching only at __syncthreads() and the warp
// intrinsics. So `__shared__` is a `static` (one block lives at a time), threadIdx & co. are plain
// globals (every launch holds the emulator's launch lock), and atomics are ordinary arithmetic.
//
// Floating point: g++ with -ffp-contract=off rounds every operation as written (no FMA
// contraction; nvcc does contract `a * b + c` unless the code uses the __f*_rn intrinsics); the
// math functions are glibc's (correctly rounded or nearly), not CUDA's (a few ulp for some), so
// results may differ from a real GPU in the last bits where the kernels call exp, atan, log1p...
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---- qualifiers -----------------------------------------------------------------------------
#ifdef REVSNN_EMU_SCAN
#define __global__ REVSNN_EMU_GLOBAL  // gen_registry.py finds the kernels by this marker
#else
#define __global__
#endif
#define __device__
#define __host__
#define __noinline__ __attribute__((noinline))
#define __forceinline__ inline __attribute__((always_inline))
#define __shared__ static
#define __constant__ static
#define __managed__
#define __launch_bounds__(...)
#define __grid_constant__
// __restrict__ is a g++ keyword already.

// ---- built-in vector types and indices ------------------------------------------------------
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

// The vector types the kernels load and store whole, with CUDA's sizes and alignments.
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};
struct alignas(8) uint2 {
    unsigned int x, y;
};
struct alignas(16) uint4 {
    unsigned int x, y, z, w;
};

namespace emu {
// Defined in emulator.cpp; valid while a kernel runs (under the launch lock).
extern uint3 thread_idx;
extern uint3 block_idx;
extern dim3 block_dim;
extern dim3 grid_dim;
// The calling thread's linear index in its block (x fastest).
extern unsigned int linear_tid;
// Suspends the calling fiber until every live thread of the block (warp_wait: of its warp) has
// arrived.
void block_wait();
void warp_wait();
// One 64-bit slot per thread of the block, for the warp exchanges.
extern unsigned long long warp_slots[1024];
extern unsigned int warp_ballot_slots[1024];
}  // namespace emu

#define threadIdx (::emu::thread_idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

// ---- synchronisation ------------------------------------------------------------------------
inline void __syncthreads() { ::emu::block_wait(); }
inline int __syncthreads_count(int p) {
    // every thread posts its predicate, all wait, every thread counts, all wait again
    ::emu::warp_ballot_slots[::emu::linear_tid] = p != 0;
    ::emu::block_wait();
    unsigned int n = ::emu::block_dim.x * ::emu::block_dim.y * ::emu::block_dim.z, count = 0;
    for (unsigned int i = 0; i < n; ++i) count += ::emu::warp_ballot_slots[i];
    ::emu::block_wait();
    return (int)count;
}
inline void __syncwarp(unsigned int = 0xffffffffu) { ::emu::warp_wait(); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

// ---- warp shuffles: every lane posts its value, the warp waits, each reads its source lane, the
// warp waits again (so no slot is overwritten before every lane has read it). ----------------
namespace emu {
template <typename T> inline T shuffle_from(T v, int source_lane_in_warp_or_self) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type wider than 8 bytes");
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    warp_slots[linear_tid] = bits;
    warp_wait();
    const unsigned int base = linear_tid & ~31u;
    unsigned long long got = warp_slots[base + (unsigned int)source_lane_in_warp_or_self];
    warp_wait();
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}
inline int lane_id() { return (int)(linear_tid & 31u); }
}  // namespace emu

template <typename T> inline T __shfl_sync(unsigned int, T v, int src, int width = 32) {
    const int lane = ::emu::lane_id();
    const int seg = lane & ~(width - 1);
    return ::emu::shuffle_from(v, seg + (src & (width - 1)));
}
template <typename T> inline T __shfl_down_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    const int lane = ::emu::lane_id();
    const int in_seg = lane & (width - 1);
    const int src = in_seg + (int)delta < width ? lane + (int)delta : lane;
    return ::emu::shuffle_from(v, src);
}
template <typename T> inline T __shfl_up_sync(unsigned int, T v, unsigned int delta, int width = 32) {
    const int lane = ::emu::lane_id();
    const int in_seg = lane & (width - 1);
    const int src = in_seg - (int)delta >= 0 ? lane - (int)delta : lane;
    return ::emu::shuffle_from(v, src);
}
template <typename T> inline T __shfl_xor_sync(unsigned int, T v, int mask, int width = 32) {
    const int lane = ::emu::lane_id();
    int src = lane ^ mask;
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return ::emu::shuffle_from(v, src);
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
    ::emu::warp_ballot_slots[::emu::linear_tid] = predicate != 0;
    ::emu::warp_wait();
    const unsigned int base = ::emu::linear_tid & ~31u;
    const unsigned int n = ::emu::block_dim.x * ::emu::block_dim.y * ::emu::block_dim.z;
    unsigned int ballot = 0;
    for (unsigned int l = 0; l < 32 && base + l < n; ++l)
        if (::emu::warp_ballot_slots[base + l]) ballot |= 1u << l;
    ::emu::warp_wait();
    return ballot & mask;
}
inline int __all_sync(unsigned int mask, int p) { return __ballot_sync(mask, !p) == 0; }
inline int __any_sync(unsigned int mask, int p) { return __ballot_sync(mask, p) != 0; }
inline unsigned int __activemask() { return 0xffffffffu; }

// ---- atomics (threads never run concurrently: plain read-modify-write) ------------------------
template <typename T> inline T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <typename T> inline T atomicSub(T* p, T v) {
    T old = *p;
    *p = old - v;
    return old;
}
template <typename T> inline T atomicExch(T* p, T v) {
    T old = *p;
    *p = v;
    return old;
}
template <typename T> inline T atomicMax(T* p, T v) {
    T old = *p;
    if (v > old) *p = v;
    return old;
}
template <typename T> inline T atomicMin(T* p, T v) {
    T old = *p;
    if (v < old) *p = v;
    return old;
}
template <typename T> inline T atomicCAS(T* p, T compare, T v) {
    T old = *p;
    if (old == compare) *p = v;
    return old;
}
template <typename T> inline T atomicAnd(T* p, T v) {
    T old = *p;
    *p = old & v;
    return old;
}
template <typename T> inline T atomicOr(T* p, T v) {
    T old = *p;
    *p = old | v;
    return old;
}

// ---- reinterpretation ------------------------------------------------------------------------
namespace emu {
template <typename To, typename From> inline To bit_cast(From v) {
    static_assert(sizeof(To) == sizeof(From), "size mismatch");
    To out;
    std::memcpy(&out, &v, sizeof(To));
    return out;
}
}  // namespace emu
inline float __int_as_float(int v) { return ::emu::bit_cast<float>(v); }
inline float __uint_as_float(unsigned int v) { return ::emu::bit_cast<float>(v); }
inline int __float_as_int(float v) { return ::emu::bit_cast<int>(v); }
inline unsigned int __float_as_uint(float v) { return ::emu::bit_cast<unsigned int>(v); }
inline double __longlong_as_double(long long v) { return ::emu::bit_cast<double>(v); }
inline long long __double_as_longlong(double v) { return ::emu::bit_cast<long long>(v); }
inline int __double2hiint(double v) { return (int)(::emu::bit_cast<unsigned long long>(v) >> 32); }
inline int __double2loint(double v) { return (int)(unsigned int)::emu::bit_cast<unsigned long long>(v); }
inline double __hiloint2double(int hi, int lo) {
    return ::emu::bit_cast<double>(((unsigned long long)(unsigned int)hi << 32) | (unsigned int)lo);
}

// ---- IEEE round-to-nearest arithmetic (exact on x86-64 SSE with -ffp-contract=off) ------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }

// ---- math: CUDA's float and double overloads of the C functions --------------------------------
using std::abs;
using std::acos;
using std::asin;
using std::atan;
using std::atan2;
using std::cbrt;
using std::ceil;
using std::copysign;
using std::cos;
using std::cosh;
using std::erf;
using std::erfc;
using std::exp;
using std::exp2;
using std::expm1;
using std::fabs;
using std::floor;
using std::fma;
using std::fmax;
using std::fmin;
using std::fmod;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log10;
using std::log1p;
using std::log2;
using std::lround;
using std::llround;
using std::nearbyint;
using std::pow;
using std::rint;
using std::round;
using std::signbit;
using std::sin;
using std::sinh;
using std::sqrt;
using std::tan;
using std::tanh;
using std::trunc;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float rsqrt(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }

// min/max: CUDA's overloads. Floating point: fmin/fmax (a NaN operand yields the other one).
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
template <typename A, typename B,
          typename = std::enable_if_t<std::is_integral<A>::value && std::is_integral<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)b < (C)a ? (C)b : (C)a;
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_integral<A>::value && std::is_integral<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    return (C)a < (C)b ? (C)b : (C)a;
}
inline double min(float a, double b) { return std::fmin((double)a, b); }
inline double min(double a, float b) { return std::fmin(a, (double)b); }
inline double max(float a, double b) { return std::fmax((double)a, b); }
inline double max(double a, float b) { return std::fmax(a, (double)b); }

// ---- integer intrinsics ------------------------------------------------------------------------
inline int __popc(unsigned int v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz((unsigned int)v); }
inline int __clzll(long long v) { return v == 0 ? 64 : __builtin_clzll((unsigned long long)v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __ffsll(long long v) { return __builtin_ffsll(v); }
inline unsigned int __brev(unsigned int v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0f0f0f0fu) | ((v & 0x0f0f0f0fu) << 4);
    v = ((v >> 8) & 0x00ff00ffu) | ((v & 0x00ff00ffu) << 8);
    return (v >> 16) | (v << 16);
}
inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
inline unsigned int __umulhi(unsigned int a, unsigned int b) { return (unsigned int)(((unsigned long long)a * b) >> 32); }

// ---- loads -------------------------------------------------------------------------------------
template <typename T> inline T __ldg(const T* p) { return *p; }
