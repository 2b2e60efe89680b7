// interpose/glibc.cpp: glibc's malloc extras: mallinfo, mallinfo2, malloc_trim, mallopt,
// malloc_stats, malloc_info, answered from the engine's statistics.
#include <cstdio>
#include <malloc.h>

#include "interpose/export.hpp"
#include "nebula/mem.h"

namespace nebula {
void stats_collect(nebula_mem_stats* out) noexcept;
}

using namespace nebula;

namespace {
struct mallinfo2 info2() {
  nebula_mem_stats st;
  stats_collect(&st);
  struct mallinfo2 mi = {};
  mi.arena = st.committed_bytes - st.huge_bytes;         // non-mmapped space
  mi.hblkhd = st.huge_bytes;                              // space in huge blocks
  mi.hblks = 0;
  mi.uordblks = st.live_bytes;                            // bytes in use
  mi.fordblks = st.committed_bytes > st.live_bytes ? st.committed_bytes - st.live_bytes : 0;
  mi.keepcost = 0;
  mi.usmblks = st.committed_peak;
  return mi;
}
int clamp_int(size_t v) { return v > 0x7fffffff ? 0x7fffffff : static_cast<int>(v); }
}  // namespace

NEBULA_API struct mallinfo2 mallinfo2() noexcept { return info2(); }

NEBULA_API struct mallinfo mallinfo() noexcept {
  struct mallinfo2 m2 = info2();
  struct mallinfo m = {};
  m.arena = clamp_int(m2.arena);
  m.hblkhd = clamp_int(m2.hblkhd);
  m.uordblks = clamp_int(m2.uordblks);
  m.fordblks = clamp_int(m2.fordblks);
  m.usmblks = clamp_int(m2.usmblks);
  return m;
}

NEBULA_API int malloc_trim(size_t pad) noexcept { return trim(pad); }

// glibc's tuning parameters do not map onto this engine: accept the known ones (return 1, as
// glibc does on success) and refuse the rest.
NEBULA_API int mallopt(int param, int value) noexcept {
  (void)value;
  switch (param) {
    case M_MXFAST: case M_TRIM_THRESHOLD: case M_TOP_PAD: case M_MMAP_THRESHOLD:
    case M_MMAP_MAX: case M_CHECK_ACTION: case M_PERTURB: case M_ARENA_TEST: case M_ARENA_MAX:
      return 1;
    default:
      return 0;
  }
}

NEBULA_API void malloc_stats() noexcept { stats_print(true); }

NEBULA_API int malloc_info(int options, FILE* fp) noexcept {
  if (options != 0 || fp == nullptr) return -1;
  nebula_mem_stats st;
  stats_collect(&st);
  // fprintf may allocate through our malloc; no lock of ours is held here.
  fprintf(fp,
          "<malloc version=\"nebula-1\">\n"
          "<total type=\"live\" size=\"%llu\"/>\n"
          "<total type=\"committed\" size=\"%llu\"/>\n"
          "<total type=\"committed_peak\" size=\"%llu\"/>\n"
          "<total type=\"huge\" size=\"%llu\"/>\n"
          "<total type=\"purged\" size=\"%llu\"/>\n"
          "<system type=\"reserved\" size=\"%llu\"/>\n"
          "</malloc>\n",
          static_cast<unsigned long long>(st.live_bytes), static_cast<unsigned long long>(st.committed_bytes),
          static_cast<unsigned long long>(st.committed_peak), static_cast<unsigned long long>(st.huge_bytes),
          static_cast<unsigned long long>(st.purged_bytes), static_cast<unsigned long long>(st.reserved_bytes));
  return 0;
}
