// interpose/new_delete.cpp: every replaceable operator new and delete. Built with exceptions
// (the rest of the engine is not): a failed allocation calls the new-handler until it gives
// memory or throws, and throws std::bad_alloc when there is no handler.
#include <cstddef>
#include <new>

#include "interpose/export.hpp"

using namespace nebula;

namespace {

[[gnu::noinline, gnu::cold]] void* new_slow(std::size_t n, std::size_t align) {
  for (;;) {
    std::new_handler handler = std::get_new_handler();
    if (handler == nullptr) throw std::bad_alloc();
    handler();
    void* p = align <= kMinAlign ? alloc(n) : alloc_aligned(align, n);
    if (p != nullptr) return p;
  }
}

[[gnu::noinline, gnu::cold]] void* new_slow_nothrow(std::size_t n, std::size_t align) noexcept {
  try {
    return new_slow(n, align);
  } catch (...) {
    return nullptr;
  }
}

inline void* new_impl(std::size_t n) {
  void* p = alloc(n);
  if (NEBULA_LIKELY(p != nullptr)) return p;
  return new_slow(n, 0);
}
inline void* new_impl_nothrow(std::size_t n) noexcept {
  void* p = alloc(n);
  if (NEBULA_LIKELY(p != nullptr)) return p;
  return new_slow_nothrow(n, 0);
}
inline void* new_aligned(std::size_t n, std::align_val_t al) {
  std::size_t a = static_cast<std::size_t>(al);
  void* p = alloc_aligned_pow2(a, n);
  if (NEBULA_LIKELY(p != nullptr)) return p;
  return new_slow(n, a);
}
inline void* new_aligned_nothrow(std::size_t n, std::align_val_t al) noexcept {
  std::size_t a = static_cast<std::size_t>(al);
  void* p = alloc_aligned_pow2(a, n);
  if (NEBULA_LIKELY(p != nullptr)) return p;
  return new_slow_nothrow(n, a);
}

}  // namespace

#define NEBULA_NEW_API __attribute__((visibility("default")))

NEBULA_NEW_API void* operator new(std::size_t n) { return new_impl(n); }
NEBULA_NEW_API void* operator new[](std::size_t n) { return new_impl(n); }
NEBULA_NEW_API void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return new_impl_nothrow(n); }
NEBULA_NEW_API void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return new_impl_nothrow(n); }
NEBULA_NEW_API void* operator new(std::size_t n, std::align_val_t a) { return new_aligned(n, a); }
NEBULA_NEW_API void* operator new[](std::size_t n, std::align_val_t a) { return new_aligned(n, a); }
NEBULA_NEW_API void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return new_aligned_nothrow(n, a); }
NEBULA_NEW_API void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept { return new_aligned_nothrow(n, a); }

NEBULA_NEW_API void operator delete(void* p) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete[](void* p) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete(void* p, const std::nothrow_t&) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete[](void* p, const std::nothrow_t&) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete(void* p, std::size_t n) noexcept { dealloc_sized(p, n); }
NEBULA_NEW_API void operator delete[](void* p, std::size_t n) noexcept { dealloc_sized(p, n); }
NEBULA_NEW_API void operator delete(void* p, std::align_val_t) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete[](void* p, std::align_val_t) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept { dealloc(p); }
NEBULA_NEW_API void operator delete(void* p, std::size_t n, std::align_val_t a) noexcept { dealloc_aligned_sized(p, static_cast<std::size_t>(a), n); }
NEBULA_NEW_API void operator delete[](void* p, std::size_t n, std::align_val_t a) noexcept { dealloc_aligned_sized(p, static_cast<std::size_t>(a), n); }
