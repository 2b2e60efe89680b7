// core/stats.cpp: statistics: merged on read from the per-heap counters, the global counters
// and a walk of the live segments. NEBULA_MEM_STATS=1 prints the summary at exit.
#include <cstring>

#include "core/budget.hpp"
#include "core/engine.hpp"
#include "core/options.hpp"
#include "nebula/mem.h"

namespace nebula {
namespace {

struct Collect {
  nebula_mem_stats* out;
  // Bytes in the live heaps' foreign caches: free as far as the program is concerned, though
  // the pages they belong to count them as handed out.
  uint64_t cached;
};

void add_heap(Heap* h, void* ctx) {
  auto* c = static_cast<Collect*>(ctx);
  nebula_mem_stats* out = c->out;
  out->heaps++;
  ForeignCache* fc = __atomic_load_n(&h->fc, __ATOMIC_ACQUIRE);
  for (uint64_t m = fc != nullptr ? __atomic_load_n(&h->fc_active, __ATOMIC_RELAXED) : 0; m != 0; m &= m - 1) {
    unsigned cls = ctz64(m);
    uint32_t held = __atomic_load_n(&fc->pushed[cls], __ATOMIC_RELAXED) -
                    __atomic_load_n(&fc->page[cls].used, __ATOMIC_RELAXED);
    if (held <= 64) c->cached += static_cast<uint64_t>(held) * kClassSize[cls];  // else a torn read
  }
  for (int i = 0; i < 4; ++i) {
    out->pages_made[i] += h->stats.pages_made[i];
    out->pages_freed[i] += h->stats.pages_freed[i];
  }
  out->slow_path_calls += h->stats.generic_calls;
  out->remote_frees += h->stats.remote_frees;
}

// Live bytes of a segment's pages (owner-written counters, read without stopping the owner).
void add_segment(Segment* s, void* ctx) {
  auto* out = static_cast<nebula_mem_stats*>(ctx);
  if (s->kind != SegmentKind::kNormal) return;
  for (unsigned i = 1; i < kSlicesPerSegment;) {
    Page* p = &s->pages[i];
    uint16_t sc = __atomic_load_n(&p->slice_count, __ATOMIC_RELAXED);
    auto kind = static_cast<PageKind>(__atomic_load_n(reinterpret_cast<const uint8_t*>(&p->kind), __ATOMIC_RELAXED));
    if (kind == PageKind::kNone || sc == 0) {
      ++i;
      continue;
    }
    if (kind == PageKind::kRuns) {  // (its blocks freed by other threads count until collected)
      out->live_bytes += runs_live_bytes(p);
      i += sc;
      continue;
    }
    // Blocks other threads freed and the owner has not collected yet are free too.
    uint32_t used = __atomic_load_n(&p->used, __ATOMIC_RELAXED);
    uint32_t waiting = tf_count(p->thread_free.load(std::memory_order_relaxed));
    if (kind != PageKind::kLarge) used = used > waiting ? used - waiting : 0;
    out->live_bytes += static_cast<uint64_t>(used) * __atomic_load_n(&p->block_size, __ATOMIC_RELAXED);
    i += sc;
  }
}

}  // namespace

void stats_collect(nebula_mem_stats* out) noexcept {
  memset(out, 0, sizeof *out);
  out->committed_bytes = g_counters.committed.load(std::memory_order_relaxed);
  out->committed_peak = g_counters.committed_peak.load(std::memory_order_relaxed);
  out->reserved_bytes = g_counters.reserved.load(std::memory_order_relaxed);
  out->purged_bytes = g_counters.purged.load(std::memory_order_relaxed);
  out->purge_calls = g_counters.purge_calls.load(std::memory_order_relaxed);
  out->segments = g_counters.segments.load(std::memory_order_relaxed);
  out->huge_bytes = g_counters.huge_live.load(std::memory_order_relaxed);
  out->abandoned_segments = g_counters.abandoned.load(std::memory_order_relaxed);
  out->reclaimed_segments = g_counters.reclaimed.load(std::memory_order_relaxed);
  out->foreign_frees = g_counters.foreign_frees.load(std::memory_order_relaxed);
  out->budget = g_budget.limit.load(std::memory_order_relaxed);
  out->budget_peak = g_budget.peak.load(std::memory_order_relaxed);
  out->pressure_level = static_cast<uint64_t>(g_budget.reported.load(std::memory_order_relaxed));
  for (int i = 0; i < 5; ++i) out->level_crossings[i] = g_budget.crossings[i].load(std::memory_order_relaxed);
  out->budget_failures = g_budget.failures.load(std::memory_order_relaxed);
  HeapStats retired{};
  Collect c{out, 0};
  for_each_live_heap(add_heap, &c, &retired);
  uint64_t cached = c.cached;
  for (int i = 0; i < 4; ++i) {
    out->pages_made[i] += retired.pages_made[i];
    out->pages_freed[i] += retired.pages_freed[i];
  }
  out->slow_path_calls += retired.generic_calls;
  out->remote_frees += retired.remote_frees;
  out->remote_frees += g_counters.remote_frees_no_heap.load(std::memory_order_relaxed);
  arena_walk_segments(add_segment, out);
  out->live_bytes = out->live_bytes > cached ? out->live_bytes - cached : 0;
  out->live_bytes += out->huge_bytes;
}

void stats_print(bool detailed) noexcept {
  nebula_mem_stats st;
  stats_collect(&st);
  Message m;
  m.str("nebula-memory: live ").bytes(st.live_bytes).str(", committed ").bytes(st.committed_bytes)
      .str(" (peak ").bytes(st.committed_peak).str("), purged ").bytes(st.purged_bytes)
      .str(" in ").num(st.purge_calls).str(" calls (free blocks of sparse pages ")
      .bytes(g_counters.punched.load(std::memory_order_relaxed)).str(", carved again ")
      .bytes(g_counters.refilled.load(std::memory_order_relaxed)).str("), reserved ").bytes(st.reserved_bytes).ch('\n');
  m.emit();
  if (st.budget != 0 || st.budget_failures != 0 || st.level_crossings[4] != 0) {
    Message b;
    b.str("nebula-memory: budget ");
    if (st.budget == 0) b.str("none");
    else b.bytes(st.budget);
    b.str(", in use ").bytes(st.committed_bytes).str(", peak ").bytes(st.budget_peak)
        .str("; crossings low ").num(st.level_crossings[1]).str(", medium ").num(st.level_crossings[2])
        .str(", high ").num(st.level_crossings[3]).str(", critical ").num(st.level_crossings[4])
        .str("; failed allocations ").num(st.budget_failures).ch('\n');
    b.emit();
  }
  if (!detailed) return;
  Message t;
  t.str("nebula-memory: pages made/freed: small ").num(st.pages_made[0]).ch('/').num(st.pages_freed[0])
      .str(", medium ").num(st.pages_made[1]).ch('/').num(st.pages_freed[1])
      .str(", large ").num(st.pages_made[2]).ch('/').num(st.pages_freed[2])
      .str("; huge live ").bytes(st.huge_bytes).ch('\n');
  t.emit();
  Message u;
  u.str("nebula-memory: heaps ").num(st.heaps).str(", segments ").num(st.segments)
      .str(", abandoned ").num(st.abandoned_segments).str(", reclaimed ").num(st.reclaimed_segments)
      .str(", slow-path allocations ").num(st.slow_path_calls).str(", remote frees ").num(st.remote_frees)
      .str(", foreign frees ").num(st.foreign_frees).ch('\n');
  u.emit();
}

void stats_at_exit() noexcept {
  if (option_bool(Option::kStats)) stats_print(true);
}

// Runs when the process exits (or the library is unloaded), after main's atexit handlers.
__attribute__((destructor)) static void nebula_at_exit() { stats_at_exit(); }

}  // namespace nebula
