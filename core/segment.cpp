// core/segment.cpp: segments, the spans (pages) carved from them, large and huge blocks,
// abandonment of an exiting thread's segments and their reclaim by other heaps.
//
// Owns: Segment headers, the abandoned list.
// A normal segment belongs to one heap; only its owner thread changes free_slices,
// dirty_slices, used_spans and the page descriptors' owner fields. Huge segments belong to no
// heap: any thread frees them straight back to the arena.
#include <cstring>

#include "core/engine.hpp"
#include "core/budget.hpp"
#include "core/options.hpp"

namespace nebula {
namespace {

Lock g_abandoned_lock;
Segment* g_abandoned = nullptr;          // singly linked through Segment::next (under the lock)
std::atomic<size_t> g_abandoned_count{0};
std::atomic<size_t> g_abandoned_kept{0};  // bytes of free slices kept resident by abandoned segments

constexpr uint64_t run_mask(unsigned first, unsigned n) {
  return (n >= 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1)) << first;
}

}  // namespace

// Among the maximal runs of set bits in m, the shortest one of at least n bits (best fit):
// its first index, or -1; *len gets its length. Small spans then fill the holes and leave the
// long runs for the spans that need them.

int find_best_run(uint64_t m, unsigned n, unsigned* len) noexcept {
  int best = -1;
  unsigned best_len = 65;
  while (m != 0) {
    unsigned lo = ctz64(m);
    uint64_t inv = ~(m >> lo);
    unsigned l = inv == 0 ? 64 - lo : ctz64(inv);
    if (l >= n && l < best_len) {
      best = static_cast<int>(lo);
      best_len = l;
      if (l == n) break;
    }
    m &= ~run_mask(lo, l);
  }
  *len = best_len;
  return best;
}

// The length of the longest run of set bits in m: one step per run (a segment's bitmaps hold a
// few runs; an O(log 64) search by doubling cost 1.6 x the instructions on glibc-simple).
unsigned longest_run(uint64_t m) noexcept {
  unsigned best = 0;
  while (m != 0) {
    const unsigned lo = ctz64(m);
    const uint64_t inv = ~(m >> lo);
    const unsigned len = inv == 0 ? 64 - lo : ctz64(inv);
    if (len > best) best = len;
    m &= m + (uint64_t{1} << lo);  // the carry clears the lowest run
  }
  return best;
}

namespace {

// ---- The span index (Heap::bins) ----------------------------------------------------------

void bin_unlink(Heap* heap, Segment* s, unsigned k) {
  const unsigned b = s->bin[k];
  if (b == 0) return;
  if (s->bin_prev[k] != nullptr) {
    s->bin_prev[k]->bin_next[k] = s->bin_next[k];
  } else {
    heap->bins[k][b] = s->bin_next[k];
    if (s->bin_next[k] == nullptr) heap->bin_mask[k] &= ~(uint64_t{1} << b);
  }
  if (s->bin_next[k] != nullptr) s->bin_next[k]->bin_prev[k] = s->bin_prev[k];
  s->bin[k] = 0;
}

// After s's free or dirty slices changed: move it to the bins of its longest runs now (at the
// front of a bin it enters; where it stays, it keeps its place).
void bins_update(Heap* heap, Segment* s) {
  const uint64_t runs[2] = {s->free_slices & s->dirty_slices, s->free_slices};
  const unsigned longest0 = longest_run(runs[0]);
  const unsigned longest[2] = {longest0, runs[1] == runs[0] ? longest0 : longest_run(runs[1])};
  for (unsigned k = 0; k < 2; ++k) {
    const unsigned b = longest[k];
    if (b == s->bin[k]) continue;
    bin_unlink(heap, s, k);
    if (b == 0) continue;
    s->bin[k] = static_cast<uint8_t>(b);
    s->bin_prev[k] = nullptr;
    s->bin_next[k] = heap->bins[k][b];
    if (s->bin_next[k] != nullptr) s->bin_next[k]->bin_prev[k] = s;
    heap->bins[k][b] = s;
    heap->bin_mask[k] |= uint64_t{1} << b;
  }
}

// s's slices changed, `resident_free` more of them free and resident (negative: fewer; the
// callers know it without counting bits). Its heap's count and bins follow.
void segment_changed(Segment* s, int resident_free) {
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  if (heap == nullptr) return;
  heap->resident_free_slices += static_cast<uint32_t>(resident_free);
  bins_update(heap, s);
}

// fn(s) on the segments whose longest run in bins[k] is at least n slices, shortest bins first,
// until fn returns true or `limit` segments have been seen. fn must not change the bins.
template <class Fn>
void bins_scan(Heap* heap, unsigned k, unsigned n, unsigned limit, Fn fn) {
  for (uint64_t m = heap->bin_mask[k] & (~uint64_t{0} << n); m != 0; m &= m - 1)
    for (Segment* s = heap->bins[k][ctz64(m)]; s != nullptr; s = s->bin_next[k])
      if (fn(s) || --limit == 0) return;
}

void heap_segments_push(Heap* heap, Segment* s) {
  s->prev = nullptr;
  s->next = heap->segments;
  if (heap->segments != nullptr) heap->segments->prev = s;
  heap->segments = s;
  heap->segment_count++;
  s->bin[0] = s->bin[1] = 0;
  s->push_seq = ++heap->push_seq;
  heap->large_slices += s->large_slices;
  heap->resident_free_slices += static_cast<uint32_t>(popcount64(s->free_slices & s->dirty_slices));
  bins_update(heap, s);
}

// A segment of the heap has free slices to purge at `at`: keep the heap's earliest purge time,
// which heaps_purge_idle reads without the segment lock.
void note_purge_due(Heap* heap, uint64_t at) {
  uint64_t due = heap->purge_due_ms.load(std::memory_order_relaxed);
  if (due == 0 || at < due) heap->purge_due_ms.store(at, std::memory_order_relaxed);
}

void heap_segments_remove(Heap* heap, Segment* s) {
  if (heap->punch_next == s) heap->punch_next = s->next;
  if (s->prev != nullptr) s->prev->next = s->next;
  else heap->segments = s->next;
  if (s->next != nullptr) s->next->prev = s->prev;
  s->next = s->prev = nullptr;
  heap->segment_count--;
  bin_unlink(heap, s, 0);
  bin_unlink(heap, s, 1);
  heap->large_slices -= s->large_slices;
  heap->resident_free_slices -= static_cast<uint32_t>(popcount64(s->free_slices & s->dirty_slices));
}

// `zeroed`: the header is fresh memory, every field 0 already. A descriptor of zeros is a free
// slice's (head_off 0: its head is descriptor 0, not in use; kind kNone), so only descriptor 0
// gets its flag: a new segment writes the OS page of the header that holds its own fields and
// the first descriptors, and the others only as its spans reach their descriptors (a small
// program's segment: 4 KiB of header resident instead of 16; 1,000 threads with a few blocks
// each: 12 MiB less).
void reset_descriptors(Segment* s, unsigned first, unsigned n, bool zeroed) {
  if (zeroed) {
    if (first == 0) set_page_flags(&s->pages[0], kPageNotInUse);
    return;
  }
  for (unsigned i = first; i < first + n; ++i) {
    Page* p = &s->pages[i];
    p->free = nullptr;
    p->local_free = nullptr;
    p->used = 0;
    p->head_off = 0;
    set_page_flags(p, kPageNotInUse);
    p->kind = PageKind::kNone;
    p->slice_count = 0;
    p->block_size = 0;
    p->capacity = p->reserved = 0;
    p->holes = 0;
    p->punched[0] = p->punched[1] = 0;
    p->punched_for_growth = 0;
    p->thread_free.store(0, std::memory_order_relaxed);
    p->next = p->prev = nullptr;
  }
}

Segment* segment_new(Heap* heap) {
  // The header slice becomes committed: charge it first (refunded if it already was).
  if (!budget_charge(kSliceSize)) return nullptr;
  ChunkGrant g;
  if (!arena_alloc(1, &g, ChunkUse::kSegment)) {
    budget_release(kSliceSize);
    return nullptr;
  }
  auto* s = static_cast<Segment*>(g.base);
  // Where a huge block asked for transparent huge pages, the mapping kept the flag: this
  // segment's first touch of a slice would fault in 2 MiB (`mstress`: 1-3 MiB more at its peak).
  arena_thp(g.arena_index, reinterpret_cast<uintptr_t>(s), reinterpret_cast<uintptr_t>(s) + kSegmentSize, false);
  // Secure mode: a guard between segments, the chunk's last slice, never handed out and never
  // accessible. A segment freed whole leaves it in place for the next one made on its chunk
  // (segment_free): `memalign-2m` makes and frees 10,000 segments, and two mprotect calls each
  // (with a split and a merge of the mapping) took 3.9 x the default mode's time. Past the
  // guards' share of the process's mappings (arena_guard_on: half of vm.max_map_count), or
  // where the kernel refuses one, no segment, rather than one without its guard.
  if (!os::commit(s, kSliceSize) ||  // the header slice
      (g_secure && !g.guarded &&
       !arena_guard_on(reinterpret_cast<char*>(s) + kSegmentSize - kSliceSize, true))) {
    arena_free_unused(g, 1);
    budget_release(kSliceSize);
    return nullptr;
  }
  s->thread_id.store(heap->thread_id, std::memory_order_relaxed);
  s->kind = SegmentKind::kNormal;
  s->solo = 0;
  s->arena_index = g.arena_index;
  s->chunk_count = 1;
  s->used_spans = 0;
  s->kept_slices = 0;
  s->large_slices = 0;
  s->exit_ms = 0;
  s->free_slices = ~uint64_t{1};
  if (g_secure) s->free_slices &= ~(uint64_t{1} << (kSlicesPerSegment - 1));  // the guard (above)
  s->dirty_slices = g.dirty_first | 1;
  if (g.dirty_first & 1) budget_release(kSliceSize);
  s->purge_at_ms = 0;
  // Slices the chunk's last user left resident are free slices here: they are purged after the
  // delay, as if just freed, unless spans take them first (claim_slices then clears the time).
  // Without a purge time they stayed resident until the heap freed a span of this segment.
  if ((s->free_slices & s->dirty_slices & ~uint64_t{1}) != 0) {
    s->purge_at_ms = os::clock_ms_coarse() + static_cast<uint64_t>(option(Option::kPurgeDelay));
    note_purge_due(heap, s->purge_at_ms);
  }
  s->owner_heap.store(heap, std::memory_order_relaxed);
  // A header that a segment freed whole left resident holds reset descriptors already
  // (`memalign-2m` makes 10,000 segments: 12 KiB of descriptor lines written for each).
  if (!(g.header_reset && (g.dirty_first & 1))) reset_descriptors(s, 0, kSlicesPerSegment, !(g.dirty_first & 1));
  heap_segments_push(heap, s);
  g_counters.segments.fetch_add(1, std::memory_order_relaxed);
  segmap_set(s, 1);
  return s;
}

void segment_free(Segment* s) {
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  if (heap != nullptr) heap_segments_remove(heap, s);
  g_counters.segments.fetch_sub(1, std::memory_order_relaxed);
  // Every span is free (used_spans == 0, or none was made): every descriptor is in its reset
  // state, for segment_new to find again while the header slice stays resident. In secure mode
  // the guard slice stays inaccessible: the arena notes it (Arena::guarded), and a taker of the
  // chunk other than a segment makes it accessible again.
  arena_free(s, 1, s->dirty_slices, 0, true);
}

// Commit free slices [idx, idx+slices) (charging the budget for those not resident) and mark
// them used; false when the budget or the OS refuses. *clean: none of them was resident.
bool claim_slices(Segment* s, unsigned idx, unsigned slices, bool* clean) {
  uint64_t mask = run_mask(idx, slices);
  uint64_t fresh = mask & ~s->dirty_slices;
  const unsigned fresh_count = static_cast<unsigned>(popcount64(fresh));
  size_t fresh_bytes = static_cast<size_t>(fresh_count) << kSliceShift;
  if (fresh != 0 && !budget_charge(fresh_bytes)) return false;
  if (!os::commit(reinterpret_cast<char*>(s) + (static_cast<size_t>(idx) << kSliceShift),
                  static_cast<size_t>(slices) << kSliceShift)) {
    if (fresh != 0) budget_release(fresh_bytes);
    return false;
  }
  s->free_slices &= ~mask;
  *clean = fresh == mask;
  s->dirty_slices |= mask;
  if ((s->free_slices & s->dirty_slices) == 0) s->purge_at_ms = 0;
  segment_changed(s, -static_cast<int>(slices - fresh_count));
  return true;
}

// Take slices [idx, idx+slices) for a page; nullptr when committing them would exceed the budget.
Page* take_span(Heap* heap, Segment* s, unsigned idx, unsigned slices, PageKind kind) {
  bool clean;
  if (!claim_slices(s, idx, slices, &clean)) return nullptr;
  Page* page = &s->pages[idx];
  page->head_off = head_off_of(s, page);
  page->is_clean = clean;
  s->used_spans++;
  page->slice_count = static_cast<uint16_t>(slices);
  page->kind = kind;
  set_page_flags(page, 0);
  if (kind == PageKind::kLarge) {
    s->large_slices = static_cast<uint8_t>(s->large_slices + slices);
    heap->large_slices += slices;
  }
  for (unsigned j = 1; j < slices; ++j)
    s->pages[idx + j].head_off = page->head_off;
  heap->stats.pages_made[kind_index(kind)]++;
  return page;
}

}  // namespace

// Among the runs of `n` consecutive bits set in `free`, the lowest one with the most bits set
// in `dirty` (resident slices: fewer page faults and less new RSS); -1 if none. *score gets
// that count.
int find_most_dirty_run(uint64_t free, uint64_t dirty, unsigned n, unsigned* score) noexcept {
  uint64_t r = free;
  for (unsigned k = 1; k < n && r != 0; ++k) r &= free >> k;
  int best = -1;
  unsigned best_score = 0;
  const uint64_t low = run_mask(0, n);
  for (; r != 0; r &= r - 1) {
    unsigned i = ctz64(r);
    unsigned sc = static_cast<unsigned>(popcount64((dirty >> i) & low));
    if (best < 0 || sc > best_score) {
      best = static_cast<int>(i);
      best_score = sc;
    }
  }
  *score = best_score;
  return best;
}

bool heap_has_room_elsewhere(Heap* heap, const Segment* except, unsigned slices) noexcept {
  bool found = false;
  bins_scan(heap, 1, slices, 2, [&](Segment* s) { return found = s != except; });
  return found;
}

static void purge_slices(Segment* s, uint64_t m);

// A span is taking `fresh` slices that were not resident, while every run of resident free
// slices the heap holds was too short for it: return as many of those to the OS, so that the
// footprint does not grow by memory that is free (they are purged after the delay anyway).
// For a large block (above 128 KiB), resident free slices up to a slack stay: 1/kUnfitSlackDiv
// of the slices the heap's large blocks hold, less kUnfitSlackFloor. A program that replaces
// big blocks of mixed sizes reuses those holes soon, and purging them for each new block cost
// it a page fault per reuse (blocks of 64 KiB-1.1 MiB written whole: 7 x glibc's faults).
// Pages of small and medium blocks get no slack: a program whose strings grow through the
// classes leaves runs that the next classes' pages cannot use (`strbuild`: +10 MiB with it).
// The newest segments (first in the heap's list) go first (`mstress` peaks 1 MiB lower than
// with the longest resident runs first); past kSpanScan segments of the list, the index gives
// the segments with the longest resident runs.
static void purge_unfit(Heap* heap, unsigned fresh, const Segment* except, PageKind kind) {
  const uint32_t share = kind == PageKind::kLarge ? heap->large_slices / kUnfitSlackDiv : 0;
  const uint32_t slack = share > kUnfitSlackFloor ? share - kUnfitSlackFloor : 0;
  unsigned purge = heap->resident_free_slices <= slack ? 0 : heap->resident_free_slices - slack;
  if (purge > fresh) purge = fresh;
  fresh -= purge;
  auto purge_from = [&purge](Segment* s) {
    uint64_t m = s->free_slices & s->dirty_slices;
    uint64_t take = 0;
    for (; m != 0 && purge != 0; m &= m - 1, --purge) take |= m & (~m + 1);
    if (take != 0) purge_slices(s, take);
  };
  unsigned walked = 0;
  for (Segment* s = heap->segments; s != nullptr && purge != 0 && walked < kSpanScan; s = s->next, ++walked)
    if (s != except) purge_from(s);
  while (purge != 0) {
    Segment* victim = nullptr;
    for (uint64_t bm = heap->bin_mask[0]; bm != 0 && victim == nullptr;) {
      const unsigned top = 63 - clz64(bm);
      Segment* t = heap->bins[0][top];
      victim = t != except ? t : t->bin_next[0];
      bm &= ~(uint64_t{1} << top);
    }
    if (victim == nullptr) break;
    purge_from(victim);
  }
  // Still growing: sparse pages give back the memory of their free blocks too, once the
  // allocation is done (heap_grew).
  heap->punch_want += static_cast<size_t>(fresh + purge) << kSliceShift;
}

// A span at slice idx of a new segment; nullptr (the segment given back) over the budget.
static Page* span_in_new_segment(Heap* heap, unsigned idx, unsigned slices, PageKind kind) {
  Segment* s = segment_new(heap);
  if (s == nullptr) return nullptr;
  Page* page = take_span(heap, s, idx, slices, kind);
  if (page == nullptr) segment_free(s);
  return page;
}

Page* span_alloc(Heap* heap, unsigned slices, PageKind kind, unsigned min_slices) noexcept {
  HeapSegGuard guard(heap);
  if (min_slices == 0 || min_slices > slices) min_slices = slices;
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Slices that are still resident first, in any of our segments (the span index's bins of
    // resident runs, shortest first, up to kSpanScan segments): no page faults, no new
    // RSS; the shortest resident run that fits (a one-slice page takes a one-slice hole, not the
    // start of a run a medium page could use later). A page with no such run takes a smaller
    // size from a shorter resident run (halving, then min_slices) rather than new memory:
    // as a program's blocks move up through the classes (strings that grow), the pages of the
    // classes it left free runs shorter than the next class's page. Then any free run. Of
    // equal fits the newest segment wins (push_seq): allocation gathers where the heap took
    // memory last and older segments drain (`mstress` peak RSS 1 MiB lower than bin order).
    for (unsigned n = slices;; n = n / 2 > min_slices ? n / 2 : min_slices) {
      Segment* fit = nullptr;
      int fit_idx = -1;
      unsigned fit_len = 65;
      bins_scan(heap, 0, n, kSpanScan, [&](Segment* s) {
        unsigned len;
        int idx = find_best_run(s->free_slices & s->dirty_slices, n, &len);
        if (idx >= 0 && (len < fit_len || (len == fit_len && s->push_seq > fit->push_seq))) {
          fit = s;
          fit_idx = idx;
          fit_len = len;
        }
        return false;
      });
      if (fit != nullptr) return take_span(heap, fit, static_cast<unsigned>(fit_idx), n, kind);
      if (n == min_slices) break;
    }
    // Spare pages (page_retire) go back to their segments before the heap takes slices that are
    // not resident: their slices may be what the span needs, alone or beside free ones.
    if (heap->spare != nullptr) {
      spare_flush(heap);
      --attempt;  // search the resident runs again
      continue;
    }
    // Else the free run that overlaps the most resident slices.
    Segment* best = nullptr;
    int best_idx = -1;
    unsigned best_score = 0;
    bins_scan(heap, 1, slices, kSpanScan, [&](Segment* s) {
      unsigned score;
      int idx = find_most_dirty_run(s->free_slices, s->dirty_slices, slices, &score);
      if (idx >= 0 && (best == nullptr || score > best_score || (score == best_score && s->push_seq > best->push_seq))) {
        best = s;
        best_idx = idx;
        best_score = score;
      }
      return false;
    });
    if (best != nullptr) {
      Page* page = take_span(heap, best, static_cast<unsigned>(best_idx), slices, kind);
      if (page != nullptr && best_score < slices) purge_unfit(heap, slices - best_score, nullptr, kind);
      return page;
    }
    // No room in our own segments: adopt one an exited thread left behind, then try again.
    if (attempt == 0 && !segment_reclaim_one(heap)) break;
  }
  Page* page = span_in_new_segment(heap, 1, slices, kind);
  if (page != nullptr && page->is_clean)  // (a chunk reused resident is not growth)
    purge_unfit(heap, slices, segment_of(page), kind);
  return page;
}

static bool span_free_internal(Segment* s, Page* page) {
  unsigned idx = static_cast<unsigned>(page - s->pages);
  unsigned slices = page->slice_count;
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  if (heap != nullptr) heap->stats.pages_freed[kind_index(page->kind)]++;
  bool purged = false;
  if ((page->punched[0] | page->punched[1]) != 0) {
    // The OS pages its holes gave back (page_punch, runs_punch) count as committed again with
    // the free slices, which are purged as a whole later.
    size_t bytes = static_cast<size_t>(popcount64(page->punched[0]) + popcount64(page->punched[1])) * os::page_size();
    if (bytes != 0 && !budget_charge(bytes)) {
      // At the budget: the whole span goes back now instead, and its slices are free and clean
      // (counting the holes again went past the budget: 0.9 MiB over 48 MiB in budget_race with
      // medium runs, whose sparse pages punch more, stop 47).
      const size_t span_bytes = static_cast<size_t>(slices) << kSliceShift;
      os::purge(reinterpret_cast<char*>(s) + (static_cast<size_t>(idx) << kSliceShift), span_bytes);
      g_counters.purge_calls.fetch_add(1, std::memory_order_relaxed);
      g_counters.purged.fetch_add(span_bytes - bytes, std::memory_order_relaxed);
      budget_release(span_bytes - bytes);
      s->dirty_slices &= ~run_mask(idx, slices);
      purged = true;
    }
    // Given back because the heap grew, and now free slices, which the next span of a heap
    // that grows takes before new memory: the punch only moved page faults to that span (a
    // string that grows out of its class leaves pages that die soon after their punch).
    if (page->punched_for_growth) g_punch_feedback.refilled.fetch_add(bytes, std::memory_order_relaxed);
  }
  if (page->kind == PageKind::kLarge) {
    s->large_slices = static_cast<uint8_t>(s->large_slices - slices);
    if (heap != nullptr) heap->large_slices -= slices;
  }
  // The tails' descriptors hold nothing but their head link (take_span and large_grow write
  // only that): the head is reset whole, each tail's link goes back to descriptor 0, one cache
  // line each instead of the three a whole reset writes (a free of 18 slices wrote 3.4 KiB).
  reset_descriptors(s, idx, 1, false);
  for (unsigned j = 1; j < slices; ++j) s->pages[idx + j].head_off = 0;
  s->free_slices |= run_mask(idx, slices);
  if (heap != nullptr && !purged) heap->resident_free_slices += slices;  // (a live span is all resident)
  if (--s->used_spans == 0) {
    segment_free(s);
    return true;
  }
  if (heap != nullptr) bins_update(heap, s);
  if (s->purge_at_ms == 0) {
    s->purge_at_ms = os::clock_ms() + static_cast<uint64_t>(option(Option::kPurgeDelay));
    if (heap != nullptr) note_purge_due(heap, s->purge_at_ms);
  }
  return false;
}

bool span_free(Segment* s, Page* page) noexcept {
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  if (heap == nullptr) return span_free_internal(s, page);
  HeapSegGuard guard(heap);
  return span_free_internal(s, page);
}

// Return the free resident slices in mask m (a subset of free & dirty) to the OS.
static void purge_slices(Segment* s, uint64_t m) {
  uint64_t left = m;
  while (left != 0) {
    unsigned lo = ctz64(left);
    uint64_t inv = ~(left >> lo);
    unsigned len = inv == 0 ? 64 - lo : ctz64(inv);
    os::purge(reinterpret_cast<char*>(s) + (static_cast<size_t>(lo) << kSliceShift),
              static_cast<size_t>(len) << kSliceShift);
    g_counters.purge_calls.fetch_add(1, std::memory_order_relaxed);
    left &= ~run_mask(lo, len);
  }
  const unsigned count = static_cast<unsigned>(popcount64(m));
  size_t bytes = static_cast<size_t>(count) << kSliceShift;
  if (bytes != 0) {
    budget_release(bytes);
    g_counters.purged.fetch_add(bytes, std::memory_order_relaxed);
  }
  s->dirty_slices &= ~m;
  if ((s->free_slices & s->dirty_slices & ~uint64_t{1}) == 0) s->purge_at_ms = 0;
  segment_changed(s, -static_cast<int>(count));
}

void large_free_purged(Segment* s, Page* page) noexcept {
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  const unsigned idx = static_cast<unsigned>(page - s->pages), slices = page->slice_count;
  const size_t bytes = static_cast<size_t>(slices) << kSliceShift;
  HeapSegGuard guard(heap);
  // Purged while still in use, so that the span is freed as clean slices, also where its
  // segment goes back to the arena with it.
  os::purge(reinterpret_cast<char*>(s) + (static_cast<size_t>(idx) << kSliceShift), bytes);
  g_counters.purge_calls.fetch_add(1, std::memory_order_relaxed);
  g_counters.purged.fetch_add(bytes, std::memory_order_relaxed);
  budget_release(bytes);
  s->dirty_slices &= ~run_mask(idx, slices);
  span_free_internal(s, page);
  heap->resident_free_slices -= slices;  // which span_free_internal counted as resident
}

void segment_purge(Segment* s, uint64_t now, bool force) noexcept {
  if (s->purge_at_ms == 0 || (!force && now < s->purge_at_ms)) return;
  purge_slices(s, s->free_slices & s->dirty_slices & ~uint64_t{1});
  s->purge_at_ms = 0;
}

void heap_purge_excess(Heap* heap) noexcept {
  unsigned in_spans = 0;
  for (Segment* s = heap->segments; s != nullptr; s = s->next)
    in_spans += kSlicesPerSegment - 1 - static_cast<unsigned>(popcount64(s->free_slices & ~uint64_t{1}));
  const uint32_t allow = kFreeFloatFloor + in_spans / kFreeFloatDiv + heap->large_slices / kUnfitSlackDiv;
  if (heap->resident_free_slices <= allow) return;
  unsigned purge = heap->resident_free_slices - allow;
  // The segments whose free slices have waited longest first (the earliest purge time), up to
  // kPurgeExcessScan of them, then the rest in one pass in list order, so that a pass reads a
  // bounded number of headers however many segments the heap holds; the highest slices of each
  // first (span searches favour the lowest of equal runs).
  auto purge_from = [&purge](Segment* s) {
    uint64_t m = s->free_slices & s->dirty_slices & ~uint64_t{1};
    uint64_t take = 0;
    for (; m != 0 && purge != 0; --purge) {
      const uint64_t top = uint64_t{1} << (63 - clz64(m));
      take |= top;
      m &= ~top;
    }
    if (take == 0) s->purge_at_ms = 0;  // nothing free and resident is left in it
    else purge_slices(s, take);        // clears purge_at_ms once none is left
  };
  // The oldest, in one read of the list (it read the list once per pick: a heap of 1,000
  // segments read 16,000 headers in a pass). purge_from takes all of a segment's free resident
  // slices before the next one, so the picks are distinct and in the order of their times.
  Segment* oldest[kPurgeExcessScan];
  unsigned picked = 0;
  for (Segment* s = heap->segments; s != nullptr; s = s->next) {
    if (s->purge_at_ms == 0) continue;
    if (picked == kPurgeExcessScan && s->purge_at_ms >= oldest[picked - 1]->purge_at_ms) continue;
    unsigned i = picked < kPurgeExcessScan ? picked++ : picked - 1;
    for (; i > 0 && s->purge_at_ms < oldest[i - 1]->purge_at_ms; --i) oldest[i] = oldest[i - 1];
    oldest[i] = s;
  }
  for (unsigned i = 0; i < picked && purge != 0; ++i) purge_from(oldest[i]);
  for (Segment* s = heap->segments; s != nullptr && purge != 0; s = s->next)
    if (s->purge_at_ms != 0) purge_from(s);
}

// A large span whose first slice is a multiple of `step` slices into its segment, so that its
// start is aligned to step * 64 KiB (segments are 4 MiB aligned): the free aligned run holding
// the most resident slices among the segments the span index offers, else an adopted segment's,
// else a new segment's. Only the block's own slices are taken (and counted): the slices before
// it stay free for other pages.
// A segment whose longest free run has slices + step - 1 slices surely has an aligned run: those
// bins are read first. Shorter runs may or may not cover an aligned slice (a 4 MiB segment has a
// single 2 MiB-aligned one); up to kAlignedScan of them are read next. The cost of an
// allocation stays bounded however many segments the heap holds: a heap of 200 segments, each
// with its one 2 MiB-aligned slot taken, read all 200 headers for every new block.
static Page* span_alloc_aligned(Heap* heap, unsigned slices, unsigned step) {
  HeapSegGuard guard(heap);
  const unsigned sure = slices + step - 1;
  for (int attempt = 0; attempt < 2; ++attempt) {
    Segment* best = nullptr;
    unsigned best_idx = 0;
    int best_score = -1;
    auto consider = [&](Segment* s) {
      for (unsigned i = step; i + slices <= kSlicesPerSegment; i += step) {
        const uint64_t m = run_mask(i, slices);
        if ((s->free_slices & m) != m) continue;
        const int score = popcount64(s->dirty_slices & m);
        if (score > best_score || (score == best_score && s->push_seq > best->push_seq)) {
          best = s;
          best_idx = i;
          best_score = score;
        }
      }
      return false;
    };
    if (sure < kSlicesPerSegment) bins_scan(heap, 1, sure, kSpanScan, consider);
    if (best == nullptr)
      bins_scan(heap, 1, slices, kAlignedScan, [&](Segment* s) { return s->bin[1] < sure ? consider(s) : true; });
    if (best != nullptr) return take_span(heap, best, best_idx, slices, PageKind::kLarge);
    if (attempt == 0 && !segment_reclaim_one(heap)) break;
  }
  if (heap->spare != nullptr) {  // before a new segment, as in span_alloc
    spare_flush(heap);
    return span_alloc_aligned(heap, slices, step);
  }
  return span_in_new_segment(heap, step, slices, PageKind::kLarge);
}

// ---- Large blocks: one block in a span of its own -------------------------------------------
void* large_alloc(Heap* heap, size_t n, size_t align, bool zero) noexcept {
  size_t slices = (n + kSliceSize - 1) >> kSliceShift;
  Page* page;
  if (align > kSliceSize) {
    // The span starts at an aligned slice: nothing is taken for padding (a span padded by the
    // alignment held up to 31 slices it never used, and counted them against the budget).
    // The first aligned slice of a segment is `step` (slice 0 is the header); a span that
    // cannot end before the segment's usable end (in secure mode its last slice is a guard:
    // 2 MiB aligned to 2 MiB took slices 32-63, the guard among them) is a huge block.
    const size_t step = align >> kSliceShift;
    const size_t usable = kSlicesPerSegment - (g_secure ? 1 : 0);
    if (align > kLargeAlignMax || n > kLargeMax || step + slices > usable) return huge_alloc(n, align, zero);
    page = span_alloc_aligned(heap, static_cast<unsigned>(slices), static_cast<unsigned>(step));
  } else {
    if (slices >= kSlicesPerSegment) return huge_alloc(n, align, zero);
    page = span_alloc(heap, static_cast<unsigned>(slices), PageKind::kLarge);
  }
  if (page == nullptr) return nullptr;
  uint8_t* p = page_start(segment_of(page), page);  // aligned: a slice boundary of the alignment
  page->block_size = static_cast<uint32_t>(slices << kSliceShift);
  page->capacity = page->reserved = 1;
  page->used = 1;
  page->size_class = 0;
  // A large page is "full" from the start: frees by other threads go to the owner's delayed
  // list, and the owner's own free takes the generic path, which frees the span.
  set_page_flags(page, static_cast<uint8_t>(kPageInFull | (g_secure ? kPageSecure : 0)));
  page->thread_free.store(kDelayUse, std::memory_order_release);
  heap->stats.large_allocs++;
  if (zero && !page->is_clean) memset(p, 0, n);
  return p;
}

// Grow a large block in place to `n` bytes from `p` by taking the free slices right after its
// span (the owner thread only: the segment's bitmaps are its own). A string or buffer that a
// program extends with realloc then keeps its address: no copy, and no hole left behind for
// the purge delay to keep resident (glibc grows its top chunk the same way).
bool large_grow(Segment* s, Page* page, const void* p, size_t n) noexcept {
  if (s->thread_id.load(std::memory_order_relaxed) != os::thread_id()) return false;
  size_t need = static_cast<size_t>(static_cast<const uint8_t*>(p) - page_start(s, page)) + n;
  size_t slices = (need + kSliceSize - 1) >> kSliceShift;
  unsigned idx = static_cast<unsigned>(page - s->pages);
  unsigned old = page->slice_count;
  if (slices <= old || idx + slices > kSlicesPerSegment) return false;
  unsigned add = static_cast<unsigned>(slices) - old;
  if ((s->free_slices & run_mask(idx + old, add)) != run_mask(idx + old, add)) return false;
  HeapSegGuard guard(s->owner_heap.load(std::memory_order_relaxed));
  bool clean;
  if (!claim_slices(s, idx + old, add, &clean)) return false;
  for (unsigned j = old; j < slices; ++j) s->pages[idx + j].head_off = page->head_off;
  s->large_slices = static_cast<uint8_t>(s->large_slices + add);
  s->owner_heap.load(std::memory_order_relaxed)->large_slices += add;
  page->slice_count = static_cast<uint16_t>(slices);
  page->block_size = static_cast<uint32_t>(slices << kSliceShift);
  return true;
}

// ---- Huge blocks: a segment of their own --------------------------------------------------
// Ask for transparent huge pages on the whole 2 MiB pages of [from, end) of a block of n bytes;
// the arena keeps the flag's state, so that a segment made there later takes it off.
static void hint_huge(const Segment* s, uintptr_t from, uintptr_t end, size_t n) {
  if (n < (size_t{2} << 20) || !option_bool(Option::kHugePages)) return;
  uintptr_t lo = align_up(from, size_t{2} << 20);
  uintptr_t hi = end & ~((uintptr_t{2} << 20) - 1);
  if (hi <= lo) return;
  if (s->solo) os::huge_hint(reinterpret_cast<void*>(lo), hi - lo);
  else arena_thp(s->arena_index, lo, hi, true);
}

// A huge block on chunks an earlier block asked huge pages for (made there, or grown over them):
// past the 2 MiB pages it asks for itself, up to its run's end, the flag comes off, so that a
// write near its end does not fault in memory beyond it. (A solo mapping has the flag only on
// the block's own 2 MiB pages: refuse_thp.)
static void unhint_tail(unsigned arena_index, bool solo, uintptr_t block_end, uintptr_t run_end) {
  if (solo) return;
  uintptr_t from = block_end & ~((uintptr_t{2} << 20) - 1);
  if (from < run_end) arena_thp(arena_index, from, run_end, false);
}

// The header of a huge segment made on grant g: one block at `start`, `used_len` bytes from
// the segment start in use and `dirty_len` counted committed.
static void huge_header(Segment* s, const ChunkGrant& g, size_t chunks, size_t need, uintptr_t start,
                        size_t used_len, size_t dirty_len) {
  s->thread_id.store(0, std::memory_order_relaxed);
  s->kind = SegmentKind::kHuge;
  s->solo = g.solo ? 1 : 0;
  s->arena_index = g.arena_index;
  s->chunk_count = static_cast<uint32_t>(chunks);
  s->used_spans = 1;
  s->kept_slices = 0;
  s->exit_ms = 0;
  s->free_slices = 0;
  s->dirty_slices = ~uint64_t{0};
  s->purge_at_ms = 0;
  s->huge_len = dirty_len;
  s->huge_used = used_len;
  s->mapped_size = need;
  s->owner_heap.store(nullptr, std::memory_order_relaxed);
  reset_descriptors(s, 0, 2, false);
  Page* page = &s->pages[1];
  page->kind = PageKind::kHuge;
  set_page_flags(page, kPageNotInUse);  // never the fast path
  s->huge_start = start;
  page->block_size = static_cast<uint32_t>(0);  // huge sizes do not fit: see huge_usable()
  page->capacity = page->reserved = page->used = 1;
  page->slice_count = 1;
  page->head_off = head_off_of(s, page);
  // The other slices' descriptors lead to the block's: stale ones (a normal segment's header
  // left resident) would send a free to a page that is gone. A header of fresh or purged memory
  // reads 0 there, which leads to descriptor 0 (not in use): the generic path, which checks the
  // segment's kind first, so those 62 lines, over 3 more OS pages of the header, stay untouched
  // (3 page faults less per huge block made on clean chunks). A header that a normal segment
  // freed whole left (all 0) or a huge block's (these values) needs no writes either: a thread
  // making and freeing 4 MiB blocks spent 21% of its samples writing those 62 lines.
  if ((g.dirty_first & 1) && !g.huge_header && !g.header_reset)
    for (unsigned j = 2; j < kSlicesPerSegment; ++j) s->pages[j].head_off = page->head_off;
}

void* huge_alloc(size_t n, size_t align, bool zero) noexcept {
  if (align < kSliceSize) align = kSliceSize;
  // For alignments beyond the chunk size the offset depends on the address: reserve slack.
  size_t slack = align > kSegmentSize ? align : 0;
  size_t head = align > kSliceSize ? align : kSliceSize;
  if (n > kMaxRequest - head - slack) return nullptr;
  size_t guard = g_secure ? kSliceSize : 0;  // secure mode: an inaccessible slice after the block
  size_t need = align_up(head + n + slack + guard, kSegmentSize);
  size_t chunks = need >> kSegmentShift;
  // Charge the most the block can commit; the exact figure is known once the run is chosen.
  size_t charged = align_up(head + n + slack, kSliceSize);
  if (!budget_charge(charged)) return nullptr;
  // The slices of its last chunk the block uses (where slack leaves its place open, all).
  const size_t used_last = head + n + guard - (chunks - 1) * kSegmentSize;
  const unsigned last = slack != 0 ? 64u : static_cast<unsigned>((used_last + kSliceSize - 1) >> kSliceShift);
  ChunkGrant g;
  if (!arena_alloc(chunks, &g, ChunkUse::kHuge, last)) {
    budget_release(charged);
    return nullptr;
  }
  auto* s = static_cast<Segment*>(g.base);
  uintptr_t sb = reinterpret_cast<uintptr_t>(s);
  uintptr_t start = align_up(sb + kSliceSize, align);
  size_t used_len = align_up(start - sb + n, kSliceSize);   // from the segment start
  // Secure mode: the guard slice after the block first; past the guards' share of the mappings
  // (arena_guard_on), or where the kernel refuses it, there is no block rather than one without
  // a guard.
  if (!os::commit(s, used_len) ||
      (g_secure && !arena_guard_on(reinterpret_cast<char*>(s) + used_len, true))) {
    arena_free_unused(g, chunks);
    budget_release(charged);
    return nullptr;
  }
  // The run's resident slices were counted already (g.dirty_bytes). A resident tail beyond the
  // block, left by a bigger block, is kept (the next bigger block reuses it without page
  // faults) when the budget can count all of [0, tail end); otherwise it is purged now.
  size_t dirty_len = used_len;
  if (g.dirty_extent > used_len) {
    size_t net = g.dirty_extent - g.dirty_bytes;
    if (net <= charged || budget_charge(net - charged)) {
      if (net < charged) budget_release(charged - net);
      dirty_len = g.dirty_extent;
    } else {
      os::purge(reinterpret_cast<void*>(sb + used_len), g.dirty_extent - used_len);
      g_counters.purged.fetch_add(g.dirty_extent - used_len, std::memory_order_relaxed);
      budget_release(charged - used_len + g.dirty_bytes);
    }
  } else {
    budget_release(charged - used_len + g.dirty_bytes);
  }
  // Chunks an earlier block asked huge pages for keep the flag. It comes off the 2 MiB that hold
  // the header before the header is written (here; the whole run for a zeroed block, which asks
  // for none) and off what lies past the block's last 2 MiB page (unhint_tail, below); the block
  // asks for its own inside (hint_huge). Taken off past the end only, the header slice on such a
  // chunk was faulted in as a 2 MiB page (a 5 MiB block made where a 13 MiB one had been: 64 KiB
  // of header resident instead of 4, and the rest of the huge page with it; `patterns
  // huge-many`: peak RSS 354-372 -> 316 MB).
  if (!g.solo) arena_thp(g.arena_index, sb, zero ? sb + need : align_up(start, size_t{2} << 20), false);
  huge_header(s, g, chunks, need, start, used_len, dirty_len);
  g_counters.huge_live.fetch_add(used_len, std::memory_order_relaxed);
  if (zero && !g.all_clean) {
    // Only the part that was resident before can hold old data. From 1 MiB up it is zeroed by
    // giving it back to the OS, which maps zero pages where the program first touches: a big
    // table that a program fills sparsely stays resident only where written, as fresh memory
    // would (100 MB from calloc, every 64th page written, 30 times: peak RSS 101 MiB and
    // 0.37 s with memset, which touched every page; glibc 2.6 MiB). A block the program then
    // fills whole pays a page fault per OS page instead of a memset of memory possibly resident.
    size_t dirty_end = g.dirty_extent < used_len ? g.dirty_extent : used_len;
    size_t dirty_from_start = dirty_end > (start - sb) ? dirty_end - (start - sb) : 0;
    size_t len = dirty_from_start < n ? dirty_from_start : n;
    size_t whole = len & ~(os::page_size() - 1);
    if (len >= kZeroByPurgeMin && os::purge(reinterpret_cast<void*>(start), whole)) {
      g_counters.purged.fetch_add(whole, std::memory_order_relaxed);
      memset(reinterpret_cast<void*>(start + whole), 0, len - whole);
    } else {
      memset(reinterpret_cast<void*>(start), 0, len);
    }
  }
  // A zeroed block (calloc) asks for no huge pages (an earlier block's flag came off above): the
  // OS's zero pages already give it lazily, and a big table that the program fills sparsely would
  // become resident 2 MiB at a touch (100 MB from calloc, every 64th page written: peak RSS
  // 101 MiB with huge pages, 3.5 MiB without; glibc 2.6).
  if (!zero) {
    hint_huge(s, start, start + n, n);
    unhint_tail(g.arena_index, g.solo, start + n, sb + need);
  }
  segmap_set(s, chunks);
  return reinterpret_cast<void*>(start);
}

size_t huge_usable(Segment* s, const void* p) noexcept {
  uintptr_t end = reinterpret_cast<uintptr_t>(s) + s->huge_used;
  return end - reinterpret_cast<uintptr_t>(p);
}

// Secure mode: the guard slice after a huge block moves to its new end (huge_grow, huge_shrink).
// The new guard comes first, so that the block is never without one; false, with the old guard
// in place, where the kernel refuses the new one (its limit of mappings).
static bool huge_guard_move(Segment* s, size_t old_used, size_t new_used) {
  char* sb = reinterpret_cast<char*>(s);
  if (!arena_guard_on(sb + new_used, false)) return false;  // (one guard for one: not capped)
  arena_guard_off(sb + old_used);  // (in the grown block, or free memory now)
  return true;
}

bool huge_grow(Segment* s, size_t n) noexcept {
  if (s->solo) return false;
  // Secure mode: the block grows over its guard slice, and the guard moves past the new end
  // (before, secure mode copied: `large`, whose blocks of 5-25 MiB grow by half every fourth
  // time, spent 52% of its samples in memmove and took 2.9 x the default mode's time).
  const size_t guard = g_secure ? kSliceSize : 0;
  uintptr_t sb = reinterpret_cast<uintptr_t>(s);
  size_t offset = s->huge_start - sb;
  if (n > kSoloThreshold - offset - guard) return false;
  size_t used_len = align_up(offset + n, kSliceSize);
  size_t old_used = s->huge_used, old_len = s->huge_len, old_chunks = s->chunk_count;
  if (used_len <= old_used) return true;
  size_t need = align_up(used_len + guard, kSegmentSize);
  size_t add = need > s->mapped_size ? (need - s->mapped_size) >> kSegmentShift : 0;
  // Charge what the block itself adds to the counted extent; the resident slices of absorbed
  // chunks are counted already and move to the block.
  size_t charged = used_len > old_len ? used_len - old_len : 0;
  if (charged != 0 && !budget_charge(charged)) return false;
  if (!os::commit(reinterpret_cast<void*>(sb + old_used), used_len - old_used)) {
    budget_release(charged);
    return false;
  }
  size_t len = used_len > old_len ? used_len : old_len;
  if (add != 0) {
    size_t dirty_bytes = 0, dirty_extent = 0;
    if (!arena_grow(s, old_chunks, add, &dirty_bytes, &dirty_extent)) {
      budget_release(charged);
      return false;
    }
    if (dirty_bytes != 0) {
      // Count the whole extent up to the last resident slice, as huge_alloc does, or purge the
      // resident tail beyond the block when the budget cannot take it.
      size_t tail_end = s->mapped_size + dirty_extent;
      if (tail_end > len) {
        size_t extra = tail_end - len;  // counted as part of the block from now on
        if (extra > dirty_bytes && !budget_charge(extra - dirty_bytes)) {
          os::purge(reinterpret_cast<void*>(sb + len), tail_end - len);
          g_counters.purged.fetch_add(dirty_bytes, std::memory_order_relaxed);
          budget_release(dirty_bytes);
        } else {
          if (extra < dirty_bytes) budget_release(dirty_bytes - extra);
          len = tail_end;
        }
      } else {
        budget_release(dirty_bytes);  // inside the block: counted by `charged` already
      }
    }
    s->chunk_count = static_cast<uint32_t>(old_chunks + add);
    s->mapped_size = need;
    segmap_set(s, old_chunks + add);
  }
  if (g_secure && !huge_guard_move(s, old_used, used_len)) {
    // The block keeps its size and its guard; what the growth took (committed memory, chunks)
    // stays with it as a tail counted committed, as a bigger block's would (huge_len).
    s->huge_len = len;
    return false;
  }
  s->huge_used = used_len;
  s->huge_len = len;
  g_counters.huge_live.fetch_add(used_len - old_used, std::memory_order_relaxed);
  hint_huge(s, sb + old_used, s->huge_start + n, n);
  // Chunks taken in may carry an earlier block's huge-page flag past the new end.
  if (add != 0) unhint_tail(s->arena_index, false, s->huge_start + n, sb + need);
  return true;
}

// huge_move's ranges of address space for pages in passing (os::swap_pages), 2 MiB each and
// reserved on first use. A move takes the first one free, so moves on several threads do not
// wait for one another's whole exchange; the kernel's mapping lock orders their mremap calls
// only a call at a time. With one range for the process, `large --threads 8` made 33,825
// sched_yield calls a run waiting for it (295 with eight). Where all are taken, the move waits
// for the first.
constexpr unsigned kSwapScratches = 8;
constexpr size_t kSwapPiece = size_t{2} << 20;
struct alignas(64) SwapScratch {
  Lock lock;
  void* range = nullptr;
};
SwapScratch g_swap[kSwapScratches];
void (*g_swap_hook)(void* scratch) = nullptr;

// Exchange the first `size` bytes of the runs at a and b (see os::swap_pages); 0 where no
// scratch range could be reserved.
static size_t swap_runs(void* a, void* b, size_t size) {
  SwapScratch* sc = nullptr;
  for (SwapScratch& c : g_swap) {
    if (c.lock.try_lock()) {
      sc = &c;
      break;
    }
  }
  if (sc == nullptr) {
    sc = &g_swap[0];
    sc->lock.lock();
  }
  if (sc->range == nullptr) sc->range = os::reserve(kSwapPiece, kSwapPiece);
  if (g_swap_hook != nullptr) g_swap_hook(sc->range);
  const size_t done = sc->range == nullptr ? 0 : os::swap_pages(a, b, size, sc->range);
  sc->lock.unlock();
  return done;
}

// A huge block that cannot grow in place moves to a run of chunks big enough for n bytes: its
// pages are moved there (os::move_pages, mremap on Linux) rather than copied, so realloc costs
// no copy and the old and the new block are never resident together. Where the new run holds
// resident free memory (the arena chooses the run with the most), its pages and the block's
// are exchanged (os::swap_pages): that memory stays resident in the old run for the next block
// instead of being dropped and faulted in again (`large`, buffers of 5-25 MiB grown by half every
// fourth time, took 1.6 x the time when they were moved over resident memory; copying into it
// instead cost 20-34% of its samples in memmove). The old run moves whole chunks, so that the
// mapping splits the kernel makes stay at chunk boundaries (the moved piece keeps a mapping of
// its own), and no more of them than the new run has: a block aligned beyond the chunk size has
// slack after it (20 MiB mapped for 64 KiB aligned to 8 MiB), and moving all of it overwrote the
// chunks after a smaller new run, live segments among them.
// nullptr where nothing can move (secure mode, which keeps a guard slice; no room; a kernel
// without the call): the caller allocates and copies.
void* huge_move(Segment* s, size_t n) noexcept {
  if (g_secure) return nullptr;
  uintptr_t sb = reinterpret_cast<uintptr_t>(s);
  size_t offset = s->huge_start - sb;
  if (n > kMaxRequest - offset) return nullptr;
  size_t used_len = align_up(offset + n, kSliceSize);
  size_t old_used = s->huge_used, old_len = s->huge_len, old_map = s->mapped_size;
  size_t old_chunks = s->chunk_count;
  if (used_len <= old_used) return nullptr;
  // The header moves with the block: what releases the old run is read now.
  ChunkGrant old{s, 0, true, s->arena_index, s->solo != 0, 0, 0};
  size_t need = align_up(used_len, kSegmentSize);
  size_t chunks = need >> kSegmentShift;
  ChunkGrant g;
  if (!arena_alloc(chunks, &g, ChunkUse::kHuge)) return nullptr;
  // What moves: the old run up to the new run's size (the block lies within both). The grant's
  // pages up to its last resident slice within that are exchanged with the block's (whole
  // pieces of 2 MiB), the rest is moved over clean memory.
  const size_t span = old_map < need ? old_map : need;
  const size_t kept_old = old_len < span ? old_len : span;  // the old extent that moves
  size_t swap_len = 0;
  if (!g.solo && !old.solo && g.dirty_extent != 0) {
    swap_len = align_up(g.dirty_extent, kSwapPiece);
    if (swap_len > span) swap_len = span;
  }
  // The budget counts the old block's extent and the grant's resident slices. The new block
  // counts its extent, up to the grant's last resident slice where the budget can take it (as
  // in huge_alloc); the old run, its extent of the grant's pages it receives. Without the
  // budget for that, the grant's resident slices under the moved run are dropped by the move.
  size_t before = old_len + g.dirty_bytes;
  size_t base_len = used_len > kept_old ? used_len : kept_old;
  size_t len = g.dirty_extent > span && g.dirty_extent > base_len ? g.dirty_extent : base_len;
  size_t old_dirty = g.dirty_extent < swap_len ? g.dirty_extent : swap_len;
  size_t charged = len + old_dirty > before ? len + old_dirty - before : 0;
  if (charged != 0 && !budget_charge(charged)) {
    swap_len = old_dirty = 0;
    len = base_len;
    charged = len > before ? len - before : 0;
    if (charged != 0 && !budget_charge(charged)) {
      arena_free_unused(g, chunks);
      return nullptr;
    }
  }
  uintptr_t nb = reinterpret_cast<uintptr_t>(g.base);
  size_t moved = swap_len != 0 ? swap_runs(s, g.base, swap_len) : 0;
  if (moved == swap_len && span > swap_len)
    moved += os::move_pages(reinterpret_cast<void*>(sb + swap_len), span - swap_len,
                            reinterpret_cast<void*>(nb + swap_len));
  const size_t swapped = moved < swap_len ? moved : swap_len;
  const size_t kept_dirty = old_dirty < swapped ? old_dirty : swapped;  // what the old run holds
  if (moved == 0) {
    if (charged != 0) budget_release(charged);
    arena_free_unused(g, chunks);
    return nullptr;
  }
  // The two runs now count len + kept_dirty, where before + charged was counted.
  if (before + charged > len + kept_dirty) budget_release(before + charged - len - kept_dirty);
  if (moved < old_map) {  // the rest of the block is copied, and what stayed behind goes back
    if (moved < old_used)
      memcpy(reinterpret_cast<void*>(nb + moved), reinterpret_cast<void*>(sb + moved), old_used - moved);
    os::purge(reinterpret_cast<void*>(sb + moved), old_map - moved);
    if (old_len > moved) g_counters.purged.fetch_add(old_len - moved, std::memory_order_relaxed);
  }
  if (g.dirty_extent > len) {  // the budget could not count the grant's resident tail
    os::purge(reinterpret_cast<void*>(nb + len), g.dirty_extent - len);
    g_counters.purged.fetch_add(g.dirty_extent - len, std::memory_order_relaxed);
  }
  auto* ns = reinterpret_cast<Segment*>(nb);
  huge_header(ns, g, chunks, need, nb + offset, used_len, len);
  g_counters.huge_live.fetch_add(used_len - old_used, std::memory_order_relaxed);
  segmap_set(ns, chunks);
  segmap_clear(s, old_chunks);
  // The old run: clean where the block's pages moved out over clean memory or were purged, the
  // grant's former pages where they were exchanged.
  if (kept_dirty != 0) {
    if (option_bool(Option::kHugePages)) arena_thp_unsure(old.arena_index, sb, sb + swapped);
    arena_free_run(old, old_chunks, kept_dirty);
  } else {
    arena_free_unused(old, old_chunks);
  }
  // It outgrew its room once: keep segments out of the room behind its new place (find_run).
  if (!g.solo) arena_note_growing(ns, chunks);
  // The moved part keeps the huge-page flag it had (with huge pages off, no block asked for it);
  // the rest of the block asks for huge pages now.
  if (option_bool(Option::kHugePages) && !g.solo) arena_thp_unsure(g.arena_index, nb, nb + span);
  hint_huge(ns, nb + old_used, nb + offset + n, n);
  unhint_tail(g.arena_index, g.solo, nb + offset + n, nb + need);
  return reinterpret_cast<void*>(nb + offset);
}

// A shrinking realloc of a huge block keeps it where it is and gives the rest back at once (a
// copy would move the part kept and hold both until the old block is freed): the OS pages past
// its new end are purged, and the chunks past the one it ends in go back to the arena clean.
// Secure mode: the guard slice moves to the new end first.
bool huge_shrink(Segment* s, size_t n) noexcept {
  const size_t guard = g_secure ? kSliceSize : 0;
  uintptr_t sb = reinterpret_cast<uintptr_t>(s);
  size_t used_len = align_up(s->huge_start - sb + n, kSliceSize);
  size_t old_used = s->huge_used, old_len = s->huge_len;
  if (used_len >= old_used) return true;
  size_t need = align_up(used_len + guard, kSegmentSize);
  size_t chunks = need >> kSegmentShift;
  // Without a guard at the new end the block stays as it is (a shrink may keep the block).
  if (g_secure && !huge_guard_move(s, old_used, used_len)) return true;
  os::purge(reinterpret_cast<void*>(sb + used_len), old_len - used_len);
  g_counters.purged.fetch_add(old_len - used_len, std::memory_order_relaxed);
  budget_release(old_len - used_len);
  g_counters.huge_live.fetch_sub(old_used - used_len, std::memory_order_relaxed);
  s->huge_used = used_len;
  s->huge_len = used_len;
  if (chunks < s->chunk_count) {
    size_t old_chunks = s->chunk_count;
    s->chunk_count = static_cast<uint32_t>(chunks);
    s->mapped_size = need;
    arena_free_tail(s, chunks, old_chunks);
  }
  return true;
}

void huge_free(Segment* s, Page* page) noexcept {
  (void)page;
  size_t dirty_len = s->huge_len;
  g_counters.huge_live.fetch_sub(s->huge_used, std::memory_order_relaxed);
  if (g_secure) arena_guard_off(reinterpret_cast<char*>(s) + s->huge_used);
  arena_free(s, s->chunk_count, 0, dirty_len);
}

// ---- Abandon and reclaim ------------------------------------------------------------------
void segment_abandon(Segment* s) noexcept {
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  if (heap != nullptr) heap_segments_remove(heap, s);
  for (unsigned i = 1; i < kSlicesPerSegment;) {
    Page* p = &s->pages[i];
    if (p->kind == PageKind::kNone) { ++i; continue; }
    if (p->kind == PageKind::kRuns && heap != nullptr) runs_page_leaves(heap, p);
    p->next = p->prev = nullptr;
    i += p->slice_count != 0 ? p->slice_count : 1u;
  }
  s->owner_heap.store(nullptr, std::memory_order_release);
  s->thread_id.store(0, std::memory_order_release);
  LockGuard guard(g_abandoned_lock);
  s->kept_purging = 0;
  s->next = g_abandoned;
  s->prev = nullptr;
  g_abandoned = s;
  g_abandoned_count.fetch_add(1, std::memory_order_relaxed);
  g_counters.abandoned.fetch_add(1, std::memory_order_relaxed);
}

std::atomic<uint64_t> g_exit_reuse_ms{0};

bool segment_abandon_keep(Segment* s, uint64_t now) noexcept {
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  if (delay == 0 || s->purge_at_ms == 0) return false;
  // Only where threads come and go: a thread that exits alone (a one-off worker, the end of a
  // program) gives its memory back at once, as before.
  const uint64_t reuse = g_exit_reuse_ms.load(std::memory_order_relaxed);
  if (reuse == 0 || now > reuse + 4 * delay) return false;
  abandoned_purge_kept(now, false);  // what the threads before left and nobody took in time
  const uint64_t resident = s->free_slices & s->dirty_slices & ~uint64_t{1};
  // As many of the resident free slices as the allowance has room for (the lowest first); the
  // rest are purged now.
  unsigned take;
  size_t kept = g_abandoned_kept.load(std::memory_order_relaxed);
  do {
    const size_t room = kept < kExitKeepBytes ? (kExitKeepBytes - kept) >> kSliceShift : 0;
    take = static_cast<unsigned>(popcount64(resident));
    if (take > room) take = static_cast<unsigned>(room);
    if (take == 0) return false;
  } while (!g_abandoned_kept.compare_exchange_weak(kept, kept + (static_cast<size_t>(take) << kSliceShift),
                                                  std::memory_order_relaxed));
  uint64_t left = resident;
  for (unsigned i = 0; i < take; ++i) left &= left - 1;  // the lowest `take` stay
  if (left != 0) purge_slices(s, left);
  s->kept_slices = take;
  return true;
}

// Drop s's share of the allowance (it was adopted, or its kept slices were purged).
static void segment_unkeep(Segment* s) {
  if (s->kept_slices == 0) return;
  g_abandoned_kept.fetch_sub(static_cast<size_t>(s->kept_slices) << kSliceShift, std::memory_order_relaxed);
  s->kept_slices = 0;
}

// The segments to purge are marked under the abandoned list's lock (kept_purging: no thread
// adopts them, and no other purge takes them) and purged with it released, up to 16 at a time:
// every exit and every adoption takes that lock, and a purge under it made threads that exit
// together wait for each other's madvise calls (`larson --threads 8`: up to 2,000 sched_yield
// calls a run there). Nobody else changes an abandoned segment's slices.
void abandoned_purge_kept(uint64_t now, bool force) noexcept {
  constexpr unsigned kBatch = 16;
  Segment* due[kBatch];
  unsigned n;
  do {
    if (g_abandoned_kept.load(std::memory_order_relaxed) == 0) return;
    n = 0;
    {
      LockGuard guard(g_abandoned_lock);
      for (Segment* s = g_abandoned; s != nullptr && n < kBatch; s = s->next) {
        if (s->kept_purging || s->kept_slices == 0) continue;
        if (!force && now < s->exit_ms + kExitKeepMs && now < s->purge_at_ms) continue;
        s->kept_purging = 1;
        due[n++] = s;
      }
    }
    for (unsigned i = 0; i < n; ++i) {
      segment_purge(due[i], now, true);
      segment_unkeep(due[i]);
    }
    if (n != 0 && g_purge_window_hook != nullptr) g_purge_window_hook(PurgeWindow::kKeptSlices);
    LockGuard guard(g_abandoned_lock);
    for (unsigned i = 0; i < n; ++i) due[i]->kept_purging = 0;
  } while (n == kBatch);
}

size_t abandoned_kept_bytes() noexcept { return g_abandoned_kept.load(std::memory_order_relaxed); }

size_t abandoned_count() noexcept { return g_abandoned_count.load(std::memory_order_relaxed); }

bool segment_reclaim_one(Heap* heap, bool for_room) noexcept {
  if (g_abandoned_count.load(std::memory_order_relaxed) == 0) return false;
  HeapSegGuard seg_guard(heap);
  Segment* s;
  {
    LockGuard guard(g_abandoned_lock);
    Segment** link = &g_abandoned;  // the most recent one whose kept slices are not being purged
    while (*link != nullptr && (*link)->kept_purging) link = &(*link)->next;
    s = *link;
    if (s == nullptr) return false;
    *link = s->next;
    g_abandoned_count.fetch_sub(1, std::memory_order_relaxed);
  }
  s->next = s->prev = nullptr;
  if (s->exit_ms != 0 && for_room) {
    const uint64_t now = os::clock_ms();
    if (now <= s->exit_ms + static_cast<uint64_t>(option(Option::kPurgeDelay)))
      g_exit_reuse_ms.store(now, std::memory_order_relaxed);
  }
  s->exit_ms = 0;
  segment_unkeep(s);  // its slices are the adopting heap's to use and purge from now on
  s->owner_heap.store(heap, std::memory_order_release);
  s->thread_id.store(heap->thread_id, std::memory_order_release);
  heap_segments_push(heap, s);
  if (s->purge_at_ms != 0) note_purge_due(heap, s->purge_at_ms);
  heap->stats.segments_reclaimed++;
  g_counters.reclaimed.fetch_add(1, std::memory_order_relaxed);
  for (unsigned i = 1; i < kSlicesPerSegment;) {
    Page* p = &s->pages[i];
    if (p->kind == PageKind::kNone) { ++i; continue; }
    unsigned next = i + (p->slice_count != 0 ? p->slice_count : 1u);
    if (p->kind == PageKind::kRuns) {
      if (runs_reclaim(heap, p) && span_free_internal(s, p)) return true;  // empty, and the segment with it
      i = next;
      continue;
    }
    bool large = p->kind == PageKind::kLarge;
    // Take every block freed by other threads while nobody owned the page.
    uintptr_t tf = p->thread_free.exchange(large ? kDelayUse : kDelayNone, std::memory_order_acq_rel);
    Block* b = tf_block(tf);
    while (b != nullptr) {
      Block* nb = link_get(b);
      link_set(b, p->local_free);
      p->local_free = b;
      p->used--;
      b = nb;
    }
    if (p->used == 0) {
      if (span_free_internal(s, p)) return true;  // the segment was empty: it is gone
    } else if (large) {
      set_page_flags(p, static_cast<uint8_t>(kPageInFull | (page_flags(p) & kPageHasAligned)));
    } else {
      set_page_flags(p, static_cast<uint8_t>(page_flags(p) & ~kPageInFull));
      page_collect(p);
      class_blocks_note(heap, p, true);
      queue_push_back(heap, &heap->queues[p->size_class], p, p->size_class);
    }
    i = next;
  }
  return true;
}

void segments_fork_prepare() noexcept {
  g_abandoned_lock.lock();
  for (SwapScratch& sc : g_swap) sc.lock.lock();
}
void segments_fork_parent() noexcept {
  for (unsigned i = kSwapScratches; i-- > 0;) g_swap[i].lock.unlock();
  g_abandoned_lock.unlock();
}
// In the child, a purge of kept slices that another thread had under way never finishes: its
// segments can be adopted again (their slices as the purge left them, the dirty ones marked so).
void segments_fork_child() noexcept {
  for (unsigned i = kSwapScratches; i-- > 0;) g_swap[i].lock.reset();
  g_abandoned_lock.reset();
  for (Segment* s = g_abandoned; s != nullptr; s = s->next) s->kept_purging = 0;
}

}  // namespace nebula
