// core/api.cpp: the rest of the malloc API on top of the fast paths: calloc, realloc,
// aligned allocation, usable size, trim. Validation and errno live here, not in interpose/.
#include <cerrno>
#include <cstring>

#include "core/budget.hpp"
#include "core/engine.hpp"
#include "core/options.hpp"

namespace nebula {
namespace {

void* attempt_aligned(Heap* heap, size_t n, size_t align, bool zero) {
  return (n <= kLargeMax && align <= kLargeAlignMax) ? large_alloc(heap, n, align, zero) : huge_alloc(n, align, zero);
}

// A block of at least n bytes aligned to align (a power of two > kMinAlign).
void* aligned_body(size_t align, size_t n, bool zero) {
  if (n == 0) n = 1;  // a unique block that lies inside its span (the aligned start must too)
  if (n > kMaxRequest || align > kMaxRequest / 2) {
    errno = ENOMEM;
    return nullptr;
  }
  if (n <= kMediumMax && align <= kSliceSize) {
    // Pages start on a 64 KiB boundary, so every block of a class whose size is a multiple of
    // `align` is aligned: pick the smallest such class (a power of two always qualifies).
    size_t want = n < align ? align : n;
    if (want <= kMediumMax) {
      for (unsigned c = size_to_class(want); c < kClassCount; ++c) {
        if ((kClassSize[c] & (align - 1)) == 0) {
          // (A class of the runs range: its own pages, whose blocks are aligned to it; a runs
          // block is aligned to kRunsUnit only.)
          if (g_runs && kClassSize[c] > kRunsMin && kClassSize[c] <= kRunsMax && align > kRunsUnit)
            return alloc_in_class(kClassSize[c], zero);
          void* p = zero ? alloc_zero(kClassSize[c]) : alloc(kClassSize[c]);
          return p;
        }
      }
    }
  }
  Heap* heap = t_heap;
  if (!heap->live) {
    heap = heap_init_thread();
    if (heap == nullptr) {
      errno = ENOMEM;
      return nullptr;
    }
  }
  void* p = attempt_aligned(heap, n, align, zero);
  if (p == nullptr) return oom_retry(heap, n, attempt_aligned, align, zero);
  budget_poll_if_needed();
  return p;
}

// The live block containing p, with its segment and page; false if p is not ours.
struct Where {
  Segment* s;
  Page* page;
};
bool locate(const void* p, Where* w) {
  Segment* s = is_segment_start_chunk(p) ? segment_of(p) : segment_containing(p);
  if (s == nullptr) return false;
  w->s = s;
  w->page = s->kind == SegmentKind::kHuge ? &s->pages[1] : page_of(s, p);
  return true;
}

}  // namespace

void* alloc_aligned_slow(size_t align, size_t n) noexcept { return aligned_body(align, n, false); }

size_t usable_size(const void* p) noexcept {
  if (p == nullptr) return 0;
  Where w;
  if (!locate(p, &w)) return foreign_usable_size(p);
  if (w.s->kind == SegmentKind::kHuge) return huge_usable(w.s, p);
  Page* page = w.page;
  if (page_flags(page) & kPageNotInUse) return 0;
  if (page->kind == PageKind::kRuns) return runs_usable(w.s, page, p);
  Block* b = block_start(w.s, page, const_cast<void*>(p));
  uint8_t* end = reinterpret_cast<uint8_t*>(b) + page->block_size;
  if (page->kind == PageKind::kLarge) end = page_start(w.s, page) + page->block_size;
  return static_cast<size_t>(end - static_cast<const uint8_t*>(p));
}

// Is every block of this page live? True only for the owner's page with every block handed
// out (used counts the blocks other threads freed until the owner collects them) and none of
// them freed by another thread since: its thread_free list and the heap's delayed list empty,
// and no thread ever caching other threads' blocks (a cached block counts as used on its page).
NEBULA_HOT static bool page_all_live(Segment* s, Page* page) noexcept {
  if (s->thread_id.load(std::memory_order_relaxed) != os::thread_id() || page->used != page->reserved) return false;
  if (g_fcache_ever.load(std::memory_order_relaxed)) return false;
  if (t_heap->fc_active & (uint64_t{1} << page->size_class)) return false;  // the owner's own cache
  if (tf_block(page->thread_free.load(std::memory_order_acquire)) != nullptr) return false;
  return t_heap->delayed_free.load(std::memory_order_acquire) == nullptr;
}

// A growing block moved to a medium or large block: the whole OS pages past its n bytes go back
// to the OS (at least kTailTrimMin of them). The block came from a free list or from free
// slices, so what a block of its class held before keeps those pages resident, and the program
// writes them only when it grows into them. `strbuild` (strings grown by realloc to the byte,
// ending at about 73 KiB in blocks of 80 KiB): 4 MiB less at the peak; glibc grows such a
// block in place and has no tail at all.
inline void realloc_trim_tail(void* q, size_t n) {
  Segment* s = segment_of(q);
  if (s->kind != SegmentKind::kNormal) return;
  Page* page = page_of(s, q);
  uintptr_t end;
  if (page->kind == PageKind::kMedium) end = reinterpret_cast<uintptr_t>(q) + page->block_size;
  else if (page->kind == PageKind::kLarge) end = reinterpret_cast<uintptr_t>(page_start(s, page)) + page->block_size;
  else return;
  const uintptr_t os_page = os::page_size();
  const uintptr_t from = align_up(reinterpret_cast<uintptr_t>(q) + n, os_page);
  const uintptr_t to = end & ~(os_page - 1);
  if (to >= from + kTailTrimMin) os::purge(reinterpret_cast<void*>(from), to - from);
}

// A large block of this thread's heap whose contents realloc copied into a huge block (it grew
// past kLargeMax): freed with its memory given back now, unless the heap did the same within a
// purge delay. A buffer that doubles to several MiB (a file read whole) otherwise held its last
// large block resident beside the huge one until the purge delay (`rg -j2`, peak RSS 11.9 -> 11.1
// MiB; glibc moves such blocks with mremap); a program that keeps growing such buffers one
// after another reuses the resident slices for the next one's large stage instead of faulting
// them in each time. False: the caller frees the block.
static bool large_moved_out(void* p) {
  Segment* s = segment_of(p);
  if (s->kind != SegmentKind::kNormal || s->thread_id.load(std::memory_order_relaxed) != os::thread_id()) return false;
  Page* page = page_of(s, p);
  Heap* heap = t_heap;
  if (page->kind != PageKind::kLarge || !heap->live) return false;
  const uint64_t now = os::clock_ms(), last = heap->grow_move_ms;
  heap->grow_move_ms = now;
  if (last != 0 && now - last < static_cast<uint64_t>(option(Option::kPurgeDelay))) return false;
  large_free_purged(s, page);
  return true;
}

// realloc's move: a new block, the bytes copied, the old block freed. Out of line, so that the
// paths that keep the block (most calls when a string grows by a few bytes) need no frame.
NEBULA_NOINLINE static void* realloc_move(void* p, size_t n, size_t have, size_t ask = 0) noexcept {
  const int saved_errno = errno;
  t_shrink_copy = n < have;
  void* q = alloc(ask > n ? ask : n);
  t_shrink_copy = false;
  if (q == nullptr) {
    // A shrink that finds no memory for its copy keeps the block where it is, which holds the n
    // bytes already: a shrinking realloc never fails (glibc's split in place, and secure mode
    // shrinks a huge block by copying it, its guard staying right after it). A growth fails
    // with ENOMEM, the old block untouched.
    if (n > have) return nullptr;
    errno = saved_errno;
    return p;
  }
  memcpy(q, p, n < have ? n : have);
  if (n > have && n > kSmallMax) realloc_trim_tail(q, n);
  if (n > kLargeMax && have > kMediumMax && large_moved_out(p)) return q;
  dealloc(p);
  return q;
}

// Every realloc that the fast path in realloc_block does not settle: the checks, the huge and
// large blocks, and the moves.
NEBULA_NOINLINE static void* realloc_slow(void* p, size_t n) noexcept {
  if (n == 0) {  // glibc frees and returns NULL
    dealloc(p);
    return nullptr;
  }
  if (n > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  Where w;
  if (!locate(p, &w)) return foreign_realloc(p, n);
  size_t have;
  if (w.s->kind == SegmentKind::kHuge) {
    if (reinterpret_cast<uintptr_t>(p) != w.s->huge_start) fatal_pointer("realloc", p, "pointer into the middle of a huge block, not its start");
    have = huge_usable(w.s, p);
    heap_maintain_huge();
    if (n > have) {
      if (huge_grow(w.s, n)) return p;
      if (void* q = huge_move(w.s, n)) return q;
    }
  } else {
    Page* page = w.page;
    const uint8_t flags = page_flags(page);
    if (flags & kPageNotInUse) invalid_pointer("realloc", p);
    if (flags & kPageSpare) fatal_pointer("realloc", p, "the block was freed already");
    if (page->kind == PageKind::kRuns) {
      have = runs_block_size(w.s, page, p, "realloc");
      // In place where it grows into free units or shrinks by half or more (its tail freed).
      if ((n > have || n < have / 2) && runs_resize(w.s, page, p, n)) return p;
      // A growing block moves to one with room for more, as a size class would give it: a string
      // grown by appends moves once per class rather than at every unit.
      if (n > have && n <= kRunsMax) return realloc_move(p, n, have, kClassSize[size_to_class(n)]);
    } else if (page->kind == PageKind::kLarge) {
      have = static_cast<size_t>(page_start(w.s, page) + page->block_size - static_cast<uint8_t*>(p));
      if (n > have && n <= kLargeMax && large_grow(w.s, page, p, n)) return p;
    } else {
      if (!(flags & kPageHasAligned) && !is_block_start(page, p))
        fatal_pointer("realloc", p, "pointer into the middle of a block, not its start");
      bool freed;
      if (g_secure) {
        size_t i = block_index(w.s, page, p);
        freed = !((live_bits(w.s, page)[i / 64] >> (i % 64)) & 1);
      } else if (page_all_live(w.s, page)) {
        freed = false;  // without reading the block: a cache and TLB miss for a string's head
      } else {
        freed = static_cast<Block*>(p)->key == g_free_key && block_is_free_any(w.s, page, static_cast<Block*>(p));
      }
      if (freed) fatal_pointer("realloc", p, "the block was freed already");
      have = page->block_size;  // small and medium blocks are never handed out at an offset
    }
  }
  // Keep the block when the new size fits and does not waste more than half of it; a huge block
  // that stays huge gives the rest back where it is.
  if (n <= have && n >= have / 2) return p;
  if (n < have && n > kLargeMax && w.s->kind == SegmentKind::kHuge && huge_shrink(w.s, n)) return p;
  return realloc_move(p, n, have);
}

// realloc: its common calls settled without a frame. realloc(NULL, n) is malloc (Lua's
// allocator makes every allocation so). A small or medium block in a page without flags (but
// "full") has its double-free check done as in realloc_slow: without reading the block where
// page_all_live proves it live, else by its free key (a block that carries the key goes the
// slow way, which tells for sure). Then it stays where it is if it holds n bytes without
// wasting half of it, and moves otherwise. A large or huge block that holds n bytes without
// wasting half of it stays too; the rest goes to realloc_slow.
void* realloc_block(void* p, size_t n) noexcept {
  if (p == nullptr) return alloc(n);
  if (NEBULA_LIKELY(n - 1 < kMaxRequest && is_segment_start_chunk(p))) {
    // A huge segment's descriptors all carry kPageNotInUse: no need to read its kind.
    Segment* s = segment_of(p);
    Page* page = page_of(s, p);
    const uint8_t flags = page_flags(page);
    if (NEBULA_LIKELY((flags & ~kPageInFull) == 0)) {
      if (NEBULA_LIKELY(page->kind != PageKind::kLarge)) {
        if (is_block_start(page, p) && (page_all_live(s, page) || static_cast<Block*>(p)->key != g_free_key)) {
          const size_t have = page->block_size;
          if (n <= have && n >= have / 2) return p;
          return realloc_move(p, n, have);
        }
      } else {  // a large block (its span's descriptor loses the flags test once freed)
        const size_t have = static_cast<size_t>(page_start(s, page) + page->block_size - static_cast<uint8_t*>(p));
        if (n <= have && n >= have / 2) return p;
      }
    } else if (page->kind == PageKind::kHuge && s->kind == SegmentKind::kHuge &&
               reinterpret_cast<uintptr_t>(p) == s->huge_start) {
      const size_t have = s->huge_used - (reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(s));  // huge_usable
      if (n <= have && n >= have / 2) return p;
    }
  }
  return realloc_slow(p, n);
}

void* realloc_array(void* p, size_t count, size_t size) noexcept {
  size_t n;
  if (__builtin_mul_overflow(count, size, &n)) {
    errno = ENOMEM;
    return nullptr;
  }
  return realloc_block(p, n);
}

// memalign: glibc rounds an alignment that is not a power of two up to one.
void* alloc_aligned(size_t align, size_t n) noexcept {
  if (align <= kMinAlign) return alloc(n);
  if (align > SIZE_MAX / 2 + 1) {
    errno = EINVAL;
    return nullptr;
  }
  if (!is_pow2(align)) align = size_t{1} << (64 - clz64(align));
  return alloc_aligned_pow2(align, n);
}

// aligned_alloc: as in the glibc we replace (2.36), the same as memalign: an alignment that is
// not a power of two is rounded up to one, and only an impossible one fails with EINVAL.
void* alloc_aligned_c11(size_t align, size_t n) noexcept { return alloc_aligned(align, n); }

void* alloc_page_aligned(size_t n) noexcept { return aligned_body(os::page_size(), n, false); }

void* alloc_page_aligned_rounded(size_t n) noexcept {
  size_t page = os::page_size();
  if (n > kMaxRequest) {
    errno = ENOMEM;
    return nullptr;
  }
  size_t r = n == 0 ? page : align_up(n, page);
  return aligned_body(page, r, false);
}

void* alloc_aligned_zero(size_t align, size_t n) noexcept {
  if (align <= kMinAlign) return alloc_zero(n);
  return aligned_body(align, n, true);
}

// Secure mode: the size must be one the block could have been allocated (or realloc'ed in
// place, which keeps a block only down to half its size) with.
void dealloc_sized_secure(void* p, size_t n) noexcept {
  if (p != nullptr) {
    size_t have = usable_size(p);
    Where w;
    bool small = locate(p, &w) && w.s->kind == SegmentKind::kNormal && w.page->kind != PageKind::kLarge;
    bool ok = n <= have && (n >= have / 2 || (small && size_to_class(n) == w.page->size_class));
    if (!ok) {
      Message m;
      m.str("free_sized with size ").num(n).str(", but the block holds ").num(have).str(" bytes");
      static char what[128];
      size_t k = m.size() < sizeof what - 1 ? m.size() : sizeof what - 1;
      memcpy(what, m.data(), k);
      what[k] = 0;
      fatal_pointer("free_sized", p, what);
    }
  }
  dealloc(p);
}

void dealloc_aligned_sized(void* p, size_t align, size_t n) noexcept {
  (void)align;
  (void)n;
  dealloc(p);
}

bool owns(const void* p) noexcept {
  Where w;
  return p != nullptr && locate(p, &w);
}

int trim(size_t pad) noexcept {
  (void)pad;
  size_t before = g_counters.purged.load(std::memory_order_relaxed);
  Heap* heap = t_heap;
  if (heap->live) heaps_collect_abandoned(true);
  else arena_purge(true);
  budget_poll_if_needed();
  return g_counters.purged.load(std::memory_order_relaxed) != before ? 1 : 0;
}

}  // namespace nebula
