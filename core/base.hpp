// core/base.hpp: small utilities shared by the engine: bit operations, the lock, fatal errors.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/config.hpp"
#include "platform/os.hpp"

namespace nebula {

constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) & ~(a - 1); }
constexpr bool is_pow2(size_t n) { return n != 0 && (n & (n - 1)) == 0; }
inline unsigned ctz64(uint64_t x) { return static_cast<unsigned>(__builtin_ctzll(x)); }
inline unsigned clz64(uint64_t x) { return static_cast<unsigned>(__builtin_clzll(x)); }
// Written out rather than __builtin_popcountll: without -mpopcnt that builtin calls libgcc_s's
// __popcountdi2, and the drop-in library must not need libgcc_s (see meson.build).
__attribute__((always_inline)) inline unsigned popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<unsigned>((x * 0x0101010101010101ull) >> 56);
}

// The lock of the engine's few global structures (arenas, abandoned segments, the heap pool)
// and of each heap's segments. Held only for short, non-allocating sections. A thread that finds
// it taken spins briefly (the holder, on another core, is about to let go), then sleeps on the
// lock's word (a futex on Linux) until the holder wakes it: with more threads than cores the
// waiters give their cores to the holder and the threads with work, and wait without spinning
// or yielding in a loop, however many they are. The word: 0 free, 1 taken, 2 taken and
// perhaps slept on (the holder's unlock then wakes one sleeper). Constant-initialised, so usable
// before any constructor.
// Engine locks the calling thread holds (slow paths only): the fatal path loads its unwinder
// with dlopen, which allocates, and skips the backtrace while any engine lock is held.
extern __thread unsigned t_locks_held __attribute__((tls_model("initial-exec")));

class Lock {
 public:
  constexpr Lock() = default;
  void lock() noexcept {
    ++t_locks_held;
    uint32_t free = 0;
    if (NEBULA_UNLIKELY(!word_.compare_exchange_strong(free, 1, std::memory_order_acquire,
                                                        std::memory_order_relaxed)))
      lock_contended();
  }
  bool try_lock() noexcept {
    uint32_t free = 0;
    bool got = word_.load(std::memory_order_relaxed) == 0 &&
               word_.compare_exchange_strong(free, 1, std::memory_order_acquire, std::memory_order_relaxed);
    if (got) ++t_locks_held;
    return got;
  }
  void unlock() noexcept {
    if (NEBULA_UNLIKELY(word_.exchange(0, std::memory_order_release) == 2)) os::wake_one(&word_);
    --t_locks_held;
  }
  // After fork() in the child: the lock was taken by the forking thread (the fork handlers'
  // prepare step), which is the child's only thread. Its sleepers, if any, are not in the child.
  void reset() noexcept {
    word_.store(0, std::memory_order_relaxed);
    if (t_locks_held > 0) --t_locks_held;
  }
  // After fork() in the child: a lock that another thread, gone in the child, may have held.
  void reset_orphan() noexcept { word_.store(0, std::memory_order_relaxed); }

  // Spins before a waiter sleeps: about a microsecond, the length of the sections it guards.
  static constexpr unsigned kSpins = 64;

 private:
  // Out of line and named, so that a profile's call chains show the waits (bench/lockwaits.sh).
  NEBULA_NOINLINE NEBULA_COLD void lock_contended() noexcept {
    for (unsigned i = 0; i < kSpins; ++i) {
      cpu_relax();
      uint32_t free = 0;
      if (word_.load(std::memory_order_relaxed) == 0 &&
          word_.compare_exchange_weak(free, 1, std::memory_order_acquire, std::memory_order_relaxed))
        return;
    }
    // Mark the lock slept on, then sleep while it stays so. Taking it here leaves the mark: the
    // unlock after it makes one wake call that may find nobody, which is cheaper than losing one.
    while (word_.exchange(2, std::memory_order_acquire) != 0) os::wait_on(&word_, 2);
  }
  static void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  }
  std::atomic<uint32_t> word_{0};
};

class LockGuard {
 public:
  explicit LockGuard(Lock& l) noexcept : l_(l) { l_.lock(); }
  ~LockGuard() { l_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  Lock& l_;
};

// ---- Messages ------------------------------------------------------------------------------
// A fixed buffer that formats text without allocating; messages are written with one write().
class Message {
 public:
  Message& str(const char* s) noexcept;
  Message& num(uint64_t v) noexcept;
  Message& hex(uintptr_t v) noexcept;
  Message& bytes(uint64_t v) noexcept;  // human-readable: 12.3 MiB
  Message& ch(char c) noexcept;
  void emit() noexcept;  // write to stderr
  const char* data() const noexcept { return buf_; }
  size_t size() const noexcept { return len_; }

 private:
  char buf_[512];
  size_t len_ = 0;
};

// The one-line message for client misuse: names the pointer and the operation, then aborts.
[[noreturn]] NEBULA_COLD void fatal_pointer(const char* op, const void* p, const char* what) noexcept;
[[noreturn]] NEBULA_COLD void fatal(const char* what) noexcept;

// NEBULA_CHECK: always on, for client misuse. NEBULA_ASSERT: internal invariants, only in a
// -Dchecks=full build (it still type-checks in release).
#define NEBULA_ASSERT(cond)                                               \
  do {                                                                    \
    if constexpr (::nebula::kFullChecks) {                                \
      if (NEBULA_UNLIKELY(!(cond))) ::nebula::fatal("assertion failed: " #cond); \
    }                                                                     \
  } while (0)

}  // namespace nebula
