// libnccl.so.2 for the CPU emulator: communicators and the collectives the data-parallel trainer
// uses (all-reduce sum, all-gather, broadcast), between ranks that are separate processes (or
// threads) on one machine. Written from NCCL's documented API, not from its code.
//
// Transport: a directory made by ncclGetUniqueId, whose path the unique id carries. Every call
// that communicates is a numbered round of its communicator (round 0 is ncclCommInitRank): each
// rank writes its contribution to `r<round>.<rank>` (a temporary file, then a rename), waits until
// every rank's file of the round exists and reads them all, then computes its result itself, so
// every rank gets the same bits, whatever the timing. An all-reduce adds the contributions in rank
// order, x_0 + x_1 + ... + x_{N-1}, each add rounded in the element type (real NCCL's rings and
// trees add in another order). A rank deletes its file of round k-1 once round k is complete (every
// peer has then read it); the last rank to leave (ncclCommDestroy / ncclCommAbort) removes the
// directory. A peer that exited, or left the communicator, while others wait for it makes their
// call fail with ncclRemoteError; a wait longer than REVSNN_FAKE_NCCL_TIMEOUT_MS (default 600000)
// fails with ncclSystemError. Device buffers are the emulator's host memory (libcuda.so.1).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "fake_lib.h"
#include "fake_nccl.h"

extern "C" {
// From the emulator's libcuda.so.1 (fake_cuda.cpp), which this library links.
int cuCtxGetDevice(int* device);
}

namespace {

const char kIdPrefix[] = "revsnn-fake-nccl ";
const unsigned kCommMagic = 0x4E43434Cu;
const std::uint32_t kFileMagic = 0x52534E43u;
const long long kDefaultTimeoutMs = 600000;

// What a round is; every rank of a round must call the same.
enum class Kind : std::int32_t { Init, AllReduce, AllGather, Broadcast };

// The start of every rank's file of a round: the call, to check that all ranks made the same one.
struct Header {
    std::uint32_t magic;
    Kind kind;
    std::int32_t datatype, op, root, unused;
    std::uint64_t count, round;
};

// The payload of a round-0 file: who the rank is.
struct Member {
    std::int32_t nranks, rank, device, pid;
    std::uint64_t start_time;  // of the process, to tell a reused pid from the rank's
};

// One rank's file of a round, as read.
struct Contribution {
    Header header;
    std::vector<char> payload;
};

}  // namespace

// The communicator ncclComm_t points to.
struct ncclComm {
    unsigned magic;
    std::string dir;
    int nranks, rank, device;
    std::vector<Member> members;  // by rank, from round 0
    std::uint64_t next_round;
    long long timeout_ms;
    ncclResult_t failure;  // ncclSuccess, or why the communicator is unusable (ncclCommGetAsyncError)
};

namespace {

thread_local std::string last_error;
thread_local int group_depth = 0;
std::atomic<unsigned> temp_counter{0};

// Records the message for ncclGetLastError, prints it when NCCL_DEBUG is set (as NCCL's WARN lines)
// and returns `result`.
ncclResult_t fail(ncclResult_t result, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
ncclResult_t fail(ncclResult_t result, const char* fmt, ...) {
    char text[1024];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    last_error = text;
    const char* debug = std::getenv("NCCL_DEBUG");
    if (debug && *debug) std::fprintf(stderr, "revsnn fake NCCL: WARN %s\n", text);
    return result;
}

ncclComm* live(ncclComm_t comm) { return comm && comm->magic == kCommMagic ? comm : nullptr; }

std::size_t element_size(int datatype) {
    switch (datatype) {
        case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
        case ncclFloat16: case ncclBfloat16: return 2;
        case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
        case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
        default: return 0;
    }
}

const char* kind_name(Kind kind) {
    switch (kind) {
        case Kind::Init: return "ncclCommInitRank";
        case Kind::AllReduce: return "ncclAllReduce";
        case Kind::AllGather: return "ncclAllGather";
        default: return "ncclBroadcast";
    }
}

// ---- the process table ---------------------------------------------------------------------------
// The start time of process `pid` (field 22 of /proc/PID/stat) and whether it is a zombie; false
// when the process does not exist.
bool read_process(int pid, std::uint64_t* start_time, bool* zombie) {
    char path[64], text[1024];
    std::snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE* f = std::fopen(path, "r");
    if (!f) return false;
    const std::size_t n = std::fread(text, 1, sizeof text - 1, f);
    std::fclose(f);
    text[n] = '\0';
    const char* after_name = std::strrchr(text, ')');  // the command name may hold spaces
    if (!after_name) return false;
    char state = '?';
    unsigned long long start = 0;
    std::sscanf(after_name + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                &state, &start);
    *start_time = start;
    *zombie = state == 'Z' || state == 'X';
    return true;
}

// Whether the process a member recorded at round 0 has exited (also when it is a zombie its
// parent has not reaped yet, or its pid now belongs to another process).
bool exited(const Member& member) {
    if (kill(member.pid, 0) != 0 && errno == ESRCH) return true;
    std::uint64_t start = 0;
    bool zombie = false;
    if (!read_process(member.pid, &start, &zombie)) return false;  // no /proc: trust kill()
    return zombie || start != member.start_time;
}

// ---- files ---------------------------------------------------------------------------------------
std::string round_path(const ncclComm& comm, std::uint64_t round, int rank) {
    return comm.dir + "/r" + std::to_string(round) + "." + std::to_string(rank);
}

std::string left_path(const std::string& dir, int rank) { return dir + "/left." + std::to_string(rank); }

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

bool write_all(int fd, const void* data, std::size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
        const ssize_t n = write(fd, p, bytes);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n;
        bytes -= (std::size_t)n;
    }
    return true;
}

// Writes header and payload to a temporary file of `dir` and returns its path ("" on failure).
std::string write_temp(const std::string& dir, const Header& header, const void* payload, std::size_t bytes) {
    const std::string temp = dir + "/.tmp." + std::to_string(getpid()) + "." + std::to_string(temp_counter++);
    const int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return "";
    const bool ok = write_all(fd, &header, sizeof header) && write_all(fd, payload, bytes);
    if (close(fd) != 0 || !ok) {
        unlink(temp.c_str());
        return "";
    }
    return temp;
}

// Reads a rank's file; false when it does not exist (yet) or cannot be read.
bool read_contribution(const std::string& path, Contribution* out) {
    const int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return false;
    struct stat info;
    bool ok = fstat(fd, &info) == 0 && (std::size_t)info.st_size >= sizeof(Header);
    if (ok) {
        const std::size_t bytes = (std::size_t)info.st_size - sizeof(Header);
        out->payload.resize(bytes);
        ok = read(fd, &out->header, sizeof(Header)) == (ssize_t)sizeof(Header) &&
             read(fd, out->payload.data(), bytes) == (ssize_t)bytes && out->header.magic == kFileMagic;
    }
    close(fd);
    return ok;
}

// Removes the directory and everything in it (the other ranks may be removing it too).
void remove_directory(const std::string& dir) {
    if (DIR* d = opendir(dir.c_str())) {
        while (const dirent* entry = readdir(d))
            if (std::strcmp(entry->d_name, ".") != 0 && std::strcmp(entry->d_name, "..") != 0)
                unlink((dir + "/" + entry->d_name).c_str());
        closedir(d);
    }
    rmdir(dir.c_str());
}

// ---- rounds --------------------------------------------------------------------------------------
long long timeout_ms() {
    const char* text = std::getenv("REVSNN_FAKE_NCCL_TIMEOUT_MS");
    if (!text || !*text) return kDefaultTimeoutMs;
    char* end = nullptr;
    const long long ms = std::strtoll(text, &end, 10);
    return *end == '\0' && ms > 0 ? ms : -1;
}

// Why rank `peer` (whose file of `round` is missing) will never write it, or nullptr while it may.
const char* peer_gone(const ncclComm& comm, int peer) {
    if (comm.members.empty()) return nullptr;  // round 0: peers are not known yet
    if (exists(left_path(comm.dir, peer))) return "left the communicator (ncclCommDestroy or ncclCommAbort)";
    if (exited(comm.members[peer])) return "exited";
    return nullptr;
}

// Waits until every rank's file of `round` exists and reads them all into `parts`, by rank.
ncclResult_t gather(ncclComm& comm, std::uint64_t round, Kind kind, std::vector<Contribution>* parts) {
    parts->assign(comm.nranks, Contribution{});
    std::vector<bool> have(comm.nranks, false);
    const auto start = std::chrono::steady_clock::now();
    auto nap = std::chrono::microseconds(10);
    for (int waiting = comm.nranks;;) {
        for (int r = 0; r < comm.nranks; ++r) {
            if (have[r]) continue;
            // Gone first, then the file: a peer writes its file before it leaves or exits.
            const char* gone = peer_gone(comm, r);
            if (read_contribution(round_path(comm, round, r), &(*parts)[r])) {
                have[r] = true;
                --waiting;
            } else if (gone) {
                return fail(ncclRemoteError, "rank %d: rank %d (pid %d) %s before round %llu (%s)", comm.rank, r,
                            comm.members[r].pid, gone, (unsigned long long)round, kind_name(kind));
            }
        }
        if (waiting == 0) return ncclSuccess;
        const long long waited =
            std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
        if (waited > comm.timeout_ms) {
            int late = 0;
            while (have[late]) ++late;
            return fail(ncclSystemError,
                        "rank %d: waited %lld ms in round %llu (%s) for rank %d, which neither wrote its part nor "
                        "exited (hung or far behind); REVSNN_FAKE_NCCL_TIMEOUT_MS sets the limit",
                        comm.rank, waited, (unsigned long long)round, kind_name(kind), late);
        }
        std::this_thread::sleep_for(nap);
        if (nap < std::chrono::milliseconds(1)) nap *= 2;
    }
}

// Publishes this rank's part of the next round, reads every rank's and checks they made the same
// call. A failure other than a bad argument leaves the communicator unusable.
ncclResult_t run_round(ncclComm& comm, Header call, const void* payload, std::size_t bytes,
                       std::vector<Contribution>* parts) {
    if (comm.failure != ncclSuccess)
        return fail(comm.failure, "rank %d: %s on a communicator that failed earlier; destroy it", comm.rank,
                    kind_name(call.kind));
    call.magic = kFileMagic;
    call.round = comm.next_round++;
    const std::string temp = write_temp(comm.dir, call, payload, bytes);
    if (temp.empty() || rename(temp.c_str(), round_path(comm, call.round, comm.rank).c_str()) != 0)
        return comm.failure = fail(ncclSystemError, "rank %d: cannot write to %s: %s", comm.rank, comm.dir.c_str(),
                                   std::strerror(errno));
    ncclResult_t result = gather(comm, call.round, call.kind, parts);
    if (result != ncclSuccess) return comm.failure = result;
    for (int r = 0; r < comm.nranks; ++r) {
        const Header& h = (*parts)[r].header;
        if (h.kind != call.kind || h.datatype != call.datatype || h.op != call.op || h.root != call.root ||
            h.count != call.count)
            return comm.failure = fail(ncclInvalidUsage,
                                       "rank %d: round %llu: rank %d called %s (count %llu, datatype %d, root %d), "
                                       "this rank %s (count %llu, datatype %d, root %d); every rank must make the "
                                       "same calls in the same order",
                                       comm.rank, (unsigned long long)call.round, r, kind_name(h.kind),
                                       (unsigned long long)h.count, h.datatype, h.root, kind_name(call.kind),
                                       (unsigned long long)call.count, call.datatype, call.root);
    }
    if (call.round > 0) unlink(round_path(comm, call.round - 1, comm.rank).c_str());
    return ncclSuccess;
}

// ---- the communicator ----------------------------------------------------------------------------
// The rendezvous directory an id from ncclGetUniqueId names, or "" if it is not one.
std::string directory_of(const ncclUniqueId& id) {
    const std::size_t prefix = sizeof kIdPrefix - 1;
    const void* nul = std::memchr(id.internal, '\0', sizeof id.internal);
    if (!nul || std::strncmp(id.internal, kIdPrefix, prefix) != 0) return "";
    return std::string(id.internal + prefix);
}

// The checks of round 0: every rank has the same size, no rank is claimed twice (the link of
// `init` fails then) and no two share a device.
ncclResult_t check_members(const ncclComm& comm) {
    for (int r = 0; r < comm.nranks; ++r) {
        const Member& m = comm.members[r];
        if (m.nranks != comm.nranks)
            return fail(ncclInvalidUsage, "rank %d: rank %d (pid %d) joined with nranks %d, this rank with %d",
                        comm.rank, r, m.pid, m.nranks, comm.nranks);
        for (int q = 0; q < r; ++q)
            if (comm.members[q].device == m.device)
                return fail(ncclInvalidUsage,
                            "rank %d: ranks %d and %d are both on CUDA device %d; NCCL needs one device per rank "
                            "(REVSNN_EMU_DEVICES sets the emulator's device count)",
                            comm.rank, q, r, m.device);
    }
    return ncclSuccess;
}

// Round 0: publishes who this rank is, once (a second claim of the rank fails), and reads who the
// others are.
ncclResult_t join(ncclComm& comm) {
    Member me{comm.nranks, comm.rank, comm.device, (std::int32_t)getpid(), 0};
    bool zombie = false;
    read_process(getpid(), &me.start_time, &zombie);
    Header call{kFileMagic, Kind::Init, 0, 0, 0, 0, 0, 0};
    const std::string temp = write_temp(comm.dir, call, &me, sizeof me);
    const std::string mine = round_path(comm, 0, comm.rank);
    if (temp.empty())
        return fail(ncclSystemError, "rank %d: cannot write to %s: %s", comm.rank, comm.dir.c_str(),
                    std::strerror(errno));
    const int linked = link(temp.c_str(), mine.c_str()), why = errno;
    unlink(temp.c_str());
    if (linked != 0)
        return fail(why == EEXIST ? ncclInvalidUsage : ncclSystemError, "rank %d: cannot join through %s: %s",
                    comm.rank, mine.c_str(),
                    why == EEXIST ? "another process already joined as this rank" : std::strerror(why));
    comm.next_round = 1;
    std::vector<Contribution> parts;
    const ncclResult_t result = gather(comm, 0, Kind::Init, &parts);
    if (result != ncclSuccess) return result;
    for (const Contribution& part : parts) {
        Member m{};
        if (part.header.kind != Kind::Init || part.payload.size() != sizeof m)
            return fail(ncclInvalidUsage, "rank %d: a peer's first call was not ncclCommInitRank", comm.rank);
        std::memcpy(&m, part.payload.data(), sizeof m);
        comm.members.push_back(m);
    }
    return check_members(comm);
}

// Leaves the communicator; the last rank to leave (ranks that exited count as gone) removes the
// directory.
void leave(ncclComm* comm) {
    const int fd = open(left_path(comm->dir, comm->rank).c_str(), O_WRONLY | O_CREAT, 0600);
    if (fd >= 0) close(fd);
    bool everyone_gone = true;
    for (int r = 0; r < comm->nranks && everyone_gone; ++r)
        everyone_gone = r == comm->rank || exists(left_path(comm->dir, r)) ||
                        (!comm->members.empty() && exited(comm->members[r]));
    if (everyone_gone) remove_directory(comm->dir);
    comm->magic = 0;
    delete comm;
}

// ---- collectives ---------------------------------------------------------------------------------
// Checks that [p, p + bytes) is device memory, as NCCL does.
ncclResult_t check_buffer(const ncclComm& comm, const char* call, const char* name, const void* p,
                          std::size_t bytes) {
    if (bytes == 0) return ncclSuccess;
    if (!p || !revsnn_emu_range_ok(p, bytes))
        return fail(ncclInvalidArgument, "rank %d: %s: %s [%p, +%zu bytes) is not inside one live device allocation",
                    comm.rank, call, name, p, bytes);
    return ncclSuccess;
}

// The checks every collective makes before it communicates: a live communicator, a known data
// type, device buffers.
ncclResult_t check_call(ncclComm_t comm, const char* call, int datatype) {
    if (!live(comm)) return fail(ncclInvalidArgument, "%s: not a live communicator", call);
    if (element_size(datatype) == 0)
        return fail(ncclInvalidArgument, "rank %d: %s: datatype %d is not an ncclDataType_t", comm->rank, call,
                    datatype);
    return ncclSuccess;
}

template <typename T> T add(T a, T b) {
    if constexpr (std::is_integral_v<T>) {
        using U = std::make_unsigned_t<T>;
        return (T)(U)((U)a + (U)b);  // wraps, as the GPU's integer adds do
    } else {
        return a + b;
    }
}

// out[i] = parts[0][i] + parts[1][i] + ... in rank order, each add rounded in T.
template <typename T> void sum_in_rank_order(const std::vector<Contribution>& parts, void* out, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i) {
        T acc, x;
        std::memcpy(&acc, parts[0].payload.data() + i * sizeof(T), sizeof(T));
        for (std::size_t r = 1; r < parts.size(); ++r) {
            std::memcpy(&x, parts[r].payload.data() + i * sizeof(T), sizeof(T));
            acc = add(acc, x);
        }
        std::memcpy(static_cast<char*>(out) + i * sizeof(T), &acc, sizeof(T));
    }
}

// Whether the fake can add this data type (the 16- and 8-bit floats and the 8-bit integers are
// valid NCCL types it does not model).
bool summable(int datatype) {
    switch (datatype) {
        case ncclInt32: case ncclUint32: case ncclInt64: case ncclUint64: case ncclFloat32: case ncclFloat64:
            return true;
        default: return false;
    }
}

void sum(int datatype, const std::vector<Contribution>& parts, void* out, std::size_t count) {
    switch (datatype) {
        case ncclInt32: sum_in_rank_order<std::int32_t>(parts, out, count); break;
        case ncclUint32: sum_in_rank_order<std::uint32_t>(parts, out, count); break;
        case ncclInt64: sum_in_rank_order<std::int64_t>(parts, out, count); break;
        case ncclUint64: sum_in_rank_order<std::uint64_t>(parts, out, count); break;
        case ncclFloat32: sum_in_rank_order<float>(parts, out, count); break;
        default: sum_in_rank_order<double>(parts, out, count); break;
    }
}

const char* const kErrorText[] = {
    "no error",
    "unhandled CUDA error",
    "system error (a file of the fake NCCL's transport, or a peer that timed out; see ncclGetLastError)",
    "internal error",
    "invalid argument (see ncclGetLastError)",
    "invalid usage (see ncclGetLastError)",
    "remote error: a peer exited or left the communicator (see ncclGetLastError)",
    "operation in progress",
};

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
    if (!version) return fail(ncclInvalidArgument, "ncclGetVersion: version is NULL");
    *version = 22800;  // 2.28.0, the API this fake follows
    return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
    if (!id) return fail(ncclInvalidArgument, "ncclGetUniqueId: uniqueId is NULL");
    const char* tmp = std::getenv("TMPDIR");
    std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/revsnn-nccl-XXXXXX";
    if (sizeof kIdPrefix + dir.size() > sizeof id->internal)
        return fail(ncclInvalidUsage, "ncclGetUniqueId: the path %s does not fit in a unique id; set a shorter TMPDIR",
                    dir.c_str());
    if (!mkdtemp(&dir[0]))
        return fail(ncclSystemError, "ncclGetUniqueId: cannot create %s: %s", dir.c_str(), std::strerror(errno));
    std::memset(id->internal, 0, sizeof id->internal);
    std::snprintf(id->internal, sizeof id->internal, "%s%s", kIdPrefix, dir.c_str());
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
    if (!comm) return fail(ncclInvalidArgument, "ncclCommInitRank: comm is NULL");
    *comm = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of nranks %d is not a rank", rank, nranks);
    const std::string dir = directory_of(id);
    if (dir.empty())
        return fail(ncclInvalidArgument, "ncclCommInitRank: the id is not from this fake's ncclGetUniqueId");
    if (!exists(dir))
        return fail(ncclInvalidArgument,
                    "ncclCommInitRank: %s, the directory of the id, does not exist: the id is from another machine, "
                    "or its communicator was destroyed", dir.c_str());
    const long long timeout = timeout_ms();
    if (timeout < 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: REVSNN_FAKE_NCCL_TIMEOUT_MS=%s is not a positive number of "
                    "milliseconds", std::getenv("REVSNN_FAKE_NCCL_TIMEOUT_MS"));
    int device = 0;
    if (cuCtxGetDevice(&device) != 0) device = 0;  // no current context: device 0, as cudaGetDevice says
    ncclComm* c = new ncclComm{kCommMagic, dir, nranks, rank, device, {}, 0, timeout, ncclSuccess};
    const ncclResult_t result = join(*c);
    if (result != ncclSuccess) {
        if (c->next_round > 0) {
            leave(c);  // it joined: the peers must see it leave
        } else {
            c->magic = 0;
            delete c;
        }
        return result;
    }
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    if (!live(comm)) return fail(ncclInvalidArgument, "ncclCommDestroy: not a live communicator");
    leave(comm);
    return ncclSuccess;
}

// Every call has completed when it returns, so aborting is destroying.
ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

// Nothing is ever in flight: finalising only checks the communicator.
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
    return live(comm) ? ncclSuccess : fail(ncclInvalidArgument, "ncclCommFinalize: not a live communicator");
}

ncclResult_t ncclCommCount(ncclComm_t comm, int* count) {
    if (!live(comm) || !count) return fail(ncclInvalidArgument, "ncclCommCount: bad communicator or NULL count");
    *count = comm->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommUserRank(ncclComm_t comm, int* rank) {
    if (!live(comm) || !rank) return fail(ncclInvalidArgument, "ncclCommUserRank: bad communicator or NULL rank");
    *rank = comm->rank;
    return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(ncclComm_t comm, int* device) {
    if (!live(comm) || !device) return fail(ncclInvalidArgument, "ncclCommCuDevice: bad communicator or NULL device");
    *device = comm->device;
    return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
    if (!live(comm) || !error)
        return fail(ncclInvalidArgument, "ncclCommGetAsyncError: bad communicator or NULL asyncError");
    *error = comm->failure;
    return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
    return (int)result >= 0 && (int)result < ncclNumResults ? kErrorText[result] : "unknown result code";
}

const char* ncclGetLastError(ncclComm_t) { return last_error.c_str(); }

ncclResult_t ncclGroupStart() {
    ++group_depth;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
    if (group_depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: no ncclGroupStart to end");
    --group_depth;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
    const char* call = "ncclAllReduce";
    ncclResult_t result = check_call(comm, call, datatype);
    if (result != ncclSuccess) return result;
    if ((int)op < 0 || (int)op >= ncclNumOps)
        return fail(ncclInvalidArgument, "rank %d: %s: op %d is not an ncclRedOp_t", comm->rank, call, (int)op);
    if (op != ncclSum || !summable(datatype))
        return fail(ncclInvalidUsage, "rank %d: %s: the fake NCCL adds only (op ncclSum) 32- and 64-bit integers and "
                    "floats; got op %d, datatype %d", comm->rank, call, op, datatype);
    const std::size_t bytes = count * element_size(datatype);
    if ((result = check_buffer(*comm, call, "sendbuff", sendbuff, bytes)) != ncclSuccess ||
        (result = check_buffer(*comm, call, "recvbuff", recvbuff, bytes)) != ncclSuccess)
        return result;
    std::vector<Contribution> parts;
    const Header header{0, Kind::AllReduce, datatype, op, 0, 0, count, 0};
    if ((result = run_round(*comm, header, sendbuff, bytes, &parts)) != ncclSuccess) return result;
    sum(datatype, parts, recvbuff, count);
    return ncclSuccess;
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, std::size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t) {
    const char* call = "ncclAllGather";
    ncclResult_t result = check_call(comm, call, datatype);
    if (result != ncclSuccess) return result;
    const std::size_t bytes = sendcount * element_size(datatype);
    if ((result = check_buffer(*comm, call, "sendbuff", sendbuff, bytes)) != ncclSuccess ||
        (result = check_buffer(*comm, call, "recvbuff", recvbuff, bytes * comm->nranks)) != ncclSuccess)
        return result;
    std::vector<Contribution> parts;
    const Header header{0, Kind::AllGather, datatype, 0, 0, 0, sendcount, 0};
    if ((result = run_round(*comm, header, sendbuff, bytes, &parts)) != ncclSuccess) return result;
    for (int r = 0; r < comm->nranks; ++r)
        if (bytes > 0) std::memcpy(static_cast<char*>(recvbuff) + r * bytes, parts[r].payload.data(), bytes);
    return ncclSuccess;
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, std::size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t) {
    const char* call = "ncclBroadcast";
    ncclResult_t result = check_call(comm, call, datatype);
    if (result != ncclSuccess) return result;
    if (root < 0 || root >= comm->nranks)
        return fail(ncclInvalidArgument, "rank %d: %s: root %d is not a rank of %d", comm->rank, call, root,
                    comm->nranks);
    const std::size_t bytes = count * element_size(datatype);
    const bool is_root = comm->rank == root;
    if ((is_root && (result = check_buffer(*comm, call, "sendbuff", sendbuff, bytes)) != ncclSuccess) ||
        (result = check_buffer(*comm, call, "recvbuff", recvbuff, bytes)) != ncclSuccess)
        return result;
    std::vector<Contribution> parts;
    const Header header{0, Kind::Broadcast, datatype, 0, root, 0, count, 0};
    if ((result = run_round(*comm, header, sendbuff, is_root ? bytes : 0, &parts)) != ncclSuccess) return result;
    if (parts[root].payload.size() != bytes)
        return comm->failure = fail(ncclInternalError, "rank %d: %s: the root's part has %zu bytes, not %zu",
                                    comm->rank, call, parts[root].payload.size(), bytes);
    if (bytes > 0) std::memcpy(recvbuff, parts[root].payload.data(), bytes);
    return ncclSuccess;
}

}  // extern "C"
