// core/arena.cpp: arenas (address-space reservations), the chunks segments are made of, the
// segment map that tells our addresses from foreign ones, and the purge of free chunks.
//
// Owns: g_arenas, g_segmap, the committed-bytes accounting of free chunks.
// Invariants (under g_arena_lock):
//   a chunk is in a live segment or being purged <=> its bit in Arena::used is set; being
//   purged <=> its bit in Arena::purging is set too
//   g_segmap[chunk] != 0 <=> the chunk is in a live segment (set before the segment is handed
//   out, cleared before its chunks go back to the arena)
//   g_free_dirty == sum over free chunks (not those being purged) of popcount(dirty_mask) *
//   kSliceSize
#include <cstring>

#include "core/engine.hpp"
#include "core/budget.hpp"
#include "core/options.hpp"

namespace nebula {

NEBULA_SPARSE_BSS_BEGIN
NEBULA_SPARSE_BSS std::atomic<uint8_t> g_segmap[kSegmentMapSize];
NEBULA_SPARSE_BSS_END
GlobalCounters g_counters;

void committed_add(size_t bytes) noexcept {
  size_t now = g_counters.committed.fetch_add(bytes, std::memory_order_relaxed) + bytes;
  size_t peak = g_counters.committed_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_counters.committed_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}
void committed_sub(size_t bytes) noexcept {
  g_counters.committed.fetch_sub(bytes, std::memory_order_relaxed);
}

namespace {

constexpr unsigned kThpShift = 21;  // 2 MiB: the unit of the huge-page flag's bookkeeping
constexpr unsigned kArenaThpWords = (kArenaChunks << (kSegmentShift - kThpShift)) / 64;

struct Arena {
  uintptr_t base;
  uint32_t chunks;                          // chunks in this arena (<= kArenaChunks)
  uint32_t free_count;                      // chunks not in a live segment
  uint32_t index;                           // in g_arenas
  uint64_t committed[kArenaChunks / 64];    // bitmap, strict commit only (g_strict_commit):
                                            // chunk accessible and charged by the kernel
  uint64_t used[kArenaChunks / 64];         // bitmap: chunk in a live segment
  uint64_t grows[kArenaChunks / 64];        // bitmap: chunk in a live huge block that realloc
                                            // has grown in place (arena_grow)
  // The huge-page flag of the mapping, per 2 MiB (kThpShift), kept so that a call that would
  // change nothing is not made (arena_thp): the flag outlives the block that asked for it.
  uint64_t thp_on[kArenaThpWords];          // bitmap: the flag may be set
  uint64_t thp_unsure[kArenaThpWords];      // bitmap: ... and may not be (a refused call, pages
                                            // moved in from another mapping)
  uint64_t header_reset[kArenaChunks / 64]; // bitmap: free chunk whose first slice holds the
                                            // header of a normal segment freed whole, every
                                            // page descriptor in its reset state (segment_new
                                            // need not write them again while it is resident)
  uint64_t huge_header[kArenaChunks / 64];  // bitmap: free chunk whose first slice holds the
                                            // header of a huge block's segment (descriptors
                                            // 2.. lead to 1: huge_header need not write them)
  uint64_t guarded[kArenaChunks / 64];      // bitmap: secure mode, chunk whose last slice is
                                            // inaccessible (the guard of a normal segment freed
                                            // whole, kept for the next segment made there)
  uint64_t purging[kArenaChunks / 64];      // bitmap: free chunk whose resident slices a thread
                                            // is giving back with the lock released (marked
                                            // used meanwhile; dirty_mask still says which)
  uint32_t no_run;                          // find_run found no free run of this many chunks
                                            // (UINT32_MAX: none known), and none has been freed
                                            // since: longer runs need not be looked for
  uint64_t dirty_mask[kArenaChunks];        // free chunks: slices that may be resident
  uint64_t freed_at_ms[kArenaChunks];       // free chunks: when they were freed
  uint64_t oldest_ms;                       // at most the earliest freed_at_ms of its free
                                            // dirty chunks (UINT64_MAX: it has none); exact
                                            // after purge_oldest read the arena
  // The free chunks that may hold resident slices, by how many (find_one): chunk c is in
  // by_resident[k - 1] while it is free and k = popcount(dirty_mask[c]) > 0, and listed[c] == k
  // (0: in none). Written only when chunks with resident slices are freed, taken or purged.
  uint64_t resident_any;                    // bit k - 1: by_resident[k - 1] is not empty
  uint16_t in_list[64];                     // chunks in by_resident[k - 1]
  uint8_t listed[kArenaChunks];
  uint64_t by_resident[64][kArenaChunks / 64];
};

NEBULA_SPARSE_BSS_BEGIN
NEBULA_SPARSE_BSS Arena* g_arenas[kMaxArenas];
NEBULA_SPARSE_BSS_END
std::atomic<unsigned> g_arena_count{0};
Lock g_arena_lock;
size_t g_free_dirty = 0;          // bytes resident in free chunks (under the lock)
size_t g_purging = 0;             // bytes resident in chunks being purged (under the lock)
uint64_t g_next_purge_ms = 0;     // earliest freed_at + delay among free dirty chunks

// The recent peak of the bytes in use (committed, less free resident chunks), over two windows
// of kPeakWindowMs: free chunks are kept resident up to that peak (plus `retain`), because a
// program that has just used that much will likely use it again; a program whose use stays
// lower sees the peak fall within two windows, and the purge delay returns the rest.
constexpr uint64_t kPeakWindowMs = 1000;
size_t g_peak_now = 0, g_peak_prev = 0;  // peak of the current and of the previous window
uint64_t g_peak_window_start = 0;

size_t note_in_use(uint64_t now) {
  size_t in_use = g_counters.committed.load(std::memory_order_relaxed);
  const size_t free_bytes = g_free_dirty + g_purging;
  in_use = in_use > free_bytes ? in_use - free_bytes : 0;
  if (now - g_peak_window_start >= kPeakWindowMs) {
    g_peak_prev = now - g_peak_window_start >= 2 * kPeakWindowMs ? 0 : g_peak_now;
    g_peak_now = 0;
    g_peak_window_start = now;
  }
  if (in_use > g_peak_now) g_peak_now = in_use;
  return in_use;
}

constexpr uint64_t kAllSlices = ~uint64_t{0};

// Strict commit accounting: where the kernel charges every writable private mapping in full
// against a limit for the whole system (vm.overcommit_memory = 2: MAP_NORESERVE is ignored),
// a 1 GiB arena mapped writable took 1 GiB of that limit per process (python3 under us: 1.07
// GiB of Committed_AS where glibc took 12 MiB; a dozen such processes used up this machine's
// 12 GiB). There the arenas are mapped inaccessible, uncharged; a chunk becomes accessible
// (charged, 4 MiB) when it is taken, and inaccessible again when a purge gives its memory back
// or it is freed with nothing resident (decommit: a new mapping over it). Set at the arenas'
// first use (arenas_first_use): /proc/sys/vm/overcommit_memory, or NEBULA_MEM_COMMIT=strict.
bool g_strict_commit = false;
// Each boundary between a committed chunk and an uncommitted one is a mapping more: counted with
// the huge-page flags' edges and the guards against the same share of vm.max_map_count (so that
// blocks ask for fewer huge pages where commits split the arenas; map_count_test).
std::atomic<long> g_commit_edges{0};

bool chunk_committed(const Arena* a, unsigned i) { return (a->committed[i / 64] >> (i % 64)) & 1; }
long commit_edges_at(const Arena* a, unsigned i) {
  auto state = [&](unsigned j) { return j < a->chunks && chunk_committed(a, j); };  // (j = -1 wraps)
  return (state(i - 1) != state(i)) + (state(i) != state(i + 1));
}
void chunk_set_committed(Arena* a, unsigned i, bool v) {
  const long before = commit_edges_at(a, i);
  if (v) a->committed[i / 64] |= uint64_t{1} << (i % 64);
  else a->committed[i / 64] &= ~(uint64_t{1} << (i % 64));
  g_commit_edges.fetch_add(commit_edges_at(a, i) - before, std::memory_order_relaxed);
}
char* chunk_address(const Arena* a, unsigned i) {
  return reinterpret_cast<char*>(a->base + static_cast<uintptr_t>(i) * kSegmentSize);
}
bool chunk_guarded(const Arena* a, unsigned i) { return (a->guarded[i / 64] >> (i % 64)) & 1; }

bool decommit_chunk(Arena* a, unsigned i);

// Strict commit: chunks [first, first + n) (free, under the lock) made accessible where they are
// not; false where the kernel's limit refuses one (ENOMEM), with none of them committed by this
// call left so. A chunk that keeps a segment's guard slice (secure mode) stays without it.
NEBULA_NOINLINE bool commit_chunks(Arena* a, unsigned first, size_t n) {
  for (unsigned c = first; c < first + n; ++c) {
    if (chunk_committed(a, c)) continue;
    const size_t len = chunk_guarded(a, c) ? kSegmentSize - kSliceSize : kSegmentSize;
    if (!os::commit_charged(chunk_address(a, c), len)) {
      while (c-- > first) {
        if (chunk_committed(a, c) && a->dirty_mask[c] == 0 && decommit_chunk(a, c)) chunk_set_committed(a, c, false);
      }
      return false;
    }
    chunk_set_committed(a, c, true);
  }
  return true;
}

bool chunk_used(const Arena* a, unsigned i) { return (a->used[i / 64] >> (i % 64)) & 1; }

// Chunk i leaves its list of free chunks by resident slices (Arena::by_resident), and joins the
// one its dirty mask says if it is free (relist). Under the lock.
NEBULA_NOINLINE void unlist_listed(Arena* a, unsigned i) {
  const unsigned k = a->listed[i] - 1u;
  a->by_resident[k][i / 64] &= ~(uint64_t{1} << (i % 64));
  if (--a->in_list[k] == 0) a->resident_any &= ~(uint64_t{1} << k);
  a->listed[i] = 0;
}
inline void unlist(Arena* a, unsigned i) {
  if (a->listed[i] != 0) unlist_listed(a, i);
}
NEBULA_NOINLINE void relist(Arena* a, unsigned i) {
  unlist(a, i);
  const uint64_t d = a->dirty_mask[i];
  if (d == 0 || chunk_used(a, i)) return;
  const unsigned k = static_cast<unsigned>(popcount64(d)) - 1u;
  a->by_resident[k][i / 64] |= uint64_t{1} << (i % 64);
  a->in_list[k]++;
  a->resident_any |= uint64_t{1} << k;
  a->listed[i] = static_cast<uint8_t>(k + 1);
}
// Every change of a free chunk's dirty mask goes through here, so that the lists follow it (a
// chunk in use is in none: chunk_set_used took it off, and the fork handler puts back those a
// purge had marked in use).
void set_dirty(Arena* a, unsigned i, uint64_t d) {
  a->dirty_mask[i] = d;
  if (d != 0 || a->listed[i] != 0) relist(a, i);
}
bool chunk_purging(const Arena* a, unsigned i) { return (a->purging[i / 64] >> (i % 64)) & 1; }
bool chunk_grows(const Arena* a, unsigned i) { return (a->grows[i / 64] >> (i % 64)) & 1; }
// Chunks [first, first + n) hold a huge block that realloc grew (under the lock).
void mark_growing(Arena* a, unsigned first, size_t n) {
  for (unsigned c = first; c < first + n; ++c) a->grows[c / 64] |= uint64_t{1} << (c % 64);
}
void chunk_set_used(Arena* a, unsigned i, bool v) {
  if (v) {
    a->used[i / 64] |= uint64_t{1} << (i % 64);
    unlist(a, i);
  } else {
    a->used[i / 64] &= ~(uint64_t{1} << (i % 64));
    a->grows[i / 64] &= ~(uint64_t{1} << (i % 64));
    a->no_run = UINT32_MAX;
  }
}

// One chunk (a normal segment) with no growing huge block to keep room behind: the free chunk
// with the most resident slices, lowest first of equals. find_run's answer for n == 1, from the
// lists of free chunks by resident slices (the first chunk of the highest list), else the first
// free chunk. It visited every free chunk (and before stop 22 every chunk): 50 blocks of 2 MiB
// made and freed in rounds spent half their time in that walk (perf), a segment made per block
// with 200 or more free chunks to visit.
NEBULA_SMALL int find_one(const Arena* a) {
  if (a->resident_any != 0) {
    const uint64_t* row = a->by_resident[63 - clz64(a->resident_any)];
    for (unsigned w = 0; w < kArenaChunks / 64; ++w)
      if (row[w] != 0) return static_cast<int>(w * 64 + ctz64(row[w]));
  }
  for (unsigned w = 0; w * 64 < a->chunks; ++w) {
    uint64_t free_bits = ~a->used[w];
    if (a->chunks - w * 64 < 64) free_bits &= (uint64_t{1} << (a->chunks - w * 64)) - 1;
    if (free_bits != 0) return static_cast<int>(w * 64 + ctz64(free_bits));
  }
  return -1;
}

bool any_growing(const Arena* a) {
  for (uint64_t w : a->grows)
    if (w != 0) return true;
  return false;
}

// find_run without growing blocks to spare: the starts of runs of n free chunks come from the
// used bitmap a word at a time (the AND of the free bits shifted by 0..n-1, in doubling steps),
// and only those starts are scored. An arena of huge blocks has few free chunks, mostly apart:
// `patterns huge-many` (30 arenas) read 256 chunks of each arena it passed, 79% of its
// instructions (callgrind). Only the starts of windows that hold a chunk of the lists (free with
// resident slices: the OR of the same shifts) can score above 0; when there are none, the lowest
// start wins. Threads making and freeing 4 MiB blocks (2 chunks) scored each of the 200-odd runs
// of a mostly free arena, none of them all resident: 74% of the samples (perf).
// Of the last chunk only the first `last` slices count (those the block will use), so that a run
// where all of them are resident ends the search: a 4 MiB block uses one slice of its second
// chunk, and whole chunks never scored full where 4 MiB blocks had been freed.
NEBULA_SMALL int find_run_free(Arena* a, unsigned n, unsigned last) {
  constexpr unsigned kWords = kArenaChunks / 64;
  uint64_t starts[kWords], near[kWords], shifted[kWords];
  for (unsigned w = 0; w < kWords; ++w) {
    const unsigned lo = w * 64;
    starts[w] = lo >= a->chunks ? 0 : ~a->used[w];
    if (lo < a->chunks && a->chunks - lo < 64) starts[w] &= (uint64_t{1} << (a->chunks - lo)) - 1;
    near[w] = 0;
    for (uint64_t rows = a->resident_any; rows != 0; rows &= rows - 1) near[w] |= a->by_resident[ctz64(rows)][w];
  }
  // bits[i] = op(bits[i], bits[i + by]), across words.
  auto combine = [&](uint64_t* bits, unsigned by, bool both) {
    for (unsigned w = 0; w < kWords; ++w) {
      const unsigned q = by / 64, r = by % 64;
      const uint64_t lo = w + q < kWords ? bits[w + q] : 0;
      const uint64_t hi = w + q + 1 < kWords ? bits[w + q + 1] : 0;
      shifted[w] = r == 0 ? lo : (lo >> r) | (hi << (64 - r));
    }
    for (unsigned w = 0; w < kWords; ++w) bits[w] = both ? bits[w] & shifted[w] : bits[w] | shifted[w];
  };
  // For len = 1, 2, 4, ...: starts holds the chunks that begin len free chunks, near those whose
  // len chunks hold one of the lists'.
  unsigned len = 1;
  while (2 * len <= n) {
    combine(starts, len, true);
    combine(near, len, false);
    len *= 2;
  }
  if (len < n) {  // (n - len < len: the two windows cover n)
    combine(starts, n - len, true);
    combine(near, n - len, false);
  }
  int first = -1;
  for (unsigned w = 0; w < kWords; ++w) {
    if (first < 0 && starts[w] != 0) first = static_cast<int>(w * 64 + ctz64(starts[w]));
    near[w] &= starts[w];
  }
  if (first < 0) a->no_run = n;
  const unsigned full = (n - 1) * 64 + last;
  const uint64_t m = last >= 64 ? ~uint64_t{0} : (uint64_t{1} << last) - 1;
  const uint64_t* d = a->dirty_mask;
  int best = first, prev = -2;
  unsigned best_score = 0, score = 0;
  for (unsigned w = 0; w < kWords; ++w) {
    for (uint64_t bits = near[w]; bits != 0; bits &= bits - 1) {
      const int i = static_cast<int>(w * 64 + ctz64(bits));
      if (i == prev + 1) {  // the window slides by one chunk: d[i + n - 2] is whole now
        score += static_cast<unsigned>(popcount64(d[i + n - 2]) - popcount64(d[i + n - 2] & m) +
                                       popcount64(d[i + n - 1] & m) - popcount64(d[i - 1]));
      } else {
        score = static_cast<unsigned>(popcount64(d[i + n - 1] & m));
        for (unsigned j = 0; j + 1 < n; ++j) score += static_cast<unsigned>(popcount64(d[i + j]));
      }
      prev = i;
      if (score > best_score) {
        best = i;
        best_score = score;
        if (score == full) return best;
      }
    }
  }
  return best;
}

// Find `n` consecutive free chunks, choosing among all the runs that fit the one with the most
// resident slices (fewest page faults on reuse; ties go to the lowest address). Only reached
// when a huge block or, next to a growing one, a segment is made (find_one serves the rest);
// without growing blocks to spare, find_run_free reads the bitmaps, and of the last chunk counts
// only the first `last` slices, those the block will use (find_one and the sparing walk count
// whole chunks). Linear in the arena's chunks where it spares.
// `spare_growth`: leave alone as many free chunks after a huge block that realloc has grown in
// place as the block has: they are where it grows next when the program keeps doubling it (a
// buffer, a hash table). They are often the most resident (a bigger block freed there before),
// so a segment would choose them first and force the next doubling to copy the whole block, old
// and new resident together: sqlite3, whose sorter buffer doubles to 64 MiB, peaked at 236 MiB
// instead of 197. Only blocks seen growing: spared behind every huge block, the free chunks
// stayed resident and idle while segments took new memory (`mstress`, whose blocks of 2-4 MiB
// are never grown: peak RSS +4%). Only segments are kept out: huge blocks kept out too, `large`
// (buffers of 5-25 MiB, some grown once by half) took new memory for them (peak RSS +15%).
// An arena where a search found no run of n chunks is not searched again for n or more until
// chunks are freed in it (Arena::no_run): a process with 30 GiB of huge blocks (5,000 of 4-8 MiB,
// 30 arenas) read every chunk of every full arena before reaching one with room, 31% of its
// samples in a program that replaces them at random.
NEBULA_SMALL int find_run(Arena* a, unsigned n, bool spare_growth, unsigned last) {
  if (a->free_count < n || n == 0 || n >= a->no_run) return -1;
  const bool sparing = spare_growth && any_growing(a);
  if (n == 1 && !sparing) return find_one(a);
  if (!sparing) return find_run_free(a, n, last);
  const unsigned full = n * 64;
  int best = -1;
  unsigned best_score = 0;
  unsigned run = 0, score = 0;  // length and resident slices of the window ending at i
  unsigned grow_run = 0, spare = 0;  // growing chunks just before; free chunks still to leave
  for (unsigned i = 0; i < a->chunks; ++i) {
    if (chunk_used(a, i)) {
      run = score = 0;
      grow_run = chunk_grows(a, i) ? grow_run + 1 : 0;
      spare = grow_run;
      continue;
    }
    grow_run = 0;
    if (spare != 0) {
      --spare;
      continue;
    }
    score += popcount64(a->dirty_mask[i]);
    if (++run > n) {
      score -= popcount64(a->dirty_mask[i - n]);
      run = n;
    }
    if (run == n && (best < 0 || score > best_score)) {
      best = static_cast<int>(i + 1 - n);
      best_score = score;
      if (score == full) break;
    }
  }
  return best;  // (no_run stays: a run may lie among the chunks spared)
}

// The huge-page bookkeeping of 2 MiB unit i. Its words are shared by the chunks of other owners:
// read and changed atomically (a unit's bits change only while its chunk is in a live segment,
// by the segment's owner).
bool thp_bit(const uint64_t* map, size_t i) {
  return (__atomic_load_n(&map[i / 64], __ATOMIC_RELAXED) >> (i % 64)) & 1;
}
void thp_put(uint64_t* map, size_t i, bool v) {
  const uint64_t bit = uint64_t{1} << (i % 64);
  if (v) __atomic_fetch_or(&map[i / 64], bit, __ATOMIC_RELAXED);
  else __atomic_fetch_and(&map[i / 64], ~bit, __ATOMIC_RELAXED);
}

// Mark chunks [first, first + n) used (under the lock). Their dirty masks go to the new owner:
// reports the bytes that may be resident (counted committed already, no longer free) and the
// end of the last such slice, from the first chunk.
// Secure mode: a chunk whose guard slice a segment left in place keeps it for a segment
// (`*guarded`), and any other taker gets it accessible again (under the lock, rare: a huge block
// on chunks that segments used).
void take_chunks(Arena* a, unsigned first, size_t n, size_t* dirty_bytes, size_t* dirty_extent,
                 bool* guarded = nullptr) {
  size_t bytes = 0, extent = 0;
  for (size_t i = 0; i < n; ++i) {
    unsigned c = first + static_cast<unsigned>(i);
    chunk_set_used(a, c, true);
    a->header_reset[c / 64] &= ~(uint64_t{1} << (c % 64));
    a->huge_header[c / 64] &= ~(uint64_t{1} << (c % 64));
    if ((a->guarded[c / 64] >> (c % 64)) & 1) {
      a->guarded[c / 64] &= ~(uint64_t{1} << (c % 64));
      if (guarded != nullptr) *guarded = true;
      else arena_guard_off(reinterpret_cast<char*>(a->base) + (static_cast<size_t>(c) + 1) * kSegmentSize - kSliceSize);
    }
    uint64_t d = a->dirty_mask[c];
    if (d != 0) {
      size_t b = static_cast<size_t>(popcount64(d)) << kSliceShift;
      bytes += b;
      g_free_dirty -= b;
      extent = i * kSegmentSize + (static_cast<size_t>(64 - clz64(d)) << kSliceShift);
    }
    a->dirty_mask[c] = 0;
  }
  a->free_count -= static_cast<uint32_t>(n);
  *dirty_bytes = bytes;
  *dirty_extent = extent;
}

// Strict commit and the segment map: the library's sparse .bss is a writable private mapping,
// charged in full at load (32 MiB per process). At the arenas' first use its whole pages, zero and
// unwritten, become a new read-only mapping (uncharged; lookups read zeros as before), and the
// pages that hold the entries of an arena or a solo mapping are made writable (charged, one or
// two pages each) before any entry there is written. false where the kernel's limit refuses.
uintptr_t g_segmap_ro_lo = 0, g_segmap_ro_hi = 0;  // the read-only part (page-aligned)
NEBULA_NOINLINE void segmap_uncharge() {
  const uintptr_t page = os::page_size();
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(g_segmap) + page - 1) & ~(page - 1);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(g_segmap + kSegmentMapSize) & ~(page - 1);
  if (hi > lo && os::remap_zero_readonly(reinterpret_cast<void*>(lo), hi - lo)) {
    g_segmap_ro_lo = lo;
    g_segmap_ro_hi = hi;
  }
}
NEBULA_NOINLINE bool segmap_writable(uintptr_t base, size_t bytes) {
  const uintptr_t page = os::page_size();
  uintptr_t lo = reinterpret_cast<uintptr_t>(&g_segmap[base >> kSegmentShift]) & ~(page - 1);
  uintptr_t hi = (reinterpret_cast<uintptr_t>(&g_segmap[(base + bytes - 1) >> kSegmentShift]) + page) & ~(page - 1);
  if (lo < g_segmap_ro_lo) lo = g_segmap_ro_lo;
  if (hi > g_segmap_ro_hi) hi = g_segmap_ro_hi;
  return hi <= lo || os::commit_charged(reinterpret_cast<void*>(lo), hi - lo);
}

// The memory of segments carries MADV_NOHUGEPAGE from its reservation on, whatever the kernel's
// mode of transparent huge pages. The engine counts what is resident in 64 KiB slices (a chunk's
// dirty mask, the committed bytes the budget bounds, the purges), and a kernel in `always` mode
// backs a 2 MiB range with one huge page at the first touch of any of its slices: 32 slices
// resident where the counts know of one, which no purge of the counted ones gives back (a program
// of a few small blocks held 5.7-7.7 MiB where it holds 2.1 under `madvise`; docs/performance.md,
// stop 50). Huge blocks still ask for huge pages (hint_huge): whole 2 MiB pages of one block,
// counted as resident. The segment map, in the library's sparse .bss, is read at a few bytes
// and would take 2 MiB at its first write the same way: its whole pages get the flag at the
// arenas' first use (arenas_first_use), before any entry is written.
NEBULA_SMALL void refuse_thp(const void* begin, const void* end) {
  const uintptr_t page = os::page_size();
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(begin) + page - 1) & ~(page - 1);
  const uintptr_t hi = reinterpret_cast<uintptr_t>(end) & ~(page - 1);
  if (hi > lo) os::huge_unhint(reinterpret_cast<void*>(lo), hi - lo);
}

// Before the first chunk or solo mapping is handed out (no entry of the segment map is written
// before): the commit mode, and the segment map's flags (above).
std::atomic<bool> g_arenas_ready{false};
NEBULA_NOINLINE NEBULA_SMALL void arenas_first_use() {
  LockGuard guard(g_arena_lock);
  if (g_arenas_ready.load(std::memory_order_relaxed)) return;
  char mode[4] = {0};
  g_strict_commit = option(Option::kCommit) == 1 ||
                    (os::read_file("/proc/sys/vm/overcommit_memory", mode, sizeof mode) > 0 && mode[0] == '2');
  if (g_strict_commit) segmap_uncharge();
  refuse_thp(g_segmap, g_segmap + kSegmentMapSize);
  g_arenas_ready.store(true, std::memory_order_release);
}

// A new arena of 1 GiB, or where the address space is short (a limit such as `ulimit -v`:
// RLIMIT_AS counts reserved space) of 64 MiB, 16 MiB, and last the `need` chunks asked for.
// With only 1 GiB and 64 MiB tried, python3 under `ulimit -v 100000` (100 MB, where glibc's
// malloc runs it) failed at start: the 64 MiB arena, mapped with 4 MiB to spare for its
// alignment, did not fit beside the program's libraries and our 32 MiB segment map (stop 50).
NEBULA_NOINLINE NEBULA_SMALL Arena* arena_create(size_t need) {
  unsigned count = g_arena_count.load(std::memory_order_relaxed);
  if (count >= kMaxArenas) return nullptr;
  size_t meta = align_up(sizeof(Arena), os::page_size());
  auto* a = static_cast<Arena*>(os::reserve(meta, os::page_size()));
  if (a == nullptr) return nullptr;
  size_t size = 0;
  void* base = nullptr;
  for (size_t chunks : {size_t{kArenaChunks}, size_t{16}, size_t{4}, size_t{1}}) {
    size = (chunks > need ? chunks : need) * kSegmentSize;
    base = g_strict_commit ? os::reserve_inaccessible(size, kSegmentSize) : os::reserve(size, kSegmentSize);
    if (base != nullptr) break;
  }
  if (base != nullptr && g_strict_commit && !segmap_writable(reinterpret_cast<uintptr_t>(base), size)) {
    os::release(base, size);
    base = nullptr;
  }
  if (base == nullptr) {
    os::release(a, meta);
    return nullptr;
  }
  refuse_thp(base, static_cast<char*>(base) + size);
  a->base = reinterpret_cast<uintptr_t>(base);
  a->index = count;
  a->chunks = static_cast<uint32_t>(size / kSegmentSize);
  a->free_count = a->chunks;
  a->no_run = UINT32_MAX;
  a->oldest_ms = UINT64_MAX;
  g_counters.reserved.fetch_add(size, std::memory_order_relaxed);
  g_arenas[count] = a;
  g_arena_count.store(count + 1, std::memory_order_release);
  return a;
}

// Strict commit: free chunk i (owned by the caller: under the lock, or marked purging) made
// inaccessible, its pages and its charge given back; false where the kernel refused (it stays
// committed). The new mapping has no huge-page flag: it refuses them again, and the arena's
// note of a flag a huge block asked for there is cleared.
bool decommit_chunk(Arena* a, unsigned i) {
  char* p = chunk_address(a, i);
  if (!os::decommit(p, kSegmentSize)) return false;
  arena_thp(a->index, reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + kSegmentSize, false);
  refuse_thp(p, p + kSegmentSize);
  return true;
}

// Free chunks [first, first + n) that hold nothing resident, under the lock: with strict commit,
// uncharged now. (The strict paths are out of line, called once per range: the default mode's
// code keeps to its window.)
NEBULA_NOINLINE void release_clean_strict(Arena* a, unsigned first, size_t n) {
  for (unsigned i = first; i < first + n; ++i)
    if (chunk_committed(a, i) && a->dirty_mask[i] == 0 && decommit_chunk(a, i)) chunk_set_committed(a, i, false);
}
inline void release_clean(Arena* a, unsigned first, size_t n) {
  if (NEBULA_UNLIKELY(g_strict_commit)) release_clean_strict(a, first, n);
}
NEBULA_NOINLINE bool purge_strict(Arena* a, unsigned i) { return chunk_committed(a, i) && decommit_chunk(a, i); }

// The madvise calls that give back chunk i's resident slices `mask`, a call per run of them;
// with strict commit one call for the chunk, which is then uncommitted (returns true: the
// caller clears its committed bit under the lock).
bool purge_slices_of(Arena* a, unsigned i, uint64_t mask) {
  if (NEBULA_UNLIKELY(g_strict_commit) && purge_strict(a, i)) return true;
  char* chunk = reinterpret_cast<char*>(a->base + static_cast<uintptr_t>(i) * kSegmentSize);
  if (mask == kAllSlices) {
    os::purge(chunk, kSegmentSize);
    return false;
  }
  for (uint64_t m = mask; m != 0;) {
    unsigned lo = ctz64(m);
    uint64_t shifted = ~(m >> lo);
    unsigned len = shifted == 0 ? 64 - lo : ctz64(shifted);
    os::purge(chunk + (static_cast<size_t>(lo) << kSliceShift), static_cast<size_t>(len) << kSliceShift);
    if (lo + len >= 64) break;
    m &= ~(((uint64_t{1} << len) - 1) << lo);
  }
  return false;
}

void count_purged(size_t bytes, size_t calls) {
  budget_release(bytes);
  g_counters.purged.fetch_add(bytes, std::memory_order_relaxed);
  g_counters.purge_calls.fetch_add(calls, std::memory_order_relaxed);
}

// Free chunks whose resident slices are given back with the lock released: under it each is
// taken out of use (marked used and purging, so that nobody takes it and the walks of live
// segments pass it by) and no longer counted resident and free; the madvise calls follow
// without the lock, and the chunks come back free and clean under it (purge_finish). Such a
// call gives back up to 4 MiB of pages, with a TLB shootdown on every core that runs the
// process (`large --threads 2` under strace: 115 calls, 22 ms). Under the lock it held every
// thread that makes or frees a segment or a huge block: 1,108 sched_yield calls a run of
// `large --threads 2`, 97% of them waiting on the arena lock in free_chunks while the other
// thread purged; 46,207 with 8 threads, 195 since. A full batch purges the rest under the lock.
constexpr unsigned kPurgeBatch = 32;
struct PurgeBatch {
  struct Item {
    Arena* a;
    unsigned i;
    bool decommitted;
  };
  Item item[kPurgeBatch];
  unsigned n = 0;
};

// Purge the resident slices of free chunk i (under the lock): now if `batch` is full, else with
// the lock released (purge_finish).
void purge_chunk(Arena* a, unsigned i, PurgeBatch& batch) {
  uint64_t mask = a->dirty_mask[i];
  if (mask == 0) return;
  size_t bytes = static_cast<size_t>(popcount64(mask)) << kSliceShift;
  g_free_dirty -= bytes;
  if (batch.n == kPurgeBatch) {
    if (purge_slices_of(a, i, mask)) chunk_set_committed(a, i, false);
    set_dirty(a, i, 0);
    count_purged(bytes, 1);
    return;
  }
  chunk_set_used(a, i, true);  // (no_run stays: the chunk is free again after the calls)
  a->purging[i / 64] |= uint64_t{1} << (i % 64);
  a->free_count--;
  g_purging += bytes;
  batch.item[batch.n++] = {a, i, false};
}

}  // namespace

void (*g_purge_window_hook)(PurgeWindow) = nullptr;

namespace {
// The madvise calls of the chunks in `batch`, then their return to the free chunks (called
// without the lock).
void purge_finish(PurgeBatch& batch) {
  if (batch.n == 0) return;
  size_t bytes = 0;
  for (unsigned k = 0; k < batch.n; ++k) {
    PurgeBatch::Item& it = batch.item[k];
    const uint64_t mask = it.a->dirty_mask[it.i];  // (nobody changes it meanwhile)
    it.decommitted = purge_slices_of(it.a, it.i, mask);
    bytes += static_cast<size_t>(popcount64(mask)) << kSliceShift;
  }
  if (g_purge_window_hook != nullptr) g_purge_window_hook(PurgeWindow::kArenaChunks);
  {
    LockGuard guard(g_arena_lock);
    for (unsigned k = 0; k < batch.n; ++k) {
      Arena* a = batch.item[k].a;
      const unsigned i = batch.item[k].i;
      set_dirty(a, i, 0);
      if (batch.item[k].decommitted) chunk_set_committed(a, i, false);
      a->purging[i / 64] &= ~(uint64_t{1} << (i % 64));
      chunk_set_used(a, i, false);
      a->free_count++;
    }
    g_purging -= bytes;
  }
  count_purged(bytes, batch.n);
  batch.n = 0;
}

// Purge the free dirty chunk freed longest ago; false if there is none. Each arena keeps a
// lower bound of its oldest one (Arena::oldest_ms): the arena with the lowest bound is read,
// which makes its bound exact, until the lowest bound is an exact one. Reading every chunk of
// every arena for each chunk purged cost a process with 30 arenas of huge blocks 18% of its
// samples (`patterns huge-many`: each free over the limit purges a chunk or two).
bool purge_oldest(PurgeBatch& batch) {
  unsigned count = g_arena_count.load(std::memory_order_relaxed);
  for (unsigned tries = 0; tries <= count; ++tries) {
    Arena* best = nullptr;
    uint64_t best_t = UINT64_MAX, next_t = UINT64_MAX;
    for (unsigned k = 0; k < count; ++k) {
      Arena* a = g_arenas[k];
      if (a->free_count == 0 || a->oldest_ms == UINT64_MAX) continue;
      if (a->oldest_ms < best_t) {
        next_t = best_t;
        best_t = a->oldest_ms;
        best = a;
      } else if (a->oldest_ms < next_t) {
        next_t = a->oldest_ms;
      }
    }
    if (best == nullptr) return false;
    unsigned best_i = 0;
    uint64_t t = UINT64_MAX;
    for (unsigned i = 0; i < best->chunks; ++i) {
      if (chunk_used(best, i) || best->dirty_mask[i] == 0 || best->freed_at_ms[i] >= t) continue;
      best_i = i;
      t = best->freed_at_ms[i];
    }
    best->oldest_ms = t;                   // exact now
    if (t == UINT64_MAX || t > next_t) continue;  // another arena may hold an older one
    purge_chunk(best, best_i, batch);      // (its bound stays a lower bound)
    return true;
  }
  return false;
}

// A program that lets go of nearly everything (its use below 1/16 of the recent peak: free_chunks)
// gets what is beyond `retain` back at once, since it may not call the allocator for a long time.
// One that does so in a loop (a round of big buffers, all freed, then the next round) would
// fault that memory back in every round: 50 blocks of 2 MiB made and freed 50 times purged 34 of
// them a round (1,700 madvise calls, 8,652 page faults; 30 x mimalloc's time). So such a purge
// is judged by what follows it: when the program takes as many clean chunks as half of those it
// purged within a purge delay (the time the normal rule would have kept them), it was wasted,
// and the next one is held off for 2 purge delays, doubling with each wasted one up to 32. One
// whose memory stays away (no clean chunk taken before the next, or none within a purge delay)
// ends the hold; so does a forced purge (malloc_trim, pressure). Under the arena lock.
struct PhaseEnd {
  uint64_t at_ms;       // when the last purge at a phase end ran
  uint64_t hold_until;  // none before this
  uint64_t hold_ms;     // the current hold (0: none)
  uint32_t purged;      // chunks the last one purged, 0 once judged
  uint32_t refilled;    // clean chunks taken since it
};
PhaseEnd g_phase{};

NEBULA_NOINLINE void purge_phase_end(uint64_t now, size_t limit, PurgeBatch& batch) {
  if (g_phase.purged != 0) g_phase.hold_ms = 0;  // the last one's memory stayed away
  uint32_t n = 0;
  while (g_free_dirty > limit && purge_oldest(batch)) ++n;
  g_phase = PhaseEnd{now, g_phase.hold_until, g_phase.hold_ms, n, 0};
}

// A grant of `chunks` with nothing resident, after a purge at a phase end not judged yet.
NEBULA_NOINLINE void phase_refill(uint64_t now, size_t chunks) {
  const uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  if (now > g_phase.at_ms + delay) {  // the memory stayed away a purge delay: the purge was right
    g_phase.purged = 0;
    g_phase.hold_ms = 0;
    return;
  }
  g_phase.refilled += static_cast<uint32_t>(chunks);
  if (uint64_t{g_phase.refilled} * 2 < g_phase.purged) return;
  const uint64_t hold = g_phase.hold_ms == 0 ? 2 * delay : 2 * g_phase.hold_ms;
  g_phase.hold_ms = hold < 32 * delay ? hold : 32 * delay;
  g_phase.hold_until = now + g_phase.hold_ms;
  g_phase.purged = 0;
}

// Purge free chunks whose delay expired (all of them when force).
void purge_expired(uint64_t now, bool force, PurgeBatch& batch) {
  uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
  uint64_t next = 0;
  unsigned count = g_arena_count.load(std::memory_order_relaxed);
  for (unsigned k = 0; k < count; ++k) {
    Arena* a = g_arenas[k];
    for (unsigned i = 0; i < a->chunks; ++i) {
      if (chunk_used(a, i) || a->dirty_mask[i] == 0) continue;
      uint64_t due = a->freed_at_ms[i] + delay;
      if (force || due <= now) purge_chunk(a, i, batch);
      else if (next == 0 || due < next) next = due;
    }
  }
  __atomic_store_n(&g_next_purge_ms, next, __ATOMIC_RELAXED);
}

}  // namespace

void segmap_set(void* base, size_t chunks) noexcept {
  uintptr_t first = reinterpret_cast<uintptr_t>(base) >> kSegmentShift;
  for (size_t i = chunks; i-- > 0;) {  // interior chunks first, the start chunk last
    uint8_t v = i == 0 ? 1 : static_cast<uint8_t>(i + 1 > 255 ? 255 : i + 1);
    g_segmap[first + i].store(v, std::memory_order_release);
  }
}

void segmap_clear(void* base, size_t chunks) noexcept {
  uintptr_t first = reinterpret_cast<uintptr_t>(base) >> kSegmentShift;
  for (size_t i = 0; i < chunks; ++i) g_segmap[first + i].store(0, std::memory_order_release);
}

Segment* segment_containing(const void* p) noexcept {
  uintptr_t i = reinterpret_cast<uintptr_t>(p) >> kSegmentShift;
  if (i >= kSegmentMapSize) return nullptr;
  uint8_t v = g_segmap[i].load(std::memory_order_acquire);
  while (v >= 2) {
    uintptr_t step = v == 255 ? 254 : v - 1u;
    if (step > i) return nullptr;
    i -= step;
    v = g_segmap[i].load(std::memory_order_acquire);
  }
  if (v != 1) return nullptr;
  return reinterpret_cast<Segment*>(i << kSegmentShift);
}

bool arena_alloc(size_t chunks, ChunkGrant* out, ChunkUse use, unsigned last) noexcept {
  const bool segment = use == ChunkUse::kSegment;
  size_t bytes = chunks * kSegmentSize;
  if (NEBULA_UNLIKELY(!g_arenas_ready.load(std::memory_order_acquire))) arenas_first_use();
  if (bytes > kSoloThreshold) {
    void* p = os::reserve(bytes, kSegmentSize);
    if (p == nullptr) return false;
    refuse_thp(p, static_cast<char*>(p) + bytes);  // (hint_huge asks for the block's own 2 MiB pages)
    if (g_strict_commit && !segmap_writable(reinterpret_cast<uintptr_t>(p), bytes)) {
      os::release(p, bytes);
      return false;
    }
    g_counters.reserved.fetch_add(bytes, std::memory_order_relaxed);
    *out = ChunkGrant{p, 0, true, 0, true, 0, 0};
    return true;
  }
  uint64_t now = os::clock_ms_coarse();  // (see free_chunks)
  LockGuard guard(g_arena_lock);
  note_in_use(now);
  Arena* a = nullptr;
  int at = -1;
  unsigned count = g_arena_count.load(std::memory_order_relaxed);
  unsigned k = 0;
  // A segment keeps out of the room behind growing huge blocks while there is room elsewhere.
  for (int pass = segment ? 0 : 1; pass < 2 && a == nullptr; ++pass) {
    for (k = 0; k < count; ++k) {
      at = find_run(g_arenas[k], static_cast<unsigned>(chunks), pass == 0, last);
      if (at >= 0) {
        a = g_arenas[k];
        break;
      }
    }
  }
  if (a == nullptr) {
    a = arena_create(chunks);
    if (a == nullptr) return false;
    k = g_arena_count.load(std::memory_order_relaxed) - 1;
    at = find_run(a, static_cast<unsigned>(chunks), false, last);
    if (at < 0) return false;
  }
  if (g_strict_commit && !commit_chunks(a, static_cast<unsigned>(at), chunks)) return false;
  uint64_t dirty_first = a->dirty_mask[at];
  const bool header_reset = (a->header_reset[at / 64] >> (at % 64)) & 1;
  const bool huge_header = (a->huge_header[at / 64] >> (at % 64)) & 1;
  size_t dirty_bytes = 0, dirty_extent = 0;
  bool guarded = false;
  take_chunks(a, static_cast<unsigned>(at), chunks, &dirty_bytes, &dirty_extent,
              segment && chunks == 1 ? &guarded : nullptr);
  if (dirty_bytes == 0 && g_phase.purged != 0) phase_refill(now, chunks);
  void* base = reinterpret_cast<void*>(a->base + static_cast<uintptr_t>(at) * kSegmentSize);
  *out = ChunkGrant{base, dirty_first, dirty_bytes == 0, static_cast<uint16_t>(k), false,
                    dirty_bytes, dirty_extent, header_reset && chunks == 1, guarded, huge_header};
  return true;
}

namespace {
// The chunks of a segment or a huge block's run go back to arena k: a huge run passes the length
// from its start that may be resident, a normal segment its first chunk's dirty slices.
// `huge_header`: the run is a huge block's segment, its header at the start.
void free_chunks(unsigned k, uintptr_t start, size_t chunks, bool huge, uint64_t dirty_first, size_t dirty_len,
                 bool header_reset, bool huge_header) {
  // The coarse clock (a tick behind at most): the times it takes are purge delays and peak
  // windows of hundreds of ms, and a segment made and freed per big block read the clock three
  // times (34 ns each here, 17% of rounds of 2 MiB blocks; 12 ns coarse).
  uint64_t now = os::clock_ms_coarse();
  PurgeBatch batch;
  {
    LockGuard guard(g_arena_lock);
    Arena* a = g_arenas[k];
    unsigned first = static_cast<unsigned>((start - a->base) >> kSegmentShift);
    size_t dirty_bytes = 0;
    for (size_t i = 0; i < chunks; ++i) {
      unsigned c = first + static_cast<unsigned>(i);
      chunk_set_used(a, c, false);
      uint64_t d = dirty_first;
      if (huge) {
        size_t lo = i * kSegmentSize;
        size_t slices = dirty_len <= lo ? 0 : (dirty_len - lo) >> kSliceShift;
        d = slices >= 64 ? kAllSlices : ((uint64_t{1} << slices) - 1);
      }
      set_dirty(a, c, d);
      a->freed_at_ms[c] = now;
      if (d != 0 && now < a->oldest_ms) a->oldest_ms = now;
      if (header_reset && i == 0) a->header_reset[c / 64] |= uint64_t{1} << (c % 64);
      if (huge_header && i == 0) a->huge_header[c / 64] |= uint64_t{1} << (c % 64);
      // A normal segment freed whole (header_reset) in secure mode leaves its guard slice in place.
      if (header_reset && g_secure) a->guarded[c / 64] |= uint64_t{1} << (c % 64);
      dirty_bytes += static_cast<size_t>(popcount64(d)) << kSliceShift;
    }
    release_clean(a, first, chunks);
    a->free_count += static_cast<uint32_t>(chunks);
    g_free_dirty += dirty_bytes;
    uint64_t delay = static_cast<uint64_t>(option(Option::kPurgeDelay));
    if (g_next_purge_ms == 0 || now + delay < g_next_purge_ms)
      __atomic_store_n(&g_next_purge_ms, now + delay, __ATOMIC_RELAXED);
    // Free chunks stay resident (for reuse without page faults) as long as the footprint stays
    // within the recent peak of the bytes in use plus the retain option: a program that churns
    // through big blocks refills them. When the use falls below 1/16 of that peak, the program has
    // let go of nearly everything (a phase ended) and may not call the allocator again for a long
    // time, so the limit becomes the larger of retain and the bytes in use, unless such a purge
    // was wasted lately (PhaseEnd). Beyond the limit, and when purge_delay is 0, free chunks go
    // back now, those free longest first.
    size_t in_use = note_in_use(now);
    size_t peak = g_peak_now > g_peak_prev ? g_peak_now : g_peak_prev;
    size_t retain = static_cast<size_t>(option(Option::kRetain));
    if (delay == 0) {
      for (size_t i = 0; i < chunks; ++i) purge_chunk(a, first + static_cast<unsigned>(i), batch);
    } else if (in_use < peak / 16 && now >= g_phase.hold_until) {
      const size_t limit = retain > in_use ? retain : in_use;
      if (g_free_dirty > limit) purge_phase_end(now, limit, batch);
    } else {
      while (g_free_dirty > retain + (peak - in_use) && purge_oldest(batch)) {
      }
    }
    if (now >= g_next_purge_ms) purge_expired(now, false, batch);
  }
  purge_finish(batch);
}
}  // namespace

void arena_free(Segment* s, size_t chunks, uint64_t dirty_first, size_t dirty_len, bool header_reset) noexcept {
  if (s->solo) {
    size_t bytes = s->mapped_size;
    segmap_clear(s, chunks);
    os::release(s, bytes);
    g_counters.reserved.fetch_sub(bytes, std::memory_order_relaxed);
    budget_release(dirty_len);
    return;
  }
  const bool huge = s->kind == SegmentKind::kHuge;
  segmap_clear(s, chunks);
  free_chunks(s->arena_index, reinterpret_cast<uintptr_t>(s), chunks, huge, dirty_first, dirty_len, header_reset, huge);
}

void arena_free_run(const ChunkGrant& run, size_t chunks, size_t dirty_len) noexcept {
  free_chunks(run.arena_index, reinterpret_cast<uintptr_t>(run.base), chunks, true, 0, dirty_len, false, false);
}

bool arena_grow(Segment* s, size_t chunks, size_t add, size_t* dirty_bytes, size_t* dirty_extent) noexcept {
  if (s->solo || add == 0) return false;
  LockGuard guard(g_arena_lock);
  Arena* a = g_arenas[s->arena_index];
  unsigned from = static_cast<unsigned>(((reinterpret_cast<uintptr_t>(s) - a->base) >> kSegmentShift) + chunks);
  if (from + add > a->chunks) return false;
  for (size_t i = 0; i < add; ++i)
    if (chunk_used(a, from + static_cast<unsigned>(i))) return false;
  if (g_strict_commit && !commit_chunks(a, from, add)) return false;
  take_chunks(a, from, add, dirty_bytes, dirty_extent);
  // The whole block is now one that grows (find_run leaves room behind it for segments).
  mark_growing(a, from - static_cast<unsigned>(chunks), chunks + add);
  return true;
}

namespace {
// Each 2 MiB unit whose huge-page flag differs from its neighbour's starts a mapping of its own
// (a VMA), and the kernel allows a process vm.max_map_count of them in all (65,530 by default),
// the program's own included. 5,000 live blocks of 4-8 MiB made 12,600 of them, and 33,000
// made all: then pthread_create failed (a thread's stack is two mappings) where glibc's malloc
// left the program 110 in all. g_thp_edges counts the flag changes between neighbouring units
// that our calls made (an estimate: the units' owners change their bits without a common lock);
// beyond a quarter of the limit, blocks ask for no huge pages (their flag stays as it is), and
// only calls that take the flag off, which a segment's or block's memory needs, are made.
// Secure mode's guard slices split mappings too (g_guards, below), and count against the same
// quarter: where guards take it, blocks ask for no huge pages.
std::atomic<long> g_thp_edges{0};
std::atomic<long> g_thp_edge_limit{0};  // 0: not read yet
// Live guard slices (secure mode). Each is inaccessible memory inside the arena's read-write
// mapping, which it splits in three: two more mappings. 12,000 live huge blocks of 4-8 MiB
// made 40,383 mappings with guards and huge-page flags both uncounted; a program with 19,000
// would have had no mapping left for a thread's stack. Guards are what secure mode promises, so
// past the cap a request that needs a new one fails (ENOMEM) rather than get a block without one;
// the cap is half of vm.max_map_count, the other half the program's.
std::atomic<long> g_guards{0};

long thp_edge_limit() noexcept {
  long limit = g_thp_edge_limit.load(std::memory_order_relaxed);
  if (limit != 0) return limit;
  char buf[32];
  long n = os::read_file("/proc/sys/vm/max_map_count", buf, sizeof buf - 1);
  long v = 0;
  for (long k = 0; k < n && buf[k] >= '0' && buf[k] <= '9'; ++k) v = v * 10 + (buf[k] - '0');
  limit = (v > 0 ? v : 65530) / 4;
  g_thp_edge_limit.store(limit, std::memory_order_relaxed);
  return limit;
}

// Flag changes between neighbouring units around [i, j) (from unit i - 1 to unit j; outside the
// arena counts as no flag), with units [i, j) holding `set` (-1: as they are).
long thp_edges(const Arena* a, size_t i, size_t j, int set) noexcept {
  const size_t units = static_cast<size_t>(a->chunks) << (kSegmentShift - kThpShift);
  auto flag = [&](size_t k) {  // k is unit k - 1 (0: the one before the arena)
    if (k == 0 || k > units) return false;
    if (set >= 0 && k - 1 >= i && k - 1 < j) return set != 0;
    return thp_bit(a->thp_on, k - 1);
  };
  long edges = 0;
  for (size_t k = i; k <= j; ++k) edges += flag(k) != flag(k + 1);
  return edges;
}
}  // namespace

void arena_thp(unsigned index, uintptr_t lo, uintptr_t hi, bool on) noexcept {
  Arena* a = g_arenas[index];
  const size_t last = (hi - a->base) >> kThpShift;
  // Where the flag is known to be as asked already, no call: `patterns huge-many` (5,000 blocks
  // of 4-8 MiB replaced 50,000 times) made 165,800 calls, each a split or a merge of the mapping.
  auto settled = [&](size_t i) {
    return on ? thp_bit(a->thp_on, i) && !thp_bit(a->thp_unsure, i) : !thp_bit(a->thp_on, i);
  };
  for (size_t i = (lo - a->base) >> kThpShift; i < last;) {
    if (settled(i)) {
      ++i;
      continue;
    }
    size_t j = i + 1;
    while (j < last && !settled(j)) ++j;
    const long delta = thp_edges(a, i, j, on ? 1 : 0) - thp_edges(a, i, j, -1);
    if (on && delta > 0 &&
        g_thp_edges.load(std::memory_order_relaxed) + 2 * g_guards.load(std::memory_order_relaxed) +
                g_commit_edges.load(std::memory_order_relaxed) + delta >
            thp_edge_limit()) {
      g_counters.thp_capped.fetch_add(1, std::memory_order_relaxed);
      i = j;
      continue;
    }
    void* p = reinterpret_cast<void*>(a->base + (i << kThpShift));
    const size_t len = (j - i) << kThpShift;
    const bool done = on ? os::huge_hint(p, len) : os::huge_unhint(p, len);
    g_counters.thp_calls.fetch_add(1, std::memory_order_relaxed);
    g_thp_edges.fetch_add(delta, std::memory_order_relaxed);
    for (; i < j; ++i) {
      thp_put(a->thp_on, i, on || !done);
      thp_put(a->thp_unsure, i, !done);
    }
  }
}

void arena_thp_unsure(unsigned index, uintptr_t lo, uintptr_t hi) noexcept {
  Arena* a = g_arenas[index];
  const size_t i0 = (lo - a->base) >> kThpShift, j0 = (hi - a->base) >> kThpShift;
  if (j0 > i0) g_thp_edges.fetch_add(thp_edges(a, i0, j0, 1) - thp_edges(a, i0, j0, -1), std::memory_order_relaxed);
  for (size_t i = i0; i < j0; ++i) {
    thp_put(a->thp_on, i, true);
    thp_put(a->thp_unsure, i, true);
  }
}

long arena_thp_edges() noexcept { return g_thp_edges.load(std::memory_order_relaxed); }
long arena_commit_edges() noexcept { return g_commit_edges.load(std::memory_order_relaxed); }

bool arena_guard_on(void* p, bool capped) noexcept {
  // (Threads may pass the check together: the cap may be passed by a guard per thread.)
  if (capped && g_thp_edges.load(std::memory_order_relaxed) + g_commit_edges.load(std::memory_order_relaxed) +
                        2 * (g_guards.load(std::memory_order_relaxed) + 1) > 2 * thp_edge_limit())
    return false;
  if (!os::protect(p, kSliceSize, false)) return false;
  g_guards.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void arena_guard_off(void* p) noexcept {
  os::protect(p, kSliceSize, true);
  g_guards.fetch_sub(1, std::memory_order_relaxed);
}

void arena_set_thp_edge_limit(long limit) noexcept {
  g_thp_edge_limit.store(limit, std::memory_order_relaxed);
}

size_t arena_free_resident() noexcept { return __atomic_load_n(&g_free_dirty, __ATOMIC_RELAXED); }

void arena_note_growing(Segment* s, size_t chunks) noexcept {
  LockGuard guard(g_arena_lock);
  Arena* a = g_arenas[s->arena_index];
  mark_growing(a, static_cast<unsigned>((reinterpret_cast<uintptr_t>(s) - a->base) >> kSegmentShift), chunks);
}

void arena_free_tail(Segment* s, size_t keep, size_t chunks) noexcept {
  auto sb = reinterpret_cast<uintptr_t>(s);
  segmap_clear(reinterpret_cast<void*>(sb + keep * kSegmentSize), chunks - keep);
  if (s->solo) {
    size_t bytes = (chunks - keep) * kSegmentSize;
    os::release(reinterpret_cast<void*>(sb + keep * kSegmentSize), bytes);
    g_counters.reserved.fetch_sub(bytes, std::memory_order_relaxed);
    return;
  }
  LockGuard guard(g_arena_lock);
  Arena* a = g_arenas[s->arena_index];
  unsigned first = static_cast<unsigned>((sb - a->base) >> kSegmentShift);
  for (size_t i = keep; i < chunks; ++i) {
    chunk_set_used(a, first + static_cast<unsigned>(i), false);
    set_dirty(a, first + static_cast<unsigned>(i), 0);
  }
  release_clean(a, first + static_cast<unsigned>(keep), chunks - keep);
  a->free_count += static_cast<uint32_t>(chunks - keep);
}

void arena_free_unused(const ChunkGrant& g, size_t chunks) noexcept {
  size_t bytes = chunks * kSegmentSize;
  if (g.solo) {
    os::release(g.base, bytes);
    g_counters.reserved.fetch_sub(bytes, std::memory_order_relaxed);
    return;
  }
  // Whatever was resident goes back to the OS now, so the chunks return clean.
  if (g.dirty_bytes != 0) {
    os::purge(g.base, bytes);
    budget_release(g.dirty_bytes);
    g_counters.purged.fetch_add(g.dirty_bytes, std::memory_order_relaxed);
  }
  LockGuard guard(g_arena_lock);
  Arena* a = g_arenas[g.arena_index];
  unsigned first = static_cast<unsigned>((reinterpret_cast<uintptr_t>(g.base) - a->base) >> kSegmentShift);
  if (g.guarded) a->guarded[first / 64] |= uint64_t{1} << (first % 64);  // still inaccessible
  for (size_t i = 0; i < chunks; ++i) {
    chunk_set_used(a, first + static_cast<unsigned>(i), false);
    set_dirty(a, first + static_cast<unsigned>(i), 0);
  }
  release_clean(a, first, chunks);
  a->free_count += static_cast<uint32_t>(chunks);
}

void arena_purge(bool force) noexcept {
  uint64_t now = os::clock_ms();
  PurgeBatch batch;
  {
    LockGuard guard(g_arena_lock);
    if (!force && (g_next_purge_ms == 0 || now < g_next_purge_ms)) return;
    if (force) g_phase = PhaseEnd{};  // the program asked for its memory back: no hold
    purge_expired(now, force, batch);
  }
  purge_finish(batch);
}

bool arena_purge_try(uint64_t now) noexcept {
  const uint64_t next = __atomic_load_n(&g_next_purge_ms, __ATOMIC_RELAXED);
  if (next == 0 || now < next || !g_arena_lock.try_lock()) return false;
  PurgeBatch batch;
  if (g_next_purge_ms != 0 && now >= g_next_purge_ms) purge_expired(now, false, batch);
  g_arena_lock.unlock();
  purge_finish(batch);
  return true;
}

uint64_t arena_next_purge_ms() noexcept { return __atomic_load_n(&g_next_purge_ms, __ATOMIC_RELAXED); }

void arena_walk_segments(void (*fn)(Segment*, void*), void* ctx) noexcept {
  LockGuard guard(g_arena_lock);
  unsigned count = g_arena_count.load(std::memory_order_relaxed);
  for (unsigned k = 0; k < count; ++k) {
    Arena* a = g_arenas[k];
    for (unsigned i = 0; i < a->chunks;) {
      if (!chunk_used(a, i) || chunk_purging(a, i)) {
        ++i;
        continue;
      }
      auto* s = reinterpret_cast<Segment*>(a->base + static_cast<uintptr_t>(i) * kSegmentSize);
      uint32_t chunks = __atomic_load_n(&s->chunk_count, __ATOMIC_RELAXED);
      fn(s, ctx);
      i += chunks == 0 ? 1 : chunks;
    }
  }
}

bool arena_contains(uintptr_t addr) noexcept {
  unsigned count = g_arena_count.load(std::memory_order_acquire);
  for (unsigned k = 0; k < count; ++k) {
    const Arena* a = g_arenas[k];
    if (addr >= a->base && addr < a->base + static_cast<uintptr_t>(a->chunks) * kSegmentSize) return true;
  }
  return false;
}

uint32_t arena_no_run(unsigned index) noexcept {
  LockGuard guard(g_arena_lock);
  return index < g_arena_count.load(std::memory_order_relaxed) ? g_arenas[index]->no_run : UINT32_MAX;
}

int arena_find_run_in(const uint64_t* used, const uint64_t* dirty, unsigned chunks, unsigned n, unsigned last) noexcept {
  // (Mapped for the call: a static one in .bss would sit among the globals every process writes.)
  const size_t size = align_up(sizeof(Arena), os::page_size());
  auto* a = static_cast<Arena*>(os::reserve(size, os::page_size()));
  if (a == nullptr) return -2;
  a->chunks = chunks;
  a->no_run = UINT32_MAX;
  for (unsigned i = 0; i < chunks; ++i) {
    if ((used[i / 64] >> (i % 64)) & 1) a->used[i / 64] |= uint64_t{1} << (i % 64);
    else ++a->free_count;
    set_dirty(a, i, dirty[i]);
  }
  const int at = find_run(a, n, false, last);
  os::release(a, size);
  return at;
}

int arena_thp_state(unsigned index, uintptr_t addr) noexcept {
  const Arena* a = g_arenas[index];
  const size_t i = (addr - a->base) >> kThpShift;
  return !thp_bit(a->thp_on, i) ? 0 : thp_bit(a->thp_unsure, i) ? 2 : 1;
}

bool arena_lists_check() noexcept {
  LockGuard guard(g_arena_lock);
  const unsigned count = g_arena_count.load(std::memory_order_relaxed);
  for (unsigned k = 0; k < count; ++k) {
    const Arena* a = g_arenas[k];
    uint64_t any = 0;
    for (unsigned r = 0; r < 64; ++r)
      for (unsigned w = 0; w < kArenaChunks / 64; ++w)
        if (a->by_resident[r][w] != 0) any |= uint64_t{1} << r;
    if (any != a->resident_any) return false;
    for (unsigned i = 0; i < kArenaChunks; ++i) {
      const uint64_t d = i < a->chunks ? a->dirty_mask[i] : 0;
      const unsigned want = d != 0 && !chunk_used(a, i) ? static_cast<unsigned>(popcount64(d)) : 0;
      if (a->listed[i] != want) return false;
      for (unsigned r = 0; r < 64; ++r)
        if (((a->by_resident[r][i / 64] >> (i % 64)) & 1) != (want == r + 1)) return false;
    }
  }
  return true;
}

bool arena_purge_oldest() noexcept {
  PurgeBatch batch;
  bool done;
  {
    LockGuard guard(g_arena_lock);
    done = purge_oldest(batch);
  }
  purge_finish(batch);
  return done;
}

void arenas_fork_prepare() noexcept { g_arena_lock.lock(); }
void arenas_fork_parent() noexcept { g_arena_lock.unlock(); }
// In the child, a purge that another thread had under way when the process forked never
// finishes: its chunks go back free with the slices they may still hold (the budget still counts
// them).
void arenas_fork_child() noexcept {
  g_arena_lock.reset();
  const unsigned count = g_arena_count.load(std::memory_order_relaxed);
  for (unsigned k = 0; k < count; ++k) {
    Arena* a = g_arenas[k];
    for (unsigned w = 0; w < kArenaChunks / 64; ++w) {
      for (uint64_t bits = a->purging[w]; bits != 0; bits &= bits - 1) {
        const unsigned i = w * 64 + ctz64(bits);
        chunk_set_used(a, i, false);
        relist(a, i);
        a->free_count++;
        g_free_dirty += static_cast<size_t>(popcount64(a->dirty_mask[i])) << kSliceShift;
        if (a->freed_at_ms[i] < a->oldest_ms) a->oldest_ms = a->freed_at_ms[i];
        if (g_next_purge_ms == 0 || a->freed_at_ms[i] < g_next_purge_ms) g_next_purge_ms = a->freed_at_ms[i];
      }
      a->purging[w] = 0;
    }
  }
  g_purging = 0;
}

}  // namespace nebula
