// The CPU emulator's runtime: kernel registry, grid execution, device memory with guard pages.
// Shared by fake_cuda.cpp (the driver API), fake_cublas.cpp and the generated kernel units.
#pragma once

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

// A kernel's parameters unpacked from cuLaunchKernel's `void** kernelParams`, and how to run one
// thread of it.
struct KernelArgs {
    virtual ~KernelArgs() = default;
    virtual void run_thread() = 0;
};

// Builds the unpacked arguments of one launch (new'ed; the caller deletes them).
using ArgsFactory = KernelArgs* (*)(void* function, void** params);

struct KernelEntry {
    const char* name;
    void* function;
    ArgsFactory make_args;
    int arity;
};

// Adds a kernel to the registry (called by the generated units' static initialisers).
void register_kernel(const KernelEntry& entry);
// The kernel named `name`, or nullptr.
const KernelEntry* find_kernel(const char* name);
// The number of registered kernels.
std::size_t kernel_count();

template <typename F> struct Launcher;
template <typename... A> struct Launcher<void (*)(A...)> {
    using Tuple = std::tuple<std::decay_t<A>...>;
    struct Args final : KernelArgs {
        void (*function)(A...);
        Tuple values;
        Args(void (*f)(A...), Tuple t) : function(f), values(std::move(t)) {}
        void run_thread() override { std::apply(function, values); }
    };
    template <std::size_t... I> static Tuple unpack(void** params, std::index_sequence<I...>) {
        return Tuple(*static_cast<const std::decay_t<A>*>(params[I])...);
    }
    static KernelArgs* make(void* function, void** params) {
        auto f = reinterpret_cast<void (*)(A...)>(function);
        return new Args(f, unpack(params, std::index_sequence_for<A...>{}));
    }
    static KernelEntry entry(const char* name, void (*f)(A...)) {
        return KernelEntry{name, reinterpret_cast<void*>(f), &make, (int)sizeof...(A)};
    }
};

struct Registrar {
    explicit Registrar(const KernelEntry& entry) { register_kernel(entry); }
};

#define EMU_REGISTER(NS, NAME) \
    static ::emu::Registrar emu_registrar_##NAME(::emu::Launcher<decltype(&NS::NAME)>::entry(#NAME, &NS::NAME));

// Result codes of run_grid (the driver maps them onto CUresult).
enum class LaunchStatus { Ok, InvalidValue };

// Runs a whole grid synchronously under the launch lock. Validates the dimensions as CUDA does.
LaunchStatus run_grid(const KernelEntry& kernel, void** params, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                      unsigned by, unsigned bz, unsigned shared_bytes);

// ---- device memory ---------------------------------------------------------------------------
// An allocation of `bytes` (> 0) whose last byte is followed by an inaccessible page (and whose
// first is preceded by one, within the page's slack), filled with 0xFF bytes (NaN for floats) so
// reads of unwritten memory show. nullptr when out of memory.
void* device_alloc(std::size_t bytes);
// Frees an allocation from device_alloc and returns its size; 0 if `p` is not the start of a
// live one.
std::size_t device_free(void* p);
// Whether [p, p + bytes) lies inside one live allocation.
bool device_range_ok(const void* p, std::size_t bytes);
// Whether launches, GEMMs, convolutions and device-side copies and fills compute nothing
// (REVSNN_EMU_HOST_ONLY=1, emulator.cpp).
bool host_only();
// The bytes each device reports (REVSNN_EMU_MEMORY_BYTES, else the machine's RAM); device_alloc
// fails once the process's live bytes and those its pool holds beside them would pass them.
std::size_t device_total_bytes();
// The bytes a new allocation can still get: the device's less the live and the pool's cached ones.
std::size_t device_free_bytes();
// Sets the bytes the stream-ordered pool holds beside its live blocks: they count against the
// device's memory until the pool releases them (fake_cuda.cpp).
void device_set_pool_cached(std::size_t bytes);

// Names what is running for the fault handler ("kernel foo", "cublasSgemm_v2", ...): set while
// device code or a library routine touches device memory. Installs the handler on first use.
void set_activity(const char* what);
void clear_activity();

// Logs a message to stderr when REVSNN_EMU_TRACE=1.
void trace(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Prints "revsnn CUDA emulator: <message>" to stderr and aborts.
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Whether the environment variable `name` is set to `on`: unset or `off` is false, any other
// value stops the process with a message that names the two.
bool env_switch(const char* name, const char* off, const char* on);

}  // namespace emu
