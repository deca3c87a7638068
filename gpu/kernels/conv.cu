// im2col and col2im of the 2-D convolution (docs/architectures.md §4.0); twin of
// reference/src/ops/conv/mod.rs, host side in gpu/src/ops/conv/im2col.rs, whose cuBLAS GEMMs do the
// arithmetic.
//
// Layouts (row-major): x and dx are [B, C, H, W] (a chunk of B images); the columns are
// [K, B, P] with K = C k_h k_w rows ordered (c, i, j) and B P columns ordered (n, p, q), P = H_out W_out:
//   cols[(c, i, j), n, (p, q)] = x_pad[n, c, stride p + i, stride q + j]
//                              = x[n, c, stride p + i - padding, stride q + j - padding] (0 outside).
// With k_h = k_w = 1, stride 1 and no padding, im2col is the transpose [B, C, P] -> [C, B, P].
// Every kernel loops with a grid stride over 64-bit indices and writes each output element once.

// cols = im2col(x) over K B P elements.
template <typename E>
__device__ void im2col(const E* __restrict__ x, E* __restrict__ cols, long long batch, long long channels,
                       long long height, long long width, int kernel_h, int kernel_w, int stride, int padding,
                       long long out_h, long long out_w) {
    long long total = channels * kernel_h * kernel_w * batch * out_h * out_w;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        long long rest = at;
        long long q = rest % out_w;
        rest /= out_w;
        long long p = rest % out_h;
        rest /= out_h;
        long long n = rest % batch;
        rest /= batch;
        long long j = rest % kernel_w;
        rest /= kernel_w;
        long long i = rest % kernel_h;
        long long c = rest / kernel_h;
        long long row = p * stride + i - padding;
        long long col = q * stride + j - padding;
        E value = (E)0;
        if (row >= 0 && row < height && col >= 0 && col < width) {
            value = x[((n * channels + c) * height + row) * width + col];
        }
        cols[at] = value;
    }
}

// dx = col2im(dcols) over B C H W elements, as a gather: each input element sums the column entries
// it was read from, kernel offsets (i, j) in increasing order (the reference's order), no atomics.
template <typename E>
__device__ void col2im(const E* __restrict__ dcols, E* __restrict__ dx, long long batch, long long channels,
                       long long height, long long width, int kernel_h, int kernel_w, int stride, int padding,
                       long long out_h, long long out_w) {
    long long total = batch * channels * height * width;
    for (long long at = (long long)blockIdx.x * blockDim.x + threadIdx.x; at < total;
         at += (long long)gridDim.x * blockDim.x) {
        long long rest = at;
        long long w = rest % width;
        rest /= width;
        long long h = rest % height;
        rest /= height;
        long long c = rest % channels;
        long long n = rest / channels;
        E sum = (E)0;
        for (int i = 0; i < kernel_h; ++i) {
            long long row = h + padding - i;  // stride p
            if (row < 0 || row % stride != 0 || row / stride >= out_h) continue;
            long long p = row / stride;
            for (int j = 0; j < kernel_w; ++j) {
                long long col = w + padding - j;  // stride q
                if (col < 0 || col % stride != 0 || col / stride >= out_w) continue;
                long long q = col / stride;
                long long k = (c * kernel_h + i) * kernel_w + j;
                sum += dcols[((k * batch + n) * out_h + p) * out_w + q];
            }
        }
        dx[at] = sum;
    }
}

#define CONV_KERNELS(E, SUFFIX)                                                                                 \
    extern "C" __global__ void im2col_##SUFFIX(const E* x, E* cols, long long batch, long long channels,        \
                                               long long height, long long width, int kernel_h, int kernel_w,   \
                                               int stride, int padding, long long out_h, long long out_w) {     \
        im2col<E>(x, cols, batch, channels, height, width, kernel_h, kernel_w, stride, padding, out_h, out_w);  \
    }                                                                                                           \
    extern "C" __global__ void col2im_##SUFFIX(const E* dcols, E* dx, long long batch, long long channels,      \
                                               long long height, long long width, int kernel_h, int kernel_w,   \
                                               int stride, int padding, long long out_h, long long out_w) {     \
        col2im<E>(dcols, dx, batch, channels, height, width, kernel_h, kernel_w, stride, padding, out_h, out_w); \
    }

CONV_KERNELS(float, f32)
CONV_KERNELS(double, f64)
