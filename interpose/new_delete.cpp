// interpose/new_delete.cpp: every replaceable operator new and delete. Built with exceptions
// (the rest of the engine is not): a failed allocation calls the new-handler until it gives
// memory or throws, and throws std::bad_alloc when there is no handler.
//
// The C++ runtime is not a dependency of libnebulamem.so: a C program (git, python3, sqlite3)
// that preloads it would otherwise map libstdc++, libm and libgcc_s, about 1.3 MiB of resident
// memory, for nothing. Every symbol of the runtime this file uses is a weak reference (the
// .weak directives below) and the library is linked with --as-needed, so no DT_NEEDED entry is
// recorded for it. A program that calls operator new has a C++ runtime loaded, and the weak
// references resolve to it; if one were missing anyway, a failed allocation aborts with a
// message instead of calling through a null pointer.
#include <cstddef>
#include <new>

#include "interpose/export.hpp"

__asm__(
    ".weak _ZSt15get_new_handlerv\n"       // std::get_new_handler
    ".weak _ZTISt9bad_alloc\n"             // typeinfo for std::bad_alloc
    ".weak _ZTVSt9bad_alloc\n"             // its vtable
    ".weak _ZNSt9bad_allocD1Ev\n"          // its destructor
    ".weak __cxa_allocate_exception\n"
    ".weak __cxa_throw\n"
    ".weak __cxa_begin_catch\n"
    ".weak __cxa_end_catch\n"
    ".weak __gxx_personality_v0\n"
    ".weak _ZSt9terminatev\n");            // std::terminate: clang++'s handler of an exception
                                           // leaving new_slow_nothrow's catch (noexcept)

// A weak C declaration the compiler cannot assume to be non-null: is the runtime there?
extern "C" void* __cxa_allocate_exception(std::size_t) noexcept __attribute__((weak));

using namespace nebula;

namespace {

[[gnu::noinline, gnu::cold]] void* new_slow(std::size_t n, std::size_t align) {
  for (;;) {
    if (__cxa_allocate_exception == nullptr) fatal("operator new: out of memory, and no C++ runtime is loaded to throw std::bad_alloc");
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
