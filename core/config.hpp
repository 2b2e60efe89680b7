// core/config.hpp: compile-time configuration, attributes and the engine's geometry.
//
// Every size the engine is built around is defined here, once, with the reason for its value.
#pragma once

#include <cstddef>
#include <cstdint>

#define NEBULA_LIKELY(x) __builtin_expect(!!(x), 1)
#define NEBULA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define NEBULA_HOT inline __attribute__((always_inline))
#define NEBULA_COLD __attribute__((noinline, cold))
#define NEBULA_NOINLINE __attribute__((noinline))
// Code that runs once, at start: compiled for size. The option parser: its path for a value set
// in the environment must fit the code window that every program maps (platform/hot-code.ld):
// at -O3 it took 2.7 KiB, and past the window it made all of our code resident wherever any
// NEBULA_MEM_ variable was set (stop 49, docs/performance.md). engine_init, budget_init and
// arena_create (once per GiB of arenas): the window's room for the rest (stop 50).
#if defined(__clang__)
#define NEBULA_SMALL __attribute__((minsize))
#else
#define NEBULA_SMALL __attribute__((optimize("Os")))
#endif
#define NEBULA_EXPORT __attribute__((visibility("default")))
// Large zero-initialised arrays that a process touches in a few places or not at all (the
// segment map, the arena table, the option texts, the pressure callbacks) go after every other
// global: in .bss they sat between the small globals, which then touched more OS pages of a
// small program (six, then four; two now). x86-64 ELF linkers place .lbss after .bss.
// Each such definition sits between NEBULA_SPARSE_BSS_BEGIN and NEBULA_SPARSE_BSS_END and
// carries NEBULA_SPARSE_BSS. g++ knows .lbss for a zero section (no file contents) from its
// name; clang 14 does not and made it a data section, 32 MiB of zeros written into every object
// and into the library file (34 MB; stop 30), so under clang a `#pragma clang section bss` pair
// places the zero data there instead.
#if defined(__x86_64__) && defined(__ELF__) && defined(__clang__)
#define NEBULA_SPARSE_BSS_BEGIN _Pragma("clang section bss=\".lbss\"")
#define NEBULA_SPARSE_BSS_END _Pragma("clang section bss=\"\"")
#define NEBULA_SPARSE_BSS
#elif defined(__x86_64__) && defined(__ELF__)
#define NEBULA_SPARSE_BSS_BEGIN
#define NEBULA_SPARSE_BSS_END
#define NEBULA_SPARSE_BSS __attribute__((section(".lbss")))
#else
#define NEBULA_SPARSE_BSS_BEGIN
#define NEBULA_SPARSE_BSS_END
#define NEBULA_SPARSE_BSS
#endif

namespace nebula {

// Build flavour. `full` checks add debug assertions and list walkers (meson -Dchecks=full).
#if defined(NEBULA_CHECKS_FULL)
inline constexpr bool kFullChecks = true;
#else
inline constexpr bool kFullChecks = false;
#endif

// ---- Geometry ---------------------------------------------------------------------------
// A slice is the unit of span allocation inside a segment: 64 KiB, so that a small page is one
// slice and a segment's slice bitmap is one 64-bit word.
inline constexpr unsigned kSliceShift = 16;
inline constexpr size_t kSliceSize = size_t{1} << kSliceShift;
// A segment (and an arena chunk) is 4 MiB, aligned to 4 MiB: `p & ~kSegmentMask` finds the
// metadata of any block that starts in the segment's first chunk.
inline constexpr unsigned kSegmentShift = 22;
inline constexpr size_t kSegmentSize = size_t{1} << kSegmentShift;
inline constexpr uintptr_t kSegmentMask = kSegmentSize - 1;
inline constexpr unsigned kSlicesPerSegment = kSegmentSize / kSliceSize;  // 64
static_assert(kSlicesPerSegment == 64, "the slice bitmaps of a segment are one uint64_t");

// Pages: a small page is one slice and holds blocks up to kSmallMax; a medium page is
// kMediumPageSlices slices and holds blocks up to kMediumMax. Larger blocks get a span of their
// own inside a segment up to kLargeMax, and a segment of their own above it ("huge").
inline constexpr size_t kSmallMax = 8 * 1024;
inline constexpr unsigned kMediumPageSlices = 8;  // the largest medium page: 512 KiB
inline constexpr size_t kMediumMax = 128 * 1024;
inline constexpr size_t kLargeMax = 2 * 1024 * 1024;
static_assert(kLargeMax < (kSlicesPerSegment - 1) * kSliceSize, "a large block must fit in one segment");

// Sizes up to kDirectMax are served from the heap's direct table, one entry per 16 bytes (up to
// 4.5 KiB: the classes of 4368 and 4608 bytes are not multiples of the second table's step).
inline constexpr size_t kDirectMax = 4608;
inline constexpr size_t kDirectCount = kDirectMax / 16 + 1;
// Sizes above it up to kDirect2Max: a second table, one entry per 512 bytes (every class between
// them is a multiple of 512, checked in size_classes.hpp), so that their allocations take the
// fast path too when the class's current page has a free block.
inline constexpr size_t kDirect2Max = 32 * 1024;
inline constexpr unsigned kDirect2Shift = 9;
inline constexpr size_t kDirect2Count = (kDirect2Max - kDirectMax) >> kDirect2Shift;
// The entry of a size n in (kDirectMax, kDirect2Max]. (The constant it takes off folds into the
// load's displacement: no instruction more on the fast path.)
constexpr size_t direct2_slot(size_t n) {
  return ((n + (size_t{1} << kDirect2Shift) - 1) >> kDirect2Shift) - (kDirectMax >> kDirect2Shift) - 1;
}

// Medium runs (stop 46): plain requests above kDirectMax up to kRunsMax are served from pages
// shared by every size in that range ("runs pages"), cut in units of kRunsUnit bytes: a block is a
// run of units, and the free units of a page serve any request that fits (docs/design.md,
// "Medium runs"). One pool for the range instead of a page queue per class: `glibc-thread`
// (sizes of 4 B-32 KiB) held a page more than its live blocks needed in each of the range's 13
// classes (docs/performance.md).
inline constexpr unsigned kRunsUnitShift = 9;
inline constexpr size_t kRunsUnit = size_t{1} << kRunsUnitShift;
inline constexpr size_t kRunsMin = kDirectMax;   // requests above this ...
inline constexpr size_t kRunsMax = kDirect2Max;  // ... up to this
// A runs page is 2 slices (128 KiB, 256 units): four of the range's largest blocks, as a class's
// page above 32 KiB holds four. (Pages of 8 slices, until stop 48, took more memory where few
// blocks of the range are live: each heap's first page was 512 KiB of slices, `glibc-simple`
// 1.048 x the classes' peak RSS, and a page emptied less often; 2 slices: 1.001 x.)
inline constexpr unsigned kRunsPageSlices = 2;
inline constexpr unsigned kRunsUnits = kRunsPageSlices * kSliceSize / kRunsUnit;  // 256
inline constexpr unsigned kRunsWords = kRunsUnits / 64;
static_assert(kRunsMax / kRunsUnit < kRunsUnits, "a page holds the largest run");
// The fewest units a request of the range takes: free runs shorter than this serve nothing until
// they merge, and are in no bin.
inline constexpr unsigned kRunsMinUnits = (kRunsMin + kRunsUnit) / kRunsUnit;
inline constexpr unsigned kRunsMaxUnits = kRunsMax / kRunsUnit;
// A heap's bins of free runs: one per length from kRunsMinUnits to kRunsMaxUnits, one for longer.
inline constexpr unsigned kRunsBins = kRunsMaxUnits - kRunsMinUnits + 2;
static_assert(kRunsBins <= 64, "a heap's run bins have a bit each in one word");
// A binned free run's slot is the one of unit / kRunsSlotStride: two binned runs start at least
// kRunsMinUnits + 1 units apart (a unit in use between them), so they never share one.
inline constexpr unsigned kRunsSlotStride = kRunsMinUnits + 1;
inline constexpr unsigned kRunsSlots = (kRunsUnits + kRunsSlotStride - 1) / kRunsSlotStride;

// realloc that moves a growing block to a medium or large one gives back the OS pages of the new
// block past the bytes asked for, when they are at least this much: a block that another block
// filled before is resident whole, and the program writes its tail only as it grows further
// (docs/performance.md, log, stop 41).
inline constexpr size_t kTailTrimMin = 8 * 1024;

// A zeroed huge block (calloc) whose reused memory may hold old data from this size up is zeroed
// by purging that memory (the OS maps zero pages on first touch) rather than by memset.
inline constexpr size_t kZeroByPurgeMin = size_t{1} << 20;

// A span search looks at most at this many segments of the heap's span index (the shortest
// bins that fit first) for the best of their runs: the cost of an allocation stays bounded
// however many segments a heap holds; with fewer, the search sees every candidate.
inline constexpr unsigned kSpanScan = 8;
// An aligned span search reads at most this many segments whose longest free run may or may
// not cover an aligned slot (span_alloc_aligned), after those that surely do.
inline constexpr unsigned kAlignedScan = 16;

// Spare pages a heap keeps at most (512 KiB; see Heap::spare). A thread that stops allocating
// keeps its spares (only the owner flushes them), so as few as keep the gain: `glibc-simple`
// 0.073, 0.071, 0.070 s with 4, 8, 16 (0.076 with none); 16, 32 and 64 alike.
inline constexpr uint32_t kSpareMax = 8;

// Free resident slices a heap may hold, as a fraction of the slices its large blocks hold, before
// a large block that takes new slices returns as many resident ones to the OS (purge_unfit).
inline constexpr unsigned kUnfitSlackDiv = 8;
// ... less this many slices (2 MiB): a heap with under 16 MiB in large blocks keeps none. Its
// holes are a visible share of its footprint, and refaulting them costs it little in all
// (`mstress`: peak RSS +1 MiB, 8% fewer page faults with the whole slack).
inline constexpr unsigned kUnfitSlackFloor = 32;

// Free resident slices a heap keeps at most until their purge delay runs out: this many (2 MiB),
// plus 1/kFreeFloatDiv of the slices in its spans, plus 1/kUnfitSlackDiv of those in its large
// blocks (without the floor above). Beyond, its next maintenance pass purges the excess at once,
// those waiting longest first (heap_purge_excess): a phase of the program ended and let go of
// most of the heap, and what it does next seldom needs that much again within the delay, while
// its own new memory (and the program's code and files) add to a footprint that still holds the
// old phase's (clang++: the peak came 0.4 s after the parser freed 64 MiB, 5 MiB above the level
// before it). A heap that churns keeps a float well within it (`glibc-thread`: 0.8-1 MiB beside
// 6-7 MiB of spans). `mstress`, whose bursts of frees the next burst refills, pays 5% more page
// faults for 4% less peak RSS; purging only an excess that the next pass finds again left it
// level but kept most of clang++'s peak (203.4 MiB against 204.6). A heap whose resident free
// slices outnumber the slices its spans can hold (heap_let_go_of_most) runs that pass at its
// next slow-path tick, at most once per interval (stop 40); purging every excess at the tick
// cost `mstress` 16% more time and 75% more page faults for 24% less peak RSS.
inline constexpr unsigned kFreeFloatFloor = 32;
inline constexpr unsigned kFreeFloatDiv = 8;
// The purge of that excess picks up to this many segments by age (a read of the heap's segment
// list each), then takes the rest in one pass in list order.
inline constexpr unsigned kPurgeExcessScan = 16;
// The periodic passes over sparse pages (heap_punch_sparse, from maintenance and growth) read
// this many segments each, resuming where the last one stopped: a heap of up to 128 MiB is read
// whole by every pass, a bigger one in turns.
inline constexpr unsigned kPunchScanSegments = 32;

// Alignments up to this (half a segment) are served from a large span that starts at an aligned
// slice of a segment, for blocks up to kLargeMax; beyond, a huge block (a run of chunks).
inline constexpr size_t kLargeAlignMax = kSegmentSize / 2;

// What exiting threads may leave resident in the free slices of their abandoned segments, over
// all of them, for the threads that adopt those segments next (segment_abandon_keep), and for how
// long; the rest is purged at the exit, and what nobody adopted in time soon after. A thread per
// task (a server that starts a thread for each request, a pool that retires idle workers)
// otherwise purged its memory at every exit and the next thread faulted it back in: 32 page
// faults per thread of 64 small blocks (2.2 x glibc's time), 900 per thread of 4 MiB of buffers
// (20 x mimalloc's). One segment's worth covers a task's working memory up to 4 MiB; a short
// life, because a segment that nobody adopts holds it meanwhile: rounds of threads that leave
// many segments behind (`mstress`) would hold it at their peak (+5% peak RSS with no time limit).
inline constexpr size_t kExitKeepBytes = size_t{4} << 20;
inline constexpr uint64_t kExitKeepMs = 20;

// Every block is at least 16-byte aligned, as glibc guarantees on 64-bit targets.
inline constexpr size_t kMinAlign = 16;

// Arenas are reservations of address space that segments are carved from.
inline constexpr size_t kArenaSize = size_t{1} << 30;            // 1 GiB, 256 chunks
inline constexpr unsigned kArenaChunks = kArenaSize / kSegmentSize;
inline constexpr unsigned kMaxArenas = 1024;                      // 1 TiB of arenas
// Huge blocks bigger than this get a mapping of their own instead of an arena run.
inline constexpr size_t kSoloThreshold = kArenaSize / 4;

// The segment map covers the user half of a 48-bit address space, one byte per chunk.
inline constexpr unsigned kAddressBits = 47;
inline constexpr size_t kSegmentMapSize = size_t{1} << (kAddressBits - kSegmentShift);

// Requests above this fail at once with ENOMEM (PTRDIFF_MAX, as glibc).
inline constexpr size_t kMaxRequest = size_t{PTRDIFF_MAX} - kSegmentSize;

}  // namespace nebula
