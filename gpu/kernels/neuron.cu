// Fused multi-step IF/LIF neurons with hard reset to 0 (docs/neurons.md §2.2-2.4); twin of
// reference/src/ops/neuron/mod.rs. One thread per neuron loops over T; the forward keeps h for
// the backward, which recomputes the spikes from it (a spike is a function of h). A neuron that
// keeps its input instead (docs/neurons.md §2.4.1) fires without writing h, and its backward
// charges h from x again, into the thread's own memory when T <= LOCAL_STEPS (then dL/dx may be
// written over dL/ds), else into grad_x, which the loop backwards through time then overwrites.
// A neuron that kept nothing because its input was a training BatchNorm's output (§2.4.2) has
// its backward make that output again from the BatchNorm's input as it reads it
// (batch_norm.cuh) and charge h into the thread's own memory (T <= LOCAL_STEPS).
//
// Layout: x, spikes, h and the gradients are [T, N] row-major: element (t, i) at t * N + i.
// kind: 0 = IF, 1 = LIF. surrogate: 0 = ATan(alpha), 1 = Sigmoid(alpha). smooth: 0 = Heaviside
// firing, 1 = the surrogate's primitive (the differentiable test mode).

#include "batch_norm.cuh"
#include "fingerprint.cuh"
#include "half.cuh"

#define PI_D 3.14159265358979323846

// As SpikingJelly's torch backend writes it, with tau and 1 - 1/tau rounded to E once (the CPU
// reference does the same), so spikes agree bit for bit.
template <typename E> __device__ __forceinline__ E charge(int kind, int decay_input, double tau, E v, E x) {
    if (kind == 0) return v + x;                       // IF:  h = v + x
    if (decay_input) return v + (x - v) / (E)tau;      // LIF: h = v + (x - (v - 0)) / tau
    return v * (E)(1.0 - 1.0 / tau) + x;               // LIF without decay_input
}

template <typename E> __device__ __forceinline__ E surrogate_derivative(int surrogate, E alpha, E z) {
    if (surrogate == 0) {                              // alpha / (2 (1 + (pi/2 alpha z)^2))
        E u = (E)(PI_D / 2.0) * alpha * z;
        return alpha / ((E)2 * ((E)1 + u * u));
    }
    E s = (E)1 / ((E)1 + exp(-alpha * z));             // alpha sigma (1 - sigma)
    return alpha * s * ((E)1 - s);
}

template <typename E> __device__ __forceinline__ E fire(int surrogate, int smooth, E alpha, E z) {
    if (!smooth) return z >= (E)0 ? (E)1 : (E)0;       // Heaviside(0) = 1
    if (surrogate == 0) return atan((E)(PI_D / 2.0) * alpha * z) / (E)PI_D + (E)0.5;
    return (E)1 / ((E)1 + exp(-alpha * z));
}

// The most time steps whose h the backward from the input keeps in a thread's own memory
// (NEURON_LOCAL_STEPS in ops/neuron.rs); longer runs keep h in grad_x's buffer.
#define LOCAL_STEPS 16

// Where a neuron's h[t] (element `at` of [T, N]) is written and read back: a [T, N] buffer
// (P: E*, or const E* to read only; a null one is not written), or the thread's own T values.
template <typename P> struct StoredPotentials {
    P h_seq;
    __device__ __forceinline__ auto at(int, long long at) const { return h_seq[at]; }
    template <typename E> __device__ __forceinline__ void store(int, long long at, E h) const {
        if (h_seq) h_seq[at] = h;
    }
};
template <typename E> struct LocalPotentials {
    E* h;
    __device__ __forceinline__ E at(int t, long long) const { return h[t]; }
    __device__ __forceinline__ void store(int t, long long, E v) const { h[t] = v; }
};

// Charges and fires over t = 0..T-1 from x (Input: a pointer, or a NormalisedInput); writes the
// spikes when `spikes` is set, h into the potentials (the spikes' buffer or the potentials' may
// be x itself for the in-place kernels: each element is read before it is written, by the same
// thread), and adds the spikes' fingerprint terms to *fingerprint_sum when it is set
// (fingerprint.cuh: the spikes are not read again to fingerprint them).
template <typename E, typename Input, typename Potentials>
__device__ void charge_and_fire(Input x, E* spikes, Potentials h_seq, unsigned long long* fingerprint_sum,
                                long long n, int time_steps, int kind, int decay_input, double tau, E v_threshold,
                                int surrogate, E alpha, int smooth) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long terms = 0;
    if (i < n) {
        E v = (E)0;
        for (int t = 0; t < time_steps; ++t) {
            long long at = (long long)t * n + i;
            E h = charge(kind, decay_input, tau, v, x[at]);
            E s = fire(surrogate, smooth, alpha, h - v_threshold);
            if (spikes) spikes[at] = s;
            h_seq.store(t, at, h);
            if (fingerprint_sum) terms += fingerprint_term(element_bits(s), at);
            v = ((E)1 - s) * h;                        // hard reset to 0
        }
    }
    if (fingerprint_sum) add_warp_to_sum(terms, fingerprint_sum);  // every lane, past n too
}

// dL/ds[t] as the backward reads it: E itself, or a 16-bit convolution's dx widened exactly.
template <typename E> __device__ __forceinline__ E grad_value(E g) { return g; }
__device__ __forceinline__ float grad_value(Bf16 g) { return bf16_bits_to_f32(g.bits); }
__device__ __forceinline__ float grad_value(Fp16 g) { return fp16_bits_to_f32(g.bits); }

// The loop backwards through time over the potentials; their buffer or grad_spikes may be
// grad_x itself (each element is read before it is written, by the same thread). G is E, or
// Bf16 / Fp16 for dL/ds in 16 bits.
template <typename E, typename G, typename Potentials>
__device__ void backward_through_time(const G* grad_spikes, Potentials h_seq, E* grad_x, long long n, int time_steps,
                                      int kind, int decay_input, double tau, E v_threshold, int surrogate, E alpha,
                                      int smooth, int detach_reset) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    // k = dh[t+1]/dv[t], r = dh[t]/dx[t] (docs/neurons.md §2.4)
    E k = kind == 0 ? (E)1 : (E)(1.0 - 1.0 / tau);
    E r = (kind == 0 || !decay_input) ? (E)1 : (E)(1.0 / tau);
    E grad_h = (E)0;
    for (int t = time_steps - 1; t >= 0; --t) {
        long long at = (long long)t * n + i;
        E h = h_seq.at(t, at);
        E z = h - v_threshold;
        E psi = surrogate_derivative(surrogate, alpha, z);
        E s = fire(surrogate, smooth, alpha, z);
        E dv_dh = detach_reset ? (E)1 - s : (E)1 - s - h * psi;
        grad_h = grad_value(grad_spikes[at]) * psi + (k * grad_h) * dv_dh;
        grad_x[at] = r * grad_h;
    }
}

// The backward of a neuron that kept its input, over one buffer that holds dL/ds and receives
// dL/dx: h is charged from x again into the thread's own memory (T <= LOCAL_STEPS) by the
// forward's own loop, so the loop backwards through time reads the same h.
template <typename E>
__device__ void backward_from_input_in_place(E* grad, const E* x, long long n, int time_steps, int kind,
                                             int decay_input, double tau, E v_threshold, int surrogate, E alpha,
                                             int smooth, int detach_reset) {
    if (time_steps > LOCAL_STEPS) return;
    E h[LOCAL_STEPS];
    const LocalPotentials<E> local{h};
    charge_and_fire<E>(x, (E*)0, local, (unsigned long long*)0, n, time_steps, kind, decay_input, tau, v_threshold,
                       surrogate, alpha, smooth);
    backward_through_time<E>(grad, local, grad, n, time_steps, kind, decay_input, tau, v_threshold, surrogate, alpha,
                             smooth, detach_reset);
}

// The backward of a neuron that kept nothing, its input the output of a training BatchNorm made
// again as it is read (NormalisedInput over that BatchNorm's input x [T B, C, inner], plus x_bias
// when not null, and per-channel constants): h is charged into the thread's own memory (T <= LOCAL_STEPS) by the
// forward's own loop, so the loop backwards through time reads the h the forward charged, and
// neither the BatchNorm's output nor h is written. grad_spikes may be grad_x itself (G = E).
// Neuron i's elements t n + i lie in channel (i / inner) % C, as n = B C inner.
template <typename E, typename G, typename X>
__device__ void backward_from_normalised(const G* grad_spikes, E* grad_x, const X* x, const E* x_bias,
                                         const double* mean, const double* inv_std, const E* gamma, const E* beta,
                                         long long channels, long long inner, long long n, int time_steps, int kind,
                                         int decay_input, double tau, E v_threshold, int surrogate, E alpha,
                                         int smooth, int detach_reset) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (time_steps > LOCAL_STEPS || i >= n) return;
    const long long c = channel_of(i, inner, channels, n <= 0xffffffffLL);
    const NormalisedInput<E, X> input{x, x_bias, c, ChannelMap::of(mean, inv_std, gamma, beta, c)};
    E h[LOCAL_STEPS];
    const LocalPotentials<E> local{h};
    charge_and_fire<E>(input, (E*)0, local, (unsigned long long*)0, n, time_steps, kind, decay_input, tau,
                       v_threshold, surrogate, alpha, smooth);
    backward_through_time<E>(grad_spikes, local, grad_x, n, time_steps, kind, decay_input, tau, v_threshold, surrogate,
                             alpha, smooth, detach_reset);
}

// The forward of a neuron that keeps nothing, its input the output of a training BatchNorm made
// as it is read (NormalisedInput, as backward_from_normalised reads it): the spikes of firing
// over that output, the fingerprint's terms summed as they are written, and the output itself
// never written (docs/neurons.md §2.4.3). Every lane reaches the fingerprint's warp sum.
template <typename E, typename X>
__device__ void fire_from_normalised(E* spikes, unsigned long long* fingerprint_sum, const X* x, const E* x_bias,
                                     const double* mean, const double* inv_std, const E* gamma, const E* beta,
                                     long long channels, long long inner, long long n, int time_steps, int kind,
                                     int decay_input, double tau, E v_threshold, int surrogate, E alpha, int smooth) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long c = i < n ? channel_of(i, inner, channels, n <= 0xffffffffLL) : 0;
    const NormalisedInput<E, X> input{x, x_bias, c, ChannelMap::of(mean, inv_std, gamma, beta, c)};
    charge_and_fire<E>(input, spikes, StoredPotentials<E*>{(E*)0}, fingerprint_sum, n, time_steps, kind, decay_input,
                       tau, v_threshold, surrogate, alpha, smooth);
}

#define NEURON_SHARED_PARAMS(E)                                                                                \
    long long n, int time_steps, int kind, int decay_input, double tau, E v_threshold, int surrogate, E alpha,     \
        int smooth
#define NEURON_SHARED_ARGS n, time_steps, kind, decay_input, tau, v_threshold, surrogate, alpha, smooth

#define NEURON_KERNELS(E, SUFFIX)                                                                                      \
    extern "C" __global__ void neuron_forward_##SUFFIX(const E* x, E* spikes, E* h_seq,                                \
                                                       unsigned long long* fingerprint_sum,                            \
                                                       NEURON_SHARED_PARAMS(E)) {                                      \
        charge_and_fire<E>(x, spikes, StoredPotentials<E*>{h_seq}, fingerprint_sum, NEURON_SHARED_ARGS);               \
    }                                                                                                                  \
    extern "C" __global__ void neuron_forward_in_place_##SUFFIX(E* x_then_h, E* spikes,                                \
                                                                unsigned long long* fingerprint_sum,                   \
                                                                NEURON_SHARED_PARAMS(E)) {                             \
        charge_and_fire<E>(x_then_h, spikes, StoredPotentials<E*>{x_then_h}, fingerprint_sum, NEURON_SHARED_ARGS);     \
    }                                                                                                                  \
    extern "C" __global__ void neuron_fire_##SUFFIX(const E* x, E* spikes, unsigned long long* fingerprint_sum,        \
                                                    NEURON_SHARED_PARAMS(E)) {                                         \
        charge_and_fire<E>(x, spikes, StoredPotentials<E*>{(E*)0}, fingerprint_sum, NEURON_SHARED_ARGS);               \
    }                                                                                                                  \
    extern "C" __global__ void neuron_fire_in_place_##SUFFIX(E* x_then_spikes, unsigned long long* fingerprint_sum,    \
                                                             NEURON_SHARED_PARAMS(E)) {                                \
        charge_and_fire<E>(x_then_spikes, x_then_spikes, StoredPotentials<E*>{(E*)0}, fingerprint_sum,                 \
                           NEURON_SHARED_ARGS);                                                                        \
    }                                                                                                                  \
    extern "C" __global__ void neuron_backward_##SUFFIX(const E* grad_spikes, const E* h_seq, E* grad_x,               \
                                                        NEURON_SHARED_PARAMS(E), int detach_reset) {                   \
        const StoredPotentials<const E*> h{h_seq};                                                                     \
        backward_through_time<E>(grad_spikes, h, grad_x, NEURON_SHARED_ARGS, detach_reset);                            \
    }                                                                                                                  \
    extern "C" __global__ void neuron_backward_in_place_##SUFFIX(E* grad, const E* h_seq,                              \
                                                                 NEURON_SHARED_PARAMS(E), int detach_reset) {          \
        const StoredPotentials<const E*> h{h_seq};                                                                     \
        backward_through_time<E>(grad, h, grad, NEURON_SHARED_ARGS, detach_reset);                                     \
    }                                                                                                                  \
    extern "C" __global__ void neuron_backward_from_input_##SUFFIX(const E* grad_spikes, const E* x, E* grad_x,        \
                                                                   NEURON_SHARED_PARAMS(E), int detach_reset) {        \
        const StoredPotentials<E*> h{grad_x};                                                                          \
        charge_and_fire<E>(x, (E*)0, h, (unsigned long long*)0, NEURON_SHARED_ARGS);                                   \
        backward_through_time<E>(grad_spikes, h, grad_x, NEURON_SHARED_ARGS, detach_reset);                            \
    }                                                                                                                  \
    extern "C" __global__ void neuron_backward_from_input_in_place_##SUFFIX(E* grad, const E* x,                       \
                                                                            NEURON_SHARED_PARAMS(E),                   \
                                                                            int detach_reset) {                        \
        backward_from_input_in_place<E>(grad, x, NEURON_SHARED_ARGS, detach_reset);                                    \
    }

NEURON_KERNELS(float, f32)
NEURON_KERNELS(double, f64)

// The f32 backwards from dL/ds as G's 16-bit patterns (a bf16 or fp16 convolution's dx): apart,
// over the potentials (one buffer holds h and receives dL/dx), or charging h from the kept input
// into grad_x.
#define NEURON_HALF_GRADIENT_KERNELS(G, FORMAT)                                                                        \
    extern "C" __global__ void neuron_backward_f32_from_##FORMAT(const G* grad_spikes, const float* h_seq,             \
                                                                 float* grad_x, NEURON_SHARED_PARAMS(float),           \
                                                                 int detach_reset) {                                   \
        const StoredPotentials<const float*> h{h_seq};                                                                 \
        backward_through_time<float>(grad_spikes, h, grad_x, NEURON_SHARED_ARGS, detach_reset);                        \
    }                                                                                                                  \
    extern "C" __global__ void neuron_backward_over_potentials_f32_from_##FORMAT(                                      \
        const G* grad_spikes, float* h_then_grad_x, NEURON_SHARED_PARAMS(float), int detach_reset) {                   \
        const StoredPotentials<const float*> h{h_then_grad_x};                                                         \
        backward_through_time<float>(grad_spikes, h, h_then_grad_x, NEURON_SHARED_ARGS, detach_reset);                 \
    }                                                                                                                  \
    extern "C" __global__ void neuron_backward_from_input_f32_from_##FORMAT(const G* grad_spikes, const float* x,      \
                                                                            float* grad_x,                             \
                                                                            NEURON_SHARED_PARAMS(float),               \
                                                                            int detach_reset) {                        \
        const StoredPotentials<float*> h{grad_x};                                                                      \
        charge_and_fire<float>(x, (float*)0, h, (unsigned long long*)0, NEURON_SHARED_ARGS);                           \
        backward_through_time<float>(grad_spikes, h, grad_x, NEURON_SHARED_ARGS, detach_reset);                        \
    }

NEURON_HALF_GRADIENT_KERNELS(Bf16, bf16)
NEURON_HALF_GRADIENT_KERNELS(Fp16, fp16)

// The backwards from a BatchNorm's output made again (backward_from_normalised), for dL/ds as G
// and the BatchNorm's input as X: apart (`neuron_backward_from_normalised_<E>`, with
// `_from_<format>` for 16-bit dL/ds and `_input_<format>` for a 16-bit input), or over one buffer
// that holds dL/ds and receives dL/dx (`neuron_backward_from_normalised_in_place_...`).
#define NORMALISED_PARAMS(E, X)                                                                                        \
    const X *x, const E *x_bias, const double *mean, const double *inv_std, const E *gamma, const E *beta,             \
        long long channels, long long inner
#define NORMALISED_ARGS x, x_bias, mean, inv_std, gamma, beta, channels, inner
#define NEURON_NORMALISED_KERNEL(E, G, X, NAME)                                                                        \
    extern "C" __global__ void NAME(const G* grad_spikes, E* grad_x, NORMALISED_PARAMS(E, X),                          \
                                    NEURON_SHARED_PARAMS(E), int detach_reset) {                                       \
        backward_from_normalised<E, G, X>(grad_spikes, grad_x, NORMALISED_ARGS, NEURON_SHARED_ARGS, detach_reset);     \
    }
#define NEURON_NORMALISED_IN_PLACE_KERNEL(E, X, NAME)                                                                  \
    extern "C" __global__ void NAME(E* grad, NORMALISED_PARAMS(E, X), NEURON_SHARED_PARAMS(E), int detach_reset) {     \
        backward_from_normalised<E, E, X>(grad, grad, NORMALISED_ARGS, NEURON_SHARED_ARGS, detach_reset);              \
    }

NEURON_NORMALISED_KERNEL(float, float, float, neuron_backward_from_normalised_f32)
NEURON_NORMALISED_KERNEL(double, double, double, neuron_backward_from_normalised_f64)
NEURON_NORMALISED_KERNEL(float, float, Bf16, neuron_backward_from_normalised_f32_input_bf16)
NEURON_NORMALISED_KERNEL(float, float, Fp16, neuron_backward_from_normalised_f32_input_fp16)
NEURON_NORMALISED_KERNEL(float, Bf16, float, neuron_backward_from_normalised_f32_from_bf16)
NEURON_NORMALISED_KERNEL(float, Fp16, float, neuron_backward_from_normalised_f32_from_fp16)
NEURON_NORMALISED_KERNEL(float, Bf16, Bf16, neuron_backward_from_normalised_f32_from_bf16_input_bf16)
NEURON_NORMALISED_KERNEL(float, Fp16, Fp16, neuron_backward_from_normalised_f32_from_fp16_input_fp16)
NEURON_NORMALISED_IN_PLACE_KERNEL(float, float, neuron_backward_from_normalised_in_place_f32)
NEURON_NORMALISED_IN_PLACE_KERNEL(double, double, neuron_backward_from_normalised_in_place_f64)
NEURON_NORMALISED_IN_PLACE_KERNEL(float, Bf16, neuron_backward_from_normalised_in_place_f32_input_bf16)
NEURON_NORMALISED_IN_PLACE_KERNEL(float, Fp16, neuron_backward_from_normalised_in_place_f32_input_fp16)

// The forwards from a BatchNorm's output made as it is read (fire_from_normalised), for the
// BatchNorm's input as X: `neuron_fire_from_normalised_<E>[_input_<format>]`.
#define NEURON_FIRE_NORMALISED_KERNEL(E, X, NAME)                                                                      \
    extern "C" __global__ void NAME(E* spikes, unsigned long long* fingerprint_sum, NORMALISED_PARAMS(E, X),            \
                                    NEURON_SHARED_PARAMS(E)) {                                                         \
        fire_from_normalised<E, X>(spikes, fingerprint_sum, NORMALISED_ARGS, NEURON_SHARED_ARGS);                      \
    }

NEURON_FIRE_NORMALISED_KERNEL(float, float, neuron_fire_from_normalised_f32)
NEURON_FIRE_NORMALISED_KERNEL(double, double, neuron_fire_from_normalised_f64)
NEURON_FIRE_NORMALISED_KERNEL(float, Bf16, neuron_fire_from_normalised_f32_input_bf16)
NEURON_FIRE_NORMALISED_KERNEL(float, Fp16, neuron_fire_from_normalised_f32_input_fp16)
