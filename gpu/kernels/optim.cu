// Optimizer steps over many parameter tensors per launch (docs/recipes.md §5); twin of
// reference/src/ops/optim.rs, host side in gpu/src/ops/optim.rs. A launch takes a table of up to
// SGD_TABLE_LEN or ADAMW_TABLE_LEN tensors by value; each block updates one chunk of one tensor
// (foreach.cuh). Each update is computed in E with the reference's operations in the reference's
// order, through the explicit round-to-nearest intrinsics (never contracted into an FMA;
// division and square root IEEE), so every result rounds exactly as the CPU's.

#include "foreach.cuh"
#include "rounding.cuh"

// Tensors per launch: each table stays within the 4 KiB of kernel parameters every CUDA device
// accepts. gpu/src/ops/optim.rs mirrors both tables field for field.
#define SGD_TABLE_LEN 64
#define ADAMW_TABLE_LEN 48

// A table of foreach.cuh; `buffer[t]` is null before tensor t's first step (then it is not read).
template <typename E> struct SgdTable {
    const E* param[SGD_TABLE_LEN];
    const E* grad[SGD_TABLE_LEN];
    const E* buffer[SGD_TABLE_LEN];
    E* new_param[SGD_TABLE_LEN];
    E* new_buffer[SGD_TABLE_LEN];
    long long len[SGD_TABLE_LEN];
    int first_block[SGD_TABLE_LEN + 1];
};

// As SgdTable, with each tensor's `shrink = 1 - lr weight_decay` (its weight decay may be 0).
template <typename E> struct AdamWTable {
    const E* param[ADAMW_TABLE_LEN];
    const E* grad[ADAMW_TABLE_LEN];
    const E* first[ADAMW_TABLE_LEN];
    const E* second[ADAMW_TABLE_LEN];
    E* new_param[ADAMW_TABLE_LEN];
    E* new_first[ADAMW_TABLE_LEN];
    E* new_second[ADAMW_TABLE_LEN];
    long long len[ADAMW_TABLE_LEN];
    E shrink[ADAMW_TABLE_LEN];
    int first_block[ADAMW_TABLE_LEN + 1];
};

// d = g + weight_decay p; b = momentum b_old + d (b = d without a buffer, the first step);
// p_new = p - lr b.
template <typename E>
__device__ __forceinline__ void sgd_step_foreach(const SgdTable<E>& table, E lr, E momentum, E weight_decay) {
    long long start, end;
    const int t = chunk_of_block(table, start, end);
    const E* buffer = table.buffer[t];
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        E p = table.param[t][i];
        E d = add_rn(table.grad[t][i], mul_rn(weight_decay, p));
        E b = buffer ? add_rn(mul_rn(momentum, buffer[i]), d) : d;
        table.new_buffer[t][i] = b;
        table.new_param[t][i] = sub_rn(p, mul_rn(lr, b));
    }
}

// m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g;
// p_new = p shrink - step_size m / (sqrt(v) / correction2_sqrt + eps), with
// shrink = 1 - lr weight_decay (per tensor), step_size = lr / (1 - b1^t), correction2_sqrt =
// sqrt(1 - b2^t) computed by the host in double and rounded to E, as the reference does.
template <typename E>
__device__ __forceinline__ void adamw_step_foreach(const AdamWTable<E>& table, E beta1, E beta2, E step_size,
                                                   E correction2_sqrt, E eps) {
    long long start, end;
    const int t = chunk_of_block(table, start, end);
    const E one_minus_beta1 = sub_rn((E)1, beta1);
    const E one_minus_beta2 = sub_rn((E)1, beta2);
    const E shrink = table.shrink[t];
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        E g = table.grad[t][i];
        E m = add_rn(mul_rn(beta1, table.first[t][i]), mul_rn(one_minus_beta1, g));
        E v = add_rn(mul_rn(beta2, table.second[t][i]), mul_rn(mul_rn(one_minus_beta2, g), g));
        E denominator = add_rn(div_rn(sqrt_rn(v), correction2_sqrt), eps);
        table.new_first[t][i] = m;
        table.new_second[t][i] = v;
        table.new_param[t][i] = sub_rn(mul_rn(table.param[t][i], shrink), div_rn(mul_rn(step_size, m), denominator));
    }
}

#define OPTIM_KERNELS(E, SUFFIX)                                                                                 \
    extern "C" __global__ void sgd_step_foreach_##SUFFIX(SgdTable<E> table, E lr, E momentum, E weight_decay) { \
        sgd_step_foreach<E>(table, lr, momentum, weight_decay);                                                  \
    }                                                                                                            \
    extern "C" __global__ void adamw_step_foreach_##SUFFIX(AdamWTable<E> table, E beta1, E beta2, E step_size,  \
                                                           E correction2_sqrt, E eps) {                          \
        adamw_step_foreach<E>(table, beta1, beta2, step_size, correction2_sqrt, eps);                            \
    }

OPTIM_KERNELS(float, f32)
OPTIM_KERNELS(double, f64)
