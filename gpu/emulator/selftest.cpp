// Checks of the emulator's execution model, run by build.sh after linking (in each of the two
// REVSNN_EMU_ORDERs, then in host-only mode): barriers with threads that exit early, block
// reductions, warp shuffles and ballots, 2-D blocks, the order blocks and threads run in, launch
// validation; prints the cost of a thread switch.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda_shim.h"
#include "emulator.h"

namespace k {
// Every thread writes its index, the block sums them with a shared-memory tree (as
// gpu/kernels/batch_norm.cu does); threads >= live exit before the first barrier.
extern "C" __global__ void tree_sum(unsigned long long* out, unsigned int live, int rounds) {
    __shared__ unsigned long long buf[1024];
    if (threadIdx.x >= live) return;
    unsigned long long total = 0;
    for (int r = 0; r < rounds; ++r) {
        __syncthreads();
        buf[threadIdx.x] = threadIdx.x + 1 + blockIdx.x;
        __syncthreads();
        for (unsigned int stride = 512; stride > 0; stride >>= 1) {
            if (threadIdx.x < stride && threadIdx.x + stride < live) buf[threadIdx.x] += buf[threadIdx.x + stride];
            __syncthreads();
        }
        total += buf[0];
    }
    if (threadIdx.x == 0) out[blockIdx.x] = total;
}

// Warp sums by __shfl_down_sync, lane 0 adds to the total with atomicAdd; plus xor-shuffle and
// ballot checks written to flags.
extern "C" __global__ void warp_sum(unsigned long long* total, int* bad, long long n) {
    unsigned long long acc = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        acc += (unsigned long long)i;
    for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
    if ((threadIdx.x & 31) == 0) atomicAdd(total, acc);
    const int lane = threadIdx.x & 31;
    if (__shfl_xor_sync(0xffffffffu, lane, 1) != (lane ^ 1)) atomicAdd(bad, 1);
    if (__shfl_sync(0xffffffffu, lane * 3, 5) != 15) atomicAdd(bad, 1);
    const unsigned int ballot = __ballot_sync(0xffffffffu, lane % 2 == 0);
    if (ballot != 0x55555555u) atomicAdd(bad, 1);
}

// A 2-D block: every thread writes its (x, y) to its own slot.
extern "C" __global__ void index_2d(int* out) {
    const int at = ((blockIdx.y * gridDim.x + blockIdx.x) * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    out[2 * at] = threadIdx.x;
    out[2 * at + 1] = threadIdx.y;
}

// Every thread writes the turn it ran in (the emulator runs one thread at a time).
extern "C" __global__ void run_order(int* turn, int* next) {
    const int at = (blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
    turn[at] = (*next)++;
}

// A missing barrier that index order hides: each thread writes its slot, then reads its left
// neighbour's without __syncthreads between (salt: a value new to each launch).
extern "C" __global__ void left_neighbour(int* out, int salt) {
    __shared__ int buf[64];
    buf[threadIdx.x] = salt + (int)threadIdx.x;
    out[threadIdx.x] = threadIdx.x == 0 ? salt - 1 : buf[threadIdx.x - 1];
}

// No barrier: the cost of one thread.
extern "C" __global__ void fill(float* y, long long n, float v) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = v;
}

// Reads one element past the end of x.
extern "C" __global__ void read_past(const float* x, float* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[0] = x[i];
}
}  // namespace k

EMU_REGISTER(k, tree_sum)
EMU_REGISTER(k, warp_sum)
EMU_REGISTER(k, index_2d)
EMU_REGISTER(k, run_order)
EMU_REGISTER(k, left_neighbour)
EMU_REGISTER(k, fill)
EMU_REGISTER(k, read_past)

static int failures = 0;
#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond)) {                                                    \
            std::fprintf(stderr, "selftest: FAILED %s (line %d)\n", #cond, __LINE__); \
            ++failures;                                                   \
        }                                                                 \
    } while (0)

template <typename... A> static emu::LaunchStatus launch(const char* name, dim3 g, dim3 b, A... args) {
    void* params[] = {&args...};
    return emu::run_grid(*emu::find_kernel(name), params, g.x, g.y, g.z, b.x, b.y, b.z, 0);
}

static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// Host-only mode (REVSNN_EMU_HOST_ONLY=1): a launch is validated but runs no thread.
static int host_only_check() {
    float* y = static_cast<float*>(emu::device_alloc(256 * 4));
    CHECK(y[0] == 0.0f && y[255] == 0.0f);  // not poisoned
    CHECK(launch("fill", dim3(1), dim3(256), y, 256LL, 2.0f) == emu::LaunchStatus::Ok);
    CHECK(y[0] == 0.0f && y[255] == 0.0f);
    CHECK(launch("fill", dim3(1), dim3(1025), y, 256LL, 2.0f) == emu::LaunchStatus::InvalidValue);
    emu::device_free(y);
    std::fprintf(stderr, "selftest, host-only: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}

int main() {
    if (emu::host_only()) return host_only_check();
    // Barriers with early exits.
    for (unsigned int live : {1u, 31u, 32u, 33u, 200u, 256u}) {
        auto* out = static_cast<unsigned long long*>(emu::device_alloc(3 * 8));
        CHECK(launch("tree_sum", dim3(3), dim3(256), out, live, 2) == emu::LaunchStatus::Ok);
        for (unsigned long long b = 0; b < 3; ++b) {
            unsigned long long want = 2 * (live * (live + 1) / 2 + b * live);
            if (out[b] != want) std::fprintf(stderr, "live %u block %llu: %llu != %llu\n", live, b, out[b], want);
            CHECK(out[b] == want);
        }
        emu::device_free(out);
    }
    // Warp shuffles and ballots.
    {
        auto* total = static_cast<unsigned long long*>(emu::device_alloc(8));
        int* bad = static_cast<int*>(emu::device_alloc(4));
        *total = 0;
        *bad = 0;
        const long long n = 100003;
        CHECK(launch("warp_sum", dim3(7), dim3(128), total, bad, n) == emu::LaunchStatus::Ok);
        CHECK(*total == (unsigned long long)(n * (n - 1) / 2));
        CHECK(*bad == 0);
        emu::device_free(total);
        emu::device_free(bad);
    }
    // 2-D blocks and grids.
    {
        const int threads = 2 * 3 * 8 * 4;
        int* out = static_cast<int*>(emu::device_alloc(threads * 2 * 4));
        CHECK(launch("index_2d", dim3(2, 3), dim3(8, 4), out) == emu::LaunchStatus::Ok);
        for (int at = 0; at < threads; ++at) {
            CHECK(out[2 * at] == at % 8);
            CHECK(out[2 * at + 1] == (at / 8) % 4);
        }
        emu::device_free(out);
    }
    // Blocks, then each block's threads, in index order, or all in reverse (REVSNN_EMU_ORDER).
    {
        const char* order = std::getenv("REVSNN_EMU_ORDER");
        const bool reverse = order != nullptr && std::strcmp(order, "reverse") == 0;
        const int threads = 2 * 3 * 8;
        int* turn = static_cast<int*>(emu::device_alloc(threads * 4));
        int* next = static_cast<int*>(emu::device_alloc(4));
        *next = 0;
        CHECK(launch("run_order", dim3(2, 3), dim3(8), turn, next) == emu::LaunchStatus::Ok);
        for (int at = 0; at < threads; ++at) CHECK(turn[at] == (reverse ? threads - 1 - at : at));
        emu::device_free(turn);
        emu::device_free(next);
        // The race shows in reverse order only: thread t reads slot t - 1 before thread t - 1 ran.
        int* out = static_cast<int*>(emu::device_alloc(64 * 4));
        const int salt = 1000;
        CHECK(launch("left_neighbour", dim3(1), dim3(64), out, salt) == emu::LaunchStatus::Ok);
        bool raced = false;
        for (int t = 0; t < 64; ++t) raced = raced || out[t] != salt + t - 1;
        CHECK(raced == reverse);
        emu::device_free(out);
    }
    // Launch validation, as the driver does it.
    {
        float* y = static_cast<float*>(emu::device_alloc(4));
        CHECK(launch("fill", dim3(1), dim3(1025), y, 1LL, 1.0f) == emu::LaunchStatus::InvalidValue);
        CHECK(launch("fill", dim3(0), dim3(32), y, 1LL, 1.0f) == emu::LaunchStatus::InvalidValue);
        CHECK(launch("fill", dim3(1, 65536), dim3(32), y, 1LL, 1.0f) == emu::LaunchStatus::InvalidValue);
        CHECK(launch("fill", dim3(1), dim3(32, 32, 2), y, 1LL, 1.0f) == emu::LaunchStatus::InvalidValue);
        emu::device_free(y);
    }
    // Guard pages: the byte after an f32 buffer is not accessible (checked via range queries).
    {
        char* p = static_cast<char*>(emu::device_alloc(12));
        CHECK(emu::device_range_ok(p, 12));
        CHECK(!emu::device_range_ok(p, 13));
        CHECK(!emu::device_range_ok(p - 1, 1));
        CHECK((unsigned char)p[0] == 0xFF);  // poisoned
        emu::device_free(p);
    }
    // Allocations start 4-byte aligned, their data ending at the guard page, or REVSNN_EMU_ALIGN-
    // aligned; either way the range past the data is not the allocation's.
    {
        const char* v = std::getenv("REVSNN_EMU_ALIGN");
        const std::uintptr_t alignment = v ? std::strtoull(v, nullptr, 10) : 4;
        const std::uintptr_t page = (std::uintptr_t)sysconf(_SC_PAGESIZE);
        for (std::size_t bytes : {4, 12, 20, 1000, 4100}) {
            char* p = static_cast<char*>(emu::device_alloc(bytes));
            CHECK((std::uintptr_t)p % alignment == 0);
            CHECK(emu::device_range_ok(p, bytes) && !emu::device_range_ok(p, bytes + 1));
            if (alignment == 4) CHECK((std::uintptr_t)(p + ((bytes + 3) & ~(std::size_t)3)) % page == 0);
            emu::device_free(p);
        }
    }
    // A kernel that reads past the end of an allocation aborts the process (in a child here). 64
    // floats fill a whole number of 256-byte units, so the guard page follows them whatever
    // REVSNN_EMU_ALIGN is.
    {
        const pid_t child = fork();
        if (child == 0) {
            std::freopen("/dev/null", "w", stderr);
            float* x = static_cast<float*>(emu::device_alloc(64 * 4));
            float* y = static_cast<float*>(emu::device_alloc(4));
            launch("read_past", dim3(1), dim3(96), (const float*)x, y, 64LL);
            _exit(0);
        }
        int status = 0;
        waitpid(child, &status, 0);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT);
    }
    // Speed.
    {
        const long long n = 1 << 20;
        float* y = static_cast<float*>(emu::device_alloc(n * 4));
        auto t = std::chrono::steady_clock::now();
        launch("fill", dim3(n / 256), dim3(256), y, n, 2.0f);
        const double fill_ns = seconds_since(t) * 1e9 / n;
        CHECK(y[n - 1] == 2.0f);
        emu::device_free(y);
        auto* out = static_cast<unsigned long long*>(emu::device_alloc(1024 * 8));
        t = std::chrono::steady_clock::now();
        launch("tree_sum", dim3(1024), dim3(256), out, 256u, 1);
        const double phases = 1024.0 * 256 * 11;
        const double barrier_ns = seconds_since(t) * 1e9 / phases;
        emu::device_free(out);
        std::fprintf(stderr, "selftest: %.1f ns per thread without barriers, %.1f ns per thread and barrier\n",
                     fill_ns, barrier_ns);
    }
    if (failures) {
        std::fprintf(stderr, "selftest: %d checks failed\n", failures);
        return 1;
    }
    std::fprintf(stderr, "selftest: ok\n");
    return 0;
}
