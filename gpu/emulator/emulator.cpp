// The CPU emulator's runtime: kernel registry, grids run block after block with the threads of a
// block as cooperative fibers, and device memory with guard pages and a fault handler that names
// the kernel which touched memory outside every live allocation.
#include "emulator.h"

#include <signal.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_shim.h"

namespace emu {

// ---- logging ---------------------------------------------------------------------------------
static bool tracing() {
    static const bool on = [] {
        const char* v = std::getenv("REVSNN_EMU_TRACE");
        return v && std::strcmp(v, "1") == 0;
    }();
    return on;
}

void trace(const char* fmt, ...) {
    if (!tracing()) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "[revsnn-emu] %s\n", buf);
}

void fatal(const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "revsnn CUDA emulator: %s\n", buf);
    std::fflush(stderr);
    std::abort();
}

// ---- registry ----------------------------------------------------------------------------------
static std::map<std::string, KernelEntry>& registry() {
    static std::map<std::string, KernelEntry> kernels;
    return kernels;
}

void register_kernel(const KernelEntry& entry) {
    if (!registry().emplace(entry.name, entry).second) fatal("kernel %s registered twice", entry.name);
}

const KernelEntry* find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : &it->second;
}

std::size_t kernel_count() { return registry().size(); }

// ---- device memory -----------------------------------------------------------------------------
struct Allocation {
    std::size_t bytes;
    char* map_base;
    std::size_t map_len;
};

static std::mutex memory_lock;
static std::map<std::uintptr_t, Allocation> allocations;  // by start address
static std::size_t live_bytes = 0;
// Bytes the stream-ordered pool keeps from freed allocations (fake_cuda.cpp): not live, but not
// free for a new allocation either, as on a card whose pool has not released them.
static std::size_t pool_cached_bytes = 0;
// Host-only mode's freed allocations by size, with their starts, handed out again for the same
// size as the driver's stream-ordered pool does, so that a step's host time is not the mappings'
// system calls. Needs memory_lock.
static std::map<std::size_t, std::vector<std::pair<char*, Allocation>>> kept_for_reuse;

// The memory each device reports: REVSNN_EMU_MEMORY_BYTES when set, so that a test can fill a
// small device, else the machine's RAM. An allocation that would take the process's live bytes
// and those its memory pool holds beside them (over all its devices: one per process in a
// multi-GPU run) past it fails as the driver's does when a card is full.
std::size_t device_total_bytes() {
    static const std::size_t total = [] {
        const char* text = std::getenv("REVSNN_EMU_MEMORY_BYTES");
        if (text && *text) {
            char* end = nullptr;
            const unsigned long long bytes = std::strtoull(text, &end, 10);
            if (*end != '\0' || bytes == 0 || text[0] == '-') {
                std::fprintf(stderr, "revsnn CUDA emulator: REVSNN_EMU_MEMORY_BYTES=%s: expected a whole number of "
                             "bytes from 1, or unset for the machine's RAM\n", text);
                std::abort();
            }
            return (std::size_t)bytes;
        }
        struct sysinfo info;
        if (sysinfo(&info) == 0) return (std::size_t)info.totalram * info.mem_unit;
        return (std::size_t)16 << 30;
    }();
    return total;
}

// The device's memory (device_total_bytes) less the live and the pool's cached bytes. Needs
// memory_lock.
static std::size_t unheld_bytes() {
    const std::size_t total = device_total_bytes(), held = live_bytes + pool_cached_bytes;
    return held < total ? total - held : 0;
}

// Whether `bytes` more fit in the device's memory. Needs memory_lock.
static bool fits(std::size_t bytes) { return bytes <= unheld_bytes(); }

// Registers the allocation `a` starting at `start` as live, unless it does not fit the device's
// memory: then false. Needs memory_lock.
static bool register_live(char* start, const Allocation& a) {
    if (!fits(a.bytes)) return false;
    allocations[(std::uintptr_t)start] = a;
    live_bytes += a.bytes;
    return true;
}

static std::size_t page_size() {
    static const std::size_t size = (std::size_t)sysconf(_SC_PAGESIZE);
    return size;
}

// Whether the environment variable `name` is set to `on`: unset or `off` is false, any other
// value stops the process with a message that names the two.
bool env_switch(const char* name, const char* off, const char* on) {
    const char* v = std::getenv(name);
    if (v == nullptr || std::strcmp(v, off) == 0) return false;
    if (std::strcmp(v, on) == 0) return true;
    std::fprintf(stderr, "revsnn CUDA emulator: %s=%s: expected %s or %s\n", name, v, off, on);
    std::abort();
}

// Whether kernels, cuBLAS's GEMMs, cuDNN's convolutions and device-to-device copies and fills
// compute nothing (REVSNN_EMU_HOST_ONLY=1): every launch and call is checked and traced and
// returns as usual, and device memory is not poisoned, so a run's time is the host's own: the
// Rust code that makes the launches, the driver and library calls (the emulator's, not NVIDIA's)
// and the copies to and from the host. Every output is garbage.
bool host_only() {
    static const bool on = env_switch("REVSNN_EMU_HOST_ONLY", "0", "1");
    return on;
}

static bool poison_enabled() {
    static const bool on = [] {
        const char* v = std::getenv("REVSNN_EMU_POISON");
        return !(v && std::strcmp(v, "0") == 0) && !host_only();
    }();
    return on;
}

// The alignment of every allocation's start (REVSNN_EMU_ALIGN, a power of two from 4 to the page
// size; default 4). At 4 the data ends right before the trailing guard page, so an f32 buffer's
// one-past-the-end element faults, but a buffer starts 16-byte aligned only when its size is a
// multiple of 16, and kernels that load 16-byte vectors where their pointers allow take their
// scalar path on the others. At 256, the driver's alignment, every buffer starts where a GPU's
// would and those kernels take the path they take on a GPU, at the cost of up to 252 bytes of
// unguarded slack after the data.
static std::size_t start_alignment() {
    static const std::size_t alignment = [] {
        const char* v = std::getenv("REVSNN_EMU_ALIGN");
        if (v == nullptr) return (std::size_t)4;
        char* end = nullptr;
        const unsigned long long a = std::strtoull(v, &end, 10);
        if (*v == '\0' || *end != '\0' || a < 4 || a > page_size() || (a & (a - 1)) != 0) {
            std::fprintf(stderr, "revsnn CUDA emulator: REVSNN_EMU_ALIGN=%s: expected a power of two from 4 to %zu\n",
                         v, page_size());
            std::abort();
        }
        return (std::size_t)a;
    }();
    return alignment;
}

void* device_alloc(std::size_t bytes) {
    if (bytes == 0) return nullptr;
    if (host_only()) {
        std::lock_guard<std::mutex> guard(memory_lock);
        auto kept = kept_for_reuse.find(bytes);
        if (kept != kept_for_reuse.end() && !kept->second.empty()) {
            const auto [start, a] = kept->second.back();
            if (!register_live(start, a)) return nullptr;
            kept->second.pop_back();
            return start;
        }
    }
    {
        std::lock_guard<std::mutex> guard(memory_lock);
        if (!fits(bytes)) return nullptr;  // checked again when registered, under the same lock
    }
    const std::size_t page = page_size();
    // The data starts start_alignment()-aligned, as close before the trailing guard page as that
    // allows; an f64 buffer (size a multiple of 8) starts 8-byte aligned whatever the setting.
    const std::size_t mask = start_alignment() - 1;
    const std::size_t rounded = (bytes + mask) & ~mask;
    if (rounded < bytes) return nullptr;
    const std::size_t data_pages = (rounded + page - 1) / page;
    const std::size_t map_len = (data_pages + 2) * page;
    void* base = mmap(nullptr, map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    char* data_begin = static_cast<char*>(base) + page;
    if (mprotect(data_begin, data_pages * page, PROT_READ | PROT_WRITE) != 0) {
        munmap(base, map_len);
        return nullptr;
    }
    char* start = data_begin + data_pages * page - rounded;
    if (poison_enabled()) std::memset(start, 0xFF, rounded);
    std::lock_guard<std::mutex> guard(memory_lock);
    if (!register_live(start, Allocation{bytes, static_cast<char*>(base), map_len})) {
        munmap(base, map_len);
        return nullptr;
    }
    return start;
}

std::size_t device_free(void* p) {
    Allocation a;
    {
        std::lock_guard<std::mutex> guard(memory_lock);
        auto it = allocations.find((std::uintptr_t)p);
        if (it == allocations.end()) return 0;
        a = it->second;
        allocations.erase(it);
        live_bytes -= a.bytes;
        if (host_only()) {
            kept_for_reuse[a.bytes].emplace_back(static_cast<char*>(p), a);
            return a.bytes;
        }
    }
    munmap(a.map_base, a.map_len);  // later uses of the freed memory fault
    return a.bytes;
}

// The live allocation that contains p, or allocations.end(). Needs memory_lock.
static std::map<std::uintptr_t, Allocation>::const_iterator containing(std::uintptr_t p) {
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return allocations.end();
    --it;
    if (p < it->first + it->second.bytes) return it;
    return allocations.end();
}

bool device_range_ok(const void* p, std::size_t bytes) {
    std::lock_guard<std::mutex> guard(memory_lock);
    auto it = containing((std::uintptr_t)p);
    if (it == allocations.end()) return false;
    return (std::uintptr_t)p + bytes <= it->first + it->second.bytes;
}

std::size_t device_free_bytes() {
    std::lock_guard<std::mutex> guard(memory_lock);
    return unheld_bytes();
}
void device_set_pool_cached(std::size_t bytes) {
    std::lock_guard<std::mutex> guard(memory_lock);
    pool_cached_bytes = bytes;
}

// ---- the fault handler --------------------------------------------------------------------------
static thread_local const char* activity = nullptr;
static struct sigaction previous_segv, previous_bus;

static void describe_fault(std::uintptr_t addr, char* out, std::size_t len) {
    // Not async-signal-safe, but the process aborts right after. try_lock: the faulting thread may
    // hold the lock (it never does while device code runs).
    if (!memory_lock.try_lock()) {
        std::snprintf(out, len, "(allocation table busy)");
        return;
    }
    auto after = allocations.upper_bound(addr);
    std::string text;
    char buf[256];
    if (after != allocations.begin()) {
        auto before = std::prev(after);
        const std::uintptr_t end = before->first + before->second.bytes;
        std::snprintf(buf, sizeof buf, "%zu bytes past the end of the allocation [0x%lx, +%zu)",
                      (std::size_t)(addr - end), (unsigned long)before->first, before->second.bytes);
        if (addr >= end) text += buf;
    }
    if (after != allocations.end()) {
        std::snprintf(buf, sizeof buf, "%s%zu bytes before the start of the allocation [0x%lx, +%zu)",
                      text.empty() ? "" : "; ", (std::size_t)(after->first - addr), (unsigned long)after->first,
                      after->second.bytes);
        text += buf;
    }
    memory_lock.unlock();
    std::snprintf(out, len, "%s", text.empty() ? "no live allocation near it" : text.c_str());
}

static void on_fault(int sig, siginfo_t* info, void* context) {
    const char* what = activity;
    if (what) {
        char where[768];
        describe_fault((std::uintptr_t)info->si_addr, where, sizeof where);
        char msg[1200];
        int n = std::snprintf(msg, sizeof msg,
                              "revsnn CUDA emulator: %s accessed address %p outside every live device allocation "
                              "(%s), or overflowed its stack (signal %d). A GPU may silently read garbage here.\n",
                              what, info->si_addr, where, sig);
        if (n > 0) (void)!write(2, msg, (std::size_t)n < sizeof msg ? (std::size_t)n : sizeof msg - 1);
        signal(SIGABRT, SIG_DFL);
        std::abort();
    }
    // Not ours: hand it to whoever had the signal before (Rust's stack-overflow handler, or the
    // default action).
    const struct sigaction& prev = sig == SIGSEGV ? previous_segv : previous_bus;
    if (prev.sa_flags & SA_SIGINFO) {
        if (prev.sa_sigaction) {
            prev.sa_sigaction(sig, info, context);
            return;
        }
    } else if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
        prev.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  // returning re-executes the access, which now kills the process
}

static void install_fault_handler() {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &previous_segv);
        sigaction(SIGBUS, &sa, &previous_bus);
    });
}

void set_activity(const char* what) {
    install_fault_handler();
    activity = what;
}
void clear_activity() { activity = nullptr; }

// ---- fibers ----------------------------------------------------------------------------------
uint3 thread_idx;
uint3 block_idx;
dim3 block_dim;
dim3 grid_dim;
unsigned int linear_tid;
unsigned long long warp_slots[1024];
unsigned int warp_ballot_slots[1024];

}  // namespace emu

extern "C" {
// Saves the callee-saved registers and the stack pointer to *save, switches to `load` (a stack
// pointer saved by emu_switch or prepared by start_fiber) and returns there.
void emu_switch(void** save, void* load);
void emu_fiber_start();
void emu_fiber_main();
}

#if defined(__x86_64__)
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

    .globl emu_fiber_start
    .hidden emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    andq $-16, %rsp
    call emu_fiber_main
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");
#else
#error "the emulator's fiber switch is written for x86-64 only"
#endif

namespace emu {

enum State : unsigned char { NotStarted, Ready, Running, WaitBlock, WaitWarp, Done };

struct Fiber {
    void* sp;
    char* stack;  // the top of its stack while started
    State state;
};

static const std::size_t kStackBytes = 256 * 1024;
static Fiber fibers[1024];
static void* scheduler_sp = nullptr;
static KernelArgs* current_args = nullptr;
static std::vector<char*> free_stacks;  // tops of unused stacks (kept for the process)
// The stack of a thread that exited, returned to free_stacks by whoever runs next (the exiting
// thread cannot free the stack it is still running on).
static char* pending_free = nullptr;

static std::mutex launch_lock;
static const char* current_kernel = "";
static bool one_dimensional = true;

static char* take_stack() {
    if (!free_stacks.empty()) {
        char* top = free_stacks.back();
        free_stacks.pop_back();
        return top;
    }
    const std::size_t page = page_size();
    void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
    if (base == MAP_FAILED) fatal("out of memory for a thread stack");
    mprotect(base, page, PROT_NONE);  // guard: a stack overflow faults
    return static_cast<char*>(base) + page + kStackBytes;
}

static inline void reap_pending() {
    if (pending_free) {
        free_stacks.push_back(pending_free);
        pending_free = nullptr;
    }
}

static void start_fiber(Fiber& f) {
    f.stack = take_stack();
    void** sp = reinterpret_cast<void**>(f.stack);
    *--sp = nullptr;  // padding: emu_fiber_start realigns anyway
    *--sp = reinterpret_cast<void*>(&emu_fiber_start);
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f.sp = sp;
}

// Whether blocks and threads run in the reverse of their index order (REVSNN_EMU_ORDER=reverse;
// `forward`, the default, is index order). A kernel whose result depends on the order its threads
// run in (a thread reading what another writes without a barrier between them, as an in-place
// kernel may) gives other bits in one of the two orders, though neither is what a GPU does.
static bool reverse_order() {
    static const bool on = env_switch("REVSNN_EMU_ORDER", "forward", "reverse");
    return on;
}

// The block being run. A sweep runs every runnable live thread once, in the order of live[] (index
// order, or its reverse), each until it exits or waits; a thread that stops switches straight to
// the next runnable one (one context switch per thread and barrier; the last one of the sweep
// switches back to the scheduler).
static unsigned short live[1024];
static unsigned int live_count = 0;
static unsigned int sweep_at = 0, sweep_kept = 0;  // position in live[]; live threads kept so far
static unsigned int warp_alive[32], warp_waiting[32];
static unsigned int warps_waiting = 0, block_waiting = 0;

// Makes thread i the current one.
static inline void prepare(unsigned int i) {
    Fiber& f = fibers[i];
    linear_tid = i;
    if (one_dimensional) {
        thread_idx.x = i;
    } else {
        const unsigned int bx = block_dim.x, by = block_dim.y;
        thread_idx.x = i % bx;
        thread_idx.y = (i / bx) % by;
        thread_idx.z = i / (bx * by);
    }
    if (f.state == NotStarted) start_fiber(f);
    f.state = Running;
}

// The stack pointer to switch to after live[sweep_at] stopped: the next runnable thread of the
// sweep (made current), or the scheduler when the sweep is over.
static inline void* advance() {
    const unsigned int stopped = live[sweep_at];
    if (fibers[stopped].state != Done) live[sweep_kept++] = (unsigned short)stopped;
    for (++sweep_at; sweep_at < live_count; ++sweep_at) {
        const unsigned int i = live[sweep_at];
        const State s = fibers[i].state;
        if (s == NotStarted || s == Ready) {
            prepare(i);
            return fibers[i].sp;
        }
        live[sweep_kept++] = (unsigned short)i;
    }
    return scheduler_sp;
}

static inline void suspend(State why) {
    Fiber& f = fibers[linear_tid];
    f.state = why;
    if (why == WaitWarp) {
        ++warp_waiting[linear_tid >> 5];
        ++warps_waiting;
    } else {
        ++block_waiting;
    }
    emu_switch(&f.sp, advance());
    reap_pending();
}

void block_wait() { suspend(WaitBlock); }
void warp_wait() { suspend(WaitWarp); }

}  // namespace emu

extern "C" void emu_fiber_main() {
    using namespace emu;
    reap_pending();
    current_args->run_thread();
    Fiber& f = fibers[linear_tid];
    f.state = Done;
    --warp_alive[linear_tid >> 5];
    pending_free = f.stack;
    f.stack = nullptr;
    void* dead;
    emu_switch(&dead, advance());
    __builtin_unreachable();
}

namespace emu {

static void run_block(unsigned int n) {
    const bool reverse = reverse_order();
    for (unsigned int i = 0; i < n; ++i) {
        fibers[i].state = NotStarted;
        live[i] = (unsigned short)(reverse ? n - 1 - i : i);
    }
    live_count = n;
    for (unsigned int w = 0; w < (n + 31) / 32; ++w) {
        warp_alive[w] = n - w * 32 < 32 ? n - w * 32 : 32;
        warp_waiting[w] = 0;
    }
    warps_waiting = block_waiting = 0;
    thread_idx = uint3{0, 0, 0};
    bool warned = false;
    for (;;) {
        // One sweep: start the first runnable thread; the threads hand over to each other and the
        // last one comes back here.
        sweep_kept = 0;
        for (sweep_at = 0; sweep_at < live_count; ++sweep_at) {
            const unsigned int i = live[sweep_at];
            const State s = fibers[i].state;
            if (s == NotStarted || s == Ready) {
                prepare(i);
                emu_switch(&scheduler_sp, fibers[i].sp);
                reap_pending();
                break;
            }
            live[sweep_kept++] = (unsigned short)i;
        }
        live_count = sweep_kept;
        if (live_count == 0) return;
        // Release a warp whose live lanes all wait at a warp intrinsic; else the block when every
        // live thread waits at __syncthreads.
        bool released = false;
        if (warps_waiting > 0) {
            for (unsigned int w = 0; w < (n + 31) / 32; ++w) {
                if (warp_waiting[w] == 0 || warp_waiting[w] != warp_alive[w]) continue;
                const unsigned int end = w * 32 + 32 < n ? w * 32 + 32 : n;
                for (unsigned int i = w * 32; i < end; ++i)
                    if (fibers[i].state == WaitWarp) fibers[i].state = Ready;
                warps_waiting -= warp_waiting[w];
                warp_waiting[w] = 0;
                released = true;
            }
        }
        if (released) continue;
        if (block_waiting != live_count && !warned) {
            // Lanes of one warp wait at a warp intrinsic while others wait at __syncthreads:
            // undefined on a GPU (it may hang). Release everyone rather than deadlock.
            std::fprintf(stderr,
                         "revsnn CUDA emulator: warning: kernel %s: threads of one warp wait at __syncthreads and "
                         "at a warp intrinsic at the same time (divergent barrier, undefined on a GPU)\n",
                         current_kernel);
            warned = true;
        }
        for (unsigned int k = 0; k < live_count; ++k) fibers[live[k]].state = Ready;
        for (unsigned int w = 0; w < (n + 31) / 32; ++w) warp_waiting[w] = 0;
        warps_waiting = block_waiting = 0;
    }
}

LaunchStatus run_grid(const KernelEntry& kernel, void** params, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                      unsigned by, unsigned bz, unsigned shared_bytes) {
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0) return LaunchStatus::InvalidValue;
    if (gx > 0x7fffffffu || gy > 65535 || gz > 65535) return LaunchStatus::InvalidValue;
    if (bx > 1024 || by > 1024 || bz > 64 || (unsigned long long)bx * by * bz > 1024) return LaunchStatus::InvalidValue;
    if (shared_bytes > 48 * 1024) return LaunchStatus::InvalidValue;
    if (kernel.arity > 0 && params == nullptr) return LaunchStatus::InvalidValue;
    KernelArgs* args = kernel.make_args(kernel.function, params);
    std::lock_guard<std::mutex> guard(launch_lock);
    std::string what = std::string("kernel ") + kernel.name;
    set_activity(what.c_str());
    current_kernel = kernel.name;
    current_args = args;
    grid_dim = dim3(gx, gy, gz);
    block_dim = dim3(bx, by, bz);
    one_dimensional = by == 1 && bz == 1;
    const unsigned int n = bx * by * bz;
    const unsigned long long blocks = host_only() ? 0 : (unsigned long long)gx * gy * gz;
    for (unsigned long long b = 0; b < blocks; ++b) {
        const unsigned long long k = reverse_order() ? blocks - 1 - b : b;
        block_idx = uint3{(unsigned int)(k % gx), (unsigned int)(k / gx % gy), (unsigned int)(k / gx / gy)};
        run_block(n);
    }
    clear_activity();
    current_args = nullptr;
    delete args;
    return LaunchStatus::Ok;
}

}  // namespace emu

// For fake_cublas.cpp (a separate library that links this one).
extern "C" __attribute__((visibility("default"))) int revsnn_emu_range_ok(const void* p, std::size_t bytes) {
    return emu::device_range_ok(p, bytes) ? 1 : 0;
}
extern "C" __attribute__((visibility("default"))) int revsnn_emu_host_only() { return emu::host_only() ? 1 : 0; }
extern "C" __attribute__((visibility("default"))) void revsnn_emu_set_activity(const char* what) {
    if (what)
        emu::set_activity(what);
    else
        emu::clear_activity();
}
