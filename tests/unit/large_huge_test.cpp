// tests/unit/large_huge_test.cpp: large blocks (a span of their own, 128 KiB .. 2 MiB), huge
// blocks (a segment of their own, > 2 MiB), aligned allocation, calloc on reused memory,
// realloc across tiers, and the accounting of huge blocks.
#include <cerrno>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "core/budget.hpp"
#include "core/options.hpp"
#include "support.hpp"

using namespace nebula;
using namespace unit;

TEST_CASE("large: sizes up to kLargeMax get a span of whole slices") {
  settle();
  for (size_t n : {kMediumMax + 1, size_t{150000}, size_t{300000}, size_t{1} << 20, kLargeMax - 100, kLargeMax}) {
    CAPTURE(n);
    auto* p = static_cast<uint8_t*>(alloc(n));
    REQUIRE(p != nullptr);
    Page* page = page_of_ptr(p);
    CHECK(page->kind == PageKind::kLarge);
    CHECK(page_start(segment_of(p), page) == p);
    CHECK(reinterpret_cast<uintptr_t>(p) % kSliceSize == 0);
    size_t slices = (n + kSliceSize - 1) / kSliceSize;
    CHECK(page->slice_count == slices);
    CHECK(usable_size(p) == slices * kSliceSize);
    CHECK(nebula_usable_size(p + 1000) == slices * kSliceSize - 1000);  // interior pointer
    fill_edges(p, usable_size(p), n);
    CHECK(check_edges(p, usable_size(p), n));
    dealloc(p);
    CHECK(page->kind == PageKind::kNone);  // the span went back to the segment
  }
}

TEST_CASE("huge: sizes above kLargeMax get a segment of their own") {
  settle();
  const size_t live0 = huge_live_now();
  for (size_t n : {kLargeMax + 1, size_t{5} << 20, (size_t{17} << 20) + 3}) {
    CAPTURE(n);
    auto* p = static_cast<uint8_t*>(alloc(n));
    REQUIRE(p != nullptr);
    Segment* s = segment_containing(p);
    REQUIRE(s != nullptr);
    CHECK(s->kind == SegmentKind::kHuge);
    CHECK(s->huge_start == reinterpret_cast<uintptr_t>(p));
    CHECK(reinterpret_cast<uintptr_t>(p) % kSliceSize == 0);
    CHECK(usable_size(p) >= n);
    CHECK(usable_size(p) < n + kSegmentSize + kSliceSize);
    CHECK(huge_live_now() - live0 >= n);
    fill_edges(p, n, n, 4096);
    CHECK(check_edges(p, n, n, 4096));
    dealloc(p);
    CHECK(huge_live_now() == live0);
  }
}

TEST_CASE("aligned: alignments from 32 bytes to 1 MiB") {
  settle();
  std::vector<std::pair<uint8_t*, size_t>> live;
  int bad = 0;
  for (size_t align = 32; align <= (size_t{1} << 20); align *= 2) {
    for (size_t n : {size_t{1}, size_t{24}, align - 1, align, align + 1, 3 * align, size_t{100000}, size_t{700000}}) {
      auto* p = static_cast<uint8_t*>(alloc_aligned(align, n));
      if (p == nullptr || reinterpret_cast<uintptr_t>(p) % align != 0 || usable_size(p) < n || !owns(p)) {
        if (++bad <= 8) FAIL_CHECK("align=" << align << " n=" << n << " p=" << static_cast<void*>(p));
        continue;
      }
      p[n - 1] = 0xa5;
      p[0] = 0x5a;
      live.push_back({p, n});
    }
  }
  CHECK(bad == 0);
  // Non-power-of-two alignments round up.
  for (size_t align : {size_t{48}, size_t{96}, size_t{3000}, size_t{100000}}) {
    void* p = alloc_aligned(align, 10);
    REQUIRE(p != nullptr);
    size_t pow2 = 1;
    while (pow2 < align) pow2 *= 2;
    CHECK(reinterpret_cast<uintptr_t>(p) % pow2 == 0);
    dealloc(p);
  }
  // Nothing was overwritten, and aligned blocks do not overlap.
  std::sort(live.begin(), live.end());
  for (size_t i = 0; i < live.size(); ++i) {
    CHECK(live[i].first[0] == 0x5a);
    if (live[i].second > 1) CHECK(live[i].first[live[i].second - 1] == 0xa5);
    if (i > 0) CHECK(live[i - 1].first + live[i - 1].second <= live[i].first);
  }
  for (auto& b : live) dealloc(b.first);
  CHECK(check_heap_invariants(t_heap) == 0);
}

TEST_CASE("aligned: 2, 4, 8 and 16 MiB alignments (huge path)") {
  settle();
  const size_t live0 = huge_live_now();
  for (size_t align : {size_t{2} << 20, size_t{4} << 20, size_t{8} << 20, size_t{16} << 20}) {
    for (size_t n : {size_t{1}, size_t{3} << 20, size_t{10} << 20}) {
      CAPTURE(align);
      CAPTURE(n);
      auto* p = static_cast<uint8_t*>(alloc_aligned(align, n));
      REQUIRE(p != nullptr);
      CHECK(reinterpret_cast<uintptr_t>(p) % align == 0);
      Segment* s = segment_containing(p);
      REQUIRE(s != nullptr);
      if (n <= kLargeMax && align <= kLargeAlignMax) {  // a large span at slice 32 (test below)
        CHECK(s->kind == SegmentKind::kNormal);
        CHECK(page_of(s, p)->kind == PageKind::kLarge);
        dealloc(p);
        continue;
      }
      CHECK(s->kind == SegmentKind::kHuge);
      CHECK(s->huge_start == reinterpret_cast<uintptr_t>(p));
      CHECK(usable_size(p) >= n);
      CHECK(owns(p + n - 1));
      p[0] = 1;
      p[n - 1] = 2;
      dealloc(p);
    }
  }
  // Every block was freed (see also the huge_live test below).
  CHECK(huge_live_now() == live0);
  void* out = nullptr;
  CHECK(nebula_posix_memalign(&out, size_t{8} << 20, 100) == 0);
  CHECK(reinterpret_cast<uintptr_t>(out) % (size_t{8} << 20) == 0);
  nebula_free(out);
}

// A block of up to 2 MiB aligned to 128 KiB-2 MiB is a large span that starts at an aligned
// slice of a segment (segments are 4 MiB aligned): it takes and counts its own slices only, and
// the slices before it serve other pages. Before, the span was padded by the alignment (up to
// 31 slices counted and never used) and 2 MiB alignments took a huge block with a 2 MiB gap:
// 200 blocks of 100 KB at 2 MiB counted 425 MiB against the budget for 5 MiB resident.
TEST_CASE("aligned: blocks up to 2 MiB aligned up to 2 MiB take only their own slices") {
  settle();
  for (size_t align : {size_t{128} << 10, size_t{1} << 20, size_t{2} << 20}) {
    CAPTURE(align);
    const size_t committed0 = committed_now();
    const unsigned step = static_cast<unsigned>(align >> kSliceShift);
    std::vector<uint8_t*> v;
    std::set<Segment*> segs;
    for (int i = 0; i < 40; ++i) {
      auto* p = static_cast<uint8_t*>(alloc_aligned(align, 100000));
      REQUIRE(p != nullptr);
      CHECK(reinterpret_cast<uintptr_t>(p) % align == 0);
      Segment* s = segment_of(p);
      Page* pg = page_of(s, p);
      CHECK(s->kind == SegmentKind::kNormal);
      CHECK(pg->kind == PageKind::kLarge);
      CHECK(pg->slice_count == 2);  // 100,000 bytes: two slices, no padding
      CHECK(static_cast<unsigned>(pg - s->pages) % step == 0);
      CHECK(page_start(s, pg) == p);
      CHECK(usable_size(p) >= 100000);
      memset(p, i, 100000);
      v.push_back(p);
      segs.insert(s);
    }
    // Every aligned slice of a segment is used before a new segment is taken.
    const size_t per_segment = (kSlicesPerSegment - 1) / step;
    CHECK(segs.size() <= (40 + per_segment - 1) / per_segment + 1);
    // Counted: the blocks' slices and the segments' headers, nothing for alignment.
    CHECK(committed_now() <= committed0 + 40 * 2 * kSliceSize + segs.size() * kSliceSize);
    // The slices before an aligned block serve small pages.
    void* small = alloc(64);
    CHECK(segs.count(segment_of(small)) == 1);
    dealloc(small);
    for (size_t i = 0; i < v.size(); ++i) {
      CHECK(v[i][99999] == static_cast<uint8_t>(i));
      dealloc(v[i]);
    }
    CHECK(check_heap_invariants(t_heap) == 0);
    settle();
  }
}

// The aligned search reads first the segments whose longest free run surely holds an aligned
// slot, then a bounded number of those whose shorter runs may: a 2 MiB-aligned slot freed
// between two blocks (a free run of 2 slices, far below the 33 that make it sure) is found
// there, not in a new segment.
TEST_CASE("aligned: a freed aligned slot between blocks is reused") {
  Worker w;
  w.run([] {
    trim(0);
    const size_t align = size_t{2} << 20;
    void* a = alloc_aligned(align, 100000);
    REQUIRE(a != nullptr);
    Segment* s = segment_of(a);
    REQUIRE(page_of(s, a) - s->pages == 32);
    void* left = alloc(size_t{31} * kSliceSize - 4096);  // slices 1..31
    void* right = alloc(size_t{30} * kSliceSize - 4096); // slices 34..63
    REQUIRE(segment_of(left) == s);
    REQUIRE(segment_of(right) == s);
    REQUIRE(s->free_slices == 0);
    dealloc(a);
    REQUIRE(s->bin[1] == 2);
    void* b = alloc_aligned(align, 100000);
    CHECK(b == a);
    // The slot is taken again: the next aligned block needs a segment of its own.
    void* c = alloc_aligned(align, 100000);
    CHECK(segment_of(c) != s);
    CHECK(reinterpret_cast<uintptr_t>(c) % align == 0);
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* p : {b, c, left, right}) dealloc(p);
  });
}

TEST_CASE("calloc: blocks are zero even when they reuse dirty memory") {
  settle();
  for (size_t n : {size_t{24}, size_t{1000}, size_t{5000}, size_t{100000}, size_t{300000}, size_t{3} << 20}) {
    CAPTURE(n);
    // Enough blocks to fill two pages of the class (or a few large/huge blocks).
    size_t count = n <= kMediumMax ? 2 * (static_cast<size_t>(page_slices_for_class(size_to_class(n))) * kSliceSize /
                                          kClassSize[size_to_class(n)])
                                   : 4;
    std::vector<void*> dirty;
    for (size_t i = 0; i < count; ++i) {
      void* p = nebula_malloc(n);
      REQUIRE(p != nullptr);
      memset(p, 0xAB, n);
      dirty.push_back(p);
    }
    std::set<void*> dirty_set(dirty.begin(), dirty.end());
    for (void* p : dirty) nebula_free(p);
    std::vector<void*> zeroed;
    size_t reused = 0;
    int nonzero = 0;
    for (size_t i = 0; i < count; ++i) {
      void* p = nebula_calloc(1, n);
      REQUIRE(p != nullptr);
      if (!all_zero(p, n)) ++nonzero;
      if (dirty_set.count(p)) ++reused;
      memset(p, 0xCD, n);  // dirty again for the next round
      zeroed.push_back(p);
    }
    CHECK(nonzero == 0);
    CHECK(reused > 0);  // the test really exercised reused memory
    for (void* p : zeroed) nebula_free(p);
  }
  // calloc of count * size with both > 1.
  auto* q = static_cast<uint32_t*>(nebula_calloc(1000, sizeof(uint32_t)));
  REQUIRE(q != nullptr);
  CHECK(all_zero(q, 4000));
  nebula_free(q);
}

// A big calloc on memory a freed block left resident zeroes it by purging it, and asks for no
// transparent huge pages: a table the program fills sparsely becomes resident only where
// written (memset made every page resident, and a huge page made 2 MiB resident per touch).
TEST_CASE("calloc: a big block on reused resident memory is zeroed by purging, without huge pages") {
  settle();
  const size_t n = size_t{24} << 20;
  auto resident_pages = [](const void* p, size_t len) {
    std::vector<unsigned char> v(len / 4096);
    REQUIRE(mincore(const_cast<void*>(p), len, v.data()) == 0);
    size_t c = 0;
    for (unsigned char x : v) c += x & 1;
    return c;
  };
  auto* p = static_cast<uint8_t*>(nebula_malloc(n));
  REQUIRE(p != nullptr);
  memset(p, 0xAB, n);
  CHECK(resident_pages(p, n) == n / 4096);
  nebula_free(p);  // its chunks stay resident in the arena (within `retain`)
  auto* q = static_cast<uint8_t*>(nebula_calloc(1, n));
  REQUIRE(q != nullptr);
  REQUIRE(q == p);  // the most resident free run: the same chunks
  CHECK(resident_pages(q, n) <= 16);
  size_t nonzero = 0;
  for (size_t off = 0; off < n; off += 1 << 20) nonzero += q[off] != 0 || q[off + 4095] != 0;
  CHECK(nonzero == 0);
  CHECK(resident_pages(q, n) <= 16 + 24);  // one OS page per MiB touched, not a 2 MiB page
  CHECK(all_zero(q, n));
  nebula_free(q);
}

// New blocks carved from a span that held other blocks before (resident, not purged) are not
// zero: page_extend marks them like freed blocks, and calloc clears them.
TEST_CASE("calloc: new blocks carved from reused resident slices are zero") {
  Worker w;
  w.run([] {
    const size_t per_page = kSliceSize / 64;
    std::vector<void*> old;
    for (size_t i = 0; i < 2 * per_page; ++i) {
      void* p = nebula_malloc(64);
      REQUIRE(p != nullptr);
      memset(p, 0xAB, 64);
      old.push_back(p);
    }
    Page* first = page_of(segment_of(old.front()), old.front());
    Page* second = page_of(segment_of(old.back()), old.back());
    REQUIRE(first != second);
    uintptr_t lo = reinterpret_cast<uintptr_t>(page_start(segment_of(old.front()), first));
    for (void* p : old) nebula_free(p);  // one page goes back to its segment, resident
    size_t from_old = 0;
    int nonzero = 0;
    std::vector<void*> fresh;
    for (size_t i = 0; i < per_page; ++i) {  // another class: a new page on the freed slices
      void* p = nebula_calloc(1, 48);
      REQUIRE(p != nullptr);
      if (!all_zero(p, 48)) ++nonzero;
      uintptr_t a = reinterpret_cast<uintptr_t>(p);
      if (a >= lo && a < lo + kSliceSize) ++from_old;
      fresh.push_back(p);
    }
    CHECK(nonzero == 0);
    CHECK(from_old > 0);  // the test really carved blocks from the used slices
    for (void* p : fresh) nebula_free(p);
  });
}

// realloc_block's fast path settles a large or a huge block that holds the new size without
// wasting half of it; past its usable size, or below half of it, the block grows, moves or
// shrinks on the slow path. Either way the usable size covers the request and the bytes stay.
TEST_CASE("realloc: a large or huge block stays in place while it holds the new size, and not past it") {
  settle();
  for (size_t size : {size_t{300} << 10, size_t{5} << 20}) {
    CAPTURE(size);
    auto* p = static_cast<uint8_t*>(nebula_malloc(size));
    REQUIRE(p != nullptr);
    fill(p, size, 31);
    const size_t have = nebula_usable_size(p);
    REQUIRE(have >= size);
    CHECK(nebula_realloc(p, have) == p);
    CHECK(nebula_realloc(p, have / 2 + 1) == p);
    CHECK(nebula_usable_size(p) == have);
    CHECK(check_fill(p, size, 31));
    auto* q = static_cast<uint8_t*>(nebula_realloc(p, have + 1));
    REQUIRE(q != nullptr);
    CHECK(nebula_usable_size(q) >= have + 1);
    CHECK(check_fill(q, size, 31));
    auto* r = static_cast<uint8_t*>(nebula_realloc(q, have / 4));
    REQUIRE(r != nullptr);
    CHECK(nebula_usable_size(r) >= have / 4);
    CHECK(nebula_usable_size(r) < have);  // given back, not kept whole
    CHECK(check_fill(r, have / 4, 31));
    nebula_free(r);
  }
  CHECK(check_heap_invariants(t_heap) == 0);
}

// The bytes of [from, from + len) in resident OS pages.
static size_t resident_bytes(uintptr_t from, size_t len) {
  std::vector<unsigned char> v(len / 4096);
  REQUIRE(mincore(reinterpret_cast<void*>(from), len, v.data()) == 0);
  size_t n = 0;
  for (unsigned char c : v) n += c & 1;
  return n * 4096;
}

TEST_CASE("realloc: a block grown into a reused medium or large block gives back the pages past its bytes") {
  settle();
  // {size of the blocks written whole and freed, size of the growing block, size it grows to}:
  // a medium class of 80 KiB (64 KiB + 100 bytes leave 3 OS pages behind) and a large block of
  // 5 slices (300 KiB + 100 bytes leave 4).
  struct Case { size_t filled, from, to; };
  for (Case c : {Case{80 << 10, 60 << 10, (64 << 10) + 100}, Case{1 << 20, 100 << 10, (300 << 10) + 100}}) {
    CAPTURE(c.to);
    std::vector<uint8_t*> freed;
    for (int i = 0; i < 24; ++i) {  // whole pages of the class (or 24 MiB of slices), written
      auto* b = static_cast<uint8_t*>(nebula_malloc(c.filled));
      REQUIRE(b != nullptr);
      memset(b, 0x5A, c.filled);
      freed.push_back(b);
    }
    auto* q = static_cast<uint8_t*>(nebula_malloc(c.from));
    REQUIRE(q != nullptr);
    fill(q, c.from, 41);
    void* keep = freed.back();  // keeps the medium page alive
    freed.pop_back();
    for (uint8_t* b : freed) nebula_free(b);
    auto* r = static_cast<uint8_t*>(nebula_realloc(q, c.to));
    REQUIRE(r != nullptr);
    REQUIRE(r != q);
    // The new block lies in memory the freed blocks wrote (the test's premise).
    const bool reused = std::any_of(freed.begin(), freed.end(), [&](uint8_t* b) { return r >= b && r < b + c.filled; });
    REQUIRE(reused);
    CHECK(check_fill(r, c.from, 41));
    const size_t have = nebula_usable_size(r);
    const uintptr_t tail = (reinterpret_cast<uintptr_t>(r) + c.to + 4095) & ~uintptr_t{4095};
    const size_t tail_len = (reinterpret_cast<uintptr_t>(r) + have - tail) & ~size_t{4095};
    REQUIRE(tail_len >= kTailTrimMin);
    CHECK(resident_bytes(tail, tail_len) == 0);
    // Past the n bytes the block is still the caller's, to its usable size.
    memset(r + c.from, 0x77, have - c.from);
    CHECK(check_fill(r, c.from, 41));
    CHECK(r[have - 1] == 0x77);
    nebula_free(r);
    nebula_free(keep);
  }
  CHECK(check_heap_invariants(t_heap) == 0);
}

// Writes the large block p (n bytes) whole, grows it by realloc into a huge block of 3 MiB and
// checks that the contents moved along; the huge block.
static void* grow_into_huge(uint8_t* p, size_t n, int seed) {
  REQUIRE(page_of_ptr(p)->kind == PageKind::kLarge);
  fill(p, n, seed);
  auto* q = static_cast<uint8_t*>(nebula_realloc(p, 3 << 20));
  REQUIRE(q != nullptr);
  REQUIRE(segment_of(q)->kind == SegmentKind::kHuge);
  CHECK(check_fill(q, n, seed));
  CHECK(check_heap_invariants(t_heap) == 0);
  return q;
}

TEST_CASE("realloc: a large block grown into a huge one gives its pages back, unless its heap did so within a purge delay") {
  settle();
  t_heap->grow_move_ms = 0;
  const size_t from = 1536 << 10;
  // True when the old block's pages went back.
  auto grow = [&](int seed, void** out) {
    auto* p = static_cast<uint8_t*>(nebula_malloc(from));
    REQUIRE(p != nullptr);
    const size_t purged = g_counters.purged.load();
    *out = grow_into_huge(p, from, seed);
    const bool back = resident_bytes(reinterpret_cast<uintptr_t>(p), from) == 0;
    CHECK(back == (g_counters.purged.load() >= purged + from));
    return back;
  };
  void *a = nullptr, *b = nullptr;
  CHECK(grow(11, &a));
  // Within a purge delay of the first, the old block stays resident for the heap's next one (a
  // program that grows such buffers one after another).
  CHECK(grow(12, &b) == (option(Option::kPurgeDelay) == 0));
  CHECK(check_fill(static_cast<uint8_t*>(a), from, 11));
  nebula_free(a);
  nebula_free(b);
  CHECK(check_heap_invariants(t_heap) == 0);
}

TEST_CASE("realloc: a large block alone in its segment, grown into a huge one, leaves the segment's chunk clean") {
  settle();
  t_heap->grow_move_ms = 0;
  // Blocks of 31 slices: two fill a segment, so the third starts one of its own.
  const size_t big = 31 * kSliceSize - 4096;
  std::vector<void*> keep;
  uint8_t* p = nullptr;
  for (int i = 0; i < 8 && p == nullptr; ++i) {
    auto* b = static_cast<uint8_t*>(nebula_malloc(big));
    REQUIRE(b != nullptr);
    if (segment_of(b)->used_spans == 1) p = b;
    else keep.push_back(b);
  }
  REQUIRE(p != nullptr);
  Segment* s = segment_of(p);
  const size_t segments = g_counters.segments.load();
  void* q = grow_into_huge(p, big, 21);
  CHECK(g_counters.segments.load() == segments - 1);  // the segment went back with the block
  CHECK(resident_bytes(reinterpret_cast<uintptr_t>(s) + kSliceSize, 31 * kSliceSize) == 0);
  nebula_free(q);
  for (void* b : keep) nebula_free(b);
  CHECK(check_heap_invariants(t_heap) == 0);
}

TEST_CASE("realloc: contents survive moves across small, medium, large and huge tiers") {
  settle();
  const size_t steps[] = {10,      100,     1000,          10000,  100000, 500000, 1500000, 3u << 20,
                          9u << 20, 2500000, 700000, 50000, 500,    20,     1};
  auto* p = static_cast<uint8_t*>(nebula_malloc(steps[0]));
  REQUIRE(p != nullptr);
  fill(p, steps[0], 77);
  size_t have = steps[0];
  for (size_t k = 1; k < sizeof steps / sizeof steps[0]; ++k) {
    size_t n = steps[k];
    CAPTURE(n);
    auto* q = static_cast<uint8_t*>(nebula_realloc(p, n));
    REQUIRE(q != nullptr);
    CHECK(check_fill(q, have < n ? have : n, 77));
    CHECK(nebula_usable_size(q) >= n);
    fill(q, n, 77);
    p = q;
    have = n;
  }
  // Growing within the usable size keeps the block.
  void* r = nebula_malloc(100);
  size_t u = nebula_usable_size(r);
  CHECK(nebula_realloc(r, u) == r);
  nebula_free(r);
  nebula_free(p);
  CHECK(check_heap_invariants(t_heap) == 0);
}

TEST_CASE("huge: freeing gives back huge_live at once and committed bytes after a purge") {
  settle();
  const size_t live0 = huge_live_now();
  const size_t committed0 = committed_now();
  const size_t n = size_t{5} << 20;
  const size_t used_len = align_up(kSliceSize + n, kSliceSize);
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  memset(p, 1, n);
  CHECK(huge_live_now() == live0 + used_len);
  CHECK(committed_now() == committed0 + used_len);
  dealloc(p);
  CHECK(huge_live_now() == live0);
  trim(0);
  CHECK(committed_now() == committed0);

  // A block big enough for its own mapping (not an arena run) gives everything back at once.
  const size_t big = size_t{300} << 20;
  size_t reserved0 = g_counters.reserved.load();
  auto* b = static_cast<uint8_t*>(alloc(big));
  REQUIRE(b != nullptr);
  CHECK(segment_of(b)->solo == 1);
  b[0] = 1;
  b[big - 1] = 1;
  CHECK(huge_live_now() - live0 >= big);
  CHECK(committed_now() >= committed0 + big);
  dealloc(b);
  CHECK(huge_live_now() == live0);
  CHECK(committed_now() == committed0);
  CHECK(g_counters.reserved.load() == reserved0);
}

// A huge block that lands on chunks a bigger huge block left dirty: huge_alloc adds used_len to
// huge_live but records dirty_len (which also covers the stale dirty tail) in huge_len, and
// huge_free subtracts huge_len.
TEST_CASE("huge: huge_live returns to its value when a huge block reuses dirty chunks") {
  settle();
  const size_t live0 = huge_live_now();
  const size_t committed0 = committed_now();
  // Two chunks, all of them dirty once freed.
  auto* a = static_cast<uint8_t*>(alloc(2 * kSegmentSize - kSliceSize));
  REQUIRE(a != nullptr);
  Segment* sa = segment_of(a);
  dealloc(a);
  CHECK(huge_live_now() == live0);
  // A smaller huge block of two chunks takes the same run (first fit), which is still dirty.
  const size_t n = size_t{5} << 20;
  auto* b = static_cast<uint8_t*>(alloc(n));
  REQUIRE(b != nullptr);
  CHECK(segment_of(b) == sa);
  CHECK(huge_live_now() == live0 + align_up(kSliceSize + n, kSliceSize));
  dealloc(b);
  CHECK(huge_live_now() == live0);
  settle();
  CHECK(committed_now() == committed0);  // the committed count, by contrast, stays exact
}

// include/nebula/mem.h: segments counts the segments of small, medium and large pages (not
// huge blocks); huge_bytes the bytes of live huge blocks; live_bytes includes both.
TEST_CASE("stats: segments, huge_bytes and live_bytes") {
  settle();
  nebula_mem_stats st0 = stats();
  void* h = nebula_malloc(size_t{5} << 20);
  REQUIRE(h != nullptr);
  nebula_mem_stats st1 = stats();
  CHECK(st1.segments == st0.segments);
  CHECK(st1.huge_bytes == st0.huge_bytes + align_up(kSliceSize + (size_t{5} << 20), kSliceSize));
  CHECK(st1.live_bytes - st0.live_bytes == st1.huge_bytes - st0.huge_bytes);
  std::vector<void*> v;
  for (int i = 0; i < 1000; ++i) v.push_back(nebula_malloc(100));
  void* large = nebula_malloc(300000);
  nebula_mem_stats st2 = stats();
  CHECK(st2.segments >= st0.segments + 1);
  CHECK(st2.live_bytes - st1.live_bytes == 1000 * kClassSize[size_to_class(100)] + 5 * kSliceSize);
  for (void* p : v) nebula_free(p);
  nebula_free(large);
  nebula_free(h);
  settle();
  nebula_mem_stats st3 = stats();
  CHECK(st3.segments == st0.segments);
  CHECK(st3.huge_bytes == st0.huge_bytes);
  CHECK(st3.live_bytes == st0.live_bytes);
}

// realloc grows a huge block in place: first into the slack of its last chunk, then into free
// chunks after its run; the contents stay, the pointer stays, and huge_live and the committed
// count follow the new size and come back exactly after the free and a purge.
TEST_CASE("huge: realloc grows in place into the run's slack and the free chunks after it") {
  settle();
  const size_t live0 = huge_live_now();
  const size_t committed0 = committed_now();
  const size_t n = size_t{9} << 20;  // 9 MiB + the header slice: three chunks, 3 MiB of slack
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  for (size_t i = 0; i < n; i += 4096) p[i] = static_cast<uint8_t>(i >> 12);
  Segment* s = segment_of(p);
  const uint32_t chunks0 = s->chunk_count;
  CHECK(chunks0 == 3);

  // Inside the slack: always in place.
  auto* q = static_cast<uint8_t*>(realloc_block(p, n + (size_t{2} << 20)));
  CHECK(q == p);
  CHECK(s->chunk_count == chunks0);
  CHECK(usable_size(q) >= n + (size_t{2} << 20));
  CHECK(huge_live_now() == live0 + align_up(kSliceSize + n + (size_t{2} << 20), kSliceSize));

  // Beyond the run: in place when the chunks after it are free. Take them if they are not
  // free now, so the outcome does not depend on what other tests left in the arena.
  const size_t m = size_t{30} << 20;
  bool next_free = false;
  {
    size_t db = 0, de = 0;
    next_free = arena_grow(s, chunks0, 6, &db, &de);
    if (next_free) {  // hand them back as they were: the real growth below takes them again
      arena_free_unused(ChunkGrant{reinterpret_cast<uint8_t*>(s) + chunks0 * kSegmentSize, 0, db == 0,
                                   s->arena_index, false, db, de}, 6);
    }
  }
  INFO("chunks after the run free: " << next_free);
  auto* r = static_cast<uint8_t*>(realloc_block(q, m));
  REQUIRE(r != nullptr);
  if (next_free) {
    CHECK(r == p);
    CHECK(segment_containing(r + m - 1) == s);
    CHECK(s->chunk_count == 8);
  }
  for (size_t i = 0; i < n; i += 4096) REQUIRE(r[i] == static_cast<uint8_t>(i >> 12));
  memset(r + n, 7, m - n);
  CHECK(usable_size(r) >= m);
  CHECK(huge_live_now() >= live0 + m);
  CHECK(committed_now() >= committed0 + m);
  dealloc(r);
  CHECK(huge_live_now() == live0);
  settle();
  CHECK(committed_now() == committed0);
}

TEST_CASE("realloc: a large block grows in place into the free slices after its span (owner only)") {
  settle();
  const size_t n = 200 * 1024;  // 4 slices
  std::vector<uint8_t*> blocks;
  uint8_t* open = nullptr;      // a block followed by at least 2 free slices
  uint8_t* closed = nullptr;    // a block followed by a slice in use
  for (int i = 0; i < 64 && (open == nullptr || closed == nullptr); ++i) {
    auto* p = static_cast<uint8_t*>(alloc(n));
    REQUIRE(p != nullptr);
    fill_edges(p, n, static_cast<uint64_t>(i));
    blocks.push_back(p);
  }
  for (uint8_t* p : blocks) {
    Segment* s = segment_of(p);
    Page* page = page_of_ptr(p);
    unsigned after = static_cast<unsigned>(page - s->pages) + page->slice_count;
    if (after + 2 > kSlicesPerSegment) continue;
    uint64_t next2 = (s->free_slices >> after) & 3;
    if (next2 == 3 && open == nullptr) open = p;
    if ((next2 & 1) == 0 && closed == nullptr) closed = p;
  }
  REQUIRE(open != nullptr);    // the newest segment's last block has free slices after it
  REQUIRE(closed != nullptr);  // 64 blocks of 4 slices fill at least one segment

  auto id_of = [&](const uint8_t* p) {
    return static_cast<uint64_t>(std::find(blocks.begin(), blocks.end(), p) - blocks.begin());
  };
  {  // in place: same address, one more slice taken from the segment, contents kept
    Segment* s = segment_of(open);
    Page* page = page_of_ptr(open);
    unsigned after = static_cast<unsigned>(page - s->pages) + page->slice_count;
    const uint64_t id = id_of(open);
    auto* q = static_cast<uint8_t*>(realloc_block(open, n + 100 * 1024));  // 5 slices
    CHECK(q == open);
    CHECK(page->slice_count == 5);
    CHECK(((s->free_slices >> after) & 1) == 0);
    CHECK(head_of(s, after) == page);
    CHECK(page_of_ptr(q + n + 90 * 1024) == page);
    CHECK(usable_size(q) == 5 * kSliceSize);
    CHECK(check_edges(q, n, id));
    memset(q + n, 0x5a, 100 * 1024);  // the new slice is usable
    // Another thread's realloc does not touch the owner's bitmaps: it moves the block.
    uint8_t* r = nullptr;
    std::thread([&] { r = static_cast<uint8_t*>(realloc_block(q, 6 * kSliceSize)); }).join();
    REQUIRE(r != nullptr);
    CHECK(r != q);
    CHECK(check_edges(r, n, id));
    CHECK(r[n + 100 * 1024 - 1] == 0x5a);
    blocks[id] = r;
    settle();  // the owner takes the other thread's free of its large block
    CHECK(((s->free_slices >> after) & 1) == 1);  // the grown span went back whole
  }
  {  // a slice in use after the span: the block moves, contents kept
    const uint64_t id = id_of(closed);
    auto* q = static_cast<uint8_t*>(realloc_block(closed, n + 100 * 1024));
    REQUIRE(q != nullptr);
    CHECK(q != closed);
    CHECK(check_edges(q, n, id));
    blocks[id] = q;
  }
  for (uint8_t* p : blocks) dealloc(p);
}

// A new segment keeps out of the free chunks right behind a huge block that realloc has grown,
// as many as the block has, while there is room elsewhere: they are where the block grows when
// the program keeps doubling it. The chunks behind it here are the most resident ones (a bigger
// block was freed there), which a segment would otherwise take first.
TEST_CASE("huge: new segments leave the chunks behind a growing huge block for it to double into") {
  settle();  // every free chunk clean: only the block freed below leaves resident ones
  const size_t big = size_t{23} << 20;  // 6 chunks with the header slice
  void* q = alloc(big);
  REQUIRE(q != nullptr);
  memset(q, 1, big);
  Segment* sq = segment_of(q);
  REQUIRE(sq->chunk_count == 6);
  dealloc(q);  // 6 resident free chunks (until the purge delay)
  const size_t n = size_t{7} << 20;  // 2 chunks: the first two of those, the most resident
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  memset(p, 2, n);
  Segment* s = segment_of(p);
  REQUIRE(s->chunk_count == 2);
  REQUIRE(s == sq);  // the most resident run: the freed block's first chunks (settled above)
  const size_t m = size_t{11} << 20;  // grown in place to 3 chunks: now a growing block
  p = static_cast<uint8_t*>(realloc_block(p, m));
  REQUIRE(p != nullptr);
  REQUIRE(segment_of(p) == s);  // grown in place: now a block that grows
  const uintptr_t behind = reinterpret_cast<uintptr_t>(s) + s->chunk_count * kSegmentSize;
  const size_t spared = s->chunk_count * kSegmentSize;
  std::vector<ChunkGrant> grants;
  for (int i = 0; i < 6; ++i) {
    ChunkGrant g;
    REQUIRE(arena_alloc(1, &g, ChunkUse::kSegment));
    const uintptr_t b = reinterpret_cast<uintptr_t>(g.base);
    CHECK((b < behind || b >= behind + spared));
    grants.push_back(g);
  }
  // Doubled: in place, since the chunks behind it are still free.
  auto* r = static_cast<uint8_t*>(realloc_block(p, 2 * m));
  REQUIRE(r != nullptr);
  CHECK(r == p);
  for (size_t i = 0; i < n; i += 4096) REQUIRE(r[i] == 2);
  dealloc(r);
  for (const ChunkGrant& g : grants) arena_free_unused(g, 1);
  settle();
}

namespace {

// Take single chunks from the arenas until one is the chunk at `want`; the others go back.
// The grant of that chunk, or one with a null base when none came there.
ChunkGrant take_chunk_at(uintptr_t want) {
  std::vector<ChunkGrant> others;
  ChunkGrant found{};
  for (int i = 0; i < 256 && found.base == nullptr; ++i) {
    ChunkGrant g;
    if (!arena_alloc(1, &g, ChunkUse::kHuge)) break;
    if (reinterpret_cast<uintptr_t>(g.base) == want) found = g;
    else others.push_back(g);
  }
  for (const ChunkGrant& g : others) arena_free_unused(g, 1);
  return found;
}

// A huge block of n bytes (2 chunks with the header slice), a byte written in each OS page,
// and the chunk right behind its run taken, so that it cannot grow in place.
struct BlockedBlock {
  uint8_t* p;
  Segment* s;
  ChunkGrant blocker;
};
BlockedBlock blocked_block(size_t n) {
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  for (size_t i = 0; i < n; i += 4096) p[i] = static_cast<uint8_t>(i >> 12);
  Segment* s = segment_of(p);
  REQUIRE(s->chunk_count == 2);
  ChunkGrant blocker = take_chunk_at(reinterpret_cast<uintptr_t>(s) + 2 * kSegmentSize);
  REQUIRE(blocker.base != nullptr);
  return {p, s, blocker};
}

}  // namespace

TEST_CASE("huge: a block that cannot grow in place moves its pages instead of copying them") {
  settle();  // every free chunk clean, so the accounting below is exact
  const size_t n = size_t{7} << 20;
  auto [p, s, blocker] = blocked_block(n);
  const uintptr_t old_base = reinterpret_cast<uintptr_t>(s);
  const size_t committed0 = committed_now(), live0 = huge_live_now();
  const size_t old_used = s->huge_used;
  const size_t m = size_t{19} << 20;
  auto* r = static_cast<uint8_t*>(realloc_block(p, m));
  REQUIRE(r != nullptr);
  REQUIRE(r != p);
  Segment* t = segment_of(r);
  CHECK(segment_containing(r + m - 1) == t);
  CHECK(t->kind == SegmentKind::kHuge);
  CHECK(r - reinterpret_cast<uint8_t*>(t) == p - reinterpret_cast<uint8_t*>(s));
  CHECK(usable_size(r) >= m);
  for (size_t i = 0; i < n; i += 4096) REQUIRE(r[i] == static_cast<uint8_t>(i >> 12));
  // Moved, not copied: the old chunks hold nothing resident (a copy leaves them resident until
  // the purge delay), and the committed bytes grew by what the block added, not by a new block.
  CHECK(resident_bytes(old_base, 2 * kSegmentSize) == 0);
  CHECK(segment_containing(p) == nullptr);  // the old place is no longer a segment
  CHECK(committed_now() - committed0 == t->huge_used - old_used);
  CHECK(huge_live_now() - live0 == t->huge_used - old_used);
  memset(r + n, 7, m - n);  // the new part is usable
  arena_free_unused(blocker, 1);
  dealloc(r);
  CHECK(huge_live_now() == live0 - old_used);
  settle();
}

// A move over resident free memory (a block just freed: the run the arena prefers) exchanges
// the pages instead of dropping that memory: the block's pages go to the new run, the new run's
// to the old one, which goes back to the arena resident; nothing is copied or faulted in.
TEST_CASE("huge: a block that moves over resident free memory exchanges its pages with it") {
  settle();
  const size_t n = size_t{7} << 20;
  auto [p, s, blocker] = blocked_block(n);
  const uintptr_t old_base = reinterpret_cast<uintptr_t>(s);
  const size_t m = size_t{19} << 20;  // 5 chunks
  auto* q = static_cast<uint8_t*>(alloc(m));
  REQUIRE(q != nullptr);
  const uintptr_t q_base = reinterpret_cast<uintptr_t>(segment_of(q));
  for (size_t i = kSliceSize; i < 5 * kSegmentSize; i += 4096)  // every page after its header's
    reinterpret_cast<uint8_t*>(q_base)[i + 8] = static_cast<uint8_t>(0x80 | (i >> 12));
  dealloc(q);  // its 5 chunks are free and resident
  const size_t committed0 = committed_now(), free0 = arena_free_resident(), live0 = huge_live_now();
  const size_t old_used = s->huge_used, old_len = s->huge_len;
  auto* r = static_cast<uint8_t*>(realloc_block(p, m));
  REQUIRE(r != nullptr);
  Segment* t = segment_of(r);
  REQUIRE(reinterpret_cast<uintptr_t>(t) == q_base);  // the most resident run that fits
  CHECK(r - reinterpret_cast<uint8_t*>(t) == p - reinterpret_cast<uint8_t*>(s));
  for (size_t i = 0; i < n; i += 4096) REQUIRE(r[i] == static_cast<uint8_t>(i >> 12));
  // The old run holds the freed block's first two chunks, every page resident, and is free.
  CHECK(resident_bytes(old_base + kSliceSize, 2 * kSegmentSize - kSliceSize) == 2 * kSegmentSize - kSliceSize);
  for (size_t i = kSliceSize; i < 2 * kSegmentSize; i += 4096)
    REQUIRE(reinterpret_cast<const uint8_t*>(old_base)[i + 8] == static_cast<uint8_t>(0x80 | (i >> 12)));
  CHECK(segment_containing(p) == nullptr);
  // Counted: the block's extent, and the old run's pages as free resident memory.
  CHECK(committed_now() - committed0 == (t->huge_len - old_len) + (arena_free_resident() - free0));
  CHECK(arena_free_resident() + 3 * kSegmentSize >= free0);  // 2 of the 5 chunks came back
  CHECK(huge_live_now() - live0 == t->huge_used - old_used);
  memset(r + n, 7, m - n);  // the new part is usable
  dealloc(r);
  arena_free_unused(blocker, 1);
  settle();
}

// Moves on two threads at once exchange their pages each through a scratch range of its own:
// the second does not wait for the first one's exchange to end (with one range for the process,
// the second thread spun until the first was done).
namespace swap_window {
std::atomic<int> calls{0};
void* first_scratch = nullptr;
void* second_scratch = nullptr;
std::thread second;
std::atomic<bool> second_done{false};
bool done_in_window = false;
uint8_t* second_block = nullptr;
uint8_t* second_moved = nullptr;
size_t second_size = 0;
}  // namespace swap_window

TEST_CASE("huge: moves on two threads at once each exchange pages through a scratch range of their own") {
  using namespace swap_window;
  settle();
  const size_t n = size_t{7} << 20, m = size_t{19} << 20;
  auto [p1, s1, blocker1] = blocked_block(n);
  auto [p2, s2, blocker2] = blocked_block(n);
  // Two runs of 5 free resident chunks for them to move over.
  auto* q1 = static_cast<uint8_t*>(alloc(m));
  auto* q2 = static_cast<uint8_t*>(alloc(m));
  REQUIRE(q1 != nullptr);
  REQUIRE(q2 != nullptr);
  memset(q1, 0x5a, m);
  memset(q2, 0x5a, m);
  dealloc(q1);
  dealloc(q2);
  calls = 0;
  first_scratch = second_scratch = nullptr;
  second_done = false;
  done_in_window = false;
  second_block = p2;
  second_moved = nullptr;
  second_size = m;
  g_swap_hook = [](void* scratch) {
    if (calls.fetch_add(1) != 0) {  // the second thread's exchange
      second_scratch = scratch;
      return;
    }
    first_scratch = scratch;
    // The first exchange holds its scratch range while a second thread moves its own block
    // (joined after the first move: if it waits for this range, it goes on once the hook ends).
    second = std::thread([] {
      second_moved = static_cast<uint8_t*>(realloc_block(second_block, second_size));
      second_done = true;
    });
    for (int i = 0; i < 5000 && !second_done; ++i) usleep(1000);
    done_in_window = second_done;
  };
  auto* r1 = static_cast<uint8_t*>(realloc_block(p1, m));
  if (second.joinable()) second.join();
  g_swap_hook = nullptr;
  REQUIRE(r1 != nullptr);
  REQUIRE(second_moved != nullptr);
  CHECK(calls == 2);  // both moved over resident memory: two exchanges
  CHECK(done_in_window);
  CHECK(first_scratch != nullptr);
  CHECK(second_scratch != nullptr);
  CHECK(first_scratch != second_scratch);
  for (size_t i = 0; i < n; i += 4096) {
    REQUIRE(r1[i] == static_cast<uint8_t>(i >> 12));
    REQUIRE(second_moved[i] == static_cast<uint8_t>(i >> 12));
  }
  dealloc(r1);
  dealloc(second_moved);
  arena_free_unused(blocker1, 1);
  arena_free_unused(blocker2, 1);
  settle();
}

TEST_CASE("huge: a block moved again and again keeps its contents") {
  settle();
  size_t n = size_t{5} << 20;
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  for (size_t i = 0; i < n; i += 4096) p[i] = static_cast<uint8_t>(i >> 12);
  const size_t live0 = huge_live_now();
  int moved = 0;
  std::vector<ChunkGrant> blockers;
  for (int i = 0; i < 24; ++i) {
    Segment* s = segment_of(p);
    ChunkGrant blocker = take_chunk_at(reinterpret_cast<uintptr_t>(s) + s->chunk_count * kSegmentSize);
    if (blocker.base != nullptr) blockers.push_back(blocker);
    const size_t m = n + kSegmentSize;  // always past the run's slack
    auto* r = static_cast<uint8_t*>(realloc_block(p, m));
    REQUIRE(r != nullptr);
    moved += r != p;
    for (size_t k = 0; k < m - kSegmentSize; k += 4096) REQUIRE(r[k] == static_cast<uint8_t>(k >> 12));
    for (size_t k = n; k < m; k += 4096) r[k] = static_cast<uint8_t>(k >> 12);
    p = r;
    n = m;
  }
  CHECK(moved >= 12);  // where a chunk behind it could be taken, it had to move
  CHECK(huge_live_now() - live0 == segment_of(p)->huge_used - align_up((size_t{5} << 20) + kSliceSize, kSliceSize));
  dealloc(p);
  for (const ChunkGrant& g : blockers) arena_free_unused(g, 1);
  settle();
}

namespace {
// Chunks [from, to) after `at` taken and written (the ones free), as live segments there would.
std::vector<ChunkGrant> hold_chunks(uintptr_t at, size_t from, size_t to) {
  std::vector<ChunkGrant> held;
  for (size_t c = from; c < to; ++c) {
    ChunkGrant g = take_chunk_at(at + c * kSegmentSize);
    if (g.base == nullptr) continue;  // in use already
    fill(g.base, 4096, c);
    held.push_back(g);
  }
  REQUIRE(!held.empty());
  return held;
}
// The held chunks still hold what hold_chunks wrote; they go back clean, as arena_free_unused
// takes them to be (left written, the next segment there read the data as its descriptors: the
// tests after this one failed in a random order).
void release_held(const std::vector<ChunkGrant>& held, uintptr_t at) {
  for (const ChunkGrant& g : held) {
    const size_t c = (reinterpret_cast<uintptr_t>(g.base) - at) >> kSegmentShift;
    CHECK(check_fill(g.base, 4096, c));
    os::purge(g.base, 4096);
    arena_free_unused(g, 1);
  }
}
// 1025 bytes aligned to 8 MiB, filled with v: a huge block with slack after it in its run (20 MiB
// mapped).
std::pair<uint8_t*, Segment*> aligned_with_slack(int v) {
  auto* p = static_cast<uint8_t*>(alloc_aligned(size_t{8} << 20, 1025));
  REQUIRE(p != nullptr);
  Segment* s = segment_containing(p);
  REQUIRE(s != nullptr);
  REQUIRE(s->kind == SegmentKind::kHuge);
  REQUIRE(s->mapped_size == size_t{20} << 20);
  fill(p, 1025, v);
  return {p, s};
}
// realloc to m where the growth in place fails (its commit is refused, as the fuzzer's fault
// injection does): the block moves.
uint8_t* realloc_not_in_place(uint8_t* p, size_t m) {
  REQUIRE(fault_injection_set("nth:1"));
  auto* r = static_cast<uint8_t*>(realloc_block(p, m));
  REQUIRE(fault_injection_set("off"));
  REQUIRE(r != nullptr);
  return r;
}
}  // namespace

// A block aligned beyond the chunk size has slack after it in its run (64 KiB aligned to 8 MiB:
// 20 MiB mapped). When its growth in place fails (here the commit is refused, as the fuzzer's
// fault injection does), realloc moves it to a run sized for the new block, and only that much
// of the old run may move: moving the whole 20 MiB put the old slack's empty pages over the
// chunks after the new run, and zeroed the blocks of the live segments there.
TEST_CASE("huge: a block aligned beyond the chunk size moves no more than its new run holds") {
  settle();
  auto [p, s] = aligned_with_slack(91);
  const size_t m = kSegmentSize - kSliceSize;
  const size_t offset = static_cast<size_t>(p - reinterpret_cast<uint8_t*>(s));
  const size_t chunks = align_up(offset + m, kSegmentSize) >> kSegmentShift;
  REQUIRE(chunks < 5);
  // Where the new run will be: the run arena_alloc gives now (every free chunk is clean).
  ChunkGrant probe;
  REQUIRE(arena_alloc(chunks, &probe, ChunkUse::kHuge));
  const uintptr_t at = reinterpret_cast<uintptr_t>(probe.base);
  arena_free_unused(probe, chunks);
  // The chunks that the old run's remaining 20 MiB would cover there hold data.
  std::vector<ChunkGrant> held = hold_chunks(at, chunks, 5);
  auto* r = realloc_not_in_place(p, m);
  CHECK(reinterpret_cast<uintptr_t>(segment_containing(r)) == at);  // moved where the probe said
  CHECK(check_fill(r, 1025, 91));
  memset(r, 1, m);
  release_held(held, at);
  dealloc(r);
  settle();
}

// The same move over resident free memory: the pages are exchanged, and no more of the old run
// than the new run holds (the old run's slack past that is purged where it is).
TEST_CASE("huge: a block aligned beyond the chunk size exchanges no more than its new run holds") {
  settle();
  auto [p, s] = aligned_with_slack(92);
  const uintptr_t old_base = reinterpret_cast<uintptr_t>(s);
  const size_t m = kSegmentSize - kSliceSize;
  const size_t offset = static_cast<size_t>(p - reinterpret_cast<uint8_t*>(s));
  const size_t chunks = align_up(offset + m, kSegmentSize) >> kSegmentShift;
  REQUIRE(chunks < 5);  // (2 or 3: the offset depends on the run's address)
  // A block of that many chunks, freed resident, where the chunks after it hold data.
  auto* q = static_cast<uint8_t*>(alloc(chunks * kSegmentSize - 2 * kSliceSize));
  REQUIRE(q != nullptr);
  const uintptr_t at = reinterpret_cast<uintptr_t>(segment_of(q));
  REQUIRE(segment_of(q)->chunk_count == chunks);
  std::vector<ChunkGrant> held = hold_chunks(at, chunks, 5);
  for (size_t i = kSliceSize; i < chunks * kSegmentSize; i += 4096)
    reinterpret_cast<uint8_t*>(at)[i + 8] = static_cast<uint8_t>(0x80 | (i >> 12));
  dealloc(q);
  auto* r = realloc_not_in_place(p, m);
  CHECK(reinterpret_cast<uintptr_t>(segment_containing(r)) == at);  // the most resident run
  CHECK(check_fill(r, 1025, 92));
  memset(r, 1, m);
  release_held(held, at);
  // The old run's first 3 chunks hold the freed block's pages; its slack after them is empty.
  for (size_t i = kSliceSize; i < chunks * kSegmentSize; i += 4096)
    REQUIRE(reinterpret_cast<const uint8_t*>(old_base)[i + 8] == static_cast<uint8_t>(0x80 | (i >> 12)));
  CHECK(resident_bytes(old_base + chunks * kSegmentSize, (size_t{20} << 20) - chunks * kSegmentSize) == 0);
  dealloc(r);
  settle();
}

TEST_CASE("huge: blocks above the arena's share move too, into and between mappings of their own") {
  settle();
  const size_t step = size_t{256} << 10;  // one byte in every 256 KiB: little becomes resident
  size_t n = size_t{200} << 20;
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  REQUIRE_FALSE(segment_of(p)->solo);
  for (size_t i = 0; i < n; i += step) p[i] = static_cast<uint8_t>(i / step);
  for (size_t m : {size_t{300} << 20, size_t{420} << 20}) {
    auto* r = static_cast<uint8_t*>(realloc_block(p, m));
    REQUIRE(r != nullptr);
    CHECK(segment_of(r)->solo);
    CHECK(usable_size(r) >= m);
    for (size_t i = 0; i < n; i += step) REQUIRE(r[i] == static_cast<uint8_t>(i / step));
    for (size_t i = n; i < m; i += step) r[i] = static_cast<uint8_t>(i / step);
    p = r;
    n = m;
  }
  dealloc(p);
  settle();
}

TEST_CASE("huge: a shrinking realloc keeps the block where it is and gives the rest back") {
  settle();
  const size_t n = size_t{40} << 20;
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  for (size_t i = 0; i < n; i += 4096) p[i] = static_cast<uint8_t>(i >> 12);
  Segment* s = segment_of(p);
  const uintptr_t sb = reinterpret_cast<uintptr_t>(s);
  REQUIRE(s->chunk_count == 11);
  const size_t committed0 = committed_now(), live0 = huge_live_now();
  const size_t m = size_t{10} << 20;  // 3 chunks with the header slice
  auto* r = static_cast<uint8_t*>(realloc_block(p, m));
  CHECK(r == p);
  for (size_t i = 0; i < m; i += 4096) REQUIRE(r[i] == static_cast<uint8_t>(i >> 12));
  CHECK(usable_size(r) >= m);
  CHECK(usable_size(r) < m + kSliceSize);
  CHECK(s->chunk_count == 3);
  const size_t end = align_up(reinterpret_cast<uintptr_t>(r) + m, kSliceSize);
  CHECK(resident_bytes(end, sb + 11 * kSegmentSize - end) == 0);  // given back at once
  const size_t old_len = align_up(kSliceSize + n, kSliceSize);  // the block's extent before
  CHECK(committed0 - committed_now() == old_len - (end - sb));
  CHECK(live0 - huge_live_now() == old_len - (end - sb));
  // The chunks past its new end are free again: it grows back into them in place.
  auto* q = static_cast<uint8_t*>(realloc_block(r, size_t{20} << 20));
  CHECK(q == r);
  CHECK(s->chunk_count == 6);
  for (size_t i = 0; i < m; i += 4096) REQUIRE(q[i] == static_cast<uint8_t>(i >> 12));
  dealloc(q);
  settle();
}

TEST_CASE("realloc: a shrink that finds no memory for its copy keeps its block; a growth fails") {
  settle();
  // A huge block shrunk to a large one is copied into a new span. With every request to the OS
  // refused there is none: the shrink keeps the block where it is (it holds the bytes asked
  // for), errno untouched; it returned NULL before, as a growth still does.
  const size_t n = size_t{40} << 20, m = size_t{1} << 20;
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  for (size_t i = 0; i < n; i += 4096) p[i] = static_cast<uint8_t>(i >> 12);
  REQUIRE(fault_injection_set("every:1"));
  // Nothing fails, so nothing aborts with NEBULA_MEM_ON_OOM=abort, nor counts as a failure.
  const uint64_t failures0 = g_budget.failures.load();
  REQUIRE(option_set(Option::kOnOom, 1));
  errno = 1234;
  auto* r = static_cast<uint8_t*>(realloc_block(p, m));
  const int e = errno;
  REQUIRE(option_set(Option::kOnOom, 0));
  CHECK(g_budget.failures.load() == failures0);
  auto* g = static_cast<uint8_t*>(realloc_block(p, size_t{400} << 20));
  const int ge = errno;
  REQUIRE(fault_injection_set("off"));
  CHECK(r == p);
  CHECK(e == 1234);
  CHECK(g == nullptr);
  CHECK(ge == ENOMEM);
  CHECK(usable_size(p) >= n);
  for (size_t i = 0; i < n; i += 4096) REQUIRE(p[i] == static_cast<uint8_t>(i >> 12));
  // With memory to be had again, the same shrink copies the block into a large span.
  auto* q = static_cast<uint8_t*>(realloc_block(p, m));
  REQUIRE(q != nullptr);
  CHECK(q != p);
  for (size_t i = 0; i < m; i += 4096) REQUIRE(q[i] == static_cast<uint8_t>(i >> 12));
  dealloc(q);
  settle();
}

TEST_CASE("os::move_pages: moves the pages without copying them and leaves the source empty") {
  const size_t mib = size_t{1} << 20;
  auto* from = static_cast<uint8_t*>(os::reserve(8 * mib, 2 * mib));
  auto* to = static_cast<uint8_t*>(os::reserve(8 * mib, 2 * mib));
  REQUIRE(from != nullptr);
  REQUIRE(to != nullptr);
  for (size_t i = 0; i < 8 * mib; i += 4096) from[i] = static_cast<uint8_t>(1 + (i >> 12));
  os::huge_hint(from + 2 * mib, 2 * mib);  // mapping boundaries inside the range, as huge blocks have
  REQUIRE(os::move_pages(from, 8 * mib, to) == 8 * mib);  // kernels before 5.7 return 0 here
  for (size_t i = 0; i < 8 * mib; i += 4096) REQUIRE(to[i] == static_cast<uint8_t>(1 + (i >> 12)));
  CHECK(resident_bytes(reinterpret_cast<uintptr_t>(from), 8 * mib) == 0);
  for (size_t i = 0; i < 8 * mib; i += 4096) REQUIRE(from[i] == 0);  // still mapped: reads zero
  // A piece that cannot move (here, unmapped) stops it: it reports how far it got, the pieces
  // before it moved whole and the rest stays where it was, for the caller to copy.
  os::release(to + 4 * mib, 2 * mib);
  REQUIRE(os::move_pages(to, 8 * mib, from) == 4 * mib);
  for (size_t i = 0; i < 4 * mib; i += 4096) REQUIRE(from[i] == static_cast<uint8_t>(1 + (i >> 12)));
  for (size_t i = 6 * mib; i < 8 * mib; i += 4096) REQUIRE(to[i] == static_cast<uint8_t>(1 + (i >> 12)));
  CHECK(resident_bytes(reinterpret_cast<uintptr_t>(to), 4 * mib) == 0);
  os::release(from, 8 * mib);
  os::release(to, 4 * mib);
  os::release(to + 6 * mib, 2 * mib);
}

TEST_CASE("os::swap_pages: exchanges the pages of two ranges without copying them") {
  const size_t mib = size_t{1} << 20;
  auto* a = static_cast<uint8_t*>(os::reserve(8 * mib, 2 * mib));
  auto* b = static_cast<uint8_t*>(os::reserve(8 * mib, 2 * mib));
  auto* scratch = os::reserve(2 * mib, 2 * mib);
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  REQUIRE(scratch != nullptr);
  for (size_t i = 0; i < 8 * mib; i += 4096) a[i] = static_cast<uint8_t>(1 + (i >> 12));
  for (size_t i = 0; i < 6 * mib; i += 4096) b[i] = static_cast<uint8_t>(0x80 | (i >> 12));
  os::huge_hint(a + 2 * mib, 2 * mib);  // mapping boundaries inside the range, as huge blocks have
  REQUIRE(os::swap_pages(a, b, 8 * mib, scratch) == 8 * mib);  // kernels before 5.7 return 0 here
  for (size_t i = 0; i < 8 * mib; i += 4096) REQUIRE(b[i] == static_cast<uint8_t>(1 + (i >> 12)));
  for (size_t i = 0; i < 6 * mib; i += 4096) REQUIRE(a[i] == static_cast<uint8_t>(0x80 | (i >> 12)));
  CHECK(resident_bytes(reinterpret_cast<uintptr_t>(a), 8 * mib) == 6 * mib);  // what b held, no more
  CHECK(resident_bytes(reinterpret_cast<uintptr_t>(scratch), 2 * mib) == 0);
  // A piece whose source cannot move (here, unmapped) stops it after the pieces before it; the
  // other range's pages of that piece are put back where they were.
  os::release(a + 4 * mib, 2 * mib);
  REQUIRE(os::swap_pages(a, b, 8 * mib, scratch) == 4 * mib);
  for (size_t i = 0; i < 4 * mib; i += 4096) REQUIRE(a[i] == static_cast<uint8_t>(1 + (i >> 12)));
  for (size_t i = 0; i < 4 * mib; i += 4096) REQUIRE(b[i] == static_cast<uint8_t>(0x80 | (i >> 12)));
  for (size_t i = 4 * mib; i < 8 * mib; i += 4096) REQUIRE(b[i] == static_cast<uint8_t>(1 + (i >> 12)));
  // And one whose destination cannot (unmapped): nothing of that piece changes.
  REQUIRE(os::swap_pages(b + 4 * mib, a + 4 * mib, 4 * mib, scratch) == 0);
  for (size_t i = 4 * mib; i < 8 * mib; i += 4096) REQUIRE(b[i] == static_cast<uint8_t>(1 + (i >> 12)));
  os::release(a, 4 * mib);
  os::release(a + 6 * mib, 2 * mib);
  os::release(b, 8 * mib);
  os::release(scratch, 2 * mib);
}

// A search of an arena that found no run of n chunks is not repeated for n or more until
// chunks are freed there (a process with 30 GiB of huge blocks read every chunk of every full
// arena for each new block): the arena remembers the length, a free forgets it, and the run the
// free made is found again.
TEST_CASE("huge: an arena with no run of n chunks is skipped until a chunk is freed in it") {
  settle();
  // Single chunks come from the first arena with a free one: take them all.
  std::vector<ChunkGrant> mine;
  ChunkGrant g;
  REQUIRE(arena_alloc(1, &g, ChunkUse::kHuge));
  const unsigned arena = g.arena_index;
  mine.push_back(g);
  for (;;) {
    REQUIRE(arena_alloc(1, &g, ChunkUse::kHuge));
    if (g.arena_index != arena) {
      arena_free_unused(g, 1);
      break;
    }
    mine.push_back(g);
  }
  REQUIRE(mine.size() >= 3);
  std::sort(mine.begin(), mine.end(), [](const ChunkGrant& a, const ChunkGrant& b) { return a.base < b.base; });
  // Every other one back: the arena's free chunks are single ones between used ones.
  std::vector<ChunkGrant> kept;
  for (size_t i = 0; i < mine.size(); ++i) {
    if (i % 2 == 0) arena_free_unused(mine[i], 1);
    else kept.push_back(mine[i]);
  }
  ChunkGrant two;
  REQUIRE(arena_alloc(2, &two, ChunkUse::kHuge));
  CHECK(two.arena_index != arena);
  CHECK(arena_no_run(arena) == 2);  // searched and found wanting
  // A freed chunk between two free ones makes a run of three there.
  size_t mid = SIZE_MAX;
  for (size_t i = 1; i + 1 < mine.size(); i += 2) {
    const auto at = [&](size_t k) { return reinterpret_cast<uintptr_t>(mine[k].base); };
    if (at(i) - at(i - 1) == kSegmentSize && at(i + 1) - at(i) == kSegmentSize) {
      mid = i;
      break;
    }
  }
  REQUIRE(mid != SIZE_MAX);
  arena_free_unused(mine[mid], 1);
  CHECK(arena_no_run(arena) == UINT32_MAX);
  ChunkGrant again;
  REQUIRE(arena_alloc(2, &again, ChunkUse::kHuge));
  CHECK(again.arena_index == arena);
  const uintptr_t b = reinterpret_cast<uintptr_t>(again.base);
  CHECK((b == reinterpret_cast<uintptr_t>(mine[mid - 1].base) || b == reinterpret_cast<uintptr_t>(mine[mid].base)));
  arena_free_unused(again, 2);
  arena_free_unused(two, 2);
  for (const ChunkGrant& k : kept)
    if (k.base != mine[mid].base) arena_free_unused(k, 1);
  settle();
}

// Free a chunk of one's own with slices 1-3 resident, as a normal segment holding them would.
void free_chunk_dirty(const ChunkGrant& c) {
  // Nothing resident but what is written here (the grant's resident slices go back first).
  REQUIRE(madvise(c.base, kSegmentSize, MADV_DONTNEED) == 0);
  budget_release(c.dirty_bytes);
  auto* s = static_cast<Segment*>(c.base);
  s->solo = 0;
  s->kind = SegmentKind::kNormal;
  s->arena_index = c.arena_index;
  for (unsigned k = 1; k <= 3; ++k) static_cast<char*>(c.base)[k * kSliceSize] = 1;
  REQUIRE(budget_charge(3 * kSliceSize));
  arena_free(s, 1, 0xe, 0);
}
// What of those slices is resident.
size_t dirty_resident(const ChunkGrant& c) {
  return resident_bytes(reinterpret_cast<uintptr_t>(c.base) + kSliceSize, 3 * kSliceSize);
}

// A free that takes the resident free chunks over their limit purges the one freed longest ago,
// whichever arena holds it. Each arena keeps only a lower bound of its oldest (exact after a
// read), so a bound left low by a chunk taken again must not win over an older chunk elsewhere.
TEST_CASE("huge: the free chunk freed longest ago is purged first, across arenas") {
  settle();
  while (arena_purge_oldest()) {  // (nothing resident is free now: every bound becomes exact)
  }
  std::vector<ChunkGrant> mine;
  ChunkGrant g, other;
  REQUIRE(arena_alloc(1, &g, ChunkUse::kHuge));
  const unsigned first_arena = g.arena_index;
  mine.push_back(g);
  for (;;) {  // every free chunk of the first arena with one, then one of the next
    REQUIRE(arena_alloc(1, &other, ChunkUse::kHuge));
    if (other.arena_index != first_arena) break;
    mine.push_back(other);
  }
  REQUIRE(mine.size() >= 2);
  ChunkGrant x1 = mine[0], x2 = mine[1];
  for (size_t i = 2; i < mine.size(); ++i) arena_free_unused(mine[i], 1);  // clean: no purge due
  auto free_dirty = free_chunk_dirty;
  auto resident = dirty_resident;
  // (the arenas take the coarse clock, a tick behind at most: the times below are ticks apart)
  free_dirty(x1);  // t0: the first arena's bound
  usleep(12000);
  ChunkGrant again;
  REQUIRE(arena_alloc(1, &again, ChunkUse::kHuge));  // the most resident free chunk of that arena
  REQUIRE(again.base == x1.base);                     // taken again: the bound stays at t0
  usleep(12000);
  free_dirty(other);  // t1, in the other arena
  usleep(12000);
  free_dirty(x2);  // t2 > t1, in the first arena (bound t0)
  // (a byte written in each slice: an OS page each, or a huge page where the chunk kept a
  // huge-page request from a block before)
  REQUIRE(resident(other) != 0);
  REQUIRE(resident(x2) != 0);
  REQUIRE(arena_purge_oldest());
  CHECK(resident(other) == 0);  // t1 first
  CHECK(resident(x2) != 0);
  REQUIRE(arena_purge_oldest());
  CHECK(resident(x2) == 0);
  again.dirty_bytes = 0;  // (its slices were counted committed when it was freed dirty: give them back)
  arena_free_unused(again, 1);
  settle();
}

// A purge of free chunks makes its madvise calls with the arena lock released (each takes up to
// a millisecond, and every thread that makes or frees a segment or a huge block waited behind
// it): the chunks are out of use meanwhile, so that no grant takes them and the walk of live
// segments passes them by, and come back free and clean after. A fork in that window gives the
// child the chunks back free, with the slices they may still hold counted resident.
namespace purge_window {
ChunkGrant target;
int calls, locks_held, taken_again, walked_over, child_status;
size_t free_resident;
}  // namespace purge_window

TEST_CASE("arena: a purge of free chunks gives their pages back with the arena lock released") {
  using namespace purge_window;
  settle();
  while (arena_purge_oldest()) {  // nothing resident is free now
  }
  REQUIRE(arena_alloc(1, &target, ChunkUse::kHuge));
  free_chunk_dirty(target);
  REQUIRE(dirty_resident(target) != 0);
  calls = locks_held = taken_again = walked_over = 0;
  child_status = -1;
  free_resident = arena_free_resident();
  REQUIRE(free_resident >= 3 * kSliceSize);
  g_purge_window_hook = [](PurgeWindow where) {
    if (where != PurgeWindow::kArenaChunks) return;
    ++calls;
    locks_held = static_cast<int>(t_locks_held);
    if (locks_held != 0) return;  // (the calls below would wait for this thread's own lock)
    // Out of use: grants of one chunk take the free chunks of the arenas in order, every one of
    // the chunk's arena before one of the next; the chunk being purged is never among them.
    std::vector<ChunkGrant> grants;
    ChunkGrant g;
    while (grants.size() < 4096 && arena_alloc(1, &g, ChunkUse::kHuge)) {
      grants.push_back(g);
      if (g.base == target.base) ++taken_again;
      if (g.arena_index > target.arena_index) break;
    }
    for (const ChunkGrant& x : grants) arena_free_unused(x, 1);
    arena_walk_segments([](Segment* s, void*) { walked_over += s == target.base ? 1 : 0; }, nullptr);
    // Purged, and counted resident no more.
    const size_t now_free = arena_free_resident();
    pid_t pid = fork();
    if (pid == 0) {
      // The child: the purge never finishes here; its chunk is free again, counted resident.
      const bool ok = arena_free_resident() == now_free + 3 * kSliceSize;
      _exit(ok ? 0 : 1);
    }
    int st = 0;
    if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st)) child_status = WEXITSTATUS(st);
  };
  arena_purge(true);
  g_purge_window_hook = nullptr;
  CHECK(calls >= 1);
  CHECK(locks_held == 0);
  CHECK(taken_again == 0);
  CHECK(walked_over == 0);
  CHECK(child_status == 0);
  CHECK(dirty_resident(target) == 0);
  CHECK(arena_free_resident() == free_resident - 3 * kSliceSize);
  // Free and clean again: the next grant of that arena can take it.
  ChunkGrant again;
  bool found = false;
  std::vector<ChunkGrant> grants;
  while (!found && grants.size() < 4096 && arena_alloc(1, &again, ChunkUse::kHuge)) {
    grants.push_back(again);
    if (again.base == target.base) {
      found = true;
      CHECK(again.dirty_bytes == 0);
    }
    if (again.arena_index > target.arena_index) break;
  }
  CHECK(found);
  for (const ChunkGrant& x : grants) arena_free_unused(x, 1);
  settle();
}

// A huge block made on clean chunks writes the first OS page of its header (the segment's fields
// and the first descriptors) and none of the 62 descriptors after: they read 0, which leads a
// pointer into their slices to the generic path (the bad-input tests check that it still names
// the block). 12 KiB less resident per huge block that is not written whole. A block made again
// on that header (its slice now counted resident) leaves them untouched too (Arena::huge_header):
// `patterns huge-many` held 58 MiB more when each such header wrote them (stop 52).
TEST_CASE("huge: a block on clean chunks leaves its header's other descriptor pages untouched") {
  settle();  // every free chunk clean
  auto* p = static_cast<uint8_t*>(alloc(size_t{5} << 20));
  REQUIRE(p != nullptr);
  Segment* s = segment_of(p);
  REQUIRE(s->kind == SegmentKind::kHuge);
  const uintptr_t sb = reinterpret_cast<uintptr_t>(s);
  CHECK(resident_bytes(sb, 4096) == 4096);
  CHECK(resident_bytes(sb + 4096, 3 * 4096) == 0);
  dealloc(p);
  p = static_cast<uint8_t*>(alloc(size_t{5} << 20));  // the most resident run: the one just freed
  REQUIRE(p != nullptr);
  REQUIRE(reinterpret_cast<uintptr_t>(segment_of(p)) == sb);
  CHECK(resident_bytes(sb + 4096, 3 * 4096) == 0);
  CHECK(usable_size(p) >= (size_t{5} << 20));
  p[0] = 1;
  p[(size_t{5} << 20) - 1] = 2;
  auto* r = static_cast<uint8_t*>(realloc_block(p, size_t{9} << 20));  // grows in place or moves
  REQUIRE(r != nullptr);
  CHECK(r[0] == 1);
  CHECK(r[(size_t{5} << 20) - 1] == 2);
  dealloc(r);
  settle();
}

// A huge block's header on resident memory: its descriptors from 2 on must lead to the block's
// (or read 0) whatever lay there. A chunk inside an earlier block holds the program's bytes and
// gets them written; one that held a huge block's header holds right ones already, and they are
// not written again (the arena's note of what the chunk holds is dropped when it is taken for
// anything; a normal segment's header freed whole, all 0, is skipped the same way and not made
// here). A stale value would lead a pointer into
// those slices to some other page (a free of an interior pointer taken for a small block).
TEST_CASE("huge: a block on resident chunks has descriptors that lead to it, whatever lay there") {
  settle();
  auto descriptors_ok = [](const Segment* s) {
    for (unsigned j = 2; j < kSlicesPerSegment; ++j)
      if (s->pages[j].head_off != 0 && s->pages[j].head_off != s->pages[1].head_off) return false;
    return true;
  };
  // Twice: the second time the big block lies over the headers the first round's blocks left.
  for (int round = 0; round < 2; ++round) {
    CAPTURE(round);
    const size_t big = (size_t{15} << 20) + 12345;  // 4 chunks with the header
    auto* a = static_cast<uint8_t*>(alloc(big));
    REQUIRE(a != nullptr);
    const uintptr_t a_seg = reinterpret_cast<uintptr_t>(segment_of(a));
    memset(a, 0xa5 + round, big);  // every chunk but the first: descriptors' bytes garbage
    dealloc(a);
    // Blocks of one chunk take the resident chunks, lowest first: a's header chunk, then its
    // interior ones. Each is freed and made again at once, on its own header.
    std::vector<void*> blocks;
    unsigned inside = 0, again = 0;
    for (int i = 0; i < 64 && inside < 4; ++i) {
      auto* p = static_cast<uint8_t*>(alloc(size_t{3} << 20));
      REQUIRE(p != nullptr);
      Segment* s = segment_of(p);
      const uintptr_t sb = reinterpret_cast<uintptr_t>(s);
      CAPTURE(i);
      CHECK(descriptors_ok(s));
      if (sb >= a_seg && sb < a_seg + 4 * kSegmentSize) ++inside;
      dealloc(p);
      p = static_cast<uint8_t*>(alloc(size_t{3} << 20));  // on the header just freed
      REQUIRE(p != nullptr);
      if (reinterpret_cast<uintptr_t>(segment_of(p)) == sb) ++again;
      CHECK(descriptors_ok(segment_of(p)));
      CHECK(segment_containing(p + (size_t{2} << 20)) == segment_of(p));
      blocks.push_back(p);
    }
    CHECK(inside == 4);
    CHECK(again > 0);
    for (void* p : blocks) dealloc(p);
  }
  settle();
}

// A huge block made on chunks where an earlier block asked for huge pages: the flag comes off
// the 2 MiB that hold its header before the header is written, so the header slice is not faulted in as part of
// a 2 MiB page (it was: 64 KiB of header resident instead of one OS page, with the rest of the
// huge page). Where the kernel has no huge page to give, both codes pass.
TEST_CASE("huge: a block on chunks an earlier block asked huge pages for keeps its header small") {
  settle();
  const size_t big = size_t{13} << 20;
  auto* b = static_cast<uint8_t*>(alloc(big));
  REQUIRE(b != nullptr);
  for (size_t i = 0; i < big; i += 4096) b[i] = 1;
  const uintptr_t run = reinterpret_cast<uintptr_t>(segment_of(b));
  const uintptr_t hinted_lo = align_up(reinterpret_cast<uintptr_t>(b), size_t{2} << 20);
  const uintptr_t hinted_hi = (reinterpret_cast<uintptr_t>(b) + big) & ~((uintptr_t{2} << 20) - 1);
  dealloc(b);
  settle();  // its chunks free and purged; the mapping keeps the huge-page flag
  std::vector<void*> blocks;
  bool checked = false;
  for (int k = 0; k < 32 && !checked; ++k) {
    auto* p = static_cast<uint8_t*>(alloc(size_t{5} << 20));
    REQUIRE(p != nullptr);
    blocks.push_back(p);
    const uintptr_t s = reinterpret_cast<uintptr_t>(segment_of(p));
    if (s < hinted_lo || s + (size_t{2} << 20) > hinted_hi) continue;  // its header's 2 MiB: not asked for
    CAPTURE(s - run);
    CHECK(resident_bytes(s + 4096, kSliceSize - 4096) == 0);
    checked = true;
  }
  CHECK(checked);
  for (void* p : blocks) dealloc(p);
  settle();
}

namespace {

// The mappings of the process with the kernel's huge-page flag ("hg" in smaps' VmFlags).
struct MappingFlag {
  uintptr_t lo, hi;
  bool huge;
};
std::vector<MappingFlag> mapping_flags() {
  std::vector<MappingFlag> out;
  FILE* f = fopen("/proc/self/smaps", "r");
  REQUIRE(f != nullptr);
  char line[512];
  MappingFlag cur{0, 0, false};
  while (fgets(line, sizeof line, f) != nullptr) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
      cur = MappingFlag{lo, hi, false};
    } else if (strncmp(line, "VmFlags:", 8) == 0) {
      cur.huge = strstr(line, " hg") != nullptr;
      out.push_back(cur);
    }
  }
  fclose(f);
  return out;
}

// Every 2 MiB of runs whose huge-page flag the arena is sure of carries that flag in the
// mapping; returns the count of those that do not.
int thp_mismatches(const std::vector<std::pair<unsigned, uintptr_t>>& units) {
  const std::vector<MappingFlag> maps = mapping_flags();
  int bad = 0;
  for (auto [index, u] : units) {
    const int known = arena_thp_state(index, u);
    if (known == 2) continue;
    for (const MappingFlag& m : maps) {
      if (u < m.lo || u >= m.hi) continue;
      if (m.huge != (known == 1)) {
        ++bad;
        MESSAGE("2 MiB at " << reinterpret_cast<void*>(u) << ": arena says " << known << ", mapping says " << m.huge);
      }
      break;
    }
  }
  return bad;
}

}  // namespace

// The arena keeps the mapping's huge-page flag per 2 MiB so that calls which would change
// nothing are not made. Whatever huge blocks, their growth, moves and shrinks, calloc'd blocks
// and segments do on the same chunks, what it is sure of must be what the kernel has: where it
// thought the flag off while a moved mapping brought it along, a segment would fault in 2 MiB
// at a touch; where it thought it on while it was off, a block would go without huge pages.
TEST_CASE("huge: the arena's record of the huge-page flag is the mapping's") {
  settle();
  if (!option_bool(Option::kHugePages)) return;  // nothing asks for the flag
  std::vector<std::pair<unsigned, uintptr_t>> units;  // every 2 MiB of every run used below
  auto note = [&](void* p) {
    const Segment* s = segment_of(p);
    REQUIRE(s->solo == 0);
    for (uintptr_t u = reinterpret_cast<uintptr_t>(s); u < reinterpret_cast<uintptr_t>(s) + s->mapped_size;
         u += size_t{2} << 20)
      units.emplace_back(s->arena_index, u);
  };
  constexpr int kSlots = 10;
  void* slot[kSlots] = {};
  uint64_t x = 0x9e3779b97f4a7c15ull;
  const size_t calls0 = g_counters.thp_calls.load();
  for (int op = 0; op < 400; ++op) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const int k = static_cast<int>(x % kSlots);
    const size_t n = (size_t{1} << 20) + (x >> 16) % (size_t{14} << 20);  // 1-15 MiB
    const unsigned what = static_cast<unsigned>((x >> 8) % 6);
    if (slot[k] == nullptr) {
      slot[k] = what == 0 ? nebula_calloc(1, n) : alloc(n);  // 1-2 MiB: spans of segments
    } else if (what <= 1) {
      dealloc(slot[k]);
      slot[k] = nullptr;
    } else {
      slot[k] = realloc_block(slot[k], n);  // grows in place, moves, or shrinks
    }
    if (slot[k] != nullptr) {
      static_cast<uint8_t*>(slot[k])[0] = 1;
      static_cast<uint8_t*>(slot[k])[n - 1] = 1;
      note(slot[k]);
    }
    if (op % 50 == 49) {
      CHECK(thp_mismatches(units) == 0);
      settle();  // free chunks purged: the next growth moves rather than copies into them
    }
  }
  for (void*& p : slot) {
    if (p != nullptr) dealloc(p);
    p = nullptr;
  }
  CHECK(g_counters.thp_calls.load() > calls0);
  CHECK(thp_mismatches(units) == 0);
  settle();
}

// A block made on the run where a block of the same size was: each of its 2 MiB already carries
// the flag it needs (off under the header and past the end, on inside), so the block asks nothing
// of the kernel. `patterns huge-many` made 165,800 such calls in 55,000 blocks, 41,000 since.
TEST_CASE("huge: a block made where a like one was leaves the mapping's flags as they are") {
  settle();
  if (!option_bool(Option::kHugePages)) return;
  const size_t n = size_t{6} << 20;  // header 2 MiB, 2 MiB inside, the tail
  void* p = alloc(n);
  REQUIRE(p != nullptr);
  dealloc(p);
  const size_t calls0 = g_counters.thp_calls.load();
  void* q = alloc(n);
  REQUIRE(q != nullptr);
  CHECK(q == p);  // the same run: the resident one freed last
  CHECK(g_counters.thp_calls.load() == calls0);
  dealloc(q);
  settle();
}

// Each 2 MiB whose huge-page flag differs from its neighbour's is a mapping of its own, and the
// process may have vm.max_map_count of them in all: 33,000 live blocks of 4-8 MiB used them all
// up and pthread_create failed. Past the cap (a quarter of the limit; here the count so far plus
// six), no more huge pages are asked for and the mappings stop multiplying.
TEST_CASE("huge: blocks stop asking for huge pages where their flags would split the mapping past a cap") {
  settle();
  if (!option_bool(Option::kHugePages)) return;  // nothing asks for the flag
  const size_t mib2 = size_t{2} << 20;
  void* p = alloc(size_t{64} << 20);
  REQUIRE(p != nullptr);
  const unsigned index = segment_of(p)->arena_index;
  const uintptr_t inside = align_up(reinterpret_cast<uintptr_t>(p), mib2);
  arena_thp(index, inside, inside + 22 * mib2, false);  // the flag off on 44 MiB of its inside
  const size_t maps0 = mapping_flags().size();
  const long others = arena_commit_edges();  // (NEBULA_MEM_COMMIT=strict: its chunks' edges count too)
  const long limit = arena_thp_edges() + others + 6;
  arena_set_thp_edge_limit(limit);
  const size_t capped0 = g_counters.thp_capped.load();
  // Every other 2 MiB asks for the flag: each alone would be a mapping, two flag changes.
  for (int k = 0; k < 10; ++k) {
    const uintptr_t u = inside + (2 * k + 1) * mib2;
    arena_thp(index, u, u + mib2, true);
  }
  for (int k = 0; k < 10; ++k) {
    const uintptr_t u = inside + (2 * k + 1) * mib2;
    CHECK(arena_thp_state(index, u) == (k < 3 ? 1 : 0));  // three within the cap, none after
  }
  CHECK(g_counters.thp_capped.load() == capped0 + 7);
  CHECK(arena_thp_edges() + others == limit);
  CHECK(mapping_flags().size() <= maps0 + 6);  // ten would have made 20 more
  // Taking the flag off is never refused (a segment's or block's memory needs it).
  arena_thp(index, inside, inside + 22 * mib2, false);
  CHECK(arena_thp_state(index, inside + mib2) == 0);
  arena_set_thp_edge_limit(0);  // read vm.max_map_count again
  dealloc(p);
  settle();
}

// The search for a run of n free chunks reads the used bitmap a word at a time (the starts of
// n free chunks in a row, from shifts in doubling steps) and scores only those starts. Against
// a chunk-by-chunk reference on random arenas: full and sparse ones, runs across the words'
// boundaries, n from 1 (the lists of free chunks by resident slices) to 64, arenas with few
// resident chunks (only windows that hold one are scored; the lowest run when none does), blocks
// that use only the first slices of their last chunk (only those count there; n = 1 counts the
// whole chunk), and the small arena of 16 chunks made where address space is short.
TEST_CASE("huge: the run search finds the free run with the most resident slices, lowest first") {
  uint64_t x = 0x2545F4914F6CDD1Dull;
  auto next = [&] { return x ^= x << 13, x ^= x >> 7, x ^= x << 17; };
  for (int round = 0; round < 3000; ++round) {
    const unsigned chunks = round % 10 == 0 ? 16 : kArenaChunks;
    const unsigned density = static_cast<unsigned>(next() % 8);  // of 8: chunks in use
    const bool few_resident = round % 5 == 2;                     // 1 chunk in 16 may be
    std::vector<uint64_t> used(kArenaChunks / 64, 0), dirty(chunks, 0);
    for (unsigned i = 0; i < chunks; ++i) {
      if (next() % 8 < density) used[i / 64] |= uint64_t{1} << (i % 64);
      unsigned kind = static_cast<unsigned>(next() % 4);
      if (few_resident && next() % 16 != 0) kind = 0;
      dirty[i] = kind == 0 ? 0 : kind == 1 ? ~uint64_t{0} : next() & next();
    }
    const unsigned n = round % 4 == 1 ? 1 : 2 + static_cast<unsigned>(next() % (round % 3 == 0 ? 63 : 6));
    const unsigned last = n == 1 || round % 2 == 0 ? 64 : 1 + static_cast<unsigned>(next() % 64);
    const uint64_t last_mask = last == 64 ? ~uint64_t{0} : (uint64_t{1} << last) - 1;
    int want = -1;
    unsigned want_score = 0;
    for (unsigned i = 0; i + n <= chunks; ++i) {
      unsigned score = 0;
      bool free = true;
      for (unsigned j = i; j < i + n && free; ++j) {
        free = !((used[j / 64] >> (j % 64)) & 1);
        score += popcount64(j + 1 == i + n ? dirty[j] & last_mask : dirty[j]);
      }
      if (free && (want < 0 || score > want_score)) want = static_cast<int>(i), want_score = score;
    }
    CAPTURE(round);
    CAPTURE(n);
    CAPTURE(last);
    CHECK(arena_find_run_in(used.data(), dirty.data(), chunks, n, last) == want);
  }
}

// A block that grows in place takes in chunks where an earlier block asked for huge pages: past
// its new end the flag comes off, as for a block made there (a write near its end would fault in
// 2 MiB beyond it).
TEST_CASE("huge: a block grown into chunks an earlier block asked huge pages for clears the flag past its end") {
  settle();  // no free chunk resident: the block below lands where the first one was
  if (!option_bool(Option::kHugePages)) return;
  const size_t mib = size_t{1} << 20;
  void* first = alloc(13 * mib);  // 4 chunks, huge pages asked for on 2-12 MiB
  REQUIRE(first != nullptr);
  Segment* s = segment_of(first);
  const uintptr_t run = reinterpret_cast<uintptr_t>(s);
  const unsigned index = s->arena_index;
  REQUIRE(arena_thp_state(index, run + 10 * mib) == 1);
  dealloc(first);
  void* p = alloc(3 * mib);  // one chunk: the most resident free one, the first of that run
  REQUIRE(p != nullptr);
  REQUIRE(reinterpret_cast<uintptr_t>(segment_of(p)) == run);
  void* r = realloc_block(p, 9 * mib);  // 3 chunks: grows in place over the next two
  REQUIRE(r == p);
  REQUIRE(segment_of(r)->chunk_count == 3);
  const uintptr_t end = reinterpret_cast<uintptr_t>(r) + 9 * mib;
  for (uintptr_t u = end & ~((uintptr_t{2} << 20) - 1); u < run + 12 * mib; u += 2 * mib) {
    CAPTURE(u - run);
    CHECK(arena_thp_state(index, u) == 0);
  }
  CHECK(thp_mismatches({{index, run + 8 * mib}, {index, run + 10 * mib}}) == 0);
  dealloc(r);
  settle();
}
