// tests/unit/support.hpp: helpers shared by the unit tests: list walkers over the engine's
// page structures, a worker thread that runs closures on request (so a heap stays alive and
// owned by one thread across test steps), counters and a fixed-seed random generator.
#pragma once

#include <doctest/doctest.h>

#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <set>
#include <thread>

#include "core/engine.hpp"
#include "nebula/mem.h"

namespace unit {

using namespace nebula;

inline size_t list_len(const Block* b, size_t limit = 1u << 24) {
  size_t n = 0;
  while (b != nullptr && n < limit) {
    ++n;
    b = b->next;
  }
  return n;
}

inline bool list_contains(const Block* b, const void* p) {
  for (; b != nullptr; b = b->next)
    if (b == p) return true;
  return false;
}

inline const Block* thread_free_head(const Page* page) {
  return tf_block(page->thread_free.load(std::memory_order_acquire));
}

inline uintptr_t delay_state(const Page* page) {
  return page->thread_free.load(std::memory_order_acquire) & kDelayMask;
}

// The counts of a page's block lists. Blocks on thread_free (and on the owner heap's delayed
// list) are still counted in `used` until the owner collects them (page_collect subtracts them),
// so the owner's invariant is  used + |free| + |local_free| + holes == capacity,
// |thread_free| <= used (holes: blocks whose memory page_punch gave back).
struct PageCounts {
  size_t used, free, local_free, thread_free, capacity, reserved, holes;
  size_t total() const { return used + free + local_free + holes; }
  bool consistent() const { return total() == capacity && thread_free <= used && capacity <= reserved; }
};

// Read a page's counts. Only meaningful while its owner thread is idle.
inline PageCounts page_counts(const Page* page) {
  return PageCounts{page->used, list_len(page->free), list_len(page->local_free),
                    list_len(thread_free_head(page)), page->capacity, page->reserved, page->holes};
}

inline Page* page_of_ptr(const void* p) {
  Segment* s = segment_of(p);
  return page_of(s, p);
}

// The heap's direct table must point, for each 16-byte size step, at the first page of the
// step's class queue (or at the empty page). Returns the number of wrong entries.
inline int direct_table_errors(const Heap* heap) {
  int bad = 0;
  for (size_t i = 0; i < kDirectCount; ++i) {
    unsigned cls = kDirectClass[i];
    const Page* want = heap->queues[cls].first != nullptr ? heap->queues[cls].first : &g_empty_page;
    if (heap->fc_direct & (uint64_t{1} << cls)) want = &heap->fc->page[cls];  // the class's cache first
    if (heap->direct[i] != want) ++bad;
  }
  return bad;
}

// Medium runs (core/runs.cpp) on or off for a scope (NEBULA_MEM_MEDIUM_RUNS; off by default):
// RunsOff for tests of the size classes of (kRunsMin, kRunsMax], which plain requests of that
// range do not reach with runs on (`unit-runs`), RunsOn for the tests of runs.
struct RunsMode {
  bool was = g_runs;
  explicit RunsMode(bool on) { g_runs = on && !g_secure; }
  ~RunsMode() { g_runs = was; }
  RunsMode(const RunsMode&) = delete;
  RunsMode& operator=(const RunsMode&) = delete;
};
struct RunsOff : RunsMode {
  RunsOff() : RunsMode(false) {}
};
struct RunsOn : RunsMode {
  RunsOn() : RunsMode(true) {}
};

// The bytes a request of n gets: its size class, or whole units in a runs page.
inline size_t expected_usable(size_t n) {
  if (g_runs && n > kRunsMin && n <= kRunsMax) return (n + kRunsUnit - 1) & ~(kRunsUnit - 1);
  return kClassSize[size_to_class(n)];
}

// Make the calling (main) thread's heap live: the stats count remote frees only for threads
// that have a heap.
inline void ensure_heap() { nebula_free(nebula_malloc(1)); }

// Give everything free back: reclaim abandoned segments, free empty pages, purge.
// Free p on a new thread that has no heap: the free takes the remote path to p's page (a thread
// with a heap would keep the block in its foreign cache).
inline void dealloc_from_bare_thread(void* p) {
  std::thread t([p] { dealloc(p); });
  t.join();
}

inline void settle() {
  ensure_heap();
  trim(0);
}

// The permissions /proc/self/maps gives the page at p ("rw-p", "---p", ...), or "" where none.
inline std::string mapping_perms(const void* p) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[512];
  std::string out;
  while (f != nullptr && fgets(line, sizeof line, f) != nullptr) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {0};
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && reinterpret_cast<uintptr_t>(p) >= lo &&
        reinterpret_cast<uintptr_t>(p) < hi)
      out = perms;
  }
  if (f != nullptr) fclose(f);
  return out;
}

// What an allocating call returned and the errno it left, read before a doctest report can
// change errno (with -s, the report of each passing CHECK writes to the terminal).
struct CallResult {
  void* p;
  int err;
};
template <class F>
CallResult call_errno(F&& f) {
  errno = 0;
  void* p = f();
  return {p, errno};
}

// Blocks of 64 KiB for `bytes` in all, each filled with `fill`; the first block of each segment
// stays live (returned), so that every segment stays with the heap, and the rest are freed:
// their spans become free resident slices.
inline std::vector<void*> segments_with_free_slices(size_t bytes, uint8_t fill) {
  std::vector<void*> v, kept;
  for (size_t i = 0; i < bytes / (64 * 1024); ++i) {
    void* p = alloc(64 * 1024);
    REQUIRE(p != nullptr);
    memset(p, fill, 64 * 1024);
    v.push_back(p);
  }
  std::set<Segment*> segs;
  for (void* p : v) {
    if (segs.insert(segment_of(p)).second) kept.push_back(p);
    else dealloc(p);
  }
  return kept;
}

inline size_t segments_now() { return g_counters.segments.load(); }
inline size_t committed_now() { return g_counters.committed.load(); }
inline size_t huge_live_now() { return g_counters.huge_live.load(); }

inline nebula_mem_stats stats() {
  nebula_mem_stats st;
  nebula_mem_get_stats(&st);
  return st;
}

// A pattern that depends on the block's address-independent id and the byte offset.
inline uint8_t pattern_byte(uint64_t id, size_t i) { return static_cast<uint8_t>((id * 131) ^ (i * 7) ^ (i >> 8)); }

inline void fill(void* p, size_t n, uint64_t id) {
  auto* b = static_cast<uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) b[i] = pattern_byte(id, i);
}

// Fill only the ends of a big block: the first and last `edge` bytes.
inline void fill_edges(void* p, size_t n, uint64_t id, size_t edge = 256) {
  auto* b = static_cast<uint8_t*>(p);
  if (n <= 2 * edge) return fill(p, n, id);
  for (size_t i = 0; i < edge; ++i) b[i] = pattern_byte(id, i);
  for (size_t i = n - edge; i < n; ++i) b[i] = pattern_byte(id, i);
}

inline bool check_fill(const void* p, size_t n, uint64_t id) {
  auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != pattern_byte(id, i)) return false;
  return true;
}

inline bool check_edges(const void* p, size_t n, uint64_t id, size_t edge = 256) {
  auto* b = static_cast<const uint8_t*>(p);
  if (n <= 2 * edge) return check_fill(p, n, id);
  for (size_t i = 0; i < edge; ++i)
    if (b[i] != pattern_byte(id, i)) return false;
  for (size_t i = n - edge; i < n; ++i)
    if (b[i] != pattern_byte(id, i)) return false;
  return true;
}

// Every one of the n bytes at p is v.
inline bool filled(const void* p, size_t n, uint8_t v) {
  auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i)
    if (b[i] != v) return false;
  return true;
}
inline bool all_zero(const void* p, size_t n) { return filled(p, n, 0); }

// What a forked child left: its wait status and what it wrote on stderr.
struct ChildResult {
  int status = 0;
  std::string err;
};

// Run fn in a forked child whose stderr goes to a pipe. If fn returns, the child exits with 0.
template <class Fn>
inline ChildResult run_child(Fn fn) {
  ChildResult r;
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], 2);
    close(fds[1]);
    fn();
    _exit(0);
  }
  close(fds[1]);
  char buf[4096];
  for (;;) {
    ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) break;
    r.err.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  REQUIRE(waitpid(pid, &r.status, 0) == pid);
  return r;
}

// The child ran to its end and exited with 0 (its checks pass their failures as exit bits).
inline void check_child_passed(const ChildResult& r) {
  CAPTURE(r.err);
  REQUIRE(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 0);
}

// A thread that runs closures on request, one at a time; run() returns when the closure is
// done. The thread keeps its heap between calls and exits (abandoning its heap) on finish().
class Worker {
 public:
  Worker() : th_([this] { loop(); }) {}
  ~Worker() { finish(); }
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  void run(std::function<void()> fn) {
    std::unique_lock<std::mutex> lk(m_);
    job_ = std::move(fn);
    has_job_ = true;
    cv_.notify_all();
    cv_.wait(lk, [this] { return !has_job_; });
  }

  void finish() {
    {
      std::lock_guard<std::mutex> lk(m_);
      if (stop_) return;
      stop_ = true;
      cv_.notify_all();
    }
    th_.join();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_.wait(lk, [this] { return has_job_ || stop_; });
      if (has_job_) {
        job_();
        job_ = nullptr;
        has_job_ = false;
        cv_.notify_all();
        continue;
      }
      return;
    }
  }

  std::mutex m_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool has_job_ = false;
  bool stop_ = false;
  std::thread th_;
};

// Walk every page of a heap and check the owner's invariants. Returns the number of errors
// (each also reported).
inline int check_heap_invariants(Heap* h) {
  int errors = 0;
  auto fail = [&](const char* what, const void* where) {
    if (++errors <= 8) FAIL_CHECK(std::string(what) << " at " << where);
  };
  if (!arena_lists_check()) fail("the arenas' lists of free chunks by resident slices differ from their bitmaps", h);
  std::set<const Page*> in_full;
  for (const Page* p = h->full.first; p != nullptr; p = p->next) in_full.insert(p);
  std::set<const Page*> in_spare;
  for (const Page* p = h->spare; p != nullptr && in_spare.size() <= kSpareMax; p = p->next) {
    in_spare.insert(p);
    if (!(page_flags(p) & kPageSpare) || p->slice_count != 1 || p->used != 0 || p->prev != nullptr)
      fail("spare page not flagged, not one slice, not empty or linked back", p);
  }
  if (in_spare.size() != h->spare_count) fail("spare_count differs from the spare list", h);
  std::set<const Page*> in_queue;
  for (unsigned c = 0; c < kClassCount; ++c)
    for (const Page* p = h->queues[c].first; p != nullptr; p = p->next) {
      in_queue.insert(p);
      if (p->size_class != c) fail("page in the queue of another class", p);
    }
  std::set<const Page*> in_runs;
  for (const Page* p = h->runs.first; p != nullptr && in_runs.size() <= 4096; p = p->next) {
    if (p->next != nullptr && p->next->prev != p) fail("runs list back link broken", p);
    in_runs.insert(p);
  }
  // The heap's bins of free runs: every slot where the bitmap has a free run of that length.
  std::set<const RunSlot*> binned_runs;
  for (unsigned b = 0; b < kRunsBins; ++b) {
    if (((runs_bins(h)->mask >> b) & 1) != (runs_bins(h)->bin[b] != nullptr)) fail("run mask differs from the run bins", h);
    const RunSlot* prev = nullptr;
    for (const RunSlot* n = runs_bins(h)->bin[b]; n != nullptr && binned_runs.size() <= 100000; n = n->next) {
      if (n->prev != prev) fail("run bin back link broken", n);
      const size_t want = b == kRunsBins - 1 ? 0 : b + kRunsMinUnits;
      if (want != 0 ? n->units != want : n->units <= kRunsMaxUnits) fail("free run in the bin of another length", n);
      binned_runs.insert(n);
      prev = n;
    }
  }
  size_t runs_seen = 0, runs_pages = 0;
  unsigned segs = 0;
  uint32_t resident_free_slices = 0, large_slices = 0;
  uint32_t class_blocks[kClassCount] = {};
  for (Segment* s = h->segments; s != nullptr; s = s->next) {
    ++segs;
    resident_free_slices += static_cast<uint32_t>(popcount64(s->free_slices & s->dirty_slices));
    if (s->owner_heap.load() != h) fail("segment of the heap names another owner", s);
    if (s->thread_id.load() != h->thread_id) fail("segment thread id differs from the heap's", s);
    if (s->free_slices & 1) fail("header slice marked free", s);
    if (!is_segment_start_chunk(s)) fail("segment not in the segment map", s);
    unsigned heads = 0, seg_large = 0;
    if (s->pages[0].head_off != 0 || !(page_flags(&s->pages[0]) & kPageNotInUse) || s->pages[0].fast_magic != 0 ||
        s->pages[0].kind != PageKind::kNone)
      fail("the header slice's descriptor, every free slice's head, is not one not in use", s);
    for (unsigned i = 1; i < kSlicesPerSegment;) {
      Page* p = &s->pages[i];
      if (p->kind == PageKind::kNone) {
        if (!((s->free_slices >> i) & 1)) fail("slice neither free nor in a span", p);
        // Reset (flag kPageNotInUse) or never written since the segment was made on fresh memory
        // (every byte 0): either way its head is descriptor 0, which is never in use.
        if (p->head_off != 0 || page_of(s, reinterpret_cast<char*>(s) + (size_t{i} << kSliceShift)) != &s->pages[0] ||
            (page_flags(p) & ~kPageNotInUse) != 0 || p->fast_magic != 0 || p->used != 0 ||
            p->slice_count != 0 || p->thread_free.load() != 0)
          fail("a free slice's descriptor is not in its reset state", p);
        ++i;
        continue;
      }
      ++heads;
      if (p->kind == PageKind::kLarge) seg_large += p->slice_count;
      if (p->slice_count == 0 || i + p->slice_count > kSlicesPerSegment) {
        fail("bad span length", p);
        break;
      }
      for (unsigned j = i; j < i + p->slice_count; ++j) {
        if ((s->free_slices >> j) & 1) fail("slice of a live span marked free", &s->pages[j]);
        if (!((s->dirty_slices >> j) & 1)) fail("slice of a live span not dirty", &s->pages[j]);
        if (j > i && page_of(s, reinterpret_cast<char*>(s) + (size_t{j} << kSliceShift)) != p)
          fail("interior slice does not lead back to its span head", &s->pages[j]);
      }
      if (p->kind == PageKind::kRuns) {
        ++runs_pages;
        if (!in_runs.count(p)) fail("runs page missing from the heap's list", p);
        if (p->flags != kPageRuns || p->fast_magic != 0 || p->slice_count != kRunsPageSlices) fail("runs page flags or length", p);
        const uint64_t* used = live_bits(s, p);
        const uint8_t* len = reinterpret_cast<const uint8_t*>(used + kRunsWords);
        uint32_t blocks = 0, units = 0;
        for (size_t u = 0; u < kRunsUnits;) {
          const bool on = (used[u / 64] >> (u % 64)) & 1;
          if (on) {
            const size_t n = len[u];
            if (n == 0 || n > kRunsMaxUnits || u + n > kRunsUnits) {
              fail("unit in use outside a block", p);
              break;
            }
            for (size_t v = u; v < u + n; ++v)
              if (!((used[v / 64] >> (v % 64)) & 1) || (v > u && len[v] != 0)) fail("block's units not in use, or a start inside it", p);
            ++blocks;
            units += static_cast<uint32_t>(n);
            u += n;
            continue;
          }
          if (len[u] != 0) fail("a free unit holds a block length", p);
          size_t e = u;
          while (e < kRunsUnits && !((used[e / 64] >> (e % 64)) & 1)) ++e;
          if (e - u >= kRunsMinUnits) {
            ++runs_seen;
            const auto* slot = reinterpret_cast<const RunSlot*>(len + kRunsUnits) + u / kRunsSlotStride;
            if (!binned_runs.count(slot) || slot->unit != u || slot->units != e - u || &s->pages[slot->page] != p)
              fail("free run missing from its bin", page_start(s, p) + (u << kRunsUnitShift));
          }
          u = e;
        }
        if (blocks != p->used) fail("runs page: used differs from its blocks", p);
        if (units != p->runs_units || p->capacity != 0) fail("runs page: runs_units differs from its units in use", p);
        if (tf_count(p->thread_free.load()) > p->used) fail("more blocks on thread_free than in use", p);
      }
      if (p->kind == PageKind::kSmall || p->kind == PageKind::kMedium) {
        PageCounts pc = page_counts(p);
        if (pc.total() != pc.capacity) fail("used + |free| + |local_free| != capacity", p);
        if (pc.thread_free > pc.used) fail("more blocks on thread_free than in use", p);
        if (tf_count(p->thread_free.load()) != pc.thread_free) fail("thread_free's count differs from its list", p);
        if (pc.capacity > pc.reserved) fail("capacity above reserved", p);
        if (p->block_size != kClassSize[p->size_class]) fail("block size differs from the class", p);
        if (p->fast_magic != (p->flags == 0 ? p->div_magic : 0)) fail("fast_magic differs from the flags", p);
        bool full_flag = (p->flags & kPageInFull) != 0;
        if (full_flag != (in_full.count(p) != 0)) fail("kPageInFull disagrees with the full list", p);
        bool spare_flag = (p->flags & kPageSpare) != 0;
        if (spare_flag != (in_spare.count(p) != 0)) fail("kPageSpare disagrees with the spare list", p);
        if (spare_flag && (full_flag || in_queue.count(p) != 0)) fail("spare page in a queue or the full list", p);
        if (!full_flag && !spare_flag && in_queue.count(p) == 0) fail("page in neither its queue nor the full list", p);
        if (!spare_flag) class_blocks[p->size_class] += p->reserved;
        if (delay_state(p) == kDelayUse && !full_flag) fail("delay state 'use' on a page not in the full list", p);
      }
      i += p->slice_count;
    }
    if (heads != s->used_spans) fail("used_spans differs from the number of live spans", s);
    if (seg_large != s->large_slices) fail("large_slices differs from the segment's large spans", s);
    large_slices += seg_large;
    // The span index: each segment in the bins of its longest free and resident free runs.
    const uint64_t runs[2] = {s->free_slices & s->dirty_slices, s->free_slices};
    for (unsigned k = 0; k < 2; ++k) {
      unsigned longest = 0;
      for (uint64_t m = runs[k]; m != 0; m &= m >> 1) ++longest;
      if (s->bin[k] != longest) fail("segment in the bin of another run length", s);
      bool listed = false;
      for (Segment* t = h->bins[k][longest]; longest != 0 && t != nullptr && !listed; t = t->bin_next[k]) listed = t == s;
      if (longest != 0 && !listed) fail("segment missing from its bin", s);
    }
  }
  for (unsigned k = 0; k < 2; ++k) {
    unsigned binned = 0;
    for (unsigned b = 0; b < kSlicesPerSegment; ++b) {
      if (((h->bin_mask[k] >> b) & 1) != (h->bins[k][b] != nullptr)) fail("bin mask differs from the bins", h);
      Segment* prev = nullptr;
      for (Segment* t = h->bins[k][b]; t != nullptr && binned <= segs; t = t->bin_next[k], ++binned) {
        if (t->bin_prev[k] != prev) fail("bin list back link broken", t);
        if (t->bin[k] != b || t->owner_heap.load() != h) fail("bin holds a segment that is not its own", t);
        prev = t;
      }
    }
    if (binned > segs) fail("more segments in the bins than in the heap", h);
  }
  if (segs != h->segment_count) fail("segment_count differs from the segment list", h);
  if (runs_seen != binned_runs.size()) fail("the run bins hold runs that are not the heap's", h);
  if (runs_pages != in_runs.size()) fail("the runs list holds pages that are not the heap's", h);
  if (large_slices != h->large_slices) fail("the heap's count of large-block slices differs from its segments'", h);
  if (resident_free_slices != h->resident_free_slices) fail("the heap's count of resident free slices differs from its segments'", h);
  if (direct_table_errors(h) != 0) fail("direct table out of date", h);
  for (unsigned c = 0; c < kClassCount; ++c)
    if (!class_caches_frees(c) && h->fc_limit[c] != kFcLimit[c]) fail("fc_limit of a class without a cache of the owner's frees", h);
  for (unsigned i = 0; i < kCachedCount; ++i) {
    const uint32_t n = class_blocks[kCachedFirst + i];
    const uint32_t lim = std::max<uint32_t>(kFcLimit[kCachedFirst + i], std::min<uint32_t>(n / 8, kFcLimitMax));
    if (h->class_blocks[i] != n || h->fc_limit[kCachedFirst + i] != lim)
      fail("class_blocks or fc_limit differs from the class's pages", h);
  }
  return errors;
}

}  // namespace unit
