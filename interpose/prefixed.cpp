// interpose/prefixed.cpp: the nebula_ entry points and the nebula_mem_ C API, in both builds.
#include <cstdlib>

#include "core/budget.hpp"
#include "interpose/export.hpp"
#include "nebula/mem.h"

namespace nebula {
void stats_collect(nebula_mem_stats* out) noexcept;
uint64_t budget_register(nebula_mem_pressure_fn fn, void* ctx) noexcept;
bool budget_unregister(uint64_t handle) noexcept;
bool budget_set_limit(uint64_t bytes) noexcept;
int budget_level() noexcept;
}

using namespace nebula;

NEBULA_API void* nebula_malloc(size_t n) { return alloc(n); }
NEBULA_API void* nebula_calloc(size_t c, size_t n) { return alloc_checked_zero(c, n); }
NEBULA_API void* nebula_realloc(void* p, size_t n) { return realloc_block(p, n); }
NEBULA_API void* nebula_aligned_alloc(size_t a, size_t n) { return alloc_aligned_c11(a, n); }
NEBULA_API int nebula_posix_memalign(void** out, size_t a, size_t n) { return alloc_posix_aligned(out, a, n); }
NEBULA_API void nebula_free(void* p) { dealloc(p); }
NEBULA_API size_t nebula_usable_size(const void* p) { return usable_size(p); }

// Active when the process's malloc hands out our blocks.
NEBULA_API int nebula_mem_is_active(void) {
  void* p = ::malloc(1);
  int ours = owns(p) ? 1 : 0;
  ::free(p);
  return ours;
}
NEBULA_API const char* nebula_mem_version(void) { return "0.1.0"; }
NEBULA_API int nebula_mem_get_stats(nebula_mem_stats* out) {
  stats_collect(out);
  return 0;
}
NEBULA_API void nebula_mem_print_stats(void) { stats_print(true); }
NEBULA_API int nebula_mem_collect(void) { return trim(0); }

NEBULA_API uint64_t nebula_mem_pressure_register(nebula_mem_pressure_fn fn, void* ctx) { return budget_register(fn, ctx); }
NEBULA_API int nebula_mem_pressure_unregister(uint64_t handle) { return budget_unregister(handle) ? 0 : -1; }
NEBULA_API int nebula_mem_set_budget(uint64_t bytes) { return budget_set_limit(bytes) ? 0 : -1; }
NEBULA_API uint64_t nebula_mem_get_budget(void) {
  engine_init();
  return g_budget.limit.load(std::memory_order_relaxed);
}
NEBULA_API int nebula_mem_pressure_level_now(void) { return budget_level(); }
NEBULA_API int nebula_mem_fault_inject(const char* spec) {
  engine_init();
  return fault_injection_set(spec) ? 0 : -1;
}
NEBULA_API uint64_t nebula_mem_faults_injected(void) { return os::faults_injected(); }
