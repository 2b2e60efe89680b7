// core/page.cpp: pages of small and medium blocks and the heap's per-class page queues.
//
// Owns: Page::free/local_free/used/capacity (owner thread), the delay state protocol of
// Page::thread_free, PageQueue membership, Heap::direct.
// A page moves between three places: the front of its class queue (allocation happens there),
// elsewhere in the queue, and the heap's full list (no free block, nothing left to carve).
#include <cstring>

#include "core/budget.hpp"
#include "core/engine.hpp"

namespace nebula {

// The page every empty direct entry points at: its free list is always empty.
constinit Page g_empty_page = {};

namespace {

constexpr size_t kExtendBytes = 4096;  // carve about one OS page of blocks at a time
constexpr unsigned kExtendMin = 4;

void page_extend(Page* page) {
  uint32_t left = static_cast<uint32_t>(page->reserved - page->capacity);
  uint32_t count = static_cast<uint32_t>(kExtendBytes / page->block_size);
  // The first carve of a page touches one OS page at most (or one block): a class a program
  // uses for a block or two (buffers made at start-up) costs one OS page, not four blocks'.
  if (count < kExtendMin && page->capacity != 0) count = kExtendMin;
  if (count == 0) count = 1;
  if (count > left) count = left;
  size_t bsize = page->block_size;
  uint8_t* first = page_start(segment_of(page), page) + static_cast<size_t>(page->capacity) * bsize;
  if (NEBULA_UNLIKELY(g_secure)) {
    // Secure mode: link the new blocks in a random order (Fisher-Yates over their indices).
    static __thread uint64_t rng = 0;
    if (rng == 0) rng = os::random_u64() | 1;
    uint16_t order[kSliceSize / 16];
    for (uint32_t i = 0; i < count; ++i) order[i] = static_cast<uint16_t>(i);
    for (uint32_t i = count; i > 1; --i) {
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      uint32_t j = static_cast<uint32_t>(rng % i);
      uint16_t t = order[i - 1];
      order[i - 1] = order[j];
      order[j] = t;
    }
    Block* head = page->free;
    for (uint32_t i = 0; i < count; ++i) {
      auto* b = reinterpret_cast<Block*>(first + static_cast<size_t>(order[i]) * bsize);
      link_set_in(page, b, head);
      head = b;
    }
    page->free = head;
  } else {
    // New blocks of zeroed memory keep their key word 0, which tells calloc they are zero; in
    // memory used before, each new block is marked like a freed one, so that calloc clears it.
    const bool mark = !page->is_clean;
    const uintptr_t key = g_free_key;
    uint8_t* p = first;
    for (uint32_t i = 0; i < count; ++i, p += bsize) {
      auto* b = reinterpret_cast<Block*>(p);
      b->next = i + 1 < count ? reinterpret_cast<Block*>(p + bsize) : page->free;
      if (mark) b->key = key;
    }
    page->free = reinterpret_cast<Block*>(first);
  }
  page->capacity = static_cast<uint16_t>(page->capacity + count);
}

// The page ran out of free blocks but has holes (page_punch): they become free blocks again,
// marked as used memory (a hole's block may straddle an OS page that was not given back), and
// their OS pages count as committed again. False if the budget refuses them.
bool page_refill_holes(Page* page) {
  Segment* s = segment_of(page);
  const size_t ps = os::page_size();
  const size_t bytes = static_cast<size_t>(popcount64(page->punched[0]) + popcount64(page->punched[1])) * ps;
  if (bytes != 0 && !budget_charge(bytes)) return false;
  if (page->punched_for_growth) g_punch_feedback.refilled.fetch_add(bytes, std::memory_order_relaxed);
  page->punched_for_growth = 0;
  g_counters.refilled.fetch_add(bytes, std::memory_order_relaxed);
  t_heap->refilled_bytes += bytes;  // (the owner carves)
  uint64_t* bits = hole_bits(s, page);
  uint8_t* start = page_start(s, page);
  const size_t bsize = page->block_size;
  const uintptr_t key = g_free_key;
  Block* head = page->free;
  for (size_t w = (page->capacity + 63u) / 64u; w-- > 0;) {
    uint64_t m = bits[w];
    while (m != 0) {
      unsigned hi = 63u - static_cast<unsigned>(__builtin_clzll(m));  // highest first: the list ends up in address order
      m &= ~(uint64_t{1} << hi);
      auto* b = reinterpret_cast<Block*>(start + (w * 64 + hi) * bsize);
      b->next = head;
      b->key = key;
      head = b;
    }
    // Cleared before any of these blocks is handed out: a thread that frees one later must
    // not find its bit (see block_is_hole).
    __atomic_store_n(&bits[w], 0, __ATOMIC_RELAXED);
  }
  page->free = head;
  page->holes = 0;
  page->punched[0] = page->punched[1] = 0;
  // Its free memory is in use again: a later punch judges the page afresh (heap_punch_sparse
  // would otherwise wait for three quarters of the blocks live at the last punch to die).
  page->sparse_since = 0;
  set_page_flags(page, static_cast<uint8_t>(page_flags(page) & ~kPageHoles));
  return true;
}

void page_init(Heap* heap, Page* page, unsigned cls) {
  page->block_size = kClassSize[cls];
  page->div_magic = ~uint64_t{0} / page->block_size + 1;
  uint64_t start = reinterpret_cast<uintptr_t>(page_start(segment_of(page), page));
  page->div_bias = uint64_t{0} - start * page->div_magic;
  page->fast_magic = page_flags(page) == 0 ? page->div_magic : 0;
  if (g_secure) {
    page->list_key = os::random_u64();
    set_page_flags(page, kPageSecure);
    memset(live_bits(segment_of(page), page), 0, 512);
  }
  page->size_class = static_cast<uint8_t>(cls);
  page->reserved = static_cast<uint16_t>((static_cast<size_t>(page->slice_count) << kSliceShift) / page->block_size);
  page->capacity = 0;
  page->used = 0;
  page->holes = 0;
  page->punched[0] = page->punched[1] = 0;
  page->punched_for_growth = 0;
  page->sparse_since = 0;
  page->passed_over = 0;
  page->remote_seen = 0;
  page->free = nullptr;
  page->local_free = nullptr;
  page->thread_free.store(kDelayNone, std::memory_order_release);
  class_blocks_note(heap, page, true);
}

// A spare page (page_retire) for a page of one slice of class cls. Its own class's takes it as it
// was: its free blocks are on its lists already, nothing to carve. Another class's sets it up
// anew over memory that is not clean.
Page* spare_take(Heap* heap, unsigned cls, PageKind kind) {
  Page* page = heap->spare;
  heap->spare = page->next;
  heap->spare_count--;
  heap->spare_taken++;
  page->next = page->prev = nullptr;
  page->kind = kind;
  set_page_flags(page, g_secure ? kPageSecure : 0);
  if (page->size_class == cls) {
    class_blocks_note(heap, page, true);
    page_collect(page);  // blocks the generic path freed wait on local_free
    page->sparse_since = 0;
    page->passed_over = 0;
    page->remote_seen = 0;
    return page;
  }
  page->is_clean = 0;  // carved blocks get the free key: calloc clears them
  page_init(heap, page, cls);
  page_extend(page);
  return page;
}

Page* page_new(Heap* heap, unsigned cls) {
  PageKind kind = kClassSize[cls] <= kSmallMax ? PageKind::kSmall : PageKind::kMedium;
  if (heap->spare != nullptr && page_slices_for_class(cls) == 1) return spare_take(heap, cls, kind);
  Page* page = span_alloc(heap, page_slices_for_class(cls), kind, page_min_slices_for_class(cls));
  if (page == nullptr) return nullptr;
  page_init(heap, page, cls);
  page_extend(page);
  return page;
}

void list_remove(PageQueue* q, Page* page) {
  if (page->prev != nullptr) page->prev->next = page->next;
  else q->first = page->next;
  if (page->next != nullptr) page->next->prev = page->prev;
  else q->last = page->prev;
  page->next = page->prev = nullptr;
}

void list_push_front(PageQueue* q, Page* page) {
  page->prev = nullptr;
  page->next = q->first;
  if (q->first != nullptr) q->first->prev = page;
  else q->last = page;
  q->first = page;
}

void list_push_back(PageQueue* q, Page* page) {
  page->next = nullptr;
  page->prev = q->last;
  if (q->last != nullptr) q->last->next = page;
  else q->first = page;
  q->last = page;
}

// Move an exhausted page to the full list; blocks freed by other threads from now on are
// announced through the heap's delayed list.
void page_to_full(Heap* heap, Page* page) {
  unsigned cls = page->size_class;
  queue_remove(heap, &heap->queues[cls], page);
  list_push_back(&heap->full, page);
  set_page_flags(page, static_cast<uint8_t>(page_flags(page) | kPageInFull));
  page_set_delay(page, kDelayUse, false);
  // A block that arrived between the last collect and the state change would wait for the
  // next remote free: take the page out again at once.
  if (tf_block(page->thread_free.load(std::memory_order_acquire)) != nullptr) page_unfull(heap, page);
}

}  // namespace

bool page_set_delay(Page* page, DelayState st, bool override_never) noexcept {
  uintptr_t old = page->thread_free.load(std::memory_order_relaxed);
  for (;;) {
    uintptr_t cur = old & kDelayMask;
    if (cur == kDelayFreeing) {  // another thread is announcing a block: let it finish
      os::yield();
      old = page->thread_free.load(std::memory_order_relaxed);
      continue;
    }
    if (cur == kDelayNever && !override_never) return false;
    if (cur == st) return true;
    uintptr_t nv = (old & ~kDelayMask) | st;
    if (page->thread_free.compare_exchange_weak(old, nv, std::memory_order_acq_rel, std::memory_order_relaxed)) return true;
  }
}

void heap_update_direct(Heap* heap, unsigned cls) noexcept {
  if (kClassSize[cls] > kDirect2Max || g_secure) return;  // secure mode: the fast path stays off
  Page* page = heap->queues[cls].first;
  if (heap->fc_direct & (uint64_t{1} << cls)) page = &heap->fc->page[cls];  // the foreign cache first
  if (page == nullptr) page = &g_empty_page;
  if (kClassSize[cls] > kDirectMax) {
    // The classes of the second table are the runs range: with runs on, plain requests there go
    // to the runs pages (runs_alloc), and the classes' pages serve aligned requests only, from
    // the generic path. (Set, not left: an entry made while g_runs was not yet set, by a thread
    // that started during engine_init, must not outlive its page.)
    static_assert(kRunsMin == kDirectMax && kRunsMax == kDirect2Max, "the second direct table is the runs range");
    if (g_runs) page = &g_empty_page;
    for (size_t i = direct2_slot(kClassSize[cls - 1] + 1); i <= direct2_slot(kClassSize[cls]); ++i)
      heap->direct2[i] = page;
    return;
  }
  size_t lo = cls == 0 ? 0 : kClassSize[cls - 1] / 16 + 1;
  size_t hi = kClassSize[cls] / 16;
  for (size_t i = lo; i <= hi; ++i) heap->direct[i] = page;
}

void queue_remove(Heap* heap, PageQueue* q, Page* page) noexcept {
  bool was_first = q->first == page;
  list_remove(q, page);
  if (was_first) heap_update_direct(heap, page->size_class);
}

void queue_push_front(Heap* heap, PageQueue* q, Page* page, unsigned cls) noexcept {
  list_push_front(q, page);
  heap_update_direct(heap, cls);
}

void queue_push_back(Heap* heap, PageQueue* q, Page* page, unsigned cls) noexcept {
  bool empty = q->first == nullptr;
  list_push_back(q, page);
  if (empty) heap_update_direct(heap, cls);
}

// Move the blocks freed by the owner and by other threads to where allocation finds them.
void page_collect(Page* page) noexcept {
  uintptr_t tf = page->thread_free.load(std::memory_order_relaxed);
  if (tf_block(tf) != nullptr) {
    // Take the whole list, keep the state bits.
    while (!page->thread_free.compare_exchange_weak(tf, tf & kDelayMask, std::memory_order_acquire,
                                                    std::memory_order_relaxed)) {
    }
    Block* head = tf_block(tf);
    if (head != nullptr) {
      page->remote_seen = 1;
      page->used -= tf_count(tf);
      if (page->free == nullptr) {
        // The list becomes the free list as it is: its blocks are read one at a time as they
        // are handed out, instead of in one chain of misses here.
        page->free = head;
      } else {
        Block* tail = head;
        for (Block* n = link_get(tail); n != nullptr; n = link_get(tail)) tail = n;
        link_set(tail, page->local_free);
        page->local_free = head;
      }
    }
  }
  if (page->free == nullptr && page->local_free != nullptr) {
    page->free = page->local_free;
    page->local_free = nullptr;
  }
}

// ---- Holes: the free memory of sparse pages goes back to the OS -----------------------------
// A page whose blocks mostly died (a program that freed most of a phase's objects, or whose
// objects changed size) keeps its few live blocks scattered over all of its memory and can go
// back to its segment only when the last one dies. The memory of its free blocks can go back
// now: every OS page of the carved part that holds only free blocks is purged, and the blocks
// that touch it leave the free lists as holes (a bit each in hole_bits). The page hands them
// out again, carved anew, only when it has no other free block (queue_alloc), and forgets them
// when it empties. While a page has holes every free of its blocks takes the generic path,
// which rejects a hole as a double free.
size_t page_punch(Page* page) noexcept {
  if (g_secure || (page->kind != PageKind::kSmall && page->kind != PageKind::kMedium)) return 0;
  Segment* s = segment_of(page);
  const size_t ps = os::page_size();
  const size_t bsize = page->block_size;
  const uint32_t cap = page->capacity;
  const size_t carved = static_cast<size_t>(cap) * bsize;
  if (carved < ps || (static_cast<size_t>(page->slice_count) << kSliceShift) / ps > 128) return 0;
  uint8_t* start = page_start(s, page);
  uint64_t free_bits[kSliceSize / kMinAlign / 64];
  const size_t words = (cap + 63u) / 64u;
  memset(free_bits, 0, words * sizeof(uint64_t));
  auto mark = [&](Block* l) {
    for (; l != nullptr; l = l->next) {
      size_t i = static_cast<size_t>(reinterpret_cast<uint8_t*>(l) - start) / bsize;
      free_bits[i / 64] |= uint64_t{1} << (i % 64);
    }
  };
  mark(page->free);
  mark(page->local_free);
  uint64_t* holes = hole_bits(s, page);
  // The bits mean something only while the page has holes (kPageHoles): the memory may hold
  // anything before (the header slice may have been a huge block's data), so a first punch
  // clears them, all of them (the page may carve more blocks later).
  if (page->holes == 0) memset(holes, 0, kSliceSize / kMinAlign / 8);
  auto is_set = [](const uint64_t* m, size_t i) { return (m[i / 64] >> (i % 64)) & 1; };
  // First the OS pages to give back and the blocks that become holes; then the lists lose
  // those blocks (their links are in that memory); only then does the memory go.
  const uint64_t before[2] = {page->punched[0], page->punched[1]};
  size_t new_holes = 0;
  for (size_t k = 0; (k + 1) * ps <= carved; ++k) {
    const size_t first = k * ps / bsize, last = ((k + 1) * ps - 1) / bsize;
    bool all = !is_set(page->punched, k);
    for (size_t i = first; all && i <= last; ++i) all = is_set(free_bits, i) || is_set(holes, i);
    if (!all) continue;
    page->punched[k / 64] |= uint64_t{1} << (k % 64);
    for (size_t i = first; i <= last; ++i) {
      if (!is_set(free_bits, i)) continue;  // a hole already
      free_bits[i / 64] &= ~(uint64_t{1} << (i % 64));
      __atomic_store_n(&holes[i / 64], holes[i / 64] | (uint64_t{1} << (i % 64)), __ATOMIC_RELAXED);
      ++new_holes;
    }
  }
  const uint64_t fresh[2] = {page->punched[0] & ~before[0], page->punched[1] & ~before[1]};
  if ((fresh[0] | fresh[1]) == 0) return 0;
  auto filter = [&](Block*& l) {
    Block** at = &l;
    while (*at != nullptr) {
      size_t i = static_cast<size_t>(reinterpret_cast<uint8_t*>(*at) - start) / bsize;
      if (is_set(holes, i)) *at = (*at)->next;
      else at = &(*at)->next;
    }
  };
  filter(page->free);
  filter(page->local_free);
  size_t bytes = 0, runs = 0;
  for (size_t k = 0; k < 128;) {
    if (!is_set(fresh, k)) {
      ++k;
      continue;
    }
    size_t e = k;
    while (e < 128 && is_set(fresh, e)) ++e;
    os::purge(start + k * ps, (e - k) * ps);
    bytes += (e - k) * ps;
    ++runs;
    k = e;
  }
  page->holes = static_cast<uint16_t>(page->holes + new_holes);
  // Release: a thread that sees the flag (free_generic) sees the bits it guards.
  std::atomic_thread_fence(std::memory_order_release);
  if (page->holes != 0) set_page_flags(page, static_cast<uint8_t>(page_flags(page) | kPageHoles));
  punched_count(bytes, runs);
  return bytes;
}

void punched_count(size_t bytes, size_t calls) noexcept {
  if (bytes == 0) return;
  budget_release(bytes);
  g_counters.purged.fetch_add(bytes, std::memory_order_relaxed);
  g_counters.punched.fetch_add(bytes, std::memory_order_relaxed);
  g_counters.purge_calls.fetch_add(calls, std::memory_order_relaxed);
}

void page_unfull(Heap* heap, Page* page) noexcept {
  list_remove(&heap->full, page);
  set_page_flags(page, static_cast<uint8_t>(page_flags(page) & ~kPageInFull));
  page_set_delay(page, kDelayNone, false);
  page->passed_over = 0;  // back in the queue: it may be passed over once again (queue_alloc)
  queue_push_back(heap, &heap->queues[page->size_class], page, page->size_class);
}

// Give an empty page's span back to its segment.
bool page_free(Heap* heap, Page* page) noexcept {
  if (page->kind == PageKind::kRuns) runs_page_leaves(heap, page);
  if (page->kind == PageKind::kSmall || page->kind == PageKind::kMedium) {
    class_blocks_note(heap, page, false);
    if (page_flags(page) & kPageInFull) list_remove(&heap->full, page);
    else queue_remove(heap, &heap->queues[page->size_class], page);
  }
  return span_free(segment_of(page), page);
}

void page_retire_at(Segment* s, uintptr_t off) noexcept { page_retire(page_at(s, off)); }

// used dropped to 0 on a free by the owner. Keep the page if it is the only one of its class
// (a loop that allocates and frees one block must not make and unmake a page each time).
void page_retire(Page* page) noexcept {
  Heap* heap = segment_of(page)->owner_heap.load(std::memory_order_relaxed);
  if (page->kind == PageKind::kLarge) {
    span_free(segment_of(page), page);
    return;
  }
  PageQueue* q = &heap->queues[page->size_class];
  if (q->first == page && page->next == nullptr) {
    // Kept empty, so that a loop allocating and freeing one block does not make and unmake a
    // page each time; except when it is the last span of its segment and another of the
    // heap's segments has room for the next page of its class: then the page goes, its
    // segment with it, and the segment's resident chunk is free for any thread (a thread that
    // then waits, as in a join, no longer pins 4 MiB that a thread starting now could use).
    // Maintenance lets it go too once the class has stayed quiet (heap_punch_sparse).
    Segment* s = segment_of(page);
    if (s->used_spans != 1 || !heap_has_room_elsewhere(heap, s, page->slice_count)) return;
  }
  page_release(heap, page);
}

// An empty page leaves its class's queue: see page_retire. True when its segment went back to
// the arena with it.
bool page_release(Heap* heap, Page* page) noexcept {
  PageQueue* q = &heap->queues[page->size_class];
  // A page of one slice with nothing special about it (no holes, no aligned blocks)
  // becomes a spare rather than free slices, unless it is its segment's last span (the segment
  // goes back to the arena, as before). `glibc-simple` fills a batch of pages with blocks of
  // one class, frees them all and fills them again: each page went back to its segment and was
  // made and carved anew, 107,000 times (the span search, the index's upkeep, the carving:
  // 15% of its instructions). The slices stay resident either way until the purge delay;
  // spares the heap does not take again are freed at the next maintenance pass, and before it
  // takes slices that are not resident (span_alloc), so they do not add to its footprint.
  // In secure mode too (its pages carry kPageSecure and keep it): every page there has a flag,
  // and without spares `cfrac` made and freed 14,000 pages in 2.4 M allocations, each made anew
  // with its live bits cleared and its blocks linked in a new random order.
  const uint8_t secure = g_secure ? kPageSecure : 0;
  if (page->slice_count == 1 && page_flags(page) == secure && (page->punched[0] | page->punched[1]) == 0 &&
      heap->spare_count < kSpareMax && segment_of(page)->used_spans > 1) {
    queue_remove(heap, q, page);
    class_blocks_note(heap, page, false);
    set_page_flags(page, static_cast<uint8_t>(kPageSpare | secure));
    page->next = heap->spare;
    heap->spare = page;
    heap->spare_count++;
    return false;
  }
  return page_free(heap, page);
}

void spare_flush(Heap* heap) noexcept {
  while (Page* page = heap->spare) {
    heap->spare = page->next;
    heap->spare_count--;
    page->next = nullptr;
    span_free(segment_of(page), page);
  }
}

// A medium page holds 2 to 9 blocks, and a class of them often a few pages, each partly free
// after random frees; a page goes back only once all its blocks are free. When the current page
// runs out, the next block comes from the fullest of the first 8 pages that have room (the
// fewest blocks not handed out, counting blocks other threads freed and nobody collected as
// handed out), so that the emptier pages drain and go back instead of all staying half full.
// `glibc-thread`: peak RSS 1.0% lower (7 alternated pairs; a census of one heap: the highest
// resident in pages 6.52 -> 6.40 MiB), `rptest` 1.8%, `mstress` 1.9%. Small pages hold hundreds
// of blocks and keep the queue order (the walk would only cost there).
static Page* queue_fullest_first(Heap* heap, PageQueue* q, unsigned cls) {
  Page* best = nullptr;
  uint32_t best_room = 0;
  unsigned seen = 0;
  for (Page* c = q->first; c != nullptr && seen < 8; c = c->next, ++seen) {
    uint32_t room = c->reserved - c->used;
    if (room != 0 && (best == nullptr || room < best_room)) {
      best = c;
      best_room = room;
    }
  }
  if (best == nullptr || best == q->first) return q->first;
  list_remove(q, best);
  queue_push_front(heap, q, best, cls);
  return best;
}

// Hand out the first block of the page's free list (it has one).
static inline void* page_pop(Page* page, bool zero, size_t n) {
  page->passed_over = 0;
  Block* b = page->free;
  page->free = link_get_in(page, b);
  page->used++;
  bool zeroed = b->key != g_free_key;  // a new block of zeroed memory (see page_extend)
  b->key = 0;
  if (NEBULA_UNLIKELY(g_secure)) {
    zeroed = false;
    Segment* s = segment_of(page);
    size_t i = block_index(s, page, b);
    uint64_t* bits = live_bits(s, page);
    uint64_t bit = uint64_t{1} << (i % 64);
    // Atomic: other threads clear bits of the same word when they free blocks of this page.
    if (i >= page->reserved || (__atomic_fetch_or(&bits[i / 64], bit, __ATOMIC_ACQ_REL) & bit))
      fatal_pointer("malloc", b, "free list corrupted: this block is allocated already (a write after free?)");
  }
  if (zero) {
    if (zeroed) b->next = nullptr;
    else memset(b, 0, n);
  }
  return b;
}

NEBULA_NOINLINE static void* queue_alloc_search(Heap* heap, unsigned cls, bool zero, size_t n) noexcept;

// Secure mode sends every allocation here (its direct tables stay empty): when the class's first
// page has a free block, it comes without the search's set-up (88 -> 64 instructions per call).
void* queue_alloc(Heap* heap, unsigned cls, bool zero, size_t n) noexcept {
  if (NEBULA_UNLIKELY(g_secure)) {
    Page* page = heap->queues[cls].first;
    if (page != nullptr && page->free != nullptr) return page_pop(page, zero, n);
  }
  return queue_alloc_search(heap, cls, zero, n);
}

static void* queue_alloc_search(Heap* heap, unsigned cls, bool zero, size_t n) noexcept {
  heap->class_ticks[cls]++;
  if (heap->fc_active & (uint64_t{1} << cls)) {  // the class has a foreign cache (with blocks, or empty now)
    Page* fp = &heap->fc->page[cls];
    if (Block* fb = fp->free; fb != nullptr) {
      // A class the direct table does not reach, or whose cache waited for more blocks (see
      // fcache_push) while the page ran out: the next blocks come from the cache too.
      if (!(heap->fc_direct & (uint64_t{1} << cls))) {
        heap->fc_direct |= uint64_t{1} << cls;
        heap_update_direct(heap, cls);
      }
      fp->free = fb->next;
      fp->used++;
      fb->key = 0;
      if (zero) memset(fb, 0, n);
      return fb;
    }
    // The foreign cache of the class ran out: back to the pages.
    heap->fc_active &= ~(uint64_t{1} << cls);
    heap->fc->pushed[cls] = 0;
    fp->used = 0;
    if (heap->fc_direct & (uint64_t{1} << cls)) {
      heap->fc_direct &= ~(uint64_t{1} << cls);
      heap_update_direct(heap, cls);
    }
  }
  heap->cache_bulk &= ~(uint64_t{1} << cls);  // a run of the owner's frees has ended
  PageQueue* q = &heap->queues[cls];
  Page* page = q->first;
  if (kClassSize[cls] > kSmallMax && page != nullptr && page->free == nullptr && page->next != nullptr)
    page = queue_fullest_first(heap, q, cls);
  bool reclaimed = false;
  // A page that, once collected, has only a few free blocks would send every few allocations
  // back here: remember the best such page, move it to the back of the queue to gather more
  // frees, and look further; if no page has enough, a fresh page adds free capacity (bounded:
  // pages stop being "poor" once the spare blocks reach about 1/8 of the class's capacity).
  Page* poor = nullptr;
  unsigned poor_seen = 0, passed = 0;
again:
  while (page != nullptr) {
    Page* next = page->next;
    bool was_empty = page->free == nullptr;
    bool carved = false;
    // Out of blocks. While the carved part of the page is less than twice what is in use,
    // carve more before reusing freed blocks: the free list then holds many blocks at once and
    // the slow path is taken rarely, at the price of touching at most 2x the live bytes.
    if (was_empty) {
      // Live blocks: `used` less those other threads freed and nobody collected yet (counted in
      // thread_free), so that remote frees waiting on the page do not make it carve more. When
      // those are a batch worth taking (1/8 of the page, as a page that is not "poor" below),
      // they come first: a producer whose blocks a consumer frees reuses them instead of
      // touching new memory (`xmalloc`: committed peak 2.9-3.2 -> 2.8-2.9 MiB).
      uint32_t pending = tf_count(page->thread_free.load(std::memory_order_relaxed));
      uint32_t live = page->used - pending;
      if (page->capacity < page->reserved && page->capacity < 2u * live && pending < page->reserved / 8u) {
        page_extend(page);
        carved = true;
      } else {
        page_collect(page);
      }
    }
    if (page->free == nullptr && page->capacity < page->reserved) {
      page_extend(page);
      carved = true;
    }
    if (page->free != nullptr) {
      // (Secure mode takes this path on every allocation anyway, so a page with few free blocks
      // costs nothing more there; passing it over made a page, or took a spare, whenever a
      // class's frees had not yet gathered 1/8 of a page: `cfrac` 13,000 times in 2.4 M
      // allocations, each page set up anew with its live bits and a shuffled carve.)
      if (!was_empty || carved || g_secure) break;
      // (Holes do not count: a page that a punch left with a few free blocks is as poor as
      // any, so that new allocations do not spread over the pages that are draining.)
      uint32_t avail = static_cast<uint32_t>(page->capacity - page->used - page->holes);  // all on `free` now
      if (avail >= page->reserved / 8u) break;
      if (poor == nullptr || avail > static_cast<uint32_t>(poor->capacity - poor->used - poor->holes)) poor = page;
      if (++poor_seen >= 4) {
        page = nullptr;
        break;
      }
      if (next != nullptr) {  // rotate: let it gather frees while the others are used
        queue_remove(heap, q, page);
        queue_push_back(heap, q, page, cls);
      }
      page = next;
      continue;
    }
    // Only holes left (page_punch): carve them again, as the free blocks of this page that the
    // next allocations fill, rather than move on (the page allocation happens in keeps it).
    if (page->holes != 0 && page_refill_holes(page)) break;
    // Nothing left. A page other threads free into goes to the back of the queue once rather
    // than to the full list: going full and back costs two CASes on its thread_free line, which
    // their frees keep in another core's cache (`rptest`: a quarter of the allocator's samples),
    // and while it is not full its owner's frees keep the fast path. It goes full when it is
    // found empty again on a later pass (passed_over is cleared when it hands out a block and when
    // it leaves the full list).
    if (page->remote_seen && !page->passed_over && next != nullptr && passed < 4) {
      page->passed_over = 1;
      ++passed;
      queue_remove(heap, q, page);
      queue_push_back(heap, q, page, cls);
      page = next;
      continue;
    }
    page_to_full(heap, page);
    page = next;
  }
  if (page == nullptr && !reclaimed && abandoned_count() != 0) {
    // Before a fresh page, adopt a segment an exited thread left: its pages of this class
    // (and the blocks other threads freed into them) are reused instead of new memory.
    reclaimed = true;
    if (segment_reclaim_one(heap)) {
      page = q->first;
      goto again;
    }
  }
  if (page == nullptr) {
    page = page_new(heap, cls);
    if (page == nullptr) {
      if (poor == nullptr) return nullptr;
      page = poor;  // no memory for a fresh page: the few free blocks will do
    } else {
      queue_push_front(heap, q, page, cls);
    }
  }
  if (page != q->first) {
    list_remove(q, page);
    queue_push_front(heap, q, page, cls);
  }
  return page_pop(page, zero, n);
}

}  // namespace nebula
