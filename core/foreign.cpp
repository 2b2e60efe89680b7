// core/foreign.cpp: pointers that are not ours.
//
// A pointer outside every live segment is never followed into our metadata. If it lies in
// memory that glibc's own malloc manages (the brk heap or an anonymous mapping, with a
// plausible chunk header) it was handed out by glibc: memory allocated before the preload
// took effect, or by a library bound with RTLD_DEEPBIND. It goes back to glibc's free. Anything
// else (a stack, a global, our own arena space, an unmapped address) stops the process with a
// one-line message naming the pointer.
#include <cstring>

#include "core/engine.hpp"

namespace nebula {
namespace {

using FreeFn = void (*)(void*);
using UsableFn = size_t (*)(void*);

std::atomic<FreeFn> g_libc_free{nullptr};
std::atomic<UsableFn> g_libc_usable{nullptr};

const char* describe(uintptr_t a, os::AddressKind k) {
  if (arena_contains(a)) return "not a live block (freed already, or never returned by malloc)";
  switch (k) {
    case os::AddressKind::kStack: return "pointer into a stack, not returned by malloc";
    case os::AddressKind::kFileImage: return "pointer into a global or a mapped file, not returned by malloc";
    case os::AddressKind::kUnmapped: return "pointer to unmapped memory, not returned by malloc";
    default: return "not allocated by this allocator nor by glibc's malloc";
  }
}

// Does p look like a block of glibc's malloc? Its chunk header sits just below it.
bool looks_like_glibc_chunk(uintptr_t a, os::AddressKind k) {
  if (a % 16 != 0) return false;
  if (k != os::AddressKind::kHeapBrk && k != os::AddressKind::kAnonymous) return false;
  if (arena_contains(a)) return false;
  size_t header = reinterpret_cast<const size_t*>(a)[-1];
  size_t size = header & ~size_t{7};
  if (size < 32 || size % 16 != 0) return false;
  return true;
}

}  // namespace

void invalid_pointer(const char* op, const void* p) noexcept {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  os::AddressKind k = os::classify(a);
  fatal_pointer(op, p, describe(a, k));
}

void foreign_free(void* p) noexcept {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  os::AddressKind k = os::classify(a);
  if (!looks_like_glibc_chunk(a, k)) fatal_pointer("free", p, describe(a, k));
  FreeFn f = os::next_symbol_cached(g_libc_free, "free");
  if (f == nullptr) fatal_pointer("free", p, describe(a, k));
  g_counters.foreign_frees.fetch_add(1, std::memory_order_relaxed);
  f(p);
}

size_t foreign_usable_size(const void* p) noexcept {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  os::AddressKind k = os::classify(a);
  if (!looks_like_glibc_chunk(a, k)) fatal_pointer("malloc_usable_size", p, describe(a, k));
  UsableFn f = os::next_symbol_cached(g_libc_usable, "malloc_usable_size");
  if (f == nullptr) return 0;
  return f(const_cast<void*>(p));
}

void* foreign_realloc(void* p, size_t n) noexcept {
  size_t have = foreign_usable_size(p);
  void* q = alloc(n);
  if (q == nullptr) return nullptr;
  memcpy(q, p, have < n ? have : n);
  foreign_free(p);
  return q;
}

}  // namespace nebula
