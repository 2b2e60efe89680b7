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
inline unsigned popcount64(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return static_cast<unsigned>((x * 0x0101010101010101ull) >> 56);
}

// A test-and-test-and-set lock for the engine's few global structures (arenas, abandoned
// segments, the heap pool). Held only for short, non-allocating sections; a thread that
// waits spins briefly then yields. Constant-initialised, so usable before any constructor.
// Engine locks the calling thread holds (slow paths only): the fatal path loads its unwinder
// with dlopen, which allocates, and skips the backtrace while any engine lock is held.
extern __thread unsigned t_locks_held __attribute__((tls_model("initial-exec")));

class SpinLock {
 public:
  constexpr SpinLock() = default;
  void lock() noexcept {
    ++t_locks_held;
    for (;;) {
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
      unsigned spins = 0;
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins < 64) __builtin_ia32_pause_or_nothing();
        else os::yield();
      }
    }
  }
  bool try_lock() noexcept {
    bool got = !locked_.load(std::memory_order_relaxed) && !locked_.exchange(true, std::memory_order_acquire);
    if (got) ++t_locks_held;
    return got;
  }
  void unlock() noexcept {
    locked_.store(false, std::memory_order_release);
    --t_locks_held;
  }
  // After fork() in the child: the lock was taken by the forking thread (the fork handlers'
  // prepare step), which is the child's only thread.
  void reset() noexcept {
    locked_.store(false, std::memory_order_relaxed);
    if (t_locks_held > 0) --t_locks_held;
  }
  // After fork() in the child: a lock that another thread, gone in the child, may have held.
  void reset_orphan() noexcept { locked_.store(false, std::memory_order_relaxed); }

 private:
  static void __builtin_ia32_pause_or_nothing() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  }
  std::atomic<bool> locked_{false};
};

class LockGuard {
 public:
  explicit LockGuard(SpinLock& l) noexcept : l_(l) { l_.lock(); }
  ~LockGuard() { l_.unlock(); }
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;

 private:
  SpinLock& l_;
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
