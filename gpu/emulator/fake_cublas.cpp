// libcublas.so.13 for the CPU emulator: handles and the GEMMs cudarc 0.19 calls, written from the
// cuBLAS documentation. Column-major; op(A) is m x k, op(B) k x n, C m x n;
// C = alpha op(A) op(B) + beta C, and with beta == 0 C is not read (a NaN there does not
// propagate). Deterministic: every C element sums its k products in increasing k, in the element
// type, one rounding per multiply and per add (no FMA). With CUBLAS_TF32_TENSOR_OP_MATH, f32
// inputs are rounded to TF32 (10-bit mantissa) first, as the tensor cores do. The mixed-type
// GEMMs (cublasGemmEx, cublasGemmStridedBatchedEx) take A and B in bf16 or fp16, widened to f32
// exactly, and C in f32 or in A's format with CUBLAS_COMPUTE_32F; the product of two widened 16-bit
// values is exact in f32, so only the sums round, and a 16-bit C is each f32 result rounded once to
// nearest even (read back widened when beta is not zero). The element order of
// the accumulation differs from real cuBLAS (which also varies by algorithm), so results agree
// with a GPU to rounding, not bitwise.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fake_lib.h"

namespace {

typedef int cublasStatus_t;
enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
    CUBLAS_STATUS_LICENSE_ERROR = 16,
};
enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum { CUBLAS_POINTER_MODE_HOST = 0, CUBLAS_POINTER_MODE_DEVICE = 1 };
enum { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TENSOR_OP_MATH = 1, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
const int kMathModeFlags = 16;  // CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
enum { CUDA_R_32F = 0, CUDA_R_16F = 2, CUDA_R_16BF = 14 };  // cudaDataType
enum { CUBLAS_COMPUTE_32F = 68 };                            // cublasComputeType_t

struct Handle {
    void* stream;
    int math_mode;
    int pointer_mode;
    unsigned magic;
};
const unsigned kMagic = 0xB1A5B1A5u;

Handle* handle_of(void* h) {
    Handle* handle = static_cast<Handle*>(h);
    return handle && handle->magic == kMagic ? handle : nullptr;
}

// The bytes a column-major rows x cols matrix with leading dimension ld spans.
std::size_t span(long long rows, long long cols, long long ld, std::size_t elem) {
    if (rows <= 0 || cols <= 0) return 0;
    return (std::size_t)((cols - 1) * ld + rows) * elem;
}

template <typename E, typename In = E, typename Out = E>
cublasStatus_t gemm(const char* name, void* h, int transa, int transb, long long m, long long n, long long k,
                    const E* alpha_p, const In* A, long long lda, long long strideA, const In* B, long long ldb,
                    long long strideB, const E* beta_p, Out* C, long long ldc, long long strideC, long long batch) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (transa < 0 || transa > 2 || transb < 0 || transb > 2) return CUBLAS_STATUS_INVALID_VALUE;
    const bool ta = transa != CUBLAS_OP_N, tb = transb != CUBLAS_OP_N;
    if (m < 0 || n < 0 || k < 0 || batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    const long long a_rows = ta ? k : m, a_cols = ta ? m : k;
    const long long b_rows = tb ? n : k, b_cols = tb ? k : n;
    if (lda < (a_rows > 1 ? a_rows : 1) || ldb < (b_rows > 1 ? b_rows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha_p || !beta_p) return CUBLAS_STATUS_INVALID_VALUE;
    // Host and device pointer modes read the same: device memory is host memory here.
    const E alpha = *alpha_p, beta = *beta_p;
    if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
    const bool read_ab = alpha != (E)0 && k > 0;
    if (!read_ab && beta == (E)1) return CUBLAS_STATUS_SUCCESS;
    const bool tf32 = std::is_same_v<In, float> && (handle->math_mode & ~kMathModeFlags) == CUBLAS_TF32_TENSOR_OP_MATH;

    // Host-only mode (REVSNN_EMU_HOST_ONLY=1): nothing computed, nor checked per batch entry.
    if (revsnn_emu_host_only()) return CUBLAS_STATUS_SUCCESS;
    // Every matrix of every batch entry must lie inside one live device allocation.
    for (long long b = 0; b < batch; ++b) {
        const struct {
            const char* what;
            const void* p;
            std::size_t bytes;
            bool used;
        } operands[] = {
            {"A", A + b * strideA, span(a_rows, a_cols, lda, sizeof(In)), read_ab},
            {"B", B + b * strideB, span(b_rows, b_cols, ldb, sizeof(In)), read_ab},
            {"C", C + b * strideC, span(m, n, ldc, sizeof(Out)), true},
        };
        for (const auto& o : operands) {
            if (o.used && o.bytes > 0 && !revsnn_emu_range_ok(o.p, o.bytes)) {
                std::fprintf(stderr,
                             "revsnn CUDA emulator: %s: matrix %s of batch entry %lld ([%p, +%zu bytes]: m=%lld n=%lld "
                             "k=%lld lda=%lld ldb=%lld ldc=%lld, op(A)=%c op(B)=%c) is not inside one live device "
                             "allocation\n",
                             name, o.what, b, o.p, o.bytes, m, n, k, lda, ldb, ldc, ta ? 'T' : 'N', tb ? 'T' : 'N');
                return CUBLAS_STATUS_EXECUTION_FAILED;
            }
        }
    }

    revsnn_emu_set_activity(name);
    std::vector<E> acc((std::size_t)m);
    for (long long b = 0; b < batch; ++b) {
        const In* a = A + b * strideA;
        const In* bm = B + b * strideB;
        Out* c = C + b * strideC;
        for (long long j = 0; j < n; ++j) {
            Out* cj = c + j * ldc;
            if (read_ab) {
                for (long long i = 0; i < m; ++i) acc[i] = (E)0;
                for (long long l = 0; l < k; ++l) {
                    const E blj = load_input<E>(tb ? bm + j + l * ldb : bm + l + j * ldb, tf32);
                    if (!ta) {
                        const In* al = a + l * lda;  // column l of A: op(A)[i, l] = A[i + l lda]
                        for (long long i = 0; i < m; ++i) {
                            const E prod = load_input<E>(al + i, tf32) * blj;
                            acc[i] = acc[i] + prod;
                        }
                    } else {
                        for (long long i = 0; i < m; ++i) {  // op(A)[i, l] = A[l + i lda]
                            const E prod = load_input<E>(a + l + i * lda, tf32) * blj;
                            acc[i] = acc[i] + prod;
                        }
                    }
                }
            }
            for (long long i = 0; i < m; ++i) {
                const E ab = read_ab ? alpha * acc[i] : (E)0;
                cj[i] = narrow<Out, E>(beta == (E)0 ? ab : ab + beta * load_input<E>(cj + i, false));
            }
        }
    }
    revsnn_emu_set_activity(nullptr);
    return CUBLAS_STATUS_SUCCESS;
}

}  // namespace

API cublasStatus_t cublasCreate_v2(void** handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new Handle{nullptr, CUBLAS_DEFAULT_MATH, CUBLAS_POINTER_MODE_HOST, kMagic};
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasDestroy_v2(void* h) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->magic = 0;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasGetVersion_v2(void* h, int* version) {
    if (!handle_of(h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!version) return CUBLAS_STATUS_INVALID_VALUE;
    *version = 130000;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetStream_v2(void* h, void* stream) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasGetStream_v2(void* h, void** stream) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!stream) return CUBLAS_STATUS_INVALID_VALUE;
    *stream = handle->stream;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetMathMode(void* h, int mode) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    const int base = mode & ~kMathModeFlags;
    if (base < CUBLAS_DEFAULT_MATH || base > CUBLAS_TF32_TENSOR_OP_MATH) return CUBLAS_STATUS_INVALID_VALUE;
    handle->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasGetMathMode(void* h, int* mode) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->math_mode;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetPointerMode_v2(void* h, int mode) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (mode != CUBLAS_POINTER_MODE_HOST && mode != CUBLAS_POINTER_MODE_DEVICE) return CUBLAS_STATUS_INVALID_VALUE;
    handle->pointer_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasGetPointerMode_v2(void* h, int* mode) {
    Handle* handle = handle_of(h);
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!mode) return CUBLAS_STATUS_INVALID_VALUE;
    *mode = handle->pointer_mode;
    return CUBLAS_STATUS_SUCCESS;
}

API cublasStatus_t cublasSetWorkspace_v2(void* h, void*, std::size_t) {
    return handle_of(h) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

API cublasStatus_t cublasSgemm_v2(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A,
                                  int lda, const float* B, int ldb, const float* beta, float* C, int ldc) {
    return gemm<float>("cublasSgemm_v2", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

API cublasStatus_t cublasDgemm_v2(void* h, int ta, int tb, int m, int n, int k, const double* alpha, const double* A,
                                  int lda, const double* B, int ldb, const double* beta, double* C, int ldc) {
    return gemm<double>("cublasDgemm_v2", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

API cublasStatus_t cublasSgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const float* alpha,
                                             const float* A, int lda, long long sa, const float* B, int ldb,
                                             long long sb, const float* beta, float* C, int ldc, long long sc,
                                             int batch) {
    return gemm<float>("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                       sc, batch);
}

API cublasStatus_t cublasDgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const double* alpha,
                                             const double* A, int lda, long long sa, const double* B, int ldb,
                                             long long sb, const double* beta, double* C, int ldc, long long sc,
                                             int batch) {
    return gemm<double>("cublasDgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C,
                        ldc, sc, batch);
}

API cublasStatus_t cublasSgemm_v2_64(void* h, int ta, int tb, long long m, long long n, long long k,
                                     const float* alpha, const float* A, long long lda, const float* B, long long ldb,
                                     const float* beta, float* C, long long ldc) {
    return gemm<float>("cublasSgemm_v2_64", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

API cublasStatus_t cublasDgemm_v2_64(void* h, int ta, int tb, long long m, long long n, long long k,
                                     const double* alpha, const double* A, long long lda, const double* B,
                                     long long ldb, const double* beta, double* C, long long ldc) {
    return gemm<double>("cublasDgemm_v2_64", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

// The mixed-type GEMMs: A and B in bf16 or fp16 (both the same), C in f32 or in their format,
// CUBLAS_COMPUTE_32F; alpha and beta are f32. Any other combination is CUBLAS_STATUS_NOT_SUPPORTED
// (the algorithm is ignored).
template <typename Half>
static cublasStatus_t gemm_half(const char* name, void* h, int ta, int tb, long long m, long long n, long long k,
                                const float* alpha, const void* A, long long lda, long long sa, const void* B,
                                long long ldb, long long sb, const float* beta, void* C, bool half_c, long long ldc,
                                long long sc, long long batch) {
    const Half* a = static_cast<const Half*>(A);
    const Half* b = static_cast<const Half*>(B);
    if (half_c)
        return gemm<float, Half, Half>(name, h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta,
                                       static_cast<Half*>(C), ldc, sc, batch);
    return gemm<float, Half>(name, h, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, static_cast<float*>(C),
                             ldc, sc, batch);
}

static cublasStatus_t gemm_ex(const char* name, void* h, int ta, int tb, long long m, long long n, long long k,
                              const void* alpha, const void* A, int a_type, long long lda, long long sa,
                              const void* B, int b_type, long long ldb, long long sb, const void* beta, void* C,
                              int c_type, long long ldc, long long sc, long long batch, int compute_type) {
    if (a_type != b_type || (c_type != CUDA_R_32F && c_type != a_type) || compute_type != CUBLAS_COMPUTE_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const float* al = static_cast<const float*>(alpha);
    const float* be = static_cast<const float*>(beta);
    const bool half_c = c_type == a_type;
    switch (a_type) {
        case CUDA_R_16BF:
            return gemm_half<Bf16>(name, h, ta, tb, m, n, k, al, A, lda, sa, B, ldb, sb, be, C, half_c, ldc, sc, batch);
        case CUDA_R_16F:
            return gemm_half<Fp16>(name, h, ta, tb, m, n, k, al, A, lda, sa, B, ldb, sb, be, C, half_c, ldc, sc, batch);
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
}

API cublasStatus_t cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                                int a_type, int lda, const void* B, int b_type, int ldb, const void* beta, void* C,
                                int c_type, int ldc, int compute_type, int /*algo*/) {
    return gemm_ex("cublasGemmEx", h, ta, tb, m, n, k, alpha, A, a_type, lda, 0, B, b_type, ldb, 0, beta, C, c_type,
                   ldc, 0, 1, compute_type);
}

API cublasStatus_t cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha,
                                              const void* A, int a_type, int lda, long long sa, const void* B,
                                              int b_type, int ldb, long long sb, const void* beta, void* C, int c_type,
                                              int ldc, long long sc, int batch, int compute_type, int /*algo*/) {
    return gemm_ex("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, alpha, A, a_type, lda, sa, B, b_type, ldb, sb,
                   beta, C, c_type, ldc, sc, batch, compute_type);
}

API const char* cublasGetStatusName(cublasStatus_t status) {
    switch (status) {
        case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
        case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
        case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
        case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
        case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
        case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
        case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
        default: return "CUBLAS_STATUS_UNKNOWN";
    }
}

API const char* cublasGetStatusString(cublasStatus_t status) { return cublasGetStatusName(status); }
