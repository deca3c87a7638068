// Checks of the fake NCCL (fake_nccl.cpp), run by build.sh after linking: three processes form a
// communicator on three emulated devices and check all-reduce (f32 and f64 bitwise equal to the
// rank-order sum computed here, which a reversed order would not give; int32, in place),
// all-gather, broadcast, argument errors, many rounds without files piling up and the directory
// removed at the end; then a peer that exits (the others get ncclRemoteError at once) and one that
// hangs (ncclSystemError after REVSNN_FAKE_NCCL_TIMEOUT_MS); init refusing two ranks on one device
// and ranks that disagree on the size.
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda.h>

#include "fake_nccl.h"

namespace {

const int kRanks = 3;
const std::size_t kCount = 1000;
int failures = 0;

void check(bool ok, int rank, const char* what) {
    if (ok) return;
    std::fprintf(stderr, "nccl selftest: rank %d: FAIL: %s (last error: %s)\n", rank, what, ncclGetLastError(nullptr));
    ++failures;
}

// Rank r's i-th f64 value: full 53-bit mantissas, mixed signs and magnitudes, so the order of the
// adds shows in the bits.
double value(int r, std::size_t i) {
    std::uint64_t h = (std::uint64_t)(r + 1) * 0x9E3779B97F4A7C15ull ^ (i * 0xBF58476D1CE4E5B9ull);
    h ^= h >> 31;
    h *= 0x94D049BB133111EBull;
    h ^= h >> 29;
    const double mantissa = (double)(std::int64_t)(h >> 11) - 4503599627370496.0;  // in [-2^52, 2^52)
    return std::ldexp(mantissa, (int)(h % 16) - 60);
}

// A device buffer of `bytes` (the fake NCCL takes only device memory).
void* device_buffer(std::size_t bytes) {
    CUdeviceptr p = 0;
    return cuMemAlloc(&p, bytes) == CUDA_SUCCESS ? reinterpret_cast<void*>(p) : nullptr;
}

// Binds device `ordinal` to this process, as the trainer's ranks do.
bool bind_device(int ordinal) {
    CUdevice dev;
    CUcontext ctx;
    return cuInit(0) == CUDA_SUCCESS && cuDeviceGet(&dev, ordinal) == CUDA_SUCCESS &&
           cuDevicePrimaryCtxRetain(&ctx, dev) == CUDA_SUCCESS && cuCtxSetCurrent(ctx) == CUDA_SUCCESS;
}

template <typename T> bool sum_is_rank_order(int rank, ncclComm_t comm, ncclDataType_t type, bool in_place) {
    std::vector<T> mine(kCount), want(kCount), reversed(kCount), got(kCount);
    for (std::size_t i = 0; i < kCount; ++i) {
        mine[i] = (T)value(rank, i);
        want[i] = (T)value(0, i);
        reversed[i] = (T)value(kRanks - 1, i);
        for (int r = 1; r < kRanks; ++r) want[i] = want[i] + (T)value(r, i);
        for (int r = kRanks - 2; r >= 0; --r) reversed[i] = reversed[i] + (T)value(r, i);
    }
    const std::size_t bytes = kCount * sizeof(T);
    T* send = static_cast<T*>(device_buffer(bytes));
    T* recv = in_place ? send : static_cast<T*>(device_buffer(bytes));
    std::memcpy(send, mine.data(), bytes);
    if (ncclAllReduce(send, recv, kCount, type, ncclSum, comm, nullptr) != ncclSuccess) return false;
    std::memcpy(got.data(), recv, bytes);
    // The data must tell the two orders apart, or the comparison proves nothing.
    return std::memcmp(got.data(), want.data(), bytes) == 0 && std::memcmp(want.data(), reversed.data(), bytes) != 0;
}

void check_reductions(int rank, ncclComm_t comm) {
    check(sum_is_rank_order<float>(rank, comm, ncclFloat32, false), rank, "f32 all-reduce is the rank-order sum");
    check(sum_is_rank_order<double>(rank, comm, ncclFloat64, false), rank, "f64 all-reduce is the rank-order sum");
    check(sum_is_rank_order<double>(rank, comm, ncclFloat64, true), rank, "in-place f64 all-reduce");
    std::int32_t* n = static_cast<std::int32_t*>(device_buffer(4));
    *n = rank + 1;
    check(ncclAllReduce(n, n, 1, ncclInt32, ncclSum, comm, nullptr) == ncclSuccess && *n == 6, rank, "int32 sum");
}

void check_gather_and_broadcast(int rank, ncclComm_t comm) {
    const std::size_t n = 5;
    float* all = static_cast<float*>(device_buffer(n * kRanks * 4));
    float* mine = static_cast<float*>(device_buffer(n * 4));
    for (std::size_t i = 0; i < n; ++i) mine[i] = all[rank * n + i] = (float)(10 * rank + i);
    bool ok = ncclAllGather(mine, all, n, ncclFloat32, comm, nullptr) == ncclSuccess &&
              ncclAllGather(all + rank * n, all, n, ncclFloat32, comm, nullptr) == ncclSuccess;  // in place
    for (std::size_t i = 0; i < n * kRanks; ++i) ok = ok && all[i] == (float)(10 * (i / n) + i % n);
    check(ok, rank, "all-gather, then in place");
    for (std::size_t i = 0; i < n; ++i) mine[i] = (float)(rank * 100 + i);
    ok = ncclBroadcast(mine, all, n, ncclFloat32, 1, comm, nullptr) == ncclSuccess &&
         ncclBroadcast(mine, mine, n, ncclFloat32, 2, comm, nullptr) == ncclSuccess;  // in place
    for (std::size_t i = 0; i < n; ++i) ok = ok && all[i] == (float)(100 + i) && mine[i] == (float)(200 + i);
    check(ok, rank, "broadcast from rank 1, then in place from rank 2");
}

void check_bad_arguments(int rank, ncclComm_t comm) {
    float* d = static_cast<float*>(device_buffer(16));
    float host[4];
    check(ncclAllReduce(d, d, 4, ncclFloat32, ncclMax, comm, nullptr) == ncclInvalidUsage, rank, "op max refused");
    check(ncclAllReduce(d, d, 4, (ncclDataType_t)99, ncclSum, comm, nullptr) == ncclInvalidArgument, rank,
          "datatype 99 refused");
    check(ncclAllReduce(host, d, 4, ncclFloat32, ncclSum, comm, nullptr) == ncclInvalidArgument, rank,
          "host memory refused");
    check(ncclAllReduce(d, d, 5, ncclFloat32, ncclSum, comm, nullptr) == ncclInvalidArgument, rank,
          "a count past the allocation refused");
    check(ncclBroadcast(d, d, 4, ncclFloat32, kRanks, comm, nullptr) == ncclInvalidArgument, rank, "root 3 refused");
    check(ncclGroupEnd() == ncclInvalidUsage, rank, "ncclGroupEnd without ncclGroupStart refused");
}

std::size_t files_in(const std::string& dir) {
    std::size_t n = 0;
    if (DIR* d = opendir(dir.c_str())) {
        while (const dirent* e = readdir(d)) n += e->d_name[0] != '.';
        closedir(d);
    }
    return n;
}

std::string directory_of(const ncclUniqueId& id) { return std::string(id.internal + std::strlen("revsnn-fake-nccl ")); }

void check_many_rounds(int rank, ncclComm_t comm, const ncclUniqueId& id) {
    const int rounds = 200;
    std::uint64_t* x = static_cast<std::uint64_t*>(device_buffer(8));
    const auto start = std::chrono::steady_clock::now();
    bool ok = ncclGroupStart() == ncclSuccess;
    for (int round = 0; round < rounds && ok; ++round) {
        *x = (std::uint64_t)round;
        ok = ncclAllReduce(x, x, 1, ncclUint64, ncclSum, comm, nullptr) == ncclSuccess && *x == 3ull * round;
    }
    check(ok && ncclGroupEnd() == ncclSuccess, rank, "200 rounds in a group");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (rank == 0) std::fprintf(stderr, "nccl selftest: %.0f us per 8-byte all-reduce of %d processes\n",
                                1e6 * seconds / rounds, kRanks);
    // Each rank keeps at most its last two rounds' files; the others are deleted.
    check(files_in(directory_of(id)) <= 2 * kRanks, rank, "old rounds' files are deleted");
}

// One rank of the main communicator.
void rank_main(int rank, const ncclUniqueId& id) {
    ncclComm_t comm = nullptr;
    check(ncclCommInitRank(&comm, kRanks, id, rank) == ncclSuccess, rank, "ncclCommInitRank");
    if (!comm) return;
    int count = 0, me = -1, device = -1;
    check(ncclCommCount(comm, &count) == ncclSuccess && count == kRanks, rank, "ncclCommCount");
    check(ncclCommUserRank(comm, &me) == ncclSuccess && me == rank, rank, "ncclCommUserRank");
    check(ncclCommCuDevice(comm, &device) == ncclSuccess && device == rank, rank, "ncclCommCuDevice");
    check_reductions(rank, comm);
    check_gather_and_broadcast(rank, comm);
    check_bad_arguments(rank, comm);
    check_many_rounds(rank, comm, id);
    ncclResult_t async = ncclInternalError;
    check(ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == ncclSuccess, rank, "no async error");
    check(ncclCommDestroy(comm) == ncclSuccess, rank, "ncclCommDestroy");
}

// One rank of a communicator whose last rank fails: it exits (`hang` false) or sleeps past the
// others' timeout. The others must get `expected` quickly, naming the rank.
void faulty_rank_main(int rank, const ncclUniqueId& id, bool hang, ncclResult_t expected) {
    ncclComm_t comm = nullptr;
    if (ncclCommInitRank(&comm, kRanks, id, rank) != ncclSuccess) return check(false, rank, "faulty: init");
    if (rank == kRanks - 1) {
        if (!hang) _exit(0);
        usleep(1500 * 1000);
        ncclCommAbort(comm);
        return;
    }
    if (!hang) usleep(100 * 1000);  // the peer has exited by now
    double* x = static_cast<double*>(device_buffer(8));
    const auto start = std::chrono::steady_clock::now();
    const ncclResult_t result = ncclAllReduce(x, x, 1, ncclFloat64, ncclSum, comm, nullptr);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    check(result == expected, rank, hang ? "a hung peer gives ncclSystemError" : "an exited peer: ncclRemoteError");
    check(seconds < 1.0, rank, "the failure comes within a second");
    check(std::strstr(ncclGetLastError(comm), "rank 2") != nullptr, rank, "the error names rank 2");
    ncclResult_t async = ncclSuccess;
    check(ncclCommGetAsyncError(comm, &async) == ncclSuccess && async == expected, rank, "the async error is kept");
    check(ncclAllReduce(x, x, 1, ncclFloat64, ncclSum, comm, nullptr) == expected, rank,
          "the communicator stays failed");
    ncclCommAbort(comm);
}

void exiting_peer_rank_main(int rank, const ncclUniqueId& id) { faulty_rank_main(rank, id, false, ncclRemoteError); }
void hung_peer_rank_main(int rank, const ncclUniqueId& id) { faulty_rank_main(rank, id, true, ncclSystemError); }

// One rank of a communicator where ranks 0 and 1 are both on device 0, which NCCL refuses.
void shared_device_rank_main(int rank, const ncclUniqueId& id) {
    if (rank == 1 && !bind_device(0)) return check(false, rank, "bind device 0");
    ncclComm_t comm = nullptr;
    check(ncclCommInitRank(&comm, kRanks, id, rank) == ncclInvalidUsage && !comm, rank,
          "two ranks on one device refused");
    check(std::strstr(ncclGetLastError(nullptr), "ranks 0 and 1 are both on CUDA device 0") != nullptr, rank,
          "the error names the ranks and the device");
}

// One rank of a communicator whose rank 2 believes there are 4 ranks: the others refuse it, and
// it gives up waiting for rank 3.
void wrong_size_rank_main(int rank, const ncclUniqueId& id) {
    ncclComm_t comm = nullptr;
    if (rank == 2) {
        setenv("REVSNN_FAKE_NCCL_TIMEOUT_MS", "200", 1);
        return check(ncclCommInitRank(&comm, kRanks + 1, id, rank) == ncclSystemError, rank, "rank 3 never comes");
    }
    check(ncclCommInitRank(&comm, kRanks, id, rank) == ncclInvalidUsage, rank, "a rank of another size refused");
    check(std::strstr(ncclGetLastError(nullptr), "joined with nranks 4") != nullptr, rank, "the error names the size");
}

// Removes a directory a failed rendezvous left behind.
void remove_directory(const std::string& dir) {
    if (DIR* d = opendir(dir.c_str())) {
        while (const dirent* e = readdir(d))
            if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0)
                unlink((dir + "/" + e->d_name).c_str());
        closedir(d);
    }
    rmdir(dir.c_str());
}

// Forks the ranks, each on its own device; returns the number that failed.
int run_ranks(const ncclUniqueId& id, void (*body)(int, const ncclUniqueId&)) {
    std::vector<pid_t> children;
    for (int rank = 0; rank < kRanks; ++rank) {
        const pid_t pid = fork();
        if (pid == 0) {
            if (!bind_device(rank)) check(false, rank, "bind the device");
            else body(rank, id);
            _exit(failures == 0 ? 0 : 1);
        }
        children.push_back(pid);
    }
    int failed = 0;
    for (pid_t pid : children) {
        int status = 0;
        waitpid(pid, &status, 0);
        failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    return failed;
}

ncclUniqueId new_id() {
    ncclUniqueId id;
    check(ncclGetUniqueId(&id) == ncclSuccess, -1, "ncclGetUniqueId");
    return id;
}

}  // namespace

int main() {
    const auto start = std::chrono::steady_clock::now();
    setenv("REVSNN_EMU_DEVICES", "3", 1);
    // A broken check then fails in seconds instead of hanging for the default ten minutes.
    setenv("REVSNN_FAKE_NCCL_TIMEOUT_MS", "3000", 1);
    int version = 0;
    check(ncclGetVersion(&version) == ncclSuccess && version == 22800, -1, "ncclGetVersion");
    const ncclUniqueId id = new_id();
    int failed = run_ranks(id, rank_main);
    check(access(directory_of(id).c_str(), F_OK) != 0, -1, "the last rank removed the directory");

    const ncclUniqueId exits = new_id();
    failed += run_ranks(exits, exiting_peer_rank_main);
    check(access(directory_of(exits).c_str(), F_OK) != 0, -1, "the survivors removed the directory");

    const ncclUniqueId shared = new_id();
    failed += run_ranks(shared, shared_device_rank_main);
    check(access(directory_of(shared).c_str(), F_OK) != 0, -1, "the refused ranks removed the directory");

    const ncclUniqueId wrong_size = new_id();
    failed += run_ranks(wrong_size, wrong_size_rank_main);
    remove_directory(directory_of(wrong_size));  // rank 3 never joined, so no rank could know it was last

    setenv("REVSNN_FAKE_NCCL_TIMEOUT_MS", "300", 1);
    const ncclUniqueId hangs = new_id();
    failed += run_ranks(hangs, hung_peer_rank_main);
    check(access(directory_of(hangs).c_str(), F_OK) != 0, -1, "the late rank removed the directory");

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (failed + failures > 0) {
        std::fprintf(stderr, "nccl selftest: %d rank(s) failed\n", failed + failures);
        return 1;
    }
    std::fprintf(stderr, "nccl selftest: ok, 5 communicators of %d processes, %.2f s\n", kRanks, seconds);
    return 0;
}
