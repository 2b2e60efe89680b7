// core/runs.cpp: medium runs, the pages that serve plain requests of (kRunsMin, kRunsMax].
//
// A runs page is a span of kRunsPageSlices slices cut in kRunsUnits units of kRunsUnit bytes. A
// block is a run of units. The page's bookkeeping sits in the segment header's 512 bytes per slice
// (live_bits: runs pages exist only outside secure mode, which uses those bytes for its live
// bits, and never have holes): a bitmap of the units in use and a byte per unit, the length of the
// block that starts there (0: none). A free clears the block's bits, which merges it with the free
// units around it.
//
// The heap keeps the free runs of all its runs pages that a request can use (kRunsMinUnits or
// more) in bins by length (runs_bins, one per length up to kRunsMaxUnits and one for longer
// runs). A binned run's node (a RunSlot: links, start, length) sits in the page's bookkeeping
// after the length bytes, the slot of its first unit / kRunsSlotStride: nothing is written into a
// free run's own memory, so a write after free cannot corrupt the bins, and taking or merging a
// run reads the header's few lines instead of a cold line in each run. An allocation takes a run
// of the shortest length that holds it (best fit over the heap's runs pages) and the rest of the
// run goes back to its bin; a free merges the block with the free runs beside it (found in the
// bitmap) into one run.
// One pool for the whole range instead of a page queue per class: the free units a request of
// one size leaves serve a request of any other (`glibc-thread`, sizes of 4 B-32 KiB, held a page
// more than its live blocks needed in each of the range's 13 classes; docs/performance.md).
//
// A free is checked against the bookkeeping: a pointer that is not a block start, or a block that
// is free already, aborts with the pointer named.
//
// Page fields of a runs page: used = live blocks (blocks other threads freed count until the
// owner collects them), runs_units = units in use (in the owner's line; capacity stays 0),
// block_size = kRunsUnit, thread_free = other threads' frees (kDelayNone, or kDelayNever while
// its segment is abandoned: never kDelayUse, a runs page has no full list), next/prev = the
// heap's list of runs pages. Only the owner writes
// the bookkeeping and the slots; other threads read the length bytes and the bitmap (relaxed
// atomics) to check a pointer before they push it on thread_free.
#include "core/budget.hpp"
#include "core/engine.hpp"

namespace nebula {

namespace {

// The page's bookkeeping: the bitmap of units in use, a byte per unit, then the free runs' slots.
inline uint64_t* runs_used(Segment* s, Page* page) { return live_bits(s, page); }
inline uint8_t* runs_len(Segment* s, Page* page) { return reinterpret_cast<uint8_t*>(live_bits(s, page) + kRunsWords); }
inline RunSlot* runs_slot(Segment* s, Page* page, size_t i) {
  return reinterpret_cast<RunSlot*>(runs_len(s, page) + kRunsUnits) + i / kRunsSlotStride;
}
inline constexpr size_t kRunsMetaBytes = kRunsWords * sizeof(uint64_t) + kRunsUnits + kRunsSlots * sizeof(RunSlot);
static_assert((kRunsWords * sizeof(uint64_t) + kRunsUnits) % alignof(RunSlot) == 0, "the slots are aligned");
static_assert(kRunsMetaBytes <= kRunsPageSlices * 512, "a runs page's bookkeeping fits in its slices' share");
static_assert(kRunsMaxUnits < 256, "a block's length fits in its byte");
inline size_t len_at(const uint8_t* len, size_t i) { return __atomic_load_n(&len[i], __ATOMIC_RELAXED); }
inline void len_put(uint8_t* len, size_t i, size_t v) { __atomic_store_n(&len[i], static_cast<uint8_t>(v), __ATOMIC_RELAXED); }

inline uint64_t bm_word(const uint64_t* m, size_t w) { return __atomic_load_n(&m[w], __ATOMIC_RELAXED); }
inline bool bm_bit(const uint64_t* m, size_t i) { return (bm_word(m, i / 64) >> (i % 64)) & 1; }
inline void bm_put(uint64_t* m, size_t w, uint64_t v) { __atomic_store_n(&m[w], v, __ATOMIC_RELAXED); }

// Set (v) or clear units [i, i + n).
void bm_set(uint64_t* m, size_t i, size_t n, bool v) {
  while (n != 0) {
    const size_t b = i % 64, c = 64 - b < n ? 64 - b : n;
    const uint64_t mask = (c == 64 ? ~uint64_t{0} : ((uint64_t{1} << c) - 1)) << b;
    const uint64_t w = bm_word(m, i / 64);
    bm_put(m, i / 64, v ? w | mask : w & ~mask);
    i += c;
    n -= c;
  }
}

// The first unit at or after i in use, or kRunsUnits.
size_t next_used(const uint64_t* m, size_t i) {
  if (i >= kRunsUnits) return kRunsUnits;
  size_t w = i / 64;
  uint64_t x = bm_word(m, w) & (~uint64_t{0} << (i % 64));
  while (x == 0) {
    if (++w == kRunsWords) return kRunsUnits;
    x = bm_word(m, w);
  }
  return w * 64 + ctz64(x);
}

// The first unit after the last unit in use before i (0 if none): where the free run that ends
// at i starts.
size_t run_start_before(const uint64_t* m, size_t i) {
  if (i == 0) return 0;
  size_t w = (i - 1) / 64;
  const unsigned top = static_cast<unsigned>((i - 1) % 64);
  uint64_t x = bm_word(m, w) & (top == 63 ? ~uint64_t{0} : ((uint64_t{2} << top) - 1));
  while (x == 0) {
    if (w == 0) return 0;
    x = bm_word(m, --w);
  }
  return w * 64 + 64 - clz64(x);
}

inline unsigned bin_of(size_t units) {
  return units > kRunsMaxUnits ? kRunsBins - 1 : static_cast<unsigned>(units - kRunsMinUnits);
}

// The free run [i, i + units) of the page goes into its heap's bin (if a request can use it).
void bin_insert(Heap* heap, Segment* s, Page* page, size_t i, size_t units) {
  if (units < kRunsMinUnits) return;
  RunSlot* n = runs_slot(s, page, i);
  RunBins* bins = runs_bins(heap);
  const unsigned b = bin_of(units);
  n->unit = static_cast<uint16_t>(i);
  n->units = static_cast<uint16_t>(units);
  n->page = static_cast<uint16_t>(page - s->pages);
  n->prev = nullptr;
  n->next = bins->bin[b];
  if (n->next != nullptr) n->next->prev = n;
  bins->bin[b] = n;
  bins->mask |= uint64_t{1} << b;
}

void bin_unlink(RunBins* bins, RunSlot* n, unsigned b) {
  if (n->prev != nullptr) n->prev->next = n->next;
  else bins->bin[b] = n->next;
  if (n->next != nullptr) n->next->prev = n->prev;
  if (bins->bin[b] == nullptr) bins->mask &= ~(uint64_t{1} << b);
}

// ... and leaves it. Its slot must hold it: anything else means the header's bookkeeping was
// overwritten (a wild write far outside any block), and the call aborts naming the run.
void bin_remove(Heap* heap, Segment* s, Page* page, size_t i, size_t units) {
  if (units < kRunsMinUnits) return;
  RunSlot* n = runs_slot(s, page, i);
  if (NEBULA_UNLIKELY(n->unit != i || n->units != units))
    fatal_pointer("free", page_start(s, page) + (i << kRunsUnitShift), "a runs page's bookkeeping is corrupt");
  bin_unlink(runs_bins(heap), n, bin_of(units));
}

// The third word of a block that another thread freed (its second is g_free_key) until the owner
// collects it, which clears both. A block taken from a run is not written, so the words must not
// read as the mark by chance in memory that held other blocks: a freed class block keeps
// g_free_key in its second word, and one that went through a foreign cache keeps that cache's
// mark (~g_free_key) in its third. With the same mark here, a runs block made over such a block
// aborted as a double free at its first free (the unit tests in a random order, seed 5). The
// address in the mark keeps it apart from the cache's.
inline uintptr_t remote_mark(const void* p) { return ~g_free_key ^ reinterpret_cast<uintptr_t>(p); }

// The unit of p, checked: a block start of a block in use, or the call aborts naming p.
size_t runs_checked_unit(Segment* s, Page* page, const void* p, const char* op) {
  const size_t off = static_cast<size_t>(static_cast<const uint8_t*>(p) - page_start(s, page));
  const size_t i = off >> kRunsUnitShift;
  const char* freed = op[0] == 'r' ? "the block was freed already" : "double free (the block is free already)";
  if ((off & (kRunsUnit - 1)) != 0 || len_at(runs_len(s, page), i) == 0) {
    if (bm_bit(runs_used(s, page), i)) fatal_pointer(op, p, "pointer into the middle of a block, not its start");
    fatal_pointer(op, p, freed);
  }
  // Freed by another thread and not collected yet: its bookkeeping still says live, its second and
  // third words say free (a live block holds both by chance once in 2^128).
  const auto* w = static_cast<const uintptr_t*>(p);
  if (w[1] == g_free_key && w[2] == remote_mark(p)) fatal_pointer(op, p, freed);
  return i;
}

// The owner frees units [i, i + n) of the page (a block, or a block's tail): they merge with the
// free runs beside them into one run, which goes into its bin (an empty page's whole span too:
// every free run a request can use is in a bin, until its page leaves the heap).
void runs_release_units(Heap* heap, Segment* s, Page* page, size_t i, size_t n) {
  uint64_t* used = runs_used(s, page);
  bm_set(used, i, n, false);
  page->runs_units = static_cast<uint16_t>(page->runs_units - n);
  const size_t lo = run_start_before(used, i);
  const size_t hi = next_used(used, i + n);
  bin_remove(heap, s, page, lo, i - lo);
  bin_remove(heap, s, page, i + n, hi - (i + n));
  bin_insert(heap, s, page, lo, hi - lo);
}

// The owner frees the block at unit i.
void runs_release(Heap* heap, Segment* s, Page* page, size_t i) {
  const size_t n = len_at(runs_len(s, page), i);
  len_put(runs_len(s, page), i, 0);
  page->used--;
  runs_release_units(heap, s, page, i, n);
}

Page* runs_page_new(Heap* heap) {
  Page* page = span_alloc(heap, kRunsPageSlices, PageKind::kRuns);
  if (page == nullptr) return nullptr;
  Segment* s = segment_of(page);
  memset(live_bits(s, page), 0, kRunsMetaBytes);
  page->block_size = kRunsUnit;
  page->size_class = 0;
  page->div_magic = 0;  // is_block_start: never (every path branches on the kind first)
  page->div_bias = 0;
  set_page_flags(page, kPageRuns);
  page->capacity = 0;
  page->runs_units = 0;
  page->reserved = 0;
  page->used = 0;
  page->holes = 0;
  page->punched[0] = page->punched[1] = 0;
  page->sparse_since = 0;
  page->free = page->local_free = nullptr;
  page->thread_free.store(kDelayNone, std::memory_order_release);
  runs_list_insert(heap, page);
  bin_insert(heap, s, page, 0, kRunsUnits);
  return page;
}

// Bytes [from, to) of the page are about to be written (a block handed out): the OS pages of
// them that a punch gave back (runs_punch) count as committed again. False, and nothing
// changed, if the budget refuses them (the request then fails as any beyond the budget does).
bool unpunch(Page* page, size_t from, size_t to) {
  if ((page->punched[0] | page->punched[1]) == 0) return true;
  const size_t ps = os::page_size();
  uint64_t clear[2] = {0, 0};
  for (size_t k = from / ps; k * ps < to; ++k) clear[k / 64] |= uint64_t{1} << (k % 64);
  clear[0] &= page->punched[0];
  clear[1] &= page->punched[1];
  const size_t bytes = static_cast<size_t>(popcount64(clear[0]) + popcount64(clear[1])) * ps;
  if (bytes != 0 && !budget_charge(bytes)) return false;
  page->punched[0] &= ~clear[0];
  page->punched[1] &= ~clear[1];
  return true;
}

// A block of k units from the heap's bins, or nullptr when no run is that long.
void* runs_take(Heap* heap, size_t k, bool zero, size_t n) {
  RunBins* bins = runs_bins(heap);
  const uint64_t m = bins->mask & (~uint64_t{0} << bin_of(k));
  if (m == 0) return nullptr;
  const unsigned b = ctz64(m);
  RunSlot* slot = bins->bin[b];
  Segment* s = segment_of(slot);
  Page* page = &s->pages[slot->page];
  const size_t i = slot->unit, units = slot->units;
  uint64_t* used = runs_used(s, page);
  if (NEBULA_UNLIKELY(slot->page >= kSlicesPerSegment || page->kind != PageKind::kRuns || i + units > kRunsUnits ||
                      bin_of(units) != b || bm_bit(used, i) || runs_slot(s, page, i) != slot))
    fatal_pointer("malloc", slot, "a runs page's bookkeeping is corrupt (a free run's slot)");
  if (!unpunch(page, i << kRunsUnitShift, (i + k) << kRunsUnitShift)) return nullptr;
  bin_unlink(bins, slot, b);
  void* p = page_start(s, page) + (i << kRunsUnitShift);
  bm_set(used, i, k, true);
  len_put(runs_len(s, page), i, k);
  page->runs_units = static_cast<uint16_t>(page->runs_units + k);
  page->used++;
  page->sparse_since = 0;  // (k <= units: bin b holds runs of at least k units)
  bin_insert(heap, s, page, i + k, units - k);
  if (zero) memset(p, 0, n);  // (no free run holds another thread's mark: runs_release_list clears it)
  return p;
}

// Every free run of the page that a request can use, in or out of the heap's bins.
template <class Fn>
void for_each_run(Segment* s, Page* page, Fn fn) {
  const uint64_t* used = runs_used(s, page);
  for (size_t i = 0; i < kRunsUnits;) {
    if (bm_bit(used, i)) {  // a block: skip its units (a unit in use after a free one starts one)
      const size_t l = len_at(runs_len(s, page), i);
      i += l != 0 ? l : 1;
      continue;
    }
    const size_t e = next_used(used, i);
    if (e - i >= kRunsMinUnits) fn(i, e - i);
    i = e;
  }
}

// The owner frees the blocks of a list other threads pushed, each checked again.
void runs_release_list(Heap* heap, Page* page, Block* b) {
  Segment* s = segment_of(page);
  while (b != nullptr) {
    Block* next = b->next;
    const size_t off = static_cast<size_t>(reinterpret_cast<uint8_t*>(b) - page_start(s, page));
    const size_t i = off >> kRunsUnitShift;
    if ((off & (kRunsUnit - 1)) != 0 || len_at(runs_len(s, page), i) == 0)
      fatal_pointer("free", b, bm_bit(runs_used(s, page), i)
                                   ? "pointer into the middle of a block, not its start (freed by another thread)"
                                   : "double free (the block is free already; freed by another thread)");
    b->key = 0;  // the mark (runs_free) goes: a block made here later must not read as freed
    reinterpret_cast<uintptr_t*>(b)[2] = 0;
    runs_release(heap, s, page, i);
    b = next;
  }
}

// The page leaves the heap (freed, or its segment abandoned): its free runs leave the bins.
void runs_unbin_page(Heap* heap, Page* page) {
  Segment* s = segment_of(page);
  for_each_run(s, page, [&](size_t i, size_t units) { bin_remove(heap, s, page, i, units); });
}

inline Heap* owner_of(Page* page) { return segment_of(page)->owner_heap.load(std::memory_order_relaxed); }

}  // namespace

void runs_list_insert(Heap* heap, Page* page) noexcept {
  page->prev = nullptr;
  page->next = heap->runs.first;
  if (page->next != nullptr) page->next->prev = page;
  else heap->runs.last = page;
  heap->runs.first = page;
}

void runs_list_remove(Heap* heap, Page* page) noexcept {
  if (page->prev != nullptr) page->prev->next = page->next;
  else heap->runs.first = page->next;
  if (page->next != nullptr) page->next->prev = page->prev;
  else heap->runs.last = page->prev;
  page->next = page->prev = nullptr;
}

void runs_page_leaves(Heap* heap, Page* page) noexcept {
  runs_unbin_page(heap, page);
  runs_list_remove(heap, page);
}

void* runs_alloc(Heap* heap, size_t n, bool zero) noexcept {
  const size_t k = (n + kRunsUnit - 1) >> kRunsUnitShift;
  if (void* p = runs_take(heap, k, zero, n)) return p;
  // Other threads' frees (a third line of each page's descriptor) are taken when the bins have
  // no room, when the owner frees into their page (runs_free) and by maintenance.
  bool collected = false;
  for (Page* page = heap->runs.first; page != nullptr; page = page->next) {
    if (tf_block(page->thread_free.load(std::memory_order_relaxed)) != nullptr) {
      runs_collect(page);
      collected = true;
    }
  }
  if (collected) {
    if (void* p = runs_take(heap, k, zero, n)) return p;
  }
  if (runs_page_new(heap) == nullptr) return nullptr;
  return runs_take(heap, k, zero, n);
}

void runs_collect(Page* page) noexcept {
  uintptr_t tf = page->thread_free.load(std::memory_order_relaxed);
  if (tf_block(tf) == nullptr) return;
  // Take the whole list, keep the state bits.
  while (!page->thread_free.compare_exchange_weak(tf, tf & kDelayMask, std::memory_order_acquire,
                                                  std::memory_order_relaxed)) {
  }
  runs_release_list(owner_of(page), page, tf_block(tf));
}

void runs_free(Segment* s, Page* page, void* p, bool owner) noexcept {
  Block* b = static_cast<Block*>(p);
  const size_t i = runs_checked_unit(s, page, p, "free");
  if (!owner) {
    b->key = g_free_key;
    reinterpret_cast<uintptr_t*>(p)[2] = remote_mark(p);
    Heap* me = t_heap;
    if (me->live) me->stats.remote_frees++;
    else g_counters.remote_frees_no_heap.fetch_add(1, std::memory_order_relaxed);
    free_block_remote(page, b);  // (a runs page is never in kDelayUse)
    return;
  }
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  runs_release(heap, s, page, i);
  // Other threads' frees into the page go back with the owner's. Left for maintenance, they kept
  // their units out of the bins for up to 64 slow-path calls, and the heap's requests took other
  // runs and new pages meanwhile (`rptest`, one block in eight freed by the next thread: 1.18 ->
  // 1.09 x the classes' time).
  if (tf_block(page->thread_free.load(std::memory_order_relaxed)) != nullptr) runs_collect(page);
  if (page->used != 0) return;
  // Empty: it goes back to its segment, unless it is the heap's only runs page (a loop that
  // allocates and frees one block must not make and unmake a page each time); maintenance lets
  // that one go once it has stayed empty for a purge delay (runs_maintain).
  if (heap->runs.first == page && page->next == nullptr) return;
  page_free(heap, page);
}

size_t runs_block_size(Segment* s, Page* page, const void* p, const char* op) noexcept {
  const size_t i = runs_checked_unit(s, page, p, op);
  return len_at(runs_len(s, page), i) << kRunsUnitShift;
}

size_t runs_usable(Segment* s, Page* page, const void* p) noexcept {
  const size_t off = static_cast<size_t>(static_cast<const uint8_t*>(p) - page_start(s, page));
  const size_t i = off >> kRunsUnitShift;
  const uint8_t* len = runs_len(s, page);
  // The block that holds p starts at most kRunsMaxUnits - 1 units before it.
  for (size_t j = i + 1; j-- > 0 && i - j < kRunsMaxUnits;) {
    const size_t n = len_at(len, j);
    if (n != 0) return j + n > i ? ((j + n) << kRunsUnitShift) - off : 0;
  }
  return 0;
}

bool runs_resize(Segment* s, Page* page, void* p, size_t n) noexcept {
  if (s->thread_id.load(std::memory_order_relaxed) != os::thread_id() || n > kRunsMax || n <= kRunsMin) return false;
  Heap* heap = s->owner_heap.load(std::memory_order_relaxed);
  const size_t i = static_cast<size_t>(static_cast<uint8_t*>(p) - page_start(s, page)) >> kRunsUnitShift;
  const size_t have = len_at(runs_len(s, page), i);
  const size_t k = (n + kRunsUnit - 1) >> kRunsUnitShift;
  uint64_t* used = runs_used(s, page);
  if (k > have) {
    // Into the free run after it, if that is long enough; the rest of that run stays free.
    const size_t lo = i + have, hi = next_used(used, lo);
    if (hi < i + k || !unpunch(page, lo << kRunsUnitShift, (i + k) << kRunsUnitShift)) return false;
    bin_remove(heap, s, page, lo, hi - lo);
    bm_set(used, lo, k - have, true);
    page->runs_units = static_cast<uint16_t>(page->runs_units + (k - have));
    len_put(runs_len(s, page), i, k);
    bin_insert(heap, s, page, i + k, hi - (i + k));
  } else if (k < have) {
    len_put(runs_len(s, page), i, k);
    runs_release_units(heap, s, page, i + k, have - k);
  }
  return true;
}

size_t runs_punch(Page* page) noexcept {
  // Every whole OS page inside a free run goes back.
  Segment* s = segment_of(page);
  uint8_t* start = page_start(s, page);
  const size_t ps = os::page_size();
  size_t bytes = 0, calls = 0;
  for_each_run(s, page, [&](size_t i, size_t units) {
    const size_t from = align_up(i << kRunsUnitShift, ps);
    const size_t to = ((i + units) << kRunsUnitShift) & ~(ps - 1);
    for (size_t k = from / ps; k * ps < to;) {  // runs of OS pages not given back yet
      if (page->punched[k / 64] & (uint64_t{1} << (k % 64))) {
        ++k;
        continue;
      }
      size_t e = k;
      while (e * ps < to && !(page->punched[e / 64] & (uint64_t{1} << (e % 64)))) {
        page->punched[e / 64] |= uint64_t{1} << (e % 64);
        ++e;
      }
      os::purge(start + k * ps, (e - k) * ps);
      bytes += (e - k) * ps;
      ++calls;
      k = e;
    }
  });
  punched_count(bytes, calls);
  return bytes;
}

bool runs_maintain(Heap* heap, Page* page, uint32_t now32, uint32_t delay, bool all) noexcept {
  runs_collect(page);
  if (page->used != 0) {
    // Sparse (under a quarter of its units in use) for four purge delays, or at once when the
    // thread is about to wait or the heap is trimmed: the free runs' memory goes back, as a
    // class's sparse page gives back its free blocks' (holes).
    if (page->runs_units * 4 >= kRunsUnits) {
      page->sparse_since = 0;
      return false;
    }
    if (page->sparse_since == 0) {
      page->sparse_since = now32;
      if (!all) return false;
    }
    if (all || now32 - page->sparse_since >= 4 * delay) runs_punch(page);
    return false;
  }
  const bool only = heap->runs.first == page && page->next == nullptr;
  if (only && !all) {
    // The heap's last runs page, empty: it goes once it has been so at two passes a purge
    // delay apart (the range has gone quiet), as a class's last page does.
    if (page->sparse_since == 0) {
      page->sparse_since = now32;
      return false;
    }
    if (now32 - page->sparse_since < delay) return false;
  }
  return page_free(heap, page);
}

bool runs_reclaim(Heap* heap, Page* page) noexcept {
  // Every block freed by other threads while nobody owned the page; their frees go on the page's
  // list again from now on. Its free runs join the adopting heap's bins first, so that the
  // blocks freed now merge with them.
  const uintptr_t tf = page->thread_free.exchange(kDelayNone, std::memory_order_acq_rel);
  page->next = page->prev = nullptr;
  runs_list_insert(heap, page);
  Segment* s = segment_of(page);
  for_each_run(s, page, [&](size_t i, size_t units) { bin_insert(heap, s, page, i, units); });
  runs_release_list(heap, page, tf_block(tf));
  if (page->used != 0) {
    page->sparse_since = 0;
    return false;
  }
  // Empty: the caller frees it; its one run leaves the bins with the list.
  runs_page_leaves(heap, page);
  return true;
}

size_t runs_live_bytes(const Page* page) noexcept {
  return static_cast<size_t>(__atomic_load_n(&page->runs_units, __ATOMIC_RELAXED)) << kRunsUnitShift;
}

}  // namespace nebula
