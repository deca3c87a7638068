// libcudnn.so.9 for the CPU emulator: handles, the 4-D tensor, filter and convolution descriptors,
// the heuristic rankings (cudnnGet*Algorithm_v7), the workspace queries and the three convolution
// passes of the legacy API that cudarc 0.19 calls (gpu/src/ops/conv/cudnn.rs), written from the
// cuDNN 9 documentation. NCHW tensors and KCRS filters, 2-D, no groups, in the configurations
// FLOAT (f32 data and sums), DOUBLE, and PSEUDO_HALF and PSEUDO_BFLOAT16 (fp16 or bf16 data, f32
// sums, alpha and beta); any other layout or configuration is CUDNN_STATUS_NOT_SUPPORTED_*.
// Status values are cuDNN 9's.
//
// What it checks, as cuDNN does: descriptors set before use, equal data types, the convolution's
// compute type (f64 for f64 data, f32 for the rest), x's channels against the filter's, y's sizes
// against the output sizes of x, the filter and the convolution, the algorithm's range, and a
// workspace at least as large as the algorithm asks; and, as the emulator does for cuBLAS, that
// every buffer (and the workspace) lies inside one live device allocation.
//
// The rankings are made to exercise a caller's choice: first an algorithm whose workspace exceeds
// 256 MiB (forward) or a non-deterministic one (both backward passes), then deterministic ones,
// each with the math type `ranked_math` gives. A non-deterministic algorithm is that here too:
// every other call sums in the reverse order, as atomics would reorder the sums, so a caller that
// takes one fails its bitwise tests.
//
// Arithmetic: f32 inputs are rounded to TF32 (10-bit mantissa) unless the descriptor's math type
// is CUDNN_FMA_MATH, as tensor cores do, and 16-bit inputs are widened exactly; every output
// element sums its products in a fixed order in the compute type, one rounding per multiply and
// per add, and is stored in the data type (a 16-bit output rounded to nearest even); beta == 0
// does not read the output. Results agree with a GPU to rounding, not bitwise (cuDNN's order of
// sums varies by algorithm).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "fake_lib.h"

namespace {

typedef int cudnnStatus_t;
enum {
    CUDNN_STATUS_SUCCESS = 0,
    CUDNN_STATUS_NOT_INITIALIZED = 1001,
    CUDNN_STATUS_BAD_PARAM = 2000,
    CUDNN_STATUS_INVALID_VALUE = 2001,
    CUDNN_STATUS_BAD_PARAM_NULL_POINTER = 2002,
    CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED = 2004,
    CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT = 2006,
    CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH = 2008,
    CUDNN_STATUS_NOT_SUPPORTED = 3000,
    CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE = 3003,
    CUDNN_STATUS_NOT_SUPPORTED_LAYOUT = 3004,
    CUDNN_STATUS_EXECUTION_FAILED = 5000,
};
enum { CUDNN_DATA_FLOAT = 0, CUDNN_DATA_DOUBLE = 1, CUDNN_DATA_HALF = 2, CUDNN_DATA_BFLOAT16 = 9 };
enum { CUDNN_TENSOR_NCHW = 0 };
enum { CUDNN_CONVOLUTION = 0, CUDNN_CROSS_CORRELATION = 1 };
enum { CUDNN_DEFAULT_MATH = 0, CUDNN_TENSOR_OP_MATH = 1, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION = 2, CUDNN_FMA_MATH = 3 };
enum { CUDNN_NON_DETERMINISTIC = 0, CUDNN_DETERMINISTIC = 1 };
// Algorithm numbers and counts of the three passes.
enum { FWD_IMPLICIT_GEMM = 0, FWD_IMPLICIT_PRECOMP_GEMM = 1, FWD_WINOGRAD_NONFUSED = 7, FWD_COUNT = 8 };
enum { BWD_DATA_ALGO_0 = 0, BWD_DATA_ALGO_1 = 1, BWD_DATA_COUNT = 6 };
enum { BWD_FILTER_ALGO_0 = 0, BWD_FILTER_ALGO_1 = 1, BWD_FILTER_ALGO_3 = 3, BWD_FILTER_COUNT = 7 };

const unsigned kMagic = 0xC0DA7EA5u;
// The workspace of the forward pass's first-ranked algorithm: beyond a 256 MiB limit.
const std::size_t kHugeWorkspace = std::size_t(300) << 20;

struct Handle {
    unsigned magic;
    void* stream;
};
// A 4-D tensor (n, c, h, w) or filter (k, c, r, s), which `kind` tells apart; `set` once its
// Set*4dDescriptor succeeded.
enum class Kind { Tensor, Filter };
struct Shape {
    unsigned magic;
    Kind kind;
    bool set;
    int type;
    int d[4];
};
struct Conv {
    unsigned magic;
    bool set;
    int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, mode, compute, math;
};
// cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t: one layout for the three.
struct Perf {
    int algo;
    cudnnStatus_t status;
    float time;
    std::size_t memory;
    int determinism;
    int math_type;
    int reserved[3];
};

template <typename T> T* live(void* p) {
    T* object = static_cast<T*>(p);
    return object && object->magic == kMagic ? object : nullptr;
}

// The sizes of one convolution, checked against each other.
struct Problem {
    int n, c, h, w;  // x
    int k, r, s;     // filter: k outputs of c channels, r x s
    int p, q;        // y: h_out, w_out
    const Conv* conv;
    int type;
    bool tf32;

    long long x_len() const { return (long long)n * c * h * w; }
    long long w_len() const { return (long long)k * c * r * s; }
    long long y_len() const { return (long long)n * k * p * q; }
    std::size_t elem() const { return type == CUDNN_DATA_DOUBLE ? 8 : type == CUDNN_DATA_FLOAT ? 4 : 2; }
    // The offsets of x[img, ch, row, col] and y[img, o, i, j] in their NCHW buffers.
    long long x_at(int img, int ch, int row, int col) const {
        return (((long long)img * c + ch) * h + row) * w + col;
    }
    long long y_at(int img, int o, int i, int j) const { return (((long long)img * k + o) * p + i) * q + j; }
};

// The compute type a data type's configuration sums in: f64 for f64, f32 for the rest.
int compute_type_of(int data_type) { return data_type == CUDNN_DATA_DOUBLE ? CUDNN_DATA_DOUBLE : CUDNN_DATA_FLOAT; }

int output_size(int in, int pad, int filter, int dilation, int stride) {
    return (in + 2 * pad - dilation * (filter - 1) - 1) / stride + 1;
}

// The problem of descriptors x, w, conv and y, or the status cuDNN would return for them.
cudnnStatus_t problem(void* xd, void* wd, void* cd, void* yd, Problem* out) {
    Shape* x = live<Shape>(xd);
    Shape* w = live<Shape>(wd);
    Shape* y = live<Shape>(yd);
    Conv* conv = live<Conv>(cd);
    if (!x || !w || !y || !conv) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (x->kind != Kind::Tensor || w->kind != Kind::Filter || y->kind != Kind::Tensor) return CUDNN_STATUS_BAD_PARAM;
    if (!x->set || !w->set || !y->set || !conv->set) return CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED;
    if (x->type != w->type || x->type != y->type) return CUDNN_STATUS_BAD_PARAM;
    if (conv->compute != compute_type_of(x->type)) return CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE;
    if (x->d[1] != w->d[1]) return CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH;
    const int p = output_size(x->d[2], conv->pad_h, w->d[2], conv->dil_h, conv->stride_h);
    const int q = output_size(x->d[3], conv->pad_w, w->d[3], conv->dil_w, conv->stride_w);
    if (p <= 0 || q <= 0) return CUDNN_STATUS_BAD_PARAM;
    if (y->d[0] != x->d[0] || y->d[1] != w->d[0] || y->d[2] != p || y->d[3] != q)
        return CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH;
    *out = Problem{x->d[0], x->d[1], x->d[2], x->d[3], w->d[0], w->d[2], w->d[3], p, q, conv, x->type,
                   x->type == CUDNN_DATA_FLOAT && conv->math != CUDNN_FMA_MATH};
    return CUDNN_STATUS_SUCCESS;
}

// The workspace an algorithm asks for.
enum class Need {
    None,
    Image,  // one output image's bytes, so that a caller must allocate and pass it
    Huge,   // more than a 256 MiB limit
};

std::size_t workspace_of(const Problem& pb, Need need) {
    switch (need) {
        case Need::None: return 0;
        case Need::Huge: return kHugeWorkspace;
        default: return (std::size_t)pb.k * pb.p * pb.q * pb.elem();
    }
}

// The math type a ranked entry carries: FMA when the descriptor asks for it; otherwise tensor
// cores for the first deterministic entry of f32 data, and of 16-bit data only where the
// descriptor asks for tensor cores, as cuDNN 9 ranks (on an H200, under the default math every
// 16-bit entry carried the default math and ran without tensor cores); the default math for the
// rest.
int ranked_math(const Problem& pb, bool first_deterministic) {
    if (pb.conv->math == CUDNN_FMA_MATH) return CUDNN_FMA_MATH;
    const bool half = pb.type == CUDNN_DATA_HALF || pb.type == CUDNN_DATA_BFLOAT16;
    const bool tensor_cores =
        half ? pb.conv->math == CUDNN_TENSOR_OP_MATH : pb.type == CUDNN_DATA_FLOAT;
    return tensor_cores && first_deterministic ? CUDNN_TENSOR_OP_MATH : CUDNN_DEFAULT_MATH;
}

struct Entry {
    int algo;
    bool deterministic;
    Need need;
    bool first_deterministic;
};

cudnnStatus_t rank(void* h, void* xd, void* wd, void* cd, void* yd, int requested, int* returned, Perf* perfs,
                   const Entry* entries, int count) {
    if (!live<Handle>(h)) return CUDNN_STATUS_NOT_INITIALIZED;
    if (!returned || !perfs) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (requested < 1) return CUDNN_STATUS_BAD_PARAM;
    Problem pb;
    const cudnnStatus_t status = problem(xd, wd, cd, yd, &pb);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    const int n = count < requested ? count : requested;
    for (int i = 0; i < n; ++i) {
        const Entry& e = entries[i];
        perfs[i] = Perf{e.algo, CUDNN_STATUS_SUCCESS, -1.0f, workspace_of(pb, e.need),
                        e.deterministic ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC,
                        ranked_math(pb, e.first_deterministic), {0, 0, 0}};
    }
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

const Entry kForward[] = {
    {FWD_WINOGRAD_NONFUSED, true, Need::Huge, false},
    {FWD_IMPLICIT_PRECOMP_GEMM, true, Need::Image, true},
    {FWD_IMPLICIT_GEMM, true, Need::None, false},
};
const Entry kBackwardData[] = {
    {BWD_DATA_ALGO_0, false, Need::Image, false},
    {BWD_DATA_ALGO_1, true, Need::Image, true},
};
const Entry kBackwardFilter[] = {
    {BWD_FILTER_ALGO_0, false, Need::Image, false},
    {BWD_FILTER_ALGO_3, false, Need::Image, false},
    {BWD_FILTER_ALGO_1, true, Need::Image, true},
};

// The entry of `algo` among a pass's ranked `entries`, or nullptr for an algorithm they do not rank.
const Entry* find_entry(const Entry* entries, int count, int algo) {
    for (int i = 0; i < count; ++i)
        if (entries[i].algo == algo) return &entries[i];
    return nullptr;
}

// The problem of the descriptors and the workspace algorithm `algo` of a pass needs for it (one
// image for an algorithm the pass does not rank), or the status for bad descriptors or an
// algorithm out of the pass's range (`algo_count`).
cudnnStatus_t workspace(void* h, void* xd, void* wd, void* cd, void* yd, int algo, int algo_count,
                        const Entry* entries, int count, Problem* pb, std::size_t* bytes) {
    if (!live<Handle>(h)) return CUDNN_STATUS_NOT_INITIALIZED;
    if (!bytes) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (algo < 0 || algo >= algo_count) return CUDNN_STATUS_BAD_PARAM;
    const cudnnStatus_t status = problem(xd, wd, cd, yd, pb);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    const Entry* entry = find_entry(entries, count, algo);
    *bytes = workspace_of(*pb, entry ? entry->need : Need::Image);
    return CUDNN_STATUS_SUCCESS;
}

// The workspace query of the API: `workspace` without the problem.
cudnnStatus_t query_workspace(void* h, void* xd, void* wd, void* cd, void* yd, int algo, int algo_count,
                              const Entry* entries, int count, std::size_t* bytes) {
    Problem pb;
    return workspace(h, xd, wd, cd, yd, algo, algo_count, entries, count, &pb, bytes);
}

// Checks the buffers of one pass and the workspace against the allocations and the algorithm.
cudnnStatus_t check_buffers(const char* name, const Problem& pb, const void* x, const void* w, const void* y,
                            const void* ws, std::size_t ws_bytes, std::size_t ws_needed) {
    if (ws_bytes < ws_needed) return CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT;
    const struct {
        const char* what;
        const void* p;
        std::size_t bytes;
    } buffers[] = {
        {"x (or dx)", x, (std::size_t)pb.x_len() * pb.elem()},
        {"w (or dw)", w, (std::size_t)pb.w_len() * pb.elem()},
        {"y (or dy)", y, (std::size_t)pb.y_len() * pb.elem()},
        {"workspace", ws, ws_needed},
    };
    for (const auto& b : buffers) {
        if (b.bytes > 0 && (!b.p || !revsnn_emu_range_ok(b.p, b.bytes))) {
            std::fprintf(stderr,
                         "revsnn CUDA emulator: %s: %s ([%p, +%zu bytes]; x [%d, %d, %d, %d], w [%d, %d, %d, %d], "
                         "y [%d, %d, %d, %d]) is not inside one live device allocation\n",
                         name, b.what, b.p, b.bytes, pb.n, pb.c, pb.h, pb.w, pb.k, pb.c, pb.r, pb.s, pb.n, pb.k,
                         pb.p, pb.q);
            return CUDNN_STATUS_EXECUTION_FAILED;
        }
    }
    return CUDNN_STATUS_SUCCESS;
}

// The filter tap that meets output (i, j) at offset (a, b): flipped for a true convolution.
inline long long tap(const Problem& pb, int o, int ch, int a, int b) {
    if (pb.conv->mode == CUDNN_CONVOLUTION) {
        a = pb.r - 1 - a;
        b = pb.s - 1 - b;
    }
    return (((long long)o * pb.c + ch) * pb.r + a) * pb.s + b;
}

// The input row (or column) under output index i at filter offset a, or -1 in the padding.
inline int input_at(int i, int a, int stride, int pad, int dilation, int size) {
    const int at = i * stride - pad + a * dilation;
    return at >= 0 && at < size ? at : -1;
}

// Calls f(a, b, row, col) for each filter offset (a, b), in order, that meets output (i, j)
// inside x (row, col); offsets over the padding are skipped.
template <typename F> void each_tap(const Problem& pb, int i, int j, F f) {
    const Conv& cv = *pb.conv;
    for (int a = 0; a < pb.r; ++a) {
        const int row = input_at(i, a, cv.stride_h, cv.pad_h, cv.dil_h, pb.h);
        if (row < 0) continue;
        for (int b = 0; b < pb.s; ++b) {
            const int col = input_at(j, b, cv.stride_w, cv.pad_w, cv.dil_w, pb.w);
            if (col >= 0) f(a, b, row, col);
        }
    }
}

// *out = alpha sum + beta *out in the compute type A, stored as the data type D.
template <typename D, typename A> void store(D* out, A sum, A alpha, A beta) {
    const A scaled = alpha * sum;
    *out = narrow<D>(beta == (A)0 ? scaled : scaled + beta * load_input<A>(out, false));
}

// y[n, o, i, j] = alpha sum_{ch, a, b} x[n, ch, in(i, a), in(j, b)] w[o, ch, a, b] + beta y, data of
// type D summed in E.
template <typename D, typename E> void forward(const Problem& pb, E alpha, const D* x, const D* w, E beta, D* y) {
    for (int n = 0; n < pb.n; ++n)
        for (int o = 0; o < pb.k; ++o)
            for (int i = 0; i < pb.p; ++i)
                for (int j = 0; j < pb.q; ++j) {
                    E sum = 0;
                    for (int ch = 0; ch < pb.c; ++ch)
                        each_tap(pb, i, j, [&](int a, int b, int row, int col) {
                            const E xv = load_input<E>(x + pb.x_at(n, ch, row, col), pb.tf32);
                            sum = sum + xv * load_input<E>(w + tap(pb, o, ch, a, b), pb.tf32);
                        });
                    store(y + pb.y_at(n, o, i, j), sum, alpha, beta);
                }
}

// dx[n, ch, row, col] = alpha sum over the (o, i, j, a, b) that reach it of dy[n, o, i, j] w[o, ch, a, b]
// + beta dx: accumulated in a scratch image, in the order of the forward's loops (the output
// channels in reverse when `reversed`).
template <typename D, typename E>
void backward_data(const Problem& pb, E alpha, const D* w, const D* dy, E beta, D* dx, bool reversed) {
    std::vector<E> sums((std::size_t)pb.c * pb.h * pb.w);
    for (int n = 0; n < pb.n; ++n) {
        std::fill(sums.begin(), sums.end(), (E)0);
        for (int step = 0; step < pb.k; ++step) {
            const int o = reversed ? pb.k - 1 - step : step;
            for (int i = 0; i < pb.p; ++i)
                for (int j = 0; j < pb.q; ++j) {
                    const E g = load_input<E>(dy + pb.y_at(n, o, i, j), pb.tf32);
                    for (int ch = 0; ch < pb.c; ++ch)
                        each_tap(pb, i, j, [&](int a, int b, int row, int col) {
                            E& s = sums[pb.x_at(0, ch, row, col)];
                            s = s + g * load_input<E>(w + tap(pb, o, ch, a, b), pb.tf32);
                        });
                }
        }
        for (std::size_t e = 0; e < sums.size(); ++e) store(dx + pb.x_at(n, 0, 0, 0) + e, sums[e], alpha, beta);
    }
}

// dw[o, ch, a, b] = alpha sum_{n, i, j} dy[n, o, i, j] x[n, ch, in(i, a), in(j, b)] + beta dw (the
// images in reverse when `reversed`).
template <typename D, typename E>
void backward_filter(const Problem& pb, E alpha, const D* x, const D* dy, E beta, D* dw, bool reversed) {
    const Conv& cv = *pb.conv;
    for (int o = 0; o < pb.k; ++o)
        for (int ch = 0; ch < pb.c; ++ch)
            for (int a = 0; a < pb.r; ++a)
                for (int b = 0; b < pb.s; ++b) {
                    E sum = 0;
                    for (int image = 0; image < pb.n; ++image) {
                        const int n = reversed ? pb.n - 1 - image : image;
                        for (int i = 0; i < pb.p; ++i) {
                            const int row = input_at(i, a, cv.stride_h, cv.pad_h, cv.dil_h, pb.h);
                            if (row < 0) continue;
                            for (int j = 0; j < pb.q; ++j) {
                                const int col = input_at(j, b, cv.stride_w, cv.pad_w, cv.dil_w, pb.w);
                                if (col < 0) continue;
                                const E g = load_input<E>(dy + pb.y_at(n, o, i, j), pb.tf32);
                                sum = sum + g * load_input<E>(x + pb.x_at(n, ch, row, col), pb.tf32);
                            }
                        }
                    }
                    // the filter's own layout, flipped back for a true convolution
                    store(dw + tap(pb, o, ch, a, b), sum, alpha, beta);
                }
}

enum class Pass { Forward, BackwardData, BackwardFilter };

// One pass: checks, then the arithmetic in the compute type. `a` and `b` are the pass's two inputs
// (forward: x, w; backward data: w, dy; backward filter: x, dy) and `out` its output.
cudnnStatus_t run(const char* name, Pass pass, void* h, const void* alpha, void* xd, void* wd, void* cd, void* yd,
                  int algo, const Entry* entries, int count, int algo_count, void* ws, std::size_t ws_bytes,
                  const void* beta, const void* a, const void* b, void* out) {
    if (!alpha || !beta) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    Problem pb;
    std::size_t needed = 0;
    cudnnStatus_t status = workspace(h, xd, wd, cd, yd, algo, algo_count, entries, count, &pb, &needed);
    if (status != CUDNN_STATUS_SUCCESS) return status;
    const void* x = pass == Pass::BackwardData ? out : a;
    const void* w = pass == Pass::Forward ? b : pass == Pass::BackwardData ? a : out;
    const void* y = pass == Pass::Forward ? out : b;
    status = check_buffers(name, pb, x, w, y, ws, ws_bytes, needed);
    if (status != CUDNN_STATUS_SUCCESS || revsnn_emu_host_only()) return status;
    // a non-deterministic algorithm sums in the reverse order on every other call
    static std::atomic<unsigned long long> calls{0};
    const Entry* entry = find_entry(entries, count, algo);
    const bool reversed = entry && !entry->deterministic && (calls.fetch_add(1) & 1) == 1;
    revsnn_emu_set_activity(name);
    auto go = [&](auto data, auto zero) {
        using D = decltype(data);
        using E = decltype(zero);
        const E al = *static_cast<const E*>(alpha), be = *static_cast<const E*>(beta);
        const D* in_a = static_cast<const D*>(a);
        const D* in_b = static_cast<const D*>(b);
        D* o = static_cast<D*>(out);
        switch (pass) {
            case Pass::Forward: forward(pb, al, in_a, in_b, be, o); break;
            case Pass::BackwardData: backward_data(pb, al, in_a, in_b, be, o, reversed); break;
            case Pass::BackwardFilter: backward_filter(pb, al, in_a, in_b, be, o, reversed); break;
        }
    };
    switch (pb.type) {
        case CUDNN_DATA_DOUBLE: go(0.0, 0.0); break;
        case CUDNN_DATA_FLOAT: go(0.0f, 0.0f); break;
        case CUDNN_DATA_HALF: go(Fp16{}, 0.0f); break;
        default: go(Bf16{}, 0.0f); break;
    }
    revsnn_emu_set_activity(nullptr);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t set_shape(void* d, Kind kind, int type, int format, int n, int c, int h, int w) {
    Shape* shape = live<Shape>(d);
    if (!shape) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (shape->kind != kind) return CUDNN_STATUS_BAD_PARAM;
    if (format != CUDNN_TENSOR_NCHW) return CUDNN_STATUS_NOT_SUPPORTED_LAYOUT;
    if (type != CUDNN_DATA_FLOAT && type != CUDNN_DATA_DOUBLE && type != CUDNN_DATA_HALF && type != CUDNN_DATA_BFLOAT16)
        return CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE;
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0) return CUDNN_STATUS_BAD_PARAM;
    if ((long long)n * c * h * w > 0x7fffffffLL) return CUDNN_STATUS_NOT_SUPPORTED;
    *shape = Shape{kMagic, kind, true, type, {n, c, h, w}};
    return CUDNN_STATUS_SUCCESS;
}

template <typename T> cudnnStatus_t create(void** out) {
    if (!out) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    T* object = new T{};
    object->magic = kMagic;
    *out = object;
    return CUDNN_STATUS_SUCCESS;
}

template <typename T> cudnnStatus_t destroy(void* p) {
    T* object = live<T>(p);
    if (!object) return p ? CUDNN_STATUS_BAD_PARAM : CUDNN_STATUS_SUCCESS;
    object->magic = 0;
    delete object;
    return CUDNN_STATUS_SUCCESS;
}

}  // namespace

API std::size_t cudnnGetVersion() { return 91400; }

API cudnnStatus_t cudnnCreate(void** handle) { return create<Handle>(handle); }

API cudnnStatus_t cudnnDestroy(void* handle) { return live<Handle>(handle) ? destroy<Handle>(handle) : CUDNN_STATUS_NOT_INITIALIZED; }

API cudnnStatus_t cudnnSetStream(void* h, void* stream) {
    Handle* handle = live<Handle>(h);
    if (!handle) return CUDNN_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUDNN_STATUS_SUCCESS;
}

API cudnnStatus_t cudnnCreateTensorDescriptor(void** d) {
    cudnnStatus_t status = create<Shape>(d);
    if (status == CUDNN_STATUS_SUCCESS) static_cast<Shape*>(*d)->kind = Kind::Tensor;
    return status;
}
API cudnnStatus_t cudnnDestroyTensorDescriptor(void* d) { return destroy<Shape>(d); }
API cudnnStatus_t cudnnCreateFilterDescriptor(void** d) {
    cudnnStatus_t status = create<Shape>(d);
    if (status == CUDNN_STATUS_SUCCESS) static_cast<Shape*>(*d)->kind = Kind::Filter;
    return status;
}
API cudnnStatus_t cudnnDestroyFilterDescriptor(void* d) { return destroy<Shape>(d); }
API cudnnStatus_t cudnnCreateConvolutionDescriptor(void** d) { return create<Conv>(d); }
API cudnnStatus_t cudnnDestroyConvolutionDescriptor(void* d) { return destroy<Conv>(d); }

API cudnnStatus_t cudnnSetTensor4dDescriptor(void* d, int format, int type, int n, int c, int h, int w) {
    return set_shape(d, Kind::Tensor, type, format, n, c, h, w);
}

API cudnnStatus_t cudnnSetFilter4dDescriptor(void* d, int type, int format, int k, int c, int h, int w) {
    return set_shape(d, Kind::Filter, type, format, k, c, h, w);
}

API cudnnStatus_t cudnnSetConvolution2dDescriptor(void* d, int pad_h, int pad_w, int u, int v, int dil_h, int dil_w,
                                                  int mode, int compute) {
    Conv* conv = live<Conv>(d);
    if (!conv) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (pad_h < 0 || pad_w < 0 || u <= 0 || v <= 0 || dil_h <= 0 || dil_w <= 0) return CUDNN_STATUS_BAD_PARAM;
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION) return CUDNN_STATUS_BAD_PARAM;
    if (compute != CUDNN_DATA_FLOAT && compute != CUDNN_DATA_DOUBLE) return CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE;
    *conv = Conv{kMagic, true, pad_h, pad_w, u, v, dil_h, dil_w, mode, compute, conv->math};
    return CUDNN_STATUS_SUCCESS;
}

API cudnnStatus_t cudnnSetConvolutionMathType(void* d, int math) {
    Conv* conv = live<Conv>(d);
    if (!conv) return CUDNN_STATUS_BAD_PARAM_NULL_POINTER;
    if (math < CUDNN_DEFAULT_MATH || math > CUDNN_FMA_MATH) return CUDNN_STATUS_BAD_PARAM;
    conv->math = math;
    return CUDNN_STATUS_SUCCESS;
}

#define COUNT(entries) (int)(sizeof(entries) / sizeof(entries[0]))

API cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(void* h, void* xd, void* wd, void* cd, void* yd,
                                                         int requested, int* returned, void* perfs) {
    return rank(h, xd, wd, cd, yd, requested, returned, static_cast<Perf*>(perfs), kForward, COUNT(kForward));
}

API cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(void* h, void* wd, void* dyd, void* cd, void* dxd,
                                                              int requested, int* returned, void* perfs) {
    return rank(h, dxd, wd, cd, dyd, requested, returned, static_cast<Perf*>(perfs), kBackwardData,
                COUNT(kBackwardData));
}

API cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(void* h, void* xd, void* dyd, void* cd, void* dwd,
                                                                int requested, int* returned, void* perfs) {
    return rank(h, xd, dwd, cd, dyd, requested, returned, static_cast<Perf*>(perfs), kBackwardFilter,
                COUNT(kBackwardFilter));
}

API cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(void* h, void* xd, void* wd, void* cd, void* yd, int algo,
                                                          std::size_t* bytes) {
    return query_workspace(h, xd, wd, cd, yd, algo, FWD_COUNT, kForward, COUNT(kForward), bytes);
}

API cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(void* h, void* wd, void* dyd, void* cd, void* dxd,
                                                               int algo, std::size_t* bytes) {
    return query_workspace(h, dxd, wd, cd, dyd, algo, BWD_DATA_COUNT, kBackwardData, COUNT(kBackwardData), bytes);
}

API cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(void* h, void* xd, void* dyd, void* cd, void* dwd,
                                                                 int algo, std::size_t* bytes) {
    return query_workspace(h, xd, dwd, cd, dyd, algo, BWD_FILTER_COUNT, kBackwardFilter, COUNT(kBackwardFilter), bytes);
}

API cudnnStatus_t cudnnConvolutionForward(void* h, const void* alpha, void* xd, const void* x, void* wd, const void* w,
                                          void* cd, int algo, void* ws, std::size_t ws_bytes, const void* beta,
                                          void* yd, void* y) {
    return run("cudnnConvolutionForward", Pass::Forward, h, alpha, xd, wd, cd, yd, algo, kForward, COUNT(kForward),
               FWD_COUNT, ws, ws_bytes, beta, x, w, y);
}

API cudnnStatus_t cudnnConvolutionBackwardData(void* h, const void* alpha, void* wd, const void* w, void* dyd,
                                               const void* dy, void* cd, int algo, void* ws, std::size_t ws_bytes,
                                               const void* beta, void* dxd, void* dx) {
    return run("cudnnConvolutionBackwardData", Pass::BackwardData, h, alpha, dxd, wd, cd, dyd, algo, kBackwardData,
               COUNT(kBackwardData), BWD_DATA_COUNT, ws, ws_bytes, beta, w, dy, dx);
}

API cudnnStatus_t cudnnConvolutionBackwardFilter(void* h, const void* alpha, void* xd, const void* x, void* dyd,
                                                 const void* dy, void* cd, int algo, void* ws, std::size_t ws_bytes,
                                                 const void* beta, void* dwd, void* dw) {
    return run("cudnnConvolutionBackwardFilter", Pass::BackwardFilter, h, alpha, xd, dwd, cd, dyd, algo,
               kBackwardFilter, COUNT(kBackwardFilter), BWD_FILTER_COUNT, ws, ws_bytes, beta, x, dy, dw);
}

API const char* cudnnGetErrorString(cudnnStatus_t status) {
    switch (status) {
        case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
        case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
        case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
        case CUDNN_STATUS_INVALID_VALUE: return "CUDNN_STATUS_INVALID_VALUE";
        case CUDNN_STATUS_BAD_PARAM_NULL_POINTER: return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
        case CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED: return "CUDNN_STATUS_BAD_PARAM_NOT_FINALIZED";
        case CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT: return "CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT";
        case CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH: return "CUDNN_STATUS_BAD_PARAM_SHAPE_MISMATCH";
        case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
        case CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE: return "CUDNN_STATUS_NOT_SUPPORTED_DATA_TYPE";
        case CUDNN_STATUS_NOT_SUPPORTED_LAYOUT: return "CUDNN_STATUS_NOT_SUPPORTED_LAYOUT";
        case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
        default: return "CUDNN_STATUS_UNKNOWN";
    }
}
