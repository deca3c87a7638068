// libcuda.so.1 for the CPU emulator: the subset of the CUDA driver API that cudarc 0.19 calls,
// with cuda.h's own prototypes (so every signature and versioned name, e.g. cuMemAlloc_v2, is the
// real one). REVSNN_EMU_DEVICES devices (default 1), each "revsnn CPU emulator" with compute
// capability 9.0 (REVSNN_EMU_CC=MAJOR.MINOR poses as another, e.g. 7.5 for a card without bf16),
// all sharing the host's memory. Everything runs
// synchronously at call time; device pointers are host addresses from emu::device_alloc; kernels
// are the gpu/kernels/*.cu compiled into this library by build.sh.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>

#pragma GCC visibility push(default)
#include <cuda.h>
#pragma GCC visibility pop

#include "emulator.h"

namespace {

const char* const kDeviceName = "revsnn CPU emulator";

const int kMaxDevices = 64;

struct Context {
    int device;
};
// The primary context of each device; only the first `device_count` are in use.
Context primary_contexts[kMaxDevices];
thread_local CUcontext current_context = nullptr;
bool initialised = false;
int device_count = 1;

struct Stream {
    unsigned int flags;
};
struct Event {
    std::chrono::steady_clock::time_point at;
    bool recorded;
};
struct Module {
    std::string image;  // the PTX text or CUBIN bytes, searched for kernel names
};

// The default memory pool (allocations through cuMemAllocAsync), bookkept as the driver's: it
// reserves a chunk from the device for an allocation that no free range of its chunks holds, and
// serves later ones from the smallest free range that does; a free merges the range with its free
// neighbours in the chunk. Chunks whose every block is free count against the device's memory
// (emu::device_set_pool_cached, with the free ranges of partly used ones) until a
// synchronisation releases them down to the release threshold (default 0), or cuMemPoolTrimTo
// does. So ranges left free in many chunks can leave no room for one large allocation, the
// fragmentation a caller meets near a card's limit. Only the bookkeeping is the pool's: the
// emulator's memory is allocated and unmapped per buffer, so reads of freed memory still fault.
struct Pool {
    struct Chunk {
        unsigned long long bytes = 0, used = 0;
        std::map<unsigned long long, unsigned long long> free;  // offset -> length, merged
    };
    struct Block {
        std::size_t chunk;
        unsigned long long offset, bytes;
    };
    // A free range as the best-fit index orders it: (length, chunk, offset).
    using Range = std::tuple<unsigned long long, std::size_t, unsigned long long>;

    std::mutex lock;
    unsigned long long used = 0, used_high = 0, reserved = 0, reserved_high = 0, release_threshold = 0;
    std::map<std::size_t, Chunk> chunks;  // by creation number
    std::size_t next_chunk = 0;
    std::set<Range> by_length;      // every free range of every chunk
    std::map<void*, Block> blocks;  // the live blocks, by the emulator's pointer

    // Tells the emulator how many bytes the pool holds beside its live blocks. Needs `lock`.
    void publish() const { emu::device_set_pool_cached(reserved - used); }

    // Records a free range of chunk `id`, or forgets it. Need `lock`.
    void add_free(std::size_t id, unsigned long long offset, unsigned long long length) {
        chunks.at(id).free[offset] = length;
        by_length.insert(Range{length, id, offset});
    }
    void remove_free(std::size_t id, unsigned long long offset) {
        auto& free = chunks.at(id).free;
        const auto range = free.find(offset);
        by_length.erase(Range{range->second, id, offset});
        free.erase(range);
    }

    // Places a used block of `bytes` in the smallest free range that holds it, or in a new
    // chunk. Needs `lock`.
    Block place(unsigned long long bytes) {
        used += bytes;
        const auto best = by_length.lower_bound(Range{bytes, 0, 0});
        if (best == by_length.end()) {
            const std::size_t id = next_chunk++;
            chunks[id] = Chunk{bytes, bytes, {}};
            reserved += bytes;
            return Block{id, 0, bytes};
        }
        const auto [length, id, offset] = *best;
        remove_free(id, offset);
        if (length > bytes) add_free(id, offset + bytes, length - bytes);
        chunks.at(id).used += bytes;
        return Block{id, offset, bytes};
    }

    // Returns `block`'s range to its chunk, merged with the free ranges beside it. Needs `lock`.
    void unplace(const Block& block) {
        used -= block.bytes;
        Chunk& chunk = chunks.at(block.chunk);
        chunk.used -= block.bytes;
        unsigned long long offset = block.offset, length = block.bytes;
        const auto next = chunk.free.lower_bound(offset);
        const bool next_free = next != chunk.free.end() && next->first == offset + length;
        const bool previous_free = next != chunk.free.begin() &&
                                   std::prev(next)->first + std::prev(next)->second == offset;
        if (next_free) {
            length += next->second;
            remove_free(block.chunk, offset + block.bytes);
        }
        if (previous_free) {
            const auto previous = std::prev(chunk.free.lower_bound(offset));
            offset = previous->first;
            length += previous->second;
            remove_free(block.chunk, offset);
        }
        add_free(block.chunk, offset, length);
    }

    // Releases chunks with no live block, largest first, while the pool reserves more than
    // `keep_bytes`, never going below them (cuMemPoolTrimTo's guarantee). Needs `lock`.
    void release_to(unsigned long long keep_bytes) {
        while (reserved > keep_bytes) {
            auto largest = chunks.end();
            for (auto it = chunks.begin(); it != chunks.end(); ++it)
                if (it->second.used == 0 && it->second.bytes <= reserved - keep_bytes &&
                    (largest == chunks.end() || it->second.bytes > largest->second.bytes))
                    largest = it;
            if (largest == chunks.end()) break;
            forget(largest);
        }
        publish();
    }

    // Gives a chunk with no live block back to the device. Needs `lock`.
    void forget(std::map<std::size_t, Chunk>::iterator chunk) {
        reserved -= chunk->second.bytes;
        remove_free(chunk->first, 0);  // its one range, the whole chunk
        chunks.erase(chunk);
    }

    // What a synchronisation does: releases what passes the release threshold.
    void synchronised() {
        std::lock_guard<std::mutex> guard(lock);
        release_to(release_threshold);
    }

    // A block of `bytes` placed in the pool and backed by the emulator's own memory, or nullptr
    // (the pool as it was) when the device has no room for it.
    void* allocate(unsigned long long bytes) {
        std::lock_guard<std::mutex> guard(lock);
        const unsigned long long reserved_before = reserved;
        const auto block = place(bytes);
        // reserved - used leaves a new chunk out: device_alloc counts its bytes as live
        publish();
        void* p = emu::device_alloc(bytes);
        if (!p) {
            unplace(block);
            if (reserved != reserved_before) forget(chunks.find(block.chunk));
            publish();
            return nullptr;
        }
        blocks[p] = block;
        if (used > used_high) used_high = used;
        if (reserved > reserved_high) reserved_high = reserved;
        return p;
    }

    // Frees the pool's block at `p` (its memory unmapped, its range back to its chunk); false if
    // `p` starts no block of the pool.
    bool free(void* p) {
        std::lock_guard<std::mutex> guard(lock);
        const auto block = blocks.find(p);
        if (block == blocks.end() || emu::device_free(p) == 0) return false;
        unplace(block->second);
        blocks.erase(block);
        publish();
        return true;
    }
} default_pool;
int default_pool_handle;

unsigned long long total_memory() { return emu::device_total_bytes(); }

#define CHECK_INIT() \
    do {                                                  \
        if (!initialised) return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)

// Calls that work in a context fail without a current one, as the driver's do.
#define CHECK_CTX()                                            \
    do {                                                       \
        if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;   \
        if (!current_context) return CUDA_ERROR_INVALID_CONTEXT; \
    } while (0)

bool valid_device(CUdevice d) { return d >= 0 && d < device_count; }

// The compute capability the devices report: REVSNN_EMU_CC=MAJOR.MINOR (a digit each), 9.0 when
// unset; any other value stops the process with a message.
std::pair<int, int> compute_capability() {
    static const std::pair<int, int> cc = [] {
        const char* text = std::getenv("REVSNN_EMU_CC");
        if (!text || !*text) return std::make_pair(9, 0);
        const bool valid = std::strlen(text) == 3 && text[1] == '.' && text[0] >= '1' && text[0] <= '9' &&
                           text[2] >= '0' && text[2] <= '9';
        if (!valid) {
            std::fprintf(stderr, "revsnn CUDA emulator: REVSNN_EMU_CC=%s: expected MAJOR.MINOR, e.g. 7.5 or 9.0\n",
                         text);
            std::abort();
        }
        return std::make_pair(text[0] - '0', text[2] - '0');
    }();
    return cc;
}

// The device count REVSNN_EMU_DEVICES asks for (1 when unset), or 0 after printing why the value
// is not one.
int requested_device_count() {
    const char* text = std::getenv("REVSNN_EMU_DEVICES");
    if (!text || !*text) return 1;
    char* end = nullptr;
    const long n = std::strtol(text, &end, 10);
    if (*end != '\0' || n < 1 || n > kMaxDevices) {
        std::fprintf(stderr, "revsnn CUDA emulator: REVSNN_EMU_DEVICES=%s is not a device count: set a whole number "
                     "from 1 to %d, or unset it for one device\n", text, kMaxDevices);
        return 0;
    }
    return (int)n;
}

// Whether `ctx` is the primary context of a device in use.
bool valid_context(CUcontext ctx) {
    for (int d = 0; d < device_count; ++d)
        if (ctx == reinterpret_cast<CUcontext>(&primary_contexts[d])) return true;
    return false;
}

// The size of a module image cuModuleLoadData receives without a length: an ELF (CUBIN) says
// where its headers end; PTX is a NUL-terminated text; a fatbin header holds its size.
std::size_t image_size(const void* image) {
    const unsigned char* p = static_cast<const unsigned char*>(image);
    if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F' && p[4] == 2) {
        unsigned long long phoff, shoff;
        unsigned short phentsize, phnum, shentsize, shnum;
        std::memcpy(&phoff, p + 0x20, 8);
        std::memcpy(&shoff, p + 0x28, 8);
        std::memcpy(&phentsize, p + 0x36, 2);
        std::memcpy(&phnum, p + 0x38, 2);
        std::memcpy(&shentsize, p + 0x3a, 2);
        std::memcpy(&shnum, p + 0x3c, 2);
        unsigned long long end = shoff + (unsigned long long)shentsize * shnum;
        unsigned long long pend = phoff + (unsigned long long)phentsize * phnum;
        return end > pend ? end : pend;
    }
    unsigned int magic;
    std::memcpy(&magic, p, 4);
    if (magic == 0xBA55ED50u) {  // fatbin: magic, version (2), header size (2), fat size (8)
        unsigned short header;
        unsigned long long fat;
        std::memcpy(&header, p + 6, 2);
        std::memcpy(&fat, p + 8, 8);
        return header + fat;
    }
    return std::strlen(static_cast<const char*>(image));
}

bool is_ident(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$'; }

// Whether `name` occurs in the image as a whole identifier (a symbol of the CUBIN, an .entry of
// the PTX).
bool image_mentions(const std::string& image, const char* name) {
    const std::size_t len = std::strlen(name);
    for (std::size_t at = image.find(name); at != std::string::npos; at = image.find(name, at + 1)) {
        const bool left = at == 0 || !is_ident(image[at - 1]);
        const bool right = at + len >= image.size() || !is_ident(image[at + len]);
        if (left && right) return true;
    }
    return false;
}

CUresult copy_checked(const char* what, void* dst, bool dst_device, const void* src, bool src_device,
                      std::size_t bytes) {
    if (bytes == 0) return CUDA_SUCCESS;
    if (dst_device && !emu::device_range_ok(dst, bytes)) {
        std::fprintf(stderr, "revsnn CUDA emulator: %s: destination [%p, +%zu) is not inside one live allocation\n",
                     what, dst, bytes);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (src_device && !emu::device_range_ok(src, bytes)) {
        std::fprintf(stderr, "revsnn CUDA emulator: %s: source [%p, +%zu) is not inside one live allocation\n", what,
                     src, bytes);
        return CUDA_ERROR_INVALID_VALUE;
    }
    // device to device is the device's work: none in host-only mode
    if (!(dst_device && src_device && emu::host_only())) std::memmove(dst, src, bytes);
    return CUDA_SUCCESS;
}

}  // namespace

extern "C" {

// ---- errors -------------------------------------------------------------------------------------
#define ERRORS(X)                                                                                   \
    X(CUDA_SUCCESS, "no error")                                                                     \
    X(CUDA_ERROR_INVALID_VALUE, "invalid argument")                                                 \
    X(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")                                                    \
    X(CUDA_ERROR_NOT_INITIALIZED, "initialization error")                                           \
    X(CUDA_ERROR_DEINITIALIZED, "driver shutting down")                                             \
    X(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected")                                   \
    X(CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal")                                          \
    X(CUDA_ERROR_INVALID_IMAGE, "device kernel image is invalid")                                   \
    X(CUDA_ERROR_INVALID_CONTEXT, "invalid device context")                                         \
    X(CUDA_ERROR_INVALID_HANDLE, "invalid resource handle")                                         \
    X(CUDA_ERROR_NOT_FOUND, "named symbol not found")                                               \
    X(CUDA_ERROR_NOT_READY, "device not ready")                                                     \
    X(CUDA_ERROR_ILLEGAL_ADDRESS, "an illegal memory access was encountered")                       \
    X(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "too many resources requested for launch")                \
    X(CUDA_ERROR_LAUNCH_FAILED, "unspecified launch failure")                                       \
    X(CUDA_ERROR_NOT_SUPPORTED, "operation not supported")                                          \
    X(CUDA_ERROR_UNKNOWN, "unknown error")

CUresult cuGetErrorName(CUresult error, const char** pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
#define NAME(code, text) \
    case code:           \
        *pStr = #code;   \
        return CUDA_SUCCESS;
        ERRORS(NAME)
#undef NAME
        default:
            *pStr = nullptr;
            return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuGetErrorString(CUresult error, const char** pStr) {
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    switch (error) {
#define TEXT(code, text) \
    case code:           \
        *pStr = text;    \
        return CUDA_SUCCESS;
        ERRORS(TEXT)
#undef TEXT
        default:
            *pStr = nullptr;
            return CUDA_ERROR_INVALID_VALUE;
    }
}

// NVRTC itself dlopens libcuda.so.1 and asks for the driver's private export tables; a null
// function pointer there crashes it. The emulator has none, which NVRTC accepts.
CUresult cuGetExportTable(const void** table, const CUuuid*) {
    if (table) *table = nullptr;
    emu::trace("cuGetExportTable: none");
    return CUDA_ERROR_NOT_SUPPORTED;
}

// ---- initialisation, device ---------------------------------------------------------------------
CUresult cuInit(unsigned int flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    const int count = requested_device_count();
    if (count == 0) return CUDA_ERROR_INVALID_VALUE;
    device_count = count;
    for (int d = 0; d < count; ++d) primary_contexts[d].device = d;
    initialised = true;
    return CUDA_SUCCESS;
}

CUresult cuDriverGetVersion(int* version) {
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    *version = 13000;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int* count) {
    CHECK_INIT();
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = device_count;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice* device, int ordinal) {
    CHECK_INIT();
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(ordinal)) return CUDA_ERROR_INVALID_DEVICE;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    CHECK_INIT();
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    std::snprintf(name, (std::size_t)len, "%s", kDeviceName);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
    CHECK_INIT();
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    char text[32];  // 16 bytes are used: "revsnn-emulat000" for device 0
    std::snprintf(text, sizeof text, "revsnn-emulat%03d", (int)dev);
    std::memcpy(uuid->bytes, text, 16);
    return CUDA_SUCCESS;
}

CUresult cuDeviceTotalMem(size_t* bytes, CUdevice dev) {
    CHECK_INIT();
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = total_memory();
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
    CHECK_INIT();
    if (!pi) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    int v = 0;
    switch (attrib) {
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: v = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: v = 64; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: v = 2147483647; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: v = 65535; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: v = 65535; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: v = 49152; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: v = 49152; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: v = 233472; break;
        case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: v = 65536; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: v = 32; break;
        case CU_DEVICE_ATTRIBUTE_MAX_PITCH: v = 2147483647; break;
        case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: v = 65536; break;
        case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: v = 65536; break;
        case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: v = 1000000; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: v = 1000000; break;
        case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: v = 64; break;
        case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: v = 1 << 20; break;
        case CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT: v = 512; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: v = 1; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: v = 2048; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: v = 32; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: v = compute_capability().first; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: v = compute_capability().second; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: v = 1; break;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: v = 1; break;
        case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: v = 1; break;
        case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: v = 1; break;
        case CU_DEVICE_ATTRIBUTE_INTEGRATED: v = 0; break;
        case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: v = 1; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_MODE: v = CU_COMPUTEMODE_DEFAULT; break;
        case CU_DEVICE_ATTRIBUTE_ECC_ENABLED: v = 0; break;
        case CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY: v = 0; break;
        case CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH: v = 0; break;
        default: v = 0; break;
    }
    *pi = v;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetDefaultMemPool(CUmemoryPool* pool, CUdevice dev) {
    CHECK_INIT();
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *pool = reinterpret_cast<CUmemoryPool>(&default_pool_handle);
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetMemPool(CUmemoryPool* pool, CUdevice dev) { return cuDeviceGetDefaultMemPool(pool, dev); }

CUresult cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
    CHECK_INIT();
    if (pool != reinterpret_cast<CUmemoryPool>(&default_pool_handle) || !value) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> guard(default_pool.lock);
    switch (attr) {
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
            std::memcpy(&default_pool.release_threshold, value, 8);
            return CUDA_SUCCESS;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH: {
            unsigned long long v;
            std::memcpy(&v, value, 8);
            if (v != 0) return CUDA_ERROR_INVALID_VALUE;  // only a reset to 0 is allowed
            if (attr == CU_MEMPOOL_ATTR_USED_MEM_HIGH) default_pool.used_high = default_pool.used;
            else default_pool.reserved_high = default_pool.reserved;
            return CUDA_SUCCESS;
        }
        case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
            return CUDA_SUCCESS;
        default:
            return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void* value) {
    CHECK_INIT();
    if (pool != reinterpret_cast<CUmemoryPool>(&default_pool_handle) || !value) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> guard(default_pool.lock);
    unsigned long long v = 0;
    switch (attr) {
        case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: v = default_pool.release_threshold; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: v = default_pool.reserved; break;
        case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: v = default_pool.reserved_high; break;
        case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: v = default_pool.used; break;
        case CU_MEMPOOL_ATTR_USED_MEM_HIGH: v = default_pool.used_high; break;
        case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
        case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: {
            int one = 1;
            std::memcpy(value, &one, sizeof one);
            return CUDA_SUCCESS;
        }
        default: return CUDA_ERROR_INVALID_VALUE;
    }
    std::memcpy(value, &v, 8);
    return CUDA_SUCCESS;
}

CUresult cuMemPoolTrimTo(CUmemoryPool pool, size_t keep_bytes) {
    CHECK_INIT();
    if (pool != reinterpret_cast<CUmemoryPool>(&default_pool_handle)) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> guard(default_pool.lock);
    default_pool.release_to(keep_bytes);
    return CUDA_SUCCESS;
}

// ---- contexts -----------------------------------------------------------------------------------
CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
    CHECK_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    *ctx = reinterpret_cast<CUcontext>(&primary_contexts[dev]);
    return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
    CHECK_INIT();
    return valid_device(dev) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

CUresult cuDevicePrimaryCtxReset(CUdevice dev) { return cuDevicePrimaryCtxRelease(dev); }

CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int* flags, int* active) {
    CHECK_INIT();
    if (!valid_device(dev)) return CUDA_ERROR_INVALID_DEVICE;
    if (flags) *flags = 0;
    if (active) *active = 1;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCurrent(CUcontext ctx) {
    CHECK_INIT();
    if (ctx && !valid_context(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    current_context = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext* ctx) {
    CHECK_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = current_context;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice* dev) {
    CHECK_INIT();
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (!current_context) return CUDA_ERROR_INVALID_CONTEXT;
    *dev = reinterpret_cast<Context*>(current_context)->device;
    return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize() {
    CHECK_CTX();
    default_pool.synchronised();
    return CUDA_SUCCESS;
}

CUresult cuCtxSetFlags(unsigned int) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}

CUresult cuCtxGetStreamPriorityRange(int* least, int* greatest) {
    CHECK_INIT();
    if (least) *least = 0;
    if (greatest) *greatest = -5;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetLimit(size_t* value, CUlimit limit) {
    CHECK_INIT();
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    switch (limit) {
        case CU_LIMIT_STACK_SIZE: *value = 1024; return CUDA_SUCCESS;
        case CU_LIMIT_PRINTF_FIFO_SIZE: *value = 1 << 20; return CUDA_SUCCESS;
        case CU_LIMIT_MALLOC_HEAP_SIZE: *value = 8 << 20; return CUDA_SUCCESS;
        default: *value = 0; return CUDA_SUCCESS;
    }
}

CUresult cuCtxSetLimit(CUlimit, size_t) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCacheConfig(CUfunc_cache* config) {
    CHECK_INIT();
    if (!config) return CUDA_ERROR_INVALID_VALUE;
    *config = CU_FUNC_CACHE_PREFER_NONE;
    return CUDA_SUCCESS;
}

CUresult cuCtxSetCacheConfig(CUfunc_cache) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}

// ---- streams and events ---------------------------------------------------------------------------
CUresult cuStreamCreate(CUstream* stream, unsigned int flags) {
    CHECK_CTX();
    if (!stream) return CUDA_ERROR_INVALID_VALUE;
    *stream = reinterpret_cast<CUstream>(new Stream{flags});
    return CUDA_SUCCESS;
}

CUresult cuStreamCreateWithPriority(CUstream* stream, unsigned int flags, int) { return cuStreamCreate(stream, flags); }

CUresult cuStreamDestroy(CUstream stream) {
    CHECK_INIT();
    if (!stream) return CUDA_ERROR_INVALID_HANDLE;
    delete reinterpret_cast<Stream*>(stream);
    return CUDA_SUCCESS;
}

// Whether the streams pose as stalled (REVSNN_EMU_STREAM_STALLED=1; unset or 0: not; read at
// every call, so a test can set it mid-run), as a stream waiting on a collective that a dead or
// hung rank never joins: cuStreamQuery answers not ready. The work itself has run, as every call
// here runs it at once.
static bool streams_stalled() {
    return emu::env_switch("REVSNN_EMU_STREAM_STALLED", "0", "1");
}

// A stalled stream would never finish: a wait without a limit, which revsnn must not make then,
// fails at once with a message, where a real driver would block for ever.
CUresult cuStreamSynchronize(CUstream) {
    CHECK_INIT();
    if (streams_stalled()) {
        std::fprintf(stderr, "revsnn CUDA emulator: cuStreamSynchronize on a stalled stream "
                             "(REVSNN_EMU_STREAM_STALLED=1) would block for ever\n");
        return CUDA_ERROR_LAUNCH_TIMEOUT;
    }
    default_pool.synchronised();
    return CUDA_SUCCESS;
}

CUresult cuStreamQuery(CUstream) {
    CHECK_INIT();
    return streams_stalled() ? CUDA_ERROR_NOT_READY : CUDA_SUCCESS;
}

CUresult cuStreamWaitEvent(CUstream, CUevent, unsigned int) {
    CHECK_INIT();
    return CUDA_SUCCESS;
}

CUresult cuStreamIsCapturing(CUstream, CUstreamCaptureStatus* status) {
    CHECK_INIT();
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    *status = CU_STREAM_CAPTURE_STATUS_NONE;
    return CUDA_SUCCESS;
}

CUresult cuLaunchHostFunc(CUstream, CUhostFn fn, void* user_data) {
    CHECK_INIT();
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    fn(user_data);
    return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent* event, unsigned int) {
    CHECK_CTX();
    if (!event) return CUDA_ERROR_INVALID_VALUE;
    *event = reinterpret_cast<CUevent>(new Event{std::chrono::steady_clock::now(), false});
    return CUDA_SUCCESS;
}

CUresult cuEventDestroy(CUevent event) {
    CHECK_INIT();
    if (!event) return CUDA_ERROR_INVALID_HANDLE;
    delete reinterpret_cast<Event*>(event);
    return CUDA_SUCCESS;
}

CUresult cuEventRecord(CUevent event, CUstream) {
    CHECK_INIT();
    if (!event) return CUDA_ERROR_INVALID_HANDLE;
    Event* e = reinterpret_cast<Event*>(event);
    e->at = std::chrono::steady_clock::now();
    e->recorded = true;
    return CUDA_SUCCESS;
}

CUresult cuEventRecordWithFlags(CUevent event, CUstream stream, unsigned int) { return cuEventRecord(event, stream); }

CUresult cuEventSynchronize(CUevent event) {
    CHECK_INIT();
    if (!event) return CUDA_ERROR_INVALID_HANDLE;
    default_pool.synchronised();
    return CUDA_SUCCESS;
}

CUresult cuEventQuery(CUevent event) {
    CHECK_INIT();
    return event ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    CHECK_INIT();
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    if (!start || !end) return CUDA_ERROR_INVALID_HANDLE;
    Event* s = reinterpret_cast<Event*>(start);
    Event* e = reinterpret_cast<Event*>(end);
    if (!s->recorded || !e->recorded) return CUDA_ERROR_INVALID_HANDLE;
    *ms = std::chrono::duration<float, std::milli>(e->at - s->at).count();
    return CUDA_SUCCESS;
}

// ---- memory -------------------------------------------------------------------------------------
CUresult cuMemAlloc(CUdeviceptr* dptr, size_t bytes) {
    CHECK_CTX();
    if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    void* p = emu::device_alloc(bytes);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    *dptr = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

// Frees a cuMemAlloc allocation, or one of the pool's, as the driver's cuMemFree does.
CUresult cuMemFree(CUdeviceptr dptr) {
    CHECK_CTX();
    if (dptr == 0) return CUDA_SUCCESS;
    void* p = reinterpret_cast<void*>(dptr);
    return default_pool.free(p) || emu::device_free(p) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemAllocAsync(CUdeviceptr* dptr, size_t bytes, CUstream) {
    CHECK_CTX();
    if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    void* p = default_pool.allocate(bytes);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    *dptr = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

CUresult cuMemAllocFromPoolAsync(CUdeviceptr* dptr, size_t bytes, CUmemoryPool pool, CUstream stream) {
    if (pool != reinterpret_cast<CUmemoryPool>(&default_pool_handle)) return CUDA_ERROR_INVALID_VALUE;
    return cuMemAllocAsync(dptr, bytes, stream);
}

CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream) {
    CHECK_CTX();
    if (dptr == 0) return CUDA_SUCCESS;
    return default_pool.free(reinterpret_cast<void*>(dptr)) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
    CHECK_CTX();
    if (free_bytes) *free_bytes = emu::device_free_bytes();
    if (total_bytes) *total_bytes = total_memory();
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void** pp, size_t bytes, unsigned int) {
    CHECK_INIT();
    if (!pp) return CUDA_ERROR_INVALID_VALUE;
    *pp = std::malloc(bytes ? bytes : 1);
    return *pp ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult cuMemFreeHost(void* p) {
    CHECK_INIT();
    std::free(p);
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8(CUdeviceptr dst, unsigned char value, size_t n) {
    CHECK_CTX();
    if (n == 0) return CUDA_SUCCESS;
    if (!emu::device_range_ok(reinterpret_cast<void*>(dst), n)) {
        std::fprintf(stderr, "revsnn CUDA emulator: cuMemsetD8: [%p, +%zu) is not inside one live allocation\n",
                     reinterpret_cast<void*>(dst), n);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (!emu::host_only()) std::memset(reinterpret_cast<void*>(dst), value, n);
    return CUDA_SUCCESS;
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char value, size_t n, CUstream) { return cuMemsetD8(dst, value, n); }

CUresult cuMemsetD32(CUdeviceptr dst, unsigned int value, size_t n) {
    CHECK_CTX();
    if (n == 0) return CUDA_SUCCESS;
    if (!emu::device_range_ok(reinterpret_cast<void*>(dst), n * 4)) return CUDA_ERROR_INVALID_VALUE;
    unsigned int* p = reinterpret_cast<unsigned int*>(dst);
    if (!emu::host_only())
        for (size_t i = 0; i < n; ++i) p[i] = value;
    return CUDA_SUCCESS;
}

CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int value, size_t n, CUstream) { return cuMemsetD32(dst, value, n); }

CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t bytes) {
    CHECK_CTX();
    return copy_checked("cuMemcpyHtoD", reinterpret_cast<void*>(dst), true, src, false, bytes);
}
CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t bytes, CUstream) {
    CHECK_CTX();
    return copy_checked("cuMemcpyHtoDAsync", reinterpret_cast<void*>(dst), true, src, false, bytes);
}
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t bytes) {
    CHECK_CTX();
    return copy_checked("cuMemcpyDtoH", dst, false, reinterpret_cast<const void*>(src), true, bytes);
}
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t bytes, CUstream) {
    CHECK_CTX();
    return copy_checked("cuMemcpyDtoHAsync", dst, false, reinterpret_cast<const void*>(src), true, bytes);
}
CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    CHECK_CTX();
    return copy_checked("cuMemcpyDtoD", reinterpret_cast<void*>(dst), true, reinterpret_cast<const void*>(src), true,
                        bytes);
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream) {
    CHECK_CTX();
    return copy_checked("cuMemcpyDtoDAsync", reinterpret_cast<void*>(dst), true, reinterpret_cast<const void*>(src),
                        true, bytes);
}

// ---- modules and launches -----------------------------------------------------------------------
CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    CHECK_CTX();
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    const std::size_t size = image_size(image);
    if (size == 0) return CUDA_ERROR_INVALID_IMAGE;
    Module* m = new Module{std::string(static_cast<const char*>(image), size)};
    *module = reinterpret_cast<CUmodule>(m);
    emu::trace("cuModuleLoadData: %zu-byte image", size);
    return CUDA_SUCCESS;
}

CUresult cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int, CUjit_option*, void**) {
    return cuModuleLoadData(module, image);
}

CUresult cuModuleUnload(CUmodule module) {
    CHECK_INIT();
    if (!module) return CUDA_ERROR_INVALID_HANDLE;
    delete reinterpret_cast<Module*>(module);
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    CHECK_CTX();
    if (!function || !name) return CUDA_ERROR_INVALID_VALUE;
    if (!module) return CUDA_ERROR_INVALID_HANDLE;
    Module* m = reinterpret_cast<Module*>(module);
    // A name the compiled image does not define is not found, as on a GPU, even when another
    // file's kernel has it.
    if (!image_mentions(m->image, name)) return CUDA_ERROR_NOT_FOUND;
    const emu::KernelEntry* entry = emu::find_kernel(name);
    if (!entry)
        emu::fatal("kernel %s is in the module NVRTC compiled but not in the emulator (%zu kernels): rebuild the "
                   "emulator with gpu/emulator/build.sh",
                   name, emu::kernel_count());
    *function = reinterpret_cast<CUfunction>(const_cast<emu::KernelEntry*>(entry));
    return CUDA_SUCCESS;
}

CUresult cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction function) {
    CHECK_INIT();
    if (!pi) return CUDA_ERROR_INVALID_VALUE;
    if (!function) return CUDA_ERROR_INVALID_HANDLE;
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
        case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = 32; break;
        case CU_FUNC_ATTRIBUTE_PTX_VERSION: *pi = 90; break;
        case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = 90; break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *pi = 49152; break;
        default: *pi = 0; break;
    }
    return CUDA_SUCCESS;
}

CUresult cuFuncSetAttribute(CUfunction function, CUfunction_attribute, int) {
    CHECK_INIT();
    return function ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuFuncSetCacheConfig(CUfunction function, CUfunc_cache) {
    CHECK_INIT();
    return function ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                        unsigned int by, unsigned int bz, unsigned int shared_bytes, CUstream, void** params,
                        void** extra) {
    CHECK_CTX();
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (extra) return CUDA_ERROR_NOT_SUPPORTED;  // cudarc passes kernelParams
    const emu::KernelEntry& kernel = *reinterpret_cast<const emu::KernelEntry*>(f);
    emu::trace("launch %s grid (%u,%u,%u) block (%u,%u,%u)", kernel.name, gx, gy, gz, bx, by, bz);
    switch (emu::run_grid(kernel, params, gx, gy, gz, bx, by, bz, shared_bytes)) {
        case emu::LaunchStatus::Ok: return CUDA_SUCCESS;
        default: return CUDA_ERROR_INVALID_VALUE;
    }
}

CUresult cuOccupancyMaxPotentialBlockSize(int* min_grid, int* block, CUfunction function, CUoccupancyB2DSize, size_t,
                                          int limit) {
    CHECK_INIT();
    if (!min_grid || !block) return CUDA_ERROR_INVALID_VALUE;
    if (!function) return CUDA_ERROR_INVALID_HANDLE;
    *block = limit > 0 && limit < 1024 ? limit : 1024;
    *min_grid = 2;
    return CUDA_SUCCESS;
}

CUresult cuOccupancyMaxPotentialBlockSizeWithFlags(int* min_grid, int* block, CUfunction function,
                                                   CUoccupancyB2DSize f, size_t bytes, int limit, unsigned int) {
    return cuOccupancyMaxPotentialBlockSize(min_grid, block, function, f, bytes, limit);
}

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, CUfunction function, int block_size, size_t) {
    CHECK_INIT();
    if (!blocks || block_size <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (!function) return CUDA_ERROR_INVALID_HANDLE;
    *blocks = 2048 / block_size > 0 ? 2048 / block_size : 1;
    return CUDA_SUCCESS;
}

CUresult cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* blocks, CUfunction function, int block_size,
                                                              size_t bytes, unsigned int) {
    return cuOccupancyMaxActiveBlocksPerMultiprocessor(blocks, function, block_size, bytes);
}

}  // extern "C"
