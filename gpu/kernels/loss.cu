// Softmax cross-entropy over logits [B, K] (docs/recipes.md §5); twin of reference/src/ops/loss.rs, host
// side in gpu/src/ops/loss.rs. One thread per row (rows are few) computes the row's log-sum-exp
// in double exactly as the reference writes it, sequentially over the classes: the row maximum m
// (the first one), then ln_1p(sum_{k != argmax} exp(x_k - m)); each row's loss goes to a double
// buffer that one thread sums in row order. The backward is elementwise.
//
// Products and sums use the explicit round-to-nearest intrinsics, which the compiler never
// contracts into an FMA, so they round as the reference's do.

#define GRID_STRIDE_LOOP(i, n)                                                                   \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                \
         i += (long long)gridDim.x * blockDim.x)

// lse = max + log1p_rest; -log softmax(row)[k] = (max - x_k) + log1p_rest.
struct LogSumExp {
    double max;
    double log1p_rest;
};

template <typename E> __device__ LogSumExp log_sum_exp(const E* row, long long classes) {
    double max = __longlong_as_double(0xFFF0000000000000LL); // -inf
    long long at = 0;
    for (long long k = 0; k < classes; ++k) {
        double v = (double)row[k];
        if (v > max) {
            max = v;
            at = k;
        }
    }
    double rest = 0.0;
    for (long long k = 0; k < classes; ++k) {
        if (k != at) rest = __dadd_rn(rest, exp(__dsub_rn((double)row[k], max)));
    }
    LogSumExp lse = {max, log1p(rest)};
    return lse;
}

__device__ __forceinline__ double neg_log_softmax(const LogSumExp& lse, double x) {
    return __dadd_rn(__dsub_rn(lse.max, x), lse.log1p_rest);
}

// softmax[k] = (E) exp(-(-log softmax(row)[k])).
template <typename E> __device__ void write_softmax(const E* row, const LogSumExp& lse, E* softmax, long long classes) {
    for (long long k = 0; k < classes; ++k) softmax[k] = (E)exp(-neg_log_softmax(lse, (double)row[k]));
}

// Against labels (each < classes, checked by the host): writes the softmax, the one-hot targets
// and loss[b] = -log softmax(logits[b])[label_b].
template <typename E>
__device__ void cross_entropy_labels(const E* __restrict__ logits, const long long* __restrict__ labels,
                                     E* __restrict__ softmax, E* __restrict__ targets, double* __restrict__ losses,
                                     long long rows, long long classes) {
    GRID_STRIDE_LOOP(b, rows) {
        const E* row = logits + b * classes;
        LogSumExp lse = log_sum_exp(row, classes);
        write_softmax(row, lse, softmax + b * classes, classes);
        long long label = labels[b];
        for (long long k = 0; k < classes; ++k) targets[b * classes + k] = k == label ? (E)1 : (E)0;
        losses[b] = neg_log_softmax(lse, (double)row[label]);
    }
}

// Against soft targets [B, K]: writes the softmax and
// loss[b] = sum_k targets[b, k] (-log softmax(logits[b])[k]), summed in class order from 0.
template <typename E>
__device__ void cross_entropy_soft(const E* __restrict__ logits, const E* __restrict__ targets,
                                   E* __restrict__ softmax, double* __restrict__ losses, long long rows,
                                   long long classes) {
    GRID_STRIDE_LOOP(b, rows) {
        const E* row = logits + b * classes;
        const E* target = targets + b * classes;
        LogSumExp lse = log_sum_exp(row, classes);
        write_softmax(row, lse, softmax + b * classes, classes);
        double loss = 0.0;
        for (long long k = 0; k < classes; ++k)
            loss = __dadd_rn(loss, __dmul_rn((double)target[k], neg_log_softmax(lse, (double)row[k])));
        losses[b] = loss;
    }
}

// grad = (E) (scale ((double) softmax - (double) targets)), scale = grad_loss / B.
template <typename E>
__device__ void cross_entropy_backward(const E* __restrict__ softmax, const E* __restrict__ targets,
                                       E* __restrict__ grad, long long n, double scale) {
    GRID_STRIDE_LOOP(i, n) { grad[i] = (E)__dmul_rn(scale, __dsub_rn((double)softmax[i], (double)targets[i])); }
}

// loss[0] = (E) ((sum_b losses[b]) / rows), summed in row order from -0.0 as Rust's f64 sum
// does (the reference's mean), so the loss stays on the device, bit for bit the host's. One thread.
template <typename E> __device__ void mean_of_rows(const double* __restrict__ losses, E* __restrict__ loss, long long rows) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double sum = -0.0;
    for (long long b = 0; b < rows; ++b) sum = __dadd_rn(sum, losses[b]);
    loss[0] = (E)__ddiv_rn(sum, (double)rows);
}

#define LOSS_KERNELS(E, SUFFIX)                                                                                 \
    extern "C" __global__ void cross_entropy_labels_##SUFFIX(const E* logits, const long long* labels,         \
                                                             E* softmax, E* targets, double* losses,           \
                                                             long long rows, long long classes) {              \
        cross_entropy_labels<E>(logits, labels, softmax, targets, losses, rows, classes);                       \
    }                                                                                                           \
    extern "C" __global__ void cross_entropy_soft_##SUFFIX(const E* logits, const E* targets, E* softmax,      \
                                                           double* losses, long long rows, long long classes) { \
        cross_entropy_soft<E>(logits, targets, softmax, losses, rows, classes);                                 \
    }                                                                                                           \
    extern "C" __global__ void cross_entropy_backward_##SUFFIX(const E* softmax, const E* targets, E* grad,    \
                                                               long long n, double scale) {                    \
        cross_entropy_backward<E>(softmax, targets, grad, n, scale);                                            \
    }                                                                                                           \
    extern "C" __global__ void mean_of_rows_##SUFFIX(const double* losses, E* loss, long long rows) {           \
        mean_of_rows<E>(losses, loss, rows);                                                                    \
    }

LOSS_KERNELS(float, f32)
LOSS_KERNELS(double, f64)
