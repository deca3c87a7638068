// The windows of a 2-D pooling over planes of h x w (PyTorch's ceil_mode=False) and the average
// pool's input gradient at one element, shared by pool.cu, whose backward writes it, and
// batch_norm.cu, whose backward after an average pool makes it again as it reads it
// (docs/memory.md §9.6): one expression in both, so the same bits.
#pragma once

// A pooling's sizes: `planes` planes of h x w in, of out_h x out_w out, a k x k window moved by
// `stride` over the input padded by `padding`.
struct PoolGeometry {
    long long planes, h, w, out_h, out_w, kernel, stride, padding;
};

// The inputs [first, last) of the window of output o along an axis of `size` inputs.
__device__ __forceinline__ void window(long long o, long long size, long long kernel, long long stride,
                                       long long padding, long long* first, long long* last) {
    const long long start = o * stride;
    *first = start > padding ? start - padding : 0;
    *last = min(start + kernel - padding, size);
}

// The outputs [first, last) along an axis of `out` outputs whose windows contain input i:
// o stride - padding <= i < o stride - padding + kernel.
__device__ __forceinline__ void covering(long long i, long long out, long long kernel, long long stride,
                                         long long padding, long long* first, long long* last) {
    const long long shifted = i + padding;
    const long long above = shifted + 1 > kernel ? shifted + 1 - kernel : 0;
    const long long lo = min((above + stride - 1) / stride, out);
    const long long hi = min(shifted / stride + 1, out);
    *first = lo;
    *last = hi > lo ? hi : lo;
}

// The average pool's dx at input element `at` of the flat [planes, h, w]: (1 / kernel^2) times
// the sum of dy over the outputs whose windows contain it, in double in row-major output order
// (count_include_pad=True), rounded once to E.
template <typename E>
__device__ __forceinline__ E avg_pool_grad_at(const E* __restrict__ grad_y, const PoolGeometry& g, long long at) {
    const long long plane = at / (g.h * g.w), i = at % (g.h * g.w);
    long long r0, r1, c0, c1;
    covering(i / g.w, g.out_h, g.kernel, g.stride, g.padding, &r0, &r1);
    covering(i % g.w, g.out_w, g.kernel, g.stride, g.padding, &c0, &c1);
    const E* dy_plane = grad_y + plane * g.out_h * g.out_w;
    double sum = 0.0;
    for (long long r = r0; r < r1; ++r)
        for (long long c = c0; c < c1; ++c) sum += (double)dy_plane[r * g.out_w + c];
    return (E)(sum / (double)(g.kernel * g.kernel));
}
