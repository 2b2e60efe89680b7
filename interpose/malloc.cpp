// interpose/malloc.cpp: the C allocation API, exported under its standard names.
#include <cstddef>
#include <malloc.h>
#include <stdlib.h>

#include "interpose/export.hpp"

using namespace nebula;

NEBULA_API void* malloc(size_t n) noexcept { return alloc(n); }
NEBULA_API void free(void* p) noexcept { dealloc(p); }
NEBULA_API void* calloc(size_t c, size_t n) noexcept { return alloc_checked_zero(c, n); }
NEBULA_API void* realloc(void* p, size_t n) noexcept { return realloc_block(p, n); }
NEBULA_API void* reallocarray(void* p, size_t c, size_t n) noexcept { return realloc_array(p, c, n); }
NEBULA_API void* memalign(size_t a, size_t n) noexcept { return alloc_aligned(a, n); }
NEBULA_API int posix_memalign(void** out, size_t a, size_t n) noexcept { return alloc_posix_aligned(out, a, n); }
NEBULA_API void* aligned_alloc(size_t a, size_t n) noexcept { return alloc_aligned_c11(a, n); }
NEBULA_API void* valloc(size_t n) noexcept { return alloc_page_aligned(n); }
NEBULA_API void* pvalloc(size_t n) noexcept { return alloc_page_aligned_rounded(n); }
NEBULA_API size_t malloc_usable_size(void* p) noexcept { return usable_size(p); }
NEBULA_API void free_sized(void* p, size_t n) noexcept { dealloc_sized(p, n); }
NEBULA_API void free_aligned_sized(void* p, size_t a, size_t n) noexcept { dealloc_aligned_sized(p, a, n); }
NEBULA_API void cfree(void* p) noexcept NEBULA_ALIAS(free);

// glibc's internal names, which some programs and libraries call directly.
#pragma GCC diagnostic ignored "-Wmissing-attributes"
NEBULA_API void* __libc_malloc(size_t n) noexcept NEBULA_ALIAS(malloc);
NEBULA_API void __libc_free(void* p) noexcept NEBULA_ALIAS(free);
NEBULA_API void* __libc_calloc(size_t c, size_t n) noexcept NEBULA_ALIAS(calloc);
NEBULA_API void* __libc_realloc(void* p, size_t n) noexcept NEBULA_ALIAS(realloc);
NEBULA_API void* __libc_memalign(size_t a, size_t n) noexcept NEBULA_ALIAS(memalign);
NEBULA_API void* __libc_valloc(size_t n) noexcept NEBULA_ALIAS(valloc);
NEBULA_API void* __libc_pvalloc(size_t n) noexcept NEBULA_ALIAS(pvalloc);
