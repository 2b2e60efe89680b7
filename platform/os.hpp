// platform/os.hpp: the one interface between the engine and the operating system.
//
// core/ calls the OS only through the functions declared here. Each platform supplies one
// translation unit (linux.cpp, later macos.cpp and windows.cpp) that defines them. The
// contract is stated per function; docs/porting.md is the long form.
//
// Conventions:
//  - No function here allocates through libc, calls printf, or leaves errno changed.
//  - Sizes and addresses passed in are multiples of page_size() unless stated.
//  - "reserve" returns address space that is readable and writable on first touch (on Linux
//    memory is committed lazily by the kernel); commit()/decommit() exist for platforms that
//    need explicit commit and for the engine's accounting.
#pragma once

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <time.h>

namespace nebula::os {

// Optional abilities, reported by features().
enum Feature : unsigned {
  kLazyCommit = 1u << 0,        // reserved memory is usable without commit()
  kTransparentHuge = 1u << 1,   // huge_hint() can ask for transparent huge pages
  kExplicitHuge = 1u << 2,      // reserve_huge() can map explicit huge pages
  kThreadExitHook = 1u << 3,    // set_thread_exit_hook() works
};

// Bytes of one OS page. Pre: none. Post: a power of two >= 4096.
size_t page_size() noexcept;

// Which Feature bits this platform has.
unsigned features() noexcept;

// Reserve `size` bytes aligned to `align` (a power of two, >= page_size()).
// Post: the range is zero-filled on first touch; nullptr on failure (no partial mapping left).
void* reserve(size_t size, size_t align) noexcept;

// Give a reserved range back entirely. Pre: exactly a range (or a tail/head piece of one)
// returned by reserve().
void release(void* p, size_t size) noexcept;

// Make [p, p+size) usable. Post: true on success; the contents of pages never touched or
// purged since are zero. On Linux this is a no-op that returns true.
bool commit(void* p, size_t size) noexcept;

// Strict commit accounting (Linux's vm.overcommit_memory = 2, where the kernel charges every
// writable private mapping in full at mmap, MAP_NORESERVE or not, against a system-wide limit):
// reserve_inaccessible maps address space that is not charged and faults on any access;
// commit_charged makes [p, p+size) of it readable and writable, charged (false where the
// limit refuses: ENOMEM); decommit makes it inaccessible again, its pages and its charge given
// back (a new mapping over the range: its madvise flags are gone).
void* reserve_inaccessible(size_t size, size_t align) noexcept;
bool commit_charged(void* p, size_t size) noexcept;
bool decommit(void* p, size_t size) noexcept;
// [p, p+size) (all zero, never written) replaced by a new read-only mapping of zeros: not
// charged under strict accounting; commit_charged makes pieces of it writable.
bool remap_zero_readonly(void* p, size_t size) noexcept;

// Return the physical memory of [p, p+size) to the OS now; the range stays reserved and reads
// back as zero (Linux: MADV_DONTNEED). Returns false if the OS refused (memory stays valid).
bool purge(void* p, size_t size) noexcept;

// Move the pages of [from, from+size) to [to, to+size), replacing whatever was mapped there,
// without copying them: afterwards that part of `to` holds the old contents and of `from` stays
// reserved and reads as zero (nothing of it resident). Both ranges lie in memory from reserve(),
// do not overlap, and start 2 MiB-aligned; the mappings of `from` split only at 2 MiB
// boundaries. Returns how many bytes from the start it moved, a multiple of 2 MiB or all of it:
// 0 where the platform cannot (the caller copies the rest). Linux: mremap(MREMAP_FIXED |
// MREMAP_DONTUNMAP) per 2 MiB, kernel 5.7 and later.
size_t move_pages(void* from, size_t size, void* to) noexcept;
// Exchange the pages of [a, a+size) and [b, b+size) without copying them, 2 MiB at a time
// through `scratch` (a 2 MiB-aligned range from reserve() of 2 MiB that no other thread uses
// meanwhile): afterwards that part of `b` holds a's contents and of `a` b's former pages. The
// ranges meet move_pages' conditions (both of them, as both are moved from). Returns how many
// bytes from the start moved to `b`, a multiple of 2 MiB or all of it; 0 where the platform
// cannot (the caller copies the rest). b's former pages are free memory to the caller: where
// the kernel refuses to put them back at `a` (or at `b`, when a's pages did not move) they are
// given back to the OS, and that part reads as zero.
size_t swap_pages(void* a, void* b, size_t size, void* scratch) noexcept;
// Make [p, p+size) inaccessible (a guard) or accessible again. Returns false on failure.
bool protect(void* p, size_t size, bool accessible) noexcept;

// Hint that [p, p+size) should be backed by transparent huge pages. Best effort: false where
// the system refused (its limit of mappings), and the flag may then be set on part of the range.
bool huge_hint(void* p, size_t size) noexcept;
// Undo huge_hint on [p, p+size): no transparent huge pages there, whatever the system default.
bool huge_unhint(void* p, size_t size) noexcept;

// Map `size` bytes of explicit huge pages (MAP_HUGETLB), aligned to `align`; nullptr when the
// system has none available.
void* reserve_huge(size_t size, size_t align) noexcept;

// An integer that identifies the calling thread and is never 0: the thread pointer, one
// instruction on the architectures we know (it is on the free fast path). On x86-64 the builtin
// lets the compiler compare with %fs:0 directly (one instruction instead of a load and a compare).
inline uintptr_t thread_id() noexcept {
#if defined(__x86_64__)
  return reinterpret_cast<uintptr_t>(__builtin_thread_pointer());
#elif defined(__aarch64__)
  uintptr_t tid;
  __asm__ volatile("mrs %0, tpidr_el0" : "=r"(tid));
  return tid;
#else
  static thread_local char marker;
  return reinterpret_cast<uintptr_t>(&marker);
#endif
}

// Register `fn(arg)` to run when the calling thread exits, while it can still allocate.
// The hook is process-wide: install it once with install_thread_exit_hook(), then call
// arm_thread_exit_hook(arg) in each thread that must be told (arg != nullptr).
bool install_thread_exit_hook(void (*fn)(void*)) noexcept;
void arm_thread_exit_hook(void* arg) noexcept;

// 64 random bits: a secret from the kernel (one system call per process at most) mixed with a
// counter, so that no two calls return the same bits.
uint64_t random_u64() noexcept;

// Milliseconds of a monotonic clock.
uint64_t clock_ms() noexcept;
// The same clock read cheaply (the kernel's last tick: a few ms behind at most, 5 ns instead of
// 23 here), for the checks made before every blocking call.
uint64_t clock_ms_coarse() noexcept;
// The clock `id` (CLOCK_MONOTONIC, CLOCK_REALTIME...) as clock_gettime reads it; false if the
// kernel refuses it. Through the vDSO where clock_ms goes through it.
bool clock_read(int id, timespec* ts) noexcept;
// Whether the clock is read through the kernel's vDSO directly (x86-64 Linux, once the library's
// constructor has found it), rather than through libc or a system call.
bool clock_from_vdso() noexcept;

// Write bytes to the standard error stream (fd 2) without allocating.
void write_stderr(const char* s, size_t n) noexcept;
// Keep a private duplicate of fd 2 for write_stderr, for messages printed at exit by programs
// that close stderr in their own exit handlers (coreutils do).
void keep_stderr() noexcept;

// Terminate the process abnormally after a fatal message (SIGABRT, no cleanup).
[[noreturn]] void abort_process() noexcept;

// Register fork handlers (prepare, parent, child). Returns false if it could not.
bool on_fork(void (*prepare)(), void (*parent)(), void (*child)()) noexcept;

// The process environment as an array of "NAME=value" strings, or nullptr.
char** environment() noexcept;

// Read a whole small file (procfs, sysfs, a config file) into buf without allocating.
// Returns the byte count read (0..cap) or -1 if the file cannot be opened.
long read_file(const char* path, char* buf, size_t cap) noexcept;

// Physical memory of the machine in bytes (0 if unknown).
uint64_t physical_memory() noexcept;

// Resident set size of this process in bytes (0 if unknown).
uint64_t resident_bytes() noexcept;

// Classify an address that is not ours, for error messages and foreign frees.
enum class AddressKind { kUnmapped, kStack, kFileImage, kHeapBrk, kAnonymous };
AddressKind classify(uintptr_t addr) noexcept;

// The next definition of a C symbol after this library's own (glibc's `free` when we interpose
// it), or nullptr. May allocate through our malloc; call with no engine lock held.
void* next_symbol(const char* name) noexcept;
// The same, looked up once and kept in `slot` (again while it is not found).
template <class Fn>
Fn next_symbol_cached(std::atomic<Fn>& slot, const char* name) noexcept {
  Fn fn = slot.load(std::memory_order_acquire);
  if (fn == nullptr) {
    fn = reinterpret_cast<Fn>(next_symbol(name));
    if (fn != nullptr) slot.store(fn, std::memory_order_release);
  }
  return fn;
}

// A symbol of a shared library loaded on first use (dlopen of `library`, RTLD_LOCAL), or
// nullptr. Allocates through our malloc; call with no engine lock held.
void* library_symbol(const char* library, const char* name) noexcept;

// ---- Fault injection (tests) ---------------------------------------------------------------
// Make requests to the OS for memory (reserve, reserve_huge, commit) fail on purpose:
//   kNth: only the n-th request from now;  kEvery: every n-th;  kRandom: each with chance 1/n.
// kOff turns it off. Failed requests behave exactly like an OS refusal.
enum class FaultMode { kOff, kNth, kEvery, kRandom };
void set_fault_injection(FaultMode mode, uint64_t n, uint64_t seed) noexcept;
uint64_t faults_injected() noexcept;   // requests failed on purpose so far

// A short spin-then-yield pause for state waits (a flag another thread clears in a few
// instructions).
void yield() noexcept;

// The engine's locks sleep on a 32-bit word instead of spinning (core/base.hpp, Lock).
// wait_on: blocks while *word holds `expected`; returns at once where it holds something else,
// and may return without a wake (a signal): the caller checks the word again. wake_one: wakes
// one thread blocked in wait_on(word), if any. Both are process-private, leave errno as it was,
// and never allocate. Linux: futex(FUTEX_WAIT_PRIVATE / FUTEX_WAKE_PRIVATE); a platform without
// such a call may make wait_on a yield() and wake_one nothing (the lock then spins and yields).
void wait_on(std::atomic<uint32_t>* word, uint32_t expected) noexcept;
void wake_one(std::atomic<uint32_t>* word) noexcept;

}  // namespace nebula::os

// The static shape a platform must have, checked where the engine includes this header.
namespace nebula::os::detail {
template <class T = void>
concept Platform = requires(void* p, size_t n) {
  { page_size() } -> std::same_as<size_t>;
  { reserve(n, n) } -> std::same_as<void*>;
  { commit(p, n) } -> std::same_as<bool>;
  { purge(p, n) } -> std::same_as<bool>;
  { thread_id() } -> std::same_as<uintptr_t>;
};
static_assert(Platform<>, "platform/os.hpp: the platform layer lacks a required function");
}  // namespace nebula::os::detail
