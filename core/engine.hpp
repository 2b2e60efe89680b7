// core/engine.hpp: the engine's entry header. interpose/ and the unit tests include only this.
//
// Call tree of an allocation (each arrow is taken only when the condition holds):
//
//   alloc(n)                                   inline, in this header
//     n <= 4 KiB and heap->direct[..]->free    pop, used++, return          (fast path)
//     else -> alloc_generic(heap, n)           core/heap.cpp
//       heap is the empty heap                 heap_init_thread(), retry
//       n > kLargeMax                          huge_alloc                   (core/segment.cpp)
//       n > kMediumMax                         large_alloc -> span_alloc
//       else queue_find_page(class)            core/page.cpp
//            collect local_free + thread_free, extend by bump carving,
//            move exhausted pages to the full list, or
//            page_new -> spare page | span_alloc -> segment with room | reclaim abandoned | segment_new
//
//   free(p)                                    inline, in this header
//     p not in a segment start chunk           free_not_fast (foreign, huge interior, NULL)
//     owner thread and page->flags == 0        push page->free (LIFO), used--; used == 0 -> retire
//     else -> free_generic                     aligned/in-full/other thread/huge
//       other thread: push page->thread_free (or the owner heap's delayed list if full)
#pragma once

#include <cstddef>
#include <cstdint>
#include <cerrno>
#include <cstring>

#include "core/base.hpp"
#include "core/config.hpp"
#include "core/size_classes.hpp"
#include "core/types.hpp"

namespace nebula {

// ---- Globals the fast paths read --------------------------------------------------------
extern __thread Heap* t_heap __attribute__((tls_model("initial-exec")));
extern Heap g_empty_heap;
extern Page g_empty_page;  // no free block: what an empty direct entry points at
// Secure mode (NEBULA_MEM_SECURE=1), fixed at start. The fast paths never run in it: the heaps'
// direct tables stay empty and every page carries kPageSecure, so malloc and free always take
// the generic paths, which check and encode.
extern bool g_secure __attribute__((visibility("hidden")));
extern bool g_zero_on_free __attribute__((visibility("hidden")));
// Medium runs (core/runs.cpp) serve plain requests of (kRunsMin, kRunsMax]; fixed at start, off in
// secure mode.
extern bool g_runs __attribute__((visibility("hidden")));
// Stored in the second word of every free block (random per process, never 0).
extern uintptr_t g_free_key __attribute__((visibility("hidden")));
// One byte per 4 MiB chunk of the address space: 0 not ours, 1 first chunk of a segment,
// k >= 2: chunk k-1 chunks after the first chunk of a (huge) segment (255: at least 254).
extern std::atomic<uint8_t> g_segmap[kSegmentMapSize];
// Set (for good) when a heap first turns its foreign cache on: from then on a block counted in
// use on its page may sit in another thread's cache (realloc_block).
extern std::atomic<bool> g_fcache_ever;

// Page::flags is written by the owner and read by any thread (free, usable_size): relaxed
// atomic accesses, which compile to plain byte loads and stores.
inline uint8_t page_flags(const Page* p) { return __atomic_load_n(&p->flags, __ATOMIC_RELAXED); }
inline void set_page_flags(Page* p, uint8_t f) {
  __atomic_store_n(&p->flags, f, __ATOMIC_RELAXED);
  p->fast_magic = f == 0 ? p->div_magic : 0;
}

// Heap::class_blocks: a page joins (join) or leaves the heap's queue and full list.
inline void class_blocks_note(Heap* heap, const Page* page, bool join) {
  const unsigned i = page->size_class - kCachedFirst;
  if (i >= kCachedCount) return;
  const uint32_t n = join ? heap->class_blocks[i] + page->reserved : heap->class_blocks[i] - page->reserved;
  heap->class_blocks[i] = n;
  const uint32_t share = n / 8 < kFcLimitMax ? n / 8 : kFcLimitMax;
  const uint32_t base = kFcLimit[page->size_class];
  heap->fc_limit[page->size_class] = static_cast<uint8_t>(share > base ? share : base);
}

// ... and a heap whose pages all left (a new heap, one that gave its segments up): no blocks,
// the base limits.
inline void class_blocks_reset(Heap* heap) {
  for (auto& n : heap->class_blocks) n = 0;
  for (unsigned c = 0; c < kClassCount; ++c) heap->fc_limit[c] = kFcLimit[c];
}

inline Segment* segment_of(const void* p) {
  return reinterpret_cast<Segment*>(reinterpret_cast<uintptr_t>(p) & ~kSegmentMask);
}
inline bool is_segment_start_chunk(const void* p) {
  uintptr_t i = reinterpret_cast<uintptr_t>(p) >> kSegmentShift;
  return i < kSegmentMapSize && g_segmap[i].load(std::memory_order_relaxed) == 1;
}
inline size_t slice_of(const Segment* s, const void* p) {
  return (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(s)) >> kSliceShift;
}
// The descriptor at byte offset off from s->pages (a head_off).
inline Page* page_at(Segment* s, uintptr_t off) {
  return reinterpret_cast<Page*>(reinterpret_cast<uint8_t*>(s->pages) + off);
}
inline Page* head_of(Segment* s, size_t idx) { return page_at(s, s->pages[idx].head_off); }
inline Page* page_of(Segment* s, const void* p) { return head_of(s, slice_of(s, p)); }
inline uint32_t head_off_of(const Segment* s, const Page* page) {
  return static_cast<uint32_t>(reinterpret_cast<const uint8_t*>(page) - reinterpret_cast<const uint8_t*>(s->pages));
}
inline uint8_t* page_start(Segment* s, Page* page) {
  return reinterpret_cast<uint8_t*>(s) + (static_cast<size_t>(page - s->pages) << kSliceShift);
}
inline uint8_t* page_start(Segment* s, const Page* page) { return page_start(s, const_cast<Page*>(page)); }

// ---- Free-list links ---------------------------------------------------------------------
// In secure mode a link stored in block b is next ^ (b's page key) ^ b, so that an overwrite
// from a neighbouring block cannot forge a pointer. The slow paths use these; the fast paths
// (never run in secure mode) read and write links directly.
// The page's own key is read from the page at hand where the caller has it (link_get_in,
// link_set_in: the slow paths that pop or push a page's lists); link_get and link_set find the
// page from the block's address first.
inline uintptr_t link_key(const Page* page, const Block* b) {
  return page->list_key ^ reinterpret_cast<uintptr_t>(b);
}
inline const Page* link_page(const Block* b) {
  Segment* s = reinterpret_cast<Segment*>(reinterpret_cast<uintptr_t>(b) & ~kSegmentMask);
  return head_of(s, slice_of(s, b));
}
inline Block* link_get_in(const Page* page, const Block* b) {
  if (NEBULA_LIKELY(!g_secure)) return b->next;
  return reinterpret_cast<Block*>(reinterpret_cast<uintptr_t>(b->next) ^ link_key(page, b));
}
inline void link_set_in(const Page* page, Block* b, Block* next) {
  if (NEBULA_LIKELY(!g_secure)) b->next = next;
  else b->next = reinterpret_cast<Block*>(reinterpret_cast<uintptr_t>(next) ^ link_key(page, b));
}
inline Block* link_get(const Block* b) {
  if (NEBULA_LIKELY(!g_secure)) return b->next;
  return link_get_in(link_page(b), b);
}
inline void link_set(Block* b, Block* next) {
  if (NEBULA_LIKELY(!g_secure)) b->next = next;
  else link_set_in(link_page(b), b, next);
}
// Secure mode: one bit per block of a small or medium page, set while the block is allocated.
// The bitmaps live in the segment's header slice (512 bytes per slice).
inline constexpr size_t kLiveBitsOffset = 20 * 1024;
static_assert(sizeof(Segment) <= kLiveBitsOffset, "the header ends before the bitmaps");
static_assert(kLiveBitsOffset + kSlicesPerSegment * 512 <= kSliceSize, "the bitmaps fit in the header slice");
// The index of the block at p in its small or medium page: the offset times div_magic, high
// half (floor(x / d) == (x * ceil(2^64 / d)) >> 64 for every x and d below 2^32, and a page is
// at most 512 KiB), where a division took 25-40 cycles on each secure malloc and free.
inline size_t block_index(Segment* s, const Page* page, const void* p) {
  const uint64_t off = static_cast<uint64_t>(static_cast<const uint8_t*>(p) - page_start(s, page));
  return static_cast<size_t>((static_cast<unsigned __int128>(off) * page->div_magic) >> 64);
}
inline uint64_t* live_bits(Segment* s, Page* page) {
  return reinterpret_cast<uint64_t*>(reinterpret_cast<char*>(s) + kLiveBitsOffset +
                                     static_cast<size_t>(page - s->pages) * 512);
}

// Outside secure mode the same 512 bytes per slice mark a page's holes: blocks whose memory
// went back to the OS while the page lives (page_punch). They mean something only while the
// page has kPageHoles. Read by any thread freeing a block of the page: the owner sets a
// block's bit only while the block is on its free list, and clears them all before it hands
// those blocks out again (page_refill_holes).
inline uint64_t* hole_bits(Segment* s, Page* page) { return live_bits(s, page); }
inline bool block_is_hole(Segment* s, Page* page, const void* b) {
  if (!(page_flags(page) & kPageHoles)) return false;
  std::atomic_thread_fence(std::memory_order_acquire);  // pairs with page_punch's release
  size_t i = static_cast<size_t>(static_cast<const uint8_t*>(b) - page_start(s, page)) / page->block_size;
  return (__atomic_load_n(&hole_bits(s, page)[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}

// ---- Slow paths (out of line) ------------------------------------------------------------
NEBULA_NOINLINE void* alloc_generic(size_t n, Heap* heap) noexcept;
NEBULA_NOINLINE void* alloc_zero_generic(size_t n, Heap* heap) noexcept;
// A block of n (at most kMediumMax) from its size class's pages, never a runs page: an aligned
// request served by a class of the runs range (alloc_aligned), whose blocks are aligned to it.
NEBULA_NOINLINE void* alloc_in_class(size_t n, bool zero) noexcept;
// The free of a block whose head descriptor is at byte offset `off` from s->pages (head_off).
NEBULA_NOINLINE void free_generic(Segment* s, uintptr_t off, void* p) noexcept;
NEBULA_NOINLINE void free_not_fast(void* p) noexcept;
NEBULA_NOINLINE void page_retire(Page* page) noexcept;
bool page_release(Heap* heap, Page* page) noexcept;  // an empty page leaves its queue (a spare, or freed)
NEBULA_NOINLINE void page_retire_at(Segment* s, uintptr_t off) noexcept;  // the same, by head_off

// ---- The fast paths ----------------------------------------------------------------------
// The page the fast paths take a block of n bytes from: the direct tables up to kDirect2Max,
// and above them the empty page, which has no free block (the slow path).
NEBULA_HOT Page* direct_page(const Heap* heap, size_t n) noexcept {
  if (NEBULA_LIKELY(n <= kDirectMax)) return heap->direct[(n + 15) >> 4];
  if (n <= kDirect2Max) return heap->direct2[direct2_slot(n)];
  return &g_empty_page;
}

NEBULA_HOT void* alloc(size_t n) noexcept {
  Heap* heap = t_heap;
  Page* page = direct_page(heap, n);
  Block* b = page->free;
  if (NEBULA_LIKELY(b != nullptr)) {
    Block* next = b->next;
    page->free = next;
    // The next allocation of the class takes `next`: start loading its line now. A block
    // freed by another core or carved long ago is cold (`xmalloc`: 18% of its CPU time).
    __builtin_prefetch(next);
    page->used++;
    b->key = 0;
    return b;
  }
  return alloc_generic(n, heap);
}

NEBULA_HOT void* alloc_zero(size_t n) noexcept {
  Heap* heap = t_heap;
  Page* page = direct_page(heap, n);
  Block* b = page->free;
  if (NEBULA_LIKELY(b != nullptr)) {
    page->free = b->next;
    page->used++;
    // Every block on a free list carries g_free_key, except a new block of zeroed memory,
    // whose key word is 0 (page_extend): that one needs only its link word cleared. The key
    // is cleared apart from the memset, which ends before it for n < 16 (calloc(1, 8)): a
    // block freed with the key in place is a suspected double free, which the slow path
    // disproves by walking its page's free lists (cc1plus: 3,655 such frees, 13 M list steps).
    if (b->key != g_free_key) {
      b->next = nullptr;
    } else {
      b->key = 0;
      memset(b, 0, n);
    }
    return b;
  }
  return alloc_zero_generic(n, heap);
}

// Is p the start of a block of this (small or medium) page? One multiply (see Page::div_magic).
// The multiply takes the whole address: div_bias also cancels the segment's base, so that the
// product is (p - page start) * div_magic mod 2^64.
NEBULA_HOT bool is_block_start(const Page* page, const void* p) noexcept {
  return reinterpret_cast<uintptr_t>(p) * page->div_magic + page->div_bias < page->div_magic;
}

// The free fast path's test and update of the head descriptor at byte offset off from
// s->pages (head_off). block_start_fast_at is is_block_start with fast_magic, which is 0 while
// the page has any flag: then no pointer passes, and one test covers the flags and the block
// start. On x86-64 both are a few lines of assembly that address the descriptor's fields from
// the segment and the offset (base + index): compiled from C, the page's address took an lea of
// its own (90 instructions per malloc + free pair instead of 89), and the multiply and the
// compare read fast_magic from memory (compiled, the multiply needed a copy in a register).
#if defined(__x86_64__)
inline constexpr size_t kDescAt = offsetof(Segment, pages);
NEBULA_HOT bool block_start_fast_at(Segment* s, uintptr_t off, const void* p) noexcept {
  uintptr_t prod = reinterpret_cast<uintptr_t>(p);
  bool below;
  __asm__("imulq %c[m](%[s],%[o]), %[x]\n\taddq %c[b](%[s],%[o]), %[x]\n\tcmpq %c[m](%[s],%[o]), %[x]"
          : [x] "+r"(prod), "=@ccb"(below)
          : [s] "r"(s), [o] "r"(off), [m] "i"(kDescAt + offsetof(Page, fast_magic)),
            [b] "i"(kDescAt + offsetof(Page, div_bias))
          : "memory");
  return below;
}
// Pushes b on the page's free list and counts it freed; true when the page's last block came back.
NEBULA_HOT bool push_owned_at(Segment* s, uintptr_t off, Block* b) noexcept {
  Block* first;
  bool empty;
  __asm__("movq %c[f](%[s],%[o]), %[t]\n\tmovq %[t], (%[blk])\n\tmovq %[blk], %c[f](%[s],%[o])\n\t"
          "subl $1, %c[u](%[s],%[o])"
          : [t] "=&r"(first), "=@ccz"(empty)
          : [s] "r"(s), [o] "r"(off), [blk] "r"(b), [f] "i"(kDescAt + offsetof(Page, free)),
            [u] "i"(kDescAt + offsetof(Page, used))
          : "memory");
  return empty;
}
#else
NEBULA_HOT bool block_start_fast_at(Segment* s, uintptr_t off, const void* p) noexcept {
  const Page* page = page_at(s, off);
  return reinterpret_cast<uintptr_t>(p) * page->fast_magic + page->div_bias < page->fast_magic;
}
NEBULA_HOT bool push_owned_at(Segment* s, uintptr_t off, Block* b) noexcept {
  Page* page = page_at(s, off);
  b->next = page->free;
  page->free = b;
  return --page->used == 0;
}
#endif

NEBULA_HOT void dealloc(void* p) noexcept {
  if (NEBULA_UNLIKELY(!is_segment_start_chunk(p))) return free_not_fast(p);
  Segment* s = segment_of(p);
  uintptr_t off = s->pages[slice_of(s, p)].head_off;
  Block* b = static_cast<Block*>(p);
  uintptr_t key = g_free_key;
  // The generic path takes over for: another thread's block, a page that is full, aligned or
  // not in use, a pointer into the middle of a block, and a block that looks freed already. It
  // and page_retire_at take the offset, so that this path never forms the page's address.
  if (NEBULA_LIKELY(s->thread_id.load(std::memory_order_relaxed) == os::thread_id() &&
                    block_start_fast_at(s, off, p) && b->key != key)) {
    b->key = key;
    // Straight onto the list malloc pops: the next allocation of this page's class gets the
    // block just freed, whose lines are still in this core's cache (LIFO reuse).
    if (NEBULA_UNLIKELY(push_owned_at(s, off, b))) page_retire_at(s, off);
    return;
  }
  free_generic(s, off, p);
}

// calloc: overflow check, then the zeroing fast path.
NEBULA_HOT void* alloc_checked_zero(size_t count, size_t size) noexcept {
  size_t n;
  if (NEBULA_UNLIKELY(__builtin_mul_overflow(count, size, &n))) n = SIZE_MAX;  // fails: ENOMEM
  return alloc_zero(n);
}

// Aligned allocation with a power-of-two alignment. A multiple of `align` up to 4 KiB is itself
// a size class whose blocks are all aligned to it (checked below), so small requests take the
// ordinary fast path. (Not above: 4368 bytes is a class, a multiple of 16 only.)
inline constexpr size_t kAlignedDirectMax = 4096;
void* alloc_aligned_slow(size_t align, size_t n) noexcept;
NEBULA_HOT void* alloc_aligned_pow2(size_t align, size_t n) noexcept {
  if (align <= kMinAlign) return alloc(n);
  size_t want = (n + align - 1) & ~(align - 1);
  if (NEBULA_LIKELY(want - 1 < kAlignedDirectMax)) return alloc(want);  // also rejects want == 0
  return alloc_aligned_slow(align, n);
}
consteval bool small_aligned_classes_hold() {
  for (size_t a = 32; a <= kAlignedDirectMax; a *= 2)
    for (size_t want = a; want <= kAlignedDirectMax; want += a)
      if (kClassSize[size_to_class_formula(want)] % a != 0) return false;
  return true;
}
static_assert(small_aligned_classes_hold(), "a multiple of a power of two <= 4 KiB must round to an aligned class");

// posix_memalign: EINVAL for an alignment that is not a power-of-two multiple of sizeof(void*).
NEBULA_HOT int alloc_posix_aligned(void** out, size_t align, size_t n) noexcept {
  if (NEBULA_UNLIKELY(align % sizeof(void*) != 0 || (align & (align - 1)) != 0 || align == 0)) return EINVAL;
  void* p = alloc_aligned_pow2(align, n);
  if (NEBULA_UNLIKELY(p == nullptr)) return ENOMEM;  // errno is ENOMEM as well, as with glibc
  *out = p;
  return 0;
}

// ---- The rest of the API (core/api.cpp) ----------------------------------------------------
void* realloc_block(void* p, size_t n) noexcept;                           // realloc
void* realloc_array(void* p, size_t count, size_t size) noexcept;          // reallocarray
void* alloc_aligned(size_t align, size_t n) noexcept;                      // memalign semantics
void* alloc_aligned_c11(size_t align, size_t n) noexcept;                  // aligned_alloc
void* alloc_page_aligned(size_t n) noexcept;                               // valloc
void* alloc_page_aligned_rounded(size_t n) noexcept;                       // pvalloc
size_t usable_size(const void* p) noexcept;                                // malloc_usable_size
NEBULA_COLD void dealloc_sized_secure(void* p, size_t n) noexcept;        // checks, then frees
NEBULA_HOT void dealloc_sized(void* p, size_t n) noexcept {                // free_sized
  if (NEBULA_UNLIKELY(g_secure)) return dealloc_sized_secure(p, n);       // a tail call: no frame
  dealloc(p);
}
void dealloc_aligned_sized(void* p, size_t align, size_t n) noexcept;      // free_aligned_sized
int trim(size_t pad) noexcept;                                             // malloc_trim
bool owns(const void* p) noexcept;                                         // ours and live?

// ---- Internals shared between engine files -------------------------------------------------
// heap.cpp
Heap* heap_init_thread() noexcept;
// After an allocation attempt failed: purge, call the critical callbacks, retry, then fail.
void* oom_retry(Heap* heap, size_t n, void* (*attempt)(Heap*, size_t, size_t, bool), size_t align, bool zero);
// Set by realloc while it allocates the smaller copy of a shrinking block: if no memory is
// found, oom_retry returns NULL without counting a failure or aborting (NEBULA_MEM_ON_OOM=abort),
// and realloc keeps the block, which holds the bytes asked for.
extern __thread bool t_shrink_copy __attribute__((tls_model("initial-exec")));
void heap_collect(Heap* heap, bool force) noexcept;
// The heap's spare pages go back to their segments as free slices (page.cpp).
void spare_flush(Heap* heap) noexcept;
void heap_delayed_free_all(Heap* heap) noexcept;
void heap_maintenance(Heap* heap, bool force) noexcept;
// The free memory whose purge time has come (this heap's free slices, other heaps' overdue ones,
// the arena's free chunks), each only where its lock is free; at most once per quarter purge
// delay per thread. Safe wherever the thread holds no allocator lock.
void heap_purge_due(Heap* heap, uint64_t now) noexcept;
// A huge block made, grown, moved or freed costs system calls: the memory whose purge time has
// come goes back there too. A program whose other allocations all take the fast paths (arrays
// grown by realloc to megabytes) reached that purge only at every 64th slow-path allocation, and
// kept the slices its heap had freed resident to the end (python3-grow: 1.8 MiB, stop 40).
// Not with an engine lock held (a pressure callback that frees a huge block), as in the
// blocking calls' hook: purge_finish takes the arena lock to hand its chunks back.
inline void heap_maintain_huge() noexcept {
  if (t_locks_held == 0) heap_purge_due(t_heap, os::clock_ms_coarse());
}
// Raised when an allocation hits the budget or the OS refuses memory (oom_retry): every heap
// purges its free slices at its next slow path (memory freed by other threads' heaps is
// otherwise purged only after the delay). A heap made later starts at the current value.
extern std::atomic<uint32_t> g_purge_epoch;
// Purge the free slices of heaps whose owner threads have gone quiet (their purge time passed
// a purge delay ago, so the owner has not run its maintenance since), or with `force` every
// other heap's at once (malloc_trim). Called from a heap's maintenance; `me` is skipped.
// With `try_lock`, nothing is done if the heaps lock is taken.
void heaps_purge_idle(Heap* me, uint64_t now, bool force, bool try_lock = false) noexcept;
// The earliest time of heaps_purge_idle's next pass (ms) but with `force`: one pass per purge
// delay in the whole process.
extern std::atomic<uint64_t> g_purge_idle_next_ms;

// The owner's hold on its heap's segment lock (Heap::seg_lock), re-entrant: span_alloc may
// reclaim an abandoned segment and free spans of it, a purge may run inside an allocation.
class HeapSegGuard {
 public:
  explicit HeapSegGuard(Heap* h) noexcept : h_(h) {
    if (h_->seg_depth++ == 0) h_->seg_lock.lock();
  }
  ~HeapSegGuard() {
    if (--h_->seg_depth == 0) h_->seg_lock.unlock();
  }
  HeapSegGuard(const HeapSegGuard&) = delete;
  HeapSegGuard& operator=(const HeapSegGuard&) = delete;

 private:
  Heap* h_;
};
// Before the thread blocks in pthread_join: return its free memory (rate-limited).
void heap_before_wait() noexcept;
void heap_before_cond_wait() noexcept;
// Before the thread blocks until an event or a time (epoll_wait, poll, select, nanosleep, ...):
// the free memory whose purge time has come goes back (async-signal-safe in effect). Returns the
// milliseconds until more of it is due (at least kBlockSplitMinMs), or -1 if none is waiting.
int heap_before_block() noexcept;
constexpr int kBlockSplitMinMs = 10;
void engine_init() noexcept;
// Fault injection for tests: "off", "nth:N", "every:N", "random:N[:SEED]"; false if malformed.
bool fault_injection_set(const char* spec) noexcept;
void free_block_local(Page* page, Block* b) noexcept;
void free_block_remote(Page* page, Block* b) noexcept;
// The foreign cache (core/heap.cpp).
bool in_foreign_cache(const Page* page, const Block* b) noexcept;
uint32_t fcache_held(const Heap* heap, unsigned cls) noexcept;
// Blocks a class's cache holds before the direct table points at it (half its limit).
uint32_t fcache_direct_min(unsigned cls) noexcept;
uint32_t fcache_limit(unsigned cls) noexcept;  // blocks a heap's cache of the class holds at least
uint32_t fcache_limit_of(const Heap* heap, unsigned cls) noexcept;  // ... and at most, now
// Map the heap's foreign-cache descriptors if they are not yet (false: the OS refused).
bool fcache_ready(Heap* heap) noexcept;
void fcache_flush(Heap* heap, unsigned cls, uint32_t keep) noexcept;
void fcache_flush_all(Heap* heap) noexcept;
void fcache_flush_idle(Heap* heap) noexcept;  // class caches that handed out nothing since the last call
Block* block_start(Segment* s, Page* page, void* p) noexcept;
// Is b on one of its page's free lists (as far as the calling thread may look)?
bool block_is_free_any(Segment* s, Page* page, Block* b) noexcept;
void heaps_collect_abandoned(bool force) noexcept;

// page.cpp
void* queue_alloc(Heap* heap, unsigned cls, bool zero, size_t n) noexcept;
void queue_remove(Heap* heap, PageQueue* q, Page* page) noexcept;
void queue_push_front(Heap* heap, PageQueue* q, Page* page, unsigned cls) noexcept;
void queue_push_back(Heap* heap, PageQueue* q, Page* page, unsigned cls) noexcept;
void page_collect(Page* page) noexcept;
void page_unfull(Heap* heap, Page* page) noexcept;
bool page_free(Heap* heap, Page* page) noexcept;   // true: the segment was freed too
bool page_set_delay(Page* page, DelayState st, bool override_never) noexcept;
void heap_update_direct(Heap* heap, unsigned cls) noexcept;
// Give back the memory of free blocks of sparse pages (maintenance; `want` != 0: at once, until
// that many bytes went back; SIZE_MAX: all). Returns the bytes given back.
size_t heap_punch_sparse(Heap* heap, uint64_t now, size_t want) noexcept;
// Spans took Heap::punch_want bytes that were not resident: sparse pages give as much back.
void heap_grew(Heap* heap) noexcept;
// Bytes page_punch gave back because the heap grew, and of them the bytes that came back: the
// holes page_refill_holes carves again, and those of a page that dies (span_free), whose free
// slices the next span takes (halved together now and then): growth stops punching where most
// came back.
struct PunchFeedback {
  std::atomic<size_t> punched{0};
  std::atomic<size_t> refilled{0};
};
extern PunchFeedback g_punch_feedback;
// Return the OS pages of `page` that hold only free blocks; the blocks become holes. Returns
// the bytes given back.
size_t page_punch(Page* page) noexcept;
// `bytes` of a live page's free memory went back in `calls` purges: out of the budget, counted.
void punched_count(size_t bytes, size_t calls) noexcept;

// runs.cpp: medium runs (see the file's head).
void* runs_alloc(Heap* heap, size_t n, bool zero) noexcept;
// free() of p in a runs page: checked against the page's bitmaps (aborts naming p on a pointer
// that is not a live block's start), then the owner's units go free, another thread's block onto
// the page's thread_free list.
void runs_free(Segment* s, Page* page, void* p, bool owner) noexcept;
void runs_collect(Page* page) noexcept;      // the owner takes its other threads' frees
// The bytes of the live block that starts at p (checked as free() checks it, for `op`).
size_t runs_block_size(Segment* s, Page* page, const void* p, const char* op) noexcept;
size_t runs_usable(Segment* s, Page* page, const void* p) noexcept;  // malloc_usable_size; 0: none
// realloc in place: the owner's block at p grows into the free units after it or gives its
// tail back, to hold n bytes; false where it cannot (not the owner, n out of the range, no room).
bool runs_resize(Segment* s, Page* page, void* p, size_t n) noexcept;
// Maintenance of one runs page: other threads' frees taken, and the page freed when empty (the
// heap's last one only once empty for a purge delay, or at once with `all`). True: its segment
// went with it.
bool runs_maintain(Heap* heap, Page* page, uint32_t now32, uint32_t delay, bool all) noexcept;
// The whole OS pages inside the page's free runs go back; returns the bytes.
size_t runs_punch(Page* page) noexcept;
// A heap adopts an abandoned segment's runs page; true: the page is empty (the caller frees it).
bool runs_reclaim(Heap* heap, Page* page) noexcept;
void runs_list_insert(Heap* heap, Page* page) noexcept;
void runs_list_remove(Heap* heap, Page* page) noexcept;
// A runs page leaves its heap (page_free, segment_abandon): out of its list, its free runs out of
// the heap's bins.
void runs_page_leaves(Heap* heap, Page* page) noexcept;
size_t runs_live_bytes(const Page* page) noexcept;

// segment.cpp
// A span of `slices` slices for a page or a large block. A page may be made of a shorter run,
// down to min_slices, of resident free slices when no resident run is long enough.
Page* span_alloc(Heap* heap, unsigned slices, PageKind kind, unsigned min_slices = 0) noexcept;
// Does one of the heap's segments other than `except` have `slices` free slices in a row?
bool heap_has_room_elsewhere(Heap* heap, const Segment* except, unsigned slices) noexcept;
// Of the runs of n set bits in `free`, the lowest with the most bits set in `dirty`; -1 if none.
int find_most_dirty_run(uint64_t free, uint64_t dirty, unsigned n, unsigned* score) noexcept;
// Among the maximal runs of set bits in m, the shortest of at least n bits (its first index,
// -1 if none; *len gets its length): where a span goes among the resident free slices.
int find_best_run(uint64_t m, unsigned n, unsigned* len) noexcept;
// The length of the longest run of set bits in m (the span index's bins).
unsigned longest_run(uint64_t m) noexcept;
bool span_free(Segment* s, Page* page) noexcept;   // true: the segment was freed too
void* huge_alloc(size_t n, size_t align, bool zero) noexcept;
void huge_free(Segment* s, Page* page) noexcept;
size_t huge_usable(Segment* s, const void* p) noexcept;
// Grow a huge block in place to n bytes (into its run's slack or the free chunks after it);
// false leaves it as it was.
bool huge_grow(Segment* s, size_t n) noexcept;
// Move a huge block that cannot grow in place to new chunks for n bytes without copying it (its
// pages are remapped); the new address, or nullptr when that cannot be done (the caller copies).
void* huge_move(Segment* s, size_t n) noexcept;
// For tests: called by huge_move's exchange of pages with the scratch range it took, before it
// uses it (the range is this thread's until the exchange ends).
extern void (*g_swap_hook)(void* scratch);
// Shrink a huge block in place to n bytes (more than kLargeMax): the memory past it goes back to
// the OS now and whole chunks to the arena. False leaves it as it was (secure mode).
bool huge_shrink(Segment* s, size_t n) noexcept;
// Calls fn for every live heap under the heap-pool lock; *retired gets the summed counters of
// the heaps of threads that have exited.
void for_each_live_heap(void (*fn)(Heap*, void*), void* ctx, HeapStats* retired) noexcept;
void* large_alloc(Heap* heap, size_t n, size_t align, bool zero) noexcept;
// Grow a large block in place to n bytes from p (owner thread, free slices after it); false if not.
bool large_grow(Segment* s, Page* page, const void* p, size_t n) noexcept;
// Free the owner's large block whose contents realloc has copied into a huge block, its span's
// memory given back now (see realloc_move).
void large_free_purged(Segment* s, Page* page) noexcept;
void segment_abandon(Segment* s) noexcept;
// At a thread's exit (now), before s is abandoned: keep its free resident slices for the thread
// that adopts it, where exited threads' segments were adopted soon after lately
// (g_exit_reuse_ms), as many as the allowance for all abandoned segments has room for
// (kExitKeepBytes; the rest are purged); false: nothing kept (the caller purges them all).
bool segment_abandon_keep(Segment* s, uint64_t now) noexcept;
// When a thread last adopted, for room, a segment that an exiting thread had left within a purge
// delay before (0: never): evidence that threads come and go (a thread per task).
extern std::atomic<uint64_t> g_exit_reuse_ms;
// Purge the kept slices of abandoned segments left kExitKeepMs ago or whose purge time has come
// (all with force).
void abandoned_purge_kept(uint64_t now, bool force) noexcept;
size_t abandoned_kept_bytes() noexcept;
// Adopt the most recently abandoned segment; for_room: because the heap needs memory (not a
// collection such as malloc_trim's).
bool segment_reclaim_one(Heap* heap, bool for_room = true) noexcept;
void segment_purge(Segment* s, uint64_t now, bool force) noexcept;
// Purge the heap's resident free slices beyond its float (kFreeFloatFloor); the caller holds the
// heap's segment lock.
void heap_purge_excess(Heap* heap) noexcept;
// More resident free slices than the rest of its segments' slices (so than its spans can hold)
// and beyond its float: the heap let go of more than half of its memory at once, a phase of the
// program ended. Read from counters only (no walk of the segments), at every slow-path tick.
inline bool heap_let_go_of_most(const Heap* heap) noexcept {
  const uint32_t free = heap->resident_free_slices;
  const uint32_t total = heap->segment_count * (kSlicesPerSegment - 1);
  const uint32_t in_spans_at_most = total > free ? total - free : 0;
  return free > in_spans_at_most &&
         free > kFreeFloatFloor + in_spans_at_most / kFreeFloatDiv + heap->large_slices / kUnfitSlackDiv;
}
size_t abandoned_count() noexcept;
void segments_fork_prepare() noexcept;
void segments_fork_parent() noexcept;
void segments_fork_child() noexcept;

// arena.cpp
struct ChunkGrant {
  void* base;             // first chunk (segment address)
  uint64_t dirty_first;   // dirty slices of the first chunk (normal segments)
  bool all_clean;         // no slice of the run may be resident
  uint16_t arena_index;
  bool solo;
  size_t dirty_bytes;     // bytes of the run that may be resident (already counted committed)
  size_t dirty_extent;    // offset of the end of the last such slice
  bool header_reset = false;  // one chunk whose first slice holds a normal segment's header,
                              // its descriptors all reset (valid while that slice is resident)
  bool guarded = false;       // secure mode: one chunk for a segment whose last slice is
                              // inaccessible already (a guard that the last segment there left)
  bool huge_header = false;   // the first slice holds a huge block's segment header (the page
                              // descriptors from 2 on lead to 1), valid while it is resident
};
// What chunks are for. A segment (one chunk) keeps out of the free chunks behind a huge block
// that grows (see find_run) while there is room elsewhere, and in secure mode keeps the guard
// slice a segment freed there left (ChunkGrant::guarded); a huge block's run has any guard in
// it made accessible.
enum class ChunkUse : uint8_t { kSegment, kHuge };
// `last`: the slices of the last chunk that the block will use (1..64); a run resident over those
// is chosen first.
bool arena_alloc(size_t chunks, ChunkGrant* out, ChunkUse use, unsigned last = 64) noexcept;
// Give a segment's chunks back. Normal segments pass their dirty bitmap; huge segments the
// length from the segment start that may be resident (dirty_first is then ignored).
// `header_reset`: a normal segment freed whole (every page descriptor in its reset state).
void arena_free(Segment* s, size_t chunks, uint64_t dirty_first, size_t dirty_len, bool header_reset = false) noexcept;
void arena_purge(bool force) noexcept;
// The free chunks whose purge time has come, if the arena lock is free (false if not tried).
bool arena_purge_try(uint64_t now) noexcept;
// When the next free chunk is due to be purged (0: none is waiting).
uint64_t arena_next_purge_ms() noexcept;
// Extend a segment's run by the `add` chunks that follow it, if they are all free; reports the
// bytes of them that may be resident (counted committed already) and the end of the last such
// slice from the first added chunk.
bool arena_grow(Segment* s, size_t chunks, size_t add, size_t* dirty_bytes, size_t* dirty_extent) noexcept;
// Set (on) or take off the request for transparent huge pages on [lo, hi), 2 MiB aligned, of
// chunks of arena `index` that the caller holds in a live segment. The arena keeps the flag's
// state per 2 MiB: the mapping keeps the flag after the block is freed (a segment made there
// later takes it off: its first touch of a slice would fault in 2 MiB instead of 4 KiB), and
// only the 2 MiB pieces whose flag may differ from the one asked for are advised.
void arena_thp(unsigned index, uintptr_t lo, uintptr_t hi, bool on) noexcept;
// [lo, hi) may or may not carry the flag now (pages moved in with another mapping's flag).
void arena_thp_unsure(unsigned index, uintptr_t lo, uintptr_t hi) noexcept;
// The flag changes between neighbouring 2 MiB units that our calls made (each a mapping of the
// process's vm.max_map_count), and the count beyond which blocks ask for no huge pages (a
// quarter of vm.max_map_count; 0: read it again). For tests and statistics.
long arena_thp_edges() noexcept;
// Strict commit: the boundaries between committed and uncommitted chunks (each a mapping more),
// counted against the same share of vm.max_map_count. 0 in the default mode.
long arena_commit_edges() noexcept;
void arena_set_thp_edge_limit(long limit) noexcept;
// Secure mode's guard slices: make the slice at p inaccessible (false where the kernel refuses,
// or, when `capped`, where the guards' mappings would pass half of vm.max_map_count), or
// accessible again. Every guard goes through these, which count the live ones.
bool arena_guard_on(void* p, bool capped) noexcept;
void arena_guard_off(void* p) noexcept;
// Bytes resident in free chunks (a relaxed read: a hint).
size_t arena_free_resident() noexcept;
// Mark a huge segment's chunks as those of a block that grows (see find_run).
void arena_note_growing(Segment* s, size_t chunks) noexcept;
// Give back the chunks [keep, chunks) of a huge segment's run, clean (purged by the caller).
void arena_free_tail(Segment* s, size_t keep, size_t chunks) noexcept;
// Give back a grant that never became a segment (a commit failed).
void arena_free_unused(const ChunkGrant& g, size_t chunks) noexcept;
// A huge block's former run in an arena (not a mapping of its own), whose header moved away with
// the block, goes back with its first dirty_len bytes possibly resident (counted committed: pages
// that another run's free memory left there).
void arena_free_run(const ChunkGrant& run, size_t chunks, size_t dirty_len) noexcept;
bool arena_contains(uintptr_t a) noexcept;
// The length of run that the last search of arena `index` found missing, UINT32_MAX if none is
// known (find_run's cache; for tests).
uint32_t arena_no_run(unsigned index) noexcept;
// find_run on an arena of `chunks` chunks with these used bits and dirty masks, for n chunks
// (for tests: the start of the run chosen, -1 for none).
int arena_find_run_in(const uint64_t* used, const uint64_t* dirty, unsigned chunks, unsigned n, unsigned last = 64) noexcept;
// What arena `index` knows of the huge-page flag on the 2 MiB at addr: 0 not set, 1 set, 2 either
// (for tests).
int arena_thp_state(unsigned index, uintptr_t addr) noexcept;
// Purge the free chunk with resident slices that was freed longest ago, as a free over the
// resident limit does; false if there is none (for tests).
bool arena_purge_oldest() noexcept;
// Whether every arena's lists of free chunks by resident slices agree with its bitmaps: each
// free chunk with k > 0 resident slices in the k-th list, no other chunk in any (for tests).
bool arena_lists_check() noexcept;
// For tests: called by a purge that runs with its lock released, after its madvise calls and
// before it takes the lock again to return what it marked: free chunks of the arenas
// (kArenaChunks, the arena lock) or kept slices of abandoned segments (kKeptSlices, the
// abandoned list's lock).
enum class PurgeWindow { kArenaChunks, kKeptSlices };
extern void (*g_purge_window_hook)(PurgeWindow where);
// Calls fn for every live segment of every arena, under the arena lock: no segment header can
// be reused while fn runs (its owner may still change its pages). Solo huge blocks are not seen.
void arena_walk_segments(void (*fn)(Segment*, void*), void* ctx) noexcept;
void segmap_set(void* base, size_t chunks) noexcept;
void segmap_clear(void* base, size_t chunks) noexcept;
Segment* segment_containing(const void* p) noexcept;   // walks the map back from interior chunks
void arenas_fork_prepare() noexcept;
void arenas_fork_parent() noexcept;
void arenas_fork_child() noexcept;

// Process-wide accounting (slow paths only).
struct GlobalCounters {
  std::atomic<size_t> committed{0};       // bytes that may be resident (dirty), all tiers
  std::atomic<size_t> committed_peak{0};
  std::atomic<size_t> purged{0};          // bytes given back to the OS with purge
  std::atomic<size_t> purge_calls{0};
  std::atomic<size_t> thp_calls{0};       // calls that set or took off the huge-page flag
  std::atomic<size_t> thp_capped{0};      // huge-page requests not made: the mapping count's cap
  std::atomic<size_t> punched{0};         // of purged: free blocks of live pages (page_punch)
  std::atomic<size_t> refilled{0};        // of those, carved again (page_refill_holes)
  std::atomic<size_t> reserved{0};        // address space reserved from the OS
  std::atomic<size_t> segments{0};        // live segments
  std::atomic<size_t> huge_live{0};       // bytes of live huge blocks
  std::atomic<size_t> foreign_frees{0};   // pointers handed to glibc's free
  // Remote frees by threads that never allocated (no heap to count them in); on a line of its
  // own, since such a thread may add to it on every free.
  alignas(64) std::atomic<size_t> remote_frees_no_heap{0};
  std::atomic<size_t> abandoned{0};
  std::atomic<size_t> reclaimed{0};
};
extern GlobalCounters g_counters;
void committed_add(size_t bytes) noexcept;
void committed_sub(size_t bytes) noexcept;

// foreign.cpp: pointers that are not ours.
void foreign_free(void* p) noexcept;
size_t foreign_usable_size(const void* p) noexcept;
void* foreign_realloc(void* p, size_t n) noexcept;
[[noreturn]] void invalid_pointer(const char* op, const void* p) noexcept;

// stats.cpp
void stats_print(bool detailed) noexcept;
void stats_at_exit() noexcept;

}  // namespace nebula
