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
