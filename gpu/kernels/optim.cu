// Optimizer steps, one fused kernel each, elementwise over one parameter tensor (docs/recipes.md §5); twin
// of reference/src/ops/optim.rs, host side in gpu/src/ops/optim.rs. Each update is computed in E
// with the reference's operations in the reference's order, through the explicit
// round-to-nearest intrinsics (never contracted into an FMA; division and square root IEEE), so
// every result rounds exactly as the CPU's.

#define GRID_STRIDE_LOOP(i, n)                                                                   \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (long long)gridDim.x * blockDim.x)

#include "rounding.cuh"

// d = g + weight_decay p; b = momentum b_old + d (b = d when has_buffer is 0, the first step:
// `buffer` is then not read); p_new = p - lr b.
template <typename E>
__device__ void sgd_step(const E* __restrict__ param, const E* __restrict__ grad, const E* __restrict__ buffer,
                         E* __restrict__ new_param, E* __restrict__ new_buffer, long long n, int has_buffer, E lr,
                         E momentum, E weight_decay) {
    GRID_STRIDE_LOOP(i, n) {
        E p = param[i];
        E d = add_rn(grad[i], mul_rn(weight_decay, p));
        E b = has_buffer ? add_rn(mul_rn(momentum, buffer[i]), d) : d;
        new_buffer[i] = b;
        new_param[i] = sub_rn(p, mul_rn(lr, b));
    }
}

// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g;
// p_new = p shrink - step_size m / (sqrt(v) / correction2_sqrt + eps), with
// shrink = 1 - lr weight_decay, step_size = lr / (1 - b1^t), correction2_sqrt = sqrt(1 - b2^t)
// computed by the host in double and rounded to E, as the reference does.
template <typename E>
__device__ void adamw_step(const E* __restrict__ param, const E* __restrict__ grad, const E* __restrict__ first,
                           const E* __restrict__ second, E* __restrict__ new_param, E* __restrict__ new_first,
                           E* __restrict__ new_second, long long n, E beta1, E beta2, E shrink, E step_size,
                           E correction2_sqrt, E eps) {
    const E one_minus_beta1 = sub_rn((E)1, beta1);
    const E one_minus_beta2 = sub_rn((E)1, beta2);
    GRID_STRIDE_LOOP(i, n) {
        E g = grad[i];
        E m = add_rn(mul_rn(beta1, first[i]), mul_rn(one_minus_beta1, g));
        E v = add_rn(mul_rn(beta2, second[i]), mul_rn(mul_rn(one_minus_beta2, g), g));
        E denominator = add_rn(div_rn(sqrt_rn(v), correction2_sqrt), eps);
        new_first[i] = m;
        new_second[i] = v;
        new_param[i] = sub_rn(mul_rn(param[i], shrink), div_rn(mul_rn(step_size, m), denominator));
    }
}

#define OPTIM_KERNELS(E, SUFFIX)                                                                                \
    extern "C" __global__ void sgd_step_##SUFFIX(const E* param, const E* grad, const E* buffer, E* new_param, \
                                                 E* new_buffer, long long n, int has_buffer, E lr, E momentum, \
                                                 E weight_decay) {                                             \
        sgd_step<E>(param, grad, buffer, new_param, new_buffer, n, has_buffer, lr, momentum, weight_decay);    \
    }                                                                                                           \
    extern "C" __global__ void adamw_step_##SUFFIX(const E* param, const E* grad, const E* first,              \
                                                   const E* second, E* new_param, E* new_first,                \
                                                   E* new_second, long long n, E beta1, E beta2, E shrink,     \
                                                   E step_size, E correction2_sqrt, E eps) {                   \
        adamw_step<E>(param, grad, first, second, new_param, new_first, new_second, n, beta1, beta2, shrink,   \
                      step_size, correction2_sqrt, eps);                                                        \
    }

OPTIM_KERNELS(float, f32)
OPTIM_KERNELS(double, f64)
