// tests/unit/segment_test.cpp: telling our blocks from foreign pointers (the segment map),
// segment_of / page_of / segment_containing for small, medium, large and huge blocks.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include "core/options.hpp"
#include "support.hpp"

using namespace nebula;
using namespace unit;

namespace {
int g_global_int = 42;
char g_global_buf[256];
}  // namespace

TEST_CASE("segment map: foreign addresses are not segment start chunks") {
  int on_stack = 0;
  CHECK_FALSE(is_segment_start_chunk(&on_stack));
  CHECK_FALSE(is_segment_start_chunk(&g_global_int));
  CHECK_FALSE(is_segment_start_chunk(g_global_buf));
  CHECK_FALSE(is_segment_start_chunk(reinterpret_cast<void*>(&std::malloc)));
  void* small = std::malloc(64);          // glibc: brk heap
  void* big = std::malloc(size_t{8} << 20);  // glibc: its own mmap
  REQUIRE(small != nullptr);
  REQUIRE(big != nullptr);
  CHECK_FALSE(is_segment_start_chunk(small));
  CHECK_FALSE(is_segment_start_chunk(big));
  CHECK(segment_containing(small) == nullptr);
  CHECK(segment_containing(big) == nullptr);
  CHECK(segment_containing(&on_stack) == nullptr);
  CHECK(segment_containing(&g_global_int) == nullptr);
  CHECK_FALSE(owns(small));
  CHECK_FALSE(owns(&on_stack));
  std::free(small);
  std::free(big);
  // Addresses beyond the map (kernel half, non-canonical) are never ours.
  CHECK_FALSE(is_segment_start_chunk(reinterpret_cast<void*>(~uintptr_t{0} - 4095)));
  CHECK(segment_containing(reinterpret_cast<void*>(uintptr_t{1} << 62)) == nullptr);
  CHECK_FALSE(is_segment_start_chunk(nullptr));
}

TEST_CASE("segment map: small, medium and large blocks lead to their segment and page") {
  settle();
  std::vector<size_t> sizes = {1, 16, 100, 1024, 3000, kSmallMax, kSmallMax + 1, 50000, kMediumMax,
                               kMediumMax + 1, 300000, size_t{1} << 20, kLargeMax};
  std::vector<void*> blocks;
  for (size_t n : sizes)
    for (int k = 0; k < 3; ++k) blocks.push_back(alloc(n));
  for (size_t i = 0; i < blocks.size(); ++i) {
    void* p = blocks[i];
    size_t n = sizes[i / 3];
    CAPTURE(n);
    REQUIRE(p != nullptr);
    CHECK(is_segment_start_chunk(p));
    Segment* s = segment_of(p);
    CHECK(reinterpret_cast<uintptr_t>(s) % kSegmentSize == 0);
    CHECK(s->kind == SegmentKind::kNormal);
    CHECK(s->owner_heap.load() == t_heap);
    CHECK(s->thread_id.load() == os::thread_id());
    CHECK(segment_containing(p) == s);
    Page* page = page_of(s, p);
    uint8_t* start = page_start(s, page);
    auto* u = static_cast<uint8_t*>(p);
    if (g_runs && n > kRunsMin && n <= kRunsMax) {
      CHECK(page->kind == PageKind::kRuns);
      CHECK((u - start) % kRunsUnit == 0);
      CHECK(page->slice_count == kRunsPageSlices);
      CHECK(usable_size(p) == expected_usable(n));
    } else if (n <= kMediumMax) {
      CHECK(start <= u);
      CHECK(u < start + static_cast<size_t>(page->reserved) * page->block_size);
      CHECK(page->block_size == kClassSize[size_to_class(n)]);
      CHECK(page->kind == (page->block_size <= kSmallMax ? PageKind::kSmall : PageKind::kMedium));
      // The class's page size, or a smaller one made of a shorter resident run (span_alloc).
      CHECK(page->slice_count <= page_slices_for_class(page->size_class));
      CHECK(page->slice_count >= page_min_slices_for_class(page->size_class));
    } else {
      CHECK(page->kind == PageKind::kLarge);
      CHECK(start == u);
      CHECK(page->block_size >= n);
      CHECK(page->slice_count == (n + kSliceSize - 1) / kSliceSize);
    }
    // Any interior byte of the block leads back to the same page descriptor.
    CHECK(page_of(s, u + n / 2) == page);
    if (n > 0) CHECK(page_of(s, u + n - 1) == page);
    CHECK(page_start(s, page) <= u);
  }
  for (void* p : blocks) dealloc(p);
}

TEST_CASE("segment map: huge blocks are found from any interior chunk") {
  settle();
  const size_t n = (size_t{20} << 20) + 12345;  // 6 chunks
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  CHECK(is_segment_start_chunk(p));  // the block starts in its segment's first chunk
  Segment* s = segment_of(p);
  CHECK(s->kind == SegmentKind::kHuge);
  CHECK(s->owner_heap.load() == nullptr);
  CHECK(s->huge_start == reinterpret_cast<uintptr_t>(p));
  CHECK(s->chunk_count * kSegmentSize >= n + kSliceSize);
  for (size_t off : {size_t{0}, size_t{1} << 20, size_t{5} << 20, size_t{9} << 20, size_t{17} << 20, n - 1}) {
    CAPTURE(off);
    CHECK(segment_containing(p + off) == s);
    if (off >= kSegmentSize) CHECK_FALSE(is_segment_start_chunk(p + off));
    CHECK(owns(p + off));
  }
  p[0] = 1;
  p[n - 1] = 2;
  // Past the end of the segment, nothing of ours.
  uint8_t* past = reinterpret_cast<uint8_t*>(s) + s->chunk_count * kSegmentSize;
  Segment* after = segment_containing(past);
  CHECK((after == nullptr || after == segment_of(past)));
  dealloc(p);
  CHECK(segment_containing(p) == nullptr);
  CHECK_FALSE(is_segment_start_chunk(p));
  CHECK(segment_containing(p + (size_t{9} << 20)) == nullptr);
}

TEST_CASE("segment map: a huge block of more than 254 chunks (map entries saturate at 255)") {
  settle();
  size_t reserved0 = g_counters.reserved.load();
  const size_t n = (size_t{1} << 30) + (size_t{100} << 20);  // 1.1 GiB: its own mapping, 276 chunks
  auto* p = static_cast<uint8_t*>(alloc(n));
  REQUIRE(p != nullptr);
  Segment* s = segment_of(p);
  REQUIRE(is_segment_start_chunk(p));
  CHECK(s->kind == SegmentKind::kHuge);
  CHECK(s->solo == 1);
  CHECK(s->chunk_count > 255);
  CHECK(g_counters.reserved.load() >= reserved0 + n);
  // Touch only a few pages: the mapping is lazily committed.
  for (size_t chunk : {size_t{1}, size_t{200}, size_t{253}, size_t{254}, size_t{255}, size_t{256}, size_t{260},
                       size_t{s->chunk_count} - 1}) {
    uint8_t* q = reinterpret_cast<uint8_t*>(s) + chunk * kSegmentSize + 4096;
    if (q >= p + n) q = p + n - 1;
    CAPTURE(chunk);
    CHECK(segment_containing(q) == s);
    *q = 7;
  }
  CHECK(usable_size(p) >= n);
  dealloc(p);
  CHECK(segment_containing(p + (size_t{1} << 30)) == nullptr);
  CHECK(g_counters.reserved.load() == reserved0);
}

TEST_CASE("spans: the free run with the most resident slices") {
  unsigned score = 99;
  CHECK(find_most_dirty_run(0, 0, 1, &score) == -1);
  // Free slices 4..11; resident: 9, 10, 11. A run of 4 starting at 8 covers all three.
  uint64_t free = uint64_t{0xff} << 4, dirty = uint64_t{0x7} << 9;
  CHECK(find_most_dirty_run(free, dirty, 4, &score) == 8);
  CHECK(score == 3);
  // Nothing resident: the lowest run.
  CHECK(find_most_dirty_run(free, 0, 4, &score) == 4);
  CHECK(score == 0);
  // No run long enough.
  CHECK(find_most_dirty_run(free, dirty, 9, &score) == -1);
  // The whole bitmap.
  CHECK(find_most_dirty_run(~uint64_t{0}, ~uint64_t{0}, 64, &score) == 0);
  CHECK(score == 64);
}

// A new span goes to resident free slices in any of the heap's segments before fresh slices in
// the first segment of its list (which is the newest): no page faults, no new RSS.
TEST_CASE("spans: a freed run in an older segment is reused before fresh slices in a newer one") {
  Worker w;
  w.run([] {
    const size_t big = size_t{15} * kSliceSize;        // large blocks of 16 slices (with slack)
    std::vector<void*> a;
    for (int i = 0; i < 3; ++i) a.push_back(alloc(big));
    Segment* older = segment_of(a[0]);
    for (void* p : a) REQUIRE(segment_of(p) == older);  // 48 of 63 slices
    void* filler = alloc(size_t{14} * kSliceSize);      // 15 slices: the segment is full
    REQUIRE(segment_of(filler) == older);
    trim(0);  // free chunks kept resident by earlier tests are purged: the next segment is fresh
    void* b = alloc(big);
    Segment* newer = segment_of(b);
    REQUIRE(newer != older);
    REQUIRE(t_heap->segments == newer);                  // the newest segment is listed first
    unsigned resident = 0;
    REQUIRE(find_most_dirty_run(newer->free_slices, newer->dirty_slices, 16, &resident) >= 0);
    REQUIRE(resident == 0);                              // its free slices were never touched
    // Free a run in the older segment: its slices stay resident (the purge delay).
    uint64_t before = older->free_slices & older->dirty_slices;
    dealloc(a[1]);
    CHECK((older->free_slices & older->dirty_slices) != before);
    void* again = alloc(big);
    CHECK(segment_of(again) == older);
    CHECK(again == a[1]);
    dealloc(again);
    dealloc(a[0]);
    dealloc(a[2]);
    dealloc(filler);
    dealloc(b);
  });
}

static uint64_t run_mask_for_test(unsigned first, unsigned n) {
  return (n >= 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1)) << first;
}

TEST_CASE("spans: resident free slices are taken best fit") {
  unsigned len = 0;
  CHECK(find_best_run(0, 1, &len) == -1);
  // Runs: 2..3 (2), 8 (1), 12..19 (8), 40..63 (24).
  uint64_t m = run_mask_for_test(2, 2) | run_mask_for_test(8, 1) | run_mask_for_test(12, 8) | run_mask_for_test(40, 24);
  CHECK(find_best_run(m, 1, &len) == 8);
  CHECK(len == 1);
  CHECK(find_best_run(m, 2, &len) == 2);
  CHECK(len == 2);
  CHECK(find_best_run(m, 3, &len) == 12);
  CHECK(len == 8);
  CHECK(find_best_run(m, 9, &len) == 40);
  CHECK(len == 24);
  CHECK(find_best_run(m, 25, &len) == -1);
  CHECK(find_best_run(~uint64_t{0}, 64, &len) == 0);
  CHECK(len == 64);
}

// A span goes to the shortest resident free run that fits, not to the first one: a longer run
// stays whole for a bigger span. (trim(0) first: no other resident free slices anywhere.)
// A page whose class wants more slices than any resident free run holds takes a smaller page
// from a resident run (halving, and then the smallest page that holds two blocks) instead of new
// memory: blocks of 80 KiB want pages of 5 slices, and a 4-slice hole left by a freed block
// serves them as a page of 3 blocks (halving 5 alone would have skipped 4).
TEST_CASE("spans: a page takes a shorter resident run rather than new memory") {
  Worker w;
  w.run([] {
    trim(0);
    const unsigned cls = size_to_class(81920);
    REQUIRE(page_slices_for_class(cls) == 5);
    REQUIRE(page_min_slices_for_class(cls) == 4);
    void* four = alloc(size_t{200} * 1024);  // a large block of 4 slices
    memset(four, 1, size_t{200} * 1024);     // resident
    void* pin = alloc(size_t{3} * kSliceSize);
    REQUIRE(page_of_ptr(four)->slice_count == 4);
    dealloc(four);  // the only resident free run: 4 slices
    void* b = alloc(81920);
    Page* pg = page_of_ptr(b);
    CHECK(b == four);
    CHECK(pg->slice_count == 4);
    CHECK(pg->reserved == 3);
    CHECK(pg->kind == PageKind::kMedium);
    // Its blocks are whole and separate.
    void* c = alloc(81920);
    void* d = alloc(81920);
    CHECK(page_of_ptr(c) == pg);
    CHECK(page_of_ptr(d) == pg);
    memset(b, 2, 81920);
    memset(c, 3, 81920);
    memset(d, 4, 81920);
    CHECK(static_cast<uint8_t*>(b)[81919] == 2);
    CHECK(static_cast<uint8_t*>(c)[0] == 3);
    // The page is full: the next block of the class gets a new page of the preferred size.
    void* e = alloc(81920);
    CHECK(page_of_ptr(e) != pg);
    CHECK(page_of_ptr(e)->slice_count == 5);
    for (void* p : {b, c, d, e, pin}) dealloc(p);
  });
}

// A span that must take slices that were not resident, while the heap's resident free runs are
// all too short for it, returns as many of those to the OS: the footprint does not grow by
// memory that is free. A span that finds a resident run purges nothing. A heap whose large blocks
// hold over 16 MiB keeps a slack of resident free slices for its next large blocks: 1/8 of
// those slices less 2 MiB (kUnfitSlackDiv, kUnfitSlackFloor).
TEST_CASE("spans: new memory for a span purges resident free runs too short for it, beyond a slack") {
  Worker w;
  w.run([] {
    trim(0);
    const size_t three = size_t{3} * kSliceSize - 4096;  // a large block of 3 slices
    void* hole = alloc(three);
    memset(hole, 1, three);  // resident
    void* pin = alloc(three);
    Segment* s = segment_of(hole);
    unsigned i = static_cast<unsigned>(page_of_ptr(hole) - s->pages);
    REQUIRE(page_of_ptr(hole)->slice_count == 3);
    dealloc(hole);
    REQUIRE(((s->free_slices & s->dirty_slices) >> i & 7) == 7);  // a resident free run of 3
    void* fits = alloc(three - 4096);                              // fits it: nothing purged
    CHECK(fits == hole);
    dealloc(fits);
    CHECK(((s->free_slices & s->dirty_slices) >> i & 7) == 7);
    REQUIRE(t_heap->resident_free_slices == 3);
    const uint64_t purged = g_counters.purged.load();
    void* five = alloc(size_t{5} * kSliceSize - 4096);  // too long for it: new slices
    CHECK(page_of_ptr(five) != page_of_ptr(hole));
    CHECK((s->free_slices >> i & 7) == 7);   // still free ...
    CHECK((s->dirty_slices >> i & 7) == 0);  // ... and no longer resident
    CHECK(t_heap->resident_free_slices == 0);
    CHECK(g_counters.purged.load() >= purged + 3 * kSliceSize);
    dealloc(five);
    trim(0);
    // 303 slices in large blocks (19 MiB; slack 37 - 32 = 5): the next 3-slice hole stays
    // resident through a bigger span. (Address space only: the blocks are not written.)
    std::vector<void*> more;
    for (int k = 0; k < 100; ++k) more.push_back(alloc(three));
    void* hole2 = alloc(three);
    memset(hole2, 1, three);
    more.push_back(alloc(three));  // after it: the hole is 3 slices, not the segment's free end
    Segment* s2 = segment_of(hole2);
    unsigned i2 = static_cast<unsigned>(page_of_ptr(hole2) - s2->pages);
    dealloc(hole2);
    REQUIRE(t_heap->resident_free_slices == 3);
    REQUIRE(t_heap->large_slices / kUnfitSlackDiv > kUnfitSlackFloor + 3);
    const uint64_t purged2 = g_counters.purged.load();
    void* big = alloc(size_t{6} * kSliceSize - 4096);
    CHECK(page_of_ptr(big) != page_of_ptr(hole2));
    CHECK(((s2->free_slices & s2->dirty_slices) >> i2 & 7) == 7);
    CHECK(g_counters.purged.load() == purged2);
    dealloc(big);
    for (void* p : more) dealloc(p);
    dealloc(pin);
  });
}

TEST_CASE("spans: a span takes the shortest resident run, leaving the longer one whole") {
  Worker w;
  w.run([] {
    trim(0);
    void* four = alloc(size_t{200} * 1024);          // a large block of 4 slices, made first
    void* pin = alloc(size_t{3} * kSliceSize);
    std::vector<void*> big;
    for (int i = 0; i < 4; ++i) big.push_back(alloc(size_t{3} * kSliceSize));  // 3 slices each
    Segment* s4 = segment_of(four);
    unsigned i4 = static_cast<unsigned>(page_of_ptr(four) - s4->pages);
    REQUIRE(page_of_ptr(four)->slice_count == 4);
    dealloc(four);     // a resident free run of 4 slices ...
    dealloc(big[2]);   // ... and one of 3, made later
    void* three = alloc(size_t{3} * kSliceSize - 4096);
    CHECK(three == big[2]);  // the 3-slice run, not the first part of the 4-slice one
    CHECK(((s4->free_slices & s4->dirty_slices) >> i4 & 0xf) == 0xf);
    dealloc(three);
    dealloc(pin);
    for (int i = 0; i < 4; ++i)
      if (i != 2) dealloc(big[i]);
  });
}

// A new segment on memory that was never touched (or was purged) is zero, and a descriptor of
// zeros reads as a free slice's (head_off 0 leads to descriptor 0, the header slice's, never in
// use; kind kNone): only the OS page of the header that holds the segment's fields and its first
// descriptors is written, the other three stay out of RSS until spans reach their descriptors.
// A free of a pointer into a never-used slice still finds a descriptor not in use.
TEST_CASE("segments: a new segment on zeroed memory writes only its header's first OS page") {
  settle();  // no abandoned segments to adopt, every free chunk purged
  Worker w;
  w.run([] {
    // Written: mapped to a page of the process's own (/proc/self/pagemap: present and mapped
    // exclusively). A page only read maps the kernel's shared zero page, which RSS does not
    // count and mincore reports resident (the walkers read every descriptor's kind).
    auto written = [](const void* a) {
      int fd = open("/proc/self/pagemap", O_RDONLY);
      REQUIRE(fd >= 0);
      uint64_t e = 0;
      REQUIRE(pread(fd, &e, sizeof e, static_cast<off_t>(reinterpret_cast<uintptr_t>(a) / 4096 * sizeof e)) == sizeof e);
      close(fd);
      return (e >> 63 & 1) != 0 && (e >> 56 & 1) != 0;
    };
    void* p = alloc(64);
    Segment* s = segment_of(p);
    Page* used = page_of_ptr(p);
    REQUIRE(used - s->pages < 15);  // its descriptor in the header's first OS page
    auto* header = reinterpret_cast<uint8_t*>(s);
    CHECK(written(header));
    for (int k = 1; k < 5; ++k) {
      CAPTURE(k);
      CHECK(!written(header + k * 4096));
    }
    const Page* zero = &s->pages[0];
    CHECK((page_flags(zero) & kPageNotInUse) != 0);
    CHECK(zero->fast_magic == 0);
    CHECK(zero->kind == PageKind::kNone);
    for (unsigned i = 1; i < kSlicesPerSegment; ++i) {
      Page* d = &s->pages[i];
      if (d == used) continue;
      CAPTURE(i);
      CHECK(page_of(s, header + (size_t{i} << kSliceShift)) == zero);
      CHECK(d->kind == PageKind::kNone);
      CHECK(d->fast_magic == 0);
      CHECK(d->used == 0);
      CHECK(d->free == nullptr);
      CHECK(d->thread_free.load() == 0);
    }
    CHECK(usable_size(header + (size_t{40} << kSliceShift)) == 0);  // a never-used slice
    for (int k = 1; k < 5; ++k) CHECK(!written(header + k * 4096));  // reading them wrote nothing
    dealloc(p);
  });
}

// The span index: through random large blocks (1-20 slices), partly written, freed at random,
// with purges between, every segment stays in the bins of its longest free and resident free
// runs (check_heap_invariants), and a heap of many segments still finds a resident run in its
// oldest segment, whichever segment the list holds first.
TEST_CASE("spans: the span index follows every change of the slice bitmaps") {
  Worker w;
  w.run([] {
    trim(0);
    std::vector<void*> live(160, nullptr);
    uint64_t r = 12345;
    int errors = 0;
    for (int op = 0; op < 4000 && errors == 0; ++op) {
      r = r * 6364136223846793005ull + 1442695040888963407ull;
      size_t k = (r >> 33) % live.size();
      if (live[k] != nullptr) {
        dealloc(live[k]);
        live[k] = nullptr;
      } else {
        size_t n = (1 + (r >> 20) % 20) * kSliceSize - 4096;
        live[k] = alloc(n);
        REQUIRE(live[k] != nullptr);
        if ((r >> 40) & 1) memset(live[k], 1, n);
      }
      if (op % 500 == 499) trim(0);
      errors += check_heap_invariants(t_heap);
    }
    CHECK(errors == 0);
    CHECK(t_heap->segment_count > 8);  // more than one scan's worth of segments
    for (void*& p : live)
      if (p != nullptr) dealloc(p);
    trim(0);
    // 12 segments, each full of 3-slice blocks; a freed block in the oldest is reused.
    std::vector<void*> blocks;
    const size_t three = 3 * kSliceSize - 4096;
    while (t_heap->segment_count < 12 || blocks.size() % 21 != 0) blocks.push_back(alloc(three));
    Segment* oldest = segment_of(blocks[0]);
    REQUIRE(t_heap->segments != oldest);
    void* hole = blocks[1];
    REQUIRE(segment_of(hole) == oldest);
    dealloc(hole);
    void* again = alloc(three);
    CHECK(again == hole);
    CHECK(check_heap_invariants(t_heap) == 0);
    blocks[1] = again;
    for (void* p : blocks) dealloc(p);
    CHECK(check_heap_invariants(t_heap) == 0);
  });
}

TEST_CASE("spans: longest_run agrees with a bit-by-bit count") {
  auto naive = [](uint64_t m) {
    unsigned best = 0, cur = 0;
    for (unsigned i = 0; i < 64; ++i) {
      cur = (m >> i & 1) ? cur + 1 : 0;
      if (cur > best) best = cur;
    }
    return best;
  };
  CHECK(longest_run(0) == 0);
  CHECK(longest_run(~uint64_t{0}) == 64);
  CHECK(longest_run(~uint64_t{1}) == 63);
  CHECK(longest_run(uint64_t{1} << 63) == 1);
  CHECK(longest_run(0x7fffffffffffffffull) == 63);
  for (unsigned n = 1; n <= 64; ++n)
    for (unsigned at = 0; at + n <= 64; at += 7) CHECK(longest_run(run_mask_for_test(at, n)) == n);
  uint64_t r = 88172645463325252ull;
  int wrong = 0;
  for (int i = 0; i < 200000; ++i) {
    r ^= r << 13;
    r ^= r >> 7;
    r ^= r << 17;
    // Sparse, dense and run-heavy masks.
    uint64_t m = (i % 3 == 0) ? r : (i % 3 == 1) ? (r | r >> 1 | r >> 3) : (r & r >> 2);
    if (longest_run(m) != naive(m)) ++wrong;
  }
  CHECK(wrong == 0);
}

// A new segment takes the free chunk with the most resident slices (the arena's one-chunk
// search visits only free chunks): three segments freed with 11, 41 and 21 resident slices,
// the next segment is made on the second.
TEST_CASE("arena: a new segment takes the free chunk with the most resident slices") {
  settle();  // every free chunk purged: only the three below hold resident slices
  const size_t slices[3] = {10, 40, 20};
  uintptr_t seg[3] = {};
  std::atomic<int> made{0};
  std::vector<std::thread> ts;
  for (int k = 0; k < 3; ++k) {
    ts.emplace_back([&, k] {
      while (made.load() != k) std::this_thread::yield();  // in order: the first takes the lowest
      void* p = alloc(slices[k] * kSliceSize - 4096);  // in this thread's own segment
      seg[k] = reinterpret_cast<uintptr_t>(segment_of(p));
      made.fetch_add(1);
      while (made.load() < 3) std::this_thread::yield();  // all three segments live at once
      dealloc(p);  // its segment's last span: the segment goes back to the arena, resident
    });
  }
  for (std::thread& t : ts) t.join();
  REQUIRE(seg[0] != seg[1]);
  REQUIRE(seg[1] != seg[2]);
  uintptr_t got = 0;
  std::thread u([&] {
    void* p = alloc(100);
    got = reinterpret_cast<uintptr_t>(segment_of(p));
    dealloc(p);
  });
  u.join();
  CHECK(got == seg[1]);
  settle();
}

// A segment freed whole leaves its header's descriptors reset; a segment made again on that
// chunk while its header slice is resident does not write them again, and every descriptor
// still reads as a free slice (check_heap_invariants), through spans made and freed there.
TEST_CASE("segments: a segment made on a header that a segment freed whole left resident") {
  settle();
  uintptr_t first = 0;
  std::thread t([&] {
    std::vector<void*> v;
    for (size_t k : {3, 7, 1, 12, 2}) v.push_back(alloc(k * kSliceSize - 4096));
    for (int i = 0; i < 300; ++i) v.push_back(alloc(100 + i * 40));  // small and medium pages
    first = reinterpret_cast<uintptr_t>(segment_of(v[0]));
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* p : v) dealloc(p);  // the segment's last span: freed whole, header resident
  });
  t.join();
  std::thread u([&] {
    void* p = alloc(5 * kSliceSize - 4096);
    REQUIRE(reinterpret_cast<uintptr_t>(segment_of(p)) == first);  // the most resident chunk
    CHECK(check_heap_invariants(t_heap) == 0);
    std::vector<void*> v;
    for (int i = 0; i < 200; ++i) v.push_back(alloc(50 + i * 60));
    CHECK(check_heap_invariants(t_heap) == 0);
    for (void* q : v) dealloc(q);
    dealloc(p);
  });
  u.join();
  settle();
}

// Strict commit (NEBULA_MEM_COMMIT=strict; meson's unit-commit-strict runs every case so): the
// chunk of a live segment is accessible and its free neighbours in the arena are not; each such
// boundary is counted (a mapping more). In the default mode nothing is counted.
TEST_CASE("arena: strict commit maps the chunks in use accessible and the free ones not") {
  settle();
  void* p = alloc(100);
  REQUIRE(p != nullptr);
  Segment* s = segment_of(p);
  if (option(Option::kCommit) == 0 && arena_commit_edges() == 0) {
    // The default mode (or a kernel in overcommit mode 2 would have turned it on: not here).
    CHECK(mapping_perms(s) == "rw-p");
    CHECK(mapping_perms(reinterpret_cast<char*>(s) + kSegmentSize) != "---p");
  } else {
    CHECK(arena_commit_edges() > 0);
    CHECK(mapping_perms(s) == "rw-p");
    // A huge block of 16 MiB: its chunks accessible while it lives, inaccessible once freed and
    // purged.
    const size_t big = size_t{16} << 20;
    char* h = static_cast<char*>(alloc(big));
    REQUIRE(h != nullptr);
    h[0] = 1;
    h[big - 1] = 2;
    CHECK(mapping_perms(h + (size_t{8} << 20)) == "rw-p");
    dealloc(h);
    trim(0);
    CHECK(mapping_perms(h + (size_t{8} << 20)) == "---p");
  }
  dealloc(p);
  settle();
}
