// nebula/mem.hpp: the C++ API of nebula-memory (namespace nebula::mem).
#pragma once

#include <cstddef>
#include <new>

#include "nebula/mem.h"

namespace nebula::mem {

using Stats = nebula_mem_stats;

inline bool is_active() noexcept { return nebula_mem_is_active() != 0; }
inline const char* version() noexcept { return nebula_mem_version(); }
inline Stats stats() noexcept {
  Stats s{};
  nebula_mem_get_stats(&s);
  return s;
}
inline void print_stats() noexcept { nebula_mem_print_stats(); }
inline bool collect() noexcept { return nebula_mem_collect() != 0; }

// A standard allocator over the prefixed engine entry points: containers that use it allocate
// from nebula-memory even in a process whose default malloc is another one.
template <class T>
struct Allocator {
  using value_type = T;
  Allocator() noexcept = default;
  template <class U>
  Allocator(const Allocator<U>&) noexcept {}
  T* allocate(std::size_t n) {
    if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    void* p = alignof(T) > 16 ? nebula_aligned_alloc(alignof(T), n * sizeof(T)) : nebula_malloc(n * sizeof(T));
    if (p == nullptr) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t) noexcept { nebula_free(p); }
  template <class U>
  bool operator==(const Allocator<U>&) const noexcept { return true; }
};

}  // namespace nebula::mem

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>

namespace nebula::mem {

enum class Pressure : int {
  kNone = NEBULA_MEM_PRESSURE_NONE,
  kLow = NEBULA_MEM_PRESSURE_LOW,
  kMedium = NEBULA_MEM_PRESSURE_MEDIUM,
  kHigh = NEBULA_MEM_PRESSURE_HIGH,
  kCritical = NEBULA_MEM_PRESSURE_CRITICAL,
};

struct PressureEvent {
  Pressure level;
  Pressure previous;
  std::uint64_t committed;   // bytes the allocator holds now
  std::uint64_t budget;      // 0 = none
  std::uint64_t requested;   // kCritical: the allocation that cannot be served
};

inline bool set_budget(std::uint64_t bytes) noexcept { return nebula_mem_set_budget(bytes) == 0; }
inline std::uint64_t budget() noexcept { return nebula_mem_get_budget(); }
inline Pressure pressure() noexcept { return static_cast<Pressure>(nebula_mem_pressure_level_now()); }

// An RAII registration of a pressure callback: the callback runs until the Subscription is
// destroyed (or reset); after that it is not running and will not run again.
//
//   auto sub = nebula::mem::on_pressure([&](const nebula::mem::PressureEvent& e) {
//     if (e.level >= nebula::mem::Pressure::kHigh) cache.clear();
//   });
class Subscription {
 public:
  Subscription() noexcept = default;
  Subscription(Subscription&& o) noexcept : handle_(std::exchange(o.handle_, 0)), fn_(std::move(o.fn_)) {}
  Subscription& operator=(Subscription&& o) noexcept {
    if (this != &o) {
      reset();
      handle_ = std::exchange(o.handle_, 0);
      fn_ = std::move(o.fn_);
    }
    return *this;
  }
  ~Subscription() { reset(); }
  void reset() noexcept {
    if (handle_ != 0) nebula_mem_pressure_unregister(handle_);
    handle_ = 0;
    fn_.reset();
  }
  explicit operator bool() const noexcept { return handle_ != 0; }

 private:
  friend Subscription on_pressure(std::function<void(const PressureEvent&)> fn);
  static void trampoline(const nebula_mem_pressure_event* e, void* ctx) {
    auto* f = static_cast<std::function<void(const PressureEvent&)>*>(ctx);
    (*f)(PressureEvent{static_cast<Pressure>(e->level), static_cast<Pressure>(e->previous), e->committed,
                       e->budget, e->requested});
  }
  std::uint64_t handle_ = 0;
  std::unique_ptr<std::function<void(const PressureEvent&)>> fn_;
};

// Register fn for pressure events; throws std::bad_alloc if 64 callbacks are registered.
inline Subscription on_pressure(std::function<void(const PressureEvent&)> fn) {
  Subscription s;
  s.fn_ = std::make_unique<std::function<void(const PressureEvent&)>>(std::move(fn));
  s.handle_ = nebula_mem_pressure_register(&Subscription::trampoline, s.fn_.get());
  if (s.handle_ == 0) throw std::bad_alloc();
  return s;
}

}  // namespace nebula::mem
