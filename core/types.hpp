// core/types.hpp: the engine's data structures.
//
// Glossary
//   block    one allocation handed to the user. Free blocks hold a `Block::next` link.
//   size class  a block size (core/size_classes.hpp); every small/medium request is rounded up
//            to one.
//   slice    64 KiB, the unit in which a segment is divided.
//   span     a run of consecutive slices of one segment, used as one page.
//   page     a span that holds blocks of one size class (small: 1 slice, medium: 1-8 slices), or
//            exactly one large block (a "large page", up to kLargeMax), or one huge block (the
//            whole of a huge segment). `Page` is its descriptor, which lives in the segment
//            header, not in the span.
//   segment  4 MiB aligned to 4 MiB (a "huge" segment: several chunks). Its first slice holds
//            the header and the page descriptors. A segment belongs to one thread heap (or to
//            nobody when abandoned; huge segments never belong to a heap).
//   chunk    a 4 MiB-aligned 4 MiB piece of an arena; segments are runs of chunks.
//   arena    an address-space reservation from the OS (1 GiB) that chunks are carved from.
//   heap     the per-thread allocator state: per size class a queue of pages, the pages' owner.
//   abandoned  a segment whose owning thread exited, waiting to be reclaimed by another heap.
//   purge    giving the physical memory of free slices back to the OS (madvise), after a delay.
//   dirty    a slice that may be resident (touched since it was last purged).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "core/base.hpp"
#include "core/config.hpp"
#include "core/size_classes.hpp"

namespace nebula {

struct Heap;
struct Segment;

// A free block. `key` holds g_free_key while the block is free (the allocation fast path clears
// it): a free() that finds the key already there is a suspected double free, confirmed on the
// slow path by looking the block up in the page's free lists. The one exception is a new block
// carved from zeroed memory, whose key is 0: calloc skips clearing such a block.
struct Block {
  Block* next;
  uintptr_t key;
};
static_assert(sizeof(Block) <= kMinAlign, "a free block's two words fit in the smallest block");

// State bits kept in the low 2 bits of Page::thread_free (blocks are 16-byte aligned).
// They tell a thread freeing a block of a page it does not own where to put it.
enum DelayState : uintptr_t {
  kDelayNone = 0,      // push on the page's thread_free list (the owner collects it)
  kDelayUse = 1,       // page is full: push on the owner heap's delayed_free list instead
  kDelayFreeing = 2,   // transient: a thread is pushing to the heap's list; wait
  kDelayNever = 3,     // owner gone (abandoned): always push on thread_free
};
inline constexpr uintptr_t kDelayMask = 3;
// Page::thread_free also counts its blocks, in the top 16 bits (block addresses are below 2^47
// and a page holds at most 4096 blocks), so that the owner can take the list as its free list
// without walking it: the walk was a chain of cache misses on blocks another core just wrote.
inline constexpr unsigned kTfCountShift = 48;
inline constexpr uintptr_t kTfPtrMask = ((uintptr_t{1} << kTfCountShift) - 1) & ~kDelayMask;
inline Block* tf_block(uintptr_t tf) { return reinterpret_cast<Block*>(tf & kTfPtrMask); }
inline uint32_t tf_count(uintptr_t tf) { return static_cast<uint32_t>(tf >> kTfCountShift); }
static_assert(kSliceSize / kMinAlign < (1u << 16), "thread_free counts fit in 16 bits");
static_assert(kAddressBits <= kTfCountShift, "block addresses leave the top 16 bits of thread_free free");

// Page::flags: any bit set sends free() to the generic path.
enum PageFlags : uint8_t {
  kPageInFull = 1,      // in the heap's full list
  kPageHasAligned = 2,  // some block was handed out at an offset (aligned allocation)
  kPageNotInUse = 4,    // descriptor of a free slice, the header slice, or a huge/large page
  kPageSecure = 8,      // secure mode: every free goes through the checking generic path
  kPageHoles = 16,      // some free blocks' memory went back to the OS (holes != 0): a free
                        // checks that the block is not one of them
  kPageSpare = 32,      // empty, kept whole in its heap's spare list (page_retire): every
                        // block is free, and a free of one is a double free
  kPageRuns = 64,       // a runs page (PageKind::kRuns): every free takes the generic path,
                        // which finds the block in the page's bitmaps (core/runs.cpp)
};

// kNone is 0, so that a descriptor of fresh memory, every byte 0, reads as one not in use.
// kRuns: a page of medium runs (core/runs.cpp), counted with the medium pages in the statistics.
enum class PageKind : uint8_t { kNone, kSmall, kMedium, kLarge, kHuge, kRuns };
// Index of a kind in the statistics' per-kind arrays (small, medium, large, huge).
inline unsigned kind_index(PageKind k) { return k == PageKind::kRuns ? 1u : static_cast<unsigned>(k) - 1; }

// Page descriptor. One per slice in the segment header; only the first slice of a span (its
// head) is live, the others lead to it with `head_off`.
// Descriptors are 64-byte aligned; their cache lines split by who writes them. The first holds
// what a free() reads to find and check the block (head, fast_magic, div_bias, flags, size
// class), written only when the page is set up or its flags change; the second what the owner
// writes on every malloc and free (free, used); the third thread_free, which other threads
// write. A thread freeing another thread's block then reads a line that stays valid in every
// core's cache and writes one the owner reads only when it collects, instead of pulling the
// line the owner writes on every call (see "Page descriptors" in docs/performance.md).
// Invariants (owner's view, between operations):
//   used + |free| + |local_free| + holes == capacity <= reserved
//   holes != 0  <=>  flags & kPageHoles  (never in secure mode)
//   |thread_free| <= used  (blocks freed by other threads count as used until collected)
//   flags & kPageInFull  <=>  the page is in its heap's full list
//   (thread_free & kDelayMask) == kDelayUse  =>  flags & kPageInFull
//   fast_magic == (flags == 0 ? div_magic : 0)   (set_page_flags keeps it)
struct alignas(64) Page {
  // First line: read by every thread that frees a block of the page.
  uint64_t list_key;                    // secure mode: the key of this page's encoded links
  uint8_t flags;                        // PageFlags; 0 on the fast path
  PageKind kind;                        // small, medium, large, huge
  uint8_t size_class;                   // for small and medium pages
  uint8_t is_clean;                     // the span was zero (never touched or purged) at init
  uint32_t block_size;                  // bytes per block (large: the span's bytes)
  uint32_t head_off;                    // the span's head descriptor, as a byte offset from the
                                        // segment's pages[0] (page_of); 0 for a free slice, whose
                                        // head is then descriptor 0, the header slice's, never
                                        // in use: a descriptor of fresh memory (all 0) reads so
  uint32_t unused_head_;                // (keeps fast_magic and div_bias where free() reads them)
  // Is p a block start? With the block size d and the page start address a:
  //   (p * div_magic + div_bias) mod 2^64 < div_magic  <=>  d divides p - a
  // (div_magic = ceil(2^64 / d), div_bias = -a * div_magic mod 2^64; Lemire's divisibility
  // test, exact because p - a < 2^32). The free() fast path uses fast_magic, which is 0 while
  // any flag is set: then no pointer passes, and one test covers the flags and the block start.
  uint64_t fast_magic;                  // div_magic, or 0 when flags != 0 (owner writes)
  uint64_t div_bias;
  uint64_t div_magic;                   // small and medium pages (written at page init)
  uint16_t capacity;                    // blocks carved from the span so far
  uint16_t reserved;                    // blocks that fit in the span
  uint16_t slice_count;                 // span length in slices (head only)
  uint16_t holes;                       // blocks in memory given back while the page lives
  uint8_t punched_for_growth;           // some of it went back because the heap grew
  uint8_t unused_[3];
  uint16_t punch_used;                  // `used` when its free memory was last given back
  // Second line: the owner's allocation state (malloc and free write it on every call) and the
  // owner's slow-path fields.
  Block* free;                          // blocks ready to hand out (owner only)
  uint32_t used;                        // blocks handed out, not yet freed back (owner only)
  uint32_t sparse_since;                // clock_ms (low bits, never 0) since the page has been
                                        // sparse, 0 if it is not (heap_punch_sparse)
  Page* next;                           // in the heap's queue or full list (owner only)
  Page* prev;
  Block* local_free;                    // blocks freed by the owner thread (owner only)
  uint64_t punched[2];                  // OS pages of the span given back (page_punch)
  uint8_t passed_over;                  // ran out and went to the back of its queue once
                                        // instead of the full list (queue_alloc)
  uint8_t remote_seen;                  // other threads have freed blocks into it (page_collect)
  uint16_t runs_units;                  // a runs page's units in use (core/runs.cpp): here, not in
                                        // `capacity`, whose line other threads' frees read
  // Third line: what other threads write. The owner reads it when it collects their frees.
  alignas(64) std::atomic<uintptr_t> thread_free;  // count << 48 | Block* | DelayState
  // Fourth line: the owner's maintenance only; the rest pads descriptors to 256 bytes, so that
  // free() finds one with a shift.
  alignas(64) const Block* idle_head;   // when the page was found holding only other threads'
                                        // frees (heap_punch_sparse): the next block its class's
                                        // first page had to hand out,
  uint16_t idle_tick;                   // ... and its class's Heap::class_ticks
  uint8_t pad_[54];
};
static_assert(sizeof(Page) == 256, "page descriptors are 256 bytes: free() indexes by shift");
static_assert(offsetof(Page, free) == 64 && offsetof(Page, used) == 72, "the owner's hot fields are in the second line");
static_assert(offsetof(Page, punch_used) < 64, "the first line holds what other threads read");
static_assert(offsetof(Page, runs_units) < 128, "the owner's runs count is in the second line");
static_assert(kSliceSize / kMinAlign <= 65535, "capacity and reserved are 16-bit");
static_assert(kMediumPageSlices * kSliceSize / 4096 <= 128, "Page::punched has a bit per 4 KiB of a page");

// A free run of a runs page (core/runs.cpp) in its heap's bin: its slot, in the page's bookkeeping
// in the segment header (never in the run's own memory, which a write after free could reach).
struct RunSlot {
  RunSlot* next;
  RunSlot* prev;
  uint16_t unit;   // where the run starts
  uint16_t units;  // its length
  uint16_t page;   // its page's index in the segment (s->pages)
};

// A queue of pages of one size class; `first` is where allocation happens.
struct PageQueue {
  Page* first = nullptr;
  Page* last = nullptr;
};

enum class SegmentKind : uint8_t { kNormal, kHuge };

// Segment header, at the start of the segment's first slice.
// The free() fast path reads thread_id and pages[]. Invariants:
//   free_slices & 1 == 0 (slice 0 is the header);  used_spans == number of live span heads
//   a slice in a live span is never in free_slices; dirty_slices covers every live span
//   pages[i].heap of the old design lives here: every page of a segment has the segment's owner
struct Segment {
  std::atomic<uintptr_t> thread_id;     // owner thread (os::thread_id), 0 if none (atomic)
  SegmentKind kind;
  uint8_t solo;                         // huge segment with its own OS mapping (no arena)
  uint16_t arena_index;                 // which arena (if not solo)
  uint32_t chunk_count;                 // size in 4 MiB chunks
  uint32_t used_spans;                  // live pages in this segment (owner)
  uint16_t kept_slices;                 // abandoned: free resident slices its thread's exit kept
                                        // for the next thread (segment_abandon_keep)
  uint8_t bin[2];                       // normal: its bins in the heap's span index (below)
  uint64_t free_slices;                 // bitmap: slice not in any span (owner)
  uint64_t dirty_slices;                // bitmap: slice may be resident (owner)
  Segment* next;                        // in the heap's segment list or the abandoned list
  Segment* prev;                        // (in the first cache line with the bitmaps; a span
                                        // search reads this line and the bin links below)
  uint64_t purge_at_ms;                 // when free dirty slices get purged; 0 = nothing to do
  std::atomic<Heap*> owner_heap;        // owning heap, nullptr when abandoned (atomic: a remote
                                        // free of a full page reads it to reach the heap)
  uint64_t exit_ms;                     // abandoned by its thread's exit then; 0: abandoned
                                        // otherwise (a join), or owned
  uint32_t push_seq;                    // its heap's count of segments taken when it took this
                                        // one: of equal fits, a span search takes the newest
  uint8_t large_slices;                 // slices in its large blocks' spans
  uint8_t kept_purging;                 // abandoned: its kept slices are being purged with the
                                        // list's lock released (abandoned_purge_kept): no
                                        // thread adopts it meanwhile
  // Huge segments belong to no heap and normal ones have no huge block: the two share the
  // rest of the second line (the descriptors start at 128, so that the last one's
  // thread_free line begins an OS page: see reset_descriptors).
  union {
    struct {
      size_t huge_len;                  // bytes from the segment start counted committed (the
                                        // block, and a resident tail kept from a bigger block
                                        // before; nothing beyond is resident)
      size_t huge_used;                 // bytes from the segment start to the block's end
      uintptr_t huge_start;             // the block's address
      size_t mapped_size;               // bytes of its chunks, or of its own mapping (solo)
    };
    struct {
      // Its place in its heap's span index (Heap::bins): k = 0 by its longest run of resident
      // free slices (free & dirty), k = 1 by its longest run of free slices; bin[k] == 0: in
      // no bin.
      Segment* bin_next[2];
      Segment* bin_prev[2];
    };
  };
  Page pages[kSlicesPerSegment];        // one descriptor per slice (64-byte aligned)
};
static_assert(sizeof(Segment) <= 5 * 4096, "segment header must stay within a few OS pages");
static_assert(offsetof(Segment, pages) == 128, "the descriptors start at the third line");
static_assert(offsetof(Segment, prev) + sizeof(Segment*) <= 64 && offsetof(Segment, free_slices) < 64,
              "the bitmaps and list links share the first line");
static_assert(kSliceSize / kMinAlign <= 512 * 8, "512 bytes of bits cover a small page");
static_assert(sizeof(Segment) < kSliceSize, "the header must fit in slice 0");

// Per-thread counters, merged on read. Only the slow paths touch them.
struct HeapStats {
  uint64_t pages_made[4];               // small, medium, large, huge
  uint64_t pages_freed[4];
  uint64_t large_allocs;                // blocks > kMediumMax served from a span
  uint64_t huge_allocs;
  uint64_t generic_calls;               // times the allocation fast path missed
  uint64_t remote_frees;                // frees of blocks owned by another thread
  uint64_t segments_reclaimed;
};

// The descriptors of a heap's foreign cache (see Heap::fc_active).
struct ForeignCache {
  uint32_t pushed[kClassCount];         // blocks pushed since the list was empty
  uint32_t popped_mark[kClassCount];    // page[c].used at the last maintenance pass
  Page page[kClassCount];
};

// A thread heap. Reached through the initial-exec thread-local `t_heap`, which starts at the
// constant empty heap: every direct entry of the empty heap points at an empty page, so the
// first malloc of a thread misses like any empty list and the slow path creates the heap.
struct Heap {
  Page* direct[kDirectCount] = {};      // page to allocate from for sizes (i*16-15 .. i*16]
  Page* direct2[kDirect2Count] = {};    // for sizes above kDirectMax, 512 bytes each (direct2_slot)
  PageQueue queues[kClassCount] = {};   // per size class, non-full pages first
  PageQueue full = {};                  // pages with no free block and nothing left to carve
  PageQueue runs = {};                  // its runs pages (core/runs.cpp); their free runs are
                                        // in the RunBins after a live heap (runs_bins)
  std::atomic<Block*> delayed_free{nullptr};  // blocks freed by other threads into full pages
  uintptr_t thread_id = 0;              // owning thread
  Segment* segments = nullptr;          // segments owned by this heap
  // The span index: bins[k][n] lists the segments whose longest run of resident free slices
  // (k = 0) or of free slices (k = 1) is n slices long (n = 1..63); bit n of bin_mask[k] is set
  // while that list is not empty. A span search reads a few segments from the shortest
  // bins that fit instead of every segment's header (a heap of 1 GiB has 256 of them).
  Segment* bins[2][kSlicesPerSegment] = {};
  uint64_t bin_mask[2] = {};
  uint32_t resident_free_slices = 0;    // free slices its segments hold resident, in all
  uint32_t large_slices = 0;            // slices in large blocks' spans, in all its segments
  uint32_t push_seq = 0;                // segments it has taken (new or adopted)
  // Held while the heap's segment list or its segments' slice bitmaps and purge times change
  // (HeapSegGuard: the owner, re-entrantly) and while another thread purges the free slices of
  // a heap whose owner has gone quiet (heaps_purge_idle, which only ever tries it).
  Lock seg_lock;
  uint32_t seg_depth = 0;               // the owner's nesting of HeapSegGuard
  std::atomic<uint64_t> purge_due_ms{0};  // earliest purge_at_ms among its segments; 0: none
  uint32_t segment_count = 0;
  uint32_t ticks = 0;                   // slow-path calls since the last maintenance
  uint64_t next_maintenance_ms = 0;     // earliest time of the next purge pass
  uint64_t early_pass_ms = 0;           // when a pass last ran early (heap_let_go_of_most)
  uint64_t last_wait_ms = 0;            // when the thread last entered pthread_join
  uint64_t last_wait_abandon_ms = 0;    // when it last gave its segments up there
  uint64_t next_cond_wait_ms = 0;       // heap_before_cond_wait does its work again from then
  uint64_t refilled_bytes = 0;          // memory of punched blocks carved again (page_refill_holes)
  uint64_t grow_move_ms = 0;            // when realloc last moved a large block of it into a
                                        // huge one (realloc_move)
  uint64_t wait_punched = 0;            // bytes the last punch before a wait gave back (0: none)
  uint64_t wait_punch_ms = 0;           // when
  uint64_t wait_refill_mark = 0;        // refilled_bytes then
  uint8_t wait_backoff = 0;             // punches before waits come a purge delay << this apart
  uint32_t purge_epoch = 0;             // last g_purge_epoch this heap purged for
  size_t punch_want = 0;                // bytes a span took that were not resident (span_alloc)
  uint64_t next_punch_ms = 0;           // earliest time sparse pages are punched for that again
  uint32_t punch_skip = 0;              // heap_grew calls left before it reads the clock again
  Segment* punch_next = nullptr;        // where heap_punch_sparse's next bounded pass starts
                                        // (nullptr: the list's head; heap_segments_remove
                                        // moves it on when its segment leaves)
  bool live = false;                    // false for the empty heap and pooled heaps
  Heap* next_heap = nullptr;            // all heaps (live and pooled), for stats and fork
  HeapStats stats = {};
  // The foreign cache: blocks of other threads' pages that this thread freed, kept for its own
  // next allocations of their class while their lines are in this core's cache (a remote free
  // otherwise sends them to their page, where the owner reuses them cold, and only after it
  // collects them). fc->page[c] is a page descriptor that owns no memory: its `free` list holds
  // the cached blocks (bit c of fc_active while it holds some). Once it holds a few (fc_direct),
  // the direct table points at it, so the malloc fast path pops them as from any page (and counts
  // them in `used`); below that they wait for the class's next slow-path allocation.
  // The descriptors (13 KiB) are mapped when the thread first turns its cache on, so that a
  // thread that never does (most) keeps a heap of 5.1 KiB.
  uint64_t fc_active = 0;
  uint64_t fc_direct = 0;               // classes whose direct entries point at their cache
  uint64_t cache_bulk = 0;              // class caches of the owner's frees (class_caches_frees)
                                        // off until the class's next slow-path allocation: a
                                        // run of frees overflowed them
  static_assert(kClassCount <= 64, "fc_active holds one bit per size class");
  bool fc_on = false;                   // cache at all (decided every 64 slow-path calls)
  uint64_t fc_remote_mark = 0;          // stats.remote_frees at the last decision
  ForeignCache* fc = nullptr;           // set once (by the owner), released with the heap
  // Spare pages: pages of one slice that emptied (up to kSpareMax), kept whole (their blocks on
  // their free lists) instead of going back to their segment, linked through `next`, the last
  // one first. A class's next page takes one back without a span search, and without carving
  // when it was the class's own (see page_retire). Only the owner touches the list.
  Page* spare = nullptr;
  uint32_t spare_count = 0;
  uint32_t spare_taken = 0;             // spare pages taken so far
  uint32_t spare_taken_mark = 0;        // spare_taken at the last maintenance pass
  // For each class whose cache takes the owner's frees (class_caches_frees, index cls -
  // kCachedFirst): the blocks its pages hold (reserved, in the class's queue or on the full
  // list). Its cache's limit (fc_limit) is an eighth of them where that is above its base.
  uint32_t class_blocks[kCachedCount] = {};
  uint8_t fc_limit[kClassCount] = {};   // blocks the cache of each class holds at most: kFcLimit,
                                        // or more (above); set by heap_reset
  uint16_t class_ticks[kClassCount] = {};  // slow-path allocations per class, wrapping: a class
                                        // whose count stays put has gone quiet (heap_punch_sparse)

  // The empty heap: every direct entry points at the page with no free block.
  constexpr explicit Heap(Page* empty) {
    for (auto& d : direct) d = empty;
    for (auto& d : direct2) d = empty;
  }
};

// The free runs of a heap's runs pages that a request can use (at least kRunsMinUnits long), by
// length (core/runs.cpp), and a bit per bin that is not empty. A live heap has them right after
// it (heaps are carved with room for them); the constant empty heap has none, and nothing reads
// them before a thread's heap is live (runs_alloc comes after the generic path's check). Kept out
// of Heap so that the empty heap, which every new thread's first malloc reads, stays as it was:
// the library's writable data of a small program stays within its four OS pages.
struct RunBins {
  RunSlot* bin[kRunsBins];
  uint64_t mask;
};
inline RunBins* runs_bins(Heap* h) { return reinterpret_cast<RunBins*>(h + 1); }
static_assert(sizeof(Heap) % alignof(RunBins) == 0, "a heap's run bins follow it aligned");

}  // namespace nebula
